"""``mrhub``: run the hub and its local broker, manage topics and institutions, benchmark.

The CLI starts services as separate processes (``mrhub serve NAME``) and never imports one
service into another.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from services.common import harness
from services.common.broker import (
    ClusterInfo,
    LocalBroker,
    LocalCluster,
    cluster_replication,
    data_dir_of,
    ensure_jars,
)
from services.common.errors import MrhubError
from services.common.event_loop import use_event_loop
from services.common.institutions import hash_token
from services.common.settings import ServiceSettings, Settings, load_settings
from services.common.topics import ALL_TOPICS, max_message_bytes
from services.console import cli as console_cli
from services.imaging_index import connector as imaging_connector
from services.recognition import catalog_cli
from services.recognition import report as recognition_report


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    module: str  # has a ``main.run(settings)``

    def settings(self, settings: Settings) -> ServiceSettings:
        section: ServiceSettings = getattr(settings, self.name)
        return section


#: Every service the hub has, in start order.
SERVICES = (
    ServiceSpec("ingest", "services.ingest"),
    ServiceSpec("patient_index", "services.patient_index"),
    ServiceSpec("recognition", "services.recognition"),
    ServiceSpec("imaging", "services.imaging_index"),
    ServiceSpec("console", "services.console"),  # one process whatever --workers says
)

#: Services `up --workers N` runs once: the console keeps no partitions to share.
SINGLE = frozenset({"console"})


def _broker(
    settings: Settings, data_dir: Path | None = None, nodes: int | None = None
) -> LocalBroker | LocalCluster:
    """The local Kafka: one broker, or a cluster of ``nodes`` (default: the settings'; a data
    directory that holds a cluster is that cluster whatever the setting says, so that
    ``mrhub broker stop`` stops what ``start --nodes 3`` started)."""
    b = settings.broker
    where = data_dir or data_dir_of(settings)
    size = nodes or LocalCluster.size_in(where) or b.nodes
    if size > 1:
        return LocalCluster(
            where,
            settings.cache_dir,
            nodes=size,
            kafka_version=b.kafka_version,
            port=b.port,
            controller_port=b.controller_port,
            heap=b.heap,
            max_message_bytes=max_message_bytes(settings),
        )
    return LocalBroker(
        where,
        settings.cache_dir,
        kafka_version=b.kafka_version,
        port=b.port,
        controller_port=b.controller_port,
        heap=b.heap,
        max_message_bytes=max_message_bytes(settings),
    )


#: The gateway's publish timeout on a local cluster: above a lost broker's fencing, the leader
#: election and the clients' metadata refresh (docs/operations.md, "A cluster of three brokers").
CLUSTER_PUBLISH_TIMEOUT_S = 30


def _replication_env(settings: Settings, broker: LocalBroker | LocalCluster) -> dict[str, str]:
    """On a local cluster, the services create their topics and changelogs with the
    cluster's replication unless MRHUB_KAFKA__REPLICATION_FACTOR says otherwise, and the
    gateway waits out a broker's failover unless MRHUB_INGEST__PUBLISH_TIMEOUT_S is set."""
    if not isinstance(broker, LocalCluster):
        return {}
    env = {}
    if "replication_factor" not in settings.kafka.model_fields_set:
        factor, _ = cluster_replication(broker.size)
        env["MRHUB_KAFKA__REPLICATION_FACTOR"] = str(factor)
    if "publish_timeout_s" not in settings.ingest.model_fields_set:
        env["MRHUB_INGEST__PUBLISH_TIMEOUT_S"] = str(CLUSTER_PUBLISH_TIMEOUT_S)
    return env


def _bootstrap(settings: Settings) -> str:
    if settings.kafka.bootstrap_servers:
        return settings.kafka.bootstrap_servers
    info = _broker(settings).status()
    if info is None:
        raise MrhubError(
            "no Kafka: set MRHUB_KAFKA__BOOTSTRAP_SERVERS or start the local one with "
            "`mrhub broker start`"
        )
    return info.bootstrap


