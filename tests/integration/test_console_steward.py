"""The console's steward pages against a real broker and a real patient index (issue 20).

The gateway and patient index are test_patient_index's module hub; the console runs in this
process (``create_app(Settings())``) with its audit producer and timeline reads on the same
broker. A steward confirms one possible match and rejects another through the console's
forms (the CSRF token taken from the page) and the patient index's ``GET /patients/{id}``
and ``GET /reviews`` reflect each; an attacker's POST without the token changes nothing; a
hospital viewer finds its own patient (its own records only) and never another hospital's.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from services.common.institutions import Registry
from services.common.settings import Settings
from services.console.app import create_app
from services.console.auth import hash_password
from tests.integration import test_patient_index as _pi
from tests.integration.test_patient_index import (
    STEWARD,
    Hub,
    _queued,
    _queued_now,
    _review_pair,
    master,
    new_card,
    obs_for_card,
    steward,
    steward_events,
    trace,
)

pytestmark = pytest.mark.integration

#: the module-scoped hub of test_patient_index: a gateway and a patient index, 3 partitions
hub = _pi.hub

PASSWORD = "a long enough password"


async def _off_loop(fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.to_thread(fn, *args)


@pytest.fixture
async def console(hub: Hub, tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    a, _, _ = hub.tokens
    users = tmp_path / "users.yaml"
    users.write_text(
        "users:\n"
        f"  - {{name: li.steward, role: steward, scope: '140000', display: 李管理员, "
        f"password: '{hash_password(PASSWORD)}'}}\n"
        f"  - {{name: a.viewer, role: hospital, scope: '{a}', display: 医院甲, "
        f"password: '{hash_password(PASSWORD)}'}}\n",
        "utf-8",
    )
    env = {
        "MRHUB_KAFKA__BOOTSTRAP_SERVERS": hub.bootstrap,
        "MRHUB_INSTITUTIONS_PATH": hub.env["MRHUB_INSTITUTIONS_PATH"],
        "MRHUB_PATIENT_INDEX__URL": f"http://127.0.0.1:{hub.env['MRHUB_PATIENT_INDEX__PORT']}",
        "MRHUB_CONSOLE__USERS_PATH": str(users),
        "MRHUB_CONSOLE__SESSION_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
        "MRHUB_CONSOLE__STEWARD_TOKEN": STEWARD,
        "MRHUB_CONSOLE__SECURE_COOKIES": "false",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        app = create_app(Settings())
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


async def sign_in(client: TestClient[Any, Any], name: str) -> None:
    answer = await client.post(
        "/login", data={"username": name, "password": PASSWORD}, allow_redirects=False
    )
    assert answer.status == 303, await answer.text()


def csrf(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found is not None
    return found.group(1)


async def eventually(check: Callable[[], Awaitable[Any]], what: str, deadline_s: float = 90) -> Any:
    deadline = time.monotonic() + deadline_s
    while True:
        got = await check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"not seen in {deadline_s:.0f} s: {what}")
        await asyncio.sleep(0.5)


async def test_a_steward_confirms_and_rejects_reviews_through_the_console(
    hub: Hub, console: TestClient[Any, Any]
) -> None:
    confirm_a, confirm_b, _ = await _off_loop(_review_pair, hub, "孙艳")
    reject_a, reject_b, _ = await _off_loop(_review_pair, hub, "周静")
    [to_confirm] = await _off_loop(_queued, hub, {confirm_a, confirm_b})
    [to_reject] = await _off_loop(_queued, hub, {reject_a, reject_b})
    await sign_in(console, "li.steward")

    page = await (await console.get("/reviews")).text()
    assert to_confirm["id"] in page and to_reject["id"] in page
    token = csrf(page)

    # one review, side by side
    opened = await console.post(
        "/reviews/open", data={"csrf_token": token, "review_id": to_confirm["id"]}
    )
    assert opened.url.path == "/review"
    review = await opened.text()
    left = review[review.index('id="left"') : review.index('id="right"')]
    right = review[review.index('id="right"') : review.index('id="evidence"')]
    assert "孙艳" in left and "孙艳" in right and "女" in left
    assert "*" in left  # the hospital numbers are masked
    assert re.search(r"R[AB]\d{8}", review) is None
    assert re.search(r'id="probability">\d+\.\d%<', review)

    # confirm, with a reason: 303 to the queue with the command id
    done = await console.post(
        "/review/confirm", data={"csrf_token": token, "reason": "电话回访确认为同一人"}
    )
    queue = await done.text()
    assert done.url.path == "/reviews"
    found = re.search(r"已确认为同一人，命令编号 ([0-9a-f-]{36})", queue)
    assert found is not None
    command_id = found.group(1)
    [merged] = await _off_loop(steward_events, hub, command_id, "merged")
    survivor = to_confirm["candidate_master_patient_id"]
    assert merged.payload["master_patient_id"] == survivor
    assert not await _off_loop(_queued_now, hub, {confirm_a, confirm_b})
    state = (await _off_loop(steward, hub, "GET", f"/patients/{survivor}")).json()
    assert to_confirm["master_patient_id"] in state["merged_from"]
    [entry] = [h for h in state["history"] if h["command_id"] == command_id]
    assert entry["actor"] == "li.steward" and entry["reason"] == "电话回访确认为同一人"

    # an attacker's form without the session's token changes nothing
    await console.post("/reviews/open", data={"csrf_token": token, "review_id": to_reject["id"]})
    refused = await console.post("/review/reject", data={"reason": "forged"})
    assert refused.status == 403
    refused = await console.post("/review/reject", data={"reason": "forged", "csrf_token": "x"})
    assert refused.status == 403
    assert await _off_loop(_queued_now, hub, {reject_a, reject_b})

    # reject the other one
    done = await console.post(
        "/review/reject", data={"csrf_token": token, "reason": "母亲姓名不同"}
    )
    found = re.search(r"已确认不是同一人，命令编号 ([0-9a-f-]{36})", await done.text())
    assert found is not None
    [rejected] = await _off_loop(steward_events, hub, found.group(1), "review-rejected")
    assert rejected.payload["evidence"]["reason"] == "母亲姓名不同"
    assert not await _off_loop(_queued_now, hub, {reject_a, reject_b})

    # the surviving master's page: history and a timeline with both hospitals' records
    form = {"csrf_token": token, "kind": "master", "value": to_confirm["master_patient_id"]}
    registry = Registry.load(Path(hub.env["MRHUB_INSTITUTIONS_PATH"]))
    names = {registry.get(i).name for i in list(hub.tokens)[:2]}  # type: ignore[union-attr]

    async def both_hospitals() -> str | None:
        page = await (await console.post("/patients/find", data=form)).text()
        rows = re.findall(r'<tr class="result">(.*?)</tr>', page, re.S)
        return page if all(any(n in r for r in rows) for n in names) else None

    patient = await eventually(both_hospitals, "both hospitals' results on the survivor")
    assert survivor in patient and command_id in patient and "电话回访确认为同一人" in patient
    identities = patient[patient.index('id="identities"') : patient.index('id="history"')]
    assert "院内号" in identities and "院内号码" in identities


async def test_a_hospital_viewer_finds_only_its_own_patients(
    hub: Hub, console: TestClient[Any, Any]
) -> None:
    a, b, _ = hub.tokens
    m_a, m_b, docs = await _off_loop(_review_pair, hub, "吴倩")
    mz_a = docs[m_a][1]()["entry"][0]["resource"]["identifier"][0]["value"]
    mz_b = docs[m_b][1]()["entry"][0]["resource"]["identifier"][0]["value"]
    await sign_in(console, "a.viewer")
    token = csrf(await (await console.get("/patients")).text())
    registry = Registry.load(Path(hub.env["MRHUB_INSTITUTIONS_PATH"]))
    name_a, name_b = registry.get(a).name, registry.get(b).name  # type: ignore[union-attr]

    async def own() -> str | None:
        answer = await console.post(
            "/patients/find", data={"csrf_token": token, "kind": "outpatient", "value": mz_a}
        )
        page = await answer.text()
        return page if answer.url.path == "/patient" and 'class="result"' in page else None

    page = await eventually(own, "the viewer's own patient with its record")
    assert name_a in page and name_b not in page
    assert 'id="history"' not in page and 'id="merge"' not in page

    # another hospital's number, even with that hospital typed in: looked up in A's scope
    answer = await console.post(
        "/patients/find",
        data={"csrf_token": token, "kind": "outpatient", "value": mz_b, "institution": b},
    )
    other = await answer.text()
    assert answer.url.path == "/patients" and "未找到该患者" in other
    assert mz_b not in other and m_b not in other

    # a 身份证 the hub knows only from hospital B: exactly like a card nobody knows
    card = new_card()
    await _off_loop(
        lambda: master(hub, trace(hub.post(b, "/fhir/Observation", obs_for_card(b, card))))
    )

    async def find_card(value: str) -> str:
        answer = await console.post(
            "/patients/find", data={"csrf_token": token, "kind": "id_card", "value": value}
        )
        assert answer.url.path == "/patients"
        page = await answer.text()
        return re.sub(r'value="[^"]+"', "", page[page.index("<main>") : page.index("</main>")])

    known_elsewhere, unknown = await find_card(card), await find_card(new_card())
    assert "未找到该患者" in known_elsewhere and known_elsewhere == unknown
    assert (await console.get("/reviews")).status == 403
