"""Run the imaging index: ``mrhub serve imaging``."""

from __future__ import annotations

from services.common.errors import ConfigError
from services.common.faust_app import run_worker
from services.common.settings import Settings
from services.imaging_index.app import create_app


def run(settings: Settings) -> None:
    if not settings.kafka.bootstrap_servers:
        raise ConfigError("MRHUB_KAFKA__BOOTSTRAP_SERVERS must name the Kafka cluster")
    app = create_app(settings)
    run_worker(app, settings)
