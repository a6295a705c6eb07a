"""What the ingest gateway accepts: FHIR R4 structure plus the hub's own rules.

Pure functions, no HTTP, Kafka or I/O. The gateway parses the body once
(:func:`parse_json`), then calls :func:`check_resource` (``POST /fhir/{Type}``) or
:func:`check_bundle` (``POST /fhir`` with a batch or transaction Bundle), answers with
:func:`services.common.fhir.operation_outcome` and :func:`http_status`, and publishes each
accepted ``CheckedResource.resource`` — the JSON as posted, never re-serialised from a model.

Each resource is checked in three steps:

1. its type: a clinical type (:data:`CLINICAL_TYPES`), or inside a bundle also a context type
   (:data:`CONTEXT_TYPES`); anything else is refused (``not-supported``);
2. its structure, with the ``fhir.resources.R4B`` model: ``Model.model_validate(dict)``. For a
   1.3 kB lab Observation ``json.loads`` + ``model_validate`` ran at ≈5,000/s, the same as
   ``model_validate_json(bytes)``, so the body is parsed once and the same dict serves the
   model and the hub rules; the whole check (parse, model, rules) ran at ≈4,200/s, 0.83× the
   bare ``model_validate_json`` (``test_validation_rate`` measures it again);
3. the hub rules, on the raw dict, walked once for its Identifiers and References:
   身份证 numbers pass GB 11643 and agree with the Patient, identifiers with a system have a
   value, required elements are present, the patient is identified, ``urn:uuid:`` and
   ``#contained`` references resolve, and no performer or identifier assigner names an
   institution other than the posting one.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final

import msgspec
import simplejson
from fhir.resources.R4B import get_fhir_model_class
from pydantic import TypeAdapter, ValidationError

from services.common import codec
from services.common.errors import IdentifierError
from services.common.fhir import (
    DICOM_UID_SYSTEM,
    InstitutionClaim,
    Issue,
    IssueCode,
    Severity,
    fhirpath,
    institution_claim,
    validation_issues,
)
from services.common.identifiers import ID_CARD_SYSTEM, IdCard, parse_id_card
from services.common.institutions import Institution

CLINICAL_TYPES: Final = (
    "Patient",
    "Observation",
    "DiagnosticReport",
    "ImagingStudy",
    "ServiceRequest",
)
#: Accepted only inside a bundle, as context for the clinical resources.
CONTEXT_TYPES: Final = (
    "Encounter",
    "Specimen",
    "Organization",
    "Practitioner",
    "PractitionerRole",
    "Endpoint",
)
BUNDLE_TYPES: Final = ("batch", "transaction")

#: Containers (objects and arrays) deeper than this are refused before validation.
MAX_DEPTH: Final = 100

_EFFECTIVE = ("effectiveDateTime", "effectivePeriod", "effectiveInstant", "effectiveTiming")
_DICOM_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
_RELATIVE_REF = re.compile(r"([A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(/_history/[A-Za-z0-9\-.]{1,64})?")
_SHOWABLE = re.compile(r"[A-Za-z][A-Za-z-]{0,63}")
_PARTIAL_DATE = re.compile(r"[0-9]{4}(-[0-9]{2}(-[0-9]{2})?)?")

#: Where each type names the organisation that produced it (Reference paths, lists expanded).
_PERFORMER_PATHS: Final[dict[str, tuple[tuple[str, ...], ...]]] = {
    "Observation": (("performer",),),
    "DiagnosticReport": (("performer",), ("resultsInterpreter",)),
    "ImagingStudy": (("series", "performer", "actor"),),
    "ServiceRequest": (("performer",),),
    "Encounter": (("serviceProvider",),),
}

Loc = tuple[str | int, ...]


@dataclass
class CheckedResource:
    """One posted resource and what the checks found.

    ``resource`` is the JSON object exactly as posted (``{}`` when the body was not an
    object); ``resource_type`` is its ``resourceType`` (``""`` when there is none).
    """

    resource_type: str
    resource: dict[str, Any]
    full_url: str | None = None
    index: int | None = None
    business_id: tuple[str, str] | None = None
    issues: list[Issue] = field(default_factory=list)
    #: every Reference object in ``resource`` (an object whose ``reference`` is a string)
    #: with its location, as the checks' one walk found them; None when it was not walked
    references: list[tuple[Loc, dict[str, Any]]] | None = None

    @property
    def ok(self) -> bool:
        """No ``error`` or ``fatal`` issue (warnings do not refuse a resource)."""
        return not any(i.is_error for i in self.issues)


@dataclass
class BundleCheck:
    """A checked Bundle: bundle-level ``issues`` and one :class:`CheckedResource` per entry
    that has a resource object (``CheckedResource.index`` is its position in ``Bundle.entry``).

    For a transaction the gateway refuses the whole bundle unless :attr:`ok`; for a batch it
    may accept the entries that are ok on their own, provided the bundle-level issues are not
    errors.
    """

    bundle_type: str | None
    entries: list[CheckedResource] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)

    @property
    def all_issues(self) -> list[Issue]:
        return [*self.issues, *(i for e in self.entries for i in e.issues)]

    @property
    def ok(self) -> bool:
        return not any(i.is_error for i in self.all_issues)


# --------------------------------------------------------------------------- entry points


def parse_json(
    body: bytes | bytearray | str, *, max_depth: int = MAX_DEPTH
) -> tuple[Any, list[Issue]]:
    """Parse a request body as FHIR JSON: UTF-8 (a BOM is tolerated), no duplicate keys, no
    ``NaN``/``Infinity``, objects and arrays nested at most ``max_depth`` deep. Returns
    ``(value, [])`` or ``(None, [one malformed-json or too-deep issue])``. Numbers with a
    fraction or exponent are ``Decimal`` (so that ``6.30`` is republished as ``6.30``: FHIR
    decimals carry their precision).

    The fast path is msgspec (C) plus two checks on the bytes (:func:`_no_duplicates_seen`,
    :func:`_nesting_within`); whatever it cannot decide — any body msgspec refuses, a body
    whose checks are inconclusive — goes through the strict pure-Python path
    (:func:`_parse_strict`), which says exactly what is wrong."""
    data = bytes(body) if isinstance(body, bytearray) else body
    if isinstance(data, bytes) and data.startswith(_BOM):
        data = data[len(_BOM) :]
    elif isinstance(data, str) and data.startswith("\ufeff"):
        data = data[1:]
    try:
        value = _DECODER.decode(data)
    except RecursionError:
        return None, [_too_deep(max_depth)]
    except (msgspec.DecodeError, UnicodeDecodeError):
        return _parse_strict(body, max_depth)
    raw = data.encode() if isinstance(data, str) else data
    if not _no_duplicates_seen(raw, value):
        return _parse_strict(body, max_depth)
    within = _nesting_within(raw, max_depth)
    if within is None:
        within = not nesting_exceeds(value, max_depth)
    if not within:
        return None, [_too_deep(max_depth)]
    return value, []


_BOM: Final = b"\xef\xbb\xbf"
_DECODER: Final = msgspec.json.Decoder(float_hook=Decimal)
#: Every byte but the four brackets and the quote (for :meth:`bytes.translate`'s
#: ``delete``): what is left of a body is its brackets, and its strings' quotes and brackets.
_NOT_STRUCTURE: Final = bytes(b for b in range(256) if b not in b'"[]{}')
_INNERMOST: Final = re.compile(rb"\[\]|\{\}")


def _no_duplicates_seen(raw: bytes, value: Any) -> bool:
    """True when ``raw`` (decoded by msgspec into ``value``) has no duplicate key; False
    when it may have one.

    msgspec keeps the last of duplicate keys. Every key is followed by one ``:``, and a colon
    inside a string stays a literal ``:`` when written back, so ``raw`` holds as many colons
    as ``value`` re-encoded unless keys (and their values) were dropped — provided no colon is
    written as a ``\\u003a`` escape (a byte ``:`` never occurs inside a UTF-8 multi-byte
    sequence)."""
    if b"\\u003" in raw:
        return False
    return raw.count(b":") == codec.dumps(value).count(b":")


def _nesting_within(raw: bytes, limit: int) -> bool | None:
    """Whether the JSON text ``raw`` (known to be well-formed) nests objects and arrays at
    most ``limit`` deep; None when this cannot tell cheaply (an escaped quote in a string).

    Without escaped quotes, strings are the text between the 1st and 2nd, 3rd and 4th …
    ``"``; what lies outside them holds the structure. Of its brackets alone, one round of
    ``replace(b"[]", b"")`` then ``replace(b"{}", b"")`` removes at least the innermost
    level and at most two: if they are gone after ``r`` rounds, they nested at most ``2r``
    deep (a FHIR resource: 6 to 10 levels, a few rounds over a few bytes per object). Only
    near the limit are levels counted exactly, one per round (:func:`_nesting_exact`)."""
    if b'\\"' in raw:
        return None
    skeleton = b"".join(raw.translate(None, _NOT_STRUCTURE).split(b'"')[::2])
    rest, rounds = skeleton, 0
    while rest and rounds <= limit:
        rest = rest.replace(b"[]", b"").replace(b"{}", b"")
        rounds += 1
    if rest:
        return False  # more than `rounds` > limit levels
    if 2 * rounds <= limit:
        return True
    return _nesting_exact(skeleton, limit)


def _nesting_exact(skeleton: bytes, limit: int) -> bool:
    """Whether balanced brackets ``skeleton`` nest at most ``limit`` deep: each round removes
    exactly the innermost level (``re.sub`` does not rescan what it produced)."""
    for _ in range(limit):
        if not skeleton:
            return True
        skeleton = _INNERMOST.sub(b"", skeleton)
    return not skeleton


def _parse_strict(body: bytes | bytearray | str, max_depth: int) -> tuple[Any, list[Issue]]:
    """:func:`parse_json` in pure Python (simplejson): slower, with precise diagnostics."""
    try:
        text = body.decode("utf-8-sig") if isinstance(body, bytes | bytearray) else body
        if text.startswith("\ufeff"):
            text = text[1:]
        value = simplejson.loads(
            text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant, use_decimal=True
        )
    except UnicodeDecodeError:
        return None, [_malformed("the body is not UTF-8")]
    except simplejson.JSONDecodeError as exc:
        return None, [_malformed(f"{exc.msg} at line {exc.lineno} column {exc.colno}")]
    except ValueError as exc:  # duplicate keys, NaN/Infinity
        return None, [_malformed(str(exc))]
    except RecursionError:
        return None, [_too_deep(max_depth)]
    if nesting_exceeds(value, max_depth):
        return None, [_too_deep(max_depth)]
    try:  # simplejson reads a lone "\ud800" escape; UTF-8 (and so Kafka) cannot hold it
        codec.dumps(value)
    except UnicodeEncodeError:
        return None, [_malformed("a string holds an unpaired surrogate escape (\\uD800-\\uDFFF)")]
    return value, []


def nesting_exceeds(value: Any, limit: int) -> bool:
    """Whether objects and arrays in ``value`` nest more than ``limit`` deep (a scalar is at
    depth 0, ``[]`` at 1, ``[[]]`` at 2). Iterative: no recursion however deep ``value``."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Iterable[Any] = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        depth += 1
        if depth > limit:
            return True
        stack.extend((c, depth) for c in children if isinstance(c, dict | list))
    return False


