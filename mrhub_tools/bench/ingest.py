"""``mrhub bench ingest``: how many FHIR resources per second the ingest gateway stores.

One run, on one machine, measures in order:

1. **baseline** — the bare ``fhir.resources.R4B`` rate, ``model_validate_json(bytes)`` per
   resource in this process, on the very payloads the gateway gets afterwards (for a bundle,
   per resource it contains);
2. **client ceiling** — how fast the load generator (aiohttp) can issue requests at all,
   against the gateway's trivial ``GET /healthz``; and, for comparison, one
   ``httpx.AsyncClient`` with as many connections (which is much slower at 32 in flight);
3. **gateway** — one gateway process (``mrhub serve ingest``), then two on the same port
   (``SO_REUSEPORT``), each driven at a fixed number of requests in flight, first with single
   ``POST /fhir/Observation`` requests, then with transaction bundles (``POST /fhir``).
   Only 2xx answers count; resources/s is resources in the 2xx answers completed in the
   measured window divided by its length; the warm-up before the window is not counted;
4. **Kafka check** — the messages on ``mrhub.ingest.resource-accepted.v1`` (read back with a
   ``read_committed`` consumer) equal the resources the gateway accepted.

Everything it starts (a Kafka broker in a temporary directory, the gateway processes) is
stopped in ``finally`` blocks, on Ctrl-C too. Load goes to 127.0.0.1 only. Pure parts
(payload generation, percentiles, summaries, the report) are unit-tested; timing is not.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import functools
import hashlib
import itertools
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from types import FrameType
from typing import Any, Final

import aiohttp
import httpx

import services
from mrhub_tools.bench._common import machine_busy_s as _machine_busy_s
from mrhub_tools.bench._common import percentile as percentile  # re-exported (bench check)
from mrhub_tools.bench._common import proc_cpu_s as _proc_cpu_s
from mrhub_tools.bench._common import start_service
from services.common import harness
from services.common.codec import dumps
from services.common.errors import MrhubError
from services.common.fhir import FHIR_JSON, INSTITUTION_SYSTEM
from services.common.identifiers import (
    DOCUMENT_TYPE_SYSTEM,
    ID_CARD_SYSTEM,
    LAB_REPORT_NO_SYSTEM,
    OUTPATIENT_NO_SYSTEM,
    with_check_character,
)
from services.common.settings import Settings
from services.common.topics import ALL_TOPICS, RESOURCE_ACCEPTED

SEED: Final = 20260312
N_SINGLE: Final = 2000
N_BUNDLES: Final = 300
CONCURRENCY: Final = 32
WARMUP_S: Final = 2.0
GOAL_1P_OVER_BASELINE: Final = 0.6
GOAL_2P_OVER_1P: Final = 2.0
HOST: Final = "127.0.0.1"
TOPIC: Final = RESOURCE_ACCEPTED.name
MODES: Final = ("single", "bundle")
MODE_TITLES: Final = {
    "single": "single Observation (POST /fhir/Observation)",
    "bundle": "transaction bundle of 10 (POST /fhir)",
}

_COL: Final = 20
#: "other" CPU (% of one core) above which a run is reported as disturbed.
DISTURBED_PCT: Final = 20.0
CPU_KEYS: Final = ("client", "gateways", "kafka", "machine")

CST = timezone(timedelta(hours=8))

# ----------------------------------------------------------------------------- payloads

_LOINC = "http://loinc.org"
_UCUM = "http://unitsofmeasure.org"
_OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
_INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
_V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"


@dataclass(frozen=True)
class LabTest:
    item: str  # the hub's catalogue item code
    loinc: str
    display: str
    text: str  # as the LIS prints it
    unit: str  # UCUM
    low: Decimal
    high: Decimal
    places: int  # decimal places the analyser reports

    def quantize(self, value: float) -> Decimal:
        return Decimal(f"{value:.{self.places}f}")


@dataclass(frozen=True)
class Panel:
    code: str  # LOINC panel code
    display: str
    text: str
    section: str  # v2-0074 diagnostic service section
    tests: tuple[LabTest, ...]


def _t(item: str, loinc: str, display: str, text: str, unit: str, low: str, high: str) -> LabTest:
    places = len(low.partition(".")[2])
    return LabTest(item, loinc, display, text, unit, Decimal(low), Decimal(high), places)


PANELS: Final = (
    Panel(
        "58410-2",
        "CBC panel - Blood by Automated count",
        "血常规",
        "HM",
        (
            _t("WBC", "6690-2", "Leukocytes [#/volume] in Blood by Automated count",
               "白细胞计数", "10*9/L", "3.50", "9.50"),
            _t("RBC", "789-8", "Erythrocytes [#/volume] in Blood by Automated count",
               "红细胞计数", "10*12/L", "4.30", "5.80"),
            _t("HGB", "718-7", "Hemoglobin [Mass/volume] in Blood", "血红蛋白", "g/L",
               "130", "175"),
            _t("HCT", "4544-3", "Hematocrit [Volume Fraction] of Blood by Automated count",
               "红细胞压积", "%", "40.0", "50.0"),
            _t("MCV", "787-2", "MCV [Entitic volume] by Automated count",
               "平均红细胞体积", "fL", "82.0", "100.0"),
            _t("PLT", "777-3", "Platelets [#/volume] in Blood by Automated count",
               "血小板计数", "10*9/L", "125", "350"),
            _t("NEUT%", "770-8", "Neutrophils/100 leukocytes in Blood by Automated count",
               "中性粒细胞百分比", "%", "40.0", "75.0"),
            _t("LYMPH%", "736-9", "Lymphocytes/100 leukocytes in Blood by Automated count",
               "淋巴细胞百分比", "%", "20.0", "50.0"),
        ),
    ),
    Panel(
        "24323-8",
        "Comprehensive metabolic 2000 panel - Serum or Plasma",
        "生化全项",
        "CH",
        (
            _t("K", "2823-3", "Potassium [Moles/volume] in Serum or Plasma", "钾", "mmol/L",
               "3.50", "5.30"),
            _t("NA", "2951-2", "Sodium [Moles/volume] in Serum or Plasma", "钠", "mmol/L",
               "137.0", "147.0"),
            _t("CL", "2075-0", "Chloride [Moles/volume] in Serum or Plasma", "氯", "mmol/L",
               "99.0", "110.0"),
            _t("GLU", "14749-6", "Glucose [Moles/volume] in Serum or Plasma", "葡萄糖",
               "mmol/L", "3.90", "6.10"),
            _t("UREA", "22664-7", "Urea [Moles/volume] in Serum or Plasma", "尿素", "mmol/L",
               "3.10", "8.00"),
            _t("CREA", "14682-9", "Creatinine [Moles/volume] in Serum or Plasma", "肌酐",
               "umol/L", "57", "111"),
            _t("ALT", "1742-6",
               "Alanine aminotransferase [Enzymatic activity/volume] in Serum or Plasma",
               "丙氨酸氨基转移酶", "U/L", "9", "50"),
            _t("AST", "1920-8",
               "Aspartate aminotransferase [Enzymatic activity/volume] in Serum or Plasma",
               "天门冬氨酸氨基转移酶", "U/L", "15", "40"),
        ),
    ),
)  # fmt: skip

#: 行政区划代码 that python-stdnum accepts in a 身份证 for every birth year used here.
ID_CARD_REGIONS: Final = ("140100", "140121", "140122", "140123", "140200")
_SURNAMES: Final = "王李张刘陈杨赵黄周吴徐孙马朱胡郭何高林罗"
_GIVEN: Final = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玉兰"


gb11643 = with_check_character  # the hub's one GB 11643 implementation (python-stdnum)


def lab_observation(
    test: LabTest,
    value: Decimal,
    subject: dict[str, Any],
    report_no: str,
    line: int,
    when: tuple[str, str],
    performer: list[dict[str, Any]],
) -> dict[str, Any]:
    """Line ``line`` of lab report ``report_no``: ``test`` measured at ``value``, flagged
    against its reference range; ``when`` is (collected, issued)."""
    flag = "L" if value < test.low else "H" if value > test.high else "N"

    def qty(v: Decimal) -> dict[str, Any]:
        return {"value": v, "unit": test.unit, "system": _UCUM, "code": test.unit}

    return {
        "resourceType": "Observation",
        "identifier": [{"system": LAB_REPORT_NO_SYSTEM, "value": f"{report_no}-{line:02d}"}],
        "status": "final",
        "category": [
            {"coding": [{"system": _OBS_CATEGORY, "code": "laboratory", "display": "Laboratory"}]}
        ],
        "code": {
            "coding": [{"system": _LOINC, "code": test.loinc, "display": test.display}],
            "text": test.text,
        },
        "subject": subject,
        "effectiveDateTime": when[0],
        "issued": when[1],
        "performer": performer,
        "valueQuantity": qty(value),
        "interpretation": [{"coding": [{"system": _INTERPRETATION, "code": flag}]}],
        "referenceRange": [{"low": qty(test.low), "high": qty(test.high)}],
    }


def lab_report(
    panel: Panel,
    subject: dict[str, Any],
    report_no: str,
    when: tuple[str, str],
    performer: list[dict[str, Any]],
    results: list[dict[str, str]],
) -> dict[str, Any]:
    """The DiagnosticReport of ``panel`` that lists ``results`` (references)."""
    return {
        "resourceType": "DiagnosticReport",
        "identifier": [{"system": LAB_REPORT_NO_SYSTEM, "value": report_no}],
        "status": "final",
        "category": [{"coding": [{"system": _V2_0074, "code": panel.section}]}],
        "code": {
            "coding": [{"system": _LOINC, "code": panel.code, "display": panel.display}],
            "text": panel.text,
        },
        "subject": subject,
        "effectiveDateTime": when[0],
        "issued": when[1],
        "performer": performer,
        "result": results,
    }


@dataclass(frozen=True)
class Payload:
    """One request body and the resources in it (type and their own JSON, for the baseline)."""

    body: bytes
    parts: tuple[tuple[str, bytes], ...]

    @property
    def resources(self) -> int:
        return len(self.parts)


@dataclass(frozen=True)
class Payloads:
    single: tuple[Payload, ...]
    bundle: tuple[Payload, ...]
    seed: int

    def of(self, mode: str) -> tuple[Payload, ...]:
        return self.single if mode == "single" else self.bundle


class _Gen:
    """Deterministic realistic lab data for one posting institution."""

    def __init__(self, seed: int, institution_id: str, institution_name: str) -> None:
        self.rng = random.Random(seed)  # noqa: S311 - test data, not security
        self.institution_id = institution_id
        self.institution_name = institution_name
        self.report_no = itertools.count(1)
        self.day0 = datetime(2026, 3, 2, 7, 30, tzinfo=CST)

    def uuid_url(self) -> str:
        return f"urn:uuid:{uuid.UUID(int=self.rng.getrandbits(128), version=4)}"

    def outpatient_no(self) -> str:
        return f"MZ{self.rng.randrange(10**7, 10**8)}"

    def times(self) -> tuple[str, str]:
        taken = self.day0 + timedelta(
            days=self.rng.randrange(14), minutes=self.rng.randrange(0, 9 * 60)
        )
        issued = taken + timedelta(
            minutes=self.rng.randrange(40, 180), seconds=self.rng.randrange(60)
        )
        return taken.isoformat(), issued.isoformat()

    def performer(self) -> list[dict[str, Any]]:
        return [
            {
                "identifier": {"system": INSTITUTION_SYSTEM, "value": self.institution_id},
                "display": self.institution_name,
            }
        ]

    def value(self, test: LabTest) -> Decimal:
        mid = float(test.low + test.high) / 2
        spread = float(test.high - test.low) / 3.2  # about 1 in 8 falls outside the range
        return max(test.quantize(self.rng.gauss(mid, spread)), test.quantize(0.0))

    def observation(
        self,
        test: LabTest,
        subject: dict[str, Any],
        report_no: str,
        line: int,
        when: tuple[str, str],
    ) -> dict[str, Any]:
        return lab_observation(
            test, self.value(test), subject, report_no, line, when, self.performer()
        )

    def new_report_no(self, when: str) -> str:
        return f"LR{when[:10].replace('-', '')}-{next(self.report_no):06d}"

    def single(self) -> Payload:
        panel = self.rng.choice(PANELS)
        test = self.rng.choice(panel.tests)
        when = self.times()
        subject = {"identifier": {"system": OUTPATIENT_NO_SYSTEM, "value": self.outpatient_no()}}
        obs = self.observation(test, subject, self.new_report_no(when[0]), 1, when)
        body = dumps(obs)
        return Payload(body, (("Observation", body),))

    def patient(self) -> dict[str, Any]:
        born = date(1940, 1, 1) + timedelta(days=self.rng.randrange(365 * 75))
        sex = self.rng.choice(("male", "female"))
        seq = self.rng.randrange(0, 100) * 10 + self.rng.choice(
            (1, 3, 5, 7, 9) if sex == "male" else (0, 2, 4, 6, 8)
        )
        card = gb11643(f"{self.rng.choice(ID_CARD_REGIONS)}{born:%Y%m%d}{seq:03d}")
        surname, given = self.rng.choice(_SURNAMES), "".join(self.rng.sample(_GIVEN, 2))
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
                    "value": card,
                },
                {
                    "use": "usual",
                    "type": {"text": "门诊号"},
                    "system": OUTPATIENT_NO_SYSTEM,
                    "value": self.outpatient_no(),
                },
            ],
            "name": [
                {"use": "official", "text": surname + given, "family": surname, "given": [given]}
            ],
            "telecom": [
                {
                    "system": "phone",
                    "value": f"1{self.rng.randrange(3 * 10**9, 10**10)}",
                    "use": "mobile",
                }
            ],
            "gender": sex,
            "birthDate": born.isoformat(),
        }

    def bundle(self) -> Payload:
        """A transaction: Patient, the 8 results of one panel and their DiagnosticReport."""
        panel = self.rng.choice(PANELS)
        when = self.times()
        report_no = self.new_report_no(when[0])
        patient_url = self.uuid_url()
        subject = {"reference": patient_url}
        entries: list[tuple[str, dict[str, Any]]] = [(patient_url, self.patient())]
        results = []
        for line, test in enumerate(panel.tests, start=1):
            url = self.uuid_url()
            entries.append((url, self.observation(test, subject, report_no, line, when)))
            results.append({"reference": url})
        report = lab_report(panel, subject, report_no, when, self.performer(), results)
        entries.append((self.uuid_url(), report))
        doc = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "fullUrl": url,
                    "resource": res,
                    "request": {"method": "POST", "url": res["resourceType"]},
                }
                for url, res in entries
            ],
        }
        parts = tuple((res["resourceType"], dumps(res)) for _, res in entries)
        return Payload(dumps(doc), parts)


def make_payloads(
    institution_id: str,
    institution_name: str = "",
    *,
    seed: int = SEED,
    n_single: int = N_SINGLE,
    n_bundles: int = N_BUNDLES,
) -> Payloads:
    """``n_single`` lab Observations and ``n_bundles`` transaction bundles of 10 resources,
    the same for the same arguments, all of them acceptable from ``institution_id``."""
    gen = _Gen(seed, institution_id, institution_name)
    single = tuple(gen.single() for _ in range(n_single))
    bundle = tuple(gen.bundle() for _ in range(n_bundles))
    return Payloads(single, bundle, seed)


# ------------------------------------------------------------------------- arithmetic


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


@dataclass
class LoadResult:
    """What one load run saw. The window counts 2xx answers completed inside it; errors and
    the ``*_total`` fields cover the whole run: warm-up, window and the drain after it."""

    window_s: float
    requests: int = 0
    resources: int = 0
    latencies_s: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    first_error_bodies: dict[str, str] = field(default_factory=dict)
    requests_total: int = 0
    resources_total: int = 0
    cpu_pct: dict[str, float] | None = None

    def record(
        self, ok: bool, resources: int, latency_s: float, in_window: bool, error: str = ""
    ) -> None:
        self.requests_total += 1
        if not ok:
            self.errors[error] += 1
            return
        self.resources_total += resources
        if in_window:
            self.requests += 1
            self.resources += resources
            self.latencies_s.append(latency_s)

    def gateway_cpu_us_per_resource(self) -> float | None:
        """CPU time of the gateway processes during the window ÷ resources accepted in it
        (survives a busy machine better than resources/s: it counts only the gateways' own
        CPU)."""
        share = (self.cpu_pct or {}).get("gateways")
        if share is None or not self.resources:
            return None
        return round(share / 100 * self.window_s / self.resources * 1e6, 1)

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies_s)
        return {
            "resources_per_s": round(self.resources / self.window_s, 1),
            "requests_per_s": round(self.requests / self.window_s, 1),
            "p50_ms": _ms(percentile(lat, 50)),
            "p99_ms": _ms(percentile(lat, 99)),
            "errors": sum(self.errors.values()),
            "errors_by_kind": dict(sorted(self.errors.items())),
            "error_samples": self.first_error_bodies,
            "window_s": self.window_s,
            "requests_in_window": self.requests,
            "requests_total": self.requests_total,
            "resources_accepted_total": self.resources_total,
            "cpu_pct_of_one_core": self.cpu_pct,
            "gateway_cpu_us_per_resource": self.gateway_cpu_us_per_resource(),
        }


def count_by_phase(
    offsets: Mapping[int, Sequence[int]], boundaries: Sequence[Mapping[int, int]]
) -> list[int]:
    """How many of the record ``offsets`` (per partition) fall in each phase.

    ``boundaries`` are end-offset snapshots: phase ``i`` holds the offsets ``o`` with
    ``boundaries[i][p] <= o < boundaries[i + 1][p]``; anything outside is ignored.
    """
    counts = [0] * (len(boundaries) - 1)
    for partition, offs in offsets.items():
        edges = [b.get(partition, 0) for b in boundaries]
        for o in offs:
            i = bisect.bisect_right(edges, o) - 1
            if 0 <= i < len(counts):
                counts[i] += 1
    return counts


def build_ratios(
    baseline: Mapping[str, Mapping[str, Any]],
    gateway: Mapping[str, Mapping[str, Mapping[str, Any]]],
) -> dict[str, dict[str, float | None]]:
    out: dict[str, dict[str, float | None]] = {}
    for mode in MODES:
        base = baseline.get(mode, {}).get("resources_per_s")
        one = gateway.get("1", {}).get(mode, {}).get("resources_per_s")
        two = gateway.get("2", {}).get(mode, {}).get("resources_per_s")
        r1, r2 = ratio(one, base), ratio(two, one)
        # CPU per resource: the bare validation's over the gateway's (one process)
        rc = ratio(
            baseline.get(mode, {}).get("cpu_us_per_resource"),
            gateway.get("1", {}).get(mode, {}).get("gateway_cpu_us_per_resource"),
        )
        out[mode] = {
            "gateway_1p_over_baseline": None if r1 is None else round(r1, 3),
            "gateway_2p_over_gateway_1p": None if r2 is None else round(r2, 3),
            "baseline_cpu_over_gateway_1p_cpu": None if rc is None else round(rc, 3),
        }
    return out


def likely_limit(
    summary: Mapping[str, Any], processes: int, cpu_count: int, client_ceiling: float | None
) -> str:
    """What most likely capped a gateway run (a heuristic on the CPU figures):

    - ``client``: the load generator, at ≥ 80% of what it can send to ``/healthz``;
    - ``machine CPU``: all cores ≥ 90% busy;
    - ``gateway CPU``: the gateway processes ≥ 90% of one core each (Python runs one core
      per process);
    - ``in-flight/latency``: none of those — throughput ≈ requests in flight ÷ latency, so
      more requests in flight (or a shorter Kafka transaction) would raise it.
    """
    cpu = summary.get("cpu_pct_of_one_core") or {}
    if client_ceiling and summary.get("requests_per_s", 0) >= 0.8 * client_ceiling:
        return "client"
    if cpu.get("machine", 0) >= 0.9 * cpu_count * 100:
        return "machine CPU"
    if cpu.get("gateways", 0) >= 0.9 * processes * 100:
        return "gateway CPU"
    return "in-flight/latency"


def _fmt(value: Any, spec: str = ",.0f") -> str:
    if value is None:
        return "-"
    if isinstance(value, int | float):
        return format(value, spec)
    return str(value)


def format_report(report: Mapping[str, Any]) -> str:
    """The human-readable report of a run (``report`` is what ``--json`` prints)."""
    lines: list[str] = []
    add = lines.append
    pl = report["payloads"]
    add(f"mrhub bench ingest — {report['command']}")
    add(
        f"  {report['cpu_count']} CPU cores; {report['concurrency']} requests in flight; "
        f"{_fmt(report['warmup_s'], '.0f')} s warm-up, then {_fmt(report['seconds'], 'g')} s "
        "measured per run; CPU figures are % of one core (all cores: at most "
        f"{report['cpu_count'] * 100}%; other: processes the bench did not start, kernel)"
    )
    add(
        f"  payloads (seed {report['seed']}): {pl['single']['count']} lab Observations "
        f"(avg {_fmt(pl['single']['avg_bytes'])} B), {pl['bundle']['count']} transaction "
        f"bundles of {pl['bundle']['resources'] // max(1, pl['bundle']['count'])} resources "
        f"(avg {_fmt(pl['bundle']['avg_bytes'])} B)"
    )
    if report.get("gateway_source_sha256"):
        add(f"  gateway source (services/ingest/*.py) sha256 {report['gateway_source_sha256']}")
    k = report["kafka"]
    add(
        f"  Kafka {k['bootstrap']} ({'started by the bench' if k['started_here'] else 'given'}),"
        f" topic {k['topic']} ({k['partitions']} partitions)"
    )
    add("")
    add("Baseline: fhir.resources R4B model_validate_json(bytes) per resource, 1 process")
    for mode in MODES:
        b = report["baseline"].get(mode)
        if b:
            cpu_us = b.get("cpu_us_per_resource")
            add(
                f"  {MODE_TITLES[mode]:<48} {_fmt(b['resources_per_s']):>8} resources/s"
                + (f", {_fmt(cpu_us)} µs CPU per resource" if cpu_us is not None else "")
            )
    ceilings = report.get("client_ceiling") or {}
    if ceilings:
        add("")
        add(
            "Load generator ceiling: GET /healthz on 1 gateway process, same concurrency "
            "(what the client can send at most)"
        )
        for client, c in ceilings.items():
            cpu = (c.get("cpu_pct_of_one_core") or {}).get("client")
            used = "the load generator" if client == "aiohttp" else "for comparison only"
            add(
                f"  {client:<8} {_fmt(c['requests_per_s']):>8} requests/s, p50 "
                f"{_fmt(c['p50_ms'], '.1f')} ms, client CPU {_fmt(cpu, '.0f')}%, errors "
                f"{c['errors']}  ({used})"
            )
    gw = report["gateway"]
    procs = [p for p in ("1", "2") if p in gw]
    if procs:
        add("")
        head = "".join(f"{p + ' process' + ('es' if p != '1' else ''):>{_COL}}" for p in procs)
        add(f"Gateway{'':<34}{head}")
        rows: list[tuple[str, str, str]] = [
            ("resources/s", "resources_per_s", ",.0f"),
            ("requests/s", "requests_per_s", ",.0f"),
            ("latency p50 ms", "p50_ms", ".1f"),
            ("latency p99 ms", "p99_ms", ".1f"),
            ("errors (whole run)", "errors", "d"),
            ("gateway CPU µs per resource", "gateway_cpu_us_per_resource", ",.0f"),
        ]
        for mode in MODES:
            if not any(mode in gw[p] for p in procs):
                continue
            add(f"  {MODE_TITLES[mode]}")
            for label, key, spec in rows:
                cells = "".join(
                    f"{_fmt(gw[p].get(mode, {}).get(key), spec):>{_COL}}" for p in procs
                )
                add(f"    {label:<37}{cells}")
            cells = ""
            for p in procs:
                cpu = gw[p].get(mode, {}).get("cpu_pct_of_one_core") or {}
                parts = [cpu.get(x) for x in (*CPU_KEYS[:3], "other", "machine")]
                cells += f"{'/'.join(_fmt(v, '.0f') for v in parts):>{_COL}}"
            add(f"    {'CPU % client/gateways/kafka/other/all':<37}{cells}")
            cells = "".join(
                f"{gw[p].get(mode, {}).get('likely_limit', '-'):>{_COL}}" for p in procs
            )
            add(f"    {'likely limit':<37}{cells}")
    add("")
    add("Ratios (goal)")
    for mode in MODES:
        r = report["ratios"][mode]
        add(
            f"  {mode:<7} gateway_1p / baseline = {_fmt(r['gateway_1p_over_baseline'], '.2f')}"
            f" (≥ {GOAL_1P_OVER_BASELINE})   gateway_2p / gateway_1p = "
            f"{_fmt(r['gateway_2p_over_gateway_1p'], '.2f')} (≈ {GOAL_2P_OVER_1P:g})"
        )
    add(
        "  CPU per resource, bare validation ÷ gateway (1 process): "
        + "   ".join(
            f"{mode} {_fmt(report['ratios'][mode].get('baseline_cpu_over_gateway_1p_cpu'), '.2f')}"
            for mode in MODES
        )
        + "  (the rate ratio a gateway with a core to itself would reach; robust to a busy"
        " machine)"
    )
    add("")
    km = report.get("kafka_check") or {}
    add(
        f"Kafka: {_fmt(km.get('messages'))} messages on the topic, "
        f"{_fmt(km.get('resources_accepted'))} resources accepted → "
        f"kafka_messages_match: {str(report.get('kafka_messages_match')).lower()}"
    )
    if km.get("note"):
        add(f"  {km['note']}")
    add("")
    for note in report.get("notes", []):
        add(f"Note: {note}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- baseline


def baseline_rate(parts: Sequence[tuple[str, bytes]], seconds: float) -> dict[str, Any]:
    """Resources/s of ``get_fhir_model_class(t).model_validate_json(b)`` over ``parts``,
    cycled for ``seconds`` (after one untimed pass over up to 200 of them)."""
    from fhir.resources.R4B import get_fhir_model_class

    for rtype, body in parts[:200]:
        get_fhir_model_class(rtype).model_validate_json(body)
    done = 0
    cpu_started = time.process_time()
    started = time.perf_counter()
    deadline = started + seconds
    now = started
    while now < deadline:
        for rtype, body in parts:
            get_fhir_model_class(rtype).model_validate_json(body)
            done += 1
            if done % 32 == 0:
                now = time.perf_counter()
                if now >= deadline:
                    break
        now = time.perf_counter()
    elapsed = now - started
    cpu_s = time.process_time() - cpu_started
    return {
        "resources_per_s": round(done / elapsed, 1),
        "cpu_us_per_resource": round(cpu_s / done * 1e6, 1) if done else None,
        "validated": done,
        "seconds": round(elapsed, 3),
    }


# ------------------------------------------------------------------------------ processes


@dataclass
class CpuProbe:
    """CPU seconds of this process, the gateways, the broker and the whole machine; turned
    into % of one core (so a 2-core machine is at most 200%)."""

    gateway_pids: Sequence[int]
    kafka_pid: int | None

    def sample(self) -> dict[str, float | None]:
        gw = [_proc_cpu_s(p) for p in self.gateway_pids]
        return {
            "client": time.process_time(),
            "gateways": None if any(v is None for v in gw) else sum(v or 0.0 for v in gw),
            "kafka": _proc_cpu_s(self.kafka_pid) if self.kafka_pid else None,
            "machine": _machine_busy_s(),
            "wall": time.perf_counter(),
        }

    @staticmethod
    def percent(
        before: Mapping[str, float | None], after: Mapping[str, float | None]
    ) -> dict[str, float]:
        wall = (after["wall"] or 0.0) - (before["wall"] or 0.0)
        out: dict[str, float] = {}
        for key in CPU_KEYS:
            a, b = after.get(key), before.get(key)
            if a is not None and b is not None and wall > 0:
                out[key] = round((a - b) / wall * 100, 1)
        if all(k in out for k in CPU_KEYS):  # other processes, and kernel time not charged
            mine = out["client"] + out["gateways"] + out["kafka"]
            out["other"] = round(max(0.0, out["machine"] - mine), 1)
        return out


def _listening_inodes(port: int) -> set[str]:
    found: set[str] = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name, encoding="ascii") as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if len(cols) > 9 and cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                found.add(cols[9])
    return found


def _listens(pid: int, port: int) -> bool | None:
    """Whether process ``pid`` holds a listening socket on ``port``; None if /proc can't say."""
    inodes = _listening_inodes(port)
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            return True
    return False


