"""What ops sees of the running hub: every /metrics page, the catalogue, Prometheus, traces.

Every service whose code exists (and that docs/metrics.md does not mark pending) runs as its
own process, the way `mrhub up` runs it. A hospital posts a result and an order, a broken
message reaches the patient index; then:

- every `/metrics` page passes `promtool check metrics`, and the `mrhub_` families it shows
  are exactly the ones docs/metrics.md lists for that service, with the same labels;
- the workers report consumer lag per topic and partition, which drains to 0;
- a real Prometheus server, configured from deploy/prometheus/, scrapes the hub, loads the
  alert rules, and answers PromQL queries for the ingest and recognition series;
- the trace id given at the gateway is in the `trace_id` Kafka header of every event derived
  from the request (internal hops included), and in the log lines about it.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from kafka import KafkaProducer

from services.cli import SERVICES
from services.common.broker import free_port
from services.common.envelope import Envelope
from services.common.harness import json_when_ready, still_running, stop_all, wait_until
from services.common.harness import start as start_process
from services.common.harness import wait_ready as harness_wait_ready
from services.common.institutions import Registry, hash_token, issue_token
from services.common.kafka_admin import create_topics
from services.common.metrics import hub_version
from services.common.topics import ALL_TOPICS
from services.console import cli as console_cli
from tests.conftest import REPO
from tests.fhir_samples import dumps, gb11643, observation, service_request
from tests.metric_catalogue import Catalogue, read_catalogue
from tests.support import consume_all, run_module, stop_process, wait_ready

PARTITIONS = 3
FHIR = "application/fhir+json"
CARD_SYSTEM = "urn:oid:2.16.156.10011.1.3"
#: 三甲 (level 3), Taiyuan
A = "12140000405001730E"
#: level 2, Taiyuan
B = "12140110405530210H"
PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
#: the Prometheus scrape job of each service (deploy/prometheus/prometheus.yml)
JOBS = {
    "ingest": "mrhub-ingest",
    "patient_index": "mrhub-patient-index",
    "recognition": "mrhub-recognition",
    "imaging": "mrhub-imaging",
    "console": "mrhub-console",
}


# ------------------------------------------------------------------ the exposition


def parse_exposition(text: str) -> dict[str, tuple[str, set[frozenset[str]]]]:
    """family → (type, label-name sets of its samples), from the Prometheus text format."""
    types: dict[str, str] = {}
    samples: dict[str, set[frozenset[str]]] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            types[name] = kind
            samples.setdefault(name, set())
        elif line and not line.startswith("#"):
            m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s", line)
            assert m, line
            sample = m.group(1)
            family = next(
                (
                    sample.removesuffix(sfx)
                    for sfx in ("_bucket", "_sum", "_count", "_created", "_total", "")
                    if sample.removesuffix(sfx) in types
                ),
                None,
            )
            if family is None:
                continue
            names = frozenset(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', m.group(3) or ""))
            samples[family].add(names - {"le", "quantile"})
    # prometheus_client names a counter family without its _total in # TYPE
    out: dict[str, tuple[str, set[frozenset[str]]]] = {}
    for name, kind in types.items():
        shown = f"{name}_total" if kind == "counter" and not name.endswith("_total") else name
        out[shown] = (kind, samples[name])
    return out


# --------------------------------------------------------------------------- the hub


@dataclass
class Hub:
    bootstrap: str
    ports: dict[str, int]
    tokens: dict[str, str]
    logs: dict[str, Path]
    tmp: Path
    traces: dict[str, str] = field(default_factory=dict)

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    def post(self, inst: str, path: str, doc: Any, trace_id: str) -> httpx.Response:
        return httpx.post(
            f"{self.url('ingest')}{path}",
            content=dumps(doc),
            headers={
                "Authorization": f"Bearer {self.tokens[inst]}",
                "Content-Type": FHIR,
                "X-Trace-Id": trace_id,
            },
            timeout=30,
        )

    def metrics(self, service: str) -> str:
        resp = httpx.get(f"{self.url(service)}/metrics", timeout=10)
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/plain")
        return resp.text


def sample_sum(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if (line.startswith(name + "{") or line.startswith(name + " ")) and all(
            f'{k}="{v}"' in line for k, v in labels.items()
        ):
            total += float(line.split()[-1])
    return total


def series(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """The samples of ``name``: their labels and values."""
    out = []
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels = dict(re.findall(r'([a-zA-Z_]+)="([^"]*)"', line[: line.rindex("}")]))
            out.append((labels, float(line.split()[-1])))
    return out


def wait_for(what: str, check: Any, timeout_s: float = 180) -> Any:
    return wait_until(check, deadline_s=timeout_s, what=what, interval_s=0.5)


_SEQ = iter(range(random.randint(100, 400) | 1, 999, 2))


def _card() -> str:
    """A 身份证 no other module uses (Taiyuan, born 1979-11-23)."""
    return gb11643(f"14010519791123{next(_SEQ):03d}")


def _potassium(inst: str, card: str) -> dict[str, Any]:
    doc = observation(inst, subject={"identifier": {"system": CARD_SYSTEM, "value": card}})
    taken = datetime.now(UTC) - timedelta(hours=2)
    doc["effectiveDateTime"] = taken.isoformat()
    doc["issued"] = (taken + timedelta(hours=1)).isoformat()
    return doc


def _order(inst: str, card: str) -> dict[str, Any]:
    doc = service_request(inst)
    doc["subject"] = {"identifier": {"system": CARD_SYSTEM, "value": card}}
    doc["authoredOn"] = datetime.now(UTC).isoformat()
    return doc


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    return read_catalogue()


@pytest.fixture(scope="module")
def hub(
    bootstrap: str, tmp_path_factory: pytest.TempPathFactory, catalogue: Catalogue
) -> Iterator[Hub]:
    tmp = tmp_path_factory.mktemp("observability")
    registry = tmp / "institutions.yaml"
    shutil.copy(REPO / "config" / "institutions.yaml", registry)
    assert {A, B} <= set(Registry.load(registry).ids)
    tokens = {i: issue_token(registry, i) for i in (A, B)}
    create_topics(bootstrap, ALL_TOPICS, default_partitions=PARTITIONS, replication_factor=1)
    names = [s.name for s in SERVICES if s.name not in catalogue.pending]
    ports = {name: free_port() for name in names}
    env = {
        "MRHUB_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "MRHUB_IDENTITY__HMAC_KEY": "test-hmac-key",
        "MRHUB_INSTITUTIONS_PATH": str(registry),
        "MRHUB_TOPIC_PARTITIONS": str(PARTITIONS),
        "MRHUB_STATE_DIR": str(tmp / "state"),
        "MRHUB_LOG_LEVEL": "INFO",
        "MRHUB_LOG_FORMAT": "json",
        **{f"MRHUB_{name.upper()}__PORT": str(port) for name, port in ports.items()},
    }
    if "console" in ports:  # a console with one steward, its token known to the patient index
        users = tmp / "console-users.yaml"
        console_cli.add_user(users, "obs", role="steward", password="observability-pw")
        env["MRHUB_CONSOLE__USERS_PATH"] = str(users)
        env["MRHUB_CONSOLE__SESSION_KEY"] = console_cli.new_session_key()
        env["MRHUB_CONSOLE__STEWARD_TOKEN"] = "mrs_observability"
        env["MRHUB_CONSOLE__SECURE_COOKIES"] = "false"
        env["MRHUB_PATIENT_INDEX__STEWARD_TOKEN_HASHES"] = json.dumps(
            [hash_token("mrs_observability")]
        )
    if "patient_index" in ports:
        env["MRHUB_PATIENT_INDEX__URL"] = f"http://127.0.0.1:{ports['patient_index']}"
    if "recognition" in ports:
        env["MRHUB_RECOGNITION__URL"] = f"http://127.0.0.1:{ports['recognition']}"
    logs = {name: tmp / f"{name}.log" for name in names}
    procs = {
        name: run_module(["-m", "services.cli", "serve", name], env, logs[name]) for name in names
    }
    try:
        for name, port in ports.items():
            wait_ready(f"http://127.0.0.1:{port}/readyz", procs[name], logs[name])
        hub = Hub(bootstrap, ports, tokens, logs, tmp)
        _send_traffic(hub)
        yield hub
    finally:
        stop_all(list(procs.values()))


def _send_traffic(hub: Hub) -> None:
    """A result at A, an order for the same patient at B (decided), a refused post, and a
    message the patient index cannot read; each with a trace id of its own."""
    card = _card()
    hub.traces = {k: f"obs-{k}-{uuid.uuid4().hex[:12]}" for k in ("result", "order", "bad")}
    resp = hub.post(A, "/fhir/Observation", _potassium(A, card), hub.traces["result"])
    assert resp.status_code == 201, resp.text
    assert resp.headers["X-Trace-Id"] == hub.traces["result"]
    wait_for(
        "the result reaches the recognition worker",
        lambda: sample_sum(hub.metrics("recognition"), "mrhub_recognition_results_total") >= 1,
    )
    resp = hub.post(B, "/fhir/ServiceRequest", _order(B, card), hub.traces["order"])
    assert resp.status_code == 201, resp.text
    # refused: a malformed body from a level-2 hospital
    bad = httpx.post(
        f"{hub.url('ingest')}/fhir/Observation",
        content=b"{not json",
        headers={"Authorization": f"Bearer {hub.tokens[B]}", "Content-Type": FHIR},
        timeout=30,
    )
    assert bad.status_code == 400
    # refused: a level-2 hospital's result without an effective time (a hub rule: 422)
    undated = _potassium(B, card)
    del undated["effectiveDateTime"]
    assert hub.post(B, "/fhir/Observation", undated, "obs-refused-0001").status_code == 422
    # a message the patient index cannot read, with a trace id in its headers
    producer = KafkaProducer(bootstrap_servers=hub.bootstrap, acks="all")
    try:
        producer.send(
            "mrhub.ingest.resource-accepted.v1",
            key=b"obs|bad",
            value=b"{not an envelope",
            headers=[("trace_id", hub.traces["bad"].encode())],
        )
        producer.flush(timeout=30)
    finally:
        producer.close()
    wait_for("the order is decided", lambda: _decided(hub, hub.traces["order"]))
    # a read of the shared record and a CDS Hooks call, both through the gateway
    search = httpx.post(
        f"{hub.url('ingest')}/fhir/Observation/_search",
        data={"patient": f"{CARD_SYSTEM}|{card}"},
        headers={"Authorization": f"Bearer {hub.tokens[B]}"},
        timeout=30,
    )
    assert search.status_code == 200, search.text
    hook = httpx.post(
        f"{hub.url('ingest')}/cds-services/mrhub-recognition-sign",
        content=(
            REPO / "tests" / "fixtures" / "cds-hooks" / "spec-order-sign-request.json"
        ).read_bytes(),
        headers={"Authorization": f"Bearer {hub.tokens[B]}", "Content-Type": "application/json"},
        timeout=30,
    )
    assert hook.status_code == 200, hook.text
    wait_for(
        "the broken message is dead-lettered",
        lambda: (
            sample_sum(hub.metrics("patient_index"), "mrhub_dead_letters_total", stage="route") >= 1
        ),
    )


def _decided(hub: Hub, trace_id: str) -> bool:
    return any(
        Envelope.from_bytes(r.value).trace_id == trace_id
        for r in consume_all(hub.bootstrap, "mrhub.recognition.decision-made.v1")
    )


# ------------------------------------------------------------------------ /metrics pages


@pytest.mark.skipif(PROMTOOL is None, reason="promtool missing: `make system-deps`")
def test_every_metrics_page_passes_promtool(hub: Hub) -> None:
    for service in hub.ports:
        text = hub.metrics(service)
        run = subprocess.run(
            [str(PROMTOOL), "check", "metrics"],
            input=text.encode(),
            capture_output=True,
            timeout=60,
        )
        problems = (run.stdout + run.stderr).decode()
        assert run.returncode == 0 and not problems.strip(), f"{service}: {problems}"


def test_the_catalogue_lists_exactly_what_each_service_exposes(
    hub: Hub, catalogue: Catalogue
) -> None:
    for service in hub.ports:
        scraped = {
            name: kind_samples
            for name, kind_samples in parse_exposition(hub.metrics(service)).items()
            if name.startswith("mrhub_")
        }
        documented = catalogue.of(service)
        assert sorted(set(scraped) - set(documented)) == [], f"{service}: not in docs/metrics.md"
        assert sorted(set(documented) - set(scraped)) == [], f"{service}: documented, not shown"
        for name, (kind, label_sets) in scraped.items():
            doc = documented[name]
            assert kind == doc.type, f"{name}: {kind}, documented as {doc.type}"
            for labels in label_sets:
                assert labels == doc.labels, f"{name}: labels {sorted(labels)} in {service}"


def test_every_service_says_which_build_runs(hub: Hub) -> None:
    for service in hub.ports:
        text = hub.metrics(service)
        assert sample_sum(text, "mrhub_build_info", version=hub_version()) == 1, service
        # every service runs on uvloop by default (MRHUB_EVENT_LOOP), the loop it measured on
        assert sample_sum(text, "mrhub_build_info", event_loop="uvloop") == 1, service


def test_ingest_counts_resources_by_the_posting_hospitals_level(hub: Hub) -> None:
    text = hub.metrics("ingest")
    by_level = "mrhub_ingest_resources_by_level_total"
    assert sample_sum(text, by_level, level="3", outcome="accepted") >= 1  # A: the result
    assert sample_sum(text, by_level, level="2", outcome="accepted") >= 1  # B: the order
    assert sample_sum(text, by_level, level="2", outcome="rejected") >= 1  # B: the undated one
    assert sample_sum(text, "mrhub_ingest_rejections_total", reason="malformed-json") >= 1


def test_a_dead_letter_counts_for_its_service_and_stage(hub: Hub) -> None:
    text = hub.metrics("patient_index")
    assert sample_sum(text, "mrhub_dead_letters_total", service="patient_index", stage="route")
    assert sample_sum(text, "mrhub_patient_index_dead_letters_total", stage="route") >= 1
    # every stage is counted from 0, so an alert sees the first dead letter as an increase
    for stage in ("route", "resolve", "match", "master", "index"):
        assert f'mrhub_dead_letters_total{{service="patient_index",stage="{stage}"}}' in text


def test_workers_report_lag_per_partition_and_catch_up(hub: Hub) -> None:
    inputs = {
        "patient_index": "mrhub.ingest.resource-accepted.v1",
        "recognition": "mrhub.results.order-placed.v1",
    }
    for service, topic in inputs.items():
        if service not in hub.ports:
            continue

        def lag(service: str = service, topic: str = topic) -> dict[str, float] | None:
            found = {
                labels["partition"]: value
                for labels, value in series(hub.metrics(service), "mrhub_consumer_lag_messages")
                if labels["topic"] == topic and labels["service"] == service
            }
            return found if sorted(found) == [str(p) for p in range(PARTITIONS)] else None

        wait_for(f"{service} reports lag for each partition of {topic}", lag)
        wait_for(f"{service} catches up", lambda lag=lag: set((lag() or {"": 1}).values()) == {0})
        text = hub.metrics(service)
        assert f'service="{service}"' in text
        assert "-changelog" not in "".join(
            line for line in text.splitlines() if line.startswith("mrhub_consumer_lag_messages")
        ), "lag is for the topics the agents read, not the tables' changelogs"


def test_workers_say_their_tables_are_recovered(hub: Hub) -> None:
    for service in ("patient_index", "recognition"):
        if service in hub.ports:
            text = hub.metrics(service)
            assert sample_sum(text, "mrhub_table_recovery_in_progress", service=service) == 0
            assert sample_sum(text, "mrhub_kafka_produce_errors_total") == 0


# --------------------------------------------------------------- a real Prometheus server


@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus missing: `make system-deps`")
def test_prometheus_scrapes_the_hub_and_answers_for_ingest_and_recognition(hub: Hub) -> None:
    """deploy/prometheus/prometheus.yml with its targets pointed at this hub."""
    deploy = REPO / "deploy" / "prometheus"
    config = yaml.safe_load((deploy / "prometheus.yml").read_text(encoding="utf-8"))
    config["global"]["scrape_interval"] = "1s"
    config["global"]["evaluation_interval"] = "1s"
    config["rule_files"] = [str(deploy / pattern) for pattern in config["rule_files"]]
    by_job = {job: service for service, job in JOBS.items()}
    for job in config["scrape_configs"]:
        service = by_job[job["job_name"]]
        port = hub.ports.get(service, free_port())  # a service not running: a target down
        job.pop("dns_sd_configs", None)
        job["static_configs"] = [{"targets": [f"127.0.0.1:{port}"]}]
    conf_path = hub.tmp / "prometheus.yml"
    conf_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    port = free_port()
    log = hub.tmp / "prometheus.log"
    proc = start_process(
        [
            str(PROMETHEUS),
            f"--config.file={conf_path}",
            f"--storage.tsdb.path={hub.tmp / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        log_path=log,
    )
    api = f"http://127.0.0.1:{port}/api/v1"
    alive = still_running(proc, "prometheus", log)

    def get(path: str, **params: str) -> Any:
        """The answer's data; None while Prometheus starts (refused, 503, not JSON)."""
        alive()
        body = json_when_ready(f"{api}/{path}", params=params)
        if body is None:
            return None
        assert body["status"] == "success", body
        return body["data"]

    def query(promql: str) -> list[dict[str, Any]]:
        data = get("query", query=promql)
        return [] if data is None else list(data["result"])

    def rules() -> list[dict[str, Any]]:
        data = get("rules")
        return [] if data is None else [r for g in data["groups"] for r in g["rules"]]

    try:
        # /-/ready answers 503 "Service Unavailable" until the server has started
        harness_wait_ready(
            proc,
            f"http://127.0.0.1:{port}/-/ready",
            deadline_s=120,
            name="prometheus",
            log_path=log,
        )
        up = wait_for(
            "Prometheus scrapes every running service",
            lambda: (
                {
                    r["metric"]["job"]
                    for r in query('up{job=~"mrhub-.*"} == 1')
                    if r["metric"]["job"] in {JOBS[s] for s in hub.ports}
                }
                == {JOBS[s] for s in hub.ports}
                or None
            ),
        )
        assert up
        accepted = wait_for(
            "the ingest series",
            lambda: query(
                'sum by (level) (mrhub_ingest_resources_by_level_total{outcome="accepted"})'
            ),
        )
        assert {r["metric"]["level"] for r in accepted} >= {"2", "3"}
        decisions = wait_for(
            "the recognition series",
            lambda: query("sum by (outcome, reason, region) (mrhub_recognition_decisions_total)"),
        )
        assert all(re.fullmatch(r"\d{6}", r["metric"]["region"]) for r in decisions)
        assert sum(float(r["value"][1]) for r in decisions) >= 1
        lag = wait_for(
            "the lag series",
            lambda: query('mrhub_consumer_lag_messages{job="mrhub-patient-index"}'),
        )
        assert {r["metric"]["service"] for r in lag} == {"patient_index"}
        loaded = {r["name"] for r in wait_for("the alert rules are loaded", rules)}
        assert "MrhubServiceDown" in loaded and "MrhubConsumerLagGrowing" in loaded
        wait_for(
            "every alert rule evaluates without error",
            lambda: all(r["health"] == "ok" for r in rules() or [{"health": "not yet"}]),
        )
    finally:
        stop_process(proc)


