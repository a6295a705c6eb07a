"""``mrhub bench pipeline --nodes 3 --workers 1,2,3``: the pipeline with 1, 2 and 3 workers
per service on one Kafka cluster, and how records/s and records/s per core scale.

Starts one KRaft cluster of ``--nodes`` (three: the hub's topics, changelogs, offsets and
transaction state at replication factor 3, ``min.insync.replicas`` 2) in a temporary
directory, or uses ``MRHUB_KAFKA__BOOTSTRAP_SERVERS``. Then, once per worker count ``N`` in
``--workers``, in that order: ``N`` gateways (one port, ``SO_REUSEPORT``), ``N`` patient index
workers and ``N`` recognition workers (each its own port and state directory; the services
reach worker 0, which forwards to the owner), and the pipeline bench's phases without its
hops and ceiling (:func:`mrhub_tools.bench.pipeline.run_hub`): the steady visits, the visits
flat out, then the orders, each decided exactly once or counted lost or doubled. The
processes are stopped before the next count starts.

Runs share the cluster and its topics, like a redeploy with more workers: the consumer groups
resume where the previous run left off (they do not read its data again), each worker restores
its tables from the changelogs into a fresh state directory, and each run's patients are new
(the scenario's identifiers are salted per run), so no run's figures count another's records.

Figures per run, of the flat-out phase (first post → its last record indexed): records/s end
to end; CPU seconds of every hub process (gateways, patient index and recognition workers;
the brokers' apart); cores used = hub CPU s ÷ wall s; records/s per core used = records ÷
hub CPU s; and each as a ratio to the first run (1 worker per service) of the same
invocation. Wall-clock figures depend on what else runs; CPU per record much less. On a
machine with C cores, more processes cannot use more than C cores: records/s per core is the
figure that carries to a bigger machine.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from mrhub_tools.bench import pipeline
from services.common.settings import Settings

#: The CPU time the table calls the hub's: every process of the three services.
HUB_CPU: Final = tuple(pipeline.CPU_NAMES[s] for s in pipeline.SERVICES)


def _sum(values: Sequence[float | None]) -> float | None:
    return None if not values or None in values else round(sum(v or 0.0 for v in values), 2)


def _div(a: float | None, b: float | None, digits: int = 1) -> float | None:
    return None if a is None or not b else round(a / b, digits)


def scale_row(report: Mapping[str, Any]) -> dict[str, Any]:
    """One run's row: its flat-out throughput and CPU, and its orders' exactly-once counts."""
    flat = report.get("flat_out") or {}
    orders = report.get("orders") or {}
    cpu = flat.get("cpu_seconds") or {}
    records = flat.get("records_indexed") or 0
    wall = flat.get("end_to_end_seconds")
    hub_cpu = _sum([cpu.get(n) for n in HUB_CPU])
    return {
        "workers": report.get("workers"),
        "partitions": report.get("topic_partitions"),
        "brokers": report.get("brokers"),
        "records": records,
        "records_expected": flat.get("records_expected"),
        "wall_s": wall,
        "records_per_s": flat.get("records_per_s"),
        "hub_cpu_s": hub_cpu,
        "cpu_s": {n: cpu.get(n) for n in HUB_CPU},
        "kafka_cpu_s": cpu.get("kafka"),
        "cores_used": _div(hub_cpu, wall, 2),
        "records_per_core_s": _div(float(records), hub_cpu) if records else None,
        "orders": orders.get("orders"),
        "decided": orders.get("decided"),
        "lost": orders.get("lost"),
        "doubled": orders.get("doubled"),
        "agreement": orders.get("agreement"),
    }


#: The figures a row is compared on, against the first run's.
RATIO_OF: Final = ("records_per_s", "hub_cpu_s", "cores_used", "records_per_core_s")


def scale_rows(reports: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Every run's row, with ``ratios``: each of :data:`RATIO_OF` ÷ the first run's (None
    where either is missing or the first is 0)."""
    rows = [scale_row(r) for r in reports]
    if not rows:
        return rows
    base = rows[0]
    for row in rows:
        row["ratios"] = {k: _div(row[k], base[k], 2) for k in RATIO_OF}
    return rows


def _v(x: Any, spec: str = ",.1f") -> str:
    return pipeline._v(x, spec)