# ------------------------------------------------------------------------------ commands


def cmd_broker(args: argparse.Namespace, settings: Settings) -> int:
    broker = _broker(settings, args.data_dir, args.nodes)
    if args.action == "fetch":
        jars = ensure_jars(settings.cache_dir, settings.broker.kafka_version)
        print(f"Kafka {settings.broker.kafka_version} jars in {jars}")
        return 0
    if args.action == "start":
        running = broker.status()
        if running is not None:
            print(
                f"a broker is already running from {broker.data_dir} "
                f"(pid {running.pid}) at {running.bootstrap}; not starting another"
            )
            return 0
        started_at = time.monotonic()
        info, _ = broker.start(timeout_s=settings.broker.start_timeout_s)
        took = time.monotonic() - started_at
        if isinstance(info, ClusterInfo):
            factor, min_isr = cluster_replication(info.size)
            print(
                f"Kafka {info.kafka_version} cluster of {info.size} ready at {info.bootstrap} "
                f"({took:.1f}s; pids {' '.join(str(n.pid) for n in info.nodes)})"
            )
            print(
                f"topics: replication factor {factor}, min.insync.replicas {min_isr} "
                "(offsets and transaction state too)"
            )
            print(f"export MRHUB_KAFKA__REPLICATION_FACTOR={factor}")
        else:
            print(
                f"Kafka {info.kafka_version} ready at {info.bootstrap} "
                f"(pid {info.pid}, {took:.1f}s)"
            )
        print(f"export MRHUB_KAFKA__BOOTSTRAP_SERVERS={info.bootstrap}")
        return 0
    if args.action == "stop":
        stopped = broker.stop()
        if isinstance(stopped, ClusterInfo):
            print(f"stopped the cluster's {len(stopped.nodes)} running node(s)")
        else:
            print(f"stopped the broker (pid {stopped.pid})" if stopped else "no broker was running")
        return 0
    status = broker.status()
    if status is None:
        print(f"not running (data directory {broker.data_dir})")
        return 3
    if isinstance(status, ClusterInfo):
        print(f"{len(status.nodes)} of {status.size} nodes running (data {status.data_dir}):")
        for n in status.nodes:
            print(f"  {Path(n.data_dir).name} at {n.bootstrap} (pid {n.pid})")
        return 0 if len(status.nodes) == status.size else 4
    print(f"running at {status.bootstrap} (pid {status.pid}, data {status.data_dir})")
    return 0


def cmd_topics(args: argparse.Namespace, settings: Settings) -> int:
    from services.common.kafka_admin import create_topics

    bootstrap = _bootstrap(settings)
    results = create_topics(
        bootstrap,
        ALL_TOPICS,
        default_partitions=settings.topic_partitions,
        replication_factor=settings.kafka.replication_factor,
        min_insync_replicas=settings.kafka.min_insync_replicas,
        max_message_bytes=max_message_bytes(settings),
    )
    for r in results:
        state = "created" if r.created else "exists "
        print(f"{state} {r.name} ({r.partitions} partitions){'  ' + r.note if r.note else ''}")
    return 0


def cmd_institutions(args: argparse.Namespace, settings: Settings) -> int:
    from services.common import institutions as inst

    path = settings.institutions_path
    if args.action == "list":
        registry = inst.Registry.load(path)
        if args.json:
            print(json.dumps(inst.list_rows(registry), ensure_ascii=False, indent=2))
        else:
            print(inst.format_table(registry))
        return 0
    if args.action == "issue-token":
        token = inst.issue_token(path, args.id, label=args.label)
        print(token)
        print(
            f"# token for {args.id}: shown once, only its hash is stored in {path}",
            file=sys.stderr,
        )
        return 0
    removed = inst.revoke_tokens(path, args.id)
    print(f"revoked {removed} token(s) of {args.id}")
    return 0


