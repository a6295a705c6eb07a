"""Resolve a patient as a caller names it to the master patient id, through the patient index.

Recognition checks and imaging searches take the patient as a hospital knows her: a master
patient id (``MP`` + 24 hex), any identifier written ``<system>|<value>`` (a hospital's own
numbers are read in the caller's scope), or a bare 身份证 number. Only the patient index can
normalise and key an identifier and knows which master it names, so the other services ask
it: ``POST {MRHUB_PATIENT_INDEX__URL}/internal/resolve`` with the patient and the caller in a
JSON body (never in a URL, which proxies and clients log), answered by
any worker (it forwards to the owner of the identifier, then of the master). The setting
names one worker or a comma-separated list of every worker's base URL; a resolve is a read,
so a worker that refuses the connection, does not accept it in time or drops it before
answering is skipped for the next (:mod:`services.common.upstreams`).

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
from services.common.upstreams import Upstreams

__all__ = [
    "LookupUnavailable",
    "PatientLookup",
    "Resolved",
    "internal_token",
    "is_master_id",
]

Grade = Literal["certain", "probable"]

#: Failures after which a resolve (a read) goes to the next worker: the connection was
#: refused or not accepted in time, or dropped before an answer (a worker stopping). A
#: worker that is merely slow to answer is not asked twice.
_NEXT_WORKER = (
    aiohttp.ClientConnectorError,
    aiohttp.ConnectionTimeoutError,
    aiohttp.ServerDisconnectedError,
)


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

    def __init__(
        self, settings: Settings, *, timeout_s: float = 5.0, connect_timeout_s: float = 2.0
    ) -> None:
        self._upstreams = Upstreams(settings.patient_index.url)
        self._session = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {internal_token(settings)}"},
            timeout=aiohttp.ClientTimeout(
                total=timeout_s, sock_connect=min(connect_timeout_s, timeout_s)
            ),
            connector=aiohttp.TCPConnector(limit=64, ttl_dns_cache=300),
            cookie_jar=aiohttp.DummyCookieJar(),
            raise_for_status=False,
        )

    async def resolve(self, patient: str, institution: str) -> Resolved | None:
        """The master for ``patient`` (see the module doc), or ``None`` if nobody knows it.

        Raises ``ValueError`` when ``patient`` cannot name anybody (an unknown shape, a
        failing 身份证 checksum), with the patient index's explanation.
        """
        failure: BaseException | None = None
        for base in self._upstreams.order():
            try:
                # in the body, never in the URL: URLs end up in proxies' and clients' logs
                async with self._session.post(
                    f"{base}/internal/resolve",
                    json={"patient": patient, "institution": institution},
                ) as answer:
                    status = answer.status
                    body = await answer.read()
            except _NEXT_WORKER as exc:  # a read: the next worker may answer it
                self._upstreams.failed(base)
                failure = exc
                continue
            except (aiohttp.ClientError, TimeoutError) as exc:
                why = f"the patient index did not answer ({type(exc).__name__})"
                raise LookupUnavailable(why) from exc
            self._upstreams.answered(base)
            break
        else:
            why = f"no worker of the patient index answered ({type(failure).__name__})"
            raise LookupUnavailable(why) from failure
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
