"""mrhub_tools.bench.index: the pure parts (persons, seeded table entries, partitions, the load's
envelopes, the report). No Kafka, no timing here."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import simplejson
from aiokafka.partitioner import DefaultPartitioner as AioDefaultPartitioner
from kafka.partitioner.default import murmur2 as kafka_python_murmur2
from pydantic import SecretStr

from mrhub_tools.bench.index import (
    Person,
    PersonGen,
    add_ratios,
    bundle_of,
    combine_checks,
    combine_rounds,
    cpu_percent,
    cpu_us_per_record,
    format_report,
    gateway_messages,
    make_visit,
    make_visits,
    metric_value,
    parse_populations,
    patient_resource,
    plan_load,
    report_notes,
    run_figures,
    service_source_digest,
    split_rounds,
)
from services.common.codec import dumps
from services.common.envelope import Envelope
from services.common.identifiers import (
    ID_CARD_SYSTEM,
    OUTPATIENT_NO_SYSTEM,
    keyed_hash,
    parse_id_card,
)
from services.common.institutions import Institution, Registry
from services.common.partitioner import partition_for
from services.common.settings import IdentitySettings, KafkaSettings, Settings
from services.ingest.metrics import IngestMetrics
from services.ingest.validation import check_bundle, parse_json
from services.ingest.views import Gateway, bundle_patients
from services.patient_index import app as pi_app
from services.patient_index.canonical import build_record
from services.patient_index.identity import (
    IdentityState,
    Keyed,
    apply_claim,
    claims_to_send,
    keyed_identifiers,
    master_id_for,
    resolve_anchor,
)
from services.patient_index.normalize import (
    person_from_fhir,
    person_from_json,
    person_from_subject,
    person_to_json,
)
from services.patient_index.seed import (
    APP_ID,
    SeedEntries,
    SeedStats,
    block_value,
    changelog_specs,
    changelog_topic,
    seed_entries,
    seed_messages,
)

REPO = Path(__file__).resolve().parents[2]
KEY = b"bench-test-hmac-key"


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.load(REPO / "config" / "institutions.yaml")


@pytest.fixture(scope="module")
def institutions(registry: Registry) -> list[str]:
    return list(registry.ids[:3])


@pytest.fixture(scope="module")
def persons(institutions: list[str]) -> list[Person]:
    gen = PersonGen(7, institutions)
    return [next(gen) for _ in range(3000)]


def _hash(ident: Any) -> str:
    return keyed_hash(KEY, *ident.key())


def _seed(p: Person) -> SeedEntries:
    """The patient index's seeding API (services/patient_index/seed.py) for the bench's person."""
    return seed_entries(patient_resource(p), p.institution, KEY)


# ------------------------------------------------------------------- faust's own names


@pytest.fixture(scope="module")
def faust_app(tmp_path_factory: pytest.TempPathFactory) -> Any:
    settings = Settings(
        kafka=KafkaSettings(bootstrap_servers="127.0.0.1:9"),
        identity=IdentitySettings(hmac_key=SecretStr(KEY.decode())),
        state_dir=tmp_path_factory.mktemp("state"),
        topic_partitions=6,
    )
    return pi_app.create_app(settings, web_port=1)


def test_changelog_topics_are_the_ones_faust_keeps_for_the_tables(faust_app: Any) -> None:
    assert faust_app.conf.id == APP_ID
    for table in ("identities", "blocks"):
        assert faust_app.tables[table].changelog_topic.get_topic_name() == changelog_topic(table)
    assert [s.name for s in changelog_specs(6)] == [
        "mrhub-patient-index-identities-changelog",
        "mrhub-patient-index-blocks-changelog",
    ]
    for spec in changelog_specs(6):
        assert spec.partition_count(1) == 6
        assert spec.config == {"cleanup.policy": "compact"}  # as faust creates them


def test_partition_is_the_one_faust_s_producer_picks(faust_app: Any) -> None:
    # the app's partitioner (the C murmur2) must pick what aiokafka's DefaultPartitioner picks
    partitioner = faust_app.conf.producer_partitioner
    aio = AioDefaultPartitioner()
    rng = random.Random(3)
    for n in (1, 3, 6, 12):
        parts = list(range(n))
        for i in range(500):
            key = keyed_hash(KEY, "x", str(i)).encode() if i % 2 else rng.randbytes(i % 40)
            assert partition_for(key, n) == aio(key, parts, parts)
            assert partitioner(key, parts, parts) == aio(key, parts, parts)
            assert partition_for(key, n) == (kafka_python_murmur2(key) & 0x7FFFFFFF) % n


@pytest.mark.parametrize(
    ("key", "partition"),
    [(b"", 681), (b"a", 524), (b"ab", 434), (b"abc", 107), (b"123456789", 566), (b"\x00 ", 742)],
)
def test_partition_agrees_with_the_java_client(key: bytes, partition: int) -> None:
    # vectors from kafka-python's test suite, taken from the Java client's partitioner
    assert partition_for(key, 1000) == partition


def test_partition_spreads_keys_over_all_partitions() -> None:
    counts = [0] * 6
    for i in range(6000):
        counts[partition_for(keyed_hash(KEY, "y", str(i)).encode(), 6)] += 1
    assert min(counts) > 800


# ------------------------------------------------------------------------------ persons


def test_persons_are_distinct_valid_and_deterministic(
    persons: list[Person], institutions: list[str]
) -> None:
    assert len({p.card for p in persons}) == len(persons)
    assert len({p.mz for p in persons}) == len(persons)
    for p in persons[:500]:
        card = parse_id_card(p.card)  # GB 11643 check character, province, birth date
        assert card.birth_date == p.born
        assert card.sex == p.sex
        assert p.institution in institutions
    again = PersonGen(7, institutions)
    assert [next(again) for _ in range(50)] == persons[:50]
    assert [p.index for p in persons[:5]] == [0, 1, 2, 3, 4]


def test_the_patient_reads_back_as_the_person(persons: list[Person]) -> None:
    p = persons[0]
    person = person_from_fhir(patient_resource(p), p.institution)
    assert person.birth_date == p.born and person.sex == p.sex
    assert person.family == p.family and person.given == p.given
    assert not person.card_conflict
    kinds = [(i.kind, i.verified, i.scope) for i in person.idents]
    assert kinds == [("id_card", True, None), ("local", False, p.institution)]


# ------------------------------------------------------------------------ seeded state


def test_seeded_identity_entries_are_the_service_s_identity_state(persons: list[Person]) -> None:
    p = persons[1]
    entries = _seed(p)
    card_key = keyed_hash(KEY, ID_CARD_SYSTEM, p.card)
    mz_key = keyed_hash(KEY, f"{OUTPATIENT_NO_SYSTEM}@{p.institution}", p.mz)
    stored = {k.decode(): IdentityState.model_validate_json(v) for k, v in entries.identities}
    master = master_id_for(card_key)
    assert entries.master_patient_id == master
    assert stored == {
        # the card anchors the Patient and has claimed its 门诊号 once
        card_key: IdentityState(
            master_patient_id=master, rank=50, kind="id_card", claimed=(mz_key,)
        ),
        mz_key: IdentityState(master_patient_id=master, rank=50, kind="local"),
    }


def test_seeded_masters_are_minted_as_the_service_mints_them_or_as_before(
    persons: list[Person],
) -> None:
    """``--masters anchor``: on the anchor's partition, as ``resolve_anchor`` mints a new
    master with the hub's partition count; ``--masters legacy``: the form minted before."""
    from services.common.partitioner import partition_for
    from services.patient_index.seed import seed_entries

    p = persons[2]
    card_key = keyed_hash(KEY, ID_CARD_SYSTEM, p.card)
    placed = seed_entries(patient_resource(p), p.institution, KEY, 6).master_patient_id
    assert placed == resolve_anchor(None, Keyed(card_key, 50, "id_card"), 6).master_patient_id
    assert partition_for(placed.encode(), 6) == partition_for(card_key.encode(), 6)
    legacy = seed_entries(patient_resource(p), p.institution, KEY).master_patient_id
    assert legacy == master_id_for(card_key) == "MP" + card_key[:24]


