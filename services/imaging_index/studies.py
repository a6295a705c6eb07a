"""What the imaging index keeps per study, and how each canonical record changes it. Pure:
no faust, Kafka or I/O.

A study is identified by its Study Instance UID, whoever posts it. :class:`Study` holds one
:class:`Source` per posting institution (a hospital and its regional imaging cloud are two
sources of one study, each with its own DICOMweb endpoint), the report of the study when
one arrives, the reachability checks of its endpoints, and the patient it belongs to.

:func:`apply_record` folds one ``mrhub.results.result-indexed.v1`` payload (an imaging
``ImagingStudy`` or ``DiagnosticReport`` result) into the stored study:

- an ImagingStudy ``new`` / ``update`` sets that institution's source; the study belongs to
  the master patient of the latest ImagingStudy event (a merge, unmerge or relink moves it:
  the patient index re-publishes the record under the new master);
- an ImagingStudy ``retraction`` withdraws the whole study, every source (the patient index
  withdraws the record, not one copy of it: a study entered in error for the wrong patient
  is wrong in the imaging cloud too); a later post brings it back;
- a DiagnosticReport attaches (or, retracted, detaches) the report;
- an event older (``occurred_at``) than one already applied for the same record id is
  stale and ignored: versions of one record may arrive out of order when a merge moved the
  record between partitions.

A study is *listed* once it has at least one source; a report alone lists nothing.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict

#: DICOM modality codes counted under their own label in metrics (anything else: ``other``).
KNOWN_MODALITIES: Final = frozenset(
    {
        "CR",
        "CT",
        "DX",
        "ECG",
        "ES",
        "IO",
        "MG",
        "MR",
        "NM",
        "OP",
        "OT",
        "PT",
        "PX",
        "RF",
        "RG",
        "SM",
        "US",
        "XA",
        "XC",
    }
)
DICOM_DCM_SYSTEM: Final = "http://dicom.nema.org/resources/ontology/DCM"

CheckStatus = Literal["available", "missing", "unreachable"]
EndpointStatus = Literal["unchecked", "available", "missing", "unreachable"]
Change = Literal["new", "update", "retraction"]

_STATUS_RANK: Final[dict[str, int]] = {
    "available": 0,
    "unchecked": 1,
    "missing": 2,
    "unreachable": 3,
}
_STUDIES_SUFFIX = re.compile(r"/studies(/[0-9.]+)?/?$")


def study_key(study_uid: str) -> str:
    """The id the index keys a study by (Kafka keys, tables, FHIR ``id``): SHA-256 of the
    UID, 32 hex, so no UID travels in a Kafka key."""
    return hashlib.sha256(f"mrhub-study-v1|{study_uid}".encode()).hexdigest()[:32]


def modality_label(code: str) -> str:
    """A bounded metric label for a modality code."""
    code = code.strip().upper()
    return code if code in KNOWN_MODALITIES else "other"


def dicomweb_base(address: str) -> str | None:
    """The DICOMweb service root of an endpoint address as posted, or ``None`` when it is
    not an http(s) URL (an ``Endpoint/123`` or ``urn:uuid:`` reference says nothing
    usable). A trailing ``/studies`` or ``/studies/<uid>`` is cut off."""
    address = address.strip()
    if not address.lower().startswith(("http://", "https://")):
        return None
    return _STUDIES_SUFFIX.sub("", address.rstrip("/")).rstrip("/") or None


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class Source(_Model):
    """One institution's copy of the study, from its latest ImagingStudy event."""

    institution: str
    record_id: str
    status: str
    modalities: tuple[str, ...] = ()
    body_sites: tuple[dict[str, Any], ...] = ()
    contrast: bool | None = None
    series_count: int | None = None
    instance_count: int | None = None
    endpoints: tuple[str, ...] = ()
    performed_at: str | None = None
    codes: tuple[dict[str, Any], ...] = ()
    resource_id: str | None = None
    event_id: str | None = None
    received_at: str | None = None

    def content(self) -> dict[str, Any]:
        """What a consumer acts on (not the ids of the post that carried it)."""
        return self.model_dump(exclude={"event_id", "received_at", "resource_id"})


