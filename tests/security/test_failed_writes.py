"""A write that fails is never swallowed: when Kafka refuses a worker's table change, the worker
stops at once (exit code 75, one log line saying why) instead of acknowledging events whose
effects were never stored; started again, it processes them again and nothing is lost.

The failure is real: the recognition worker's changelog topics are set to refuse any message
over 64 bytes while a result is posted.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

from services.common.faust_app import EXIT_WRITE_FAILED
from tests.fhir_samples import gb11643, observation
from tests.security.conftest import CARD_SYSTEM, A, B, SecurityHub

#: 身份证 numbers of this module only (born 1970-01-02 in Taiyuan)
_SEQ = iter(range(random.randint(100, 500) | 1, 999, 2))


def _card() -> str:
    return gb11643(f"14010519700102{next(_SEQ):03d}")


def _changelogs(admin: KafkaAdminClient) -> list[str]:
    return sorted(
        t
        for t in admin.list_topics()
        if t.startswith("mrhub-recognition-") and t.endswith("-changelog")
    )


def _set_limit(admin: KafkaAdminClient, topics: list[str], limit: int | None) -> None:
    """Set (or, with None, reset to the default) ``max.message.bytes`` on ``topics``; their
    other settings stay (incremental alter)."""
    if limit is None:
        admin.reset_configs(
            [
                ConfigResource(ConfigResourceType.TOPIC, t, configs=["max.message.bytes"])
                for t in topics
            ]
        )
        return
    admin.alter_configs(
        [
            ConfigResource(ConfigResourceType.TOPIC, t, configs={"max.message.bytes": str(limit)})
            for t in topics
        ]
    )


@pytest.fixture
def admin(security_hub: SecurityHub) -> Iterator[KafkaAdminClient]:
    client = KafkaAdminClient(bootstrap_servers=security_hub.bootstrap)
    try:
        yield client
    finally:
        client.close()


def _lab_result(inst: str, card: str) -> dict[str, Any]:
    doc = observation(inst, subject={"identifier": {"system": CARD_SYSTEM, "value": card}})
    taken = datetime.now(UTC) - timedelta(hours=1)
    doc["effectiveDateTime"] = taken.isoformat()
    doc["issued"] = (taken + timedelta(minutes=30)).isoformat()
    return doc


def _check(hub: SecurityHub, inst: str, card: str) -> httpx.Response:
    return httpx.get(
        f"{hub.url('recognition')}/recognition/check",
        params={"patient": f"{CARD_SYSTEM}|{card}", "code": "http://loinc.org|2823-3"},
        headers=hub.auth(inst),
        timeout=30,
    )


def test_a_refused_table_write_stops_the_worker_and_loses_nothing(
    security_hub: SecurityHub, admin: KafkaAdminClient
) -> None:
    hub = security_hub
    topics = _changelogs(admin)
    assert topics, "the recognition worker has no changelog topics"
    card = _card()
    _set_limit(admin, topics, 64)
    try:
        hub.post(A, "/fhir/Observation", _lab_result(A, card))
        proc = hub.procs["recognition"]
        deadline = time.monotonic() + 120
        while proc.poll() is None:
            assert time.monotonic() < deadline, "the worker went on after a refused write"
            time.sleep(0.3)
        assert proc.returncode == EXIT_WRITE_FAILED
        log = hub.log("recognition").read_text(errors="replace")
        assert "a write failed; stopping" in log
        assert card not in log
    finally:
        _set_limit(admin, topics, None)
    # started again (as mrhub up, systemd or Kubernetes would), it stores what it had
    # refused to acknowledge: the result is there for the next hospital's check
    hub.start("recognition")
    hub.wait_ready("recognition")
    deadline = time.monotonic() + 120
    while True:
        resp = _check(hub, B, card)
        assert resp.status_code == 200, resp.text
        if resp.json()["decision"] == "recognisable":
            break
        assert time.monotonic() < deadline, f"the result was lost: {resp.text}"
        time.sleep(0.5)
