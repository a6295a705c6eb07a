"""The local three-node cluster is a cluster a province could trust: three copies of every
topic, writes acknowledged only once two copies hold them, and one lost broker survived.

Runs on the session's :func:`tests.conftest.kafka_cluster` (real brokers, real replication).
A test that takes nodes down starts them again before it ends."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from kafka import KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient
from kafka.errors import KafkaError

from services.common.broker import LocalCluster, cluster_replication
from services.common.kafka_admin import create_topics, partition_states
from services.common.topics import ALL_TOPICS, TopicSpec
from tests.cluster import busiest_leader, whole_again
from tests.support import consume_all

pytestmark = pytest.mark.integration

KAFKA_OWN = ["__consumer_offsets", "__transaction_state"]


def _topic(name: str) -> TopicSpec:
    return TopicSpec(name, key="test", description="a test topic")


async def _use_transactions_and_groups(bootstrap: str, topic: str) -> None:
    """A committed transaction and a group's committed offset: Kafka creates its offsets
    topic and transaction state log on first use."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, transactional_id=f"test-{uuid.uuid4().hex}"
    )
    await producer.start()
    try:
        async with producer.transaction():
            await producer.send_and_wait(topic, b"v", key=b"k")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"test-{uuid.uuid4().hex}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        await consumer.getmany(timeout_ms=10_000)
        await consumer.commit()
    finally:
        await consumer.stop()


def test_every_topic_and_kafkas_own_logs_have_three_copies_and_need_two(
    kafka_cluster: LocalCluster,
) -> None:
    bootstrap = kafka_cluster.bootstrap
    factor, min_isr = cluster_replication(kafka_cluster.size)
    assert (factor, min_isr) == (3, 2)
    create_topics(bootstrap, ALL_TOPICS, default_partitions=3, replication_factor=factor)
    asyncio.run(_use_transactions_and_groups(bootstrap, ALL_TOPICS[0].name))

    names = [t.name for t in ALL_TOPICS] + KAFKA_OWN
    states = partition_states(bootstrap, names)
    assert {s.topic for s in states} == set(names)
    thin = [s for s in states if len(s.replicas) != 3 or len(set(s.replicas)) != 3]
    assert not thin, thin[:5]
    # and every copy is on another broker: the partitions' leaders are spread over all three
    assert {s.leader for s in states} == {1, 2, 3}

    admin = KafkaAdminClient(bootstrap_servers=bootstrap.split(","))
    try:
        found: Any = admin.describe_configs(
            [
                ConfigResource(ConfigResourceType.TOPIC, n, configs={"min.insync.replicas": None})
                for n in names
            ],
            config_filter="all",
        )
    finally:
        admin.close()
    by_topic = found["topic"]
    assert {n: by_topic[n]["min.insync.replicas"]["value"] for n in names} == {
        n: "2" for n in names
    }


def _send_all(bootstrap: str, topic: str, values: list[bytes], timeout_s: float) -> list[bytes]:
    """Send ``values`` with acks=all; the ones the cluster acknowledged."""
    producer = KafkaProducer(
        bootstrap_servers=bootstrap.split(","),
        acks="all",
        retries=2**31 - 1,
        delivery_timeout_ms=int(timeout_s * 1000),
        request_timeout_ms=min(int(timeout_s * 1000), 10_000),
        linger_ms=0,
    )
    try:
        futures = [(v, producer.send(topic, key=v, value=v)) for v in values]
        acked = []
        deadline = time.monotonic() + timeout_s + 10  # one for all: a future may never settle
        for value, fut in futures:
            try:
                fut.get(timeout=max(0.1, deadline - time.monotonic()))
                acked.append(value)
            except KafkaError:
                pass
        return acked
    finally:
        with contextlib.suppress(KafkaError):  # what was never acknowledged stays unflushed
            producer.close(timeout=1)


@pytest.mark.timeout(600)
def test_acks_all_survives_one_lost_broker_and_is_refused_with_two(
    kafka_cluster: LocalCluster,
) -> None:
    bootstrap = kafka_cluster.bootstrap
    topic = f"test-acks-{uuid.uuid4().hex[:8]}"
    create_topics(bootstrap, [_topic(topic)], default_partitions=3, replication_factor=3)
    before = [f"before-{i}".encode() for i in range(30)]
    assert _send_all(bootstrap, topic, before, 30) == before
    try:
        first = busiest_leader(kafka_cluster, [topic])
        kafka_cluster.node(first).kill()
        one_down = [f"one-down-{i}".encode() for i in range(30)]
        # the dead leader's partitions move to a follower that had every acknowledged write
        assert _send_all(bootstrap, topic, one_down, 60) == one_down

        # a controlled shutdown: the node leaves every ISR before it goes, so the last node
        # leads every partition alone, and would take writes were min.insync.replicas 1
        second = next(i for i in (1, 2, 3) if i != first)
        kafka_cluster.node(second).stop()
        two_down = [f"two-down-{i}".encode() for i in range(6)]
        # one copy left: an acks=all write is never acknowledged
        assert _send_all(bootstrap, topic, two_down, 8) == []
    finally:
        whole_again(kafka_cluster, [topic])
    # nothing that was acknowledged is missing, from any partition, once they are back
    values = {r.value for r in consume_all(bootstrap, topic, timeout_s=60)}
    assert set(before + one_down) <= values
