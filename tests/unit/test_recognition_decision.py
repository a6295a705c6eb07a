"""Recognition decisions (services.recognition.decision), scenario by scenario.

Expected outcomes follow the rules in /work/shared/design/domain.md as docs/recognition.md
states them: windows per item and anchor; HR qualification; same level, lower recognises
upper, upper recognises lower only where the region allows, 医联体 members recognise each
other; private hospitals excluded where the catalogue says so.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.detectedissue import DetectedIssue

from services.common.institutions import Institution, Qualification, Registry
from services.recognition.catalog import Catalog, load_catalog, parse_catalog
from services.recognition.decision import (
    REASON_SYSTEM,
    REASONS,
    SAVING_EXTENSION,
    Decision,
    ImagingInfo,
    Order,
    PriorResult,
    SourceInfo,
    decide,
    to_detected_issue,
)

REPO = Path(__file__).resolve().parents[2]
CST = timezone(timedelta(hours=8))
NOW = datetime(2026, 11, 20, 12, 0, tzinfo=CST)
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
CHEST = "51185008"
ABDOMEN = "818983003"


@pytest.fixture(scope="module")
def shanxi() -> Catalog:
    return load_catalog(REPO / "config" / "catalog" / "shanxi-v1.yaml")


# ── institutions (built here; the registry file is used further down) ───────────────────


def q(scope: str = "provincial", **kw: Any) -> Qualification:
    kw.setdefault("issued", date(2026, 1, 1))
    kw.setdefault("expires", date(2027, 12, 31))
    return Qualification(scope=scope, **kw)  # type: ignore[arg-type]


FULL = (q(category="lab"), q(category="imaging"), q(category="ecg"))


def inst(
    ident: str,
    level: int,
    *,
    grade: str = "甲",
    ownership: str = "public",
    region: str = "140105",
    alliances: Sequence[str] = (),
    quals: Sequence[Qualification] = FULL,
) -> Institution:
    return Institution.model_validate(
        {
            "id": ident,
            "name": ident,
            "level": level,
            "grade": grade,
            "ownership": ownership,
            "region_code": region,
            "alliances": tuple(alliances),
            "qualifications": tuple(quals),
        }
    )


INSTITUTIONS: dict[str, Institution] = {
    i.id: i
    for i in (
        inst("TY-L3A", 3),  # Taiyuan 三甲
        inst("TY-L3A-2", 3, region="140110"),
        inst("TY-L3B", 3, grade="乙", region="140107"),  # Taiyuan 三乙
        inst("TY-L2", 2, region="140106"),
        inst("TY-L2-2", 2, region="140109"),
        inst("TY-L1", 1, grade="未定等", region="140106"),
        inst("ALLY-LEAD", 3, region="140110", alliances=["tyyl-01"]),
        inst("ALLY-L2", 2, region="140110", alliances=["tyyl-01"]),
        inst("ALLY-L1", 1, grade="未定等", region="140110", alliances=["tyyl-01"]),
        inst("ALLY-PRIV", 2, ownership="private", region="140110", alliances=["tyyl-01"]),
        inst("TY-PRIV", 2, grade="未定等", ownership="private", region="140109"),
        inst("DT-L3A", 3, region="140213"),  # Datong
        inst("DT-L3A-MUNI", 3, region="140213", quals=[q("municipal", category="lab")]),
        inst(
            "TY-L2-ALLY-HR",
            2,
            region="140110",
            quals=[q("alliance", item="K")],
            alliances=["tyyl-02"],
        ),
        inst("BJ-L3A", 3, region="110105", quals=[q("national", category="lab")]),
        inst("TY-NOQUAL", 2, quals=()),
        inst("TY-NA-ONLY", 2, quals=[q(item="NA")]),
        inst("TY-K-ITEM", 2, quals=[q("municipal", item="K")]),
        inst(
            "TY-EXPIRED",
            2,
            quals=[q(category="lab", issued=date(2024, 1, 1), expires=date(2025, 12, 31))],
        ),
        inst("TY-FUTURE", 2, quals=[q(category="lab", issued=date(2026, 12, 1))]),
        inst("TY-LAPSED-SINCE", 2, quals=[q(category="lab", expires=date(2026, 11, 17))]),
        inst("TY-WIDE", 2, quals=[q("municipal", item="K"), q("national", category="lab")]),
    )
}

_ids = itertools.count(1)


def _rid() -> str:
    return f"{next(_ids):032x}"


def lab(
    loinc: str = "2823-3",
    *,
    at: str = "TY-L3A",
    collected: timedelta | None = timedelta(days=1),
    issued: timedelta | None = None,
    performed: timedelta | None = None,
    status: str = "final",
    link: str = "confirmed",
    change: str = "new",
) -> PriorResult:
    """A lab result ``collected``/``issued``/``performed`` that long before NOW."""

    def ago(delta: timedelta | None) -> str | None:
        return (NOW - delta).isoformat() if delta is not None else None

    return PriorResult.model_validate(
        {
            "change": change,
            "record_id": _rid(),
            "institution": at,
            "resource_type": "Observation",
            "category": "lab",
            "codes": [{"system": LOINC, "code": loinc, "display": None}],
            "status": status,
            "performed_at": ago(performed),
            "collected_at": ago(collected),
            "issued_at": ago(issued),
            "source": {"event_id": "e", "resource_type": "Observation", "resource_id": "obs-1"},
            "link": link,
        }
    )


def ct(
    *,
    at: str = "TY-L3A",
    site: str = CHEST,
    contrast: bool | None = False,
    performed: timedelta | None = timedelta(days=3),
    issued: timedelta | None = None,
    resource_type: str = "ImagingStudy",
    modality: str = "CT",
) -> PriorResult:
    return PriorResult(
        record_id=_rid(),
        institution=at,
        resource_type=resource_type,
        category="imaging",
        codes=(),
        imaging=ImagingInfo(
            study_uid="1.2.840.113619.2.55.3.604688119.969.1700000000.123",
            modalities=(modality,),
            body_sites=({"system": SNOMED, "code": site},),  # type: ignore[arg-type]
            contrast=contrast,
            endpoints=("https://pacs.example-hospital.cn/dicom-web",),
        ),
        status="available" if resource_type == "ImagingStudy" else "final",
        performed_at=NOW - performed if performed is not None else None,
        issued_at=NOW - issued if issued is not None else None,
        source=SourceInfo(resource_type=resource_type, resource_id="study-1"),
    )


def lab_order(loinc: str = "2823-3", *, at: str = "TY-L3A-2") -> Order:
    return Order(
        record_id=_rid(),
        master_patient_id="9f2c4e1a7b3d4c5e8f60718293a4b5c6",
        institution=at,
        category="lab",
        codes=({"system": LOINC, "code": loinc},),  # type: ignore[arg-type]
    )


def ct_order(
    *, at: str = "TY-L3A-2", site: str = CHEST, contrast: bool | None = False, modality: str = "CT"
) -> Order:
    return Order.model_validate(
        {
            "record_id": _rid(),
            "master_patient_id": "9f2c4e1a7b3d4c5e8f60718293a4b5c6",
            "institution": at,
            "category": "imaging",
            "codes": [],
            "imaging": {
                "modalities": [modality],
                "body_sites": [{"system": SNOMED, "code": site}],
                "contrast": contrast,
            },
        }
    )


def run(
    order: Order,
    results: Iterable[PriorResult],
    catalog: Catalog,
    *,
    now: datetime = NOW,
) -> Decision:
    return decide(order, list(results), INSTITUTIONS, catalog, now)


def small_catalog(**rules: Any) -> Catalog:
    """One region (Shanxi) with K (7 days from collection) and the given region rules."""
    return parse_catalog(
        {
            "catalog": "test",
            "version": "test-v1",
            "region_code": "140000",
            "effective_from": date(2026, 1, 1),
            "rules": rules,
            "items": [
                {
                    "id": "K",
                    "name": "钾",
                    "category": "lab",
                    "codes": {"loinc": ["2823-3"]},
                    "window": {
                        "length": 7,
                        "unit": "days",
                        "anchor": "specimen-collection",
                        "basis": "published",
                    },
                    "price_yuan": "6.50",
                }
            ],
        }
    )


# ── every reason code ────────────────────────────────────────────────────────────────────

REASON_CASES: list[tuple[str, Any, Any, str, str]] = [
    ("recognised", lambda: lab_order(), lambda: [lab()], "recognisable", "recognised"),
    (
        "not-in-catalog",
        lambda: Order(institution="TY-L3A", codes=({"system": "urn:x", "code": "Y"},)),  # type: ignore[arg-type]
        lambda: [lab()],
        "not-recognisable",
        "not-in-catalog",
    ),
    ("no prior result", lambda: lab_order(), lambda: [], "not-recognisable", "no-prior-result"),
    (
        "only other items",
        lambda: lab_order("2823-3"),
        lambda: [lab("2951-2")],  # Na, not K
        "not-recognisable",
        "no-prior-result",
    ),
    (
        "preliminary",
        lambda: lab_order(),
        lambda: [lab(status="preliminary")],
        "not-recognisable",
        "result-not-final",
    ),
    (
        "too old",
        lambda: lab_order(),
        lambda: [lab(collected=timedelta(days=8))],
        "not-recognisable",
        "outside-window",
    ),
    (
        "no HR",
        lambda: lab_order(),
        lambda: [lab(at="TY-NOQUAL")],
        "not-recognisable",
        "issuer-not-qualified",
    ),
    (
        "direction",
        lambda: lab_order(at="TY-L3A"),
        lambda: [lab(at="TY-L2")],
        "not-recognisable",
        "scope-not-satisfied",
    ),
    (
        "possible match only",
        lambda: lab_order(),
        lambda: [lab(link="in-review")],
        "not-recognisable",
        "link-in-review",
    ),
]


@pytest.mark.parametrize(
    ("case", "order", "results", "outcome", "reason"),
    REASON_CASES,
    ids=[c[0] for c in REASON_CASES],
)
def test_each_reason_code(
    shanxi: Catalog, case: str, order: Any, results: Any, outcome: str, reason: str
) -> None:
    d = run(order(), results(), shanxi)
    assert (d.outcome, d.reason) == (outcome, reason)
    assert d.catalog_version == "shanxi-v1"
    assert d.detail


def test_the_reason_table_covers_every_documented_code() -> None:
    assert {c[4] for c in REASON_CASES} == set(REASONS)
    text = (REPO / "docs" / "recognition.md").read_text(encoding="utf-8")
    assert [r for r in REASONS if f"| `{r}` |" not in text] == []


def test_a_recognised_order_carries_the_saving_and_the_earlier_result(shanxi: Catalog) -> None:
    result = lab(at="TY-L3A", collected=timedelta(days=2))
    d = run(lab_order(at="TY-L3A-2"), [result], shanxi)
    assert d.recognisable and d.item_id == "K"
    assert d.estimated_saving_yuan == Decimal(6) == d.price_yuan
    best = d.best
    assert best is not None
    assert best.record_id == result.record_id
    assert best.institution == "TY-L3A"
    assert best.performed_at is None and best.anchor_at == NOW - timedelta(days=2)
    assert best.valid_until == NOW - timedelta(days=2) + timedelta(days=7)
    assert best.hr_scope == "provincial"
    assert best.report_ref == "Observation/obs-1"


def test_a_refused_order_saves_nothing_but_names_the_price(shanxi: Catalog) -> None:
    d = run(lab_order(), [lab(collected=timedelta(days=8))], shanxi)
    assert d.estimated_saving_yuan is None
    assert d.price_yuan == Decimal(6)


# ── windows: hours and days, both anchors ────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("loinc", "age", "reason"),
    [
        # CBC: 6 hours from specimen collection
        ("58410-2", timedelta(hours=5, minutes=59), "recognised"),
        ("58410-2", timedelta(hours=6), "recognised"),  # valid up to and including the end
        ("58410-2", timedelta(hours=6, minutes=1), "outside-window"),
        # urinalysis: 12 hours
        ("24356-8", timedelta(hours=11), "recognised"),
        ("24356-8", timedelta(hours=13), "outside-window"),
        # potassium: 7 days
        ("2823-3", timedelta(days=6, hours=23), "recognised"),
        ("2823-3", timedelta(days=7, minutes=1), "outside-window"),
        # glucose: 30 days; HbA1c: 60 days
        ("14749-6", timedelta(days=29), "recognised"),
        ("14749-6", timedelta(days=31), "outside-window"),
        ("4548-4", timedelta(days=59), "recognised"),
        ("4548-4", timedelta(days=61), "outside-window"),
        # urine culture (microbiology): 3 days
        ("630-4", timedelta(days=2, hours=23), "recognised"),
        ("630-4", timedelta(days=3, hours=1), "outside-window"),
    ],
)
def test_hour_and_day_windows(shanxi: Catalog, loinc: str, age: timedelta, reason: str) -> None:
    d = run(lab_order(loinc), [lab(loinc, collected=age)], shanxi)
    assert d.reason == reason
    assert d.matches[0].valid_until is not None


def test_the_collection_anchor_ignores_a_later_report(shanxi: Catalog) -> None:
    # A CBC drawn 7 hours ago and reported 1 hour ago is past its 6 hours.
    result = lab("58410-2", collected=timedelta(hours=7), issued=timedelta(hours=1))
    d = run(lab_order("58410-2"), [result], shanxi)
    assert d.reason == "outside-window"
    assert d.matches[0].valid_until == NOW - timedelta(hours=1)


def test_the_collection_anchor_falls_back_to_the_performed_time(shanxi: Catalog) -> None:
    result = lab("58410-2", collected=None, performed=timedelta(hours=5), issued=timedelta(hours=1))
    d = run(lab_order("58410-2"), [result], shanxi)
    assert d.reason == "recognised"
    assert d.matches[0].anchor_at == NOW - timedelta(hours=5)


@pytest.mark.parametrize(
    ("performed", "issued", "reason"),
    [
        # examinations: 30 days (default) from the report's issue
        (timedelta(days=35), timedelta(days=29), "recognised"),
        (timedelta(days=35), timedelta(days=31), "outside-window"),
        # no report time: the study's own time stands in (never lengthening the window)
        (timedelta(days=29), None, "recognised"),
        (timedelta(days=31), None, "outside-window"),
    ],
)
def test_the_report_issue_anchor(
    shanxi: Catalog, performed: timedelta, issued: timedelta | None, reason: str
) -> None:
    result = ct(performed=performed, issued=issued, resource_type="DiagnosticReport")
    d = run(ct_order(), [result], shanxi)
    assert d.reason == reason
    assert d.matches[0].anchor_at == NOW - (issued or performed)


def test_a_result_without_any_time_is_not_recognisable(shanxi: Catalog) -> None:
    d = run(lab_order(), [lab(collected=None)], shanxi)
    assert d.reason == "outside-window"
    assert d.matches[0].rule == "no-anchor-time"


def test_a_region_may_use_an_hour_window_for_an_examination() -> None:
    cat = parse_catalog(
        {
            "catalog": "t",
            "version": "t-1",
            "region_code": "140000",
            "effective_from": date(2026, 1, 1),
            "items": [
                {
                    "id": "CT-CHEST",
                    "name": "胸部CT平扫",
                    "category": "imaging",
                    "imaging": {
                        "modalities": ["CT"],
                        "body_part": "CHEST",
                        "body_sites": [CHEST],
                        "contrast": False,
                    },
                    "window": {
                        "length": 48,
                        "unit": "hours",
                        "anchor": "report-issue",
                        "basis": "default",
                    },
                    "price_yuan": 200,
                }
            ],
        }
    )
    assert run(ct_order(), [ct(performed=timedelta(hours=47))], cat).reason == "recognised"
    assert run(ct_order(), [ct(performed=timedelta(hours=49))], cat).reason == "outside-window"


# ── direction and scope ──────────────────────────────────────────────────────────────────

SCOPE_CASES: list[tuple[str, dict[str, Any], str, str, str, str | None]] = [
    # (case, region rules, issuer, receiver, reason, rule)
    ("same level 3-3", {}, "TY-L3A", "TY-L3A-2", "recognised", None),
    ("same level 2-2", {}, "TY-L2", "TY-L2-2", "recognised", None),
    ("level 2 recognises level 3", {}, "TY-L3A", "TY-L2", "recognised", None),
    ("level 1 recognises level 3", {}, "TY-L3A", "TY-L1", "recognised", None),
    ("level 3 does not recognise level 2", {}, "TY-L2", "TY-L3A", "scope-not-satisfied",
     "direction"),
    ("level 2 does not recognise level 1", {}, "TY-L1", "TY-L2", "scope-not-satisfied",
     "direction"),
    ("upper recognises lower where the region allows", {"upper_recognises_lower": True},
     "TY-L2", "TY-L3A", "recognised", None),
    ("a pilot hospital recognises lower levels", {"pilot_institutions": ["TY-L3A"]},
     "TY-L2", "TY-L3A", "recognised", None),
    ("a pilot elsewhere does not help", {"pilot_institutions": ["TY-L3A-2"]},
     "TY-L2", "TY-L3A", "scope-not-satisfied", "direction"),
    ("医联体 lead recognises its level-1 member", {}, "ALLY-L1", "ALLY-LEAD", "recognised",
     None),
    ("医联体 lead recognises its level-2 member", {}, "ALLY-L2", "ALLY-LEAD", "recognised",
     None),
    ("alliance-only item between non-members", {"scope": "alliance"}, "TY-L3A", "TY-L3A-2",
     "scope-not-satisfied", "alliance-only"),
    ("alliance-only item between members", {"scope": "alliance"}, "ALLY-L2", "ALLY-L1",
     "recognised", None),
    ("region scope across prefectures", {}, "DT-L3A", "TY-L3A", "recognised", None),
    ("prefecture scope across prefectures", {"scope": "prefecture"}, "DT-L3A", "TY-L3A",
     "scope-not-satisfied", "outside-prefecture"),
    ("prefecture scope within one", {"scope": "prefecture"}, "TY-L3A-2", "TY-L3A",
     "recognised", None),
    ("issuer outside the catalogue's region", {}, "BJ-L3A", "TY-L3A", "scope-not-satisfied",
     "outside-region"),
    ("private issuer where private is excluded", {"exclude_private": True}, "TY-PRIV",
     "TY-L2", "scope-not-satisfied", "private-excluded"),
    ("private issuer, excluded even in a 医联体", {"exclude_private": True}, "ALLY-PRIV",
     "ALLY-L2", "scope-not-satisfied", "private-excluded"),
    ("private issuer where the region does not exclude", {}, "TY-PRIV", "TY-L2",
     "recognised", None),
    ("public issuer where private is excluded", {"exclude_private": True}, "TY-L2-2", "TY-L2",
     "recognised", None),
    ("三甲 with 三甲 only: 三乙 issuer", {"tertiary_a_peers_only": True}, "TY-L3B", "TY-L3A",
     "scope-not-satisfied", "grade"),
    ("三甲 with 三甲 only: 三甲 issuer", {"tertiary_a_peers_only": True}, "TY-L3A-2",
     "TY-L3A", "recognised", None),
    ("三甲 with 三甲 only: receiver not 三甲", {"tertiary_a_peers_only": True}, "TY-L3B",
     "TY-L2", "recognised", None),
    ("municipal HR does not reach another prefecture", {}, "DT-L3A-MUNI", "TY-L3A",
     "scope-not-satisfied", "hr-scope"),
    ("alliance HR does not reach a non-member", {}, "TY-L2-ALLY-HR", "TY-L2",
     "scope-not-satisfied", "hr-scope"),
    ("unknown ordering institution", {}, "TY-L3A", "NOWHERE", "scope-not-satisfied",
     "unknown-receiver"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "rules", "issuer", "receiver", "reason", "rule"),
    SCOPE_CASES,
    ids=[c[0] for c in SCOPE_CASES],
)
def test_direction_and_scope(
    case: str, rules: dict[str, Any], issuer: str, receiver: str, reason: str, rule: str | None
) -> None:
    d = run(lab_order(at=receiver), [lab(at=issuer)], small_catalog(**rules))
    assert d.reason == reason
    assert d.matches[0].rule == rule
    assert d.recognisable == (reason == "recognised")


def test_an_item_rule_overrides_the_region(shanxi: Catalog) -> None:
    # The shipped catalogue recognises enhanced chest CT within one prefecture only,
    # plain chest CT across the province.
    plain = run(ct_order(at="TY-L3A", contrast=False), [ct(at="DT-L3A", contrast=False)], shanxi)
    enhanced = run(ct_order(at="TY-L3A", contrast=True), [ct(at="DT-L3A", contrast=True)], shanxi)
    assert plain.reason == "recognised"
    assert (enhanced.item_id, enhanced.reason) == ("CT-CHEST-ENH", "scope-not-satisfied")
    assert enhanced.matches[0].rule == "outside-prefecture"


# ── HR qualification ─────────────────────────────────────────────────────────────────────

HR_CASES: list[tuple[str, str, str, str | None, str | None]] = [
    # (case, issuer, reason, rule, HR scope named)
    ("category-wide lab qualification", "TY-L3A", "recognised", None, "provincial"),
    ("qualification for the item itself", "TY-K-ITEM", "recognised", None, "municipal"),
    ("the widest current scope is named", "TY-WIDE", "recognised", None, "national"),
    ("qualified for another item only", "TY-NA-ONLY", "issuer-not-qualified",
     "no-qualification", None),
    ("no qualification at all", "TY-NOQUAL", "issuer-not-qualified", "no-qualification", None),
    ("expired before the result", "TY-EXPIRED", "issuer-not-qualified",
     "qualification-expired", None),
    ("not yet valid at the result", "TY-FUTURE", "issuer-not-qualified",
     "qualification-not-yet-valid", None),
    ("current when the result was issued, lapsed since", "TY-LAPSED-SINCE", "recognised", None,
     "provincial"),
    ("issuer not in the registry", "UNKNOWN-HOSPITAL", "issuer-not-qualified",
     "unknown-issuer", None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "issuer", "reason", "rule", "scope"), HR_CASES, ids=[c[0] for c in HR_CASES]
)
def test_hr_qualification(
    shanxi: Catalog, case: str, issuer: str, reason: str, rule: str | None, scope: str | None
) -> None:
    # K issued 2026-11-16 (4 days before NOW), ordered by a level-2 hospital in Taiyuan.
    result = lab(at=issuer, collected=timedelta(days=4), issued=timedelta(days=4))
    d = run(lab_order(at="TY-L2"), [result], shanxi)
    assert d.reason == reason
    assert d.matches[0].rule == rule
    assert d.matches[0].hr_scope == scope


def test_an_imaging_qualification_covers_ultrasound(shanxi: Catalog) -> None:
    us = ct(at="TY-L3A", site=ABDOMEN, modality="US", performed=timedelta(days=5))
    order = ct_order(at="TY-L2", site=ABDOMEN, modality="US", contrast=None)
    d = run(order, [us], shanxi)
    assert (d.item_id, d.reason) == ("US-ABD", "recognised")
    assert d.matches[0].hr_scope == "provincial"


def test_a_lab_qualification_does_not_cover_imaging(shanxi: Catalog) -> None:
    d = run(ct_order(at="TY-L2"), [ct(at="BJ-L3A")], shanxi)  # BJ holds lab HR only
    assert d.reason == "issuer-not-qualified"


# ── several earlier results ──────────────────────────────────────────────────────────────


def test_a_recognisable_result_is_preferred_and_all_are_named(shanxi: Catalog) -> None:
    old = lab(collected=timedelta(days=10))
    good = lab(collected=timedelta(days=3))
    prelim = lab(collected=timedelta(hours=2), status="preliminary")
    d = run(lab_order(), [old, prelim, good], shanxi)
    assert d.reason == "recognised"
    assert d.matches[0].record_id == good.record_id
    assert {m.record_id for m in d.matches} == {old.record_id, good.record_id, prelim.record_id}
    assert [m.recognisable for m in d.matches] == [True, False, False]


def test_of_two_recognisable_results_the_newest_comes_first(shanxi: Catalog) -> None:
    older = lab(collected=timedelta(days=5))
    newer = lab(at="TY-L3A-2", collected=timedelta(days=1))
    d = run(lab_order(at="TY-L2"), [older, newer], shanxi)
    assert [m.record_id for m in d.matches] == [newer.record_id, older.record_id]
    assert all(m.recognisable for m in d.matches)


@pytest.mark.parametrize(
    ("results", "reason"),
    [
        # the reason is that of the result that came closest (final → window → HR → scope)
        (lambda: [lab(status="preliminary"), lab(collected=timedelta(days=9))], "outside-window"),
        (
            lambda: [lab(collected=timedelta(days=9)), lab(at="TY-NOQUAL")],
            "issuer-not-qualified",
        ),
        (lambda: [lab(at="TY-NOQUAL"), lab(at="TY-L1")], "scope-not-satisfied"),
    ],
)
def test_without_a_recognisable_result_the_closest_one_gives_the_reason(
    shanxi: Catalog, results: Any, reason: str
) -> None:
    d = run(lab_order(at="TY-L3A"), results(), shanxi)
    assert d.reason == reason
    assert len(d.matches) == 2


@pytest.mark.parametrize(
    "withdrawn",
    [
        lambda: lab(status="entered-in-error"),
        lambda: lab(status="cancelled"),
        lambda: lab(change="retraction"),
    ],
)
def test_a_withdrawn_result_does_not_exist(shanxi: Catalog, withdrawn: Any) -> None:
    d = run(lab_order(), [withdrawn()], shanxi)
    assert (d.reason, d.matches) == ("no-prior-result", ())


def test_a_possible_match_is_never_shown_nor_recognised(shanxi: Catalog) -> None:
    stale = lab(collected=timedelta(days=9))
    maybe = lab(collected=timedelta(days=1), link="in-review")
    d = run(lab_order(), [stale, maybe], shanxi)
    assert (d.outcome, d.reason) == ("not-recognisable", "link-in-review")
    assert [m.record_id for m in d.matches] == [stale.record_id]


def test_a_confirmed_recognisable_result_wins_over_a_possible_match(shanxi: Catalog) -> None:
    d = run(lab_order(), [lab(link="in-review"), lab()], shanxi)
    assert d.reason == "recognised"


def test_a_possible_match_that_would_fail_anyway_is_ignored(shanxi: Catalog) -> None:
    d = run(lab_order(), [lab(collected=timedelta(days=9), link="in-review")], shanxi)
    assert d.reason == "no-prior-result"


# ── imaging ──────────────────────────────────────────────────────────────────────────────


def test_an_imaging_match_links_the_report_and_the_images(shanxi: Catalog) -> None:
    study = ct(at="DT-L3A", performed=timedelta(days=3))
    d = run(ct_order(at="TY-L3A"), [study], shanxi)
    assert (d.item_id, d.reason) == ("CT-CHEST", "recognised")
    m = d.matches[0]
    assert m.study_uid == "1.2.840.113619.2.55.3.604688119.969.1700000000.123"
    assert m.image_endpoints == ("https://pacs.example-hospital.cn/dicom-web",)
    assert m.report_ref == "ImagingStudy/study-1"
    assert m.valid_until == NOW - timedelta(days=3) + timedelta(days=30)
    assert d.estimated_saving_yuan == Decimal(220)


def test_a_plain_scan_does_not_stand_in_for_an_enhanced_one(shanxi: Catalog) -> None:
    d = run(ct_order(contrast=True), [ct(contrast=False)], shanxi)
    assert (d.item_id, d.reason) == ("CT-CHEST-ENH", "no-prior-result")


def test_another_body_part_is_another_item(shanxi: Catalog) -> None:
    d = run(ct_order(site=CHEST), [ct(site="69536005")], shanxi)  # head CT
    assert d.reason == "no-prior-result"


def test_an_ecg_is_matched_by_its_codes(shanxi: Catalog) -> None:
    ecg = PriorResult.model_validate(
        {
            "record_id": _rid(),
            "institution": "TY-L3A",
            "resource_type": "DiagnosticReport",
            "category": "ecg",
            "codes": [{"system": LOINC, "code": "11524-6", "display": "EKG study"}],
            "status": "final",
            "performed_at": (NOW - timedelta(days=2)).isoformat(),
            "issued_at": (NOW - timedelta(days=2)).isoformat(),
        }
    )
    order = Order.model_validate(
        {
            "institution": "TY-L2",
            "category": "ecg",
            "codes": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "ECG"}],
            "imaging": {"modalities": ["ECG"], "body_sites": [], "contrast": None},
        }
    )
    d = run(order, [ecg], shanxi)
    assert (d.item_id, d.reason) == ("ECG-12", "recognised")
    assert d.matches[0].valid_until == NOW - timedelta(days=2) + timedelta(days=30)


def test_an_unknown_imaging_order_is_not_in_the_catalogue(shanxi: Catalog) -> None:
    d = run(ct_order(site="72696002"), [ct(site="72696002")], shanxi)  # knee CT
    assert (d.reason, d.item_id, d.price_yuan) == ("not-in-catalog", None, None)


def test_a_catalogue_not_yet_in_force_recognises_nothing(shanxi: Catalog) -> None:
    d = run(lab_order(), [lab()], shanxi, now=datetime(2025, 12, 31, 12, tzinfo=CST))
    assert d.reason == "not-in-catalog"


def test_now_must_carry_an_offset(shanxi: Catalog) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        decide(lab_order(), [], INSTITUTIONS, shanxi, datetime(2026, 11, 20, 12))


# ── the canonical events and the shipped registry ────────────────────────────────────────

POTASSIUM_EVENT = {  # docs/events.md, result-indexed example
    "change": "new",
    "kind": "result",
    "record_id": "d627d0404c0b4fc77fe67fa138c952b9",
    "master_patient_id": "9f2c4e1a7b3d4c5e8f60718293a4b5c6",
    "institution": "12140000405001730E",
    "resource_type": "Observation",
    "category": "lab",
    "codes": [
        {"system": "http://loinc.org", "code": "2823-3", "display": "钾"},
        {"system": "urn:oid:1.3.6.1.4.1.32473.14.1.5", "code": "K", "display": "钾"},
    ],
    "catalogue_item": None,
    "imaging": None,
    "status": "final",
    "performed_at": "2026-11-20T08:30:00+08:00",
    "collected_at": "2026-11-20T08:30:00+08:00",
    "issued_at": "2026-11-20T10:02:00+08:00",
    "value": {"value": "4.2", "unit": "mmol/L"},
    "source": {
        "event_id": "3b1f0c9e2d8a4f6b9c7e5d3a1f0b2c4d",
        "resource_type": "Observation",
        "resource_id": "obs-k-1",
        "bundle_id": None,
        "entry_index": None,
        "full_url": None,
        "received_at": "2026-11-20T02:05:00Z",
    },
    "trace_id": "a4c1e9d27f3b4e8c9d0a1b2c3d4e5f60",
}


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.load(REPO / "config" / "institutions.yaml")


def _event(**changes: Any) -> PriorResult:
    return PriorResult.model_validate(POTASSIUM_EVENT | changes)


def _order(institution: str, loinc: str = "2823-3") -> Order:
    return Order.model_validate(
        {
            "change": "new",
            "kind": "order",
            "record_id": "f8af84ab8c1e22791953b469e56f5675",
            "master_patient_id": "9f2c4e1a7b3d4c5e8f60718293a4b5c6",
            "institution": institution,
            "resource_type": "ServiceRequest",
            "category": "lab",
            "codes": [{"system": "http://loinc.org", "code": loinc, "display": None}],
            "status": "active",
            "intent": "order",
            "performed_at": None,
            "authored_at": "2026-11-21T09:00:00+08:00",
            "trace_id": "c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5",
        }
    )


ORDER_TIME = datetime(2026, 11, 21, 9, 0, tzinfo=CST)


@pytest.mark.parametrize(
    ("changes", "receiver", "reason"),
    [
        # 汾河医院 (三甲, national lab HR) → 晋阳医院 (三甲): same level
        ({}, "12140100405128360L", "recognised"),
        # → 晋源区人民医院 (level 2): lower recognises upper
        ({}, "12140110405530210H", "recognised"),
        # 晋源区人民医院 (level 2, K qualified) → 晋阳医院 (level 3, same 医联体)
        ({"institution": "12140110405530210H"}, "12140100405128360L", "recognised"),
        # 晋源区人民医院 → 杏花岭区中心医院 (level 3, no shared 医联体): upper ⇸ lower
        ({"institution": "12140110405530210H"}, "12140107405412652L", "scope-not-satisfied"),
        # 灵丘县人民医院: lab HR lapsed on 2025-12-31 → 云州区人民医院 (level 2)
        ({"institution": "121402244066057203"}, "12140215406213786R", "issuer-not-qualified"),
        # 桥东街道社区卫生服务中心: no HR at all → a level-1 peer
        ({"institution": "12140106405308441P"}, "121401104055318701", "issuer-not-qualified"),
    ],
)
def test_with_the_shipped_registry_and_catalogue(
    registry: Registry, shanxi: Catalog, changes: dict[str, Any], receiver: str, reason: str
) -> None:
    d = decide(_order(receiver), [_event(**changes)], registry, shanxi, ORDER_TIME)
    assert d.reason == reason


def test_a_hospitals_local_code_is_understood_for_that_hospital_only(
    registry: Registry, shanxi: Catalog
) -> None:
    local_only = [{"system": "urn:oid:1.3.6.1.4.1.32473.14.1.5", "code": "K", "display": "钾"}]
    fenhe = _event(codes=local_only)
    elsewhere = _event(codes=local_only, institution="12140100405128360L")
    order = _order("12140110405530210H")
    assert decide(order, [fenhe], registry, shanxi, ORDER_TIME).reason == "recognised"
    assert decide(order, [elsewhere], registry, shanxi, ORDER_TIME).reason == "no-prior-result"


# ── FHIR DetectedIssue ───────────────────────────────────────────────────────────────────


def test_a_recognisable_decision_as_a_detected_issue(shanxi: Catalog) -> None:
    result = lab(collected=timedelta(days=2))
    d = run(lab_order(), [result, lab(collected=timedelta(days=9))], shanxi)
    doc = to_detected_issue(d, issue_id="dec-1")
    issue = DetectedIssue.model_validate(doc)
    assert issue.status == "final"
    assert issue.severity == "low"
    assert issue.code is not None and issue.code.coding
    coding = issue.code.coding[0]
    assert (coding.system, coding.code) == (REASON_SYSTEM, "recognised")
    saving = next(e for e in doc["extension"] if e["url"] == SAVING_EXTENSION)
    assert saving["valueMoney"] == {"value": Decimal(6), "currency": "CNY"}
    implicated = [r["identifier"]["value"] for r in doc["implicated"]]
    assert implicated == [d.order_record_id, result.record_id]
    assert len(doc["evidence"][0]["detail"]) == 2  # both earlier results are evidence
    assert doc["patient"]["identifier"]["value"] == "9f2c4e1a7b3d4c5e8f60718293a4b5c6"


@pytest.mark.parametrize(
    "scenario",
    [
        lambda cat: run(lab_order(), [], cat),
        lambda cat: run(lab_order(), [lab(at="TY-NOQUAL")], cat),
        lambda cat: run(Order(institution="TY-L3A"), [], cat),
    ],
)
def test_every_decision_renders_as_a_valid_detected_issue(shanxi: Catalog, scenario: Any) -> None:
    d: Decision = scenario(shanxi)
    issue = DetectedIssue.model_validate(to_detected_issue(d))
    assert issue.code is not None and issue.code.coding
    assert issue.code.coding[0].code == d.reason
    assert issue.severity is None
    assert issue.detail == d.detail


def test_a_study_and_its_report_are_one_match_the_report_leading(shanxi: Catalog) -> None:
    """However the bundle linked them (contained, by identifier, or urn:uuid rewritten by the
    gateway), a CT study and its report are one examination: one match, the report's (what
    the doctor reads), with the study's images."""
    study = ct(at="TY-L3A", performed=timedelta(days=3))
    report = ct(
        at="TY-L3A",
        performed=timedelta(days=3),
        issued=timedelta(days=3),
        resource_type="DiagnosticReport",
    )
    report = report.model_copy(
        update={"imaging": report.imaging.model_copy(update={"endpoints": ()})}  # type: ignore[union-attr]
    )
    other = ct(at="TY-L3B", performed=timedelta(days=5))  # the same UID at another hospital
    d = run(ct_order(), [study, report, other], shanxi)
    assert [m.record_id for m in d.matches] == [report.record_id, other.record_id]
    lead = d.matches[0]
    assert lead.resource_type == "DiagnosticReport"
    assert lead.image_endpoints == ("https://pacs.example-hospital.cn/dicom-web",)
    # a study alone stands for itself
    alone = run(ct_order(), [study], shanxi)
    assert [m.record_id for m in alone.matches] == [study.record_id]
