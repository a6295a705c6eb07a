"""Tools apart from the product: ``mrhub bench`` and ``mrhub simulate``.

Not part of a deployment: installed with the ``tools`` extra (``pip install 'mrhub[tools]'``),
which brings their heavy dependencies (recordlinkage with pandas / scipy / scikit-learn,
matplotlib, tqdm). The product package ``services`` never imports this one except lazily in
the ``mrhub bench`` / ``mrhub simulate`` handlers of ``services/cli.py``.
"""
