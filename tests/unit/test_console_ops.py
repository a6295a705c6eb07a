"""The console's operations page (services/console/ops.py): every process's readiness,
consumer lag and dead letters from its own /readyz and /metrics; a process that does not
answer shows as down and does not hold the page up."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from services.common.settings import Settings
from services.console.app import create_app
from services.console.ops import parse_metrics
from tests.unit.test_console_figures import PASSWORD, Page, settings_for, users_file

__all__ = ["users_file"]  # the fixture, shared

pytestmark = pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning")


def exposition(lag: dict[tuple[str, int], int], dead: dict[str, int]) -> bytes:
    """Metrics as the services write them (services/common/metrics.py, lag.py)."""
    registry = CollectorRegistry()
    g = Gauge(
        "mrhub_consumer_lag_messages", "lag", ["service", "topic", "partition"], registry=registry
    )
    for (topic, part), n in lag.items():
        g.labels("patient_index", topic, str(part)).set(n)
    c = Counter("mrhub_dead_letters", "dead letters", ["service", "stage"], registry=registry)
    for stage, n in dead.items():
        c.labels("patient_index", stage).inc(n)
    Counter("mrhub_other", "not ours", registry=registry).inc(7)
    return generate_latest(registry)


def fake_service(
    *, ready: bool, metrics: bytes | None, hang: asyncio.Event | None = None
) -> web.Application:
    app = web.Application()

    async def readyz(request: web.Request) -> web.Response:
        if hang is not None:
            await hang.wait()  # never set: this process does not answer
        if ready:
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "recovering"}, status=503)

    async def metrics_view(request: web.Request) -> web.Response:
        if hang is not None:
            await hang.wait()
        if metrics is None:
            return web.Response(status=404)
        return web.Response(body=metrics, content_type="text/plain")

    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_view)
    return app


def test_lag_and_dead_letters_are_read_from_the_exposition() -> None:
    text = exposition(
        {
            ("mrhub.ingest.resource-accepted.v1", 0): 5,
            ("mrhub.ingest.resource-accepted.v1", 1): 2,
            ("mrhub.results.order-placed.v1", 0): 0,
        },
        {"match": 3, "route": 1},
    ).decode()
    lag, dead = parse_metrics(text)
    assert lag == {"mrhub.ingest.resource-accepted.v1": 7, "mrhub.results.order-placed.v1": 0}
    assert dead == {"match": 3, "route": 1}


@pytest.fixture
async def services(tmp_path: Path) -> AsyncIterator[dict[str, str]]:
    hang = asyncio.Event()
    servers = {
        "ingest": TestServer(fake_service(ready=True, metrics=exposition({}, {}))),
        "pi0": TestServer(
            fake_service(
                ready=True,
                metrics=exposition({("mrhub.ingest.resource-accepted.v1", 0): 12}, {"match": 2}),
            )
        ),
        "pi1": TestServer(fake_service(ready=False, metrics=exposition({}, {"route": 1}))),
        "imaging": TestServer(fake_service(ready=True, metrics=None, hang=hang)),
    }
    for s in servers.values():
        await s.start_server()
    # a port nothing listens on: a recognition worker that is not running
    closed = TestServer(web.Application())
    await closed.start_server()
    closed_url = str(closed.make_url("")).rstrip("/")
    await closed.close()
    urls = {k: str(s.make_url("")).rstrip("/") for k, s in servers.items()}
    urls["recognition"] = closed_url
    try:
        yield urls
    finally:
        hang.set()
        for s in servers.values():
            await s.close()


def ops_settings(users_file: Path, urls: dict[str, str]) -> Settings:
    base = settings_for(users_file)
    return base.model_copy(
        update={
            "console": base.console.model_copy(
                update={
                    "ingest_url": urls["ingest"],
                    "imaging_url": urls["imaging"],
                    "request_timeout_s": 0.5,
                }
            ),
            "patient_index": base.patient_index.model_copy(
                update={"url": f"{urls['pi0']}, {urls['pi1']}"}
            ),
            "recognition": base.recognition.model_copy(update={"url": urls["recognition"]}),
        }
    )


async def signed_in(app: web.Application, name: str) -> TestClient[Any, Any]:
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    r = await client.post(
        "/login", data={"username": name, "password": PASSWORD}, allow_redirects=False
    )
    assert r.status == 303
    return client


async def test_each_process_readiness_lag_and_dead_letters(
    users_file: Path, services: dict[str, str]
) -> None:
    app = create_app(ops_settings(users_file, services))
    client = await signed_in(app, "datong")  # a region viewer may look
    try:
        r = await client.get("/ops")
        assert r.status == 200
        p = Page(await r.text())
    finally:
        await client.close()
    rows = {(a["data-service"], a["data-worker"]): (a, cells) for a, cells in p.tables["services"]}
    assert set(rows) == {
        ("ingest", "0"),
        ("patient_index", "0"),
        ("patient_index", "1"),
        ("recognition", "0"),
        ("imaging", "0"),
    }
    state = {k: a["data-state"] for k, (a, _c) in rows.items()}
    assert state == {
        ("ingest", "0"): "ready",
        ("patient_index", "0"): "ready",
        ("patient_index", "1"): "not-ready",  # answered 503: recovering
        ("recognition", "0"): "down",  # nothing listens
        ("imaging", "0"): "down",  # does not answer in time
    }
    assert rows[("patient_index", "0")][1]["lag"] == "12"
    assert rows[("patient_index", "0")][1]["dead_letters"] == "2"
    assert rows[("patient_index", "1")][1]["dead_letters"] == "1"
    assert rows[("recognition", "0")][1]["lag"] == "—"
    assert p.testids["ops-lag"] == "12" and p.testids["ops-dead-letters"] == "3"
    assert p.testids["ops-down"] == "2" and p.testids["ops-ready"] == "2"


async def test_a_hospital_viewer_may_not_open_operations(
    users_file: Path, services: dict[str, str]
) -> None:
    app = create_app(ops_settings(users_file, services))
    client = await signed_in(app, "jinyuan")
    try:
        assert (await client.get("/ops")).status == 403
    finally:
        await client.close()
