"""The `mrhub` command as an operator uses it: broker start/stop/status, topics, up."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from services.common.broker import free_port, port_is_free
from tests.conftest import REPO, _cache_dir
from tests.support import start_up


def mrhub(
    *args: str, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _pids_with(text: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", text], capture_output=True, text=True, check=False)
    return [int(p) for p in out.stdout.split()]


@pytest.fixture
def broker_env(tmp_path: Path) -> dict[str, str]:
    env = {
        "MRHUB_BROKER__DATA_DIR": str(tmp_path / "broker"),
        "MRHUB_BROKER__PORT": str(free_port()),
        "MRHUB_BROKER__CONTROLLER_PORT": str(free_port()),
        "MRHUB_STATE_DIR": str(tmp_path / "state"),
    }
    os.environ.pop("MRHUB_KAFKA__BOOTSTRAP_SERVERS", None)
    return env


def test_broker_start_twice_stop_and_status(broker_env: dict[str, str]) -> None:
    try:
        first = mrhub("broker", "start", env=broker_env)
        assert first.returncode == 0, first.stderr
        port = broker_env["MRHUB_BROKER__PORT"]
        assert f"127.0.0.1:{port}" in first.stdout
        java = _pids_with(broker_env["MRHUB_BROKER__DATA_DIR"])
        assert len(java) == 1

        second = mrhub("broker", "start", env=broker_env)
        assert second.returncode == 0
        assert "already running" in second.stdout
        assert _pids_with(broker_env["MRHUB_BROKER__DATA_DIR"]) == java

        status = mrhub("broker", "status", env=broker_env)
        assert status.returncode == 0 and f"127.0.0.1:{port}" in status.stdout

        topics = mrhub(
            "topics",
            "create",
            env={**broker_env, "MRHUB_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{port}"},
        )
        assert topics.returncode == 0, topics.stderr
        assert "created mrhub.ingest.resource-accepted.v1" in topics.stdout
    finally:
        stop = mrhub("broker", "stop", env=broker_env)
    assert stop.returncode == 0 and "stopped" in stop.stdout
    assert _pids_with(broker_env["MRHUB_BROKER__DATA_DIR"]) == []
    assert port_is_free(int(broker_env["MRHUB_BROKER__PORT"]))
    after = mrhub("broker", "status", env=broker_env)
    assert after.returncode == 3 and "not running" in after.stdout


def test_broker_port_taken_is_a_clear_error(broker_env: dict[str, str]) -> None:
    port = int(broker_env["MRHUB_BROKER__PORT"])
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        result = mrhub("broker", "start", env=broker_env)
    assert result.returncode == 2
    assert f"port {port}" in result.stderr and "already in use" in result.stderr
    assert _pids_with(broker_env["MRHUB_BROKER__DATA_DIR"]) == []


def test_up_prints_addresses_and_sigterm_leaves_nothing_behind(
    broker_env: dict[str, str], tmp_path: Path
) -> None:
    ingest_port = free_port()
    env = {
        **os.environ,
        **broker_env,
        "MRHUB_INGEST__PORT": str(ingest_port),
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("MRHUB_KAFKA__BOOTSTRAP_SERVERS", None)
    log = tmp_path / "up.log"
    proc = start_up([], env, log, deadline_s=300)
    try:
        text = log.read_text()
        assert f"http://127.0.0.1:{ingest_port}" in text, text
        assert f"127.0.0.1:{broker_env['MRHUB_BROKER__PORT']}" in text
        assert "mrhub on PATH" in text and "bin/mrhub" in text, text
        # "up" means every service answers ready, not just that its process answers
        for port in re.findall(r"(http://127\.0\.0\.1:\d+)   \(metrics", text):
            ready = httpx.get(f"{port}/readyz", timeout=10)
            assert ready.status_code == 200, (port, ready.text)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    assert code == 0, log.read_text()
    assert "mrhub stopped" in log.read_text()
    for port in (
        ingest_port,
        int(broker_env["MRHUB_BROKER__PORT"]),
        int(broker_env["MRHUB_BROKER__CONTROLLER_PORT"]),
    ):
        assert port_is_free(port), f"port {port} still taken"
    assert _pids_with(broker_env["MRHUB_BROKER__DATA_DIR"]) == []
    service_pids = [int(p) for p in re.findall(r"pid (\d+)\)", log.read_text())]
    assert service_pids, log.read_text()
    for pid in service_pids:
        assert not Path(f"/proc/{pid}").exists(), f"service process {pid} is still there"


def test_up_names_a_service_that_cannot_start_and_stops_everything(
    broker_env: dict[str, str], tmp_path: Path
) -> None:
    env = {
        **broker_env,
        "MRHUB_INGEST__PORT": str(free_port()),
        # the gateway refuses to start without its institution registry
        "MRHUB_INSTITUTIONS_PATH": str(tmp_path / "no-such-registry.yaml"),
    }
    result = mrhub("up", env=env, timeout=600)
    assert result.returncode == 1, result.stdout + result.stderr
    # every service that reads the registry refuses to start; whichever exits first is named
    # (the gateway, importing the patient index's routing, is no longer always the first)
    named = re.search(r"mrhub did not come up: (\w+) exited with code", result.stdout)
    assert named is not None, result.stdout
    assert named.group(1) in {"ingest", "recognition", "imaging", "console"}, result.stdout
    assert "mrhub is up" not in result.stdout
    assert "mrhub stopped" in result.stdout
    assert _pids_with(broker_env["MRHUB_BROKER__DATA_DIR"]) == []
    assert port_is_free(int(broker_env["MRHUB_BROKER__PORT"]))


def test_the_state_dir_holds_the_brokers_data_and_logs(tmp_path: Path) -> None:
    """With only MRHUB_STATE_DIR set, the local broker keeps everything under it, and
    nothing in the old default place (~/.local/state/mrhub)."""
    home = tmp_path / "home"
    home.mkdir()
    state = tmp_path / "state"
    env = {
        "HOME": str(home),
        "MRHUB_CACHE_DIR": str(_cache_dir()),  # the Kafka jars, fetched once
        "MRHUB_STATE_DIR": str(state),
        "MRHUB_BROKER__PORT": str(free_port()),
        "MRHUB_BROKER__CONTROLLER_PORT": str(free_port()),
    }
    for var in ("MRHUB_KAFKA__BOOTSTRAP_SERVERS", "MRHUB_BROKER__DATA_DIR"):
        os.environ.pop(var, None)
    try:
        started = mrhub("broker", "start", env=env)
        assert started.returncode == 0, started.stdout + started.stderr
        status = mrhub("broker", "status", env=env)
        assert f"data {state / 'broker'}" in status.stdout, status.stdout
    finally:
        stopped = mrhub("broker", "stop", env=env)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped.stdout
    broker = state / "broker"
    assert (broker / "kraft" / "meta.properties").exists()
    assert (broker / "logs" / "server.log").exists()
    assert (broker / "broker.json").exists()
    assert not (home / ".local" / "state" / "mrhub").exists()
