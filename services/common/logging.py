"""Structured logging: JSON lines in production, readable lines on a terminal.

Log ids and Kafka coordinates, never payloads, names or identity numbers; as a safety net
every line is passed through :func:`redact_personal` when it is formatted, so a library that
quotes a request line or a value cannot leak a 身份证 or phone number. Every line written
while a request or a Kafka message is being handled carries that work's ``trace_id`` (the id
the gateway gave the request, which travels in the ``trace_id`` Kafka header): set it with
:func:`trace` around the work.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import sys
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

#: The trace id of the request or message being handled in this task, if any.
current_trace_id: ContextVar[str | None] = ContextVar("mrhub_trace_id", default=None)


@contextlib.contextmanager
def trace(trace_id: str | None) -> Iterator[None]:
    """Log lines inside the block carry ``trace_id`` (nothing changes when it is None)."""
    token = current_trace_id.set(trace_id)
    try:
        yield
    finally:
        current_trace_id.reset(token)


class TraceIdFilter(logging.Filter):
    """Adds the current ``trace_id`` to every record that does not name one itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "trace_id"):
            trace_id = current_trace_id.get()
            if trace_id is not None:
                record.trace_id = trace_id
        return True


#: What must never reach a log line whoever wrote it (a library's error message may quote a
#: request line or a value): 身份证 numbers (18 characters, or the old 15 digits) and mainland
#: mobile numbers, each standing alone as a run of digits.
_PERSONAL = re.compile(r"(?<!\d)(?:\d{17}[\dXx]|\d{15}|1[3-9]\d{9})(?![\dXx])")
#: (Bounded by digits only, so a number quoted inside a URL-encoded query — ``%7C140105…`` —
#: is masked too.)
_MASK = "***"


def redact_personal(text: str) -> str:
    """``text`` with every 身份证 number and mobile phone number masked."""
    return _PERSONAL.sub(_MASK, text)


#: Exceptions that only say a client went away: one line, never a traceback.
_DISCONNECTS: tuple[type[BaseException], ...] = (
    ConnectionResetError,
    BrokenPipeError,
    asyncio.CancelledError,
)


class QuietDisconnects(logging.Filter):
    """A client that disconnects mid-request is one line, not a traceback: servers (aiohttp's
    among them) log it with ``exc_info``; this drops the traceback and names the error."""

    def filter(self, record: logging.LogRecord) -> bool:
        info = record.exc_info
        if info and info[1] is not None and _is_disconnect(info[1]):
            record.exc_info = None
            record.exc_text = None
            record.disconnect = type(info[1]).__name__
        return True


def _is_disconnect(exc: BaseException) -> bool:
    if isinstance(exc, _DISCONNECTS):
        return True
    name = type(exc).__name__  # aiohttp's own, without importing aiohttp here
    return name in ("ClientConnectionResetError", "ClientConnectionError")


_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k, v in record.__dict__.items():
            if k not in _STANDARD and not k.startswith("_"):
                doc[k] = v
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return redact_personal(json.dumps(doc, default=str, ensure_ascii=False))


class ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extra = " ".join(
            f"{k}={v}"
            for k, v in record.__dict__.items()
            if k not in _STANDARD and not k.startswith("_")
        )
        base = f"{record.levelname:<7} {record.name}: {record.getMessage()}"
        if extra:
            base = f"{base} {extra}"
        if record.exc_info:
            base = f"{base}\n{self.formatException(record.exc_info)}"
        return redact_personal(base)


#: Libraries whose INFO lines say nothing an operator needs.
#: Loggers kept at WARNING: Kafka clients are chatty, and httpx / httpcore log every request's
#: URL at INFO (a URL may carry a query a hospital sent, so none is logged).
NOISY_LOGGERS = ("aiokafka", "kafka", "httpx", "httpcore")


def setup_logging(level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else ConsoleFormatter())
    handler.addFilter(TraceIdFilter())
    handler.addFilter(QuietDisconnects())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def dict_config(level: str = "INFO", fmt: str = "json") -> dict[str, Any]:
    """What :func:`setup_logging` does, as a ``logging.config.dictConfig`` document: faust's
    worker configures logging itself from the app's ``logging_config``."""
    quiet = logging.getLevelName(max(logging.WARNING, logging.getLevelName(level)))
    formatter = JsonFormatter if fmt == "json" else ConsoleFormatter
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"mrhub": {"()": f"{formatter.__module__}.{formatter.__qualname__}"}},
        "filters": {
            "trace": {"()": f"{__name__}.TraceIdFilter"},
            "disconnects": {"()": f"{__name__}.QuietDisconnects"},
        },
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "mrhub",
                "filters": ["trace", "disconnects"],
            }
        },
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {name: {"level": quiet} for name in NOISY_LOGGERS},
    }
