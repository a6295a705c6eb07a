"""The imaging index as a faust app: studies by Study Instance UID and by patient.

Three stages, each key owned by one partition's worker:

1. ``records`` reads ``mrhub.results.result-indexed.v1`` (keyed by master patient id) and
   forwards every imaging ImagingStudy / DiagnosticReport with a Study Instance UID to the
   owner of the study (internal topic ``…-by-study``, keyed by
   :func:`~services.imaging_index.studies.study_key`, a hash of the UID).
2. ``studies`` owns the ``studies`` table (study key → :class:`Study`): it folds each record
   (and each endpoint check result) in with :func:`apply_record` / :func:`apply_check`,
   publishes the change on ``mrhub.imaging.study-indexed.v1`` (keyed by master patient id),
   and sends the study to its patient's owner (internal topic ``…-by-patient``): *put* under
   the master it belongs to, *drop* under the one it left.
3. ``patients`` owns the ``patients`` table: one entry per study of a patient, key
   ``<master patient id>|<study key>``, value that patient's view of the study. faust writes
   a table change to the changelog partition of the event being processed (here the
   ``…-by-patient`` message, keyed by master id), so a patient's entries all live in that
   master's partition, and the HTTP routes (:mod:`services.imaging_index.views`) read them
   with a prefix scan of it (:func:`services.common.faust_fixes.scan_prefix`). No value
   grows with a patient's imaging history. A value of the old layout (master id → every
   study), restored from an older changelog, is still read, and is split into entries at
   that patient's next event.

The app runs ``exactly_once``: each stage's sends, table changes and input offset commit in
one transaction (``Stages.emit`` sends in the source partition's transaction). A message a
stage cannot process goes to ``mrhub.imaging_index.dead-letter.v1``; the stream goes on.

With ``MRHUB_IMAGING__CHECK_ENDPOINTS=true`` a background service asks each new endpoint
over QIDO-RS whether it holds the study (with a timeout) and writes the answer to the
``…-by-study`` topic, where stage 2 records it: the check never holds up indexing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import faust
import httpx
from mode import Service

from services.common.codec import dumps as _dumps
from services.common.codec import loads as _loads
from services.common.envelope import Envelope, utcnow
from services.common.faust_app import make_app
from services.common.institutions import ReloadingRegistry
from services.common.patient_lookup import PatientLookup
from services.common.settings import Settings
from services.common.stages import Stages, add_service_pages
from services.common.topics import RESULT_INDEXED, STUDY_INDEXED, dead_letter
from services.imaging_index import views
from services.imaging_index.metrics import SERVICE, Metrics
from services.imaging_index.studies import (
    Applied,
    CheckStatus,
    Study,
    apply_check,
    apply_record,
    endpoints_of,
    modality_label,
    patient_entry,
    study_key,
    study_uid_of,
    summary,
)

log = logging.getLogger(__name__)

DEAD_LETTER = dead_letter(SERVICE)
EVENT_TYPE = STUDY_INDEXED.event_type
#: Endpoint checks waiting at most (more are dropped and counted: checks are best effort).
CHECK_QUEUE = 1000


def create_app(
    settings: Settings,
    *,
    web_port: int | None = None,
    clock: Callable[[], datetime] = utcnow,
) -> faust.App:
    img = settings.imaging
    port = img.port if web_port is None else web_port
    app = make_app(SERVICE, settings, web_port=port, web_host=img.host)
    metrics = Metrics()
    registry = ReloadingRegistry(settings.institutions_path)
    partitions = settings.topic_partitions

    def registry_base(institution: str) -> str | None:
        inst = registry.get(institution)
        return inst.dicomweb_base if inst is not None else None

    def internal(stage: str) -> Any:
        return app.topic(
            f"{app.conf.id}-{stage}",
            partitions=partitions,
            internal=True,
            key_type=bytes,
            value_type=bytes,
        )

    results = app.topic(RESULT_INDEXED.name, key_type=bytes, value_type=bytes)
    by_study = internal("by-study")
    by_patient = internal("by-patient")
    indexed = app.topic(STUDY_INDEXED.name, key_type=bytes, value_type=bytes)
    dlq = app.topic(DEAD_LETTER.name, key_type=bytes, value_type=bytes)
    studies = app.Table("studies", partitions=partitions, key_type=bytes, value_type=bytes)
    # one entry per study of a patient (``<master>|<study key>``, see ``on_patient``); the
    # 8 MiB limit is for values of the old layout (master → every study) still in the
    # changelog until each such patient's next event splits it
    patients = app.Table(
        "patients",
        partitions=partitions,
        key_type=bytes,
        value_type=bytes,
        extra_topic_configs={"max.message.bytes": str(8 * 1024 * 1024)},
    )

    stages = Stages(app, SERVICE, dlq, lambda stage: metrics.dead_letters.labels(stage).inc())
    emit = stages.emit
    outbox = views.Outbox(settings)
    checks: asyncio.Queue[tuple[bytes, str, str]] | None = None
    queued: set[tuple[bytes, str]] = set()

    # ------------------------------------------------------------------ 1. records

    async def on_result(event: Any, _key: bytes | None, value: bytes) -> None:
        doc = _loads(value)
        payload = Envelope.model_validate(doc).payload
        uid = study_uid_of(payload)
        if uid is None:
            return  # lab, ECG, an order…: not the imaging index's
        message = _dumps({"type": "record", "envelope": doc})
        await emit(event, by_study, study_key(uid).encode(), message)

    # ------------------------------------------------------------------ 2. studies

    async def on_study(event: Any, key: bytes | None, value: bytes) -> None:
        if key is None:
            raise ValueError("a study message without its study key")
        msg = _loads(value)
        raw = studies.get(key)
        current = Study.model_validate_json(raw) if raw else None
        if msg.get("type") == "check":
            if current is None:
                return
            status: CheckStatus = msg["status"]
            applied = apply_check(current, msg["url"], status, datetime.fromisoformat(msg["at"]))
            source = next(iter(current.sources), msg.get("institution") or "")
            trace_id, received_at = None, None
            metrics.checks.labels(status).inc()
        else:
            env = Envelope.model_validate(msg["envelope"])
            payload = env.payload
            applied = apply_record(current, payload, env.occurred_at)
            source, trace_id, received_at = env.source, env.trace_id, env.received_at
            _count_record(payload, applied, received_at)
        if applied.stale:
            return
        if applied.stored:
            studies[key] = applied.study.model_dump_json().encode()
        study = applied.study
        for proj in applied.puts:
            if proj.master_patient_id is None:  # a projection always names its master
                continue
            body = {"op": "put", "study": proj.model_dump(mode="json")}
            await emit(event, by_patient, proj.master_patient_id.encode(), _dumps(body))
        for dropped in applied.drops:
            body = {"op": "drop", "study_key": study.key}
            await emit(event, by_patient, dropped.encode(), _dumps(body))
        for published in applied.events:
            doc = {"change": published.change, **summary(published.study, registry_base)}
            if published.previous_master_patient_id:
                doc["previous_master_patient_id"] = published.previous_master_patient_id
            out = Envelope(
                event_type=EVENT_TYPE, source=source, received_at=received_at, payload=doc
            )
            if trace_id:
                out = out.model_copy(update={"trace_id": trace_id})
            await emit(event, indexed, published.master.encode(), out.to_bytes(), out.headers())
        if img.check_endpoints and any(e.change in ("new", "update") for e in applied.events):
            _queue_checks(key, study)

    def _count_record(payload: dict[str, Any], applied: Applied, received: Any) -> None:
        if applied.stale:
            metrics.records.labels("stale").inc()
            return
        if applied.refused:  # a retraction of a record that is not the poster's
            metrics.records.labels("refused").inc()
            log.warning(
                "imaging retraction refused: not the poster's record",
                extra={
                    "institution": str(payload["institution"]),
                    "record_id": str(payload["record_id"]),
                    "study_key": applied.study.key,
                },
            )
            return
        if applied.conflict:  # neither copy moves the other; each stays with its patient
            metrics.records.labels("patient-conflict").inc()
            log.warning(
                "imaging sources disagree on the patient",
                extra={
                    "institution": str(payload["institution"]),
                    "record_id": str(payload["record_id"]),
                    "study_key": applied.study.key,
                    "other_institutions": sorted(
                        i for i in applied.study.sources if i != payload["institution"]
                    ),
                },
            )
        if payload["resource_type"] == "DiagnosticReport":
            metrics.records.labels("report").inc()
            return
        if applied.change is None and not applied.merged:
            metrics.records.labels("unchanged").inc()
            return
        metrics.records.labels(str(payload.get("change") or "new")).inc()
        if payload.get("change") == "retraction":
            return
        for modality in (payload.get("imaging") or {}).get("modalities") or ["other"]:
            metrics.studies_indexed.labels(
                modality_label(str(modality)), str(payload["institution"])
            ).inc()
        if applied.merged:
            metrics.duplicates_merged.inc()
        if received is not None:
            metrics.index_lag.observe(max(0.0, (clock() - received).total_seconds()))

    def _queue_checks(key: bytes, study: Study) -> None:
        if checks is None:
            return
        for ep in endpoints_of(study, list(study.sources.values()), registry_base):
            if ep.status != "unchecked" or (key, ep.url) in queued:
                continue
            try:
                checks.put_nowait((key, study.study_uid, ep.url))
            except asyncio.QueueFull:
                metrics.checks.labels("dropped").inc()
                continue
            queued.add((key, ep.url))

    # ------------------------------------------------------------------ 3. patients

    def migrate_legacy(master: bytes) -> None:
        """Split a value of the old layout (master id → every study of the patient) into one
        entry per study, inside the current event's transaction. An entry already written in
        the new layout is newer and stays."""
        raw = patients.get(master)
        if not raw:
            return
        for key, doc in dict(_loads(raw)).items():
            entry = patient_entry(master.decode(), str(key))
            if patients.get(entry) is None:
                patients[entry] = _dumps(doc)
        del patients[master]

    async def on_patient(event: Any, key: bytes | None, value: bytes) -> None:
        if key is None:
            raise ValueError("a patient message without a master patient id")
        msg = _loads(value)
        migrate_legacy(key)
        if msg["op"] == "put":
            study = Study.model_validate(msg["study"])
            patients[patient_entry(key.decode(), study.key)] = _dumps(msg["study"])
            return
        entry = patient_entry(key.decode(), str(msg["study_key"]))
        if patients.get(entry) is not None:
            del patients[entry]

    stages.agent(results, "records", on_result)
    stages.agent(by_study, "studies", on_study)
    stages.agent(by_patient, "patients", on_patient)

    # ------------------------------------------------------------------ services

    class OutboxService(Service):
        """The acks=all producer for audit records and endpoint checks."""

        async def on_start(self) -> None:
            await outbox.start()

        async def on_stop(self) -> None:
            await outbox.stop()

    app.service(OutboxService)

    lookup_holder: dict[str, PatientLookup] = {}

    class LookupService(Service):
        """The patient index client (resolves identifiers to master ids)."""

        async def on_start(self) -> None:
            if settings.identity.hmac_key is not None:
                lookup_holder["lookup"] = PatientLookup(settings)

        async def on_stop(self) -> None:
            lookup = lookup_holder.pop("lookup", None)
            if lookup is not None:
                await lookup.aclose()

    app.service(LookupService)

    if img.check_endpoints:

        class EndpointChecker(Service):
            """Asks each endpoint (QIDO-RS) whether it holds the study; never blocks."""

            async def on_start(self) -> None:
                nonlocal checks
                checks = asyncio.Queue(maxsize=CHECK_QUEUE)
                self.http = httpx.AsyncClient(
                    timeout=img.check_timeout_s, headers={"Accept": "application/dicom+json"}
                )

            async def on_stop(self) -> None:
                await self.http.aclose()

            @Service.task
            async def _run(self) -> None:
                while not self.should_stop:
                    if checks is None:
                        await self.sleep(0.5)
                        continue
                    key, uid, url = await checks.get()
                    status = await check_endpoint(self.http, url, uid)
                    queued.discard((key, url))
                    message = {
                        "type": "check",
                        "url": url,
                        "status": status,
                        "at": datetime.now(UTC).isoformat(),
                    }
                    try:
                        await outbox.send(by_study.get_topic_name(), key, _dumps(message))
                    except Exception as exc:  # the check is lost; the index is not
                        log.warning(
                            "endpoint check not recorded", extra={"error": type(exc).__name__}
                        )

        app.service(EndpointChecker)

    views.install(
        views.Context(
            app=app,
            settings=settings,
            registry=registry,
            patients=patients,
            metrics=metrics,
            outbox=outbox,
            lookup=lambda: lookup_holder.get("lookup"),
            registry_base=registry_base,
        )
    )
    add_service_pages(app, metrics.registry)
    return app


async def check_endpoint(http: httpx.AsyncClient, base: str, study_uid: str) -> CheckStatus:
    """``available`` when the endpoint's QIDO-RS lists the study, ``missing`` when it
    answers without it, ``unreachable`` when it does not answer well (error, timeout)."""
    try:
        answer = await http.get(f"{base}/studies", params={"StudyInstanceUID": study_uid})
    except httpx.HTTPError:
        return "unreachable"
    if answer.status_code == 204:
        return "missing"
    if answer.status_code != 200:
        return "unreachable"
    try:
        found = answer.json()
    except ValueError:
        return "unreachable"
    return "available" if isinstance(found, list) and found else "missing"
