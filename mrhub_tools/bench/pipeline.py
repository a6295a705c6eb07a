"""``mrhub bench pipeline``: hospital visits through the whole hub, beside the Kafka ceiling.

Starts what it measures in a temporary directory: a Kafka broker (unless
``MRHUB_KAFKA__BOOTSTRAP_SERVERS`` names one), the gateway, the patient index and the
recognition worker (``mrhub serve NAME``, one process each), against a simulated region's
institution registry (:mod:`mrhub_tools.simulate.region`). The stream is the simulator's
(:func:`mrhub_tools.simulate.scenario.build_scenario`, no malformed requests, no resends):
``--visits`` patients, each with a hospital visit — a transaction bundle of the Patient and a
lab panel with its report, or an imaging study with its report — and then orders whose
expected decisions depend on those results. Then, in order:

1. **steady** — half of the visits at ``--visit-rate`` requests per second;
2. **flat out** — the other half as fast as ``--posters`` concurrent posters go;
3. **orders** — every order at ``--order-rate`` per second, once the recognition worker has
   applied every result (as the simulator does);
4. **hops** — one more lab result, whose trace id is then looked for on every topic a result
   may cross (the gateway's topic, each internal topic of the patient index, the
   recognition worker's input): the topics that carry it are the hops ``H`` of a result;
5. **Kafka ceiling** — on the same broker, a bare loop: one producer, then ``H``
   consume → identity → produce stages chained through ``H`` topics into one more, each an
   aiokafka transactional consumer-producer (``read_committed``, offsets sent to the
   transaction, a commit every ``kafka.commit_interval_s``, and every
   ``kafka.commit_interval_min_s`` when caught up — the hub's own settings). Once at
   the order rate (latency), once flat out with as many messages as the flat-out phase
   indexed, of the same average size (records/s).

Figures: resources/s accepted by the gateway; canonical records/s end to end (first post of
a phase → its last record visible on ``mrhub.results.result-indexed.v1`` to a
``read_committed`` consumer); post → indexed latency; CPU µs per record of each service (the
change in its process tree's CPU time over the phase, divided by the phase's records);
order → decision p50 / p99 / max (the gateway's ``received_at`` carried in the envelope to
the decision's ``occurred_at``) with every order decided exactly once (lost and doubled are
counted per order); the ceiling's records/s and latency and the ratios hub ÷ ceiling.
``--json`` prints the report as JSON. Wall-clock figures depend on what else the machine
runs; CPU per record much less so.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from mrhub_tools.bench._common import (
    cpu_per_record_us,
    percentile,
    start_service,
    stop_processes,
    tree_cpu_s,
    wait_ready,
)
from services.common.codec import dumps
from services.common.envelope import Envelope
from services.common.harness import ProcessExitedError
from services.common.settings import Settings
from services.common.topics import (
    ALL_TOPICS,
    DECISION_MADE,
    RESOURCE_ACCEPTED,
    RESULT_INDEXED,
    TopicSpec,
)

VISITS: Final = 400
VISIT_RATE: Final = 20.0
POSTERS: Final = 8
ORDER_RATE: Final = 100.0
#: A scaling run's sizes (``--workers 1,2,3``): about 10 minutes for three counts on a
#: three-node cluster on 2 cores, flat-out halves long enough (≈850 records) that filling
#: the pipeline is a small part of them.
SCALE_VISITS: Final = 600
SCALE_VISIT_RATE: Final = 30.0
SCALE_POSTERS: Final = 16
INSTITUTIONS: Final = 20
SEED: Final = 20261122  # the `mrhub bench --seed` default
#: The bare loop's latency run lasts at most this long at the order rate.
CEILING_LATENCY_S: Final = 5.0
#: How long a bare-loop consumer's fetch waits for data the broker does not have yet (the
#: client default is 500 ms: a committed message could wait that long before it is read).
FETCH_WAIT_MS: Final = 20
#: Give up waiting when nothing new arrived for this long.
STALL_S: Final = 90.0
SERVICES: Final = ("ingest", "patient_index", "recognition")
#: What the report calls each service's CPU (the gateway is the ``ingest`` service).
CPU_NAMES: Final = {
    "ingest": "gateway",
    "patient_index": "patient_index",
    "recognition": "recognition",
}
PHASES: Final = ("steady", "flat_out")


def _log(msg: str) -> None:
    print(f"[bench pipeline] {msg}", file=sys.stderr, flush=True)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def latency_summary(seconds: Iterable[float]) -> dict[str, Any]:
    """Count, p50, p99 and max in ms of latencies given in seconds."""
    values = sorted(seconds)
    return {
        "count": len(values),
        "p50_ms": _ms(percentile(values, 50)),
        "p99_ms": _ms(percentile(values, 99)),
        "max_ms": _ms(values[-1] if values else None),
    }


def _rate(n: int, seconds: float | None) -> float | None:
    return None if not seconds or seconds <= 0 else round(n / seconds, 1)


def ratio(hub: float | None, ceiling: float | None) -> float | None:
    """``hub ÷ ceiling`` rounded, None when either is missing or the ceiling is 0."""
    if hub is None or not ceiling:
        return None
    return round(hub / ceiling, 3)


# --------------------------------------------------------------------------------- hops


def app_id(service: str) -> str:
    """The faust app id (and the prefix of its internal topics) of a streaming service."""
    return f"mrhub-{service.replace('_', '-')}"


def hop_candidates(topics: Iterable[str]) -> list[str]:
    """The topics a result may cross, in path order: the gateway's topic, the patient index's
    own (repartition) topics among ``topics`` — not its tables' changelogs nor faust's
    ``__assignor`` topics — and the recognition worker's input."""
    prefix = app_id("patient_index") + "-"
    internal = sorted(
        t for t in topics if t.startswith(prefix) and not t.endswith("-changelog") and "__" not in t
    )
    return [RESOURCE_ACCEPTED.name, *internal, RESULT_INDEXED.name]


def count_hops(candidates: Sequence[str], carrying: Mapping[str, float]) -> dict[str, Any]:
    """The hops of a result: the candidate topics that carried its trace id (``carrying``:
    topic → when its record of the trace was written), in the order it crossed them. When it
    never reached the recognition worker's input, every candidate is counted: an upper
    bound, marked not measured."""
    if RESULT_INDEXED.name not in carrying:
        return {"hops": len(candidates), "path": list(candidates), "measured": False}
    order = {t: i for i, t in enumerate(candidates)}
    path = sorted((t for t in candidates if t in carrying), key=lambda t: (carrying[t], order[t]))
    return {"hops": len(path), "path": path, "measured": True}


