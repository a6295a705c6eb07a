"""The guard in front of every worker route: deny by default, one credential check, every
refusal an OperationOutcome."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from services.common.institutions import Registry, hash_token, issue_token
from services.common.web_guard import CALLER_KEY, Guard, new_guard, web_application_options

DEMO = Path(__file__).resolve().parents[2] / "config" / "institutions.yaml"
STEWARD = "steward-secret"
INTERNAL = "mrhi_internal-secret"


def _guarded(tmp_path: Path) -> tuple[Guard, web.Application, str]:
    registry_path = tmp_path / "institutions.yaml"
    registry_path.write_bytes(DEMO.read_bytes())
    token = issue_token(registry_path, Registry.load(registry_path).ids[0])
    guard = new_guard(steward_hashes=[hash_token(STEWARD)], internal_hash=hash_token(INTERNAL))
    guard.registry = Registry.load(registry_path)
    app = web.Application(**web_application_options(guard))

    async def who(request: web.Request) -> web.Response:
        caller = request.get(CALLER_KEY)
        return web.json_response({"kind": caller.kind if caller else "public"})

    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("patient=140105198001011234 should never be logged")

    async def deep(request: web.Request) -> web.Response:
        def nest(n: int) -> Any:
            return [nest(n - 1)] if n else []

        return web.json_response(nest(100_000))

    app.router.add_get("/healthz", who)
    app.router.add_get("/hospital", who)
    app.router.add_get("/stewards", who)
    app.router.add_get("/reads", who)
    app.router.add_get("/table/{name}/{key}", who)  # as a framework would, undeclared
    app.router.add_get("/boom", boom)
    app.router.add_get("/deep", deep)
    guard.allow("/hospital", "institution")
    guard.allow("/stewards", "steward")
    guard.allow("/reads", "steward", "internal")
    guard.allow("/boom", "public")
    guard.allow("/deep", "public")
    return guard, app, token


def _run(tmp_path: Path, body: Callable[[TestClient[Any, Any], str], Awaitable[None]]) -> None:
    _, app, token = _guarded(tmp_path)

    async def main() -> None:
        async with TestClient(TestServer(app)) as client:
            await body(client, token)

    asyncio.run(main())


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_routes_take_only_the_credentials_they_declare(tmp_path: Path) -> None:
    async def body(client: TestClient[Any, Any], hospital: str) -> None:
        cases = [
            ("/hospital", hospital, 200, "institution"),
            ("/hospital", STEWARD, 401, None),
            ("/hospital", INTERNAL, 401, None),
            ("/stewards", STEWARD, 200, "steward"),
            ("/stewards", hospital, 401, None),
            ("/stewards", INTERNAL, 401, None),
            ("/reads", INTERNAL, 200, "internal"),
            ("/reads", STEWARD, 200, "steward"),
            ("/reads", hospital, 401, None),
            ("/hospital", "mrh_forged", 401, None),
            ("/hospital", "x" * 2_000, 401, None),
        ]
        for path, token, status, kind in cases:
            resp = await client.get(path, headers=_bearer(token))
            assert resp.status == status, (path, token[:12])
            doc = await resp.json(content_type=None)
            if status == 200:
                assert doc == {"kind": kind}
            else:
                assert doc["resourceType"] == "OperationOutcome"
                assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        anonymous = await client.get("/hospital")
        assert anonymous.status == 401
        assert (await client.get("/healthz")).status == 200

    _run(tmp_path, body)


def test_a_route_nobody_declared_answers_404_to_everyone(tmp_path: Path) -> None:
    async def body(client: TestClient[Any, Any], hospital: str) -> None:
        for token in (None, hospital, STEWARD, INTERNAL):
            headers = _bearer(token) if token else {}
            resp = await client.get("/table/results/MP0", headers=headers)
            assert resp.status == 404
            assert (await resp.json(content_type=None))["resourceType"] == "OperationOutcome"
        missing = await client.get("/no/such/path")
        assert missing.status == 404
        wrong_method = await client.post("/healthz")
        assert wrong_method.status == 405 and "GET" in wrong_method.headers["Allow"]

    _run(tmp_path, body)


def test_an_unexpected_error_is_a_500_outcome_and_deep_recursion_a_400(tmp_path: Path) -> None:
    async def body(client: TestClient[Any, Any], hospital: str) -> None:
        boom = await client.get("/boom")
        assert boom.status == 500
        text = await boom.text()
        assert "OperationOutcome" in text and "140105" not in text
        deep = await client.get("/deep")
        assert deep.status == 400

    _run(tmp_path, body)


def test_declaring_a_route_needs_a_known_credential_kind() -> None:
    guard = Guard()
    for bad in ((), ("admin",)):
        try:
            guard.allow("/x", *bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad} was accepted")
