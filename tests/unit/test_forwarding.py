"""The gateway's public base is trusted only with the internal token (an attacker on a worker
port cannot make the hub write links, or accept a JWT audience, of its choosing)."""

from __future__ import annotations

import pytest

from services.common.forwarding import (
    FORWARDED_BY_HEADER,
    PUBLIC_BASE_HEADER,
    forwarded_headers,
    trusted_base,
)
from services.common.settings import Settings

OWN = "http://127.0.0.1:8081"


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("MRHUB_IDENTITY__HMAC_KEY", "unit-test-key")
    return Settings()


def test_the_gateways_base_is_taken_with_its_token(settings: Settings) -> None:
    headers = forwarded_headers(settings, "https://hub.example/")
    assert trusted_base(headers, settings, OWN) == "https://hub.example"


def test_a_base_without_the_token_is_ignored(settings: Settings) -> None:
    assert trusted_base({PUBLIC_BASE_HEADER: "https://evil.example"}, settings, OWN) == OWN


def test_a_wrong_token_is_ignored(settings: Settings) -> None:
    headers = {PUBLIC_BASE_HEADER: "https://evil.example", FORWARDED_BY_HEADER: "mrhi_00"}
    assert trusted_base(headers, settings, OWN) == OWN


def test_a_base_that_is_no_url_is_ignored(settings: Settings) -> None:
    headers = forwarded_headers(settings, "https://hub.example")
    headers[PUBLIC_BASE_HEADER] = "javascript:alert(1)"
    assert trusted_base(headers, settings, OWN) == OWN
