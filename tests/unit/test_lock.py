"""requirements/lock.txt (runtime + dev + tools, what `make setup` installs) and
requirements/runtime.txt (what deploy/Dockerfile installs: runtime only) against
pyproject.toml and the installed packages. When one fails: `make lock`, then `make setup`
(decision 0006)."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from services.common import faust_fixes

REPO = Path(__file__).resolve().parents[2]
LOCK = REPO / "requirements" / "lock.txt"
RUNTIME_LOCK = REPO / "requirements" / "runtime.txt"

#: a pinned line of a uv/pip-compile lock: ``name==version`` (then hashes or a marker)
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")

#: the framework whose private parts services/common/faust_fixes.py patches or reads, and
#: the codec on the hot path: pinned exactly in pyproject.toml, not by a range
EXACT = ("faust-streaming", "mode-streaming", "aiokafka", "aiohttp", "msgspec", "rocksdict")


def pins(path: Path) -> dict[str, Version]:
    """``{canonical name: version}`` of every ``name==version`` line of a lock file."""
    out: dict[str, Version] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if m := PIN.match(line):
            name = canonicalize_name(m.group(1))
            assert name not in out, f"{path.name} pins {name} twice"
            out[name] = Version(m.group(2))
    return out


def requirements(extra: str | None = None) -> list[Requirement]:
    """pyproject.toml's dependencies, or those of one of its extras."""
    with (REPO / "pyproject.toml").open("rb") as f:
        meta = tomllib.load(f)["project"]
    listed = meta["dependencies"] if extra is None else meta["optional-dependencies"][extra]
    return [Requirement(r) for r in listed]


def test_every_locked_line_has_a_version_and_hashes() -> None:
    for path in (LOCK, RUNTIME_LOCK):
        text = path.read_text(encoding="utf-8")
        assert "make lock" in text.splitlines()[1], f"{path.name}: not made by `make lock`"
        assert pins(path), path
        entries = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 2)[2])
        for entry in entries:
            if entry.strip() and not entry.startswith("#"):
                assert PIN.match(entry), f"{path.name}: not an exact pin: {entry[:60]!r}"
                assert "--hash=sha256:" in entry, f"{path.name}: no hash for {entry[:40]!r}"


@pytest.mark.parametrize(
    ("path", "extra"), [(LOCK, None), (LOCK, "dev"), (LOCK, "tools"), (RUNTIME_LOCK, None)]
)
def test_each_direct_dependency_is_locked_within_pyprojects_range(
    path: Path, extra: str | None
) -> None:
    locked = pins(path)
    wrong = []
    for req in requirements(extra):
        if req.marker is not None and not req.marker.evaluate():
            continue
        name = canonicalize_name(req.name)
        if name not in locked:
            wrong.append(f"{req.name}: not in {path.name}")
        elif not req.specifier.contains(locked[name], prereleases=True):
            wrong.append(f"{req.name}: {path.name} has {locked[name]}, pyproject says {req}")
    assert not wrong, "pyproject.toml and the lock disagree (run `make lock`):\n" + "\n".join(wrong)


def test_the_image_lock_is_the_runtime_part_of_the_full_lock() -> None:
    full, runtime = pins(LOCK), pins(RUNTIME_LOCK)
    differ = {n: (v, full.get(n)) for n, v in runtime.items() if full.get(n) != v}
    assert not differ, f"runtime.txt and lock.txt disagree (run `make lock`): {differ}"
    tools = {"pytest", "ruff", "mypy", "uv", "hypothesis"} & set(runtime)
    assert not tools, f"development tools in the image's lock: {sorted(tools)}"


def test_the_framework_is_pinned_exactly_in_pyproject() -> None:
    by_name = {canonicalize_name(r.name): r for r in requirements()}
    for dist in EXACT:
        spec = list(by_name[canonicalize_name(dist)].specifier)
        assert len(spec) == 1 and spec[0].operator == "==", (
            f"{dist} must be pinned exactly in pyproject.toml (decision 0006), not {spec}"
        )


def test_the_compat_modules_tested_versions_are_the_locked_ones() -> None:
    locked = pins(LOCK)
    tested = {**faust_fixes.TESTED_VERSIONS, **faust_fixes.AIOHTTP_TESTED_VERSIONS}
    for dist, version in tested.items():
        assert locked[canonicalize_name(dist)] == Version(version), (
            f"faust_fixes was traced on {dist} {version}, the lock has "
            f"{locked[canonicalize_name(dist)]}: re-trace the patches (decision 0006)"
        )


@pytest.mark.parametrize("dist", EXACT)
def test_the_installed_framework_is_the_locked_one(dist: str) -> None:
    installed = Version(importlib.metadata.version(dist))
    locked = pins(LOCK)[canonicalize_name(dist)]
    assert installed == locked, (
        f"{dist} {installed} is installed, the lock has {locked}: run `make setup`"
    )
