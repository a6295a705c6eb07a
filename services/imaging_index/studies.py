"""What the imaging index keeps per study, and how each canonical record changes it. Pure:
no faust, Kafka or I/O.

A study is identified by its Study Instance UID, whoever posts it. :class:`Study` holds one
:class:`Source` per posting institution (a hospital and its regional imaging cloud are two
sources of one study, each with its own DICOMweb endpoint), one :class:`Report` per
institution that reported on it, and the reachability checks of its endpoints. **Each source
and each report is its poster's own**, with the master patient the patient index gave *that*
record: no institution's post changes, withdraws or moves another's.

:func:`apply_record` folds one ``mrhub.results.result-indexed.v1`` payload (an imaging
``ImagingStudy`` or ``DiagnosticReport`` result) into the stored study:

- an ImagingStudy ``new`` / ``update`` sets the poster's source, under the master patient of
  that record (a merge, unmerge or relink moves it: the patient index re-publishes the
  record under the new master, and only that source moves);
- an ImagingStudy ``retraction`` withdraws the poster's source only; the other sources stay
  listed. A retraction of a record that is not the poster's source is *refused*: nothing
  changes (the patient index never publishes one — record ids carry the institution — so
  this guards against a replay of an older topic);
- a DiagnosticReport sets (or, retracted, withdraws) the poster's report;
- an event older (``occurred_at``) than one already applied for the same record id is
  stale and ignored: versions of one record may arrive out of order when a merge moved the
  record between partitions.

**Per patient.** Readers see a study under each master patient one of its sources names,
with only that master's sources and reports (:meth:`Study.for_master`). Sources that
disagree on the patient (a hospital's copy under one patient, another institution's copy of
the same UID under another) are a *patient conflict*: neither moves the other, each is listed
under its own patient only, the projections say ``patient_conflict``, and the record that
made the disagreement is counted and logged (``Applied.conflict``).

A study is *listed* for a master once that master has at least one source; a report alone
lists nothing.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, model_validator

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


def patient_prefix(master_patient_id: str) -> bytes:
    """The prefix of every ``patients`` table key of one master: ``<master>|`` (a master id
    never holds ``|``)."""
    return master_patient_id.encode() + b"|"


def patient_entry(master_patient_id: str, key: str) -> bytes:
    """The ``patients`` table key of one study of one master: ``<master>|<study key>``."""
    return patient_prefix(master_patient_id) + key.encode()


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
    """One institution's copy of the study, from its latest ImagingStudy event, under the
    master patient of that record (``None`` only in state stored before sources had one)."""

    institution: str
    record_id: str
    master_patient_id: str | None = None
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
    """One institution's report of the study (DiagnosticReport), its newest applied."""

    record_id: str
    institution: str
    master_patient_id: str | None = None
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
    """The stored state of one study (every source), or — with ``master_patient_id`` set —
    its projection for one patient (:meth:`for_master`: what the ``patients`` table holds
    and the ``study-indexed`` events describe)."""

    study_uid: str
    #: the patient of a projection; in the stored state only a legacy value (before each
    #: source carried its own master)
    master_patient_id: str | None = None
    sources: dict[str, Source] = {}
    reports: dict[str, Report] = {}
    checks: dict[str, Check] = {}
    #: record id → ``occurred_at`` of the latest event applied for it (ISO 8601)
    watermarks: dict[str, str] = {}
    #: on a projection: another source of this UID names another patient
    patient_conflict: bool = False

    @model_validator(mode="before")
    @classmethod
    def _legacy(cls, data: Any) -> Any:
        """State stored before sources and reports were owned: one study-level master and
        one ``report``. Each source and the report get that master."""
        if not isinstance(data, dict) or ("report" not in data and "sources" not in data):
            return data
        data = dict(data)
        master = data.get("master_patient_id")
        legacy = data.pop("report", None)
        if legacy is not None and "reports" not in data:
            rep = dict(legacy.model_dump() if isinstance(legacy, BaseModel) else legacy)
            rep.setdefault("master_patient_id", master)
            data["reports"] = {str(rep["institution"]): rep}
        if master is not None and isinstance(data.get("sources"), dict):
            fixed: dict[str, Any] = {}
            for inst, src in data["sources"].items():
                doc = dict(src.model_dump() if isinstance(src, BaseModel) else src)
                if doc.get("master_patient_id") is None:
                    doc["master_patient_id"] = master
                fixed[inst] = doc
            data["sources"] = fixed
        return data

    @property
    def key(self) -> str:
        return study_key(self.study_uid)

    @property
    def listed(self) -> bool:
        return bool(self.sources) and self.master_patient_id is not None

    def _master_of(self, item: Source | Report) -> str | None:
        return item.master_patient_id or self.master_patient_id

    @property
    def masters(self) -> tuple[str, ...]:
        """The masters the sources name, in the order the sources arrived."""
        found: list[str] = []
        for src in self.sources.values():
            m = self._master_of(src)
            if m is not None and m not in found:
                found.append(m)
        return tuple(found)

    def for_master(self, master: str) -> Study:
        """What a reader of ``master`` may know of the study: the sources and reports under
        that master only (the checks of every endpoint, which name no patient)."""
        sources = {i: s for i, s in self.sources.items() if self._master_of(s) == master}
        reports = {i: r for i, r in self.reports.items() if self._master_of(r) == master}
        ids = {s.record_id for s in sources.values()} | {r.record_id for r in reports.values()}
        return Study(
            study_uid=self.study_uid,
            master_patient_id=master,
            sources=sources,
            reports=reports,
            checks=self.checks,
            watermarks={r: w for r, w in self.watermarks.items() if r in ids},
            patient_conflict=len(self.masters) > 1,
        )

    @property
    def report(self) -> Report | None:
        """The report a reader who may see everything is shown (:func:`chosen_report`)."""
        return chosen_report(self, lambda _: True)


