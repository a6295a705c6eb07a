"""Recognition through the running hub: gateway → patient index → recognition → decisions.

Hospitals post through a real gateway process; the patient index and the recognition worker
run as real processes on the real broker. Times are relative to now, so the windows hold
whatever day the suite runs.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.common.broker import free_port
from services.common.envelope import Envelope
from services.common.institutions import Registry, issue_token
from services.common.kafka_admin import create_topics
from services.common.topics import ALL_TOPICS
from tests.conftest import REPO
from tests.fhir_samples import dumps, gb11643, observation, service_request
from tests.support import consume_all, run_module, stop_process, wait_ready

PARTITIONS = 3
FHIR = "application/fhir+json"
CARD_SYSTEM = "urn:oid:2.16.156.10011.1.3"
#: 三甲, Taiyuan (lab qualification: national)
A = "12140000405001730E"
#: level 2, Taiyuan, same prefecture as A
B = "12140110405530210H"
#: 三乙, Taiyuan: lab and chest CT qualified for its city only (municipal HR scope)
A2 = "12140107405412652L"
#: level 2, Datong: another prefecture, outside A2's HR scope
C = "12140215406213786R"
PROVINCIAL = "urn:oid:1.3.6.1.4.1.32473.14.0.1"
LOINC = "http://loinc.org"
CBC_LOINC = "58410-2"
CT_CHEST = "SX-JC-0202"
#: catalogue prices (config/catalog/shanxi-v1.yaml) of CBC and CT-CHEST
CBC_YUAN, CT_CHEST_YUAN = 20, 220
PACS_A2 = "https://pacs.xhl.example-hospital.cn/dicom-web"


@dataclass
class Hub:
    bootstrap: str
    url: str
    recognition_port: int
    tokens: dict[str, str]
    registry: Path
    procs: dict[str, subprocess.Popen[bytes]]
    env: dict[str, str]
    tmp: Path

    @property
    def recognition(self) -> str:
        return f"http://127.0.0.1:{self.recognition_port}"

    def check(self, inst: str, patient: str, code: str) -> httpx.Response:
        return httpx.get(
            f"{self.recognition}/recognition/check",
            params={"patient": patient, "code": code},
            headers={"Authorization": f"Bearer {self.tokens[inst]}"},
            timeout=30,
        )

    def feedback(self, inst: str, doc: dict[str, Any]) -> httpx.Response:
        return httpx.post(
            f"{self.recognition}/recognition/feedback",
            json=doc,
            headers={"Authorization": f"Bearer {self.tokens[inst]}"},
            timeout=30,
        )

    def decisions_for(self, order_trace: str) -> list[dict[str, Any]]:
        """Every decision (first and re-issued) of the order posted with that trace id."""
        return [
            Envelope.from_bytes(r.value).payload
            for r in consume_all(self.bootstrap, "mrhub.recognition.decision-made.v1")
            if Envelope.from_bytes(r.value).trace_id == order_trace
        ]

    def post(self, inst: str, path: str, doc: Any) -> httpx.Response:
        resp = httpx.post(
            f"{self.url}{path}",
            content=dumps(doc),
            headers={"Authorization": f"Bearer {self.tokens[inst]}", "Content-Type": FHIR},
            timeout=30,
        )
        assert resp.status_code in (200, 201), resp.text
        return resp

    def decision(self, trace_id: str, timeout_s: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for r in consume_all(self.bootstrap, "mrhub.recognition.decision-made.v1"):
                env = Envelope.from_bytes(r.value)
                if env.trace_id == trace_id:
                    return env.payload
            time.sleep(0.5)
        raise AssertionError("no decision for that order")


@pytest.fixture(scope="module")
def hub(bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    tmp = tmp_path_factory.mktemp("recognition")
    registry = tmp / "institutions.yaml"
    shutil.copy(REPO / "config" / "institutions.yaml", registry)
    assert {A, B, A2, C} <= set(Registry.load(registry).ids)
    tokens = {i: issue_token(registry, i) for i in (A, B, A2, C)}
    create_topics(bootstrap, ALL_TOPICS, default_partitions=PARTITIONS, replication_factor=1)
    ports = {name: free_port() for name in ("ingest", "patient_index", "recognition")}
    env = {
        "MRHUB_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "MRHUB_IDENTITY__HMAC_KEY": "test-hmac-key",
        "MRHUB_INGEST__PORT": str(ports["ingest"]),
        "MRHUB_INSTITUTIONS_PATH": str(registry),
        "MRHUB_PATIENT_INDEX__PORT": str(ports["patient_index"]),
        "MRHUB_PATIENT_INDEX__URL": f"http://127.0.0.1:{ports['patient_index']}",
        "MRHUB_RECOGNITION__PORT": str(ports["recognition"]),
        "MRHUB_TOPIC_PARTITIONS": str(PARTITIONS),
        "MRHUB_STATE_DIR": str(tmp / "state"),
        "MRHUB_LOG_LEVEL": "INFO",
    }
    procs = {
        name: run_module(["-m", "services.cli", "serve", name], env, tmp / f"{name}.log")
        for name in ports
    }
    try:
        for name, port in ports.items():
            wait_ready(f"http://127.0.0.1:{port}/readyz", procs[name], tmp / f"{name}.log")
        _drained(ports["recognition"])
        yield Hub(
            bootstrap,
            f"http://127.0.0.1:{ports['ingest']}",
            ports["recognition"],
            tokens,
            registry,
            procs,
            env,
            tmp,
        )
    finally:
        for proc in procs.values():
            stop_process(proc)


def _drained(port: int) -> None:
    """Wait until the recognition worker has read what earlier modules left on the session
    broker's topics (its consumer group is the hub's, shared by every module): the tests
    below count *their* results by the worker's results counter."""

    def sample() -> tuple[float, float]:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        applied = lag = 0.0
        for line in text.splitlines():
            if line.startswith("mrhub_recognition_results_total{"):
                applied += float(line.split()[-1])
            if line.startswith("mrhub_consumer_lag_messages{") and "result-indexed" in line:
                lag += float(line.split()[-1])  # no line yet: nothing fetched, nothing behind
        return applied, lag

    deadline = time.monotonic() + 180
    previous = None
    while time.monotonic() < deadline:
        applied, lag = sample()
        if lag == 0 and previous == applied:
            return
        previous = applied
        time.sleep(6)  # longer than the lag sampling period (5 s)
    raise AssertionError("the recognition worker did not catch up with the topics")


