"""Recognition decisions: may this order be met by a result the patient already has? (pure)

:func:`decide` takes an order, the patient's known results, the institution registry, the
region's catalogue and the time of the decision, and returns a :class:`Decision`:
``recognisable`` or ``not-recognisable`` with exactly one reason code from :data:`REASONS`.
No faust, Kafka or I/O; the same inputs always give the same decision. The hub advises —
the ordering doctor decides (国卫医发〔2022〕6号), so nothing here forbids an order.

The rules, checked for every earlier result of the ordered item, in this order (the first
that fails is that result's reason):

1. **Withdrawn** results (``entered-in-error``, ``cancelled``, ``revoked``, or a
   ``retraction`` change) do not exist for the decision.
2. **Final**: status ``final``, ``amended``, ``corrected``, ``appended`` (reports) or
   ``available`` (an ImagingStudy whose images exist) → else ``result-not-final``.
3. **Window**: the item's window runs from its anchor — the specimen collection
   (``collected_at``, else ``performed_at``) or the report issue (``issued_at``, else
   ``performed_at``); a fallback never lengthens the window. The result is valid up to and
   including ``valid_until`` = anchor + window → else ``outside-window``.
4. **HR qualification**: the issuer holds a quality-control qualification covering the item
   (by item id, or category-wide) on the day the result was issued (China time) → else
   ``issuer-not-qualified`` (unknown issuer, none, or expired / not yet valid then).
5. **Scope and direction** between issuer and ordering institution → else
   ``scope-not-satisfied``: private issuers when the catalogue excludes them; then either a
   shared 医联体, or the catalogue's scope (region, prefecture, alliance-only), the
   direction (same level, lower recognises upper; upper recognises lower only where the
   region allows it or for pilot institutions) and the 三甲-with-三甲 rule where set; and
   always the reach of the issuer's HR scope (national; provincial = same province;
   municipal = same prefecture; alliance = a shared 医联体).

Results linked to the patient only by a *possible* match (``link="in-review"``) never make
an order recognisable: if only such a result would have been, the reason is
``link-in-review`` and the result is not shown (it may be another person's).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any, Final, Literal, Protocol

from pydantic import AwareDatetime, BaseModel, ConfigDict

from services.common.institutions import Institution, QcScope, hr_reaches, shares_alliance
from services.recognition.catalog import Catalog, Coding, Item, ScopeRules, china_date

ReasonCode = Literal[
    "recognised",
    "not-in-catalog",
    "no-prior-result",
    "result-not-final",
    "outside-window",
    "issuer-not-qualified",
    "scope-not-satisfied",
    "link-in-review",
]

#: Every reason code and what it means (``docs/recognition.md`` has the same table).
REASONS: Final[Mapping[ReasonCode, str]] = {
    "recognised": "a recognisable earlier result exists",
    "not-in-catalog": "the ordered item is not in the region's catalogue in force",
    "no-prior-result": "the patient has no earlier result of this item",
    "result-not-final": "the earlier result is not final (registered, preliminary, partial…)",
    "outside-window": "the earlier result is older than the item's validity window",
    "issuer-not-qualified": (
        "the issuing institution held no current HR (quality-control) qualification for the item"
    ),
    "scope-not-satisfied": (
        "the recognition scope or direction between the two institutions does not allow it"
    ),
    "link-in-review": (
        "an earlier result exists only for a possible match of this patient, still in review"
    ),
}

Outcome = Literal["recognisable", "not-recognisable"]
LinkState = Literal["confirmed", "in-review"]

#: Result statuses that count as final.
FINAL_STATUSES: Final = frozenset({"final", "amended", "corrected", "appended", "available"})
#: Statuses that withdraw a result: it is ignored, as if never posted.
WITHDRAWN_STATUSES: Final = frozenset({"entered-in-error", "cancelled", "revoked"})

#: How close a non-recognisable result came (higher: further along the checks).
_RANK: Final[Mapping[ReasonCode, int]] = {
    "result-not-final": 1,
    "outside-window": 2,
    "issuer-not-qualified": 3,
    "scope-not-satisfied": 4,
    "recognised": 5,
}
_SCOPE_WIDTH: Final[Mapping[str, int]] = {
    "national": 4,
    "provincial": 3,
    "municipal": 2,
    "alliance": 1,
}

HUB_FHIR_BASE: Final = "https://fhir.mrhub.cn"
REASON_SYSTEM: Final = f"{HUB_FHIR_BASE}/CodeSystem/recognition-reason"
RECORD_ID_SYSTEM: Final = f"{HUB_FHIR_BASE}/NamingSystem/record-id"
MASTER_PATIENT_SYSTEM: Final = f"{HUB_FHIR_BASE}/NamingSystem/master-patient-id"
OUTCOME_EXTENSION: Final = f"{HUB_FHIR_BASE}/StructureDefinition/recognition-outcome"
SAVING_EXTENSION: Final = f"{HUB_FHIR_BASE}/StructureDefinition/recognition-saving"
CATALOG_EXTENSION: Final = f"{HUB_FHIR_BASE}/StructureDefinition/recognition-catalogue"
ITEM_EXTENSION: Final = f"{HUB_FHIR_BASE}/StructureDefinition/recognition-item"


class InstitutionDirectory(Protocol):
    """Anything that finds an institution by id: a ``Registry`` or a plain dict."""

    def get(self, institution_id: str, /) -> Institution | None: ...


# ── inputs: the canonical records of docs/events.md (unknown members ignored) ────────────


class _Input(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class ImagingInfo(_Input):
    """The ``imaging`` member of a canonical result or order."""

    study_uid: str | None = None
    modalities: tuple[str, ...] = ()
    body_sites: tuple[Coding, ...] = ()
    contrast: bool | None = None
    endpoints: tuple[str, ...] = ()


class SourceInfo(_Input):
    """The ``source`` member: where the record came from."""

    event_id: str | None = None
    resource_type: str | None = None
    resource_id: str | None = None
    full_url: str | None = None


class PriorResult(_Input):
    """One of the patient's known results: a ``result-indexed`` payload validates as is.

    ``link`` is not in the event: the caller sets ``in-review`` for a result that belongs
    to the patient only through a possible match awaiting a data steward.
    """

    record_id: str
    institution: str
    resource_type: str = "Observation"
    category: str = "other"
    codes: tuple[Coding, ...] = ()
    catalogue_item: str | None = None
    imaging: ImagingInfo | None = None
    status: str
    change: str | None = None
    performed_at: AwareDatetime | None = None
    collected_at: AwareDatetime | None = None
    issued_at: AwareDatetime | None = None
    source: SourceInfo | None = None
    link: LinkState = "confirmed"

    @property
    def withdrawn(self) -> bool:
        return self.status in WITHDRAWN_STATUSES or self.change == "retraction"


class Order(_Input):
    """The order being placed: an ``order-placed`` payload validates as is."""

    record_id: str | None = None
    master_patient_id: str | None = None
    institution: str
    category: str = "other"
    codes: tuple[Coding, ...] = ()
    catalogue_item: str | None = None
    imaging: ImagingInfo | None = None
    status: str = "active"
    source: SourceInfo | None = None


# ── outputs ──────────────────────────────────────────────────────────────────────────────


class _Output(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PriorMatch(_Output):
    """One earlier result of the ordered item and how it fared.

    ``rule`` names the check that failed (stable kebab-case, see ``docs/recognition.md``),
    ``None`` when recognisable. ``report_ref`` is the posting hospital's
    ``<resource type>/<id>`` of the result (``record_id`` is the hub's). ``hr_scope`` is the
    scope of the issuer's qualification used (the widest that covers the item).
    """

    record_id: str
    institution: str
    institution_name: str | None
    resource_type: str
    status: str
    performed_at: datetime | None
    anchor_at: datetime | None
    valid_until: datetime | None
    hr_scope: QcScope | None
    recognisable: bool
    reason: ReasonCode
    rule: str | None
    detail: str
    report_ref: str | None
    study_uid: str | None
    image_endpoints: tuple[str, ...]


class Decision(_Output):
    """The answer for one order. ``matches`` lists every earlier result of the item the
    patient has (confirmed links only), the preferred one first: recognisable before not,
    then the one that came closest, then the most recent."""

    outcome: Outcome
    reason: ReasonCode
    detail: str
    decided_at: datetime
    order_record_id: str | None
    master_patient_id: str | None
    ordering_institution: str
    item_id: str | None
    item_name: str | None
    item_category: str | None
    catalog: str | None
    catalog_version: str | None
    price_yuan: Decimal | None
    estimated_saving_yuan: Decimal | None
    matches: tuple[PriorMatch, ...]

    @property
    def recognisable(self) -> bool:
        return self.outcome == "recognisable"

    @property
    def best(self) -> PriorMatch | None:
        """The preferred earlier result (the one to open from the prompt), if any."""
        return self.matches[0] if self.matches else None


# ── the decision ─────────────────────────────────────────────────────────────────────────


def item_of_record(
    codes: Iterable[Coding],
    imaging: ImagingInfo | None,
    catalogue_item: str | None,
    *,
    institution: str,
    catalog: Catalog,
    at: datetime,
) -> Item | None:
    """The catalogue item a result or order stands for: the catalogue's own mapping
    (imaging by modality/body part/contrast, then codes, local ones per institution), else
    the ``catalogue_item`` the patient index filled in, if that item is in force."""
    found = catalog.find_item(
        codes,
        institution=institution,
        modalities=imaging.modalities if imaging else (),
        body_sites=imaging.body_sites if imaging else (),
        contrast=imaging.contrast if imaging else None,
        at=at,
    )
    if found is None and catalogue_item:
        found = catalog.item(catalogue_item, at)
    return found


def decide(
    order: Order,
    results: Iterable[PriorResult],
    institutions: InstitutionDirectory,
    catalog: Catalog,
    now: datetime,
) -> Decision:
    """Decide whether ``order`` can be met by one of ``results`` (see the module docs).

    ``now`` must be timezone-aware; the catalogue's items in force on that day apply.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    item = item_of_record(
        order.codes,
        order.imaging,
        order.catalogue_item,
        institution=order.institution,
        catalog=catalog,
        at=now,
    )
    base: dict[str, Any] = {
        "decided_at": now,
        "order_record_id": order.record_id,
        "master_patient_id": order.master_patient_id,
        "ordering_institution": order.institution,
        "catalog": catalog.catalog,
        "catalog_version": catalog.version,
    }
    if item is None:
        in_force = "in force" if catalog.in_force(now) else "(not in force at this time)"
        return Decision(
            outcome="not-recognisable",
            reason="not-in-catalog",
            detail=f"the ordered codes map to no item of catalogue {catalog.version} {in_force}",
            item_id=None,
            item_name=None,
            item_category=None,
            price_yuan=None,
            estimated_saving_yuan=None,
            matches=(),
            **base,
        )
    base.update(
        item_id=item.id,
        item_name=item.name,
        item_category=item.category,
        price_yuan=item.price_yuan,
    )
    rules = catalog.rules_for(item)
    receiver = institutions.get(order.institution)
    confirmed: list[PriorMatch] = []
    in_review: list[PriorMatch] = []
    for result in results:
        if result.withdrawn:
            continue
        result_item = item_of_record(
            result.codes,
            result.imaging,
            result.catalogue_item,
            institution=result.institution,
            catalog=catalog,
            at=now,
        )
        if result_item is None or result_item.id != item.id:
            continue
        match = _evaluate(result, item, rules, catalog, institutions, receiver, now)
        (confirmed if result.link == "confirmed" else in_review).append(match)

    confirmed.sort(key=_preference, reverse=True)
    matches = one_per_study(confirmed)
    if matches and matches[0].recognisable:
        best = matches[0]
        return Decision(
            outcome="recognisable",
            reason="recognised",
            detail=(
                f"{item.name} ({item.id}) from {best.institution_name or best.institution}, "
                f"valid until {_iso(best.valid_until)}"
            ),
            estimated_saving_yuan=item.price_yuan,
            matches=matches,
            **base,
        )
    if any(m.recognisable for m in in_review):
        return Decision(
            outcome="not-recognisable",
            reason="link-in-review",
            detail=(
                f"a recognisable {item.name} ({item.id}) exists for a possible match of this "
                "patient; the link awaits review by a data steward"
            ),
            estimated_saving_yuan=None,
            matches=matches,
            **base,
        )
    if matches:
        best = matches[0]
        return Decision(
            outcome="not-recognisable",
            reason=best.reason,
            detail=best.detail,
            estimated_saving_yuan=None,
            matches=matches,
            **base,
        )
    return Decision(
        outcome="not-recognisable",
        reason="no-prior-result",
        detail=f"no earlier {item.name} ({item.id}) result for this patient",
        estimated_saving_yuan=None,
        matches=(),
        **base,
    )


