"""Helpers for tests on the three-node cluster: who leads what, and putting it back whole."""

from __future__ import annotations

from collections import Counter

from services.common.broker import LocalCluster
from services.common.harness import wait_until
from services.common.kafka_admin import partition_states


def busiest_leader(cluster: LocalCluster, topics: list[str]) -> int:
    """The node that leads the most partitions of ``topics``: the one whose loss hurts most."""
    leaders = Counter(s.leader for s in partition_states(cluster.bootstrap, topics))
    return leaders.most_common(1)[0][0]


def fully_replicated(cluster: LocalCluster, topics: list[str]) -> bool:
    """Every partition of ``topics`` has a leader and all of its replicas in sync."""
    states = partition_states(cluster.bootstrap, topics)
    return bool(states) and all(s.leader >= 0 and set(s.isr) == set(s.replicas) for s in states)


def whole_again(cluster: LocalCluster, topics: list[str], timeout_s: float = 180) -> None:
    """Start every node that is down and wait until ``topics`` are fully in sync again."""
    for node in cluster.nodes:
        if node.status() is None:
            node.start(timeout_s=timeout_s)
    wait_until(
        lambda: fully_replicated(cluster, topics),
        deadline_s=timeout_s,
        what="every replica back in sync",
        interval_s=0.5,
    )
