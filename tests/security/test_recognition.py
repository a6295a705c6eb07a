"""Attacks on the recognition service (issue 14, findings 4, 5, 8 and 9), against the suite's
hub of real processes (tests/security/conftest.py).

Each test does what a hostile or merely curious hospital could do with its own token and
asserts what that hospital would notice:

- finding 4: a check for a patient the caller may not see anything of reads the same
  whether the hub knows the patient or not, and names neither the issuing hospital nor the
  master patient id; feedback for a patient the caller never ordered for is refused exactly
  as for an unknown patient;
- finding 5: 5,000 results of one patient survive a restart that rebuilds the worker's
  state from the changelog;
- findings 8 and 9: deeply nested or malformed bodies and over-long parameters are 4xx
  OperationOutcomes, never 500; the check takes the identifier in a POST body.
"""

from __future__ import annotations

import random
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from services.common.broker import free_port
from services.common.codec import dumps
from tests.fhir_samples import gb11643, observation, service_request
from tests.security.conftest import A2, CARD_SYSTEM, A, B, C, SecurityHub
from tests.support import produce, run_module, stop_process

LOINC = "http://loinc.org"
CBC = "58410-2"
ALT = "1742-6"  # B holds no HR qualification for ALT
POTASSIUM = "2823-3"
DECISIONS = "mrhub.recognition.decision-made.v1"
RESULTS = "mrhub_recognition_results_total"

_SEQ = iter(random.sample(range(1, 999, 2), 400))


#: every 身份证 this module used, to look for in the services' logs at the end
_ISSUED: list[str] = []


def _card() -> str:
    """A 身份证 no other module of the package uses (Datong, born 1977-04-01)."""
    card = gb11643(f"14021519770401{next(_SEQ):03d}")
    _ISSUED.append(card)
    return card


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


def _result(inst: str, card: str, loinc: str, *, hours_ago: float = 1) -> dict[str, Any]:
    taken = datetime.now(UTC) - timedelta(hours=hours_ago)
    doc = observation(inst, subject={"identifier": {"system": CARD_SYSTEM, "value": card}})
    doc["code"] = {"coding": [{"system": LOINC, "code": loinc}]}
    doc["effectiveDateTime"] = _iso(taken)
    doc["issued"] = _iso(taken + timedelta(minutes=30))
    return doc


def _order(inst: str, card: str, loinc: str) -> dict[str, Any]:
    doc = service_request(inst)
    doc["subject"] = {"identifier": {"system": CARD_SYSTEM, "value": card}}
    doc["code"] = {"coding": [{"system": LOINC, "code": loinc}]}
    doc["authoredOn"] = _iso(datetime.now(UTC))
    return doc


def _applied(hub: SecurityHub, before: float, count: int, timeout_s: float = 120) -> None:
    """Wait until the recognition worker has applied ``count`` more results."""
    deadline = time.monotonic() + timeout_s
    while (now := hub.metric(RESULTS, "recognition")) < before + count:
        assert time.monotonic() < deadline, f"{now - before:.0f} of {count} results applied"
        time.sleep(0.5)


def _post_results(hub: SecurityHub, docs: list[tuple[str, dict[str, Any]]]) -> None:
    """Post the results and wait until the worker holds each of them: every poster's own
    check of the patient lists them (the results counter alone is not enough: what earlier
    modules posted may still be arriving and move it too)."""
    before = hub.metric(RESULTS, "recognition")
    expected: Counter[tuple[str, str, str]] = Counter()
    for inst, doc in docs:
        hub.post(inst, "/fhir/Observation", doc)
        card = doc["subject"]["identifier"]["value"]
        code = doc["code"]["coding"][0]["code"]
        expected[(inst, card, code)] += 1
    _applied(hub, before, len(docs))
    deadline = time.monotonic() + 120
    for (inst, card, code), count in expected.items():
        while True:
            got = hub.check(inst, f"{CARD_SYSTEM}|{card}", f"{LOINC}|{code}")
            assert got.status_code == 200, got.text
            if got.json()["matches_total"] >= count:
                break
            assert time.monotonic() < deadline, f"{inst}'s result never reached the worker"
            time.sleep(0.3)