_SEQ = iter(range(random.randint(100, 400) | 1, 999, 2))
#: every 身份证 this module used, to look for in the services' logs at the end
_ISSUED: list[str] = []


def _card() -> str:
    """A 身份证 no other test module uses (Taiyuan, born 1990-06-01): the broker and its topics
    live for the whole session, so numbers shared with the patient-index tests — which merge
    and link masters — would join these patients to theirs."""
    card = gb11643(f"14010519900601{next(_SEQ):03d}")
    _ISSUED.append(card)
    return card


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


def _potassium(inst: str, card: str, taken: datetime) -> dict[str, Any]:
    doc = observation(inst, subject={"identifier": {"system": CARD_SYSTEM, "value": card}})
    doc["effectiveDateTime"] = _iso(taken)
    doc["issued"] = _iso(taken + timedelta(hours=1))
    return doc


def _order(inst: str, card: str) -> dict[str, Any]:
    doc = service_request(inst)
    doc["subject"] = {"identifier": {"system": CARD_SYSTEM, "value": card}}
    doc["authoredOn"] = _iso(datetime.now(UTC))
    return doc


def _metric(hub: Hub, name: str, **labels: str) -> float:
    """The sum of a metric's samples that carry ``labels``."""
    text = httpx.get(f"http://127.0.0.1:{hub.recognition_port}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.split()[-1])
    return total


def _known_after(hub: Hub, before: float, changes: int) -> None:
    """Wait until the recognition worker has applied ``changes`` more results: results and
    orders are separate topics, so an order posted later may otherwise be read first."""
    deadline = time.monotonic() + 60
    while _metric(hub, "mrhub_recognition_results_total") < before + changes:
        assert time.monotonic() < deadline, "the result never reached the recognition worker"
        time.sleep(0.3)


def test_an_order_at_a_lower_level_hospital_recognises_a_recent_result(hub: Hub) -> None:
    card = _card()
    before = _metric(hub, "mrhub_recognition_results_total")
    hub.post(A, "/fhir/Observation", _potassium(A, card, datetime.now(UTC) - timedelta(hours=2)))
    _known_after(hub, before, 1)
    resp = hub.post(B, "/fhir/ServiceRequest", _order(B, card))
    decision = hub.decision(resp.headers["X-Trace-Id"])
    assert (decision["outcome"], decision["reason"]) == ("recognisable", "recognised")
    assert decision["item_id"] == "K"
    [best, *_] = decision["matches"]
    assert best["institution"] == A and best["recognisable"]
    assert decision["estimated_saving_yuan"] > 0
    assert decision["catalog_version"]
    assert decision["detected_issue"]["resourceType"] == "DetectedIssue"
    saved = _metric(hub, "mrhub_recognition_savings_yuan_total", category="lab")
    assert saved >= decision["estimated_saving_yuan"]
    assert _metric(hub, "mrhub_recognition_decisions_total", reason="recognised") >= 1


def test_an_order_after_the_window_is_not_recognisable(hub: Hub) -> None:
    card = _card()
    old = datetime.now(UTC) - timedelta(days=30)  # potassium: 7 days from collection
    before = _metric(hub, "mrhub_recognition_results_total")
    hub.post(A, "/fhir/Observation", _potassium(A, card, old))
    _known_after(hub, before, 1)
    resp = hub.post(B, "/fhir/ServiceRequest", _order(B, card))
    decision = hub.decision(resp.headers["X-Trace-Id"])
    assert (decision["outcome"], decision["reason"]) == ("not-recognisable", "outside-window")


def test_an_order_with_no_earlier_result_says_so(hub: Hub) -> None:
    resp = hub.post(B, "/fhir/ServiceRequest", _order(B, _card()))
    decision = hub.decision(resp.headers["X-Trace-Id"])
    assert (decision["outcome"], decision["reason"]) == ("not-recognisable", "no-prior-result")
    assert decision["matches"] == []


def test_a_withdrawn_result_is_not_recognised(hub: Hub) -> None:
    card = _card()
    result = _potassium(A, card, datetime.now(UTC) - timedelta(hours=2))
    before = _metric(hub, "mrhub_recognition_results_total")
    hub.post(A, "/fhir/Observation", result)
    hub.post(A, "/fhir/Observation", dict(result, status="entered-in-error"))
    _known_after(hub, before, 2)  # the result, then its retraction
    resp = hub.post(B, "/fhir/ServiceRequest", _order(B, card))
    decision = hub.decision(resp.headers["X-Trace-Id"])
    assert decision["reason"] == "no-prior-result"


def test_a_bad_order_is_dead_lettered_and_the_stream_goes_on(hub: Hub) -> None:
    from tests.support import produce

    produce(hub.bootstrap, "mrhub.results.order-placed.v1", [(b"MPbad", b"{not json")])
    resp = hub.post(B, "/fhir/ServiceRequest", _order(B, _card()))
    assert hub.decision(resp.headers["X-Trace-Id"])["reason"] == "no-prior-result"
    dead = [
        json.loads(r.value) for r in consume_all(hub.bootstrap, "mrhub.recognition.dead-letter.v1")
    ]
    assert any(d["stage"] == "orders" and d["original_base64"] for d in dead)


# ── the issue's end-to-end story: a blood count and a chest CT, recognised across hospitals ──


def _cbc(inst: str, card: str, taken: datetime) -> dict[str, Any]:
    doc = _potassium(inst, card, taken)
    doc["code"] = {"coding": [{"system": LOINC, "code": CBC_LOINC, "display": "血常规"}]}
    doc["valueQuantity"] = {"value": "@@6.2@@", "unit": "10*9/L"}
    doc["id"] = f"cbc-{random.randint(10**8, 10**9)}"  # the hospital's id: the report link
    return doc


def _chest_ct(inst: str, card: str, started: datetime) -> dict[str, Any]:
    uid = f"1.2.826.0.1.3680043.8.498.{random.randint(10**9, 10**10)}"
    chest = {"system": "http://snomed.info/sct", "code": "51185008"}
    return {
        "resourceType": "ImagingStudy",
        "id": f"ct-{uid.rsplit('.', 1)[1]}",
        "contained": [
            {
                "resourceType": "Endpoint",
                "id": "wado",
                "status": "active",
                "connectionType": {
                    "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
                    "code": "dicom-wado-rs",
                },
                "payloadType": [{"text": "DICOM"}],
                "address": PACS_A2,
            }
        ],
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{uid}"}],
        "status": "available",
        "modality": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "CT"}],
        "subject": {"identifier": {"system": CARD_SYSTEM, "value": card}},
        "started": _iso(started),
        "endpoint": [{"reference": "#wado"}],
        "numberOfSeries": 1,
        "numberOfInstances": 120,
        "procedureCode": [{"coding": [{"system": PROVINCIAL, "code": CT_CHEST}]}],
        "series": [
            {
                "uid": f"{uid}.1",
                "number": 1,
                "modality": {
                    "system": "http://dicom.nema.org/resources/ontology/DCM",
                    "code": "CT",
                },
                "bodySite": chest,
                "numberOfInstances": 120,
            }
        ],
    }


