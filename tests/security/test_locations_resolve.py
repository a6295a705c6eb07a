"""What the gateway answers a write with resolves on the same base (issue 16: "a 201's
Location answers 404"): the single post's ``Location``, each transaction entry's
``response.location``, and the report's reference to its study inside the bundle — for the
posting hospital and for a reader in its scope, and for nobody else.

A2 (Taiyuan) posts; B (Taiyuan) may read A2's lab results and CTs; C (Datong) may not.
"""

from __future__ import annotations

import random
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from tests.fhir_samples import gb11643, org_ref
from tests.security.conftest import A2, CARD_SYSTEM, B, C, SecurityHub
from tests.security.test_cds_hooks import CT_CHEST, IMPRESSION, PROVINCIAL, _ct_with_report
from tests.security.test_sharing_reads import CBC, LOINC, _result

_SEQ = iter(random.sample(range(1, 999, 2), 50))


def _card() -> str:
    """A 身份证 no other module uses (Taiyuan, born 1985-07-09)."""
    return gb11643(f"14010519850709{next(_SEQ):03d}")


def _absolute(hub: SecurityHub, location: str) -> str:
    """A Location as a client follows it: relative ones against the gateway's base."""
    return location if location.startswith("http") else f"{hub.gateway}{location}"


def _read_when_indexed(hub: SecurityHub, inst: str, url: str, timeout_s: float = 120) -> Any:
    """GET ``url`` as ``inst`` until the record is indexed (404 until then)."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = httpx.get(url, headers=hub.auth(inst), timeout=30)
        if got.status_code == 200:
            return got.json()
        assert got.status_code == 404, got.text[:500]
        assert time.monotonic() < deadline, f"{url} still 404 after {timeout_s} s"
        time.sleep(0.5)


def test_every_location_the_gateway_answers_reads_back(security_hub: SecurityHub) -> None:
    hub = security_hub
    card = _card()
    single = hub.post(A2, "/fhir/Observation", _result(A2, card, hours_ago=5, value="141"))
    assert single.status_code == 201
    taken = datetime.now(UTC) - timedelta(hours=4)
    uid, bundle = _ct_with_report(card, taken)
    answer = hub.post(A2, "/fhir", bundle).json()
    assert answer["type"] == "transaction-response"
    study_at, report_at = (e["response"]["location"] for e in answer["entry"])

    urls = [_absolute(hub, loc) for loc in (single.headers["Location"], study_at, report_at)]
    for url in urls:
        for reader in (A2, B):  # the posting hospital, and one in its scope
            doc = _read_when_indexed(hub, reader, url)
            assert url.endswith(f"/fhir/{doc['resourceType']}/{doc['id']}")
    value = _read_when_indexed(hub, B, urls[0])
    assert value["valueQuantity"]["value"] == 141
    study = _read_when_indexed(hub, B, urls[1])
    assert f"urn:oid:{uid}" in {i["value"] for i in study["identifier"]}
    report = _read_when_indexed(hub, B, urls[2])
    assert report["conclusion"] == IMPRESSION
    # the report's urn:uuid reference to the study became the study's hub id, and resolves
    [link] = report["imagingStudy"]
    assert _absolute(hub, link["reference"]).endswith(urls[1].split("/fhir/", 1)[1])
    assert _read_when_indexed(hub, B, f"{hub.gateway}/fhir/{link['reference']}")["id"]

    # outside A2's scope every one of them is a 404, as for an id that does not exist
    unknown = f"{hub.gateway}/fhir/Observation/{'0' * 32}"
    nothing = httpx.get(unknown, headers=hub.auth(C), timeout=30)
    assert nothing.status_code == 404
    for url in urls:
        got = httpx.get(url, headers=hub.auth(C), timeout=30)
        assert got.status_code == 404 and got.json()["issue"] == nothing.json()["issue"]
        assert IMPRESSION[:6] not in got.text and "141" not in got.text
    # and without a token, nobody
    assert httpx.get(urls[0], timeout=30).status_code == 401


def test_the_ct_and_its_report_are_one_match_in_the_check(security_hub: SecurityHub) -> None:
    """Linked through urn:uuid in the bundle, the report is its study's: B's check lists the
    CT once, with the report's hub reference, not a study and a report side by side."""
    hub = security_hub
    card = _card()
    _, bundle = _ct_with_report(card, datetime.now(UTC) - timedelta(hours=6))
    answer = hub.post(A2, "/fhir", bundle).json()
    report_at = answer["entry"][1]["response"]["location"]
    _read_when_indexed(hub, B, _absolute(hub, report_at))
    deadline = time.monotonic() + 120
    while True:
        check = hub.check(B, f"{CARD_SYSTEM}|{card}", f"{PROVINCIAL}|{CT_CHEST}").json()
        if check["matches_total"] >= 1 and check["matches"][0]["conclusion"]:
            break
        assert time.monotonic() < deadline, check
        time.sleep(0.5)
    assert check["matches_total"] == 1, check["matches"]
    [match] = check["matches"]
    assert match["conclusion"] == IMPRESSION
    assert report_at.endswith(match["report"]["reference"])


