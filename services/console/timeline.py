"""A patient's timeline across hospitals, read from the hub's own topics.

The results, orders, decisions and imaging studies of one master patient are on four topics
keyed by the master patient id (docs/events.md): ``mrhub.results.result-indexed.v1``,
``mrhub.results.order-placed.v1``, ``mrhub.recognition.decision-made.v1`` and
``mrhub.imaging.study-indexed.v1``. Every producer of them (faust's producer, aiokafka's
``DefaultPartitioner``) puts a key on ``murmur2(key) % partitions``
(:func:`services.common.partitioner.partition_for`), so a master's messages are in one partition
of each topic: only that partition is read, never the whole topic.

**The bound.** Of each partition read, only the last :data:`SCAN_MESSAGES` offsets are read
(committed data only, ``read_committed``), within :data:`SCAN_TIMEOUT_S` seconds; the answer
says when a partition held more (``truncated``: older entries may be missing). The read is
kafka-python's blocking consumer, run in a thread (``asyncio.to_thread``) so the console's
event loop is never blocked; no consumer group, nothing committed.

**What is kept.** The latest message per record (``record_id``; decisions per
``order_record_id``, the highest ``revision``; studies per ``study_key``), ordered across
partitions by the message's log timestamp then offset. A record re-published after a merge
carries the surviving master's id and ``previous_master_patient_id``: reading the partitions
of the surviving master *and* of every master its history names (merged from, unmerged,
linked…), a record shows under the master its latest message names — so the surviving
master's timeline holds its merged masters' records, and a record moved away by an unmerge
no longer shows under the master it left. A retraction removes the record.

Not seen: a record moved away from the master by an automatic relink to a master its history
does not name still shows under it until the next message about it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from services.common.kafka_read import read_range
from services.common.kafka_security import kafka_python_options
from services.common.partitioner import partition_for
from services.common.topics import (
    DECISION_MADE,
    ORDER_PLACED,
    RESULT_INDEXED,
    STUDY_INDEXED,
)

__all__ = ["SCAN_MESSAGES", "SCAN_TIMEOUT_S", "Timeline", "TimelineEntry", "read_timeline"]

#: Offsets read at most per partition (the newest ones).
SCAN_MESSAGES = 20_000
#: The whole read gives up after this long (the page then says the timeline is incomplete).
SCAN_TIMEOUT_S = 10.0

KIND_NAMES = {"result": "结果", "order": "申请单", "decision": "互认判断", "study": "影像检查"}
CATEGORY_NAMES = {"lab": "检验", "imaging": "检查（影像）", "exam": "检查", "other": "其他"}
OUTCOME_NAMES = {"recognisable": "可互认", "not-recognisable": "不可互认"}
STATUS_NAMES = {
    "final": "已出报告", "preliminary": "初步报告", "amended": "已修订", "corrected": "已更正",
    "registered": "已登记", "active": "有效", "completed": "已完成", "available": "可调阅",
}  # fmt: skip
#: Times are shown in China Standard Time.
CST = timezone(timedelta(hours=8))
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _instant(at: str) -> datetime:
    """An ISO time as an aware instant (a naive one read as UTC; unreadable: the epoch)."""
    try:
        t = datetime.fromisoformat(at.replace("Z", "+00:00"))
    except ValueError:
        return _EPOCH
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


@dataclass(frozen=True)
class TimelineEntry:
    kind: str  # result | order | decision | study
    key: str  # the record id (decisions: the order's; studies: the study key)
    master_patient_id: str
    institution: str
    institutions: tuple[str, ...]
    at: str  # ISO date-time (the clinical time, else when issued / decided)
    item: str
    category: str
    status: str
    outcome: str = ""
    reason: str = ""

    @property
    def kind_name(self) -> str:
        return KIND_NAMES.get(self.kind, self.kind)

    @property
    def category_name(self) -> str:
        return CATEGORY_NAMES.get(self.category, self.category)

    @property
    def status_name(self) -> str:
        return STATUS_NAMES.get(self.status, self.status)

    @property
    def shown_at(self) -> str:
        """The time in China Standard Time, to the minute ("" when unknown)."""
        t = _instant(self.at)
        return "" if t == _EPOCH else t.astimezone(CST).strftime("%Y-%m-%d %H:%M")

    @property
    def outcome_name(self) -> str:
        return OUTCOME_NAMES.get(self.outcome, self.outcome)


@dataclass
class Timeline:
    entries: list[TimelineEntry] = field(default_factory=list)
    #: a partition held more than :data:`SCAN_MESSAGES`, or the read timed out
    truncated: bool = False
    messages_read: int = 0

    def for_institution(self, institution: str) -> Timeline:
        """Only ``institution``'s own entries (a hospital viewer's page)."""
        own = [e for e in self.entries if e.institution == institution]
        return Timeline(own, self.truncated, self.messages_read)

    @property
    def institutions(self) -> list[str]:
        return sorted({e.institution for e in self.entries})


def _item(payload: dict[str, Any]) -> str:
    for code in payload.get("codes") or []:
        if isinstance(code, dict) and code.get("display"):
            return str(code["display"])
    codes = payload.get("codes") or []
    if codes and isinstance(codes[0], dict):
        return str(codes[0].get("code") or "")
    return str(payload.get("catalogue_item") or "")


def _entry(kind: str, payload: dict[str, Any]) -> tuple[str, TimelineEntry] | None:
    """``(dedup key, entry)`` of one message's payload, or None when it is not usable."""
    mid = payload.get("master_patient_id")
    if not isinstance(mid, str):
        return None
    if kind in ("result", "order"):
        rid = payload.get("record_id")
        if not isinstance(rid, str):
            return None
        at = (
            payload.get("performed_at")
            or payload.get("collected_at")
            or payload.get("issued_at")
            or payload.get("authored_at")
            or ""
        )
        inst = str(payload.get("institution") or "")
        return rid, TimelineEntry(
            kind, rid, mid, inst, (inst,), str(at), _item(payload),
            str(payload.get("category") or ""), str(payload.get("status") or ""),
        )  # fmt: skip
    if kind == "decision":
        oid = payload.get("order_record_id")
        if not isinstance(oid, str):
            return None
        inst = str(payload.get("ordering_institution") or "")
        return oid, TimelineEntry(
            kind, oid, mid, inst, (inst,), str(payload.get("decided_at") or ""),
            str(payload.get("item_name") or payload.get("item_id") or ""),
            str(payload.get("item_category") or ""), "",
            str(payload.get("outcome") or ""),
            str(payload.get("detail") or payload.get("reason") or ""),
        )  # fmt: skip
    skey = payload.get("study_key")
    if not isinstance(skey, str):
        return None
    insts = tuple(str(i) for i in payload.get("institutions") or [])
    return skey, TimelineEntry(
        kind, skey, mid, insts[0] if insts else "", insts, str(payload.get("started_at") or ""),
        str(payload.get("description") or "/".join(payload.get("modalities") or [])),
        "imaging", str(payload.get("status") or ""),
    )  # fmt: skip


