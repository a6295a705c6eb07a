"""Prometheus helpers shared by every service: one registry per process, build info, and the
metrics every streaming worker exposes whatever its job (lag, produce errors, dead letters,
table recovery). The catalogue of every metric is docs/metrics.md."""

from __future__ import annotations

import asyncio
import platform
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from services.common.lag import ConsumerLag

# No ``*_created`` gauges next to every counter and histogram: in the text format they are
# series of their own that no dashboard or rule uses (docs/metrics.md).
disable_created_metrics()  # type: ignore[no-untyped-call]

__all__ = [
    "CONTENT_TYPE_LATEST",
    "WorkerMetrics",
    "build_info",
    "exposition",
    "new_registry",
]


def hub_version() -> str:
    try:
        return version("mrhub")
    except PackageNotFoundError:
        return "0+unknown"


def new_registry() -> CollectorRegistry:
    return CollectorRegistry(auto_describe=True)


def event_loop_in_use() -> str:
    """``uvloop`` or ``asyncio``: the loop this process's policy makes
    (``MRHUB_EVENT_LOOP``, :mod:`services.common.event_loop`)."""
    policy = type(asyncio.get_event_loop_policy()).__module__
    return "uvloop" if policy.split(".")[0] == "uvloop" else "asyncio"


def build_info(registry: CollectorRegistry, service: str) -> Gauge:
    g = Gauge(
        "mrhub_build_info",
        "Always 1; the labels say which build of which service is running, on which "
        "Python and which event loop.",
        ["service", "version", "python", "event_loop"],
        registry=registry,
    )
    g.labels(service, hub_version(), platform.python_version(), event_loop_in_use()).set(1)
    return g


class WorkerMetrics:
    """What every faust worker exposes next to its own metrics. Made with the app
    (``make_app``) and registered into the service's registry with its pages
    (``add_service_pages``); every family carries ``service``."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.lag = ConsumerLag(service)
        self.produce_errors = Counter(
            "mrhub_kafka_produce_errors_total",
            "Kafka sends that failed (outputs, dead letters, table changelogs), by topic.",
            ["service", "topic"],
            registry=None,
        )
        self.dead_letters = Counter(
            "mrhub_dead_letters_total",
            "Messages sent to the service's dead-letter topic, by stage.",
            ["service", "stage"],
            registry=None,
        )
        self.recovering = Gauge(
            "mrhub_table_recovery_in_progress",
            "1 while the worker rebalances or rebuilds its tables from their changelogs (it "
            "processes nothing and /readyz answers 503), else 0.",
            ["service"],
            registry=None,
        )
        self.recovery_remaining = Gauge(
            "mrhub_table_recovery_remaining_messages",
            "Changelog messages the worker still has to read before its tables are rebuilt "
            "(0 outside recovery).",
            ["service"],
            registry=None,
        )

    def watch_recovery(
        self, in_progress: Callable[[], float], remaining: Callable[[], float]
    ) -> None:
        self.recovering.labels(self.service).set_function(in_progress)
        self.recovery_remaining.labels(self.service).set_function(remaining)

    def produce_error(self, topic: str) -> None:
        self.produce_errors.labels(self.service, topic).inc()

    def dead_letter(self, stage: str) -> None:
        self.dead_letters.labels(self.service, stage).inc()

    def collectors(self) -> list[Collector]:
        return [
            self.lag,
            self.produce_errors,
            self.dead_letters,
            self.recovering,
            self.recovery_remaining,
        ]

    def register(self, registry: CollectorRegistry) -> None:
        for collector in self.collectors():
            registry.register(collector)


def exposition(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