def _ordered(inst: str, card: str, system: str, code: str) -> dict[str, Any]:
    doc = _order(inst, card)
    doc["code"] = {"coding": [{"system": system, "code": code}]}
    return doc


def _feedback_events(hub: Hub) -> list[dict[str, Any]]:
    return [
        Envelope.from_bytes(r.value).payload
        for r in consume_all(hub.bootstrap, "mrhub.recognition.feedback-recorded.v1")
    ]


def _audits(hub: Hub) -> list[dict[str, Any]]:
    return [
        Envelope.from_bytes(r.value).payload
        for r in consume_all(hub.bootstrap, "mrhub.audit.access-recorded.v1")
    ]


def test_blood_count_and_chest_ct_are_recognised_across_hospitals(hub: Hub) -> None:
    card = _card()
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    saved_lab = _metric(hub, "mrhub_recognition_savings_yuan_total", category="lab")
    saved_img = _metric(hub, "mrhub_recognition_savings_yuan_total", category="imaging")
    before = _metric(hub, "mrhub_recognition_results_total")
    cbc_doc = _cbc(A2, card, an_hour_ago)
    hub.post(A2, "/fhir/Observation", cbc_doc)
    study = _chest_ct(A2, card, an_hour_ago)
    hub.post(A2, "/fhir/ImagingStudy", study)
    _known_after(hub, before, 2)
    uid = study["identifier"][0]["value"].removeprefix("urn:oid:")

    # on the topic: B (level 2, same city) orders both and may recognise both
    cbc_order = hub.post(B, "/fhir/ServiceRequest", _ordered(B, card, LOINC, CBC_LOINC))
    ct_order = hub.post(B, "/fhir/ServiceRequest", _ordered(B, card, PROVINCIAL, CT_CHEST))
    cbc = hub.decision(cbc_order.headers["X-Trace-Id"])
    ct = hub.decision(ct_order.headers["X-Trace-Id"])
    assert (cbc["outcome"], cbc["item_id"]) == ("recognisable", "CBC")
    assert (ct["outcome"], ct["item_id"]) == ("recognisable", "CT-CHEST")
    assert ct["matches"][0]["institution"] == A2
    assert ct["matches"][0]["study_uid"] == uid
    assert ct["matches"][0]["image_endpoints"] == [PACS_A2]
    assert (cbc["estimated_saving_yuan"], ct["estimated_saving_yuan"]) == (CBC_YUAN, CT_CHEST_YUAN)

    # from the check endpoint, with A2's report and the image link
    patient = f"{CARD_SYSTEM}|{card}"
    answer = hub.check(B, patient, f"{LOINC}|{CBC_LOINC}")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["decision"], body["reason"]) == ("recognisable", "recognised")
    assert body["catalog_version"] == "shanxi-v1" and body["saving_yuan"] == CBC_YUAN
    [m] = body["matches"]
    assert m["institution"] == A2 and m["report"]["posted_as"] == f"Observation/{cbc_doc['id']}"
    assert m["report"]["reference"] == f"Observation/{m['report']['record_id']}"
    assert m["performed_at"] and m["valid_until"] > m["performed_at"]
    body = hub.check(B, card, f"{PROVINCIAL}|{CT_CHEST}").json()  # a bare 身份证 works too
    assert body["decision"] == "recognisable"
    [m] = body["matches"]
    assert m["report"]["posted_as"] == f"ImagingStudy/{study['id']}"
    assert m["report"]["reference"] == f"ImagingStudy/{m['report']['record_id']}"
    assert m["images"] == [f"{PACS_A2}/studies/{uid}"]

    # C, in Datong, is outside A2's (municipal) HR scope: told so, shown nothing of A2's
    c_order = hub.post(C, "/fhir/ServiceRequest", _ordered(C, card, LOINC, CBC_LOINC))
    c = hub.decision(c_order.headers["X-Trace-Id"])
    assert (c["outcome"], c["reason"]) == ("not-recognisable", "scope-not-satisfied")
    body = hub.check(C, patient, f"{LOINC}|{CBC_LOINC}").json()
    assert (body["decision"], body["reason"]) == ("not-recognisable", "scope-not-satisfied")
    assert body["matches"] == []

    # the savings counter moved by the catalogue prices
    lab = _metric(hub, "mrhub_recognition_savings_yuan_total", category="lab") - saved_lab
    img = _metric(hub, "mrhub_recognition_savings_yuan_total", category="imaging") - saved_img
    assert (lab, img) == (CBC_YUAN, CT_CHEST_YUAN)

    # every check was audited: who read, about which master, whose data was shown
    audits = [a for a in _audits(hub) if a["master_patient_id"] == cbc["master_patient_id"]]
    by_reader = {(a["reader"], tuple(a["shown_institutions"])) for a in audits}
    assert {(B, (A2,)), (C, ())} <= by_reader
    assert all(a["purpose"] == "recognition-check" for a in audits)

    # B's feedback: the blood count recognised, the CT re-ordered for image quality
    got = hub.feedback(
        B,
        {
            "patient": patient,
            "code": f"{LOINC}|{CBC_LOINC}",
            "choice": "recognised",
            "decision_id": cbc["decision_id"],
        },
    )
    assert got.status_code == 201, got.text
    got = hub.feedback(
        B,
        {
            "patient": patient,
            "code": f"{PROVINCIAL}|{CT_CHEST}",
            "choice": "re-ordered",
            "reason": "image-quality",
            "note": "层厚太厚, call 13912345678",
        },
    )
    assert got.status_code == 201, got.text
    mine = [f for f in _feedback_events(hub) if f["master_patient_id"] == ct["master_patient_id"]]
    assert {(f["item_id"], f["choice"], f["reason"]) for f in mine} == {
        ("CBC", "recognised", None),
        ("CT-CHEST", "re-ordered", "image-quality"),
    }
    [note] = [f["note"] for f in mine if f["reason"]]
    assert "13912345678" not in note and note.startswith("层厚太厚")
    assert _metric(hub, "mrhub_recognition_feedback_total", reason="image-quality") >= 1


