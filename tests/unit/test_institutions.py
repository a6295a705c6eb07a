"""The institution registry (services.common.institutions) and the shipped demo file."""

from __future__ import annotations

import difflib
import hashlib
import hmac
import json
import os
import re
import shutil
import stat
import unicodedata
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from services.common.errors import ConfigError
from services.common.institutions import (
    Credential,
    Institution,
    Qualification,
    Registry,
    ReloadingRegistry,
    format_table,
    hash_token,
    is_registration_no,
    issue_token,
    list_rows,
    revoke_tokens,
)

DEMO = Path(__file__).resolve().parents[2] / "config" / "institutions.yaml"
TODAY = date.today()

# ── independent checks (not the code under test) ───────────────────────────────────────

_USCC_ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"


def uscc_ok(code: str) -> bool:
    """GB 32100-2015: weights 3^i mod 31, check = (31 - sum % 31) % 31."""
    if len(code) != 18 or any(c not in _USCC_ALPHABET for c in code):
        return False
    total = sum(_USCC_ALPHABET.index(c) * pow(3, i, 31) for i, c in enumerate(code[:17]))
    return code[17] == _USCC_ALPHABET[(31 - total % 31) % 31]


def org_code_ok(code: str) -> bool:
    """GB 11714-1997 organisation code (the 9th-17th characters of a USCC)."""
    weights = (3, 7, 9, 10, 5, 8, 4, 2)
    total = sum(int(c, 36) * w for c, w in zip(code[:8], weights, strict=True))
    check = 11 - total % 11
    return code[8] == {10: "X", 11: "0"}.get(check, str(check))


def with_uscc_check(first17: str) -> str:
    total = sum(_USCC_ALPHABET.index(c) * pow(3, i, 31) for i, c in enumerate(first17))
    return first17 + _USCC_ALPHABET[(31 - total % 31) % 31]


def display_width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


IMAGING_ITEM = re.compile(r"(CT|MR|DR|DX|CR|US|NM)-")

# ── the shipped demo file ────────────────────────────────────────────────────────────────


@pytest.fixture(scope="module")
def demo() -> Registry:
    return Registry.load(DEMO)


def test_demo_has_at_least_ten_institutions_with_valid_unique_ids(demo: Registry) -> None:
    assert len(demo) >= 10
    assert len(set(demo.ids)) == len(demo)
    for inst in demo:
        assert uscc_ok(inst.id), inst.id
        assert org_code_ok(inst.id[8:17]), inst.id
        assert inst.id[2:4] == "14", "registered in Shanxi"
        assert re.fullmatch(r"[\u4e00-\u9fff]+", inst.name), inst.name


def test_demo_ids_match_ownership(demo: Registry) -> None:
    for inst in demo:
        if inst.ownership == "public":
            assert inst.id.startswith("12"), inst.name  # 机构编制 / 事业单位
        else:
            assert inst.id[:2] in {"52", "91"}, inst.name  # 民办非企业 / 企业
    assert any(i.ownership == "private" for i in demo)


def test_demo_covers_levels_and_grades(demo: Registry) -> None:
    pairs = {(i.level, i.grade) for i in demo}
    assert {i.level for i in demo} == {1, 2, 3}
    assert {(3, "甲"), (3, "乙"), (2, "甲"), (2, "乙"), (1, "未定等")} <= pairs
    assert len({i.grade for i in demo}) >= 3


def test_demo_is_one_province_two_prefectures(demo: Registry) -> None:
    assert all(i.region_code.startswith("14") for i in demo)
    prefectures = {i.prefecture_code for i in demo}
    assert prefectures == {"140100", "140200"}
    for prefecture in prefectures:
        assert sum(i.prefecture_code == prefecture for i in demo) >= 3


