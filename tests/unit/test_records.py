"""Business keys, content keys and record ids shared by the gateway and the patient index."""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

from services.common.fhir import DICOM_UID_SYSTEM
from services.common.identifiers import ID_CARD_SYSTEM, LAB_REPORT_NO_SYSTEM
from services.common.records import (
    business_identifier,
    business_key,
    content_digest,
    record_id_for,
)

INST = "12140000405001730E"
CARD = "110101199003074477"
PATIENT = [{"system": ID_CARD_SYSTEM, "value": CARD}]
UID = "1.2.840.113619.2.55.3.604688119.969.1268071029.320"


def potassium(value: Any = Decimal("4.2"), **extra: Any) -> dict[str, Any]:
    """A potassium result with no identifier and no id: only its content can key it."""
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2823-3"}]},
        "subject": {"reference": "urn:uuid:8c1b7a4e-0000-4000-8000-000000000001"},
        "effectiveDateTime": "2026-11-20T08:10:00+08:00",
        "issued": "2026-11-20T10:02:00+08:00",
        "valueQuantity": {"value": value, "unit": "mmol/L"},
        **extra,
    }


def key(res: dict[str, Any], patient: list[dict[str, str]] = PATIENT) -> str:
    return business_key(res["resourceType"], res, INST, patient)


def test_a_resend_of_an_unidentified_result_has_the_same_key_and_no_identifier_in_it() -> None:
    k = key(potassium())
    assert k.startswith(f"{INST}|Observation|content|")
    assert CARD not in k
    assert key(copy.deepcopy(potassium())) == k
    # the same number written otherwise, a later status, a later issue: the same result
    assert key(potassium(Decimal("4.20"))) == k
    assert key(potassium(4.2)) == k
    assert key({**potassium(), "status": "entered-in-error"}) == k
    assert key({**potassium(), "issued": "2026-11-21T09:00:00+08:00"}) == k
    # the same instant spelled in UTC
    assert key({**potassium(), "effectiveDateTime": "2026-11-20T00:10:00Z"}) == k


def test_another_value_time_code_or_patient_is_another_result() -> None:
    k = key(potassium())
    assert key(potassium(Decimal("4.3"))) != k
    assert key({**potassium(), "effectiveDateTime": "2026-11-21T08:10:00+08:00"}) != k
    other_code = {"coding": [{"system": "http://loinc.org", "code": "2951-2"}]}
    assert key({**potassium(), "code": other_code}) != k
    assert key(potassium(), [{"system": ID_CARD_SYSTEM, "value": "11010119900307447X"}]) != k
    assert business_key("Observation", potassium(), "other-inst", PATIENT) != k


def test_a_report_without_identifier_is_keyed_by_its_conclusion() -> None:
    rep = {
        "resourceType": "DiagnosticReport",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "24627-2"}]},
        "effectiveDateTime": "2026-11-20",
        "conclusion": "双肺未见明显异常。",
    }
    assert content_digest("DiagnosticReport", rep, PATIENT) == content_digest(
        "DiagnosticReport", {**rep, "status": "amended"}, PATIENT
    )
    assert key(rep) != key({**rep, "conclusion": "右肺上叶结节。"})


def test_identifiers_and_ids_still_come_first() -> None:
    res = potassium(identifier=[{"system": LAB_REPORT_NO_SYSTEM, "value": "JY-1"}])
    assert key(res) == f"{INST}|Observation|{LAB_REPORT_NO_SYSTEM}|JY-1|http://loinc.org|2823-3"
    assert key({**potassium(), "id": "k1"}) == f"{INST}|Observation|id|k1"


def test_a_report_finds_its_study_through_the_bundle_and_through_the_rewritten_reference() -> None:
    study = {
        "resourceType": "ImagingStudy",
        "identifier": [{"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{UID}"}],
    }
    report = {
        "resourceType": "DiagnosticReport",
        "imagingStudy": [{"reference": "urn:uuid:s1"}],
        "conclusion": "x",
    }
    entries = {"urn:uuid:s1": study}
    at_gateway = business_key("DiagnosticReport", report, INST, resolve=entries.get)
    assert at_gateway == f"{INST}|study|{UID}|DiagnosticReport"
    ident = business_identifier("ImagingStudy", study)
    assert ident == {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{UID}"}
    rewritten = {
        **report,
        "imagingStudy": [
            {
                "reference": f"ImagingStudy/{record_id_for(f'{INST}|study|{UID}')}",
                "identifier": ident,
            }
        ],
    }
    assert business_key("DiagnosticReport", rewritten, INST) == at_gateway
    # without the bundle, an unresolved urn:uuid gives no study
    assert "|study|" not in business_key("DiagnosticReport", report, INST)


def test_a_record_id_is_32_hex_of_the_key() -> None:
    rid = record_id_for(key(potassium()))
    assert len(rid) == 32 and int(rid, 16) >= 0
    assert business_identifier("Observation", potassium()) is None
    assert (
        business_identifier(
            "Observation", potassium(identifier=[{"system": ID_CARD_SYSTEM, "value": CARD}])
        )
        is None
    )


def test_the_patient_is_its_id_card_however_the_post_names_it() -> None:
    """Posted alone (``subject.identifier``: the 身份证) or in a bundle whose Patient also
    has a hospital number, the same result is the same record."""
    with_mz = [*PATIENT, {"system": "urn:oid:2.16.156.10011.1.10", "value": "MZ0001"}]
    assert key(potassium(), with_mz) == key(potassium())
    lower_x = [{"system": ID_CARD_SYSTEM, "value": "11010119900307447x"}]
    upper_x = [{"system": ID_CARD_SYSTEM, "value": "11010119900307447X"}]
    assert key(potassium(), lower_x) == key(potassium(), upper_x)
    # without a 身份证, every identifier counts
    mz_only = [{"system": "urn:oid:2.16.156.10011.1.10", "value": "MZ0001"}]
    assert key(potassium(), mz_only) != key(potassium())
