"""Revocation reaches the readers: a token issued while the hub runs opens the gateway, the
recognition check and the imaging search without a restart, and once revoked it opens none
of them (before, only the gateway reloaded the registry: a revoked token still read at
8081 and 8082 until those workers restarted)."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

from services.common.institutions import Registry, issue_token, revoke_tokens
from tests.fhir_samples import dumps, gb11643, observation
from tests.security.conftest import A2, CARD_SYSTEM, FHIR, A, B, C, SecurityHub

CARD = gb11643("14010519700105001")


def _calls(hub: SecurityHub, token: str, institution: str) -> dict[str, Callable[[], int]]:
    auth = {"Authorization": f"Bearer {token}"}
    patient = f"{CARD_SYSTEM}|{CARD}"

    def gateway() -> int:
        doc = observation(
            institution, subject={"identifier": {"system": CARD_SYSTEM, "value": CARD}}
        )
        return httpx.post(
            f"{hub.gateway}/fhir/Observation",
            content=dumps(doc),
            headers={**auth, "Content-Type": FHIR},
            timeout=30,
        ).status_code

    def check() -> int:
        return httpx.get(
            f"{hub.url('recognition')}/recognition/check",
            params={"patient": patient, "code": "http://loinc.org|2823-3"},
            headers=auth,
            timeout=30,
        ).status_code

    def imaging() -> int:
        return httpx.post(
            f"{hub.url('imaging')}/fhir/ImagingStudy/_search",
            data={"patient": patient},
            headers=auth,
            timeout=30,
        ).status_code

    return {"gateway": gateway, "recognition": check, "imaging": imaging}


def _until(calls: dict[str, Callable[[], int]], want: Callable[[int], bool]) -> dict[str, float]:
    """Seconds until each call's status satisfies ``want`` (fails after a deadline)."""
    started = time.monotonic()
    took: dict[str, float] = {}
    while len(took) < len(calls):
        for name, call in calls.items():
            if name not in took and want(call()):
                took[name] = time.monotonic() - started
        assert time.monotonic() - started < 60, f"only {sorted(took)} changed in 60 s"
        time.sleep(0.1)
    return took


def test_an_issued_token_opens_every_service_and_a_revoked_one_none(
    security_hub: SecurityHub,
) -> None:
    registry = Registry.load(security_hub.registry)
    newcomer = next(i for i in registry.ids if i not in (A, A2, B, C))
    token = issue_token(security_hub.registry, newcomer)
    calls = _calls(security_hub, token, newcomer)
    _until(calls, lambda status: status != 401)
    assert calls["gateway"]() == 201
    assert calls["recognition"]() == 200
    assert calls["imaging"]() == 200

    assert revoke_tokens(security_hub.registry, newcomer) == 1
    _until(calls, lambda status: status == 401)
    # and it stays out
    assert {name: call() for name, call in calls.items()} == {
        "gateway": 401,
        "recognition": 401,
        "imaging": 401,
    }