def test_demo_has_an_alliance_led_by_a_level_3_hospital(demo: Registry) -> None:
    assert "tyyl-01" in demo.alliances
    members = demo.alliance_members("tyyl-01")
    assert len(members) >= 3
    leads = [m for m in members if m.level == 3]
    lower = [m for m in members if m.level < 3]
    assert len(leads) == 1
    assert 2 <= len(lower) <= 3
    assert all(m.prefecture_code == leads[0].prefecture_code for m in members)
    in_file_order = [i for i in demo if "tyyl-01" in i.alliances]
    assert list(members) == in_file_order
    assert demo.alliance_members("no-such-alliance") == ()


def test_demo_qualifications(demo: Registry) -> None:
    quals = [q for i in demo for q in i.qualifications]
    assert {q.category for q in quals if q.category} == {"lab", "imaging", "ecg"}
    items = {q.item for q in quals if q.item}
    assert {"CBC", "K", "CT-CHEST"} <= items
    assert {q.scope for q in quals} == {"national", "provincial", "municipal", "alliance"}
    assert all((q.item is None) != (q.category is None) for q in quals)
    assert all(q.issued <= q.expires for q in quals)
    assert any(q.expires < TODAY for q in quals), "one expired qualification"
    assert any(not i.qualifications for i in demo), "one institution with none"


def test_demo_imaging_institutions_have_a_dicomweb_endpoint(demo: Registry) -> None:
    for inst in demo:
        does_imaging = any(
            q.category == "imaging" or (q.item and IMAGING_ITEM.match(q.item))
            for q in inst.qualifications
        )
        if does_imaging:
            assert inst.dicomweb_base, inst.name
        if inst.dicomweb_base:
            assert re.fullmatch(r"https?://[a-z0-9.-]+/dicom-web", inst.dicomweb_base)
    oids = [i.oid for i in demo]
    assert all(oids) and len(set(oids)) == len(oids)


def test_demo_ships_no_credentials() -> None:
    registry = Registry.load(DEMO)
    assert all(inst.credentials == () for inst in registry)
    text = DEMO.read_text(encoding="utf-8")
    assert "mrh_" not in text
    assert "sha256:" not in text.split("institutions:", 1)[1]
    assert "issue-token" in text  # the header says how to get one


def test_get_contains_iter_len(demo: Registry) -> None:
    first = next(iter(demo))
    assert demo.get(first.id) is first
    assert first.id in demo
    assert demo.get("not-an-id") is None
    assert "not-an-id" not in demo
    assert len(list(demo)) == len(demo) == len(demo.ids)
    assert [i.id for i in demo] == list(demo.ids)


# ── issuing, authenticating, revoking ────────────────────────────────────────────────────


@pytest.fixture
def registry_file(tmp_path: Path) -> Path:
    path = tmp_path / "institutions.yaml"
    shutil.copyfile(DEMO, path)
    return path


def ids_of(path: Path) -> list[str]:
    return list(Registry.load(path).ids)


def ids_of_demo() -> list[str]:
    return list(Registry.load(DEMO).ids)


def test_hash_token_is_sha256_hex() -> None:
    assert hash_token("abc") == "sha256:" + hashlib.sha256(b"abc").hexdigest()
    assert hash_token("abc") != hash_token("abd")


def test_issue_token_stores_only_the_hash(registry_file: Path) -> None:
    target = ids_of(registry_file)[2]
    token = issue_token(registry_file, target, label="LIS gateway")
    assert token.startswith("mrh_")
    assert len(token) >= 4 + 43
    text = registry_file.read_text(encoding="utf-8")
    assert token not in text
    assert token[4:] not in text
    assert "sha256:" + hashlib.sha256(token.encode()).hexdigest() in text

    inst = Registry.load(registry_file).get(target)
    assert inst is not None
    assert inst.credentials == (
        Credential(token_hash=hash_token(token), created=TODAY, label="LIS gateway"),
    )


