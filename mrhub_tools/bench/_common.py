"""What several benchmarks share: percentiles, the CPU time of a process (and its children),
starting a hub service and waiting until it is ready.

Pure parts (:func:`percentile`, :func:`parse_proc_stat`, :func:`tree_cpu_ticks`) are
unit-tested; the rest reads ``/proc`` (Linux) or talks to a process.
"""

from __future__ import annotations

import importlib
import math
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from services.common import harness


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile ``q`` (0 < q ≤ 100) of already sorted values; None if empty."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


# ------------------------------------------------------------------------------ CPU time


def clock_ticks() -> int:
    try:
        return int(os.sysconf("SC_CLK_TCK"))
    except (ValueError, OSError, AttributeError):
        return 100


def parse_proc_stat(text: str) -> tuple[int, int, int]:
    """``(pid, ppid, utime + stime in clock ticks)`` from the text of ``/proc/<pid>/stat``.

    The command name (field 2) is in parentheses and may hold spaces or ``)``: the fields
    after the *last* ``)`` are counted from there (state, ppid, …, utime is the 14th field
    of the line, stime the 15th)."""
    head, _, tail = text.rpartition(")")
    fields = tail.split()
    return int(head.split("(", 1)[0]), int(fields[1]), int(fields[11]) + int(fields[12])


def _read_stat(pid: int | str) -> tuple[int, int, int] | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return parse_proc_stat(f.read())
    except (OSError, IndexError, ValueError):
        return None


def proc_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process (Linux /proc), None if unknown."""
    stat = _read_stat(pid)
    return None if stat is None else stat[2] / clock_ticks()


def machine_busy_s() -> float | None:
    """CPU seconds all cores spent busy since boot (Linux /proc/stat: user, nice, system, irq,
    softirq; not idle, iowait or time stolen by a hypervisor), None if unknown."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            cols = [int(c) for c in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, _steal = cols
    return (user + nice + system + irq + softirq) / clock_ticks()


def tree_cpu_ticks(stats: Sequence[tuple[int, int, int]], root: int) -> int | None:
    """CPU ticks of ``root`` and every live descendant among ``stats`` (``(pid, ppid,
    ticks)`` rows as :func:`parse_proc_stat` gives); None when ``root`` is not among them."""
    children: dict[int, list[int]] = {}
    ticks: dict[int, int] = {}
    for pid, ppid, t in stats:
        children.setdefault(ppid, []).append(pid)
        ticks[pid] = t
    if root not in ticks:
        return None
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += ticks.get(pid, 0)
        todo += children.get(pid, [])
    return total


def tree_cpu_s(pid: int) -> float | None:
    """CPU seconds of process ``pid`` and its live children (a service that forks workers is
    charged for them): psutil when installed, else ``/proc``. None if the process is gone.
    A child that already exited is not counted (its time went to the parent only if reaped)."""
    try:
        psutil: Any = importlib.import_module("psutil")
    except ImportError:
        psutil = None
    if psutil is not None:
        try:
            proc = psutil.Process(pid)
            total = 0.0
            for p in [proc, *proc.children(recursive=True)]:
                try:
                    t = p.cpu_times()
                    total += t.user + t.system
                except psutil.Error:
                    continue
            return total
        except psutil.Error:
            return None
    rows = [s for name in os.listdir("/proc") if name.isdigit() and (s := _read_stat(name))]
    ticks = tree_cpu_ticks(rows, pid)
    return None if ticks is None else ticks / clock_ticks()


def cpu_per_record_us(
    before: Mapping[str, float | None], after: Mapping[str, float | None], records: int
) -> dict[str, float | None]:
    """Per name: (CPU seconds after − before) ÷ ``records``, in µs; None when either sample
    is missing or there were no records."""
    out: dict[str, float | None] = {}
    for name, a in after.items():
        b = before.get(name)
        out[name] = (
            None if a is None or b is None or records <= 0 else round((a - b) / records * 1e6, 1)
        )
    return out


# ------------------------------------------------------------------------------ services


def start_service(
    service: str, env: Mapping[str, str], log: Path, *, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """``python -m services.cli serve SERVICE`` in its own session, output to ``log``."""
    argv = [sys.executable, "-m", "services.cli", "serve", service]
    return harness.start(argv, log_path=log, env=env, cwd=cwd)


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float) -> None:
    """``url`` answers 200 (harness.wait_ready); raises if ``proc`` exits or at the deadline."""
    harness.wait_ready(proc, url, deadline_s=timeout_s, log_path=log)


def stop_processes(procs: Sequence[subprocess.Popen[bytes]], grace_s: float = 20.0) -> None:
    """SIGTERM each process still running, one shared grace, then SIGKILL (harness.stop_all)."""
    harness.stop_all(procs, grace_s=grace_s)
