"""Names for the independent Chinese data set: frequency tables, composition, renderings.

Frequencies come from the ORCID-derived tables of AllenAI's sinonym (data/SOURCES.md), not
from the census tables the matcher uses. Everything hand-made here (the head list of common
given names, the sex-marked characters, the look-alike pairs, the Cantonese/Wade-Giles
spellings, the minority names) is this generator's own assumption and is documented in
docs/cn-dataset.md; none of it is read from the matcher.
"""

from __future__ import annotations

import csv
import random
from bisect import bisect
from dataclasses import dataclass
from functools import cache
from itertools import accumulate
from pathlib import Path
from typing import Final

from pypinyin import Style, lazy_pinyin

DATA: Final = Path(__file__).parent / "data"

# ---- hand-made lists (assumptions, see docs/cn-dataset.md) ---------------------------------

#: Common full given names, most common first within each sex (Zipf weights by rank). The
#: list is the generator's own: names known to be very common (伟, 芳, 敏, 秀英 …), not
#: counts from any table.
HEAD_MALE: Final = (  # noqa: SIM905
    "伟 磊 勇 军 杰 强 涛 斌 超 明 刚 平 辉 鹏 华 飞 鑫 波 宇 浩 凯 健 俊 帆 帅 旭 宁 龙 "
    "林 欢 阳 建华 建国 建军 志强 志明 子轩 浩然 宇轩 国华"
).split()
HEAD_FEMALE: Final = (  # noqa: SIM905
    "芳 娜 敏 静 秀英 丽 艳 娟 霞 秀兰 燕 玲 桂英 丹 萍 红 玉兰 桂兰 英 梅 莉 婷 雪 琳 "
    "晶 倩 颖 慧 佳 洁 淑珍 秀珍 凤英 玉梅 子涵 欣怡 梓涵 雨涵 海燕 丽华"
).split()

#: Characters read as female / male in given names (radical 女, flowers, jade …; strength,
#: martial …). A composed name of a woman avoids the male set and favours the female set.
FEMALE_CHARS: Final = frozenset(
    "芳娜敏静秀英丽艳娟霞兰燕玲桂丹萍红梅莉婷雪琳晶倩颖慧洁淑珍凤怡涵菲薇娇媛妍婉姗"
    "嫣姝娅婕妮琪瑶璐露蓉芬芝芸茜萱蕾莹月彩春花香琴素巧美翠玉"
)
MALE_CHARS: Final = frozenset(
    "伟磊勇军杰强涛斌超刚辉鹏飞鑫波浩凯健俊帆帅旭龙阳建国志豪峰毅彬虎雄武猛坤乾栋"
    "亮兵锋鸿威振海江山林森松柏庆福贵宝东"
)

#: Look-alike characters (形近字) that a hand or an OCR/handwriting slip confuses. Hand-made,
#: deliberately not the matcher's source of look-alikes.
LOOKALIKE_PAIRS: Final = (  # noqa: SIM905
    "芳芬 王玉 未末 己已 日曰 人入 土士 刀力 贝见 睛晴 请清 情晴 辩辨 侯候 戊戌 "
    "斌赋 洁浩 婷停 娟涓 玲铃 琳淋 丽雨 敏繁 静净 红虹 梅海 燕蒸 霞暇 萍苹 莉利 "
    "倩情 颖颍 慧惠 伟纬 杰木 强弛 涛俦 超趁 刚纲 辉挥 鹏朋 飞气 鑫森 波坡 宇字 "
    "浩皓 凯剀 健键 俊浚 帆帜 旭加 宁宇 龙尤 林材 阳限 建律 国图 华毕 军车 勇甬 "
    "明朋 平乎 秀季 英莫 兰竺 桂佳 丹舟 艳艶 霞假 琴琵 珍诊 凤风 晶品 佳桂 淑叔"
).split()