def test_seeded_state_is_what_the_service_keeps_when_the_person_comes_back(
    persons: list[Person],
) -> None:
    """The resolve stage, given the seeded entries, finds the person and changes nothing:
    the entries are a fixed point of what the service writes for that Patient."""
    p = persons[2]
    stored = {k.decode(): IdentityState.model_validate_json(v) for k, v in _seed(p).identities}
    # an Observation that names the patient only by the card (subject.identifier)
    subject = person_from_subject([{"system": ID_CARD_SYSTEM, "value": p.card}], p.institution)
    [anchor] = keyed_identifiers(subject, _hash)
    res = resolve_anchor(stored[anchor.key], anchor)
    assert (res.decision, res.changed, res.event) == ("deterministic", False, None)
    # the Patient again: anchor known, and the claim for its 门诊号 changes nothing
    person = person_from_fhir(patient_resource(p), p.institution)
    anchor, *aliases = keyed_identifiers(person, _hash)
    res = resolve_anchor(stored[anchor.key], anchor)
    assert (res.decision, res.changed) == ("deterministic", False)
    # no claim goes out again (the anchor remembers it made them), and were one to, it
    # would change nothing
    assert claims_to_send(res.state, aliases) == ([], res.state)
    for alias in aliases:
        claim = apply_claim(stored[alias.key], res.master_patient_id, alias, anchor.rank)
        assert (claim.state, claim.event) == (None, None)
    # a new person's anchor is not in the seeded state: it would be a new identity
    other = _seed(persons[3])
    assert not set(stored) & {k.decode() for k, _ in other.identities}
    assert resolve_anchor(None, Keyed(anchor.key, 50, "id_card")).decision == "new"


