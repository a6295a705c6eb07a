"""Business keys and record ids: what makes two posts "the same result or order".

Shared by the gateway (which answers a create with ``Location: <base>/fhir/<Type>/<record
id>`` and rewrites a bundle's ``urn:uuid:`` references to ``<Type>/<record id>``) and the
patient index (which publishes the record under that id on ``result-indexed`` /
``order-placed``): both compute the id from the same resource with the functions here, so
the id a hospital is told is the id the record has. Pure functions, no I/O.

**Business key** (never published; it may hold a report number in clear):

- ``ImagingStudy``: ``<institution>|study|<Study Instance UID>``;
- a ``DiagnosticReport`` tied to a study — an ``imagingStudy`` reference to a contained
  ImagingStudy, to a bundle entry that is one (``resolve``, the gateway), or carrying a
  ``urn:dicom:uid`` identifier; else a ``urn:dicom:uid`` identifier of its own:
  ``<institution>|study|<uid>|DiagnosticReport``;
- otherwise ``<institution>|<type>|<system>|<value>`` of the report / order number
  (检验报告单号 for Observation and DiagnosticReport, 电子申请单编号 for ServiceRequest), else
  of the first identifier with a system and a value that is not a 身份证; an Observation keyed by a
  report or order number gets its first ``code.coding`` appended (``|<system>|<code>``);
- else ``<institution>|<type>|id|<logical id>``;
- else the **content key** ``<institution>|<type>|content|<digest>``: SHA-256 of what makes
  two posts of an unidentified resource the same result (see :func:`content_digest`).

``record_id`` is the SHA-256 of the business key (32 hex): stable, and with no identifier in
clear, so it may be a Kafka key, a table key or a URL segment.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import Any, Final

from services.common.fhir import DICOM_UID_SYSTEM
from services.common.identifiers import ID_CARD_SYSTEM, LAB_REPORT_NO_SYSTEM, ORDER_NO_SYSTEM

__all__ = [
    "CHINA_TZ",
    "RECORD_TYPES",
    "Resolver",
    "business_identifier",
    "business_key",
    "content_digest",
    "parse_fhir_datetime",
    "record_id_for",
    "report_study_uid",
    "study_uid",
]

#: The resource types that become records (results and orders) with a readable id.
RECORD_TYPES: Final = ("Observation", "DiagnosticReport", "ImagingStudy", "ServiceRequest")

#: China Standard Time: partial FHIR dates and offset-less times are read in it.
CHINA_TZ: Final = timezone(timedelta(hours=8), "UTC+08:00")

#: A bundle-internal reference (``urn:uuid:…``, a ``fullUrl``) → the entry's resource.
Resolver = Callable[[str], Mapping[str, Any] | None]

_DATETIME = re.compile(
    r"(\d{4})(?:-(\d{2})(?:-(\d{2})"
    r"(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?(Z|[+-]\d{2}:\d{2})?)?)?)?"
)


def record_id_for(business_key: str) -> str:
    """The public id of a business key: SHA-256, 32 hex characters."""
    return hashlib.sha256(f"mrhub-record-v1|{business_key}".encode()).hexdigest()[:32]


def parse_fhir_datetime(value: Any) -> datetime | None:
    """A FHIR ``date`` / ``dateTime`` / ``instant`` as an aware datetime, else ``None``.

    ``YYYY``, ``YYYY-MM`` and ``YYYY-MM-DD`` are the start of that period in UTC+8; a time
    without an offset is UTC+8 too; fractional seconds beyond microseconds are cut.
    """
    if not isinstance(value, str):
        return None
    m = _DATETIME.fullmatch(value.strip())
    if m is None:
        return None
    year, month, day, hour, minute, second, frac, tz = m.groups()
    if tz is None:
        tzinfo: timezone = CHINA_TZ
    elif tz == "Z":
        tzinfo = UTC
    else:
        sign = -1 if tz[0] == "-" else 1
        hours, minutes = int(tz[1:3]), int(tz[4:6])
        if hours > 23 or minutes > 59:
            return None
        tzinfo = timezone(sign * timedelta(hours=hours, minutes=minutes))
    try:
        return datetime(
            int(year),
            int(month or 1),
            int(day or 1),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            int((frac or "0")[:6].ljust(6, "0")),
            tzinfo=tzinfo,
        )
    except ValueError:
        return None


# --- small readers ------------------------------------------------------------------------


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _list(value: Any) -> list[Any]:
    if isinstance(value, list):
        return value
    return [] if value is None else [value]


def identifiers(resource: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(system, value)`` of each identifier with both (values stripped), in order."""
    pairs: list[tuple[str, str]] = []
    for ident in _list(resource.get("identifier")):
        if isinstance(ident, Mapping):
            system, value = _str(ident.get("system")), _str(ident.get("value"))
            if system is not None and value is not None and value.strip():
                pairs.append((system, value.strip()))
    return pairs


