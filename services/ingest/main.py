"""Run the gateway: ``mrhub serve ingest`` (or ``python -m services.ingest``)."""

from __future__ import annotations

import asyncio
import logging

from aiohttp.http_exceptions import HttpProcessingError

from services.common import faust_fixes
from services.common.errors import ConfigError
from services.common.forwarding import forwarded_headers
from services.common.gc_tuning import tune_for_serving
from services.common.institutions import Registry
from services.common.logging import setup_logging
from services.common.settings import Settings
from services.common.topics import max_message_bytes
from services.ingest import views
from services.ingest.app import build_app
from services.ingest.server import serve

log = logging.getLogger(__name__)


class _ParseErrorsOnOneLine(logging.Filter):
    """aiohttp logs a request it cannot parse (an over-long or malformed line or header)
    with a traceback whose message quotes the offending bytes: keep one line naming the
    error's class, without the traceback or the quoted bytes."""

    def filter(self, record: logging.LogRecord) -> bool:
        info = record.exc_info
        if info and isinstance(info[1], HttpProcessingError):
            record.exc_info = None
            record.exc_text = None
            record.msg = "could not parse a request; answered 400 and closed"
            record.args = ()
            record.error = type(info[1]).__name__
            # a client's malformed request is not the server's error
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def public_base(settings: Settings) -> str:
    """Where hospitals reach the hub, as recognition writes it into links and checks JWT
    audiences against: ``public_base_url``, else ``http://<host>:<port>`` of the gateway (a
    wildcard host as 127.0.0.1, an address nobody can call being no base)."""
    if settings.ingest.public_base_url:
        return settings.ingest.public_base_url.rstrip("/")
    host = settings.ingest.host
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - compared, not bound
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.ingest.port}"


def run(settings: Settings) -> None:
    setup_logging(settings.log_level, settings.log_format)
    faust_fixes.apply_aiohttp()  # protocol errors answered as OperationOutcomes
    logging.getLogger("aiohttp.server").addFilter(_ParseErrorsOnOneLine())
    bootstrap = settings.kafka.bootstrap_servers
    if not bootstrap:
        raise ConfigError("MRHUB_KAFKA__BOOTSTRAP_SERVERS must name the Kafka cluster")
    if settings.identity.hmac_key is None:
        raise ConfigError("MRHUB_IDENTITY__HMAC_KEY must be set (it keys identifier hashes)")
    registry = Registry.load(settings.institutions_path)
    app = build_app(
        registry,
        bootstrap=bootstrap,
        hmac_key=settings.identity.hmac_key.get_secret_value().encode(),
        max_body_bytes=settings.ingest.max_body_bytes,
        publish_timeout_s=settings.ingest.publish_timeout_s,
        topic=settings.ingest.topic,
        transaction_slots=settings.ingest.transaction_slots,
        institutions_path=settings.institutions_path,
        max_message_bytes=max_message_bytes(settings),
        body_timeout_s=settings.ingest.body_timeout_s,
        min_body_rate=settings.ingest.min_body_rate,
        max_json_depth=settings.ingest.max_json_depth,
        max_outcome_issues=settings.ingest.max_outcome_issues,
        public_base_url=settings.ingest.public_base_url,
        validation_threads=settings.ingest.validation_threads,
        recognition_url=settings.recognition.url,
        forward_headers=forwarded_headers(settings, public_base(settings)),
    )
    metrics = app[views.STATE_KEY].metrics
    log.info(
        "ingest listening",
        extra={
            "host": settings.ingest.host,
            "port": settings.ingest.port,
            "institutions": len(registry),
        },
    )
    tune_for_serving()  # only in the serving process, not where tests build the app
    asyncio.run(
        serve(
            app,
            host=settings.ingest.host,
            port=settings.ingest.port,
            header_timeout_s=settings.ingest.header_timeout_s,
            on_header_timeout=metrics.rejections.labels("timeout").inc,
            shutdown_timeout_s=10,
            handler_args={
                "max_line_size": settings.ingest.max_line_bytes,
                "max_field_size": settings.ingest.max_field_bytes,
                "max_headers": settings.ingest.max_headers,
                "keepalive_timeout": 75.0,
            },
        )
    )
