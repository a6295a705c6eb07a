"""The console in a real headless Chromium (Debian's), against a real hub fed by
``mrhub simulate`` (the fixture in conftest.py): what issue 20 must show.

- a steward signs in, confirms one review and rejects another, and undoes a merge; after
  each the patient index's state (``GET /reviews``, ``GET /patients/{id}``) and its events on
  ``mrhub.patient.identity-linked.v1`` (with the steward as the actor) say so;
- a region viewer sees the figures ``mrhub report`` prints for the same period;
- a hospital viewer cannot see another hospital's patients, nor the steward's pages;
- a form posted without its CSRF token is refused and changes nothing;
- the session cookie is HttpOnly and SameSite=Strict, signing out ends the session, no URL
  the browser asked for names a patient, and no page asks anything of any host but the hub.

The tests run in file order, each in its own browser window. The reviews and the merge
they act on were made by the fixture. The CSRF test comes before the steward decides both
reviews (it needs one still queued); the last test checks every URL the module's windows
asked for.
"""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from services.common import harness
from services.common.envelope import Envelope
from services.common.topics import ACCESS_RECORDED
from tests.console.conftest import Site, mrhub_report, open_as, shoot
from tests.fhir_samples import gb11643
from tests.support import consume_all

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

MASTER_ID = re.compile(r"MP[0-9a-f]{24}")
#: A name no other module's steward has: the session's broker keeps every module's events.
STEWARD = "wang.console"
OUTPATIENT = r"门.*诊号"  # the find form's 门诊号 (门（急）诊号)


# ----------------------------------------------------------------------------- helpers


def number(text: str) -> Decimal:
    """A figure as a page shows it (``1,234.50``, ``¥ 12.00``, ``85.7%``), as a number."""
    cleaned = re.sub(r"[^0-9.\-]", "", text)
    assert cleaned, f"no number in {text!r}"
    return Decimal(cleaned)


def goto(page: Any, site: Site, path: str) -> Any:
    response = page.goto(f"{site.url}{path}")
    assert response is not None
    return response


def eventually(condition: Any, what: str, deadline_s: float = 60) -> Any:
    """Wait for the patient index to apply a command (its state follows its events)."""
    return harness.wait_until(condition, deadline_s=deadline_s, what=what)


def notice(page: Any) -> str:
    page.wait_for_selector(".notice")
    return str(page.inner_text(".notice"))


def fill_reason(page: Any, button: str, reason: str) -> None:
    """The reason in the form of ``button`` (each action's form has its own)."""
    page.locator(f"form:has({button}) textarea").first.fill(reason)


def _row_of(page: Any, review: dict[str, Any]) -> Any:
    """The queue's row of this module's ``review`` (by its id: the session's broker may hold
    other modules' reviews of people with the same name)."""
    return page.locator(f'#reviews tr.review:has(input[name="review_id"][value="{review["id"]}"])')


def gone_from_the_queue(page: Any, review: dict[str, Any]) -> None:
    """The queue page no longer lists the pair (the patient index applies a decision
    moments after it accepted it; the queue hides it from the steward who decided it)."""

    def gone() -> bool:
        if _row_of(page, review).count() == 0:
            return True
        page.reload()
        return False

    eventually(gone, f"the review {review['id']} off the queue page")


def review_row(page: Any, review: dict[str, Any], name: str) -> Any:
    rows = _row_of(page, review)
    assert rows.count() == 1, f"the review queue shows {rows.count()} rows of {review['id']}"
    assert name in rows.first.inner_text()
    return rows.first


def find(page: Any, site: Site, kind: str, value: str, institution: str | None = None) -> None:
    """Fill and send the find form: ``kind`` matches the label of an option of
    ``select#kind`` (a regular expression: 身份证, 门.*诊号 …)."""
    if not page.url.endswith("/patients"):
        goto(page, site, "/patients")
    options = page.locator("select#kind option").all_inner_texts()
    [label] = [o for o in options if re.search(kind, o)][:1] or [None]
    assert label is not None, f"no {kind} in the find form's kinds: {options}"
    page.select_option("select#kind", label=label)
    page.fill("input#value", value)
    if institution is not None and page.locator("input#institution").count():
        page.fill("input#institution", institution)
    with page.expect_navigation():
        page.locator("form#find [type=submit]").first.click()


