"""``mrhub bench all``: the benchmarks of issues 2, 3 and 5 in one run, one report.

Runs, one after the other in this process (each starts and stops what it measures):

1. ``bench ingest`` with ``INGEST_SECONDS`` per phase — gateway resources/s with 1 and 2
   processes against the bare R4B validation rate;
2. ``bench match`` on ``febrl4`` — precision / recall / F1 of the auto-links;
3. ``bench check`` with one recognition worker (``CHECK`` below: population, open-loop check
   rate, orders), then again with two (``--recognition-workers 2``);
4. ``bench pipeline`` with its defaults — visits through gateway → patient index →
   recognition, orders at 100/s, and the bare Kafka loop over as many hops (issue 15).

The key figures go into one ``summary`` (:func:`summarize`), with the goals of issues 2 and 5
and whether each was met (``True`` / ``False`` / ``None`` when the run does not show it), and
per-second series of the check and order runs. ``--out DIR`` gets ``report.json`` (summary
plus every sub-report) and ``report.html`` (a self-contained page: the figures table and the
charts as inline PNG). A text summary goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from services.common.settings import Settings

INGEST_SECONDS: Final = 5.0
MATCH_DATASET: Final = "febrl4"
#: The check runs: population, open-loop check rate and length, orders and their rate.
CHECK: Final[Mapping[str, Any]] = {
    "patients": 3000,
    "rate": 150.0,
    "seconds": 10.0,
    "orders": 300,
    "order_rate": 30.0,
}
MODES: Final = ("single", "bundle")
GATEWAY_RATIO_GOAL: Final = 0.6
SCALING_GOAL: Final = 1.8  # "≈ 2×": at least 1.8×
CHECK_P99_GOAL_MS: Final = 20.0
CHECK_GOAL_RPS: Final = 500.0
ORDER_P99_GOAL_MS: Final = 1000.0
PIPELINE_ORDER_RATE_GOAL: Final = 100.0


def _log(msg: str) -> None:
    print(f"[bench all] {msg}", file=sys.stderr, flush=True)


def _get(d: Any, *keys: str) -> Any:
    """``d[k1][k2]…`` or ``None`` when any level is missing."""
    for k in keys:
        if not isinstance(d, Mapping) or k not in d:
            return None
        d = d[k]
    return d


def _ratio(a: Any, b: Any) -> float | None:
    if not isinstance(a, int | float) or not isinstance(b, int | float) or not b:
        return None
    return round(a / b, 3)


# --------------------------------------------------------------------------- summary


def summarize(subs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The key figures of the sub-reports ``ingest``, ``match``, ``check_1``, ``check_2``
    (any may be missing or hold only ``error``), the goals and the per-second series."""
    ing = subs.get("ingest", {})
    base = {m: _get(ing, "baseline", m, "resources_per_s") for m in MODES}
    gw = {p: {m: _get(ing, "gateway", p, m, "resources_per_s") for m in MODES} for p in "12"}
    ingest = {
        "baseline_resources_per_s": base,
        "gateway_resources_per_s": gw,
        "gateway_p99_ms": {
            p: {m: _get(ing, "gateway", p, m, "p99_ms") for m in MODES} for p in "12"
        },
        "ratio_to_baseline": {m: _ratio(gw["1"][m], base[m]) for m in MODES},
        "scaling_1_to_2": {m: _ratio(gw["2"][m], gw["1"][m]) for m in MODES},
        "kafka_messages_match": ing.get("kafka_messages_match"),
    }
    check: dict[str, Any] = {}
    orders: dict[str, Any] = {}
    series: dict[str, Any] = {}
    for w in "12":
        sub = subs.get(f"check_{w}", {})
        c, o = sub.get("check"), sub.get("order_to_decision")
        if isinstance(c, Mapping):
            statuses = c.get("statuses", {})
            check[w] = {
                k: c.get(k)
                for k in ("target_rps", "seconds", "requests", "achieved_rps", "p50_ms", "p99_ms")
            } | {
                "max_ms": c.get("max_ms"),
                "ok": statuses.get("200", 0),
                "not_ok": sum(n for s, n in statuses.items() if s != "200"),
                "ratio_to_baseline": c.get("ratio_to_baseline"),
            }
            series[f"check_{w}"] = c.get("timeline", [])
        if isinstance(o, Mapping):
            orders[w] = {
                k: o.get(k)
                for k in ("rate_per_s", "orders", "accepted", "decided", "p50_ms", "p99_ms")
            } | {"max_ms": o.get("max_ms")}
            series[f"orders_{w}"] = o.get("timeline", [])
    if "1" in check and "2" in check:
        check["scaling_1_to_2"] = {
            "achieved_rps": _ratio(check["2"]["achieved_rps"], check["1"]["achieved_rps"]),
            "p99": _ratio(check["2"]["p99_ms"], check["1"]["p99_ms"]),
        }
    m = subs.get("match", {})
    match = {
        k: m.get(k)
        for k in ("dataset", "precision", "recall", "f1", "recall_with_review", "baseline_f1")
    }
    errors = {k: str(v["error"]) for k, v in subs.items() if "error" in v}
    pipe = _get(subs, "pipeline", "summary")
    summary: dict[str, Any] = {
        "ingest": ingest,
        "check": check,
        "order_to_decision": orders,
        "match": match,
        "pipeline": dict(pipe) if isinstance(pipe, Mapping) else {},
        "series": series,
        "errors": errors,
    }
    summary["goals"] = goals(summary, m.get("goals", {}))
    return summary


