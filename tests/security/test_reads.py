"""Attacks on the read routes of the imaging index and the patient index: identifiers in URLs,
out-of-range numbers, a forged Host header, oversized parameters and bodies, deep JSON.
Each test asserts what the hospital (or the operator reading the logs) would notice."""

from __future__ import annotations

import random
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from services.common.identifiers import OUTPATIENT_NO_SYSTEM
from tests.fhir_samples import gb11643
from tests.security.conftest import A2, CARD_SYSTEM, STEWARD_TOKEN, A, C, SecurityHub

DCM = "http://dicom.nema.org/resources/ontology/DCM"
_SEQ = iter(range(random.randint(100, 500) | 1, 999, 2))


def _card() -> str:
    """身份证 numbers of this module only (born 1970-01-03 in Taiyuan)."""
    return gb11643(f"14010519700103{next(_SEQ):03d}")


def _study(card: str) -> tuple[str, dict[str, Any]]:
    uid = f"1.2.826.0.1.3680043.8.498.{uuid.uuid4().int % 10**30}"
    started = (datetime.now(UTC) - timedelta(hours=3)).isoformat()
    return uid, {
        "resourceType": "ImagingStudy",
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{uid}"}],
        "status": "available",
        "modality": [{"system": DCM, "code": "CT"}],
        "subject": {"identifier": {"system": CARD_SYSTEM, "value": card}},
        "started": started,
        "numberOfSeries": 1,
        "numberOfInstances": 40,
        "series": [
            {
                "uid": f"{uid}.1",
                "number": 1,
                "modality": {"system": DCM, "code": "CT"},
                "numberOfInstances": 40,
            }
        ],
    }


def _search_post(hub: SecurityHub, inst: str, params: dict[str, str], **headers: str) -> Any:
    return httpx.post(
        f"{hub.url('imaging')}/fhir/ImagingStudy/_search",
        data=params,
        headers={**hub.auth(inst), **headers},
        timeout=30,
    )


@pytest.fixture(scope="module")
def indexed_study(security_hub: SecurityHub) -> tuple[str, str]:
    """(身份证, Study Instance UID) of a CT that A2 (municipal scope) posted and the imaging
    index has listed."""
    card = _card()
    uid, study = _study(card)
    security_hub.post(A2, "/fhir/ImagingStudy", study)
    deadline = time.monotonic() + 120
    while True:
        resp = _search_post(security_hub, A2, {"patient": f"{CARD_SYSTEM}|{card}"})
        assert resp.status_code == 200, resp.text
        if resp.json().get("total", 0) >= 1:
            return card, uid
        assert time.monotonic() < deadline, "the study was never indexed"
        time.sleep(0.5)


def test_a_search_by_post_keeps_the_identifier_out_of_every_url(
    security_hub: SecurityHub, indexed_study: tuple[str, str]
) -> None:
    card, uid = indexed_study
    resp = _search_post(security_hub, A2, {"patient": f"{CARD_SYSTEM}|{card}"})
    assert resp.status_code == 200, resp.text
    bundle = resp.json()
    assert bundle["resourceType"] == "Bundle" and bundle["total"] == 1
    assert uid in resp.text
    assert card not in resp.text  # links carry the master id, never the 身份证
    # the search needs a hospital's credential, as the GET does
    anonymous = httpx.post(
        f"{security_hub.url('imaging')}/fhir/ImagingStudy/_search",
        data={"patient": f"{CARD_SYSTEM}|{card}"},
        timeout=30,
    )
    assert anonymous.status_code == 401


def test_post_search_takes_only_a_form(security_hub: SecurityHub) -> None:
    resp = httpx.post(
        f"{security_hub.url('imaging')}/fhir/ImagingStudy/_search",
        json={"patient": "x"},
        headers=security_hub.auth(A),
        timeout=30,
    )
    assert resp.status_code == 415
    assert resp.json()["resourceType"] == "OperationOutcome"


def test_a_forged_host_header_never_reaches_an_answer(
    security_hub: SecurityHub, indexed_study: tuple[str, str]
) -> None:
    card, _ = indexed_study
    for headers in ({"Host": "evil.example"}, {"X-Forwarded-Host": "evil.example"}):
        resp = _search_post(security_hub, A2, {"patient": f"{CARD_SYSTEM}|{card}"}, **headers)
        assert resp.status_code == 200, resp.text
        assert resp.json()["link"] and resp.json()["entry"]  # there are URLs to look at
        assert "evil.example" not in resp.text
        routed = httpx.get(
            f"{security_hub.url('imaging')}/fhir/ImagingStudy",
            params={"patient": f"{CARD_SYSTEM}|{card}", "routed": "1"},
            headers={**security_hub.auth(A2), **headers},
            timeout=30,
        )
        assert "evil.example" not in routed.text