class Gateways:
    """``count`` gateway processes sharing one port; ``stop`` ends exactly those."""

    def __init__(self, count: int, port: int, env: Mapping[str, str], log_dir: Path) -> None:
        self.count = count
        self.port = port
        self.env = dict(env)
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def log_path(self, i: int) -> Path:
        return self.log_dir / f"gateway-{self.count}p-{i}.log"

    def start(self, timeout_s: float = 60.0) -> None:
        env = {**self.env, "MRHUB_INGEST__PORT": str(self.port)}
        for i in range(self.count):
            self.procs.append(start_service("ingest", env, self.log_path(i)))
        deadline = time.monotonic() + timeout_s
        for i, proc in enumerate(self.procs):
            try:
                harness.wait_until(
                    functools.partial(self._serving, proc),
                    deadline_s=max(0.1, deadline - time.monotonic()),
                    what=f"gateway {i} to answer ready",
                    alive=harness.still_running(proc, f"gateway {i}", self.log_path(i)),
                )
            except (harness.ProcessExitedError, TimeoutError) as exc:
                raise BenchError(f"{exc}:\n{self.tail(i)}") from None

    def _serving(self, proc: subprocess.Popen[bytes]) -> bool:
        """This process listens on the port (not only its sibling) and the port answers ready."""
        return _listens(proc.pid, self.port) is not False and harness.answers_ready(
            f"{self.base}/readyz"
        )

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)

    def tail(self, i: int, chars: int = 2000) -> str:
        try:
            return self.log_path(i).read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def stop(self, grace_s: float = 15.0) -> None:
        harness.stop_all(self.procs, grace_s=grace_s)
        self.procs = []


