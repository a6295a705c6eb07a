"""CDS Hooks cards, requests and feedback (services/recognition/cards.py), checked field by
field against the CDS Hooks 2.0 specification: a JSON Schema written from the spec's text
(tests/fixtures/cds-hooks/cds-hooks-2.0.schema.json, each definition citing its section),
which the spec's own example responses pass, and the spec's own example requests."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from services.recognition.cards import (
    MAX_DRAFT_ORDERS,
    OVERRIDE_REASON_SYSTEM,
    SERVICES,
    SUMMARY_MAX,
    CardClaims,
    CardSigner,
    DraftOrder,
    FeedbackItem,
    HookRequest,
    Problem,
    build_card,
    discovery,
    override_reasons,
    parse_feedback_request,
    parse_hook_request,
)
from services.recognition.feedback import NATIONAL_EXCEPTIONS, exception_reasons

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "cds-hooks"
SCHEMA = json.loads((FIXTURES / "cds-hooks-2.0.schema.json").read_text(encoding="utf-8"))
BASE = "https://hub.example.cn"
CARD = "urn:oid:2.16.156.10011.1.3"


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def validate(doc: Any, definition: str) -> None:
    """``doc`` against the schema's ``definition`` (raises on the first violation)."""
    schema = {**SCHEMA, "$ref": f"#/$defs/{definition}"}
    jsonschema.Draft202012Validator(schema).validate(doc)


def violations(doc: Any, definition: str) -> list[str]:
    schema = {**SCHEMA, "$ref": f"#/$defs/{definition}"}
    return [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(doc)]


# ── a check answer of the contract-4 shape ───────────────────────────────────────────────


def hb_answer() -> dict[str, Any]:
    return {
        "decision": "recognisable",
        "reason": "recognisable",
        "detail": "…",
        "master_patient_id": "MP0123456789abcdef01234567",
        "item": {"id": "CBC", "name": "血常规", "category": "lab"},
        "matches": [
            {
                "institution": "12140107405412652L",
                "institution_name": "太原市杏花岭区中心医院",
                "performed_at": "2026-12-01T08:00:00+00:00",
                "valid_until": "2026-12-08T08:00:00+00:00",
                "recognisable": True,
                "reason": "recognisable",
                "hr_scope": "municipal",
                "report": {
                    "reference": "Observation/0123456789abcdef0123456789abcdef",
                    "record_id": "0123456789abcdef0123456789abcdef",
                    "url": f"{BASE}/fhir/Observation/0123456789abcdef0123456789abcdef",
                },
                "value": {
                    "value": "132",
                    "unit": "g/L",
                    "reference_range": "130-175 g/L",
                    "interpretation": "N",
                    "text": "132 g/L（参考范围 130-175 g/L）",
                },
                "conclusion": None,
            }
        ],
        "matches_total": 1,
        "catalog_version": "2026.1",
    }


def ct_answer() -> dict[str, Any]:
    return {
        "decision": "recognisable",
        "reason": "recognisable",
        "master_patient_id": "MP0123456789abcdef01234567",
        "item": {"id": "CT-CHEST", "name": "胸部CT平扫", "category": "imaging"},
        "matches": [
            {
                "institution": "12140107405412652L",
                "institution_name": "太原市杏花岭区中心医院",
                "performed_at": "2026-11-20T02:00:00+00:00",
                "valid_until": "2027-02-18T02:00:00+00:00",
                "recognisable": True,
                "reason": "recognisable",
                "hr_scope": "municipal",
                "report": {
                    "reference": "DiagnosticReport/fedcba9876543210fedcba9876543210",
                    "record_id": "fedcba9876543210fedcba9876543210",
                    "url": f"{BASE}/fhir/DiagnosticReport/fedcba9876543210fedcba9876543210",
                },
                "value": None,
                "conclusion": "双肺未见明显异常 | 纵隔淋巴结不大\n建议随访",
                "images": ["https://pacs.example.cn/dicom-web/studies/1.2.840.99.1"],
                "viewer": "https://pacs.example.cn/viewer?StudyInstanceUIDs=1.2.840.99.1",
            }
        ],
        "matches_total": 1,
        "catalog_version": "2026.1",
    }


