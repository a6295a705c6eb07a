"""Whatever a library logs, no 身份证 or mobile number reaches a log line, and a client that
goes away is one line, not a traceback."""

from __future__ import annotations

import io
import json
import logging

import pytest

from services.common.logging import (
    ConsoleFormatter,
    JsonFormatter,
    QuietDisconnects,
    redact_personal,
)
from tests.fhir_samples import gb11643

CARD = gb11643("14010519800101123")


def _emit(
    formatter: logging.Formatter, msg: str, *args: object, exc: BaseException | None = None
) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(QuietDisconnects())
    logger = logging.getLogger(f"test.privacy.{id(formatter)}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    if exc is not None:
        try:
            raise exc
        except BaseException:
            logger.exception(msg, *args)
    else:
        logger.error(msg, *args, extra={"query": f"patient={CARD}"})
    return stream.getvalue()


@pytest.mark.parametrize("formatter", [JsonFormatter(), ConsoleFormatter()])
def test_a_request_line_quoted_by_a_library_loses_its_id_number(
    formatter: logging.Formatter,
) -> None:
    line = _emit(
        formatter,
        "Error handling request: %s",
        f"GET /recognition/check?patient=urn%3Aoid%3A2.16.156.10011.1.3%7C{CARD}&code=x HTTP/1.1",
    )
    assert CARD not in line and CARD[:12] not in line
    assert "/recognition/check" in line  # the rest of the message stays readable


def test_mobile_numbers_and_old_15_digit_numbers_are_masked() -> None:
    text = redact_personal(
        "call 13812345678 or id 140105800101123 at offset 12345 ts 1733380000123"
    )
    assert "13812345678" not in text and "140105800101123" not in text
    # offsets and millisecond timestamps are not personal data and stay
    assert "offset 12345" in text and "1733380000123" in text


def test_a_disconnect_is_one_line() -> None:
    out = _emit(JsonFormatter(), "Error handling request", exc=ConnectionResetError("peer gone"))
    assert len(out.strip().splitlines()) == 1
    doc = json.loads(out)
    assert "exc" not in doc and doc["disconnect"] == "ConnectionResetError"


def test_other_errors_keep_their_traceback() -> None:
    out = _emit(JsonFormatter(), "boom", exc=ValueError("bad"))
    assert "Traceback" in json.loads(out)["exc"]
