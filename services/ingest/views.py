"""HTTP handlers of the FHIR gateway. Every refusal is an ``OperationOutcome``.

Order of checks for a write: credential (401) → content type (415) → size (413) → JSON
(400) → FHIR and hub rules (400 / 403 / 422) → publish to Kafka with acks=all (503 when it
does not acknowledge) → answer. Nothing is published unless the answer is 2xx, and for a
bundle, all of it or none of it is.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import simplejson
from aiohttp import web

from services.common.envelope import Envelope, new_id, utcnow
from services.common.errors import KafkaUnavailableError
from services.common.fhir import FHIR_JSON, Issue, IssueCode, operation_outcome
from services.common.identifiers import keyed_hash
from services.common.institutions import Institution, Registry, ReloadingRegistry
from services.common.logging import trace
from services.common.metrics import CONTENT_TYPE_LATEST, exposition
from services.ingest.capability import capability_statement
from services.ingest.metrics import IngestMetrics, type_label
from services.ingest.publisher import OutMessage, Publisher
from services.ingest.validation import (
    CLINICAL_TYPES,
    CheckedResource,
    check_bundle,
    check_resource,
    http_status,
    parse_json,
)

log = logging.getLogger(__name__)

EVENT_TYPE = "mrhub.ingest.resource-accepted"
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
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Entity",
    500: "Internal Server Error",
    503: "Service Unavailable",
}

STATE_KEY: web.AppKey[Gateway] = web.AppKey("gateway")


def _dumps(doc: Any) -> bytes:
    return simplejson.dumps(doc, use_decimal=True, ensure_ascii=False).encode()


def fhir_response(
    doc: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=_dumps(doc),
        status=status,
        content_type=FHIR_JSON,
        charset="utf-8",
        headers=headers,
    )


def outcome_response(
    issues: Sequence[Issue], status: int, headers: dict[str, str] | None = None
) -> web.Response:
    return fhir_response(operation_outcome(issues), status, headers)


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
    ) -> None:
        # with a path, the registry follows the file (tokens issued or revoked count at once)
        self._registry = (
            ReloadingRegistry(institutions_path) if institutions_path is not None else registry
        )
        self.publisher = publisher
        self.metrics = metrics
        self.hmac_key = hmac_key
        self.max_body_bytes = max_body_bytes

    @property
    def registry(self) -> Registry:
        return self._registry

    # ---------------------------------------------------------------- building messages

    def kafka_key(self, institution: Institution, checked: CheckedResource, event_id: str) -> bytes:
        """institution | type | keyed hash of the business id — never an identifier in clear."""
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
    ) -> tuple[OutMessage, str]:
        env = Envelope(
            event_type=EVENT_TYPE,
            received_at=received_at,
            source=institution.id,
            trace_id=trace_id,
            payload={
                "resource_type": checked.resource_type,
                "bundle_id": bundle_id,
                "entry_index": entry_index,
                "import_line": import_line,
                "full_url": checked.full_url,
                "patient_identifiers": patient_identifiers(checked.resource, patients or {}),
                "resource": checked.resource,
            },
        )
        headers = (*env.headers(), ("source", institution.id.encode()))
        key = self.kafka_key(institution, checked, env.event_id)
        return OutMessage(key=key, value=env.to_bytes(), headers=headers), env.event_id

    def count(
        self, institution: Institution, checked: Sequence[CheckedResource], outcome: str
    ) -> None:
        if checked:
            self.metrics.resources_by_level.labels(str(institution.level), outcome).inc(
                len(checked)
            )
        for c in checked:
            self.metrics.resources.labels(type_label(c.resource_type), outcome).inc()
            if outcome == "rejected":
                for reason in {i.reason for i in c.issues if i.is_error}:
                    self.metrics.rejections.labels(reason).inc()


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


async def _read_body(gw: Gateway, request: web.Request) -> bytes | web.Response:
    declared = request.content_length
    if declared is not None and declared > gw.max_body_bytes:
        gw.metrics.rejections.labels("too-large").inc()
        return _too_large(gw.max_body_bytes)
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        gw.metrics.rejections.labels("too-large").inc()
        return _too_large(gw.max_body_bytes)
    return body


def _too_large(limit: int) -> web.Response:
    return refusal(413, "too-costly", "too-large", f"the body is over the limit of {limit} bytes")


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


async def _json_write(gw: Gateway, request: web.Request) -> tuple[Institution, Any] | web.Response:
    """A write's institution and parsed JSON body — or the refusal: 401, 415, 413, 400."""
    who = _admit(gw, request, JSON_TYPES)
    if isinstance(who, web.Response):
        return who
    body = await _read_body(gw, request)
    if isinstance(body, web.Response):
        return body
    raw, issues = parse_json(body)
    if issues:
        gw.metrics.rejections.labels("malformed-json").inc()
        return outcome_response(issues, http_status(issues))
    return who, raw


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
    who, raw = read
    checked = check_resource(raw, who, expected_type=rtype)
    if not checked.ok:
        gw.count(who, [checked], "rejected")
        return outcome_response(checked.issues, http_status(checked.issues))
    trace_id = _trace_id(request)
    msg, event_id = gw.message(who, checked, received_at=received_at, trace_id=trace_id)
    try:
        await gw.publisher.publish([msg])
    except KafkaUnavailableError as exc:
        gw.count(who, [checked], "not_published")
        return _unavailable(exc)
    gw.count(who, [checked], "accepted")
    location = f"{request.url.origin()}/fhir/{rtype}/{event_id}/_history/1"
    return fhir_response(
        checked.resource,
        201,
        {"Location": location, "ETag": 'W/"1"', "X-Trace-Id": trace_id},
    )


