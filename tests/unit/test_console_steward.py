"""The console's steward and patient pages against a fake patient index: rendering, the
forms' round trips (PRG, flash notices, CSRF), role rules, the hospital viewer's scope and
the audit before every patient page (services/console/steward.py)."""

from __future__ import annotations

import base64
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from services.common.settings import Settings
from services.console.app import CONSOLE, create_app
from services.console.audit import AuditUnavailable
from services.console.auth import hash_password
from services.console.timeline import Timeline, TimelineEntry, fold
from tests.conftest import REPO

OWN = "12140000405001730E"  # a hospital viewer's institution
OTHER = "12140100405128360L"
MASTER = "MP" + "a" * 24
CANDIDATE = "MP" + "b" * 24
UNKNOWN = "MP" + "c" * 24
ELSEWHERE = "MP" + "e" * 24  # a patient only another hospital has records of
REVIEW_ID = "d" * 64 + "." + MASTER
TOKEN = "console-steward-token"
PASSWORD = "correct horse battery staple"


def _person(name: str, institution: str, card: str) -> dict[str, Any]:
    return {
        "name": name,
        "pinyin": "zhang wei",
        "sex": "male",
        "birth_date": "1980-01-01",
        "institution": institution,
        "phone": "138****5678",
        "card_conflict": False,
        "identifiers": [
            {
                "kind": "id_card",
                "system": "urn:oid:2.16.156.10011.1.3",
                "scope": None,
                "doc_type": None,
                "verified": True,
                "value": card,
            },
            {
                "kind": "local",
                "system": "urn:oid:2.16.156.10011.1.11",
                "scope": institution,
                "doc_type": None,
                "verified": False,
                "value": "*****4001",
            },
        ],
    }


@dataclass
class FakeIndex:
    """The patient index's steward API, as far as the console uses it."""

    reviews: list[dict[str, Any]] = field(default_factory=list)
    calls: list[tuple[str, str, Any, dict[str, str]]] = field(default_factory=list)
    known: dict[str, str] = field(default_factory=dict)  # "system|value" → master

    def app(self) -> web.Application:
        app = web.Application()

        async def record(request: web.Request) -> Any:
            body = await request.json() if request.can_read_body else None
            self.calls.append((request.method, request.path, body, dict(request.headers)))
            return body

        async def reviews(request: web.Request) -> web.Response:
            await record(request)
            return web.json_response({"total": len(self.reviews), "items": self.reviews})

        async def review_action(request: web.Request) -> web.Response:
            await record(request)
            rid = request.match_info["rid"]
            self.reviews = [r for r in self.reviews if r["id"] != rid]
            return web.json_response(
                {"command_id": "cmd-review-1", "status": "accepted"}, status=202
            )

        async def resolve(request: web.Request) -> web.Response:
            body = await record(request)
            patient = body["patient"]
            if patient.endswith("|110101199003070000"):  # a failing checksum
                return web.json_response(
                    {"resourceType": "OperationOutcome", "issue": []}, status=422
                )
            if patient.startswith("MP"):
                if patient == UNKNOWN:
                    return web.json_response({}, status=404)
                return web.json_response({"master_patient_id": patient, "grade": "certain"})
            system, _, value = patient.partition("|")
            key = f"{system}|{value}@{body['institution']}"
            master = self.known.get(key) or self.known.get(f"{system}|{value}")
            if master is None:
                return web.json_response({}, status=404)
            return web.json_response({"master_patient_id": master, "grade": "certain"})

        async def patient(request: web.Request) -> web.Response:
            await record(request)
            mid = request.match_info["mid"]
            return web.json_response(
                {
                    "master_patient_id": mid,
                    "status": "merged" if mid == CANDIDATE else "active",
                    "merged_into": MASTER if mid == CANDIDATE else None,
                    "surviving_master_patient_id": MASTER if mid in (MASTER, CANDIDATE) else mid,
                    "merged_from": [CANDIDATE] if mid == MASTER else [],
                    "records": 3,
                    "identities": [
                        {"kind": "id_card", "rank": 50, "master_patient_id": mid, "records": 2},
                        {"kind": "local", "rank": 10, "master_patient_id": UNKNOWN, "records": 1},
                    ],
                    "identities_total": 2,
                    "history": [
                        {
                            "at": "2026-12-01T08:00:00+00:00",
                            "action": "merged",
                            "other_master_patient_id": CANDIDATE,
                            "command_id": "c-1",
                            "actor": "li.steward",
                            "reason": "同一人，两家医院各建一档",
                        }
                    ],
                }
            )

        async def command(request: web.Request) -> web.Response:
            await record(request)
            return web.json_response(
                {"command_id": "cmd-patient-1", "status": "accepted"}, status=202
            )

        app.router.add_get("/reviews", reviews)
        app.router.add_post("/reviews/{rid}/{action}", review_action)
        app.router.add_post("/internal/resolve", resolve)
        app.router.add_get("/patients/{mid}", patient)
        app.router.add_post("/patients/{action}", command)
        return app


