"""``mrhub bench pipeline``: the pure parts — percentiles, CPU accounting from /proc text,
the hop count, per-order exactly-once counting, the report and its summary (no timing)."""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
from typing import Any

import pytest

from mrhub_tools.bench import all as bench_all
from mrhub_tools.bench import pipeline
from mrhub_tools.bench._common import (
    cpu_per_record_us,
    parse_proc_stat,
    percentile,
    tree_cpu_ticks,
)
from services.common.topics import RESOURCE_ACCEPTED, RESULT_INDEXED

#: /proc/<pid>/stat of a faust worker: the command name holds a space and a ``)``.
STAT = (
    "4242 (python3.11 a) b) S 4200 4242 4242 0 -1 4194560 81234 0 12 0 "
    "1500 250 0 0 20 0 9 0 123456 987654321 45678 18446744073709551615 1 1 0 0 0 0 0 "
    "16781312 17640 0 0 0 17 1 0 0 0 0 0"
)


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None


def test_proc_stat_gives_pid_parent_and_user_plus_system_ticks() -> None:
    assert parse_proc_stat(STAT) == (4242, 4200, 1500 + 250)


def test_a_process_is_charged_for_its_children_not_its_siblings() -> None:
    rows = [
        (100, 1, 50),  # the service
        (101, 100, 30),  # a worker it forked
        (102, 101, 5),  # and that worker's child
        (200, 1, 999),  # another service
    ]
    assert tree_cpu_ticks(rows, 100) == 85
    assert tree_cpu_ticks(rows, 200) == 999
    assert tree_cpu_ticks(rows, 300) is None  # gone


def test_cpu_per_record_is_the_change_divided_by_records_in_microseconds() -> None:
    before = {"gateway": 10.0, "patient_index": 20.0, "recognition": None}
    after = {"gateway": 10.5, "patient_index": 22.0, "recognition": 3.0}
    assert cpu_per_record_us(before, after, 1000) == {
        "gateway": 500.0,
        "patient_index": 2000.0,
        "recognition": None,
    }
    assert cpu_per_record_us(before, after, 0)["gateway"] is None


def test_hop_candidates_are_the_gateway_topic_the_index_stages_and_recognition_input() -> None:
    topics = {
        "mrhub-patient-index-by-record",
        "mrhub-patient-index-by-identity",
        "mrhub-patient-index-identities-changelog",
        "mrhub-patient-index-__assignor-__leader",
        "mrhub-recognition-forget",
        RESOURCE_ACCEPTED.name,
        RESULT_INDEXED.name,
    }
    assert pipeline.hop_candidates(topics) == [
        RESOURCE_ACCEPTED.name,
        "mrhub-patient-index-by-identity",
        "mrhub-patient-index-by-record",
        RESULT_INDEXED.name,
    ]


def test_hops_are_the_topics_the_probe_crossed_in_the_order_it_crossed_them() -> None:
    candidates = [
        RESOURCE_ACCEPTED.name,
        "mrhub-patient-index-by-block",
        "mrhub-patient-index-by-identity",
        "mrhub-patient-index-by-master",
        "mrhub-patient-index-by-record",
        RESULT_INDEXED.name,
    ]
    carrying = {
        RESOURCE_ACCEPTED.name: 1000.0,
        "mrhub-patient-index-by-identity": 1100.0,
        "mrhub-patient-index-by-record": 1200.0,
        "mrhub-patient-index-by-master": 1300.0,
        RESULT_INDEXED.name: 1400.0,
    }
    hops = pipeline.count_hops(candidates, carrying)
    assert hops["measured"] is True
    assert hops["hops"] == 5
    assert hops["path"] == [
        RESOURCE_ACCEPTED.name,
        "mrhub-patient-index-by-identity",
        "mrhub-patient-index-by-record",
        "mrhub-patient-index-by-master",
        RESULT_INDEXED.name,
    ]


def test_a_probe_that_never_arrived_counts_every_candidate_and_says_so() -> None:
    candidates = [RESOURCE_ACCEPTED.name, "mrhub-patient-index-by-x", RESULT_INDEXED.name]
    hops = pipeline.count_hops(candidates, {RESOURCE_ACCEPTED.name: 1.0})
    assert hops == {"hops": 3, "path": candidates, "measured": False}


