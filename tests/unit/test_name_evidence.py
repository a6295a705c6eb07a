"""Name evidence weighed by how common the name is, and namesakes kept out of auto-links.

The shipped rules (config/matching/rules-v2.yaml) and the shipped name-frequency table
(NCIIC 2008, config/matching/data/name-frequencies.tsv) are used as they are.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from services.common.errors import ConfigError
from services.common.identifiers import INSURANCE_CARD_SYSTEM
from services.patient_index.frequencies import FLOOR, load_frequencies
from services.patient_index.matching import decide, load_rules, score
from services.patient_index.normalize import Person, make_person, normalize_ident

RULES = load_rules()
FREQ = RULES.frequencies
A = "12140100MB0000001A"
B = "12140100MB0000002B"
BORN = date(1980, 3, 4)


def person(
    institution: str,
    name: str,
    *,
    sex: str = "female",
    born: date | None = BORN,
    phone: str | None = None,
    postcode: str | None = "030001",
    insurance: str | None = None,
) -> Person:
    idents = []
    if insurance:
        ident = normalize_ident({"system": INSURANCE_CARD_SYSTEM, "value": insurance}, institution)
        assert ident is not None
        idents.append(ident)
    return make_person(
        institution,
        idents=idents,
        name_text=name,
        sex="female" if sex == "female" else "male",
        birth_date=born,
        phone=phone,
        postcode=postcode,
    )


def test_the_table_says_what_the_census_says() -> None:
    """Published NCIIC 2008 facts: 王, 李, 张 lead the surnames with about 7 % each; 伟 is the
    most common given name; 欧阳 is far rarer than 王."""
    assert FREQ is not None
    top3 = sorted(FREQ.surname, key=FREQ.surname.__getitem__, reverse=True)[:3]
    assert set(top3) == {"王", "李", "张"}
    assert 0.06 < FREQ.surname["王"] < 0.09
    assert max(FREQ.given, key=FREQ.given.__getitem__) == "伟"
    assert FREQ.surname["欧阳"] < FREQ.surname["王"] / 100


def test_a_common_surname_agreeing_weighs_less_than_a_rare_one() -> None:
    common = score(person(A, "王晓冬"), person(B, "王晓冬"), RULES)
    rare = score(person(A, "欧阳晓冬"), person(B, "欧阳晓冬"), RULES)
    assert rare.parts["family"] > common.parts["family"] + 5  # bits


def test_a_common_given_name_agreeing_weighs_less_than_a_rare_one() -> None:
    common = score(person(A, "李芳"), person(B, "李芳"), RULES)
    rare = score(person(A, "李翾翀"), person(B, "李翾翀"), RULES)
    assert rare.parts["given"] > common.parts["given"] + 3


def test_two_namesakes_with_nothing_personal_in_common_go_to_review_not_to_a_link() -> None:
    """Two different women called 王芳, same birth date and postcode (the issue's case:
    34.5 bits and auto-linked under rules-v1)."""
    a, b = person(A, "王芳"), person(B, "王芳")
    s = score(a, b, RULES)
    assert s.outcome == "review"
    assert s.guard == "namesake"
    d = decide(b, [("M1", a)], RULES)
    assert d.kind == "review" and d.evidence.get("guard") == "namesake"


def test_the_same_namesakes_written_in_pinyin_on_one_side_go_to_review_too() -> None:
    s = score(person(A, "王芳"), person(B, "Wang Fang"), RULES)
    assert s.outcome == "review" and s.guard == "namesake"


def test_a_shared_phone_tells_namesakes_apart_and_links() -> None:
    a = person(A, "王芳", phone="13912345678")
    b = person(B, "王芳", phone="13912345678")
    assert score(a, b, RULES).outcome == "auto"


def test_a_shared_insurance_number_links_a_common_name() -> None:
    a = person(A, "王芳", insurance="SX1234567890")
    b = person(B, "王芳", insurance="SX1234567890")
    assert score(a, b, RULES).outcome == "auto"


def test_a_phone_that_differs_does_not_count_as_personal_evidence() -> None:
    a = person(A, "王芳", phone="13912345678")
    b = person(B, "王芳", phone="13800000000")
    assert score(a, b, RULES).outcome != "auto"


def test_a_rare_name_is_still_a_namesake_without_a_personal_number() -> None:
    """However rare the name, name + sex + birth date + postcode is no proof: review."""
    s = score(person(A, "欧阳晓冬"), person(B, "欧阳晓冬"), RULES)
    assert s.outcome == "review" and s.guard == "namesake"


def test_a_rare_name_links_on_less_than_a_common_one_needs() -> None:
    """With a shared phone and nothing else but the name, a rare name reaches auto-link and
    a common one does not: the name's frequency is evidence."""
    rare = score(
        person(A, "欧阳晓冬", born=None, postcode=None, phone="13912345678"),
        person(B, "欧阳晓冬", born=None, postcode=None, phone="13912345678"),
        RULES,
    )
    common = score(
        person(A, "王芳", born=None, postcode=None, phone="13912345678"),
        person(B, "王芳", born=None, postcode=None, phone="13912345678"),
        RULES,
    )
    assert rare.outcome == "auto"
    assert common.outcome != "auto"
    assert rare.total > common.total + 10