def test_seeded_block_is_what_the_match_stage_stores(persons: list[Person]) -> None:
    born = persons[0].born
    same_day = [p for p in persons if p.born == born]
    by_key: dict[bytes, list[bytes]] = {}
    for p in persons:
        e = _seed(p)
        by_key.setdefault(e.block_key, []).append(e.block_entry)
    block_key = keyed_hash(KEY, "block:birth_date", born.isoformat()).encode()
    entries = by_key[block_key]
    assert len(entries) == len(same_day)
    value = block_value(entries)
    decoded = simplejson.loads(value, use_decimal=True)
    # byte for byte what the match stage writes (its own serialiser)
    assert value == dumps(decoded)
    for doc, p in zip(decoded, same_day, strict=True):
        expected = person_from_fhir(patient_resource(p), p.institution)
        assert set(doc) == {"anchor", "master_patient_id", "person"}
        assert person_from_json(doc["person"]) == expected
        assert doc["person"] == simplejson.loads(simplejson.dumps(person_to_json(expected)))
        assert doc["anchor"] == keyed_hash(KEY, ID_CARD_SYSTEM, p.card)
        assert doc["master_patient_id"] == master_id_for(doc["anchor"])


def test_seed_messages_write_each_identity_then_each_block_once(persons: list[Person]) -> None:
    some = persons[:200]
    stats = SeedStats()
    messages = list(seed_messages(((patient_resource(p), p.institution) for p in some), KEY, stats))
    idents = [(k, v) for t, k, v in messages if t == changelog_topic("identities")]
    blocks = {k: v for t, k, v in messages if t == changelog_topic("blocks")}
    assert len(idents) + len(blocks) == len(messages)  # no other table is seeded
    assert idents == [entry for p in some for entry in _seed(p).identities]
    # every person is in its birth date's block, each block written once
    assert len(blocks) == len({p.born for p in some}) == stats.blocks
    for p in some:
        e = _seed(p)
        assert e.block_entry in blocks[e.block_key]
    assert stats.persons == len(some) and stats.identities == len(idents) == 2 * len(some)
    assert stats.block_entries == len(some)


