"""The imaging index's study state: one study per UID whoever posts it, each source and
report its poster's own, moves between patients, reports, retractions, scope — named by
what a reader of the index would see."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.imaging_index.studies import (
    Study,
    apply_check,
    apply_record,
    dicomweb_base,
    patient_entry,
    patient_prefix,
    study_key,
    summary,
    view,
)

UID = "1.2.840.113619.2.55.3.604688119.969.1268071029.320"
HOSPITAL = "12140107405412652L"
CLOUD = "12140100405128360L"
OTHER = "12140215406213786R"  # a hospital that did not make the study
M1, M2 = "MP" + "1" * 24, "MP" + "2" * 24
#: each institution's record of the study (record ids carry the institution)
STUDY_RECORD = {HOSPITAL: "a" * 32, CLOUD: "c" * 32, OTHER: "e" * 32}
REPORT_RECORD = {HOSPITAL: "b" * 32, CLOUD: "d" * 32, OTHER: "f" * 32}
T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
REGISTRY = {HOSPITAL: "http://pacs.hospital.example/dicom-web/", CLOUD: None}


def study_payload(
    institution: str = HOSPITAL,
    *,
    master: str = M1,
    change: str = "new",
    endpoints: tuple[str, ...] = ("http://pacs.hospital.example/dicom-web",),
    modalities: tuple[str, ...] = ("CT",),
    instances: int = 4,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "change": change,
        "kind": "result",
        "record_id": STUDY_RECORD[institution],
        "master_patient_id": master,
        "institution": institution,
        "resource_type": "ImagingStudy",
        "category": "imaging",
        "codes": [
            {
                "system": "http://dicom.nema.org/resources/ontology/DCM",
                "code": "CT",
                "display": None,
            },
            {"system": "urn:oid:local", "code": "210300001", "display": "胸部CT平扫"},
        ],
        "imaging": {
            "study_uid": UID,
            "modalities": list(modalities),
            "body_sites": [{"system": None, "code": "CHEST", "display": "CHEST"}],
            "contrast": False,
            "series_count": 2,
            "instance_count": instances,
            "endpoints": list(endpoints),
        },
        "status": "available",
        "performed_at": "2026-11-20T08:30:00+08:00",
        "source": {"event_id": "e1", "resource_id": None, "received_at": None},
        **extra,
    }


def report_payload(
    institution: str = HOSPITAL,
    *,
    master: str = M1,
    change: str = "new",
    issued: str = "2026-11-20T10:00:00+08:00",
) -> dict[str, Any]:
    doc = study_payload(institution, master=master, change=change)
    doc.update(
        record_id=REPORT_RECORD[institution], resource_type="DiagnosticReport", status="final"
    )
    doc["issued_at"] = issued
    return doc


def fold(*payloads: dict[str, Any]) -> Study:
    study = None
    for n, p in enumerate(payloads):
        study = apply_record(study, p, T0 + timedelta(seconds=n)).study
    assert study is not None
    return study


def everyone(_: str) -> bool:
    return True


def base(inst: str) -> str | None:
    return REGISTRY.get(inst)


def test_a_new_study_is_listed_under_its_patient_with_the_posted_endpoint() -> None:
    applied = apply_record(None, study_payload(), T0)
    assert (applied.change, applied.put, applied.drop) == ("new", M1, None)
    shown = view(applied.study, may_see=everyone, registry_base=base)
    assert shown is not None
    assert [e.url for e in shown.endpoints] == ["http://pacs.hospital.example/dicom-web"]
    assert shown.endpoints[0].retrieve_url(UID).endswith(f"/studies/{UID}")
    assert shown.description == "胸部CT平扫"
    assert shown.modalities == ("CT",)


def test_the_same_study_from_the_hospital_and_the_cloud_is_one_study_with_both_endpoints() -> None:
    first = apply_record(None, study_payload(), T0)
    second = apply_record(
        first.study,
        study_payload(CLOUD, change="update", endpoints=("http://cloud.example/dicomweb/",)),
        T0 + timedelta(seconds=1),
    )
    assert second.merged and second.change == "update"
    assert second.new_endpoints == ("http://cloud.example/dicomweb",)
    shown = view(second.study, may_see=everyone, registry_base=base)
    assert shown is not None
    assert [e.url for e in shown.endpoints] == [
        "http://pacs.hospital.example/dicom-web",
        "http://cloud.example/dicomweb",
    ]
    assert shown.institutions == (HOSPITAL, CLOUD)


def test_a_resend_changes_nothing_a_reader_would_see() -> None:
    study = fold(study_payload())
    again = apply_record(study, study_payload(), T0 + timedelta(minutes=1))
    assert again.change is None and not again.merged


def test_a_study_that_moves_to_another_master_leaves_the_old_one() -> None:
    study = fold(study_payload())
    moved = apply_record(
        study,
        study_payload(master=M2, change="update", previous_master_patient_id=M1),
        T0 + timedelta(seconds=5),
    )
    assert (moved.change, moved.put, moved.drop) == ("update", M2, M1)
    assert moved.previous_master_patient_id == M1


def test_an_older_version_arriving_after_a_move_is_ignored() -> None:
    study = fold(study_payload(), study_payload(master=M2, change="update"))
    late = apply_record(study, study_payload(master=M1), T0 - timedelta(seconds=1))
    assert late.stale and late.study.masters == (M2,)


def test_a_retraction_withdraws_only_the_poster_s_copy() -> None:
    study = fold(study_payload(), study_payload(CLOUD, endpoints=("http://cloud.example",)))
    cloud_gone = apply_record(
        study, study_payload(CLOUD, change="retraction"), T0 + timedelta(seconds=5)
    )
    assert (cloud_gone.change, cloud_gone.put, cloud_gone.drop) == ("update", M1, None)
    shown = view(cloud_gone.study, may_see=everyone, registry_base=base)
    assert shown is not None and shown.institutions == (HOSPITAL,)
    assert [e.url for e in shown.endpoints] == ["http://pacs.hospital.example/dicom-web"]


def test_when_every_source_withdraws_the_study_is_retracted_and_a_new_post_brings_it_back() -> None:
    study = fold(study_payload())
    gone = apply_record(study, study_payload(change="retraction"), T0 + timedelta(seconds=5))
    assert (gone.change, gone.drop, gone.put) == ("retraction", M1, None)
    assert view(gone.study, may_see=everyone, registry_base=base) is None
    assert summary(gone.study.for_master(M1), base)["status"] == "entered-in-error"
    back = apply_record(gone.study, study_payload(), T0 + timedelta(seconds=6))
    assert back.change == "new"


# ── ownership: another institution's post never changes, withdraws or moves a copy ────────


def test_another_institution_s_retraction_of_the_uid_changes_nothing() -> None:
    """Issue 14, finding 3: C "retracts" A's Study Instance UID."""
    study = fold(study_payload(), report_payload())
    # its own record id (what the patient index would publish, if it ever did) …
    theirs = apply_record(study, study_payload(OTHER, change="retraction"), T0 + timedelta(1))
    # … or the hospital's record id under its own name (a replay of an older topic)
    forged = study_payload(OTHER, change="retraction")
    forged["record_id"] = STUDY_RECORD[HOSPITAL]
    replayed = apply_record(study, forged, T0 + timedelta(1))
    for attempt in (theirs, replayed):
        assert attempt.refused and attempt.events == () and attempt.drops == ()
        assert attempt.study == study
    report = apply_record(study, report_payload(OTHER, change="retraction"), T0 + timedelta(1))
    assert report.refused and report.study.report == study.report is not None


