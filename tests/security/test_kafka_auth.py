"""The hub's Kafka clients authenticate when the cluster demands it: a broker that takes only
SASL/PLAIN, a gateway and a patient index configured with ``MRHUB_KAFKA__SECURITY_PROTOCOL``
and friends, a resource posted, indexed and read back — and a client without the password,
or with a wrong one, gets nothing from that broker."""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.common import kafka_security
from services.common.broker import LocalBroker, free_port
from services.common.envelope import Envelope
from services.common.institutions import Registry, issue_token
from services.common.kafka_admin import cluster_answers, create_topics
from services.common.kafka_read import read_topic
from services.common.settings import KafkaSettings
from services.common.topics import ALL_TOPICS, RESULT_INDEXED
from tests.conftest import REPO, _cache_dir
from tests.fhir_samples import dumps, gb11643, observation
from tests.security.conftest import CARD_SYSTEM
from tests.support import run_module, stop_process, wait_ready

USER, PASSWORD = "mrhub", "hub-secret-" + uuid.uuid4().hex[:8]
SASL_ENV = {
    "MRHUB_KAFKA__SECURITY_PROTOCOL": "SASL_PLAINTEXT",
    "MRHUB_KAFKA__SASL_MECHANISM": "PLAIN",
    "MRHUB_KAFKA__SASL_USERNAME": USER,
    "MRHUB_KAFKA__SASL_PASSWORD": PASSWORD,
}


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A broker that admits only SASL/PLAIN users (the hub's, and the broker's own)."""
    saved = {k: os.environ.get(k) for k in SASL_ENV}
    os.environ.update(SASL_ENV)  # the broker's readiness check and this module's clients
    kafka_security._from_environment.cache_clear()
    broker = LocalBroker(
        tmp_path_factory.mktemp("sasl-kafka"),
        _cache_dir(),
        port=0,
        controller_port=0,
        sasl_plain_users={"admin": "admin-" + uuid.uuid4().hex[:8], USER: PASSWORD},
    )
    try:
        info, _ = broker.start(timeout_s=90)
        yield info.bootstrap
    finally:
        broker.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        kafka_security._from_environment.cache_clear()


def _answers_with(bootstrap: str, **kafka: Any) -> bool:
    """Whether a kafka-python admin client with these settings gets the cluster's metadata."""
    from kafka.admin import KafkaAdminClient
    from kafka.errors import KafkaError

    options = kafka_security.kafka_python_options(KafkaSettings(**kafka))
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap,
            request_timeout_ms=3000,
            bootstrap_timeout_ms=3000,
            **options,
        )
    except (KafkaError, OSError, ValueError):
        return False
    try:
        return bool(admin.describe_cluster().get("brokers"))
    except (KafkaError, OSError, ValueError):
        return False
    finally:
        admin.close()


def test_a_client_without_the_password_gets_nothing(sasl_broker: str) -> None:
    assert cluster_answers(sasl_broker)  # the configured (SASL) settings work
    assert _answers_with(
        sasl_broker,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_username=USER,
        sasl_password=PASSWORD,
    )
    assert not _answers_with(sasl_broker, security_protocol="PLAINTEXT")
    assert not _answers_with(
        sasl_broker,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_username=USER,
        sasl_password="wrong",
    )


def test_the_hub_publishes_and_indexes_through_an_authenticated_cluster(
    sasl_broker: str, tmp_path: Path
) -> None:
    registry = tmp_path / "institutions.yaml"
    shutil.copy(REPO / "config" / "institutions.yaml", registry)
    institution = Registry.load(registry).ids[0]
    token = issue_token(registry, institution)
    create_topics(sasl_broker, ALL_TOPICS, default_partitions=1, replication_factor=1)
    ports = {"ingest": free_port(), "patient_index": free_port()}
    env = {
        **SASL_ENV,
        "MRHUB_KAFKA__BOOTSTRAP_SERVERS": sasl_broker,
        "MRHUB_IDENTITY__HMAC_KEY": "sasl-test-hmac-key",
        "MRHUB_INGEST__PORT": str(ports["ingest"]),
        "MRHUB_INSTITUTIONS_PATH": str(registry),
        "MRHUB_PATIENT_INDEX__PORT": str(ports["patient_index"]),
        "MRHUB_TOPIC_PARTITIONS": "1",
        "MRHUB_STATE_DIR": str(tmp_path / "state"),
        "MRHUB_LOG_LEVEL": "INFO",
    }
    procs = {
        name: run_module(["-m", "services.cli", "serve", name], env, tmp_path / f"{name}.log")
        for name in ports
    }
    try:
        for name, port in ports.items():
            wait_ready(f"http://127.0.0.1:{port}/readyz", procs[name], tmp_path / f"{name}.log")
        card = gb11643("14010519700104001")
        doc = observation(
            institution, subject={"identifier": {"system": CARD_SYSTEM, "value": card}}
        )
        resp = httpx.post(
            f"http://127.0.0.1:{ports['ingest']}/fhir/Observation",
            content=dumps(doc),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"},
            timeout=30,
        )
        assert resp.status_code == 201, resp.text
        trace = resp.headers["X-Trace-Id"]
        deadline = time.monotonic() + 120
        while True:
            found = [
                Envelope.from_bytes(r.value)
                for r in read_topic(sasl_broker, RESULT_INDEXED.name, timeout_s=10)
            ]
            if any(e.trace_id == trace for e in found):
                break
            assert time.monotonic() < deadline, (tmp_path / "patient_index.log").read_text()[-3000:]
            time.sleep(0.5)
    finally:
        for proc in procs.values():
            stop_process(proc)
