"""One process harness for `mrhub up`, the benchmarks and the tests: start a process, wait
until it answers ready, stop it; and the one wait-until helper every wait goes through.

A wait polls for a condition until a deadline, and tolerates a server that is still
starting: connection refused, ``503`` not-ready, a body that is not JSON yet. Giving up
raises :class:`TimeoutError` naming what was awaited (and the last thing that went wrong);
a process that exits while it is awaited raises :class:`ProcessExitedError` with the tail
of its log, at once instead of at the deadline.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx

T = TypeVar("T")

#: How often a wait asks again.
POLL_INTERVAL_S = 0.2


class ProcessExitedError(RuntimeError):
    """A process exited while something waited for it."""

    def __init__(self, name: str, returncode: int, log_path: Path | None) -> None:
        self.name = name
        self.returncode = returncode
        self.log_path = log_path
        where = f"; see {log_path}\n{log_tail(log_path)}" if log_path else ""
        super().__init__(f"{name} exited with code {returncode}{where}")


def log_tail(path: Path | None, chars: int = 3000) -> str:
    """The end of a log file ('' when there is none)."""
    if path is None:
        return ""
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-chars:]
    except OSError:
        return ""


def wait_until(
    condition: Callable[[], T | None],
    *,
    deadline_s: float,
    what: str,
    interval_s: float = POLL_INTERVAL_S,
    tolerate: tuple[type[BaseException], ...] = (),
    alive: Callable[[], None] | None = None,
) -> T:
    """Call ``condition`` until it returns something truthy, and return that.

    ``tolerate``: exceptions that mean "not yet" (the last one is named if time runs out).
    ``alive``: called before each try; raises when waiting is pointless (a process died).
    Raises :class:`TimeoutError` saying ``what`` was awaited, after ``deadline_s`` seconds.
    """
    deadline = time.monotonic() + deadline_s
    last: BaseException | None = None
    while True:
        if alive is not None:
            alive()
        try:
            value = condition()
        except tolerate as exc:
            last = exc
        else:
            if value:
                return value
        if time.monotonic() >= deadline:
            because = f" (last: {type(last).__name__}: {last})" if last else ""
            raise TimeoutError(f"timed out after {deadline_s:.0f} s waiting for {what}{because}")
        time.sleep(interval_s)


# ------------------------------------------------------------------------------ HTTP


def answers_ready(url: str, *, timeout_s: float = 2.0) -> bool:
    """Whether ``url`` answers 200; False while the server is not there or not ready."""
    try:
        return httpx.get(url, timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


def json_when_ready(
    url: str, *, params: Mapping[str, str] | None = None, timeout_s: float = 5.0
) -> Any:
    """The JSON body of a 200 answer from ``url``; None while the server is not there, not
    ready (any other status) or answers something that is not JSON."""
    try:
        resp = httpx.get(url, params=params, timeout=timeout_s)
    except httpx.HTTPError:
        return None
    if resp.status_code != 200:
        return None
    try:
        return resp.json()
    except ValueError:
        return None


# ------------------------------------------------------------------------------ processes


def start(
    argv: Sequence[str],
    *,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own session (so that stopping reaches its children), with
    stdout and stderr appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        return subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def still_running(
    proc: subprocess.Popen[bytes], name: str, log_path: Path | None = None
) -> Callable[[], None]:
    """An ``alive`` check for :func:`wait_until`: raises once ``proc`` has exited."""

    def check() -> None:
        code = proc.poll()
        if code is not None:
            raise ProcessExitedError(name, code, log_path)

    return check


def wait_ready(
    proc: subprocess.Popen[bytes],
    url: str,
    *,
    deadline_s: float,
    name: str | None = None,
    log_path: Path | None = None,
) -> None:
    """Wait until ``url`` answers 200 (a service's ``/readyz``). Raises
    :class:`ProcessExitedError` if ``proc`` exits first, :class:`TimeoutError` at the
    deadline (with the log's tail)."""
    name = name or url
    try:
        wait_until(
            lambda: answers_ready(url),
            deadline_s=deadline_s,
            what=f"{name} to answer ready at {url}",
            alive=still_running(proc, name, log_path),
        )
    except TimeoutError as exc:
        tail = log_tail(log_path)
        raise TimeoutError(f"{exc}\n{tail}" if tail else str(exc)) from None


def stop(proc: subprocess.Popen[bytes], *, grace_s: float = 30.0) -> int:
    """SIGTERM, then SIGKILL to its whole process group after ``grace_s``; the exit code."""
    return stop_all([proc], grace_s=grace_s)[0]


def stop_all(procs: Sequence[subprocess.Popen[bytes]], *, grace_s: float = 30.0) -> list[int]:
    """Stop every process at once (SIGTERM to all, one shared grace, then SIGKILL to the
    process group of each that is still there); their exit codes, in order."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    return [p.returncode for p in procs]
