"""A CDS client's JWT (services/common/cds_auth.py), attacked: every way CDS Hooks 2.0
("Trusting CDS Clients") says a JWT must be refused, each tried as an attacker would, next
to the one JWT that passes. And the registry refuses a JWK Set it could not use."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from services.common.cds_auth import (
    MAX_LIFETIME_S,
    JwtRefused,
    JwtVerifier,
    ReplayCache,
    jwks_problems,
)
from services.common.errors import ConfigError
from services.common.institutions import CdsClient, Institution, Registry

DEMO = Path(__file__).resolve().parents[2] / "config" / "institutions.yaml"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "cds-hooks"
B = "12140110405530210H"
C = "12140215406213786R"
ISS = "https://his.jyqrmyy.example-hospital.cn/cds-client"
AUD = "https://hub.example.cn/cds-services/mrhub-recognition-select"

EC_KEY = ec.generate_private_key(ec.SECP384R1())
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_EC_KEY = ec.generate_private_key(ec.SECP384R1())


def public_jwk(key: Any, kid: str, alg: str) -> dict[str, Any]:
    algo = ECAlgorithm(ECAlgorithm.SHA384) if alg == "ES384" else RSAAlgorithm(RSAAlgorithm.SHA384)
    jwk: dict[str, Any] = json.loads(algo.to_jwk(key.public_key()))
    return {**jwk, "kid": kid, "alg": alg, "use": "sig"}


JWKS = {"keys": [public_jwk(EC_KEY, "ec-1", "ES384"), public_jwk(RSA_KEY, "rsa-1", "RS384")]}


def registry(*clients: tuple[str, str, dict[str, Any]]) -> Registry:
    demo = list(Registry.load(DEMO))
    extra: dict[str, list[CdsClient]] = {}
    for inst_id, iss, jwks in clients:
        extra.setdefault(inst_id, []).append(CdsClient(iss=iss, jwks=jwks))
    out: list[Institution] = [
        i.model_copy(update={"cds_clients": tuple(extra[i.id])}) if i.id in extra else i
        for i in demo
    ]
    return Registry(out)


REGISTRY = registry((B, ISS, JWKS))


def claims(**change: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"iss": ISS, "aud": AUD, "exp": now + 60, "iat": now, "jti": uuid.uuid4().hex}
    out = {**base, **change}
    return {k: v for k, v in out.items() if v is not None}


def sign(
    payload: dict[str, Any], *, key: Any = EC_KEY, alg: str = "ES384", kid: str = "ec-1"
) -> str:
    return jwt.encode(payload, key, algorithm=alg, headers={"kid": kid, "typ": "JWT"})


def verifier(reg: Registry = REGISTRY, **kw: Any) -> JwtVerifier:
    return JwtVerifier(lambda: reg, **kw)


def refused(token: str, audience: str = AUD, check: JwtVerifier | None = None) -> str:
    with pytest.raises(JwtRefused) as caught:
        (check or verifier()).verify(token, audience)
    return str(caught.value)


# ── what passes ──────────────────────────────────────────────────────────────────────────


def test_a_registered_clients_es384_and_rs384_jwts_name_its_institution() -> None:
    check = verifier()
    assert check.verify(sign(claims()), AUD).id == B
    rs = sign(claims(), key=RSA_KEY, alg="RS384", kid="rsa-1")
    assert check.verify(rs, AUD).id == B
    # aud may be a list holding the endpoint (rfc7519 §4.1.3)
    assert check.verify(sign(claims(aud=["https://x.example", AUD])), AUD).id == B


# ── what an attacker tries ───────────────────────────────────────────────────────────────


def _b64(doc: dict[str, Any]) -> str:
    import base64

    raw = json.dumps(doc, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_alg_none_is_refused() -> None:
    token = f"{_b64({'alg': 'none', 'kid': 'ec-1', 'typ': 'JWT'})}.{_b64(claims())}."
    assert "alg must be one of ES384, RS384" in refused(token)


def test_an_hmac_signed_with_the_public_key_is_refused() -> None:
    """The classic confusion: HS384 keyed with the registered public key's bytes."""
    pem = EC_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "HS384", "kid": "ec-1", "typ": "JWT"}
    import base64
    import hashlib
    import hmac

    signing_input = f"{_b64(header)}.{_b64(claims())}"
    mac = hmac.new(pem, signing_input.encode(), hashlib.sha384).digest()
    token = f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
    assert "alg must be" in refused(token)


