"""`mrhub up --workers 2` as an operator runs it (issue 18): two processes of every service,
the streaming workers on their port + 100, the gateways sharing theirs with the kernel
spreading connections over both, one state directory per worker, and a worker stopped with
SIGTERM started again by `up` on its own."""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from services import cli
from services.common.broker import free_port, port_is_free
from services.common.harness import answers_ready, still_running, wait_until
from services.common.institutions import issue_token
from tests.conftest import REPO
from tests.fhir_samples import dumps, gb11643, observation
from tests.hub import start_hub
from tests.support import start_up


def _base_port(taken: set[int]) -> int:
    """A port free together with the one 100 above it (worker 1's), apart from ``taken``."""
    while True:
        port = free_port()
        pair = {port, port + 100}
        if port < 65000 and port_is_free(port + 100) and not pair & taken:
            taken |= pair
            return port


def _metrics_counts(url: str, times: int) -> list[float]:
    """What ``/metrics`` says of its own requests, asked ``times`` times on a new connection
    each: one process counts 0, 1, 2 … (a request is counted once answered); two processes
    each count their own share."""
    counts = []
    for _ in range(times):
        text = httpx.get(f"{url}/metrics", timeout=10).text
        found = re.search(r'^mrhub_ingest_requests_total\{route="/metrics".*\} (\S+)$', text, re.M)
        assert "mrhub_ingest_requests_total" in text, text[:2000]
        counts.append(float(found.group(1)) if found else 0.0)
    return counts


def test_up_with_two_workers_per_service(bootstrap: str, tmp_path: Path) -> None:
    taken: set[int] = set()
    services = ("INGEST", "PATIENT_INDEX", "RECOGNITION", "IMAGING", "CONSOLE")
    ports = {svc: _base_port(taken) for svc in services}
    state = tmp_path / "state"
    env = {
        **os.environ,
        "MRHUB_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "MRHUB_STATE_DIR": str(state),
        "PYTHONUNBUFFERED": "1",
        **{f"MRHUB_{svc}__PORT": str(port) for svc, port in ports.items()},
    }
    for var in ("MRHUB_RECOGNITION__URL", "MRHUB_PATIENT_INDEX__URL", "MRHUB_WORKERS"):
        env.pop(var, None)
    log = tmp_path / "up.log"
    up = start_up(["--workers", "2"], env, log, deadline_s=420)
    try:
        text = log.read_text()
        listed = {
            name: (int(port), int(pid))
            for name, port, pid in re.findall(
                r"^  (\S+)\s+http://127\.0\.0\.1:(\d+)   \(metrics .*, pid (\d+)\)$", text, re.M
            )
        }
        expected = {"ingest": "INGEST", "patient_index": "PATIENT_INDEX"}
        expected |= {"recognition": "RECOGNITION", "imaging": "IMAGING"}
        assert {n: p for n, (p, _) in listed.items()} == {
            f"{svc}-{i}": ports[var] + (0 if svc == "ingest" else 100 * i)
            for svc, var in expected.items()
            for i in (0, 1)
        } | {"console": ports["CONSOLE"]}, text  # one console: it holds no partitions
        for name, (port, _pid) in listed.items():
            assert answers_ready(f"http://127.0.0.1:{port}/readyz"), name
        # both gateways hold the one port, and the kernel hands connections to both
        gateway = f"http://127.0.0.1:{ports['INGEST']}"
        assert cli._listens(listed["ingest-0"][1], ports["INGEST"])
        assert cli._listens(listed["ingest-1"][1], ports["INGEST"])
        counts = _metrics_counts(gateway, 30)
        one_process = [counts[0] + i for i in range(len(counts))]
        assert counts != one_process, counts
        # a worker's RocksDB state is its own
        assert (state / "recognition").is_dir()
        assert (state / "workers" / "recognition-1" / "recognition").is_dir()
        assert (state / "logs" / "recognition-1.log").is_file()

        # SIGTERM to one worker: it stops cleanly, and `up` starts that one again
        os.kill(listed["recognition-1"][1], signal.SIGTERM)
        wait_until(
            lambda: "recognition-1 exited with code 0; starting it again" in log.read_text(),
            deadline_s=120,
            what="`up` to restart recognition-1",
            alive=still_running(up, "mrhub up", log),
        )
        wait_until(
            lambda: answers_ready(f"http://127.0.0.1:{ports['RECOGNITION'] + 100}/readyz"),
            deadline_s=300,
            what="the restarted recognition-1 to answer ready",
            alive=still_running(up, "mrhub up", log),
        )
        assert re.findall(r"^(\S+) exited with code", log.read_text(), re.M) == ["recognition-1"]
    finally:
        up.send_signal(signal.SIGTERM)
        code = up.wait(timeout=120)
    assert code == 0, log.read_text()
    assert "mrhub stopped" in log.read_text()
    for _name, (_port, pid) in listed.items():
        assert not Path(f"/proc/{pid}").exists(), f"{_name} ({pid}) is still there"
    assert port_is_free(ports["INGEST"])


