"""CDS Hooks 2.0 against the suite's hub of real processes (tests/security/conftest.py),
on the recognition worker's port (the gateway proxies the same paths).

The issue's story end to end: hospital A2 posts a blood count (haemoglobin 132 g/L) and a
chest CT with its report; hospital B's HIS, signing a JWT with the key it registered, calls
``order-select`` with draft orders for both and gets two cards carrying the value and the
impression, links that read back and a delete suggestion; B's ``overridden`` feedback with
a reason reaches the feedback topic and ``mrhub report``. C, in another prefecture, is
outside A2's scope: no card, no value. Every check is on the audit topic. And the attacks:
no credential, the spec's own example JWT, a JWT for another URL, a replayed one, feedback
on another hospital's card, a forged card, a reason not on the card.

The spec's own example requests and the docs' examples are replayed
(tests/fixtures/cds-hooks/), and every answer is checked against the JSON Schema written
from the spec's text (tests/unit/test_cds_cards.py)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from services.common.envelope import Envelope
from services.common.institutions import _find_entry, _rt_yaml, _write_atomic
from services.recognition.cds import HOOK_DEADLINE_S
from tests.conftest import REPO
from tests.fhir_samples import gb11643, org_ref
from tests.security.conftest import A2, CARD_SYSTEM, B, C, SecurityHub
from tests.support import consume_all
from tests.unit.test_cds_cards import fixture, validate

LOINC = "http://loinc.org"
CBC_LOINC = "58410-2"
HB_LOINC = "718-7"
PROVINCIAL = "urn:oid:1.3.6.1.4.1.32473.14.0.1"
CT_CHEST = "SX-JC-0202"
PACS_A2 = "https://pacs.xhl.example-hospital.cn/dicom-web"
FEEDBACK = "mrhub.recognition.feedback-recorded.v1"
AUDIT = "mrhub.audit.access-recorded.v1"
SELECT = "mrhub-recognition-select"
SIGN = "mrhub-recognition-sign"
ISS_B = "https://his.jyqrmyy.example-hospital.cn/cds-client"
KEY_B = ec.generate_private_key(ec.SECP384R1())
IMPRESSION = "双肺纹理清晰，未见明确结节及实变影。印象：胸部CT平扫未见明显异常。"

_SEQ = iter(random.sample(range(1, 999, 2), 200))


def _card() -> str:
    """A 身份证 of this module only (Taiyuan, born 1966-08-15)."""
    return gb11643(f"14010519660815{next(_SEQ):03d}")


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


# ── B's HIS: a registered CDS client ─────────────────────────────────────────────────────


def _register_b(hub: SecurityHub) -> None:
    """B registers its HIS's public key (as docs/cds-hooks.md tells a vendor to)."""
    jwk = json.loads(ECAlgorithm(ECAlgorithm.SHA384).to_jwk(KEY_B.public_key()))
    jwk.update({"kid": "his-2026", "alg": "ES384", "use": "sig"})
    yaml = _rt_yaml()
    doc = yaml.load(hub.registry.read_text(encoding="utf-8"))
    entry = _find_entry(doc, hub.registry, B)
    entry["cds_clients"] = [{"iss": ISS_B, "jwks": {"keys": [jwk]}, "label": "HIS"}]
    _write_atomic(hub.registry, yaml, doc)


def _jwt(aud: str, **change: Any) -> str:
    now = int(time.time())
    claims = {"iss": ISS_B, "aud": aud, "exp": now + 120, "iat": now, "jti": uuid.uuid4().hex}
    claims.update(change)
    return jwt.encode(claims, KEY_B, algorithm="ES384", headers={"kid": "his-2026", "typ": "JWT"})


@pytest.fixture(scope="module")
def cds(security_hub: SecurityHub) -> SecurityHub:
    """The hub with B's CDS client registered and picked up by the recognition worker."""
    _register_b(security_hub)
    url = f"{security_hub.url('recognition')}/cds-services"
    deadline = time.monotonic() + 60
    while True:
        got = httpx.get(url, headers={"Authorization": f"Bearer {_jwt(url)}"}, timeout=10)
        if got.status_code == 200:
            return security_hub
        assert time.monotonic() < deadline, got.text
        time.sleep(0.3)


