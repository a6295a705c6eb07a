"""Counts of a generated data set: persons, records, true pairs, namesakes, twins, errors."""

from __future__ import annotations

from collections import Counter
from math import comb

from .generate import Draw, Person


def true_name(p: Person) -> str:
    return p.surname + p.given


def namesake_groups(persons: list[Person]) -> list[list[Person]]:
    """Groups of two or more different persons with one name, sex, birth date and district
    (injected or by chance)."""
    groups: dict[tuple[str, str, object, int], list[Person]] = {}
    for p in persons:
        groups.setdefault((true_name(p), p.sex, p.birth, p.district), []).append(p)
    return [g for g in groups.values() if len(g) > 1]


def stats(draw: Draw) -> dict[str, object]:
    records_of = Counter(int(str(r[11])) for r in draw.rows)
    persons = [p for p in draw.persons if p.pid in records_of]
    by_pid = {p.pid: p for p in persons}
    errors: Counter[str] = Counter()
    for r in draw.rows:
        errors.update(e for e in str(r[12]).split(";") if e)
    namesake_person_pairs = 0
    namesake_record_pairs = 0
    for g in namesake_groups(persons):
        namesake_person_pairs += comb(len(g), 2)
        ks = [records_of[p.pid] for p in g]
        namesake_record_pairs += (sum(ks) ** 2 - sum(k * k for k in ks)) // 2
    twin_pairs = 0
    twin_record_pairs = 0
    for p in persons:
        if p.twin_of is not None and p.twin_of in by_pid:
            twin_pairs += 1
            twin_record_pairs += records_of[p.pid] * records_of[p.twin_of]
    given_lengths = Counter(len(p.given) for p in persons if p.minority is None)
    han = sum(given_lengths.values())
    full_names = Counter(true_name(p) for p in persons)
    return {
        "records": len(draw.rows),
        "persons": len(persons),
        "true_pairs": sum(comb(k, 2) for k in records_of.values()),
        "namesakes_injected": sum(1 for p in persons if p.kind == "namesake"),
        "namesake_person_pairs": namesake_person_pairs,
        "namesake_record_pairs": namesake_record_pairs,
        "twin_pairs": twin_pairs,
        "twin_record_pairs": twin_record_pairs,
        "one_char_given_share": round(given_lengths[1] / han, 4) if han else 0.0,
        "minority_persons": sum(1 for p in persons if p.minority is not None),
        "top_full_names": full_names.most_common(10),
        "errors": dict(sorted(errors.items(), key=lambda kv: -kv[1])),
    }