class FakeAudit:
    def __init__(self) -> None:
        self.views: list[dict[str, Any]] = []
        self.broken = False
        self.ready = True

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def viewed(self, **kw: Any) -> None:
        if self.broken:
            raise AuditUnavailable("down")
        self.views.append(kw)


def _entry(kind: str, institution: str, at: str, item: str, **kw: Any) -> TimelineEntry:
    return TimelineEntry(
        kind,
        f"r-{item}",
        MASTER,
        institution,
        (institution,),
        at,
        item,
        kw.pop("category", "lab"),
        kw.pop("status", "final"),
        **kw,
    )


TIMELINE = [
    _entry(
        "decision",
        OTHER,
        "2026-11-21T09:00:00+00:00",
        "胸部CT",
        category="imaging",
        outcome="recognisable",
        reason="3 天前的结果可互认",
    ),
    _entry("result", OTHER, "2026-11-20T08:30:00+08:00", "钾"),
    _entry("result", OWN, "2026-11-19T08:30:00+08:00", "血常规"),
]


@dataclass
class Env:
    client: TestClient[Any, Any]
    index: FakeIndex
    audit: FakeAudit
    timeline_calls: list[tuple[str, list[str]]]


async def _env(tmp_path: Path, roles: dict[str, tuple[str, str]]) -> AsyncIterator[Env]:
    index = FakeIndex()
    upstream = TestServer(index.app())
    await upstream.start_server()
    users = tmp_path / "users.yaml"
    users.write_text(
        "users:\n"
        + "".join(
            f"  - {{name: {name}, role: {role}, scope: '{scope}', display: {name}, "
            f"password: '{hash_password(PASSWORD)}'}}\n"
            for name, (role, scope) in roles.items()
        ),
        "utf-8",
    )
    env = {
        "MRHUB_CONSOLE__USERS_PATH": str(users),
        "MRHUB_CONSOLE__SESSION_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
        "MRHUB_CONSOLE__STEWARD_TOKEN": TOKEN,
        "MRHUB_CONSOLE__SECURE_COOKIES": "false",
        # the first worker refuses connections: the console goes on to the next
        "MRHUB_PATIENT_INDEX__URL": f"http://127.0.0.1:1,{str(upstream.make_url('')).rstrip('/')}",
        "MRHUB_KAFKA__BOOTSTRAP_SERVERS": "",
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
    audit = FakeAudit()
    ctx = app[CONSOLE]
    ctx.audit = audit  # type: ignore[assignment]
    calls: list[tuple[str, list[str]]] = []

    def reader(bootstrap: str, master: str, related: list[str]) -> Timeline:
        calls.append((master, list(related)))
        if master == ELSEWHERE:
            return Timeline([e for e in TIMELINE if e.institution != OWN])
        return Timeline(list(TIMELINE)) if master == MASTER else Timeline()

    ctx.extra["timeline_reader"] = reader
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield Env(client, index, audit, calls)
    finally:
        await client.close()
        await upstream.close()


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async for e in _env(
        tmp_path,
        {"li": ("steward", "140000"), "hosp": ("hospital", OWN), "region": ("region", "140000")},
    ):
        yield e


async def sign_in(client: TestClient[Any, Any], name: str) -> None:
    answer = await client.post(
        "/login", data={"username": name, "password": PASSWORD}, allow_redirects=False
    )
    assert answer.status == 303


def csrf(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found is not None
    return found.group(1)


def review_item(**kw: Any) -> dict[str, Any]:
    item = {
        "id": REVIEW_ID,
        "master_patient_id": MASTER,
        "candidate_master_patient_id": CANDIDATE,
        "score": 9.5,
        "probability": 0.873,
        "queued_at": "2026-12-01T08:00:00.123+00:00",
        "field_weights": {"surname": 4.1, "given": 5.2, "birth_date": 3.0, "phone": -2.5},
        "levels": {
            "surname": "same",
            "given": "homophone",
            "birth_date": "same",
            "phone": "different",
            "sex": None,
        },
        "person": _person("张伟", OWN, "1401**********1234"),
        "candidate_person": _person("张玮", OTHER, "1401**********5678"),
    }
    return item | kw


# ------------------------------------------------------------------------------- reviews


async def test_review_queue_lists_each_waiting_match_with_its_open_button(env: Env) -> None:
    env.index.reviews = [review_item()]
    await sign_in(env.client, "li")
    page = await (await env.client.get("/reviews")).text()
    rows = re.findall(r'<tr class="review">(.*?)</tr>', page, re.S)
    assert len(rows) == 1
    assert "87.3%" in rows[0] and "9.5" in rows[0] and "2026-12-01 08:00:00" in rows[0]
    assert "张伟 · 男 · 1980" in rows[0] and "张玮 · 男 · 1980" in rows[0]
    assert 'id="open-review"' in rows[0] and REVIEW_ID in rows[0]
    _, _, _, headers = env.index.calls[0]
    assert headers["Authorization"] == f"Bearer {TOKEN}" and headers["X-Steward"] == "li"


async def test_a_review_is_opened_by_post_and_shown_side_by_side_after_its_audit(env: Env) -> None:
    env.index.reviews = [review_item()]
    await sign_in(env.client, "li")
    token = csrf(await (await env.client.get("/reviews")).text())
    opened = await env.client.post(
        "/reviews/open", data={"csrf_token": token, "review_id": REVIEW_ID}, allow_redirects=False
    )
    assert opened.status == 303 and opened.headers["Location"] == "/review"
    answer = await env.client.get("/review")
    page = await answer.text()
    assert answer.status == 200
    left = page[page.index('id="left"') : page.index('id="right"')]
    right = page[page.index('id="right"') : page.index('id="evidence"')]
    assert "张伟" in left and "1401**********1234" in left and "1980-01-01" in left
    assert "张玮" in right and "1401**********5678" in right
    assert "87.3%" in page
    evidence = re.findall(
        r"<tr class=\"[^\"]*\">\s*<td>(.*?)</td><td>(.*?)</td><td>(.*?)</td>"
        r"\s*<td class=\"num\">(.*?)</td>",
        page,
    )
    assert ("名", "同音", "支持", "+5.20") in evidence
    assert ("电话", "不一致", "反对", "-2.50") in evidence
    assert 'id="reason"' in page and 'id="confirm"' in page and 'id="reject"' in page
    audited = {v["master_patient_id"] for v in env.audit.views if v["page"] == "review"}
    assert audited == {MASTER, CANDIDATE}
    assert "review" not in str(answer.url.query) and MASTER not in str(answer.url)


@pytest.mark.parametrize(
    ("action", "words"), [("confirm", "已确认为同一人"), ("reject", "已确认不是同一人")]
)
async def test_confirm_or_reject_sends_the_reason_and_flashes_the_command_id(
    env: Env, action: str, words: str
) -> None:
    env.index.reviews = [review_item()]
    await sign_in(env.client, "li")
    token = csrf(await (await env.client.get("/reviews")).text())
    await env.client.post("/reviews/open", data={"csrf_token": token, "review_id": REVIEW_ID})
    done = await env.client.post(
        f"/review/{action}",
        data={"csrf_token": token, "reason": "同一身份证，姓名笔误"},
        allow_redirects=False,
    )
    assert done.status == 303 and done.headers["Location"] == "/reviews"
    method, path, body, _ = env.index.calls[-1]
    assert (method, path, body) == (
        "POST",
        f"/reviews/{REVIEW_ID}/${action}",
        {"reason": "同一身份证，姓名笔误"},
    )
    page = await (await env.client.get("/reviews")).text()
    assert re.search(rf'class="notice"[^>]*>{words}，命令编号 cmd-review-1<', page)
    assert 'class="review"' not in page
    again = await (await env.client.get("/reviews")).text()
    assert "cmd-review-1" not in again  # a flash is shown once


async def test_a_review_action_without_a_reason_changes_nothing(env: Env) -> None:
    env.index.reviews = [review_item()]
    await sign_in(env.client, "li")
    token = csrf(await (await env.client.get("/reviews")).text())
    await env.client.post("/reviews/open", data={"csrf_token": token, "review_id": REVIEW_ID})
    sent = len(env.index.calls)
    page = await (
        await env.client.post("/review/confirm", data={"csrf_token": token, "reason": "  "})
    ).text()
    assert "请填写理由" in page
    assert not [c for c in env.index.calls[sent:] if c[0] == "POST"]


async def test_a_post_without_the_csrf_token_is_refused_and_sends_nothing(env: Env) -> None:
    env.index.reviews = [review_item()]
    await sign_in(env.client, "li")
    token = csrf(await (await env.client.get("/reviews")).text())
    await env.client.post("/reviews/open", data={"csrf_token": token, "review_id": REVIEW_ID})
    answer = await env.client.post("/review/confirm", data={"reason": "attack"})
    assert answer.status == 403
    answer = await env.client.post(
        "/patient/merge", data={"reason": "x", "target": CANDIDATE, "csrf_token": "forged"}
    )
    assert answer.status == 403
    assert not [c for c in env.index.calls if c[0] == "POST"]


async def test_the_review_pages_refuse_viewers_and_show_nothing_when_the_audit_is_down(
    env: Env,
) -> None:
    env.index.reviews = [review_item()]
    await sign_in(env.client, "hosp")
    assert (await env.client.get("/reviews")).status == 403
    await sign_in(env.client, "region")
    assert (await env.client.get("/reviews")).status == 403
    assert (await env.client.get("/patients")).status == 403
    await sign_in(env.client, "li")
    env.audit.broken = True
    answer = await env.client.get("/reviews")
    assert answer.status == 503 and "张伟" not in await answer.text()


# -------------------------------------------------------------------------- find, patient


async def _find(env: Env, **form: str) -> Any:
    token = csrf(await (await env.client.get("/patients")).text())
    return await env.client.post("/patients/find", data={"csrf_token": token, **form})


async def test_a_steward_finds_a_patient_by_a_hospital_number_and_sees_history_and_timeline(
    env: Env,
) -> None:
    env.index.known[f"urn:oid:2.16.156.10011.1.11|MZ001@{OTHER}"] = MASTER
    await sign_in(env.client, "li")
    answer = await _find(env, kind="outpatient", value="MZ001", institution=OTHER)
    assert answer.status == 200 and answer.url.path == "/patient"
    page = await answer.text()
    _, _, body, _ = next(c for c in env.index.calls if c[1] == "/internal/resolve")
    assert body == {"patient": "urn:oid:2.16.156.10011.1.11|MZ001", "institution": OTHER}
    history = re.findall(r"<tr><td>2026-12-01 08:00:00</td>(.*?)</tr>", page, re.S)
    assert len(history) == 1 and "合并" in history[0] and "li.steward" in history[0]
    timeline = re.findall(r'<tr class="(result|order|decision|study)">', page)
    assert timeline == ["decision", "result", "result"]  # newest first
    assert "可互认" in page and "3 天前的结果可互认" in page
    assert 'id="unmerge"' in page and 'id="merge-target"' in page
    identities = re.findall(r"<tr><td>(身份证|院内号)</td><td>(.*?)</td>", page)
    assert identities == [("身份证", "身份证（已校验）"), ("院内号", "院内号码")]
    assert f'现已指向 <span class="mono">{UNKNOWN}</span>' in page
    assert env.timeline_calls == [(MASTER, [CANDIDATE])]
    view = env.audit.views[-1]
    assert view["page"] == "patient" and view["master_patient_id"] == MASTER
    assert view["items"] == 3 and sorted(view["shown_institutions"]) == sorted([OWN, OTHER])


async def test_a_failing_id_card_and_an_unknown_patient_are_told_apart(env: Env) -> None:
    await sign_in(env.client, "li")
    page = await (await _find(env, kind="id_card", value="110101199003070000")).text()
    assert "身份证号码校验未通过" in page and 'id="find-error"' in page
    page = await (await _find(env, kind="master", value=UNKNOWN)).text()
    assert "未找到该患者" in page
    page = await (await _find(env, kind="outpatient", value="MZ1")).text()
    assert "需要填写所属机构" in page


async def test_patient_actions_post_commands_and_flash_their_ids(env: Env) -> None:
    await sign_in(env.client, "li")
    await _find(env, kind="master", value=CANDIDATE)  # merged into MASTER
    page = await (await env.client.get("/patient")).text()
    assert "已合并" in page and "下方时间线为现存主索引的全部记录" in page
    token = csrf(page)
    answer = await env.client.post(
        "/patient/unmerge", data={"csrf_token": token, "source": CANDIDATE, "reason": "不同人"}
    )
    assert answer.url.path == "/patient"
    assert "已提交撤销合并，命令编号 cmd-patient-1" in await answer.text()
    _, path, body, _ = env.index.calls[-2]  # then the page read /patients/{id} again
    assert (path, body) == ("/patients/$unmerge", {"reason": "不同人", "source": CANDIDATE})
    await env.client.post(
        "/patient/link",
        data={
            "csrf_token": token,
            "kind": "id_card",
            "value": "11010519491231002X",
            "reason": "患者本人出示身份证",
        },
    )
    link = next(c for c in env.index.calls if c[1] == "/patients/$link")
    assert link[2]["identifier"] == {
        "system": "urn:oid:2.16.156.10011.1.3",
        "value": "11010519491231002X",
    }
    assert link[2]["master_patient_id"] == CANDIDATE
    bad = await env.client.post(
        "/patient/merge", data={"csrf_token": token, "target": "MP123", "reason": "x"}
    )
    assert "目标主索引号应为" in await bad.text()


async def test_a_hospital_viewer_sees_only_its_own_records_and_no_actions(env: Env) -> None:
    env.index.known["urn:oid:2.16.156.10011.1.3|11010519491231002X"] = MASTER
    await sign_in(env.client, "hosp")
    page = await (await env.client.get("/patients")).text()
    assert "主索引号" not in page and 'id="institution"' not in page
    answer = await _find(env, kind="id_card", value="11010519491231002X")
    page = await answer.text()
    assert answer.url.path == "/patient"
    assert re.findall(r'<tr class="(result|decision)">', page) == ["result"]
    assert "血常规" in page and "钾" not in page and "胸部CT" not in page
    assert 'id="history"' not in page and 'id="merge"' not in page and 'id="unmerge"' not in page
    assert env.audit.views[-1]["shown_institutions"] == [OWN]
    token = csrf(page)
    assert (
        await env.client.post(
            "/patient/merge", data={"csrf_token": token, "target": MASTER, "reason": "x"}
        )
    ).status == 403


async def test_a_hospital_number_is_resolved_in_the_viewers_own_institution(env: Env) -> None:
    env.index.known[f"urn:oid:2.16.156.10011.1.11|MZ001@{OTHER}"] = MASTER
    await sign_in(env.client, "hosp")
    page = await (await _find(env, kind="outpatient", value="MZ001", institution=OTHER)).text()
    _, _, body, _ = next(c for c in env.index.calls if c[1] == "/internal/resolve")
    assert body["institution"] == OWN
    assert "未找到该患者" in page


async def test_another_hospitals_patient_is_not_found_exactly_like_an_unknown_one(
    env: Env,
) -> None:
    # known to the hub, with records only from another hospital
    env.index.known["urn:oid:2.16.156.10011.1.3|11010519491231002X"] = ELSEWHERE
    await sign_in(env.client, "hosp")
    known = await (await _find(env, kind="id_card", value="11010519491231002X")).text()
    unknown = await (await _find(env, kind="id_card", value="110105194912310037")).text()

    def main(page: str) -> str:
        return re.sub(r'value="[^"]+"', "", page[page.index("<main>") : page.index("</main>")])

    assert "未找到该患者" in known and main(known) == main(unknown)
    assert (await env.client.get("/patient", allow_redirects=False)).headers[
        "Location"
    ] == "/patients"


# ------------------------------------------------------------------------------ timeline


def test_the_timeline_keeps_the_latest_per_record_and_follows_records_that_moved() -> None:
    a, b = MASTER, CANDIDATE

    def result(rid: str, mid: str, change: str = "new", **kw: Any) -> dict[str, Any]:
        return {
            "record_id": rid,
            "master_patient_id": mid,
            "change": change,
            "institution": OWN,
            "category": "lab",
            "status": "final",
            "codes": [{"system": "s", "code": "K", "display": "钾"}],
            "performed_at": "2026-11-20T08:30:00+08:00",
            **kw,
        }

    def decision(mid: str, revision: int, outcome: str) -> dict[str, Any]:
        return {
            "order_record_id": "o1",
            "master_patient_id": mid,
            "revision": revision,
            "outcome": outcome,
            "ordering_institution": OTHER,
            "item_name": "钾",
            "decided_at": f"2026-11-2{revision}T00:00:00+00:00",
            "detail": "d",
        }

    messages = [
        ("result", 1.0, 1, result("r1", b)),  # under b, then merged into a
        ("result", 2.0, 2, result("r1", a, "update", previous_master_patient_id=b)),
        ("result", 1.5, 3, result("r2", a)),  # under a, then moved to b by an unmerge
        ("result", 3.0, 4, result("r2", b, "update", previous_master_patient_id=a)),
        ("result", 1.0, 5, result("r3", a)),
        ("result", 2.0, 6, result("r3", a, "retraction")),
        ("decision", 9.0, 7, decision(a, 2, "recognisable")),
        ("decision", 5.0, 8, decision(a, 1, "not-recognisable")),  # an older revision, late
        (
            "study",
            1.0,
            9,
            {
                "study_key": "s1",
                "master_patient_id": a,
                "change": "new",
                "institutions": [OTHER],
                "started_at": "2026-11-19T00:00:00Z",
                "modalities": ["CT"],
                "status": "available",
            },
        ),
    ]
    entries = fold(messages, a)
    assert [(e.kind, e.key) for e in entries] == [
        ("decision", "o1"),
        ("result", "r1"),
        ("study", "s1"),
    ]
    assert entries[0].outcome == "recognisable" and entries[1].shown_at == "2026-11-20 08:30"
    assert entries[1].item == "钾" and entries[2].item == "CT"
    assert [e.key for e in fold(messages, b)] == ["r2"]
    t = Timeline(entries)
    assert [e.key for e in t.for_institution(OTHER).entries] == ["o1", "s1"]


async def test_a_review_queued_before_records_were_kept_still_opens(env: Env) -> None:
    legacy = review_item()
    for key in ("person", "candidate_person", "levels"):
        del legacy[key]
    env.index.reviews = [legacy]
    await sign_in(env.client, "li")
    page = await (await env.client.get("/reviews")).text()
    assert MASTER in page and CANDIDATE in page
    token = csrf(page)
    review = await env.client.post(
        "/reviews/open", data={"csrf_token": token, "review_id": REVIEW_ID}
    )
    text = await review.text()
    assert review.status == 200 and "未保存记录内容" in text and "+5.20" in text


def test_the_patient_index_masks_what_a_review_shows() -> None:
    from services.patient_index.normalize import person_from_subject
    from services.patient_index.web import mask, public_person

    assert mask("11010519491231002X", head=4) == "1101**********002X"
    assert mask("13812345678", head=3) == "138****5678"
    assert mask("MZ2024001") == "*****4001"
    assert mask("A12") == "A**"
    person = person_from_subject(
        [
            {"system": "urn:oid:2.16.156.10011.1.3", "value": "11010519491231002X"},
            {"system": "urn:oid:2.16.156.10011.1.11", "value": "MZ2024001"},
        ],
        OWN,
    )
    shown = public_person(person)
    assert [i["value"] for i in shown["identifiers"]] == ["1101**********002X", "*****4001"]
    assert "11010519491231002X" not in str(shown) and "MZ2024001" not in str(shown)
    assert shown["birth_date"] == "1949-12-31" and shown["institution"] == OWN


def test_the_timeline_orders_by_instant_whatever_the_offsets() -> None:
    def result(rid: str, at: str) -> tuple[str, float, int, dict[str, Any]]:
        payload = {"record_id": rid, "master_patient_id": MASTER, "change": "new",
                   "institution": OWN, "performed_at": at}  # fmt: skip
        return ("result", 1.0, 1, payload)

    # 01:00 UTC is 09:00 in Beijing: later than 08:30+08:00, though it sorts first as text
    entries = fold([result("a", "2026-11-20T08:30:00+08:00"), result("b", "2026-11-20T01:00:00Z")],
                   MASTER)  # fmt: skip
    assert [(e.key, e.shown_at) for e in entries] == [
        ("b", "2026-11-20 09:00"),
        ("a", "2026-11-20 08:30"),
    ]


async def test_an_unreadable_timeline_is_an_error_not_an_empty_patient(env: Env) -> None:
    def broken(bootstrap: str, master: str, related: list[str]) -> Timeline:
        raise OSError("no broker")

    env.client.app[CONSOLE].extra["timeline_reader"] = broken
    env.index.known["urn:oid:2.16.156.10011.1.3|11010519491231002X"] = MASTER
    await sign_in(env.client, "hosp")
    answer = await _find(env, kind="id_card", value="11010519491231002X")
    assert answer.status == 503 and "未找到" not in await answer.text()


async def test_a_review_just_decided_is_hidden_while_the_patient_index_applies_it(
    env: Env,
) -> None:
    """The patient index accepts a command (202) and applies it moments later: until then it
    still lists the review, and the steward must not be offered it again."""
    env.index.reviews = [review_item()]
    await sign_in(env.client, "li")
    token = csrf(await (await env.client.get("/reviews")).text())
    await env.client.post("/reviews/open", data={"csrf_token": token, "review_id": REVIEW_ID})
    still_listed = list(env.index.reviews)
    await env.client.post("/review/confirm", data={"csrf_token": token, "reason": "同一人"})
    env.index.reviews = still_listed  # not applied yet
    page = await (await env.client.get("/reviews")).text()
    assert 'class="review"' not in page
    assert 'id="applying"' in page
    # another steward's session still sees it: only the one who decided knows
    env.client.session.cookie_jar.clear()
    await sign_in(env.client, "li")
    assert 'class="review"' in await (await env.client.get("/reviews")).text()


def test_every_action_a_masters_history_records_has_a_chinese_name() -> None:
    """The patient index writes these into a master's history; the page names each one."""
    from services.console.steward import ACTION_NAMES

    source = (REPO / "services" / "patient_index" / "stewardship.py").read_text(encoding="utf-8")
    written = set(re.findall(r'_with_history\(\s*\w+,\s*"([a-z-]+)"', source))
    written |= {a for pair in re.findall(r'action = "([a-z-]+)" if \w+ else "([a-z-]+)"', source)
                for a in pair}  # fmt: skip
    assert {"merged-from", "merged-into", "unmerged-from", "unmerged-child"} <= written
    assert sorted(written - set(ACTION_NAMES)) == []