class Report(_Model):
    """The study's report (DiagnosticReport), the newest applied."""

    record_id: str
    institution: str
    status: str
    issued_at: str | None = None
    codes: tuple[dict[str, Any], ...] = ()
    resource_id: str | None = None
    event_id: str | None = None


class Check(_Model):
    """The last reachability check of one endpoint (QIDO-RS for the study on it)."""

    status: CheckStatus
    checked_at: str


class Study(_Model):
    study_uid: str
    master_patient_id: str | None = None
    sources: dict[str, Source] = {}
    report: Report | None = None
    checks: dict[str, Check] = {}
    #: record id → ``occurred_at`` of the latest event applied for it (ISO 8601)
    watermarks: dict[str, str] = {}

    @property
    def key(self) -> str:
        return study_key(self.study_uid)

    @property
    def listed(self) -> bool:
        return bool(self.sources) and self.master_patient_id is not None


@dataclass(frozen=True, slots=True)
class Applied:
    """What one event did to a study.

    ``study`` is the new state (``stored``: it differs from the old one). ``change`` is what
    to publish on ``mrhub.imaging.study-indexed.v1`` (``None``: nothing a consumer would
    notice). ``put`` is the master whose list gets the study, ``drop`` the master whose list
    loses it. ``merged``: a second institution's copy joined the study.
    """

    study: Study
    stored: bool = False
    change: Change | None = None
    previous_master_patient_id: str | None = None
    put: str | None = None
    drop: str | None = None
    merged: bool = False
    stale: bool = False
    new_endpoints: tuple[str, ...] = field(default_factory=tuple)


def study_uid_of(payload: Mapping[str, Any]) -> str | None:
    """The Study Instance UID of an imaging result payload, else ``None`` (not indexed)."""
    if payload.get("kind", "result") != "result" or payload.get("category") != "imaging":
        return None
    if payload.get("resource_type") not in ("ImagingStudy", "DiagnosticReport"):
        return None
    imaging = payload.get("imaging")
    if not isinstance(imaging, Mapping):
        return None
    uid = imaging.get("study_uid")
    return uid if isinstance(uid, str) and uid else None


def _source(payload: Mapping[str, Any]) -> Source:
    imaging = payload["imaging"]
    src = payload.get("source") or {}
    return Source(
        institution=str(payload["institution"]),
        record_id=str(payload["record_id"]),
        status=str(payload.get("status") or "unknown"),
        modalities=tuple(imaging.get("modalities") or ()),
        body_sites=tuple(imaging.get("body_sites") or ()),
        contrast=imaging.get("contrast"),
        series_count=imaging.get("series_count"),
        instance_count=imaging.get("instance_count"),
        endpoints=tuple(imaging.get("endpoints") or ()),
        performed_at=payload.get("performed_at"),
        codes=tuple(payload.get("codes") or ()),
        resource_id=src.get("resource_id"),
        event_id=src.get("event_id"),
        received_at=src.get("received_at"),
    )


def _report(payload: Mapping[str, Any]) -> Report:
    src = payload.get("source") or {}
    return Report(
        record_id=str(payload["record_id"]),
        institution=str(payload["institution"]),
        status=str(payload.get("status") or "unknown"),
        issued_at=payload.get("issued_at"),
        codes=tuple(payload.get("codes") or ()),
        resource_id=src.get("resource_id"),
        event_id=src.get("event_id"),
    )


def _posted_bases(study: Study) -> set[str]:
    return {b for s in study.sources.values() for e in s.endpoints if (b := dicomweb_base(e))}


