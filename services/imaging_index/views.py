"""The read routes of the imaging index (port 8082).

- ``GET /fhir/ImagingStudy?patient=…`` → FHIR R4 searchset ``Bundle``;
- ``GET /dicom-web/studies?PatientID=…`` → QIDO-RS, DICOM JSON.

Each request: (1) authenticate the institution by its bearer token (401 otherwise);
(2) read the parameters (400); (3) resolve the patient — a master patient id as is, any
other form through the patient index (422 for an identifier that cannot name anybody, 503
when the patient index does not answer); (4) forward to the worker that owns the master's
partition of the ``patients`` table, with the master id in place of the identifier (so the
identifier travels once, and the paging links carry only the master id); (5) there, keep the
studies the reader's scope allows (:func:`services.common.institutions.may_read`, per
posting institution), write the audit record (``acks=all``; 503 if it cannot be written)
and only then answer.

Errors are FHIR ``OperationOutcome`` on both routes. Nothing here logs the patient
parameter.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from urllib.parse import urlencode

import aiohttp
import faust
from aiohttp.web import Request, Response
from aiokafka import AIOKafkaProducer
from faust.web import View
from multidict import MultiDict
from yarl import URL

from services.common.audit import access_event
from services.common.codec import dumps as _dumps
from services.common.codec import loads as _loads
from services.common.envelope import utcnow
from services.common.faust_fixes import scan_prefix
from services.common.fhir import FHIR_JSON, Issue, IssueCode, operation_outcome
from services.common.institutions import Institution, Registry, may_read
from services.common.kafka_security import aiokafka_options
from services.common.partitioner import PARTITIONER, partition_for
from services.common.patient_lookup import LookupUnavailable, PatientLookup, is_master_id
from services.common.settings import Settings
from services.common.topics import ACCESS_RECORDED
from services.common.web_guard import guard_for, page
from services.imaging_index import render, search
from services.imaging_index.metrics import Metrics
from services.imaging_index.search import CHINA, Query, QueryError
from services.imaging_index.studies import (
    Study,
    StudyView,
    patient_entry,
    patient_prefix,
    study_key,
    view,
)

log = logging.getLogger(__name__)

DICOM_JSON = "application/dicom+json"
Route = Literal["fhir", "qido"]
#: The query parameters that name the patient, per route (replaced by the master id when a
#: request is forwarded to the owner).
_PATIENT_PARAMS: dict[Route, tuple[str, ...]] = {
    "fhir": ("patient", "subject"),
    "qido": ("PatientID", "00100020", "IssuerOfPatientID", "00100021"),
}
_ROUTE_PATH: dict[Route, str] = {"fhir": "/fhir/ImagingStudy", "qido": "/dicom-web/studies"}


class Outbox:
    """An ``acks=all`` idempotent producer outside the agents' transactions: audit records
    (which must be written before an answer) and endpoint check results."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        self.producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.kafka.bootstrap_servers,
            acks="all",
            enable_idempotence=True,
            partitioner=PARTITIONER,
            **aiokafka_options(self.settings.kafka),
        )
        await self.producer.start()

    async def stop(self) -> None:
        if self.producer is not None:
            await self.producer.stop()
            self.producer = None

    async def send(
        self, topic: str, key: bytes, value: bytes, headers: list[tuple[str, bytes]] | None = None
    ) -> None:
        if self.producer is None:
            raise RuntimeError("the producer is not started")
        await asyncio.wait_for(
            self.producer.send_and_wait(topic, value, key=key, headers=headers),
            timeout=self.settings.imaging.audit_timeout_s,
        )


@dataclass
class Context:
    app: faust.App
    settings: Settings
    registry: Registry
    patients: Any
    metrics: Metrics
    outbox: Outbox
    lookup: Callable[[], PatientLookup | None]
    registry_base: Callable[[str], str | None]


#: The longest parameter name or value a search takes (an identifier, a date, a UID list).
MAX_PARAM_CHARS = 512

