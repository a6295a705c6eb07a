"""Corrections to faust-streaming applied once, before any app starts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka

_applied = False


def apply() -> None:
    global _applied
    if _applied:
        return
    _applied = True

    async def _highwaters(self: Any, partitions: list[Any]) -> Mapping[Any, int]:
        # faust-streaming asks aiokafka for last_stable_offset() under exactly_once, which is
        # None for a partition not fetched yet (a partition just taken over): recovery then
        # takes the highwater as -1 and restores nothing. Ask the broker: a read_committed
        # consumer's end offset is the last stable offset.
        consumer = self._ensure_consumer()
        return dict(await consumer.end_offsets(partitions))

    async def _seek_to_committed(self: Any) -> Mapping[Any, int | None]:
        # aiokafka seeks only partitions with a committed offset above 0 and leaves the others
        # where fetching left them. While a worker restores its tables, faust keeps fetching
        # its stream partitions and drops what it fetches, so a partition nobody has committed
        # yet (a new worker's, or one taken over before its first commit) would resume after
        # those dropped records: they were never processed. Such a partition starts from its
        # beginning, as auto_offset_reset=earliest promises. Changelogs are recovery's own.
        consumer = self._ensure_consumer()
        committed = dict(await consumer.seek_to_committed())
        changelogs = set(self.app.tables.changelog_topics)
        fresh = [
            tp for tp, offset in committed.items() if not offset and tp.topic not in changelogs
        ]
        if fresh:
            await consumer.seek_to_beginning(*fresh)
        return committed

    async def seek_to_committed(self: Any) -> Mapping[Any, int | None]:
        return await self.call_thread(self._seek_to_committed)  # type: ignore[no-any-return]

    async def on_partitions_revoked(self: Any, revoked: set[Any]) -> None:
        # faust-streaming only flushes here: the open transactions keep the outputs of every
        # event processed since the last commit, the consumer then seeks back to the last
        # committed offsets and processes those events again, and both sets of outputs
        # commit (two decisions for one order). Commit them now, with their offsets, as
        # Kafka Streams does on revocation; the agents have finished their events by then.
        await self.flush()
        for _ in range(3):  # commit() returns False when it only waited for another commit
            if await self.app.consumer.commit():
                break

    commit_tps = faust_consumer.Consumer._commit_tps

    async def _commit_tps(self: Any, tps: Any, start_new_transaction: bool) -> bool:
        # A table write is queued in faust's producer buffer and sent a moment later, but
        # faust commits without draining that buffer: the write could land in the next
        # transaction while the offset of the event that made it commits in this one, and a
        # kill -9 in between would lose it. Drain it first.
        if self.app.in_transaction:
            await self.app.producer.buffer.flush()
        return await commit_tps(self, tps, start_new_transaction)

    faust_consumer.Consumer._commit_tps = _commit_tps  # type: ignore[method-assign]
    faust_consumer.TransactionManager.on_partitions_revoked = on_partitions_revoked  # type: ignore[method-assign]

    thread = faust_aiokafka.AIOKafkaConsumerThread
    thread._highwaters = _highwaters  # type: ignore[method-assign]
    thread._seek_to_committed = _seek_to_committed  # type: ignore[attr-defined]
    thread.seek_to_committed = seek_to_committed  # type: ignore[method-assign,assignment]
