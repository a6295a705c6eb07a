"""The gateway's CapabilityStatement says exactly what recognition's FHIR search takes: a
parameter listed but refused, or taken but not listed, is a statement that lies."""

from __future__ import annotations

from services.ingest.capability import capability_statement
from services.recognition.fhir_search import _COMMON, PARAMETERS

#: Search modifiers and aliases the statement names once, by their base parameter.
_ALIASES = {"patient:identifier", "subject"}


def test_each_read_type_lists_the_parameters_recognition_takes() -> None:
    statement = capability_statement(None, max_body_bytes=1 << 20)
    [rest] = statement["rest"]
    listed = {
        r["type"]: {p["name"] for p in r.get("searchParam", [])}
        for r in rest["resource"]
        if {"code": "search-type"} in r["interaction"]
    }
    assert set(listed) == set(PARAMETERS)
    for rtype, taken in PARAMETERS.items():
        assert listed[rtype] == (taken | _COMMON) - _ALIASES, rtype


def test_the_statement_offers_include_only_where_it_works() -> None:
    statement = capability_statement(None, max_body_bytes=1 << 20)
    [rest] = statement["rest"]
    includes = {r["type"]: r.get("searchInclude", []) for r in rest["resource"]}
    assert includes["DiagnosticReport"] == ["DiagnosticReport:result"]
    assert all(not v for k, v in includes.items() if k != "DiagnosticReport")