_REASON = {
    400: "invalid-parameter",
    401: "unauthenticated",
    404: "not-found",
    415: "unsupported-media-type",
    422: "unusable-identifier",
    503: "not-ready",
}


def outcome(
    status: int,
    code: IssueCode,
    message: str,
    expression: str = "",
    reason: str | None = None,
) -> Response:
    issue = Issue(
        "error",
        code,
        message,
        (expression,) if expression else (),
        reason or _REASON[status],
    )
    return Response(body=_dumps(operation_outcome([issue])), status=status, content_type=FHIR_JSON)


class Refused(Exception):
    def __init__(self, response: Response, label: str) -> None:
        super().__init__(label)
        self.response = response
        self.label = label


def install(ctx: Context) -> None:
    """Register the two routes on ``ctx.app``."""
    app = ctx.app
    guard_for(app).registry = ctx.registry  # hospitals' tokens open these routes
    img = ctx.settings.imaging

    def reader_of(request: Request) -> Institution:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        reader = ctx.registry.authenticate(token.strip()) if scheme.lower() == "bearer" else None
        if reader is None:
            response = outcome(401, "login", "an institution's bearer token is required")
            response.headers["WWW-Authenticate"] = 'Bearer realm="mrhub"'
            raise Refused(response, "unauthenticated")
        return reader

    def parse(route: Route, given: MultiDict[str]) -> Query:
        for name, value in given.items():
            if len(name) > MAX_PARAM_CHARS or len(value) > MAX_PARAM_CHARS:
                shown = name if len(name) <= 40 else "a parameter"
                message = f"{shown} is over {MAX_PARAM_CHARS} characters"
                raise Refused(outcome(400, "value", message, shown), "invalid")
        params = {k: given.getall(k) for k in given}
        try:
            if route == "fhir":
                return search.parse_fhir(params, max_count=img.max_count)
            return search.parse_qido(params, max_count=img.max_count)
        except QueryError as exc:
            raise Refused(outcome(400, "value", str(exc), exc.param), "invalid") from exc

    async def master_of(query: Query, reader: Institution) -> str | None:
        if is_master_id(query.patient):
            return query.patient
        lookup = ctx.lookup()
        if lookup is None:
            raise Refused(
                outcome(503, "transient", "the worker is starting; try again"), "unavailable"
            )
        try:
            found = await lookup.resolve(query.patient, reader.id)
        except ValueError as exc:
            raise Refused(outcome(422, "business-rule", str(exc), "patient"), "invalid") from exc
        except LookupUnavailable as exc:
            raise Refused(outcome(503, "transient", str(exc)), "unavailable") from exc
        return found.master_patient_id if found is not None else None

    async def forward(
        route: Route, request: Request, given: MultiDict[str], master: str
    ) -> Response | None:
        """The owner's answer, or ``None`` when this worker owns ``master``."""
        try:
            dest = app.router.key_store("patients", master.encode())
        except KeyError as exc:
            response = outcome(503, "transient", "partitions are being assigned; try again")
            raise Refused(response, "unavailable") from exc
        me = app.conf.canonical_url
        if (dest.host, dest.port) == (me.host, me.port):
            return None
        query: MultiDict[str] = MultiDict(
            (k, v) for k, v in given.items() if k not in _PATIENT_PARAMS[route]
        )
        query.add("patient" if route == "fhir" else "PatientID", master)
        query["routed"] = "1"
        # always a GET to the search path: the identifier stayed here, only the master id
        # travels (a POST ``_search`` is answered by the owner's GET)
        url = URL.build(
            scheme="http", host=dest.host or "", port=dest.port, path=_ROUTE_PATH[route]
        ).with_query(query)
        headers = {"Authorization": request.headers.get("Authorization", "")}
        try:
            async with app.http_client.get(url, headers=headers) as answer:
                return Response(
                    body=await answer.read(),
                    status=answer.status,
                    content_type=answer.content_type,
                )
        except (TimeoutError, OSError, aiohttp.ClientError) as exc:
            response = outcome(503, "transient", "the worker that owns the patient did not answer")
            raise Refused(response, "unavailable") from exc

    partitions = ctx.settings.topic_partitions

    def stored(master: str, study_uid: str | None = None) -> list[dict[str, Any]]:
        """The master's studies as the ``patients`` table holds them: its entries, read with
        a prefix scan of the partition that holds them (only the study's own entry when
        ``study_uid`` is given), plus the patient's value of the old layout, if one was
        restored and no event of the patient has split it into entries yet (an entry wins
        over its copy there)."""
        part = partition_for(master.encode(), partitions)
        if study_uid:
            key = study_key(study_uid)
            found = scan_prefix(ctx.patients, part, patient_entry(master, key), limit=1)
        else:
            found = scan_prefix(ctx.patients, part, patient_prefix(master))
        docs: dict[str, Any] = {k.rpartition(b"|")[2].decode(): _loads(v) for k, v in found}
        legacy = ctx.patients.get(master.encode())
        if legacy:
            for key, doc in dict(_loads(legacy)).items():
                if study_uid is None or key == study_key(study_uid):
                    docs.setdefault(str(key), doc)
        return [d for d in docs.values() if isinstance(d, dict)]

    def visible(
        reader: Institution, master: str | None, query: Query
    ) -> tuple[list[StudyView], bool, bool]:
        """The master's studies that match ``query`` and that the reader may see; whether
        the master has a study the reader may see; whether it has one the reader may not.

        The work is bounded by what is read: a search for one study reads that study's entry
        only (all of them only when it is not there, to tell ``none`` from
        ``out-of-scope``), and only the studies that could match and have a visible source
        are turned into views."""
        if master is None:
            return [], False, False
        today = datetime.now(CHINA).date()
        seen: dict[str, bool] = {}

        def may_see(institution: str) -> bool:
            if institution not in seen:
                performer = ctx.registry.get(institution)
                seen[institution] = institution == reader.id or (
                    performer is not None
                    and may_read(reader, performer, category="imaging", on=today)
                )
            return seen[institution]

        def shows(doc: dict[str, Any]) -> bool:
            return any(may_see(inst) for inst in search.institutions_of(doc))

        docs = stored(master, query.study_uid)
        shown: list[StudyView] = []
        for doc in docs:
            if not shows(doc) or not search.may_match(doc, query):
                continue
            v = view(Study.model_validate(doc), may_see=may_see, registry_base=ctx.registry_base)
            if v is not None:
                shown.append(v)
        if shown:
            return shown, True, any(not shows(d) for d in docs)
        if query.study_uid:
            docs = stored(master)
        flags = [shows(d) for d in docs]
        return [], any(flags), not all(flags)

    async def audit(
        route: Route,
        reader: Institution,
        master: str | None,
        page: list[StudyView],
        gist: str,
        query: Query,
        request: Request,
    ) -> None:
        env = access_event(
            reader=reader.id,
            route=f"GET {_ROUTE_PATH[route]}",
            purpose="imaging-search",
            master_patient_id=master,
            shown_institutions={i for s in page for i in s.institutions},
            items=len(page),
            outcome=gist,
            query=query.described(),
            trace_id=request.headers.get("X-Trace-Id") or None,
        )
        try:
            await ctx.outbox.send(
                ACCESS_RECORDED.name, reader.id.encode(), env.to_bytes(), env.headers()
            )
        except Exception as exc:
            log.warning("audit record not written", extra={"error": type(exc).__name__})
            response = outcome(
                503,
                "transient",
                "the read could not be recorded, so it is not answered; try again",
                reason="kafka-unavailable",
            )
            raise Refused(response, "unavailable") from exc

    # links and fullUrls name the hub as configured, never as the request's Host header
    base = (img.public_base_url or f"http://{img.host}:{img.port}").rstrip("/")

    async def answer(route: Route, request: Request, given: MultiDict[str]) -> Response:
        reader = reader_of(request)
        query = parse(route, given)
        routed = given.get("routed") == "1"
        master = query.patient if routed and is_master_id(query.patient) else None
        if master is None:
            master = await master_of(query, reader)
        if master is not None and not routed:
            forwarded = await forward(route, request, given, master)
            if forwarded is not None:
                return forwarded
        shown, any_shown, any_hidden = visible(reader, master, query)
        found = search.select(shown, query)
        page = found[query.offset : query.offset + query.count]
        if master is None:
            gist = "unknown-patient"
        elif found:
            gist = "found"
        else:
            gist = "out-of-scope" if any_hidden and not any_shown else "none"
        await audit(route, reader, master, page, gist, query, request)
        ctx.metrics.queries.labels(route, "found" if page else gist).inc()
        if route == "qido":
            body = [render.qido_study(s) for s in page]
            return Response(body=_dumps(body), content_type=DICOM_JSON)
        # no link names the master patient id unless the reader may see a study of hers
        links = _links(base, query, master if any_shown else None, len(found))
        bundle = render.searchset(
            page, total=len(found), base_url=base, links=links, timestamp=utcnow()
        )
        return Response(body=_dumps(bundle), content_type=FHIR_JSON)

    def handler(route: Route) -> Callable[[Request], Awaitable[Response]]:
        async def handle(request: Request) -> Response:
            try:
                given: MultiDict[str] = MultiDict(request.query)
                if request.method == "POST":
                    given.extend(await form_of(request))
                return await answer(route, request, given)
            except Refused as refused:
                ctx.metrics.queries.labels(route, refused.label).inc()
                return refused.response

        return handle

    fhir_handle, qido_handle = handler("fhir"), handler("qido")

    async def form_of(request: Request) -> MultiDict[str]:
        """The parameters of a FHIR ``POST …/_search``: a form body, as FHIR says (so that
        an identifier travels in the body, not in a URL that proxies log)."""
        if request.content_type != "application/x-www-form-urlencoded":
            message = "POST _search takes application/x-www-form-urlencoded parameters"
            raise Refused(outcome(415, "not-supported", message), "invalid")
        form = await request.post()
        return MultiDict((k, v) for k, v in form.items() if isinstance(v, str))

    class ImagingStudySearch(View):
        async def get(self, request: Request) -> Response:
            return await fhir_handle(request)

    class ImagingStudyPostSearch(View):
        async def post(self, request: Request) -> Response:
            return await fhir_handle(request)

    class QidoStudies(View):
        async def get(self, request: Request) -> Response:
            return await qido_handle(request)

    page(app, "/fhir/ImagingStudy", "institution")(ImagingStudySearch)
    page(app, "/dicom-web/studies", "institution")(QidoStudies)
    page(app, "/fhir/ImagingStudy/_search", "institution")(ImagingStudyPostSearch)


def _links(base: str, query: Query, master: str | None, total: int) -> dict[str, str]:
    """``self`` and, where there are more, ``next`` / ``previous``: with the master id as the
    patient (never the identifier the caller gave); none for a patient nobody knows."""
    if master is None:
        return {}
    patient: str = master

    def url(offset: int) -> str:
        params: MultiDict[str] = MultiDict()
        params.add("patient", patient)
        for m in sorted(query.modalities):
            params.add("modality", m)
        for lo, hi in query.started:
            if lo is not None:
                params.add("started", "ge" + lo.isoformat())
            if hi is not None:
                params.add("started", "lt" + hi.isoformat())
        if query.study_uid:
            params.add("identifier", f"urn:dicom:uid|urn:oid:{query.study_uid}")
        params.add("_count", str(query.count))
        params.add("_offset", str(offset))
        return f"{base}/fhir/ImagingStudy?{urlencode(list(params.items()))}"

    links = {"self": url(query.offset)}
    if query.offset + query.count < total:
        links["next"] = url(query.offset + query.count)
    if query.offset > 0:
        links["previous"] = url(max(0, query.offset - query.count))
    return links
