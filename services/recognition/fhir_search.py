"""FHIR reads of the shared record (pure): search parameters, matching, paging tokens, the
resource as served and the searchset Bundle. No faust, Kafka or I/O —
:mod:`services.recognition.reads` wires it to HTTP and the tables (docs/sharing.md).

- :func:`parse_search` reads a search's parameters (a query string or a form / JSON body)
  strictly: an unknown or unsupported parameter is a 400 :class:`SearchError` naming it,
  unless the caller asked ``Prefer: handling=lenient`` (it is then ignored and left out of
  the ``self`` link).
- :class:`Item` is one readable record (a result, an order or a decision) as the worker keeps
  it; :func:`matches` says whether it satisfies the parameters.
- :func:`sign_cursor` / :func:`open_cursor`: the continuation token of a ``next`` link — the
  master patient id, the reader, the parameters and the offset, HMAC-signed and expiring. It
  never holds the identifier the patient was searched by (a master id reveals no one).
- :func:`served` turns the posted resource into what the hub serves: ``id`` the hub's, its
  ``meta`` (``lastUpdated``, ``source``, tags naming the posting institution and its HR
  scope), the patient as the hub's master patient and references the hub can resolve
  rewritten to the hub's ids.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any, Final

import simplejson

from services.common import codec
from services.common.institutions import Institution

__all__ = [
    "DEFAULT_COUNT",
    "MAX_COUNT",
    "READ_TYPES",
    "Cursor",
    "DateBound",
    "Item",
    "Search",
    "SearchError",
    "bundle",
    "hr_scope_of",
    "matches",
    "open_cursor",
    "parse_search",
    "served",
    "sign_cursor",
]

#: The resource types the hub serves reads of.
READ_TYPES: Final = (
    "Observation",
    "DiagnosticReport",
    "ImagingStudy",
    "ServiceRequest",
    "DetectedIssue",
)
#: Entries per page when ``_count`` is not given, and the most a page holds.
DEFAULT_COUNT: Final = 20
MAX_COUNT: Final = 100
#: How long a ``next`` link stays usable.
CURSOR_TTL: Final = timedelta(hours=1)
#: Longest value of one parameter, and most parameters in one search.
MAX_VALUE_CHARS: Final = 256
MAX_PARAMS: Final = 32
#: Time zone of a date or date-time given without one (the hub's hospitals are in China).
CHINA: Final = timezone(timedelta(hours=8))

HUB: Final = "https://fhir.mrhub.cn"
INSTITUTION_TAG_SYSTEM: Final = f"{HUB}/CodeSystem/institution"
HR_SCOPE_TAG_SYSTEM: Final = f"{HUB}/CodeSystem/hr-scope"
MASTER_PATIENT_SYSTEM: Final = f"{HUB}/NamingSystem/master-patient-id"
SUPERSEDED_BY_EXTENSION: Final = f"{HUB}/StructureDefinition/superseded-by"

_COMMON: Final = frozenset(
    {
        "patient",
        "patient:identifier",
        "subject",
        "_lastUpdated",
        "_count",
        "_summary",
        "_total",
        "_id",
    }
)
#: The search parameters each type takes (besides :data:`_COMMON`).
PARAMETERS: Final[Mapping[str, frozenset[str]]] = {
    "Observation": frozenset({"code", "date", "category"}),
    "DiagnosticReport": frozenset({"code", "date", "category", "_include"}),
    "ImagingStudy": frozenset({"date", "category", "code"}),
    "ServiceRequest": frozenset({"code", "date", "category", "authored"}),
    "DetectedIssue": frozenset({"implicated", "code", "date", "identified"}),
}
#: Parameters that carry no search meaning and are accepted everywhere.
_IGNORED: Final = frozenset({"_format", "_pretty"})
_PREFIXES: Final = ("eq", "ne", "ge", "le", "gt", "lt", "sa", "eb", "ap")
_SUPPORTED_PREFIXES: Final = frozenset({"eq", "ge", "le", "gt", "lt"})
_DATE: Final = re.compile(
    r"^(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?:\.\d+)?)?(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)
_ID: Final = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
#: A FHIR logical id (the hub's are 32 hex).
ID_PATTERN: Final = _ID


@dataclass(frozen=True)
class SearchError(Exception):
    """A search refused: HTTP status, what is wrong, and the parameter."""

    status: int
    message: str
    expression: str = ""


@dataclass(frozen=True)
class DateBound:
    """One ``date`` / ``_lastUpdated`` parameter: its prefix and the interval the value
    stands for (``[start, end)``)."""

    prefix: str
    start: datetime
    end: datetime

    def admits(self, moment: datetime) -> bool:
        if self.prefix == "eq":
            return self.start <= moment < self.end
        if self.prefix == "ge":
            return moment >= self.start
        if self.prefix == "gt":
            return moment >= self.end
        if self.prefix == "le":
            return moment < self.end
        return moment < self.start  # lt


@dataclass(frozen=True)
class Search:
    """A search's parameters, parsed. ``patient`` is what identifies the patient as given
    (``<system>|<value>`` or ``Patient/<master id>``); it is never put in a link."""

    type: str
    patient: str | None = None
    codes: tuple[tuple[str | None, str], ...] = ()
    categories: tuple[tuple[str | None, str], ...] = ()
    dates: tuple[DateBound, ...] = ()
    last_updated: tuple[DateBound, ...] = ()
    ids: tuple[str, ...] = ()
    implicated: tuple[str, ...] = ()
    count: int = DEFAULT_COUNT
    summary_count: bool = False
    include_results: bool = False
    #: the parameters as given (without the patient), for the ``self`` link and the cursor
    echo: tuple[tuple[str, str], ...] = ()
    #: parameters ignored under ``Prefer: handling=lenient``
    ignored: tuple[str, ...] = ()

    @property
    def master_in_reference(self) -> str | None:
        """The master id of ``patient=Patient/<master id>``, else ``None``."""
        if self.patient and self.patient.startswith("Patient/"):
            return self.patient[len("Patient/") :]
        return None


def _token(value: str) -> tuple[str | None, str]:
    system, bar, code = value.partition("|")
    if not bar:
        return None, value.strip()
    return system.strip(), code.strip()  # "" system: "|code" (no system)


def parse_date(value: str, name: str) -> DateBound:
    """A FHIR date search value with its prefix (``ge2024-01``, ``2024-01-02T08:00:00+08:00``)."""
    prefix = "eq"
    if value[:2] in _PREFIXES and not value[:2].isdigit():
        prefix, value = value[:2], value[2:]
    if prefix not in _SUPPORTED_PREFIXES:
        raise SearchError(
            400, f"the prefix {prefix!r} is not supported on {name} (eq, ge, gt, le, lt)", name
        )
    m = _DATE.match(value)
    if m is None:
        raise SearchError(400, f"{name} must be a FHIR date or dateTime (e.g. 2024-05-01)", name)
    try:
        tz = CHINA
        if m["tz"]:
            tz = UTC if m["tz"] == "Z" else _offset(m["tz"])
        year = int(m["y"])
        if m["m"] is None:
            start = datetime(year, 1, 1, tzinfo=tz)
            end = datetime(year + 1, 1, 1, tzinfo=tz)
        elif m["d"] is None:
            month = int(m["m"])
            start = datetime(year, month, 1, tzinfo=tz)
            end = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=tz)
        elif m["H"] is None:
            start = datetime(year, int(m["m"]), int(m["d"]), tzinfo=tz)
            end = start + timedelta(days=1)
        else:
            seconds = m["S"] is not None
            start = datetime(
                year,
                int(m["m"]),
                int(m["d"]),
                int(m["H"]),
                int(m["M"]),
                int(m["S"] or 0),
                tzinfo=tz,
            )
            end = start + (timedelta(seconds=1) if seconds else timedelta(minutes=1))
    except ValueError:
        raise SearchError(400, f"{name} is not a valid date", name) from None
    return DateBound(prefix, start, end)


def _offset(text: str) -> timezone:
    sign = -1 if text[0] == "-" else 1
    hours, minutes = int(text[1:3]), int(text[4:6])
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def parse_search(type_: str, pairs: Sequence[tuple[str, str]], *, lenient: bool = False) -> Search:
    """The parameters of a search of ``type_`` (the query's or the body's pairs, in order).

    Raises :class:`SearchError` (400) for an unknown or unsupported parameter (unless
    ``lenient``), a repeated ``patient`` / ``_count`` / ``_summary``, a bad value, or a search
    without a patient (``DetectedIssue`` may name the order instead, with ``implicated``)."""
    if type_ not in PARAMETERS:
        raise SearchError(404, f"the hub serves no {type_[:40]} resources", "type")
    if len(pairs) > MAX_PARAMS:
        raise SearchError(400, f"more than {MAX_PARAMS} search parameters", "$query")
    allowed = _COMMON | PARAMETERS[type_]
    patient: str | None = None
    codes: list[tuple[str | None, str]] = []
    categories: list[tuple[str | None, str]] = []
    dates: list[DateBound] = []
    updated: list[DateBound] = []
    ids: list[str] = []
    implicated: list[str] = []
    count = DEFAULT_COUNT
    summary_count = include = False
    echo: list[tuple[str, str]] = []
    ignored: list[str] = []
    seen: set[str] = set()
    for raw_name, raw_value in pairs:
        name = raw_name.strip()
        if not isinstance(raw_value, str):
            raise SearchError(400, f"{name[:40]} must be a string", name[:40])
        value = raw_value.strip()
        if len(value) > MAX_VALUE_CHARS or len(name) > 64:
            raise SearchError(
                400, f"{name[:40]} is longer than {MAX_VALUE_CHARS} characters", name[:40]
            )
        if any(ord(c) < 0x20 or 0xD800 <= ord(c) <= 0xDFFF for c in value + name):
            raise SearchError(400, f"{name[:40]} holds control characters", name[:40])
        if name in _IGNORED:
            continue
        base_name = name.split(":", 1)[0] if name != "patient:identifier" else name
        if name not in allowed or (":" in name and name != "patient:identifier"):
            if lenient:
                ignored.append(name[:64])
                continue
            raise SearchError(
                400, f"the search parameter {name[:64]!r} is not supported on {type_}", name[:64]
            )
        if not value:
            raise SearchError(400, f"{name} has no value", name)
        if base_name in {
            "patient",
            "patient:identifier",
            "subject",
            "_count",
            "_summary",
            "_total",
        }:
            group = (
                "patient"
                if base_name in {"patient", "patient:identifier", "subject"}
                else base_name
            )
            if group in seen:
                raise SearchError(400, f"{name} is given more than once", name)
            seen.add(group)
        if name in {"patient", "subject"}:
            if "|" in value or (value.startswith("Patient/") and _ID.match(value[8:])):
                patient = value
            elif _ID.match(value) and not value.isdigit():
                patient = f"Patient/{value}"
            else:
                raise SearchError(
                    400, f"give {name} as <system>|<value> or Patient/<master patient id>", name
                )
            continue
        if name == "patient:identifier":
            if "|" not in value:
                raise SearchError(400, "give patient:identifier as <system>|<value>", name)
            patient = value
            continue
        if name == "code":
            for part in value.split(","):
                system, code = _token(part)
                if not code:
                    raise SearchError(
                        400, "give code as [<system>]|<code>, several with commas", name
                    )
                codes.append((system, code))
        elif name == "category":
            for part in value.split(","):
                system, code = _token(part)
                if not code:
                    raise SearchError(400, "give category as [<system>]|<code>", name)
                categories.append((system, code))
        elif name in {"date", "authored", "identified"}:
            dates.append(parse_date(value, name))
        elif name == "_lastUpdated":
            updated.append(parse_date(value, name))
        elif name == "_id":
            for part in value.split(","):
                if not _ID.match(part.strip()):
                    raise SearchError(400, "_id must be a hub id", name)
                ids.append(part.strip())
        elif name == "implicated":
            for part in value.split(","):
                ref = part.strip()
                rtype, _, rid = ref.partition("/")
                if rtype not in READ_TYPES or not _ID.match(rid):
                    raise SearchError(
                        400, "give implicated as ServiceRequest/<id> (a hub id)", name
                    )
                implicated.append(f"{rtype}/{rid}")
        elif name == "_count":
            if not value.isdigit() or len(value) > 6:
                raise SearchError(400, "_count must be a whole number", name)
            count = max(0, min(int(value), MAX_COUNT))
        elif name == "_summary":
            if value == "count":
                summary_count = True
            elif value != "false":
                raise SearchError(400, "_summary takes count or false", name)
        elif name == "_total":
            if value not in {"none", "estimate", "accurate"}:
                raise SearchError(400, "_total takes none, estimate or accurate", name)
        elif name == "_include":
            if value not in {"DiagnosticReport:result", "DiagnosticReport:result:Observation"}:
                raise SearchError(400, "only _include=DiagnosticReport:result is supported", name)
            include = True
        echo.append((name, value))
    if patient is None and not implicated:
        raise SearchError(
            400,
            "give the patient (patient=<system>|<value>, patient:identifier=… or "
            "patient=Patient/<master patient id>)",
            "patient",
        )
    return Search(
        type=type_,
        patient=patient,
        codes=tuple(codes),
        categories=tuple(categories),
        dates=tuple(dates),
        last_updated=tuple(updated),
        ids=tuple(ids),
        implicated=tuple(implicated),
        count=count,
        summary_count=summary_count,
        include_results=include,
        echo=tuple(echo),
        ignored=tuple(ignored),
    )


# ── what the worker keeps, and matching ──────────────────────────────────────────────────


@dataclass(frozen=True)
class Item:
    """One readable record: its hub id, type, the posting (or, for a decision, ordering)
    institution, the hub's category, the codes, its times, when the hub indexed it and the
    resource as posted (``None`` when the payload carried none)."""

    id: str
    type: str
    institution: str
    category: str
    codes: tuple[tuple[str | None, str], ...]
    times: tuple[datetime, ...]
    indexed_at: datetime | None
    resource: Mapping[str, Any] | None
    master: str
    #: references this record answers to inside its poster's bundle (``urn:uuid:…``,
    #: ``Observation/<hospital id>``)
    aliases: tuple[str, ...] = ()
    #: DetectedIssue: ``ServiceRequest/<id>`` it implicates
    implicated: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)


def _token_matches(wanted: tuple[str | None, str], have: Iterable[tuple[str | None, str]]) -> bool:
    system, code = wanted
    for s, c in have:
        if c != code:
            continue
        if system is None or (system == "" and not s) or system == s:
            return True
    return False


def matches(item: Item, search: Search) -> bool:
    """Whether ``item`` satisfies every parameter of ``search`` (each comma list an OR)."""
    if item.type != search.type:
        return False
    if search.ids and item.id not in search.ids:
        return False
    if search.codes and not any(_token_matches(c, item.codes) for c in search.codes):
        return False
    if search.categories:
        have = [(None, item.category), *_categories(item.resource)]
        if not any(_token_matches(c, have) for c in search.categories):
            return False
    if search.dates and not any(all(b.admits(t) for b in search.dates) for t in item.times):
        return False
    if search.last_updated and (
        item.indexed_at is None or not all(b.admits(item.indexed_at) for b in search.last_updated)
    ):
        return False
    return not (search.implicated and not set(search.implicated) & set(item.implicated))


def _categories(resource: Mapping[str, Any] | None) -> list[tuple[str | None, str]]:
    out: list[tuple[str | None, str]] = []
    if not resource:
        return out
    cats = resource.get("category")
    if isinstance(cats, dict):
        cats = [cats]
    for cat in cats if isinstance(cats, list) else []:
        for coding in (cat or {}).get("coding") or [] if isinstance(cat, dict) else []:
            if isinstance(coding, dict) and isinstance(coding.get("code"), str):
                out.append((coding.get("system"), coding["code"]))
    return out


def sort_key(item: Item) -> tuple[float, str]:
    """Newest first (the latest of its times, else when indexed), then by id: a stable order
    across pages."""
    latest = max(item.times) if item.times else item.indexed_at
    return (-(latest.timestamp() if latest else 0.0), item.id)


# ── the continuation token ───────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class Cursor:
    """What a ``next`` link continues: the type, the patient's master id, the reader, the
    parameters as given (without the patient) and the offset."""

    type: str
    master: str | None
    reader: str
    params: tuple[tuple[str, str], ...]
    offset: int
    expires: datetime


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign_cursor(cursor: Cursor, key: bytes) -> str:
    """The opaque token: base64url(JSON) ``.`` base64url(HMAC-SHA256)."""
    body = codec.dumps(
        {
            "t": cursor.type,
            "m": cursor.master,
            "r": cursor.reader,
            "p": [list(p) for p in cursor.params],
            "o": cursor.offset,
            "x": int(cursor.expires.timestamp()),
        }
    )
    mac = hmac.new(key, b"mrhub-cursor-v1|" + body, hashlib.sha256).digest()
    return f"{_b64(body)}.{_b64(mac)}"


def open_cursor(token: str, key: bytes, *, reader: str, now: datetime) -> Cursor:
    """The cursor of ``token``; :class:`SearchError` (400) when it was not made by the hub,
    was altered, is another reader's or has expired."""
    refused = SearchError(400, "the page token is invalid or has expired; search again", "_cursor")
    if len(token) > 4096 or token.count(".") != 1:
        raise refused
    body_text, mac_text = token.split(".")
    try:
        body = _unb64(body_text)
        mac = _unb64(mac_text)
    except (ValueError, TypeError):
        raise refused from None
    expected = hmac.new(key, b"mrhub-cursor-v1|" + body, hashlib.sha256).digest()
    if not hmac.compare_digest(mac, expected):
        raise refused
    try:
        doc = simplejson.loads(body)
        cursor = Cursor(
            type=str(doc["t"]),
            master=doc["m"] if doc["m"] is None else str(doc["m"]),
            reader=str(doc["r"]),
            params=tuple((str(a), str(b)) for a, b in doc["p"]),
            offset=int(doc["o"]),
            expires=datetime.fromtimestamp(int(doc["x"]), UTC),
        )
    except (ValueError, KeyError, TypeError):
        raise refused from None
    if cursor.reader != reader or cursor.expires < now or cursor.offset < 0:
        raise refused
    return cursor


