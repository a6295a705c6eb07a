"""Deduplication: what one more post of the same business key means for consumers.

Pure functions, no faust, Kafka or I/O. For each :class:`CanonicalRecord` the patient-index
agent reads the :class:`Seen` stored for the record's key, calls :func:`decide`, publishes
the record when ``outcome.published_change`` is not ``None`` (as that change) and writes
``outcome.seen`` when ``outcome.store`` — the write and the publish in the same Kafka
transaction, which is what makes a redelivered message safe. Key the table by
``record.record_id`` (it reveals no identifier, the business key may).

Rules, in order (``seen`` is what is stored for the key, ``record`` what just arrived):

1. **Nothing stored.** A record → ``new``. A record whose status already withdraws it
   (:data:`STATUS_RETRACTED`) → ``stale``: nothing was published, so there is nothing to
   retract; a tombstone is stored (``store``) so that a late copy of the original, issued
   no later, is not indexed afterwards.
2. **Stored as retracted.** Another retraction, or the same content → ``duplicate`` (a key
   is retracted once). A live record issued strictly after the stored watermark — or when
   either issue time is unknown — → ``new`` again (in FHIR practice a corrected result
   follows the entered-in-error one under the same number); one issued no later → ``stale``
   (a late copy of what was withdrawn).
3. **Same content hash.** ``duplicate``, unless the key now resolves to another master
   patient (a merge or unmerge happened): then ``update``, carrying the new master id and
   :attr:`Outcome.previous_master_patient_id`.
4. **A retraction** (status in :data:`STATUS_RETRACTED`) → ``retraction``, whatever its
   issue time: entered-in-error withdraws the whole record, not one version.
5. **Other content, issued earlier** than the stored watermark → ``stale`` (an older version
   arriving late). Issued at or after it, or either time unknown → ``update`` (amended,
   corrected, a final replacing a preliminary, a second institution's copy of a study).

``Seen.issued_at`` is a watermark: the latest issue time ever applied for the key, never
lowered. Applying a record twice never publishes twice: the second time is ``duplicate``
for any record that was applied, and ``stale`` again for one dropped as stale; either way
the stored state is left as it is (``store`` is false).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict

from services.common.codec import dumps, dumps_sorted, loads
from services.patient_index.canonical import CanonicalRecord, PublishedChange

Change = Literal["new", "duplicate", "update", "retraction", "stale"]

#: The record fields that make up its content (see :func:`content_hash`).
_CONTENT_FIELDS: Final = frozenset(
    {
        "kind",
        "resource_type",
        "institution",
        "category",
        "codes",
        "imaging",
        "status",
        "intent",
        "performed_at",
        "collected_at",
        "issued_at",
        "authored_at",
        "value",
    }
)


class Seen(BaseModel):
    """What is stored per business key: enough to judge the next post of the same key."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    content_hash: str
    status: str
    issued_at: AwareDatetime | None = None
    record_id: str
    last_event_id: str
    master_patient_id: str
    retracted: bool = False


def seen_value(state: Seen, published: dict[str, Any] | None) -> bytes:
    """The ``seen`` table's value of one record id: its dedup state and the record last
    published for it (``{"record", "source"}``, what a merge re-publishes), in one entry —
    one changelog message per record, not two."""
    doc: dict[str, Any] = {"seen": state.model_dump(mode="json")}
    if published is not None:
        doc["published"] = published
    return dumps(doc)


def load_seen_value(raw: bytes) -> tuple[Seen, dict[str, Any] | None]:
    """A ``seen`` value read back: ``(state, published)``. A value of the earlier layout (the
    state alone, its record in the ``published`` table) gives ``(state, None)``."""
    doc = loads(raw)
    if "seen" in doc:
        return Seen.model_validate(doc["seen"]), doc.get("published")
    return Seen.model_validate(doc), None


@dataclass(frozen=True, slots=True)
class Outcome:
    """The decision for one record.

    ``seen`` is the state of the key after it (the input object itself when unchanged);
    ``store`` tells whether it differs from what was stored; ``previous_master_patient_id``
    is the master id the key had before, when this record moves it to another one.
    """

    change: Change
    seen: Seen
    store: bool
    previous_master_patient_id: str | None = None

    @property
    def published_change(self) -> PublishedChange | None:
        """``change`` when the record is published (``new``, ``update`` or ``retraction``),
        else ``None`` (``duplicate`` and ``stale`` are dropped, and counted)."""
        if self.change == "new" or self.change == "update" or self.change == "retraction":
            return self.change
        return None


