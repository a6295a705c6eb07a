"""Canonical records built from accepted FHIR R4 resources, and their event payloads."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
import simplejson
from fhir.resources.R4B import get_fhir_model_class
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from services.common import codec
from services.common.envelope import Envelope
from services.common.fhir import DICOM_UID_SYSTEM, INSTITUTION_SYSTEM
from services.common.identifiers import (
    ID_CARD_SYSTEM,
    LAB_REPORT_NO_SYSTEM,
    ORDER_NO_SYSTEM,
    OUTPATIENT_NO_SYSTEM,
)
from services.patient_index.canonical import (
    CONTRAST_EXTENSION,
    DIAGNOSTIC_SERVICE_SYSTEM,
    DICOM_DCM_SYSTEM,
    LOINC_SYSTEM,
    OBSERVATION_CATEGORY_SYSTEM,
    SNOMED_SYSTEM,
    STATUS_RETRACTED,
    CanonicalRecord,
    Code,
    build_record,
    parse_fhir_datetime,
    record_id_for,
    to_event_payload,
)
from tests.conftest import REPO
from tests.fhir_samples import ID_CARD

INST_A = "12140000405001730E"  # 山西省人民医院 in config/institutions.yaml
INST_B = "12140100405128360L"
CST = timezone(timedelta(hours=8))
PRICE_SYSTEM = "urn:oid:2.16.156.10011.2.3.3.11"  # a price-schedule code system (illustrative)
UCUM = "http://unitsofmeasure.org"
CT_STUDY_UID = "1.2.840.113619.2.55.3.604688119.969.1700000000.123"
MR_STUDY_UID = "1.2.840.113619.2.80.2.4180000000.1122.1700000555.1"

SCHEMAS = {
    name: json.loads((REPO / "docs" / "schemas" / f"{name}.v1.json").read_text(encoding="utf-8"))
    for name in ("result-indexed", "order-placed")
}


# --- fixtures: R4 resources as a hospital posts them ---------------------------------------


def org_ref(inst: str) -> dict[str, Any]:
    return {"identifier": {"system": INSTITUTION_SYSTEM, "value": inst}}


def subject() -> dict[str, Any]:
    return {"identifier": {"system": OUTPATIENT_NO_SYSTEM, "value": "MZ0001"}}


def lab_observation(
    *,
    inst: str = INST_A,
    report_no: str = "JY20261120-0017",
    loinc: tuple[str, str] = ("2823-3", "钾"),
    local: tuple[str, str] = ("K", "钾"),
    value: Decimal = Decimal("4.2"),
    status: str = "final",
    issued: str = "2026-11-20T10:02:00+08:00",
) -> dict[str, Any]:
    """A serum potassium result, one line of 检验报告单 ``report_no``."""
    return {
        "resourceType": "Observation",
        "id": f"obs-{local[0].lower()}-1",
        "identifier": [
            {"system": LAB_REPORT_NO_SYSTEM, "value": report_no, "assigner": org_ref(inst)}
        ],
        "status": status,
        "category": [
            {
                "coding": [
                    {
                        "system": OBSERVATION_CATEGORY_SYSTEM,
                        "code": "laboratory",
                        "display": "Laboratory",
                    }
                ]
            }
        ],
        "code": {
            "coding": [
                {"system": LOINC_SYSTEM, "code": loinc[0], "display": loinc[1]},
                {
                    "system": "urn:oid:1.3.6.1.4.1.32473.14.1.5",
                    "code": local[0],
                    "display": local[1],
                },
            ],
            "text": local[1],
        },
        "subject": subject(),
        "effectiveDateTime": "2026-11-20T08:30:00+08:00",
        "issued": issued,
        "performer": [org_ref(inst)],
        "valueQuantity": {"value": value, "unit": "mmol/L", "system": UCUM, "code": "mmol/L"},
        "interpretation": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                        "code": "N",
                        "display": "Normal",
                    }
                ]
            }
        ],
        "referenceRange": [
            {
                "low": {"value": Decimal("3.5"), "unit": "mmol/L"},
                "high": {"value": Decimal("5.30"), "unit": "mmol/L"},
            }
        ],
    }


def cbc_report(*, inst: str = INST_A, with_specimen: bool = False) -> dict[str, Any]:
    """A complete blood count report pointing to its result Observations in the bundle."""
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "id": "dr-cbc-1",
        "identifier": [
            {"system": LAB_REPORT_NO_SYSTEM, "value": "JY20261120-0042", "assigner": org_ref(inst)}
        ],
        "status": "final",
        "category": [
            {
                "coding": [
                    {"system": DIAGNOSTIC_SERVICE_SYSTEM, "code": "HM", "display": "Hematology"}
                ]
            }
        ],
        "code": {
            "coding": [
                {
                    "system": LOINC_SYSTEM,
                    "code": "58410-2",
                    "display": "CBC panel - Blood by Automated count",
                }
            ],
            "text": "血常规",
        },
        "subject": subject(),
        "effectiveDateTime": "2026-11-20T07:45:00+08:00",
        "issued": "2026-11-20T09:10:00+08:00",
        "performer": [org_ref(inst)],
        "result": [
            {"reference": "urn:uuid:8c1e5b0e-0c8a-4a3b-9d3e-1f0a4b6c7d01", "display": "WBC"},
            {"reference": "urn:uuid:8c1e5b0e-0c8a-4a3b-9d3e-1f0a4b6c7d02", "display": "HGB"},
            {"reference": "urn:uuid:8c1e5b0e-0c8a-4a3b-9d3e-1f0a4b6c7d03", "display": "PLT"},
        ],
    }
    if with_specimen:
        report["contained"] = [
            {
                "resourceType": "Specimen",
                "id": "sp1",
                "type": {"text": "EDTA抗凝全血"},
                "collection": {"collectedDateTime": "2026-11-20T07:40:00+08:00"},
            }
        ]
        report["specimen"] = [{"reference": "#sp1"}]
    return report


def _series(uid: str, n: int, modality: str, site: tuple[str, str], count: int) -> dict[str, Any]:
    return {
        "uid": uid,
        "number": n,
        "modality": {"system": DICOM_DCM_SYSTEM, "code": modality},
        "numberOfInstances": count,
        "bodySite": {"system": SNOMED_SYSTEM, "code": site[0], "display": site[1]},
    }


def ct_chest_study(*, inst: str = INST_A, endpoint: str = "Endpoint/pacs-a") -> dict[str, Any]:
    """A plain CT of the chest, two CT series."""
    chest = ("51185008", "Thoracic structure")
    return {
        "resourceType": "ImagingStudy",
        "id": "is-ct-1",
        "extension": [{"url": CONTRAST_EXTENSION, "valueBoolean": False}],
        "identifier": [
            {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{CT_STUDY_UID}"},
            {
                "type": {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}
                    ]
                },
                "system": "urn:oid:1.3.6.1.4.1.32473.14.1.8",
                "value": "CT2026112001",
            },
        ],
        "status": "available",
        "modality": [{"system": DICOM_DCM_SYSTEM, "code": "CT"}],
        "subject": subject(),
        "started": "2026-11-20T09:15:00+08:00",
        "endpoint": [{"reference": endpoint}],
        "numberOfSeries": 2,
        "numberOfInstances": 245,
        "procedureCode": [
            {"coding": [{"system": PRICE_SYSTEM, "code": "210300001", "display": "胸部CT平扫"}]}
        ],
        "series": [
            _series(f"{CT_STUDY_UID}.1", 1, "CT", chest, 120),
            _series(f"{CT_STUDY_UID}.2", 2, "CT", chest, 125),
        ],
    }


def mr_head_study() -> dict[str, Any]:
    """A contrast MR of the head; images behind a DICOMweb endpoint contained in the study."""
    head = ("69536005", "Head structure")
    return {
        "resourceType": "ImagingStudy",
        "id": "is-mr-1",
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
                "address": "https://pacs.a.example.cn/dicom-web",
            }
        ],
        "extension": [{"url": CONTRAST_EXTENSION, "valueBoolean": True}],
        "identifier": [{"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{MR_STUDY_UID}"}],
        "status": "available",
        "subject": subject(),
        "started": "2026-11-19",
        "endpoint": [{"reference": "#wado"}],
        "series": [
            {**_series(f"{MR_STUDY_UID}.1", 1, "MR", head, 30), "instance": []},
            {
                "uid": f"{MR_STUDY_UID}.2",
                "modality": {"system": DICOM_DCM_SYSTEM, "code": "MR"},
                "bodySite": {"system": SNOMED_SYSTEM, "code": head[0], "display": head[1]},
                "instance": [
                    {
                        "uid": f"{MR_STUDY_UID}.2.{i}",
                        "sopClass": {"code": "1.2.840.10008.5.1.4.1.1.4"},
                    }
                    for i in range(1, 4)
                ],
            },
        ],
    }


def ecg_report() -> dict[str, Any]:
    return {
        "resourceType": "DiagnosticReport",
        "id": "dr-ecg-1",
        "identifier": [{"system": "urn:oid:1.3.6.1.4.1.32473.14.1.9", "value": "XD20261120-3"}],
        "status": "final",
        "category": [{"coding": [{"system": DIAGNOSTIC_SERVICE_SYSTEM, "code": "EC"}]}],
        "code": {"coding": [{"system": LOINC_SYSTEM, "code": "11524-6", "display": "EKG study"}]},
        "subject": subject(),
        "effectiveDateTime": "2026-11-20T11:00:00+08:00",
        "issued": "2026-11-20T11:20:00+08:00",
    }


def ct_order(*, order_no: str = "SQ2026112100031") -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "id": "sr-ct-1",
        "identifier": [{"system": ORDER_NO_SYSTEM, "value": order_no, "assigner": org_ref(INST_B)}],
        "status": "active",
        "intent": "order",
        "category": [
            {"coding": [{"system": SNOMED_SYSTEM, "code": "363679005", "display": "Imaging"}]}
        ],
        "code": {
            "coding": [
                {"system": PRICE_SYSTEM, "code": "210300001", "display": "胸部CT平扫"},
                {"system": DICOM_DCM_SYSTEM, "code": "CT"},
            ]
        },
        "bodySite": [{"coding": [{"system": SNOMED_SYSTEM, "code": "51185008"}]}],
        "subject": subject(),
        "authoredOn": "2026-11-21T09:00:00+08:00",
        "occurrenceDateTime": "2026-11-21",
        "requester": org_ref(INST_B),
    }


def lab_order() -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "identifier": [{"system": ORDER_NO_SYSTEM, "value": "SQ2026112100032"}],
        "status": "active",
        "intent": "order",
        "category": [{"coding": [{"system": SNOMED_SYSTEM, "code": "108252007"}]}],
        "code": {"coding": [{"system": LOINC_SYSTEM, "code": "2823-3"}]},
        "subject": subject(),
        "authoredOn": "2026-11-21T09:05:00+08:00",
    }


def accepted(resource: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A ``mrhub.ingest.resource-accepted.v1`` payload."""
    return {
        "resource_type": resource["resourceType"],
        "resource": resource,
        "bundle_id": extra.get("bundle_id"),
        "entry_index": extra.get("entry_index"),
        "full_url": extra.get("full_url"),
        "import_line": None,
    }


