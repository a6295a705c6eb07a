"""CDS Hooks 2.0 on the recognition service (port 8081; the gateway proxies the same paths):

- ``GET /cds-services`` — discovery (:func:`services.recognition.cards.discovery`);
- ``POST /cds-services/{id}`` — ``order-select`` / ``order-sign``: each draft
  ServiceRequest to check is checked for the calling institution exactly as
  ``/recognition/check`` (``ctx.check_for``, audited with purpose ``cds-hooks``), concurrently
  and within :data:`HOOK_DEADLINE_S`; one card per recognisable order
  (:func:`services.recognition.cards.build_card`);
- ``POST /cds-services/{id}/feedback`` — each item becomes one event on
  ``mrhub.recognition.feedback-recorded.v1`` in the payload of ``/recognition/feedback``,
  matched to the card by its signed ``uuid`` (never to what the client says about it).

Every route takes an institution's hub bearer token or a JWT signed by one of its
registered CDS clients (:mod:`services.common.cds_auth`; the guard checks it before a view
runs). Every refusal is an ``OperationOutcome``. docs/cds-hooks.md has the details.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from typing import Any, Final

import simplejson
from aiohttp.web import Request, Response
from faust.web import View

from services.common import jsonbody
from services.common.cds_auth import JwtVerifier
from services.common.codec import dumps as _dumps
from services.common.envelope import Envelope
from services.common.fhir import FHIR_JSON, Issue, IssueCode, operation_outcome
from services.common.forwarding import trusted_base
from services.common.institutions import Institution
from services.common.topics import FEEDBACK_RECORDED
from services.common.web_guard import CALLER_KEY, Caller, guard_for, page
from services.recognition.cards import (
    SERVICES,
    CardClaims,
    CardSigner,
    DraftOrder,
    FeedbackItem,
    HookRequest,
    Problem,
    build_card,
    discovery,
    parse_feedback_request,
    parse_hook_request,
)
from services.recognition.catalog import Catalog
from services.recognition.check import JSON_TYPES, nesting_exceeds, parse_coded
from services.recognition.feedback import Feedback, exception_reasons, parse_feedback
from services.recognition.web import CheckRefused, Context

__all__ = ["HOOK_DEADLINE_S", "install"]

log = logging.getLogger(__name__)

#: A hook call answers within this (CDS Hooks: "on the order of 500 ms"; a check's p99 is
#: tens of milliseconds): orders whose checks are not done by then get no card.
HOOK_DEADLINE_S: Final = 2.0
#: Checks of one hook call in flight at once.
CONCURRENT_CHECKS: Final = 4
#: Largest hook or feedback body (a draft-orders bundle with a prefetched Patient).
MAX_CDS_BODY_BYTES: Final = 512 * 1024
#: Deepest JSON nesting of a hook body (a Bundle of resources is deeper than a check's).
MAX_CDS_DEPTH: Final = 24
PURPOSE: Final = "cds-hooks"

_REASON: Final = {
    400: "invalid-parameter",
    401: "unauthenticated",
    404: "not-found",
    413: "too-large",
    415: "unsupported-media-type",
    503: "not-ready",
}


class _Refused(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response


def _outcome(status: int, code: IssueCode, message: str, expression: str = "") -> Response:
    issue = Issue("error", code, message, (expression,) if expression else (), _REASON[status])
    return Response(body=_dumps(operation_outcome([issue])), status=status, content_type=FHIR_JSON)


def _problems(problems: list[Problem]) -> Response:
    issues = [
        Issue("error", "value", p.message, (p.expression,), "invalid-parameter")
        for p in problems[:20]
    ]
    return Response(body=_dumps(operation_outcome(issues)), status=400, content_type=FHIR_JSON)


def _json(doc: Any) -> Response:
    return Response(body=_dumps(doc), status=200, content_type="application/json")


async def _read_json(request: Request) -> dict[str, Any]:
    """The JSON object of the body; :class:`_Refused` (400, 413, 415) otherwise."""
    given = request.headers.get("Content-Type")
    if given and request.content_type not in JSON_TYPES:
        raise _Refused(_outcome(415, "not-supported", "send application/json", "$body"))
    too_big = _outcome(413, "too-costly", f"the body is over {MAX_CDS_BODY_BYTES} bytes", "$body")
    if request.content_length is not None and request.content_length > MAX_CDS_BODY_BYTES:
        raise _Refused(too_big)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(16 * 1024):
        size += len(chunk)
        if size > MAX_CDS_BODY_BYTES:
            raise _Refused(too_big)
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw:
        raise _Refused(_outcome(400, "required", "the body is empty; send a JSON object", "$body"))
    if nesting_exceeds(raw, MAX_CDS_DEPTH):
        raise _Refused(
            _outcome(400, "structure", f"the JSON nests deeper than {MAX_CDS_DEPTH}", "$body")
        )
    try:
        doc = simplejson.loads(raw)
    except (ValueError, RecursionError):
        raise _Refused(_outcome(400, "structure", "the body is not JSON text", "$body")) from None
    if not jsonbody.is_text(doc):
        raise _Refused(_outcome(400, "structure", "the body is not JSON text", "$body"))
    if not isinstance(doc, dict):
        raise _Refused(_outcome(400, "structure", "the body must be a JSON object", "$body"))
    return doc


def _unknown_service(service_id: str) -> Response:
    known = ", ".join(SERVICES)
    return _outcome(404, "not-found", f"no CDS service with this id; the services are: {known}")


def install(ctx: Context) -> None:
    """Register the CDS Hooks routes on ``ctx.app`` (the recognition web Context)."""
    app = ctx.app
    settings = ctx.settings
    if settings.identity.hmac_key is None:
        raise RuntimeError("MRHUB_IDENTITY__HMAC_KEY is not set: CDS cards cannot be signed")
    signer = CardSigner(settings.identity.hmac_key.get_secret_value().encode())
    verifier = JwtVerifier(lambda: ctx.registry)

    def own_base() -> str:
        return str(app.conf.canonical_url).rstrip("/")

    def base_of(request: Request) -> str:
        return trusted_base(request.headers, settings, own_base())

    def jwt_auth(request: Request, token: str) -> Institution:
        # the aud is the URL the client called: the hub's public base and the path
        return verifier.verify(token, base_of(request) + request.path)

    guard_for(app).jwt_auth = jwt_auth

    def caller(request: Request) -> Institution:
        known: Caller | None = request.get(CALLER_KEY)
        if known is None or known.institution is None:  # the guard lets no one else in
            raise _Refused(_outcome(401, "login", "an institution's credential is required"))
        return known.institution

    async def card_for(
        inst: Institution,
        order: DraftOrder,
        hook: HookRequest,
        base: str,
        trace_id: str | None,
        reasons: dict[str, tuple[str, str]],
        service_id: str,
        limit: asyncio.Semaphore,
    ) -> dict[str, Any] | None:
        identifiers = [i for i in (order.subject, *hook.identifiers) if i is not None]
        identifiers = list(dict.fromkeys(identifiers))[:3]
        for code in order.codes:
            for ident in identifiers:
                async with limit:
                    try:
                        answer = await ctx.check_for(
                            inst, ident, code, base=base, trace_id=trace_id, purpose=PURPOSE
                        )
                    except CheckRefused as refused:
                        if refused.response.status in (400, 404, 422):
                            continue  # an identifier the hub cannot use; another may do
                        raise
                if answer.get("item") is None:
                    break  # the catalogue does not know this code: try the order's next one
                parsed = parse_coded(code)
                if parsed is None or not answer.get("master_patient_id"):
                    continue
                best = next((m for m in answer.get("matches") or [] if m.get("recognisable")), None)
                item = answer.get("item") or {}
                claims = CardClaims(
                    institution=inst.id,
                    service=service_id,
                    master_patient_id=str(answer["master_patient_id"]),
                    system=parsed[0],
                    code=parsed[1],
                    item_id=item.get("id"),
                    item_category=item.get("category"),
                    outcome=str(answer.get("decision")),
                    result_record_id=((best or {}).get("report") or {}).get("record_id"),
                    order=order.reference,
                    catalog_version=answer.get("catalog_version"),
                    issued=int(time.time()),
                )
                card = build_card(
                    answer,
                    order,
                    code,
                    claims_for=claims,
                    signer=signer,
                    reasons=reasons,
                    hub_base=base,
                )
                if card is not None:
                    return card
        return None

    async def cards_for(
        inst: Institution, hook: HookRequest, request: Request, service_id: str
    ) -> list[dict[str, Any]]:
        base = base_of(request)
        trace_id = request.headers.get("X-Trace-Id") or None
        catalog = ctx.catalogs.catalog_for(inst.region_code, ctx.clock())
        reasons = exception_reasons(catalog)
        limit = asyncio.Semaphore(CONCURRENT_CHECKS)
        tasks = [
            asyncio.ensure_future(
                card_for(inst, order, hook, base, trace_id, reasons, service_id, limit)
            )
            for order in hook.orders
            if order.codes
        ]
        if not tasks:
            return []
        done, pending = await asyncio.wait(tasks, timeout=HOOK_DEADLINE_S)
        for task in pending:
            task.cancel()
        if pending:
            log.warning("hook checks past the deadline", extra={"orders": len(pending)})
        cards = []
        for task in tasks:  # in the bundle's order
            if task not in done:
                continue
            exc = task.exception()
            if isinstance(exc, _Refused):
                raise exc
            refused = getattr(exc, "response", None)  # check_for's CheckRefused (5xx)
            if isinstance(refused, Response):
                raise _Refused(refused)
            if exc is not None:
                log.warning("a hook's check failed", extra={"error": type(exc).__name__})
                raise _Refused(_outcome(503, "transient", "a check failed; try again"))
            card = task.result()
            if card is not None:
                cards.append(card)
        return cards

    async def publish(
        inst: Institution,
        claims: CardClaims,
        parsed: Feedback,
        catalog: Catalog | None,
        item: FeedbackItem,
    ) -> None:
        # the same item sent again (the spec allows it) carries the same id: consumers can
        # count it once
        feedback_id = hashlib.sha256(
            f"{item.card}|{item.outcome}|{item.at.isoformat()}".encode()
        ).hexdigest()[:32]
        payload = {
            "feedback_id": feedback_id,
            "institution": inst.id,
            "master_patient_id": claims.master_patient_id,
            "code": {"system": claims.system, "code": claims.code},
            "item_id": claims.item_id,
            "item_category": claims.item_category,
            "choice": parsed.choice,
            "reason": parsed.reason,
            "reason_name": parsed.reason_name,
            "reason_source": parsed.reason_source,
            "note": parsed.note,
            "order": parsed.order,
            "decision_id": None,
            "result_record_id": parsed.result_record_id,
            "catalog_version": catalog.version if catalog else claims.catalog_version,
            "channel": "cds-hooks",
        }
        env = Envelope(
            event_id=feedback_id,
            event_type=FEEDBACK_RECORDED.event_type,
            source=inst.id,
            payload=payload,
        )
        if ctx.producer is None:
            raise _Refused(_outcome(503, "transient", "the worker is starting; try again"))
        try:
            await ctx.producer.send_and_wait(
                FEEDBACK_RECORDED.name,
                env.to_bytes(),
                key=claims.master_patient_id.encode(),
                headers=env.headers(),
            )
        except Exception as exc:
            log.warning("feedback not written", extra={"error": type(exc).__name__})
            raise _Refused(_outcome(503, "transient", "could not be recorded; try again")) from exc
        ctx.metrics.feedback.labels(parsed.choice, parsed.reason or "none").inc()

    def checked_feedback(
        inst: Institution, service_id: str, items: list[FeedbackItem]
    ) -> list[tuple[CardClaims, Feedback, FeedbackItem]]:
        """Each item with its card's claims, or :class:`_Refused` before anything is sent."""
        now = ctx.clock()
        catalog = ctx.catalogs.catalog_for(inst.region_code, now)
        reasons = exception_reasons(catalog)
        out = []
        problems: list[Problem] = []
        for n, item in enumerate(items):
            claims = signer.open(item.card, now)
            if claims is None or claims.institution != inst.id or claims.service != service_id:
                # a forged card, an expired one, another institution's, another service's:
                # one answer for all, so feedback tells nothing about anyone else's cards
                raise _Refused(
                    _outcome(
                        404,
                        "not-found",
                        "no card with this uuid was issued to you by this service",
                        f"feedback[{n}].card",
                    )
                )
            if item.outcome == "accepted":
                if signer.suggestion_uuid(claims) not in item.accepted:
                    problems.append(
                        Problem(
                            "acceptedSuggestions names no suggestion of this card",
                            f"feedback[{n}].acceptedSuggestions",
                        )
                    )
            elif item.reason_code is None:
                problems.append(
                    Problem(
                        "the recognition rules need a reason to re-order: give "
                        "overrideReason.reason from the card's overrideReasons",
                        f"feedback[{n}].overrideReason.reason",
                    )
                )
            elif item.reason_code not in reasons:
                problems.append(
                    Problem(
                        "overrideReason.reason is not one of the card's overrideReasons",
                        f"feedback[{n}].overrideReason.reason",
                    )
                )
            elif item.reason_code == "other" and not item.comment.strip():
                problems.append(
                    Problem(
                        "reason 'other' needs a userComment saying why",
                        f"feedback[{n}].overrideReason.userComment",
                    )
                )
            doc: dict[str, Any] = {
                "choice": "recognised" if item.outcome == "accepted" else "re-ordered",
                "note": item.comment,
                "order": claims.order,
                "result_record_id": claims.result_record_id,
            }
            if item.outcome == "overridden":
                doc["reason"] = item.reason_code
            parsed = parse_feedback(doc, catalog)
            if isinstance(parsed, list):
                problems += [Problem(p.message, f"feedback[{n}]") for p in parsed]
            else:
                out.append((claims, parsed, item))
        if problems:
            raise _Refused(_problems(problems))
        return out

    class DiscoveryView(View):
        async def get(self, request: Request) -> Response:
            try:
                caller(request)
            except _Refused as refused:
                return refused.response
            return _json(discovery())

    class ServiceView(View):
        async def post(self, request: Request, service_id: str) -> Response:
            started = time.perf_counter()
            response = await self.answer(request, service_id, started)
            label = service_id if service_id in SERVICES else "unknown"
            ctx.metrics.hooks.labels(label, str(response.status)).observe(
                time.perf_counter() - started
            )
            return response

        async def answer(self, request: Request, service_id: str, started: float) -> Response:
            try:
                inst = caller(request)
                if service_id not in SERVICES:
                    return _unknown_service(service_id)
                parsed = parse_hook_request(await _read_json(request), service_id)
                if isinstance(parsed, list):
                    return _problems(parsed)
                cards = await cards_for(inst, parsed, request, service_id)
                log.info(
                    "hook answered",
                    extra={
                        "service": service_id,
                        "orders": len(parsed.orders),
                        "cards": len(cards),
                        "elapsed_s": round(time.perf_counter() - started, 3),
                    },
                )
                ctx.metrics.cards.labels(service_id).inc(len(cards))
                return _json({"cards": cards})
            except _Refused as refused:
                return refused.response

    class FeedbackView(View):
        async def post(self, request: Request, service_id: str) -> Response:
            try:
                inst = caller(request)
                if service_id not in SERVICES:
                    return _unknown_service(service_id)
                items = parse_feedback_request(await _read_json(request))
                if items and isinstance(items[0], Problem):
                    return _problems([p for p in items if isinstance(p, Problem)])
                feedback = [i for i in items if isinstance(i, FeedbackItem)]
                checked = checked_feedback(inst, service_id, feedback)
                catalog = ctx.catalogs.catalog_for(inst.region_code, ctx.clock())
                for claims, parsed, item in checked:
                    await publish(inst, claims, parsed, catalog, item)
                return _json({"recorded": len(checked)})
            except _Refused as refused:
                return refused.response

    page(app, "/cds-services", "institution", "cds")(DiscoveryView)
    page(app, "/cds-services/{service_id}", "institution", "cds")(ServiceView)
    page(app, "/cds-services/{service_id}/feedback", "institution", "cds")(FeedbackView)
