"""The local broker manager's decisions that need no running broker."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from services.common.broker import LocalBroker, ensure_jars, jar_dir
from services.common.errors import BrokerError, PortInUseError


def test_cached_jars_need_no_maven_and_no_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    jars = jar_dir(tmp_path, "3.9.1")
    jars.mkdir(parents=True)
    (jars / ".complete").write_text("3.9.1")
    monkeypatch.setenv("PATH", "")  # no mvn, no java: nothing may be fetched or run
    assert ensure_jars(tmp_path, "3.9.1") == jars


def test_missing_jars_without_maven_say_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", "")
    with pytest.raises(BrokerError, match="apt-get install maven"):
        ensure_jars(tmp_path, "3.9.1")


def test_a_stale_pid_file_is_not_a_running_broker(tmp_path: Path) -> None:
    broker = LocalBroker(tmp_path / "b", tmp_path / "cache")
    broker.data_dir.mkdir()
    info = {
        "pid": 999_999_999,
        "port": 1,
        "controller_port": 2,
        "data_dir": str(tmp_path),
        "kafka_version": "3.9.1",
        "started_at": 0.0,
    }
    broker.info_path.write_text(json.dumps(info))
    assert broker.status() is None
    assert broker.stop() is None


def test_a_taken_port_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        broker = LocalBroker(tmp_path / "b", tmp_path / "cache", port=port, controller_port=0)
        with pytest.raises(PortInUseError) as err:
            broker.start()
    assert err.value.port == port
    assert f"port {port}" in str(err.value)
    assert not (tmp_path / "cache" / "kafka").exists()  # nothing was fetched


def test_generated_config_listens_on_loopback_only(tmp_path: Path) -> None:
    broker = LocalBroker(tmp_path / "b", tmp_path / "cache")
    broker._write_config(19092, 19093)
    props = dict(
        line.split("=", 1) for line in broker.properties_path.read_text().splitlines() if line
    )
    assert props["listeners"] == ("PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093")
    assert props["process.roles"] == "broker,controller"
    assert props["transaction.state.log.replication.factor"] == "1"


def test_every_service_up_starts_has_a_main_to_run() -> None:
    import importlib

    from services.cli import SERVICES

    for spec in SERVICES:
        assert callable(importlib.import_module(f"{spec.module}.main").run), spec.name