def build(
    resource: dict[str, Any],
    *,
    inst: str = INST_A,
    master: str = "mp-0001",
    event_id: str = "e" * 32,
    received_at: datetime | None = datetime(2026, 11, 20, 2, 5, tzinfo=UTC),
    trace_id: str = "t" * 32,
    **kwargs: Any,
) -> CanonicalRecord:
    record = build_record(
        accepted(resource),
        source_institution=inst,
        master_patient_id=master,
        event_id=event_id,
        received_at=received_at,
        trace_id=trace_id,
        **kwargs,
    )
    assert record is not None
    return record


ALL_FIXTURES: dict[str, Callable[[], dict[str, Any]]] = {
    "lab": lab_observation,
    "cbc": cbc_report,
    "cbc-specimen": lambda: cbc_report(with_specimen=True),
    "ct": ct_chest_study,
    "mr": mr_head_study,
    "ecg": ecg_report,
    "ct-order": ct_order,
    "lab-order": lab_order,
}


@pytest.mark.parametrize("name", sorted(ALL_FIXTURES))
def test_the_fixtures_are_valid_fhir_r4(name: str) -> None:
    resource = ALL_FIXTURES[name]()
    get_fhir_model_class(resource["resourceType"]).model_validate(copy.deepcopy(resource))


