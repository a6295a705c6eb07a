"""Patient matching (services.patient_index.matching): scenarios named by their outcome.

The scenarios use the shipped rules (config/matching/rules-v2.yaml) as they are: the
production m/u values, the population prior and the posterior thresholds.
"""

from __future__ import annotations

import random
import re
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.errors import ConfigError
from services.common.identifiers import (
    DOCUMENT_TYPE_SYSTEM,
    ID_CARD_SYSTEM,
    INSURANCE_CARD_SYSTEM,
    OUTPATIENT_NO_SYSTEM,
)
from services.patient_index.matching import (
    DEFAULT_RULES_PATH,
    Rules,
    blocking_keys,
    compare,
    decide,
    fit_em,
    level_names,
    load_rules,
    name_evidence,
    score,
    score_levels,
)
from services.patient_index.normalize import Person, person_from_fhir
from tests.fhir_samples import BAD_ID_CARD, ID_CARD, gb11643

RULES = load_rules()
A = "12140100MB0000001A"
B = "12140100MB0000002B"
CARD_15 = "110105850317123"  # ID_CARD in its legacy 15-digit form
OTHER_CARD = gb11643("14010519850317135")  # another man born the same day


def person(
    institution: str = A,
    *,
    name: str | None = "王芳",
    family: str | None = None,
    given: list[str] | None = None,
    gender: str | None = "female",
    birth: str | None = "1990-06-02",
    phone: str | None = "13912345678",
    address: str | None = "山西省太原市小店区长风街8号",
    identifiers: list[dict[str, Any]] | None = None,
) -> Person:
    res: dict[str, Any] = {"resourceType": "Patient", "identifier": identifiers or []}
    if name or family or given:
        n: dict[str, Any] = {"use": "official"}
        if name:
            n["text"] = name
        if family:
            n["family"] = family
        if given:
            n["given"] = given
        res["name"] = [n]
    if gender:
        res["gender"] = gender
    if birth:
        res["birthDate"] = birth
    if phone:
        res["telecom"] = [{"system": "phone", "value": phone}]
    if address:
        res["address"] = [{"text": address}]
    return person_from_fhir(res, institution)


def card(value: str) -> dict[str, str]:
    return {"system": ID_CARD_SYSTEM, "value": value}


# ------------------------------------------------------------------------- the rules file


def test_shipped_rules_load_with_a_version_and_ordered_thresholds() -> None:
    assert RULES.version == "rules-v2"
    assert 0 < RULES.lower < RULES.upper < 1
    assert RULES.lower_weight < RULES.upper_weight
    names = [f.name for f in RULES.fields]
    for required in ("family", "given", "sex", "birth_date", "phone", "address"):
        assert required in names


def test_agreement_weighs_for_and_disagreement_against() -> None:
    for f in RULES.fields:
        assert f.weight(0) < 0 < f.weight(len(f.levels) - 1), f.name


def _rules_yaml(**override: Any) -> dict[str, Any]:
    data = RULES.model_dump(mode="json")
    data.update(override)
    return data


def _write(tmp_path: Path, data: dict[str, Any]) -> Path:
    from ruamel.yaml import YAML

    path = tmp_path / "rules.yaml"
    with path.open("w", encoding="utf-8") as fh:
        YAML(typ="safe").dump(data, fh)
    return path


def test_rules_round_trip_through_yaml(tmp_path: Path) -> None:
    assert load_rules(_write(tmp_path, _rules_yaml())) == RULES


