"""The patient index against the real broker, driven through a real gateway process.

Scenarios are named by their outcome. Each uses its own 身份证 numbers, so the tests share
the hub's real topics without seeing each other's patients.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.common.broker import free_port
from services.common.envelope import Envelope
from services.common.identifiers import OUTPATIENT_NO_SYSTEM
from services.common.institutions import Registry, issue_token
from services.common.kafka_admin import create_topics
from services.common.topics import ALL_TOPICS
from tests.conftest import REPO
from tests.fhir_samples import bundle, dumps, gb11643, observation
from tests.support import consume_all, produce, run_module, stop_process

PARTITIONS = 3
FHIR = "application/fhir+json"


@dataclass
class Hub:
    bootstrap: str
    url: str
    tokens: dict[str, str]  # institution id -> token
    env: dict[str, str]
    log_dir: Path
    worker: Any

    def post(self, inst: str, path: str, doc: Any) -> httpx.Response:
        return httpx.post(
            f"{self.url}{path}",
            content=dumps(doc),
            headers={"Authorization": f"Bearer {self.tokens[inst]}", "Content-Type": FHIR},
            timeout=30,
        )

    def events(
        self, topic: str, *, where: Any, expect: int, timeout_s: float = 60
    ) -> list[Envelope]:
        """Envelopes on ``topic`` for which ``where(payload)`` holds, once ``expect`` arrived
        (or the time ran out)."""
        deadline = time.monotonic() + timeout_s
        found: list[Envelope] = []
        while time.monotonic() < deadline:
            found = [
                e
                for e in (Envelope.from_bytes(r.value) for r in consume_all(self.bootstrap, topic))
                if where(e.payload)
            ]
            if len(found) >= expect:
                break
            time.sleep(0.5)
        return found


def _worker(env: dict[str, str], log: Path) -> Any:
    return run_module(["-m", "services.cli", "serve", "patient_index"], env, log)


def _wait_ready(url: str, proc: Any, log: Path) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"not ready: {url}\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def hub(bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    tmp = tmp_path_factory.mktemp("hub")
    registry = tmp / "institutions.yaml"
    shutil.copy(REPO / "config" / "institutions.yaml", registry)
    ids = Registry.load(registry).ids
    tokens = {i: issue_token(registry, i) for i in ids[:3]}
    create_topics(bootstrap, ALL_TOPICS, default_partitions=PARTITIONS, replication_factor=1)
    gw_port, pi_port = free_port(), free_port()
    env = {
        "MRHUB_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "MRHUB_IDENTITY__HMAC_KEY": "test-hmac-key",
        "MRHUB_INGEST__PORT": str(gw_port),
        "MRHUB_INGEST__INSTITUTIONS_PATH": str(registry),
        "MRHUB_PATIENT_INDEX__PORT": str(pi_port),
        "MRHUB_TOPIC_PARTITIONS": str(PARTITIONS),
        "MRHUB_STATE_DIR": str(tmp / "state"),
        "MRHUB_LOG_LEVEL": "INFO",
    }
    gateway = run_module(["-m", "services.cli", "serve", "ingest"], env, tmp / "ingest.log")
    worker = _worker(env, tmp / "patient_index.log")
    hub = Hub(bootstrap, f"http://127.0.0.1:{gw_port}", tokens, env, tmp, worker)
    try:
        _wait_ready(f"{hub.url}/readyz", gateway, tmp / "ingest.log")
        _wait_ready(f"http://127.0.0.1:{pi_port}/readyz", worker, tmp / "patient_index.log")
        yield hub
    finally:
        stop_process(gateway)
        stop_process(hub.worker)


_SEQ = iter(range(random.randint(100, 400) | 1, 999, 2))  # odd: male, as the sample Patient


def new_card() -> str:
    """A fresh valid 身份证 agreeing with the sample Patient (born 1985-03-17, male)."""
    return gb11643(f"11010519850317{next(_SEQ):03d}")


def trace(resp: httpx.Response) -> str:
    assert resp.status_code in (200, 201), resp.text
    return resp.headers["X-Trace-Id"]


def results(hub: Hub, trace_id: str, expect: int = 1) -> list[Envelope]:
    deadline = time.monotonic() + 60
    while True:
        envs = [
            Envelope.from_bytes(r.value)
            for r in consume_all(hub.bootstrap, "mrhub.results.result-indexed.v1")
        ]
        mine = [e for e in envs if e.trace_id == trace_id]
        if len(mine) >= expect or time.monotonic() > deadline:
            return mine
        time.sleep(0.5)


def master(hub: Hub, trace_id: str) -> str:
    [env] = results(hub, trace_id)
    return str(env.payload["master_patient_id"])


def obs_for_card(inst: str, card: str, **kw: Any) -> dict[str, Any]:
    subject = {"identifier": {"system": "urn:oid:2.16.156.10011.1.3", "value": card}}
    return observation(inst, subject=subject, **kw)


def obs_for_mz(inst: str, mz: str) -> dict[str, Any]:
    return observation(inst, subject={"identifier": {"system": OUTPATIENT_NO_SYSTEM, "value": mz}})


# ----------------------------------------------------------------------------- scenarios


def test_same_card_at_two_hospitals_is_one_master(hub: Hub) -> None:
    a, b, _ = hub.tokens
    card, other = new_card(), new_card()
    t1 = trace(hub.post(a, "/fhir", bundle("transaction", a, n_obs=1, id_card=card)))
    t2 = trace(hub.post(b, "/fhir/Observation", obs_for_card(b, card)))
    t3 = trace(hub.post(b, "/fhir/Observation", obs_for_card(b, other)))
    assert master(hub, t1) == master(hub, t2)
    assert master(hub, t3) != master(hub, t1)


def test_card_in_15_and_18_digit_form_is_one_master(hub: Hub) -> None:
    a, b, _ = hub.tokens
    card18 = gb11643(f"110105{19}{'501231'}{next(_SEQ):03d}")  # born 1950-12-31
    card15 = card18[:6] + card18[8:17]
    t1 = trace(hub.post(a, "/fhir/Observation", obs_for_card(a, card18)))
    t2 = trace(hub.post(b, "/fhir/Observation", obs_for_card(b, card15)))
    assert master(hub, t1) == master(hub, t2)


def test_a_hospital_number_follows_the_card_only_inside_that_hospital(hub: Hub) -> None:
    a, b, _ = hub.tokens
    card = new_card()
    mz = f"MZ-{card[-6:]}"
    doc = bundle("transaction", a, n_obs=1, id_card=card)
    doc["entry"][0]["resource"]["identifier"][1]["value"] = mz
    m = master(hub, trace(hub.post(a, "/fhir", doc)))
    hub.events(  # the claim for the 门诊号 has been applied
        "mrhub.patient.identity-linked.v1",
        where=lambda p: p["master_patient_id"] == m and p["kind"] == "alias",
        expect=1,
    )
    assert master(hub, trace(hub.post(a, "/fhir/Observation", obs_for_mz(a, mz)))) == m
    # the same number at another hospital is another patient
    assert master(hub, trace(hub.post(b, "/fhir/Observation", obs_for_mz(b, mz)))) != m


def test_resend_is_dropped_amendment_updates_withdrawal_retracts(hub: Hub) -> None:
    a, _, _ = hub.tokens
    card = new_card()
    report = f"LR-{card[-8:]}"
    first = obs_for_card(a, card, report_no=report, value="4.20")
    t1 = trace(hub.post(a, "/fhir/Observation", first))
    [env] = results(hub, t1)
    assert env.payload["change"] == "new"
    record_id = env.payload["record_id"]

    t2 = trace(hub.post(a, "/fhir/Observation", first))  # the LIS resends it
    amended = obs_for_card(a, card, report_no=report, value="4.50")
    amended["status"] = "amended"
    amended["issued"] = "2026-11-20T11:00:00+08:00"
    t3 = trace(hub.post(a, "/fhir/Observation", amended))
    withdrawn = dict(amended, status="entered-in-error")
    t4 = trace(hub.post(a, "/fhir/Observation", withdrawn))

    assert [e.payload["change"] for e in results(hub, t3)] == ["update"]
    assert [e.payload["change"] for e in results(hub, t4)] == ["retraction"]
    assert results(hub, t2, expect=0) == []  # nothing published for the resend
    all_of_record = [
        e.payload["change"]
        for e in (
            Envelope.from_bytes(r.value)
            for r in consume_all(hub.bootstrap, "mrhub.results.result-indexed.v1")
        )
        if e.payload["record_id"] == record_id
    ]
    assert all_of_record == ["new", "update", "retraction"]


def test_a_failing_checksum_is_not_used_to_link(hub: Hub) -> None:
    a, b, _ = hub.tokens
    card = new_card()
    bad = card[:-1] + ("0" if card[-1] != "0" else "1")
    m = master(hub, trace(hub.post(a, "/fhir/Observation", obs_for_card(a, card))))
    # the gateway refuses a bad card on subject.identifier outright …
    resp = hub.post(b, "/fhir/Observation", obs_for_card(b, bad))
    assert resp.status_code == 422
    # … and nothing was indexed under any master for it
    assert master(hub, trace(hub.post(b, "/fhir/Observation", obs_for_card(b, card)))) == m


def test_concurrent_new_patient_at_two_hospitals_gets_one_master(hub: Hub) -> None:
    a, b, c = hub.tokens
    card = new_card()

    async def both() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            return list(
                await asyncio.gather(
                    *(
                        client.post(
                            f"{hub.url}/fhir",
                            content=dumps(bundle("transaction", inst, n_obs=1, id_card=card)),
                            headers={
                                "Authorization": f"Bearer {hub.tokens[inst]}",
                                "Content-Type": FHIR,
                            },
                        )
                        for inst in (a, b, c)
                    )
                )
            )

    masters = {master(hub, trace(r)) for r in asyncio.run(both())}
    assert len(masters) == 1
    [m] = masters
    new_events = hub.events(
        "mrhub.patient.identity-linked.v1",
        where=lambda p: p["master_patient_id"] == m and p["kind"] == "new",
        expect=1,
        timeout_s=5,
    )
    assert len(new_events) == 1


def test_a_poison_message_is_dead_lettered_and_the_stream_goes_on(hub: Hub) -> None:
    a, _, _ = hub.tokens
    produce(hub.bootstrap, "mrhub.ingest.resource-accepted.v1", [(b"poison", b"\xff not json")])
    t = trace(hub.post(a, "/fhir/Observation", obs_for_card(a, new_card())))
    assert results(hub, t)  # processed after the poison
    dead = [
        json.loads(r.value)
        for r in consume_all(hub.bootstrap, "mrhub.patient_index.dead-letter.v1")
    ]
    poison = [d for d in dead if d["original_base64"] == "/yBub3QganNvbg=="]
    assert len(poison) == 1
    assert poison[0]["stage"] == "route" and poison[0]["error"]
    port = hub.env["MRHUB_PATIENT_INDEX__PORT"]
    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    dead_count = [
        float(line.split()[-1])
        for line in metrics.text.splitlines()
        if line.startswith('mrhub_patient_index_dead_letters_total{stage="route"}')
    ]
    assert dead_count and dead_count[0] >= 1
    assert "mrhub_patient_index_records_total" in metrics.text


def test_kill_9_mid_stream_loses_and_doubles_nothing(hub: Hub) -> None:
    a, b, _ = hub.tokens
    cards = [new_card() for _ in range(20)]
    traces = []
    for i, card in enumerate(cards):
        inst = a if i % 2 else b
        traces.append(
            trace(hub.post(inst, "/fhir", bundle("transaction", inst, n_obs=2, id_card=card)))
        )
        if i == 8:
            hub.worker.send_signal(signal.SIGKILL)
            hub.worker.wait()
    hub.worker = _worker(hub.env, hub.log_dir / "patient_index.log")
    for t in traces:
        recs = results(hub, t, expect=2)
        assert len(recs) == 2, t
    # once everything is through: 40 records, each published exactly once
    time.sleep(3)
    wanted = set(traces)
    mine = [
        e
        for e in (
            Envelope.from_bytes(r.value)
            for r in consume_all(hub.bootstrap, "mrhub.results.result-indexed.v1")
        )
        if e.trace_id in wanted
    ]
    assert len(mine) == 40
    assert len({e.payload["record_id"] for e in mine}) == 40


_DAYS = iter(random.sample(range(20_000), 200))


def new_birth_date() -> str:
    from datetime import date, timedelta

    return (date(1940, 1, 1) + timedelta(days=next(_DAYS))).isoformat()


def patient_bundle(
    inst: str, mz: str, name: dict[str, Any], sex: str, birth: str, phone: str
) -> dict[str, Any]:
    """A Patient known only by this hospital's 门诊号, and one Observation of theirs."""
    p_url = "urn:uuid:" + f"{random.getrandbits(128):032x}"
    patient = {
        "resourceType": "Patient",
        "identifier": [{"system": OUTPATIENT_NO_SYSTEM, "value": mz}],
        "name": [name],
        "gender": sex,
        "birthDate": birth,
        "telecom": [{"system": "phone", "value": phone}],
        "address": [{"text": "山西省太原市小店区平阳路 12 号"}],
    }
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": p_url,
                "resource": patient,
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "fullUrl": "urn:uuid:" + f"{random.getrandbits(128):032x}",
                "resource": observation(inst, subject={"reference": p_url}),
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }


def test_hanzi_and_pinyin_with_same_birth_date_and_phone_are_auto_linked(hub: Hub) -> None:
    a, b, _ = hub.tokens
    birth, phone = new_birth_date(), f"139{random.randint(10_000_000, 99_999_999)}"
    m_a = master(
        hub,
        trace(
            hub.post(a, "/fhir", patient_bundle(a, "A-1", {"text": "王芳"}, "female", birth, phone))
        ),
    )
    m_b0 = master(
        hub,
        trace(
            hub.post(
                b,
                "/fhir",
                patient_bundle(
                    b, "B-7", {"family": "Wang", "given": ["Fang"]}, "female", birth, f"+86 {phone}"
                ),
            )
        ),
    )
    # whichever of the two reached their block second is linked to the first (and B's own
    # Observation may already have been resolved after that link: both are right)
    relinked = hub.events(
        "mrhub.patient.identity-linked.v1",
        where=lambda p: (
            p["kind"] == "relinked"
            and p["evidence"]["rule"] == "probabilistic"
            and m_a in (p["master_patient_id"], p["previous_master_patient_id"])
        ),
        expect=1,
    )
    assert len(relinked) == 1
    assert m_b0 in (m_a, relinked[0].payload["previous_master_patient_id"])
    survivor = relinked[0].payload["master_patient_id"]
    # from now on both hospitals' numbers for her name one patient
    assert master(hub, trace(hub.post(b, "/fhir/Observation", obs_for_mz(b, "B-7")))) == survivor
    assert master(hub, trace(hub.post(a, "/fhir/Observation", obs_for_mz(a, "A-1")))) == survivor
    # A's hospital sends her record again: matched again, the link must not flip
    again = master(
        hub,
        trace(
            hub.post(a, "/fhir", patient_bundle(a, "A-1", {"text": "王芳"}, "female", birth, phone))
        ),
    )
    assert again == survivor
    time.sleep(3)
    assert master(hub, trace(hub.post(b, "/fhir/Observation", obs_for_mz(b, "B-7")))) == survivor
    assert master(hub, trace(hub.post(a, "/fhir/Observation", obs_for_mz(a, "A-1")))) == survivor


def test_twins_are_not_linked(hub: Hub) -> None:
    a, _, _ = hub.tokens
    birth, phone = new_birth_date(), f"137{random.randint(10_000_000, 99_999_999)}"
    m1 = master(
        hub,
        trace(
            hub.post(a, "/fhir", patient_bundle(a, "T-1", {"text": "李明"}, "male", birth, phone))
        ),
    )
    time.sleep(2)
    m2 = master(
        hub,
        trace(
            hub.post(a, "/fhir", patient_bundle(a, "T-2", {"text": "李芳"}, "female", birth, phone))
        ),
    )
    assert m1 != m2
    time.sleep(2)  # any link decision has been made by now
    assert master(hub, trace(hub.post(a, "/fhir/Observation", obs_for_mz(a, "T-2")))) == m2
    assert not hub.events(
        "mrhub.patient.identity-linked.v1",
        where=lambda p: (
            p["kind"] in ("relinked", "review")
            and m2 in (p["master_patient_id"], p.get("previous_master_patient_id"))
        ),
        expect=1,
        timeout_s=2,
    )