# ── the resource as served ───────────────────────────────────────────────────────────────

_SCOPE_WIDTH: Final = {"national": 4, "provincial": 3, "municipal": 2, "alliance": 1}


def hr_scope_of(performer: Institution | None, category: str, on: date) -> str | None:
    """The widest scope of ``performer``'s current HR qualifications for ``category`` (or
    one of its items), ``None`` when it holds none."""
    if performer is None:
        return None
    scopes = [
        q.scope
        for q in performer.qualifications
        if q.issued <= on <= q.expires
        and (
            q.category == category
            or q.item is not None
            or (category == "ultrasound" and q.category == "imaging")
        )
    ]
    return max(scopes, key=lambda s: _SCOPE_WIDTH.get(s, 0)) if scopes else None


def institution_source(inst_id: str) -> str:
    """``meta.source`` of what ``inst_id`` posted."""
    return f"{HUB}/institution/{inst_id}"


def _rewrite(node: Any, aliases: Mapping[str, str], depth: int = 0) -> Any:
    if depth > 20:
        return node
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "reference" and isinstance(v, str) and v in aliases:
                out[k] = aliases[v]
            else:
                out[k] = _rewrite(v, aliases, depth + 1)
        return out
    if isinstance(node, list):
        return [_rewrite(v, aliases, depth + 1) for v in node]
    return node


