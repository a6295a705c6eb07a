"""HTTP handlers of the FHIR gateway. Every refusal is an ``OperationOutcome``.

Order of checks for a write: credential (401) → content type (415) → size (413) → body
read time-out (408) → JSON and its nesting depth (400) → FHIR and hub rules (400 / 403 /
422) → the Kafka message fits (413) → publish to Kafka with acks=all (503 when it does not
acknowledge) → answer. Nothing is published unless the answer is 2xx, and for a bundle, all
of it or none of it is.

Bounded work: a body of more than :data:`OFFLOAD_BYTES` is parsed, validated and turned into
Kafka messages in a worker thread (at most ``validation_threads`` at once), so the event
loop keeps answering (``/healthz`` included) while a 20 MB bundle is checked; every
OperationOutcome lists at most ``max_outcome_issues`` issues plus one that counts the rest.
URLs in answers are built from the configured ``public_base_url``, never from the request's
``Host`` header.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import gc
import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

from services.common import codec
from services.common.envelope import SCHEMA_VERSION, new_id, utcnow
from services.common.errors import KafkaUnavailableError
from services.common.fhir import (
    DEFAULT_MAX_ISSUES,
    FHIR_JSON,
    Issue,
    IssueCode,
    cap_issues,
    operation_outcome,
    truncated_note,
)
from services.common.identifiers import keyed_hash
from services.common.institutions import Institution, Registry, ReloadingRegistry
from services.common.logging import trace
from services.common.metrics import CONTENT_TYPE_LATEST, exposition
from services.common.records import RECORD_TYPES, business_identifier, business_key, record_id_for
from services.common.topics import RESOURCE_ACCEPTED
from services.ingest.capability import capability_statement
from services.ingest.metrics import IngestMetrics, type_label
from services.ingest.proxy import READ_TYPES, Proxy, not_readable, read_body, unauthenticated
from services.ingest.publisher import MessageTooLargeError, OutMessage, Publisher
from services.ingest.server import HeaderDeadline
from services.ingest.validation import (
    CLINICAL_TYPES,
    MAX_DEPTH,
    BundleCheck,
    CheckedResource,
    check_bundle,
    check_resource,
    http_status,
    parse_json,
)
from services.patient_index.normalize import Ident
from services.patient_index.routing import CLINICAL, route_and_scope

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Bodies (and NDJSON lines) larger than this are parsed and validated in a worker thread.
OFFLOAD_BYTES = 64 * 1024
#: The longest the event loop works through NDJSON lines before letting others run.
_IMPORT_SLICE_S = 0.02

_gc_lock = threading.Lock()
_gc_pausers = 0


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while a large body is parsed and checked.

    Parsed JSON has no reference cycles, but a 20 MB body makes a million objects, and each
    full collection the allocations trigger walks all of them while holding the GIL — that,
    not the parsing, is what would stall the event loop (measured: pauses of 0.2–0.3 s
    with collection, under 0.1 s without). Counted, so overlapping validations nest."""
    global _gc_pausers
    with _gc_lock:
        _gc_pausers += 1
        if _gc_pausers == 1:
            gc.disable()
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pausers -= 1
            if _gc_pausers == 0:
                gc.enable()


def _dismantle(value: Any) -> None:
    """Empty every object and array in parsed JSON ``value``, one at a time.

    Dropping the last reference to a 20 MB document frees its million objects in one go,
    holding the GIL for as long as that takes (tens of ms): done here, in the worker thread,
    node by node, the event loop runs in between. Only for what is no longer needed: the
    checked resources' dicts are emptied too (their type, issues and messages remain)."""
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            stack.extend(v for v in node.values() if isinstance(v, dict | list))
            node.clear()
        elif isinstance(node, list):
            stack.extend(v for v in node if isinstance(v, dict | list))
            node.clear()


EVENT_TYPE = RESOURCE_ACCEPTED.event_type
_EVENT_TYPE_BYTES = EVENT_TYPE.encode()
_SCHEMA_VERSION_BYTES = str(SCHEMA_VERSION).encode()
JSON_TYPES = frozenset({FHIR_JSON, "application/json"})
NDJSON_TYPES = frozenset({"application/fhir+ndjson", "application/x-ndjson", "application/ndjson"})
RETRY_AFTER_S = 5
IMPORT_CHUNK = 500
_TRACE_RE = re.compile(r"^[A-Za-z0-9._-]{8,64}$")
_TRACE_KEY = web.RequestKey("mrhub_trace_id", str)
_REASONS_HTTP = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    408: "Request Timeout",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Entity",
    500: "Internal Server Error",
    503: "Service Unavailable",
}

STATE_KEY: web.AppKey[Gateway] = web.AppKey("gateway")


def fhir_response(
    doc: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=codec.dumps(doc),
        status=status,
        content_type=FHIR_JSON,
        charset="utf-8",
        headers=headers,
    )


def _without_gc(fn: Callable[..., T], *args: Any) -> T:
    with _gc_paused():
        return fn(*args)


def outcome_response(
    issues: Sequence[Issue],
    status: int,
    headers: dict[str, str] | None = None,
    *,
    limit: int | None = DEFAULT_MAX_ISSUES,
) -> web.Response:
    """An OperationOutcome answer listing the first ``limit`` issues and a count of the rest."""
    return fhir_response(operation_outcome(issues, limit=limit), status, headers)


