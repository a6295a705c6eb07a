"""Several workers behind one URL setting (issue 18): the gateway's read proxy and the
patient lookup reach any worker, skip one that refuses the connection, and send a request
that reached a worker to another only when it is a read."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from services.common.broker import free_port
from services.common.institutions import Registry
from services.common.patient_lookup import LookupUnavailable, PatientLookup
from services.common.settings import Settings
from services.common.upstreams import Upstreams, split_urls
from services.ingest.app import build_app
from tests.conftest import REPO

TOKEN = "mrh_caller-token-of-hospital-b"
MASTER = "MP" + "ab" * 12


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_split_urls_takes_one_url_or_a_list() -> None:
    assert split_urls("http://a:1/") == ("http://a:1",)
    assert split_urls(" http://a:1, http://b:2/ ,") == ("http://a:1", "http://b:2")
    with pytest.raises(ValueError):
        split_urls(" , ")


def test_requests_take_turns_and_a_failed_worker_is_tried_last_until_its_cooldown() -> None:
    clock = Clock()
    ups = Upstreams("http://a,http://b,http://c", cooldown_s=5, clock=clock)
    firsts = [ups.order()[0] for _ in range(6)]
    assert firsts == ["http://a", "http://b", "http://c"] * 2
    ups.failed("http://b")
    for _ in range(6):
        order = ups.order()
        assert sorted(order) == ["http://a", "http://b", "http://c"]  # each once
        assert order[-1] == "http://b"
    clock.now += 5.1
    assert {ups.order()[0] for _ in range(3)} == {"http://a", "http://b", "http://c"}
    ups.failed("http://c")
    ups.answered("http://c")  # it answered again: back in turn at once
    assert {ups.order()[0] for _ in range(3)} == {"http://a", "http://b", "http://c"}


# ------------------------------------------------------------------ the gateway's read proxy


@dataclass
class Worker:
    name: str
    seen: list[str] = field(default_factory=list)


def worker_app(worker: Worker) -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        worker.seen.append(f"{request.method} {request.path}")
        if request.path == "/internal/resolve":
            return web.json_response({"master_patient_id": MASTER, "grade": "certain"})
        return web.json_response(
            {"resourceType": "Bundle", "type": "searchset", "total": 0, "by": worker.name},
            content_type="application/fhir+json",
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


async def dropping_worker() -> tuple[asyncio.Server, str, list[bytes]]:
    """A worker that reads a request and closes the connection without answering (one that
    stops or dies while it handles the request)."""
    got: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got.append(await reader.readuntil(b"\r\n\r\n"))
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}", got


@pytest.fixture
async def live() -> AsyncIterator[tuple[Worker, str]]:
    worker = Worker("live")
    server = TestServer(worker_app(worker), host="127.0.0.1")
    await server.start_server()
    try:
        yield worker, str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


async def gateway(recognition_url: str) -> TestServer:
    app = build_app(
        Registry.load(REPO / "config" / "institutions.yaml"),
        bootstrap="127.0.0.1:1",  # no write is made here: no broker needed
        hmac_key=b"upstreams-test-key",
        max_body_bytes=256 * 1024,
        recognition_url=recognition_url,
        proxy_timeout_s=5.0,
    )
    server = TestServer(app, host="127.0.0.1")
    await server.start_server(access_log=None)
    return server


AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def test_the_gateway_skips_a_dead_recognition_worker(live: tuple[Worker, str]) -> None:
    worker, url = live
    dead = f"http://127.0.0.1:{free_port()}"  # nobody listens: connection refused
    gw = await gateway(f"{dead},{url}")
    try:
        async with httpx.AsyncClient(base_url=str(gw.make_url("")), timeout=10) as client:
            for _ in range(4):  # whichever worker's turn it is
                resp = await client.get("/fhir/Observation?patient=x", headers=AUTH)
                assert resp.status_code == 200, resp.text
                assert resp.json()["by"] == "live"
            feedback = await client.post(
                "/cds-services/mrhub-recognition/feedback", json={}, headers=AUTH
            )
            assert feedback.status_code == 200
    finally:
        await gw.close()
    assert worker.seen.count("GET /fhir/Observation") == 4


async def test_when_every_worker_is_down_the_gateway_answers_503() -> None:
    gw = await gateway(f"http://127.0.0.1:{free_port()},http://127.0.0.1:{free_port()}")
    try:
        async with httpx.AsyncClient(base_url=str(gw.make_url("")), timeout=10) as client:
            resp = await client.get("/fhir/Observation?patient=x", headers=AUTH)
    finally:
        await gw.close()
    assert resp.status_code == 503
    assert resp.headers["Retry-After"] == "5"


async def test_a_read_that_a_worker_dropped_goes_to_the_next_but_a_write_does_not(
    live: tuple[Worker, str],
) -> None:
    worker, url = live
    server, dropping, got = await dropping_worker()
    gw = await gateway(f"{dropping},{url}")  # requests take turns: dropping, live, dropping …
    try:
        async with httpx.AsyncClient(base_url=str(gw.make_url("")), timeout=10) as client:
            # a feedback records a choice: once it reached a worker it is never sent again
            write = await client.post(
                "/cds-services/mrhub-recognition/feedback", json={}, headers=AUTH
            )
            first = await client.get("/fhir/Observation", headers=AUTH)  # live's turn
            # a search is a read: dropped by one worker, answered by the next
            read = await client.post("/fhir/Observation/_search", data={"p": "x"}, headers=AUTH)
    finally:
        await gw.close()
        server.close()
        await server.wait_closed()
    assert write.status_code == 503
    assert [g.split(b" ")[1] for g in got] == [
        b"/cds-services/mrhub-recognition/feedback",
        b"/fhir/Observation/_search",
    ]
    assert first.status_code == 200 and read.status_code == 200
    assert read.json()["by"] == "live"
    assert worker.seen == ["GET /fhir/Observation", "POST /fhir/Observation/_search"]


# -------------------------------------------------------------------------- patient lookup


async def test_the_lookup_skips_a_dead_patient_index_worker(
    live: tuple[Worker, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    worker, url = live
    monkeypatch.setenv("MRHUB_IDENTITY__HMAC_KEY", "upstreams-test-key")
    monkeypatch.setenv("MRHUB_PATIENT_INDEX__URL", f"http://127.0.0.1:{free_port()},{url}")
    lookup = PatientLookup(Settings())
    try:
        for _ in range(4):
            found = await lookup.resolve("110105198503171234", "H1")
            assert found is not None and found.master_patient_id == MASTER
    finally:
        await lookup.aclose()
    assert worker.seen == ["POST /internal/resolve"] * 4


async def test_the_lookup_is_unavailable_when_no_worker_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MRHUB_IDENTITY__HMAC_KEY", "upstreams-test-key")
    dead = f"http://127.0.0.1:{free_port()},http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MRHUB_PATIENT_INDEX__URL", dead)
    lookup = PatientLookup(Settings())
    try:
        with pytest.raises(LookupUnavailable, match="no worker of the patient index answered"):
            await lookup.resolve("110105198503171234", "H1")
    finally:
        await lookup.aclose()