def _normalise(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, dict):
        return {k: _normalise(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_normalise(v) for v in value]
    return value


def content_hash(record: CanonicalRecord) -> str:
    """SHA-256 (32 hex) of what consumers act on: kind, type, institution, category, codes,
    imaging summary, status, intent, times (compared as instants, so ``+08:00`` and ``Z``
    spellings of one time agree) and value.

    Left out: the ids and times of the envelope and the post (``source``, ``trace_id``), the
    derived ``record_id``, ``business_key`` and ``master_patient_id`` (a master change is
    judged on its own) and ``catalogue_item`` (the hub's mapping, not the posted content),
    so an exact resend — through another bundle, at another time — hashes equal.
    """
    doc = _normalise(record.model_dump(include=set(_CONTENT_FIELDS)))
    # the bytes simplejson.dumps(doc, sort_keys=True, ensure_ascii=False,
    # separators=(",", ":")) wrote before (stored hashes stay valid), in C
    return hashlib.sha256(dumps_sorted(doc)).hexdigest()[:32]


def _watermark(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


def _seen(record: CanonicalRecord, digest: str, watermark: datetime | None) -> Seen:
    return Seen(
        content_hash=digest,
        status=record.status,
        issued_at=watermark,
        record_id=record.record_id,
        last_event_id=record.source.event_id,
        master_patient_id=record.master_patient_id,
        retracted=record.retracted,
    )


def decide(seen: Seen | None, record: CanonicalRecord) -> Outcome:
    """What ``record`` means given what is stored for its key (rules in the module doc)."""
    digest = content_hash(record)
    if seen is None:
        state = _seen(record, digest, record.issued_at)
        return Outcome("stale" if record.retracted else "new", state, store=True)

    moved = seen.master_patient_id != record.master_patient_id
    previous = seen.master_patient_id if moved else None
    watermark = _watermark(seen.issued_at, record.issued_at)

    if seen.retracted:
        if record.retracted or digest == seen.content_hash:
            return Outcome("duplicate", seen, store=False)
        if record.issued_at is None or seen.issued_at is None or record.issued_at > seen.issued_at:
            # listed afresh: consumers removed the withdrawn one, so there is nothing to move
            # from (a previous master here would make them drop another patient's copy)
            return Outcome("new", _seen(record, digest, watermark), True)
        return Outcome("stale", seen, store=False)

    if digest == seen.content_hash:
        if moved:
            state = seen.model_copy(
                update={
                    "master_patient_id": record.master_patient_id,
                    "last_event_id": record.source.event_id,
                }
            )
            return Outcome("update", state, True, previous)
        return Outcome("duplicate", seen, store=False)

    if record.retracted:
        return Outcome("retraction", _seen(record, digest, watermark), True, previous)

    if (
        record.issued_at is not None
        and seen.issued_at is not None
        and record.issued_at < seen.issued_at
    ):
        return Outcome("stale", seen, store=False)
    return Outcome("update", _seen(record, digest, watermark), True, previous)


# ── who holds a study ─────────────────────────────────────────────────────────────────


class StudyOwners(BaseModel):
    """Which institutions hold live records (a copy of the study, a report of it) of one
    Study Instance UID. Every record is its poster's own (the business key starts with the
    institution), so no post can withdraw another institution's study; this is what tells
    an *attempt* to (a withdrawal of a study the poster never sent while others hold it)
    from a hospital cleaning up a mistake of its own that never reached the hub."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    live: dict[str, tuple[str, ...]] = {}  # institution → its live record ids


@dataclass(frozen=True, slots=True)
class OwnerStep:
    """``owners``: the state to store (``None``: unchanged). ``refused``: the record was an
    attempt on a study that only ``holders`` (other institutions) hold."""

    owners: StudyOwners | None
    refused: bool = False
    holders: tuple[str, ...] = ()


def study_record(
    owners: StudyOwners | None, institution: str, record_id: str, *, live: bool, attempt: bool
) -> OwnerStep:
    """One study-bound record (ImagingStudy or report with a Study Instance UID) after
    :func:`decide`: ``live`` — the key is live now (not withdrawn); ``attempt`` — it was a
    withdrawal of a key this institution never published. An attempt is *refused* when the
    poster holds nothing of the study and another institution does; it never changed
    anything (the poster's own key was all it could name) — the refusal is what is audited."""
    cur = owners or StudyOwners()
    mine = cur.live.get(institution, ())
    holders = tuple(sorted(i for i, ids in cur.live.items() if i != institution and ids))
    refused = attempt and not mine and bool(holders)
    ids = tuple(sorted({*mine, record_id})) if live else tuple(r for r in mine if r != record_id)
    if ids == mine:
        return OwnerStep(None, refused, holders if refused else ())
    live_map = {i: v for i, v in cur.live.items() if i != institution}
    if ids:
        live_map[institution] = ids
    return OwnerStep(StudyOwners(live=live_map), refused, holders if refused else ())
