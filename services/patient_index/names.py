"""Chinese names as they are written: readings, spellings, order and look-alike slips (pure).

:func:`compare_name` sorts one part of the name (family or given) of a pair of
:class:`~services.patient_index.normalize.Person` into the levels of the ``name``
comparator, ``("different", "similar", "homophone", "same")``:

* **same**: equal hanzi (traditional folded to simplified when normalised); or a Latin side
  that is one of the hanzi side's readings or spellings: every pypinyin reading of the
  characters (heteronyms: 乐 le/yue, 曾 zeng/ceng, 单 shan/dan, 解 xie/jie, 区 ou/qu — for a
  surname, only characters with a known surname reading get their other readings), ü
  written u / v / yu / u: / ü (吕 = Lu, Lv, Lyu, Lü), the Wade-Giles and Cantonese surname
  spellings of ``config/matching/data/surname-romanisations.csv`` (张 = Chang, Cheung;
  许 = Hsu), pypinyin's Wade-Giles of every character (许晓明 = "Hsu Hsiao-ming"), and the
  Hong Kong Government Cantonese romanisation of each character (package
  ``cantonese-romanisation``: 张伟 = "Cheung Wai", 王 = 黄 = "Wong"); two Latin
  sides that are equal once ü is folded, or that spell the same surname (Wong = Wang);
  or the whole name in the other order, exactly ("Fang Wang", "WANG Fang", "Wang, Fang"
  against 王芳; "Maimaiti Ayiguli" against 阿依古丽·买买提; 买买提·阿依古丽 against
  阿依古丽·买买提).
* **homophone**: two hanzi sides that differ but share a reading (汪/王; 乐/岳 through yue).
  Toneless ü stays apart from u here (吕 lv and 卢 lu are different surnames).
* **similar**: one character of the part replaced by a look-alike (形近字: 芳/芬, 己/已),
  by the shape similarity of the ``char-similar-z`` package (four-corner code, structure,
  strokes, components) at :data:`LOOKALIKE_CUTOFF`; the pinyin Jaro–Winkler ≥ the
  rule's cut-off; or family and given each close to the other record's other part.
* **different**: anything else. Hanzi against hanzi never goes through spellings: 王 and
  黄 are both "Wong" in Hong Kong, yet 王 vs 黄 stays different.

:func:`name_block_key` gives one canonical, order-insensitive form of the whole name for
blocking. Data are loaded once, lazily, and every lookup is cached.
"""

from __future__ import annotations

import csv
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from itertools import islice, product
from pathlib import Path
from typing import Any, Final, Literal

import jellyfish
import opencc
from pypinyin import Style, pinyin

from services.common.errors import ConfigError
from services.patient_index.normalize import (
    SURNAME_READINGS,
    Person,
    given_pinyin,
    surname_pinyin,
)

#: The levels :func:`compare_name` returns an index into (the ``name`` comparator's).
NAME_LEVELS: Final = ("different", "similar", "homophone", "same")
DIFFERENT, SIMILAR, HOMOPHONE, SAME = range(4)

#: Wade-Giles / Cantonese / other spellings of Mandarin surnames (sinonym, Apache-2.0),
#: relative to the checkout (a development install) or to the working directory (the
#: image runs from /opt/mrhub, where config/ is copied; compose mounts config/ there).
ROMANISATIONS_FILE: Final = Path("config", "matching", "data", "surname-romanisations.csv")
#: char-similar-z shape similarity from which two characters count as look-alikes. Over
#: 20,000 random pairs of the 600 commonest given-name characters, 0.26 % reach it; 芳/芬
#: 0.92, 伟/传 0.84, 己/已 0.97, 未/末 0.98 do, 芳/明 0.39 and 王/黄 0.31 do not.
LOOKALIKE_CUTOFF: Final = 0.8
#: The Jaro–Winkler cut-off when a caller gives none (the rules' value).
DEFAULT_CUTOFF: Final = 0.85
#: Distinct name parts whose readings and spellings stay cached (about 2 kB each).
_NAMES_CACHED: Final = 16384
#: At most this many spellings of one name part are tried (heteronyms multiply).
_MAX_FORMS: Final = 64