def one_per_study(matches: list[PriorMatch]) -> tuple[PriorMatch, ...]:
    """One match per imaging study: a study and the reports on it (the same institution and
    Study Instance UID — a report is its study's however the bundle linked them) are one
    examination, shown once. The report stands for it (what a doctor reads: the impression),
    the best of them by preference if there are several, with every image endpoint of the
    group; a study without a report stands for itself. ``matches`` is in preference order,
    and so is the answer (a group sits where its best member sat)."""
    groups: dict[tuple[str, str], list[PriorMatch]] = {}
    order: list[PriorMatch | tuple[str, str]] = []
    for m in matches:
        if m.study_uid is None:
            order.append(m)
            continue
        key = (m.institution, m.study_uid)
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(m)
    out: list[PriorMatch] = []
    for entry in order:
        if isinstance(entry, PriorMatch):
            out.append(entry)
            continue
        group = groups[entry]
        reports = [m for m in group if m.resource_type == "DiagnosticReport"]
        lead = reports[0] if reports else group[0]
        endpoints = tuple(dict.fromkeys(e for m in group for e in m.image_endpoints))
        out.append(
            lead
            if endpoints == lead.image_endpoints
            else lead.model_copy(update={"image_endpoints": endpoints})
        )
    return tuple(out)


def _preference(m: PriorMatch) -> tuple[int, float]:
    when = m.anchor_at or m.performed_at
    return _RANK[m.reason], when.timestamp() if when is not None else float("-inf")


