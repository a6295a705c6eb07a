"""The platform itself against the real broker: round trip, faust tables and recovery."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer

from services.common.broker import free_port
from services.common.kafka_admin import cluster_answers, create_topics
from services.common.topics import ALL_TOPICS
from tests.support import (
    consume_all,
    create_topic,
    produce,
    produce_aborted,
    run_module,
    stop_process,
    wait_ready,
)


def test_message_round_trips_through_the_real_broker(bootstrap: str, unique: str) -> None:
    topic = f"test.roundtrip.{unique}"
    create_topic(bootstrap, topic, 1)
    produce(bootstrap, topic, [(b"k", "检验报告 ✓".encode())])
    records = consume_all(bootstrap, topic, expect=1)
    assert [(r.key, r.value.decode()) for r in records] == [(b"k", "检验报告 ✓")]


def test_topics_create_is_idempotent_and_declares_partitions(bootstrap: str) -> None:
    first = create_topics(bootstrap, ALL_TOPICS, default_partitions=3, replication_factor=1)
    second = create_topics(bootstrap, ALL_TOPICS, default_partitions=3, replication_factor=1)
    assert not any(r.created for r in second)
    by_name = {r.name: r.partitions for r in second}
    assert by_name["mrhub.ingest.resource-accepted.v1"] == 3
    assert by_name["mrhub.recognition.dead-letter.v1"] == 1
    assert {r.name for r in first} == {t.name for t in ALL_TOPICS}
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        assert {t.name for t in ALL_TOPICS} <= consumer.topics()
    finally:
        consumer.close()


def test_cluster_answers_is_false_for_a_dead_address() -> None:
    assert not cluster_answers(f"127.0.0.1:{free_port()}", timeout_s=1.0)


def _wait_counts(bootstrap: str, topic: str, n: int) -> list[dict[str, Any]]:
    records = consume_all(bootstrap, topic, expect=n, timeout_s=180)
    return [json.loads(r.value) for r in records]


def _counter_app(
    bootstrap: str, unique: str, tmp_path: Path, partitions: int
) -> tuple[str, str, Path, str, dict[str, str], list[str], Path]:
    """Topics, state directory, readiness URL, environment, arguments and log of a run of
    tests/integration/apps/counter_app.py of this test's own."""
    src, out = f"test.counter.in.{unique}", f"test.counter.out.{unique}"
    create_topic(bootstrap, src, partitions)
    create_topic(bootstrap, out, 1)
    state = tmp_path / "state"
    web_port = free_port()
    env = {
        "MRHUB_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "MRHUB_STATE_DIR": str(state),
        "MRHUB_TOPIC_PARTITIONS": str(partitions),
        "MRHUB_TEST_SUFFIX": unique,
        "MRHUB_TEST_WEB_PORT": str(web_port),
    }
    args = ["-m", "tests.integration.apps.counter_app", "worker", "--loglevel", "info"]
    ready = f"http://127.0.0.1:{web_port}/readyz"
    return src, out, state, ready, env, args, tmp_path / "worker.log"


def test_faust_table_skips_aborted_data_and_survives_restart_from_its_changelog(
    bootstrap: str, unique: str, tmp_path: Path
) -> None:
    src, out, state, ready, env, args, log = _counter_app(bootstrap, unique, tmp_path, 2)

    # An aborted transaction (a gateway request answered 503) must never be counted.
    produce_aborted(bootstrap, src, [(b"patient-a", b"aborted")] * 2)
    worker = run_module(args, env, log)
    try:
        wait_ready(ready, worker, log)
        produce(bootstrap, src, [(b"patient-a", b"x")] * 3 + [(b"patient-b", b"x")])
        first = _wait_counts(bootstrap, out, 4)
    finally:
        stop_process(worker)
    assert sorted((c["key"], c["count"]) for c in first) == [
        ("patient-a", 1),
        ("patient-a", 2),
        ("patient-a", 3),
        ("patient-b", 1),
    ], log.read_text()[-3000:]
    # the table lived in RocksDB on disk …
    app_dir = state / f"test-counter-{unique}"
    assert any(p.name.endswith(".db") for p in app_dir.rglob("*")), list(app_dir.rglob("*"))
    # … and without that disk, the restarted worker rebuilds it from the changelog topic.
    shutil.rmtree(state)

    worker = run_module(args, env, log)
    try:
        # ready: it has its partitions and has rebuilt the table from the changelog
        wait_ready(ready, worker, log)
        produce(bootstrap, src, [(b"patient-a", b"x")])
        after = _wait_counts(bootstrap, out, 5)
    finally:
        stop_process(worker)
    assert after[-1] == {"key": "patient-a", "count": 4}, log.read_text()[-3000:]


def test_a_worker_killed_with_its_transaction_open_forgets_the_table_writes_of_it(
    bootstrap: str, unique: str, tmp_path: Path
) -> None:
    """faust writes a table change to RocksDB at once and to the changelog within the
    transaction. A kill -9 aborts the transaction, and the restarted worker, on the same
    disk, must not keep the change: it processes the same messages again and would count
    them twice (the patient index dropped a record as a resend of itself, and lost it)."""
    src, out, state, ready, env, args, log = _counter_app(bootstrap, unique, tmp_path, 1)
    # the first run commits on no timer and dies on the fourth message: the three counts
    # before it are in RocksDB and in an open transaction
    dying = {**env, "MRHUB_TEST_DIE": "1"}
    worker = run_module(args, dying, log)
    try:
        wait_ready(ready, worker, log)
        produce(bootstrap, src, [(b"patient-a", b"x")] * 3 + [(b"patient-a", b"die")])
        worker.wait(timeout=120)
    finally:
        stop_process(worker)
    assert worker.returncode == -9, log.read_text()[-3000:]
    assert any(p.name.endswith(".db") for p in state.rglob("*")), "no table on disk"
    # the app's sends are not in its transaction (faust picks a send's transaction by the
    # destination partition): some counts of the first run may be out already
    before = len(consume_all(bootstrap, out))

    worker = run_module(args, env, log)
    try:
        wait_ready(ready, worker, log)
        again = _wait_counts(bootstrap, out, before + 3)[before:]
    finally:
        stop_process(worker)
    # no input offset was committed: the three messages are processed again, from zero
    assert [(c["key"], c["count"]) for c in again] == [
        ("patient-a", 1),
        ("patient-a", 2),
        ("patient-a", 3),
    ], log.read_text()[-3000:]
    assert "did not stop cleanly" in log.read_text()
    # that run stopped cleanly (SIGTERM, everything committed): the next start keeps the stores
    assert not list(state.rglob("not-stopped-cleanly")), log.read_text()[-3000:]