def check_resource(
    raw: Any, institution: Institution, *, expected_type: str | None = None
) -> CheckedResource:
    """Check one resource posted on its own (``POST /fhir/{expected_type}``).

    ``raw`` is the parsed JSON body. Only :data:`CLINICAL_TYPES` are accepted; a clinical
    resource other than Patient must identify its patient by ``subject.identifier`` (system
    and value), since there is no bundle to resolve a reference in.
    """
    root = _shown(expected_type) if expected_type is not None else "Resource"
    if not isinstance(raw, dict):
        return CheckedResource("", {}, issues=[_not_a_resource(root, "an object")])
    rtype = raw.get("resourceType")
    if not isinstance(rtype, str) or not rtype:
        return CheckedResource("", raw, issues=[_not_a_resource(root, "a resourceType")])
    checked = CheckedResource(rtype, raw, business_id=business_id(raw))
    shown = _shown(rtype)
    if expected_type is not None and rtype != expected_type:
        checked.issues.append(
            Issue(
                "error",
                "invalid",
                f"{shown}: resourceType is {shown} but this endpoint takes {root}",
                expression=(shown,),
                reason="type-mismatch",
            )
        )
        return checked
    if rtype not in CLINICAL_TYPES:
        if rtype in CONTEXT_TYPES:
            why = f"{rtype} is accepted only inside a batch or transaction Bundle"
        elif rtype == "Bundle":
            why = "a Bundle is posted to the base endpoint, not as a resource"
        else:
            why = _unsupported_why(rtype)
        checked.issues.append(_unsupported(shown, why))
        return checked
    ctx = _Ctx(rtype, institution, None, checked.issues)
    _check_one(raw, rtype, ctx)
    return checked