Part = Literal["family", "given"]
_S2T: Final = opencc.OpenCC("s2t")


# ------------------------------------------------------------------------------ data


def romanisations_path() -> Path:
    """The romanisations table: beside the code's checkout, else under the working dir."""
    for base in (Path(__file__).resolve().parents[2], Path.cwd()):
        if (base / ROMANISATIONS_FILE).is_file():
            return base / ROMANISATIONS_FILE
    raise ConfigError(f"{ROMANISATIONS_FILE} not found beside the code nor in {Path.cwd()}")


@lru_cache(maxsize=1)
def surname_spellings() -> Mapping[str, str]:
    """``spelling -> pinyin surname`` from the romanisations table (e.g. hsu -> xu)."""
    path = romanisations_path()
    with path.open(encoding="utf-8", newline="") as f:
        return {
            row["spelling"].strip(): row["mandarin_target"].strip()
            for row in csv.DictReader(f)
            if row["spelling"].strip() and row["mandarin_target"].strip()
        }


@lru_cache(maxsize=1)
def _spellings_of_surname() -> Mapping[str, frozenset[str]]:
    """``pinyin surname -> its other spellings`` (zhang -> chang, cheung, jang, teo…)."""
    out: dict[str, set[str]] = {}
    for spelling, target in surname_spellings().items():
        out.setdefault(target, set()).add(spelling)
    return {k: frozenset(v) for k, v in out.items()}


_INTERJECTIONS: Final = frozenset({"m", "n", "ng", "hm", "hng"})


@lru_cache(maxsize=1)
def _syllables() -> frozenset[str]:
    """Every toneless pinyin syllable (ü as u), from pypinyin's dictionary."""
    from pypinyin.pinyin_dict import pinyin_dict

    chars: dict[str, int] = {}
    for readings in pinyin_dict.values():
        for syllable in {fold(_toneless(r)) for r in readings.split(",")}:
            chars[syllable] = chars.get(syllable, 0) + 1
    # a "syllable" of one or two rare characters (wong, lo, bong) is not what a Latin
    # spelling means, nor are the interjections m, n, ng, hm, hng (ng is 吴 in Cantonese)
    return frozenset(
        s for s, n in chars.items() if n >= 3 and s.isalpha() and s not in _INTERJECTIONS
    )


def _toneless(reading: str) -> str:
    text = unicodedata.normalize("NFKD", reading).replace("u\u0308", "v")
    return "".join(c for c in text if not unicodedata.combining(c)).lower()


@lru_cache(maxsize=1)
def _cantonese() -> Mapping[str, list[str]]:
    """Character (traditional) -> Hong Kong Government romanisations."""
    from cantoroman import Cantonese

    table: Mapping[str, list[str]] = Cantonese().charToRoman
    return table


@lru_cache(maxsize=1)
def _shapes() -> Any:
    from char_similar_z import CharSimilarity

    return CharSimilarity()


# ------------------------------------------------------------------------- spellings

_LYU: Final = re.compile(r"lyu")
_LATIN: Final = re.compile(r"[a-z]+")


@lru_cache(maxsize=65536)
def fold(latin: str) -> str:
    """ü however written (v, u:, ü already made v by ``latin_name``; yu after l) as u:
    lv, lyu, lu -> lu. ``nyu`` is folded only at the start (xinyu is xin-yu)."""
    text = _LYU.sub("lu", latin.replace("v", "u"))
    return "nu" + text[3:] if text.startswith("nyu") else text


