"""Generate persons of one prefecture and their records at its hospitals, with errors.

One ``random.Random(seed)`` drives everything, so a seed gives the same data set on every
machine. The rates are in :data:`RATES`; docs/cn-dataset.md gives each one's source (a
published study, or "assumption").
"""

from __future__ import annotations

import random
from bisect import bisect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from itertools import accumulate
from typing import Final

from opencc import OpenCC

from services.common.identifiers import with_check_character

from . import names as nm

#: Birth dates are counted back from this day (not from today: a seed must give one data set).
REFERENCE_DATE: Final = date(2026, 1, 1)

#: Per-record (or per-person where said) probabilities of each injected error or variant.
RATES: Final[dict[str, float]] = {
    # population (per person)
    "namesake": 0.010,  # a second person with the same name, sex, birth date and district
    "twin": 0.006,  # per child: born with a twin
    "minority": 0.020,  # a Uyghur-style name with a middle dot
    "head_name": 0.25,  # given name drawn from the head list of very common names (Zipf)
    "insurance_holder": 0.70,  # has a 医保卡 number
    "born_elsewhere": 0.15,  # 身份证 region code outside the prefecture
    "phone_changed_person": 0.10,  # has a second mobile number used at later visits
    "moved_person": 0.06,  # has an earlier address some hospitals still hold
    # hanzi names (per hanzi record)
    "homophone": 0.020,  # 同音字: a character replaced by one read the same
    # 形近字: a character replaced by a look-alike, where the name has a character in the
    # look-alike list (about 3 names in 5): about 1 % of hanzi records, so that homophones
    # are about 65 % of character slips, as in the studies (docs/cn-dataset.md)
    "lookalike": 0.016,
    "traditional": 0.008,  # written in traditional characters (outside the trad hospital)
    "newborn_placeholder": 0.30,  # per record of a baby under 1: "<mother>之子/之女"
    # Latin names (per Latin record; the share of Latin records is the hospital's)
    "latin_western_order": 0.40,
    "latin_lowercase": 0.20,
    "latin_uppercase": 0.25,
    "cantonese": 0.08,  # Hong Kong spelling of the surname (and given name where known)
    "wade_giles": 0.07,
    "wrong_reading": 0.50,  # per Latin record of a heteronym surname: the common reading
    "name_fields_swapped": 0.05,  # per split record: family and given swapped
    # other fields (per record)
    "sex_missing": 0.005,
    "sex_wrong": 0.002,
    "birth_digit_typo": 0.008,
    "birth_day_month_swap": 0.004,
    "birth_missing": 0.005,
    "id_typo": 0.010,  # fails the checksum
    "id_placeholder": 0.008,  # 000000…, 111111…, all one digit
    "id_guardian": 0.30,  # per record of a child under 3 with a parent: the parent's 身份证
    "phone_missing": 0.10,
    "phone_typo": 0.005,
    "phone_changed": 0.50,  # per later record of a person with a second number
    "address_missing": 0.05,
    "address_variant": 0.25,
    "address_moved": 0.50,  # per later record of a person who moved: the old address
    "insurance_typo": 0.005,
}

#: Records per person (1..5) and their weights.
RECORDS_PER_PERSON: Final = ((1, 0.45), (2, 0.28), (3, 0.15), (4, 0.08), (5, 0.04))

