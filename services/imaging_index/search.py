"""Search parameters of the two read routes, and which studies they select. Pure.

``GET /fhir/ImagingStudy``: ``patient`` (or ``subject``), ``modality`` (token list, comma =
or), ``started`` (FHIR date search, repeatable = and; prefixes ``eq``, ``ge``, ``gt``,
``le``, ``lt``), ``identifier`` (``urn:dicom:uid|urn:oid:<uid>``), ``_count``, ``_offset``.

``GET /dicom-web/studies`` (QIDO-RS): ``PatientID`` (with ``IssuerOfPatientID`` as its
system when given), ``ModalitiesInStudy``, ``StudyDate`` (``YYYYMMDD``, ``A-B``, ``A-``,
``-B``), ``StudyInstanceUID``, ``limit``, ``offset``. Attributes may also be named by tag
(``00100020``). Other keys (``includefield``, ``fuzzymatching``…) are ignored.

Dates without a time zone are China time (UTC+8), as everywhere in the hub.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any, Final

from services.imaging_index.studies import StudyView

CHINA: Final = timezone(timedelta(hours=8))
DEFAULT_COUNT: Final = 50

_FHIR_DATE = re.compile(
    r"(?P<prefix>eq|ne|gt|lt|ge|le|sa|eb|ap)?"
    r"(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?:\.(?P<f>\d+))?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?"
)
_DICOM_DATE = re.compile(r"\d{8}")
_UID = re.compile(r"(0|[1-9]\d*)(\.(0|[1-9]\d*))*")
_QIDO_TAGS: Final = {
    "00100020": "PatientID",
    "00100021": "IssuerOfPatientID",
    "00080061": "ModalitiesInStudy",
    "00080020": "StudyDate",
    "0020000D": "StudyInstanceUID",
}


class QueryError(ValueError):
    """A parameter is missing or malformed; ``param`` names it."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True, slots=True)
class Query:
    """What a search asks for (``patient`` as given; the caller resolves it)."""

    patient: str
    modalities: frozenset[str] = frozenset()
    #: half-open instant ranges [lo, hi) that the study's start must fall in (all of them)
    started: tuple[tuple[datetime | None, datetime | None], ...] = ()
    study_uid: str | None = None
    count: int = DEFAULT_COUNT
    offset: int = 0

    def described(self) -> dict[str, str]:
        """The non-identifying parameters, for the audit record."""
        out: dict[str, str] = {}
        if self.modalities:
            out["modality"] = ",".join(sorted(self.modalities))
        if self.started:
            out["started"] = ";".join(
                f"{lo.isoformat() if lo else ''}..{hi.isoformat() if hi else ''}"
                for lo, hi in self.started
            )
        if self.study_uid:
            out["study"] = "given"
        out["count"] = str(self.count)
        out["offset"] = str(self.offset)
        return out


def _one(params: Mapping[str, Sequence[str]], name: str) -> str | None:
    values = [v for v in params.get(name, ()) if v != ""]
    if len(values) > 1:
        raise QueryError(name, f"{name} may be given only once")
    return values[0] if values else None


