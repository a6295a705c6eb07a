"""The product (the package ``services``, what the image runs) needs none of the tools'
dependencies: ``mrhub bench`` / ``mrhub simulate`` live in ``mrhub_tools`` with theirs in the
``tools`` extra, which the image's lock (requirements/runtime.txt) does not hold."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.unit.test_lock import RUNTIME_LOCK, pins

REPO = Path(__file__).resolve().parents[2]

#: what only the tools may import: their extra's packages, the heavy ones they bring
#: (recordlinkage's pandas / scipy / scikit-learn) and the tools' own package
REFUSED = (
    "recordlinkage",
    "matplotlib",
    "tqdm",
    "pandas",
    "scipy",
    "sklearn",
    "splink",
    "duckdb",
    "mrhub_tools",
)

#: a child interpreter that cannot import any of REFUSED (as if not installed), imports every
#: module under ``services`` and prints those that failed; then runs ``mrhub bench`` and
#: ``mrhub simulate`` there
_CHILD = """
import importlib, importlib.abc, pkgutil, sys, traceback

REFUSED = set(sys.argv[1].split(","))

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in REFUSED:
            raise ModuleNotFoundError(f"No module named {name!r} (refused)", name=name)
        return None

sys.meta_path.insert(0, Refuse())
import services

names = ["services"] + [
    m.name
    for m in pkgutil.walk_packages(services.__path__, "services.", onerror=print)
    if not m.name.endswith(".__main__")  # runs a service when imported
]
failed = 0
for name in names:
    try:
        importlib.import_module(name)
    except BaseException:
        failed += 1
        print(f"FAILED {name}", traceback.format_exc(limit=-3), sep="\\n")
print(f"imported {len(names) - failed} of {len(names)} modules")
if failed:
    sys.exit(1)

from services import cli
for verb in (["bench", "match"], ["simulate", "prepare", "--dir", sys.argv[2]]):
    print(verb[0], "exit", cli.main(verb))
"""


def test_every_service_module_imports_without_the_tools_dependencies(tmp_path: Path) -> None:
    env = {**os.environ, "MRHUB_STATE_DIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, ",".join(REFUSED), str(tmp_path / "sim")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "imported" in out and "FAILED" not in out, out
    # the tools' verbs still parse there, and say how to get the tools instead of a traceback
    assert "bench exit 2" in out and "simulate exit 2" in out, out
    assert out.count("pip install 'mrhub[tools]'") == 2, out
    assert "Traceback" not in out, out


def test_no_service_module_names_a_tools_dependency_even_in_a_function() -> None:
    """Lazy imports too: the import above cannot see an ``import`` inside a function. The one
    door to the tools is ``services/cli.py``'s bench / simulate handlers, which import
    ``mrhub_tools`` by name (importlib) and turn its absence into exit 2."""
    found = []
    for path in sorted((REPO / "services").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            found += [
                f"{path.relative_to(REPO)}:{node.lineno}: {name}"
                for name in names
                if name.split(".")[0] in REFUSED
            ]
    assert not found, "the product imports the tools or their dependencies:\n" + "\n".join(found)


def test_the_image_lock_holds_none_of_the_tools_dependencies() -> None:
    with (REPO / "pyproject.toml").open("rb") as f:
        project = tomllib.load(f)["project"]
    extra = {
        canonicalize_name(Requirement(r).name) for r in project["optional-dependencies"]["tools"]
    }
    refused = {canonicalize_name(n) for n in REFUSED if n != "mrhub_tools"} | {"scikit-learn"}
    assert extra <= refused, f"the tools extra has packages this test does not refuse: {extra}"
    found = sorted((refused | extra) & set(pins(RUNTIME_LOCK)))
    assert not found, f"requirements/runtime.txt (the image) holds tools' packages: {found}"
    main = {canonicalize_name(Requirement(r).name) for r in project["dependencies"]}
    assert not main & (refused | extra), "a tools' package is among the main dependencies"