PROVINCE: Final = "山西省"
CITY: Final = "太原市"
#: (district, GB/T 2260 code, postcode, share of the population)
DISTRICTS: Final = (
    ("小店区", "140105", "030032", 0.22), ("迎泽区", "140106", "030001", 0.14),
    ("杏花岭区", "140107", "030009", 0.14), ("尖草坪区", "140108", "030003", 0.11),
    ("万柏林区", "140109", "030024", 0.16), ("晋源区", "140110", "030025", 0.05),
    ("清徐县", "140121", "030400", 0.07), ("阳曲县", "140122", "030100", 0.03),
    ("娄烦县", "140123", "030300", 0.02), ("古交市", "140181", "030200", 0.06),
)  # fmt: skip
#: Region codes of people born outside the prefecture (other provinces, 乌鲁木齐 for minorities).
OTHER_REGIONS: Final = (
    "130102", "410105", "370102", "610113", "150102", "110105", "120101", "210102",
    "320102", "510104", "140202", "140402", "140702", "141002",
)  # fmt: skip
MINORITY_REGION: Final = "650102"
STREETS: Final = (  # noqa: SIM905
    "长风街 并州路 解放路 迎泽大街 府西街 府东街 五一路 建设路 平阳路 体育路 南内环街 "
    "北大街 胜利街 和平路 千峰路 滨河东路 滨河西路 学府街 坞城路 亲贤街 许坦东街 "
    "漪汾街 兴华街 晋祠路 新建路 桃园路 双塔街 朝阳街 劲松路 恒山路 柏杨树街 南中环街 "
    "龙城大街 太榆路 真武路 大马路 九院路 西矿街 后北屯路 新兰路"
).split()
MOBILE_PREFIXES: Final = (  # noqa: SIM905
    "130 131 132 133 134 135 136 137 138 139 150 151 152 153 155 156 157 158 159 "
    "166 176 177 180 181 182 183 185 186 187 188 189 198 199"
).split()


Home = tuple[int, str, int, str]  # district index, street, number, flat


@dataclass(frozen=True)
class Hospital:
    id: str
    weight: float
    split: bool  # the system keeps family and given names apart
    latin: float  # share of records whose name is written in Latin letters
    id_capture: float
    ins_capture: float
    postcode_capture: float
    phone_capture: float
    trad: float = 0.0  # share of records in traditional characters


HOSPITALS: Final = (
    Hospital("cn-h01", 3.0, False, 0.02, 0.95, 0.80, 0.6, 0.95),
    Hospital("cn-h02", 2.5, True, 0.02, 0.92, 0.70, 0.5, 0.95),
    Hospital("cn-h03", 2.0, False, 0.03, 0.90, 0.75, 0.7, 0.90),
    Hospital("cn-h04", 1.5, True, 0.03, 0.85, 0.60, 0.3, 0.90),
    Hospital("cn-h05", 1.5, False, 0.02, 0.80, 0.80, 0.6, 0.85),
    Hospital("cn-h06", 1.0, False, 0.05, 0.75, 0.50, 0.2, 0.90),
    Hospital("cn-h07", 1.0, True, 0.40, 0.70, 0.20, 0.8, 0.95),  # international clinic
    Hospital("cn-h08", 1.0, False, 0.02, 0.60, 0.90, 0.4, 0.80),  # community centre
    Hospital("cn-h09", 0.8, False, 0.02, 0.65, 0.90, 0.4, 0.80),  # community centre
    Hospital("cn-h10", 0.7, True, 0.30, 0.80, 0.30, 0.9, 0.95, trad=0.30),  # HK-run
    Hospital("cn-h11", 0.6, False, 0.02, 0.90, 0.70, 0.5, 0.90),
    Hospital("cn-h12", 0.5, False, 0.03, 0.85, 0.70, 0.5, 0.90),
)


@dataclass(slots=True)
class Person:
    pid: int
    surname: str  # hanzi; "" for a minority name
    given: str  # hanzi; the whole own·father's name for a minority name
    sex: str
    birth: date
    district: int
    street: str
    number: int
    flat: str  # "" or "3号楼2单元501"
    id_card: str
    phone: str | None
    phone2: str | None = None
    old_address: Home | None = None
    insurance: str | None = None
    minority: tuple[str, str] | None = None  # (own pinyin, father's pinyin)
    minority_parts: tuple[str, str] | None = None  # (own hanzi, father's hanzi)
    guardian: Person | None = None  # a parent (for children: 身份证 and phone)
    mother_name: str | None = None
    kind: str = ""  # "namesake" or "twin" when injected as such
    twin_of: int | None = None  # the pid of the first-born twin
    namesake_of: int | None = None  # the pid of the person whose namesake this is


