"""Recognition figures: the counting shared by ``mrhub report`` and the console.

Input: the payloads of ``mrhub.recognition.decision-made.v1`` (one per decision; an order
may be decided again — a higher ``revision`` supersedes) and of
``mrhub.recognition.feedback-recorded.v1`` (with ``recorded_at`` = the envelope's
``occurred_at``). Each is first reduced to a compact fact (:class:`OrderFact`,
:class:`FeedbackFact`: what the figures need and nothing else — no matches list, no FHIR),
so a reader that keeps them (the console's cache) holds a few hundred bytes per order.

The rules (``mrhub report``'s, unchanged):

- **latest revision**: of every order (``order_record_id``, else ``decision_id``) only the
  decision with the highest ``revision`` counts; of equal revisions, the one read last;
- **date filter**: a decision counts when the day of its ``decided_at`` (the first ten
  characters of the ISO string) is within ``since``..``until`` (both inclusive, either
  open); feedback by the day of ``recorded_at``; a fact with no time counts only when no
  bound is given;
- **feedback de-duplication**: feedback carrying the same ``feedback_id`` (a resent card
  outcome) is counted once, the first one in range;
- the **prefecture** is the ordering institution's (decisions) or the giving institution's
  (feedback) ``prefecture_code`` in the registry, ``unknown`` when it is not there; the
  **category** is ``item_category``, ``other`` when there is none;
- **patients benefited**: distinct ``master_patient_id`` with at least one counted
  recognisable decision in the group.

:func:`count` groups by any of :data:`DIMENSIONS` (``day``, ``prefecture``,
``institution``, ``category``), optionally keeping only some ordering institutions.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any, Final, Literal, Protocol

from services.common.institutions import Institution

__all__ = [
    "DIMENSIONS",
    "Dimension",
    "FeedbackFact",
    "Latest",
    "OrderFact",
    "Tally",
    "count",
    "counted_feedback",
    "feedback_fact",
    "order_fact",
    "totals",
]

Dimension = Literal["day", "prefecture", "institution", "category"]
DIMENSIONS: Final[tuple[Dimension, ...]] = ("day", "prefecture", "institution", "category")

UNKNOWN: Final = "unknown"
OTHER: Final = "other"


class Directory(Protocol):
    """Anything that finds an institution by id (a ``Registry``, a dict)."""

    def get(self, institution_id: str, /) -> Institution | None: ...


def _day(moment: Any) -> date | None:
    if not moment:
        return None
    return date.fromisoformat(str(moment)[:10])


@dataclass(frozen=True, slots=True)
class OrderFact:
    """What the figures and the reasons page need of one decision."""

    order: str
    revision: int
    day: date | None
    institution: str
    category: str | None
    recognisable: bool
    saving_yuan: Decimal
    reason: str
    patient: str | None
    item_id: str | None = None
    item_name: str | None = None
    catalog_version: str | None = None
    #: the preferred earlier result's issuer, rule and detail (what failed, for the fix lists)
    issuer: str | None = None
    rule: str | None = None
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class FeedbackFact:
    feedback_id: str | None
    day: date | None
    institution: str
    category: str | None
    choice: str
    reason: str | None
    reason_name: str | None = None


def order_fact(d: Mapping[str, Any]) -> OrderFact:
    """The fact of one decision payload."""
    recognisable = d.get("outcome") == "recognisable"
    matches = d.get("matches") or []
    best = matches[0] if matches and isinstance(matches[0], dict) else {}
    reason = str(d.get("reason"))
    return OrderFact(
        order=str(d.get("order_record_id") or d.get("decision_id") or ""),
        revision=int(d.get("revision", 1)),
        day=_day(d.get("decided_at")),
        institution=str(d["ordering_institution"]),
        category=d.get("item_category"),
        recognisable=recognisable,
        saving_yuan=(
            Decimal(str(d.get("estimated_saving_yuan") or 0)) if recognisable else Decimal(0)
        ),
        reason=reason,
        patient=d.get("master_patient_id") if recognisable else None,
        item_id=d.get("item_id"),
        item_name=d.get("item_name"),
        catalog_version=d.get("catalog_version"),
        issuer=None if recognisable else best.get("institution"),
        rule=None if recognisable else best.get("rule"),
        detail=None if recognisable else str(best.get("detail") or d.get("detail") or "")[:300],
    )


def feedback_fact(f: Mapping[str, Any]) -> FeedbackFact:
    """The fact of one feedback payload (with ``recorded_at``)."""
    fid = f.get("feedback_id")
    return FeedbackFact(
        feedback_id=fid if isinstance(fid, str) else None,
        day=_day(f.get("recorded_at")),
        institution=str(f["institution"]),
        category=f.get("item_category"),
        choice=str(f.get("choice")),
        reason=None if f.get("choice") == "recognised" else str(f.get("reason")),
        reason_name=f.get("reason_name"),
    )


class Latest:
    """The latest decision of every order, folded one decision at a time."""

    def __init__(self) -> None:
        self.orders: dict[str, OrderFact] = {}

    def add(self, fact: OrderFact) -> None:
        kept = self.orders.get(fact.order)
        if kept is None or fact.revision >= kept.revision:
            self.orders[fact.order] = fact

    def __len__(self) -> int:
        return len(self.orders)

    def values(self) -> Iterable[OrderFact]:
        return self.orders.values()


def in_range(day: date | None, since: date | None, until: date | None) -> bool:
    if day is None:
        return since is None and until is None
    return (since is None or day >= since) and (until is None or day <= until)


@dataclass
class Tally:
    """The figures of one group (``key``: one value per dimension grouped by)."""

    key: tuple[str, ...]
    orders: int = 0
    recognisable: int = 0
    saving_yuan: Decimal = Decimal(0)
    recognised_feedback: int = 0
    reordered: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    patient_ids: set[str] = field(default_factory=set)

    @property
    def rate(self) -> float:
        return self.recognisable / self.orders if self.orders else 0.0

    @property
    def patients(self) -> int:
        return len(self.patient_ids)


def _value(
    dim: Dimension, inst_id: str, day: date | None, category: str | None, directory: Directory
) -> str:
    if dim == "day":
        return day.isoformat() if day is not None else UNKNOWN
    if dim == "institution":
        return inst_id
    if dim == "category":
        return category or OTHER
    inst = directory.get(inst_id)
    return inst.prefecture_code if inst else UNKNOWN


def counted_feedback(
    feedback: Iterable[FeedbackFact],
    *,
    since: date | None = None,
    until: date | None = None,
    include: Callable[[str], bool] | None = None,
) -> Iterator[FeedbackFact]:
    """The feedback the figures count, in the order read: in the period, from an institution
    ``include`` accepts, and a resent one (a CDS client may send one card's outcome again,
    with the same ``feedback_id``) once."""
    counted: set[str] = set()
    for f in feedback:
        if not in_range(f.day, since, until):
            continue
        if include is not None and not include(f.institution):
            continue
        if f.feedback_id is not None:
            if f.feedback_id in counted:
                continue
            counted.add(f.feedback_id)
        yield f


def count(
    orders: Iterable[OrderFact],
    feedback: Iterable[FeedbackFact],
    directory: Directory,
    *,
    by: Sequence[Dimension] = ("prefecture", "category"),
    since: date | None = None,
    until: date | None = None,
    include: Callable[[str], bool] | None = None,
) -> list[Tally]:
    """Tallies per group of ``by``, sorted by key. ``orders`` are the latest decisions
    (:class:`Latest`); ``feedback`` in the order read; ``include`` keeps only the facts of
    the institutions (ordering, or giving feedback) it accepts."""
    groups: dict[tuple[str, ...], Tally] = {}

    def tally(inst: str, day: date | None, category: str | None) -> Tally:
        key = tuple(_value(d, inst, day, category, directory) for d in by)
        found = groups.get(key)
        if found is None:
            found = groups[key] = Tally(key)
        return found

    for o in orders:
        if not in_range(o.day, since, until) or (
            include is not None and not include(o.institution)
        ):
            continue
        t = tally(o.institution, o.day, o.category)
        t.orders += 1
        if o.recognisable:
            t.recognisable += 1
            t.saving_yuan += o.saving_yuan
            if o.patient:
                t.patient_ids.add(o.patient)
        else:
            t.reasons[o.reason] += 1
    for f in counted_feedback(feedback, since=since, until=until, include=include):
        t = tally(f.institution, f.day, f.category)
        if f.choice == "recognised":
            t.recognised_feedback += 1
        else:
            t.reordered[str(f.reason)] += 1
    return [groups[k] for k in sorted(groups)]


def totals(tallies: Iterable[Tally]) -> Tally:
    """Every group together (patients benefited: distinct over all groups)."""
    out = Tally(())
    for t in tallies:
        out.orders += t.orders
        out.recognisable += t.recognisable
        out.saving_yuan += t.saving_yuan
        out.recognised_feedback += t.recognised_feedback
        out.reordered.update(t.reordered)
        out.reasons.update(t.reasons)
        out.patient_ids |= t.patient_ids
    return out
