"""Console pages for data stewards (数据管理员) and hospital viewers: the review queue, one
review side by side, finding a patient, a master patient and its timeline across hospitals.

Routes (no identifier ever in a URL: ids are POSTed, kept in the session, then a 303 to a
fixed page — Post/Redirect/Get):

========================  ===================  =================================================
path                      who                  what
========================  ===================  =================================================
``GET /reviews``          steward              every possible match waiting (patient index
                                               ``GET /reviews``)
``POST /reviews/open``    steward              ``review_id`` → session → 303 ``/review``
``GET /review``           steward              the open review: both records side by side, each
                                               field's evidence, the probability
``POST /review/confirm``  steward              ``reason`` → ``POST /reviews/{id}/$confirm``
``POST /review/reject``   steward              ``reason`` → ``POST /reviews/{id}/$reject``
``GET /patients``         steward, hospital    the find form
``POST /patients/find``   steward, hospital    ``kind``, ``value``, ``institution`` →
                                               ``POST /internal/resolve`` → session → ``/patient``
``GET /patient``          steward, hospital    the master (steward: status, history, actions)
                                               and its timeline (hospital: only its own records)
``POST /patient/merge``   steward              ``target``, ``reason`` → ``$merge``
``POST /patient/unmerge`` steward              ``reason`` → ``$unmerge``
``POST /patient/link``    steward              ``kind``, ``value``, ``institution``, ``reason``
``POST /patient/unlink``  steward                → ``$link`` / ``$unlink``
========================  ===================  =================================================

Every action answers 303 with a flash notice in the session (``.notice``: the command id the
patient index gave). Pages that show a patient (``/review``, ``/patient``) write their audit
record (:meth:`services.console.audit.AuditLog.viewed`) before answering, and answer 503
when it cannot be written.

A hospital viewer (role ``hospital``, scope = its institution id) finds patients with the
same form, but a hospital number is always looked up in its own institution, and the page
shows only its own institution's records; a patient with no record of its institution is
"未找到", exactly like an unknown one.

Stable element ids for browser tests: ``#reviews tr.review``, ``button#open-review``,
``#left`` / ``#right`` (the side-by-side records), ``#evidence tr``, ``#probability``,
``textarea#reason``, ``button#confirm``, ``button#reject``, ``.notice``, ``#history tr``,
``#status``, ``#identities tr``, ``button#unmerge`` (in ``form#unmerge-form``,
``select#unmerge-source``), ``form#merge`` (``input#merge-target``), ``form#link``,
``form#unlink``, ``form#find`` (``select#kind``, ``input#value``, ``input#institution``,
``button#find-patient``), ``#find-error``, ``#timeline tr``, ``#timeline-truncated``.

The timeline is read from the hub's topics (:mod:`services.console.timeline`: only the
partition the master's key lands on, at most the newest 20,000 offsets of each, in a thread).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any

import httpx
from aiohttp import web
from aiohttp_session import get_session

from services.common.identifiers import (
    HEALTH_CARD_SYSTEM,
    ID_CARD_SYSTEM,
    INPATIENT_NO_SYSTEM,
    INSURANCE_CARD_SYSTEM,
    MEDICAL_RECORD_NO_SYSTEM,
    OUTPATIENT_NO_SYSTEM,
)
from services.common.patient_lookup import is_master_id
from services.console import auth
from services.console.app import CONSOLE, Console, render, render_error
from services.console.audit import AuditUnavailable
from services.console.auth import User
from services.console.timeline import SCAN_MESSAGES, Timeline, read_timeline

__all__ = ["IDENTIFIER_KINDS", "setup"]

log = logging.getLogger(__name__)

#: What the find form offers: kind → (label, system, needs an institution).
IDENTIFIER_KINDS: dict[str, tuple[str, str, bool]] = {
    "id_card": ("居民身份证", ID_CARD_SYSTEM, False),
    "insurance": ("医保卡号", INSURANCE_CARD_SYSTEM, False),
    "health_card": ("健康卡号", HEALTH_CARD_SYSTEM, False),
    "outpatient": ("门（急）诊号", OUTPATIENT_NO_SYSTEM, True),
    "inpatient": ("住院号", INPATIENT_NO_SYSTEM, True),
    "medical_record": ("病案号", MEDICAL_RECORD_NO_SYSTEM, True),
    "master": ("主索引号（MP…）", "", False),
}
#: The identifiers a hospital viewer may look up, and a steward link or unlink.
IDENTIFIER_KINDS_NO_MASTER = {k: v for k, v in IDENTIFIER_KINDS.items() if k != "master"}
#: Identifier kinds (the patient index's) as shown on a page.
KIND_LABELS = {
    "id_card": "身份证",
    "document": "证件",
    "insurance": "医保卡",
    "health_card": "健康卡",
    "local": "院内号",
    "other": "其他号码",
}
SYSTEM_LABELS = {system: label for label, system, _ in IDENTIFIER_KINDS.values() if system}
SEX_NAMES = {"male": "男", "female": "女"}
ACTION_NAMES = {
    "merged": "合并",
    "merged-into": "被合并",
    "merge": "合并",
    "unmerged": "撤销合并",
    "unmerge": "撤销合并",
    "merge-rejected": "合并被拒绝",
    "linked": "关联标识",
    "unlinked": "解除关联",
    "review-confirmed": "确认为同一人",
    "review-rejected": "确认不是同一人",
    # a master's own history (services/patient_index/stewardship.py)
    "merged-from": "并入了另一主索引",
    "unmerged-from": "撤销合并（拆出）",
    "unmerged-child": "撤销合并（子索引拆出）",
    "merge-refused-by-source": "合并被来源主索引拒绝",
}
#: Field names of the matching rules as shown on the review page.
FIELD_NAMES = {
    "surname": "姓",
    "given": "名",
    "given_name": "名",
    "family": "姓",
    "name": "姓名",
    "sex": "性别",
    "birth_date": "出生日期",
    "phone": "电话",
    "address": "地址",
    "postcode": "邮编",
    "id_card": "身份证",
    "insurance": "医保卡",
    "health_card": "健康卡",
    "card_conflict": "身份证与记录不符",
}
LEVEL_NAMES = {
    "same": "一致",
    "similar": "相近",
    "homophone": "同音",
    "typo": "疑似笔误",
    "partial": "部分一致",
    "different": "不一致",
}

_REVIEW_ID = re.compile(r"^[0-9A-Za-z_:-]{1,200}\.MP[0-9a-f]{24}$")
_INSTITUTION = re.compile(r"^[0-9A-Za-z_.-]{1,64}$")
REASON_MAX = 500

SESSION_REVIEW = "steward_review"
SESSION_PATIENT = "steward_patient"
SESSION_NOTICE = "notice"
SESSION_ERROR = "form_error"
#: Reviews this steward just decided: the patient index applies a command moments after it
#: accepts it, so the queue may still list them; they are hidden for DECIDED_HIDE_S.
SESSION_DECIDED = "decided_reviews"
DECIDED_HIDE_S = 120
DECIDED_KEPT = 20


class Upstream(Exception):
    """The patient index could not be reached or refused the console."""


# ----------------------------------------------------------------------- patient index


async def pi_call(
    ctx: Console, user: User, method: str, path: str, body: dict[str, Any] | None = None
) -> httpx.Response:
    """One request to the patient index's steward API on behalf of ``user``: any worker
    answers (:class:`services.common.upstreams.Upstreams` keeps the order); one that refuses
    the connection (or, for a read, is not ready) is skipped."""
    headers = ctx.steward_headers(user)
    workers = ctx.patient_index
    if workers is None:
        raise Upstream("no patient index configured")
    last = ""
    for base in workers.order():
        try:
            answer = await ctx.http.request(method, base + path, json=body, headers=headers)
        except httpx.ConnectError as exc:
            workers.failed(base)
            last = type(exc).__name__
            continue
        except httpx.HTTPError as exc:
            raise Upstream(type(exc).__name__) from exc
        workers.answered(base)
        if answer.status_code == 503 and method == "GET":
            last = "503"
            continue
        if answer.status_code == 401:
            raise Upstream("the patient index refused the console's steward token")
        return answer
    raise Upstream(last)


async def _flash(request: web.Request, key: str = SESSION_NOTICE) -> str | None:
    session = await get_session(request)
    value = session.pop(key, None)
    return value if isinstance(value, str) else None


async def _set(request: web.Request, **values: Any) -> None:
    session = await get_session(request)
    for key, value in values.items():
        if value is None:
            session.pop(key, None)
        else:
            session[key] = value


async def _form(request: web.Request) -> dict[str, str]:
    form = await request.post()
    return {k: v.strip() for k, v in form.items() if isinstance(v, str)}


def _command_id(answer: httpx.Response) -> str | None:
    if answer.status_code != 202:
        return None
    try:
        cid = answer.json().get("command_id")
    except ValueError:
        return None
    return cid if isinstance(cid, str) else None


def _refusal(answer: httpx.Response) -> str:
    """The patient index's refusal (an OperationOutcome) in words."""
    try:
        issues = answer.json().get("issue") or []
        text = "; ".join(str(i.get("diagnostics") or "") for i in issues if isinstance(i, dict))
    except (ValueError, AttributeError):
        text = ""
    return f"患者索引拒绝了该操作（{answer.status_code}）{('：' + text) if text else ''}"


