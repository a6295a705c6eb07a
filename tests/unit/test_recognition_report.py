"""``mrhub report``'s figures (services.recognition.report.summarise)."""

from __future__ import annotations

from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

from services.common.institutions import Registry
from services.recognition.report import summarise

REPO = Path(__file__).resolve().parents[2]
REGISTRY = Registry.load(REPO / "config" / "institutions.yaml")
TAIYUAN_L2 = "12140110405530210H"  # prefecture 140100
DATONG_L2 = "12140215406213786R"  # prefecture 140200


def decision(
    order: str, inst: str, outcome: str, *, revision: int = 1, **kw: Any
) -> dict[str, Any]:
    return {
        "order_record_id": order,
        "ordering_institution": inst,
        "item_category": kw.get("category", "lab"),
        "outcome": outcome,
        "reason": kw.get(
            "reason", "recognised" if outcome == "recognisable" else "no-prior-result"
        ),
        "estimated_saving_yuan": kw.get("saving"),
        "revision": revision,
        "decided_at": kw.get("at", "2026-11-20T08:00:00+00:00"),
    }


def test_figures_per_region_and_category_count_each_order_once() -> None:
    decisions = [
        decision("o1", TAIYUAN_L2, "recognisable", saving=20),
        decision("o2", TAIYUAN_L2, "recognisable", saving=Decimal("35.50")),
        # o3 was recognisable, then the result was retracted: the re-issued decision counts
        decision("o3", TAIYUAN_L2, "recognisable", saving=20),
        decision("o3", TAIYUAN_L2, "not-recognisable", revision=2),
        decision("o4", TAIYUAN_L2, "recognisable", saving=220, category="imaging"),
        decision("o5", DATONG_L2, "not-recognisable", reason="scope-not-satisfied"),
    ]
    feedback: list[dict[str, Any]] = [
        {
            "institution": TAIYUAN_L2,
            "item_category": "imaging",
            "choice": "re-ordered",
            "reason": "image-quality",
            "recorded_at": "2026-11-20T09:00:00+00:00",
        },
        {
            "institution": TAIYUAN_L2,
            "item_category": "lab",
            "choice": "recognised",
            "reason": None,
            "recorded_at": "2026-11-20T09:00:00+00:00",
        },
    ]
    rows = {(r.region, r.category): r for r in summarise(decisions, feedback, REGISTRY)}
    assert set(rows) == {("140100", "lab"), ("140100", "imaging"), ("140200", "lab")}
    lab = rows[("140100", "lab")]
    assert (lab.orders, lab.recognisable, lab.saving_yuan) == (3, 2, Decimal("55.50"))
    assert lab.reasons == {"no-prior-result": 1} and lab.recognised_feedback == 1
    assert round(lab.rate, 4) == 0.6667
    img = rows[("140100", "imaging")]
    assert (img.orders, img.saving_yuan, img.reordered) == (
        1,
        Decimal(220),
        Counter({"image-quality": 1}),
    )
    datong = rows[("140200", "lab")]
    assert (datong.orders, datong.recognisable, datong.reasons) == (
        1,
        0,
        {"scope-not-satisfied": 1},
    )


def test_a_date_range_limits_what_is_counted() -> None:
    decisions = [
        decision("o1", TAIYUAN_L2, "recognisable", saving=20, at="2026-11-19T23:00:00+00:00"),
        decision("o2", TAIYUAN_L2, "recognisable", saving=20, at="2026-11-20T01:00:00+00:00"),
    ]
    from datetime import date

    [row] = summarise(decisions, [], REGISTRY, since=date(2026, 11, 20))
    assert (row.orders, row.saving_yuan) == (1, Decimal(20))
    assert summarise(decisions, [], REGISTRY, until=date(2026, 11, 18)) == []


def test_a_resent_feedback_is_counted_once() -> None:
    """A CDS client may send one card's outcome again (CDS Hooks allows it); the hub gives it
    the same feedback_id, and the report counts the doctor's choice once."""
    one = {
        "feedback_id": "cds-1",
        "institution": TAIYUAN_L2,
        "item_category": "imaging",
        "choice": "re-ordered",
        "reason": "condition-changed",
        "recorded_at": "2026-11-20T09:00:00+00:00",
    }
    other = {**one, "feedback_id": "cds-2"}
    [row] = summarise([], [one, dict(one), other], REGISTRY)
    assert row.reordered == Counter({"condition-changed": 2})
