"""The gateway's metrics. Labels are bounded: route templates, status classes, the five
clinical and six context resource types, the fixed reason list — never an identifier."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.common.metrics import build_info, new_registry
from services.ingest.validation import CLINICAL_TYPES, CONTEXT_TYPES

_KNOWN_TYPES = frozenset((*CLINICAL_TYPES, *CONTEXT_TYPES, "Bundle"))


#: Seconds: 1 ms to 10 s, for request and Kafka transaction latencies alike.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


def type_label(resource_type: str) -> str:
    return resource_type if resource_type in _KNOWN_TYPES else "other"


@dataclass
class IngestMetrics:
    registry: CollectorRegistry = field(default_factory=new_registry)

    def __post_init__(self) -> None:
        r = self.registry
        build_info(r, "ingest")
        self.requests = Counter(
            "mrhub_ingest_requests_total",
            "HTTP requests by route template and status class.",
            ["route", "status_class"],
            registry=r,
        )
        self.resources = Counter(
            "mrhub_ingest_resources_total",
            "Resources seen, by type and outcome (accepted, rejected, not_published).",
            ["resource_type", "outcome"],
            registry=r,
        )
        self.resources_by_level = Counter(
            "mrhub_ingest_resources_by_level_total",
            "Resources seen, by the posting institution's level (1, 2, 3: 一级, 二级, 三级) "
            "and outcome (accepted, rejected, not_published).",
            ["level", "outcome"],
            registry=r,
        )
        self.rejections = Counter(
            "mrhub_ingest_rejections_total",
            "Refusals by reason (the fixed list in docs/ingest.md).",
            ["reason"],
            registry=r,
        )
        self.latency = Histogram(
            "mrhub_ingest_request_duration_seconds",
            "Time from request start to response, by route template.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.received_bytes = Counter(
            "mrhub_ingest_received_bytes_total",
            "Request body bytes received, by route template.",
            ["route"],
            registry=r,
        )
        self.publish_latency = Histogram(
            "mrhub_ingest_kafka_publish_duration_seconds",
            "Time for one Kafka transaction (acks=all) from its start to its commit.",
            ["mode"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.publish_errors = Counter(
            "mrhub_ingest_kafka_publish_errors_total",
            "Publications that failed: a transaction Kafka did not commit (stage=transaction)"
            " or a request no transaction took in time (stage=queued-too-long), both answered"
            " 503; a message Kafka refused as too large (stage=too-large), answered 413.",
            ["stage"],
            registry=r,
        )
        self.transaction_messages = Histogram(
            "mrhub_ingest_kafka_transaction_messages",
            "Messages per Kafka transaction (group commit: concurrent requests share one).",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000),
            registry=r,
        )
        self.kafka_up = Gauge(
            "mrhub_ingest_kafka_up",
            "1 when the last readiness probe reached Kafka, else 0.",
            registry=r,
        )
