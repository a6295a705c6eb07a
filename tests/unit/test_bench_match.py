"""Pure parts of ``mrhub bench match`` (mrhub_tools.bench.match and .splink_baseline), on
small slices of FEBRL and small hand-made Chinese frames."""

from __future__ import annotations

import math
import random
from datetime import date
from typing import Any

import pytest

from mrhub_tools.bench import match
from mrhub_tools.bench import splink_baseline as sb
from services.common.identifiers import ID_CARD_SYSTEM, INSURANCE_CARD_SYSTEM
from services.patient_index.matching import load_rules
from services.patient_index.normalize import make_person
from tests.fhir_samples import BAD_ID_CARD, ID_CARD, gb11643

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
    assert "rules-v2" in text and "recordlinkage" in text and "review band" in text


def test_report_goals() -> None:
    ours: dict[str, Any] = {"precision": 0.9995, "recall_with_review": 0.97, "f1": 0.95}
    base = {"precision": 1.0, "recall": 0.9, "f1": 0.96}
    data = match.Dataset("x", ([1, 2],), frozenset({("a", "b")}))
    goals = match.build_report(data, ours, base)["goals"]
    assert goals["precision_at_auto_link"]["met"] is True
    assert goals["recall_with_review"]["met"] is False
    assert goals["f1_vs_baseline"]["met"] is False


def test_report_lines_say_met_or_not_met_for_each_goal() -> None:
    ours: dict[str, Any] = {"precision": 0.9995, "recall_with_review": 0.99, "f1": 0.993}
    splink = {"best": {"f1": 0.9926}, "at_0_5": {"f1": 0.9923}}
    febrl = match.Dataset("febrl3", ([1],), frozenset({("a", "b")}))
    goals = match.build_report(febrl, ours, None, splink)["goals"]
    assert goals["f1_vs_splink_best"] == {"goal": 0.9926, "met": True}
    assert "f1_vs_baseline" not in goals  # no recordlinkage run
    lines = match.goal_lines(goals)
    assert lines[0].split() == ["met", "precision", "at", "auto-link", ">=", "0.999"]
    assert lines[2].split()[0] == "met" and "Splink's best-threshold F1 (0.9926)" in lines[2]
    worse = match.build_report(febrl, ours | {"f1": 0.99, "precision": 0.998}, None, splink)
    lines = match.goal_lines(worse["goals"])
    assert [ln.split()[0] for ln in lines] == ["NOT", "met", "NOT"]
    # the Chinese set: no F1 goal against Splink (the goals there are precision and recall)
    cn = match.Dataset("cn-10k", ([1],), frozenset({("a", "b")}), kind="cn")
    assert set(match.build_report(cn, ours, None, splink)["goals"]) == {
        "precision_at_auto_link",
        "recall_with_review",
    }


# ----------------------------------------------------------------------- Splink's figures


def test_figures_at_a_threshold_and_the_best_threshold() -> None:
    truth = frozenset({("a", "b"), ("c", "d"), ("e", "f"), ("g", "h")})
    scored = [
        (0.99, ("a", "b")),
        (0.9, ("c", "d")),
        (0.7, ("x", "y")),  # a false link above 0.5
        (0.3, ("e", "f")),
        (0.3, ("p", "q")),  # same probability: a threshold takes both
        (0.2, ("g", "h")),
    ]
    usual = sb.at_threshold(scored, truth, 0.5)
    assert (usual.links, usual.precision, usual.recall) == (3, 2 / 3, 0.5)
    best = sb.best_threshold(scored, truth)
    # 0.2 takes all six pairs: precision 4/6, recall 1 -> F1 0.8, the best
    assert best.threshold == 0.2
    assert (best.links, best.recall) == (6, 1.0)
    assert best.f1 == pytest.approx(0.8)
    assert best.f1 >= usual.f1
    nothing = sb.best_threshold([], truth)
    assert (nothing.links, nothing.f1) == (0, 0.0)


def test_best_threshold_prefers_the_higher_threshold_on_a_tie() -> None:
    truth = frozenset({("a", "b")})
    best = sb.best_threshold([(0.95, ("a", "b")), (0.01, ("a", "b"))], truth)
    assert (best.threshold, best.f1) == (0.95, 1.0)


