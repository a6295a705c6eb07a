"""Posting the simulated stream through the gateway and comparing the hub's decisions with
the ground truth.

1. Snapshot the end offsets of the topics read afterwards.
2. **Phase 1**: post every result (transaction bundles; amendments and withdrawals on their
   own; resends; malformed messages) with aiohttp's client — concurrent, one token per hospital, 503
   retried after its ``Retry-After``, a refused connection retried with back-off.
3. Wait until the patient index has published the results (counted by trace id on
   ``mrhub.results.result-indexed.v1``) and the recognition worker's consumer group has
   committed past them: the worker has applied every result.
4. **Phase 2**: post every order (and resends, malformed ones).
5. Wait until the orders are published on ``mrhub.results.order-placed.v1`` and the
   recognition worker has committed past them — under exactly-once, its decisions are then
   committed too — and read ``mrhub.recognition.decision-made.v1`` (``read_committed``).
6. Per order (by ``order_record_id``; a decision carrying ``supersedes`` replaces the one
   before): lost, duplicated, the latest decision's reason against the expected one, and the
   yuan saved.

Only aggregate figures and institution / item names are printed: never a patient's name,
number or phone.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final

import aiohttp
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient

from mrhub_tools.simulate import fhir
from mrhub_tools.simulate.scenario import Request, Scenario, expected_saving, identity_of
from services.common.codec import loads
from services.common.fhir import FHIR_JSON
from services.common.kafka_security import kafka_python_options
from services.common.topics import DECISION_MADE, ORDER_PLACED, RESULT_INDEXED, dead_letter

RECOGNITION_GROUP: Final = "mrhub-recognition"
DEAD_LETTERS: Final = (dead_letter("patient_index").name, dead_letter("recognition").name)
#: Stop retrying one request after this long without an answer (a dead gateway).
GIVE_UP_S: Final = 600.0


@dataclass
class Progress:
    """What the run is doing, for a progress bar or a test that injects a fault mid-stream."""

    phase: str = "starting"
    done: int = 0
    total: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    retried_503: int = 0
    retried_connection: int = 0

    def at(self, phase: str, total: int) -> None:
        self.phase, self.done, self.total = phase, 0, total


@dataclass
class Options:
    url: str
    bootstrap: str
    concurrency: int = 16
    rate: float = 0.0  # requests per second; 0: as fast as the hub answers
    recognition_group: str = RECOGNITION_GROUP
    stall_s: float = 180.0  # no progress for this long while waiting: give up and report
    show_progress: bool = True
    progress: Progress = field(default_factory=Progress)
    #: filled with the records the run read, when given (a test explaining a disagreement)
    trail: Trail | None = None


@dataclass
class Trail:
    """What a run posted and read, kept for a caller that must explain a disagreement (the
    fault tests): the scenario, the trace id of each request (by index in
    ``scenario.requests``), the end offsets before the run (by topic), and the committed
    records read from result-indexed, order-placed and decision-made."""

    scenario: Scenario | None = None
    traces: dict[int, str] = field(default_factory=dict)
    start: dict[str, dict[int, int]] = field(default_factory=dict)
    indexed: list[Any] = field(default_factory=list)
    placed: list[Any] = field(default_factory=list)
    decisions: list[Any] = field(default_factory=list)


@dataclass
class Outcome:
    request: Request
    trace_id: str
    status: int | None  # None: no answer at all (gave up)
    detail: str = ""


def trace_id(scn: Scenario, index: int) -> str:
    return f"sim-{scn.config.salt or 'x'}-{index}"


# ── posting ──────────────────────────────────────────────────────────────────────────────


class _Pacer:
    def __init__(self, rate: float) -> None:
        self.gap = 1.0 / rate if rate > 0 else 0.0
        self.next = time.monotonic()

    async def wait(self) -> None:
        if not self.gap:
            return
        now = time.monotonic()
        slot = max(self.next, now)
        self.next = slot + self.gap
        if slot > now:
            await asyncio.sleep(slot - now)


async def _post(
    session: aiohttp.ClientSession,
    base_url: str,
    scn: Scenario,
    req: Request,
    trace: str,
    token: str,
    pacer: _Pacer,
    progress: Progress,
) -> Outcome:
    path, body = fhir.build(scn, req)
    url = base_url + path
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": FHIR_JSON,
        "X-Trace-Id": trace,
    }
    started = time.monotonic()
    attempt = 0
    while True:
        await pacer.wait()
        try:
            async with session.post(url, data=body, headers=headers) as resp:
                status, retry_after = resp.status, resp.headers.get("Retry-After", "1")
                answer = await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            progress.retried_connection += 1
            if time.monotonic() - started > GIVE_UP_S:
                return Outcome(req, trace, None, type(exc).__name__)
            attempt += 1
            await asyncio.sleep(min(5.0, 0.25 * 2**attempt))
            continue
        if status == 503 and time.monotonic() - started < GIVE_UP_S:
            progress.retried_503 += 1
            try:
                wait = float(retry_after)
            except ValueError:
                wait = 1.0
            await asyncio.sleep(max(0.2, min(wait, 10.0)))
            continue
        detail = ""
        if status != req.expect_status:
            detail = _issue_codes(answer)
        return Outcome(req, trace, status, detail)


def _issue_codes(answer: bytes) -> str:
    """The refusal reasons of an OperationOutcome (codes only: no diagnostics text)."""
    try:
        doc = loads(answer)
    except ValueError:
        return ""
    if not isinstance(doc, dict):
        return ""
    codes = []
    for issue in doc.get("issue", []):
        for c in (issue.get("details") or {}).get("coding", []):
            codes.append(str(c.get("code")))
    if doc.get("resourceType") == "Bundle":
        for e in doc.get("entry", []):
            codes.append(str((e.get("response") or {}).get("status", "")))
    return ",".join(codes[:5])


async def post_phase(
    scn: Scenario,
    phase: int,
    tokens: dict[str, str],
    opts: Options,
    traces: dict[int, str],
) -> list[Outcome]:
    """Post one phase's chains (each chain in order, chains concurrently)."""
    chains = scn.chains(phase)
    total = sum(len(c) for c in chains)
    progress = opts.progress
    progress.at("results" if phase == 1 else "orders", total)
    index_of = {id(r): i for i, r in enumerate(scn.requests)}
    queue: asyncio.Queue[list[Request]] = asyncio.Queue()
    for c in chains:
        queue.put_nowait(c)
    out: list[Outcome] = []
    pacer = _Pacer(opts.rate)
    bar = _bar(total, progress.phase, opts.show_progress)
    # aiohttp's client, not httpx's: about 1.7 ms of CPU per request less (docs/simulate.md),
    # on the machine the hub runs on
    connector = aiohttp.TCPConnector(limit=max(1, opts.concurrency))
    timeout = aiohttp.ClientTimeout(total=60.0, connect=10.0)
    base_url = opts.url.rstrip("/")
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            while True:
                try:
                    chain = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                for req in chain:
                    i = index_of[id(req)]
                    trace = traces.setdefault(i, trace_id(scn, i))
                    res = await _post(
                        session,
                        base_url,
                        scn,
                        req,
                        trace,
                        tokens[req.institution],
                        pacer,
                        progress,
                    )
                    out.append(res)
                    progress.done += 1
                    progress.statuses[res.status or 0] += 1
                    if bar is not None:
                        bar.update(1)

        try:
            await asyncio.gather(*(worker() for _ in range(max(1, opts.concurrency))))
        finally:
            if bar is not None:
                bar.close()
    return out