# -------------------------------------------------------------------------- load runs


#: One request: ``(status, error body)`` or ``(0, "ExceptionName: message")`` when no answer.
Send = Callable[[bytes | None], Awaitable[tuple[int, str]]]
CLIENTS: Final = ("aiohttp", "httpx")


@contextlib.asynccontextmanager
async def _sender(
    client: str, method: str, url: str, headers: Mapping[str, str], concurrency: int
) -> AsyncIterator[Send]:
    """A function sending one request over a pool of ``concurrency`` keep-alive connections.

    ``aiohttp`` (``ClientSession``) is the load generator; ``httpx`` (one ``AsyncClient``)
    is kept to measure its ceiling: on this machine it tops out far below aiohttp's.
    """
    if client == "httpx":
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(
            headers=dict(headers), limits=limits, timeout=httpx.Timeout(60.0)
        ) as hc:

            async def send_httpx(body: bytes | None) -> tuple[int, str]:
                try:
                    resp = await hc.request(method, url, content=body)
                except httpx.HTTPError as exc:
                    return 0, f"{type(exc).__name__}: {exc}"
                return resp.status_code, "" if resp.is_success else resp.text

            yield send_httpx
        return
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
    async with aiohttp.ClientSession(
        connector=connector,
        headers=dict(headers),
        timeout=aiohttp.ClientTimeout(total=60.0),
        auto_decompress=False,
    ) as session:

        async def send_aiohttp(body: bytes | None) -> tuple[int, str]:
            try:
                async with session.request(method, url, data=body) as resp:
                    answer = await resp.read()
                    ok = 200 <= resp.status < 300
                    return resp.status, "" if ok else answer.decode(errors="replace")
            except (aiohttp.ClientError, TimeoutError) as exc:
                return 0, f"{type(exc).__name__}: {exc}"

        yield send_aiohttp


