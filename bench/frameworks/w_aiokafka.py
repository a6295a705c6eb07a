"""(c) bare transactional consume -> produce loop on aiokafka: mrhub_tools/bench/pipeline.py's
``transactional_loop`` (the loop of its ``bare_loop``), with the hop's work added.

One consumer (read_committed, no auto commit) on the H input topics, one transactional
producer (idempotent, acks=all). A transaction lasts FW_COMMIT_INTERVAL_S: every record gets
``common.step``, its state entry goes to a dict and, as a changelog message, to
``PREFIX.cl`` (the source partition), its output to the next topic; then the consumed
offsets are sent to the transaction and it commits.

Run with the project's .venv:  python bench/frameworks/w_aiokafka.py BOOTSTRAP PREFIX H STATUS DIR
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the project, for services

from common import Status, step, worker_args

from mrhub_tools.bench.pipeline import (
    read_committed_consumer,
    transactional_loop,
    transactional_producer,
)


async def run(bootstrap: str, prefix: str, h: int, status: Status, commit: float) -> None:
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    group = f"fw-aiokafka-{prefix}"
    consumer = read_committed_consumer(bootstrap, group)
    producer = transactional_producer(bootstrap, group)
    index = {f"{prefix}.{i}": i for i in range(h)}
    changelog = f"{prefix}.cl"
    store: dict[tuple[int, bytes], bytes] = {}
    consumer.subscribe(list(index))
    await consumer.start()
    await producer.start()

    async def hop(tp: Any, r: Any) -> None:
        i = index[tp.topic]
        status.first()
        state, out_key, out = step(r.value, i)
        store[(i, r.key)] = state
        await producer.send(changelog, state, key=r.key, partition=tp.partition)
        await producer.send(f"{prefix}.{i + 1}", out, key=out_key)

    try:
        await transactional_loop(consumer, producer, group, commit, hop)
    finally:
        await producer.stop()
        await consumer.stop()


def main() -> None:
    bootstrap, prefix, h, status, _state_dir, commit = worker_args()
    asyncio.run(run(bootstrap, prefix, h, status, commit))


if __name__ == "__main__":
    main()
