"""Serve the gateway with a deadline on every request's line and headers.

aiohttp bounds the *size* of a request's line and headers (``max_line_size``,
``max_field_size``, ``max_headers``: the gateway passes them from its settings) and closes a
connection that stays idle for ``keepalive_timeout``, but it has no deadline for a request
whose line and headers trickle in a byte at a time: a slow-loris client holds the connection
as long as it likes. This module closes that gap with public API only:

- :class:`HeaderDeadline` is an asyncio protocol that wraps aiohttp's own (the documented
  protocol factory ``runner.server``) and forwards every call to it unchanged. It starts a
  timer when a connection opens and when the first byte of a next request arrives; the
  gateway's middleware tells it (through ``request.transport.get_protocol()``) when aiohttp
  has parsed a request's headers and when the handler is done. A timer that fires before
  the headers are complete answers ``408`` and closes the connection.
- :func:`serve` runs the application with an :class:`aiohttp.web.AppRunner` and a listening
  socket of its own (``loop.create_server``, ``SO_REUSEPORT``) whose connections are wrapped
  so, and stops on SIGTERM / SIGINT the way ``web.run_app`` does.

The body has its own deadline in the handlers (``MRHUB_INGEST__BODY_TIMEOUT_S``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)

#: What a client whose headers were too slow receives before the connection closes.
_TIMEOUT_BODY = (
    b'{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"timeout",'
    b'"details":{"coding":[{"system":"https://fhir.mrhub.cn/CodeSystem/issue-reason",'
    b'"code":"timeout"}]},"diagnostics":"the request line and headers did not arrive in '
    b'time; the connection is closed"}]}'
)
_TIMEOUT_ANSWER = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"Content-Type: application/fhir+json; charset=utf-8\r\n"
    b"Connection: close\r\n"
    b"Content-Length: " + str(len(_TIMEOUT_BODY)).encode() + b"\r\n\r\n" + _TIMEOUT_BODY
)


class HeaderDeadline(asyncio.Protocol):
    """aiohttp's protocol for one connection, with a deadline on each request's headers.

    Between requests (from the connection's opening, or from the first byte after a
    request was handled) the line and headers of the next request must be complete within
    ``timeout_s``; while a request is being handled there is no header deadline.
    """

    def __init__(
        self,
        inner: asyncio.Protocol,
        timeout_s: float,
        on_timeout: Callable[[], None] | None = None,
    ) -> None:
        self._inner = inner
        self._timeout_s = timeout_s
        self._on_timeout = on_timeout
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._in_request = False

    # -- asyncio.Protocol, forwarded ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport if isinstance(transport, asyncio.Transport) else None
        self._inner.connection_made(transport)
        self._arm()  # the first request's line and headers

    def data_received(self, data: bytes) -> None:
        if data and not self._in_request and self._timer is None:
            self._arm()  # the first byte of a next request
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._transport = None
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    # -- told by the gateway's middleware -------------------------------------------------

    def request_started(self) -> None:
        """aiohttp has the request's line and headers: no header deadline while it runs."""
        self._in_request = True
        self._disarm()

    def request_finished(self) -> None:
        """The handler is done; the next request's deadline starts at its first byte."""
        self._in_request = False

    # -- the timer --------------------------------------------------------------------

    def _arm(self) -> None:
        self._disarm()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._timeout_s, self._expire)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        transport = self._transport
        if self._in_request or transport is None or transport.is_closing():
            return
        log.info("request headers too slow; answered 408 and closed the connection")
        if self._on_timeout is not None:
            self._on_timeout()
        if transport.get_write_buffer_size() == 0:  # no answer of ours is half-written
            with contextlib.suppress(Exception):
                transport.write(_TIMEOUT_ANSWER)
        transport.close()


async def serve(
    app: web.Application,
    *,
    host: str,
    port: int,
    header_timeout_s: float,
    on_header_timeout: Callable[[], None] | None = None,
    shutdown_timeout_s: float = 10.0,
    handler_args: dict[str, Any] | None = None,
) -> None:
    """Serve ``app`` on ``host:port`` (``SO_REUSEPORT``: several processes may share it)
    until SIGTERM or SIGINT; then stop accepting, finish or close the open connections
    within ``shutdown_timeout_s`` and run the application's clean-up."""
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        shutdown_timeout=shutdown_timeout_s,
        **(handler_args or {}),
    )
    await runner.setup()
    server = runner.server
    if server is None:  # setup() makes it; aiohttp types it optional
        raise RuntimeError("the aiohttp runner has no server after setup")
    loop = asyncio.get_running_loop()

    def connection() -> HeaderDeadline:
        return HeaderDeadline(server(), header_timeout_s, on_header_timeout)

    listener = await loop.create_server(connection, host, port, reuse_address=True, reuse_port=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        listener.close()
        await runner.cleanup()
