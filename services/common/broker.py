"""Genuine Apache Kafka (KRaft) run from Maven Central jars: one node, or a cluster of several.

No Docker: the jars are fetched once with Maven into the cache directory (outside the work
tree), after which starting needs no network. State (the KRaft log, the generated
``server.properties``, the broker's own log and a ``broker.json`` with its pid and ports) lives
in one data directory, so several brokers (a developer's and a test session's) never meet.

:class:`LocalBroker` is one process that is both broker and KRaft controller. A
:class:`LocalCluster` is several of them (``node-1/``, ``node-2/`` … under its data directory)
forming one KRaft quorum: every node a controller voter and a broker, the hub's topics, the
consumer offsets and the transaction state log replicated to three of them with
``min.insync.replicas=2`` — a cluster that keeps taking ``acks=all`` writes with one node down
and refuses them (rather than keep a single copy) with two down.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from services.common.errors import BrokerError, PortInUseError
from services.common.harness import ProcessExitedError, still_running, wait_until
from services.common.settings import Settings
from services.common.topics import DEFAULT_MAX_MESSAGE_BYTES

log = logging.getLogger(__name__)

_SLF4J = "1.7.36"
_RELOAD4J = "1.2.25"

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>mrhub.local</groupId><artifactId>kafka-runtime</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{kafka}</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-reload4j</artifactId>
      <version>{slf4j}</version></dependency>
    <dependency><groupId>ch.qos.reload4j</groupId><artifactId>reload4j</artifactId>
      <version>{reload4j}</version></dependency>
  </dependencies>
</project>
"""

_LOG4J = """log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.RollingFileAppender
log4j.appender.file.File={log}
log4j.appender.file.MaxFileSize=20MB
log4j.appender.file.MaxBackupIndex=2
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka=INFO
log4j.logger.org.apache.kafka=INFO
log4j.logger.state.change.logger=WARN
log4j.logger.kafka.request.logger=WARN
"""


def jar_dir(cache_dir: Path, kafka_version: str) -> Path:
    return cache_dir / "kafka" / kafka_version / "jars"