def test_orders_are_counted_decided_exactly_once_lost_and_doubled() -> None:
    decisions: list[tuple[str, dict[str, Any]]] = [
        ("o1", {"reason": "recognised"}),
        ("o2", {"reason": "no-prior-result"}),
        ("o2", {"reason": "no-prior-result"}),  # doubled
        ("o3", {"reason": "recognised"}),
        ("o3", {"reason": "recognised", "reissue": True}),  # a re-issue is not a second
        ("zz", {"reason": "recognised"}),  # not an order of this run
    ]
    counts = pipeline.decisions_by_order(decisions, ["o1", "o2", "o3", "o4"])
    assert counts == {"orders": 4, "decided": 3, "exactly_once": 2, "lost": 1, "doubled": 1}


def test_visits_are_split_by_whole_chains() -> None:
    chains = [["v0", "v0-amended"], ["v1"], ["v2"], ["v3", "v3-withdrawn"]]
    assert pipeline.split_chains(chains) == (
        ["v0", "v0-amended", "v2"],
        ["v1", "v3", "v3-withdrawn"],
    )


def test_resources_of_a_bundle_are_its_entries() -> None:
    bundle = {"resourceType": "Bundle", "entry": [{}, {}, {}]}
    assert pipeline.resources_in(json.dumps(bundle).encode()) == 3
    assert pipeline.resources_in(b'{"resourceType": "Observation"}') == 1


def _phase(offered: float | None) -> dict[str, Any]:
    return pipeline.phase_report(
        requests=100,
        accepted=100,
        resources=400,
        post_s=4.0,
        first_post=1000.0,
        seen=[(1001.0 + i / 100, 1000.0 + i / 100) for i in range(300)],
        expected=300,
        cpu_before={"gateway": 1.0, "patient_index": 2.0, "recognition": 3.0},
        cpu_after={"gateway": 1.3, "patient_index": 2.9, "recognition": 3.15},
        offered_per_s=offered,
    )


def test_a_phase_reports_gateway_rate_records_per_second_latency_and_cpu() -> None:
    p = _phase(None)
    assert p["gateway_resources_per_s"] == 100.0
    assert p["records_indexed"] == 300
    assert p["end_to_end_seconds"] == 3.99  # first post → last record seen
    assert p["records_per_s"] == round(300 / 3.99, 1)
    assert p["post_to_indexed"]["p50_ms"] == 1000.0
    assert p["cpu_us_per_record"] == {
        "gateway": 1000.0,
        "patient_index": 3000.0,
        "recognition": 500.0,
    }


def _report() -> dict[str, Any]:
    return {
        "command": "mrhub bench pipeline",
        "cpu_count": 2,
        "processes": "1 gateway, 1 patient index, 1 recognition worker",
        "commit_interval_s": 0.1,
        "topic_partitions": 6,
        "steady": _phase(20.0),
        "flat_out": _phase(None),
        "orders": {
            "rate_per_s": 100.0,
            "posted": 10,
            "accepted": 10,
            "orders": 10,
            "decided": 10,
            "exactly_once": 10,
            "lost": 0,
            "doubled": 0,
            "agreement": 1.0,
            "order_to_decision": {"count": 10, "p50_ms": 400.0, "p99_ms": 900.0, "max_ms": 950.0},
            "cpu_us_per_order": {"gateway": 900.0, "patient_index": 2000.0, "recognition": 700.0},
        },
        "hops": {
            "hops": 3,
            "used": 3,
            "measured": True,
            "path": [RESOURCE_ACCEPTED.name, "mrhub-patient-index-by-x", RESULT_INDEXED.name],
        },
        "ceiling": {
            "hops": 3,
            "stages": 3,
            "topics": 4,
            "commit_interval_s": 0.1,
            "message_bytes": 1200,
            "flat_out": {
                "offered_per_s": None,
                "messages": 300,
                "arrived": 300,
                "seconds": 0.5,
                "records_per_s": 600.0,
                "latency": {"count": 300, "p50_ms": 200.0, "p99_ms": 400.0, "max_ms": 410.0},
                "cpu_us_per_record": 800.0,
            },
            "steady": {
                "offered_per_s": 100.0,
                "messages": 10,
                "arrived": 10,
                "seconds": 0.3,
                "records_per_s": 33.3,
                "latency": {"count": 10, "p50_ms": 200.0, "p99_ms": 300.0, "max_ms": 300.0},
                "cpu_us_per_record": 900.0,
            },
        },
        "seconds": {"start": 30.0, "total": 90.0},
    }