async def run_load(
    url: str,
    *,
    method: str,
    payloads: Sequence[Payload] | None,
    headers: Mapping[str, str],
    concurrency: int,
    warmup_s: float,
    seconds: float,
    cpu: CpuProbe | None = None,
    client: str = "aiohttp",
) -> LoadResult:
    """Keep ``concurrency`` requests in flight for ``warmup_s + seconds``, then let the last
    ones finish. ``payloads`` are sent in turn (``None``: no body, one resource a request)."""
    result = LoadResult(window_s=seconds)
    counter = itertools.count()
    t0 = time.perf_counter() + warmup_s
    t_end = t0 + seconds

    async with _sender(client, method, url, headers, concurrency) as send:

        async def worker() -> None:
            while True:
                began = time.perf_counter()
                if began >= t_end:
                    return
                payload = payloads[next(counter) % len(payloads)] if payloads else None
                status, detail = await send(payload.body if payload else None)
                ended = time.perf_counter()
                ok = 200 <= status < 300
                error = ""
                if not ok:
                    error = f"HTTP {status}" if status else detail.partition(":")[0]
                    result.first_error_bodies.setdefault(error, detail[:400])
                result.record(
                    ok,
                    payload.resources if payload else 1,
                    ended - began,
                    t0 <= ended < t_end,
                    error,
                )

        async def sample_cpu() -> None:
            if cpu is None:
                return
            await asyncio.sleep(max(0.0, t0 - time.perf_counter()))
            before = cpu.sample()
            await asyncio.sleep(max(0.0, t_end - time.perf_counter()))
            result.cpu_pct = CpuProbe.percent(before, cpu.sample())

        await asyncio.gather(sample_cpu(), *(worker() for _ in range(concurrency)))
    return result