def test_a_patient_without_a_usable_identifier_cannot_be_seeded() -> None:
    with pytest.raises(ValueError, match="no usable identifier"):
        seed_entries({"resourceType": "Patient", "gender": "female"}, "x", KEY)


def test_a_block_keeps_only_the_last_block_limit_persons() -> None:
    entries = [simplejson.dumps({"n": i}).encode() for i in range(pi_app.BLOCK_LIMIT + 10)]
    kept = simplejson.loads(block_value(entries))
    assert len(kept) == pi_app.BLOCK_LIMIT
    assert kept[0] == {"n": 10} and kept[-1] == {"n": pi_app.BLOCK_LIMIT + 9}
    assert simplejson.loads(block_value([])) == []


# ---------------------------------------------------------------------------------- load


def _institution(registry: Registry, inst_id: str) -> Institution:
    return next(i for i in registry if i.id == inst_id)


def test_a_visit_is_a_bundle_the_gateway_accepts(registry: Registry, persons: list[Person]) -> None:
    rng = random.Random(1)
    for n, p in enumerate(persons[:20]):
        visit = make_visit(rng, p, known=True, number=n)
        check = check_bundle(bundle_of(visit), _institution(registry, p.institution))
        assert check.ok, [i.diagnostics for i in check.all_issues]
        types = [r["resourceType"] for _, r in visit.entries]
        assert types[0] == "Patient" and types[-1] == "DiagnosticReport"
        assert visit.records == len(types) - 1 == 9


def test_gateway_messages_are_what_the_gateway_publishes(
    registry: Registry, persons: list[Person]
) -> None:
    p = persons[4]
    visit = make_visit(random.Random(2), p, known=False, number=42)
    received = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)
    mine = gateway_messages(visit, KEY, received)
    # the gateway's own path: parse the posted body, check it, build its messages
    raw, issues = parse_json(simplejson.dumps(bundle_of(visit), use_decimal=True))
    assert issues == []
    inst = _institution(registry, p.institution)
    check = check_bundle(raw, inst)
    gw = Gateway(registry, None, IngestMetrics(), hmac_key=KEY, max_body_bytes=1 << 20)  # type: ignore[arg-type]
    theirs = [
        gw.message(
            inst,
            e,
            received_at=received,
            trace_id=visit.trace_id,
            bundle_id=visit.bundle_id,
            entry_index=e.index,
            patients=bundle_patients(check.entries),
        )[0]
        for e in check.entries
    ]
    assert len(mine) == len(theirs) == 10
    for (key, value, route), out in zip(mine, theirs, strict=True):
        assert key == out.key
        assert route == out.route  # the same partition
        assert route is not None
        a, b = Envelope.from_bytes(value), Envelope.from_bytes(out.value)
        assert a.model_dump(exclude={"event_id", "occurred_at"}) == b.model_dump(
            exclude={"event_id", "occurred_at"}
        )


def test_the_load_s_records_are_distinct_and_name_the_seeded_person(
    persons: list[Person],
) -> None:
    p = persons[5]
    visit = make_visit(random.Random(3), p, known=True, number=7)
    seeded_anchor = _seed(p).identities[0][0].decode()
    record_ids = set()
    for _, value, route in gateway_messages(visit, KEY, datetime.now(UTC)):
        env = Envelope.from_bytes(value)
        payload = env.payload
        person = (
            person_from_fhir(payload["resource"], env.source)
            if payload["resource_type"] == "Patient"
            else person_from_subject(payload["patient_identifiers"], env.source)
        )
        assert keyed_identifiers(person, _hash)[0].key == seeded_anchor  # route's anchor
        assert route == seeded_anchor.encode()  # and the partition it is produced to
        record = build_record(
            payload,
            source_institution=env.source,
            master_patient_id="MPx",
            event_id=env.event_id,
            received_at=env.received_at,
            trace_id=env.trace_id,
        )
        if record is not None:
            record_ids.add(record.record_id)
    assert len(record_ids) == visit.records == 9