def cmd_stewards(args: argparse.Namespace, settings: Settings) -> int:
    """A new data-steward token: printed once, with the hash that goes into the settings."""
    token = "mrs_" + secrets.token_urlsafe(32)
    print(f"token: {token}")
    print(f"hash:  {hash_token(token)}")
    print(
        "Add the hash to MRHUB_PATIENT_INDEX__STEWARD_TOKEN_HASHES (a JSON list) and give "
        "the token to the steward; it is not stored anywhere."
    )
    return 0


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    spec = next(s for s in SERVICES if s.name == args.service)
    use_event_loop(settings.event_loop)
    module = importlib.import_module(f"{spec.module}.main")
    module.run(settings)
    return 0


# ----------------------------------------------------------------------------------- up


def _local_hmac_key(settings: Settings) -> str:
    """A random key kept in the state directory, for a one-machine hub only."""
    path = settings.state_dir / "identity-hmac.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


#: ``mrhub up`` starts a service that exits again (a worker stops itself when a write fails,
#: and resumes from its last committed transaction), up to this many times in the window.
MAX_RESTARTS = 5
RESTART_WINDOW_S = 600.0
#: How long `up` waits for every service to answer ready, by default.
READY_TIMEOUT_S = 180.0


#: Worker i of a streaming service listens on the service's port + WORKER_PORT_STEP * i.
WORKER_PORT_STEP = 100


@dataclass(frozen=True)
class _Worker:
    """One process `up` runs: ``name`` (``recognition``, or ``recognition-1`` with several
    workers; its log file's name), the service it serves, where it answers, its env."""

    name: str
    service: str
    base: str
    env: dict[str, str]
    port: int

    def spawn(self, log_dir: Path) -> subprocess.Popen[bytes]:
        return harness.start(
            [sys.executable, "-m", "services.cli", "serve", self.service],
            env=self.env,
            log_path=log_dir / f"{self.name}.log",
        )


def _worker_urls(settings: Settings, service: str, workers: int) -> str:
    svc: ServiceSettings = getattr(settings, service)
    return ",".join(f"http://{svc.host}:{svc.port + WORKER_PORT_STEP * i}" for i in range(workers))


def _plan(settings: Settings, env: dict[str, str], workers: int) -> list[_Worker]:
    """The processes of ``up --workers N``: N of each service. Worker i of a streaming
    service listens on the service's port + 100*i and keeps its RocksDB state in a
    directory of its own (worker 0 in the state directory itself, as with one worker;
    worker i in ``workers/<service>-<i>`` under it): two processes never share one. The N
    gateways share the gateway's port (SO_REUSEPORT: the kernel spreads connections)."""
    plan = []
    for spec in SERVICES:
        svc = spec.settings(settings)
        if workers > 1 and svc.port == 0 and spec.name not in SINGLE:
            raise MrhubError(
                f"--workers {workers} needs a fixed port for {spec.name} (worker i listens on "
                f"its port + {WORKER_PORT_STEP}*i): MRHUB_{spec.name.upper()}__PORT is 0"
            )
        for i in range(1 if spec.name in SINGLE else workers):
            name = spec.name if workers == 1 or spec.name in SINGLE else f"{spec.name}-{i}"
            own = dict(env)
            port = svc.port
            if spec.name != "ingest":
                port += WORKER_PORT_STEP * i
                own[f"MRHUB_{spec.name.upper()}__PORT"] = str(port)
                if i > 0:
                    own["MRHUB_STATE_DIR"] = str(settings.state_dir / "workers" / name)
            plan.append(_Worker(name, spec.name, f"http://{svc.host}:{port}", own, port))
    return plan


def _listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds a TCP socket listening on ``port`` (Linux /proc): with
    several gateways on one port, the port answering says nothing of each one."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{inode}]")
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(fd) in inodes:
                return True
        except OSError:
            continue
    return False


class _Stop:
    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True


class _Interrupted(Exception):
    """Ctrl-C (or SIGTERM) while `up` waited for the services."""