def chosen_report(study: Study, may_see: Callable[[str], bool]) -> Report | None:
    """The report shown with the study: of those the reader may see, the one by the
    institution whose copy came first (the performing hospital, usually), else the newest
    issued. Another institution's report never hides the performer's own."""
    order = {inst: n for n, inst in enumerate(study.sources)}
    visible = [r for r in study.reports.values() if may_see(r.institution)]
    if not visible:
        return None
    newest = sorted(visible, key=lambda r: r.issued_at or "", reverse=True)
    return min(newest, key=lambda r: order.get(r.institution, len(order)))


@dataclass(frozen=True, slots=True)
class Published:
    """One ``study-indexed`` event: the projection of the study for ``master``."""

    master: str
    change: Change
    study: Study
    previous_master_patient_id: str | None = None


@dataclass(frozen=True, slots=True)
class Applied:
    """What one event did to a study.

    ``study`` is the new stored state (``stored``: it differs from the old one). ``events``
    are the ``mrhub.imaging.study-indexed.v1`` events to publish, one per master whose
    projection a reader would see change; ``puts`` the projections the ``patients`` table
    gets, ``drops`` the masters whose list loses the study. ``merged``: a second
    institution's copy joined the study. ``refused``: a retraction of a record that is not
    the poster's, which changed nothing. ``conflict``: this record made its source disagree
    with another institution's source on the patient.
    """

    study: Study
    stored: bool = False
    events: tuple[Published, ...] = ()
    puts: tuple[Study, ...] = ()
    drops: tuple[str, ...] = ()
    merged: bool = False
    stale: bool = False
    refused: bool = False
    conflict: bool = False
    new_endpoints: tuple[str, ...] = field(default_factory=tuple)

    @property
    def change(self) -> Change | None:
        """The change of the first event (``None``: nothing a reader would notice)."""
        return self.events[0].change if self.events else None

    @property
    def put(self) -> str | None:
        return self.puts[0].master_patient_id if self.puts else None

    @property
    def drop(self) -> str | None:
        return self.drops[0] if self.drops else None

    @property
    def previous_master_patient_id(self) -> str | None:
        return next(
            (e.previous_master_patient_id for e in self.events if e.previous_master_patient_id),
            None,
        )


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
        master_patient_id=str(payload["master_patient_id"]),
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
        master_patient_id=str(payload["master_patient_id"]),
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
    institution = str(payload["institution"])
    seen = old.watermarks.get(record_id)
    if seen is not None and datetime.fromisoformat(seen) > at:
        return Applied(old, stale=True)
    retracted = payload.get("change") == "retraction"
    sources = dict(old.sources)
    reports = dict(old.reports)
    merged = conflict = False

    if payload["resource_type"] == "ImagingStudy":
        mine: Source | Report | None = sources.get(institution)
        if retracted:
            if mine is None or mine.record_id != record_id:
                return Applied(old, refused=True)  # only the poster's own copy is withdrawn
            del sources[institution]
        else:
            src = _source(payload)
            merged = bool(sources) and institution not in sources
            before = old._master_of(mine) if isinstance(mine, Source) else None
            others = {old._master_of(s) for i, s in old.sources.items() if i != institution} - {
                None
            }
            # a copy the patient index moved (merge, unmerge, link: the same post, published
            # again under another master) is on its way; a post that names another patient
            # than another institution's copy is a disagreement between institutions
            reposted = isinstance(mine, Source) and mine.event_id == src.event_id
            conflict = (
                not reposted
                and before != src.master_patient_id
                and bool(others - {src.master_patient_id})
            )
            sources[institution] = src
    else:
        mine = reports.get(institution)
        if retracted:
            if mine is None or mine.record_id != record_id:
                return Applied(old, refused=True)
            del reports[institution]
        else:
            reports[institution] = _report(payload)

    new = old.model_copy(
        update={
            "sources": sources,
            "reports": reports,
            "watermarks": {**old.watermarks, record_id: at.isoformat()},
        }
    )
    return _outcome(old, new, merged=merged, conflict=conflict)