def goals(summary: Mapping[str, Any], match_goals: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each goal, what was measured and ``met``: True, False, or None (not shown by this run)."""
    out: list[dict[str, Any]] = []
    ing = summary["ingest"]

    def add(goal: str, issue: str, measured: str, met: bool | None, note: str = "") -> None:
        out.append({"goal": goal, "issue": issue, "measured": measured, "met": met, "note": note})

    ratios = [ing["ratio_to_baseline"][m] for m in MODES]
    add(
        f"gateway (1 process) ≥ {GATEWAY_RATIO_GOAL}× bare R4B validation",
        "2",
        ", ".join(f"{m} {r}×" for m, r in zip(MODES, ratios, strict=True)),
        None if None in ratios else all(r >= GATEWAY_RATIO_GOAL for r in ratios),
    )
    scal = [ing["scaling_1_to_2"][m] for m in MODES]
    add(
        "gateway 1 → 2 processes ≈ 2× (≥ 1.8×)",
        "2",
        ", ".join(f"{m} {r}×" for m, r in zip(MODES, scal, strict=True)),
        None if None in scal else all(r >= SCALING_GOAL for r in scal),
    )
    c1 = summary["check"].get("1")
    if c1 and c1.get("p99_ms") is not None:
        p99, rate = c1["p99_ms"], c1["target_rps"]
        if rate >= CHECK_GOAL_RPS:
            met: bool | None = p99 <= CHECK_P99_GOAL_MS
            note = ""
        elif p99 > CHECK_P99_GOAL_MS:
            met, note = False, f"above {CHECK_P99_GOAL_MS:g} ms already at {rate:g}/s"
        else:
            met, note = None, f"only measured at {rate:g}/s, not at {CHECK_GOAL_RPS:g}/s"
        add(
            f"check p99 ≤ {CHECK_P99_GOAL_MS:g} ms at {CHECK_GOAL_RPS:g}/s",
            "5",
            f"p99 {p99} ms at {rate:g}/s (achieved {c1['achieved_rps']}/s)",
            met,
            note,
        )
    for w, o in sorted(summary["order_to_decision"].items()):
        p99 = o.get("p99_ms")
        add(
            f"order → decision p99 ≤ {ORDER_P99_GOAL_MS / 1000:g} s ({w} recognition worker(s))",
            "5",
            f"p99 {p99} ms at {o.get('rate_per_s')}/s, {o.get('decided')}/{o.get('accepted')} "
            "decided",
            None if p99 is None else p99 <= ORDER_P99_GOAL_MS,
        )
    sc = summary["check"].get("scaling_1_to_2")
    if sc:
        c2 = summary["check"]["2"]
        both_at_rate = all(
            (c["achieved_rps"] or 0) >= 0.95 * c["target_rps"] for c in (c1 or {}, c2) if c
        )
        r = sc["achieved_rps"]
        if r is not None and r >= SCALING_GOAL:
            met, note = True, ""
        elif both_at_rate:
            met, note = None, "open loop below capacity: both reached the offered rate; see p99"
        else:
            met, note = False, ""
        add(
            "check 1 → 2 recognition workers ≈ 2× (≥ 1.8×)",
            "8",
            f"achieved rate {r}×, p99 {sc['p99']}× (2 workers ÷ 1)",
            met,
            note,
        )
    pipe = summary.get("pipeline") or {}
    if pipe.get("order_to_decision_p99_ms") is not None:
        p99, rate = pipe["order_to_decision_p99_ms"], pipe.get("order_rate_per_s") or 0
        at_rate = rate >= PIPELINE_ORDER_RATE_GOAL
        add(
            f"pipeline: order → decision p99 ≤ {ORDER_P99_GOAL_MS / 1000:g} s "
            f"at {PIPELINE_ORDER_RATE_GOAL:g} orders/s",
            "15",
            f"p99 {p99} ms at {rate:g}/s ({pipe.get('latency_p99_ratio')}× the bare Kafka loop)",
            (p99 <= ORDER_P99_GOAL_MS) if at_rate or p99 > ORDER_P99_GOAL_MS else None,
            "" if at_rate else f"only measured at {rate:g}/s",
        )
        lost, doubled = pipe.get("orders_lost"), pipe.get("orders_doubled")
        add(
            "pipeline: every order decided exactly once",
            "15",
            f"{pipe.get('orders_decided')} decided, {lost} lost, {doubled} doubled",
            None if lost is None or doubled is None else lost == 0 and doubled == 0,
        )
    for key, label in (
        ("precision_at_auto_link", "match precision at auto-link"),
        ("recall_with_review", "match recall with review"),
        ("f1_vs_baseline", "match F1 ≥ recordlinkage baseline"),
    ):
        g = match_goals.get(key)
        if isinstance(g, Mapping):
            add(f"{label} ≥ {g.get('goal')}", "3", "", bool(g.get("met")))
    return out


def _v(x: Any, spec: str = ",.1f") -> str:
    if x is None:
        return "—"
    if isinstance(x, int | float) and not isinstance(x, bool):
        return format(x, spec)
    return str(x)


def figure_rows(summary: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(figure, value)`` rows for the table and the text summary."""
    ing = summary["ingest"]
    rows: list[tuple[str, str]] = []
    for m in MODES:
        rows += [
            (f"bare R4B validation, {m} (resources/s)", _v(ing["baseline_resources_per_s"][m])),
            (
                f"gateway 1 process, {m} (resources/s)",
                _v(ing["gateway_resources_per_s"]["1"][m]),
            ),
            (
                f"gateway 2 processes, {m} (resources/s)",
                _v(ing["gateway_resources_per_s"]["2"][m]),
            ),
            (f"gateway 1p ÷ bare validation, {m}", _v(ing["ratio_to_baseline"][m], ".3f")),
            (f"gateway 2p ÷ 1p, {m}", _v(ing["scaling_1_to_2"][m], ".3f")),
        ]
    for w, c in sorted((k, v) for k, v in summary["check"].items() if k in "12"):
        rows += [
            (
                f"check, {w} worker(s): offered / achieved (req/s)",
                f"{_v(c['target_rps'], 'g')} / {_v(c['achieved_rps'])}",
            ),
            (
                f"check, {w} worker(s): p50 / p99 / max (ms)",
                f"{_v(c['p50_ms'], '.2f')} / {_v(c['p99_ms'], '.2f')} / {_v(c['max_ms'], '.2f')}",
            ),
            (f"check, {w} worker(s): 200 answers / other", f"{c['ok']:,} / {c['not_ok']:,}"),
        ]
    if "scaling_1_to_2" in summary["check"]:
        s = summary["check"]["scaling_1_to_2"]
        rows.append(
            (
                "check 2 workers ÷ 1: achieved rate / p99",
                f"{_v(s['achieved_rps'], '.3f')} / {_v(s['p99'], '.3f')}",
            )
        )
    for w, o in sorted(summary["order_to_decision"].items()):
        rows += [
            (
                f"order → decision, {w} worker(s): decided / accepted "
                f"at {_v(o['rate_per_s'], 'g')}/s",
                f"{_v(o['decided'], 'd')} / {_v(o['accepted'], 'd')}",
            ),
            (
                f"order → decision, {w} worker(s): p50 / p99 / max (ms)",
                f"{_v(o['p50_ms'], ',.0f')} / {_v(o['p99_ms'], ',.0f')} / "
                f"{_v(o['max_ms'], ',.0f')}",
            ),
        ]
    rows += pipeline_rows(summary.get("pipeline") or {})
    mt = summary["match"]
    if mt.get("precision") is not None:
        rows.append(
            (
                f"match {mt['dataset']}: precision / recall / F1",
                f"{mt['precision']:.4f} / {mt['recall']:.4f} / {mt['f1']:.4f}",
            )
        )
    return rows


def pipeline_rows(p: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The pipeline's figures (empty when it did not run)."""
    if not p:
        return []
    cpu = p.get("cpu_us_per_record") or {}
    return [
        (
            f"pipeline: records/s end to end, flat out (H = {_v(p.get('hops'), 'd')} hops)",
            f"{_v(p.get('records_per_s'))} (bare Kafka loop {_v(p.get('ceiling_records_per_s'))}"
            f"; ratio {_v(p.get('records_per_s_ratio'), '.3f')})",
        ),
        ("pipeline: gateway, flat out (resources/s)", _v(p.get("gateway_resources_per_s"))),
        (
            "pipeline: CPU µs per record: gateway / patient index / recognition",
            " / ".join(_v(cpu.get(k), ",.0f") for k in ("gateway", "patient_index", "recognition"))
            + f" (bare loop {_v(p.get('ceiling_cpu_us_per_record'), ',.0f')})",
        ),
        (
            f"pipeline: order → decision p50 / p99 at {_v(p.get('order_rate_per_s'), 'g')}/s (ms)",
            f"{_v(p.get('order_to_decision_p50_ms'), ',.0f')} / "
            f"{_v(p.get('order_to_decision_p99_ms'), ',.0f')} (bare Kafka loop "
            f"{_v(p.get('ceiling_p50_ms'), ',.0f')} / {_v(p.get('ceiling_p99_ms'), ',.0f')})",
        ),
        (
            "pipeline: orders decided / lost / doubled",
            f"{_v(p.get('orders_decided'), 'd')} / {_v(p.get('orders_lost'), 'd')} / "
            f"{_v(p.get('orders_doubled'), 'd')}",
        ),
    ]


def _met(met: bool | None) -> str:
    return {True: "met", False: "NOT met", None: "not shown"}[met]


def format_summary(report: Mapping[str, Any]) -> str:
    summary = report["summary"]
    rows = figure_rows(summary)
    width = max(len(f) for f, _ in rows) if rows else 0
    lines = [f"mrhub bench all — {report['machine']['cpu_count']} CPUs, {report['started_at']}"]
    lines += [f"  {f:<{width}}  {v}" for f, v in rows]
    lines.append("  goals:")
    for g in summary["goals"]:
        note = f" ({g['note']})" if g["note"] else ""
        measured = f": {g['measured']}" if g["measured"] else ""
        lines.append(f"    [{_met(g['met'])}] {g['goal']} (issue {g['issue']}){measured}{note}")
    for name, err in summary["errors"].items():
        lines.append(f"  {name} FAILED: {err}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- charts


def charts(summary: Mapping[str, Any]) -> list[tuple[str, bytes]]:
    """``(title, PNG)`` per chart the summary has data for."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: list[tuple[str, bytes]] = []

    def png(title: str, draw: Callable[[Any], None]) -> None:
        fig, ax = plt.subplots(figsize=(7, 3.2), dpi=90)
        try:
            draw(ax)
            ax.set_title(title, fontsize=10)
            ax.grid(alpha=0.3)
            fig.tight_layout()
            buf = io.BytesIO()
            fig.savefig(buf, format="png")
        finally:
            plt.close(fig)
        out.append((title, buf.getvalue()))

    ing = summary["ingest"]
    bars = [
        ("bare validation", ing["baseline_resources_per_s"]),
        ("gateway 1 process", ing["gateway_resources_per_s"]["1"]),
        ("gateway 2 processes", ing["gateway_resources_per_s"]["2"]),
    ]
    if any(v[m] is not None for _, v in bars for m in MODES):

        def draw_ingest(ax: Any) -> None:
            for i, (label, vals) in enumerate(bars):
                xs = [j + (i - 1) * 0.27 for j in range(len(MODES))]
                ax.bar(xs, [vals[m] or 0 for m in MODES], width=0.27, label=label)
            ax.set_xticks(range(len(MODES)), list(MODES))
            ax.set_ylabel("resources/s")
            ax.legend(fontsize=8)

        png("Ingest throughput (resources/s)", draw_ingest)

    series = summary["series"]

    def lines(
        key: str, field: str, ylabel: str, goal: float | None = None
    ) -> Callable[[Any], None]:
        def draw(ax: Any) -> None:
            for w in "12":
                pts = [p for p in series.get(f"{key}_{w}", []) if p.get(field) is not None]
                ax.plot(
                    [p["t"] for p in pts],
                    [p[field] for p in pts],
                    marker=".",
                    label=f"{w} worker(s)",
                )
            if goal is not None:
                ax.axhline(goal, color="red", linestyle="--", linewidth=1, label="goal")
            ax.set_xlabel("second of the run")
            ax.set_ylabel(ylabel)
            ax.legend(fontsize=8)

        return draw

    if series.get("check_1") or series.get("check_2"):
        png("Checks completed per second", lines("check", "count", "requests/s"))
        png(
            "Check latency p99 per second (ms)",
            lines("check", "p99_ms", "ms", CHECK_P99_GOAL_MS),
        )
    if series.get("orders_1") or series.get("orders_2"):
        png(
            "Order → decision p99 per second of gateway receipt (ms)",
            lines("orders", "p99_ms", "ms", ORDER_P99_GOAL_MS),
        )
    mt = summary["match"]
    if mt.get("precision") is not None:

        def draw_match(ax: Any) -> None:
            names = ["precision", "recall", "recall_with_review", "f1"]
            ax.bar(names, [mt[n] or 0 for n in names])
            ax.set_ylim(min(0.9, *(mt[n] or 0 for n in names)) - 0.02, 1.0)

        png(f"Match quality on {mt['dataset']}", draw_match)
    return out


def render_html(report: Mapping[str, Any], pngs: Sequence[tuple[str, bytes]]) -> str:
    """A self-contained page: the figures table, the goals and each chart as inline PNG."""
    e = html.escape
    summary = report["summary"]
    rows = "\n".join(f"<tr><td>{e(f)}</td><td>{e(v)}</td></tr>" for f, v in figure_rows(summary))
    goal_rows = "\n".join(
        f"<tr><td>{e(g['goal'])}</td><td>{e(g['issue'])}</td><td>{e(g['measured'])}</td>"
        f"<td class='{e(_met(g['met']).replace(' ', '-'))}'>{e(_met(g['met']))}</td>"
        f"<td>{e(g['note'])}</td></tr>"
        for g in summary["goals"]
    )
    imgs = "\n".join(
        f"<h3>{e(title)}</h3>\n<img alt='{e(title)}' "
        f"src='data:image/png;base64,{base64.b64encode(data).decode()}'>"
        for title, data in pngs
    )
    errors = "".join(
        f"<p class='NOT-met'>{e(k)} failed: {e(v)}</p>" for k, v in summary["errors"].items()
    )
    m = report["machine"]
    commands = "".join(f"<li><code>{e(c)}</code></li>" for c in report.get("commands", []))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>mrhub bench all</title>
<style>
body {{ font-family: sans-serif; max-width: 60em; margin: 1em auto; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: 2px 8px; }}
.met {{ color: green; }} .NOT-met {{ color: #b00; }} .not-shown {{ color: #777; }}
</style></head><body>
<h1>mrhub bench all</h1>
<p>{e(report["started_at"])} · {m["cpu_count"]} CPUs · {e(m["platform"])} · Python {e(m["python"])}
· {report["seconds"]} s</p>
{errors}
<h2>Figures</h2>
<table><tr><th>figure</th><th>value</th></tr>
{rows}
</table>
<h2>Goals</h2>
<table><tr><th>goal</th><th>issue</th><th>measured</th><th>status</th><th>note</th></tr>
{goal_rows}
</table>
<h2>Charts</h2>
{imgs}
<h2>Sub-benchmarks</h2>
<ul>{commands}</ul>
</body></html>
"""


# --------------------------------------------------------------------------- run


def _step(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    _log(f"{name}: starting")
    t0 = time.perf_counter()
    try:
        out = fn()
    except Exception as exc:  # one failed sub-benchmark must not lose the others
        _log(f"{name}: FAILED: {exc!r}")
        return {"error": repr(exc)}
    _log(f"{name}: done in {time.perf_counter() - t0:.0f} s")
    return out


def run(settings: Settings) -> dict[str, dict[str, Any]]:
    from mrhub_tools.bench import check, ingest, match, pipeline
    from services.patient_index.matching import DEFAULT_RULES_PATH, load_rules

    def do_match() -> dict[str, Any]:
        rules = load_rules(DEFAULT_RULES_PATH)
        data = match.load_dataset(MATCH_DATASET)
        return match.build_report(data, match.run_rules(data, rules), match.run_baseline(data))

    def do_check(workers: int) -> dict[str, Any]:
        ns = argparse.Namespace(**CHECK, seed=20261122, recognition_workers=workers)
        return check.run(settings, ns)

    return {
        "ingest": _step(
            "ingest",
            lambda: ingest._run(settings, seconds=INGEST_SECONDS, concurrency=ingest.CONCURRENCY),
        ),
        "match": _step("match", do_match),
        "check_1": _step("check, 1 recognition worker", lambda: do_check(1)),
        "check_2": _step("check, 2 recognition workers", lambda: do_check(2)),
        "pipeline": _step("pipeline", lambda: pipeline.run(settings, pipeline.defaults())),
    }


def commands() -> list[str]:
    c = CHECK
    check = (
        f"mrhub bench check --patients {c['patients']} --rate {c['rate']:g} "
        f"--seconds {c['seconds']:g} --orders {c['orders']} --order-rate {c['order_rate']:g}"
    )
    return [
        f"mrhub bench ingest --seconds {INGEST_SECONDS:g}",
        f"mrhub bench match --dataset {MATCH_DATASET}",
        f"{check} --recognition-workers 1",
        f"{check} --recognition-workers 2",
        pipeline_command(),
    ]


def pipeline_command() -> str:
    from mrhub_tools.bench import pipeline

    return pipeline.command(pipeline.defaults())


def main(args: argparse.Namespace, settings: Settings) -> int:
    out = Path(getattr(args, "out", None) or "bench-report")
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    subs = run(settings)
    report: dict[str, Any] = {
        "command": f"mrhub bench all --out {out}",
        "started_at": started.isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - t0),
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "commands": commands(),
        "summary": summarize(subs),
        "sub_reports": subs,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(
        json.dumps(report, ensure_ascii=False, indent=2, default=str) + "\n", encoding="utf-8"
    )
    (out / "report.html").write_text(
        render_html(report, charts(report["summary"])), encoding="utf-8"
    )
    if getattr(args, "json", False):
        print(json.dumps(report["summary"], ensure_ascii=False, indent=2, default=str))
    else:
        print(format_summary(report))
    _log(f"wrote {out / 'report.json'} and {out / 'report.html'}")
    return 1 if report["summary"]["errors"] else 0