def audited(site: Site, person: str, master: str) -> list[dict[str, Any]]:
    """The audit records of ``person``'s console views of ``master``, once there is one."""

    def records() -> list[dict[str, Any]]:
        return [
            p
            for p in (
                Envelope.from_bytes(r.value).payload
                for r in consume_all(site.bootstrap, ACCESS_RECORDED.name)
            )
            if p["reader"] == f"console:{person}" and p["master_patient_id"] == master
        ]

    found: list[dict[str, Any]] = eventually(records, f"the audit of {person}'s view")
    return found


def event_of(site: Site, kind: str, master: str, *, command_in: str = "") -> Any:
    """The identity-linked event ``kind`` about ``master`` that a steward's action caused."""
    found = site.events(
        lambda p: (
            p["kind"] == kind
            and master in (p["master_patient_id"], p.get("competing_master_patient_id"))
            and p["evidence"].get("rule") == "steward"
            and (not command_in or str(p["evidence"].get("command_id")) in command_in)
        )
    )
    assert len(found) == 1, f"{len(found)} {kind} events about {master}"
    return found[0]


# ----------------------------------------------------------------------------- sign-in


def test_sign_in_keeps_a_strict_httponly_cookie_and_sign_out_ends_the_session(
    site: Site, browser: Any
) -> None:
    page = open_as(browser, site, None)
    shoot(page, "login")
    page.fill("#username", STEWARD)
    page.fill("#password", "not the password")
    with page.expect_navigation():
        page.click("#sign-in")
    assert "用户名或密码不正确" in page.inner_text("main")
    assert page.context.cookies() == [] or all(
        c["name"] != "mrhub_console" or not c["value"] for c in page.context.cookies()
    )

    page.fill("#username", STEWARD)
    page.fill("#password", site.people[STEWARD].password)
    page.click("#sign-in")
    page.wait_for_url(f"{site.url}/reviews")
    assert site.people[STEWARD].display in page.inner_text("header")
    [cookie] = [c for c in page.context.cookies() if c["name"] == "mrhub_console"]
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert cookie["path"] == "/"
    # the page's scripts cannot read it
    assert "mrhub_console" not in page.evaluate("document.cookie")

    page.click("header form button")  # 退出
    page.wait_for_url(f"{site.url}/login")
    assert not [c for c in page.context.cookies() if c["name"] == "mrhub_console" and c["value"]]
    goto(page, site, "/reviews")
    assert page.url == f"{site.url}/login"  # signed out: back to the sign-in page
    page.context.close()


def test_a_cookie_copied_before_signing_out_no_longer_signs_in(site: Site, browser: Any) -> None:
    """Signing out ends the session itself, not only the browser's copy of the cookie."""
    page = open_as(browser, site, STEWARD)
    [cookie] = [c for c in page.context.cookies() if c["name"] == "mrhub_console"]
    page.click("header form button")  # 退出
    page.wait_for_url(f"{site.url}/login")
    page.context.close()
    replay = browser.new_context()
    replay.add_cookies([cookie])
    again = replay.new_page()
    again.goto(f"{site.url}/reviews")
    signed_out = again.url == f"{site.url}/login"
    replay.close()
    assert signed_out


def test_a_hospital_viewer_may_not_open_the_stewards_or_the_operations_pages(
    site: Site, browser: Any
) -> None:
    page = open_as(browser, site, "a.hospital")
    assert page.url == f"{site.url}/figures"
    menu = page.inner_text("header nav")
    assert "待审核匹配" not in menu and "运行状态" not in menu
    for path in ("/reviews", "/review", "/ops", "/reasons"):
        response = goto(page, site, path)
        assert response.status == 403, path
        assert "无权" in page.inner_text("#error-message")
    page.context.close()


