"""State that cannot outgrow Kafka: a patient with a long imaging history.

The imaging index keeps one ``patients`` table entry per study of a patient, never one value
holding all of them (which would grow with the patient's history until its changelog message
is refused). A patient with 1,500 studies keeps them all, in the changelog partition of the
patient's own messages, and after the imaging worker loses its local state and rebuilds it
from the changelog the search still counts every one of them."""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from services.common.partitioner import partition_for
from services.imaging_index.studies import study_key
from tests.fhir_samples import gb11643
from tests.security.conftest import A2, CARD_SYSTEM, PARTITIONS, SecurityHub
from tests.support import consume_all, produce

DCM = "http://dicom.nema.org/resources/ontology/DCM"
STUDIES = 1500
PER_BUNDLE = 300
CHANGELOG = "mrhub-imaging-index-patients-changelog"
#: no changelog value of one study comes anywhere near this (a whole history of 1,500 did)
ENTRY_BYTES = 64 * 1024


def _study(card: str, n: int, started: datetime) -> dict[str, Any]:
    uid = f"1.2.826.0.1.3680043.8.498.{uuid.uuid4().int % 10**30}"
    modality = ("CT", "MR", "US")[n % 3]
    return {
        "resourceType": "ImagingStudy",
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{uid}"}],
        "status": "available",
        "modality": [{"system": DCM, "code": modality}],
        "subject": {"identifier": {"system": CARD_SYSTEM, "value": card}},
        "started": (started - timedelta(hours=n)).isoformat(),
        "numberOfSeries": 1,
        "numberOfInstances": 20,
        "series": [
            {
                "uid": f"{uid}.1",
                "number": 1,
                "modality": {"system": DCM, "code": modality},
                "numberOfInstances": 20,
            }
        ],
    }


def _batch(studies: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": study,
                "request": {"method": "POST", "url": "ImagingStudy"},
            }
            for study in studies
        ],
    }


def _search(hub: SecurityHub, patient: str, **params: str) -> httpx.Response:
    return httpx.get(
        f"{hub.url('imaging')}/fhir/ImagingStudy",
        params={"patient": patient, "_count": "1", **params},
        headers=hub.auth(A2),
        timeout=60,
    )


def _total_reaches(hub: SecurityHub, patient: str, want: int, timeout_s: float) -> dict[str, Any]:
    """The search answer once its ``total`` is ``want`` (never above it on the way)."""
    deadline = time.monotonic() + timeout_s
    seen: list[int | str] = []
    while True:
        resp = _search(hub, patient)
        if resp.status_code == 200:
            bundle: dict[str, Any] = resp.json()
            assert bundle["total"] <= want, f"{bundle['total']} studies listed, {want} posted"
            if bundle["total"] == want:
                return bundle
            seen.append(bundle["total"])
        else:
            assert resp.status_code == 503, resp.text[:2000]  # partitions being assigned
            seen.append(resp.status_code)
        assert time.monotonic() < deadline, f"total never reached {want}: {seen[-5:]}"
        time.sleep(0.5)


@pytest.mark.timeout(1200)
def _changelog(
    hub: SecurityHub, master: str, done: Callable[[list[Any]], bool], timeout_s: float = 120
) -> list[Any]:
    """The ``patients`` changelog records of ``master`` (its entries and a value under the
    bare master id), once ``done`` says they are all there: a table write is in the store as
    soon as it is made, in the changelog when its transaction commits."""
    key = master.encode()
    deadline = time.monotonic() + timeout_s
    while True:
        records = [
            r
            for r in consume_all(hub.bootstrap, CHANGELOG)
            if r.key == key or r.key.startswith(key + b"|")
        ]
        if done(records):
            return records
        assert time.monotonic() < deadline, f"{len(records)} changelog records of the master"
        time.sleep(0.5)


