"""Merges, unmerges and record moves as the owners of master ids apply them (pure).

A master's records are kept apart from its state, one entry per record (the agent's
``master_records`` table); here ``Owners.records`` plays that table."""

from __future__ import annotations

from typing import Any

from services.patient_index import stewardship as sw
from services.patient_index.stewardship import Command, MasterState, Send

A, B, C = "MP" + "a" * 24, "MP" + "b" * 24, "MP" + "c" * 24
CMD = Command("cmd-1", "steward-x", "same person, checked by phone")


class Owners:
    """Every master's owner, with a queue of the messages between them (in order)."""

    def __init__(self) -> None:
        self.state: dict[str, MasterState | None] = {}
        #: the master_records table: master → record id → anchor key
        self.records: dict[str, dict[str, str]] = {}
        self.remastered: list[tuple[str, str]] = []  # (record id, master) in publish order
        self.events: list[sw.StewardEvent] = []
        #: the identities table: identifier key → the master it names now
        self.identities: dict[str, str] = {}

    def get(self, m: str) -> MasterState | None:
        return self.state.get(m)

    def apply(self, m: str, step: sw.Step) -> list[tuple[str, dict[str, Any]]]:
        if step.state is not None:
            self.state[m] = step.state
        mine = self.records.setdefault(m, {})
        mine.update(step.add)
        for rid in step.remove:
            del mine[rid]
        self.events.extend(step.events)
        out: list[tuple[str, dict[str, Any]]] = []
        for s in step.sends:
            if s.to == "record" and s.body["type"] == "record":  # published
                self.remastered.append((s.key, s.body["record"]["master_patient_id"]))
            elif s.to == "record":
                self.remastered.append((s.key, s.body["master_patient_id"]))
            elif s.to == "identity":  # the identifier's owner hands them on at once
                hand_on = sw.stray_message if s.body["type"] == "stray-record" else sw.adopt_message
                adopt = hand_on(self.identities.get(s.key), s.body)
                out.append((adopt.key, adopt.body))
            else:
                out.append((s.key, s.body))
        return out

    def deliver(self, m: str, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        if body["type"] == "record":  # as the master stage does
            rid = body["record"]["record_id"]
            known = self.records.get(m, {}).get(rid)
            return self.apply(m, sw.add_record(self.get(m), m, rid, body["anchor"], known, body))
        return self.apply(m, sw.apply(self.get(m), m, body, dict(self.records.get(m, {}))))

    def published_under(self, rid: str) -> str:
        """The master the record was last published under."""
        return [m for r, m in self.remastered if r == rid][-1]

    def run(self, m: str, body: dict[str, Any]) -> None:
        """Deliver and then deliver everything that causes, until quiet."""
        queue = [(m, body)]
        while queue:
            target, msg = queue.pop(0)
            queue.extend(self.deliver(target, msg))

    def record(self, m: str, rid: str, anchor: str) -> str:
        """A record of ``m``'s identity: the master it is published under."""
        step = sw.add_record(self.get(m), m, rid, anchor, self.records.get(m, {}).get(rid))
        self.apply(m, step)
        st = self.get(m)
        assert st is not None
        return st.root


def merge(source: str, target: str) -> dict[str, Any]:
    return {"type": "merge", "source": source, **CMD.to_json()}


def unmerge() -> dict[str, Any]:
    return {"type": "unmerge", **CMD.to_json()}


def test_merge_republishes_the_source_records_under_the_target() -> None:
    o = Owners()
    assert o.record(A, "r-a", "id-a") == A
    assert o.record(B, "r-b1", "id-b") == B
    assert o.record(B, "r-b2", "id-b") == B
    o.run(A, merge(B, A))
    assert sorted(o.remastered) == [("r-b1", A), ("r-b2", A)]
    assert [(e.kind, e.master_patient_id, e.previous_master_patient_id) for e in o.events] == [
        ("merged", A, B)
    ]
    # a record posted for B's identity after the merge is published under A
    assert o.record(B, "r-b3", "id-b") == A
    view = o.state[B].public_view(len(o.records[B]))  # type: ignore[union-attr]
    assert view["status"] == "merged" and view["surviving_master_patient_id"] == A
    assert view["history"][0]["reason"] == "same person, checked by phone"
    assert view["records"] == 3
    assert o.state[A].public_view(1)["merged_from"] == [B]  # type: ignore[union-attr]


def test_the_same_merge_twice_changes_nothing_the_second_time() -> None:
    o = Owners()
    o.record(B, "r-b", "id-b")
    o.run(A, merge(B, A))
    before = (list(o.remastered), list(o.events), dict(o.state), repr(o.records))
    o.run(A, merge(B, A))
    assert (o.remastered, o.events, o.state, repr(o.records)) == before


def test_merge_then_unmerge_restores_both() -> None:
    o = Owners()
    o.record(A, "r-a", "id-a")
    o.record(B, "r-b", "id-b")
    o.run(A, merge(B, A))
    o.remastered.clear()
    o.run(B, unmerge())
    assert o.remastered == [("r-b", B)]  # only B's records move back; A's never moved
    assert o.record(B, "r-b2", "id-b") == B
    assert o.record(A, "r-a2", "id-a") == A
    assert o.state[A].children == ()  # type: ignore[union-attr]
    assert [e.kind for e in o.events] == ["merged", "unmerged"]
    actions = [h.action for h in o.state[A].history]  # type: ignore[union-attr]
    assert actions == ["merged-from", "unmerged-child"]


def test_unmerging_a_master_that_is_not_merged_does_nothing() -> None:
    o = Owners()
    o.record(B, "r-b", "id-b")
    o.run(B, unmerge())
    assert o.remastered == [] and o.events == []


def test_merging_into_a_merged_master_is_refused_with_the_survivor_named() -> None:
    o = Owners()
    o.run(A, merge(B, A))
    o.run(B, merge(C, B))
    [refused] = [e for e in o.events if e.kind == "merge-rejected"]
    assert refused.master_patient_id == C and A in refused.detail
    assert o.get(C) is None or o.state[C].merged_into is None  # type: ignore[union-attr]


def test_opposite_merges_at_the_same_time_never_make_a_cycle() -> None:
    o = Owners()
    # both requests reach their targets before either attach is delivered
    to_b = o.deliver(A, merge(B, A))  # attach B to A, pending
    to_a = o.deliver(B, merge(A, B))  # attach A to B, pending
    for target, body in to_b + to_a:
        o.run(target, body)
    a, b = o.state[A], o.state[B]
    assert a is not None and b is not None
    # the first attach finds the other merge pending and refuses; the second then holds
    assert (b.merged_into, a.merged_into) == (None, B)
    assert (a.children, b.children) == ((), (A,))
    assert [e.kind for e in o.events] == ["merge-rejected", "merged"]


def test_a_merge_further_up_reaches_the_records_of_masters_merged_before() -> None:
    o = Owners()
    o.record(C, "r-c", "id-c")
    o.run(B, merge(C, B))  # C into B
    o.run(A, merge(B, A))  # then B (with C) into A
    assert ("r-c", A) in o.remastered
    assert o.record(C, "r-c2", "id-c") == A
    o.remastered.clear()
    o.run(B, unmerge())  # B leaves A: C follows B, not A
    assert o.remastered == [("r-c", B), ("r-c2", B)]
    assert o.record(C, "r-c3", "id-c") == B


def test_an_unlinked_identifier_takes_its_records_to_its_new_master() -> None:
    o = Owners()
    o.record(A, "r-card", "id-card")
    o.record(A, "r-mz", "id-mz")
    new = sw.unlinked_master_id("id-mz", "cmd-9")
    o.identities["id-mz"] = new
    o.run(A, {"type": "move-records", "anchor": "id-mz"})
    assert o.remastered == [("r-mz", new)]
    assert o.records[A] == {"r-card": "id-card"}
    assert o.records[new] == {"r-mz": "id-mz"}


def test_an_unlinked_master_id_is_the_same_on_redelivery_and_new_per_command() -> None:
    assert sw.unlinked_master_id("k", "c1") == sw.unlinked_master_id("k", "c1")
    assert sw.unlinked_master_id("k", "c1") != sw.unlinked_master_id("k", "c2")
    assert sw.unlinked_master_id("k", "c1").startswith("MP")
    assert len(sw.unlinked_master_id("k", "c1")) == len(A)


def test_a_known_record_again_does_not_rewrite_the_state() -> None:
    first = sw.add_record(None, A, "r", "id", None)
    assert first.state is not None and first.add == {"r": "id"}
    again = sw.add_record(first.state, A, "r", "id", "id")
    assert again.state is None and again.add == {} and again.remove == []
    # a new record of a known master writes its own entry, never the master's state
    other = sw.add_record(first.state, A, "r2", "id", None)
    assert other.state is None and other.add == {"r2": "id"}


def test_a_state_of_the_old_layout_is_read_with_its_records() -> None:
    """A value written before one entry per record still lists the records: read them."""
    import json

    old = {"master_patient_id": A, "root": A, "records": {"r1": "id-a", "r2": "id-b"}}
    st, legacy = MasterState.load(json.dumps(old).encode())
    assert st == MasterState.new(A)
    assert legacy == {"r1": "id-a", "r2": "id-b"}
    assert "records" not in json.loads(st.model_dump_json())
    assert MasterState.load(st.model_dump_json())[1] == {}


def test_many_records_move_in_bounded_messages() -> None:
    """A relinked identifier with many records releases them in chunks, none too big."""
    o = Owners()
    many = 2 * sw.RELEASE_CHUNK + 5
    for i in range(many):
        o.record(B, f"r{i:05d}", "id-b")
    o.record(B, "r-other", "id-o")
    o.identities["id-b"] = A
    step = sw.apply(o.get(B), B, {"type": "move-records", "anchor": "id-b"}, o.records[B])
    assert len(step.remove) == many
    assert step.state is not None and step.state.released == ("id-b",)  # remembered
    assert [len(s.body["records"]) for s in step.sends] == [
        sw.RELEASE_CHUNK,
        sw.RELEASE_CHUNK,
        5,
    ]
    o.run(B, {"type": "move-records", "anchor": "id-b"})
    assert o.records[B] == {"r-other": "id-o"}
    assert len(o.records[A]) == many
    assert {m for r, m in o.remastered} == {A} and len(o.remastered) == many


def test_a_step_that_needs_the_records_refuses_to_run_without_them() -> None:
    import pytest

    with pytest.raises(ValueError, match="records"):
        sw.apply(None, A, {"type": "set-root", "root": B})


def test_steward_events_name_the_command_and_never_an_identifier() -> None:
    ev = sw.StewardEvent("merged", A, CMD, previous_master_patient_id=B)
    payload = ev.payload()
    assert payload["evidence"] == {
        "rule": "steward",
        "command_id": "cmd-1",
        "actor": "steward-x",
        "reason": "same person, checked by phone",
        "detail": "",
    }
    assert Send("master", A, {}).to == "master"


def test_every_identity_event_matches_the_published_json_schema() -> None:
    import json

    import jsonschema

    from services.patient_index.identity import LinkEvent
    from tests.conftest import REPO

    schema = json.loads(
        (REPO / "docs" / "schemas" / "identity-linked.v1.json").read_text(encoding="utf-8")
    )
    validator = jsonschema.Draft202012Validator(schema)
    payloads = [
        LinkEvent("new", A, "id_card", 50).payload(),
        LinkEvent("relinked", A, "local", 20, previous_master_patient_id=B).payload(),
        LinkEvent("review", A, "local", 10, competing_master_patient_id=B).payload(),
    ]
    o = Owners()
    o.record(B, "r-b", "id-b")
    o.run(A, merge(B, A))
    o.run(B, unmerge())
    o.run(B, merge(B, B))
    payloads += [e.payload() for e in o.events]
    kinds = {p["kind"] for p in payloads}
    assert kinds == {"new", "relinked", "review", "merged", "unmerged", "merge-rejected"}
    for payload in payloads:
        validator.validate(payload)
    # a raw identifier would fail: the schema admits only master ids and kinds
    bad = dict(payloads[0], master_patient_id="110105198503170011")
    assert not validator.is_valid(bad)


# ── relinks: records follow their identifier, whatever the order ─────────────────────────


def test_a_claim_that_relinks_an_identifier_sends_its_old_master_move_records() -> None:
    from services.patient_index.identity import IdentityState, Keyed, apply_claim

    held = IdentityState(master_patient_id=B, rank=10, kind="local")
    result = apply_claim(held, A, Keyed("id-b", 10, "local"), 20)  # a probabilistic auto-link
    assert result.event is not None and result.event.kind == "relinked"
    assert result.records_follow("id-b") == (B, {"type": "move-records", "anchor": "id-b"})
    # no move when nothing moved: a first claim, the same master again, a conflict
    assert apply_claim(None, A, Keyed("id-b", 10, "local"), 20).records_follow("id-b") is None
    same = IdentityState(master_patient_id=A, rank=10, kind="local")
    assert apply_claim(same, A, Keyed("id-b", 10, "local"), 20).records_follow("id-b") is None
    strong = IdentityState(master_patient_id=B, rank=50, kind="local")
    assert apply_claim(strong, A, Keyed("id-b", 10, "local"), 20).records_follow("id-b") is None


def test_a_result_published_just_before_an_auto_link_follows_the_patient_to_the_survivor() -> None:
    """Issue 14, finding 6: hospital B's 劉洋 is auto-linked to hospital X's 刘洋 (master A);
    B's own blood count, published under B's first master just before, moves to A."""
    from services.patient_index.identity import IdentityState, Keyed, apply_claim

    o = Owners()
    o.identities["id-b"] = B
    assert o.record(B, "r-b", "id-b") == B  # published under B
    result = apply_claim(
        IdentityState(master_patient_id=B, rank=10, kind="local"), A, Keyed("id-b", 10, "local"), 20
    )
    assert result.state is not None
    o.identities["id-b"] = result.state.master_patient_id
    follow = result.records_follow("id-b")
    assert follow is not None
    o.run(*follow)
    assert o.published_under("r-b") == A
    assert o.records[B] == {}
    assert o.records[A] == {"r-b": "id-b"}
    # a record of that identity resolved after the link goes to A directly
    assert o.record(A, "r-b2", "id-b") == A


def test_two_relinks_in_quick_succession_leave_the_records_with_the_last_master() -> None:
    """B → A (auto-link), then a steward links the identifier on to C before B's owner has
    released anything: in either order of the two move-records, the records end under C."""
    for c_first in (True, False):
        o = Owners()
        o.identities["id-b"] = B
        o.record(B, "r-b", "id-b")
        o.identities["id-b"] = A  # the claim: move-records to B, pending
        o.identities["id-b"] = C  # the steward link: move-records to A, pending
        pending = [(B, {"type": "move-records", "anchor": "id-b"})]
        to_a = (A, {"type": "move-records", "anchor": "id-b"})
        pending = [to_a, *pending] if c_first else [*pending, to_a]
        for target, body in pending:
            o.run(target, body)
        assert o.published_under("r-b") == C, c_first
        assert {m for m, recs in o.records.items() if recs} == {C}


def test_records_follow_an_identifier_that_is_linked_away_and_back() -> None:
    o = Owners()
    o.identities["id-b"] = B
    o.record(B, "r-b", "id-b")
    o.identities["id-b"] = A
    o.run(B, {"type": "move-records", "anchor": "id-b"})
    assert o.published_under("r-b") == A
    o.identities["id-b"] = B  # a steward unlinks it back
    o.run(A, {"type": "move-records", "anchor": "id-b"})
    assert o.published_under("r-b") == B
    assert o.records[B] == {"r-b": "id-b"}
    # the records it brought along make the identifier B's again: B forgot releasing it
    assert o.state[B].released == ()  # type: ignore[union-attr]


def test_a_relinked_identifier_s_records_reach_the_survivor_of_a_merge() -> None:
    o = Owners()
    o.identities["id-b"] = B
    o.record(B, "r-b", "id-b")
    o.run(C, merge(A, C))  # A was merged into C
    o.identities["id-b"] = A  # then B's identifier is auto-linked to A
    o.run(B, {"type": "move-records", "anchor": "id-b"})
    assert o.published_under("r-b") == C  # the surviving master


# ── a record that reaches its master after its identifier left ──────────────────────────


def record_message(master: str, rid: str, anchor: str) -> dict[str, Any]:
    """What the route stage sends a master for a record it resolved in place."""
    return {
        "type": "record",
        "anchor": anchor,
        "record": {"record_id": rid, "master_patient_id": master, "code": "718-7"},
        "source": "H1",
    }


def test_a_record_resolved_just_before_its_identifier_was_relinked_follows_the_identifier() -> None:
    """The route stage stamped B on a record of id-b a moment before the resolve stage
    relinked id-b to A; B's move-records overtook the record (two producers, no order).
    Before the fix B kept the record — published under a master with no identifier left."""
    o = Owners()
    o.identities["id-b"] = B
    assert o.record(B, "r-1", "id-b") == B
    o.identities["id-b"] = A
    o.run(B, {"type": "move-records", "anchor": "id-b"})  # first: r-1 moves to A
    o.run(B, record_message(B, "r-2", "id-b"))  # then the late record
    assert o.published_under("r-1") == A
    assert o.published_under("r-2") == A
    assert [rid for rid, _ in o.remastered].count("r-2") == 1  # published once, by A
    assert o.records[B] == {}
    assert o.records[A] == {"r-1": "id-b", "r-2": "id-b"}
    # its body went along untouched, only the master stamped
    step = sw.add_record(o.get(A), A, "r-3", "id-b", None, record_message(B, "r-3", "id-b"))
    assert step.sends[0].body["record"] == {
        "record_id": "r-3",
        "master_patient_id": A,
        "code": "718-7",
    }


def test_a_move_that_reaches_a_master_before_its_first_record_is_remembered_too() -> None:
    """B had no state yet: the move-records alone creates it, remembering id-b."""
    o = Owners()
    o.identities["id-b"] = A
    o.run(B, {"type": "move-records", "anchor": "id-b"})
    assert o.state[B].released == ("id-b",)  # type: ignore[union-attr]
    o.run(B, record_message(B, "r-1", "id-b"))
    assert o.published_under("r-1") == A
    assert o.records.get(B, {}) == {}


def test_an_identifier_that_comes_back_without_records_is_taken_back_at_its_first_record() -> None:
    """id-b left B and came back with nothing to bring along (no adopt-records): B's first
    record of it goes round the identifier's owner once, is adopted, and B forgets the
    release — the next record is published at once."""
    o = Owners()
    o.identities["id-b"] = A
    o.run(B, {"type": "move-records", "anchor": "id-b"})
    o.identities["id-b"] = B  # linked back; A had no record of it
    o.run(A, {"type": "move-records", "anchor": "id-b"})
    o.run(B, record_message(B, "r-1", "id-b"))
    assert o.published_under("r-1") == B
    assert o.state[B].released == ()  # type: ignore[union-attr]
    step = sw.add_record(o.get(B), B, "r-2", "id-b", None, record_message(B, "r-2", "id-b"))
    assert [s.to for s in step.sends] == ["record"]


def test_a_master_remembers_a_bounded_number_of_released_identifiers() -> None:
    st: MasterState | None = None
    for i in range(sw.RELEASED_LIMIT + 10):
        step = sw.move_records(st, B, f"id-{i}", {})
        st = step.state or st
    assert st is not None
    assert len(st.released) == sw.RELEASED_LIMIT
    assert st.released[-1] == f"id-{sw.RELEASED_LIMIT + 9}" and "id-0" not in st.released
    again = sw.move_records(st, B, st.released[-1], {})
    assert again.state is None  # the same identifier again: nothing new to store
