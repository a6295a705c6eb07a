"""Patient matching: deterministic on verified identifiers, Fellegi–Sunter otherwise (pure).

The rules are data (``config/matching/rules-v2.yaml``, loaded by :func:`load_rules`): the
fields compared, each with a comparator that sorts a pair into *levels* (from "different"
to "same") and the probabilities ``m`` (of each level among true matches) and ``u`` (among
non-matches); the blocking recipes; the prior probability that a compared pair is a match;
the two thresholds, as posterior match probabilities; and guards that cap or veto a link
whatever the score (relatives share surname, address, phone and — twins — birth date).

A pair's score is the sum over fields of ``log2(m/u)`` of its level (a missing value on
either side contributes 0). Adding the prior's log-odds gives the posterior log-odds of a
match, so the thresholds become weights: ``upper_weight = log2(upper/(1-upper)) -
log2(prior/(1-prior))``. :func:`fit_em` re-estimates ``m``, ``u`` and the prior by EM from
the comparison vectors of a set of candidate pairs (no labels needed).

Nothing here logs; blocking keys contain raw values and must be hashed by the caller.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from functools import lru_cache
from pathlib import Path
from typing import Any, Final, Literal

import jellyfish
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from services.common.config_yaml import load_mapping
from services.common.errors import ConfigError
from services.patient_index.frequencies import NameFrequencies, load_frequencies
from services.patient_index.names import compare_name, name_block_key
from services.patient_index.normalize import Ident, IdentKind, Person

DEFAULT_RULES_PATH: Final = (
    Path(__file__).resolve().parents[2] / "config" / "matching" / "rules-v2.yaml"
)

ComparatorName = Literal["exact", "jaro_winkler", "name", "date", "phone", "address", "identifier"]
Attribute = Literal[
    "sex", "postcode", "family_py", "given_py", "family", "given", "phone", "address"
]  # fmt: skip
BlockPart = Literal[
    "ident",
    "phone",
    "birth_date",
    "birth_year",
    "sex",
    "postcode",
    "family_py",
    "given_py",
    "names",
    "family_initial",
    "given_initial",
    "family_soundex",
    "given_soundex",
]
Outcome = Literal["auto", "review", "none"]
DecisionKind = Literal["deterministic", "auto", "review", "new"]

#: The levels each comparator sorts a pair into, worst to best.
LEVELS: Final[Mapping[str, tuple[str, ...]]] = {
    "exact": ("different", "same"),
    "jaro_winkler": ("different", "similar", "same"),
    "name": ("different", "similar", "homophone", "same"),
    "date": ("different", "typo", "same"),
    "phone": ("different", "partial", "same"),
    "address": ("different", "similar", "same"),
    "identifier": ("different", "typo", "same"),
}
#: How many similarity cut-offs each comparator takes.
_CUTOFFS: Final[Mapping[str, int]] = {
    "exact": 0,
    "jaro_winkler": 1,
    "name": 1,
    "date": 0,
    "phone": 0,
    "address": 2,
    "identifier": 0,
}
#: The pseudo-level a guard uses for "no value on one side or both".
MISSING: Final = "missing"
_OUTCOME_RANK: Final[Mapping[str, int]] = {"none": 0, "review": 1, "auto": 2}
_FLOOR: Final = 1e-9


def _log2_odds(p: float) -> float:
    return math.log2(p / (1.0 - p))


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FieldRule(_Frozen):
    """One compared field: its comparator, parameters and level probabilities (or weights)."""

    name: str
    comparator: ComparatorName
    attribute: Attribute | None = None
    part: Literal["family", "given"] | None = None
    kinds: tuple[IdentKind, ...] = ()
    cutoffs: tuple[float, ...] = ()
    m: tuple[float, ...] | None = None
    u: tuple[float, ...] | None = None
    weights: tuple[float, ...] | None = None
    #: Term-frequency adjustment of the ``same`` level of a ``name`` field: its ``u`` is the
    #: share of the population holding the agreeing name (from the rules' name-frequency
    #: table) instead of the average ``u`` — 王 = 王 weighs little, 欧阳 = 欧阳 much.
    frequency: Literal["surname", "given"] | None = None
    note: str = ""

    _weights: tuple[float, ...] = PrivateAttr()

    @property
    def levels(self) -> tuple[str, ...]:
        return LEVELS[self.comparator]

    @model_validator(mode="after")
    def _check(self) -> FieldRule:
        n = len(self.levels)
        c = self.comparator
        if c in ("exact", "jaro_winkler") and self.attribute is None:
            raise ValueError(f"field {self.name}: comparator {c} needs an attribute")
        if c == "name" and self.part is None:
            raise ValueError(f"field {self.name}: comparator name needs part: family|given")
        if c == "identifier" and not self.kinds:
            raise ValueError(f"field {self.name}: comparator identifier needs kinds")
        if self.frequency is not None and c != "name":
            raise ValueError(f"field {self.name}: frequency applies to comparator name only")
        if len(self.cutoffs) != _CUTOFFS[c]:
            raise ValueError(f"field {self.name}: {c} takes {_CUTOFFS[c]} cut-off(s)")
        if list(self.cutoffs) != sorted(self.cutoffs) or not all(
            0.0 < x <= 1.0 for x in self.cutoffs
        ):
            raise ValueError(f"field {self.name}: cut-offs ascending, in (0, 1]")
        if self.weights is not None:
            if self.m is not None or self.u is not None:
                raise ValueError(f"field {self.name}: give m/u or weights, not both")
            if len(self.weights) != n:
                raise ValueError(f"field {self.name}: {n} weights for levels {self.levels}")
            self._weights = tuple(float(w) for w in self.weights)
            return self
        if self.m is None or self.u is None:
            raise ValueError(f"field {self.name}: needs m and u (or weights)")
        for label, probs in (("m", self.m), ("u", self.u)):
            if len(probs) != n:
                raise ValueError(f"field {self.name}: {n} {label} values for {self.levels}")
            if not all(0.0 < p < 1.0 for p in probs) or abs(sum(probs) - 1.0) > 1e-3:
                raise ValueError(f"field {self.name}: {label} must be in (0, 1) and sum to 1")
        self._weights = tuple(math.log2(a / b) for a, b in zip(self.m, self.u, strict=True))
        return self

    def weight(self, level: int) -> float:
        """``log2(m/u)`` of a level (index into :attr:`levels`)."""
        return self._weights[level]


class Guard(_Frozen):
    """A combination of field levels that caps the outcome whatever the score.

    ``when`` maps field names to the level names that trigger it (all must hold; the
    pseudo-level ``missing`` matches a value absent on either side); outcome
    ``none`` is a veto (never linked, not even reviewed), ``review`` forbids an auto-link.
    """

    name: str
    when: dict[str, tuple[str, ...]]
    outcome: Literal["none", "review"]
    why: str = ""


class Namesake(_Frozen):
    """Namesakes: a Chinese full name agreeing is no proof of one person.

    The outcome is capped at review (guard ``namesake``, never auto-linked) when the family
    and given names are both ``same`` or ``homophone`` (a name that sounds the same: 裴振毅
    and 裴真毅 are namesakes to the ear, and to a pinyin-only record); the name is Chinese
    (written in hanzi on a side, or a surname the frequency table lists); its frequency
    (surname share × given-name share, when the table knows both) is at least
    ``min_frequency``; and none of the ``personal`` fields (identifiers, phone) agrees at
    its best level.
    """

    min_frequency: float = Field(default=0.0, ge=0.0, lt=1.0)
    personal: tuple[str, ...]
    why: str = ""


class Rules(_Frozen):
    """Versioned matching rules; see the module docstring and ``docs/matching.md``."""

    version: str
    prior: float = Field(gt=0.0, lt=1.0)
    upper: float = Field(gt=0.0, lt=1.0)
    lower: float = Field(gt=0.0, lt=1.0)
    card_conflict_weight: float = Field(le=0.0)
    fields: tuple[FieldRule, ...]
    blocking: tuple[tuple[BlockPart, ...], ...]
    guards: tuple[Guard, ...] = ()
    #: The name-frequency table (see :mod:`services.patient_index.frequencies`); a relative
    #: path is read relative to the rules file. Without one, no adjustment is made.
    name_frequencies: str | None = None
    #: A full-name frequency at or below which an estimate counts as this rare.
    frequency_floor: float = Field(default=1e-7, gt=0.0, lt=1.0)
    namesake: Namesake | None = None

    _by_name: dict[str, FieldRule] = PrivateAttr()
    _freq: NameFrequencies | None = PrivateAttr(default=None)
    _guards: tuple[tuple[str, tuple[tuple[int, frozenset[int]], ...]], ...] = PrivateAttr()

    @model_validator(mode="after")
    def _check(self) -> Rules:
        if not self.lower < self.upper:
            raise ValueError("lower must be below upper")
        names = [f.name for f in self.fields]
        if len(set(names)) != len(names):
            raise ValueError("field names must be unique")
        self._by_name = {f.name: f for f in self.fields}
        if not self.blocking or any(not recipe for recipe in self.blocking):
            raise ValueError("blocking needs at least one non-empty recipe")
        if any("ident" in recipe and len(recipe) > 1 for recipe in self.blocking):
            raise ValueError("the blocking part 'ident' stands alone in its recipe")
        guards = []
        for g in self.guards:
            conds = []
            for fname, levels in g.when.items():
                rule = self._by_name.get(fname)
                if rule is None:
                    raise ValueError(f"guard {g.name}: no field {fname}")
                bad = [lv for lv in levels if lv not in (*rule.levels, MISSING)]
                if bad:
                    raise ValueError(f"guard {g.name}: {fname} has no level(s) {bad}")
                idx = names.index(fname)
                conds.append(
                    (
                        idx,
                        frozenset(-1 if lv == MISSING else rule.levels.index(lv) for lv in levels),
                    )
                )
            guards.append((g.name, tuple(sorted(conds, key=lambda c: c[0]))))
        self._guards = tuple(guards)
        if self.namesake is not None:
            unknown = [f for f in self.namesake.personal if f not in self._by_name]
            if unknown:
                raise ValueError(f"namesake: no field(s) {unknown}")
        return self

    @property
    def frequencies(self) -> NameFrequencies | None:
        """The name-frequency table, read once per path (None when the rules name none)."""
        if self.name_frequencies is None:
            return None
        if self._freq is None:
            self._freq = load_frequencies(Path(self.name_frequencies))
        return self._freq

    @property
    def prior_weight(self) -> float:
        """log2 prior odds that a compared pair is a match."""
        return _log2_odds(self.prior)

    @property
    def upper_weight(self) -> float:
        """The score at or above which a pair is auto-linked."""
        return _log2_odds(self.upper) - self.prior_weight

    @property
    def lower_weight(self) -> float:
        """The score at or above which a pair goes to review."""
        return _log2_odds(self.lower) - self.prior_weight

    def field(self, name: str) -> FieldRule:
        return self._by_name[name]

    def guard_hit(self, levels: Sequence[int | None]) -> tuple[str, str] | None:
        """The first guard that ``levels`` trigger, as ``(name, outcome)``."""
        for (name, conds), g in zip(self._guards, self.guards, strict=True):
            if all((-1 if levels[i] is None else levels[i]) in ok for i, ok in conds):
                return name, g.outcome
        return None


def load_rules(path: Path | str = DEFAULT_RULES_PATH) -> Rules:
    """Read and check a rules file; ``ConfigError`` names what is wrong."""
    path = Path(path)
    data = load_mapping(path, what="matching rules", expected="a mapping at the top")
    freq = data.get("name_frequencies")
    if isinstance(freq, str):
        data = {**data, "name_frequencies": str((path.parent / freq).resolve())}
    try:
        rules = Rules.model_validate(data)
    except ValueError as exc:
        raise ConfigError(f"matching rules {path}: {exc}") from exc
    _ = rules.frequencies  # a missing or broken table fails here, at start-up
    return rules


# ----------------------------------------------------------------------------- blocking


def _soundex(text: str) -> str:
    return str(jellyfish.soundex(text))


def _block_value(p: Person, part: BlockPart) -> str | None:
    if part == "phone":
        return p.phone
    if part == "birth_date":
        return p.birth_date.isoformat() if p.birth_date else None
    if part == "birth_year":
        return str(p.birth_date.year) if p.birth_date else None
    if part == "sex":
        return p.sex
    if part == "postcode":
        return p.postcode
    if part == "family_py":
        return p.family_py
    if part == "given_py":
        return p.given_py
    if part == "names":
        return name_block_key(p)
    if part == "family_initial":
        return p.family_py[0] if p.family_py else None
    if part == "given_initial":
        return p.given_py[0] if p.given_py else None
    if part == "family_soundex":
        return _soundex(p.family_py) if p.family_py else None
    if part == "given_soundex":
        return _soundex(p.given_py) if p.given_py else None
    raise ValueError(f"unknown blocking part {part}")  # pragma: no cover - Literal-checked


def blocking_keys(p: Person, rules: Rules) -> frozenset[str]:
    """Every blocking key of ``p``: records sharing one are compared.

    A recipe yields no key when one of its parts is missing. Keys hold raw values: hash
    them (``keyed_hash``) before storing, never log them.
    """
    keys: set[str] = set()
    for recipe in rules.blocking:
        if recipe == ("ident",):
            for ident in p.idents:
                if _usable(ident):
                    ns, value = ident.key()
                    keys.add(f"ident:{ns}|{value}")
            continue
        values = [_block_value(p, part) for part in recipe]
        if all(values):
            keys.add("+".join(recipe) + ":" + "|".join(v for v in values if v))
    return frozenset(keys)


# --------------------------------------------------------------------------- comparators


def _near(a: str, b: str) -> bool:
    """One substitution, insertion, deletion or adjacent transposition apart."""
    return int(jellyfish.damerau_levenshtein_distance(a, b)) <= 1


def _jw(a: str, b: str) -> float:
    return float(jellyfish.jaro_winkler_similarity(a, b))


@lru_cache(maxsize=200_000)
def _bigrams(text: str) -> frozenset[str]:
    if len(text) < 2:
        return frozenset((text,))
    return frozenset(text[i : i + 2] for i in range(len(text) - 1))


def _dice(a: str, b: str) -> float:
    x, y = _bigrams(a), _bigrams(b)
    return 2.0 * len(x & y) / (len(x) + len(y))


def _cmp_exact(a: Any, b: Any) -> int | None:
    if a is None or b is None:
        return None
    return 1 if a == b else 0


def _cmp_jw(a: str | None, b: str | None, cutoff: float) -> int | None:
    if not a or not b:
        return None
    if a == b:
        return 2
    return 1 if _jw(a, b) >= cutoff else 0


def _date_typo(a: date, b: date) -> bool:
    if a.year == b.year and a.month == b.day and a.day == b.month:
        return True
    return _near(a.strftime("%Y%m%d"), b.strftime("%Y%m%d"))


def _cmp_date(a: date | None, b: date | None) -> int | None:
    if a is None or b is None:
        return None
    if a == b:
        return 2
    return 1 if _date_typo(a, b) else 0


def _cmp_phone(a: str | None, b: str | None) -> int | None:
    if not a or not b:
        return None
    if a == b:
        return 2
    shorter, longer = sorted((a, b), key=len)
    if len(shorter) >= 7 and longer.endswith(shorter):
        return 1  # the same number with and without its area code
    return 1 if len(a) == len(b) and _near(a, b) else 0


def _cmp_address(a: str | None, b: str | None, cutoffs: tuple[float, ...]) -> int | None:
    if not a or not b:
        return None
    if a == b:
        return 2
    d = _dice(a, b)
    return 2 if d >= cutoffs[1] else 1 if d >= cutoffs[0] else 0


def _usable(ident: Ident) -> bool:
    """A 身份证 failing GB 11643 is used for nothing: placeholders such as 000000… or
    111111… fail it, and many different people share them."""
    return ident.verified or ident.kind != "id_card"


def _idents_of(p: Person, kinds: tuple[IdentKind, ...]) -> dict[str, list[str]]:
    """Identifiers by namespace; a 身份证 that disagrees with its record's birth date or sex
    is left out (often a parent's card on a child's record: it is not evidence of who the
    record is)."""
    out: dict[str, list[str]] = {}
    for ident in p.idents:
        if ident.kind == "id_card" and p.card_conflict:
            continue
        if ident.kind in kinds and _usable(ident):
            ns, value = ident.key()
            out.setdefault(ns, []).append(value)
    return out


def _cmp_identifier(a: Person, b: Person, kinds: tuple[IdentKind, ...]) -> int | None:
    """The best level over identifier namespaces both records have (None if they share none)."""
    ia, ib = _idents_of(a, kinds), _idents_of(b, kinds)
    best: int | None = None
    for ns in ia.keys() & ib.keys():
        for x in ia[ns]:
            for y in ib[ns]:
                level = 2 if x == y else 1 if len(x) == len(y) and _near(x, y) else 0
                best = level if best is None else max(best, level)
    return best


def compare_field(rule: FieldRule, a: Person, b: Person) -> int | None:
    """The level (index into ``rule.levels``) of a pair on one field; None when missing."""
    c = rule.comparator
    if c == "name":
        return compare_name(a, b, rule.part or "family", rule.cutoffs[0])
    if c == "date":
        return _cmp_date(a.birth_date, b.birth_date)
    if c == "phone":
        return _cmp_phone(a.phone, b.phone)
    if c == "address":
        return _cmp_address(a.address, b.address, rule.cutoffs)
    if c == "identifier":
        return _cmp_identifier(a, b, rule.kinds)
    attr = rule.attribute or ""
    va, vb = getattr(a, attr), getattr(b, attr)
    if c == "exact":
        return _cmp_exact(va, vb)
    return _cmp_jw(va, vb, rule.cutoffs[0])


def compare(a: Person, b: Person, rules: Rules) -> tuple[int | None, ...]:
    """The comparison vector of a pair: one level (or None) per field of ``rules``."""
    return tuple(compare_field(rule, a, b) for rule in rules.fields)


# ------------------------------------------------------------------------------ scoring


@dataclass(frozen=True, slots=True)
class Score:
    """A pair's summed log2 weights, per field, and the outcome the thresholds give.

    ``probability`` is the posterior match probability under the rules' prior;
    ``guard`` names the guard that capped or vetoed the outcome, if any.
    """

    total: float
    parts: dict[str, float]
    outcome: Outcome
    probability: float = 0.0
    guard: str | None = None


def score_levels(
    levels: Sequence[int | None],
    rules: Rules,
    *,
    card_conflict: bool = False,
    adjusted: Mapping[str, float] | None = None,
    namesake: bool = False,
) -> Score:
    """Weigh a comparison vector (see :func:`compare`) and classify it.

    ``adjusted`` replaces the weight of a field (by name): the term-frequency-adjusted
    weight of an agreeing name (:func:`score` computes it). ``namesake`` caps the outcome at
    review (guard ``namesake``, see :class:`Namesake`).
    """
    parts: dict[str, float] = {}
    for rule, level in zip(rules.fields, levels, strict=True):
        if level is not None:
            parts[rule.name] = rule.weight(level)
    if adjusted:
        parts.update(adjusted)
    if card_conflict:
        parts["card_conflict"] = rules.card_conflict_weight
    total = sum(parts.values())
    outcome: Outcome = (
        "auto"
        if total >= rules.upper_weight
        else "review"
        if total >= rules.lower_weight
        else "none"
    )
    hit = rules.guard_hit(levels)
    guard = None
    if hit is not None and _OUTCOME_RANK[hit[1]] < _OUTCOME_RANK[outcome]:
        guard = hit[0]
        outcome = "none" if hit[1] == "none" else "review"
    if namesake and outcome == "auto":
        guard, outcome = "namesake", "review"
    log_odds = total + rules.prior_weight
    probability = 1.0 / (1.0 + 2.0 ** (-log_odds)) if log_odds > -1000 else 0.0
    return Score(total, parts, outcome, probability, guard)


_HOMOPHONE, _SAME = 2, 3  # the ``homophone`` and ``same`` levels of the name comparator


def _agreeing_name(a: Person, b: Person, part: str) -> tuple[str | None, str | None]:
    """(hanzi, pinyin) to look up for a name part both records agree on: the hanzi when both
    have the same hanzi; else the pinyin of a side written in hanzi (a Latin spelling such as
    "Cheung" agreeing with 张 is looked up as zhang); else the first record's pinyin."""
    ah, apy = (a.family, a.family_py) if part == "surname" else (a.given, a.given_py)
    bh, bpy = (b.family, b.family_py) if part == "surname" else (b.given, b.given_py)
    if ah and bh and ah == bh:
        return ah, None
    if ah:
        return None, apy
    if bh:
        return None, bpy
    return None, apy


