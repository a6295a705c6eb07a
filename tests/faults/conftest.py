"""Fault tests: the hub as real processes on a real broker, a simulated stream posted
through it, and a fault injected in the middle of the stream."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from mrhub_tools.simulate.cli import prepare, simulate
from mrhub_tools.simulate.runner import Options, Progress, Trail
from services.common.harness import wait_until
from services.recognition.catalog import CHINA_TZ
from tests.faults.diagnose import explain
from tests.hub import Hub

#: The records of each simulation run by a :class:`SimulationThread`, by run id (the
#: summary's ``run_id``): what :func:`assert_exactly_one_decision_each` explains a
#: disagreement with.
TRAILS: dict[str, Trail] = {}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/faults/" in str(item.path):
            item.add_marker(pytest.mark.integration)


def prepare_region(tmp: Path, *, institutions: int = 8, seed: int = 8) -> Path:
    """A simulated region's directory (registry, tokens, parameters)."""
    region = tmp / "region"
    prepare(region, institutions, seed, datetime.now(UTC).astimezone(CHINA_TZ).date())
    return region


class SimulationThread:
    """``simulate`` running in a thread, so that a test can break the hub meanwhile."""

    def __init__(
        self,
        region: Path,
        *,
        url: str,
        bootstrap: str,
        patients: int,
        card_region: str,
        concurrency: int = 8,
        rate: float = 0.0,
    ) -> None:
        self.progress = Progress()
        self.trail = Trail()
        self.summary: dict[str, Any] | None = None
        self.error: BaseException | None = None
        opts = Options(
            url=url,
            bootstrap=bootstrap,
            concurrency=concurrency,
            rate=rate,
            stall_s=90.0,  # a stalled hub fails the test in minutes, not hours
            show_progress=False,
            progress=self.progress,
            trail=self.trail,
        )

        def run() -> None:
            try:
                self.summary = simulate(
                    region,
                    patients=patients,
                    days=1,
                    seed=None,
                    opts=opts,
                    card_regions=(card_region,),
                    catalog_path=Path(__file__).resolve().parents[2] / "config" / "catalog",
                )
            except BaseException as exc:  # reported by result()
                self.error = exc

        self.thread = threading.Thread(target=run, name="simulate", daemon=True)
        self.thread.start()

    def at(self, phase: str, share: float, timeout_s: float = 300) -> None:
        """Wait until ``share`` of ``phase``'s requests are answered."""
        wait_for(
            lambda: (
                self.progress.phase == phase
                and self.progress.done >= share * max(1, self.progress.total)
            ),
            timeout_s,
            f"{share:.0%} of {phase}",
            self,
        )

    def result(self, timeout_s: float = 900) -> dict[str, Any]:
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), f"the simulation did not finish: {self.progress}"
        if self.error is not None:
            raise self.error
        assert self.summary is not None
        TRAILS[str(self.summary["run_id"])] = self.trail
        return self.summary


def wait_for(
    cond: Callable[[], bool], timeout_s: float, what: str, sim: SimulationThread | None = None
) -> None:

    def alive() -> None:
        if sim is not None and sim.error is not None:
            raise sim.error

    wait_until(cond, deadline_s=timeout_s, what=what, interval_s=0.1, alive=alive)


def assert_exactly_one_decision_each(summary: dict[str, Any], hub: Hub | None = None) -> None:
    """Every order got its decision, none got two, and they are the right ones. A failure
    shows the first disagreements, the hub's counts and what its processes logged."""

    def failing() -> str:  # read the logs only when an assertion fails
        return "\n".join(
            (
                evidence(),
                str(summary["disagreements"][:5]),
                f"hub: {summary['hub']}, seconds: {summary.get('seconds')}",
                hub.digest() if hub else "",
            )
        )

    def evidence() -> str:
        trail = TRAILS.get(str(summary.get("run_id")))
        if hub is None or trail is None or trail.scenario is None:
            return ""
        try:
            return f"evidence of the disagreements: {explain(trail, hub)}"
        except Exception as exc:  # the evidence must not hide the failure it explains
            return f"no evidence file: {type(exc).__name__}: {exc}"

    # one line per run, shown with ``pytest -rP``: the figures a closing note quotes
    print(
        "fault run:",
        {k: summary.get(k) for k in ("orders", "decided", "lost", "duplicated", "agreement")},
        "results indexed / expected:",
        summary["hub"]["results_indexed"],
        summary["hub"]["results_expected"],
    )
    assert summary["lost"] == 0, failing()
    assert summary["duplicated"] == 0, failing()
    assert summary["decided"] == summary["orders"], failing()
    assert summary["agreement"] >= 0.995, failing()
    assert summary["hub"]["results_indexed"] == summary["hub"]["results_expected"], failing()
    assert summary["hub"]["orders_placed"] == summary["hub"]["orders_expected"], failing()