# ---------------------------------------------------------------------- the Chinese set


def cn_row(**values: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "institution": "hosp-a",
        "name": "王芳",
        "family": None,
        "given": None,
        "sex": "female",
        "birth_date": "1985-03-17",
        "phone": "13912345678",
        "address": "北京市朝阳区建国路88号",
        "postcode": "100022",
        "id_card": None,
        "insurance": None,
        "_person": 17,
    }
    base.update(values)
    return base


def test_chinese_row_becomes_a_person() -> None:
    p = match.cn_person(cn_row(id_card=ID_CARD, insurance="110100123456"))
    assert p.institution == "hosp-a"
    assert (p.family, p.given, p.family_py, p.given_py) == ("王", "芳", "wang", "fang")
    assert p.sex == "female" and p.birth_date == date(1985, 3, 17)
    assert p.phone is not None and p.phone.endswith("13912345678")
    assert p.postcode == "100022" and p.address
    card, ins = p.idents
    assert (card.kind, card.system, card.value, card.verified) == (
        "id_card",
        ID_CARD_SYSTEM,
        ID_CARD,
        True,
    )
    assert (ins.kind, ins.system, ins.value) == ("insurance", INSURANCE_CARD_SYSTEM, "110100123456")
    assert p.card_conflict  # the card says male: the hub's own conflict flag, as from FHIR


def test_chinese_row_latin_name_split_name_and_bad_card() -> None:
    latin = match.cn_person(cn_row(name="Wang Fang", sex=None))
    assert (latin.family, latin.family_py, latin.given_py) == (None, "wang", "fang")
    split = match.cn_person(cn_row(name="欧阳娜娜", family="欧阳", given="娜娜"))
    assert (split.family, split.given) == ("欧阳", "娜娜")
    bad = match.cn_person(cn_row(id_card=BAD_ID_CARD, phone=None, birth_date=None))
    (card,) = bad.idents
    assert card.kind == "id_card" and not card.verified  # kept, but never a deterministic link
    assert bad.phone is None and bad.birth_date is None


def test_chinese_frame_never_reads_the_truth_label() -> None:
    import pandas as pd

    rows = {"r1": cn_row(), "r2": cn_row(institution="hosp-b", name="Wang Fang")}
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.index.name = "rec_id"
    poisoned = frame.assign(_person=[object(), object()])  # unreadable: must not matter
    assert match.cn_persons_of(frame) == match.cn_persons_of(poisoned)
    people = match.cn_persons_of(frame.drop(columns=["_person"]))
    assert set(people) == {"r1", "r2"}
    assert people["r2"].institution == "hosp-b"


def _cn_frame(n: int, seed: int = 3) -> match.Dataset:
    """``n`` people, every other one recorded twice (the second copy at another hospital,
    sometimes without the phone); the same few surnames and given names throughout."""
    import pandas as pd

    rng = random.Random(seed)
    rows: dict[str, dict[str, Any]] = {}
    truth = set()
    for i in range(n):
        born = date(rng.randint(1950, 1999), rng.randint(1, 9), rng.randint(10, 19))
        first = cn_row(
            name=rng.choice("王李张刘陈") + rng.choice("芳伟敏静丽强"),
            sex=rng.choice(["male", "female"]),
            birth_date=born.isoformat(),
            phone=f"139{rng.randint(10**7, 10**8 - 1)}",
            address=f"北京市东城区和平里{rng.randint(1, 99)}号",
            postcode="100013",
            id_card=gb11643(f"110101{born:%Y%m%d}{rng.randint(100, 999)}"),
            _person=i,
        )
        rows[f"r{i:03d}a"] = first
        if i % 2 == 0:
            phone = first["phone"] if i % 4 else None
            rows[f"r{i:03d}b"] = first | {"institution": "hosp-b", "phone": phone}
            truth.add((f"r{i:03d}a", f"r{i:03d}b"))
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.index.name = "rec_id"
    return match.Dataset("cn-tiny", (frame,), frozenset(truth), kind="cn")


