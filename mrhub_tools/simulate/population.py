"""Made-up patients for ``mrhub simulate`` (pure, seeded): valid 身份证 numbers, Chinese names
and their pinyin spellings, phones, addresses, and the typos real registration desks make.

Nothing here is a real person. 身份证 numbers are built from a region code, a birth date and a
sequence whose parity is the sex, with the GB 11643 check character (ISO 7064 MOD 11-2).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Final

from pypinyin import lazy_pinyin

from services.common.identifiers import with_check_character

#: County-level codes of the two simulated prefectures (太原 1401xx, 大同 1402xx), by name.
TAIYUAN: Final = {
    "140105": "小店区",
    "140106": "迎泽区",
    "140107": "杏花岭区",
    "140108": "尖草坪区",
    "140109": "万柏林区",
    "140110": "晋源区",
    "140121": "清徐县",
    "140122": "阳曲县",
    "140123": "娄烦县",
    "140181": "古交市",
}
DATONG: Final = {
    "140212": "新荣区",
    "140213": "平城区",
    "140214": "云冈区",
    "140215": "云州区",
    "140221": "阳高县",
    "140222": "天镇县",
    "140223": "广灵县",
    "140224": "灵丘县",
    "140225": "浑源县",
    "140226": "左云县",
}
PREFECTURES: Final = {"1401": ("太原市", TAIYUAN), "1402": ("大同市", DATONG)}

_SURNAMES: Final = "王李张刘陈杨赵黄周吴徐孙胡朱高林何郭马罗梁宋郑谢韩唐冯于董萧程曹袁邓许傅沈曾彭吕苏卢蒋蔡贾丁魏薛叶阎"  # noqa: E501
_GIVEN: Final = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玉兰建国志红文辉宇浩然欣怡子轩晨阳梓涵雨萱俊凯瑞丹宏斌慧琳海峰"  # noqa: E501
#: Characters a registration clerk confuses (same sound or similar shape).
_CONFUSED: Final = {
    "伟": "玮",
    "芳": "方",
    "静": "靜",
    "丽": "莉",
    "明": "铭",
    "华": "桦",
    "红": "虹",
    "军": "君",
    "杰": "洁",
    "英": "瑛",
    "玉": "钰",
    "兰": "岚",
    "涛": "滔",
    "海": "梅",
    "文": "雯",
}
_STREETS: Final = [
    "解放路",
    "建设路",
    "长风街",
    "府西街",
    "迎泽大街",
    "和平路",
    "新建路",
    "御河路",
    "魏都大道",
    "文兴路",
    "平城街",
    "永泰街",
]


def id_card(region: str, born: date, sequence: int) -> str:
    """An 18-character 身份证 number (the sequence's parity is the sex: odd = male)."""
    return with_check_character(f"{region}{born:%Y%m%d}{sequence:03d}")


def card_is_valid(number: str) -> bool:
    """The GB 11643 check (length, digits, check character); lower-case x reads as X."""
    number = number.upper()
    if len(number) != 18 or not number[:17].isdigit():
        return False
    return with_check_character(number[:17]) == number


def mistype_card(number: str, rng: random.Random) -> str:
    """The number with one digit mistyped so that the check character no longer fits."""
    while True:
        pos = rng.randrange(6, 17)  # keep the region: the typo is in the date or sequence
        digit = str((int(number[pos]) + rng.randrange(1, 10)) % 10)
        typo = number[:pos] + digit + number[pos + 1 :]
        if not card_is_valid(typo):
            return typo


def pinyin_name(family: str, given: str) -> tuple[str, str]:
    """``("Wang", "Fang")``: the name as hospitals that register in pinyin write it."""
    fam = "".join(lazy_pinyin(family)).capitalize()
    giv = "".join(lazy_pinyin(given)).capitalize()
    return fam, giv


@dataclass(frozen=True, slots=True)
class Person:
    """One simulated patient. ``card`` is ``None`` for a patient who shows no 身份证 (a
    child, a foreigner, a patient who forgot it): the hub knows them only by a hospital's
    门诊号."""

    index: int
    card: str | None
    family: str
    given: str
    sex: str  # male | female
    born: date
    phone: str
    prefecture: str  # 1401 | 1402
    address: str

    @property
    def name(self) -> str:
        return self.family + self.given


class PersonGen:
    """A seeded stream of distinct persons.

    ``salt`` (a run id) varies what identifies a person — birth date, 身份证 sequence, phone —
    and nothing else, so that two runs with one seed have the same structure while their
    patients neither share a number nor look alike to a matcher in a hub that keeps what
    earlier runs posted. ``card_regions`` restricts the regions of the numbers (tests use a
    prefix no other test uses).
    """

    def __init__(
        self,
        seed: int,
        *,
        salt: str = "",
        no_card_share: float = 0.03,
        card_regions: tuple[str, ...] | None = None,
    ) -> None:
        self.rng = random.Random(f"persons:{seed}")  # noqa: S311 - made-up people
        self.card_rng = random.Random(f"cards:{seed}:{salt}")  # noqa: S311
        self.no_card_share = no_card_share
        self.card_regions = card_regions
        self.used: set[str] = set()
        self.count = 0

    def _card(self, region: str, born: date, male: bool) -> str:
        for _ in range(10_000):
            seq = self.card_rng.randrange(500) * 2 + (1 if male else 0)
            number = id_card(region, born, seq)
            if number not in self.used:
                self.used.add(number)
                return number
        raise OverflowError("out of 身份证 sequence numbers for one region and birth date")

    def __iter__(self) -> PersonGen:
        return self

    def __next__(self) -> Person:
        rng = self.rng
        prefecture = "1401" if rng.random() < 0.6 else "1402"
        counties = PREFECTURES[prefecture][1]
        home = rng.choice(sorted(counties))
        born = date(1940, 1, 1) + timedelta(
            days=(rng.randrange(80 * 365) + self.card_rng.randrange(80 * 365)) % (80 * 365)
        )
        male = rng.random() < 0.5
        has_card = rng.random() >= self.no_card_share
        region = rng.choice(self.card_regions) if self.card_regions else home
        family = rng.choice(_SURNAMES)
        given = "".join(rng.sample(_GIVEN, rng.choice((1, 2, 2, 2))))
        digits = (rng.randrange(10**9) + self.card_rng.randrange(10**9)) % 10**9
        phone = f"1{rng.choice('3456789')}{digits:09d}"
        city = PREFECTURES[prefecture][0]
        address = (
            f"山西省{city}{counties[home]}{rng.choice(_STREETS)}{rng.randrange(1, 300)}号"
            f"{rng.randrange(1, 30)}单元{rng.randrange(101, 2699)}室"
        )
        card = self._card(region, born, male) if has_card else None
        index = self.count
        self.count += 1
        return Person(
            index=index,
            card=card,
            family=family,
            given=given,
            sex="male" if male else "female",
            born=born,
            phone=phone,
            prefecture=prefecture,
            address=address,
        )


def typo_name(given: str, rng: random.Random) -> str:
    """The given name with one character a clerk confuses (or, failing that, doubled)."""
    spots = [i for i, ch in enumerate(given) if ch in _CONFUSED]
    if not spots:
        return given + given[-1]
    i = rng.choice(spots)
    return given[:i] + _CONFUSED[given[i]] + given[i + 1 :]


def typo_phone(phone: str, rng: random.Random) -> str:
    """Two neighbouring digits of the phone swapped (or one changed if they are equal)."""
    i = rng.randrange(3, len(phone) - 1)
    if phone[i] != phone[i + 1]:
        return phone[:i] + phone[i + 1] + phone[i] + phone[i + 2 :]
    return phone[:i] + str((int(phone[i]) + 1) % 10) + phone[i + 1 :]