async def _audit(request: web.Request, page: str, master: str | None, shown: list[str],
                 items: int, outcome: str = "shown") -> web.Response | None:  # fmt: skip
    """Write the view's audit record; a 503 page when it cannot be written."""
    ctx = request.app[CONSOLE]
    user: User = request["user"]
    try:
        await ctx.audit.viewed(person=user.name, page=page, master_patient_id=master,
                               shown_institutions=shown, items=items, outcome=outcome)  # fmt: skip
    except AuditUnavailable:
        log.warning("console view not audited; page refused", extra={"page": page})
        return await render_error(
            request, 503, "审计日志暂时无法写入，为保护患者信息，页面未显示。请稍后重试。"
        )
    return None


def _institution_name(ctx: Console, institution: str) -> str:
    found = ctx.registry.get(institution) if institution else None
    return found.name if found is not None else institution


# ------------------------------------------------------------------------------ reviews


def _person_view(ctx: Console, p: dict[str, Any] | None) -> dict[str, Any] | None:
    if not p:
        return None
    idents = []
    for i in p.get("identifiers") or []:
        label = KIND_LABELS.get(i.get("kind"), "号码")
        if i.get("kind") in ("local", "other"):
            label = SYSTEM_LABELS.get(i.get("system"), label)
        scope = i.get("scope")
        idents.append({"label": label, "value": i.get("value") or "",
                       "scope": _institution_name(ctx, scope) if scope else "",
                       "verified": bool(i.get("verified"))})  # fmt: skip
    born = p.get("birth_date") or ""
    return {
        "name": p.get("name") or "（无姓名）",
        "pinyin": p.get("pinyin") or "",
        "sex": SEX_NAMES.get(p.get("sex") or "", "未知"),
        "birth_date": born or "未知",
        "institution": _institution_name(ctx, p.get("institution") or ""),
        "institution_id": p.get("institution") or "",
        "phone": p.get("phone") or "",
        "identifiers": idents,
        "short": " · ".join(
            x for x in (p.get("name"), SEX_NAMES.get(p.get("sex") or ""), born[:4]) if x
        ),
    }


