"""What the two search routes accept, which studies they select and how they show them: valid
FHIR R4 (checked with fhir.resources R4B) and DICOM JSON with a RetrieveURL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle

from services.imaging_index import render, search
from services.imaging_index.search import QueryError
from services.imaging_index.studies import Study, StudyView, apply_check, apply_record, view
from tests.unit.test_imaging_studies import CLOUD, HOSPITAL, M1, UID, base, study_payload

T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)


def make(
    uid: str = UID, *, started: str | None = "2026-11-20T08:30:00+08:00", **kw: Any
) -> StudyView:
    payload = study_payload(**kw)
    payload["imaging"]["study_uid"] = uid
    payload["performed_at"] = started
    study: Study = apply_record(None, payload, T0).study
    shown = view(study, may_see=lambda _: True, registry_base=base)
    assert shown is not None
    return shown


def q(**params: str | list[str]) -> dict[str, list[str]]:
    return {k: v if isinstance(v, list) else [v] for k, v in params.items()}


def test_fhir_parameters_are_read() -> None:
    query = search.parse_fhir(
        q(patient="urn:oid:2.16.156.10011.1.3|X", modality="DCM|CT,MR", _count="5", _offset="10"),
        max_count=100,
    )
    assert query.patient == "urn:oid:2.16.156.10011.1.3|X"
    assert query.modalities == {"CT", "MR"}
    assert (query.count, query.offset) == (5, 10)
    assert search.parse_fhir(q(patient="Patient/" + M1), max_count=100).patient == M1
    assert search.parse_fhir(q(patient=M1, _count="5000"), max_count=100).count == 100


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({}, "patient"),
        ({"patient": M1, "started": "2026-13-01"}, "started"),
        ({"patient": M1, "started": "sa2026-01-01"}, "started"),
        ({"patient": M1, "_count": "-1"}, "_count"),
        ({"patient": M1, "identifier": "urn:dicom:uid|urn:oid:1.02"}, "identifier"),
    ],
)
def test_bad_fhir_parameters_name_the_parameter(params: dict[str, str], param: str) -> None:
    with pytest.raises(QueryError) as info:
        search.parse_fhir(q(**params), max_count=100)
    assert info.value.param == param


def test_started_ranges_select_by_china_time_days() -> None:
    early = make("1.2.3.1", started="2026-01-01T00:30:00+08:00")  # 2025-12-31 in UTC
    late = make("1.2.3.2", started="2026-03-05T10:00:00+08:00")
    unknown = make("1.2.3.3", started=None)
    studies = [early, late, unknown]

    def uids(**params: str | list[str]) -> list[str]:
        query = search.parse_fhir(q(patient=M1, **params), max_count=100)
        return [s.study_uid for s in search.select(studies, query)]

    assert uids() == ["1.2.3.2", "1.2.3.1", "1.2.3.3"]  # newest first, undated last
    assert uids(started="ge2026-01-01") == ["1.2.3.2", "1.2.3.1"]
    assert uids(started="2026-01-01") == ["1.2.3.1"]
    assert uids(started="lt2026-01-01") == []
    assert uids(started=["ge2026-02", "le2026-03-05"]) == ["1.2.3.2"]
    assert uids(started="gt2026-01-01") == ["1.2.3.2"]


def test_qido_parameters_by_keyword_or_tag_and_dicom_date_ranges() -> None:
    query = search.parse_qido(
        q(PatientID="X", IssuerOfPatientID="urn:oid:2.16.156.10011.1.3", **{"00080061": "CT\\MR"}),
        max_count=100,
    )
    assert query.patient == "urn:oid:2.16.156.10011.1.3|X"
    assert query.modalities == {"CT", "MR"}
    studies = [make("1.2.3.1", started="2026-01-01T08:00:00+08:00"), make("1.2.3.2")]
    for value, expected in [
        ("20260101", ["1.2.3.1"]),
        ("20260102-", ["1.2.3.2"]),
        ("-20260101", ["1.2.3.1"]),
        ("20251231-20261231", ["1.2.3.2", "1.2.3.1"]),
    ]:
        query = search.parse_qido(q(PatientID="X", StudyDate=value), max_count=100)
        assert [s.study_uid for s in search.select(studies, query)] == expected, value
    with pytest.raises(QueryError):
        search.parse_qido(q(PatientID="X", StudyDate="2026-01-01"), max_count=100)
    with pytest.raises(QueryError):
        search.parse_qido(q(StudyDate="20260101"), max_count=100)


def test_the_modality_filter_matches_any_modality_of_the_study() -> None:
    ct_mr = make("1.2.3.1", modalities=("CT", "MR"))
    us = make("1.2.3.2", modalities=("US",))
    query = search.parse_qido(q(PatientID="X", ModalitiesInStudy="MR"), max_count=10)
    assert [s.study_uid for s in search.select([ct_mr, us], query)] == ["1.2.3.1"]


def test_the_searchset_is_valid_r4_with_contained_endpoints_and_the_report() -> None:
    payload = study_payload()
    study = apply_record(None, payload, T0).study
    study = apply_record(
        study,
        study_payload(CLOUD, change="update", endpoints=("http://cloud.example/dicom-web",)),
        T0 + timedelta(seconds=1),
    ).study
    report = dict(payload, record_id="b" * 32, resource_type="DiagnosticReport", status="final")
    study = apply_record(study, report, T0 + timedelta(seconds=2)).study
    study = apply_check(study, "http://cloud.example/dicom-web", "available", T0).study
    shown = view(study, may_see=lambda _: True, registry_base=base)
    assert shown is not None
    doc = render.searchset(
        [shown],
        total=1,
        base_url="http://hub:8082",
        links={"self": "http://hub:8082/fhir/ImagingStudy?patient=" + M1},
        timestamp=T0,
    )
    Bundle.model_validate(doc)  # raises if not valid R4
    resource = doc["entry"][0]["resource"]
    assert resource["identifier"][0]["value"] == f"urn:oid:{UID}"
    assert [c["address"] for c in resource["contained"]] == [
        "http://cloud.example/dicom-web",
        "http://pacs.hospital.example/dicom-web",
    ]
    assert resource["endpoint"] == [{"reference": "#ep0"}, {"reference": "#ep1"}]
    assert resource["subject"]["identifier"]["value"] == M1
    assert any(e["url"] == render.REPORT_EXTENSION for e in resource["extension"])


def test_qido_gives_one_study_with_the_best_endpoint_s_wado_rs_url() -> None:
    shown = make()
    doc = render.qido_study(shown)
    assert doc["0020000D"]["Value"] == [UID]
    assert doc["00081190"]["Value"] == [f"http://pacs.hospital.example/dicom-web/studies/{UID}"]
    assert doc["00080020"]["Value"] == ["20261120"]
    assert doc["00080061"]["Value"] == ["CT"]
    assert doc["00201208"]["Value"] == [4]
    assert doc["00100020"]["Value"] == [M1]
    assert "Value" not in doc["00100010"]  # no name is known here
    assert doc["00080056"]["Value"] == ["ONLINE"]


def test_a_study_with_no_endpoint_is_listed_as_unavailable() -> None:
    shown = make(institution=CLOUD, endpoints=())
    doc = render.qido_study(shown)
    assert "Value" not in doc["00081190"]
    assert doc["00080056"]["Value"] == ["UNAVAILABLE"]
    assert HOSPITAL not in shown.institutions


def _stored(uid: str, *posts: dict[str, Any]) -> dict[str, Any]:
    """A study as the ``patients`` table holds it: M1's projection, as JSON."""
    study: Study | None = None
    for n, kw in enumerate(posts):
        payload = study_payload(**{k: v for k, v in kw.items() if k != "started"})
        payload["imaging"]["study_uid"] = uid
        payload["performed_at"] = kw.get("started", "2026-11-20T08:30:00+08:00")
        study = apply_record(study, payload, T0 + timedelta(minutes=n)).study
    assert study is not None
    doc: dict[str, Any] = study.for_master(M1).model_dump(mode="json")
    return doc


