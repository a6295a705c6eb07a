"""mrhub_tools.bench.ingest: the pure parts (payloads, arithmetic, report). No timing here."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import simplejson
from fhir.resources.R4B import get_fhir_model_class

from mrhub_tools.bench.ingest import (
    MODES,
    CpuProbe,
    LoadResult,
    build_ratios,
    count_by_phase,
    format_report,
    gateway_source_digest,
    gb11643,
    likely_limit,
    make_payloads,
    percentile,
    ratio,
)
from services.common.identifiers import ID_CARD_SYSTEM, OUTPATIENT_NO_SYSTEM, parse_id_card
from services.common.institutions import Institution, Registry
from services.ingest.validation import check_bundle, check_resource, http_status, parse_json

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def institution() -> Institution:
    return next(iter(Registry.load(REPO / "config" / "institutions.yaml")))


@pytest.fixture(scope="module")
def payloads(institution: Institution) -> Any:
    return make_payloads(institution.id, institution.name, n_single=300, n_bundles=40)


# --------------------------------------------------------------------------- payloads


def test_single_observations_accepted(payloads: Any, institution: Institution) -> None:
    assert len(payloads.single) == 300
    for p in payloads.single:
        raw, issues = parse_json(p.body)
        assert issues == []
        checked = check_resource(raw, institution, expected_type="Observation")
        assert checked.ok, checked.issues
        assert http_status(checked.issues) == 200
        assert raw["subject"]["identifier"]["system"] == OUTPATIENT_NO_SYSTEM
        assert p.parts == (("Observation", p.body),)


def test_transaction_bundles_accepted(payloads: Any, institution: Institution) -> None:
    assert len(payloads.bundle) == 40
    for p in payloads.bundle:
        raw, issues = parse_json(p.body)
        assert issues == []
        result = check_bundle(raw, institution)
        assert result.ok, result.all_issues
        assert result.bundle_type == "transaction"
        types = [e.resource_type for e in result.entries]
        assert types == ["Patient", *["Observation"] * 8, "DiagnosticReport"]
        assert p.resources == 10
        assert [t for t, _ in p.parts] == types
        # every contained resource is the entry's resource, serialised on its own
        for (_, part), entry in zip(p.parts, raw["entry"], strict=True):
            assert parse_json(part)[0] == entry["resource"]


def test_patients_carry_a_valid_id_card_matching_them(payloads: Any) -> None:
    for p in payloads.bundle:
        patient = parse_json(p.body)[0]["entry"][0]["resource"]
        (card,) = [i["value"] for i in patient["identifier"] if i["system"] == ID_CARD_SYSTEM]
        decoded = parse_id_card(card)
        assert decoded.birth_date.isoformat() == patient["birthDate"]
        assert decoded.sex == patient["gender"]


def test_other_institution_gets_refused(payloads: Any) -> None:
    """The payloads name their institution as performer: another one may not post them."""
    other = list(Registry.load(REPO / "config" / "institutions.yaml"))[1]
    raw, _ = parse_json(payloads.single[0].body)
    assert http_status(check_resource(raw, other).issues) == 403


def test_every_part_passes_the_r4b_model(payloads: Any) -> None:
    for mode in MODES:
        for p in payloads.of(mode):
            for rtype, body in p.parts:
                get_fhir_model_class(rtype).model_validate_json(body)


def test_decimals_keep_their_precision(payloads: Any) -> None:
    """Values are written with the analyser's decimal places: 6.30 stays 6.30."""
    seen = set()
    for p in payloads.single:
        text = p.body.decode()
        value = simplejson.loads(text, use_decimal=True)["valueQuantity"]["value"]
        assert isinstance(value, Decimal | int)  # integers (HGB 142 g/L) parse as int
        places = -int(value.as_tuple().exponent) if isinstance(value, Decimal) else 0
        seen.add(places)
        assert f'"value":{value}' in text
    assert seen == {0, 1, 2}


