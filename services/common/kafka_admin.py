"""Cluster-level chores with kafka-python: is the cluster there, create the declared topics."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from services.common.errors import KafkaUnavailableError
from services.common.kafka_security import kafka_python_options
from services.common.topics import DEFAULT_MAX_MESSAGE_BYTES, TopicSpec

log = logging.getLogger(__name__)


def _admin(bootstrap: str, timeout_s: float) -> KafkaAdminClient:
    ms = int(timeout_s * 1000)
    return KafkaAdminClient(
        bootstrap_servers=bootstrap.split(","),
        client_id="mrhub-admin",
        request_timeout_ms=max(ms, 1000),
        bootstrap_timeout_ms=max(ms, 1000),
        reconnect_backoff_max_ms=500,
        **kafka_python_options(),
    )


def cluster_answers(bootstrap: str, *, timeout_s: float = 5.0) -> bool:
    """True when a broker answers a metadata request with at least one live broker."""
    try:
        admin = _admin(bootstrap, timeout_s)
    except (KafkaError, OSError, ValueError):
        return False
    try:
        cluster: dict[str, Any] = admin.describe_cluster()
        return bool(cluster.get("brokers"))
    except (KafkaError, OSError, ValueError):
        return False
    finally:
        admin.close()


@dataclass(frozen=True)
class TopicResult:
    name: str
    partitions: int
    created: bool
    note: str = ""


def create_topics(
    bootstrap: str,
    specs: Iterable[TopicSpec],
    *,
    default_partitions: int,
    replication_factor: int,
    timeout_s: float = 30.0,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> list[TopicResult]:
    """Create every topic in ``specs`` that does not exist yet; never alter an existing one.

    Each is created with ``max.message.bytes`` = ``max_message_bytes`` (pass
    :func:`services.common.topics.max_message_bytes` of the settings), so that a resource as
    large as the gateway's body limit fits in one message.

    An existing topic with another partition count than declared is reported, not changed:
    repartitioning a keyed topic moves keys between partitions and is an operator's decision.
    """
    specs = list(specs)
    try:
        admin = _admin(bootstrap, timeout_s)
    except (KafkaError, OSError, ValueError) as exc:
        raise KafkaUnavailableError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
    try:
        existing = set(admin.list_topics())
        new = [
            NewTopic(
                name=s.name,
                num_partitions=s.partition_count(default_partitions),
                replication_factor=replication_factor,
                topic_configs=s.topic_config(max_message_bytes),
            )
            for s in specs
            if s.name not in existing
        ]
        created: set[str] = set()
        if new:
            try:
                admin.create_topics(new, timeout_ms=int(timeout_s * 1000), wait_for_metadata=True)
                created = {t.name for t in new}
            except TopicAlreadyExistsError:  # a concurrent creator won the race
                created = set()
        described = {
            d["name"]: len(d["partitions"]) for d in admin.describe_topics([s.name for s in specs])
        }
        limits = _message_limits(admin, [s.name for s in specs if s.name not in created])
    except KafkaError as exc:
        raise KafkaUnavailableError(
            f"Kafka at {bootstrap} refused the topic request: {exc}"
        ) from exc
    finally:
        admin.close()
    results = []
    for s in specs:
        want = s.partition_count(default_partitions)
        have = described.get(s.name, 0)
        notes = [] if have == want else [f"has {have} partitions, declared {want}; left as is"]
        limit = limits.get(s.name)
        if limit is not None and limit < max_message_bytes:
            notes.append(
                f"max.message.bytes is {limit}, below the hub's {max_message_bytes}: larger "
                "resources will be refused (413); raise it with kafka-configs --alter"
            )
        results.append(TopicResult(s.name, have, s.name in created, "; ".join(notes)))
    return results


def _message_limits(admin: KafkaAdminClient, names: list[str]) -> dict[str, int]:
    """``max.message.bytes`` in force on each existing topic of ``names`` (best effort: an
    empty answer when the cluster or the client cannot say)."""
    if not names:
        return {}
    try:
        found: Any = admin.describe_configs(
            [
                ConfigResource(ConfigResourceType.TOPIC, n, configs={"max.message.bytes": None})
                for n in names
            ],
            config_filter="all",
        )
        by_topic = found.get("topic", {}) if isinstance(found, dict) else {}
        return {
            name: int(configs["max.message.bytes"]["value"])
            for name, configs in by_topic.items()
            if "max.message.bytes" in configs
        }
    except (KafkaError, TypeError, ValueError, KeyError, AttributeError) as exc:
        log.info("could not read the topics' max.message.bytes", extra={"err": repr(exc)})
        return {}