async def post_bundle(request: web.Request) -> web.Response:
    gw = request.app[STATE_KEY]
    received_at = utcnow()
    read = await _json_write(gw, request)
    if isinstance(read, web.Response):
        return read
    who, raw = read
    bundle = check_bundle(raw, who)
    if (bundle.issues and any(i.is_error for i in bundle.issues)) or bundle.bundle_type is None:
        gw.count(who, bundle.entries, "rejected")
        all_issues = bundle.all_issues
        return outcome_response(all_issues, http_status(all_issues))
    transaction = bundle.bundle_type == "transaction"
    good = [e for e in bundle.entries if e.ok]
    bad = [e for e in bundle.entries if not e.ok]
    if transaction and bad:
        gw.count(who, bundle.entries, "rejected")
        all_issues = bundle.all_issues
        return outcome_response(all_issues, http_status(all_issues))
    trace_id = _trace_id(request)
    bundle_id = raw.get("id") if isinstance(raw.get("id"), str) else None
    patients = bundle_patients(bundle.entries)
    out = [
        gw.message(
            who,
            e,
            received_at=received_at,
            trace_id=trace_id,
            bundle_id=bundle_id,
            entry_index=e.index,
            patients=patients,
        )
        for e in good
    ]
    try:
        await gw.publisher.publish([m for m, _ in out])
    except KafkaUnavailableError as exc:
        gw.count(who, good, "not_published")
        return _unavailable(exc)
    gw.count(who, good, "accepted")
    gw.count(who, bad, "rejected")
    event_ids = {id(e): eid for e, (_, eid) in zip(good, out, strict=True)}
    entries = []
    for e in bundle.entries:
        if e.ok:
            eid = event_ids[id(e)]
            resp: dict[str, Any] = {
                "status": "201 Created",
                "location": f"{e.resource_type}/{eid}/_history/1",
                "etag": 'W/"1"',
            }
        else:
            code = http_status(e.issues)
            resp = {"status": _status_line(code), "outcome": operation_outcome(e.issues)}
        entries.append({"response": resp})
    doc = {
        "resourceType": "Bundle",
        "type": "transaction-response" if transaction else "batch-response",
        "entry": entries,
    }
    return fhir_response(doc, 200, {"X-Trace-Id": trace_id})


