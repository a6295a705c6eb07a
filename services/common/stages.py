"""What every streaming service's faust app shares: JSON with exact decimals, sends inside the
source partition's transaction, dead-lettering agents, and the health and metrics pages.

Services keep their own decision logic; this module only wires it to faust.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

import faust
from prometheus_client import CollectorRegistry

from services.common.codec import dumps
from services.common.faust_app import fail_stop, worker_metrics
from services.common.faust_fixes import commit_gate, transactional_id
from services.common.logging import trace
from services.common.metrics import CONTENT_TYPE_LATEST, exposition

log = logging.getLogger(__name__)

#: A stage's handler: (event, key, value) for one message.
Handler = Callable[[Any, bytes | None, bytes], Awaitable[None]]


class Stages:
    """Sending and dead-lettering for the agents of one exactly_once app."""

    def __init__(
        self,
        app: faust.App,
        service: str,
        dead_letter_topic: Any,
        on_dead_letter: Callable[[str], None],
    ) -> None:
        self.app = app
        self.service = service
        self.dlq = dead_letter_topic
        self.on_dead_letter = on_dead_letter

    def source_transaction(self, event: Any) -> str:
        """The transaction whose commit carries ``event``'s input offset.

        faust-streaming picks a send's transaction by the *destination* partition, which is
        only right when input and output are co-partitioned: a repartitioning hop's output
        would commit with an unrelated partition's offsets, or never. Naming the source
        partition's transaction puts output, table changes and input offset in one commit
        (decision 0003). The id's format is faust's (``faust_fixes.transactional_id``).
        """
        tp = event.message.tp
        return transactional_id(self.app, tp.topic, tp.partition)

    async def emit(
        self,
        event: Any,
        topic: Any,
        key: bytes | None,
        value: bytes,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        """Send within the source partition's transaction. The source message's
        ``trace_id`` header goes along unless ``headers`` name one."""
        headers = list(headers or [])
        trace_id = _trace_id(event)
        if trace_id is not None and not any(k == "trace_id" for k, _ in headers):
            headers.append(("trace_id", trace_id.encode()))
        name = topic.get_topic_name()
        metrics = worker_metrics(self.app)
        try:
            fut = await self.app.producer.send(
                name,
                key,
                value,
                None,
                None,
                headers,
                transactional_id=self.source_transaction(event),
            )
        except Exception:
            if metrics is not None:
                metrics.produce_error(name)
            raise
        if isinstance(fut, asyncio.Future):
            fut.add_done_callback(lambda f: _on_sent(f, name, metrics))

    async def dead(self, stage: str, event: Any, exc: BaseException) -> None:
        """Send the message ``event`` carried to the dead-letter topic, with the error."""
        msg = event.message
        self.on_dead_letter(stage)
        metrics = worker_metrics(self.app)
        if metrics is not None:
            metrics.dead_letter(stage)
        log.error(
            "dead-lettered",
            extra={
                "stage": stage,
                "topic": msg.topic,
                "partition": msg.partition,
                "offset": msg.offset,
                "error": type(exc).__name__,
            },
        )
        value = msg.value if isinstance(msg.value, bytes) else b""
        await self.emit(
            event,
            self.dlq,
            msg.key if isinstance(msg.key, bytes) else None,
            dumps(
                {
                    "service": self.service,
                    "stage": stage,
                    "error": f"{type(exc).__name__}: {exc}"[:2000],
                    "traceback": traceback.format_exc(limit=5)[-4000:],
                    "topic": msg.topic,
                    "partition": msg.partition,
                    "offset": msg.offset,
                    "original_base64": base64.b64encode(value).decode(),
                }
            ),
        )

    def agent(self, topic: Any, stage: str, handle: Handler) -> None:
        """Register ``handle`` as the agent ``stage`` on ``topic``: one message at a time
        (concurrency 1, faust issue #606), every failure dead-lettered, never dropped."""

        gate = commit_gate(self.app)

        async def run(stream: Any) -> None:
            # items(), not events(): faust acks (and so commits) what items() yields
            async for key, value in stream.items():
                event = stream.current_event
                # no transaction commits while the event is half processed (faust_fixes
                # patch 12); leave() is synchronous, and faust acks the event before it
                # awaits anything once this body is done
                await gate.enter()
                try:
                    with trace(_trace_id(event)):  # log lines about it carry its trace id
                        try:
                            await handle(event, key, value)
                        except Exception as exc:
                            await self.dead(stage, event, exc)
                finally:
                    gate.leave()

        # faust names agents by qualname: unique per app
        run.__name__ = run.__qualname__ = f"{self.service}_{stage}"
        metrics = worker_metrics(self.app)
        if metrics is not None:  # a 0 from the start, so the first dead letter is an increase
            metrics.dead_letters.labels(self.service, stage)
        self.app.agent(topic, name=stage, concurrency=1)(run)


def _on_sent(fut: asyncio.Future[Any], topic: str, metrics: Any) -> None:
    """A stage's output that Kafka refused stops the worker (``fail_stop``): the event
    that made it must not be committed without it."""
    if fut.cancelled() or fut.exception() is None:
        return
    if metrics is not None:
        metrics.produce_error(topic)
    fail_stop(topic, fut.exception() or RuntimeError("send failed"))


def _trace_id(event: Any) -> str | None:
    """The ``trace_id`` Kafka header of the message ``event`` carries, if any."""
    raw = (getattr(event, "headers", None) or {}).get("trace_id")
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else None


def add_service_pages(app: faust.App, registry: CollectorRegistry) -> None:
    """``/metrics`` (Prometheus text, with the common worker metrics of
    :class:`services.common.metrics.WorkerMetrics`), ``/healthz`` and ``/readyz`` (tables
    recovered, not rebalancing)."""
    common = worker_metrics(app)
    if common is not None:
        common.register(registry)

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        # aiohttp refuses a charset inside content_type; the header carries it whole
        return web.bytes(exposition(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        return web.json({"status": "ok"})

    @app.page("/readyz")
    async def readyz(web: Any, request: Any) -> Any:
        tables: Any = app.tables  # faust's type hints omit the recovery service
        ready = not app.rebalancing and tables.recovery.completed.is_set()
        return web.json(
            {"status": "ready" if ready else "recovering"}, status=200 if ready else 503
        )
