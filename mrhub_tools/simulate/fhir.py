"""FHIR R4 bodies of the simulated stream, as hospitals' HIS / LIS / PACS post them.

Every body is built from the scenario at send time (nothing random here), so a resend is
byte-for-byte the first post, and the same scenario always gives the same bodies.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

from mrhub_tools.simulate.scenario import OrderSpec, Request, ResultSpec, Scenario, View, _hash
from services.common.codec import dumps
from services.common.fhir import DICOM_UID_SYSTEM, INSTITUTION_SYSTEM
from services.common.identifiers import (
    DOCUMENT_TYPE_SYSTEM,
    ID_CARD_SYSTEM,
    LAB_REPORT_NO_SYSTEM,
    ORDER_NO_SYSTEM,
    OUTPATIENT_NO_SYSTEM,
)
from services.recognition.catalog import Catalog, Item

LOINC: Final = "http://loinc.org"
SNOMED: Final = "http://snomed.info/sct"
DCM: Final = "http://dicom.nema.org/resources/ontology/DCM"
UCUM: Final = "http://unitsofmeasure.org"
V2_0074: Final = "http://terminology.hl7.org/CodeSystem/v2-0074"
OBS_CATEGORY: Final = "http://terminology.hl7.org/CodeSystem/observation-category"
CONTRAST: Final = "https://fhir.mrhub.cn/StructureDefinition/contrast"

#: item → (unit, low, high, decimal places) for the value; others report a text.
VALUES: Final[dict[str, tuple[str, str, str]]] = {
    "K": ("mmol/L", "3.50", "5.30"),
    "NA": ("mmol/L", "137.0", "147.0"),
    "GLU": ("mmol/L", "3.90", "6.10"),
    "HBA1C": ("%", "4.0", "6.0"),
    "ALT": ("U/L", "9", "50"),
    "CREA": ("umol/L", "57", "111"),
    "TC": ("mmol/L", "2.80", "5.20"),
    "TSH": ("mIU/L", "0.27", "4.20"),
    "AFP": ("ng/mL", "0.0", "7.0"),
    "PT": ("s", "9.4", "12.5"),
}


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


def _org(inst_id: str, name: str | None = None) -> dict[str, Any]:
    ref: dict[str, Any] = {"identifier": {"system": INSTITUTION_SYSTEM, "value": inst_id}}
    if name:
        ref["display"] = name
    return ref


def _url(*parts: object) -> str:
    return f"urn:uuid:{uuid.UUID(_hash(*parts)[:32])}"


def patient(view: View) -> dict[str, Any]:
    idents: list[dict[str, Any]] = []
    if view.card:
        idents.append(
            {
                "use": "official",
                "type": {"coding": [{"system": DOCUMENT_TYPE_SYSTEM, "code": "01"}]},
                "system": ID_CARD_SYSTEM,
                "value": view.card,
            }
        )
    idents.append(
        {
            "use": "usual",
            "type": {"text": "门诊号"},
            "system": OUTPATIENT_NO_SYSTEM,
            "value": view.mz,
            "assigner": _org(view.institution),
        }
    )
    latin = view.family.isascii()
    return {
        "resourceType": "Patient",
        "identifier": idents,
        "name": [
            {
                "use": "official",
                "text": f"{view.family} {view.given}" if latin else view.family + view.given,
                "family": view.family,
                "given": [view.given],
            }
        ],
        "telecom": [{"system": "phone", "value": view.phone, "use": "mobile"}],
        "gender": view.sex,
        "birthDate": view.born.isoformat(),
        "address": [{"text": view.address}],
    }


def subject_identifier(view: View) -> dict[str, Any]:
    """``subject`` of a resource posted on its own: the 身份证, else the 门诊号."""
    if view.card:
        return {"identifier": {"system": ID_CARD_SYSTEM, "value": view.card}}
    return {
        "identifier": {
            "system": OUTPATIENT_NO_SYSTEM,
            "value": view.mz,
            "assigner": _org(view.institution),
        }
    }


def item_coding(catalog: Catalog, item: Item) -> list[dict[str, Any]]:
    out = []
    if item.codes.provincial and catalog.code_systems.provincial:
        out.append(
            {
                "system": catalog.code_systems.provincial,
                "code": item.codes.provincial,
                "display": item.name,
            }
        )
    if item.codes.price and catalog.code_systems.price:
        out.append({"system": catalog.code_systems.price, "code": item.codes.price})
    out += [{"system": LOINC, "code": c} for c in item.codes.loinc[:1]]
    return out


def _value(item_id: str, seed: str, shift: int) -> dict[str, Any]:
    spec = VALUES.get(item_id)
    if spec is None:
        return {"valueString": "详见报告" if shift == 0 else f"详见报告（更正{shift}）"}
    unit, low, high = spec
    places = len(low.partition(".")[2])
    lo, hi = Decimal(low), Decimal(high)
    frac = Decimal(int(_hash(seed, shift)[:6], 16) % 1000) / 1000
    value = (lo + (hi - lo) * (frac * Decimal("1.4") - Decimal("0.2"))).quantize(
        Decimal(1).scaleb(-places)
    )
    value = max(value, Decimal(0))
    q = {"value": value, "unit": unit, "system": UCUM, "code": unit}
    return {"valueQuantity": q, "referenceRange": [{"text": f"{low}-{high} {unit}"}]}


def observation(
    scn: Scenario, r: ResultSpec, item_id: str, version: int, subject: dict[str, Any]
) -> dict[str, Any]:
    item = scn.catalog.item(item_id)
    if item is None:
        raise ValueError("an item the scenario uses is not in the catalogue")
    v = r.versions[version] if item_id == r.target else r.versions[0]
    status = v.status if item_id == r.target else "final"
    name = scn.institutions[r.institution].name
    return {
        "resourceType": "Observation",
        "identifier": [
            {"system": LAB_REPORT_NO_SYSTEM, "value": r.number, "assigner": _org(r.institution)}
        ],
        "status": status,
        "category": [{"coding": [{"system": OBS_CATEGORY, "code": "laboratory"}]}],
        "code": {"coding": item_coding(scn.catalog, item), "text": item.name},
        "subject": subject,
        "effectiveDateTime": _iso(r.performed_at),
        "issued": _iso(v.issued_at),
        "performer": [_org(r.institution, name)],
        **_value(item_id, f"{scn.config.salt}|{r.n}|{item_id}", v.value_shift),
    }


def imaging_study(scn: Scenario, r: ResultSpec, subject: dict[str, Any]) -> dict[str, Any]:
    item = scn.catalog.item(r.target)
    if item is None or item.imaging is None:
        raise ValueError(f"not an imaging item: {r.target}")
    spec = item.imaging
    modality = {"system": DCM, "code": spec.modalities[0]}
    site = {"system": SNOMED, "code": spec.body_sites[0]} if spec.body_sites else None
    instances = 40 + int(_hash("n", r.number)[:4], 16) % 400
    series: dict[str, Any] = {
        "uid": f"{r.number}.1",
        "number": 1,
        "modality": modality,
        "numberOfInstances": instances,
    }
    if site:
        series["bodySite"] = site
    return {
        "resourceType": "ImagingStudy",
        "extension": [{"url": CONTRAST, "valueBoolean": spec.contrast}],
        "identifier": [{"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{r.number}"}],
        "status": "available",
        "modality": [modality],
        "subject": subject,
        "started": _iso(r.performed_at),
        "numberOfSeries": 1,
        "numberOfInstances": instances,
        "procedureCode": [{"coding": item_coding(scn.catalog, item), "text": item.name}],
        "series": [series],
    }


def imaging_report(
    scn: Scenario, r: ResultSpec, version: int, subject: dict[str, Any], study_url: str | None
) -> dict[str, Any]:
    item = scn.catalog.item(r.target)
    if item is None:
        raise ValueError("an item the scenario uses is not in the catalogue")
    v = r.versions[version]
    doc: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "identifier": [{"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{r.number}"}],
        "status": v.status,
        "category": [{"coding": [{"system": V2_0074, "code": "RAD"}]}],
        "code": {"coding": item_coding(scn.catalog, item), "text": item.name},
        "subject": subject,
        "effectiveDateTime": _iso(r.performed_at),
        "issued": _iso(v.issued_at),
        "performer": [_org(r.institution, scn.institutions[r.institution].name)],
        "conclusion": "未见明显异常" if v.value_shift == 0 else f"更正报告（第{v.value_shift}版）",
    }
    if study_url:
        doc["imagingStudy"] = [{"reference": study_url}]
    return doc


def _entry(url: str, resource: dict[str, Any]) -> dict[str, Any]:
    return {
        "fullUrl": url,
        "resource": resource,
        "request": {"method": "POST", "url": resource["resourceType"]},
    }


def result_bundle(scn: Scenario, r: ResultSpec) -> dict[str, Any]:
    """The visit: the Patient, and the lab results with their report, or the study and its
    report, linked by ``urn:uuid:`` references."""
    salt = scn.config.salt
    p_url = _url("patient", salt, r.n)
    subject = {"reference": p_url}
    entries = [_entry(p_url, patient(r.view))]
    if r.category == "lab":
        refs = []
        for item_id in r.items:
            url = _url("obs", salt, r.n, item_id)
            entries.append(_entry(url, observation(scn, r, item_id, 0, subject)))
            refs.append({"reference": url})
        inst = scn.institutions[r.institution]
        report = {
            "resourceType": "DiagnosticReport",
            "identifier": [
                {"system": LAB_REPORT_NO_SYSTEM, "value": r.number, "assigner": _org(inst.id)}
            ],
            "status": "final",
            "category": [{"coding": [{"system": V2_0074, "code": "CH"}]}],
            "code": {
                "coding": [{"system": f"urn:oid:{inst.oid}.5", "code": "PANEL"}],
                "text": "检验报告",
            },
            "subject": subject,
            "effectiveDateTime": _iso(r.performed_at),
            "issued": _iso(r.versions[0].issued_at),
            "performer": [_org(inst.id, inst.name)],
            "result": refs,
        }
        entries.append(_entry(_url("report", salt, r.n), report))
    else:
        s_url = _url("study", salt, r.n)
        entries.append(_entry(s_url, imaging_study(scn, r, subject)))
        entries.append(_entry(_url("report", salt, r.n), imaging_report(scn, r, 0, subject, s_url)))
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def order_bundle(scn: Scenario, o: OrderSpec) -> dict[str, Any]:
    """The order as the HIS sends it: the Patient and the ServiceRequest."""
    p_url = _url("order-patient", scn.config.salt, o.n)
    sr: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "identifier": [
            {"system": ORDER_NO_SYSTEM, "value": o.number, "assigner": _org(o.institution)}
        ],
        "status": "active",
        "intent": "order",
        "subject": {"reference": p_url},
        "authoredOn": _iso(o.authored_at),
        "occurrenceDateTime": _iso(o.authored_at),
        "requester": _org(o.institution, scn.institutions[o.institution].name),
    }
    item = scn.catalog.item(o.item) if o.item else None
    if item is None:
        system, code, display = ("http://loinc.org", "1989-3", "25-羟基维生素D")
        sr["category"] = [{"coding": [{"system": SNOMED, "code": "108252007"}]}]
        sr["code"] = {"coding": [{"system": system, "code": code, "display": display}]}
    elif item.imaging is not None:
        spec = item.imaging
        sr["extension"] = [{"url": CONTRAST, "valueBoolean": spec.contrast}]
        sr["category"] = [{"coding": [{"system": SNOMED, "code": "363679005"}]}]
        codes = [*item_coding(scn.catalog, item), {"system": DCM, "code": spec.modalities[0]}]
        sr["code"] = {"coding": codes, "text": item.name}
        if spec.body_sites:
            sr["bodySite"] = [{"coding": [{"system": SNOMED, "code": spec.body_sites[0]}]}]
    else:
        sr["category"] = [{"coding": [{"system": SNOMED, "code": "108252007"}]}]
        sr["code"] = {"coding": item_coding(scn.catalog, item), "text": item.name}
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [_entry(p_url, patient(o.view)), _entry(_url("order", scn.config.salt, o.n), sr)],
    }


def _malformed(scn: Scenario, kind: str, n: int) -> tuple[str, bytes]:
    view = scn.malformed[n][2]
    salt = scn.config.salt
    if kind == "invalid-json":
        return "/fhir", b'{"resourceType": "Bundle", "type": "transaction", "entry": ['
    if kind == "unknown-type":
        return "/fhir/Medication", dumps({"resourceType": "Medication", "status": "active"})
    now = scn.config.now
    if kind == "order-without-authored":
        return "/fhir/ServiceRequest", dumps(
            {
                "resourceType": "ServiceRequest",
                "identifier": [{"system": ORDER_NO_SYSTEM, "value": f"BAD{salt}{n}"}],
                "status": "active",
                "intent": "order",
                "code": {"coding": [{"system": LOINC, "code": "2823-3"}]},
                "subject": subject_identifier(view),
            }
        )
    obs = {
        "resourceType": "Observation",
        "identifier": [{"system": LAB_REPORT_NO_SYSTEM, "value": f"BAD{salt}{n}"}],
        "status": "final",
        "category": [{"coding": [{"system": OBS_CATEGORY, "code": "laboratory"}]}],
        "code": {"coding": [{"system": LOINC, "code": "2823-3"}]},
        "subject": subject_identifier(view),
        "issued": _iso(now),
        "valueQuantity": {"value": Decimal("4.10"), "unit": "mmol/L"},
    }
    if kind == "missing-effective":
        return "/fhir/Observation", dumps(obs)
    # bad-id-card: a visit whose Patient carries a mistyped 身份证
    p_url = _url("bad", salt, n)
    obs = {**obs, "subject": {"reference": p_url}, "effectiveDateTime": _iso(now)}
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [_entry(p_url, patient(view)), _entry(_url("bad-obs", salt, n), obs)],
    }
    return "/fhir", dumps(bundle)


def build(scn: Scenario, req: Request) -> tuple[str, bytes]:
    """The path and body of one request of the stream."""
    what = req.ref[0]
    if what == "result":
        _, n, version = req.ref
        if not (isinstance(n, int) and isinstance(version, int)):
            raise TypeError(req.ref)
        r = scn.results[n]
        if version == 0:
            return "/fhir", dumps(result_bundle(scn, r))
        subject = subject_identifier(r.view)
        if r.category == "lab":
            return "/fhir/Observation", dumps(observation(scn, r, r.target, version, subject))
        return "/fhir/DiagnosticReport", dumps(imaging_report(scn, r, version, subject, None))
    if what == "order":
        n = req.ref[1]
        if not isinstance(n, int):
            raise TypeError(req.ref)
        return "/fhir", dumps(order_bundle(scn, scn.orders[n]))
    kind, n = req.ref[1], req.ref[2]
    if not (isinstance(kind, str) and isinstance(n, int)):
        raise TypeError(req.ref)
    return _malformed(scn, kind, n)