def test_a_patient_with_1500_studies_keeps_them_all_after_a_rebuild_from_the_changelog(
    security_hub: SecurityHub,
) -> None:
    hub = security_hub
    card = gb11643(f"14010519700107{random.randint(100, 999)}")
    started = datetime.now(UTC) - timedelta(days=1)
    studies = [_study(card, n, started) for n in range(STUDIES)]
    for first in range(0, STUDIES, PER_BUNDLE):
        resp = hub.post(A2, "/fhir", _batch(studies[first : first + PER_BUNDLE]))
        answers = [e["response"]["status"] for e in resp.json()["entry"]]
        assert all(a.startswith("2") for a in answers), answers[:5]

    bundle = _total_reaches(hub, f"{CARD_SYSTEM}|{card}", STUDIES, timeout_s=600)
    master = bundle["entry"][0]["resource"]["subject"]["identifier"]["value"]
    # the paging still works over the whole history, newest first
    last = _search(hub, master, _offset=str(STUDIES - 1))
    assert last.status_code == 200 and last.json()["total"] == STUDIES
    oldest = last.json()["entry"][0]["resource"]["started"]
    assert datetime.fromisoformat(oldest) <= datetime.fromisoformat(
        bundle["entry"][0]["resource"]["started"]
    )
    ct = _search(hub, master, modality="CT")
    assert ct.status_code == 200 and ct.json()["total"] == STUDIES // 3

    # one changelog entry per study, each small, all in the partition of the master's own
    # messages (where the search's prefix scan reads them)
    records = _changelog(hub, master, lambda rs: len({r.key for r in rs}) >= STUDIES)
    assert len({r.key for r in records}) == STUDIES
    assert not [r for r in records if r.key == master.encode()]  # no value of all of them
    assert {r.partition for r in records} == {partition_for(master.encode(), PARTITIONS)}
    assert max(len(r.value) for r in records if r.value is not None) < ENTRY_BYTES

    # the worker loses its RocksDB state and rebuilds it from the changelog
    hub.restart("imaging", keep_state=False)
    after = _total_reaches(hub, master, STUDIES, timeout_s=300)
    assert after["entry"][0]["resource"]["id"] == bundle["entry"][0]["resource"]["id"]
    # a search for one study reads that study's entry
    uid = last.json()["entry"][0]["resource"]["identifier"][0]["value"]  # urn:oid:…
    one = _search(hub, master, identifier=f"urn:dicom:uid|{uid}")
    assert one.status_code == 200 and one.json()["total"] == 1
    assert one.json()["entry"][0]["resource"]["started"] == oldest


def test_a_value_of_the_old_layout_is_read_and_split_at_the_patient_s_next_study(
    security_hub: SecurityHub,
) -> None:
    """A changelog written before one entry per study holds, under the bare master id, one
    value with every study of the patient. Restored, it is still searched; the patient's
    next study splits it into entries and deletes it; a rebuild after that finds them all."""
    hub = security_hub
    card = gb11643(f"14010519700108{random.randint(100, 999)}")
    started = datetime.now(UTC) - timedelta(days=1)
    hub.post(A2, "/fhir/ImagingStudy", _study(card, 0, started))
    bundle = _total_reaches(hub, f"{CARD_SYSTEM}|{card}", 1, timeout_s=120)
    master = bundle["entry"][0]["resource"]["subject"]["identifier"]["value"]
    first = bundle["entry"][0]["resource"]["id"]
    entry = f"{master}|{first}".encode()
    records = _changelog(hub, master, lambda rs: any(r.key == entry for r in rs))
    [doc] = [json.loads(r.value) for r in records if r.key == entry]

    # the old layout: two more studies (and a stale copy of the first) in one value
    uids = [f"1.2.826.0.1.3680043.8.498.{uuid.uuid4().int % 10**30}" for _ in range(2)]
    legacy = {study_key(u): {**doc, "study_uid": u} for u in uids}
    legacy[first] = {**doc, "patient_conflict": True}
    produce(hub.bootstrap, CHANGELOG, [(master.encode(), json.dumps(legacy).encode())])
    hub.restart("imaging", keep_state=False)
    _total_reaches(hub, master, 3, timeout_s=300)
    one = _search(hub, master, identifier=f"urn:dicom:uid|urn:oid:{uids[0]}")
    assert one.status_code == 200 and one.json()["total"] == 1

    # the patient's next study splits the old value
    hub.post(A2, "/fhir/ImagingStudy", _study(card, 1, started))
    _total_reaches(hub, master, 4, timeout_s=120)
    records = _changelog(
        hub, master, lambda rs: [r.value for r in rs if r.key == master.encode()][-1] is None
    )  # the old value is deleted
    split = {r.key.decode().partition("|")[2]: r.value for r in records if r.key != master.encode()}
    assert set(legacy) <= set(split)
    assert json.loads(split[first]) == doc  # the entry was newer than the old value's copy
    assert {r.partition for r in records} == {partition_for(master.encode(), PARTITIONS)}

    hub.restart("imaging", keep_state=False)
    _total_reaches(hub, master, 4, timeout_s=300)
