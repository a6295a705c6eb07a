"""Records are owned, and relinks carry everything (issue 14, findings 3 and 6), tried as an
attacker would against the running hub (gateway, patient index, recognition and imaging as
processes, ``security_hub``).

- Hospital C posts an ImagingStudy with hospital A's Study Instance UID as
  ``entered-in-error``, then with another patient as the subject: A's study stays listed for
  A's patient with A's PACS address; C's copy is only ever C's.
- Hospital C posts an ``entered-in-error`` DiagnosticReport naming A2's study UID: A2's
  report stays, and hospital B's recognition check stays recognisable.
- Hospital X (A here) posts 刘洋 and a blood count; hospital B then posts 劉洋 and a blood
  count; B's identity is auto-linked to X's master (or X's to B's): B's own result ends
  under the surviving master, and B's own check shows it.

Every wait is a deadline on an observable outcome (an event, a metric, an answer), never a
fixed sleep.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import httpx

from services.common.envelope import Envelope
from services.common.identifiers import OUTPATIENT_NO_SYSTEM
from services.common.topics import WRITE_REFUSED
from tests.fhir_samples import gb11643, org_ref
from tests.security.conftest import A2, CARD_SYSTEM, A, B, C, SecurityHub
from tests.unit.test_contracts import valid

RESULTS = "mrhub.results.result-indexed.v1"
STUDIES = "mrhub.imaging.study-indexed.v1"
AUDIT = "mrhub.audit.access-recorded.v1"
LINKED = "mrhub.patient.identity-linked.v1"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
PROVINCIAL = "urn:oid:1.3.6.1.4.1.32473.14.0.1"
CT_CHEST = "SX-JC-0202"
LOINC = "http://loinc.org"
CBC_LOINC = "58410-2"
PACS_A = "https://pacs.a.example-hospital.cn/dicom-web"
PACS_C = "https://pacs.c.example-attacker.cn/dicom-web"

T = TypeVar("T")

_SEQ = iter(random.sample(range(1, 999, 2), 200))  # odd: male
_DAYS = iter(random.sample(range(15_000), 50))


def _card() -> str:
    """A 身份证 only this module uses (大同 平城区, born 1977-07-07)."""
    return gb11643(f"14020219770707{next(_SEQ):03d}")


def _uid() -> str:
    return f"1.2.826.0.1.3680043.8.498.{random.randint(10**11, 10**12)}"


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


def _until(
    probe: Callable[[], T], done: Callable[[T], bool], what: str, timeout_s: float = 90
) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        got = probe()
        if done(got):
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {got!r}"
        time.sleep(0.5)


def _trace(resp: httpx.Response) -> str:
    return resp.headers["X-Trace-Id"]


def _study(card: str, uid: str, endpoint: str, *, status: str = "available") -> dict[str, Any]:
    started = datetime.now(UTC) - timedelta(hours=2)
    return {
        "resourceType": "ImagingStudy",
        "id": f"st-{uuid.uuid4().hex[:8]}",
        "contained": [
            {
                "resourceType": "Endpoint",
                "id": "wado",
                "status": "active",
                "connectionType": {
                    "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
                    "code": "dicom-wado-rs",
                },
                "payloadType": [{"text": "DICOM"}],
                "address": endpoint,
            }
        ],
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{uid}"}],
        "status": status,
        "modality": [{"system": DCM, "code": "CT"}],
        "subject": {"identifier": {"system": CARD_SYSTEM, "value": card}},
        "started": _iso(started),
        "endpoint": [{"reference": "#wado"}],
        "numberOfSeries": 1,
        "numberOfInstances": 120,
        "procedureCode": [{"coding": [{"system": PROVINCIAL, "code": CT_CHEST}]}],
        "series": [
            {
                "uid": f"{uid}.1",
                "number": 1,
                "modality": {"system": DCM, "code": "CT"},
                "bodySite": {"system": "http://snomed.info/sct", "code": "51185008"},
                "numberOfInstances": 120,
            }
        ],
    }


def _report(inst: str, card: str, uid: str, *, status: str = "final") -> dict[str, Any]:
    """A chest CT report tied to its study by the Study Instance UID."""
    issued = datetime.now(UTC) - timedelta(hours=1)
    return {
        "resourceType": "DiagnosticReport",
        "id": f"rp-{uuid.uuid4().hex[:8]}",
        "identifier": [
            {"system": "urn:oid:1.3.6.1.4.1.32473.14.1.10", "value": f"JC-{uuid.uuid4().hex[:8]}"}
        ],
        "status": status,
        "category": [
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD"}]}
        ],
        "code": {"coding": [{"system": PROVINCIAL, "code": CT_CHEST}]},
        "subject": {"identifier": {"system": CARD_SYSTEM, "value": card}},
        "effectiveDateTime": _iso(issued - timedelta(hours=1)),
        "issued": _iso(issued),
        "performer": [org_ref(inst)],
        "imagingStudy": [{"identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{uid}"}}],
        "conclusion": "未见明显异常",
    }


def _first_publication(trace_id: str) -> Callable[[Envelope], bool]:
    """The record published with ``trace_id`` as first published: a probabilistic link
    re-publishes it under the surviving master with ``previous_master_patient_id``, and with
    commits every 0.05 s that copy can already be on the topic."""
    return lambda e: e.trace_id == trace_id and not e.payload.get("previous_master_patient_id")


def _master_of(hub: SecurityHub, trace_id: str) -> str:
    [env] = hub.wait_for(RESULTS, _first_publication(trace_id))
    return str(env.payload["master_patient_id"])


def _refusal(hub: SecurityHub, trace_id: str) -> Envelope:
    """The audit event of the refused write posted with ``trace_id``."""
    [env] = hub.wait_for(
        AUDIT,
        lambda e: e.event_type == WRITE_REFUSED.event_type and e.trace_id == trace_id,
    )
    valid(WRITE_REFUSED, env)  # its payload fits docs/schemas/write-refused.v1.json
    return env


def _imaging(hub: SecurityHub, inst: str, master: str) -> dict[str, Any]:
    resp = httpx.get(
        f"{hub.url('imaging')}/fhir/ImagingStudy",
        params={"patient": master},
        headers=hub.auth(inst),
        timeout=30,
    )
    assert resp.status_code == 200, resp.text
    doc: dict[str, Any] = resp.json()
    return doc


def _listed(doc: dict[str, Any], uid: str) -> list[dict[str, Any]]:
    return [
        e["resource"]
        for e in doc.get("entry", [])
        if e["resource"]["identifier"][0]["value"] == f"urn:oid:{uid}"
    ]


def _addresses(resource: dict[str, Any]) -> list[str]:
    return [c["address"] for c in resource.get("contained", []) if "address" in c]


def _check(hub: SecurityHub, inst: str, patient: str, code: str) -> dict[str, Any]:
    # GET until the JSON POST of the check lands on main (issue 14, finding 9)
    resp = httpx.get(
        f"{hub.url('recognition')}/recognition/check",
        params={"patient": patient, "code": code},
        headers=hub.auth(inst),
        timeout=30,
    )
    assert resp.status_code == 200, resp.text
    doc: dict[str, Any] = resp.json()
    return doc


# ----------------------------------------------------------------------------- finding 3


def test_another_hospital_can_neither_retract_nor_re_subject_a_hospital_s_study(
    security_hub: SecurityHub,
) -> None:
    hub = security_hub
    card, other_card, uid = _card(), _card(), _uid()
    posted = hub.post(A, "/fhir/ImagingStudy", _study(card, uid, PACS_A))
    master = _master_of(hub, _trace(posted))
    hub.wait_for(
        STUDIES,
        lambda e: e.payload["study_uid"] == uid and e.payload["master_patient_id"] == master,
    )
    refused_before = hub.metric(
        "mrhub_patient_index_records_total", "patient_index", outcome="refused"
    )
    conflicts_before = hub.metric(
        "mrhub_imaging_records_total", "imaging", change="patient-conflict"
    )

    # 1. C withdraws A's study: refused and audited, nothing published
    attack = hub.post(C, "/fhir/ImagingStudy", _study(card, uid, PACS_C, status="entered-in-error"))
    refusal = _refusal(hub, _trace(attack))
    assert refusal.source == C and refusal.payload["owners"] == [A]
    assert refusal.payload["resource_type"] == "ImagingStudy"
    assert uid not in refusal.to_bytes().decode() and card not in refusal.to_bytes().decode()
    assert [e for e in hub.events(RESULTS) if e.trace_id == _trace(attack)] == []
    assert (
        hub.metric("mrhub_patient_index_records_total", "patient_index", outcome="refused")
        >= refused_before + 1
    )

    # 2. C posts A's UID for another patient: C's copy goes to that patient only
    moved = hub.post(C, "/fhir/ImagingStudy", _study(other_card, uid, PACS_C))
    other = _master_of(hub, _trace(moved))
    assert other != master
    hub.wait_for(
        STUDIES,
        lambda e: e.payload["study_uid"] == uid and e.payload["master_patient_id"] == other,
    )
    _until(
        lambda: hub.metric("mrhub_imaging_records_total", "imaging", change="patient-conflict"),
        lambda n: n >= conflicts_before + 1,
        "the patient conflict to be counted",
    )
    # no event ever moved A's study away from A's patient
    for e in hub.events(STUDIES):
        if e.payload["study_uid"] == uid:
            assert e.payload.get("previous_master_patient_id") != master
            if e.payload["master_patient_id"] == master:
                assert e.payload["change"] != "retraction"
                assert [p["url"] for p in e.payload["endpoints"]] == [PACS_A]
            else:
                assert PACS_A not in [p["url"] for p in e.payload["endpoints"]]

    # 3. C withdraws its own copy: only C's contribution goes
    hub.post(C, "/fhir/ImagingStudy", _study(other_card, uid, PACS_C, status="entered-in-error"))
    hub.wait_for(
        STUDIES,
        lambda e: (
            e.payload["study_uid"] == uid
            and e.payload["master_patient_id"] == other
            and e.payload["change"] == "retraction"
        ),
    )

    # what A sees of its patient: its study, with its own PACS address, and nothing of C's
    [mine] = _listed(_imaging(hub, A, master), uid)
    assert _addresses(mine) == [PACS_A]
    assert mine["subject"]["identifier"]["value"] == master
    assert _listed(_imaging(hub, C, other), uid) == []


def test_another_hospital_s_entered_in_error_report_does_not_retract_the_report(
    security_hub: SecurityHub,
) -> None:
    hub = security_hub
    card, uid = _card(), _uid()
    posted = hub.post(A2, "/fhir/DiagnosticReport", _report(A2, card, uid))
    master = _master_of(hub, _trace(posted))
    code = f"{PROVINCIAL}|{CT_CHEST}"
    before = _until(
        lambda: _check(hub, B, master, code),
        lambda d: d["decision"] == "recognisable",
        "B's check to recognise A2's chest CT report",
    )
    assert [m["institution"] for m in before["matches"]] == [A2]

    attack = hub.post(C, "/fhir/DiagnosticReport", _report(C, card, uid, status="entered-in-error"))
    refusal = _refusal(hub, _trace(attack))
    assert refusal.payload["resource_type"] == "DiagnosticReport"
    assert refusal.payload["owners"] == [A2]
    # the refusal is made after the record was judged: had anything been published for the
    # attack, it would be on the topic by now
    assert [e for e in hub.events(RESULTS) if e.trace_id == _trace(attack)] == []
    after = _check(hub, B, master, code)
    assert (after["decision"], after["reason"]) == ("recognisable", "recognised")
    assert [m["institution"] for m in after["matches"]] == [A2]


# ----------------------------------------------------------------------------- finding 6


def _person_bundle(
    inst: str, mz: str, name: str, birth: str, phone: str, taken: datetime
) -> dict[str, Any]:
    """A Patient known only by this hospital's 门诊号, and a blood count of theirs."""
    p_url = f"urn:uuid:{uuid.uuid4()}"
    cbc = {
        "resourceType": "Observation",
        "id": f"cbc-{uuid.uuid4().hex[:8]}",
        "identifier": [
            {
                "system": "urn:oid:2.16.156.10011.1.33",
                "value": f"LR-{uuid.uuid4().hex[:12]}",
                "assigner": org_ref(inst),
            }
        ],
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "laboratory",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": LOINC, "code": CBC_LOINC, "display": "血常规"}]},
        "subject": {"reference": p_url},
        "effectiveDateTime": _iso(taken),
        "issued": _iso(taken + timedelta(minutes=30)),
        "performer": [org_ref(inst)],
        "valueQuantity": {"value": 6.2, "unit": "10*9/L"},
    }
    patient = {
        "resourceType": "Patient",
        "identifier": [{"system": OUTPATIENT_NO_SYSTEM, "value": mz}],
        "name": [{"text": name}],
        "gender": "male",
        "birthDate": birth,
        "telecom": [{"system": "phone", "value": phone}],
        "address": [{"text": "山西省太原市迎泽区新建南路 8 号"}],
    }
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": p_url,
                "resource": patient,
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": cbc,
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }


def test_a_result_posted_just_before_an_auto_link_ends_under_the_surviving_master(
    security_hub: SecurityHub,
) -> None:
    hub = security_hub
    birth = (datetime(1950, 1, 1) + timedelta(days=next(_DAYS))).date().isoformat()
    phone = f"135{random.randint(10_000_000, 99_999_999)}"
    mz_x, mz_b = f"X-{uuid.uuid4().hex[:8]}", f"B-{uuid.uuid4().hex[:8]}"
    taken = datetime.now(UTC) - timedelta(hours=1)

    # hospital X (A) knows 刘洋 by its outpatient number; its blood count is indexed
    x_post = hub.post(A, "/fhir", _person_bundle(A, mz_x, "刘洋", birth, phone, taken))
    m_x = _master_of(hub, _trace(x_post))
    # later hospital B posts 劉洋 (traditional characters), same birth date and phone
    b_post = hub.post(B, "/fhir", _person_bundle(B, mz_b, "劉洋", birth, phone, taken))
    b_trace = _trace(b_post)
    [b_first] = hub.wait_for(RESULTS, _first_publication(b_trace))
    b_record, m_b = b_first.payload["record_id"], b_first.payload["master_patient_id"]

    [link] = hub.wait_for(
        LINKED,
        lambda e: (
            e.payload["kind"] == "relinked"
            and e.payload["evidence"]["rule"] == "probabilistic"
            and {e.payload["master_patient_id"], e.payload["previous_master_patient_id"]}
            == {m_x, m_b}
        ),
    )
    survivor = link.payload["master_patient_id"]

    def latest_master(record_id: str) -> str:
        # the record's events are keyed by master, so they sit on different partitions and
        # arrive in no particular order: the latest is the one published last
        found = [e for e in hub.events(RESULTS) if e.payload["record_id"] == record_id]
        found.sort(key=lambda e: e.occurred_at)
        return str(found[-1].payload["master_patient_id"]) if found else ""

    # both hospitals' blood counts end under the surviving master
    _until(lambda: latest_master(b_record), lambda m: m == survivor, "B's result to follow")
    [x_first] = hub.wait_for(RESULTS, _first_publication(_trace(x_post)))
    _until(
        lambda: latest_master(x_first.payload["record_id"]),
        lambda m: m == survivor,
        "X's result to be under the survivor",
    )
    # B's own check, by its own number, shows B's own result (and X's)
    answer = _until(
        lambda: _check(hub, B, f"{OUTPATIENT_NO_SYSTEM}|{mz_b}", f"{LOINC}|{CBC_LOINC}"),
        lambda d: {B, A} <= {m["institution"] for m in d["matches"]},
        "B's check to show both blood counts",
    )
    assert answer["decision"] == "recognisable"
