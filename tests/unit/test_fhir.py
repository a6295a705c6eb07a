"""services.common.fhir: issues, OperationOutcome, institution identifiers."""

from __future__ import annotations

import json

import pytest
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.operationoutcome import OperationOutcome
from pydantic import ValidationError

from services.common.fhir import (
    DEFAULT_MAX_ISSUES,
    FHIR_JSON,
    INSTITUTION_SYSTEM,
    REASON_SYSTEM,
    REASONS,
    URI_SYSTEM,
    Issue,
    cap_issues,
    fhirpath,
    has_errors,
    institution_claim,
    institution_identifiers,
    operation_outcome,
    redact,
    validation_issues,
)
from services.common.institutions import Institution

OWN = Institution(
    id="12330000470116614F",
    name="浙江大学医学院附属第一医院",
    level=3,
    grade="甲",
    ownership="public",
    region_code="330102",
    oid="urn:oid:2.16.156.10011.1.99.330102",
)
NO_OID = OWN.model_copy(update={"oid": None})


def test_constants() -> None:
    assert FHIR_JSON == "application/fhir+json"
    assert INSTITUTION_SYSTEM == "https://fhir.mrhub.cn/sid/institution"
    assert {"invalid-fhir", "unsupported-type", "id-card-checksum", "id-card-mismatch"} <= set(
        REASONS
    )
    assert {"missing-field", "unresolved-reference", "no-patient", "foreign-institution"} <= set(
        REASONS
    )
    assert "malformed-json" in REASONS


@pytest.mark.parametrize(
    ("field", "value"),
    [("severity", "bad"), ("code", "nope"), ("reason", "not-a-known-reason")],
)
def test_issue_rejects_unknown_vocabulary(field: str, value: str) -> None:
    kwargs = {"severity": "error", "code": "value", "diagnostics": "x", "reason": "invalid-fhir"}
    kwargs[field] = value
    with pytest.raises(ValueError, match="unknown issue"):
        Issue(**kwargs)  # type: ignore[arg-type]


def test_issue_masks_long_digit_runs() -> None:
    issue = Issue(
        "error",
        "value",
        "bad 33010619850317123X and 13800138000 at line 12",
        ("Patient.identifier[0]", "Patient.x110101199003077777"),
        "id-card-checksum",
    )
    assert "330106" not in issue.diagnostics
    assert "13800138000" not in issue.diagnostics
    assert "line 12" in issue.diagnostics
    assert issue.expression == ("Patient.identifier[0]", "Patient.x***")
    assert redact("2.16.156.10011.1.3 2024-03-01") == "2.16.156.10011.1.3 2024-03-01"


def test_issue_is_error() -> None:
    assert Issue("fatal", "exception", "x").is_error
    assert Issue("error", "value", "x").is_error
    assert not Issue("warning", "required", "x", reason="missing-request").is_error
    assert not has_errors([Issue("information", "informational", "x", reason="truncated")])


def test_operation_outcome_is_valid_r4() -> None:
    issues = [
        Issue(
            "error",
            "required",
            "Bundle.entry[2].resource.subject: subject is required",
            ("Bundle.entry[2].resource.subject",),
            "missing-field",
        ),
        Issue("warning", "required", "no request", (), "missing-request"),
        Issue(
            "error",
            "forbidden",
            "another institution",
            ("Observation.performer[0]",),
            "foreign-institution",
        ),
    ]
    out = operation_outcome(issues)
    oo = OperationOutcome.model_validate(out)
    assert [i.severity for i in oo.issue] == ["error", "warning", "error"]
    assert oo.issue[0].expression == ["Bundle.entry[2].resource.subject"]
    assert oo.issue[1].expression is None
    assert out["issue"][2]["details"]["coding"] == [
        {"system": REASON_SYSTEM, "code": "foreign-institution"}
    ]
    json.dumps(out)  # plain JSON


def test_operation_outcome_without_issues_is_valid() -> None:
    out = operation_outcome([])
    oo = OperationOutcome.model_validate(out)
    assert oo.issue[0].severity == "information"


def test_fhirpath() -> None:
    assert fhirpath("Observation", ("code", "coding", 0, "system")) == (
        "Observation.code.coding[0].system"
    )
    assert fhirpath("Bundle.entry[2].resource", ("subject",)) == (
        "Bundle.entry[2].resource.subject"
    )
    assert fhirpath("X", ("function-wrap[f()]", "a", "list[str]", 1)) == "X.a[1]"
    assert fhirpath("X", ()) == "X"


def test_validation_issues_paths_and_no_echo() -> None:
    bad = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": 123, "code": "WBC"}]},
        "effectiveDateTime": "张三 13800138000",
    }
    with pytest.raises(ValidationError) as info:
        Observation.model_validate(bad)
    issues = validation_issues(info.value, "Observation")
    paths = {e for i in issues for e in i.expression}
    assert "Observation.code.coding[0].system" in paths
    assert "Observation.effectiveDateTime" in paths
    assert all(i.code == "structure" and i.reason == "invalid-fhir" for i in issues)
    for i in issues:
        assert "张三" not in i.diagnostics
        assert "13800138000" not in i.diagnostics