def test_another_algorithm_than_es384_or_rs384_is_refused() -> None:
    es256 = jwt.encode(
        claims(),
        ec.generate_private_key(ec.SECP256R1()),
        algorithm="ES256",
        headers={"kid": "ec-1"},
    )
    assert "alg must be" in refused(es256)
    # a key registered for ES384 does not verify an RS384 JWT naming it
    assert "not registered for RS384" in refused(sign(claims(), key=RSA_KEY, alg="RS384"))


def test_an_expired_jwt_is_refused() -> None:
    now = int(time.time())
    assert "expired" in refused(sign(claims(exp=now - 120, iat=now - 200)))


def test_a_jwt_valid_for_too_long_is_refused() -> None:
    far = int(time.time()) + MAX_LIFETIME_S + 600
    assert f"more than {MAX_LIFETIME_S} s ahead" in refused(sign(claims(exp=far)))


def test_a_jwt_for_another_endpoint_is_refused() -> None:
    other = "https://hub.example.cn/cds-services/mrhub-recognition-sign"
    assert f"aud must be {AUD}" in refused(sign(claims(aud=other)))
    assert "aud must be" in refused(sign(claims(aud="https://evil.example/cds-services")))


def test_an_unknown_issuer_is_refused() -> None:
    assert "iss is not a registered" in refused(sign(claims(iss="https://evil.example")))


def test_an_issuer_registered_twice_is_trusted_by_neither() -> None:
    twice = registry((B, ISS, JWKS), (C, ISS, JWKS))
    assert "iss is not a registered" in refused(sign(claims()), check=verifier(twice))


def test_a_bad_signature_is_refused() -> None:
    # signed by another key under the registered kid
    assert "signature does not verify" in refused(sign(claims(), key=OTHER_EC_KEY))
    # a registered client's token with its payload swapped
    good = sign(claims()).split(".")
    swapped = f"{good[0]}.{_b64(claims(iss=ISS, jti='other'))}.{good[2]}"
    assert "signature does not verify" in refused(swapped)


def test_a_replayed_jti_is_refused() -> None:
    check = verifier()
    token = sign(claims())
    assert check.verify(token, AUD).id == B
    assert "jti was used before" in refused(token, check=check)
    # and a new JWT reusing the jti
    same = claims(jti=jwt.decode(token, options={"verify_signature": False})["jti"])
    assert "jti was used before" in refused(sign(same), check=check)


@pytest.mark.parametrize("claim", ["jti", "exp", "iat", "aud"])
def test_a_missing_claim_is_refused(claim: str) -> None:
    assert f"needs the claim {claim}" in refused(sign(claims(**{claim: None})))


def test_a_missing_iss_or_kid_is_refused() -> None:
    assert "needs an iss" in refused(sign(claims(iss=None)))
    token = jwt.encode(claims(), EC_KEY, algorithm="ES384")
    assert "needs a kid" in refused(token)
    assert "kid names no key" in refused(sign(claims(), kid="nope"))


def test_an_iat_in_the_future_is_refused() -> None:
    assert "iat" in refused(sign(claims(iat=int(time.time()) + 3600)))


def test_the_specs_own_example_jwt_is_refused() -> None:
    example = json.loads((FIXTURES / "spec-jwt-example.json").read_text())
    # its issuer is not registered here …
    assert "iss is not a registered" in refused(example["token"], example["payload"]["aud"])
    # … and registered, it has long expired
    reg = registry((B, example["payload"]["iss"], example["jwks"]))
    got = refused(example["token"], example["payload"]["aud"], check=verifier(reg))
    assert "expired" in got or "signature" in got


def test_garbage_is_refused_without_an_exception_escaping() -> None:
    for token in ("a.b.c", "..", "x" * 5000, "e30.e30.", f"{_b64({'alg': 'ES384'})}.!!.x"):
        with pytest.raises(JwtRefused):
            verifier().verify(token, AUD)


