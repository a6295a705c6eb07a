"""Audit events for reads: ``mrhub.audit.access-recorded.v1``, keyed by the reading institution.

Every read by one institution of what other institutions made about a patient (a recognition
check, an imaging search) is recorded once, whatever it found — a read that found nothing is
still a read of that patient. The record names ids only: the reader, the master patient id,
the institutions whose data was shown, what was asked (route and item or modality), never an
identifier value, a name or a number.

The record is written before the answer leaves (``acks=all``); when it cannot be written the
read is refused with 503, so no read goes unrecorded.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Literal

from services.common.envelope import Envelope, utcnow
from services.common.topics import ACCESS_RECORDED

__all__ = ["EVENT_TYPE", "Purpose", "access_event"]

EVENT_TYPE = ACCESS_RECORDED.event_type

Purpose = Literal[
    "recognition-check",
    "imaging-search",
    "recognition-feedback",
    "fhir-read",
    "fhir-search",
    "cds-hooks",
    "console-view",
]


def access_event(
    *,
    reader: str,
    route: str,
    purpose: Purpose,
    master_patient_id: str | None,
    shown_institutions: Iterable[str],
    items: int,
    outcome: str,
    query: dict[str, str] | None = None,
    trace_id: str | None = None,
    at: datetime | None = None,
) -> Envelope:
    """One audit record. ``shown_institutions`` are the other institutions whose data the
    answer contained (sorted, without the reader); ``items`` how many results or studies it
    held; ``outcome`` the answer's gist (``recognisable``, ``found``, ``none``, ``refused``…);
    ``query`` the non-identifying parameters asked (item code, modality, date range)."""
    shown = sorted({i for i in shown_institutions if i != reader})
    payload = {
        "reader": reader,
        "route": route,
        "purpose": purpose,
        "master_patient_id": master_patient_id,
        "cross_institution": bool(shown),
        "shown_institutions": shown,
        "items": items,
        "outcome": outcome,
        "query": dict(query or {}),
        "read_at": (at or utcnow()).isoformat(),
    }
    env = Envelope(event_type=EVENT_TYPE, source=reader, payload=payload)
    return env.model_copy(update={"trace_id": trace_id}) if trace_id else env
