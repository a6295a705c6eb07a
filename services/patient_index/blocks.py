"""Blocks of the patient index's stream: the pure logic of the ``match`` stage (issue 19).

A person is filed under several *block keys* (:func:`stream_block_keys`: birth date, phone,
canonical name + birth year), each a keyed hash owned by one partition, so one wrong field
does not hide a match. A block holds, per identity (its anchor), an :class:`Entry`: the
master it belongs to and up to :data:`VIEWS_PER_ENTRY` distinct *views* — the Person JSON
of the identity's most recent distinct records, newest first. Keeping views rather than the
last record means a later record without a phone does not wipe the phone an earlier one
gave: the order in which hospitals post never decides a link. Views rather than a merged
profile because each is a real record: a merged profile could agree with a namesake on a
mix of fields no single record of the patient had, evidence the Fellegi–Sunter model would
count as independent agreements; a pair scored view by view keeps its assumptions, and
:func:`services.patient_index.matching.decide` takes the best view of a master (several
candidates with one master id are one rival).

Because the keys live in different partitions, matching is a *scatter–gather*:

1. ``resolve`` sends a *probe* (:func:`probe_header`) to each key, naming the gather
   (deterministic id from the resolve input's position, so a redelivery repeats the same
   id), how many keys there are, and the *decider* key (keyed hash of the anchor).
2. Each block owner scores the person against its entries (:func:`block_candidates`),
   replies with the best view of each entry in the review band or above (at most
   :data:`CANDIDATES_PER_REPLY`) to the decider, then stores the person
   (:func:`upsert`); a key without a block replies with no candidates.
3. The decider collects replies in its state (:func:`add_reply`, deduplicated by gather id
   and key index, bounded) and once all ``n`` are in runs ``decide`` over their union
   (:func:`gathered_candidates`), minus the masters a steward rejected for this identity
   (the decider's ``distinct`` list).

Everything here is bounded: entries per block, views per entry, bytes per block value,
gathers and finished gather ids per decider, rejected masters per decider.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from services.common.codec import dumps
from services.patient_index import matching
from services.patient_index.identity import minted_from
from services.patient_index.names import name_block_key
from services.patient_index.normalize import Person, person_from_json

#: Identities a block keeps as candidates; the ones not seen for longest drop out first.
BLOCK_LIMIT = 500
#: Distinct views (records) kept per identity in a block, newest first.
VIEWS_PER_ENTRY = 4
#: A block value stays under this many bytes (Kafka's default message limit is 1 MiB):
#: the identities not seen for longest drop out first.
BLOCK_MAX_BYTES = 768 * 1024
#: Candidates one block owner replies with (the best first): replies stay small.
CANDIDATES_PER_REPLY = 10
#: Gathers a decider waits on at once, and finished gather ids it remembers (to ignore a
#: late duplicate reply); the oldest drop out first.
GATHERS_PER_DECIDER = 16
DONE_PER_DECIDER = 8
#: Masters a steward said are not this identity, kept per decider.
DISTINCT_LIMIT = 64

_RANK = {"none": 0, "review": 1, "auto": 2}


def stream_block_keys(person: Person) -> list[tuple[str, str]]:
    """The ``(kind, value)`` block keys of ``person``, birth date first; the app hashes each
    as ``keyed_hash(key, "block:<kind>", value)`` — never sent or stored raw."""
    keys: list[tuple[str, str]] = []
    if person.birth_date is not None:
        keys.append(("birth_date", person.birth_date.isoformat()))
    if person.phone:
        keys.append(("phone", person.phone))
    name = name_block_key(person)
    if name and person.birth_date is not None:
        # the whole name, order-insensitive, ü folded, table spellings as pinyin (names.py)
        keys.append(("name_year", f"{name}|{person.birth_date.year}"))
    return keys


# ----------------------------------------------------------------------------- entries


def entry_views(entry: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The views of a block entry, newest first (an entry of the old layout holds one
    ``person``)."""
    views = entry.get("views")
    if views is not None:
        return list(views)
    person = entry.get("person")
    return [dict(person)] if person else []


def add_view(views: Sequence[Mapping[str, Any]], person: Mapping[str, Any]) -> list[Any]:
    """``person`` first, then the other distinct views, at most :data:`VIEWS_PER_ENTRY`."""
    mine = dumps(person)
    rest = [v for v in views if dumps(v) != mine]
    return [dict(person), *rest][:VIEWS_PER_ENTRY]


