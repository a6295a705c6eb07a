"""Consumer lag as ops reads it, the common worker metrics, and trace ids in log lines —
without a broker (the running workers are checked in tests/integration/test_metrics.py)."""

from __future__ import annotations

import io
import json
import logging
import logging.config
from dataclasses import dataclass, field
from typing import Any

from faust.types import TP

from services.common.lag import ConsumerLag, partition_lag, sample_lag
from services.common.logging import dict_config, trace
from services.common.metrics import WorkerMetrics, exposition, new_registry

IN = "mrhub.results.order-placed.v1"


def test_a_worker_that_finished_everything_has_no_lag_despite_commit_markers() -> None:
    # offsets 0-9 data, 10 the transaction's commit marker: committed = 10, end = 11
    assert partition_lag(end=11, position=11, committed=10) == 0


def test_lag_counts_from_the_oldest_message_not_finished() -> None:
    # fetched up to 40, processed and committed up to 30, 30-39 held in the stream
    assert partition_lag(end=50, position=40, committed=30, pending=range(30, 40)) == 20


def test_lag_of_a_partition_not_fetched_yet_is_unknown() -> None:
    assert partition_lag(end=None, position=0, committed=None) is None
    assert partition_lag(end=-1, position=0, committed=None) is None
    assert partition_lag(end=5, position=None, committed=None) is None
    assert partition_lag(end=5, position=None, committed=2) == 3


def test_lag_is_never_negative() -> None:
    assert partition_lag(end=10, position=12, committed=12) == 0


@dataclass
class _Message:
    tp: TP
    offset: int


@dataclass
class _Consumer:
    ends: dict[TP, int]
    positions: dict[TP, int]
    _committed_offset: dict[TP, int] = field(default_factory=dict)
    _acked: dict[TP, list[int]] = field(default_factory=dict)
    _unacked_messages: list[_Message] = field(default_factory=list)

    def assignment(self) -> set[TP]:
        return set(self.ends)

    def highwater(self, tp: TP) -> int:
        return self.ends[tp]

    async def position(self, tp: TP) -> int:
        return self.positions[tp]


@dataclass
class _Channel:
    topics: tuple[str, ...]


@dataclass
class _Agent:
    channel: _Channel


@dataclass
class _App:
    consumer: _Consumer
    agents: dict[str, _Agent]


async def test_a_sample_covers_the_agents_topics_and_not_the_changelogs() -> None:
    p0, p1 = TP(IN, 0), TP(IN, 1)
    changelog = TP("mrhub-recognition-results-changelog", 0)
    consumer = _Consumer(
        ends={p0: 100, p1: 7, changelog: 500},
        positions={p0: 100, p1: 7, changelog: 0},
        _committed_offset={p0: 60, p1: 6},
        _acked={p0: [60, 61]},  # processed, not yet in a committed transaction
        _unacked_messages=[_Message(p0, 62), _Message(p0, 63)],
    )
    app: Any = _App(consumer, {"orders": _Agent(_Channel((IN,)))})
    assert await sample_lag(app) == {(IN, 0): 40, (IN, 1): 0}


def test_the_lag_gauge_shows_the_latest_sample_only() -> None:
    lag = ConsumerLag("recognition")
    registry = new_registry()
    registry.register(lag)
    lag.update({(IN, 0): 40, (IN, 1): 0})
    lag.update({(IN, 1): 3})  # partition 0 moved to another worker
    text = exposition(registry).decode()
    assert (
        'mrhub_consumer_lag_messages{partition="1",service="recognition",'
        f'topic="{IN}"}} 3.0' in text
    )
    assert 'partition="0"' not in text


def test_worker_metrics_count_per_service_and_show_recovery() -> None:
    metrics = WorkerMetrics("patient_index")
    registry = new_registry()
    metrics.register(registry)
    metrics.watch_recovery(lambda: 1.0, lambda: 250.0)
    metrics.dead_letter("route")
    metrics.produce_error("mrhub.results.result-indexed.v1")
    text = exposition(registry).decode()
    assert 'mrhub_dead_letters_total{service="patient_index",stage="route"} 1.0' in text
    assert (
        'mrhub_kafka_produce_errors_total{service="patient_index",'
        'topic="mrhub.results.result-indexed.v1"} 1.0' in text
    )
    assert 'mrhub_table_recovery_in_progress{service="patient_index"} 1.0' in text
    assert 'mrhub_table_recovery_remaining_messages{service="patient_index"} 250.0' in text
    assert "_created" not in text


def _log_lines(fmt: str) -> list[str]:
    config = dict_config("INFO", fmt)
    stream = io.StringIO()
    config["handlers"]["stderr"]["stream"] = stream
    logging.config.dictConfig(config)
    try:
        log = logging.getLogger("mrhub.test")
        with trace("trace-abc-123"):
            log.error("dead-lettered", extra={"stage": "route", "offset": 4})
        log.info("outside any message")
    finally:
        logging.config.dictConfig({"version": 1, "disable_existing_loggers": False})
    return stream.getvalue().splitlines()


def test_a_workers_log_lines_are_json_with_the_trace_id_of_the_message() -> None:
    inside, outside = (json.loads(line) for line in _log_lines("json"))
    assert inside["msg"] == "dead-lettered" and inside["trace_id"] == "trace-abc-123"
    assert inside["stage"] == "route" and inside["level"] == "error"
    assert "trace_id" not in outside


def test_console_log_lines_carry_the_trace_id_too() -> None:
    [inside, _] = _log_lines("console")
    assert "trace_id=trace-abc-123" in inside
