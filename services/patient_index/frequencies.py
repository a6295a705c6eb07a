"""How common a Chinese surname or given name is (pure; the table is read once per path).

The table (``config/matching/data/name-frequencies.tsv``, built by
``python -m mrhub_tools.namefreq`` from the NCIIC 2008 statistics; sources in
``config/matching/data/SOURCES.md``) gives people per million by surname, by the 1,000 most
common given names, by the pinyin of both, and by given-name character.

A frequency here is the share of the population holding the value: the chance that a person
drawn at random agrees with it. That is the ``u`` of an exact name agreement adjusted for
the name's frequency (term-frequency adjustment): 王 = 王 is expected of 7.5 % of non-matching
pairs, 欧阳 = 欧阳 of 0.005 %.

A given name outside the top 1,000 is estimated from its characters as if they were drawn
independently: ``P(x) = s1 · c(x)`` for one character, ``P(xy) = (1 - s1) · c(x) · c(y)`` for
two, where ``c`` is a character's share of all given-name characters (an unlisted character
counts as the rarest listed one) and ``s1`` the share of one-character given names (from the
mean length: ``2 - mean``). The estimate is capped at the
1,000th name's frequency (a name outside the list is rarer than every name in it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from services.common.errors import ConfigError

#: The rarest frequency an estimate may give (one in a hundred million): beyond it the
#: estimate says more than the data can.
FLOOR = 1e-8


@dataclass(frozen=True, slots=True)
class NameFrequencies:
    """Frequencies (shares of the population, not ppm) read from one table."""

    surname: dict[str, float] = field(default_factory=dict)
    surname_py: dict[str, float] = field(default_factory=dict)
    given: dict[str, float] = field(default_factory=dict)
    given_py: dict[str, float] = field(default_factory=dict)
    char: dict[str, float] = field(default_factory=dict)
    chars_per_given_name: float = 1.75
    top_name_floor: float = 1e-4
    #: The share of a character the table does not list: that of the rarest listed one
    #: (an unlisted character is at most as common).
    rarest_char: float = FLOOR

    def surname_of(self, hanzi: str | None, pinyin: str | None) -> float | None:
        """The share holding surname ``hanzi`` (or, without hanzi, its ``pinyin``)."""
        if hanzi:
            return self.surname.get(hanzi)
        return self.surname_py.get(pinyin) if pinyin else None

    def given_of(self, hanzi: str | None, pinyin: str | None) -> float | None:
        """The share holding given name ``hanzi`` (listed or estimated from its characters),
        or without hanzi its ``pinyin`` if a listed name reads so."""
        if hanzi:
            return self._given_hanzi(hanzi)
        return self.given_py.get(pinyin) if pinyin else None

    def _given_hanzi(self, hanzi: str) -> float | None:
        listed = self.given.get(hanzi)
        if listed is not None:
            return listed
        if not 1 <= len(hanzi) <= 2:
            return None  # a minority name or a three-character given name: no estimate
        shares = [self.char.get(c, self.rarest_char) for c in hanzi]
        total = self.chars_per_given_name
        one = min(max(2.0 - total, 0.0), 1.0)
        estimate = one if len(hanzi) == 1 else 1.0 - one
        for s in shares:
            estimate *= s / total
        return max(min(estimate, self.top_name_floor), FLOOR)


@lru_cache(maxsize=8)
def load_frequencies(path: Path) -> NameFrequencies:
    """Read a table written by ``mrhub_tools.namefreq``; ``ConfigError`` names a bad line."""
    tables: dict[str, dict[str, float]] = {
        k: {} for k in ("surname", "surname_py", "given", "given_py", "char", "meta")
    }
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"name frequencies {path}: {exc.strerror or exc}") from exc
    for n, line in enumerate(text.splitlines(), 1):
        if not line or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) != 3 or parts[0] not in tables:
            raise ConfigError(f"name frequencies {path}:{n}: expected kind<TAB>key<TAB>ppm")
        try:
            value = float(parts[2])
        except ValueError:
            msg = f"name frequencies {path}:{n}: {parts[2]!r} is not a number"
            raise ConfigError(msg) from None
        tables[parts[0]][parts[1]] = value
    meta = tables.pop("meta")
    share = {k: {key: v / 1e6 for key, v in t.items()} for k, t in tables.items()}
    return NameFrequencies(
        **share,
        rarest_char=min(share["char"].values(), default=FLOOR),
        chars_per_given_name=meta.get("chars_per_given_name", 1.75),
        top_name_floor=meta.get("top_name_floor", 100.0) / 1e6,
    )


__all__ = ["FLOOR", "NameFrequencies", "load_frequencies"]
