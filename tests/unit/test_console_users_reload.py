"""The console's /readyz counts its people: a users file written after the console started
(``docker compose exec console mrhub console add-user …``, an updated Kubernetes Secret) must
make it ready, though nobody has tried to sign in yet (an unready pod gets no traffic, so no
sign-in could ever trigger the reload)."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.console import auth
from services.console.cli import add_user


def test_people_added_after_start_are_counted_without_a_sign_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]
    monkeypatch.setattr("services.console.auth.time.monotonic", lambda: clock[0])
    path = tmp_path / "console-users.yaml"
    users = auth.Users(path)
    assert len(users) == 0  # no file yet: not ready

    add_user(path, "li.steward", role="steward", password="correct horse battery")
    clock[0] += 2.0  # past the once-a-second check
    assert len(users) == 1

    add_user(path, "sx.viewer", role="hospital", scope="12140000405001730E", password="x" * 12)
    clock[0] += 2.0
    assert len(users) == 2