# ---------------------------------------------------------------------------- Kafka


def _consumer(bootstrap: str) -> Any:
    from kafka import KafkaConsumer

    return KafkaConsumer(
        bootstrap_servers=bootstrap.split(","),
        client_id="mrhub-bench",
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=16 * 1024 * 1024,
        max_poll_records=20_000,
    )


def end_offsets(consumer: Any, topic: str) -> dict[int, int]:
    from kafka import TopicPartition

    partitions = consumer.partitions_for_topic(topic) or set()
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    return {tp.partition: int(off) for tp, off in consumer.end_offsets(tps).items()}


def read_offsets(
    consumer: Any, topic: str, start: Mapping[int, int], end: Mapping[int, int], timeout_s: float
) -> dict[int, list[int]]:
    """The offsets of the committed records between ``start`` and ``end`` (per partition)."""
    from kafka import TopicPartition

    tps = [TopicPartition(topic, p) for p in sorted(end) if end[p] > start.get(p, 0)]
    found: dict[int, list[int]] = {tp.partition: [] for tp in tps}
    if not tps:
        return found
    consumer.assign(tps)
    for tp in tps:
        consumer.seek(tp, start.get(tp.partition, 0))
    deadline = time.monotonic() + timeout_s
    pending = set(tps)
    while pending and time.monotonic() < deadline:
        for tp, records in consumer.poll(timeout_ms=500).items():
            limit = end[tp.partition]
            found[tp.partition].extend(r.offset for r in records if r.offset < limit)
        pending = {tp for tp in pending if consumer.position(tp) < end[tp.partition]}
    if pending:
        raise TimeoutError(f"could not read the topic back within {timeout_s:.0f}s")
    return found


