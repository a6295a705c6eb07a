"""FHIR reads of the shared record over HTTP (port 8081; the gateway proxies the same paths):

- ``GET /fhir/{type}?…`` and ``POST /fhir/{type}/_search`` (a form or a JSON object) search
  ``Observation``, ``DiagnosticReport``, ``ImagingStudy``, ``ServiceRequest`` and
  ``DetectedIssue`` of one patient (:mod:`services.recognition.fhir_search` parses, matches,
  signs the ``next`` links and builds the Bundle);
- ``GET /fhir/{type}/{id}`` reads one by the hub's id (a result's or an order's record id, a
  decision's id).

Who sees what is the check's rule: an institution reads what it may read
(:func:`services.common.institutions.may_read`, with the item's category) and the decisions
on its own orders; anything else does not exist for it — a search for a patient it may see
nothing of answers exactly as for an unknown patient, a read of something out of scope is the
same 404 as a read of an unknown id. Every search and every read is recorded on
``mrhub.audit.access-recorded.v1`` before it is answered (503 when it cannot be).

A search is answered by the worker that owns the patient's partition (forwarded there as a
POST, never with the identifier in a URL). A read by id does not know the patient: the worker
looks the id up in the partitions it holds (the ``records`` table: id → the table key that
holds it, written with the record); when it is not there and other workers hold partitions,
it asks each of them in turn (with the routing header, so they only look at home) and
answers with the first that knows the id. docs/sharing.md has the details and examples.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiohttp.web import Request, Response

from services.common.audit import access_event
from services.common.codec import dumps as _dumps
from services.common.codec import loads as _loads
from services.common.fhir import IssueCode
from services.common.institutions import Institution, may_read
from services.common.patient_lookup import is_master_id
from services.common.topics import ACCESS_RECORDED
from services.common.web_guard import page
from services.recognition import fhir_search as fs
from services.recognition.check import BadInput, parse_body
from services.recognition.web import (
    FHIR_JSON,
    CheckRefused,
    Context,
    GuardedView,
    Plumbing,
    media_type,
    outcome,
    read_body,
    refusal,
    request_base,
)

log = logging.getLogger(__name__)

NOT_FOUND = "no such resource is known to you"


@dataclass
class Store:
    """What the worker keeps, as the reads need it (app.py builds it over its tables)."""

    #: master id → every readable item of the patient held here (results, orders, decisions)
    items_of: Callable[[str], list[fs.Item]]
    #: hub id → the item, when a partition held here has it
    find: Callable[[str], fs.Item | None]


def _fhir(doc: Any, status: int = 200) -> Response:
    return Response(body=_dumps(doc), status=status, content_type=FHIR_JSON)


def search_error(err: fs.SearchError) -> Response:
    code: IssueCode = (
        "not-found"
        if err.status == 404
        else ("not-supported" if "supported" in err.message else "value")
    )
    return outcome(
        err.status,
        code,
        err.message,
        err.expression,
        reason="invalid-parameter" if err.status == 400 else None,
    )


def install(ctx: Context, store: Store) -> None:
    """Register the FHIR read routes on ``ctx.app`` (after :func:`web.install`)."""
    app = ctx.app
    if ctx.plumbing is None:
        raise RuntimeError("install services.recognition.web first")
    plumbing: Plumbing = ctx.plumbing
    key_holder: dict[str, bytes] = {}

    def cursor_key() -> bytes:
        if "k" not in key_holder:
            key_holder["k"] = ("cursor|" + plumbing.routed_token()).encode()
        return key_holder["k"]

    def visible(inst: Institution, item: fs.Item, at: datetime) -> bool:
        if item.type == "DetectedIssue":  # a decision is its ordering institution's
            return item.institution == inst.id
        performer = ctx.registry.get(item.institution)
        return performer is not None and may_read(
            inst, performer, category=item.category, on=at.date()
        )

    def aliases_for(items: list[fs.Item]) -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {}
        for it in items:
            for alias in it.aliases:
                out.setdefault(it.institution, {})[alias] = f"{it.type}/{it.id}"
        return out

    def serve(
        item: fs.Item, aliases: Mapping[str, Mapping[str, str]], at: datetime
    ) -> dict[str, Any]:
        performer = ctx.registry.get(item.institution)
        return fs.served(
            item,
            performer=performer,
            hr_scope=fs.hr_scope_of(performer, item.category, at.date())
            if item.type != "DetectedIssue"
            else None,
            aliases=aliases.get(item.institution, {}),
        )

    async def audit(
        inst: Institution,
        *,
        route: str,
        purpose: str,
        master: str | None,
        shown: list[fs.Item],
        query: dict[str, str],
        trace_id: str | None,
    ) -> None:
        env = access_event(
            reader=inst.id,
            route=route,
            purpose=purpose,  # type: ignore[arg-type]
            master_patient_id=master,
            shown_institutions=[i.institution for i in shown],
            items=len(shown),
            outcome="found" if shown else "none",
            query=query,
            trace_id=trace_id,
        )
        try:
            await plumbing.send(ACCESS_RECORDED.name, inst.id.encode(), env)
        except CheckRefused:
            ctx.metrics.audit_errors.inc()
            raise

    # ── read by id ───────────────────────────────────────────────────────────────────────

    async def read_local(inst: Institution, type_: str, id_: str, *, base: str) -> fs.Item | None:
        item = store.find(id_)
        if item is None or item.type != type_:
            return None
        return item

    async def read_core(
        inst: Institution, type_: str, id_: str, *, base: str, trace_id: str | None, routed: bool
    ) -> dict[str, Any] | None:
        now = ctx.clock()
        if type_ not in fs.READ_TYPES or not fs.ID_PATTERN.match(id_):
            item = None
        else:
            item = await read_local(inst, type_, id_, base=base)
        if item is None and not routed:
            for url in plumbing.others(f"/fhir/{type_}/{id_}"):
                got = await plumbing.forward_to(
                    url, inst, {}, base=base, trace_id=trace_id, method="GET"
                )
                if got.status == 200 and got.body is not None:
                    doc: dict[str, Any] = _loads(bytes(got.body))  # type: ignore[arg-type]
                    return doc
                if got.status != 404:
                    raise CheckRefused(got)
        if item is not None and not visible(inst, item, now):
            item = None
        if item is None:
            if routed:
                return None  # the asking worker audits what it answers
            await audit(
                inst,
                route=f"/fhir/{type_}",
                purpose="fhir-read",
                master=None,
                shown=[],
                query={"type": type_[:40]},
                trace_id=trace_id,
            )
            return None
        everything = store.items_of(item.master)
        doc = serve(item, aliases_for(everything), now)
        await audit(
            inst,
            route=f"/fhir/{type_}",
            purpose="fhir-read",
            master=item.master,
            shown=[item],
            query={"type": type_},
            trace_id=trace_id,
        )
        return doc

    async def read_resource(
        inst: Institution, type_: str, id_: str, *, base: str
    ) -> dict[str, Any] | None:
        return await read_core(inst, type_, id_, base=base, trace_id=None, routed=False)

    ctx.read_impl = read_resource

    def not_found() -> Response:
        return outcome(404, "not-found", NOT_FOUND, reason="not-found")

    def timed(interaction: str, started: float, response: Response) -> Response:
        ctx.metrics.reads.labels(interaction, str(response.status)).observe(
            time.perf_counter() - started
        )
        return response

    class ReadView(GuardedView):
        async def get(self, request: Request, type: str, id: str) -> Response:
            started = time.perf_counter()
            return timed("read", started, await self.answer(request, type, id))

        async def answer(self, request: Request, type: str, id: str) -> Response:
            try:
                inst = plumbing.caller(request)
                doc = await read_core(
                    inst,
                    type,
                    id,
                    base=request_base(request, ctx.settings),
                    trace_id=request.headers.get("X-Trace-Id") or None,
                    routed=plumbing.is_routed(request),
                )
            except CheckRefused as refused:
                return refused.response
            return not_found() if doc is None else _fhir(doc)

    # ── search ───────────────────────────────────────────────────────────────────────────

    async def search_core(
        request: Request,
        inst: Institution,
        type_: str,
        pairs: list[tuple[str, str]],
        *,
        offset: int = 0,
        lenient: bool,
        master_given: str | None = None,
        from_cursor: bool = False,
    ) -> Response:
        base = request_base(request, ctx.settings)
        trace_id = request.headers.get("X-Trace-Id") or None
        routed = plumbing.is_routed(request)
        try:
            search = fs.parse_search(type_, pairs, lenient=lenient)
        except fs.SearchError as err:
            return search_error(err)
        master = master_given
        if master is None and search.patient is not None:
            ref = search.master_in_reference
            if ref is not None:
                master = ref if is_master_id(ref) else None
            else:
                resolved = await plumbing.resolve(search.patient, inst)
                master = resolved.master_patient_id if resolved else None
        if master is None and search.patient is None and search.implicated:
            order = store.find(search.implicated[0].split("/", 1)[1])
            if order is not None:
                master = order.master
            elif not routed:
                for url in plumbing.others(f"/fhir/{type_}/_search"):
                    got = await plumbing.forward_to(
                        url,
                        inst,
                        {"_pairs": pairs, "_offset": offset, "_lenient": lenient},
                        base=base,
                        trace_id=trace_id,
                    )
                    if got.status != 200 or got.body is None:
                        raise CheckRefused(got)
                    doc = _loads(bytes(got.body))  # type: ignore[arg-type]
                    if doc.get("total"):
                        return got
        if master and not routed:
            owner = plumbing.owner_url(master, f"/fhir/{type_}/_search")
            if owner is not None:
                return await plumbing.forward_to(
                    owner,
                    inst,
                    {"_pairs": pairs, "_offset": offset, "_lenient": lenient, "_master": master},
                    base=base,
                    trace_id=trace_id,
                )
        now = ctx.clock()
        everything = store.items_of(master) if master else []
        mine = [it for it in everything if fs.matches(it, search) and visible(inst, it, now)]
        mine.sort(key=fs.sort_key)
        page_items = [] if search.summary_count else mine[offset : offset + search.count]
        aliases = aliases_for(everything)
        page_docs = [serve(it, aliases, now) for it in page_items]
        included: list[dict[str, Any]] = []
        shown = list(page_items)
        if search.include_results:
            extra = fs.included_results(page_docs, everything, lambda it: visible(inst, it, now))
            included = [serve(it, aliases, now) for it in extra]
            shown += extra
        # nothing the reader may see: exactly as for an unknown patient (no master id anywhere)
        shown_master = master if mine else None
        expires = now + fs.CURSOR_TTL
        params = tuple(p for p in search.echo)

        def token(at: int) -> str:
            return fs.sign_cursor(
                fs.Cursor(type_, shown_master, inst.id, params, at, expires), cursor_key()
            )

        nxt = offset + search.count
        next_token = token(nxt) if mine and not search.summary_count and nxt < len(mine) else None
        doc = fs.bundle(
            base=base,
            search=search,
            total=len(mine),
            page=page_docs,
            included=included,
            next_token=next_token,
            self_token=token(offset),
        )
        query = {"type": type_}
        if search.codes:
            query["code"] = ",".join(c for _, c in search.codes)[:200]
        await audit(
            inst,
            route=f"/fhir/{type_}",
            purpose="fhir-search",
            master=master,
            shown=shown,
            query=query,
            trace_id=trace_id,
        )
        return _fhir(doc)

    def lenient_of(request: Request) -> bool:
        prefer = request.headers.get("Prefer", "")
        return "handling=lenient" in prefer.replace(" ", "").lower()

    class SearchView(GuardedView):
        async def get(self, request: Request, type: str) -> Response:
            started = time.perf_counter()
            return timed("search", started, await self.answer(request, type))

        async def answer(self, request: Request, type: str) -> Response:
            try:
                inst = plumbing.caller(request)
                pairs = list(request.query.items())
                cursors = [v for k, v in pairs if k == "_cursor"]
                if cursors:
                    return await continued(request, inst, type, cursors, pairs)
                return await search_core(request, inst, type, pairs, lenient=lenient_of(request))
            except CheckRefused as refused:
                return refused.response

    async def continued(
        request: Request,
        inst: Institution,
        type_: str,
        cursors: list[str],
        pairs: list[tuple[str, str]],
    ) -> Response:
        others = [k for k, _ in pairs if k not in {"_cursor", "_format"}]
        if len(cursors) > 1 or others:
            return outcome(
                400, "value", "a page token is used alone", "_cursor", reason="invalid-parameter"
            )
        try:
            cursor = fs.open_cursor(cursors[0], cursor_key(), reader=inst.id, now=ctx.clock())
        except fs.SearchError as err:
            return search_error(err)
        if cursor.type != type_:
            return outcome(
                400,
                "value",
                "the page token is for another resource type",
                "_cursor",
                reason="invalid-parameter",
            )
        params = [*cursor.params]
        if cursor.master is None:
            # a search that found nothing: it finds nothing again
            params.append(("patient", "Patient/none"))
            return await search_core(
                request, inst, type_, params, offset=cursor.offset, lenient=False, master_given=""
            )
        params.append(("patient", f"Patient/{cursor.master}"))
        return await search_core(
            request,
            inst,
            type_,
            params,
            offset=cursor.offset,
            lenient=False,
            master_given=cursor.master,
        )

    class PostSearchView(GuardedView):
        async def post(self, request: Request, type: str) -> Response:
            started = time.perf_counter()
            return timed("search", started, await self.answer(request, type))

        async def answer(self, request: Request, type: str) -> Response:
            try:
                inst = plumbing.caller(request)
                try:
                    raw = await read_body(request)
                    ctype = media_type(request)
                    if ctype == "application/x-www-form-urlencoded":
                        from urllib.parse import parse_qsl

                        try:
                            pairs = parse_qsl(
                                raw.decode("utf-8"),
                                keep_blank_values=True,
                                max_num_fields=fs.MAX_PARAMS,
                            )
                        except (UnicodeDecodeError, ValueError):
                            raise BadInput(
                                400, "the form is not valid UTF-8 or has too many fields", "$body"
                            ) from None
                        doc: dict[str, Any] = {}
                    else:
                        doc = parse_body(ctype, raw) if raw else {}
                        pairs = []
                        for k, v in doc.items():
                            if k.startswith("_") and k in {
                                "_pairs",
                                "_offset",
                                "_lenient",
                                "_master",
                            }:
                                continue
                            values = v if isinstance(v, list) else [v]
                            for one in values:
                                if not isinstance(one, str | int):
                                    raise BadInput(400, f"{k[:40]} must be a string", k[:40])
                                pairs.append((k, str(one)))
                except BadInput as bad:
                    raise CheckRefused(refusal(bad)) from None
                if plumbing.is_routed(request) and "_pairs" in doc:
                    forwarded_pairs = [(str(a), str(b)) for a, b in doc.get("_pairs") or []]
                    master = doc.get("_master")
                    return await search_core(
                        request,
                        inst,
                        type,
                        forwarded_pairs,
                        offset=int(doc.get("_offset") or 0),
                        lenient=bool(doc.get("_lenient")),
                        master_given=str(master) if master else None,
                    )
                return await search_core(request, inst, type, pairs, lenient=lenient_of(request))
            except CheckRefused as refused:
                return refused.response

    page(app, "/fhir/{type}/_search", "institution", "internal")(PostSearchView)
    page(app, "/fhir/{type}/{id}", "institution", "internal")(ReadView)
    page(app, "/fhir/{type}", "institution", "internal")(SearchView)
