"""services.ingest.validation: what the gateway accepts, and why it refuses the rest."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from fhir.resources.observation import Observation as R5Observation
from fhir.resources.R4B.operationoutcome import OperationOutcome
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.common.fhir import (
    INSTITUTION_SYSTEM,
    URI_SYSTEM,
    Issue,
    operation_outcome,
)
from services.common.identifiers import (
    ID_CARD_SYSTEM,
    LAB_REPORT_NO_SYSTEM,
    ORDER_NO_SYSTEM,
    OUTPATIENT_NO_SYSTEM,
)
from services.common.institutions import Institution
from services.ingest.validation import (
    CLINICAL_TYPES,
    CONTEXT_TYPES,
    BundleCheck,
    CheckedResource,
    _parse_strict,
    business_id,
    check_bundle,
    check_resource,
    http_status,
    is_dicom_uid,
    nesting_exceeds,
    parse_json,
)
from tests.fhir_samples import gb11643

# --------------------------------------------------------------------------- fixtures

ID_CARD = gb11643("33010619850317123")  # 杭州西湖区, born 1985-03-17, sequence 123 (odd: male)
BAD_ID_CARD = ID_CARD[:-1] + ("0" if ID_CARD[-1] != "0" else "1")
ID_CARD_F = gb11643("33010219920708002")  # female, born 1992-07-08
NAME = "张伟"
PHONE = "13812345678"

OWN = Institution(
    id="12330000470116614F",
    name="浙江大学医学院附属第一医院",
    level=3,
    grade="甲",
    ownership="public",
    region_code="330102",
    oid="urn:oid:2.16.156.10011.1.99.330102001",
)
OTHER_ID = "12330000470003281N"
OTHER_OID = "urn:oid:2.16.156.10011.1.99.330105002"

DCM = "http://dicom.nema.org/resources/ontology/DCM"
STUDY_UID = "1.2.840.113619.2.55.3.604688119.969.1268071029.320"
SERIES_UID = "1.2.840.113619.2.55.3.604688119.969.1268071029.321"
PATIENT_URL = "urn:uuid:9a3c1d7e-0c1b-4f5e-8d2a-6b7c8d9e0f11"
ORG_URL = "urn:uuid:4e2f0c3a-1b2c-4d5e-9f60-718293a4b5c6"
ENC_URL = "urn:uuid:0b7d7c52-2c4e-4f61-a1b3-5e6f7a8b9c0d"
SPEC_URL = "urn:uuid:7f8e9d0c-1a2b-4c3d-8e4f-5a6b7c8d9e0f"
OBS_URL = "urn:uuid:1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f"
OBS2_URL = "urn:uuid:2d3e4f5a-6b7c-4d8e-9f0a-1b2c3d4e5f60"
DR_URL = "urn:uuid:3e4f5a6b-7c8d-4e9f-8a1b-2c3d4e5f6071"
IMG_URL = "urn:uuid:5a6b7c8d-9e0f-4a1b-8c2d-3e4f5a6b7c8d"
EP_URL = "urn:uuid:6b7c8d9e-0f1a-4b2c-9d3e-4f5a6b7c8d9e"

OWN_ORG_REF = {"identifier": {"system": INSTITUTION_SYSTEM, "value": OWN.id}, "display": "浙大一院"}
PATIENT_BY_MZ = {"identifier": {"system": OUTPATIENT_NO_SYSTEM, "value": "MZ00012345"}}


def patient() -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": "p-mz00012345",
        "identifier": [
            {
                "use": "official",
                "type": {
                    "coding": [
                        {
                            "system": "urn:oid:2.16.156.10011.2.3.1.7",
                            "code": "01",
                            "display": "居民身份证",
                        }
                    ]
                },
                "system": ID_CARD_SYSTEM,
                "value": ID_CARD,
            },
            {
                "use": "usual",
                "type": {"text": "门诊号"},
                "system": OUTPATIENT_NO_SYSTEM,
                "value": "MZ00012345",
                "assigner": {
                    "identifier": {"system": INSTITUTION_SYSTEM, "value": OWN.id},
                    "display": "浙大一院",
                },
            },
        ],
        "name": [{"use": "official", "text": NAME, "family": "张", "given": ["伟"]}],
        "telecom": [{"system": "phone", "value": PHONE, "use": "mobile"}],
        "gender": "male",
        "birthDate": "1985-03-17",
        "address": [{"text": "浙江省杭州市西湖区文三路 100 号", "postalCode": "310012"}],
    }


def observation() -> dict[str, Any]:
    """A complete blood count item: leukocytes, as the LIS reports it."""
    return {
        "resourceType": "Observation",
        "id": "wbc-lr20240301-0001",
        "identifier": [
            {
                "system": LAB_REPORT_NO_SYSTEM,
                "value": "LR20240301-0001-01",
                "assigner": {"identifier": {"system": INSTITUTION_SYSTEM, "value": OWN.id}},
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
        "code": {
            "coding": [
                {
                    "system": "http://loinc.org",
                    "code": "6690-2",
                    "display": "Leukocytes [#/volume] in Blood by Automated count",
                },
                {"system": "urn:oid:2.16.156.10011.99.330000.1", "code": "WBC"},
            ],
            "text": "白细胞计数",
        },
        "subject": copy.deepcopy(PATIENT_BY_MZ),
        "effectiveDateTime": "2024-03-01T08:30:00+08:00",
        "issued": "2024-03-01T10:02:11+08:00",
        "performer": [copy.deepcopy(OWN_ORG_REF), {"reference": "Practitioner/d-0042"}],
        "valueQuantity": {
            "value": 6.3,
            "unit": "10*9/L",
            "system": "http://unitsofmeasure.org",
            "code": "10*9/L",
        },
        "interpretation": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/"
                        "v3-ObservationInterpretation",
                        "code": "N",
                    }
                ]
            }
        ],
        "referenceRange": [
            {
                "low": {"value": 3.5, "unit": "10*9/L"},
                "high": {"value": 9.5, "unit": "10*9/L"},
            }
        ],
    }


def diagnostic_report() -> dict[str, Any]:
    return {
        "resourceType": "DiagnosticReport",
        "identifier": [{"system": LAB_REPORT_NO_SYSTEM, "value": "LR20240301-0001"}],
        "status": "final",
        "category": [
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "HM"}]}
        ],
        "code": {"coding": [{"system": "http://loinc.org", "code": "58410-2"}], "text": "血常规"},
        "subject": copy.deepcopy(PATIENT_BY_MZ),
        "effectiveDateTime": "2024-03-01T08:30:00+08:00",
        "issued": "2024-03-01T10:05:00+08:00",
        "performer": [copy.deepcopy(OWN_ORG_REF)],
        "conclusion": "血常规未见明显异常",
    }


def imaging_study() -> dict[str, Any]:
    return {
        "resourceType": "ImagingStudy",
        "identifier": [
            {"system": "urn:dicom:uid", "value": f"urn:oid:{STUDY_UID}"},
            {"system": "urn:oid:2.16.156.10011.1.99.330102001.5", "value": "CT20240301001"},
        ],
        "status": "available",
        "modality": [{"system": DCM, "code": "CT"}],
        "subject": copy.deepcopy(PATIENT_BY_MZ),
        "started": "2024-03-01T09:10:00+08:00",
        "numberOfSeries": 1,
        "numberOfInstances": 240,
        "description": "胸部 CT 平扫",
        "series": [
            {
                "uid": SERIES_UID,
                "number": 1,
                "modality": {"system": DCM, "code": "CT"},  # Coding in R4, not R5
                "bodySite": {"system": "http://snomed.info/sct", "code": "51185008"},
                "numberOfInstances": 240,
                "performer": [
                    {"actor": copy.deepcopy(OWN_ORG_REF)},
                    {"actor": {"reference": "Practitioner/t-0007"}},
                ],
            }
        ],
    }


def service_request() -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "identifier": [{"system": ORDER_NO_SYSTEM, "value": "SQ20240301-0077"}],
        "status": "active",
        "intent": "order",
        "code": {"coding": [{"system": "http://loinc.org", "code": "58410-2"}], "text": "血常规"},
        "subject": copy.deepcopy(PATIENT_BY_MZ),
        "authoredOn": "2024-03-01T08:00:00+08:00",
        "requester": {"reference": "Practitioner/d-0042"},
        "performer": [copy.deepcopy(OWN_ORG_REF)],
    }


def organization(ident: str = OWN.id) -> dict[str, Any]:
    return {
        "resourceType": "Organization",
        "id": "org-1",
        "identifier": [{"system": INSTITUTION_SYSTEM, "value": ident}],
        "name": "某医院",
    }


def entry(url: str, resource: dict[str, Any], method: str = "POST") -> dict[str, Any]:
    return {
        "fullUrl": url,
        "resource": resource,
        "request": {"method": method, "url": resource["resourceType"]},
    }


def lab_transaction() -> dict[str, Any]:
    """Patient, Organization, Encounter, Specimen, two Observations and their report."""
    obs = observation()
    obs["subject"] = {"reference": PATIENT_URL}
    obs["performer"] = [{"reference": ORG_URL}]
    obs["encounter"] = {"reference": ENC_URL}
    obs["specimen"] = {"reference": SPEC_URL}
    obs2 = observation()
    obs2["identifier"][0]["value"] = "LR20240301-0001-02"
    obs2["code"] = {"coding": [{"system": "http://loinc.org", "code": "718-7"}], "text": "血红蛋白"}
    obs2["valueQuantity"] = {"value": 142, "unit": "g/L"}
    obs2["subject"] = {"reference": "Patient/p-mz00012345"}  # by the Patient entry's id
    report = diagnostic_report()
    report["subject"] = {"reference": PATIENT_URL}
    report["result"] = [{"reference": OBS_URL}, {"reference": OBS2_URL}]
    report["specimen"] = [{"reference": SPEC_URL}]
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            entry(PATIENT_URL, patient(), "PUT"),
            entry(ORG_URL, organization()),
            entry(
                ENC_URL,
                {
                    "resourceType": "Encounter",
                    "status": "finished",
                    "class": {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                        "code": "AMB",
                    },
                    "subject": {"reference": PATIENT_URL},
                    "serviceProvider": {"reference": ORG_URL},
                },
            ),
            entry(
                SPEC_URL,
                {
                    "resourceType": "Specimen",
                    "type": {"text": "静脉血"},
                    "subject": {"reference": PATIENT_URL},
                    "collection": {"collectedDateTime": "2024-03-01T08:30:00+08:00"},
                },
            ),
            entry(OBS_URL, obs),
            entry(OBS2_URL, obs2),
            entry(DR_URL, report),
        ],
    }


def imaging_batch() -> dict[str, Any]:
    study = imaging_study()
    study["subject"] = {"reference": PATIENT_URL}
    study["endpoint"] = [{"reference": EP_URL}]
    study["series"][0]["performer"][0]["actor"] = {"reference": "Organization/org-1"}
    order = service_request()
    order["subject"] = {"reference": PATIENT_URL}
    return {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            entry(PATIENT_URL, patient()),
            entry(ORG_URL, organization()),
            entry(
                EP_URL,
                {
                    "resourceType": "Endpoint",
                    "status": "active",
                    "connectionType": {
                        "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
                        "code": "dicom-wado-rs",
                    },
                    "payloadType": [{"text": "DICOM"}],
                    "address": "https://pacs.zy1.example.cn/dicom-web",
                },
            ),
            entry(IMG_URL, study),
            entry("urn:uuid:8c9d0e1f-2a3b-4c4d-9e5f-6a7b8c9d0e1f", order),
        ],
    }


# --------------------------------------------------------------------------- helpers


def reasons(issues: list[Issue]) -> set[str]:
    return {i.reason for i in issues if i.is_error}


def only_issue(issues: list[Issue]) -> Issue:
    errors = [i for i in issues if i.is_error]
    assert len(errors) == 1, errors
    return errors[0]


def check(resource: dict[str, Any], **kw: Any) -> CheckedResource:
    return check_resource(resource, OWN, **kw)


def all_text(issues: list[Issue]) -> str:
    return json.dumps(operation_outcome(issues), ensure_ascii=False)


# --------------------------------------------------------------------------- accepted data


@pytest.mark.parametrize(
    "make", [patient, observation, diagnostic_report, imaging_study, service_request]
)
def test_clinical_resources_accepted(make: Callable[[], dict[str, Any]]) -> None:
    raw = make()
    before = copy.deepcopy(raw)
    checked = check(raw, expected_type=raw["resourceType"])
    assert checked.ok, checked.issues
    assert checked.issues == []
    assert checked.resource is raw  # as posted, not re-serialised
    assert raw == before  # and not modified by the checks
    assert checked.resource_type == raw["resourceType"]
    assert http_status(checked.issues) == 200


def test_lab_transaction_accepted() -> None:
    raw = lab_transaction()
    before = copy.deepcopy(raw)
    result = check_bundle(raw, OWN)
    assert result.ok, result.all_issues
    assert result.all_issues == []
    assert result.bundle_type == "transaction"
    assert [e.resource_type for e in result.entries] == [
        "Patient",
        "Organization",
        "Encounter",
        "Specimen",
        "Observation",
        "Observation",
        "DiagnosticReport",
    ]
    assert [e.index for e in result.entries] == list(range(7))
    assert result.entries[4].full_url == OBS_URL
    assert result.entries[4].resource is raw["entry"][4]["resource"]
    assert raw == before
    assert http_status(result.all_issues) == 200


def test_imaging_batch_accepted() -> None:
    result = check_bundle(imaging_batch(), OWN)
    assert result.ok, result.all_issues
    assert result.bundle_type == "batch"
    assert result.entries[3].business_id == ("urn:dicom:uid", f"urn:oid:{STUDY_UID}")


def test_r4_only_data_accepted() -> None:
    """R4 shapes that the default (R5) models of fhir.resources 8 reject."""
    ecg = observation()
    del ecg["valueQuantity"], ecg["referenceRange"], ecg["interpretation"]
    ecg["code"] = {"coding": [{"system": "http://loinc.org", "code": "131328"}], "text": "心电图"}
    ecg["valueSampledData"] = {
        "origin": {"value": 0, "unit": "mV"},
        "period": 2.0,  # R5 renamed it interval
        "dimensions": 1,
        "data": "-1 0 2 5 12 4 0 -1",
    }
    with pytest.raises(ValueError, match="period"):
        R5Observation.model_validate(ecg)
    assert check(ecg).ok
    # ImagingStudy.series.modality is a Coding in R4 (a CodeableConcept in R5)
    assert check(imaging_study()).ok


def test_business_id() -> None:
    assert business_id(observation()) == (LAB_REPORT_NO_SYSTEM, "LR20240301-0001-01")
    assert business_id(imaging_study()) == ("urn:dicom:uid", f"urn:oid:{STUDY_UID}")
    p = patient()
    assert business_id(p) == (OUTPATIENT_NO_SYSTEM, "MZ00012345")  # the 身份证 comes last
    p["identifier"] = p["identifier"][:1]
    assert business_id(p) == ("id", "p-mz00012345")
    del p["id"]
    assert business_id(p) == (ID_CARD_SYSTEM, ID_CARD)
    p["identifier"] = [{"system": OUTPATIENT_NO_SYSTEM, "value": ""}, "junk", {"value": "x"}]
    assert business_id(p) is None
    study = imaging_study()
    study["identifier"] = study["identifier"][1:]
    assert business_id(study) == ("urn:oid:2.16.156.10011.1.99.330102001.5", "CT20240301001")
    assert business_id({"identifier": {"system": "s", "value": "v"}}) == ("s", "v")
    assert business_id("not a dict") is None  # type: ignore[arg-type]
    assert check(observation()).business_id == (LAB_REPORT_NO_SYSTEM, "LR20240301-0001-01")


# --------------------------------------------------------------------------- parse_json


def test_parse_json() -> None:
    body = json.dumps(observation(), ensure_ascii=False).encode()
    expected = json.loads(body, parse_float=Decimal)
    value, issues = parse_json(body)
    assert issues == [] and value == expected
    assert parse_json(b"\xef\xbb\xbf" + body)[0] == expected
    assert parse_json(body.decode())[0] == expected


def test_parse_json_keeps_decimal_precision() -> None:
    value, _ = parse_json(b'{"valueQuantity": {"value": 6.30}, "low": 0.10}')
    assert str(value["valueQuantity"]["value"]) == "6.30"
    assert str(value["low"]) == "0.10"


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b'{"resourceType": "Patient",}',
        b'{"resourceType": "Patient", "resourceType": "Observation"}',
        b'{"a": NaN}',
        b'{"a": Infinity}',
        b'{"name": "\xff\xfe"}',
        b'{"name": "\\ud800"}',  # an unpaired surrogate: no UTF-8 (nor Kafka) can hold it
        b'{"name": "a\\udc00b"}',
    ],
)
def test_parse_json_malformed(body: bytes) -> None:
    value, issues = parse_json(body)
    assert value is None
    issue = only_issue(issues)
    assert (issue.code, issue.reason) == ("structure", "malformed-json")
    assert http_status(issues) == 400


def test_parse_json_keeps_a_surrogate_pair() -> None:
    value, issues = parse_json(b'{"note": "\\ud83d\\ude00 \\u738b"}')
    assert issues == []
    assert value == {"note": "\U0001f600 王"}


# --------------------------------------------------------------------------- not a resource


@pytest.mark.parametrize("raw", [None, [], "Patient", 3, {"id": "x"}, {"resourceType": 5}])
def test_not_a_resource(raw: Any) -> None:
    checked = check(raw)
    issue = only_issue(checked.issues)
    assert (issue.code, issue.reason) == ("structure", "not-a-resource")
    assert http_status(checked.issues) == 400
    bundle = check_bundle(raw, OWN)
    assert reasons(bundle.issues) == {"not-a-resource"}
    assert not bundle.ok


def test_type_mismatch() -> None:
    checked = check(patient(), expected_type="Observation")
    issue = only_issue(checked.issues)
    assert (issue.code, issue.reason) == ("invalid", "type-mismatch")
    assert http_status(checked.issues) == 400
    assert reasons(check_bundle(patient(), OWN).issues) == {"type-mismatch"}


@pytest.mark.parametrize("rtype", [*CONTEXT_TYPES, "MedicationRequest", "Bundle", "Foo", "ünï"])
def test_standalone_unsupported_types(rtype: str) -> None:
    checked = check({"resourceType": rtype, "id": "x"})
    issue = only_issue(checked.issues)
    assert (issue.code, issue.reason) == ("not-supported", "unsupported-type")
    assert issue.expression == (rtype if rtype.isascii() else "Resource",)
    assert http_status(checked.issues) == 422


# --------------------------------------------------------------------------- structure


def test_invalid_fhir_has_fhirpath() -> None:
    obs = observation()
    obs["code"]["coding"][0]["system"] = 123
    obs["valueQuantity"]["value"] = "six"
    checked = check(obs)
    paths = {e for i in checked.issues for e in i.expression}
    assert "Observation.code.coding[0].system" in paths
    assert "Observation.valueQuantity.value" in paths
    assert all((i.code, i.reason) == ("structure", "invalid-fhir") for i in checked.issues)
    assert http_status(checked.issues) == 400


def test_invalid_fhir_in_bundle_entry() -> None:
    raw = lab_transaction()
    raw["entry"][4]["resource"]["code"]["coding"][0]["system"] = 123
    raw["entry"][0]["resource"]["unknownElement"] = True
    result = check_bundle(raw, OWN)
    assert result.entries[4].issues[0].expression == (
        "Bundle.entry[4].resource.code.coding[0].system",
    )
    assert result.entries[0].issues[0].expression == ("Bundle.entry[0].resource.unknownElement",)
    assert [e.ok for e in result.entries] == [False, True, True, True, False, True, True]
    assert http_status(result.all_issues) == 400


def test_model_required_element_reported_once() -> None:
    obs = observation()
    del obs["status"]
    issue = only_issue(check(obs).issues)
    assert (issue.reason, issue.expression) == ("invalid-fhir", ("Observation.status",))


def test_contained_of_unknown_type_does_not_raise() -> None:
    obs = observation()
    obs["contained"] = [{"resourceType": "Foo", "id": "f"}, {"resourceType": ["x"]}]
    checked = check(obs)
    assert {(i.reason, i.expression) for i in checked.issues} == {
        ("unsupported-type", ("Observation.contained[0]",)),
        ("not-a-resource", ("Observation.contained[1]",)),
    }


def test_too_deep() -> None:
    obs = observation()
    deep: Any = {}
    obs["extension"] = [{"url": "http://x", "valueString": "a", "extension": [deep]}]
    for _ in range(200):
        deep["extension"] = [{}]
        deep = deep["extension"][0]
    issue = only_issue(check(obs).issues)
    assert issue.reason == "invalid-fhir" and "deep" in issue.diagnostics


# --------------------------------------------------------------------------- identifiers


def test_id_card_checksum_on_patient() -> None:
    p = patient()
    p["identifier"][0]["value"] = BAD_ID_CARD
    checked = check(p)
    issue = only_issue(checked.issues)
    assert (issue.code, issue.reason) == ("value", "id-card-checksum")
    assert issue.expression == ("Patient.identifier[0].value",)
    assert "check character" in issue.diagnostics
    assert http_status(checked.issues) == 422


@pytest.mark.parametrize("value", [ID_CARD.lower(), ID_CARD_F, "330106850317123"])
def test_valid_id_card_forms(value: str) -> None:
    p = patient()
    p["identifier"][0]["value"] = value
    del p["birthDate"], p["gender"]
    assert check(p).ok


@pytest.mark.parametrize("value", ["33010619850317", "3301061985031712AX", "330106198502301230"])
def test_id_card_malformed(value: str) -> None:
    obs = observation()
    obs["subject"] = {"identifier": {"system": ID_CARD_SYSTEM, "value": value}}
    issue = only_issue(check(obs).issues)
    assert issue.reason == "id-card-checksum"
    assert issue.expression == ("Observation.subject.identifier.value",)


def test_id_card_on_subject() -> None:
    obs = observation()
    obs["subject"] = {"identifier": {"system": ID_CARD_SYSTEM, "value": ID_CARD}}
    checked = check(obs)
    assert checked.ok
    obs["subject"]["identifier"]["value"] = BAD_ID_CARD
    issue = only_issue(check(obs).issues)
    assert issue.reason == "id-card-checksum"


@pytest.mark.parametrize(
    ("field", "value"),
    [("birthDate", "1985-03-18"), ("birthDate", "1986"), ("gender", "female")],
)
def test_id_card_mismatch(field: str, value: str) -> None:
    p = patient()
    p[field] = value
    checked = check(p)
    issue = only_issue(checked.issues)
    assert (issue.code, issue.reason) == ("business-rule", "id-card-mismatch")
    assert issue.expression == ("Patient.identifier[0]",)
    assert http_status(checked.issues) == 422


@pytest.mark.parametrize(
    ("field", "value"),
    [("birthDate", "1985"), ("birthDate", "1985-03"), ("gender", "unknown"), ("gender", "other")],
)
def test_id_card_agrees_with_partial_data(field: str, value: str) -> None:
    p = patient()
    p[field] = value
    assert check(p).ok


@pytest.mark.parametrize("ident", [{"system": OUTPATIENT_NO_SYSTEM}, {"system": "x", "value": " "}])
def test_empty_identifier(ident: dict[str, Any]) -> None:
    obs = observation()
    obs["identifier"].append(ident)
    issue = only_issue(check(obs).issues)
    assert (issue.code, issue.reason) == ("value", "empty-identifier")
    assert issue.expression == ("Observation.identifier[1].value",)


def test_identifier_without_system_may_be_empty_of_value() -> None:
    obs = observation()
    obs["identifier"].append({"use": "secondary", "type": {"text": "条码"}})
    assert check(obs).ok


def test_patient_needs_an_identifier() -> None:
    p = patient()
    del p["identifier"]
    issue = only_issue(check(p).issues)
    assert (issue.code, issue.reason) == ("required", "missing-field")
    assert issue.expression == ("Patient.identifier",)
    p["identifier"] = [{"system": OUTPATIENT_NO_SYSTEM}]
    assert reasons(check(p).issues) == {"missing-field", "empty-identifier"}


def test_diagnostics_never_echo_identity_data() -> None:
    """Failing checks of every kind: no 身份证 number, name or phone in what the hub answers."""
    p = patient()
    p["identifier"][0]["value"] = BAD_ID_CARD
    p["name"] = [{"text": NAME, "family": 123}]
    p["telecom"] = [{"system": "phone", "value": PHONE, "bogus": PHONE}]
    p["birthDate"] = NAME
    p2 = patient()
    p2["gender"] = "female"
    p2[PHONE] = NAME
    p2["identifier"][0]["period"] = ID_CARD
    obs = observation()
    obs["subject"] = {"identifier": {"system": ID_CARD_SYSTEM, "value": BAD_ID_CARD + " "}}
    obs["effectiveDateTime"] = ID_CARD
    obs["valueString"] = PHONE
    issues = [
        *check(p).issues,
        *check(p2).issues,
        *check(obs).issues,
        *check(p, expected_type="Observation").issues,
        *parse_json(json.dumps({ID_CARD: 1, NAME: PHONE, "x": {ID_CARD: 2}}).encode())[1],
        *parse_json(('{"' + NAME + '": 1, "' + NAME + '": 2}').encode())[1],
    ]
    assert len(issues) >= 8
    text = all_text(issues)
    for secret in (ID_CARD, BAD_ID_CARD, ID_CARD[:17], NAME, PHONE):
        assert secret not in text


# --------------------------------------------------------------------------- required


@pytest.mark.parametrize(
    ("make", "drop", "path"),
    [
        (observation, ("effectiveDateTime",), "Observation.effective"),
        (observation, ("subject",), "Observation.subject"),
        (diagnostic_report, ("effectiveDateTime", "issued"), "DiagnosticReport.effective"),
        (diagnostic_report, ("subject",), "DiagnosticReport.subject"),
        (service_request, ("code",), "ServiceRequest.code"),
        (service_request, ("authoredOn",), "ServiceRequest.authoredOn"),
        (imaging_study, ("identifier",), "ImagingStudy.identifier"),
    ],
)
def test_missing_fields(
    make: Callable[[], dict[str, Any]], drop: tuple[str, ...], path: str
) -> None:
    raw = make()
    for name in drop:
        del raw[name]
    checked = check(raw)
    issue = only_issue(checked.issues)
    assert (issue.code, issue.reason, issue.expression) == ("required", "missing-field", (path,))
    assert http_status(checked.issues) == 422


@pytest.mark.parametrize(
    "effective",
    [
        {"effectivePeriod": {"start": "2024-03-01T08:30:00+08:00"}},
        {"effectiveInstant": "2024-03-01T08:30:00.000+08:00"},
        {"effectiveTiming": {"event": ["2024-03-01T08:30:00+08:00"]}},
    ],
)
def test_effective_choices(effective: dict[str, Any]) -> None:
    obs = observation()
    del obs["effectiveDateTime"]
    assert check({**obs, **effective}).ok


def test_diagnostic_report_issued_alone_is_enough() -> None:
    report = diagnostic_report()
    del report["effectiveDateTime"]
    assert check(report).ok


def test_imaging_study_modality() -> None:
    study = imaging_study()
    del study["modality"]  # the series still says CT
    assert check(study).ok
    study["series"] = []  # no series, no study modality: nothing says what it is
    issue = only_issue(check(study).issues)
    assert (issue.code, issue.reason, issue.expression) == (
        "required",
        "missing-field",
        ("ImagingStudy.modality",),
    )
    del study["series"]
    assert only_issue(check(study).issues).expression == ("ImagingStudy.modality",)


@pytest.mark.parametrize(
    "value",
    [
        STUDY_UID,  # not in urn:oid: form
        "urn:oid:1.02.3",  # leading zero in a component
        "urn:oid:1.2.3.",
        "urn:oid:1.2.a",
        "urn:oid:" + "1." * 32 + "1",  # 65 characters
    ],
)
def test_invalid_study_uid(value: str) -> None:
    study = imaging_study()
    study["identifier"][0]["value"] = value
    issue = only_issue(check(study).issues)
    assert (issue.code, issue.reason) == ("value", "invalid-dicom-uid")
    assert issue.expression == ("ImagingStudy.identifier[0].value",)


def test_invalid_series_uid() -> None:
    study = imaging_study()
    study["series"][0]["uid"] = "1.2.03"
    issue = only_issue(check(study).issues)
    assert (issue.reason, issue.expression) == (
        "invalid-dicom-uid",
        ("ImagingStudy.series[0].uid",),
    )


def test_is_dicom_uid() -> None:
    assert is_dicom_uid(STUDY_UID)
    assert is_dicom_uid("0.0")
    assert is_dicom_uid("1." * 31 + "12")  # 64
    assert not is_dicom_uid("1." * 32 + "1")
    assert not is_dicom_uid("")
    assert not is_dicom_uid("1..2")


# --------------------------------------------------------------------------- the patient


def test_standalone_needs_subject_identifier() -> None:
    obs = observation()
    obs["subject"] = {"reference": "Patient/p-mz00012345"}
    checked = check(obs)
    issue = only_issue(checked.issues)
    assert (issue.code, issue.reason) == ("required", "no-patient")
    assert issue.expression == ("Observation.subject.identifier",)
    assert http_status(checked.issues) == 422
    obs["subject"]["identifier"] = {"system": OUTPATIENT_NO_SYSTEM, "value": "MZ00012345"}
    assert check(obs).ok


def test_standalone_urn_uuid_reference_is_unresolved() -> None:
    obs = observation()
    obs["specimen"] = {"reference": SPEC_URL}
    issue = only_issue(check(obs).issues)
    assert (issue.code, issue.reason) == ("not-found", "unresolved-reference")
    assert issue.expression == ("Observation.specimen.reference",)


def test_bundle_subject_by_identifier() -> None:
    raw = lab_transaction()
    raw["entry"][4]["resource"]["subject"] = copy.deepcopy(PATIENT_BY_MZ)
    assert check_bundle(raw, OWN).ok


def test_bundle_subject_must_be_a_patient() -> None:
    raw = lab_transaction()
    raw["entry"][4]["resource"]["subject"] = {"reference": ORG_URL}
    raw["entry"][5]["resource"]["subject"] = {"reference": "Patient/elsewhere"}
    raw["entry"][6]["resource"]["subject"] = {"display": NAME}
    result = check_bundle(raw, OWN)
    i4, i5, i6 = (only_issue(result.entries[n].issues) for n in (4, 5, 6))
    assert (i4.code, i4.reason, i4.expression) == (
        "business-rule",
        "no-patient",
        ("Bundle.entry[4].resource.subject.reference",),
    )
    assert (i5.code, i5.reason) == ("not-found", "no-patient")
    assert (i6.code, i6.reason, i6.expression) == (
        "required",
        "no-patient",
        ("Bundle.entry[6].resource.subject",),
    )
    assert NAME not in all_text(result.all_issues)


def test_unresolved_urn_uuid_in_bundle() -> None:
    raw = lab_transaction()
    raw["entry"][6]["resource"]["result"][1]["reference"] = "urn:uuid:00000000-dead-beef-0000"
    raw["entry"][4]["resource"]["subject"]["reference"] = "urn:uuid:11111111-0000-0000-0000"
    result = check_bundle(raw, OWN)
    report = only_issue(result.entries[6].issues)
    assert (report.code, report.reason, report.expression) == (
        "not-found",
        "unresolved-reference",
        ("Bundle.entry[6].resource.result[1].reference",),
    )
    obs = only_issue(result.entries[4].issues)  # no second no-patient issue
    assert obs.reason == "unresolved-reference"
    assert http_status(result.all_issues) == 422


def test_contained_references() -> None:
    obs = observation()
    obs["contained"] = [
        {"resourceType": "Specimen", "id": "sp", "type": {"text": "静脉血"}},
        {
            "resourceType": "Organization",
            "id": "lab",
            "identifier": [{"system": URI_SYSTEM, "value": OTHER_OID}],
        },
    ]
    obs["specimen"] = {"reference": "#sp"}
    assert check(obs).ok
    obs["specimen"] = {"reference": "#nothing"}
    issue = only_issue(check(obs).issues)
    assert issue.reason == "unresolved-reference"
    obs["specimen"] = {"reference": "#sp"}
    obs["performer"] = [{"reference": "#lab"}]
    issue = only_issue(check(obs).issues)
    assert (issue.reason, issue.expression) == (
        "foreign-institution",
        ("Observation.performer[0]",),
    )


# --------------------------------------------------------------------------- bundle rules


@pytest.mark.parametrize("btype", ["collection", "document", "message", "searchset", "history"])
def test_bundle_type(btype: str) -> None:
    raw = lab_transaction()
    raw["type"] = btype
    result = check_bundle(raw, OWN)
    issue = only_issue(result.issues)
    assert (issue.code, issue.reason, issue.expression) == (
        "not-supported",
        "unsupported-bundle-type",
        ("Bundle.type",),
    )
    assert result.bundle_type == btype
    assert http_status(result.all_issues) == 422


def test_bundle_without_type_is_invalid_fhir() -> None:
    raw = lab_transaction()
    del raw["type"]
    result = check_bundle(raw, OWN)
    assert result.bundle_type is None
    assert reasons(result.issues) == {"invalid-fhir"}
    assert http_status(result.all_issues) == 400


@pytest.mark.parametrize("entries", [None, []])
def test_bundle_without_entries(entries: Any) -> None:
    raw = {"resourceType": "Bundle", "type": "batch"}
    if entries is not None:
        raw["entry"] = entries
    result = check_bundle(raw, OWN)
    issue = only_issue(result.issues)
    assert (issue.code, issue.reason, issue.expression) == (
        "required",
        "missing-field",
        ("Bundle.entry",),
    )


def test_entry_without_resource() -> None:
    raw = lab_transaction()
    raw["entry"].insert(
        1, {"fullUrl": "urn:uuid:aa", "request": {"method": "DELETE", "url": "Patient/1"}}
    )
    result = check_bundle(raw, OWN)
    issue = only_issue(result.issues)
    assert (issue.reason, issue.expression) == ("missing-field", ("Bundle.entry[1].resource",))
    assert [e.index for e in result.entries] == [0, 2, 3, 4, 5, 6, 7]
    assert all(e.ok for e in result.entries)


def test_entry_resource_not_an_object() -> None:
    raw = lab_transaction()
    raw["entry"][1]["resource"] = "Organization"
    issue = only_issue(check_bundle(raw, OWN).issues)
    assert (issue.reason, issue.expression) == ("not-a-resource", ("Bundle.entry[1].resource",))


def test_duplicate_full_url() -> None:
    raw = lab_transaction()
    raw["entry"][5]["fullUrl"] = OBS_URL
    result = check_bundle(raw, OWN)
    issue = only_issue(result.issues)
    assert (issue.code, issue.reason, issue.expression) == (
        "invalid",
        "duplicate-full-url",
        ("Bundle.entry[5].fullUrl",),
    )
    assert http_status(result.all_issues) == 400


def test_missing_request_is_a_warning() -> None:
    raw = lab_transaction()
    del raw["entry"][3]["request"]
    result = check_bundle(raw, OWN)
    assert result.ok
    assert [(i.severity, i.reason) for i in result.issues] == [("warning", "missing-request")]
    assert http_status(result.all_issues) == 200


def test_unknown_resource_type_in_bundle() -> None:
    raw = lab_transaction()
    raw["entry"].append(entry("urn:uuid:ff", {"resourceType": "Foo", "id": "1"}))
    raw["entry"].append(entry("urn:uuid:fe", {"resourceType": "MedicationRequest", "id": "2"}))
    raw["entry"].append(entry("urn:uuid:fd", {"resourceType": "Bundle", "type": "batch"}))
    result = check_bundle(raw, OWN)
    assert result.issues == []
    assert all(e.ok for e in result.entries[:7])
    for n in (7, 8, 9):
        issue = only_issue(result.entries[n].issues)
        assert (issue.code, issue.reason, issue.expression) == (
            "not-supported",
            "unsupported-type",
            (f"Bundle.entry[{n}].resource",),
        )
    assert result.entries[7].resource_type == "Foo"
    assert http_status(result.all_issues) == 422


def test_bundle_of_context_only() -> None:
    raw = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [entry(ORG_URL, organization())],
    }
    result = check_bundle(raw, OWN)
    assert reasons(result.issues) == {"unsupported-type"}


def test_bundle_shell_errors_have_paths() -> None:
    raw = lab_transaction()
    raw["entry"][2]["fullUrl"] = 5
    raw["entry"][3]["request"]["method"] = 7
    raw["entry"].append("junk")
    result = check_bundle(raw, OWN)
    paths = {e for i in result.issues for e in i.expression}
    assert {"Bundle.entry[2].fullUrl", "Bundle.entry[3].request.method", "Bundle.entry[7]"} <= paths


def test_bundle_shell_errors_are_found_after_the_same_shapes_were_valid() -> None:
    """Entry shapes and Bundle elements found valid once are not validated again; a bundle
    that differs from them in one entry, or in its own elements, is still refused with the
    same paths as on first sight."""
    assert check_bundle(lab_transaction(), OWN).ok
    assert check_bundle(lab_transaction(), OWN).ok  # the remembered shapes
    raw = lab_transaction()
    raw["entry"][4]["request"]["method"] = 7
    raw["entry"][5]["request"]["url"] = 7
    result = check_bundle(raw, OWN)
    paths = {e for i in result.issues for e in i.expression}
    assert {"Bundle.entry[4].request.method", "Bundle.entry[5].request.url"} <= paths
    assert http_status(result.all_issues) == 400
    raw = lab_transaction()
    raw["timestamp"] = "yesterday"
    result = check_bundle(raw, OWN)
    assert "Bundle.timestamp" in {e for i in result.issues for e in i.expression}
    assert check_bundle(lab_transaction(), OWN).ok


@pytest.mark.parametrize("types", [CLINICAL_TYPES])
def test_clinical_types_accepted_in_bundles(types: tuple[str, ...]) -> None:
    found = {e.resource_type for e in check_bundle(lab_transaction(), OWN).entries} | {
        e.resource_type for e in check_bundle(imaging_batch(), OWN).entries
    }
    assert set(types) <= found


# --------------------------------------------------------------------------- institutions


def foreign_ref() -> dict[str, Any]:
    return {"identifier": {"system": INSTITUTION_SYSTEM, "value": OTHER_ID}, "display": "别家医院"}


@pytest.mark.parametrize(
    ("make", "path", "where"),
    [
        (observation, ("performer", 0), "Observation.performer[0]"),
        (diagnostic_report, ("performer", 0), "DiagnosticReport.performer[0]"),
        (service_request, ("performer", 0), "ServiceRequest.performer[0]"),
        (
            imaging_study,
            ("series", 0, "performer", 0, "actor"),
            "ImagingStudy.series[0].performer[0].actor",
        ),
    ],
)
def test_foreign_performer(
    make: Callable[[], dict[str, Any]], path: tuple[Any, ...], where: str
) -> None:
    raw = make()
    node: Any = raw
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = foreign_ref()
    checked = check(raw)
    issue = only_issue(checked.issues)
    assert (issue.code, issue.reason, issue.expression) == (
        "forbidden",
        "foreign-institution",
        (where,),
    )
    assert http_status(checked.issues) == 403
    assert OTHER_ID not in issue.diagnostics


@pytest.mark.parametrize(
    "ref",
    [
        {"reference": "Practitioner/d-1", "display": "李医生"},
        {"reference": "PractitionerRole/r-1"},
        {"identifier": {"system": "urn:oid:2.16.156.10011.1.99.9", "value": "LAB-1"}},
        {"identifier": {"system": URI_SYSTEM, "value": OWN.oid}},
        {"identifier": {"system": URI_SYSTEM, "value": f"{OWN.oid}.3"}},
        {"type": "Practitioner", "identifier": {"system": URI_SYSTEM, "value": OTHER_OID}},
        {"reference": "Organization/unknown"},
    ],
)
def test_performer_not_foreign(ref: dict[str, Any]) -> None:
    obs = observation()
    obs["performer"] = [ref]
    assert check(obs).ok


def test_foreign_performer_by_oid() -> None:
    obs = observation()
    obs["performer"] = [
        {"type": "Organization", "identifier": {"system": URI_SYSTEM, "value": OTHER_OID}}
    ]
    assert reasons(check(obs).issues) == {"foreign-institution"}


def test_foreign_organization_entry() -> None:
    raw = lab_transaction()
    raw["entry"][1]["resource"] = organization(OTHER_ID)
    result = check_bundle(raw, OWN)
    assert result.entries[1].ok  # an Organization entry alone claims nothing
    obs = only_issue(result.entries[4].issues)  # performer urn:uuid → the Organization
    assert (obs.reason, obs.expression) == (
        "foreign-institution",
        ("Bundle.entry[4].resource.performer[0]",),
    )
    enc = only_issue(result.entries[2].issues)  # Encounter.serviceProvider
    assert enc.expression == ("Bundle.entry[2].resource.serviceProvider",)
    assert http_status(result.all_issues) == 403


def test_foreign_organization_entry_by_relative_reference() -> None:
    raw = imaging_batch()
    raw["entry"][1]["resource"]["identifier"] = [{"system": URI_SYSTEM, "value": OTHER_OID}]
    result = check_bundle(raw, OWN)
    issue = only_issue(result.entries[3].issues)
    assert issue.expression == ("Bundle.entry[3].resource.series[0].performer[0].actor",)
    assert issue.reason == "foreign-institution"


def test_organization_entry_without_institution_identifier() -> None:
    raw = lab_transaction()
    raw["entry"][1]["resource"]["identifier"] = [{"system": "urn:oid:1.2.3", "value": "dept-7"}]
    assert check_bundle(raw, OWN).ok


def test_foreign_assigner() -> None:
    p = patient()
    p["identifier"][1]["assigner"] = foreign_ref()
    checked = check(p)
    issue = only_issue(checked.issues)
    assert (issue.code, issue.reason, issue.expression) == (
        "forbidden",
        "foreign-institution",
        ("Patient.identifier[1].assigner",),
    )
    assert http_status(checked.issues) == 403
    obs = observation()
    obs["subject"]["identifier"]["assigner"] = {"reference": "#other"}
    obs["contained"] = [organization(OTHER_ID) | {"id": "other"}]
    issue = only_issue(check(obs).issues)
    assert issue.expression == ("Observation.subject.identifier.assigner",)


def test_forbidden_outranks_other_errors() -> None:
    obs = observation()
    obs["performer"] = [foreign_ref()]
    obs["code"] = 5
    del obs["effectiveDateTime"]
    assert http_status(check(obs).issues) == 403


# --------------------------------------------------------------------------- http_status


def test_http_status_mapping() -> None:
    def i(code: str, severity: str = "error") -> Issue:
        return Issue(severity, code, "x")  # type: ignore[arg-type]

    assert http_status([]) == 200
    assert http_status([i("structure", "warning"), i("forbidden", "information")]) == 200
    assert http_status([i("required"), i("structure")]) == 400
    assert http_status([i("invalid"), i("value")]) == 400
    assert http_status([i("required"), i("structure"), i("forbidden")]) == 403
    assert http_status([i("security")]) == 403
    for code in ("required", "value", "business-rule", "not-supported", "not-found"):
        assert http_status([i(code)]) == 422


def test_operation_outcome_of_refusal_is_valid_r4() -> None:
    raw = lab_transaction()
    raw["entry"][4]["resource"]["performer"] = [foreign_ref()]
    raw["entry"][0]["resource"]["identifier"][0]["value"] = BAD_ID_CARD
    raw["entry"][6]["resource"]["result"][0]["reference"] = "urn:uuid:gone"
    result = check_bundle(raw, OWN)
    oo = OperationOutcome.model_validate(operation_outcome(result.all_issues))
    assert len(oo.issue) == 3


# --------------------------------------------------------------------------- robustness

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(
        [
            ID_CARD,
            BAD_ID_CARD,
            "urn:uuid:x",
            PATIENT_URL,
            "#x",
            "Patient/p-mz00012345",
            ID_CARD_SYSTEM,
            INSTITUTION_SYSTEM,
            URI_SYSTEM,
            "urn:dicom:uid",
            *CLINICAL_TYPES,
            *CONTEXT_TYPES,
            "Bundle",
            "Foo",
            "transaction",
        ]
    )
)
json_keys = st.sampled_from(
    [
        "resourceType",
        "id",
        "identifier",
        "system",
        "value",
        "reference",
        "subject",
        "contained",
        "entry",
        "resource",
        "fullUrl",
        "type",
        "performer",
        "actor",
        "series",
        "assigner",
        "modality",
        "uid",
        "birthDate",
        "gender",
        "code",
        "status",
    ]
) | st.text(max_size=8)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(json_keys, children, max_size=5)
    ),
    max_leaves=30,
)

FIXTURES = [patient, observation, diagnostic_report, imaging_study, service_request]


def mutate(data: st.DataObject, node: Any) -> Any:
    """``node`` with one random element replaced, deleted or (in a list) duplicated."""
    if isinstance(node, dict) and node and data.draw(st.booleans()):
        key = data.draw(st.sampled_from(sorted(node)))
        action = data.draw(st.sampled_from(["descend", "replace", "delete"]))
        if action == "delete":
            del node[key]
        elif action == "replace" or not isinstance(node[key], dict | list):
            node[key] = data.draw(json_values)
        else:
            node[key] = mutate(data, node[key])
        return node
    if isinstance(node, list) and node and data.draw(st.booleans()):
        i = data.draw(st.integers(0, len(node) - 1))
        action = data.draw(st.sampled_from(["descend", "replace", "duplicate"]))
        if action == "duplicate":
            node.append(copy.deepcopy(node[i]))
        elif action == "replace":
            node[i] = data.draw(json_values)
        else:
            node[i] = mutate(data, node[i])
        return node
    return data.draw(json_values) if data.draw(st.booleans()) else node


def assert_well_formed(result: CheckedResource | BundleCheck) -> None:
    issues = result.all_issues if isinstance(result, BundleCheck) else result.issues
    assert all(isinstance(i, Issue) for i in issues)
    assert http_status(issues) in (200, 400, 403, 422)
    OperationOutcome.model_validate(operation_outcome(issues))
    text = all_text(issues)
    assert ID_CARD not in text and BAD_ID_CARD not in text


@settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(raw=json_values, expected=st.none() | st.sampled_from(CLINICAL_TYPES))
def test_random_json_never_raises(raw: Any, expected: str | None) -> None:
    assert_well_formed(check_resource(raw, OWN, expected_type=expected))
    assert_well_formed(check_bundle(raw, OWN))


@settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(data=st.data(), which=st.integers(0, len(FIXTURES) - 1), times=st.integers(1, 4))
def test_mutated_resources_never_raise(data: st.DataObject, which: int, times: int) -> None:
    raw: Any = FIXTURES[which]()
    for _ in range(times):
        raw = mutate(data, raw)
    assert_well_formed(check_resource(raw, OWN))


@settings(
    max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(data=st.data(), batch=st.booleans(), times=st.integers(1, 4))
def test_mutated_bundles_never_raise(data: st.DataObject, batch: bool, times: int) -> None:
    raw: Any = imaging_batch() if batch else lab_transaction()
    for _ in range(times):
        raw = mutate(data, raw)
    assert_well_formed(check_bundle(raw, OWN))


# --------------------------------------------------------------------------- performance


# ------------------------------------------------------------ nesting depth (issue 14, finding 7)


def nested(depth: int) -> Any:
    value: Any = 1
    for i in range(depth):
        value = [value] if i % 2 else {"a": value}
    return value


@pytest.mark.parametrize(
    ("depth", "limit", "over"),
    [(0, 1, False), (1, 1, False), (2, 1, True), (100, 100, False), (101, 100, True)],
)
def test_nesting_exceeds(depth: int, limit: int, over: bool) -> None:
    assert nesting_exceeds(nested(depth), limit) is over


def test_nesting_exceeds_counts_empty_containers() -> None:
    assert nesting_exceeds([[]], 1)
    assert not nesting_exceeds([[], {}], 2)
    assert not nesting_exceeds("x", 0)


def test_nesting_exceeds_does_not_recurse() -> None:
    assert nesting_exceeds(nested(50_000), 100)


@pytest.mark.parametrize("depth", [101, 900, 5_000, 100_000])
def test_parse_json_too_deep(depth: int) -> None:
    body = b"[" * depth + b"]" * depth
    value, issues = parse_json(body)
    assert value is None
    issue = only_issue(issues)
    assert (issue.code, issue.reason) == ("structure", "too-deep")
    assert http_status(issues) == 400


def test_parse_json_unclosed_deep_array_is_refused() -> None:
    value, issues = parse_json(b"[" * 100_000)
    assert value is None
    assert only_issue(issues).reason in {"too-deep", "malformed-json"}
    assert http_status(issues) == 400


def test_parse_json_depth_limit_is_configurable() -> None:
    body = json.dumps(nested(20)).encode()
    assert parse_json(body, max_depth=20)[1] == []
    assert only_issue(parse_json(body, max_depth=19)[1]).reason == "too-deep"


def test_bundle_at_the_depth_limit_is_parsed() -> None:
    body = json.dumps(lab_transaction()).encode()
    value, issues = parse_json(body)
    assert issues == []
    assert check_bundle(value, OWN).ok


# ------------------------------------------------------------ performers (issue 14, finding 10)


def role(org: dict[str, Any], rid: str = "role-1") -> dict[str, Any]:
    return {"resourceType": "PractitionerRole", "id": rid, "organization": org}


@pytest.mark.parametrize(
    "ref",
    [
        {"display": "检验科"},
        {"display": "浙江大学医学院附属第一医院", "type": "Organization"},
        {},
    ],
)
def test_performer_named_only_by_display_is_refused(ref: dict[str, Any]) -> None:
    obs = observation()
    obs["performer"] = [copy.deepcopy(OWN_ORG_REF), ref]
    issue = only_issue(check(obs).issues)
    assert (issue.code, issue.reason, issue.expression) == (
        "forbidden",
        "foreign-institution",
        ("Observation.performer[1]",),
    )
    assert "display" in issue.diagnostics
    assert http_status([issue]) == 403


def test_results_interpreter_named_only_by_display_is_refused() -> None:
    report = diagnostic_report()
    report["resultsInterpreter"] = [{"display": "王主任"}]
    issue = only_issue(check(report).issues)
    assert issue.expression == ("DiagnosticReport.resultsInterpreter[0]",)
    assert http_status([issue]) == 403


def test_practitioner_role_of_another_hospital_is_refused_contained() -> None:
    obs = observation()
    obs["contained"] = [role(foreign_ref())]
    obs["performer"] = [{"reference": "#role-1"}]
    issue = only_issue(check(obs).issues)
    assert (issue.reason, issue.expression) == (
        "foreign-institution",
        ("Observation.performer[0]",),
    )
    assert http_status([issue]) == 403
    assert OTHER_ID not in issue.diagnostics


def test_practitioner_role_of_another_hospital_is_refused_in_bundle() -> None:
    raw = lab_transaction()
    role_url = "urn:uuid:9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
    other_org_url = "urn:uuid:8a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
    raw["entry"].append(entry(other_org_url, organization(OTHER_ID) | {"id": "org-2"}))
    raw["entry"].append(entry(role_url, role({"reference": other_org_url})))
    raw["entry"][4]["resource"]["performer"] = [{"reference": role_url}]
    result = check_bundle(raw, OWN)
    issue = only_issue(result.entries[4].issues)
    assert (issue.reason, issue.expression) == (
        "foreign-institution",
        ("Bundle.entry[4].resource.performer[0]",),
    )
    assert http_status(result.all_issues) == 403


def test_practitioner_role_whose_organization_is_display_only_is_refused() -> None:
    obs = observation()
    obs["contained"] = [role({"display": "某医院"})]
    obs["performer"] = [{"reference": "#role-1"}]
    assert reasons(check(obs).issues) == {"foreign-institution"}


@pytest.mark.parametrize(
    "org",
    [
        {"identifier": {"system": INSTITUTION_SYSTEM, "value": OWN.id}},
        {"reference": "Organization/unknown"},
    ],
)
def test_practitioner_role_of_own_hospital_is_accepted(org: dict[str, Any]) -> None:
    obs = observation()
    obs["contained"] = [role(org)]
    obs["performer"] = [{"reference": "#role-1"}]
    assert check(obs).ok, check(obs).issues


def test_practitioner_role_in_bundle_of_own_hospital_is_accepted() -> None:
    raw = lab_transaction()
    role_url = "urn:uuid:9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
    raw["entry"].append(entry(role_url, role({"reference": ORG_URL})))
    raw["entry"][4]["resource"]["performer"] = [{"reference": role_url}]
    assert check_bundle(raw, OWN).ok


# ------------------------------------------------- parse_json: fast path = strict path

_TRICKY_TEXT = st.text(alphabet=st.sampled_from('a:"\\{}[]é身\u003a'), max_size=6)


def _json_text(data: st.DataObject, value: Any, pretty: bool) -> str:
    """``value`` as JSON text, pretty or compact, with ``:`` sometimes as ``\\u003a`` and,
    in some objects, a key written twice."""
    if isinstance(value, dict):
        items = [(json.dumps(k), _json_text(data, v, pretty)) for k, v in value.items()]
        if items and data.draw(st.integers(0, 9)) == 0:  # a duplicate key
            items.append((items[0][0], _json_text(data, data.draw(json_values), pretty)))
        sep = ", " if pretty else ","
        return "{" + sep.join(f"{k}{': ' if pretty else ':'}{v}" for k, v in items) + "}"
    if isinstance(value, list):
        return (
            "[" + (", " if pretty else ",").join(_json_text(data, v, pretty) for v in value) + "]"
        )
    text = json.dumps(value, ensure_ascii=data.draw(st.booleans()))
    if isinstance(value, str) and data.draw(st.booleans()):
        text = text.replace(":", "\\u003a")
    return text


@settings(max_examples=400, deadline=None, database=None)
@given(
    data=st.data(),
    value=st.recursive(
        json_scalars | _TRICKY_TEXT,
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(json_keys | _TRICKY_TEXT, children, max_size=4)
        ),
        max_leaves=30,
    ),
    pretty=st.booleans(),
    limit=st.integers(1, 12),
)
def test_parse_json_fast_path_agrees_with_the_strict_parser(
    data: st.DataObject, value: Any, pretty: bool, limit: int
) -> None:
    """msgspec and the checks on the bytes decide exactly as the pure-Python parser:
    the same value, or the same refusal (duplicate key, too deep)."""
    body = _json_text(data, value, pretty).encode()
    fast, strict = parse_json(body, max_depth=limit), _parse_strict(body, limit)
    assert fast == strict


@pytest.mark.parametrize("depth", [1, 2, 49, 50, 51, 99, 100, 101])
def test_parse_json_depth_exactly_at_the_limit(depth: int) -> None:
    """Both the quick bound and the exact count near the limit (objects and arrays mixed)."""
    body = json.dumps(nested(depth)).encode()
    for limit in (50, 100):
        issues = parse_json(body, max_depth=limit)[1]
        assert (issues == []) is (depth <= limit)
        if issues:
            assert only_issue(issues).reason == "too-deep"


def test_parse_json_decimal_exponent_and_big_integer_kept() -> None:
    value, issues = parse_json(b'{"a": 6.30, "b": 1.0e5, "c": 123456789012345678901234567890}')
    assert issues == []
    assert str(value["a"]) == "6.30" and value["b"] == Decimal("1.0e5")
    assert value["c"] == 123456789012345678901234567890
