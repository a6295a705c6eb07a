"""The simulator's pure parts: identities, the region, the scenario and its ground truth, and
the comparison with the hub's decisions."""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle

from mrhub_tools.simulate import fhir
from mrhub_tools.simulate.population import PersonGen, card_is_valid, id_card, mistype_card
from mrhub_tools.simulate.region import generate_region, new_tokens, uscc, write_region
from mrhub_tools.simulate.runner import summarise
from mrhub_tools.simulate.scenario import KINDS, Config, Scenario, build_scenario
from mrhub_tools.simulate.truth import ResultFact, expect, judge
from services.common.identifiers import is_valid_uscc, parse_id_card
from services.common.institutions import Institution, Qualification, Registry
from services.recognition.catalog import Catalog, load_catalogs
from tests.conftest import REPO
from tests.fhir_samples import gb11643

NOW = datetime(2026, 11, 20, 4, 0, tzinfo=UTC)
TODAY = date(2026, 11, 20)


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    found = load_catalogs(REPO / "config" / "catalog").catalog_for("140105", NOW)
    assert found is not None
    return found


def _scenario(catalog: Catalog, **kw: Any) -> Scenario:
    cfg = Config(
        **{
            "institutions": 12,
            "patients": 400,
            "days": 1,
            "seed": 11,
            "now": NOW,
            "today": TODAY,
            "salt": "t1",
            **kw,
        }
    )
    return build_scenario(cfg, generate_region(cfg.institutions, cfg.seed, TODAY), catalog)


# ── identities ────────────────────────────────────────────────────────────────────────────


def test_every_generated_id_card_passes_gb11643_and_agrees_with_the_person() -> None:
    gen = PersonGen(5, salt="x", no_card_share=0.1)
    persons = [next(gen) for _ in range(3000)]
    cards = [p for p in persons if p.card]
    assert 0.8 < len(cards) / len(persons) < 0.97  # some patients show no 身份证
    assert len({p.card for p in cards}) == len(cards)
    for p in cards:
        assert p.card is not None
        assert gb11643(p.card[:17]) == p.card  # the tests' own MOD 11-2, not the simulator's
        parsed = parse_id_card(p.card)  # the hub's check, as the gateway applies it
        assert (parsed.birth_date, parsed.sex) == (p.born, p.sex)


def test_a_mistyped_id_card_fails_the_check_and_a_known_number_passes() -> None:
    assert id_card("110105", date(1985, 3, 17), 123) == gb11643("11010519850317123")
    rng = random.Random(3)
    for _ in range(200):
        good = id_card("140105", date(1990, 6, 1), rng.randrange(1000))
        assert card_is_valid(good)
        assert not card_is_valid(mistype_card(good, rng))


def test_a_run_id_changes_who_the_patients_are_to_the_hub_but_not_their_names() -> None:
    ga, gb = PersonGen(9, salt="a"), PersonGen(9, salt="b")
    a = [next(ga) for _ in range(50)]
    b = [next(gb) for _ in range(50)]
    assert [p.name for p in a] == [p.name for p in b]
    assert not {p.card for p in a if p.card} & {p.card for p in b if p.card}
    assert sum(p.born == q.born for p, q in zip(a, b, strict=True)) < 5


# ── the region ───────────────────────────────────────────────────────────────────────────


def test_the_region_spans_levels_prefectures_alliances_and_writes_a_valid_registry(
    tmp_path: Path,
) -> None:
    region = generate_region(50, 7, TODAY)
    insts = [s.inst for s in region]
    assert {i.level for i in insts} == {1, 2, 3}
    assert {i.region_code[:4] for i in insts} == {"1401", "1402"}
    assert {i.ownership for i in insts} == {"public", "private"}
    assert any(i.alliances for i in insts) and any(not i.alliances for i in insts)
    assert any(not i.qualifications for i in insts)
    assert any(q.expires < TODAY for i in insts for q in i.qualifications)
    tokens = new_tokens([i.id for i in insts])
    path = write_region(
        tmp_path, region, tokens, params={"institutions": 50, "seed": 7}, today=TODAY
    )
    registry = Registry.load(path)
    assert registry.ids == tuple(i.id for i in insts)
    for inst_id, token in tokens.items():
        found = registry.authenticate(token)
        assert found is not None and found.id == inst_id
    assert "mrh_" not in path.read_text()  # hashes only
    assert (tmp_path / "tokens.json").stat().st_mode & 0o077 == 0
    assert generate_region(50, 7, TODAY) == region
    # both check characters (GB 11714 inside, GB 32100 at the end), as in the demo registry
    assert uscc("12", "140000", "40500173") == "12140000405001730E"
    assert all(is_valid_uscc(i.id) for i in insts)


# ── the scenario and its ground truth ─────────────────────────────────────────────────────


