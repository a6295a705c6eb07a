"""Namesakes, posting order and a wrong birth date, through the running hub (issue 19).

A real gateway and patient index on the real broker (the fixture and helpers of
``test_patient_index``). Each scenario uses its own birth dates, hospital numbers and
phones, so the scenarios share the hub's topics without seeing each other's patients.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from tests.integration import test_patient_index as _pi
from tests.integration.test_patient_index import (
    LINKED,
    Hub,
    _queued,
    master,
    new_birth_date,
    obs_for_mz,
    patient_bundle,
    trace,
)

#: the module-scoped hub of test_patient_index: a gateway and a patient index, 3 partitions
hub = _pi.hub


def new_phone() -> str:
    return f"13{random.randint(100_000_000, 999_999_999)}"


def new_mz(prefix: str) -> str:
    return f"{prefix}{random.getrandbits(40):010x}"


def bundle(
    inst: str,
    mz: str,
    name: dict[str, Any],
    birth: str,
    *,
    phone: str | None,
    address: dict[str, Any] | None,
    sex: str = "female",
) -> dict[str, Any]:
    """A Patient known only by this hospital's 门诊号 (with or without phone and address)
    and one Observation of hers."""
    doc = patient_bundle(inst, mz, name, sex, birth, phone or "")
    patient = doc["entry"][0]["resource"]
    if phone is None:
        del patient["telecom"]
    if address is None:
        del patient["address"]
    else:
        patient["address"] = [address]
    return doc


def links_between(hub: Hub, one: str, other: str, *, expect: int, timeout_s: float) -> list[Any]:
    """identity-linked events that link or queue for review the two masters."""
    return hub.events(
        LINKED,
        where=lambda p: (
            (
                p["kind"] == "relinked"
                and {p["master_patient_id"], p.get("previous_master_patient_id")} == {one, other}
            )
            or (
                p["kind"] == "review"
                and {p["master_patient_id"], p.get("competing_master_patient_id")} == {one, other}
            )
        ),
        expect=expect,
        timeout_s=timeout_s,
    )


@pytest.mark.parametrize(
    "phones",
    [
        # issue 19's pair: postcode only, no phone — 34.5 bits under the FEBRL-fitted rules,
        # an auto-link until name agreement is weighed by how common the name is
        pytest.param(False, id="no-phones-postcode-only"),
        pytest.param(True, id="different-phones-and-streets"),
    ],
)
def test_two_namesakes_posted_by_two_hospitals_stay_two_patients_and_go_to_review(
    hub: Hub, phones: bool
) -> None:
    """Two different women named 王芳, same sex, birth date and postcode, no shared 身份证 or
    phone: a name that hundreds of thousands share is no evidence they are one."""
    a, b, _ = hub.tokens
    birth = new_birth_date()
    mz_a, mz_b = new_mz("NA"), new_mz("NB")

    def post(inst: str, mz: str, street: str) -> str:
        address = {"postalCode": "030006"}
        if phones:
            address["text"] = f"山西省太原市小店区{street}"
        doc = bundle(
            inst,
            mz,
            {"text": "王芳"},
            birth,
            phone=new_phone() if phones else None,
            address=address,
        )
        return master(hub, trace(hub.post(inst, "/fhir", doc)))

    m_a = post(a, mz_a, "平阳路 12 号")
    # her result is out, so her blocks hold her before the second woman's record arrives
    m_b = post(b, mz_b, "亲贤北街 8 号")
    assert m_a != m_b
    [item] = _queued(hub, {m_a, m_b})  # GET /reviews shows the possible match
    assert 0 < item["probability"] < 1
    # never linked: each hospital's number still names its own patient
    assert master(hub, trace(hub.post(a, "/fhir/Observation", obs_for_mz(a, mz_a)))) == m_a
    assert master(hub, trace(hub.post(b, "/fhir/Observation", obs_for_mz(b, mz_b)))) == m_b
    relinked = hub.events(
        LINKED,
        where=lambda p: (
            p["kind"] == "relinked"
            and {p["master_patient_id"], p.get("previous_master_patient_id")} == {m_a, m_b}
        ),
        expect=1,
        timeout_s=2,
    )
    assert relinked == []


def test_posting_order_never_decides_a_link(hub: Hub) -> None:
    """Issue 19's posting-order case: hospital A posts her with her phone and again without
    it; hospital C's pinyin record with the same birth date and phone links to A's master in
    both orders (before, the order decided between a link and a review)."""
    a, _, c = hub.tokens
    for first_with_phone in (True, False):
        birth, phone = new_birth_date(), new_phone()
        mz_a, mz_c = new_mz("OA"), new_mz("OC")
        home = {"text": "山西省太原市小店区长风街 8 号"}
        with_phone = bundle(a, mz_a, {"text": "郭晓燕"}, birth, phone=phone, address=home)
        without = bundle(a, mz_a, {"text": "郭晓燕"}, birth, phone=None, address=home)
        order = [with_phone, without] if first_with_phone else [without, with_phone]
        masters = {master(hub, trace(hub.post(a, "/fhir", doc))) for doc in order}
        [m_a] = masters  # one hospital number: one patient
        third = bundle(
            c, mz_c, {"family": "Guo", "given": ["Xiaoyan"]}, birth, phone=phone, address=None
        )
        m_c = master(hub, trace(hub.post(c, "/fhir", third)))
        [linked] = hub.events(
            LINKED,
            where=lambda p, m_a=m_a, m_c=m_c: (
                p["kind"] == "relinked"
                and p["evidence"]["rule"] == "probabilistic"
                and p["master_patient_id"] == m_a
                and p.get("previous_master_patient_id") == m_c
            ),
            expect=1,
        )
        assert linked.payload["master_patient_id"] == m_a, first_with_phone
        assert master(hub, trace(hub.post(c, "/fhir/Observation", obs_for_mz(c, mz_c)))) == m_a


def test_a_wrong_birth_date_does_not_hide_her_when_the_phone_and_name_agree(hub: Hub) -> None:
    """Hospital B has her birth date wrong (another year, another day): her birth-date
    block is not A's, but her phone's block is, so she is found — linked or reviewed, not a
    silent new patient."""
    a, b, _ = hub.tokens
    phone = new_phone()
    mz_a, mz_b = new_mz("WA"), new_mz("WB")
    right = new_birth_date()
    wrong = f"{int(right[:4]) - 9}-{'11' if right[5:7] != '11' else '10'}-0{random.randint(1, 9)}"
    m_a = master(
        hub,
        trace(
            hub.post(
                a,
                "/fhir",
                bundle(
                    a,
                    mz_a,
                    {"text": "赵雅琴"},
                    right,
                    phone=phone,
                    address={"text": "山西省太原市小店区长风街 8 号"},
                ),
            )
        ),
    )
    m_b = master(
        hub,
        trace(
            hub.post(
                b,
                "/fhir",
                bundle(
                    b,
                    mz_b,
                    {"text": "赵雅琴"},
                    wrong,
                    phone=f"+86 {phone}",
                    address={"text": "山西省大同市平城区永泰街 5 号"},
                ),
            )
        ),
    )
    assert links_between(hub, m_a, m_b, expect=1, timeout_s=60), "a silent new patient"
