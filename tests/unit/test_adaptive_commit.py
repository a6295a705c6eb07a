"""The adaptive commit interval (services/common/faust_fixes.py, patch 14).

faust commits every source partition's transaction on one fixed timer, so a stage's outputs
reach the next stage up to a whole interval late even when the stage has nothing else to
do. Patched, the timer ticks every ``commit_interval_min_s`` and commits a transaction at a
tick when its partitions are caught up, or once ``commit_interval_s`` has passed since its
last commit (a backlog commits as rarely as before).

The consumer below is a stand-in with aiokafka's real subscription state (the fetch position
and last stable offset the patch reads); time is a fake clock that the consumer's ``sleep``
advances, so no test depends on how fast the machine is.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import pytest
from aiokafka.consumer.subscription_state import SubscriptionState
from aiokafka.structs import TopicPartition
from faust.transport import consumer as faust_consumer
from faust.types import TP, Message
from pydantic import ValidationError

from services.common import faust_fixes
from services.common.settings import KafkaSettings, Settings

#: binary fractions: the fake clock's sums are exact
MIN_S = 0.125
MAX_S = 1.0


class _Clock:
    def __init__(self) -> None:
        self.now = 1024.0

    def __call__(self) -> float:
        return self.now


class _App:
    """A stand-in faust app: topics ``orders`` and ``orders-repartition`` are one partition
    group (one transaction per partition number), ``results`` another."""

    def __init__(self) -> None:
        class Conf:
            id = "mrhub-test"

        class Assignor:
            @staticmethod
            def group_for_topic(topic: str) -> int:
                return 1 if topic == "results" else 0

        class Tables:
            changelog_topics: ClassVar[set[str]] = {"mrhub-test-table-changelog"}

        self.conf, self.assignor, self.tables = Conf(), Assignor(), Tables()
        self.in_transaction = True
        self.producer: Any = None  # a test that commits sets one


class _Fetcher:
    def __init__(self, subscriptions: SubscriptionState) -> None:
        self._subscriptions = subscriptions


class _KafkaConsumer:
    def __init__(self, subscriptions: SubscriptionState) -> None:
        self._fetcher = _Fetcher(subscriptions)


class _Thread:
    def __init__(self, subscriptions: SubscriptionState) -> None:
        self.consumer = _KafkaConsumer(subscriptions)

    def _ensure_consumer(self) -> _KafkaConsumer:
        return self.consumer


class _Consumer:
    """What the commit timer touches of a faust consumer. ``sleep`` advances the clock and
    stops the timer once ``until`` is reached; ``commit`` records what it was asked to commit
    and forgets those partitions' acks, as faust does."""

    def __init__(self, clock: _Clock, tps: list[TP], *, until: float) -> None:
        self.app = _App()
        self.clock = clock
        self.until = until
        self.commit_interval = MAX_S  # broker_commit_interval: commit_interval_s
        self.should_stop = False
        self.sleeps: list[float] = []
        self.commits: list[tuple[float, set[TP] | None]] = []
        self._acked: dict[TP, list[int]] = {}
        self._unacked_messages: set[Message] = set()
        self.subscriptions = SubscriptionState()
        self.subscriptions.assign_from_user({TopicPartition(tp.topic, tp.partition) for tp in tps})
        self._thread = _Thread(self.subscriptions)
        self._assignment = set(tps)

    def assignment(self) -> set[TP]:
        return set(self._assignment)

    def fetched(self, tp: TP, *, position: int, lso: int) -> None:
        """aiokafka has handed out ``tp`` up to ``position``; its last fetch said the last
        stable offset is ``lso``."""
        state = self.subscriptions.subscription.assignment.state_value(
            TopicPartition(tp.topic, tp.partition)
        )
        state.seek(position)
        state.lso = lso
        state.highwater = lso

    def ack(self, tp: TP, *offsets: int) -> None:
        self._acked.setdefault(tp, []).extend(offsets)

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if self.clock.now >= self.until:  # the tick at `until` was the last
            self.should_stop = True
        self.clock.now += seconds
        await asyncio.sleep(0)

    async def itertimer(self, interval: float, name: str = "") -> Any:
        while True:
            await self.sleep(interval)
            if self.should_stop:
                return
            yield interval

    async def commit(
        self, topics: set[TP] | None = None, start_new_transaction: bool = True
    ) -> bool:
        self.commits.append((self.clock.now, None if topics is None else set(topics)))
        committed = [tp for tp in self._acked if topics is None or tp in topics]
        for tp in committed:
            self._acked[tp] = []
        return bool(committed)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    faust_fixes.apply()
    fake = _Clock()
    monkeypatch.setattr(faust_fixes, "monotonic", fake)
    return fake


async def run_timer(consumer: _Consumer) -> None:
    """faust starts ``Consumer._commit_handler`` as a service task: run it to its stop."""
    handler: Any = faust_consumer.Consumer._commit_handler
    await asyncio.wait_for(handler(consumer), 10)


