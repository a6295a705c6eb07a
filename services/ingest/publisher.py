"""Durable, atomic publication to Kafka, with group commit.

Every publication goes through a Kafka transaction (``acks=all``, idempotent): what a
request publishes becomes visible to ``read_committed`` consumers all at once, or — if Kafka
does not commit in time — never. That is what lets the gateway answer 503 and mean "nothing
was written": an unacknowledged plain send could still be delivered after the answer.

Transactions cost a few round trips, so requests share them: a small number of *slots*,
each with its own transactional producer, take everything queued since their last commit
(up to ``max_batch``) into one transaction. Under load the batches grow by themselves;
with no load a request waits for one transaction only.

A request that is still queued when its time is up is withdrawn (503, never published). One
that a transaction has taken waits for that transaction, which is bounded by ``timeout_s``
and aborted on failure; a producer left in doubt is dropped, and its successor — same
``transactional_id`` — fences it and aborts whatever it left open. The one case no protocol
can close is a commit that succeeds while its answer is lost: the gateway then answers 503
for data that is stored, the sender retries, and the duplicate carries the same business key
for the patient index to drop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import (
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
)
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from services.common.errors import KafkaUnavailableError
from services.common.kafka_security import aiokafka_options
from services.common.partitioner import PARTITIONER, partition_for
from services.common.topics import DEFAULT_MAX_MESSAGE_BYTES
from services.ingest.metrics import IngestMetrics

log = logging.getLogger(__name__)

#: Kafka's answers that mean "this message is too large for the topic", not "unavailable".
_SIZE_ERRORS = (MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError)


class MessageTooLargeError(Exception):
    """Kafka refused a message as too large for the topic (its ``max.message.bytes`` is
    below the hub's limit): nothing of the request was published, and retrying cannot help."""


@dataclass(frozen=True, slots=True)
class OutMessage:
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...]
    #: the keyed hash of the patient's anchor (services/patient_index/routing.py): the
    #: message goes to ``partition_for(route, partitions)``, the partition whose reader owns
    #: that identifier in the patient index; ``None``: by its key, as any Kafka client would
    route: bytes | None = None

    @property
    def size(self) -> int:
        """The bytes this message takes in a record batch of its own (what the producer's
        ``max_request_size`` and the topic's ``max.message.bytes`` are compared with)."""
        return int(
            DefaultRecordBatchBuilder.estimate_size_in_bytes(
                self.key, self.value, list(self.headers)
            )
        )


@dataclass(eq=False)
class _Pending:
    msgs: Sequence[OutMessage]
    fut: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    taken: bool = False
    withdrawn: bool = False


def _loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


