"""The data stewards' HTTP API of the patient index (port 8083).

Writes (merge, unmerge, link, unlink, confirm or reject a review) are *commands*: the handler
checks the request, writes one message to the internal topic of the owner that decides
(acks=all), and answers ``202 Accepted`` with the command id. The owner applies it in order
with everything else it decides, publishes the outcome on ``mrhub.patient.identity-linked.v1``
(the event's ``evidence.command_id`` names the command), and ``GET /patients/{id}`` shows the
master's state and history.

Reads go to the worker that owns the key (``faust`` keeps one owner per table partition): a
request that lands elsewhere is forwarded to the owner over HTTP. ``GET /reviews`` asks every
worker for the reviews in its partitions.

Every path here but ``/metrics``, ``/healthz`` and ``/readyz`` needs a steward's bearer token
(``MRHUB_PATIENT_INDEX__STEWARD_TOKEN_HASHES``; hospitals' tokens do not work here). Nothing
here logs an identifier; identifiers in requests are hashed (HMAC) before they go anywhere.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import faust
import simplejson
from aiohttp.web import Request, Response
from aiokafka import AIOKafkaProducer
from faust.web import View
from mode import Service
from yarl import URL

from services.common import jsonbody
from services.common.codec import dumps as _dumps
from services.common.fhir import Issue, IssueCode, operation_outcome
from services.common.identifiers import ID_CARD_SYSTEM
from services.common.institutions import hash_token
from services.common.kafka_security import aiokafka_options
from services.common.partitioner import PARTITIONER
from services.common.settings import Settings
from services.common.web_guard import page
from services.patient_index import matching
from services.patient_index.blocks import entry_views
from services.patient_index.identity import keyed_identifiers
from services.patient_index.normalize import (
    Ident,
    Person,
    person_from_fhir,
    person_from_json,
    person_from_subject,
)

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
MATCH_GRADE_URL = "http://hl7.org/fhir/StructureDefinition/match-grade"
#: Candidates ``$match`` returns at most.
MATCH_COUNT = 10
_MASTER_PREFIX = "MP"


@dataclass
class Context:
    """What the handlers need from the app: tables, topic names, hashing, rules."""

    app: faust.App
    settings: Settings
    identities: Any
    blocks: Any
    masters: Any
    #: ``GET /patients/{id}``'s answer at the master's owner, ``None`` for an unknown
    #: master; the second argument says whether to count its records (a prefix scan of its
    #: per-record entries) or leave ``records`` out (``None``: the resolve needs the root)
    master_view: Callable[[str, bool], dict[str, Any] | None]
    reviews: Any
    by_identity: str
    by_master: str
    by_block: str
    hash_ident: Callable[[Ident], str]
    block_key: Callable[[str], str]
    rules: matching.Rules
    token_hashes: frozenset[str]
    #: ``hash_token`` of the services' internal token: good for reads only.
    internal_token_hash: str | None = None
    producer: AIOKafkaProducer | None = None


#: The OperationOutcome reason each HTTP status of this API is given.
_REASON = {
    400: "invalid-parameter",
    401: "unauthenticated",
    404: "not-found",
    422: "unusable-identifier",
    503: "not-ready",
}


def outcome(status: int, code: IssueCode, message: str, expression: str = "") -> Response:
    """A one-issue OperationOutcome answer."""
    issue = Issue("error", code, message, (expression,) if expression else (), _REASON[status])
    return Response(body=_dumps(operation_outcome([issue])), status=status, content_type=FHIR_JSON)


def _json(doc: Any, status: int = 200, content_type: str = "application/json") -> Response:
    return Response(body=_dumps(doc), status=status, content_type=content_type)


def _is_master_id(value: Any) -> bool:
    return (
        isinstance(value, str)
        and value.startswith(_MASTER_PREFIX)
        and len(value) == 26
        and all(c in "0123456789abcdef" for c in value[2:])
    )


def install(ctx: Context) -> None:
    """Register the steward routes on ``ctx.app``."""
    app = ctx.app

    class CommandProducer(Service):
        """The acks=all producer that writes stewards' commands (runs with the worker)."""

        async def on_start(self) -> None:
            ctx.producer = AIOKafkaProducer(
                bootstrap_servers=ctx.settings.kafka.bootstrap_servers,
                acks="all",
                enable_idempotence=True,
                partitioner=PARTITIONER,
                **aiokafka_options(ctx.settings.kafka),
            )
            await ctx.producer.start()

        async def on_stop(self) -> None:
            if ctx.producer is not None:
                await ctx.producer.stop()
                ctx.producer = None

    app.service(CommandProducer)

    def authorised(request: Request, *, reads: bool = False) -> Response | None:
        """A steward's token opens everything; with ``reads``, the services' internal token
        (derived from the HMAC key, ``services.common.patient_lookup``) opens the read too."""
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return _unauthorised("a steward's bearer token is required")
        hashed = hash_token(token.strip())
        if hashed in ctx.token_hashes:
            return None
        if reads and ctx.internal_token_hash is not None and hashed == ctx.internal_token_hash:
            return None
        return _unauthorised("this token is not a data steward's")

    async def body_of(request: Request) -> dict[str, Any] | Response:
        raw = await request.read()
        try:
            doc = jsonbody.parse(raw)
        except jsonbody.JsonBodyError as exc:
            return outcome(400, "structure", str(exc), "$body")
        if not isinstance(doc, dict):
            return outcome(400, "structure", "the body must be a JSON object")
        return doc

    async def send(topic: str, key: str, body: dict[str, Any]) -> Response | None:
        if ctx.producer is None:
            return outcome(503, "transient", "the worker is starting; try again")
        try:
            await ctx.producer.send_and_wait(topic, _dumps(body), key=key.encode())
        except Exception as exc:  # Kafka unavailable: nothing was written
            log.warning("steward command not written", extra={"error": type(exc).__name__})
            return outcome(503, "transient", "the command could not be stored; try again")
        return None

    async def accept(
        request: Request, topic: str, key: str, body: dict[str, Any], doc: dict[str, Any]
    ) -> Response:
        command_id = str(uuid.uuid4())
        reason = doc.get("reason", "")
        if not isinstance(reason, str):
            return outcome(400, "value", "reason must be a string", "reason")
        actor = request.headers.get("X-Steward", "")[:100]
        full = {**body, "command_id": command_id, "actor": actor, "reason": reason[:500]}
        failed = await send(topic, key, full)
        if failed is not None:
            return failed
        return _json({"command_id": command_id, "status": "accepted"}, 202)

    def master_field(doc: dict[str, Any], name: str) -> str | Response:
        value = doc.get(name)
        if not _is_master_id(value):
            return outcome(
                400, "value", f"{name} must be a master patient id (MP + 24 hex digits)", name
            )
        return str(value)

    def identifier_key(doc: dict[str, Any]) -> tuple[str, str] | Response:
        ident = doc.get("identifier")
        institution = doc.get("institution", "")
        if not isinstance(ident, dict) or not ident.get("system") or not ident.get("value"):
            return outcome(400, "required", "identifier needs a system and a value", "identifier")
        if not isinstance(institution, str):
            return outcome(400, "value", "institution must be a string", "institution")
        person = person_from_subject([ident], institution)
        keyed = keyed_identifiers(person, ctx.hash_ident)
        if not keyed:
            return outcome(
                422,
                "business-rule",
                "this identifier cannot name a patient (unknown system, a failing 身份证 "
                "checksum, or a hospital number without its institution)",
                "identifier",
            )
        return keyed[0].key, keyed[0].kind

    def command_view(handle: Callable[[Request, dict[str, Any]], Awaitable[Response]]) -> type:
        class CommandView(View):
            async def post(self, request: Request) -> Response:
                refused = authorised(request)
                if refused is not None:
                    return refused
                doc = await body_of(request)
                if isinstance(doc, Response):
                    return doc
                return await handle(request, doc)

        CommandView.__name__ = CommandView.__qualname__ = handle.__name__
        return CommandView

    async def merge(request: Request, doc: dict[str, Any]) -> Response:
        source, target = master_field(doc, "source"), master_field(doc, "target")
        if isinstance(source, Response):
            return source
        if isinstance(target, Response):
            return target
        if source == target:
            return outcome(400, "business-rule", "source and target are the same master")
        body = {"type": "merge", "source": source}
        return await accept(request, ctx.by_master, target, body, doc)

    async def unmerge(request: Request, doc: dict[str, Any]) -> Response:
        source = master_field(doc, "source")
        if isinstance(source, Response):
            return source
        return await accept(request, ctx.by_master, source, {"type": "unmerge"}, doc)

    def identity_command(kind: str) -> Callable[[Request, dict[str, Any]], Awaitable[Response]]:
        async def handle(request: Request, doc: dict[str, Any]) -> Response:
            master = master_field(doc, "master_patient_id")
            if isinstance(master, Response):
                return master
            found = identifier_key(doc)
            if isinstance(found, Response):
                return found
            key, ident_kind = found
            body = {"type": kind, "master_patient_id": master, "identifier_kind": ident_kind}
            return await accept(request, ctx.by_identity, key, body, doc)

        handle.__name__ = kind.replace("-", "_")
        return handle

    def review_command(decision: str) -> type:
        class ReviewView(View):
            async def post(self, request: Request, review_id: str) -> Response:
                refused = authorised(request)
                if refused is not None:
                    return refused
                doc = await body_of(request) if request.can_read_body else {}
                if isinstance(doc, Response):
                    return doc
                block, _, master = review_id.partition(".")
                if not block or not _is_master_id(master):
                    return outcome(404, "not-found", "no such review id")
                body = {
                    "type": "review-decision",
                    "decision": decision,
                    "master_patient_id": master,
                }
                return await accept(request, ctx.by_block, block, body, doc)

        ReviewView.__name__ = ReviewView.__qualname__ = f"review_{decision}"
        return ReviewView

    page(app, "/patients/$merge", "steward")(command_view(merge))
    page(app, "/patients/$unmerge", "steward")(command_view(unmerge))
    page(app, "/patients/$link", "steward")(command_view(identity_command("steward-link")))
    page(app, "/patients/$unlink", "steward")(command_view(identity_command("steward-unlink")))
    page(app, "/reviews/{review_id}/$confirm", "steward")(review_command("confirm"))
    page(app, "/reviews/{review_id}/$reject", "steward")(review_command("reject"))

    # ── reads, each answered by the owner of its key ────────────────────────────────────

    async def routed(
        request: Request, table: str, key: str, local: Callable[[], Awaitable[Response]]
    ) -> Response:
        """Answer locally when this worker owns ``key``'s partition, else forward to the owner."""
        if request.query.get("routed") == "1":
            return await local()
        try:
            dest = app.router.key_store(table, key.encode())
        except KeyError:
            return outcome(503, "transient", "partitions are being assigned; try again")
        if (dest.host, dest.port) == (app.conf.canonical_url.host, app.conf.canonical_url.port):
            return await local()
        url = request.url.with_host(dest.host or "").with_port(dest.port).update_query(routed="1")
        headers = {"Authorization": request.headers.get("Authorization", "")}
        async with app.http_client.get(url, headers=headers) as answer:
            return Response(
                body=await answer.read(), status=answer.status, content_type=answer.content_type
            )

    class PatientView(View):
        async def get(self, request: Request, master_patient_id: str) -> Response:
            refused = authorised(request, reads=True)
            if refused is not None:
                return refused
            if not _is_master_id(master_patient_id):
                return outcome(404, "not-found", "no such master patient id")

            async def local() -> Response:
                view = ctx.master_view(master_patient_id, True)
                if view is None:
                    return outcome(404, "not-found", "no such master patient id")
                try:
                    view["identities"] = [
                        await identity_of(request, i) for i in view.get("identities") or []
                    ]
                except RuntimeError as exc:
                    return outcome(503, "transient", str(exc))
                return _json(view)

            return await routed(request, "masters", master_patient_id, local)

    page(app, "/patients/{master_patient_id}", "steward", "internal")(PatientView)

    async def identity_of(request: Request, item: dict[str, Any]) -> dict[str, Any]:
        """One identity of a master as a steward sees it: its kind, how strongly it is held
        (rank: 100 a steward's link, 50 a verified 身份证 … 10 a hospital number), the master
        it names now and how many of the master's records it anchors — never its value."""
        key = str(item["key"])
        state = await owned(request, "identities", key, f"/internal/identities/{key}")
        return {
            "kind": (state or {}).get("kind"),
            "rank": (state or {}).get("rank"),
            "master_patient_id": (state or {}).get("master_patient_id"),
            "records": item.get("records", 0),
        }

    def table_view(name: str, table: Any, missing: Any) -> type:
        """Internal: one key's raw value in ``table``, answered at the key's owner."""

        class TableView(View):
            async def get(self, request: Request, key: str) -> Response:
                refused = authorised(request, reads=True)
                if refused is not None:
                    return refused

                async def local() -> Response:
                    raw = table.get(key.encode())
                    return _json(simplejson.loads(raw) if raw else missing)

                return await routed(request, name, key, local)

        TableView.__name__ = TableView.__qualname__ = f"internal_{name}"
        return TableView

    page(app, "/internal/identities/{key}", "steward", "internal")(
        table_view("identities", ctx.identities, None)
    )
    page(app, "/internal/blocks/{key}", "steward", "internal")(table_view("blocks", ctx.blocks, []))

    async def internal_get(request: Request, path: str, *, missing_ok: bool = False) -> Any:
        url = request.url.with_path(path).with_query({})
        headers = {"Authorization": request.headers.get("Authorization", "")}
        async with app.http_client.get(url, headers=headers) as answer:
            if answer.status == 404 and missing_ok:
                return None
            if answer.status != 200:
                raise RuntimeError(f"{path.split('/')[2]} lookup answered {answer.status}")
            return simplejson.loads(await answer.read())

    async def match(request: Request, doc: dict[str, Any]) -> Response:
        """``POST /fhir/Patient/$match``: the master patients a Patient resource may be."""
        patient = doc
        if doc.get("resourceType") == "Parameters":
            found = [
                p.get("resource")
                for p in doc.get("parameter") or []
                if isinstance(p, dict) and p.get("name") == "resource"
            ]
            patient = found[0] if found and isinstance(found[0], dict) else {}
        if patient.get("resourceType") != "Patient":
            return outcome(
                400,
                "required",
                "give a Patient, or Parameters with a 'resource' parameter holding one",
                "Parameters.parameter.where(name='resource')",
            )
        institution = doc.get("institution") or ""
        try:
            person = person_from_fhir(patient, str(institution))
        except (TypeError, ValueError, AttributeError) as exc:
            return outcome(400, "invalid", f"the Patient could not be read: {exc}")
        try:
            return _json(await candidates(request, person), content_type=FHIR_JSON)
        except RuntimeError as exc:
            return outcome(503, "transient", str(exc))

    async def candidates(request: Request, person: Any) -> dict[str, Any]:
        grades: dict[str, tuple[str, float]] = {}
        for keyed in keyed_identifiers(person, ctx.hash_ident):
            state = await internal_get(request, f"/internal/identities/{keyed.key}")
            if state and keyed.rank >= 30:  # a verified document or a card names one person
                grades.setdefault(state["master_patient_id"], ("certain", 1.0))
            elif state:
                grades.setdefault(state["master_patient_id"], ("probable", 0.9))
        if person.birth_date is not None:
            block = ctx.block_key(person.birth_date.isoformat())
            entries = await internal_get(request, f"/internal/blocks/{block}")
            for entry in entries:
                mid = entry["master_patient_id"]
                for view in entry_views(entry):  # the identity's recent records
                    s = matching.score(person, person_from_json(view), ctx.rules)
                    grade = {"auto": "probable", "review": "possible"}.get(s.outcome)
                    if grade is not None and (
                        mid not in grades or (grades[mid][0] == "possible" and grade == "probable")
                    ):
                        grades[mid] = (grade, round(s.probability, 6))
        order = {"certain": 0, "probable": 1, "possible": 2}
        best = sorted(grades.items(), key=lambda kv: (order[kv[1][0]], -kv[1][1], kv[0]))
        return {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": min(len(best), MATCH_COUNT),
            "entry": [
                {
                    "fullUrl": f"urn:mrhub:master-patient:{mid}",
                    "resource": {
                        "resourceType": "Patient",
                        "id": mid,
                        "identifier": [
                            {"system": "https://fhir.mrhub.cn/sid/master-patient", "value": mid}
                        ],
                    },
                    "search": {
                        "mode": "match",
                        "score": score,
                        "extension": [{"url": MATCH_GRADE_URL, "valueCode": grade}],
                    },
                }
                for mid, (grade, score) in best[:MATCH_COUNT]
            ],
        }

    page(app, "/fhir/Patient/$match", "steward")(command_view(match))

    async def owned(request: Request, table: str, key: str, path: str) -> Any:
        """``key``'s value in ``table`` as the read route ``path`` shows it: read here when
        this worker owns the key (no HTTP round trip), else asked of the owner."""
        try:
            dest = app.router.key_store(table, key.encode())
        except KeyError:
            raise RuntimeError("partitions are being assigned; try again") from None
        if (dest.host, dest.port) != (app.conf.canonical_url.host, app.conf.canonical_url.port):
            return await internal_get(request, path, missing_ok=True)
        if table == "masters":
            return ctx.master_view(key, False)
        raw = ctx.identities.get(key.encode())
        return simplejson.loads(raw) if raw else None

    class ResolveView(View):
        """``POST /internal/resolve`` with ``{"patient": …, "institution": …}`` (in the body,
        never in a URL that proxies and clients log): the surviving master patient id
        of a patient as a hospital names her — a master id, ``<system>|<value>`` (a hospital's
        own numbers in ``institution``'s scope) or a bare 身份证 — for the recognition check
        and the imaging search. 404 when nobody knows the identifier."""

        async def post(self, request: Request) -> Response:
            refused = authorised(request, reads=True)
            if refused is not None:
                return refused
            doc = await body_of(request)
            if isinstance(doc, Response):
                return doc
            patient = doc.get("patient")
            institution = doc.get("institution") or ""
            if not isinstance(patient, str) or not isinstance(institution, str):
                return outcome(400, "value", "patient and institution must be strings")
            patient = patient.strip()
            if not patient:
                return outcome(400, "required", "give the patient to resolve", "patient")
            grade = "certain"
            if _is_master_id(patient):
                master = patient
            else:
                system, bar, value = patient.partition("|")
                if not bar:  # a bare 身份证
                    system, value = ID_CARD_SYSTEM, patient
                found = identifier_key(
                    {"identifier": {"system": system, "value": value}, "institution": institution}
                )
                if isinstance(found, Response):
                    return found
                key, _kind = found
                try:
                    state = await owned(request, "identities", key, f"/internal/identities/{key}")
                except RuntimeError as exc:
                    return outcome(503, "transient", str(exc))
                if not state:
                    return outcome(404, "not-found", "no patient is known by this identifier")
                master = state["master_patient_id"]
                grade = "certain" if int(state.get("rank", 0)) >= 30 else "probable"
            try:
                view = await owned(request, "masters", master, f"/patients/{master}")
            except RuntimeError as exc:
                return outcome(503, "transient", str(exc))
            if view is None and _is_master_id(patient):
                return outcome(404, "not-found", "no such master patient id")
            root = (view or {}).get("surviving_master_patient_id") or master
            return _json({"master_patient_id": root, "grade": grade})

    page(app, "/internal/resolve", "steward", "internal")(ResolveView)

    class ReviewsView(View):
        """``GET /reviews``: every pending review, gathered from every worker."""

        async def get(self, request: Request) -> Response:
            refused = authorised(request)
            if refused is not None:
                return refused
            items = self.local_items()
            if request.query.get("routed") != "1":
                me = (app.conf.canonical_url.host, app.conf.canonical_url.port)
                try:
                    hosts = list(app.router.table_metadata("reviews"))
                except KeyError:
                    hosts = []
                for host in hosts:
                    url = URL(host)
                    if (url.host, url.port) == me:
                        continue
                    got = await internal_list(request, url)
                    items.extend(got)
            items.sort(key=lambda i: (i.get("queued_at") or "", i["id"]))
            return _json({"total": len(items), "items": items})

        def local_items(self) -> list[dict[str, Any]]:
            out: list[dict[str, Any]] = []
            for key, raw in ctx.reviews.items():
                for master, item in simplejson.loads(raw).items():
                    out.append(
                        {
                            "id": f"{key.decode()}.{master}",
                            "master_patient_id": master,
                            "candidate_master_patient_id": item["candidate"],
                            "score": item["score"],
                            "probability": item.get("probability"),
                            "field_weights": item.get("parts", {}),
                            "queued_at": item.get("queued_at"),
                            **compared(item),
                        }
                    )
            return out

    def compared(item: dict[str, Any]) -> dict[str, Any]:
        """The two records a review compared, identifiers masked, and each field's level
        (absent for a review queued before the records were kept with it)."""
        left, right = item.get("person"), item.get("candidate_person")
        if not left or not right:
            return {}
        a, b = person_from_json(left), person_from_json(right)
        levels = {
            rule.name: (rule.levels[level] if level is not None else None)
            for rule, level in zip(ctx.rules.fields, matching.compare(a, b, ctx.rules), strict=True)
        }
        return {"person": public_person(a), "candidate_person": public_person(b), "levels": levels}

    async def internal_list(request: Request, url: Any) -> list[dict[str, Any]]:
        target = request.url.with_host(url.host).with_port(url.port).update_query(routed="1")
        headers = {"Authorization": request.headers.get("Authorization", "")}
        async with app.http_client.get(target, headers=headers) as answer:
            if answer.status != 200:
                raise RuntimeError(f"a worker answered {answer.status} for its reviews")
            doc = simplejson.loads(await answer.read())
            items: list[dict[str, Any]] = doc["items"]
            return items

    page(app, "/reviews", "steward")(ReviewsView)