def served(
    item: Item,
    *,
    performer: Institution | None,
    hr_scope: str | None,
    aliases: Mapping[str, str],
) -> dict[str, Any]:
    """The resource as the hub serves it: the posted resource (values, units, ranges,
    interpretation, conclusion, text as posted) with the hub's ``id``, ``meta`` (when the
    hub indexed it, the posting institution as ``source`` and as a tag, its HR scope as a
    tag), the subject as the hub's master patient (the identifiers the hospital gave are not
    passed on: another institution reads no 身份证 it did not send) and references to records
    the hub holds rewritten to their hub ids."""
    resource = dict(item.resource) if item.resource else {"resourceType": item.type}
    resource["resourceType"] = item.type
    resource = _rewrite(resource, aliases)
    contained = resource.get("contained")
    if isinstance(contained, list):
        kept = [
            c for c in contained if not (isinstance(c, dict) and c.get("resourceType") == "Patient")
        ]
        if kept:
            resource["contained"] = kept
        else:
            resource.pop("contained", None)
    patient_ref = {
        "reference": f"Patient/{item.master}",
        "type": "Patient",
        "identifier": {"system": MASTER_PATIENT_SYSTEM, "value": item.master},
    }
    if item.type == "DetectedIssue":
        resource["patient"] = patient_ref
    else:
        resource["subject"] = patient_ref
    tags = [
        {
            "system": INSTITUTION_TAG_SYSTEM,
            "code": item.institution,
            **({"display": performer.name} if performer else {}),
        }
    ]
    if hr_scope:
        tags.append({"system": HR_SCOPE_TAG_SYSTEM, "code": hr_scope})
    meta: dict[str, Any] = {}
    if item.indexed_at is not None:
        meta["lastUpdated"] = item.indexed_at.astimezone(UTC).isoformat().replace("+00:00", "Z")
    meta["source"] = institution_source(item.institution)
    meta["tag"] = tags
    ordered: dict[str, Any] = {"resourceType": item.type, "id": item.id, "meta": meta}
    for k, v in resource.items():
        if k not in ordered and k != "meta":
            ordered[k] = v
    return ordered


