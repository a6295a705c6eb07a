"""What a synchronous check answers, what the reader may see of it, and how its inputs are
read (pure).

``/recognition/check`` decides exactly as the worker does for an order (same
:func:`~services.recognition.decision.decide`), then renders the decision for the calling
institution. Earlier results it may not read (another institution's, outside its recognition
scope — :func:`services.common.institutions.may_read`) are left out of ``matches``; the
outcome and reason stay, so the doctor learns *why* nothing can be recognised without
learning where the patient was seen. A caller that may read none of the patient's results is
*out of scope*: it gets no master patient id, no link grade and a detail that names nobody,
in an answer of the same shape as for a patient the hub does not know.

The inputs (query parameters, a JSON or form body) are range-checked here: bounded lengths,
strings only, JSON nested at most :data:`MAX_JSON_DEPTH` deep (checked on the bytes before
any parser recurses), so a bad request is a 4xx, never a 500.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final
from urllib.parse import parse_qsl

import simplejson

from services.common import jsonbody
from services.common.institutions import Institution, may_read
from services.recognition.decision import REASONS, Decision, InstitutionDirectory, PriorMatch

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_PARAM_CHARS",
    "MAX_SHOWN",
    "BadInput",
    "image_links",
    "nesting_exceeds",
    "observation_value",
    "parse_body",
    "parse_coded",
    "render_check",
    "shown_matches",
    "text_param",
]

#: Largest body of a check or a feedback. Their members are short (a feedback's note is at
#: most 500 characters); the margin lets a deeply nested body be refused for what it is.
MAX_BODY_BYTES: Final = 256 * 1024
#: Deepest nesting of arrays and objects in a JSON body (the bodies taken are flat objects).
MAX_JSON_DEPTH: Final = 8
#: Longest ``patient`` or ``code`` (an identifier system URI and its value).
MAX_PARAM_CHARS: Final = 256
#: Matches listed in an answer, the best first (``matches_total`` counts what the caller may
#: see).
MAX_SHOWN: Final = 20
#: Form fields read at most (a check has two).
_MAX_FORM_FIELDS: Final = 16
JSON_TYPES: Final = frozenset({"application/json", "application/fhir+json"})
FORM_TYPE: Final = "application/x-www-form-urlencoded"


@dataclass(frozen=True)
class BadInput(Exception):
    """A request the check or the feedback refuses: its HTTP status and what is wrong."""

    status: int
    message: str
    expression: str = ""


def nesting_exceeds(raw: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether the JSON text ``raw`` nests arrays / objects deeper than ``limit`` (brackets
    inside strings do not count). Linear, no recursion: run it before a parser that recurses."""
    depth = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            if depth > limit:
                return True
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return False


def parse_body(content_type: str, raw: bytes) -> dict[str, Any]:
    """A JSON object or a form (``application/x-www-form-urlencoded``) as a dict; raises
    :class:`BadInput` for anything else (400, 413, 415)."""
    if len(raw) > MAX_BODY_BYTES:
        raise BadInput(413, f"the body is larger than {MAX_BODY_BYTES} bytes", "$body")
    if content_type == FORM_TYPE:
        try:
            text = raw.decode("utf-8")
            pairs = parse_qsl(
                text, keep_blank_values=True, strict_parsing=False, max_num_fields=_MAX_FORM_FIELDS
            )
        except (UnicodeDecodeError, ValueError):
            raise BadInput(
                400, "the form is not valid UTF-8 or has too many fields", "$body"
            ) from None
        form: dict[str, Any] = {}
        for name, value in pairs:
            if name in form:
                raise BadInput(400, f"{name[:40]!r} is given more than once", name[:40])
            form[name] = value
        return form
    if content_type not in JSON_TYPES and content_type:
        raise BadInput(
            415, f"send application/json or {FORM_TYPE}, not {content_type[:60]!r}", "$body"
        )
    if not raw:
        raise BadInput(400, "the body is empty; send a JSON object", "$body")
    if nesting_exceeds(raw):
        raise BadInput(400, f"the JSON nests deeper than {MAX_JSON_DEPTH} levels", "$body")
    try:
        doc = simplejson.loads(raw)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise BadInput(400, "the body is not JSON", "$body") from None
    if not isinstance(doc, dict):
        raise BadInput(400, "the body must be a JSON object", "$body")
    if not jsonbody.is_text(doc):
        raise BadInput(400, "the body holds an escape that is not Unicode text", "$body")
    return doc


