"""Canonical records: one accepted FHIR result or order, reduced to what the hub decides on.

Pure functions, no faust, Kafka or I/O. The patient-index agent, once it knows the master
patient id of an accepted resource, calls :func:`build_record` with the
``mrhub.ingest.resource-accepted.v1`` payload and hands the record to
:func:`services.patient_index.dedup.decide`; what is emitted is :func:`to_event_payload`.

Rules (the event docs repeat them for consumers):

- **Kind.** ``ServiceRequest`` is an ``order``; ``Observation``, ``DiagnosticReport`` and
  ``ImagingStudy`` are ``result``\\s; every other type gives ``None``.
- **Business key** (what makes two posts "the same thing"), never published:

  - ``ImagingStudy``: ``<institution>|study|<Study Instance UID>`` — each institution's copy
    of a study is its own record, which only that institution can update, retract or move
    (the imaging index joins the copies by UID: a hospital and its imaging cloud are two
    sources of one study there, never one record here);
  - a ``DiagnosticReport`` tied to a study (its ``identifier`` or an ``imagingStudy``
    reference carries a ``urn:dicom:uid`` identifier, or ``imagingStudy`` points to a
    contained ImagingStudy): ``<institution>|study|<uid>|DiagnosticReport`` — that
    institution's report of that study, distinct from the study itself;
  - otherwise ``<institution>|<resource type>|<system>|<value>`` of the report / order
    number: 检验报告单号 (:data:`LAB_REPORT_NO_SYSTEM`) for Observation and DiagnosticReport,
    电子申请单编号 (:data:`ORDER_NO_SYSTEM`) for ServiceRequest, else the first identifier
    with a system and a value that is not a 身份证, else ``id|<logical id>``, else
    ``event|<event id>`` (which never matches another post). An Observation keyed by a
    report or order number — shared by every result line of that report — gets its first
    ``code.coding`` appended (``|<system>|<code>``) so that K and Na of one report stay apart.

  Every business key starts with the posting institution, so no post of one institution
  can name another institution's record: a Study Instance UID, a report or an order number
  that two institutions share is two records. ``record_id`` is the SHA-256 of the business
  key (32 hex): stable, and with no identifier in clear, so it may be a Kafka or table key.
- **Category**, highest first when several apply: ``ecg`` (v2-0074 ``EC``, LOINC EKG codes
  11524-6 / 34534-8 / 8601-7, DICOM modality ``ECG``), ``pathology`` (v2-0074 ``SP``,
  ``CP``, LOINC LP7839-6), ``imaging`` (observation-category ``imaging``, v2-0074 ``RAD``
  ``CT`` ``NMR`` ``NMS`` ``RUS`` ``RX`` ``XRC`` ``OUS`` ``VUS`` ``CUS``, SNOMED 363679005,
  LOINC LP29684-5, an ImagingStudy, a report tied to a study, an order coded with a DICOM
  modality), ``lab`` (observation-category ``laboratory``, v2-0074 ``LAB`` ``HM`` ``CH``
  ``MB`` ``SR`` ``IMM`` ``BG`` ``BLB`` ``CG`` ``GE`` ``MCB`` ``MYC`` ``OSL`` ``TX`` ``URN``
  ``VR``, SNOMED 108252007, or else any ``specimen``), else ``other``. A category coding
  without a system is looked up in all these tables.
- **Times** are aware datetimes. A FHIR ``dateTime`` that is only ``YYYY``, ``YYYY-MM`` or
  ``YYYY-MM-DD`` stands for the start of that year, month or day in China time (UTC+8, the
  hubs' only time zone, no daylight saving); a time without an offset (not valid FHIR, but
  seen) is read as UTC+8 too. Unparseable values give ``None``, never an error.
  ``performed_at`` is ``effective[x]`` (dateTime, instant or period start) for results,
  ``started`` for ImagingStudy, ``occurrence[x]`` for orders. ``collected_at`` is the
  collection time of a *contained* Specimen the resource points to
  (``collection.collected[x]``); else, for a ``lab`` record, ``effective[x]`` — in lab
  practice the clinically relevant time *is* the specimen collection; else ``None``.
- **Contrast** is read only from the hub extension :data:`CONTRAST_EXTENSION`
  (``valueBoolean``) on the ImagingStudy, report or order; R4 has no element for it and the
  exam's free-text name is never used. ``None`` means "not stated".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final, Literal, cast

from pydantic import AwareDatetime, BaseModel, ConfigDict

from services.common.records import CHINA_TZ as CHINA_TZ
from services.common.records import business_key, study_uid
from services.common.records import parse_fhir_datetime as parse_fhir_datetime
from services.common.records import record_id_for as record_id_for

#: Statuses that withdraw what was published before for the same business key.
STATUS_RETRACTED: Final = frozenset({"entered-in-error", "cancelled", "revoked"})

#: Hub extension (``valueBoolean``) stating whether an imaging study / order uses contrast.
CONTRAST_EXTENSION: Final = "https://fhir.mrhub.cn/StructureDefinition/contrast"

OBSERVATION_CATEGORY_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/observation-category"
DIAGNOSTIC_SERVICE_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/v2-0074"
DICOM_DCM_SYSTEM: Final = "http://dicom.nema.org/resources/ontology/DCM"
LOINC_SYSTEM: Final = "http://loinc.org"
SNOMED_SYSTEM: Final = "http://snomed.info/sct"

Kind = Literal["result", "order"]
Category = Literal["lab", "imaging", "ecg", "pathology", "other"]
ResourceType = Literal["Observation", "DiagnosticReport", "ImagingStudy", "ServiceRequest"]
#: The ``change`` of a published record (``duplicate`` and ``stale`` are never published).
PublishedChange = Literal["new", "update", "retraction"]

_KINDS: Final[Mapping[str, Kind]] = {
    "Observation": "result",
    "DiagnosticReport": "result",
    "ImagingStudy": "result",
    "ServiceRequest": "order",
}

_CATEGORY_CODES: Final[Mapping[str, Mapping[str, Category]]] = {
    OBSERVATION_CATEGORY_SYSTEM: {"laboratory": "lab", "imaging": "imaging"},
    DIAGNOSTIC_SERVICE_SYSTEM: {
        **dict.fromkeys(
            (
                "LAB",
                "HM",
                "CH",
                "MB",
                "SR",
                "IMM",
                "BG",
                "BLB",
                "CG",
                "GE",
                "MCB",
                "MYC",
                "OSL",
                "TX",
                "URN",
                "VR",
            ),
            "lab",
        ),
        **dict.fromkeys(
            ("RAD", "CT", "NMR", "NMS", "RUS", "RX", "XRC", "OUS", "VUS", "CUS"), "imaging"
        ),
        "EC": "ecg",
        "SP": "pathology",
        "CP": "pathology",
    },
    SNOMED_SYSTEM: {"108252007": "lab", "363679005": "imaging"},
    LOINC_SYSTEM: {"LP29684-5": "imaging", "LP7839-6": "pathology"},
}
_ECG_LOINC: Final = frozenset({"11524-6", "34534-8", "8601-7"})
_PRECEDENCE: Final[tuple[Category, ...]] = ("ecg", "pathology", "imaging", "lab")


class Code(BaseModel):
    """One coding as posted (``system`` and ``display`` may be absent)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    system: str | None = None
    code: str
    display: str | None = None