def _bar(total: int, desc: str, show: bool) -> Any:
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=f"posting {desc}", unit="req", file=sys.stderr, leave=False)


# ── Kafka ────────────────────────────────────────────────────────────────────────────────


def _consumer(bootstrap: str) -> KafkaConsumer:
    return KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        isolation_level="read_committed",
        consumer_timeout_ms=1000,
        max_partition_fetch_bytes=8 * 1024 * 1024,
        **kafka_python_options(),
    )


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = _consumer(bootstrap)
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        return {tp.partition: off for tp, off in consumer.end_offsets(tps).items()} if tps else {}
    finally:
        consumer.close()


def _trace(record: Any) -> str | None:
    for k, v in record.headers or ():
        if k == "trace_id":
            return bytes(v).decode()
    return None


def read_topic(
    bootstrap: str,
    topic: str,
    start: dict[int, int],
    keep: Callable[[str | None], bool],
    *,
    until: Callable[[list[Any]], bool] | None = None,
    stall_s: float = 60.0,
    to_end: bool = False,
    status: Callable[[str], None] | None = None,
) -> list[Any]:
    """The committed records of ``topic`` after ``start`` whose trace id ``keep`` accepts, in
    partition order; until ``until(found)`` holds (or, with ``to_end``, until the end offsets
    seen at the start are reached), or nothing new arrived for ``stall_s``."""
    consumer = _consumer(bootstrap)
    found: list[Any] = []
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, start.get(tp.partition, 0))
        end = consumer.end_offsets(tps)
        last_new = time.monotonic()
        while True:
            if until is not None and until(found):
                break
            if to_end and all(consumer.position(tp) >= end[tp] for tp in tps):
                break
            if time.monotonic() - last_new > stall_s:
                break
            batch = consumer.poll(timeout_ms=500, max_records=5000)
            for recs in batch.values():
                for r in recs:
                    last_new = time.monotonic()
                    if keep(_trace(r)):
                        found.append(r)
            if status is not None:
                status(f"{len(found)} read")
        return found
    finally:
        consumer.close()


