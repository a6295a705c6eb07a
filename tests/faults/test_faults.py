"""Faults in the middle of a simulated stream: the hub loses nothing and doubles nothing.

Each test starts its own hub (gateway, patient index, recognition as real processes) against
a simulated region, posts a small simulated day through it and breaks something halfway:
a worker killed with SIGKILL, the broker restarted, one of two recognition workers dying, a
poison message on the order topic. Every order must still get exactly one decision, and
the decisions must agree with the ground truth as they do without a fault. The broker and
its topics are the session's (except for the broker-restart test, which has its own), so
each test's patients carry 身份证 numbers of a region code no other test uses.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import httpx
import pytest

from mrhub_tools.simulate.runner import end_offsets, read_topic
from services.common.broker import LocalBroker
from services.common.topics import DECISION_MADE, ORDER_PLACED
from tests.conftest import _cache_dir
from tests.faults.conftest import (
    SimulationThread,
    assert_exactly_one_decision_each,
    prepare_region,
    wait_for,
)
from tests.hub import start_hub
from tests.support import produce

PATIENTS = 150


@pytest.mark.timeout(900)
def test_a_poison_order_is_dead_lettered_and_the_stream_goes_on(
    bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    tmp = tmp_path_factory.mktemp("poison")
    region = prepare_region(tmp)
    hub = start_hub(bootstrap, tmp, region / "institutions.yaml")
    dlq = "mrhub.recognition.dead-letter.v1"
    start = end_offsets(bootstrap, dlq)
    poison = [
        (b"MP-poison-1", b"\xff\xfe not json at all"),
        (b"MP-poison-2", json.dumps({"payload": {"kind": "order"}}).encode()),  # no envelope
    ]
    try:
        sim = SimulationThread(
            region, url=hub.url, bootstrap=bootstrap, patients=PATIENTS, card_region="140294",
            rate=40,
        )  # fmt: skip
        sim.at("orders", 0.3)
        produce(bootstrap, ORDER_PLACED.name, poison)
        summary = sim.result()
    finally:
        hub.stop()
    assert_exactly_one_decision_each(summary, hub)
    dead = read_topic(bootstrap, dlq, start, lambda _trace: True, to_end=True, stall_s=30)
    letters = [json.loads(r.value) for r in dead]
    originals = {base64.b64decode(d["original_base64"]) for d in letters if d["stage"] == "orders"}
    assert {value for _, value in poison} <= originals


@pytest.mark.timeout(900)
def test_a_broker_restart_during_ingest_is_answered_503_and_retried_without_loss(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    tmp = tmp_path_factory.mktemp("broker-restart")
    # a broker of this test's own: stopping the session's would break the other tests
    broker = LocalBroker(tmp / "kafka", _cache_dir(), port=0, controller_port=0)
    info, _ = broker.start(timeout_s=90)
    region = prepare_region(tmp)
    hub = start_hub(info.bootstrap, tmp, region / "institutions.yaml")
    try:
        sim = SimulationThread(
            region, url=hub.url, bootstrap=info.bootstrap, patients=PATIENTS,
            card_region="140292", rate=30,
        )  # fmt: skip
        sim.at("results", 0.3)
        broker.stop()
        # the gateway cannot publish: it answers 503 (Retry-After) and the simulator retries
        wait_for(lambda: sim.progress.retried_503 > 0, 120, "a 503 from the gateway", sim)
        ready = httpx.get(f"{hub.url}/readyz", timeout=10)
        assert ready.status_code == 503
        broker.start(timeout_s=90)  # same data directory, same ports
        summary = sim.result()
        for name, proc in hub.procs.items():
            assert proc.poll() is None, f"{name} exited: {hub.log(name).read_text()[-2000:]}"
        assert hub.restarts == [], hub.digest()  # none exited and was started again
    finally:
        hub.stop()
        broker.stop()
    assert summary["requests"]["retried_503"] > 0
    assert summary["requests"]["unexpected"] == 0, summary["requests"]["unexpected_samples"]
    assert_exactly_one_decision_each(summary, hub)


@pytest.mark.timeout(900)
def test_workers_killed_with_sigkill_mid_stream_lose_and_double_nothing(
    bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    tmp = tmp_path_factory.mktemp("kill9")
    region = prepare_region(tmp)
    hub = start_hub(bootstrap, tmp, region / "institutions.yaml")
    try:
        sim = SimulationThread(
            region, url=hub.url, bootstrap=bootstrap, patients=PATIENTS, card_region="140291",
            rate=40,
        )  # fmt: skip
        sim.at("results", 0.4)
        hub.kill9("patient_index")  # mid-ingest: records in flight, transactions open
        hub.start("patient_index", wait=False)
        sim.at("orders", 0.4)
        hub.kill9("recognition")  # mid-decisions
        hub.start("recognition", wait=False)
        summary = sim.result()
    finally:
        hub.stop()
    assert_exactly_one_decision_each(summary, hub)


@pytest.mark.timeout(900)
def test_when_one_of_two_recognition_workers_dies_the_other_takes_over_its_patients(
    bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    tmp = tmp_path_factory.mktemp("two-workers")
    region = prepare_region(tmp)
    hub = start_hub(
        bootstrap, tmp, region / "institutions.yaml", recognition_workers=("rec-a", "rec-b")
    )
    orders_from = end_offsets(bootstrap, ORDER_PLACED.name)
    decisions_from = end_offsets(bootstrap, DECISION_MADE.name)
    try:
        sim = SimulationThread(
            region, url=hub.url, bootstrap=bootstrap, patients=PATIENTS, card_region="140293",
            rate=40,
        )  # fmt: skip
        sim.at("orders", 0.3)
        hub.kill9("rec-b")  # not restarted: rec-a must take its partitions and their state
        killed_at_ms = time.time() * 1000
        summary = sim.result()
    finally:
        hub.stop()
    assert_exactly_one_decision_each(summary, hub)
    # after the takeover every partition is rec-a's: a decision written after rec-b died (a
    # record's CreateTime is when its producer sent it; rec-b's aborted ones are never read)
    # can only be rec-a's, and such decisions answer orders of every partition of the topic
    orders = read_topic(bootstrap, ORDER_PLACED.name, orders_from, _any, to_end=True, stall_s=30)
    partition_of = {_trace(r): r.partition for r in orders}
    decisions = read_topic(
        bootstrap, DECISION_MADE.name, decisions_from, _any, to_end=True, stall_s=30
    )
    by_survivor = {partition_of.get(_trace(r)) for r in decisions if r.timestamp > killed_at_ms}
    assert by_survivor >= set(orders_from), (sorted(by_survivor, key=str), hub.digest())


def _any(_trace_id: str | None) -> bool:
    return True


def _trace(record: Any) -> str | None:
    """The trace id header of a record: an order's decision carries the order's."""
    return next((bytes(v).decode() for k, v in record.headers or () if k == "trace_id"), None)