def test_the_same_seed_and_run_id_give_the_same_stream_byte_for_byte(catalog: Catalog) -> None:
    a, b = _scenario(catalog), _scenario(catalog)
    assert [r.ref for r in a.requests] == [r.ref for r in b.requests]
    assert [fhir.build(a, r) for r in a.requests] == [fhir.build(b, r) for r in b.requests]
    assert [o.expected for o in a.orders] == [o.expected for o in b.orders]
    other = _scenario(catalog, seed=12)
    assert [o.kind for o in other.orders] != [o.kind for o in a.orders]


def test_a_new_run_id_keeps_the_scenario_and_its_answers(catalog: Catalog) -> None:
    a, b = _scenario(catalog), _scenario(catalog, salt="t2")
    assert [(o.kind, o.item, o.institution) for o in a.orders] == [
        (o.kind, o.item, o.institution) for o in b.orders
    ]
    assert [o.expected for o in a.orders] == [o.expected for o in b.orders]
    assert fhir.build(a, a.requests[0]) != fhir.build(b, b.requests[0])


def test_every_order_is_labelled_with_the_reason_its_kind_intends(catalog: Catalog) -> None:
    scn = _scenario(catalog, patients=1500)
    kinds = Counter(o.kind for o in scn.orders)
    assert set(kinds) == set(KINDS), "every kind of situation occurs"
    for o in scn.orders:
        assert o.expected is not None
        reason, rule, _ = KINDS[o.kind]
        assert o.expected.reason == reason, (o.kind, o.expected)
        if rule is not None:
            assert o.expected.rule == rule, (o.kind, o.expected)
        assert (o.expected.saving_yuan > 0) == (reason == "recognised")


def test_the_stream_has_resends_amendments_withdrawals_and_malformed_messages(
    catalog: Catalog,
) -> None:
    scn = _scenario(catalog, patients=1500)
    assert any(r.resend and r.phase == 1 for r in scn.requests)
    assert any(r.resend and r.phase == 2 for r in scn.requests)
    statuses = {v.status for r in scn.results for v in r.versions}
    assert {"preliminary", "final", "amended", "entered-in-error"} <= statuses
    assert {k for k, _, _ in scn.malformed} == {
        "invalid-json",
        "bad-id-card",
        "missing-effective",
        "order-without-authored",
        "unknown-type",
    }
    assert any(r.view.card is None for r in scn.results)  # patients known by a 门诊号 only
    assert any(r.view.family.isascii() for r in scn.results) or not any(
        s.pinyin_names for s in scn.region
    )
    # every result precedes the moment the stream ends; orders follow their results
    assert all(v.issued_at < NOW for r in scn.results for v in r.versions)
    assert all(o.authored_at < NOW for o in scn.orders)


def test_the_bodies_are_fhir_r4(catalog: Catalog) -> None:
    scn = _scenario(catalog, patients=150)
    checked = Counter[str]()
    for req in scn.requests:
        path, body = fhir.build(scn, req)
        if req.expect_status >= 400:
            continue
        doc = json.loads(body)
        if doc["resourceType"] == "Bundle":
            Bundle.model_validate_json(body)
        checked[path] += 1
        assert "4.10" not in body.decode() or b"4.10" in body
    assert checked["/fhir"] and checked["/fhir/Observation"]


# ── the rules as the ground truth applies them ───────────────────────────────────────────


def _inst(i: str, level: Any, region: str, *quals: Qualification, **kw: Any) -> Institution:
    return Institution(
        id=i,
        name=i,
        level=level,
        grade=kw.pop("grade", "甲"),
        ownership=kw.pop("ownership", "public"),
        region_code=region,
        qualifications=quals,
        **kw,
    )


def _q(
    scope: Any, *, item: str | None = None, category: str | None = None, lapsed: bool = False
) -> Qualification:
    issued, expires = (
        (date(2023, 1, 1), date(2025, 1, 1)) if lapsed else (date(2025, 1, 1), date(2027, 12, 31))
    )
    return Qualification(item=item, category=category, scope=scope, issued=issued, expires=expires)


def _fact(
    inst: str, item: str = "K", age: timedelta = timedelta(days=2), status: str = "final"
) -> ResultFact:
    t = NOW - age
    return ResultFact(item, inst, status, t, t, t + timedelta(hours=1))


