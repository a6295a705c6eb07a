"""DICOM JSON (QIDO-RS answers) → the FHIR R4 ``ImagingStudy`` the PACS connector posts. Pure.

The study comes from ``GET {dicomweb}/studies?StudyInstanceUID=…``, its series from
``…/studies/{uid}/series`` and each series' instances from ``…/series/{uid}/instances``.
The patient is ``subject.identifier``: PatientID (0010,0020) with the system the connector is
configured with (a hospital's own number by default, or 身份证). The endpoint is a contained
``Endpoint`` whose address is the PACS's DICOMweb root, so the patient index puts the address
in the canonical record and the imaging index hands it to viewers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from services.common.fhir import DICOM_UID_SYSTEM
from services.imaging_index.studies import DICOM_DCM_SYSTEM

CONNECTION_TYPE_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/endpoint-connection-type"
ACCESSION_TYPE: Final = {
    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]
}

STUDY_UID = "0020000D"
SERIES_UID = "0020000E"
SOP_INSTANCE_UID = "00080018"
SOP_CLASS_UID = "00080016"
PATIENT_ID = "00100020"
STUDY_DATE = "00080020"
STUDY_TIME = "00080030"
ACCESSION = "00080050"
MODALITIES_IN_STUDY = "00080061"
MODALITY = "00080060"
STUDY_DESCRIPTION = "00081030"
SERIES_DESCRIPTION = "0008103E"
BODY_PART = "00180015"
SERIES_NUMBER = "00200011"
INSTANCE_NUMBER = "00200013"
SERIES_COUNT = "00201206"
INSTANCE_COUNT = "00201208"
SERIES_INSTANCES = "00201209"

#: Attributes to ask for with ``includefield`` (Orthanc omits some by default).
STUDY_FIELDS: Final = (STUDY_DESCRIPTION, MODALITIES_IN_STUDY, SERIES_COUNT, INSTANCE_COUNT)
SERIES_FIELDS: Final = (SERIES_DESCRIPTION, BODY_PART, SERIES_NUMBER, SERIES_INSTANCES)


def value(ds: Mapping[str, Any], tag: str) -> Any:
    """The first value of ``tag`` in a DICOM JSON dataset, else ``None``."""
    attr = ds.get(tag)
    if not isinstance(attr, Mapping):
        return None
    values = attr.get("Value")
    if not isinstance(values, list) or not values:
        return None
    return values[0]


def values(ds: Mapping[str, Any], tag: str) -> list[Any]:
    attr = ds.get(tag)
    found = attr.get("Value") if isinstance(attr, Mapping) else None
    return [v for v in found if v not in (None, "")] if isinstance(found, list) else []


def _text(ds: Mapping[str, Any], tag: str) -> str | None:
    v = value(ds, tag)
    return str(v).strip() or None if v is not None else None


def _int(ds: Mapping[str, Any], tag: str) -> int | None:
    v = value(ds, tag)
    try:
        return int(v) if v is not None else None
    except (TypeError, ValueError):
        return None


def fhir_started(day: str | None, time: str | None, offset: str) -> str | None:
    """A FHIR ``dateTime`` from DICOM DA (``YYYYMMDD``) and TM (``HHMMSS.FFFFFF``, parts may
    be missing), at ``offset`` (DICOM times are local)."""
    if not day or len(day) != 8 or not day.isdigit():
        return None
    out = f"{day[:4]}-{day[4:6]}-{day[6:]}"
    t = (time or "").replace(":", "").strip()
    digits = t.split(".")[0]
    if len(digits) < 4 or not digits.isdigit():
        return out
    hh, mm, ss = digits[:2], digits[2:4], digits[4:6] or "00"
    frac = t.split(".")[1] if "." in t else ""
    frac = f".{frac[:6]}" if frac.isdigit() else ""
    return f"{out}T{hh}:{mm}:{ss}{frac}{offset}"


def imaging_study(
    study: Mapping[str, Any],
    series: Sequence[tuple[Mapping[str, Any], Sequence[Mapping[str, Any]]]],
    *,
    patient_system: str,
    endpoint: str,
    offset: str = "+08:00",
) -> dict[str, Any]:
    """The ImagingStudy for one study: ``series`` pairs each series dataset with its
    instances' datasets. Raises ``ValueError`` without a Study Instance UID or PatientID."""
    uid = _text(study, STUDY_UID)
    if uid is None:
        raise ValueError("the study has no Study Instance UID")
    patient_id = _text(study, PATIENT_ID)
    if patient_id is None:
        raise ValueError("the study has no PatientID")
    identifiers: list[dict[str, Any]] = [{"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{uid}"}]
    accession = _text(study, ACCESSION)
    if accession:
        identifiers.append({"type": ACCESSION_TYPE, "value": accession})
    series_out: list[dict[str, Any]] = []
    modalities: list[str] = [str(m).upper() for m in values(study, MODALITIES_IN_STUDY)]
    for ds, instances in series:
        suid = _text(ds, SERIES_UID)
        modality = _text(ds, MODALITY)
        if suid is None or modality is None:
            continue
        if modality.upper() not in modalities:
            modalities.append(modality.upper())
        item: dict[str, Any] = {
            "uid": suid,
            "modality": {"system": DICOM_DCM_SYSTEM, "code": modality.upper()},
        }
        if (number := _int(ds, SERIES_NUMBER)) is not None:
            item["number"] = number
        if description := _text(ds, SERIES_DESCRIPTION):
            item["description"] = description
        count = _int(ds, SERIES_INSTANCES)
        item["numberOfInstances"] = count if count is not None else len(instances)
        if body_part := _text(ds, BODY_PART):
            # the DICOM Body Part Examined term; the recognition catalogue matches it as is
            item["bodySite"] = {"code": body_part.upper(), "display": body_part}
        inst_out = []
        for inst in instances:
            sop, sop_class = _text(inst, SOP_INSTANCE_UID), _text(inst, SOP_CLASS_UID)
            if sop is None or sop_class is None:
                continue
            entry: dict[str, Any] = {
                "uid": sop,
                "sopClass": {"system": "urn:ietf:rfc:3986", "code": f"urn:oid:{sop_class}"},
            }
            if (n := _int(inst, INSTANCE_NUMBER)) is not None:
                entry["number"] = n
            inst_out.append(entry)
        if inst_out:
            item["instance"] = inst_out
        series_out.append(item)
    series_out.sort(key=lambda s: (s.get("number", 0), s["uid"]))
    doc: dict[str, Any] = {
        "resourceType": "ImagingStudy",
        "contained": [
            {
                "resourceType": "Endpoint",
                "id": "dicomweb",
                "status": "active",
                "connectionType": {"system": CONNECTION_TYPE_SYSTEM, "code": "dicom-wado-rs"},
                "payloadType": [{"text": "DICOM"}],
                "payloadMimeType": ["application/dicom"],
                "address": endpoint.rstrip("/"),
            }
        ],
        "identifier": identifiers,
        "status": "available",
        "modality": [{"system": DICOM_DCM_SYSTEM, "code": m} for m in modalities],
        "subject": {"identifier": {"system": patient_system, "value": patient_id}},
    }
    started = fhir_started(_text(study, STUDY_DATE), _text(study, STUDY_TIME), offset)
    if started:
        doc["started"] = started
    doc["endpoint"] = [{"reference": "#dicomweb"}]
    n_series = _int(study, SERIES_COUNT)
    doc["numberOfSeries"] = n_series if n_series is not None else len(series_out)
    n_inst = _int(study, INSTANCE_COUNT)
    doc["numberOfInstances"] = (
        n_inst if n_inst is not None else sum(s["numberOfInstances"] for s in series_out)
    )
    if description := _text(study, STUDY_DESCRIPTION):
        doc["description"] = description
    if series_out:
        doc["series"] = series_out
    return doc