def _uid(value: str) -> str:
    value = value.strip()
    return value[len("urn:oid:") :] if value.startswith("urn:oid:") else value


def study_uid(resource: Mapping[str, Any]) -> str | None:
    """The Study Instance UID among ``resource.identifier`` (bare, no ``urn:oid:``)."""
    for system, value in identifiers(resource):
        if system == DICOM_UID_SYSTEM:
            return _uid(value)
    return None


def _contained(resource: Mapping[str, Any], ref: Any, rtype: str) -> Mapping[str, Any] | None:
    if not isinstance(ref, Mapping):
        return None
    target = ref.get("reference")
    if not isinstance(target, str) or not target.startswith("#"):
        return None
    for c in _list(resource.get("contained")):
        if isinstance(c, Mapping) and c.get("id") == target[1:] and c.get("resourceType") == rtype:
            return c
    return None


def report_study_uid(resource: Mapping[str, Any], resolve: Resolver | None = None) -> str | None:
    """The Study Instance UID a DiagnosticReport reports on: for each ``imagingStudy``
    reference, the contained study's, the bundle entry's (``resolve``), or the reference's
    own ``urn:dicom:uid`` identifier; else the report's own ``urn:dicom:uid`` identifier."""
    for ref in _list(resource.get("imagingStudy")):
        study = _contained(resource, ref, "ImagingStudy")
        if study is None and resolve is not None and isinstance(ref, Mapping):
            target = ref.get("reference")
            found = resolve(target) if isinstance(target, str) else None
            if found is not None and found.get("resourceType") == "ImagingStudy":
                study = found
        if study is not None and (uid := study_uid(study)) is not None:
            return uid
        if isinstance(ref, Mapping) and (uid := study_uid({"identifier": ref.get("identifier")})):
            return uid
    return study_uid(resource)


def _coding_pairs(concept: Any) -> list[tuple[str, str]]:
    if not isinstance(concept, Mapping):
        return []
    out = []
    for c in _list(concept.get("coding")):
        if isinstance(c, Mapping) and (code := _str(c.get("code"))) is not None:
            out.append((_str(c.get("system")) or "", code.strip()))
    return out


def _first_code(resource: Mapping[str, Any]) -> tuple[str, str] | None:
    return next(iter(_coding_pairs(resource.get("code"))), None)


def _number(value: Any) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        if isinstance(value, float):
            value = Decimal(repr(value))
        d = Decimal(value) if isinstance(value, int | Decimal) else Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        return str(value)
    if not d.is_finite():
        return str(d)
    d = d.normalize()
    return format(d, "f")


def _instant(value: Any) -> str | None:
    dt = parse_fhir_datetime(value)
    return dt.astimezone(UTC).isoformat() if dt is not None else None


def _time(resource: Mapping[str, Any], prefix: str) -> str | None:
    for suffix in ("DateTime", "Instant"):
        if (t := _instant(resource.get(prefix + suffix))) is not None:
            return t
    period = resource.get(prefix + "Period")
    if isinstance(period, Mapping):
        return _instant(period.get("start"))
    return None


