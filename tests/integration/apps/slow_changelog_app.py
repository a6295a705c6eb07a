"""A worker built as the hub's are (exactly_once, the hub's agents and commit gate), whose
table writes are slow to reach the producer, for the test that a commit carries the table
writes of every event whose offset it commits.

Each event is kept in the ``seen`` table under its key and forwarded to the output topic
(in the source partition's transaction, as the hub's stages send). With
``MRHUB_TEST_CHANGELOG_DELAY_S`` each changelog write waits that long before faust's
producer buffer hands it to the producer, as when the broker retries a produce request or
the machine is busy. The test that runs it sets ``MRHUB_TEST_SUFFIX`` so that its topics and
app id are its own.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from faust.topics import Topic
from prometheus_client import CollectorRegistry

from services.common.faust_app import make_app
from services.common.settings import load_settings
from services.common.stages import Stages, add_service_pages

SUFFIX = os.environ["MRHUB_TEST_SUFFIX"]
DELAY_S = float(os.environ.get("MRHUB_TEST_CHANGELOG_DELAY_S", "0"))
settings = load_settings()
app = make_app(
    f"test-slowlog-{SUFFIX}",
    settings,
    web_port=int(os.environ.get("MRHUB_TEST_WEB_PORT", "0")),
)
source = app.topic(f"test.slowlog.in.{SUFFIX}", key_type=bytes, value_type=bytes)
sink = app.topic(f"test.slowlog.out.{SUFFIX}", key_type=bytes, value_type=bytes)
dead = app.topic(f"test.slowlog.dead.{SUFFIX}", key_type=bytes, value_type=bytes)
seen = app.Table("seen", partitions=settings.topic_partitions, key_type=bytes, value_type=bytes)
stages = Stages(app, "slowlog", dead, lambda _stage: None)


async def keep(event: Any, key: bytes | None, value: bytes) -> None:
    seen[key or b""] = value
    await stages.emit(event, sink, key, value)


stages.agent(source, "keep", keep)
add_service_pages(app, CollectorRegistry())


if DELAY_S:
    publish_message = Topic.publish_message

    async def slow_publish_message(self: Topic, fut: Any, wait: bool = False) -> Any:
        if self.get_topic_name().endswith("-changelog"):
            await asyncio.sleep(DELAY_S)
        return await publish_message(self, fut, wait=wait)

    Topic.publish_message = slow_publish_message  # type: ignore[method-assign]


if __name__ == "__main__":
    app.main()
