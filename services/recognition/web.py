"""The recognition service's HTTP API for hospitals (port 8081).

- ``GET /recognition/check?patient=<system>|<value>&code=<system>|<code>`` — may the calling
  institution recognise an earlier result for this order? Decided like an order on the
  topic, answered at once, nothing published but the audit record.
- ``POST /recognition/feedback`` — the doctor's choice, recorded on
  ``mrhub.recognition.feedback-recorded.v1``.

Both need the institution's bearer token (the same as for the gateway). The patient may be
named by any identifier the hub knows her by; the patient index resolves it to the master
patient id (:mod:`services.common.patient_lookup`). The check is answered by the worker that
owns the patient's partition (the ``results`` table): a request landing elsewhere is
forwarded there. Every check is audited on ``mrhub.audit.access-recorded.v1`` before it is
answered; if the audit record cannot be written, the answer is 503 and nothing is shown.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import faust
import simplejson
from aiohttp.web import Request, Response
from aiokafka import AIOKafkaProducer
from faust.web import View
from mode import Service

from services.common.audit import access_event
from services.common.envelope import Envelope
from services.common.fhir import Issue, IssueCode, operation_outcome
from services.common.institutions import Institution, Registry
from services.common.kafka_security import aiokafka_options
from services.common.patient_lookup import LookupUnavailable, PatientLookup, Resolved
from services.common.settings import Settings
from services.common.stages import dumps as _dumps
from services.common.stages import loads as _loads
from services.common.topics import ACCESS_RECORDED, FEEDBACK_RECORDED
from services.common.web_guard import guard_for, page
from services.recognition.catalog import CatalogSet, Coding
from services.recognition.check import parse_coded, render_check
from services.recognition.decision import Decision, Order, PriorResult, decide
from services.recognition.feedback import parse_feedback

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
_REASON = {
    400: "invalid-parameter",
    401: "unauthenticated",
    404: "not-found",
    422: "unusable-identifier",
    503: "not-ready",
}


@dataclass
class Context:
    app: faust.App
    settings: Settings
    registry: Registry
    catalogs: CatalogSet
    known: Any
    metrics: Any
    clock: Callable[[], datetime]
    producer: AIOKafkaProducer | None = None
    lookup: PatientLookup | None = None


def outcome(
    status: int, code: IssueCode, message: str, expression: str = "", reason: str | None = None
) -> Response:
    issue = Issue(
        "error", code, message, (expression,) if expression else (), reason or _REASON[status]
    )
    return Response(body=_dumps(operation_outcome([issue])), status=status, content_type=FHIR_JSON)


def _json(doc: Any, status: int = 200) -> Response:
    return Response(body=_dumps(doc), status=status, content_type="application/json")


class _Refused(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response


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
                **aiokafka_options(ctx.settings.kafka),
            )
            await ctx.producer.start()

        async def on_stop(self) -> None:
            if ctx.producer is not None:
                await ctx.producer.stop()
                ctx.producer = None
            if ctx.lookup is not None:
                await ctx.lookup.aclose()
                ctx.lookup = None

    app.service(Clients)

    def caller(request: Request) -> Institution:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        inst = ctx.registry.authenticate(token.strip()) if scheme.lower() == "bearer" else None
        if inst is None:
            response = outcome(401, "login", "an institution's bearer token is required")
            response.headers["WWW-Authenticate"] = 'Bearer realm="mrhub"'
            raise _Refused(response)
        return inst

    def coded(value: str | None, name: str) -> tuple[str | None, str]:
        parsed = parse_coded(value or "")
        if parsed is None:
            raise _Refused(outcome(400, "required", f"give {name} as <system>|<code>", name))
        return parsed

    async def resolve(patient: str, inst: Institution) -> Resolved | None:
        if not patient.strip():
            raise _Refused(
                outcome(400, "required", "give the patient as <system>|<value>", "patient")
            )
        if ctx.lookup is None:
            raise _Refused(outcome(503, "transient", "the worker is starting; try again"))
        try:
            return await ctx.lookup.resolve(patient.strip(), inst.id)
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

    async def forward(request: Request, master: str) -> Response | None:
        """Forward to the owner of ``master``'s partition; ``None`` when it is this worker."""
        if request.query.get("routed") == "1":
            return None
        try:
            dest = app.router.key_store("results", master.encode())
        except KeyError:
            raise _Refused(
                outcome(503, "transient", "partitions are being assigned; try again")
            ) from None
        if (dest.host, dest.port) == (app.conf.canonical_url.host, app.conf.canonical_url.port):
            return None
        url = request.url.with_host(dest.host or "").with_port(dest.port).update_query(routed="1")
        headers = {"Authorization": request.headers.get("Authorization", "")}
        async with app.http_client.get(url, headers=headers) as answer:
            return Response(
                body=await answer.read(), status=answer.status, content_type=answer.content_type
            )

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
        raw = ctx.known.get(master.encode()) if master else None
        priors = [PriorResult.model_validate(p) for p in (_loads(raw).values() if raw else ())]
        order = Order(institution=inst.id, master_patient_id=master, codes=codes)
        return decide(order, priors, ctx.registry, catalog, now)

    class CheckView(View):
        async def get(self, request: Request) -> Response:
            started = time.perf_counter()
            label = "error"
            try:
                inst = caller(request)
                system, code = coded(request.query.get("code"), "code")
                resolved = await resolve(request.query.get("patient", ""), inst)
                master = resolved.master_patient_id if resolved else None
                if master is not None:
                    forwarded = await forward(request, master)
                    if forwarded is not None:
                        label = "forwarded"
                        return forwarded
                decision = decide_for(inst, master, (Coding(system=system, code=code),))
                answer = render_check(decision, inst, ctx.registry, ctx.clock())
                answer["link_grade"] = resolved.grade if resolved else None
                shown = [m["institution"] for m in answer["matches"]]
                audit = access_event(
                    reader=inst.id,
                    route="/recognition/check",
                    purpose="recognition-check",
                    master_patient_id=master,
                    shown_institutions=shown,
                    items=len(shown),
                    outcome=decision.outcome,
                    query={"code": code, "item": decision.item_id or ""},
                    trace_id=request.headers.get("X-Trace-Id") or None,
                )
                try:
                    await send(ACCESS_RECORDED.name, inst.id.encode(), audit)
                except _Refused:
                    ctx.metrics.audit_errors.inc()
                    raise
                label = decision.outcome
                return _json(answer)
            except _Refused as refused:
                label = f"http-{refused.response.status}"
                return refused.response
            finally:
                ctx.metrics.checks.labels(label).observe(time.perf_counter() - started)

    class FeedbackView(View):
        async def post(self, request: Request) -> Response:
            try:
                inst = caller(request)
                raw = await request.read()
                try:
                    doc = simplejson.loads(raw) if raw else None
                except ValueError as exc:
                    return outcome(400, "structure", f"the body is not JSON: {exc}", "$body")
                if not isinstance(doc, dict):
                    return outcome(400, "structure", "the body must be a JSON object")
                system, code = coded(doc.get("code"), "code")
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
                patient = doc.get("patient")
                resolved = await resolve(patient if isinstance(patient, str) else "", inst)
                if resolved is None:
                    return outcome(404, "not-found", "no patient is known by this identifier")
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
                    "master_patient_id": resolved.master_patient_id,
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
                    event_type=FEEDBACK_RECORDED.name.rsplit(".", 1)[0],
                    source=inst.id,
                    payload=payload,
                )
                await send(FEEDBACK_RECORDED.name, resolved.master_patient_id.encode(), env)
                ctx.metrics.feedback.labels(parsed.choice, parsed.reason or "none").inc()
                return _json({"feedback_id": feedback_id, "status": "recorded"}, 201)
            except _Refused as refused:
                return refused.response

    page(app, "/recognition/check", "institution")(CheckView)
    page(app, "/recognition/feedback", "institution")(FeedbackView)
