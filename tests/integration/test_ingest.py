"""The FHIR gateway against the real broker: what a hospital posts is what Kafka holds."""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp.test_utils import TestServer
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.operationoutcome import OperationOutcome

from services.common.broker import LocalBroker
from services.common.envelope import Envelope
from services.common.institutions import Registry, issue_token
from services.ingest.app import build_app
from tests.conftest import REPO
from tests.fhir_samples import (
    BAD_ID_CARD,
    ID_CARD,
    bundle,
    dumps,
    observation,
    org_ref,
    patient,
)
from tests.support import consume_all, create_topic

FHIR = "application/fhir+json"


@dataclass
class Gw:
    url: str
    topic: str
    bootstrap: str
    inst: str  # the posting institution's id
    other: str  # another institution's id
    token: str
    registry_path: Path

    def auth(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token}", "Content-Type": FHIR}

    def records(self, expect: int | None = None, isolation: str = "read_committed") -> list[Any]:
        return consume_all(self.bootstrap, self.topic, expect=expect, isolation=isolation)


@pytest.fixture
async def gw(bootstrap: str, unique: str, tmp_path: Path) -> AsyncIterator[Gw]:
    path = tmp_path / "institutions.yaml"
    shutil.copy(REPO / "config" / "institutions.yaml", path)
    registry = Registry.load(path)
    inst, other = registry.ids[0], registry.ids[1]
    token = issue_token(path, inst)
    topic = f"test.ingest.{unique}"
    create_topic(bootstrap, topic, 3)
    app = build_app(
        Registry.load(path),
        bootstrap=bootstrap,
        hmac_key=b"test-key",
        max_body_bytes=256 * 1024,
        publish_timeout_s=4.0,
        topic=topic,
        institutions_path=path,
    )
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield Gw(str(server.make_url("")), topic, bootstrap, inst, other, token, path)
    finally:
        await server.close()


async def post(gw: Gw, path: str, body: bytes, **headers: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=gw.url, timeout=30) as client:
        return await client.post(path, content=body, headers={**gw.auth(), **headers})


def outcome(resp: httpx.Response) -> dict[str, Any]:
    assert resp.headers["content-type"].startswith(FHIR)
    doc: dict[str, Any] = resp.json()
    OperationOutcome.model_validate(doc)  # a real R4 OperationOutcome
    return doc


# ------------------------------------------------------------------------------ accepted


async def test_posted_observation_is_on_the_topic_exactly_as_posted(gw: Gw) -> None:
    obs = observation(gw.inst, mz="MZ-77881", value="6.30")
    body = dumps(obs)
    resp = await post(gw, "/fhir/Observation", body)
    assert resp.status_code == 201, resp.text
    # no public base URL configured: a relative Location, never one built from Host
    assert resp.headers["Location"].startswith("/fhir/Observation/")
    # the id is the record's (services/common/records.py), not the event's
    rid = resp.headers["Location"].rsplit("/", 1)[1]
    assert len(rid) == 32 and "_history" not in resp.headers["Location"]

    [rec] = gw.records(expect=1)
    env = Envelope.from_bytes(rec.value)
    assert env.source == gw.inst
    assert env.event_type == "mrhub.ingest.resource-accepted"
    assert env.received_at is not None
    assert env.payload["resource_type"] == "Observation"
    posted = json.loads(body)
    on_topic_json = json.dumps(json.loads(rec.value)["payload"]["resource"], ensure_ascii=False)
    # same JSON, same key order, and the decimal keeps its digits (6.30, not 6.3)
    assert on_topic_json == json.dumps(posted, ensure_ascii=False)
    assert b'"value":6.30' in rec.value
    headers = dict(rec.headers)
    assert headers["trace_id"].decode() == resp.headers["X-Trace-Id"]
    assert headers["event_id"].decode() == env.event_id
    # the key names the institution and type but no identifier in clear
    assert rec.key.startswith(f"{gw.inst}|Observation|".encode())
    assert b"MZ-77881" not in rec.key and b"LR-" not in rec.key


