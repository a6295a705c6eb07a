"""Whose record it is, and the partition that owns it (services.patient_index.routing)."""

from __future__ import annotations

import pytest

from services.common.identifiers import ID_CARD_SYSTEM, OUTPATIENT_NO_SYSTEM, keyed_hash
from services.common.partitioner import partition_for
from services.patient_index.routing import route_key, route_of
from tests.fhir_samples import ID_CARD, patient

HOSPITAL = "12140000405001730E"
KEY = b"k" * 32


def _hash(ident: object) -> str:
    return keyed_hash(KEY, *ident.key())  # type: ignore[attr-defined]


def test_a_patient_and_its_result_route_to_the_same_anchor_and_partition() -> None:
    own = {"resource_type": "Patient", "resource": patient(HOSPITAL)}
    result = {
        "resource_type": "Observation",
        "resource": {"resourceType": "Observation"},
        "patient_identifiers": [
            {"system": ID_CARD_SYSTEM, "value": ID_CARD},
            {"system": OUTPATIENT_NO_SYSTEM, "value": "MZ0001"},
        ],
    }
    a, b = route_of(own, HOSPITAL, _hash), route_of(result, HOSPITAL, _hash)
    assert a is not None and b is not None
    assert a.anchor == b.anchor and a.anchor.kind == "id_card"
    assert [k.kind for k in a.aliases] == ["local"]
    # the partition the gateway puts each on (services/ingest/publisher.py)
    key = route_key(result, HOSPITAL, _hash)
    assert key is not None and key == route_key(own, HOSPITAL, _hash)
    part = partition_for(key, 6)
    assert part == partition_for(a.anchor.key.encode(), 6)


def test_context_resources_have_no_route_and_unusable_identifiers_are_an_error() -> None:
    org = {"resource_type": "Organization", "resource": {"resourceType": "Organization"}}
    assert route_of(org, HOSPITAL, _hash) is None
    assert route_key(org, HOSPITAL, _hash) is None
    nameless = {"resource_type": "Observation", "resource": {}, "patient_identifiers": []}
    with pytest.raises(ValueError, match="no usable patient identifier"):
        route_of(nameless, HOSPITAL, _hash)
    assert route_key(nameless, HOSPITAL, _hash) is None


@pytest.mark.parametrize("gender", ["male", "female", None])
@pytest.mark.parametrize("born", ["1985-03-17", "2019-06-01", None])
@pytest.mark.parametrize(
    "which", ["card and mz", "card only", "mz only", "bad checksum card and mz"]
)
def test_the_gateway_s_route_key_is_the_route_stage_s_anchor(
    gender: str | None, born: str | None, which: str
) -> None:
    """route_key skips the name, phone and address (the gateway's CPU): it must still give
    the anchor route_of gives — a card that disagrees with the record's birth date or sex
    (a parent's card on a child's record) is keyed as borrowed in both."""
    doc = patient(HOSPITAL)
    doc["telecom"] = [{"system": "phone", "value": "13800138000"}]
    doc["address"] = [{"text": "北京市朝阳区"}]
    if gender is None:
        del doc["gender"]
    else:
        doc["gender"] = gender
    if born is None:
        del doc["birthDate"]
    else:
        doc["birthDate"] = born
    card, mz = doc["identifier"]
    doc["identifier"] = {
        "card and mz": [card, mz],
        "card only": [card],
        "mz only": [mz],
        "bad checksum card and mz": [{**card, "value": ID_CARD[:-1] + "0"}, mz],
    }[which]
    payload = {"resource_type": "Patient", "resource": doc}
    full = route_of(payload, HOSPITAL, _hash)
    assert full is not None
    assert route_key(payload, HOSPITAL, _hash) == full.anchor.key.encode()
    # and a result naming the same identifiers routes with its Patient unless the card was
    # only borrowed on this record (a result carries no birth date or sex to tell)
    result = {
        "resource_type": "Observation",
        "resource": {"resourceType": "Observation"},
        "patient_identifiers": doc["identifier"],
    }
    same = route_key(result, HOSPITAL, _hash) == full.anchor.key.encode()
    borrowed = which in ("card and mz", "card only") and (
        (born not in (None, "1985-03-17")) or gender == "female"
    )
    assert same != borrowed
