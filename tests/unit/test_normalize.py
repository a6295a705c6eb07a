"""Normalising patients for matching (services.patient_index.normalize)."""

from __future__ import annotations

import re
from datetime import date
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from services.common.fhir import INSTITUTION_SYSTEM
from services.common.identifiers import (
    DOCUMENT_TYPE_SYSTEM,
    HEALTH_CARD_SYSTEM,
    ID_CARD_SYSTEM,
    INPATIENT_NO_SYSTEM,
    INSURANCE_CARD_SYSTEM,
    OUTPATIENT_NO_SYSTEM,
)
from services.patient_index.normalize import (
    Ident,
    latin_name,
    make_person,
    normalize_address,
    normalize_ident,
    normalize_name,
    normalize_phone,
    person_from_fhir,
    person_from_subject,
)
from tests.fhir_samples import BAD_ID_CARD, ID_CARD, gb11643, org_ref

HOSPITAL_A = "12140100MB0000001A"
HOSPITAL_B = "12140100MB0000002B"

# A legacy 15-digit card: region 110105, born 1985-03-17 (2-digit year), sequence 123.
CARD_15 = "110105850317123"
CARD_18 = ID_CARD  # the same card in 18 characters (tests/fhir_samples builds it)


def patient(**extra: Any) -> dict[str, Any]:
    res: dict[str, Any] = {"resourceType": "Patient"}
    res.update(extra)
    return res


# ------------------------------------------------------------------------- identifiers


def test_id_card_15_digits_becomes_the_18_character_number() -> None:
    ident = normalize_ident({"system": ID_CARD_SYSTEM, "value": CARD_15}, HOSPITAL_A)
    assert ident is not None
    assert ident.kind == "id_card" and ident.verified
    assert ident.value == CARD_18
    assert ident.scope is None
    assert ident.key() == (ID_CARD_SYSTEM, CARD_18)


def test_id_card_lower_case_x_and_spaces_normalised() -> None:
    card = gb11643("11010519900101001")
    while not card.endswith("X"):  # find a body whose check character is X
        body = str(int(card[:17]) + 10)
        card = gb11643(body)
    written = " " + card[:6] + " " + card[6:-1] + "x "
    ident = normalize_ident({"system": ID_CARD_SYSTEM, "value": written}, HOSPITAL_A)
    assert ident is not None and ident.verified
    assert ident.value == card and len(ident.value) == 18


def test_id_card_failing_checksum_is_kept_unverified() -> None:
    ident = normalize_ident({"system": ID_CARD_SYSTEM, "value": BAD_ID_CARD}, HOSPITAL_A)
    assert ident is not None
    assert ident.kind == "id_card"
    assert not ident.verified
    assert ident.value == BAD_ID_CARD


def test_document_type_01_is_an_id_card_whatever_the_system() -> None:
    ident = normalize_ident(
        {
            "type": {"coding": [{"system": DOCUMENT_TYPE_SYSTEM, "code": "01"}]},
            "system": "urn:oid:1.3.6.1.4.1.32473.9",
            "value": CARD_18,
        },
        HOSPITAL_A,
    )
    assert ident is not None and ident.kind == "id_card" and ident.verified


def test_passport_with_its_type_is_verified_and_keyed_by_type() -> None:
    raw = {
        "type": {"coding": [{"system": DOCUMENT_TYPE_SYSTEM, "code": "03"}]},
        "value": "e 1234 5678",
    }
    ident = normalize_ident(raw, HOSPITAL_A)
    assert ident is not None
    assert ident.kind == "document" and ident.verified and ident.doc_type == "03"
    assert ident.value == "E12345678"
    assert ident.key() == (f"{DOCUMENT_TYPE_SYSTEM}#03", "E12345678")
    # the same number under another type is another key
    other = normalize_ident(
        raw | {"type": {"coding": [{"system": DOCUMENT_TYPE_SYSTEM, "code": "05"}]}},
        HOSPITAL_A,
    )
    assert other is not None and other.key() != ident.key()


