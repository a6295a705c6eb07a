"""Attacks on the gateway (issue 14, findings 7 and 10, and the gateway's bounded work),
against the real gateway process on the security suite's broker.

Each test asserts what a hospital or an operator would notice: a large resource is stored,
a huge bad bundle gets a short answer while the gateway keeps answering, slow clients are
cut off, a disconnect is one log line, deep JSON is a 400, a performer the hub cannot verify
is a 403, and a forged ``Host`` header never comes back. Waits are deadlines, never sleeps,
and nothing asserts a duration.
"""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.common.broker import free_port
from services.common.topics import (
    ALL_TOPICS,
    DEFAULT_MAX_MESSAGE_BYTES,
    RESOURCE_ACCEPTED,
    RESULT_INDEXED,
)
from tests.fhir_samples import ID_CARD, dumps, observation, org_ref
from tests.security.conftest import FHIR, A, C, SecurityHub
from tests.support import run_module, stop_process, wait_ready

NDJSON = "application/fhir+ndjson"
#: a wait, not a threshold: how long anything here may take on a loaded machine
DEADLINE_S = 120.0


def big_observation(inst: str, size: int) -> dict[str, Any]:
    """A valid Observation of about ``size`` bytes (a long lab comment)."""
    obs = observation(inst)
    obs["note"] = [{"text": "检验备注 " + "x" * size}]
    return obs


def outcome_of(resp: httpx.Response) -> dict[str, Any]:
    assert resp.headers["content-type"].startswith(FHIR), resp.headers
    doc: dict[str, Any] = resp.json()
    assert doc["resourceType"] == "OperationOutcome", doc
    return doc


def reasons(doc: dict[str, Any]) -> list[str]:
    return [i["details"]["coding"][0]["code"] for i in doc["issue"]]


def trace_of(resp: httpx.Response) -> str:
    return resp.headers["X-Trace-Id"]


# ------------------------------------------------------------------ a gateway of our own


@dataclass
class OwnGateway:
    url: str
    port: int
    token: str
    log: Path

    def log_lines(self) -> list[str]:
        return self.log.read_text(encoding="utf-8", errors="replace").splitlines()


@pytest.fixture(scope="module")
def slow_gateway(
    security_hub: SecurityHub, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OwnGateway]:
    """A gateway with short body and header time-outs (1 s; a body's deadline grows 1 s per
    2,000 bytes received), on the suite's broker and registry, logging at INFO to a file of
    its own."""
    tmp = tmp_path_factory.mktemp("slow-gateway")
    registry = tmp / "institutions.yaml"
    shutil.copy(security_hub.registry, registry)
    port = free_port()
    env = {
        **security_hub.env("ingest"),
        "MRHUB_INGEST__PORT": str(port),
        "MRHUB_INSTITUTIONS_PATH": str(registry),
        "MRHUB_INGEST__BODY_TIMEOUT_S": "1",
        "MRHUB_INGEST__MIN_BODY_RATE": "2000",
        "MRHUB_INGEST__HEADER_TIMEOUT_S": "1",
        "MRHUB_STATE_DIR": str(tmp / "state"),
        "MRHUB_LOG_LEVEL": "INFO",
    }
    log = tmp / "gateway.log"
    proc = run_module(["-m", "services.cli", "serve", "ingest"], env, log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{url}/readyz", proc, log)
        yield OwnGateway(url, port, security_hub.tokens[A], log)
    finally:
        stop_process(proc)


def _connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S)
    s.settimeout(DEADLINE_S)
    return s


