"""The recognition worker: a decision for every order, from the patient's known results.

Both inputs are keyed by master patient id and share one partitioning, so one worker owns a
patient's results and decides that patient's orders:

- ``results`` reads ``mrhub.results.result-indexed.v1`` and keeps the latest version of each
  result, one table entry per result (``results`` table, key ``<master>|<record id>``; a
  patient's entries are read with a prefix scan of the partition that holds them, see
  :func:`services.common.faust_fixes.scan_prefix`). A retraction removes it; a result that
  moved to another master (merge, unmerge, relink) is forgotten under the old one (an
  internal ``forget`` message to the old master's owner) and kept under the new one. No
  value grows with a patient's history, so none can outgrow Kafka's message size.
- ``orders`` reads ``mrhub.results.order-placed.v1``: each new or updated active order is
  decided with :func:`services.recognition.decision.decide` against the patient's results,
  the institution registry and the catalogue in force for the ordering institution's
  region, and the decision is published on ``mrhub.recognition.decision-made.v1`` (keyed by
  master patient id), with its FHIR ``DetectedIssue`` form.

Each decided order is kept (``orders`` table, per master patient id: at most
:data:`KEEP_ORDERS` orders, each with the id of its latest decision and the first
:data:`MAX_MATCHES` results it matched — a bounded value). Re-evaluation: when a result a
decision matched is amended or retracted, or moves to another patient (unmerge, unlink),
the decision is made again and re-issued with ``supersedes`` naming the one it replaces;
when results move *in* (a merge), the patient's open orders of the moved result's item are
decided again and re-issued where the answer changed; an order that is updated or moves to
another master is decided again too.

``GET /recognition/check`` and ``POST /recognition/feedback`` are in
:mod:`services.recognition.web`; the FHIR reads (docs/sharing.md) in
:mod:`services.recognition.reads`, over three more tables kept here: ``requests`` (each order
as posted), ``issues`` (each published decision, at most :data:`KEEP_DECISIONS` per order)
and ``records`` (id → where it is kept, for a read by id).

The app runs ``exactly_once`` like the patient index: outputs, table changes and the input
offset commit together. A message that cannot be processed goes to
``mrhub.recognition.dead-letter.v1`` with its bytes and the error; the stream goes on.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import faust
from prometheus_client import Counter, Histogram

from services.common.codec import dumps as _dumps
from services.common.codec import loads as _loads
from services.common.envelope import Envelope, utcnow
from services.common.faust_app import make_app
from services.common.faust_fixes import partition_db, scan_prefix
from services.common.institutions import ReloadingRegistry
from services.common.metrics import build_info, new_registry
from services.common.partitioner import partition_for
from services.common.settings import Settings
from services.common.stages import Stages, add_service_pages
from services.common.topics import (
    DECISION_MADE,
    ORDER_PLACED,
    RESULT_INDEXED,
    dead_letter,
)
from services.recognition import cds, fhir_search, reads, web
from services.recognition.catalog import Catalog, CatalogSet, load_catalogs
from services.recognition.decision import (
    Decision,
    Order,
    PriorResult,
    decide,
    item_of_record,
    to_detected_issue,
)

log = logging.getLogger(__name__)

SERVICE = "recognition"
DEAD_LETTER = dead_letter(SERVICE)
#: Order statuses that ask for a decision (a revoked or completed order does not).
DECIDED_STATUSES = frozenset({"active", "draft", "on-hold"})
#: Decided orders kept per patient for re-evaluation: the most recent ones, none older.
KEEP_ORDERS = 50
KEEP_ORDERS_FOR = timedelta(days=90)
#: Matches a published decision lists (the best first; ``matches_total`` counts them all), and
#: the matched results kept per order for re-evaluation: what a doctor sees is bounded, and
#: so is every message and table value, however long the patient's history.
MAX_MATCHES = 20
#: Decisions kept per order for reads (``DetectedIssue``), the latest first: the one in force
#: and those it superseded (status ``cancelled``, extension ``superseded-by``).
KEEP_DECISIONS = 10
#: ``records`` values: which table holds an id (result, order, decision) and under what key.
RECORD_KINDS = {b"r": "results", b"o": "requests", b"d": "issues"}
#: How often a worker looks whether the catalogue versions in force changed.
CATALOGUE_WATCH_S = 10.0
#: Parsed results a worker keeps (a few KB each), the most recently parsed.
PARSED_RESULTS_KEPT = 20_000
#: Seconds buckets from gateway receipt to a decision, and of a synchronous check.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
CHECK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self) -> None:
        self.registry = new_registry()
        build_info(self.registry, SERVICE)
        self.decisions = Counter(
            "mrhub_recognition_decisions_total",
            "Decisions published (re-issued ones included), by outcome, reason code, "
            "category and region (the ordering institution's prefecture code).",
            ["outcome", "reason", "category", "region"],
            registry=self.registry,
        )
        self.reissued = Counter(
            "mrhub_recognition_decisions_reissued_total",
            "Decisions re-issued superseding an earlier one, by cause.",
            ["cause"],
            registry=self.registry,
        )
        self.savings = Counter(
            "mrhub_recognition_savings_yuan_total",
            "Estimated yuan saved: the catalogue price of each order first decided "
            "recognisable, by category and region (prefecture code).",
            ["category", "region"],
            registry=self.registry,
        )
        self.results = Counter(
            "mrhub_recognition_results_total",
            "Results applied to patients' known results, by change (new, update, "
            "retraction, moved-away).",
            ["change"],
            registry=self.registry,
        )
        self.dead_letters = Counter(
            "mrhub_recognition_dead_letters_total",
            "Messages sent to the dead-letter topic, by stage.",
            ["stage"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "mrhub_recognition_decision_latency_seconds",
            "From the gateway's receipt of an order to its first decision being sent.",
            registry=self.registry,
            buckets=LATENCY_BUCKETS,
        )
        self.feedback = Counter(
            "mrhub_recognition_feedback_total",
            "Doctors' feedback recorded, by choice and reason code (none for recognised).",
            ["choice", "reason"],
            registry=self.registry,
        )
        self.checks = Histogram(
            "mrhub_recognition_check_seconds",
            "Time to answer GET /recognition/check, by outcome (recognisable, "
            "not-recognisable, or an error class).",
            ["outcome"],
            registry=self.registry,
            buckets=CHECK_BUCKETS,
        )
        self.reads = Histogram(
            "mrhub_recognition_fhir_read_seconds",
            "Time to answer a FHIR read (GET /fhir/{type}/{id}) or search (GET /fhir/{type}, "
            "POST /fhir/{type}/_search, a next page), by interaction and HTTP status.",
            ["interaction", "status"],
            registry=self.registry,
            buckets=CHECK_BUCKETS,
        )
        self.hooks = Histogram(
            "mrhub_recognition_cds_hook_seconds",
            "Time to answer a CDS Hooks call (POST /cds-services/{id}), by service and HTTP "
            "status.",
            ["service", "status"],
            registry=self.registry,
            buckets=CHECK_BUCKETS,
        )
        self.cards = Counter(
            "mrhub_recognition_cds_cards_total",
            "Cards returned by the CDS Hooks services (one per recognisable draft order).",
            ["service"],
            registry=self.registry,
        )
        self.audit_errors = Counter(
            "mrhub_recognition_audit_write_errors_total",
            "Reads refused because their audit record could not be written.",
            registry=self.registry,
        )


def fingerprint(decision: Decision) -> list[Any]:
    """What a doctor would see change: outcome, reason and each listed match's verdict and
    expiry (the first :data:`MAX_MATCHES`, as published)."""
    return [
        decision.outcome,
        decision.reason,
        [
            [m.record_id, m.recognisable, m.reason, m.valid_until and m.valid_until.isoformat()]
            for m in decision.matches[:MAX_MATCHES]
        ],
    ]


def result_key(master: bytes, record_id: str) -> bytes:
    """The ``results`` table key of one result: ``<master>|<record id>``."""
    return master + b"|" + record_id.encode()


def without_indexed_at(stored: dict[str, Any]) -> dict[str, Any]:
    """A kept result or order without the time the worker stored it (what changed is the
    payload)."""
    return {k: v for k, v in stored.items() if k != "indexed_at"}


def results_prefix(master: bytes) -> bytes:
    """The prefix of every ``results`` key of ``master`` (a master id never holds ``|``)."""
    return master + b"|"


def decision_body(
    decision: Decision,
    decision_id: str,
    *,
    previous: dict[str, Any] | None,
    cause: str | None,
) -> dict[str, Any]:
    """The payload of a decision on ``mrhub.recognition.decision-made.v1``
    (docs/schemas/decision-made.v1.json): its first :data:`MAX_MATCHES` matches, best
    first, and ``matches_total`` counting them all, so that no decision outgrows a Kafka
    message however many results the patient has."""
    listed = decision.model_copy(update={"matches": decision.matches[:MAX_MATCHES]})
    body = listed.model_dump(mode="json")
    body["matches_total"] = len(decision.matches)
    # yuan as JSON numbers with their digits (the envelope writes Decimals as numbers)
    body["price_yuan"] = decision.price_yuan
    body["estimated_saving_yuan"] = decision.estimated_saving_yuan
    body["decision_id"] = decision_id
    body["revision"] = (previous or {}).get("revision", 0) + 1
    body["supersedes"] = (previous or {}).get("decision_id")
    body["reissue"] = cause is not None
    body["reevaluation_cause"] = cause
    body["detected_issue"] = to_detected_issue(listed, issue_id=decision_id)
    return body


def keep_recent(orders: dict[str, Any], now: datetime) -> dict[str, Any]:
    """Drop decided orders older than :data:`KEEP_ORDERS_FOR`, keep :data:`KEEP_ORDERS`."""
    horizon = (now - KEEP_ORDERS_FOR).isoformat()
    fresh = [(k, v) for k, v in orders.items() if v.get("decided_at", "") >= horizon]
    fresh.sort(key=lambda kv: kv[1].get("decided_at", ""))
    return dict(fresh[-KEEP_ORDERS:])


def is_retraction(payload: dict[str, Any]) -> bool:
    return payload.get("change") == "retraction" or bool(payload.get("retracted"))


def apply_result(known: dict[str, Any], payload: dict[str, Any]) -> bool:
    """Fold one result-indexed payload into a patient's known results (record id → payload).
    Returns whether anything changed."""
    rid = payload["record_id"]
    if is_retraction(payload):
        return known.pop(rid, None) is not None
    if known.get(rid) == payload:
        return False
    known[rid] = payload
    return True


def create_app(
    settings: Settings,
    *,
    web_port: int | None = None,
    clock: Callable[[], datetime] = utcnow,
) -> faust.App:
    port = settings.recognition.port if web_port is None else web_port
    app = make_app(SERVICE, settings, web_port=port, web_host=settings.recognition.host)
    metrics = Metrics()
    catalogs: CatalogSet = load_catalogs(settings.recognition.catalog_path)
    registry = ReloadingRegistry(settings.institutions_path)

    results_topic = app.topic(RESULT_INDEXED.name, key_type=bytes, value_type=bytes)
    orders_topic = app.topic(ORDER_PLACED.name, key_type=bytes, value_type=bytes)
    forget_topic = app.topic(
        f"{app.conf.id}-forget",
        partitions=settings.topic_partitions,
        internal=True,
        key_type=bytes,
        value_type=bytes,
    )
    decisions_topic = app.topic(DECISION_MADE.name, key_type=bytes, value_type=bytes)
    dlq = app.topic(DEAD_LETTER.name, key_type=bytes, value_type=bytes)
    known = app.Table(
        "results", partitions=settings.topic_partitions, key_type=bytes, value_type=bytes
    )
    decided = app.Table(
        "orders", partitions=settings.topic_partitions, key_type=bytes, value_type=bytes
    )
    # for reads (docs/sharing.md): each order as posted (``<master>|<record id>``), each kept
    # decision (``<master>|<order id>|<decision id>``) and, for a read by id that does not
    # know the patient, id → ``<kind>:<key>`` (written with the entry, in its partition)
    requests = app.Table(
        "requests", partitions=settings.topic_partitions, key_type=bytes, value_type=bytes
    )
    issues = app.Table(
        "issues", partitions=settings.topic_partitions, key_type=bytes, value_type=bytes
    )
    records = app.Table(
        "records", partitions=settings.topic_partitions, key_type=bytes, value_type=bytes
    )
    tables = {"results": known, "requests": requests, "issues": issues}

    stages = Stages(app, SERVICE, dlq, lambda stage: metrics.dead_letters.labels(stage).inc())
    emit = stages.emit
    partitions = settings.topic_partitions

    #: table key → (its value, the result parsed): a patient's results are read for every
    #: order and every check, and parsing them (JSON, then the model) cost more than the
    #: decision. An entry is used only while the stored value is byte-for-byte the same.
    parsed: dict[bytes, tuple[bytes, PriorResult]] = {}

    def prior(entry: bytes, raw: bytes) -> PriorResult:
        hit = parsed.get(entry)
        if hit is not None and hit[0] == raw:
            return hit[1]
        result = PriorResult.model_validate(_loads(raw))
        if len(parsed) >= PARSED_RESULTS_KEPT:
            del parsed[next(iter(parsed))]  # the oldest parsed: a bounded cache
        parsed[entry] = (raw, result)
        return result

    def patient_priors(key: bytes, partition: int | None = None) -> list[PriorResult]:
        """Every known result of master ``key``, parsed: a prefix scan of the partition that
        holds them (the event's own, or the master's when answering HTTP), plus those of a
        value left in the layout before one entry per result, if any. Each stored value is
        parsed once (the last :data:`PARSED_RESULTS_KEPT` kept)."""
        part = partition_for(key, partitions) if partition is None else partition
        prefix = results_prefix(key)
        seen: set[str] = set()
        out: list[PriorResult] = []
        for k, v in scan_prefix(known, part, prefix):
            seen.add(k[len(prefix) :].decode())
            out.append(prior(k, v))
        legacy = known.get(key)
        if legacy:
            for rid, payload in dict(_loads(legacy)).items():
                if str(rid) not in seen:
                    out.append(PriorResult.model_validate(payload))
        return out

    def migrate_legacy(key: bytes) -> None:
        """Split a patient's value of the old layout (master → every result) into one entry
        per result, inside the current event's transaction."""
        raw = known.get(key)
        if not raw:
            return
        for rid, payload in dict(_loads(raw)).items():
            entry = result_key(key, str(rid))
            if known.get(entry) is None:
                known[entry] = _dumps(payload)
        del known[key]

    def patient_orders(key: bytes) -> dict[str, Any]:
        raw = decided.get(key)
        return dict(_loads(raw)) if raw else {}

    def catalog_for(order: Order, now: datetime) -> Catalog:
        orderer = registry.get(order.institution)
        if orderer is None:
            raise ValueError("the ordering institution is not in the registry")
        catalog = catalogs.catalog_for(orderer.region_code, now)
        if catalog is None:
            raise ValueError("no catalogue is in force for the ordering institution's region")
        return catalog

    def decide_now(order: Order, priors: list[PriorResult]) -> Decision:
        now = clock()
        return decide(order, priors, registry, catalog_for(order, now), now)

    def concerns(order: Order, payload: dict[str, Any]) -> bool:
        """Whether a result could change ``order``'s decision: it maps to the ordered item
        (a result moved in is decided against the orders it can matter to, not all)."""
        now = clock()
        try:
            catalog = catalog_for(order, now)
            result = PriorResult.model_validate(payload)
        except ValueError:
            return True  # let the decision say what is wrong
        ordered = item_of_record(
            order.codes,
            order.imaging,
            order.catalogue_item,
            institution=order.institution,
            catalog=catalog,
            at=now,
        )
        found = item_of_record(
            result.codes,
            result.imaging,
            result.catalogue_item,
            institution=result.institution,
            catalog=catalog,
            at=now,
        )
        return ordered is not None and found is not None and ordered.id == found.id

    def items_of(master: str) -> list[fhir_search.Item]:
        """Every readable record of ``master`` held here: results, orders, decisions."""
        key = master.encode()
        part = partition_for(key, partitions)
        prefix = results_prefix(key)
        out: list[fhir_search.Item] = []
        for table, build in (
            (known, fhir_search.item_from_record),
            (requests, fhir_search.item_from_record),
            (issues, fhir_search.item_from_decision),
        ):
            for _, raw in scan_prefix(table, part, prefix):
                try:
                    out.append(build(_loads(raw)))
                except (KeyError, TypeError, ValueError):
                    continue
        return out

    def find(record_id: str) -> fhir_search.Item | None:
        """The record or decision ``record_id`` in a partition held here."""
        rid = record_id.encode()
        for part in range(partitions):
            db = partition_db(records, part)
            where = db.get(rid) if db is not None else None
            if not where:
                continue
            kind, _, entry = bytes(where).partition(b":")
            table_db = partition_db(tables[RECORD_KINDS.get(kind, "results")], part)
            raw = table_db.get(entry) if table_db is not None else None
            if raw is None:
                continue
            doc = _loads(raw)
            if kind == b"d":
                return fhir_search.item_from_decision(doc)
            return fhir_search.item_from_record(doc)
        return None

    def resources_of(master: str, record_ids: list[str]) -> dict[str, dict[str, Any]]:
        """The posted resources of some of ``master``'s results held here."""
        key = master.encode()
        db = partition_db(known, partition_for(key, partitions))
        out: dict[str, dict[str, Any]] = {}
        if db is None:
            return out
        for rid in record_ids:
            raw = db.get(result_key(key, rid))
            if raw is None:
                continue
            out[rid] = fhir_search.posted_resource(_loads(raw))
        return out

    def remember(kind: bytes, record_id: str, entry: bytes) -> None:
        records[record_id.encode()] = kind + b":" + entry

    def forget_record(record_id: str) -> None:
        if records.get(record_id.encode()) is not None:
            del records[record_id.encode()]

    def keep_decision(
        key: bytes, order_id: str, decision_id: str, body: dict[str, Any], decision: Decision
    ) -> None:
        """Keep the published decision for reads, mark the one it supersedes, and drop the
        oldest beyond :data:`KEEP_DECISIONS` for the order."""
        prefix = results_prefix(key) + order_id.encode() + b"|"
        entry = prefix + decision_id.encode()
        previous = body.get("supersedes")
        if previous:
            old_key = prefix + str(previous).encode()
            raw = issues.get(old_key)
            if raw is not None:
                issues[old_key] = _dumps({**_loads(raw), "superseded_by": decision_id})
        issues[entry] = _dumps(
            {
                "decision_id": decision_id,
                "order_id": order_id,
                "master_patient_id": key.decode(),
                "institution": decision.ordering_institution,
                "category": decision.item_category or "other",
                "decided_at": decision.decided_at.isoformat(),
                "indexed_at": decision.decided_at.isoformat(),
                "superseded_by": None,
                "detected_issue": body["detected_issue"],
            }
        )
        remember(b"d", decision_id, entry)
        kept = scan_prefix(issues, partition_for(key, partitions), prefix)
        if len(kept) > KEEP_DECISIONS:
            by_age = sorted(kept, key=lambda kv: str(_loads(kv[1]).get("decided_at", "")))
            for old, raw in by_age[: len(kept) - KEEP_DECISIONS]:
                if old != entry:
                    forget_record(str(_loads(raw).get("decision_id", "")))
                    del issues[old]

    def drop_order_reads(key: bytes, order_id: str) -> None:
        entry = result_key(key, order_id)
        if requests.get(entry) is not None:
            del requests[entry]
        forget_record(order_id)
        prefix = results_prefix(key) + order_id.encode() + b"|"
        for old, raw in scan_prefix(issues, partition_for(key, partitions), prefix):
            forget_record(str(_loads(raw).get("decision_id", "")))
            del issues[old]

    web_ctx = web.Context(
        app=app,
        settings=settings,
        registry=registry,
        catalogs=catalogs,
        priors_of=lambda master: patient_priors(master.encode()),
        orders_of=lambda master: patient_orders(master.encode()),
        metrics=metrics,
        clock=clock,
        resources_of=resources_of,
    )

    async def publish(
        event: Any,
        key: bytes,
        decision: Decision,
        *,
        trace_id: str,
        received_at: datetime | None,
        previous: dict[str, Any] | None,
        cause: str | None,
        order_id: str,
    ) -> dict[str, Any]:
        """Send ``decision`` and return the entry to keep for its order (the decision itself
        is kept for reads as a ``DetectedIssue``). The decision lists
        its first :data:`MAX_MATCHES` matches (``matches_total`` counts them all)."""
        decision_id = uuid.uuid4().hex
        body = decision_body(decision, decision_id, previous=previous, cause=cause)
        out = Envelope(
            event_id=decision_id,
            event_type=DECISION_MADE.event_type,
            source=decision.ordering_institution,
            trace_id=trace_id,
            received_at=received_at,
            payload=body,
        )
        orderer = registry.get(decision.ordering_institution)
        region = orderer.prefecture_code if orderer else "unknown"
        category = decision.item_category or "other"
        metrics.decisions.labels(decision.outcome, decision.reason, category, region).inc()
        if cause is None:
            if decision.recognisable and decision.estimated_saving_yuan:
                metrics.savings.labels(category, region).inc(float(decision.estimated_saving_yuan))
            if received_at is not None:
                metrics.latency.observe(max(0.0, (utcnow() - received_at).total_seconds()))
        else:
            metrics.reissued.labels(cause).inc()
        await emit(event, decisions_topic, key, out.to_bytes(), out.headers())
        keep_decision(key, order_id, decision_id, body, decision)
        return {
            "decision_id": decision_id,
            "revision": body["revision"],
            "decided_at": decision.decided_at.isoformat(),
            "matches": [m.record_id for m in decision.matches[:MAX_MATCHES]],
            "catalog_version": decision.catalog_version,
            "fingerprint": fingerprint(decision),
            "trace_id": trace_id,
        }

    async def reevaluate(
        event: Any,
        key: bytes,
        cause: str,
        *,
        record_id: str | None,
        moved_in: dict[str, Any] | None = None,
    ) -> None:
        """Decide again the patient's orders that matched ``record_id`` (when ``None``:
        results moved in — the orders ``moved_in`` maps to) and re-issue them: always for a
        result they depended on, only when the answer changed for results moved in. The
        patient's results are read once, and only if an order needs them."""
        orders = patient_orders(key)
        todo = []
        for order_id, entry in orders.items():
            if record_id is not None and record_id not in entry.get("matches", ()):
                continue
            order = Order.model_validate(entry["order"])
            if moved_in is not None and not concerns(order, moved_in):
                continue
            todo.append((order_id, entry, order))
        if not todo:
            return
        priors = patient_priors(key, event.message.partition)
        changed = False
        for order_id, entry, order in todo:
            decision = decide_now(order, priors)
            if record_id is None and fingerprint(decision) == entry.get("fingerprint"):
                continue
            kept = await publish(
                event,
                key,
                decision,
                trace_id=entry.get("trace_id") or uuid.uuid4().hex,
                received_at=None,
                previous=entry,
                cause=cause,
                order_id=order_id,
            )
            orders[order_id] = {**kept, "order": entry["order"]}
            changed = True
        if changed:
            decided[key] = _dumps(orders)

    async def on_result(event: Any, key: bytes | None, value: bytes) -> None:
        if key is None:
            raise ValueError("result without a master patient id key")
        env = Envelope.from_bytes(value)
        payload = env.payload
        rid = str(payload["record_id"])
        migrate_legacy(key)
        entry = result_key(key, rid)
        raw = known.get(entry)
        existed = raw is not None
        changed = False
        if is_retraction(payload):
            if existed:
                del known[entry]
                changed = True
            forget_record(rid)
        elif raw is None or without_indexed_at(_loads(raw)) != payload:
            # kept with the time the hub indexed it (meta.lastUpdated of reads)
            known[entry] = _dumps({**payload, "indexed_at": env.occurred_at.isoformat()})
            remember(b"r", rid, entry)
            changed = True
        previous = payload.get("previous_master_patient_id")
        moved = bool(previous and previous != payload["master_patient_id"])
        if changed:
            change = str(payload.get("change", "new"))
            metrics.results.labels(change).inc()
            if moved:
                await reevaluate(event, key, "result-moved-in", record_id=None, moved_in=payload)
            elif existed:
                cause = "result-retracted" if is_retraction(payload) else "result-amended"
                await reevaluate(event, key, cause, record_id=rid)
        if moved:
            forget = {"kind": "result", "record_id": rid}
            await emit(event, forget_topic, str(previous).encode(), _dumps(forget))

    async def on_catalogue_check(event: Any) -> None:
        """Re-issue the kept decisions of this partition's patients that were made with
        another catalogue version than the one now in force for the ordering institution."""
        partition = event.message.partition
        now = clock()
        for key, raw in list(decided.items()):
            if partition_for(key, partitions) != partition:
                continue
            orders = dict(_loads(raw))
            changed = False
            priors: list[PriorResult] | None = None
            for order_id, entry in orders.items():
                order = Order.model_validate(entry["order"])
                orderer = registry.get(order.institution)
                catalog = catalogs.catalog_for(orderer.region_code, now) if orderer else None
                if catalog is None or entry.get("catalog_version") == catalog.version:
                    continue
                if priors is None:
                    priors = patient_priors(key, partition)
                decision = decide_now(order, priors)
                kept = await publish(
                    event,
                    key,
                    decision,
                    trace_id=entry.get("trace_id") or uuid.uuid4().hex,
                    received_at=None,
                    previous=entry,
                    cause="catalogue-changed",
                    order_id=order_id,
                )
                orders[order_id] = {**kept, "order": entry["order"]}
                changed = True
            if changed:
                decided[key] = _dumps(orders)

    async def on_forget(event: Any, key: bytes | None, value: bytes) -> None:
        doc = _loads(value)
        if isinstance(doc, dict) and doc.get("kind") == "catalogue-check":
            await on_catalogue_check(event)
            return
        if key is None:
            raise ValueError("forget without a master patient id key")
        rid = str(doc["record_id"])
        if doc["kind"] == "order":
            orders = patient_orders(key)
            if orders.pop(rid, None) is not None:
                decided[key] = _dumps(orders)
            drop_order_reads(key, rid)
            return
        migrate_legacy(key)
        entry = result_key(key, rid)
        if known.get(entry) is not None:
            del known[entry]
            forget_record(rid)
            metrics.results.labels("moved-away").inc()
            await reevaluate(event, key, "result-moved-away", record_id=rid)

    async def on_order(event: Any, key: bytes | None, value: bytes) -> None:
        if key is None:
            raise ValueError("order without a master patient id key")
        env = Envelope.from_bytes(value)
        payload = env.payload
        order_id = payload.get("record_id") or env.event_id
        moved_from = payload.get("previous_master_patient_id")
        if moved_from and moved_from != payload.get("master_patient_id"):
            forget = {"kind": "order", "record_id": order_id}
            await emit(event, forget_topic, str(moved_from).encode(), _dumps(forget))
        orders = patient_orders(key)
        if payload.get("change") == "retraction":
            drop_order_reads(key, order_id)
        else:  # the order as posted, for reads (one entry per order)
            order_entry = result_key(key, order_id)
            stored = {**payload, "record_id": order_id}
            raw = requests.get(order_entry)
            if raw is None or without_indexed_at(_loads(raw)) != stored:
                requests[order_entry] = _dumps(
                    {**stored, "indexed_at": env.occurred_at.isoformat()}
                )
                remember(b"o", order_id, order_entry)
        if payload.get("change") == "retraction" or payload.get("status") not in DECIDED_STATUSES:
            if orders.pop(order_id, None) is not None:
                decided[key] = _dumps(orders)
            return
        order = Order.model_validate(payload)
        decision = decide_now(order, patient_priors(key, event.message.partition))
        previous = orders.get(order_id)
        cause = None
        if moved_from and moved_from != payload.get("master_patient_id"):
            cause = "order-moved"
        elif previous is not None or payload.get("change") == "update":
            cause = "order-updated"
        kept = await publish(
            event,
            key,
            decision,
            trace_id=env.trace_id,
            received_at=env.received_at if cause is None else None,
            previous=previous,
            cause=cause,
            order_id=order_id,
        )
        orders[order_id] = {**kept, "order": payload}
        decided[key] = _dumps(keep_recent(orders, clock()))

    in_force: dict[str, tuple[str, ...]] = {}

    async def catalogue_watch() -> None:
        """When the set of catalogue versions in force changes (a new version's first day,
        or a worker starting with new files), ask each partition this worker holds to
        re-check its kept decisions: one message per partition on the internal topic, so
        the check runs in order with everything else that partition does."""
        versions = tuple(sorted(c.version for c in catalogs.in_force(clock())))
        producer = web_ctx.producer
        if versions == in_force.get("seen") or producer is None or app.rebalancing:
            return
        name = forget_topic.get_topic_name()
        mine = sorted(tp.partition for tp in app.assignor.assigned_actives() if tp.topic == name)
        if not mine:
            return
        for partition in mine:
            await producer.send_and_wait(
                name, _dumps({"kind": "catalogue-check"}), key=b"catalogue", partition=partition
            )
        in_force["seen"] = versions

    timer: Any = app.timer  # faust's decorator is untyped
    timer(interval=CATALOGUE_WATCH_S)(catalogue_watch)
    stages.agent(results_topic, "results", on_result)
    stages.agent(forget_topic, "forget", on_forget)
    stages.agent(orders_topic, "orders", on_order)
    add_service_pages(app, metrics.registry)
    web.install(web_ctx)
    reads.install(web_ctx, reads.Store(items_of=items_of, find=find))
    cds.install(web_ctx)

    return app
