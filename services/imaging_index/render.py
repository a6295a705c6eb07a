"""How a study is shown: a FHIR R4 ``ImagingStudy`` (in a searchset ``Bundle``) and a QIDO-RS
study in the DICOM JSON model (PS3.18 F.2). Pure.

Both show only what the reader's scope allows (:func:`services.imaging_index.studies.view`
has filtered the sources). The patient is shown as the hub's master patient id, never as the
identifier the caller asked with; no name, birth date or sex is known here, so the QIDO
attributes for them are present and empty.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Final

from services.common.fhir import DICOM_UID_SYSTEM, INSTITUTION_SYSTEM
from services.imaging_index.studies import DICOM_DCM_SYSTEM, StudyView

MASTER_PATIENT_SYSTEM: Final = "https://fhir.mrhub.cn/sid/master-patient"
RECORD_ID_SYSTEM: Final = "https://fhir.mrhub.cn/NamingSystem/record-id"
#: Hub extension on ImagingStudy: the study's report (a reference by the hub's record id).
REPORT_EXTENSION: Final = "https://fhir.mrhub.cn/StructureDefinition/imaging-report"
#: Hub extension on ImagingStudy: a body site of the study (R4 has one per series only).
BODY_SITE_EXTENSION: Final = "https://fhir.mrhub.cn/StructureDefinition/imaging-body-site"
#: Hub extension on Endpoint: the last reachability check (valueCode) …
CHECK_EXTENSION: Final = "https://fhir.mrhub.cn/StructureDefinition/endpoint-check"
#: … and when it was made (valueDateTime).
CHECKED_AT_EXTENSION: Final = "https://fhir.mrhub.cn/StructureDefinition/endpoint-checked-at"
#: Same URL as the patient index reads contrast from.
CONTRAST_EXTENSION: Final = "https://fhir.mrhub.cn/StructureDefinition/contrast"
CONNECTION_TYPE_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/endpoint-connection-type"
_FHIR_STATUSES: Final = frozenset(
    {"registered", "available", "cancelled", "entered-in-error", "unknown"}
)


def _endpoint_resource(n: int, study: StudyView) -> dict[str, Any]:
    ep = study.endpoints[n]
    extension: list[dict[str, Any]] = [{"url": CHECK_EXTENSION, "valueCode": ep.status}]
    if ep.checked_at:
        extension.append({"url": CHECKED_AT_EXTENSION, "valueDateTime": ep.checked_at})
    return {
        "resourceType": "Endpoint",
        "id": f"ep{n}",
        "extension": extension,
        "status": "error" if ep.status in ("missing", "unreachable") else "active",
        "connectionType": {"system": CONNECTION_TYPE_SYSTEM, "code": "dicom-wado-rs"},
        "managingOrganization": {
            "type": "Organization",
            "identifier": {"system": INSTITUTION_SYSTEM, "value": ep.institution},
        },
        "payloadType": [{"text": "DICOM"}],
        "payloadMimeType": ["application/dicom"],
        "address": ep.url,
    }


def _coding(code: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: code[k] for k in ("system", "code", "display") if code.get(k)}
    return out


def fhir_imaging_study(study: StudyView) -> dict[str, Any]:
    """An R4 ``ImagingStudy`` (its endpoints contained, referenced as ``#ep0``…)."""
    extension: list[dict[str, Any]] = []
    if study.contrast is not None:
        extension.append({"url": CONTRAST_EXTENSION, "valueBoolean": study.contrast})
    extension.extend(
        {"url": BODY_SITE_EXTENSION, "valueCoding": _coding(site)}
        for site in study.body_sites
        if site.get("code")
    )
    if study.report is not None:
        extension.append(
            {
                "url": REPORT_EXTENSION,
                "valueReference": {
                    "type": "DiagnosticReport",
                    "identifier": {"system": RECORD_ID_SYSTEM, "value": study.report.record_id},
                    "display": f"report ({study.report.status})",
                },
            }
        )
    doc: dict[str, Any] = {"resourceType": "ImagingStudy", "id": study.key}
    if study.endpoints:
        doc["contained"] = [_endpoint_resource(n, study) for n in range(len(study.endpoints))]
    if extension:
        doc["extension"] = extension
    doc["identifier"] = [{"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{study.study_uid}"}]
    doc["status"] = study.status if study.status in _FHIR_STATUSES else "unknown"
    if study.modalities:
        doc["modality"] = [{"system": DICOM_DCM_SYSTEM, "code": m} for m in study.modalities]
    doc["subject"] = {
        "type": "Patient",
        "identifier": {"system": MASTER_PATIENT_SYSTEM, "value": study.master_patient_id},
    }
    if study.performed_at:
        doc["started"] = study.performed_at
    if study.endpoints:
        doc["endpoint"] = [{"reference": f"#ep{n}"} for n in range(len(study.endpoints))]
    if study.series_count is not None:
        doc["numberOfSeries"] = study.series_count
    if study.instance_count is not None:
        doc["numberOfInstances"] = study.instance_count
    codes = [_coding(c) for c in study.procedure_codes if c.get("code")]
    if codes:
        doc["procedureCode"] = [{"coding": [c]} for c in codes]
    if study.description:
        doc["description"] = study.description
    return doc


def searchset(
    page: Sequence[StudyView],
    *,
    total: int,
    base_url: str,
    links: Mapping[str, str],
    timestamp: datetime,
) -> dict[str, Any]:
    """A searchset ``Bundle`` of one page of studies; ``links`` by relation (self, next…)."""
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "timestamp": timestamp.isoformat(),
        "total": total,
        "link": [{"relation": rel, "url": url} for rel, url in links.items()],
        "entry": [
            {
                "fullUrl": f"{base_url}/fhir/ImagingStudy/{s.key}",
                "resource": fhir_imaging_study(s),
                "search": {"mode": "match"},
            }
            for s in page
        ],
    }