def test_a_form_posted_without_its_csrf_token_is_refused_and_changes_nothing(
    site: Site, browser: Any
) -> None:
    page = open_as(browser, site, STEWARD)
    before = {item["id"] for item in site.reviews()}
    # a post from elsewhere (no token): refused before anything runs
    refused = page.request.post(f"{site.url}/logout", form={"x": "1"})
    assert refused.status == 403
    assert "CSRF" in refused.text()
    assert goto(page, site, "/reviews").status == 200  # still signed in
    # the real confirm form, with its hidden token removed from the page
    page.locator("#reviews tr.review").first.locator("button#open-review").click()
    page.wait_for_url(f"{site.url}/review")
    fill_reason(page, "button#confirm", "无令牌的提交")
    removed = page.evaluate(
        "() => { const f = document.querySelector('button#confirm').form;"
        " const t = f.querySelector('input[name=csrf_token]'); t.remove(); return !!t; }"
    )
    assert removed
    with page.expect_navigation() as nav:
        page.click("button#confirm")
    assert nav.value.status == 403
    assert "CSRF" in page.inner_text("#error-message")
    # another session's token is refused too
    other = open_as(browser, site, STEWARD)
    goto(other, site, "/reviews")
    token = other.locator("input[name=csrf_token]").first.get_attribute("value")
    other.context.close()
    forged = page.request.post(
        f"{site.url}/review/confirm", form={"csrf_token": token or "", "reason": "伪造"}
    )
    assert forged.status == 403
    assert {item["id"] for item in site.reviews()} >= before  # nothing confirmed
    assert not site.events(
        lambda p: p["kind"] == "review-confirmed" and p["evidence"].get("actor") == STEWARD,
        expect=1,
        timeout_s=3,
    )
    page.context.close()


# ----------------------------------------------------------------------------- the steward


def test_a_steward_confirms_one_review_and_rejects_another(site: Site, browser: Any) -> None:
    confirm_pair, reject_pair = site.review_pairs
    to_confirm, to_reject = site.review_of(confirm_pair), site.review_of(reject_pair)
    assert to_confirm is not None and to_reject is not None
    page = open_as(browser, site, STEWARD)
    assert page.url == f"{site.url}/reviews"
    shoot(page, "reviews")

    # confirm: the two women are one
    review_row(page, to_confirm, "孙秀英").locator("button#open-review").click()
    page.wait_for_url(f"{site.url}/review")
    left, right = page.inner_text("#left"), page.inner_text("#right")
    assert "孙秀英" in left and "孙秀英" in right
    hospitals = {site.hospital(site.a), site.hospital(site.b)}
    assert {h for h in hospitals if h in left} | {h for h in hospitals if h in right} == hospitals
    shoot(page, "review")
    fill_reason(page, "button#confirm", "电话核实：同一人，地址已变更")
    with page.expect_navigation():
        page.click("button#confirm")
    page.wait_for_url(f"{site.url}/reviews")
    said = notice(page)
    assert "已确认" in said
    confirmed = event_of(site, "review-confirmed", to_confirm["candidate_master_patient_id"],
                         command_in=said)  # fmt: skip
    assert confirmed.payload["evidence"]["actor"] == STEWARD
    assert confirmed.payload["evidence"]["reason"] == "电话核实：同一人，地址已变更"
    merged_event = event_of(site, "merged", to_confirm["candidate_master_patient_id"],
                            command_in=said)  # fmt: skip
    assert merged_event.payload["previous_master_patient_id"] == to_confirm["master_patient_id"]
    assert merged_event.payload["evidence"]["actor"] == STEWARD
    eventually(lambda: site.review_of(confirm_pair) is None, "the review off the queue")
    merged = eventually(
        lambda: (m := site.master(to_confirm["master_patient_id"]))["status"] == "merged" and m,
        "the confirmed pair merged",
    )
    assert merged["merged_into"] == to_confirm["candidate_master_patient_id"]
    gone_from_the_queue(page, to_confirm)

    # reject: the other two are two people
    review_row(page, to_reject, "周桂兰").locator("button#open-review").click()
    page.wait_for_url(f"{site.url}/review")
    fill_reason(page, "button#reject", "出生地不同，非同一人")
    with page.expect_navigation():
        page.click("button#reject")
    page.wait_for_url(f"{site.url}/reviews")
    said = notice(page)
    rejected = event_of(site, "review-rejected", to_reject["master_patient_id"], command_in=said)
    assert rejected.payload["evidence"]["actor"] == STEWARD
    assert (
        rejected.payload["competing_master_patient_id"] == to_reject["candidate_master_patient_id"]
    )
    eventually(lambda: site.review_of(reject_pair) is None, "the review off the queue")
    for master in reject_pair:
        assert site.master(master)["status"] == "active"  # still two patients
    gone_from_the_queue(page, to_reject)
    page.context.close()


