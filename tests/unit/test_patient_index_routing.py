"""Whose record it is, and the partition that owns it (services.patient_index.routing)."""

from __future__ import annotations

import pytest

from services.common.identifiers import ID_CARD_SYSTEM, OUTPATIENT_NO_SYSTEM, keyed_hash
from services.common.partitioner import partition_for
from services.patient_index.routing import route_of, routing_partition
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
    part = routing_partition(result, HOSPITAL, KEY, 6)
    assert part == routing_partition(own, HOSPITAL, KEY, 6)
    assert part == partition_for(a.anchor.key.encode(), 6)


def test_context_resources_have_no_route_and_unusable_identifiers_are_an_error() -> None:
    org = {"resource_type": "Organization", "resource": {"resourceType": "Organization"}}
    assert route_of(org, HOSPITAL, _hash) is None
    assert routing_partition(org, HOSPITAL, KEY, 6) is None
    nameless = {"resource_type": "Observation", "resource": {}, "patient_identifiers": []}
    with pytest.raises(ValueError, match="no usable patient identifier"):
        route_of(nameless, HOSPITAL, _hash)
    assert routing_partition(nameless, HOSPITAL, KEY, 6) is None