def test_a_report_brings_its_results_with_include(security_hub: SecurityHub) -> None:
    """A blood-count report posted with its results in one transaction, linked by urn:uuid:
    ``DiagnosticReport?_include=DiagnosticReport:result`` answers the report and, marked as
    included, exactly its results — each of which reads back; C gets neither."""
    hub = security_hub
    card = _card()
    results = [
        _result(A2, card, hours_ago=7, value=v) for v in ("138", "142")
    ]  # LOINC 58410-2, A2's lab
    urls = [f"urn:uuid:{uuid.uuid4()}" for _ in results]
    taken = datetime.now(UTC) - timedelta(hours=7)
    report = {
        "resourceType": "DiagnosticReport",
        "identifier": [
            {
                "system": "https://lis.xhl.example-hospital.cn/report",
                "value": f"LAB-{uuid.uuid4().hex[:10]}",
                "assigner": org_ref(A2),
            }
        ],
        "status": "final",
        "category": [
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "LAB"}]}
        ],
        "code": {"coding": [{"system": LOINC, "code": CBC, "display": "血常规"}]},
        "subject": {"identifier": {"system": CARD_SYSTEM, "value": card}},
        "effectiveDateTime": taken.isoformat(),
        "issued": (taken + timedelta(minutes=40)).isoformat(),
        "performer": [org_ref(A2)],
        "result": [{"reference": u} for u in urls],
        "conclusion": "血常规未见明显异常",
    }
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            *(
                {"fullUrl": u, "resource": r, "request": {"method": "POST", "url": "Observation"}}
                for u, r in zip(urls, results, strict=True)
            ),
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": report,
                "request": {"method": "POST", "url": "DiagnosticReport"},
            },
        ],
    }
    answer = hub.post(A2, "/fhir", bundle).json()
    *result_at, report_at = (e["response"]["location"] for e in answer["entry"])
    for loc in (*result_at, report_at):
        _read_when_indexed(hub, B, _absolute(hub, loc))

    def search(inst: str) -> dict[str, Any]:
        got = httpx.post(
            f"{hub.gateway}/fhir/DiagnosticReport/_search",
            data={
                "patient": f"{CARD_SYSTEM}|{card}",
                "_include": "DiagnosticReport:result",
            },
            headers=hub.auth(inst),
            timeout=30,
        )
        assert got.status_code == 200, got.text[:500]
        doc: dict[str, Any] = got.json()
        return doc

    found = search(B)
    modes = {
        e["resource"]["resourceType"] + "/" + e["resource"]["id"]: e["search"]["mode"]
        for e in found["entry"]
    }
    report_ref = report_at.split("/fhir/", 1)[1]
    result_refs = {loc.split("/fhir/", 1)[1] for loc in result_at}
    assert modes == {report_ref: "match", **dict.fromkeys(result_refs, "include")}
    assert found["total"] == 1  # total counts the matches, not what was included
    [served] = [e["resource"] for e in found["entry"] if e["search"]["mode"] == "match"]
    assert {r["reference"] for r in served["result"]} == result_refs
    values = sorted(
        e["resource"]["valueQuantity"]["value"]
        for e in found["entry"]
        if e["search"]["mode"] == "include"
    )
    assert values == [138, 142]
    nothing = search(C)
    assert nothing["total"] == 0 and not nothing.get("entry")
