"""The gateway's read proxy (contract 3): FHIR reads and searches and CDS Hooks calls go to
recognition unchanged — method, path, query, body, Content-Type, Accept, the caller's
Authorization — with the gateway's public base and the internal token that vouches for it,
which only the upstream ever sees. Each access rule here is tried by a test that breaks it:
no credential, a forged public base, a body too large, a type that is not served, a read
service that is down or slow, a 身份证 in the query and the body (never in a log line).

The upstream is a small aiohttp app standing in for recognition; the real end to end
(gateway → recognition with real data) is tests of the reads themselves."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from services.common.broker import free_port
from services.common.forwarding import (
    FORWARDED_BY_HEADER,
    PUBLIC_BASE_HEADER,
    forwarded_headers,
    trusted_base,
)
from services.common.institutions import Registry
from services.common.patient_lookup import internal_token
from services.common.settings import Settings
from services.ingest.app import build_app
from tests.conftest import REPO

CARD = "110105198503171234"
PUBLIC = "https://hub.example"
FHIR = "application/fhir+json"
TOKEN = "mrh_caller-token-of-hospital-b"


@dataclass
class Seen:
    method: str
    path: str
    query: str
    body: bytes
    headers: dict[str, str]


@dataclass
class Upstream:
    url: str
    seen: list[Seen] = field(default_factory=list)
    delay_s: float = 0.0
    status: int = 200


def upstream_app(state: Upstream) -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        state.seen.append(
            Seen(
                request.method,
                request.rel_url.raw_path,
                request.rel_url.raw_query_string,
                await request.read(),
                dict(request.headers),
            )
        )
        if state.delay_s:
            await asyncio.sleep(state.delay_s)
        return web.json_response(
            {"resourceType": "Bundle", "type": "searchset", "total": 0},
            status=state.status,
            content_type=FHIR,
            headers={"ETag": 'W/"7"', "X-Internal-Only": "not for callers"},
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("MRHUB_IDENTITY__HMAC_KEY", "proxy-test-key")
    return Settings()


@dataclass
class Rig:
    gateway: str
    upstream: Upstream
    settings: Settings


async def _gateway(settings: Settings, upstream_url: str, **kw: Any) -> TestServer:
    path = REPO / "config" / "institutions.yaml"
    app = build_app(
        Registry.load(path),
        bootstrap="127.0.0.1:1",  # no write is made here: no broker needed
        hmac_key=b"proxy-test-key",
        max_body_bytes=256 * 1024,
        recognition_url=upstream_url,
        forward_headers=forwarded_headers(settings, PUBLIC),
        public_base_url=PUBLIC,
        **kw,
    )
    # as services/ingest/server.py serves it: no access log (a URL may hold a 身份证)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server(access_log=None)
    return server


@pytest.fixture
async def rig(settings: Settings) -> AsyncIterator[Rig]:
    state = Upstream("")
    up = TestServer(upstream_app(state), host="127.0.0.1")
    await up.start_server()
    state.url = str(up.make_url("")).rstrip("/")
    gw = await _gateway(settings, state.url, proxy_timeout_s=1.0, proxy_max_body_bytes=4096)
    try:
        yield Rig(str(gw.make_url("")).rstrip("/"), state, settings)
    finally:
        await gw.close()
        await up.close()


def auth(**extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}", "Accept": FHIR, **extra}


def outcome(resp: httpx.Response) -> dict[str, Any]:
    assert resp.headers["content-type"].startswith(FHIR), resp.headers
    doc: dict[str, Any] = resp.json()
    assert doc["resourceType"] == "OperationOutcome", doc
    return doc


async def test_a_search_goes_upstream_unchanged_with_the_vouched_public_base(rig: Rig) -> None:
    query = "patient=urn%3Aoid%3A2.16.156.10011.1.3%7C" + CARD + "&code=2823-3&_count=2"
    async with httpx.AsyncClient(base_url=rig.gateway) as client:
        resp = await client.get(f"/fhir/Observation?{query}", headers=auth())
    assert resp.status_code == 200, resp.text
    assert resp.json()["resourceType"] == "Bundle"
    assert resp.headers["content-type"].startswith(FHIR)
    assert resp.headers["ETag"] == 'W/"7"'
    assert "X-Internal-Only" not in resp.headers  # only the listed headers come back
    [seen] = rig.upstream.seen
    assert (seen.method, seen.path, seen.query) == ("GET", "/fhir/Observation", query)
    assert seen.headers["Authorization"] == f"Bearer {TOKEN}"
    assert seen.headers["Accept"] == FHIR
    assert seen.headers["X-Trace-Id"] == resp.headers["X-Trace-Id"]
    # recognition can trust the base: it comes with the internal token
    assert trusted_base(seen.headers, rig.settings, "http://worker:8081") == PUBLIC
    # the internal token reaches only the upstream, never the caller
    token = internal_token(rig.settings)
    assert seen.headers[FORWARDED_BY_HEADER] == token
    assert token not in resp.text and all(token not in v for v in resp.headers.values())


async def test_a_post_search_is_a_search_not_a_write(rig: Rig) -> None:
    form = f"patient=urn%3Aoid%3A2.16.156.10011.1.3%7C{CARD}&category=lab"
    async with httpx.AsyncClient(base_url=rig.gateway) as client:
        resp = await client.post(
            "/fhir/Observation/_search",
            content=form,
            headers=auth(**{"Content-Type": "application/x-www-form-urlencoded"}),
        )
        metrics = (await client.get("/metrics")).text
    assert resp.status_code == 200, resp.text
    [seen] = rig.upstream.seen
    assert (seen.method, seen.path) == ("POST", "/fhir/Observation/_search")
    assert seen.body == form.encode()
    assert seen.headers["Content-Type"] == "application/x-www-form-urlencoded"
    # nothing was taken as a resource to publish
    assert "mrhub_ingest_resources_total{" not in metrics
    assert CARD not in metrics


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/fhir/DiagnosticReport/0123456789abcdef0123456789abcdef", None),
        ("GET", "/fhir/DetectedIssue?implicated=ServiceRequest/abc", None),
        ("GET", "/cds-services", None),
        ("POST", "/cds-services/mrhub-order-select", b'{"hook":"order-select"}'),
        ("POST", "/cds-services/mrhub-order-select/feedback", b'{"feedback":[]}'),
    ],
)
async def test_reads_and_cds_hooks_calls_are_forwarded(
    rig: Rig, method: str, path: str, body: bytes | None
) -> None:
    headers = auth(**({"Content-Type": "application/json"} if body else {}))
    async with httpx.AsyncClient(base_url=rig.gateway) as client:
        resp = await client.request(method, path, content=body, headers=headers)
    assert resp.status_code == 200, resp.text
    [seen] = rig.upstream.seen
    want_path, _, want_query = path.partition("?")
    assert (seen.method, seen.path, seen.query) == (method, want_path, want_query)
    assert seen.body == (body or b"")
    assert seen.headers[PUBLIC_BASE_HEADER] == PUBLIC


async def test_the_upstreams_refusal_comes_back_as_it_is(rig: Rig) -> None:
    rig.upstream.status = 403
    async with httpx.AsyncClient(base_url=rig.gateway) as client:
        resp = await client.get("/fhir/Observation?patient=x", headers=auth())
    assert resp.status_code == 403


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/fhir/Observation?patient=x"),
        ("GET", "/fhir/Observation/0123456789abcdef0123456789abcdef"),
        ("POST", "/fhir/Observation/_search"),
        ("GET", "/cds-services"),
        ("POST", "/cds-services/mrhub-order-select"),
    ],
)
async def test_no_credential_is_401_from_the_gateway_and_nothing_is_forwarded(
    rig: Rig, method: str, path: str
) -> None:
    async with httpx.AsyncClient(base_url=rig.gateway) as client:
        resp = await client.request(method, path, headers={"Accept": FHIR})
        blank = await client.request(method, path, headers={"Authorization": ""})
    assert (resp.status_code, blank.status_code) == (401, 401)
    assert outcome(resp)["issue"][0]["code"] == "login"
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert rig.upstream.seen == []


async def test_a_forged_public_base_or_internal_token_never_reaches_the_upstream(rig: Rig) -> None:
    forged = {PUBLIC_BASE_HEADER: "https://evil.example", FORWARDED_BY_HEADER: "mrhi_forged"}
    async with httpx.AsyncClient(base_url=rig.gateway) as client:
        resp = await client.get("/fhir/Observation?patient=x", headers=auth(**forged))
    assert resp.status_code == 200
    [seen] = rig.upstream.seen
    assert seen.headers[PUBLIC_BASE_HEADER] == PUBLIC
    assert seen.headers[FORWARDED_BY_HEADER] == internal_token(rig.settings)


async def test_types_that_are_not_read_here_are_404_and_not_forwarded(rig: Rig) -> None:
    async with httpx.AsyncClient(base_url=rig.gateway) as client:
        patient = await client.get(f"/fhir/Patient?identifier={CARD}", headers=auth())
        one = await client.get("/fhir/Patient/1", headers=auth())
        search = await client.post("/fhir/Encounter/_search", headers=auth())
    assert [r.status_code for r in (patient, one, search)] == [404, 404, 404]
    outcome(patient)
    assert rig.upstream.seen == []


async def test_a_body_over_the_limit_is_413_and_not_forwarded(rig: Rig) -> None:
    async with httpx.AsyncClient(base_url=rig.gateway) as client:
        resp = await client.post(
            "/cds-services/mrhub-order-select",
            content=b"{" + b" " * 5000 + b"}",
            headers=auth(**{"Content-Type": "application/json"}),
        )
    assert resp.status_code == 413
    outcome(resp)
    assert rig.upstream.seen == []


async def test_an_unreachable_read_service_is_503_and_a_slow_one_504(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    down = await _gateway(settings, f"http://127.0.0.1:{free_port()}", proxy_timeout_s=1.0)
    state = Upstream("", delay_s=3.0)
    slow_up = TestServer(upstream_app(state), host="127.0.0.1")
    await slow_up.start_server()
    slow = await _gateway(settings, str(slow_up.make_url("")), proxy_timeout_s=0.5)
    query = f"patient=urn%3Aoid%3A2.16.156.10011.1.3%7C{CARD}"
    try:
        async with httpx.AsyncClient() as client:
            gone = await client.get(
                f"{str(down.make_url('')).rstrip('/')}/fhir/Observation?{query}", headers=auth()
            )
            late = await client.post(
                f"{str(slow.make_url('')).rstrip('/')}/fhir/Observation/_search",
                content=query,
                headers=auth(**{"Content-Type": "application/x-www-form-urlencoded"}),
            )
    finally:
        await down.close()
        await slow.close()
        await slow_up.close()
    assert gone.status_code == 503, gone.text
    assert outcome(gone)["issue"][0]["code"] == "transient"
    assert gone.headers["Retry-After"]
    assert late.status_code == 504, late.text
    assert outcome(late)["issue"][0]["code"] == "timeout"
    # the 身份证 in the query and the body is in no log line, nor the internal token
    assert "recognition unreachable" in caplog.text
    assert CARD not in caplog.text
    assert internal_token(settings) not in caplog.text
    assert CARD not in gone.text and CARD not in late.text


async def test_the_write_routes_still_take_writes(rig: Rig, tmp_path: Path) -> None:
    """``POST /fhir/{type}`` stays the gateway's own (a create), not forwarded."""
    async with httpx.AsyncClient(base_url=rig.gateway) as client:
        resp = await client.post(
            "/fhir/Observation", content=b"{", headers=auth(**{"Content-Type": FHIR})
        )
    assert resp.status_code == 401  # the caller's token is no registered institution's
    assert rig.upstream.seen == []