def test_document_of_type_other_is_not_verified() -> None:
    ident = normalize_ident(
        {"type": {"coding": [{"system": DOCUMENT_TYPE_SYSTEM, "code": "99"}]}, "value": "A1"},
        HOSPITAL_A,
    )
    assert ident is not None and ident.kind == "document" and not ident.verified


def test_local_numbers_are_scoped_by_institution() -> None:
    a = normalize_ident({"system": OUTPATIENT_NO_SYSTEM, "value": "MZ0001"}, HOSPITAL_A)
    b = normalize_ident({"system": OUTPATIENT_NO_SYSTEM, "value": "MZ0001"}, HOSPITAL_B)
    assert a is not None and b is not None
    assert a.kind == "local" and not a.verified
    assert a.scope == HOSPITAL_A and b.scope == HOSPITAL_B
    assert a.key() != b.key()
    assert HOSPITAL_A in a.key()[0]


def test_assigner_gives_the_scope() -> None:
    ident = normalize_ident(
        {"system": INPATIENT_NO_SYSTEM, "value": "ZY9", "assigner": org_ref(HOSPITAL_B)},
        HOSPITAL_A,
    )
    assert ident is not None and ident.scope == HOSPITAL_B


def test_unknown_system_is_scoped_other() -> None:
    ident = normalize_ident({"system": "urn:oid:1.3.6.1.4.1.32473.7", "value": "P-77"}, HOSPITAL_A)
    assert ident is not None
    assert ident.kind == "other" and ident.scope == HOSPITAL_A


def test_insurance_and_health_cards_are_global_and_unverified() -> None:
    ins = normalize_ident({"system": INSURANCE_CARD_SYSTEM, "value": "ab123"}, HOSPITAL_A)
    hc = normalize_ident({"system": HEALTH_CARD_SYSTEM, "value": "HC-1"}, HOSPITAL_A)
    assert ins is not None and hc is not None
    assert (ins.kind, ins.scope, ins.verified, ins.value) == ("insurance", None, False, "AB123")
    assert (hc.kind, hc.scope) == ("health_card", None)
    # a card number with an assigner was issued by that institution: scoped to it
    own = normalize_ident(
        {"system": HEALTH_CARD_SYSTEM, "value": "HC-1", "assigner": org_ref(HOSPITAL_B)},
        HOSPITAL_A,
    )
    assert own is not None and (own.kind, own.scope) == ("health_card", HOSPITAL_B)
    assert own.key() != hc.key()


def test_empty_value_matches_nothing() -> None:
    assert normalize_ident({"system": ID_CARD_SYSTEM, "value": "  "}, HOSPITAL_A) is None
    assert normalize_ident({"system": ID_CARD_SYSTEM}, HOSPITAL_A) is None


def test_duplicate_identifiers_collapse() -> None:
    p = person_from_fhir(
        patient(
            identifier=[
                {"system": ID_CARD_SYSTEM, "value": CARD_15},
                {"system": ID_CARD_SYSTEM, "value": CARD_18.lower()},
            ]
        ),
        HOSPITAL_A,
    )
    assert len(p.idents) == 1


# ------------------------------------------------------------------------------- names


def test_hanzi_name_splits_after_the_first_character() -> None:
    n = normalize_name("张伟")
    assert (n.family, n.given, n.family_py, n.given_py) == ("张", "伟", "zhang", "wei")
    n = normalize_name("王晓明")
    assert (n.family, n.given, n.given_py) == ("王", "晓明", "xiaoming")


def test_compound_surnames_split_after_two_characters() -> None:
    for text, family, given_name in (
        ("欧阳娜娜", "欧阳", "娜娜"),
        ("司马光", "司马", "光"),
        ("诸葛亮", "诸葛", "亮"),
        ("上官婉儿", "上官", "婉儿"),
    ):
        n = normalize_name(text)
        assert (n.family, n.given) == (family, given_name), text
    assert normalize_name("欧阳娜娜").family_py == "ouyang"


def test_minority_name_is_not_split() -> None:
    n = normalize_name("阿依古丽·买买提")
    assert (n.family, n.given) == (None, "阿依古丽买买提")
    assert n.given_py == "ayigulimaimaiti"