def test_plan_load_samples_distinct_known_persons() -> None:
    plan = plan_load(10_000, 500, 40, 0.5, 1)
    assert len(plan.measured_known) == 250 and len(plan.warmup_known) == 20
    assert (plan.measured_new, plan.warmup_new) == (250, 20)
    assert not set(plan.measured_known) & set(plan.warmup_known)
    assert all(0 <= i < 10_000 for i in [*plan.measured_known, *plan.warmup_known])
    assert plan_load(10_000, 500, 40, 0.5, 1) == plan
    small = plan_load(100, 500, 40, 0.5, 1)  # fewer persons than known visits
    assert len(small.measured_known) == 100 and small.warmup_known == []
    assert (small.measured_new, small.warmup_new) == (400, 40)


def test_make_visits_mixes_known_and_new(persons: list[Person]) -> None:
    visits = make_visits(random.Random(4), persons[:5], persons[5:10], first_number=100)
    assert sorted(v.person.index for v in visits) == list(range(10))
    assert sum(v.known for v in visits) == 5
    assert {v.person.index for v in visits if v.known} == set(range(5))
    assert len({v.trace_id for v in visits}) == len({v.bundle_id for v in visits}) == 10


# ---------------------------------------------------------------------------- arithmetic


def test_parse_populations() -> None:
    assert parse_populations("1000000,10000, 100_000,1e4") == [10_000, 100_000, 1_000_000]
    for bad in ("", "0", "ten", "5,-1"):
        with pytest.raises(ValueError):
            parse_populations(bad)


def test_metric_value_reads_labelled_samples() -> None:
    text = "\n".join(
        [
            "# HELP mrhub_patient_index_link_decisions_total Identity decisions",
            "# TYPE mrhub_patient_index_link_decisions_total counter",
            'mrhub_patient_index_link_decisions_total{kind="new"} 12.0',
            'mrhub_patient_index_link_decisions_total{kind="deterministic"} 1088.0',
            'mrhub_patient_index_link_decisions_created{kind="new"} 1.7e9',
        ]
    )
    name = "mrhub_patient_index_link_decisions_total"
    assert metric_value(text, name, {"kind": "new"}) == 12.0
    assert metric_value(text, name, {"kind": "deterministic"}) == 1088.0
    assert metric_value(text, name, {"kind": "auto"}) == 0.0
    assert metric_value(text, "mrhub_other_total") == 0.0


def test_run_figures() -> None:
    f = run_figures([12.0, 10.0, 11.0, 14.0], t_start=9.0, expected=4)
    assert f["records"] == 4 and f["seconds"] == 5.0
    assert f["records_per_s"] == 0.8 and f["us_per_record"] == 1_250_000.0
    assert f["first_record_s"] == 1.0
    assert f["after_first_records_per_s"] == 0.8  # 3 records after the first, in 4 s
    empty = run_figures([], t_start=0.0, expected=9)
    assert empty["records"] == 0 and empty["records_per_s"] is None


def _row(population: int, us: float | None, cpu: float | None) -> dict[str, Any]:
    main = None if cpu is None else cpu / 2
    return {
        "population": population,
        "measured": {
            "us_per_record": us,
            "service_cpu_us_per_record": cpu,
            "service_main_cpu_us_per_record": main,
        },
    }


def test_ratios_are_to_the_smallest_population_of_the_run() -> None:
    rows = [
        _row(100_000, 4400.0, 3300.0),
        _row(10_000, 4000.0, 3000.0),
        _row(1_000_000, 6000.0, None),
    ]
    add_ratios(rows)
    by = {r["population"]: r["ratios"] for r in rows}
    assert by[10_000] == {
        "us_per_record": 1.0,
        "service_cpu_us_per_record": 1.0,
        "service_main_cpu_us_per_record": 1.0,
        "base_population": 10_000,
    }
    assert by[100_000]["service_main_cpu_us_per_record"] == 1.1
    assert by[100_000]["us_per_record"] == 1.1
    assert by[100_000]["service_cpu_us_per_record"] == 1.1
    assert by[1_000_000]["us_per_record"] == 1.5
    assert by[1_000_000]["service_cpu_us_per_record"] is None