def _name_frequency(a: Person, b: Person, part: str, freq: NameFrequencies) -> float | None:
    hanzi, pinyin = _agreeing_name(a, b, part)
    if part == "surname":
        return freq.surname_of(hanzi, pinyin)
    return freq.given_of(hanzi, pinyin)


def name_evidence(
    a: Person, b: Person, levels: Sequence[int | None], rules: Rules
) -> tuple[dict[str, float], bool]:
    """The term-frequency-adjusted weights of agreeing names, and whether the pair is a
    possible namesake pair (see :class:`Namesake`).

    A name field marked ``frequency`` whose level is ``same`` weighs ``log2(m_same / f)``,
    ``f`` the share of the population holding the name (never below the rules'
    ``frequency_floor``). A name the table does not know keeps the field's own weight.
    """
    freq = rules.frequencies
    if freq is None:
        return {}, False
    adjusted: dict[str, float] = {}
    shares: dict[str, float | None] = {}
    for i, rule in enumerate(rules.fields):
        if rule.frequency is None or levels[i] not in (_HOMOPHONE, _SAME):
            continue
        if levels[i] == _HOMOPHONE:  # sounds the same: a namesake by ear, no frequency
            shares.setdefault(rule.frequency, None)
            continue
        f = _name_frequency(a, b, rule.frequency, freq)
        shares[rule.frequency] = f
        if f is not None and rule.m is not None:
            adjusted[rule.name] = math.log2(rule.m[_SAME] / max(f, rules.frequency_floor))
    namesake = False
    rule_ns = rules.namesake
    surname, given = shares.get("surname"), shares.get("given")
    chinese = bool(a.family or a.given or b.family or b.given) or surname is not None
    full = surname * given if surname is not None and given is not None else None
    if (
        rule_ns is not None
        and "surname" in shares
        and "given" in shares
        and chinese
        and (full is None or full >= rule_ns.min_frequency)
    ):
        agreeing = [
            f.name
            for i, f in enumerate(rules.fields)
            if f.name in rule_ns.personal and levels[i] == len(f.levels) - 1
        ]
        namesake = not agreeing
    return adjusted, namesake


