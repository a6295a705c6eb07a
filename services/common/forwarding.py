"""How the gateway hands a hospital's read or CDS Hooks call to the recognition service.

The gateway (port 8080) is the hospitals' one entry: it forwards ``/fhir/<read types>`` and
``/cds-services…`` to ``MRHUB_RECOGNITION__URL`` with the caller's ``Authorization`` header
unchanged (recognition authenticates the caller itself) and two headers of its own:

- :data:`PUBLIC_BASE_HEADER`: where hospitals reach the hub (``https://hub.example``), so the
  links, ``fullUrl`` s and a CDS JWT's ``aud`` are checked and written against the address
  the caller used, not the worker's;
- :data:`FORWARDED_BY_HEADER`: the services' internal token, which proves the first header
  came from the gateway. Without it (a caller on the worker port) the header is ignored.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Mapping
from typing import Final

from services.common.patient_lookup import internal_token
from services.common.settings import Settings

__all__ = ["FORWARDED_BY_HEADER", "PUBLIC_BASE_HEADER", "forwarded_headers", "trusted_base"]

PUBLIC_BASE_HEADER: Final = "X-Mrhub-Public-Base"
FORWARDED_BY_HEADER: Final = "X-Mrhub-Forwarded-By"
_BASE: Final = re.compile(r"^https?://[^/?#\s]+(/[^?#\s]*)?$")


def forwarded_headers(settings: Settings, public_base: str) -> dict[str, str]:
    """The two headers the gateway adds to a forwarded request."""
    return {
        PUBLIC_BASE_HEADER: public_base.rstrip("/"),
        FORWARDED_BY_HEADER: internal_token(settings),
    }


def trusted_base(headers: Mapping[str, str], settings: Settings, own_base: str) -> str:
    """The hub's public base for this request (no trailing ``/``): the gateway's, when the
    request carries it with a valid internal token; ``own_base`` otherwise."""
    base = headers.get(PUBLIC_BASE_HEADER, "")
    given = headers.get(FORWARDED_BY_HEADER, "")
    if base and given and _BASE.fullmatch(base) and settings.identity.hmac_key is not None:
        expected = internal_token(settings)
        if hmac.compare_digest(given.encode(), expected.encode()):
            return base.rstrip("/")
    return own_base.rstrip("/")