def _read_until_closed(s: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (the socket's time-out
    is the deadline: a server that never closes fails the test)."""
    got = b""
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            return got
        if not chunk:
            return got
        got += chunk


def _head(path: str, token: str, length: int, ctype: str = FHIR) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: {ctype}\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


# ------------------------------------------------------------------ one body limit


def test_a_large_observation_is_stored_not_503(security_hub: SecurityHub) -> None:
    obs = big_observation(A, 1_200_000)
    resp = security_hub.post(A, "/fhir/Observation", obs, expect=201)
    trace_id = trace_of(resp)
    [event] = security_hub.wait_for(
        RESOURCE_ACCEPTED.name, lambda e: e.trace_id == trace_id, timeout_s=DEADLINE_S
    )
    assert event.payload["resource"]["note"] == obs["note"]


def test_a_large_observation_reaches_the_patient_index(security_hub: SecurityHub) -> None:
    """Downstream too: the patient index reads the 1.2 MB event and publishes the result."""
    obs = big_observation(A, 1_200_000)
    trace = f"big-obs-{uuid.uuid4().hex[:12]}"
    resp = httpx.post(
        f"{security_hub.gateway}/fhir/Observation",
        content=dumps(obs),
        headers={**security_hub.auth(A), "Content-Type": FHIR, "X-Trace-Id": trace},
        timeout=DEADLINE_S,
    )
    assert resp.status_code == 201, resp.text[:2000]
    [result] = security_hub.wait_for(
        RESULT_INDEXED.name, lambda e: e.trace_id == trace, timeout_s=DEADLINE_S
    )
    assert result.source == A


def test_hub_topics_take_a_body_sized_message(security_hub: SecurityHub) -> None:
    """What an operator sees on the cluster: the hub's topics take a message as large as
    the gateway's body limit plus the envelope."""
    from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=security_hub.bootstrap)
    try:
        found = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, t.name) for t in ALL_TOPICS]
        )
    finally:
        admin.close()
    # {resource type: {topic: {config key: {config data}}}} (kafka-python 3)
    [by_topic] = found.values()
    limits = {
        name: int(configs["max.message.bytes"]["value"]) for name, configs in by_topic.items()
    }
    assert limits == {t.name: DEFAULT_MAX_MESSAGE_BYTES for t in ALL_TOPICS}
    assert DEFAULT_MAX_MESSAGE_BYTES > 32 * 1024 * 1024


def test_a_large_import_line_is_stored(security_hub: SecurityHub) -> None:
    big = big_observation(A, 1_200_000)
    small = observation(A)
    trace = f"big-import-{uuid.uuid4().hex[:12]}"
    body = dumps(big) + b"\n" + dumps(small) + b"\n"
    resp = httpx.post(
        f"{security_hub.gateway}/fhir/$import",
        content=body,
        headers={**security_hub.auth(A), "Content-Type": NDJSON, "X-Trace-Id": trace},
        timeout=DEADLINE_S,
    )
    assert resp.status_code == 200, resp.text[:2000]
    summary = outcome_of(resp)["issue"][0]["diagnostics"]
    assert "2 resources stored, 0 lines refused" in summary
    stored = security_hub.wait_for(
        RESOURCE_ACCEPTED.name,
        lambda e: e.trace_id == trace,
        count=2,
        timeout_s=DEADLINE_S,
    )
    assert {e.payload["import_line"] for e in stored} == {1, 2}
    [line1] = [e for e in stored if e.payload["import_line"] == 1]
    assert line1.payload["resource"]["note"] == big["note"]


# ------------------------------------------------------------------ bounded validation


def _bad_transaction(entries: int) -> bytes:
    """A transaction of ``entries`` Observations, each missing code and effective[x]."""
    bad = {
        "resourceType": "Observation",
        "status": "final",
        "subject": {"identifier": {"system": "urn:oid:2.16.156.10011.1.11", "value": "MZ1"}},
        "performer": [org_ref(A)],
        "note": [{"text": "y" * 200}],
    }
    entry = {"resource": bad, "request": {"method": "POST", "url": "Observation"}}
    return json.dumps(
        {"resourceType": "Bundle", "type": "transaction", "entry": [entry] * entries}
    ).encode()


