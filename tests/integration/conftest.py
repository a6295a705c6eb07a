from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.common.broker import free_port
from services.common.institutions import Registry, issue_token
from tests.conftest import REPO
from tests.support import create_topic, run_module, stop_process, wait_ready


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/integration/" in str(item.path):
            item.add_marker(pytest.mark.integration)


@dataclass(frozen=True)
class GatewayProcess:
    url: str
    token: str
    institution: str
    topic: str
    log: Path


@pytest.fixture(scope="module")
def gateway_process(
    bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """The gateway as it runs in production: its own process, `mrhub serve ingest`."""
    tmp = tmp_path_factory.mktemp("gateway")
    registry = tmp / "institutions.yaml"
    shutil.copy(REPO / "config" / "institutions.yaml", registry)
    institution = Registry.load(registry).ids[0]
    token = issue_token(registry, institution)
    port = free_port()
    topic = f"mrhub.ingest.resource-accepted.v1.test-{uuid.uuid4().hex[:8]}"
    create_topic(bootstrap, topic, 3)
    env = {
        "MRHUB_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "MRHUB_IDENTITY__HMAC_KEY": "test-hmac-key",
        "MRHUB_INGEST__PORT": str(port),
        "MRHUB_INSTITUTIONS_PATH": str(registry),
        "MRHUB_INGEST__TOPIC": topic,
        "MRHUB_LOG_LEVEL": "WARNING",
    }
    log = tmp / "gateway.log"
    proc = run_module(["-m", "services.cli", "serve", "ingest"], env, log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{url}/readyz", proc, log)
        yield GatewayProcess(url, token, institution, topic, log)
    finally:
        stop_process(proc)