# --- lab results --------------------------------------------------------------------------


def test_a_lab_observation_becomes_a_lab_result() -> None:
    r = build(lab_observation())
    assert (r.kind, r.resource_type, r.category, r.status) == (
        "result",
        "Observation",
        "lab",
        "final",
    )
    assert r.codes == (
        Code(system=LOINC_SYSTEM, code="2823-3", display="钾"),
        Code(system="urn:oid:1.3.6.1.4.1.32473.14.1.5", code="K", display="钾"),
    )
    assert r.business_key == (
        f"{INST_A}|Observation|{LAB_REPORT_NO_SYSTEM}|JY20261120-0017|{LOINC_SYSTEM}|2823-3"
    )
    assert r.record_id == record_id_for(r.business_key)
    assert len(r.record_id) == 32 and int(r.record_id, 16) >= 0
    assert "JY20261120" not in r.record_id
    assert r.performed_at == datetime(2026, 11, 20, 8, 30, tzinfo=CST)
    assert r.collected_at == r.performed_at  # a lab's effective time is the collection
    assert r.issued_at == datetime(2026, 11, 20, 10, 2, tzinfo=CST)
    assert r.authored_at is None and r.intent is None and r.imaging is None
    assert r.value is not None
    assert (r.value.value, r.value.unit, r.value.system, r.value.code) == (
        "4.2",
        "mmol/L",
        UCUM,
        "mmol/L",
    )
    assert [c.code for c in r.value.interpretation] == ["N"]
    assert r.value.reference_range == "3.5-5.30 mmol/L"
    assert r.source.event_id == "e" * 32 and r.source.resource_id == "obs-k-1"
    assert r.source.received_at == datetime(2026, 11, 20, 2, 5, tzinfo=UTC)
    assert r.trace_id == "t" * 32 and r.master_patient_id == "mp-0001" and r.institution == INST_A