def test_another_institution_naming_another_patient_moves_nothing_and_is_a_conflict() -> None:
    """Issue 14, finding 3: C posts A's UID with another patient as the subject."""
    study = fold(study_payload(), report_payload())
    attack = apply_record(
        study,
        study_payload(OTHER, master=M2, endpoints=("http://evil.example/dicom-web",)),
        T0 + timedelta(seconds=5),
    )
    assert attack.conflict and not attack.refused
    assert attack.drops == ()  # the hospital's patient keeps the study
    mine = view(attack.study.for_master(M1), may_see=everyone, registry_base=base)
    assert mine is not None and mine.master_patient_id == M1
    assert [e.url for e in mine.endpoints] == ["http://pacs.hospital.example/dicom-web"]
    assert mine.institutions == (HOSPITAL,) and mine.report is not None
    theirs = view(attack.study.for_master(M2), may_see=everyone, registry_base=base)
    assert theirs is not None and theirs.institutions == (OTHER,) and theirs.report is None
    # the whole stored state is not shown as one study
    assert view(attack.study, may_see=everyone, registry_base=base) is None
    changes = {e.master: (e.change, e.previous_master_patient_id) for e in attack.events}
    assert changes == {M2: ("new", None), M1: ("update", None)}  # M1: now flagged
    assert all(summary(e.study, base)["patient_conflict"] for e in attack.events)
    # the same post again is no new conflict; a merge of the two patients ends it
    again = apply_record(attack.study, study_payload(OTHER, master=M2), T0 + timedelta(6))
    assert not again.conflict
    merged = apply_record(
        attack.study,
        study_payload(OTHER, master=M1, change="update", previous_master_patient_id=M2),
        T0 + timedelta(seconds=7),
    )
    assert merged.study.masters == (M1,) and merged.drops == (M2,)
    assert not merged.study.for_master(M1).patient_conflict


