"""The independent Chinese data set (mrhub_tools.cnpop, issue 19): what the bench relies on."""

from __future__ import annotations

import math
import re
from collections import Counter
from itertools import combinations
from pathlib import Path

import pytest

pytest.importorskip("pandas")

from mrhub_tools import cnpop
from mrhub_tools.cnpop import names as nm
from mrhub_tools.cnpop.generate import RATES, Draw, generate
from mrhub_tools.cnpop.stats import stats
from services.common.errors import IdentifierError
from services.common.identifiers import parse_id_card, with_check_character

# rows: institution, name, family, given, sex, birth_date, phone, address, postcode, id_card,
# insurance, _person, _errors
INST, NAME, FAMILY, GIVEN, SEX, BIRTH, PHONE, ADDRESS, POSTCODE, ID, INS, PERSON, ERRORS = range(13)


@pytest.fixture(scope="module")
def draw() -> Draw:
    return generate(10_000, 20240601)


def errs(row: tuple[object, ...]) -> set[str]:
    return {e for e in str(row[ERRORS]).split(";") if e}


def test_a_seed_gives_one_data_set_and_another_seed_another() -> None:
    a, b, c = generate(1500, 3), generate(1500, 3), generate(1500, 4)
    assert a.rows == b.rows
    assert a.rows != c.rows


def test_load_returns_the_interface_the_bench_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MRHUB_CNPOP_CACHE", str(tmp_path))
    data = cnpop.load("cn-800", seed=11)
    assert isinstance(data, cnpop.CnDataset)
    assert data.name == "cn-800"
    frame = data.frame
    assert len(frame) == 800
    assert tuple(frame.columns) == cnpop.COLUMNS
    assert all(isinstance(i, str) for i in frame.index) and frame.index.is_unique
    assert frame["name"].map(lambda v: isinstance(v, str) and v != "").all()
    assert set(frame["sex"].dropna()) <= {"male", "female"}
    assert (
        frame["birth_date"].dropna().map(lambda v: bool(re.fullmatch(r"\d{4}-\d\d-\d\d", v))).all()
    )
    assert frame["institution"].notna().all()
    # generated once, then read from the cache: the same records and truth
    assert list(tmp_path.glob("cn-800-seed11-*.csv.gz"))
    again = cnpop.load("cn-800", seed=11)
    assert again.frame.equals(frame)
    assert again.truth == data.truth