def check_bundle(raw: Any, institution: Institution) -> BundleCheck:
    """Check a batch or transaction Bundle (``POST /fhir``).

    Entries may hold :data:`CLINICAL_TYPES` and, as their context, :data:`CONTEXT_TYPES`.
    A clinical resource identifies its patient by ``subject.reference`` to a Patient entry
    (its ``fullUrl``, or ``Patient/<id>``) or by ``subject.identifier``. Every ``urn:uuid:``
    reference must resolve to an entry's ``fullUrl``. Entry issues' FHIRPaths start with
    ``Bundle.entry[i].resource``.
    """
    if not isinstance(raw, dict):
        return BundleCheck(None, issues=[_not_a_resource("Bundle", "an object")])
    rtype = raw.get("resourceType")
    if not isinstance(rtype, str) or not rtype:
        return BundleCheck(None, issues=[_not_a_resource("Bundle", "a resourceType")])
    if rtype != "Bundle":
        shown = _shown(rtype)
        issue = Issue(
            "error",
            "invalid",
            f"{shown}: resourceType is {shown} but the base endpoint takes a Bundle",
            expression=(shown,),
            reason="type-mismatch",
        )
        return BundleCheck(None, issues=[issue])
    btype = raw.get("type") if isinstance(raw.get("type"), str) else None
    check = BundleCheck(btype)
    issues = check.issues
    entries_raw = raw.get("entry")
    _validate_bundle_shell(raw, entries_raw, issues)
    if btype is not None and btype not in BUNDLE_TYPES:
        issues.append(
            Issue(
                "error",
                "not-supported",
                "Bundle.type: the hub accepts batch or transaction bundles, "
                f"not {_shown(btype, 'this type')}",
                expression=("Bundle.type",),
                reason="unsupported-bundle-type",
            )
        )
    if entries_raw is None or entries_raw == []:
        issues.append(_missing("Bundle.entry", "the bundle has no entries"))
    if not isinstance(entries_raw, list):
        return check

    index = _BundleIndex()
    todo: list[tuple[int, dict[str, Any], str | None]] = []
    for i, entry in enumerate(entries_raw):
        if not isinstance(entry, dict):
            continue  # reported by the Bundle model
        where = f"Bundle.entry[{i}]"
        full_url = entry.get("fullUrl")
        if not isinstance(full_url, str) or not full_url:
            full_url = None
        elif full_url in index.by_url:
            issues.append(
                Issue(
                    "error",
                    "invalid",
                    f"{where}.fullUrl: the same fullUrl is already used by another entry",
                    expression=(f"{where}.fullUrl",),
                    reason="duplicate-full-url",
                )
            )
        resource = entry.get("resource")
        if resource is None:
            issues.append(_missing(f"{where}.resource", "the entry carries no resource"))
            continue
        if not isinstance(resource, dict):
            issues.append(_not_a_resource(f"{where}.resource", "an object"))
            continue
        index.add(full_url, resource)
        if btype in BUNDLE_TYPES and "request" not in entry:
            issues.append(
                Issue(
                    "warning",
                    "required",
                    f"{where}.request: a {btype} entry should say its request (method, url)",
                    expression=(f"{where}.request",),
                    reason="missing-request",
                )
            )
        todo.append((i, resource, full_url))

    accepted = (*CLINICAL_TYPES, *CONTEXT_TYPES)
    clinical = 0
    for i, resource, full_url in todo:
        root = f"Bundle.entry[{i}].resource"
        rtype = resource.get("resourceType")
        if not isinstance(rtype, str) or not rtype:
            entry_issues = [_not_a_resource(root, "a resourceType")]
            check.entries.append(CheckedResource("", resource, full_url, i, None, entry_issues))
            continue
        checked = CheckedResource(rtype, resource, full_url, i, business_id(resource))
        check.entries.append(checked)
        if rtype not in accepted:
            checked.issues.append(_unsupported(root, _unsupported_why(rtype)))
            continue
        clinical += rtype in CLINICAL_TYPES
        found = _check_one(resource, rtype, _Ctx(root, institution, index, checked.issues))
        checked.references = found.references
    if todo and not clinical:
        issues.append(
            Issue(
                "error",
                "not-supported",
                "Bundle.entry: the bundle carries no clinical resource "
                f"({', '.join(CLINICAL_TYPES)}); context resources come only with them",
                expression=("Bundle.entry",),
                reason="unsupported-type",
            )
        )
    return check


