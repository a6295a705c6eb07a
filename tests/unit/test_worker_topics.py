"""The topics a worker creates for itself before it subscribes (decision 0004): every
internal stage topic and every table changelog, with the hub's partition count, and
changelogs compacted so that a restore reads each key's last value only."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.faust_app import own_topics
from services.common.settings import Settings


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("MRHUB_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:9")
    monkeypatch.setenv("MRHUB_IDENTITY__HMAC_KEY", "unit-test-key")
    monkeypatch.setenv("MRHUB_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("MRHUB_TOPIC_PARTITIONS", "4")
    return Settings()


def test_the_patient_index_creates_its_five_stage_topics_and_its_changelogs(
    settings: Settings,
) -> None:
    from services.patient_index.app import create_app

    topics = {t.name: t for t in own_topics(create_app(settings))}
    stages = {n for n in topics if not n.endswith("-changelog")}
    assert stages == {
        f"mrhub-patient-index-by-{s}" for s in ("identity", "block", "record", "master", "study")
    }
    changelogs = [t for n, t in topics.items() if n.endswith("-changelog")]
    tables = {
        "identities",
        "seen",
        "blocks",
        "deciders",
        "reviews",
        "masters",
        "master_records",
        "published",
        "study_owners",
    }
    assert {t.name for t in changelogs} == {
        f"mrhub-patient-index-{name}-changelog" for name in tables
    }
    assert all(t.config["cleanup.policy"] == "compact" for t in changelogs)
    assert all("cleanup.policy" not in topics[n].config for n in stages)
    assert {t.partitions for t in topics.values()} == {4}
    # a master's records are one entry each (master_records), so no value grows with a
    # patient's history: no changelog needs more than the broker's default message size
    assert all("max.message.bytes" not in t.config for t in changelogs)


def test_recognition_creates_its_forget_topic_and_its_changelogs_not_public_topics(
    settings: Settings,
) -> None:
    from services.recognition.app import create_app

    names = {t.name for t in own_topics(create_app(settings))}
    assert names == {
        "mrhub-recognition-forget",
        "mrhub-recognition-results-changelog",
        "mrhub-recognition-orders-changelog",
        # for FHIR reads (docs/sharing.md): orders, decisions, id → where it is kept
        "mrhub-recognition-requests-changelog",
        "mrhub-recognition-issues-changelog",
        "mrhub-recognition-records-changelog",
    }