# ------------------------------------------------------------------------------ traces


def _headers(record: Any) -> dict[str, bytes]:
    return {k: v for k, v in (record.headers or [])}


def test_the_gateways_trace_id_is_in_every_derived_events_kafka_headers(hub: Hub) -> None:
    trace_ids = {hub.traces["result"], hub.traces["order"]}
    public = [
        "mrhub.ingest.resource-accepted.v1",
        "mrhub.patient.identity-linked.v1",
        "mrhub.results.result-indexed.v1",
        "mrhub.results.order-placed.v1",
        "mrhub.recognition.decision-made.v1",
    ]
    seen: dict[str, int] = {}
    for topic in public:
        for record in consume_all(hub.bootstrap, topic):
            try:
                env = Envelope.from_bytes(record.value)
            except ValueError:
                continue  # the broken message sent on purpose
            if env.trace_id in trace_ids:
                assert _headers(record).get("trace_id") == env.trace_id.encode(), topic
                seen[topic] = seen.get(topic, 0) + 1
    assert sorted(seen) == sorted(public), "each topic carries an event of the two posts"
    # the patient index's internal hops carry it too (their values are not envelopes); a
    # resource the gateway placed on its patient's partition is resolved where it arrives,
    # and a new patient's master is minted on that partition and stamps it there too, so a
    # record's one internal hop is by-record (not by-identity, not by-master)
    internal = ["mrhub-patient-index-by-record"]
    for topic in internal:
        carried = {
            _headers(r).get("trace_id", b"").decode() for r in consume_all(hub.bootstrap, topic)
        }
        assert trace_ids <= carried, f"{topic} lost a trace id"


