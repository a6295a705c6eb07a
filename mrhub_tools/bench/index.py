"""``mrhub bench index``: canonical records per second through the running patient index, at
10 thousand, 100 thousand and 1 million known persons.

For each population ``N`` (``--populations``, smallest first), on a fresh Kafka broker:

1. **Seed** ``N`` known persons *as the service's own state*, through the patient index's
   seeding API (:mod:`services.patient_index.seed`, docs/patient-index.md "Seeding"): it
   makes, with the service's own functions and codec, exactly the ``identities`` and
   ``blocks`` changelog entries the service itself would have written after one visit of
   each person (a ``Patient`` with a verified 身份证 and a hospital 门诊号); the bench
   creates those changelog topics and produces each entry to ``partition_for(key,
   partitions)``, the partition the service looks it up in. The tables that follow
   *records* rather than persons start empty: every measured record is new to the index.
2. **Recover.** Start the service (``python -m services.cli serve patient_index``, as
   ``mrhub up`` and the tests do) with a fresh state directory, and time it until
   ``GET /readyz`` answers 200: faust has read the changelogs back into RocksDB.
3. **Warm up** with a few visits (not measured), then **measure**: produce, as the gateway
   publishes them onto ``mrhub.ingest.resource-accepted.v1`` (same envelope, same key), the
   resources of ``visits`` lab visits — a transaction bundle's worth each: the ``Patient``,
   the 8 results of one panel and their ``DiagnosticReport`` — half of the visits by known
   persons sampled from the ``N`` seeded ones (same 身份证, 门诊号 and hospital), half by new
   persons. The clock runs from the first message produced until the last of the visits'
   canonical records (9 a visit) can be read with a ``read_committed`` consumer on
   ``mrhub.results.result-indexed.v1``. This is done in ``rounds`` rounds of fresh visitors;
   the figures — records/s, µs per record (wall) and the service's CPU µs per record — are
   the median of the rounds, each also as a ratio to the smallest population's in the same
   run: flat scaling reads as ratios near 1.
4. **Check** on the service's ``/metrics``: the identity decisions of the measured load must
   be ``new`` exactly once per new person and ``deterministic`` for every other message (a
   known person whose seeded entry were not found would count as ``new``), and nothing may
   be dead-lettered.

Everything it starts (one broker per population, the service) is stopped in ``finally``
blocks, on Ctrl-C too. ``MRHUB_KAFKA__BOOTSTRAP_SERVERS`` is not used: seeding writes a
million made-up persons into the patient index's own state topics, which only a throw-away
broker may hold. Pure parts (persons, table entries, partitions, envelopes, report) are
unit-tested; timing is not.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from types import FrameType
from typing import Any, Final

import httpx

import services
from mrhub_tools.bench._common import clock_ticks, machine_busy_s, start_service
from mrhub_tools.bench.ingest import (
    ID_CARD_REGIONS,
    PANELS,
    LabTest,
    Panel,
    gb11643,
    lab_observation,
    lab_report,
)
from services.common import harness
from services.common.envelope import Envelope
from services.common.errors import MrhubError
from services.common.fhir import INSTITUTION_SYSTEM
from services.common.identifiers import (
    DOCUMENT_TYPE_SYSTEM,
    ID_CARD_SYSTEM,
    OUTPATIENT_NO_SYSTEM,
    keyed_hash,
)
from services.common.partitioner import partition_for
from services.common.settings import Settings
from services.common.topics import (
    ALL_TOPICS,
    RESOURCE_ACCEPTED,
    RESULT_INDEXED,
)
from services.ingest.validation import business_id
from services.ingest.views import EVENT_TYPE, patient_identifiers
from services.patient_index.routing import route_key
from services.patient_index.seed import SeedStats, changelog_specs, seed_messages

SEED: Final = 20260312
DEFAULT_POPULATIONS: Final = (10_000, 100_000, 1_000_000)
VISITS: Final = 500  # per measured round
ROUNDS: Final = 3  # measured rounds per population (the report gives their median)
WARMUP_VISITS: Final = 40
KNOWN_SHARE: Final = 0.5
INSTITUTIONS: Final = 3  # the registry's first institutions post the visits
HOST: Final = "127.0.0.1"
#: The faust app id of the patient index (``services.common.faust_app.make_app``).
#: No new record for this long while waiting for the load's records: the run failed.
STALL_S: Final = 90.0
#: "other" CPU (% of one core) above which a round is reported as disturbed.
DISTURBED_PCT: Final = 20.0

CST = timezone(timedelta(hours=8))
_BORN_FROM: Final = date(1940, 1, 1)
_BORN_DAYS: Final = (date(2015, 12, 31) - _BORN_FROM).days + 1
_SURNAMES: Final = "王李张刘陈杨赵黄周吴徐孙胡朱高林何郭马罗梁宋郑谢韩唐冯于董萧程曹袁邓许"
_GIVEN: Final = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玉兰建国志红文辉宇浩然欣怡子轩"


def parse_populations(text: str) -> list[int]:
    """``"10000,100000,1e6"``-style text as distinct positive ints, smallest first."""
    out: set[int] = set()
    for part in text.split(","):
        part = part.strip().replace("_", "")
        if not part:
            continue
        try:
            value = int(float(part)) if "e" in part.lower() else int(part)
        except ValueError as exc:
            raise ValueError(f"not a number of persons: {part!r}") from exc
        if value < 1:
            raise ValueError(f"a population must be at least 1, not {value}")
        out.add(value)
    if not out:
        raise ValueError("no population given")
    return sorted(out)


# ------------------------------------------------------------------------------- persons


@dataclass(frozen=True, slots=True)
class Person:
    """A made-up patient as one hospital registered them."""

    index: int
    card: str  # 18-character 身份证, GB 11643-valid
    mz: str  # the hospital's 门诊号
    institution: str
    family: str
    given: str
    sex: str
    born: date
    phone: str


class PersonGen:
    """A deterministic stream of distinct persons (no two share a 身份证 or a 门诊号).

    Birth dates are uniform over 1940–2015, so blocks (one per birth date, about 27,800)
    hold ``N / 27,800`` persons on average. A card's sequence digits count per birth date and
    region, which makes every card distinct; their parity is the sex, as GB 11643 says.
    """

    def __init__(self, seed: int, institutions: Sequence[str]) -> None:
        if not institutions:
            raise ValueError("at least one institution is needed")
        self.rng = random.Random(seed)  # noqa: S311 - test data, not security
        self.institutions = tuple(institutions)
        self.count = 0
        self._seq: dict[tuple[int, str], int] = {}

    def __iter__(self) -> Iterator[Person]:
        return self

    def __next__(self) -> Person:
        rng = self.rng
        day = rng.randrange(_BORN_DAYS)
        region = rng.choice(ID_CARD_REGIONS)
        seq = self._seq.get((day, region), 0)
        if seq > 999:  # pragma: no cover - needs ~140 million persons
            raise OverflowError("out of 身份证 sequence numbers")
        self._seq[(day, region)] = seq + 1
        born = _BORN_FROM + timedelta(days=day)
        index = self.count
        self.count += 1
        given = "".join(rng.sample(_GIVEN, rng.choice((1, 2, 2))))
        return Person(
            index=index,
            card=gb11643(f"{region}{born:%Y%m%d}{seq:03d}"),
            mz=f"MZ{index:09d}",
            institution=rng.choice(self.institutions),
            family=rng.choice(_SURNAMES),
            given=given,
            sex="male" if seq % 2 else "female",
            born=born,
            phone=f"1{rng.choice('3456789')}{rng.randrange(10**9):09d}",
        )


def _org(institution: str) -> dict[str, Any]:
    return {"identifier": {"system": INSTITUTION_SYSTEM, "value": institution}}


def patient_resource(p: Person) -> dict[str, Any]:
    """The FHIR ``Patient`` the person's hospital posts."""
    return {
        "resourceType": "Patient",
        "identifier": [
            {
                "use": "official",
                "type": {
                    "coding": [
                        {"system": DOCUMENT_TYPE_SYSTEM, "code": "01", "display": "居民身份证"}
                    ]
                },
                "system": ID_CARD_SYSTEM,
                "value": p.card,
            },
            {
                "use": "usual",
                "type": {"text": "门诊号"},
                "system": OUTPATIENT_NO_SYSTEM,
                "value": p.mz,
                "assigner": _org(p.institution),
            },
        ],
        "name": [
            {"use": "official", "text": p.family + p.given, "family": p.family, "given": [p.given]}
        ],
        "telecom": [{"system": "phone", "value": p.phone, "use": "mobile"}],
        "gender": p.sex,
        "birthDate": p.born.isoformat(),
    }