def test_payloads_are_deterministic(institution: Institution) -> None:
    a = make_payloads(institution.id, institution.name, n_single=20, n_bundles=3)
    b = make_payloads(institution.id, institution.name, n_single=20, n_bundles=3)
    c = make_payloads(institution.id, institution.name, seed=7, n_single=20, n_bundles=3)
    assert a == b
    assert a.single != c.single


def test_payloads_vary(payloads: Any) -> None:
    assert len({p.body for p in payloads.single}) == len(payloads.single)
    codes = {parse_json(p.body)[0]["code"]["coding"][0]["code"] for p in payloads.single}
    assert {"6690-2", "2823-3", "2951-2", "14749-6"} <= codes


def test_gb11643() -> None:
    assert gb11643("11010519491231002") == "11010519491231002X"  # GB 11643 example
    assert gb11643("44052418800101001") == "440524188001010014"


# ------------------------------------------------------------------------ arithmetic


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([3.0], 99) == 3.0
    assert percentile([1.0, 2.0], 50) == 1.0
    assert percentile([], 50) is None


def test_ratio() -> None:
    assert ratio(3.0, 4.0) == 0.75
    assert ratio(1.0, 0.0) is None
    assert ratio(None, 2.0) is None


def test_load_result_summary() -> None:
    r = LoadResult(window_s=4.0)
    for i in range(8):  # 8 bundles of 10 in the window, 10 ms to 80 ms
        r.record(True, 10, (i + 1) / 100, in_window=True)
    r.record(True, 10, 0.5, in_window=False)  # warm-up: accepted, not in the rate
    r.record(False, 10, 0.01, in_window=True, error="HTTP 503")
    r.record(False, 10, 0.01, in_window=False, error="HTTP 503")
    s = r.summary()
    assert s["resources_per_s"] == 20.0  # 80 resources / 4 s
    assert s["requests_per_s"] == 2.0
    assert s["p50_ms"] == 40.0
    assert s["p99_ms"] == 80.0
    assert s["errors"] == 2  # errors count over the whole run
    assert s["errors_by_kind"] == {"HTTP 503": 2}
    assert s["resources_accepted_total"] == 90  # what Kafka must hold
    assert s["requests_total"] == 11
    json.dumps(s)


def test_count_by_phase() -> None:
    boundaries = [{0: 0, 1: 5}, {0: 3, 1: 9}, {0: 10, 1: 12}]
    # partition 0: phase 0 = 0..2, phase 1 = 3..9 (3, 5, 7, 8: markers, never read)
    # partition 1: phase 0 = 5..8, phase 1 = 9..11
    offsets = {0: [0, 1, 2, 4, 6, 9], 1: [5, 6, 7, 9, 10]}
    assert count_by_phase(offsets, boundaries) == [3 + 3, 3 + 2]
    assert count_by_phase({0: [10, 11]}, boundaries) == [0, 0]  # after the last snapshot


def test_cpu_percent() -> None:
    before = {"client": 1.0, "gateways": 10.0, "kafka": None, "machine": 50.0, "wall": 100.0}
    after = {"client": 1.5, "gateways": 11.5, "kafka": 3.0, "machine": 53.0, "wall": 102.0}
    assert CpuProbe.percent(before, after) == {"client": 25.0, "gateways": 75.0, "machine": 150.0}
    before["kafka"], after["machine"] = 2.0, 54.0
    assert CpuProbe.percent(before, after) == {
        "client": 25.0,
        "gateways": 75.0,
        "kafka": 50.0,
        "machine": 200.0,
        "other": 50.0,
    }


def _summary(resources: float, requests: float) -> dict[str, Any]:
    return {
        "resources_per_s": resources,
        "requests_per_s": requests,
        "p50_ms": 12.5,
        "p99_ms": 80.0,
        "errors": 0,
        "cpu_pct_of_one_core": {"client": 10.0, "gateways": 90.0, "kafka": 50.0},
        "gateway_cpu_us_per_resource": 900_000 / resources,
    }