def adaptive(consumer: _Consumer, min_s: float = MIN_S, max_s: float = MAX_S) -> None:
    faust_fixes.adaptive_commit(consumer.app, min_s, max_s)


ORDERS0, ORDERS1 = TP("orders", 0), TP("orders", 1)
REPART0 = TP("orders-repartition", 0)


async def test_a_caught_up_partition_is_committed_at_the_short_tick(clock: _Clock) -> None:
    """faust's timer would leave it for the whole commit_interval_s: at 1.0 s per hop an
    order took about 6 s to become a decision."""
    consumer = _Consumer(clock, [ORDERS0], until=clock.now + MIN_S)
    adaptive(consumer)
    consumer.fetched(ORDERS0, position=42, lso=42)  # read to the end it was told of
    consumer.ack(ORDERS0, 40, 41)  # and all of it processed
    start = clock.now
    await run_timer(consumer)
    assert consumer.commits == [(start + MIN_S, {ORDERS0})]


async def test_a_partition_with_a_backlog_waits_for_the_long_interval(clock: _Clock) -> None:
    consumer = _Consumer(clock, [ORDERS0], until=clock.now + 2 * MAX_S + 2 * MIN_S)
    adaptive(consumer)
    consumer.fetched(ORDERS0, position=1_000, lso=50_000)  # 49,000 records still to read
    start = clock.now
    consumer.ack(ORDERS0, 998, 999)

    async def keep_processing() -> None:  # it acks more at every tick
        offset = 1_000
        while not consumer.should_stop:
            consumer.ack(ORDERS0, offset)
            offset += 1
            await asyncio.sleep(0)

    worker = asyncio.ensure_future(keep_processing())
    await run_timer(consumer)
    await worker
    times = [at - start for at, _ in consumer.commits]
    # first seen at the first tick; committed once a full interval has passed since, then
    # again an interval after that commit: not at each of the eighteen ticks
    assert times == [MIN_S + MAX_S, MIN_S + 2 * MAX_S]
    assert all(tps == {ORDERS0} for _, tps in consumer.commits)


async def test_events_still_being_processed_are_not_caught_up(clock: _Clock) -> None:
    """Everything fetched was handed to the agent, but it has not processed all of it."""
    consumer = _Consumer(clock, [ORDERS0], until=clock.now + 5 * MIN_S)
    adaptive(consumer)
    consumer.fetched(ORDERS0, position=42, lso=42)
    consumer.ack(ORDERS0, 40)
    consumer._unacked_messages.add(Message("orders", 0, 41, 0.0, 0, [], b"k", b"v", None))
    await run_timer(consumer)
    assert consumer.commits == []


async def test_a_partition_not_fetched_yet_is_not_taken_for_caught_up(clock: _Clock) -> None:
    consumer = _Consumer(clock, [ORDERS0], until=clock.now + 5 * MIN_S)
    adaptive(consumer)
    consumer.ack(ORDERS0, 7)  # no fetch position or last stable offset known
    await run_timer(consumer)
    assert consumer.commits == []


async def test_the_partitions_of_one_transaction_are_committed_together(clock: _Clock) -> None:
    """orders/0 and orders-repartition/0 share a transaction: committing it for the caught-up
    one would commit the other's outputs too, so it waits for both; orders/1's transaction
    is caught up and commits on its own."""
    consumer = _Consumer(clock, [ORDERS0, REPART0, ORDERS1], until=clock.now + MIN_S)
    adaptive(consumer)
    consumer.fetched(ORDERS0, position=10, lso=10)
    consumer.fetched(REPART0, position=10, lso=900)  # a backlog
    consumer.fetched(ORDERS1, position=5, lso=5)
    consumer.ack(ORDERS0, 9)
    consumer.ack(ORDERS1, 4)
    await run_timer(consumer)
    assert [tps for _, tps in consumer.commits] == [{ORDERS1}]

    consumer.fetched(REPART0, position=900, lso=900)  # the backlog is read and processed
    consumer.ack(REPART0, 899)
    consumer.until, consumer.should_stop = clock.now + MIN_S, False
    await run_timer(consumer)
    assert [tps for _, tps in consumer.commits][1:] == [{ORDERS0, REPART0}]


async def test_a_changelog_partition_does_not_hold_its_transaction_back(clock: _Clock) -> None:
    """A table's changelog partition is assigned but not read after recovery: its position
    stays where recovery ended while the worker's own commits move its end."""
    changelog = TP("mrhub-test-table-changelog", 0)
    consumer = _Consumer(clock, [ORDERS0, changelog], until=clock.now + MIN_S)
    adaptive(consumer)
    consumer.fetched(ORDERS0, position=3, lso=3)
    consumer.fetched(changelog, position=100, lso=250)
    consumer.ack(ORDERS0, 2)
    await run_timer(consumer)
    assert [tps for _, tps in consumer.commits] == [{ORDERS0}]


