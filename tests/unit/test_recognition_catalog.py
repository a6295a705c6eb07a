"""The recognition catalogue (services.recognition.catalog), the shipped one and the CLI."""

from __future__ import annotations

import argparse
import copy
import json
import re
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from services.common.errors import ConfigError
from services.recognition import catalog_cli
from services.recognition.catalog import (
    Catalog,
    CatalogError,
    CatalogSet,
    Coding,
    load_catalog,
    load_catalogs,
    parse_catalog,
)

REPO = Path(__file__).resolve().parents[2]
SHIPPED_DIR = REPO / "config" / "catalog"
SHIPPED = SHIPPED_DIR / "shanxi-v1.yaml"
INSTITUTIONS = REPO / "config" / "institutions.yaml"
CST = timezone(timedelta(hours=8))
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
FENHE = "12140000405001730E"  # 山西省汾河医院 (config/institutions.yaml)
FENHE_LIS = "urn:oid:1.3.6.1.4.1.32473.14.1.5"
JINYANG = "12140100405128360L"


@pytest.fixture(scope="module")
def shipped() -> Catalog:
    return load_catalog(SHIPPED)


def loinc_check_ok(code: str) -> bool:
    """LOINC's mod-10 check digit, computed independently of the code under test."""
    body, _, check = code.partition("-")
    total = 0
    for i, ch in enumerate(reversed(body)):
        n = int(ch) * (2 if i % 2 == 0 else 1)
        total += n - 9 if n > 9 else n
    return check.isdigit() and (10 - total % 10) % 10 == int(check)


# ── the shipped catalogue ────────────────────────────────────────────────────────────────


def test_the_shipped_catalogue_loads_with_at_least_40_items(shipped: Catalog) -> None:
    assert shipped.version == "shanxi-v1"
    assert shipped.region_code == "140000"
    assert len(shipped.items) >= 40
    assert len(shipped.items_in_force(datetime(2026, 6, 1, tzinfo=CST))) == len(shipped.items)


@pytest.mark.parametrize(
    ("group", "ids"),
    [
        ("blood count", {"CBC"}),
        ("electrolytes", {"K", "NA", "CL", "CA"}),
        ("liver function", {"ALT", "AST", "LFT"}),
        ("kidney function", {"CREA", "UREA", "RFT"}),
        ("lipids", {"TC", "TG", "HDLC", "LDLC", "LIPID"}),
        ("glucose", {"GLU"}),
        ("HbA1c", {"HBA1C"}),
        ("coagulation", {"PT", "APTT", "FIB", "COAG"}),
        ("urinalysis", {"URINE-RT"}),
        ("hepatitis B markers", {"HBV5", "HBSAG"}),
        ("tumour markers", {"AFP", "CEA", "CA125", "CA199"}),
        ("chest DR", {"DR-CHEST"}),
        ("CT", {"CT-HEAD", "CT-CHEST", "CT-ABD"}),
        ("MRI", {"MR-HEAD", "MR-LSPINE"}),
        ("ultrasound", {"US-ABD", "US-THYROID", "US-BREAST"}),
        ("ECG", {"ECG-12"}),
    ],
)
def test_the_shipped_catalogue_covers_the_common_groups(
    shipped: Catalog, group: str, ids: set[str]
) -> None:
    assert ids <= {i.id for i in shipped.items}, group


@pytest.mark.parametrize(
    ("item_id", "length", "unit", "anchor"),
    [
        # domain.md, Xinjiang Corps notice: from specimen collection
        ("CBC", 6, "hours", "specimen-collection"),
        ("URINE-RT", 12, "hours", "specimen-collection"),
        ("HBV5", 7, "days", "specimen-collection"),  # immunology, 1 week
        ("URINE-CULTURE", 3, "days", "specimen-collection"),  # microbiology
        # domain.md, Hubei list: electrolytes 7 days; proteins, glucose, lipids,
        # bilirubin 30 days; HbA1c 60 days
        ("K", 7, "days", None),
        ("NA", 7, "days", None),
        ("CA", 7, "days", None),
        ("FE", 7, "days", None),
        ("GLU", 30, "days", None),
        ("ALB", 30, "days", None),
        ("TP", 30, "days", None),
        ("TBIL", 30, "days", None),
        ("TC", 30, "days", None),
        ("LIPID", 30, "days", None),
        ("HBA1C", 60, "days", None),
    ],
)
def test_published_windows_are_the_ones_domain_md_cites(
    shipped: Catalog, item_id: str, length: int, unit: str, anchor: str | None
) -> None:
    item = shipped.item(item_id)
    assert item is not None
    assert (item.window.length, item.window.unit) == (length, unit)
    assert item.window.basis == "published"
    assert item.window.source
    if anchor is not None:
        assert item.window.anchor == anchor