def business_id(resource: dict[str, Any]) -> tuple[str, str] | None:
    """The business identifier ``(system, value)`` a resource is keyed by.

    ImagingStudy: its Study Instance UID (``urn:dicom:uid``). Otherwise the first identifier
    with a system and value that is not a 身份证; else ``("id", <logical id>)``; else the first
    身份证 identifier (the gateway hashes it with a secret, never writes it in clear); else
    ``None``.
    """
    if not isinstance(resource, dict):
        return None
    idents = resource.get("identifier")
    if isinstance(idents, dict):
        idents = [idents]
    pairs: list[tuple[str, str]] = []
    if isinstance(idents, list):
        for ident in idents:
            if isinstance(ident, dict):
                system, value = ident.get("system"), ident.get("value")
                if isinstance(system, str) and system and isinstance(value, str) and value:
                    pairs.append((system, value))
    if resource.get("resourceType") == "ImagingStudy":
        for pair in pairs:
            if pair[0] == DICOM_UID_SYSTEM:
                return pair
    for pair in pairs:
        if pair[0] != ID_CARD_SYSTEM:
            return pair
    rid = resource.get("id")
    if isinstance(rid, str) and rid:
        return ("id", rid)
    for pair in pairs:
        return pair  # only 身份证 pairs are left
    return None


def http_status(issues: Iterable[Issue]) -> int:
    """The HTTP status for a set of issues (a bundle's: ``BundleCheck.all_issues``).

    - 200: no ``error``/``fatal`` issue (warnings and information do not refuse);
    - 403: any error with code ``forbidden`` or ``security`` (e.g. ``foreign-institution``);
    - 413: else any error with code ``too-costly`` (``too-large``: a resource whose Kafka
      message would be over the hub's message limit);
    - 400: else any error with code ``structure`` or ``invalid``: the body is not JSON
      (``malformed-json``), not a resource (``not-a-resource``), fails the R4 model
      (``invalid-fhir``), is of another type than the URL says (``type-mismatch``), or breaks a
      Bundle invariant (``duplicate-full-url``);
    - 422: else — the data is FHIR but breaks a hub rule: ``unsupported-type``,
      ``unsupported-bundle-type``, ``missing-field``, ``empty-identifier``,
      ``id-card-checksum``, ``id-card-mismatch``, ``invalid-dicom-uid``, ``no-patient``,
      ``unresolved-reference``.
    """
    codes = {i.code for i in issues if i.is_error}
    if not codes:
        return 200
    if codes & {"forbidden", "security"}:
        return 403
    if "too-costly" in codes:
        return 413
    if codes & {"structure", "invalid"}:
        return 400
    return 422


# --------------------------------------------------------------------------- internals


class _BundleIndex:
    """Bundle entries by fullUrl and by ``Type/id``, to resolve references."""

    __slots__ = ("by_type_id", "by_url")

    def __init__(self) -> None:
        self.by_url: dict[str, dict[str, Any]] = {}
        self.by_type_id: dict[tuple[str, str], dict[str, Any]] = {}

    def add(self, full_url: str | None, resource: dict[str, Any]) -> None:
        if full_url is not None:
            self.by_url.setdefault(full_url, resource)
        rtype, rid = resource.get("resourceType"), resource.get("id")
        if isinstance(rtype, str) and isinstance(rid, str):
            self.by_type_id.setdefault((rtype, rid), resource)

    def resolve(self, ref: str) -> dict[str, Any] | None:
        found = self.by_url.get(ref)
        if found is None and (m := _RELATIVE_REF.fullmatch(ref)):
            found = self.by_type_id.get((m.group(1), m.group(2)))
        return found


@dataclass(slots=True)
class _Ctx:
    root: str  # FHIRPath of the resource: "Observation" or "Bundle.entry[2].resource"
    institution: Institution
    bundle: _BundleIndex | None
    issues: list[Issue]
    contained: dict[str, dict[str, Any]] = field(default_factory=dict)

    def path(self, loc: Loc) -> str:
        return fhirpath(self.root, loc)

    def add(self, severity: Severity, code: IssueCode, reason: str, loc: Loc, message: str) -> None:
        path = self.path(loc)
        self.issues.append(Issue(severity, code, f"{path}: {message}", (path,), reason))

    def missing(self, loc: Loc, message: str) -> None:
        self.add("error", "required", "missing-field", loc, message)

    def resolve(self, ref: str) -> dict[str, Any] | None:
        if ref.startswith("#"):
            return self.contained.get(ref[1:])
        return self.bundle.resolve(ref) if self.bundle is not None else None


class _Found:
    """What one walk of a resource's JSON collects."""

    __slots__ = ("identifiers", "references", "too_deep")

    def __init__(self) -> None:
        self.identifiers: list[tuple[Loc, dict[str, Any]]] = []
        # each Reference object (its ``reference`` a string) and its location
        self.references: list[tuple[Loc, dict[str, Any]]] = []
        self.too_deep = False


_CONTAINERS: Final = (dict, list)


