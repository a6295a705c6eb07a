"""The operator-facing docs list what the code actually does."""

from __future__ import annotations

from services.common.fhir import REASONS
from services.common.topics import ALL_TOPICS
from tests.conftest import REPO


def test_every_refusal_reason_is_documented() -> None:
    text = "".join(
        (REPO / "docs" / page).read_text(encoding="utf-8")
        for page in ("ingest.md", "patient-index.md")
    )
    missing = [r for r in REASONS if f"| `{r}` |" not in text]
    assert missing == []


def test_every_declared_topic_is_documented() -> None:
    text = (REPO / "docs" / "events.md").read_text(encoding="utf-8")
    assert [t.name for t in ALL_TOPICS if t.name not in text] == []