def test_examinations_have_no_published_window_so_theirs_are_labelled_defaults(
    shipped: Catalog,
) -> None:
    exams = [i for i in shipped.items if i.category in ("imaging", "ultrasound", "ecg")]
    assert len(exams) >= 15
    assert {i.window.basis for i in exams} == {"default"}
    assert all("DEFAULT" in i.window.source for i in exams)


def test_every_default_window_says_why(shipped: Catalog) -> None:
    for item in shipped.items:
        if item.window.basis == "default":
            assert "DEFAULT" in item.window.source, item.id


def test_every_shipped_loinc_code_has_a_valid_check_digit(shipped: Catalog) -> None:
    codes = [(i.id, c) for i in shipped.items for c in i.codes.loinc]
    assert codes
    assert [x for x in codes if not re.fullmatch(r"\d{1,5}-\d", x[1])] == []
    assert [x for x in codes if not loinc_check_ok(x[1])] == []


def test_imaging_items_are_matched_on_modality_body_part_and_contrast(shipped: Catalog) -> None:
    for item in shipped.items:
        if item.category in ("imaging", "ultrasound"):
            assert item.imaging is not None, item.id
            assert item.imaging.body_sites, item.id
        else:
            assert item.imaging is None, item.id


def test_the_item_ids_the_institution_registry_qualifies_exist_in_the_catalogue(
    shipped: Catalog,
) -> None:
    data = YAML(typ="safe").load(INSTITUTIONS.read_text(encoding="utf-8"))
    named = {
        q["item"]
        for inst in data["institutions"]
        for q in inst.get("qualifications") or []
        if q.get("item")
    }
    assert named
    assert named - {i.id for i in shipped.items} == set()


def test_prices_are_positive_amounts_in_yuan(shipped: Catalog) -> None:
    assert all(isinstance(i.price_yuan, Decimal) and i.price_yuan > 0 for i in shipped.items)


# ── lookups ──────────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("token", "institution", "expected"),
    [
        (f"{LOINC}|2823-3", None, "K"),
        (f"{LOINC}|58410-2", None, "CBC"),
        ("urn:oid:1.3.6.1.4.1.32473.14.0.1|SX-JY-0101", None, "K"),  # provincial code
        ("urn:oid:2.16.156.10011.2.3.3.11|210300001", None, "CT-CHEST"),  # price schedule
        (f"{FENHE_LIS}|XCG", FENHE, "CBC"),  # the hospital's own LIS code
        (f"{FENHE_LIS}|XCG", JINYANG, None),  # … means nothing from another hospital
        (f"{FENHE_LIS}|XCG", None, None),
        ("urn:oid:1.3.6.1.4.1.32473.14.2.5|1001", JINYANG, "CBC"),
        (f"{LOINC}|0000-0", None, None),
        ("|2823-3", None, None),  # a code without its system is not the catalogue's
        ("2823-3", None, None),  # nor is a bare code
    ],
)
def test_lookup_of_a_posted_code(
    shipped: Catalog, token: str, institution: str | None, expected: str | None
) -> None:
    found = shipped.lookup_token(token, institution=institution)
    assert (found.id if found else None) == expected


def _site(code: str) -> Coding:
    return Coding(system=SNOMED, code=code)