# --------------------------------------------------------------------------------- Kafka


class Tail:
    """Every record that becomes visible (``read_committed``) on some topics from now on,
    with the wall-clock time it was seen; read by a thread of this process."""

    def __init__(self, bootstrap: str, topics: Sequence[str]) -> None:
        self.bootstrap = bootstrap
        self.topics = list(topics)
        self.seen: dict[str, list[tuple[float, Any]]] = {t: [] for t in self.topics}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.errors: list[str] = []
        self._thread = threading.Thread(target=self._run, name="bench-tail", daemon=True)

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(60):
            raise RuntimeError("the topic reader did not start")
        if self._error is not None:
            raise RuntimeError(f"the topic reader failed: {self._error!r}")

    def _run(self) -> None:
        from kafka import KafkaConsumer, TopicPartition

        from services.common.kafka_security import kafka_python_options

        try:
            consumer = KafkaConsumer(
                bootstrap_servers=self.bootstrap,
                enable_auto_commit=False,
                isolation_level="read_committed",
                fetch_max_wait_ms=20,
                max_partition_fetch_bytes=8 * 1024 * 1024,
                **kafka_python_options(),
            )
            tps: list[Any] = []
            deadline = time.monotonic() + 60
            for t in self.topics:  # on a busy machine the first metadata may come late
                while not (parts := consumer.partitions_for_topic(t)):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"no partitions of {t} in the broker's metadata")
                    self._stop.wait(0.5)
                tps += [TopicPartition(t, p) for p in sorted(parts)]
            consumer.assign(tps)
            consumer.seek_to_end(*tps)
            for tp in tps:  # resolve now: only what becomes visible from here on
                consumer.position(tp)
        except BaseException as exc:  # reported by start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            while not self._stop.is_set():
                try:
                    batch = consumer.poll(timeout_ms=100, max_records=5000)
                except Exception as exc:  # a transient error: counted, and read on
                    self.errors.append(repr(exc))
                    self._stop.wait(0.5)
                    continue
                now = time.time()
                with self._lock:
                    for tp, records in batch.items():
                        self.seen[tp.topic].extend((now, r) for r in records)
        finally:
            consumer.close()

    def records(self, topic: str, keep: Callable[[str | None], bool]) -> list[tuple[float, Any]]:
        with self._lock:
            return [(t, r) for t, r in self.seen[topic] if keep(trace_of(r))]

    def wait(
        self,
        topic: str,
        keep: Callable[[str | None], bool],
        n: int,
        stall_s: float,
        *,
        distinct: bool = False,
    ) -> list[tuple[float, Any]]:
        """The records ``keep`` accepts once there are ``n`` (of ``n`` distinct trace ids with
        ``distinct``), or when none came for ``stall_s``."""
        last, moved = -1, time.monotonic()
        while True:
            found = self.records(topic, keep)
            have = len({trace_of(r) for _, r in found}) if distinct else len(found)
            if have >= n:
                return found
            if len(found) != last:
                last, moved = len(found), time.monotonic()
            elif time.monotonic() - moved > stall_s:
                return found
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def trace_of(record: Any) -> str | None:
    for k, v in record.headers or ():
        if k == "trace_id":
            return bytes(v).decode()
    return None


def topics_carrying(bootstrap: str, topics: Sequence[str], trace: str) -> dict[str, float]:
    """Which of ``topics`` hold a committed record whose trace id is ``trace``, with the
    earliest such record's timestamp (ms); one consumer reads them all to their end offsets."""
    from kafka import KafkaConsumer, TopicPartition

    from services.common.kafka_security import kafka_python_options

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        isolation_level="read_committed",
        max_partition_fetch_bytes=8 * 1024 * 1024,
        **kafka_python_options(),
    )
    out: dict[str, float] = {}
    try:
        tps = [
            TopicPartition(t, p)
            for t in topics
            for p in sorted(consumer.partitions_for_topic(t) or ())
        ]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        remaining = {tp for tp in tps if end[tp] > 0}
        deadline = time.monotonic() + 120
        while remaining and time.monotonic() < deadline:
            for tp, records in consumer.poll(timeout_ms=500, max_records=10000).items():
                for r in records:
                    if trace_of(r) == trace:
                        ts = float(r.timestamp)
                        out[tp.topic] = min(out.get(tp.topic, ts), ts)
            # transaction markers take offsets too: compare positions, not record counts
            remaining = {tp for tp in remaining if consumer.position(tp) < end[tp]}
    finally:
        consumer.close()
    return out


def list_topics(bootstrap: str) -> set[str]:
    from kafka import KafkaConsumer

    from services.common.kafka_security import kafka_python_options

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, **kafka_python_options())
    try:
        return set(consumer.topics())
    finally:
        consumer.close()


# ------------------------------------------------------------------------- the ceiling


@dataclass(frozen=True)
class BareResult:
    messages: int
    seconds: float  # first send → last message seen at the end of the chain
    latencies: list[float]
    cpu_s: float  # this process (producer, every stage, the reader)


def read_committed_consumer(bootstrap: str, group: str, **opts: Any) -> Any:
    """An aiokafka consumer of ``group`` that reads committed data only and commits nothing
    by itself (its offsets go to a transaction, or nowhere)."""
    from aiokafka import AIOKafkaConsumer

    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        isolation_level="read_committed",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=FETCH_WAIT_MS,
        **opts,
    )


def transactional_producer(bootstrap: str, group: str, **opts: Any) -> Any:
    """The transactional producer (``<group>-tx``, idempotent, acks=all) of ``group``'s
    consume → produce loop."""
    from aiokafka import AIOKafkaProducer

    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        transactional_id=f"{group}-tx",
        enable_idempotence=True,
        acks="all",
        **opts,
    )


