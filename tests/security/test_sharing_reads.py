"""FHIR reads of the shared record (issue 16), tried as a hospital would — and as an attacker:
search, paging, read by id and decisions, against the suite's hub of real processes
(tests/security/conftest.py).

- B (Taiyuan) may read A2's (Taiyuan, municipal lab qualification) blood counts: it finds
  them, with their values, pages through them and reads each by id; every search and read is
  on the audit topic;
- C (Datong) may read none of them: its search answers exactly as for an unknown patient,
  and its reads by id get the same 404 as an unknown id;
- a page token altered, or used by another hospital, is refused; the identifier never
  appears in a link; no token is 401; a decision is readable only by the ordering hospital.
"""

from __future__ import annotations

import base64
import random
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from tests.fhir_samples import gb11643, observation, service_request
from tests.security.conftest import A2, CARD_SYSTEM, B, C, SecurityHub

LOINC = "http://loinc.org"
CBC = "58410-2"
AUDIT = "mrhub.audit.access-recorded.v1"
DECISIONS = "mrhub.recognition.decision-made.v1"
FHIR = "application/fhir+json"
HEX32 = re.compile(r"^[0-9a-f]{32}$")

_SEQ = iter(random.sample(range(1, 999, 2), 200))


def _card() -> str:
    """A 身份证 no other module uses (Datong, born 1981-02-03)."""
    return gb11643(f"14021519810203{next(_SEQ):03d}")


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


def _result(inst: str, card: str, *, hours_ago: float, value: str) -> dict[str, Any]:
    taken = datetime.now(UTC) - timedelta(hours=hours_ago)
    doc = observation(
        inst, subject={"identifier": {"system": CARD_SYSTEM, "value": card}}, value=value
    )
    doc["code"] = {"coding": [{"system": LOINC, "code": CBC, "display": "血常规"}]}
    doc["valueQuantity"] = {"value": f"@@{value}@@", "unit": "g/L"}
    doc["referenceRange"] = [{"text": "130-175 g/L"}]
    doc["effectiveDateTime"] = _iso(taken)
    doc["issued"] = _iso(taken + timedelta(minutes=30))
    return doc


def _search(
    hub: SecurityHub, inst: str | None, type_: str, form: dict[str, str], **headers: str
) -> httpx.Response:
    """POST [type]/_search with a form body (the identifier stays out of the URL)."""
    return httpx.post(
        f"{hub.url('recognition')}/fhir/{type_}/_search",
        data=form,
        headers={**(hub.auth(inst) if inst else {}), **headers},
        timeout=30,
    )


def _get(hub: SecurityHub, inst: str | None, url: str, **headers: str) -> httpx.Response:
    return httpx.get(url, headers={**(hub.auth(inst) if inst else {}), **headers}, timeout=30)