def test_the_first_pass_on_stored_studies_never_drops_a_study_the_view_matches() -> None:
    stored = [
        _stored("1.2.3.1", {"modalities": ("CT",), "started": "2026-01-01T08:00:00+08:00"}),
        _stored(
            "1.2.3.2",
            {"modalities": ("MR",), "started": "2026-03-05T10:00:00+08:00"},
            {"institution": CLOUD, "modalities": ("US",), "started": None},
        ),
        _stored("1.2.3.3", {"modalities": ("US",), "started": None}),
    ]
    readers = {
        "everyone": lambda _: True,
        "the hospital only": lambda inst: inst == HOSPITAL,
        "the cloud only": lambda inst: inst == CLOUD,
    }
    queries = [
        q(patient=M1),
        q(patient=M1, modality="MR"),
        q(patient=M1, modality="US,XA"),
        q(patient=M1, modality="XA"),
        q(patient=M1, started="ge2026-02-01"),
        q(patient=M1, started="2026-01-01"),
        q(patient=M1, started=["ge2026-02", "lt2026-03-06"], modality="MR"),
        q(patient=M1, identifier="urn:dicom:uid|urn:oid:1.2.3.2"),
        q(patient=M1, identifier="urn:dicom:uid|urn:oid:1.2.3.9"),
    ]
    for name, may_see in readers.items():
        for params in queries:
            query = search.parse_fhir(params, max_count=100)
            for doc in stored:
                shown = view(Study.model_validate(doc), may_see=may_see, registry_base=base)
                if shown is not None and search.matches(shown, query):
                    assert search.may_match(doc, query), (name, params, doc["study_uid"])
    # and it does drop what no source could match
    by_uid = {d["study_uid"]: d for d in stored}
    xa = search.parse_fhir(q(patient=M1, modality="XA"), max_count=100)
    assert not any(search.may_match(d, xa) for d in stored)
    late = search.parse_fhir(q(patient=M1, started="ge2026-02-01"), max_count=100)
    assert [u for u, d in by_uid.items() if search.may_match(d, late)] == ["1.2.3.2"]
    one = search.parse_fhir(q(patient=M1, identifier="urn:dicom:uid|urn:oid:1.2.3.3"), max_count=9)
    assert [u for u, d in by_uid.items() if search.may_match(d, one)] == ["1.2.3.3"]


def test_the_institutions_of_a_stored_study_are_its_sources_posters() -> None:
    doc = _stored("1.2.3.2", {}, {"institution": CLOUD})
    assert search.institutions_of(doc) == [HOSPITAL, CLOUD]
    assert search.institutions_of({"study_uid": "1.2.3"}) == []
    # a shape it does not know is left to the view
    assert search.may_match(
        {"sources": []}, search.parse_fhir(q(patient=M1, modality="CT"), max_count=9)
    )