def wait_committed(
    bootstrap: str,
    group: str,
    topic: str,
    past: dict[int, int],
    *,
    stall_s: float,
    status: Callable[[str], None] | None = None,
) -> bool:
    """Wait until ``group`` has committed beyond offset ``past[p]`` of each partition
    (a consumer commits the *next* offset to read). False if it stopped moving for
    ``stall_s`` first."""
    if not past:
        return True
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, **kafka_python_options())
    try:
        last: dict[int, int] = {}
        moved = time.monotonic()
        while True:
            offsets = admin.list_group_offsets({group: None}).get(group, {})
            now = {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic}
            if all(now.get(p, -1) > off for p, off in past.items()):
                return True
            if now != last:
                last, moved = now, time.monotonic()
            elif time.monotonic() - moved > stall_s:
                return False
            if status is not None:
                behind = sum(max(0, off + 1 - now.get(p, 0)) for p, off in past.items())
                status(f"{group} {behind} offsets behind")
            time.sleep(0.5)
    finally:
        admin.close()


def _max_offsets(records: Iterable[Any]) -> dict[int, int]:
    out: dict[int, int] = {}
    for r in records:
        out[r.partition] = max(out.get(r.partition, -1), r.offset)
    return out


# ── the run ──────────────────────────────────────────────────────────────────────────────


def _say(opts: Options, text: str) -> None:
    if opts.show_progress:
        print(text, file=sys.stderr, flush=True)