def _posted(hub: SecurityHub, inst: str, card: str, count: int, timeout_s: float = 120) -> None:
    """Wait until ``inst``'s own search finds ``count`` of the card's blood counts."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = _search(hub, inst, "Observation", {"patient": f"{CARD_SYSTEM}|{card}"})
        if got.status_code == 200 and got.json()["total"] >= count:
            return
        assert time.monotonic() < deadline, got.text[:500]
        time.sleep(0.3)


def _three_results(hub: SecurityHub) -> str:
    card = _card()
    for i, value in enumerate(("132", "128", "141")):
        hub.post(A2, "/fhir/Observation", _result(A2, card, hours_ago=10 - i, value=value))
    _posted(hub, A2, card, 3)
    return card


def _audited(hub: SecurityHub, reader: str, purpose: str, count: int) -> list[Any]:
    return hub.wait_for(
        AUDIT,
        lambda e: e.payload.get("reader") == reader and e.payload.get("purpose") == purpose,
        count=count,
    )


def test_an_in_scope_hospital_searches_pages_and_reads_back_values(
    security_hub: SecurityHub,
) -> None:
    hub = security_hub
    card = _three_results(hub)
    before_search = len(_audited(hub, B, "fhir-search", 0))
    before_read = len(_audited(hub, B, "fhir-read", 0))

    first = _search(hub, B, "Observation", {"patient": f"{CARD_SYSTEM}|{card}", "_count": "2"})
    assert first.status_code == 200, first.text
    page1 = first.json()
    assert page1["resourceType"] == "Bundle" and page1["type"] == "searchset"
    assert page1["total"] == 3 and len(page1["entry"]) == 2
    links = {link["relation"]: link["url"] for link in page1["link"]}
    assert card not in first.text  # no 身份证 in the bundle, not even in a link
    assert "next" in links and card not in links["next"]
    second = _get(hub, B, links["next"])
    assert second.status_code == 200, second.text
    page2 = second.json()
    assert page2["total"] == 3 and len(page2["entry"]) == 1
    assert "next" not in {link["relation"] for link in page2["link"]}

    entries = page1["entry"] + page2["entry"]
    values = sorted(e["resource"]["valueQuantity"]["value"] for e in entries)
    assert values == [128, 132, 141]  # the values as posted
    for entry in entries:
        res = entry["resource"]
        assert HEX32.match(res["id"])
        assert entry["fullUrl"].endswith(f"/fhir/Observation/{res['id']}")
        assert res["meta"]["source"].endswith(A2)
        assert {"code": A2}.items() <= res["meta"]["tag"][0].items()
        assert res["meta"]["lastUpdated"]
        assert res["referenceRange"] == [{"text": "130-175 g/L"}]
        assert res["subject"]["reference"].startswith("Patient/")
        read = _get(hub, B, entry["fullUrl"])
        assert read.status_code == 200, read.text
        assert read.json() == res

    # _summary=count, a code filter and a date filter
    count = _search(
        hub, B, "Observation", {"patient": f"{CARD_SYSTEM}|{card}", "_summary": "count"}
    ).json()
    assert count["total"] == 3 and "entry" not in count
    none = _search(
        hub,
        B,
        "Observation",
        {"patient": f"{CARD_SYSTEM}|{card}", "code": f"{LOINC}|2823-3"},
    ).json()
    assert none["total"] == 0
    future = (datetime.now(UTC) + timedelta(days=2)).date().isoformat()
    dated = _search(
        hub, B, "Observation", {"patient": f"{CARD_SYSTEM}|{card}", "date": f"ge{future}"}
    ).json()
    assert dated["total"] == 0
    # every search and read went on the audit topic, as B's, naming A2
    searches = _audited(hub, B, "fhir-search", before_search + 5)
    assert any(A2 in e.payload["shown_institutions"] for e in searches[before_search:])
    reads = _audited(hub, B, "fhir-read", before_read + 3)
    assert all(e.payload["master_patient_id"] for e in reads[-3:])
    assert all(card not in str(e.payload) for e in searches + reads)


def test_an_out_of_scope_hospital_gets_what_an_unknown_patient_gets(
    security_hub: SecurityHub,
) -> None:
    hub = security_hub
    card = _three_results(hub)
    unknown = _card()
    known_answer = _search(hub, C, "Observation", {"patient": f"{CARD_SYSTEM}|{card}"})
    unknown_answer = _search(hub, C, "Observation", {"patient": f"{CARD_SYSTEM}|{unknown}"})
    for got in (known_answer, unknown_answer):
        assert got.status_code == 200, got.text
        doc = got.json()
        assert doc["total"] == 0 and "entry" not in doc
        assert [link["relation"] for link in doc["link"]] == ["self"]

    def shape(doc: dict[str, Any]) -> dict[str, Any]:
        token = doc["link"][0]["url"].split("_cursor=")[1].split(".")[0]
        body = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        return {**doc, "link": [re.sub(rb'"x":\d+', b"", body)]}

    assert shape(known_answer.json()) == shape(unknown_answer.json())
    # reading B's view of the ids: C gets the same 404 as for an id that does not exist
    mine = _search(hub, A2, "Observation", {"patient": f"{CARD_SYSTEM}|{card}"}).json()
    ids = [e["resource"]["id"] for e in mine["entry"]]
    base = f"{hub.url('recognition')}/fhir/Observation"
    refused = [_get(hub, C, f"{base}/{rid}") for rid in ids]
    missing = _get(hub, C, f"{base}/{'0' * 32}")
    assert {r.status_code for r in refused} == {404} and missing.status_code == 404
    assert {r.text for r in refused} == {missing.text}
    assert "OperationOutcome" in missing.text


def test_page_tokens_cannot_be_altered_or_used_by_another_hospital(
    security_hub: SecurityHub,
) -> None:
    hub = security_hub
    card = _three_results(hub)
    got = _search(hub, B, "Observation", {"patient": f"{CARD_SYSTEM}|{card}", "_count": "1"})
    nxt = {link["relation"]: link["url"] for link in got.json()["link"]}["next"]
    token = nxt.split("_cursor=")[1]
    body, mac = token.split(".")
    raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    tampered_body = base64.urlsafe_b64encode(raw.replace(b'"o":1', b'"o":0')).rstrip(b"=")
    tampered = nxt.replace(body, tampered_body.decode())
    base = nxt.split("?")[0]
    for url, who in ((tampered, B), (f"{base}?_cursor={body}.{mac[::-1]}", B), (nxt, C)):
        refused = _get(hub, who, url)
        assert refused.status_code == 400, refused.text
        assert refused.json()["resourceType"] == "OperationOutcome"
        assert "_cursor" in refused.text
    assert _get(hub, B, nxt).status_code == 200


def test_no_token_unknown_parameters_and_unknown_types_are_refused(
    security_hub: SecurityHub,
) -> None:
    hub = security_hub
    base = hub.url("recognition")
    for got in (
        _get(hub, None, f"{base}/fhir/Observation?patient=Patient/MP0"),
        _get(hub, None, f"{base}/fhir/Observation/{'0' * 32}"),
        _search(hub, None, "Observation", {"patient": f"{CARD_SYSTEM}|x"}),
    ):
        assert got.status_code == 401, got.text
        assert got.json()["resourceType"] == "OperationOutcome"
    card = _card()
    strict = _search(hub, B, "Observation", {"patient": f"{CARD_SYSTEM}|{card}", "colour": "red"})
    assert strict.status_code == 400 and "colour" in strict.text
    lenient = _search(
        hub,
        B,
        "Observation",
        {"patient": f"{CARD_SYSTEM}|{card}", "colour": "red"},
        Prefer="handling=lenient",
    )
    assert lenient.status_code == 200, lenient.text
    no_patient = _search(hub, B, "Observation", {"code": CBC})
    assert no_patient.status_code == 400 and "patient" in no_patient.text
    other_type = _get(hub, B, f"{base}/fhir/Patient/{'0' * 32}")
    assert other_type.status_code == 404


def test_a_decision_is_readable_by_the_ordering_hospital_only(
    security_hub: SecurityHub,
) -> None:
    hub = security_hub
    card = _three_results(hub)
    order = service_request(B)
    order["subject"] = {"identifier": {"system": CARD_SYSTEM, "value": card}}
    order["code"] = {"coding": [{"system": LOINC, "code": CBC}]}
    order["authoredOn"] = _iso(datetime.now(UTC))
    trace = hub.post(B, "/fhir/ServiceRequest", order).headers["X-Trace-Id"]
    [decision] = hub.wait_for(DECISIONS, lambda e: e.trace_id == trace)
    order_id = decision.payload["order_record_id"]
    decision_id = decision.payload["decision_id"]
    base = hub.url("recognition")

    deadline = time.monotonic() + 60
    while True:
        found = _get(hub, B, f"{base}/fhir/DetectedIssue?implicated=ServiceRequest/{order_id}")
        assert found.status_code == 200, found.text
        if found.json()["total"] >= 1:
            break
        assert time.monotonic() < deadline
        time.sleep(0.3)
    [entry] = found.json()["entry"]
    issue = entry["resource"]
    assert issue["id"] == decision_id and issue["status"] == "final"
    implicated = [i.get("reference") for i in issue["implicated"]]
    assert f"ServiceRequest/{order_id}" in implicated
    # every reference in it reads back for B
    for ref in implicated:
        assert _get(hub, B, f"{base}/fhir/{ref}").status_code == 200, ref
    sr = _get(hub, B, f"{base}/fhir/ServiceRequest/{order_id}").json()
    assert sr["code"]["coding"][0]["code"] == CBC
    # someone else's decision: not readable, not findable
    for other in (A2, C):
        assert _get(hub, other, f"{base}/fhir/DetectedIssue/{decision_id}").status_code == 404
        seen = _get(hub, other, f"{base}/fhir/DetectedIssue?implicated=ServiceRequest/{order_id}")
        assert seen.json()["total"] == 0
    by_patient = _search(hub, B, "DetectedIssue", {"patient": f"{CARD_SYSTEM}|{card}"}).json()
    assert decision_id in [e["resource"]["id"] for e in by_patient.get("entry", [])]


def test_with_two_workers_every_search_and_read_by_id_answers_from_either(
    security_hub: SecurityHub,
) -> None:
    """A read by id does not name the patient: the worker that does not hold the record asks
    the other one. A search is forwarded to the owner. A forged routing or on-behalf-of
    header from a hospital changes nothing."""
    from services.common.broker import free_port
    from tests.support import run_module, stop_process

    hub = security_hub
    cards = [_three_results(hub) for _ in range(3)]  # over 3 partitions
    ids = {
        card: [
            e["resource"]["id"]
            for e in _search(hub, B, "Observation", {"patient": f"{CARD_SYSTEM}|{card}"}).json()[
                "entry"
            ]
        ]
        for card in cards
    }
    name = "recognition-reads-2"
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
        forged = {"X-Mrhub-Routed": "1", "X-Mrhub-On-Behalf-Of": A2}
        for card in cards:
            for url in workers:
                got = httpx.post(
                    f"{url}/fhir/Observation/_search",
                    data={"patient": f"{CARD_SYSTEM}|{card}"},
                    headers=hub.auth(B),
                    timeout=30,
                )
                assert got.status_code == 200, got.text
                assert sorted(e["resource"]["id"] for e in got.json()["entry"]) == sorted(ids[card])
                for rid in ids[card]:
                    read = _get(hub, B, f"{url}/fhir/Observation/{rid}")
                    assert read.status_code == 200, (url, read.text)
                    assert read.json()["id"] == rid
                    # C pretending to be forwarded for A2 is still C: nothing
                    spoofed = _get(hub, C, f"{url}/fhir/Observation/{rid}", **forged)
                    assert spoofed.status_code == 404, spoofed.text
    finally:
        stop_process(second)
        for card in cards:  # the remaining worker takes the partitions back
            _posted(hub, B, card, 3, timeout_s=180)


def test_a_superseded_decision_stays_readable_marked_as_replaced(
    security_hub: SecurityHub,
) -> None:
    hub = security_hub
    card = _card()
    first = _result(A2, card, hours_ago=3, value="132")
    hub.post(A2, "/fhir/Observation", first)
    _posted(hub, A2, card, 1)
    order = service_request(B)
    order["subject"] = {"identifier": {"system": CARD_SYSTEM, "value": card}}
    order["code"] = {"coding": [{"system": LOINC, "code": CBC}]}
    order["authoredOn"] = _iso(datetime.now(UTC))
    trace = hub.post(B, "/fhir/ServiceRequest", order).headers["X-Trace-Id"]
    [decided] = hub.wait_for(DECISIONS, lambda e: e.trace_id == trace)
    order_id = decided.payload["order_record_id"]
    # A2 amends the result the decision relied on: the decision is made again
    amended = {**first, "status": "amended", "valueQuantity": {"value": "@@133@@", "unit": "g/L"}}
    amended["issued"] = _iso(datetime.now(UTC))
    hub.post(A2, "/fhir/Observation", amended)
    [reissued] = hub.wait_for(
        DECISIONS, lambda e: e.payload.get("supersedes") == decided.payload["decision_id"]
    )
    base = f"{hub.url('recognition')}/fhir/DetectedIssue"
    deadline = time.monotonic() + 60
    while True:
        got = _get(hub, B, f"{base}?implicated=ServiceRequest/{order_id}").json()
        if got["total"] >= 2:
            break
        assert time.monotonic() < deadline, got
        time.sleep(0.3)
    issues = {e["resource"]["id"]: e["resource"] for e in got["entry"]}
    old = issues[decided.payload["decision_id"]]
    new = issues[reissued.payload["decision_id"]]
    assert new["status"] == "final"
    assert old["status"] == "cancelled"
    assert {
        "url": "https://fhir.mrhub.cn/StructureDefinition/superseded-by",
        "valueReference": {"reference": f"DetectedIssue/{new['id']}"},
    } in old["extension"]
    assert _get(hub, B, f"{base}/{old['id']}").json()["status"] == "cancelled"


def test_the_check_answer_shows_the_value_and_points_at_a_record_that_reads_back(
    security_hub: SecurityHub,
) -> None:
    hub = security_hub
    card = _card()
    hub.post(A2, "/fhir/Observation", _result(A2, card, hours_ago=2, value="132"))
    _posted(hub, A2, card, 1)
    answer = hub.check(B, f"{CARD_SYSTEM}|{card}", f"{LOINC}|{CBC}").json()
    [row] = answer["matches"]
    assert row["value"]["value"] == "132" and row["value"]["unit"] == "g/L"
    assert row["value"]["text"] == "132 g/L（参考范围 130-175 g/L）"
    assert row["conclusion"] is None and row["images"] == [] and row["viewer"] is None
    ref = row["report"]["reference"]
    assert ref == f"Observation/{row['report']['record_id']}"
    assert row["report"]["url"] == f"{hub.url('recognition')}/fhir/{ref}"
    read = _get(hub, B, row["report"]["url"])
    assert read.status_code == 200, read.text
    assert read.json()["valueQuantity"]["value"] == 132
    # through the gateway's public base, the links name the gateway's address
    from services.common.forwarding import forwarded_headers
    from services.common.settings import Settings

    settings = Settings.model_validate(
        {"identity": {"hmac_key": hub.env("recognition")["MRHUB_IDENTITY__HMAC_KEY"]}}
    )
    proxied = httpx.post(
        f"{hub.url('recognition')}/recognition/check",
        json={"patient": f"{CARD_SYSTEM}|{card}", "code": f"{LOINC}|{CBC}"},
        headers={**hub.auth(B), **forwarded_headers(settings, "https://hub.example")},
        timeout=30,
    ).json()
    assert proxied["matches"][0]["report"]["url"] == f"https://hub.example/fhir/{ref}"
    forged = httpx.post(
        f"{hub.url('recognition')}/recognition/check",
        json={"patient": f"{CARD_SYSTEM}|{card}", "code": f"{LOINC}|{CBC}"},
        headers={**hub.auth(B), "X-Mrhub-Public-Base": "https://evil.example"},
        timeout=30,
    ).json()
    assert "evil" not in str(forged)
