"""Why a fault test's decisions disagree with the ground truth: a file of evidence.

When :func:`tests.faults.conftest.assert_exactly_one_decision_each` finds disagreements, this
module follows the first disagreeing orders through Kafka and writes what it found to
``<test tmp>/disagreements.json`` (and the worker log lines that matter to
``disagreements-logs.txt``): for each order, the ``order-placed`` message (partition, offset,
time), the patient's results on ``result-indexed`` (the ground truth says which results are
the patient's), the decision, and whether recognition's ``results`` changelog holds each of
those results — among committed records, or only among records of aborted or open
transactions. Master patient ids, record ids and trace ids are written hashed (never a
patient's number or name); the hashes are stable within one file, so entries can be matched.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient

from mrhub_tools.simulate.runner import Trail
from mrhub_tools.simulate.scenario import identity_of
from services.common.codec import loads
from services.common.kafka_security import kafka_python_options
from services.common.partitioner import partition_for
from tests.hub import Hub

RECOGNITION = "mrhub-recognition"
RESULTS_CHANGELOG = f"{RECOGNITION}-results-changelog"
RECORDS_CHANGELOG = f"{RECOGNITION}-records-changelog"
#: Worker log lines worth keeping beside the evidence (besides every warning and error).
LOG_MARKS = (
    "Worker ready",
    "Executing _on_partitions_assigned",
    "transactional producers",
    "Highwater",
    "Reading Starts",
    "Aborted tx",
    "Recovery complete",
    "Done reading",
    "Restoring state",
    "producer flush took",
    "committed before revocation",
)


def h(value: object) -> str:
    """A short stable hash of an identifier (never the identifier itself)."""
    return hashlib.sha256(str(value).encode()).hexdigest()[:10]


def _ts(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def _trace(record: Any) -> str | None:
    for k, v in record.headers or ():
        if k == "trace_id":
            return bytes(v).decode()
    return None


def _payload(record: Any) -> dict[str, Any]:
    doc = loads(record.value)
    payload: dict[str, Any] = doc.get("payload", {}) if isinstance(doc, dict) else {}
    return payload


def _result_key(rec: Any) -> bytes:
    """Recognition's ``results`` table key of a result-indexed record: its Kafka key (the
    master patient id), ``|``, its record id (services.recognition.app.result_key)."""
    return bytes(rec.key or b"") + b"|" + str(_payload(rec).get("record_id")).encode()


def _consumer(bootstrap: str, isolation: str) -> KafkaConsumer:
    return KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        isolation_level=isolation,
        consumer_timeout_ms=1000,
        max_partition_fetch_bytes=8 * 1024 * 1024,
        **kafka_python_options(),
    )


def read_keys(
    bootstrap: str, topic: str, keys: set[bytes], isolation: str
) -> dict[bytes, list[dict[str, Any]]]:
    """Every record of ``topic`` (from its beginning to its end for ``isolation``) whose key is
    in ``keys``: partition, offset, time and whether it is a tombstone."""
    consumer = _consumer(bootstrap, isolation)
    found: dict[bytes, list[dict[str, Any]]] = {}
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return found
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        idle = 0
        while not all(consumer.position(tp) >= end[tp] for tp in tps) and idle < 10:
            batch = consumer.poll(timeout_ms=500, max_records=5000)
            idle = 0 if batch else idle + 1
            for recs in batch.values():
                for r in recs:
                    if r.key in keys:
                        found.setdefault(r.key, []).append(
                            {
                                "partition": r.partition,
                                "offset": r.offset,
                                "time": _ts(r.timestamp),
                                "tombstone": r.value is None,
                            }
                        )
        return found
    finally:
        consumer.close()


def offsets_now(bootstrap: str, topics: Iterable[str]) -> dict[str, Any]:
    """Per topic and partition: the high watermark, the last stable offset (where a
    read_committed reader stops: below the high watermark while a transaction is open) and
    recognition's committed offset."""
    out: dict[str, Any] = {}
    committed_c = _consumer(bootstrap, "read_committed")
    uncommitted_c = _consumer(bootstrap, "read_uncommitted")
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, **kafka_python_options())
    try:
        group = admin.list_group_offsets({RECOGNITION: None}).get(RECOGNITION, {})
        for topic in topics:
            parts = committed_c.partitions_for_topic(topic) or set()
            tps = [TopicPartition(topic, p) for p in sorted(parts)]
            if not tps:
                continue
            lso = committed_c.end_offsets(tps)
            hw = uncommitted_c.end_offsets(tps)
            out[topic] = {
                tp.partition: {
                    "high_watermark": hw[tp],
                    "last_stable": lso[tp],
                    "group_committed": getattr(group.get(tp), "offset", None),
                }
                for tp in tps
            }
    finally:
        committed_c.close()
        uncommitted_c.close()
        admin.close()
    return out


def _reason(decision: Any) -> str:
    return str(_payload(decision).get("reason"))


def disagreeing(trail: Trail) -> list[tuple[Any, list[str], list[Any]]]:
    """(order, its trace ids, its decisions) of each order whose latest decision's reason is
    not the expected one (as :func:`mrhub_tools.simulate.runner.summarise` judges)."""
    scn = trail.scenario
    assert scn is not None
    traces_of: dict[int, list[str]] = {}
    for i, req in enumerate(scn.requests):
        if req.order is not None and i in trail.traces:
            traces_of.setdefault(req.order, []).append(trail.traces[i])
    by_trace: dict[str, list[Any]] = {}
    for rec in trail.decisions:
        by_trace.setdefault(_trace(rec) or "", []).append(rec)
    out = []
    for o in scn.orders:
        traces = traces_of.get(o.n, [])
        decisions = [d for t in traces for d in by_trace.get(t, [])]
        got = _reason(decisions[-1]) if decisions else "lost"
        if o.expected is not None and got != o.expected.reason:
            out.append((o, traces, decisions))
    return out


