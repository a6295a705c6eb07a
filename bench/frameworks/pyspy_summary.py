"""Summarise a ``py-spy record --format raw`` file (collapsed stacks) by package.

Self time: each sample is charged to the package of its innermost Python frame (py-spy does
not see native frames unless --native: time inside a C extension - msgspec, rocksdict,
confluent-kafka's C binding, librdkafka called from Python - counts for the Python line that
called it; librdkafka's own threads are not Python threads and are not sampled at all).
Inclusive time of a few markers too: the share of samples with such a frame anywhere.

    python bench/frameworks/pyspy_summary.py pyspy.txt        (or a .gz of it, e.g. profiles/*)
"""

from __future__ import annotations

import collections
import gzip
import json
import re
import sys

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")

#: (package, substring of the file path), first match wins
PACKAGES = [
    ("aiokafka", "/aiokafka/"),
    ("faust", "/faust/"),
    ("mode", "/mode/"),
    ("quixstreams", "/quixstreams/"),
    ("confluent_kafka", "/confluent_kafka/"),
    ("rocksdict", "rocksdict"),
    ("mrhub services", "/services/"),
    ("bench (parse/step)", "bench/frameworks/"),
    ("asyncio", "/asyncio/"),
    ("selectors", "selectors.py"),
    ("logging", "/logging/"),
    ("typing/abc/functools/dataclasses", ("typing.py", "abc.py", "functools.py", "dataclasses.py")),
    ("other stdlib", "/lib/python3.11/"),
]
INCLUSIVE = {
    "common.step (parse+encode)": "step (",
    "rocksdict/Table or state write": ("__setitem__ (", "set_bytes (", "state/", "rocksdict"),
    "producer send": ("send (", "produce (", "_produce"),
    "transaction commit": ("commit_transaction", "commit_transactions", "send_offsets"),
}


def package(path: str) -> str:
    for name, pat in PACKAGES:
        pats = pat if isinstance(pat, tuple) else (pat,)
        if any(p in path for p in pats):
            return name
    return "other"


def summarise(path: str) -> dict[str, object]:
    self_: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    total = 0
    opener = gzip.open if path.endswith(".gz") else open
    for line in opener(path, "rt", encoding="utf-8", errors="replace"):
        line = line.rstrip("\n")
        if not line:
            continue
        stack, _, count = line.rpartition(" ")
        try:
            n = int(count)
        except ValueError:
            continue
        frames = stack.split(";")
        # the first frame may be the thread ("process 123:\"...\"" / "thread (0x..)")
        leaf = frames[-1]
        m = FRAME.match(leaf)
        self_[package(m.group("file") if m else leaf)] += n
        leaves[re.sub(r"\(/[^()]*/(site-packages|python3\.11|frameworks)/", "(", leaf)] += n
        for name, pat in INCLUSIVE.items():
            pats = pat if isinstance(pat, tuple) else (pat,)
            if any(p in stack for p in pats):
                incl[name] += n
        total += n
    pct = lambda c: {k: round(100 * v / total, 1) for k, v in c.most_common()}  # noqa: E731
    top = {k: round(100 * v / total, 1) for k, v in leaves.most_common(12)}
    return {
        "samples": total,
        "self_pct": pct(self_),
        "inclusive_pct": pct(incl),
        "top_leaf_pct": top,
    }


if __name__ == "__main__":
    print(json.dumps(summarise(sys.argv[1]), indent=1))