@pytest.mark.parametrize("text", ["6.30", "4.20", "0.0010", "120", "1.5E+3", "-0.50"])
def test_the_value_keeps_the_digits_as_posted(text: str) -> None:
    body = json.dumps(lab_observation(value=Decimal("0")), default=str).replace(
        '"value": "0"', f'"value": {text}', 1
    )
    resource = simplejson.loads(body, use_decimal=True)
    r = build(resource)
    assert r.value is not None and r.value.value == text
    payload = to_event_payload(r, change="new")
    assert payload["value"]["value"] == text
    env = Envelope(event_type="mrhub.results.result-indexed", source=INST_A, payload=payload)
    assert f'"value":"{text}"' in env.to_bytes().decode()


def test_reference_range_text_wins_and_open_ranges_are_spelled_out() -> None:
    res = lab_observation()
    res["referenceRange"] = [{"text": "3.5～5.3"}]
    assert build(res).value.reference_range == "3.5～5.3"  # type: ignore[union-attr]
    res["referenceRange"] = [{"high": {"value": Decimal("5.3")}}]
    assert build(res).value.reference_range == "<=5.3"  # type: ignore[union-attr]


def test_a_qualitative_result_keeps_its_coded_value() -> None:
    res = lab_observation()
    del res["valueQuantity"], res["referenceRange"], res["interpretation"]
    res["valueCodeableConcept"] = {
        "coding": [{"system": SNOMED_SYSTEM, "code": "260385009", "display": "Negative"}],
        "text": "阴性",
    }
    value = build(res).value
    assert value is not None and value.value is None
    assert value.text == "阴性" and [c.code for c in value.coded] == ["260385009"]


def test_an_observation_without_a_value_has_none() -> None:
    res = lab_observation()
    for k in ("valueQuantity", "referenceRange", "interpretation"):
        del res[k]
    assert build(res).value is None


def test_two_results_of_one_report_have_different_keys() -> None:
    k = build(lab_observation())
    na = build(lab_observation(loinc=("2951-2", "钠"), local=("NA", "钠")))
    assert k.business_key != na.business_key and k.record_id != na.record_id


def test_a_resend_has_the_same_key_and_another_institution_another() -> None:
    first = build(lab_observation(), event_id="1" * 32)
    again = build(lab_observation(value=Decimal("4.5")), event_id="2" * 32, trace_id="x")
    other = build(lab_observation(inst=INST_B), inst=INST_B)
    assert (first.business_key, first.record_id) == (again.business_key, again.record_id)
    assert other.business_key.startswith(f"{INST_B}|") and other.record_id != first.record_id


def test_a_cbc_report_is_keyed_by_its_report_number_and_has_no_value() -> None:
    r = build(cbc_report())
    assert (r.kind, r.resource_type, r.category) == ("result", "DiagnosticReport", "lab")
    assert r.business_key == f"{INST_A}|DiagnosticReport|{LAB_REPORT_NO_SYSTEM}|JY20261120-0042"
    assert [c.code for c in r.codes] == ["58410-2"]
    assert r.value is None and r.imaging is None
    assert r.collected_at == datetime(2026, 11, 20, 7, 45, tzinfo=CST)


def test_a_contained_specimen_gives_the_collection_time() -> None:
    r = build(cbc_report(with_specimen=True))
    assert r.collected_at == datetime(2026, 11, 20, 7, 40, tzinfo=CST)
    assert r.performed_at == datetime(2026, 11, 20, 7, 45, tzinfo=CST)


def test_a_non_lab_result_has_no_collection_time_without_a_specimen() -> None:
    r = build(ecg_report())
    assert r.performed_at is not None and r.collected_at is None


def test_the_mapper_fills_the_catalogue_item() -> None:
    seen: list[list[Code]] = []

    def mapper(codes: list[Code]) -> str | None:
        seen.append(codes)
        return "SX-JY-0101" if any(c.code == "2823-3" for c in codes) else None

    assert build(lab_observation(), mapper=mapper).catalogue_item == "SX-JY-0101"
    assert build(cbc_report(), mapper=mapper).catalogue_item is None
    assert build(lab_observation()).catalogue_item is None  # default: no catalogue yet
    assert [c.code for c in seen[0]] == ["2823-3", "K"]


# --- imaging ------------------------------------------------------------------------------


