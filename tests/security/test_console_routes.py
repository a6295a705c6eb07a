"""The console's route walk: every route the console's application registers (its own, the
static files aiohttp serves for it) is asked by a stranger, by each role that may not open
it, and with a forged session. Only the documented public routes answer a stranger; a route
added later without being classified here fails the walk.

The application is built in this process exactly as ``mrhub serve console`` builds it. Its
patient index is an address nobody listens on, so a refusal that came too late (after the
console asked the patient index) would show as a 5xx rather than as the 303/401/403 the walk
expects.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from services.common.broker import free_port
from services.common.settings import Settings
from services.console import cli as console_cli
from services.console.app import create_app
from tests.conftest import REPO

PASSWORD = "a long enough password"

#: docs/security.md: what answers without signing in.
PUBLIC = {"/login", "/healthz", "/readyz", "/metrics"}
PUBLIC_PREFIX = "/static/"

#: Every other route and the roles that may open it (docs/console.md). A route missing from
#: this map fails the walk: classify it when you add it.
ROLES: dict[str, set[str]] = {
    "/": {"steward", "region", "hospital"},
    "/logout": {"steward", "region", "hospital"},
    # stewards
    "/reviews": {"steward"},
    "/reviews/open": {"steward"},
    "/review": {"steward"},
    "/review/confirm": {"steward"},
    "/review/reject": {"steward"},
    # finding a patient: stewards, and hospital viewers within their own institution
    "/patients": {"steward", "hospital"},
    "/patients/find": {"steward", "hospital"},
    "/patients/open": {"steward", "hospital"},
    "/patient": {"steward", "hospital"},
    "/patient/timeline": {"steward", "hospital"},
    "/patient/merge": {"steward"},
    "/patient/unmerge": {"steward"},
    "/patient/link": {"steward"},
    "/patient/unlink": {"steward"},
    # figures
    "/figures": {"steward", "region", "hospital"},
    "/figures.csv": {"steward", "region", "hospital"},
    "/reasons": {"steward", "region"},
    "/ops": {"steward", "region"},
}


def _routes(app: web.Application) -> list[tuple[str, str]]:
    found = set()
    for route in app.router.routes():
        resource = route.resource
        if resource is None or route.method == "HEAD":
            continue
        found.add((route.method, resource.canonical))
    return sorted(found)


def _settings(tmp: Path) -> Settings:
    users = tmp / "users.yaml"
    console_cli.add_user(users, "s", role="steward", password=PASSWORD)
    console_cli.add_user(users, "r", role="region", password=PASSWORD, scope="140100")
    console_cli.add_user(users, "h", role="hospital", password=PASSWORD,
                         scope="12140000405001730E")  # fmt: skip
    nowhere = f"http://127.0.0.1:{free_port()}"
    return Settings.model_validate(
        {
            "console": {
                "users_path": str(users),
                "session_key": console_cli.new_session_key(),
                "steward_token": "mrs_walk",
                "secure_cookies": False,
                "imaging_url": nowhere,
                "ingest_url": nowhere,
                "request_timeout_s": 2,
            },
            "patient_index": {"url": nowhere},
            "recognition": {"url": nowhere},
            "institutions_path": str(REPO / "config" / "institutions.yaml"),
        }
    )


Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def app_and_routes(tmp_path: Path) -> AsyncIterator[tuple[Client, list[tuple[str, str]]]]:
    app = create_app(_settings(tmp_path))
    routes = _routes(app)
    async with TestClient(TestServer(app)) as client:
        yield client, routes


def _concrete(pattern: str) -> str:
    return re.sub(r"\{[^}]+\}", "x1", pattern)


def _public(path: str) -> bool:
    # aiohttp names the static files' resource by its prefix, "/static"
    return path in PUBLIC or path == PUBLIC_PREFIX.rstrip("/") or path.startswith(PUBLIC_PREFIX)


async def _sign_in(client: Client, name: str) -> str:
    r = await client.post("/login", data={"username": name, "password": PASSWORD},
                          allow_redirects=False)  # fmt: skip
    assert r.status == 303, await r.text()
    text = await (await client.get("/", allow_redirects=True)).text()
    marker = 'name="csrf_token" value="'
    assert marker in text, text[:300]
    return text.split(marker, 1)[1].split('"', 1)[0]


async def test_every_route_is_classified(
    app_and_routes: tuple[Client, list[tuple[str, str]]],
) -> None:
    _, routes = app_and_routes
    unknown = [(m, p) for m, p in routes if not _public(p) and p not in ROLES]
    assert unknown == [], "classify these routes in ROLES (and in docs/console.md)"


async def test_a_stranger_is_sent_to_sign_in_everywhere_but_the_public_routes(
    app_and_routes: tuple[Client, list[tuple[str, str]]],
) -> None:
    client, routes = app_and_routes
    for method, pattern in routes:
        path = _concrete(pattern)
        if _public(pattern):
            continue
        r = await client.request(method, path, data={"csrf_token": "forged"},
                                 allow_redirects=False)  # fmt: skip
        if method == "GET":
            assert (r.status, r.headers.get("Location")) == (303, "/login"), (method, path)
        else:
            assert r.status == 401, (method, path, r.status)


async def test_each_role_is_refused_the_routes_of_the_others(
    app_and_routes: tuple[Client, list[tuple[str, str]]],
) -> None:
    client, routes = app_and_routes
    for name, role in (("s", "steward"), ("r", "region"), ("h", "hospital")):
        client.session.cookie_jar.clear()
        token = await _sign_in(client, name)
        for method, pattern in routes:
            if _public(pattern) or role in ROLES.get(pattern, {role}):
                continue
            r = await client.request(method, _concrete(pattern), data={"csrf_token": token},
                                     allow_redirects=False)  # fmt: skip
            assert r.status == 403, (role, method, pattern, r.status)


async def test_a_forged_session_cookie_opens_nothing(
    app_and_routes: tuple[Client, list[tuple[str, str]]],
) -> None:
    client, routes = app_and_routes
    client.session.cookie_jar.update_cookies({"mrhub_console": "gAAAAAB" + "A" * 200})
    for method, pattern in routes:
        if _public(pattern) or method != "GET":
            continue
        r = await client.get(_concrete(pattern), allow_redirects=False)
        assert (r.status, r.headers.get("Location")) == (303, "/login"), pattern


async def test_every_post_needs_the_csrf_token_whatever_the_role(
    app_and_routes: tuple[Client, list[tuple[str, str]]],
) -> None:
    client, routes = app_and_routes
    for name in ("s", "r", "h"):
        client.session.cookie_jar.clear()
        await _sign_in(client, name)
        for method, pattern in routes:
            if method != "POST" or _public(pattern):
                continue
            r = await client.post(_concrete(pattern), data={"reason": "x"},
                                  allow_redirects=False)  # fmt: skip
            assert r.status == 403, (name, pattern, r.status)
            assert "CSRF" in await r.text()