def _iso(moment: datetime | None) -> str:
    return moment.isoformat() if moment is not None else "unknown"


def anchor_time(result: PriorResult, item: Item) -> datetime | None:
    """The moment the item's window runs from, for this result (see the module docs)."""
    if item.window.anchor == "specimen-collection":
        return result.collected_at or result.performed_at
    return result.issued_at or result.performed_at


def _evaluate(
    result: PriorResult,
    item: Item,
    rules: ScopeRules,
    catalog: Catalog,
    institutions: InstitutionDirectory,
    receiver: Institution | None,
    now: datetime,
) -> PriorMatch:
    issuer = institutions.get(result.institution)
    anchor = anchor_time(result, item)
    valid_until = anchor + item.window.duration if anchor is not None else None
    hr_scope: QcScope | None = None

    def verdict(reason: ReasonCode, rule: str | None, detail: str) -> PriorMatch:
        imaging = result.imaging
        source = result.source
        ref = None
        if source is not None and source.resource_id:
            ref = f"{source.resource_type or result.resource_type}/{source.resource_id}"
        return PriorMatch(
            record_id=result.record_id,
            institution=result.institution,
            institution_name=issuer.name if issuer is not None else None,
            resource_type=result.resource_type,
            status=result.status,
            performed_at=result.performed_at,
            anchor_at=anchor,
            valid_until=valid_until,
            hr_scope=hr_scope,
            recognisable=reason == "recognised",
            reason=reason,
            rule=rule,
            detail=detail,
            report_ref=ref,
            study_uid=imaging.study_uid if imaging is not None else None,
            image_endpoints=imaging.endpoints if imaging is not None else (),
        )

    if result.status not in FINAL_STATUSES:
        return verdict("result-not-final", "status", f"the result's status is {result.status!r}")
    if anchor is None or valid_until is None:
        return verdict(
            "outside-window",
            "no-anchor-time",
            f"the result has no time to run the {item.window} window from",
        )
    if now > valid_until:
        return verdict(
            "outside-window",
            "expired",
            f"the {item.window} window ended at {valid_until.isoformat()}",
        )

    made = result.issued_at or result.performed_at or result.collected_at or anchor
    day = china_date(made)
    if issuer is None:
        return verdict(
            "issuer-not-qualified",
            "unknown-issuer",
            f"{result.institution} is not in the institution registry",
        )
    relevant = [
        q
        for q in issuer.qualifications
        if (q.item is not None and q.item == item.id)
        or (q.item is None and q.category in item.qualification_categories)
    ]
    current = [q for q in relevant if q.issued <= day <= q.expires]
    if not current:
        if not relevant:
            return verdict(
                "issuer-not-qualified",
                "no-qualification",
                f"{issuer.name} holds no HR qualification for {item.id}",
            )
        expired = [q for q in relevant if q.expires < day]
        rule = "qualification-expired" if expired else "qualification-not-yet-valid"
        periods = ", ".join(f"{q.issued}..{q.expires}" for q in relevant)
        return verdict(
            "issuer-not-qualified",
            rule,
            f"{issuer.name}'s HR qualification for {item.id} ({periods}) did not cover {day}",
        )
    current.sort(key=lambda q: _SCOPE_WIDTH[q.scope], reverse=True)
    hr_scope = current[0].scope

    failed = _scope_failure(issuer, receiver, rules, catalog, item)
    if failed is not None:
        rule, detail = failed
        return verdict("scope-not-satisfied", rule, detail)
    reaching = [q for q in current if hr_reaches(q.scope, issuer, receiver)]
    if not reaching:
        return verdict(
            "scope-not-satisfied",
            "hr-scope",
            f"{issuer.name}'s HR qualification is {hr_scope}: it does not reach the ordering "
            "institution",
        )
    hr_scope = reaching[0].scope
    return verdict("recognised", None, f"recognisable until {valid_until.isoformat()}")


