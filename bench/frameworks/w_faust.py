"""(a) faust-streaming worker, built exactly as mrhub builds its apps.

``services.common.faust_app.make_app`` (exactly_once, rocksdb://, raw serializers, acks=all,
faust_fixes patches 1-10), ``services.common.stages.Stages`` agents (concurrency 1,
``stream.items()``, sends in the source partition's transaction) and
``faust_app.run_worker``. Each of the H hops is one agent: parse, one Table write, one send.

Run with the project's .venv:  python bench/frameworks/w_faust.py BOOTSTRAP PREFIX H STATUS DIR
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]


def main() -> None:
    from common import PARTITIONS, step, worker_args

    bootstrap, prefix, h, status, state_dir, commit = worker_args()
    os.environ.update(
        {
            "MRHUB_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
            "MRHUB_KAFKA__COMMIT_INTERVAL_S": str(commit),
            "MRHUB_STATE_DIR": state_dir,
            "MRHUB_TOPIC_PARTITIONS": "3",
            "MRHUB_LOG_LEVEL": "WARNING",
        }
    )
    from services.common.broker import free_port
    from services.common.faust_app import make_app, run_worker
    from services.common.settings import Settings
    from services.common.stages import Stages

    settings = Settings()
    service = "fwbench_" + prefix.rsplit(".", 1)[-1]
    # FW_FAUST_OVERRIDES: JSON of faust settings over make_app's (variants; unset = mrhub's)
    overrides = json.loads(os.environ.get("FW_FAUST_OVERRIDES") or "{}")
    app = make_app(service, settings, web_port=free_port(), **overrides)
    topics = [
        app.topic(f"{prefix}.{i}", key_type=bytes, value_type=bytes, partitions=PARTITIONS)
        for i in range(h + 1)
    ]
    dlq = app.topic(f"{prefix}.dlq", key_type=bytes, value_type=bytes, partitions=PARTITIONS)
    stages = Stages(app, service, dlq, lambda stage: None)

    def make(i: int):
        table = app.Table(f"s{i}", partitions=PARTITIONS, key_type=bytes, value_type=bytes)

        async def handle(event, key, value) -> None:
            status.first()
            state, out_key, out = step(value, i)
            table[key] = state
            await stages.emit(event, topics[i + 1], out_key, out)

        stages.agent(topics[i], f"hop{i}", handle)

    for i in range(h):
        make(i)
    run_worker(app, settings)


if __name__ == "__main__":
    main()