def _review_view(ctx: Console, item: dict[str, Any]) -> dict[str, Any]:
    weights: dict[str, float] = item.get("field_weights") or {}
    levels: dict[str, str | None] = item.get("levels") or {}
    evidence = []
    for name in list(dict.fromkeys([*levels, *weights])):
        weight = weights.get(name)
        level = levels.get(name)
        if weight is None and level is None:
            continue
        verdict = (
            "缺失"
            if weight is None
            else ("支持" if weight > 0 else "反对" if weight < 0 else "中性")
        )
        evidence.append({"field": FIELD_NAMES.get(name, name), "key": name,
                         "level": LEVEL_NAMES.get(level or "", level or "—"),
                         "weight": weight, "verdict": verdict})  # fmt: skip
    probability = item.get("probability")
    return {
        "id": item["id"],
        "master": item["master_patient_id"],
        "candidate": item["candidate_master_patient_id"],
        "score": item.get("score"),
        "probability": probability,
        "percent": f"{probability * 100:.1f}%" if isinstance(probability, int | float) else "—",
        "queued_at": (item.get("queued_at") or "")[:19].replace("T", " "),
        "left": _person_view(ctx, item.get("person")),
        "right": _person_view(ctx, item.get("candidate_person")),
        "evidence": evidence,
    }