def run(scn: Scenario, tokens: dict[str, str], opts: Options) -> dict[str, Any]:
    """Post the stream, wait for the hub, compare; the summary (see :func:`summarise`)."""
    missing = {r.institution for r in scn.requests} - set(tokens)
    if missing:
        raise ValueError(f"no token for {len(missing)} institution(s) of the stream")
    t0 = time.monotonic()
    start = {
        topic: end_offsets(opts.bootstrap, topic)
        for topic in (RESULT_INDEXED.name, ORDER_PLACED.name, DECISION_MADE.name, *DEAD_LETTERS)
    }
    traces: dict[int, str] = {}
    timings: dict[str, float] = {}
    progress = opts.progress
    trail = opts.trail
    if trail is not None:
        trail.scenario, trail.traces, trail.start = scn, traces, start

    t = time.monotonic()
    outcomes = asyncio.run(post_phase(scn, 1, tokens, opts, traces))
    timings["post_results_s"] = time.monotonic() - t

    t = time.monotonic()
    progress.at("wait-results", scn.expected_result_events())
    result_traces = {traces[i] for i, r in enumerate(scn.requests) if r.phase == 1 and i in traces}
    _say(opts, f"waiting for {scn.expected_result_events()} results to be indexed and applied")
    expected = scn.expected_result_events()
    indexed = read_topic(
        opts.bootstrap,
        RESULT_INDEXED.name,
        start[RESULT_INDEXED.name],
        lambda tr: tr in result_traces,
        until=lambda found: len(found) >= expected,
        stall_s=opts.stall_s,
    )
    progress.done = len(indexed)
    if trail is not None:
        trail.indexed = indexed
    applied = wait_committed(
        opts.bootstrap,
        opts.recognition_group,
        RESULT_INDEXED.name,
        _max_offsets(indexed),
        stall_s=opts.stall_s,
    )
    timings["wait_results_s"] = time.monotonic() - t

    t = time.monotonic()
    outcomes += asyncio.run(post_phase(scn, 2, tokens, opts, traces))
    timings["post_orders_s"] = time.monotonic() - t

    t = time.monotonic()
    order_of: dict[str, int] = {}
    for i, r in enumerate(scn.requests):
        if r.order is not None and i in traces:
            order_of[traces[i]] = r.order
    n_orders = scn.expected_order_events()
    progress.at("wait-decisions", n_orders)
    _say(opts, f"waiting for {n_orders} orders to be indexed and decided")
    placed = read_topic(
        opts.bootstrap,
        ORDER_PLACED.name,
        start[ORDER_PLACED.name],
        lambda tr: tr in order_of,
        until=lambda found: len(found) >= n_orders,
        stall_s=opts.stall_s,
    )
    decided_all = wait_committed(
        opts.bootstrap,
        opts.recognition_group,
        ORDER_PLACED.name,
        _max_offsets(placed),
        stall_s=opts.stall_s,
    )
    decisions = read_topic(
        opts.bootstrap,
        DECISION_MADE.name,
        start[DECISION_MADE.name],
        lambda tr: tr in order_of,
        to_end=True,
        stall_s=opts.stall_s,
    )
    progress.done = len(decisions)
    if trail is not None:
        trail.placed, trail.decisions = placed, decisions
    dead = {
        topic: len(
            read_topic(
                opts.bootstrap, topic, start[topic], lambda tr: True, to_end=True, stall_s=10
            )
        )
        for topic in DEAD_LETTERS
    }
    timings["wait_decisions_s"] = time.monotonic() - t
    timings["total_s"] = time.monotonic() - t0
    progress.phase = "done"
    request_of = {traces[i]: r for i, r in enumerate(scn.requests) if i in traces}
    filed: dict[int, set[str]] = {}
    for rec in indexed:
        req = request_of.get(_trace(rec) or "")
        if req is not None and req.ref[0] == "result":
            ref = req.ref[1]
            if isinstance(ref, int):
                filed.setdefault(ref, set()).add(str(_payload(rec).get("master_patient_id")))
    posted = {str(_payload(rec).get("record_id")) for rec in indexed}
    summary = summarise(scn, outcomes, decisions, order_of, filed=filed, posted=posted)
    summary["hub"] = {
        "results_indexed": len(indexed),
        "results_expected": expected,
        "results_applied": applied,
        "orders_placed": len(placed),
        "orders_expected": n_orders,
        "orders_decided_committed": decided_all,
        "dead_letters": {t.split(".")[1]: n for t, n in dead.items()},
    }
    summary["seconds"] = {k: round(v, 1) for k, v in timings.items()}
    summary["requests"]["retried_503"] = progress.retried_503
    summary["requests"]["retried_connection"] = progress.retried_connection
    return summary


def _payload(record: Any) -> dict[str, Any]:
    doc = loads(record.value)
    payload: dict[str, Any] = doc["payload"]
    return payload