def _plain(value: Any) -> Any:
    """JSON-ready, numbers normalised (``6.30`` and ``6.3`` agree), keys sorted on dump."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float | Decimal):
        return {"#": _number(value)}
    return str(value)


def _patient(patient_identifiers: Iterable[Any], resource: Mapping[str, Any]) -> list[Any]:
    pairs = {
        (_str(i.get("system")) or "", v.strip())
        for i in patient_identifiers
        if isinstance(i, Mapping) and (v := _str(i.get("value"))) is not None and v.strip()
    }
    # a 身份证 names the person whatever else the post adds (a hospital number, a Patient
    # entry with more identifiers): with one, it alone is the patient
    cards = {(s, v.upper()) for s, v in pairs if s == ID_CARD_SYSTEM}
    if cards:
        pairs = cards
    if pairs:
        return [list(p) for p in sorted(pairs)]
    subject = resource.get("subject")
    ref = _str(subject.get("reference")) if isinstance(subject, Mapping) else None
    return [["reference", ref]] if ref else []


def content_digest(
    rtype: str, resource: Mapping[str, Any], patient_identifiers: Iterable[Any]
) -> str:
    """What makes two posts of a resource without a business identifier the same result or
    order (SHA-256, 32 hex), from:

    - the patient: its 身份证 when the post names one (``subject.identifier`` or on the
      bundle's Patient), else the sorted ``system|value`` pairs of the identifiers the post
      names, else ``subject.reference``;
    - the sorted codes (``code``; an ImagingStudy's ``procedureCode`` and modalities);
    - the clinical time as an instant: ``effective[x]``, else ``issued``; an order's
      ``occurrence[x]``, else ``authoredOn``; a study's ``started``;
    - the finding: an Observation's ``value[x]``, ``dataAbsentReason`` and component values
      (numbers by value: ``6.30`` = ``6.3``); a report's ``conclusion`` and
      ``conclusionCode``; an order's ``intent``.

    Left out on purpose: ``status`` (a ``final`` after a ``preliminary``, or an
    ``entered-in-error``, is the *same* record, updated or withdrawn), ``issued`` when there
    is an effective time (a re-issue of the same finding), ``id``, ``meta``, narrative,
    references and notes."""
    if rtype == "ImagingStudy":
        codes = [p for cc in _list(resource.get("procedureCode")) for p in _coding_pairs(cc)]
        for m in [
            resource.get("modality"),
            *(s.get("modality") for s in _list(resource.get("series")) if isinstance(s, Mapping)),
        ]:
            for c in _list(m):
                if isinstance(c, Mapping) and (code := _str(c.get("code"))):
                    codes.append((_str(c.get("system")) or "", code.strip()))
        when = _instant(resource.get("started"))
    elif rtype == "ServiceRequest":
        codes = _coding_pairs(resource.get("code"))
        when = _time(resource, "occurrence") or _instant(resource.get("authoredOn"))
    else:
        codes = _coding_pairs(resource.get("code"))
        when = _time(resource, "effective") or _instant(resource.get("issued"))
    finding: dict[str, Any] = {}
    if rtype == "Observation":
        finding = {
            k: v for k, v in resource.items() if k.startswith("value") or k == "dataAbsentReason"
        }
        comps = []
        for comp in _list(resource.get("component")):
            if isinstance(comp, Mapping):
                comps.append(
                    {
                        "code": sorted(_coding_pairs(comp.get("code"))),
                        **{k: v for k, v in comp.items() if k.startswith("value")},
                    }
                )
        if comps:
            finding["component"] = comps
    elif rtype == "DiagnosticReport":
        finding = {
            "conclusion": (_str(resource.get("conclusion")) or "").strip(),
            "conclusionCode": sorted(
                p for cc in _list(resource.get("conclusionCode")) for p in _coding_pairs(cc)
            ),
        }
    elif rtype == "ServiceRequest":
        finding = {"intent": resource.get("intent")}
    doc = {
        "patient": _patient(patient_identifiers, resource),
        "codes": sorted(set(codes)),
        "time": when,
        "finding": _plain(finding),
    }
    text = json.dumps(doc, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def business_key(
    rtype: str,
    resource: Mapping[str, Any],
    institution: str,
    patient_identifiers: Iterable[Any] = (),
    *,
    resolve: Resolver | None = None,
) -> str:
    """The business key of a result or order (rules in the module doc). ``resolve`` finds a
    bundle entry by a reference (the gateway; the patient index sees the references already
    rewritten, with the study's UID on them)."""
    if rtype == "ImagingStudy" and (uid := study_uid(resource)) is not None:
        return f"{institution}|study|{uid}"
    if rtype == "DiagnosticReport" and (uid := report_study_uid(resource, resolve)) is not None:
        return f"{institution}|study|{uid}|DiagnosticReport"
    preferred = ORDER_NO_SYSTEM if rtype == "ServiceRequest" else LAB_REPORT_NO_SYSTEM
    pairs = [p for p in identifiers(resource) if p[0] != ID_CARD_SYSTEM]
    pair = next((p for p in pairs if p[0] == preferred), pairs[0] if pairs else None)
    if pair is not None:
        key = f"{institution}|{rtype}|{pair[0]}|{pair[1]}"
        if rtype == "Observation" and pair[0] in (LAB_REPORT_NO_SYSTEM, ORDER_NO_SYSTEM):
            first = _first_code(resource)
            if first is not None:
                key += f"|{first[0]}|{first[1]}"
        return key
    if (rid := _str(resource.get("id"))) is not None:
        return f"{institution}|{rtype}|id|{rid}"
    return f"{institution}|{rtype}|content|{content_digest(rtype, resource, patient_identifiers)}"


def business_identifier(rtype: str, resource: Mapping[str, Any]) -> dict[str, str] | None:
    """The identifier a Reference to this resource carries once the gateway resolves a
    bundle-internal reference: an ImagingStudy's Study Instance UID (``urn:dicom:uid``,
    ``urn:oid:<uid>``), else the report / order number or first non-身份证 identifier the
    business key uses; ``None`` when there is none."""
    if rtype == "ImagingStudy" and (uid := study_uid(resource)) is not None:
        return {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{uid}"}
    preferred = ORDER_NO_SYSTEM if rtype == "ServiceRequest" else LAB_REPORT_NO_SYSTEM
    pairs = [p for p in identifiers(resource) if p[0] != ID_CARD_SYSTEM]
    pair = next((p for p in pairs if p[0] == preferred), pairs[0] if pairs else None)
    return {"system": pair[0], "value": pair[1]} if pair is not None else None
