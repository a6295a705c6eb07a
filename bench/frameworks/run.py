"""Framework comparison for issue 15: per-message CPU of faust-streaming, Quix Streams and
bare transactional loops (aiokafka, confluent-kafka) on the same hop workload.

Run with the project's .venv (it starts a local KRaft broker with services.common.broker):

    .venv/bin/python bench/frameworks/run.py --messages 20000 --hops 1,4 --repeats 3

For each repeat, each H and each framework (interleaved, so machine noise spreads over all):
fresh topics PREFIX.0 .. PREFIX.H (3 partitions) and PREFIX.cl; N messages of ~1 KB fed to
PREFIX.0 *before* the worker starts; the worker (one process, all H hops) starts; a
read_committed reader here counts PREFIX.H. Figures:

* records/s = N / (last record committed on PREFIX.H - worker's first processed message);
* CPU us per message per hop = worker process CPU (utime+stime of every thread, /proc/PID/stat)
  at the moment the last record arrived, minus the worker's own process_time() at its first
  message, divided by N*H. Broker, feeder and reader are other processes / excluded.
* idle CPU: the worker's CPU per second over 3 s after the drain (a floor that is in the
  figure above too).

``--profile``: one more (uncounted) run per framework and H with ``py-spy record --nonblocking
--format raw`` attached during the drain, summarised by package (see pyspy_summary.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(ROOT), str(HERE)]

from common import PARTITIONS, message  # noqa: E402
from pyspy_summary import summarise as summarise_profile  # noqa: E402

VENV = ROOT / ".venv" / "bin" / "python"
VENV_QS = ROOT / ".venv-qs" / "bin" / "python"
WORKERS = {
    "faust": (VENV, "w_faust.py"),
    # variants of (a), not mrhub's configuration (FW_FAUST_OVERRIDES, see w_faust.py)
    "faust-alo": (VENV, "w_faust.py", {"processing_guarantee": "at_least_once"}),
    "faust-linger5": (VENV, "w_faust.py", {"producer_linger": 0.005}),
    "quix": (VENV_QS, "w_quix.py"),
    "aiokafka": (VENV, "w_aiokafka.py"),
    "confluent": (VENV_QS, "w_confluent.py"),
}
TICKS = os.sysconf("SC_CLK_TCK")


logging.getLogger("aiokafka").setLevel(logging.CRITICAL)


def log(msg: str) -> None:
    print(f"[fw] {time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def proc_times(pid: int) -> tuple[float, float]:
    """(utime, stime) of the whole process (every thread), seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return int(fields[11]) / TICKS, int(fields[12]) / TICKS


def proc_cpu_s(pid: int) -> float:
    """utime + stime of the whole process (every thread), seconds."""
    return sum(proc_times(pid))


def make_topics(bootstrap: str, prefix: str, hops: int) -> None:
    from services.common.kafka_admin import create_topics
    from services.common.topics import TopicSpec

    specs = [TopicSpec(f"{prefix}.{i}", key="", description="") for i in range(hops + 1)]
    specs += [TopicSpec(f"{prefix}.{s}", key="", description="") for s in ("cl", "dlq")]
    create_topics(bootstrap, specs, default_partitions=PARTITIONS, replication_factor=1)


async def feed(bootstrap: str, topic: str, n: int) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, enable_idempotence=True, acks="all", linger_ms=5
    )
    await producer.start()
    try:
        for i in range(n):
            k, v = message(i)
            await producer.send(topic, v, key=k)
        await producer.flush()
    finally:
        await producer.stop()