def summarise(
    scn: Scenario,
    outcomes: list[Outcome],
    decisions: list[Any],
    order_of: dict[str, int],
    *,
    filed: dict[int, set[str]] | None = None,
    posted: set[str] | None = None,
) -> dict[str, Any]:
    """Compare the decisions read with the ground truth (pure, given the records).

    ``filed``: result visit → the master patient ids the hub filed its records under;
    ``posted``: the record ids of every result of this run — both to explain a disagreement
    by identity (an order filed under another master than the patient's results, a match on
    a result this run never posted)."""
    c = scn.config
    visits_of: dict[str, list[int]] = {}
    for r in scn.results:
        visits_of.setdefault(identity_of(r.view), []).append(r.n)
    # per order: per order_record_id, the decisions in topic order
    by_order: dict[int, dict[str, list[dict[str, Any]]]] = {}
    for rec in decisions:
        n = order_of[_trace(rec) or ""]
        p = _payload(rec)
        by_order.setdefault(n, {}).setdefault(str(p.get("order_record_id")), []).append(p)
    lost = duplicated = agreed = 0
    saving = Decimal(0)
    per_reason: dict[str, dict[str, int]] = {}
    disagreements: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    for o in scn.orders:
        if o.expected is None:  # pragma: no cover - every order is labelled
            raise ValueError(f"order {o.n} has no expected answer")
        want = o.expected.reason
        row = per_reason.setdefault(want, {"expected": 0, "agreed": 0, "hub": 0})
        row["expected"] += 1
        found = by_order.get(o.n, {})
        if not found:
            lost += 1
            got, rule, detail = "lost", "", "no decision on the topic"
        else:
            originals = [d for ds in found.values() for d in ds if not d.get("supersedes")]
            if len(originals) > 1:
                duplicated += 1
            latest = list(found.values())[-1][-1]
            got = str(latest.get("reason"))
            matches = latest.get("matches") or []
            rule = str(matches[0].get("rule") or "") if matches else ""
            detail = str(latest.get("detail", ""))
            detail += _identity_note(
                latest,
                [filed.get(v, set()) for v in visits_of.get(identity_of(o.view), [])]
                if filed is not None
                else None,
                posted,
            )
            per_reason.setdefault(got, {"expected": 0, "agreed": 0, "hub": 0})["hub"] += 1
            if latest.get("estimated_saving_yuan") is not None:
                saving += Decimal(str(latest["estimated_saving_yuan"]))
        if got == want:
            agreed += 1
            row["agreed"] += 1
            continue
        key = (o.kind, want, got, rule)
        entry = disagreements.setdefault(
            key,
            {
                "kind": o.kind,
                "expected": want,
                "expected_rule": o.expected.rule,
                "hub": got,
                "hub_rule": rule or None,
                "count": 0,
                "item": o.item,
                "why_expected": o.story,
                "hub_detail": detail,
            },
        )
        entry["count"] += 1
    statuses = Counter(
        (r.request.ref[0] if r.request.ref[0] != "malformed" else r.request.ref[1], r.status)
        for r in outcomes
    )
    unexpected = [r for r in outcomes if r.status != r.request.expect_status]
    refused_ok = sum(
        1
        for r in outcomes
        if r.request.ref[0] == "malformed" and r.status == r.request.expect_status
    )
    n = len(scn.orders)
    return {
        "institutions": c.institutions,
        "patients": c.patients,
        "days": c.days,
        "seed": c.seed,
        "run_id": c.salt,
        "orders": n,
        "decided": n - lost,
        "agreed": agreed,
        "agreement": round(agreed / n, 6) if n else 1.0,
        "lost": lost,
        "duplicated": duplicated,
        "saving_yuan": float(saving),
        "expected_saving_yuan": float(expected_saving(scn)),
        "by_reason": dict(sorted(per_reason.items())),
        "by_kind": scn.kind_counts(),
        "disagreements": sorted(disagreements.values(), key=lambda d: -int(d["count"])),
        "requests": {
            "sent": len(outcomes),
            "results_visits": len(scn.results),
            "refused_as_expected": refused_ok,
            "unexpected": len(unexpected),
            "unexpected_samples": [
                {
                    "what": str(r.request.ref[0]),
                    "expected": r.request.expect_status,
                    "status": r.status,
                    "reasons": r.detail,
                }
                for r in unexpected[:10]
            ],
            "by_status": {f"{k[0]} {k[1]}": v for k, v in sorted(statuses.items(), key=str)},
        },
    }