def _retracted(kind: str, payload: dict[str, Any]) -> bool:
    return kind != "decision" and payload.get("change") == "retraction"


TOPICS = (
    ("result", RESULT_INDEXED.name),
    ("order", ORDER_PLACED.name),
    ("decision", DECISION_MADE.name),
    ("study", STUDY_INDEXED.name),
)


def fold(
    messages: Iterable[tuple[str, float, int, dict[str, Any]]], master: str
) -> list[TimelineEntry]:
    """The entries of ``master`` from ``(kind, timestamp, offset, payload)`` messages: the
    latest per record (decisions: highest revision), retractions and records that moved to
    another master dropped, newest first."""
    latest: dict[tuple[str, str], tuple[tuple[float, float], dict[str, Any]]] = {}
    for kind, ts, offset, payload in messages:
        made = _entry(kind, payload)
        if made is None:
            continue
        dkey = (kind, made[0])
        order = (
            (float(payload.get("revision") or 0), ts) if kind == "decision" else (ts, float(offset))
        )
        held = latest.get(dkey)
        if held is None or order >= held[0]:
            latest[dkey] = (order, payload)
    out: list[TimelineEntry] = []
    for (kind, _), (_, payload) in latest.items():
        if _retracted(kind, payload) or payload.get("master_patient_id") != master:
            continue
        made = _entry(kind, payload)
        if made is not None:
            out.append(made[1])
    out.sort(key=lambda e: (_instant(e.at), e.kind, e.key), reverse=True)
    return out


def read_timeline(
    bootstrap: str,
    master: str,
    related: Iterable[str] = (),
    *,
    limit: int = SCAN_MESSAGES,
    timeout_s: float = SCAN_TIMEOUT_S,
) -> Timeline:
    """``master``'s timeline (blocking: call it in a thread). ``related``: the other masters
    its history names, whose partitions are read too (records that moved between them)."""
    keys = {master, *related}
    wanted = {k.encode() for k in keys}
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        isolation_level="read_committed",
        consumer_timeout_ms=1000,
        **kafka_python_options(),
    )
    timeline = Timeline()
    messages: list[tuple[str, float, int, dict[str, Any]]] = []
    try:
        kind_of: dict[str, str] = {}
        tps: list[TopicPartition] = []
        for kind, topic in TOPICS:
            parts = consumer.partitions_for_topic(topic) or set()
            if not parts:
                continue
            kind_of[topic] = kind
            chosen = {partition_for(k.encode(), len(parts)) for k in keys}
            tps.extend(TopicPartition(topic, p) for p in sorted(chosen))
        if not tps:
            return timeline
        end = consumer.end_offsets(tps)
        begin = consumer.beginning_offsets(tps)
        start = {tp: max(begin[tp], end[tp] - limit) for tp in tps}
        timeline.truncated = any(start[tp] > begin[tp] for tp in tps)
        records = read_range(consumer, start, end, timeout_s=timeout_s, poll_ms=300)
        try:
            for tp, record in records:
                timeline.messages_read += 1
                if record.key not in wanted or record.value is None:
                    continue
                try:
                    payload = json.loads(record.value)["payload"]
                except (ValueError, KeyError, TypeError):
                    continue
                if isinstance(payload, dict):
                    messages.append(
                        (kind_of[tp.topic], float(record.timestamp), record.offset, payload)
                    )
        except TimeoutError:
            timeline.truncated = True  # what was read is shown, and the page says so
    finally:
        consumer.close()
    timeline.entries = fold(messages, master)
    return timeline
