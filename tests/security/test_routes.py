"""The route walk: every route every service registers — its own, and whatever faust or aiohttp
registered by themselves — is asked without a credential, with a forged one and with a
credential of the wrong kind, on the running hub. Only the documented public routes may
answer; a route added later without a declared credential fails this test.

The routes are read from the applications themselves (built in this process exactly as the
services build them), so the walk cannot miss one that the code registers.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.common.patient_lookup import internal_token
from services.common.settings import Settings
from tests.conftest import REPO
from tests.security.conftest import STEWARD_TOKEN, SecurityHub

#: docs/security.md: the only routes that answer without a credential.
PUBLIC = {
    "ingest": {"/fhir/metadata", "/healthz", "/readyz", "/metrics"},
    "patient_index": {"/healthz", "/readyz", "/metrics"},
    "recognition": {"/healthz", "/readyz", "/metrics"},
    "imaging": {"/healthz", "/readyz", "/metrics"},
}
#: routes that take a data steward's token (patient index) or the services' internal one
STEWARD_ROUTES = re.compile(r"^/(patients|reviews|internal|fhir/Patient)")
INTERNAL_READS = {
    "/internal/resolve",
    "/internal/identities/{key}",
    "/internal/blocks/{key}",
    "/patients/{master_patient_id}",
}


def _settings(hub: SecurityHub) -> Settings:
    env = hub.env("walk")
    return Settings.model_validate(
        {
            "kafka": {"bootstrap_servers": hub.bootstrap},
            "identity": {"hmac_key": env["MRHUB_IDENTITY__HMAC_KEY"]},
            "state_dir": str(hub.tmp / "walk-state"),
            "institutions_path": str(hub.registry),
            "patient_index": {
                "rules_path": str(REPO / "config" / "matching" / "rules-v2.yaml"),
            },
        }
    )


def registered_routes(service: str, settings: Settings) -> list[tuple[str, str]]:
    """(method, route pattern) of every route ``service``'s web application registers."""
    router: Any
    if service == "ingest":
        from services.common.institutions import Registry
        from services.ingest.app import build_app

        app = build_app(
            Registry.load(settings.institutions_path),
            bootstrap=settings.kafka.bootstrap_servers or "",
            hmac_key=b"walk",
            max_body_bytes=settings.ingest.max_body_bytes,
        )
        router = app.router
    else:
        if service == "patient_index":
            from services.patient_index.app import create_app
        elif service == "recognition":
            from services.recognition.app import create_app
        else:
            from services.imaging_index.app import create_app
        faust_app = create_app(settings)
        web: Any = faust_app.web
        web.init_server()
        router = web.web_app.router
    found = []
    for route in router.routes():
        resource = route.resource
        if resource is None:
            continue
        found.append((route.method, resource.canonical))
    assert found, f"{service}: no routes found"
    return sorted(set(found))


def _concrete(pattern: str) -> str:
    """A path that matches the route pattern (every ``{variable}`` filled in)."""
    return re.sub(r"\{[^}]+\}", "x1", pattern)


def _ask(hub: SecurityHub, service: str, method: str, path: str, token: str | None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    if method in ("POST", "PUT", "PATCH"):
        headers["Content-Type"] = "application/json"
    return httpx.request(
        method if method != "*" else "GET",
        f"{hub.url(service)}{path}",
        headers=headers,
        content=b"{}" if method in ("POST", "PUT", "PATCH") else None,
        timeout=30,
    )


@pytest.fixture(scope="module")
def walk(security_hub: SecurityHub) -> dict[str, list[tuple[str, str]]]:
    settings = _settings(security_hub)
    return {svc: registered_routes(svc, settings) for svc in PUBLIC}


def test_the_walk_finds_every_service_s_own_routes(walk: dict[str, list[tuple[str, str]]]) -> None:
    """The walk reads real routers: each service's documented API is among what it found."""
    paths = {svc: {p for _, p in routes} for svc, routes in walk.items()}
    assert {"/fhir", "/fhir/{type}", "/fhir/$import", "/fhir/metadata"} <= paths["ingest"]
    assert {"/recognition/check", "/recognition/feedback"} <= paths["recognition"]
    assert {"/fhir/ImagingStudy", "/dicom-web/studies"} <= paths["imaging"]
    assert {"/patients/$merge", "/internal/resolve", "/reviews"} <= paths["patient_index"]


@pytest.mark.parametrize("service", sorted(PUBLIC))
def test_no_undocumented_route_answers_without_a_credential(
    security_hub: SecurityHub, walk: dict[str, list[tuple[str, str]]], service: str
) -> None:
    walked = []
    for method, pattern in walk[service]:
        if pattern in PUBLIC[service]:
            continue
        path = _concrete(pattern)
        for token in (None, "mrh_forged-token-that-nobody-was-issued"):
            resp = _ask(security_hub, service, method, path, token)
            walked.append((method, pattern, token is not None, resp.status_code))
            assert resp.status_code in (401, 404), (method, pattern, resp.status_code, resp.text)
            if method != "HEAD":  # a HEAD answer has no body
                assert resp.json()["resourceType"] == "OperationOutcome", resp.text
            if resp.status_code == 401:
                assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert walked, f"{service}: nothing to walk"


@pytest.mark.parametrize("service", ["patient_index", "recognition", "imaging"])
def test_a_credential_of_the_wrong_kind_opens_nothing(
    security_hub: SecurityHub, walk: dict[str, list[tuple[str, str]]], service: str
) -> None:
    """A hospital's token never opens a steward's or an internal route; a steward's or the
    services' token never reads as a hospital."""
    hospital = security_hub.tokens[next(iter(security_hub.tokens))]
    settings = _settings(security_hub)
    internal = internal_token(settings)
    for method, pattern in walk[service]:
        if pattern in PUBLIC[service]:
            continue
        path = _concrete(pattern)
        if STEWARD_ROUTES.match(pattern):
            wrong = [hospital] + ([] if pattern in INTERNAL_READS else [internal])
        else:
            wrong = [STEWARD_TOKEN, internal]
        for token in wrong:
            resp = _ask(security_hub, service, method, path, token)
            assert resp.status_code in (401, 404), (method, pattern, resp.status_code, resp.text)


@pytest.mark.parametrize(
    "path",
    ["/table/results/x1", "/table/orders/", "/router/", "/", "/stats/", "/graph/", "/signal/"],
)
@pytest.mark.parametrize("service", ["patient_index", "recognition", "imaging"])
def test_faust_s_own_pages_are_gone(security_hub: SecurityHub, service: str, path: str) -> None:
    """faust's table views served a patient's results to anyone; now nothing answers there,
    whatever the credential."""
    for token in (None, security_hub.tokens[next(iter(security_hub.tokens))], STEWARD_TOKEN):
        resp = _ask(security_hub, service, "GET", path, token)
        assert resp.status_code == 404, (service, path, resp.status_code, resp.text)
        assert "value" not in resp.text and "g/L" not in resp.text


@pytest.mark.parametrize("service", sorted(PUBLIC))
def test_the_public_routes_answer_without_a_credential(
    security_hub: SecurityHub, service: str
) -> None:
    for path in sorted(PUBLIC[service]):
        resp = httpx.get(f"{security_hub.url(service)}{path}", timeout=30)
        assert resp.status_code == 200, (service, path, resp.text)


def test_docs_security_names_every_public_route() -> None:
    text = (Path(REPO) / "docs" / "security.md").read_text(encoding="utf-8")
    for paths in PUBLIC.values():
        for path in paths:
            assert f"`{path}`" in text, path