def test_issued_token_authenticates_only_its_institution(registry_file: Path) -> None:
    ids = ids_of(registry_file)
    token_a = issue_token(registry_file, ids[0])
    token_b = issue_token(registry_file, ids[5])
    registry = Registry.load(registry_file)

    a = registry.authenticate(token_a)
    b = registry.authenticate(token_b)
    assert a is not None and a.id == ids[0]
    assert b is not None and b.id == ids[5]
    assert token_a != token_b

    last = token_a[-1]
    wrong = token_a[:-1] + ("A" if last != "A" else "B")
    for bad in (wrong, token_a[:-1], token_a + "x", token_a.upper(), "mrh_", "", "   ", "\t\n"):
        assert registry.authenticate(bad) is None, bad
    assert registry.authenticate(hash_token(token_a)) is None  # the stored hash is no token


def test_blank_tokens_never_authenticate_even_if_their_hash_is_stored() -> None:
    blanks = ("", " ", "\t")
    creds = [Credential(token_hash=hash_token(b), created=TODAY) for b in blanks]
    registry = Registry([Institution.model_validate(entry(credentials=creds))])
    assert registry.authenticate("mrh_x") is None
    for blank in blanks:
        assert registry.authenticate(blank) is None


def test_authenticate_compares_in_constant_time(
    registry_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = issue_token(registry_file, ids_of(registry_file)[1])
    registry = Registry.load(registry_file)
    calls: list[tuple[str, str]] = []
    real = hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)  # the module the registry calls
    assert registry.authenticate(token) is not None
    assert calls == [(hash_token(token), hash_token(token))]


def test_a_wrong_token_whose_hash_starts_like_a_stored_one_is_refused_by_the_compare() -> None:
    """The registry finds candidates by the start of the hash only; the comparison of the
    whole hash is what refuses a token that is not the stored one."""
    presented = hash_token("mrh_presented")
    last = presented[-1]
    stored = presented[:-1] + ("0" if last != "0" else "1")  # same start, another hash
    registry = Registry(
        [
            Institution.model_validate(
                entry(credentials=[Credential(token_hash=stored, created=TODAY)])
            )
        ]
    )
    assert registry.authenticate("mrh_presented") is None
    right = Registry(
        [
            Institution.model_validate(
                entry(credentials=[Credential(token_hash=presented, created=TODAY)])
            )
        ]
    )
    assert right.authenticate("mrh_presented") is not None


def test_revoke_makes_tokens_fail(registry_file: Path) -> None:
    ids = ids_of(registry_file)
    first = issue_token(registry_file, ids[3], label="one")
    second = issue_token(registry_file, ids[3], label="two")
    other = issue_token(registry_file, ids[4])
    assert Registry.load(registry_file).authenticate(first) is not None
    assert Registry.load(registry_file).authenticate(second) is not None

    assert revoke_tokens(registry_file, ids[3]) == 2
    registry = Registry.load(registry_file)
    assert registry.authenticate(first) is None
    assert registry.authenticate(second) is None
    inst = registry.get(ids[3])
    assert inst is not None and inst.credentials == ()
    survivor = registry.authenticate(other)
    assert survivor is not None and survivor.id == ids[4]
    assert revoke_tokens(registry_file, ids[3]) == 0


@pytest.mark.parametrize("action", ["issue", "revoke"])
def test_unknown_institution_is_a_config_error(registry_file: Path, action: str) -> None:
    before = registry_file.read_bytes()
    call: Callable[[Path, str], object] = issue_token if action == "issue" else revoke_tokens
    with pytest.raises(ConfigError, match=r"unknown institution id '12345'") as info:
        call(registry_file, "12345")
    assert str(registry_file) in str(info.value)
    assert registry_file.read_bytes() == before


def test_issue_token_refuses_a_broken_file(registry_file: Path) -> None:
    registry_file.write_text(
        registry_file.read_text(encoding="utf-8").replace("level: 3", "level: 7", 1),
        encoding="utf-8",
    )
    before = registry_file.read_bytes()
    with pytest.raises(ConfigError, match="level"):
        issue_token(registry_file, ids_of_demo()[0])
    assert registry_file.read_bytes() == before


def test_label_must_be_one_line(registry_file: Path) -> None:
    with pytest.raises(ConfigError, match="single line"):
        issue_token(registry_file, ids_of(registry_file)[0], label="a\nb")


def comment_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.lstrip().startswith("#")]