def _url(hub: SecurityHub, path: str, *, worker: bool = False) -> str:
    """Where a hospital calls ``path``: the gateway (the hub's public entry, which forwards
    ``/cds-services…`` to recognition) — or the recognition worker's own port."""
    if path.startswith("/cds-services") and not worker:
        return f"{hub.gateway}{path}"
    return f"{hub.url('recognition')}{path}"


def _call(
    hub: SecurityHub, path: str, body: Any = None, *, inst: str | None = None, token: str = ""
) -> httpx.Response:
    """POST (or GET without a body) as ``inst`` (its hub token) or with B's JWT."""
    url = _url(hub, path)
    bearer = hub.tokens[inst] if inst else (token or _jwt(url))
    headers = {"Authorization": f"Bearer {bearer}"}
    if body is None:
        return httpx.get(url, headers=headers, timeout=30)
    return httpx.post(url, json=body, headers=headers, timeout=30)


def _outcome(resp: httpx.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text[:1000]
    doc: dict[str, Any] = resp.json()
    assert doc["resourceType"] == "OperationOutcome", doc
    return doc


# ── discovery and the spec's own requests ────────────────────────────────────────────────


def test_discovery_takes_a_jwt_or_a_hub_token_and_nothing_else(cds: SecurityHub) -> None:
    for resp in (_call(cds, "/cds-services"), _call(cds, "/cds-services", inst=C)):
        assert resp.status_code == 200, resp.text
        validate(resp.json(), "DiscoveryResponse")
        assert {s["id"] for s in resp.json()["services"]} == {SELECT, SIGN}
    anonymous = httpx.get(_url(cds, "/cds-services"), timeout=10)
    _outcome(anonymous, 401)
    assert anonymous.headers["WWW-Authenticate"].startswith("Bearer")


def test_the_specs_example_requests_are_answered_without_cards(cds: SecurityHub) -> None:
    for name, service in (
        ("spec-order-select-request.json", SELECT),
        ("spec-order-sign-request.json", SIGN),
    ):
        resp = _call(cds, f"/cds-services/{service}", fixture(name))
        assert resp.status_code == 200, resp.text
        validate(resp.json(), "ServiceResponse")
        assert resp.json() == {"cards": []}  # a diet and a medication: nothing to recognise
    # the order-sign example sent to the order-select service: the wrong hook
    wrong = _outcome(
        _call(cds, f"/cds-services/{SELECT}", fixture("spec-order-sign-request.json")), 400
    )
    assert "hook" in [e for i in wrong["issue"] for e in i.get("expression", [])]


def test_bad_hook_calls_are_operation_outcomes_naming_the_member(cds: SecurityHub) -> None:
    good = fixture("spec-order-sign-request.json")
    _outcome(_call(cds, "/cds-services/no-such-service", good), 404)
    _outcome(_call(cds, f"/cds-services/{SIGN}", {**good, "context": None}), 400)
    missing = {k: v for k, v in good.items() if k != "hookInstance"}
    doc = _outcome(_call(cds, f"/cds-services/{SIGN}", missing), 400)
    assert doc["issue"][0]["expression"] == ["hookInstance"]
    url = _url(cds, f"/cds-services/{SIGN}")
    headers = {"Authorization": f"Bearer {_jwt(url)}", "Content-Type": "application/json"}
    _outcome(httpx.post(url, content=b"[" * 10_000, headers=headers, timeout=30), 400)
    headers["Authorization"] = f"Bearer {_jwt(url)}"
    _outcome(httpx.post(url, content=b"{not json", headers=headers, timeout=30), 400)
    headers["Authorization"] = f"Bearer {_jwt(url)}"
    lone_surrogate = b'{"hook": "order-sign", "x": "\\ud800"}'  # JSON, but no text
    refused = _outcome(httpx.post(url, content=lone_surrogate, headers=headers, timeout=30), 400)
    assert "not JSON text" in refused["issue"][0]["diagnostics"]
    headers["Authorization"] = f"Bearer {_jwt(url)}"
    _outcome(httpx.post(url, content=b"x" * 600_000, headers=headers, timeout=30), 413)


# ── the JWT, attacked on the real hub ────────────────────────────────────────────────────


def test_jwts_that_the_spec_forbids_are_refused(cds: SecurityHub) -> None:
    url = _url(cds, f"/cds-services/{SIGN}")
    body = fixture("spec-order-sign-request.json")
    example = fixture("spec-jwt-example.json")["token"]
    other_url = _url(cds, f"/cds-services/{SELECT}")
    stranger = ec.generate_private_key(ec.SECP384R1())
    now = int(time.time())
    forged = jwt.encode(
        {"iss": ISS_B, "aud": url, "exp": now + 60, "iat": now, "jti": uuid.uuid4().hex},
        stranger,
        algorithm="ES384",
        headers={"kid": "his-2026"},
    )
    replayed = _jwt(url)
    assert httpx.post(url, json=body, headers={"Authorization": f"Bearer {replayed}"}).is_success
    cases = {
        "the spec's example": example,
        "for another service": _jwt(other_url),
        "for the gateway's URL": _jwt("https://hub.example.cn/cds-services/" + SIGN),
        "expired": _jwt(url, exp=now - 100, iat=now - 200),
        "a day long": _jwt(url, exp=now + 86_400),
        "unknown iss": _jwt(url, iss="https://evil.example"),
        "no jti": jwt.encode(
            {"iss": ISS_B, "aud": url, "exp": now + 60, "iat": now},
            KEY_B,
            algorithm="ES384",
            headers={"kid": "his-2026"},
        ),
        "another key": forged,
        "replayed": replayed,
        "alg none": jwt.encode(
            {"iss": ISS_B, "aud": url, "exp": now + 60, "iat": now, "jti": "x"},
            "",
            algorithm="none",
            headers={"kid": "his-2026"},
        ),
    }
    for name, token in cases.items():
        resp = httpx.post(url, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        doc = _outcome(resp, 401)
        assert "JWT" in doc["issue"][0]["diagnostics"], name
    # a JWT opens the CDS routes only
    check = httpx.post(
        _url(cds, "/recognition/check"),
        json={"patient": f"{CARD_SYSTEM}|{_card()}", "code": f"{LOINC}|{CBC_LOINC}"},
        headers={"Authorization": f"Bearer {_jwt(_url(cds, '/recognition/check'))}"},
        timeout=30,
    )
    _outcome(check, 401)


def test_behind_the_gateway_the_jwt_is_for_the_public_address(cds: SecurityHub) -> None:
    """As the gateway forwards (contract 3): the public base in X-Mrhub-Public-Base, proven by
    the services' internal token. The JWT's aud is then the public URL; a caller on the
    worker port cannot claim another public base without that token."""
    from services.common.forwarding import forwarded_headers
    from services.common.settings import Settings

    settings = Settings.model_validate(
        {"identity": {"hmac_key": cds.env("x")["MRHUB_IDENTITY__HMAC_KEY"]}}
    )
    public = "https://hub.example.cn"
    worker = _url(cds, "/cds-services", worker=True)
    body_url = f"{public}/cds-services"

    def ask(token: str, headers: dict[str, str]) -> httpx.Response:
        return httpx.get(
            worker, headers={"Authorization": f"Bearer {token}", **headers}, timeout=30
        )

    gateway = forwarded_headers(settings, public)
    assert ask(_jwt(body_url), gateway).status_code == 200
    # the worker's own address is not the one the client called
    _outcome(ask(_jwt(worker), gateway), 401)
    # a forged public base without the internal token is ignored: aud must be the worker's
    forged = {"X-Mrhub-Public-Base": public, "X-Mrhub-Forwarded-By": "mrhi_" + "0" * 64}
    _outcome(ask(_jwt(body_url), forged), 401)
    assert ask(_jwt(worker), forged).status_code == 200


# ── the story ────────────────────────────────────────────────────────────────────


def _haemoglobin(card: str, taken: datetime) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": f"hb-{uuid.uuid4().hex[:12]}",
        "identifier": [
            {
                "system": "https://lis.xhl.example-hospital.cn/result",
                "value": f"HB-{uuid.uuid4().hex[:10]}",
                "assigner": org_ref(A2),
            }
        ],
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "laboratory",
                    }
                ]
            }
        ],
        "code": {
            "coding": [
                {"system": LOINC, "code": CBC_LOINC, "display": "血常规"},
                {"system": LOINC, "code": HB_LOINC, "display": "血红蛋白"},
            ],
            "text": "血红蛋白",
        },
        "subject": {"identifier": {"system": CARD_SYSTEM, "value": card}},
        "effectiveDateTime": _iso(taken),
        "issued": _iso(taken + timedelta(minutes=40)),
        "performer": [org_ref(A2)],
        "valueQuantity": {
            "value": 132,
            "unit": "g/L",
            "system": "http://unitsofmeasure.org",
            "code": "g/L",
        },
        "referenceRange": [
            {
                "low": {"value": 130, "unit": "g/L"},
                "high": {"value": 175, "unit": "g/L"},
                "text": "130-175 g/L",
            }
        ],
    }


