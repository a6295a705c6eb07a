"""The one process harness (services/common/harness.py) against real processes: a tiny HTTP
server that answers 503 "Service Unavailable" (not JSON) for its first requests, then 200."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from services import cli
from services.common import harness
from services.common.broker import data_dir_of, free_port
from services.common.errors import MrhubError
from services.common.settings import BrokerSettings, Settings

SERVER = """
import http.server, json, sys
port, not_ready = int(sys.argv[1]), int(sys.argv[2])
answered = {"503": 0}

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if answered["503"] < not_ready:
            answered["503"] += 1
            body, code, kind = b"Service Unavailable", 503, "text/plain"
        else:
            body = json.dumps({"ready": True, "not_ready_answers": answered["503"]}).encode()
            code, kind = 200, "application/json"
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

print("listening", flush=True)
http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""


def _server(
    tmp_path: Path, not_ready: int, name: str = "server"
) -> tuple[subprocess.Popen[bytes], str, Path]:
    script = tmp_path / f"{name}.py"
    script.write_text(SERVER, encoding="utf-8")
    port = free_port()
    log = tmp_path / f"{name}.log"
    proc = harness.start([sys.executable, str(script), str(port), str(not_ready)], log_path=log)
    return proc, f"http://127.0.0.1:{port}/readyz", log


def test_wait_ready_rides_out_refusals_and_503_until_the_server_is_ready(tmp_path: Path) -> None:
    proc, url, log = _server(tmp_path, not_ready=3)
    try:
        harness.wait_ready(proc, url, deadline_s=60, name="server", log_path=log)
        body = harness.json_when_ready(url)
        assert body == {"ready": True, "not_ready_answers": 3}
    finally:
        code = harness.stop(proc, grace_s=10)
    assert code == -signal.SIGTERM


def test_json_when_ready_is_none_while_a_server_is_absent_or_not_ready(tmp_path: Path) -> None:
    assert harness.json_when_ready(f"http://127.0.0.1:{free_port()}/") is None  # refused
    proc, url, log = _server(tmp_path, not_ready=1_000_000)
    try:
        harness.wait_until(
            lambda: "listening" in log.read_text(), deadline_s=60, what="the server to start"
        )
        # answers 503 with a body that is not JSON: "not yet", never an exception
        harness.wait_until(lambda: _answers_503(url), deadline_s=60, what="a 503 answer")
        assert harness.json_when_ready(url) is None
        assert harness.answers_ready(url) is False
    finally:
        harness.stop(proc, grace_s=10)


def _answers_503(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=2).status_code == 503
    except httpx.HTTPError:
        return False


def test_a_server_that_never_gets_ready_is_named_at_the_deadline(tmp_path: Path) -> None:
    proc, url, log = _server(tmp_path, not_ready=1_000_000)
    try:
        with pytest.raises(TimeoutError, match=r"waiting for server to answer ready at"):
            harness.wait_ready(proc, url, deadline_s=1, name="server", log_path=log)
    finally:
        harness.stop(proc, grace_s=10)


def test_up_names_the_service_that_still_answers_503(tmp_path: Path) -> None:
    ready, ready_url, _ = _server(tmp_path, not_ready=0, name="ingest")
    stuck, stuck_url, _ = _server(tmp_path, not_ready=1_000_000, name="recognition")
    procs = [
        (_worker("ingest", ready_url), ready),
        (_worker("recognition", stuck_url), stuck),
    ]
    try:
        failed = cli._wait_all_ready(procs, tmp_path, 2, cli._Stop())
    finally:
        harness.stop_all([ready, stuck], grace_s=10)
    assert failed is not None
    assert "not ready after 2 s: recognition " in failed, failed
    assert "ingest" not in failed.split(";")[0]


def _worker(service: str, ready_url: str) -> cli._Worker:
    base = ready_url.removesuffix("/readyz")
    return cli._Worker(service, service, base, {}, int(base.rsplit(":", 1)[1]))


