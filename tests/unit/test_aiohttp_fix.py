"""The one patch of aiohttp (services.common.faust_fixes.apply_aiohttp): protocol errors are
answered as OperationOutcomes that quote nothing of the request."""

from __future__ import annotations

import asyncio
import hashlib
import inspect

import aiohttp
import pytest
from aiohttp import web, web_protocol

from services.common import faust_fixes
from tests.fhir_samples import gb11643

#: sha256 of ``RequestHandler.handle_error``'s source as the patch was written against it
#: (aiohttp 3.14.5). When this fails, read the new source, check the patch still fits, and
#: update the hash.
HANDLE_ERROR_SHA256 = "94962ffef500c17222910ffeb4dc46ab273ed0bce8622472138f316d4a5cb1f6"


def test_upstream_handle_error_is_the_one_the_patch_was_written_for() -> None:
    faust_fixes.apply_aiohttp()
    original = inspect.getclosurevars(web_protocol.RequestHandler.handle_error).nonlocals[
        "original"
    ]
    source = inspect.getsource(original)
    assert hashlib.sha256(source.encode()).hexdigest() == HANDLE_ERROR_SHA256, (
        "aiohttp's RequestHandler.handle_error changed. Re-check: does it still answer a "
        "protocol error below 500 with the message it is given (quoting the request), "
        "log it and close the connection, and take (request, status, exc, message)? Then "
        "update HANDLE_ERROR_SHA256 (decision 0006)."
    )


def test_the_tested_aiohttp_is_installed() -> None:
    assert aiohttp.__version__ == faust_fixes.AIOHTTP_TESTED_VERSIONS["aiohttp"]
    faust_fixes.require_tested_versions(faust_fixes.AIOHTTP_TESTED_VERSIONS)


def test_apply_aiohttp_refuses_another_release(monkeypatch: pytest.MonkeyPatch) -> None:
    real = faust_fixes.installed_version
    monkeypatch.setattr(
        faust_fixes, "installed_version", lambda d: "3.15.0" if d == "aiohttp" else real(d)
    )
    monkeypatch.setattr(faust_fixes, "_aiohttp_applied", False)
    with pytest.raises(faust_fixes.UntestedVersionError, match=r"aiohttp 3\.14\.5.*3\.15\.0"):
        faust_fixes.apply_aiohttp()
    assert faust_fixes._aiohttp_applied is False


def test_an_over_long_request_line_is_an_operation_outcome_that_quotes_nothing() -> None:
    faust_fixes.apply_aiohttp()
    card = gb11643("14010519800101123")

    async def run() -> tuple[bytes, bytes]:
        app = web.Application(handler_args={"max_line_size": 8190})
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            line = f"GET /recognition/check?patient={card}&pad={'9' * 9000} HTTP/1.1\r\n"
            writer.write(line.encode() + b"Host: x\r\n\r\n")
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(), timeout=30)
            writer.close()
        finally:
            await runner.cleanup()
        head, _, body = answer.partition(b"\r\n\r\n")
        return head, body

    head, body = asyncio.run(run())
    assert b"application/fhir+json" in head
    assert b'"resourceType":"OperationOutcome"' in body
    assert card.encode() not in head + body
