"""Readings and spellings of Chinese names (services.patient_index.names, issue 19)."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.errors import ConfigError
from services.patient_index import names
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


S, SIM, H, D = "same", "similar", "homophone", "different"
SAME = (S, S)


def case(a: str, b: str, family: str | None, given: str | None, why: str) -> object:
    return pytest.param(a, b, (family, given), id=f"{a}~{b}: {why}")


CASES = [
    # ü written u / v / yu / u: / ü
    *(case("吕芳", latin, S, S, "u umlaut") for latin in ("Lu Fang", "Lv Fang", "Lyu Fang")),
    case("吕芳", "Lü Fang", S, S, "u umlaut"),
    case("吕芳", "Lu: Fang", S, S, "u umlaut"),
    case("Lyu Fang", "LV Fang", S, S, "u umlaut, Latin both sides"),
    case("吕芳", "卢芳", D, S, "lü and lu stay apart between hanzi"),
    case("王心语", "Wang Xinyu", S, S, "xin-yu is not nü"),
    case("王心语", "Wang Xinu", S, SIM, "xin-yu is not nü"),
    # every reading of a heteronym surname
    *(
        case(hanzi + "伟", f"{reading} Wei", S, S, "heteronym surname")
        for hanzi, readings in (
            ("乐", ("Le", "Yue")),
            ("曾", ("Zeng", "Ceng")),
            ("单", ("Shan", "Dan")),
            ("解", ("Xie", "Jie")),
            ("区", ("Ou", "Qu")),
        )
        for reading in readings
    ),
    case("乐伟", "岳伟", H, S, "homophone through the reading yue"),
    case("乐伟", "勒伟", D, S, "lei is not a reading of 乐"),
    case("王伟", "Yu Wei", D, S, "no obscure reading for an ordinary surname"),
    # Wade-Giles and Cantonese (Hong Kong) spellings
    *(
        case(hanzi + "明", f"{latin} Ming", S, S, "surname spelling")
        for hanzi, latin in (
            ("许", "Hsu"),
            ("谢", "Hsieh"),
            ("蔡", "Tsai"),
            ("郭", "Kuo"),
            ("张", "Chang"),
            ("张", "Cheung"),
            ("陈", "Chan"),
            ("吴", "Ng"),
            ("李", "Lee"),
            ("王", "Wong"),
            ("黄", "Wong"),
            ("梁", "Leung"),
        )
    ),
    case("许晓明", "Hsu Hsiao-ming", S, S, "Wade-Giles given name"),
    case("陈志强", "Chen Chih-chiang", S, S, "Wade-Giles given name"),
    case("许晓明", "Hsu Chih-chiang", S, D, "Wade-Giles, another given name"),
    case("张伟", "Cheung Wai", S, S, "Cantonese given name"),
    case("陈大文", "Chan Tai Man", S, S, "Cantonese given name"),
    case("王明", "黄明", D, S, "both Wong, but hanzi are not spellings"),
    case("许明", "Hsieh Ming", D, S, "a spelling of another surname"),
    case("王明", "Cheung Ming", D, S, "a spelling of another surname"),
    case("Hsu Ming", "Xu Ming", S, S, "two spellings of one surname"),
    case("Wong Ming", "Wang Ming", S, S, "two spellings of one surname"),
    case("Hsu Ming", "Wang Ming", D, S, "spellings of two surnames"),
    # middle-dot (minority) names: the hanzi has no family name, the whole name compares
    *(
        case(f"阿依古丽{dot}买买提", latin, None, S, "middle dot, either order")
        for dot in ("·", "•", "・", ".")
        for latin in ("Ayiguli Maimaiti", "Maimaiti Ayiguli", "AYIGULI MAIMAITI")
    ),
    case("阿依古丽·买买提", "Ayiguli·Maimaiti", None, S, "middle dot in Latin"),
    case("阿依古丽·买买提", "买买提·阿依古丽", None, S, "middle dot, other order"),
    case("阿依古丽·买买提", "Ayiguli Aili", None, D, "another name"),
    case("阿依古丽·买买提", "阿依古丽·艾力", None, SIM, "one group shared: close pinyin"),
    # name order and case: an exact swap is not a typo
    *(
        case("王芳", latin, S, S, "order and case")
        for latin in ("Fang Wang", "fang wang", "WANG Fang", "Fang WANG", "Wang, Fang")
    ),
    case("王晓明", "Xiao Ming Wang", S, S, "Western order"),
    case("王晓明", "Xiaoming Wang", S, S, "Western order"),
    case("Fang Wang", "Wang Fang", S, S, "swap between Latin names"),
    case("Xiao Ming Wang", "Wang Xiaoming", S, S, "swap between Latin names"),
    case("王芳", "Fan Wang", SIM, SIM, "a swap with a slip"),
    case("王芳", "Fang Li", D, D, "not a swap"),
    # scripts and homophones
    case("陳芳", "陈芳", S, S, "traditional"),
    case("歐陽震華", "欧阳震华", S, S, "traditional"),
    case("王芳", "汪芳", H, S, "homophone"),
    case("王芳", "王方", S, H, "homophone"),
    # look-alike characters (形近字), one character of the part
    case("王芳", "王芬", S, SIM, "look-alike"),
    case("王伟", "王传", S, SIM, "look-alike"),
    case("李己", "李已", S, SIM, "look-alike"),
    case("王芳", "王明", S, D, "not alike"),
    case("王芳华", "王芬毕", S, D, "two characters changed"),
]


@pytest.mark.parametrize(("a", "b", "expected"), CASES)
def test_name_levels(a: str, b: str, expected: tuple[str | None, str | None]) -> None:
    assert levels(a, b) == expected


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


def test_romanisations_table_found_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # an installed (non-editable) mrhub finds config/ under the working directory, as the
    # image does (WORKDIR /opt/mrhub); nowhere, it says what is missing
    missing = Path("config", "matching", "data", "no-such-table.csv")
    monkeypatch.setattr(names, "ROMANISATIONS_FILE", missing)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"no-such-table\.csv"):
        names.romanisations_path()
    (tmp_path / missing).parent.mkdir(parents=True)
    (tmp_path / missing).write_text("spelling,mandarin_target\n", encoding="utf-8")
    assert names.romanisations_path() == tmp_path / missing