def text_param(value: Any, name: str, *, required: bool = True) -> str:
    """A string parameter of at most :data:`MAX_PARAM_CHARS` characters without control
    characters, stripped; raises :class:`BadInput` (400) otherwise. Missing → ``""`` unless
    ``required``."""
    if value is None:
        if required:
            raise BadInput(400, f"{name} is required", name)
        return ""
    if not isinstance(value, str):
        raise BadInput(400, f"{name} must be a string", name)
    if len(value) > MAX_PARAM_CHARS:
        raise BadInput(400, f"{name} is longer than {MAX_PARAM_CHARS} characters", name)
    if any(ord(c) < 0x20 or ord(c) == 0x7F or 0xD800 <= ord(c) <= 0xDFFF for c in value):
        raise BadInput(400, f"{name} holds control characters or lone surrogates", name)
    text: str = value.strip()
    if required and not text:
        raise BadInput(400, f"{name} is required", name)
    return text


def parse_coded(value: str) -> tuple[str | None, str] | None:
    """``<system>|<code>`` (or a bare code) → (system, code); ``None`` when empty."""
    system, bar, code = value.strip().partition("|")
    if not bar:
        system, code = "", system
    code = code.strip()
    if not code:
        return None
    return (system.strip() or None), code


def image_links(match: PriorMatch) -> list[str]:
    """WADO-RS study URLs of an imaging result: ``<endpoint>/studies/<Study Instance UID>``
    (the endpoint alone when the UID is unknown)."""
    links = []
    for endpoint in match.image_endpoints:
        base = endpoint.rstrip("/")
        links.append(f"{base}/studies/{match.study_uid}" if match.study_uid else base)
    return links


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _quantity(q: Any) -> str | None:
    if not isinstance(q, dict) or q.get("value") is None:
        return None
    unit = q.get("unit") or q.get("code")
    return f"{_number(q['value'])} {unit}" if unit else _number(q["value"])


def reference_range_text(resource: Mapping[str, Any]) -> str | None:
    """The first ``referenceRange`` as text: its ``text``, else ``low-high unit``."""
    ranges = resource.get("referenceRange")
    if not isinstance(ranges, list) or not ranges or not isinstance(ranges[0], dict):
        return None
    first = ranges[0]
    if isinstance(first.get("text"), str) and first["text"]:
        return str(first["text"])
    low, high = first.get("low"), first.get("high")
    low_v = _number(low["value"]) if isinstance(low, dict) and "value" in low else None
    high_v = _number(high["value"]) if isinstance(high, dict) and "value" in high else None
    unit = next((q.get("unit") for q in (low, high) if isinstance(q, dict) and q.get("unit")), None)
    if low_v is None and high_v is None:
        return None
    span = (
        f"{low_v or ''}-{high_v or ''}"
        if low_v and high_v
        else (f"≥{low_v}" if low_v else f"≤{high_v}")
    )
    return f"{span} {unit}" if unit else span


