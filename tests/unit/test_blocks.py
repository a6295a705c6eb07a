"""The stream's blocks (services.patient_index.blocks): scenarios named by their outcome.

The matching scenarios use the shipped rules as they are.
"""

from __future__ import annotations

import itertools
from typing import Any

from services.common.codec import dumps
from services.patient_index import blocks
from services.patient_index.identity import master_id_for
from services.patient_index.matching import decide, load_rules
from services.patient_index.normalize import Person, person_from_fhir, person_to_json
from tests.fhir_samples import gb11643

RULES = load_rules()
A = "12140100MB0000001A"
B = "12140100MB0000002B"
C = "12140100MB0000003C"
MZ = "urn:oid:2.16.156.10011.1.4.2"


def patient(
    institution: str,
    name: dict[str, Any],
    *,
    mz: str = "1",
    birth: str = "1978-04-09",
    phone: str | None = None,
    address: str | None = "山西省太原市小店区长风街8号",
    gender: str = "female",
) -> Person:
    doc: dict[str, Any] = {
        "resourceType": "Patient",
        "identifier": [{"system": MZ, "value": mz}],
        "name": [name],
        "gender": gender,
        "birthDate": birth,
    }
    if phone:
        doc["telecom"] = [{"system": "phone", "value": phone}]
    if address:
        doc["address"] = [{"text": address}]
    return person_from_fhir(doc, institution)


def doc(p: Person) -> dict[str, Any]:
    """A Person as the stream carries it (decoded JSON: lists, not tuples)."""
    from services.common.codec import loads

    out: dict[str, Any] = loads(dumps(person_to_json(p)))
    return out


def anchor(key: str) -> dict[str, Any]:
    return {"key": key, "rank": 10, "kind": "hospital_no"}


def gather_at(
    entries: list[dict[str, Any]], p: Person, key: str, master: str
) -> list[tuple[str, Person]]:
    """What one block owner offers and the decider passes to ``decide``."""
    found = blocks.block_candidates(entries, p, key, master, RULES)
    header = {"master_patient_id": master}
    return blocks.gathered_candidates({"header": header, "candidates": found}, [])


# -------------------------------------------------------------------------- block keys


def test_a_person_is_filed_under_birth_date_phone_and_name_with_birth_year() -> None:
    p = patient(A, {"text": "郭晓燕"}, phone="13912345678")
    assert blocks.stream_block_keys(p) == [
        ("birth_date", "1978-04-09"),
        ("phone", "13912345678"),
        ("name_year", "guo xiao yan|1978"),  # names.name_block_key: syllables, sorted
    ]


def test_the_name_key_is_the_same_in_hanzi_pinyin_and_either_name_order() -> None:
    hanzi = patient(A, {"text": "郭晓燕"})
    pinyin = patient(B, {"family": "Guo", "given": ["Xiaoyan"]})
    western = patient(C, {"family": "Xiaoyan", "given": ["Guo"]})
    keys = [dict(blocks.stream_block_keys(p))["name_year"] for p in (hanzi, pinyin, western)]
    assert len(set(keys)) == 1


def test_a_person_without_birth_date_is_still_filed_under_the_phone() -> None:
    p = patient(A, {"text": "郭晓燕"}, phone="13912345678", birth="")
    assert blocks.stream_block_keys(p) == [("phone", "13912345678")]


# ------------------------------------------------------------------------------ views


def test_the_posting_order_of_two_records_never_decides_the_link() -> None:
    """Issue 19: hospital A posts her with a phone, then again without one; hospital C's
    pinyin record (same birth date and phone) scores 45.1 bits against the first and 29.0
    against the second. Whichever order A's two records arrive in, C links to A's master."""
    with_phone = patient(A, {"text": "郭晓燕"}, phone="13912345678")
    without = patient(A, {"text": "郭晓燕"})
    third = patient(C, {"family": "Guo", "given": ["Xiaoyan"]}, phone="13912345678", address=None)
    m_a = master_id_for("anchor-a")
    for order in itertools.permutations([with_phone, without]):
        entries: list[dict[str, Any]] = []
        for since, p in enumerate(order):
            entries = blocks.upsert(entries, anchor("anchor-a"), m_a, doc(p), float(since))
        [entry] = entries
        assert len(entry["views"]) == 2
        decision = decide(third, gather_at(entries, third, "anchor-c", "MPc"), RULES)
        assert (decision.kind, decision.master_id) == ("auto", m_a)


