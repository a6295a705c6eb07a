"""Build a faust app the one way every mrhub streaming service does.

Settings come from the hub's ``Settings`` object, never from faust's own environment
variables: faust lets ``WEB_PORT``, ``BROKER_URL`` and friends win over code, so each app gets
an ``env_prefix`` that nothing sets by accident.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import weakref
from typing import Any

import faust
from faust.sensors import Sensor
from mode.utils.times import want_seconds

from services.common import faust_fixes, lag
from services.common.errors import ConfigError
from services.common.institutions import hash_token
from services.common.kafka_admin import create_topics
from services.common.kafka_security import faust_credentials
from services.common.logging import dict_config
from services.common.metrics import WorkerMetrics
from services.common.partitioner import PARTITIONER
from services.common.patient_lookup import internal_token
from services.common.settings import Settings
from services.common.topics import TopicSpec, max_message_bytes
from services.common.web_guard import (
    FAUST_WEB_SETTINGS,
    adopt_guard,
    new_guard,
    web_application_options,
)

#: faust reads its own settings from variables with this prefix only (none are documented
#: as supported; the hub's configuration is ``MRHUB_*`` through ``Settings``).
FAUST_ENV_PREFIX = "MRHUB_FAUST_"
log = logging.getLogger(__name__)


_WORKER_METRICS: weakref.WeakKeyDictionary[faust.App, WorkerMetrics] = weakref.WeakKeyDictionary()


def worker_metrics(app: faust.App) -> WorkerMetrics | None:
    """The common worker metrics of an app ``make_app`` built (None for any other app)."""
    return _WORKER_METRICS.get(app)


#: The exit code of a worker that stopped because a write failed (``mrhub up``, systemd or
#: Kubernetes start it again; it resumes from its last committed transaction).
EXIT_WRITE_FAILED = 75


def fail_stop(topic: str, exc: BaseException) -> None:
    """A send the worker's state depends on failed (a table changelog or an output topic):
    stop the process at once, before anything else can commit. Under exactly_once nothing
    after the last committed transaction is visible, so the restarted worker processes the
    same events again and makes the same writes; carrying on would acknowledge events whose
    effects were never stored (a table write lost, a restart later missing it)."""
    log.critical(
        "a write failed; stopping so that nothing after it commits",
        extra={"topic": topic, "error": type(exc).__name__, "exit_code": EXIT_WRITE_FAILED},
    )
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    os._exit(EXIT_WRITE_FAILED)


class ProduceErrorCounter(Sensor):
    """Counts failed sends faust makes itself (table changelogs, ``Topic.send``) and stops the
    worker on the first one (:func:`fail_stop`)."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        super().__init__()
        self.metrics = metrics

    def on_send_initiated(
        self, producer: Any, topic: str, message: Any, keysize: int, valsize: int
    ) -> Any:
        return topic

    def on_send_error(self, producer: Any, exc: BaseException, state: Any) -> None:
        self.metrics.produce_error(str(state))
        fail_stop(str(state), exc)


def _instrument(app: faust.App, service: str) -> None:
    """Lag sampling, produce errors and recovery state for ``add_service_pages`` to show."""
    metrics = WorkerMetrics(service)
    _WORKER_METRICS[app] = metrics
    app.sensors.add(ProduceErrorCounter(metrics))
    lag.install(app, metrics.lag)

    def recovering() -> float:
        tables: Any = app.tables  # faust's type hints omit the recovery service
        return float(app.rebalancing or not tables.recovery.completed.is_set())

    def remaining() -> float:
        recovery: Any = app.tables.recovery  # type: ignore[attr-defined]
        try:
            return float(recovery.active_remaining_total()) if recovery.in_recovery else 0.0
        except Exception:  # offsets not known yet for some partition
            return 0.0

    metrics.watch_recovery(recovering, remaining)


def advertised_host(bind: str) -> str:
    """The name other workers reach this one by (faust forwards a table read to the worker
    that owns the key at ``http://<web_host>:<port>``): the bind address itself, or this
    machine's fully qualified name when it binds every interface — in a Kubernetes
    StatefulSet, ``<pod>.<headless service>.<namespace>.svc.cluster.local``."""
    return socket.getfqdn() if bind in ("0.0.0.0", "::", "") else bind  # noqa: S104


def broker_urls(bootstrap: str) -> list[str]:
    return [f"kafka://{hp.strip()}" for hp in bootstrap.split(",") if hp.strip()]


