"""Kafka's default partitioner, with the hash in C.

Every Kafka client puts a keyed message on ``(murmur2(key) & 0x7fffffff) % partitions``
(the Java client's ``Utils.murmur2``, seed ``0x9747b28c``), so a key lands on the same
partition whoever writes it: the gateway, faust's producer, the hub's own producers and a
Java consumer's expectations agree. aiokafka computes that hash in pure Python, about 9 µs
for a 64-byte key: one hash per message the gateway publishes and per output a stage sends
(≈ 4 % of the gateway's and of the patient index's CPU, docs/performance.md).
``murmurhash2`` (Rust, abi3 wheels) gives the same value in about 0.1 µs;
tests/unit/test_partitioner.py holds it equal to aiokafka's and kafka-python's.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Final

from murmurhash2 import murmurhash2

#: the seed of Kafka's murmur2 (org.apache.kafka.common.utils.Utils.murmur2)
KAFKA_SEED: Final = 0x9747B28C


def murmur2(key: bytes) -> int:
    """Kafka's murmur2 of ``key``: an unsigned 32-bit value, as aiokafka's ``murmur2``."""
    return murmurhash2(key, KAFKA_SEED)


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives ``key`` on a topic of ``partitions``."""
    return (murmurhash2(key, KAFKA_SEED) & 0x7FFFFFFF) % partitions


class Murmur2Partitioner:
    """aiokafka's ``DefaultPartitioner`` (same arguments, same choice) with the hash in C:
    pass it as ``AIOKafkaProducer(partitioner=...)`` or faust's ``producer_partitioner``.
    A message without a key goes to a random available partition, as there."""

    def __call__(
        self, key: bytes | None, all_partitions: Sequence[int], available: Sequence[int]
    ) -> int:
        if key is None:
            return random.choice(available or all_partitions)  # noqa: S311 - spreading, not secrecy
        return all_partitions[partition_for(key, len(all_partitions))]


PARTITIONER: Final = Murmur2Partitioner()
