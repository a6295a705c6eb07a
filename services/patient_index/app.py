"""The patient index as a faust app: five stages, each key owned by one partition's worker.

1. ``route`` reads ``mrhub.ingest.resource-accepted.v1``, works out whose record it is, and
   forwards it to the owner of its strongest identifier (internal topic, keyed by the
   identifier's keyed hash) — or, when the gateway put it on that owner's partition,
   resolves it in place (``resolve_record``).
2. ``resolve`` owns the ``identities`` table (identifier hash → master id): it resolves the
   record's master id, claims each weaker identifier for it at that identifier's owner —
   once per master: the anchor's state remembers what it claimed, so a known patient's
   record makes no claim round trip —, applies claims and stewards' link / unlink, publishes
   identity events
   on ``mrhub.patient.identity-linked.v1``, sends Patients to their block and results and
   orders to their master's owner — or stamps them in place when this worker owns the
   master too (a master minted on its anchor's partition, ``identity.master_id_for``; see
   ``owns_master``).
3. ``match`` owns the ``blocks``, ``deciders`` and ``reviews`` tables: probabilistic linking
   as a scatter–gather on ``by-block`` (see :mod:`services.patient_index.blocks`).
   ``resolve`` sends a Patient's person as a *probe* to each of its block keys (keyed
   hashes of birth date, phone, name + birth year) with a gather id from its input's
   position (a redelivery repeats it); each block owner replies with its best candidates
   (review band or above, at most 10; none from a new block, so the count completes) to the
   identity's *decider* key, then keeps the person's view (up to 4 distinct views per
   identity, 500 identities per block). The decider gathers the ``n`` replies in
   ``deciders`` (deduplicated by gather id and key index, bounded), runs the matcher over
   their union minus the masters a steward rejected for the identity, and claims (then
   ``relabel``s the identity in its blocks), queues a review (``reviews``, keyed by the
   decider: review ids ``<decider>.<master>``), or does nothing. Stewards' confirm / reject
   of a review arrive at the decider key.
4. ``master`` owns the ``masters`` table (master id → merges, history: a bounded value) and
   the ``master_records`` table (one entry per record of the master's own identities,
   ``<master id>|<record id>`` → the anchor's keyed hash; a master's entries are in its
   partition and read with a prefix scan, see
   :func:`services.common.faust_fixes.scan_prefix`): it stamps each record with the
   surviving master id, applies merges and unmerges and re-publishes the records they move
   (see :mod:`services.patient_index.stewardship`). Nothing that grows with a patient's
   history is rewritten whole, so no value can outgrow Kafka's message size.
5. ``index`` owns the ``seen`` table (record id → dedup state and the record last
   published, one value so one changelog message per record; ``published`` is the table
   that held the record before, read for keys written then, never written): it
   drops repeats and stale versions and publishes new records, updates and retractions on
   ``mrhub.results.result-indexed.v1`` / ``mrhub.results.order-placed.v1``. Every record is
   its poster's own (business keys start with the institution), so no post changes another
   institution's record.
6. ``owners`` owns the ``study_owners`` table (keyed hash of a Study Instance UID → the
   institutions holding live records of it): a withdrawal of a study (or its report) the
   poster never sent while another institution holds it is an attempt on another's record —
   nothing was applied, and it is refused on the record: an audit event
   (``mrhub.audit.write-refused`` on ``mrhub.audit.access-recorded.v1``, keyed by the
   institution), ``mrhub_patient_index_records_total{outcome="refused"}`` and a log line
   with ids only.

The app runs ``exactly_once``: a stage's outputs, its table changes and its input offset
commit in one Kafka transaction, so a crash or redelivery never publishes twice nor loses a
record. A message a stage cannot process goes to ``mrhub.patient_index.dead-letter.v1`` with
its original bytes and the error; the stream goes on.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any

import faust
import msgspec
from faust.types import TP
from prometheus_client import Counter, Gauge

from services.common.codec import dumps as _dumps
from services.common.codec import loads as _loads
from services.common.envelope import Envelope, utcnow
from services.common.faust_app import make_app
from services.common.faust_fixes import scan_prefix, transactional_id
from services.common.identifiers import keyed_hash
from services.common.institutions import hash_token
from services.common.metrics import build_info, new_registry
from services.common.partitioner import partition_for
from services.common.patient_lookup import internal_token
from services.common.settings import Settings
from services.common.stages import Stages, add_service_pages
from services.common.topics import (
    ACCESS_RECORDED,
    IDENTITY_LINKED,
    ORDER_PLACED,
    RESOURCE_ACCEPTED,
    RESULT_INDEXED,
    WRITE_REFUSED,
    dead_letter,
)
from services.patient_index import blocks as blocks_mod
from services.patient_index import dedup, matching, stewardship
from services.patient_index import web as steward_api
from services.patient_index.canonical import (
    CanonicalRecord,
    build_record,
    record_json,
    to_event_payload,
)
from services.patient_index.dedup import Seen
from services.patient_index.identity import (
    MATCH_BELOW_RANK,
    PROBABILISTIC_RANK,
    IdentityState,
    Keyed,
    LinkEvent,
    apply_claim,
    claims_to_send,
    resolve_anchor,
)
from services.patient_index.normalize import (
    Ident,
    person_from_json,
    person_to_json,
)
from services.patient_index.routing import route_of

log = logging.getLogger(__name__)

SERVICE = "patient_index"
DEAD_LETTER = dead_letter(SERVICE)
#: Identities a block keeps as candidates (see :mod:`services.patient_index.blocks`).
BLOCK_LIMIT = blocks_mod.BLOCK_LIMIT
#: Identities ``GET /patients/{id}`` lists at most (``identities_total`` counts them all).
IDENTITIES_SHOWN = 50
#: Master states a worker keeps parsed (the memo is emptied when it is full).
PARSED_MASTERS = 4096


def record_entry(master: bytes, record_id: str) -> bytes:
    """The ``master_records`` key of one record of ``master``: ``<master>|<record id>``."""
    return master + b"|" + record_id.encode()


def records_prefix(master: bytes) -> bytes:
    """The prefix of every ``master_records`` key of ``master`` (a master id never holds
    ``|``)."""
    return master + b"|"


class Metrics:
    def __init__(self) -> None:
        self.registry = new_registry()
        build_info(self.registry, SERVICE)
        self.records = Counter(
            "mrhub_patient_index_records_total",
            "Canonical records by kind (result, order) and outcome "
            "(new, duplicate, update, retraction, stale; refused: a withdrawal of a study "
            "only other institutions hold, also counted as stale).",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self.decisions = Counter(
            "mrhub_patient_index_link_decisions_total",
            "Identity decisions by kind: deterministic (a known identifier), new, and for "
            "identities no verified identifier links, auto, review or new from the matcher.",
            ["kind"],
            registry=self.registry,
        )
        self.link_events = Counter(
            "mrhub_patient_index_link_events_total",
            "identity-linked events published, by kind (new, alias, relinked, conflict).",
            ["kind"],
            registry=self.registry,
        )
        self.skipped = Counter(
            "mrhub_patient_index_skipped_total",
            "Accepted resources that carry no record for the index, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.dead_letters = Counter(
            "mrhub_patient_index_dead_letters_total",
            "Messages sent to the dead-letter topic, by stage.",
            ["stage"],
            registry=self.registry,
        )
        self.review_queue = Gauge(
            "mrhub_patient_index_review_queue_size",
            "Possible matches waiting for a data steward, in the partitions this worker owns.",
            registry=self.registry,
        )
        self.pending_gathers = Gauge(
            "mrhub_patient_index_pending_gathers",
            "Matches waiting for the replies of their blocks, in the partitions this worker "
            "owns (a figure that stays up means a block owner is not answering).",
            registry=self.registry,
        )
        self.gathers = Counter(
            "mrhub_patient_index_gathers_total",
            "Block replies taken by a decider, by outcome: pending (more to come), complete "
            "(the match was decided), duplicate (a redelivered reply, ignored), dropped "
            "(a gather pushed out by newer ones of the same identity, undecided).",
            ["outcome"],
            registry=self.registry,
        )
        self.routed = Counter(
            "mrhub_patient_index_routed_total",
            "Accepted resources by route: in-place (the gateway put the resource on the "
            "partition of the worker that owns its patient's strongest identifier, which "
            "resolved it at once) or forwarded (through the by-identity topic to that owner: "
            "a topic of another partition count, a message from before, a rebalance).",
            ["path"],
            registry=self.registry,
        )
        self.master_steps = Counter(
            "mrhub_patient_index_master_steps_total",
            "Records stamped by their master's owner, by path: in-place (the worker that "
            "resolved the record owns its master too — a master minted on its anchor's "
            "partition — and stamps it in the same transaction) or forwarded (through the "
            "by-master topic: a master minted before, or on another partition).",
            ["path"],
            registry=self.registry,
        )
        self.probes = Counter(
            "mrhub_patient_index_block_probes_total",
            "Persons sent to a block, by block key kind (birth_date, phone, name_year).",
            ["kind"],
            registry=self.registry,
        )


def create_app(settings: Settings, *, web_port: int | None = None) -> faust.App:
    if settings.identity.hmac_key is None:
        raise ValueError("MRHUB_IDENTITY__HMAC_KEY must be set")
    hmac_key = settings.identity.hmac_key.get_secret_value().encode()
    port = settings.patient_index.port if web_port is None else web_port
    app = make_app(SERVICE, settings, web_port=port, web_host=settings.patient_index.host)
    metrics = Metrics()
    partitions = settings.topic_partitions

    accepted = app.topic(RESOURCE_ACCEPTED.name, key_type=bytes, value_type=bytes)

    def internal(stage: str) -> Any:
        """A repartition topic of this app: keyed by what its stage's owner owns."""
        return app.topic(
            f"{app.conf.id}-{stage}",
            partitions=partitions,
            internal=True,
            key_type=bytes,
            value_type=bytes,
        )

    by_identity = internal("by-identity")
    by_record = internal("by-record")
    by_block = internal("by-block")
    by_master = internal("by-master")
    by_study = internal("by-study")
    audit = app.topic(ACCESS_RECORDED.name, key_type=bytes, value_type=bytes)
    linked = app.topic(IDENTITY_LINKED.name, key_type=bytes, value_type=bytes)
    results = app.topic(RESULT_INDEXED.name, key_type=bytes, value_type=bytes)
    orders = app.topic(ORDER_PLACED.name, key_type=bytes, value_type=bytes)
    dlq = app.topic(DEAD_LETTER.name, key_type=bytes, value_type=bytes)
    identities = app.Table("identities", partitions=partitions, key_type=bytes, value_type=bytes)
    seen = app.Table("seen", partitions=partitions, key_type=bytes, value_type=bytes)
    blocks = app.Table("blocks", partitions=partitions, key_type=bytes, value_type=bytes)
    reviews = app.Table("reviews", partitions=partitions, key_type=bytes, value_type=bytes)
    # decider key (keyed hash of an anchor) → the gathers it waits on, the ids it finished,
    # the masters a steward rejected for the identity (bounded; services/patient_index/blocks)
    deciders = app.Table("deciders", partitions=partitions, key_type=bytes, value_type=bytes)
    # master id → what it is merged into, its root, children, history (bounded)
    masters = app.Table("masters", partitions=partitions, key_type=bytes, value_type=bytes)
    # <master id>|<record id> → the anchor's keyed hash: one entry per record of a master,
    # written in the partition of the master's by-master messages
    master_records = app.Table(
        "master_records", partitions=partitions, key_type=bytes, value_type=bytes
    )
    # the last record published per record id (what a merge or unmerge re-publishes), as
    # kept before it moved into the ``seen`` value: read, never written
    published = app.Table("published", partitions=partitions, key_type=bytes, value_type=bytes)
    # keyed hash of a Study Instance UID → which institutions hold live records of it
    study_owners = app.Table(
        "study_owners", partitions=partitions, key_type=bytes, value_type=bytes
    )
    rules = matching.load_rules(settings.patient_index.rules_path)

    def pending_reviews() -> int:
        try:
            return sum(len(_loads(v)) for v in reviews.values())
        except Exception:  # a scrape during a rebalance: no figure rather than an error
            return 0

    metrics.review_queue.set_function(pending_reviews)

    def pending_gathers() -> int:
        try:
            return sum(len(_loads(v).get("gathers", {})) for v in deciders.values())
        except Exception:  # a scrape during a rebalance: no figure rather than an error
            return 0

    metrics.pending_gathers.set_function(pending_gathers)

    stages = Stages(app, SERVICE, dlq, lambda stage: metrics.dead_letters.labels(stage).inc())
    # the counters every resource moves, bound to their labels once
    routed_in_place = metrics.routed.labels("in-place")
    routed_forwarded = metrics.routed.labels("forwarded")
    master_in_place = metrics.master_steps.labels("in-place")
    master_forwarded = metrics.master_steps.labels("forwarded")
    emit = stages.emit

    def hash_ident(ident: Ident) -> str:
        return keyed_hash(hmac_key, *ident.key())

    def block_key(birth_date: str) -> str:
        return keyed_hash(hmac_key, "block:birth_date", birth_date)

    # ------------------------------------------------------------------ 1. route

    by_identity_name = by_identity.get_topic_name()
    by_master_name = by_master.get_topic_name()
    # the partitions of by-identity and by-master this worker reads, as of its last
    # rebalance (empty while one is under way: faust processes no event then)
    identity_partitions: set[int] = set()
    master_partitions: set[int] = set()
    # how many partitions each of the two topics has: what Kafka partitions their keys by,
    # which need not be MRHUB_TOPIC_PARTITIONS (topics created before with another count)
    counts: dict[str, int] = {}
    # per source topic: whether its transaction on a partition is by-master's on that
    # partition (faust's partition groups; worked out again after every rebalance)
    one_transaction: dict[str, bool] = {}

    def count_of(topic: str) -> int:
        return counts.get(topic) or partitions

    async def on_assigned(_sender: Any, /, *args: Any, signal: Any, **_kw: Any) -> None:
        assigned: set[TP] = args[0]  # faust sends the whole assignment
        identity_partitions.clear()
        identity_partitions.update(tp.partition for tp in assigned if tp.topic == by_identity_name)
        master_partitions.clear()
        master_partitions.update(tp.partition for tp in assigned if tp.topic == by_master_name)
        one_transaction.clear()
        for topic in (by_identity_name, by_master_name):
            # the counts the group's assignment was made with (faust's consumer API)
            counts[topic] = app.consumer.topic_partitions(topic) or partitions

    async def on_revoked(_sender: Any, /, *_args: Any, signal: Any, **_kw: Any) -> None:
        identity_partitions.clear()
        master_partitions.clear()
        one_transaction.clear()

    app.on_partitions_assigned.connect(on_assigned)
    app.on_partitions_revoked.connect(on_revoked)

    def owns_identity(event: Any, key: bytes) -> bool:
        """Whether this worker reads ``key``'s partition of ``by-identity`` (so owns its
        ``identities`` entry) and the current event came in on that same partition number,
        whose changelog partitions its table writes go to: then forwarding the record
        there would only bring it back here."""
        part = int(event.message.partition)
        return (
            part in identity_partitions and partition_for(key, count_of(by_identity_name)) == part
        )

    def owns_master(event: Any, key: bytes) -> bool:
        """Whether the master ``key`` can be stamped right here (:func:`master_step`): this
        worker reads ``key``'s partition of ``by-master``, the current event came in on that
        same partition number (its table writes go to the master's changelog partitions), and
        its transaction is the one the ``master`` stage of that partition commits with — one
        producer, so the two stages' outputs reach Kafka in the order they were sent (faust
        gives topics of one partition count one transaction per partition number)."""
        msg = event.message
        part = int(msg.partition)
        if part not in master_partitions or partition_for(key, count_of(by_master_name)) != part:
            return False
        same = one_transaction.get(msg.topic)
        if same is None:  # once per topic and assignment
            same = stages.source_transaction(event) == transactional_id(app, by_master_name, part)
            one_transaction[msg.topic] = same
        return same

    # one per partition number: a master's step for a record stamped in place, and each
    # change of a master's state by the master stage, never interleave (a step that waits
    # for buffer space in the producer lets the loop run the other)
    master_locks: collections.defaultdict[int, asyncio.Lock] = collections.defaultdict(asyncio.Lock)

    async def route(event: Any, _key: bytes | None, value: bytes) -> None:
        doc = _loads(value)
        env = Envelope.model_validate(doc)  # parsed once: validated here
        found = route_of(env.payload, env.source, hash_ident)
        if found is None:
            metrics.skipped.labels("context-resource").inc()
            return
        anchor = found.anchor
        is_patient = env.payload.get("resource_type") == "Patient"
        anchor_doc = {"key": anchor.key, "rank": anchor.rank, "kind": anchor.kind}
        person = person_to_json(found.person) if is_patient else None
        key = anchor.key.encode()
        if owns_identity(event, key):
            # the gateway put it on its owner's partition (services/patient_index/routing)
            routed_in_place.inc()
            await resolve_record(
                event, key, load_identity(key), anchor_doc, list(found.aliases), person, doc, env
            )
            return
        routed_forwarded.inc()
        await emit(
            event,
            by_identity,
            key,
            _dumps(
                {
                    "type": "record",
                    "anchor": anchor_doc,
                    "aliases": [
                        {"key": a.key, "rank": a.rank, "kind": a.kind} for a in found.aliases
                    ],
                    "person": person,
                    # the bytes received, spliced in: not encoded again
                    "envelope": msgspec.Raw(value),
                }
            ),
        )

    # ---------------------------------------------------------------- 2. resolve

    async def publish_link(event: Any, link: Any, trace_id: str, source: str) -> None:
        metrics.link_events.labels(link.kind).inc()
        env = Envelope(
            event_type=IDENTITY_LINKED.event_type,
            source=source,
            trace_id=trace_id,
            payload=link.payload(),
        )
        await emit(event, linked, link.master_patient_id.encode(), env.to_bytes(), env.headers())

    def load_identity(key: bytes) -> IdentityState | None:
        raw = identities.get(key)
        return IdentityState.model_validate_json(raw) if raw else None

    async def resolve(event: Any, key: bytes | None, value: bytes) -> None:
        msg = _loads(value)
        if key is None:
            raise ValueError("identity message without a key")
        current = load_identity(key)
        if msg["type"] in ("steward-link", "steward-unlink"):
            await steward_identity(event, key, current, msg)
            return
        if msg["type"] == "stray-record":
            # a record that reached the identifier's old master after it left: to its master
            send = stewardship.stray_message(
                current.master_patient_id if current is not None else None, msg
            )
            await emit(event, by_master, send.key.encode(), _dumps(send.body))
            return
        if msg["type"] == "records-released":
            # records the identifier's old master let go: to the master it names now
            send = stewardship.adopt_message(
                current.master_patient_id if current is not None else None, msg
            )
            await emit(event, by_master, send.key.encode(), _dumps(send.body))
            return
        env_doc = msg["envelope"]
        trace_id, source = env_doc.get("trace_id", ""), env_doc.get("source", "")
        if msg["type"] == "claim":
            alias = Keyed(key.decode(), msg["alias_rank"], msg["alias_kind"])
            result = apply_claim(current, msg["master_patient_id"], alias, msg["rank"])
            if result.state is not None:
                identities[key] = result.state.model_dump_json().encode()
            if result.event is not None:
                await publish_link(event, result.event, trace_id, source)
            follow = result.records_follow(key.decode())
            if follow is not None:  # relinked: its records leave the old master too
                old_master, body = follow
                await emit(event, by_master, old_master.encode(), _dumps(body))
            return
        await resolve_record(
            event,
            key,
            current,
            msg["anchor"],
            [Keyed(x["key"], x["rank"], x["kind"]) for x in msg["aliases"]],
            msg.get("person"),
            env_doc,
            None,
        )

    async def resolve_record(
        event: Any,
        key: bytes,
        current: IdentityState | None,
        a: dict[str, Any],
        aliases: list[Keyed],
        person: dict[str, Any] | None,
        env_doc: dict[str, Any],
        env: Envelope | None,
    ) -> None:
        """One accepted resource at the owner of its anchor ``key`` (``a``): its master
        resolved, its weaker identifiers claimed, a Patient probed in its blocks, a result or
        an order sent on to its master. ``env`` is ``env_doc`` validated, when the caller
        has it already."""
        trace_id, source = env_doc.get("trace_id", ""), env_doc.get("source", "")
        res = resolve_anchor(
            current, Keyed(a["key"], a["rank"], a["kind"]), count_of(by_master_name)
        )
        metrics.decisions.labels(res.decision).inc()
        # each weaker identifier is claimed once per master, not once per record
        claims, state = claims_to_send(res.state, aliases)
        if res.changed or state is not res.state:
            identities[key] = state.model_dump_json().encode()
        if res.event is not None:
            await publish_link(event, res.event, trace_id, source)
        for alias in claims:
            await emit(
                event,
                by_identity,
                alias.key.encode(),
                _dumps(
                    {
                        "type": "claim",
                        "master_patient_id": res.master_patient_id,
                        "rank": a["rank"],
                        "alias_rank": alias.rank,
                        "alias_kind": alias.kind,
                        "envelope": {"trace_id": trace_id, "source": source},
                    }
                ),
            )
        if person is not None:
            # match while nothing stronger than a hospital number holds this identity — not
            # only when it is new: the patient's own record may arrive after one of its
            # results created the identity
            await probe_blocks(
                event,
                person,
                a,
                res.master_patient_id,
                match=a["rank"] < MATCH_BELOW_RANK and res.state.rank < PROBABILISTIC_RANK,
                envelope={"trace_id": trace_id, "source": source},
            )
        if env is None:
            env = Envelope.model_validate(env_doc)
        record = build_record(
            env.payload,
            source_institution=env.source,
            master_patient_id=res.master_patient_id,
            event_id=env.event_id,
            received_at=env.received_at,
            trace_id=env.trace_id,
        )
        if record is None:
            metrics.skipped.labels("not-a-result-or-order").inc()
            return
        body = {
            "type": "record",
            "anchor": a["key"],
            "record": record_json(record),
            "source": env.source,
        }
        master_key = res.master_patient_id.encode()
        if owns_master(event, master_key):
            master_in_place.inc()
            async with master_locks[int(event.message.partition)]:
                await master_step(event, master_key, body)
            return
        master_forwarded.inc()
        await emit(event, by_master, master_key, _dumps(body))

    async def steward_identity(
        event: Any, key: bytes, current: IdentityState | None, msg: dict[str, Any]
    ) -> None:
        """A data steward links an identifier to a master, or unlinks it from one."""
        cmd = stewardship.Command.from_json(msg)
        ident_key = key.decode()
        kind = current.kind if current is not None else msg.get("identifier_kind", "other")
        if msg["type"] == "steward-link":
            target = msg["master_patient_id"]
            if current is not None and current.master_patient_id == target:
                if current.rank < stewardship.STEWARD_RANK:
                    identities[key] = (
                        current.model_copy(update={"rank": stewardship.STEWARD_RANK})
                        .model_dump_json()
                        .encode()
                    )
                return
            link = stewardship.StewardEvent(
                "linked",
                target,
                cmd,
                previous_master_patient_id=current.master_patient_id if current else None,
            )
        else:
            if current is None or current.master_patient_id != msg["master_patient_id"]:
                return  # not linked to that master (or unlinked already): nothing to undo
            target = stewardship.unlinked_master_id(ident_key, cmd.command_id)
            link = stewardship.StewardEvent(
                "unlinked", target, cmd, previous_master_patient_id=current.master_patient_id
            )
        identities[key] = (
            IdentityState(master_patient_id=target, rank=stewardship.STEWARD_RANK, kind=kind)
            .model_dump_json()
            .encode()
        )
        await publish_steward(event, link)
        if current is not None:  # the identifier's records follow it
            await emit(
                event,
                by_master,
                current.master_patient_id.encode(),
                _dumps({"type": "move-records", "anchor": ident_key}),
            )

    async def publish_steward(event: Any, link: stewardship.StewardEvent) -> None:
        metrics.link_events.labels(link.kind).inc()
        env = Envelope(
            event_type=IDENTITY_LINKED.event_type,
            source=link.command.actor or "steward",
            payload=link.payload(),
        )
        await emit(event, linked, link.master_patient_id.encode(), env.to_bytes(), env.headers())

    # ---------------------------------------------------------------- 2c. master

    def master_records_of(key: bytes, partition: int | None = None) -> dict[str, str]:
        """record id → anchor key of every record of master ``key``: a prefix scan of the
        partition that holds them (the event's own, or the master's when answering HTTP)."""
        part = partition_for(key, count_of(by_master_name)) if partition is None else partition
        prefix = records_prefix(key)
        return {
            k[len(prefix) :].decode(): v.decode()
            for k, v in scan_prefix(master_records, part, prefix)
        }

    # master id → (its stored value, that value parsed): a visit's records read the same
    # master one after another (MasterState is immutable; a changed value is parsed again)
    parsed_masters: dict[bytes, tuple[bytes, stewardship.MasterState]] = {}

    def load_master(key: bytes) -> tuple[stewardship.MasterState | None, dict[str, str]]:
        raw = masters.get(key)
        if not raw:
            return None, {}
        hit = parsed_masters.get(key)
        if hit is not None and hit[0] == raw:
            return hit[1], {}
        st, legacy = stewardship.MasterState.load(raw)
        if not legacy:
            if len(parsed_masters) >= PARSED_MASTERS:
                parsed_masters.clear()
            parsed_masters[key] = (raw, st)
        return st, legacy

    def migrate_legacy(key: bytes) -> stewardship.MasterState | None:
        """Split a master's value of the old layout (its state listing every record) into
        one entry per record and a state without them, inside the current event's
        transaction; the state as stored now."""
        st, legacy = load_master(key)
        if st is None or not legacy:
            return st
        for rid, anchor in legacy.items():
            entry = record_entry(key, rid)
            if master_records.get(entry) is None:
                master_records[entry] = anchor.encode()
        masters[key] = st.model_dump_json().encode()
        return st

    def master_view(mid: str, count: bool) -> dict[str, Any] | None:
        """``GET /patients/{id}`` at the master's owner: its state and, when ``count``, how
        many records it holds (a prefix scan; a state of the old layout counts the records
        it still lists too)."""
        key = mid.encode()
        st, legacy = load_master(key)
        if st is None:
            return None
        if not count:
            return st.public_view(None)
        records = {**legacy, **master_records_of(key)}
        view = st.public_view(len(records))
        # the identities whose records the master holds (keyed hashes, never a value), the
        # most records first, at most IDENTITIES_SHOWN; the API adds each one's kind and rank
        anchors = collections.Counter(records.values())
        view["identities"] = [
            {"key": a, "records": n} for a, n in anchors.most_common(IDENTITIES_SHOWN)
        ]
        view["identities_total"] = len(anchors)
        return view

    async def master(event: Any, key: bytes | None, value: bytes) -> None:
        """Owner of one master patient id: its records, merges and unmerges."""
        if key is None:
            raise ValueError("master message without a key")
        msg = _loads(value)
        async with master_locks[int(event.message.partition)]:
            await master_step(event, key, msg)

    async def master_step(event: Any, key: bytes, msg: dict[str, Any]) -> None:
        """One message for master ``key``: a record to stamp and remember (from the
        ``master`` stage, or in place from ``resolve_record``), or a merge, unmerge or move.
        The table writes come first, then the sends, all in the event's transaction."""
        mid = key.decode()
        st = migrate_legacy(key)
        kind = msg["type"]
        if kind == "record":
            # published under the root, or sent back if its identifier left (a stray)
            rid = msg["record"]["record_id"]
            known = master_records.get(record_entry(key, rid))
            step = stewardship.add_record(
                st, mid, rid, msg["anchor"], known.decode() if known is not None else None, msg
            )
        else:
            mine = (
                master_records_of(key, event.message.partition)
                if kind in stewardship.NEEDS_RECORDS
                else None
            )
            step = stewardship.apply(st, mid, msg, mine)
        if step.state is not None:
            masters[key] = step.state.model_dump_json().encode()
        for rid, anchor in step.add.items():
            master_records[record_entry(key, rid)] = anchor.encode()
        for rid in step.remove:
            del master_records[record_entry(key, rid)]
        for send in step.sends:
            topic = {"master": by_master, "record": by_record, "identity": by_identity}[send.to]
            await emit(event, topic, send.key.encode(), _dumps(send.body))
        for ev in step.events:
            await publish_steward(event, ev)

    # ------------------------------------------------------------------ 2b. match

    def decider_key(anchor_key: str) -> str:
        """Where the gathers of one identity (its anchor) are decided."""
        return keyed_hash(hmac_key, "decide", anchor_key)

    async def probe_blocks(
        event: Any,
        person_doc: dict[str, Any],
        anchor: dict[str, Any],
        master: str,
        *,
        match: bool,
        envelope: dict[str, Any],
    ) -> None:
        """Send the person to each of its blocks: to be matched there (``match``), and kept
        as a future candidate. The gather's id is the resolve input's position, so a
        redelivered input repeats it."""
        kinds = blocks_mod.stream_block_keys(person_from_json(person_doc))
        if not kinds:
            return
        keys = [keyed_hash(hmac_key, f"block:{kind}", value) for kind, value in kinds]
        m = event.message
        header = blocks_mod.probe_header(
            gather_id=f"{m.topic}:{m.partition}:{m.offset}",
            keys=keys,
            decider=decider_key(anchor["key"]),
            anchor=anchor,
            master=master,
            person=person_doc,
            since=float(m.timestamp or 0.0),
            envelope=envelope,
        )
        for index, ((kind, _), key) in enumerate(zip(kinds, keys, strict=True)):
            metrics.probes.labels(kind).inc()
            await emit(
                event,
                by_block,
                key.encode(),
                _dumps(
                    {
                        "type": "probe",
                        "kind": kind,
                        "index": index,
                        "match": match,
                        "gather": header,
                    }
                ),
            )

    def load_block(key: bytes) -> list[dict[str, Any]]:
        raw = blocks.get(key)
        return list(_loads(raw)) if raw else []

    def load_decider(key: bytes) -> dict[str, Any]:
        raw = deciders.get(key)
        return dict(_loads(raw)) if raw else blocks_mod.new_decider_state()

    async def match(event: Any, key: bytes | None, value: bytes) -> None:
        """Owner of one block key or one identity's decider (both on ``by-block``): a probe
        is answered and the person kept, a reply gathered, a relabel or a steward's review
        decision applied."""
        if key is None:
            raise ValueError("block message without a key")
        msg = _loads(value)
        kind = msg.get("type", "legacy")
        if kind == "review-decision":
            await review_decision(event, key, msg)
        elif kind == "reply":
            await gather(event, key, msg)
        elif kind == "relabel":
            entries = load_block(key)
            if blocks_mod.relabel(entries, msg["anchor"], msg["master_patient_id"]):
                blocks[key] = blocks_mod.encode_block(entries)
        elif kind == "probe":
            await probe(event, key, msg)
        else:  # a message of the one-block layout, written before an upgrade
            m = event.message
            header = blocks_mod.probe_header(
                gather_id=f"{m.topic}:{m.partition}:{m.offset}",
                keys=[key.decode()],
                decider=decider_key(msg["anchor"]["key"]),
                anchor=msg["anchor"],
                master=msg["master_patient_id"],
                person=msg["person"],
                since=float(m.timestamp or 0.0),
                envelope=msg["envelope"],
            )
            await probe(event, key, {"index": 0, "match": msg["match"], "gather": header})

    async def probe(event: Any, key: bytes, msg: dict[str, Any]) -> None:
        """A block owner: reply to the decider with the candidates in this block, then keep
        the person under its identity (a key without a block replies with none)."""
        header = msg["gather"]
        anchor = header["anchor"]
        entries = load_block(key)
        if msg["match"]:
            person = person_from_json(header["person"])
            found = blocks_mod.block_candidates(
                entries, person, anchor["key"], header["master_patient_id"], rules
            )
            reply: dict[str, Any] = {
                "type": "reply",
                "index": msg["index"],
                "gather": header,
                "candidates": found,
                "since": blocks_mod.own_since(entries, anchor["key"]),
            }
            rejected = blocks_mod.legacy_distinct(entries, anchor["key"])
            if rejected:
                reply["distinct"] = rejected
            await emit(event, by_block, header["decider"].encode(), _dumps(reply))
        kept = blocks_mod.upsert(
            entries, anchor, header["master_patient_id"], header["person"], header["since"]
        )
        blocks[key] = blocks_mod.encode_block(kept)

    async def gather(event: Any, key: bytes, msg: dict[str, Any]) -> None:
        """A decider: one block's reply; once every block answered, the decision."""
        step = blocks_mod.add_reply(load_decider(key), msg)
        metrics.gathers.labels(step.kind).inc()
        if step.dropped:
            metrics.gathers.labels("dropped").inc(step.dropped)
        if step.kind != "duplicate":
            deciders[key] = _dumps(step.state)
        if step.finished is not None:
            await decide_gathered(event, key, step.finished, step.state)

    async def decide_gathered(
        event: Any, key: bytes, finished: dict[str, Any], state: dict[str, Any]
    ) -> None:
        header = finished["header"]
        person = person_from_json(header["person"])
        anchor, master = header["anchor"], header["master_patient_id"]
        env_doc = header["envelope"]
        candidates = blocks_mod.gathered_candidates(finished, state.get("distinct", []))
        decision = matching.decide(person, candidates, rules)
        metrics.decisions.labels(decision.kind).inc()
        if decision.kind == "auto" and decision.master_id is not None:
            link = blocks_mod.link_direction(finished, decision.master_id)
            await emit(
                event,
                by_identity,
                link.anchor["key"].encode(),
                _dumps(
                    {
                        "type": "claim",
                        "master_patient_id": link.master,
                        "rank": PROBABILISTIC_RANK,
                        "alias_rank": link.anchor["rank"],
                        "alias_kind": link.anchor["kind"],
                        "envelope": env_doc,
                    }
                ),
            )
            # the blocks keep the identity under the master it now belongs to, so a later
            # record of the candidate cannot flip the link back
            for block in header["keys"]:
                await emit(
                    event,
                    by_block,
                    block.encode(),
                    _dumps(
                        {
                            "type": "relabel",
                            "anchor": link.anchor["key"],
                            "master_patient_id": link.master,
                        }
                    ),
                )
        elif decision.kind == "review" and decision.master_id is not None:
            queue = _loads(reviews[key]) if reviews.get(key) else {}
            queue[master] = {
                "candidate": decision.master_id,
                "score": decision.score,
                "probability": decision.evidence.get("probability"),
                "parts": decision.evidence.get("parts", {}),
                "queued_at": utcnow().isoformat(),
                # the two records compared, for the steward's side-by-side (the API masks
                # their identifiers); the candidate's best view, as decide() scored it
                "person": header["person"],
                "candidate_person": best_view(person, finished, decision.master_id),
            }
            reviews[key] = _dumps(queue)
            review = LinkEvent(
                "review",
                master,
                anchor["kind"],
                anchor["rank"],
                competing_master_patient_id=decision.master_id,
            )
            await publish_link(
                event, review, env_doc.get("trace_id", ""), env_doc.get("source", "")
            )

    def best_view(person: Any, finished: dict[str, Any], mid: str) -> dict[str, Any] | None:
        """The view of master ``mid`` among the gathered candidates that scores highest."""
        views = [c["person"] for c in finished["candidates"] if c["master_patient_id"] == mid]
        if not views:
            return None
        best: dict[str, Any] = max(
            views, key=lambda v: matching.score(person, person_from_json(v), rules).total
        )
        return best

    async def review_decision(event: Any, key: bytes, msg: dict[str, Any]) -> None:
        """A data steward confirms (merge) or rejects (never offer again) a possible match;
        ``key`` is the identity's decider (or, for a review queued before the upgrade, its
        birth-date block)."""
        queue = _loads(reviews[key]) if reviews.get(key) else {}
        reviewed = msg["master_patient_id"]
        item = queue.pop(reviewed, None)
        if item is None:
            return  # resolved already (or never queued): nothing to do
        if queue:
            reviews[key] = _dumps(queue)
        else:
            del reviews[key]
        cmd = stewardship.Command.from_json(msg)
        candidate = item["candidate"]
        if msg["decision"] == "confirm":
            await emit(
                event,
                by_master,
                candidate.encode(),
                _dumps({"type": "merge", "source": reviewed, **cmd.to_json()}),
            )
            ev = stewardship.StewardEvent(
                "review-confirmed", candidate, cmd, previous_master_patient_id=reviewed
            )
        else:
            state = load_decider(key)
            state["distinct"] = blocks_mod.add_distinct(state.get("distinct", []), candidate)
            deciders[key] = _dumps(state)
            entries = load_block(key)  # a review of the old layout: its block's entries
            if entries:
                for e in entries:
                    if e["master_patient_id"] == reviewed:
                        e["distinct"] = sorted({*e.get("distinct", []), candidate})
                blocks[key] = blocks_mod.encode_block(entries)
            ev = stewardship.StewardEvent(
                "review-rejected", reviewed, cmd, competing_master_patient_id=candidate
            )
        await publish_steward(event, ev)

    # ------------------------------------------------------------------ 3. index

    def load_seen(key: bytes) -> tuple[Seen | None, dict[str, Any] | None]:
        """The dedup state of record ``key`` and the record last published for it (with its
        source institution), from ``seen`` — or, for a key written by a version that kept
        them apart, its ``seen`` value and its ``published`` entry."""
        raw = seen.get(key)
        state, last = dedup.load_seen_value(raw) if raw is not None else (None, None)
        if last is None and state is not None:
            legacy = published.get(key)
            last = _loads(legacy) if legacy is not None else None
        return state, last

    async def index(event: Any, key: bytes | None, value: bytes) -> None:
        if key is None:
            raise ValueError("record message without a key")
        msg = _loads(value)
        stored, last = load_seen(key)
        if msg.get("type") == "remaster":
            if last is None:  # not published yet: it will carry the right master when it is
                return
            record = CanonicalRecord.model_validate(last["record"]).model_copy(
                update={"master_patient_id": msg["master_patient_id"]}
            )
            source = last["source"]
        else:
            record = CanonicalRecord.model_validate(msg["record"])
            source = msg["source"]
        outcome = dedup.decide(stored, record)
        metrics.records.labels(record.kind, outcome.change).inc()
        change = outcome.published_change
        if outcome.store or change is not None:
            # one table write per record: the dedup state and what was published, together
            if change is not None:
                # the record as received is its JSON already; a remastered one is not
                doc = msg["record"] if msg.get("type") != "remaster" else record_json(record)
                last = {"record": doc, "source": source}
            seen[key] = dedup.seen_value(outcome.seen, last)
        attempt = stored is None and record.retracted
        uid = record.imaging.study_uid if record.imaging is not None else None
        if uid and (outcome.store or attempt):  # who holds the study, at its owner
            await emit(
                event,
                by_study,
                study_owner_key(uid).encode(),
                _dumps(
                    {
                        "type": "study-record",
                        "institution": record.institution,
                        "record_id": record.record_id,
                        "resource_type": record.resource_type,
                        "live": not outcome.seen.retracted,
                        "attempt": attempt,
                        "trace_id": record.trace_id,
                        "received_at": (
                            record.source.received_at.isoformat()
                            if record.source.received_at
                            else None
                        ),
                    }
                ),
            )
        if change is None:
            return
        topic, spec = (
            (results, RESULT_INDEXED) if record.kind == "result" else (orders, ORDER_PLACED)
        )
        env = Envelope(
            event_type=spec.event_type,
            source=source,
            trace_id=record.trace_id,
            received_at=record.source.received_at,
            payload=to_event_payload(
                record,
                change=change,
                previous_master_patient_id=outcome.previous_master_patient_id,
            ),
        )
        await emit(event, topic, record.master_patient_id.encode(), env.to_bytes(), env.headers())

    # ------------------------------------------------------------------ 4. owners

    def study_owner_key(uid: str) -> str:
        return keyed_hash(hmac_key, "study-owners", uid)

    async def owners(event: Any, key: bytes | None, value: bytes) -> None:
        """Owner of one Study Instance UID: which institutions hold it; refusals audited."""
        if key is None:
            raise ValueError("study message without a key")
        msg = _loads(value)
        raw = study_owners.get(key)
        step = dedup.study_record(
            dedup.StudyOwners.model_validate_json(raw) if raw else None,
            msg["institution"],
            msg["record_id"],
            live=msg["live"],
            attempt=msg["attempt"],
        )
        if step.owners is not None:
            if step.owners.live:
                study_owners[key] = step.owners.model_dump_json().encode()
            elif raw is not None:
                del study_owners[key]
        if not step.refused:
            return
        metrics.records.labels("result", "refused").inc()
        log.warning(
            "write refused: the study belongs to another institution",
            extra={
                "institution": msg["institution"],
                "record_id": msg["record_id"],
                "resource_type": msg["resource_type"],
                "owners": list(step.holders),
            },
        )
        env = Envelope(
            event_type=WRITE_REFUSED.event_type,
            source=msg["institution"],
            received_at=msg.get("received_at"),
            payload={
                "institution": msg["institution"],
                "action": "retraction",
                "resource_type": msg["resource_type"],
                "record_id": msg["record_id"],
                "reason": "not-the-owner",
                "owners": list(step.holders),
                "refused_at": utcnow().isoformat(),
            },
        )
        if msg.get("trace_id"):
            env = env.model_copy(update={"trace_id": msg["trace_id"]})
        await emit(event, audit, msg["institution"].encode(), env.to_bytes(), env.headers())

    stages.agent(accepted, "route", route)
    stages.agent(by_identity, "resolve", resolve)
    stages.agent(by_record, "index", index)
    stages.agent(by_block, "match", match)
    stages.agent(by_master, "master", master)
    stages.agent(by_study, "owners", owners)

    # ------------------------------------------------------------------- web

    steward_api.install(
        steward_api.Context(
            app=app,
            settings=settings,
            identities=identities,
            blocks=blocks,
            masters=masters,
            master_view=master_view,
            reviews=reviews,
            by_identity=by_identity.get_topic_name(),
            by_master=by_master.get_topic_name(),
            by_block=by_block.get_topic_name(),
            hash_ident=hash_ident,
            block_key=block_key,
            rules=rules,
            token_hashes=frozenset(settings.patient_index.steward_token_hashes),
            internal_token_hash=hash_token(internal_token(settings)),
        )
    )

    add_service_pages(app, metrics.registry)

    return app
