"""Console pages: recognition figures (``/figures``, ``/figures.csv``) and the reasons orders
were not recognised (``/reasons``).

The numbers are ``mrhub report``'s: both count with :func:`services.common.figures.count`
(the same latest-revision rule, feedback de-duplication and date filter), here grouped by
day, prefecture, hospital or category, and kept to what the person may see — a region viewer
the institutions of its region (``User.sees_region``), a hospital viewer the orders its own
doctors placed and the feedback they gave, a steward everything.

**Where the data comes from, and what it costs.** :class:`FiguresCache` reads
``mrhub.recognition.decision-made.v1`` and ``mrhub.recognition.feedback-recorded.v1`` like
``mrhub report`` (kafka-python, ``read_committed``, no consumer group, nothing committed),
and ``mrhub.results.order-placed.v1`` for one thing the decisions do not carry: the ordered
codes of the orders that map to no catalogue item (the reasons page's ``#fix-catalog``). It
reads in one worker thread (never on the event loop; at most one read at a time, page views
queue behind it) and keeps the positions it has read to: a page view first asks the topics'
end offsets (one ListOffsets call); when nothing is new that is all it reads, otherwise it
reads only the new records. The first view after a start reads the three topics whole (the
orders topic carries each order's FHIR resource: it is the largest of the three).

What it keeps is compact: the latest :class:`OrderFact` of each order (~300 bytes: ids,
day, category, outcome, saving, master patient id, the failing rule), one
:class:`FeedbackFact` per distinct feedback, and codes (at most five, each set of codes
kept once) only for orders whose decision is ``not-in-catalog`` or has not been read yet
(at most :data:`MAX_PENDING_CODES` of those) — never whole payloads (no matches, no FHIR).
A million decided orders is about 300 MB; at :data:`MAX_ORDERS` orders the cache stops
taking new orders and the pages say the figures are incomplete (``mrhub report``, which
reads everything each time, still has them). Counting runs in the same thread over the kept
facts: about a second per million orders per page view. A failed read (broker down,
timeout) drops what was kept and starts again from the beginning at the next view.
"""

from __future__ import annotations

import asyncio
import csv
import io
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any, Final, Protocol, TypeVar

from aiohttp import web
from prometheus_client import Counter as MetricCounter
from prometheus_client import Gauge

from services.common.envelope import Envelope
from services.common.figures import (
    DIMENSIONS,
    Dimension,
    FeedbackFact,
    Latest,
    Tally,
    count,
    counted_feedback,
    feedback_fact,
    in_range,
    order_fact,
    totals,
)
from services.common.institutions import Registry, ReloadingRegistry
from services.common.topics import DECISION_MADE, FEEDBACK_RECORDED, ORDER_PLACED
from services.console import auth
from services.console.app import CONSOLE, render, render_error
from services.console.auth import User

