"""A hub of real processes for the simulator's and the fault tests: gateway, patient index and
recognition worker(s), each ``python -m services.cli serve SERVICE`` on its own port, against
a simulated region's registry, on any broker (one node or a cluster). Faults are injected by
signalling processes by their pid.

Process names: with one worker per service, ``ingest``, ``patient_index``, ``recognition``;
with ``workers=N`` (N > 1), ``patient_index-0`` … ``patient_index-<N-1>`` and
``recognition-0`` … (the gateway stays ``ingest``, one process, unless ``gateways=``). The
gateway's ``MRHUB_RECOGNITION__URL`` and every process's ``MRHUB_PATIENT_INDEX__URL`` list
every worker of the service, as ``mrhub up --workers N`` does.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
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
    #: the service each process name runs (``recognition-1`` → ``recognition``)
    services: dict[str, str] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    #: more ``MRHUB_*`` variables for every process (a cluster's replication factor …)
    extra_env: dict[str, str] = field(default_factory=dict)
    partitions: int = PARTITIONS
    #: (name, exit code) of each process that exited on its own and was started again, as
    #: `mrhub up` (or systemd, or Kubernetes) does: a worker stops itself when a write fails
    #: or faust crashes in a rebalance, and resumes from its last committed transaction
    restarts: list[tuple[str, int]] = field(default_factory=list)
    #: (wall-clock time, what, process name) of each start, kill and stop the hub did: the
    #: timeline a failing fault test's evidence is read against
    events: list[tuple[str, str, str]] = field(default_factory=list)
    _down: set[str] = field(default_factory=set)  # stopped by the test: not restarted
    _lock: threading.RLock = field(default_factory=threading.RLock)
    _stopping: threading.Event = field(default_factory=threading.Event)
    _supervisor: threading.Thread | None = None

    def names(self, service: str) -> list[str]:
        """The processes that run ``service``, in the order they were added."""
        return [n for n, s in self.services.items() if s == service]

    def urls(self, service: str) -> str:
        """Every worker of ``service``, comma-separated (the ``MRHUB_*__URL`` value)."""
        return ",".join(f"http://127.0.0.1:{self.ports[n]}" for n in self.names(service))

    def env(self, name: str) -> dict[str, str]:
        service = self.services[name]
        env = {
            "MRHUB_KAFKA__BOOTSTRAP_SERVERS": self.bootstrap,
            "MRHUB_IDENTITY__HMAC_KEY": "test-hmac-key",
            "MRHUB_INSTITUTIONS_PATH": str(self.registry),
            "MRHUB_INGEST__PUBLISH_TIMEOUT_S": "5",
            "MRHUB_RECOGNITION__URL": self.urls("recognition"),
            "MRHUB_PATIENT_INDEX__URL": self.urls("patient_index"),
            "MRHUB_TOPIC_PARTITIONS": str(self.partitions),
            # a process's RocksDB state is its own, and a restart finds it where it was left,
            # as a supervisor's restart on the same machine or volume does: after kill -9 the
            # stores may hold writes of aborted transactions (faust_fixes patch 17 rebuilds
            # them); a second worker of a service starts from nothing
            "MRHUB_STATE_DIR": str(self.tmp / "state" / name),
            "MRHUB_LOG_LEVEL": "INFO",
            **self.extra_env,
        }
        for svc in ("ingest", "patient_index", "recognition"):
            others = self.names(svc)
            port = self.ports[name] if svc == service else self.ports[others[0]] if others else 0
            env[f"MRHUB_{svc.upper()}__PORT"] = str(port)
        return env

    @property
    def url(self) -> str:
        """The gateway (every gateway process shares its port)."""
        return f"http://127.0.0.1:{self.ports[self.names('ingest')[0]]}"

    def base(self, name: str) -> str:
        """Where process ``name`` answers."""
        return f"http://127.0.0.1:{self.ports[name]}"

    def log(self, name: str) -> Path:
        return self.tmp / f"{name}.log"

    def add(self, name: str, service: str) -> None:
        """Name a process of ``service`` (a port of its own; the gateways share one) without
        starting it; :meth:`start` starts it."""
        self.services[name] = service
        gateways = self.names("ingest")
        if service == "ingest" and len(gateways) > 1:
            self.ports[name] = self.ports[gateways[0]]  # SO_REUSEPORT
        else:
            self.ports.setdefault(name, free_port())

    def start(self, name: str, *, service: str | None = None, wait: bool = True) -> None:
        """Start (or restart) process ``name``; a new name needs its ``service`` (a worker
        added to a running hub; it starts from a fresh state directory)."""
        if name not in self.services:
            if service is None:
                raise KeyError(f"no process {name!r}; give its service to add one")
            self.add(name, service)
        with self._lock:
            self._spawn(name)
            self._down.discard(name)
            if self._supervisor is None:
                self._supervisor = threading.Thread(
                    target=self._supervise, name="hub-supervisor", daemon=True
                )
                self._supervisor.start()
        if wait:
            self.wait_ready(name)

    def _event(self, what: str, name: str) -> None:
        self.events.append((datetime.now(UTC).isoformat(timespec="milliseconds"), what, name))

    def _spawn(self, name: str) -> None:
        self._event("start", name)
        self.procs[name] = run_module(
            ["-m", "services.cli", "serve", self.services[name]], self.env(name), self.log(name)
        )

    def _supervise(self) -> None:
        """Start again each process that exited without the test stopping it."""
        while not self._stopping.wait(0.5):  # how often it looks, not a wait for a condition
            with self._lock:
                for name, proc in list(self.procs.items()):
                    code = proc.poll()
                    if code is None or name in self._down or self._stopping.is_set():
                        continue
                    self.restarts.append((name, code))
                    self._spawn(name)

    def wait_ready(self, name: str, timeout_s: float = 120) -> None:
        wait_ready(f"{self.base(name)}/readyz", self.procs[name], self.log(name), timeout_s)

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
        if self.restarts:
            out.append(f"--- restarted (name, exit code): {self.restarts}")
        return "\n".join(out)

    def kill9(self, name: str) -> None:
        """SIGKILL the process (and its process group) we started as ``name``."""
        with self._lock:
            self._down.add(name)
            proc = self.procs[name]
        self._event("kill -9", name)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def sigterm(self, name: str, timeout_s: float = 90) -> int:
        """SIGTERM to process ``name`` (a graceful stop, as Kubernetes or systemd sends),
        and its exit code once it has exited; raises ``TimeoutError`` if it has not
        within ``timeout_s`` (and leaves it running, for the test to look at)."""
        with self._lock:
            self._down.add(name)
            proc = self.procs[name]
        self._event("SIGTERM", name)
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise TimeoutError(
                f"{name} did not exit within {timeout_s:g} s of SIGTERM\n"
                + harness.log_tail(self.log(name))
            ) from None

    def stop(self) -> None:
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join(10)
        with self._lock:
            harness.stop_all(list(self.procs.values()))


def start_hub(
    bootstrap: str,
    tmp: Path,
    registry: Path,
    *,
    workers: int = 1,
    gateways: int = 1,
    recognition_workers: tuple[str, ...] | None = None,
    partitions: int = PARTITIONS,
    replication_factor: int = 1,
    env: Mapping[str, str] | None = None,
) -> Hub:
    """Start a hub and wait until every process answers ready.

    ``workers``: processes of the patient index and of recognition each (names above);
    ``gateways``: gateway processes on the one port (``ingest``, ``ingest-1`` …);
    ``recognition_workers``: the recognition processes' names instead (``("rec-a",
    "rec-b")``); ``replication_factor``: of the topics created here and of those the workers
    create (a cluster); ``env``: more variables for every process."""
    create_topics(
        bootstrap, ALL_TOPICS, default_partitions=partitions, replication_factor=replication_factor
    )
    hub = Hub(bootstrap, tmp, registry, partitions=partitions, extra_env=dict(env or {}))
    hub.extra_env.setdefault("MRHUB_KAFKA__REPLICATION_FACTOR", str(replication_factor))

    def named(service: str) -> tuple[str, ...]:
        return (service,) if workers == 1 else tuple(f"{service}-{i}" for i in range(workers))

    for i in range(gateways):
        hub.add("ingest" if i == 0 else f"ingest-{i}", "ingest")
    for name in named("patient_index"):
        hub.add(name, "patient_index")
    for name in recognition_workers or named("recognition"):
        hub.add(name, "recognition")
    try:
        # a gateway first, so that the workers' own topics meet a broker the hub already uses
        for name in list(hub.services):
            hub.start(name, wait=False)
        for name in list(hub.services):
            hub.wait_ready(name)
    except BaseException:
        hub.stop()
        raise
    return hub
