"""A standard FHIR client (smart-on-fhir's `fhirclient`) works against the gateway unchanged."""

from __future__ import annotations

import json

from fhirclient import server as fhir_server
from fhirclient.models.bundle import Bundle as ClientBundle
from fhirclient.models.observation import Observation as ClientObservation
from fhirclient.models.patient import Patient as ClientPatient

from services.common.envelope import Envelope
from tests.fhir_samples import bundle, dumps, observation, patient
from tests.integration.conftest import GatewayProcess
from tests.support import consume_all


def _server(gw: GatewayProcess) -> fhir_server.FHIRServer:
    srv = fhir_server.FHIRServer(None, base_uri=f"{gw.url}/fhir/")
    # fhirclient has no static-token option; its requests session carries the header
    srv.session.headers["Authorization"] = f"Bearer {gw.token}"
    return srv


def test_fhirclient_reads_metadata_and_creates_resources(
    gateway_process: GatewayProcess, bootstrap: str
) -> None:
    gw = gateway_process
    before = len(consume_all(bootstrap, gw.topic))
    srv = _server(gw)
    srv.get_capability()  # parses the CapabilityStatement with the client's own R4 models
    assert srv.capabilityStatement is not None
    assert srv.capabilityStatement.fhirVersion == "4.0.1"

    created_patient = ClientPatient(json.loads(dumps(patient(gw.institution, mz="MZ-FC-1"))))
    answer = created_patient.create(srv)
    assert answer["resourceType"] == "Patient"

    obs = ClientObservation(json.loads(dumps(observation(gw.institution, mz="MZ-FC-1"))))
    obs.create(srv)

    tx_doc = json.loads(dumps(bundle("transaction", gw.institution, n_obs=1)))
    del tx_doc["id"]  # the client refuses to "create" anything that has an id
    tx = ClientBundle(tx_doc)
    response = tx.create(srv)
    assert response["type"] == "transaction-response"

    recs = consume_all(bootstrap, gw.topic, expect=before + 4)
    types = [Envelope.from_bytes(r.value).payload["resource_type"] for r in recs[before:]]
    assert sorted(types) == ["Observation", "Observation", "Patient", "Patient"]
