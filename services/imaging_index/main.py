"""Run the imaging index: ``mrhub serve imaging``."""

from __future__ import annotations

import faust

from services.common.errors import ConfigError
from services.common.settings import Settings
from services.imaging_index.app import create_app


def run(settings: Settings) -> None:
    if not settings.kafka.bootstrap_servers:
        raise ConfigError("MRHUB_KAFKA__BOOTSTRAP_SERVERS must name the Kafka cluster")
    app = create_app(settings)
    worker = faust.Worker(app, loglevel=settings.log_level.lower(), redirect_stdouts=False)
    worker.execute_from_commandline()
