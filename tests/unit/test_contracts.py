"""One home per contract (issue 17): every event type, its topic, key and payload schema are
defined once in services/common/topics.py; docs/events.md and docs/schemas/ agree with it, and
what the producers write fits it."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, get_args

import jsonschema
import pytest

from services.common.audit import Purpose, access_event
from services.common.envelope import Envelope
from services.common.topics import (
    ALL_EVENTS,
    ALL_TOPICS,
    DOCS_DIR,
    WRITE_REFUSED,
    EventSpec,
    with_events_table,
)
from tests.conftest import REPO

SCHEMAS = REPO / "docs" / "schemas"
EVENTS_MD = REPO / "docs" / "events.md"


def _schema(ev: EventSpec) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((SCHEMAS / ev.schema).read_text("utf-8"))
    return doc


def test_the_docs_dir_the_definitions_name_is_this_checkout() -> None:
    assert DOCS_DIR == REPO / "docs"


def test_events_md_overview_table_is_the_generated_one() -> None:
    text = EVENTS_MD.read_text("utf-8")
    assert with_events_table(text) == text, "run: python -m services.common.topics"


def test_every_event_type_is_its_topic_name_without_version_and_unique() -> None:
    types = [ev.event_type for ev in ALL_EVENTS]
    assert len(set(types)) == len(types)
    public = [t for t in ALL_TOPICS if t.schema is not None]
    assert [t.event_type for t in public] == [t.name.removesuffix(".v1") for t in public]
    assert WRITE_REFUSED.event_type == "mrhub.audit.write-refused"


def test_every_schema_file_belongs_to_exactly_one_event_and_is_valid() -> None:
    files = sorted(p.name for p in SCHEMAS.glob("*.json"))
    assert files == sorted(ev.schema for ev in ALL_EVENTS)
    for ev in ALL_EVENTS:
        schema = _schema(ev)
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema["$id"] == f"urn:mrhub:schema:{ev.schema.removesuffix('.json')}"
        assert schema["title"].startswith((ev.topic.name, ev.event_type)), ev.schema
        assert set(schema["required"]) <= set(schema["properties"]), ev.schema


def _payload_fields(text: str, anchor: str) -> set[str]:
    """The field names of the first ``| field | type | meaning |`` table after ``anchor``."""
    rest = text[text.index(anchor) :]
    table = rest[rest.index("| field | type | meaning |") :]
    fields: set[str] = set()
    for line in table.splitlines()[2:]:
        if not line.startswith("|"):
            break
        fields.update(re.findall(r"`([a-z_]+)`", line.split("|")[1]))
    return fields


def _anchor(ev: EventSpec) -> str:
    if ev is WRITE_REFUSED:
        return "**Refused writes**"
    return next(
        line
        for line in EVENTS_MD.read_text("utf-8").splitlines()
        if line.startswith("## ") and f"`{ev.topic.name}`" in line
    )


def test_each_payload_table_of_events_md_lists_exactly_its_schemas_fields() -> None:
    text = EVENTS_MD.read_text("utf-8")
    by_anchor: dict[str, set[str]] = {}
    for ev in ALL_EVENTS:  # result-indexed and order-placed share one table
        by_anchor.setdefault(_anchor(ev), set()).update(_schema(ev)["properties"])
    differences = {
        anchor: fields ^ _payload_fields(text, anchor) for anchor, fields in by_anchor.items()
    }
    assert {a: d for a, d in differences.items() if d} == {}


def valid(ev: EventSpec, env: Envelope) -> None:
    """``env`` is an ``ev`` event whose payload, as a consumer reads it, fits the schema."""
    assert env.event_type == ev.event_type
    payload = json.loads(env.to_bytes())["payload"]  # as a consumer reads it
    jsonschema.Draft202012Validator(
        _schema(ev), format_checker=jsonschema.FormatChecker()
    ).validate(payload)


def test_a_read_audit_event_fits_the_access_recorded_schema() -> None:
    [ev] = [e for e in ALL_EVENTS if e.event_type == "mrhub.audit.access-recorded"]
    env = access_event(
        reader="12140000405001730E",
        route="/recognition/check",
        purpose="recognition-check",
        master_patient_id=None,
        shown_institutions=["12140100405128360L", "12140000405001730E"],
        items=2,
        outcome="recognisable",
        query={"item": "210300001"},
        at=datetime(2026, 11, 20, 2, 0, tzinfo=UTC),
    )
    valid(ev, env)
    assert env.payload["shown_institutions"] == ["12140100405128360L"]


def test_the_access_recorded_schema_lists_every_purpose_the_code_may_write() -> None:
    [ev] = [e for e in ALL_EVENTS if e.event_type == "mrhub.audit.access-recorded"]
    assert _schema(ev)["properties"]["purpose"]["enum"] == list(get_args(Purpose))


@pytest.mark.parametrize("source", ["12140000405001730E", "steward"])
def test_envelope_headers_carry_the_documented_five_with_source(source: str) -> None:
    env = Envelope(event_type="mrhub.x.y", source=source, payload={})
    headers = dict(env.headers())
    assert list(headers) == ["event_type", "event_id", "trace_id", "schema_version", "source"]
    assert headers["source"] == source.encode()
    assert headers["event_type"] == b"mrhub.x.y"


def test_no_producer_writes_an_event_type_literal_or_derives_one() -> None:
    """The event type strings live in topics.py only: not in a service, not in the tools."""
    literal = re.compile(r"""["']mrhub\.[a-z_]+\.[a-z-]+["']""")
    offenders = []
    sources = [*(REPO / "services").rglob("*.py"), *(REPO / "mrhub_tools").rglob("*.py")]
    for path in sorted(sources):
        rel = path.relative_to(REPO).as_posix()
        if rel == "services/common/topics.py":
            continue
        text = Path(path).read_text("utf-8")
        if literal.search(text) or 'name.rsplit(".", 1)' in text:
            offenders.append(rel)
    assert offenders == []