async def _reviews(ctx: Console, user: User) -> list[dict[str, Any]]:
    answer = await pi_call(ctx, user, "GET", "/reviews")
    if answer.status_code != 200:
        raise Upstream(f"reviews answered {answer.status_code}")
    items: list[dict[str, Any]] = answer.json().get("items") or []
    return items


@auth.require("steward")
async def reviews_page(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONSOLE]
    try:
        items = await _reviews(ctx, request["user"])
    except Upstream:
        return await render_error(request, 502, "患者索引服务暂时无法访问，请稍后重试。")
    decided = await _recently_decided(request)
    pending = [i for i in items if i.get("id") in decided]
    rows = [_review_view(ctx, i) for i in items if i.get("id") not in decided]
    shown = sorted({r[s]["institution_id"] for r in rows for s in ("left", "right") if r[s]})
    if rows:
        refused = await _audit(request, "reviews", None, shown, len(rows))
        if refused is not None:
            return refused
    return await render(request, "reviews.html", {"rows": rows, "notice": await _flash(request),
                                                  "applying": len(pending)})  # fmt: skip


async def _recently_decided(request: web.Request) -> set[str]:
    """The ids of the reviews this session decided in the last DECIDED_HIDE_S seconds."""
    session = await get_session(request)
    now = time.time()
    kept = [
        (rid, at)
        for rid, at in session.get(SESSION_DECIDED) or []
        if isinstance(rid, str) and isinstance(at, int | float) and now - at < DECIDED_HIDE_S
    ]
    session[SESSION_DECIDED] = kept[-DECIDED_KEPT:]
    return {rid for rid, _ in kept}


@auth.require("steward")
async def review_open(request: web.Request) -> web.StreamResponse:
    form = await _form(request)
    review_id = form.get("review_id", "")
    if not _REVIEW_ID.match(review_id):
        return await render_error(request, 400, "无效的审核编号。")
    await _set(request, **{SESSION_REVIEW: review_id})
    raise web.HTTPSeeOther("/review")


@auth.require("steward")
async def review_page(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONSOLE]
    session = await get_session(request)
    review_id = session.get(SESSION_REVIEW)
    if not isinstance(review_id, str):
        raise web.HTTPSeeOther("/reviews")
    try:
        items = await _reviews(ctx, request["user"])
    except Upstream:
        return await render_error(request, 502, "患者索引服务暂时无法访问，请稍后重试。")
    item = next((i for i in items if i.get("id") == review_id), None)
    if item is None:
        await _set(request, **{SESSION_REVIEW: None,
                               SESSION_NOTICE: "该匹配已处理（或已不在队列中）。"})  # fmt: skip
        raise web.HTTPSeeOther("/reviews")
    view = _review_view(ctx, item)
    for side, master in (("left", view["master"]), ("right", view["candidate"])):
        shown = [view[side]["institution_id"]] if view[side] else []
        refused = await _audit(request, "review", master, shown, 1)
        if refused is not None:
            return refused
    return await render(
        request, "review.html", {"r": view, "error": await _flash(request, SESSION_ERROR)}
    )