def _how_to_call() -> str:
    """Where this ``mrhub`` is, as the user can type it."""
    exe = Path(sys.executable).parent / "mrhub"
    try:
        shown = exe.relative_to(Path.cwd())
    except ValueError:
        shown = exe
    return f"`make shell` opens a shell with mrhub on PATH, or use {shown}"


def _ready(worker: _Worker, proc: subprocess.Popen[bytes]) -> bool:
    """Whether ``worker`` answers ready; a gateway of several only once it listens itself
    (the shared port may answer from another one; without /proc the port answering is all
    that is known)."""
    shared = worker.service == "ingest" and worker.name != "ingest"
    if shared and Path("/proc/net/tcp").exists() and not _listens(proc.pid, worker.port):
        return False
    return harness.answers_ready(f"{worker.base}/readyz")


def _wait_all_ready(
    procs: Sequence[tuple[_Worker, subprocess.Popen[bytes]]],
    log_dir: Path,
    deadline_s: float,
    stop: _Stop,
) -> str | None:
    """Wait until every process answers ``/readyz`` 200 within one shared deadline; None,
    or what went wrong (naming the process)."""

    def alive() -> None:
        if stop.requested:
            raise _Interrupted
        for w, proc in procs:
            harness.still_running(proc, w.name, log_dir / f"{w.name}.log")()

    def not_ready() -> list[str]:
        return [w.name for w, proc in procs if not _ready(w, proc)]

    waiting: list[str] = [w.name for w, _ in procs]

    def all_ready() -> bool:
        waiting[:] = not_ready()
        return not waiting

    try:
        harness.wait_until(
            all_ready, deadline_s=deadline_s, what="every service to answer ready", alive=alive
        )
    except harness.ProcessExitedError as exc:
        return f"{exc.name} exited with code {exc.returncode} while starting; see {exc.log_path}"
    except TimeoutError:
        names = ", ".join(waiting)
        logs = ", ".join(str(log_dir / f"{n}.log") for n in waiting)
        return f"not ready after {deadline_s:.0f} s: {names} (answers 503 or nothing); see {logs}"
    return None


