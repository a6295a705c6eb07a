"""Master patients over time: records, merges, unmerges, and the history of each.

One owner per master patient id keeps a :class:`MasterState`: the master it is merged into
(if any), the *root* it resolves to (the surviving master at the top of its merge chain), the
masters merged into it, and a history of what stewards did (the last :data:`HISTORY_LIMIT`
entries) — a bounded value. Which canonical records belong to the master's own identities
(record id → the anchor identifier's keyed hash) is kept apart, one table entry per record
(``master_records``, see :mod:`services.patient_index.app`), so nothing that grows with a
patient's history is rewritten whole: the functions here take the records they need as a
mapping and return the entries to add and remove in their :class:`Step`.

Every record passes its identity's master on the way to the index stage, which stamps it with
that master's root — so a record posted after a merge is published under the surviving id.
A merge, an unmerge or a change of a root further up re-publishes the master's records
(*remaster*), and passes the new root down to the masters merged into it, each of which does
the same. All messages about one record then come from one owner, in order.

A record can reach its master *after* its identifier has left that master: the ``route``
stage resolves a record in place (``services.patient_index.app``), while the ``resolve``
stage of the same partition may relink the identifier a moment later and send the old master
``move-records``. The two stages share a transactional producer only when their topics have
the same partition count (faust's partition groups), and even then a send that waits for room
in the producer's buffer lets the other stage's message go first: Kafka keeps no order
between the two. The master therefore remembers the identifiers it let go
(``released``, the last :data:`RELEASED_LIMIT`) and sends a record of one back to the
identifier's owner (``stray-record``), which hands it to the master the identifier names now
(:func:`stray_message`, ``adopted``): the record ends where its identifier is, as released
records do.

A merge is two steps, so that a cycle is refused without a global lock:

1. ``merge`` goes to the **target**'s owner, which refuses if the target is itself merged
   (merge into the surviving master, never into a merged one), and otherwise adopts the
   source as a child (idempotent: a second identical merge changes nothing);
2. ``attach`` goes to the **source**'s owner, which refuses if the source is already merged
   elsewhere or the target is one of its own children (a concurrent opposite merge), and
   otherwise records the merge, publishes it, and re-publishes its records. A refusal tells
   the target to drop the child again.

Pure functions: each takes the stored state (and, where it needs them, the master's records)
and a message, and returns the new state (or ``None`` when nothing changes), the record
entries to add and remove, and the messages to send. The agent sends and stores them in one
Kafka transaction.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

#: Rank of an identifier a data steward linked or unlinked: above any automatic evidence, so
#: no later claim moves it back.
STEWARD_RANK = 100
#: History entries kept per master (the oldest drop out first; the events stay on Kafka).
HISTORY_LIMIT = 200
#: Records per ``records-released`` / ``adopt-records`` message: a relink of an identifier
#: with many records sends several messages, none near Kafka's message size limit.
RELEASE_CHUNK = 1000
#: Identifiers a master remembers having let go (newest last; the oldest drop out first).
RELEASED_LIMIT = 64
#: Types of master messages whose step needs the master's records (a prefix scan).
NEEDS_RECORDS = frozenset({"attach", "unmerge", "set-root", "move-records"})

StewardEventKind = Literal[
    "merged",
    "unmerged",
    "merge-rejected",
    "linked",
    "unlinked",
    "review-confirmed",
    "review-rejected",
]


class HistoryEntry(BaseModel):
    model_config = ConfigDict(frozen=True)

    at: datetime
    action: str
    other_master_patient_id: str | None = None
    command_id: str
    actor: str = ""
    reason: str = ""


class MasterState(BaseModel):
    """What the owner of one master patient id knows about it."""

    model_config = ConfigDict(frozen=True)

    master_patient_id: str
    merged_into: str | None = None
    root: str
    children: tuple[str, ...] = ()
    history: tuple[HistoryEntry, ...] = ()
    #: keyed hashes of identifiers that left this master (``move-records``), newest last
    released: tuple[str, ...] = ()

    @classmethod
    def new(cls, master: str) -> MasterState:
        return cls(master_patient_id=master, root=master)

    @classmethod
    def load(cls, raw: bytes | str) -> tuple[MasterState, dict[str, str]]:
        """A stored value, and the records it still lists if it was written in the layout
        before one entry per record (``records``: record id → anchor key), else ``{}``."""
        doc = json.loads(raw)
        legacy = doc.pop("records", None) or {}
        return cls.model_validate(doc), {str(r): str(a) for r, a in dict(legacy).items()}

    def public_view(self, records: int | None) -> dict[str, Any]:
        """What a steward sees: no identifier, only ids, counts and history (``records``:
        how many records the master's own identities hold; ``None`` when not counted)."""
        return {
            "master_patient_id": self.master_patient_id,
            "status": "merged" if self.merged_into else "active",
            "merged_into": self.merged_into,
            "surviving_master_patient_id": self.root,
            "merged_from": list(self.children),
            "records": records,
            "history": [h.model_dump(mode="json") for h in self.history],
        }


@dataclass(frozen=True, slots=True)
class Command:
    """Who asked for a steward action, and why (carried by every message it causes)."""

    command_id: str
    actor: str = ""
    reason: str = ""

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Command:
        return cls(doc["command_id"], doc.get("actor", ""), doc.get("reason", ""))

    def to_json(self) -> dict[str, str]:
        return {"command_id": self.command_id, "actor": self.actor, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class Send:
    """A message for another stage: ``to`` is ``master`` (keyed by a master id),
    ``record`` (keyed by a record id) or ``identity`` (keyed by an identifier's keyed hash)."""

    to: Literal["master", "record", "identity"]
    key: str
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class StewardEvent:
    """An identity-linked event caused by a steward (or refused for one)."""

    kind: StewardEventKind
    master_patient_id: str
    command: Command
    previous_master_patient_id: str | None = None
    competing_master_patient_id: str | None = None
    detail: str = ""

    def payload(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "master_patient_id": self.master_patient_id,
            "previous_master_patient_id": self.previous_master_patient_id,
            "competing_master_patient_id": self.competing_master_patient_id,
            "evidence": {
                "rule": "steward",
                "command_id": self.command.command_id,
                "actor": self.command.actor,
                "reason": self.command.reason,
                "detail": self.detail,
            },
        }


@dataclass(frozen=True, slots=True)
class Step:
    state: MasterState | None  # to store, or None: unchanged
    sends: list[Send] = field(default_factory=list)
    events: list[StewardEvent] = field(default_factory=list)
    #: record entries of this master to write (record id → anchor key)
    add: dict[str, str] = field(default_factory=dict)
    #: record entries of this master to delete
    remove: list[str] = field(default_factory=list)


def _now() -> datetime:
    return datetime.now(UTC)


def _with_history(
    st: MasterState, action: str, cmd: Command, other: str | None, **update: Any
) -> MasterState:
    entry = HistoryEntry(
        at=_now(),
        action=action,
        other_master_patient_id=other,
        command_id=cmd.command_id,
        actor=cmd.actor,
        reason=cmd.reason,
    )
    return st.model_copy(update={**update, "history": (*st.history, entry)[-HISTORY_LIMIT:]})


def _remaster(st: MasterState, record_ids: Any) -> list[Send]:
    """Re-publish records (the ids given: all of the master's, or those moved in) under its
    root."""
    return [
        Send("record", rid, {"type": "remaster", "master_patient_id": st.root})
        for rid in record_ids
    ]


def _cascade(st: MasterState) -> list[Send]:
    """Tell every master merged into this one where it now resolves to."""
    return [Send("master", c, {"type": "set-root", "root": st.root}) for c in st.children]


def unlinked_master_id(identifier_key: str, command_id: str) -> str:
    """The fresh master an unlinked identifier gets (same command → same id on redelivery)."""
    digest = hashlib.sha256(f"unlink:{identifier_key}:{command_id}".encode()).hexdigest()
    return f"MP{digest[:24]}"


# ── records ─────────────────────────────────────────────────────────────────────────────


def add_record(
    st: MasterState | None,
    master: str,
    record_id: str,
    anchor: str,
    known: str | None,
    message: Mapping[str, Any] | None = None,
) -> Step:
    """A record of this master's identity ``anchor``: remember it (``known``: the anchor its
    entry holds now, if any) and publish it under the root (when ``message``, the ``record``
    message, is given). The state is stored only when new.

    A record of an identifier this master let go is not its own: it goes back to the
    identifier's owner instead (``stray-record``), unless that owner sent it (``adopted``),
    which makes the identifier this master's again."""
    if st is not None and anchor in st.released:
        if message is not None and not message.get("adopted"):
            body = {k: v for k, v in message.items() if k != "type"}
            return Step(None, [Send("identity", anchor, {"type": "stray-record", **body})])
        new: MasterState | None = _unreleased(st, {anchor})
    else:
        new = None if st is not None else MasterState.new(master)
    cur = new or st or MasterState.new(master)
    sends = []
    if message is not None:
        record = {**message["record"], "master_patient_id": cur.root}
        sends.append(
            Send(
                "record",
                record_id,
                {"type": "record", "record": record, "source": message["source"]},
            )
        )
    return Step(new, sends, add={} if known == anchor else {record_id: anchor})


def _unreleased(st: MasterState, anchors: set[str]) -> MasterState | None:
    """``st`` without ``anchors`` among its released identifiers (``None``: none was)."""
    if not anchors.intersection(st.released):
        return None
    return st.model_copy(update={"released": tuple(a for a in st.released if a not in anchors)})


def stray_message(current_master: str | None, stray: dict[str, Any]) -> Send:
    """At the identifier's owner: a record its old master got after the identifier left
    goes to the master the identifier names now, as that master's own (``adopted``)."""
    target = current_master or str(stray["record"]["master_patient_id"])
    body = {k: v for k, v in stray.items() if k != "type"}
    return Send("master", target, {**body, "type": "record", "adopted": True})


def _chunks(records: Mapping[str, str]) -> list[dict[str, str]]:
    items = sorted(records.items())
    return [dict(items[i : i + RELEASE_CHUNK]) for i in range(0, len(items), RELEASE_CHUNK)]


def move_records(
    st: MasterState | None, master: str, anchor: str, records: Mapping[str, str]
) -> Step:
    """An identifier left this master (a claim relinked it, a steward linked or unlinked it):
    its records leave too. They go back to the identifier's owner (``records-released``),
    which hands them to the master the identifier names *when it gets them*
    (:func:`adopt_message`) — so however many relinks happen meanwhile, and in whatever
    order their messages reach the masters, the records end where the identifier is.
    The master remembers the identifier, so that a record of it that arrives later is sent
    back the same way (:func:`add_record`). ``records``: every record of this master (record
    id → anchor key)."""
    cur = st or MasterState.new(master)
    released = (*(a for a in cur.released if a != anchor), anchor)[-RELEASED_LIMIT:]
    new = None if released == cur.released else cur.model_copy(update={"released": released})
    moved = {r: a for r, a in records.items() if a == anchor}
    sends = [
        Send("identity", anchor, {"type": "records-released", "records": part, "from": master})
        for part in _chunks(moved)
    ]
    return Step(new, sends, remove=sorted(moved))


def adopt_message(current_master: str | None, released: dict[str, Any]) -> Send:
    """At the identifier's owner: records a master released go to the master the identifier
    names now (back to the releasing master if the identifier is unknown, which cannot
    happen for an identifier that anchored records — it never loses its master)."""
    target = current_master or str(released["from"])
    return Send("master", target, {"type": "adopt-records", "records": released["records"]})


def adopt_records(st: MasterState | None, master: str, records: dict[str, str]) -> Step:
    """Records an identifier brought along: this master's now, its identifier too."""
    if st is None:
        new: MasterState | None = MasterState.new(master)
    else:
        new = _unreleased(st, set(records.values()))
    cur = new or st or MasterState.new(master)
    return Step(new, _remaster(cur, records), add=dict(records))


# ── merge, unmerge ──────────────────────────────────────────────────────────────────────


def merge_request(st: MasterState | None, target: str, source: str, cmd: Command) -> Step:
    """Step 1, at the target's owner."""
    cur = st or MasterState.new(target)
    if source == target:
        return Step(None, events=[StewardEvent("merge-rejected", source, cmd, detail="same")])
    if cur.merged_into is not None:
        detail = f"target is merged into {cur.merged_into}; merge into that master"
        event = StewardEvent(
            "merge-rejected", source, cmd, competing_master_patient_id=target, detail=detail
        )
        return Step(None, events=[event])
    if source in cur.children:  # the same merge again: nothing to do
        return Step(None)
    new = _with_history(cur, "merged-from", cmd, source, children=(*cur.children, source))
    body = {"type": "attach", "parent": target, "root": cur.root, **cmd.to_json()}
    return Step(new, [Send("master", source, body)])


def attach(
    st: MasterState | None,
    source: str,
    parent: str,
    root: str,
    cmd: Command,
    records: Mapping[str, str],
) -> Step:
    """Step 2, at the source's owner (``records``: the source's own)."""
    cur = st or MasterState.new(source)
    if cur.merged_into == parent:
        return Step(None)
    refusal = None
    if cur.merged_into is not None:
        refusal = f"source is already merged into {cur.merged_into}"
    elif parent in cur.children or root == source:
        refusal = "target is merged into the source (a merge the other way round)"
    if refusal is not None:
        return Step(
            None,
            [
                Send(
                    "master",
                    parent,
                    {"type": "detach-child", "child": source, "refused": True, **cmd.to_json()},
                )
            ],
            [
                StewardEvent(
                    "merge-rejected",
                    source,
                    cmd,
                    competing_master_patient_id=parent,
                    detail=refusal,
                )
            ],
        )
    new = _with_history(cur, "merged-into", cmd, parent, merged_into=parent, root=root)
    event = StewardEvent("merged", parent, cmd, previous_master_patient_id=source)
    return Step(new, _remaster(new, records) + _cascade(new), [event])


def set_root(st: MasterState | None, master: str, root: str, records: Mapping[str, str]) -> Step:
    cur = st or MasterState.new(master)
    if cur.root == root:
        return Step(None)
    new = cur.model_copy(update={"root": root})
    return Step(new, _remaster(new, records) + _cascade(new))


def unmerge(st: MasterState | None, source: str, cmd: Command, records: Mapping[str, str]) -> Step:
    """Undo the merge of ``source``: its records are its own again, and its children's."""
    if st is None or st.merged_into is None:
        return Step(None)  # not merged (or unmerged already): nothing to undo
    parent = st.merged_into
    new = _with_history(st, "unmerged-from", cmd, parent, merged_into=None, root=source)
    event = StewardEvent("unmerged", source, cmd, previous_master_patient_id=parent)
    detach = {"type": "detach-child", "child": source, "refused": False, **cmd.to_json()}
    sends = [Send("master", parent, detach)]
    return Step(new, sends + _remaster(new, records) + _cascade(new), [event])


def detach_child(st: MasterState | None, child: str, cmd: Command, *, refused: bool) -> Step:
    """The child left (unmerged), or refused the merge this master had started."""
    if st is None or child not in st.children:
        return Step(None)
    children = tuple(c for c in st.children if c != child)
    action = "merge-refused-by-source" if refused else "unmerged-child"
    return Step(_with_history(st, action, cmd, child, children=children))


def apply(
    st: MasterState | None,
    master: str,
    msg: dict[str, Any],
    records: Mapping[str, str] | None = None,
) -> Step:
    """The step for one message to the owner of ``master`` (every type but ``record``).
    ``records``: every record of the master, needed by the types in :data:`NEEDS_RECORDS`."""
    kind = msg["type"]
    if kind in NEEDS_RECORDS and records is None:
        raise ValueError(f"a {kind!r} message needs the master's records")
    mine: Mapping[str, str] = records or {}
    if kind == "merge":
        return merge_request(st, master, msg["source"], Command.from_json(msg))
    if kind == "attach":
        return attach(st, master, msg["parent"], msg["root"], Command.from_json(msg), mine)
    if kind == "unmerge":
        return unmerge(st, master, Command.from_json(msg), mine)
    if kind == "detach-child":
        return detach_child(st, msg["child"], Command.from_json(msg), refused=msg["refused"])
    if kind == "set-root":
        return set_root(st, master, msg["root"], mine)
    if kind == "move-records":
        return move_records(st, master, msg["anchor"], mine)
    if kind == "adopt-records":
        return adopt_records(st, master, msg["records"])
    raise ValueError(f"unknown master message type {kind!r}")
