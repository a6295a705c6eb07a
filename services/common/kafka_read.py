"""Read a whole topic once, from the beginning to the end offsets seen at the start.

For command-line tools (``mrhub report``, the simulator's tally): committed data only
(``read_committed``), no consumer group, nothing committed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from services.common.kafka_security import kafka_python_options

__all__ = ["read_topic"]


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
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        remaining = {tp for tp in tps if end[tp] > 0}
        deadline = time.monotonic() + timeout_s
        while remaining and time.monotonic() < deadline:
            for tp, records in consumer.poll(timeout_ms=500).items():
                for record in records:
                    if record.offset < end[tp]:
                        yield record
            # transaction markers take offsets too: compare positions, not record counts
            remaining = {tp for tp in remaining if consumer.position(tp) < end[tp]}
        if remaining:
            raise TimeoutError(f"{topic} was not read to its end within {timeout_s:.0f} s")
    finally:
        consumer.close()