def observation_value(resource: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """An Observation's value as the check answer shows it (contract 4): ``value``, ``unit``,
    ``reference_range``, ``interpretation`` (its first code) and a ``text`` for people."""
    if not resource or resource.get("resourceType") != "Observation":
        return None
    quantity = resource.get("valueQuantity")
    value: str | None = None
    unit: str | None = None
    if isinstance(quantity, dict) and quantity.get("value") is not None:
        value = _number(quantity["value"])
        unit = quantity.get("unit") or quantity.get("code")
    elif isinstance(resource.get("valueString"), str):
        value = resource["valueString"]
    elif isinstance(resource.get("valueCodeableConcept"), dict):
        concept = resource["valueCodeableConcept"]
        codings = concept.get("coding") or [{}]
        value = concept.get("text") or codings[0].get("display") or codings[0].get("code")
    elif resource.get("valueBoolean") is not None:
        value = "阳性" if resource["valueBoolean"] else "阴性"
    if value is None:
        return None
    ranges = reference_range_text(resource)
    interpretation = None
    interp = resource.get("interpretation")
    if isinstance(interp, list) and interp and isinstance(interp[0], dict):
        codings = interp[0].get("coding") or []
        if codings and isinstance(codings[0], dict):
            interpretation = codings[0].get("code")
    text = f"{value} {unit}" if unit else value
    if ranges:
        text += f"（参考范围 {ranges}）"
    return {
        "value": value,
        "unit": unit,
        "reference_range": ranges,
        "interpretation": interpretation,
        "text": text,
    }


def study_images(match: PriorMatch, performer: Institution | None) -> list[str]:
    """WADO-RS study URLs: from the study's endpoints, else the performing institution's
    registry ``dicomweb_base``."""
    links = image_links(match)
    if not links and match.study_uid and performer is not None and performer.dicomweb_base:
        links = [f"{performer.dicomweb_base.rstrip('/')}/studies/{match.study_uid}"]
    return links


def viewer_url(match: PriorMatch, performer: Institution | None) -> str | None:
    """The performing institution's viewer for the study, where the registry has one."""
    if match.study_uid and performer is not None and performer.viewer_template:
        return performer.viewer_template.replace("{study_uid}", match.study_uid)
    return None


def shown_matches(
    decision: Decision, reader: Institution, institutions: InstitutionDirectory, at: datetime
) -> list[PriorMatch]:
    """The matches ``reader`` may see (its own, and those within its read scope)."""
    category = decision.item_category or "other"
    out = []
    for m in decision.matches:
        performer = institutions.get(m.institution)
        if performer is not None and may_read(reader, performer, category=category, on=at.date()):
            out.append(m)
    return out


def render_check(
    decision: Decision,
    reader: Institution,
    institutions: InstitutionDirectory,
    at: datetime,
    *,
    link_grade: str | None = None,
    base: str | None = None,
    resources: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The JSON answer of a check (docs/recognition.md, "The check").

    Every answer has the same members. A reader *in scope* — one that may read at least one
    of the patient's results of the item — also gets the master patient id, the link grade
    and the decision's own detail when the result it speaks of is one the reader may see;
    anyone else gets ``null`` there and a detail naming nobody (the reason code's meaning),
    exactly as for a patient the hub does not know.

    Each row (contract 4) points at the hub's copy: ``report.reference``
    ``<ResourceType>/<record id>`` and ``report.url`` on ``<base>/fhir`` (``base``, the hub's
    public base), with ``value`` and ``conclusion`` from the posted resource (``resources``:
    record id → resource), ``images`` and ``viewer``.
    """
    imaging = decision.item_category == "imaging"
    shown = shown_matches(decision, reader, institutions, at)
    in_scope = bool(shown)
    best = decision.best
    own_detail = best is None or best.record_id in {m.record_id for m in shown}
    matches = []
    for m in shown[:MAX_SHOWN]:
        performer = institutions.get(m.institution)
        resource = (resources or {}).get(m.record_id)
        reference = f"{m.resource_type}/{m.record_id}"
        conclusion = resource.get("conclusion") if resource else None
        row: dict[str, Any] = {
            "institution": m.institution,
            "institution_name": m.institution_name,
            "performed_at": m.performed_at.isoformat() if m.performed_at else None,
            "valid_until": m.valid_until.isoformat() if m.valid_until else None,
            "recognisable": m.recognisable,
            "reason": m.reason,
            "hr_scope": m.hr_scope,
            "report": {
                "reference": reference,
                "url": f"{base.rstrip('/')}/fhir/{reference}" if base else None,
                "record_id": m.record_id,
                "posted_as": m.report_ref,
            },
            "value": observation_value(resource),
            "conclusion": conclusion if isinstance(conclusion, str) else None,
            "images": study_images(m, performer) if imaging else [],
            "viewer": viewer_url(m, performer) if imaging else None,
        }
        matches.append(row)
    return {
        "decision": decision.outcome,
        "reason": decision.reason,
        "detail": decision.detail if own_detail else REASONS[decision.reason],
        "master_patient_id": decision.master_patient_id if in_scope else None,
        "item": (
            {"id": decision.item_id, "name": decision.item_name, "category": decision.item_category}
            if decision.item_id
            else None
        ),
        "matches": matches,
        "matches_total": len(shown),
        "saving_yuan": decision.estimated_saving_yuan,
        "price_yuan": decision.price_yuan,
        "catalog": decision.catalog,
        "catalog_version": decision.catalog_version,
        "decided_at": decision.decided_at.isoformat(),
        "link_grade": link_grade if in_scope else None,
    }