def included_results(
    reports: Sequence[Mapping[str, Any]],
    items: Iterable[Item],
    admit: Callable[[Item], bool],
) -> list[Item]:
    """``_include=DiagnosticReport:result``: the Observations the served ``reports`` point
    at (``result[].reference`` after rewriting to hub ids) that ``admit`` lets the reader
    see, each once, in the reports' order."""
    by_ref = {f"{it.type}/{it.id}": it for it in items if it.type == "Observation"}
    out: list[Item] = []
    seen: set[str] = set()
    for report in reports:
        for ref in report.get("result") or []:
            target = by_ref.get(ref.get("reference", "")) if isinstance(ref, dict) else None
            if target is not None and target.id not in seen and admit(target):
                seen.add(target.id)
                out.append(target)
    return out


def bundle(
    *,
    base: str,
    search: Search,
    total: int,
    page: Sequence[dict[str, Any]],
    included: Sequence[dict[str, Any]] = (),
    next_token: str | None = None,
    self_token: str | None = None,
) -> dict[str, Any]:
    """A ``searchset`` Bundle of ``page`` (resources as served), ``total`` matches in all.
    Links are absolute on ``<base>/fhir``; the ``self`` link never names the patient (the
    parameters without it, or the cursor it was continued from)."""
    fhir = f"{base.rstrip('/')}/fhir"
    if self_token is not None:
        self_url = f"{fhir}/{search.type}?_cursor={self_token}"
    else:
        from urllib.parse import urlencode

        query = urlencode(list(search.echo))
        self_url = f"{fhir}/{search.type}" + (f"?{query}" if query else "")
    links = [{"relation": "self", "url": self_url}]
    if next_token is not None:
        links.append({"relation": "next", "url": f"{fhir}/{search.type}?_cursor={next_token}"})
    doc: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "link": links,
    }
    if search.summary_count:
        return doc
    entries = [
        {
            "fullUrl": f"{fhir}/{r['resourceType']}/{r['id']}",
            "resource": r,
            "search": {"mode": "match"},
        }
        for r in page
    ]
    entries += [
        {
            "fullUrl": f"{fhir}/{r['resourceType']}/{r['id']}",
            "resource": r,
            "search": {"mode": "include"},
        }
        for r in included
    ]
    if entries:
        doc["entry"] = entries
    return doc


