"""``mrhub bench check``: the synchronous recognition check and order → decision latency.

Starts what it measures in a temporary directory: a Kafka broker (unless
``MRHUB_KAFKA__BOOTSTRAP_SERVERS`` names one), the gateway, the patient index and the
recognition worker, one process each. Then:

1. **population** — ``--patients`` patients, each with a potassium result from a 三甲
   hospital (posted through the gateway in batch bundles), waited for until the recognition
   worker holds them all;
2. **baseline** — the pure :func:`~services.recognition.decision.decide` in this process on
   the same kind of data: the upper bound of what any check could do per core;
3. **check load** — ``GET /recognition/check`` from a level-2 hospital, open loop at
   ``--rate`` requests per second for ``--seconds`` (each request is timed from the moment
   the schedule says it should start, so a hub that falls behind shows it in the latency
   rather than hiding it), random patients (one in ten unknown to the hub);
4. **orders** — ``--orders`` ServiceRequests through the gateway at ``--order-rate`` per
   second; each decision's latency is the decision's ``occurred_at`` minus the gateway's
   ``received_at`` carried through the envelope (both clocks of this machine).

Prints p50 / p99 of both latencies, checks per second achieved, errors, and the check rate
as a fraction of the baseline; ``--json`` prints the report as JSON. Goals (issue 5): check
p99 ≤ 20 ms at 500 requests per second; order → decision p99 ≤ 1 s.

``--recognition-workers 2`` starts a second ``mrhub serve recognition`` (its own port and
state directory, the same consumer group, so the two share the partitions) and sends the
checks round-robin to both; a check landing on the worker that does not own the patient's
partition is forwarded to the owner. The report keeps a per-second ``timeline`` of the checks
(completed, p50, p99 by completion second) and of the orders (decided, p99 by receipt second).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from mrhub_tools.bench._common import wait_ready
from mrhub_tools.bench.ingest import PANELS, gb11643, lab_observation, percentile
from services.common.codec import dumps, loads, pretty
from services.common.envelope import Envelope
from services.common.fhir import INSTITUTION_SYSTEM
from services.common.identifiers import ID_CARD_SYSTEM
from services.common.settings import Settings
from services.common.topics import ALL_TOPICS, DECISION_MADE

#: 山西省汾河医院 (三甲, lab qualification national) posts; 晋源区人民医院 (level 2) asks.
PERFORMER = "12140000405001730E"
ORDERER = "12140110405530210H"
CARD = ID_CARD_SYSTEM
LOINC = "http://loinc.org"
BATCH = 50


def _log(msg: str) -> None:
    print(f"[bench check] {msg}", file=sys.stderr, flush=True)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def cards(n: int, seed: int) -> list[str]:
    """``n`` distinct valid 身份证 numbers (Taiyuan, born 1970–1999)."""
    rng = random.Random(seed)  # noqa: S311 - a reproducible population, not a secret
    out: set[str] = set()
    while len(out) < n:
        day = datetime(1970, 1, 1) + timedelta(days=rng.randrange(365 * 30))
        out.add(gb11643(f"140105{day:%Y%m%d}{rng.randrange(1000):03d}"))
    return sorted(out)


def _potassium_bundle(batch: list[str], now: datetime, first: int) -> dict[str, Any]:
    test = next(t for panel in PANELS for t in panel.tests if t.loinc == "2823-3")
    when = ((now - timedelta(days=1)).isoformat(), (now - timedelta(hours=22)).isoformat())
    entries = []
    for i, card in enumerate(batch):
        subject = {"identifier": {"system": CARD, "value": card}}
        obs = lab_observation(
            test, Decimal("4.10"), subject, f"BK{first + i:08d}", 1, when, [_org(PERFORMER)]
        )
        entries.append({"resource": obs, "request": {"method": "POST", "url": "Observation"}})
    return {"resourceType": "Bundle", "type": "batch", "entry": entries}


def _org(inst: str) -> dict[str, Any]:
    return {"identifier": {"system": INSTITUTION_SYSTEM, "value": inst}}


def _order(card: str, n: int) -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "identifier": [{"system": "urn:oid:1.3.6.1.4.1.32473.14.3.7", "value": f"BO{n:08d}"}],
        "status": "active",
        "intent": "order",
        "code": {"coding": [{"system": LOINC, "code": "2823-3"}]},
        "subject": {"identifier": {"system": CARD, "value": card}},
        "authoredOn": datetime.now(UTC).isoformat(),
    }


def _metric(url: str, name: str) -> float:
    text = httpx.get(url, timeout=10).text
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    )


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far, from ``/proc`` (0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu(procs: dict[str, subprocess.Popen[bytes]]) -> dict[str, float]:
    return {label: _cpu_s(proc.pid) for label, proc in procs.items()}


def _cpu_per(before: dict[str, float], after: dict[str, float], n: int) -> dict[str, float | None]:
    """Milliseconds of CPU per item (``n`` items) of each service between two readings:
    a figure that holds on a machine shared with other work, unlike latencies."""
    return {
        label: (round((after[label] - before[label]) * 1000 / n, 3) if n else None)
        for label in after
    }


def baseline(settings: Settings, seconds: float) -> dict[str, Any]:
    """Pure decisions per second in this process (catalogue, registry, one prior result)."""
    from services.common.institutions import Registry
    from services.recognition.catalog import load_catalogs
    from services.recognition.decision import Order, PriorResult, decide

    now = datetime.now(UTC)
    registry = Registry.load(settings.institutions_path)
    catalog = load_catalogs(settings.recognition.catalog_path).catalog_for("140110", now)
    if catalog is None:
        raise RuntimeError("no catalogue is in force for Taiyuan")
    prior = PriorResult.model_validate(
        {
            "record_id": "0" * 32,
            "institution": PERFORMER,
            "category": "lab",
            "codes": [{"system": LOINC, "code": "2823-3"}],
            "status": "final",
            "collected_at": (now - timedelta(days=1)).isoformat(),
        }
    )
    order = Order.model_validate(
        {"institution": ORDERER, "codes": [{"system": LOINC, "code": "2823-3"}]}
    )
    n, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        decide(order, [prior], registry, catalog, now)
        n += 1
    return {"decisions_per_s": round(n / (time.perf_counter() - started), 1)}


async def _post_population(url: str, token: str, known: list[str]) -> int:
    now = datetime.now(UTC)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}
    sem = asyncio.Semaphore(4)
    failed = 0

    async def one(session: aiohttp.ClientSession, first: int) -> None:
        nonlocal failed
        body = dumps(_potassium_bundle(known[first : first + BATCH], now, first))
        async with sem:
            for _ in range(5):
                async with session.post(f"{url}/fhir", data=body, headers=headers) as resp:
                    await resp.read()
                    if resp.status == 200:
                        return
                await asyncio.sleep(1)
            failed += 1

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(one(session, i) for i in range(0, len(known), BATCH)))
    return failed


def timeline(samples: list[tuple[float, float]]) -> list[dict[str, Any]]:
    """Per-second buckets of ``(seconds since start, latency s)``: count, p50 and p99 (ms)."""
    buckets: dict[int, list[float]] = {}
    for t, latency in samples:
        buckets.setdefault(max(0, int(t)), []).append(latency)
    out = []
    for second in range(max(buckets) + 1 if buckets else 0):
        values = sorted(buckets.get(second, []))
        out.append(
            {
                "t": second,
                "count": len(values),
                "p50_ms": _ms(percentile(values, 50)),
                "p99_ms": _ms(percentile(values, 99)),
            }
        )
    return out


async def _open_loop(
    rate: float, seconds: float, call: Callable[[aiohttp.ClientSession, int], Awaitable[str]]
) -> tuple[dict[str, Any], list[tuple[float, float]]]:
    """``call(session, i)`` for ``i`` in ``range(rate * seconds)``, each started when the
    schedule says (open loop: each request is timed from the moment it should have started,
    so a hub that falls behind shows it in the latency rather than hiding it). ``call``
    answers the status to count. Returns the summary and the ``(done, latency)`` samples of
    the 200s since the start."""
    total = int(rate * seconds)
    latencies: list[float] = []
    samples: list[tuple[float, float]] = []
    statuses: dict[str, int] = {}
    conn = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=conn) as session:
        start = time.perf_counter() + 0.2

        async def one(i: int) -> None:
            due = start + i / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            try:
                status = await call(session, i)
            except aiohttp.ClientError as exc:
                status = type(exc).__name__
            done = time.perf_counter()
            latencies.append(done - due)
            if status == "200":
                samples.append((done - start, done - due))
            statuses[status] = statuses.get(status, 0) + 1

        # No cyclic collection in this process while it measures: with every request
        # scheduled up front, each full collection walked thousands of waiting requests and
        # held this loop 0.1-0.4 s, a pause that was counted as the hub's latency.
        gc.disable()
        try:
            await asyncio.gather(*(one(i) for i in range(total)))
        finally:
            gc.enable()
        elapsed = time.perf_counter() - start
    latencies.sort()
    summary = {
        "target_rps": rate,
        "seconds": seconds,
        "requests": total,
        "achieved_rps": round(total / elapsed, 1),
        "p50_ms": _ms(percentile(latencies, 50)),
        "p99_ms": _ms(percentile(latencies, 99)),
        "max_ms": _ms(latencies[-1] if latencies else None),
        "statuses": statuses,
    }
    return summary, samples


async def _check_load(
    urls: list[str], token: str, known: list[str], unknown: list[str], rate: float, seconds: float
) -> dict[str, Any]:
    rng = random.Random(7)  # noqa: S311
    headers = {"Authorization": f"Bearer {token}"}
    outcomes: dict[str, int] = {}

    async def check(session: aiohttp.ClientSession, i: int) -> str:
        card = rng.choice(unknown) if i % 10 == 9 else rng.choice(known)
        params = {"patient": f"{CARD}|{card}", "code": f"{LOINC}|2823-3"}
        url = urls[i % len(urls)]
        async with session.get(f"{url}/recognition/check", params=params, headers=headers) as resp:
            body = await resp.read()
            if resp.status == 200:
                decision = loads(body)["decision"]
                outcomes[decision] = outcomes.get(decision, 0) + 1
            return str(resp.status)

    summary, samples = await _open_loop(rate, seconds, check)
    return {**summary, "outcomes": outcomes, "timeline": timeline(samples)}


def _hook_request(card: str, i: int) -> dict[str, Any]:
    """An ``order-select`` call from the ordering hospital's HIS: one draft potassium order,
    the patient (its 身份证) in the prefetched Patient."""
    draft = f"draft-k-{i}"
    return {
        "hook": "order-select",
        "hookInstance": f"00000000-0000-4000-8000-{i:012d}",
        "context": {
            "userId": "Practitioner/bench",
            "patientId": f"bench-{i}",
            "selections": [f"ServiceRequest/{draft}"],
            "draftOrders": {
                "resourceType": "Bundle",
                "type": "collection",
                "entry": [
                    {
                        "resource": {
                            "resourceType": "ServiceRequest",
                            "id": draft,
                            "status": "draft",
                            "intent": "order",
                            "code": {"coding": [{"system": LOINC, "code": "2823-3"}]},
                            "subject": {"reference": f"Patient/bench-{i}"},
                        }
                    }
                ],
            },
        },
        "prefetch": {
            "patient": {
                "resourceType": "Patient",
                "id": f"bench-{i}",
                "identifier": [{"system": CARD, "value": card}],
            }
        },
    }


async def _hook_load(
    gateway: str, token: str, known: list[str], unknown: list[str], rate: float, seconds: float
) -> dict[str, Any]:
    """CDS Hooks ``order-select`` calls through the gateway, open loop like the checks: the
    whole path a hospital's HIS takes (gateway → recognition → check → cards)."""
    rng = random.Random(13)  # noqa: S311
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    cards_seen = 0

    async def hook(session: aiohttp.ClientSession, i: int) -> str:
        nonlocal cards_seen
        card = rng.choice(unknown) if i % 10 == 9 else rng.choice(known)
        body = dumps(_hook_request(card, i))
        url = f"{gateway}/cds-services/mrhub-recognition-select"
        async with session.post(url, data=body, headers=headers) as resp:
            answer = await resp.read()
            if resp.status == 200:
                cards_seen += len(loads(answer)["cards"])
            return str(resp.status)

    summary, _ = await _open_loop(rate, seconds, hook)
    return {**summary, "cards": cards_seen}