def test_a_steward_finds_a_patient_and_undoes_a_merge(site: Site, browser: Any) -> None:
    source, target = site.merged
    merged_source = site.patients["merged-source"]
    page = open_as(browser, site, STEWARD)
    goto(page, site, "/patients")
    shoot(page, "find")
    # a mistyped 身份证 (its check character wrong) is said to be wrong, not "not found"
    typo = merged_source.card[:-1] + ("1" if merged_source.card[-1] != "1" else "2")
    find(page, site, "身份证", typo)
    assert "校验" in page.inner_text("#find-error")
    find(page, site, "身份证", merged_source.card)
    page.wait_for_url(f"{site.url}/patient")
    # the surviving master, which took the other in
    assert target in page.inner_text("main h1")
    assert source in page.inner_text("#status")
    assert "合并" in page.inner_text("#history")
    assert page.locator("#timeline tr").count() >= 2  # both hospitals' results
    timeline = page.inner_text("#timeline")
    assert site.hospital(site.a) in timeline and site.hospital(site.b) in timeline
    shoot(page, "patient")
    # the view was audited, naming both hospitals whose records it showed
    views = audited(site, STEWARD, target)
    assert {"console-view"} == {v["purpose"] for v in views}
    assert {site.a, site.b} <= set(views[0]["shown_institutions"])

    fill_reason(page, "button#unmerge", "两人为兄弟，非同一人")
    with page.expect_navigation():
        page.click("button#unmerge")
    said = notice(page)
    unmerged = event_of(site, "unmerged", source, command_in=said)
    assert unmerged.payload["previous_master_patient_id"] == target
    assert unmerged.payload["evidence"]["actor"] == STEWARD
    state = eventually(
        lambda: (m := site.master(source))["status"] == "active" and m, "the unmerge applied"
    )
    assert state["history"][-1]["action"] == "unmerged-from"
    assert state["history"][-1]["actor"] == STEWARD
    eventually(lambda: site.master(target)["merged_from"] == [], "the survivor let go")
    # the surviving master's timeline lets go of the other's records (once they have been
    # published again under their own master)
    find(page, site, "身份证", site.patients["merged-target"].card)
    page.wait_for_url(f"{site.url}/patient")

    def only_a() -> bool:
        page.reload()
        return site.hospital(site.b) not in page.inner_text("#timeline")

    eventually(only_a, "the survivor's timeline without the other's records")
    assert site.hospital(site.a) in page.inner_text("#timeline")
    page.context.close()


def test_a_steward_sees_a_patients_timeline_across_hospitals(site: Site, browser: Any) -> None:
    """A simulated patient whose order at one hospital was recognised on another's result:
    found by her master patient id (typed into the form), her timeline has both."""
    master, ordering, issuer = site.recognised
    page = open_as(browser, site, STEWARD)
    find(page, site, "主索引", master)
    page.wait_for_url(f"{site.url}/patient")
    rows = page.locator("#timeline tr").all_inner_texts()
    decisions = [r for r in rows if "互认判断" in r]
    assert [r for r in decisions if "可互认" in r and site.hospital(ordering) in r], rows
    assert [r for r in rows if "结果" in r and site.hospital(issuer) in r], rows
    shoot(page, "timeline")
    page.context.close()


# ----------------------------------------------------------------------------- hospitals


def test_a_hospital_viewer_sees_only_its_own_patients_and_records(site: Site, browser: Any) -> None:
    ours, theirs, both = (site.patients[k] for k in ("a-only", "b-only", "both"))
    page = open_as(browser, site, "a.hospital")
    goto(page, site, "/patients")
    assert page.locator("select#kind").count() == 1

    # a patient only B knows is not found, exactly as one nobody knows
    find(page, site, "身份证", theirs.card)
    not_found = page.inner_text("main")
    assert "未找到" in not_found
    assert theirs.name not in not_found and site.hospital(site.b) not in not_found
    find(page, site, "身份证", gb11643(theirs.card[:14] + "000"))  # nobody has this one
    assert page.inner_text("main") == not_found
    find(page, site, OUTPATIENT, theirs.numbers[site.b])  # B's number, looked up at A
    assert "未找到" in page.inner_text("main")

    # her own patient, by 身份证 and by her own 门诊号
    find(page, site, "身份证", ours.card)
    page.wait_for_url(f"{site.url}/patient")
    assert ours.master in page.inner_text("main")
    assert site.hospital(site.a) in page.inner_text("#timeline")
    find(page, site, OUTPATIENT, ours.numbers[site.a])
    page.wait_for_url(f"{site.url}/patient")
    assert ours.master in page.inner_text("main")

    # a patient of both hospitals: only A's records
    find(page, site, "身份证", both.card)
    page.wait_for_url(f"{site.url}/patient")
    shown = page.inner_text("main")
    assert both.master in shown
    assert site.hospital(site.a) in page.inner_text("#timeline")
    assert site.hospital(site.b) not in shown
    assert page.locator("button#unmerge, form#merge, button#confirm").count() == 0
    shoot(page, "hospital-patient")
    # audited as a view of A's records only
    assert {tuple(v["shown_institutions"]) for v in audited(site, "a.hospital", both.master)} == {
        (site.a,)
    }
    page.context.close()


