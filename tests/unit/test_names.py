"""Readings and spellings of Chinese names (services.patient_index.names, issue 19)."""

from __future__ import annotations

import pytest

from services.patient_index.names import (
    NAME_LEVELS,
    Part,
    compare_name,
    name_block_key,
)
from services.patient_index.normalize import (
    Person,
    make_person,
    person_from_json,
    person_to_json,
)

HOSPITAL = "12140100MB0000001A"


def person(name: str) -> Person:
    return make_person(HOSPITAL, name_text=name)


def levels(a: str, b: str) -> tuple[str | None, str | None]:
    """(family level, given level) of two whole names, both ways round (they must agree)."""
    pa, pb = person(a), person(b)
    out = []
    parts: tuple[Part, Part] = ("family", "given")
    for part in parts:
        ab, ba = compare_name(pa, pb, part), compare_name(pb, pa, part)
        assert ab == ba, (a, b, part)
        out.append(None if ab is None else NAME_LEVELS[ab])
    return out[0], out[1]


SAME = ("same", "same")


# ------------------------------------------------------------------------------------ ü


@pytest.mark.parametrize("latin", ["Lu Fang", "Lv Fang", "Lyu Fang", "Lü Fang", "Lu: Fang"])
def test_u_umlaut_however_written_is_the_same_surname(latin: str) -> None:
    assert levels("吕芳", latin) == SAME


def test_u_umlaut_in_latin_against_latin() -> None:
    assert levels("Lyu Fang", "LV Fang") == SAME
    assert levels("Lyu Fang", "Lü Fang") == SAME


def test_u_umlaut_and_u_stay_apart_between_hanzi() -> None:
    # 吕 lǚ and 卢 lú are different surnames even if Latin spellings cannot tell them apart
    assert levels("吕芳", "卢芳") == ("different", "same")


def test_yu_inside_a_given_name_is_not_u_umlaut() -> None:
    # 心语 xin-yu: the n belongs to xin, so "nyu" there is not nü
    assert levels("王心语", "Wang Xinyu") == SAME
    assert levels("王心语", "Wang Xinu") == ("same", "similar")


# ------------------------------------------------------------------ heteronym surnames


@pytest.mark.parametrize(
    ("hanzi", "readings"),
    [
        ("乐", ("Le", "Yue")),
        ("曾", ("Zeng", "Ceng")),
        ("单", ("Shan", "Dan")),
        ("解", ("Xie", "Jie")),
        ("区", ("Ou", "Qu")),
    ],
)
def test_every_reading_of_a_heteronym_surname_counts(hanzi: str, readings: tuple[str, ...]) -> None:
    for reading in readings:
        assert levels(hanzi + "伟", f"{reading} Wei") == SAME, reading


def test_heteronym_readings_make_homophones_between_hanzi() -> None:
    assert levels("乐伟", "岳伟") == ("homophone", "same")  # yue
    assert levels("乐伟", "勒伟") == ("different", "same")  # 勒 lei is not a reading of 乐


def test_an_ordinary_surname_gets_no_obscure_reading() -> None:
    # pypinyin also lists yù for 王; as a surname it is only wang
    assert levels("王伟", "Yu Wei") == ("different", "same")


# ---------------------------------------------------------- Wade-Giles and Cantonese


@pytest.mark.parametrize(
    ("hanzi", "latin"),
    [
        ("许明", "Hsu Ming"),
        ("谢明", "Hsieh Ming"),
        ("蔡明", "Tsai Ming"),
        ("郭明", "Kuo Ming"),
        ("张明", "Chang Ming"),
        ("张明", "Cheung Ming"),
        ("陈明", "Chan Ming"),
        ("吴明", "Ng Ming"),
        ("李明", "Lee Ming"),
        ("王明", "Wong Ming"),
        ("黄明", "Wong Ming"),
        ("梁明", "Leung Ming"),
    ],
)
def test_wade_giles_and_cantonese_surname_spellings(hanzi: str, latin: str) -> None:
    assert levels(hanzi, latin) == SAME


def test_cantonese_given_name() -> None:
    assert levels("张伟", "Cheung Wai") == SAME
    assert levels("陈大文", "Chan Tai Man") == SAME


def test_a_spelling_shared_by_two_surnames_does_not_join_their_hanzi() -> None:
    # 王 and 黄 are both "Wong" in Hong Kong, but hanzi against hanzi is not spelling
    assert levels("王明", "黄明") == ("different", "same")


def test_a_spelling_is_not_any_surname() -> None:
    assert levels("许明", "Hsieh Ming")[0] == "different"
    assert levels("王明", "Cheung Ming")[0] == "different"


def test_two_spellings_of_one_surname_in_latin() -> None:
    assert levels("Hsu Ming", "Xu Ming") == SAME
    assert levels("Wong Ming", "Wang Ming") == SAME
    assert levels("Hsu Ming", "Wang Ming")[0] == "different"


# --------------------------------------------------------------- middle-dot names


