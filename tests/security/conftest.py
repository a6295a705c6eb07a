"""The attack suite's hub: every service as its own process (`mrhub serve NAME`: ingest,
patient_index, recognition, imaging), on a broker of this package's own, so that what earlier
test modules left on the session broker never mixes with what an attack does here.

One hub serves the whole package (``security_hub``); a test that must restart a service
does so in place with :meth:`SecurityHub.restart`. Four hospitals have tokens:

- ``A``  三甲, Taiyuan, lab qualification national;
- ``A2`` 三乙, Taiyuan, lab and chest CT qualified for its city only (municipal);
- ``B``  level 2, Taiyuan (inside A2's municipal scope);
- ``C``  level 2, Datong (another prefecture: outside A2's scope).

A data steward has a token too.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.common.broker import LocalBroker, free_port
from services.common.envelope import Envelope
from services.common.harness import answers_ready, still_running, wait_until
from services.common.institutions import Registry, hash_token, issue_token
from services.common.kafka_admin import create_topics
from services.common.topics import ALL_TOPICS
from tests.conftest import REPO, _cache_dir
from tests.fhir_samples import dumps
from tests.support import consume_all, run_module, stop_process, wait_ready

PARTITIONS = 3
FHIR = "application/fhir+json"
CARD_SYSTEM = "urn:oid:2.16.156.10011.1.3"
A = "12140000405001730E"
A2 = "12140107405412652L"
B = "12140110405530210H"
C = "12140215406213786R"
STEWARD_TOKEN = "mrhs_security-suite-steward-token-0123456789"
SERVICES = ("ingest", "patient_index", "recognition", "imaging")
#: how each service's port is named in the environment
_PORT_VAR = {
    "ingest": "MRHUB_INGEST__PORT",
    "patient_index": "MRHUB_PATIENT_INDEX__PORT",
    "recognition": "MRHUB_RECOGNITION__PORT",
    "imaging": "MRHUB_IMAGING__PORT",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/security/" in str(item.path):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="package")
def security_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    broker = LocalBroker(
        tmp_path_factory.mktemp("security-kafka"), _cache_dir(), port=0, controller_port=0
    )
    try:
        broker.start(timeout_s=90)
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="package")
def security_bootstrap(security_broker: LocalBroker) -> str:
    info = security_broker.status()
    assert info is not None, "the security suite's broker is not running"
    return info.bootstrap


@dataclass
class SecurityHub:
    bootstrap: str
    tmp: Path
    registry: Path
    tokens: dict[str, str]
    ports: dict[str, int]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    extra_env: dict[str, str] = field(default_factory=dict)

    # ---------------------------------------------------------------- processes

    def env(self, name: str) -> dict[str, str]:
        env = {
            "MRHUB_KAFKA__BOOTSTRAP_SERVERS": self.bootstrap,
            "MRHUB_IDENTITY__HMAC_KEY": "security-suite-hmac-key",
            "MRHUB_INSTITUTIONS_PATH": str(self.registry),
            "MRHUB_PATIENT_INDEX__URL": f"http://127.0.0.1:{self.ports['patient_index']}",
            "MRHUB_RECOGNITION__URL": f"http://127.0.0.1:{self.ports['recognition']}",
            "MRHUB_PATIENT_INDEX__STEWARD_TOKEN_HASHES": json.dumps([hash_token(STEWARD_TOKEN)]),
            "MRHUB_TOPIC_PARTITIONS": str(PARTITIONS),
            "MRHUB_STATE_DIR": str(self.tmp / "state" / name),
            "MRHUB_LOG_LEVEL": "INFO",
            **{var: str(self.ports[svc]) for svc, var in _PORT_VAR.items()},
            **self.extra_env,
        }
        return env

    def log(self, name: str) -> Path:
        return self.tmp / f"{name}.log"

    def start(self, name: str) -> None:
        self.procs[name] = run_module(
            ["-m", "services.cli", "serve", name], self.env(name), self.log(name)
        )

    def wait_ready(self, name: str, timeout_s: float = 120) -> None:
        wait_ready(f"{self.url(name)}/readyz", self.procs[name], self.log(name), timeout_s)

    def wait_all_ready(
        self, urls: list[str], proc: subprocess.Popen[bytes], name: str, timeout_s: float = 180
    ) -> None:
        """Wait until every one of ``urls`` answers ready (workers that share partitions
        have settled); fail at once if ``proc`` (started as ``name``) exits."""
        wait_until(
            lambda: all(answers_ready(f"{url}/readyz") for url in urls),
            deadline_s=timeout_s,
            what=f"{', '.join(urls)} to answer ready",
            alive=still_running(proc, name, self.log(name)),
        )

    def stop(self, name: str) -> int:
        return stop_process(self.procs[name])

    def restart(self, name: str, *, keep_state: bool = True) -> None:
        """Stop ``name`` gracefully and start it again (with its RocksDB state, unless
        ``keep_state`` is false: then it must rebuild everything from the changelogs)."""
        self.stop(name)
        if not keep_state:
            shutil.rmtree(self.tmp / "state" / name, ignore_errors=True)
        self.start(name)
        self.wait_ready(name)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            stop_process(proc)

    # ---------------------------------------------------------------- HTTP

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    @property
    def gateway(self) -> str:
        return self.url("ingest")

    def auth(self, inst: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[inst]}"}

    def post(self, inst: str, path: str, doc: Any, *, expect: int | None = None) -> httpx.Response:
        """POST FHIR JSON to the gateway as ``inst``; assert ``expect`` (2xx by default)."""
        resp = httpx.post(
            f"{self.gateway}{path}",
            content=dumps(doc),
            headers={**self.auth(inst), "Content-Type": FHIR},
            timeout=60,
        )
        if expect is None:
            assert resp.status_code in (200, 201), resp.text[:2000]
        else:
            assert resp.status_code == expect, resp.text[:2000]
        return resp

    def check(self, inst: str, patient: str, code: str) -> httpx.Response:
        return httpx.post(
            f"{self.url('recognition')}/recognition/check",
            json={"patient": patient, "code": code},
            headers=self.auth(inst),
            timeout=30,
        )

    # ---------------------------------------------------------------- topics

    def events(self, topic: str) -> list[Envelope]:
        return [Envelope.from_bytes(r.value) for r in consume_all(self.bootstrap, topic)]

    def wait_for(
        self, topic: str, pick: Callable[[Envelope], bool], *, count: int = 1, timeout_s: float = 90
    ) -> list[Envelope]:
        """The events of ``topic`` that ``pick`` selects, once there are ``count`` of them."""
        found: list[Envelope] = []

        def enough() -> list[Envelope] | None:
            found[:] = [e for e in self.events(topic) if pick(e)]
            return list(found) if len(found) >= count else None

        try:
            events: list[Envelope] = wait_until(
                enough, deadline_s=timeout_s, what=f"{count} events on {topic}", interval_s=0.5
            )
        except TimeoutError as exc:
            raise AssertionError(f"{len(found)} of {count} events on {topic}: {exc}") from None
        return events

    def metric(self, name: str, service: str, **labels: str) -> float:
        """The sum of the samples of ``name`` on ``service``'s /metrics whose labels include
        ``labels``."""
        text = httpx.get(f"{self.url(service)}/metrics", timeout=10).text
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name) or line.startswith("#"):
                continue
            head, _, value = line.rpartition(" ")
            if head.split("{", 1)[0] != name:
                continue
            if all(f'{k}="{v}"' in head for k, v in labels.items()):
                total += float(value)
        return total


def start_security_hub(
    bootstrap: str, tmp: Path, *, extra_env: dict[str, str] | None = None
) -> SecurityHub:
    registry = tmp / "institutions.yaml"
    shutil.copy(REPO / "config" / "institutions.yaml", registry)
    assert {A, A2, B, C} <= set(Registry.load(registry).ids)
    tokens = {i: issue_token(registry, i) for i in (A, A2, B, C)}
    create_topics(bootstrap, ALL_TOPICS, default_partitions=PARTITIONS, replication_factor=1)
    hub = SecurityHub(
        bootstrap,
        tmp,
        registry,
        tokens,
        {name: free_port() for name in SERVICES},
        extra_env=dict(extra_env or {}),
    )
    try:
        for name in SERVICES:
            hub.start(name)
        for name in SERVICES:
            hub.wait_ready(name)
    except BaseException:
        hub.stop_all()
        raise
    return hub


@pytest.fixture(scope="package")
def security_hub(
    security_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SecurityHub]:
    hub = start_security_hub(security_bootstrap, tmp_path_factory.mktemp("security-hub"))
    try:
        yield hub
    finally:
        hub.stop_all()
