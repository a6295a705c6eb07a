"""The console's aiohttp application: sessions, CSRF, security headers, sign-in, the page
frame; the pages themselves are in :mod:`steward`, :mod:`figures` and :mod:`ops`.

Every path needs a signed-in person except ``/login``, ``/static/…`` and the probes
(``/healthz``, ``/readyz``, ``/metrics``), which carry nothing about a patient or a
hospital. Pages that show a patient are never cached (``Cache-Control: no-store``); no page
takes an identifier in its URL (forms post them; master patient ids travel in hidden fields
as well, so no id reaches an access log or a browser history either).
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp_jinja2
import httpx
import jinja2
from aiohttp import web
from aiohttp_session import get_session
from aiohttp_session import setup as setup_sessions
from aiohttp_session.cookie_storage import EncryptedCookieStorage
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter

from services.common.errors import ConfigError
from services.common.institutions import Registry, ReloadingRegistry
from services.common.metrics import build_info, exposition, new_registry
from services.common.settings import Settings
from services.common.upstreams import Upstreams
from services.console import auth
from services.console.audit import AuditLog
from services.console.auth import ROLE_NAMES, User, Users, current_user

__all__ = ["CONSOLE", "Console", "create_app", "render", "render_error"]

log = logging.getLogger(__name__)

HERE = Path(__file__).parent


@dataclass
class Console:
    """What every page needs, kept on the application under :data:`CONSOLE`."""

    settings: Settings
    users: Users
    registry: Registry | ReloadingRegistry
    http: httpx.AsyncClient
    audit: AuditLog
    metrics: CollectorRegistry
    requests: Counter
    sessions: auth.LiveSessions
    #: the patient index's workers (``MRHUB_PATIENT_INDEX__URL``), None when none is set
    patient_index: Upstreams | None
    extra: dict[str, Any] = field(default_factory=dict)  # pages' own helpers (figures cache …)

    def steward_headers(self, user: User) -> dict[str, str]:
        """Headers for the patient index's steward API on behalf of ``user``."""
        token = self.settings.console.steward_token
        if token is None:
            raise ConfigError("MRHUB_CONSOLE__STEWARD_TOKEN is not set")
        return {"Authorization": f"Bearer {token.get_secret_value()}", "X-Steward": user.name}


CONSOLE = web.AppKey("console", Console)

#: Paths open without signing in (nothing on them names a patient or a hospital's figures).
PUBLIC = ("/login", "/static/", "/healthz", "/readyz", "/metrics")

_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)


def _is_public(path: str) -> bool:
    return any(path == p or (p.endswith("/") and path.startswith(p)) for p in PUBLIC)


