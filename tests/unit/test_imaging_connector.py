"""The PACS connector's pure parts: the ImagingStudy it builds from DICOM JSON, and the state
file that lets it resume where it stopped."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from fhir.resources.R4B.imagingstudy import ImagingStudy

from services.common.identifiers import ID_CARD_SYSTEM
from services.imaging_index import dicom
from services.imaging_index.connector import (
    ConnectorError,
    Gateway,
    Metrics,
    Options,
    State,
    load_state,
    retry_delays,
    save_state,
)

UID = "1.2.826.0.1.3680043.8.498.1"
SERIES = "1.2.826.0.1.3680043.8.498.2"


def attr(vr: str, *values: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": list(values)}


STUDY = {
    "0020000D": attr("UI", UID),
    "00100020": attr("LO", "110105198503171234"),
    "00080020": attr("DA", "20261120"),
    "00080030": attr("TM", "083015.25"),
    "00080050": attr("SH", "ACC1"),
    "00080061": attr("CS", "CT"),
    "00081030": attr("LO", "胸部CT平扫"),
    "00201206": attr("IS", 1),
    "00201208": attr("IS", 2),
}
SERIES_DS = {
    "0020000E": attr("UI", SERIES),
    "00080060": attr("CS", "CT"),
    "00200011": attr("IS", 1),
    "00180015": attr("CS", "CHEST"),
    "00201209": attr("IS", 2),
}
INSTANCES = [
    {
        "00080018": attr("UI", f"{SERIES}.{n}"),
        "00080016": attr("UI", "1.2.840.10008.5.1.4.1.1.2"),
        "00200013": attr("IS", n),
    }
    for n in (1, 2)
]


def test_a_dicom_study_becomes_a_valid_r4_imaging_study_for_the_gateway() -> None:
    doc = dicom.imaging_study(
        STUDY,
        [(SERIES_DS, INSTANCES)],
        patient_system=ID_CARD_SYSTEM,
        endpoint="http://pacs.example/dicom-web/",
    )
    ImagingStudy.model_validate(doc)
    assert doc["identifier"][0] == {"system": "urn:dicom:uid", "value": f"urn:oid:{UID}"}
    assert doc["subject"]["identifier"] == {"system": ID_CARD_SYSTEM, "value": "110105198503171234"}
    assert doc["started"] == "2026-11-20T08:30:15.25+08:00"
    assert doc["contained"][0]["address"] == "http://pacs.example/dicom-web"
    assert doc["endpoint"] == [{"reference": "#dicomweb"}]
    assert (doc["numberOfSeries"], doc["numberOfInstances"]) == (1, 2)
    [series] = doc["series"]
    assert series["bodySite"]["code"] == "CHEST"
    assert [i["uid"] for i in series["instance"]] == [f"{SERIES}.1", f"{SERIES}.2"]


def test_a_study_without_patient_id_is_not_posted() -> None:
    no_patient = {k: v for k, v in STUDY.items() if k != "00100020"}
    with pytest.raises(ValueError, match="PatientID"):
        dicom.imaging_study(no_patient, [], patient_system=ID_CARD_SYSTEM, endpoint="http://x")


@pytest.mark.parametrize(
    ("day", "time", "expected"),
    [
        ("20261120", "0830", "2026-11-20T08:30:00+08:00"),
        ("20261120", None, "2026-11-20"),
        ("2026112", "0830", None),
    ],
)
def test_dicom_dates_and_times_become_fhir_date_times(
    day: str, time: str | None, expected: str | None
) -> None:
    assert dicom.fhir_started(day, time, "+08:00") == expected


def test_the_state_file_resumes_where_the_connector_stopped(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    state = load_state(path, "http://orthanc:8042/", "X")
    assert state.last_seq == 0
    state.last_seq = 42
    save_state(path, state)
    assert load_state(path, "http://orthanc:8042", "X") == State("http://orthanc:8042", "X", 42)
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temporary left over


def test_a_state_file_of_another_server_or_institution_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    save_state(path, State("http://orthanc:8042", "X", 7))
    with pytest.raises(ConnectorError, match="another Orthanc"):
        load_state(path, "http://other:8042", "X")
    with pytest.raises(ConnectorError):
        load_state(path, "http://orthanc:8042", "Y")
    path.write_text(json.dumps({"orthanc": "x"}))
    with pytest.raises(ConnectorError, match="not a connector state file"):
        load_state(path, "x", "X")


def test_retries_back_off_up_to_a_ceiling() -> None:
    assert list(retry_delays(8)) == [0.5, 1, 2, 4, 8, 16, 30, 30]


def _gateway(
    tmp_path: Path, answers: list[int], **opts: Any
) -> tuple[Gateway, list[float], list[int]]:
    """A connector's gateway client whose posts get ``answers`` in turn (the last repeats);
    returns it, the waits it slept and the statuses it was given."""
    slept: list[float] = []
    given: list[int] = []

    def answer(request: httpx.Request) -> httpx.Response:
        status = answers[min(len(given), len(answers) - 1)]
        given.append(status)
        return httpx.Response(status, headers={"Retry-After": "0"})

    options = Options("http://orthanc", "X", "http://gateway", "t", tmp_path / "s.json", **opts)
    gw = Gateway(options, Metrics(), slept.append)
    gw.http = httpx.Client(base_url="http://gateway", transport=httpx.MockTransport(answer))
    return gw, slept, given


def test_a_post_that_keeps_failing_waits_between_attempts_and_never_after_the_last(
    tmp_path: Path,
) -> None:
    gw, slept, given = _gateway(tmp_path, [503], max_attempts=4)
    assert gw.post({"resourceType": "ImagingStudy"}) == 503
    assert len(given) == 4
    assert slept == [0.5, 1, 2]  # three waits between four posts, none after the last
    assert gw.metrics.registry.get_sample_value("mrhub_imaging_connector_retries_total") == 3


def test_a_post_that_succeeds_on_a_retry_stops_there(tmp_path: Path) -> None:
    gw, slept, given = _gateway(tmp_path, [503, 502, 201], max_attempts=8)
    assert gw.post({"resourceType": "ImagingStudy"}) == 201
    assert (given, slept) == ([503, 502, 201], [0.5, 1])


def test_one_attempt_never_sleeps(tmp_path: Path) -> None:
    gw, slept, given = _gateway(tmp_path, [429], max_attempts=1)
    assert gw.post({"resourceType": "ImagingStudy"}) == 429
    assert (given, slept) == ([429], [])
