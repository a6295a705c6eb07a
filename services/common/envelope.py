"""The event envelope every value on a hub topic carries.

A consumer reads ``schema_version`` and ``event_type`` first and the ``payload`` after;
fields are only ever added within one ``.vN`` of a topic.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from services.common import codec

SCHEMA_VERSION = 1


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


class Envelope(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = SCHEMA_VERSION
    event_id: str = Field(default_factory=new_id)
    event_type: str
    occurred_at: datetime = Field(default_factory=utcnow)
    received_at: datetime | None = Field(
        default=None, description="When the gateway received the request this event derives from."
    )
    source: str = Field(description="Institution id the data came from.")
    trace_id: str = Field(default_factory=new_id)
    payload: dict[str, Any]

    def to_bytes(self) -> bytes:
        """Compact UTF-8 JSON. The payload is written as given: ``Decimal`` values keep
        their digits (a FHIR decimal ``6.30`` stays ``6.30``) and key order is kept."""
        doc = self.model_dump(mode="json", exclude={"payload"})
        doc["payload"] = self.payload
        return codec.dumps(doc)

    @classmethod
    def from_bytes(cls, data: bytes) -> Envelope:
        """Read an envelope; decimals in the payload come back as ``Decimal``."""
        return cls.model_validate(codec.loads(data))

    def headers(self) -> list[tuple[str, bytes]]:
        """Kafka headers (docs/events.md): ids for tracing and routing and the ``source``
        institution, never identity data. The gateway writes the same five itself."""
        return [
            ("event_type", self.event_type.encode()),
            ("event_id", self.event_id.encode()),
            ("trace_id", self.trace_id.encode()),
            ("schema_version", str(self.schema_version).encode()),
            ("source", self.source.encode()),
        ]
