"""FHIR R4 resources as a hospital would post them, for tests across the suite."""

from __future__ import annotations

import uuid
from typing import Any

from services.common.fhir import INSTITUTION_SYSTEM
from services.common.identifiers import (
    ID_CARD_SYSTEM,
    LAB_REPORT_NO_SYSTEM,
    ORDER_NO_SYSTEM,
    OUTPATIENT_NO_SYSTEM,
)

_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def gb11643(body17: str) -> str:
    """An 18-character 身份证 number: ``body17`` and its ISO 7064 MOD 11-2 check character
    (written here independently of the code under test)."""
    total = sum(int(c) * w for c, w in zip(body17, _WEIGHTS, strict=True))
    return body17 + "10X98765432"[total % 11]


ID_CARD = gb11643("11010519850317123")  # 北京朝阳区, born 1985-03-17, odd sequence: male
BAD_ID_CARD = ID_CARD[:-1] + ("0" if ID_CARD[-1] != "0" else "1")


def org_ref(institution_id: str) -> dict[str, Any]:
    return {"identifier": {"system": INSTITUTION_SYSTEM, "value": institution_id}}


def patient(institution_id: str, mz: str = "MZ0001", id_card: str = ID_CARD) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [
            {"system": ID_CARD_SYSTEM, "value": id_card},
            {"system": OUTPATIENT_NO_SYSTEM, "value": mz, "assigner": org_ref(institution_id)},
        ],
        "name": [{"text": "王芳"}],
        "gender": "male",
        "birthDate": "1985-03-17",
    }


def observation(
    institution_id: str,
    *,
    mz: str = "MZ0001",
    report_no: str | None = None,
    subject: dict[str, Any] | None = None,
    value: str = "6.30",
) -> dict[str, Any]:
    """A potassium result; ``value`` is put in as JSON text so its digits can be checked."""
    return {
        "resourceType": "Observation",
        "identifier": [
            {
                "system": LAB_REPORT_NO_SYSTEM,
                "value": report_no or f"LR-{uuid.uuid4().hex[:12]}",
                "assigner": org_ref(institution_id),
            }
        ],
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "laboratory",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": "http://loinc.org", "code": "2823-3", "display": "钾"}]},
        "subject": subject or {"identifier": {"system": OUTPATIENT_NO_SYSTEM, "value": mz}},
        "effectiveDateTime": "2026-11-20T08:30:00+08:00",
        "issued": "2026-11-20T10:02:00+08:00",
        "performer": [org_ref(institution_id)],
        "valueQuantity": {"value": f"@@{value}@@", "unit": "mmol/L"},
    }


def dumps(resource: Any) -> bytes:
    """JSON text with ``"@@6.30@@"`` markers turned into bare numbers (``6.30``)."""
    import json

    return json.dumps(resource, ensure_ascii=False).replace('"@@', "").replace('@@"', "").encode()


def service_request(institution_id: str, *, mz: str = "MZ0001") -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "identifier": [
            {
                "system": ORDER_NO_SYSTEM,
                "value": f"SQ-{uuid.uuid4().hex[:10]}",
                "assigner": org_ref(institution_id),
            }
        ],
        "status": "active",
        "intent": "order",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2823-3"}]},
        "subject": {"identifier": {"system": OUTPATIENT_NO_SYSTEM, "value": mz}},
        "authoredOn": "2026-11-21T09:00:00+08:00",
    }


def bundle(
    kind: str, institution_id: str, *, n_obs: int = 2, id_card: str = ID_CARD
) -> dict[str, Any]:
    """A Patient and ``n_obs`` Observations that reference it by urn:uuid."""
    p_url = f"urn:uuid:{uuid.uuid4()}"
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": p_url,
            "resource": patient(institution_id, id_card=id_card),
            "request": {"method": "POST", "url": "Patient"},
        }
    ]
    for _ in range(n_obs):
        entries.append(
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": observation(institution_id, subject={"reference": p_url}),
                "request": {"method": "POST", "url": "Observation"},
            }
        )
    return {
        "resourceType": "Bundle",
        "id": f"b-{uuid.uuid4().hex[:8]}",
        "type": kind,
        "entry": entries,
    }