# ------------------------------------------------------ three workers: any one answers for all

CARD_SYSTEM = "urn:oid:2.16.156.10011.1.3"
#: 三甲, Taiyuan (lab qualification: national), and a level-2 hospital in the same city
A, B = "12140000405001730E", "12140110405530210H"
POTASSIUM = "http://loinc.org|2823-3"


def _post(url: str, token: str, doc: dict[str, Any]) -> None:
    resp = httpx.post(
        f"{url}/fhir/Observation",
        content=dumps(doc),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"},
        timeout=30,
    )
    assert resp.status_code in (200, 201), resp.text


def _check(base: str, token: str, card: str) -> Any:
    resp = httpx.post(
        f"{base}/recognition/check",
        json={"patient": f"{CARD_SYSTEM}|{card}", "code": POTASSIUM},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    return resp.json() if resp.status_code == 200 else None


@pytest.mark.timeout(900)
def test_with_three_workers_each_answers_for_every_patient_and_a_dead_one_is_skipped(
    bootstrap: str, tmp_path: Path
) -> None:
    registry = tmp_path / "institutions.yaml"
    shutil.copy(REPO / "config" / "institutions.yaml", registry)
    tokens = {i: issue_token(registry, i) for i in (A, B)}
    # patients of their own (Taiyuan, born 1991-02-03), spread over the partitions by key
    seq = random.Random().randrange(100, 900, 12)
    cards = [gb11643(f"14010519910203{seq + i:03d}") for i in range(6)]
    hub = start_hub(bootstrap, tmp_path, registry, workers=3)
    try:
        taken = datetime.now(UTC) - timedelta(hours=2)
        for card in cards:
            doc = observation(A, subject={"identifier": {"system": CARD_SYSTEM, "value": card}})
            doc["effectiveDateTime"] = taken.isoformat()
            doc["issued"] = (taken + timedelta(hours=1)).isoformat()
            _post(hub.url, tokens[A], doc)
        workers = hub.names("recognition")
        assert len(workers) == 3

        def answers() -> dict[tuple[str, str], Any] | None:
            got = {(w, c): _check(hub.base(w), tokens[B], c) for w in workers for c in cards}
            known = all(a is not None and a["decision"] == "recognisable" for a in got.values())
            return got if known else None

        got = wait_until(answers, deadline_s=300, what="every worker to know every patient")
        for (_worker, _card), answer in got.items():
            [match] = answer["matches"]
            assert match["institution"] == A
        # the gateway reaches the recognition workers by the list; one of them dies
        hub.kill9(workers[1])
        for card in cards:
            search = httpx.post(
                f"{hub.url}/fhir/Observation/_search",
                data={"patient": f"{CARD_SYSTEM}|{card}"},
                headers={"Authorization": f"Bearer {tokens[B]}"},
                timeout=30,
            )
            # 200 with the result, or 503 while the dead worker's partitions move (never a
            # refused connection: the list's next worker is asked)
            assert search.status_code in (200, 503), search.text
    finally:
        hub.stop()
    proxied = [
        line
        for line in hub.log("ingest").read_text().splitlines()
        if "recognition unreachable" in line
    ]
    assert proxied == [], proxied[:3]
