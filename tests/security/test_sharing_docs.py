"""docs/sharing.md's examples, replayed against the suite's real hub: every request the page
shows is sent (its example ids, tokens and 身份证 replaced by real ones), and the answer's
status and resource type must be the ones the page shows."""

from __future__ import annotations

import random
import re
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx

from tests.conftest import REPO
from tests.fhir_samples import gb11643, service_request
from tests.security.conftest import A2, CARD_SYSTEM, B, C, SecurityHub
from tests.security.test_sharing_reads import CBC, DECISIONS, LOINC, _posted, _result, _search

DOC = REPO / "docs" / "sharing.md"
EXAMPLE_CARD = "140215198102030011"
EXAMPLE_MASTER = "MP3c1f0a9e8d7c6b5a4f3e2d1c"
EXAMPLE_RESULT = "d627d0404c0b4fc77fe67fa138c952b9"
EXAMPLE_ORDER = "f8af84ab8c1e22791953b469e56f5675"
_SEQ = iter(random.sample(range(1, 999, 2), 20))


def _blocks() -> list[str]:
    return re.findall(r"```http\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)


def _pairs() -> list[tuple[str, str]]:
    """(request, expected response) blocks, in the page's order."""
    blocks = _blocks()
    out = []
    for i, block in enumerate(blocks):
        if block.startswith("HTTP/1.1"):
            continue
        assert blocks[i + 1].startswith("HTTP/1.1"), f"no response after {block[:60]!r}"
        out.append((block, blocks[i + 1]))
    return out


def test_the_page_shows_requests_with_their_responses() -> None:
    pairs = _pairs()
    assert len(pairs) >= 9
    for request, _ in pairs:
        assert EXAMPLE_CARD not in request.split("\n", 1)[0]  # never in a request line


def _split(block: str) -> tuple[str, dict[str, str], str]:
    head, _, body = block.partition("\n\n")
    lines = head.strip().split("\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return lines[0], headers, body.strip()


def test_every_example_request_answers_as_the_page_says(security_hub: SecurityHub) -> None:
    hub = security_hub
    card = gb11643(f"14021519830405{next(_SEQ):03d}")
    for i, value in enumerate(("132", "128", "141")):
        hub.post(A2, "/fhir/Observation", _result(A2, card, hours_ago=5 - i, value=value))
    _posted(hub, A2, card, 3)
    order = service_request(B)
    order["subject"] = {"identifier": {"system": CARD_SYSTEM, "value": card}}
    order["code"] = {"coding": [{"system": LOINC, "code": CBC}]}
    order["authoredOn"] = datetime.now(UTC).isoformat()
    trace = hub.post(B, "/fhir/ServiceRequest", order).headers["X-Trace-Id"]
    [decision] = hub.wait_for(DECISIONS, lambda e: e.trace_id == trace)
    found = _search(hub, B, "Observation", {"patient": f"{CARD_SYSTEM}|{card}"}).json()
    result_id = found["entry"][0]["resource"]["id"]
    master = found["entry"][0]["resource"]["subject"]["reference"].split("/")[1]
    deadline = time.monotonic() + 60
    order_id = decision.payload["order_record_id"]
    while _search(hub, B, "DetectedIssue", {"patient": f"Patient/{master}"}).json()["total"] < 1:
        assert time.monotonic() < deadline, "the decision was never readable"
        time.sleep(0.3)

    swaps = {
        EXAMPLE_CARD: card,
        EXAMPLE_MASTER: master,
        EXAMPLE_RESULT: result_id,
        EXAMPLE_ORDER: order_id,
        "mrh_example-token-of-B": hub.tokens[B],
        "mrh_example-token-of-C": hub.tokens[C],
    }
    next_link: str | None = None
    for request, response in _pairs():
        for old, new in swaps.items():
            request = request.replace(old, new)
        line, headers, body = _split(request)
        method, target, _ = line.split(" ")
        if "_cursor=" in target:
            assert next_link is not None, "a page token example before any search"
            target = next_link
        headers.pop("Host", None)
        got = httpx.request(
            method,
            f"{hub.gateway}{target}",
            headers=headers,
            content=body.encode() if body else None,
            timeout=30,
        )
        status_line, _, expected_body = response.partition("\n\n")
        expected_status = int(status_line.split()[1])
        assert got.status_code == expected_status, (line, got.text[:500])
        expected_type = re.search(r'"resourceType": "(\w+)"', expected_body)
        doc: dict[str, Any] = got.json()
        if expected_type:
            assert doc["resourceType"] == expected_type[1], line
        if doc.get("resourceType") == "Bundle":
            for link in doc.get("link", []):
                assert card not in link["url"] and quote(card) not in link["url"]
                if link["relation"] == "next":
                    next_link = link["url"].split(hub.gateway, 1)[1]
    assert next_link is not None