def test_a_blood_count_older_than_six_hours_is_outside_the_window(hub: Hub) -> None:
    card = _card()
    before = _metric(hub, "mrhub_recognition_results_total")
    hub.post(A2, "/fhir/Observation", _cbc(A2, card, datetime.now(UTC) - timedelta(hours=7)))
    _known_after(hub, before, 1)
    resp = hub.post(B, "/fhir/ServiceRequest", _ordered(B, card, LOINC, CBC_LOINC))
    decision = hub.decision(resp.headers["X-Trace-Id"])
    assert (decision["outcome"], decision["reason"]) == ("not-recognisable", "outside-window")
    body = hub.check(B, f"{CARD_SYSTEM}|{card}", f"{LOINC}|{CBC_LOINC}").json()
    assert body["reason"] == "outside-window" and body["matches"][0]["institution"] == A2


def test_a_retracted_study_reissues_the_decision_that_relied_on_it(hub: Hub) -> None:
    card = _card()
    study = _chest_ct(A2, card, datetime.now(UTC) - timedelta(days=2))
    before = _metric(hub, "mrhub_recognition_results_total")
    hub.post(A2, "/fhir/ImagingStudy", study)
    _known_after(hub, before, 1)
    resp = hub.post(B, "/fhir/ServiceRequest", _ordered(B, card, PROVINCIAL, CT_CHEST))
    trace = resp.headers["X-Trace-Id"]
    first = hub.decision(trace)
    assert first["outcome"] == "recognisable" and first["supersedes"] is None

    hub.post(A2, "/fhir/ImagingStudy", dict(study, status="entered-in-error"))
    deadline = time.monotonic() + 60
    while len(decisions := hub.decisions_for(trace)) < 2:
        assert time.monotonic() < deadline, "no superseding decision"
        time.sleep(0.5)
    [again] = [d for d in decisions if d["reissue"]]
    assert again["supersedes"] == first["decision_id"]
    assert again["reevaluation_cause"] == "result-retracted"
    assert (again["outcome"], again["reason"]) == ("not-recognisable", "no-prior-result")
    assert again["revision"] == 2 and again["order_record_id"] == first["order_record_id"]