SIGNER = CardSigner(b"unit-test-key")
REASONS = {**exception_reasons(None), "insurance": ("医保审核要求", "provincial")}


def claims(order: str = "ServiceRequest/draft-1", **change: Any) -> CardClaims:
    base: dict[str, Any] = {
        "institution": "12140110405530210H",
        "service": "mrhub-recognition-select",
        "master_patient_id": "MP0123456789abcdef01234567",
        "system": "http://loinc.org",
        "code": "58410-2",
        "item_id": "CBC",
        "item_category": "lab",
        "outcome": "recognisable",
        "result_record_id": "0123456789abcdef0123456789abcdef",
        "order": order,
        "catalog_version": "2026.1",
        "issued": int(datetime.now(UTC).timestamp()),
    }
    return CardClaims(**{**base, **change})


def card_of(answer: dict[str, Any], order_id: str = "draft-1") -> dict[str, Any] | None:
    order = DraftOrder(id=order_id, codes=("http://loinc.org|58410-2",), subject=None)
    return build_card(
        answer,
        order,
        "http://loinc.org|58410-2",
        claims_for=claims(order.reference),
        signer=SIGNER,
        reasons=REASONS,
        hub_base=BASE,
    )


# ── the schema itself: the spec's own example responses pass it ─────────────────────────


def test_the_specs_own_examples_pass_the_schema_written_from_its_text() -> None:
    validate(fixture("spec-discovery-response.json"), "DiscoveryResponse")
    validate(fixture("spec-cards-response.json"), "ServiceResponse")
    for name in (
        "spec-feedback-accepted.json",
        "spec-feedback-overridden.json",
        "spec-feedback-overridden-reason.json",
    ):
        validate(fixture(name), "FeedbackRequest")
    for name in ("spec-order-select-request.json", "spec-order-sign-request.json"):
        validate(fixture(name), "HookRequest")


def test_the_schema_catches_what_the_spec_forbids() -> None:
    """The schema can fail: each spec rule broken once."""
    good = card_of(hb_answer())
    assert good is not None
    broken: list[tuple[str, Any]] = [
        ("summary", "长" * 140),  # §Card Attributes: <140 characters
        ("indicator", "hard-stop"),
        ("source", {"url": BASE}),  # §Source: label REQUIRED
        ("selectionBehavior", None),  # §Card: REQUIRED with suggestions
        ("overrideReasons", [{"system": OVERRIDE_REASON_SYSTEM, "code": "x"}]),  # display
        ("links", [{"label": "x", "url": "/fhir/Observation/1", "type": "absolute"}]),
    ]
    for member, value in broken:
        card = copy.deepcopy(good)
        if value is None:
            del card[member]
        else:
            card[member] = value
        assert violations(card, "Card"), member
    delete = copy.deepcopy(good)
    delete["suggestions"][0]["actions"][0] = {
        "type": "delete",
        "description": "x",
        "resource": "ServiceRequest/draft-1",  # §Action: DEPRECATED for delete; resourceId
    }
    assert violations(delete, "Card")


# ── discovery ────────────────────────────────────────────────────────────────────────────


def test_discovery_lists_both_hooks_with_prefetch_in_chinese_and_english() -> None:
    doc = discovery()
    validate(doc, "DiscoveryResponse")
    hooks = {s["id"]: s["hook"] for s in doc["services"]}
    assert (
        hooks
        == SERVICES
        == {
            "mrhub-recognition-select": "order-select",
            "mrhub-recognition-sign": "order-sign",
        }
    )
    for service in doc["services"]:
        assert service["prefetch"] == {"patient": "Patient/{{context.patientId}}"}
        assert "互认" in service["title"] and "互认" in service["description"]
        assert "earlier result" in service["description"] or "advice" in service["description"]
        assert "JWT" in service["usageRequirements"]