@web.middleware
async def _headers(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    started = time.perf_counter()
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        response = exc
        raise
    finally:
        ctx = request.app[CONSOLE]
        status = getattr(locals().get("response"), "status", 500)
        route = request.match_info.route.resource
        name = route.canonical if route is not None else "unmatched"
        ctx.requests.labels(name, request.method, f"{str(status)[0]}xx").inc()
        log.info(
            "console request",
            extra={"route": name, "method": request.method, "status": status,
                   "ms": round((time.perf_counter() - started) * 1000, 1)},
        )  # fmt: skip
    response.headers.setdefault("Content-Security-Policy", _CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    if not request.path.startswith("/static/"):
        response.headers.setdefault("Cache-Control", "no-store")
    return response


@web.middleware
async def _signed_in(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    if not _is_public(request.path):
        user = await current_user(request)
        if user is None:
            if request.method == "GET":
                raise web.HTTPSeeOther("/login")
            return await render_error(request, 401, "请先登录。")
        request["user"] = user
    return await handler(request)


async def render(
    request: web.Request, template: str, context: dict[str, Any], *, status: int = 200
) -> web.Response:
    """A page in the frame: the person, their role's menu and the CSRF token for its forms."""
    user = request.get("user") or await current_user(request)
    frame = {
        "user": user,
        "role_name": ROLE_NAMES.get(user.role, "") if user else "",
        "csrf_token": await auth.csrf_token(request) if user else "",
        "path": request.path,
    }
    response = aiohttp_jinja2.render_template(template, request, {**frame, **context})
    response.set_status(status)
    return response


async def render_error(request: web.Request, status: int, message: str) -> web.Response:
    return await render(
        request, "error.html", {"status": status, "message": message}, status=status
    )


# ----------------------------------------------------------------------------- pages


async def login_page(request: web.Request) -> web.StreamResponse:
    if await current_user(request) is not None:
        raise web.HTTPSeeOther("/")
    return await render(request, "login.html", {"error": None})


async def login_post(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONSOLE]
    form = await request.post()
    name = str(form.get("username") or "")[:100]
    password = str(form.get("password") or "")[:1000]
    limiter: _Attempts = ctx.extra["attempts"]
    if limiter.blocked(name, request.remote or ""):
        return await render(
            request, "login.html", {"error": "尝试次数过多，请 5 分钟后再试。"}, status=429
        )
    user = ctx.users.authenticate(name, password)
    if user is None:
        limiter.failed(name, request.remote or "")
        ctx.extra["logins"].labels("refused").inc()
        return await render(request, "login.html", {"error": "用户名或密码不正确。"}, status=401)
    limiter.cleared(name, request.remote or "")
    ctx.extra["logins"].labels("signed-in").inc()
    await auth.sign_in(request, user)
    raise web.HTTPSeeOther("/")


async def logout(request: web.Request) -> web.StreamResponse:
    await auth.sign_out(request)
    raise web.HTTPSeeOther("/login")


async def home(request: web.Request) -> web.StreamResponse:
    user: User = request["user"]
    first = {"steward": "/reviews", "region": "/figures", "hospital": "/figures"}[user.role]
    raise web.HTTPSeeOther(first)


async def healthz(request: web.Request) -> web.StreamResponse:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONSOLE]
    problems = []
    if not len(ctx.users):
        problems.append("no users")
    if ctx.settings.console.steward_token is None:
        problems.append("no steward token")
    if not ctx.audit.ready:
        problems.append("audit producer not started")
    status = 503 if problems else 200
    return web.json_response({"status": "not-ready" if problems else "ok", "problems": problems},
                             status=status)  # fmt: skip


async def metrics(request: web.Request) -> web.StreamResponse:
    body = exposition(request.app[CONSOLE].metrics)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


class _Attempts:
    """Failed sign-ins: after 10 in 5 minutes for one name, or 100 from one address, wait.
    The address is the peer's: behind a TLS proxy every person shares the proxy's, so its
    limit is high enough that a guesser slows only the name they guess."""

    LIMIT = 10
    ADDRESS_LIMIT = 100
    WINDOW_S = 300.0

    def __init__(self) -> None:
        self._seen: dict[str, list[float]] = {}

    def _recent(self, key: str) -> list[float]:
        now = time.monotonic()
        kept = [t for t in self._seen.get(key, []) if now - t < self.WINDOW_S]
        if kept:
            self._seen[key] = kept
        else:
            self._seen.pop(key, None)
        return kept

    def blocked(self, name: str, remote: str) -> bool:
        return (
            len(self._recent(f"n:{name}")) >= self.LIMIT
            or len(self._recent(f"r:{remote}")) >= self.ADDRESS_LIMIT
        )

    def failed(self, name: str, remote: str) -> None:
        if len(self._seen) > 100_000:  # bounded: forget the oldest keys
            for key in list(self._seen)[:50_000]:
                del self._seen[key]
        for key in (f"n:{name}", f"r:{remote}"):
            self._seen.setdefault(key, []).append(time.monotonic())

    def cleared(self, name: str, remote: str) -> None:
        self._seen.pop(f"n:{name}", None)


def _session_key(settings: Settings) -> bytes:
    key = settings.console.session_key
    if key is None:
        raise ConfigError(
            "MRHUB_CONSOLE__SESSION_KEY is not set (`mrhub console new-key` makes one)"
        )
    try:
        raw = base64.urlsafe_b64decode(key.get_secret_value())
    except ValueError as exc:
        raise ConfigError("MRHUB_CONSOLE__SESSION_KEY is not url-safe base64") from exc
    if len(raw) != 32:
        raise ConfigError("MRHUB_CONSOLE__SESSION_KEY must be 32 bytes of url-safe base64")
    return raw


def create_app(settings: Settings) -> web.Application:
    from services.console import figures, ops, steward

    app = web.Application(client_max_size=64 * 1024)
    cfg = settings.console
    setup_sessions(
        app,
        EncryptedCookieStorage(
            _session_key(settings),
            cookie_name="mrhub_console",
            max_age=cfg.session_max_age_s,
            httponly=True,
            secure=cfg.secure_cookies,
            samesite="Strict",
            path="/",
        ),
    )
    app.middlewares.extend([_headers, _signed_in, auth.csrf_middleware])
    aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=jinja2.select_autoescape(default=True),
        undefined=jinja2.StrictUndefined,
    )
    app[aiohttp_jinja2.static_root_key] = "/static"
    registry = new_registry()
    build_info(registry, "console")
    ctx = Console(
        settings=settings,
        users=Users(cfg.users_path),
        registry=ReloadingRegistry(settings.institutions_path),
        http=httpx.AsyncClient(timeout=cfg.request_timeout_s),
        audit=AuditLog(settings),
        metrics=registry,
        sessions=auth.LiveSessions(cfg.session_max_age_s),
        patient_index=(
            Upstreams(settings.patient_index.url) if settings.patient_index.url.strip() else None
        ),
        requests=Counter(
            "mrhub_console_requests_total",
            "Console requests by route, method and status class.",
            ["route", "method", "status_class"],
            registry=registry,
        ),
    )
    ctx.extra["attempts"] = _Attempts()
    ctx.extra["logins"] = Counter(
        "mrhub_console_sign_ins_total",
        "Sign-in attempts by outcome (signed-in, refused).",
        ["outcome"],
        registry=registry,
    )
    app[CONSOLE] = ctx

    async def _lifecycle(app: web.Application) -> Any:
        await ctx.audit.start()
        yield
        await ctx.audit.stop()
        await ctx.http.aclose()

    app.cleanup_ctx.append(_lifecycle)
    app.router.add_get("/login", login_page)
    app.router.add_post("/login", login_post)
    app.router.add_post("/logout", logout)
    app.router.add_get("/", home)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_static("/static/", HERE / "static", append_version=True)
    for module in (steward, figures, ops):
        module.setup(app)
    return app


async def session_of(request: web.Request) -> Any:
    return await get_session(request)