def _names(hub: SecurityHub, *insts: str) -> list[str]:
    """What would name a hospital in an answer: its id and its name."""
    from services.common.institutions import Registry

    registry = Registry.load(hub.registry)
    out = []
    for inst in insts:
        found = registry.get(inst)
        assert found is not None
        out += [inst, found.name]
    return out


def _feedback(hub: SecurityHub, inst: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        f"{hub.url('recognition')}/recognition/feedback",
        json=body,
        headers=hub.auth(inst),
        timeout=30,
    )


# ── finding 4: the check ─────────────────────────────────────────────────────────────────


def test_a_hospital_outside_the_scope_cannot_tell_a_known_patient_from_an_unknown_one(
    security_hub: SecurityHub,
) -> None:
    hub = security_hub
    known, unknown = _card(), _card()
    # A2 (Taiyuan, lab qualification for its city only) has a blood count of the patient
    _post_results(hub, [(A2, _result(A2, known, CBC))])

    answers = []
    for card in (known, unknown):
        got = hub.check(C, f"{CARD_SYSTEM}|{card}", f"{LOINC}|{CBC}")
        assert got.status_code == 200, got.text
        answers.append(got.json())
    seen_known, seen_unknown = answers
    assert seen_known.keys() == seen_unknown.keys()  # one shape
    for answer in answers:
        assert answer["master_patient_id"] is None
        assert answer["link_grade"] is None
        assert answer["matches"] == [] and answer["matches_total"] == 0
    # the decision and its reason are C's to know; nothing else about the patient is
    assert (seen_known["decision"], seen_known["reason"]) == (
        "not-recognisable",
        "scope-not-satisfied",
    )
    assert seen_unknown["reason"] == "no-prior-result"
    text = str(seen_known)
    assert not [n for n in _names(hub, A2) if n in text], text

    # B, in A2's city, may see A2's result: it gets the patient's master id and the match
    mine = hub.check(B, f"{CARD_SYSTEM}|{known}", f"{LOINC}|{CBC}").json()
    assert mine["decision"] == "recognisable" and mine["master_patient_id"]
    assert [m["institution"] for m in mine["matches"]] == [A2]


def test_refusals_for_another_hospitals_result_name_nobody(security_hub: SecurityHub) -> None:
    hub = security_hub
    card = _card()
    # A2's blood count does not reach Datong (HR scope); B holds no qualification for ALT
    _post_results(hub, [(A2, _result(A2, card, CBC)), (B, _result(B, card, ALT))])
    patient = f"{CARD_SYSTEM}|{card}"

    scope = hub.check(C, patient, f"{LOINC}|{CBC}").json()
    assert scope["reason"] == "scope-not-satisfied"
    unqualified = hub.check(C, patient, f"{LOINC}|{ALT}").json()
    assert unqualified["reason"] == "issuer-not-qualified"
    for answer in (scope, unqualified):
        text = str(answer)
        assert not [n for n in _names(hub, A2, B) if n in text], text
        assert answer["master_patient_id"] is None and answer["matches"] == []

    # the same refusals on the topic for C's real orders still carry everything (internal)
    order = hub.post(C, "/fhir/ServiceRequest", _order(C, card, CBC))
    trace = order.headers["X-Trace-Id"]
    [decision] = hub.wait_for(DECISIONS, lambda e: e.trace_id == trace)
    assert decision.payload["reason"] == "scope-not-satisfied"


# ── finding 4: feedback ──────────────────────────────────────────────────────────────────