# ── the request ──────────────────────────────────────────────────────────────────────────


def draft(order_id: str, code: str = "58410-2", card: str | None = None) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "id": order_id,
        "status": "draft",
        "intent": "order",
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
    }
    if card:
        resource["subject"] = {"identifier": {"system": CARD, "value": card}}
    return {"resource": resource}


def hook_request(hook: str = "order-select", **context: Any) -> dict[str, Any]:
    ctx: dict[str, Any] = {
        "userId": "Practitioner/1",
        "patientId": "p1",
        "draftOrders": {"resourceType": "Bundle", "entry": [draft("a"), draft("b", "24627-2")]},
        **context,
    }
    if hook == "order-select":
        ctx.setdefault("selections", ["ServiceRequest/a"])
    return {
        "hook": hook,
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "context": ctx,
        "prefetch": {
            "patient": {
                "resourceType": "Patient",
                "identifier": [
                    {"system": "http://hospital.example/mrn", "value": "M-1"},
                    {"system": CARD, "value": "140105197001010012"},
                ],
            }
        },
    }


def test_the_specs_example_requests_are_taken_and_hold_no_order_to_check() -> None:
    for name, service in (
        ("spec-order-select-request.json", "mrhub-recognition-select"),
        ("spec-order-sign-request.json", "mrhub-recognition-sign"),
    ):
        parsed = parse_hook_request(fixture(name), service)
        assert isinstance(parsed, HookRequest), parsed
        # a diet and a medication: nothing for recognition
        assert parsed.orders == () and parsed.identifiers == ()
        assert parsed.user_id == "PractitionerRole/123" and parsed.patient_id == "1288992"


def test_order_select_checks_the_selected_orders_and_order_sign_all() -> None:
    select = parse_hook_request(hook_request(), "mrhub-recognition-select")
    assert isinstance(select, HookRequest)
    assert [o.reference for o in select.orders] == ["ServiceRequest/a"]
    # the 身份证 first, then the hospital's own number
    assert select.identifiers == (f"{CARD}|140105197001010012", "http://hospital.example/mrn|M-1")
    sign = parse_hook_request(hook_request("order-sign"), "mrhub-recognition-sign")
    assert isinstance(sign, HookRequest)
    assert [o.id for o in sign.orders] == ["a", "b"]
    assert sign.orders[1].codes == ("http://loinc.org|24627-2",)


def test_the_orders_subject_identifier_names_the_patient_without_a_prefetch() -> None:
    doc = hook_request(
        "order-sign",
        draftOrders={"resourceType": "Bundle", "entry": [draft("a", card="140105197001010012")]},
    )
    del doc["prefetch"]
    parsed = parse_hook_request(doc, "mrhub-recognition-sign")
    assert isinstance(parsed, HookRequest)
    assert parsed.identifiers == (f"{CARD}|140105197001010012",)


def _problems(doc: dict[str, Any], service: str = "mrhub-recognition-select") -> list[str]:
    parsed = parse_hook_request(doc, service)
    assert isinstance(parsed, list), "the request should have been refused"
    assert all(isinstance(p, Problem) for p in parsed)
    return [p.expression for p in parsed]