def test_only_the_last_record_kept_would_have_sent_her_to_review() -> None:
    """What the block did before views: the later record without a phone alone."""
    without = patient(A, {"text": "郭晓燕"})
    third = patient(C, {"family": "Guo", "given": ["Xiaoyan"]}, phone="13912345678", address=None)
    assert decide(third, [("MPa", without)], RULES).kind == "review"


def test_an_identity_keeps_a_bounded_set_of_distinct_views_newest_first() -> None:
    entries: list[dict[str, Any]] = []
    phones = [f"1391234567{i}" for i in range(6)]
    for i, phone in enumerate(phones):
        entries = blocks.upsert(
            entries, anchor("k"), "MPk", doc(patient(A, {"text": "郭晓燕"}, phone=phone)), i
        )
    # the same record again adds nothing and moves to the front
    again = doc(patient(A, {"text": "郭晓燕"}, phone=phones[2]))
    entries = blocks.upsert(entries, anchor("k"), "MPk", again, 99.0)
    [entry] = entries
    assert [v["phone"] for v in entry["views"]] == [phones[2], phones[5], phones[4], phones[3]]
    assert len(entry["views"]) == blocks.VIEWS_PER_ENTRY
    assert entry["since"] == 0.0  # when the identity was first seen


def test_an_entry_of_the_old_layout_reads_as_one_view_and_keeps_its_rejects() -> None:
    old = doc(patient(A, {"text": "郭晓燕"}, phone="13912345678"))
    legacy = [{"anchor": "k", "master_patient_id": "MPk", "person": old, "distinct": ["MPx"]}]
    assert blocks.entry_views(legacy[0]) == [old]
    assert blocks.legacy_distinct(legacy, "k") == ["MPx"]
    new = doc(patient(A, {"text": "郭晓燕"}))
    [entry] = blocks.upsert(legacy, anchor("k"), "MPk", new, 5.0)
    assert entry["views"] == [new, old]
    assert entry["distinct"] == ["MPx"]


def test_a_block_keeps_at_most_its_limit_of_identities_and_bytes() -> None:
    p = doc(patient(A, {"text": "郭晓燕"}, phone="13912345678"))
    entries: list[dict[str, Any]] = []
    for i in range(blocks.BLOCK_LIMIT + 20):
        entries = blocks.upsert(entries, anchor(f"k{i}"), f"MP{i}", p, float(i))
    assert len(entries) == blocks.BLOCK_LIMIT
    assert entries[0]["anchor"] == "k20"  # the ones not seen for longest went first
    # four large views each: the value is trimmed under the byte budget, newest kept
    big = [dict(p, address=f"{'山西省太原市小店区长风街' * 20}{j}") for j in range(4)]
    fat = [
        {"anchor": f"k{i}", "master_patient_id": f"MP{i}", "views": big}
        for i in range(blocks.BLOCK_LIMIT)
    ]
    raw = blocks.encode_block(fat)
    assert len(raw) <= blocks.BLOCK_MAX_BYTES
    assert b'"k499"' in raw and b'"k0"' not in raw


def test_a_relabel_moves_the_identity_to_its_new_master() -> None:
    p = doc(patient(A, {"text": "郭晓燕"}))
    entries = blocks.upsert([], anchor("k"), "MPold", p, 1.0)
    assert blocks.relabel(entries, "k", "MPnew")
    assert entries[0]["master_patient_id"] == "MPnew"
    assert not blocks.relabel(entries, "k", "MPnew")  # already there: nothing to write