#: Hong Kong (Cantonese) and Wade-Giles spellings of common surnames.
SURNAME_CANTONESE: Final = {
    "王": "Wong", "陈": "Chan", "张": "Cheung", "李": "Lee", "刘": "Lau", "黄": "Wong",
    "吴": "Ng", "周": "Chow", "林": "Lam", "何": "Ho", "郭": "Kwok", "梁": "Leung",
    "谢": "Tse", "许": "Hui", "徐": "Tsui", "蔡": "Choi", "邓": "Tang", "郑": "Cheng",
    "罗": "Law", "叶": "Yip", "杨": "Yeung", "赵": "Chiu", "朱": "Chu", "胡": "Wu",
    "曾": "Tsang", "钟": "Chung", "冯": "Fung", "潘": "Poon", "袁": "Yuen", "邱": "Yau",
    "孙": "Suen", "马": "Ma", "高": "Ko", "江": "Kong", "韩": "Hon", "吕": "Lui",
    "卢": "Lo", "苏": "So", "余": "Yu", "莫": "Mok", "麦": "Mak", "谭": "Tam",
    "廖": "Liu", "萧": "Siu", "黎": "Lai", "方": "Fong", "石": "Shek", "文": "Man",
}  # fmt: skip
SURNAME_WADE_GILES: Final = {
    "张": "Chang", "陈": "Ch'en", "刘": "Liu", "黄": "Huang", "周": "Chou", "吴": "Wu",
    "徐": "Hsu", "许": "Hsu", "谢": "Hsieh", "郭": "Kuo", "蔡": "Tsai", "曾": "Tseng",
    "郑": "Cheng", "赵": "Chao", "钟": "Chung", "邱": "Ch'iu", "江": "Chiang",
    "蒋": "Chiang", "萧": "Hsiao", "吕": "Lü", "朱": "Chu", "邓": "Teng", "杨": "Yang",
    "叶": "Yeh", "冯": "Feng", "高": "Kao", "秦": "Ch'in", "邹": "Tsou", "曹": "Ts'ao",
}  # fmt: skip
#: Cantonese readings of common given-name characters (HK government style).
GIVEN_CANTONESE: Final = {
    "伟": "Wai", "明": "Ming", "华": "Wah", "文": "Man", "国": "Kwok", "志": "Chi",
    "德": "Tak", "家": "Ka", "嘉": "Ka", "美": "Mei", "玲": "Ling", "丽": "Lai",
    "芳": "Fong", "英": "Ying", "敏": "Man", "强": "Keung", "辉": "Fai", "杰": "Kit",
    "俊": "Chun", "健": "Kin", "欣": "Yan", "秀": "Sau", "慧": "Wai", "芬": "Fun",
    "霞": "Ha", "红": "Hung", "军": "Kwan", "平": "Ping", "东": "Tung", "海": "Hoi",
    "建": "Kin", "龙": "Lung", "峰": "Fung", "静": "Ching", "娟": "Kuen", "燕": "Yin",
    "梅": "Mui", "兰": "Lan", "玉": "Yuk", "珍": "Chun", "婷": "Ting", "雪": "Suet",
    "勇": "Yung", "涛": "To", "斌": "Bun", "超": "Chiu", "刚": "Kong", "鹏": "Pang",
    "宇": "Yu", "浩": "Ho", "子": "Tsz", "晓": "Hiu", "小": "Siu", "红艳": "Hung Yim",
}  # fmt: skip

#: Surnames with more than one reading; the surname reading first, a wrong one after.
SURNAME_READINGS: Final = {
    "乐": ("yue4", "le4"), "单": ("shan4", "dan1"), "曾": ("zeng1", "ceng2"),
    "区": ("ou1", "qu1"), "仇": ("qiu2", "chou2"), "解": ("xie4", "jie3"),
    "查": ("zha1", "cha2"), "朴": ("piao2", "pu3"), "盖": ("ge3", "gai4"),
    "缪": ("miao4", "mou2"), "覃": ("qin2", "tan2"), "翟": ("zhai2", "di2"),
    "召": ("shao4", "zhao4"), "种": ("chong2", "zhong3"),
    "繁": ("po2", "fan2"), "员": ("yun4", "yuan2"), "秘": ("bi4", "mi4"),
    "长孙": ("zhang3 sun1", "chang2 sun1"), "尉迟": ("yu4 chi2", "wei4 chi2"),
    "万俟": ("mo4 qi2", "wan4 si4"), "单于": ("chan2 yu2", "dan1 yu2"),
}  # fmt: skip