def test_traditional_becomes_simplified() -> None:
    n = normalize_name("歐陽震華")
    assert (n.family, n.given) == ("欧阳", "震华")
    assert n.given_py == "zhenhua"


def test_surname_readings() -> None:
    assert normalize_name("单田芳").family_py == "shan"
    assert normalize_name("曾国藩").family_py == "zeng"
    assert normalize_name("解缙").family_py == "xie"
    # the same character inside a given name keeps its ordinary reading
    assert normalize_name("李单").given_py == "dan"


def test_latin_names() -> None:
    for text in ("Wang Fang", "WANG Fang", "Fang WANG", "wang fang", "Wang, Fang"):
        n = normalize_name(text)
        assert (n.family, n.given, n.family_py, n.given_py) == (None, None, "wang", "fang"), text
    n = normalize_name(None, family="Wang", given="Fang")
    assert (n.family_py, n.given_py) == ("wang", "fang")
    n = normalize_name("Xiao Ming Wang", family="Wang", given="Xiao Ming")
    assert (n.family_py, n.given_py) == ("wang", "xiaoming")


def test_latin_minority_name_splits_at_its_middle_dot() -> None:
    for text in ("Ayiguli·Maimaiti", "Ayiguli • Maimaiti", "Ayiguli Maimaiti"):
        n = normalize_name(text)
        assert (n.family_py, n.given_py) == ("ayiguli", "maimaiti"), text


def test_latin_name_drops_tones_and_writes_u_umlaut_as_v() -> None:
    assert latin_name("Lǚ Xiǎo-Míng") == "lvxiaoming"
    assert latin_name("LÜ") == "lv"
    assert latin_name("Nu:") == "nv"


def test_official_name_preferred_and_old_ignored() -> None:
    p = person_from_fhir(
        patient(
            name=[
                {"use": "old", "text": "李四"},
                {"use": "usual", "text": "小明"},
                {"use": "official", "family": "王", "given": ["晓明"]},
            ]
        ),
        HOSPITAL_A,
    )
    assert (p.family, p.given, p.family_py, p.given_py) == ("王", "晓明", "wang", "xiaoming")


def test_no_name_gives_none() -> None:
    p = person_from_fhir(patient(name=[{"text": "  "}]), HOSPITAL_A)
    assert (p.family, p.given, p.family_py, p.given_py) == (None, None, None, None)


# --------------------------------------------------------------------- other fields


def test_phone_normalisation() -> None:
    assert normalize_phone("+86 138-0013-8000") == "13800138000"
    assert normalize_phone("0086 13800138000") == "13800138000"
    assert normalize_phone("8613800138000") == "13800138000"
    assert normalize_phone("１３８００１３８０００") == "13800138000"  # full-width
    assert normalize_phone("010-1234 5678") == "01012345678"
    assert normalize_phone("+86 10 1234 5678") == "01012345678"
    assert normalize_phone("n/a") is None


def test_address_normalisation() -> None:
    assert normalize_address("山西省 太原市，小店區（長風街）８號") == "山西省太原市小店区长风街8号"
    assert normalize_address("12 Pinkerton Circuit, Bega") == "12pinkertoncircuitbega"
    assert normalize_address(" ,. ") is None


def test_person_from_fhir_reads_every_field() -> None:
    p = person_from_fhir(
        patient(
            identifier=[
                {"system": ID_CARD_SYSTEM, "value": CARD_18},
                {"system": OUTPATIENT_NO_SYSTEM, "value": "MZ1"},
            ],
            name=[{"use": "official", "text": "王芳"}],
            gender="male",
            birthDate="1985-03-17",
            telecom=[
                {"system": "email", "value": "x@example.cn"},
                {"system": "phone", "use": "home", "value": "0351-7654321"},
                {"system": "phone", "use": "mobile", "value": "+86 139 0000 1111"},
            ],
            address=[
                {"use": "old", "text": "旧地址"},
                {
                    "use": "home",
                    "state": "山西省",
                    "city": "太原市",
                    "district": "小店区",
                    "line": ["长风街8号"],
                    "postalCode": "030006",
                },
            ],
        ),
        HOSPITAL_A,
    )
    assert p.institution == HOSPITAL_A
    assert [i.kind for i in p.idents] == ["id_card", "local"]
    assert p.sex == "male" and p.birth_date == date(1985, 3, 17)
    assert p.phone == "13900001111"
    assert p.address == "山西省太原市小店区长风街8号" and p.postcode == "030006"
    assert not p.card_conflict
    card = p.id_card()
    assert card is not None and card.number == CARD_18