def test_validation_issues_truncates() -> None:
    bad = {"resourceType": "Observation", **{f"x{n}": n for n in range(30)}}
    with pytest.raises(ValidationError) as info:
        Observation.model_validate(bad)
    issues = validation_issues(info.value, "Observation", limit=5)
    assert len(issues) == 6
    assert issues[-1].reason == "truncated"
    assert not issues[-1].is_error


def test_institution_claim_by_id() -> None:
    own = {"system": INSTITUTION_SYSTEM, "value": OWN.id}
    other = {"system": INSTITUTION_SYSTEM, "value": "12110000400000486A"}
    assert institution_claim([own], OWN) == "own"
    assert institution_claim(own, OWN) == "own"
    assert institution_claim([{"system": INSTITUTION_SYSTEM, "value": OWN.id.lower()}], OWN) == (
        "own"
    )
    assert institution_claim([other], OWN) == "foreign"
    assert institution_claim([own, other], OWN) == "foreign"


def test_institution_claim_by_oid() -> None:
    assert institution_claim([{"system": URI_SYSTEM, "value": OWN.oid}], OWN) == "own"
    sub = {"system": URI_SYSTEM, "value": f"{OWN.oid}.7"}
    assert institution_claim([sub], OWN) == "own"  # a department under its own OID
    other = {"system": URI_SYSTEM, "value": "urn:oid:2.16.156.10011.1.99.110101"}
    assert institution_claim([other], OWN) == "foreign"
    assert institution_claim([other], NO_OID) == "foreign"
    bare = OWN.model_copy(update={"oid": "2.16.156.10011.1.99.330102"})
    assert institution_claim([{"system": URI_SYSTEM, "value": OWN.oid}], bare) == "own"
    # a sibling whose OID merely starts with the same digits is another institution
    sibling = {"system": URI_SYSTEM, "value": f"{OWN.oid}1"}
    assert institution_claim([sibling], OWN) == "foreign"


@pytest.mark.parametrize(
    "identifiers",
    [
        None,
        "x",
        [],
        [None, 3, "x"],
        [{"system": "urn:oid:2.16.156.10011.1.11", "value": "MZ001"}],
        [{"system": URI_SYSTEM, "value": "https://hospital.example.cn/"}],
        [{"system": INSTITUTION_SYSTEM, "value": ""}],
        [{"system": INSTITUTION_SYSTEM}],
        [{"system": INSTITUTION_SYSTEM, "value": 5}],
    ],
)
def test_institution_claim_none(identifiers: object) -> None:
    assert institution_claim(identifiers, OWN) == "none"


def test_institution_identifiers_round_trip() -> None:
    idents = institution_identifiers(OWN)
    assert idents[0] == {"system": INSTITUTION_SYSTEM, "value": OWN.id}
    assert idents[1] == {"system": URI_SYSTEM, "value": OWN.oid}
    assert institution_claim(idents, OWN) == "own"
    assert institution_identifiers(NO_OID) == idents[:1]


# ------------------------------------------------------------ capped outcomes (issue 14)


def _errors(n: int) -> list[Issue]:
    return [
        Issue("error", "invalid", f"Bundle.entry[{i}]: bad", (f"Bundle.entry[{i}]",))
        for i in range(n)
    ]


def test_cap_issues_keeps_short_lists() -> None:
    issues = _errors(3)
    assert cap_issues(issues, 3) == issues


def test_cap_issues_lists_first_n_and_counts_the_rest() -> None:
    capped = cap_issues(_errors(50_000), 100)
    assert len(capped) == 101
    assert [i.expression for i in capped[:100]] == [(f"Bundle.entry[{i}]",) for i in range(100)]
    note = capped[-1]
    assert (note.severity, note.reason) == ("information", "truncated")
    assert "49900 more issues" in note.diagnostics


def test_cap_issues_lists_errors_before_warnings() -> None:
    warning = Issue(
        "warning", "required", "a warning", ("Bundle.entry[0].request",), "missing-request"
    )
    capped = cap_issues([warning, *_errors(5)], 2)
    assert [i.severity for i in capped] == ["error", "error", "information"]


def test_operation_outcome_is_capped_by_default() -> None:
    out = operation_outcome(_errors(DEFAULT_MAX_ISSUES + 5))
    assert len(out["issue"]) == DEFAULT_MAX_ISSUES + 1
    assert out["issue"][-1]["details"]["coding"][0]["code"] == "truncated"
    OperationOutcome.model_validate(out)
    assert len(operation_outcome(_errors(150), limit=None)["issue"]) == 150
    assert len(operation_outcome(_errors(150), limit=10)["issue"]) == 11
