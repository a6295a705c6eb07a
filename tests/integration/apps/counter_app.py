"""A tiny faust app built with the hub's own factory, for the platform tests.

It counts events per key in a RocksDB-backed table and publishes each new count. The test
that runs it sets ``MRHUB_TEST_SUFFIX`` so that its topics and app id are its own.
"""

from __future__ import annotations

import json
import os
from typing import Any

from prometheus_client import CollectorRegistry

from services.common.faust_app import make_app
from services.common.settings import load_settings
from services.common.stages import add_service_pages

SUFFIX = os.environ["MRHUB_TEST_SUFFIX"]
settings = load_settings()
app = make_app(
    f"test-counter-{SUFFIX}",
    settings,
    web_port=int(os.environ.get("MRHUB_TEST_WEB_PORT", "0")),
)
source = app.topic(f"test.counter.in.{SUFFIX}", key_type=bytes, value_type=bytes)
sink = app.topic(f"test.counter.out.{SUFFIX}", key_type=bytes, value_type=bytes)
counts = app.Table("counts", default=int, partitions=settings.topic_partitions)
# /readyz answers 200 once the table is recovered: the test waits for it, not for a time
add_service_pages(app, CollectorRegistry())


@app.agent(source, concurrency=1)
async def count(stream: Any) -> None:
    async for key, _value in stream.items():
        name = key.decode()
        counts[name] += 1
        await sink.send(key=key, value=json.dumps({"key": name, "count": counts[name]}).encode())


if __name__ == "__main__":
    app.main()