def test_an_out_of_scope_reader_gets_no_master_id(
    security_hub: SecurityHub, indexed_study: tuple[str, str]
) -> None:
    """C (Datong) may not see A2's CT (A2's imaging scope is its own city): the answer is
    empty and names no master patient id, so it tells C nothing it could use elsewhere."""
    card, uid = indexed_study
    resp = _search_post(security_hub, C, {"patient": f"{CARD_SYSTEM}|{card}"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["total"] == 0
    assert uid not in resp.text and "MP" not in resp.text


@pytest.mark.parametrize(
    "params",
    [
        {"_offset": "1" + "0" * 5000},
        {"_offset": "0" * 5000},
        {"_count": "9" * 40},
        {"_offset": "²"},
        {"_count": "-1"},
        {"patient": "x" * 5000},
        {"modality": "CT" * 3000},
    ],
    ids=[
        "offset-huge",
        "offset-zeros",
        "count-huge",
        "offset-superscript",
        "count-negative",
        "patient-long",
        "modality-long",
    ],
)
def test_out_of_range_parameters_are_a_clear_400(
    security_hub: SecurityHub, params: dict[str, str]
) -> None:
    base = {"patient": f"{CARD_SYSTEM}|{_card()}"}
    resp = _search_post(security_hub, A, {**base, **params})
    assert resp.status_code == 400, resp.text
    issue = resp.json()["issue"][0]
    assert issue["severity"] == "error" and issue["expression"]


def test_a_very_long_query_string_is_refused_before_any_view(security_hub: SecurityHub) -> None:
    card = _card()
    url = f"{security_hub.url('imaging')}/fhir/ImagingStudy?patient={card}&pad={'9' * 20000}"
    resp = httpx.get(url, headers=security_hub.auth(A), timeout=30)
    assert resp.status_code in (400, 414), resp.text
    log = security_hub.log("imaging").read_text(errors="replace")
    assert card not in log


@pytest.mark.parametrize(
    ("service", "path", "token"),
    [
        ("patient_index", "/internal/resolve", "steward"),
        ("patient_index", "/patients/$merge", "steward"),
        ("patient_index", "/fhir/Patient/$match", "steward"),
        ("recognition", "/recognition/feedback", "hospital"),
    ],
)
def test_deeply_nested_json_is_a_400_not_a_500(
    security_hub: SecurityHub, service: str, path: str, token: str
) -> None:
    secret = STEWARD_TOKEN if token == "steward" else security_hub.tokens[A]
    body = b"[" * 100_000 + b"]" * 100_000
    resp = httpx.post(
        f"{security_hub.url(service)}{path}",
        content=body,
        headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/json"},
        timeout=60,
    )
    assert resp.status_code == 400, resp.text[:500]
    assert resp.json()["resourceType"] == "OperationOutcome"
    assert httpx.get(f"{security_hub.url(service)}/healthz", timeout=10).status_code == 200


def test_a_body_over_the_worker_limit_is_a_413(security_hub: SecurityHub) -> None:
    resp = httpx.post(
        f"{security_hub.url('patient_index')}/internal/resolve",
        content=b'{"patient": "' + b"1" * (2 * 1024 * 1024) + b'"}',
        headers={"Authorization": f"Bearer {STEWARD_TOKEN}", "Content-Type": "application/json"},
        timeout=60,
    )
    assert resp.status_code == 413, resp.text[:500]
    assert resp.json()["resourceType"] == "OperationOutcome"


def test_a_hospital_number_of_another_hospital_resolves_to_nobody(
    security_hub: SecurityHub,
) -> None:
    """A hospital's own numbers are read in the caller's scope: C naming A's 门诊号 learns
    nothing, exactly as for a number nobody issued."""
    number = f"MZ{uuid.uuid4().hex[:10]}"
    card = _card()
    _, study = _study(card)
    study["subject"] = {"identifier": {"system": OUTPATIENT_NO_SYSTEM, "value": number}}
    security_hub.post(A, "/fhir/ImagingStudy", study)
    theirs = _search_post(security_hub, C, {"patient": f"{OUTPATIENT_NO_SYSTEM}|{number}"})
    nobody = _search_post(
        security_hub, C, {"patient": f"{OUTPATIENT_NO_SYSTEM}|MZ{uuid.uuid4().hex[:10]}"}
    )
    assert theirs.status_code == nobody.status_code
    assert theirs.json()["total"] == nobody.json()["total"] == 0