def upsert(
    entries: Sequence[Mapping[str, Any]],
    anchor: Mapping[str, Any],
    master: str,
    person: Mapping[str, Any],
    since: float,
) -> list[dict[str, Any]]:
    """The block after the identity ``anchor`` (``{key, rank, kind}``) brought ``person``:
    its entry moves to the end (newest) with ``person`` as its first view, under ``master``;
    ``since`` (when the identity was first seen) keeps its earliest value."""
    key = anchor["key"]
    mine = next((e for e in entries if e.get("anchor") == key), None)
    entry: dict[str, Any] = {
        "anchor": key,
        "anchor_rank": anchor.get("rank"),
        "anchor_kind": anchor.get("kind"),
        "master_patient_id": master,
        "since": min(since, mine.get("since", 0.0)) if mine is not None else since,
        "views": add_view(entry_views(mine) if mine is not None else [], person),
    }
    if mine is not None and mine.get("distinct"):  # a steward's rejects of the old layout
        entry["distinct"] = list(mine["distinct"])
    kept = [dict(e) for e in entries if e.get("anchor") != key]
    kept.append(entry)
    return kept[-BLOCK_LIMIT:]


def relabel(entries: Sequence[Mapping[str, Any]], anchor_key: str, master: str) -> bool:
    """Put identity ``anchor_key``'s entry under ``master`` (in place); whether it changed."""
    changed = False
    for e in entries:
        if e.get("anchor") == anchor_key and e.get("master_patient_id") != master:
            e["master_patient_id"] = master  # type: ignore[index]
            changed = True
    return changed


