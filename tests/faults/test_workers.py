"""Several workers per service (issue 18): a worker stopped with SIGTERM mid-stream commits
what it processed, leaves its consumer group at once and exits 0, and the other worker goes
on from exactly there.

The hub runs two patient-index and two recognition workers on the session broker; a
simulated day is posted through the gateway, and halfway through its results one patient
index worker, halfway through its orders one recognition worker, get SIGTERM (as Kubernetes
or systemd stop a process, and `mrhub up` restarts one).

"Nothing it had processed is processed again" is counted on the topics the stopped workers
write: a record a worker wrote in a transaction that was not committed (aborted, as after a
kill -9) stays in the log, visible to a ``read_uncommitted`` reader and skipped by a
``read_committed`` one, and the survivor then writes the same effect again. So every record
the workers wrote since the test began must be a committed one: the two readers count the
same records.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

from mrhub_tools.simulate.runner import end_offsets
from services.common.faust_app import app_id_of
from services.common.harness import wait_until
from services.common.kafka_security import kafka_python_options
from services.common.topics import DECISION_MADE, IDENTITY_LINKED, ORDER_PLACED, RESULT_INDEXED
from tests.faults.conftest import SimulationThread, assert_exactly_one_decision_each, prepare_region
from tests.hub import Hub, start_hub

PATIENTS = 150
#: what the patient index and recognition write, each record once per effect
WRITTEN = (IDENTITY_LINKED.name, RESULT_INDEXED.name, ORDER_PLACED.name, DECISION_MADE.name)
# kafka-python cannot decode faust's member metadata and logs each member's bytes whole; the
# count of members is all these tests read
logging.getLogger("kafka.admin._groups").setLevel(logging.ERROR)


def group_members(bootstrap: str, service: str) -> int:
    """How many members the service's consumer group has, as the broker sees it now."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, **kafka_python_options())
    try:
        group = admin.describe_groups([app_id_of(service)])[app_id_of(service)]
    finally:
        admin.close()
    return len(group["members"])


def records(bootstrap: str, topic: str, start: dict[int, int], isolation: str) -> int:
    """How many records of ``topic`` after ``start`` a reader with ``isolation`` reads."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        isolation_level=isolation,
        consumer_timeout_ms=1000,
        **kafka_python_options(),
    )
    try:
        tps = [TopicPartition(topic, p) for p in sorted(start)]
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, start[tp.partition])
        end = consumer.end_offsets(tps)  # the high watermark, or the last stable offset
        count = 0

        def at_end() -> bool:
            nonlocal count
            for batch in consumer.poll(timeout_ms=500).values():
                count += len(batch)
            return all(consumer.position(tp) >= end[tp] for tp in tps)

        wait_until(at_end, deadline_s=120, what=f"{topic} read to its end ({isolation})")
        return count
    finally:
        consumer.close()


def sigterm_and_assert_it_left(hub: Hub, name: str, service: str) -> None:
    """SIGTERM ``name``: it exits 0, and by then it has left its consumer group (the broker
    answered its LeaveGroup before it exited; waiting out the session timeout would list it
    for 10 s more)."""
    others = len(hub.names(service)) - 1
    wait_until(
        lambda: group_members(hub.bootstrap, service) == others + 1,
        deadline_s=120,
        what=f"{service}'s group to count every worker",
    )
    code = hub.sigterm(name)
    assert code == 0, hub.log(name).read_text()[-3000:]
    assert group_members(hub.bootstrap, service) == others, hub.digest()


@pytest.mark.timeout(900)
def test_a_worker_stopped_with_sigterm_commits_leaves_its_group_and_nothing_is_done_twice(
    bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    tmp = tmp_path_factory.mktemp("sigterm")
    region = prepare_region(tmp)
    hub = start_hub(bootstrap, tmp, region / "institutions.yaml", workers=2)
    starts: dict[str, dict[int, int]] = {t: end_offsets(bootstrap, t) for t in WRITTEN}
    try:
        sim = SimulationThread(
            region, url=hub.url, bootstrap=bootstrap, patients=PATIENTS, card_region="140295",
            rate=40,
        )  # fmt: skip
        sim.at("results", 0.4)
        sigterm_and_assert_it_left(hub, "patient_index-1", "patient_index")
        sim.at("orders", 0.4)
        sigterm_and_assert_it_left(hub, "recognition-1", "recognition")
        summary = sim.result()
    finally:
        hub.stop()
    assert_exactly_one_decision_each(summary, hub)
    written: dict[str, Any] = {
        topic: (
            records(bootstrap, topic, start, "read_uncommitted"),
            records(bootstrap, topic, start, "read_committed"),
        )
        for topic, start in starts.items()
    }
    assert all(every == committed for every, committed in written.values()), written
    assert written[DECISION_MADE.name][1] >= summary["orders"]