def _tertiary_a(inst: Institution) -> bool:
    return inst.level == 3 and inst.grade == "甲"


def _scope_failure(
    issuer: Institution,
    receiver: Institution | None,
    rules: ScopeRules,
    catalog: Catalog,
    item: Item,
) -> tuple[str, str] | None:
    """``(rule, detail)`` of the first scope/direction rule that fails, else ``None``."""
    if receiver is None:
        return "unknown-receiver", "the ordering institution is not in the institution registry"
    if rules.exclude_private and issuer.ownership == "private":
        return (
            "private-excluded",
            f"{issuer.name} is private and the catalogue excludes private institutions "
            f"for {item.id}",
        )
    if shares_alliance(issuer, receiver):
        return None  # members of one 医联体 recognise each other
    if rules.scope == "alliance":
        return "alliance-only", f"{item.id} is recognised only within a shared 医联体"
    if not (
        catalog.covers_region(issuer.region_code) and catalog.covers_region(receiver.region_code)
    ):
        return (
            "outside-region",
            f"the two institutions are not both in the catalogue's region {catalog.region_code}",
        )
    if rules.scope == "prefecture" and issuer.prefecture_code != receiver.prefecture_code:
        return "outside-prefecture", f"{item.id} is recognised only within one prefecture"
    if issuer.level < receiver.level and not (
        rules.upper_recognises_lower or receiver.id in rules.pilot_institutions
    ):
        return (
            "direction",
            f"a level-{receiver.level} institution does not recognise a level-{issuer.level} "
            "one's results in this region (upper recognises lower only in pilots)",
        )
    if rules.tertiary_a_peers_only and _tertiary_a(receiver) and not _tertiary_a(issuer):
        return "grade", "a 三甲 hospital recognises only 三甲 hospitals' results here"
    return None