@dataclass
class Draw:
    """A generated data set before it becomes a DataFrame."""

    rows: list[tuple[object, ...]] = field(default_factory=list)  # see COLUMNS + _errors
    persons: list[Person] = field(default_factory=list)
    namesakes_injected: int = 0
    twins_injected: int = 0


_TRAD = OpenCC("s2t")


def _surname_homophones() -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for s in nm.surname_table().items:
        if len(s) == 1:
            groups.setdefault(nm.reading(s).rstrip("12345"), []).append(s)
    return {k: v for k, v in groups.items() if len(v) > 1}


class Generator:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)  # noqa: S311 - made-up people
        self.pid = 0
        self.ids: set[str] = set()
        self.surname_homophones = _surname_homophones()
        self.hospital_cum = tuple(accumulate(h.weight for h in HOSPITALS))
        self.k_values = [k for k, _ in RECORDS_PER_PERSON]
        self.k_cum = tuple(accumulate(w for _, w in RECORDS_PER_PERSON))
        self.district_cum = tuple(accumulate(d[3] for d in DISTRICTS))

    # ---- persons ---------------------------------------------------------------------------

    def _chance(self, rate: str) -> bool:
        return self.rng.random() < RATES[rate]

    def _birth(self, age: int) -> date:
        return REFERENCE_DATE - timedelta(days=age * 365 + self.rng.randrange(1, 366))

    def _adult_age(self) -> int:
        r = self.rng.random()
        if r < 0.62:
            return self.rng.randint(22, 59)
        if r < 0.92:
            return self.rng.randint(60, 79)
        return self.rng.randint(80, 95)

    def _id_card(self, region: str, birth: date, sex: str) -> str:
        while True:
            seq = self.rng.randrange(0, 500) * 2 + (1 if sex == "male" else 0)
            number = with_check_character(f"{region}{birth:%Y%m%d}{seq:03d}")
            if number not in self.ids:
                self.ids.add(number)
                return number

    def _phone(self) -> str:
        return self.rng.choice(MOBILE_PREFIXES) + f"{self.rng.randrange(10**8):08d}"

    def _given(self, sex: str, birth: date) -> str:
        rng = self.rng
        if rng.random() < RATES["head_name"]:
            return nm.head_table(sex).draw(rng)
        # one-character given names were most common for people born 1960–1999
        one = 0.10 if 1960 <= birth.year <= 1999 else 0.04
        table = nm.given_table(sex)
        if rng.random() < one:
            return table.draw(rng)
        first = table.draw(rng)
        second = table.draw(rng)
        while second == first and rng.random() < 0.9:  # 叠字 (婷婷) kept now and then
            second = table.draw(rng)
        return first + second

    def _address(self, district: int | None = None) -> Home:
        rng = self.rng
        if district is None:
            district = bisect_(self.district_cum, rng.random() * self.district_cum[-1])
        street = rng.choice(STREETS)
        number = rng.randint(1, 400)
        flat = ""
        if rng.random() < 0.6:
            building, unit = rng.randint(1, 30), rng.randint(1, 6)
            flat = f"{building}号楼{unit}单元{rng.randint(1, 30)}0{rng.randint(1, 4)}"
        return district, street, number, flat

    def _person(
        self,
        surname: str,
        sex: str,
        age: int,
        home: Home,
        phone: str | None,
        *,
        given: str | None = None,
        birth: date | None = None,
    ) -> Person:
        rng = self.rng
        birth = birth or self._birth(age)
        district, street, number, flat = home
        minority = minority_parts = None
        if given is None and rng.random() < RATES["minority"]:
            own = rng.choice([m for m in nm.MINORITY_NAMES if m[2] == sex])
            father = rng.choice([m for m in nm.MINORITY_NAMES if m[2] == "male"])
            surname, given = "", f"{own[0]}·{father[0]}"
            minority, minority_parts = (own[1], father[1]), (own[0], father[0])
        elif given is None:
            given = self._given(sex, birth)
        if minority is not None:
            region = MINORITY_REGION if rng.random() < 0.5 else DISTRICTS[district][1]
        elif rng.random() < RATES["born_elsewhere"]:
            region = rng.choice(OTHER_REGIONS)
        else:
            region = DISTRICTS[district][1]
        self.pid += 1
        p = Person(
            pid=self.pid,
            surname=surname,
            given=given,
            sex=sex,
            birth=birth,
            district=district,
            street=street,
            number=number,
            flat=flat,
            id_card=self._id_card(region, birth, sex),
            phone=phone,
            minority=minority,
            minority_parts=minority_parts,
        )
        if rng.random() < RATES["insurance_holder"]:
            p.insurance = rng.choice("ABCDEFGHJK") + f"{rng.randrange(10**8):08d}"
        if phone is not None and rng.random() < RATES["phone_changed_person"]:
            p.phone2 = self._phone()
        if rng.random() < RATES["moved_person"]:
            p.old_address = self._address()
        return p

    def household(self) -> list[Person]:
        rng = self.rng
        home = self._address()
        head_sex = "male" if rng.random() < 0.5 else "female"
        head_age = self._adult_age()
        head = self._person(nm.surname_table().draw(rng), head_sex, head_age, home, self._phone())
        members = [head]
        spouse = None
        if head_age >= 24 and rng.random() < 0.7:
            age = min(95, max(20, head_age + rng.randint(-5, 5)))
            sex = "female" if head_sex == "male" else "male"
            phone = self._phone() if rng.random() < 0.93 else head.phone
            spouse = self._person(nm.surname_table().draw(rng), sex, age, home, phone)
            members.append(spouse)
        if 24 <= head_age <= 60:
            youngest = head_age if spouse is None else min(head_age, _age(spouse))
            father = head if head_sex == "male" else spouse
            mother = head if head_sex == "female" else spouse
            n = rng.choices((0, 1, 2, 3), (0.3, 0.45, 0.2, 0.05))[0]
            for _ in range(n):
                age = youngest - rng.randint(22, 35)
                if age < 0:
                    continue
                members.extend(self._children(head, father, mother, age, home))
        return members

    def _children(
        self, head: Person, father: Person | None, mother: Person | None, age: int, home: Home
    ) -> list[Person]:
        rng = self.rng
        surname = (father or head).surname if rng.random() < 0.95 else (mother or head).surname
        if not surname:
            surname = nm.surname_table().draw(rng)
        guardian = mother or father or head
        sex = "male" if rng.random() < 0.51 else "female"
        phone = self._phone() if age >= 16 and rng.random() < 0.9 else guardian.phone
        child = self._person(surname, sex, age, home, phone)
        kids = [child]
        if rng.random() < RATES["twin"] and child.minority is None:
            same_sex = rng.random() < 2 / 3
            sex2 = sex if same_sex else ("female" if sex == "male" else "male")
            given = self._given(sex2, child.birth)
            if len(child.given) == 2 and rng.random() < 0.5:
                given = child.given[0] + nm.given_table(sex2).draw(rng)
            if given != child.given:
                twin = self._person(surname, sex2, age, home, phone, given=given, birth=child.birth)
                twin.kind, twin.twin_of = "twin", child.pid
                kids.append(twin)
        for k in kids:
            k.guardian = guardian
            if mother is not None and mother.minority is None:
                k.mother_name = mother.surname + mother.given
        return kids

    def namesake(self, p: Person) -> Person:
        """A different person with ``p``'s name, sex, birth date and district."""
        home = self._address(p.district)
        while home[1] == p.street:
            home = self._address(p.district)
        q = self._person(p.surname, p.sex, 0, home, self._phone(), given=p.given, birth=p.birth)
        q.minority, q.minority_parts = p.minority, p.minority_parts
        q.kind, q.namesake_of = "namesake", p.pid
        return q

    # ---- records ---------------------------------------------------------------------------

    def hospitals_for(self, k: int) -> list[Hospital]:
        chosen: list[Hospital] = []
        while len(chosen) < k:
            h = HOSPITALS[bisect_(self.hospital_cum, self.rng.random() * self.hospital_cum[-1])]
            if h not in chosen:
                chosen.append(h)
        return chosen

    def records(self, p: Person, k: int) -> Iterator[tuple[object, ...]]:
        for j, h in enumerate(self.hospitals_for(k)):
            yield self.record(p, h, j)

    def record(self, p: Person, h: Hospital, j: int) -> tuple[object, ...]:
        rng = self.rng
        errors: list[str] = []
        name, family, given = self._name(p, h, errors)
        sex: str | None = p.sex
        if self._chance("sex_missing"):
            sex = None
            errors.append("sex_missing")
        elif self._chance("sex_wrong"):
            sex = "female" if p.sex == "male" else "male"
            errors.append("sex_wrong")
        birth: str | None = p.birth.isoformat()
        if self._chance("birth_missing"):
            birth = None
            errors.append("birth_missing")
        elif self._chance("birth_day_month_swap"):
            swapped = _swap_day_month(p.birth)
            if swapped is not None:
                birth = swapped
                errors.append("birth_day_month_swap")
        elif self._chance("birth_digit_typo"):
            birth = self._digit_typo_date(p.birth)
            errors.append("birth_digit_typo")
        phone: str | None = None
        if rng.random() < h.phone_capture and p.phone is not None:
            phone = p.phone
            if p.phone2 is not None and j > 0 and self._chance("phone_changed"):
                phone = p.phone2
                errors.append("phone_changed")
            if self._chance("phone_missing"):
                phone = None
                errors.append("phone_missing")
            elif self._chance("phone_typo"):
                phone = _digit_typo(rng, phone, 3)
                errors.append("phone_typo")
        district, street, number, flat = p.district, p.street, p.number, p.flat
        if p.old_address is not None and j > 0 and self._chance("address_moved"):
            district, street, number, flat = p.old_address
            errors.append("address_moved")
        address: str | None = self._address_text(district, street, number, flat, errors)
        if self._chance("address_missing"):
            address = None
            errors.append("address_missing")
        postcode = DISTRICTS[district][2] if rng.random() < h.postcode_capture else None
        id_card: str | None = None
        if rng.random() < h.id_capture:
            id_card = p.id_card
            age_days = (REFERENCE_DATE - p.birth).days
            if p.guardian is not None and age_days < 3 * 365 and self._chance("id_guardian"):
                id_card = p.guardian.id_card
                errors.append("id_guardian")
            elif self._chance("id_placeholder"):
                digit = rng.choice("0123456789")
                id_card = digit * 18
                errors.append("id_placeholder")
            elif self._chance("id_typo"):
                id_card = _id_typo(rng, p.id_card)
                errors.append("id_typo")
        insurance: str | None = None
        if p.insurance is not None and rng.random() < h.ins_capture:
            insurance = p.insurance
            if self._chance("insurance_typo"):
                insurance = insurance[0] + _digit_typo(rng, insurance[1:], 0)
                errors.append("insurance_typo")
        return (
            h.id, name, family, given, sex, birth, phone, address, postcode, id_card,
            insurance, p.pid, ";".join(errors),
        )  # fmt: skip

    def _name(
        self, p: Person, h: Hospital, errors: list[str]
    ) -> tuple[str, str | None, str | None]:
        rng = self.rng
        baby = (REFERENCE_DATE - p.birth).days < 365 and p.mother_name is not None
        if baby and self._chance("newborn_placeholder"):
            errors.append("newborn_placeholder")
            return f"{p.mother_name}之{'子' if p.sex == 'male' else '女'}", None, None
        if rng.random() < h.latin:
            return self._latin(p, h, errors)
        if p.minority_parts is not None:
            own, father = p.minority_parts
            dot = rng.choices(("·", "•", ".", "", " "), (0.6, 0.1, 0.1, 0.15, 0.05))[0]
            if dot != "·":
                errors.append("dot_variant")
            return f"{own}{dot}{father}", None, None
        surname, given = p.surname, p.given
        if self._chance("homophone"):
            surname, given = self._swap_char(surname, given, "homophone", errors)
        elif self._chance("lookalike"):
            surname, given = self._swap_char(surname, given, "lookalike", errors)
        if rng.random() < h.trad or self._chance("traditional"):
            t_surname, t_given = _TRAD.convert(surname), _TRAD.convert(given)
            if (t_surname, t_given) != (surname, given):
                surname, given = t_surname, t_given
                errors.append("traditional")
        if h.split:
            return surname + given, surname, given
        return surname + given, None, None

    def _swap_char(self, surname: str, given: str, kind: str, errors: list[str]) -> tuple[str, str]:
        rng = self.rng
        if kind == "homophone" and rng.random() < 0.15 and len(surname) == 1:
            group = self.surname_homophones.get(nm.reading(surname).rstrip("12345"))
            if group:
                errors.append(kind)
                return rng.choice([s for s in group if s != surname]), given
        positions = list(range(len(given)))
        rng.shuffle(positions)
        for i in positions:
            other: str | None
            if kind == "homophone":
                other = nm.homophone_of(given[i], rng)
            else:
                alts = nm.lookalikes().get(given[i])
                other = rng.choice(alts) if alts else None
            if other is not None:
                errors.append(kind)
                return surname, given[:i] + other + given[i + 1 :]
        return surname, given

    def _latin(
        self, p: Person, h: Hospital, errors: list[str]
    ) -> tuple[str, str | None, str | None]:
        rng = self.rng
        errors.append("latin")
        if p.minority is not None:
            fam, giv = p.minority[1], p.minority[0]
        else:
            style = "pinyin"
            r = rng.random()
            if r < RATES["cantonese"] and p.surname in nm.SURNAME_CANTONESE:
                style = "cantonese"
            elif r < RATES["cantonese"] + RATES["wade_giles"]:
                style = "wade_giles"
            if style != "pinyin":
                errors.append(style)
            wrong = p.surname in nm.SURNAME_READINGS and self._chance("wrong_reading")
            if wrong:
                errors.append("wrong_reading")
            fam_syl = nm.surname_pinyin(p.surname, wrong_reading=wrong).rstrip("12345")
            fam_syls = [s.rstrip("12345") for s in _split_tones(fam_syl)]
            giv_syls = [s.rstrip("12345") for s in nm.given_pinyin(p.given)]
            umlaut = rng.choices(("v", "u", "yu", "ü"), (0.35, 0.35, 0.2, 0.1))[0]
            if style == "pinyin":
                fam = "".join(nm.u_umlaut(s, umlaut) for s in fam_syls).capitalize()
                parts = [nm.u_umlaut(s, umlaut) for s in giv_syls]
                giv = (" ".join(parts) if rng.random() < 0.1 else "".join(parts)).capitalize()
                if any("v" in s for s in fam_syls + giv_syls) and umlaut != "ü":
                    errors.append(f"u_as_{umlaut}")
            else:
                table = nm.SURNAME_CANTONESE if style == "cantonese" else nm.SURNAME_WADE_GILES
                fam = (
                    table.get(p.surname) or "".join(nm.wade_giles(s) for s in fam_syls).capitalize()
                )
                parts = [
                    (nm.GIVEN_CANTONESE.get(ch) if style == "cantonese" else None)
                    or nm.wade_giles(s)
                    for ch, s in zip(p.given, giv_syls, strict=True)
                ]
                giv = "-".join(parts).capitalize()
        western = self._chance("latin_western_order")
        if western:
            errors.append("latin_western_order")
        name = f"{giv} {fam}" if western else f"{fam} {giv}"
        r = rng.random()
        if r < RATES["latin_lowercase"]:
            name, fam, giv = name.lower(), fam.lower(), giv.lower()
            errors.append("latin_lowercase")
        elif r < RATES["latin_lowercase"] + RATES["latin_uppercase"]:
            name, fam, giv = name.upper(), fam.upper(), giv.upper()
        if not h.split:
            return name, None, None
        if self._chance("name_fields_swapped"):
            errors.append("name_fields_swapped")
            return name, giv, fam
        return name, fam, giv

    def _address_text(
        self, district: int, street: str, number: int, flat: str, errors: list[str]
    ) -> str:
        rng = self.rng
        dname = DISTRICTS[district][0]
        if not self._chance("address_variant"):
            return f"{PROVINCE}{CITY}{dname}{street}{number}号{flat}"
        errors.append("address_variant")
        v = rng.randrange(5)
        if v == 0:
            return f"{CITY}{dname}{street}{number}号{flat}"
        if v == 1:
            return f"{dname}{street}{number}号"
        if v == 2:
            return f"{PROVINCE}{CITY[:-1]}{dname}{street}{number}#{flat}"
        if v == 3:
            return f"{CITY}{dname}{street}{_fullwidth(str(number))}号{flat}"
        return f"{PROVINCE} {CITY} {dname} {street} {number}号 {flat}".strip()

    def _digit_typo_date(self, d: date) -> str:
        s = f"{d:%Y%m%d}"
        for _ in range(20):
            t = _digit_typo(self.rng, s, 2)
            try:
                other = date(int(t[:4]), int(t[4:6]), int(t[6:]))
            except ValueError:
                continue
            if other != d and other < REFERENCE_DATE:
                return other.isoformat()
        return (d + timedelta(days=1)).isoformat()