# -------------------------------------------------------------------------------- load


@dataclass(frozen=True)
class Visit:
    """One lab visit as a transaction bundle's entries: ``(fullUrl, resource)``."""

    person: Person
    known: bool
    trace_id: str
    bundle_id: str
    entries: tuple[tuple[str, dict[str, Any]], ...]

    @property
    def records(self) -> int:
        """Canonical records it yields (its clinical resources)."""
        return sum(1 for _, r in self.entries if r["resourceType"] != "Patient")


def _quantize(test: LabTest, value: float) -> Decimal:
    return Decimal(f"{value:.{test.places}f}")


def _observation(
    rng: random.Random,
    test: LabTest,
    subject: dict[str, Any],
    report_no: str,
    line: int,
    when: tuple[str, str],
    institution: str,
) -> dict[str, Any]:
    mid = float(test.low + test.high) / 2
    spread = float(test.high - test.low) / 3.2
    value = max(_quantize(test, rng.gauss(mid, spread)), _quantize(test, 0.0))
    return lab_observation(test, value, subject, report_no, line, when, [_org(institution)])


def make_visit(rng: random.Random, p: Person, *, known: bool, number: int) -> Visit:
    """The person's Patient, the results of one panel and their DiagnosticReport, posted by
    the person's hospital; ``number`` makes the report number (and so the records) unique."""
    panel: Panel = rng.choice(PANELS)
    taken = datetime(2026, 11, 2, 7, 30, tzinfo=CST) + timedelta(
        days=rng.randrange(14), minutes=rng.randrange(9 * 60)
    )
    issued = taken + timedelta(minutes=rng.randrange(40, 180), seconds=rng.randrange(60))
    when = (taken.isoformat(), issued.isoformat())
    report_no = f"LR{taken:%Y%m%d}-{number:07d}"

    def url() -> str:
        return f"urn:uuid:{uuid.UUID(int=rng.getrandbits(128), version=4)}"

    patient_url = url()
    subject = {"reference": patient_url}
    entries: list[tuple[str, dict[str, Any]]] = [(patient_url, patient_resource(p))]
    results = []
    for line, test in enumerate(panel.tests, start=1):
        obs_url = url()
        entries.append(
            (obs_url, _observation(rng, test, subject, report_no, line, when, p.institution))
        )
        results.append({"reference": obs_url})
    report = lab_report(panel, subject, report_no, when, [_org(p.institution)], results)
    entries.append((url(), report))
    trace_id = f"{rng.getrandbits(128):032x}"
    return Visit(p, known, trace_id, f"b-{number:07d}", tuple(entries))


def bundle_of(visit: Visit) -> dict[str, Any]:
    """The visit as the transaction Bundle a hospital would ``POST /fhir``."""
    return {
        "resourceType": "Bundle",
        "id": visit.bundle_id,
        "type": "transaction",
        "entry": [
            {"fullUrl": u, "resource": r, "request": {"method": "POST", "url": r["resourceType"]}}
            for u, r in visit.entries
        ],
    }


def gateway_messages(
    visit: Visit, hmac_key: bytes, received_at: datetime
) -> list[tuple[bytes, bytes, bytes | None]]:
    """``(key, value, route)`` of each entry as the gateway publishes an accepted transaction
    bundle on ``mrhub.ingest.resource-accepted.v1`` (``Gateway.message`` in
    services/ingest/views): ``route`` is the keyed hash whose partition the gateway puts the
    message on."""
    inst = visit.person.institution
    patients = {u: r for u, r in visit.entries if r["resourceType"] == "Patient"}
    out = []
    for index, (full_url, resource) in enumerate(visit.entries):
        rtype = resource["resourceType"]
        env = Envelope(
            event_type=EVENT_TYPE,
            received_at=received_at,
            source=inst,
            trace_id=visit.trace_id,
            payload={
                "resource_type": rtype,
                "bundle_id": visit.bundle_id,
                "entry_index": index,
                "import_line": None,
                "full_url": full_url,
                "patient_identifiers": patient_identifiers(resource, patients),
                "resource": resource,
            },
        )
        bid = business_id(resource)
        digest = keyed_hash(hmac_key, *bid) if bid is not None else f"event-{env.event_id}"
        route = route_key(env.payload, inst, lambda i: keyed_hash(hmac_key, *i.key()))
        out.append((f"{inst}|{rtype}|{digest}".encode(), env.to_bytes(), route))
    return out


