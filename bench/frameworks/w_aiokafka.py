"""(c) bare transactional consume -> produce loop on aiokafka (the idea of
services/bench/pipeline.py's ``bare_loop``, with the hop's work added).

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
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Status, step

FETCH_WAIT_MS = 20


async def run(bootstrap: str, prefix: str, h: int, status: Status) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    commit = float(os.environ.get("FW_COMMIT_INTERVAL_S", "0.1"))
    group = f"fw-aiokafka-{prefix}"
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        isolation_level="read_committed",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=FETCH_WAIT_MS,
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        transactional_id=f"{group}-tx",
        enable_idempotence=True,
        acks="all",
    )
    index = {f"{prefix}.{i}": i for i in range(h)}
    changelog = f"{prefix}.cl"
    store: dict[tuple[int, bytes], bytes] = {}
    consumer.subscribe(list(index))
    await consumer.start()
    await producer.start()
    loop = asyncio.get_running_loop()
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=int(commit * 1000))
            if not batch:
                continue
            offsets: dict[Any, int] = {}
            async with producer.transaction():
                deadline = loop.time() + commit
                while True:
                    for tp, records in batch.items():
                        i = index[tp.topic]
                        for r in records:
                            status.first()
                            state, out_key, out = step(r.value, i)
                            store[(i, r.key)] = state
                            await producer.send(changelog, state, key=r.key, partition=tp.partition)
                            await producer.send(f"{prefix}.{i + 1}", out, key=out_key)
                        offsets[tp] = records[-1].offset + 1
                    left = deadline - loop.time()
                    if left <= 0:
                        break
                    batch = await consumer.getmany(timeout_ms=max(1, int(left * 1000)))
                await producer.send_offsets_to_transaction(offsets, group)
    finally:
        await producer.stop()
        await consumer.stop()


def main() -> None:
    bootstrap, prefix, hops, status_path, _state_dir = sys.argv[1:6]
    asyncio.run(run(bootstrap, prefix, int(hops), Status(status_path)))


if __name__ == "__main__":
    main()