def apply_record(study: Study | None, payload: Mapping[str, Any], at: datetime) -> Applied:
    """Fold one imaging result payload, published at ``at`` (the envelope's
    ``occurred_at``), into ``study`` (``None``: nothing stored yet). See the module doc."""
    uid = study_uid_of(payload)
    if uid is None:
        raise ValueError("not an imaging study or report with a Study Instance UID")
    old = study or Study(study_uid=uid)
    if old.study_uid != uid:
        raise ValueError("the record is about another study than the one stored")
    record_id = str(payload["record_id"])
    stamp = at.isoformat()
    seen = old.watermarks.get(record_id)
    if seen is not None and datetime.fromisoformat(seen) > at:
        return Applied(old, stale=True)
    watermarks = {**old.watermarks, record_id: stamp}
    master = str(payload["master_patient_id"])
    retracted = payload.get("change") == "retraction"
    sources = dict(old.sources)
    report = old.report
    owner = old.master_patient_id
    merged = False

    if payload["resource_type"] == "ImagingStudy":
        if retracted:
            sources = {}
        else:
            src = _source(payload)
            merged = bool(sources) and src.institution not in sources
            sources[src.institution] = src
            owner = master
    elif retracted:
        if report is not None and report.record_id == record_id:
            report = None
    else:
        report = _report(payload)
    if not sources and (owner is None or not old.sources):
        owner = master  # nothing listed yet: the latest event says whose it is

    new = old.model_copy(
        update={
            "sources": sources,
            "report": report,
            "master_patient_id": owner,
            "watermarks": watermarks,
        }
    )
    return _outcome(old, new, merged=merged)


def apply_check(study: Study, url: str, status: CheckStatus, at: datetime) -> Applied:
    """Record the result of a reachability check of ``url`` (a DICOMweb base)."""
    checks = {**study.checks, url: Check(status=status, checked_at=at.isoformat())}
    same = study.checks.get(url)
    if same is not None and same.status == status:
        new = study.model_copy(update={"checks": checks})
        return Applied(new, stored=True)  # only the time moved: nothing to publish
    return _outcome(study, study.model_copy(update={"checks": checks}))


def _outcome(old: Study, new: Study, *, merged: bool = False) -> Applied:
    if _comparable(old) == _comparable(new):
        return Applied(new, stored=new != old)
    before, after = old.listed, new.listed
    previous = (
        old.master_patient_id
        if before and after and old.master_patient_id != new.master_patient_id
        else None
    )
    change: Change | None = None
    if after:
        change = "update" if before else "new"
    elif before:
        change = "retraction"
    put = new.master_patient_id if after else None
    drop = old.master_patient_id if before and (not after or previous is not None) else None
    fresh = tuple(sorted(_posted_bases(new) - _posted_bases(old)))
    return Applied(
        new,
        stored=True,
        change=change,
        previous_master_patient_id=previous,
        put=put,
        drop=drop,
        merged=merged,
        new_endpoints=fresh if after else (),
    )


def _comparable(study: Study) -> Any:
    return (
        study.master_patient_id,
        {k: s.content() for k, s in study.sources.items()},
        study.report.model_dump(exclude={"event_id"}) if study.report else None,
        {k: c.status for k, c in study.checks.items()},
    )


# ── what a reader sees ─────────────────────────────────────────────────────────────────


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A DICOMweb service root that holds the study."""

    institution: str
    url: str
    origin: Literal["posted", "registry"]
    status: EndpointStatus
    checked_at: str | None = None

    def retrieve_url(self, study_uid: str) -> str:
        """The study's WADO-RS URL on this endpoint."""
        return f"{self.url}/studies/{study_uid}"


@dataclass(frozen=True, slots=True)
class StudyView:
    """A study as one reader may see it: only the sources (and report) in its scope."""

    key: str
    study_uid: str
    master_patient_id: str
    status: str
    modalities: tuple[str, ...]
    body_sites: tuple[dict[str, Any], ...]
    contrast: bool | None
    series_count: int | None
    instance_count: int | None
    performed_at: str | None
    description: str | None
    procedure_codes: tuple[dict[str, Any], ...]
    institutions: tuple[str, ...]
    endpoints: tuple[Endpoint, ...]
    report: Report | None


def _description(codes: tuple[dict[str, Any], ...]) -> str | None:
    for c in codes:
        if c.get("system") != DICOM_DCM_SYSTEM and c.get("display"):
            return str(c["display"])
    return None