def test_comments_and_order_survive_issue_and_revoke(registry_file: Path) -> None:
    original = registry_file.read_text(encoding="utf-8")
    ids = ids_of(registry_file)
    # first, one just before a section comment, and the last one in the file
    chosen = [ids[0], ids[7], ids[-1]]
    for inst_id in chosen:
        issue_token(registry_file, inst_id)
    edited = registry_file.read_text(encoding="utf-8")
    assert len(comment_lines(original)) > 20
    assert comment_lines(edited) == comment_lines(original)
    assert ids_of(registry_file) == ids

    # the only lines that changed are the chosen institutions' credentials
    old_lines, new_lines = original.splitlines(), edited.splitlines()
    matcher = difflib.SequenceMatcher(a=old_lines, b=new_lines, autojunk=False)
    removed: list[str] = []
    added: list[str] = []
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op != "equal":
            removed += old_lines[i1:i2]
            added += new_lines[j1:j2]
    assert removed == ["    credentials: []"] * len(chosen)
    assert added.count("    credentials:") == len(chosen)
    other = [line for line in added if line != "    credentials:"]
    assert len(other) == 2 * len(chosen)  # token_hash and created per credential
    assert all(
        re.fullmatch(
            r"      - token_hash: sha256:[0-9a-f]{64}|        created: \d{4}-\d\d-\d\d", line
        )
        for line in other
    ), other

    for inst_id in chosen:
        assert revoke_tokens(registry_file, inst_id) == 1
    assert registry_file.read_text(encoding="utf-8") == original


def test_end_of_line_and_trailing_comments_survive(registry_file: Path) -> None:
    text = registry_file.read_text(encoding="utf-8")
    text = text.replace("    credentials: []\n", "    credentials: []  # none yet\n")
    text += "# end of the registry\n"
    registry_file.write_text(text, encoding="utf-8")
    last = ids_of(registry_file)[-1]

    issue_token(registry_file, last, label="pacs")
    edited = registry_file.read_text(encoding="utf-8")
    assert edited.endswith("        label: pacs\n# end of the registry\n")
    assert edited.count("# none yet") == text.count("# none yet")

    revoke_tokens(registry_file, last)
    assert registry_file.read_text(encoding="utf-8") == text


def test_write_is_atomic_and_keeps_the_file_mode(registry_file: Path) -> None:
    os.chmod(registry_file, 0o640)
    issue_token(registry_file, ids_of(registry_file)[0])
    assert stat.S_IMODE(registry_file.stat().st_mode) == 0o640
    assert [p.name for p in registry_file.parent.iterdir()] == [registry_file.name]


# ── listings ─────────────────────────────────────────────────────────────────────────────


def test_list_rows_never_show_credentials(registry_file: Path) -> None:
    token = issue_token(registry_file, ids_of(registry_file)[0])
    registry = Registry.load(registry_file)
    rows = list_rows(registry)
    assert [r["id"] for r in rows] == list(registry.ids)
    assert all("credentials" not in r for r in rows)
    dumped = json.dumps(rows, ensure_ascii=False)
    assert hash_token(token) not in dumped and token not in dumped
    first = next(iter(registry))
    assert rows[0]["name"] == first.name
    quals = rows[0]["qualifications"]
    assert isinstance(quals, list)
    assert quals[0]["issued"] == first.qualifications[0].issued.isoformat()


def test_format_table(registry_file: Path) -> None:
    ids = ids_of(registry_file)
    token = issue_token(registry_file, ids[1])
    registry = Registry.load(registry_file)
    table = format_table(registry)
    lines = table.splitlines()
    assert len(lines) == len(registry) + 1
    header = lines[0].split()
    assert header[:2] == ["ID", "NAME"] and header[-1] == "CREDENTIAL"
    assert hash_token(token) not in table and "sha256" not in table

    for line, inst in zip(lines[1:], registry, strict=True):
        cells = line.split()
        assert cells[0] == inst.id
        assert cells[1] == inst.name
        assert cells[2] == str(inst.level)
        assert cells[3] == inst.grade
        assert cells[4] == inst.ownership
        assert cells[5] == inst.region_code
        assert cells[6] == (",".join(inst.alliances) or "-")
        assert cells[7] == str(len(inst.qualifications))
        assert cells[8] == ("yes" if inst.id == ids[1] else "no")

    # fixed width: every column starts at the same display column as its header
    def starts(line: str) -> list[int]:
        out, col, prev = [], 0, " "
        for ch in line:
            if ch != " " and prev == " ":
                out.append(col)
            col += display_width(ch)
            prev = ch
        return out

    assert all(starts(line) == starts(lines[0]) for line in lines[1:])