async def test_no_commit_and_no_gate_when_nothing_is_due(clock: _Clock) -> None:
    consumer = _Consumer(clock, [ORDERS0], until=clock.now + 0.95 * MAX_S)
    adaptive(consumer)
    consumer.fetched(ORDERS0, position=1_000, lso=2_000)
    consumer.ack(ORDERS0, 999)  # acked, but behind and not yet due
    await run_timer(consumer)
    assert consumer.commits == []  # eight ticks, no commit() at all
    assert consumer.sleeps == [MIN_S] * 9


async def test_a_commit_with_nothing_acked_does_not_wait_for_the_events_in_flight() -> None:
    """The gate (patch 12) holds every agent back while a commit waits for the events in
    flight; a commit that has nothing to commit must not."""
    faust_fixes.apply()
    app = _App()
    gate = faust_fixes.commit_gate(app)
    drained: list[str] = []

    class Buffer:
        @property
        def size(self) -> int:
            drained.append("drain")
            return 0

    consumer: Any = type(
        "C",
        (),
        {
            "app": app,
            "_acked": {ORDERS0: []},  # faust keeps the key once its acks are committed
        },
    )()
    app.producer = type("P", (), {"buffer": Buffer()})()
    await gate.enter()  # an agent is half way through an event
    try:
        committed = await asyncio.wait_for(
            faust_consumer.Consumer._commit_tps(consumer, [ORDERS0], True), 5
        )
        assert committed is False
        assert drained == []
        await asyncio.wait_for(gate.enter(), 5)  # the gate is open: the next event starts
        gate.leave()
    finally:
        gate.leave()


async def test_equal_intervals_are_fausts_own_timer(clock: _Clock) -> None:
    """commit_interval_min_s == commit_interval_s: every tick commits everything acked, as
    before (a partition with a backlog included)."""
    consumer = _Consumer(clock, [ORDERS0], until=clock.now + 2 * MAX_S)
    adaptive(consumer, MAX_S, MAX_S)
    consumer.fetched(ORDERS0, position=1_000, lso=50_000)
    consumer.ack(ORDERS0, 999)
    await run_timer(consumer)
    start = clock.now - sum(consumer.sleeps)
    assert consumer.sleeps == [MAX_S] * 3
    assert consumer.commits == [(start + 2 * MAX_S, None)]  # commit() of everything


async def test_an_app_without_the_policy_keeps_fausts_own_timer(clock: _Clock) -> None:
    consumer = _Consumer(clock, [ORDERS0], until=clock.now + 2 * MAX_S)
    consumer.fetched(ORDERS0, position=5, lso=5)
    consumer.ack(ORDERS0, 4)
    await run_timer(consumer)
    assert consumer.sleeps == [MAX_S] * 3
    assert [tps for _, tps in consumer.commits] == [None]


async def test_a_stop_commits_what_the_timer_left_open(clock: _Clock) -> None:
    """Patch 9's stop commits everything processed, whatever the timer deferred."""
    consumer = _Consumer(clock, [ORDERS0], until=clock.now + 3 * MIN_S)
    adaptive(consumer)
    consumer.fetched(ORDERS0, position=1_000, lso=2_000)
    consumer.ack(ORDERS0, 999)
    await run_timer(consumer)
    assert consumer.commits == []
    stop: Any = faust_consumer.Consumer.commit_and_end_transactions
    await stop(consumer)
    assert [tps for _, tps in consumer.commits] == [None]
    assert consumer._acked[ORDERS0] == []


# ── settings ─────────────────────────────────────────────────────────────────────────


def test_commits_are_adaptive_by_default_and_one_fixed_interval_on_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kafka = KafkaSettings()
    assert (kafka.commit_tick_s, kafka.commit_interval_s, kafka.adaptive_commit_s) == (
        0.05,
        1.0,
        0.05,
    )
    monkeypatch.setenv("MRHUB_KAFKA__COMMIT_INTERVAL_MIN_S", "1")
    fixed = Settings().kafka  # equal to the longest: one fixed interval
    assert (fixed.commit_tick_s, fixed.adaptive_commit_s) == (1.0, None)
    monkeypatch.delenv("MRHUB_KAFKA__COMMIT_INTERVAL_MIN_S")
    monkeypatch.setenv("MRHUB_KAFKA__COMMIT_INTERVAL_S", "0.02")
    short = Settings().kafka  # the default shortest interval follows a shorter longest one
    assert (short.commit_tick_s, short.adaptive_commit_s) == (0.02, None)


def test_a_shortest_interval_above_the_longest_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MRHUB_KAFKA__COMMIT_INTERVAL_MIN_S", "2")
    with pytest.raises(ValidationError, match="COMMIT_INTERVAL_MIN_S"):
        Settings()
    monkeypatch.setenv("MRHUB_KAFKA__COMMIT_INTERVAL_S", "2")
    assert Settings().kafka.commit_interval_min_s == 2.0
    with pytest.raises(ValidationError):
        KafkaSettings(commit_interval_min_s=0)
    with pytest.raises(ValueError, match="min"):
        faust_fixes.AdaptiveCommit(1.0, 0.5)
