"""The gateway's CapabilityStatement: exactly what it supports, nothing more.

It takes creates (and batch / transaction bundles of them) for five clinical resource
types, plus an NDJSON ``$import``; and it serves reads and searches of results, orders and
decisions (``Observation``, ``DiagnosticReport``, ``ImagingStudy``, ``ServiceRequest``,
``DetectedIssue``) — answered by the recognition service behind it
(services/ingest/proxy.py) — by ``GET [type]``, ``POST [type]/_search`` and ``GET
[type]/[id]``. A Patient is created here but never read back.
"""

from __future__ import annotations

from typing import Any

from services.common.fhir import FHIR_JSON
from services.common.metrics import hub_version
from services.ingest.proxy import READ_TYPES
from services.ingest.validation import CLINICAL_TYPES, CONTEXT_TYPES

IMPORT_OPERATION_URL = "https://fhir.mrhub.cn/OperationDefinition/import-ndjson"

_SP = "http://hl7.org/fhir/SearchParameter/"

#: Search parameters common to every read type.
_COMMON_PARAMS: list[dict[str, str]] = [
    {
        "name": "patient",
        "definition": f"{_SP}clinical-patient",
        "type": "reference",
        "documentation": "Any identifier the hub knows for the patient, as "
        "`<system>|<value>` (a 身份证: prefer POST _search, so it is not in a URL), or "
        "`Patient/<master id>`; resolved through the patient index.",
    },
    {
        "name": "_lastUpdated",
        "definition": f"{_SP}Resource-lastUpdated",
        "type": "date",
        "documentation": "When the hub last indexed the record (prefixes ge, le, gt, lt, eq).",
    },
    {
        "name": "_id",
        "definition": f"{_SP}Resource-id",
        "type": "token",
        "documentation": "The hub's id of the record (as in a Location).",
    },
    {
        "name": "_total",
        "type": "token",
        "documentation": "Accepted; `total` is always exact.",
    },
]
_CODE = {
    "name": "code",
    "definition": f"{_SP}clinical-code",
    "type": "token",
    "documentation": "`<system>|<code>` or `<code>`.",
}
_DATE = {
    "name": "date",
    "definition": f"{_SP}clinical-date",
    "type": "date",
    "documentation": "The clinical time (effective, started, occurrence), with prefixes.",
}
_CATEGORY = {
    "name": "category",
    "type": "token",
    "documentation": "The hub's category (lab, imaging, ecg, pathology, other) or a "
    "category code as posted.",
}

#: Each read type's own search parameters (besides the common ones).
_TYPE_PARAMS: dict[str, list[dict[str, str]]] = {
    "Observation": [_CODE, _DATE, _CATEGORY],
    "DiagnosticReport": [_CODE, _DATE, _CATEGORY],
    "ImagingStudy": [_CODE, _DATE, _CATEGORY],
    "ServiceRequest": [
        _CODE,
        _DATE,
        _CATEGORY,
        {
            "name": "authored",
            "definition": f"{_SP}ServiceRequest-authored",
            "type": "date",
            "documentation": "When the order was signed (authoredOn), with prefixes.",
        },
    ],
    "DetectedIssue": [
        {
            "name": "implicated",
            "definition": f"{_SP}DetectedIssue-implicated",
            "type": "reference",
            "documentation": "The order the decision is about: `ServiceRequest/<record id>`.",
        },
        _CODE,
        _DATE,
        {
            "name": "identified",
            "definition": f"{_SP}DetectedIssue-identified",
            "type": "date",
            "documentation": "When the decision was made, with prefixes.",
        },
    ],
}

_SEARCH_DOC = (
    "Read and search, answered by the hub's recognition service: GET [type]?…, or POST "
    "[type]/_search with the parameters in an application/x-www-form-urlencoded body (so "
    "no 身份证 needs to be in a URL). Results paged with _count and `next` links, `total` "
    "given, _summary=count for the count alone. Only what the caller's institution may "
    "read (the check's recognition scope); every read is audited. Resources as the "
    "hospital posted them, meta.source and tags naming the institution and HR scope."
)