# ── ConfigError cases ───────────────────────────────────────────────────────────────────

GOOD_ID = "12140000405001730E"
OTHER_ID = "12140100405128360L"


def entry(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": GOOD_ID,
        "name": "测试医院",
        "level": 2,
        "grade": "甲",
        "ownership": "public",
        "region_code": "140105",
        "qualifications": [
            {
                "category": "lab",
                "scope": "municipal",
                "issued": "2026-01-01",
                "expires": "2027-12-31",
            }
        ],
    }
    base.update(overrides)
    return base


@pytest.fixture
def write(tmp_path: Path) -> Callable[..., Path]:
    def _write(*entries: dict[str, Any], raw: str | None = None) -> Path:
        path = tmp_path / "reg.yaml"
        text = raw if raw is not None else json.dumps({"institutions": list(entries)})
        path.write_text(text, encoding="utf-8")  # JSON is YAML
        return path

    return _write


def load_error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        Registry.load(path)
    message = str(info.value)
    assert str(path) in message
    return message


def test_a_valid_minimal_file_loads(write: Callable[..., Path]) -> None:
    registry = Registry.load(write(entry(), entry(id=OTHER_ID)))
    assert registry.ids == (GOOD_ID, OTHER_ID)


def test_bad_yaml(write: Callable[..., Path]) -> None:
    message = load_error(write(raw="institutions:\n  - id: [unclosed\n"))
    assert "not valid YAML" in message
    assert "line" in message


def test_duplicate_yaml_key(write: Callable[..., Path]) -> None:
    message = load_error(write(raw="institutions:\n  - id: a\n    id: b\n"))
    assert "duplicate key" in message


def test_missing_file(tmp_path: Path) -> None:
    message = load_error(tmp_path / "nope.yaml")
    assert "cannot read" in message


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("", "expected a mapping with the key 'institutions:'"),
        ("- a\n", "expected a mapping with the key 'institutions:'"),
        ("institution: []\n", "expected a mapping with the key 'institutions:'"),
        ("institutions: 3\n", "'institutions' must be a list"),
        ("institutions: []\nx: 1\n", "unknown top-level keys: x"),
    ],
)
def test_wrong_top_level_shape(write: Callable[..., Path], raw: str, problem: str) -> None:
    assert problem in load_error(write(raw=raw))


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"level": 4}, "level"),
        ({"grade": "A"}, "grade"),
        ({"ownership": "state"}, "ownership"),
        ({"region_code": 140105}, "region_code"),  # unquoted in YAML: a number
        ({"colour": "blue"}, "colour"),
        ({"qualifications": [{"item": "K", "scope": "county"}]}, "qualifications[0].scope"),
        ({"credentials": [{"token_hash": "sha256:00"}]}, "credentials[0].created"),
    ],
)
def test_schema_errors_name_the_institution_and_field(
    write: Callable[..., Path], overrides: dict[str, Any], field: str
) -> None:
    message = load_error(write(entry(id=OTHER_ID), entry(**overrides)))
    assert f"institutions[1] (id '{GOOD_ID}')" in message
    assert f"{field}:" in message


def test_entry_that_is_not_a_mapping(write: Callable[..., Path]) -> None:
    message = load_error(write(entry(), raw=f'{{"institutions": [{json.dumps(entry())}, "x"]}}'))
    assert "institutions[1]" in message and "mapping" in message


