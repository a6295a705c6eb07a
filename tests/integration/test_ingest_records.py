"""The gateway's record ids against a real broker and a real patient index: the ``Location``
a hospital is told is the ``record_id`` the result is published under; resources without a
business identifier are deduplicated by their content key; a report linked to its study by
``urn:uuid:`` inside a bundle is that study's report (docs/ingest.md, docs/events.md)."""

from __future__ import annotations

import random
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest

from services.common import codec
from services.common.broker import free_port
from services.common.envelope import Envelope
from services.common.forwarding import FORWARDED_BY_HEADER, PUBLIC_BASE_HEADER
from services.common.identifiers import ID_CARD_SYSTEM
from services.common.institutions import Registry, issue_token
from services.common.kafka_admin import create_topics
from services.common.topics import ALL_TOPICS, RESULT_INDEXED
from tests.conftest import REPO
from tests.fhir_samples import dumps, gb11643, org_ref, patient
from tests.support import consume_all, run_module, stop_process, wait_ready

PARTITIONS = 3
FHIR = "application/fhir+json"
DEADLINE_S = 90.0
DCM = "http://dicom.nema.org/resources/ontology/DCM"


@dataclass
class Hub:
    bootstrap: str
    url: str
    index_url: str
    inst: str
    token: str
    log: Path

    def post(self, path: str, doc: Any) -> httpx.Response:
        resp = httpx.post(
            f"{self.url}{path}",
            content=dumps(doc),
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": FHIR},
            timeout=30,
        )
        assert resp.status_code in (200, 201), resp.text[:2000]
        return resp

    def indexed(self, where: Callable[[Envelope], bool], expect: int) -> list[Envelope]:
        """``result-indexed`` events for which ``where`` holds, once ``expect`` arrived."""
        deadline = time.monotonic() + DEADLINE_S
        while True:
            found = [
                e
                for e in (
                    Envelope.from_bytes(r.value)
                    for r in consume_all(self.bootstrap, RESULT_INDEXED.name)
                )
                if where(e)
            ]
            if len(found) >= expect or time.monotonic() > deadline:
                return found
            time.sleep(0.3)

    def records_counted(self, outcome: str) -> float:
        text = httpx.get(f"{self.index_url}/metrics", timeout=10).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith("mrhub_patient_index_records_total{") and (
                f'outcome="{outcome}"' in line and 'kind="result"' in line
            ):
                total += float(line.rsplit(" ", 1)[1])
        return total


class _Recorder(BaseHTTPRequestHandler):
    """A stand-in for recognition: records what reaches it, answers an empty searchset."""

    seen: ClassVar[list[tuple[str, str, dict[str, str]]]] = []

    def do_GET(self) -> None:
        self.seen.append(("GET", self.path, dict(self.headers)))
        body = b'{"resourceType":"Bundle","type":"searchset","total":0}'
        self.send_response(200)
        self.send_header("Content-Type", FHIR)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


@pytest.fixture(scope="module")
def hub(bootstrap: str, upstream: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    tmp = tmp_path_factory.mktemp("records")
    registry = tmp / "institutions.yaml"
    shutil.copy(REPO / "config" / "institutions.yaml", registry)
    inst = Registry.load(registry).ids[0]
    token = issue_token(registry, inst)
    create_topics(bootstrap, ALL_TOPICS, default_partitions=PARTITIONS, replication_factor=1)
    gw_port, pi_port = free_port(), free_port()
    env = {
        "MRHUB_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "MRHUB_IDENTITY__HMAC_KEY": "test-hmac-key",
        "MRHUB_INGEST__PORT": str(gw_port),
        "MRHUB_INSTITUTIONS_PATH": str(registry),
        "MRHUB_INGEST__PUBLIC_BASE_URL": "https://hub.example",
        "MRHUB_PATIENT_INDEX__PORT": str(pi_port),
        "MRHUB_RECOGNITION__URL": upstream,
        "MRHUB_TOPIC_PARTITIONS": str(PARTITIONS),
        "MRHUB_STATE_DIR": str(tmp / "state"),
        "MRHUB_LOG_LEVEL": "INFO",
    }
    gateway = run_module(["-m", "services.cli", "serve", "ingest"], env, tmp / "ingest.log")
    index = run_module(["-m", "services.cli", "serve", "patient_index"], env, tmp / "pi.log")
    gw_url, pi_url = f"http://127.0.0.1:{gw_port}", f"http://127.0.0.1:{pi_port}"
    hub = Hub(bootstrap, gw_url, pi_url, inst, token, tmp / "ingest.log")
    try:
        wait_ready(f"{hub.url}/readyz", gateway, tmp / "ingest.log")
        wait_ready(f"{hub.index_url}/readyz", index, tmp / "pi.log")
        yield hub
    finally:
        stop_process(gateway)
        stop_process(index)


_SEQ = iter(range(random.randint(100, 400) | 1, 999, 2))  # odd: male, as the sample Patient


def new_card() -> str:
    """A 身份证 agreeing with the sample Patient (born 1985-03-17, male) that no other module
    uses (北京 丰台区): the broker and the patient index's changelogs live for the whole
    session, so a number shared with test_patient_index would give one of its patients this
    module's records (a master there once counted 3,002 records for 3,000)."""
    return gb11643(f"11010619850317{next(_SEQ):03d}")


def bare_potassium(inst: str, subject: dict[str, Any], value: str = "4.20") -> dict[str, Any]:
    """A potassium result as some LIS interfaces send it: no identifier, no id."""
    return {
        "resourceType": "Observation",
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
        "subject": subject,
        "effectiveDateTime": "2026-11-20T08:30:00+08:00",
        "issued": "2026-11-20T10:02:00+08:00",
        "performer": [org_ref(inst)],
        "valueQuantity": {"value": f"@@{value}@@", "unit": "mmol/L"},
    }


def batch(*entries: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": url,
                "resource": res,
                "request": {"method": "POST", "url": res["resourceType"]},
            }
            for url, res in entries
        ],
    }


def urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def record_id_of(location: str, rtype: str) -> str:
    m = re.fullmatch(rf"https://hub\.example/fhir/{rtype}/([0-9a-f]{{32}})", location)
    assert m is not None, location
    return m.group(1)


def test_the_location_of_a_create_is_the_id_the_result_is_published_under(hub: Hub) -> None:
    card = new_card()
    obs = bare_potassium(hub.inst, {"identifier": {"system": ID_CARD_SYSTEM, "value": card}})
    obs["identifier"] = [
        {"system": "urn:oid:2.16.156.10011.1.33", "value": f"LR-{uuid.uuid4().hex[:10]}"}
    ]
    resp = hub.post("/fhir/Observation", obs)
    assert resp.status_code == 201
    rid = record_id_of(resp.headers["Location"], "Observation")
    trace = resp.headers["X-Trace-Id"]
    [event] = hub.indexed(lambda e: e.trace_id == trace, 1)
    assert event.payload["record_id"] == rid
    # contract 1: the resource as posted, its decimal with its digits
    assert event.payload["resource"] == codec.loads(dumps(obs))
    assert event.payload["resource"]["valueQuantity"]["value"] == Decimal("4.20")
    assert str(event.payload["resource"]["valueQuantity"]["value"]) == "4.20"


def test_the_same_potassium_posted_three_times_is_one_result(hub: Hub) -> None:
    """The issue's complaint: a check listed 17 potassium results after repeated posts."""
    card = new_card()
    dup_before = hub.records_counted("duplicate")
    locations = []
    for _ in range(3):  # each post a new bundle with new fullUrls, as an interface resends
        p_url = urn()
        doc = batch(
            (p_url, patient(hub.inst, id_card=card)),
            (urn(), bare_potassium(hub.inst, {"reference": p_url})),
        )
        answer = hub.post("/fhir", doc).json()
        assert [e["response"]["status"] for e in answer["entry"]] == ["201 Created"] * 2
        locations.append(answer["entry"][1]["response"]["location"])
    assert len(set(locations)) == 1, locations
    rid = record_id_of(locations[0], "Observation")

    deadline = time.monotonic() + DEADLINE_S
    while hub.records_counted("duplicate") < dup_before + 2 and time.monotonic() < deadline:
        time.sleep(0.3)
    assert hub.records_counted("duplicate") >= dup_before + 2
    published = hub.indexed(lambda e: e.payload["record_id"] == rid, 1)
    assert [e.payload["change"] for e in published] == ["new"]

    # another value at the same time is another result: the key is not just code + patient
    p_url = urn()
    other = hub.post(
        "/fhir",
        batch(
            (p_url, patient(hub.inst, id_card=card)),
            (urn(), bare_potassium(hub.inst, {"reference": p_url}, value="5.80")),
        ),
    ).json()
    other_rid = record_id_of(other["entry"][1]["response"]["location"], "Observation")
    assert other_rid != rid
    [again] = hub.indexed(lambda e: e.payload["record_id"] == other_rid, 1)
    assert again.payload["change"] == "new"
    assert again.payload["master_patient_id"] == published[0].payload["master_patient_id"]
    assert len(hub.indexed(lambda e: e.payload["record_id"] == rid, 2)) == 1


def chest_ct(inst: str, subject: dict[str, Any], uid: str) -> dict[str, Any]:
    return {
        "resourceType": "ImagingStudy",
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{uid}"}],
        "status": "available",
        "modality": [{"system": DCM, "code": "CT"}],
        "subject": subject,
        "started": "2026-11-20T09:00:00+08:00",
        "numberOfSeries": 1,
        "numberOfInstances": 120,
        "series": [
            {
                "uid": f"{uid}.1",
                "modality": {"system": DCM, "code": "CT"},
                "bodySite": {"system": "http://snomed.info/sct", "code": "51185008"},
                "numberOfInstances": 120,
            }
        ],
    }


