"""Run the gateway: ``mrhub serve ingest`` (or ``python -m services.ingest``)."""

from __future__ import annotations

import logging

from aiohttp import web

from services.common import faust_fixes
from services.common.errors import ConfigError
from services.common.institutions import Registry
from services.common.logging import setup_logging
from services.common.settings import Settings
from services.ingest.app import build_app

log = logging.getLogger(__name__)


def run(settings: Settings) -> None:
    setup_logging(settings.log_level, settings.log_format)
    faust_fixes.apply_aiohttp()  # protocol errors answered as OperationOutcomes
    bootstrap = settings.kafka.bootstrap_servers
    if not bootstrap:
        raise ConfigError("MRHUB_KAFKA__BOOTSTRAP_SERVERS must name the Kafka cluster")
    if settings.identity.hmac_key is None:
        raise ConfigError("MRHUB_IDENTITY__HMAC_KEY must be set (it keys identifier hashes)")
    registry = Registry.load(settings.ingest.institutions_path)
    app = build_app(
        registry,
        bootstrap=bootstrap,
        hmac_key=settings.identity.hmac_key.get_secret_value().encode(),
        max_body_bytes=settings.ingest.max_body_bytes,
        publish_timeout_s=settings.ingest.publish_timeout_s,
        topic=settings.ingest.topic,
        transaction_slots=settings.ingest.transaction_slots,
        institutions_path=settings.ingest.institutions_path,
    )
    log.info(
        "ingest listening",
        extra={
            "host": settings.ingest.host,
            "port": settings.ingest.port,
            "institutions": len(registry),
        },
    )
    web.run_app(
        app,
        host=settings.ingest.host,
        port=settings.ingest.port,
        reuse_port=True,
        access_log=None,
        print=None,
        shutdown_timeout=10,
    )