@dataclass
class LoadPlan:
    """Which seeded persons come back (by index) and how many new persons come."""

    warmup_known: list[int]
    measured_known: list[int]
    warmup_new: int
    measured_new: int


def plan_load(population: int, visits: int, warmup: int, known_share: float, seed: int) -> LoadPlan:
    """Known visitors sampled without repetition from the ``population`` seeded persons (a
    warm-up visitor never comes back in the measured load); the rest are new persons."""
    m_known = min(round(visits * known_share), population)
    w_known = min(round(warmup * known_share), population - m_known)
    picked = random.Random(seed + population).sample(range(population), m_known + w_known)  # noqa: S311
    return LoadPlan(
        warmup_known=sorted(picked[m_known:]),
        measured_known=sorted(picked[:m_known]),
        warmup_new=warmup - w_known,
        measured_new=visits - m_known,
    )


def make_visits(
    rng: random.Random, known: Sequence[Person], new: Sequence[Person], first_number: int
) -> list[Visit]:
    """One visit per person, known and new interleaved in random order."""
    people = [(p, True) for p in known] + [(p, False) for p in new]
    rng.shuffle(people)
    return [make_visit(rng, p, known=k, number=first_number + i) for i, (p, k) in enumerate(people)]


def split_rounds(
    known: Sequence[Person], new: Sequence[Person], rounds: int
) -> list[tuple[list[Person], list[Person]]]:
    """The measured visitors dealt into ``rounds`` rounds (sizes differ by one at most)."""
    return [(list(known[i::rounds]), list(new[i::rounds])) for i in range(rounds)]


# ------------------------------------------------------------------------- arithmetic


def metric_value(text: str, name: str, labels: Mapping[str, str] | None = None) -> float:
    """The value of one sample in Prometheus text exposition (0.0 when absent)."""
    want = dict(labels or {})
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)", line)
        if m is None or m.group(1) != name:
            continue
        got = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if got == want:
            return float(m.group(3))
    return 0.0


def run_figures(
    arrivals: Sequence[float], t_start: float, expected: int
) -> dict[str, float | int | None]:
    """Rates of one measured load from the times (``perf_counter``) its records were read.

    ``records_per_s`` and ``us_per_record`` run from ``t_start`` (the first message produced)
    to the last record read; ``first_record_s`` is how long the first took (the pipeline's
    fill: a record crosses several stages, each committing its Kafka transaction before the
    next may read);
    ``after_first_records_per_s`` counts only from the first record on.
    """
    times = sorted(arrivals)
    n = len(times)
    out: dict[str, float | int | None] = {
        "records": n,
        "records_expected": expected,
        "seconds": None,
        "records_per_s": None,
        "us_per_record": None,
        "first_record_s": None,
        "after_first_records_per_s": None,
    }
    if not n:
        return out
    elapsed = times[-1] - t_start
    out["seconds"] = round(elapsed, 3)
    out["first_record_s"] = round(times[0] - t_start, 3)
    if elapsed > 0:
        out["records_per_s"] = round(n / elapsed, 1)
        out["us_per_record"] = round(elapsed / n * 1e6, 1)
    if n > 1 and times[-1] > times[0]:
        out["after_first_records_per_s"] = round((n - 1) / (times[-1] - times[0]), 1)
    return out


_ROUND_FIGURES: Final = (
    "records_per_s",
    "us_per_record",
    "first_record_s",
    "after_first_records_per_s",
    "service_cpu_us_per_record",
    "service_main_cpu_us_per_record",
    "produce_s",
)


def _median(values: Sequence[float]) -> float | None:
    if not values:
        return None
    v = sorted(values)
    mid = len(v) // 2
    return v[mid] if len(v) % 2 else (v[mid - 1] + v[mid]) / 2