async def test_transaction_bundle_lands_whole_with_bundle_coordinates(gw: Gw) -> None:
    doc = bundle("transaction", gw.inst, n_obs=3)
    resp = await post(gw, "/fhir", dumps(doc))
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    Bundle.model_validate(answer)
    assert answer["type"] == "transaction-response"
    assert [e["response"]["status"] for e in answer["entry"]] == ["201 Created"] * 4

    recs = gw.records(expect=4)
    assert len(recs) == 4
    by_index = {}
    for r in recs:
        payload = Envelope.from_bytes(r.value).payload
        assert payload["bundle_id"] == doc["id"]
        by_index[payload["entry_index"]] = json.loads(r.value)["payload"]["resource"]
    posted = json.loads(dumps(doc))
    assert by_index == {i: e["resource"] for i, e in enumerate(posted["entry"])}
    # each Observation says whose it is: the identifiers of the bundle's Patient
    patient_ids = posted["entry"][0]["resource"]["identifier"]
    for r in recs:
        assert json.loads(r.value)["payload"]["patient_identifiers"] == patient_ids
    # no raw 身份证 anywhere in keys or headers
    for r in recs:
        assert ID_CARD.encode() not in r.key
        assert all(ID_CARD.encode() not in v for _, v in r.headers)


async def test_transaction_with_one_bad_entry_writes_nothing(gw: Gw) -> None:
    doc = bundle("transaction", gw.inst, n_obs=2, id_card=BAD_ID_CARD)
    del doc["entry"][2]["resource"]["effectiveDateTime"]
    resp = await post(gw, "/fhir", dumps(doc))
    assert resp.status_code == 422
    issues = outcome(resp)["issue"]
    where = [e for i in issues for e in i.get("expression", [])]
    assert "Bundle.entry[0].resource.identifier[0].value" in where
    assert any(e.startswith("Bundle.entry[2].resource.effective") for e in where)
    assert all(BAD_ID_CARD not in i["diagnostics"] for i in issues)
    assert gw.records(isolation="read_uncommitted") == []


async def test_batch_answers_per_entry_and_publishes_only_the_good(gw: Gw) -> None:
    doc = bundle("batch", gw.inst, n_obs=2)
    doc["entry"][2]["resource"]["subject"] = {"reference": "urn:uuid:nobody-here"}
    resp = await post(gw, "/fhir", dumps(doc))
    assert resp.status_code == 200, resp.text
    statuses = [e["response"]["status"] for e in resp.json()["entry"]]
    assert statuses[:2] == ["201 Created", "201 Created"]
    assert statuses[2].startswith("422")
    bad_outcome = resp.json()["entry"][2]["response"]["outcome"]
    assert any("entry[2]" in e for i in bad_outcome["issue"] for e in i.get("expression", []))
    recs = gw.records(expect=2)
    indexes = sorted(Envelope.from_bytes(r.value).payload["entry_index"] for r in recs)
    assert indexes == [0, 1]


async def test_ndjson_import_reports_each_refused_line(gw: Gw) -> None:
    lines = [dumps(observation(gw.inst, mz=f"MZ{i}")) for i in range(5)]
    lines[2] = b'{"resourceType": "Observation", "status": "final"'  # truncated JSON
    bad = observation(gw.inst)
    bad["subject"] = {"identifier": {"system": "urn:oid:2.16.156.10011.1.3", "value": BAD_ID_CARD}}
    lines[4] = dumps(bad)
    body = b"\n".join(lines) + b"\n"
    resp = await post(gw, "/fhir/$import", body, **{"Content-Type": "application/fhir+ndjson"})
    assert resp.status_code == 200, resp.text
    issues = outcome(resp)["issue"]
    assert issues[0]["severity"] == "information"
    assert "3 resources stored, 2 lines refused" in issues[0]["diagnostics"]
    refused = {i["diagnostics"].split(":")[0] for i in issues[1:]}
    assert refused == {"line 3", "line 5"}
    recs = gw.records(expect=3)
    assert sorted(Envelope.from_bytes(r.value).payload["import_line"] for r in recs) == [1, 2, 4]


async def test_standalone_patient_with_mismatched_card_is_refused(gw: Gw) -> None:
    p = patient(gw.inst)
    p["birthDate"] = "1990-01-01"
    resp = await post(gw, "/fhir/Patient", dumps(p))
    assert resp.status_code == 422
    assert {i["details"]["coding"][0]["code"] for i in outcome(resp)["issue"]} == {
        "id-card-mismatch"
    }
    assert gw.records() == []


# ------------------------------------------------------------------------------ refused


async def test_credentials(gw: Gw) -> None:
    body = dumps(observation(gw.inst))
    async with httpx.AsyncClient(base_url=gw.url) as client:
        none = await client.post("/fhir/Observation", content=body, headers={"Content-Type": FHIR})
        wrong = await client.post(
            "/fhir/Observation", content=body, headers=gw.auth("mrh_not-a-real-token")
        )
    for resp in (none, wrong):
        assert resp.status_code == 401
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        assert outcome(resp)["issue"][0]["code"] == "login"
    assert gw.records() == []


