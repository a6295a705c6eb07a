"""Helpers for tests that talk to the real broker and run real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

from services.common import harness

REPO = Path(__file__).resolve().parent.parent


def create_topic(bootstrap: str, name: str, partitions: int) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(name, partitions, 1)], wait_for_metadata=True)
    finally:
        admin.close()


def produce(bootstrap: str, topic: str, records: Iterable[tuple[bytes | None, bytes]]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        for key, value in records:
            producer.send(topic, key=key, value=value)
        producer.flush(timeout=30)
    finally:
        producer.close()


def produce_aborted(bootstrap: str, topic: str, records: Iterable[tuple[bytes, bytes]]) -> None:
    """Write ``records`` inside a Kafka transaction and abort it (they must stay invisible)."""
    import asyncio
    import uuid

    from aiokafka import AIOKafkaProducer

    async def run() -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, transactional_id=f"test-abort-{uuid.uuid4().hex}"
        )
        await producer.start()
        try:
            await producer.begin_transaction()
            for key, value in records:
                await producer.send_and_wait(topic, value=value, key=key)
            await producer.abort_transaction()
        finally:
            await producer.stop()

    asyncio.run(run())


def consume_all(
    bootstrap: str,
    topic: str,
    *,
    expect: int | None = None,
    timeout_s: float = 30.0,
    isolation: str = "read_committed",
) -> list[Any]:
    """Every record on ``topic`` from the beginning, waiting until ``expect`` have arrived
    (or, without ``expect``, until the end offsets seen at the start have been read)."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        isolation_level=isolation,
        consumer_timeout_ms=500,
    )
    try:
        deadline = time.monotonic() + timeout_s
        try:
            parts: set[int] = harness.wait_until(
                lambda: consumer.partitions_for_topic(topic) or set(),
                deadline_s=timeout_s,
                what=f"the partitions of {topic}",
            )
        except TimeoutError:  # no such topic: nothing on it
            parts = set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        out: list[Any] = []
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=300)
            for recs in batch.values():
                out.extend(recs)
            if expect is not None and len(out) >= expect:
                break
            if expect is None and all(consumer.position(tp) >= end[tp] for tp in tps):
                break
        return out
    finally:
        consumer.close()


def run_module(
    args: list[str],
    env: Mapping[str, str],
    log_path: Path,
) -> subprocess.Popen[bytes]:
    """Start ``python -m …`` in its own session, output to ``log_path``."""
    full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    return harness.start([sys.executable, *args], env=full_env, log_path=log_path, cwd=REPO)


def stop_process(proc: subprocess.Popen[bytes], *, timeout_s: float = 30.0) -> int:
    return harness.stop(proc, grace_s=timeout_s)


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 120) -> None:
    """Wait until ``url`` answers 200; fail with the log's tail if ``proc`` dies or time
    runs out."""
    harness.wait_ready(proc, url, deadline_s=timeout_s, log_path=log)


def start_up(
    args: list[str], env: Mapping[str, str], log: Path, *, deadline_s: float
) -> subprocess.Popen[bytes]:
    """``mrhub up ARGS`` as a process with its output in ``log``, once it has said it is up
    (every service answers ready); the caller stops it."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "up", *args],
            cwd=REPO,
            env=dict(env),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        harness.wait_until(
            lambda: "mrhub is up" in log.read_text(),
            deadline_s=deadline_s,
            what=f"`mrhub up {' '.join(args)}` to say it is up",
            alive=harness.still_running(proc, "mrhub up", log),
        )
    except BaseException:
        harness.stop_all([proc])
        raise
    return proc
