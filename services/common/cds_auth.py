"""The JWT a CDS Hooks client signs to call the hub's CDS services (CDS Hooks 2.0, "Trusting
CDS Clients"; docs/cds-hooks.md, "Authentication").

A hospital's HIS registers each of its CDS clients in the institution registry
(``cds_clients``: the ``iss`` it signs as and its public JSON Web Key Set). Every call to
``/cds-services…`` then carries ``Authorization: Bearer <JWT>`` and :class:`JwtVerifier`
accepts it only when all of these hold (each refusal is a :class:`JwtRefused` saying which):

- the header's ``alg`` is ES384 or RS384 (never ``none``, never an HMAC: the spec forbids
  symmetric algorithms), ``kid`` names a key of the client's JWK Set (a key whose ``alg``
  member names another algorithm is not used), ``typ`` is ``JWT`` when given;
- ``iss`` is registered for exactly one institution;
- the signature verifies with that key;
- ``aud`` (a string or a list) holds the URL the client called: the hub's public base
  (:func:`services.common.forwarding.trusted_base`) and the path;
- ``exp`` is present, in the future, and at most :data:`MAX_LIFETIME_S` ahead; ``iat`` is
  present and not in the future (both with :data:`LEEWAY_S` of clock skew);
- ``jti`` is present and has not been seen from this ``iss`` while an earlier JWT with it
  could still be valid (a bounded cache: when it is full of unexpired entries the JWT is
  refused rather than let through unchecked).

The verifier is pure apart from its replay cache and the clock it is given.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import jwt
from jwt import PyJWK

if TYPE_CHECKING:  # the registry imports this module to check its JWK Sets
    from services.common.institutions import CdsClient, Institution

__all__ = [
    "ALGORITHMS",
    "LEEWAY_S",
    "MAX_JWT_CHARS",
    "MAX_LIFETIME_S",
    "JwtRefused",
    "JwtVerifier",
    "ReplayCache",
    "jwks_problems",
    "looks_like_jwt",
]

#: The algorithms CDS Hooks 2.0 recommends, and the only ones taken.
ALGORITHMS: Final = ("ES384", "RS384")
#: The longest ``exp`` may lie ahead of ``now`` (the spec's example clients sign per call).
MAX_LIFETIME_S: Final = 300
#: Clock skew tolerated on ``exp`` and ``iat``.
LEEWAY_S: Final = 30
#: Longest JWT read (an RS384 JWT with a 4096-bit key is under 1,200 characters).
MAX_JWT_CHARS: Final = 4096
#: Distinct ``(iss, jti)`` remembered at most.
REPLAY_CACHE_SIZE: Final = 100_000
_KEY_TYPES: Final = {"ES384": "EC", "RS384": "RSA"}
_PRIVATE_MEMBERS: Final = frozenset({"d", "p", "q", "dp", "dq", "qi", "k", "oth"})


class JwtRefused(Exception):
    """Why a JWT is not accepted (said to the caller: it names no secret)."""


def looks_like_jwt(token: str) -> bool:
    """Three base64url parts: a JWT, not a hub token (``mrh_…``, no dots)."""
    return token.count(".") == 2 and 0 < len(token) <= MAX_JWT_CHARS


def jwks_problems(jwks: dict[str, Any]) -> list[str]:
    """What is wrong with a registered JWK Set (for the registry's load)."""
    keys = jwks.get("keys")
    if not isinstance(keys, list) or not keys:
        return ['jwks: must be {"keys": [JWK, ...]} with at least one key']
    found: list[str] = []
    kids: set[str] = set()
    for n, key in enumerate(keys):
        where = f"jwks.keys[{n}]"
        if not isinstance(key, dict):
            found.append(f"{where}: must be a JSON Web Key object")
            continue
        kid = key.get("kid")
        if not isinstance(kid, str) or not kid:
            found.append(f"{where}: needs a kid (CDS Hooks clients name their key in the JWT)")
        elif kid in kids:
            found.append(f"{where}: kid {kid!r} is given twice")
        else:
            kids.add(kid)
        if _PRIVATE_MEMBERS & key.keys():
            found.append(f"{where}: holds private key members; register the public key only")
        if key.get("kty") not in ("EC", "RSA"):
            found.append(f"{where}: kty must be EC (ES384) or RSA (RS384)")
            continue
        if "alg" in key and key["alg"] not in ALGORITHMS:
            found.append(f"{where}: alg must be one of {', '.join(ALGORITHMS)}")
            continue
        try:
            PyJWK(key, key.get("alg") or ("ES384" if key["kty"] == "EC" else "RS384"))
        except (jwt.PyJWTError, ValueError, TypeError, KeyError):
            found.append(f"{where}: not a usable {key['kty']} public key")
    return found


class ReplayCache:
    """``(iss, jti)`` → ``exp`` of the JWTs seen, at most ``size`` of them. Entries leave once
    expired; a full cache of live entries refuses new JWTs (fail closed)."""

    def __init__(self, size: int = REPLAY_CACHE_SIZE) -> None:
        self._seen: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._size = size

    def __len__(self) -> int:
        return len(self._seen)

    def add(self, iss: str, jti: str, exp: float, now: float) -> None:
        """Record a JWT; :class:`JwtRefused` when it was seen before or there is no room."""
        key = (iss, jti)
        seen = self._seen.get(key)
        if seen is not None and seen + LEEWAY_S >= now:
            raise JwtRefused("this JWT's jti was used before; sign a new JWT for every call")
        if len(self._seen) >= self._size:
            self._evict(now)
            if len(self._seen) >= self._size:
                raise JwtRefused("too many JWTs in flight; try again shortly")
        self._seen[key] = exp
        self._seen.move_to_end(key)

    def _evict(self, now: float) -> None:
        for key in [k for k, exp in self._seen.items() if exp + LEEWAY_S < now]:
            del self._seen[key]


@dataclass(frozen=True, slots=True)
class _Client:
    institution: Institution
    client: CdsClient


class JwtVerifier:
    """Checks CDS clients' JWTs against the registry's ``cds_clients`` (see the module)."""

    def __init__(
        self,
        institutions: Callable[[], Iterable[Institution]],
        *,
        clock: Callable[[], float] = time.time,
        replay: ReplayCache | None = None,
    ) -> None:
        self._institutions = institutions
        self._clock = clock
        self._replay = replay if replay is not None else ReplayCache()
        self._keys: dict[tuple[str, str, str], PyJWK] = {}

    def _client(self, iss: str) -> _Client:
        found = [
            _Client(inst, client)
            for inst in self._institutions()
            for client in inst.cds_clients
            if client.iss == iss
        ]
        if len(found) != 1:
            # unknown, or (a registry mistake) claimed by two institutions: trust neither
            raise JwtRefused("the JWT's iss is not a registered CDS client")
        return found[0]

    def _key(self, client: CdsClient, kid: str, alg: str) -> PyJWK:
        for key in client.jwks.get("keys") or ():
            if not isinstance(key, dict) or key.get("kid") != kid:
                continue
            if key.get("alg", alg) != alg or key.get("kty") != _KEY_TYPES[alg]:
                raise JwtRefused(f"key {kid!r} is not registered for {alg}")
            cache_key = (client.iss, kid, json.dumps(key, sort_keys=True))
            parsed = self._keys.get(cache_key)
            if parsed is None:
                try:
                    parsed = PyJWK(key, alg)
                except (jwt.PyJWTError, ValueError, TypeError, KeyError):
                    raise JwtRefused(f"key {kid!r} of this client is not usable") from None
                if len(self._keys) > 1_000:
                    self._keys.clear()
                self._keys[cache_key] = parsed
            return parsed
        raise JwtRefused("the JWT's kid names no key registered for its iss")

    def verify(self, token: str, audience: str) -> Institution:
        """The institution whose registered client signed ``token`` for ``audience``."""
        if not looks_like_jwt(token):
            raise JwtRefused("not a JWT")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise JwtRefused("the JWT's header is not readable") from None
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise JwtRefused(f"alg must be one of {', '.join(ALGORITHMS)}")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise JwtRefused("the JWT's header needs a kid")
        if header.get("typ", "JWT") != "JWT":
            raise JwtRefused("the JWT's typ must be JWT")
        try:
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise JwtRefused("the JWT's payload is not readable") from None
        iss = unverified.get("iss")
        if not isinstance(iss, str) or not iss:
            raise JwtRefused("the JWT needs an iss")
        found = self._client(iss)
        key = self._key(found.client, kid, alg)
        now = self._clock()
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=audience,
                issuer=iss,
                leeway=LEEWAY_S,
                options={"require": ["iss", "aud", "exp", "iat", "jti"], "verify_iat": True},
            )
        except jwt.InvalidSignatureError:
            raise JwtRefused("the JWT's signature does not verify") from None
        except jwt.ExpiredSignatureError:
            raise JwtRefused("the JWT has expired") from None
        except jwt.InvalidAudienceError:
            raise JwtRefused(f"the JWT's aud must be {audience}") from None
        except jwt.MissingRequiredClaimError as exc:
            raise JwtRefused(f"the JWT needs the claim {exc.claim}") from None
        except jwt.ImmatureSignatureError:
            raise JwtRefused("the JWT's iat is in the future") from None
        except jwt.PyJWTError as exc:
            raise JwtRefused(f"the JWT is not valid ({type(exc).__name__})") from None
        exp, iat, jti = claims["exp"], claims["iat"], claims["jti"]
        if not isinstance(exp, int | float) or exp > now + MAX_LIFETIME_S + LEEWAY_S:
            raise JwtRefused(f"the JWT's exp is more than {MAX_LIFETIME_S} s ahead")
        if not isinstance(iat, int | float) or iat > now + LEEWAY_S:
            raise JwtRefused("the JWT's iat is in the future")
        if not isinstance(jti, str) or not jti or len(jti) > 256:
            raise JwtRefused("the JWT's jti must be a string of 1 to 256 characters")
        self._replay.add(iss, jti, float(exp), now)
        return found.institution