def apply_check(study: Study, url: str, status: CheckStatus, at: datetime) -> Applied:
    """Record the result of a reachability check of ``url`` (a DICOMweb base)."""
    checks = {**study.checks, url: Check(status=status, checked_at=at.isoformat())}
    same = study.checks.get(url)
    if same is not None and same.status == status:
        new = study.model_copy(update={"checks": checks})
        return Applied(new, stored=True)  # only the time moved: nothing to publish
    return _outcome(study, study.model_copy(update={"checks": checks}))


def _outcome(old: Study, new: Study, *, merged: bool = False, conflict: bool = False) -> Applied:
    """The events, puts and drops that take every master's view from ``old`` to ``new``."""
    before = {m: old.for_master(m) for m in old.masters}
    after = {m: new.for_master(m) for m in new.masters}
    # masters that lost every source to another master in this event: a move, told to
    # consumers as one update with previous_master_patient_id (as before sources had masters)
    moved_from: dict[str, str] = {}
    for inst, src in new.sources.items():
        was = old.sources.get(inst)
        if was is None:
            continue
        m_old, m_new = old._master_of(was), new._master_of(src)
        if m_old and m_new and m_old != m_new and m_old not in after and m_new not in before:
            moved_from.setdefault(m_new, m_old)
    events: list[Published] = []
    puts: list[Study] = []
    drops: list[str] = []
    for m, proj in after.items():
        prev = before.get(m)
        if prev is not None and _comparable(prev) == _comparable(proj):
            continue
        if prev is None and m in moved_from:
            events.append(Published(m, "update", proj, moved_from[m]))
        else:
            events.append(Published(m, "new" if prev is None else "update", proj))
        puts.append(proj)
    gone = set(moved_from.values())
    for m in before:
        if m in after:
            continue
        drops.append(m)
        if m not in gone:
            events.append(Published(m, "retraction", new.for_master(m)))
    stored = new != old
    fresh = tuple(sorted(_posted_bases(new) - _posted_bases(old)))
    return Applied(
        new,
        stored=stored,
        events=tuple(events),
        puts=tuple(puts),
        drops=tuple(drops),
        merged=merged,
        conflict=conflict,
        new_endpoints=fresh if after else (),
    )


def _comparable(study: Study) -> Any:
    return (
        study.master_patient_id,
        {k: s.content() for k, s in study.sources.items()},
        {k: r.model_dump(exclude={"event_id"}) for k, r in study.reports.items()},
        {k: c.status for k, c in study.checks.items()},
        study.patient_conflict,
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
    the report). ``None`` when the study is not listed or no source is visible. ``study`` is
    a projection for one master; a stored state whose sources all name one master is its
    own projection, one whose sources disagree on the patient is not shown whole."""
    if study.master_patient_id is None:
        masters = study.masters
        if len(masters) != 1:
            return None
        study = study.for_master(masters[0])
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
    report = chosen_report(study, may_see)
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
    """The ``mrhub.imaging.study-indexed.v1`` payload fields that describe the study — a
    projection for one master (:meth:`Study.for_master`) — with every source of that master:
    consumers of the topic apply their own scope."""
    full = view(study, may_see=lambda _: True, registry_base=registry_base)
    chosen = study.report
    report = (
        chosen.model_dump(mode="json", exclude={"event_id", "master_patient_id"})
        if chosen
        else None
    )
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
            "patient_conflict": study.patient_conflict,
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
        "patient_conflict": study.patient_conflict,
    }