async def test_posting_as_another_institution_is_forbidden(gw: Gw) -> None:
    obs = observation(gw.inst)
    obs["performer"] = [org_ref(gw.other)]
    resp = await post(gw, "/fhir/Observation", dumps(obs))
    assert resp.status_code == 403
    [issue] = outcome(resp)["issue"]
    assert issue["code"] == "forbidden"
    assert issue["expression"] == ["Observation.performer[0]"]
    assert gw.records() == []


async def test_revoked_token_stops_working_without_a_restart(gw: Gw) -> None:
    import asyncio
    import os
    import time

    from services.common.institutions import revoke_tokens

    body = dumps(observation(gw.inst))
    assert (await post(gw, "/fhir/Observation", body)).status_code == 201
    revoke_tokens(gw.registry_path, gw.inst)
    os.utime(gw.registry_path, (time.time() + 5, time.time() + 5))
    # the gateway notices the changed file by itself: poll until it refuses, with a deadline
    deadline = time.monotonic() + 60
    while (await post(gw, "/fhir/Observation", body)).status_code != 401:
        assert time.monotonic() < deadline, "the revoked token still works"
        await asyncio.sleep(0.2)


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "reason"),
    [
        ("/fhir/Observation", b"{not json", {}, 400, "malformed-json"),
        ("/fhir/Observation", b"{}", {"Content-Type": "text/plain"}, 415, "unsupported-media-type"),
        ("/fhir/Observation", b"x" * (300 * 1024), {}, 413, "too-large"),
        ("/fhir/Medication", b"{}", {}, 404, "unknown-endpoint"),
        ("/fhir/Observation", b'{"resourceType": "Patient"}', {}, 400, "type-mismatch"),
        (
            "/fhir",
            b'{"resourceType": "Bundle", "type": "collection", "entry": []}',
            {},
            422,
            "unsupported-bundle-type",
        ),
    ],
)
async def test_bad_input_gets_a_clear_answer(
    gw: Gw, path: str, body: bytes, headers: dict[str, str], status: int, reason: str
) -> None:
    resp = await post(gw, path, body, **headers)
    assert resp.status_code == status, resp.text
    reasons = {i["details"]["coding"][0]["code"] for i in outcome(resp)["issue"]}
    assert reason in reasons
    assert gw.records() == []


async def test_wrong_method_is_405_with_allow(gw: Gw) -> None:
    async with httpx.AsyncClient(base_url=gw.url) as client:
        resp = await client.delete("/fhir/Observation", headers=gw.auth())
    assert resp.status_code == 405
    assert {"GET", "POST"} <= set(resp.headers["Allow"].split(", "))
    outcome(resp)


async def test_metadata_is_a_truthful_capability_statement(gw: Gw) -> None:
    async with httpx.AsyncClient(base_url=gw.url) as client:
        resp = await client.get("/fhir/metadata")
    assert resp.status_code == 200
    cs = CapabilityStatement.model_validate(resp.json())
    assert cs.fhirVersion == "4.0.1"
    assert cs.rest is not None
    [rest] = cs.rest
    assert rest.resource is not None and rest.interaction is not None
    types = {r.type: {i.code for i in r.interaction or []} for r in rest.resource}
    assert types == {
        "Patient": {"create"},
        **{
            t: {"create", "read", "search-type"}
            for t in ("Observation", "DiagnosticReport", "ImagingStudy", "ServiceRequest")
        },
        "DetectedIssue": {"read", "search-type"},
    }
    assert {i.code for i in rest.interaction} == {"batch", "transaction"}
    params = {r.type: {p.name for p in r.searchParam or []} for r in rest.resource if r.searchParam}
    for t in ("Observation", "DiagnosticReport", "ServiceRequest"):
        assert {"patient", "code", "date", "category", "_lastUpdated", "_count", "_summary"} <= (
            params[t]
        )
    assert "implicated" in params["DetectedIssue"]
    [report] = [r for r in rest.resource if r.type == "DiagnosticReport"]
    assert report.searchInclude == ["DiagnosticReport:result"]


