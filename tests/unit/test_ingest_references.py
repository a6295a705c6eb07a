"""A bundle's ``urn:uuid:`` references are rewritten to the records' hub ids from the
Reference objects the checks' walk already found: the result must be exactly what a fresh
walk of every resource gives (the references a downstream service reads)."""

from __future__ import annotations

import copy
import uuid
from pathlib import Path
from typing import Any

from mrhub_tools.bench.ingest import make_payloads
from services.common.institutions import Institution, Registry
from services.ingest.validation import CheckedResource, check_bundle, parse_json
from services.ingest.views import bundle_patients, resolve_bundle
from tests import fhir_samples

REPO = Path(__file__).resolve().parents[2]


def _institution() -> Institution:
    return next(iter(Registry.load(REPO / "config" / "institutions.yaml")))


def _resolved(raw: dict[str, Any], who: Institution, *, walk_again: bool) -> list[Any]:
    """The entries' resources after ``resolve_bundle``; with ``walk_again`` as if the checks
    had not kept the Reference objects they found."""
    bundle = check_bundle(copy.deepcopy(raw), who)
    assert bundle.ok, bundle.all_issues
    entries: list[CheckedResource] = bundle.entries
    assert all(e.references is not None for e in entries)
    if walk_again:
        for e in entries:
            e.references = None
    ids = resolve_bundle(who, entries, bundle_patients(entries))
    assert ids  # results were given record ids, so references had targets
    return [e.resource for e in entries]


def _nested_bundle(who: Institution) -> dict[str, Any]:
    """Results that reference each other, one Reference nested in another's extension (a
    rewritten Reference's content is left as the walk of old left it)."""
    raw = fhir_samples.bundle("transaction", who.id, n_obs=3)
    first, second, third = raw["entry"][1:]
    a_url = first["fullUrl"]
    second["resource"]["hasMember"] = [
        {
            "reference": a_url,
            "extension": [
                {
                    "url": "https://fhir.mrhub.cn/StructureDefinition/test-nested",
                    "valueReference": {"reference": third["fullUrl"]},
                }
            ],
        }
    ]
    second["resource"]["derivedFrom"] = [{"reference": third["fullUrl"]}]
    third["resource"]["hasMember"] = [
        {
            "extension": [
                {
                    "url": "https://fhir.mrhub.cn/StructureDefinition/test-nested",
                    "valueReference": {"reference": a_url},
                }
            ],
            "reference": second["fullUrl"],
        }
    ]
    report = {
        "resourceType": "DiagnosticReport",
        "identifier": [{"system": "urn:oid:2.16.156.10011.1.7", "value": f"R-{uuid.uuid4()}"}],
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "24326-1"}]},
        "subject": {"reference": raw["entry"][0]["fullUrl"]},
        "issued": "2026-11-20T10:02:00+08:00",
        "performer": [fhir_samples.org_ref(who.id)],
        "result": [{"reference": e["fullUrl"]} for e in (first, second, third)],
    }
    raw["entry"].append(
        {
            "fullUrl": f"urn:uuid:{uuid.uuid4()}",
            "resource": report,
            "request": {"method": "POST", "url": "DiagnosticReport"},
        }
    )
    return raw


def test_references_found_by_the_checks_are_rewritten_as_a_fresh_walk_rewrites_them() -> None:
    who = _institution()
    raw, issues = parse_json(fhir_samples.dumps(_nested_bundle(who)))
    assert not issues
    kept = _resolved(raw, who, walk_again=False)
    assert kept == _resolved(raw, who, walk_again=True)
    second, third, report = kept[2], kept[3], kept[4]
    # the outer Reference is rewritten; the one nested in its extension is left as posted
    member = second["hasMember"][0]
    assert member["reference"].startswith("Observation/")
    nested = member["extension"][0]["valueReference"]["reference"]
    assert nested == raw["entry"][3]["fullUrl"]
    assert (
        third["hasMember"][0]["extension"][0]["valueReference"]["reference"]
        == (raw["entry"][1]["fullUrl"])
    )
    assert second["derivedFrom"][0]["reference"].startswith("Observation/")
    assert all(r["reference"].startswith("Observation/") for r in report["result"])


def test_the_bench_bundles_are_rewritten_alike() -> None:
    who = _institution()
    payloads = make_payloads(who.id, who.name, n_single=0, n_bundles=5)
    for payload in payloads.bundle:
        raw, issues = parse_json(payload.body)
        assert not issues
        assert _resolved(raw, who, walk_again=False) == _resolved(raw, who, walk_again=True)