def test_feedback_for_a_patient_never_ordered_for_is_answered_as_for_an_unknown_one(
    security_hub: SecurityHub,
) -> None:
    hub = security_hub
    known, unknown = _card(), _card()
    _post_results(hub, [(A2, _result(A2, known, CBC))])
    # B orders for the patient (and so may give feedback); C never does
    order = hub.post(B, "/fhir/ServiceRequest", _order(B, known, CBC))
    trace = order.headers["X-Trace-Id"]
    hub.wait_for(DECISIONS, lambda e: e.trace_id == trace)

    def feedback(inst: str, card: str) -> httpx.Response:
        body = {"patient": f"{CARD_SYSTEM}|{card}", "code": f"{LOINC}|{CBC}"}
        return _feedback(hub, inst, {**body, "choice": "recognised"})

    never_ordered = feedback(C, known)
    nobody = feedback(C, unknown)
    assert never_ordered.status_code == nobody.status_code == 404
    assert never_ordered.content == nobody.content  # byte for byte
    assert never_ordered.headers["Content-Type"] == nobody.headers["Content-Type"]
    assert feedback(A, known).content == nobody.content  # A never ordered for her either

    recorded = feedback(B, known)
    assert recorded.status_code == 201, recorded.text


# ── findings 8 and 9: bad input, and identifiers out of URLs ─────────────────────────────


def test_bad_input_is_a_4xx_operation_outcome_never_a_500(security_hub: SecurityHub) -> None:
    hub = security_hub
    url = f"{hub.url('recognition')}/recognition"
    auth = hub.auth(B)
    nested = b"[" * 100_000 + b"]" * 100_000
    cases: list[tuple[str, str, dict[str, Any], int]] = [
        ("POST", "feedback", {"content": nested}, 400),
        ("POST", "check", {"content": nested}, 400),
        ("POST", "feedback", {"content": b"[" * 100_000}, 400),
        ("POST", "check", {"content": b'{"patient": ' + b"{" * 5_000}, 400),
        ("POST", "check", {"content": b"\xff\xfe{"}, 400),
        ("POST", "check", {"content": b'{"patient": "\\ud800", "code": "K"}'}, 400),
        ("POST", "feedback", {"content": b'{"choice": 1' + b"0" * 5_000 + b"}"}, 400),
        ("POST", "check", {"json": {"patient": ["x"], "code": {"a": 1}}}, 400),
        ("POST", "check", {"json": {"patient": "x" * 300, "code": "K"}}, 400),
        ("POST", "check", {"json": {"patient": "a\u0000b", "code": "K"}}, 400),
        ("POST", "feedback", {"json": {"patient": 5, "code": [], "choice": "recognised"}}, 400),
        ("POST", "feedback", {"json": {"patient": "x", "code": "K", "choice": ["re"]}}, 400),
        ("POST", "check", {"content": b"x" * 300_000}, 413),
        ("POST", "check", {"content": b"patient=x", "ctype": "text/plain"}, 415),
        ("GET", "check", {"params": {"patient": "1" * 5_000, "code": "K"}}, 400),
        ("GET", "check", {"params": [("patient", "a"), ("patient", "b"), ("code", "K")]}, 400),
    ]
    for method, path, spec, status in cases:
        headers = {**auth, "Content-Type": spec.pop("ctype", "application/json")}
        got = httpx.request(method, f"{url}/{path}", headers=headers, timeout=30, **spec)
        assert got.status_code == status, (method, path, status, got.text[:300])
        assert got.json()["resourceType"] == "OperationOutcome", got.text[:300]
    # without a token the body is never looked at
    got = httpx.post(f"{url}/feedback", content=nested, timeout=30)
    assert got.status_code == 401