async def test_metrics_count_what_happened(gw: Gw) -> None:
    await post(gw, "/fhir/Observation", dumps(observation(gw.inst)))
    await post(gw, "/fhir/Observation", b"{oops")
    async with httpx.AsyncClient(base_url=gw.url) as client:
        text = (await client.get("/metrics")).text
        ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert (
        'mrhub_ingest_resources_total{outcome="accepted",resource_type="Observation"} 1.0' in text
    )
    assert 'mrhub_ingest_rejections_total{reason="malformed-json"} 1.0' in text
    assert 'mrhub_ingest_requests_total{route="/fhir/{type}",status_class="2xx"} 1.0' in text
    assert "mrhub_ingest_kafka_publish_duration_seconds_count" in text
    assert "MZ0001" not in text


# --------------------------------------------------------------------------- broker down


async def test_broker_down_gives_503_and_nothing_half_written(
    gw: Gw, kafka_broker: LocalBroker
) -> None:
    single = dumps(observation(gw.inst, report_no="LR-DOWN-1"))
    tx = dumps(bundle("transaction", gw.inst, n_obs=2))
    kafka_broker.stop()
    try:
        for path, body in (("/fhir/Observation", single), ("/fhir", tx)):
            resp = await post(gw, path, body)
            assert resp.status_code == 503, resp.text
            assert int(resp.headers["Retry-After"]) > 0
            assert outcome(resp)["issue"][0]["code"] == "transient"
        async with httpx.AsyncClient(base_url=gw.url) as client:
            assert (await client.get("/readyz")).status_code == 503
    finally:
        kafka_broker.start(timeout_s=90)
    # once the broker is back, the very same requests succeed
    for path, body in (("/fhir/Observation", single), ("/fhir", tx)):
        for _ in range(10):
            resp = await post(gw, path, body)
            if resp.status_code != 503:
                break
        assert resp.status_code in (200, 201), resp.text
    recs = gw.records(expect=4)
    # exactly one copy of each: the 503 attempts left nothing behind
    assert len(recs) == 4
    assert sum(b"LR-DOWN-1" in r.value for r in recs) == 1


# ------------------------------------------------------------------ message size (issue 14)


@pytest.fixture
async def small_topic_gw(bootstrap: str, unique: str, tmp_path: Path) -> AsyncIterator[Gw]:
    """A gateway whose topic was created (by someone else, earlier) with Kafka's
    ``max.message.bytes`` far below the gateway's own limit."""
    from kafka.admin import KafkaAdminClient, NewTopic

    path = tmp_path / "institutions.yaml"
    shutil.copy(REPO / "config" / "institutions.yaml", path)
    registry = Registry.load(path)
    inst, other = registry.ids[0], registry.ids[1]
    token = issue_token(path, inst)
    topic = f"test.ingest.small.{unique}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics(
            [NewTopic(topic, 1, 1, topic_configs={"max.message.bytes": "100000"})],
            wait_for_metadata=True,
        )
    finally:
        admin.close()
    app = build_app(
        Registry.load(path),
        bootstrap=bootstrap,
        hmac_key=b"test-key",
        max_body_bytes=1024 * 1024,
        publish_timeout_s=10.0,
        topic=topic,
        institutions_path=path,
    )
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield Gw(str(server.make_url("")), topic, bootstrap, inst, other, token, path)
    finally:
        await server.close()


async def test_a_message_kafka_refuses_as_too_large_is_413_never_503(small_topic_gw: Gw) -> None:
    import asyncio

    gw = small_topic_gw
    big = observation(gw.inst)
    big["note"] = [{"text": "x" * 300_000}]
    small = observation(gw.inst)
    # sent together, so that they may share one Kafka transaction: only the big one is refused
    big_resp, small_resp = await asyncio.gather(
        post(gw, "/fhir/Observation", dumps(big)), post(gw, "/fhir/Observation", dumps(small))
    )
    assert big_resp.status_code == 413, big_resp.text
    assert "Retry-After" not in big_resp.headers
    [issue] = outcome(big_resp)["issue"]
    assert issue["details"]["coding"][0]["code"] == "too-large"
    assert issue["expression"] == ["Observation"]
    assert small_resp.status_code == 201, small_resp.text
    [rec] = gw.records(expect=1)
    assert Envelope.from_bytes(rec.value).payload["resource"]["identifier"] == small["identifier"]


@pytest.fixture
async def tight_gw(bootstrap: str, unique: str, tmp_path: Path) -> AsyncIterator[Gw]:
    """A gateway whose Kafka message limit (100 kB) is below its body limit (256 KiB)."""
    path = tmp_path / "institutions.yaml"
    shutil.copy(REPO / "config" / "institutions.yaml", path)
    registry = Registry.load(path)
    inst, other = registry.ids[0], registry.ids[1]
    token = issue_token(path, inst)
    topic = f"test.ingest.tight.{unique}"
    create_topic(bootstrap, topic, 1)
    app = build_app(
        Registry.load(path),
        bootstrap=bootstrap,
        hmac_key=b"test-key",
        max_body_bytes=256 * 1024,
        max_message_bytes=100_000,
        topic=topic,
        institutions_path=path,
    )
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield Gw(str(server.make_url("")), topic, bootstrap, inst, other, token, path)
    finally:
        await server.close()


