"""The gateway's read proxy: FHIR reads and searches, and CDS Hooks, served by recognition.

The hospitals' one FHIR base is the gateway's (``<base>/fhir``): they write there, and they
read there. Reads, searches and CDS Hooks calls are answered by the recognition service,
which owns the data (partitioned by master patient id); the gateway forwards exactly these
routes to ``MRHUB_RECOGNITION__URL`` (one worker's base URL, or a comma-separated list of
every worker's: :mod:`services.common.upstreams`):

- ``GET /fhir/{type}`` (search) and ``GET /fhir/{type}/{id}`` (read), ``POST
  /fhir/{type}/_search`` (search with the parameters in the body, so no 身份证 is in a URL),
  for :data:`READ_TYPES`;
- ``GET /cds-services``, ``POST /cds-services/{id}``, ``POST /cds-services/{id}/feedback``.

Method, path, query string, body, ``Content-Type``, ``Accept`` and the caller's
``Authorization`` go unchanged (recognition authenticates the caller: a hub token, or a CDS
client's JWT); the gateway adds :func:`services.common.forwarding.forwarded_headers` — the
public base and the internal token that vouches for it, which only the upstream ever sees —
and ``X-Trace-Id``. The gateway itself only refuses a call without an ``Authorization``
header (401), a body over :data:`MAX_BODY_BYTES` (413), and answers 503 when no recognition
worker can be reached, 504 when it does not answer in time — each an OperationOutcome. A
worker that refuses the connection or does not accept it in time is skipped for the next in
the list; a request that reached a worker is sent to another only when it is a read
(:data:`READS`), never a CDS Hooks feedback (a write), so nothing is done twice. Nothing
of a forwarded request (query, body, credential) is ever logged: a log line names the route
template and the error's class only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Final

import httpx
from aiohttp import web

from services.common.codec import dumps
from services.common.fhir import FHIR_JSON, Issue, IssueCode, operation_outcome
from services.common.upstreams import Upstreams

log = logging.getLogger(__name__)

# httpx logs every request's full URL at INFO ("HTTP Request: GET …?patient=…"): a search's
# query may hold a 身份证, so the client library's own loggers say only what goes wrong.
for _name in ("httpx", "httpcore"):
    logging.getLogger(_name).setLevel(logging.WARNING)

#: The resource types read and searched through the gateway.
READ_TYPES: Final = (
    "Observation",
    "DiagnosticReport",
    "ImagingStudy",
    "ServiceRequest",
    "DetectedIssue",
)
#: The largest body forwarded (a ``_search`` form, a CDS Hooks request with its prefetch).
MAX_BODY_BYTES: Final = 1024 * 1024
#: Request headers passed on as the caller sent them.
REQUEST_HEADERS: Final = (
    "Authorization",
    "Content-Type",
    "Accept",
    "Accept-Language",
    "Prefer",
    "If-None-Match",
    "If-Modified-Since",
)
#: Response headers passed back as recognition sent them.
RESPONSE_HEADERS: Final = (
    "Content-Type",
    "ETag",
    "Last-Modified",
    "Location",
    "Retry-After",
    "WWW-Authenticate",
    "Cache-Control",
    "Vary",
)
RETRY_AFTER_S: Final = 5
#: Failures of a request that reached a worker: moved to the next worker only for a read.
_AFTER_SENDING: Final = (httpx.ReadError, httpx.RemoteProtocolError, httpx.WriteError)


def is_read(method: str, path: str) -> bool:
    """Whether a forwarded request only reads (may be sent to a second worker): every GET,
    a ``_search`` and a CDS Hooks service call (``order-select``/``order-sign`` answer
    cards); not a CDS Hooks feedback, which records the clinician's choice."""
    if method in ("GET", "HEAD"):
        return True
    return method == "POST" and not path.rstrip("/").endswith("/feedback")