def _walk(node: Any, path: list[str | int], found: _Found, depth: int) -> None:
    """Collect ``node``'s Identifiers and References, depth first (the order issues are
    listed in). Hot: every element of every resource passes here once, so strings — most
    values — cost one ``isinstance`` and containers are checked against a constant tuple."""
    if depth > MAX_DEPTH:
        found.too_deep = True
        return
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, str):
                if key == "reference":
                    found.references.append((tuple(path), node))
                continue
            if not isinstance(value, _CONTAINERS):
                continue
            if key == "identifier":
                if isinstance(value, dict):
                    found.identifiers.append(((*path, key), value))
                else:
                    for i, item in enumerate(value):
                        if isinstance(item, dict):
                            found.identifiers.append(((*path, key, i), item))
            path.append(key)
            _walk(value, path, found, depth + 1)
            path.pop()
    elif isinstance(node, list):
        for i, item in enumerate(node):
            if isinstance(item, _CONTAINERS):
                path.append(i)
                _walk(item, path, found, depth + 1)
                path.pop()


def _check_one(res: dict[str, Any], rtype: str, ctx: _Ctx) -> _Found:
    """Structure and hub rules for one resource of an accepted type; returns what the walk
    of its JSON found."""
    found = _Found()
    _walk(res, [], found, 0)
    if found.too_deep:
        ctx.add("error", "structure", "invalid-fhir", (), f"nested more than {MAX_DEPTH} deep")
        return found
    structural = _validate_model(res, rtype, ctx)
    _index_contained(res, ctx)
    _check_identifiers(res, rtype, found, ctx)
    _check_references(found, ctx)
    rule = _TYPE_RULES.get(rtype)
    if rule is not None:
        before = len(ctx.issues)
        rule(res, ctx)
        # a hub "missing" issue at a path the model already reported adds nothing
        if structural:
            ctx.issues[before:] = [
                i
                for i in ctx.issues[before:]
                if i.reason != "missing-field" or not structural & set(i.expression)
            ]
    _check_performers(res, rtype, ctx)
    return found


def _validate_model(res: dict[str, Any], rtype: str, ctx: _Ctx) -> set[str]:
    """Validate with the R4B model; returns the FHIRPaths it reported."""
    contained = res.get("contained")
    if isinstance(contained, list):
        bad = False
        for i, item in enumerate(contained):
            ctype = item.get("resourceType") if isinstance(item, dict) else None
            if isinstance(item, dict) and (not isinstance(ctype, str) or not _is_r4_type(ctype)):
                bad = True
                ctx.add(
                    "error",
                    "not-supported" if isinstance(ctype, str) else "structure",
                    "unsupported-type" if isinstance(ctype, str) else "not-a-resource",
                    ("contained", i),
                    _unsupported_why(ctype) if isinstance(ctype, str) else "no resourceType",
                )
        if bad:  # the model would raise KeyError/TypeError on these
            return set()
    try:
        _model_validate(get_fhir_model_class(rtype), res)
    except ValidationError as exc:
        issues = validation_issues(exc, ctx.root)
        ctx.issues.extend(issues)
        return {e for i in issues for e in i.expression}
    except Exception as exc:  # fhir.resources raises KeyError/TypeError on odd input
        ctx.add(
            "error",
            "structure",
            "invalid-fhir",
            (),
            f"not a valid R4 {rtype} ({type(exc).__name__})",
        )
        return {ctx.root}
    return set()


#: Elements whose values are coded context — the test's code and category, the reference
#: range, the interpretation, the method, the performing institution — and repeat from one
#: resource to the next in any feed, unlike identifiers, patients, values and times.
_MEMO_ELEMENTS: Final = frozenset(
    {
        "bodySite",
        "category",
        "code",
        "dataAbsentReason",
        "interpretation",
        "managingOrganization",
        "method",
        "modality",
        "performer",
        "referenceRange",
        "resultsInterpreter",
        "valueCodeableConcept",
    }
)
#: Such element values the R4B model validated, by (model, element, JSON): at most
#: :data:`_MEMO_KEPT`, each at most :data:`_MEMO_MAX_BYTES` of JSON (a few MB at most; the
#: bench's lab results need about forty). Coded context only: no identifier, patient or
#: value is kept.
_MEMO: Final[dict[tuple[type, str, bytes], Any]] = {}
_MEMO_KEPT: Final = 4096
_MEMO_MAX_BYTES: Final = 1024


@functools.cache
def _field_names(model: type[Any]) -> dict[str, str]:
    """A model's attribute name for each JSON element name (they differ for a few, such as
    ``class``)."""
    return {(f.alias or name): name for name, f in model.model_fields.items()}


def _model_validate(model: Any, res: dict[str, Any]) -> Any:
    """``model.model_validate(res)``, with the value of each :data:`_MEMO_ELEMENTS` element
    that the model already validated, in a resource of the same type, passed as the model
    object it became (pydantic takes a model instance of the field's type as it is, and
    fhir.resources validates an element without regard to anything around it): the same
    verdict, the repeated coded elements not validated again. A resource the model refuses
    is validated again exactly as posted, so that its issues are the model's own."""
    given: dict[str, Any] | None = None
    fresh: list[tuple[str, tuple[type, str, bytes]]] = []
    for name in _MEMO_ELEMENTS.intersection(res):
        value = res[name]
        if not isinstance(value, dict | list) or not value:
            continue
        text = codec.dumps(value)
        if len(text) > _MEMO_MAX_BYTES:
            continue
        key = (model, name, text)
        known = _MEMO.get(key)
        if known is None:
            fresh.append((name, key))
            continue
        if given is None:
            given = dict(res)
        given[name] = known
    if given is None:
        validated = model.model_validate(res)
    else:
        try:
            validated = model.model_validate(given)
        except ValidationError:
            # the verdict, and the issues, of the resource as posted
            validated = model.model_validate(res)
    if fresh:
        if len(_MEMO) + len(fresh) > _MEMO_KEPT:
            _MEMO.clear()  # bounded memory, whatever is posted
        names = _field_names(model)
        for name, key in fresh:
            attr = names.get(name)
            if attr is not None:
                _MEMO[key] = getattr(validated, attr)
    return validated


