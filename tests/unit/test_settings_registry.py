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


@pytest.mark.parametrize("section", ["INGEST", "RECOGNITION", "IMAGING"])
def test_a_replaced_per_service_name_is_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, section: str
) -> None:
    """A deployment that still sets the old name learns it at start-up instead of silently
    reading config/institutions.yaml."""
    monkeypatch.setenv(f"MRHUB_{section}__INSTITUTIONS_PATH", "/a.yaml")
    with pytest.raises(ValidationError, match=f"MRHUB_{section}__INSTITUTIONS_PATH is no longer"):
        Settings()