def test_summary_gives_the_ratios_hub_over_ceiling() -> None:
    s = pipeline.summary(_report())
    assert s["hops"] == 3
    assert s["records_per_s"] == round(300 / 3.99, 1)
    assert s["records_per_s_ratio"] == round(s["records_per_s"] / 600.0, 3)
    assert s["latency_p50_ratio"] == 2.0
    assert s["latency_p99_ratio"] == 3.0
    assert s["services_cpu_us_per_record"] == 4500.0
    assert (s["orders_lost"], s["orders_doubled"]) == (0, 0)


def test_a_missing_ceiling_leaves_the_ratios_empty() -> None:
    r = _report()
    del r["ceiling"]
    s = pipeline.summary(r)
    assert s["records_per_s_ratio"] is None and s["latency_p99_ratio"] is None


def test_text_report_names_every_figure() -> None:
    r = _report()
    r["summary"] = pipeline.summary(r)
    text = pipeline.format_report(r)
    for needle in (
        "offered 20 visits/s",
        "flat out",
        "resources/s",
        "records/s end to end",
        "CPU µs per record: gateway 1,000, patient_index 3,000, recognition 500",
        "10/10 decided (10 exactly once, 0 lost, 0 doubled)",
        "order → decision p50 400 ms, p99 900 ms",
        "hops H = 3 (measured)",
        "Kafka ceiling (bare transactional loop, 3 stages",
        "hub ÷ ceiling",
        "p99 3.00×",
    ):
        assert needle in text, needle


def test_defaults_make_the_command_bench_all_runs() -> None:
    assert pipeline.command(pipeline.defaults()) == (
        f"mrhub bench pipeline --visits {pipeline.VISITS} --visit-rate {pipeline.VISIT_RATE:g} "
        f"--posters {pipeline.POSTERS} --order-rate {pipeline.ORDER_RATE:g}"
    )
    assert pipeline.command(pipeline.defaults()) in bench_all.commands()


def test_bench_all_carries_the_pipeline_figures_and_goals() -> None:
    r = _report()
    r["summary"] = pipeline.summary(r)
    s = bench_all.summarize({"pipeline": r})
    assert s["pipeline"]["latency_p99_ratio"] == 3.0
    goals = {g["goal"]: g for g in s["goals"] if g["issue"] == "15"}
    assert goals["pipeline: order → decision p99 ≤ 1 s at 100 orders/s"]["met"] is True
    assert goals["pipeline: every order decided exactly once"]["met"] is True
    rows = dict(bench_all.figure_rows(s))
    assert any(k.startswith("pipeline: records/s end to end") for k in rows)
    assert rows["pipeline: orders decided / lost / doubled"] == "10 / 0 / 0"
    text = bench_all.format_summary(
        {"summary": s, "machine": {"cpu_count": 2}, "started_at": "2026-12-05T08:00:00+00:00"}
    )
    assert "pipeline: order → decision p50 / p99" in text


def test_bench_all_without_the_pipeline_has_no_pipeline_rows() -> None:
    s = bench_all.summarize({})
    assert s["pipeline"] == {}
    assert not [k for k, _ in bench_all.figure_rows(s) if k.startswith("pipeline")]


def test_the_cli_runs_it_with_its_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """The parser lives in services/cli.py without importing the tools; the handler fills in
    the bench's own defaults when it imports it."""
    from services.cli import main

    seen: list[argparse.Namespace] = []

    def fake_main(args: argparse.Namespace, _settings: Any) -> int:
        seen.append(args)
        return 0

    monkeypatch.setattr(pipeline, "main", fake_main)
    assert main(["bench", "pipeline", "--json"]) == 0
    [args] = seen
    assert (args.which, args.visits, args.visit_rate, args.posters, args.hops) == (
        "pipeline",
        pipeline.VISITS,
        pipeline.VISIT_RATE,
        pipeline.POSTERS,
        0,
    )
    assert args.order_rate == pipeline.ORDER_RATE  # 100/s for the pipeline, 50/s for check