async def post_import(request: web.Request) -> web.StreamResponse:
    """NDJSON backfill, streamed line by line; refused lines are listed in the answer.

    Accepted lines are published in chunks, each chunk one Kafka transaction. If Kafka stops
    answering, the import stops there: the answer (503) says which lines were stored, so the
    sender resumes after them.
    """
    gw = request.app[STATE_KEY]
    who = _admit(gw, request, NDJSON_TYPES)
    if isinstance(who, web.Response):
        return who
    received_at = utcnow()
    trace_id = _trace_id(request)
    issues: list[Issue] = []
    pending: list[tuple[OutMessage, CheckedResource]] = []
    accepted = refused_lines = line_no = 0
    stored_through = 0

    async def flush() -> None:
        nonlocal accepted, stored_through
        if pending:
            await gw.publisher.publish([m for m, _ in pending])
            gw.count(who, [c for _, c in pending], "accepted")
            accepted += len(pending)
            pending.clear()
        stored_through = line_no

    try:
        async for line in _lines(request, gw.max_body_bytes):
            line_no += 1
            if line is None:
                refused_lines += 1
                gw.metrics.rejections.labels("too-large").inc()
                issues.append(
                    Issue(
                        "error",
                        "too-costly",
                        f"line {line_no}: over the limit of {gw.max_body_bytes} bytes",
                        (f"line[{line_no}]",),
                        "too-large",
                    )
                )
                continue
            if not line.strip():
                continue
            raw, parse_issues = parse_json(line)
            checked = (
                check_resource(raw, who)
                if not parse_issues
                else CheckedResource("", {}, issues=parse_issues)
            )
            if not checked.ok:
                refused_lines += 1
                gw.count(who, [checked], "rejected")
                issues.extend(_prefixed(checked.issues, line_no))
                continue
            msg, _ = gw.message(
                who, checked, received_at=received_at, trace_id=trace_id, import_line=line_no
            )
            pending.append((msg, checked))
            if len(pending) >= IMPORT_CHUNK:
                await flush()
        await flush()
    except KafkaUnavailableError as exc:
        gw.count(who, [c for _, c in pending], "not_published")
        log.warning("import stopped: kafka unavailable", extra={"err": str(exc)})
        summary = Issue(
            "error",
            "transient",
            f"Kafka stopped acknowledging; lines 1–{stored_through} were handled "
            f"({accepted} stored, {refused_lines} refused), nothing after line "
            f"{stored_through} was stored: resend from line {stored_through + 1}.",
            (),
            "kafka-unavailable",
        )
        return outcome_response([summary, *issues], 503, {"Retry-After": str(RETRY_AFTER_S)})
    summary = Issue(
        "information",
        "informational",
        f"{line_no} lines read: {accepted} resources stored, {refused_lines} lines refused",
        (),
        "import-summary",
    )
    return outcome_response([summary, *issues], 200, {"X-Trace-Id": trace_id})


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


async def _lines(request: web.Request, limit: int) -> Any:
    """Yield the body's lines as bytes, holding at most one line (≤ ``limit``) in memory;
    a longer line is skipped and yielded as None."""
    buf = bytearray()
    skipping = False
    async for chunk in request.content.iter_chunked(1 << 16):
        start = 0
        while True:
            nl = chunk.find(b"\n", start)
            if nl < 0:
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
            buf.clear()
            start = nl + 1
    if skipping:
        yield None
    elif buf:
        yield bytes(buf)


async def metadata(request: web.Request) -> web.Response:
    gw = request.app[STATE_KEY]
    base = f"{request.url.origin()}/fhir"
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


# ------------------------------------------------------------------------------ middleware

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _route(request: web.Request) -> str:
    info = request.match_info.route.resource
    return info.canonical if info is not None else "unmatched"


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Time and count every request; turn aiohttp's own errors (404, 405, 413) and any
    unexpected exception into an OperationOutcome."""
    gw = request.app[STATE_KEY]
    started = time.perf_counter()
    route = _route(request)
    request[_TRACE_KEY] = trace_id = _trace_id(request)
    with trace(trace_id):  # every log line about this request carries its trace id
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            response = _from_http_exception(gw, exc)
        except Exception:
            log.exception("unhandled error", extra={"route": route})
            gw.metrics.rejections.labels("internal").inc()
            response = refusal(
                500, "exception", "internal", "unexpected error; nothing was published"
            )
    gw.metrics.requests.labels(route, f"{response.status // 100}xx").inc()
    gw.metrics.latency.labels(route).observe(time.perf_counter() - started)
    if request.content_length:
        gw.metrics.received_bytes.labels(route).inc(request.content_length)
    return response


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