def ensure_jars(cache_dir: Path, kafka_version: str) -> Path:
    """Fetch Kafka's runtime jars with Maven once; later calls return at once, offline."""
    jars = jar_dir(cache_dir, kafka_version)
    marker = jars / ".complete"
    if marker.exists():
        return jars
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError(
            "Maven (mvn) is needed once to fetch Kafka's jars; on Debian: apt-get install maven"
        )
    work = jars.parent
    work.mkdir(parents=True, exist_ok=True)
    (work / "pom.xml").write_text(
        _POM.format(kafka=kafka_version, slf4j=_SLF4J, reload4j=_RELOAD4J), encoding="utf-8"
    )
    tmp = work / "jars.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    log.info("fetching Kafka %s jars from Maven Central into %s", kafka_version, jars)
    proc = subprocess.run(
        [
            mvn,
            "-q",
            "-B",
            "-f",
            str(work / "pom.xml"),
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={tmp}",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0 or not any(tmp.glob("kafka_2.13-*.jar")):
        raise BrokerError(f"mvn could not fetch Kafka {kafka_version}:\n{proc.stdout[-2000:]}")
    shutil.rmtree(jars, ignore_errors=True)
    tmp.rename(jars)
    marker.write_text(kafka_version, encoding="utf-8")
    return jars


def data_dir_of(settings: Settings) -> Path:
    """The local broker's data directory: ``MRHUB_BROKER__DATA_DIR`` when it is set, else
    ``broker/`` under ``MRHUB_STATE_DIR`` (so that moving the state moves the broker's data
    and logs with it)."""
    if "data_dir" in settings.broker.model_fields_set:
        return settings.broker.data_dir
    return settings.state_dir / "broker"


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class BrokerInfo:
    pid: int
    port: int
    controller_port: int
    data_dir: str
    kafka_version: str
    started_at: float

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours counts as dead
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _sasl_plain(port: int, controller_port: int, users: dict[str, str]) -> dict[str, str]:
    """Broker properties for one SASL_PLAINTEXT listener with PLAIN users."""
    (broker_user, broker_password), *_ = users.items()
    accounts = " ".join(f'user_{u}="{pw}"' for u, pw in users.items())
    jaas = (
        "org.apache.kafka.common.security.plain.PlainLoginModule required "
        f'username="{broker_user}" password="{broker_password}" {accounts};'
    )
    return {
        "listeners": f"SASL_PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"SASL_PLAINTEXT://127.0.0.1:{port}",
        "listener.security.protocol.map": "SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": "SASL_PLAINTEXT",
        "sasl.enabled.mechanisms": "PLAIN",
        "sasl.mechanism.inter.broker.protocol": "PLAIN",
        "listener.name.sasl_plaintext.plain.sasl.jaas.config": jaas,
    }


def new_cluster_id() -> str:
    """A KRaft cluster id (16 random bytes, URL-safe base64, as ``kafka-storage random-uuid``)."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def cluster_replication(nodes: int) -> tuple[int, int]:
    """(replication factor, ``min.insync.replicas``) for a cluster of ``nodes`` brokers: three
    copies and two in sync once there are three nodes, so that ``acks=all`` survives one lost
    broker and is refused rather than kept as a single copy after a second."""
    factor = min(3, max(1, nodes))
    return factor, (2 if factor >= 3 else 1)


def replication_properties(nodes: int) -> dict[str, str]:
    """Broker properties for the replication of a cluster of ``nodes``: the defaults of new
    topics, the consumer offsets and the transaction state log (every worker commits its
    offsets and outputs through it)."""
    factor, min_isr = cluster_replication(nodes)
    props = {
        "default.replication.factor": str(factor),
        "min.insync.replicas": str(min_isr),
        "offsets.topic.replication.factor": str(factor),
        "transaction.state.log.replication.factor": str(factor),
        "transaction.state.log.min.isr": str(min_isr),
        "unclean.leader.election.enable": "false",
    }
    if nodes > 1:
        # a crashed node is fenced (its partitions get new leaders, it leaves their ISR)
        # after this long without a heartbeat; Kafka's default is 9 s
        props["broker.heartbeat.interval.ms"] = "1000"
        props["broker.session.timeout.ms"] = "6000"
    return props


class LocalBroker:
    """Manage one broker whose whole state lives in ``data_dir``."""

    def __init__(
        self,
        data_dir: Path,
        cache_dir: Path,
        *,
        kafka_version: str = "3.9.1",
        port: int = 9092,
        controller_port: int = 9093,
        heap: str = "512m",
        sasl_plain_users: dict[str, str] | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        node_id: int = 1,
        voters: str | None = None,
        cluster_id: str | None = None,
        replication: int = 1,
    ) -> None:
        """``sasl_plain_users`` (user → password): clients must authenticate with SASL/PLAIN
        on the broker's listener (``SASL_PLAINTEXT``), the first user being the broker's own
        (for tests of the hub's Kafka security settings; never a production setup).
        ``max_message_bytes``: the broker's ``message.max.bytes`` and
        ``replica.fetch.max.bytes`` (:func:`services.common.topics.max_message_bytes`), so
        that a topic without its own ``max.message.bytes`` takes a body-limit-sized message."""
        self.sasl_plain_users = dict(sasl_plain_users or {})
        self.data_dir = data_dir.resolve()
        self.max_message_bytes = max_message_bytes
        self.cache_dir = cache_dir
        self.kafka_version = kafka_version
        self.port = port
        self.controller_port = controller_port
        self.heap = heap
        # a node of a LocalCluster: its id, the quorum's voters ("1@host:port,2@…"), the id
        # every node is formatted with, and the replication the cluster's internal topics get
        self.node_id = node_id
        self.voters = voters
        self.cluster_id = cluster_id
        self.replication = replication

    @property
    def info_path(self) -> Path:
        return self.data_dir / "broker.json"

    @property
    def properties_path(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "logs" / "server.log"

    def status(self) -> BrokerInfo | None:
        """The running broker this data directory belongs to, or None."""
        try:
            info = BrokerInfo(**json.loads(self.info_path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            return None
        if _pid_alive(info.pid) and str(self.properties_path) in _cmdline(info.pid):
            return info
        return None

    def _write_config(self, port: int, controller_port: int) -> None:
        (self.data_dir / "logs").mkdir(parents=True, exist_ok=True)
        kraft = self.data_dir / "kraft"
        voters = self.voters or f"{self.node_id}@127.0.0.1:{controller_port}"
        props = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "controller.quorum.voters": voters,
            "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(kraft),
            "num.partitions": "1",
            "auto.create.topics.enable": "true",
            "offsets.topic.num.partitions": "6",
            "transaction.state.log.num.partitions": "4",
            **replication_properties(self.replication),
            "group.initial.rebalance.delay.ms": "0",
            "log.retention.hours": "168",
            "num.network.threads": "2",
            "num.io.threads": "2",
            "num.recovery.threads.per.data.dir": "1",
            "log.cleaner.dedupe.buffer.size": str(8 * 1024 * 1024),
            # one limit for the whole hub: a resource as large as the gateway's body limit
            # travels (Kafka's default is 1 MiB)
            "message.max.bytes": str(self.max_message_bytes),
            "replica.fetch.max.bytes": str(self.max_message_bytes),
            # a produce request carries up to one batch per partition
            "socket.request.max.bytes": str(max(100 * 1024 * 1024, 4 * self.max_message_bytes)),
        }
        if self.sasl_plain_users:
            props.update(_sasl_plain(port, controller_port, self.sasl_plain_users))
        text = "".join(f"{k}={v}\n" for k, v in props.items())
        self.properties_path.write_text(text, encoding="utf-8")
        (self.data_dir / "log4j.properties").write_text(
            _LOG4J.format(log=self.log_path), encoding="utf-8"
        )

    def _java(self, jars: Path, main: str, *args: str, heap: str) -> list[str]:
        java = shutil.which("java")
        if java is None:
            raise BrokerError(
                "Java 17 is needed to run Kafka; on Debian: apt-get install openjdk-17-jre-headless"
            )
        return [
            java,
            f"-Xmx{heap}",
            "-Xms64m",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dlog4j.configuration=file:{self.data_dir / 'log4j.properties'}",
            f"-Dkafka.logs.dir={self.data_dir / 'logs'}",
            "-cp",
            f"{jars}/*",
            main,
            *args,
        ]

    def _format(self, jars: Path) -> None:
        if (self.data_dir / "kraft" / "meta.properties").exists():
            return
        cluster_id = self.cluster_id or new_cluster_id()
        proc = subprocess.run(
            self._java(
                jars,
                "kafka.tools.StorageTool",
                "format",
                # one argument: a base64 id may start with "-" and be read as an option
                f"--cluster-id={cluster_id}",
                "-c",
                str(self.properties_path),
                heap="256m",
            ),
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise BrokerError(f"formatting the KRaft directory failed:\n{proc.stdout}{proc.stderr}")

    def start(self, *, timeout_s: float = 60.0) -> tuple[BrokerInfo, bool]:
        """Start the broker unless this data directory's broker runs already.

        Returns the broker and whether this call started it. Raises ``PortInUseError``
        naming the port when a port it needs is taken by something else.
        """
        info, proc = self.launch()
        if proc is None:
            return info, False
        self.wait_started(info, proc, timeout_s)
        return info, True

    def launch(self) -> tuple[BrokerInfo, subprocess.Popen[bytes] | None]:
        """Start the broker's process without waiting for it to answer (the nodes of a
        cluster must all be starting before any of them can: a KRaft quorum needs a
        majority). The process is None when this data directory's broker runs already."""
        running = self.status()
        if running is not None:
            return running, None
        self.data_dir.mkdir(parents=True, exist_ok=True)
        port = self.port or self._remembered("port") or free_port()
        cport = self.controller_port or self._remembered("controller_port") or free_port()
        # A remembered port (from port 0) may have been taken since: pick again.
        if not self.port and not port_is_free(port):
            port = free_port()
        if not self.controller_port and not port_is_free(cport):
            cport = free_port()
        for p, purpose in ((port, "Kafka listener"), (cport, "KRaft controller")):
            if not port_is_free(p):
                raise PortInUseError(p, purpose)
        jars = ensure_jars(self.cache_dir, self.kafka_version)
        self._write_config(port, cport)
        self._format(jars)
        out = open(self.data_dir / "logs" / "stdout.log", "ab")  # noqa: SIM115 - handed to child
        try:
            proc = subprocess.Popen(
                self._java(jars, "kafka.Kafka", str(self.properties_path), heap=self.heap),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            out.close()
        info = BrokerInfo(
            pid=proc.pid,
            port=port,
            controller_port=cport,
            data_dir=str(self.data_dir),
            kafka_version=self.kafka_version,
            started_at=time.time(),
        )
        self.info_path.write_text(json.dumps(asdict(info)), encoding="utf-8")
        return info, proc

    def wait_started(
        self, info: BrokerInfo, proc: subprocess.Popen[bytes], timeout_s: float
    ) -> None:
        """Wait until the launched broker answers; stop it and raise when it does not."""
        try:
            self._wait_ready(info, proc, timeout_s)
        except BaseException:
            self._terminate(proc.pid, grace_s=5)
            raise

    def _remembered(self, field: str) -> int:
        try:
            return int(json.loads(self.info_path.read_text(encoding="utf-8"))[field])
        except (OSError, ValueError, KeyError, TypeError):
            return 0

    def _wait_ready(
        self, info: BrokerInfo, proc: subprocess.Popen[bytes], timeout_s: float
    ) -> None:
        from services.common.kafka_admin import cluster_answers

        try:
            wait_until(
                lambda: cluster_answers(info.bootstrap, timeout_s=2.0),
                deadline_s=timeout_s,
                what=f"the broker at {info.bootstrap}",
                alive=still_running(proc, "the broker"),
            )
        except ProcessExitedError as exc:
            raise BrokerError(
                f"the broker exited with code {exc.returncode}; see {self.log_path}"
            ) from None
        except TimeoutError:
            raise BrokerError(
                f"the broker did not answer within {timeout_s:.0f}s; see {self.log_path}"
            ) from None

    def stop(self, *, grace_s: float = 20.0) -> BrokerInfo | None:
        """Stop exactly the broker this data directory started; None if none was running."""
        info = self.status()
        if info is None:
            return None
        self._terminate(info.pid, grace_s=grace_s)
        return info

    def kill(self) -> BrokerInfo | None:
        """SIGKILL the broker (a crash: no controlled shutdown, nothing flushed); None if
        none was running."""
        info = self.status()
        if info is None:
            return None
        try:
            os.kill(info.pid, signal.SIGKILL)
        except ProcessLookupError:
            return info
        try:
            os.waitpid(info.pid, 0)
        except ChildProcessError:  # not our child: wait until it is gone
            wait_until(
                lambda: not _pid_alive(info.pid),
                deadline_s=30,
                what=f"the broker (pid {info.pid}) to die",
                interval_s=0.05,
            )
        return info

    @staticmethod
    def _terminate(pid: int, *, grace_s: float) -> None:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return

        def gone() -> bool:
            try:
                return os.waitpid(pid, os.WNOHANG) != (0, 0)
            except ChildProcessError:  # not our child: look for it
                return not _pid_alive(pid)

        try:
            wait_until(
                gone, deadline_s=grace_s, what=f"the broker (pid {pid}) to exit", interval_s=0.1
            )
            return
        except TimeoutError:
            pass
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


@dataclass(frozen=True)
class ClusterInfo:
    """The running nodes of a :class:`LocalCluster` (all of them when it is whole)."""

    nodes: tuple[BrokerInfo, ...]
    size: int

    @property
    def bootstrap(self) -> str:
        return ",".join(n.bootstrap for n in self.nodes)

    @property
    def pid(self) -> int:
        return self.nodes[0].pid

    @property
    def kafka_version(self) -> str:
        return self.nodes[0].kafka_version

    @property
    def data_dir(self) -> str:
        return str(Path(self.nodes[0].data_dir).parent)


class LocalCluster:
    """Several KRaft nodes on this machine, from the same jars, forming one cluster.

    Node ``i`` (1-based, its ``node.id``) keeps its state in ``data_dir/node-i`` and listens
    on ``port + 2*(i-1)`` (controller: ``controller_port + 2*(i-1)``): 9092/9093, 9094/9095,
    9096/9097 by default. With ports 0 every node gets free ports, remembered in
    ``cluster.json`` with the cluster id, so that a node restarted later rejoins at the same
    address. Each node is a controller voter and a broker: the quorum survives one node lost.
    """

    def __init__(
        self,
        data_dir: Path,
        cache_dir: Path,
        *,
        nodes: int = 3,
        kafka_version: str = "3.9.1",
        port: int = 9092,
        controller_port: int = 9093,
        heap: str = "512m",
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        if nodes < 2:
            raise BrokerError("a cluster has two nodes or more; one is a LocalBroker")
        self.data_dir = data_dir.resolve()
        self.cache_dir = cache_dir
        self.size = nodes
        self.kafka_version = kafka_version
        self.port = port
        self.controller_port = controller_port
        self.heap = heap
        self.max_message_bytes = max_message_bytes

    @property
    def plan_path(self) -> Path:
        return self.data_dir / "cluster.json"

    @staticmethod
    def size_in(data_dir: Path) -> int:
        """The number of nodes of the cluster whose data directory this is (0: none)."""
        try:
            return len(json.loads((data_dir / "cluster.json").read_text(encoding="utf-8"))["ports"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0

    def _plan(self) -> dict[str, Any]:
        """The cluster id and every node's (port, controller port), fixed at first start."""
        try:
            known: dict[str, Any] = json.loads(self.plan_path.read_text(encoding="utf-8"))
            if isinstance(known["ports"], list) and len(known["ports"]) == self.size:
                return known
        except (OSError, ValueError, KeyError, TypeError):
            pass
        ports: list[list[int]] = []
        taken: set[int] = set()
        for i in range(self.size):
            pair = []
            for base in (self.port, self.controller_port):
                p = base + 2 * i if base else free_port()
                while p in taken:  # a free port may be handed out twice before anyone binds
                    p = free_port()
                taken.add(p)
                pair.append(p)
            ports.append(pair)
        plan = {"cluster_id": new_cluster_id(), "ports": ports}
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.plan_path.write_text(json.dumps(plan), encoding="utf-8")
        return plan

    def node(self, node_id: int) -> LocalBroker:
        """Node ``node_id`` (1 … size) of the cluster."""
        if not 1 <= node_id <= self.size:
            raise BrokerError(f"the cluster has nodes 1 to {self.size}, not {node_id}")
        plan = self._plan()
        ports: list[list[int]] = plan["ports"]
        voters = ",".join(f"{i + 1}@127.0.0.1:{c}" for i, (_, c) in enumerate(ports))
        port, cport = ports[node_id - 1]
        return LocalBroker(
            self.data_dir / f"node-{node_id}",
            self.cache_dir,
            kafka_version=self.kafka_version,
            port=port,
            controller_port=cport,
            heap=self.heap,
            max_message_bytes=self.max_message_bytes,
            node_id=node_id,
            voters=voters,
            cluster_id=str(plan["cluster_id"]),
            replication=self.size,
        )

    @property
    def nodes(self) -> list[LocalBroker]:
        return [self.node(i) for i in range(1, self.size + 1)]

    @property
    def bootstrap(self) -> str:
        """Every node's address, running or not (clients find the live ones)."""
        ports: list[list[int]] = self._plan()["ports"]
        return ",".join(f"127.0.0.1:{p}" for p, _ in ports)

    def status(self) -> ClusterInfo | None:
        """The nodes that run, or None when none does."""
        running = tuple(i for i in (n.status() for n in self.nodes) if i is not None)
        return ClusterInfo(running, self.size) if running else None

    def start(self, *, timeout_s: float = 90.0) -> tuple[ClusterInfo, bool]:
        """Start every node that is not running and wait until the cluster has them all as
        live brokers. Returns the cluster and whether this call started any node."""
        from services.common.kafka_admin import live_brokers

        launched: list[tuple[LocalBroker, BrokerInfo, subprocess.Popen[bytes]]] = []
        try:
            for node in self.nodes:
                info, proc = node.launch()
                if proc is not None:
                    launched.append((node, info, proc))
            for node, info, proc in launched:
                node.wait_started(info, proc, timeout_s)
            wait_until(
                lambda: live_brokers(self.bootstrap) >= self.size,
                deadline_s=timeout_s,
                what=f"all {self.size} brokers of the cluster at {self.bootstrap}",
            )
        except BaseException:
            for node, _, _ in launched:
                node.stop(grace_s=5)
            raise
        status = self.status()
        if status is None:
            raise BrokerError(f"the cluster's nodes exited after starting; see {self.data_dir}")
        return status, bool(launched)

    def stop(self, *, grace_s: float = 30.0) -> ClusterInfo | None:
        """Stop every node (SIGTERM: a controlled shutdown each); None if none was running."""
        status = self.status()
        # all at once: stopped one by one, the last nodes wait out their controlled shutdown
        # for a quorum that has already gone
        with ThreadPoolExecutor(max_workers=self.size) as pool:
            list(pool.map(lambda node: node.stop(grace_s=grace_s), self.nodes))
        return status