def test_check_and_feedback_refuse_bad_requests_with_an_operation_outcome(hub: Hub) -> None:
    url = f"{hub.recognition}/recognition/check"
    no_token = httpx.get(url, params={"patient": "x|y", "code": f"{LOINC}|{CBC_LOINC}"})
    assert no_token.status_code == 401 and "Bearer" in no_token.headers["WWW-Authenticate"]
    card = _card()
    bad_card = card[:-1] + ("0" if card[-1] != "0" else "1")  # fails the GB 11643 checksum
    cases = [
        ({"patient": f"{CARD_SYSTEM}|{_card()}"}, 400, "code"),
        ({"code": f"{LOINC}|{CBC_LOINC}"}, 400, "patient"),
        ({"patient": f"{CARD_SYSTEM}|{bad_card}", "code": f"{LOINC}|{CBC_LOINC}"}, 422, "patient"),
    ]
    for params, status, where in cases:
        got = hub.check(B, params.get("patient", ""), params.get("code", ""))
        assert got.status_code == status, (params, got.text)
        issue = got.json()["issue"][0]
        assert got.json()["resourceType"] == "OperationOutcome" and where in issue["expression"]
    unknown = hub.check(B, f"{CARD_SYSTEM}|{_card()}", f"{LOINC}|{CBC_LOINC}")
    assert unknown.status_code == 200 and unknown.json()["reason"] == "no-prior-result"

    refused = hub.feedback(
        B,
        {
            "patient": f"{CARD_SYSTEM}|{_card()}",
            "code": f"{LOINC}|{CBC_LOINC}",
            "choice": "re-ordered",
        },
    )
    assert refused.status_code == 400
    assert refused.json()["issue"][0]["expression"] == ["reason"]
    refused = hub.feedback(
        B,
        {
            "patient": f"{CARD_SYSTEM}|{_card()}",
            "code": f"{LOINC}|{CBC_LOINC}",
            "choice": "re-ordered",
            "reason": "felt-like-it",
        },
    )
    assert refused.status_code == 400 and "condition-changed" in refused.text