#: Uyghur-style given names in hanzi with their pinyin (a person's name is own·father's).
MINORITY_NAMES: Final[tuple[tuple[str, str, str], ...]] = (
    ("阿依古丽", "Ayiguli", "female"), ("古丽", "Guli", "female"),
    ("热依拉", "Reyila", "female"), ("迪丽热巴", "Dilireba", "female"),
    ("帕提古丽", "Patiguli", "female"), ("阿依努尔", "Ayinuer", "female"),
    ("米热古丽", "Miereguli", "female"), ("祖丽菲亚", "Zulifeiya", "female"),
    ("努尔", "Nuer", "female"), ("买买提", "Maimaiti", "male"),
    ("艾力", "Aili", "male"), ("阿不都", "Abudu", "male"),
    ("吐尔逊", "Tuerxun", "male"), ("艾尼瓦尔", "Ainiwaer", "male"),
    ("玉素甫", "Yusufu", "male"), ("阿迪力", "Adili", "male"),
    ("依明", "Yiming", "male"), ("库尔班", "Kuerban", "male"),
    ("吾斯曼", "Wusiman", "male"), ("热合曼", "Reheman", "male"),
    ("艾合买提", "Aihemaiti", "male"), ("阿布都热依木", "Abudureyimu", "male"),
    ("麦麦提", "Maimaiti", "male"), ("肉孜", "Rouzi", "male"),
)  # fmt: skip

# ---- frequency tables ----------------------------------------------------------------------


@dataclass(frozen=True)
class Table:
    items: tuple[str, ...]
    cum: tuple[float, ...]

    def draw(self, rng: random.Random) -> str:
        return self.items[bisect(self.cum, rng.random() * self.cum[-1])]

    def draws(self, rng: random.Random, k: int) -> list[str]:
        return rng.choices(self.items, cum_weights=self.cum, k=k)


def _table(pairs: list[tuple[str, float]]) -> Table:
    pairs = [(s, w) for s, w in pairs if w > 0]
    return Table(tuple(s for s, _ in pairs), tuple(accumulate(w for _, w in pairs)))


def _read(name: str) -> list[dict[str, str]]:
    with (DATA / name).open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


@cache
def surname_table() -> Table:
    return _table([(r["surname"], float(r["ppm"])) for r in _read("familyname_orcid.csv")])


#: ORCID confuses surnames with given names (王 and 李 carry given-name mass there): the 20
#: most common surnames are dropped from the given-name characters.
_SURNAMES_NOT_GIVEN: Final = frozenset("王李张刘陈杨赵黄周吴徐孙胡朱高郭马罗何梁")


@cache
def given_weights() -> dict[str, float]:
    out: dict[str, float] = {}
    for r in _read("givenname_orcid.csv"):
        ch = r["character"]
        if len(ch) == 1 and ch not in _SURNAMES_NOT_GIVEN and "\u4e00" <= ch <= "\u9fff":
            out[ch] = float(r["ppm"])
    return out


@cache
def given_table(sex: str) -> Table:
    """Given-name characters for ``sex`` ("male"/"female"): the ORCID ppm, with the other
    sex's marked characters dropped and this sex's marked characters weighted x3."""
    own, other = (MALE_CHARS, FEMALE_CHARS) if sex == "male" else (FEMALE_CHARS, MALE_CHARS)
    return _table(
        [(c, w * (3.0 if c in own else 1.0)) for c, w in given_weights().items() if c not in other]
    )


