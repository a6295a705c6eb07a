"""services.common.faust_fixes, the one compat module: it refuses any faust-streaming,
aiokafka or mode-streaming release but the tested ones, and every upstream function it
replaces, reads the private state of, or relies on the behaviour of is still the one it was
traced on. An upgrade fails here first, saying what to re-check
(docs/decisions/0006-framework-pins-and-compat.md). The aiohttp patch: test_aiohttp_fix.py."""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import inspect
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import faust
import pytest
from faust.stores import rocksdb as faust_rocksdb
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.transport.producer import ProducerBuffer
from faust.types import TP, Message

from services.common import faust_fixes

SERVICES = Path(__file__).resolve().parents[2] / "services"

#: For each upstream function: the first 16 hex digits of the sha256 of its source
#: (``inspect.getsource``) in the tested releases, and what to re-check when it changes.
#: Patches 1-7 are numbered as in faust_fixes' docstring.
EXPECTED: dict[str, tuple[str, str]] = {
    # patch 1: recovery highwater
    "faust.transport.drivers.aiokafka.AIOKafkaConsumerThread._highwaters": (
        "a7f4f97d9f32aca2",
        "patch 1 replaces it: does faust still take last_stable_offset() (None before the "
        "first fetch) under exactly_once? If it asks the broker now, drop the patch",
    ),
    "faust.transport.drivers.aiokafka.AIOKafkaConsumerThread.highwaters": (
        "b49ed48ec1731816",
        "patch 1: does highwaters() still call _highwaters in the consumer thread?",
    ),
    "aiokafka.AIOKafkaConsumer.end_offsets": (
        "f4b19078581881ba",
        "patch 1 asks end_offsets(): is it still the last stable offset for read_committed?",
    ),
    # patch 2: partitions never committed start from their beginning
    "faust.transport.drivers.aiokafka.AIOKafkaConsumerThread.seek_to_committed": (
        "775ab0adc4b052ab",
        "patch 2 replaces it: does it still return aiokafka's committed offsets as is?",
    ),
    "aiokafka.AIOKafkaConsumer.seek_to_committed": (
        "f6cd85c8b70a4ccf",
        "patch 2 works around its `if offset and offset > 0` (partitions without a commit "
        "are not seeked): if aiokafka now seeks them per auto_offset_reset, drop the patch",
    ),
    # patch 3: commit before revocation
    "faust.transport.consumer.Consumer.on_partitions_revoked": (
        "d04b7ae72c6fc206",
        "patch 3 runs before it: does faust still forget the revoked partitions' acked "
        "offsets before committing them (duplicates under exactly_once)? Run tests/faults",
    ),
    "faust.transport.consumer.Consumer.wait_empty": (
        "e4662fe24f094819",
        "patch 3 relies on wait_empty ending with a commit that begins no new transaction",
    ),
    "faust.transport.consumer.Consumer.commit": (
        "a354437baaa08bf8",
        "patches 3 and 9 retry commit(start_new_transaction=False): does False still mean "
        "that it only waited for a commit already running?",
    ),
    # patch 4: drain the producer buffer before a transactional commit
    "faust.transport.consumer.Consumer._commit_tps": (
        "a20e230b05ae8b15",
        "patch 4 wraps it: does a transactional commit now drain producer.buffer itself?",
    ),
    # patch 15 (with patch 4): every buffered table write handed to the producer
    "faust.transport.producer.ProducerBuffer._send_pending": (
        "4a9d5f932b56bc68",
        "patch 15 wraps it: does it still hand one buffered message to its topic's "
        "publish_message (the transaction's producer) and return once it is appended?",
    ),
    "faust.transport.producer.ProducerBuffer._handle_pending.fun": (
        "78d648030fd21016",
        "patch 15 counts what it sends: does the sending task still take one message from "
        "the queue and await self._send_pending(msg) at once (nothing awaited between)?",
    ),
    # patch 16: recovery takes a partition as read only once it has been quiet
    "faust.transport.consumer.ThreadDelegateConsumer.position": (
        "a7f22b78f21d085a",
        "patch 16 replaces it: is recovery's detect_aborted_tx still its only caller in faust?",
    ),
    "faust.tables.recovery.Recovery._slurp_changelogs.fun": (
        "7825c7e50f766d5a",
        "patch 16 answers detect_aborted_tx: does it still take a partition whose position "
        "passed its highwater as read after two quiet waits, counted from any time?",
    ),
    "faust.tables.recovery.Recovery._set_recovery_started": (
        "bcfebf81ae13fc75",
        "patch 16 reads _recovery_started_at and _active_events_received_at: still set here?",
    ),
    "faust.transport.producer.ProducerBuffer.size.fget": (
        "b543a978fdece62e",
        "patch 4 waits until it is 0: is it still the number of messages queued and not "
        "yet taken by the sending task?",
    ),
    # patch 5: close the flow before seeking after recovery
    "faust.transport.consumer.Consumer.perform_seek": (
        "0e8c130ff4b0afd8",
        "patch 5 wraps it: does it still seek without closing the flow?",
    ),
    "faust.tables.recovery.Recovery._resume_streams": (
        "d986a6710c1aca98",
        "patch 5 relies on this caller opening the flow again after perform_seek",
    ),
    "faust.tables.recovery.Recovery.on_recovery_completed": (
        "6ef567acf072e46d",
        "patch 5 relies on this caller opening the flow again after perform_seek; does it "
        "still resume the partitions before seeking them?",
    ),
    # patch 13: a changelog start offset below -1 is read from the beginning
    "faust.tables.recovery.Recovery._seek_offsets": (
        "19598ca63d94d250",
        "patch 13 wraps it: does it still map only -1 to 0 before seeking?",
    ),
    "faust.tables.recovery.Recovery._build_offsets": (
        "27eec86be06cb51f",
        "patch 13: does it still subtract one from the earliest offsets (so that -1 from the "
        "broker becomes -2)? If upstream stopped, patch 13 is dead: drop it",
    ),
    # patch 6: a gap ends before the message about to be delivered
    "faust.transport.consumer.Consumer._add_gap": (
        "4df2573ded7c1c2c",
        "patch 6 passes offset_to - 1: does _add_gap still include its end "
        "(addi(offset_from, offset_to + 1))? If upstream fixed the off-by-one, the patch "
        "now leaves a real gap offset out: drop it",
    ),
    "faust.transport.consumer.Consumer._drain_messages": (
        "44a2500309e83c63",
        "patch 6: does the caller still pass the offset of the message it is about to "
        "deliver as the gap's end (`_add_gap(tp, r_offset + 1, offset)`)?",
    ),
    "faust.transport.consumer.Consumer._new_offset": (
        "1d2c7ea89a7ad4f1",
        "patch 6 and pending_offsets: does the commit still need a consecutive run of "
        "acked and gap offsets, and does it still empty _acked as it commits?",
    ),
    # patch 9: a stopping worker commits what it processed
    "faust.transport.consumer.Consumer.commit_and_end_transactions": (
        "892377824b11a2ee",
        "patch 9 replaces it: does it still make one commit() that returns False when a "
        "timer commit is running? If it retries or forces a commit now, drop the patch",
    ),
    # patch 8: the watchdog skips a partition without a fetch position
    "faust.transport.drivers.aiokafka.AIOKafkaConsumerThread.verify_event_path": (
        "b983e7735f647cb3",
        "patch 8 wraps it: does it still read tp_state.position unguarded (if it tests "
        "has_valid_position now, drop the patch)? Patch 7: does the watchdog still read "
        "tp_last_committed_at?",
    ),
    "aiokafka.consumer.subscription_state.Assignment.state_value": (
        "183fea82ef48f3e6",
        "fetch_state reads it: does it still return None for a partition not assigned?",
    ),
    # patch 7: transactional commits stamp the livelock watchdog
    "faust.transport.consumer.Consumer._commit_offsets": (
        "1a69799041188441",
        "patch 7 wraps it: does a transactional commit now set tp_last_committed_at? Does "
        "it still update _committed_offset (committed_offset reads it)?",
    ),
    "faust.transport.drivers.aiokafka.AIOKafkaConsumerThread._commit": (
        "932852ce7a23f658",
        "patch 7: is tp_last_committed_at still set only by the non-transactional commit?",
    ),
    # private reads: pending_offsets and committed_offset (the lag metric)
    "faust.transport.consumer.Consumer.__init__": (
        "302410d59e6972d1",
        "pending_offsets/committed_offset read _unacked_messages (a WeakSet of messages), "
        "_acked (offsets by TP) and _committed_offset (a defaultdict): still there?",
    ),
    "faust.transport.consumer.Consumer.track_message": (
        "217d7f1399a4cd8e",
        "pending_offsets: is a delivered message still added to _unacked_messages?",
    ),
    "faust.transport.consumer.Consumer.ack": (
        "5fcf41cf45153475",
        "pending_offsets: does an ack still move the offset from _unacked_messages to _acked?",
    ),
    # private format: transactional_id (sends in the source partition's transaction)
    "faust.transport.consumer.TransactionManager.commit": (
        "fbb29c3467ac8bfa",
        "transactional_id copies its f'{group_id}-{group}-{tp.partition}': the same?",
    ),
    "faust.transport.consumer.TransactionManager._tps_to_transactional_ids": (
        "392b1c30e9a7ba72",
        "transactional_id: does faust still begin one transaction per partition group "
        "with transactional_id_format?",
    ),
    "faust.transport.consumer.TransactionManager.send": (
        "b8d126be9f10fc69",
        "stages.Stages.emit passes transactional_id itself because send() picks the "
        "destination partition's transaction (decision 0003): still so?",
    ),
    # private read: partition_db / scan_prefix (Store._dbs)
    "faust.stores.rocksdb.Store.__init__": (
        "c7c0fa2989e8ab4a",
        "partition_db reads Store._dbs (open databases by partition): still there?",
    ),
    "faust.stores.rocksdb.Store._set": (
        "4227e561e288d941",
        "scan_prefix: does a table write still go to the RocksDB store of the current "
        "event's partition?",
    ),
    "faust.stores.rocksdb.Store._db_for_partition": (
        "cb7e67d5f9efc4bc",
        "scan_prefix: does faust still keep each open db in Store._dbs by partition?",
    ),
    # patch 10: one commit's transactions committed concurrently
    "faust.transport.drivers.aiokafka.Producer.commit_transactions": (
        "70091e6f431974e9",
        "patch 10 replaces it: does faust still commit one transactional producer after "
        "another (send_offsets_to_transaction, commit_transaction, begin_transaction)? If it "
        "commits them concurrently now, drop the patch",
    ),
    # patch 11: a retriable coordinator-lookup failure is retried
    "aiokafka.producer.sender.Sender._find_coordinator": (
        "33001a36bf6a0ae0",
        "patch 11 wraps it: does aiokafka still re-raise a retriable lookup error (a "
        "connection error) as a bare KafkaError `from` it? If it retries them now, drop the "
        "patch",
    ),
    # patch 14: the adaptive commit interval
    "faust.transport.consumer.Consumer._commit_handler": (
        "4e5da5df073082d6",
        "patch 14 replaces it: is it still one fixed timer (broker_commit_interval) that "
        "commits every partition? If faust commits per partition or when caught up now, "
        "drop the patch",
    ),
    "mode.services.Service._get_tasks": (
        "96fd6ab8850dba68",
        "patch 14 sets Consumer._commit_handler to a new ServiceTask: does mode still look "
        "a service's tasks up by attribute name when the service starts?",
    ),
    "faust.tables.table.Table.on_key_set": (
        "a370e35ca55c2c7e",
        "scan_prefix: does a table change still go to the current event's partition?",
    ),
    # patch 17: the stores of a run that did not stop cleanly are rebuilt
    "faust.app.base.App._create_directories": (
        "a9f571c3b04abec3",
        "patch 17 wraps it: does it still only create datadir, appdir and tabledir?",
    ),
    "faust.app.base.App.on_first_start": (
        "ec655d9c223403cc",
        "patch 17: is _create_directories still called once, at the first start, before "
        "any table store opens?",
    ),
    "faust.tables.manager.TableManager.persist_offset_on_commit": (
        "37094efa77c98e15",
        "patch 17: under exactly_once, is a store's changelog offset still persisted only at "
        "a commit while the change itself is written to RocksDB at once? If faust now "
        "writes changes to the store only when their transaction commits, drop patch 17",
    ),
}