@lru_cache(maxsize=65536)
def char_readings(char: str, surname: bool = False) -> tuple[str, ...]:
    """Toneless pinyin readings of one (simplified) character, commonest first.

    A surname character gets its surname reading first and its other readings only when
    it is a known heteronym surname (in ``SURNAME_READINGS``): 王 is wang, not also yu.
    """
    found = pinyin(char, style=Style.NORMAL, heteronym=True)
    readings = [r.lower() for r in found[0]] if found else [char]
    if surname:
        special = SURNAME_READINGS.get(char)
        if special is None:
            return (surname_pinyin(char),)
        readings = [special, *readings]
    return tuple(dict.fromkeys(readings))


@lru_cache(maxsize=65536)
def _cantonese_char(char: str) -> tuple[str, ...]:
    table = _cantonese()
    for form in dict.fromkeys((char, str(_S2T.convert(char)))):
        if form in table:
            return tuple(dict.fromkeys(r.lower() for r in table[form]))
    return ()


@lru_cache(maxsize=65536)
def _wade_giles_char(char: str, surname: bool = False) -> tuple[str, ...]:
    """Wade-Giles of one character (pypinyin's, apostrophes dropped, ü as v): 晓 hsiao,
    陈 chen (ch'en). A surname character that is not a known heteronym surname gets one."""
    found = pinyin(char, style=Style.WADEGILES, heteronym=True)
    readings = ["".join(_LATIN.findall(r.lower())) for r in (found[0] if found else ())]
    readings = [r for r in readings if r]
    if surname and char not in SURNAME_READINGS:
        readings = readings[:1]
    return tuple(dict.fromkeys(readings))


def _joined(choices: Iterable[tuple[str, ...]]) -> frozenset[str]:
    return frozenset("".join(p) for p in islice(product(*choices), _MAX_FORMS))


@lru_cache(maxsize=_NAMES_CACHED)
def hanzi_readings(hanzi: str, surname: bool = False) -> frozenset[str]:
    """Every pinyin reading of a hanzi name part (heteronyms combined), unfolded."""
    if surname and len(hanzi) > 1 and hanzi in SURNAME_READINGS:  # 尉迟, 万俟
        return frozenset({SURNAME_READINGS[hanzi]})
    if not surname:
        first = given_pinyin(hanzi)  # phrase-aware reading first
        return frozenset({first}) | _joined(char_readings(c) for c in hanzi)
    return _joined(char_readings(c, surname=True) for c in hanzi)


@lru_cache(maxsize=_NAMES_CACHED)
def hanzi_spellings(hanzi: str, surname: bool = False) -> frozenset[str]:
    """Every Latin form a hanzi name part may be written as, folded: its pinyin readings,
    the Wade-Giles/Cantonese surname spellings of those readings, its Wade-Giles (Taiwan:
    许晓明 = "Hsu Hsiao-ming") and its Hong Kong Cantonese romanisation. The systems are
    not mixed within one part."""
    readings = hanzi_readings(hanzi, surname)
    out = {fold(r) for r in readings}
    if surname:
        others = _spellings_of_surname()
        for r in readings:
            out.update(fold(s) for s in others.get(r, ()))
    if not (surname and len(hanzi) > 1 and hanzi in SURNAME_READINGS):
        wade_giles = [_wade_giles_char(c, surname) for c in hanzi]
        if all(wade_giles):
            out.update(fold(w) for w in _joined(wade_giles))
    cantonese = [_cantonese_char(c) for c in hanzi]
    if all(cantonese):
        out.update(_joined(cantonese))
    return frozenset(out)


def _canonical_surname(latin: str) -> str:
    """A Latin surname as pinyin when it is a known non-pinyin spelling (hsu -> xu)."""
    if latin in _syllables():
        return latin
    return surname_spellings().get(latin, latin)


# ----------------------------------------------------------------- look-alike hanzi


