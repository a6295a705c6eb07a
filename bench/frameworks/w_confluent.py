"""(c') bare transactional consume -> produce loop on confluent-kafka (librdkafka).

The same loop as w_aiokafka.py: one consumer (read_committed) on the H input topics, one
transactional producer; per record ``common.step``, a dict write plus a changelog message to
``PREFIX.cl`` (source partition), the output to the next topic; every FW_COMMIT_INTERVAL_S
the consumer's positions go to the transaction and it commits.

Run with .venv-qs:  python bench/frameworks/w_confluent.py BOOTSTRAP PREFIX H STATUS DIR
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import step, worker_args


def main() -> None:
    from confluent_kafka import Consumer, Producer

    bootstrap, prefix, h, status, _state_dir, commit = worker_args()
    group = f"fw-confluent-{prefix}"
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 20,
        }
    )
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "transactional.id": f"{group}-tx",
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
        }
    )
    index = {f"{prefix}.{i}": i for i in range(h)}
    outs = [f"{prefix}.{i + 1}" for i in range(h)]
    changelog = f"{prefix}.cl"
    store: dict[tuple[int, bytes], bytes] = {}
    consumer.subscribe(list(index))
    producer.init_transactions()
    produce = producer.produce
    while True:
        msgs = consumer.consume(500, commit)
        if not msgs:
            continue
        producer.begin_transaction()
        deadline = time.monotonic() + commit
        while True:
            for m in msgs:
                if m.error():
                    continue
                status.first()
                i = index[m.topic()]
                key = m.key()
                state, out_key, out = step(m.value(), i)
                store[(i, key)] = state
                produce(changelog, state, key, partition=m.partition())
                produce(outs[i], out, out_key)
            producer.poll(0)
            left = deadline - time.monotonic()
            if left <= 0:
                break
            msgs = consumer.consume(500, left)
        positions = [tp for tp in consumer.position(consumer.assignment()) if tp.offset >= 0]
        producer.send_offsets_to_transaction(positions, consumer.consumer_group_metadata())
        producer.commit_transaction()


if __name__ == "__main__":
    main()
