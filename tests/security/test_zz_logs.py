"""Runs last in the attack suite (the file name sorts last): after every attack above, no log
line of any service holds a 身份证 number, a mobile phone number or a patient's name."""

from __future__ import annotations

import re

from tests.security.conftest import SERVICES, SecurityHub

_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CANDIDATE = re.compile(r"(?<!\d)\d{17}[\dX](?![\dX])")
_MOBILE = re.compile(r"(?<!\d)1[3-9]\d{9}(?!\d)")
#: names the suite's patients carry (tests/fhir_samples.py and the attack modules)
NAMES = ("王芳", "刘洋", "劉洋", "Liu Yang")


def _valid_id_card(text: str) -> bool:
    total = sum(int(c) * w for c, w in zip(text[:17], _WEIGHTS, strict=True))
    return "10X98765432"[total % 11] == text[17]


def test_no_service_log_holds_an_id_number_a_phone_number_or_a_name(
    security_hub: SecurityHub,
) -> None:
    found = []
    for name in SERVICES:
        path = security_hub.log(name)
        text = path.read_text(errors="replace") if path.exists() else ""
        assert text, f"{name} wrote no log at all"
        found += [(name, m) for m in _CANDIDATE.findall(text) if _valid_id_card(m)]
        found += [(name, m) for m in _MOBILE.findall(text)]
        found += [(name, n) for n in NAMES if n in text]
    assert found == []