def test_duplicate_ids(write: Callable[..., Path]) -> None:
    message = load_error(write(entry(), entry(name="另一医院")))
    assert f"institutions[1] (id '{GOOD_ID}'): duplicate id" in message
    assert "institutions[0] 测试医院" in message


@pytest.mark.parametrize(
    "bad_id",
    [
        GOOD_ID[:-1] + ("0" if GOOD_ID[-1] != "0" else "1"),  # wrong check character
        GOOD_ID.lower(),  # not canonical
        GOOD_ID[:8] + " " + GOOD_ID[8:],  # separator
        "12345",
        "PDY00263X99010511A1001",  # 登记号 shape, no such province
        "PDY00263X14010511A1003",  # 登记号 with an unknown 分类管理代码
        "PDY00263X14010511A100",  # 21 characters
        "PDY00263X1401051AA1001",  # letter in the 经济类型代码
    ],
)
def test_invalid_institution_ids(write: Callable[..., Path], bad_id: str) -> None:
    message = load_error(write(entry(id=bad_id)))
    assert f"(id {bad_id!r}): id: neither a valid 统一社会信用代码" in message


@pytest.mark.parametrize(
    "good_id",
    [
        with_uscc_check("52140200MJ1Y8R4D1"),
        "PDY00263X14010511A1001",  # 医疗机构登记号 with a temporary organisation code
        "40512836014010511A1001",
        "40512836X44030321B1002",
    ],
)
def test_valid_institution_ids(write: Callable[..., Path], good_id: str) -> None:
    assert Registry.load(write(entry(id=good_id))).ids == (good_id,)


def test_registration_no_pattern() -> None:
    assert is_registration_no("PDY00263X14010511A1001")
    assert not is_registration_no("PDY00263X14010511A1001 ")
    assert not is_registration_no("pdy00263x14010511a1001")
    assert not is_registration_no("PDY00263X14010511A10011")
    assert not is_registration_no("PDY00263X1401051\u0661A1001")  # an Arabic-Indic digit


@pytest.mark.parametrize(
    ("qualification", "problem"),
    [
        ({"item": "K", "category": "lab"}, "has both item and category"),
        ({}, "has neither item and category"),
    ],
)
def test_qualification_needs_exactly_one_of_item_and_category(
    write: Callable[..., Path], qualification: dict[str, Any], problem: str
) -> None:
    q = {"scope": "municipal", "issued": "2026-01-01", "expires": "2027-12-31", **qualification}
    message = load_error(write(entry(qualifications=[q])))
    assert f"(id '{GOOD_ID}'): qualifications[0]: {problem}" in message


def test_qualification_expiring_before_issue(write: Callable[..., Path]) -> None:
    q = {"item": "K", "scope": "municipal", "issued": "2026-06-01", "expires": "2026-05-31"}
    message = load_error(write(entry(qualifications=[q])))
    assert f"(id '{GOOD_ID}'): qualifications[0]: expires 2026-05-31 before" in message


def test_same_day_qualification_is_fine(write: Callable[..., Path]) -> None:
    q = {"item": "K", "scope": "municipal", "issued": "2026-06-01", "expires": "2026-06-01"}
    assert len(Registry.load(write(entry(qualifications=[q])))) == 1


def test_plain_token_in_the_file_is_rejected(write: Callable[..., Path]) -> None:
    cred = {"token_hash": "mrh_plaintexttoken", "created": "2026-01-01"}
    message = load_error(write(entry(credentials=[cred])))
    assert "credentials[0].token_hash: must be 'sha256:'" in message


def test_one_hash_for_two_institutions_is_rejected(write: Callable[..., Path]) -> None:
    cred = {"token_hash": hash_token("shared"), "created": "2026-01-01"}
    message = load_error(write(entry(credentials=[cred]), entry(id=OTHER_ID, credentials=[cred])))
    assert f"(id '{OTHER_ID}'): a credential hash is also {GOOD_ID}'s" in message