def test_a_bad_request_names_each_wrong_member() -> None:
    # the wrong hook for the service (and so no selections either)
    assert _problems(hook_request("order-sign")) == ["hook", "context.selections"]
    wrong = hook_request()
    assert _problems(wrong, "mrhub-recognition-sign") == ["hook"]
    doc = hook_request()
    del doc["hook"], doc["hookInstance"]
    assert _problems(doc) == ["hook", "hookInstance"]
    doc = hook_request()
    doc["context"] = "p1"
    assert _problems(doc) == ["context"]
    doc = hook_request()
    del doc["context"]["userId"], doc["context"]["selections"]
    assert _problems(doc) == ["context.userId", "context.selections"]
    assert _problems(hook_request(draftOrders=[draft("a")])) == ["context.draftOrders"]
    many = {"resourceType": "Bundle", "entry": [draft(f"o{n}") for n in range(51)]}
    assert _problems(hook_request(draftOrders=many)) == ["context.draftOrders.entry"]
    assert MAX_DRAFT_ORDERS == 50
    no_id = {"resourceType": "Bundle", "entry": [draft("a/../b")]}
    assert _problems(hook_request(draftOrders=no_id)) == [
        "context.draftOrders.entry[0].resource.id"
    ]
    twice = {"resourceType": "Bundle", "entry": [draft("a"), draft("a")]}
    assert _problems(hook_request(draftOrders=twice)) == [
        "context.draftOrders.entry[1].resource.id"
    ]
    assert _problems(hook_request(selections=[])) == ["context.selections"]
    assert _problems({**hook_request(), "prefetch": []}) == ["prefetch"]


# ── the card ─────────────────────────────────────────────────────────────────────────────


def test_a_haemoglobin_card_shows_the_value_range_date_hospital_scope_and_validity() -> None:
    card = card_of(hb_answer())
    assert card is not None
    validate({"cards": [card]}, "ServiceResponse")
    summary = card["summary"]
    assert len(summary) <= SUMMARY_MAX < 140
    assert "可互认" in summary and "132 g/L" in summary and "血常规" in summary
    detail = card["detail"]
    for shown in (
        "132 g/L",
        "130-175 g/L",
        "2026-12-01",
        "太原市杏花岭区中心医院",
        "市级",
        "2026-12-08",
        "Observation/0123456789abcdef0123456789abcdef",
    ):
        assert shown in detail, shown
    assert card["indicator"] == "info"
    assert card["source"]["label"] and card["source"]["topic"]["code"] == "mutual-recognition"
    assert card["links"] == [
        {
            "label": "既往结果 Observation/0123456789abcdef0123456789abcdef",
            "url": f"{BASE}/fhir/Observation/0123456789abcdef0123456789abcdef",
            "type": "absolute",
        }
    ]


def test_the_suggestion_deletes_the_draft_order_by_resource_id() -> None:
    card = card_of(hb_answer(), "draft-7")
    assert card is not None
    [suggestion] = card["suggestions"]
    assert card["selectionBehavior"] == "at-most-one"
    assert suggestion["isRecommended"] is True and suggestion["uuid"]
    [action] = suggestion["actions"]
    # §Action (2.0): a delete names its target in resourceId, not resource
    assert action["type"] == "delete" and action["resourceId"] == "ServiceRequest/draft-7"
    assert "resource" not in action
    assert "ServiceRequest/draft-7" in action["description"]


def test_override_reasons_are_the_national_list_and_the_provinces_own() -> None:
    card = card_of(hb_answer())
    assert card is not None
    codes = {r["code"]: r for r in card["overrideReasons"]}
    assert set(NATIONAL_EXCEPTIONS) | {"insurance"} == set(codes)
    assert codes["condition-changed"]["display"] == "病情变化"
    assert codes["insurance"]["display"] == "医保审核要求"
    assert {r["system"] for r in card["overrideReasons"]} == {OVERRIDE_REASON_SYSTEM}
    assert override_reasons({}) == []


def test_a_ct_card_shows_the_impression_images_and_viewer_as_a_warning() -> None:
    card = card_of(ct_answer())
    assert card is not None
    validate({"cards": [card]}, "ServiceResponse")
    assert card["indicator"] == "warning"
    assert "双肺未见明显异常" in card["summary"]
    detail = card["detail"]
    # the impression's pipe and line break cannot break the Markdown table
    assert "双肺未见明显异常 \\| 纵隔淋巴结不大 建议随访" in detail
    assert all(line.count("|") - line.count("\\|") in (0, 3) for line in detail.splitlines())
    urls = [link["url"] for link in card["links"]]
    assert urls == [
        f"{BASE}/fhir/DiagnosticReport/fedcba9876543210fedcba9876543210",
        "https://pacs.example.cn/dicom-web/studies/1.2.840.99.1",
        "https://pacs.example.cn/viewer?StudyInstanceUIDs=1.2.840.99.1",
    ]


