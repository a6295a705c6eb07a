"""docs/metrics.md as data, and the metric names a PromQL expression uses: the tests of the
metrics pages, the alert rules and the dashboard all check against the one catalogue."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import REPO

CATALOGUE = REPO / "docs" / "metrics.md"
#: series Prometheus makes itself
PROMETHEUS_OWN = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})
_KEYWORDS = frozenset(
    {
        "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk",
        "quantile", "count_values", "group", "by", "without", "on", "ignoring",
        "group_left", "group_right", "offset", "bool", "and", "or", "unless", "inf", "nan",
    }
)  # fmt: skip


@dataclass
class Family:
    name: str
    type: str
    labels: frozenset[str]
    services: frozenset[str]


@dataclass
class Catalogue:
    families: dict[str, Family] = field(default_factory=dict)
    #: services whose metrics are not listed yet (``<!-- pending: … -->``)
    pending: frozenset[str] = frozenset()

    def of(self, service: str) -> dict[str, Family]:
        return {n: f for n, f in self.families.items() if service in f.services}


def _labels(cell: str) -> frozenset[str]:
    """Label names of a table cell: the backticked words outside parentheses."""
    depth, outside = 0, []
    for ch in cell:
        if ch == "(":
            depth += 1
        elif ch == ")" and depth:
            depth -= 1
        elif depth == 0:
            outside.append(ch)
    return frozenset(re.findall(r"`([a-z_]+)`", "".join(outside)))


def read_catalogue(path: Path = CATALOGUE) -> Catalogue:
    """Each section's table belongs to the services its ``<!-- metrics: … -->`` comment
    names."""
    cat = Catalogue()
    services: frozenset[str] = frozenset()
    pending: set[str] = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        if m := re.fullmatch(r"<!-- metrics: ([a-z_ ]+) -->", line.strip()):
            services = frozenset(m.group(1).split())
        elif m := re.fullmatch(r"<!-- pending: ([a-z_ ]+) -->", line.strip()):
            pending.update(m.group(1).split())
        elif line.startswith("| `mrhub_"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            name = cells[0].strip("`")
            assert name not in cat.families, f"{name} is listed twice"
            assert services, f"{name} is in no section with a metrics comment"
            cat.families[name] = Family(name, cells[1], _labels(cells[3]), services)
    cat.pending = frozenset(pending)
    return cat


def documented_metrics() -> frozenset[str]:
    return frozenset(read_catalogue().families)


def metric_names(expr: str) -> frozenset[str]:
    """The metric families a PromQL expression reads (histogram series by their family)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges and subqueries
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"\boffset\s+\S+", "", text)
    names = set()
    for m in re.finditer(r"(?<![\w.$])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", text):
        name, call = m.group(1), m.group(2)
        if call or name.lower() in _KEYWORDS or re.fullmatch(r"\d+\w*", name):
            continue
        names.add(name)
    families = read_catalogue().families
    out = set()
    for name in names:
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        is_histogram = base in families and families[base].type == "histogram"
        out.add(base if is_histogram else name)
    return frozenset(out)