def _ct_with_report(card: str, started: datetime) -> tuple[str, dict[str, Any]]:
    uid = f"1.2.826.0.1.3680043.8.498.{random.randint(10**9, 10**10)}"
    study_url, report_url = f"urn:uuid:{uuid.uuid4()}", f"urn:uuid:{uuid.uuid4()}"
    subject = {"identifier": {"system": CARD_SYSTEM, "value": card}}
    study = {
        "resourceType": "ImagingStudy",
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{uid}"}],
        "status": "available",
        "modality": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "CT"}],
        "subject": subject,
        "started": _iso(started),
        "numberOfSeries": 1,
        "numberOfInstances": 120,
        "procedureCode": [{"coding": [{"system": PROVINCIAL, "code": CT_CHEST}]}],
        "series": [
            {
                "uid": f"{uid}.1",
                "number": 1,
                "modality": {
                    "system": "http://dicom.nema.org/resources/ontology/DCM",
                    "code": "CT",
                },
                "bodySite": {"system": "http://snomed.info/sct", "code": "51185008"},
                "numberOfInstances": 120,
            }
        ],
    }
    report = {
        "resourceType": "DiagnosticReport",
        "identifier": [
            {
                "system": "https://ris.xhl.example-hospital.cn/report",
                "value": f"RPT-{uuid.uuid4().hex[:10]}",
                "assigner": org_ref(A2),
            }
        ],
        "status": "final",
        "category": [
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD"}]}
        ],
        "code": {"coding": [{"system": PROVINCIAL, "code": CT_CHEST, "display": "胸部CT平扫"}]},
        "subject": subject,
        "effectiveDateTime": _iso(started),
        "issued": _iso(started + timedelta(hours=2)),
        "performer": [org_ref(A2)],
        "imagingStudy": [{"reference": study_url}],
        "conclusion": IMPRESSION,
    }
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": study_url,
                "resource": study,
                "request": {"method": "POST", "url": "ImagingStudy"},
            },
            {
                "fullUrl": report_url,
                "resource": report,
                "request": {"method": "POST", "url": "DiagnosticReport"},
            },
        ],
    }
    return uid, bundle


