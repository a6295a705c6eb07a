"""Seeding the patient index: the state it keeps for persons it has already seen, built by the
index itself, for a throw-away broker (``mrhub bench index`` seeds a million persons this way
in a minute instead of posting a million visits through the hub). docs/patient-index.md,
"Seeding".

The patient index keeps its state in faust tables, whose changelog topics are the only
durable copy: a worker that starts reads them back into RocksDB. After one visit of a person
(a ``Patient`` with a verified identifier) the index holds

- in ``identities``, per identifier: key = its keyed hash, value = the ``IdentityState`` JSON
  that ``resolve`` stores — for the anchor what :func:`resolve_anchor` stores for a new anchor
  with its weaker identifiers claimed (:func:`claims_to_send`), for each weaker identifier what
  :func:`apply_claim` stores for that claim;
- in ``blocks``, per birth date: key = ``keyed_hash(key, "block:birth_date", date)``, value =
  the JSON list of ``{"anchor", "master_patient_id", "person"}`` that ``match`` keeps (the last
  ``BLOCK_LIMIT``).

Everything here is built with the functions and the codec the worker itself uses, so the
format of these tables has one home: ``services/patient_index/`` (app.py and this module).
The other tables (``masters``, ``master_records``, ``seen``, ``reviews``, …) follow records,
not persons, and start empty: a seeded person is one whose ``Patient`` the index has seen.

Each message must go to the partition the service looks its key up in: the partition
``services.common.partitioner.partition_for(key, partitions)`` gives (faust writes a table change to
the partition of the event being processed, and a stage's input is keyed by the table's key).
The caller produces the messages (with any Kafka client), onto topics created with
:func:`changelog_specs`, before the patient index starts.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from services.common.codec import dumps
from services.common.faust_app import app_id_of
from services.common.identifiers import keyed_hash
from services.common.topics import TopicSpec
from services.patient_index.app import BLOCK_LIMIT, SERVICE
from services.patient_index.identity import (
    apply_claim,
    claims_to_send,
    keyed_identifiers,
    resolve_anchor,
)
from services.patient_index.normalize import person_from_fhir, person_to_json

__all__ = [
    "APP_ID",
    "SEEDED_TABLES",
    "SeedEntries",
    "SeedStats",
    "block_value",
    "changelog_specs",
    "changelog_topic",
    "seed_entries",
    "seed_messages",
]

#: the faust app id of the patient index
APP_ID: Final = app_id_of(SERVICE)
#: the tables a seeded person has entries in
SEEDED_TABLES: Final = ("identities", "blocks")


def changelog_topic(table: str) -> str:
    """The changelog topic faust keeps for one of the patient index's tables."""
    return f"{APP_ID}-{table}-changelog"


def changelog_specs(partitions: int) -> list[TopicSpec]:
    """The seeded tables' changelog topics, as faust would create them (compacted); create
    them before seeding, with the hub's ``topic_partitions``."""
    return [
        TopicSpec(
            changelog_topic(t),
            key="table key",
            description=f"faust changelog of the patient index's {t} table",
            partitions=partitions,
            config={"cleanup.policy": "compact"},
        )
        for t in SEEDED_TABLES
    ]


@dataclass(frozen=True, slots=True)
class SeedEntries:
    """What the patient index stores after one visit of a person: its identity entries
    (identifier hash → ``IdentityState`` JSON) and its entry in its birth date's block."""

    identities: tuple[tuple[bytes, bytes], ...]
    block_key: bytes
    block_entry: bytes  # one element of the block's JSON list
    master_patient_id: str


def seed_entries(
    patient: Mapping[str, Any],
    institution: str,
    hmac_key: bytes,
    partitions: int | None = None,
) -> SeedEntries:
    """The state the service writes for a FHIR ``Patient`` posted by ``institution``, built with
    its own functions: ``route`` (``person_from_fhir``, ``keyed_identifiers``), ``resolve``
    (``resolve_anchor`` for the anchor, ``apply_claim`` for each weaker identifier) and
    ``match`` (the block). ``hmac_key`` is ``MRHUB_IDENTITY__HMAC_KEY``'s bytes.

    Raises ``ValueError`` for a Patient without a usable identifier (the index would not link
    it to anyone either). ``partitions``: the hub's ``topic_partitions``, with which the
    service mints a new master id (``resolve_anchor``)."""
    person = person_from_fhir(dict(patient), institution)
    idents = keyed_identifiers(person, lambda i: keyed_hash(hmac_key, *i.key()))
    if not idents:
        raise ValueError("the Patient has no usable identifier")
    anchor, aliases = idents[0], idents[1:]
    res = resolve_anchor(None, anchor, partitions)
    _, anchor_state = claims_to_send(res.state, aliases)
    entries = [(anchor.key.encode(), anchor_state.model_dump_json().encode())]
    for alias in aliases:
        claimed = apply_claim(None, res.master_patient_id, alias, anchor.rank).state
        if claimed is not None:
            entries.append((alias.key.encode(), claimed.model_dump_json().encode()))
    person_json = person_to_json(person)
    block_key = keyed_hash(hmac_key, "block:birth_date", person_json["birth_date"]).encode()
    entry = dumps(
        {"anchor": anchor.key, "master_patient_id": res.master_patient_id, "person": person_json}
    )
    return SeedEntries(tuple(entries), block_key, entry, res.master_patient_id)


def block_value(entries: Sequence[bytes]) -> bytes:
    """A block's stored value from its entries in arrival order: the JSON list of the last
    ``BLOCK_LIMIT``, each an entry of the one-view layout (one ``person``), which the
    block owner reads as it reads entries it wrote itself (``blocks.entry_views``); seeding
    fills the birth-date blocks only."""
    return b"[" + b",".join(entries[-BLOCK_LIMIT:]) + b"]"


@dataclass
class SeedStats:
    """What :func:`seed_messages` wrote, filled in as its messages are consumed."""

    persons: int = 0
    identities: int = 0
    blocks: int = 0
    block_entries: int = 0
    largest_block: int = 0


def seed_messages(
    patients: Iterable[tuple[Mapping[str, Any], str]],
    hmac_key: bytes,
    stats: SeedStats | None = None,
    partitions: int | None = None,
) -> Iterator[tuple[str, bytes, bytes]]:
    """``(topic, key, value)`` changelog messages for ``(Patient, institution)`` pairs, each a
    distinct person seen once, in the order given: every identity entry as its person comes,
    then one message per block (so a block is written once, whatever its size). Produce each
    to ``partition_for(key, partitions)`` of its topic."""
    stats = SeedStats() if stats is None else stats
    ident_topic = changelog_topic("identities")
    blocks: dict[bytes, list[bytes]] = {}
    for patient, institution in patients:
        entries = seed_entries(patient, institution, hmac_key, partitions)
        stats.persons += 1
        for key, value in entries.identities:
            stats.identities += 1
            yield ident_topic, key, value
        blocks.setdefault(entries.block_key, []).append(entries.block_entry)
    block_topic = changelog_topic("blocks")
    for key, members in blocks.items():
        kept = min(len(members), BLOCK_LIMIT)
        stats.blocks += 1
        stats.block_entries += kept
        stats.largest_block = max(stats.largest_block, kept)
        yield block_topic, key, block_value(members)