def test_a_ct_study_is_summarised_for_matching() -> None:
    r = build(ct_chest_study())
    assert (r.kind, r.resource_type, r.category, r.status) == (
        "result",
        "ImagingStudy",
        "imaging",
        "available",
    )
    assert r.business_key == f"{INST_A}|study|{CT_STUDY_UID}"
    assert r.imaging is not None
    assert r.imaging.study_uid == CT_STUDY_UID
    assert r.imaging.modalities == ("CT",)
    assert r.imaging.body_sites == (
        Code(system=SNOMED_SYSTEM, code="51185008", display="Thoracic structure"),
    )
    assert r.imaging.contrast is False
    assert (r.imaging.series_count, r.imaging.instance_count) == (2, 245)
    assert r.imaging.endpoints == ("Endpoint/pacs-a",)
    # procedure code, then the modality once although three elements carry it
    assert [(c.system, c.code) for c in r.codes] == [
        (PRICE_SYSTEM, "210300001"),
        (DICOM_DCM_SYSTEM, "CT"),
    ]
    assert r.performed_at == datetime(2026, 11, 20, 9, 15, tzinfo=CST)
    assert r.issued_at is None and r.value is None


def test_the_same_study_posted_by_two_institutions_is_two_records_each_owned_by_its_poster() -> (
    None
):
    a = build(ct_chest_study(), inst=INST_A)
    b = build(ct_chest_study(inst=INST_B, endpoint="Endpoint/cloud-b"), inst=INST_B)
    assert a.business_key == f"{INST_A}|study|{CT_STUDY_UID}"
    assert b.business_key == f"{INST_B}|study|{CT_STUDY_UID}"
    assert a.record_id != b.record_id  # B's post can never update or retract A's copy
    assert CT_STUDY_UID not in a.record_id and INST_A not in a.record_id
    assert a.imaging is not None and b.imaging is not None
    assert a.imaging.study_uid == b.imaging.study_uid == CT_STUDY_UID  # joined by the UID
    assert (a.institution, b.institution) == (INST_A, INST_B)
    assert b.imaging is not None and b.imaging.endpoints == ("Endpoint/cloud-b",)


def test_an_mr_head_study_with_contrast_and_counted_series() -> None:
    r = build(mr_head_study())
    assert r.imaging is not None
    assert r.imaging.modalities == ("MR",)
    assert [c.code for c in r.imaging.body_sites] == ["69536005"]
    assert r.imaging.contrast is True
    # no numberOfSeries / numberOfInstances: counted from the series as posted
    assert (r.imaging.series_count, r.imaging.instance_count) == (2, 33)
    assert r.imaging.endpoints == ("https://pacs.a.example.cn/dicom-web",)
    assert r.performed_at == datetime(2026, 11, 19, tzinfo=CST)  # a date: its start, UTC+8
    assert r.business_key != build(ct_chest_study()).business_key


def test_contrast_is_unknown_unless_stated() -> None:
    res = ct_chest_study()
    del res["extension"]
    assert build(res).imaging.contrast is None  # type: ignore[union-attr]


def test_modalities_are_sorted_and_unique() -> None:
    res = ct_chest_study()
    res["series"].append(
        {"uid": f"{CT_STUDY_UID}.3", "modality": {"system": DICOM_DCM_SYSTEM, "code": "SR"}}
    )
    res["modality"].append({"system": DICOM_DCM_SYSTEM, "code": "PT"})
    assert build(res).imaging.modalities == ("CT", "PT", "SR")  # type: ignore[union-attr]


def _imaging_report(**tie: Any) -> dict[str, Any]:
    return {
        "resourceType": "DiagnosticReport",
        "identifier": [{"system": "urn:oid:1.3.6.1.4.1.32473.14.1.10", "value": "JC2026-88"}],
        "status": "final",
        "category": [{"coding": [{"system": DIAGNOSTIC_SERVICE_SYSTEM, "code": "RAD"}]}],
        "code": {"coding": [{"system": PRICE_SYSTEM, "code": "210300001"}]},
        "subject": subject(),
        "issued": "2026-11-20T12:00:00+08:00",
        **tie,
    }