def _request(card: str) -> dict[str, Any]:
    """The docs' order-select request for this patient."""
    text = json.dumps(fixture("mrhub-order-select-request.json"), ensure_ascii=False)
    doc: dict[str, Any] = json.loads(text.replace("{{id_card}}", card))
    return doc


def _feedback(card_uuid: str, suggestion: str = "") -> tuple[dict[str, Any], dict[str, Any]]:
    """The docs' two feedback requests for ``card_uuid``."""
    out = []
    for name in ("mrhub-feedback-request.json", "mrhub-feedback-accepted-request.json"):
        text = json.dumps(fixture(name), ensure_ascii=False)
        out.append(
            json.loads(
                text.replace("{{card_uuid}}", card_uuid).replace("{{suggestion_uuid}}", suggestion)
            )
        )
    return out[0], out[1]


def _events(hub: SecurityHub, topic: str) -> list[Envelope]:
    return [Envelope.from_bytes(r.value) for r in consume_all(hub.bootstrap, topic)]


def _wait_cards(hub: SecurityHub, body: dict[str, Any], count: int) -> list[dict[str, Any]]:
    """Call order-select until ``count`` cards come back (the results travel through the
    patient index to the recognition worker after the 201)."""
    deadline = time.monotonic() + 120
    while True:
        resp = _call(hub, f"/cds-services/{SELECT}", body)
        assert resp.status_code == 200, resp.text
        validate(resp.json(), "ServiceResponse")
        cards: list[dict[str, Any]] = resp.json()["cards"]
        if len(cards) >= count:
            # within the hook's budget (HOOK_DEADLINE_S), the checks of both orders included
            assert resp.elapsed.total_seconds() < HOOK_DEADLINE_S, resp.elapsed
            return cards
        assert time.monotonic() < deadline, f"{len(cards)} of {count} cards: {resp.text[:2000]}"
        time.sleep(0.5)