# ----------------------------------------------------------------------------- figures


def table_rows(page: Any) -> dict[tuple[str, str], dict[str, Decimal]]:
    rows = {}
    for tr in page.locator("table#by-region-category tr[data-region][data-category]").all():
        key = (str(tr.get_attribute("data-region")), str(tr.get_attribute("data-category")))
        rows[key] = {
            f: number(tr.locator(f"td[data-field={f}]").inner_text())
            for f in ("orders", "recognisable", "saving_yuan")
        }
    return rows


def group_rows(page: Any) -> dict[str, dict[str, Decimal]]:
    """``#by-group``'s rows: key (a day, prefecture, institution or category) → figures."""
    return {
        str(tr.get_attribute("data-key")): {
            f: number(tr.locator(f"td[data-field={f}]").inner_text())
            for f in ("orders", "recognisable", "saving_yuan", "patients")
        }
        for tr in page.locator("#by-group tr[data-key]").all()
    }


def kpi(page: Any, name: str) -> Decimal:
    return number(page.inner_text(f"[data-testid=kpi-{name}]"))


def choose_period(page: Any, since: str, until: str) -> None:
    page.fill("input#since", since)
    page.fill("input#until", until)
    with page.expect_navigation():
        page.locator("form#period [type=submit]").first.click()


@pytest.mark.parametrize(
    ("who", "prefectures"),
    [("ty.region", ("140100",)), ("sx.province", ("140100", "140200"))],
    ids=["prefecture", "province"],
)
def test_a_region_viewer_sees_the_figures_mrhub_report_prints(
    site: Site, browser: Any, who: str, prefectures: tuple[str, ...]
) -> None:
    since, until = site.first_day, datetime.now(UTC).date()  # one day, or two at midnight
    page = open_as(browser, site, who)
    goto(page, site, "/figures")
    choose_period(page, since.isoformat(), until.isoformat())
    assert f"since={since}" in page.url and f"until={until}" in page.url
    page.wait_for_selector("table#by-region-category")
    shown = table_rows(page)
    report = mrhub_report(site, since, until)
    expected = {
        (r["region"], r["category"]): {
            "orders": Decimal(r["orders"]),
            "recognisable": Decimal(r["recognisable"]),
            "saving_yuan": Decimal(str(r["saving_yuan"])).quantize(Decimal("0.01")),
        }
        for r in report["rows"]
        if r["region"] in prefectures
    }
    assert expected, "mrhub report counted nothing in the viewer's region"
    assert shown == expected
    assert kpi(page, "orders") == sum(r["orders"] for r in expected.values())
    assert kpi(page, "recognisable") == sum(r["recognisable"] for r in expected.values())
    assert kpi(page, "saving") == sum(r["saving_yuan"] for r in expected.values())
    assert kpi(page, "patients") >= 1
    # the charts drew (from the page's own script and data, nothing fetched)
    page.wait_for_function("document.querySelectorAll('canvas').length > 0")
    if who == "ty.region":
        shoot(page, "figures")

    # per hospital: the region's hospitals only, adding up to the same totals
    page.select_option("select#by", "institution")
    with page.expect_navigation():
        page.locator("form#period [type=submit]").first.click()
    groups = group_rows(page)
    assert groups
    for institution in groups:
        inst = site.registry.get(institution)
        assert inst is not None and inst.prefecture_code in prefectures, institution
    assert sum(g["orders"] for g in groups.values()) == kpi(page, "orders")

    # the CSV export says what the table says
    href = page.get_attribute("a#csv", "href")
    assert href is not None and f"since={since}" in href
    download = page.request.get(f"{site.url}{href}" if href.startswith("/") else href)
    assert download.status == 200
    assert "attachment" in download.headers["content-disposition"]
    body = download.body().decode("utf-8")
    assert body.startswith("\ufeff")  # so that a spreadsheet reads it as UTF-8
    header, *lines = list(csv.reader(io.StringIO(body.removeprefix("\ufeff"))))
    from_csv = {
        line[0]: {
            f: number(line[header.index(f)]) for f in ("orders", "recognisable", "saving_yuan")
        }
        for line in lines
        if line[0] != "all"
    }
    assert from_csv == {
        k: {f: v[f] for f in ("orders", "recognisable", "saving_yuan")} for k, v in groups.items()
    }
    if who == "ty.region":
        goto(page, site, "/reasons")
        assert page.locator("#reasons-not-recognised tr").count() > 1
        page.wait_for_selector("#fix-hr, #fix-catalog")
        shoot(page, "reasons")
    page.context.close()