# ── items from what the worker keeps ─────────────────────────────────────────────────────

RECORD_ID_SYSTEM: Final = f"{HUB}/NamingSystem/record-id"


def _moment(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        try:
            bound = parse_date(value, "date")
        except SearchError:
            return None
        return bound.start
    return moment if moment.tzinfo else moment.replace(tzinfo=CHINA)


def _codes(
    payload: Mapping[str, Any], resource: Mapping[str, Any] | None
) -> list[tuple[str | None, str]]:
    out: list[tuple[str | None, str]] = []
    for c in payload.get("codes") or []:
        if isinstance(c, dict) and isinstance(c.get("code"), str):
            out.append((c.get("system"), c["code"]))
    if resource:
        for member in ("code", "procedureCode"):
            concepts = resource.get(member)
            for concept in concepts if isinstance(concepts, list) else [concepts]:
                if isinstance(concept, dict):
                    for coding in concept.get("coding") or []:
                        if isinstance(coding, dict) and isinstance(coding.get("code"), str):
                            pair = (coding.get("system"), coding["code"])
                            if pair not in out:
                                out.append(pair)
    return out


def _resource_times(type_: str, resource: Mapping[str, Any] | None) -> list[datetime]:
    if not resource:
        return []
    if type_ == "ServiceRequest":
        names = ["authoredOn"]
    elif type_ == "ImagingStudy":
        names = ["started"]
    else:
        names = ["effectiveDateTime", "effectiveInstant", "issued"]
    out = [m for m in (_moment(resource.get(n)) for n in names) if m is not None]
    period = resource.get("effectivePeriod")
    if isinstance(period, dict):
        out += [m for m in (_moment(period.get("start")), _moment(period.get("end"))) if m]
    return out


def _aliases(payload: Mapping[str, Any]) -> tuple[str, ...]:
    source = payload.get("source") or {}
    out = []
    if isinstance(source, dict):
        if isinstance(source.get("full_url"), str) and source["full_url"]:
            out.append(source["full_url"])
        rtype = source.get("resource_type") or payload.get("resource_type")
        if isinstance(source.get("resource_id"), str) and source["resource_id"] and rtype:
            out.append(f"{rtype}/{source['resource_id']}")
    return tuple(out)


def synthesized(stored: Mapping[str, Any]) -> dict[str, Any]:
    """A FHIR resource rebuilt from the canonical payload, for a record kept before payloads
    carried the posted ``resource`` (status, category, codes, times, value)."""
    type_ = str(stored.get("resource_type") or "Observation")
    doc: dict[str, Any] = {"resourceType": type_}
    if stored.get("status"):
        doc["status"] = stored["status"]
    if type_ == "ServiceRequest":
        doc["intent"] = stored.get("intent") or "order"
    codings = [
        {k: v for k, v in c.items() if k in {"system", "code", "display"} and v is not None}
        for c in stored.get("codes") or []
        if isinstance(c, dict)
    ]
    if codings:
        doc["procedureCode" if type_ == "ImagingStudy" else "code"] = (
            [{"coding": codings}] if type_ == "ImagingStudy" else {"coding": codings}
        )
    if type_ == "ServiceRequest":
        if stored.get("authored_at"):
            doc["authoredOn"] = stored["authored_at"]
    elif type_ == "ImagingStudy":
        if stored.get("performed_at"):
            doc["started"] = stored["performed_at"]
        uid = (stored.get("imaging") or {}).get("study_uid")
        if uid:
            doc["identifier"] = [{"system": "urn:dicom:uid", "value": f"urn:oid:{uid}"}]
    else:
        if stored.get("performed_at") or stored.get("collected_at"):
            doc["effectiveDateTime"] = stored.get("performed_at") or stored.get("collected_at")
        if stored.get("issued_at"):
            doc["issued"] = stored["issued_at"]
    value = stored.get("value")
    if type_ == "Observation" and isinstance(value, dict):
        if value.get("value") is not None:
            quantity: dict[str, Any] = {"value": _decimal(value["value"])}
            for member in ("comparator", "unit", "system", "code"):
                if value.get(member):
                    quantity[member] = value[member]
            doc["valueQuantity"] = quantity
        elif value.get("text"):
            doc["valueString"] = value["text"]
        if value.get("interpretation"):
            doc["interpretation"] = [{"coding": list(value["interpretation"])}]
        if value.get("reference_range"):
            doc["referenceRange"] = [{"text": value["reference_range"]}]
    return doc


def _decimal(value: Any) -> Any:
    from decimal import Decimal, InvalidOperation

    try:
        return Decimal(str(value))
    except (InvalidOperation, ValueError):
        return value


def posted_resource(stored: Mapping[str, Any]) -> dict[str, Any]:
    """The resource as posted (``resource`` of the payload), else :func:`synthesized`."""
    resource = stored.get("resource")
    return dict(resource) if isinstance(resource, dict) else synthesized(stored)


def item_from_record(stored: Mapping[str, Any]) -> Item:
    """A result's or an order's table value (its payload, ``resource`` and ``indexed_at``)."""
    resource = posted_resource(stored)
    type_ = str(
        stored.get("resource_type")
        or ("ServiceRequest" if stored.get("kind") == "order" else "Observation")
    )
    times = _resource_times(type_, resource)
    if not times:
        names = (
            ("authored_at",)
            if type_ == "ServiceRequest"
            else ("performed_at", "collected_at", "issued_at")
        )
        times = [m for m in (_moment(stored.get(n)) for n in names) if m is not None]
    return Item(
        id=str(stored["record_id"]),
        type=type_,
        institution=str(stored.get("institution") or ""),
        category=str(stored.get("category") or "other"),
        codes=tuple(_codes(stored, resource)),
        times=tuple(times),
        indexed_at=_moment(stored.get("indexed_at")),
        resource=resource,
        master=str(stored.get("master_patient_id") or ""),
        aliases=_aliases(stored),
    )


def _with_references(node: Any, depth: int = 0) -> Any:
    """A DetectedIssue's logical references (``identifier`` of system record-id) gain a
    literal ``reference`` the hub resolves."""
    if depth > 10:
        return node
    if isinstance(node, list):
        return [_with_references(v, depth + 1) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _with_references(v, depth + 1) for k, v in node.items()}
    ident = node.get("identifier")
    if (
        isinstance(ident, dict)
        and ident.get("system") == RECORD_ID_SYSTEM
        and node.get("type") in READ_TYPES
        and "reference" not in node
    ):
        out = {"reference": f"{node['type']}/{ident.get('value')}", **out}
    return out


def item_from_decision(stored: Mapping[str, Any]) -> Item:
    """A kept decision (``detected_issue``, ``order_id``, ``institution``, ``category``,
    ``decided_at``, ``superseded_by``)."""
    issue = dict(stored.get("detected_issue") or {"resourceType": "DetectedIssue"})
    issue = _with_references(issue)
    superseded = stored.get("superseded_by")
    if superseded:
        issue["status"] = "cancelled"
        issue["extension"] = [
            *(issue.get("extension") or []),
            {
                "url": SUPERSEDED_BY_EXTENSION,
                "valueReference": {"reference": f"DetectedIssue/{superseded}"},
            },
        ]
    code = ((issue.get("code") or {}).get("coding") or [{}])[0]
    decided = _moment(stored.get("decided_at"))
    return Item(
        id=str(stored["decision_id"]),
        type="DetectedIssue",
        institution=str(stored.get("institution") or ""),
        category=str(stored.get("category") or "other"),
        codes=((code.get("system"), code["code"]),) if isinstance(code.get("code"), str) else (),
        times=(decided,) if decided else (),
        indexed_at=_moment(stored.get("indexed_at")) or decided,
        resource=issue,
        master=str(stored.get("master_patient_id") or ""),
        implicated=(f"ServiceRequest/{stored['order_id']}",) if stored.get("order_id") else (),
    )