def test_a_process_that_exits_while_awaited_fails_at_once_with_its_log(tmp_path: Path) -> None:
    log = tmp_path / "dies.log"
    proc = harness.start(
        [sys.executable, "-c", "import sys; print('no registry'); sys.exit(3)"], log_path=log
    )
    with pytest.raises(harness.ProcessExitedError, match="no registry") as caught:
        harness.wait_ready(
            proc,
            f"http://127.0.0.1:{free_port()}/readyz",
            deadline_s=300,
            name="dies",
            log_path=log,
        )
    assert caught.value.returncode == 3 and caught.value.name == "dies"


def test_stop_kills_a_process_that_ignores_sigterm_after_the_grace(tmp_path: Path) -> None:
    log = tmp_path / "stubborn.log"
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ignoring', flush=True)\nwhile True: time.sleep(1)"
    )
    proc = harness.start([sys.executable, "-c", code], log_path=log)
    harness.wait_until(
        lambda: "ignoring" in log.read_text(), deadline_s=60, what="SIGTERM to be ignored"
    )
    assert harness.stop(proc, grace_s=0.5) == -signal.SIGKILL


def test_wait_until_returns_the_value_and_names_what_it_waited_for() -> None:
    answers = iter([None, ConnectionError("refused"), {"ok": 1}])

    def next_answer() -> object:
        value = next(answers)
        if isinstance(value, Exception):
            raise value
        return value

    got = harness.wait_until(
        next_answer, deadline_s=60, what="x", interval_s=0, tolerate=(ConnectionError,)
    )
    assert got == {"ok": 1}
    with pytest.raises(TimeoutError, match=r"waiting for the moon \(last: ValueError: no\)"):
        harness.wait_until(
            _raise_value_error, deadline_s=0.2, what="the moon", tolerate=(ValueError,)
        )


def _raise_value_error() -> bool:
    raise ValueError("no")


def test_the_brokers_data_lives_under_the_state_dir_unless_set(tmp_path: Path) -> None:
    assert data_dir_of(Settings(state_dir=tmp_path)) == tmp_path / "broker"
    moved = Settings(state_dir=tmp_path, broker=BrokerSettings(data_dir=tmp_path / "elsewhere"))
    assert data_dir_of(moved) == tmp_path / "elsewhere"


def test_up_plans_n_processes_per_service_each_with_its_port_and_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MRHUB_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("MRHUB_RECOGNITION__PORT", "9081")
    settings = Settings()
    plan = {w.name: w for w in cli._plan(settings, {"X": "1"}, 3)}
    assert [w.port for n, w in plan.items() if n.startswith("recognition")] == [9081, 9181, 9281]
    assert {plan[f"ingest-{i}"].port for i in range(3)} == {settings.ingest.port}
    assert plan["recognition-2"].env["MRHUB_RECOGNITION__PORT"] == "9281"
    assert plan["recognition-2"].env["X"] == "1"
    assert "MRHUB_STATE_DIR" not in plan["recognition-0"].env  # the state directory itself
    # worker 0 of each service keeps the state directory itself (None: not overridden), as
    # with one worker (each service has its own directory under it); the others their own
    streaming = ("patient_index", "recognition", "imaging")
    dirs = [w.env.get("MRHUB_STATE_DIR") for n, w in plan.items() if n.startswith(streaming)]
    assert dirs.count(None) == 3 and len(set(dirs)) == 1 + 3 * 2
    # the console holds no partitions: one process, on its own port, whatever N is
    assert [(n, w.port) for n, w in plan.items() if n.startswith("console")] == [
        ("console", settings.console.port)
    ]
    assert plan["imaging-1"].env["MRHUB_STATE_DIR"] == str(tmp_path / "workers" / "imaging-1")
    assert cli._worker_urls(settings, "recognition", 3) == (
        "http://127.0.0.1:9081,http://127.0.0.1:9181,http://127.0.0.1:9281"
    )
    one = [w.name for w in cli._plan(settings, {}, 1)]
    assert one == ["ingest", "patient_index", "recognition", "imaging", "console"]
    monkeypatch.setenv("MRHUB_IMAGING__PORT", "0")
    with pytest.raises(MrhubError, match="MRHUB_IMAGING__PORT is 0"):
        cli._plan(Settings(), {}, 2)