def _int(params: Mapping[str, Sequence[str]], name: str, default: int, top: int) -> int:
    raw = _one(params, name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 12:
        raise QueryError(name, f"{name} must be a whole number from 0 (at most 12 digits)")
    return min(int(raw), top)


def _period(m: re.Match[str]) -> tuple[datetime, datetime]:
    """The instants [start, end) a FHIR date value of any precision covers."""
    y = int(m["y"])
    if m["m"] is None:
        return datetime(y, 1, 1, tzinfo=CHINA), datetime(y + 1, 1, 1, tzinfo=CHINA)
    mo = int(m["m"])
    if m["d"] is None:
        start = datetime(y, mo, 1, tzinfo=CHINA)
        end = datetime(y + (mo == 12), mo % 12 + 1, 1, tzinfo=CHINA)
        return start, end
    d = int(m["d"])
    if m["H"] is None:
        start = datetime(y, mo, d, tzinfo=CHINA)
        return start, start + timedelta(days=1)
    tz: timezone = CHINA
    if m["tz"] == "Z":
        tz = UTC
    elif m["tz"]:
        sign = 1 if m["tz"][0] == "+" else -1
        hh, mm = m["tz"][1:].split(":")
        tz = timezone(sign * timedelta(hours=int(hh), minutes=int(mm)))
    if m["S"] is None:
        start = datetime(y, mo, d, int(m["H"]), int(m["M"]), tzinfo=tz)
        return start, start + timedelta(minutes=1)
    micro = int((m["f"] or "0")[:6].ljust(6, "0"))
    start = datetime(y, mo, d, int(m["H"]), int(m["M"]), int(m["S"]), micro, tzinfo=tz)
    return start, start + (timedelta(microseconds=1) if m["f"] else timedelta(seconds=1))


def fhir_date_range(value: str) -> tuple[datetime | None, datetime | None]:
    """The instants [lo, hi) a ``started`` search value selects."""
    m = _FHIR_DATE.fullmatch(value.strip())
    if m is None:
        raise QueryError("started", "started must be a FHIR date, e.g. ge2026-01-01")
    prefix = m["prefix"] or "eq"
    try:
        start, end = _period(m)
    except ValueError as exc:
        raise QueryError("started", "started is not a calendar date") from exc
    if prefix == "eq":
        return start, end
    if prefix == "ge":
        return start, None
    if prefix == "gt":
        return end, None
    if prefix == "le":
        return None, end
    if prefix == "lt":
        return None, start
    raise QueryError("started", f"the date prefix {prefix!r} is not supported here")


def _modalities(values: Iterable[str], param: str) -> frozenset[str]:
    out: set[str] = set()
    for value in values:
        for token in re.split(r"[,\\]", value):
            code = token.rpartition("|")[2].strip().upper()
            if token.strip() and not code:
                raise QueryError(param, f"{param} has an empty modality code")
            if code:
                out.add(code)
    return frozenset(out)


def _uid_param(value: str | None, param: str) -> str | None:
    if value is None:
        return None
    system, bar, rest = value.rpartition("|")
    uid = rest if bar else value
    uid = uid[len("urn:oid:") :] if uid.startswith("urn:oid:") else uid
    if bar and system not in ("", "urn:dicom:uid"):
        raise QueryError(param, f"{param}: only urn:dicom:uid identifiers are searched")
    if not _UID.fullmatch(uid) or len(uid) > 64:
        raise QueryError(param, f"{param} is not a DICOM UID")
    return uid


def parse_fhir(params: Mapping[str, Sequence[str]], *, max_count: int) -> Query:
    """The query of ``GET /fhir/ImagingStudy?…`` (see the module doc)."""
    patient = _one(params, "patient") or _one(params, "subject")
    if patient is None:
        raise QueryError("patient", "give the patient: patient=<system>|<value>")
    if patient.startswith("Patient/"):
        patient = patient[len("Patient/") :]
    started = tuple(fhir_date_range(v) for v in params.get("started", ()) if v)
    return Query(
        patient=patient,
        modalities=_modalities(params.get("modality", ()), "modality"),
        started=started,
        study_uid=_uid_param(_one(params, "identifier"), "identifier"),
        count=_int(params, "_count", min(DEFAULT_COUNT, max_count), max_count),
        offset=_int(params, "_offset", 0, 10**9),
    )


def _dicom_date(value: str, param: str, *, end: bool) -> datetime:
    if not _DICOM_DATE.fullmatch(value):
        raise QueryError(param, f"{param} must be YYYYMMDD or a range of them (A-B)")
    try:
        day = date(int(value[:4]), int(value[4:6]), int(value[6:]))
    except ValueError as exc:
        raise QueryError(param, f"{param} is not a calendar date") from exc
    start = datetime(day.year, day.month, day.day, tzinfo=CHINA)
    return start + timedelta(days=1) if end else start


def dicom_date_range(value: str) -> tuple[datetime | None, datetime | None]:
    """The instants [lo, hi) a QIDO ``StudyDate`` value selects (dates are China time)."""
    value = value.strip()
    if "-" not in value:
        return _dicom_date(value, "StudyDate", end=False), _dicom_date(value, "StudyDate", end=True)
    lo, _, hi = value.partition("-")
    if not lo and not hi:
        raise QueryError("StudyDate", "StudyDate needs at least one end of the range")
    return (
        _dicom_date(lo, "StudyDate", end=False) if lo else None,
        _dicom_date(hi, "StudyDate", end=True) if hi else None,
    )


def parse_qido(params: Mapping[str, Sequence[str]], *, max_count: int) -> Query:
    """The query of ``GET /dicom-web/studies?…`` (see the module doc)."""
    named: dict[str, list[str]] = {}
    for key, values in params.items():
        name = _QIDO_TAGS.get(key.upper(), key)
        named.setdefault(name, []).extend(values)
    patient = _one(named, "PatientID")
    if patient is None:
        raise QueryError("PatientID", "give the patient: PatientID=…")
    issuer = _one(named, "IssuerOfPatientID")
    if issuer:
        patient = f"{issuer}|{patient}"
    date_value = _one(named, "StudyDate")
    return Query(
        patient=patient,
        modalities=_modalities(named.get("ModalitiesInStudy", ()), "ModalitiesInStudy"),
        started=(dicom_date_range(date_value),) if date_value else (),
        study_uid=_uid_param(_one(named, "StudyInstanceUID"), "StudyInstanceUID"),
        count=_int(named, "limit", max_count, max_count),
        offset=_int(named, "offset", 0, 10**9),
    )


def _moment(performed_at: str | None) -> datetime | None:
    if not performed_at:
        return None
    try:
        moment = datetime.fromisoformat(performed_at)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=CHINA)


