"""The recognition worker: a decision for every order, from the patient's known results.

Both inputs are keyed by master patient id and share one partitioning, so one worker owns a
patient's results and decides that patient's orders:

- ``results`` reads ``mrhub.results.result-indexed.v1`` and keeps, per master patient id, the
  latest version of each result (``results`` table). A retraction removes it; a result that
  moved to another master (merge, unmerge, relink) is forgotten under the old one (an
  internal ``forget`` message to the old master's owner) and kept under the new one.
- ``orders`` reads ``mrhub.results.order-placed.v1``: each new or updated active order is
  decided with :func:`services.recognition.decision.decide` against the patient's results,
  the institution registry and the catalogue in force for the ordering institution's
  region, and the decision is published on ``mrhub.recognition.decision-made.v1`` (keyed by
  master patient id), with its FHIR ``DetectedIssue`` form.

The app runs ``exactly_once`` like the patient index: outputs, table changes and the input
offset commit together. A message that cannot be processed goes to
``mrhub.recognition.dead-letter.v1`` with its bytes and the error; the stream goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

import faust
from prometheus_client import Counter

from services.common.envelope import Envelope, utcnow
from services.common.faust_app import make_app
from services.common.institutions import Registry
from services.common.metrics import build_info, new_registry
from services.common.settings import Settings
from services.common.stages import Stages, add_service_pages
from services.common.stages import dumps as _dumps
from services.common.stages import loads as _loads
from services.common.topics import DECISION_MADE, ORDER_PLACED, RESULT_INDEXED, dead_letter
from services.recognition.catalog import CatalogSet, load_catalogs
from services.recognition.decision import Order, PriorResult, decide, to_detected_issue

log = logging.getLogger(__name__)

SERVICE = "recognition"
DEAD_LETTER = dead_letter(SERVICE)
#: Order statuses that ask for a decision (a revoked or completed order does not).
DECIDED_STATUSES = frozenset({"active", "draft", "on-hold"})


class Metrics:
    def __init__(self) -> None:
        self.registry = new_registry()
        build_info(self.registry, SERVICE)
        self.decisions = Counter(
            "mrhub_recognition_decisions_total",
            "Decisions published, by outcome, reason code and category.",
            ["outcome", "reason", "category"],
            registry=self.registry,
        )
        self.savings = Counter(
            "mrhub_recognition_savings_yuan_total",
            "Estimated yuan saved: the catalogue price of each order decided recognisable.",
            ["category"],
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


def apply_result(known: dict[str, Any], payload: dict[str, Any]) -> bool:
    """Fold one result-indexed payload into a patient's known results (record id → payload).
    Returns whether anything changed."""
    rid = payload["record_id"]
    if payload.get("change") == "retraction" or payload.get("retracted"):
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
    registry = Registry.load(settings.recognition.institutions_path)

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

    stages = Stages(app, SERVICE, dlq, lambda stage: metrics.dead_letters.labels(stage).inc())
    emit = stages.emit

    def patient_results(key: bytes) -> dict[str, Any]:
        raw = known.get(key)
        return dict(_loads(raw)) if raw else {}

    async def on_result(event: Any, key: bytes | None, value: bytes) -> None:
        if key is None:
            raise ValueError("result without a master patient id key")
        payload = Envelope.from_bytes(value).payload
        mine = patient_results(key)
        if apply_result(mine, payload):
            known[key] = _dumps(mine)
            metrics.results.labels(str(payload.get("change", "new"))).inc()
        previous = payload.get("previous_master_patient_id")
        if previous and previous != payload["master_patient_id"]:
            await emit(event, forget_topic, str(previous).encode(), _dumps(payload["record_id"]))

    async def on_forget(event: Any, key: bytes | None, value: bytes) -> None:
        if key is None:
            raise ValueError("forget without a master patient id key")
        mine = patient_results(key)
        if mine.pop(_loads(value), None) is not None:
            known[key] = _dumps(mine)
            metrics.results.labels("moved-away").inc()

    async def on_order(event: Any, key: bytes | None, value: bytes) -> None:
        if key is None:
            raise ValueError("order without a master patient id key")
        env = Envelope.from_bytes(value)
        payload = env.payload
        if payload.get("change") == "retraction" or payload.get("status") not in DECIDED_STATUSES:
            return
        order = Order.model_validate(payload)
        now = clock()
        orderer = registry.get(order.institution)
        if orderer is None:
            raise ValueError("the ordering institution is not in the registry")
        catalog = catalogs.catalog_for(orderer.region_code, now)
        if catalog is None:
            raise ValueError("no catalogue is in force for the ordering institution's region")
        priors = [PriorResult.model_validate(p) for p in patient_results(key).values()]
        decision = decide(order, priors, registry, catalog, now)
        body = decision.model_dump(mode="json")
        # yuan as JSON numbers with their digits (the envelope writes Decimals as numbers)
        body["price_yuan"] = decision.price_yuan
        body["estimated_saving_yuan"] = decision.estimated_saving_yuan
        body["detected_issue"] = to_detected_issue(decision)
        out = Envelope(
            event_type=DECISION_MADE.name.rsplit(".", 1)[0],
            source=order.institution,
            trace_id=env.trace_id,
            received_at=env.received_at,
            payload=body,
        )
        category = decision.item_category or order.category
        metrics.decisions.labels(decision.outcome, decision.reason, category).inc()
        if decision.recognisable and decision.estimated_saving_yuan:
            metrics.savings.labels(category).inc(float(decision.estimated_saving_yuan))
        await emit(event, decisions_topic, key, out.to_bytes(), out.headers())

    stages.agent(results_topic, "results", on_result)
    stages.agent(forget_topic, "forget", on_forget)
    stages.agent(orders_topic, "orders", on_order)
    add_service_pages(app, metrics.registry)

    return app