def _attr(vr: str, *values: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"vr": vr}
    kept = [v for v in values if v is not None and v != ""]
    if kept:
        out["Value"] = kept
    return out


def _dicom_date_time(moment: str | None) -> tuple[str | None, str | None]:
    """DICOM ``DA`` and ``TM`` of a start time, in the offset it was posted with."""
    if not moment:
        return None, None
    try:
        parsed = datetime.fromisoformat(moment)
    except ValueError:
        return None, None
    return parsed.strftime("%Y%m%d"), parsed.strftime("%H%M%S")


def qido_study(study: StudyView) -> dict[str, Any]:
    """One QIDO-RS study result (DICOM JSON), with ``RetrieveURL`` (0008,1190) at the best
    endpoint's WADO-RS study URL."""
    day, time = _dicom_date_time(study.performed_at)
    retrieve = study.endpoints[0].retrieve_url(study.study_uid) if study.endpoints else None
    doc = {
        "00080005": _attr("CS", "ISO_IR 192"),
        "00080020": _attr("DA", day),
        "00080030": _attr("TM", time),
        "00080050": _attr("SH"),
        "00080056": _attr("CS", "ONLINE" if retrieve else "UNAVAILABLE"),
        "00080061": _attr("CS", *study.modalities),
        "00080090": _attr("PN"),
        "00081030": _attr("LO", study.description),
        "00081190": _attr("UR", retrieve),
        "00100010": _attr("PN"),
        "00100020": _attr("LO", study.master_patient_id),
        "00100021": _attr("LO", MASTER_PATIENT_SYSTEM),
        "00100030": _attr("DA"),
        "00100040": _attr("CS"),
        "0020000D": _attr("UI", study.study_uid),
        "00200010": _attr("SH"),
        "00201206": _attr("IS", study.series_count),
        "00201208": _attr("IS", study.instance_count),
    }
    return doc