def test_truth_pairs_are_exactly_the_pairs_of_records_of_one_person(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MRHUB_CNPOP_CACHE", str(tmp_path))
    data = cnpop.load("cn-600", seed=5)
    person = data.frame["_person"].to_dict()
    expected = {(a, b) for a, b in combinations(sorted(person), 2) if person[a] == person[b]}
    assert data.truth == expected
    assert all(a < b for a, b in data.truth)
    assert len(expected) > 100  # most people are seen at more than one hospital


def test_names_sizes_and_the_default_seed() -> None:
    assert cnpop.size_of("cn-10k") == 10_000
    assert cnpop.size_of("cn-1m") == 1_000_000
    assert cnpop.size_of("cn-250") == 250
    with pytest.raises(ValueError):
        cnpop.size_of("febrl1")
    assert cnpop.REPORT_SEED != cnpop.TUNING_SEED


def test_while_tuning_the_report_seed_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MRHUB_CNPOP_CACHE", str(tmp_path))
    monkeypatch.setenv("MRHUB_CNPOP_TUNING", "1")
    with pytest.raises(ValueError, match="report seed"):
        cnpop.load("cn-100")
    assert len(cnpop.load("cn-100", seed=cnpop.TUNING_SEED).frame) == 100


def test_every_card_without_an_injected_error_passes_and_agrees(draw: Draw) -> None:
    by_pid = {p.pid: p for p in draw.persons}
    for p in draw.persons:
        card = parse_id_card(p.id_card)
        assert (card.birth_date, card.sex) == (p.birth, p.sex)
    checked = 0
    for row in draw.rows:
        e = errs(row)
        if row[ID] is None or e & {"id_typo", "id_placeholder", "id_guardian"}:
            continue
        p = by_pid[int(str(row[PERSON]))]
        card = parse_id_card(str(row[ID]))
        assert row[ID] == p.id_card
        if not e & {"birth_missing", "birth_digit_typo", "birth_day_month_swap"}:
            assert card.birth_date.isoformat() == row[BIRTH]
        if not e & {"sex_missing", "sex_wrong"}:
            assert card.sex == row[SEX]
        checked += 1
    assert checked > 7000


def test_injected_card_errors_fail_the_checksum_or_are_placeholders(draw: Draw) -> None:
    typos = [r for r in draw.rows if "id_typo" in errs(r)]
    placeholders = [r for r in draw.rows if "id_placeholder" in errs(r)]
    assert typos and placeholders
    for r in typos:
        number = str(r[ID])
        assert len(number) == 18 and number[:17].isdigit()
        assert with_check_character(number[:17]) != number  # the check character disagrees
        with pytest.raises(IdentifierError):
            parse_id_card(number)
    for r in placeholders:
        assert len(set(str(r[ID]))) == 1 and len(str(r[ID])) == 18


def test_namesakes_are_different_people_with_one_name_sex_birth_date_and_district(
    draw: Draw,
) -> None:
    by_pid = {p.pid: p for p in draw.persons}
    namesakes = [p for p in draw.persons if p.namesake_of is not None]
    assert len(namesakes) >= 0.5 * RATES["namesake"] * len(draw.persons)
    for q in namesakes:
        p = by_pid[q.namesake_of]  # type: ignore[index]
        assert q.pid != p.pid and q.id_card != p.id_card
        assert (q.surname + q.given, q.sex, q.birth, q.district) == (
            p.surname + p.given,
            p.sex,
            p.birth,
            p.district,
        )
        assert q.street != p.street and q.phone != p.phone


def test_twins_share_surname_birth_date_address_and_phone_not_given_name(draw: Draw) -> None:
    by_pid = {p.pid: p for p in draw.persons}
    twins = [p for p in draw.persons if p.twin_of is not None]
    assert twins
    for t in twins:
        s = by_pid[t.twin_of]  # type: ignore[index]
        assert (t.surname, t.birth, t.street, t.number, t.flat, t.phone) == (
            s.surname,
            s.birth,
            s.street,
            s.number,
            s.flat,
            s.phone,
        )
        assert t.given != s.given and t.id_card != s.id_card


def _within(count: int, eligible: int, rate: float) -> bool:
    expected = eligible * rate
    return abs(count - expected) <= 4 * math.sqrt(expected * (1 - rate)) + 3


def test_error_rates_on_a_10k_draw_are_the_configured_ones(draw: Draw) -> None:
    rows = draw.rows
    e = [errs(r) for r in rows]
    n = len(rows)
    count = Counter(k for s in e for k in s)
    for kind in ("sex_missing", "birth_missing", "address_missing"):
        assert _within(count[kind], n, RATES[kind]), kind
    # a day/month swap needs a day ≤ 12; a digit typo needs no other birth error first
    assert _within(count["birth_digit_typo"], n, RATES["birth_digit_typo"])
    with_card = [s for r, s in zip(rows, e, strict=True) if r[ID] is not None]
    eligible = [s for s in with_card if "id_guardian" not in s]
    assert _within(
        sum("id_placeholder" in s for s in eligible), len(eligible), RATES["id_placeholder"]
    )
    hanzi = [s for s in e if not s & {"latin", "newborn_placeholder", "dot_variant"}]
    assert _within(count["homophone"], len(hanzi), RATES["homophone"])
    latin = [s for s in e if "latin" in s]
    assert _within(
        sum("latin_western_order" in s for s in latin), len(latin), RATES["latin_western_order"]
    )


def test_names_repeat_as_chinese_names_do(draw: Draw) -> None:
    out = stats(draw)
    top = out["top_full_names"]
    assert isinstance(top, list) and top[0][1] >= 5  # 王芳, 张伟 … are shared
    share = out["one_char_given_share"]
    assert isinstance(share, float) and 0.1 < share < 0.4
    assert out["minority_persons"]
    latin = [str(r[NAME]) for r in draw.rows if "latin" in errs(r)]
    assert any(n.islower() for n in latin) and any(n.isupper() for n in latin)
    minority = [str(r[NAME]) for r in draw.rows if "·" in str(r[NAME])]
    assert minority


@pytest.mark.parametrize(
    ("pinyin", "wade_giles"),
    [("zhang", "chang"), ("xu", "hsü"), ("qiang", "ch'iang"), ("zhi", "chih"), ("ke", "k'o"),
     ("zhong", "chung"), ("xiong", "hsiung"), ("jie", "chieh"), ("si", "ssu"), ("xue", "hsüeh"),
     ("yue", "yüeh"), ("lve", "lüeh")],
)  # fmt: skip
def test_wade_giles_spellings(pinyin: str, wade_giles: str) -> None:
    assert nm.wade_giles(pinyin) == wade_giles


def test_the_readings_of_u_umlaut_and_of_heteronym_surnames() -> None:
    assert [nm.u_umlaut("lv", s) for s in ("v", "u", "yu", "ü")] == ["lv", "lu", "lyu", "lü"]
    assert (
        nm.surname_pinyin("乐") == "yue4" and nm.surname_pinyin("乐", wrong_reading=True) == "le4"
    )
    assert nm.surname_pinyin("单") == "shan4"


def test_the_name_tables_are_the_orcid_ones_not_the_census() -> None:
    src = (nm.DATA / "SOURCES.md").read_text(encoding="utf-8")
    assert "sinonym" in src and "Apache" in src
    assert nm.surname_table().items[:3] == ("王", "李", "张")
    assert "王" not in nm.given_weights()  # an ORCID artefact, dropped
