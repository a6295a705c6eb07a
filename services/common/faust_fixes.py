"""Corrections to faust-streaming applied once, before any app starts."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from time import monotonic
from typing import Any

from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka

_applied = False
log = logging.getLogger(__name__)


# ── aiohttp (every HTTP server of the hub: the gateway and the workers' faust web) ──────

#: aiohttp versions whose ``RequestHandler.handle_error`` the patch below was read against.
AIOHTTP_TESTED = ("3.12", "3.13", "3.14")
_aiohttp_applied = False


def apply_aiohttp() -> None:
    """Protocol errors as FHIR ``OperationOutcome``, without echoing the request.

    aiohttp answers a request it cannot parse — a request line or header over the limit, a
    malformed header — itself, before any middleware runs, with ``text/plain`` that quotes
    the offending bytes back (a query string with a 身份证 in it, say). For statuses below
    500 the answer becomes an OperationOutcome that names the problem and quotes nothing;
    aiohttp still logs it (the log formatter masks identifiers) and closes the connection.
    """
    global _aiohttp_applied
    if _aiohttp_applied:
        return
    import aiohttp
    from aiohttp import web_protocol
    from aiohttp.web import Response

    if not aiohttp.__version__.startswith(AIOHTTP_TESTED):
        raise RuntimeError(
            f"services.common.faust_fixes.apply_aiohttp was written for aiohttp "
            f"{', '.join(AIOHTTP_TESTED)}; read RequestHandler.handle_error of "
            f"{aiohttp.__version__} before allowing it"
        )
    _aiohttp_applied = True
    original = web_protocol.RequestHandler.handle_error

    def handle_error(
        self: Any,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> Any:
        response = original(self, request, status, exc, message)
        if status >= 500:
            return response
        from services.common.fhir import Issue, operation_outcome

        if status in (413, 414, 431):
            text = "the request line or a header is over the server's limit"
        else:
            text = "the request is not well-formed HTTP"
        doc = operation_outcome([Issue("error", "structure", text, (), "invalid-parameter")])
        fixed = Response(
            status=status,
            body=json.dumps(doc).encode(),
            content_type="application/fhir+json",
        )
        fixed.force_close()
        return fixed

    web_protocol.RequestHandler.handle_error = handle_error  # type: ignore[method-assign]


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

    consumer_revoked = faust_consumer.Consumer.on_partitions_revoked

    async def on_partitions_revoked(self: Any, revoked: set[Any]) -> None:
        # faust-streaming keeps a transaction open across a rebalance: it forgets the acked
        # offsets of every revoked partition (all of them: aiokafka's rebalance is eager)
        # before its own revocation handler commits, so that commit finds nothing. The
        # outputs and table writes of the events processed since the last commit stay in
        # the open transaction, the consumer seeks back to the last committed offsets, the
        # events are processed again (against a table restored without those writes), and
        # the transaction later commits both sets of outputs: two original decisions for
        # one order. Stop the flow, let the agents finish their current events and commit
        # them with their offsets first, as Kafka Streams does on revocation; faust's own
        # handler then finds nothing left to do.
        app = self.app
        assignment = self.assignment() if app.in_transaction and not app.should_stop else set()
        if assignment:
            self.stop_flow()
            app.flow_control.suspend()
            self.pause_partitions(assignment)
            app.flow_control.clear()
            pending = sorted(
                f"{tp.topic}:{tp.partition}" for tp in assignment if self._acked.get(tp)
            )
            await self.wait_empty()  # ends with a commit that does not begin new transactions
            for _ in range(3):  # False: it only waited for a commit already running
                if await self.commit(start_new_transaction=False):
                    break
            if pending:
                log.info("committed before revocation", extra={"partitions": pending})
        await consumer_revoked(self, revoked)

    commit_tps = faust_consumer.Consumer._commit_tps

    async def _commit_tps(self: Any, tps: Any, start_new_transaction: bool) -> bool:
        # A table write is queued in faust's producer buffer and sent a moment later, but
        # faust commits without draining that buffer: the write could land in the next
        # transaction while the offset of the event that made it commits in this one, and a
        # kill -9 in between would lose it. Drain it first.
        if self.app.in_transaction:
            await self.app.producer.buffer.flush()
        return await commit_tps(self, tps, start_new_transaction)

    perform_seek = faust_consumer.Consumer.perform_seek

    async def _perform_seek(self: Any) -> None:
        # When recovery ends, faust resumes the stream partitions first and seeks them to
        # the committed offsets after, with the flow already open (recovery opened it to
        # read the changelogs). What is fetched in between, from wherever fetching had left
        # each partition, reaches the agents, and the seek that follows resets faust's read
        # offsets under them: in one run five orders of a taken-over partition were never
        # processed while the ones around them were. Close the flow until the seek is done;
        # both callers open it again right after (faust-streaming issue #216 is the same
        # race on another path).
        self.stop_flow()
        await perform_seek(self)

    add_gap = faust_consumer.Consumer._add_gap

    async def _add_gap(self: Any, tp: Any, offset_from: int, offset_to: int) -> None:
        # faust calls this with the offset of the message it is about to deliver as the end
        # of the gap, and the gap includes its end: that offset is counted twice, once as a
        # gap and once when it is acked. A duplicate breaks faust's run of consecutive acked
        # offsets, so each commit got past one gap only. Every transaction marker is a gap,
        # and commits fell minutes behind processing (a 100,000-patient run: 145,000 results
        # processed but not committed, the commit creeping at about 15 offsets a second per
        # partition). Before the message was processed the gap could also let the commit
        # pass it. The gap ends before the message.
        await add_gap(self, tp, offset_from, offset_to - 1)

    commit_offsets = faust_consumer.Consumer._commit_offsets

    async def _commit_offsets(
        self: Any, offsets: Mapping[Any, int], start_new_transaction: bool = True
    ) -> bool:
        # faust's slow-processing check reads the time of each partition's last commit
        # from the consumer thread, which only its non-transactional commit sets. Under
        # exactly_once every commit goes through the transactions instead, so once a
        # partition has lagged for broker_commit_livelock_soft_timeout the worker logged
        # "Has not committed … at all since worker start" at ERROR for it every few
        # seconds however well it committed (58,302 lines in the 75 minutes of a
        # 100,000-patient run). Record the transactional commits too; a commit that really
        # stalls is still reported.
        did_commit: bool = await commit_offsets(self, offsets, start_new_transaction)
        stamps = getattr(getattr(self, "_thread", None), "tp_last_committed_at", None)
        if did_commit and self.in_transaction and stamps is not None:
            now = monotonic()
            assignment = self.assignment()
            stamps.update({tp: now for tp in offsets if tp in assignment})
        return did_commit

    faust_consumer.Consumer._commit_offsets = _commit_offsets  # type: ignore[method-assign]
    faust_consumer.Consumer._add_gap = _add_gap  # type: ignore[method-assign]
    faust_consumer.Consumer._commit_tps = _commit_tps  # type: ignore[method-assign]
    faust_consumer.Consumer.perform_seek = _perform_seek  # type: ignore[method-assign]
    faust_consumer.Consumer.on_partitions_revoked = on_partitions_revoked  # type: ignore[method-assign]

    thread = faust_aiokafka.AIOKafkaConsumerThread
    thread._highwaters = _highwaters  # type: ignore[method-assign]
    thread._seek_to_committed = _seek_to_committed  # type: ignore[attr-defined]
    thread.seek_to_committed = seek_to_committed  # type: ignore[method-assign,assignment]


# ── reading a table partition's RocksDB store directly (recognition's per-record entries) ──
#
# faust's table API reads one key at a time. A table that keeps one entry per record
# (``<master>|<record id>``) instead of one growing value per patient must read a patient's
# entries with a prefix scan of the store of the partition that holds them. faust writes a
# table change to the changelog partition of the event being processed, so the entries of a
# patient keyed by master id live in that master's partition of the input topics.

#: The faust-streaming release whose private store attributes the functions below read.
PINNED_FAUST_VERSION = "0.15.3"


def require_pinned_faust() -> None:
    """Refuse to read faust's private attributes under any other faust-streaming release."""
    import faust

    if faust.__version__ != PINNED_FAUST_VERSION:
        raise RuntimeError(
            f"services.common.faust_fixes reads private attributes of faust-streaming "
            f"{PINNED_FAUST_VERSION}; {faust.__version__} is installed. Check each one "
            "(tests/unit/test_faust_compat.py) before changing the pin."
        )


