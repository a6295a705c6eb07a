"""Recognition engine: is there a recognisable earlier result for this order?

Pure parts (no faust, Kafka or I/O): ``catalog`` (the versioned catalogue under
``config/catalog/``: items, codes, windows, scope rules, prices; loading and lookups),
``decision`` (the decision for one order and its FHIR ``DetectedIssue`` rendering) and
``catalog_cli`` (``mrhub catalog check`` / ``list``). Rules and formats:
``docs/recognition.md``.
"""