def _consume_exception(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled():
        fut.exception()


class Publisher:
    def __init__(
        self,
        bootstrap: str,
        topic: str,
        metrics: IngestMetrics,
        *,
        timeout_s: float = 10.0,
        slots: int = 2,
        max_batch: int = 2000,
        instance: str | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        """``max_message_bytes``: the producer's ``max_request_size`` — the hub's one
        message limit (:func:`services.common.topics.max_message_bytes`); a request with a
        larger message must be refused before :meth:`publish` (see :meth:`fits`)."""
        self.bootstrap = bootstrap
        self.max_message_bytes = max_message_bytes
        self.topic = topic
        self.metrics = metrics
        self.timeout_s = timeout_s
        self.max_batch = max_batch
        self._slots = slots
        self._instance = instance or f"{socket.gethostname()}-{os.getpid()}"
        self._queue: deque[_Pending] = deque()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._producers: dict[int, AIOKafkaProducer] = {}
        self._probe: AIOKafkaClient | None = None
        self._ready = False
        self._ready_at = 0.0
        # set by stop(): the slots leave their loop on it, not only on cancellation (Python
        # 3.11's asyncio.wait_for returns the inner result and drops a cancel that arrives as
        # its inner future completes, so a cancelled slot could wait for work forever)
        self._closing = False

    # ------------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._slot(i), name=f"kafka-slot-{i}") for i in range(self._slots)
        ]

    async def stop(self) -> None:
        self._closing = True
        self._wake.set()
        for t in self._tasks:
            t.cancel()
        if self._tasks:
            _, stuck = await asyncio.wait(self._tasks, timeout=self.timeout_s + 5)
            for t in stuck:  # not seen so far; say so rather than hang the shutdown
                log.error("a publishing slot did not stop", extra={"slot": t.get_name()})
        for t in self._tasks:
            if t.done() and not t.cancelled() and t.exception() is not None:
                log.warning("a publishing slot failed", extra={"err": repr(t.exception())})
        self._tasks = []
        err = KafkaUnavailableError("the gateway is shutting down")
        while self._queue:
            p = self._queue.popleft()
            if not p.fut.done():
                p.fut.set_exception(err)
        for producer in list(self._producers.values()):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), 10)
        self._producers.clear()
        if self._probe is not None:
            with contextlib.suppress(Exception):
                await self._probe.close()
            self._probe = None

    # -------------------------------------------------------------------------- publish

    def fits(self, msg: OutMessage) -> bool:
        """Whether ``msg`` is within the producer's (and the topics') message limit."""
        return msg.size <= self.max_message_bytes

    async def publish(self, msgs: Sequence[OutMessage]) -> None:
        """Publish all of ``msgs`` atomically, acknowledged by Kafka with acks=all, or raise
        having published none of them: ``KafkaUnavailableError`` when Kafka did not
        acknowledge, ``MessageTooLargeError`` when it refused a message as too large."""
        if not msgs:
            return
        if self._closing:
            raise KafkaUnavailableError("the gateway is shutting down")
        pending = _Pending(msgs)
        pending.fut.add_done_callback(_consume_exception)
        self._queue.append(pending)
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(pending.fut), self.timeout_s)
        except TimeoutError:
            if not pending.taken:
                pending.withdrawn = True
                self.metrics.publish_errors.labels("queued-too-long").inc()
                raise KafkaUnavailableError("no transaction took the request in time") from None
            await pending.fut  # its transaction is bounded by timeout_s and decides

    def _take(self) -> list[_Pending]:
        batch: list[_Pending] = []
        count = 0
        while self._queue and count < self.max_batch:
            p = self._queue.popleft()
            if p.withdrawn:
                continue
            p.taken = True
            batch.append(p)
            count += len(p.msgs)
        return batch

    async def _slot(self, slot: int) -> None:
        with contextlib.suppress(KafkaUnavailableError):
            await self._producer(slot)  # connect early; failures are retried on demand
        while not self._closing:
            while not self._queue and not self._closing:
                self._wake.clear()
                await self._wake.wait()
            if self._closing:
                break  # stop() fails what is still queued
            batch = self._take()
            if not batch:
                continue
            msgs = [m for p in batch for m in p.msgs]
            started = time.perf_counter()
            try:
                producer = await self._producer(slot)
                await asyncio.wait_for(self._transaction(producer, msgs), self.timeout_s)
            except asyncio.CancelledError:
                self._fail(batch, KafkaUnavailableError("the gateway is shutting down"))
                raise
            except _SIZE_ERRORS as exc:
                # One request's message is over the topic's limit: that is its own fault,
                # not Kafka's; the requests it shared the transaction with are retried alone.
                await self._drop(slot)
                log.warning(
                    "kafka refused a message as too large; retrying the requests one by one",
                    extra={"slot": slot, "messages": len(msgs), "err": repr(exc)},
                )
                await self._one_by_one(slot, batch)
                continue
            except Exception as exc:
                await self._drop(slot)
                self._ready = False
                self.metrics.publish_errors.labels("transaction").inc()
                log.warning(
                    "kafka transaction failed; aborted",
                    extra={"slot": slot, "messages": len(msgs), "err": repr(exc)},
                )
                self._fail(batch, KafkaUnavailableError(f"Kafka did not commit: {exc!r}"))
                continue
            self.metrics.publish_latency.labels("transaction").observe(
                time.perf_counter() - started
            )
            self.metrics.transaction_messages.observe(len(msgs))
            self._ready = True
            for p in batch:
                if not p.fut.done():
                    p.fut.set_result(None)

    async def _one_by_one(self, slot: int, batch: Sequence[_Pending]) -> None:
        """Each request of ``batch`` in a transaction of its own (after a size refusal)."""
        for p in batch:
            if p.fut.done():
                continue
            try:
                producer = await self._producer(slot)
                await asyncio.wait_for(self._transaction(producer, p.msgs), self.timeout_s)
            except asyncio.CancelledError:
                self._fail(batch, KafkaUnavailableError("the gateway is shutting down"))
                raise
            except _SIZE_ERRORS as exc:
                await self._drop(slot)
                self.metrics.publish_errors.labels("too-large").inc()
                p.fut.set_exception(MessageTooLargeError(f"Kafka refused the message: {exc!r}"))
            except Exception as exc:
                await self._drop(slot)
                self._ready = False
                self.metrics.publish_errors.labels("transaction").inc()
                p.fut.set_exception(KafkaUnavailableError(f"Kafka did not commit: {exc!r}"))
            else:
                self.metrics.transaction_messages.observe(len(p.msgs))
                p.fut.set_result(None)

    @staticmethod
    def _fail(batch: Sequence[_Pending], err: Exception) -> None:
        for p in batch:
            if not p.fut.done():
                p.fut.set_exception(err)

    async def _transaction(self, producer: AIOKafkaProducer, msgs: Sequence[OutMessage]) -> None:
        # the topic's partition count from the producer's metadata (fetched once, then kept
        # up to date by aiokafka): a message with a route goes where its patient is owned
        count = len(await producer.partitions_for(self.topic))
        async with producer.transaction():
            futures = [
                await producer.send(
                    self.topic,
                    value=m.value,
                    key=m.key,
                    headers=list(m.headers),
                    partition=None if m.route is None else partition_for(m.route, count),
                )
                for m in msgs
            ]
            await asyncio.gather(*futures)

    async def _producer(self, slot: int) -> AIOKafkaProducer:
        existing = self._producers.get(slot)
        if existing is not None:
            return existing
        ms = max(int(self.timeout_s * 1000), 1000)
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap.split(","),
            client_id=f"mrhub-ingest-{self._instance}-{slot}",
            transactional_id=f"mrhub-ingest-{self._instance}-{slot}",
            partitioner=PARTITIONER,
            transaction_timeout_ms=max(3 * ms, 10_000),
            acks="all",
            enable_idempotence=True,
            linger_ms=0,
            max_request_size=self.max_message_bytes,
            request_timeout_ms=ms,
            retry_backoff_ms=100,
            **aiokafka_options(),
        )
        try:
            await asyncio.wait_for(producer.start(), self.timeout_s)
        except (TimeoutError, KafkaError, OSError) as exc:
            with contextlib.suppress(Exception):
                await producer.stop()
            raise KafkaUnavailableError(f"cannot reach Kafka: {exc!r}") from exc
        self._producers[slot] = producer
        return producer

    async def _drop(self, slot: int) -> None:
        producer = self._producers.pop(slot, None)
        if producer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), 5)

    # -------------------------------------------------------------------------- readiness

    async def ready(self) -> bool:
        """Whether Kafka answers a metadata request now (probed at most once a second)."""
        now = time.monotonic()
        if now - self._ready_at < 1.0:
            return self._ready
        self._ready_at = now
        try:
            if self._probe is None:
                self._probe = AIOKafkaClient(
                    bootstrap_servers=self.bootstrap.split(","),
                    client_id=f"mrhub-ingest-probe-{self._instance}",
                    request_timeout_ms=3000,
                    **aiokafka_options(),
                )
                await asyncio.wait_for(self._probe.bootstrap(), 3.0)
            await asyncio.wait_for(self._probe.fetch_all_metadata(), 3.0)
            self._ready = True
        except (TimeoutError, KafkaError, OSError) as exc:
            log.info("kafka probe failed", extra={"err": repr(exc)})
            if self._probe is not None:
                with contextlib.suppress(Exception):
                    await self._probe.close()
            self._probe = None
            self._ready = False
        self.metrics.kafka_up.set(1 if self._ready else 0)
        return self._ready