class Reader(threading.Thread):
    """Counts the committed records of one topic (read_committed, from the beginning)."""

    def __init__(self, bootstrap: str, topic: str, expected: int) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.expected = bootstrap, topic, expected
        self.count = 0
        self.keys: set[bytes] = set()
        self.bad_hop = 0
        self.hops = int(topic.rsplit(".", 1)[-1])
        self.last = 0.0
        self.cpu_at_last: float | None = None
        self.times_at_last: tuple[float, float] | None = None
        self.pid: int | None = None
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.done = threading.Event()

    def run(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        c = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            isolation_level="read_committed",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=20,
        )
        await c.start()
        try:
            tps = [TopicPartition(self.topic, p) for p in range(PARTITIONS)]
            c.assign(tps)
            await c.seek_to_beginning(*tps)
            self.ready.set()
            while not self.stop.is_set() and self.count < self.expected:
                batch = await c.getmany(timeout_ms=50)
                got = sum(len(v) for v in batch.values())
                for recs in batch.values():
                    for r in recs:
                        self.keys.add(r.key)
                        if b'"hop":%d,' % self.hops not in r.value:
                            self.bad_hop += 1
                if got:
                    self.count += got
                    self.last = time.time()
                    if self.pid is not None:
                        try:
                            self.times_at_last = proc_times(self.pid)
                            self.cpu_at_last = sum(self.times_at_last)
                        except OSError:
                            pass
        finally:
            self.done.set()
            await c.stop()