def test_the_check_takes_the_identifier_in_a_post_body_json_or_form(
    security_hub: SecurityHub,
) -> None:
    hub = security_hub
    card = _card()
    _post_results(hub, [(A2, _result(A2, card, CBC))])
    patient, code = f"{CARD_SYSTEM}|{card}", f"{LOINC}|{CBC}"
    as_json = hub.check(B, patient, code)
    as_form = httpx.post(
        f"{hub.url('recognition')}/recognition/check",
        data={"patient": patient, "code": code},
        headers=hub.auth(B),
        timeout=30,
    )
    as_query = httpx.get(
        f"{hub.url('recognition')}/recognition/check",
        params={"patient": patient, "code": code},
        headers=hub.auth(B),
        timeout=30,
    )
    untyped = httpx.post(  # JSON without a Content-Type header is read as JSON
        f"{hub.url('recognition')}/recognition/check",
        content=dumps({"patient": patient, "code": code}),
        headers=hub.auth(B),
        timeout=30,
    )
    for got in (as_json, as_form, as_query, untyped):
        assert got.status_code == 200, got.text
        assert got.json()["decision"] == "recognisable"
        assert [m["institution"] for m in got.json()["matches"]] == [A2]


def test_a_second_worker_forwards_to_the_owner_and_a_forged_routing_header_changes_nothing(
    security_hub: SecurityHub,
) -> None:
    """With two recognition workers, each patient's results live on one of them: the other
    forwards (a POST with the body, never the identifier in a URL). A caller that sets the
    routing header itself does not make the other worker answer from nothing."""
    hub = security_hub
    cards = [_card() for _ in range(4)]  # over 3 partitions, some land on each worker
    _post_results(hub, [(A2, _result(A2, card, CBC)) for card in cards])
    name = "recognition-2"
    port = free_port()
    env = {
        **hub.env("recognition"),
        "MRHUB_RECOGNITION__PORT": str(port),
        "MRHUB_STATE_DIR": str(hub.tmp / "state" / name),
    }
    second = run_module(["-m", "services.cli", "serve", "recognition"], env, hub.log(name))
    workers = [hub.url("recognition"), f"http://127.0.0.1:{port}"]
    try:
        hub.wait_all_ready(workers, second, name)
        forwarded = [
            _metric_at(url, "mrhub_recognition_check_seconds_count", outcome="forwarded")
            for url in workers
        ]
        auth = [(k.encode(), v.encode()) for k, v in hub.auth(B).items()]
        routed = b"X-Mrhub-Routed"
        for card in cards:
            body = {"patient": f"{CARD_SYSTEM}|{card}", "code": f"{LOINC}|{CBC}"}
            for url in workers:
                for forged in ([], [(routed, b"1")], [(routed, "é".encode())]):
                    got = httpx.post(
                        f"{url}/recognition/check", json=body, headers=auth + forged, timeout=30
                    )
                    assert got.status_code == 200, got.text
                    assert [m["institution"] for m in got.json()["matches"]] == [A2], (url, forged)
        more = [
            _metric_at(url, "mrhub_recognition_check_seconds_count", outcome="forwarded") - was
            for url, was in zip(workers, forwarded, strict=True)
        ]
        assert sum(more) >= len(cards) * 3  # every card is owned by one worker only
    finally:
        stop_process(second)
        _settled(hub, cards)


def _settled(hub: SecurityHub, cards: list[str], timeout_s: float = 180) -> None:
    """Wait until the hub's one recognition worker answers for every card again (it takes
    the second worker's partitions back and restores them)."""
    deadline = time.monotonic() + timeout_s
    pending = list(cards)
    while pending:
        assert time.monotonic() < deadline, "the remaining worker never took over"
        got = hub.check(B, f"{CARD_SYSTEM}|{pending[0]}", f"{LOINC}|{CBC}")
        if got.status_code == 200 and [m["institution"] for m in got.json()["matches"]] == [A2]:
            pending.pop(0)
        else:
            time.sleep(0.5)