async def transactional_loop(
    consumer: Any,
    producer: Any,
    group: str,
    interval_s: float,
    handle: Callable[[Any, Any], Awaitable[None]],
    stop: asyncio.Event | None = None,
    *,
    min_interval_s: float | None = None,
) -> None:
    """Consume → ``handle(tp, record)`` → commit, one transaction per ``interval_s``: what
    each record's handler sends and the offsets consumed commit together. Runs until
    ``stop`` is set (forever without one).

    With ``min_interval_s`` (the hub's ``kafka.commit_interval_min_s``), the loop also looks
    every ``min_interval_s`` whether it is caught up — each assigned partition's position at
    the last stable offset its last fetch reported — and if so commits then: what the hub's
    adaptive commit (faust_fixes patch 14) does at each tick. Under a backlog it still
    commits once per ``interval_s``."""
    loop = asyncio.get_running_loop()

    def stopping() -> bool:
        return stop is not None and stop.is_set()

    async def caught_up() -> bool:
        for tp in consumer.assignment():
            end = consumer.last_stable_offset(tp)
            if end is None or await consumer.position(tp) < end:
                return False
        return True

    while not stopping():
        batch = await consumer.getmany(timeout_ms=int(interval_s * 1000))
        if not batch:
            continue
        offsets: dict[Any, int] = {}
        async with producer.transaction():
            deadline = loop.time() + interval_s
            tick = deadline if min_interval_s is None else loop.time() + min_interval_s
            while True:
                for tp, records in batch.items():
                    for r in records:
                        await handle(tp, r)
                    offsets[tp] = records[-1].offset + 1
                now = loop.time()
                if now >= deadline or stopping():
                    break
                if min_interval_s is not None and now >= tick:
                    if await caught_up():
                        break
                    tick = now + min_interval_s
                wait = min(deadline, tick) - now
                batch = await consumer.getmany(timeout_ms=max(1, int(wait * 1000)))
            await producer.send_offsets_to_transaction(offsets, group)


async def bare_loop(
    bootstrap: str,
    topics: Sequence[str],
    *,
    messages: int,
    size: int,
    rate: float,
    commit_interval_s: float,
    commit_interval_min_s: float | None = None,
) -> BareResult:
    """One producer writes ``messages`` of ``size`` bytes to ``topics[0]`` (at ``rate`` per
    second, or flat out when 0); ``len(topics) - 1`` transactional stages each copy topic
    ``i`` to ``i + 1`` (commit every ``commit_interval_s``); a ``read_committed`` reader
    at the end times each message from its send (wall clock, carried in a header)."""
    from aiokafka import AIOKafkaProducer, ConsumerRebalanceListener

    from services.common.kafka_security import aiokafka_options

    # freshly created topics answer "not leader" for a moment; aiokafka logs each retry
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    opts = aiokafka_options()
    run = secrets.token_hex(4)
    stop = asyncio.Event()
    latencies: list[float] = []
    done = asyncio.Event()
    last_seen = 0.0
    joined: list[asyncio.Event] = [asyncio.Event() for _ in topics]

    class Joined(ConsumerRebalanceListener):  # type: ignore[misc]
        """Sets ``joined[i]`` once the consumer reading ``topics[i]`` has its partitions."""

        def __init__(self, i: int) -> None:
            self.i = i

        def on_partitions_revoked(self, revoked: Any) -> None:
            pass

        def on_partitions_assigned(self, assigned: Any) -> None:
            if assigned:
                joined[self.i].set()

    async def stage(i: int) -> None:
        group = f"mrhub-bench-bare-{run}-{i}"
        consumer = read_committed_consumer(bootstrap, group, **opts)
        producer = transactional_producer(bootstrap, group, **opts)
        consumer.subscribe([topics[i]], listener=Joined(i))
        await consumer.start()
        await producer.start()

        async def copy(_tp: Any, r: Any) -> None:
            await producer.send(topics[i + 1], r.value, key=r.key, headers=list(r.headers))

        try:
            await transactional_loop(
                consumer,
                producer,
                group,
                commit_interval_s,
                copy,
                stop,
                min_interval_s=commit_interval_min_s,
            )
        finally:
            await producer.stop()
            await consumer.stop()

    async def reader() -> None:
        nonlocal last_seen
        consumer = read_committed_consumer(bootstrap, f"mrhub-bench-bare-{run}-end", **opts)
        consumer.subscribe([topics[-1]], listener=Joined(len(topics) - 1))
        await consumer.start()
        try:
            while len(latencies) < messages and not stop.is_set():
                batch = await consumer.getmany(timeout_ms=100)
                now = time.time()
                for records in batch.values():
                    for r in records:
                        sent = dict(r.headers).get("t0")
                        if sent is not None:
                            latencies.append(now - float(sent))
                            last_seen = now
        finally:
            done.set()
            await consumer.stop()

    cpu0 = time.process_time()
    tasks = [asyncio.create_task(stage(i)) for i in range(len(topics) - 1)]
    read_task = asyncio.create_task(reader())
    # every stage and the reader hold their partitions before the first message
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in joined)), timeout=60)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, enable_idempotence=True, acks="all", linger_ms=5, **opts
    )
    await producer.start()
    value = b"x" * max(1, size)
    first = time.time()
    try:
        start = time.monotonic()
        for n in range(messages):
            if rate > 0:
                await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))
            await producer.send(
                topics[0],
                value,
                key=n.to_bytes(8, "big"),
                headers=[("t0", repr(time.time()).encode())],
            )
        await producer.flush()
    finally:
        await producer.stop()
    last_progress, seen_before = time.monotonic(), 0
    while not done.is_set():
        await asyncio.sleep(0.1)
        if len(latencies) != seen_before:
            last_progress, seen_before = time.monotonic(), len(latencies)
        elif time.monotonic() - last_progress > STALL_S:
            break
    stop.set()
    await asyncio.gather(*tasks, read_task, return_exceptions=True)
    return BareResult(
        messages=len(latencies),
        seconds=(last_seen - first) if latencies else 0.0,
        latencies=latencies,
        cpu_s=time.process_time() - cpu0,
    )