def test_a_huge_bad_transaction_gets_a_capped_answer_and_healthz_answers_meanwhile(
    security_hub: SecurityHub,
) -> None:
    body = _bad_transaction(50_000)
    assert len(body) > 15 * 1024 * 1024
    result: dict[str, Any] = {}

    def post() -> None:
        try:
            result["resp"] = httpx.post(
                f"{security_hub.gateway}/fhir",
                content=body,
                headers={**security_hub.auth(A), "Content-Type": FHIR},
                timeout=600,
            )
        except BaseException as exc:  # reported by the main thread
            result["error"] = exc

    sender = threading.Thread(target=post)
    sender.start()
    healthz: list[tuple[int, float]] = []
    with httpx.Client(timeout=DEADLINE_S) as client:
        while sender.is_alive():
            started = time.perf_counter()
            status = client.get(f"{security_hub.gateway}/healthz").status_code
            healthz.append((status, time.perf_counter() - started))
            sender.join(timeout=0.05)
    sender.join()
    assert "error" not in result, result.get("error")
    resp: httpx.Response = result["resp"]
    assert resp.status_code == 400, resp.text[:2000]
    doc = outcome_of(resp)
    assert len(doc["issue"]) == 101
    assert doc["issue"][-1]["details"]["coding"][0]["code"] == "truncated"
    assert "more issues not listed" in doc["issue"][-1]["diagnostics"]
    assert all(i["expression"][0].startswith("Bundle.entry[") for i in doc["issue"][:100])
    assert len(resp.content) < 100_000
    # the gateway answered /healthz throughout (measured, not asserted: see the report)
    assert healthz and all(status == 200 for status, _ in healthz)
    worst = max(s for _, s in healthz)
    print(
        f"/healthz answered {len(healthz)} times while the bundle was in flight; "
        f"worst {worst:.3f} s"
    )


def test_a_huge_bad_batch_lists_a_capped_number_of_issues(security_hub: SecurityHub) -> None:
    body = _bad_transaction(5_000).replace(b'"type": "transaction"', b'"type": "batch"')
    resp = httpx.post(
        f"{security_hub.gateway}/fhir",
        content=body,
        headers={**security_hub.auth(A), "Content-Type": FHIR},
        timeout=DEADLINE_S,
    )
    assert resp.status_code == 200, resp.text[:2000]
    doc = resp.json()
    assert len(doc["entry"]) == 5_000
    listed = [e["response"]["outcome"] for e in doc["entry"] if "outcome" in e["response"]]
    issues = [i for o in listed for i in o["issue"]]
    assert sum(1 for i in issues if i["details"]["coding"][0]["code"] != "truncated") == 100
    assert issues[-1]["details"]["coding"][0]["code"] == "truncated"
    assert all(e["response"]["status"].startswith("400") for e in doc["entry"])


def test_an_import_answer_is_capped(security_hub: SecurityHub) -> None:
    lines = b"\n".join(b'{"resourceType": "Observation"}' for _ in range(3_000))
    resp = httpx.post(
        f"{security_hub.gateway}/fhir/$import",
        content=lines,
        headers={**security_hub.auth(A), "Content-Type": NDJSON},
        timeout=DEADLINE_S,
    )
    assert resp.status_code == 200
    doc = outcome_of(resp)
    assert "3000 lines refused" in doc["issue"][0]["diagnostics"]
    assert len(doc["issue"]) == 1 + 100 + 1
    assert reasons(doc)[-1] == "truncated"


# ------------------------------------------------------------------ slow clients


def test_half_sent_bodies_are_answered_408_and_closed(slow_gateway: OwnGateway) -> None:
    socks = []
    for _ in range(100):
        s = _connect(slow_gateway.port)
        s.sendall(_head("/fhir/Observation", slow_gateway.token, 10_000) + b'{"resourceType"')
        socks.append(s)
    answers = [_read_until_closed(s) for s in socks]
    for s in socks:
        s.close()
    assert all(a.startswith(b"HTTP/1.1 408") for a in answers), answers[0][:500]
    assert b'"timeout"' in answers[0]
    assert httpx.get(f"{slow_gateway.url}/healthz", timeout=10).status_code == 200