def ct_report(inst: str, subject: dict[str, Any], study_url: str) -> dict[str, Any]:
    return {
        "resourceType": "DiagnosticReport",
        "status": "final",
        "category": [
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "CT"}]}
        ],
        "code": {"coding": [{"system": "http://loinc.org", "code": "24627-2"}], "text": "胸部CT"},
        "subject": subject,
        "effectiveDateTime": "2026-11-20T09:00:00+08:00",
        "issued": "2026-11-20T11:00:00+08:00",
        "performer": [org_ref(inst)],
        "imagingStudy": [{"reference": study_url}],
        "conclusion": "右肺上叶小结节，建议随访。",
    }


def test_a_report_linked_by_urn_uuid_is_that_studys_report(hub: Hub) -> None:
    card = new_card()
    uid = f"1.2.826.0.1.3680043.8.498.{random.randint(10**9, 10**10)}"
    p_url, s_url, r_url = urn(), urn(), urn()
    subject = {"reference": p_url}
    doc = batch(
        (p_url, patient(hub.inst, id_card=card)),
        (s_url, chest_ct(hub.inst, subject, uid)),
        (r_url, ct_report(hub.inst, subject, s_url)),
    )
    answer = hub.post("/fhir", doc).json()
    study_rid = record_id_of(answer["entry"][1]["response"]["location"], "ImagingStudy")
    report_rid = record_id_of(answer["entry"][2]["response"]["location"], "DiagnosticReport")

    events = hub.indexed(lambda e: e.payload["record_id"] in {study_rid, report_rid}, 2)
    by_type = {e.payload["resource_type"]: e.payload for e in events}
    assert set(by_type) == {"ImagingStudy", "DiagnosticReport"}, events
    study, report = by_type["ImagingStudy"], by_type["DiagnosticReport"]
    assert (study["record_id"], report["record_id"]) == (study_rid, report_rid)
    # the report is the study's: same UID, an imaging result, one CT with its report
    assert study["imaging"]["study_uid"] == uid
    assert report["imaging"]["study_uid"] == uid
    assert report["category"] == "imaging"
    # its reference reads back on the hub, and names the study's UID
    [ref] = report["resource"]["imagingStudy"]
    assert ref == {
        "reference": f"ImagingStudy/{study_rid}",
        "identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{uid}"},
    }
    assert report["resource"]["conclusion"] == "右肺上叶小结节，建议随访。"


def test_a_resend_of_the_ct_bundle_publishes_nothing_new(hub: Hub) -> None:
    """The resolved references make the report's key independent of the bundle's random
    fullUrls: the same bundle sent again is the same two records."""
    card = new_card()
    uid = f"1.2.826.0.1.3680043.8.498.{random.randint(10**9, 10**10)}"
    rids = []
    for _ in range(2):
        p_url, s_url = urn(), urn()
        subject = {"reference": p_url}
        answer = hub.post(
            "/fhir",
            batch(
                (p_url, patient(hub.inst, id_card=card)),
                (s_url, chest_ct(hub.inst, subject, uid)),
                (urn(), ct_report(hub.inst, subject, s_url)),
            ),
        ).json()
        rids.append(tuple(e["response"]["location"] for e in answer["entry"][1:]))
    assert rids[0] == rids[1]
    report_rid = record_id_of(rids[0][1], "DiagnosticReport")
    assert len(hub.indexed(lambda e: e.payload["record_id"] == report_rid, 1)) == 1


def test_the_served_gateway_forwards_reads_with_its_public_base(hub: Hub) -> None:
    """``mrhub serve ingest`` wires the proxy: MRHUB_RECOGNITION__URL, the public base, the
    internal token (services/ingest/main.py); a read without a credential stops at the
    gateway."""
    _Recorder.seen.clear()
    path = "/fhir/Observation?code=2823-3&_count=1"
    resp = httpx.get(f"{hub.url}{path}", headers={"Authorization": f"Bearer {hub.token}"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["type"] == "searchset"
    [(method, seen_path, headers)] = _Recorder.seen
    assert (method, seen_path) == ("GET", path)
    assert headers["Authorization"] == f"Bearer {hub.token}"
    assert headers[PUBLIC_BASE_HEADER] == "https://hub.example"
    assert headers[FORWARDED_BY_HEADER].startswith("mrhi_")
    assert headers[FORWARDED_BY_HEADER] not in resp.text
    anonymous = httpx.get(f"{hub.url}{path}")
    assert anonymous.status_code == 401
    assert anonymous.json()["resourceType"] == "OperationOutcome"
    assert len(_Recorder.seen) == 1
    # a search by 身份证 (in the URL, and in a _search body) leaves it in no log line
    card = new_card()
    by_card = f"/fhir/Observation?patient={ID_CARD_SYSTEM}%7C{card}"
    assert httpx.get(f"{hub.url}{by_card}", headers={"Authorization": "Bearer x"}).is_success
    httpx.post(
        f"{hub.url}/fhir/Observation/_search",
        content=f"patient={ID_CARD_SYSTEM}%7C{card}",
        headers={"Authorization": "Bearer x", "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert any(card in p for _, p, _ in _Recorder.seen)
    assert card not in hub.log.read_text(encoding="utf-8", errors="replace")