def test_a_report_tied_to_a_study_by_reference_identifier_is_keyed_by_its_poster_and_study() -> (
    None
):
    ref = {"identifier": {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{CT_STUDY_UID}"}}
    a = build(_imaging_report(imagingStudy=[ref]), inst=INST_A)
    b = build(_imaging_report(imagingStudy=[ref]), inst=INST_B)
    assert a.business_key == f"{INST_A}|study|{CT_STUDY_UID}|DiagnosticReport"
    assert b.business_key == f"{INST_B}|study|{CT_STUDY_UID}|DiagnosticReport"
    assert a.record_id != b.record_id  # B's report never replaces or retracts A's
    assert a.business_key != build(ct_chest_study()).business_key  # not the study itself
    assert a.category == "imaging" and a.imaging is not None
    assert a.imaging.study_uid == CT_STUDY_UID


def test_a_report_tied_by_its_own_identifier_or_a_contained_study() -> None:
    own = _imaging_report()
    own["identifier"].append({"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{CT_STUDY_UID}"})
    assert build(own).business_key == f"{INST_A}|study|{CT_STUDY_UID}|DiagnosticReport"

    study = mr_head_study()
    study["id"] = "st"
    del study["contained"], study["endpoint"]
    contained = _imaging_report(contained=[study], imagingStudy=[{"reference": "#st"}])
    r = build(contained)
    assert r.business_key == f"{INST_A}|study|{MR_STUDY_UID}|DiagnosticReport"
    assert r.imaging is not None and r.imaging.modalities == ("MR",)


def test_a_report_with_only_a_literal_study_reference_keeps_its_own_key() -> None:
    r = build(_imaging_report(imagingStudy=[{"reference": "ImagingStudy/is-ct-1"}]))
    assert r.business_key == (
        f"{INST_A}|DiagnosticReport|urn:oid:1.3.6.1.4.1.32473.14.1.10|JC2026-88"
    )
    assert r.category == "imaging" and r.imaging is None


# --- ECG, categories ----------------------------------------------------------------------


def test_an_ecg_report_and_an_ecg_waveform_study_are_ecg() -> None:
    assert build(ecg_report()).category == "ecg"
    res = ct_chest_study()
    res["modality"] = [{"system": DICOM_DCM_SYSTEM, "code": "ECG"}]
    for s in res["series"]:
        s["modality"] = {"system": DICOM_DCM_SYSTEM, "code": "ECG"}
    assert build(res).category == "ecg"
    res["series"][0]["modality"] = {"system": DICOM_DCM_SYSTEM, "code": "CT"}
    assert build(res).category == "imaging"


def _with_category(*codings: dict[str, str], **extra: Any) -> dict[str, Any]:
    res = lab_observation()
    res["category"] = [{"coding": list(codings)}] if codings else []
    res["code"] = {"coding": [{"system": "urn:oid:1.3.6.1.4.1.32473.14.1.5", "code": "X1"}]}
    res.update(extra)
    return res


@pytest.mark.parametrize(
    ("codings", "expected"),
    [
        ([{"system": OBSERVATION_CATEGORY_SYSTEM, "code": "laboratory"}], "lab"),
        ([{"system": OBSERVATION_CATEGORY_SYSTEM, "code": "imaging"}], "imaging"),
        ([{"system": OBSERVATION_CATEGORY_SYSTEM, "code": "vital-signs"}], "other"),
        ([{"system": DIAGNOSTIC_SERVICE_SYSTEM, "code": "LAB"}], "lab"),
        ([{"system": DIAGNOSTIC_SERVICE_SYSTEM, "code": "CH"}], "lab"),
        ([{"system": DIAGNOSTIC_SERVICE_SYSTEM, "code": "MB"}], "lab"),
        ([{"system": DIAGNOSTIC_SERVICE_SYSTEM, "code": "RAD"}], "imaging"),
        ([{"system": DIAGNOSTIC_SERVICE_SYSTEM, "code": "RUS"}], "imaging"),
        ([{"system": DIAGNOSTIC_SERVICE_SYSTEM, "code": "EC"}], "ecg"),
        ([{"system": DIAGNOSTIC_SERVICE_SYSTEM, "code": "SP"}], "pathology"),
        ([{"system": DIAGNOSTIC_SERVICE_SYSTEM, "code": "EN"}], "other"),
        ([{"code": "LAB"}], "lab"),  # no system: looked up in every table
        ([{"system": "urn:oid:9.9", "code": "LAB"}], "other"),  # another system: not ours
        (
            [
                {"system": DIAGNOSTIC_SERVICE_SYSTEM, "code": "LAB"},
                {"system": DIAGNOSTIC_SERVICE_SYSTEM, "code": "SP"},
            ],
            "pathology",
        ),
        ([], "other"),
    ],
)
def test_category_from_the_category_codes(codings: list[dict[str, str]], expected: str) -> None:
    assert build(_with_category(*codings)).category == expected


def test_an_uncategorised_result_with_a_specimen_is_lab() -> None:
    res = _with_category(specimen={"reference": "Specimen/sp-1"})
    assert build(res).category == "lab"


# --- orders -------------------------------------------------------------------------------


def test_a_service_request_becomes_an_order() -> None:
    r = build(ct_order(), inst=INST_B)
    assert (r.kind, r.resource_type, r.status, r.intent) == (
        "order",
        "ServiceRequest",
        "active",
        "order",
    )
    assert r.business_key == f"{INST_B}|ServiceRequest|{ORDER_NO_SYSTEM}|SQ2026112100031"
    assert r.authored_at == datetime(2026, 11, 21, 9, 0, tzinfo=CST)
    assert r.performed_at == datetime(2026, 11, 21, tzinfo=CST)
    assert r.issued_at is None and r.collected_at is None and r.value is None
    assert r.category == "imaging" and r.imaging is not None
    assert r.imaging.study_uid is None and r.imaging.modalities == ("CT",)
    assert [c.code for c in r.imaging.body_sites] == ["51185008"]


def test_a_lab_order() -> None:
    r = build(lab_order())
    assert (r.kind, r.category, r.imaging) == ("order", "lab", None)
    assert r.performed_at is None and r.collected_at is None


def test_an_order_number_identifier_is_preferred() -> None:
    res = lab_order()
    res["identifier"].insert(0, {"system": "urn:oid:1.3.6.1.4.1.32473.14.1.7", "value": "HIS-1"})
    assert build(res).business_key.endswith(f"|{ORDER_NO_SYSTEM}|SQ2026112100032")


# --- everything else ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "resource",
    [
        {"resourceType": "Patient", "identifier": [{"system": ID_CARD_SYSTEM, "value": ID_CARD}]},
        {"resourceType": "Encounter", "status": "finished"},
        {"resourceType": "Specimen", "id": "sp"},
        {"resourceType": "Organization", "name": "山西省人民医院"},
        {"resourceType": "Endpoint", "address": "https://pacs"},
    ],
)
def test_resources_that_are_neither_results_nor_orders_give_none(
    resource: dict[str, Any],
) -> None:
    record = build_record(
        accepted(resource),
        source_institution=INST_A,
        master_patient_id="mp",
        event_id="e",
        received_at=None,
        trace_id="t",
    )
    assert record is None


def test_a_payload_without_a_resource_gives_none() -> None:
    kw: dict[str, Any] = {
        "source_institution": INST_A,
        "master_patient_id": "mp",
        "event_id": "e",
        "received_at": None,
        "trace_id": "t",
    }
    assert build_record({"resource_type": "Observation"}, **kw) is None
    assert build_record({"resource_type": "Observation", "resource": []}, **kw) is None


def test_business_key_falls_back_to_the_logical_id_then_the_content() -> None:
    res = lab_observation()
    res["identifier"] = [{"system": ID_CARD_SYSTEM, "value": ID_CARD}]  # never a key
    assert build(res).business_key == f"{INST_A}|Observation|id|obs-k-1"
    del res["id"]
    r = build(res, event_id="f" * 32)
    assert r.business_key.startswith(f"{INST_A}|Observation|content|")
    assert ID_CARD not in r.business_key
    # another post of the same result (another event) is the same record
    assert build(res, event_id="e" * 32).record_id == r.record_id


def test_the_resource_rides_along_as_posted_and_is_not_content() -> None:
    res = lab_observation()
    r = build(res)
    assert r.resource == res
    payload = to_event_payload(r, change="new")
    assert payload["resource"] == res
    # a decimal keeps its digits through the record's JSON (pydantic would make a string)
    from decimal import Decimal

    res2 = {**res, "valueQuantity": {**res["valueQuantity"], "value": Decimal("4.20")}}
    assert to_event_payload(build(res2), change="new")["resource"]["valueQuantity"]["value"] == (
        Decimal("4.20")
    )


def test_a_naive_received_at_is_utc() -> None:
    r = build(lab_observation(), received_at=datetime(2026, 11, 20, 2, 5))
    assert r.source.received_at == datetime(2026, 11, 20, 2, 5, tzinfo=UTC)


def test_bundle_coordinates_are_kept() -> None:
    record = build_record(
        accepted(lab_observation(), bundle_id="b-1", entry_index=3, full_url="urn:uuid:abc"),
        source_institution=INST_A,
        master_patient_id="mp",
        event_id="e",
        received_at=None,
        trace_id="t",
    )
    assert record is not None
    assert (record.source.bundle_id, record.source.entry_index, record.source.full_url) == (
        "b-1",
        3,
        "urn:uuid:abc",
    )


# --- FHIR times ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026", datetime(2026, 1, 1, tzinfo=CST)),
        ("2026-11", datetime(2026, 11, 1, tzinfo=CST)),
        ("2026-11-20", datetime(2026, 11, 20, tzinfo=CST)),
        ("2026-11-20T08:30:00+08:00", datetime(2026, 11, 20, 8, 30, tzinfo=CST)),
        ("2026-11-20T00:30:00Z", datetime(2026, 11, 20, 0, 30, tzinfo=UTC)),
        ("2026-11-20T00:30:00.123456789Z", datetime(2026, 11, 20, 0, 30, 0, 123456, tzinfo=UTC)),
        ("2026-11-20T08:30:00.5-05:00", datetime(2026, 11, 20, 13, 30, 0, 500000, tzinfo=UTC)),
        ("2026-11-20T08:30:00", datetime(2026, 11, 20, 8, 30, tzinfo=CST)),  # no offset
        ("2026-13", None),
        ("2026-02-30", None),
        ("20261120", None),
        ("2026-11-20T08:30:00+25:00", None),
        ("", None),
        (None, None),
        (20261120, None),
    ],
)
def test_fhir_datetimes(text: Any, expected: datetime | None) -> None:
    got = parse_fhir_datetime(text)
    assert got == expected
    if got is not None:
        assert got.tzinfo is not None


