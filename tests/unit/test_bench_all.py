"""``mrhub bench all``: combining sub-reports, goals, the text summary and the HTML page."""

from __future__ import annotations

from typing import Any

from mrhub_tools.bench import all as bench_all
from mrhub_tools.bench.check import timeline


def _check(workers: int, achieved: float, p99: float, order_p99: float) -> dict[str, Any]:
    return {
        "recognition_workers": workers,
        "check": {
            "target_rps": 150.0,
            "seconds": 10.0,
            "requests": 1500,
            "achieved_rps": achieved,
            "p50_ms": 4.0,
            "p99_ms": p99,
            "max_ms": 40.0,
            "statuses": {"200": 1498, "503": 2},
            "ratio_to_baseline": 0.01,
            "timeline": [
                {"t": 0, "count": 150, "p50_ms": 4.0, "p99_ms": p99},
                {"t": 1, "count": 149, "p50_ms": 3.9, "p99_ms": p99 - 1},
            ],
        },
        "order_to_decision": {
            "orders": 300,
            "accepted": 300,
            "decided": 299,
            "rate_per_s": 30.0,
            "p50_ms": 600.0,
            "p99_ms": order_p99,
            "max_ms": order_p99 + 5,
            "timeline": [{"t": 0, "count": 30, "p50_ms": 600.0, "p99_ms": order_p99}],
        },
    }


def _subs() -> dict[str, dict[str, Any]]:
    ingest = {
        "baseline": {"single": {"resources_per_s": 6000.0}, "bundle": {"resources_per_s": 5000.0}},
        "gateway": {
            "1": {
                "single": {"resources_per_s": 900.0, "p99_ms": 80.0},
                "bundle": {"resources_per_s": 2000.0, "p99_ms": 200.0},
            },
            "2": {
                "single": {"resources_per_s": 1800.0, "p99_ms": 70.0},
                "bundle": {"resources_per_s": 3000.0, "p99_ms": 180.0},
            },
        },
        "kafka_messages_match": True,
    }
    match = {
        "dataset": "febrl4",
        "precision": 0.9991,
        "recall": 0.95,
        "f1": 0.974,
        "recall_with_review": 0.99,
        "baseline_f1": 0.9,
        "goals": {
            "precision_at_auto_link": {"goal": 0.999, "met": True},
            "recall_with_review": {"goal": 0.995, "met": False},
            "f1_vs_baseline": {"goal": 0.9, "met": True},
        },
    }
    return {
        "ingest": ingest,
        "match": match,
        "check_1": _check(1, 149.8, 12.5, 1500.0),
        "check_2": _check(2, 149.9, 10.0, 800.0),
    }


def _goal(summary: dict[str, Any], start: str) -> dict[str, Any]:
    return next(g for g in summary["goals"] if g["goal"].startswith(start))


def test_summarize_collects_the_key_figures() -> None:
    s = bench_all.summarize(_subs())
    ing = s["ingest"]
    assert ing["ratio_to_baseline"] == {"single": 0.15, "bundle": 0.4}
    assert ing["scaling_1_to_2"] == {"single": 2.0, "bundle": 1.5}
    assert s["check"]["1"]["p99_ms"] == 12.5
    assert s["check"]["1"]["ok"] == 1498 and s["check"]["1"]["not_ok"] == 2
    assert s["check"]["scaling_1_to_2"] == {"achieved_rps": 1.001, "p99": 0.8}
    assert s["order_to_decision"]["2"]["p99_ms"] == 800.0
    assert s["match"]["f1"] == 0.974
    assert [p["t"] for p in s["series"]["check_1"]] == [0, 1]
    assert set(s["series"]) == {"check_1", "check_2", "orders_1", "orders_2"}
    assert s["errors"] == {}


def test_goals_say_met_not_met_and_not_shown() -> None:
    s = bench_all.summarize(_subs())
    assert _goal(s, "gateway (1 process)")["met"] is False
    assert _goal(s, "gateway 1 → 2")["met"] is False  # bundle only 1.5×
    check = _goal(s, "check p99")
    assert check["met"] is None and "150/s" in check["note"]  # 500/s was not offered
    orders = [g for g in s["goals"] if g["goal"].startswith("order → decision")]
    assert [g["met"] for g in orders] == [False, True]
    assert _goal(s, "check 1 → 2")["met"] is None  # both reached the offered rate
    assert _goal(s, "match recall with review")["met"] is False


def test_check_p99_above_goal_at_a_lower_rate_is_not_met() -> None:
    subs = _subs()
    subs["check_1"]["check"]["p99_ms"] = 35.0
    assert _goal(bench_all.summarize(subs), "check p99")["met"] is False


def test_a_failed_sub_benchmark_leaves_the_others() -> None:
    subs = _subs()
    subs["ingest"] = {"error": "RuntimeError('broker')"}
    del subs["check_2"]
    s = bench_all.summarize(subs)
    assert s["errors"] == {"ingest": "RuntimeError('broker')"}
    assert s["ingest"]["ratio_to_baseline"] == {"single": None, "bundle": None}
    assert _goal(s, "gateway (1 process)")["met"] is None
    assert "scaling_1_to_2" not in s["check"]
    report = _report(s)
    assert "ingest FAILED" in bench_all.format_summary(report)
    assert "—" in bench_all.format_summary(report)


def _report(summary: dict[str, Any]) -> dict[str, Any]:
    return {
        "started_at": "2026-11-23T10:00:00+00:00",
        "seconds": 400,
        "machine": {"cpu_count": 2, "platform": "Linux", "python": "3.11.9"},
        "commands": bench_all.commands(),
        "summary": summary,
    }


def test_text_summary_has_figures_and_goals() -> None:
    text = bench_all.format_summary(_report(bench_all.summarize(_subs())))
    assert "0.150" in text and "2.000" in text
    assert "[NOT met] gateway (1 process)" in text
    assert "[met] order → decision p99 ≤ 1 s (2" in text
    assert "0.9991 / 0.9500 / 0.9740" in text


def test_html_has_the_figures_and_an_img_per_chart() -> None:
    summary = bench_all.summarize(_subs())
    pngs = bench_all.charts(summary)
    assert len(pngs) == 5  # ingest, checks/s, check p99, order p99, match
    assert all(data.startswith(b"\x89PNG") for _, data in pngs)
    page = bench_all.render_html(_report(summary), pngs)
    assert page.count("<img") == len(pngs)
    assert page.count("data:image/png;base64,") == len(pngs)
    assert "6,000.0" in page and "0.9991 / 0.9500 / 0.9740" in page
    assert "NOT met" in page and "mrhub bench check --patients 3000" in page


def test_html_with_fake_pngs_escapes_titles() -> None:
    page = bench_all.render_html(
        _report(bench_all.summarize({})), [("a <b>", b"\x89PNG"), ("c", b"x")]
    )
    assert page.count("<img") == 2 and "a &lt;b&gt;" in page


def test_timeline_buckets_by_second() -> None:
    series = timeline([(0.1, 0.010), (0.9, 0.020), (2.5, 0.005)])
    assert [p["t"] for p in series] == [0, 1, 2]
    assert [p["count"] for p in series] == [2, 0, 1]
    assert series[0]["p99_ms"] == 20.0 and series[1]["p99_ms"] is None
    assert timeline([]) == []
