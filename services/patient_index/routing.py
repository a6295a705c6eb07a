"""Whose record is it: the person and the anchor of one accepted resource (pure).

The patient index's ``route`` stage calls :func:`route_of` for every message on
``mrhub.ingest.resource-accepted.v1``; the record belongs to the owner of the anchor's keyed
hash (the ``resolve`` stage's partition ``partition_for(anchor key)`` of ``by-identity``,
which holds that identifier's ``identities`` entry).

The gateway, which holds the same HMAC key, publishes each accepted resource on the
partition of ``resource-accepted`` its anchor names (:func:`route_key`), so that the worker
that reads it is, as a rule, the anchor's owner: the ``route`` stage then resolves the
record in place, and the hop through ``by-identity`` — one produced and one consumed message
per record — disappears (issue 15). A resource that lands elsewhere (a topic with another
partition count, a message published before this, a rebalance between the two reads) is
forwarded as before, so the placement is an optimisation, never a condition of correctness.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from services.patient_index.identity import Keyed, keyed_identifiers
from services.patient_index.normalize import (
    Ident,
    Person,
    identity_from_fhir,
    person_from_fhir,
    person_from_subject,
)

#: Clinical resources that become canonical records (a Patient only feeds identities).
CLINICAL: Final = frozenset({"Observation", "DiagnosticReport", "ImagingStudy", "ServiceRequest"})


@dataclass(frozen=True, slots=True)
class Route:
    """The person a resource names, its anchor (strongest identifier) and the rest."""

    person: Person
    anchor: Keyed
    aliases: tuple[Keyed, ...]


def route_of(
    payload: Mapping[str, Any], source: str, hash_ident: Callable[[Ident], str]
) -> Route | None:
    """The route of an accepted resource's ``payload`` posted by ``source``; ``None`` for a
    resource that carries no record for the index (neither a Patient nor a clinical one).
    Raises ``ValueError`` when the resource names no usable patient identifier."""
    rtype = payload.get("resource_type")
    if rtype != "Patient" and rtype not in CLINICAL:
        return None
    person = (
        person_from_fhir(payload["resource"], source)
        if rtype == "Patient"
        else person_from_subject(payload.get("patient_identifiers") or [], source)
    )
    idents = keyed_identifiers(person, hash_ident)
    if not idents:
        raise ValueError("no usable patient identifier (none, or none that verifies)")
    return Route(person, idents[0], tuple(idents[1:]))


def route_key(
    payload: Mapping[str, Any], source: str, hash_ident: Callable[[Ident], str]
) -> bytes | None:
    """The keyed hash of the resource's anchor — the key :func:`route_of`'s anchor has, which
    the ``route`` stage forwards to ``by-identity`` with — computed from what decides it only
    (a Patient's name, phone and address are not normalised): the resource belongs to
    ``partition_for(route_key, partitions)``. ``None`` when the index has nothing to route
    (not a record, no usable identifier)."""
    return route_and_scope(payload, source, hash_ident)[0]


def route_and_scope(
    payload: Mapping[str, Any], source: str, hash_ident: Callable[[Ident], str]
) -> tuple[bytes | None, bool]:
    """:func:`route_key`, and whether a clinical resource naming the same identifiers routes
    the same way: always for a clinical resource; for a Patient unless its 身份证 disagrees
    with its birth date or sex (then it is keyed as borrowed on the Patient only, and a
    result, which carries neither, is routed by the card)."""
    rtype = payload.get("resource_type")
    if rtype == "Patient":
        person = identity_from_fhir(payload["resource"], source)
    elif rtype in CLINICAL:
        person = person_from_subject(payload.get("patient_identifiers") or [], source)
    else:
        return None, False
    idents = keyed_identifiers(person, hash_ident)
    return (idents[0].key.encode() if idents else None), not person.card_conflict
