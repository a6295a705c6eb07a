"""Patient demographics and identifiers in one comparable form (pure; no I/O).

A hospital's ``Patient`` (or a clinical resource's ``subject.identifier``) becomes a
:class:`Person`: identifiers sorted into kinds, with local numbers scoped by the institution
that assigned them; the name in simplified hanzi and in toneless pinyin; sex, birth date,
phone (digits, mainland mobiles as 11 digits), address and postcode.

Privacy: ``repr`` of an :class:`Ident` or a :class:`Person` says which fields are present,
never a name, number, phone, address or birth date (reprs end up in logs).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import date
from functools import lru_cache
from typing import Any, Final, Literal

import opencc
from pypinyin import Style, lazy_pinyin

from services.common.errors import IdentifierError
from services.common.fhir import INSTITUTION_SYSTEM
from services.common.identifiers import (
    DOCUMENT_TYPE_SYSTEM,
    DOCUMENT_TYPES,
    HEALTH_CARD_SYSTEM,
    ID_CARD_SYSTEM,
    INSTITUTION_LOCAL_SYSTEMS,
    INSURANCE_CARD_SYSTEM,
    IdCard,
    parse_id_card,
)

IdentKind = Literal["id_card", "document", "insurance", "health_card", "local", "other"]
Sex = Literal["male", "female"]

#: Identifier systems whose numbers mean the same thing in every institution.
_GLOBAL_SYSTEMS: Final[Mapping[str, IdentKind]] = {
    ID_CARD_SYSTEM: "id_card",
    INSURANCE_CARD_SYSTEM: "insurance",
    HEALTH_CARD_SYSTEM: "health_card",
}
#: WS 364 document types that identify a person on their own (with the type): not 01 (that
#: is a 身份证, handled as such) and not 99 (其他: its numbering is unknown).
VERIFIABLE_DOCUMENT_TYPES: Final = frozenset(DOCUMENT_TYPES) - {"01", "99"}

#: Two-character (复姓) surnames. A 3- or 4-character name starting with one of these splits
#: after two characters; any other 2–4 character name splits after the first.
COMPOUND_SURNAMES: Final = frozenset(
    {
        "欧阳", "司马", "诸葛", "上官", "东方", "皇甫", "令狐", "慕容", "尉迟", "长孙",
        "宇文", "夏侯", "司徒", "司空", "公孙", "轩辕", "端木", "独孤", "南宫", "西门",
        "万俟", "闻人", "澹台", "公冶", "宗政", "濮阳", "淳于", "单于", "太叔", "申屠",
        "仲孙", "钟离", "百里", "呼延", "东郭", "赫连", "拓跋", "第五", "左丘", "公羊",
        "梁丘", "乐正", "谷梁", "羊舌", "微生", "段干", "漆雕", "壤驷", "巫马", "亓官",
        "司寇", "子车", "颛孙", "公良", "夹谷", "宰父", "鲜于", "闾丘",
    }
)  # fmt: skip

#: Characters read differently as a surname (姓氏读音) than pypinyin's most common reading.
SURNAME_READINGS: Final[Mapping[str, str]] = {
    "单": "shan", "曾": "zeng", "解": "xie", "仇": "qiu", "朴": "piao", "查": "zha",
    "盖": "ge", "区": "ou", "乐": "yue", "翟": "zhai", "缪": "miao", "覃": "qin",
    "秘": "bi", "能": "nai", "重": "chong", "种": "chong", "藏": "zang", "薄": "bo",
    "句": "gou", "员": "yun", "召": "shao", "繁": "po", "折": "she", "祭": "zhai",
    "隗": "wei", "都": "du", "柏": "bai", "尉": "wei", "宓": "fu", "逄": "pang",
    "长": "chang", "沈": "shen", "石": "shi", "华": "hua", "任": "ren", "纪": "ji",
    "尉迟": "yuchi", "万俟": "moqi", "长孙": "zhangsun", "澹台": "tantai", "单于": "chanyu",
    "乐正": "yuezheng", "令狐": "linghu", "亓官": "qiguan", "句龙": "goulong",
}  # fmt: skip

_T2S: Final = opencc.OpenCC("t2s")
_HANZI = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]")
_NAME_SEPARATORS = re.compile(r"[·•・.\-\s]+")
_LATIN_WORD = re.compile(r"[a-z]+")
_LATIN_SEPARATORS = re.compile(r"[\s,·•・]+")
_MOBILE = re.compile(r"1[3-9]\d{9}")
_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})")


_DEMOGRAPHICS: Final = (
    "family",
    "given",
    "family_py",
    "given_py",
    "sex",
    "birth_date",
    "phone",
    "address",
    "postcode",
)


@dataclass(frozen=True, slots=True)
class Ident:
    """One identifier of a person, normalised.

    ``verified`` is true for a 身份证 that passed GB 11643 checks and for a document number
    whose WS 364 type (``doc_type``, 02–07) is known: these may link records
    deterministically. ``scope`` is set for numbers that only mean something inside one
    institution (门诊号, 住院号, 病案号…, anything with an assigner or an unknown system).
    """

    kind: IdentKind
    system: str
    value: str
    verified: bool = False
    scope: str | None = None
    doc_type: str | None = None

    def key(self) -> tuple[str, str]:
        """``(namespace, value)``, the namespace carrying the scope or document type; callers
        hash it (``keyed_hash(key, *ident.key())``) before using it as a key anywhere."""
        if self.kind == "id_card":
            return (ID_CARD_SYSTEM, self.value)
        if self.kind == "document" and self.doc_type is not None:
            return (f"{DOCUMENT_TYPE_SYSTEM}#{self.doc_type}", self.value)
        if self.scope is not None:
            return (f"{self.system}@{self.scope}", self.value)
        return (self.system, self.value)

    def __repr__(self) -> str:
        return (
            f"Ident(kind={self.kind!r}, system={self.system!r}, verified={self.verified}, "
            f"scope={self.scope!r}, doc_type={self.doc_type!r}, value=***)"
        )


@dataclass(frozen=True, slots=True)
class Person:
    """What the matcher compares: one hospital's view of one patient.

    ``family``/``given`` are simplified hanzi (None for a Latin name); ``family_py`` and
    ``given_py`` toneless lower-case pinyin without spaces ("zhang", "xiaoming"), also for
    a Latin name. ``birth_date`` and ``sex`` are the record's (the 身份证's when the record
    has none); ``card_conflict`` says the record and its verified 身份证 disagree on them.
    """

    institution: str
    idents: tuple[Ident, ...] = ()
    family: str | None = None
    given: str | None = None
    family_py: str | None = None
    given_py: str | None = None
    sex: Sex | None = None
    birth_date: date | None = None
    phone: str | None = None
    address: str | None = None
    postcode: str | None = None
    card_conflict: bool = False

    def id_card(self) -> IdCard | None:
        """The first verified 身份证, decoded."""
        for ident in self.idents:
            if ident.kind == "id_card" and ident.verified:
                try:
                    return parse_id_card(ident.value)
                except IdentifierError:  # pragma: no cover - verified means it parsed
                    return None
        return None

    def __repr__(self) -> str:
        present = [name for name in _DEMOGRAPHICS if getattr(self, name) is not None]
        kinds = [i.kind + ("+" if i.verified else "") for i in self.idents]
        return (
            f"Person(institution={self.institution!r}, idents={kinds}, present={present}, "
            f"card_conflict={self.card_conflict})"
        )


# --------------------------------------------------------------------------- identifiers


def _type_code(ident: Mapping[str, Any]) -> str | None:
    """The WS 364 document type in ``Identifier.type.coding``, if any."""
    typ = ident.get("type")
    if not isinstance(typ, dict):
        return None
    for coding in typ.get("coding") or ():
        if (
            isinstance(coding, dict)
            and coding.get("system") == DOCUMENT_TYPE_SYSTEM
            and isinstance(coding.get("code"), str)
        ):
            code: str = coding["code"].strip()
            return code if code in DOCUMENT_TYPES else None
    return None


def _assigner_scope(ident: Mapping[str, Any]) -> str | None:
    """The institution id an ``Identifier.assigner`` names, if it names one by id."""
    assigner = ident.get("assigner")
    if not isinstance(assigner, dict):
        return None
    aid = assigner.get("identifier")
    if (
        isinstance(aid, dict)
        and aid.get("system") == INSTITUTION_SYSTEM
        and isinstance(aid.get("value"), str)
        and aid["value"].strip()
    ):
        return str(aid["value"]).strip().upper()
    return None


def _compact(value: str) -> str:
    return re.sub(r"[\s\-]+", "", unicodedata.normalize("NFKC", value)).upper()


def normalize_ident(ident: Mapping[str, Any], institution: str) -> Ident | None:
    """One FHIR ``Identifier`` as an :class:`Ident`; None when it has no usable value."""
    raw = ident.get("value")
    if not isinstance(raw, str) or not raw.strip():
        return None  # an identifier with an empty value matches nothing
    system = ident.get("system")
    system = system.strip() if isinstance(system, str) else ""
    value = _compact(raw)
    doc_type = _type_code(ident)
    if system == ID_CARD_SYSTEM or doc_type == "01":
        try:
            card = parse_id_card(value)
        except IdentifierError:
            return Ident("id_card", ID_CARD_SYSTEM, value, verified=False)
        return Ident("id_card", ID_CARD_SYSTEM, card.number, verified=True)
    if doc_type is not None:
        return Ident(
            "document",
            system,
            value,
            verified=doc_type in VERIFIABLE_DOCUMENT_TYPES,
            doc_type=doc_type,
        )
    has_assigner = isinstance(ident.get("assigner"), dict)
    if system in _GLOBAL_SYSTEMS and not has_assigner:
        return Ident(_GLOBAL_SYSTEMS[system], system, value)
    # a number some institution assigned (or of a system the hub does not know) means
    # something only inside that institution: scope it
    scope = _assigner_scope(ident) or institution.strip().upper()
    kind: IdentKind = _GLOBAL_SYSTEMS.get(system) or (
        "local" if system in INSTITUTION_LOCAL_SYSTEMS else "other"
    )
    return Ident(kind, system, value, scope=scope)


def normalize_idents(identifiers: Iterable[Any], institution: str) -> tuple[Ident, ...]:
    """Every usable identifier, duplicates dropped, in input order."""
    out: list[Ident] = []
    seen: set[tuple[str, str]] = set()
    for item in identifiers:
        if not isinstance(item, dict):
            continue
        ident = normalize_ident(item, institution)
        if ident is not None and ident.key() not in seen:
            seen.add(ident.key())
            out.append(ident)
    return tuple(out)


# --------------------------------------------------------------------------------- names


def is_hanzi(text: str) -> bool:
    """True when ``text`` (separators aside) is only CJK ideographs."""
    chars = _NAME_SEPARATORS.sub("", text)
    return bool(chars) and all(_HANZI.fullmatch(c) for c in chars)


@lru_cache(maxsize=65536)
def to_simplified(text: str) -> str:
    """Traditional → simplified Chinese (OpenCC ``t2s``), NFKC-folded."""
    return str(_T2S.convert(unicodedata.normalize("NFKC", text)))


@lru_cache(maxsize=65536)
def surname_pinyin(family: str) -> str:
    """Toneless pinyin of a hanzi surname, with surname readings (单 → shan, 曾 → zeng)."""
    family = to_simplified(_NAME_SEPARATORS.sub("", family))
    if family in SURNAME_READINGS:
        return SURNAME_READINGS[family]
    return "".join(SURNAME_READINGS.get(c) or _pinyin(c) for c in family)


@lru_cache(maxsize=65536)
def given_pinyin(given: str) -> str:
    """Toneless pinyin of hanzi (a given name), syllables joined: 晓明 → xiaoming."""
    return _pinyin(to_simplified(_NAME_SEPARATORS.sub("", given)))


def _pinyin(hanzi: str) -> str:
    return "".join(lazy_pinyin(hanzi, style=Style.NORMAL)).lower()


def latin_name(text: str) -> str:
    """A Latin name (pinyin or other) as lower-case letters only: "Lǚ Xiǎo-Míng" → lvxiaoming.

    ü (also written u: or v) becomes v, as pypinyin writes it; tone marks are dropped.
    """
    decomposed = unicodedata.normalize("NFKD", text.replace("u:", "v").replace("U:", "v"))
    decomposed = decomposed.replace("u\u0308", "v").replace("U\u0308", "v")
    letters = "".join(c for c in decomposed if not unicodedata.combining(c))
    return "".join(_LATIN_WORD.findall(letters.lower()))


def split_hanzi_name(text: str) -> tuple[str, str]:
    """Family and given name of a whole hanzi name (复姓 aware); ``text`` is simplified.

    A name of more than four characters or with a middle dot (阿依古丽·买买提, a
    transliterated minority name) has no family name to split off: all of it is given.
    """
    chars = _NAME_SEPARATORS.sub("", text)
    if len(chars) > 4 or any(dot in text for dot in "·•・."):
        return "", chars
    if len(chars) >= 3 and chars[:2] in COMPOUND_SURNAMES:
        return chars[:2], chars[2:]
    return chars[:1], chars[1:]


def _split_latin(text: str) -> tuple[str, str] | None:
    """Family and given of a whole Latin name.

    An all-capitals word among mixed-case ones is the family name ("Fang WANG"); otherwise
    the Chinese order, family first ("Wang Fang", "wang xiao ming"). A middle dot separates
    words as a space does ("Ayiguli·Maimaiti", the pinyin of a minority name).
    """
    words = [w for w in _LATIN_SEPARATORS.split(text.strip()) if latin_name(w)]
    if not words:
        return None
    if len(words) == 1:
        return latin_name(words[0]), ""
    caps = [w for w in words if w.isupper() and len(w) > 1]
    if 0 < len(caps) < len(words):
        family = " ".join(caps)
        given = " ".join(w for w in words if w not in caps)
        return latin_name(family), latin_name(given)
    if "," in text:  # "Wang, Fang"
        head, _, tail = text.partition(",")
        return latin_name(head), latin_name(tail)
    return latin_name(words[0]), latin_name("".join(words[1:]))


@dataclass(frozen=True, slots=True)
class NameParts:
    family: str | None
    given: str | None
    family_py: str | None
    given_py: str | None


_NO_NAME: Final = NameParts(None, None, None, None)


def normalize_name(
    text: str | None = None, family: str | None = None, given: str | None = None
) -> NameParts:
    """A name from ``family``/``given`` when given, else from the whole ``text``.

    Hanzi names give simplified hanzi and pinyin; Latin names give pinyin-style fields
    only. An empty name gives all None.
    """
    family = family.strip() if family and family.strip() else None
    given = given.strip() if given and given.strip() else None
    if family is None and given is None:
        if not text or not text.strip():
            return _NO_NAME
        text = text.strip()
        if is_hanzi(text):
            fam, giv = split_hanzi_name(to_simplified(text))
            return _hanzi_parts(fam, giv)
        split = _split_latin(text)
        if split is None:
            return _NO_NAME
        return NameParts(None, None, split[0] or None, split[1] or None)
    fam_h, fam_py = _part(family, surname=True)
    giv_h, giv_py = _part(given, surname=False)
    return NameParts(fam_h, giv_h, fam_py, giv_py)


def _part(value: str | None, *, surname: bool) -> tuple[str | None, str | None]:
    """(simplified hanzi, pinyin) of one name part; (None, pinyin) for a Latin one."""
    if value is None:
        return None, None
    if is_hanzi(value):
        hanzi = to_simplified(_NAME_SEPARATORS.sub("", value))
        return hanzi, surname_pinyin(hanzi) if surname else given_pinyin(hanzi)
    return None, latin_name(value) or None


def _hanzi_parts(family: str, given: str) -> NameParts:
    return NameParts(
        family or None,
        given or None,
        surname_pinyin(family) if family else None,
        given_pinyin(given) if given else None,
    )


def _pick_name(names: Any) -> Mapping[str, Any] | None:
    if not isinstance(names, list):
        return None
    usable = [n for n in names if isinstance(n, dict) and n.get("use") not in ("old", "anonymous")]
    for n in usable:
        if n.get("use") == "official":
            return n
    return usable[0] if usable else None


def _name_of(name: Mapping[str, Any] | None) -> NameParts:
    if name is None:
        return _NO_NAME
    family = name.get("family") if isinstance(name.get("family"), str) else None
    givens = name.get("given")
    given = None
    if isinstance(givens, list):
        given = " ".join(g for g in givens if isinstance(g, str)) or None
    text = name.get("text") if isinstance(name.get("text"), str) else None
    return normalize_name(text, family, given)


# ------------------------------------------------------------------- other demographics


def normalize_phone(value: str | None) -> str | None:
    """Digits only; a mainland mobile as its 11 digits (+86 / 0086 / 86 stripped); a
    landline written with the country code regains its leading 0. None when no digits."""
    if not value:
        return None
    digits = "".join(c for c in unicodedata.normalize("NFKC", value) if c.isdigit())
    if not digits:
        return None
    stripped = None
    if digits.startswith("0086"):
        stripped = digits[4:]
    elif digits.startswith("86") and len(digits) >= 12:
        stripped = digits[2:]
    if stripped is not None:
        digits = stripped if _MOBILE.fullmatch(stripped) else "0" + stripped.lstrip("0")
    return digits


def normalize_address(value: str | None) -> str | None:
    """Simplified, NFKC-folded, lower-case, without whitespace or punctuation."""
    if not value:
        return None
    text = to_simplified(value).lower()
    out = "".join(c for c in text if unicodedata.category(c)[0] in ("L", "N"))
    return out or None


def normalize_postcode(value: str | None) -> str | None:
    if not value:
        return None
    out = "".join(c for c in unicodedata.normalize("NFKC", value) if c.isalnum()).upper()
    return out or None


def parse_birth_date(value: Any) -> date | None:
    """``YYYY-MM-DD`` (FHIR date; a dateTime's date part) or ``YYYYMMDD`` when valid."""
    if not isinstance(value, str):
        return None
    value = value.strip()
    m = _DATE.match(value)
    if m is None and len(value) == 8 and value.isdigit():
        m = re.match(r"(\d{4})(\d{2})(\d{2})", value)
    if m is None:
        return None
    try:
        return date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    except ValueError:
        return None


def _sex(value: Any) -> Sex | None:
    if value in ("male", "female"):
        return "male" if value == "male" else "female"
    return None


def _phone_of(telecom: Any) -> str | None:
    if not isinstance(telecom, list):
        return None
    phones = [
        t
        for t in telecom
        if isinstance(t, dict) and t.get("system") in ("phone", "sms") and t.get("value")
    ]
    phones.sort(key=lambda t: 0 if t.get("use") == "mobile" else 1)
    for t in phones:
        number = normalize_phone(str(t["value"]))
        if number:
            return number
    return None


def _address_of(addresses: Any) -> tuple[str | None, str | None]:
    if not isinstance(addresses, list):
        return None, None
    usable = [a for a in addresses if isinstance(a, dict) and a.get("use") != "old"]
    usable.sort(key=lambda a: 0 if a.get("use") == "home" else 1)
    for a in usable:
        postcode = normalize_postcode(a.get("postalCode"))
        text = a.get("text")
        if not isinstance(text, str) or not text.strip():
            line = a.get("line")
            lines: list[Any] = line if isinstance(line, list) else []
            parts = [a.get("state"), a.get("city"), a.get("district"), *lines]
            text = "".join(p for p in parts if isinstance(p, str))
        address = normalize_address(text)
        if address or postcode:
            return address, postcode
    return None, None


# ------------------------------------------------------------------------------- persons


def make_person(
    institution: str,
    *,
    idents: Iterable[Ident] = (),
    name_text: str | None = None,
    family: str | None = None,
    given: str | None = None,
    sex: Sex | None = None,
    birth_date: date | None = None,
    phone: str | None = None,
    address: str | None = None,
    postcode: str | None = None,
) -> Person:
    """A :class:`Person` from raw demographics, normalised as :func:`person_from_fhir` does.

    A verified 身份证 fills a missing birth date or sex; when it disagrees with the given
    ones both are kept and ``card_conflict`` is set.
    """
    return _build(
        institution,
        tuple(idents),
        normalize_name(name_text, family, given),
        sex,
        birth_date,
        normalize_phone(phone),
        normalize_address(address),
        normalize_postcode(postcode),
    )


def _build(
    institution: str,
    idents: tuple[Ident, ...],
    name: NameParts,
    sex: Sex | None,
    birth_date: date | None,
    phone: str | None,
    address: str | None,
    postcode: str | None,
) -> Person:
    card = next(
        (parse_id_card(i.value) for i in idents if i.kind == "id_card" and i.verified), None
    )
    conflict = False
    if card is not None:
        conflict = (birth_date is not None and birth_date != card.birth_date) or (
            sex is not None and sex != card.sex
        )
        birth_date = birth_date or card.birth_date
        sex = sex or card.sex
    return Person(
        institution=institution,
        idents=idents,
        family=name.family,
        given=name.given,
        family_py=name.family_py,
        given_py=name.given_py,
        sex=sex,
        birth_date=birth_date,
        phone=phone,
        address=address,
        postcode=postcode,
        card_conflict=conflict,
    )


def person_from_fhir(patient: Mapping[str, Any], institution: str) -> Person:
    """A FHIR R4 ``Patient`` (JSON dict) posted by ``institution`` as a :class:`Person`."""
    address, postcode = _address_of(patient.get("address"))
    return _build(
        institution,
        normalize_idents(patient.get("identifier") or (), institution),
        _name_of(_pick_name(patient.get("name"))),
        _sex(patient.get("gender")),
        parse_birth_date(patient.get("birthDate")),
        _phone_of(patient.get("telecom")),
        address,
        postcode,
    )


def identity_from_fhir(patient: Mapping[str, Any], institution: str) -> Person:
    """What of a FHIR ``Patient`` decides its identifiers' keys — the identifiers, sex and
    birth date (a 身份证 that disagrees with them is keyed as borrowed,
    :func:`services.patient_index.identity.keyed_identifiers`) — without the name, phone and
    address :func:`person_from_fhir` also normalises (the name's pinyin is most of its cost):
    the gateway's routing needs only the keys."""
    return _build(
        institution,
        normalize_idents(patient.get("identifier") or (), institution),
        _NO_NAME,
        _sex(patient.get("gender")),
        parse_birth_date(patient.get("birthDate")),
        None,
        None,
        None,
    )


def person_from_subject(identifiers: Iterable[Any], institution: str) -> Person:
    """The patient of a clinical resource that carries only ``subject.identifier``(s)."""
    if isinstance(identifiers, dict):
        identifiers = [identifiers]
    return make_person(institution, idents=normalize_idents(identifiers, institution))


def person_to_json(p: Person) -> dict[str, Any]:
    """A Person as JSON-ready data (for table state; it holds names and numbers — never log it)."""
    doc = asdict(p)
    doc["birth_date"] = p.birth_date.isoformat() if p.birth_date else None
    return doc


def person_from_json(doc: Mapping[str, Any]) -> Person:
    fields = dict(doc)
    fields["idents"] = tuple(Ident(**i) for i in fields.get("idents") or ())
    born = fields.get("birth_date")
    fields["birth_date"] = date.fromisoformat(born) if born else None
    return Person(**fields)