def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    stop = _Stop()
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    broker: LocalBroker | LocalCluster | None = None
    procs: list[tuple[_Worker, subprocess.Popen[bytes]]] = []
    workers: int = args.workers or settings.workers
    code = 0
    try:
        replication: dict[str, str] = {}
        if settings.kafka.bootstrap_servers:
            bootstrap = settings.kafka.bootstrap_servers
            print(f"using Kafka at {bootstrap}")
        else:
            local = _broker(settings)
            info, started = local.start(timeout_s=settings.broker.start_timeout_s)
            broker = local if started else None
            bootstrap = info.bootstrap
            kind = f"cluster of {local.size}" if isinstance(local, LocalCluster) else "broker"
            print(f"Kafka {kind} {'started' if started else 'already running'} at {bootstrap}")
            replication = _replication_env(settings, local)
        from services.common.kafka_admin import create_topics

        create_topics(
            bootstrap,
            ALL_TOPICS,
            default_partitions=settings.topic_partitions,
            replication_factor=int(
                replication.get(
                    "MRHUB_KAFKA__REPLICATION_FACTOR", settings.kafka.replication_factor
                )
            ),
            min_insync_replicas=settings.kafka.min_insync_replicas,
            max_message_bytes=max_message_bytes(settings),
        )
        print(f"topics ready ({len(ALL_TOPICS)})")
        env = {**os.environ, "MRHUB_KAFKA__BOOTSTRAP_SERVERS": bootstrap, **replication}
        if settings.identity.hmac_key is None:
            env["MRHUB_IDENTITY__HMAC_KEY"] = _local_hmac_key(settings)
        # every worker's address: any worker answers, a dead one is skipped (upstreams.py)
        if "MRHUB_PATIENT_INDEX__URL" not in os.environ:  # follow a configured port
            env["MRHUB_PATIENT_INDEX__URL"] = _worker_urls(settings, "patient_index", workers)
        if "MRHUB_RECOGNITION__URL" not in os.environ:  # the gateway's reads and CDS Hooks
            env["MRHUB_RECOGNITION__URL"] = _worker_urls(settings, "recognition", workers)
        console_note = console_cli.local_console_env(settings, env)
        log_dir = settings.state_dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        for w in _plan(settings, env, workers):
            procs.append((w, w.spawn(log_dir)))
        what = "services" if workers == 1 else f"processes ({workers} per service)"
        print(f"waiting for {len(procs)} {what} to answer ready …", flush=True)
        try:
            failed = _wait_all_ready(procs, log_dir, args.ready_timeout, stop)
        except _Interrupted:
            return 130
        if failed is not None:
            print(f"mrhub did not come up: {failed}", flush=True)
            return 1
        print("mrhub is up (every service answers ready):")
        for w, proc in procs:
            print(f"  {w.name:<16} {w.base}   (metrics {w.base}/metrics, pid {proc.pid})")
        print(f"  {'kafka':<16} {bootstrap}")
        if console_note:
            print(console_note)
        print(f"logs in {log_dir}; Ctrl-C stops everything")
        print(f"to call mrhub: {_how_to_call()}", flush=True)
        restarts: dict[str, list[float]] = {}
        while not stop.requested:
            for i, (w, proc) in enumerate(procs):
                if proc.poll() is None or stop.requested:
                    continue
                name = w.name  # each process is restarted on its own, with its own env
                now = time.monotonic()
                recent = [t for t in restarts.get(name, []) if now - t < RESTART_WINDOW_S]
                if len(recent) >= MAX_RESTARTS:
                    print(
                        f"{name} exited with code {proc.returncode} {len(recent)} times in "
                        f"{RESTART_WINDOW_S:.0f} s; stopping the hub"
                    )
                    code = 1
                    stop.requested = True
                    break
                print(f"{name} exited with code {proc.returncode}; starting it again", flush=True)
                restarts[name] = [*recent, time.monotonic()]
                procs[i] = (w, w.spawn(log_dir))
            time.sleep(0.3)  # how often the supervisor looks, not a wait for a condition
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        harness.stop_all([p for _, p in procs], grace_s=15)
        if broker is not None:
            broker.stop()
            print("Kafka stopped")
        print("mrhub stopped", flush=True)
    return code


# ---------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mrhub", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("broker", help="the local Kafka (KRaft): one broker or a cluster")
    p.add_argument("action", choices=["start", "stop", "status", "fetch"])
    p.add_argument(
        "--nodes",
        type=int,
        default=None,
        choices=range(1, 10),
        metavar="N",
        help="brokers (default: MRHUB_BROKER__NODES, 1); 3: a cluster with replication "
        "factor 3 and min.insync.replicas 2; stop and status find a cluster by its data "
        "directory",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="default: MRHUB_BROKER__DATA_DIR, else broker/ under MRHUB_STATE_DIR",
    )
    p.set_defaults(func=cmd_broker)

    p = sub.add_parser("topics", help="the hub's Kafka topics")
    p.add_argument("action", choices=["create"])
    p.set_defaults(func=cmd_topics)

    p = sub.add_parser("up", help="start Kafka (unless configured) and every service")
    p.add_argument(
        "--ready-timeout",
        type=float,
        default=READY_TIMEOUT_S,
        help="seconds every service has to answer ready (default %(default)s)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        choices=range(1, 17),
        metavar="N",
        help="processes per service (default: MRHUB_WORKERS, else 1); worker i of patient "
        "index, recognition and imaging listens on the service's port + 100*i, the N "
        "gateways share the gateway's port",
    )
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("serve", help="run one service in the foreground")
    p.add_argument("service", choices=[s.name for s in SERVICES])
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("institutions", help="the institution registry")
    isub = p.add_subparsers(dest="action", required=True)
    q = isub.add_parser("list", help="every institution (no credentials)")
    q.add_argument("--json", action="store_true")
    q = isub.add_parser("issue-token", help="create a token; prints it once")
    q.add_argument("id")
    q.add_argument("--label", default="")
    q = isub.add_parser("revoke-token", help="remove every token of an institution")
    q.add_argument("id")
    p.set_defaults(func=cmd_institutions)

    catalog_cli.add_parser(sub)
    recognition_report.add_parser(sub)
    imaging_connector.add_parser(sub)

    console_cli.add_parser(sub)

    p = sub.add_parser("stewards", help="data stewards of the patient index")
    ssub = p.add_subparsers(dest="action", required=True)
    ssub.add_parser("new-token", help="make a steward token; prints it and its hash once")
    p.set_defaults(func=cmd_stewards)

    _add_tool_parsers(sub)
    return parser