@pytest.mark.parametrize(
    ("issuer", "receiver", "fact", "reason", "rule"),
    [
        # the same level, national HR: recognised across prefectures
        (_inst("A", 3, "140105", _q("national", category="lab")), _inst("B", 3, "140213"),
         _fact("A"), "recognised", None),
        # a level-2 receiver recognises a level-3 issuer; not the other way round
        (_inst("A", 3, "140105", _q("provincial", category="lab")), _inst("B", 2, "140106"),
         _fact("A"), "recognised", None),
        (_inst("A", 2, "140105", _q("municipal", category="lab")), _inst("B", 3, "140106"),
         _fact("A"), "scope-not-satisfied", "direction"),
        # … unless both are in one 医联体
        (_inst("A", 1, "140105", _q("alliance", item="K"), alliances=("y",)),
         _inst("B", 3, "140106", alliances=("y",)), _fact("A"), "recognised", None),
        # municipal HR stops at the prefecture
        (_inst("A", 2, "140105", _q("municipal", item="K")), _inst("B", 2, "140213"),
         _fact("A"), "scope-not-satisfied", "hr-scope"),
        # no HR, or a lapsed one
        (_inst("A", 3, "140105"), _inst("B", 3, "140106"),
         _fact("A"), "issuer-not-qualified", "no-qualification"),
        (_inst("A", 3, "140105", _q("national", item="K", lapsed=True)), _inst("B", 3, "140106"),
         _fact("A"), "issuer-not-qualified", "qualification-expired"),
        # potassium: 7 days from collection
        (_inst("A", 3, "140105", _q("national", category="lab")), _inst("B", 3, "140106"),
         _fact("A", age=timedelta(days=9)), "outside-window", "expired"),
        (_inst("A", 3, "140105", _q("national", category="lab")), _inst("B", 3, "140106"),
         _fact("A", status="preliminary"), "result-not-final", "status"),
        # enhanced chest CT: one prefecture only (the catalogue's per-item rule)
        (_inst("A", 3, "140105", _q("provincial", category="imaging")), _inst("B", 3, "140213"),
         _fact("A", item="CT-CHEST-ENH"), "scope-not-satisfied", "outside-prefecture"),
    ],
)  # fmt: skip
def test_the_ground_truth_applies_the_rules_of_the_domain(
    catalog: Catalog,
    issuer: Institution,
    receiver: Institution,
    fact: ResultFact,
    reason: str,
    rule: str | None,
) -> None:
    item = catalog.item(fact.item_id)
    assert item is not None
    verdict = judge(fact, item, catalog, {"A": issuer, "B": receiver}, receiver, NOW)
    assert (verdict.reason, verdict.rule) == (reason, rule)


def test_the_best_result_decides_and_withdrawn_ones_do_not_exist(catalog: Catalog) -> None:
    a = _inst("A", 3, "140105", _q("national", category="lab"))
    b = _inst("B", 3, "140106")
    insts = {"A": a, "B": b}
    k = catalog.item("K")
    old, fresh = _fact("A", age=timedelta(days=20)), _fact("A")
    assert expect(k, b, [old, fresh], catalog, insts, NOW).reason == "recognised"
    assert expect(k, b, [old], catalog, insts, NOW).reason == "outside-window"
    gone = replace(fresh, status="entered-in-error")
    assert expect(k, b, [gone], catalog, insts, NOW).reason == "no-prior-result"
    assert expect(None, b, [fresh], catalog, insts, NOW).reason == "not-in-catalog"
    assert k is not None
    assert expect(k, b, [fresh], catalog, insts, NOW).saving_yuan == k.price_yuan


# ── comparing with the hub ───────────────────────────────────────────────────────────────


def _record(trace: str, payload: dict[str, Any], offset: int) -> Any:
    return SimpleNamespace(
        headers=[("trace_id", trace.encode())],
        value=json.dumps({"payload": payload}).encode(),
        partition=0,
        offset=offset,
    )


def test_lost_duplicated_and_superseding_decisions_are_told_apart(catalog: Catalog) -> None:
    scn = _scenario(catalog, patients=40)
    orders = scn.orders[:4]
    order_of = {f"t{o.n}": o.n for o in orders}
    records = []
    offset = 0

    def decision(o: Any, reason: str, **extra: Any) -> None:
        nonlocal offset
        offset += 1
        payload = {
            "order_record_id": f"r{o.n}",
            "reason": reason,
            "detail": "",
            "master_patient_id": "MP1",
            "matches": [],
            "estimated_saving_yuan": 20 if reason == "recognised" else None,
            **extra,
        }
        records.append(_record(f"t{o.n}", payload, offset))

    def want(o: Any) -> str:
        assert o.expected is not None
        return str(o.expected.reason)

    first, second, third, _lost = orders
    decision(first, want(first))
    decision(second, "outside-window" if want(second) != "outside-window" else "recognised")
    decision(second, want(second), supersedes="d1")  # a re-evaluation replaces the first
    decision(third, want(third))
    decision(third, want(third))  # two decisions, neither superseding: duplicated
    only = replace(scn, orders=orders)
    s = summarise(only, [], records, order_of)
    assert (s["orders"], s["lost"], s["duplicated"]) == (4, 1, 1)
    assert s["agreed"] == 3  # the latest decision counts; the lost one disagrees
    assert s["disagreements"][0]["hub"] == "lost"
    assert s["saving_yuan"] == sum(
        20 for o in (first, second, third) if o.expected and o.expected.reason == "recognised"
    )
    assert isinstance(s["expected_saving_yuan"], float) and Decimal(0) <= Decimal(
        str(s["expected_saving_yuan"])
    )