def _review_action(decision: str) -> Any:
    done = {"confirm": "已确认为同一人", "reject": "已确认不是同一人"}[decision]

    @auth.require("steward")
    async def action(request: web.Request) -> web.StreamResponse:
        ctx = request.app[CONSOLE]
        session = await get_session(request)
        review_id = session.get(SESSION_REVIEW)
        if not isinstance(review_id, str):
            raise web.HTTPSeeOther("/reviews")
        form = await _form(request)
        reason = form.get("reason", "")
        if not reason:
            await _set(request, **{SESSION_ERROR: "请填写理由。"})
            raise web.HTTPSeeOther("/review")
        try:
            answer = await pi_call(ctx, request["user"], "POST",
                                   f"/reviews/{review_id}/${decision}",
                                   {"reason": reason[:REASON_MAX]})  # fmt: skip
        except Upstream:
            return await render_error(request, 502, "患者索引服务暂时无法访问，未做任何更改。")
        cid = _command_id(answer)
        if cid is None:
            await _set(request, **{SESSION_ERROR: _refusal(answer)})
            raise web.HTTPSeeOther("/review")
        decided = [*(session.get(SESSION_DECIDED) or []), (review_id, time.time())]
        await _set(request, **{SESSION_REVIEW: None, SESSION_NOTICE: f"{done}，命令编号 {cid}",
                               SESSION_DECIDED: decided[-DECIDED_KEPT:]})  # fmt: skip
        raise web.HTTPSeeOther("/reviews")

    action.__name__ = f"review_{decision}"
    return action


# ----------------------------------------------------------------------- find a patient


def _kinds_for(user: User) -> dict[str, tuple[str, str, bool]]:
    if user.role == "hospital":
        return IDENTIFIER_KINDS_NO_MASTER
    return IDENTIFIER_KINDS


@auth.require("steward", "hospital")
async def find_page(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONSOLE]
    user: User = request["user"]
    institutions = [] if user.role == "hospital" else sorted(
        ((i.id, i.name) for i in ctx.registry), key=lambda t: t[0])  # fmt: skip
    return await render(request, "patients.html", {
        "kinds": _kinds_for(user), "institutions": institutions,
        "own": _institution_name(ctx, user.scope) if user.role == "hospital" else "",
        "error": await _flash(request, SESSION_ERROR), "notice": await _flash(request),
    })  # fmt: skip


def _identifier(form: dict[str, str], user: User) -> tuple[dict[str, str], str] | str:
    """``({system, value}, institution)`` from the form, or a message in words."""
    kind = form.get("kind", "")
    value = form.get("value", "")[:100]
    if kind not in _kinds_for(user) or kind == "master":
        return "请选择标识类型。"
    if not value:
        return "请输入号码。"
    _label, system, local = IDENTIFIER_KINDS[kind]
    institution = ""
    if local:
        institution = user.scope if user.role == "hospital" else form.get("institution", "")
        if not _INSTITUTION.match(institution):
            return "院内号码（门诊号、住院号、病案号）需要填写所属机构编码。"
    return {"system": system, "value": value}, institution


async def _not_found(request: web.Request) -> web.StreamResponse:
    await _set(request, **{SESSION_ERROR: "未找到该患者。", SESSION_PATIENT: None})
    raise web.HTTPSeeOther("/patients")


@auth.require("steward", "hospital")
async def find_post(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONSOLE]
    user: User = request["user"]
    form = await _form(request)
    if form.get("kind") == "master" and user.role == "steward":
        patient, institution = form.get("value", ""), ""
        if not is_master_id(patient):
            await _set(request, **{SESSION_ERROR: "主索引号应为 MP 加 24 位十六进制数字。"})
            raise web.HTTPSeeOther("/patients")
    else:
        found = _identifier(form, user)
        if isinstance(found, str):
            await _set(request, **{SESSION_ERROR: found})
            raise web.HTTPSeeOther("/patients")
        ident, institution = found
        patient = f"{ident['system']}|{ident['value']}"
    try:
        answer = await pi_call(ctx, user, "POST", "/internal/resolve",
                               {"patient": patient, "institution": institution})  # fmt: skip
    except Upstream:
        return await render_error(request, 502, "患者索引服务暂时无法访问，请稍后重试。")
    if answer.status_code == 422:
        message = (
            "身份证号码校验未通过（校验位或出生日期不正确），请核对后重新输入。"
            if form.get("kind") == "id_card"
            else "该号码无法用于识别患者，请核对类型与号码。"
        )
        await _set(request, **{SESSION_ERROR: message})
        raise web.HTTPSeeOther("/patients")
    if answer.status_code == 404:
        return await _not_found(request)
    if answer.status_code != 200:
        return await render_error(request, 502, _refusal(answer))
    master = answer.json().get("master_patient_id")
    if not isinstance(master, str) or not is_master_id(master):
        return await _not_found(request)
    await _set(request, **{SESSION_PATIENT: master})
    raise web.HTTPSeeOther("/patient")


