"""The recognition service's HTTP API for hospitals (port 8081).

- ``POST /recognition/check`` with ``{"patient": "<system>|<value>", "code":
  "<system>|<code>"}`` (JSON or a form), or ``GET /recognition/check?patient=…&code=…`` —
  may the calling institution recognise an earlier result for this order? Decided like an
  order on the topic, answered at once, nothing published but the audit record. POST keeps
  the identifier out of URLs, which proxies log.
- ``POST /recognition/feedback`` — the doctor's choice, recorded on
  ``mrhub.recognition.feedback-recorded.v1``; only for a patient the institution has an order
  for (refused exactly as for an unknown patient otherwise).

Both need the institution's bearer token (the same as for the gateway). The patient may be
named by any identifier the hub knows her by; the patient index resolves it to the master
patient id (:mod:`services.common.patient_lookup`). Both are answered by the worker that owns
the patient's partition (the ``results`` and ``orders`` tables): a request landing elsewhere
is forwarded there, with the identifier in a POST body. Every check is audited on
``mrhub.audit.access-recorded.v1`` before it is answered; if the audit record cannot be
written, the answer is 503 and nothing is shown. Every input is range-checked
(:mod:`services.recognition.check`): bad input is a 4xx ``OperationOutcome``, never a 500.
"""

from __future__ import annotations

import functools
import hmac
import logging
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, get_args

import aiohttp
import faust
from aiohttp.web import Request, Response
from aiokafka import AIOKafkaProducer
from faust.web import View
from mode import Service
from yarl import URL

from services.common.audit import Purpose, access_event
from services.common.codec import dumps as _dumps
from services.common.codec import loads as _loads
from services.common.envelope import Envelope
from services.common.fhir import Issue, IssueCode, operation_outcome
from services.common.forwarding import FORWARDED_BY_HEADER, PUBLIC_BASE_HEADER, trusted_base
from services.common.gc_tuning import tune_for_serving
from services.common.institutions import Institution, Registry
from services.common.kafka_security import aiokafka_options
from services.common.partitioner import PARTITIONER
from services.common.patient_lookup import (
    LookupUnavailable,
    PatientLookup,
    Resolved,
    internal_token,
)
from services.common.settings import Settings
from services.common.topics import ACCESS_RECORDED, FEEDBACK_RECORDED
from services.common.web_guard import CALLER_KEY, Caller, guard_for, page
from services.recognition.catalog import CatalogSet, Coding
from services.recognition.check import (
    MAX_BODY_BYTES,
    MAX_SHOWN,
    BadInput,
    parse_body,
    parse_coded,
    render_check,
    text_param,
)
from services.recognition.decision import Decision, Order, PriorResult, decide
from services.recognition.feedback import parse_feedback

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
_REASON = {
    400: "invalid-parameter",
    401: "unauthenticated",
    404: "not-found",
    413: "too-large",
    415: "unsupported-media-type",
    422: "unusable-identifier",
    503: "not-ready",
}
_CODE: dict[int, IssueCode] = {413: "too-costly", 415: "not-supported"}
#: Carries the hub's internal token on a request forwarded to the owner of the patient's
#: partition: it is answered there, not forwarded again. A caller cannot set it to make a
#: worker that does not hold the patient answer from nothing.
ROUTED_HEADER = "X-Mrhub-Routed"
#: On a forwarded request (bearer: the internal token, with a valid :data:`ROUTED_HEADER`):
#: the institution the request is answered for. Without both it is ignored — a caller on the
#: worker port cannot make a worker answer for another institution.
ON_BEHALF_HEADER = "X-Mrhub-On-Behalf-Of"
#: Purposes a forwarded check may carry (anything else is recorded as ``recognition-check``).
PURPOSES: frozenset[str] = frozenset(get_args(Purpose))
#: What feedback for an unknown patient, and for a patient the caller has no order for,
#: both answer — the same status and body, so neither tells whether the hub knows her.
NO_SUCH_PATIENT = "no patient with an order of yours is known by this identifier"