def test_a_long_name_and_value_keep_the_summary_under_140_characters() -> None:
    answer = hb_answer()
    answer["item"]["name"] = "超长项目名称" * 20
    answer["matches"][0]["institution_name"] = "非常长的医院名称" * 20
    answer["matches"][0]["value"]["text"] = "9" * 300
    card = card_of(answer)
    assert card is not None and len(card["summary"]) <= SUMMARY_MAX


def test_no_card_when_nothing_recognisable_is_visible_to_the_caller() -> None:
    refused = {**hb_answer(), "decision": "not-recognisable"}
    assert card_of(refused) is None
    out_of_scope = {**hb_answer(), "matches": [], "matches_total": 0, "master_patient_id": None}
    assert card_of(out_of_scope) is None
    expired = hb_answer()
    expired["matches"][0]["recognisable"] = False
    assert card_of(expired) is None


def test_markup_in_a_hospitals_text_is_shown_as_text() -> None:
    answer = ct_answer()
    answer["matches"][0]["conclusion"] = "见 [链接](javascript:alert(1)) <script>x</script>"
    card = card_of(answer)
    assert card is not None
    detail = card["detail"]
    assert "[链接](javascript" not in detail and "<script>" not in detail
    assert "\\[链接\\](javascript" in detail and "\\<script\\>" in detail


# ── the card's uuid ──────────────────────────────────────────────────────────────────────


def test_the_card_uuid_opens_only_with_the_hubs_key_unchanged_and_in_time() -> None:
    now = datetime.now(UTC)
    mine = claims()
    token = SIGNER.sign(mine)
    assert SIGNER.open(token, now) == mine
    assert CardSigner(b"another-key").open(token, now) is None
    body, mac = token[len(CardSigner.PREFIX) :].split(".")
    forged = CardSigner.PREFIX + body[:-2] + ("AA" if body[-2:] != "AA" else "BB") + "." + mac
    assert SIGNER.open(forged, now) is None
    assert SIGNER.open("4e0a3a1e-3283-4575-ab82-028d55fe2719", now) is None  # the spec's
    assert SIGNER.open(token, now + timedelta(days=8)) is None
    # nothing that names the patient is in it: only the master id, codes and record ids
    assert "140105" not in token


def test_the_suggestion_uuid_is_a_uuid_derived_from_the_card() -> None:
    one, other = claims(), claims(order="ServiceRequest/draft-2")
    assert SIGNER.suggestion_uuid(one) == SIGNER.suggestion_uuid(one)
    assert SIGNER.suggestion_uuid(one) != SIGNER.suggestion_uuid(other)
    assert len(SIGNER.suggestion_uuid(one)) == 36


# ── feedback ─────────────────────────────────────────────────────────────────────────────


def test_the_specs_feedback_examples_are_read() -> None:
    accepted = parse_feedback_request(fixture("spec-feedback-accepted.json"))
    assert isinstance(accepted[0], FeedbackItem)
    assert accepted[0].outcome == "accepted"
    assert accepted[0].accepted == ("e56e1945-20b3-4393-8503-a1a20fd73152",)
    plain = parse_feedback_request(fixture("spec-feedback-overridden.json"))
    assert isinstance(plain[0], FeedbackItem) and plain[0].reason_code is None
    # the spec's example reason is of another service's code system: not one of ours
    foreign = parse_feedback_request(fixture("spec-feedback-overridden-reason.json"))
    assert [p.expression for p in foreign if isinstance(p, Problem)] == [
        "feedback[0].overrideReason.reason"
    ]