@pytest.mark.parametrize(
    ("modalities", "sites", "contrast", "codes", "expected"),
    [
        (["CT"], [_site("51185008")], False, [], "CT-CHEST"),
        (["CT"], [_site("51185008")], True, [], "CT-CHEST-ENH"),
        (["CT", "SR"], [_site("69536005")], False, [], "CT-HEAD"),
        (["MR"], [Coding(system=None, code="HEAD")], False, [], "MR-HEAD"),  # DICOM term
        (["DX"], [_site("51185008")], None, [], "DR-CHEST"),  # one item: contrast not needed
        (["US"], [_site("69748006")], None, [], "US-THYROID"),
        # plain and enhanced chest CT exist: an unstated contrast is ambiguous …
        (["CT"], [_site("51185008")], None, [], None),
        # … unless a code decides
        (
            ["CT"],
            [_site("51185008")],
            None,
            [Coding(system="urn:oid:2.16.156.10011.2.3.3.11", code="210300001")],
            "CT-CHEST",
        ),
        # what was imaged wins over a price code shared by every plain CT
        (
            ["CT"],
            [_site("69536005")],
            False,
            [Coding(system="urn:oid:2.16.156.10011.2.3.3.11", code="210300001")],
            "CT-HEAD",
        ),
        (["CT"], [_site("72696002")], False, [], None),  # knee CT: not in the catalogue
    ],
)
def test_imaging_is_found_by_modality_body_part_and_contrast(
    shipped: Catalog,
    modalities: list[str],
    sites: list[Coding],
    contrast: bool | None,
    codes: list[Coding],
    expected: str | None,
) -> None:
    found = shipped.find_item(codes, modalities=modalities, body_sites=sites, contrast=contrast)
    assert (found.id if found else None) == expected


def test_the_first_posted_coding_that_maps_wins(shipped: Catalog) -> None:
    codes = [
        Coding(system="urn:example:unknown", code="x"),
        Coding(system=LOINC, code="2951-2"),
        Coding(system=LOINC, code="2823-3"),
    ]
    found = shipped.find_item(codes, institution=FENHE)
    assert found is not None and found.id == "NA"


# ── building small catalogues ────────────────────────────────────────────────────────────


def _window(**kw: Any) -> dict[str, Any]:
    return {"length": 7, "unit": "days", "anchor": "specimen-collection", "basis": "default"} | kw


def _item(item_id: str, loinc: str, **kw: Any) -> dict[str, Any]:
    return {
        "id": item_id,
        "name": item_id,
        "category": "lab",
        "codes": {"loinc": [loinc]},
        "window": _window(),
        "price_yuan": 10,
    } | kw


def base(**kw: Any) -> dict[str, Any]:
    return {
        "catalog": "test",
        "version": "test-v1",
        "region_code": "140000",
        "effective_from": date(2026, 1, 1),
        "items": [_item("K", "2823-3"), _item("NA", "2951-2")],
    } | kw


def _ct(item_id: str, contrast: bool) -> dict[str, Any]:
    return {
        "id": item_id,
        "name": item_id,
        "category": "imaging",
        "imaging": {
            "modalities": ["CT"],
            "body_part": "CHEST",
            "body_sites": ["51185008"],
            "contrast": contrast,
        },
        "window": _window(anchor="report-issue"),
        "price_yuan": 200,
    }


def test_items_in_force_at_a_time() -> None:
    data = base()
    data["items"].append(_item("GLU", "14749-6", effective_from=date(2026, 7, 1)))
    data["items"].append(_item("TC", "2093-3", effective_to=date(2026, 3, 31)))
    cat = parse_catalog(data)

    def ids(at: datetime) -> list[str]:
        return [i.id for i in cat.items_in_force(at)]

    assert ids(datetime(2026, 2, 1, tzinfo=CST)) == ["K", "NA", "TC"]
    assert ids(datetime(2026, 7, 1, tzinfo=CST)) == ["K", "NA", "GLU"]
    # 2026-06-30 16:00 UTC is already 2026-07-01 in China: dates are China time
    assert "GLU" in ids(datetime(2026, 6, 30, 16, 0, tzinfo=UTC))
    assert ids(datetime(2025, 12, 31, tzinfo=CST)) == []  # before the catalogue itself
    assert cat.lookup(LOINC, "14749-6", at=date(2026, 2, 1)) is None
    assert cat.lookup(LOINC, "14749-6", at=date(2026, 8, 1)) is not None