def partition_db(table: Any, partition: int) -> Any | None:
    """The open RocksDB database (a ``rocksdict.Rdict`` in raw mode) that holds ``table``'s
    entries of ``partition`` on this worker, or ``None`` when this worker has not opened it
    (it neither owns nor restores that partition). Reads the private ``Store._dbs``."""
    require_pinned_faust()
    store = table.data
    dbs = getattr(store, "_dbs", None)
    if dbs is None:
        raise RuntimeError(f"table {table.name!r} is not kept in RocksDB")
    return dbs.get(partition)


def scan_prefix(
    table: Any, partition: int, prefix: bytes, *, limit: int | None = None
) -> list[tuple[bytes, bytes]]:
    """Every ``(key, value)`` of ``table`` in ``partition`` whose key starts with ``prefix``,
    in key order (at most ``limit``). Empty when this worker does not hold the partition.
    faust's own offset key (``Store.offset_key``) never matches a non-empty prefix that does
    not start with ``__faust``."""
    if not prefix:
        raise ValueError("a prefix scan needs a non-empty prefix")
    db = partition_db(table, partition)
    if db is None:
        return []
    out: list[tuple[bytes, bytes]] = []
    it = db.iter()
    it.seek(prefix)
    while it.valid():
        key = it.key()
        if not isinstance(key, bytes) or not key.startswith(prefix):
            break
        out.append((key, it.value()))
        if limit is not None and len(out) >= limit:
            break
        it.next()
    return out
