"""Run the patient index: ``mrhub serve patient_index``."""

from __future__ import annotations

from services.common.errors import ConfigError
from services.common.faust_app import run_worker
from services.common.settings import Settings
from services.patient_index.app import create_app


def run(settings: Settings) -> None:
    if not settings.kafka.bootstrap_servers:
        raise ConfigError("MRHUB_KAFKA__BOOTSTRAP_SERVERS must name the Kafka cluster")
    if settings.identity.hmac_key is None:
        raise ConfigError("MRHUB_IDENTITY__HMAC_KEY must be set (it keys identifier hashes)")
    app = create_app(settings)
    run_worker(app, settings)
