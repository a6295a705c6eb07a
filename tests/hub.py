"""A hub of real processes for the simulator's tests: gateway, patient index and recognition
worker(s), each ``python -m services.cli serve NAME`` on its own port, against a simulated
region's registry, on any broker. Faults are injected by killing processes by their pid."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from services.common import harness
from services.common.broker import free_port
from services.common.kafka_admin import create_topics
from services.common.topics import ALL_TOPICS
from tests.support import run_module, wait_ready

PARTITIONS = 3


@dataclass
class Hub:
    bootstrap: str
    tmp: Path
    registry: Path
    replication: int = 1
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    def env(self, name: str) -> dict[str, str]:
        return {
            "MRHUB_KAFKA__BOOTSTRAP_SERVERS": self.bootstrap,
            "MRHUB_IDENTITY__HMAC_KEY": "test-hmac-key",
            "MRHUB_INGEST__PORT": str(self.ports.get("ingest", 0)),
            "MRHUB_INSTITUTIONS_PATH": str(self.registry),
            "MRHUB_INGEST__PUBLISH_TIMEOUT_S": "5",
            "MRHUB_PATIENT_INDEX__PORT": str(self.ports.get("patient_index", 0)),
            "MRHUB_RECOGNITION__PORT": str(self.ports.get(name, self.ports.get("recognition", 0))),
            "MRHUB_RECOGNITION__URL": f"http://127.0.0.1:{self.ports.get('recognition', 0)}",
            "MRHUB_TOPIC_PARTITIONS": str(PARTITIONS),
            "MRHUB_KAFKA__REPLICATION_FACTOR": str(self.replication),
            # a worker's RocksDB state is its own: a second worker or a restart after kill -9
            # must rebuild from the changelog, as on another machine
            "MRHUB_STATE_DIR": str(self.tmp / "state" / f"{name}-{time.monotonic_ns()}"),
            "MRHUB_LOG_LEVEL": "INFO",
        }

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports['ingest']}"

    def log(self, name: str) -> Path:
        return self.tmp / f"{name}.log"

    def start(self, name: str, *, service: str | None = None, wait: bool = True) -> None:
        """Start (or restart) process ``name`` running ``service`` (default: ``name``)."""
        self.ports.setdefault(name, free_port())
        proc = run_module(
            ["-m", "services.cli", "serve", service or name], self.env(name), self.log(name)
        )
        self.procs[name] = proc
        if wait:
            self.wait_ready(name)

    def wait_ready(self, name: str, timeout_s: float = 120) -> None:
        wait_ready(
            f"http://127.0.0.1:{self.ports[name]}/readyz",
            self.procs[name],
            self.log(name),
            timeout_s,
        )

    def digest(self, lines: int = 12) -> str:
        """What each process logged at warning or above, and its recovery milestones (the
        last ``lines`` of each): attached to a fault test's failure, so that a CI log says
        which process stalled."""
        out = []
        for name in self.procs:
            path = self.log(name)
            if not path.exists():
                continue
            picked = []
            for raw in path.read_text(errors="replace").splitlines():
                try:
                    rec = json.loads(raw)
                except ValueError:
                    picked.append(raw[:240])
                    continue
                msg = str(rec.get("msg", ""))
                notable = rec.get("level") in ("warning", "error", "critical")
                if notable or "Worker ready" in msg or "Executing _on_partitions_assigned" in msg:
                    picked.append(f"{rec.get('ts', '')[11:23]} {rec.get('level')} {msg[:240]}")
            out.append(f"--- {name} ---\n" + "\n".join(picked[-lines:]))
        return "\n".join(out)

    def kill9(self, name: str) -> None:
        """SIGKILL the process (and its process group) we started as ``name``."""
        proc = self.procs[name]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def stop(self) -> None:
        harness.stop_all(list(self.procs.values()))


def start_hub(
    bootstrap: str,
    tmp: Path,
    registry: Path,
    *,
    recognition_workers: tuple[str, ...] = ("recognition",),
    replication: int = 1,
) -> Hub:
    """``replication``: of every topic and changelog (3 on :class:`LocalCluster`)."""
    create_topics(
        bootstrap, ALL_TOPICS, default_partitions=PARTITIONS, replication_factor=replication
    )
    hub = Hub(bootstrap, tmp, registry, replication)
    for name in ("ingest", "patient_index", *recognition_workers):
        hub.ports[name] = free_port()
    try:
        hub.start("ingest")
        hub.start("patient_index")
        for name in recognition_workers:
            hub.start(name, service="recognition")
    except BaseException:
        hub.stop()
        raise
    return hub