async def _post_orders(url: str, token: str, known: list[str], n: int, rate: float) -> set[str]:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}
    traces: set[str] = set()
    rng = random.Random(11)  # noqa: S311
    async with aiohttp.ClientSession() as session:
        start = time.perf_counter()

        async def one(i: int) -> None:
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
            body = dumps(_order(rng.choice(known), i))
            async with session.post(
                f"{url}/fhir/ServiceRequest", data=body, headers=headers
            ) as resp:
                await resp.read()
                if resp.status in (200, 201):
                    traces.add(resp.headers.get("X-Trace-Id", ""))

        await asyncio.gather(*(one(i) for i in range(n)))
    return traces


def _decision_latencies(
    bootstrap: str, traces: set[str], timeout_s: float
) -> dict[str, tuple[float, float]]:
    """Per order trace: (gateway receipt as a POSIX timestamp, receipt → decision in s)."""
    from services.common.kafka_read import read_topic

    deadline = time.monotonic() + timeout_s
    found: dict[str, tuple[float, float]] = {}
    while time.monotonic() < deadline:
        for record in read_topic(bootstrap, DECISION_MADE.name):
            env = Envelope.from_bytes(record.value)
            if env.trace_id in traces and not env.payload.get("reissue") and env.received_at:
                found[env.trace_id] = (
                    env.received_at.timestamp(),
                    (env.occurred_at - env.received_at).total_seconds(),
                )
        if len(found) >= len(traces):
            break
        time.sleep(1)
    return found


