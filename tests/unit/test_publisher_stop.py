"""The gateway's publisher stops even when a slot misses its cancellation.

Python 3.11's ``asyncio.wait_for`` returns the inner result and drops a cancel that arrives as
its inner future completes; a slot that misses the cancel used to wait for work forever, and the
gateway's shutdown (SIGTERM, a test's teardown) hung with it."""

from __future__ import annotations

import asyncio

import pytest

from services.common.errors import KafkaUnavailableError
from services.ingest.metrics import IngestMetrics
from services.ingest.publisher import OutMessage, Publisher


class _DeafEvent(asyncio.Event):
    """An event whose waiters miss the first cancel, as after a swallowed cancellation."""

    def __init__(self) -> None:
        super().__init__()
        self.missed = 0

    async def wait(self) -> bool:  # type: ignore[override]
        try:
            return await super().wait()
        except asyncio.CancelledError:
            if self.missed:
                raise
            self.missed += 1
            return True


async def test_stop_returns_when_a_slot_misses_its_cancel() -> None:
    # nothing listens on port 1: the slots' first connection fails and they wait for work
    pub = Publisher("127.0.0.1:1", "t", IngestMetrics(), timeout_s=1.0, slots=2)
    deaf = _DeafEvent()
    pub._wake = deaf
    await pub.start()
    await asyncio.sleep(0)  # let the slots reach their wait
    for _ in range(200):
        if all(not t.done() for t in pub._tasks) and deaf._waiters:
            break
        await asyncio.sleep(0.05)
    tasks = list(pub._tasks)
    # a deadline that does not cancel stop(): the old stop() swallowed its own cancellation
    stopping = asyncio.create_task(pub.stop())
    done, _ = await asyncio.wait({stopping}, timeout=30)
    if stopping not in done:
        stopping.cancel()
    assert stopping in done, "stop() hung on a slot that missed its cancel"
    assert deaf.missed == 1  # a slot did miss the cancel
    assert all(t.done() for t in tasks)


async def test_a_publish_after_stop_is_refused_at_once() -> None:
    pub = Publisher("127.0.0.1:1", "t", IngestMetrics(), timeout_s=1.0, slots=1)
    await pub.start()
    await pub.stop()
    msg = OutMessage(key=b"k", value=b"{}", headers=())
    with pytest.raises(KafkaUnavailableError, match="shutting down"):
        await asyncio.wait_for(pub.publish([msg]), 5)
