"""A third-party FHIR client (smart-on-fhir's ``fhirclient``) searches the shared record,
follows ``next`` links and reads by id — against the suite's real hub, on the same FHIR base
the hospitals write to (the gateway, which hands reads to the recognition service)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import httpx
from fhirclient import server as fhir_server
from fhirclient.models.fhirsearch import FHIRSearch
from fhirclient.models.observation import Observation as ClientObservation

from tests.fhir_samples import gb11643
from tests.security.conftest import A2, CARD_SYSTEM, B, SecurityHub
from tests.security.test_sharing_reads import CBC, LOINC, _posted, _result

_SEQ = iter(random.sample(range(1, 999, 2), 50))


def test_fhirclient_searches_follows_next_links_and_reads_by_id(
    security_hub: SecurityHub,
) -> None:
    hub = security_hub
    card = gb11643(f"14021519820304{next(_SEQ):03d}")
    values = ["120", "125", "130", "135", "140"]
    for i, value in enumerate(values):
        hub.post(A2, "/fhir/Observation", _result(A2, card, hours_ago=20 - i, value=value))
    _posted(hub, A2, card, len(values))
    # B learns the hub's patient id from its check (no 身份证 in the client's URLs after this)
    check = hub.check(B, f"{CARD_SYSTEM}|{card}", f"{LOINC}|{CBC}").json()
    master = check["master_patient_id"]
    assert master

    srv = fhir_server.FHIRServer(None, base_uri=f"{hub.gateway}/fhir/")
    srv.session.headers["Authorization"] = f"Bearer {hub.tokens[B]}"
    search = FHIRSearch(
        ClientObservation, {"patient": f"Patient/{master}", "code": CBC, "_count": "2"}
    )
    pages = list(search.perform_iter(srv))
    assert len(pages) == 3  # 2 + 2 + 1, through the next links
    assert all(page.total == len(values) for page in pages)
    found = [entry.resource for page in pages for entry in page.entry or []]
    assert sorted(str(r.valueQuantity.value) for r in found) == values
    assert all(isinstance(r, ClientObservation) for r in found)
    for page in pages:  # the links never name the patient by an identifier
        assert all(card not in (link.url or "") for link in page.link or [])

    first = found[0]
    read = ClientObservation.read(first.id, srv)
    assert read.id == first.id and read.valueQuantity.value == first.valueQuantity.value
    assert read.meta.source and read.meta.source.endswith(A2)
    assert read.referenceRange[0].text == "130-175 g/L"
    # and a date filter in the client's own search syntax
    since = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
    later = FHIRSearch(ClientObservation, {"patient": f"Patient/{master}", "date": f"ge{since}"})
    assert [p.total for p in later.perform_iter(srv)] == [0]
    # without the token the client gets 401
    bare = httpx.get(f"{hub.gateway}/fhir/Observation/{first.id}", timeout=10)
    assert bare.status_code == 401