# ---------------------------------------------------- the tools: `mrhub bench`, `mrhub simulate`
# Their code is the package mrhub_tools (the `tools` extra, not in the image): the parsers are
# here, so that `mrhub bench --help` works anywhere; the handlers import it only when run.


@contextmanager
def _tools(verb: str) -> Iterator[None]:
    """Turn a missing module of the tools (mrhub_tools or a dependency it imports, lazily,
    mid-run) into a :class:`MrhubError` (exit 2) that says how to install them."""
    try:
        yield
    except ModuleNotFoundError as exc:
        raise MrhubError(
            f"`mrhub {verb}` needs the tools, which are not installed here (no module "
            f"{exc.name!r}): pip install 'mrhub[tools]' (in a clone: make setup)"
        ) from exc


def _add_tool_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "simulate",
        help="a simulated hospital region: prepare its registry, run a stream through the hub",
        description="``prepare`` writes a simulated region's institution registry (and its "
        "hospitals' tokens) into a directory; start the hub against it "
        "(MRHUB_INSTITUTIONS_PATH); ``run`` "
        "then posts a seeded stream of visits through the gateway and compares the hub's "
        "decisions with the ground truth. docs/simulate.md; needs the tools extra.",
    )
    p.add_argument("action", choices=["prepare", "run"])
    p.add_argument("--dir", type=Path, default=None, help="default: $MRHUB_STATE_DIR/simulate")
    p.add_argument("--institutions", type=int, default=None, help="prepare: default 50")
    p.add_argument("--patients", type=int, default=1000)
    p.add_argument("--days", type=int, default=1)
    p.add_argument("--seed", type=int, default=None, help="default: the simulator's")
    p.add_argument("--url", default=None, help="the gateway (default from MRHUB_INGEST__*)")
    p.add_argument("--bootstrap", default=None, help="Kafka (default: settings / local broker)")
    p.add_argument("--rate", type=float, default=0.0, help="requests/s; 0 = as fast as possible")
    p.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    p.add_argument("--run-id", default=None, help="varies identifiers only (default: random)")
    p.add_argument("--recognition-group", default="mrhub-recognition")
    p.add_argument("--stall", type=float, default=180.0, help="give up waiting after N s idle")
    p.add_argument("--min-agreement", type=float, default=0.995, help="exit 1 below this")
    p.add_argument(
        "--card-regions",
        default=None,
        help="comma-separated 6-digit regions of the 身份证 numbers (tests keep theirs apart)",
    )
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("bench", help="benchmarks that print measured figures")
    p.add_argument("which", choices=["ingest", "match", "index", "check", "pipeline", "all"])
    p.add_argument("--seconds", type=float, default=10.0, help="ingest: length of each run")
    p.add_argument(
        "--dataset",
        default="febrl4",
        choices=["cn-10k", "cn-1m", "febrl1", "febrl2", "febrl3", "febrl4"],
        help="match: the labelled data set (the Chinese set of mrhub_tools.cnpop, or FEBRL)",
    )
    p.add_argument(
        "--cn-seed",
        type=int,
        default=None,
        help="match: the Chinese generator's seed (default: its report seed, never tuned on)",
    )
    p.add_argument("--rules", default=None, help="match: a rules file (default: the hub's)")
    p.add_argument("--no-splink", action="store_true", help="match: skip the Splink baseline")
    p.add_argument(
        "--populations",
        default="10000,100000,1000000",
        help="index: comma-separated numbers of known persons to measure at",
    )
    p.add_argument(
        "--placement",
        choices=("anchor", "key"),
        default="anchor",
        help="index: the partition each accepted resource is produced to — its patient's "
        "anchor's, as the gateway places it (default), or its Kafka key's, as before the "
        "gateway placed them (every record then crosses the by-identity topic)",
    )
    p.add_argument(
        "--masters",
        choices=("anchor", "legacy"),
        default="anchor",
        help="index: the known persons' master ids as seeded — minted on their anchor's "
        "partition, as the index mints them (default), or in the form minted before, as an "
        "upgraded hub holds them (their records then cross the by-master topic)",
    )
    p.add_argument("--patients", type=int, default=5000, help="check: patients with a result")
    p.add_argument("--rate", type=float, default=500.0, help="check: requests per second")
    p.add_argument("--orders", type=int, default=500, help="check: orders for order → decision")
    p.add_argument(
        "--order-rate",
        type=float,
        default=None,
        help="check, pipeline: orders per second (default 50 for check, 100 for pipeline)",
    )
    p.add_argument("--seed", type=int, default=20261122, help="check: population seed")
    p.add_argument(
        "--hook-rate",
        type=float,
        default=100.0,
        help="check: CDS Hooks order-select calls per second through the gateway, for "
        "--seconds, after the checks (0: none)",
    )
    p.add_argument(
        "--recognition-workers",
        type=int,
        default=1,
        choices=[1, 2],
        help="check: recognition worker processes (checks sent round-robin)",
    )
    p.add_argument(
        "--visits", type=int, default=None, help="pipeline: patients, each with a hospital visit"
    )
    p.add_argument(
        "--visit-rate",
        type=float,
        default=None,
        help="pipeline: visit requests per second of the steady half",
    )
    p.add_argument(
        "--posters", type=int, default=None, help="pipeline: concurrent posters (flat-out half)"
    )
    p.add_argument(
        "--hops",
        type=int,
        default=0,
        help="pipeline: stages of the bare Kafka loop (default: the hops a result makes)",
    )
    p.add_argument(
        "--nodes",
        type=int,
        default=1,
        help="pipeline: Kafka nodes to start (3: a cluster, replication factor 3)",
    )
    p.add_argument(
        "--workers",
        default="1",
        help="pipeline: processes per service; several counts (1,2,3): one run each on one "
        "cluster, and how records/s and records/s per core scale",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("bench-report"),
        help="all: directory for report.json and report.html",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace, settings: Settings) -> int:
    with _tools("bench"):
        pipeline = importlib.import_module("mrhub_tools.bench.pipeline")
        if args.order_rate is None:
            args.order_rate = pipeline.ORDER_RATE if args.which == "pipeline" else 50.0
        try:  # their defaults live with the bench (a scaling run has its own)
            sizes = pipeline.default_sizes(args.workers)
        except ValueError as exc:
            raise MrhubError(str(exc)) from exc
        for name, value in sizes.items():
            if getattr(args, name) is None:
                setattr(args, name, value)
        module = importlib.import_module(f"mrhub_tools.bench.{args.which}")
        code: int = module.main(args, settings)
    return code


def cmd_simulate(args: argparse.Namespace, settings: Settings) -> int:
    with _tools("simulate"):
        module = importlib.import_module("mrhub_tools.simulate.cli")
        code: int = module.main(args, settings)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
        code: int = args.func(args, settings)
    except MrhubError as exc:
        print(f"mrhub: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