@pytest.mark.parametrize(
    "override",
    [
        {"upper": 0.01, "lower": 0.5},
        {"prior": 0.0},
        {"blocking": []},
        {"blocking": [["ident", "phone"]]},
        {"guards": [{"name": "g", "when": {"sex": ["nope"]}, "outcome": "none"}]},
        {"guards": [{"name": "g", "when": {"height": ["same"]}, "outcome": "none"}]},
    ],
)
def test_bad_rules_are_refused(tmp_path: Path, override: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        load_rules(_write(tmp_path, _rules_yaml(**override)))


@pytest.mark.parametrize(
    "field_change",
    [
        {"m": [0.5, 0.6]},  # does not sum to 1
        {"comparator": "soundex"},  # not a comparator
        {"m": [0.1, 0.9], "u": [0.9, 0.1], "weights": [-1.0, 1.0]},  # both
        {"m": [0.2, 0.3, 0.5]},  # wrong number of levels
    ],
)
def test_bad_fields_are_refused(tmp_path: Path, field_change: dict[str, Any]) -> None:
    data = _rules_yaml()
    sex = next(f for f in data["fields"] if f["name"] == "sex")
    sex.update(field_change)
    with pytest.raises(ConfigError):
        load_rules(_write(tmp_path, data))


def test_missing_rules_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_rules(tmp_path / "absent.yaml")
    assert DEFAULT_RULES_PATH.is_file()


# ------------------------------------------------------------------- scenarios: outcomes


def test_same_id_card_in_15_and_18_digits_links_deterministically() -> None:
    incoming = person(B, name="王芳", gender="male", birth="1985-03-17",
                      identifiers=[card(CARD_15)])  # fmt: skip
    known = person(A, name="李雷", gender="male", birth="1985-03-17", phone=None,
                   identifiers=[card(ID_CARD)])  # fmt: skip
    d = decide(incoming, [("M1", known)], RULES)
    assert d.kind == "deterministic"
    assert d.master_id == "M1"
    assert d.evidence["via"] == "id_card"


def test_hanzi_and_pinyin_with_same_birth_date_and_phone_auto_links() -> None:
    hanzi = person(A, name="王芳", gender=None, address=None)
    pinyin = person(B, name="Wang Fang", gender=None, address=None, phone="+86 139-1234-5678")
    s = score(pinyin, hanzi, RULES)
    assert s.outcome == "auto"
    d = decide(pinyin, [("M1", hanzi)], RULES)
    assert (d.kind, d.master_id) == ("auto", "M1")


def test_twin_of_other_sex_and_given_name_is_new() -> None:
    """Same surname, birth date, address and phone; different given name and sex."""
    sister = person(A, name="王芳", gender="female")
    brother = person(B, name="王强", gender="male")
    d = decide(brother, [("M1", sister)], RULES)
    assert d.kind == "new"
    assert d.master_id is None
    assert score(brother, sister, RULES).guard == "sex-and-given-name-differ"


def test_same_sex_twin_sharing_a_phone_goes_to_review_never_auto() -> None:
    a = person(A, name="王芳", gender="female")
    b = person(B, name="王丽", gender="female")
    s = score(a, b, RULES)
    assert s.total >= RULES.upper_weight  # the score alone would auto-link them…
    assert s.outcome == "review"  # …the guard does not let it
    assert s.guard == "given-name-differs"
    assert decide(b, [("M1", a)], RULES).kind == "review"


def test_id_card_failing_its_checksum_never_links_deterministically() -> None:
    bad = person(B, name="赵敏", gender=None, birth=None, phone=None, address=None,
                 identifiers=[card(BAD_ID_CARD)])  # fmt: skip
    assert not bad.idents[0].verified
    same_bad = person(A, name="赵敏", gender=None, birth=None, phone=None, address=None,
                      identifiers=[card(BAD_ID_CARD)])  # fmt: skip
    d = decide(bad, [("M1", same_bad)], RULES)
    assert d.kind != "deterministic"
    # placeholders such as 000000… fail the checksum and are shared by many people:
    # the number counts for nothing, not even as probabilistic evidence or a blocking key
    assert "identifiers" not in score(bad, same_bad, RULES).parts
    assert d.kind == "new"
    assert not any(k.startswith("ident:") for k in blocking_keys(bad, RULES))


def test_birth_date_with_day_and_month_swapped_is_auto_or_review() -> None:
    a = person(A, birth="1990-06-02")
    b = person(B, birth="1990-02-06")
    assert level_names(compare(a, b, RULES), RULES)["birth_date"] == "typo"
    d = decide(b, [("M1", a)], RULES)
    assert d.kind in ("auto", "review")
    assert d.master_id == "M1"
    # with only name and sex besides, still not a new person
    a2 = person(A, birth="1990-06-02", phone=None, address=None)
    b2 = person(B, birth="1990-02-06", phone=None, address=None)
    assert decide(b2, [("M1", a2)], RULES).kind in ("auto", "review")


def test_different_verified_cards_never_link_not_even_review() -> None:
    a = person(A, gender="male", birth="1985-03-17", identifiers=[card(ID_CARD)])
    b = person(B, gender="male", birth="1985-03-17", identifiers=[card(OTHER_CARD)])
    d = decide(b, [("M1", a)], RULES)
    assert d.kind == "new"
    assert d.evidence["vetoed"] == 1


def test_sex_and_birth_date_both_differing_is_vetoed() -> None:
    a = person(A, gender="female", birth="1990-06-02")
    b = person(B, gender="male", birth="1991-07-12")  # same name, phone, address
    s = score(a, b, RULES)
    assert s.outcome == "none"
    assert s.guard == "sex-and-birth-date-differ"
    assert decide(b, [("M1", a)], RULES).kind == "new"


def test_card_conflict_lowers_the_score() -> None:
    base = person(A, gender="male", birth="1985-03-17")
    clean = person(B, gender="male", birth="1985-03-17", identifiers=[card(ID_CARD)])
    conflicting = person(B, gender="male", birth="1985-03-18", identifiers=[card(ID_CARD)])
    assert conflicting.card_conflict and not clean.card_conflict
    s_clean, s_conf = score(clean, base, RULES), score(conflicting, base, RULES)
    assert "card_conflict" in s_conf.parts and "card_conflict" not in s_clean.parts
    assert s_conf.parts["card_conflict"] < 0
    assert s_conf.total < s_clean.total


def test_possible_match_is_review_with_no_link() -> None:
    # name, sex and birth date only: many namesakes share them in a city of millions
    a = person(A, phone=None, address=None)
    b = person(B, phone=None, address=None)
    s = score(a, b, RULES)
    assert RULES.lower_weight <= s.total < RULES.upper_weight
    d = decide(b, [("M1", a)], RULES)
    assert d.kind == "review"
    assert d.master_id == "M1"  # the candidate for the review queue, not a link


def test_no_resemblance_is_new() -> None:
    a = person(A)
    b = person(B, name="刘德华", gender="male", birth="1961-09-27", phone="13700000000",
               address="香港九龙")  # fmt: skip
    d = decide(b, [("M1", a)], RULES)
    assert (d.kind, d.master_id) == ("new", None)


def test_two_masters_both_above_auto_go_to_review() -> None:
    a = person(A)
    a_dup = person(A, identifiers=[{"system": OUTPATIENT_NO_SYSTEM, "value": "MZ2"}])
    d = decide(person(B), [("M1", a), ("M2", a_dup)], RULES)
    assert d.kind == "review"
    assert d.evidence.get("ambiguous") is True


def test_same_document_type_and_number_links_deterministically() -> None:
    passport = {"type": {"coding": [{"system": DOCUMENT_TYPE_SYSTEM, "code": "03"}]},
                "value": "E12345678"}  # fmt: skip
    licence = passport | {"type": {"coding": [{"system": DOCUMENT_TYPE_SYSTEM, "code": "05"}]}}
    a = person(A, name="John Smith", identifiers=[passport])
    b = person(B, name="Smith John", identifiers=[passport])
    d = decide(b, [("M1", a)], RULES)
    assert d.kind == "deterministic" and d.evidence["via"] == "document:03"
    c = person(B, name="Jane Doe", gender="male", birth="1970-01-01", phone=None,
               address=None, identifiers=[licence])  # fmt: skip
    assert decide(c, [("M1", a)], RULES).kind != "deterministic"


def test_same_local_number_in_two_hospitals_is_not_a_link() -> None:
    mz = [{"system": OUTPATIENT_NO_SYSTEM, "value": "MZ0001"}]
    a = person(A, name="张伟", gender="male", birth="1970-01-01", phone=None, address=None,
               identifiers=mz)  # fmt: skip
    b = person(B, name="李娜", gender="female", birth="1995-05-05", phone=None, address=None,
               identifiers=mz)  # fmt: skip
    assert decide(b, [("M1", a)], RULES).kind == "new"


def test_shared_insurance_number_outweighs_a_given_name_typo_guard() -> None:
    ins = [{"system": INSURANCE_CARD_SYSTEM, "value": "140100123456"}]
    a = person(A, name="王芳", identifiers=ins)
    b = person(B, name="王丽", identifiers=ins)
    assert score(a, b, RULES).guard is None  # a twin would not share the number
    assert decide(b, [("M1", a)], RULES).kind == "auto"


def test_evidence_holds_no_values() -> None:
    a = person(A, identifiers=[card(ID_CARD)], gender="male", birth="1985-03-17")
    for cand in (a, person(A, phone="13700001111")):
        d = decide(person(B, gender="male", birth="1985-03-17"), [("M1", cand)], RULES)
        text = repr(d.evidence)
        assert not re.search(r"\d{7,}", text)
        assert "王" not in text and "wang" not in text and "长风" not in text


# ---------------------------------------------------------------------------- comparators


def test_name_levels() -> None:
    def level(x: Person, y: Person, part: str) -> str:
        return level_names(compare(x, y, RULES), RULES)[part]

    assert level(person(name="王芳"), person(name="王芳"), "family") == "same"
    assert level(person(name="王芳"), person(name="Wang Fang"), "given") == "same"
    assert level(person(name="王芳"), person(name="汪芳"), "family") == "homophone"
    assert level(person(name="王晓明"), person(name="王小明"), "given") == "homophone"
    assert level(person(name="Wang Xiaoming"), person(name="Wang Xiaomin"), "given") == "similar"
    swapped = person(family="Fang", given=["Wang"], name=None)
    assert level(person(name="Wang Fang"), swapped, "family") == "same"  # an exact swap
    assert level(person(name="Wang Fang"), swapped, "given") == "same"
    assert level(person(name="王芳"), person(name="王强"), "given") == "different"
    assert "given" not in level_names(compare(person(name="王芳"), person(name=None), RULES), RULES)


def test_date_levels() -> None:
    def level(x: str, y: str) -> str:
        return level_names(compare(person(birth=x), person(birth=y), RULES), RULES)["birth_date"]

    assert level("1990-06-02", "1990-06-02") == "same"
    assert level("1990-06-02", "1990-02-06") == "typo"  # day/month swapped
    assert level("1990-06-02", "1990-06-03") == "typo"  # one digit
    assert level("1990-06-12", "1990-06-21") == "typo"  # adjacent digits swapped
    assert level("1990-06-02", "1980-11-25") == "different"


def test_phone_levels() -> None:
    def level(x: str, y: str) -> str:
        return level_names(compare(person(phone=x), person(phone=y), RULES), RULES)["phone"]

    assert level("13912345678", "+86 13912345678") == "same"
    assert level("13912345678", "13912345679") == "partial"
    assert level("0351-7654321", "7654321") == "partial"
    assert level("13912345678", "13800000000") == "different"


def test_address_levels() -> None:
    def level(x: str, y: str) -> str:
        return level_names(compare(person(address=x), person(address=y), RULES), RULES)["address"]

    assert level("太原市小店区长风街8号", "太原市 小店區 長風街 8 號") == "same"
    assert level("山西省太原市小店区长风街8号", "太原市小店区长风街8号") == "same"
    assert level("太原市小店区长风街8号", "北京市朝阳区建国路88号") == "different"


def test_score_parts_sum_to_the_total_and_missing_fields_weigh_nothing() -> None:
    a = person(phone=None)
    b = person(B)
    s = score(a, b, RULES)
    assert s.total == pytest.approx(sum(s.parts.values()))
    assert "phone" not in s.parts
    assert 0.0 < s.probability < 1.0


_names = st.sampled_from(["王芳", "Wang Fang", "汪芳", "王强", "欧阳娜娜", "李雷", None])
_births = st.sampled_from(["1990-06-02", "1990-02-06", "1985-03-17", None])
_sexes = st.sampled_from(["male", "female", None])
_phones = st.sampled_from(["13912345678", "13912345679", None])


@settings(max_examples=150, deadline=None)
@given(_names, _births, _sexes, _phones, _names, _births, _sexes, _phones)
def test_score_is_symmetric(
    n1: str | None, b1: str | None, s1: str | None, p1: str | None,
    n2: str | None, b2: str | None, s2: str | None, p2: str | None,
) -> None:  # fmt: skip
    x = person(A, name=n1, birth=b1, gender=s1, phone=p1)
    y = person(B, name=n2, birth=b2, gender=s2, phone=p2)
    sx, sy = score(x, y, RULES), score(y, x, RULES)
    assert sx.total == pytest.approx(sy.total)
    assert sx.outcome == sy.outcome


# ------------------------------------------------------------------------------- blocking


def test_blocking_keys_bring_the_same_person_together() -> None:
    hanzi = person(A, name="王芳", phone=None)
    latin = person(B, name="Wang Fang", phone=None, address=None)
    assert blocking_keys(hanzi, RULES) & blocking_keys(latin, RULES)
    typo = person(B, name="Wang Fang", birth="1990-02-06", phone=None, address=None)
    assert blocking_keys(hanzi, RULES) & blocking_keys(typo, RULES)


def test_blocking_keys_skip_recipes_with_missing_parts() -> None:
    bare = person(A, name=None, gender=None, birth=None, phone=None, address=None)
    assert blocking_keys(bare, RULES) == frozenset()
    with_card = person(A, name=None, gender=None, birth=None, phone=None, address=None,
                       identifiers=[card(CARD_15)])  # fmt: skip
    keys = blocking_keys(with_card, RULES)
    assert keys == {f"ident:{ID_CARD_SYSTEM}|{ID_CARD}"}


def test_strangers_share_no_blocking_key() -> None:
    a = person(A)
    b = person(B, name="刘德华", gender="male", birth="1961-09-27", phone="13700000000",
               address="香港九龙")  # fmt: skip
    assert not blocking_keys(a, RULES) & blocking_keys(b, RULES)


# ------------------------------------------------------------------------------------ EM


def _draw(rng: random.Random, dist: dict[str, list[float]]) -> tuple[int | None, ...]:
    """A comparison vector with levels drawn from ``dist`` for the fields it names."""
    return tuple(
        rng.choices(range(len(f.levels)), dist[f.name])[0] if f.name in dist else None
        for f in RULES.fields
    )


def test_em_recovers_known_parameters_without_labels() -> None:
    rng = random.Random(7)
    true_m = {"sex": [0.05, 0.95], "birth_date": [0.1, 0.1, 0.8], "postcode": [0.2, 0.8]}
    true_u = {"sex": [0.5, 0.5], "birth_date": [0.9, 0.07, 0.03], "postcode": [0.9, 0.1]}
    labels = [rng.random() < 0.1 for _ in range(20_000)]
    vectors = [_draw(rng, true_m if match else true_u) for match in labels]
    start = Rules.model_validate(RULES.model_dump() | {"prior": 0.3})
    fit = fit_em(vectors, start)
    assert fit.converged
    assert fit.prior == pytest.approx(sum(labels) / len(labels), abs=0.02)
    for name in true_m:
        f = fit.rules.field(name)
        assert f.m is not None and f.u is not None
        assert f.m == pytest.approx(true_m[name], abs=0.05), name
        assert f.u == pytest.approx(true_u[name], abs=0.05), name
    # a field with no data keeps its values
    assert fit.rules.field("phone") == RULES.field("phone")


def test_em_with_random_pairs_gives_a_population_prior() -> None:
    """Blocked pairs (1,000 matches, 1,000 non-matches sharing a birth date) out of 10 M
    possible pairs; u from random pairs; EM finds the matches and the population prior."""
    rng = random.Random(11)
    true_m = {
        "identifiers": [0.05, 0.05, 0.9],
        "family": [0.03, 0.02, 0.01, 0.94],
        "sex": [0.02, 0.98],
        "birth_date": [0.05, 0.05, 0.9],
        "postcode": [0.1, 0.9],
    }
    true_u = {
        "identifiers": [0.99998, 0.00001, 0.00001],
        "family": [0.95, 0.02, 0.005, 0.025],
        "sex": [0.5, 0.5],
        "birth_date": [0.9989, 0.001, 0.0001],
        "postcode": [0.95, 0.05],
    }
    blocked_u = true_u | {"birth_date": [0.0, 0.0, 1.0]}  # blocked on the birth date
    random_vectors = [_draw(rng, true_u) for _ in range(50_000)]
    blocked = [_draw(rng, true_m) for _ in range(1_000)]
    blocked += [_draw(rng, blocked_u) for _ in range(1_000)]
    fit = fit_em(blocked, RULES, total_pairs=10_000_000, random_vectors=random_vectors)
    assert fit.converged
    assert fit.expected_matches == pytest.approx(1_000, rel=0.05)
    assert fit.prior == pytest.approx(1e-4, rel=0.05)
    bd = fit.rules.field("birth_date")
    assert bd.m is not None and bd.m[2] == pytest.approx(0.9, abs=0.03)
    assert bd.u is not None and bd.u[2] < 0.001  # from the random pairs, not the blocks
    fam = fit.rules.field("family")
    assert fam.u is not None and fam.u[3] == pytest.approx(0.025, abs=0.005)


def test_score_levels_matches_score() -> None:
    """score = the comparison vector weighed, with the names' frequency evidence on top."""
    a, b = person(A), person(B, name="Wang Fang")
    levels = compare(a, b, RULES)
    adjusted, namesake = name_evidence(a, b, levels, RULES)
    assert adjusted  # 王 and 芳 are in the table: their agreement is frequency-weighed
    assert score_levels(levels, RULES, adjusted=adjusted, namesake=namesake) == score(a, b, RULES)
    assert score_levels(levels, RULES) != score(a, b, RULES)


def test_dates_are_compared_as_dates() -> None:
    p = person(birth="1990-06-02")
    assert p.birth_date == date(1990, 6, 2)
