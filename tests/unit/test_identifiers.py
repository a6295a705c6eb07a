"""居民身份证 parsing and keyed hashes (services.common.identifiers).

Valid numbers are built here with an independent ISO 7064 MOD 11-2 implementation, so the
tests do not trust the library they check.
"""

from __future__ import annotations

import re
from datetime import date, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common.errors import IdentifierError
from services.common.identifiers import (
    IdCard,
    is_valid_uscc,
    keyed_hash,
    parse_id_card,
    with_check_character,
)

WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
CHECK_CHARS = "10X98765432"  # indexed by the weighted sum % 11
ALL_CHECK_CHARS = "0123456789X"

#: Region codes used by the generated numbers.
REGIONS = ("110101", "110102", "110105", "110106", "120101", "120102", "140121", "310101")


def check_char(body17: str) -> str:
    assert len(body17) == 17 and body17.isdigit()
    return CHECK_CHARS[sum(int(d) * w for d, w in zip(body17, WEIGHTS, strict=True)) % 11]


def make_id(region: str, born: date, seq: int) -> str:
    body = f"{region}{born:%Y%m%d}{seq:03d}"
    return body + check_char(body)


def with_check(body17: str) -> str:
    return body17 + check_char(body17)


def with_wrong_check(number: str) -> str:
    return number[:-1] + ("0" if number[-1] != "0" else "1")


VALID = make_id("110101", date(1990, 3, 7), 123)


def test_the_independent_check_matches_the_standards_worked_example() -> None:
    # GB 11643-1999 appendix example: 11010519491231002X
    assert check_char("11010519491231002") == "X"


def test_known_valid_male_number_decodes() -> None:
    number = make_id("110101", date(1990, 3, 7), 123)
    card = parse_id_card(number)
    assert card.number == number
    assert card.birth_date == date(1990, 3, 7)
    assert card.sex == "male"  # 17th digit 3 is odd
    assert card.region_code == "110101"


def test_even_sequence_digit_is_female() -> None:
    card = parse_id_card(make_id("310101", date(1985, 12, 31), 124))
    assert card.sex == "female"
    assert card.birth_date == date(1985, 12, 31)


def _number_ending_in_x() -> str:
    for seq in range(1000):
        number = make_id("120101", date(1970, 6, 15), seq)
        if number.endswith("X"):
            return number
    raise AssertionError("no sequence gives the check character X")  # pragma: no cover


def test_lower_case_x_is_read_as_upper_case() -> None:
    number = _number_ending_in_x()
    card = parse_id_card(number[:-1] + "x")
    assert card.number == number
    assert card.number.endswith("X")


@pytest.mark.parametrize("wrong", [c for c in ALL_CHECK_CHARS if c != VALID[-1]])
def test_every_wrong_check_character_is_rejected(wrong: str) -> None:
    parse_id_card(VALID)  # the right one passes
    with pytest.raises(IdentifierError, match="check character"):
        parse_id_card(VALID[:-1] + wrong)


def test_legacy_15_digit_card_converts_to_18() -> None:
    legacy = "110101" + "650412" + "123"  # region, YYMMDD, sequence (odd: male)
    body = "110101" + "19650412" + "123"
    card = parse_id_card(legacy)
    assert card.number == body + check_char(body)
    assert len(card.number) == 18
    assert card.birth_date == date(1965, 4, 12)
    assert card.sex == "male"


def test_legacy_15_digit_card_with_a_letter_is_rejected() -> None:
    with pytest.raises(IdentifierError):
        parse_id_card("11010165041212X")


def test_sex_comes_from_the_17th_digit_only() -> None:
    # Same region and date; only the 17th digit's parity decides.
    assert parse_id_card(make_id("110102", date(1999, 9, 9), 101)).sex == "male"
    assert parse_id_card(make_id("110102", date(1999, 9, 9), 100)).sex == "female"
    assert parse_id_card(make_id("110102", date(1999, 9, 9), 18)).sex == "female"
    assert parse_id_card(make_id("110102", date(1999, 9, 9), 19)).sex == "male"


def test_future_birth_date_is_rejected() -> None:
    future = date.today() + timedelta(days=400)
    with pytest.raises(IdentifierError, match="future"):
        parse_id_card(make_id("110101", future, 11))


def test_impossible_birth_date_is_rejected() -> None:
    with pytest.raises(IdentifierError, match="birth date"):
        parse_id_card(with_check("11010119900230011"))


