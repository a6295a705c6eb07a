"""The gateway passes coded elements the R4B model already validated (a result's code,
category, reference range, performer …) to the model as the objects they became, instead of
validating them again. The verdict and every issue must be exactly what validating the
resource as posted gives, whatever was validated before."""

from __future__ import annotations

import copy
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.ingest import validation
from services.ingest.validation import check_bundle, check_resource
from tests.unit.test_validation import FIXTURES, OWN, imaging_batch, lab_transaction, mutate


def _fresh() -> None:
    validation._MEMO.clear()


def _warm() -> None:
    """The memo as a gateway has it after the usual traffic."""
    for make in FIXTURES:
        check_resource(make(), OWN)
    check_bundle(lab_transaction(), OWN)
    check_bundle(imaging_batch(), OWN)


def test_a_repeated_result_is_validated_with_the_memo_and_gives_the_same_model() -> None:
    _fresh()
    _warm()
    assert validation._MEMO  # the fixtures' coded elements were kept
    for make in FIXTURES:
        raw = make()
        model = get_fhir_model_class(raw["resourceType"])
        with_memo = validation._model_validate(model, raw)
        assert with_memo.model_dump() == model.model_validate(raw).model_dump()


def test_an_element_valid_before_does_not_hide_an_error_elsewhere() -> None:
    _fresh()
    _warm()
    raw = FIXTURES[1]()  # an Observation whose code and category are in the memo
    raw["status"] = "not-a-status"
    raw["valueQuantity"] = {"value": "abc"}
    warm = check_resource(copy.deepcopy(raw), OWN).issues
    _fresh()
    cold = check_resource(copy.deepcopy(raw), OWN).issues
    assert warm == cold
    assert any(i.reason == "invalid-fhir" for i in warm)


@settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(data=st.data(), which=st.integers(0, len(FIXTURES) - 1), times=st.integers(1, 4))
def test_mutated_resources_have_the_same_issues_with_and_without_the_memo(
    data: st.DataObject, which: int, times: int
) -> None:
    raw: Any = FIXTURES[which]()
    for _ in range(times):
        raw = mutate(data, raw)
    _fresh()
    cold = check_resource(copy.deepcopy(raw), OWN).issues
    _warm()
    check_resource(copy.deepcopy(raw), OWN)  # whatever of it is valid is in the memo now
    warm = check_resource(copy.deepcopy(raw), OWN).issues
    assert warm == cold


@settings(
    max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(data=st.data(), batch=st.booleans(), times=st.integers(1, 4))
def test_mutated_bundles_have_the_same_issues_with_and_without_the_memo(
    data: st.DataObject, batch: bool, times: int
) -> None:
    raw: Any = imaging_batch() if batch else lab_transaction()
    for _ in range(times):
        raw = mutate(data, raw)
    _fresh()
    cold = check_bundle(copy.deepcopy(raw), OWN).all_issues
    _warm()
    check_bundle(copy.deepcopy(raw), OWN)
    warm = check_bundle(copy.deepcopy(raw), OWN).all_issues
    assert warm == cold


def test_the_memo_stays_bounded() -> None:
    _fresh()
    raw = FIXTURES[1]()
    for i in range(validation._MEMO_KEPT + 10):
        raw["code"] = {"coding": [{"system": "http://loinc.org", "code": f"{i}-0"}]}
        check_resource(copy.deepcopy(raw), OWN)
        assert len(validation._MEMO) <= validation._MEMO_KEPT
