"""Every Kafka topic the hub declares: the contract downstream consumers rely on.

Names follow ``mrhub.<producing service>.<past-tense event>.v<N>``. Topics whose records are
keyed by master patient id share one partition count so that faust tables built from them
are co-partitioned. ``mrhub topics create`` creates exactly this list.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    key: str
    description: str
    partitions: int | None = None  # None: the hub's configured main partition count
    config: dict[str, str] = field(default_factory=dict)

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
)
IDENTITY_LINKED = TopicSpec(
    "mrhub.patient.identity-linked.v1",
    key="master patient id",
    description="Link / unlink / merge events with evidence and score.",
)
RESULT_INDEXED = TopicSpec(
    "mrhub.results.result-indexed.v1",
    key="master patient id",
    description="Canonical results (lab and imaging) keyed by master patient id.",
)
ORDER_PLACED = TopicSpec(
    "mrhub.results.order-placed.v1",
    key="master patient id",
    description="Canonical orders (ServiceRequest) keyed by master patient id.",
)
DECISION_MADE = TopicSpec(
    "mrhub.recognition.decision-made.v1",
    key="master patient id",
    description="Recognition decision for an order.",
)
FEEDBACK_RECORDED = TopicSpec(
    "mrhub.recognition.feedback-recorded.v1",
    key="master patient id",
    description="The ordering doctor's choice: recognised, or re-ordered with a reason.",
)
STUDY_INDEXED = TopicSpec(
    "mrhub.imaging.study-indexed.v1",
    key="master patient id",
    description="Imaging study indexed, with its DICOMweb endpoints.",
)
ACCESS_RECORDED = TopicSpec(
    "mrhub.audit.access-recorded.v1",
    key="institution",
    description="Audit: who read what about which master patient id, when, why; and every "
    "write refused because the record belongs to another institution.",
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


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (murmur2, as aiokafka's ``DefaultPartitioner``
    that faust's producer and the gateway use) gives ``key`` on a topic of ``partitions``."""
    from aiokafka.partitioner import murmur2

    return int((murmur2(key) & 0x7FFFFFFF) % partitions)
