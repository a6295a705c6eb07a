"""The hub's Kafka partitioner puts every key where every other Kafka client does."""

from __future__ import annotations

import collections

from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given, settings
from hypothesis import strategies as st
from kafka.partitioner.default import murmur2 as kafka_python_murmur2

from services.common.partitioner import PARTITIONER, murmur2, partition_for


@settings(max_examples=2000, deadline=None)
@given(key=st.binary(max_size=200), partitions=st.integers(min_value=1, max_value=500))
def test_a_key_lands_where_aiokafka_and_kafka_python_put_it(key: bytes, partitions: int) -> None:
    assert murmur2(key) == aiokafka_murmur2(key)
    assert murmur2(key) & 0x7FFFFFFF == kafka_python_murmur2(key) & 0x7FFFFFFF
    everyone = list(range(partitions))
    expected = DefaultPartitioner()(key, everyone, everyone)
    assert PARTITIONER(key, everyone, everyone) == expected
    assert partition_for(key, partitions) == expected


def test_known_values_of_the_java_client() -> None:
    # org.apache.kafka.common.utils.Utils.murmur2 (values from kafka's UtilsTest), unsigned
    assert murmur2(b"21") & 0xFFFFFFFF == (-973932308) & 0xFFFFFFFF
    assert murmur2(b"foobar") & 0xFFFFFFFF == (-790332482) & 0xFFFFFFFF
    assert murmur2(b"a-little-bit-long-string") & 0xFFFFFFFF == (-985981536) & 0xFFFFFFFF


def test_a_message_without_a_key_goes_to_an_available_partition() -> None:
    chosen = collections.Counter(PARTITIONER(None, [0, 1, 2, 3], [1, 3]) for _ in range(400))
    assert set(chosen) == {1, 3}
    # with no partition available (leaders unknown), any of them, as aiokafka does
    assert {PARTITIONER(None, [0, 1, 2], []) for _ in range(300)} == {0, 1, 2}


def test_a_keyed_message_ignores_which_partitions_are_available() -> None:
    key = b"12140000MB0000000X|Observation|R0001"
    assert PARTITIONER(key, [0, 1, 2, 3, 4, 5], [0]) == partition_for(key, 6)
