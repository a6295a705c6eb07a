"""Build ``config/matching/data/name-frequencies.tsv`` from the NCIIC 2008 name statistics.

The source is the data of the R package *ChineseNames* (Bao, 2023; CRAN), which publishes
nationwide counts from the National Citizen Identity Information Center (NCIIC) for the
1.18 billion Han Chinese born 1930–2008 and alive in 2008. Three of its CSV files are read
(``data-csv/`` in https://github.com/psychbruce/ChineseNames):

* ``familyname.csv`` — 1,806 surnames with their ``ppm.1930_2008``;
* ``top1000name.prov.csv`` — the 1,000 most common given names with ``n.male`` and
  ``n.female``;
* ``givenname.csv`` — 2,614 given-name characters with ``name.ppm`` (people per million
  whose given name contains the character).

The table written has one row per ``kind``, ``key``, ``ppm`` (people per million):

``surname`` (hanzi), ``surname_py`` (toneless pinyin, summed over the surnames that read
so), ``given`` (a top-1000 given name), ``given_py`` (pinyin, summed over the top-1000 names
that read so), ``char`` (a given-name character's ``name.ppm``) and ``meta`` rows: the
population, the mean number of characters in a given name (the ``char`` ppm summed over
characters / 10^6) and the frequency of the 1,000th name (the ceiling for an estimated one).

Run ``python -m mrhub_tools.namefreq SOURCE_DIR [OUT]`` with the three CSV files in
SOURCE_DIR. The numbers are facts about the population; the source's terms (GPL-3 for the
package, CC BY-NC-SA for its data) are in ``config/matching/data/SOURCES.md``.
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path
from typing import Final

from services.patient_index.normalize import given_pinyin, surname_pinyin

OUT: Final = Path(__file__).resolve().parents[1] / "config/matching/data/name-frequencies.tsv"


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8-sig", newline="") as fh:
        return list(csv.DictReader(fh))


def build(source: Path) -> list[tuple[str, str, float]]:
    """The table's rows, sorted by kind then key."""
    out: list[tuple[str, str, float]] = []
    surname_py: dict[str, float] = defaultdict(float)
    for r in _rows(source / "familyname.csv"):
        ppm = float(r["ppm.1930_2008"])
        out.append(("surname", r["surname"], ppm))
        surname_py[surname_pinyin(r["surname"])] += ppm
    out += [("surname_py", k, v) for k, v in surname_py.items()]

    chars = _rows(source / "givenname.csv")
    population = 0.0
    for r in _rows(source / "familyname.csv"):
        population += float(r["n.1930_2008"])
    given_py: dict[str, float] = defaultdict(float)
    top = _rows(source / "top1000name.prov.csv")
    floor = float("inf")
    for r in top:
        ppm = (int(r["n.male"]) + int(r["n.female"])) / population * 1e6
        floor = min(floor, ppm)
        out.append(("given", r["name"], ppm))
        given_py[given_pinyin(r["name"])] += ppm
    out += [("given_py", k, v) for k, v in given_py.items()]
    char_total = 0.0
    for r in chars:
        out.append(("char", r["character"], float(r["name.ppm"])))
        char_total += float(r["name.ppm"])
    out += [
        ("meta", "population", population),
        ("meta", "chars_per_given_name", char_total / 1e6),
        ("meta", "top_name_floor", floor),
    ]
    return sorted(out, key=lambda t: (t[0], t[1]))


def write(rows: list[tuple[str, str, float]], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8", newline="") as fh:
        fh.write("# kind\tkey\tppm — built by `python -m mrhub_tools.namefreq`; see SOURCES.md\n")
        for kind, key, ppm in rows:
            fh.write(f"{kind}\t{key}\t{ppm:.6g}\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", type=Path, help="directory with the ChineseNames CSV files")
    ap.add_argument("out", type=Path, nargs="?", default=OUT)
    args = ap.parse_args(argv)
    rows = build(args.source)
    write(rows, args.out)
    print(f"{len(rows)} rows → {args.out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
