"""The imaging index through the running hub, against real PACS servers.

Two real Orthanc servers with their DICOMweb plugin play a hospital's PACS and a regional
imaging cloud. DICOM files made with pydicom are stored in them; ``mrhub connect orthanc``
follows their change feeds and posts ImagingStudy resources to a real gateway; the patient
index and the imaging index run as real processes on the real broker. Viewers are played by
``dicomweb-client`` (QIDO-RS, then WADO-RS on the RetrieveURL, straight from Orthanc) and
``fhirclient`` (FHIR search).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import jsonschema
import pytest
from dicomweb_client.api import DICOMwebClient
from fhir.resources.R4B.bundle import Bundle
from fhirclient import server as fhir_server
from fhirclient.models.imagingstudy import ImagingStudy as ClientImagingStudy

from services.common.broker import free_port
from services.common.envelope import Envelope
from services.common.identifiers import ID_CARD_SYSTEM, OUTPATIENT_NO_SYSTEM
from services.common.institutions import Registry, hash_token, issue_token
from services.common.kafka_admin import create_topics
from services.common.topics import ALL_TOPICS
from tests.conftest import REPO
from tests.dicom_samples import Study, instances
from tests.fhir_samples import gb11643
from tests.support import consume_all, run_module, stop_process, wait_ready

ORTHANC = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
PARTITIONS = 3
STEWARD = "mrs_imaging-test-steward"
#: 太原市杏花岭区中心医院: a hospital with its own PACS; municipal (Taiyuan) HR scope
HOSPITAL = "12140107405412652L"
#: 太原市晋阳医院: plays the regional imaging cloud that holds copies; provincial scope
CLOUD = "12140100405128360L"
#: 山西省汾河医院 (Taiyuan): may read both
READER = "12140000405001730E"
#: 大同市平城医院 (Datong, another prefecture): outside the hospital's municipal scope
FAR = "121402004059021681"

pytestmark = pytest.mark.skipif(
    not (ORTHANC.exists() and DICOMWEB_PLUGIN.exists()),
    reason="needs Debian's orthanc and orthanc-dicomweb (make system-deps)",
)

T = TypeVar("T")


@dataclass
class Pacs:
    url: str
    proc: subprocess.Popen[bytes]

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def store(self, study: Study) -> list[str]:
        """Store every instance of ``study``; their SOP Instance UIDs."""
        sops = []
        for _series, sop, data in instances(study):
            resp = httpx.post(f"{self.url}/instances", content=data, timeout=30)
            assert resp.status_code == 200, resp.text
            sops.append(sop)
        return sops

    def wait_stable(self, study_uid: str) -> None:
        """Until Orthanc has announced the study as stable on its change feed."""

        def stable() -> bool:
            found = httpx.post(f"{self.url}/tools/lookup", content=study_uid, timeout=10).json()
            ids = [f["ID"] for f in found if f["Type"] == "Study"]
            return bool(ids) and httpx.get(f"{self.url}/studies/{ids[0]}").json()["IsStable"]

        wait_for(stable, lambda ok: ok, what="the study to become stable in Orthanc")


def _start_pacs(tmp: Path, name: str) -> Pacs:
    http, dicom = free_port(), free_port()
    storage = tmp / name
    storage.mkdir()
    config = {
        "Name": name,
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "HttpPort": http,
        "DicomPort": dicom,
        "DicomServerEnabled": False,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DefaultEncoding": "Utf8",
        "StableAge": 1,
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    cfg = tmp / f"{name}.json"
    cfg.write_text(json.dumps(config))
    log = open(tmp / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [str(ORTHANC), str(cfg)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    pacs = Pacs(f"http://127.0.0.1:{http}", proc)
    wait_ready(f"{pacs.url}/system", proc, tmp / f"{name}.log")
    return pacs


@dataclass
class Hub:
    bootstrap: str
    gateway: str
    imaging: str
    patient_index: str
    tokens: dict[str, str]
    tmp: Path
    hospital: Pacs
    cloud: Pacs
    env: dict[str, str]

    def connect(self, pacs: Pacs, institution: str, *, system: str = ID_CARD_SYSTEM) -> Any:
        """Run ``mrhub connect orthanc --once``; its summary (JSON on stdout)."""
        state = self.tmp / f"connect-{institution}.json"
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "services.cli",
                "connect",
                "orthanc",
                "--url",
                pacs.url,
                "--institution",
                institution,
                "--gateway",
                self.gateway,
                "--state",
                str(state),
                "--patient-id-system",
                system,
                "--once",
            ],
            cwd=REPO,
            env={
                **os.environ,
                "MRHUB_IMAGING__CONNECTOR_TOKEN": self.tokens[institution],
                "MRHUB_STATE_DIR": str(self.tmp / "state"),
                "MRHUB_LOG_LEVEL": "WARNING",
            },
            capture_output=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr.decode()[-3000:]
        return json.loads(done.stdout.decode().strip().splitlines()[-1])

    def qido(self, reader: str, **filters: str) -> list[dict[str, Any]]:
        client = DICOMwebClient(
            url=f"{self.imaging}/dicom-web",
            headers={"Authorization": f"Bearer {self.tokens[reader]}"},
        )
        return client.search_for_studies(search_filters=filters)

    def fhir(self, reader: str, **params: str) -> dict[str, Any]:
        resp = httpx.get(
            f"{self.imaging}/fhir/ImagingStudy",
            params=params,
            headers={"Authorization": f"Bearer {self.tokens[reader]}"},
            timeout=30,
        )
        assert resp.status_code == 200, resp.text
        assert resp.headers["content-type"].startswith("application/fhir+json")
        doc: dict[str, Any] = resp.json()
        Bundle.model_validate(doc)  # valid FHIR R4
        return doc

    def master_of(self, study_uid: str) -> str:
        """The master patient id the patient index gave the study."""

        def masters() -> list[str]:
            return [
                e.payload["master_patient_id"]
                for e in (
                    Envelope.from_bytes(r.value)
                    for r in consume_all(self.bootstrap, "mrhub.results.result-indexed.v1")
                )
                if (e.payload.get("imaging") or {}).get("study_uid") == study_uid
            ]

        return str(wait_for(masters, bool, what="the study on result-indexed")[-1])


def wait_for(
    probe: Callable[[], T], done: Callable[[T], bool], *, what: str, timeout_s: float = 90
) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        got = probe()
        if done(got):
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {got!r}"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def hub(bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    tmp = tmp_path_factory.mktemp("imaging")
    registry = tmp / "institutions.yaml"
    shutil.copy(REPO / "config" / "institutions.yaml", registry)
    assert {HOSPITAL, CLOUD, READER, FAR} <= set(Registry.load(registry).ids)
    tokens = {i: issue_token(registry, i) for i in (HOSPITAL, CLOUD, READER, FAR)}
    create_topics(bootstrap, ALL_TOPICS, default_partitions=PARTITIONS, replication_factor=1)
    ports = {name: free_port() for name in ("ingest", "patient_index", "imaging")}
    env = {
        "MRHUB_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "MRHUB_IDENTITY__HMAC_KEY": "test-hmac-key",
        "MRHUB_INGEST__PORT": str(ports["ingest"]),
        "MRHUB_INSTITUTIONS_PATH": str(registry),
        "MRHUB_PATIENT_INDEX__PORT": str(ports["patient_index"]),
        "MRHUB_PATIENT_INDEX__URL": f"http://127.0.0.1:{ports['patient_index']}",
        "MRHUB_PATIENT_INDEX__STEWARD_TOKEN_HASHES": json.dumps([hash_token(STEWARD)]),
        "MRHUB_IMAGING__PORT": str(ports["imaging"]),
        "MRHUB_IMAGING__CHECK_ENDPOINTS": "true",
        "MRHUB_IMAGING__CHECK_TIMEOUT_S": "2",
        "MRHUB_TOPIC_PARTITIONS": str(PARTITIONS),
        "MRHUB_STATE_DIR": str(tmp / "state"),
        "MRHUB_LOG_LEVEL": "INFO",
    }
    hospital, cloud = _start_pacs(tmp, "hospital-pacs"), _start_pacs(tmp, "imaging-cloud")
    procs = {
        name: run_module(["-m", "services.cli", "serve", name], env, tmp / f"{name}.log")
        for name in ports
    }
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    try:
        for name in ports:
            wait_ready(f"{urls[name]}/readyz", procs[name], tmp / f"{name}.log")
        yield Hub(
            bootstrap,
            urls["ingest"],
            urls["imaging"],
            urls["patient_index"],
            tokens,
            tmp,
            hospital,
            cloud,
            env,
        )
    finally:
        for proc in procs.values():
            stop_process(proc)
        for pacs in (hospital, cloud):
            stop_process(pacs.proc)


_SEQ = iter(range(random.randint(100, 500) | 1, 999, 2))


def _card() -> str:
    """A 身份证 no other test module uses (大同 平城区, born 1980-01-01): the broker and its
    topics live for the whole session, and other modules link and merge their patients."""
    return gb11643(f"14020219800101{next(_SEQ):03d}")


def _uid_of(ds: dict[str, Any]) -> str:
    return str(ds["0020000D"]["Value"][0])


def _metric(hub: Hub, name: str, **labels: str) -> float:
    text = httpx.get(f"{hub.imaging}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.split()[-1])
    return total


# ----------------------------------------------------------------------------- scenarios


def test_a_pacs_study_is_found_over_qido_and_its_images_retrieved_from_the_pacs(
    hub: Hub,
) -> None:
    card = _card()
    study = Study(patient_id=card, modality="CT", description="胸部CT平扫")
    sops = hub.hospital.store(study)
    hub.hospital.wait_stable(study.study_uid)
    summary = hub.connect(hub.hospital, HOSPITAL)
    assert summary["posted"] >= 1 and summary["refused"] == 0

    # a viewer at another Taiyuan hospital asks by the bare 身份证
    found = wait_for(lambda: hub.qido(READER, PatientID=card), bool, what="the study over QIDO")
    [ds] = found
    assert _uid_of(ds) == study.study_uid
    assert ds["00080061"]["Value"] == ["CT"]
    assert ds["00201208"]["Value"] == [len(sops)]
    retrieve_url = ds["00081190"]["Value"][0]
    assert retrieve_url == f"{hub.hospital.dicomweb}/studies/{study.study_uid}"
    # the RetrieveURL really serves the images: WADO-RS straight from the PACS
    pacs = DICOMwebClient(url=retrieve_url.rsplit("/studies/", 1)[0])
    images = pacs.retrieve_study(study.study_uid)
    assert sorted(i.SOPInstanceUID for i in images) == sorted(sops)
    # the filters of QIDO-RS narrow the search
    assert hub.qido(READER, PatientID=card, ModalitiesInStudy="MR") == []
    assert len(hub.qido(READER, PatientID=card, StudyDate="20261101-20261130")) == 1
    assert hub.qido(READER, PatientID=card, StudyDate="20250101-20251231") == []

    # a standard FHIR client finds the same study by FHIR search
    srv = fhir_server.FHIRServer(None, base_uri=f"{hub.imaging}/fhir/")
    srv.session.headers["Authorization"] = f"Bearer {hub.tokens[READER]}"
    search = ClientImagingStudy.where(struct={"patient": f"{ID_CARD_SYSTEM}|{card}"})
    [resource] = search.perform_resources(srv)
    assert resource.identifier[0].value == f"urn:oid:{study.study_uid}"
    assert resource.contained[0].address == hub.hospital.dicomweb
    assert resource.modality[0].code == "CT"

    # the endpoint check asked the PACS over QIDO-RS and found the study there
    def check() -> str:
        doc = hub.fhir(READER, patient=card)
        return str(doc["entry"][0]["resource"]["contained"][0]["extension"][0]["valueCode"])

    assert wait_for(check, lambda s: s != "unchecked", what="the endpoint check") == "available"
    assert _metric(hub, "mrhub_imaging_studies_indexed_total", modality="CT", source=HOSPITAL) >= 1


def test_the_connector_resumes_after_the_last_change_it_posted(hub: Hub) -> None:
    card = _card()
    first = Study(patient_id=card, accession="ACC-R1")
    hub.hospital.store(first)
    hub.hospital.wait_stable(first.study_uid)
    hub.connect(hub.hospital, HOSPITAL)
    again = hub.connect(hub.hospital, HOSPITAL)  # nothing new on the feed
    assert again["posted"] == 0
    second = Study(patient_id=card, accession="ACC-R2", modality="MR", body_part="HEAD")
    hub.hospital.store(second)
    hub.hospital.wait_stable(second.study_uid)
    third_run = hub.connect(hub.hospital, HOSPITAL)
    assert third_run["posted"] == 1
    found = wait_for(lambda: hub.qido(READER, PatientID=card), lambda f: len(f) == 2, what="both")
    assert {_uid_of(ds) for ds in found} == {first.study_uid, second.study_uid}
    # FHIR paging: one study a page, the next link names the master, not the card
    page = hub.fhir(READER, patient=card, _count="1")
    assert page["total"] == 2 and len(page["entry"]) == 1
    [next_url] = [link["url"] for link in page["link"] if link["relation"] == "next"]
    assert card not in next_url
    resp = httpx.get(
        next_url, headers={"Authorization": f"Bearer {hub.tokens[READER]}"}, timeout=30
    )
    assert resp.status_code == 200, resp.text
    [other] = resp.json()["entry"]
    assert other["fullUrl"] != page["entry"][0]["fullUrl"]
    assert hub.fhir(READER, patient=card, modality="MR")["total"] == 1


def test_the_same_study_from_the_hospital_and_the_imaging_cloud_is_one_entry_with_two_endpoints(
    hub: Hub,
) -> None:
    card = _card()
    study = Study(patient_id=card, accession="ACC-2SRC")
    before = _metric(hub, "mrhub_imaging_duplicates_merged_total")
    for pacs, institution in ((hub.hospital, HOSPITAL), (hub.cloud, CLOUD)):
        pacs.store(study)
        pacs.wait_stable(study.study_uid)
        hub.connect(pacs, institution)

    def addresses() -> list[str]:
        doc = hub.fhir(READER, patient=f"{ID_CARD_SYSTEM}|{card}")
        assert doc["total"] <= 1
        entries = doc["entry"]
        return [c["address"] for c in entries[0]["resource"]["contained"]] if entries else []

    got = wait_for(addresses, lambda a: len(a) == 2, what="two endpoints")
    assert sorted(got) == sorted([hub.hospital.dicomweb, hub.cloud.dicomweb])
    [ds] = hub.qido(READER, PatientID=card)
    assert _uid_of(ds) == study.study_uid
    assert _metric(hub, "mrhub_imaging_duplicates_merged_total") >= before + 1
    # either copy serves the images
    for base in got:
        assert len(DICOMwebClient(url=base).retrieve_study(study.study_uid)) == 4


def test_studies_under_a_local_number_and_a_card_join_one_master_once_a_steward_links_them(
    hub: Hub,
) -> None:
    card = _card()
    local = f"MZ-{card[-7:]}"
    at_hospital = Study(patient_id=local, accession="ACC-LOCAL")
    at_cloud = Study(patient_id=card, accession="ACC-CARD", modality="DX", body_part="CHEST")
    hub.hospital.store(at_hospital)
    hub.cloud.store(at_cloud)
    hub.hospital.wait_stable(at_hospital.study_uid)
    hub.cloud.wait_stable(at_cloud.study_uid)
    hub.connect(hub.hospital, HOSPITAL, system=OUTPATIENT_NO_SYSTEM)
    hub.connect(hub.cloud, CLOUD, system=ID_CARD_SYSTEM)
    by_card = hub.master_of(at_cloud.study_uid)
    by_local = hub.master_of(at_hospital.study_uid)
    assert by_card != by_local
    found = wait_for(lambda: hub.qido(READER, PatientID=card), bool, what="the card's study")
    assert [_uid_of(ds) for ds in found] == [at_cloud.study_uid]
    # the hospital finds its own study by its own number
    mine = wait_for(
        lambda: hub.qido(HOSPITAL, PatientID=local, IssuerOfPatientID=OUTPATIENT_NO_SYSTEM),
        bool,
        what="the local number's study",
    )
    assert [_uid_of(ds) for ds in mine] == [at_hospital.study_uid]

    resp = httpx.post(
        f"{hub.patient_index}/patients/$link",
        json={
            "identifier": {"system": OUTPATIENT_NO_SYSTEM, "value": local},
            "institution": HOSPITAL,
            "master_patient_id": by_card,
            "reason": "same woman: checked her card at the desk",
        },
        headers={"Authorization": f"Bearer {STEWARD}"},
        timeout=30,
    )
    assert resp.status_code == 202, resp.text
    both = wait_for(
        lambda: {_uid_of(ds) for ds in hub.qido(READER, PatientID=card)},
        lambda uids: len(uids) == 2,
        what="both studies under the card's master",
    )
    assert both == {at_hospital.study_uid, at_cloud.study_uid}
    # and by the master id itself, over FHIR: nothing left under the old master
    doc = hub.fhir(READER, patient=by_card)
    assert doc["total"] == 2
    assert hub.fhir(READER, patient=by_local)["total"] == 0
    moved = [
        Envelope.from_bytes(r.value).payload
        for r in consume_all(hub.bootstrap, "mrhub.imaging.study-indexed.v1")
    ]
    schema = json.loads((REPO / "docs/schemas/study-indexed.v1.json").read_text("utf-8"))
    for payload in moved:
        jsonschema.validate(json.loads(json.dumps(payload, default=str)), schema)
    assert any(
        p["study_uid"] == at_hospital.study_uid
        and p["master_patient_id"] == by_card
        and p.get("previous_master_patient_id") == by_local
        for p in moved
    )


def test_an_institution_outside_the_scope_gets_no_studies_and_every_read_is_audited(
    hub: Hub,
) -> None:
    card = _card()
    study = Study(patient_id=card, accession="ACC-SCOPE")
    hub.hospital.store(study)
    hub.hospital.wait_stable(study.study_uid)
    hub.connect(hub.hospital, HOSPITAL)
    master = hub.master_of(study.study_uid)
    wait_for(lambda: hub.qido(READER, PatientID=card), bool, what="the study for an allowed reader")

    # 大同 is another prefecture: the hospital's municipal qualifications do not reach it
    assert hub.qido(FAR, PatientID=card) == []
    far = hub.fhir(FAR, patient=f"{ID_CARD_SYSTEM}|{card}")
    assert far["total"] == 0 and not far.get("entry")

    def audits() -> list[tuple[bytes, dict[str, Any]]]:
        return [
            (r.key, Envelope.from_bytes(r.value).payload)
            for r in consume_all(hub.bootstrap, "mrhub.audit.access-recorded.v1")
            if Envelope.from_bytes(r.value).payload.get("master_patient_id") == master
        ]

    records = wait_for(
        audits,
        lambda rs: sum(1 for _, p in rs if p["reader"] == FAR) >= 2,
        what="the audit records of the far reader",
    )
    far_reads = [(k, p) for k, p in records if p["reader"] == FAR]
    assert {p["route"] for _, p in far_reads} == {
        "GET /dicom-web/studies",
        "GET /fhir/ImagingStudy",
    }
    for key, payload in far_reads:
        assert key == FAR.encode()
        assert payload["items"] == 0 and payload["shown_institutions"] == []
        assert payload["outcome"] == "out-of-scope"
        assert payload["purpose"] == "imaging-search"
    allowed = [p for _, p in records if p["reader"] == READER]
    assert allowed and allowed[-1]["shown_institutions"] == [HOSPITAL]
    assert allowed[-1]["cross_institution"] is True
    # the identifier asked with is never in the audit record
    assert all(card not in json.dumps(p, ensure_ascii=False) for _, p in records)


def test_reads_without_a_credential_or_with_bad_parameters_are_refused_as_fhir(hub: Hub) -> None:
    for path in ("/fhir/ImagingStudy?patient=x", "/dicom-web/studies?PatientID=x"):
        resp = httpx.get(f"{hub.imaging}{path}", timeout=10)
        assert resp.status_code == 401
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        assert resp.json()["resourceType"] == "OperationOutcome"
    auth = {"Authorization": f"Bearer {hub.tokens[READER]}"}
    resp = httpx.get(f"{hub.imaging}/fhir/ImagingStudy", headers=auth, timeout=10)
    assert resp.status_code == 400
    assert resp.json()["issue"][0]["expression"] == ["patient"]
    resp = httpx.get(
        f"{hub.imaging}/dicom-web/studies",
        params={"PatientID": "MP" + "0" * 24, "StudyDate": "yesterday"},
        headers=auth,
        timeout=10,
    )
    assert resp.status_code == 400
    bad_card = _card()
    bad_card = bad_card[:-1] + ("0" if bad_card[-1] != "0" else "1")
    resp = httpx.get(
        f"{hub.imaging}/fhir/ImagingStudy",
        params={"patient": bad_card},
        headers=auth,
        timeout=10,
    )
    assert resp.status_code == 422
    assert bad_card not in resp.text
    # a patient nobody knows: an empty searchset, not an error
    unknown = hub.fhir(READER, patient=_card())
    assert unknown["total"] == 0


# last: a second worker takes half of the partitions, and nothing after it should depend on
# how quickly the group settles
def test_a_second_worker_answers_for_any_patient_by_asking_the_owner(hub: Hub) -> None:
    cards = [_card() for _ in range(4)]
    studies = [Study(patient_id=card, accession=f"ACC-W{n}") for n, card in enumerate(cards)]
    port = free_port()
    env = {**hub.env, "MRHUB_IMAGING__PORT": str(port), "MRHUB_STATE_DIR": str(hub.tmp / "s2")}
    log = hub.tmp / "imaging-2.log"
    second = run_module(["-m", "services.cli", "serve", "imaging"], env, log)
    try:
        wait_ready(f"http://127.0.0.1:{port}/readyz", second, log)
        for study in studies:
            hub.hospital.store(study)
        for study in studies:
            hub.hospital.wait_stable(study.study_uid)
        hub.connect(hub.hospital, HOSPITAL)
        two = dataclasses.replace(hub, imaging=f"http://127.0.0.1:{port}")
        for card, study in zip(cards, studies, strict=True):
            for worker in (hub, two):  # the same answer from either worker
                found = wait_for(
                    functools.partial(worker.qido, READER, PatientID=card), bool, what="the study"
                )
                assert [_uid_of(ds) for ds in found] == [study.study_uid]
                assert worker.fhir(READER, patient=card)["total"] == 1
    finally:
        stop_process(second)