def test_every_problem_is_reported_at_once(write: Callable[..., Path]) -> None:
    q = {"item": "K", "category": "lab", "scope": "alliance", "issued": "2026-02-01"}
    q["expires"] = "2026-01-01"
    message = load_error(write(entry(id="bad", qualifications=[q]), entry(id=OTHER_ID, level=9)))
    assert "(4 problems)" in message
    assert "institutions[0] (id 'bad'): id: neither" in message
    assert "institutions[0] (id 'bad'): qualifications[0]: has both item and category" in message
    assert "institutions[0] (id 'bad'): qualifications[0]: expires 2026-01-01 before" in message
    assert f"institutions[1] (id '{OTHER_ID}'): level:" in message


def test_registry_from_objects_checks_too() -> None:
    inst = Institution.model_validate(entry())
    with pytest.raises(ConfigError, match="duplicate id"):
        Registry([inst, inst])
    assert len(Registry([inst])) == 1


# ── Qualification.covers ────────────────────────────────────────────────────────────────


def qual(**kw: Any) -> Qualification:
    base: dict[str, Any] = {"scope": "municipal", "issued": date(2026, 1, 1)}
    base["expires"] = date(2026, 12, 31)
    base.update(kw)
    return Qualification.model_validate(base)


def test_category_qualification_covers_its_category_within_dates() -> None:
    q = qual(category="lab")
    assert q.covers(item="K", category="lab", on=date(2026, 6, 1))
    assert q.covers(item=None, category="lab", on=date(2026, 1, 1))  # first day
    assert q.covers(item="CBC", category="lab", on=date(2026, 12, 31))  # last day
    assert not q.covers(item="K", category="lab", on=date(2025, 12, 31))
    assert not q.covers(item="K", category="lab", on=date(2027, 1, 1))
    assert not q.covers(item="CT-CHEST", category="imaging", on=date(2026, 6, 1))
    assert not q.covers(item="K", category=None, on=date(2026, 6, 1))


def test_item_qualification_covers_only_that_item() -> None:
    q = qual(item="K")
    assert q.covers(item="K", category="lab", on=date(2026, 6, 1))
    assert not q.covers(item="NA", category="lab", on=date(2026, 6, 1))
    assert not q.covers(item=None, category="lab", on=date(2026, 6, 1))
    assert not q.covers(item="K", category="lab", on=date(2027, 1, 1))


def test_demo_expired_qualification_covers_nothing_today(demo: Registry) -> None:
    expired = [(i, q) for i in demo for q in i.qualifications if q.expires < TODAY]
    assert expired
    for _inst, q in expired:
        assert not q.covers(item=q.item, category=q.category, on=TODAY)
        assert q.covers(item=q.item, category=q.category, on=q.expires)
    current = [q for i in demo for q in i.qualifications if q.issued <= TODAY <= q.expires]
    assert current
    assert all(q.covers(item=q.item, category=q.category, on=TODAY) for q in current)
    assert not any(
        q.covers(item=q.item, category=q.category, on=q.expires + timedelta(days=1))
        for q in current
    )


def test_a_reloading_registry_follows_issue_and_revoke(tmp_path: Path) -> None:
    """Every service holds a ReloadingRegistry: a token issued after it was built works at
    once (after the interval), and a revoked one stops working."""
    path = tmp_path / "institutions.yaml"
    shutil.copy(DEMO, path)
    reloading = ReloadingRegistry(path, interval_s=0.0)
    first = reloading.ids[0]
    token = issue_token(path, first)
    found = reloading.authenticate(token)
    assert found is not None and found.id == first
    assert revoke_tokens(path, first) >= 1
    assert reloading.authenticate(token) is None


def test_a_broken_file_keeps_the_previous_registry(tmp_path: Path) -> None:
    path = tmp_path / "institutions.yaml"
    shutil.copy(DEMO, path)
    token = issue_token(path, Registry.load(path).ids[0])
    reloading = ReloadingRegistry(path, interval_s=0.0)
    path.write_text("institutions: [ {id: broken", encoding="utf-8")
    assert reloading.authenticate(token) is not None
    assert reloading.stale