def _age(p: Person) -> int:
    return (REFERENCE_DATE - p.birth).days // 365


def bisect_(cum: Sequence[float], x: float) -> int:
    return min(bisect(cum, x), len(cum) - 1)


def _split_tones(s: str) -> list[str]:
    """'zhang3sun1' → ['zhang3', 'sun1']; 'wang2' → ['wang2']."""
    out, cur = [], ""
    for ch in s:
        cur += ch
        if ch.isdigit():
            out.append(cur)
            cur = ""
    if cur:
        out.append(cur)
    return out


def _fullwidth(s: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if c.isdigit() else c for c in s)


def _digit_typo(rng: random.Random, s: str, start: int) -> str:
    i = rng.randrange(start, len(s))
    d = rng.choice([c for c in "0123456789" if c != s[i]])
    return s[:i] + d + s[i + 1 :]


def _id_typo(rng: random.Random, number: str) -> str:
    """One digit changed or two neighbours swapped in the first 17: MOD 11-2 catches both."""
    if rng.random() < 0.3:
        for _ in range(10):
            i = rng.randrange(0, 16)
            if number[i] != number[i + 1]:
                return number[:i] + number[i + 1] + number[i] + number[i + 2 :]
    return _digit_typo(rng, number[:17], 0) + number[17]


def _swap_day_month(d: date) -> str | None:
    if d.day > 12 or d.day == d.month:
        return None
    return date(d.year, d.day, d.month).isoformat()


def generate(n_records: int, seed: int) -> Draw:
    """``n_records`` records (exactly) of a population drawn under ``seed``."""
    g = Generator(seed)
    draw = Draw()
    rng = g.rng
    while len(draw.rows) < n_records:
        for p in g.household():
            batch = [p]
            if rng.random() < RATES["namesake"]:
                batch.append(g.namesake(p))
                draw.namesakes_injected += 1
            if p.kind == "twin":
                draw.twins_injected += 1
            for q in batch:
                draw.persons.append(q)
                k = g.k_values[bisect_(g.k_cum, rng.random() * g.k_cum[-1])]
                draw.rows.extend(g.records(q, k))
    del draw.rows[n_records:]
    rng.shuffle(draw.rows)
    return draw
