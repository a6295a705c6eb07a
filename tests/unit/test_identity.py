"""Identity resolution rules, named by outcome (pure: no broker)."""

from __future__ import annotations

from services.common.identifiers import ID_CARD_SYSTEM, OUTPATIENT_NO_SYSTEM, keyed_hash
from services.patient_index.identity import (
    CLAIMED_LIMIT,
    IdentityState,
    Keyed,
    apply_claim,
    claims_to_send,
    keyed_identifiers,
    master_id_for,
    resolve_anchor,
)
from services.patient_index.normalize import person_from_subject
from tests.fhir_samples import gb11643

CARD = gb11643("11010519850317123")
BAD_CARD = CARD[:-1] + ("0" if CARD[-1] != "0" else "1")
HOSPITAL = "12140000405001730E"


def hashed(ident: object) -> str:
    return keyed_hash(b"k", *ident.key())  # type: ignore[attr-defined]


def idents(*pairs: tuple[str, str]) -> list[Keyed]:
    person = person_from_subject([{"system": s, "value": v} for s, v in pairs], HOSPITAL)
    return keyed_identifiers(person, hashed)


def test_card_outranks_hospital_number_and_becomes_the_anchor() -> None:
    found = idents((OUTPATIENT_NO_SYSTEM, "MZ1"), (ID_CARD_SYSTEM, CARD))
    assert [k.kind for k in found] == ["id_card", "local"]


def test_card_failing_checksum_is_not_used_at_all() -> None:
    found = idents((OUTPATIENT_NO_SYSTEM, "MZ1"), (ID_CARD_SYSTEM, BAD_CARD))
    assert [k.kind for k in found] == ["local"]


def test_15_and_18_digit_card_hash_alike() -> None:
    [a] = idents((ID_CARD_SYSTEM, CARD))
    [b] = idents((ID_CARD_SYSTEM, CARD[:6] + CARD[8:17]))
    assert a.key == b.key


def test_new_anchor_gets_a_master_derived_from_it_and_a_new_event() -> None:
    anchor = Keyed("ab" * 16, 50, "id_card")
    res = resolve_anchor(None, anchor)
    assert res.decision == "new" and res.changed
    assert res.master_patient_id == master_id_for(anchor.key)
    assert res.event is not None and res.event.kind == "new"
    # a second owner that never saw the first would still name the person alike
    assert resolve_anchor(None, anchor).master_patient_id == res.master_patient_id


def test_known_anchor_is_a_deterministic_link_without_event() -> None:
    state = IdentityState(master_patient_id="MP1", rank=50, kind="id_card")
    res = resolve_anchor(state, Keyed("x" * 32, 50, "id_card"))
    assert (res.master_patient_id, res.decision, res.changed, res.event) == (
        "MP1",
        "deterministic",
        False,
        None,
    )


ALIAS = Keyed("c" * 32, 10, "local")


def test_unclaimed_number_takes_the_claim() -> None:
    result = apply_claim(None, "MP1", ALIAS, 50)
    assert result.state is not None and result.state.master_patient_id == "MP1"
    assert result.event is not None and result.event.kind == "alias"


def test_same_claim_again_changes_nothing() -> None:
    state = IdentityState(master_patient_id="MP1", rank=50, kind="local")
    result = apply_claim(state, "MP1", ALIAS, 50)
    assert result.state is None and result.event is None


def test_stronger_evidence_relinks_a_number_and_says_from_where() -> None:
    state = IdentityState(master_patient_id="MP-own", rank=10, kind="local")
    result = apply_claim(state, "MP-card", ALIAS, 50)
    assert result.state is not None and result.state.master_patient_id == "MP-card"
    assert result.event is not None
    assert (result.event.kind, result.event.previous_master_patient_id) == ("relinked", "MP-own")


def test_equally_strong_disagreement_is_a_conflict_and_moves_nothing() -> None:
    state = IdentityState(master_patient_id="MP-x", rank=50, kind="local")
    result = apply_claim(state, "MP-y", ALIAS, 50)
    assert result.state is None
    assert result.event is not None and result.event.kind == "conflict"
    assert result.event.competing_master_patient_id == "MP-y"


