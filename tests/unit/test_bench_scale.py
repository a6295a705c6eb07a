"""``mrhub bench pipeline --nodes 3 --workers 1,2,3``: the pure parts of the scaling run —
the worker counts it accepts, each worker's port and state directory, the table's records/s,
cores used and records/s per core with their ratios to the first run (no timing)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from mrhub_tools.bench import pipeline, scale


def test_worker_counts_are_a_comma_separated_list_in_the_order_given() -> None:
    assert pipeline.parse_workers("1,2,3") == [1, 2, 3]
    assert pipeline.parse_workers(" 3, 1 ") == [3, 1]
    assert pipeline.parse_workers(2) == [2]


@pytest.mark.parametrize("text", ["0", "1,,2", "a", "1,-2", "2,2", ""])
def test_a_count_below_one_or_named_twice_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="--workers"):
        pipeline.parse_workers(text)


def test_gateways_share_one_port_and_every_faust_worker_has_its_own() -> None:
    ports = pipeline.worker_ports(3)
    assert len(set(ports["ingest"])) == 1 and len(ports["ingest"]) == 3
    faust = ports["patient_index"] + ports["recognition"]
    assert len(faust) == 6 and len(set(faust)) == 6
    assert ports["ingest"][0] not in faust


def test_each_worker_has_its_port_and_own_state_and_reaches_worker_zero() -> None:
    env = {"MRHUB_PATIENT_INDEX__URL": "http://127.0.0.1:7000", "MRHUB_STATE_DIR": "/x"}
    w0 = pipeline.worker_env(env, "patient_index", 0, 7000, Path("/s"))
    w2 = pipeline.worker_env(env, "patient_index", 2, 7002, Path("/s"))
    assert (w0["MRHUB_PATIENT_INDEX__PORT"], w2["MRHUB_PATIENT_INDEX__PORT"]) == ("7000", "7002")
    assert w0["MRHUB_STATE_DIR"] != w2["MRHUB_STATE_DIR"]
    assert w2["MRHUB_STATE_DIR"] == str(Path("/s") / "patient_index-2")
    assert w2["MRHUB_PATIENT_INDEX__URL"] == "http://127.0.0.1:7000"


def test_cpu_of_a_service_is_summed_over_its_processes_and_unknown_if_one_is_gone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cpu = {1: 2.0, 2: 3.5, 3: None}
    monkeypatch.setattr(pipeline, "tree_cpu_s", cpu.get)
    sample = pipeline.cpu_sample({"patient_index": [1, 2], "recognition": [1, 3]})
    assert sample["patient_index"] == 5.5
    assert sample["recognition"] is None
    assert pipeline.cpu_seconds({"a": 1.0, "b": None}, {"a": 3.25, "b": 2.0}) == {
        "a": 2.25,
        "b": None,
    }


def _run(workers: int, records: int, wall: float, cpu: tuple[float, float, float]) -> Any:
    gateway, index, recognition = cpu
    return {
        "workers": workers,
        "topic_partitions": 6,
        "brokers": 3,
        "flat_out": {
            "records_indexed": records,
            "records_expected": records,
            "end_to_end_seconds": wall,
            "records_per_s": round(records / wall, 1),
            "cpu_seconds": {
                "gateway": gateway,
                "patient_index": index,
                "recognition": recognition,
                "kafka": 9.0,
                "bench": 1.0,
            },
        },
        "orders": {"orders": 50, "decided": 50, "lost": 0, "doubled": 0, "agreement": 1.0},
        "problems": [],
    }


def test_a_row_gives_records_per_second_cores_used_and_records_per_core() -> None:
    row = scale.scale_row(_run(1, 1000, 10.0, (2.0, 10.0, 4.0)))
    assert row["records_per_s"] == 100.0
    assert row["hub_cpu_s"] == 16.0  # the brokers and the bench are not the hub's
    assert row["kafka_cpu_s"] == 9.0
    assert row["cores_used"] == 1.6  # hub CPU s ÷ wall s
    assert row["records_per_core_s"] == 62.5  # records ÷ hub CPU s
    assert (row["decided"], row["lost"], row["doubled"]) == (50, 0, 0)


def test_ratios_are_against_the_first_run_of_the_same_invocation() -> None:
    rows = scale.scale_rows(
        [
            _run(1, 1000, 10.0, (2.0, 10.0, 4.0)),  # 100 records/s, 1.6 cores, 62.5 /core
            _run(2, 1000, 8.0, (2.5, 12.0, 5.5)),  # 125 records/s, 2.5 cores, 50 /core
        ]
    )
    assert rows[0]["ratios"] == {
        "records_per_s": 1.0,
        "hub_cpu_s": 1.0,
        "cores_used": 1.0,
        "records_per_core_s": 1.0,
    }
    assert rows[1]["ratios"] == {
        "records_per_s": 1.25,
        "hub_cpu_s": 1.25,
        "cores_used": round(2.5 / 1.6, 2),
        "records_per_core_s": 0.8,
    }


def test_a_run_without_cpu_figures_has_no_efficiency_but_keeps_its_counts() -> None:
    broken = _run(2, 0, 5.0, (1.0, 1.0, 1.0))
    broken["flat_out"]["cpu_seconds"]["patient_index"] = None
    rows = scale.scale_rows([_run(1, 1000, 10.0, (2.0, 10.0, 4.0)), broken])
    assert rows[1]["hub_cpu_s"] is None and rows[1]["records_per_core_s"] is None
    assert rows[1]["ratios"]["records_per_core_s"] is None
    assert scale.scale_rows([]) == []


def test_the_table_shows_every_count_its_ratios_and_the_small_machine_caveat() -> None:
    runs = [_run(1, 1000, 10.0, (2.0, 10.0, 4.0)), _run(2, 1000, 8.0, (2.5, 12.0, 5.5))]
    text = scale.format_scale(
        {
            "command": "mrhub bench pipeline --nodes 3 --workers 1,2",
            "cpu_count": 2,
            "brokers": 3,
            "replication_factor": 3,
            "topic_partitions": 6,
            "rows": scale.scale_rows(runs),
            "problems": ["2 workers: orders: 1 lost"],
        }
    )
    for needle in (
        "3 brokers (replication factor 3), 6 partitions, 2 CPUs",
        "mrhub bench pipeline --nodes 3 --workers 1,2",
        "records/s/core",
        "1.25",  # ×records/s of the second run
        "0.80",  # ×per core
        "50/0/0 of 50",
        "more processes cannot add cores",
        "PROBLEM: 2 workers: orders: 1 lost",
    ):
        assert needle in text, needle


def test_the_command_names_the_cluster_and_the_worker_counts() -> None:
    args = pipeline.defaults()
    assert "--nodes" not in pipeline.command(args) and "--workers" not in pipeline.command(args)
    args = argparse.Namespace(**{**vars(args), "nodes": 3, "workers": "1,2,3"})
    assert pipeline.command(args).endswith("--nodes 3 --workers 1,2,3")


def test_the_cli_sends_several_worker_counts_to_the_scaling_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from services.cli import main

    seen: list[argparse.Namespace] = []

    def fake_scale(args: argparse.Namespace, _settings: Any) -> int:
        seen.append(args)
        return 0

    def no_single_run(_settings: Any, _args: argparse.Namespace) -> Any:
        raise AssertionError("a single pipeline run was started")

    monkeypatch.setattr(scale, "main", fake_scale)
    monkeypatch.setattr(pipeline, "run", no_single_run)
    assert main(["bench", "pipeline", "--nodes", "3", "--workers", "1,2,3"]) == 0
    [args] = seen
    assert (args.nodes, args.workers) == (3, "1,2,3")
    # a scaling run's own sizes (about 10 minutes for three counts on 2 cores)
    assert (args.visits, args.visit_rate, args.posters) == (
        pipeline.SCALE_VISITS,
        pipeline.SCALE_VISIT_RATE,
        pipeline.SCALE_POSTERS,
    )


def test_a_bad_worker_count_is_an_error_message_not_a_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from services.cli import main

    assert main(["bench", "pipeline", "--workers", "1,0"]) == 2
    assert "--workers takes counts of 1 or more" in capsys.readouterr().err


def test_a_failed_run_keeps_its_row_and_a_restarted_worker_is_noted() -> None:
    restarted = _run(3, 1000, 5.0, (2.0, 8.0, 4.0))
    restarted["restarted_at_start"] = ["recognition-1"]
    failed = {"workers": 2, "problems": ["the run failed: ProcessExitedError()"]}
    runs = [_run(1, 1000, 10.0, (2.0, 10.0, 4.0)), failed, restarted]
    rows = scale.scale_rows(runs)
    assert [r["workers"] for r in rows] == [1, 2, 3]
    assert rows[1]["records_per_s"] is None and rows[1]["ratios"]["records_per_s"] is None
    text = scale.format_scale({"rows": rows, "runs": runs, "cpu_count": 2})
    assert "NOTE: 3 workers: exited while the group rebalanced at start" in text
    assert "recognition-1" in text
