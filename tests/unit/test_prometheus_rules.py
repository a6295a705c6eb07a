"""The alert rules and Prometheus configs in deploy/prometheus pass promtool, and every rule
fires (and stays quiet) where its unit tests in deploy/prometheus/tests say."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tests.metric_catalogue import PROMETHEUS_OWN, documented_metrics, metric_names

DEPLOY = REPO / "deploy" / "prometheus"
RULES = sorted((DEPLOY / "rules").glob("*.yml"))
TESTS = sorted((DEPLOY / "tests").glob("*.yml"))
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool: `make system-deps`")


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *map(str, args)], capture_output=True, text=True, cwd=DEPLOY, timeout=120
    )


def alerts() -> dict[str, dict[str, object]]:
    found = {}
    for path in RULES:
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]:
            for rule in group["rules"]:
                found[rule["alert"]] = rule
    return found


@needs_promtool
def test_the_rules_are_valid() -> None:
    run = promtool("check", "rules", *RULES)
    assert run.returncode == 0, run.stdout + run.stderr


@needs_promtool
def test_every_rule_behaves_as_its_unit_tests_say() -> None:
    run = promtool("test", "rules", *TESTS)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("SUCCESS") == len(TESTS)


@needs_promtool
@pytest.mark.parametrize("config", ["prometheus.yml", "kubernetes.yml"])
def test_the_scrape_configs_are_valid_and_load_the_rules(config: str) -> None:
    run = promtool("check", "config", config)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "10 rules found" in run.stdout or "rules found" in run.stdout


def test_the_alerts_ops_asked_for_exist() -> None:
    asked = {
        "MrhubServiceDown",  # workers down
        "MrhubConsumerLagGrowing",
        "MrhubDeadLetters",
        "MrhubIngestErrorRatioHigh",
        "MrhubDecisionLatencyHigh",
        "MrhubReviewQueueGrowing",
    }
    assert asked <= set(alerts())


def test_every_alert_has_a_unit_test_that_makes_it_fire() -> None:
    fired = set()
    for path in TESTS:
        for case in yaml.safe_load(path.read_text(encoding="utf-8"))["tests"]:
            for check in case.get("alert_rule_test", []):
                if check.get("exp_alerts"):
                    fired.add(check["alertname"])
    assert sorted(set(alerts()) - fired) == []


def test_every_alert_uses_documented_metrics_and_says_what_to_do() -> None:
    documented = documented_metrics()
    operations = (REPO / "docs" / "operations.md").read_text(encoding="utf-8")
    anchors = {_anchor(h) for h in re.findall(r"^#+ (.+)$", operations, flags=re.M)}
    for name, rule in alerts().items():
        used = metric_names(str(rule["expr"]))
        assert used, name
        assert sorted(used - documented - PROMETHEUS_OWN) == [], f"{name}: undocumented"
        labels = rule["labels"]
        assert isinstance(labels, dict) and labels["severity"] in {"critical", "warning"}
        notes = rule["annotations"]
        assert isinstance(notes, dict) and notes["summary"] and notes["description"]
        page, _, anchor = str(notes["runbook"]).partition("#")
        assert page == "docs/operations.md" and anchor in anchors, f"{name}: {notes['runbook']}"


def test_every_scraped_job_is_one_the_rules_and_dashboard_know() -> None:
    for config in ("prometheus.yml", "kubernetes.yml"):
        doc = yaml.safe_load((DEPLOY / config).read_text(encoding="utf-8"))
        jobs = {job["job_name"] for job in doc["scrape_configs"]}
        assert jobs == {
            "mrhub-ingest",
            "mrhub-patient-index",
            "mrhub-recognition",
            "mrhub-imaging",
            "mrhub-console",
        }
        assert all(j.startswith("mrhub-") for j in jobs)  # MrhubServiceDown: job=~"mrhub-.*"


def _anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")