def test_ratios_skip_a_failed_smallest_population() -> None:
    rows: list[dict[str, Any]] = [
        {"population": 10, "error": "broker did not start", "checks": {"ok": False}}
    ]
    rows += [_row(100, 500.0, 400.0), _row(1000, 750.0, 600.0)]
    add_ratios(rows)
    assert rows[0]["ratios"]["us_per_record"] is None
    assert rows[1]["ratios"]["base_population"] == 100
    assert rows[2]["ratios"]["us_per_record"] == 1.5


def test_cpu_percent() -> None:
    before = {"service": 1.0, "service_main": 0.8, "kafka": 2.0, "bench": 0.5}
    after = {"service": 2.0, "service_main": 1.6, "kafka": 2.5, "bench": 0.7}
    before |= {"machine": 10.0, "wall": 100.0}
    after |= {"machine": 12.0, "wall": 102.0}
    assert cpu_percent(before, after) == {
        "service": 50.0,
        "service_main": 40.0,  # part of the service's 50%, not added to it
        "kafka": 25.0,
        "bench": 10.0,
        "machine": 100.0,
        "other": 15.0,
    }
    assert "other" not in cpu_percent({**before, "kafka": None}, after)


def test_cpu_us_per_record() -> None:
    before = {"service": 1.0, "service_main": None}
    after = {"service": 1.9, "service_main": 1.5}
    assert cpu_us_per_record(before, after, "service", 300) == 3000.0
    assert cpu_us_per_record(before, after, "service_main", 300) is None
    assert cpu_us_per_record(before, after, "service", 0) is None


def test_split_rounds_deals_every_visitor_once(persons: list[Person]) -> None:
    rounds = split_rounds(persons[:10], persons[10:21], 3)
    assert [(len(k), len(n)) for k, n in rounds] == [(4, 4), (3, 4), (3, 3)]
    assert sorted(p.index for k, n in rounds for p in k + n) == list(range(21))


def _round(us: float, cpu: float, other: float = 3.0) -> dict[str, Any]:
    return {
        "records": 4500,
        "records_expected": 4500,
        "records_per_s": 1e6 / us,
        "us_per_record": us,
        "first_record_s": 2.5,
        "after_first_records_per_s": 300.0,
        "service_cpu_us_per_record": cpu,
        "service_main_cpu_us_per_record": cpu * 0.75,
        "produce_s": 2.0,
        "cpu_pct": {"service": 60.0, "kafka": 80.0, "bench": 10.0, "other": other},
    }


def test_combine_rounds_takes_medians_and_ranges() -> None:
    rounds = [_round(5000.0, 4000.0, 30.0), _round(4000.0, 3000.0), _round(4400.0, 3900.0)]
    rounds[1]["cpu_pct"]["service"] = 90.0
    c = combine_rounds(rounds)
    assert c["rounds"] == 3
    assert c["us_per_record"] == 4400.0
    assert (c["us_per_record_min"], c["us_per_record_max"]) == (4000.0, 5000.0)
    assert c["service_cpu_us_per_record"] == 3900.0
    assert (c["service_cpu_us_per_record_min"], c["service_cpu_us_per_record_max"]) == (
        3000.0,
        4000.0,
    )
    assert c["cpu_pct"] == {"bench": 10.0, "kafka": 80.0, "other": 3.0, "service": 60.0}
    assert (c["records"], c["records_expected"]) == (13500, 13500)
    two = combine_rounds([_round(4000.0, 3000.0), _round(5000.0, 3500.0)])
    assert two["us_per_record"] == 4500.0 and two["service_cpu_us_per_record"] == 3250.0
    none = combine_rounds([{**_round(1.0, 1.0), "us_per_record": None}])
    assert none["us_per_record"] is None and none["us_per_record_min"] is None


