"""The per-hop work every framework in this comparison does, and the worker's status file.

Imported by workers in both virtualenvs (the project's .venv and .venv-qs): it needs only
msgspec and the standard library.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, NamedTuple

import msgspec

_dec = msgspec.json.Decoder()
_enc = msgspec.json.Encoder()

PARTITIONS = 3


def message(n: int) -> tuple[bytes, bytes]:
    """The n-th input message: key and a ~1 KB JSON value (a patient-like record)."""
    rid = f"rec-{n:08d}"
    doc = {
        "id": rid,
        "hop": 0,
        "resourceType": "Patient",
        "name": [{"family": f"Family{n % 9973}", "given": [f"Given{n % 7919}", "Q."]}],
        "birthDate": f"19{n % 100:02d}-0{1 + n % 9}-1{n % 10}",
        "gender": ("female", "male")[n % 2],
        "identifier": [
            {"system": f"urn:oid:1.2.840.113619.{i}", "value": f"{n * 7 + i:012d}"}
            for i in range(4)
        ],
        "address": [
            {
                "line": [f"{n % 500} Long Street Name", "Apartment 12"],
                "city": "Springfield",
                "postalCode": f"{n % 99999:05d}",
                "country": "CH",
            }
        ],
        "meta": {"source": "urn:bench:feeder", "versionId": str(n), "tag": ["a", "b", "c"]},
        "note": "x" * 330,
    }
    return f"{rid}/0".encode(), _enc.encode(doc)


def step(value: bytes, hop: int) -> tuple[bytes, bytes, bytes]:
    """One hop's work on one message: parse, change, build the state entry and the output.

    Returns (state value, output key, output value). The output key names the record and the
    next hop, so the output lands on an unrelated partition (a repartitioning hop)."""
    d: dict[str, Any] = _dec.decode(value)
    d["hop"] = hop + 1
    state = _enc.encode({"id": d["id"], "hop": hop, "family": d["name"][0]["family"]})
    return state, f"{d['id']}/{hop + 1}".encode(), _enc.encode(d)


class Status:
    """Writes the worker's CPU and wall clock at its first processed message, once."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.done = False

    def first(self) -> None:
        if self.done:
            return
        self.done = True
        data = {"t_first": time.time(), "cpu_first": time.process_time(), "pid": os.getpid()}
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(data, f)
        os.replace(tmp, self.path)


class WorkerArgs(NamedTuple):
    """What run.py gives every worker: ``BOOTSTRAP PREFIX H STATUS DIR`` on the command line
    and the commit interval in ``FW_COMMIT_INTERVAL_S``."""

    bootstrap: str
    prefix: str
    hops: int
    status: Status
    state_dir: str
    commit_interval_s: float


def worker_args(argv: list[str] | None = None) -> WorkerArgs:
    bootstrap, prefix, hops, status_path, state_dir = (argv or sys.argv)[1:6]
    return WorkerArgs(
        bootstrap,
        prefix,
        int(hops),
        Status(status_path),
        state_dir,
        float(os.environ.get("FW_COMMIT_INTERVAL_S", "0.1")),
    )