def _is_r4_type(name: str) -> bool:
    """True for an R4 resource type. (``get_fhir_model_class`` caches only successful
    look-ups, so arbitrary posted names do not grow its cache.)"""
    try:
        return get_fhir_model_class(name).has_resource_base()
    except Exception:  # ValueError for unknown names, AttributeError for primitives
        return False


def _index_contained(res: dict[str, Any], ctx: _Ctx) -> None:
    contained = res.get("contained")
    if isinstance(contained, list):
        for item in contained:
            if isinstance(item, dict) and isinstance(item.get("id"), str):
                ctx.contained.setdefault(item["id"], item)


def _check_identifiers(res: dict[str, Any], rtype: str, found: _Found, ctx: _Ctx) -> None:
    cards: list[tuple[Loc, IdCard]] = []
    for loc, ident in found.identifiers:
        system, value = ident.get("system"), ident.get("value")
        if isinstance(system, str) and system:
            if value is None or (isinstance(value, str) and not value.strip()):
                ctx.add(
                    "error",
                    "value",
                    "empty-identifier",
                    (*loc, "value"),
                    "an identifier with a system needs a value",
                )
            elif system == ID_CARD_SYSTEM and isinstance(value, str):
                try:
                    card = parse_id_card(value)
                except IdentifierError as exc:
                    ctx.add("error", "value", "id-card-checksum", (*loc, "value"), str(exc))
                else:
                    if rtype == "Patient" and len(loc) <= 2 and loc[0] == "identifier":
                        cards.append((loc, card))
        assigner = ident.get("assigner")
        if isinstance(assigner, dict) and _org_claim(assigner, ctx) == "foreign":
            ctx.add(
                "error",
                "forbidden",
                "foreign-institution",
                (*loc, "assigner"),
                "the identifier's assigner is another institution; "
                "an institution posts only identifiers it assigned",
            )
    if rtype == "Patient" and cards:
        _check_card_agrees(res, cards, ctx)


def _check_card_agrees(res: dict[str, Any], cards: list[tuple[Loc, IdCard]], ctx: _Ctx) -> None:
    birth, gender = res.get("birthDate"), res.get("gender")
    for loc, card in cards:
        if (
            isinstance(birth, str)
            and _PARTIAL_DATE.fullmatch(birth)
            and not card.birth_date.isoformat().startswith(birth)
        ):
            ctx.add(
                "error",
                "business-rule",
                "id-card-mismatch",
                loc,
                "the birth date in the 身份证 number differs from Patient.birthDate",
            )
        if gender in ("male", "female") and gender != card.sex:
            ctx.add(
                "error",
                "business-rule",
                "id-card-mismatch",
                loc,
                "the sex in the 身份证 number differs from Patient.gender",
            )


def _check_references(found: _Found, ctx: _Ctx) -> None:
    for loc, obj in found.references:
        ref: str = obj["reference"]
        if ref.startswith("urn:uuid:"):
            if ctx.bundle is None or ref not in ctx.bundle.by_url:
                where = "an entry fullUrl of this bundle" if ctx.bundle else "anything"
                ctx.add(
                    "error",
                    "not-found",
                    "unresolved-reference",
                    (*loc, "reference"),
                    f"the urn:uuid: reference does not resolve to {where}",
                )
        elif ref.startswith("#") and len(ref) > 1 and ref[1:] not in ctx.contained:
            ctx.add(
                "error",
                "not-found",
                "unresolved-reference",
                (*loc, "reference"),
                "the #reference names no contained resource",
            )


def _org_claim(ref: dict[str, Any], ctx: _Ctx) -> InstitutionClaim:
    """``institution_claim`` of the Organization a Reference names, inline or resolved."""
    claim: InstitutionClaim = "none"
    if ref.get("type") in (None, "Organization"):
        claim = institution_claim(ref.get("identifier"), ctx.institution)
        if claim == "foreign":
            return claim
    target_ref = ref.get("reference")
    if isinstance(target_ref, str):
        target = ctx.resolve(target_ref)
        if target is not None and target.get("resourceType") == "Organization":
            target_claim = institution_claim(target.get("identifier"), ctx.institution)
            if target_claim != "none":
                claim = target_claim
    return claim


def _expand(node: Any, keys: Sequence[str], loc: Loc) -> Iterable[tuple[Loc, Any]]:
    """Values at ``keys`` under ``node``, expanding lists, with their locations."""
    if not keys:
        yield loc, node
        return
    if not isinstance(node, dict):
        return
    value = node.get(keys[0])
    if isinstance(value, list):
        for i, item in enumerate(value):
            yield from _expand(item, keys[1:], (*loc, keys[0], i))
    elif value is not None:
        yield from _expand(value, keys[1:], (*loc, keys[0]))


def _named_only_by_display(ref: dict[str, Any]) -> bool:
    """A Reference that names nothing the hub can check: no reference, no identifier (a
    ``display`` is free text anyone can write)."""
    return not _present(ref.get("reference")) and not _present(ref.get("identifier"))


def _performer_claim(ref: dict[str, Any], ctx: _Ctx) -> InstitutionClaim | None:
    """Which institution a performer Reference names: through an Organization (inline
    identifier or resolved), or through a PractitionerRole's ``organization`` (inline or
    resolved). ``None``: it is named only by ``display``, so the hub cannot tell."""
    if _named_only_by_display(ref):
        return None
    claim = _org_claim(ref, ctx)
    if claim == "foreign":
        return claim
    target_ref = ref.get("reference")
    target = ctx.resolve(target_ref) if isinstance(target_ref, str) else None
    if target is not None and target.get("resourceType") == "PractitionerRole":
        org = target.get("organization")
        if isinstance(org, dict):
            if _named_only_by_display(org):
                return None
            role_claim = _org_claim(org, ctx)
            if role_claim != "none":
                return role_claim
    return claim