def test_splink_frame_of_the_chinese_set_holds_the_normalised_columns() -> None:
    data = _cn_frame(6)
    people, _ = match.records_of(data)
    frame = sb.cn_frame(people)
    assert list(frame.columns) == ["rec_id", *sb.CN_COLUMNS]
    row = frame.set_index("rec_id").loc["r000a"]
    p = people["r000a"]
    assert (row["family"], row["family_py"], row["given_py"]) == (p.family, p.family_py, p.given_py)
    assert row["id_card"] == row["id_card_block"]  # a valid card: also a blocking key
    bad = sb.cn_row("x", match.cn_person(cn_row(id_card=BAD_ID_CARD)))
    assert bad["id_card"] == BAD_ID_CARD and bad["id_card_block"] is None


def test_splink_and_mrhub_on_a_tiny_chinese_frame() -> None:
    """Splink end to end (DuckDB in process) and the hub's matcher on the same records;
    a few seconds, most of it Splink's own set-up."""
    data = _cn_frame(60)
    records = match.records_of(data)
    ours = match.run_rules(data, RULES, n_random=2_000, records=records)
    assert ours["false_auto_links"] == 0
    assert ours["recall_with_review"] == 1.0
    assert ours["pairs_per_record"] > 0
    splink = sb.run_splink([sb.cn_frame(records[0])], sb.cn_plan(), data.truth, u_max_pairs=20_000)
    assert splink["best"]["f1"] >= splink["at_0_5"]["f1"]
    assert splink["best"]["recall"] >= 0.9  # the copies share name, birth date and card
    assert splink["candidate_pairs"] >= len(data.truth)
    report = match.build_report(data, ours, None, splink)
    text = match.format_report(report)
    assert "Splink p>=0.5" in text and "pairs per record" in text
    assert "precision at auto-link >= 0.999" in text


def test_splink_pairs_are_oriented_as_the_truth() -> None:
    dedup = sb._pairs_of([(0.9, "rec-2-org", "rec-2-dup-0", None)], dedup=True)
    assert dedup == [(0.9, ("rec-2-dup-0", "rec-2-org"))]  # sorted, as truth_pairs does
    linked = sb._pairs_of(
        [
            (0.8, "rec-1-dup-0", "rec-1-org", sb.LINK_ALIASES[1]),
            (0.7, "rec-3-org", "rec-3-dup-0", sb.LINK_ALIASES[0]),
        ],
        dedup=False,
    )
    assert [p for _, p in linked] == [("rec-1-org", "rec-1-dup-0"), ("rec-3-org", "rec-3-dup-0")]


def test_child_carrying_a_parents_numbers_is_reviewed_not_auto_linked() -> None:
    """rules-v2's guard: a child recorded with a parent's 医保卡 and the family phone."""
    from services.patient_index.matching import score

    ins = match.cn_person(cn_row(name="王建国", sex="male", birth_date="1975-05-01",
                                 insurance="110100123456"))  # fmt: skip
    child = match.cn_person(cn_row(name="王子涵", sex="male", birth_date="2024-03-02",
                                   insurance="110100123456", institution="hosp-b"))  # fmt: skip
    s = score(child, ins, RULES)
    assert s.total >= RULES.upper_weight  # every number agrees: the score alone would link
    assert (s.outcome, s.guard) == ("review", "relative-carrying-the-same-numbers")
    typo = match.cn_person(cn_row(name="王建国", sex="male", birth_date="1975-05-11",
                                  insurance="110100123456", institution="hosp-b"))  # fmt: skip
    assert score(typo, ins, RULES).outcome == "auto"  # one mistyped field still links


def test_splink_links_two_febrl_files(febrl4: match.Dataset) -> None:
    """The linkage path (two input tables) end to end on a slice of febrl4."""
    data = _slice(febrl4, 150)
    frames = [sb.febrl_frame(f) for f in data.frames]
    splink = sb.run_splink(frames, sb.febrl_plan(), data.truth, u_max_pairs=20_000)
    assert splink["best"]["precision"] >= 0.98
    assert splink["best"]["recall"] >= 0.9
    assert splink["best"]["f1"] >= splink["at_0_5"]["f1"]