class CheckRefused(Exception):
    """A check or read refused: ``response`` is the OperationOutcome answer (4xx / 5xx)."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


@dataclass(frozen=True)
class Plumbing:
    """What :func:`install` wires and the read routes (:mod:`services.recognition.reads`)
    share: who is calling, whether another worker forwarded the request, where a patient's
    partition lives, forwarding, the audit producer and the patient lookup."""

    caller: Callable[[Request], Institution]
    is_routed: Callable[[Request], bool]
    owner_url: Callable[[str, str], URL | None]
    others: Callable[[str], list[URL]]
    forward_to: Callable[..., Awaitable[Response]]
    send: Callable[[str, bytes, Envelope], Awaitable[None]]
    resolve: Callable[[str, Institution], Awaitable[Resolved | None]]
    routed_token: Callable[[], str]


CheckFor = Callable[..., Awaitable[dict[str, Any]]]
ReadResource = Callable[..., Awaitable[dict[str, Any] | None]]


@dataclass
class Context:
    app: faust.App
    settings: Settings
    registry: Registry
    catalogs: CatalogSet
    #: master id → the patient's known results, parsed (this worker's partitions)
    priors_of: Callable[[str], list[PriorResult]]
    #: master id → order id → kept entry of each decided order (``order`` holds its payload)
    orders_of: Callable[[str], dict[str, Any]]
    metrics: Any
    clock: Callable[[], datetime]
    producer: AIOKafkaProducer | None = None
    lookup: PatientLookup | None = None
    #: (master id, record ids) → record id → the resource as posted (the check answer's
    #: ``value`` and ``conclusion``)
    resources_of: Callable[[str, list[str]], dict[str, dict[str, Any]]] | None = None
    #: set by :func:`install` (the check) and :mod:`services.recognition.reads` (reads)
    check_impl: CheckFor | None = field(default=None, repr=False)
    read_impl: ReadResource | None = field(default=None, repr=False)
    plumbing: Plumbing | None = field(default=None, repr=False)

    async def check_for(
        self,
        inst: Institution,
        patient: str,
        code: str,
        *,
        base: str,
        trace_id: str | None,
        purpose: str,
    ) -> dict[str, Any]:
        """The check answer for ``inst`` (the same dict as ``/recognition/check``), audited
        with ``purpose`` (one of :data:`services.common.audit.Purpose`) and forwarded to the
        worker owning the patient when that is another one. ``base`` is the hub's public base
        (links in the answer). Raises :class:`CheckRefused` with the 4xx/5xx answer."""
        if self.check_impl is None:
            raise CheckRefused(outcome(503, "transient", "the worker is starting; try again"))
        return await self.check_impl(
            inst, patient, code, base=base, trace_id=trace_id, purpose=purpose
        )

    async def read_resource(
        self, inst: Institution, type: str, id: str, *, base: str
    ) -> dict[str, Any] | None:
        """The FHIR resource as ``GET /fhir/{type}/{id}`` serves it to ``inst``; ``None`` when
        unknown or out of ``inst``'s read scope. Audited as a ``fhir-read``; raises
        :class:`CheckRefused` when the read cannot be recorded or answered (503)."""
        if self.read_impl is None:
            return None
        return await self.read_impl(inst, type, id, base=base)


def outcome(
    status: int, code: IssueCode, message: str, expression: str = "", reason: str | None = None
) -> Response:
    issue = Issue(
        "error", code, message, (expression,) if expression else (), reason or _REASON[status]
    )
    return Response(body=_dumps(operation_outcome([issue])), status=status, content_type=FHIR_JSON)


def refusal(bad: BadInput) -> Response:
    code: IssueCode = _CODE.get(bad.status, "structure" if bad.expression == "$body" else "value")
    return outcome(bad.status, code, bad.message, bad.expression)


def not_known() -> Response:
    return outcome(404, "not-found", NO_SUCH_PATIENT, reason="not-found")


def media_type(request: Request) -> str:
    """The body's media type; ``""`` (read as JSON) when the client sent none (aiohttp would
    say ``application/octet-stream``)."""
    return request.content_type if request.headers.get("Content-Type") else ""


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request body, refused (413) past ``limit`` bytes without reading further."""
    if request.content_length is not None and request.content_length > limit:
        raise BadInput(413, f"the body is larger than {limit} bytes", "$body")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(16 * 1024):
        size += len(chunk)
        if size > limit:
            raise BadInput(413, f"the body is larger than {limit} bytes", "$body")
        chunks.append(chunk)
    return b"".join(chunks)