# ---------------------------------------------------------------------------- a master


async def _master(ctx: Console, user: User, master: str) -> dict[str, Any] | None:
    answer = await pi_call(ctx, user, "GET", f"/patients/{master}")
    if answer.status_code == 404:
        return None
    if answer.status_code != 200:
        raise Upstream(f"patient answered {answer.status_code}")
    doc: dict[str, Any] = answer.json()
    return doc


async def _timeline(ctx: Console, master: str, related: list[str]) -> Timeline:
    bootstrap = ctx.settings.kafka.bootstrap_servers
    if not bootstrap and "timeline_reader" not in ctx.extra:
        return Timeline(truncated=True)
    reader = ctx.extra.get("timeline_reader", read_timeline)  # tests put a fake here
    timeline: Timeline = await asyncio.to_thread(reader, bootstrap, master, related)
    return timeline


def _related(view: dict[str, Any]) -> list[str]:
    out = {*view.get("merged_from", [])}
    for h in view.get("history") or []:
        if h.get("other_master_patient_id"):
            out.add(h["other_master_patient_id"])
    if view.get("merged_into"):
        out.add(view["merged_into"])
    return sorted(m for m in out if isinstance(m, str) and is_master_id(m))


#: How strongly an identity is held (the patient index's ranks, services/patient_index).
RANK_NAMES = {
    100: "数据管理员确认",
    50: "身份证（已校验）",
    40: "证件（已校验）",
    30: "医保卡 / 健康卡",
    20: "概率匹配自动关联",
    10: "院内号码",
    5: "其他号码",
}


