"""Resolve a patient as a caller names it to the master patient id, through the patient index.

Recognition checks and imaging searches take the patient as a hospital knows her: a master
patient id (``MP`` + 24 hex), any identifier written ``<system>|<value>`` (a hospital's own
numbers are read in the caller's scope), or a bare 身份证 number. Only the patient index can
normalise and key an identifier and knows which master it names, so the other services ask
it: ``POST {MRHUB_PATIENT_INDEX__URL}/internal/resolve`` with the patient and the caller in a
JSON body (never in a URL, which proxies and clients log), answered by
any worker (it forwards to the owner of the identifier, then of the master).

The call carries a service token derived from the hub's HMAC key (every service that handles
identifiers holds that key already), so no further secret is configured and a hospital's
token does not open this door. The identifier travels once, over loopback or the cluster
network, and is never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp

from services.common.settings import Settings

__all__ = [
    "LookupUnavailable",
    "PatientLookup",
    "Resolved",
    "internal_token",
    "is_master_id",
]

Grade = Literal["certain", "probable"]


def internal_token(settings: Settings) -> str:
    """The bearer token services use with each other (an HMAC of a fixed label)."""
    if settings.identity.hmac_key is None:
        raise RuntimeError("MRHUB_IDENTITY__HMAC_KEY is not set")
    key = settings.identity.hmac_key.get_secret_value().encode()
    return "mrhi_" + hmac.new(key, b"mrhub-internal-v1", hashlib.sha256).hexdigest()


def is_master_id(value: str) -> bool:
    """``MP`` followed by 24 lower-case hex digits."""
    return (
        value.startswith("MP")
        and len(value) == 26
        and all(c in "0123456789abcdef" for c in value[2:])
    )


@dataclass(frozen=True, slots=True)
class Resolved:
    """The surviving master patient id of the patient named, and how sure the link is:
    ``certain`` for a verified document or card, ``probable`` for a weaker identifier."""

    master_patient_id: str
    grade: Grade


class LookupUnavailable(Exception):
    """The patient index did not answer (down, starting, rebalancing): answer 503."""


class PatientLookup:
    """An HTTP client for the patient index's resolve endpoint (one per process; create it
    in a running event loop).

    aiohttp, not httpx: under a few hundred concurrent checks httpx's connection pool
    spends its time matching queued requests to connections (quadratic in the queue), 75 %
    of a recognition worker's CPU at 500 checks/s (issue 15).
    """

    def __init__(self, settings: Settings, *, timeout_s: float = 5.0) -> None:
        self._base = settings.patient_index.url.rstrip("/")
        self._session = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {internal_token(settings)}"},
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            connector=aiohttp.TCPConnector(limit=64, ttl_dns_cache=300),
            cookie_jar=aiohttp.DummyCookieJar(),
            raise_for_status=False,
        )

    async def resolve(self, patient: str, institution: str) -> Resolved | None:
        """The master for ``patient`` (see the module doc), or ``None`` if nobody knows it.

        Raises ``ValueError`` when ``patient`` cannot name anybody (an unknown shape, a
        failing 身份证 checksum), with the patient index's explanation.
        """
        try:
            # in the body, never in the URL: URLs end up in proxies' and clients' logs
            async with self._session.post(
                f"{self._base}/internal/resolve",
                json={"patient": patient, "institution": institution},
            ) as answer:
                status = answer.status
                body = await answer.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            why = f"the patient index did not answer ({type(exc).__name__})"
            raise LookupUnavailable(why) from exc
        if status == 404:
            return None
        if status in (400, 422):
            raise ValueError(_diagnostics(status, body))
        if status != 200:
            raise LookupUnavailable(f"the patient index answered {status}")
        doc = _json(body)
        if not isinstance(doc, dict):
            raise LookupUnavailable("the patient index answered something that is not JSON")
        return Resolved(doc["master_patient_id"], doc["grade"])

    async def aclose(self) -> None:
        await self._session.close()


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


def _diagnostics(status: int, body: bytes) -> str:
    try:
        return str(_json(body)["issue"][0]["diagnostics"])
    except (KeyError, IndexError, TypeError):
        return f"the patient index refused the identifier ({status})"