def _search_part(rtype: str) -> dict[str, object]:
    params: list[dict[str, str]] = [
        *_COMMON_PARAMS,
        *_TYPE_PARAMS.get(rtype, []),
        {
            "name": "_count",
            "type": "number",
            "documentation": "Page size (the hub caps it); `next` links page on.",
        },
        {
            "name": "_summary",
            "type": "token",
            "documentation": "`count`: the total alone, no entries.",
        },
    ]
    part: dict[str, object] = {"searchParam": params}
    if rtype == "DiagnosticReport":
        part["searchInclude"] = ["DiagnosticReport:result"]
        params.append(
            {
                "name": "_include",
                "type": "special",
                "documentation": "`DiagnosticReport:result`: the report's Observations too.",
            }
        )
    return part


def capability_statement(base_url: str | None, *, max_body_bytes: int) -> dict[str, Any]:
    """``base_url``: the configured public FHIR base (``implementation.url``); None: the
    statement names no URL (never one made from the request's Host header)."""
    resources = [
        {
            "type": rtype,
            "interaction": [
                {"code": "create"},
                *([{"code": "read"}, {"code": "search-type"}] if rtype in READ_TYPES else []),
            ],
            "versioning": "no-version",
            "conditionalCreate": False,
            "documentation": (
                "Created resources are published as posted to "
                "mrhub.ingest.resource-accepted.v1; "
                + (
                    "Location is <base>/fhir/"
                    + rtype
                    + "/<record id>, readable here. "
                    + _SEARCH_DOC
                    if rtype in READ_TYPES
                    else "create only: no read or search here."
                )
            ),
            **(_search_part(rtype) if rtype in READ_TYPES else {}),
        }
        for rtype in CLINICAL_TYPES
    ]
    resources.extend(
        {
            "type": rtype,
            "interaction": [{"code": "read"}, {"code": "search-type"}],
            "versioning": "no-version",
            "documentation": (
                "The hub's recognition decision for an order (one per ServiceRequest; a "
                "superseded decision is marked so). Read only. " + _SEARCH_DOC
            ),
            **_search_part(rtype),
        }
        for rtype in READ_TYPES
        if rtype not in CLINICAL_TYPES
    )
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-22",
        "publisher": "mrhub",
        "kind": "instance",
        "software": {"name": "mrhub ingest gateway", "version": hub_version()},
        "implementation": {
            "description": "mrhub FHIR ingest gateway (检查检验结果互认 data hub)",
            **({"url": base_url} if base_url else {}),
        },
        "fhirVersion": "4.0.1",
        "format": [FHIR_JSON, "application/json"],
        "rest": [
            {
                "mode": "server",
                "documentation": (
                    f"Bodies up to {max_body_bytes} bytes. Bundles of type batch or "
                    "transaction; transactions are all-or-nothing. Context resources "
                    f"({', '.join(CONTEXT_TYPES)}) are accepted inside bundles only."
                ),
                "security": {
                    "cors": False,
                    "description": (
                        "Authorization: Bearer <token>, one token per institution, issued "
                        "with `mrhub institutions issue-token`. An institution posts only "
                        "as itself, and reads only within its recognition scope. CDS Hooks "
                        "clients (GET /cds-services, POST /cds-services/{id}) may instead "
                        "send the signed JWT the CDS Hooks specification describes."
                    ),
                },
                "resource": resources,
                "interaction": [{"code": "batch"}, {"code": "transaction"}],
                "operation": [
                    {
                        "name": "import",
                        "definition": IMPORT_OPERATION_URL,
                        "documentation": (
                            "POST /fhir/$import with application/fhir+ndjson: one resource "
                            "a line, streamed; the answer lists every refused line."
                        ),
                    }
                ],
            }
        ],
    }
