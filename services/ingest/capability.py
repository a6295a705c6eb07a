"""The gateway's CapabilityStatement: exactly what it supports, nothing more.

It takes creates (and batch / transaction bundles of them) for five clinical resource
types, plus an NDJSON ``$import``; it serves no reads or searches of what it took — those
belong to the downstream services.
"""

from __future__ import annotations

from typing import Any

from services.common.fhir import FHIR_JSON
from services.common.metrics import hub_version
from services.ingest.validation import CLINICAL_TYPES, CONTEXT_TYPES

IMPORT_OPERATION_URL = "https://fhir.mrhub.cn/OperationDefinition/import-ndjson"


def capability_statement(base_url: str | None, *, max_body_bytes: int) -> dict[str, Any]:
    """``base_url``: the configured public FHIR base (``implementation.url``); None: the
    statement names no URL (never one made from the request's Host header)."""
    resources = [
        {
            "type": rtype,
            "interaction": [{"code": "create"}],
            "versioning": "no-version",
            "conditionalCreate": False,
            "documentation": (
                "Create only; the resource is published as posted to "
                "mrhub.ingest.resource-accepted.v1. No read or search here."
            ),
        }
        for rtype in CLINICAL_TYPES
    ]
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
                        "as itself."
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
