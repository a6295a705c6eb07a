"""Pure parts of ``mrhub bench match`` (mrhub_tools.bench.match), on small slices of FEBRL."""

from __future__ import annotations

import math
import random
from datetime import date
from typing import Any

import pytest

from mrhub_tools.bench import match
from services.patient_index.matching import load_rules
from services.patient_index.normalize import make_person

RULES = load_rules()


@pytest.fixture(scope="module")
def febrl4() -> match.Dataset:
    return match.load_dataset("febrl4")


def row(**values: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "rec_id": "rec-1-org",
        "given_name": "michaela",
        "surname": "neumann",
        "street_number": "8",
        "address_1": "stanley street",
        "address_2": "miami",
        "suburb": "winston hills",
        "postcode": "4223",
        "state": "nsw",
        "date_of_birth": "19151111",
        "soc_sec_id": "5304218",
    }
    base.update(values)
    return base


def test_febrl_record_becomes_a_person() -> None:
    p = match.febrl_person(row(), "left")
    assert (p.family, p.given, p.family_py, p.given_py) == (None, None, "neumann", "michaela")
    assert p.birth_date == date(1915, 11, 11)
    assert p.address == "8stanleystreetmiamiwinstonhillsnsw"
    assert p.postcode == "4223"
    assert p.sex is None and p.phone is None
    (ssn,) = p.idents
    assert (ssn.kind, ssn.value, ssn.verified) == ("document", "5304218", False)
    assert ssn.doc_type is None  # no WS 364 type: never deterministic


def test_febrl_corrupted_and_missing_values() -> None:
    p = match.febrl_person(
        row(date_of_birth="19150231", surname=math.nan, soc_sec_id=None, address_2=" "), "x"
    )
    assert p.birth_date is None  # 31 February: not a date
    assert p.family_py is None
    assert p.idents == ()
    assert p.address == "8stanleystreetwinstonhillsnsw"


def test_truth_pairs_sorted_in_dedup_only() -> None:
    links = [("rec-2-dup-0", "rec-2-org"), ("rec-1-org", "rec-1-dup-0")]
    assert match.truth_pairs(links, dedup=True) == {
        ("rec-2-dup-0", "rec-2-org"),
        ("rec-1-dup-0", "rec-1-org"),
    }
    assert ("rec-1-org", "rec-1-dup-0") in match.truth_pairs(links, dedup=False)


def test_candidate_pairs_dedup_and_linkage() -> None:
    def p(name: str, born: date) -> Any:
        return make_person("x", name_text=name, birth_date=born)

    d = date(1980, 5, 4)
    left = {"a": p("Wang Fang", d), "b": p("Wang Fang", d), "c": p("Li Lei", date(1950, 1, 1))}
    assert match.candidate_pairs(left, None, RULES) == [("a", "b")]
    right = {"z": p("Fang Wang", d), "y": p("Han Meimei", date(2001, 2, 3))}
    assert match.candidate_pairs(left, right, RULES) == [("a", "z"), ("b", "z")]


def test_total_pairs() -> None:
    assert match.total_pairs(1000, None) == 499_500
    assert match.total_pairs(5000, 5000) == 25_000_000


def test_random_pairs() -> None:
    rng = random.Random(1)
    ids = [f"r{i}" for i in range(10)]
    pairs = match.random_pairs(ids, None, 500, rng)
    assert len(pairs) == 500
    assert all(a < b for a, b in pairs)  # distinct records, sorted like the truth
    cross = match.random_pairs(ids, ["s1", "s2"], 50, rng)
    assert all(a in ids and b in ("s1", "s2") for a, b in cross)
    again = match.random_pairs(ids, None, 500, random.Random(1))
    assert again == pairs  # seeded: reproducible


def test_metrics() -> None:
    truth = frozenset({("a", "b"), ("c", "d"), ("e", "f"), ("g", "h")})
    m = match.metrics([("a", "b"), ("c", "d"), ("x", "y")], truth)
    assert (m.predicted, m.true_positives) == (3, 2)
    assert m.precision == pytest.approx(2 / 3)
    assert m.recall == pytest.approx(0.5)
    assert m.f1 == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    empty = match.metrics([], truth)
    assert (empty.precision, empty.recall, empty.f1) == (1.0, 0.0, 0.0)


def test_febrl4_loads_with_its_links(febrl4: match.Dataset) -> None:
    assert not febrl4.dedup
    assert len(febrl4.frames[0]) == len(febrl4.frames[1]) == 5000
    assert len(febrl4.truth) == 5000
    assert all(a.endswith("-org") and "-dup-" in b for a, b in febrl4.truth)


def test_unknown_dataset_is_refused() -> None:
    with pytest.raises(ValueError):
        match.load_dataset("febrl9")


def _slice(data: match.Dataset, n: int) -> match.Dataset:
    """The first ``n`` true links of febrl4 and only their records."""
    pairs = sorted(data.truth)[:n]
    left_ids = [a for a, _ in pairs]
    right_ids = [b for _, b in pairs]
    return match.Dataset(
        "febrl4-slice",
        (data.frames[0].loc[left_ids], data.frames[1].loc[right_ids]),
        frozenset(pairs),
    )


def test_rules_and_baseline_on_a_slice(febrl4: match.Dataset) -> None:
    data = _slice(febrl4, 400)
    ours = match.run_rules(data, RULES, n_random=5_000)
    assert ours["rules_version"] == "rules-v2"
    assert ours["false_auto_links"] == 0
    assert ours["precision"] == 1.0
    assert ours["recall_with_review"] >= ours["recall"] > 0.9
    assert ours["blocking_recall"] >= ours["recall_with_review"]
    assert ours["em"]["expected_matches"] == pytest.approx(400, rel=0.1)
    decisions = ours["decisions"]
    assert decisions.get("linked_wrong", 0) == 0
    assert sum(decisions.values()) == 400
    base = match.run_baseline(data)
    assert 0.0 < base["f1"] <= 1.0
    report = match.build_report(data, ours, base)
    for key in ("precision", "recall", "f1", "recall_with_review", "baseline_f1"):
        assert isinstance(report[key], float)
    assert report["records"] == 800 and report["mode"] == "linkage"
    text = match.format_report(report)
    assert "rules-v2" in text and "baseline" in text and "review band" in text


def test_report_goals() -> None:
    ours: dict[str, Any] = {"precision": 0.9995, "recall_with_review": 0.97, "f1": 0.95}
    base = {"precision": 1.0, "recall": 0.9, "f1": 0.96}
    data = match.Dataset("x", ([1, 2],), frozenset({("a", "b")}))
    goals = match.build_report(data, ours, base)["goals"]
    assert goals["precision_at_auto_link"]["met"] is True
    assert goals["recall_with_review"]["met"] is False
    assert goals["f1_vs_baseline"]["met"] is False