def ceiling(
    settings: Settings,
    bootstrap: str,
    *,
    hops: int,
    messages: int,
    size: int,
    rate: float,
    latency_messages: int,
) -> dict[str, Any]:
    """The bare loop over ``hops`` stages: flat out with ``messages``, then at ``rate``."""
    from services.common.kafka_admin import create_topics

    commit = settings.kafka.commit_interval_s
    commit_min = settings.kafka.adaptive_commit_s
    out: dict[str, Any] = {
        "hops": hops,
        "stages": hops,
        "topics": hops + 1,
        "commit_interval_s": commit,
        "commit_interval_min_s": commit_min,
        "message_bytes": size,
    }
    for name, n, r in (("flat_out", messages, 0.0), ("steady", latency_messages, rate)):
        prefix = f"mrhub.bench.bare-{name.replace('_', '-')}-{secrets.token_hex(3)}"
        specs = [TopicSpec(f"{prefix}.{i}", key="", description="") for i in range(hops + 1)]
        create_topics(
            bootstrap,
            specs,
            default_partitions=settings.topic_partitions,
            replication_factor=settings.kafka.replication_factor,
        )
        _log(f"ceiling {name}: {n} messages of {size} B through {hops} stages")
        res = asyncio.run(
            bare_loop(
                bootstrap,
                [s.name for s in specs],
                messages=n,
                size=size,
                rate=r,
                commit_interval_s=commit,
                commit_interval_min_s=commit_min,
            )
        )
        out[name] = {
            "offered_per_s": r or None,
            "messages": n,
            "arrived": res.messages,
            "seconds": round(res.seconds, 2),
            "records_per_s": _rate(res.messages, res.seconds),
            "latency": latency_summary(res.latencies),
            "cpu_us_per_record": round(res.cpu_s / res.messages * 1e6, 1) if res.messages else None,
        }
    return out


# --------------------------------------------------------------------------------- hub


def hub_env(
    bootstrap: str, registry: Path, ports: Mapping[str, int], state_dir: Path
) -> dict[str, str]:
    """The environment of the hub's services for a bench: this broker, a fresh HMAC key,
    the registry, one port each, state under ``state_dir``."""
    return {
        **os.environ,
        "MRHUB_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "MRHUB_IDENTITY__HMAC_KEY": secrets.token_urlsafe(32),
        "MRHUB_INGEST__PORT": str(ports["ingest"]),
        "MRHUB_INSTITUTIONS_PATH": str(registry),
        "MRHUB_PATIENT_INDEX__PORT": str(ports["patient_index"]),
        "MRHUB_PATIENT_INDEX__URL": f"http://127.0.0.1:{ports['patient_index']}",
        "MRHUB_RECOGNITION__PORT": str(ports["recognition"]),
        "MRHUB_STATE_DIR": str(state_dir),
        "MRHUB_LOG_LEVEL": "WARNING",
    }


def processes_text(workers: int) -> str:
    """What a report says it ran: ``workers`` processes of each service."""
    if workers == 1:
        return "1 gateway, 1 patient index, 1 recognition worker"
    return f"{workers} gateways, {workers} patient index workers, {workers} recognition workers"


def worker_label(service: str, i: int) -> str:
    """The name of worker ``i`` of ``service`` in logs and problems: the service's own name
    for worker 0, ``service-i`` for the others."""
    return service if i == 0 else f"{service}-{i}"


def worker_ports(workers: int) -> dict[str, list[int]]:
    """Per service, the port of each of its ``workers`` processes: the gateways share one
    (it binds with ``SO_REUSEPORT``: the kernel spreads connections over them); every faust
    worker has its own (its web server, which answers reads and forwards them to the worker
    that owns the key)."""
    from services.common.broker import free_port

    gateway = free_port()
    out: dict[str, list[int]] = {}
    taken = {gateway}
    for name in SERVICES:
        if name == "ingest":
            out[name] = [gateway] * workers
            continue
        out[name] = []
        for _ in range(workers):
            port = free_port()
            while port in taken:  # a free port may be handed out twice before anyone binds
                port = free_port()
            taken.add(port)
            out[name].append(port)
    return out


def worker_env(
    env: Mapping[str, str], service: str, i: int, port: int, state_dir: Path
) -> dict[str, str]:
    """The environment of worker ``i`` of ``service``: ``env`` (whose service URLs point at
    worker 0) with this worker's port and a state directory of its own (RocksDB)."""
    return {
        **env,
        f"MRHUB_{service.upper()}__PORT": str(port),
        "MRHUB_STATE_DIR": str(state_dir / worker_label(service, i)),
    }


def parse_workers(text: str | int) -> list[int]:
    """``--workers``: a comma-separated list of worker counts per service (``1,2,3``), each
    at least 1, none twice, in the order given."""
    counts: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        if not part.isdigit() or int(part) < 1:
            raise ValueError(f"--workers takes counts of 1 or more, like 1,2,3 (not {text!r})")
        if int(part) in counts:
            raise ValueError(f"--workers names {part} twice")
        counts.append(int(part))
    return counts


def resources_in(body: bytes) -> int:
    """Resources a request body carries: a bundle's entries, else 1."""
    doc = json.loads(body)
    if isinstance(doc, dict) and doc.get("resourceType") == "Bundle":
        return len(doc.get("entry") or [])
    return 1


def split_chains(chains: Sequence[Sequence[Any]]) -> tuple[list[Any], list[Any]]:
    """Alternate whole chains (a visit and its later versions) between two halves."""
    a = [r for i, c in enumerate(chains) if i % 2 == 0 for r in c]
    b = [r for i, c in enumerate(chains) if i % 2 == 1 for r in c]
    return a, b


def decisions_by_order(
    decisions: Iterable[tuple[str, Mapping[str, Any]]], orders: Iterable[str]
) -> dict[str, int]:
    """Per order trace: ``decided`` (exactly one original decision), ``lost`` (none) and
    ``doubled`` (more than one); re-issued decisions (a later result or a merge) are not
    originals."""
    count: dict[str, int] = {o: 0 for o in orders}
    for trace, payload in decisions:
        if trace in count and not payload.get("reissue") and not payload.get("supersedes"):
            count[trace] += 1
    return {
        "orders": len(count),
        "decided": sum(1 for n in count.values() if n >= 1),
        "exactly_once": sum(1 for n in count.values() if n == 1),
        "lost": sum(1 for n in count.values() if n == 0),
        "doubled": sum(1 for n in count.values() if n > 1),
    }


def cpu_sample(pids: Mapping[str, Sequence[int]]) -> dict[str, float | None]:
    """CPU seconds per name, summed over its processes (None when one of them is gone),
    and this process's as ``bench``."""
    out: dict[str, float | None] = {}
    for name, group in pids.items():
        times = [tree_cpu_s(pid) for pid in group]
        out[name] = None if None in times else sum(t or 0.0 for t in times)
    out["bench"] = time.process_time()
    return out


def cpu_seconds(
    before: Mapping[str, float | None], after: Mapping[str, float | None]
) -> dict[str, float | None]:
    """Per name: CPU seconds spent between two samples (None when either is missing)."""
    out: dict[str, float | None] = {}
    for name, a in after.items():
        b = before.get(name)
        out[name] = None if a is None or b is None else round(a - b, 2)
    return out


