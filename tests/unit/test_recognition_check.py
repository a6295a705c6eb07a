"""The synchronous check's answer and read scope, the doctor's feedback, and what the worker
keeps for re-evaluation (services.recognition.check / feedback / app helpers)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from services.common.institutions import may_read
from services.recognition.app import (
    KEEP_ORDERS,
    MAX_MATCHES,
    decision_body,
    fingerprint,
    keep_recent,
    result_key,
    results_prefix,
)
from services.recognition.catalog import Catalog, load_catalog
from services.recognition.check import (
    MAX_BODY_BYTES,
    MAX_JSON_DEPTH,
    MAX_PARAM_CHARS,
    MAX_SHOWN,
    BadInput,
    image_links,
    nesting_exceeds,
    parse_body,
    parse_coded,
    render_check,
    text_param,
)
from services.recognition.decision import REASONS
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
    rid = decision.matches[0].record_id
    posted = {
        "resourceType": "Observation",
        "valueQuantity": {"value": 132, "unit": "g/L"},
        "referenceRange": [{"low": {"value": 130, "unit": "g/L"}, "high": {"value": 175}}],
        "interpretation": [{"coding": [{"code": "N"}]}],
    }
    answer = render_check(
        decision,
        INSTITUTIONS["TY-L2"],
        INSTITUTIONS,
        NOW,
        base="https://hub.example",
        resources={rid: posted},
    )
    assert (answer["decision"], answer["reason"]) == ("recognisable", "recognised")
    assert answer["catalog_version"] == "shanxi-v1" and answer["saving_yuan"] > 0
    [m] = answer["matches"]
    # the hub's id, resolvable on the hub's FHIR base (the poster's own id kept aside)
    assert m["institution"] == "TY-L3A" and m["report"]["reference"] == f"Observation/{rid}"
    assert m["report"]["url"] == f"https://hub.example/fhir/Observation/{rid}"
    assert m["report"]["posted_as"] == "Observation/obs-1"
    assert m["value"] == {
        "value": "132",
        "unit": "g/L",
        "reference_range": "130-175 g/L",
        "interpretation": "N",
        "text": "132 g/L（参考范围 130-175 g/L）",
    }
    assert m["conclusion"] is None
    assert m["valid_until"] == (NOW - timedelta(days=2) + timedelta(days=7)).isoformat()
    assert m["images"] == [] and m["viewer"] is None  # a lab item has no images


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
    answer = render_check(decision, INSTITUTIONS["DT-L3A"], INSTITUTIONS, NOW, link_grade="certain")
    assert answer["reason"] == "scope-not-satisfied"
    assert answer["matches"] == [] and answer["matches_total"] == 0  # invisible in Datong
    assert answer["master_patient_id"] is None and answer["link_grade"] is None
    assert "TY-K-ITEM" not in str(answer)


def test_an_hr_scope_refusal_names_nobody_outside_the_scope(shanxi: Catalog) -> None:
    # Datong's lab is qualified for Datong only; a Taiyuan 三甲 orders the item
    decision = run(lab_order(at="TY-L3A-2"), [lab(at="DT-L3A-MUNI")], shanxi)
    assert decision.matches[0].rule == "hr-scope"
    assert "DT-L3A-MUNI" in decision.detail  # the decision on the topic names it …
    answer = render_check(decision, INSTITUTIONS["TY-L3A-2"], INSTITUTIONS, NOW)
    assert answer["reason"] == "scope-not-satisfied"
    assert answer["detail"] == REASONS["scope-not-satisfied"]  # … the answer does not
    assert "DT-L3A-MUNI" not in str(answer) and answer["master_patient_id"] is None


def test_an_unqualified_issuer_is_not_named_to_a_reader_who_may_not_see_its_result(
    shanxi: Catalog,
) -> None:
    decision = run(lab_order(at="TY-L2"), [lab(at="TY-NOQUAL")], shanxi)
    assert decision.reason == "issuer-not-qualified"
    answer = render_check(decision, INSTITUTIONS["TY-L2"], INSTITUTIONS, NOW)
    assert answer["reason"] == "issuer-not-qualified" and answer["matches"] == []
    assert INSTITUTIONS["TY-NOQUAL"].name not in str(answer) and "TY-NOQUAL" not in str(answer)
    # the issuer itself sees its own result and why
    own = render_check(decision, INSTITUTIONS["TY-NOQUAL"], INSTITUTIONS, NOW)
    assert [m["institution"] for m in own["matches"]] == ["TY-NOQUAL"]
    assert own["detail"] == decision.detail and own["master_patient_id"]


def test_a_known_patient_out_of_scope_and_an_unknown_one_get_answers_of_one_shape(
    shanxi: Catalog,
) -> None:
    reader = INSTITUTIONS["DT-L3A"]
    known = run(lab_order(at="DT-L3A"), [lab(at="TY-K-ITEM")], shanxi)
    unknown = run(lab_order(at="DT-L3A").model_copy(update={"master_patient_id": None}), [], shanxi)
    a = render_check(known, reader, INSTITUTIONS, NOW, link_grade="certain")
    b = render_check(unknown, reader, INSTITUTIONS, NOW, link_grade=None)
    assert a.keys() == b.keys()
    for key in ("master_patient_id", "link_grade", "matches", "matches_total", "saving_yuan"):
        assert a[key] == b[key], key


def test_an_in_scope_reader_sees_the_master_id_link_grade_and_the_decisions_detail(
    shanxi: Catalog,
) -> None:
    decision = run(lab_order(at="TY-L2"), [lab(at="TY-L3A", collected=timedelta(days=2))], shanxi)
    answer = render_check(decision, INSTITUTIONS["TY-L2"], INSTITUTIONS, NOW, link_grade="certain")
    assert answer["master_patient_id"] == decision.master_patient_id
    assert answer["link_grade"] == "certain" and answer["detail"] == decision.detail
    assert answer["matches_total"] == 1


def test_an_answer_lists_a_bounded_number_of_matches_and_counts_them_all(
    shanxi: Catalog,
) -> None:
    results = [lab(at="TY-L3A", collected=timedelta(hours=i + 1)) for i in range(MAX_SHOWN + 7)]
    decision = run(lab_order(at="TY-L2"), results, shanxi)
    answer = render_check(decision, INSTITUTIONS["TY-L2"], INSTITUTIONS, NOW)
    assert len(answer["matches"]) == MAX_SHOWN and answer["matches_total"] == MAX_SHOWN + 7
    assert answer["matches"][0]["report"]["record_id"] == decision.matches[0].record_id
    assert len(fingerprint(decision)[2]) == MAX_MATCHES


def test_no_patient_no_result(shanxi: Catalog) -> None:
    decision = run(lab_order(at="TY-L2"), [], shanxi)
    answer = render_check(decision, INSTITUTIONS["TY-L2"], INSTITUTIONS, NOW)
    assert (answer["decision"], answer["reason"], answer["matches"]) == (
        "not-recognisable",
        "no-prior-result",
        [],
    )


# ── the inputs ───────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("raw", "deep"),
    [
        (b'{"a": [1, 2, {"b": 3}]}', False),
        (b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH, False),
        (b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1), True),
        (b"[" * 100_000, True),
        (b'{"note": "' + b"[" * 1000 + b'"}', False),  # brackets in a string do not count
        (b'{"note": "\\"}' + b"]" * 5, False),  # an escaped backslash ends the escape
        (b'{"note": "\\"[[[[[[[[[[[["}', False),  # an escaped quote does not end the string
    ],
)
def test_json_nesting_is_measured_on_the_bytes(raw: bytes, deep: bool) -> None:
    assert nesting_exceeds(raw) is deep


@pytest.mark.parametrize(
    ("content_type", "raw", "status"),
    [
        ("application/json", b"[" * 100_000 + b"]" * 100_000, 400),
        ("application/json", b"{" * 50_000, 400),
        ("application/json", b"not json", 400),
        ("application/json", b"\xff\xfe", 400),
        ("application/json", b"[1, 2]", 400),
        ("application/json", b'{"patient": "\\ud800", "note": "x"}', 400),
        ("application/json", b'{"n": 1' + b"0" * 5000 + b"}", 400),
        ("application/json", b"", 400),
        ("application/json", b'{"a": "' + b"x" * MAX_BODY_BYTES + b'"}', 413),
        ("text/plain", b"patient=x", 415),
        ("application/x-www-form-urlencoded", b"patient=a&patient=b", 400),
        ("application/x-www-form-urlencoded", b"\xff=1", 400),
        ("application/x-www-form-urlencoded", b"&".join(b"f%d=1" % i for i in range(40)), 400),
    ],
)
def test_bad_bodies_are_refused_with_a_4xx(content_type: str, raw: bytes, status: int) -> None:
    with pytest.raises(BadInput) as refused:
        parse_body(content_type, raw)
    assert refused.value.status == status


def test_a_check_body_may_be_json_or_a_form() -> None:
    doc = {"patient": "urn:oid:2.16.156.10011.1.3|110105198503171234", "code": "K"}
    raw = b'{"patient": "urn:oid:2.16.156.10011.1.3|110105198503171234", "code": "K"}'
    assert parse_body("application/json", raw) == doc
    assert parse_body("application/fhir+json", raw) == doc
    form = b"patient=urn%3Aoid%3A2.16.156.10011.1.3%7C110105198503171234&code=K"
    assert parse_body("application/x-www-form-urlencoded", form) == doc


@pytest.mark.parametrize(
    "value",
    [5, ["a"], {"a": 1}, "x" * (MAX_PARAM_CHARS + 1), "a\x00b", "line\nbreak", "\ud800", "", "   "],
)
def test_a_parameter_must_be_a_short_plain_string(value: Any) -> None:
    with pytest.raises(BadInput) as refused:
        text_param(value, "patient")
    assert refused.value.status == 400 and refused.value.expression == "patient"


def test_a_good_parameter_is_stripped() -> None:
    assert text_param("  http://loinc.org|58410-2 ", "code") == "http://loinc.org|58410-2"
    assert text_param(None, "code", required=False) == ""


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


def test_each_result_is_its_own_table_entry_under_its_patients_prefix() -> None:
    master = b"MP0123456789abcdef01234567"
    key = result_key(master, "r-1")
    assert key == b"MP0123456789abcdef01234567|r-1"
    assert key.startswith(results_prefix(master))
    assert not result_key(b"MP0123456789abcdef01234568", "r-1").startswith(results_prefix(master))


def test_only_recent_orders_are_kept_for_re_evaluation() -> None:
    orders = {f"o{i}": {"decided_at": (NOW - timedelta(days=i)).isoformat()} for i in range(120)}
    kept = keep_recent(orders, NOW)
    assert len(kept) == KEEP_ORDERS
    assert set(kept) == {f"o{i}" for i in range(KEEP_ORDERS)}  # the newest fifty
    old = {"old": {"decided_at": (NOW - timedelta(days=91)).isoformat()}}
    assert keep_recent(old, NOW) == {}


def test_a_published_decision_lists_a_bounded_number_of_matches_and_fits_its_schema(
    shanxi: Catalog,
) -> None:
    import json

    import jsonschema
    import simplejson

    schema = json.loads((REPO / "docs" / "schemas" / "decision-made.v1.json").read_text())
    results = [lab(at="TY-L3A", collected=timedelta(hours=i + 1)) for i in range(MAX_MATCHES * 3)]
    decision = run(lab_order(at="TY-L2"), results, shanxi)
    body = decision_body(decision, "0" * 32, previous=None, cause=None)
    doc = json.loads(simplejson.dumps(body, use_decimal=True))
    jsonschema.validate(doc, schema)
    assert len(doc["matches"]) == MAX_MATCHES and doc["matches_total"] == MAX_MATCHES * 3
    assert doc["matches"][0]["record_id"] == decision.matches[0].record_id
    assert len(doc["detected_issue"]["evidence"][0]["detail"]) == MAX_MATCHES
    again = decision_body(decision, "1" * 32, previous=body, cause="result-amended")
    assert (again["revision"], again["supersedes"], again["reissue"]) == (2, "0" * 32, True)
    jsonschema.validate(json.loads(simplejson.dumps(again, use_decimal=True)), schema)
