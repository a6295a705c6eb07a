"""Console page: operations at a glance (``/ops``, stewards and region viewers).

For every service process — the gateway (``MRHUB_CONSOLE__INGEST_URL``), each patient index
worker (``MRHUB_PATIENT_INDEX__URL``, a comma-separated list), each recognition worker
(``MRHUB_RECOGNITION__URL``) and the imaging index (``MRHUB_CONSOLE__IMAGING_URL``) — the
page asks its own ``/readyz`` and ``/metrics``, all at once, each with a short timeout
(:data:`OPS_TIMEOUT_S`, at most the console's request timeout): a process that does not
answer shows as down and never holds the page up. From the metrics (docs/metrics.md) it
shows the consumer lag (``mrhub_consumer_lag_messages``, summed over the partitions the
worker holds, and the topics that lag) and the dead letters the process has sent since it
started (``mrhub_dead_letters_total``). Nothing on the page names a patient.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Final

import httpx
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from services.common.upstreams import split_urls
from services.console import auth
from services.console.app import CONSOLE, render

__all__ = ["OPS_TIMEOUT_S", "Probe", "Target", "parse_metrics", "probe", "setup", "targets"]

log = logging.getLogger(__name__)

#: The longest the page waits for any one service (the console's timeout if shorter).
OPS_TIMEOUT_S: Final = 3.0

LAG_METRIC: Final = "mrhub_consumer_lag_messages"
DEAD_LETTER_METRIC: Final = "mrhub_dead_letters_total"

SERVICE_NAMES: Final = {
    "ingest": "接入网关",
    "patient_index": "患者主索引",
    "recognition": "互认判定",
    "imaging": "影像索引",
}


@dataclass(frozen=True)
class Target:
    service: str
    worker: int
    url: str


@dataclass
class Probe:
    target: Target
    state: str = "down"  # ready | not-ready | down
    detail: str = ""
    metrics: bool = False
    lag: int | None = None
    lag_by_topic: dict[str, int] = field(default_factory=dict)
    dead_letters: int | None = None
    dead_letters_by_stage: dict[str, int] = field(default_factory=dict)

    @property
    def state_name(self) -> str:
        return {"ready": "就绪", "not-ready": "未就绪", "down": "无响应"}[self.state]


def targets(settings: Any) -> list[Target]:
    """Every process the page asks, in a fixed order."""
    out: list[Target] = []
    for service, value in (
        ("ingest", settings.console.ingest_url),
        ("patient_index", settings.patient_index.url),
        ("recognition", settings.recognition.url),
        ("imaging", settings.console.imaging_url),
    ):
        out += [
            Target(service, i, url)
            for i, url in enumerate(split_urls(value) if value.strip() else ())
        ]
    return out


def parse_metrics(text: str) -> tuple[Counter[str], Counter[str]]:
    """(lag by topic, dead letters by stage) from a Prometheus exposition."""
    lag: Counter[str] = Counter()
    dead: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == LAG_METRIC:
                lag[sample.labels.get("topic", "")] += int(sample.value)
            elif sample.name == DEAD_LETTER_METRIC:
                dead[sample.labels.get("stage", "")] += int(sample.value)
    return lag, dead


async def probe(http: httpx.AsyncClient, target: Target, timeout_s: float) -> Probe:
    """Readiness and metrics of one process; never raises, never waits past ``timeout_s``."""
    found = Probe(target)

    async def ready() -> None:
        r = await http.get(f"{target.url}/readyz", timeout=timeout_s)
        found.state = "ready" if r.status_code == 200 else "not-ready"
        try:
            body = r.json()
        except ValueError:
            body = None
        if isinstance(body, dict):
            parts = [str(body.get("status", ""))]
            problems = body.get("problems")
            if isinstance(problems, list):
                parts += [str(p) for p in problems]
            found.detail = "；".join(p for p in parts if p)[:200]
        else:
            found.detail = f"HTTP {r.status_code}"

    async def metrics() -> None:
        r = await http.get(f"{target.url}/metrics", timeout=timeout_s)
        if r.status_code != 200:
            return
        lag, dead = await asyncio.to_thread(parse_metrics, r.text)
        found.metrics = True
        found.lag_by_topic = {t: n for t, n in sorted(lag.items()) if n}
        found.lag = sum(lag.values()) if lag else 0
        found.dead_letters_by_stage = {s: n for s, n in sorted(dead.items()) if n}
        found.dead_letters = sum(dead.values())

    async def guarded(step: Any, what: str) -> None:
        try:
            await asyncio.wait_for(step(), timeout=timeout_s + 0.5)
        except Exception as exc:
            if what == "readyz":
                found.state = "down"
                found.detail = type(exc).__name__
            log.info(
                "ops: %s of %s did not answer",
                what,
                target.service,
                extra={"service": target.service, "worker": target.worker},
            )

    await asyncio.gather(guarded(ready, "readyz"), guarded(metrics, "metrics"))
    return found


@auth.require("steward", "region")
async def ops_page(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONSOLE]
    timeout_s = min(OPS_TIMEOUT_S, ctx.settings.console.request_timeout_s)
    probes = await asyncio.gather(*(probe(ctx.http, t, timeout_s) for t in targets(ctx.settings)))
    counts = Counter(p.state for p in probes)
    return await render(
        request,
        "ops.html",
        {
            "probes": probes,
            "names": SERVICE_NAMES,
            "counts": counts,
            "timeout_s": timeout_s,
            "total_lag": sum(p.lag or 0 for p in probes),
            "total_dead": sum(p.dead_letters or 0 for p in probes),
        },
    )


def setup(app: web.Application) -> None:
    """Add this module's routes to the console."""
    app.router.add_get("/ops", ops_page)
