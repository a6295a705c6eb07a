"""Build a faust app the one way every mrhub streaming service does.

Settings come from the hub's ``Settings`` object, never from faust's own environment
variables: faust lets ``WEB_PORT``, ``BROKER_URL`` and friends win over code, so each app gets
an ``env_prefix`` that nothing sets by accident.
"""

from __future__ import annotations

from typing import Any

import faust

from services.common.errors import ConfigError
from services.common.settings import Settings

#: faust reads its own settings from variables with this prefix only (none are documented
#: as supported; the hub's configuration is ``MRHUB_*`` through ``Settings``).
FAUST_ENV_PREFIX = "MRHUB_FAUST_"


def broker_urls(bootstrap: str) -> list[str]:
    return [f"kafka://{hp.strip()}" for hp in bootstrap.split(",") if hp.strip()]


def make_app(
    service: str,
    settings: Settings,
    *,
    web_port: int,
    web_host: str = "127.0.0.1",
    **overrides: Any,
) -> faust.App:
    """A faust app for ``service`` with RocksDB tables, acks=all and durable defaults."""
    bootstrap = settings.kafka.bootstrap_servers
    if not bootstrap:
        raise ConfigError("MRHUB_KAFKA__BOOTSTRAP_SERVERS is not set")
    datadir = settings.state_dir / service.replace("_", "-")
    datadir.mkdir(parents=True, exist_ok=True)
    options: dict[str, Any] = {
        "broker": broker_urls(bootstrap),
        "env_prefix": FAUST_ENV_PREFIX,
        "store": "rocksdb://",
        "datadir": str(datadir),
        "web_enabled": True,
        "web_host": web_host,
        "web_bind": web_host,
        "web_port": web_port,
        "producer_acks": -1,
        "producer_max_request_size": 8 * 1024 * 1024,
        # exactly_once: outputs, changelogs and offsets commit in one Kafka transaction, and
        # the consumer reads read_committed (under at_least_once faust reads uncommitted
        # data, and would see what an aborted gateway transaction wrote).
        "processing_guarantee": "exactly_once",
        "consumer_auto_offset_reset": "earliest",
        # faust-streaming reads an unknown changelog highwater (no fetch yet for a partition
        # just assigned) as -1 and then refuses any offset a standby replica had already
        # restored ("persisted offset 11 > highwater -1"): a worker joining or taking over
        # crashes in recovery. With exactly_once, recovery reads committed data up to the
        # real end whatever this check says, so it is switched off.
        "recovery_consistency_check": False,
        # a dead worker's partitions move after 10 s, not faust's default 60 s
        "broker_session_timeout": 10.0,
        "broker_heartbeat_interval": 3.0,
        "broker_commit_interval": 1.0,
        "topic_partitions": settings.topic_partitions,
        "topic_replication_factor": settings.kafka.replication_factor,
        "table_standby_replicas": 0 if settings.kafka.replication_factor == 1 else 1,
        # Bytes in, bytes out: agents decode themselves, so a message that does not decode
        # reaches the agent and is dead-lettered instead of crashing it before it can.
        "key_serializer": "raw",
        "value_serializer": "raw",
        "logging_config": None,
        "worker_redirect_stdouts": False,
    }
    options.update(overrides)
    app_id = f"mrhub-{service.replace('_', '-')}"
    return faust.App(app_id, **options)
