"""One authenticated surface for every streaming worker's HTTP port.

faust serves each worker's pages with aiohttp and registers routes of its own (``/table/…``
views of every table, ``/router/…``, an index page at ``/``, statistics). The hub switches
those blueprints off (:data:`FAUST_WEB_SETTINGS`) and, behind that, puts :class:`Guard` in
front of the aiohttp application as a middleware that **denies by default**:

- a route answers only if a service declared it with :func:`page` (or :meth:`Guard.allow`),
  together with the credentials it takes; a route nobody declared — one faust or a plugin
  registered by itself, or one added later and forgotten — answers 404 to everyone;
- a declared route checks the bearer token before the view runs: ``institution`` (a
  hospital's token, looked up in the reloading institution registry), ``steward`` (a data
  steward's, ``MRHUB_PATIENT_INDEX__STEWARD_TOKEN_HASHES``), ``internal`` (the services'
  own token derived from the HMAC key, :func:`services.common.patient_lookup.internal_token`)
  or ``public`` (only ``/healthz``, ``/readyz`` and ``/metrics``); ``cds`` (the CDS Hooks
  routes) also takes a CDS client's signed JWT, checked by :attr:`Guard.jwt_auth`
  (:mod:`services.common.cds_auth`): the caller is then the institution that registered the
  client;
- whatever goes wrong is a FHIR ``OperationOutcome``: 401 with ``WWW-Authenticate``, 404,
  405 with ``Allow``, 413, and 500 for an unexpected error (logged as one line with the
  route, never the request's query or body); a client that goes away is one log line.

The views keep their own checks (which institution is calling decides what it may see);
the guard makes sure no route is reached without a credential it accepts.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from aiohttp import web

from services.common import codec
from services.common.cds_auth import JwtRefused, looks_like_jwt
from services.common.fhir import FHIR_JSON, Issue, IssueCode, operation_outcome
from services.common.institutions import Institution, Registry, hash_token

log = logging.getLogger(__name__)

Access = Literal["public", "institution", "steward", "internal", "cds"]
ACCESS_KINDS: Final[frozenset[str]] = frozenset(
    {"public", "institution", "steward", "internal", "cds"}
)
#: The longest hub bearer token looked up (a CDS JWT is checked apart, up to its own limit).
MAX_TOKEN_CHARS: Final = 512

#: The routes every worker serves without a credential (docs/security.md: keep the worker
#: ports on the hub's private network all the same — /metrics shows volumes).
PUBLIC_PATHS: Final = ("/healthz", "/readyz", "/metrics")

#: faust's own web pages, all off: table contents, routing, statistics, the graph.
FAUST_WEB_SETTINGS: Final[dict[str, Any]] = {
    "web_tables_enabled": False,
    "web_router_enabled": False,
    "web_stats_enabled": False,
    "web_graph_enabled": False,
    "web_metrics_enabled": False,
}

#: The largest body a worker's API reads (its requests are commands and searches, not data:
#: data enters through the gateway, whose limit is ``MRHUB_INGEST__MAX_BODY_BYTES``).
WORKER_MAX_BODY_BYTES: Final = 1024 * 1024
#: aiohttp's request-line and header-field limits on the worker ports (a long request line
#: is refused with 414 before any view sees it).
MAX_LINE_BYTES: Final = 8190
MAX_FIELD_BYTES: Final = 8190

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: Checks a CDS client's JWT for a request: the institution, or :class:`JwtRefused`.
JwtAuth = Callable[[web.Request, str], Institution]


@dataclass(frozen=True, slots=True)
class Caller:
    """Who presented the request's credential."""

    kind: Access
    institution: Institution | None = None


CALLER_KEY: Final = web.RequestKey("mrhub_caller", Caller)