class ImagingSummary(BaseModel):
    """What imaging is matched on (modality, body part, contrast) and where the images are.

    ``study_uid`` is the bare Study Instance UID (no ``urn:oid:``); ``None`` for an order.
    ``modalities`` are sorted unique DICOM codes; ``endpoints`` the Endpoint references (or
    a contained Endpoint's ``address``) as posted, in order, unique.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    study_uid: str | None = None
    modalities: tuple[str, ...] = ()
    body_sites: tuple[Code, ...] = ()
    contrast: bool | None = None
    series_count: int | None = None
    instance_count: int | None = None
    endpoints: tuple[str, ...] = ()


class ResultValue(BaseModel):
    """An Observation's value. ``value`` is the number's text as posted (``"6.30"``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    value: str | None = None
    comparator: str | None = None
    unit: str | None = None
    system: str | None = None
    code: str | None = None
    text: str | None = None
    coded: tuple[Code, ...] = ()
    interpretation: tuple[Code, ...] = ()
    reference_range: str | None = None


class SourceRef(BaseModel):
    """Where a record came from: the accepted event and the resource's place in the post."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: str
    resource_type: str
    resource_id: str | None = None
    bundle_id: str | None = None
    entry_index: int | None = None
    full_url: str | None = None
    received_at: AwareDatetime | None = None


class CanonicalRecord(BaseModel):
    """One result or order of one master patient, as the hub indexes and publishes it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Kind
    record_id: str
    business_key: str
    master_patient_id: str
    institution: str
    resource_type: ResourceType
    category: Category
    codes: tuple[Code, ...] = ()
    catalogue_item: str | None = None
    imaging: ImagingSummary | None = None
    status: str
    intent: str | None = None
    performed_at: AwareDatetime | None = None
    collected_at: AwareDatetime | None = None
    issued_at: AwareDatetime | None = None
    authored_at: AwareDatetime | None = None
    value: ResultValue | None = None
    source: SourceRef
    trace_id: str
    #: the FHIR resource as posted (bundle-internal references resolved by the gateway);
    #: not part of the content hash; ``None`` for a record of the layout before it
    resource: dict[str, Any] | None = None

    @property
    def retracted(self) -> bool:
        """The status withdraws the record (:data:`STATUS_RETRACTED`)."""
        return self.status in STATUS_RETRACTED


Mapper = Callable[[list[Code]], str | None]


def no_catalogue(codes: list[Code]) -> str | None:
    """The default mapper: no catalogue yet, so no item."""
    return None


# --- building -----------------------------------------------------------------------------


def build_record(
    payload: Mapping[str, Any],
    *,
    source_institution: str,
    master_patient_id: str,
    event_id: str,
    received_at: datetime | None,
    trace_id: str,
    mapper: Mapper = no_catalogue,
) -> CanonicalRecord | None:
    """The canonical record of a ``resource-accepted`` payload, or ``None`` when the
    resource is neither a result nor an order (Patient, Encounter, Organization…).

    ``source_institution`` is the envelope's ``source``; ``mapper`` maps the record's codes
    to a catalogue item. Missing or odd elements give ``None`` fields, not errors.
    """
    resource = payload.get("resource")
    if not isinstance(resource, Mapping):
        return None
    rtype = payload.get("resource_type") or resource.get("resourceType")
    if not isinstance(rtype, str) or rtype not in _KINDS:
        return None
    kind = _KINDS[rtype]
    contained = _contained(resource)

    if rtype == "ImagingStudy":
        codes = _dedup_codes(
            [
                *(c for cc in _list(resource.get("procedureCode")) for c in _codings(cc)),
                *_modality_codes(resource),
            ]
        )
    else:
        codes = _dedup_codes(_codings(resource.get("code")))

    imaging = _imaging(rtype, resource, contained, codes)
    category = _category(rtype, resource, codes, imaging)
    bkey = business_key(
        rtype,
        resource,
        source_institution,
        _list(payload.get("patient_identifiers")),
    )

    performed = _performed_at(rtype, resource)
    collected = _specimen_collected_at(resource, contained)
    if collected is None and category == "lab" and rtype != "ServiceRequest":
        collected = performed

    is_order = kind == "order"
    status = resource.get("status")
    if received_at is not None and received_at.tzinfo is None:
        received_at = received_at.replace(tzinfo=UTC)
    return CanonicalRecord(
        kind=kind,
        record_id=record_id_for(bkey),
        business_key=bkey,
        master_patient_id=master_patient_id,
        institution=source_institution,
        resource_type=cast(ResourceType, rtype),  # one of _KINDS, checked above
        category=category,
        codes=tuple(codes),
        catalogue_item=mapper(list(codes)),
        imaging=imaging,
        status=status if isinstance(status, str) and status else "unknown",
        intent=_str(resource.get("intent")) if is_order else None,
        performed_at=performed,
        collected_at=collected,
        issued_at=None if is_order else parse_fhir_datetime(resource.get("issued")),
        authored_at=parse_fhir_datetime(resource.get("authoredOn")) if is_order else None,
        value=_value(resource) if rtype == "Observation" else None,
        source=SourceRef(
            event_id=event_id,
            resource_type=rtype,
            resource_id=_str(resource.get("id")),
            bundle_id=_str(payload.get("bundle_id")),
            entry_index=_int(payload.get("entry_index")),
            full_url=_str(payload.get("full_url")),
            received_at=received_at,
        ),
        trace_id=trace_id,
        resource=dict(resource),
    )


def record_json(record: CanonicalRecord) -> dict[str, Any]:
    """The record as a JSON-ready dict for Kafka and tables (:mod:`services.common.codec`):
    ``resource`` is kept as posted — its decimals stay numbers with their digits (pydantic's
    JSON mode would write them as strings)."""
    doc = record.model_dump(mode="json", exclude={"resource"})
    doc["resource"] = record.resource
    return doc


def to_event_payload(
    record: CanonicalRecord,
    *,
    change: PublishedChange,
    previous_master_patient_id: str | None = None,
) -> dict[str, Any]:
    """The ``result-indexed`` / ``order-placed`` payload: JSON-ready (numbers as strings,
    RFC 3339 times with the offset as posted) with ``resource``, the FHIR resource as the
    hospital posted it (its decimals as posted numbers). The business key is left out — it may hold
    a report number in clear; ``record_id`` stands for it. Results carry no
    ``authored_at``/``intent``; orders no ``issued_at``/``collected_at``/``value``.
    ``previous_master_patient_id`` is set when an ``update`` moves the record to another
    master patient (a merge)."""
    skip = {"business_key", "resource"}
    if record.kind == "result":
        skip |= {"authored_at", "intent"}
    else:
        skip |= {"issued_at", "collected_at", "value"}
    doc: dict[str, Any] = {"change": change}
    doc.update(record.model_dump(mode="json", exclude=skip))
    doc["resource"] = record.resource
    if previous_master_patient_id is not None:
        doc["previous_master_patient_id"] = previous_master_patient_id
    return doc


# --- pieces -------------------------------------------------------------------------------


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, Decimal) and value.is_finite() and value == value.to_integral_value():
        return int(value)
    return None