def test_b_sees_the_haemoglobin_and_the_ct_impression_and_c_sees_nothing(cds: SecurityHub) -> None:
    hub = cds
    card = _card()
    taken = datetime.now(UTC) - timedelta(hours=3)
    hb = _haemoglobin(card, taken)
    hub.post(A2, "/fhir/Observation", hb)
    uid, bundle = _ct_with_report(card, taken)
    hub.post(A2, "/fhir", bundle)

    body = _request(card)
    started = time.monotonic()
    cards = _wait_cards(hub, body, 2)
    assert len(cards) == 2
    hb_card, ct_card = cards  # in the order of the draft orders
    assert time.monotonic() - started < 120

    # the haemoglobin: value, unit, reference range, date, hospital, scope, validity
    assert len(hb_card["summary"]) < 140 and "132 g/L" in hb_card["summary"]
    for shown in (
        "132 g/L",
        "130-175 g/L",
        taken.date().isoformat(),
        "太原市杏花岭区中心医院",
        "市级",
    ):
        assert shown in hb_card["detail"], shown
    assert hb_card["indicator"] == "info"
    # the CT: the report's impression, the images, a warning
    assert IMPRESSION in ct_card["detail"].replace("\\", "")
    assert ct_card["indicator"] == "warning"
    assert any(uid in link["url"] for link in ct_card["links"]), ct_card["links"]

    # one delete suggestion per card, naming the draft order
    for got, draft in ((hb_card, "draft-cbc-1"), (ct_card, "draft-ct-1")):
        [suggestion] = got["suggestions"]
        [action] = suggestion["actions"]
        assert action == {
            "type": "delete",
            "description": action["description"],
            "resourceId": f"ServiceRequest/{draft}",
        }
        codes = {r["code"] for r in got["overrideReasons"]}
        assert {"condition-changed", "other", "image-quality", "patient-request"} <= codes

    # the result links read back, with B's credential, and show the value / the impression
    result_link = hb_card["links"][0]["url"]
    read = httpx.get(result_link, headers=hub.auth(B), timeout=30)
    assert read.status_code == 200, read.text
    assert read.json()["valueQuantity"]["value"] == 132
    report_link = next(link["url"] for link in ct_card["links"] if "/fhir/" in link["url"])
    read = httpx.get(report_link, headers=hub.auth(B), timeout=30)
    assert read.status_code == 200, read.text
    assert IMPRESSION in json.dumps(read.json(), ensure_ascii=False)

    # the same request from C (Datong: outside A2's municipal scope): no card, no value
    c_resp = _call(hub, f"/cds-services/{SELECT}", body, inst=C)
    assert c_resp.status_code == 200 and c_resp.json() == {"cards": []}
    for secret in ("132", IMPRESSION[:6], A2, "杏花岭"):
        assert secret not in c_resp.text
    # nor do the links open for C
    assert httpx.get(result_link, headers=hub.auth(C), timeout=30).status_code == 404

    # every check is on the audit topic, by the reader, with its purpose
    def audited(reader: str) -> list[dict[str, Any]]:
        return [
            e.payload
            for e in _events(hub, AUDIT)
            if e.payload["reader"] == reader and e.payload["purpose"] == "cds-hooks"
        ]

    mine = audited(B)
    assert len(mine) >= 2 and {A2} <= {i for p in mine for i in p["shown_institutions"]}
    assert audited(C), "C's checks are audited too"
    assert not [i for p in audited(C) for i in p["shown_institutions"]]
    reads = [
        e.payload
        for e in _events(hub, AUDIT)
        if e.payload["reader"] == B and "fhir" in e.payload["route"].lower()
    ]
    assert reads, "B's reads of the linked results are audited"

    _feedback_reaches_the_topic_and_the_report(hub, hb_card, ct_card)