def format_scale(r: Mapping[str, Any]) -> str:
    """The scaling run as text: one line per worker count, then what the figures mean."""
    rows: list[Mapping[str, Any]] = r.get("rows") or []
    cores = r.get("cpu_count")
    lines = [
        f"mrhub bench pipeline, scaling — {r.get('brokers') or '?'} brokers (replication "
        f"factor {r.get('replication_factor')}), {r.get('topic_partitions')} partitions, "
        f"{cores} CPUs shared by everything (brokers, hub, this bench)",
        f"  {r.get('command', '')}",
        "  workers/service  records   wall s  records/s  hub CPU s  cores used  "
        "records/s/core   ×records/s  ×cores  ×per core   orders decided/lost/doubled",
    ]
    for row in rows:
        ratios = row.get("ratios") or {}
        lines.append(
            f"  {row['workers']!s:>15}  {row['records']:>7}  {_v(row['wall_s']):>7}  "
            f"{_v(row['records_per_s']):>9}  {_v(row['hub_cpu_s']):>9}  "
            f"{_v(row['cores_used'], '.2f'):>10}  {_v(row['records_per_core_s']):>14}  "
            f"{_v(ratios.get('records_per_s'), '.2f'):>11}  "
            f"{_v(ratios.get('cores_used'), '.2f'):>6}  "
            f"{_v(ratios.get('records_per_core_s'), '.2f'):>9}   "
            f"{row['decided']}/{row['lost']}/{row['doubled']} of {row['orders']}"
            f" (agreement {row['agreement']})"
        )
    for row in rows:
        cpu = ", ".join(f"{k} {_v(v, '.1f')}" for k, v in (row.get("cpu_s") or {}).items())
        lines.append(
            f"  {row['workers']} per service: CPU s {cpu}; brokers {_v(row['kafka_cpu_s'])}"
        )
    lines += [
        "  records/s: flat-out visits, first post → last canonical record indexed (wall "
        "clock); hub CPU s: gateways + patient index + recognition processes over that time; "
        "cores used = hub CPU s ÷ wall s; ×: ÷ the first run's.",
        f"  This machine has {cores} cores for brokers, services and the bench together: more "
        "processes cannot add cores here. Records/s per core is the figure that carries to "
        "a bigger machine; records/s scales with workers only where cores are free.",
    ]
    for run in r.get("runs") or ():
        if run.get("restarted_at_start"):
            lines.append(
                f"  NOTE: {run['workers']} workers: exited while the group rebalanced at start "
                f"and restarted once (faust table recovery): {', '.join(run['restarted_at_start'])}"
            )
    for text in r.get("problems") or ():
        lines.append(f"  PROBLEM: {text}")
    return "\n".join(lines)


def run(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    """One cluster; the pipeline once per worker count of ``args.workers``."""
    counts = pipeline.parse_workers(args.workers)
    tmp = Path(tempfile.mkdtemp(prefix="mrhub-bench-scale-"))
    kafka: pipeline.Kafka | None = None
    reports: list[dict[str, Any]] = []
    ok = False
    try:
        kafka = pipeline.open_kafka(settings, args.nodes, tmp / "kafka")
        hub_settings = pipeline.with_replication(settings, kafka.replication_factor)
        for n in counts:
            pipeline._log(f"scaling: {n} worker(s) per service")
            run_args = argparse.Namespace(**{**vars(args), "workers": str(n)})
            try:
                reports.append(
                    pipeline.run_hub(
                        hub_settings,
                        run_args,
                        kafka,
                        tmp / f"workers-{n}",
                        workers=n,
                        ceiling_too=False,
                    )
                )
            except Exception as exc:  # the other counts still run; this one is a problem
                pipeline._log(f"{n} workers: the run failed: {exc!r}")
                reports.append({"workers": n, "problems": [f"the run failed: {exc!r}"]})
        problems = [f"{r['workers']} workers: {p}" for r in reports for p in r["problems"]]
        # a worker restarted at start: its first log is kept too
        ok = not problems and not any(r.get("restarted_at_start") for r in reports)
        return {
            "command": pipeline.command(args),
            "cpu_count": os.cpu_count(),
            "brokers": len(kafka.pids) or None,
            "replication_factor": kafka.replication_factor,
            "topic_partitions": settings.topic_partitions,
            "commit_interval_s": settings.kafka.commit_interval_s,
            "rows": scale_rows(reports),
            "runs": reports,
            "problems": problems,
        }
    finally:
        pipeline.close_run(kafka, tmp, ok=ok)


def main(args: argparse.Namespace, settings: Settings) -> int:
    report = run(settings, args)
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False, default=str))
    else:
        print(format_scale(report))
    return 1 if report["problems"] else 0