def _json(doc: Any, status: int = 200) -> Response:
    return Response(body=_dumps(doc), status=status, content_type="application/json")


_Refused = CheckRefused
#: app → how its views identify the caller (for :class:`GuardedView`'s HEAD)
_CALLERS: weakref.WeakKeyDictionary[Any, Callable[[Request], Institution]] = (
    weakref.WeakKeyDictionary()
)


class GuardedView(View):
    """Base of every view here: HEAD (which faust offers on every route) authenticates the
    caller before it says 405, so an internal token without a routing header is a 401 there
    as everywhere."""

    async def head(self, request: Request, **kwargs: Any) -> Response:
        caller = _CALLERS.get(self.app)
        try:
            if caller is None:
                raise _Refused(outcome(503, "transient", "the worker is starting; try again"))
            caller(request)
        except _Refused as refused:
            return refused.response
        return outcome(
            405, "not-supported", "HEAD is not supported here", reason="method-not-allowed"
        )


def own_base(request: Request) -> str:
    """This worker's address as the caller used it (``http://host:port``)."""
    return f"{request.scheme}://{request.host}"


def request_base(request: Request, settings: Settings) -> str:
    """The hub's public base for links in an answer (the gateway's, when it forwarded)."""
    return trusted_base(request.headers, settings, own_base(request))