def test_a_full_replay_cache_refuses_rather_than_forgets() -> None:
    cache = ReplayCache(size=2)
    now = time.time()
    cache.add("i", "1", now + 60, now)
    cache.add("i", "2", now + 60, now)
    with pytest.raises(JwtRefused, match="too many"):
        cache.add("i", "3", now + 60, now)
    # once the entries have expired they make room
    cache.add("i", "3", now + 60, now + 200)
    assert len(cache) == 1


# ── the registry ─────────────────────────────────────────────────────────────────────────


def test_the_registry_refuses_a_jwks_it_could_not_use() -> None:
    private = json.loads(ECAlgorithm(ECAlgorithm.SHA384).to_jwk(EC_KEY))
    cases: list[tuple[dict[str, Any], str]] = [
        ({}, "at least one key"),
        ({"keys": [{**public_jwk(EC_KEY, "k", "ES384"), "kid": ""}]}, "needs a kid"),
        ({"keys": [{**private, "kid": "k"}]}, "private key members"),
        ({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "k"}]}, "kty must be"),
        ({"keys": [{**public_jwk(EC_KEY, "k", "ES384"), "alg": "HS256"}]}, "alg must be"),
        ({"keys": [{"kty": "EC", "crv": "P-384", "x": "AA", "y": "AA", "kid": "k"}]}, "usable"),
        ({"keys": [public_jwk(EC_KEY, "k", "ES384"), public_jwk(RSA_KEY, "k", "RS384")]}, "twice"),
    ]
    for jwks, expected in cases:
        problems = jwks_problems(jwks)
        assert any(expected in p for p in problems), (expected, problems)
        with pytest.raises(ConfigError, match="cds_clients"):
            registry((B, ISS, jwks))
    assert jwks_problems(JWKS) == []


# ── the guard: CDS routes take a JWT as well as a hub token ──────────────────────────────


def test_the_guard_takes_a_cds_jwt_on_cds_routes_only(tmp_path: Path) -> None:
    import asyncio

    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    from services.common.institutions import issue_token
    from services.common.web_guard import CALLER_KEY, new_guard, web_application_options

    path = tmp_path / "institutions.yaml"
    path.write_bytes(DEMO.read_bytes())
    hub_token = issue_token(path, B)
    guard = new_guard(steward_hashes=[], internal_hash=None)
    guard.registry = Registry.load(path)
    check = verifier()
    guard.jwt_auth = lambda request, token: check.verify(
        token, f"https://hub.example.cn{request.path}"
    )
    app = web.Application(**web_application_options(guard))

    async def who(request: web.Request) -> web.Response:
        caller = request[CALLER_KEY]
        assert caller.institution is not None
        return web.json_response({"kind": caller.kind, "institution": caller.institution.id})

    app.router.add_post("/cds-services/{service_id}", who)
    app.router.add_post("/recognition/check", who)
    guard.allow("/cds-services/{service_id}", "institution", "cds")
    guard.allow("/recognition/check", "institution")

    def bearer(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    rs = sign(claims(), key=RSA_KEY, alg="RS384", kid="rsa-1")
    assert len(rs) > 512  # longer than any hub token the guard looks up

    async def main() -> None:
        async with TestClient(TestServer(app)) as client:
            url = "/cds-services/mrhub-recognition-select"
            for token in (hub_token, sign(claims()), rs):
                got = await client.post(url, headers=bearer(token))
                assert got.status == 200, await got.text()
                assert await got.json() == {"kind": "institution", "institution": B}
            # the same JWT again: replayed
            again = await client.post(url, headers=bearer(rs))
            assert again.status == 401
            doc = await again.json(content_type=None)
            assert doc["resourceType"] == "OperationOutcome"
            assert "jti was used before" in doc["issue"][0]["diagnostics"]
            assert again.headers["WWW-Authenticate"].startswith("Bearer")
            # a JWT for another service's URL
            other = sign(claims(aud="https://hub.example.cn/cds-services/mrhub-recognition-sign"))
            assert (await client.post(url, headers=bearer(other))).status == 401
            # a JWT opens no other route
            wrong = await client.post("/recognition/check", headers=bearer(sign(claims())))
            assert wrong.status == 401
            assert (await client.post(url)).status == 401

    asyncio.run(main())
