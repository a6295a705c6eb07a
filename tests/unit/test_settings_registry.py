"""The institution registry path is one setting, ``MRHUB_INSTITUTIONS_PATH``, read by every
service (issue 17: it was three)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from services.common.settings import Settings


def test_one_variable_sets_the_registry_for_every_service(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MRHUB_INSTITUTIONS_PATH", "/etc/mrhub/institutions.yaml")
    assert Settings().institutions_path == Path("/etc/mrhub/institutions.yaml")
    for section in ("ingest", "recognition", "imaging"):
        assert "institutions_path" not in type(getattr(Settings(), section)).model_fields


def test_the_replaced_per_service_names_still_set_it_while_they_agree(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MRHUB_INGEST__INSTITUTIONS_PATH", "/a.yaml")
    monkeypatch.setenv("MRHUB_IMAGING__INSTITUTIONS_PATH", "/a.yaml")
    assert Settings().institutions_path == Path("/a.yaml")


def test_the_one_variable_wins_over_a_replaced_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MRHUB_INGEST__INSTITUTIONS_PATH", "/old.yaml")
    monkeypatch.setenv("MRHUB_INSTITUTIONS_PATH", "/new.yaml")
    assert Settings().institutions_path == Path("/new.yaml")


def test_two_registry_files_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MRHUB_INGEST__INSTITUTIONS_PATH", "/a.yaml")
    monkeypatch.setenv("MRHUB_RECOGNITION__INSTITUTIONS_PATH", "/b.yaml")
    with pytest.raises(ValidationError, match="set MRHUB_INSTITUTIONS_PATH only"):
        Settings()
