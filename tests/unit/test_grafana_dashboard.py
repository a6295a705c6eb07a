"""The provisioned Grafana dashboard: well-formed, laid out without overlaps, every query on
the provisioned datasource, parseable PromQL, and only metrics docs/metrics.md lists."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO
from tests.metric_catalogue import PROMETHEUS_OWN, documented_metrics, metric_names

GRAFANA = REPO / "deploy" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
PROMTOOL = shutil.which("promtool")
#: Grafana's own variables, replaced by what they stand for before promtool reads a query
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "6h", "$__interval": "15s"}


def load(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return doc


def panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in dash["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))  # a collapsed row keeps its panels inside
    return out


def queries(dash: dict[str, Any]) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in panels(dash) for t in p.get("targets", [])]


def provisioned_datasource_uids() -> set[str]:
    doc = yaml.safe_load((GRAFANA / "provisioning/datasources/mrhub.yaml").read_text("utf-8"))
    assert doc["apiVersion"] == 1
    return {ds["uid"] for ds in doc["datasources"] if ds["type"] == "prometheus"}


def test_there_is_a_dashboard_with_a_stable_uid() -> None:
    assert DASHBOARDS
    uids = [load(p)["uid"] for p in DASHBOARDS]
    assert len(set(uids)) == len(uids)
    for path in DASHBOARDS:
        dash = load(path)
        assert dash["title"] and dash["schemaVersion"] >= 36
        assert "id" not in dash or dash["id"] is None  # provisioning assigns ids


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_panels_have_unique_ids_and_fit_the_grid_without_overlapping(path: Path) -> None:
    dash = load(path)
    ids = [p["id"] for p in panels(dash)]
    assert len(set(ids)) == len(ids)
    cells: dict[tuple[int, int], str] = {}
    for p in panels(dash):
        g = p["gridPos"]
        assert g["w"] > 0 and g["h"] > 0 and g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = p["title"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_query_uses_the_provisioned_datasource(path: Path) -> None:
    uids = provisioned_datasource_uids()
    for p in panels(load(path)):
        if p["type"] == "row":
            continue
        assert p["targets"], f"{p['title']} shows nothing"
        for source in (p["datasource"], *(t["datasource"] for t in p["targets"])):
            assert source == {"type": "prometheus", "uid": source["uid"]} and source["uid"] in uids


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_query_reads_only_documented_metrics(path: Path) -> None:
    documented = documented_metrics()
    for title, expr in queries(load(path)):
        used = metric_names(expr)
        assert used, f"{title}: no metric in {expr}"
        assert sorted(used - documented - PROMETHEUS_OWN) == [], f"{title}: {expr}"


def test_the_dashboard_shows_what_ops_asked_for() -> None:
    exprs = " ".join(e for path in DASHBOARDS for _, e in queries(load(path)))
    wanted = {
        "ingest rate by institution level": r"by \(level\).*mrhub_ingest_resources_by_level_total",
        "ingest errors by institution level": r'by \(level, outcome\).*outcome!="accepted"',
        "end-to-end latency": r"mrhub_recognition_decision_latency_seconds_bucket",
        "lag": r"mrhub_consumer_lag_messages",
        "dead letters": r"mrhub_dead_letters_total",
        "EMPI review queue": r"mrhub_patient_index_review_queue_size",
        "recognitions by region": r"by \(region\).*mrhub_recognition_decisions_total",
        "recognitions by category": r"by \(category\).*mrhub_recognition_decisions_total",
        "yuan saved by region": r"by \(region\).*mrhub_recognition_savings_yuan_total",
        "yuan saved by category": r"by \(category\).*mrhub_recognition_savings_yuan_total",
    }
    for what, pattern in wanted.items():
        assert any(re.search(pattern, e) for path in DASHBOARDS for _, e in queries(load(path))), (
            what
        )
    assert exprs


@pytest.mark.skipif(PROMTOOL is None, reason="promtool: `make system-deps`")
def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses each query as a recording rule (Grafana's variables filled in)."""
    rules = []
    for path in DASHBOARDS:
        for i, (_, expr) in enumerate(queries(load(path))):
            for var, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(var, value)
            rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    (tmp_path / "queries.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8"
    )
    run = subprocess.run(
        [str(PROMTOOL), "check", "rules", "queries.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_provisioning_points_at_the_dashboards_where_compose_mounts_them() -> None:
    doc = yaml.safe_load((GRAFANA / "provisioning/dashboards/mrhub.yaml").read_text("utf-8"))
    [provider] = doc["providers"]
    compose = yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text(encoding="utf-8"))
    mounts = dict(v.split(":")[:2][::-1] for v in compose["services"]["grafana"]["volumes"])
    assert (REPO / "deploy" / mounts[provider["options"]["path"]]).resolve() == (
        GRAFANA / "dashboards"
    )
    assert (REPO / "deploy" / mounts["/etc/grafana/provisioning"]).resolve() == (
        GRAFANA / "provisioning"
    )