def encode_block(entries: Sequence[Mapping[str, Any]]) -> bytes:
    """The block's table value, the identities not seen for longest dropped until it is
    under :data:`BLOCK_MAX_BYTES`."""
    raw = dumps(list(entries))
    start = 0
    while len(raw) > BLOCK_MAX_BYTES and start < len(entries) - 1:
        # drop in proportion to the excess (plus one), then measure again
        start += max(1, (len(entries) - start) * (len(raw) - BLOCK_MAX_BYTES) // len(raw) + 1)
        start = min(start, len(entries) - 1)
        raw = dumps(list(entries[start:]))
    return raw


# ------------------------------------------------------------------------ block owner


def block_candidates(
    entries: Sequence[Mapping[str, Any]],
    person: Person,
    anchor_key: str,
    master: str,
    rules: matching.Rules,
    *,
    limit: int = CANDIDATES_PER_REPLY,
    load: Callable[[Mapping[str, Any]], Person] = person_from_json,
) -> list[dict[str, Any]]:
    """The entries of a block that ``person`` (identity ``anchor_key`` under ``master``) may
    be: for each other identity, its best view if that scores in the review band or above
    (not vetoed by a guard nor a different verified 身份证), best first, at most ``limit``."""
    found: list[tuple[int, float, dict[str, Any]]] = []
    for e in entries:
        if e.get("anchor") == anchor_key or e.get("master_patient_id") == master:
            continue
        best: tuple[int, float, dict[str, Any]] | None = None
        for view in entry_views(e):
            other = load(view)
            if matching.identity_rule(person, other) == "veto":
                continue  # two people's own cards: decide() would never link them
            s = matching.score(person, other, rules)
            if s.outcome == "none":
                continue
            cand = (_RANK[s.outcome], s.total, view)
            if best is None or cand[:2] > best[:2]:
                best = cand
        if best is not None:
            found.append(
                (
                    best[0],
                    best[1],
                    {
                        "master_patient_id": e["master_patient_id"],
                        "anchor": {
                            "key": e.get("anchor"),
                            "rank": e.get("anchor_rank"),
                            "kind": e.get("anchor_kind"),
                        },
                        "since": e.get("since", 0.0),
                        "person": best[2],
                    },
                )
            )
    found.sort(key=lambda t: (-t[0], -t[1]))
    return [c for _, _, c in found[:limit]]


def own_since(entries: Sequence[Mapping[str, Any]], anchor_key: str) -> float | None:
    """When the block first saw identity ``anchor_key``, if it holds it."""
    for e in entries:
        if e.get("anchor") == anchor_key:
            return float(e.get("since", 0.0))
    return None


def legacy_distinct(entries: Sequence[Mapping[str, Any]], anchor_key: str) -> list[str]:
    """The masters a steward rejected for ``anchor_key`` in a block of the old layout."""
    for e in entries:
        if e.get("anchor") == anchor_key:
            return list(e.get("distinct", []))
    return []


# ---------------------------------------------------------------------------- decider


def probe_header(
    *,
    gather_id: str,
    keys: Sequence[str],
    decider: str,
    anchor: Mapping[str, Any],
    master: str,
    person: Mapping[str, Any],
    since: float,
    envelope: Mapping[str, Any],
) -> dict[str, Any]:
    """What every probe and reply of one gather carries."""
    return {
        "id": gather_id,
        "n": len(keys),
        "keys": list(keys),
        "decider": decider,
        "anchor": dict(anchor),
        "master_patient_id": master,
        "person": dict(person),
        "since": since,
        "envelope": dict(envelope),
    }


def new_decider_state() -> dict[str, Any]:
    return {"distinct": [], "gathers": {}, "done": []}


@dataclass(frozen=True, slots=True)
class ReplyOutcome:
    """What one reply did at the decider: ``state`` to store; ``finished`` the complete
    gather (header, candidates, the identity's earliest ``since``) when this reply was
    its last; ``kind`` is ``pending``, ``complete``, ``duplicate`` or ``dropped`` (a gather
    pushed out by newer ones, which decides nothing)."""

    state: dict[str, Any]
    finished: dict[str, Any] | None
    kind: str
    dropped: int = 0


def add_reply(state: Mapping[str, Any] | None, reply: Mapping[str, Any]) -> ReplyOutcome:
    """Take one block owner's reply (``{gather, index, candidates, since?, distinct?}``)."""
    st: dict[str, Any] = dict(state) if state else new_decider_state()
    st["gathers"] = dict(st.get("gathers", {}))
    st["done"] = list(st.get("done", []))
    header = reply["gather"]
    gid, index = header["id"], int(reply["index"])
    if reply.get("distinct"):
        st["distinct"] = add_distinct(st.get("distinct", []), *reply["distinct"])
    if gid in st["done"]:
        return ReplyOutcome(st, None, "duplicate")
    g = st["gathers"].get(gid)
    if g is None:
        g = {"header": header, "got": [], "candidates": [], "since": header["since"]}
    else:
        g = {**g, "got": list(g["got"]), "candidates": list(g["candidates"])}
    if index in g["got"]:
        return ReplyOutcome(st, None, "duplicate")
    g["got"].append(index)
    seen = {(c["master_patient_id"], dumps(c["person"])) for c in g["candidates"]}
    for c in reply.get("candidates", []):
        k = (c["master_patient_id"], dumps(c["person"]))
        if k not in seen:
            seen.add(k)
            g["candidates"].append(c)
    if reply.get("since") is not None:
        g["since"] = min(g["since"], reply["since"])
    if len(g["got"]) >= int(header["n"]):
        st["gathers"].pop(gid, None)
        st["done"] = [*st["done"], gid][-DONE_PER_DECIDER:]
        return ReplyOutcome(st, g, "complete")
    st["gathers"][gid] = g
    dropped = 0
    while len(st["gathers"]) > GATHERS_PER_DECIDER:
        oldest = next(iter(st["gathers"]))
        del st["gathers"][oldest]
        st["done"] = [*st["done"], oldest][-DONE_PER_DECIDER:]
        dropped += 1
    return ReplyOutcome(st, None, "pending", dropped)


def add_distinct(distinct: Sequence[str], *masters: str) -> list[str]:
    """A decider's rejected masters with ``masters`` added (bounded, newest kept)."""
    out = [m for m in distinct if m not in masters]
    out.extend(dict.fromkeys(masters))
    return out[-DISTINCT_LIMIT:]


def gathered_candidates(
    finished: Mapping[str, Any], distinct: Sequence[str]
) -> list[tuple[str, Person]]:
    """``(master id, person)`` pairs for :func:`matching.decide`: the union of the replies,
    without the identity's own master and the masters a steward rejected for it."""
    own = finished["header"]["master_patient_id"]
    skip = {own, *distinct}
    return [
        (c["master_patient_id"], person_from_json(c["person"]))
        for c in finished["candidates"]
        if c["master_patient_id"] not in skip
    ]


@dataclass(frozen=True, slots=True)
class Link:
    """Who moves on an auto-link: the identity ``anchor`` (``{key, rank, kind}``) is
    claimed for ``master``."""

    anchor: dict[str, Any]
    master: str


def link_direction(finished: Mapping[str, Any], master: str) -> Link:
    """The claim an auto-link to ``master`` makes.

    Normally the incoming identity joins ``master``. Two *singletons* — identities still
    on the master their own anchor created, nobody else linked in — whose gathers run at
    once can each find the other first (their probes reach the blocks in different
    orders); both joining the other would swap them. So between two singletons the
    younger identity (later ``since``, then the larger anchor key) joins the older's
    master, whichever decider sees the pair: both make the same claim.
    """
    header = finished["header"]
    me = dict(header["anchor"])
    mine = header["master_patient_id"]
    others = [c for c in finished["candidates"] if c["master_patient_id"] == master]
    if (
        not minted_from(mine, me["key"])
        or len({c["anchor"]["key"] for c in others}) != 1
        or not minted_from(master, str(others[0]["anchor"]["key"]))
        or others[0]["anchor"].get("rank") is None
    ):
        return Link(me, master)
    them = dict(others[0]["anchor"])
    if (float(others[0].get("since", 0.0)), them["key"]) <= (float(finished["since"]), me["key"]):
        return Link(me, master)
    return Link(them, mine)