def test_a_dead_letter_and_the_log_line_about_it_carry_the_trace_id(hub: Hub) -> None:
    bad = hub.traces["bad"]
    dead = [
        r
        for r in consume_all(hub.bootstrap, "mrhub.patient_index.dead-letter.v1")
        if _headers(r).get("trace_id") == bad.encode()
    ]
    assert len(dead) == 1
    assert json.loads(dead[0].value)["stage"] == "route"
    lines = []
    for line in hub.logs["patient_index"].read_text(encoding="utf-8").splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict) and doc.get("trace_id") == bad:
            lines.append(doc)
    assert [d["msg"] for d in lines] == ["dead-lettered"], lines
    assert lines[0]["level"] == "error" and lines[0]["stage"] == "route"
    assert "not an envelope" not in json.dumps(lines), "a log line never repeats a payload"


def test_reads_and_hook_calls_are_timed_by_what_they_answered(hub: Hub) -> None:
    text = hub.metrics("recognition")
    assert (
        sample_sum(
            text, "mrhub_recognition_fhir_read_seconds_count", interaction="search", status="200"
        )
        >= 1
    )
    assert (
        sample_sum(
            text,
            "mrhub_recognition_cds_hook_seconds_count",
            service="mrhub-recognition-sign",
            status="200",
        )
        >= 1
    )