def score(a: Person, b: Person, rules: Rules) -> Score:
    """Fellegi–Sunter score of a pair: log2(m/u) per field summed (agreeing names weighed by
    their frequency), with the outcome."""
    levels = compare(a, b, rules)
    adjusted, namesake = name_evidence(a, b, levels, rules)
    return score_levels(
        levels,
        rules,
        card_conflict=a.card_conflict or b.card_conflict,
        adjusted=adjusted,
        namesake=namesake,
    )


# ----------------------------------------------------------------------------- decision


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with an incoming record.

    ``deterministic`` and ``auto`` link to ``master_id``; ``review`` names the best
    candidate for the human review queue but links nothing; ``new`` creates a person.
    ``evidence`` holds field weights, levels, guards and counts — never a value.
    """

    kind: DecisionKind
    master_id: str | None
    score: float | None
    evidence: dict[str, Any] = field(default_factory=dict)


def _verified_keys(p: Person) -> set[tuple[str, str]]:
    return {
        i.key()
        for i in p.idents
        if i.verified and (i.kind == "document" or (i.kind == "id_card" and not p.card_conflict))
    }


def _card(p: Person) -> str | None:
    """The record's own verified 身份证: not one that disagrees with the record's birth date
    or sex (often a parent's card on a child's record), which decides nothing on its own."""
    if p.card_conflict:
        return None
    return next((i.value for i in p.idents if i.kind == "id_card" and i.verified), None)


def identity_rule(a: Person, b: Person) -> Literal["link", "veto"] | None:
    """What :func:`decide` settles for a pair before any score: ``link`` when they share a
    verified 身份证 or verified document (type + number), ``veto`` when each has its own
    verified 身份证 and they differ, None otherwise (a card that disagrees with its record
    settles nothing)."""
    if _verified_keys(a) & _verified_keys(b):
        return "link"
    ca, cb = _card(a), _card(b)
    if ca is not None and cb is not None and ca != cb:
        return "veto"
    return None


def _namespace_label(ns: str) -> str:
    return "id_card" if "#" not in ns else "document:" + ns.rsplit("#", 1)[1]


def decide(incoming: Person, candidates: Sequence[tuple[str, Person]], rules: Rules) -> Decision:
    """Link ``incoming`` to one of ``candidates`` (``(master_id, person)``), review, or new.

    1. A shared verified 身份证 (or verified document type + number) links at once — not a
       身份证 that disagrees with its record's birth date or sex (``card_conflict``): that
       may be a parent's card on a child's record, and only counts as scored evidence.
    2. Never linked, not even reviewed: two different verified (and agreeing) 身份证; a
       guard with outcome ``none`` (e.g. sex and birth date both differ).
    3. Otherwise the best Fellegi–Sunter score decides; two candidates (different master
       ids) both above the auto-link threshold only go to review.
    """
    mine = _verified_keys(incoming)
    my_card = _card(incoming)
    evidence: dict[str, Any] = {"rules_version": rules.version, "candidates": len(candidates)}
    if mine:
        hits = [(mid, sorted(mine & _verified_keys(p))) for mid, p in candidates]
        linked = [(mid, keys) for mid, keys in hits if keys]
        if linked:
            masters = {mid for mid, _ in linked}
            evidence |= {
                "via": _namespace_label(linked[0][1][0][0]),
                "ambiguous": len(masters) > 1,
            }
            return Decision("deterministic", linked[0][0], None, evidence)
    scored: list[tuple[float, str, Score]] = []
    vetoed = 0
    for mid, cand in candidates:
        other_card = _card(cand)
        if my_card is not None and other_card is not None and other_card != my_card:
            vetoed += 1
            continue
        s = score(incoming, cand, rules)
        if s.guard is not None and s.outcome == "none":
            vetoed += 1
        scored.append((s.total, mid, s))
    evidence["vetoed"] = vetoed
    if not scored:
        return Decision("new", None, None, evidence)
    scored.sort(key=lambda t: (-_OUTCOME_RANK[t[2].outcome], -t[0]))
    total, mid, best = scored[0]
    evidence |= {
        "parts": {k: round(v, 2) for k, v in best.parts.items()},
        "probability": round(best.probability, 6),
    }
    if best.guard:
        evidence["guard"] = best.guard
    if best.outcome == "auto":
        rivals = [t for t in scored[1:] if t[2].outcome == "auto" and t[1] != mid]
        if rivals:
            evidence["ambiguous"] = True
            return Decision("review", mid, total, evidence)
        return Decision("auto", mid, total, evidence)
    if best.outcome == "review":
        return Decision("review", mid, total, evidence)
    return Decision("new", None, total, evidence)


# ----------------------------------------------------------------------------------- EM


@dataclass(frozen=True, slots=True)
class EmFit:
    """What :func:`fit_em` estimated: the refitted rules and how the fit went.

    ``expected_matches`` is the sum of the match posteriors over the fitted pairs.
    """

    rules: Rules
    prior: float
    expected_matches: float
    iterations: int
    converged: bool


def _matrix(vectors: Iterable[Sequence[int | None]], width: int) -> np.ndarray[Any, Any]:
    rows = [[-1 if v is None else int(v) for v in vec] for vec in vectors]
    return np.asarray(rows, dtype=np.int64).reshape(len(rows), width)


def _onehot(data: np.ndarray[Any, Any], col: int, n_levels: int) -> np.ndarray[Any, Any]:
    return np.stack([(data[:, col] == lv).astype(float) for lv in range(n_levels)], axis=1)


def _probabilistic(rules: Rules) -> list[int]:
    return [i for i, f in enumerate(rules.fields) if f.m is not None and f.u is not None]


def _replace(
    rules: Rules,
    m: Mapping[int, np.ndarray[Any, Any]],
    u: Mapping[int, np.ndarray[Any, Any]],
    prior: float,
) -> Rules:
    fields = []
    for i, f in enumerate(rules.fields):
        data = f.model_dump()
        for label, probs in (("m", m), ("u", u)):
            if i in probs:
                p = np.clip(probs[i], _FLOOR, 1.0 - _FLOOR)
                data[label] = tuple(float(x) for x in p / p.sum())
        fields.append(data)
    return Rules.model_validate(rules.model_dump() | {"fields": fields, "prior": prior})


def fit_em(
    vectors: Iterable[Sequence[int | None]],
    rules: Rules,
    *,
    total_pairs: int | None = None,
    random_vectors: Iterable[Sequence[int | None]] | None = None,
    max_iter: int = 500,
    tol: float = 1e-6,
    pseudo_count: float = 1.0,
) -> EmFit:
    """Re-estimate ``m``, ``u`` and the prior from unlabelled comparison vectors (EM).

    The Fellegi–Sunter two-class mixture under conditional independence; a missing level
    is left out of the likelihood. The rules' current values start the iteration, and
    their ``m``/``u`` act as a Dirichlet prior worth ``pseudo_count`` pairs.

    * ``total_pairs=None``: ``vectors`` are all the pairs; the prior is the share of
      matches among them, and ``u`` is fitted on them too (the textbook EM).
    * ``total_pairs=N``: ``vectors`` are the blocked candidate pairs out of ``N`` possible
      pairs; pairs outside the blocks count as non-matches, so the prior is the expected
      number of matches over ``N`` — a population prior. Then pass ``random_vectors``,
      pairs drawn at random from all ``N``: ``u`` is fitted on them (nearly all are two
      different people; each is weighted by its posterior of not being a match, and each
      level gets half a pair, so a level never seen among ``n`` pairs gets ``u ≈ 0.5/n``).
      Without ``random_vectors`` ``u`` stays as given.

    Fields given as fixed ``weights`` are not refitted.
    """
    width = len(rules.fields)
    data = _matrix(vectors, width)
    rand = _matrix(random_vectors, width) if random_vectors is not None else None
    if len(data) == 0:
        return EmFit(rules, rules.prior, 0.0, 0, True)
    fitted = _probabilistic(rules)
    m0 = {i: np.asarray(rules.fields[i].m, dtype=float) for i in fitted}
    u0 = {i: np.asarray(rules.fields[i].u, dtype=float) for i in fitted}
    m, u = dict(m0), dict(u0)
    n_levels = {i: len(rules.fields[i].levels) for i in fitted}
    onehot = {i: _onehot(data, i, n_levels[i]) for i in fitted}
    r_onehot = {i: _onehot(rand, i, n_levels[i]) for i in fitted} if rand is not None else {}
    # a field with no value in the data keeps its m and u (there is nothing to learn)
    observed = {i for i in fitted if onehot[i].any() and (rand is None or r_onehot[i].any())}
    population = total_pairs is not None
    denominator = float(total_pairs) if total_pairs is not None else float(len(data))
    fit_u = not population or rand is not None

    def posterior(hot: Mapping[int, np.ndarray[Any, Any]], n: int) -> np.ndarray[Any, Any]:
        log_m = np.full(n, math.log(lam))
        log_u = np.full(n, math.log1p(-lam))
        for i in fitted:
            log_m += hot[i] @ np.log(np.maximum(m[i], _FLOOR))
            log_u += hot[i] @ np.log(np.maximum(u[i], _FLOOR))
        result: np.ndarray[Any, Any] = 1.0 / (1.0 + np.exp(np.clip(log_u - log_m, -700, 700)))
        return result

    lam = rules.prior
    g = np.zeros(len(data))
    iterations, converged = 0, False
    for iterations in range(1, max_iter + 1):  # noqa: B007 - reported after the loop
        g = posterior(onehot, len(data))
        not_g = 1.0 - posterior(r_onehot, len(rand)) if rand is not None else 1.0 - g
        new_lam = float(np.clip(g.sum() / denominator, 1e-12, 1.0 - 1e-9))
        delta = abs(math.log(new_lam / lam))
        for i in fitted:
            if i not in observed:
                continue
            cm = g @ onehot[i] + pseudo_count * m0[i]
            new_m = cm / cm.sum()
            delta = max(delta, float(np.abs(new_m - m[i]).max()))
            m[i] = new_m
            if fit_u:
                if rand is not None:
                    cu = not_g @ r_onehot[i] + 0.5
                else:
                    cu = not_g @ onehot[i] + pseudo_count * u0[i]
                new_u = cu / cu.sum()
                delta = max(delta, float(np.abs(np.log(new_u / u[i])).max()))
                u[i] = new_u
        lam = new_lam
        if delta < tol:
            converged = True
            break
    m = {i: p for i, p in m.items() if i in observed}
    u = {i: p for i, p in u.items() if i in observed and fit_u}
    refit = _replace(rules, m, u, lam)
    return EmFit(refit, lam, float(g.sum()), iterations, converged)


def level_names(levels: Sequence[int | None], rules: Rules) -> dict[str, str]:
    """A comparison vector with level names, for evidence and reports."""
    return {
        f.name: f.levels[lv] for f, lv in zip(rules.fields, levels, strict=True) if lv is not None
    }


def describe_weights(rules: Rules) -> list[dict[str, Any]]:
    """Each field's levels with their weights (bits), for documentation and reports."""
    return [
        {"field": f.name, "levels": {lv: round(f.weight(i), 2) for i, lv in enumerate(f.levels)}}
        for f in rules.fields
    ]


__all__ = [
    "DEFAULT_RULES_PATH",
    "LEVELS",
    "MISSING",
    "Decision",
    "EmFit",
    "FieldRule",
    "Guard",
    "Namesake",
    "Rules",
    "Score",
    "blocking_keys",
    "compare",
    "compare_field",
    "decide",
    "describe_weights",
    "fit_em",
    "identity_rule",
    "level_names",
    "load_rules",
    "name_evidence",
    "score",
    "score_levels",
]
