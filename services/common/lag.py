"""Consumer lag of a faust worker, per topic and partition it consumes.

faust does not publish lag, and Kafka's own view (committed offset against the end offset)
is off by one on every topic written in transactions — the hub's input topics all are: the
commit marker after the last message takes an offset of its own, so a worker that is done
would show a lag of 1 for ever. Here lag counts from the first offset the worker has not
finished, read from the worker's consumer:

- if it holds messages of the partition it has not processed and committed yet (delivered
  to an agent, or processed but not yet in a committed transaction), the oldest of them;
- otherwise its fetch position, which a ``read_committed`` consumer moves past commit
  markers and aborted data.

and the partition's end as a ``read_committed`` consumer sees it (the last stable offset).
A sampler refreshes the figures every :data:`SAMPLE_INTERVAL_S` seconds; a scrape reads the
latest sample, so it never waits for Kafka.

faust keeps the held and the committed offsets in private consumer attributes: they are
read through :mod:`services.common.faust_fixes` (``pending_offsets``, ``committed_offset``),
which refuses an untested faust-streaming release; the integration tests check the figures.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from services.common.faust_fixes import committed_offset, pending_offsets

log = logging.getLogger(__name__)

#: How often the worker samples its lag.
SAMPLE_INTERVAL_S = 5.0

LAG_METRIC = "mrhub_consumer_lag_messages"


def partition_lag(
    end: int | None,
    position: int | None,
    committed: int | None,
    pending: Iterable[int] = (),
) -> int | None:
    """Messages of one partition this worker has not finished, or None when unknown.

    ``end``: the last stable offset (next offset to be written, committed data only);
    ``position``: the consumer's next fetch offset; ``committed``: the next offset after the
    last committed one; ``pending``: offsets the worker holds but has not finished.
    """
    if end is None or end < 0:
        return None  # no fetch response for the partition yet
    held = list(pending)
    if held:
        done = min(held)
    elif position is not None:
        done = position
    elif committed is not None:
        done = committed
    else:
        return None
    return max(0, end - done)


def source_topics(app: Any) -> frozenset[str]:
    """The topics the app's agents read (not table changelogs, which it writes)."""
    names: set[str] = set()
    for agent in app.agents.values():
        names.update(t for t in getattr(agent.channel, "topics", ()) if isinstance(t, str))
    return frozenset(names)


class ConsumerLag(Collector):
    """``mrhub_consumer_lag_messages{service,topic,partition}`` from the latest sample."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.sample: dict[tuple[str, int], int] = {}

    def update(self, sample: Mapping[tuple[str, int], int]) -> None:
        """Replace the figures at once: a partition this worker no longer has disappears."""
        self.sample = dict(sample)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            LAG_METRIC,
            "Messages in a partition this worker consumes that it has not processed and "
            "committed yet (last stable offset minus the first unfinished offset).",
            labels=["service", "topic", "partition"],
        )
        for (topic, partition), lag in sorted(self.sample.items()):
            family.add_metric([self.service, topic, str(partition)], lag)
        yield family

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(LAG_METRIC, "", labels=["service", "topic", "partition"])


async def sample_lag(app: Any) -> dict[tuple[str, int], int]:
    """Lag of every partition of the app's source topics assigned to this worker."""
    consumer = app.consumer
    topics = source_topics(app)
    pending = pending_offsets(consumer)
    out: dict[tuple[str, int], int] = {}
    for tp in sorted(consumer.assignment()):
        if tp.topic not in topics:
            continue
        try:
            end = consumer.highwater(tp)
            position = await consumer.position(tp)
        except Exception:  # revoked meanwhile, or the consumer is restarting
            log.debug("no offsets for %s[%d]", tp.topic, tp.partition, exc_info=True)
            continue
        lag = partition_lag(
            end,
            position,
            committed_offset(consumer, tp),
            pending.get((tp.topic, tp.partition), ()),
        )
        if lag is not None:
            out[(tp.topic, tp.partition)] = lag
    return out


def install(app: Any, collector: ConsumerLag) -> None:
    """Sample ``app``'s lag into ``collector`` while the worker runs."""

    async def sample_consumer_lag() -> None:
        try:
            collector.update(await sample_lag(app))
        except Exception:  # a sample during a rebalance: keep the last one
            log.debug("lag sample failed", exc_info=True)

    app.timer(SAMPLE_INTERVAL_S, name=f"{collector.service}-consumer-lag")(sample_consumer_lag)