@cache
def head_table(sex: str) -> Table:
    names = HEAD_MALE if sex == "male" else HEAD_FEMALE
    return _table([(n, 1.0 / (rank + 1)) for rank, n in enumerate(names)])


# ---- pinyin, homophones, look-alikes -------------------------------------------------------


@cache
def reading(ch: str) -> str:
    """The usual pinyin of one character, tone number last, ü as v (``lv3``)."""
    return lazy_pinyin(ch, style=Style.TONE3, neutral_tone_with_five=True)[0]


@cache
def homophones() -> dict[str, Table]:
    """Toneless syllable → the given-name characters read so (a pinyin IME offers them all)."""
    groups: dict[str, list[tuple[str, float]]] = {}
    for ch, w in given_weights().items():
        groups.setdefault(reading(ch).rstrip("12345"), []).append((ch, w))
    return {syl: _table(v) for syl, v in groups.items() if len(v) > 1}


def homophone_of(ch: str, rng: random.Random) -> str | None:
    table = homophones().get(reading(ch).rstrip("12345"))
    if table is None:
        return None
    for _ in range(8):
        other = table.draw(rng)
        if other != ch:
            return other
    return None


@cache
def lookalikes() -> dict[str, tuple[str, ...]]:
    out: dict[str, list[str]] = {}
    for pair in LOOKALIKE_PAIRS:
        a, b = pair[0], pair[1]
        out.setdefault(a, []).append(b)
        out.setdefault(b, []).append(a)
    return {k: tuple(v) for k, v in out.items()}


def surname_pinyin(surname: str, *, wrong_reading: bool = False) -> str:
    if surname in SURNAME_READINGS:
        return SURNAME_READINGS[surname][1 if wrong_reading else 0].replace(" ", "")
    return "".join(reading(c) for c in surname)


def given_pinyin(given: str) -> list[str]:
    return [reading(c) for c in given]


# ---- Latin renderings ----------------------------------------------------------------------

_WG_INITIALS: Final = (
    ("zh", "ch"), ("ch", "ch'"), ("sh", "sh"), ("z", "ts"), ("c", "ts'"), ("s", "s"),
    ("j", "ch"), ("q", "ch'"), ("x", "hs"), ("r", "j"), ("b", "p"), ("p", "p'"),
    ("d", "t"), ("t", "t'"), ("g", "k"), ("k", "k'"),
)  # fmt: skip
_WG_FINALS: Final = (
    ("iong", "iung"), ("ong", "ung"), ("ian", "ien"), ("ie", "ieh"), ("ue", "üeh"), ("ve", "üeh"),
)  # fmt: skip


def wade_giles(syllable: str) -> str:
    """A toneless pinyin syllable (ü as v) in Wade-Giles, apostrophes kept."""
    s = syllable
    if s in ("zhi", "chi", "shi", "ri"):
        return {"zhi": "chih", "chi": "ch'ih", "shi": "shih", "ri": "jih"}[s]
    if s in ("zi", "ci", "si"):
        return {"zi": "tzu", "ci": "tz'u", "si": "ssu"}[s]
    if s.startswith("yi"):
        s = s[1:]
    for a, b in _WG_FINALS:
        if s.endswith(a):
            s = s[: -len(a)] + b
            break
    for a, b in _WG_INITIALS:
        if s.startswith(a):
            rest = s[len(a) :]
            if a in ("j", "q", "x") and rest.startswith("u"):
                rest = "ü" + rest[1:]
            s = b + rest
            break
    if s.endswith("e") and len(s) > 1 and s[-2] not in "iuü":
        s = s[:-1] + "o"  # ke → ko, he → ho
    return s.replace("v", "ü")


def u_umlaut(syllable: str, style: str) -> str:
    """Write the ü of a toneless pinyin syllable (stored as v) as ``style``: v, u, yu or ü."""
    if "v" not in syllable:
        return syllable
    return syllable.replace("v", {"v": "v", "u": "u", "yu": "yu", "ü": "ü"}[style])