def app_id_of(service: str) -> str:
    """The faust app id (consumer group, changelog topic prefix) of ``service``."""
    return f"mrhub-{service.replace('_', '-')}"


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
    faust_fixes.apply()
    faust_fixes.apply_aiohttp()
    app_id = app_id_of(service)
    # every route of the worker's web server passes the guard (deny by default)
    guard = new_guard(
        steward_hashes=settings.patient_index.steward_token_hashes,
        internal_hash=_internal_hash(settings),
    )
    options: dict[str, Any] = {
        "broker": broker_urls(bootstrap),
        "broker_credentials": faust_credentials(settings.kafka),
        "env_prefix": FAUST_ENV_PREFIX,
        "store": "rocksdb://",
        "datadir": str(datadir),
        "web_enabled": True,
        "web_host": advertised_host(web_host),
        "web_bind": web_host,
        "web_port": web_port,
        "web_application_options": web_application_options(guard),
        **FAUST_WEB_SETTINGS,
        "producer_acks": -1,
        # batches of several messages per produce request instead of one each; a commit
        # sends what still lingers first (tests/integration/test_producer_linger.py), so
        # under exactly_once the linger is not added to a record's way
        "producer_linger": settings.kafka.producer_linger_ms / 1000,
        # Kafka's murmur2 in C instead of aiokafka's pure Python (the same partitions)
        "producer_partitioner": PARTITIONER,
        # a resource as large as the gateway's body limit travels through every stage
        "producer_max_request_size": max_message_bytes(settings),
        # exactly_once: outputs, changelogs and offsets commit in one Kafka transaction, and
        # the consumer reads read_committed (under at_least_once faust reads uncommitted
        # data, and would see what an aborted gateway transaction wrote).
        "processing_guarantee": "exactly_once",
        "consumer_auto_offset_reset": "earliest",
        # The check compares the offset RocksDB persisted with the changelog's end. RocksDB
        # records a changelog offset when the send completes, before its transaction commits,
        # so after a kill -9 the persisted offset can lie past the committed end of an aborted
        # transaction and the check would refuse a healthy restart. (The unknown highwater it
        # also tripped on is mended in faust_fixes.)
        "recovery_consistency_check": False,
        # a dead worker's partitions move after 10 s, not faust's default 60 s
        "broker_session_timeout": 10.0,
        "broker_heartbeat_interval": 3.0,
        # each stage's output is visible downstream (read_committed) only once its
        # transaction commits: end-to-end latency grows by up to this much per hop. The
        # longest interval: with commit_interval_min_s set, faust_fixes.adaptive_commit
        # below commits a caught-up partition's transaction that often (patch 14).
        "broker_commit_interval": settings.kafka.commit_interval_s,
        "topic_partitions": settings.topic_partitions,
        "topic_replication_factor": settings.kafka.replication_factor,
        "table_standby_replicas": 0 if settings.kafka.replication_factor == 1 else 1,
        # Bytes in, bytes out: agents decode themselves, so a message that does not decode
        # reaches the agent and is dead-lettered instead of crashing it before it can.
        "key_serializer": "raw",
        "value_serializer": "raw",
        # the worker configures logging from this: JSON lines on stderr with trace ids
        "logging_config": dict_config(settings.log_level, settings.log_format),
        "worker_redirect_stdouts": False,
    }
    options.update(overrides)
    app = faust.App(app_id, **options)
    if "broker_commit_interval" not in overrides:
        faust_fixes.adaptive_commit(
            app, settings.kafka.commit_tick_s, settings.kafka.commit_interval_s
        )
    adopt_guard(app, guard)
    _instrument(app, service)
    return app


def _internal_hash(settings: Settings) -> str | None:
    """``hash_token`` of the services' internal token (None without an HMAC key)."""
    if settings.identity.hmac_key is None:
        return None
    return hash_token(internal_token(settings))


def own_topics(app: faust.App) -> list[TopicSpec]:
    """The topics the app itself owns: its internal agent topics and its tables' changelogs,
    with the partitions and cleanup policy faust would create them with."""
    found: dict[str, TopicSpec] = {}
    channels: list[Any] = [agent.channel for agent in app.agents.values()]
    channels += [table.changelog_topic for table in app.tables.values()]
    for channel in channels:
        if not isinstance(channel, faust.Topic) or not channel.internal or channel.pattern:
            continue
        config: dict[str, str] = {str(k): str(v) for k, v in (channel.config or {}).items()}
        flags = (("compact", channel.compacting), ("delete", channel.deleting))
        policy = [name for name, on in flags if on]
        if policy:
            config["cleanup.policy"] = ",".join(policy)
        if channel.retention:
            config["retention.ms"] = str(int(want_seconds(channel.retention) * 1000))
        for name in channel.topics:
            found[name] = TopicSpec(
                name,
                key="(internal)",
                description=f"{app.conf.id} internal",
                partitions=channel.partitions or app.conf.topic_partitions,
                config=config,
            )
    return list(found.values())


def run_worker(app: faust.App, settings: Settings) -> None:
    """Create the app's own topics, then run its faust worker until it is stopped.

    faust creates internal and changelog topics itself, but only once its consumer has
    already subscribed: on a fresh cluster the first assignment then lacks them, and the
    stage reading such a topic gets no partitions until the next metadata refresh (minutes).
    Creating them first, with the same settings, closes that gap.
    """
    bootstrap = settings.kafka.bootstrap_servers
    if not bootstrap:
        raise ConfigError("MRHUB_KAFKA__BOOTSTRAP_SERVERS is not set")
    create_topics(
        bootstrap,
        own_topics(app),
        default_partitions=settings.topic_partitions,
        replication_factor=settings.kafka.replication_factor,
        min_insync_replicas=settings.kafka.min_insync_replicas,
        max_message_bytes=max_message_bytes(settings),
    )
    worker = faust.Worker(app, loglevel=settings.log_level.lower(), redirect_stdouts=False)
    # faust's terminal spinner turns the root logger to DEBUG (at WARNING and above) so that
    # it can spin on every line: every library debug call ("send: ..." per message) would
    # then build a record. No spinner: root and library loggers stay at the configured level.
    worker.spinner = None
    worker.execute_from_commandline()
