"""FHIR reads, the pure part (services.recognition.fhir_search): parameters, matching,
page tokens, the resource as served and the searchset Bundle."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from services.recognition import fhir_search as fs
from services.recognition.check import image_links, study_images, viewer_url
from tests.unit.test_recognition_decision import INSTITUTIONS, NOW, ct, ct_order, run

KEY = b"unit-test-cursor-key"
CARD = "urn:oid:2.16.156.10011.1.3|140215198102030011"


def _pairs(**params: str) -> list[tuple[str, str]]:
    return [(k.replace("__", ":"), v) for k, v in params.items()]


# ── parameters ───────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("params", "patient"),
    [
        ({"patient": CARD}, CARD),
        ({"patient__identifier": CARD}, CARD),
        ({"patient": "Patient/MP0123456789abcdef01234567"}, "Patient/MP0123456789abcdef01234567"),
        ({"subject": "MP0123456789abcdef01234567"}, "Patient/MP0123456789abcdef01234567"),
    ],
)
def test_the_patient_is_taken_as_an_identifier_or_a_hub_reference(
    params: dict[str, str], patient: str
) -> None:
    assert fs.parse_search("Observation", _pairs(**params)).patient == patient


def test_an_unknown_parameter_is_refused_by_name_unless_lenient() -> None:
    with pytest.raises(fs.SearchError) as err:
        fs.parse_search("Observation", [("patient", CARD), ("colour", "red")])
    assert err.value.status == 400 and err.value.expression == "colour"
    lenient = fs.parse_search("Observation", [("patient", CARD), ("colour", "red")], lenient=True)
    assert lenient.ignored == ("colour",)
    # a modifier the hub does not implement is refused the same way
    with pytest.raises(fs.SearchError, match="code:text"):
        fs.parse_search("Observation", [("patient", CARD), ("code:text", "Hb")])
    # _include is a DiagnosticReport parameter only
    with pytest.raises(fs.SearchError):
        fs.parse_search("Observation", [("patient", CARD), ("_include", "DiagnosticReport:result")])


@pytest.mark.parametrize(
    "pairs",
    [
        [("code", "x")],  # no patient
        [("patient", CARD), ("patient", CARD)],  # twice
        [("patient", "12345")],  # neither an identifier nor a reference
        [("patient", CARD), ("_count", "-1")],
        [("patient", CARD), ("_summary", "text")],
        [("patient", CARD), ("date", "sa2024-01-01")],  # unsupported prefix
        [("patient", CARD), ("date", "2024-13-01")],
        [("patient", CARD), ("date", "yesterday")],
        [("patient", CARD), ("code", "|")],
        [("patient", "x" * 300)],
        [("patient", "a\x00b|c")],
    ],
)
def test_bad_searches_are_400(pairs: list[tuple[str, str]]) -> None:
    with pytest.raises(fs.SearchError) as err:
        fs.parse_search("Observation", pairs)
    assert err.value.status == 400 and err.value.message


def test_an_unknown_type_is_404() -> None:
    with pytest.raises(fs.SearchError) as err:
        fs.parse_search("Patient", [("patient", CARD)])
    assert err.value.status == 404


def test_count_is_bounded_and_a_decision_may_be_found_by_its_order() -> None:
    assert fs.parse_search("Observation", [("patient", CARD), ("_count", "5000")]).count == 100
    found = fs.parse_search("DetectedIssue", [("implicated", "ServiceRequest/" + "a" * 32)])
    assert found.patient is None and found.implicated == ("ServiceRequest/" + "a" * 32,)


@pytest.mark.parametrize(
    ("value", "inside", "outside"),
    [
        ("2024-05-01", "2024-05-01T23:59:00+08:00", "2024-05-02T00:00:00+08:00"),
        ("ge2024-05", "2024-05-01T00:00:00+08:00", "2024-04-30T23:59:00+08:00"),
        ("gt2024-05", "2024-06-01T00:00:00+08:00", "2024-05-31T12:00:00+08:00"),
        ("lt2024", "2023-12-31T23:00:00+08:00", "2024-01-01T00:00:00+08:00"),
        ("le2024-05-01", "2024-05-01T20:00:00+08:00", "2024-05-02T00:00:00+08:00"),
        ("eq2024-05-01T08:30:00Z", "2024-05-01T16:30:00.5+08:00", "2024-05-01T08:31:00Z"),
    ],
)
def test_date_prefixes(value: str, inside: str, outside: str) -> None:
    bound = fs.parse_date(value, "date")
    assert bound.admits(datetime.fromisoformat(inside))
    assert not bound.admits(datetime.fromisoformat(outside))


# ── matching ─────────────────────────────────────────────────────────────────────────────


def _stored(**over: Any) -> dict[str, Any]:
    doc = {
        "record_id": "a" * 32,
        "master_patient_id": "MP0123456789abcdef01234567",
        "institution": "TY-L3A",
        "resource_type": "Observation",
        "category": "lab",
        "codes": [{"system": "http://loinc.org", "code": "718-7"}],
        "status": "final",
        "performed_at": "2024-05-01T08:30:00+08:00",
        "issued_at": "2024-05-01T10:00:00+08:00",
        "value": {"value": "132", "unit": "g/L", "reference_range": "130-175 g/L"},
        "indexed_at": "2024-05-01T02:01:00+00:00",
        "source": {"resource_type": "Observation", "resource_id": "obs-1", "full_url": None},
    }
    doc.update(over)
    return doc


def test_an_item_matches_code_category_date_and_last_updated() -> None:
    item = fs.item_from_record(_stored())

    def hit(*pairs: tuple[str, str]) -> bool:
        return fs.matches(item, fs.parse_search("Observation", [("patient", CARD), *pairs]))

    assert hit()
    assert hit(("code", "http://loinc.org|718-7")) and hit(("code", "718-7"))
    assert hit(("code", "x|1,http://loinc.org|718-7"))  # a comma is OR
    assert not hit(("code", "http://other|718-7")) and not hit(("code", "|718-7"))
    assert hit(("category", "lab")) and not hit(("category", "imaging"))
    assert hit(("date", "2024-05-01")) and hit(("date", "ge2024-05-01"), ("date", "lt2024-05-02"))
    assert not hit(("date", "2024-05-02"))
    assert hit(("_lastUpdated", "ge2024-05-01T02:00:00Z"))
    assert not hit(("_lastUpdated", "gt2024-05-01"))
    assert not fs.matches(item, fs.parse_search("DiagnosticReport", [("patient", CARD)]))


def test_a_decision_item_is_found_by_the_order_it_implicates_and_marked_when_superseded() -> None:
    stored = {
        "decision_id": "d" * 32,
        "order_id": "o" * 32,
        "master_patient_id": "MP0123456789abcdef01234567",
        "institution": "TY-L2",
        "category": "lab",
        "decided_at": "2024-05-02T01:00:00+00:00",
        "superseded_by": "e" * 32,
        "detected_issue": {
            "resourceType": "DetectedIssue",
            "status": "final",
            "code": {"coding": [{"system": "s", "code": "recognised"}]},
            "implicated": [
                {
                    "type": "ServiceRequest",
                    "identifier": {"system": fs.RECORD_ID_SYSTEM, "value": "o" * 32},
                }
            ],
        },
    }
    item = fs.item_from_decision(stored)
    search = fs.parse_search("DetectedIssue", [("implicated", "ServiceRequest/" + "o" * 32)])
    assert fs.matches(item, search)
    assert item.resource is not None
    assert item.resource["status"] == "cancelled"
    assert item.resource["implicated"][0]["reference"] == "ServiceRequest/" + "o" * 32
    assert {
        "url": fs.SUPERSEDED_BY_EXTENSION,
        "valueReference": {"reference": "DetectedIssue/" + "e" * 32},
    } in item.resource["extension"]


# ── page tokens ──────────────────────────────────────────────────────────────────────────


def _cursor(**over: Any) -> fs.Cursor:
    fields: dict[str, Any] = {
        "type": "Observation",
        "master": "MP0123456789abcdef01234567",
        "reader": "TY-L2",
        "params": (("code", "718-7"),),
        "offset": 20,
        "expires": NOW + timedelta(hours=1),
    }
    fields.update(over)
    return fs.Cursor(**fields)


def test_a_page_token_round_trips_and_holds_no_identifier() -> None:
    token = fs.sign_cursor(_cursor(), KEY)
    assert fs.open_cursor(token, KEY, reader="TY-L2", now=NOW) == _cursor(
        expires=datetime.fromtimestamp(int(_cursor().expires.timestamp()), UTC)
    )
    assert "140215" not in token


@pytest.mark.parametrize(
    "spoil",
    [
        lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"),  # the signature
        lambda t: fs.sign_cursor(_cursor(offset=0), b"another key"),  # not the hub's key
        lambda t: "x" + t,
        lambda t: t.replace(".", ""),
        lambda t: "",
    ],
)
def test_an_altered_token_is_refused(spoil: Any) -> None:
    token = spoil(fs.sign_cursor(_cursor(), KEY))
    with pytest.raises(fs.SearchError) as err:
        fs.open_cursor(token, KEY, reader="TY-L2", now=NOW)
    assert err.value.status == 400 and err.value.expression == "_cursor"


def test_another_readers_or_an_expired_token_is_refused() -> None:
    token = fs.sign_cursor(_cursor(), KEY)
    with pytest.raises(fs.SearchError):
        fs.open_cursor(token, KEY, reader="DT-L3A", now=NOW)
    with pytest.raises(fs.SearchError):
        fs.open_cursor(token, KEY, reader="TY-L2", now=NOW + timedelta(hours=2))


# ── the resource as served, and the Bundle ───────────────────────────────────────────────


def test_a_served_resource_keeps_what_was_posted_and_says_who_posted_it() -> None:
    posted = {
        "resourceType": "Observation",
        "id": "obs-1",
        "subject": {"identifier": {"system": "urn:oid:2.16.156.10011.1.3", "value": "140215"}},
        "contained": [{"resourceType": "Patient", "id": "p"}],
        "derivedFrom": [{"reference": "urn:uuid:abc"}],
        "valueQuantity": {"value": Decimal("6.30"), "unit": "mmol/L"},
    }
    item = fs.item_from_record(_stored(resource=posted))
    doc = fs.served(
        item,
        performer=INSTITUTIONS["TY-L3A"],
        hr_scope="municipal",
        aliases={"urn:uuid:abc": "DiagnosticReport/" + "b" * 32},
    )
    assert doc["id"] == "a" * 32 and doc["valueQuantity"]["value"] == Decimal("6.30")
    assert doc["meta"]["lastUpdated"] == "2024-05-01T02:01:00Z"
    assert doc["meta"]["source"].endswith("/institution/TY-L3A")
    assert [t["code"] for t in doc["meta"]["tag"]] == ["TY-L3A", "municipal"]
    assert doc["subject"]["reference"] == "Patient/MP0123456789abcdef01234567"
    assert "140215" not in str(doc) and "contained" not in doc  # no 身份证 passed on
    assert doc["derivedFrom"] == [{"reference": "DiagnosticReport/" + "b" * 32}]


def test_a_record_kept_without_its_resource_is_rebuilt_from_the_payload() -> None:
    item = fs.item_from_record(_stored())
    assert item.resource is not None
    assert item.resource["valueQuantity"] == {"value": Decimal("132"), "unit": "g/L"}
    assert item.resource["referenceRange"] == [{"text": "130-175 g/L"}]


def test_a_bundle_links_on_the_base_and_never_names_the_patient() -> None:
    search = fs.parse_search("Observation", [("patient", CARD), ("code", "718-7")])
    page = [fs.served(fs.item_from_record(_stored()), performer=None, hr_scope=None, aliases={})]
    doc = fs.bundle(
        base="https://hub.example/",
        search=search,
        total=3,
        page=page,
        next_token="NEXT",
        self_token="SELF",
    )
    assert doc["total"] == 3 and doc["type"] == "searchset"
    assert doc["link"] == [
        {"relation": "self", "url": "https://hub.example/fhir/Observation?_cursor=SELF"},
        {"relation": "next", "url": "https://hub.example/fhir/Observation?_cursor=NEXT"},
    ]
    assert doc["entry"][0]["fullUrl"] == "https://hub.example/fhir/Observation/" + "a" * 32
    assert "140215" not in str(doc)
    counted = fs.bundle(
        base="https://hub.example",
        search=fs.parse_search("Observation", [("patient", CARD), ("_summary", "count")]),
        total=3,
        page=[],
    )
    assert counted["total"] == 3 and "entry" not in counted


# ── the check answer's images and viewer ─────────────────────────────────────────────────


def test_images_come_from_the_endpoint_else_the_registry_and_the_viewer_from_its_template() -> None:
    decision = run(ct_order(at="TY-L2"), [ct(at="TY-L3A")], _shanxi())
    match = decision.matches[0]
    performer = INSTITUTIONS["TY-L3A"].model_copy(
        update={
            "dicomweb_base": "https://pacs.ty-l3a.example/dicom-web",
            "viewer_template": "https://pacs.ty-l3a.example/view?uid={study_uid}",
        }
    )
    assert study_images(match, performer) == image_links(match)  # the endpoint first
    no_endpoint = match.model_copy(update={"image_endpoints": ()})
    assert study_images(no_endpoint, performer) == [
        f"https://pacs.ty-l3a.example/dicom-web/studies/{match.study_uid}"
    ]
    assert viewer_url(match, performer) == f"https://pacs.ty-l3a.example/view?uid={match.study_uid}"
    assert (
        viewer_url(match, INSTITUTIONS["TY-L3A"].model_copy(update={"viewer_template": None}))
        is None
    )


def _shanxi() -> Any:
    from pathlib import Path

    from services.recognition.catalog import load_catalog

    return load_catalog(Path(__file__).resolve().parents[2] / "config/catalog/shanxi-v1.yaml")