# ------------------------------------------------------------------------- block owner


def test_a_block_offers_the_best_view_of_each_likely_identity_and_not_the_person_itself() -> None:
    her = patient(A, {"text": "郭晓燕"}, phone="13912345678")
    stranger = patient(B, {"text": "李建国"}, phone="13700001111", gender="male")
    entries = blocks.upsert([], anchor("her"), "MPher", doc(her), 1.0)
    entries = blocks.upsert(entries, anchor("her"), "MPher", doc(patient(A, {"text": "郭晓燕"})), 2)
    entries = blocks.upsert(entries, anchor("stranger"), "MPs", doc(stranger), 3.0)
    incoming = patient(C, {"family": "Guo", "given": ["Xiaoyan"]}, phone="13912345678")
    [found] = blocks.block_candidates(entries, incoming, "new", "MPnew", RULES)
    assert found["master_patient_id"] == "MPher"
    assert found["person"]["phone"] == "13912345678"  # her best view, not her newest
    assert found["anchor"] == {"key": "her", "rank": 10, "kind": "hospital_no"}
    # her own later record is not her own candidate, nor is anything under her master
    assert blocks.block_candidates(entries, her, "her", "MPher", RULES) == []
    assert blocks.block_candidates(entries, incoming, "other", "MPher", RULES) == []


def with_card(institution: str, number: str) -> Person:
    """A man born 1985-03-17 named 郭晓燕, known by his verified 身份证."""
    return person_from_fhir(
        {
            "resourceType": "Patient",
            "identifier": [{"system": "urn:oid:2.16.156.10011.1.3", "value": gb11643(number)}],
            "name": [{"text": "郭晓燕"}],
            "birthDate": "1985-03-17",
            "gender": "male",
        },
        institution,
    )


def test_a_block_never_offers_someone_with_another_verified_id_card() -> None:
    one, two = with_card(A, "11010519850317123"), with_card(B, "11010519850317135")
    entries = blocks.upsert([], anchor("one"), "MP1", doc(one), 1.0)
    assert blocks.block_candidates(entries, two, "two", "MP2", RULES) == []
    same = with_card(B, "11010519850317123")
    [found] = blocks.block_candidates(entries, same, "s", "MPs", RULES)
    assert found["master_patient_id"] == "MP1"  # the same card: offered


def test_a_block_reply_holds_at_most_ten_candidates_best_first() -> None:
    entries: list[dict[str, Any]] = []
    for i in range(15):
        p = patient(A, {"text": "郭晓燕"}, mz=str(i), phone="13912345678" if i == 7 else None)
        entries = blocks.upsert(entries, anchor(f"k{i}"), f"MP{i}", doc(p), float(i))
    incoming = patient(C, {"family": "Guo", "given": ["Xiaoyan"]}, phone="13912345678")
    found = blocks.block_candidates(entries, incoming, "new", "MPnew", RULES)
    assert len(found) == blocks.CANDIDATES_PER_REPLY
    assert found[0]["master_patient_id"] == "MP7"


# ---------------------------------------------------------------------------- decider


def header(gid: str = "t:0:1", n: int = 3, master: str = "MPme") -> dict[str, Any]:
    return blocks.probe_header(
        gather_id=gid,
        keys=[f"b{i}" for i in range(n)],
        decider="d",
        anchor=anchor("me"),
        master=master,
        person=doc(patient(A, {"text": "郭晓燕"})),
        since=10.0,
        envelope={"trace_id": "t", "source": A},
    )


def cand(master: str, phone: str = "13912345678") -> dict[str, Any]:
    return {
        "master_patient_id": master,
        "anchor": anchor(master.lower()),
        "since": 1.0,
        "person": doc(patient(B, {"text": "郭晓燕"}, phone=phone)),
    }