@given(st.text(max_size=40))
def test_parsing_a_datetime_never_raises(text: str) -> None:
    got = parse_fhir_datetime(text)
    assert got is None or got.tzinfo is not None


# --- event payloads -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def validators() -> dict[str, Draft202012Validator]:
    out = {}
    for name, schema in SCHEMAS.items():
        Draft202012Validator.check_schema(schema)
        out[name] = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    return out


@pytest.mark.parametrize("name", sorted(ALL_FIXTURES))
@pytest.mark.parametrize("change", ["new", "update", "retraction"])
def test_event_payloads_match_their_schema(
    name: str, change: Any, validators: dict[str, Draft202012Validator]
) -> None:
    record = build(ALL_FIXTURES[name]())
    payload = to_event_payload(record, change=change)
    schema_name = "result-indexed" if record.kind == "result" else "order-placed"
    errors = [e.message for e in validators[schema_name].iter_errors(payload)]
    assert errors == []
    # every field is documented in the schema, and the payload is plain JSON
    assert set(payload) <= set(SCHEMAS[schema_name]["properties"])
    # plain JSON as the hub's codec writes it (the posted resource's decimals stay numbers)
    assert codec.loads(codec.dumps(payload)) == payload
    assert "business_key" not in payload
    other = "order-placed" if schema_name == "result-indexed" else "result-indexed"
    assert list(validators[other].iter_errors(payload)) != []