def test_feedback_with_our_reason_and_a_comment_is_read() -> None:
    doc = {
        "feedback": [
            {
                "card": "mrc1.x.y",
                "outcome": "overridden",
                "overrideReason": {
                    "reason": {"system": OVERRIDE_REASON_SYSTEM, "code": "condition-changed"},
                    "userComment": "发热加重",
                },
                "outcomeTimestamp": "2026-12-05T10:00:00Z",
            }
        ]
    }
    validate(doc, "FeedbackRequest")
    [item] = parse_feedback_request(doc)
    assert isinstance(item, FeedbackItem)
    assert (item.reason_code, item.comment) == ("condition-changed", "发热加重")


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"outcome": "ignored"}, "feedback[0].outcome"),
        ({"outcomeTimestamp": "yesterday"}, "feedback[0].outcomeTimestamp"),
        ({"outcomeTimestamp": "2026-12-05T10:00:00"}, "feedback[0].outcomeTimestamp"),
        ({"card": ""}, "feedback[0].card"),
        ({"outcome": "accepted"}, "feedback[0].acceptedSuggestions"),
        ({"overrideReason": {"userComment": "x" * 501}}, "feedback[0].overrideReason.userComment"),
    ],
)
def test_bad_feedback_names_the_member(change: dict[str, Any], where: str) -> None:
    item = {"card": "c", "outcome": "overridden", "outcomeTimestamp": "2026-12-05T10:00:00Z"}
    got = parse_feedback_request({"feedback": [{**item, **change}]})
    assert where in [p.expression for p in got if isinstance(p, Problem)]


def test_feedback_must_hold_items() -> None:
    docs: list[dict[str, Any]] = [{}, {"feedback": []}, {"feedback": {}}, {"feedback": [{}] * 51}]
    for doc in docs:
        got = parse_feedback_request(doc)
        assert got and all(isinstance(p, Problem) for p in got)


# ── the examples of docs/cds-hooks.md ────────────────────────────────────────────────────

DOC = Path(__file__).resolve().parents[2] / "docs" / "cds-hooks.md"
EXAMPLE_KEY = b"docs-example-key"
EXAMPLE_ISSUED = 1_796_434_512  # 2026-12-05T01:35:12Z


def example_response() -> dict[str, Any]:
    """The docs' order-select answer, made by the code: the haemoglobin card for the docs'
    request (the check answer above, the Shanxi catalogue's reasons)."""
    from services.recognition.catalog import load_catalogs

    catalogs = load_catalogs(Path(__file__).resolve().parents[2] / "config" / "catalog")
    catalog = catalogs.catalog_for("140110", datetime(2026, 12, 5, tzinfo=UTC))
    assert catalog is not None
    request = parse_hook_request(
        fixture("mrhub-order-select-request.json"), "mrhub-recognition-select"
    )
    assert isinstance(request, HookRequest)
    order = request.orders[0]
    answer = hb_answer()
    answer["item"]["name"] = "血常规（全血细胞计数）"
    card = build_card(
        answer,
        order,
        order.codes[0],
        claims_for=claims(
            order.reference, service="mrhub-recognition-select", issued=EXAMPLE_ISSUED
        ),
        signer=CardSigner(EXAMPLE_KEY),
        reasons=exception_reasons(catalog),
        hub_base="https://hub.example.cn",
    )
    return {"cards": [card]}


def test_the_docs_example_response_is_what_the_code_answers() -> None:
    assert example_response() == fixture("mrhub-order-select-response.json")
    validate(fixture("mrhub-order-select-response.json"), "ServiceResponse")
    validate(fixture("mrhub-order-select-request.json"), "HookRequest")
    for name in ("mrhub-feedback-request.json", "mrhub-feedback-accepted-request.json"):
        validate(fixture(name), "FeedbackRequest")


def test_the_docs_show_the_fixtures_the_tests_replay() -> None:
    text = DOC.read_text(encoding="utf-8")
    blocks = [json.loads(b.split("```", 1)[0]) for b in text.split("```json\n")[1:]]
    for name in (
        "mrhub-order-select-request.json",
        "mrhub-order-select-response.json",
        "mrhub-feedback-request.json",
        "mrhub-feedback-accepted-request.json",
    ):
        assert fixture(name) in blocks, name
    assert discovery() in blocks
