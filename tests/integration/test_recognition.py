"""Recognition through the running hub: gateway → patient index → recognition → decisions.

Hospitals post through a real gateway process; the patient index and the recognition worker
run as real processes on the real broker. Times are relative to now, so the windows hold
whatever day the suite runs.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
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


@dataclass
class Hub:
    bootstrap: str
    url: str
    recognition_port: int
    tokens: dict[str, str]

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
    assert {A, B} <= set(Registry.load(registry).ids)
    tokens = {i: issue_token(registry, i) for i in (A, B)}
    create_topics(bootstrap, ALL_TOPICS, default_partitions=PARTITIONS, replication_factor=1)
    ports = {name: free_port() for name in ("ingest", "patient_index", "recognition")}
    env = {
        "MRHUB_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "MRHUB_IDENTITY__HMAC_KEY": "test-hmac-key",
        "MRHUB_INGEST__PORT": str(ports["ingest"]),
        "MRHUB_INGEST__INSTITUTIONS_PATH": str(registry),
        "MRHUB_RECOGNITION__INSTITUTIONS_PATH": str(registry),
        "MRHUB_PATIENT_INDEX__PORT": str(ports["patient_index"]),
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
        yield Hub(bootstrap, f"http://127.0.0.1:{ports['ingest']}", ports["recognition"], tokens)
    finally:
        for proc in procs.values():
            stop_process(proc)


_SEQ = iter(range(random.randint(100, 400) | 1, 999, 2))


def _card() -> str:
    """A 身份证 no other test module uses (Taiyuan, born 1990-06-01): the broker and its topics
    live for the whole session, so numbers shared with the patient-index tests — which merge
    and link masters — would join these patients to theirs."""
    return gb11643(f"14010519900601{next(_SEQ):03d}")


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
