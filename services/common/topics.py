"""Every Kafka topic and event type the hub declares: the contract downstream consumers rely on.

This module is the one home of each contract: a topic's name, its event type (the envelope's
and the header's ``event_type``), its key and the JSON Schema of its payload
(``docs/schemas/<file>``). Producers take ``event_type`` from here; the overview table of
docs/events.md is generated from :data:`ALL_EVENTS` (``python -m services.common.topics``) and
a unit test checks it, the schemas and the payload tables against these definitions.

Names follow ``mrhub.<producing service>.<past-tense event>.v<N>``; the event type is the name
without ``.v<N>``. Topics whose records are keyed by master patient id share one partition
count so that faust tables built from them are co-partitioned. ``mrhub topics create`` creates
exactly :data:`ALL_TOPICS`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from services.common.settings import Settings

#: What a Kafka message may need beyond the resource it carries: the envelope's own fields,
#: the patient identifiers copied into it, key, headers and the record batch's framing.
ENVELOPE_HEADROOM: Final = 1024 * 1024
#: The gateway's default body limit (``MRHUB_INGEST__MAX_BODY_BYTES``).
DEFAULT_MAX_BODY_BYTES: Final = 32 * 1024 * 1024


def message_limit(max_body_bytes: int) -> int:
    """The largest Kafka message (record batch) the hub produces or accepts for a body limit
    of ``max_body_bytes``: the body plus :data:`ENVELOPE_HEADROOM`."""
    return max_body_bytes + ENVELOPE_HEADROOM


def max_message_bytes(settings: Settings) -> int:
    """The one message-size limit of the hub, derived from the one body limit.

    A resource as large as ``MRHUB_INGEST__MAX_BODY_BYTES`` must travel: this is the
    gateway producer's ``max_request_size``, ``max.message.bytes`` of every topic the hub
    creates, and the local broker's ``message.max.bytes`` / ``replica.fetch.max.bytes``
    (faust producers and faust's own topics use it too).
    """
    return message_limit(settings.ingest.max_body_bytes)


#: :func:`max_message_bytes` for the default settings.
DEFAULT_MAX_MESSAGE_BYTES: Final = message_limit(DEFAULT_MAX_BODY_BYTES)


_VERSION_RE = re.compile(r"\.v[0-9]+$")


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    key: str
    description: str
    partitions: int | None = None  # None: the hub's configured main partition count
    config: dict[str, str] = field(default_factory=dict)
    #: The JSON Schema (2020-12) of the payload of its event, a file in docs/schemas/.
    schema: str | None = None

    @property
    def event_type(self) -> str:
        """The ``event_type`` of the events on this topic: its name without ``.v<N>``."""
        return _VERSION_RE.sub("", self.name)

    def partition_count(self, default: int) -> int:
        return self.partitions if self.partitions is not None else default

    def topic_config(self, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> dict[str, str]:
        """The configuration the hub creates this topic with: its own settings, and
        ``max.message.bytes`` large enough for the body limit (unless it names its own)."""
        return {"max.message.bytes": str(max_message_bytes), **self.config}


_DEAD_LETTER_CONFIG = {"retention.ms": str(30 * 24 * 3600 * 1000)}

RESOURCE_ACCEPTED = TopicSpec(
    "mrhub.ingest.resource-accepted.v1",
    key="institution + resource type + keyed hash of the business id",
    description="Each validated FHIR resource as received, in the event envelope.",
    schema="resource-accepted.v1.json",
)
IDENTITY_LINKED = TopicSpec(
    "mrhub.patient.identity-linked.v1",
    key="master patient id",
    description="Link / unlink / merge events with evidence and score.",
    schema="identity-linked.v1.json",
)
RESULT_INDEXED = TopicSpec(
    "mrhub.results.result-indexed.v1",
    key="master patient id",
    description="Canonical results (lab and imaging) keyed by master patient id.",
    schema="result-indexed.v1.json",
)
ORDER_PLACED = TopicSpec(
    "mrhub.results.order-placed.v1",
    key="master patient id",
    description="Canonical orders (ServiceRequest) keyed by master patient id.",
    schema="order-placed.v1.json",
)
DECISION_MADE = TopicSpec(
    "mrhub.recognition.decision-made.v1",
    key="master patient id",
    description="Recognition decision for an order.",
    schema="decision-made.v1.json",
)
FEEDBACK_RECORDED = TopicSpec(
    "mrhub.recognition.feedback-recorded.v1",
    key="master patient id",
    description="The ordering doctor's choice: recognised, or re-ordered with a reason.",
    schema="feedback-recorded.v1.json",
)
STUDY_INDEXED = TopicSpec(
    "mrhub.imaging.study-indexed.v1",
    key="master patient id",
    description="Imaging study indexed, with its DICOMweb endpoints.",
    schema="study-indexed.v1.json",
)
ACCESS_RECORDED = TopicSpec(
    "mrhub.audit.access-recorded.v1",
    key="institution",
    description="Audit: who read what about which master patient id, when, why; and every "
    "write refused because the record belongs to another institution.",
    schema="access-recorded.v1.json",
)


def dead_letter(service: str) -> TopicSpec:
    return TopicSpec(
        f"mrhub.{service}.dead-letter.v1",
        key="the original key",
        description=f"Messages {service} could not process: original bytes and the error.",
        partitions=1,
        config=_DEAD_LETTER_CONFIG,
    )


#: The services (folder names) that consume topics; each owns a dead-letter topic.
CONSUMING_SERVICES = ("patient_index", "recognition", "imaging_index")

ALL_TOPICS: tuple[TopicSpec, ...] = (
    RESOURCE_ACCEPTED,
    IDENTITY_LINKED,
    RESULT_INDEXED,
    ORDER_PLACED,
    DECISION_MADE,
    FEEDBACK_RECORDED,
    STUDY_INDEXED,
    ACCESS_RECORDED,
    *(dead_letter(s) for s in CONSUMING_SERVICES),
)


@dataclass(frozen=True, slots=True)
class EventSpec:
    """One kind of event: its ``event_type``, the topic it travels on (which gives its key)
    and the JSON Schema of its payload."""

    event_type: str
    topic: TopicSpec
    schema: str
    description: str


#: A write refused because the record belongs to another institution: on the audit topic,
#: keyed by the refused institution (docs/events.md, "Refused writes").
WRITE_REFUSED = EventSpec(
    "mrhub.audit.write-refused",
    ACCESS_RECORDED,
    schema="write-refused.v1.json",
    description="A write refused because the record belongs to another institution.",
)

#: Every event type the hub publishes, in the order docs/events.md lists them.
ALL_EVENTS: tuple[EventSpec, ...] = (
    *(EventSpec(t.event_type, t, t.schema, t.description) for t in ALL_TOPICS if t.schema),
    WRITE_REFUSED,
)

#: Where the JSON Schemas live, and where docs/events.md is, in a source checkout.
DOCS_DIR: Final = Path(__file__).resolve().parents[2] / "docs"
EVENTS_TABLE_BEGIN: Final = "<!-- generated by python -m services.common.topics: begin -->"
EVENTS_TABLE_END: Final = "<!-- generated by python -m services.common.topics: end -->"


def events_table() -> str:
    """The overview table of docs/events.md: one row per event type."""
    rows = [
        "| event type | topic | key | payload schema |",
        "|---|---|---|---|",
    ]
    for ev in ALL_EVENTS:
        rows.append(
            f"| `{ev.event_type}` | `{ev.topic.name}` | {ev.topic.key} "
            f"| [{ev.schema}](schemas/{ev.schema}) |"
        )
    return "\n".join(rows) + "\n"


def with_events_table(doc: str) -> str:
    """``doc`` (docs/events.md) with its generated block replaced by :func:`events_table`."""
    start = doc.index(EVENTS_TABLE_BEGIN) + len(EVENTS_TABLE_BEGIN)
    end = doc.index(EVENTS_TABLE_END)
    return doc[:start] + "\n" + events_table() + doc[end:]


if __name__ == "__main__":  # pragma: no cover - regenerates docs/events.md's overview table
    events_md = DOCS_DIR / "events.md"
    events_md.write_text(with_events_table(events_md.read_text("utf-8")), "utf-8")
