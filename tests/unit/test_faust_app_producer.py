"""The streaming workers' Kafka producer batches: what ``MRHUB_KAFKA__PRODUCER_LINGER_MS``
sets reaches the aiokafka producer each worker sends its outputs with."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.faust_app import make_app
from services.common.settings import KafkaSettings, Settings


def _linger_ms(tmp_path: Path, **kafka: object) -> int:
    settings = Settings(
        state_dir=tmp_path,
        kafka=KafkaSettings(bootstrap_servers="127.0.0.1:9", **kafka),  # type: ignore[arg-type]
    )
    app = make_app("bench_probe", settings, web_port=6066)
    # faust hands its producer's linger_ms to AIOKafkaProducer(linger_ms=...)
    return int(app.producer.linger_ms)


def test_a_worker_batches_its_outputs_for_five_ms_by_default(tmp_path: Path) -> None:
    assert _linger_ms(tmp_path) == 5


def test_the_linger_setting_reaches_the_producer(tmp_path: Path) -> None:
    assert _linger_ms(tmp_path, producer_linger_ms=0) == 0
    assert _linger_ms(tmp_path, producer_linger_ms=20) == 20


def test_a_negative_linger_is_refused() -> None:
    with pytest.raises(ValueError, match="producer_linger_ms"):
        KafkaSettings(producer_linger_ms=-1)
