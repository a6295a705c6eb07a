"""A tiny faust app built with the hub's own factory, for the platform tests.

It counts events per key in a RocksDB-backed table and publishes each new count. The test
that runs it sets ``MRHUB_TEST_SUFFIX`` so that its topics and app id are its own.
"""

from __future__ import annotations

import json
import os
import signal
from typing import Any

from prometheus_client import CollectorRegistry

from services.common.faust_app import make_app
from services.common.settings import load_settings
from services.common.stages import add_service_pages

SUFFIX = os.environ["MRHUB_TEST_SUFFIX"]
#: with it set, a message with the value ``die`` kills the worker as kill -9 would, with the
#: transaction of what it processed before still open; without, such a message is skipped
DIE = os.environ.get("MRHUB_TEST_DIE") == "1"
settings = load_settings()
# a run that is to die commits on no timer: what it processed is all in open transactions
overrides: dict[str, Any] = {"broker_commit_interval": 3600.0} if DIE else {}
app = make_app(
    f"test-counter-{SUFFIX}",
    settings,
    web_port=int(os.environ.get("MRHUB_TEST_WEB_PORT", "0")),
    **overrides,
)
source = app.topic(f"test.counter.in.{SUFFIX}", key_type=bytes, value_type=bytes)
sink = app.topic(f"test.counter.out.{SUFFIX}", key_type=bytes, value_type=bytes)
counts = app.Table("counts", default=int, partitions=settings.topic_partitions)
# /readyz answers 200 once the table is recovered: the test waits for it, not for a time
add_service_pages(app, CollectorRegistry())


@app.agent(source, concurrency=1)
async def count(stream: Any) -> None:
    async for key, value in stream.items():
        if value == b"die":
            if DIE:
                os.kill(os.getpid(), signal.SIGKILL)
            continue
        name = key.decode()
        counts[name] += 1
        await sink.send(key=key, value=json.dumps({"key": name, "count": counts[name]}).encode())


if __name__ == "__main__":
    app.main()
