"""The streaming workers' Kafka producer: what ``MRHUB_KAFKA__PRODUCER_LINGER_MS`` sets and the
hub's partitioner reach the aiokafka producers each worker sends its outputs with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services.common.faust_app import make_app
from services.common.partitioner import PARTITIONER
from services.common.settings import KafkaSettings, Settings


def _producer(tmp_path: Path, **kafka: object) -> Any:
    settings = Settings(
        state_dir=tmp_path,
        kafka=KafkaSettings(bootstrap_servers="127.0.0.1:9", **kafka),  # type: ignore[arg-type]
    )
    return make_app("bench_probe", settings, web_port=6066).producer


def _linger_ms(tmp_path: Path, **kafka: object) -> int:
    # faust hands its producer's linger_ms to AIOKafkaProducer(linger_ms=...)
    return int(_producer(tmp_path, **kafka).linger_ms)


def test_a_worker_batches_its_outputs_for_a_hundred_ms_by_default(tmp_path: Path) -> None:
    assert _linger_ms(tmp_path) == 100


def test_the_linger_setting_reaches_the_producer(tmp_path: Path) -> None:
    assert _linger_ms(tmp_path, producer_linger_ms=0) == 0
    assert _linger_ms(tmp_path, producer_linger_ms=20) == 20


def test_a_negative_linger_is_refused() -> None:
    with pytest.raises(ValueError, match="producer_linger_ms"):
        KafkaSettings(producer_linger_ms=-1)


def test_a_worker_partitions_with_the_hubs_murmur2(tmp_path: Path) -> None:
    """faust passes its producer's partitioner to every AIOKafkaProducer it makes (the
    transactional ones included): the C murmur2, not aiokafka's pure-Python default."""
    producer = _producer(tmp_path)
    assert producer.partitioner is PARTITIONER
    assert producer._settings_default()["partitioner"] is PARTITIONER
