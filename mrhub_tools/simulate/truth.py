"""Ground truth: what a careful person applying the recognition rules would answer for an
order, written from ``../shared/design/domain.md`` and ``docs/recognition.md`` — independently
of the hub's :func:`services.recognition.decision.decide`, which it is there to check.

Pure: the catalogue (items, windows, scope rules) is data read with
:mod:`services.recognition.catalog`; the institutions are the simulated registry.

For each earlier result of the ordered item, in this order, the first rule that fails is
that result's reason: withdrawn results do not exist; not final → ``result-not-final``;
older than the window from its anchor → ``outside-window``; the issuer held no HR
qualification covering the item on the day it issued the result → ``issuer-not-qualified``;
the scope and direction between issuer and receiver do not allow it →
``scope-not-satisfied``. One passing result makes the order ``recognised``; otherwise the
result that came furthest (then the most recent) gives the reason; no result at all gives
``no-prior-result``, and an order the catalogue does not know ``not-in-catalog``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Final

from services.common.institutions import Institution
from services.recognition.catalog import Catalog, Item, china_date

FINAL: Final = frozenset({"final", "amended", "corrected", "appended", "available"})
WITHDRAWN: Final = frozenset({"entered-in-error", "cancelled", "revoked"})
_RANK: Final = {
    "result-not-final": 1,
    "outside-window": 2,
    "issuer-not-qualified": 3,
    "scope-not-satisfied": 4,
    "recognised": 5,
}


@dataclass(frozen=True)
class ResultFact:
    """What the hub holds of one result record after every version was posted."""

    item_id: str
    institution: str
    status: str
    performed_at: datetime | None
    collected_at: datetime | None
    issued_at: datetime | None

    @property
    def withdrawn(self) -> bool:
        return self.status in WITHDRAWN


@dataclass(frozen=True)
class Verdict:
    """One result judged for one order: its reason, the rule that failed, and why in words."""

    reason: str
    rule: str | None
    why: str
    anchor: datetime | None


@dataclass(frozen=True)
class Expectation:
    reason: str
    rule: str | None
    why: str
    saving_yuan: Decimal

    @property
    def outcome(self) -> str:
        return "recognisable" if self.reason == "recognised" else "not-recognisable"


def _anchor(fact: ResultFact, item: Item) -> datetime | None:
    if item.window.anchor == "specimen-collection":
        return fact.collected_at or fact.performed_at
    return fact.issued_at or fact.performed_at


def _level(inst: Institution) -> str:
    return f"level-{inst.level} {inst.grade} {inst.ownership} ({inst.region_code[:4]}xx)"


def _reaches(scope: str, issuer: Institution, receiver: Institution) -> bool:
    if scope == "national":
        return True
    if scope == "provincial":
        return issuer.region_code[:2] == receiver.region_code[:2]
    if scope == "municipal":
        return issuer.region_code[:4] == receiver.region_code[:4]
    return bool(set(issuer.alliances) & set(receiver.alliances))


def judge(
    fact: ResultFact,
    item: Item,
    catalog: Catalog,
    institutions: Mapping[str, Institution],
    receiver: Institution,
    now: datetime,
) -> Verdict:
    """The reason one result gives for an order of ``item`` at ``receiver`` at ``now``."""
    anchor = _anchor(fact, item)
    if fact.status not in FINAL:
        return Verdict("result-not-final", "status", f"the result is {fact.status}", anchor)
    if anchor is None:
        return Verdict("outside-window", "no-anchor-time", "the result has no time", anchor)
    if now > anchor + item.window.duration:
        age = (now - anchor) / timedelta(days=1)
        return Verdict(
            "outside-window",
            "expired",
            f"the result is {age:.1f} days old; the window is {item.window}",
            anchor,
        )
    issuer = institutions.get(fact.institution)
    if issuer is None:
        return Verdict("issuer-not-qualified", "unknown-issuer", "unknown issuer", anchor)
    made = fact.issued_at or fact.performed_at or fact.collected_at or anchor
    day = china_date(made)
    covering = [
        q
        for q in issuer.qualifications
        if q.item == item.id or (q.item is None and q.category in item.qualification_categories)
    ]
    current = [q for q in covering if q.issued <= day <= q.expires]
    if not current:
        rule = "no-qualification" if not covering else "qualification-expired"
        if covering and all(q.issued > day for q in covering):
            rule = "qualification-not-yet-valid"
        return Verdict(
            "issuer-not-qualified",
            rule,
            f"the issuer ({_level(issuer)}) held no current HR qualification for {item.id} "
            f"on {day}" + (" (it had lapsed)" if covering else ""),
            anchor,
        )
    rules = catalog.rules_for(item)
    shared = bool(set(issuer.alliances) & set(receiver.alliances))
    scope_rule: str | None = None
    why = ""
    if rules.exclude_private and issuer.ownership == "private":
        scope_rule, why = "private-excluded", "private issuers are excluded"
    elif not shared:
        if rules.scope == "alliance":
            scope_rule, why = "alliance-only", f"{item.id} only within a 医联体"
        elif not (
            catalog.covers_region(issuer.region_code)
            and catalog.covers_region(receiver.region_code)
        ):
            scope_rule, why = "outside-region", "outside the catalogue's region"
        elif rules.scope == "prefecture" and issuer.region_code[:4] != receiver.region_code[:4]:
            scope_rule, why = (
                "outside-prefecture",
                f"{item.id} is recognised within one prefecture; issuer "
                f"{issuer.region_code[:4]}xx, receiver {receiver.region_code[:4]}xx",
            )
        elif issuer.level < receiver.level and not (
            rules.upper_recognises_lower or receiver.id in rules.pilot_institutions
        ):
            scope_rule, why = (
                "direction",
                f"a level-{receiver.level} receiver does not recognise a level-{issuer.level} "
                "issuer outside a shared 医联体",
            )
        elif (
            rules.tertiary_a_peers_only
            and (receiver.level, receiver.grade) == (3, "甲")
            and (issuer.level, issuer.grade) != (3, "甲")
        ):
            scope_rule, why = "grade", "三甲 recognises only 三甲 here"
    if scope_rule is None and not any(_reaches(q.scope, issuer, receiver) for q in current):
        scopes = "/".join(sorted({q.scope for q in current}))
        scope_rule, why = (
            "hr-scope",
            f"the issuer's HR qualification ({scopes}) does not reach the receiver "
            f"({issuer.region_code[:4]}xx → {receiver.region_code[:4]}xx, no shared 医联体)",
        )
    if scope_rule is not None:
        return Verdict("scope-not-satisfied", scope_rule, why, anchor)
    return Verdict(
        "recognised",
        None,
        f"{item.id} from a {_level(issuer)} issuer"
        + (" in the same 医联体" if shared else "")
        + f", inside its {item.window} window",
        anchor,
    )


def expect(
    item: Item | None,
    receiver: Institution,
    facts: Iterable[ResultFact],
    catalog: Catalog,
    institutions: Mapping[str, Institution],
    now: datetime,
) -> Expectation:
    """The answer a careful person gives for an order of ``item`` (``None``: the ordered
    code is not in the catalogue) at ``receiver``, knowing the patient's ``facts``."""
    if item is None:
        return Expectation(
            "not-in-catalog", None, "the ordered code is in no catalogue item", Decimal(0)
        )
    verdicts = [
        judge(f, item, catalog, institutions, receiver, now)
        for f in facts
        if f.item_id == item.id and not f.withdrawn
    ]
    if not verdicts:
        return Expectation(
            "no-prior-result",
            None,
            f"no earlier {item.id} result (or only withdrawn ones)",
            Decimal(0),
        )

    def rank(v: Verdict) -> tuple[int, float]:
        return _RANK[v.reason], v.anchor.timestamp() if v.anchor else float("-inf")

    best = max(verdicts, key=rank)
    saving = item.price_yuan if best.reason == "recognised" else Decimal(0)
    return Expectation(best.reason, best.rule, best.why, saving)