@lru_cache(maxsize=262144)
def lookalike(a: str, b: str) -> bool:
    """Two different characters close in shape (形近字), per char-similar-z."""
    if a == b:
        return False
    if b < a:
        return lookalike(b, a)
    shapes = _shapes()
    # The score is a weighted mean (weights 35 in all) of seven similarities, three of
    # them cheap: structure (8), four-corner code (7), stroke count (6); the other four
    # weigh 14. A pair that cannot reach the cut-off even with those four at 1 is not a
    # look-alike (most pairs: a different structure alone caps the score at 27/35).
    bound = (
        8 * shapes._sim_struct(a, b)
        + 7 * shapes._sim_fourangle(a, b)
        + 6 * shapes._sim_number(a, b)
        + 14
    ) / 35
    if bound < LOOKALIKE_CUTOFF - 1e-4:  # std_cal_sim rounds to 4 places
        return False
    score: float = shapes.std_cal_sim(a, b, kind="shape")
    return score >= LOOKALIKE_CUTOFF


def _one_lookalike(a: str, b: str) -> bool:
    """Equal length, exactly one character differs, and that pair looks alike."""
    if len(a) != len(b):
        return False
    diffs = [(x, y) for x, y in zip(a, b, strict=True) if x != y]
    return len(diffs) == 1 and lookalike(*diffs[0])


# ------------------------------------------------------------------------ comparing


def _part(p: Person, part: Part) -> tuple[str | None, str | None]:
    return (p.family, p.family_py) if part == "family" else (p.given, p.given_py)


@dataclass(frozen=True, slots=True)
class _View:
    """What comparing needs of one name, worked out once per distinct name."""

    latin: bool  # no hanzi at all
    family: frozenset[str]  # Latin forms (folded): a hanzi part's spellings, or the Latin
    given: frozenset[str]
    lengths: frozenset[int]  # of the whole name in its forms (family + given)
    forms: frozenset[str]  # a Latin name: the whole name in both orders
    surname: str  # a Latin name: its surname as pinyin (hsu -> xu)


def _latin_forms(latin: str | None) -> frozenset[str]:
    return frozenset({fold(latin)}) if latin else frozenset()


@lru_cache(maxsize=_NAMES_CACHED)
def _view(family: str | None, given: str | None, fpy: str | None, gpy: str | None) -> _View:
    fam = hanzi_spellings(family, True) if family else _latin_forms(fpy)
    giv = hanzi_spellings(given, False) if given else _latin_forms(gpy)
    latin = family is None and given is None
    forms: frozenset[str] = frozenset()
    surname = ""
    if latin:
        fa, ga = fold(fpy or ""), fold(gpy or "")
        forms = frozenset({fa + ga, ga + fa})
        surname = _canonical_surname(fa)
    family_lengths = {len(f) for f in fam} or {0}
    lengths = frozenset(f + len(g) for f in family_lengths for g in giv)
    return _View(latin, fam, giv, lengths, forms, surname)


def _view_of(p: Person) -> _View:
    return _view(p.family, p.given, p.family_py, p.given_py)


def _whole_same(a: _View, b: _View) -> bool:
    """A Latin name against another name, whole, in either order, exactly (a swap is not
    a typo): "Fang Wang" = "Wang Fang" = 王芳; "Maimaiti Ayiguli" = 阿依古丽·买买提."""
    if b.latin and not a.latin:
        a, b = b, a
    if not a.latin:
        return False
    if b.latin:
        return bool(a.forms & b.forms)
    family, given = b.family, b.given
    if not family:
        return bool(a.forms & given)
    for w in a.forms:
        n = len(w)
        if n not in b.lengths:
            return False  # both forms have the same length
        for f in family:
            if w.startswith(f) and w[len(f) :] in given:
                return True
            if w.endswith(f) and w[: n - len(f)] in given:
                return True
    return False


def _rotated(a: str | None, b: str | None) -> bool:
    """Hanzi names without a family name (阿依古丽·买买提), one the other in another order."""
    return bool(a and b and len(a) == len(b) > 1 and b in a + a)


def _jw(a: str, b: str) -> float:
    return float(jellyfish.jaro_winkler_similarity(a, b))