def endpoints_of(
    study: Study, sources: list[Source], registry_base: Callable[[str], str | None]
) -> tuple[Endpoint, ...]:
    """Each source's posted DICOMweb endpoints, else its institution's configured
    ``dicomweb_base``; best first (a checked, available one before an unchecked one before
    one that failed its check), otherwise in the order the sources arrived."""
    found: list[Endpoint] = []
    seen: set[str] = set()
    for src in sources:
        bases = [b for e in src.endpoints if (b := dicomweb_base(e))]
        origin: Literal["posted", "registry"] = "posted"
        if not bases:
            configured = registry_base(src.institution)
            bases = [b for b in [dicomweb_base(configured or "")] if b]
            origin = "registry"
        for base in bases:
            if base in seen:
                continue
            seen.add(base)
            check = study.checks.get(base)
            found.append(
                Endpoint(
                    src.institution,
                    base,
                    origin,
                    check.status if check else "unchecked",
                    check.checked_at if check else None,
                )
            )
    return tuple(sorted(found, key=lambda e: _STATUS_RANK[e.status]))


def view(
    study: Study,
    *,
    may_see: Callable[[str], bool],
    registry_base: Callable[[str], str | None],
) -> StudyView | None:
    """``study`` as a reader sees it: ``may_see(institution)`` decides per source (and for
    the report). ``None`` when the study is not listed or no source is visible."""
    if not study.listed or study.master_patient_id is None:
        return None
    sources = [s for s in study.sources.values() if may_see(s.institution)]
    if not sources:
        return None
    series = [s.series_count for s in sources if s.series_count is not None]
    instances = [s.instance_count for s in sources if s.instance_count is not None]
    sites: list[dict[str, Any]] = []
    for site in (b for s in sources for b in s.body_sites):
        if site not in sites:
            sites.append(site)
    codes: list[dict[str, Any]] = []
    for c in (c for s in sources for c in s.codes):
        if c.get("system") != DICOM_DCM_SYSTEM and c not in codes:
            codes.append(c)
    statuses = [s.status for s in sources]
    report = study.report if study.report and may_see(study.report.institution) else None
    return StudyView(
        key=study.key,
        study_uid=study.study_uid,
        master_patient_id=study.master_patient_id,
        status="available" if "available" in statuses else statuses[0],
        modalities=tuple(sorted({m for s in sources for m in s.modalities})),
        body_sites=tuple(sites),
        contrast=next((s.contrast for s in sources if s.contrast is not None), None),
        series_count=max(series) if series else None,
        instance_count=max(instances) if instances else None,
        performed_at=next((s.performed_at for s in sources if s.performed_at), None),
        description=next((d for s in sources if (d := _description(s.codes))), None),
        procedure_codes=tuple(codes),
        institutions=tuple(s.institution for s in sources),
        endpoints=endpoints_of(study, sources, registry_base),
        report=report,
    )


def summary(study: Study, registry_base: Callable[[str], str | None]) -> dict[str, Any]:
    """The ``mrhub.imaging.study-indexed.v1`` payload fields that describe the study (every
    source: consumers of the topic apply their own scope)."""
    full = view(study, may_see=lambda _: True, registry_base=registry_base)
    report = study.report.model_dump(mode="json", exclude={"event_id"}) if study.report else None
    if full is None:
        return {
            "study_uid": study.study_uid,
            "study_key": study.key,
            "master_patient_id": study.master_patient_id,
            "status": "entered-in-error",
            "modalities": [],
            "body_sites": [],
            "contrast": None,
            "series_count": None,
            "instance_count": None,
            "started_at": None,
            "description": None,
            "institutions": [],
            "endpoints": [],
            "report": report,
            "record_ids": sorted(study.watermarks),
        }
    return {
        "study_uid": full.study_uid,
        "study_key": full.key,
        "master_patient_id": full.master_patient_id,
        "status": full.status,
        "modalities": list(full.modalities),
        "body_sites": list(full.body_sites),
        "contrast": full.contrast,
        "series_count": full.series_count,
        "instance_count": full.instance_count,
        "started_at": full.performed_at,
        "description": full.description,
        "institutions": list(full.institutions),
        "endpoints": [
            {
                "institution": e.institution,
                "url": e.url,
                "origin": e.origin,
                "status": e.status,
                "checked_at": e.checked_at,
            }
            for e in full.endpoints
        ],
        "report": report,
        "record_ids": sorted(study.watermarks),
    }