def run(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    from services.common.broker import LocalBroker, free_port
    from services.common.institutions import issue_token
    from services.common.kafka_admin import create_topics

    tmp = Path(tempfile.mkdtemp(prefix="mrhub-bench-check-"))
    broker: LocalBroker | None = None
    procs: list[subprocess.Popen[bytes]] = []
    labelled: dict[str, subprocess.Popen[bytes]] = {}
    workers = int(getattr(args, "recognition_workers", 1) or 1)
    if workers not in (1, 2):
        raise ValueError("--recognition-workers must be 1 or 2")
    report: dict[str, Any] = {
        "command": (
            f"mrhub bench check --patients {args.patients} --rate {args.rate:g} "
            f"--seconds {args.seconds:g} --orders {args.orders} "
            f"--order-rate {args.order_rate:g} --recognition-workers {workers} "
            f"--hook-rate {float(getattr(args, 'hook_rate', 0.0) or 0.0):g}"
        ),
        "cpu_count": os.cpu_count(),
        "recognition_workers": workers,
        "processes": (
            f"1 gateway, 1 patient index, {workers} recognition worker{'s' * (workers > 1)}"
        ),
    }
    try:
        registry = tmp / "institutions.yaml"
        shutil.copyfile(settings.institutions_path, registry)
        post_token = issue_token(registry, PERFORMER, label="bench check")
        ask_token = issue_token(registry, ORDERER, label="bench check")
        _log(f"baseline: pure decide() for {args.seconds:g} s")
        report["baseline"] = baseline(settings, min(args.seconds, 5.0))
        if settings.kafka.bootstrap_servers:
            bootstrap = settings.kafka.bootstrap_servers
        else:
            _log("starting a Kafka broker in a temporary directory")
            broker = LocalBroker(tmp / "kafka", settings.cache_dir, port=0, controller_port=0)
            bootstrap = broker.start(timeout_s=90)[0].bootstrap
        create_topics(
            bootstrap,
            ALL_TOPICS,
            default_partitions=settings.topic_partitions,
            replication_factor=settings.kafka.replication_factor,
        )
        ports = {name: free_port() for name in ("ingest", "patient_index", "recognition")}
        env = {
            **os.environ,
            "MRHUB_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
            "MRHUB_IDENTITY__HMAC_KEY": secrets.token_urlsafe(32),
            "MRHUB_INGEST__PORT": str(ports["ingest"]),
            "MRHUB_INSTITUTIONS_PATH": str(registry),
            "MRHUB_PATIENT_INDEX__PORT": str(ports["patient_index"]),
            "MRHUB_PATIENT_INDEX__URL": f"http://127.0.0.1:{ports['patient_index']}",
            "MRHUB_RECOGNITION__PORT": str(ports["recognition"]),
            "MRHUB_RECOGNITION__URL": f"http://127.0.0.1:{ports['recognition']}",
            "MRHUB_STATE_DIR": str(tmp / "state"),
            "MRHUB_LOG_LEVEL": "WARNING",
        }
        starts: list[tuple[str, str, dict[str, str]]] = [
            (name, name, {}) for name in ("ingest", "patient_index", "recognition")
        ]
        rec_ports = [ports["recognition"]]
        for extra in range(2, workers + 1):
            rec_ports.append(free_port())
            starts.append(
                (
                    "recognition",
                    f"recognition{extra}",
                    {
                        "MRHUB_RECOGNITION__PORT": str(rec_ports[-1]),
                        "MRHUB_STATE_DIR": str(tmp / f"state{extra}"),
                    },
                )
            )
        for service, label, overrides in starts:
            log = tmp / f"{label}.log"
            with open(log, "ab") as out:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "services.cli", "serve", service],
                        env={**env, **overrides},
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
            labelled[label] = procs[-1]
            port = int(overrides.get("MRHUB_RECOGNITION__PORT", ports[service]))
            wait_ready(f"http://127.0.0.1:{port}/readyz", procs[-1], log, 120)
        gateway = f"http://127.0.0.1:{ports['ingest']}"
        recognitions = [f"http://127.0.0.1:{port}" for port in rec_ports]
        everyone = cards(args.patients + args.patients // 10 + 1, seed=args.seed)
        known, unknown = everyone[: args.patients], everyone[args.patients :]
        _log(f"population: {len(known)} patients with a potassium result")
        t0 = time.perf_counter()
        failed = asyncio.run(_post_population(gateway, post_token, known))
        deadline = time.monotonic() + max(120.0, args.patients / 20)
        results = 0.0
        while time.monotonic() < deadline:
            results = sum(
                _metric(f"{url}/metrics", "mrhub_recognition_results_total") for url in recognitions
            )
            if results >= len(known):
                break
            time.sleep(1)
        report["population"] = {
            "patients": len(known),
            "failed_batches": failed,
            "results_held": int(results),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        _log(f"check load: {args.rate:g} requests/s for {args.seconds:g} s")
        cpu0 = _cpu(labelled)
        report["check"] = asyncio.run(
            _check_load(recognitions, ask_token, known, unknown, args.rate, args.seconds)
        )
        report["check"]["cpu_ms_per_check"] = _cpu_per(
            cpu0, _cpu(labelled), report["check"]["requests"]
        )
        report["check"]["ratio_to_baseline"] = round(
            report["check"]["achieved_rps"] / report["baseline"]["decisions_per_s"], 4
        )
        hook_rate = float(getattr(args, "hook_rate", 0.0) or 0.0)
        if hook_rate > 0:
            _log(f"CDS Hooks: order-select at {hook_rate:g}/s for {args.seconds:g} s (gateway)")
            cpu0 = _cpu(labelled)
            report["hooks"] = asyncio.run(
                _hook_load(gateway, ask_token, known, unknown, hook_rate, args.seconds)
            )
            report["hooks"]["cpu_ms_per_call"] = _cpu_per(
                cpu0, _cpu(labelled), report["hooks"]["requests"]
            )
            check_p99 = report["check"]["p99_ms"]
            hook_p99 = report["hooks"]["p99_ms"]
            report["hooks"]["p99_over_check_p99"] = (
                round(hook_p99 / check_p99, 2) if hook_p99 and check_p99 else None
            )
        _log(f"orders: {args.orders} at {args.order_rate:g}/s")
        cpu0, t_orders = _cpu(labelled), time.perf_counter()
        traces = asyncio.run(_post_orders(gateway, ask_token, known, args.orders, args.order_rate))
        found = _decision_latencies(bootstrap, traces, timeout_s=120)
        # the services' CPU from the first order to the last decision found, idle commits
        # included (the reading loop polls once a second: up to a second of idle at the end)
        order_cpu = _cpu_per(cpu0, _cpu(labelled), len(traces))
        order_cpu_s = {
            label: round(ms * len(traces) / 1000 / (time.perf_counter() - t_orders), 3)
            for label, ms in order_cpu.items()
            if ms is not None
        }
        lat = sorted(d for _, d in found.values())
        first = min((r for r, _ in found.values()), default=0.0)
        report["order_to_decision"] = {
            "orders": args.orders,
            "accepted": len(traces),
            "decided": len(lat),
            "rate_per_s": args.order_rate,
            "p50_ms": _ms(percentile(lat, 50)),
            "p99_ms": _ms(percentile(lat, 99)),
            "max_ms": _ms(lat[-1] if lat else None),
            "cpu_ms_per_order": order_cpu,
            "cpu_cores_busy": order_cpu_s,
            "timeline": timeline([(r - first, d) for r, d in found.values()]),
        }
        report["goals"] = {
            "check_p99_le_20ms_at_500rps": bool(
                args.rate >= 500
                and report["check"]["p99_ms"] is not None
                and report["check"]["p99_ms"] <= 20
            ),
            "order_to_decision_p99_le_1s": bool(
                report["order_to_decision"]["p99_ms"] is not None
                and report["order_to_decision"]["p99_ms"] <= 1000
            ),
        }
        return report
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        if broker is not None:
            broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def format_report(r: dict[str, Any]) -> str:
    c, o, p = r["check"], r["order_to_decision"], r["population"]
    return "\n".join(
        [
            f"mrhub bench check — {r['cpu_count']} CPUs, {r['processes']}",
            f"  population: {p['patients']:,} patients, {p['results_held']:,} results held "
            f"({p['seconds']} s to load)",
            f"  baseline (pure decide, this process): {r['baseline']['decisions_per_s']:,} /s",
            f"  check at {c['target_rps']:g}/s for {c['seconds']:g} s: achieved "
            f"{c['achieved_rps']:,}/s, p50 {c['p50_ms']} ms, p99 {c['p99_ms']} ms, "
            f"max {c['max_ms']} ms; statuses {c['statuses']}; outcomes {c['outcomes']}",
            f"  check rate / baseline: {c['ratio_to_baseline']}",
            f"  CPU ms per check: {_cpu_line(c['cpu_ms_per_check'])}",
            *_hook_lines(r.get("hooks")),
            f"  order → decision at {o['rate_per_s']:g}/s: {o['decided']}/{o['accepted']} "
            f"decided, p50 {o['p50_ms']} ms, p99 {o['p99_ms']} ms, max {o['max_ms']} ms",
            f"  CPU ms per order: {_cpu_line(o['cpu_ms_per_order'])}",
            f"  goals: check p99 ≤ 20 ms at 500/s: "
            f"{'met' if r['goals']['check_p99_le_20ms_at_500rps'] else 'NOT met'}; "
            f"order → decision p99 ≤ 1 s: "
            f"{'met' if r['goals']['order_to_decision_p99_le_1s'] else 'NOT met'}",
        ]
    )


def _hook_lines(h: dict[str, Any] | None) -> list[str]:
    if not h:
        return []
    return [
        f"  CDS Hooks order-select at {h['target_rps']:g}/s (gateway → recognition): achieved "
        f"{h['achieved_rps']:,}/s, p50 {h['p50_ms']} ms, p99 {h['p99_ms']} ms, max "
        f"{h['max_ms']} ms; statuses {h['statuses']}; {h['cards']} cards; p99 / check p99: "
        f"{h['p99_over_check_p99']}",
        f"  CPU ms per hook call: {_cpu_line(h['cpu_ms_per_call'])}",
    ]


def _cpu_line(per: dict[str, float | None]) -> str:
    return ", ".join(f"{label} {ms}" for label, ms in per.items())


def main(args: argparse.Namespace, settings: Settings) -> int:
    report = run(settings, args)
    if args.json:
        print(pretty(report))
    else:
        print(format_report(report))
    return 0
