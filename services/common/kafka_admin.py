"""Cluster-level chores with kafka-python: is the cluster there, create the declared topics."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from services.common.errors import KafkaUnavailableError
from services.common.harness import wait_until
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
    min_insync_replicas: int | None = None,
) -> list[TopicResult]:
    """Create every topic in ``specs`` that does not exist yet; never alter an existing one.

    Each is created with ``max.message.bytes`` = ``max_message_bytes`` (pass
    :func:`services.common.topics.max_message_bytes` of the settings), so that a resource as
    large as the gateway's body limit fits in one message, and with ``min.insync.replicas``
    when ``min_insync_replicas`` is given (else the brokers' default applies).

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
                topic_configs=_with_min_isr(s.topic_config(max_message_bytes), min_insync_replicas),
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
        described: dict[str, int] = {}

        def everything_described() -> bool:
            # in a cluster the broker answering may not have the new topics' metadata yet
            found = admin.describe_topics([s.name for s in specs])
            described.update({d["name"]: len(d["partitions"]) for d in found})
            return all(described.get(name) for name in created)

        wait_until(
            everything_described,
            deadline_s=timeout_s,
            what="the new topics' partitions in the cluster's metadata",
            interval_s=0.1,
        )
        limits = _message_limits(admin, [s.name for s in specs if s.name not in created])
    except (KafkaError, TimeoutError) as exc:
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


def _with_min_isr(config: dict[str, str], min_isr: int | None) -> dict[str, str]:
    return config if min_isr is None else {**config, "min.insync.replicas": str(min_isr)}


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


def live_brokers(bootstrap: str, *, timeout_s: float = 5.0) -> int:
    """How many brokers the cluster reports alive (0 when none answers)."""
    try:
        admin = _admin(bootstrap, timeout_s)
    except (KafkaError, OSError, ValueError):
        return 0
    try:
        cluster: dict[str, Any] = admin.describe_cluster()
        return len(cluster.get("brokers") or ())
    except (KafkaError, OSError, ValueError):
        return 0
    finally:
        admin.close()


@dataclass(frozen=True)
class PartitionState:
    """One partition's leader and in-sync replicas (broker node ids; leader -1: none)."""

    topic: str
    partition: int
    leader: int
    replicas: tuple[int, ...]
    isr: tuple[int, ...]


def partition_states(
    bootstrap: str, topics: Iterable[str], *, timeout_s: float = 10.0
) -> list[PartitionState]:
    """The leader, replicas and ISR of every partition of ``topics``, as the cluster says.

    Asked of each listed broker in turn until one answers: with a node down, the client may
    otherwise pick that node (still in the metadata until it is fenced) and fail."""
    names = list(topics)
    hosts = [h for h in bootstrap.split(",") if h.strip()]
    error: Exception | None = None
    for i in range(len(hosts)):
        try:
            admin = _admin(",".join(hosts[i:] + hosts[:i]), timeout_s)
        except (KafkaError, OSError, ValueError) as exc:
            error = exc
            continue
        try:
            described: list[dict[str, Any]] = admin.describe_topics(names)
        except (KafkaError, OSError) as exc:
            error = exc
            continue
        finally:
            admin.close()
        return [
            PartitionState(
                t["name"],
                int(p["partition_index"]),
                int(p["leader_id"]),
                tuple(int(r) for r in p["replica_nodes"]),
                tuple(int(r) for r in p["isr_nodes"]),
            )
            for t in described
            for p in t["partitions"]
        ]
    raise KafkaUnavailableError(f"no broker of {bootstrap} answered: {error}")