def upstream(name: str) -> Any:
    """The upstream function ``name`` (dotted), as it was before faust_fixes.apply()."""
    if name in faust_fixes.UPSTREAM:
        return faust_fixes.UPSTREAM[name]
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise LookupError(name)


def digest(fn: Any) -> str:
    return hashlib.sha256(inspect.getsource(fn).encode()).hexdigest()[:16]


# ── versions ─────────────────────────────────────────────────────────────────────────


def test_the_tested_releases_are_installed() -> None:
    for dist, version in faust_fixes.TESTED_VERSIONS.items():
        assert faust_fixes.installed_version(dist) == version
    assert faust.__version__ == faust_fixes.PINNED_FAUST_VERSION
    faust_fixes.require_tested_versions()


def _installed_except(dist: str, version: str) -> Any:
    real = faust_fixes.installed_version

    def lookup(name: str) -> str:
        return version if name == dist else real(name)

    return lookup


@pytest.mark.parametrize("dist", sorted(faust_fixes.TESTED_VERSIONS))
def test_apply_refuses_another_release(monkeypatch: pytest.MonkeyPatch, dist: str) -> None:
    monkeypatch.setattr(faust_fixes, "installed_version", _installed_except(dist, "9.9.9"))
    monkeypatch.setattr(faust_fixes, "_applied", False)
    tested = re.escape(f"{dist} {faust_fixes.TESTED_VERSIONS[dist]}")
    with pytest.raises(faust_fixes.UntestedVersionError, match=rf"{tested}.*{dist} 9\.9\.9"):
        faust_fixes.apply()
    assert faust_fixes._applied is False