@pytest.mark.parametrize(
    "bad",
    [
        with_wrong_check(VALID),
        with_check("11010119900230123"),  # 30 February, with a matching check character
        make_id("110101", date.today() + timedelta(days=400), 123),  # born next year
        VALID[:-2],  # too short
        VALID[:9] + "A" + VALID[10:],  # a letter inside
        with_check("99999919900307123"),  # no such region
    ],
    ids=["check", "date", "future", "length", "letter", "region"],
)
def test_error_messages_never_contain_the_number(bad: str) -> None:
    with pytest.raises(IdentifierError) as info:
        parse_id_card(bad)
    message = str(info.value)
    assert message.startswith("invalid 身份证")
    assert bad not in message
    assert bad[:17] not in message
    assert bad[6:14] not in message  # nor the birth date it encodes
    assert not re.search(r"\d{8,}", message)


def test_empty_value_is_rejected() -> None:
    with pytest.raises(IdentifierError):
        parse_id_card("")


valid_birth_dates = st.dates(min_value=date(1900, 1, 1), max_value=date.today())


@given(region=st.sampled_from(REGIONS), born=valid_birth_dates, seq=st.integers(0, 999))
def test_property_any_valid_body_with_its_check_character_parses(
    region: str, born: date, seq: int
) -> None:
    number = make_id(region, born, seq)
    card = parse_id_card(number)
    assert card.number == number
    assert card.birth_date == born
    assert card.region_code == region
    assert card.sex == ("male" if seq % 2 else "female")


@given(body=st.text(alphabet="0123456789", min_size=17, max_size=17))
def test_property_the_check_character_from_stdnum_is_the_independent_one(body: str) -> None:
    assert with_check_character(body) == body + check_char(body)


@pytest.mark.parametrize("body", ["1101051949100100", "11010519491001001X", "11010519491001a01"])
def test_a_body_that_is_not_17_digits_gets_no_check_character(body: str) -> None:
    with pytest.raises(IdentifierError):
        with_check_character(body)


@given(
    region=st.sampled_from(REGIONS),
    born=valid_birth_dates,
    seq=st.integers(0, 999),
    replacement=st.sampled_from(ALL_CHECK_CHARS),
)
def test_property_any_other_check_character_fails(
    region: str, born: date, seq: int, replacement: str
) -> None:
    number = make_id(region, born, seq)
    if replacement == number[-1]:
        replacement = ALL_CHECK_CHARS[(ALL_CHECK_CHARS.index(replacement) + 1) % 11]
    with pytest.raises(IdentifierError):
        parse_id_card(number[:-1] + replacement)


def test_keyed_hash_is_stable_and_depends_on_key_system_and_value() -> None:
    number = make_id("110101", date(1990, 3, 7), 123)
    system = "urn:oid:2.16.156.10011.1.3"
    first = keyed_hash(b"key-one", system, number)
    assert first == keyed_hash(b"key-one", system, number)
    assert re.fullmatch(r"[0-9a-f]{32}", first)
    assert first != keyed_hash(b"key-two", system, number)
    assert first != keyed_hash(b"key-one", "urn:oid:2.16.156.10011.1.15", number)
    assert first != keyed_hash(b"key-one", system, make_id("110101", date(1990, 3, 7), 125))
    assert number not in first


def test_repr_of_an_id_card_hides_the_number() -> None:
    number = make_id("110101", date(1990, 3, 7), 123)
    card = parse_id_card(number)
    for text in (repr(card), str(card), f"{card!r}", repr([card])):
        assert number not in text
        assert "19900307" not in text
    direct = IdCard(number=number, birth_date=date(1990, 3, 7), sex="male", region_code="110101")
    assert number not in repr(direct)


def test_uscc_check_character() -> None:
    assert is_valid_uscc("91110000600037341L")  # python-stdnum's documented example
    assert not is_valid_uscc("91110000600037341M")
    assert not is_valid_uscc("91110000600037341")


def test_card_from_a_county_created_after_the_birth_year_is_accepted() -> None:
    # 太原市小店区 (140105) exists since 1997; a person born in 1985 got the card at 16.
    number = with_check("14010519850317123")
    card = parse_id_card(number)
    assert card.region_code == "140105"
    assert card.birth_date == date(1985, 3, 17)


def test_card_with_no_such_province_is_refused() -> None:
    with pytest.raises(IdentifierError, match="province"):
        parse_id_card(with_check("99010519850317123"))