def install(ctx: Context) -> None:
    """Register the hospital routes on ``ctx.app``."""
    app = ctx.app
    guard_for(app).registry = ctx.registry  # hospitals' tokens open these routes

    class Clients(Service):
        """The acks=all producer (audit, feedback) and the patient-index client."""

        async def on_start(self) -> None:
            ctx.lookup = PatientLookup(ctx.settings)
            ctx.producer = AIOKafkaProducer(
                bootstrap_servers=ctx.settings.kafka.bootstrap_servers,
                acks="all",
                enable_idempotence=True,
                partitioner=PARTITIONER,
                **aiokafka_options(ctx.settings.kafka),
            )
            await ctx.producer.start()

        async def on_started(self) -> None:
            # The cyclic garbage collector stopped the event loop, and every check waiting on
            # it, more than anything a check does itself (issue 15; measured in the worker
            # under `mrhub bench check --rate 500`). Two changes, both process-wide:
            # - this runs after the tables' recovery: what is allocated by now (modules,
            #   faust, aiokafka, the catalogue, the registry) lives as long as the process.
            #   Frozen, it is left out of every later collection; each full collection
            #   walked all of it (~115,000 objects of ~150,000), up to 0.1 s of CPU.
            # - a young collection every 50,000 net allocations, not every 700: at 500
            #   checks/s the requests in flight crossed 700 hundreds of times a second
            #   (about 0.75 s of CPU per 5,000 checks, pauses up to 15 ms); with 50,000,
            #   one or two collections in the same 5,000 checks. Garbage without cycles is
            #   freed at once either way; cyclic garbage waits a little longer.
            tune_for_serving()

        async def on_stop(self) -> None:
            if ctx.producer is not None:
                await ctx.producer.stop()
                ctx.producer = None
            if ctx.lookup is not None:
                await ctx.lookup.aclose()
                ctx.lookup = None

    app.service(Clients)
    # the services' internal token marks a forwarded request (the patient lookup needs the
    # HMAC key too); derived on first use, not per request
    routed: dict[str, str] = {}

    @functools.cache
    def here() -> tuple[str | None, int | None]:
        """This worker's own address (faust's settings are slow to read, once per check)."""
        url = app.conf.canonical_url
        return url.host, url.port

    def routed_token() -> str:
        return routed.get("token") or routed.setdefault("token", internal_token(ctx.settings))

    def is_routed(request: Request) -> bool:
        """Whether another worker forwarded this request (it carries the internal token)."""
        given = request.headers.get(ROUTED_HEADER, "").encode("utf-8", "surrogateescape")
        return hmac.compare_digest(given, routed_token().encode())

    def caller(request: Request) -> Institution:
        """The calling institution: the bearer token's, or — on a request another worker
        forwarded with the internal token and a valid routing header — the one named by
        :data:`ON_BEHALF_HEADER`."""
        known: Caller | None = request.get(CALLER_KEY)  # the guard checked the token
        if known is not None and known.kind == "institution" and known.institution is not None:
            return known.institution
        if known is not None and known.kind == "internal" and is_routed(request):
            named = request.headers.get(ON_BEHALF_HEADER, "")
            inst = ctx.registry.get(named) if named else None
            if inst is not None:
                return inst
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        inst = ctx.registry.authenticate(token.strip()) if scheme.lower() == "bearer" else None
        if inst is None:
            response = outcome(401, "login", "an institution's bearer token is required")
            response.headers["WWW-Authenticate"] = 'Bearer realm="mrhub"'
            raise _Refused(response)
        return inst

    def coded(value: str, name: str) -> tuple[str | None, str]:
        parsed = parse_coded(value)
        if parsed is None:
            raise _Refused(outcome(400, "required", f"give {name} as <system>|<code>", name))
        return parsed

    def params(doc: Any) -> tuple[str, str]:
        """``patient`` and ``code`` of a check or feedback, range-checked."""
        try:
            patient = text_param(doc.get("patient"), "patient", required=False)
            code = text_param(doc.get("code"), "code", required=False)
        except BadInput as bad:
            raise _Refused(refusal(bad)) from None
        return patient, code

    async def resolve(patient: str, inst: Institution) -> Resolved | None:
        if not patient:
            raise _Refused(
                outcome(400, "required", "give the patient as <system>|<value>", "patient")
            )
        if ctx.lookup is None:
            raise _Refused(outcome(503, "transient", "the worker is starting; try again"))
        try:
            return await ctx.lookup.resolve(patient, inst.id)
        except ValueError as exc:
            raise _Refused(outcome(422, "business-rule", str(exc), "patient")) from exc
        except LookupUnavailable as exc:
            raise _Refused(outcome(503, "transient", str(exc))) from exc

    async def send(topic: str, key: bytes, env: Envelope) -> None:
        if ctx.producer is None:
            raise _Refused(outcome(503, "transient", "the worker is starting; try again"))
        try:
            await ctx.producer.send_and_wait(topic, env.to_bytes(), key=key, headers=env.headers())
        except Exception as exc:  # Kafka did not acknowledge: nothing was recorded
            log.warning("not written to %s", topic, extra={"error": type(exc).__name__})
            raise _Refused(
                outcome(503, "transient", "could not be recorded; try again", reason="not-ready")
            ) from exc

    def owner_url(master: str, path: str) -> URL | None:
        """Where ``master``'s partition lives, when it is another worker; ``None`` here."""
        try:
            dest = app.router.key_store("results", master.encode())
        except KeyError:
            raise _Refused(
                outcome(503, "transient", "partitions are being assigned; try again")
            ) from None
        if (dest.host, dest.port) == here():
            return None
        return URL.build(scheme="http", host=dest.host or "", port=dest.port, path=path)

    async def forward_to(
        url: URL,
        inst: Institution,
        body: dict[str, Any],
        *,
        base: str,
        trace_id: str | None,
        headers: dict[str, str] | None = None,
        method: str = "POST",
    ) -> Response:
        """POST ``body`` (never the identifier in a URL) to another worker, answered there
        for ``inst``: the internal token, the routing header and :data:`ON_BEHALF_HEADER`,
        and the public base (with the internal token that makes it trusted)."""
        token = routed_token()
        sent = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            ROUTED_HEADER: token,
            ON_BEHALF_HEADER: inst.id,
            PUBLIC_BASE_HEADER: base,
            FORWARDED_BY_HEADER: token,
            **(headers or {}),
        }
        if trace_id:
            sent["X-Trace-Id"] = trace_id
        try:
            data = _dumps(body) if method == "POST" else None
            async with app.http_client.request(method, url, data=data, headers=sent) as answer:
                return Response(
                    body=await answer.read(), status=answer.status, content_type=answer.content_type
                )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _Refused(
                outcome(503, "transient", "the worker holding this patient did not answer")
            ) from exc

    def others(path: str) -> list[URL]:
        """The other workers that hold partitions (each at ``path``), for a read by id that
        does not know the patient."""
        mine = here()
        out = []
        try:
            hosts = list(app.router.tables_metadata())
        except Exception:  # no assignment yet
            return []
        for host in sorted(hosts):
            url = URL(str(host))
            if (url.host, url.port) != mine and url.host:
                out.append(URL.build(scheme="http", host=url.host, port=url.port, path=path))
        return out

    def decide_for(inst: Institution, master: str | None, codes: tuple[Coding, ...]) -> Decision:
        now = ctx.clock()
        catalog = ctx.catalogs.catalog_for(inst.region_code, now)
        if catalog is None:
            raise _Refused(
                outcome(
                    404,
                    "not-found",
                    "no recognition catalogue is in force for your region",
                    reason="not-found",
                )
            )
        priors = ctx.priors_of(master) if master else []
        order = Order(institution=inst.id, master_patient_id=master, codes=codes)
        return decide(order, priors, ctx.registry, catalog, now)

    async def check_core(
        inst: Institution,
        patient: str,
        code_param: str,
        *,
        base: str,
        trace_id: str | None,
        purpose: str,
        routed: bool = False,
    ) -> dict[str, Any] | Response:
        """The check for ``inst``: the answer, or the owning worker's answer as it came
        (a forwarded ``Response``). Raises :class:`CheckRefused`."""
        started = time.perf_counter()
        label = "error"
        try:
            if purpose not in PURPOSES:
                raise ValueError(f"unknown audit purpose {purpose!r}")
            system, code = coded(code_param, "code")
            resolved = await resolve(patient, inst)
            master = resolved.master_patient_id if resolved else None
            if master is not None and not routed:
                url = owner_url(master, "/recognition/check")
                if url is not None:
                    body = {"patient": patient, "code": code_param, "purpose": purpose}
                    forwarded = await forward_to(url, inst, body, base=base, trace_id=trace_id)
                    label = "forwarded"
                    return forwarded
            decision = decide_for(inst, master, (Coding(system=system, code=code),))
            resources = (
                ctx.resources_of(master, [m.record_id for m in decision.matches[: MAX_SHOWN * 4]])
                if master and ctx.resources_of is not None and decision.matches
                else {}
            )
            answer = render_check(
                decision,
                inst,
                ctx.registry,
                ctx.clock(),
                link_grade=resolved.grade if resolved else None,
                base=base,
                resources=resources,
            )
            shown = [m["institution"] for m in answer["matches"]]
            audit = access_event(
                reader=inst.id,
                route="/recognition/check",
                purpose=purpose,  # type: ignore[arg-type]  # checked against PURPOSES
                master_patient_id=master,
                shown_institutions=shown,
                items=len(shown),
                outcome=decision.outcome,
                query={"code": code, "item": decision.item_id or ""},
                trace_id=trace_id,
            )
            try:
                await send(ACCESS_RECORDED.name, inst.id.encode(), audit)
            except _Refused:
                ctx.metrics.audit_errors.inc()
                raise
            label = decision.outcome
            return answer
        except _Refused as refused:
            label = f"http-{refused.response.status}"
            raise
        finally:
            ctx.metrics.checks.labels(label).observe(time.perf_counter() - started)

    async def check_for(
        inst: Institution,
        patient: str,
        code: str,
        *,
        base: str,
        trace_id: str | None,
        purpose: str,
    ) -> dict[str, Any]:
        try:
            patient = text_param(patient, "patient", required=False)
            code = text_param(code, "code", required=False)
        except BadInput as bad:
            raise _Refused(refusal(bad)) from None
        got = await check_core(inst, patient, code, base=base, trace_id=trace_id, purpose=purpose)
        if isinstance(got, dict):
            return got
        if got.status != 200 or got.body is None:
            raise _Refused(got)
        answer: dict[str, Any] = _loads(bytes(got.body))  # type: ignore[arg-type]
        return answer

    ctx.check_impl = check_for

    _CALLERS[app] = caller

    ctx.plumbing = Plumbing(
        caller=caller,
        is_routed=is_routed,
        owner_url=owner_url,
        others=others,
        forward_to=forward_to,
        send=send,
        resolve=resolve,
        routed_token=routed_token,
    )

    async def check(request: Request, inst: Institution, doc: Any) -> Response:
        routed = is_routed(request)
        purpose = "recognition-check"
        if routed and doc.get("purpose") in PURPOSES:
            purpose = str(doc["purpose"])
        try:
            patient, code = params(doc)
            got = await check_core(
                inst,
                patient,
                code,
                base=request_base(request, ctx.settings),
                trace_id=request.headers.get("X-Trace-Id") or None,
                purpose=purpose,
                routed=routed,
            )
        except _Refused as refused:
            return refused.response
        return got if isinstance(got, Response) else _json(got)

    class CheckView(GuardedView):
        async def get(self, request: Request) -> Response:
            try:
                inst = caller(request)
                query = request.query
                for name in ("patient", "code"):
                    if len(query.getall(name, [])) > 1:
                        raise _Refused(
                            outcome(400, "value", f"{name} is given more than once", name)
                        )
            except _Refused as refused:
                return refused.response
            return await check(request, inst, {k: query.get(k) for k in ("patient", "code")})

        async def post(self, request: Request) -> Response:
            try:
                inst = caller(request)
                try:
                    doc = parse_body(media_type(request), await read_body(request))
                except BadInput as bad:
                    raise _Refused(refusal(bad)) from None
            except _Refused as refused:
                return refused.response
            return await check(request, inst, doc)

    class FeedbackView(GuardedView):
        async def post(self, request: Request) -> Response:
            try:
                inst = caller(request)
                try:
                    doc = parse_body(media_type(request), await read_body(request))
                except BadInput as bad:
                    raise _Refused(refusal(bad)) from None
                patient, code_param = params(doc)
                system, code = coded(code_param, "code")
                catalog = ctx.catalogs.catalog_for(inst.region_code, ctx.clock())
                parsed = parse_feedback(doc, catalog)
                if isinstance(parsed, list):
                    issues = [
                        Issue("error", "value", p.message, (p.expression,), "invalid-parameter")
                        for p in parsed
                    ]
                    return Response(
                        body=_dumps(operation_outcome(issues)), status=400, content_type=FHIR_JSON
                    )
                resolved = await resolve(patient, inst)
                if resolved is None:
                    return not_known()
                master = resolved.master_patient_id
                if not is_routed(request):
                    url = owner_url(master, request.path)
                    if url is not None:
                        return await forward_to(
                            url,
                            inst,
                            doc,
                            base=request_base(request, ctx.settings),
                            trace_id=request.headers.get("X-Trace-Id") or None,
                        )
                # only for a patient this institution has a (decided, kept) order for; any
                # other is answered exactly as an unknown one, so feedback is no oracle
                orders = ctx.orders_of(master)
                if not any(
                    (entry.get("order") or {}).get("institution") == inst.id
                    for entry in orders.values()
                ):
                    return not_known()
                item = (
                    catalog.find_item(
                        [Coding(system=system, code=code)],
                        institution=inst.id,
                        at=ctx.clock(),
                    )
                    if catalog
                    else None
                )
                feedback_id = uuid.uuid4().hex
                payload = {
                    "feedback_id": feedback_id,
                    "institution": inst.id,
                    "master_patient_id": master,
                    "code": {"system": system, "code": code},
                    "item_id": item.id if item else None,
                    "item_category": item.category if item else None,
                    "choice": parsed.choice,
                    "reason": parsed.reason,
                    "reason_name": parsed.reason_name,
                    "reason_source": parsed.reason_source,
                    "note": parsed.note,
                    "order": parsed.order,
                    "decision_id": parsed.decision_id,
                    "result_record_id": parsed.result_record_id,
                    "catalog_version": catalog.version if catalog else None,
                }
                env = Envelope(
                    event_id=feedback_id,
                    event_type=FEEDBACK_RECORDED.event_type,
                    source=inst.id,
                    payload=payload,
                )
                await send(FEEDBACK_RECORDED.name, master.encode(), env)
                ctx.metrics.feedback.labels(parsed.choice, parsed.reason or "none").inc()
                return _json({"feedback_id": feedback_id, "status": "recorded"}, 201)
            except _Refused as refused:
                return refused.response

    # "internal": a request another worker forwarded (answered for ON_BEHALF_HEADER's
    # institution only with a valid routing header; anything else is 401 in caller())
    page(app, "/recognition/check", "institution", "internal")(CheckView)
    page(app, "/recognition/feedback", "institution", "internal")(FeedbackView)