def test_a_copy_first_posted_for_the_same_patient_then_re_posted_for_another_is_a_conflict() -> (
    None
):
    study = fold(study_payload(), study_payload(OTHER))  # agrees at first: a second source
    repost = study_payload(OTHER, master=M2, change="update", previous_master_patient_id=M1)
    repost["source"] = {"event_id": "e2", "resource_id": None, "received_at": None}
    attack = apply_record(study, repost, T0 + timedelta(seconds=5))
    assert attack.conflict  # a new post, not the patient index moving the same one
    assert attack.study.sources[HOSPITAL].master_patient_id == M1
    mine = view(attack.study.for_master(M1), may_see=everyone, registry_base=base)
    assert mine is not None and mine.institutions == (HOSPITAL,)


def test_a_move_of_one_source_leaves_the_other_sources_where_they_are() -> None:
    study = fold(study_payload(), study_payload(CLOUD, endpoints=("http://cloud.example",)))
    moved = apply_record(
        study,
        study_payload(CLOUD, master=M2, change="update", previous_master_patient_id=M1),
        T0 + timedelta(seconds=5),
    )
    assert not moved.conflict  # the patient index moved it (a link): not a disagreement
    assert moved.study.sources[HOSPITAL].master_patient_id == M1
    assert {p.master_patient_id for p in moved.puts} == {M1, M2} and moved.drops == ()


def test_another_institution_s_report_never_replaces_or_retracts_the_hospital_s() -> None:
    study = fold(study_payload(), report_payload())
    later = apply_record(
        study, report_payload(OTHER, issued="2026-11-21T10:00:00+08:00"), T0 + timedelta(1)
    )
    assert later.study.report is not None
    assert later.study.report.institution == HOSPITAL  # the performer's own comes first
    assert set(later.study.reports) == {HOSPITAL, OTHER}
    withdrawn = apply_record(
        later.study, report_payload(OTHER, change="retraction"), T0 + timedelta(2)
    )
    assert set(withdrawn.study.reports) == {HOSPITAL}


def test_state_stored_before_sources_were_owned_is_read_with_the_study_s_master() -> None:
    legacy = {
        "study_uid": UID,
        "master_patient_id": M1,
        "sources": {HOSPITAL: {"institution": HOSPITAL, "record_id": "a" * 32, "status": "ok"}},
        "report": {"record_id": "b" * 32, "institution": HOSPITAL, "status": "final"},
        "checks": {},
        "watermarks": {},
    }
    study = Study.model_validate(legacy)
    assert study.sources[HOSPITAL].master_patient_id == M1
    assert study.reports[HOSPITAL].master_patient_id == M1
    assert study.masters == (M1,) and study.report is not None


def test_a_report_is_attached_and_a_report_alone_lists_nothing() -> None:
    alone = apply_record(None, report_payload(), T0)
    assert alone.change is None and alone.put is None
    study = apply_record(alone.study, study_payload(), T0 + timedelta(seconds=1)).study
    shown = view(study, may_see=everyone, registry_base=base)
    assert shown is not None and shown.report is not None
    assert shown.report.status == "final"
    retracted = apply_record(study, report_payload(change="retraction"), T0 + timedelta(seconds=2))
    assert retracted.change == "update" and retracted.study.report is None
    assert retracted.study.reports == {}