def refusal(
    status: int,
    code: IssueCode,
    reason: str,
    message: str,
    *,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """A one-issue OperationOutcome answer."""
    if status == 401:
        headers = {**(headers or {}), "WWW-Authenticate": 'Bearer realm="mrhub"'}
    return outcome_response([Issue("error", code, message, (), reason)], status, headers)


class Gateway:
    """Everything a request needs: the registry, the publisher, metrics, limits, key."""

    def __init__(
        self,
        registry: Registry,
        publisher: Publisher,
        metrics: IngestMetrics,
        *,
        hmac_key: bytes,
        max_body_bytes: int,
        institutions_path: Path | None = None,
        body_timeout_s: float = 30.0,
        min_body_rate: int = 32 * 1024,
        max_json_depth: int = MAX_DEPTH,
        max_outcome_issues: int = DEFAULT_MAX_ISSUES,
        public_base_url: str | None = None,
        validation_threads: int = 2,
        proxy: Proxy | None = None,
    ) -> None:
        #: where reads, searches and CDS Hooks calls go (recognition); None: answered 503
        self.proxy = proxy
        # with a path, the registry follows the file (tokens issued or revoked count at once)
        self._registry = (
            ReloadingRegistry(institutions_path) if institutions_path is not None else registry
        )
        self.publisher = publisher
        self.metrics = metrics
        self.hmac_key = hmac_key
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s
        self.min_body_rate = min_body_rate
        self.max_json_depth = max_json_depth
        self.max_outcome_issues = max_outcome_issues
        #: where hospitals reach the hub, without a trailing slash; None: answers hold
        #: relative URLs (the request's Host header is never used)
        self.public_base_url = public_base_url.rstrip("/") if public_base_url else None
        self._validation_threads = validation_threads
        self._children: dict[tuple[object, tuple[str, ...]], Any] = {}
        self._slots: asyncio.Semaphore | None = None
        self._executor: ThreadPoolExecutor | None = None

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up once: every request counts itself in a few
        metrics, and prometheus_client's ``labels`` checks and locks on each call. Only for
        label values from a bounded set (routes, status classes, levels, outcomes, types)."""
        key = (metric, labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    # ------------------------------------------------------------------ bounded work

    async def offload(self, size: int, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)``: inline when ``size`` (the bytes it works on) is small, else in a
        worker thread, at most ``validation_threads`` at once, so the event loop stays free."""
        if size <= OFFLOAD_BYTES:
            return fn(*args)
        if self._slots is None or self._executor is None:
            self._slots = asyncio.Semaphore(self._validation_threads)
            self._executor = ThreadPoolExecutor(
                self._validation_threads, thread_name_prefix="mrhub-validate"
            )
        async with self._slots:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(
                self._executor, functools.partial(_without_gc, fn, *args)
            )

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def url(self, path: str) -> str:
        """``path`` (starting with ``/``) under the configured public base URL, or relative."""
        return f"{self.public_base_url}{path}" if self.public_base_url else path

    def fits(self, msg: OutMessage) -> bool:
        publisher = self.publisher
        return publisher is None or publisher.fits(msg)

    def outcome(
        self, issues: Sequence[Issue], status: int, headers: dict[str, str] | None = None
    ) -> web.Response:
        return outcome_response(issues, status, headers, limit=self.max_outcome_issues)

    @property
    def registry(self) -> Registry:
        return self._registry

    # ---------------------------------------------------------------- building messages

    def kafka_key(
        self,
        institution: Institution,
        checked: CheckedResource,
        event_id: str,
        record_id: str | None = None,
    ) -> bytes:
        """institution | type | the record id (a result or order: every post of one record
        goes to one partition, in order), else a keyed hash of the business id — never an
        identifier in clear."""
        if record_id is not None:
            return f"{institution.id}|{checked.resource_type}|{record_id}".encode()
        bid = checked.business_id
        digest = keyed_hash(self.hmac_key, *bid) if bid is not None else f"event-{event_id}"
        return f"{institution.id}|{checked.resource_type}|{digest}".encode()

    def message(
        self,
        institution: Institution,
        checked: CheckedResource,
        *,
        received_at: datetime,
        trace_id: str,
        bundle_id: str | None = None,
        entry_index: int | None = None,
        import_line: int | None = None,
        patients: Mapping[str, dict[str, Any]] | None = None,
        record_id: str | None = None,
        routes: dict[tuple[int, ...], bytes | None] | None = None,
    ) -> tuple[OutMessage, str]:
        # The Envelope's JSON, written directly (a pydantic model built and dumped for each
        # resource cost more than the encoding); test_ingest_envelope checks it against
        # Envelope.to_bytes.
        event_id = new_id()
        idents = patient_identifiers(checked.resource, patients or {})
        doc = {
            "schema_version": SCHEMA_VERSION,
            "event_id": event_id,
            "event_type": EVENT_TYPE,
            "occurred_at": utcnow(),
            "received_at": received_at,
            "source": institution.id,
            "trace_id": trace_id,
            "payload": {
                "resource_type": checked.resource_type,
                "bundle_id": bundle_id,
                "entry_index": entry_index,
                "import_line": import_line,
                "full_url": checked.full_url,
                "patient_identifiers": idents,
                "resource": checked.resource,
            },
        }
        headers = (
            ("event_type", _EVENT_TYPE_BYTES),
            ("event_id", event_id.encode()),
            ("trace_id", trace_id.encode()),
            ("schema_version", _SCHEMA_VERSION_BYTES),
            ("source", institution.id.encode()),
        )
        key = self.kafka_key(institution, checked, event_id, record_id)
        route = self.route(institution, checked, idents, routes)
        return OutMessage(key, codec.dumps(doc), headers, route), event_id

    def route(
        self,
        institution: Institution,
        checked: CheckedResource,
        idents: list[Any],
        memo: dict[tuple[int, ...], bytes | None] | None = None,
    ) -> bytes | None:
        """The keyed hash of the patient's strongest identifier, which places the message on
        the partition whose patient-index worker owns it (services/patient_index/routing).
        ``memo`` (one per bundle) keeps it per subject: a visit's Patient and the results
        that reference it share the identifier objects, so they are normalised and hashed
        once, not once per resource (a clinical resource's route depends on nothing else; a
        Patient's also on its birth date and sex, so a Patient shares its route only when
        they agree with its 身份证)."""
        rtype = checked.resource_type
        memo_key: tuple[int, ...] | None = None
        if memo is not None and (rtype in CLINICAL or rtype == "Patient"):
            memo_key = tuple(map(id, idents))
            if rtype in CLINICAL and memo_key in memo:
                return memo[memo_key]
        payload = {
            "resource_type": rtype,
            "resource": checked.resource,
            "patient_identifiers": idents,
        }
        found, shared = route_and_scope(payload, institution.id, self._hash_ident)
        if memo_key is not None and memo is not None and shared:
            memo[memo_key] = found
        return found

    def _hash_ident(self, ident: Ident) -> str:
        return keyed_hash(self.hmac_key, *ident.key())

    def count(
        self, institution: Institution, checked: Sequence[CheckedResource], outcome: str
    ) -> None:
        """Count resources (and, when rejected, their reasons): one increment per label set,
        however many resources (a 50,000-entry bundle costs a few increments)."""
        if not checked:
            return
        self.child(self.metrics.resources_by_level, str(institution.level), outcome).inc(
            len(checked)
        )
        by_type = collections.Counter(type_label(c.resource_type) for c in checked)
        for label, n in by_type.items():
            self.child(self.metrics.resources, label, outcome).inc(n)
        if outcome == "rejected":
            reasons = collections.Counter(
                reason for c in checked for reason in {i.reason for i in c.issues if i.is_error}
            )
            for reason, n in reasons.items():
                self.metrics.rejections.labels(reason).inc(n)

    def too_large_issue(self, where: str, msg: OutMessage) -> Issue:
        limit = self.publisher.max_message_bytes if self.publisher is not None else 0
        return Issue(
            "error",
            "too-costly",
            f"{where}: as a Kafka message this resource takes {msg.size} bytes, over the "
            f"hub's limit of {limit} bytes; nothing was published",
            (where,),
            "too-large",
        )


def patient_identifiers(
    resource: Mapping[str, Any], patients: Mapping[str, dict[str, Any]]
) -> list[Any]:
    """The identifiers of the patient a resource is about: a Patient's own; else those of
    the Patient its ``subject`` references in the same bundle; else ``subject.identifier``."""
    if resource.get("resourceType") == "Patient":
        return list(resource.get("identifier") or [])
    subject = resource.get("subject")
    if not isinstance(subject, dict):
        return []
    ref = subject.get("reference")
    if isinstance(ref, str) and ref in patients:
        return list(patients[ref].get("identifier") or [])
    ident = subject.get("identifier")
    return [ident] if isinstance(ident, dict) else []


def record_id(
    institution: Institution,
    checked: CheckedResource,
    patients: Mapping[str, dict[str, Any]],
    resolve: Callable[[str], Mapping[str, Any] | None] | None = None,
) -> str | None:
    """The hub's id of the result or order ``checked`` will be (the patient index computes
    the same from the published resource: services/common/records.py); ``None`` for a type
    that is no record (Patient, context resources)."""
    if checked.resource_type not in RECORD_TYPES:
        return None
    key = business_key(
        checked.resource_type,
        checked.resource,
        institution.id,
        patient_identifiers(checked.resource, patients),
        resolve=resolve,
    )
    return record_id_for(key)


def resolve_bundle(
    institution: Institution,
    entries: Sequence[CheckedResource],
    patients: Mapping[str, dict[str, Any]],
) -> dict[int, str]:
    """Record ids of a bundle's accepted results and orders (``id(entry)`` → id), and every
    ``urn:uuid:`` reference (any Reference whose ``reference`` is another such entry's
    ``fullUrl``) rewritten as a FHIR transaction does: ``<Type>/<record id>``, plus the
    target's business identifier on the Reference (an ImagingStudy's Study Instance UID,
    else its report / order number) — so that the patient index, which sees one resource at
    a time, ties a report to the study of the same bundle. References to a Patient or to a
    context resource are left as posted (the patient is resolved as before)."""
    by_url = {e.full_url: e for e in entries if e.full_url and e.resource_type in RECORD_TYPES}

    def resolve(ref: str) -> Mapping[str, Any] | None:
        found = by_url.get(ref)
        return found.resource if found is not None else None

    ids: dict[int, str] = {}
    for e in entries:
        rid = record_id(institution, e, patients, resolve)
        if rid is not None:
            ids[id(e)] = rid
    if not by_url:
        return ids
    targets: dict[str, dict[str, Any]] = {}
    for url, e in by_url.items():
        if (rid := ids.get(id(e))) is not None:
            target: dict[str, Any] = {"reference": f"{e.resource_type}/{rid}"}
            ident = business_identifier(e.resource_type, e.resource)
            if ident is not None:
                target["identifier"] = ident
            targets[url] = target
    for e in entries:
        if e.references is None:
            _rewrite_references(e.resource, targets)
        else:
            _rewrite_found(e.references, targets)
    return ids


def _rewrite_found(
    references: Sequence[tuple[tuple[str | int, ...], dict[str, Any]]],
    targets: Mapping[str, dict[str, Any]],
) -> None:
    """:func:`_rewrite_references` over the Reference objects the checks' walk already found
    (``(location, object)``), without walking the resource again: the same objects are
    rewritten, none nested inside another one rewritten (that walk does not descend into a
    Reference it rewrites)."""
    hits = [(loc, ref) for loc, ref in references if ref.get("reference") in targets]
    if not hits:
        return
    locs = {loc for loc, _ in hits}
    for loc, ref in hits:
        if len(hits) > 1 and any(loc[:k] in locs for k in range(len(loc))):
            continue
        _point(ref, targets[ref["reference"]])


def _rewrite_references(node: Any, targets: Mapping[str, dict[str, Any]]) -> None:
    """Rewrite, in place, each Reference under ``node`` that names one of ``targets``."""
    stack = [node]
    while stack:
        cur = stack.pop()
        if isinstance(cur, dict):
            ref = cur.get("reference")
            if isinstance(ref, str) and (target := targets.get(ref)) is not None:
                _point(cur, target)
                continue
            stack.extend(v for v in cur.values() if isinstance(v, dict | list))
        elif isinstance(cur, list):
            stack.extend(v for v in cur if isinstance(v, dict | list))


def _point(reference: dict[str, Any], target: Mapping[str, Any]) -> None:
    """Make the Reference object ``reference`` name ``target`` (its reference, and its
    identifier when it has one)."""
    reference["reference"] = target["reference"]
    if "identifier" in target:
        reference["identifier"] = dict(target["identifier"])


def bundle_patients(entries: Sequence[CheckedResource]) -> dict[str, dict[str, Any]]:
    """The bundle's Patients by every name a reference may use: fullUrl and Patient/<id>."""
    found: dict[str, dict[str, Any]] = {}
    for e in entries:
        if e.resource_type != "Patient":
            continue
        if e.full_url:
            found[e.full_url] = e.resource
        if isinstance(e.resource.get("id"), str):
            found[f"Patient/{e.resource['id']}"] = e.resource
    return found


def _trace_id(request: web.Request) -> str:
    """The request's trace id: the client's ``X-Trace-Id`` or ``traceparent``, else a new
    one (made once per request: the middleware asks first)."""
    known = request.get(_TRACE_KEY)
    if isinstance(known, str):
        return known
    given = request.headers.get("X-Trace-Id", "")
    if _TRACE_RE.match(given):
        return given
    parts = request.headers.get("traceparent", "").split("-")
    if len(parts) == 4 and len(parts[1]) == 32:
        return parts[1]
    return new_id()


def _authenticate(gw: Gateway, request: web.Request) -> Institution | web.Response:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        gw.metrics.rejections.labels("unauthenticated").inc()
        return refusal(
            401, "login", "unauthenticated", "an Authorization: Bearer token is required"
        )
    institution = gw.registry.authenticate(token.strip())
    if institution is None:
        gw.metrics.rejections.labels("unauthenticated").inc()
        return refusal(401, "login", "unauthenticated", "the bearer token is not valid")
    return institution


def _media_type_refusal(
    gw: Gateway, request: web.Request, allowed: frozenset[str]
) -> web.Response | None:
    if request.content_type in allowed:
        return None
    gw.metrics.rejections.labels("unsupported-media-type").inc()
    shown = request.content_type if len(request.content_type) < 80 else "that content type"
    return refusal(
        415,
        "not-supported",
        "unsupported-media-type",
        f"Content-Type {shown!r} is not supported here; use {' or '.join(sorted(allowed))}",
    )


class BodyTimeoutError(Exception):
    """The request body (for ``$import``: the current line) did not arrive in time."""


_CLOSE_KEY = web.RequestKey("mrhub_close_after_answer", bool)


def _mib(n: int) -> str:
    """A byte count for diagnostics (a bare count of six or more digits would be masked)."""
    return f"{n / (1024 * 1024):.1f} MiB"


async def _read_body(gw: Gateway, request: web.Request) -> bytes | web.Response:
    declared = request.content_length
    if declared is not None and declared > gw.max_body_bytes:
        gw.metrics.rejections.labels("too-large").inc()
        return _too_large(gw.max_body_bytes)
    if request.content.is_eof():
        # the whole body came with the headers (aiohttp has seen its end): nothing to wait
        # for, so no deadline to keep
        whole = await request.content.read()
        if len(whole) > gw.max_body_bytes:  # chunked, or more than Content-Length said
            gw.metrics.rejections.labels("too-large").inc()
            request[_CLOSE_KEY] = True
            return _too_large(gw.max_body_bytes)
        return whole
    loop = asyncio.get_running_loop()
    clock = BodyClock(loop.time(), gw.body_timeout_s, gw.min_body_rate)
    body = bytearray()
    try:
        async with asyncio.timeout(None) as deadline:
            while True:
                deadline.reschedule(clock.deadline(len(body)))
                chunk = await request.content.readany()
                if not chunk:
                    break
                body += chunk
                if len(body) > gw.max_body_bytes:  # more than Content-Length said, or chunked
                    gw.metrics.rejections.labels("too-large").inc()
                    request[_CLOSE_KEY] = True
                    return _too_large(gw.max_body_bytes)
    except TimeoutError:
        return _body_timeout(gw, request)
    return bytes(body)


@dataclass(frozen=True, slots=True)
class BodyClock:
    """A body's deadline: ``timeout_s`` from its start, plus one second for every
    ``min_rate`` bytes received — a sender that keeps up ``min_rate`` is never cut off,
    however large its body; one that trickles is, after about ``timeout_s``."""

    started: float
    timeout_s: float
    min_rate: int

    def deadline(self, received: int) -> float:
        """The loop time by which the body must be complete, ``received`` bytes in."""
        return self.started + self.timeout_s + received / self.min_rate

    def remaining(self, now: float, received: int) -> float:
        return self.deadline(received) - now


def _body_timeout(gw: Gateway, request: web.Request, issues: Sequence[Issue] = ()) -> web.Response:
    """408, and the connection is closed once the answer is out (the rest of a slow body is
    never waited for)."""
    gw.metrics.rejections.labels("timeout").inc()
    log.info("request body too slow; answered 408 and closed the connection")
    request[_CLOSE_KEY] = True
    issue = Issue(
        "error",
        "timeout",
        f"the request body did not arrive in time ({gw.body_timeout_s:g} s, plus 1 s per "
        f"{gw.min_body_rate / 1024:g} KiB received); nothing of it was published",
        (),
        "timeout",
    )
    return gw.outcome([issue, *issues], 408, {"Connection": "close"})


def _too_large(limit: int) -> web.Response:
    return refusal(413, "too-costly", "too-large", f"the body is over the limit of {_mib(limit)}")


def _unavailable(exc: Exception) -> web.Response:
    log.warning("kafka unavailable; answered 503", extra={"err": str(exc)})
    return refusal(
        503,
        "transient",
        "kafka-unavailable",
        "the hub could not store the data durably just now; nothing was published. "
        f"Retry after {RETRY_AFTER_S} s.",
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


def _refused_by_kafka(where: str, exc: Exception) -> web.Response:
    """Kafka refused a message as too large: the topic's ``max.message.bytes`` is below the
    hub's limit (an operator's matter). Not retriable, so never 503."""
    log.warning("kafka refused a message as too large; answered 413", extra={"err": str(exc)})
    issue = Issue(
        "error",
        "too-costly",
        f"{where}: Kafka refused the message as too large for the topic (its "
        "max.message.bytes is below the hub's limit); nothing was published",
        (where,),
        "too-large",
    )
    return outcome_response([issue], 413)


def _status_line(code: int) -> str:
    return f"{code} {_REASONS_HTTP.get(code, '')}".strip()


# -------------------------------------------------------------------------------- handlers


def _admit(
    gw: Gateway, request: web.Request, media_types: frozenset[str]
) -> Institution | web.Response:
    """The writing institution — or the refusal: 401 (credential) or 415 (content type)."""
    who = _authenticate(gw, request)
    if isinstance(who, web.Response):
        return who
    refused = _media_type_refusal(gw, request, media_types)
    return refused if refused is not None else who


async def _json_write(
    gw: Gateway, request: web.Request
) -> tuple[Institution, bytes] | web.Response:
    """A write's institution and body — or the refusal: 401, 415, 413, 408."""
    who = _admit(gw, request, JSON_TYPES)
    if isinstance(who, web.Response):
        return who
    body = await _read_body(gw, request)
    if isinstance(body, web.Response):
        return body
    return who, body


@dataclass
class _Refused:
    issues: list[Issue]
    status: int


def _refused(gw: Gateway, issues: list[Issue]) -> _Refused:
    """The refusal, its issues already capped (so that a 100,000-issue list is built and
    freed where it was made, not on the event loop)."""
    return _Refused(cap_issues(issues, gw.max_outcome_issues), http_status(issues))


@dataclass
class _ResourceReady:
    checked: CheckedResource
    msg: OutMessage
    event_id: str
    answer: bytes
    record_id: str | None = None


def _parse(gw: Gateway, body: bytes) -> tuple[Any, _Refused | None]:
    raw, issues = parse_json(body, max_depth=gw.max_json_depth)
    if issues:
        for issue in issues:
            gw.metrics.rejections.labels(issue.reason).inc()
        return None, _Refused(issues, http_status(issues))
    return raw, None


def _prepare_resource(
    gw: Gateway,
    who: Institution,
    body: bytes,
    rtype: str,
    received_at: datetime,
    trace_id: str,
) -> _Refused | _ResourceReady:
    """Parse, check and build the Kafka message of one resource (pure CPU: may run in a
    worker thread)."""
    raw, refused = _parse(gw, body)
    if refused is not None:
        return refused
    checked = check_resource(raw, who, expected_type=rtype)
    big = len(body) > OFFLOAD_BYTES
    if checked.ok:
        rid = record_id(who, checked, {})
        msg, event_id = gw.message(
            who, checked, received_at=received_at, trace_id=trace_id, record_id=rid
        )
        if gw.fits(msg):
            ready = _ResourceReady(checked, msg, event_id, codec.dumps(checked.resource), rid)
            if big:
                _dismantle(raw)
            return ready
        checked.issues.append(gw.too_large_issue(rtype, msg))
    gw.count(who, [checked], "rejected")
    refused = _refused(gw, checked.issues)
    if big:
        _dismantle(raw)
    return refused


async def post_resource(request: web.Request) -> web.Response:
    gw = request.app[STATE_KEY]
    received_at = utcnow()
    rtype = request.match_info["type"]
    if rtype not in CLINICAL_TYPES:
        gw.metrics.rejections.labels("unknown-endpoint").inc()
        shown = rtype if rtype.isalnum() and len(rtype) < 40 else "that type"
        return refusal(
            404,
            "not-supported",
            "unknown-endpoint",
            f"this gateway does not take {shown} on its own; it takes {', '.join(CLINICAL_TYPES)}",
        )
    read = await _json_write(gw, request)
    if isinstance(read, web.Response):
        return read
    who, body = read
    trace_id = _trace_id(request)
    ready = await gw.offload(
        len(body), _prepare_resource, gw, who, body, rtype, received_at, trace_id
    )
    if isinstance(ready, _Refused):
        return outcome_response(ready.issues, ready.status, limit=None)  # capped already
    try:
        await gw.publisher.publish([ready.msg])
    except KafkaUnavailableError as exc:
        gw.count(who, [ready.checked], "not_published")
        return _unavailable(exc)
    except MessageTooLargeError as exc:
        gw.count(who, [ready.checked], "rejected")
        gw.metrics.rejections.labels("too-large").inc()
        return _refused_by_kafka(rtype, exc)
    gw.count(who, [ready.checked], "accepted")
    if ready.record_id is not None:
        # the record's id on the hub's FHIR base: GET <Location> reads it back
        headers = {"Location": gw.url(f"/fhir/{rtype}/{ready.record_id}")}
    else:  # a Patient: not readable here; the event's id names what was stored
        headers = {"Location": gw.url(f"/fhir/{rtype}/{ready.event_id}/_history/1")}
        headers["ETag"] = 'W/"1"'
    return web.Response(
        body=ready.answer,
        status=201,
        content_type=FHIR_JSON,
        charset="utf-8",
        headers={**headers, "X-Trace-Id": trace_id},
    )


@dataclass
class _BundleReady:
    bundle: BundleCheck
    transaction: bool
    good: list[CheckedResource]
    bad: list[CheckedResource]
    out: dict[int, tuple[OutMessage, str]]  # id(entry) → its message and event id
    ids: dict[int, str]  # id(entry) → its record id (results and orders)
    big: bool = False  # over OFFLOAD_BYTES: the answer is built in a worker thread


def _prepare_bundle(
    gw: Gateway, who: Institution, body: bytes, received_at: datetime, trace_id: str
) -> _Refused | _BundleReady:
    """Parse and check a bundle and build its entries' Kafka messages (pure CPU: may run in
    a worker thread)."""
    raw, refused = _parse(gw, body)
    if refused is not None:
        return refused
    bundle = check_bundle(raw, who)
    transaction = bundle.bundle_type == "transaction"
    if (
        (bundle.issues and any(i.is_error for i in bundle.issues))
        or bundle.bundle_type is None
        or (transaction and not bundle.ok)
    ):
        gw.count(who, bundle.entries, "rejected")
        refused = _refused(gw, bundle.all_issues)
        if len(body) > OFFLOAD_BYTES:
            _dismantle(raw)
        return refused
    bundle_id = raw.get("id") if isinstance(raw.get("id"), str) else None
    patients = bundle_patients(bundle.entries)
    ids = resolve_bundle(who, [e for e in bundle.entries if e.ok], patients)
    out: dict[int, tuple[OutMessage, str]] = {}
    routes: dict[tuple[int, ...], bytes | None] = {}
    for e in bundle.entries:
        if not e.ok:
            continue
        msg, eid = gw.message(
            who,
            e,
            received_at=received_at,
            trace_id=trace_id,
            bundle_id=bundle_id,
            entry_index=e.index,
            patients=patients,
            record_id=ids.get(id(e)),
            routes=routes,
        )
        if gw.fits(msg):
            out[id(e)] = (msg, eid)
        else:
            e.issues.append(gw.too_large_issue(f"Bundle.entry[{e.index}].resource", msg))
    good = [e for e in bundle.entries if e.ok]
    bad = [e for e in bundle.entries if not e.ok]
    if transaction and bad:
        gw.count(who, bundle.entries, "rejected")
        refused = _refused(gw, bundle.all_issues)
        if len(body) > OFFLOAD_BYTES:
            _dismantle(raw)
        return refused
    if len(body) > OFFLOAD_BYTES:
        _dismantle(raw)  # the messages are built; types, indexes and issues remain
    return _BundleReady(bundle, transaction, good, bad, out, ids, len(body) > OFFLOAD_BYTES)


def _bundle_answer(gw: Gateway, ready: _BundleReady) -> bytes:
    """The batch- / transaction-response. Refused entries carry their OperationOutcome until
    the answer has listed ``max_outcome_issues`` issues; after that, their status only, and
    the last refused entry's outcome counts the issues left out."""
    budget = gw.max_outcome_issues
    left_out = 0
    last_short: dict[str, Any] | None = None
    entries = []
    for e in ready.bundle.entries:
        if e.ok:
            rid = ready.ids.get(id(e))
            if rid is not None:
                resp: dict[str, Any] = {
                    "status": "201 Created",
                    "location": gw.url(f"/fhir/{e.resource_type}/{rid}"),
                }
            else:  # a Patient or a context resource: not readable here
                eid = ready.out[id(e)][1]
                resp = {
                    "status": "201 Created",
                    "location": f"{e.resource_type}/{eid}/_history/1",
                    "etag": 'W/"1"',
                }
        else:
            resp = {"status": _status_line(http_status(e.issues))}
            listed = min(budget, len(e.issues))
            if listed:
                resp["outcome"] = operation_outcome(cap_issues(e.issues, listed)[:listed])
                budget -= listed
            if listed < len(e.issues):
                left_out += len(e.issues) - listed
                last_short = resp
        entries.append({"response": resp})
    if last_short is not None:
        note = operation_outcome([truncated_note(left_out)])["issue"]
        if "outcome" in last_short:
            last_short["outcome"]["issue"].extend(note)
        else:
            last_short["outcome"] = {"resourceType": "OperationOutcome", "issue": note}
    doc = {
        "resourceType": "Bundle",
        "type": "transaction-response" if ready.transaction else "batch-response",
        "entry": entries,
    }
    answer = codec.dumps(doc)
    if ready.big:
        _dismantle(entries)  # in the worker thread, not when the event loop drops it
    return answer


async def post_bundle(request: web.Request) -> web.Response:
    gw = request.app[STATE_KEY]
    received_at = utcnow()
    read = await _json_write(gw, request)
    if isinstance(read, web.Response):
        return read
    who, body = read
    trace_id = _trace_id(request)
    ready = await gw.offload(len(body), _prepare_bundle, gw, who, body, received_at, trace_id)
    if isinstance(ready, _Refused):
        return outcome_response(ready.issues, ready.status, limit=None)  # capped already
    try:
        await gw.publisher.publish([ready.out[id(e)][0] for e in ready.good])
    except KafkaUnavailableError as exc:
        gw.count(who, ready.good, "not_published")
        return _unavailable(exc)
    except MessageTooLargeError as exc:
        gw.count(who, ready.bundle.entries, "rejected")
        gw.metrics.rejections.labels("too-large").inc()
        return _refused_by_kafka("Bundle", exc)
    gw.count(who, ready.good, "accepted")
    gw.count(who, ready.bad, "rejected")
    answer = await gw.offload(len(body), _bundle_answer, gw, ready)
    return web.Response(
        body=answer,
        status=200,
        content_type=FHIR_JSON,
        charset="utf-8",
        headers={"X-Trace-Id": trace_id},
    )


def _prepare_line(
    gw: Gateway,
    who: Institution,
    line: bytes,
    line_no: int,
    received_at: datetime,
    trace_id: str,
) -> CheckedResource | tuple[OutMessage, CheckedResource]:
    """One NDJSON line: the refused resource (its issues say why), or its Kafka message."""
    raw, parse_issues = parse_json(line, max_depth=gw.max_json_depth)
    if parse_issues:
        return CheckedResource("", {}, issues=parse_issues)
    checked = check_resource(raw, who)
    if not checked.ok:
        return checked
    msg, _ = gw.message(
        who, checked, received_at=received_at, trace_id=trace_id, import_line=line_no
    )
    if len(line) > OFFLOAD_BYTES:
        _dismantle(raw)  # in the worker thread: the message is built
    if not gw.fits(msg):
        checked.issues.append(gw.too_large_issue(checked.resource_type, msg))
        return checked
    return msg, checked


class _ImportIssues:
    """The refused lines' issues an import answer lists: the first ``limit``, then a count."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.listed: list[Issue] = []
        self.more = 0

    def extend(self, issues: Sequence[Issue]) -> None:
        room = self.limit - len(self.listed)
        self.listed.extend(issues[: max(room, 0)])
        self.more += max(len(issues) - max(room, 0), 0)

    def answer(self, summary: Issue) -> list[Issue]:
        return [summary, *self.listed, *([truncated_note(self.more)] if self.more else [])]


async def post_import(request: web.Request) -> web.StreamResponse:
    """NDJSON backfill, streamed line by line; refused lines are listed in the answer.

    Accepted lines are published in chunks, each chunk one Kafka transaction. If Kafka stops
    answering, or the next line does not arrive within ``body_timeout_s``, the import stops
    there: the answer (503 or 408) says which lines were stored, so the sender resumes after
    them.
    """
    gw = request.app[STATE_KEY]
    who = _admit(gw, request, NDJSON_TYPES)
    if isinstance(who, web.Response):
        return who
    received_at = utcnow()
    trace_id = _trace_id(request)
    issues = _ImportIssues(gw.max_outcome_issues)
    pending: list[tuple[OutMessage, CheckedResource]] = []
    accepted = refused_lines = line_no = 0
    stored_through = 0
    loop = asyncio.get_running_loop()
    slice_started = loop.time()

    async def flush() -> None:
        nonlocal accepted, stored_through
        if pending:
            await gw.publisher.publish([m for m, _ in pending])
            gw.count(who, [c for _, c in pending], "accepted")
            accepted += len(pending)
            pending.clear()
        stored_through = line_no

    def handled() -> str:
        if stored_through == 0:
            return "no line was stored: resend from line 1."
        return (
            f"lines 1–{stored_through} were handled ({accepted} stored, {refused_lines} "
            f"refused), nothing after line {stored_through} was stored: resend from line "
            f"{stored_through + 1}."
        )

    try:
        async for line in _lines(request, gw.max_body_bytes, gw.body_timeout_s, gw.min_body_rate):
            line_no += 1
            if line is None:
                refused_lines += 1
                gw.metrics.rejections.labels("too-large").inc()
                issues.extend(
                    [
                        Issue(
                            "error",
                            "too-costly",
                            f"line {line_no}: over the limit of {_mib(gw.max_body_bytes)}",
                            (f"line[{line_no}]",),
                            "too-large",
                        )
                    ]
                )
                continue
            if not line.strip():
                continue
            done = await gw.offload(
                len(line), _prepare_line, gw, who, line, line_no, received_at, trace_id
            )
            if isinstance(done, CheckedResource):
                refused_lines += 1
                gw.count(who, [done], "rejected")
                issues.extend(_prefixed(done.issues, line_no))
            else:
                pending.append(done)
                if len(pending) >= IMPORT_CHUNK:
                    await flush()
            if loop.time() - slice_started > _IMPORT_SLICE_S:
                await asyncio.sleep(0)  # many small lines at once: let other requests run
                slice_started = loop.time()
        await flush()
    except BodyTimeoutError:
        # the complete lines read so far are stored; the sender resumes after them
        try:
            await flush()
        except (KafkaUnavailableError, MessageTooLargeError):
            gw.count(who, [c for _, c in pending], "not_published")
            pending.clear()
        summary = Issue(
            "error",
            "timeout",
            f"the next line did not arrive in time ({gw.body_timeout_s:g} s, plus 1 s per "
            f"{gw.min_body_rate / 1024:g} KiB of it); " + handled(),
            (),
            "timeout",
        )
        gw.metrics.rejections.labels("timeout").inc()
        log.info("import body too slow; answered 408 and closed the connection")
        request[_CLOSE_KEY] = True
        return outcome_response(
            issues.answer(summary), 408, {"Connection": "close"}, limit=issues.limit + 2
        )
    except KafkaUnavailableError as exc:
        gw.count(who, [c for _, c in pending], "not_published")
        log.warning("import stopped: kafka unavailable", extra={"err": str(exc)})
        summary = Issue(
            "error",
            "transient",
            "Kafka stopped acknowledging; " + handled(),
            (),
            "kafka-unavailable",
        )
        return outcome_response(
            issues.answer(summary), 503, {"Retry-After": str(RETRY_AFTER_S)}, limit=issues.limit + 2
        )
    except MessageTooLargeError as exc:
        gw.count(who, [c for _, c in pending], "rejected")
        log.warning("import stopped: kafka refused a message as too large", extra={"err": str(exc)})
        summary = Issue(
            "error",
            "too-costly",
            "Kafka refused a message as too large for the topic (its max.message.bytes is "
            "below the hub's limit); " + handled(),
            (),
            "too-large",
        )
        return outcome_response(issues.answer(summary), 413, limit=issues.limit + 2)
    summary = Issue(
        "information",
        "informational",
        f"{line_no} lines read: {accepted} resources stored, {refused_lines} lines refused",
        (),
        "import-summary",
    )
    return outcome_response(
        issues.answer(summary), 200, {"X-Trace-Id": trace_id}, limit=issues.limit + 2
    )


def _prefixed(issues: Sequence[Issue], line_no: int) -> list[Issue]:
    return [
        Issue(
            i.severity,
            i.code,
            f"line {line_no}: {i.diagnostics}",
            tuple(f"line[{line_no}].{e}" for e in i.expression) or (f"line[{line_no}]",),
            i.reason,
        )
        for i in issues
    ]


async def _lines(
    request: web.Request, limit: int, timeout_s: float, min_rate: int
) -> AsyncIterator[bytes | None]:
    """Yield the body's lines as bytes, holding at most one line (≤ ``limit``) in memory;
    a longer line is skipped and yielded as None. Each line has a :class:`BodyClock` from
    when the previous one was handled, else ``BodyTimeoutError``."""
    loop = asyncio.get_running_loop()
    clock = BodyClock(loop.time(), timeout_s, min_rate)
    line_bytes = 0  # of the current line, skipped bytes included
    buf = bytearray()
    skipping = False
    while True:
        remaining = clock.remaining(loop.time(), line_bytes)
        try:
            if remaining <= 0:
                raise TimeoutError
            chunk = await asyncio.wait_for(request.content.readany(), remaining)
        except TimeoutError:
            raise BodyTimeoutError from None
        if not chunk:
            break
        start = 0
        while True:
            nl = chunk.find(b"\n", start)
            if nl < 0:
                line_bytes += len(chunk) - start
                if not skipping:
                    buf += chunk[start:]
                    if len(buf) > limit:
                        buf.clear()
                        skipping = True
                break
            if skipping:
                skipping = False
                yield None
            else:
                buf += chunk[start:nl]
                yield bytes(buf) if len(buf) <= limit else None
            clock = BodyClock(loop.time(), timeout_s, min_rate)
            line_bytes = 0
            buf.clear()
            start = nl + 1
    if skipping:
        yield None
    elif buf:
        yield bytes(buf)


async def metadata(request: web.Request) -> web.Response:
    gw = request.app[STATE_KEY]
    base = gw.url("/fhir") if gw.public_base_url else None
    return fhir_response(capability_statement(base, max_body_bytes=gw.max_body_bytes))


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    gw = request.app[STATE_KEY]
    if await gw.publisher.ready():
        return web.json_response({"status": "ready", "kafka": "up"})
    return web.json_response({"status": "not ready", "kafka": "down"}, status=503)


async def metrics(request: web.Request) -> web.Response:
    gw = request.app[STATE_KEY]
    return web.Response(
        body=exposition(gw.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


# ----------------------------------------------------------------- reads and CDS Hooks


async def _forward(request: web.Request) -> web.Response:
    """Forward a read, search or CDS Hooks call to recognition (services/ingest/proxy.py):
    401 without an Authorization header, 413 / 408 for a body too large or too slow, 503
    when no read service is configured or reachable."""
    gw = request.app[STATE_KEY]
    if not request.headers.get("Authorization", "").strip():
        gw.metrics.rejections.labels("unauthenticated").inc()
        return unauthenticated()
    proxy = gw.proxy
    if proxy is None:
        gw.metrics.rejections.labels("not-ready").inc()
        return refusal(
            503,
            "transient",
            "not-ready",
            "this gateway has no read service configured (MRHUB_RECOGNITION__URL)",
        )
    body = await read_body(request, proxy.max_body_bytes, gw.body_timeout_s)
    if isinstance(body, web.Response):
        gw.metrics.rejections.labels("too-large" if body.status == 413 else "timeout").inc()
        body.force_close()  # the rest of the body is never read
        return body
    return await proxy.forward(request, body, _trace_id(request))


def _readable_type(request: web.Request) -> web.Response | None:
    rtype = request.match_info["type"]
    if rtype in READ_TYPES:
        return None
    request.app[STATE_KEY].metrics.rejections.labels("unknown-endpoint").inc()
    return not_readable(rtype if rtype.isalnum() and len(rtype) < 40 else "that type")


async def get_search(request: web.Request) -> web.Response:
    """``GET /fhir/{type}``: a search, answered by recognition."""
    return _readable_type(request) or await _forward(request)


async def get_read(request: web.Request) -> web.Response:
    """``GET /fhir/{type}/{id}``: a read, answered by recognition."""
    return _readable_type(request) or await _forward(request)


async def post_search(request: web.Request) -> web.Response:
    """``POST /fhir/{type}/_search``: a search with its parameters in the body — never a
    write (it is routed apart from ``POST /fhir/{type}``)."""
    return _readable_type(request) or await _forward(request)


async def cds_services(request: web.Request) -> web.Response:
    """``GET /cds-services``, ``POST /cds-services/{id}`` and ``…/feedback``."""
    return await _forward(request)


# ------------------------------------------------------------------------------ middleware

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _route(request: web.Request) -> str:
    info = request.match_info.route.resource
    return info.canonical if info is not None else "unmatched"


def _connection_guard(request: web.Request) -> HeaderDeadline | None:
    transport = request.transport
    protocol = transport.get_protocol() if transport is not None else None
    return protocol if isinstance(protocol, HeaderDeadline) else None


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Time and count every request; turn aiohttp's own errors (404, 405, 413) and any
    unexpected exception into an OperationOutcome; a client that goes away is one log line.
    Tells the connection's header deadline (when the gateway runs under
    :mod:`services.ingest.server`) that a request is being handled."""
    gw = request.app[STATE_KEY]
    started = time.perf_counter()
    route = _route(request)
    request[_TRACE_KEY] = trace_id = _trace_id(request)
    guard = _connection_guard(request)
    if guard is not None:
        guard.request_started()
    try:
        with trace(trace_id):  # every log line about this request carries its trace id
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                response = _from_http_exception(gw, exc)
            except ConnectionError:
                # the client closed the connection: nothing to answer, nothing to trace back
                log.info("client disconnected before the answer", extra={"route": route})
                gw.metrics.rejections.labels("client-closed").inc()
                response = web.Response(status=499)
            except Exception:
                log.exception("unhandled error", extra={"route": route})
                gw.metrics.rejections.labels("internal").inc()
                response = refusal(
                    500, "exception", "internal", "unexpected error; nothing was published"
                )
            if request.get(_CLOSE_KEY):
                await _answer_and_close(request, response)
    finally:
        if guard is not None:
            guard.request_finished()
    gw.child(gw.metrics.requests, route, f"{response.status // 100}xx").inc()
    gw.child(gw.metrics.latency, route).observe(time.perf_counter() - started)
    if request.content_length:
        gw.child(gw.metrics.received_bytes, route).inc(request.content_length)
    return response


async def _answer_and_close(request: web.Request, response: web.StreamResponse) -> None:
    """Send ``response`` now and close the connection after it, without reading (or
    lingering over) the rest of the request body."""
    response.force_close()
    with contextlib.suppress(ConnectionError):
        await response.prepare(request)
        await response.write_eof()
    if request.transport is not None:
        request.transport.close()


def _from_http_exception(gw: Gateway, exc: web.HTTPException) -> web.Response:
    if exc.status == 405:
        gw.metrics.rejections.labels("method-not-allowed").inc()
        allowed = ", ".join(sorted(getattr(exc, "allowed_methods", set())))
        return refusal(
            405,
            "not-supported",
            "method-not-allowed",
            f"method not allowed here; allowed: {allowed or 'none'}",
            headers={"Allow": allowed},
        )
    if exc.status == 413:
        gw.metrics.rejections.labels("too-large").inc()
        return _too_large(gw.max_body_bytes)
    if exc.status == 404:
        gw.metrics.rejections.labels("unknown-endpoint").inc()
        return refusal(404, "not-found", "unknown-endpoint", "no such endpoint")
    return refusal(exc.status, "processing", "internal", exc.reason)