async def count_topics(bootstrap: str, tag: str) -> dict[str, int]:
    """Committed records (read_committed) of every topic whose name holds the run's tag:
    inputs, outputs and the state changelogs (checks that every hop wrote its state)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    c = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, isolation_level="read_committed", enable_auto_commit=False
    )
    await c.start()
    try:
        counts: dict[str, int] = {}
        every = await c.topics()
        names = sorted(t for t in every if tag in t)
        for topic in names:
            parts = await c._client._wait_on_metadata(topic)
            tps = [TopicPartition(topic, p) for p in parts]
            c.assign(tps)
            await c.seek_to_beginning(*tps)
            ends = await c.end_offsets(tps)
            n, empty = 0, 0

            async def behind(tps: list[Any] = tps, ends: dict[Any, int] = ends) -> bool:
                return any([await c.position(tp) < ends[tp] for tp in tps])

            while empty < 3 and await behind():
                batch = await c.getmany(timeout_ms=500)
                got = sum(len(v) for v in batch.values())
                n += got
                empty = 0 if got else empty + 1
            counts[topic] = n
        return counts
    finally:
        await c.stop()


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def one_run(
    bootstrap: str, fw: str, hops: int, n: int, work: Path, tag: str, profile: bool, commit: float
) -> dict[str, Any]:
    prefix = f"fw.{fw}.h{hops}.{tag}"
    rundir = work / prefix
    rundir.mkdir(parents=True)
    make_topics(bootstrap, prefix, hops)
    asyncio.run(feed(bootstrap, f"{prefix}.0", n))
    reader = Reader(bootstrap, f"{prefix}.{hops}", n)
    reader.start()
    reader.ready.wait(30)
    status = rundir / "status.json"
    py, script, *extra = WORKERS[fw]
    env = dict(os.environ, FW_COMMIT_INTERVAL_S=str(commit), PYTHONUNBUFFERED="1")
    if extra:
        env["FW_FAUST_OVERRIDES"] = json.dumps(extra[0])
    logf = open(rundir / "worker.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            str(py),
            str(HERE / script),
            bootstrap,
            prefix,
            str(hops),
            str(status),
            str(rundir / "state"),
        ],
        stdout=logf,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
        cwd=str(ROOT),
    )
    reader.pid = proc.pid
    t_start = time.time()
    spy: subprocess.Popen[bytes] | None = None
    out: dict[str, Any] = {"framework": fw, "hops": hops, "messages": n, "tag": tag}
    try:
        last_count, last_change = 0, time.monotonic()
        while not reader.done.is_set():
            time.sleep(0.2)
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited {proc.returncode}; see {rundir / 'worker.log'}")
            if profile and spy is None and status.exists():
                raw = rundir / "pyspy.txt"
                spy = subprocess.Popen(
                    [
                        str(ROOT / ".venv/bin/py-spy"),
                        "record",
                        "--nonblocking",
                        "--format",
                        "raw",
                        "-d",
                        "15",
                        "-r",
                        "100",
                        "--full-filenames",
                        "--pid",
                        str(proc.pid),
                        "-o",
                        str(raw),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            if spy is not None and spy.poll() is not None:
                out["pyspy"] = summarise_profile(str(rundir / "pyspy.txt"))
                return out
            if reader.count != last_count:
                last_count, last_change = reader.count, time.monotonic()
            elif time.monotonic() - last_change > 120:
                raise RuntimeError(f"stalled at {reader.count}/{n}")
        cpu_end = reader.cpu_at_last if reader.cpu_at_last is not None else proc_cpu_s(proc.pid)
        t_end = reader.last
        first = json.loads(status.read_text())
        time.sleep(3)
        idle = (proc_cpu_s(proc.pid) - cpu_end) / 3
        cpu = cpu_end - first["cpu_first"]
        secs = t_end - first["t_first"]
        out.update(
            arrived=reader.count,
            startup_s=round(first["t_first"] - t_start, 2),
            drain_s=round(secs, 2),
            records_per_s=round(n / secs, 1),
            cpu_s=round(cpu, 2),
            cpu_us_per_msg_hop=round(cpu / (n * hops) * 1e6, 1),
            # of the whole run from process start (startup included): the kernel's share
            sys_share_whole_run=round(reader.times_at_last[1] / sum(reader.times_at_last), 2)
            if reader.times_at_last
            else None,
            idle_cpu_per_s=round(idle, 3),
        )
        out["distinct_keys"] = len(reader.keys)
        out["wrong_hop_values"] = reader.bad_hop
        out["committed_per_topic"] = asyncio.run(count_topics(bootstrap, tag))
        if spy is not None:
            spy.wait(60)
            out["pyspy"] = summarise_profile(str(rundir / "pyspy.txt"))
        return out
    finally:
        reader.stop.set()
        if spy is not None and spy.poll() is None:
            spy.wait(60)
        stop_worker(proc)
        logf.close()


def summarise(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    keys = sorted(
        {(r["framework"], r["hops"]) for r in results if "cpu_s" in r and not r.get("profile")},
        key=lambda k: (k[1], list(WORKERS).index(k[0])),
    )
    for fw, h in keys:
        rs = [
            r
            for r in results
            if r["framework"] == fw and r["hops"] == h and "cpu_s" in r and not r.get("profile")
        ]
        row: dict[str, Any] = {"framework": fw, "hops": h, "runs": len(rs)}
        for k in ("records_per_s", "cpu_us_per_msg_hop", "idle_cpu_per_s"):
            vals = [r[k] for r in rs]
            row[k] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}
        rows.append(row)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frameworks", default="faust,quix,aiokafka,confluent")
    ap.add_argument("--hops", default="1,4")
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--commit-interval", type=float, default=0.1)
    ap.add_argument(
        "--profile", action="store_true", help="one more py-spy run per framework and H"
    )
    ap.add_argument("--bootstrap", default=None, help="use this broker instead of starting one")
    ap.add_argument("--out", default=str(HERE / "results.json"))
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()
    fws = args.frameworks.split(",")
    hops = [int(h) for h in args.hops.split(",")]
    work = Path(tempfile.mkdtemp(prefix="mrhub-fw-"))
    broker = None
    results: list[dict[str, Any]] = []
    try:
        if args.bootstrap:
            bootstrap = args.bootstrap
        else:
            from services.common.broker import LocalBroker
            from services.common.settings import Settings

            broker = LocalBroker(work / "kafka", Settings().cache_dir, port=0, controller_port=0)
            bootstrap = broker.start(timeout_s=90)[0].bootstrap
            log(f"broker at {bootstrap}, work dir {work}")
        plan = [(rep, h, fw) for rep in range(args.repeats) for h in hops for fw in fws]
        if args.profile:
            plan += [("p", h, fw) for h in hops for fw in fws]
        for rep, h, fw in plan:
            tag = f"r{rep}{secrets.token_hex(2)}"
            log(f"{fw} H={h} run {rep}: {args.messages} messages")
            try:
                r = one_run(
                    bootstrap, fw, h, args.messages, work, tag, rep == "p", args.commit_interval
                )
            except Exception as exc:
                log(f"  FAILED: {exc}")
                r = {"framework": fw, "hops": h, "tag": tag, "error": str(exc)}
            r["profile"] = rep == "p"
            log(f"  {json.dumps(r)}")
            results.append(r)
            Path(args.out).write_text(
                json.dumps({"runs": results, "summary": summarise(results)}, indent=1)
            )
        summary = summarise(results)
        Path(args.out).write_text(json.dumps({"runs": results, "summary": summary}, indent=1))
        for row in summary:
            print(json.dumps(row))
    finally:
        if broker is not None:
            broker.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
