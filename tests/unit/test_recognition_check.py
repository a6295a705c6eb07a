"""The synchronous check's answer and read scope, the doctor's feedback, and what the worker
keeps for re-evaluation (services.recognition.check / feedback / app helpers)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from services.common.institutions import may_read
from services.recognition.app import KEEP_ORDERS, fingerprint, keep_recent
from services.recognition.catalog import Catalog, load_catalog
from services.recognition.check import image_links, parse_coded, render_check
from services.recognition.feedback import NATIONAL_EXCEPTIONS, Feedback, parse_feedback
from tests.unit.test_recognition_decision import (
    INSTITUTIONS,
    NOW,
    ct,
    ct_order,
    lab,
    lab_order,
    run,
)

REPO = Path(__file__).resolve().parents[2]
TODAY = NOW.date()


@pytest.fixture(scope="module")
def shanxi() -> Catalog:
    return load_catalog(REPO / "config" / "catalog" / "shanxi-v1.yaml")


# ── read scope ───────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("reader", "performer", "category", "visible"),
    [
        ("TY-L2", "TY-L2", "lab", True),  # its own
        ("ALLY-L1", "ALLY-LEAD", "lab", True),  # one 医联体
        ("DT-L3A", "TY-L3A", "lab", True),  # provincial HR scope reaches Datong
        ("DT-L3A", "TY-K-ITEM", "lab", False),  # municipal (K only): Taiyuan, not Datong
        ("TY-L2", "TY-K-ITEM", "lab", True),  # … but the same city
        ("TY-L2", "TY-NOQUAL", "lab", False),  # no qualification: nobody else sees it
        ("TY-L2", "TY-EXPIRED", "lab", False),  # an expired one reaches nobody
        ("TY-L2", "DT-L3A-MUNI", "lab", False),  # Datong's city-only lab
        ("DT-L3A", "DT-L3A-MUNI", "lab", True),
        ("TY-L2", "DT-L3A-MUNI", "imaging", False),  # lab only: its imaging stays home
        ("TY-L2", "BJ-L3A", "lab", True),  # national reaches everywhere
    ],
)
def test_who_may_read_whose_results(
    reader: str, performer: str, category: str, visible: bool
) -> None:
    got = may_read(INSTITUTIONS[reader], INSTITUTIONS[performer], category=category, on=TODAY)
    assert got is visible


# ── the check's answer ───────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("http://loinc.org|58410-2", ("http://loinc.org", "58410-2")),
        ("58410-2", (None, "58410-2")),
        ("|58410-2", (None, "58410-2")),
        (" urn:oid:1.2|SX-JC-0202 ", ("urn:oid:1.2", "SX-JC-0202")),
        ("http://loinc.org|", None),
        ("", None),
    ],
)
def test_a_coded_parameter(text: str, parsed: tuple[str | None, str] | None) -> None:
    assert parse_coded(text) == parsed


def test_a_recognisable_lab_result_is_shown_with_its_report_and_expiry(shanxi: Catalog) -> None:
    decision = run(lab_order(at="TY-L2"), [lab(at="TY-L3A", collected=timedelta(days=2))], shanxi)
    answer = render_check(decision, INSTITUTIONS["TY-L2"], INSTITUTIONS, NOW)
    assert (answer["decision"], answer["reason"]) == ("recognisable", "recognised")
    assert answer["catalog_version"] == "shanxi-v1" and answer["saving_yuan"] > 0
    [m] = answer["matches"]
    assert m["institution"] == "TY-L3A" and m["report"]["reference"] == "Observation/obs-1"
    assert m["valid_until"] == (NOW - timedelta(days=2) + timedelta(days=7)).isoformat()
    assert "images" not in m  # a lab item has no images


def test_an_imaging_match_carries_its_wado_rs_study_link(shanxi: Catalog) -> None:
    decision = run(ct_order(at="TY-L2"), [ct(at="TY-L3A")], shanxi)
    answer = render_check(decision, INSTITUTIONS["TY-L2"], INSTITUTIONS, NOW)
    [m] = answer["matches"]
    uid = decision.matches[0].study_uid
    assert m["images"] == [f"https://pacs.example-hospital.cn/dicom-web/studies/{uid}"]
    assert image_links(decision.matches[0]) == m["images"]


def test_a_reader_outside_the_scope_learns_why_but_not_where(shanxi: Catalog) -> None:
    # TY-K-ITEM's potassium is qualified for Taiyuan only; a Datong hospital orders it
    decision = run(lab_order(at="DT-L3A"), [lab(at="TY-K-ITEM")], shanxi)
    assert decision.reason == "scope-not-satisfied" and decision.matches
    answer = render_check(decision, INSTITUTIONS["DT-L3A"], INSTITUTIONS, NOW)
    assert answer["reason"] == "scope-not-satisfied"
    assert answer["matches"] == []  # the Taiyuan result stays invisible in Datong


def test_no_patient_no_result(shanxi: Catalog) -> None:
    decision = run(lab_order(at="TY-L2"), [], shanxi)
    answer = render_check(decision, INSTITUTIONS["TY-L2"], INSTITUTIONS, NOW)
    assert (answer["decision"], answer["reason"], answer["matches"]) == (
        "not-recognisable",
        "no-prior-result",
        [],
    )


# ── feedback ─────────────────────────────────────────────────────────────────────────────


def test_a_recognised_result_needs_no_reason(shanxi: Catalog) -> None:
    got = parse_feedback({"choice": "recognised", "decision_id": "d1"}, shanxi)
    assert isinstance(got, Feedback) and (got.reason, got.decision_id) == (None, "d1")
    refused = parse_feedback({"choice": "recognised", "reason": "emergency"}, shanxi)
    assert isinstance(refused, list) and refused[0].expression == "reason"


@pytest.mark.parametrize("code", sorted(NATIONAL_EXCEPTIONS))
def test_every_national_reason_is_taken(code: str, shanxi: Catalog) -> None:
    got = parse_feedback({"choice": "re-ordered", "reason": code, "note": "见病历"}, shanxi)
    assert isinstance(got, Feedback)
    assert (got.reason, got.reason_source) == (code, "national")
    assert got.reason_name == NATIONAL_EXCEPTIONS[code]


def test_a_provincial_reason_counts_only_where_the_catalogue_lists_it(shanxi: Catalog) -> None:
    doc: dict[str, Any] = {"choice": "re-ordered", "reason": "image-quality"}
    got = parse_feedback(doc, shanxi)
    assert isinstance(got, Feedback) and got.reason_source == "provincial"
    assert got.reason_name == "影像质量不满足诊断要求"
    elsewhere = parse_feedback(doc, None)  # a region without extras
    assert isinstance(elsewhere, list) and elsewhere[0].expression == "reason"


@pytest.mark.parametrize(
    ("doc", "where"),
    [
        ({"choice": "maybe"}, "choice"),
        ({"choice": "re-ordered"}, "reason"),
        ({"choice": "re-ordered", "reason": "bored"}, "reason"),
        ({"choice": "re-ordered", "reason": "other"}, "note"),  # 'other' must say why
        ({"choice": "recognised", "note": "x" * 501}, "note"),
        ({"choice": "recognised", "note": 5}, "note"),
        ({"choice": "recognised", "order": ""}, "order"),
        ({"choice": "recognised", "decision_id": "x" * 65}, "decision_id"),
    ],
)
def test_bad_feedback_is_refused_where_it_is_wrong(
    doc: dict[str, Any], where: str, shanxi: Catalog
) -> None:
    got = parse_feedback(doc, shanxi)
    assert isinstance(got, list) and where in [p.expression for p in got]


def test_numbers_in_the_note_are_masked(shanxi: Catalog) -> None:
    doc = {"choice": "re-ordered", "reason": "other", "note": "患者 110105198503171234 要求复查"}
    got = parse_feedback(doc, shanxi)
    assert isinstance(got, Feedback)
    assert "110105198503171234" not in got.note and got.note.startswith("患者 ")


# ── what the worker keeps per order ──────────────────────────────────────────────────────


def test_the_fingerprint_changes_with_what_the_doctor_would_see(shanxi: Catalog) -> None:
    result = lab(at="TY-L3A", collected=timedelta(days=2))
    first = run(lab_order(at="TY-L2"), [result], shanxi)
    same = run(lab_order(at="TY-L2"), [result], shanxi)
    assert fingerprint(first) == fingerprint(same)
    gone = run(lab_order(at="TY-L2"), [], shanxi)
    assert fingerprint(first) != fingerprint(gone)
    later = run(lab_order(at="TY-L2"), [result], shanxi, now=NOW + timedelta(days=4))
    assert fingerprint(later) == fingerprint(first)  # same verdict, same expiry
    expired = run(lab_order(at="TY-L2"), [result], shanxi, now=NOW + timedelta(days=6))
    assert fingerprint(expired) != fingerprint(first)


def test_only_recent_orders_are_kept_for_re_evaluation() -> None:
    orders = {f"o{i}": {"decided_at": (NOW - timedelta(days=i)).isoformat()} for i in range(120)}
    kept = keep_recent(orders, NOW)
    assert len(kept) == KEEP_ORDERS
    assert set(kept) == {f"o{i}" for i in range(KEEP_ORDERS)}  # the newest fifty
    old = {"old": {"decided_at": (NOW - timedelta(days=91)).isoformat()}}
    assert keep_recent(old, NOW) == {}
