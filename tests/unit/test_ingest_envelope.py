"""The gateway writes each accepted resource's envelope directly (no pydantic model per
resource): the bytes must be exactly what :class:`Envelope` writes for the same fields, and a
decimal must keep its digits."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from mrhub_tools.bench.ingest import make_payloads
from services.common.envelope import Envelope
from services.common.identifiers import keyed_hash
from services.common.institutions import Institution, Registry
from services.common.topics import ALL_EVENTS
from services.ingest.metrics import IngestMetrics
from services.ingest.publisher import OutMessage
from services.ingest.validation import CheckedResource, check_bundle, check_resource, parse_json
from services.ingest.views import EVENT_TYPE, Gateway, bundle_patients
from services.patient_index.routing import route_key
from tests.fhir_samples import gb11643
from tests.unit.test_contracts import valid

REPO = Path(__file__).resolve().parents[2]
RECEIVED = datetime(2026, 3, 2, 7, 30, 0, 123456, tzinfo=UTC)


def _gateway() -> tuple[Gateway, Institution]:
    registry = Registry.load(REPO / "config" / "institutions.yaml")
    gw = Gateway(
        registry,
        None,  # type: ignore[arg-type]  # no Kafka: messages are only built
        IngestMetrics(),
        hmac_key=b"k" * 32,
        max_body_bytes=1 << 20,
    )
    return gw, next(iter(registry))


def _as_envelope_writes_it(msg: OutMessage) -> Envelope:
    """The envelope in ``msg``, after checking that Envelope writes the same bytes and
    headers for it."""
    env = Envelope.from_bytes(msg.value)
    rebuilt = Envelope(**{name: getattr(env, name) for name in Envelope.model_fields})
    assert rebuilt.to_bytes() == msg.value
    assert msg.headers == tuple(rebuilt.headers())
    return env


def test_single_resource_envelope_is_what_envelope_writes() -> None:
    gw, who = _gateway()
    body = make_payloads(who.id, who.name, n_single=1, n_bundles=0).single[0].body
    checked = check_resource(parse_json(body)[0], who, expected_type="Observation")
    assert checked.ok
    msg, event_id = gw.message(who, checked, received_at=RECEIVED, trace_id="trace-0001")
    env = _as_envelope_writes_it(msg)
    assert (env.event_id, env.event_type, env.source) == (event_id, EVENT_TYPE, who.id)
    assert (env.received_at, env.trace_id) == (RECEIVED, "trace-0001")
    assert env.payload["resource"] == checked.resource
    assert env.payload["resource_type"] == "Observation"
    assert msg.key.startswith(f"{who.id}|Observation|".encode())


def test_bundle_entry_envelopes_keep_decimals_exact() -> None:
    gw, who = _gateway()
    body = make_payloads(who.id, who.name, n_single=0, n_bundles=1).bundle[0].body
    raw = parse_json(body)[0]
    check = check_bundle(raw, who)
    assert check.ok
    patients = bundle_patients(check.entries)
    for e in check.entries:
        msg, _ = gw.message(
            who,
            e,
            received_at=RECEIVED,
            trace_id="trace-0002",
            entry_index=e.index,
            patients=patients,
        )
        env = _as_envelope_writes_it(msg)
        assert env.payload["entry_index"] == e.index
        assert env.payload["full_url"] == e.full_url
        if e.resource_type == "Observation":
            posted = e.resource["valueQuantity"]["value"]
            # the digits as posted (6.30 stays 6.30), in the Kafka value itself
            assert f'"value":{posted}'.encode() in msg.value
            assert str(env.payload["resource"]["valueQuantity"]["value"]) == str(posted)
            assert env.payload["patient_identifiers"]  # from the bundle's Patient


def test_the_gateways_resource_accepted_event_fits_its_schema() -> None:
    gw, who = _gateway()
    body = make_payloads(who.id, who.name, n_single=1, n_bundles=0).single[0].body
    checked = check_resource(parse_json(body)[0], who, expected_type="Observation")
    msg, _ = gw.message(who, checked, received_at=RECEIVED, trace_id="trace-0001")
    [ev] = [e for e in ALL_EVENTS if e.event_type == EVENT_TYPE]
    valid(ev, Envelope.from_bytes(msg.value))
    assert dict(msg.headers)["source"] == who.id.encode()


def test_a_bundle_s_results_carry_their_patient_s_route_and_a_context_resource_none() -> None:
    """The route (the partition the message goes to) is the patient index's anchor for the
    patient; within a bundle it is computed once per subject — and a resource that carries
    no record (its route is None) sharing the subject must not give the results None."""
    gw, who = _gateway()
    card = gb11643("11010519850317001")
    idents = [{"system": "urn:oid:2.16.156.10011.1.3", "value": card}]
    subject = {"reference": "urn:uuid:p"}
    memo: dict[tuple[int, ...], bytes | None] = {}
    specimen = CheckedResource("Specimen", {"resourceType": "Specimen", "subject": subject})
    obs = CheckedResource("Observation", {"resourceType": "Observation", "subject": subject})
    report = CheckedResource("DiagnosticReport", {"resourceType": "DiagnosticReport"})
    assert gw.route(who, specimen, idents, memo) is None  # no record: no placement
    first = gw.route(who, obs, idents, memo)
    again = gw.route(who, report, idents, memo)
    expected = route_key(
        {"resource_type": "Observation", "resource": obs.resource, "patient_identifiers": idents},
        who.id,
        lambda i: keyed_hash(gw.hmac_key, *i.key()),
    )
    assert first == again == expected
    assert expected is not None
    # another card, another route (the memo is per subject, not per bundle)
    other = [{"system": "urn:oid:2.16.156.10011.1.3", "value": gb11643("11010519850317003")}]
    assert gw.route(who, obs, other, memo) not in (None, first)
    # no usable identifier: no placement (the message goes by its key)
    assert gw.route(who, obs, [], memo) is None


def test_a_patient_shares_its_route_with_its_results_only_when_its_card_agrees_with_it() -> None:
    gw, who = _gateway()
    card = gb11643("11010519850317001")  # born 1985-03-17, male

    def hashed(payload: dict[str, object]) -> bytes | None:
        return route_key(payload, who.id, lambda i: keyed_hash(gw.hmac_key, *i.key()))

    for gender, shared in (("male", True), ("female", False)):  # female: a borrowed card
        pat = {
            "resourceType": "Patient",
            "identifier": [{"system": "urn:oid:2.16.156.10011.1.3", "value": card}],
            "gender": gender,
            "birthDate": "1985-03-17",
        }
        idents = pat["identifier"]
        memo: dict[tuple[int, ...], bytes | None] = {}
        mine = gw.route(who, CheckedResource("Patient", pat), list(idents), memo)
        obs = CheckedResource("Observation", {"resourceType": "Observation"})
        theirs = gw.route(who, obs, list(idents), memo)
        # each is what the route stage computes for it, memo or not
        assert mine == hashed({"resource_type": "Patient", "resource": pat})
        assert theirs == hashed(
            {"resource_type": "Observation", "resource": {}, "patient_identifiers": idents}
        )
        assert (mine == theirs) is shared
