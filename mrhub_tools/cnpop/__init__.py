"""An independent labelled data set of Chinese patient records (issue 19).

Separate from ``mrhub simulate`` and from the matcher: its own name frequencies (the ORCID
tables of AllenAI's sinonym, Apache-2.0, see data/SOURCES.md) and its own error model
(docs/cn-dataset.md). The bench calls :func:`load`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas

__all__ = ["COLUMNS", "REPORT_SEED", "TUNING_SEED", "CnDataset", "load"]

#: The seed of the reported figures. Never used while tuning the matcher.
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


def load(name: str, *, seed: int | None = None) -> CnDataset:
    """``name`` in {"cn-10k", "cn-1m"} or "cn-<N>"; ``seed`` defaults to REPORT_SEED."""
    raise NotImplementedError("stub: the generator is being written (issue 19)")