def test_the_private_reads_refuse_another_release(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(
        faust_fixes, "installed_version", _installed_except("faust-streaming", "0.16.0")
    )
    monkeypatch.setattr(faust_fixes, "_faust_checked", False)
    with pytest.raises(RuntimeError, match=r"faust-streaming 0\.15\.3.*0\.16\.0"):
        faust_fixes.require_pinned_faust()
    app = faust.App("compat-refuse", store="rocksdb://", datadir=str(tmp_path))
    table = app.Table("results", partitions=3, key_type=bytes, value_type=bytes)
    with pytest.raises(faust_fixes.UntestedVersionError):
        faust_fixes.scan_prefix(table, 1, b"MP")


# ── every patched, privately read or relied-on upstream function is unchanged ──────────


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_the_upstream_function_is_the_one_the_compat_module_was_traced_on(name: str) -> None:
    expected, recheck = EXPECTED[name]
    assert digest(upstream(name)) == expected, (
        f"{name} changed upstream. Re-check: {recheck}. Then update its digest in "
        "tests/unit/test_faust_compat.py (decision 0006)."
    )


def test_every_replaced_method_has_a_digest_and_is_replaced_by_apply() -> None:
    assert set(faust_fixes.UPSTREAM) <= set(EXPECTED)
    faust_fixes.apply()
    for name, original in faust_fixes.UPSTREAM.items():
        owner, attr = name.rsplit(".", 1)
        assert getattr(upstream(owner), attr) is not original, f"apply() leaves {name}"
    # the eighth attribute apply() sets has no upstream counterpart to go stale
    assert "_seek_to_committed" not in inspect.getsource(faust_aiokafka.AIOKafkaConsumerThread)
    assert faust_aiokafka.AIOKafkaConsumerThread._seek_to_committed  # type: ignore[attr-defined]


#: ``<name>._<private>`` on a framework object, outside the compat module
PRIVATE = re.compile(
    r"\b(?:app|consumer|producer|transport|table|tables|store|thread|agent|stream|event|"
    r"recovery|fetcher|conductor|transactions|site|runner|request|web)\._[a-z]\w*"
    r"|getattr\([^,]+,\s*[\"']_[a-z]"
)


def test_no_other_module_reads_a_private_framework_attribute() -> None:
    found = []
    for path in sorted(SERVICES.rglob("*.py")):
        if path.name == "faust_fixes.py":
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if PRIVATE.search(line) and not line.lstrip().startswith("#"):
                found.append(f"{path.relative_to(SERVICES.parent)}:{n}: {line.strip()}")
    assert not found, "put these behind an accessor in services/common/faust_fixes.py:\n" + (
        "\n".join(found)
    )


# ── the accessors do what lag.py and stages.py rely on ─────────────────────────────────


async def test_pending_and_committed_offsets_read_a_real_consumer() -> None:
    app = faust.App("compat-lag", broker="kafka://127.0.0.1:1", value_serializer="raw")
    app.topics.add(app.topic("orders", partitions=2))
    conductor: Any = app.topics
    await conductor._update_indices()  # what subscribing does: acks enabled for "orders"
    consumer: Any = app.consumer
    messages = [Message("orders", 1, offset, 0.0, 0, [], b"k", b"v", None) for offset in (5, 6)]
    for message in messages:
        consumer.track_message(message)  # delivered to an agent
    assert faust_fixes.pending_offsets(consumer) == {("orders", 1): [5, 6]}
    assert consumer.ack(messages[0])  # processed, not committed
    held = faust_fixes.pending_offsets(consumer)
    assert sorted(held[("orders", 1)]) == [5, 6]
    assert faust_fixes.committed_offset(consumer, TP("orders", 1)) is None
    consumer._committed_offset[TP("orders", 1)] = 6  # what a commit records
    assert faust_fixes.committed_offset(consumer, TP("orders", 1)) == 6
    assert faust_fixes.committed_offset(consumer, TP("orders", 0)) is None
    assert TP("orders", 0) not in consumer._committed_offset  # read without inserting


def test_transactional_id_is_the_one_faust_begins_and_commits() -> None:
    app = SimpleNamespace(
        conf=SimpleNamespace(id="mrhub-recognition"),
        assignor=SimpleNamespace(group_for_topic=lambda topic: 2, is_standby=lambda tp: False),
    )
    tm: Any = SimpleNamespace(
        app=app, transactional_id_format=faust_consumer.TransactionManager.transactional_id_format
    )
    tm._tps_to_active_tpgs = lambda tps: faust_consumer.TransactionManager._tps_to_active_tpgs(
        tm, tps
    )
    ours = faust_fixes.transactional_id(app, "orders", 5)
    begun = faust_consumer.TransactionManager._tps_to_transactional_ids(tm, {TP("orders", 5)})
    assert begun == {ours} == {"mrhub-recognition-2-5"}

    committed: list[str] = []

    async def commit_transactions(by_id: Any, group_id: str, **_: Any) -> None:
        committed.extend(by_id)

    tm.producer = SimpleNamespace(commit_transactions=commit_transactions)
    asyncio.run(faust_consumer.TransactionManager.commit(tm, {TP("orders", 5): 10}))
    assert committed == [ours]


# ── scan_prefix on a real RocksDB store ────────────────────────────────────────────────


def test_the_store_keeps_its_open_databases_by_partition() -> None:
    store_init = inspect.getsource(faust_rocksdb.Store.__init__)
    assert "self._dbs = {}" in store_init
    assert faust_rocksdb.Store.offset_key.startswith(b"__faust")


@pytest.fixture
def table(tmp_path: Path) -> Any:
    app = faust.App("compat-test", store="rocksdb://", datadir=str(tmp_path))
    return app.Table("results", partitions=3, key_type=bytes, value_type=bytes)


def test_a_prefix_scan_reads_one_patients_entries_from_a_real_rocksdb(table: Any) -> None:
    store = table.data
    db = store._db_for_partition(1)  # what faust opens when the partition is assigned
    other = store._db_for_partition(2)
    for i in range(5):
        db.put(f"MPaaaa|r{i}".encode(), f"v{i}".encode())
    db.put(b"MPaaab|r0", b"someone else")
    db.put(b"MPaaa|r9", b"a shorter master")
    other.put(b"MPaaaa|elsewhere", b"not this partition")
    store.set_persisted_offset(faust.types.TP("t", 1), 42)  # faust's own offset key

    got = faust_fixes.scan_prefix(table, 1, b"MPaaaa|")
    assert got == [(f"MPaaaa|r{i}".encode(), f"v{i}".encode()) for i in range(5)]
    assert faust_fixes.scan_prefix(table, 1, b"MPaaaa|", limit=2) == got[:2]
    assert faust_fixes.scan_prefix(table, 1, b"MPzzzz|") == []
    assert faust_fixes.scan_prefix(table, 0, b"MPaaaa|") == []  # not opened here: nothing
    db.delete(b"MPaaaa|r3")
    assert [k for k, _ in faust_fixes.scan_prefix(table, 1, b"MPaaaa|")] == [
        f"MPaaaa|r{i}".encode() for i in (0, 1, 2, 4)
    ]
    with pytest.raises(ValueError, match="prefix"):
        faust_fixes.scan_prefix(table, 1, b"")


# ── patch 8: the livelock watchdog and a partition without a fetch position ─────────────


async def test_the_watchdog_skips_a_partition_without_a_position_instead_of_crashing() -> None:
    """Between an assignment and its first seek aiokafka knows no position for a partition;
    faust's watchdog read it anyway and the AssertionError stopped the worker."""
    from aiokafka.consumer.subscription_state import SubscriptionState
    from aiokafka.structs import TopicPartition

    subscriptions = SubscriptionState()
    subscriptions.assign_from_user({TopicPartition("orders", 0)})
    state = subscriptions.subscription.assignment.state_value(TopicPartition("orders", 0))
    assert not state.has_valid_position
    with pytest.raises(AssertionError):  # upstream: if this returns None now, drop patch 8
        _ = state.position

    faust_fixes.apply()
    thread: Any = object.__new__(faust_aiokafka.AIOKafkaConsumerThread)
    reached: list[Any] = []
    thread._ensure_consumer = lambda: SimpleNamespace(
        _fetcher=SimpleNamespace(_subscriptions=subscriptions)
    )

    def reach(now: float, tp: Any) -> bool:
        reached.append(tp)
        return False

    thread._verify_aiokafka_event_path = reach
    # unpatched, this call reaches state.position and raises
    faust_aiokafka.AIOKafkaConsumerThread.verify_event_path(thread, 0.0, TP("orders", 0))
    assert reached == []  # skipped before any check
    assert faust_fixes.fetch_state(thread, TP("orders", 1)) is None  # not assigned


# ── patch 9: a stopping worker commits even while a timer commit runs ─────────────────────


async def test_a_stopping_worker_commits_after_the_timer_commit_it_waited_for() -> None:
    """faust's stop made one commit(); while the timer was committing it only waited and
    returned False, and what the worker processed since the timer's snapshot was aborted."""
    faust_fixes.apply()
    calls: list[bool] = []
    answers = iter([False, True])  # the first only waited for the timer's commit

    async def commit(*, start_new_transaction: bool = True) -> bool:
        calls.append(start_new_transaction)
        return next(answers)

    consumer = SimpleNamespace(commit=commit)
    await faust_consumer.Consumer.commit_and_end_transactions(consumer)  # type: ignore[arg-type]
    assert calls == [False, False]  # committed again, and began no new transaction


# ── patch 10: the transactions of one commit are committed concurrently ─────────────────


class _TxnProducer:
    """A transactional producer that records its calls and can be held inside EndTxn."""

    def __init__(self, log: list[str], name: str, hold: asyncio.Event | None = None) -> None:
        self.log, self.name, self.hold = log, name, hold
        self.fail: BaseException | None = None

    async def send_offsets_to_transaction(self, offsets: Any, group_id: str) -> None:
        self.log.append(f"{self.name} offsets {sorted(offsets.values())} {group_id}")

    async def commit_transaction(self) -> None:
        self.log.append(f"{self.name} commit")
        if self.hold is not None:
            await self.hold.wait()
        if self.fail is not None:
            raise self.fail
        self.log.append(f"{self.name} committed")

    async def begin_transaction(self) -> None:
        self.log.append(f"{self.name} begin")


def _producer_with(producers: dict[str, _TxnProducer]) -> Any:
    return SimpleNamespace(
        _transaction_producers=producers,
        _trn_locks={tid: asyncio.Lock() for tid in producers},
    )


async def test_one_commits_transactions_do_not_wait_for_each_other() -> None:
    """faust committed partition 0's transaction, then 1's, then 2's: a record of partition 2
    waited for the other two commits before it was visible downstream."""
    faust_fixes.apply()
    log: list[str] = []
    held = asyncio.Event()
    producers = {
        "app-1-0": _TxnProducer(log, "p0", hold=held),
        "app-1-1": _TxnProducer(log, "p1"),
    }
    offsets = {"app-1-0": {TP("t", 0): 10}, "app-1-1": {TP("t", 1): 20}}
    commit = asyncio.ensure_future(
        faust_aiokafka.Producer.commit_transactions(_producer_with(producers), offsets, "app")
    )
    deadline = asyncio.get_running_loop().time() + 10
    while "p1 begin" not in log:  # partition 1 commits while partition 0's EndTxn is held
        assert asyncio.get_running_loop().time() < deadline, log
        assert not commit.done(), log
        await asyncio.sleep(0.01)
    assert "p0 committed" not in log
    held.set()
    await asyncio.wait_for(commit, 10)
    assert log.index("p0 committed") < log.index("p0 begin")
    assert "p0 offsets [10] app" in log and "p1 offsets [20] app" in log


async def test_a_fenced_transaction_fails_the_commit_after_the_others_committed() -> None:
    faust_fixes.apply()
    log: list[str] = []
    fenced = _TxnProducer(log, "p0")
    fenced.fail = RuntimeError("ProducerFenced")
    producers = {"app-1-0": fenced, "app-1-1": _TxnProducer(log, "p1")}
    offsets = {"app-1-0": {TP("t", 0): 1}, "app-1-1": {TP("t", 1): 2}}
    with pytest.raises(RuntimeError, match="ProducerFenced"):
        await faust_aiokafka.Producer.commit_transactions(
            _producer_with(producers), offsets, "app", start_new_transaction=False
        )
    assert "p1 committed" in log  # the other partition's commit was not abandoned
    assert "p0 committed" not in log
    assert not any(line.endswith("begin") for line in log)  # a stop begins nothing new


# ── patch 11: a broker restart during a coordinator lookup is retried ─────────────────────


class _LookupClient:
    """A client whose coordinator lookup fails with ``errors`` before it answers node 7."""

    def __init__(self, errors: list[Exception]) -> None:
        self.errors = errors
        self.refreshed = 0

    async def coordinator_lookup(self, coordinator_type: Any, key: str) -> int:
        if self.errors:
            raise self.errors.pop(0)
        return 7

    async def ready(self, node_id: int, group: Any = None) -> bool:
        return True

    async def force_metadata_update(self) -> bool:
        self.refreshed += 1
        return True


def _sender(client: _LookupClient) -> Any:
    return SimpleNamespace(client=client, _coordinators={}, _txn_manager=object(), _retry_backoff=0)


async def test_a_coordinator_lookup_during_a_broker_restart_is_retried() -> None:
    """aiokafka failed the transactional producer (and every pending write with it) when the
    group coordinator's lookup met a closed connection while the broker restarted."""
    from aiokafka.client import CoordinationType
    from aiokafka.errors import KafkaConnectionError
    from aiokafka.producer.sender import Sender

    faust_fixes.apply()
    client = _LookupClient([KafkaConnectionError("closed"), KafkaConnectionError("refused")])
    sender = _sender(client)
    assert await Sender._find_coordinator(sender, CoordinationType.GROUP, "mrhub-x") == 7
    assert client.refreshed == 2
    assert sender._coordinators == {CoordinationType.GROUP: 7}


async def test_a_refused_coordinator_lookup_still_fails() -> None:
    from aiokafka.client import CoordinationType
    from aiokafka.errors import GroupAuthorizationFailedError
    from aiokafka.producer.sender import Sender

    faust_fixes.apply()
    client = _LookupClient([GroupAuthorizationFailedError()])
    with pytest.raises(GroupAuthorizationFailedError):
        await Sender._find_coordinator(_sender(client), CoordinationType.GROUP, "mrhub-x")
    assert client.refreshed == 0


# ── patch 12: a transactional commit runs only between events ───────────────────────────


class _App:
    """A stand-in faust app (weakly referenceable, as the gate registry needs)."""

    in_transaction: bool
    producer: Any


class _EmptyBuffer:
    """A stand-in producer buffer with nothing in it, recording that a commit looked."""

    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    @property
    def size(self) -> int:
        self.calls.append("drain")
        return 0


def _committing_consumer(app: Any, calls: list[str], buffer: Any = None) -> Any:
    """A consumer whose upstream _commit_tps finds nothing to commit, recording its calls
    (``offsets``: the upstream commit reading what to commit)."""
    app.in_transaction = True
    app.producer = SimpleNamespace(buffer=_EmptyBuffer(calls) if buffer is None else buffer)
    acked = {TP("t", 0): [5]}  # an event acked since the last commit

    def committable(tps: Any) -> dict[Any, int]:
        calls.append("offsets")
        return {}

    return SimpleNamespace(app=app, _acked=acked, _filter_committable_offsets=committable)


async def test_a_commit_waits_for_the_event_in_flight_and_holds_the_next_one_back() -> None:
    """faust's commit timer could commit an event's first outputs without its offset (the
    event not yet acked): a kill -9 then would make those outputs twice."""
    faust_fixes.apply()
    app = _App()
    gate = faust_fixes.commit_gate(app)
    calls: list[str] = []
    consumer = _committing_consumer(app, calls)
    await gate.enter()  # an agent is half way through an event
    commit = asyncio.ensure_future(
        faust_consumer.Consumer._commit_tps(consumer, [TP("t", 0)], True)
    )
    for _ in range(20):
        await asyncio.sleep(0)
    assert calls == [] and not commit.done()  # nothing read or drained while it runs
    next_event = asyncio.ensure_future(gate.enter())
    for _ in range(20):
        await asyncio.sleep(0)
    assert not next_event.done()  # the commit is waiting: no new event starts
    gate.leave()
    assert await asyncio.wait_for(commit, 5) is False  # nothing to commit in this fake
    assert calls == ["drain", "offsets"]
    await asyncio.wait_for(next_event, 5)  # the gate opens again after the commit
    assert gate.in_flight == 1
    gate.leave()


async def test_a_commit_that_cannot_get_between_events_is_deferred() -> None:
    faust_fixes.apply()
    gate = faust_fixes.CommitGate()
    await gate.enter()
    async with gate.between_events(timeout_s=0.05) as between:
        assert between is False
    gate.leave()
    async with gate.between_events(timeout_s=5) as between:
        assert between is True
    await asyncio.wait_for(gate.enter(), 5)  # open again


async def test_an_app_without_the_hubs_agents_commits_as_before() -> None:
    faust_fixes.apply()
    calls: list[str] = []
    consumer = _committing_consumer(_App(), calls)
    assert await faust_consumer.Consumer._commit_tps(consumer, [TP("t", 0)], True) is False
    assert calls == ["drain", "offsets"]


# ── patches 4 and 15: a commit waits until every buffered table write is in it ─────────


async def _started_buffer() -> ProducerBuffer:
    """faust's real producer buffer, with its sending task running."""
    buffer = ProducerBuffer()
    buffer.app = SimpleNamespace(conf=SimpleNamespace(producer_threaded=False))  # type: ignore[assignment]
    await buffer.start()
    return buffer


def _table_write(n: int, published: list[int], *, send: Any) -> Any:
    """A buffered table write whose send (to its transaction's producer) is ``send()``."""

    async def publish_message(fut: Any, wait: bool = False) -> None:
        await send()
        published.append(n)

    return SimpleNamespace(
        message=SimpleNamespace(channel=SimpleNamespace(publish_message=publish_message))
    )


async def test_a_commit_waits_until_every_buffered_table_write_is_in_its_transaction() -> None:
    """faust's ProducerBuffer.flush() gives up when a write takes over 0.1 s to send: the
    commit then committed the offsets of events whose table writes were still buffered.
    They went into the next transaction, a kill -9 before that one committed lost them,
    and the restarted recognition worker, its tables rebuilt from the changelog, decided
    orders `no-prior-result` although it had committed the patients' results."""
    faust_fixes.apply()
    buffer = await _started_buffer()
    try:
        published: list[int] = []

        async def slow_send() -> None:  # a retried produce, a busy broker
            await asyncio.sleep(0.25)

        for n in range(3):
            buffer.put(_table_write(n, published, send=slow_send))
        calls: list[str] = []
        consumer = _committing_consumer(_App(), calls, buffer)
        committable = consumer._filter_committable_offsets

        def offsets_after_the_writes(tps: Any) -> dict[Any, int]:
            calls.append(f"published {published}")
            return committable(tps)  # type: ignore[no-any-return]

        consumer._filter_committable_offsets = offsets_after_the_writes
        commit = faust_consumer.Consumer._commit_tps(consumer, [TP("t", 0)], True)
        assert await asyncio.wait_for(commit, 10) is False  # nothing to commit in this fake
        assert calls == ["published [0, 1, 2]", "offsets"]  # every write, then the offsets
    finally:
        await buffer.stop()


async def test_a_commit_whose_table_writes_cannot_be_sent_is_deferred() -> None:
    """A write that cannot be handed to the producer (the broker gone) must not let the
    offsets of its event commit without it: the commit waits, then commits nothing."""
    faust_fixes.apply()
    buffer = await _started_buffer()
    release = asyncio.Event()
    try:
        published: list[int] = []
        buffer.put(_table_write(0, published, send=release.wait))
        assert await faust_fixes.drain_producer_buffer(buffer, timeout_s=0.3) is False
        assert published == []
        release.set()
        assert await faust_fixes.drain_producer_buffer(buffer, timeout_s=10) is True
        assert published == [0]
    finally:
        release.set()
        await buffer.stop()


async def test_a_changelog_start_below_minus_one_is_read_from_the_beginning() -> None:
    """A worker joining during a leader move crashed its recovery: the earliest offset the
    broker gave as -1 became -2, and aiokafka refuses to seek to it."""
    from collections import Counter

    from faust.tables.recovery import Recovery
    from faust.types import TP

    faust_fixes.apply()
    sought: list[dict[Any, int]] = []

    class _Consumer:
        async def seek_wait(self, offsets: dict[Any, int]) -> None:
            sought.append(dict(offsets))

    a, b, c, d = (TP("t-changelog", p) for p in range(4))
    offsets: Counter[Any] = Counter({a: -2, b: -1, c: 41, d: None})
    seek: Any = Recovery._seek_offsets
    await seek(object(), _Consumer(), {a, b, c, d}, offsets, "active")
    assert sought == [{a: 0, b: 0, c: 41, d: None}]
    assert offsets[a] == -2  # the caller's offsets are left as they were


# ── patch 16: recovery takes a partition as read only after it has been quiet ─────────


class _Thread:
    async def position(self, tp: Any) -> int:
        return 600  # aiokafka's fetch position: every record fetched, not all received


def _recovering_consumer(started_at: float | None, received_at: dict[Any, float]) -> Any:
    recovery = SimpleNamespace(
        in_recovery=True,
        active_tps={TP("results-changelog", 1)},
        _recovery_started_at=started_at,
        _active_events_received_at=received_at,
    )
    return SimpleNamespace(
        app=SimpleNamespace(tables=SimpleNamespace(recovery=recovery)), _thread=_Thread()
    )


async def test_recovery_does_not_take_a_partition_as_read_just_after_it_began(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker taking over a dead worker's partitions took them as read to their end 0.2 s
    after recovery began (faust's count of quiet waits was left from before, and the fetch
    position had passed the highwater before recovery received the records), dropped their
    records and decided orders without the patients' results."""
    faust_fixes.apply()
    monkeypatch.setattr(faust_fixes, "monotonic", lambda: 1000.2)
    tp = TP("results-changelog", 1)
    position: Any = faust_consumer.ThreadDelegateConsumer.position
    just_began = _recovering_consumer(1000.0, {})
    assert await position(just_began, tp) < 522  # below its highwater: not read yet
    receiving = _recovering_consumer(990.0, {tp: 1000.1})
    assert await position(receiving, tp) < 522


async def test_recovery_takes_a_quiet_partition_as_read_from_its_position(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The shortcut faust needs (the last records before a highwater are transaction markers
    it never receives) still works once recovery has heard nothing for a while."""
    faust_fixes.apply()
    monkeypatch.setattr(faust_fixes, "monotonic", lambda: 1000.0 + faust_fixes.RECOVERY_QUIET_S)
    tp = TP("results-changelog", 1)
    position: Any = faust_consumer.ThreadDelegateConsumer.position
    assert await position(_recovering_consumer(999.0, {tp: 1000.0}), tp) == 600
    other = TP("mrhub.results.result-indexed.v1", 1)  # not a changelog being recovered
    assert await position(_recovering_consumer(1000.0 + 9, {}), other) == 600


# ── patch 17: the stores of a run that did not stop cleanly are rebuilt ──────────────────


def test_the_stores_of_a_run_that_did_not_stop_cleanly_are_removed(tmp_path: Path) -> None:
    """A killed worker's RocksDB holds writes of its aborted transactions; the restarted
    worker must rebuild its tables from the changelogs instead of trusting them."""
    tables, mark = tmp_path / "tables", tmp_path / faust_fixes.UNCLEAN_MARK
    (tables / "seen-0.db").mkdir(parents=True)
    assert not faust_fixes.open_table_state(tables, mark)  # first start: nothing to distrust
    assert mark.exists() and (tables / "seen-0.db").exists()
    # the run is killed: the mark stays, and the next start removes the stores
    assert faust_fixes.open_table_state(tables, mark)
    assert tables.is_dir() and list(tables.iterdir()) == []
    (tables / "seen-0.db").mkdir()
    faust_fixes.close_table_state(mark)  # this run stopped cleanly
    assert not faust_fixes.open_table_state(tables, mark)
    assert (tables / "seen-0.db").exists()


async def test_a_clean_stop_clears_the_mark_and_one_with_work_left_does_not(
    tmp_path: Path,
) -> None:
    faust_fixes.apply()
    app = faust.App(
        "compat-clean-stop",
        store="rocksdb://",
        datadir=str(tmp_path),
        processing_guarantee="exactly_once",
    )
    app._create_directories()  # what the app's first start calls (patch 17)
    mark = Path(app.conf.appdir) / faust_fixes.UNCLEAN_MARK
    assert mark.exists()

    async def commit(*, start_new_transaction: bool = True) -> bool:
        return True

    stop: Any = faust_consumer.Consumer.commit_and_end_transactions
    # an acked offset the stop could not commit: its writes may be in an open transaction
    left = SimpleNamespace(
        commit=commit, app=app, should_stop=True, _unacked_messages=set(), _acked={TP("a", 0): [7]}
    )
    await stop(left)
    assert mark.exists()
    # faust calls it at a rebalance too, and the worker goes on writing afterwards
    revoking = SimpleNamespace(
        commit=commit, app=app, should_stop=False, _unacked_messages=set(), _acked={}
    )
    await stop(revoking)
    assert mark.exists()
    # what faust leaves once everything is committed: emptied lists
    done = SimpleNamespace(
        commit=commit, app=app, should_stop=True, _unacked_messages=set(), _acked={TP("a", 0): []}
    )
    await stop(done)
    assert not mark.exists()
    # an at-least-once app keeps no mark: its stores are not rebuilt
    other = faust.App("compat-alo", store="rocksdb://", datadir=str(tmp_path / "alo"))
    other._create_directories()
    assert not (Path(other.conf.appdir) / faust_fixes.UNCLEAN_MARK).exists()
