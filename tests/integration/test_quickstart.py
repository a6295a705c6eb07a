"""docs/quickstart.md, replayed: every shell block the page marks ``<!-- quickstart: replay -->``
(or ``poll``) is run with bash, in the repository, as written — the real ``mrhub`` and
``curl``, the example files under ``examples/`` — against a hub of real processes (gateway,
patient index, recognition, imaging) on a real broker. Only the addresses change: the page's
``http://127.0.0.1:8080`` / ``:8081`` become this hub's ports, and ``mrhub`` writes its tokens
into this hub's copy of the registry. A ```` ```text ```` block right after a replayed block is
what the page says the command prints (``…`` stands for anything); the output must be that.
A ``poll`` block is run again until it prints that (the result travels through Kafka and
two services before a check can see it), with a deadline."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO
from tests.security.conftest import SecurityHub, start_security_hub

DOC = REPO / "docs" / "quickstart.md"
EXAMPLES = REPO / "examples"
PAGE_GATEWAY = "http://127.0.0.1:8080"
PAGE_RECOGNITION = "http://127.0.0.1:8081"
_BLOCK = re.compile(
    r"<!-- quickstart: (?P<mode>replay|poll) -->\n"
    r"```(?:bash|sh)\n(?P<script>.*?)```"
    r"(?:\s*```text\n(?P<expect>.*?)```)?",
    re.S,
)


@dataclass(frozen=True)
class Step:
    mode: str
    script: str
    expect: str | None


def steps() -> list[Step]:
    text = DOC.read_text(encoding="utf-8")
    return [Step(m["mode"], m["script"], m["expect"]) for m in _BLOCK.finditer(text)]


def matches(expect: str, output: str) -> bool:
    """``output`` is ``expect`` with each ``…`` standing for any text (newlines included)."""
    pattern = ".*?".join(re.escape(part) for part in expect.strip().split("…"))
    return re.fullmatch(pattern, output.strip(), flags=re.S) is not None


def test_the_page_marks_the_walk_from_token_to_decision() -> None:
    walk = steps()
    scripts = "\n".join(s.script for s in walk)
    assert "mrhub institutions issue-token" in scripts
    for name in (
        "hospital-a-ct-report.json",
        "hospital-b-ct-order.json",
        "hospital-b-ct-check.json",
    ):
        assert f"@examples/{name}" in scripts or f"examples/{name}" in scripts, name
        json.loads((EXAMPLES / name).read_text(encoding="utf-8"))  # valid JSON as shipped
    assert "/recognition/check" in scripts
    assert all(s.expect for s in walk if "curl" in s.script), "a curl block without its answer"
    assert any(s.mode == "poll" for s in walk)


def test_matching_treats_the_ellipsis_as_anything() -> None:
    assert matches('{"a": 1, …}\nHTTP 200', '{"a": 1, "b": [2,\n3]}\nHTTP 200\n')
    assert not matches('{"a": 1, …}\nHTTP 200', '{"a": 1, "b": 2}\nHTTP 401')


@pytest.fixture(scope="module")
def hub(bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecurityHub]:
    hub = start_security_hub(bootstrap, tmp_path_factory.mktemp("quickstart-hub"))
    try:
        yield hub
    finally:
        hub.stop_all()


def _accepted(hub: SecurityHub, token: str) -> bool:
    """Whether the gateway and recognition both know ``token`` (each reloads the registry
    within a second of a change); the bodies are refused, so nothing is published."""
    auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}
    gateway = httpx.post(f"{hub.gateway}/fhir/Observation", content=b"{}", headers=auth, timeout=30)
    check = httpx.post(
        f"{hub.url('recognition')}/recognition/check", json={}, headers=auth, timeout=30
    )
    return gateway.status_code != 401 and check.status_code != 401


def _run(script: str, env: dict[str, str], env_out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", f'set -euo pipefail\n{script}\nenv -0 > "{env_out}"'],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.timeout(600)
def test_the_quickstart_runs_as_written(hub: SecurityHub, tmp_path: Path) -> None:
    # make setup installs curl (Makefile DEBIAN_NEEDS): the page is replayed, never skipped
    assert shutil.which("curl") and shutil.which("sed"), "the page's commands need curl and sed"
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("TOKEN_A", "TOKEN_B")},
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        # where `mrhub institutions issue-token` writes: the registry this hub reads
        "MRHUB_INSTITUTIONS_PATH": str(hub.registry),
    }
    env_out = tmp_path / "env"
    issued: set[str] = set()
    for step in steps():
        script = step.script.replace(PAGE_GATEWAY, hub.gateway).replace(
            PAGE_RECOGNITION, hub.url("recognition")
        )
        expect = step.expect and step.expect.replace(PAGE_RECOGNITION, hub.url("recognition"))
        deadline = time.monotonic() + 120
        while True:
            done = _run(script, env, env_out)
            assert done.returncode == 0, (step.script, done.stdout[-2000:], done.stderr[-2000:])
            if expect is None or matches(expect, done.stdout):
                break
            assert step.mode == "poll" and time.monotonic() < deadline, (
                f"{step.script}\nprinted:\n{done.stdout[-3000:]}\nthe page says:\n{expect}"
            )
            time.sleep(1)
        # what the block exported (the tokens) is there for the next one, as in one terminal
        env = dict(item.split("=", 1) for item in env_out.read_text().split("\0") if "=" in item)
        for name in ("TOKEN_A", "TOKEN_B"):
            if name in env and name not in issued:  # a running hub takes it within a second
                issued.add(name)
                deadline = time.monotonic() + 30
                while not _accepted(hub, env[name]):
                    assert time.monotonic() < deadline, f"{name} was never accepted"
                    time.sleep(0.2)
    assert {"TOKEN_A", "TOKEN_B"} <= set(env), "the page never set both hospitals' tokens"
    # the page ends by revoking both: from then on neither token opens anything
    deadline = time.monotonic() + 30
    while _accepted(hub, env["TOKEN_A"]) or _accepted(hub, env["TOKEN_B"]):
        assert time.monotonic() < deadline, "a revoked token is still accepted"
        time.sleep(0.2)