__all__ = [
    "CATEGORY_NAMES",
    "FEEDBACK_NAMES",
    "MAX_ORDERS",
    "REASON_NAMES",
    "FiguresCache",
    "KafkaSource",
    "Source",
    "setup",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: How many orders the cache keeps at most (see the module docs).
MAX_ORDERS: Final = 3_000_000
#: How long a page waits for the figures before answering 503 (the read goes on).
PAGE_TIMEOUT_S: Final = 60.0

TopicPartitionKey = tuple[str, int]
#: an order's codes, ``system|code|display`` (at most :data:`MAX_CODES` of them)
Codes = tuple[str, ...]
MAX_CODES: Final = 5
#: Orders read but not decided yet whose codes are kept, waiting for their decision.
MAX_PENDING_CODES: Final = 200_000

#: The recognition reasons (services/recognition/decision.py REASONS), in Chinese.
REASON_NAMES: Final[Mapping[str, str]] = {
    "recognised": "可互认",
    "not-in-catalog": "所开项目不在互认目录内",
    "no-prior-result": "患者无该项目的既往结果",
    "result-not-final": "既往结果尚未终审（非最终状态）",
    "outside-window": "既往结果已超出项目有效期",
    "issuer-not-qualified": "出具机构无该项目质控资格",
    "scope-not-satisfied": "两机构间的互认范围或方向不允许",
    "link-in-review": "既往结果仅属于待审核的疑似同一患者",
}

#: What failed inside a reason (the preferred earlier result's ``rule``), in Chinese.
RULE_NAMES: Final[Mapping[str, str]] = {
    "status": "结果状态非最终",
    "no-anchor-time": "结果无计时起点",
    "expired": "已超出有效期",
    "unknown-issuer": "出具机构未在机构登记中",
    "no-qualification": "无该项目质控资格",
    "qualification-expired": "质控资格已过期",
    "qualification-not-yet-valid": "质控资格尚未生效",
    "unknown-receiver": "开单机构未在机构登记中",
    "private-excluded": "目录不含民营机构",
    "alliance-only": "仅限医联体内互认",
    "outside-region": "不在目录覆盖地区",
    "outside-prefecture": "仅限同一地市互认",
    "direction": "互认方向不允许（上级认下级仅限试点）",
    "grade": "三甲医院仅认三甲结果",
    "hr-scope": "质控资格范围达不到开单机构",
}

#: The national re-order reasons (services/recognition/feedback.py NATIONAL_EXCEPTIONS);
#: a region's own come with their name in the feedback payload (``reason_name``).
FEEDBACK_NAMES: Final[Mapping[str, str]] = {
    "condition-changed": "病情变化",
    "fast-changing": "检查检验结果随病程进展变化较快",
    "major-procedure": "手术、输血等重大医疗措施前",
    "emergency": "急诊、急救等抢救生命的紧急状态",
    "appraisal": "司法、伤残及病退等鉴定",
    "other": "其他情形",
}

CATEGORY_NAMES: Final[Mapping[str, str]] = {
    "lab": "检验",
    "imaging": "影像检查",
    "ultrasound": "超声",
    "ecg": "心电图",
    "other": "其他",
}

#: Prefecture names (GB/T 2260) of the province the hub serves; others show their code.
PREFECTURE_NAMES: Final[Mapping[str, str]] = {
    "140000": "山西省",
    "140100": "太原市",
    "140200": "大同市",
    "140300": "阳泉市",
    "140400": "长治市",
    "140500": "晋城市",
    "140600": "朔州市",
    "140700": "晋中市",
    "140800": "运城市",
    "140900": "忻州市",
    "141000": "临汾市",
    "141100": "吕梁市",
}

BY_NAMES: Final[Mapping[str, str]] = {
    "day": "按日",
    "prefecture": "按地市",
    "institution": "按医院",
    "category": "按类别",
}


# ----------------------------------------------------------------------------- reading


class Source(Protocol):
    """Where the facts come from (Kafka; a fake in tests). Called from one thread only."""

    def end_offsets(self) -> dict[TopicPartitionKey, int]: ...

    def read(
        self, start: Mapping[TopicPartitionKey, int], end: Mapping[TopicPartitionKey, int]
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """``(topic, payload with recorded_at)`` of every record from ``start`` (0 when
        absent) up to ``end``."""
        ...

    def close(self) -> None: ...


class KafkaSource:
    """The three topics, read with one kafka-python consumer kept between reads."""

    def __init__(
        self,
        bootstrap: str,
        *,
        decisions: str = DECISION_MADE.name,
        feedback: str = FEEDBACK_RECORDED.name,
        orders: str = ORDER_PLACED.name,
        timeout_s: float = 120.0,
    ) -> None:
        self.bootstrap = bootstrap
        self.timeout_s = timeout_s
        #: the topic read → the topic it stands for (tests read their own topics)
        self.topics = {
            decisions: DECISION_MADE.name,
            feedback: FEEDBACK_RECORDED.name,
            orders: ORDER_PLACED.name,
        }
        self._consumer: Any = None

    def _open(self) -> Any:
        if self._consumer is None:
            from kafka import KafkaConsumer

            from services.common.kafka_security import kafka_python_options

            self._consumer = KafkaConsumer(
                bootstrap_servers=self.bootstrap,
                enable_auto_commit=False,
                isolation_level="read_committed",
                auto_offset_reset="earliest",  # a position before the log start: its start
                consumer_timeout_ms=1000,
                request_timeout_ms=30_000,
                **kafka_python_options(),
            )
        return self._consumer

    def end_offsets(self) -> dict[TopicPartitionKey, int]:
        from kafka import TopicPartition

        consumer = self._open()
        tps = [
            TopicPartition(topic, p)
            for topic in self.topics
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        if not tps:
            return {}
        return {(tp.topic, tp.partition): int(off) for tp, off in consumer.end_offsets(tps).items()}

    def read(
        self, start: Mapping[TopicPartitionKey, int], end: Mapping[TopicPartitionKey, int]
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        from kafka import TopicPartition

        from services.common.kafka_read import read_range

        tps = {TopicPartition(*key): key for key in end}
        records = read_range(
            self._open(),
            {tp: start.get(key, 0) for tp, key in tps.items()},
            {tp: end[key] for tp, key in tps.items()},
            timeout_s=self.timeout_s,
            what="the recognition topics",
        )
        for tp, record in records:
            try:
                env = Envelope.from_bytes(record.value)
            except Exception:  # mrhub report would stop here; the page goes on
                log.warning(
                    "figures: a record that is not an envelope was skipped",
                    extra={"topic": tp.topic, "partition": tp.partition, "offset": record.offset},
                )
                continue
            payload = {**env.payload, "recorded_at": env.occurred_at.isoformat()}
            yield self.topics[tp.topic], payload

    def close(self) -> None:
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            consumer.close()


@dataclass
class Facts:
    """What the cache holds (read only by functions run through :meth:`FiguresCache.run`)."""

    latest: Latest
    feedback: list[FeedbackFact]
    complete: bool
    #: the ordered codes of each order whose latest decision is ``not-in-catalog``
    uncatalogued: dict[str, Codes] = field(default_factory=dict)


class FiguresCache:
    """The compact facts of the topics, brought up to date before each use (module docs)."""

    def __init__(
        self,
        source: Callable[[], Source],
        *,
        max_orders: int = MAX_ORDERS,
        reads: MetricCounter | None = None,
        cached: Gauge | None = None,
    ) -> None:
        self._make_source = source
        self._source: Source | None = None
        self.max_orders = max_orders
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="console-figures")
        self._reads = reads
        self._cached = cached
        self._reset()

    def _reset(self) -> None:
        self.facts = Facts(Latest(), [], complete=True)
        self._pending_codes: dict[str, Codes] = {}
        self._codes_seen: dict[Codes, Codes] = {}  # one tuple per distinct set of codes
        self._feedback_seen: set[tuple[str, date | None]] = set()
        self.positions: dict[TopicPartitionKey, int] = {}

    def _count_read(self, outcome: str) -> None:
        if self._reads is not None:
            self._reads.labels(outcome).inc()

    async def run(self, fn: Callable[[Facts], T]) -> T:
        """Bring the facts up to date, then ``fn(facts)`` — both in the cache's thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._refresh_then, fn)

    def _refresh_then(self, fn: Callable[[Facts], T]) -> T:
        self.refresh()
        return fn(self.facts)

    def refresh(self) -> None:
        """Read what is new (in the cache's thread; tests may call it directly)."""
        try:
            if self._source is None:
                self._source = self._make_source()
            end = self._source.end_offsets()
            if end == self.positions:
                self._count_read("unchanged")
                return
            if any(end.get(key, 0) < pos for key, pos in self.positions.items()):
                self._reset()  # a topic was emptied or re-created: count from the start
            for topic, payload in self._source.read(self.positions, end):
                self._fold(topic, payload)
            self.positions = dict(end)
            self._count_read("read")
        except Exception:
            self._count_read("error")
            self._reset()
            if self._source is not None:
                try:
                    self._source.close()
                finally:
                    self._source = None
            raise
        finally:
            if self._cached is not None:
                self._cached.set(len(self.facts.latest))

    def _fold(self, topic: str, payload: dict[str, Any]) -> None:
        if topic == DECISION_MADE.name:
            fact = order_fact(payload)
            latest = self.facts.latest
            if fact.order not in latest.orders and len(latest) >= self.max_orders:
                self.facts.complete = False
                return
            latest.add(fact)
            kept = latest.orders[fact.order]
            codes = self._pending_codes.pop(fact.order, None)
            if kept.reason == "not-in-catalog":
                if codes is not None:
                    self.facts.uncatalogued[fact.order] = codes
            else:
                self.facts.uncatalogued.pop(fact.order, None)
        elif topic == ORDER_PLACED.name:
            self._fold_order(payload)
        elif topic == FEEDBACK_RECORDED.name:
            fb = feedback_fact(payload)
            if fb.feedback_id is not None:
                seen = (fb.feedback_id, fb.day)
                if seen in self._feedback_seen:
                    return  # a resent one on the same day is never counted again
                self._feedback_seen.add(seen)
            if len(self.facts.feedback) >= self.max_orders:
                self.facts.complete = False
                return
            self.facts.feedback.append(fb)

    def _fold_order(self, payload: dict[str, Any]) -> None:
        """Keep an order's codes only while they may be needed: until its decision, and
        after it while that decision is ``not-in-catalog``."""
        rid = payload.get("record_id")
        if not isinstance(rid, str):
            return
        listed = tuple(
            "|".join(
                (
                    str(c.get("system") or "")[:120],
                    str(c.get("code") or "")[:60],
                    str(c.get("display") or "")[:60],
                )
            )
            for c in (payload.get("codes") or [])[:MAX_CODES]
            if isinstance(c, dict)
        )
        if len(self._codes_seen) < 100_000:
            listed = self._codes_seen.setdefault(listed, listed)
        decided = self.facts.latest.orders.get(rid)
        if decided is None:
            self._pending_codes.pop(rid, None)
            self._pending_codes[rid] = listed
            if len(self._pending_codes) > MAX_PENDING_CODES:  # the oldest first
                del self._pending_codes[next(iter(self._pending_codes))]
        elif decided.reason == "not-in-catalog":
            self.facts.uncatalogued[rid] = listed

    def close(self) -> None:
        """Close the reader in its own thread, after a read under way (never from under it)."""

        def close_source() -> None:
            source, self._source = self._source, None
            if source is not None:
                try:
                    source.close()
                except Exception:
                    log.exception("figures: closing the reader failed")

        self._executor.submit(close_source)
        self._executor.shutdown(wait=False, cancel_futures=False)


# ----------------------------------------------------------------------------- scope


def scope_filter(
    user: User, registry: Registry | ReloadingRegistry
) -> Callable[[str], bool] | None:
    """Which institutions' figures ``user`` sees (None: every one)."""
    if user.role == "steward":
        return None
    if user.role == "hospital":
        own = user.scope
        return lambda inst: inst == own

    def sees(inst_id: str) -> bool:
        inst = registry.get(inst_id)
        return inst is not None and user.sees_region(inst.region_code)

    return sees


# ----------------------------------------------------------------------------- the query


@dataclass(frozen=True)
class Query:
    since: date | None
    until: date | None
    by: Dimension
    problems: tuple[str, ...] = ()

    def as_params(self) -> dict[str, str]:
        return {
            "since": self.since.isoformat() if self.since else "",
            "until": self.until.isoformat() if self.until else "",
            "by": self.by,
        }


def parse_query(request: web.Request, *, default_by: Dimension = "day") -> Query:
    problems = []

    def day(name: str, label: str) -> date | None:
        raw = request.query.get(name, "").strip()[:20]
        if not raw:
            return None
        try:
            return date.fromisoformat(raw)
        except ValueError:
            problems.append(f"{label}「{raw}」不是日期（格式 2026-11-20），已忽略。")
            return None

    since = day("since", "开始日期")
    until = day("until", "结束日期")
    if since and until and since > until:
        problems.append("开始日期晚于结束日期：该时段没有数据。")
    raw_by = request.query.get("by", default_by)
    by: Dimension = default_by
    for d in DIMENSIONS:
        if raw_by == d:
            by = d
    return Query(since, until, by, tuple(problems))


# ----------------------------------------------------------------------------- formatting


def yuan(value: Decimal) -> str:
    return f"{value:.2f}"


def percent(rate: float) -> str:
    return f"{rate * 100:.1f}"


def label_of(by: Dimension, key: str, registry: Registry | ReloadingRegistry) -> str:
    if by == "institution":
        inst = registry.get(key)
        return inst.name if inst else "（未登记机构）"
    if by == "category":
        return CATEGORY_NAMES.get(key, key)
    if by == "prefecture":
        return "（未登记机构）" if key == "unknown" else PREFECTURE_NAMES.get(key, key)
    return key


def _row(t: Tally) -> dict[str, Any]:
    return {
        "orders": t.orders,
        "recognisable": t.recognisable,
        "rate": percent(t.rate),
        "rate_value": round(t.rate, 4),
        "saving_yuan": yuan(t.saving_yuan),
        "patients": t.patients,
        "feedback_recognised": t.recognised_feedback,
        "feedback_reordered": sum(t.reordered.values()),
    }


@dataclass
class Figures:
    groups: list[dict[str, Any]]
    region_category: list[dict[str, Any]]
    total: dict[str, Any]
    complete: bool


def compute(
    facts: Facts,
    query: Query,
    registry: Registry | ReloadingRegistry,
    include: Callable[[str], bool] | None,
) -> Figures:
    """The page's numbers (run in the cache's thread)."""
    by_group = count(
        facts.latest.values(),
        facts.feedback,
        registry,
        by=(query.by,),
        since=query.since,
        until=query.until,
        include=include,
    )
    by_rc = count(
        facts.latest.values(),
        facts.feedback,
        registry,
        by=("prefecture", "category"),
        since=query.since,
        until=query.until,
        include=include,
    )
    groups = [
        {"key": t.key[0], "label": label_of(query.by, t.key[0], registry), **_row(t)}
        for t in by_group
    ]
    rc = [
        {
            "region": t.key[0],
            "region_name": label_of("prefecture", t.key[0], registry),
            "category": t.key[1],
            "category_name": CATEGORY_NAMES.get(t.key[1], t.key[1]),
            **_row(t),
        }
        for t in by_rc
    ]
    return Figures(groups, rc, _row(totals(by_group)), facts.complete)


CSV_FIELDS: Final = (
    "orders",
    "recognisable",
    "rate",
    "saving_yuan",
    "patients",
    "feedback_recognised",
    "feedback_reordered",
)


def _cell(text: str) -> str:
    """A text cell a spreadsheet will not run as a formula."""
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text


def to_csv(figures: Figures, query: Query) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([query.by, "name", *CSV_FIELDS])
    for g in figures.groups:
        writer.writerow([g["key"], _cell(g["label"]), *(g[f] for f in CSV_FIELDS)])
    writer.writerow(["all", "合计", *(figures.total[f] for f in CSV_FIELDS)])
    return out.getvalue()


# ----------------------------------------------------------------------------- views


async def _figures_for(request: web.Request, query: Query) -> Figures | web.Response:
    ctx = request.app[CONSOLE]
    cache: FiguresCache | None = ctx.extra.get("figures")
    if cache is None:
        return await render_error(
            request, 503, "未配置 Kafka（MRHUB_KAFKA__BOOTSTRAP_SERVERS），无法统计。"
        )
    include = scope_filter(request["user"], ctx.registry)
    try:
        return await asyncio.wait_for(
            cache.run(lambda facts: compute(facts, query, ctx.registry, include)),
            timeout=PAGE_TIMEOUT_S,
        )
    except Exception:
        log.exception("figures: reading the recognition topics failed")
        return await render_error(request, 503, "暂时无法读取互认数据，请稍后再试。")


def _scope_text(user: User, registry: Registry | ReloadingRegistry) -> str:
    if user.role == "steward":
        return "全部机构"
    if user.role == "hospital":
        inst = registry.get(user.scope)
        return f"本院：{inst.name if inst else user.scope}"
    return f"辖区 {user.scope} {PREFECTURE_NAMES.get(user.scope, '')}".rstrip()


@auth.require("region", "hospital", "steward")
async def figures_page(request: web.Request) -> web.StreamResponse:
    query = parse_query(request)
    found = await _figures_for(request, query)
    if isinstance(found, web.Response):
        return found
    ctx = request.app[CONSOLE]
    chart = {
        "by": query.by,
        "labels": [g["label"] for g in found.groups],
        "orders": [g["orders"] for g in found.groups],
        "recognisable": [g["recognisable"] for g in found.groups],
        "rate": [g["rate_value"] for g in found.groups],
        "saving_yuan": [g["saving_yuan"] for g in found.groups],
        "patients": [g["patients"] for g in found.groups],
    }
    from urllib.parse import urlencode

    return await render(
        request,
        "figures.html",
        {
            "q": query,
            "params": query.as_params(),
            "by_names": BY_NAMES,
            "figures": found,
            "chart": chart,
            "csv_url": "/figures.csv?" + urlencode(query.as_params()),
            "scope_text": _scope_text(request["user"], ctx.registry),
        },
    )


@auth.require("region", "hospital", "steward")
async def figures_csv(request: web.Request) -> web.StreamResponse:
    query = parse_query(request)
    found = await _figures_for(request, query)
    if isinstance(found, web.Response):
        return found
    name = "mrhub-figures-{}-{}-{}.csv".format(
        query.since or "start", query.until or "now", query.by
    )
    body = "\ufeff" + to_csv(found, query)
    return web.Response(
        body=body.encode("utf-8"),
        headers={
            "Content-Type": "text/csv; charset=utf-8",
            "Content-Disposition": f'attachment; filename="{name}"',
        },
    )


# ----------------------------------------------------------------------------- reasons

#: The window in an ``outside-window`` detail, as recognition writes it (``str(Window)``:
#: "the 7 days from specimen-collection window ended at …").
_WINDOW = re.compile(r"the (\d+ \w+ from [\w-]+) window")


@dataclass
class Reasons:
    not_recognised: list[dict[str, Any]]
    feedback: list[dict[str, Any]]
    fix_hr: list[dict[str, Any]]
    fix_catalog: list[dict[str, Any]]
    fix_window: list[dict[str, Any]]
    fix_scope: list[dict[str, Any]]
    fix_final: list[dict[str, Any]]
    in_review: int
    complete: bool


def _name(registry: Registry | ReloadingRegistry, inst_id: str | None) -> str:
    if not inst_id:
        return ""
    inst = registry.get(inst_id)
    return inst.name if inst else "（未登记机构）"


def _qualifications(
    registry: Registry | ReloadingRegistry,
    issuer: str | None,
    item: str | None,
    category: str | None,
) -> list[str]:
    inst = registry.get(issuer) if issuer else None
    if inst is None:
        return []
    return [
        f"{q.item or (CATEGORY_NAMES.get(q.category or '', q.category or '') + '（全类）')} "
        f"{q.scope} {q.issued}…{q.expires}"
        for q in inst.qualifications
        if (q.item is not None and q.item == item) or (q.item is None and q.category == category)
    ]


def compute_reasons(
    facts: Facts,
    query: Query,
    registry: Registry | ReloadingRegistry,
    include: Callable[[str], bool] | None,
) -> Reasons:
    """The ranking and the fix lists (run in the cache's thread)."""
    reasons: Counter[str] = Counter()
    hr: Counter[tuple[str | None, str | None, str | None, str | None, str | None]] = Counter()
    catalog: Counter[tuple[str, Codes | None, str | None]] = Counter()
    window: Counter[tuple[str | None, str | None, str | None, str | None]] = Counter()
    scope: Counter[tuple[str | None, str, str | None, str | None]] = Counter()
    final: Counter[tuple[str | None, str | None]] = Counter()
    orders = 0
    for o in facts.latest.values():
        if not in_range(o.day, query.since, query.until):
            continue
        if include is not None and not include(o.institution):
            continue
        orders += 1
        if o.recognisable:
            continue
        reasons[o.reason] += 1
        if o.reason == "issuer-not-qualified":
            hr[(o.issuer, o.item_id, o.item_name, o.category, o.rule)] += 1
        elif o.reason == "not-in-catalog":
            catalog[(o.institution, facts.uncatalogued.get(o.order), o.catalog_version)] += 1
        elif o.reason == "outside-window":
            m = _WINDOW.search(o.detail or "")
            window[(o.item_id, o.item_name, o.rule, m.group(1) if m else None)] += 1
        elif o.reason == "scope-not-satisfied":
            scope[(o.issuer, o.institution, o.item_id, o.rule)] += 1
        elif o.reason == "result-not-final":
            final[(o.issuer, o.item_id)] += 1
    feedback: Counter[str] = Counter()
    names: dict[str, str] = {}
    for f in counted_feedback(
        facts.feedback, since=query.since, until=query.until, include=include
    ):
        if f.choice == "recognised":
            continue
        code = str(f.reason)
        feedback[code] += 1
        if f.reason_name:
            names.setdefault(code, f.reason_name)
    not_recognised_total = sum(reasons.values())
    fb_total = sum(feedback.values())
    return Reasons(
        not_recognised=[
            {
                "code": code,
                "name": REASON_NAMES.get(code, code),
                "count": n,
                "share": percent(n / not_recognised_total),
                "of_orders": percent(n / orders),
            }
            for code, n in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))
        ],
        feedback=[
            {
                "code": code,
                "name": names.get(code) or FEEDBACK_NAMES.get(code, code),
                "count": n,
                "share": percent(n / fb_total),
            }
            for code, n in sorted(feedback.items(), key=lambda kv: (-kv[1], kv[0]))
        ],
        fix_hr=[
            {
                "issuer": issuer or "",
                "issuer_name": _name(registry, issuer),
                "item_id": item or "",
                "item_name": item_name or "",
                "rule": rule or "",
                "rule_name": RULE_NAMES.get(rule or "", rule or ""),
                "count": n,
                "qualifications": _qualifications(registry, issuer, item, category),
            }
            for (issuer, item, item_name, category, rule), n in hr.most_common()
        ],
        fix_catalog=[
            {
                "institution": inst,
                "institution_name": _name(registry, inst),
                "codes": [
                    dict(zip(("system", "code", "display"), c.split("|", 2), strict=False))
                    for c in codes or ()
                ],
                "codes_known": codes is not None,
                "catalog_version": version or "",
                "count": n,
            }
            for (inst, codes, version), n in catalog.most_common()
        ],
        fix_window=[
            {
                "item_id": item or "",
                "item_name": item_name or "",
                "rule": rule or "",
                "rule_name": RULE_NAMES.get(rule or "", rule or ""),
                "window": win or "",
                "count": n,
            }
            for (item, item_name, rule, win), n in window.most_common()
        ],
        fix_scope=[
            {
                "issuer": issuer or "",
                "issuer_name": _name(registry, issuer),
                "institution": inst,
                "institution_name": _name(registry, inst),
                "item_id": item or "",
                "rule": rule or "",
                "rule_name": RULE_NAMES.get(rule or "", rule or ""),
                "count": n,
            }
            for (issuer, inst, item, rule), n in scope.most_common()
        ],
        fix_final=[
            {
                "issuer": issuer or "",
                "issuer_name": _name(registry, issuer),
                "item_id": item or "",
                "count": n,
            }
            for (issuer, item), n in final.most_common()
        ],
        in_review=reasons.get("link-in-review", 0),
        complete=facts.complete,
    )


#: Which fix list each reason links to.
FIX_ANCHORS: Final[Mapping[str, str]] = {
    "issuer-not-qualified": "#fix-hr",
    "not-in-catalog": "#fix-catalog",
    "outside-window": "#fix-window",
    "scope-not-satisfied": "#fix-scope",
    "result-not-final": "#fix-final",
}


@auth.require("region", "steward")
async def reasons_page(request: web.Request) -> web.StreamResponse:
    query = parse_query(request)
    ctx = request.app[CONSOLE]
    cache: FiguresCache | None = ctx.extra.get("figures")
    if cache is None:
        return await render_error(
            request, 503, "未配置 Kafka（MRHUB_KAFKA__BOOTSTRAP_SERVERS），无法统计。"
        )
    user: User = request["user"]
    include = scope_filter(user, ctx.registry)
    try:
        found = await asyncio.wait_for(
            cache.run(lambda facts: compute_reasons(facts, query, ctx.registry, include)),
            timeout=PAGE_TIMEOUT_S,
        )
    except Exception:
        log.exception("reasons: reading the recognition topics failed")
        return await render_error(request, 503, "暂时无法读取互认数据，请稍后再试。")
    return await render(
        request,
        "reasons.html",
        {
            "q": query,
            "params": query.as_params(),
            "r": found,
            "anchors": FIX_ANCHORS,
            "scope_text": _scope_text(user, ctx.registry),
            "is_steward": user.role == "steward",
        },
    )


def setup(app: web.Application) -> None:
    """Add this module's routes to the console (and its cache, when Kafka is configured)."""
    ctx = app[CONSOLE]
    reads = MetricCounter(
        "mrhub_console_figures_reads_total",
        "Figures cache refreshes by outcome (unchanged: only the end offsets were asked; "
        "read: new records read; error).",
        ["outcome"],
        registry=ctx.metrics,
    )
    cached = Gauge(
        "mrhub_console_figures_orders",
        "Orders whose latest decision the figures cache holds.",
        registry=ctx.metrics,
    )
    bootstrap = ctx.settings.kafka.bootstrap_servers
    if bootstrap:
        cache = FiguresCache(lambda: KafkaSource(bootstrap), reads=reads, cached=cached)
        ctx.extra["figures"] = cache

    async def _close(app: web.Application) -> None:
        kept = app[CONSOLE].extra.get("figures")
        if isinstance(kept, FiguresCache):
            kept.close()

    app.on_cleanup.append(_close)
    ctx.extra["figures_metrics"] = (reads, cached)
    app.router.add_get("/figures", figures_page)
    app.router.add_get("/figures.csv", figures_csv)
    app.router.add_get("/reasons", reasons_page)