def combine_rounds(rounds: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A population's figures from its measured rounds: the median of each (and of each CPU
    share), the range of the two per-record costs, and the records read over all rounds."""
    out: dict[str, Any] = {"rounds": len(rounds)}
    for key in _ROUND_FIGURES:
        values = [r[key] for r in rounds if r.get(key) is not None]
        med = _median(values)
        out[key] = None if med is None else round(med, 3)
        if key in ("us_per_record", "service_cpu_us_per_record"):
            out[f"{key}_min"] = min(values, default=None)
            out[f"{key}_max"] = max(values, default=None)
    cpu_keys = sorted({k for r in rounds for k in (r.get("cpu_pct") or {})})
    out["cpu_pct"] = {
        k: _median([r["cpu_pct"][k] for r in rounds if k in (r.get("cpu_pct") or {})])
        for k in cpu_keys
    }
    out["records"] = sum(int(r.get("records") or 0) for r in rounds)
    out["records_expected"] = sum(int(r.get("records_expected") or 0) for r in rounds)
    return out


def combine_checks(rounds: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The checks of all rounds: counts summed, ok only when every round was."""
    out: dict[str, Any] = {}
    for key in (
        "decisions_new",
        "decisions_deterministic",
        "expected_new",
        "expected_deterministic",
        "dead_letters",
        "routed_in_place",
        "routed_forwarded",
        "master_in_place",
        "master_forwarded",
    ):
        out[key] = sum(int(r.get(key) or 0) for r in rounds)
    out["stalled"] = any(r.get("stalled") for r in rounds)
    out["ok"] = bool(rounds) and all(r.get("ok") for r in rounds)
    return out


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Per population, each per-record cost divided by the smallest population's (rows with
    a figure only), as ``ratios``: ``{"us_per_record": …, "service_cpu_us_per_record": …,
    "service_main_cpu_us_per_record": …, "base_population": …}``."""
    for key in ("us_per_record", "service_cpu_us_per_record", "service_main_cpu_us_per_record"):
        have = [r for r in rows if (r.get("measured") or {}).get(key)]
        base = min(have, key=lambda r: r["population"]) if have else None
        for r in rows:
            value = (r.get("measured") or {}).get(key)
            ratio = None
            if base is not None and value:
                ratio = round(value / base["measured"][key], 3)
            r.setdefault("ratios", {})[key] = ratio
        for r in rows:
            r["ratios"]["base_population"] = base["population"] if base is not None else None


def _fmt(value: Any, spec: str = ",.0f") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, int | float):
        return format(value, spec)
    return str(value)


def format_report(report: Mapping[str, Any]) -> str:
    """The human-readable report (``report`` is what ``--json`` prints)."""
    rows: list[Mapping[str, Any]] = report["populations"]
    load = report["load"]
    lines: list[str] = []
    add = lines.append
    add(f"mrhub bench index — {report['command']}")
    add(
        f"  {report['cpu_count']} CPU cores; one fresh Kafka {report['kafka_version']} broker per "
        f"population, started by the bench; {report['partitions']} partitions; 1 patient-index "
        "worker process"
    )
    add(
        f"  load per population: {load['warmup_visits']} warm-up visits (not measured), then "
        f"{load.get('rounds', 1)} measured rounds of {load['visits']} visits "
        f"({load['known_visits']} by known persons, {load['new_visits']} by new ones): "
        f"{_fmt(load['messages'])} messages on {RESOURCE_ACCEPTED.name} and "
        f"{_fmt(load['records'])} canonical records expected on {RESULT_INDEXED.name} per round"
    )
    add(
        f"  a visit = Patient (身份证 + 门诊号) + {_fmt((load['resources_per_visit'] or 2) - 2)} "
        f"lab Observations + their DiagnosticReport (seed {report['seed']}); known persons "
        "come back to the same hospital; figures are the median of the rounds"
    )
    add("")
    w = 20
    head = "".join(f"{_fmt(r['population']):>{w}}" for r in rows)
    add(f"{'known persons':<44}{head}")

    def row(label: str, get: Callable[[Mapping[str, Any]], Any], spec: str = ",.0f") -> None:
        cells = ""
        for r in rows:
            try:
                v = get(r)
            except (KeyError, TypeError):
                v = None
            cells += f"{_fmt(v, spec):>{w}}"
        add(f"  {label:<42}{cells}")

    def per_round(key: str) -> Callable[[Mapping[str, Any]], str]:
        return lambda r: "/".join(_fmt(x.get(key)) for x in r["rounds"])

    base = next((r["ratios"].get("base_population") for r in rows if r.get("ratios")), None)
    row("seeded identity / block entries", lambda r: _pair(r["seed"], "identities", "blocks"))
    row("seeding s", lambda r: r["seed"]["seconds"], ",.1f")
    row("recovery (start → /readyz 200) s", lambda r: r["recovery_s"], ",.1f")
    row("records/s (first message → last record)", lambda r: r["measured"]["records_per_s"])
    row("µs/record (wall)", lambda r: r["measured"]["us_per_record"])
    row("  each round", per_round("us_per_record"))
    row(f"  ratio to {_fmt(base)}", lambda r: r["ratios"]["us_per_record"], ".2f")
    row("first record after s", lambda r: r["measured"]["first_record_s"], ".2f")
    row("records/s after the first", lambda r: r["measured"]["after_first_records_per_s"])
    row("service CPU µs/record", lambda r: r["measured"]["service_cpu_us_per_record"])
    row("  each round", per_round("service_cpu_us_per_record"))
    row(f"  ratio to {_fmt(base)}", lambda r: r["ratios"]["service_cpu_us_per_record"], ".2f")
    row("  in its main thread µs/record", lambda r: r["measured"]["service_main_cpu_us_per_record"])
    row(
        f"    ratio to {_fmt(base)}",
        lambda r: r["ratios"]["service_main_cpu_us_per_record"],
        ".2f",
    )
    row(
        "CPU % service/kafka/bench/other",
        lambda r: "/".join(
            _fmt(r["measured"]["cpu_pct"].get(k), ".0f")
            for k in ("service", "kafka", "bench", "other")
        ),
    )
    row("records read / expected", lambda r: _pair(r["measured"], "records", "records_expected"))
    row(
        "decisions new / deterministic",
        lambda r: _pair(r["checks"], "decisions_new", "decisions_deterministic"),
    )
    row(
        "  expected",
        lambda r: _pair(r["checks"], "expected_new", "expected_deterministic"),
    )
    row(
        "resources resolved in place / forwarded",
        lambda r: _pair(r["checks"], "routed_in_place", "routed_forwarded"),
    )
    row(
        "records stamped by their master in place / forwarded",
        lambda r: _pair(r["checks"], "master_in_place", "master_forwarded"),
    )
    row("dead letters", lambda r: r["checks"]["dead_letters"], "d")
    row("complete and checked", lambda r: r["checks"]["ok"])
    row("patient-index source sha256", lambda r: r["service_source_sha256"])
    add("")
    for r in rows:
        if r.get("error"):
            add(f"Population {_fmt(r['population'])} failed: {r['error']}")
    for note in report.get("notes", []):
        add(f"Note: {note}")
    return "\n".join(lines)


def _pair(d: Mapping[str, Any], a: str, b: str) -> str:
    return f"{_fmt(d.get(a))}/{_fmt(d.get(b))}"


# ------------------------------------------------------------------------------- CPU


def proc_cpu_s(pid: int | None, tid: int | None = None) -> float | None:
    """User + system CPU seconds of a process, or of its thread ``tid`` (Linux /proc), None
    if unknown."""
    if pid is None:
        return None
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    try:
        with open(path, encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / clock_ticks()


def cpu_sample(service_pid: int | None, kafka_pid: int | None) -> dict[str, float | None]:
    return {
        "service": proc_cpu_s(service_pid),
        # the main thread runs the event loop (faust's agents, aiokafka, the web server); the
        # other threads are mostly RocksDB's (flushes, compactions)
        "service_main": proc_cpu_s(service_pid, service_pid),
        "kafka": proc_cpu_s(kafka_pid),
        "bench": time.process_time(),
        "machine": machine_busy_s(),
        "wall": time.perf_counter(),
    }


def cpu_percent(
    before: Mapping[str, float | None], after: Mapping[str, float | None]
) -> dict[str, float]:
    """% of one core between two samples; ``other`` is the machine minus the service, Kafka
    and the bench (``service_main``, the service's main thread, is part of ``service``)."""
    wall = (after["wall"] or 0.0) - (before["wall"] or 0.0)
    out: dict[str, float] = {}
    for key in ("service", "service_main", "kafka", "bench", "machine"):
        a, b = after.get(key), before.get(key)
        if a is not None and b is not None and wall > 0:
            out[key] = round((a - b) / wall * 100, 1)
    if all(k in out for k in ("service", "kafka", "bench", "machine")):
        mine = out["service"] + out["kafka"] + out["bench"]
        out["other"] = round(max(0.0, out["machine"] - mine), 1)
    return out


def cpu_us_per_record(
    before: Mapping[str, float | None], after: Mapping[str, float | None], key: str, records: int
) -> float | None:
    """CPU µs that ``key`` (a :func:`cpu_sample` field) spent per record between samples."""
    a, b = after.get(key), before.get(key)
    if a is None or b is None or records <= 0:
        return None
    return round((a - b) / records * 1e6, 1)


# ---------------------------------------------------------------------------- processes


class BenchError(MrhubError):
    """The bench could not run (the broker or the service did not start, or died)."""


class _Interrupted(Exception):
    pass


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


class Service:
    """One patient-index worker process (``mrhub serve patient_index``)."""

    def __init__(self, env: Mapping[str, str], port: int, log_path: Path) -> None:
        self.env = dict(env)
        self.port = port
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self, timeout_s: float) -> float:
        """Start it and wait for ``/readyz`` 200; the seconds that took."""
        started = time.perf_counter()
        self.proc = start_service(
            "patient_index",
            {**self.env, "MRHUB_PATIENT_INDEX__PORT": str(self.port)},
            self.log_path,
        )
        try:
            harness.wait_ready(
                self.proc,
                f"{self.base}/readyz",
                deadline_s=timeout_s,
                name="the patient index",
                log_path=self.log_path,
            )
        except (harness.ProcessExitedError, TimeoutError) as exc:
            raise BenchError(str(exc)) from None
        return time.perf_counter() - started

    def metrics(self) -> str:
        return httpx.get(f"{self.base}/metrics", timeout=10.0).text

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def stop(self, grace_s: float = 30.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        harness.stop(proc, grace_s=grace_s)


# ---------------------------------------------------------------------------- Kafka


def _producer(bootstrap: str, **overrides: Any) -> Any:
    from kafka import KafkaProducer

    config: dict[str, Any] = {
        "bootstrap_servers": bootstrap.split(","),
        "client_id": "mrhub-bench-index",
        "acks": "all",
        "linger_ms": 20,
        "batch_size": 1024 * 1024,
        "max_request_size": 8 * 1024 * 1024,
        "max_block_ms": 120_000,
    }
    config.update(overrides)
    return KafkaProducer(**config)


def _consumer(bootstrap: str) -> Any:
    from kafka import KafkaConsumer

    return KafkaConsumer(
        bootstrap_servers=bootstrap.split(","),
        client_id="mrhub-bench-index",
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        fetch_max_wait_ms=50,
        max_poll_records=5000,
    )


@dataclass
class Seeded:
    stats: dict[str, Any]
    known: dict[int, Person]  # the seeded persons the load brings back, by index
    gen: PersonGen  # continues with persons nobody has seen


def seed_population(
    bootstrap: str,
    population: int,
    *,
    partitions: int,
    hmac_key: bytes,
    institutions: Sequence[str],
    keep: set[int],
    seed: int,
    masters: str = "anchor",
) -> Seeded:
    """Write ``population`` persons' identity and block entries to the changelog topics, as
    :mod:`services.patient_index.seed` (the index's seeding API) makes them. ``masters``:
    ``anchor`` mints each master id on its anchor's partition, as the service does since
    issue 15's eighth session; ``legacy`` in the form minted before (an upgraded hub's
    persons), whose records then cross ``by-master``."""
    started = time.perf_counter()
    gen = PersonGen(seed, institutions)
    known: dict[int, Person] = {}
    seeded = SeedStats()

    def patients() -> Iterator[tuple[dict[str, Any], str]]:
        step = max(1, population // 10)
        for _ in range(population):
            p = next(gen)
            if p.index in keep:
                known[p.index] = p
            yield patient_resource(p), p.institution
            if (p.index + 1) % step == 0 and population >= 50_000:
                _log(f"  seeded {p.index + 1:,} of {population:,} persons")

    mint = partitions if masters == "anchor" else None
    messages = seed_messages(patients(), hmac_key, seeded, mint)
    # right after the topics are created their leaders may still be moving: aiokafka retries
    # (NotLeaderForPartition) and says so at WARNING; only errors are worth printing here
    aiokafka_log = logging.getLogger("aiokafka")
    level = aiokafka_log.level
    aiokafka_log.setLevel(logging.ERROR)
    try:
        asyncio.run(produce_to_partitions(bootstrap, messages, partitions))
    finally:
        aiokafka_log.setLevel(level)
    stats = {
        "persons": seeded.persons,
        "identities": seeded.identities,
        "blocks": seeded.blocks,
        "block_entries": seeded.block_entries,
        "largest_block": seeded.largest_block,
        "seconds": round(time.perf_counter() - started, 2),
    }
    return Seeded(stats, known, gen)


async def produce_to_partitions(
    bootstrap: str, messages: Iterable[tuple[str, bytes, bytes]], partitions: int
) -> int:
    """Produce ``(topic, key, value)`` messages, each to ``partition_for(key, partitions)``,
    in record batches of up to 1 MiB built by aiokafka (a few µs a message, against ≈ 50 µs
    for kafka-python's ``send``); acks=all. Returns how many were produced."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap.split(","),
        client_id="mrhub-bench-index-seed",
        acks="all",
        max_batch_size=1024 * 1024,
        max_request_size=8 * 1024 * 1024,
        request_timeout_ms=120_000,
    )
    await producer.start()
    try:
        open_batches: dict[tuple[str, int], Any] = {}
        pending: list[Any] = []
        count = 0

        async def submit(topic: str, partition: int, batch: Any) -> None:
            batch.close()
            pending.append(await producer.send_batch(batch, topic, partition=partition))
            if len(pending) >= 64:
                await asyncio.gather(*pending)
                pending.clear()

        for topic, key, value in messages:
            tp = (topic, partition_for(key, partitions))
            batch = open_batches.get(tp)
            if batch is None:
                batch = open_batches[tp] = producer.create_batch()
            if batch.append(key=key, value=value, timestamp=None) is None:
                await submit(*tp, batch)
                batch = open_batches[tp] = producer.create_batch()
                if batch.append(key=key, value=value, timestamp=None) is None:
                    raise BenchError(f"a {len(value):,}-byte message does not fit a batch")
            count += 1
        for (topic, partition), batch in open_batches.items():
            await submit(topic, partition, batch)
        await asyncio.gather(*pending)
        return count
    finally:
        await producer.stop()


def _end_offsets(consumer: Any, topic: str) -> dict[Any, int]:
    from kafka import TopicPartition

    deadline = time.monotonic() + 30
    parts = consumer.partitions_for_topic(topic) or set()
    while not parts and time.monotonic() < deadline:
        time.sleep(0.2)
        parts = consumer.partitions_for_topic(topic) or set()
    tps = [TopicPartition(topic, p) for p in sorted(parts)]
    return {tp: int(off) for tp, off in consumer.end_offsets(tps).items()}


@dataclass
class LoadRun:
    arrivals: list[float] = field(default_factory=list)
    t_start: float = 0.0
    produce_s: float = 0.0
    stalled: bool = False


def run_load(
    bootstrap: str,
    messages: Sequence[tuple[bytes, bytes, bytes | None]],
    trace_ids: set[str],
    expected: int,
    *,
    alive: Callable[[], bool],
    placement: str = "anchor",
) -> LoadRun:
    """Produce ``messages`` onto the accepted topic (another thread) while reading the results
    topic (read_committed) from its current end until ``expected`` records whose trace id is
    in ``trace_ids`` are read; their read times are the arrivals. ``placement``: ``anchor``
    puts each message on its route's partition, as the gateway does; ``key`` by its Kafka
    key, as the gateway did before (every record then crosses ``by-identity``)."""
    consumer = _consumer(bootstrap)
    producer = _producer(bootstrap, linger_ms=5)
    run = LoadRun()
    errors: list[BaseException] = []
    try:
        ends = _end_offsets(consumer, RESULT_INDEXED.name)
        consumer.assign(list(ends))
        for tp, off in ends.items():
            consumer.seek(tp, off)
        consumer.poll(timeout_ms=0)  # connect before the clock starts

        count = len(producer.partitions_for(RESOURCE_ACCEPTED.name))

        def produce() -> None:
            try:
                for key, value, route in messages:
                    part = None
                    if placement == "anchor" and route is not None:
                        part = partition_for(route, count)
                    producer.send(RESOURCE_ACCEPTED.name, key=key, value=value, partition=part)
                producer.flush(timeout=120)
                run.produce_s = time.perf_counter() - run.t_start
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)

        run.t_start = time.perf_counter()
        thread = threading.Thread(target=produce, name="bench-produce", daemon=True)
        thread.start()
        last_progress = time.perf_counter()
        while len(run.arrivals) < expected:
            batch = consumer.poll(timeout_ms=100)
            now = time.perf_counter()
            for records in batch.values():
                for rec in records:
                    if _trace_id(rec.value) in trace_ids:
                        run.arrivals.append(now)
                        last_progress = now
            if errors:
                raise BenchError(f"producing the load failed: {errors[0]!r}")
            if now - last_progress > STALL_S or not alive():
                run.stalled = True
                break
        thread.join(timeout=60)
        return run
    finally:
        producer.close(timeout=30)
        consumer.close()


def _trace_id(value: bytes | None) -> str:
    if not value:
        return ""
    try:
        doc = json.loads(value)
    except ValueError:
        return ""
    return str(doc.get("trace_id", "")) if isinstance(doc, dict) else ""


# ---------------------------------------------------------------------------------- main


def service_source_digest() -> str:
    """A short SHA-256 of the patient index's source (and the faust settings it runs with),
    to tell which code a population measured: the service starts anew for each one."""
    root = Path(services.__file__).resolve().parent
    h = hashlib.sha256()
    for path in [*sorted((root / "patient_index").glob("*.py")), root / "common" / "faust_app.py"]:
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def _institutions(settings: Settings) -> list[str]:
    from services.common.institutions import Registry

    path = settings.institutions_path
    if not path.exists():
        path = Path(__file__).resolve().parents[2] / "config" / "institutions.yaml"
    return list(Registry.load(path).ids[:INSTITUTIONS])


def main(args: argparse.Namespace, settings: Settings) -> int:
    """``mrhub bench index``: ``args.populations`` (comma-separated), ``args.json``;
    ``args.visits`` (per round), ``args.rounds`` and ``args.warmup_visits`` (not on the
    command line) change the load."""
    try:
        populations = parse_populations(
            str(getattr(args, "populations", None) or ",".join(map(str, DEFAULT_POPULATIONS)))
        )
    except ValueError as exc:
        _log(f"--populations: {exc}")
        return 2
    visits = int(getattr(args, "visits", VISITS))
    warmup = int(getattr(args, "warmup_visits", WARMUP_VISITS))
    rounds = int(getattr(args, "rounds", ROUNDS))
    if visits < 2 or warmup < 0 or rounds < 1:
        _log("the load needs at least 2 visits and 1 round")
        return 2
    as_json = bool(getattr(args, "json", False))
    placement = str(getattr(args, "placement", None) or "anchor")
    masters = str(getattr(args, "masters", None) or "anchor")

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise _Interrupted()

    old_term = signal.signal(signal.SIGTERM, on_term)
    try:
        report = _run(
            settings,
            populations,
            visits=visits,
            warmup=warmup,
            rounds=rounds,
            placement=placement,
            masters=masters,
        )
    except (KeyboardInterrupt, _Interrupted):
        _log("interrupted; everything the bench started is stopped")
        return 130
    finally:
        signal.signal(signal.SIGTERM, old_term)
    if as_json:
        print(json.dumps(report, ensure_ascii=False, indent=2))
    else:
        print(format_report(report))
    ok = all(r.get("checks", {}).get("ok") for r in report["populations"])
    return 0 if ok and len(report["populations"]) == len(populations) else 1


def _run(
    settings: Settings,
    populations: Sequence[int],
    *,
    visits: int,
    warmup: int,
    rounds: int,
    placement: str = "anchor",
    masters: str = "anchor",
) -> dict[str, Any]:
    if settings.kafka.bootstrap_servers:
        _log(
            "MRHUB_KAFKA__BOOTSTRAP_SERVERS is ignored: seeding writes made-up persons into the "
            "patient index's own state topics, so each population gets a throw-away broker"
        )
    tmp = Path(tempfile.mkdtemp(prefix="mrhub-bench-index-"))
    keep_tmp = False
    partitions = settings.topic_partitions
    institutions = _institutions(settings)
    hmac_secret = secrets.token_urlsafe(32)
    known_visits = round(visits * KNOWN_SHARE)
    report: dict[str, Any] = {
        "command": "mrhub bench index --populations "
        + ",".join(str(n) for n in populations)
        + ("" if placement == "anchor" else f" --placement {placement}")
        + ("" if masters == "anchor" else f" --masters {masters}"),
        "placement": placement,
        "masters": masters,
        "cpu_count": os.cpu_count() or 1,
        "kafka_version": settings.broker.kafka_version,
        "partitions": partitions,
        "seed": SEED,
        "institutions": institutions,
        "load": {
            "visits": visits,
            "known_visits": known_visits,
            "new_visits": visits - known_visits,
            "warmup_visits": warmup,
            "rounds": rounds,
            "resources_per_visit": None,
            "messages": None,
            "records": None,
        },
        "populations": [],
        "notes": [],
    }
    try:
        for n in populations:
            try:
                row = _run_population(
                    settings,
                    n,
                    tmp=tmp,
                    hmac_secret=hmac_secret,
                    institutions=institutions,
                    visits=visits,
                    warmup=warmup,
                    rounds=rounds,
                    load=report["load"],
                    placement=placement,
                    masters=masters,
                )
            except (MrhubError, TimeoutError) as exc:  # BenchError, BrokerError, Kafka
                keep_tmp = True
                _log(f"population {n:,} failed: {exc}")
                report["populations"].append(
                    {"population": n, "error": str(exc), "checks": {"ok": False}}
                )
                continue
            report["populations"].append(row)
        add_ratios(report["populations"])
        report["notes"] = report_notes(report)
        return report
    finally:
        if keep_tmp:
            _log(f"logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def _run_population(
    settings: Settings,
    n: int,
    *,
    tmp: Path,
    hmac_secret: str,
    institutions: Sequence[str],
    visits: int,
    warmup: int,
    rounds: int,
    load: dict[str, Any],
    placement: str = "anchor",
    masters: str = "anchor",
) -> dict[str, Any]:
    from services.common.broker import LocalBroker, free_port
    from services.common.kafka_admin import create_topics

    partitions = settings.topic_partitions
    hmac_key = hmac_secret.encode()
    work = tmp / f"population-{n}"
    work.mkdir()
    broker: LocalBroker | None = None
    service: Service | None = None
    try:
        _log(f"population {n:,}: starting a Kafka broker")
        broker = LocalBroker(
            work / "kafka",
            settings.cache_dir,
            kafka_version=settings.broker.kafka_version,
            port=0,
            controller_port=0,
            heap=settings.broker.heap,
        )
        info, _ = broker.start(timeout_s=max(90.0, settings.broker.start_timeout_s))
        bootstrap = info.bootstrap
        create_topics(
            bootstrap,
            [*ALL_TOPICS, *changelog_specs(partitions)],
            default_partitions=partitions,
            replication_factor=1,
        )

        plan = plan_load(n, visits * rounds, warmup, KNOWN_SHARE, SEED)
        _log(f"population {n:,}: seeding the identities and blocks changelogs")
        seeded = seed_population(
            bootstrap,
            n,
            partitions=partitions,
            hmac_key=hmac_key,
            institutions=institutions,
            keep={*plan.warmup_known, *plan.measured_known},
            seed=SEED,
            masters=masters,
        )
        _log(
            f"population {n:,}: {seeded.stats['identities']:,} identity and "
            f"{seeded.stats['blocks']:,} block entries in {seeded.stats['seconds']:.1f} s"
        )
        rng = random.Random(SEED + 7 * n)  # noqa: S311 - test data
        new_people = [next(seeded.gen) for _ in range(plan.warmup_new + plan.measured_new)]
        warm = make_visits(
            rng,
            [seeded.known[i] for i in plan.warmup_known],
            new_people[: plan.warmup_new],
            first_number=1,
        )
        batches: list[list[Visit]] = []
        number = len(warm) + 1
        for known, new in split_rounds(
            [seeded.known[i] for i in plan.measured_known],
            new_people[plan.warmup_new :],
            rounds,
        ):
            batches.append(make_visits(rng, known, new, first_number=number))
            number += len(batches[-1])
        received = datetime.now(UTC)
        first = batches[0]
        load.update(
            {
                "rounds": rounds,
                "resources_per_visit": first[0].records + 1,
                "messages": sum(len(v.entries) for v in first),
                "records": sum(v.records for v in first),
                "known_visits": sum(v.known for v in first),
                "new_visits": sum(not v.known for v in first),
            }
        )

        env = {
            **os.environ,
            "MRHUB_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
            "MRHUB_IDENTITY__HMAC_KEY": hmac_secret,
            "MRHUB_TOPIC_PARTITIONS": str(partitions),
            "MRHUB_STATE_DIR": str(work / "state"),
            "MRHUB_PATIENT_INDEX__HOST": HOST,
            "MRHUB_LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
        }
        service = Service(env, free_port(), work / "patient_index.log")
        source_digest = service_source_digest()
        _log(f"population {n:,}: starting the patient index, waiting for /readyz")
        recovery_s = service.start(timeout_s=max(300.0, n / 1000))
        _log(f"population {n:,}: ready after {recovery_s:.1f} s")

        if warm:
            _log(f"population {n:,}: warm-up, {len(warm)} visits")
            w = run_load(
                bootstrap,
                [m for v in warm for m in gateway_messages(v, hmac_key, received)],
                {v.trace_id for v in warm},
                sum(v.records for v in warm),
                alive=service.alive,
                placement=placement,
            )
            if w.stalled:
                raise BenchError(f"the warm-up stalled:\n{service.tail()}")
        results: list[dict[str, Any]] = []
        checks: list[dict[str, Any]] = []
        for i, batch in enumerate(batches, start=1):
            fig, chk = _measure(service, info.pid, bootstrap, batch, hmac_key, received, placement)
            results.append(fig)
            checks.append(chk)
            _log(
                f"population {n:,}: round {i} of {rounds}: {_fmt(fig['records_per_s'])} "
                f"records/s, {_fmt(fig['us_per_record'])} µs/record, service CPU "
                f"{_fmt(fig['service_cpu_us_per_record'])} µs/record, "
                f"checks {'ok' if chk['ok'] else 'FAILED'}"
            )
            if not chk["ok"] and not service.alive():
                raise BenchError(f"the patient index died:\n{service.tail()}")
        return {
            "population": n,
            "seed": seeded.stats,
            "recovery_s": round(recovery_s, 2),
            "service_source_sha256": source_digest,
            "measured": combine_rounds(results),
            "rounds": results,
            "checks": combine_checks(checks),
        }
    finally:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            if service is not None:
                _log(f"population {n:,}: stopping the patient index")
                service.stop()
            if broker is not None:
                _log(f"population {n:,}: stopping the Kafka broker")
                broker.stop()
        finally:
            signal.signal(signal.SIGINT, previous)
            shutil.rmtree(work / "kafka", ignore_errors=True)
            shutil.rmtree(work / "state", ignore_errors=True)


def _measure(
    service: Service,
    kafka_pid: int,
    bootstrap: str,
    visits: Sequence[Visit],
    hmac_key: bytes,
    received: datetime,
    placement: str = "anchor",
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One measured round: its figures and its checks."""
    messages = [m for v in visits for m in gateway_messages(v, hmac_key, received)]
    records = sum(v.records for v in visits)
    before_metrics = service.metrics()
    cpu_before = cpu_sample(service.pid, kafka_pid)
    run = run_load(
        bootstrap,
        messages,
        {v.trace_id for v in visits},
        records,
        alive=service.alive,
        placement=placement,
    )
    cpu_after = cpu_sample(service.pid, kafka_pid)
    time.sleep(0.5)  # metrics of the last messages
    after_metrics = service.metrics() if service.alive() else ""
    figures: dict[str, Any] = dict(run_figures(run.arrivals, run.t_start, records))
    n = len(run.arrivals)
    figures["service_cpu_us_per_record"] = cpu_us_per_record(cpu_before, cpu_after, "service", n)
    figures["service_main_cpu_us_per_record"] = cpu_us_per_record(
        cpu_before, cpu_after, "service_main", n
    )
    figures["produce_s"] = round(run.produce_s, 3)
    figures["cpu_pct"] = cpu_percent(cpu_before, cpu_after)
    return figures, _checks(before_metrics, after_metrics, visits, run, records)


_DECISIONS = "mrhub_patient_index_link_decisions_total"
_DEAD = "mrhub_patient_index_dead_letters_total"
_ROUTED = "mrhub_patient_index_routed_total"
_MASTER_STEPS = "mrhub_patient_index_master_steps_total"


def _checks(
    before: str, after: str, visits: Sequence[Visit], run: LoadRun, records: int
) -> dict[str, Any]:
    def delta(name: str, labels: Mapping[str, str]) -> int:
        return round(metric_value(after, name, labels) - metric_value(before, name, labels))

    messages = sum(len(v.entries) for v in visits)
    new = sum(1 for v in visits if not v.known)
    dead = sum(delta(_DEAD, {"stage": s}) for s in ("route", "resolve", "match", "index"))
    out = {
        "decisions_new": delta(_DECISIONS, {"kind": "new"}),
        "decisions_deterministic": delta(_DECISIONS, {"kind": "deterministic"}),
        "expected_new": new,
        "expected_deterministic": messages - new,
        "dead_letters": dead,
        "routed_in_place": delta(_ROUTED, {"path": "in-place"}),
        "routed_forwarded": delta(_ROUTED, {"path": "forwarded"}),
        "master_in_place": delta(_MASTER_STEPS, {"path": "in-place"}),
        "master_forwarded": delta(_MASTER_STEPS, {"path": "forwarded"}),
        "stalled": run.stalled,
    }
    out["ok"] = (
        not run.stalled
        and len(run.arrivals) == records
        and out["decisions_new"] == new
        and out["decisions_deterministic"] == messages - new
        and dead == 0
        # every resource routed once: resolved where it arrived, or forwarded to its owner
        and out["routed_in_place"] + out["routed_forwarded"] == messages
        # every record stamped once by its master: in place or through by-master
        and out["master_in_place"] + out["master_forwarded"] == records
    )
    return out


def report_notes(report: Mapping[str, Any]) -> list[str]:
    notes = [
        f"this machine has {report['cpu_count']} CPU cores, shared by Kafka, the patient index "
        "and the bench (which produces the load and reads the results); wall-clock figures "
        "move with whatever else runs — read them with the 'other' CPU column, and prefer the "
        "service CPU µs/record for the scaling question",
        "records/s include the pipeline's fill: a record crosses three stages (route, which "
        "resolves it in place when it arrived on its anchor's partition → master → index; "
        "four with --placement key: route → resolve → master → index), each of which "
        "commits its Kafka transaction every "
        "MRHUB_KAFKA__COMMIT_INTERVAL_MIN_S once caught up (0.05 s by default) and every "
        "MRHUB_KAFKA__COMMIT_INTERVAL_S under a backlog (1.0 s) before the next may read its "
        "output, so the first record takes a while whatever the population ('first record "
        "after'); 'records/s after the first' leaves that out",
        "seeded: the identities and blocks tables (what the index keeps per person); the "
        "tables that grow with records (masters, master_records, seen) start empty, so every "
        "measured record is new and a known person's master has no records yet; every "
        "visitor has a verified 身份证, so the match stage only keeps blocks up to date (no "
        "probabilistic matching runs)",
    ]
    digests = {r.get("service_source_sha256") for r in report["populations"]} - {None}
    if len(digests) > 1:
        notes.append(
            "the patient index's source changed between populations (see its sha256 per "
            "population): the populations did not all measure the same code"
        )
    disturbed = []
    for r in report["populations"]:
        bad = [
            f"{i} ({x['cpu_pct']['other']:.0f}%)"
            for i, x in enumerate(r.get("rounds") or [], start=1)
            if (x.get("cpu_pct") or {}).get("other", 0) > DISTURBED_PCT
        ]
        if bad:
            disturbed.append(f"{r['population']:,}: round {', '.join(bad)}")
    if disturbed:
        notes.append(
            "processes the bench did not start took more than "
            f"{DISTURBED_PCT:.0f}% of a core during measured rounds — "
            f"{'; '.join(disturbed)}: those rounds' wall-clock figures are disturbed"
        )
    return notes