# ── FHIR ─────────────────────────────────────────────────────────────────────────────────


def _record_reference(record_id: str, resource_type: str, display: str | None) -> dict[str, Any]:
    ref: dict[str, Any] = {
        "type": resource_type,
        "identifier": {"system": RECORD_ID_SYSTEM, "value": record_id},
    }
    if display:
        ref["display"] = display
    return ref


def to_detected_issue(decision: Decision, *, issue_id: str | None = None) -> dict[str, Any]:
    """The decision as a FHIR R4 ``DetectedIssue`` (a JSON-ready dict).

    ``code`` carries the reason code (system :data:`REASON_SYSTEM`); ``implicated`` the
    order and the recognisable earlier results; ``evidence`` every earlier result of the
    item; extensions the outcome, the item, the catalogue version and the estimated saving
    in CNY (a ``Decimal``: serialise with simplejson, as the envelope does). References are
    logical: the hub's ``record_id`` of each record, and its master patient id.
    ``severity`` is ``low`` when a recognisable result exists (the doctor decides), absent
    otherwise.
    """
    doc: dict[str, Any] = {"resourceType": "DetectedIssue"}
    if issue_id:
        doc["id"] = issue_id
    extensions: list[dict[str, Any]] = [
        {"url": OUTCOME_EXTENSION, "valueCode": decision.outcome},
    ]
    if decision.item_id:
        extensions.append({"url": ITEM_EXTENSION, "valueCode": decision.item_id})
    if decision.catalog_version:
        extensions.append({"url": CATALOG_EXTENSION, "valueString": decision.catalog_version})
    if decision.estimated_saving_yuan is not None:
        extensions.append(
            {
                "url": SAVING_EXTENSION,
                "valueMoney": {"value": decision.estimated_saving_yuan, "currency": "CNY"},
            }
        )
    doc["extension"] = extensions
    doc["status"] = "final"
    doc["code"] = {
        "coding": [
            {
                "system": REASON_SYSTEM,
                "code": decision.reason,
                "display": REASONS[decision.reason],
            }
        ],
        "text": decision.detail,
    }
    if decision.recognisable:
        doc["severity"] = "low"
    if decision.master_patient_id:
        doc["patient"] = {
            "type": "Patient",
            "identifier": {"system": MASTER_PATIENT_SYSTEM, "value": decision.master_patient_id},
        }
    doc["identifiedDateTime"] = decision.decided_at.isoformat()
    implicated: list[dict[str, Any]] = []
    if decision.order_record_id:
        implicated.append(
            _record_reference(decision.order_record_id, "ServiceRequest", decision.item_name)
        )
    implicated += [
        _record_reference(m.record_id, m.resource_type, m.institution_name)
        for m in decision.matches
        if m.recognisable
    ]
    if implicated:
        doc["implicated"] = implicated
    if decision.matches:
        doc["evidence"] = [
            {
                "detail": [
                    _record_reference(m.record_id, m.resource_type, m.institution_name)
                    for m in decision.matches
                ]
            }
        ]
    doc["detail"] = decision.detail
    return doc