def explain(trail: Trail, hub: Hub, *, limit: int = 20) -> Path:
    """Write the evidence for the disagreements of ``trail``'s run to ``hub.tmp`` and return
    the path of the JSON file."""
    scn = trail.scenario
    assert scn is not None
    bootstrap = hub.bootstrap
    wrong = disagreeing(trail)
    request_of = {t: scn.requests[i] for i, t in trail.traces.items()}
    visits_of: dict[str, list[int]] = {}
    for r in scn.results:
        visits_of.setdefault(identity_of(r.view), []).append(r.n)
    indexed_by_visit: dict[int, list[Any]] = {}
    for rec in trail.indexed:
        req = request_of.get(_trace(rec) or "")
        if req is not None and req.ref[0] == "result" and isinstance(req.ref[1], int):
            indexed_by_visit.setdefault(req.ref[1], []).append(rec)
    placed_by_trace: dict[str, list[Any]] = {}
    for rec in trail.placed:
        placed_by_trace.setdefault(_trace(rec) or "", []).append(rec)

    # every result key of every disagreeing order's patient, to look up in the changelogs
    result_keys: set[bytes] = set()
    record_keys: set[bytes] = set()
    for o, _, _ in wrong:
        for v in visits_of.get(identity_of(o.view), []):
            for rec in indexed_by_visit.get(v, []):
                rid = str(_payload(rec).get("record_id"))
                result_keys.add(_result_key(rec))
                record_keys.add(rid.encode())
    committed = read_keys(bootstrap, RESULTS_CHANGELOG, result_keys, "read_committed")
    uncommitted = read_keys(bootstrap, RESULTS_CHANGELOG, result_keys, "read_uncommitted")
    records_committed = read_keys(bootstrap, RECORDS_CHANGELOG, record_keys, "read_committed")

    def result_entry(rec: Any) -> dict[str, Any]:
        p = _payload(rec)
        master, rid = str(p.get("master_patient_id")), str(p.get("record_id"))
        key = _result_key(rec)
        previous = p.get("previous_master_patient_id")
        return {
            "master": h(master),
            "key_is_master": bytes(rec.key or b"") == master.encode(),
            "record": h(rid),
            "change": p.get("change"),
            "previous_master": h(previous) if previous else None,
            "partition": rec.partition,
            "offset": rec.offset,
            "time": _ts(rec.timestamp),
            "changelog_committed": committed.get(key, []),
            "changelog_uncommitted_only": [
                e for e in uncommitted.get(key, []) if e not in committed.get(key, [])
            ],
            "records_changelog_committed": len(records_committed.get(rid.encode(), [])),
        }

    orders: list[dict[str, Any]] = []
    tally = {"orders": len(wrong), "results_of_wrong_orders": 0, "in_committed_changelog": 0}
    for o, traces, decisions in wrong:
        results = [
            result_entry(rec)
            for v in visits_of.get(identity_of(o.view), [])
            for rec in indexed_by_visit.get(v, [])
        ]
        tally["results_of_wrong_orders"] += len(results)
        tally["in_committed_changelog"] += sum(1 for r in results if r["changelog_committed"])
        if len(orders) >= limit:
            continue
        placed = [rec for t in traces for rec in placed_by_trace.get(t, [])]
        orders.append(
            {
                "order": o.n,
                "kind": o.kind,
                "expected": o.expected.reason if o.expected else None,
                "traces": [h(t) for t in traces],
                "placed": [
                    {
                        "master": h(rec.key.decode() if rec.key else None),
                        "partition": rec.partition,
                        "partition_of_master": partition_for(rec.key, hub.partitions)
                        if rec.key
                        else None,
                        "offset": rec.offset,
                        "time": _ts(rec.timestamp),
                    }
                    for rec in placed
                ],
                "decisions": [
                    {
                        "reason": _reason(d),
                        "master": h(_payload(d).get("master_patient_id")),
                        "revision": _payload(d).get("revision"),
                        "partition": d.partition,
                        "offset": d.offset,
                        "time": _ts(d.timestamp),
                    }
                    for d in decisions
                ],
                "patient_results": results,
            }
        )
    evidence = {
        "written": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "commit_interval_min_s": os.environ.get("MRHUB_KAFKA__COMMIT_INTERVAL_MIN_S"),
        "hub_events": hub.events,
        "tally": tally,
        "offsets_now": offsets_now(
            bootstrap,
            [
                RESULTS_CHANGELOG,
                RECORDS_CHANGELOG,
                f"{RECOGNITION}-orders-changelog",
                "mrhub.results.result-indexed.v1",
                "mrhub.results.order-placed.v1",
            ],
        ),
        "run_start_offsets": trail.start,
        "orders": orders,
    }
    path = hub.tmp / "disagreements.json"
    path.write_text(json.dumps(evidence, indent=1, default=str), encoding="utf-8")
    (hub.tmp / "disagreements-logs.txt").write_text(log_excerpt(hub), encoding="utf-8")
    return path


def log_excerpt(hub: Hub) -> str:
    """Every process's warnings, errors and recovery milestones, in full."""
    out = []
    for name in hub.procs:
        path = hub.log(name)
        if not path.exists():
            continue
        out.append(f"--- {name} ---")
        for raw in path.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(raw)
            except ValueError:
                out.append(raw[:400])
                continue
            msg = str(rec.get("msg", ""))
            if rec.get("level") in ("warning", "error", "critical") or any(
                m in msg for m in LOG_MARKS
            ):
                out.append(f"{rec.get('ts', '')[11:23]} {rec.get('level')} {msg[:4000]}")
    return "\n".join(out)