def test_a_deployment_may_exempt_rare_names_from_the_namesake_rule(tmp_path: Path) -> None:
    text = (Path(__file__).parents[2] / "config/matching/rules-v2.yaml").read_text("utf-8")
    freq = Path(__file__).parents[2] / "config/matching/data/name-frequencies.tsv"
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        text.replace("min_frequency: 0.0", "min_frequency: 1.0e-6").replace(
            "data/name-frequencies.tsv", str(freq)
        ),
        "utf-8",
    )
    relaxed = load_rules(rules)
    assert score(person(A, "欧阳晓冬"), person(B, "欧阳晓冬"), relaxed).outcome == "auto"
    assert score(person(A, "王芳"), person(B, "王芳"), relaxed).guard == "namesake"


def test_a_latin_name_the_table_does_not_know_keeps_the_fields_own_weight() -> None:
    """A FEBRL-style name: no Chinese frequency applies, the rules' u does."""
    a = make_person(A, family="smith", given="joshua", birth_date=BORN)
    b = make_person(B, family="smith", given="joshua", birth_date=BORN)
    s = score(a, b, RULES)
    assert s.parts["family"] == pytest.approx(RULES.field("family").weight(3))
    assert s.parts["given"] == pytest.approx(RULES.field("given").weight(3))
    assert s.guard != "namesake"


def test_an_estimated_given_name_is_rarer_than_every_listed_one() -> None:
    assert FREQ is not None
    est = FREQ.given_of("翾翀", None)
    assert est is not None and FLOOR <= est <= min(FREQ.given.values())
    assert FREQ.given_of("阿依古丽买买提", None) is None  # no estimate for a long name


def test_a_broken_table_is_refused_at_start_up(tmp_path: Path) -> None:
    bad = tmp_path / "freq.tsv"
    bad.write_text("surname\t王\tmany\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"freq.tsv:1"):
        load_frequencies(bad)
    rules = tmp_path / "rules.yaml"
    text = (Path(__file__).parents[2] / "config/matching/rules-v2.yaml").read_text("utf-8")
    rules.write_text(text.replace("data/name-frequencies.tsv", "missing.tsv"), "utf-8")
    with pytest.raises(ConfigError, match=r"missing\.tsv"):
        load_rules(rules)


def test_rules_refuse_frequency_on_a_field_that_is_not_a_name(tmp_path: Path) -> None:
    text = (Path(__file__).parents[2] / "config/matching/rules-v2.yaml").read_text("utf-8")
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        text.replace("    attribute: sex\n", "    attribute: sex\n    frequency: given\n"),
        "utf-8",
    )
    with pytest.raises(ConfigError, match="frequency applies to comparator name only"):
        load_rules(rules)
    rules.write_text(text.replace("personal: [identifiers, phone]", "personal: [passport]"))
    with pytest.raises(ConfigError, match="passport"):
        load_rules(rules)


def test_namesakes_by_ear_go_to_review_too() -> None:
    """裴振毅 and 裴真毅 sound the same: a different person, or a homophone slip — with no
    personal number in common a human decides."""
    s = score(person(A, "裴振毅"), person(B, "裴真毅"), RULES)
    assert s.outcome == "review" and s.guard == "namesake"
    linked = score(
        person(A, "裴振毅", phone="13912345678"), person(B, "裴真毅", phone="13912345678"), RULES
    )
    assert linked.outcome == "auto"
