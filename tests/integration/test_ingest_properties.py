"""Random and mutated FHIR thrown at every endpoint of a running gateway process.

Whatever arrives, the gateway never fails with a 5xx other than 503, and every refusal is
a FHIR OperationOutcome.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fhir.resources.R4B.operationoutcome import OperationOutcome
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fhir_samples import bundle, dumps, observation, patient, service_request
from tests.integration.conftest import GatewayProcess

PATHS = [
    "/fhir",
    "/fhir/Patient",
    "/fhir/Observation",
    "/fhir/DiagnosticReport",
    "/fhir/ImagingStudy",
    "/fhir/ServiceRequest",
    "/fhir/$import",
    "/fhir/Medication",
    "/fhir/metadata",
]
CONTENT_TYPES = [
    "application/fhir+json",
    "application/json",
    "application/fhir+ndjson",
    "text/plain",
    "application/fhir+json; charset=utf-8",
    "",
]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
FIELDS = st.sampled_from(
    [
        "resourceType",
        "subject",
        "status",
        "code",
        "identifier",
        "entry",
        "type",
        "value",
        "effectiveDateTime",
        "performer",
        "fullUrl",
        "reference",
        "system",
        "birthDate",
        "gender",
    ]
)


def _samples(inst: str) -> list[dict[str, Any]]:
    return [
        json.loads(dumps(observation(inst))),
        json.loads(dumps(patient(inst))),
        service_request(inst),
        json.loads(dumps(bundle("transaction", inst))),
        json.loads(dumps(bundle("batch", inst))),
    ]


def _mutate(doc: Any, path: list[int], field: str, value: Any, delete: bool) -> Any:
    """Walk into ``doc`` along ``path`` (indices into its containers) and change ``field``."""
    node = doc
    for step in path:
        children = list(node.values()) if isinstance(node, dict) else node
        containers = (
            [c for c in children if isinstance(c, dict | list)]
            if isinstance(children, list)
            else []
        )
        if not containers:
            break
        node = containers[step % len(containers)]
    if isinstance(node, dict):
        if delete:
            node.pop(field, None)
        else:
            node[field] = value
    elif isinstance(node, list) and node:
        node[0] = value
    return doc


def _check(resp: httpx.Response) -> None:
    assert resp.status_code < 500 or resp.status_code == 503, resp.text
    if resp.status_code >= 400:
        assert resp.headers["content-type"].startswith("application/fhir+json"), resp.text
        OperationOutcome.model_validate(resp.json())


@pytest.fixture(scope="module")
def client(gateway_process: GatewayProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway_process.url, timeout=30) as c:
        yield c


PROPS = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@PROPS
@given(path=st.sampled_from(PATHS), ctype=st.sampled_from(CONTENT_TYPES), value=json_values)
def test_random_json(
    client: httpx.Client, gateway_process: GatewayProcess, path: str, ctype: str, value: Any
) -> None:
    headers = {"Authorization": f"Bearer {gateway_process.token}", "Content-Type": ctype}
    _check(client.post(path, content=json.dumps(value).encode(), headers=headers))


@PROPS
@given(
    path=st.sampled_from(PATHS),
    which=st.integers(0, 4),
    walk=st.lists(st.integers(0, 7), max_size=5),
    field=FIELDS,
    value=json_values,
    delete=st.booleans(),
)
def test_mutated_fhir(
    client: httpx.Client,
    gateway_process: GatewayProcess,
    path: str,
    which: int,
    walk: list[int],
    field: str,
    value: Any,
    delete: bool,
) -> None:
    doc = _mutate(
        copy.deepcopy(_samples(gateway_process.institution)[which]), walk, field, value, delete
    )
    headers = {
        "Authorization": f"Bearer {gateway_process.token}",
        "Content-Type": "application/fhir+json",
    }
    body = json.dumps(doc).encode()
    if path == "/fhir/$import":
        headers["Content-Type"] = "application/fhir+ndjson"
        body = body + b"\n" + body
    _check(client.post(path, content=body, headers=headers))


@PROPS
@given(
    method=st.sampled_from(["GET", "PUT", "DELETE", "PATCH", "POST"]),
    path=st.sampled_from([*PATHS, "/", "/fhir/", "/fhir/Observation/1", "/metrics", "/fhir/$x"]),
    body=st.binary(max_size=300),
    auth=st.sampled_from(["", "Bearer", "Bearer wrong", "Basic abc", None]),
)
def test_random_bytes_methods_and_credentials(
    client: httpx.Client,
    gateway_process: GatewayProcess,
    method: str,
    path: str,
    body: bytes,
    auth: str | None,
) -> None:
    headers = {"Content-Type": "application/fhir+json"}
    headers["Authorization"] = auth if auth is not None else f"Bearer {gateway_process.token}"
    _check(client.request(method, path, content=body, headers=headers))


@PROPS
@given(
    path=st.sampled_from(PATHS),
    which=st.integers(0, 4),
    walk=st.lists(st.integers(0, 7), max_size=5),
    field=FIELDS,
    depth=st.integers(1, 3_000),
    kind=st.sampled_from(["[", "{"]),
    pad=st.sampled_from([0, 1, 70_000, 300_000]),
)
def test_nesting_and_sizes(
    client: httpx.Client,
    gateway_process: GatewayProcess,
    path: str,
    which: int,
    walk: list[int],
    field: str,
    depth: int,
    kind: str,
    pad: int,
) -> None:
    """Deep nesting anywhere and large values (over the worker-thread threshold): a clear
    answer (400 too-deep, or what the data deserves), never a 5xx but 503."""
    doc = _mutate(
        copy.deepcopy(_samples(gateway_process.institution)[which]), walk, field, "@@HOLE@@", False
    )
    if pad:
        doc["text"] = {"status": "generated", "div": "<div>" + "x" * pad + "</div>"}
    close = "]" if kind == "[" else "}"
    nested = (
        ('{"a":' * depth + "1" + "}" * depth) if kind == "{" else (kind * depth + close * depth)
    )
    body = json.dumps(doc).replace('"@@HOLE@@"', nested).encode()
    headers = {
        "Authorization": f"Bearer {gateway_process.token}",
        "Content-Type": "application/fhir+json",
    }
    if path == "/fhir/$import":
        headers["Content-Type"] = "application/fhir+ndjson"
        body = body + b"\n" + body
    resp = client.post(path, content=body, headers=headers)
    _check(resp)
    if depth > 100 and path in ("/fhir", "/fhir/Observation") and resp.status_code != 404:
        codes = [i["details"]["coding"][0]["code"] for i in resp.json().get("issue", [])]
        assert resp.status_code in (400, 415) or "too-deep" in codes, resp.text[:500]


@PROPS
@given(
    name=st.sampled_from(["X-Pad", "Authorization", "Content-Type", "X-Trace-Id", "Host"]),
    size=st.sampled_from([10, 8_000, 9_000, 20_000]),
    count=st.sampled_from([1, 50, 100]),
)
def test_headers_of_every_size(
    client: httpx.Client, gateway_process: GatewayProcess, name: str, size: int, count: int
) -> None:
    """Long or many headers: refused (400, or the connection closed), never a 5xx."""
    headers = {"Authorization": f"Bearer {gateway_process.token}", "Content-Type": "x/y"}
    headers[name] = "a" * size
    headers.update({f"X-Extra-{i}": "b" for i in range(count - 1)})
    try:
        resp = client.post("/fhir/Observation", content=b"{}", headers=headers)
    except httpx.RemoteProtocolError:
        return  # the server closed the connection: refused
    assert resp.status_code < 500, resp.text[:500]