def test_problems_are_printed() -> None:
    r = _report()
    r["problems"] = ["steady: 10 of 300 canonical records seen (patient_index exited 1)"]
    assert "PROBLEM: steady: 10 of 300" in pipeline.format_report(r)


def test_the_report_says_when_commits_are_adaptive() -> None:
    r = _report()
    r["commit_interval_s"] = r["ceiling"]["commit_interval_s"] = 1.0
    r["commit_interval_min_s"] = r["ceiling"]["commit_interval_min_s"] = 0.1
    r["summary"] = pipeline.summary(r)
    text = pipeline.format_report(r)
    assert "commit every 1 s (0.1 s when caught up), 6 partitions" in text
    assert "3 stages, commit every 1 s (0.1 s when caught up), 1200 B messages" in text
    fixed = _report()
    fixed["summary"] = pipeline.summary(fixed)
    assert "when caught up" not in pipeline.format_report(fixed)


class _ScriptedConsumer:
    """``getmany`` hands out the scripted (batch, last stable offset) pairs in turn ({} =
    nothing arrived in time), then sets ``stop`` and returns nothing. One partition, "t-0";
    its position is the offset after the last record handed out."""

    def __init__(self, script: list[tuple[dict[str, list[Any]], int]], stop: asyncio.Event):
        self.script = list(script)
        self.stop = stop
        self.lso = 0
        self.next = 0

    def assignment(self) -> set[str]:
        return {"t-0"}

    def last_stable_offset(self, tp: str) -> int:
        return self.lso

    async def position(self, tp: str) -> int:
        return self.next

    async def getmany(self, timeout_ms: int) -> dict[str, list[Any]]:
        if not self.script:
            self.stop.set()
            return {}
        batch, self.lso = self.script.pop(0)
        for records in batch.values():
            self.next = records[-1].offset + 1
        return batch


class _RecordingProducer:
    """Records each transaction's offsets and what was sent inside it."""

    def __init__(self) -> None:
        self.transactions: list[dict[str, Any]] = []
        self.open: dict[str, Any] | None = None

    @contextlib.asynccontextmanager
    async def transaction(self) -> Any:
        self.open = {"sent": [], "offsets": None}
        yield
        self.transactions.append(self.open)
        self.open = None

    async def send_offsets_to_transaction(self, offsets: dict[Any, int], group: str) -> None:
        assert self.open is not None
        self.open["offsets"] = dict(offsets)


def _loop_transactions(min_interval_s: float | None) -> list[dict[str, Any]]:
    record = collections.namedtuple("record", "offset value")

    async def go() -> list[dict[str, Any]]:
        stop = asyncio.Event()
        script = [
            ({"t-0": [record(0, b"a"), record(1, b"b")]}, 2),  # read to the end: caught up
            ({"t-0": [record(2, b"c")]}, 5),  # more is committed upstream: not caught up
            ({}, 5),
            ({"t-0": [record(3, b"d"), record(4, b"e")]}, 5),  # caught up again
        ]
        consumer, producer = _ScriptedConsumer(script, stop), _RecordingProducer()

        async def handle(tp: Any, r: Any) -> None:
            assert producer.open is not None, "a record handled outside a transaction"
            producer.open["sent"].append(r.value)

        # an interval no test run reaches, and a check at every fetch: only being caught up
        # can end a transaction early
        await pipeline.transactional_loop(
            consumer, producer, "g", 3600.0, handle, stop, min_interval_s=min_interval_s
        )
        return producer.transactions

    return asyncio.run(go())


def test_the_ceiling_loop_commits_when_caught_up_if_the_hub_does() -> None:
    adaptive = _loop_transactions(0.0)
    assert [t["sent"] for t in adaptive] == [[b"a", b"b"], [b"c", b"d", b"e"]]
    assert [t["offsets"] for t in adaptive] == [{"t-0": 2}, {"t-0": 5}]
    fixed = _loop_transactions(None)  # being caught up does not end a transaction
    assert [t["sent"] for t in fixed] == [[b"a", b"b", b"c", b"d", b"e"]]
    assert [t["offsets"] for t in fixed] == [{"t-0": 5}]