@pytest.mark.parametrize("dot", ["·", "•", "・", "."])
def test_middle_dot_name_against_its_pinyin_in_either_order(dot: str) -> None:
    hanzi = f"阿依古丽{dot}买买提"
    for latin in ("Ayiguli Maimaiti", "Maimaiti Ayiguli", "AYIGULI MAIMAITI", "Ayiguli·Maimaiti"):
        # the hanzi side has no family name: only the given part (the whole name) compares
        assert levels(hanzi, latin) == (None, "same"), latin


def test_middle_dot_name_in_the_other_order_in_hanzi() -> None:
    assert levels("阿依古丽·买买提", "买买提·阿依古丽") == (None, "same")


def test_middle_dot_name_that_differs() -> None:
    assert levels("阿依古丽·买买提", "Ayiguli Aili")[1] != "same"
    assert levels("阿依古丽·买买提", "阿依古丽·艾力")[1] != "same"


# ------------------------------------------------------------------- order and case


@pytest.mark.parametrize(
    "latin", ["Fang Wang", "fang wang", "WANG Fang", "Fang WANG", "Wang, Fang", "wang fang"]
)
def test_name_order_and_case(latin: str) -> None:
    assert levels("王芳", latin) == SAME


def test_western_order_with_a_two_syllable_given_name() -> None:
    assert levels("王晓明", "Xiao Ming Wang") == SAME
    assert levels("王晓明", "Xiaoming Wang") == SAME


def test_swap_between_latin_names_is_same() -> None:
    assert levels("Fang Wang", "Wang Fang") == SAME
    assert levels("Xiao Ming Wang", "Wang Xiaoming") == SAME


def test_a_swap_with_a_slip_is_only_similar() -> None:
    assert levels("王芳", "Fan Wang") == ("similar", "similar")


def test_a_different_name_is_not_a_swap() -> None:
    assert levels("王芳", "Fang Li") == ("different", "different")


# ------------------------------------------------------------------------ scripts


def test_traditional_characters_are_the_same() -> None:
    assert levels("陳芳", "陈芳") == SAME
    assert levels("歐陽震華", "欧阳震华") == SAME


def test_homophone_hanzi() -> None:
    assert levels("王芳", "汪芳") == ("homophone", "same")
    assert levels("王芳", "王方") == ("same", "homophone")


# ------------------------------------------------------------------------ look-alikes


def test_look_alike_character_is_similar() -> None:
    assert levels("王芳", "王芬") == ("same", "similar")
    assert levels("王伟", "王传") == ("same", "similar")
    assert levels("李己", "李已") == ("same", "similar")


def test_unlike_characters_are_different() -> None:
    assert levels("王芳", "王明") == ("same", "different")
    assert levels("王明", "黄明") == ("different", "same")


def test_look_alike_needs_only_one_character_changed() -> None:
    assert levels("王芳华", "王芬毕")[1] == "different"


# -------------------------------------------------------------------------- missing


def test_missing_part_gives_none() -> None:
    assert levels("王芳", "Wang") == ("same", None)
    assert compare_name(person("王芳"), make_person(HOSPITAL), "family") is None


def test_persons_stored_by_the_old_code_compare() -> None:
    # a block in a changelog holds a Person written before names.py: no new keys
    doc = person_to_json(person("吕芳"))
    old = person_from_json(doc)
    assert compare_name(old, person("Lyu Fang"), "family") == NAME_LEVELS.index("same")


def test_repr_shows_no_name() -> None:
    text = repr(person("阿依古丽·买买提"))
    assert "阿依古丽" not in text and "ayiguli" not in text.lower()


# ---------------------------------------------------------------------- block key


def test_block_key_joins_spellings_and_orders() -> None:
    keys = {
        name_block_key(person(n))
        for n in ("吕芳", "Lyu Fang", "Fang LV", "LU Fang", "lü fang", "Lu: Fang", "呂芳")
    }
    assert len(keys) == 1


def test_block_key_joins_surname_spellings_and_middle_dot_names() -> None:
    assert name_block_key(person("许明")) == name_block_key(person("Hsu Ming"))
    assert name_block_key(person("张伟")) == name_block_key(person("Cheung Wei"))
    assert (
        name_block_key(person("阿依古丽·买买提"))
        == name_block_key(person("Ayiguli Maimaiti"))
        == name_block_key(person("Maimaiti Ayiguli"))
    )


def test_block_key_keeps_different_names_apart() -> None:
    assert name_block_key(person("王芳")) != name_block_key(person("黄芳"))
    assert name_block_key(person("王芳")) != name_block_key(person("王明"))
    # known limits: a Cantonese given name, a spelling that is itself pinyin
    assert name_block_key(person("张伟")) != name_block_key(person("Cheung Wai"))
    assert name_block_key(person("张伟")) != name_block_key(person("Chang Wei"))


def test_block_key_without_a_name() -> None:
    assert name_block_key(make_person(HOSPITAL)) is None