def phase_report(
    *,
    requests: int,
    accepted: int,
    resources: int,
    post_s: float,
    first_post: float,
    seen: Sequence[tuple[float, float | None]],
    expected: int,
    cpu_before: Mapping[str, float | None],
    cpu_after: Mapping[str, float | None],
    offered_per_s: float | None,
) -> dict[str, Any]:
    """One visit phase: ``seen`` is (seen at, gateway received_at) per canonical record."""
    last = max((t for t, _ in seen), default=None)
    e2e = None if last is None else last - first_post
    return {
        "offered_requests_per_s": offered_per_s,
        "requests": requests,
        "accepted_requests": accepted,
        "resources_accepted": resources,
        "post_seconds": round(post_s, 2),
        "gateway_resources_per_s": _rate(resources, post_s),
        "records_expected": expected,
        "records_indexed": len(seen),
        "end_to_end_seconds": None if e2e is None else round(e2e, 2),
        "records_per_s": _rate(len(seen), e2e),
        "post_to_indexed": latency_summary(t - r for t, r in seen if r is not None),
        "cpu_us_per_record": cpu_per_record_us(cpu_before, cpu_after, len(seen)),
        "cpu_seconds": cpu_seconds(cpu_before, cpu_after),
    }


def summary(report: Mapping[str, Any]) -> dict[str, Any]:
    """The key figures and the ratios hub ÷ ceiling (records/s flat out; order → decision
    p50 / p99 against the bare loop's at the same rate)."""
    flat = report.get("flat_out") or {}
    orders = report.get("orders") or {}
    ceil = report.get("ceiling") or {}
    lat = orders.get("order_to_decision") or {}
    bare_lat = (ceil.get("steady") or {}).get("latency") or {}
    hub_rps = flat.get("records_per_s")
    bare_rps = (ceil.get("flat_out") or {}).get("records_per_s")
    cpu = dict(flat.get("cpu_us_per_record") or {})
    services = [cpu.get(CPU_NAMES[s]) for s in SERVICES]
    return {
        "hops": (report.get("hops") or {}).get("hops"),
        "records_per_s": hub_rps,
        "ceiling_records_per_s": bare_rps,
        "records_per_s_ratio": ratio(hub_rps, bare_rps),
        "gateway_resources_per_s": flat.get("gateway_resources_per_s"),
        "cpu_us_per_record": {CPU_NAMES[s]: cpu.get(CPU_NAMES[s]) for s in SERVICES},
        "services_cpu_us_per_record": (
            None if None in services else round(sum(v or 0.0 for v in services), 1)
        ),
        "ceiling_cpu_us_per_record": (ceil.get("flat_out") or {}).get("cpu_us_per_record"),
        "order_rate_per_s": orders.get("rate_per_s"),
        "order_to_decision_p50_ms": lat.get("p50_ms"),
        "order_to_decision_p99_ms": lat.get("p99_ms"),
        "ceiling_p50_ms": bare_lat.get("p50_ms"),
        "ceiling_p99_ms": bare_lat.get("p99_ms"),
        "latency_p50_ratio": ratio(lat.get("p50_ms"), bare_lat.get("p50_ms")),
        "latency_p99_ratio": ratio(lat.get("p99_ms"), bare_lat.get("p99_ms")),
        "orders_decided": orders.get("decided"),
        "orders_lost": orders.get("lost"),
        "orders_doubled": orders.get("doubled"),
    }


def defaults() -> argparse.Namespace:
    """The arguments ``mrhub bench pipeline`` runs with when given none."""
    return argparse.Namespace(
        visits=VISITS,
        visit_rate=VISIT_RATE,
        posters=POSTERS,
        order_rate=ORDER_RATE,
        hops=0,
        seed=SEED,
        nodes=1,
        workers="1",
        json=False,
    )


def default_sizes(workers: str | int) -> dict[str, int | float]:
    """``--visits``, ``--visit-rate`` and ``--posters`` when not given: a scaling run's (several
    counts in ``workers``) or a single run's."""
    if len(parse_workers(workers)) > 1:
        return {"visits": SCALE_VISITS, "visit_rate": SCALE_VISIT_RATE, "posters": SCALE_POSTERS}
    return {"visits": VISITS, "visit_rate": VISIT_RATE, "posters": POSTERS}


def command(args: argparse.Namespace) -> str:
    cmd = (
        f"mrhub bench pipeline --visits {args.visits} --visit-rate {args.visit_rate:g} "
        f"--posters {args.posters} --order-rate {args.order_rate:g}"
    )
    cmd += f" --hops {args.hops}" if args.hops else ""
    nodes = getattr(args, "nodes", 1)
    workers = str(getattr(args, "workers", "1"))
    cmd += f" --nodes {nodes}" if nodes != 1 else ""
    return cmd + (f" --workers {workers}" if workers != "1" else "")


@dataclass
class Kafka:
    """The Kafka a bench runs against: its bootstrap, the pids of the brokers it started
    (whose CPU time it reports) and the replication factor of the topics it creates."""

    bootstrap: str
    pids: list[int]
    replication_factor: int
    stop: Callable[[], Any] | None = None


def open_kafka(settings: Settings, nodes: int, data_dir: Path) -> Kafka:
    """``MRHUB_KAFKA__BOOTSTRAP_SERVERS`` when set; else a broker (``nodes`` 1) or a KRaft
    cluster of ``nodes`` (replication factor 3, ``min.insync.replicas`` 2 from three nodes)
    started in ``data_dir``, with free ports."""
    from services.common.broker import LocalBroker, LocalCluster, cluster_replication

    if settings.kafka.bootstrap_servers:
        return Kafka(settings.kafka.bootstrap_servers, [], settings.kafka.replication_factor)
    if nodes <= 1:
        _log("starting a Kafka broker in a temporary directory")
        broker = LocalBroker(data_dir, settings.cache_dir, port=0, controller_port=0)
        info = broker.start(timeout_s=90)[0]
        return Kafka(info.bootstrap, [info.pid], 1, broker.stop)
    _log(f"starting a {nodes}-node Kafka cluster in a temporary directory")
    cluster = LocalCluster(data_dir, settings.cache_dir, nodes=nodes, port=0, controller_port=0)
    cinfo = cluster.start(timeout_s=180)[0]
    factor = cluster_replication(nodes)[0]
    return Kafka(cluster.bootstrap, [n.pid for n in cinfo.nodes], factor, cluster.stop)