def test_a_slow_but_steady_body_is_served(slow_gateway: OwnGateway) -> None:
    """Longer than the base time-out, but faster than the minimum rate: stored."""
    obs = observation(A)
    obs["note"] = [{"text": "z" * 20_000}]
    body = dumps(obs)
    s = _connect(slow_gateway.port)
    s.sendall(_head("/fhir/Observation", slow_gateway.token, len(body)))
    # the pace: ~600 bytes per 0.1 s, three times the minimum rate, 34 chunks: the body
    # takes longer than the 1 s base time-out
    s.settimeout(0.1)
    for i in range(0, len(body), 600):
        s.sendall(body[i : i + 600])
        if i + 600 < len(body):
            with pytest.raises(TimeoutError):  # no answer while the body is still coming
                s.recv(65536)
    s.settimeout(DEADLINE_S)
    answer = s.recv(65536)
    s.close()
    assert answer.startswith(b"HTTP/1.1 201"), answer[:500]


def test_a_stalled_import_stores_its_complete_lines_and_says_where_to_resume(
    slow_gateway: OwnGateway,
) -> None:
    line = dumps(observation(A)) + b"\n"
    s = _connect(slow_gateway.port)
    s.sendall(_head("/fhir/$import", slow_gateway.token, 10 * len(line), NDJSON) + line)
    answer = _read_until_closed(s)
    s.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:500]
    assert b"resend from line 2" in answer


@pytest.mark.parametrize(
    "sent",
    [
        b"",  # connects and says nothing
        b"POST /fhir/Observation HTTP/1.1\r\nHost: 127.0.0.1\r\n",  # headers never end
    ],
)
def test_slow_headers_are_closed(slow_gateway: OwnGateway, sent: bytes) -> None:
    s = _connect(slow_gateway.port)
    s.sendall(sent)
    answer = _read_until_closed(s)
    s.close()
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer[:300]


def test_trickled_headers_are_closed(slow_gateway: OwnGateway) -> None:
    """One byte at a time, forever: the header deadline closes the connection anyway."""
    s = _connect(slow_gateway.port)
    s.settimeout(0.2)  # the pace of the trickle: each recv waits for an answer this long
    request = b"POST /fhir/Observation HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * 10_000
    deadline = time.monotonic() + DEADLINE_S
    closed = False
    for i in range(len(request)):
        assert time.monotonic() < deadline, "the gateway kept a trickling client"
        try:
            s.sendall(request[i : i + 1])
            if s.recv(65536) == b"":
                closed = True
                break
        except TimeoutError:
            continue
        except OSError:  # reset or broken pipe: closed
            closed = True
            break
    s.close()
    assert closed


def test_oversized_header_is_refused_without_leaking(slow_gateway: OwnGateway) -> None:
    before = len(slow_gateway.log_lines())
    s = _connect(slow_gateway.port)
    s.sendall(
        b"GET /fhir/metadata?patient="
        + ID_CARD.encode()
        + b"a" * 20_000
        + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    )
    answer = _read_until_closed(s)
    s.close()
    assert answer.split(b" ", 2)[1] == b"400", answer[:300]
    assert httpx.get(f"{slow_gateway.url}/healthz", timeout=10).status_code == 200
    new = slow_gateway.log_lines()[before:]
    assert not any("Traceback" in line for line in new), new
    assert not any(ID_CARD in line for line in new), new


# ------------------------------------------------------------------ disconnects


def test_a_disconnect_is_one_log_line(slow_gateway: OwnGateway) -> None:
    before = len(slow_gateway.log_lines())
    n = 50
    for _ in range(n):
        s = _connect(slow_gateway.port)
        s.sendall(_head("/fhir/Observation", slow_gateway.token, 10_000) + b"{")
        s.close()
    deadline = time.monotonic() + DEADLINE_S
    while True:
        new = slow_gateway.log_lines()[before:]
        if sum("client disconnected" in line for line in new) >= n:
            break
        assert time.monotonic() < deadline, new[-20:]
        time.sleep(0.1)
    assert sum("client disconnected" in line for line in new) == n
    assert not any("Traceback" in line or '"exc"' in line for line in new), new[:5]