def test_a_gather_decides_once_every_block_answered_and_counts_a_redelivery_once() -> None:
    h = header()
    step = blocks.add_reply(None, {"gather": h, "index": 0, "candidates": [cand("MPx")]})
    assert (step.kind, step.finished) == ("pending", None)
    again = blocks.add_reply(step.state, {"gather": h, "index": 0, "candidates": [cand("MPx")]})
    assert again.kind == "duplicate" and again.finished is None
    step = blocks.add_reply(step.state, {"gather": h, "index": 2, "candidates": [], "since": 4.0})
    assert step.kind == "pending"
    # the same view from another block is one candidate
    done = blocks.add_reply(step.state, {"gather": h, "index": 1, "candidates": [cand("MPx")]})
    assert done.kind == "complete" and done.finished is not None
    assert len(done.finished["candidates"]) == 1
    assert done.finished["since"] == 4.0  # the identity's earliest, from its blocks
    assert done.state["gathers"] == {}
    # a late copy of a reply after the decision decides nothing again
    late = blocks.add_reply(done.state, {"gather": h, "index": 1, "candidates": []})
    assert late.kind == "duplicate" and late.state["gathers"] == {}


def test_a_decider_waits_on_a_bounded_number_of_gathers() -> None:
    state: dict[str, Any] | None = None
    dropped = 0
    for i in range(blocks.GATHERS_PER_DECIDER + 3):
        step = blocks.add_reply(state, {"gather": header(f"t:0:{i}"), "index": 0})
        state, dropped = step.state, dropped + step.dropped
    assert state is not None
    assert len(state["gathers"]) == blocks.GATHERS_PER_DECIDER
    assert dropped == 3
    assert "t:0:0" not in state["gathers"] and "t:0:0" in state["done"]


def test_a_rejected_master_and_the_own_master_are_never_candidates() -> None:
    h = header(n=1)
    reply = {
        "gather": h,
        "index": 0,
        "candidates": [cand("MPx"), cand("MPme"), cand("MPy", "13700001111")],
        "distinct": ["MPy"],  # a reject kept in a block of the old layout
    }
    step = blocks.add_reply({"distinct": ["MPz"], "gathers": {}, "done": []}, reply)
    assert step.state["distinct"] == ["MPz", "MPy"]
    assert step.finished is not None
    got = blocks.gathered_candidates(step.finished, step.state["distinct"])
    assert [m for m, _ in got] == ["MPx"]


def test_two_singletons_matched_at_once_both_link_the_younger_to_the_older() -> None:
    """Two new identities whose probes reach their blocks in different orders each find
    the other: both deciders must make the same claim, not swap them."""
    old, young = "anchor-old", "anchor-young"
    m_old, m_young = master_id_for(old), master_id_for(young)

    def finished(me: str, me_since: float, other: str, other_since: float) -> dict[str, Any]:
        h = blocks.probe_header(
            gather_id="g",
            keys=["b"],
            decider="d",
            anchor=anchor(me),
            master=master_id_for(me),
            person={},
            since=me_since,
            envelope={},
        )
        c = {"master_patient_id": master_id_for(other), "anchor": anchor(other)}
        return {"header": h, "since": me_since, "candidates": [dict(c, since=other_since)]}

    at_young = blocks.link_direction(finished(young, 20.0, old, 10.0), m_old)
    at_old = blocks.link_direction(finished(old, 10.0, young, 20.0), m_young)
    assert (at_young.anchor["key"], at_young.master) == (young, m_old)
    assert (at_old.anchor["key"], at_old.master) == (young, m_old)


def test_an_identity_joins_a_master_that_already_holds_others() -> None:
    h = header(n=1, master=master_id_for("me"))
    c1 = dict(cand("MPgroup"), anchor=anchor("first"), since=50.0)
    c2 = dict(cand("MPgroup", "13700001111"), anchor=anchor("second"), since=60.0)
    link = blocks.link_direction({"header": h, "since": 1.0, "candidates": [c1, c2]}, "MPgroup")
    assert (link.anchor["key"], link.master) == ("me", "MPgroup")
