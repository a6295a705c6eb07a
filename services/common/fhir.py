"""FHIR R4 helpers the hub's services share: issues, OperationOutcome, institution identifiers.

The hub speaks FHIR R4 (validated with ``fhir.resources.R4B``; the default 8.x models are R5
and reject R4 data). An :class:`Issue` is what a check found; :func:`operation_outcome` turns
a list of them into the R4 ``OperationOutcome`` the gateway answers with.

Privacy: an issue's ``diagnostics`` and ``expression`` say what is wrong and where, never the
value. As a safety net, runs of six or more digits (身份证, phone and card numbers) are
masked in both when an ``Issue`` is built.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, Literal, get_args

from pydantic import ValidationError

from services.common.institutions import Institution

FHIR_JSON: Final = "application/fhir+json"

#: ``Identifier.system`` of institution ids (统一社会信用代码 or 医疗机构登记号) in the hub.
INSTITUTION_SYSTEM: Final = "https://fhir.mrhub.cn/sid/institution"
#: ``Identifier.system`` for an identifier that is a URI, e.g. ``urn:oid:…`` (an OID).
URI_SYSTEM: Final = "urn:ietf:rfc:3986"
#: ``Identifier.system`` of DICOM UIDs (Study Instance UID as ``urn:oid:<uid>``).
DICOM_UID_SYSTEM: Final = "urn:dicom:uid"
#: CodeSystem of :data:`REASONS`, carried in ``OperationOutcome.issue.details.coding``.
REASON_SYSTEM: Final = "https://fhir.mrhub.cn/CodeSystem/issue-reason"

Severity = Literal["fatal", "error", "warning", "information"]
IssueCode = Literal[
    "structure",
    "required",
    "value",
    "invalid",
    "business-rule",
    "not-supported",
    "not-found",
    "forbidden",
    "security",
    "too-costly",
    "exception",
    "transient",
    "processing",
    "informational",
    "login",
    "timeout",
]
SEVERITIES: Final = frozenset(get_args(Severity))
ISSUE_CODES: Final = frozenset(get_args(IssueCode))

#: Every machine reason an :class:`Issue` may carry (a Prometheus label: keep the set small).
REASONS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "malformed-json": "the body is not valid JSON (or not UTF-8, or has duplicate keys)",
        "not-a-resource": "the JSON value is not an object with a string resourceType",
        "type-mismatch": "resourceType differs from the type in the URL",
        "invalid-fhir": "the resource fails FHIR R4 structural validation",
        "unsupported-type": "a resourceType the hub does not accept here",
        "unsupported-bundle-type": "Bundle.type other than batch or transaction",
        "missing-field": "an element the hub requires is absent",
        "empty-identifier": "an Identifier with a system and no value",
        "id-card-checksum": "a 身份证 number fails GB 11643 checks",
        "id-card-mismatch": "birth date or sex in the 身份证 disagrees with the Patient",
        "invalid-dicom-uid": "a DICOM UID that is malformed or not in urn:oid: form",
        "no-patient": "a clinical resource does not identify its patient",
        "unresolved-reference": "a urn:uuid: or #contained reference resolves to nothing",
        "duplicate-full-url": "two bundle entries share a fullUrl",
        "missing-request": "a batch/transaction entry has no request",
        "foreign-institution": "the resource claims another institution as performer/assigner",
        "truncated": "more issues were found than are reported",
        "unauthenticated": "no bearer token, or one that resolves to no institution",
        "unsupported-media-type": "Content-Type is not application/fhir+json (or ndjson)",
        "too-large": "the body, or one NDJSON line, is over the configured limit",
        "too-deep": "JSON nested deeper than the configured limit",
        "timeout": "the request body did not arrive within the configured time",
        "client-closed": "the client closed the connection before the answer",
        "method-not-allowed": "the HTTP method is not supported on this path",
        "unknown-endpoint": "no such path, or a resource type the hub does not take",
        "kafka-unavailable": "Kafka did not acknowledge in time; nothing was published",
        "internal": "an unexpected error; nothing was published",
        "import-summary": "the summary line of an NDJSON import answer (not a refusal)",
        "invalid-parameter": "a request parameter is missing or has a value of the wrong form",
        "unusable-identifier": "an identifier that cannot name a patient (system, checksum)",
        "not-found": "no such master patient, review or record",
        "not-ready": "the worker is starting or its partitions are moving; try again",
    }
)

_DIGIT_RUN = re.compile(r"\d{6,}")
_WS = re.compile(r"\s+")
_ELEMENT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def redact(text: str) -> str:
    """``text`` with every run of six or more digits masked as ``***``."""
    return _DIGIT_RUN.sub("***", text)


@dataclass(frozen=True, slots=True)
class Issue:
    """One finding about posted data, as the gateway reports it.

    ``diagnostics`` is for humans (what and where, never the offending value);
    ``expression`` holds FHIRPath locations; ``reason`` is one of :data:`REASONS`.
    """

    severity: Severity
    code: IssueCode
    diagnostics: str
    expression: tuple[str, ...] = ()
    reason: str = "invalid-fhir"

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"unknown issue severity {self.severity!r}")
        if self.code not in ISSUE_CODES:
            raise ValueError(f"unknown issue code {self.code!r}")
        if self.reason not in REASONS:
            raise ValueError(f"unknown issue reason {self.reason!r}")
        object.__setattr__(self, "diagnostics", redact(self.diagnostics))
        object.__setattr__(self, "expression", tuple(redact(e) for e in self.expression))

    @property
    def is_error(self) -> bool:
        """True for ``fatal`` and ``error`` (a warning does not refuse the data)."""
        return self.severity in ("fatal", "error")


def has_errors(issues: Iterable[Issue]) -> bool:
    return any(i.is_error for i in issues)


#: How many issues an OperationOutcome lists unless told otherwise.
DEFAULT_MAX_ISSUES: Final = 100


def truncated_note(more: int) -> Issue:
    """The issue that stands for ``more`` issues left out of an answer."""
    return Issue(
        "information",
        "informational",
        f"{more} more issue{'s' if more != 1 else ''} not listed",
        reason="truncated",
    )


def cap_issues(issues: Sequence[Issue], limit: int = DEFAULT_MAX_ISSUES) -> list[Issue]:
    """The first ``limit`` of ``issues``, plus one ``truncated`` issue counting the rest.

    Errors come first when issues have to be left out (keeping their order), so that what
    is listed explains the refusal.
    """
    if len(issues) <= limit:
        return list(issues)
    ordered = [i for i in issues if i.is_error] + [i for i in issues if not i.is_error]
    return [*ordered[:limit], truncated_note(len(issues) - limit)]


def operation_outcome(
    issues: Sequence[Issue], *, limit: int | None = DEFAULT_MAX_ISSUES
) -> dict[str, Any]:
    """An R4 ``OperationOutcome`` (JSON dict) listing ``issues``.

    Each issue carries severity, code, diagnostics, expression (when known) and its reason as
    ``details.coding`` in :data:`REASON_SYSTEM`. With no issues, one ``information`` issue
    says so (an OperationOutcome needs at least one). At most ``limit`` issues are listed,
    then one ``truncated`` issue says how many more there were (``None``: no cap).
    """
    if limit is not None:
        issues = cap_issues(issues, limit)
    out: list[dict[str, Any]] = []
    for issue in issues:
        item: dict[str, Any] = {
            "severity": issue.severity,
            "code": issue.code,
            "details": {"coding": [{"system": REASON_SYSTEM, "code": issue.reason}]},
            "diagnostics": issue.diagnostics,
        }
        if issue.expression:
            item["expression"] = list(issue.expression)
        out.append(item)
    if not out:
        out.append({"severity": "information", "code": "informational", "diagnostics": "no issues"})
    return {"resourceType": "OperationOutcome", "issue": out}


def fhirpath(root: str, loc: Iterable[str | int]) -> str:
    """A FHIRPath from ``root`` and a location such as a pydantic error ``loc``.

    Integers become ``[i]``; strings that are not element names (pydantic's union and
    function tags) are dropped; ``resource_type`` is FHIR's ``resourceType``.
    """
    parts = [root]
    for seg in loc:
        if isinstance(seg, int):
            parts.append(f"[{seg}]")
        elif seg == "resource_type":
            parts.append(".resourceType")
        elif _ELEMENT_NAME.fullmatch(seg):
            parts.append("." + seg)
    return "".join(parts)


def validation_issues(
    exc: ValidationError, root: str, *, limit: int = 50, reason: str = "invalid-fhir"
) -> list[Issue]:
    """``structure`` issues for a pydantic ``ValidationError`` of a FHIR model rooted at ``root``.

    Messages never repeat the offending input; at most ``limit`` issues, then one
    ``truncated`` note.
    """
    errors = exc.errors(include_url=False, include_context=False)
    issues: list[Issue] = []
    for err in errors[:limit]:
        path = fhirpath(root, err["loc"])
        msg = _WS.sub(" ", str(err["msg"])).strip()
        value = err.get("input")
        if isinstance(value, str) and value and value in msg:
            msg = msg.replace(value, "***")
        issues.append(
            Issue("error", "structure", f"{path}: {msg}", expression=(path,), reason=reason)
        )
    if len(errors) > limit:
        issues.append(
            Issue(
                "information",
                "structure",
                f"{root}: {len(errors) - limit} more structural errors not listed",
                expression=(root,),
                reason="truncated",
            )
        )
    return issues


def _oid(value: str) -> str:
    value = value.strip()
    return value[len("urn:oid:") :] if value.lower().startswith("urn:oid:") else value


InstitutionClaim = Literal["own", "foreign", "none"]


def institution_claim(identifiers: Any, institution: Institution) -> InstitutionClaim:
    """Which institution an Organization's identifiers name, seen from ``institution``.

    An Organization is institution X if one of its identifiers has system
    :data:`INSTITUTION_SYSTEM` and value X's ``id``, or system :data:`URI_SYSTEM` and value
    ``urn:oid:<X's oid>``. An OID under the institution's own OID (a department) counts as its
    own. ``"foreign"`` wins when identifiers name both; ``"none"`` when they name no
    institution. ``identifiers`` is a JSON list of Identifier dicts (or one dict); anything
    malformed in it is ignored.
    """
    if isinstance(identifiers, dict):
        identifiers = [identifiers]
    if not isinstance(identifiers, list):
        return "none"
    own_id = institution.id.strip().upper()
    own_oid = _oid(institution.oid) if institution.oid else None
    claim: InstitutionClaim = "none"
    for ident in identifiers:
        if not isinstance(ident, dict):
            continue
        system, value = ident.get("system"), ident.get("value")
        if not isinstance(value, str) or not value.strip():
            continue
        if system == INSTITUTION_SYSTEM:
            if value.strip().upper() != own_id:
                return "foreign"
            claim = "own"
        elif system == URI_SYSTEM and value.strip().lower().startswith("urn:oid:"):
            oid = _oid(value)
            if own_oid is None or not (oid == own_oid or oid.startswith(own_oid + ".")):
                return "foreign"
            claim = "own"
    return claim


def institution_identifiers(institution: Institution) -> list[dict[str, str]]:
    """The identifiers by which the hub names ``institution`` (for Organization resources)."""
    idents = [{"system": INSTITUTION_SYSTEM, "value": institution.id}]
    if institution.oid:
        idents.append({"system": URI_SYSTEM, "value": "urn:oid:" + _oid(institution.oid)})
    return idents