def test_combine_checks_is_ok_only_when_every_round_is() -> None:
    good = {
        "decisions_new": 250,
        "decisions_deterministic": 4750,
        "expected_new": 250,
        "expected_deterministic": 4750,
        "dead_letters": 0,
        "stalled": False,
        "ok": True,
    }
    both = combine_checks([good, good])
    assert both["ok"] and both["decisions_new"] == 500 and both["expected_deterministic"] == 9500
    bad = {**good, "decisions_new": 500, "ok": False}
    assert not combine_checks([good, bad])["ok"]
    assert not combine_checks([])["ok"]


def _report() -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for n, us, cpu in ((10_000, 4000.0, 3000.0), (1_000_000, 5000.0, 3600.0)):
        rounds = [_round(us, cpu), _round(us + 100, cpu + 100), _round(us - 100, cpu - 100)]
        rows.append(
            {
                "population": n,
                "seed": {"identities": 2 * n, "blocks": 27759, "seconds": 1.5},
                "recovery_s": 7.25,
                "service_source_sha256": "0123456789ab",
                "measured": combine_rounds(rounds),
                "rounds": rounds,
                "checks": {
                    "decisions_new": 750,
                    "decisions_deterministic": 14250,
                    "expected_new": 750,
                    "expected_deterministic": 14250,
                    "dead_letters": 0,
                    "ok": True,
                },
            }
        )
    rows.append({"population": 2_000_000, "error": "not ready in 300s", "checks": {"ok": False}})
    add_ratios(rows)
    return {
        "command": "mrhub bench index --populations 10000,1000000,2000000",
        "cpu_count": 2,
        "kafka_version": "3.9.1",
        "partitions": 6,
        "seed": 1,
        "load": {
            "visits": 500,
            "rounds": 3,
            "known_visits": 250,
            "new_visits": 250,
            "warmup_visits": 40,
            "resources_per_visit": 10,
            "messages": 5000,
            "records": 4500,
        },
        "populations": rows,
        "notes": ["a note"],
    }


def test_format_report_shows_costs_and_ratios_per_population() -> None:
    text = format_report(_report())
    lines = text.splitlines()
    assert "mrhub bench index --populations 10000,1000000,2000000" in text
    assert "3 measured rounds of 500 visits" in text
    head = next(line for line in lines if line.startswith("known persons"))
    assert head.split()[2:] == ["10,000", "1,000,000", "2,000,000"]
    seeded = next(line for line in lines if "seeded identity / block entries" in line)
    assert seeded.split()[-3:] == ["20,000/27,759", "2,000,000/27,759", "-"]
    line = next(line for line in lines if "µs/record (wall)" in line)
    assert line.split()[-3:] == ["4,000", "5,000", "-"]
    rounds = [line for line in lines if "each round" in line]
    assert rounds[0].split()[-3:] == ["4,000/4,100/3,900", "5,000/5,100/4,900", "-"]
    ratios = [line for line in lines if "ratio to 10,000" in line]
    assert [r.split()[-3:] for r in ratios] == [
        ["1.00", "1.25", "-"],
        ["1.00", "1.20", "-"],
        ["1.00", "1.20", "-"],
    ]
    main = next(line for line in lines if "in its main thread" in line)
    assert main.split()[-3:] == ["2,250", "2,700", "-"]
    assert "750/14,250" in text
    assert "2,000,000 failed: not ready in 300s" in text
    assert "Note: a note" in text


def test_notes_name_the_disturbed_rounds() -> None:
    report = _report()
    assert not any("disturbed" in n for n in report_notes(report))
    report["populations"][1]["rounds"][2]["cpu_pct"]["other"] = 45.0
    [note] = [n for n in report_notes(report) if "disturbed" in n]
    assert "1,000,000: round 3 (45%)" in note


def test_notes_say_when_the_service_code_changed_between_populations() -> None:
    report = _report()
    assert not any("source changed" in n for n in report_notes(report))
    report["populations"][1]["service_source_sha256"] = "ba9876543210"
    assert any("source changed" in n for n in report_notes(report))


def test_service_source_digest_is_short_hex() -> None:
    digest = service_source_digest()
    assert len(digest) == 12 and int(digest, 16) >= 0
    assert service_source_digest() == digest