def _check_performers(res: dict[str, Any], rtype: str, ctx: _Ctx) -> None:
    for keys in _PERFORMER_PATHS.get(rtype, ()):
        for loc, ref in _expand(res, keys, ()):
            if not isinstance(ref, dict):
                continue
            claim = _performer_claim(ref, ctx)
            if claim == "foreign":
                ctx.add(
                    "error",
                    "forbidden",
                    "foreign-institution",
                    loc,
                    "names another institution as performer; "
                    "an institution posts only results it produced",
                )
            elif claim is None:
                ctx.add(
                    "error",
                    "forbidden",
                    "foreign-institution",
                    loc,
                    "names its performer only by display (or a PractitionerRole whose "
                    "organization is named only by display); name it by reference or "
                    "identifier so that the hub can tell it is the posting institution",
                )


# --- per-type hub rules ---------------------------------------------------------------


def _present(value: Any) -> bool:
    return value is not None and value != "" and value != [] and value != {}


def _require(res: dict[str, Any], ctx: _Ctx, *names: str) -> None:
    for name in names:
        if not _present(res.get(name)):
            ctx.missing((name,), f"{name} is required by the hub")


def _require_subject(res: dict[str, Any], ctx: _Ctx) -> None:
    subject = res.get("subject")
    if not _present(subject):
        ctx.missing(("subject",), "subject (the patient) is required by the hub")
        return
    if not isinstance(subject, dict):
        return  # reported by the model
    ident = subject.get("identifier")
    if isinstance(ident, dict):
        system, value = ident.get("system"), ident.get("value")
        if isinstance(system, str) and system and isinstance(value, str) and value.strip():
            return
    ref = subject.get("reference")
    if ctx.bundle is None:
        ctx.add(
            "error",
            "required",
            "no-patient",
            ("subject", "identifier"),
            "a resource posted on its own identifies its patient by subject.identifier "
            "(system and value)",
        )
        return
    if not isinstance(ref, str):
        ctx.add(
            "error",
            "required",
            "no-patient",
            ("subject",),
            "subject needs a reference to a Patient entry or an identifier (system and value)",
        )
        return
    target = ctx.bundle.resolve(ref)
    if target is None:
        if not ref.startswith("urn:uuid:"):  # an unresolved urn:uuid: is reported already
            ctx.add(
                "error",
                "not-found",
                "no-patient",
                ("subject", "reference"),
                "subject.reference resolves to no Patient entry of this bundle "
                "and subject has no identifier",
            )
    elif target.get("resourceType") != "Patient":
        ctx.add(
            "error",
            "business-rule",
            "no-patient",
            ("subject", "reference"),
            "subject.reference resolves to an entry that is not a Patient",
        )


def _rule_patient(res: dict[str, Any], ctx: _Ctx) -> None:
    idents = res.get("identifier")
    if isinstance(idents, list):
        for ident in idents:
            if isinstance(ident, dict):
                system, value = ident.get("system"), ident.get("value")
                if isinstance(system, str) and system and isinstance(value, str) and value:
                    return
    ctx.missing(("identifier",), "a Patient needs at least one identifier with system and value")


def _rule_observation(res: dict[str, Any], ctx: _Ctx) -> None:
    _require(res, ctx, "status", "code")
    if not any(_present(res.get(k)) for k in _EFFECTIVE):
        ctx.missing(
            ("effective",),
            "effective[x] (effectiveDateTime, -Period, -Instant or -Timing) is required by the hub",
        )
    _require_subject(res, ctx)


def _rule_diagnostic_report(res: dict[str, Any], ctx: _Ctx) -> None:
    _require(res, ctx, "status", "code")
    if not any(_present(res.get(k)) for k in (*_EFFECTIVE, "issued")):
        ctx.missing(("effective",), "effective[x] or issued is required by the hub")
    _require_subject(res, ctx)


def _rule_service_request(res: dict[str, Any], ctx: _Ctx) -> None:
    _require(res, ctx, "code")
    _require_subject(res, ctx)
    _require(res, ctx, "authoredOn")


def is_dicom_uid(uid: str) -> bool:
    """A DICOM UID (PS3.5 §9.1): numeric components without leading zeros, ≤ 64 chars."""
    return len(uid) <= 64 and _DICOM_UID.fullmatch(uid) is not None


def _rule_imaging_study(res: dict[str, Any], ctx: _Ctx) -> None:
    idents = res.get("identifier")
    has_uid = False
    if isinstance(idents, list):
        for i, ident in enumerate(idents):
            if not isinstance(ident, dict) or ident.get("system") != DICOM_UID_SYSTEM:
                continue
            has_uid = True
            value = ident.get("value")
            if isinstance(value, str) and value.strip():
                uid = value[len("urn:oid:") :] if value.startswith("urn:oid:") else None
                if uid is None or not is_dicom_uid(uid):
                    ctx.add(
                        "error",
                        "value",
                        "invalid-dicom-uid",
                        ("identifier", i, "value"),
                        "the Study Instance UID must be urn:oid:<uid>, a DICOM UID "
                        "(digits and dots, at most 64 characters)",
                    )
    if not has_uid:
        ctx.missing(
            ("identifier",),
            "the Study Instance UID (an identifier with system urn:dicom:uid, "
            "value urn:oid:<uid>) is required",
        )
    series = res.get("series")
    has_modality = _present(res.get("modality"))
    if isinstance(series, list):
        for i, s in enumerate(series):
            if not isinstance(s, dict):
                continue
            has_modality = has_modality or _present(s.get("modality"))
            uid = s.get("uid")
            if isinstance(uid, str) and not is_dicom_uid(uid):
                ctx.add(
                    "error",
                    "value",
                    "invalid-dicom-uid",
                    ("series", i, "uid"),
                    "a Series Instance UID is a DICOM UID (digits and dots, at most 64)",
                )
    if not has_modality:
        ctx.missing(("modality",), "a modality (ImagingStudy.modality or series.modality)")
    _require_subject(res, ctx)