async def test_a_resource_over_the_message_limit_is_413_naming_it(tight_gw: Gw) -> None:
    gw = tight_gw
    big = observation(gw.inst)
    big["note"] = [{"text": "x" * 150_000}]
    resp = await post(gw, "/fhir/Observation", dumps(big))
    assert resp.status_code == 413, resp.text
    [issue] = outcome(resp)["issue"]
    assert (issue["details"]["coding"][0]["code"], issue["expression"]) == (
        "too-large",
        ["Observation"],
    )

    doc = bundle("batch", gw.inst, n_obs=2)
    doc["entry"][2]["resource"]["note"] = [{"text": "x" * 150_000}]
    resp = await post(gw, "/fhir", dumps(doc))
    assert resp.status_code == 200, resp.text
    answer = resp.json()["entry"]
    assert [e["response"]["status"][:3] for e in answer] == ["201", "201", "413"]
    [issue] = answer[2]["response"]["outcome"]["issue"]
    assert issue["expression"] == ["Bundle.entry[2].resource"]
    assert len(gw.records(expect=2)) == 2

    doc["type"] = "transaction"
    resp = await post(gw, "/fhir", dumps(doc))
    assert resp.status_code == 413, resp.text
    assert [i["expression"] for i in outcome(resp)["issue"]] == [["Bundle.entry[2].resource"]]


def test_topics_are_created_for_body_sized_messages_and_small_ones_reported(
    bootstrap: str, unique: str
) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic

    from services.common.kafka_admin import create_topics
    from services.common.settings import Settings
    from services.common.topics import TopicSpec, max_message_bytes

    fresh = TopicSpec(f"test.size.fresh.{unique}", key="k", description="d", partitions=1)
    old = TopicSpec(f"test.size.old.{unique}", key="k", description="d", partitions=1)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics(
            [NewTopic(old.name, 1, 1, topic_configs={"max.message.bytes": "1048588"})],
            wait_for_metadata=True,
        )
    finally:
        admin.close()
    limit = max_message_bytes(Settings.model_validate({"ingest": {"max_body_bytes": 4 << 20}}))
    results = {
        r.name: r
        for r in create_topics(
            bootstrap,
            [fresh, old],
            default_partitions=1,
            replication_factor=1,
            max_message_bytes=limit,
        )
    }
    assert results[fresh.name].created and results[fresh.name].note == ""
    assert not results[old.name].created
    assert "max.message.bytes is 1048588" in results[old.name].note
    again = create_topics(
        bootstrap, [fresh], default_partitions=1, replication_factor=1, max_message_bytes=limit
    )
    assert again[0].note == ""  # created with the limit: nothing to report


async def test_public_base_url_is_the_only_source_of_urls(
    bootstrap: str, unique: str, tmp_path: Path
) -> None:
    path = tmp_path / "institutions.yaml"
    shutil.copy(REPO / "config" / "institutions.yaml", path)
    inst = Registry.load(path).ids[0]
    token = issue_token(path, inst)
    topic = f"test.ingest.base.{unique}"
    create_topic(bootstrap, topic, 1)
    app = build_app(
        Registry.load(path),
        bootstrap=bootstrap,
        hmac_key=b"test-key",
        max_body_bytes=256 * 1024,
        topic=topic,
        institutions_path=path,
        public_base_url="https://hub.example/",
    )
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with httpx.AsyncClient(base_url=str(server.make_url("")), timeout=30) as client:
            evil = {"Host": "evil.example", "X-Forwarded-Host": "evil.example"}
            resp = await client.post(
                "/fhir/Observation",
                content=dumps(observation(inst)),
                headers={"Authorization": f"Bearer {token}", "Content-Type": FHIR, **evil},
            )
            assert resp.status_code == 201, resp.text
            assert resp.headers["Location"].startswith("https://hub.example/fhir/Observation/")
            meta = await client.get("/fhir/metadata", headers=evil)
            assert meta.json()["implementation"]["url"] == "https://hub.example/fhir"
            assert "evil.example" not in meta.text
    finally:
        await server.close()
