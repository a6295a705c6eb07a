"""``mrhub report``: the figures a province publishes, per region and category.

Reads ``mrhub.recognition.decision-made.v1`` and ``mrhub.recognition.feedback-recorded.v1``
from the beginning (committed data only), keeps the latest decision of each order (the one
with the highest ``revision``) and counts, per region (the ordering institution's
prefecture) and category: orders decided, orders recognisable, the recognition rate, the
estimated yuan saved, and the doctors' feedback (recognised, re-ordered by reason).

``--since`` / ``--until`` (ISO dates, UTC) limit the decisions and feedback counted;
``--json`` prints the same figures as one JSON object.
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any

from services.common import codec, figures
from services.common.envelope import Envelope
from services.common.errors import ConfigError
from services.common.institutions import Registry
from services.common.settings import Settings
from services.common.topics import DECISION_MADE, FEEDBACK_RECORDED

__all__ = ["Row", "add_parser", "row_of", "summarise"]


@dataclass
class Row:
    region: str
    category: str
    orders: int = 0
    recognisable: int = 0
    saving_yuan: Decimal = Decimal(0)
    recognised_feedback: int = 0
    reordered: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)

    @property
    def rate(self) -> float:
        return self.recognisable / self.orders if self.orders else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "region": self.region,
            "category": self.category,
            "orders": self.orders,
            "recognisable": self.recognisable,
            "recognition_rate": round(self.rate, 4),
            "saving_yuan": self.saving_yuan,
            "not_recognisable_by_reason": dict(sorted(self.reasons.items())),
            "feedback_recognised": self.recognised_feedback,
            "feedback_reordered_by_reason": dict(sorted(self.reordered.items())),
        }


def summarise(
    decisions: Iterable[dict[str, Any]],
    feedback: Iterable[dict[str, Any]],
    registry: Registry,
    *,
    since: date | None = None,
    until: date | None = None,
) -> list[Row]:
    """Rows per (region, category), sorted. ``decisions`` and ``feedback`` are payloads;
    the counting is :func:`services.common.figures.count`'s (the console's too)."""
    latest = figures.Latest()
    for d in decisions:
        latest.add(figures.order_fact(d))
    tallies = figures.count(
        latest.values(),
        (figures.feedback_fact(f) for f in feedback),
        registry,
        by=("prefecture", "category"),
        since=since,
        until=until,
    )
    return [row_of(t) for t in tallies]


def row_of(t: figures.Tally) -> Row:
    """A (prefecture, category) tally as a report row."""
    region, category = t.key
    return Row(
        region,
        category,
        orders=t.orders,
        recognisable=t.recognisable,
        saving_yuan=t.saving_yuan,
        recognised_feedback=t.recognised_feedback,
        reordered=t.reordered,
        reasons=t.reasons,
    )


def _payloads(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    from services.common.kafka_read import read_topic

    out = []
    for record in read_topic(bootstrap, topic):
        env = Envelope.from_bytes(record.value)
        out.append({**env.payload, "recorded_at": env.occurred_at.isoformat()})
    return out


def _table(rows: list[Row]) -> str:
    head = ("region", "category", "orders", "recognisable", "rate", "saved ¥", "re-ordered")
    lines = [head]
    for r in rows:
        lines.append(
            (
                r.region,
                r.category,
                str(r.orders),
                str(r.recognisable),
                f"{r.rate:.1%}",
                f"{r.saving_yuan:,.2f}",
                str(sum(r.reordered.values())),
            )
        )
    total_orders = sum(r.orders for r in rows)
    total_rec = sum(r.recognisable for r in rows)
    saved = sum((r.saving_yuan for r in rows), Decimal(0))
    lines.append(
        (
            "all",
            "",
            str(total_orders),
            str(total_rec),
            f"{(total_rec / total_orders if total_orders else 0):.1%}",
            f"{saved:,.2f}",
            str(sum(sum(r.reordered.values()) for r in rows)),
        )
    )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join(
        "  ".join(
            c.ljust(w) if i < 2 else c.rjust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in lines
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    bootstrap = args.bootstrap or settings.kafka.bootstrap_servers
    if not bootstrap:
        raise ConfigError("give --bootstrap or set MRHUB_KAFKA__BOOTSTRAP_SERVERS")
    registry = Registry.load(settings.institutions_path)
    since = date.fromisoformat(args.since) if args.since else None
    until = date.fromisoformat(args.until) if args.until else None
    rows = summarise(
        _payloads(bootstrap, DECISION_MADE.name),
        _payloads(bootstrap, FEEDBACK_RECORDED.name),
        registry,
        since=since,
        until=until,
    )
    if args.json:
        doc = {
            "since": args.since,
            "until": args.until,
            "rows": [r.to_json() for r in rows],
            "orders": sum(r.orders for r in rows),
            "recognisable": sum(r.recognisable for r in rows),
            "saving_yuan": sum((r.saving_yuan for r in rows), Decimal(0)),
        }
        print(codec.pretty(doc))
    else:
        print(_table(rows))
    return 0


def add_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "report", help="recognitions and yuan saved per region and category, from the topics"
    )
    p.add_argument("--bootstrap", help="Kafka (default: MRHUB_KAFKA__BOOTSTRAP_SERVERS)")
    p.add_argument("--since", help="first day counted (ISO date, UTC)")
    p.add_argument("--until", help="last day counted (ISO date, UTC)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)
    return p