def mask(value: str, *, head: int = 0, tail: int = 4) -> str:
    """``value`` with all but its first ``head`` and last ``tail`` characters starred (a value
    too short for that keeps only its first third visible)."""
    if len(value) < head + tail + 3:
        keep = len(value) // 3
        return value[:keep] + "*" * (len(value) - keep)
    return value[:head] + "*" * (len(value) - head - tail) + value[len(value) - tail :]


def public_person(p: Person) -> dict[str, Any]:
    """What a steward sees of one record's person: name, sex, birth date, institution; every
    identifier and the phone masked (a 身份证 as ``1401**********1234``); no address."""
    name = (p.family or "") + (p.given or "")
    pinyin = " ".join(x for x in (p.family_py, p.given_py) if x)
    return {
        "name": name or pinyin or None,
        "pinyin": pinyin or None,
        "sex": p.sex,
        "birth_date": p.birth_date.isoformat() if p.birth_date else None,
        "institution": p.institution,
        "phone": mask(p.phone, head=3) if p.phone else None,
        "card_conflict": p.card_conflict,
        "identifiers": [
            {
                "kind": i.kind,
                "system": i.system,
                "scope": i.scope,
                "doc_type": i.doc_type,
                "verified": i.verified,
                "value": mask(i.value, head=4 if i.kind == "id_card" else 0),
            }
            for i in p.idents
        ],
    }


def _unauthorised(message: str) -> Response:
    response = outcome(401, "login", message)
    response.headers["WWW-Authenticate"] = 'Bearer realm="mrhub-steward"'
    return response
