"""Who a record belongs to: deterministic identity resolution with one owner per identifier.

Every record is routed by its *anchor*, its strongest identifier (a verified 身份证 beats a
typed document, which beats an insurance or health card, which beats a hospital's own
number). All decisions about one identifier are made where its keyed hash is owned, one at a
time, so two bundles for the same new patient arriving at once on different gateway
processes meet at the same owner. A new anchor's master id is derived from its keyed hash,
so even two owners that never spoke would name the person alike.

The record's weaker identifiers become *claims*: "this 门诊号 belongs to master P", sent to
their own owners. An unclaimed identifier takes the claim; one already held by another
master moves only to stronger evidence (higher rank), and two equally strong claims that
disagree are a conflict for a data steward, never a silent relink.

This module is pure: the agents call it with table state and publish what it returns.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict

from services.common.partitioner import partition_for
from services.patient_index.normalize import Ident, Person

#: How strongly an identifier names one person (0: never used for linking).
RANK: dict[str, int] = {
    "id_card": 50,
    "document": 40,
    "insurance": 30,
    "health_card": 30,
    "local": 10,
    "other": 5,
}

LinkKind = Literal["new", "alias", "relinked", "conflict", "review"]

#: Rank of a probabilistic auto-link: above a hospital number, below any verified document.
PROBABILISTIC_RANK = 20
#: Identities weaker than this get probabilistic matching when first seen.
MATCH_BELOW_RANK = 30


def rank(ident: Ident) -> int:
    """A 身份证 or document counts only when verified (checksum / known document type)."""
    if ident.kind in ("id_card", "document") and not ident.verified:
        return 0
    return RANK.get(ident.kind, 0)


@dataclass(frozen=True, slots=True)
class Keyed:
    """An identifier as the hub may name it: its keyed hash, rank and kind — never its value."""

    key: str
    rank: int
    kind: str


def keyed_identifiers(person: Person, hash_ident: Callable[[Ident], str]) -> list[Keyed]:
    """The person's usable identifiers, strongest first (ties by key, so the order is stable).

    A 身份证 that disagrees with its own record's birth date or sex (``card_conflict``) does
    not name the card's holder: it is often a parent's card on a young child's record
    (新生儿 registered with the mother's card). It is replaced by a weak identifier made of
    the card *and* the record's birth date and sex (:func:`borrowed_card`): the child's
    records share it with each other, not with the parent's, and probabilistic matching
    decides the rest.
    """
    found: dict[str, Keyed] = {}
    for i in person.idents:
        if not rank(i):
            continue
        if person.card_conflict and i.kind == "id_card":
            i = borrowed_card(i, person)
        key = hash_ident(i)
        found[key] = Keyed(key, rank(i), i.kind)
    return sorted(found.values(), key=lambda k: (-k.rank, k.key))


#: The system of :func:`borrowed_card` identifiers (never sent anywhere: hashed like all).
BORROWED_CARD_SYSTEM = "urn:mrhub:id-card-on-another-record"


def borrowed_card(card: Ident, person: Person) -> Ident:
    """A 身份证 on a record whose birth date or sex disagrees with it, as an identifier of
    that record's person: the card with the record's birth date and sex (rank of ``other``)."""
    born = person.birth_date.isoformat() if person.birth_date else "-"
    return Ident("other", BORROWED_CARD_SYSTEM, f"{card.value}|{born}|{person.sex or '-'}")


def master_id_for(anchor_key: str, partitions: int | None = None) -> str:
    """The master id a new identity mints from its anchor's keyed hash: ``MP`` and 24 hex
    digits.

    With ``partitions`` (the hub's ``topic_partitions``) the last three digits are the first
    of ``000`` … ``fff`` that put the id on the anchor's own partition, so that the worker owning
    the anchor owns its master too and a record needs no hop through ``by-master`` (the
    in-place master step, :mod:`services.patient_index.app`). Without — and should no three
    digits do it (at 64 partitions, a chance of 1 in 10^28) — the form minted before: the
    anchor's first 24 digits."""
    if partitions is not None:
        want = partition_for(anchor_key.encode(), partitions)
        stem = f"MP{anchor_key[:21]}"
        for n in range(4096):
            mid = f"{stem}{n:03x}"
            if partition_for(mid.encode(), partitions) == want:
                return mid
    return f"MP{anchor_key[:24]}"


def minted_from(master: str, anchor_key: str) -> bool:
    """Whether ``master`` is the id an identity anchored at ``anchor_key`` minted, in either
    form of :func:`master_id_for`."""
    return master.startswith(f"MP{anchor_key[:21]}") and len(master) == len(
        master_id_for(anchor_key)
    )


#: Weaker identifiers an anchor remembers having claimed for its master (a person has a few;
#: the oldest drop out first, so the value stays bounded).
CLAIMED_LIMIT = 16


class IdentityState(BaseModel):
    """What the owner of one identifier knows: its master and how strong the claim was.

    ``claimed``: as the anchor of records, the keyed hashes of the weaker identifiers it has
    already claimed for ``master_patient_id`` (see :func:`claims_to_send`); a state naming
    another master starts with none. Older values without it read as none claimed."""

    model_config = ConfigDict(frozen=True)

    master_patient_id: str
    rank: int
    kind: str
    claimed: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class LinkEvent:
    kind: LinkKind
    master_patient_id: str
    identifier_kind: str
    rank: int
    previous_master_patient_id: str | None = None
    competing_master_patient_id: str | None = None

    def payload(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "master_patient_id": self.master_patient_id,
            "previous_master_patient_id": self.previous_master_patient_id,
            "competing_master_patient_id": self.competing_master_patient_id,
            "evidence": {
                "rule": "probabilistic" if self.rank == PROBABILISTIC_RANK else "deterministic",
                "identifier_kind": self.identifier_kind,
                "rank": self.rank,
            },
        }


@dataclass(frozen=True, slots=True)
class Resolution:
    master_patient_id: str
    state: IdentityState  # to store for the anchor (unchanged when it was known)
    changed: bool
    event: LinkEvent | None  # identity-linked event to publish, if any
    decision: Literal["new", "deterministic"]


def resolve_anchor(
    state: IdentityState | None, anchor: Keyed, partitions: int | None = None
) -> Resolution:
    """The master of a record routed to the owner of its anchor (a new one minted on the
    anchor's partition of ``partitions``, see :func:`master_id_for`)."""
    if state is not None:
        return Resolution(state.master_patient_id, state, False, None, "deterministic")
    master = master_id_for(anchor.key, partitions)
    new_state = IdentityState(master_patient_id=master, rank=anchor.rank, kind=anchor.kind)
    event = LinkEvent("new", master, anchor.kind, anchor.rank)
    return Resolution(master, new_state, True, event, "new")


def claims_to_send(
    state: IdentityState, aliases: Sequence[Keyed]
) -> tuple[list[Keyed], IdentityState]:
    """The claims a record anchored at ``state`` must still send, and the anchor's state
    remembering them (``state`` itself when there is none to send).

    A claim this anchor already made for the same master would change nothing at the
    alias's owner: the alias took it (an equal claim is a no-op), or holds stronger or equal
    evidence for another master (a conflict a steward was told about by the first claim).
    So each alias is claimed once per master, not once per record: no round trip through the
    alias's owner when nothing changes. The anchor's master changing (a relink, a steward)
    writes a new state without ``claimed``, so the claims go out again for the new master.
    """
    todo = [a for a in aliases if a.key not in state.claimed]
    if not todo:
        return [], state
    claimed = (*state.claimed, *(a.key for a in todo))[-CLAIMED_LIMIT:]
    return todo, state.model_copy(update={"claimed": claimed})


@dataclass(frozen=True, slots=True)
class ClaimResult:
    state: IdentityState | None  # to store, or None to leave the table as it is
    event: LinkEvent | None

    def records_follow(self, identifier_key: str) -> tuple[str, dict[str, str]] | None:
        """When the claim moved the identifier to another master: the message for the owner
        of the master it left (``(master id, message)``), which releases the records the
        identifier anchors there so that they follow it — a record published under the old
        master just before the relink included. ``None`` when nothing moved."""
        return move_records_message(self.event, identifier_key)


def move_records_message(
    event: LinkEvent | None, identifier_key: str
) -> tuple[str, dict[str, str]] | None:
    """The ``move-records`` message for the master an identifier left (``relinked`` only)."""
    if event is None or event.kind != "relinked" or event.previous_master_patient_id is None:
        return None
    if event.previous_master_patient_id == event.master_patient_id:
        return None
    return event.previous_master_patient_id, {"type": "move-records", "anchor": identifier_key}


def apply_claim(
    state: IdentityState | None, claim_master: str, alias: Keyed, claim_rank: int
) -> ClaimResult:
    """A record whose anchor has rank ``claim_rank`` says ``alias`` belongs to ``claim_master``."""
    if state is None:
        new = IdentityState(master_patient_id=claim_master, rank=claim_rank, kind=alias.kind)
        return ClaimResult(new, LinkEvent("alias", claim_master, alias.kind, claim_rank))
    if state.master_patient_id == claim_master:
        if claim_rank > state.rank:  # same master, stronger evidence: remember it
            return ClaimResult(state.model_copy(update={"rank": claim_rank}), None)
        return ClaimResult(None, None)
    if claim_rank > state.rank:
        new = IdentityState(master_patient_id=claim_master, rank=claim_rank, kind=alias.kind)
        event = LinkEvent(
            "relinked",
            claim_master,
            alias.kind,
            claim_rank,
            previous_master_patient_id=state.master_patient_id,
        )
        return ClaimResult(new, event)
    # as strong or weaker, and it disagrees: a steward decides, nothing moves
    event = LinkEvent(
        "conflict",
        state.master_patient_id,
        alias.kind,
        claim_rank,
        competing_master_patient_id=claim_master,
    )
    return ClaimResult(None, event)
