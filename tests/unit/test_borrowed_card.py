"""A 身份证 on a record whose birth date or sex disagrees with it: often a parent's card on a
young child's record (新生儿 registered with the mother's card). It must not link the child
to the parent, deterministically or by score."""

from __future__ import annotations

from datetime import date

from services.common.identifiers import ID_CARD_SYSTEM, keyed_hash
from services.patient_index.identity import keyed_identifiers
from services.patient_index.matching import decide, load_rules, score
from services.patient_index.normalize import Person, make_person, normalize_ident
from tests.fhir_samples import gb11643

RULES = load_rules()
MOTHERS_CARD = gb11643("14010519890117776")  # a woman born 1989-01-17
A, B, C = "12140100MB0000001A", "12140100MB0000002B", "12140100MB0000003C"
KEY = b"k" * 32


def record(institution: str, name: str, born: date, *, card: str | None = MOTHERS_CARD) -> Person:
    idents = []
    if card:
        ident = normalize_ident({"system": ID_CARD_SYSTEM, "value": card}, institution)
        assert ident is not None and ident.verified
        idents.append(ident)
    return make_person(
        institution,
        idents=idents,
        name_text=name,
        sex="female",
        birth_date=born,
        phone="15193749179",
        address="山西省太原市晋源区后北屯路244号",
    )


def hashes(p: Person) -> list[str]:
    return [k.key for k in keyed_identifiers(p, lambda i: keyed_hash(KEY, *i.key()))]


MOTHER = record(A, "李慧", date(1989, 1, 17))
BABY = record(B, "李小雨", date(2024, 3, 8))
BABY_AGAIN = record(C, "李小雨", date(2024, 3, 8))


def test_the_babys_record_says_the_card_is_not_hers() -> None:
    assert BABY.card_conflict and not MOTHER.card_conflict


def test_the_mothers_card_links_nothing_deterministically_to_the_baby() -> None:
    d = decide(BABY, [("MP-MOTHER", MOTHER)], RULES)
    assert d.kind != "deterministic"
    assert d.kind != "auto"  # same phone, address and surname: a relative, not a match


def test_the_card_is_no_evidence_in_the_score() -> None:
    s = score(BABY, MOTHER, RULES)
    assert "identifiers" not in s.parts
    assert s.outcome != "auto"


def test_the_stream_anchors_the_baby_apart_from_the_mother_but_with_her_other_records() -> None:
    mother, baby, again = hashes(MOTHER), hashes(BABY), hashes(BABY_AGAIN)
    assert not set(mother) & set(baby)  # no shared identity: the mother is not merged
    assert baby == again  # the baby's two records share an anchor (card + her birth date)
    assert keyed_identifiers(BABY, lambda i: keyed_hash(KEY, *i.key()))[0].kind == "other"


def test_a_record_with_its_own_card_still_links_deterministically() -> None:
    again = record(C, "李慧", date(1989, 1, 17))
    assert decide(again, [("MP-MOTHER", MOTHER)], RULES).kind == "deterministic"
    assert hashes(again)[0] == hashes(MOTHER)[0]


def test_identity_rule_is_what_decide_settles_before_scoring() -> None:
    from services.patient_index.matching import identity_rule

    again = record(C, "李慧", date(1989, 1, 17))
    other = record(C, "李慧", date(1989, 1, 17), card=gb11643("14010519890117786"))
    assert identity_rule(again, MOTHER) == "link"
    assert identity_rule(other, MOTHER) == "veto"  # two people's own cards
    assert decide(other, [("MP-MOTHER", MOTHER)], RULES).kind == "new"
    assert identity_rule(BABY, MOTHER) is None  # a borrowed card settles nothing
    assert identity_rule(BABY, BABY_AGAIN) is None