# ------------------------------------------------------------------ nesting depth


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("depth", [101, 100_000])
def test_deep_json_is_400_on_every_input(security_hub: SecurityHub, depth: int) -> None:
    obs = dumps(observation(A))[:-1] + f', "extension": {_deep(depth)}}}'.encode()
    auth = {**security_hub.auth(A), "Content-Type": FHIR}
    resp = httpx.post(f"{security_hub.gateway}/fhir/Observation", content=obs, headers=auth)
    assert resp.status_code == 400, resp.text[:500]
    assert reasons(outcome_of(resp)) == ["too-deep"]

    bundle = (
        b'{"resourceType": "Bundle", "type": "batch", "entry": [{"request": {"method": '
        b'"POST", "url": "Observation"}, "resource": ' + obs + b"}]}"
    )
    resp = httpx.post(f"{security_hub.gateway}/fhir", content=bundle, headers=auth)
    assert resp.status_code == 400, resp.text[:500]
    assert reasons(outcome_of(resp)) == ["too-deep"]

    resp = httpx.post(
        f"{security_hub.gateway}/fhir/$import",
        content=obs + b"\n",
        headers={**security_hub.auth(A), "Content-Type": NDJSON},
    )
    assert resp.status_code == 200
    doc = outcome_of(resp)
    assert reasons(doc) == ["import-summary", "too-deep"]
    assert doc["issue"][1]["expression"] == ["line[1]"]


# ------------------------------------------------------------------ finding 10


def test_a_performer_named_only_by_display_is_403(security_hub: SecurityHub) -> None:
    obs = observation(A)
    obs["performer"] = [{"display": "山西省人民医院检验科"}]
    resp = security_hub.post(A, "/fhir/Observation", obs, expect=403)
    [issue] = outcome_of(resp)["issue"]
    assert issue["details"]["coding"][0]["code"] == "foreign-institution"
    assert issue["expression"] == ["Observation.performer[0]"]


def test_a_practitioner_role_of_another_hospital_is_403(security_hub: SecurityHub) -> None:
    p_url, role_url, obs_url = (f"urn:uuid:{uuid.uuid4()}" for _ in range(3))
    obs = observation(A, subject={"reference": p_url})
    obs["performer"] = [{"reference": role_url}]
    patient = {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:oid:2.16.156.10011.1.11", "value": "MZ-ROLE-1"}],
    }
    role = {"resourceType": "PractitionerRole", "organization": org_ref(C)}
    doc = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": u, "resource": r, "request": {"method": "POST", "url": r["resourceType"]}}
            for u, r in ((p_url, patient), (role_url, role), (obs_url, obs))
        ],
    }
    resp = security_hub.post(A, "/fhir", doc, expect=403)
    issues = outcome_of(resp)["issue"]
    assert [i["expression"] for i in issues] == [["Bundle.entry[2].resource.performer[0]"]]
    assert C not in resp.text


def test_the_host_header_is_never_reflected(security_hub: SecurityHub) -> None:
    evil = {"Host": "evil.example", "X-Forwarded-Host": "evil.example"}
    auth = {**security_hub.auth(A), "Content-Type": FHIR, **evil}
    answers = [
        httpx.post(
            f"{security_hub.gateway}/fhir/Observation",
            content=dumps(observation(A)),
            headers=auth,
        ),
        httpx.post(
            f"{security_hub.gateway}/fhir",
            content=dumps(
                {
                    "resourceType": "Bundle",
                    "type": "batch",
                    "entry": [
                        {
                            "resource": observation(A),
                            "request": {"method": "POST", "url": "Observation"},
                        }
                    ],
                }
            ),
            headers=auth,
        ),
        httpx.get(f"{security_hub.gateway}/fhir/metadata", headers=evil),
        httpx.get(f"{security_hub.gateway}/nowhere", headers=evil),
        httpx.post(f"{security_hub.gateway}/fhir/Observation", content=b"{", headers=auth),
    ]
    assert [r.status_code for r in answers] == [201, 200, 200, 404, 400]
    created = answers[0]
    assert created.headers["Location"].startswith("/fhir/Observation/")
    for r in answers:
        assert "evil.example" not in r.text
        assert not any("evil.example" in v for v in r.headers.values())
    assert "url" not in answers[2].json()["implementation"]