def test_a_result_payload(validators: dict[str, Draft202012Validator]) -> None:
    payload = to_event_payload(build(lab_observation()), change="new")
    assert payload["change"] == "new" and payload["kind"] == "result"
    assert "authored_at" not in payload and "intent" not in payload
    assert payload["value"]["value"] == "4.2"
    assert payload["issued_at"] == "2026-11-20T10:02:00+08:00"
    assert payload["source"]["received_at"] == "2026-11-20T02:05:00Z"
    assert "previous_master_patient_id" not in payload


def test_an_order_payload_and_a_merge(validators: dict[str, Draft202012Validator]) -> None:
    payload = to_event_payload(
        build(ct_order(), master="mp-2"), change="update", previous_master_patient_id="mp-1"
    )
    assert payload["previous_master_patient_id"] == "mp-1"
    assert payload["master_patient_id"] == "mp-2"
    assert not {"issued_at", "collected_at", "value"} & set(payload)
    assert list(validators["order-placed"].iter_errors(payload)) == []


def test_the_retracted_statuses() -> None:
    assert {"entered-in-error", "cancelled", "revoked"} == STATUS_RETRACTED
    assert build(lab_observation(status="entered-in-error")).retracted
    assert not build(lab_observation(status="amended")).retracted


# --- robustness ---------------------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8) | st.decimals(allow_nan=False),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=12,
)
_FIELDS = [
    "identifier",
    "status",
    "category",
    "code",
    "effectiveDateTime",
    "effectivePeriod",
    "issued",
    "valueQuantity",
    "referenceRange",
    "specimen",
    "contained",
    "imagingStudy",
    "series",
    "modality",
    "procedureCode",
    "endpoint",
    "numberOfSeries",
    "extension",
    "bodySite",
    "occurrenceTiming",
    "authoredOn",
    "id",
]


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["Observation", "DiagnosticReport", "ImagingStudy", "ServiceRequest"]),
    st.dictionaries(st.sampled_from(_FIELDS), _json, max_size=8),
)
def test_odd_resources_never_raise(rtype: str, fields: dict[str, Any]) -> None:
    makers: dict[str, Callable[[], dict[str, Any]]] = {
        "Observation": lab_observation,
        "DiagnosticReport": cbc_report,
        "ImagingStudy": ct_chest_study,
        "ServiceRequest": ct_order,
    }
    base = makers[rtype]()
    base.update(fields)
    record = build(base)
    assert record.resource_type == rtype
    to_event_payload(record, change="new")