def _start(study: StudyView) -> datetime | None:
    return _moment(study.performed_at)


def _in_ranges(moment: datetime | None, query: Query) -> bool:
    if moment is None:
        return False
    for lo, hi in query.started:
        if (lo is not None and moment < lo) or (hi is not None and moment >= hi):
            return False
    return True


def matches(study: StudyView, query: Query) -> bool:
    if query.modalities and not query.modalities & set(study.modalities):
        return False
    if query.study_uid and study.study_uid != query.study_uid:
        return False
    return not query.started or _in_ranges(_start(study), query)


def _sources_of(stored: Mapping[str, Any]) -> list[Mapping[str, Any]] | None:
    sources = stored.get("sources")
    if not isinstance(sources, Mapping):
        return None
    found = [s for s in sources.values() if isinstance(s, Mapping)]
    return found if len(found) == len(sources) else None


def institutions_of(stored: Mapping[str, Any]) -> list[str]:
    """The institutions whose sources a stored study (a ``patients`` table value, as JSON)
    holds: the ones a reader must be allowed to see for the study to be shown at all."""
    sources = stored.get("sources")
    if not isinstance(sources, Mapping):
        return []
    return [
        str(s.get("institution") or inst) if isinstance(s, Mapping) else str(inst)
        for inst, s in sources.items()
    ]


def may_match(stored: Mapping[str, Any], query: Query) -> bool:
    """Whether a stored study (a ``patients`` table value, as JSON) could match ``query``,
    before it is made into a view: ``False`` only when no source has a modality, a start or
    the UID the query asks for (a view shows its visible sources' modalities and the start of
    one of them). A cheap first pass; :func:`matches` decides on the view."""
    if query.study_uid and stored.get("study_uid") != query.study_uid:
        return False
    if not query.modalities and not query.started:
        return True
    sources = _sources_of(stored)
    if sources is None:
        return True  # not the shape this knows: let the view decide
    if query.modalities:
        posted = {str(m) for s in sources for m in (s.get("modalities") or ())}
        if not query.modalities & posted:
            return False
    if query.started:
        starts = [s.get("performed_at") for s in sources]
        if not any(_in_ranges(_moment(p if isinstance(p, str) else None), query) for p in starts):
            return False
    return True


def select(studies: Iterable[StudyView], query: Query) -> list[StudyView]:
    """Every study the query selects, newest first (a study without a start time last)."""
    found = [s for s in studies if matches(s, query)]
    never = datetime.min.replace(tzinfo=UTC)
    found.sort(key=lambda s: s.study_uid)
    found.sort(key=lambda s: _start(s) or never, reverse=True)
    return found