def test_mrhub_report_prints_recognitions_and_savings_per_region(hub: Hub) -> None:
    """After the stories above: Taiyuan (140100) recognised blood counts and chest CTs."""
    import subprocess
    import sys

    env = {**os.environ, "MRHUB_INSTITUTIONS_PATH": str(hub.registry)}
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "report", "--json", "--bootstrap", hub.bootstrap],
        env=env,
        capture_output=True,
        timeout=180,
        check=True,
        cwd=REPO,
    )
    doc = json.loads(done.stdout)
    rows = {(r["region"], r["category"]): r for r in doc["rows"]}
    imaging = rows[("140100", "imaging")]
    assert imaging["recognisable"] >= 1 and imaging["saving_yuan"] >= CT_CHEST_YUAN
    assert imaging["feedback_reordered_by_reason"].get("image-quality", 0) >= 1
    lab = rows[("140100", "lab")]
    assert lab["orders"] > lab["recognisable"] >= 2  # K and CBC recognised; others not
    assert rows[("140200", "lab")]["not_recognisable_by_reason"]["scope-not-satisfied"] >= 1
    assert doc["saving_yuan"] == sum(r["saving_yuan"] for r in doc["rows"])


# the last test: it restarts the recognition worker
def test_a_new_catalogue_version_reissues_the_decisions_made_with_the_old_one(hub: Hub) -> None:
    from services.recognition.catalog import CHINA_TZ

    card = _card()
    before = _metric(hub, "mrhub_recognition_results_total")
    hub.post(A2, "/fhir/Observation", _cbc(A2, card, datetime.now(UTC) - timedelta(hours=1)))
    _known_after(hub, before, 1)
    resp = hub.post(B, "/fhir/ServiceRequest", _ordered(B, card, LOINC, CBC_LOINC))
    trace = resp.headers["X-Trace-Id"]
    first = hub.decision(trace)
    assert (first["catalog_version"], first["outcome"]) == ("shanxi-v1", "recognisable")

    # the province publishes v2 from today (China time); v1 ends yesterday
    today = datetime.now(CHINA_TZ).date()
    catalogs = hub.tmp / "catalog-v2"
    catalogs.mkdir()
    v1 = (REPO / "config" / "catalog" / "shanxi-v1.yaml").read_text(encoding="utf-8")
    ended = v1.replace("effective_to: null", f"effective_to: {today - timedelta(days=1)}")
    assert ended != v1
    (catalogs / "shanxi-v1.yaml").write_text(ended, encoding="utf-8")
    v2 = v1.replace("version: shanxi-v1", "version: shanxi-v2").replace(
        "effective_from: 2026-01-01", f"effective_from: {today}"
    )
    (catalogs / "shanxi-v2.yaml").write_text(v2, encoding="utf-8")

    stop_process(hub.procs["recognition"])
    env = {**hub.env, "MRHUB_RECOGNITION__CATALOG_PATH": str(catalogs)}
    log = hub.tmp / "recognition-v2.log"
    hub.procs["recognition"] = run_module(["-m", "services.cli", "serve", "recognition"], env, log)
    wait_ready(f"{hub.recognition}/readyz", hub.procs["recognition"], log)

    deadline = time.monotonic() + 90
    while not [d for d in hub.decisions_for(trace) if d["reissue"]]:
        assert time.monotonic() < deadline, "the decision was not re-issued under v2"
        time.sleep(1)
    [again] = [d for d in hub.decisions_for(trace) if d["reissue"]]
    assert again["catalog_version"] == "shanxi-v2"
    assert again["reevaluation_cause"] == "catalogue-changed"
    assert again["supersedes"] == first["decision_id"]
    assert again["outcome"] == "recognisable"
    # a check now answers with the version in force
    body = hub.check(B, f"{CARD_SYSTEM}|{card}", f"{LOINC}|{CBC_LOINC}").json()
    assert body["catalog_version"] == "shanxi-v2"


def test_no_service_logged_a_national_id_number(hub: Hub) -> None:
    """Checks, feedback and orders named patients by 身份证 in URLs and bodies; none of it may
    reach a log line (JSON logs of the gateway, the patient index and recognition)."""
    logs = sorted(hub.tmp.glob("*.log"))
    assert len(logs) >= 3 and _ISSUED
    for log in logs:
        text = log.read_text(encoding="utf-8", errors="replace")
        assert text, log
        leaked = [card for card in _ISSUED if card in text or card[:17] in text]
        assert not leaked, f"{log.name} names {len(leaked)} 身份证 number(s)"