def outcome(
    status: int,
    code: IssueCode,
    message: str,
    reason: str,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """A one-issue OperationOutcome answer."""
    doc = operation_outcome([Issue("error", code, message, (), reason)])
    return web.Response(
        body=codec.dumps(doc),
        status=status,
        content_type=FHIR_JSON,
        headers=headers,
    )


def _unauthorised(message: str) -> web.Response:
    return outcome(
        401, "login", message, "unauthenticated", {"WWW-Authenticate": 'Bearer realm="mrhub"'}
    )


@dataclass
class Guard:
    """The route policy and the credentials of one worker's HTTP server."""

    registry: Registry | None = None
    steward_hashes: frozenset[str] = frozenset()
    internal_hash: str | None = None
    routes: dict[str, frozenset[str]] = field(default_factory=dict)
    #: set by the service that serves ``cds`` routes (the recognition worker)
    jwt_auth: JwtAuth | None = None

    def allow(self, path: str, *access: Access) -> None:
        """Declare ``path`` (the aiohttp route pattern, e.g. ``/reviews/{review_id}/$confirm``)
        and the credentials it takes."""
        if not access:
            raise ValueError(f"{path}: name the credentials the route takes")
        unknown = set(access) - ACCESS_KINDS
        if unknown:
            raise ValueError(f"{path}: unknown access kinds {sorted(unknown)}")
        self.routes[path] = frozenset(access)

    def identify(self, request: web.Request) -> Caller | None:
        """The caller the request's bearer token names, or None."""
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN_CHARS:
            return None
        hashed = hash_token(token)
        if self.internal_hash is not None and hmac.compare_digest(hashed, self.internal_hash):
            return Caller("internal")
        if hashed in self.steward_hashes:
            return Caller("steward")
        if self.registry is not None:
            inst = self.registry.authenticate(token)
            if inst is not None:
                return Caller("institution", inst)
        return None

    def _jwt_caller(self, request: web.Request) -> Caller | web.Response | None:
        """The institution whose CDS client signed the request's JWT; a 401 saying why a
        JWT is refused; ``None`` when the token is no JWT."""
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        if self.jwt_auth is None or scheme.lower() != "bearer" or not looks_like_jwt(token):
            return None
        try:
            return Caller("institution", self.jwt_auth(request, token))
        except JwtRefused as refused:
            return _unauthorised(f"CDS client JWT refused: {refused}")

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        resource = request.match_info.route.resource
        pattern = resource.canonical if resource is not None else None
        try:
            if pattern is None:
                return _http_error(request.match_info.http_exception)
            allowed = self.routes.get(pattern)
            if allowed is None:  # registered by a framework, never declared: not ours
                return outcome(404, "not-found", "no such endpoint", "unknown-endpoint")
            if "public" not in allowed:
                caller = self.identify(request)
                if caller is None and "cds" in allowed:
                    jwt_caller = self._jwt_caller(request)
                    if isinstance(jwt_caller, web.Response):
                        return jwt_caller
                    caller = jwt_caller
                    if caller is not None:
                        request[CALLER_KEY] = caller
                        return await handler(request)
                if caller is None or caller.kind not in allowed:
                    kinds = " or ".join(sorted(allowed))
                    return _unauthorised(f"this route needs a bearer token ({kinds})")
                request[CALLER_KEY] = caller
            return await handler(request)
        except web.HTTPException as exc:
            return _http_error(exc)
        except RecursionError:  # a view parsed deeply nested input without a bound
            return outcome(400, "structure", "the input nests too deeply", "invalid-parameter")
        except (ConnectionResetError, asyncio.CancelledError):
            log.info("client went away", extra={"route": pattern or "unmatched"})
            raise
        except Exception as exc:
            log.error(
                "unhandled error",
                extra={
                    "route": pattern or "unmatched",
                    "error": type(exc).__name__,
                    "elapsed_s": round(time.perf_counter() - started, 3),
                },
            )
            return outcome(500, "exception", "unexpected error", "internal")


def _http_error(exc: web.HTTPException | None) -> web.Response:
    if exc is None or exc.status == 404:
        return outcome(404, "not-found", "no such endpoint", "unknown-endpoint")
    if exc.status == 405:
        allowed = ", ".join(sorted(getattr(exc, "allowed_methods", set())))
        return outcome(
            405,
            "not-supported",
            f"method not allowed here; allowed: {allowed or 'none'}",
            "method-not-allowed",
            {"Allow": allowed},
        )
    if exc.status == 413:
        return outcome(
            413,
            "too-costly",
            f"the body is over the limit of {WORKER_MAX_BODY_BYTES} bytes",
            "too-large",
        )
    if exc.status < 500:
        return outcome(exc.status, "processing", exc.reason, "invalid-parameter")
    return outcome(exc.status, "exception", exc.reason, "internal")


_GUARDS: weakref.WeakKeyDictionary[Any, Guard] = weakref.WeakKeyDictionary()


def new_guard(*, steward_hashes: Iterable[str], internal_hash: str | None) -> Guard:
    """A guard with the public pages declared (``make_app`` makes one per app)."""
    guard = Guard(steward_hashes=frozenset(steward_hashes), internal_hash=internal_hash)
    for path in PUBLIC_PATHS:
        guard.allow(path, "public")
    return guard


def adopt_guard(app: Any, guard: Guard) -> None:
    """``guard`` (made before the app, for its web options) belongs to ``app``."""
    _GUARDS[app] = guard


def guard_for(app: Any) -> Guard:
    """The guard ``make_app`` put in front of ``app``'s web server."""
    guard = _GUARDS.get(app)
    if guard is None:
        raise RuntimeError("this faust app was not made by services.common.faust_app.make_app")
    return guard


def web_application_options(guard: Guard) -> dict[str, Any]:
    """faust's ``web_application_options``: the guard, the body limit, header limits."""
    return {
        "middlewares": [guard.middleware],
        "client_max_size": WORKER_MAX_BODY_BYTES,
        "handler_args": {"max_line_size": MAX_LINE_BYTES, "max_field_size": MAX_FIELD_BYTES},
    }


def page(app: Any, path: str, *access: Access) -> Callable[[type], type]:
    """Register a faust ``View`` at ``path`` and declare which credentials it takes — the one
    way a worker adds a route::

        page(app, "/recognition/check", "institution")(CheckView)
    """
    guard_for(app).allow(path, *access)

    def register(view: type) -> type:
        app.page(path)(view)
        return view

    return register