def with_replication(settings: Settings, factor: int) -> Settings:
    """``settings`` whose topics (the hub's and the bare loop's) get ``factor`` copies."""
    kafka = settings.kafka.model_copy(update={"replication_factor": factor})
    return settings.model_copy(update={"kafka": kafka})


def run(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    """One pipeline run on a broker (or cluster) of its own: ``args.workers`` processes of
    each service, then the hops and the Kafka ceiling."""
    tmp = Path(tempfile.mkdtemp(prefix="mrhub-bench-pipeline-"))
    kafka: Kafka | None = None
    ok = False
    try:
        kafka = open_kafka(settings, args.nodes, tmp / "kafka")
        report = run_hub(
            with_replication(settings, kafka.replication_factor),
            args,
            kafka,
            tmp,
            workers=parse_workers(args.workers)[0],
            ceiling_too=True,
        )
        # a worker restarted at start: its first log is kept too
        ok = not report["problems"] and not report.get("restarted_at_start")
        return report
    finally:
        close_run(kafka, tmp, ok=ok)


def close_run(kafka: Kafka | None, tmp: Path, *, ok: bool) -> None:
    """Stop the brokers a run started and remove its temporary directory: all of it when
    ``ok``, else all but the services' logs (whose place is printed)."""
    if kafka is not None and kafka.stop is not None:
        kafka.stop()
    shutil.rmtree(tmp / "kafka", ignore_errors=True)
    if ok:
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        _log(f"kept the services' logs in {tmp}")


def run_hub(
    settings: Settings,
    args: argparse.Namespace,
    kafka: Kafka,
    tmp: Path,
    *,
    workers: int = 1,
    ceiling_too: bool = True,
) -> dict[str, Any]:
    """The hub's part of a run on ``kafka``: ``workers`` processes of each service (logs in
    ``tmp``), the visits, the orders, and with ``ceiling_too`` the hops and the bare loop.
    Its services' state is removed at the end; their logs are kept when it had problems."""
    from mrhub_tools.simulate import fhir
    from mrhub_tools.simulate.region import generate_region, new_tokens, write_region
    from mrhub_tools.simulate.runner import (
        RECOGNITION_GROUP,
        Options,
        post_phase,
        summarise,
        trace_id,
        wait_committed,
    )
    from mrhub_tools.simulate.scenario import Config, build_scenario
    from services.common.kafka_admin import create_topics
    from services.recognition.catalog import CHINA_TZ, load_catalogs

    tmp.mkdir(parents=True, exist_ok=True)
    procs: dict[str, Any] = {}
    tail: Tail | None = None
    report: dict[str, Any] = {
        "command": command(args),
        "cpu_count": os.cpu_count(),
        "processes": processes_text(workers),
        "workers": workers,
        "brokers": len(kafka.pids) or None,
        "replication_factor": settings.kafka.replication_factor,
        "commit_interval_s": settings.kafka.commit_interval_s,
        "commit_interval_min_s": settings.kafka.adaptive_commit_s,
        "topic_partitions": settings.topic_partitions,
    }
    seconds: dict[str, float] = {}
    report["seconds"] = seconds
    problems: list[str] = []
    ok = False

    def problem(text: str) -> None:
        """Note what went wrong, with which service processes are still running; the
        temporary directory (with the services' logs) is then kept."""
        alive = ", ".join(
            f"{n} {'running' if p.poll() is None else f'exited {p.returncode}'}"
            for n, p in procs.items()
        )
        errors = f"; reader errors: {tail.errors[:3]}" if tail is not None and tail.errors else ""
        problems.append(f"{text} ({alive}{errors})")
        _log(f"PROBLEM: {problems[-1]}")

    mark = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        seconds[name] = round(now - mark, 1)
        mark = now

    try:
        now = datetime.now(UTC)
        today = datetime.now(CHINA_TZ).date()
        region = generate_region(INSTITUTIONS, args.seed, today)
        tokens = new_tokens([s.id for s in region])
        registry = write_region(
            tmp / "region", region, tokens, params={"institutions": INSTITUTIONS}, today=today
        )
        catalog = load_catalogs(settings.recognition.catalog_path).catalog_for(
            region[0].inst.region_code, now
        )
        if catalog is None:
            raise RuntimeError("no recognition catalogue is in force for the simulated region")
        salt = secrets.token_hex(4)
        scn = build_scenario(
            Config(
                institutions=INSTITUTIONS,
                patients=args.visits,
                days=1,
                seed=args.seed,
                now=now,
                today=today,
                salt=salt,
                malformed_share=0.0,
                resend_share=0.0,
            ),
            region,
            catalog,
        )
        index_of = {id(r): i for i, r in enumerate(scn.requests)}
        steady_reqs, flat_reqs = split_chains(scn.chains(1))
        order_reqs = scn.phase(2)

        bootstrap = kafka.bootstrap
        create_topics(
            bootstrap,
            ALL_TOPICS,
            default_partitions=settings.topic_partitions,
            replication_factor=settings.kafka.replication_factor,
        )
        ports = worker_ports(workers)
        env = {
            **hub_env(bootstrap, registry, {n: ps[0] for n, ps in ports.items()}, tmp / "state"),
            "MRHUB_RECOGNITION__URL": f"http://127.0.0.1:{ports['recognition'][0]}",
            "MRHUB_KAFKA__REPLICATION_FACTOR": str(settings.kafka.replication_factor),
        }
        plan = [
            (name, i, port, worker_env(env, name, i, port, tmp / "state"))
            for name in SERVICES
            for i, port in enumerate(ports[name])
        ]
        for name, i, _port, wenv in plan:  # all at once; then wait for each
            procs[worker_label(name, i)] = start_service(
                name, wenv, tmp / f"{worker_label(name, i)}.log"
            )
        restarted: list[str] = []
        report["restarted_at_start"] = restarted
        for name, i, port, wenv in plan:
            label = worker_label(name, i)
            url = f"http://127.0.0.1:{port}/readyz"
            try:
                wait_ready(url, procs[label], tmp / f"{label}.log", 300)
            except ProcessExitedError:
                if len(plan) == len(SERVICES):  # one process per service: nothing to race
                    raise
                # as a supervisor would: once, with its first log kept (and reported)
                _log(f"{label} exited while the group rebalanced at start; restarting it once")
                restarted.append(label)
                log = tmp / f"{label}.restarted.log"
                procs[label] = start_service(name, wenv, log)
                wait_ready(url, procs[label], log, 300)
        pids: dict[str, list[int]] = {CPU_NAMES[n]: [] for n in SERVICES}
        for name, i, _port, _wenv in plan:
            pids[CPU_NAMES[name]].append(procs[worker_label(name, i)].pid)
        if kafka.pids:
            pids["kafka"] = list(kafka.pids)
        gateway = f"http://127.0.0.1:{ports['ingest'][0]}"
        tail = reader = Tail(bootstrap, [RESULT_INDEXED.name, DECISION_MADE.name])
        reader.start()
        lap("start")

        def post(reqs: Sequence[Any], rate: float) -> tuple[list[Any], dict[str, Any], float]:
            sub = replace(scn, requests=list(reqs))
            traces = {j: trace_id(scn, index_of[id(r)]) for j, r in enumerate(reqs)}
            opts = Options(
                url=gateway,
                bootstrap=bootstrap,
                concurrency=args.posters,
                rate=rate,
                stall_s=STALL_S,
                show_progress=False,
            )
            t0 = time.perf_counter()
            outcomes = asyncio.run(post_phase(sub, sub.requests[0].phase, tokens, opts, traces))
            elapsed = time.perf_counter() - t0
            return outcomes, {traces[j]: r for j, r in enumerate(reqs)}, elapsed

        def indexed(traces: Mapping[str, Any], expected: int) -> list[tuple[float, float | None]]:
            found = reader.wait(RESULT_INDEXED.name, traces.__contains__, expected, STALL_S)
            out = []
            for seen_at, rec in found:
                env_ = Envelope.from_bytes(rec.value)
                out.append((seen_at, env_.received_at.timestamp() if env_.received_at else None))
            return out

        sizes: list[int] = []
        for phase, reqs, rate in (
            ("steady", steady_reqs, args.visit_rate),
            ("flat_out", flat_reqs, 0.0),
        ):
            expected = sum(r.result_events for r in reqs)
            _log(
                f"{phase}: {len(reqs)} visit requests "
                + (f"at {rate:g}/s" if rate else f"flat out, {args.posters} posters")
            )
            before = cpu_sample(pids)
            first_post = time.time()
            outcomes, traces, post_s = post(reqs, rate)
            seen = indexed(traces, expected)
            after = cpu_sample(pids)
            done = [o for o in outcomes if o.status is not None and 200 <= o.status < 300]
            resources = sum(resources_in(fhir.build(scn, o.request)[1]) for o in done)
            report[phase] = phase_report(
                requests=len(reqs),
                accepted=len(done),
                resources=resources,
                post_s=post_s,
                first_post=first_post,
                seen=seen,
                expected=expected,
                cpu_before=before,
                cpu_after=after,
                offered_per_s=rate or None,
            )
            lap(phase)
            if len(seen) < expected:
                problem(f"{phase}: {len(seen)} of {expected} canonical records seen")
            if phase == "flat_out":
                sizes = [
                    len(r.value) for _, r in tail.records(RESULT_INDEXED.name, traces.__contains__)
                ]

        _log("waiting for the recognition worker to apply every result")
        applied = {
            r.partition: r.offset
            for _, r in sorted(
                tail.records(RESULT_INDEXED.name, lambda _t: True),
                key=lambda x: (x[1].partition, x[1].offset),
            )
        }
        wait_committed(bootstrap, RECOGNITION_GROUP, RESULT_INDEXED.name, applied, stall_s=60)
        lap("applied")

        _log(f"orders: {len(order_reqs)} at {args.order_rate:g}/s")
        before = cpu_sample(pids)
        outcomes, order_traces, post_s = post(order_reqs, args.order_rate)
        accepted = {o.trace_id for o in outcomes if o.status is not None and o.status < 300}
        found = reader.wait(
            DECISION_MADE.name,
            order_traces.__contains__,
            len(order_traces),
            STALL_S,
            distinct=True,
        )
        after = cpu_sample(pids)
        decisions = [(trace_of(r) or "", r) for _, r in found]
        envs = [(tr, Envelope.from_bytes(r.value)) for tr, r in decisions]
        first_decision: dict[str, float] = {}
        for tr, e in envs:
            if e.payload.get("reissue") or e.payload.get("supersedes") or e.received_at is None:
                continue
            first_decision.setdefault(tr, (e.occurred_at - e.received_at).total_seconds())
        counts = decisions_by_order(((tr, e.payload) for tr, e in envs), order_traces)
        order_of = {tr: req.order for tr, req in order_traces.items() if req.order is not None}
        agreement = summarise(
            replace(scn, requests=list(order_reqs)),
            outcomes,
            [r for tr, r in decisions if tr in order_of],
            order_of,
        )
        report["orders"] = {
            "rate_per_s": args.order_rate,
            "posted": len(order_reqs),
            "accepted": len(accepted),
            "post_seconds": round(post_s, 2),
            **counts,
            "agreement": agreement["agreement"],
            "order_to_decision": latency_summary(first_decision.values()),
            "cpu_us_per_order": cpu_per_record_us(before, after, counts["decided"]),
        }
        lap("orders")
        if counts["lost"] or counts["doubled"]:
            problem(f"orders: {counts['lost']} lost, {counts['doubled']} doubled")

        if not ceiling_too:
            reader.stop()
            tail = None
            seconds["total"] = round(sum(seconds.values()), 1)
            report["problems"] = problems
            ok = not problems
            return report

        _log("hops: one more result, looked for on every topic a result may cross")
        report["hops"] = probe_hops(scn, tokens, gateway, bootstrap, reader)
        reader.stop()
        tail = None
        lap("hops")
        hops = args.hops or report["hops"]["hops"]
        report["hops"]["used"] = hops
        flat_records = report["flat_out"]["records_indexed"] or len(flat_reqs)
        report["ceiling"] = ceiling(
            settings,
            bootstrap,
            hops=hops,
            messages=flat_records,
            size=round(sum(sizes) / len(sizes)) if sizes else 2048,
            rate=args.order_rate,
            latency_messages=max(
                1, min(report["orders"]["posted"], int(args.order_rate * CEILING_LATENCY_S))
            ),
        )
        lap("ceiling")
        seconds["total"] = round(sum(seconds.values()), 1)
        report["problems"] = problems
        report["summary"] = summary(report)
        ok = not problems
        return report
    finally:
        if tail is not None:
            tail.stop()
        stop_processes(list(procs.values()))
        shutil.rmtree(tmp / "state", ignore_errors=True)  # the logs stay for run() to judge
        if not ok:
            _log(f"the services' logs are in {tmp}")


def probe_hops(
    scn: Any, tokens: Mapping[str, str], gateway: str, bootstrap: str, tail: Tail
) -> dict[str, Any]:
    """Post one lab result for a patient the hub knows by 身份证 and count the topics its
    trace id crossed on the way to the recognition worker's input."""
    import httpx

    from mrhub_tools.simulate import fhir
    from services.common.fhir import FHIR_JSON

    r = next(r for r in scn.results if r.category == "lab" and r.view.card)
    obs = fhir.observation(scn, r, r.target, 0, fhir.subject_identifier(r.view))
    obs["identifier"] = [{**obs["identifier"][0], "value": f"{obs['identifier'][0]['value']}-H"}]
    trace = f"bench-pipeline-hops-{secrets.token_hex(4)}"
    resp = httpx.post(
        f"{gateway}/fhir/Observation",
        content=dumps(obs),
        headers={
            "Authorization": f"Bearer {tokens[r.institution]}",
            "Content-Type": FHIR_JSON,
            "X-Trace-Id": trace,
        },
        timeout=60,
    )
    arrived = resp.status_code < 300 and bool(
        tail.wait(RESULT_INDEXED.name, lambda t: t == trace, 1, 60)
    )
    candidates = hop_candidates(list_topics(bootstrap))
    carrying = topics_carrying(bootstrap, candidates, trace) if arrived else {}
    return {"candidates": candidates, **count_hops(candidates, carrying)}


# ------------------------------------------------------------------------------ output


def _v(x: Any, spec: str = ",.1f") -> str:
    if x is None:
        return "—"
    if isinstance(x, int | float) and not isinstance(x, bool):
        return format(x, spec)
    return str(x)


def _cpu(cpu: Mapping[str, float | None]) -> str:
    return ", ".join(f"{k} {_v(v, ',.0f')}" for k, v in cpu.items())


def _brokers(r: Mapping[str, Any]) -> str:
    """``, 3 brokers (replication factor 3)`` for a cluster; nothing for one broker."""
    n = r.get("brokers")
    if not n or n == 1:
        return ""
    return f", {n} brokers (replication factor {r.get('replication_factor')})"


def _commits(r: Mapping[str, Any]) -> str:
    """How often transactions commit: the fixed interval, or the adaptive pair."""
    fixed = f"every {r['commit_interval_s']:g} s"
    low = r.get("commit_interval_min_s")
    return fixed if low is None else f"{fixed} ({low:g} s when caught up)"


def format_report(r: Mapping[str, Any]) -> str:
    lines = [
        f"mrhub bench pipeline — {r['cpu_count']} CPUs, {r['processes']}, commit "
        f"{_commits(r)}, {r['topic_partitions']} partitions{_brokers(r)}",
    ]
    for phase in PHASES:
        p = r.get(phase)
        if not p:
            continue
        how = (
            f"offered {p['offered_requests_per_s']:g} visits/s"
            if p["offered_requests_per_s"]
            else "flat out"
        )
        lat = p["post_to_indexed"]
        lines += [
            f"  visits, {how}: {p['accepted_requests']}/{p['requests']} accepted, gateway "
            f"{_v(p['gateway_resources_per_s'])} resources/s",
            f"    canonical records: {p['records_indexed']}/{p['records_expected']} indexed, "
            f"{_v(p['records_per_s'])} records/s end to end "
            f"({_v(p['end_to_end_seconds'], '.1f')} s); post → indexed p50 "
            f"{_v(lat['p50_ms'], ',.0f')} ms, p99 "
            f"{_v(lat['p99_ms'], ',.0f')} ms",
            f"    CPU µs per record: {_cpu(p['cpu_us_per_record'])}",
        ]
    o = r.get("orders")
    if o:
        lat = o["order_to_decision"]
        lines += [
            f"  orders at {o['rate_per_s']:g}/s: {o['decided']}/{o['posted']} decided "
            f"({o['exactly_once']} exactly once, {o['lost']} lost, {o['doubled']} doubled), "
            f"agreement {o['agreement']}",
            f"    order → decision p50 {_v(lat['p50_ms'], ',.0f')} ms, p99 "
            f"{_v(lat['p99_ms'], ',.0f')} ms, max {_v(lat['max_ms'], ',.0f')} ms",
            f"    CPU µs per order: {_cpu(o['cpu_us_per_order'])}",
        ]
    h = r.get("hops")
    if h:
        how = "measured" if h["measured"] else "NOT measured: every candidate topic counted"
        lines.append(f"  hops H = {h['used']} ({how}): {' → '.join(h['path'])}")
    c = r.get("ceiling")
    if c:
        f, s = c["flat_out"], c["steady"]
        lines += [
            f"  Kafka ceiling (bare transactional loop, {c['stages']} stages, commit "
            f"{_commits(c)}, {c['message_bytes']} B messages):",
            f"    flat out: {f['arrived']}/{f['messages']} in {f['seconds']} s = "
            f"{_v(f['records_per_s'])} records/s, {_v(f['cpu_us_per_record'], ',.0f')} CPU µs "
            "per record (one process)",
            f"    at {_v(s['offered_per_s'], 'g')}/s: p50 {_v(s['latency']['p50_ms'], ',.0f')} ms, "
            f"p99 {_v(s['latency']['p99_ms'], ',.0f')} ms",
        ]
    for text in r.get("problems") or ():
        lines.append(f"  PROBLEM: {text}")
    t = r.get("seconds")
    if t:
        lines.append("  seconds: " + ", ".join(f"{k} {v:g}" for k, v in t.items()))
    s = r.get("summary")
    if s:
        lines.append(
            f"  hub ÷ ceiling: records/s {_v(s['records_per_s_ratio'], '.3f')}; order → "
            f"decision p50 {_v(s['latency_p50_ratio'], '.2f')}×, p99 "
            f"{_v(s['latency_p99_ratio'], '.2f')}× the bare loop's"
        )
    return "\n".join(lines)


def main(args: argparse.Namespace, settings: Settings) -> int:
    if len(parse_workers(args.workers)) > 1:  # a scaling run: one cluster, several counts
        from mrhub_tools.bench import scale

        return scale.main(args, settings)
    report = run(settings, args)
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False, default=str))
    else:
        print(format_report(report))
    return 1 if report.get("problems") else 0