_TYPE_RULES: Final = {
    "Patient": _rule_patient,
    "Observation": _rule_observation,
    "DiagnosticReport": _rule_diagnostic_report,
    "ImagingStudy": _rule_imaging_study,
    "ServiceRequest": _rule_service_request,
}


# --- bundle shell, issue builders ------------------------------------------------------


def _validate_bundle_shell(raw: dict[str, Any], entries_raw: Any, issues: list[Issue]) -> None:
    """Validate the Bundle without its entries' resources (each is validated on its own).

    Entries usually differ only in their ``fullUrl`` (``request`` is the same for every
    Observation of a transaction), and an entry's validity does not depend on the others or
    on the Bundle's other elements: so the distinct fullUrls are validated together, and the
    Bundle with one entry per distinct remaining shape — leaving out the shapes, and the
    Bundle's own elements, already found valid in an earlier request
    (:data:`_VALID_SHAPES`). Only when that finds a problem is the Bundle validated entry by
    entry, so that the issues name the entries exactly as before."""
    if not isinstance(entries_raw, list):
        _validate_shell(raw, issues)
        return
    shells = [
        {k: v for k, v in e.items() if k != "resource"} if isinstance(e, dict) else e
        for e in entries_raw
    ]
    shell = dict(raw)
    shell["entry"] = shells
    urls: list[str] = []
    shapes: dict[bytes, Any] = {}
    try:
        for e in shells:
            if isinstance(e, dict) and isinstance(e.get("fullUrl"), str):
                urls.append(e["fullUrl"])
                e = {**e, "fullUrl": ""}
            shape = codec.dumps(e)
            if shape not in _VALID_SHAPES:
                shapes.setdefault(shape, e)
        _full_urls().validate_python(urls)
        head = {k: v for k, v in raw.items() if k != "entry"}
        head_shape = b"Bundle:" + codec.dumps(head)
        if shapes or head_shape not in _VALID_SHAPES:
            if shapes:
                head["entry"] = list(shapes.values())
            get_fhir_model_class("Bundle").model_validate(head)
            _remember_valid(head_shape, *shapes)
    except Exception:  # any doubt: validate entry by entry, as before
        _validate_shell(shell, issues)


#: Entry shapes (an entry without its resource, fullUrl blanked) and Bundle elements (without
#: entry) the R4B model found valid: at most :data:`_SHAPES_KEPT`, each short.
_VALID_SHAPES: Final[set[bytes]] = set()
_SHAPES_KEPT: Final = 1024
_SHAPE_MAX_BYTES: Final = 512


def _remember_valid(*shapes: bytes) -> None:
    if len(_VALID_SHAPES) + len(shapes) > _SHAPES_KEPT:
        _VALID_SHAPES.clear()  # bounded memory, whatever is posted
    _VALID_SHAPES.update(s for s in shapes if len(s) <= _SHAPE_MAX_BYTES)


def _validate_shell(shell: dict[str, Any], issues: list[Issue]) -> None:
    try:
        get_fhir_model_class("Bundle").model_validate(shell)
    except ValidationError as exc:
        issues.extend(validation_issues(exc, "Bundle"))
    except Exception as exc:  # odd input fhir.resources does not turn into a ValidationError
        issues.append(
            Issue(
                "error",
                "structure",
                f"Bundle: not a valid R4 Bundle ({type(exc).__name__})",
                expression=("Bundle",),
            )
        )


@functools.cache
def _full_urls() -> TypeAdapter[list[Any]]:
    """Validates a list of ``Bundle.entry.fullUrl`` values as the R4B model does."""
    annotation = get_fhir_model_class("BundleEntry").model_fields["fullUrl"].annotation
    return TypeAdapter(list[annotation])  # type: ignore[valid-type]


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                name = key if re.fullmatch(r"_?[A-Za-z][A-Za-z0-9]*", key) else "…"
                raise ValueError(f"duplicate key {name!r} in an object")
            seen.add(key)
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in JSON")


def _too_deep(limit: int) -> Issue:
    return Issue(
        "error",
        "structure",
        f"JSON nested more than {limit} deep (objects and arrays)",
        reason="too-deep",
    )


def _malformed(message: str) -> Issue:
    return Issue("error", "structure", f"malformed JSON: {message}", reason="malformed-json")


def _not_a_resource(where: str, what: str) -> Issue:
    return Issue(
        "error",
        "structure",
        f"{where}: a FHIR resource must be a JSON object with {what}",
        expression=(where,),
        reason="not-a-resource",
    )


def _missing(where: str, message: str) -> Issue:
    return Issue(
        "error", "required", f"{where}: {message}", expression=(where,), reason="missing-field"
    )


def _unsupported(where: str, why: str) -> Issue:
    return Issue(
        "error", "not-supported", f"{where}: {why}", expression=(where,), reason="unsupported-type"
    )


def _shown(name: str, default: str = "Resource") -> str:
    """``name`` if it looks like a FHIR type or code, else ``default``: posted strings that
    might be anything (a name, a number) are never echoed."""
    return name if _SHOWABLE.fullmatch(name) else default


def _unsupported_why(rtype: str) -> str:
    shown = _shown(rtype, "this resourceType")
    if _is_r4_type(rtype):
        return f"the hub does not accept {shown}"
    return f"{shown} is not a FHIR R4 resource type"
