"""What `mrhub up` gives the services on a local cluster, and what it leaves alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from services import cli
from services.common.broker import LocalBroker, LocalCluster
from services.common.settings import Settings


def test_on_a_cluster_the_services_replicate_three_times_and_wait_out_a_failover(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("MRHUB_KAFKA__REPLICATION_FACTOR", "MRHUB_INGEST__PUBLISH_TIMEOUT_S"):
        monkeypatch.delenv(var, raising=False)
    cluster = LocalCluster(tmp_path / "c", tmp_path / "cache", nodes=3, port=0, controller_port=0)
    assert cli._replication_env(Settings(), cluster) == {
        "MRHUB_KAFKA__REPLICATION_FACTOR": "3",
        "MRHUB_INGEST__PUBLISH_TIMEOUT_S": "30",
    }
    # one broker: nothing changes
    assert cli._replication_env(Settings(), LocalBroker(tmp_path / "b", tmp_path / "cache")) == {}


def test_what_the_operator_set_wins_on_a_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MRHUB_KAFKA__REPLICATION_FACTOR", "2")
    monkeypatch.setenv("MRHUB_INGEST__PUBLISH_TIMEOUT_S", "12")
    cluster = LocalCluster(tmp_path / "c", tmp_path / "cache", nodes=3, port=0, controller_port=0)
    assert cli._replication_env(Settings(), cluster) == {}


def test_a_cluster_data_directory_is_found_as_a_cluster(tmp_path: Path) -> None:
    """`mrhub broker stop` without --nodes stops what `start --nodes 3` started."""
    cluster = LocalCluster(tmp_path / "c", tmp_path / "cache", nodes=3, port=0, controller_port=0)
    cluster.node(1)  # fixes the plan: cluster id and ports
    assert LocalCluster.size_in(tmp_path / "c") == 3
    found = cli._broker(Settings(), tmp_path / "c")
    assert isinstance(found, LocalCluster) and found.size == 3
    assert len(set(found.bootstrap.split(","))) == 3
    assert isinstance(cli._broker(Settings(), tmp_path / "elsewhere"), LocalBroker)