def test_an_item_may_override_the_region_rules() -> None:
    data = base(rules={"scope": "region", "exclude_private": True})
    data["items"][1]["rules"] = {"scope": "alliance"}
    cat = parse_catalog(data)
    k, na = cat.items
    assert cat.rules_for(k).scope == "region"
    assert cat.rules_for(na).scope == "alliance"
    assert cat.rules_for(na).exclude_private is True  # unchanged fields are the region's


# ── validation: every problem names the file, the item and the field ─────────────────────


def _mutate(fn: Any) -> dict[str, Any]:
    data = copy.deepcopy(base())
    fn(data)
    return data


CASES: list[tuple[str, Any, list[str]]] = [
    (
        "duplicate item id",
        lambda d: d["items"].append(_item("K", "2075-0")),
        ["items[2] (id 'K')", "duplicate id"],
    ),
    (
        "duplicate code",
        lambda d: d["items"].append(_item("CL", "2823-3")),
        ["items[2] (id 'CL')", "duplicate code http://loinc.org|2823-3", "items[0] (id 'K')"],
    ),
    (
        "unknown category",
        lambda d: d["items"][0].update(category="radiology"),
        ["items[0] (id 'K'): category", "'lab'"],
    ),
    (
        "window of zero",
        lambda d: d["items"][0]["window"].update(length=0),
        ["items[0] (id 'K'): window.length", "greater than 0"],
    ),
    (
        "negative window",
        lambda d: d["items"][1]["window"].update(length=-3),
        ["items[1] (id 'NA'): window.length", "greater than 0"],
    ),
    (
        "missing unit",
        lambda d: d["items"][0]["window"].pop("unit"),
        ["items[0] (id 'K'): window.unit", "Field required"],
    ),
    (
        "unknown unit",
        lambda d: d["items"][0]["window"].update(unit="weeks"),
        ["items[0] (id 'K'): window.unit", "'hours' or 'days'"],
    ),
    (
        "unknown anchor",
        lambda d: d["items"][0]["window"].update(anchor="order"),
        ["items[0] (id 'K'): window.anchor"],
    ),
    (
        "missing basis",
        lambda d: d["items"][0]["window"].pop("basis"),
        ["items[0] (id 'K'): window.basis", "Field required"],
    ),
    (
        "negative price",
        lambda d: d["items"][0].update(price_yuan=-1),
        ["items[0] (id 'K'): price_yuan"],
    ),
    (
        "imaging item without imaging spec",
        lambda d: d["items"].append(_ct("CT-CHEST", False) | {"imaging": None}),
        ["items[2] (id 'CT-CHEST'): imaging: required"],
    ),
    (
        "lab item with an imaging spec",
        lambda d: d["items"][0].update(imaging=_ct("X", False)["imaging"]),
        ["items[0] (id 'K'): imaging: only imaging"],
    ),
    (
        "two imaging items for the same modality, body part and contrast",
        lambda d: d["items"].extend([_ct("CT-CHEST", False), _ct("CT-THORAX", False)]),
        ["items[3] (id 'CT-THORAX'): imaging: same modality CT", "items[2] (id 'CT-CHEST')"],
    ),
    (
        "provincial code without its system",
        lambda d: d["items"][0]["codes"].update(provincial="SX-1"),
        ["items[0] (id 'K'): codes.provincial", "code_systems.provincial"],
    ),
    (
        "item with no way to be found",
        lambda d: d["items"][0].update(codes={}),
        ["items[0] (id 'K'): codes: none given"],
    ),
    (
        "bad item id",
        lambda d: d["items"][0].update(id="k plus"),
        ["items[0] (id 'k plus'): id"],
    ),
    (
        "unknown field in an item",
        lambda d: d["items"][0].update(windw={}),
        ["items[0] (id 'K'): windw", "Extra inputs"],
    ),
    (
        "unknown top-level key",
        lambda d: d.update(itmes=[]),
        ["itmes", "Extra inputs"],
    ),
    (
        "effective dates reversed",
        lambda d: d.update(effective_to=date(2025, 1, 1)),
        ["effective_to: 2025-01-01 is before effective_from 2026-01-01"],
    ),
    (
        "item in force before its catalogue",
        lambda d: d["items"][0].update(effective_from=date(2025, 6, 1)),
        ["items[0] (id 'K'): effective_from: 2025-06-01 is before the catalogue's"],
    ),
    (
        "bad region code",
        lambda d: d.update(region_code="990000"),
        ["region_code: '990000'"],
    ),
    (
        "local code for an unknown item",
        lambda d: d.update(
            local_codes=[{"institution": FENHE, "system": FENHE_LIS, "codes": {"XCG": "CBC"}}]
        ),
        [f"local_codes[0] (institution '{FENHE}'): codes['XCG']: unknown item id 'CBC'"],
    ),
    (
        "no items",
        lambda d: d.update(items=[]),
        ["items: the catalogue has no items"],
    ),
]


