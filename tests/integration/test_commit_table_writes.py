"""A transactional commit carries the table writes of every event whose offset it commits,
however slowly those writes reach the producer (services/common/faust_fixes.py, patches 4
and 15): a worker killed with SIGKILL right after a commit leaves every entry of those
events committed in its changelog, which is what a worker started on an empty disk rebuilds
the table from.

faust's ProducerBuffer.flush() gives up when one write takes over 0.1 s to send; a commit
that relied on it took the offsets of events whose table writes were still buffered, and
a kill -9 before the next commit lost those entries for good.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from kafka.admin import KafkaAdminClient
from kafka.errors import KafkaError

from services.common.broker import free_port
from services.common.harness import wait_until
from tests.support import (
    consume_all,
    create_topic,
    produce,
    run_module,
    stop_process,
    wait_ready,
)

EVENTS = 8
#: how long each table write takes to reach the producer in the first worker: together
#: longer than faust's commit interval, each longer than ProducerBuffer.flush() waits
DELAY_S = 0.25


def _committed(bootstrap: str, group: str, topic: str) -> int:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        offsets = admin.list_group_offsets({group: None}).get(group, {})
        return sum(meta.offset for tp, meta in offsets.items() if tp.topic == topic)
    finally:
        admin.close()


def test_a_worker_killed_right_after_a_commit_keeps_every_table_write_it_committed(
    bootstrap: str, unique: str, tmp_path: Path
) -> None:
    src, out = f"test.slowlog.in.{unique}", f"test.slowlog.out.{unique}"
    create_topic(bootstrap, src, 1)
    create_topic(bootstrap, out, 1)
    args = ["-m", "tests.integration.apps.slow_changelog_app", "worker", "--loglevel", "info"]

    def env(name: str, port: int, delay_s: float) -> dict[str, str]:
        return {
            "MRHUB_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
            "MRHUB_STATE_DIR": str(tmp_path / name),  # its own disk
            "MRHUB_TOPIC_PARTITIONS": "1",
            "MRHUB_TEST_SUFFIX": unique,
            "MRHUB_TEST_WEB_PORT": str(port),
            "MRHUB_TEST_CHANGELOG_DELAY_S": str(delay_s),
        }

    keys = [f"event-{i}" for i in range(EVENTS)]
    port = free_port()
    first_log = tmp_path / "first.log"
    worker = run_module(args, env("first", port, DELAY_S), first_log)

    def alive() -> None:
        if worker.poll() is not None:
            raise AssertionError(f"the worker exited: {first_log.read_text()[-3000:]}")

    try:
        wait_ready(f"http://127.0.0.1:{port}/readyz", worker, first_log)
        produce(bootstrap, src, [(k.encode(), b"seen") for k in keys])
        # the worker committed every event: Kafka will never give it to a worker again
        wait_until(
            lambda: _committed(bootstrap, f"mrhub-test-slowlog-{unique}", src) >= EVENTS,
            deadline_s=120,
            what=f"the first worker to commit its {EVENTS} events",
            tolerate=(KafkaError,),
            alive=alive,
        )
    finally:
        os.killpg(worker.pid, signal.SIGKILL)  # and died at once
        worker.wait()

    # the worker that takes over (on an empty disk) aborts what the dead one left open and
    # rebuilds the table from what its changelog holds committed: every event's entry
    port = free_port()
    second_log = tmp_path / "second.log"
    worker = run_module(args, env("second", port, 0.0), second_log)
    try:
        wait_ready(f"http://127.0.0.1:{port}/readyz", worker, second_log)
        changelog = consume_all(bootstrap, f"mrhub-test-slowlog-{unique}-seen-changelog")
    finally:
        stop_process(worker)
    held = sorted({bytes(r.key).decode() for r in changelog})
    assert held == keys, first_log.read_text()[-3000:]