def _list(value: Any) -> list[Any]:
    if isinstance(value, list):
        return value
    return [] if value is None else [value]


def _coding(c: Any) -> Code | None:
    if not isinstance(c, Mapping):
        return None
    code = _str(c.get("code"))
    if code is None:
        return None
    return Code(system=_str(c.get("system")), code=code, display=_str(c.get("display")))


def _codings(concept: Any) -> list[Code]:
    """The codings of a CodeableConcept (those without a code are skipped)."""
    if not isinstance(concept, Mapping):
        return []
    return [c for c in map(_coding, _list(concept.get("coding"))) if c is not None]


def _dedup_codes(codes: Iterable[Code]) -> list[Code]:
    seen: set[tuple[str | None, str]] = set()
    out: list[Code] = []
    for c in codes:
        if (c.system, c.code) not in seen:
            seen.add((c.system, c.code))
            out.append(c)
    return out


def _contained(resource: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    out: dict[str, Mapping[str, Any]] = {}
    for c in _list(resource.get("contained")):
        if isinstance(c, Mapping) and isinstance(c.get("id"), str):
            out[c["id"]] = c
    return out


def _resolve_contained(
    ref: Any, contained: Mapping[str, Mapping[str, Any]], rtype: str
) -> Mapping[str, Any] | None:
    if not isinstance(ref, Mapping):
        return None
    target = ref.get("reference")
    if not isinstance(target, str) or not target.startswith("#"):
        return None
    found = contained.get(target[1:])
    return found if found is not None and found.get("resourceType") == rtype else None


def _report_study(
    resource: Mapping[str, Any], contained: Mapping[str, Mapping[str, Any]]
) -> tuple[str | None, Mapping[str, Any] | None]:
    """The study a DiagnosticReport reports on: its UID and, if contained, the study."""
    for ref in _list(resource.get("imagingStudy")):
        study = _resolve_contained(ref, contained, "ImagingStudy")
        if study is not None and (uid := study_uid(study)) is not None:
            return uid, study
        if isinstance(ref, Mapping) and (uid := study_uid({"identifier": ref.get("identifier")})):
            return uid, None
    return study_uid(resource), None


def _modality_codes(resource: Mapping[str, Any]) -> list[Code]:
    """ImagingStudy ``modality`` and each ``series.modality`` (Coding), as posted."""
    out = [c for c in map(_coding, _list(resource.get("modality"))) if c is not None]
    for s in _list(resource.get("series")):
        if isinstance(s, Mapping) and (c := _coding(s.get("modality"))) is not None:
            out.append(c)
    return out


def _contrast(*resources: Mapping[str, Any] | None) -> bool | None:
    for res in resources:
        if res is None:
            continue
        for ext in _list(res.get("extension")):
            if isinstance(ext, Mapping) and ext.get("url") == CONTRAST_EXTENSION:
                flag = ext.get("valueBoolean")
                if isinstance(flag, bool):
                    return flag
    return None


def _endpoints(
    resource: Mapping[str, Any], contained: Mapping[str, Mapping[str, Any]]
) -> tuple[str, ...]:
    refs = list(_list(resource.get("endpoint")))
    for s in _list(resource.get("series")):
        if isinstance(s, Mapping):
            refs.extend(_list(s.get("endpoint")))
    out: list[str] = []
    for ref in refs:
        endpoint = _resolve_contained(ref, contained, "Endpoint")
        text = _str(endpoint.get("address")) if endpoint is not None else None
        if text is None and isinstance(ref, Mapping):
            text = _str(ref.get("reference"))
        if text is not None and text not in out:
            out.append(text)
    return tuple(out)


def _study_summary(
    study: Mapping[str, Any], contained: Mapping[str, Mapping[str, Any]], *also: Mapping[str, Any]
) -> ImagingSummary:
    series = [s for s in _list(study.get("series")) if isinstance(s, Mapping)]
    body_sites = _dedup_codes(c for s in series if (c := _coding(s.get("bodySite"))) is not None)
    series_count = _int(study.get("numberOfSeries"))
    if series_count is None and series:
        series_count = len(series)
    instance_count = _int(study.get("numberOfInstances"))
    if instance_count is None and series:
        counts = [
            n
            if (n := _int(s.get("numberOfInstances"))) is not None
            else len(_list(s.get("instance")))
            for s in series
        ]
        instance_count = sum(counts)
    return ImagingSummary(
        study_uid=study_uid(study),
        modalities=tuple(sorted({c.code.strip().upper() for c in _modality_codes(study)})),
        body_sites=tuple(body_sites),
        contrast=_contrast(study, *also),
        series_count=series_count,
        instance_count=instance_count,
        endpoints=_endpoints(study, contained),
    )


def _dicom_modalities(codes: Iterable[Code]) -> tuple[str, ...]:
    return tuple(sorted({c.code.strip().upper() for c in codes if c.system == DICOM_DCM_SYSTEM}))


def _imaging(
    rtype: str,
    resource: Mapping[str, Any],
    contained: Mapping[str, Mapping[str, Any]],
    codes: list[Code],
) -> ImagingSummary | None:
    if rtype == "ImagingStudy":
        return _study_summary(resource, contained)
    if rtype == "DiagnosticReport":
        uid, study = _report_study(resource, contained)
        if uid is None:
            return None
        if study is not None:
            return _study_summary(study, contained, resource)
        return ImagingSummary(
            study_uid=uid, modalities=_dicom_modalities(codes), contrast=_contrast(resource)
        )
    if rtype == "ServiceRequest":
        modalities = _dicom_modalities(codes)
        categories = _category_codes(resource)
        if not modalities and not categories & {"imaging", "ecg"}:
            return None
        sites = _dedup_codes(c for cc in _list(resource.get("bodySite")) for c in _codings(cc))
        return ImagingSummary(
            modalities=modalities, body_sites=tuple(sites), contrast=_contrast(resource)
        )
    return None


def _category_codes(resource: Mapping[str, Any]) -> set[Category]:
    found: set[Category] = set()
    for concept in _list(resource.get("category")):
        for c in _codings(concept):
            tables = (
                [_CATEGORY_CODES.get(c.system, {})]
                if c.system is not None
                else list(_CATEGORY_CODES.values())
            )
            for table in tables:
                if (cat := table.get(c.code)) is not None:
                    found.add(cat)
    return found


def _category(
    rtype: str, resource: Mapping[str, Any], codes: list[Code], imaging: ImagingSummary | None
) -> Category:
    found = _category_codes(resource)
    if any(c.system == LOINC_SYSTEM and c.code in _ECG_LOINC for c in codes):
        found.add("ecg")
    if imaging is not None:
        if imaging.modalities and set(imaging.modalities) <= {"ECG"}:
            found.add("ecg")
        elif rtype != "ServiceRequest" or imaging.modalities:
            found.add("imaging")
    if not found and resource.get("specimen"):
        found.add("lab")
    for cat in _PRECEDENCE:
        if cat in found:
            return cat
    return "other"


def _period_start(resource: Mapping[str, Any], prefix: str) -> datetime | None:
    for suffix in ("DateTime", "Instant"):
        if (dt := parse_fhir_datetime(resource.get(prefix + suffix))) is not None:
            return dt
    period = resource.get(prefix + "Period")
    if isinstance(period, Mapping):
        return parse_fhir_datetime(period.get("start"))
    timing = resource.get(prefix + "Timing")
    if isinstance(timing, Mapping):
        events = [e for e in map(parse_fhir_datetime, _list(timing.get("event"))) if e]
        return min(events, default=None)
    return None


def _performed_at(rtype: str, resource: Mapping[str, Any]) -> datetime | None:
    if rtype == "ImagingStudy":
        return parse_fhir_datetime(resource.get("started"))
    if rtype == "ServiceRequest":
        return _period_start(resource, "occurrence")
    return _period_start(resource, "effective")


def _specimen_collected_at(
    resource: Mapping[str, Any], contained: Mapping[str, Mapping[str, Any]]
) -> datetime | None:
    times: list[datetime] = []
    for ref in _list(resource.get("specimen")):
        specimen = _resolve_contained(ref, contained, "Specimen")
        collection = specimen.get("collection") if specimen is not None else None
        if (
            isinstance(collection, Mapping)
            and (dt := _period_start(collection, "collected")) is not None
        ):
            times.append(dt)
    return min(times, default=None)


def _number_text(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, Decimal | int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _quantity_text(q: Any) -> str | None:
    if not isinstance(q, Mapping):
        return None
    return _number_text(q.get("value"))


def _reference_range(resource: Mapping[str, Any]) -> str | None:
    ranges = [r for r in _list(resource.get("referenceRange")) if isinstance(r, Mapping)]
    if not ranges:
        return None
    first = ranges[0]
    if (text := _str(first.get("text"))) is not None:
        return text
    low, high = _quantity_text(first.get("low")), _quantity_text(first.get("high"))
    if low is not None and high is not None:
        text = f"{low}-{high}"
    elif low is not None:
        text = f">={low}"
    elif high is not None:
        text = f"<={high}"
    else:
        return None
    unit = next(
        (
            u
            for q in (first.get("low"), first.get("high"))
            if isinstance(q, Mapping) and (u := _str(q.get("unit")) or _str(q.get("code")))
        ),
        None,
    )
    return f"{text} {unit}" if unit else text


def _value(resource: Mapping[str, Any]) -> ResultValue | None:
    q = resource.get("valueQuantity")
    q = q if isinstance(q, Mapping) else {}
    concept = resource.get("valueCodeableConcept")
    coded = _codings(concept)
    text = _str(resource.get("valueString"))
    if text is None and isinstance(concept, Mapping):
        text = _str(concept.get("text")) or next((c.display for c in coded if c.display), None)
    interpretation = _dedup_codes(
        c for cc in _list(resource.get("interpretation")) for c in _codings(cc)
    )
    out = ResultValue(
        value=_number_text(q.get("value")),
        comparator=_str(q.get("comparator")),
        unit=_str(q.get("unit")),
        system=_str(q.get("system")),
        code=_str(q.get("code")),
        text=text,
        coded=tuple(coded),
        interpretation=tuple(interpretation),
        reference_range=_reference_range(resource),
    )
    return None if out == ResultValue() else out