# ---------------------------------------------------------------------------------- main


class _Interrupted(Exception):
    pass


class BenchError(MrhubError):
    """The bench could not run (a gateway did not start or died)."""


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def _registry_source(settings: Settings) -> Path:
    configured = settings.institutions_path
    if configured.exists():
        return configured
    return Path(__file__).resolve().parents[2] / "config" / "institutions.yaml"


def gateway_source_digest() -> str:
    """A short SHA-256 of the gateway's source files, to tell which code a report measured."""
    h = hashlib.sha256()
    src = Path(services.__file__).resolve().parent / "ingest"
    for path in sorted(src.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def _payload_stats(items: Sequence[Payload]) -> dict[str, Any]:
    return {
        "count": len(items),
        "resources": sum(p.resources for p in items),
        "avg_bytes": round(sum(len(p.body) for p in items) / max(1, len(items))),
    }


def _notes(cpu_count: int, report: Mapping[str, Any]) -> list[str]:
    notes = [
        f"this machine has {cpu_count} CPU cores, shared by Kafka, the gateway process(es) and "
        "the load generator; the baseline ran alone on one core. A second gateway process can "
        "only help as far as a core is free, so gateway_2p / gateway_1p is bounded by the "
        "machine here, not by the gateway design."
    ]
    ceiling = (report.get("client_ceiling") or {}).get("aiohttp", {}).get("requests_per_s")
    for procs, modes in report["gateway"].items():
        for mode, s in modes.items():
            if ceiling and s.get("requests_per_s", 0) >= 0.8 * ceiling:
                notes.append(
                    f"{procs}p {mode}: {s['requests_per_s']:.0f} requests/s is ≥ 80% of the load "
                    f"generator's ceiling ({ceiling:.0f}/s): the client may be the limit."
                )
    disturbed = [
        f"{procs}p {mode} ({s['cpu_pct_of_one_core']['other']:.0f}%)"
        for procs, modes in report["gateway"].items()
        for mode, s in modes.items()
        if (s.get("cpu_pct_of_one_core") or {}).get("other", 0) > DISTURBED_PCT
    ]
    if disturbed:
        notes.append(
            "processes the bench did not start (or kernel work) took CPU during "
            f"{', '.join(disturbed)}: those figures are disturbed; rerun on a quiet machine."
        )
    notes.append(
        "SO_REUSEPORT spreads connections, not requests: with keep-alive the kernel's split of "
        "the fixed set of connections between the two processes holds for the whole run."
    )
    return notes


def main(args: argparse.Namespace, settings: Settings) -> int:
    """``mrhub bench ingest``: ``args.seconds`` per measured run, ``args.json`` for JSON;
    ``args.concurrency`` (not on the command line) changes the 32 requests in flight."""
    seconds = float(args.seconds)
    if seconds <= 0:
        _log("--seconds must be positive")
        return 2
    as_json = bool(getattr(args, "json", False))
    concurrency = int(getattr(args, "concurrency", CONCURRENCY))

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise _Interrupted()

    old_term = signal.signal(signal.SIGTERM, on_term)
    try:
        report = _run(settings, seconds=seconds, concurrency=concurrency)
    except (KeyboardInterrupt, _Interrupted):
        _log("interrupted; everything the bench started is stopped")
        return 130
    finally:
        signal.signal(signal.SIGTERM, old_term)
    if as_json:
        print(json.dumps(report, ensure_ascii=False, indent=2))
    else:
        print(format_report(report))
    return 0 if report.get("kafka_messages_match") and report.get("complete") else 1


def _run(settings: Settings, *, seconds: float, concurrency: int) -> dict[str, Any]:
    from services.common.broker import LocalBroker, free_port
    from services.common.institutions import Registry, issue_token
    from services.common.kafka_admin import create_topics

    cpu_count = os.cpu_count() or 1
    tmp = Path(tempfile.mkdtemp(prefix="mrhub-bench-"))
    broker: LocalBroker | None = None
    gateways: Gateways | None = None
    consumer: Any = None
    keep_tmp = False
    try:
        registry_path = tmp / "institutions.yaml"
        shutil.copyfile(_registry_source(settings), registry_path)
        institution = next(iter(Registry.load(registry_path)))
        token = issue_token(registry_path, institution.id, label="mrhub bench ingest")
        payloads = make_payloads(institution.id, institution.name)
        report: dict[str, Any] = {
            "command": f"mrhub bench ingest --seconds {seconds:g}",
            "seconds": seconds,
            "warmup_s": WARMUP_S,
            "concurrency": concurrency,
            "cpu_count": cpu_count,
            "seed": payloads.seed,
            "institution": institution.id,
            "gateway_source_sha256": gateway_source_digest(),
            "payloads": {m: _payload_stats(payloads.of(m)) for m in MODES},
            "baseline": {},
            "gateway": {},
            "complete": False,
        }

        for mode in MODES:
            _log(f"baseline: R4B model_validate_json on the {mode} payloads for {seconds:g} s")
            parts = [part for p in payloads.of(mode) for part in p.parts]
            report["baseline"][mode] = baseline_rate(parts, seconds)

        kafka_pid: int | None = None
        if settings.kafka.bootstrap_servers:
            bootstrap = settings.kafka.bootstrap_servers
            started_here = False
            _log(f"using the Kafka cluster at {bootstrap}")
        else:
            _log("starting a Kafka broker in a temporary directory")
            broker = LocalBroker(
                tmp / "kafka",
                settings.cache_dir,
                kafka_version=settings.broker.kafka_version,
                port=0,
                controller_port=0,
                heap=settings.broker.heap,
            )
            info, _ = broker.start(timeout_s=max(90.0, settings.broker.start_timeout_s))
            bootstrap, kafka_pid, started_here = info.bootstrap, info.pid, True
        topics = create_topics(
            bootstrap,
            ALL_TOPICS,
            default_partitions=settings.topic_partitions,
            replication_factor=settings.kafka.replication_factor,
        )
        partitions = next(t.partitions for t in topics if t.name == TOPIC)
        report["kafka"] = {
            "bootstrap": bootstrap,
            "started_here": started_here,
            "topic": TOPIC,
            "partitions": partitions,
        }
        consumer = _consumer(bootstrap)
        boundaries = [end_offsets(consumer, TOPIC)]
        phases: list[tuple[str, str, int]] = []

        env = {
            **os.environ,
            "MRHUB_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
            "MRHUB_IDENTITY__HMAC_KEY": secrets.token_urlsafe(32),
            "MRHUB_INGEST__HOST": HOST,
            "MRHUB_INSTITUTIONS_PATH": str(registry_path),
            "MRHUB_LOG_LEVEL": "WARNING",
        }
        headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": FHIR_JSON,
            "Accept": FHIR_JSON,
        }
        for procs in (1, 2):
            _log(f"starting {procs} gateway process(es)")
            gateways = Gateways(procs, free_port(), env, tmp)
            try:
                gateways.start()
            except BenchError:
                keep_tmp = True
                raise
            probe = CpuProbe(gateways.pids, kafka_pid)
            results: dict[str, Any] = {}
            if procs == 1:
                report["client_ceiling"] = {}
                for client in CLIENTS:
                    _log(f"client ceiling: GET /healthz with {client} for {seconds:g} s")
                    ceiling = asyncio.run(
                        run_load(
                            f"{gateways.base}/healthz",
                            method="GET",
                            payloads=None,
                            headers={},
                            concurrency=concurrency,
                            warmup_s=1.0,
                            seconds=seconds,
                            cpu=probe,
                            client=client,
                        )
                    )
                    report["client_ceiling"][client] = ceiling.summary()
            for mode in MODES:
                url = (
                    f"{gateways.base}/fhir/Observation"
                    if mode == "single"
                    else f"{gateways.base}/fhir"
                )
                _log(f"{procs}p {mode}: {WARMUP_S:g} s warm-up + {seconds:g} s")
                res = asyncio.run(
                    run_load(
                        url,
                        method="POST",
                        payloads=payloads.of(mode),
                        headers=headers,
                        concurrency=concurrency,
                        warmup_s=WARMUP_S,
                        seconds=seconds,
                        cpu=probe,
                    )
                )
                results[mode] = res.summary()
                boundaries.append(end_offsets(consumer, TOPIC))
                phases.append((str(procs), mode, res.resources_total))
                if res.errors:
                    _log(f"  errors: {dict(res.errors)}")
            if not gateways.alive():
                keep_tmp = True
                raise BenchError(f"a gateway process died during the run; logs in {tmp}")
            gateways.stop()
            gateways = None
            report["gateway"][str(procs)] = results

        _log("reading the topic back (read_committed) to count the messages")
        found = read_offsets(consumer, TOPIC, boundaries[0], boundaries[-1], timeout_s=300)
        per_phase = count_by_phase(found, boundaries)
        for (procs_s, mode, accepted), messages, lo, hi in zip(
            phases, per_phase, boundaries[:-1], boundaries[1:], strict=True
        ):
            s = report["gateway"][procs_s][mode]
            s["kafka_messages"] = messages
            s["kafka_offsets_advanced"] = sum(hi.values()) - sum(lo.get(p, 0) for p in hi)
            s["kafka_match"] = messages == accepted
        total_msgs = sum(per_phase)
        total_accepted = sum(a for _, _, a in phases)
        offsets_advanced = sum(boundaries[-1].values()) - sum(
            boundaries[0].get(p, 0) for p in boundaries[-1]
        )
        report["kafka_check"] = {
            "messages": total_msgs,
            "resources_accepted": total_accepted,
            "offsets_advanced": offsets_advanced,
            "note": (
                f"the end offsets advanced by {offsets_advanced:,}: each committed transaction "
                "also writes one commit marker per partition it touched, so messages are "
                "counted by reading them, not from offsets"
            )
            if offsets_advanced != total_msgs
            else "",
        }
        report["kafka_messages_match"] = total_msgs == total_accepted
        ceiling = report["client_ceiling"]["aiohttp"]["requests_per_s"]
        for procs_s, modes in report["gateway"].items():
            for summary in modes.values():
                summary["likely_limit"] = likely_limit(summary, int(procs_s), cpu_count, ceiling)
        report["ratios"] = build_ratios(report["baseline"], report["gateway"])
        report["notes"] = _notes(cpu_count, report)
        report["complete"] = True
        return report
    finally:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            if gateways is not None:
                _log("stopping the gateway processes")
                gateways.stop()
            if consumer is not None:
                consumer.close()
            if broker is not None:
                _log("stopping the Kafka broker")
                broker.stop()
        finally:
            signal.signal(signal.SIGINT, previous)
            if keep_tmp:
                _log(f"gateway logs kept in {tmp}")
            else:
                shutil.rmtree(tmp, ignore_errors=True)
