"""Read a whole topic once, from the beginning to the end offsets seen at the start.

For command-line tools (``mrhub report``, the simulator's tally): committed data only
(``read_committed``), no consumer group, nothing committed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from services.common.kafka_security import kafka_python_options

__all__ = ["read_range", "read_topic"]


def read_range(
    consumer: Any,
    start: Mapping[Any, int],
    end: Mapping[Any, int],
    *,
    timeout_s: float,
    poll_ms: int = 500,
    what: str = "the topics",
) -> Iterator[tuple[Any, Any]]:
    """Yield ``(TopicPartition, ConsumerRecord)`` of every committed record of each partition
    of ``end`` from its ``start`` offset (0 when absent) up to, not including, its ``end``
    offset, assigning ``consumer`` to those partitions. Raise :class:`TimeoutError` when the
    time runs out first (everything read until then has been yielded)."""
    tps = list(end)
    consumer.assign(tps)
    for tp in tps:
        consumer.seek(tp, start.get(tp, 0))
    remaining = {tp for tp in tps if start.get(tp, 0) < end[tp]}
    deadline = time.monotonic() + timeout_s
    while remaining and time.monotonic() < deadline:
        for tp, records in consumer.poll(timeout_ms=poll_ms).items():
            for record in records:
                if record.offset < end[tp]:
                    yield tp, record
        # transaction markers take offsets too: compare positions, not record counts
        remaining = {tp for tp in remaining if consumer.position(tp) < end[tp]}
    if remaining:
        raise TimeoutError(f"{what}: not read to the end within {timeout_s:.0f} s")


def read_topic(bootstrap: str, topic: str, *, timeout_s: float = 120.0) -> Iterator[Any]:
    """Yield every committed record of ``topic`` (``ConsumerRecord``: key, value, headers,
    timestamp…) up to the end offsets it had when reading began. A topic that does not
    exist yields nothing."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        isolation_level="read_committed",
        consumer_timeout_ms=1000,
        **kafka_python_options(),
    )
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        if not parts:
            return
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        start = consumer.beginning_offsets(tps)
        end = consumer.end_offsets(tps)
        for _tp, record in read_range(consumer, start, end, timeout_s=timeout_s, what=topic):
            yield record
    finally:
        consumer.close()