def _swapped_close(apy: str, bpy: str, ao: str | None, bo: str | None, cutoff: float) -> bool:
    """Family and given each close to the other record's other part."""
    if not (ao and bo):
        return False
    return _jw(apy, bo) >= cutoff and _jw(ao, bpy) >= cutoff


def compare_name(a: Person, b: Person, part: Part, cutoff: float = DEFAULT_CUTOFF) -> int | None:
    """The level (index into :data:`NAME_LEVELS`) of one part of a pair's names; None when
    a side has no value for that part. ``cutoff``: the pinyin Jaro–Winkler for "similar".
    """
    surname = part == "family"
    if surname:
        ah, apy, ao, bh, bpy, bo = (
            a.family,
            a.family_py,
            a.given_py,
            b.family,
            b.family_py,
            b.given_py,
        )
    else:
        ah, apy, ao, bh, bpy, bo = (
            a.given,
            a.given_py,
            a.family_py,
            b.given,
            b.given_py,
            b.family_py,
        )
    if not apy or not bpy:
        return None
    if ah and bh:
        if ah == bh:
            return SAME
        if not surname and not a.family and not b.family and _rotated(ah, bh):
            return SAME
        if hanzi_readings(ah, surname) & hanzi_readings(bh, surname):
            return HOMOPHONE
        if _one_lookalike(ah, bh):
            return SIMILAR
    else:
        va, vb = _view_of(a), _view_of(b)
        if (va.family & vb.family) if surname else (va.given & vb.given):
            return SAME
        if surname and va.latin and vb.latin and va.surname == vb.surname:
            return SAME  # two spellings of one surname (Wong, Wang)
        if _whole_same(va, vb):
            return SAME
    if _jw(apy, bpy) >= cutoff or _swapped_close(apy, bpy, ao, bo, cutoff):
        return SIMILAR
    return DIFFERENT


# ------------------------------------------------------------------------- blocking


def _segment(latin: str) -> list[str]:
    """Greedy longest-match pinyin syllables; a rest that is not pinyin stays one token."""
    syllables = _syllables()
    out: list[str] = []
    i = 0
    while i < len(latin):
        for j in range(min(len(latin), i + 6), i, -1):
            if latin[i:j] in syllables:
                out.append(latin[i:j])
                i = j
                break
        else:
            return [*out, latin[i:]] if out else [latin]
    return out


def name_block_key(p: Person) -> str | None:
    """One canonical, order-insensitive form of the whole name; None without a name.

    The pinyin syllables of family and given, ü folded to u, sorted. A hanzi part is read
    with its commonest (surname) reading; a Latin part that is a known non-pinyin surname
    spelling (Lyu, Hsu, Wong, Cheung, Lee) becomes its pinyin surname. So 吕芳, "Lyu Fang",
    "Fang LV", "LU Fang" and "lü fang" share a key, as do 阿依古丽·买买提, "Ayiguli
    Maimaiti" and "Maimaiti Ayiguli", 许明/"Hsu Ming", 张伟/"Cheung Wei". Not shared:
    Cantonese given names ("Cheung Wai" is zhang+wai, 张伟 zhang+wei); surname spellings
    that are themselves pinyin ("Chang" stays chang, "Chan" chan: they are also 常 and 缠);
    the other reading of a heteronym (乐 is yue as a surname: "Le Fang" is apart); a
    look-alike or homophone hanzi (芬/芳, 汪/王).
    """
    tokens: list[str] = []
    for part in ("family", "given"):
        hanzi, latin = _part(p, part)
        if hanzi:
            reading = surname_pinyin(hanzi) if part == "family" else given_pinyin(hanzi)
            tokens.extend(_segment(fold(reading)))
        elif latin:
            folded = fold(latin)
            if folded not in _syllables() and folded in surname_spellings():
                folded = surname_spellings()[folded]
            tokens.extend(_segment(folded))
    return " ".join(sorted(tokens)) if tokens else None