class Proxy:
    """One pooled :class:`httpx.AsyncClient` to recognition's workers, opened with the
    application; ``upstream`` is one base URL or a comma-separated list."""

    def __init__(
        self,
        upstream: str,
        headers: Mapping[str, str],
        *,
        timeout_s: float = 10.0,
        connect_timeout_s: float = 3.0,
        max_body_bytes: int = MAX_BODY_BYTES,
        max_connections: int = 100,
    ) -> None:
        self.upstreams = Upstreams(upstream)
        self._headers = dict(headers)
        self.timeout_s = timeout_s
        self.max_body_bytes = max_body_bytes
        self._timeout = httpx.Timeout(timeout_s, connect=min(connect_timeout_s, timeout_s))
        self._limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=min(20, max_connections)
        )
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self._timeout,
                limits=self._limits,
                follow_redirects=False,
                trust_env=False,  # never an HTTP(S)_PROXY from the environment
            )

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _client_or_start(self) -> httpx.AsyncClient:
        if self._client is None:  # an app run without its cleanup context (tests)
            self._client = httpx.AsyncClient(
                timeout=self._timeout, limits=self._limits, follow_redirects=False, trust_env=False
            )
        return self._client

    async def forward(self, request: web.Request, body: bytes, trace_id: str) -> web.Response:
        """Send ``request`` (with ``body``) to recognition and answer with what it says."""
        headers = {h: v for h in REQUEST_HEADERS if (v := request.headers.get(h)) is not None}
        headers.update(self._headers)  # never a caller's copy of the vouching headers
        headers["X-Trace-Id"] = trace_id
        raw_qs = request.rel_url.raw_query_string
        target = request.rel_url.raw_path + (f"?{raw_qs}" if raw_qs else "")
        client = self._client_or_start()
        resend = is_read(request.method, request.rel_url.path)
        failure: Exception = httpx.ConnectError("no worker tried")
        for base in self.upstreams.order():
            try:
                upstream = await client.request(
                    request.method,
                    base + target,
                    content=body if body or request.method != "GET" else None,
                    headers=headers,
                )
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                self.upstreams.failed(base)  # never reached it: the next worker may answer
                failure = exc
                continue
            except _AFTER_SENDING as exc:
                if not resend:
                    return _unreachable(request, exc)
                self.upstreams.failed(base)
                failure = exc
                continue
            except httpx.TimeoutException as exc:
                if isinstance(exc, httpx.PoolTimeout):
                    return _unreachable(request, exc)
                return _logged(
                    request,
                    exc,
                    "recognition did not answer in time; answered 504",
                    _outcome(
                        504,
                        "timeout",
                        "timeout",
                        f"the hub's read service did not answer within {self.timeout_s:g} s; "
                        "retry later",
                    ),
                )
            except httpx.TransportError as exc:
                return _unreachable(request, exc)
            self.upstreams.answered(base)
            break
        else:  # every worker refused, or failed a read
            return _unreachable(request, failure)
        out = {h: v for h in RESPONSE_HEADERS if (v := upstream.headers.get(h)) is not None}
        out["X-Trace-Id"] = trace_id
        return web.Response(body=upstream.content, status=upstream.status_code, headers=out)


def _route(request: web.Request) -> str:
    info = request.match_info.route.resource
    return info.canonical if info is not None else "unmatched"


def _outcome(
    status: int, code: IssueCode, reason: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    doc = operation_outcome([Issue("error", code, message, (), reason)])
    return web.Response(
        body=dumps(doc), status=status, content_type=FHIR_JSON, charset="utf-8", headers=headers
    )


def _logged(request: web.Request, exc: Exception, what: str, answer: web.Response) -> web.Response:
    """``answer``, once a line saying ``what`` (the route template and the error's class,
    nothing of the request) is logged."""
    log.warning(what, extra={"route": _route(request), "error": type(exc).__name__})
    return answer


def _unreachable(request: web.Request, exc: Exception) -> web.Response:
    return _logged(
        request,
        exc,
        "recognition unreachable; answered 503",
        _outcome(
            503,
            "transient",
            "not-ready",
            f"the hub's read service cannot be reached just now; retry after {RETRY_AFTER_S} s",
            {"Retry-After": str(RETRY_AFTER_S)},
        ),
    )


def unauthenticated() -> web.Response:
    """401: a read or CDS Hooks call must carry a credential (checked upstream)."""
    return _outcome(
        401,
        "login",
        "unauthenticated",
        "an Authorization header is required (Bearer <hub token>, or a CDS client's JWT)",
        {"WWW-Authenticate": 'Bearer realm="mrhub"'},
    )


def too_large(limit: int) -> web.Response:
    return _outcome(
        413,
        "too-costly",
        "too-large",
        f"the body is over the limit of {limit // 1024} KiB for a read or CDS Hooks call",
    )


def not_readable(shown: str) -> web.Response:
    return _outcome(
        404,
        "not-supported",
        "unknown-endpoint",
        f"{shown} is not read or searched here; these are: {', '.join(READ_TYPES)}",
    )


async def read_body(request: web.Request, limit: int, timeout_s: float) -> bytes | web.Response:
    """The request body, at most ``limit`` bytes (413 beyond), within ``timeout_s`` (408)."""
    declared = request.content_length
    if declared is not None and declared > limit:
        return too_large(limit)
    body = bytearray()
    try:
        async with asyncio.timeout(timeout_s):
            while chunk := await request.content.readany():
                body += chunk
                if len(body) > limit:
                    return too_large(limit)
    except TimeoutError:
        return _outcome(
            408, "timeout", "timeout", f"the request body did not arrive within {timeout_s:g} s"
        )
    return bytes(body)
