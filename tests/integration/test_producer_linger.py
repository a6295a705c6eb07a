"""A worker's producer lingers (``MRHUB_KAFKA__PRODUCER_LINGER_MS``, 100 ms by default)
because under exactly_once the linger is not on a record's way: a transaction's commit
sends every batch still lingering before it ends the transaction, and downstream reads
nothing before that end. This test holds aiokafka to that, against the real broker: with
a linger far longer than the commit's deadline, the commit still delivers at once."""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from tests.support import create_topic

#: far longer than the commit's deadline: a commit that waited for it fails the test (and a
#: failing run still ends within about this long, when the producer stops)
LINGER_MS = 120_000
DEADLINE_S = 30.0


async def _committed_values(bootstrap: str, topic: str, want: int) -> list[bytes]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        values: list[bytes] = []
        deadline = time.monotonic() + DEADLINE_S
        while len(values) < want and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            values += [m.value for msgs in batch.values() for m in msgs if m.value is not None]
        return values
    finally:
        await consumer.stop()


def test_a_commit_delivers_what_lingers_without_waiting_for_the_linger(
    bootstrap: str, unique: str
) -> None:
    topic = f"test.linger.{unique}"
    create_topic(bootstrap, topic, 2)

    async def run() -> list[bytes]:
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            transactional_id=f"test-linger-{unique}",
            linger_ms=LINGER_MS,
            acks="all",
        )
        await producer.start()
        try:
            await producer.begin_transaction()
            sent = [
                await producer.send(topic, f"record {i}".encode(), key=str(i).encode())
                for i in range(5)
            ]
            # nothing is sent yet: every batch lingers
            assert not any(f.done() for f in sent)
            await asyncio.wait_for(producer.commit_transaction(), DEADLINE_S)
            assert all(f.done() and f.exception() is None for f in sent)
        finally:
            await producer.stop()
        return await _committed_values(bootstrap, topic, 5)

    values = asyncio.run(run())
    assert sorted(values) == [f"record {i}".encode() for i in range(5)]
