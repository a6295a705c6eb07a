"""An independent labelled data set of Chinese patient records (issue 19).

Separate from ``mrhub simulate`` and from the matcher: its own name frequencies (the ORCID
tables of AllenAI's sinonym, Apache-2.0, see data/SOURCES.md) and its own error model
(docs/cn-dataset.md). The bench calls :func:`load`.
"""

from __future__ import annotations

import gzip
import os
import re
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import pandas

__all__ = ["COLUMNS", "REPORT_SEED", "TUNING_SEED", "CnDataset", "load"]

#: The seed of the reported figures. Never used while tuning the matcher: with
#: ``MRHUB_CNPOP_TUNING=1`` in the environment, :func:`load` refuses it.
REPORT_SEED = 20261206
#: The seed the matcher is tuned on (a different draw of the same generator).
TUNING_SEED = 7

#: Columns of ``CnDataset.frame`` (index = rec_id, a str).
COLUMNS = (
    "institution",  # str
    "name",  # str, as written: hanzi, or Latin in some order/case; never None
    "family",  # str | None: set only when the hospital system split the name
    "given",  # str | None
    "sex",  # "male" | "female" | None
    "birth_date",  # "YYYY-MM-DD" | None
    "phone",  # str | None
    "address",  # str | None
    "postcode",  # str | None
    "id_card",  # str | None (may be a typo or a placeholder)
    "insurance",  # str | None
    "_person",  # the truth label: read only for scoring
)


@dataclass(frozen=True)
class CnDataset:
    name: str
    frame: pandas.DataFrame  # one row per record, index = rec_id (str), COLUMNS
    truth: frozenset[tuple[str, str]]  # sorted pairs (a < b) of rec_ids of one person


#: Bump when the generator's output changes: cached files of another version are not read.
GENERATOR_VERSION: Final = 2
SIZES: Final = {"cn-10k": 10_000, "cn-1m": 1_000_000}
_NAME = re.compile(r"cn-(\d+)([km]?)")


def size_of(name: str) -> int:
    """Records in the data set ``name``: "cn-10k", "cn-1m", or "cn-<N>" (also "cn-<N>k")."""
    if name in SIZES:
        return SIZES[name]
    m = _NAME.fullmatch(name)
    if m is None or int(m.group(1)) < 1:
        raise ValueError(f"unknown data set {name!r}: expected cn-10k, cn-1m or cn-<N>")
    return int(m.group(1)) * {"": 1, "k": 1_000, "m": 1_000_000}[m.group(2)]


def cache_dir() -> Path:
    """``$MRHUB_CNPOP_CACHE``, or ``~/.cache/mrhub/cnpop``."""
    env = os.environ.get("MRHUB_CNPOP_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "mrhub" / "cnpop"


def load(name: str, *, seed: int | None = None) -> CnDataset:
    """``name`` in {"cn-10k", "cn-1m"} or "cn-<N>"; ``seed`` defaults to REPORT_SEED (refused
    when ``MRHUB_CNPOP_TUNING=1``: tune with ``seed=TUNING_SEED``).

    Generated once per (size, seed, generator version) and cached as gzip CSV.
    """
    frame = load_frame(name, seed=seed).drop(columns=["_errors"])
    return CnDataset(name=name, frame=frame, truth=truth_pairs(frame))


def load_frame(name: str, *, seed: int | None = None) -> pandas.DataFrame:
    """The records with an extra column ``_errors`` (the injected errors, ";"-joined)."""
    import pandas as pd

    n = size_of(name)
    seed = REPORT_SEED if seed is None else seed
    if seed == REPORT_SEED and os.environ.get("MRHUB_CNPOP_TUNING") == "1":
        raise ValueError(
            "MRHUB_CNPOP_TUNING=1: the report seed is not used while tuning (use TUNING_SEED)"
        )
    path = cache_dir() / f"cn-{n}-seed{seed}-v{GENERATOR_VERSION}.csv.gz"
    if not path.exists():
        frame = build_frame(n, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        with gzip.open(tmp, "wt", encoding="utf-8", newline="", compresslevel=3) as f:
            frame.to_csv(f, index_label="rec_id")
        tmp.replace(path)
    frame = pd.read_csv(path, dtype=str, keep_default_na=False, index_col="rec_id")
    frame = frame.astype(object).where(frame != "", None)
    frame["_errors"] = frame["_errors"].fillna("")
    return frame


def build_frame(n: int, seed: int) -> pandas.DataFrame:
    """Generate ``n`` records under ``seed`` (no cache)."""
    import pandas as pd

    from .generate import generate

    draw = generate(n, seed)
    frame = pd.DataFrame.from_records(draw.rows, columns=[*COLUMNS, "_errors"])
    frame["_person"] = frame["_person"].astype(str)
    width = len(str(n))
    frame.index = pd.Index([f"r{i:0{width}d}" for i in range(len(frame))], name="rec_id")
    return frame.astype(object).where(frame.notna(), None)


def truth_pairs(frame: pandas.DataFrame) -> frozenset[tuple[str, str]]:
    """Sorted pairs of rec_ids that share ``_person``."""
    pairs: set[tuple[str, str]] = set()
    for ids in frame.groupby("_person", sort=False).groups.values():
        if len(ids) > 1:
            pairs.update(combinations(sorted(str(i) for i in ids), 2))
    return frozenset(pairs)