def test_link_events_carry_no_identifier_values() -> None:
    result = apply_claim(None, "MP1", ALIAS, 50)
    assert result.event is not None
    text = str(result.event.payload())
    assert ALIAS.key not in text and CARD not in text


def test_a_relinking_claim_tells_the_old_master_to_let_the_identifier_s_records_go() -> None:
    state = IdentityState(master_patient_id="MP-own", rank=10, kind="local")
    result = apply_claim(state, "MP-match", ALIAS, 20)  # the matcher's auto-link (rank 20)
    assert result.records_follow(ALIAS.key) == (
        "MP-own",
        {"type": "move-records", "anchor": ALIAS.key},
    )
    # nothing moved, nothing to send: an alias, a repeat, a conflict
    assert apply_claim(None, "MP1", ALIAS, 50).records_follow(ALIAS.key) is None
    same = IdentityState(master_patient_id="MP1", rank=50, kind="local")
    assert apply_claim(same, "MP1", ALIAS, 50).records_follow(ALIAS.key) is None
    assert apply_claim(same, "MP2", ALIAS, 50).records_follow(ALIAS.key) is None


ANCHOR_STATE = IdentityState(master_patient_id="MP1", rank=50, kind="id_card")
HOSPITAL_NO = Keyed("d" * 32, 10, "local")


def test_an_anchor_claims_each_alias_once_for_its_master() -> None:
    claims, state = claims_to_send(ANCHOR_STATE, [ALIAS, HOSPITAL_NO])
    assert claims == [ALIAS, HOSPITAL_NO]
    # the next record of the same person sends no claim: nothing would change
    again, same = claims_to_send(state, [ALIAS, HOSPITAL_NO])
    assert again == [] and same is state
    # a new identifier on a later record is claimed, the known one is not
    more, _ = claims_to_send(state, [ALIAS, Keyed("e" * 32, 30, "insurance")])
    assert [k.key for k in more] == ["e" * 32]


def test_an_anchor_moved_to_another_master_claims_its_aliases_again() -> None:
    _, state = claims_to_send(ANCHOR_STATE, [ALIAS])
    relinked = apply_claim(state, "MP2", Keyed("f" * 32, 50, "id_card"), 60).state
    assert relinked is not None
    claims, _ = claims_to_send(relinked, [ALIAS])
    assert claims == [ALIAS]


def test_the_claimed_list_stays_bounded_and_reads_old_values() -> None:
    state = ANCHOR_STATE
    for i in range(CLAIMED_LIMIT + 5):
        _, state = claims_to_send(state, [Keyed(f"{i:032d}", 10, "local")])
    assert len(state.claimed) == CLAIMED_LIMIT
    old = IdentityState.model_validate_json('{"master_patient_id":"MP1","rank":50,"kind":"x"}')
    assert old.claimed == ()


def test_a_new_master_is_minted_on_its_anchor_s_partition_and_known_as_its_own() -> None:
    """So that the worker owning the anchor owns the master too (the in-place master step);
    the id keeps its form (MP + 24 hex digits) and is the same wherever it is minted."""
    from services.common.partitioner import partition_for
    from services.patient_index.identity import minted_from

    keys = [f"{i:032x}" for i in range(0, 2**128, 2**121)]  # 128 anchors spread over the hash
    for partitions in (1, 6, 12, 64):
        placed = 0
        for key in keys:
            mid = master_id_for(key, partitions)
            assert mid == master_id_for(key, partitions)  # deterministic
            assert len(mid) == 26 and mid.startswith("MP" + key[:21])
            int(mid[2:], 16)  # hex
            placed += partition_for(mid.encode(), partitions) == partition_for(
                key.encode(), partitions
            )
            assert minted_from(mid, key) and minted_from(master_id_for(key), key)
            assert not minted_from(mid, "f" * 32) and not minted_from(mid + "0", key)
        assert placed == len(keys), partitions
    # resolve_anchor mints it so for a new identity, and keeps a stored one
    anchor = Keyed("ab" * 16, 50, "id_card")
    res = resolve_anchor(None, anchor, 6)
    assert res.master_patient_id == master_id_for(anchor.key, 6)
    kept = resolve_anchor(
        IdentityState(master_patient_id="MP" + "0" * 24, rank=50, kind="id_card"), anchor, 6
    )
    assert kept.master_patient_id == "MP" + "0" * 24
