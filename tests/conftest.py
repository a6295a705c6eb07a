"""Shared fixtures. Integration fixtures start one real Kafka broker per test session."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.broker import BrokerInfo, LocalBroker, LocalCluster
from services.common.settings import Settings

REPO = Path(__file__).resolve().parent.parent


def _cache_dir() -> Path:
    return Path(os.environ.get("MRHUB_CACHE_DIR", str(Settings().cache_dir)))


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    """A genuine single-node KRaft broker on free ports, with its own data directory."""
    data_dir = tmp_path_factory.mktemp("kafka")
    broker = LocalBroker(data_dir, _cache_dir(), port=0, controller_port=0)
    try:
        broker.start(timeout_s=90)
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def broker_info(kafka_broker: LocalBroker) -> BrokerInfo:
    info = kafka_broker.status()
    assert info is not None, "the session broker is not running"
    return info


@pytest.fixture(scope="session")
def bootstrap(broker_info: BrokerInfo) -> str:
    return broker_info.bootstrap


@pytest.fixture
def unique() -> str:
    """A suffix that gives a test its own topics and app ids."""
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def kafka_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A genuine three-node KRaft cluster (replication factor 3, min.insync.replicas 2) on
    free ports, started when a test first asks for it. A test that stops or kills a node
    starts it again before it ends (:func:`tests.cluster.whole_again`)."""
    cluster = LocalCluster(
        tmp_path_factory.mktemp("cluster"), _cache_dir(), nodes=3, port=0, controller_port=0
    )
    try:
        cluster.start(timeout_s=180)
        yield cluster
    finally:
        cluster.stop()
