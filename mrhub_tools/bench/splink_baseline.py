"""Splink (PyPI ``splink`` 4.x, DuckDB backend) as the same-run baseline of ``mrhub bench match``.

Splink is the well-kept open-source Fellegi–Sunter linker. The bench gives it the same
records, in the same run, as mrhub's matcher gets:

* **FEBRL** — the FEBRL columns as shipped (given name, surname, date of birth, street
  number, address lines, suburb, state, postcode, soc_sec_id), set up as Splink's own FEBRL
  examples do: ``NameComparison`` on both names, ``DateOfBirthComparison``, Damerau–
  Levenshtein on soc_sec_id, Jaro–Winkler on the address lines, exact suburb / state /
  postcode / street number.
* **the Chinese set** (``cn-*``) — every column of the record after mrhub's normalisation
  (:class:`~services.patient_index.normalize.Person`): the hanzi family and given name,
  *mrhub's* normalised pinyin of each (so both linkers start from the same reading of a
  Latin or hanzi name), sex, birth date, phone, address, postcode, the 身份证 and the
  医保卡 number. Each name part is one comparison — hanzi equal, pinyin equal, pinyin
  Jaro–Winkler ≥ 0.92 / 0.85, else — so hanzi and pinyin are not counted twice.

Term-frequency adjustments are on for the name columns (hanzi and pinyin, each name part),
the postcode, the suburb and the 身份证 (a placeholder shared by many counts for little).

Training as Splink's documentation recommends, without labels: the prior from
deterministic rules (``estimate_probability_two_random_records_match``), ``u`` by random
sampling, ``m`` by EM on two blocking rules that between them leave every comparison
trainable. Blocking rules for prediction are comparable to mrhub's (an identifier; the phone;
birth date with a name initial; both names with the birth year; postcode with names).

Figures: precision, recall and F1 at Splink's usual match probability 0.5, **and** at the
best threshold — the match probability that maximises F1, found *with the labels* (so an
upper bound on what Splink can do with any one threshold, not something a user could tune
without labels). Recall counts every true link, including those blocking lost. DuckDB runs
on one thread (mrhub's scoring is single-threaded Python); time is wall clock and CPU.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from services.patient_index.normalize import Person

Pair = tuple[str, str]

#: Pairs below this match probability are not fetched (the best-F1 threshold is searched
#: above it).
PREDICT_FLOOR: Final = 0.001
#: Splink's usual threshold.
USUAL_THRESHOLD: Final = 0.5
U_MAX_PAIRS: Final = 5_000_000
SPLINK_SEED: Final = 20260312
#: Table names of the two files in linkage (``left`` is an SQL keyword).
LINK_ALIASES: Final = ("records_left", "records_right")

FEBRL_COLUMNS: Final = (
    "given_name",
    "surname",
    "street_number",
    "address_1",
    "address_2",
    "suburb",
    "postcode",
    "state",
    "date_of_birth",
    "soc_sec_id",
)
CN_COLUMNS: Final = (
    "family",
    "given",
    "family_py",
    "given_py",
    "sex",
    "birth_date",
    "phone",
    "address",
    "postcode",
    "id_card",
    "id_card_block",
    "insurance",
)


# ------------------------------------------------------------------------------- metrics


@dataclass(frozen=True, slots=True)
class ThresholdFigures:
    threshold: float
    links: int
    precision: float
    recall: float
    f1: float

    def as_dict(self) -> dict[str, float | int]:
        return {
            "threshold": self.threshold,
            "links": self.links,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
        }


def _figures(threshold: float, links: int, tp: int, n_truth: int) -> ThresholdFigures:
    precision = tp / links if links else 1.0
    recall = tp / n_truth if n_truth else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return ThresholdFigures(threshold, links, precision, recall, f1)


def at_threshold(
    scored: Sequence[tuple[float, Pair]], truth: frozenset[Pair], threshold: float
) -> ThresholdFigures:
    """Figures of the pairs whose match probability is at least ``threshold``."""
    chosen = {pair for p, pair in scored if p >= threshold}
    return _figures(threshold, len(chosen), len(chosen & truth), len(truth))


def best_threshold(
    scored: Sequence[tuple[float, Pair]], truth: frozenset[Pair]
) -> ThresholdFigures:
    """The F1-maximising threshold, found with the labels (ties: the higher threshold).

    Each distinct probability is a candidate threshold: links are the pairs at or above it.
    """
    best = _figures(1.0, 0, 0, len(truth))
    ordered = sorted(scored, key=lambda x: -x[0])
    tp = 0
    seen: set[Pair] = set()
    for i, (prob, pair) in enumerate(ordered):
        if pair not in seen:
            seen.add(pair)
            tp += pair in truth
        if i + 1 < len(ordered) and ordered[i + 1][0] == prob:
            continue  # a threshold takes every pair of the same probability
        cand = _figures(prob, len(seen), tp, len(truth))
        if cand.f1 > best.f1:
            best = cand
    return best


# ------------------------------------------------------------------------------- frames


def febrl_frame(frame: Any) -> Any:
    """A FEBRL frame as Splink takes it: ``rec_id`` a column, the FEBRL columns as text."""
    out = frame.reset_index()[["rec_id", *FEBRL_COLUMNS]].copy()
    for col in FEBRL_COLUMNS:
        out[col] = out[col].map(_clean)
    out["rec_id"] = out["rec_id"].astype(str)
    return out


def _clean(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and value != value):
        return None
    text = str(value).strip()
    return text or None


def cn_row(rec_id: str, p: Person) -> dict[str, str | None]:
    """One normalised Chinese record as a Splink row (see the module docstring)."""
    id_card = next((i for i in p.idents if i.kind == "id_card"), None)
    insurance = next((i.value for i in p.idents if i.kind == "insurance"), None)
    return {
        "rec_id": rec_id,
        "family": p.family,
        "given": p.given,
        "family_py": p.family_py,
        "given_py": p.given_py,
        "sex": p.sex,
        "birth_date": p.birth_date.isoformat() if p.birth_date else None,
        "phone": p.phone,
        "address": p.address,
        "postcode": p.postcode,
        "id_card": id_card.value if id_card else None,
        # blocking on a placeholder (000000…, shared by thousands) would compare them all
        # with each other: only a number passing its checksum is a blocking key, as in mrhub
        "id_card_block": id_card.value if id_card and id_card.verified else None,
        "insurance": insurance,
    }


def cn_frame(persons: Mapping[str, Person]) -> Any:
    import pandas as pd

    return pd.DataFrame(
        [cn_row(rid, p) for rid, p in persons.items()], columns=["rec_id", *CN_COLUMNS]
    )


# ----------------------------------------------------------------------------- settings


@dataclass(frozen=True, slots=True)
class Plan:
    """What Splink is told: comparisons, blocking, and the training rules."""

    comparisons: tuple[Any, ...]
    blocking: tuple[Any, ...]
    prior_rules: tuple[Any, ...]
    prior_recall: float
    em_rules: tuple[Any, ...]
    description: str


def febrl_plan() -> Plan:
    import splink.comparison_library as cl
    from splink import block_on

    return Plan(
        comparisons=(
            cl.NameComparison("given_name").configure(term_frequency_adjustments=True),
            cl.NameComparison("surname").configure(term_frequency_adjustments=True),
            cl.DateOfBirthComparison(
                "date_of_birth", input_is_string=True, datetime_format="%Y%m%d"
            ),
            cl.DamerauLevenshteinAtThresholds("soc_sec_id", [1, 2]),
            cl.ExactMatch("street_number"),
            cl.JaroWinklerAtThresholds("address_1", [0.9, 0.7]),
            cl.JaroWinklerAtThresholds("address_2", [0.9, 0.7]),
            cl.ExactMatch("suburb").configure(term_frequency_adjustments=True),
            cl.ExactMatch("postcode").configure(term_frequency_adjustments=True),
            cl.ExactMatch("state"),
        ),
        blocking=(
            block_on("soc_sec_id"),
            block_on("date_of_birth", "substr(surname, 1, 1)"),
            block_on("date_of_birth", "substr(given_name, 1, 1)"),
            block_on("given_name", "surname", "substr(date_of_birth, 1, 4)"),
            block_on("given_name", "surname", "postcode"),
            block_on("surname", "postcode"),
            block_on("date_of_birth", "postcode"),
        ),
        prior_rules=(
            block_on("soc_sec_id"),
            block_on("given_name", "surname", "date_of_birth"),
        ),
        prior_recall=0.7,
        em_rules=(block_on("date_of_birth"), block_on("given_name", "surname")),
        description=(
            "Splink 4 (DuckDB, 1 thread): NameComparison given/surname (TF), "
            "DateOfBirthComparison, Damerau-Levenshtein soc_sec_id, Jaro-Winkler address "
            "lines, exact street number/suburb (TF)/postcode (TF)/state; blocking: soc_sec_id; "
            "dob+initials; names+birth year; names+postcode; surname+postcode; dob+postcode"
        ),
    )


def _name_comparison(part: str) -> Any:
    import splink.comparison_level_library as cll
    import splink.comparison_library as cl

    py = f"{part}_py"
    return cl.CustomComparison(
        output_column_name=part,
        comparison_levels=[
            cll.NullLevel(py),
            cll.ExactMatchLevel(part, term_frequency_adjustments=True),
            cll.ExactMatchLevel(py, term_frequency_adjustments=True),
            cll.JaroWinklerLevel(py, 0.92),
            cll.JaroWinklerLevel(py, 0.85),
            cll.ElseLevel(),
        ],
        comparison_description=f"{part}: hanzi equal (TF), pinyin equal (TF), pinyin JW",
    )


def cn_plan() -> Plan:
    import splink.comparison_library as cl
    from splink import block_on

    return Plan(
        comparisons=(
            _name_comparison("family"),
            _name_comparison("given"),
            cl.ExactMatch("sex"),
            cl.DateOfBirthComparison("birth_date", input_is_string=True),
            cl.DamerauLevenshteinAtThresholds("phone", [1]),
            cl.JaroWinklerAtThresholds("address", [0.9, 0.8]),
            cl.ExactMatch("postcode").configure(term_frequency_adjustments=True),
            cl.DamerauLevenshteinAtThresholds("id_card", [1]).configure(
                term_frequency_adjustments=True
            ),
            cl.ExactMatch("insurance"),
        ),
        blocking=(
            block_on("id_card_block"),
            block_on("insurance"),
            block_on("phone"),
            block_on("birth_date", "substr(family_py, 1, 1)"),
            block_on("birth_date", "substr(given_py, 1, 1)"),
            block_on("family_py", "given_py", "substr(birth_date, 1, 4)"),
            block_on("family_py", "given_py", "postcode"),
            block_on("birth_date", "postcode"),
        ),
        prior_rules=(
            block_on("id_card_block"),
            block_on("family", "given", "birth_date", "phone"),
        ),
        prior_recall=0.8,
        em_rules=(
            block_on("birth_date", "substr(given_py, 1, 1)"),
            block_on("phone"),
        ),
        description=(
            "Splink 4 (DuckDB, 1 thread): family and given each hanzi-equal (TF) / "
            "pinyin-equal (TF, mrhub's normalised pinyin) / pinyin JW 0.92, 0.85; exact sex; "
            "DateOfBirthComparison; Damerau-Levenshtein phone, 身份证 (TF); JW address; "
            "exact postcode (TF), 医保卡; blocking: 身份证 (checksum-valid), 医保卡, phone, "
            "birth date+initials, names+birth year, names+postcode, birth date+postcode"
        ),
    )


# ---------------------------------------------------------------------------------- run


def _pairs_of(rows: Any, *, dedup: bool) -> list[tuple[float, Pair]]:
    """Splink's predictions as (match probability, pair) in the bench's pair orientation:
    sorted in dedup, (left, right) in linkage. ``rows``: (probability, id_l, id_r,
    source_dataset_l) tuples."""
    out: list[tuple[float, Pair]] = []
    for prob, id_l, id_r, source_l in rows:
        a, b = str(id_l), str(id_r)
        swap = a > b if dedup else source_l != LINK_ALIASES[0]
        out.append((float(prob), (b, a) if swap else (a, b)))
    return out


def run_splink(
    frames: Sequence[Any],
    plan: Plan,
    truth: frozenset[Pair],
    *,
    u_max_pairs: float = U_MAX_PAIRS,
) -> dict[str, Any]:
    """Train Splink without labels, predict, and score at 0.5 and at the best threshold.

    ``frames``: one (dedup) or two (linkage: left, right) pandas frames with a ``rec_id``
    column. The labels are used only for the figures and the best threshold.
    """
    import duckdb
    from splink import DuckDBAPI, Linker, SettingsCreator
    from splink.internals.exceptions import EMTrainingException

    dedup = len(frames) == 1
    for name in ("splink", "duckdb"):
        logging.getLogger(name).setLevel(logging.ERROR)
    t0, c0 = time.perf_counter(), time.process_time()
    con = duckdb.connect()
    con.execute("SET threads = 1")
    settings = SettingsCreator(
        link_type="dedupe_only" if dedup else "link_only",
        unique_id_column_name="rec_id",
        comparisons=list(plan.comparisons),
        blocking_rules_to_generate_predictions=list(plan.blocking),
        retain_intermediate_calculation_columns=False,
        retain_matching_columns=False,
    )
    tables = list(frames) if not dedup else frames[0]
    aliases = list(LINK_ALIASES) if not dedup else None
    linker = Linker(
        tables,
        settings,
        DuckDBAPI(connection=con),
        set_up_basic_logging=False,
        input_table_aliases=aliases,
    )
    linker.training.estimate_probability_two_random_records_match(
        list(plan.prior_rules), recall=plan.prior_recall
    )
    linker.training.estimate_u_using_random_sampling(max_pairs=u_max_pairs, seed=SPLINK_SEED)
    em_skipped = []
    for rule in plan.em_rules:
        try:
            linker.training.estimate_parameters_using_expectation_maximisation(rule)
        except EMTrainingException:  # the rule blocks no pair in this data: say so
            em_skipped.append(rule.get_blocking_rule("duckdb").blocking_rule_sql)
    t_fit = time.perf_counter()
    predictions = linker.inference.predict()  # every blocked pair, to count them
    table = predictions.physical_name
    row = con.execute(f"select count(*) from {table}").fetchone()  # noqa: S608 - ours
    compared = int(row[0]) if row else 0
    source = "null" if dedup else "source_dataset_l"
    rows = con.execute(
        f"select match_probability, rec_id_l, rec_id_r, {source} from {table} "  # noqa: S608
        "where match_probability >= ?",
        [PREDICT_FLOOR],
    ).fetchall()
    scored = _pairs_of(rows, dedup=dedup)
    t1, c1 = time.perf_counter(), time.process_time()
    con.close()
    usual = at_threshold(scored, truth, USUAL_THRESHOLD)
    best = best_threshold(scored, truth)
    return {
        "pipeline": plan.description,
        "training": "prior from deterministic rules, u by random sampling "
        f"({int(u_max_pairs)} pairs), m by EM on {len(plan.em_rules)} blocking rules; no labels",
        "candidate_pairs": compared,
        "pairs_above_floor": len(scored),
        "predict_floor": PREDICT_FLOOR,
        "at_0_5": usual.as_dict(),
        "best": best.as_dict(),
        "em_rules_without_pairs": em_skipped,
        "best_threshold_note": "the F1-maximising match probability, found with the labels",
        # the recordlinkage-compatible keys the report reads
        "links": usual.links,
        "precision": usual.precision,
        "recall": usual.recall,
        "f1": usual.f1,
        "seconds": round(t1 - t0, 2),
        "seconds_training": round(t_fit - t0, 2),
        "cpu_seconds": round(c1 - c0, 2),
    }