def _metric_at(url: str, name: str, **labels: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        head, _, value = line.rpartition(" ")
        if head.split("{", 1)[0] == name and all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


# ── finding 5: state that cannot outgrow Kafka ───────────────────────────────────────────


def test_results_kept_in_the_layout_before_one_entry_per_result_are_still_known(
    security_hub: SecurityHub,
) -> None:
    """An upgraded worker restores a changelog written by the earlier version (one value
    per patient, every result in it), decides with those results, and splits the value into
    one entry per result at the patient's next event."""
    hub = security_hub
    card = _card()
    _post_results(hub, [(A2, _result(A2, card, CBC))])
    patient, code = f"{CARD_SYSTEM}|{card}", f"{LOINC}|{CBC}"
    master = hub.check(B, patient, code).json()["master_patient_id"]
    assert master
    [real] = [
        e.payload
        for e in hub.events("mrhub.results.result-indexed.v1")
        if e.payload.get("master_patient_id") == master
    ]
    old = {**real, "record_id": uuid.uuid4().hex}
    old["source"] = {**(real.get("source") or {}), "resource_id": "from-the-old-layout"}
    legacy = {real["record_id"]: real, old["record_id"]: old}
    produce(
        hub.bootstrap, "mrhub-recognition-results-changelog", [(master.encode(), dumps(legacy))]
    )

    def listed() -> set[str]:
        got = hub.check(B, patient, code)
        assert got.status_code == 200, got.text
        return {m["report"]["record_id"] for m in got.json()["matches"]}

    hub.restart("recognition", keep_state=False)  # restores the old value from the changelog
    assert listed() == {real["record_id"], old["record_id"]}
    _post_results(hub, [(A2, _result(A2, card, CBC))])  # the patient's next event: split
    after = listed()
    assert len(after) == 3 and old["record_id"] in after
    hub.restart("recognition", keep_state=False)  # the split entries are in the changelog
    assert listed() == after


MANY = 5_000
PER_BUNDLE = 500


def _bundle(inst: str, card: str, n: int) -> dict[str, Any]:
    entries = []
    for i in range(n):
        doc = _result(inst, card, POTASSIUM, hours_ago=1 + i / 1000)
        entries.append(
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": doc,
                "request": {"method": "POST", "url": "Observation"},
            }
        )
    return {"resourceType": "Bundle", "type": "batch", "entry": entries}


def test_a_restart_after_5000_results_for_one_patient_keeps_all_5000(
    security_hub: SecurityHub,
) -> None:
    hub = security_hub
    card = _card()
    before = hub.metric(RESULTS, "recognition")
    for _ in range(MANY // PER_BUNDLE):
        hub.post(A, "/fhir", _bundle(A, card, PER_BUNDLE))
    _applied(hub, before, MANY, timeout_s=900)

    def known_to_the_check() -> int:
        got = hub.check(A, f"{CARD_SYSTEM}|{card}", f"{LOINC}|{POTASSIUM}")
        assert got.status_code == 200, got.text
        body = got.json()
        assert len(body["matches"]) <= 20  # the answer stays small …
        return int(body["matches_total"])  # … and counts every result A may see

    assert known_to_the_check() == MANY
    # the worker must rebuild everything from its changelog
    hub.restart("recognition", keep_state=False)
    assert known_to_the_check() == MANY
    # and it still decides this patient's orders (a decision lists at most 20 matches)
    order = hub.post(B, "/fhir/ServiceRequest", _order(B, card, POTASSIUM))
    trace = order.headers["X-Trace-Id"]
    [decision] = hub.wait_for(DECISIONS, lambda e: e.trace_id == trace, timeout_s=120)
    assert decision.payload["matches_total"] == MANY
    assert len(decision.payload["matches"]) == 20


# the last test of the module: what the tests above sent must not be in any log


def test_no_identity_number_sent_to_recognition_reached_a_log(security_hub: SecurityHub) -> None:
    logs = sorted(security_hub.tmp.glob("*.log"))
    assert _ISSUED and any(log.name.startswith("recognition") for log in logs)
    for log in logs:
        text = log.read_text(encoding="utf-8", errors="replace")
        leaked = [card for card in _ISSUED if card[:17] in text]
        assert not leaked, f"{log.name} names {len(leaked)} 身份证 number(s)"