def _identity_note(
    decision: dict[str, Any], filed: list[set[str]] | None, posted: set[str] | None
) -> str:
    """Why the hub may have judged another history than the scenario's, if it did."""
    notes = []
    master = decision.get("master_patient_id")
    if filed and master and not any(master in masters for masters in filed):
        notes.append(
            "the order is filed under another master patient than this patient's results "
            "(the hub did not link them)"
        )
    matches = decision.get("matches") or []
    if posted is not None and matches and str(matches[0].get("record_id")) not in posted:
        notes.append(
            "the hub matched a result this run never posted (a patient of an earlier run "
            "linked to this one?)"
        )
    return "".join(f" [identity: {n}]" for n in notes)


def format_report(s: dict[str, Any]) -> str:
    """The summary for people: aggregate figures only."""
    lines = [
        f"mrhub simulate — {s['institutions']} institutions, {s['patients']:,} patients, "
        f"{s['days']} day(s), seed {s['seed']}, run {s['run_id']}",
        f"  requests: {s['requests']['sent']:,} sent, {s['requests']['refused_as_expected']:,} "
        f"malformed refused as expected, {s['requests']['unexpected']:,} unexpected answers; "
        f"503 retried {s['requests'].get('retried_503', 0):,}, "
        f"connection retried {s['requests'].get('retried_connection', 0):,}",
    ]
    if "seconds" in s:
        sec = s["seconds"]
        lines.append(
            "  time: posting results {post_results_s}s, waiting {wait_results_s}s, posting "
            "orders {post_orders_s}s, waiting for decisions {wait_decisions_s}s, total "
            "{total_s}s".format(**sec)
        )
    lines += [
        f"  orders: {s['orders']:,}; decided {s['decided']:,}; lost {s['lost']:,}; "
        f"duplicated {s['duplicated']:,}",
        f"  agreement with the ground truth: {s['agreement']:.4%} ({s['agreed']:,} of "
        f"{s['orders']:,})",
        f"  saved: ¥{s['saving_yuan']:,.2f} (ground truth ¥{s['expected_saving_yuan']:,.2f})",
        "",
        f"  {'reason':<24}{'expected':>10}{'agreed':>10}{'hub said':>10}",
    ]
    for reason, row in s["by_reason"].items():
        lines.append(f"  {reason:<24}{row['expected']:>10,}{row['agreed']:>10,}{row['hub']:>10,}")
    if "hub" in s:
        h = s["hub"]
        dl = ", ".join(f"{k} {v}" for k, v in h["dead_letters"].items())
        lines += [
            "",
            f"  hub: results indexed {h['results_indexed']:,} of {h['results_expected']:,} "
            f"expected (applied by recognition: {h['results_applied']}); orders placed "
            f"{h['orders_placed']:,} of {h['orders_expected']:,}; dead letters: {dl}",
        ]
    if s["requests"]["unexpected_samples"]:
        lines.append("  unexpected answers (first ones):")
        for u in s["requests"]["unexpected_samples"]:
            lines.append(
                f"    {u['what']}: expected {u['expected']}, got {u['status']} {u['reasons']}"
            )
    if s["disagreements"]:
        lines += ["", "  disagreements (kind: expected → hub, count; why):"]
        for d in s["disagreements"]:
            lines.append(
                f"    {d['kind']}: {d['expected']} → {d['hub']}"
                f"{' (' + d['hub_rule'] + ')' if d['hub_rule'] else ''}, {d['count']:,}"
                f"; item {d['item']}"
            )
            lines.append(f"      ground truth: {d['why_expected']}")
            lines.append(f"      hub: {d['hub_detail']}")
    return "\n".join(lines)