def _feedback_reaches_the_topic_and_the_report(
    hub: SecurityHub, hb_card: dict[str, Any], ct_card: dict[str, Any]
) -> None:
    path = f"/cds-services/{SELECT}/feedback"
    overridden, _ = _feedback(ct_card["uuid"])
    _, accepted = _feedback(hb_card["uuid"], hb_card["suggestions"][0]["uuid"])
    validate(overridden, "FeedbackRequest")

    def recorded() -> list[dict[str, Any]]:
        return [
            e.payload
            for e in _events(hub, FEEDBACK)
            if e.payload.get("order") in ("ServiceRequest/draft-ct-1", "ServiceRequest/draft-cbc-1")
            and e.payload["institution"] == B
            and e.payload.get("channel") == "cds-hooks"
        ]

    before = len(recorded())

    # the attacks first: each is refused and publishes nothing
    refusals = [
        (_call(hub, path, overridden, inst=C), 404),  # C: B's card
        (_call(hub, f"/cds-services/{SIGN}/feedback", overridden), 404),  # another service's
        (_call(hub, path, fixture("spec-feedback-overridden.json")), 404),  # the spec's card
        # the spec's example reason is of another code system: not on our cards
        (_call(hub, path, fixture("spec-feedback-overridden-reason.json")), 400),
    ]
    forged = json.loads(json.dumps(overridden))
    token = forged["feedback"][0]["card"]
    forged["feedback"][0]["card"] = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    refusals.append((_call(hub, path, forged), 404))
    made_up = json.loads(json.dumps(overridden))
    made_up["feedback"][0]["overrideReason"]["reason"]["code"] = "too-busy"
    refusals.append((_call(hub, path, made_up), 400))
    no_reason = json.loads(json.dumps(overridden))
    del no_reason["feedback"][0]["overrideReason"]
    refusals.append((_call(hub, path, no_reason), 400))
    wrong_suggestion = json.loads(json.dumps(accepted))
    wrong_suggestion["feedback"][0]["acceptedSuggestions"] = [{"id": str(uuid.uuid4())}]
    refusals.append((_call(hub, path, wrong_suggestion), 400))
    for resp, status in refusals:
        _outcome(resp, status)
    assert len(recorded()) == before  # the answers came after any publishing: nothing

    # B's doctor overrides the CT card with a reason, accepts the haemoglobin card
    for doc in (overridden, accepted):
        resp = _call(hub, path, doc)
        assert resp.status_code == 200, resp.text
    got = recorded()[before:]
    assert len(got) == 2
    by_choice = {p["choice"]: p for p in got}
    ct = by_choice["re-ordered"]
    assert (ct["reason"], ct["reason_name"], ct["reason_source"]) == (
        "condition-changed",
        "病情变化",
        "national",
    )
    assert ct["item_id"] == "CT-CHEST" and ct["code"] == {"system": PROVINCIAL, "code": CT_CHEST}
    assert ct["master_patient_id"] and ct["note"] == "患者咳嗽加重，需复查胸部CT"
    assert by_choice["recognised"]["item_id"] == "CBC"
    assert by_choice["recognised"]["result_record_id"]
    # the same feedback sent again (the spec allows it) carries the same feedback_id
    assert _call(hub, path, overridden).status_code == 200
    again = recorded()[before + 2 :]
    assert [p["feedback_id"] for p in again] == [ct["feedback_id"]]

    # … and `mrhub report` counts the override under its reason
    env = {**os.environ, "MRHUB_INSTITUTIONS_PATH": str(hub.registry)}
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "report", "--json", "--bootstrap", hub.bootstrap],
        env=env,
        capture_output=True,
        timeout=180,
        check=True,
        cwd=REPO,
    )
    rows = {(r["region"], r["category"]): r for r in json.loads(done.stdout)["rows"]}
    imaging = rows[("140100", "imaging")]
    assert imaging["feedback_reordered_by_reason"].get("condition-changed", 0) >= 1
    assert rows[("140100", "lab")]["feedback_recognised"] >= 1


def test_no_identifier_reaches_the_logs(cds: SecurityHub) -> None:
    """Runs last in this module: the 身份证 used here are in no service's log."""
    issued = [gb11643(f"14010519660815{n:03d}") for n in range(1, 999, 2)]
    for name in ("recognition", "ingest"):
        text = Path(cds.log(name)).read_text(encoding="utf-8", errors="replace")
        assert not [c for c in issued if c in text], name
