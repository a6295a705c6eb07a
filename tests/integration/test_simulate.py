"""``mrhub simulate`` through a hub of real processes: a small region's day of visits agrees
with the ground truth, nothing lost, nothing doubled."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.hub import start_hub


def _cli(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", "simulate", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        check=False,
    )


@pytest.mark.timeout(900)
def test_a_simulated_day_agrees_with_the_ground_truth(
    bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    tmp = tmp_path_factory.mktemp("simulate")
    region = tmp / "region"
    prepared = _cli("prepare", "--dir", str(region), "--institutions", "8", "--seed", "8",
                    timeout=60)  # fmt: skip
    assert prepared.returncode == 0, prepared.stderr
    hub = start_hub(bootstrap, tmp, region / "institutions.yaml")
    try:
        done = _cli(
            "run", "--dir", str(region), "--patients", "300", "--days", "1",
            "--url", hub.url, "--bootstrap", bootstrap, "--json", "--no-progress",
            # 身份证 numbers of a region no other test uses: the session broker keeps them
            "--card-regions", "140297",
            timeout=840,
        )  # fmt: skip
    finally:
        hub.stop()
    assert done.stdout, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    failing = json.dumps(summary["disagreements"][:5], ensure_ascii=False)
    assert summary["lost"] == 0 and summary["duplicated"] == 0, failing
    assert summary["agreement"] >= 0.995, failing
    assert summary["orders"] >= 300
    # every reason occurs, and the hub said each as often as the ground truth
    assert {r for r, row in summary["by_reason"].items() if row["expected"]} == {
        "recognised", "no-prior-result", "outside-window", "result-not-final",
        "issuer-not-qualified", "scope-not-satisfied", "not-in-catalog",
    }  # fmt: skip
    assert summary["saving_yuan"] > 0
    # malformed messages were refused, everything else taken; nothing dead-lettered
    assert summary["requests"]["unexpected"] == 0, summary["requests"]["unexpected_samples"]
    assert summary["requests"]["refused_as_expected"] >= 1
    assert summary["hub"]["dead_letters"] == {"patient_index": 0, "recognition": 0}
    assert done.returncode == 0