def test_a_hospital_viewer_sees_its_own_hospitals_figures_only(site: Site, browser: Any) -> None:
    page = open_as(browser, site, "b.hospital")
    since, until = site.first_day.isoformat(), datetime.now(UTC).date().isoformat()
    page.select_option("select#by", "institution")
    choose_period(page, since, until)
    groups = group_rows(page)
    assert set(groups) == {site.b}
    assert groups[site.b]["orders"] == kpi(page, "orders") > 0
    text = page.inner_text("main")
    others = [site.hospital(i) for i in site.registry.ids if i != site.b]
    assert not [name for name in others if name in text]
    shoot(page, "hospital-figures")
    # another hospital's figures are not reached by asking for them either
    download = page.request.get(
        f"{site.url}/figures.csv?since={since}&until={until}&by=institution"
    )
    lines = download.body().decode("utf-8").removeprefix("\ufeff").splitlines()
    assert {line.split(",")[0] for line in lines[1:]} <= {site.b, "all"}
    page.context.close()


# ----------------------------------------------------------------------------- operations


def test_operations_show_each_service_and_one_that_is_down(site: Site, browser: Any) -> None:
    page = open_as(browser, site, STEWARD)
    goto(page, site, "/ops")
    page.wait_for_selector("#services tr[data-service]")
    states = {
        str(tr.get_attribute("data-service")): str(tr.get_attribute("data-state"))
        for tr in page.locator("#services tr[data-service]").all()
    }
    # the hub's three services answer ready; its imaging index is not running here
    assert states == {
        "ingest": "ready",
        "patient_index": "ready",
        "recognition": "ready",
        "imaging": "down",
    }
    assert "无响应" in page.inner_text("#services tr[data-service=imaging]")
    shoot(page, "ops")
    page.context.close()


# ----------------------------------------------------------------------------- every page


def test_no_page_asks_anything_of_another_host_and_no_url_names_a_patient(
    site: Site, browser: Any
) -> None:
    """A tour of every page as each role, then every URL the browser asked for in this
    module: the hub's console only, and no identifier, name or master id in any of them."""
    tour = {
        STEWARD: ["/reviews", "/patients", "/figures", "/reasons", "/ops"],
        "ty.region": ["/figures", "/reasons", "/ops"],
        "a.hospital": ["/figures", "/patients"],
    }
    for who, paths in tour.items():
        page = open_as(browser, site, who)
        for path in paths:
            assert goto(page, site, path).status == 200, (who, path)
            page.wait_for_load_state("networkidle")
        page.context.close()

    console = urlsplit(site.url).netloc
    hosts = {urlsplit(u).netloc for u in site.requests if not u.startswith(("data:", "blob:"))}
    assert hosts == {console}
    secrets_ = set()
    for p in site.patients.values():
        secrets_ |= {p.card, p.name, *p.numbers.values()}
    secrets_ |= {"孙秀英", "周桂兰"}
    for url in site.requests:
        plain = unquote(url)
        assert not MASTER_ID.search(plain), url
        assert not [s for s in secrets_ if s in plain], url


def test_the_consoles_log_names_no_patient(site: Site) -> None:
    """After every page of the module has been visited (this test runs last): the console's
    own log holds none of the cards, names, hospital numbers or master ids it showed."""
    text = site.console_log.read_text(encoding="utf-8", errors="replace")
    assert "console request" in text  # the log is the console's, and it logged requests
    secrets_ = {"孙秀英", "周桂兰"}
    for p in site.patients.values():
        secrets_ |= {p.card, p.name, *p.numbers.values()}
    assert not [s for s in secrets_ if s and s in text]
    assert not MASTER_ID.search(text)