def _report() -> dict[str, Any]:
    baseline = {
        "single": {"resources_per_s": 5000.0, "cpu_us_per_resource": 200.0},
        "bundle": {"resources_per_s": 6000.0, "cpu_us_per_resource": 150.0},
    }
    gateway = {
        "1": {"single": _summary(1000.0, 1000.0), "bundle": _summary(3000.0, 300.0)},
        "2": {"single": _summary(1500.0, 1500.0), "bundle": _summary(3000.0, 300.0)},
    }
    return {
        "command": "mrhub bench ingest --seconds 10",
        "seconds": 10.0,
        "warmup_s": 2.0,
        "concurrency": 32,
        "cpu_count": 2,
        "seed": 1,
        "payloads": {
            "single": {"count": 2000, "resources": 2000, "avg_bytes": 1155},
            "bundle": {"count": 300, "resources": 3000, "avg_bytes": 12086},
        },
        "kafka": {"bootstrap": "127.0.0.1:1", "started_here": True, "topic": "t", "partitions": 6},
        "baseline": baseline,
        "client_ceiling": {"aiohttp": _summary(16000.0, 16000.0)},
        "gateway": gateway,
        "ratios": build_ratios(baseline, gateway),
        "kafka_check": {"messages": 42, "resources_accepted": 42},
        "kafka_messages_match": True,
        "notes": ["two cores"],
    }


def test_build_ratios() -> None:
    r = _report()["ratios"]
    assert r["single"] == {
        "gateway_1p_over_baseline": 0.2,
        "gateway_2p_over_gateway_1p": 1.5,
        "baseline_cpu_over_gateway_1p_cpu": round(200 / 900, 3),
    }
    assert r["bundle"] == {
        "gateway_1p_over_baseline": 0.5,
        "gateway_2p_over_gateway_1p": 1.0,
        "baseline_cpu_over_gateway_1p_cpu": 0.5,
    }
    assert build_ratios({}, {})["single"]["gateway_1p_over_baseline"] is None
    assert build_ratios({}, {})["single"]["baseline_cpu_over_gateway_1p_cpu"] is None


def test_gateway_cpu_per_resource() -> None:
    """The gateways' CPU during the window, per resource accepted in it."""
    result = LoadResult(window_s=10.0)
    assert result.gateway_cpu_us_per_resource() is None  # no CPU figures
    result.cpu_pct = {"gateways": 50.0}
    assert result.gateway_cpu_us_per_resource() is None  # nothing accepted
    for _ in range(100):
        result.record(True, 10, 0.01, True)
    result.record(True, 10, 0.01, False)  # outside the window: not counted
    # 0.5 of a core for 10 s = 5 CPU seconds over 1,000 resources
    assert result.gateway_cpu_us_per_resource() == 5000.0
    assert result.summary()["gateway_cpu_us_per_resource"] == 5000.0


def test_format_report() -> None:
    text = format_report(_report())
    assert "mrhub bench ingest --seconds 10" in text
    assert "5,000 resources/s, 200 µs CPU per resource" in text
    assert "bundle 0.50" in text  # CPU per resource, bare ÷ gateway
    assert "16,000 requests/s" in text
    assert "gateway_1p / baseline = 0.20" in text
    assert "gateway_2p / gateway_1p = 1.50" in text
    assert "kafka_messages_match: true" in text
    assert "Note: two cores" in text
    json.dumps(_report())


def test_likely_limit() -> None:
    def summary(rps: float, **cpu: float) -> dict[str, Any]:
        return {"requests_per_s": rps, "cpu_pct_of_one_core": cpu}

    assert likely_limit(summary(900, machine=100), 1, 2, 1000) == "client"
    assert likely_limit(summary(500, machine=190, gateways=95), 1, 2, 1000) == "machine CPU"
    assert likely_limit(summary(500, machine=150, gateways=95), 1, 2, 1000) == "gateway CPU"
    assert likely_limit(summary(500, machine=150, gateways=95), 2, 2, 1000) == "in-flight/latency"
    assert likely_limit(summary(500), 1, 2, None) == "in-flight/latency"


def test_gateway_source_digest() -> None:
    digest = gateway_source_digest()
    assert len(digest) == 12
    assert digest == gateway_source_digest()