@pytest.mark.parametrize(("case", "mutation", "fragments"), CASES, ids=[c[0] for c in CASES])
def test_validation_errors_name_file_item_and_field(
    tmp_path: Path, case: str, mutation: Any, fragments: list[str]
) -> None:
    path = tmp_path / "bad.yaml"
    yaml = YAML(typ="safe")
    yaml.default_flow_style = False
    with path.open("w", encoding="utf-8") as f:
        yaml.dump(_mutate(mutation), f)
    with pytest.raises(CatalogError) as info:
        load_catalog(path)
    text = str(info.value)
    assert text.startswith(f"{path}: invalid recognition catalogue"), text
    for fragment in fragments:
        assert fragment in text, f"{case}: {fragment!r} not in\n{text}"
    assert isinstance(info.value, ConfigError)  # the hub's configuration error


def test_every_problem_is_reported_at_once() -> None:
    data = base()
    data["items"][0]["window"]["length"] = 0
    data["items"][1]["category"] = "xray"
    with pytest.raises(CatalogError) as info:
        parse_catalog(data, source="two.yaml")
    assert len(info.value.problems) == 2
    assert "(2 problems)" in str(info.value)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("items: [\n", "not valid YAML"),
        ("- just\n- a list\n", "expected a mapping"),
        ("catalog: x\nitems: {K: 1}\n", "items: must be a list"),
    ],
)
def test_files_that_are_not_catalogues(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "x.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(CatalogError, match=re.escape(fragment)):
        load_catalog(path)


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="cannot read the file"):
        load_catalog(tmp_path / "none.yaml")


# ── directories: several versions and regions ────────────────────────────────────────────


def _write(path: Path, data: dict[str, Any]) -> Path:
    yaml = YAML(typ="safe")
    with path.open("w", encoding="utf-8") as f:
        yaml.dump(data, f)
    return path


def test_two_versions_of_one_region_may_not_overlap(tmp_path: Path) -> None:
    _write(tmp_path / "a-v1.yaml", base(version="a-v1", effective_to=date(2026, 6, 30)))
    _write(tmp_path / "a-v2.yaml", base(version="a-v2", effective_from=date(2026, 6, 1)))
    with pytest.raises(CatalogError) as info:
        load_catalogs(tmp_path)
    text = str(info.value)
    assert "a-v2.yaml: effective dates 2026-06-01..open overlap" in text
    assert "a-v1.yaml" in text


def test_consecutive_versions_are_chosen_by_date(tmp_path: Path) -> None:
    _write(tmp_path / "a-v1.yaml", base(version="a-v1", effective_to=date(2026, 6, 30)))
    v2 = base(version="a-v2", effective_from=date(2026, 7, 1))
    v2["items"][0]["window"]["length"] = 3
    _write(tmp_path / "a-v2.yaml", v2)
    cats = load_catalogs(tmp_path)
    june = cats.catalog_for("140105", datetime(2026, 6, 30, 23, 59, tzinfo=CST))
    july = cats.catalog_for("140105", datetime(2026, 7, 1, 0, 0, tzinfo=CST))
    assert june is not None and june.version == "a-v1"
    assert july is not None and july.version == "a-v2"
    k = july.item("K")
    assert k is not None and k.window.length == 3
    assert cats.catalog_for("110105", date(2026, 7, 1)) is None  # Beijing: no catalogue