def test_card_conflict_keeps_both() -> None:
    p = person_from_fhir(
        patient(
            identifier=[{"system": ID_CARD_SYSTEM, "value": CARD_18}],
            gender="female",  # the card's sequence digit is odd: male
            birthDate="1985-03-17",
        ),
        HOSPITAL_A,
    )
    assert p.card_conflict
    assert p.sex == "female"
    card = p.id_card()
    assert card is not None and card.sex == "male"
    q = person_from_fhir(
        patient(identifier=[{"system": ID_CARD_SYSTEM, "value": CARD_18}], birthDate="1985-03-18"),
        HOSPITAL_A,
    )
    assert q.card_conflict and q.birth_date == date(1985, 3, 18)


def test_card_fills_missing_birth_date_and_sex() -> None:
    p = person_from_fhir(patient(identifier=[{"system": ID_CARD_SYSTEM, "value": CARD_15}]), "H")
    assert (p.birth_date, p.sex, p.card_conflict) == (date(1985, 3, 17), "male", False)


def test_unverified_card_fills_nothing_and_conflicts_with_nothing() -> None:
    p = make_person("H", idents=[Ident("id_card", ID_CARD_SYSTEM, BAD_ID_CARD)], sex="female")
    assert p.id_card() is None and p.birth_date is None and not p.card_conflict


def test_person_from_subject() -> None:
    p = person_from_subject({"system": OUTPATIENT_NO_SYSTEM, "value": "MZ0001"}, HOSPITAL_A)
    assert len(p.idents) == 1 and p.idents[0].scope == HOSPITAL_A
    assert p.family_py is None and p.birth_date is None
    q = person_from_subject(
        [
            {"system": ID_CARD_SYSTEM, "value": CARD_18},
            {"system": INSTITUTION_SYSTEM, "value": ""},
        ],
        HOSPITAL_A,
    )
    assert [i.kind for i in q.idents] == ["id_card"] and q.sex == "male"


# ------------------------------------------------------------------------------ privacy


def test_reprs_hide_names_numbers_and_phones() -> None:
    p = person_from_fhir(
        patient(
            identifier=[{"system": ID_CARD_SYSTEM, "value": CARD_18}],
            name=[{"text": "王芳"}],
            birthDate="1985-03-17",
            telecom=[{"system": "phone", "value": "13900001111"}],
            address=[{"text": "长风街8号", "postalCode": "030006"}],
        ),
        HOSPITAL_A,
    )
    text = repr(p) + str(p) + repr(p.idents)
    for secret in (CARD_18, "王", "芳", "wang", "fang", "13900001111", "1985", "长风", "030006"):
        assert secret not in text
    assert "id_card" in text  # it does say what is there


@given(
    region=st.sampled_from(["110101", "140105", "310101", "440305"]),
    born=st.dates(min_value=date(1900, 1, 1), max_value=date(1999, 12, 31)),
    seq=st.integers(min_value=0, max_value=999),
)
def test_legacy_and_modern_card_normalise_alike(region: str, born: date, seq: int) -> None:
    body17 = f"{region}{born:%Y%m%d}{seq:03d}"
    card18 = gb11643(body17)
    card15 = f"{region}{born:%y%m%d}{seq:03d}"
    a = normalize_ident({"system": ID_CARD_SYSTEM, "value": card15}, HOSPITAL_A)
    b = normalize_ident({"system": ID_CARD_SYSTEM, "value": card18.lower()}, HOSPITAL_B)
    assert a is not None and b is not None
    assert a.verified and b.verified and a.key() == b.key()
    assert not re.search(r"\d{6,}", repr(a))