def test_without_a_posted_url_the_institution_s_configured_dicomweb_base_is_used() -> None:
    study = fold(study_payload(endpoints=("Endpoint/123",)))
    shown = view(study, may_see=everyone, registry_base=base)
    assert shown is not None
    [ep] = shown.endpoints
    assert (ep.url, ep.origin) == ("http://pacs.hospital.example/dicom-web", "registry")
    nothing = fold(study_payload(CLOUD, endpoints=()))
    shown = view(nothing, may_see=everyone, registry_base=base)
    assert shown is not None and shown.endpoints == ()


def test_a_reader_sees_only_the_copies_its_scope_allows() -> None:
    study = fold(study_payload(), study_payload(CLOUD, endpoints=("http://cloud.example",)))
    only_cloud = view(study, may_see=lambda i: i == CLOUD, registry_base=base)
    assert only_cloud is not None
    assert [e.url for e in only_cloud.endpoints] == ["http://cloud.example"]
    assert only_cloud.institutions == (CLOUD,)
    assert view(study, may_see=lambda _: False, registry_base=base) is None


def test_a_checked_endpoint_that_holds_the_study_comes_first() -> None:
    study = fold(study_payload(), study_payload(CLOUD, endpoints=("http://cloud.example",)))
    checked = apply_check(study, "http://pacs.hospital.example/dicom-web", "unreachable", T0)
    checked = apply_check(checked.study, "http://cloud.example", "available", T0)
    assert checked.change == "update"
    shown = view(checked.study, may_see=everyone, registry_base=base)
    assert shown is not None
    assert [(e.url, e.status) for e in shown.endpoints] == [
        ("http://cloud.example", "available"),
        ("http://pacs.hospital.example/dicom-web", "unreachable"),
    ]
    again = apply_check(checked.study, "http://cloud.example", "available", T0 + timedelta(1))
    assert again.change is None


def test_the_study_key_hides_the_uid_and_endpoint_addresses_are_normalised() -> None:
    assert len(study_key(UID)) == 32 and UID not in study_key(UID)
    assert dicomweb_base(f"http://x/dicom-web/studies/{UID}") == "http://x/dicom-web"
    assert dicomweb_base("http://x/dicom-web/studies/") == "http://x/dicom-web"
    assert dicomweb_base("urn:uuid:1234") is None


def test_records_that_are_not_imaging_studies_are_refused() -> None:
    lab = study_payload()
    lab["category"] = "lab"
    with pytest.raises(ValueError, match="not an imaging study"):
        apply_record(None, lab, T0)


def test_study_indexed_payloads_follow_the_published_schema() -> None:
    import json

    import jsonschema

    from tests.conftest import REPO

    schema = json.loads((REPO / "docs/schemas/study-indexed.v1.json").read_text("utf-8"))
    validator = jsonschema.Draft202012Validator(schema)
    study = fold(study_payload(), study_payload(CLOUD, endpoints=("http://cloud.example",)))
    with_report = apply_record(study, report_payload(), T0 + timedelta(seconds=9)).study
    gone = apply_record(with_report, study_payload(change="retraction"), T0 + timedelta(1)).study
    gone = apply_record(gone, study_payload(CLOUD, change="retraction"), T0 + timedelta(2)).study
    conflict = apply_record(study, study_payload(OTHER, master=M2), T0 + timedelta(3))
    assert conflict.events
    cases = [(study, "new"), (with_report, "update"), (gone.for_master(M1), "retraction")]
    cases += [(e.study, e.change) for e in conflict.events]
    for s, change in cases:
        validator.validate({"change": change, **summary(s, base)})


def test_a_patient_s_entries_share_one_prefix_that_no_other_master_s_keys_start_with() -> None:
    key = study_key(UID)
    assert patient_entry(M1, key) == f"{M1}|{key}".encode()
    assert patient_entry(M1, key).startswith(patient_prefix(M1))
    assert not patient_entry(M2, key).startswith(patient_prefix(M1))
    # the bare master id (a value of the layout before one entry per study) is not an entry
    assert not M1.encode().startswith(patient_prefix(M1))