def test_a_version_name_is_used_once(tmp_path: Path) -> None:
    _write(tmp_path / "a.yaml", base(region_code="140000"))
    _write(tmp_path / "b.yaml", base(region_code="410000"))
    with pytest.raises(CatalogError, match="version 'test-v1' is also"):
        load_catalogs(tmp_path)


def test_a_prefecture_catalogue_wins_over_the_province_for_its_institutions() -> None:
    province = parse_catalog(base(version="p", region_code="140000"))
    taiyuan = parse_catalog(base(version="t", region_code="140100"))
    cats = CatalogSet([province, taiyuan])
    at = date(2026, 3, 1)
    assert (c := cats.catalog_for("140105", at)) is not None and c.version == "t"
    assert (c := cats.catalog_for("140213", at)) is not None and c.version == "p"


def test_a_bad_file_in_a_directory_names_that_file(tmp_path: Path) -> None:
    _write(tmp_path / "good.yaml", base(version="g"))
    bad = base(version="b", region_code="410000")
    bad["items"][0]["window"]["length"] = 0
    _write(tmp_path / "bad.yaml", bad)
    with pytest.raises(CatalogError) as info:
        load_catalogs(tmp_path)
    assert f"{tmp_path / 'bad.yaml'}: items[0] (id 'K'): window.length" in str(info.value)


# ── CLI ──────────────────────────────────────────────────────────────────────────────────


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mrhub")
    sub = parser.add_subparsers(dest="command", required=True)
    catalog_cli.add_parser(sub)
    return parser


def _run(argv: list[str], *settings: object) -> int:
    args = _parser().parse_args(argv)
    code = args.func(args, *settings)
    assert isinstance(code, int)
    return code


def test_cli_check_accepts_the_shipped_catalogue(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["catalog", "check", str(SHIPPED_DIR)]) == 0
    out = capsys.readouterr().out
    assert "shanxi-v1" in out and "1 catalogue file(s) valid" in out


def test_cli_check_reports_problems_and_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = base()
    data["items"][0]["window"].pop("unit")
    path = _write(tmp_path / "bad.yaml", data)
    assert _run(["catalog", "check", str(path)], object()) == 1  # (args, settings) works too
    err = capsys.readouterr().err
    assert f"{path}" in err and "items[0] (id 'K'): window.unit: Field required" in err


def test_cli_check_of_a_missing_path_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(["catalog", "check", str(tmp_path / "nope")]) == 1
    assert "no such file or directory" in capsys.readouterr().err


def test_cli_list_json_prints_the_items_in_force(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["catalog", "list", "--path", str(SHIPPED_DIR), "--at", "2026-06-01", "--json"]
    assert _run(argv) == 0
    rows = json.loads(capsys.readouterr().out)
    assert isinstance(rows, list) and len(rows) >= 40
    by_id = {r["id"]: r for r in rows}
    cbc = by_id["CBC"]
    assert cbc["category"] == "lab"
    assert cbc["window"] == {
        "length": 6,
        "unit": "hours",
        "anchor": "specimen-collection",
        "basis": "published",
    }
    assert {"system": LOINC, "code": "58410-2"} in cbc["codes"]
    assert cbc["price_yuan"] > 0
    assert by_id["CT-CHEST"]["imaging"]["modalities"] == ["CT"]


def test_cli_list_before_the_catalogue_is_in_force_lists_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["catalog", "list", "--path", str(SHIPPED_DIR), "--at", "2025-06-01", "--json"]
    assert _run(argv) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_cli_list_prints_a_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["catalog", "list", "--path", str(SHIPPED), "--at", "2026-06-01"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == [
        "VERSION",
        "ID",
        "NAME",
        "CATEGORY",
        "WINDOW",
        "ANCHOR",
        "PRICE",
        "CODES",
    ]
    cbc = next(line for line in out if " CBC " in line)
    assert "6 hours" in cbc and "specimen-collection" in cbc and "¥20" in cbc
    ct = next(line for line in out if " CT-CHEST " in line)
    assert "(default)" in ct and "CT CHEST plain" in ct


def test_cli_rejects_a_bad_time() -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["catalog", "list", "--at", "next tuesday"])