def _identities(view: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for i in view.get("identities") or []:
        rank = i.get("rank")
        rows.append({
            "kind": KIND_LABELS.get(i.get("kind") or "", i.get("kind") or "未知"),
            "held": RANK_NAMES.get(rank, str(rank)) if isinstance(rank, int) else "未知",
            "records": i.get("records", 0),
            "elsewhere": i.get("master_patient_id")
            if i.get("master_patient_id") not in (None, view.get("master_patient_id")) else "",
        })  # fmt: skip
    return rows


def _history(view: dict[str, Any]) -> list[dict[str, Any]]:
    rows = [
        {"at": (h.get("at") or "")[:19].replace("T", " "),
         "action": ACTION_NAMES.get(h.get("action") or "", h.get("action") or ""),
         "other": h.get("other_master_patient_id") or "", "actor": h.get("actor") or "",
         "reason": h.get("reason") or "", "command_id": h.get("command_id") or ""}
        for h in view.get("history") or []
    ]  # fmt: skip
    rows.reverse()  # newest first
    return rows


@auth.require("steward", "hospital")
async def patient_page(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONSOLE]
    user: User = request["user"]
    session = await get_session(request)
    master = session.get(SESSION_PATIENT)
    if not isinstance(master, str):
        raise web.HTTPSeeOther("/patients")
    try:
        view = await _master(ctx, user, master)
    except Upstream:
        return await render_error(request, 502, "患者索引服务暂时无法访问，请稍后重试。")
    if view is None:
        if user.role == "hospital":
            return await _not_found(request)
        view = {"master_patient_id": master, "status": "active", "merged_into": None,
                "surviving_master_patient_id": master, "merged_from": [], "records": 0,
                "history": []}  # fmt: skip
    survivor = view.get("surviving_master_patient_id") or master
    try:
        timeline = await _timeline(ctx, survivor, [m for m in _related(view) if m != survivor])
    except Exception as exc:  # Kafka unreachable: say so rather than "no records"
        log.warning("timeline not read", extra={"error": type(exc).__name__})
        return await render_error(
            request, 503, "暂时无法读取患者的记录（消息服务不可用），请稍后重试。"
        )
    if user.role == "hospital":
        timeline = timeline.for_institution(user.scope)
        if not timeline.entries:
            # never reveal that another hospital knows this person
            refused = await _audit(request, "patient", survivor, [], 0, outcome="not-found")
            if refused is not None:
                return refused
            return await _not_found(request)
    refused = await _audit(
        request, "patient", survivor, timeline.institutions, len(timeline.entries)
    )
    if refused is not None:
        return refused
    rows = [
        {"e": e, "institution": _institution_name(ctx, e.institution)} for e in timeline.entries
    ]
    return await render(request, "patient.html", {
        "m": view, "master": master, "survivor": survivor, "history": _history(view),
        "identities": _identities(view), "identities_total": view.get("identities_total"),
        "timeline": rows, "truncated": timeline.truncated, "scan": SCAN_MESSAGES,
        "steward": user.role == "steward", "kinds": IDENTIFIER_KINDS_NO_MASTER,
        "notice": await _flash(request), "error": await _flash(request, SESSION_ERROR),
    })  # fmt: skip


def _patient_action(kind: str) -> Any:
    done = {"merge": "已提交合并", "unmerge": "已提交撤销合并", "link": "已提交关联",
            "unlink": "已提交解除关联"}[kind]  # fmt: skip

    @auth.require("steward")
    async def action(request: web.Request) -> web.StreamResponse:
        ctx = request.app[CONSOLE]
        session = await get_session(request)
        master = session.get(SESSION_PATIENT)
        if not isinstance(master, str):
            raise web.HTTPSeeOther("/patients")
        form = await _form(request)
        reason = form.get("reason", "")[:REASON_MAX]
        if not reason:
            await _set(request, **{SESSION_ERROR: "请填写理由。"})
            raise web.HTTPSeeOther("/patient")
        body: dict[str, Any] = {"reason": reason}
        if kind == "merge":
            target = form.get("target", "")
            if not is_master_id(target):
                await _set(request, **{SESSION_ERROR: "目标主索引号应为 MP 加 24 位十六进制数字。"})
                raise web.HTTPSeeOther("/patient")
            body |= {"source": master, "target": target}
        elif kind == "unmerge":
            source = form.get("source") or master
            if not is_master_id(source):
                await _set(request, **{SESSION_ERROR: "请选择要拆分的主索引。"})
                raise web.HTTPSeeOther("/patient")
            body |= {"source": source}
        else:
            found = _identifier(form, request["user"])
            if isinstance(found, str):
                await _set(request, **{SESSION_ERROR: found})
                raise web.HTTPSeeOther("/patient")
            ident, institution = found
            body |= {"identifier": ident, "institution": institution, "master_patient_id": master}
        try:
            answer = await pi_call(ctx, request["user"], "POST", f"/patients/${kind}", body)
        except Upstream:
            return await render_error(request, 502, "患者索引服务暂时无法访问，未做任何更改。")
        cid = _command_id(answer)
        if cid is None:
            await _set(request, **{SESSION_ERROR: _refusal(answer)})
        else:
            await _set(request, **{SESSION_NOTICE: f"{done}，命令编号 {cid}"})
        raise web.HTTPSeeOther("/patient")

    action.__name__ = f"patient_{kind}"
    return action


def setup(app: web.Application) -> None:
    """Add this module's routes to the console."""
    app.router.add_get("/reviews", reviews_page)
    app.router.add_post("/reviews/open", review_open)
    app.router.add_get("/review", review_page)
    app.router.add_post("/review/confirm", _review_action("confirm"))
    app.router.add_post("/review/reject", _review_action("reject"))
    app.router.add_get("/patients", find_page)
    app.router.add_post("/patients/find", find_post)
    app.router.add_get("/patient", patient_page)
    for kind in ("merge", "unmerge", "link", "unlink"):
        app.router.add_post(f"/patient/{kind}", _patient_action(kind))
