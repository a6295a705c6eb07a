"""The console's figures, CSV and reasons pages (services/console/figures.py): the numbers are
``mrhub report``'s, each person sees only their scope, and a page view with nothing new
reads nothing but the end offsets."""

from __future__ import annotations

import base64
import csv
import io
import random
import re
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from prometheus_client import Counter as MetricCounter

from services.common.figures import count
from services.common.institutions import Registry
from services.common.settings import Settings
from services.common.topics import DECISION_MADE, FEEDBACK_RECORDED, ORDER_PLACED
from services.console.app import CONSOLE, create_app
from services.console.auth import hash_password
from services.console.figures import FiguresCache
from services.recognition.catalog import Window
from services.recognition.report import summarise

#: A catalogue window as recognition writes it into an outside-window decision's detail.
SEVEN_DAYS = str(Window(length=7, unit="days", anchor="specimen-collection", basis="default"))

REPO = Path(__file__).resolve().parents[2]
REGISTRY = Registry.load(REPO / "config" / "institutions.yaml")
TAIYUAN_L2 = "12140110405530210H"  # prefecture 140100
TAIYUAN_L3 = "12140100405128360L"  # prefecture 140100
QINGXU = "12140121405704196F"  # prefecture 140100 (a county)
DATONG_L2 = "12140215406213786R"  # prefecture 140200
LINGQIU = "121402244066057203"  # prefecture 140200; its lab qualification ended 2025-12-31
DATONG_L3 = "121402004059021681"  # prefecture 140200
UNREGISTERED = "12999999999999999X"
INSTITUTIONS = [TAIYUAN_L2, TAIYUAN_L3, QINGXU, DATONG_L2, LINGQIU, DATONG_L3]
PASSWORD = "correct horse battery staple"
AT = "2026-11-20T09:00:00+00:00"


# ----------------------------------------------------------------------------- the data


def decision(
    order: str,
    inst: str,
    outcome: str,
    *,
    revision: int = 1,
    at: str = "2026-11-20T08:00:00+00:00",
    category: str | None = "lab",
    saving: Any = None,
    reason: str | None = None,
    patient: str = "MP1",
    item: str | None = "CBC",
    matches: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "outcome": outcome,
        "reason": reason or ("recognised" if outcome == "recognisable" else "no-prior-result"),
        "detail": "",
        "decided_at": at,
        "order_record_id": order,
        "master_patient_id": patient,
        "ordering_institution": inst,
        "item_id": item,
        "item_name": {"CBC": "血常规", "CT-CHEST": "胸部CT"}.get(item or "", item),
        "item_category": category,
        "catalog": "shanxi",
        "catalog_version": "shanxi-v1",
        "price_yuan": saving,
        "estimated_saving_yuan": saving,
        "matches": matches or [],
        "matches_total": len(matches or []),
        "decision_id": f"{abs(hash((order, revision))):032x}"[:32],
        "revision": revision,
        "supersedes": None,
        "reissue": revision > 1,
        "reevaluation_cause": None,
        "detected_issue": {"resourceType": "DetectedIssue"},
    }


def feedback(
    fid: str, inst: str, choice: str, *, reason: str | None = None, at: str, category: str = "lab"
) -> dict[str, Any]:
    return {
        "feedback_id": fid,
        "institution": inst,
        "master_patient_id": "MP1",
        "code": {"system": None, "code": "X"},
        "item_id": "CBC",
        "item_category": category,
        "choice": choice,
        "reason": reason,
        "reason_name": None,
        "reason_source": "national" if reason else None,
        "note": "",
        "order": None,
        "decision_id": None,
        "result_record_id": None,
        "catalog_version": "shanxi-v1",
        "recorded_at": at,
    }


def random_events(seed: int = 20) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A month of decisions and feedback over two prefectures (and one unregistered
    hospital): re-decided orders, resent feedback, categories, no-category orders."""
    rnd = random.Random(seed)
    start = datetime(2026, 11, 1, tzinfo=UTC)
    decisions: list[dict[str, Any]] = []
    fb: list[dict[str, Any]] = []
    reasons = ["no-prior-result", "outside-window", "issuer-not-qualified", "not-in-catalog"]
    for n in range(300):
        inst = rnd.choice([*INSTITUTIONS, UNREGISTERED] if n % 37 == 0 else INSTITUTIONS)
        at = (start + timedelta(hours=rnd.randrange(0, 30 * 24))).isoformat()
        category = rnd.choice(["lab", "lab", "imaging", "ultrasound", None])
        recognisable = rnd.random() < 0.55
        saving = rnd.choice([20, Decimal("35.50"), 220, Decimal("12.25")])
        patient = f"MP{rnd.randrange(60)}"
        d = decision(
            f"o{n}",
            inst,
            "recognisable" if recognisable else "not-recognisable",
            at=at,
            category=category,
            saving=saving if recognisable else None,
            reason=None if recognisable else rnd.choice(reasons),
            patient=patient,
        )
        decisions.append(d)
        if rnd.random() < 0.15:  # decided again later (a result retracted, amended …)
            again = (datetime.fromisoformat(at) + timedelta(hours=rnd.randrange(1, 72))).isoformat()
            flip = not recognisable
            decisions.append(
                decision(
                    f"o{n}",
                    inst,
                    "recognisable" if flip else "not-recognisable",
                    revision=2,
                    at=again,
                    category=category,
                    saving=saving if flip else None,
                    reason=None if flip else "outside-window",
                    patient=patient,
                )
            )
        if rnd.random() < 0.3:
            choice = rnd.choice(["recognised", "re-ordered"])
            f = feedback(
                f"{n:032x}",
                inst,
                choice,
                at=at,
                category=category or "lab",
                reason=rnd.choice(["condition-changed", "emergency", "other"])
                if choice == "re-ordered"
                else None,
            )
            fb.append(f)
            if rnd.random() < 0.3:
                fb.append(dict(f))  # resent by the CDS client
    return decisions, fb


def order(record_id: str, inst: str, *codes: tuple[str, str]) -> dict[str, Any]:
    """An order-placed payload (what the cache keeps of it: the record id and codes)."""
    return {
        "change": "new",
        "kind": "order",
        "record_id": record_id,
        "master_patient_id": "MP1",
        "institution": inst,
        "resource_type": "ServiceRequest",
        "codes": [{"system": sys, "code": code, "display": "本院项目"} for sys, code in codes],
        "status": "active",
        "resource": {"resourceType": "ServiceRequest", "note": "x" * 2000},
    }


# ----------------------------------------------------------------------------- the source


@dataclass
class FakeSource:
    """The two topics as lists; counts what the cache asks."""

    topics: dict[str, list[dict[str, Any]]] = field(
        default_factory=lambda: {
            DECISION_MADE.name: [],
            FEEDBACK_RECORDED.name: [],
            ORDER_PLACED.name: [],
        }
    )
    end_calls: int = 0
    reads: list[dict[tuple[str, int], int]] = field(default_factory=list)

    def end_offsets(self) -> dict[tuple[str, int], int]:
        self.end_calls += 1
        return {(t, 0): len(v) for t, v in self.topics.items()}

    def read(
        self, start: Mapping[tuple[str, int], int], end: Mapping[tuple[str, int], int]
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        self.reads.append(dict(start))
        for (topic, _p), stop in end.items():
            for payload in self.topics[topic][start.get((topic, 0), 0) : stop]:
                yield topic, payload

    def close(self) -> None:
        pass


# ----------------------------------------------------------------------------- the app

USERS = {
    "steward": ("steward", "140000"),
    "shanxi": ("region", "140000"),
    "datong": ("region", "140200"),
    "taiyuan": ("region", "140100"),
    "jinyuan": ("hospital", TAIYUAN_L2),
}


@pytest.fixture(scope="module")
def users_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("console") / "users.yaml"
    hashed = hash_password(PASSWORD)
    lines = ["users:"]
    for name, (role, scope) in USERS.items():
        lines += [
            f"  - name: {name}",
            f"    role: {role}",
            f'    scope: "{scope}"',
            f'    password: "{hashed}"',
        ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def settings_for(users_file: Path) -> Settings:
    return Settings.model_validate(
        {
            "kafka": {"bootstrap_servers": None},
            "institutions_path": REPO / "config" / "institutions.yaml",
            "console": {
                "users_path": users_file,
                "session_key": base64.urlsafe_b64encode(b"k" * 32).decode(),
                "steward_token": "t" * 32,
                "secure_cookies": False,
            },
        }
    )


@dataclass
class Console:
    source: FakeSource
    cache: FiguresCache
    server: TestServer

    async def client(self, name: str) -> TestClient[Any, Any]:
        client: TestClient[Any, Any] = TestClient(self.server)
        await client.start_server()
        r = await client.post(
            "/login", data={"username": name, "password": PASSWORD}, allow_redirects=False
        )
        assert r.status == 303, await r.text()
        return client


@pytest.fixture
async def console(users_file: Path) -> AsyncIterator[Console]:
    app = create_app(settings_for(users_file))
    source = FakeSource()
    cache = FiguresCache(lambda: source)
    app[CONSOLE].extra["figures"] = cache
    server = TestServer(app)
    await server.start_server()
    try:
        yield Console(source, cache, server)
    finally:
        await server.close()


def feed(console: Console, decisions: list[dict[str, Any]], fb: list[dict[str, Any]]) -> None:
    console.source.topics[DECISION_MADE.name].extend(decisions)
    console.source.topics[FEEDBACK_RECORDED.name].extend(fb)


# ----------------------------------------------------------------------------- reading pages


class Page(HTMLParser):
    """Rows of tables (their attributes and data-field cells) and elements by data-testid."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tables: dict[str, list[tuple[dict[str, str], dict[str, str]]]] = {}
        self.testids: dict[str, str] = {}
        self.ids: dict[str, dict[str, str]] = {}
        self._table: str | None = None
        self._row: tuple[dict[str, str], dict[str, str]] | None = None
        self._capture: list[tuple[str, str, list[str]]] = []  # (kind, name, text)
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if "id" in a:
            self.ids[a["id"]] = {"tag": tag, **a}
        if tag == "table":
            self._table = a.get("id", "")
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None and "data-total" not in a:
            self._row = (a, {})
            if any(k.startswith("data-") for k in a):  # a data row (not the head, not "none")
                self.tables[self._table].append(self._row)
        elif tag == "td" and self._row is not None and "data-field" in a:
            self._capture.append(("td", a["data-field"], []))
        if "data-testid" in a:
            self._capture.append(("testid", a["data-testid"], []))

    def handle_data(self, data: str) -> None:
        for _kind, _name, text in self._capture:
            text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "span", "div") and self._capture:
            kind, name, text = self._capture[-1]
            if (kind == "td") == (tag == "td"):
                self._capture.pop()
                value = "".join(text).strip()
                if kind == "td" and self._row is not None:
                    self._row[1][name] = value
                elif kind == "testid":
                    self.testids[name] = value
        elif tag == "tr":
            self._row = None
        elif tag == "table":
            self._table = None


async def page(client: TestClient[Any, Any], url: str) -> Page:
    r = await client.get(url)
    assert r.status == 200, await r.text()
    assert "no-store" in r.headers["Cache-Control"]
    return Page(await r.text())


# ----------------------------------------------------------------------------- tests


async def test_the_figures_equal_mrhub_reports_for_the_same_period(console: Console) -> None:
    decisions, fb = random_events()
    feed(console, decisions, fb)
    since, until = "2026-11-05", "2026-11-24"
    from datetime import date

    rows = summarise(
        decisions, fb, REGISTRY, since=date.fromisoformat(since), until=date.fromisoformat(until)
    )
    assert len(rows) > 6  # both prefectures, the unregistered one, several categories
    client = await console.client("steward")
    try:
        p = await page(client, f"/figures?since={since}&until={until}&by=institution")
    finally:
        await client.close()
    shown = {
        (a["data-region"], a["data-category"]): cells for a, cells in p.tables["by-region-category"]
    }
    assert set(shown) == {(r.region, r.category) for r in rows}
    for r in rows:
        cells = shown[(r.region, r.category)]
        assert int(cells["orders"]) == r.orders
        assert int(cells["recognisable"]) == r.recognisable
        assert cells["rate"] == f"{r.rate * 100:.1f}"
        assert Decimal(cells["saving_yuan"]) == r.saving_yuan
        assert int(cells["feedback_reordered"]) == sum(r.reordered.values())
    # the KPIs are the report's totals
    assert int(p.testids["kpi-orders"]) == sum(r.orders for r in rows)
    assert int(p.testids["kpi-recognisable"]) == sum(r.recognisable for r in rows)
    saved = sum((r.saving_yuan for r in rows), Decimal(0))
    assert p.testids["kpi-saving"] == f"{saved:.2f}"
    # patients benefited: distinct master ids with a counted recognisable latest decision
    latest: dict[str, dict[str, Any]] = {}
    for d in decisions:
        if (
            d["order_record_id"] not in latest
            or d["revision"] >= latest[d["order_record_id"]]["revision"]
        ):
            latest[d["order_record_id"]] = d
    benefited = {
        d["master_patient_id"]
        for d in latest.values()
        if d["outcome"] == "recognisable" and since <= d["decided_at"][:10] <= until
    }
    assert int(p.testids["kpi-patients"]) == len(benefited) > 0
    # per hospital, the rows add up to the same totals
    by_inst = p.tables["by-group"]
    assert sum(int(c["orders"]) for _a, c in by_inst) == sum(r.orders for r in rows)
    assert {a["data-key"] for a, _c in by_inst} <= {*INSTITUTIONS, UNREGISTERED}


async def test_every_grouping_adds_up_to_the_same_totals(console: Console) -> None:
    decisions, fb = random_events(seed=7)
    feed(console, decisions, fb)
    client = await console.client("shanxi")
    try:
        totals = set()
        for by in ("day", "prefecture", "institution", "category"):
            p = await page(client, f"/figures?by={by}")
            groups = p.tables["by-group"]
            assert groups
            orders = sum(int(c["orders"]) for _a, c in groups)
            saving = sum(Decimal(c["saving_yuan"]) for _a, c in groups)
            assert orders == int(p.testids["kpi-orders"])
            assert f"{saving:.2f}" == p.testids["kpi-saving"]
            totals.add(
                (p.testids["kpi-orders"], p.testids["kpi-saving"], p.testids["kpi-patients"])
            )
            if by == "day":
                assert [a["data-key"] for a, _c in groups] == sorted(
                    a["data-key"] for a, _c in groups
                )
        assert len(totals) == 1  # the same period: the same KPIs whatever the grouping
    finally:
        await client.close()


async def test_the_csv_parses_back_to_the_table(console: Console) -> None:
    decisions, fb = random_events(seed=3)
    feed(console, decisions, fb)
    client = await console.client("steward")
    try:
        q = "since=2026-11-03&until=2026-11-20&by=category"
        p = await page(client, f"/figures?{q}")
        assert p.ids["csv"]["href"] == f"/figures.csv?{q}"
        r = await client.get(p.ids["csv"]["href"])
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/csv")
        assert r.headers["Content-Disposition"].startswith("attachment;")
        raw = await r.read()
        assert raw.startswith("\ufeff".encode())  # Excel opens it as UTF-8
        lines = list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig"))))
    finally:
        await client.close()
    table = {a["data-key"]: cells for a, cells in p.tables["by-group"]}
    body = {row["category"]: row for row in lines if row["category"] != "all"}
    assert set(body) == set(table)
    for key, cells in table.items():
        for name, value in cells.items():
            if name != "key":
                assert body[key][name] == value, (key, name)
    [total] = [row for row in lines if row["category"] == "all"]
    assert total["orders"] == p.testids["kpi-orders"]
    assert total["saving_yuan"] == p.testids["kpi-saving"]
    assert "影像检查" in {row["name"] for row in lines}  # Chinese, readable


async def test_a_prefecture_viewer_never_sees_another_prefectures_hospital(
    console: Console,
) -> None:
    decisions, fb = random_events(seed=11)
    feed(console, decisions, fb)
    datong = {DATONG_L2, LINGQIU, DATONG_L3}
    client = await console.client("datong")
    try:
        p = await page(client, "/figures?by=institution")
        text = await (await client.get("/figures?by=institution")).text()
        csv_text = await (await client.get("/figures.csv?by=institution")).text()
        reasons = await (await client.get("/reasons")).text()
    finally:
        await client.close()
    shown = {a["data-key"] for a, _c in p.tables["by-group"]}
    assert shown and shown <= datong
    assert {a["data-region"] for a, _c in p.tables["by-region-category"]} == {"140200"}
    for other in (TAIYUAN_L2, TAIYUAN_L3, QINGXU, UNREGISTERED):
        for body in (text, csv_text, reasons):
            assert other not in body
    assert "太原" not in text and "太原" not in csv_text
    expected = [d for d in decisions if d["ordering_institution"] in datong]
    rows = summarise(expected, [f for f in fb if f["institution"] in datong], REGISTRY)
    assert int(p.testids["kpi-orders"]) == sum(r.orders for r in rows)


async def test_a_hospital_viewer_sees_only_the_orders_its_doctors_placed(
    console: Console,
) -> None:
    decisions, fb = random_events(seed=5)
    feed(console, decisions, fb)
    client = await console.client("jinyuan")
    try:
        p = await page(client, "/figures?by=institution")
        csv_text = await (await client.get("/figures.csv?by=prefecture")).text()
        assert (await client.get("/reasons")).status == 403
        assert (await client.get("/ops")).status == 403
    finally:
        await client.close()
    assert [a["data-key"] for a, _c in p.tables["by-group"]] == [TAIYUAN_L2]
    own = [d for d in decisions if d["ordering_institution"] == TAIYUAN_L2]
    rows = summarise(own, [f for f in fb if f["institution"] == TAIYUAN_L2], REGISTRY)
    assert int(p.testids["kpi-orders"]) == sum(r.orders for r in rows) > 0
    assert "140200" not in csv_text


async def test_a_view_with_nothing_new_asks_only_the_end_offsets(console: Console) -> None:
    feed(console, [decision("o1", TAIYUAN_L2, "recognisable", saving=20)], [])
    client = await console.client("steward")
    try:
        p = await page(client, "/figures")
        assert p.testids["kpi-orders"] == "1"
        assert len(console.source.reads) == 1
        p = await page(client, "/figures?by=category")
        assert p.testids["kpi-orders"] == "1"
        assert len(console.source.reads) == 1  # nothing new: no read
        assert console.source.end_calls == 2
        again = decision("o1", TAIYUAN_L2, "not-recognisable", revision=2)
        feed(
            console, [again, decision("o2", DATONG_L2, "recognisable", saving=Decimal("35.5"))], []
        )
        p = await page(client, "/figures")
        # only what was new is read, from where the last read stopped
        assert console.source.reads[-1] == {
            (DECISION_MADE.name, 0): 1,
            (FEEDBACK_RECORDED.name, 0): 0,
            (ORDER_PLACED.name, 0): 0,
        }
        assert (p.testids["kpi-orders"], p.testids["kpi-recognisable"]) == ("2", "1")
        assert p.testids["kpi-saving"] == "35.50"
    finally:
        await client.close()


async def test_the_cache_keeps_compact_facts_and_says_when_it_is_full() -> None:
    source = FakeSource()
    cache = FiguresCache(lambda: source, max_orders=2)
    for n in range(3):
        source.topics[DECISION_MADE.name].append(
            decision(
                f"o{n}",
                TAIYUAN_L2,
                "recognisable",
                saving=20,
                matches=[{"record_id": "r", "detail": "x" * 10_000}],
            )
        )
    cache.refresh()
    assert len(cache.facts.latest) == 2 and not cache.facts.complete
    fact = next(iter(cache.facts.latest.values()))
    assert not hasattr(fact, "__dict__")  # slots: no payload kept alongside
    assert fact.detail is None  # a recognisable order keeps no match text
    cache.close()


async def test_a_failed_read_answers_503_and_the_next_view_starts_again(console: Console) -> None:
    feed(console, [decision("o1", TAIYUAN_L2, "recognisable", saving=20)], [])
    broken = {"on": True}
    real_read = console.source.read

    def read(start: Any, end: Any) -> Iterator[tuple[str, dict[str, Any]]]:
        if broken["on"]:
            raise ConnectionError("broker down")
        return real_read(start, end)

    console.source.read = read  # type: ignore[method-assign]
    client = await console.client("steward")
    try:
        r = await client.get("/figures")
        assert r.status == 503 and "暂时无法读取" in await r.text()
        broken["on"] = False
        p = await page(client, "/figures")
        assert p.testids["kpi-orders"] == "1"
    finally:
        await client.close()


async def test_dates_in_the_form_limit_the_period_and_bad_ones_are_said(console: Console) -> None:
    before, after = "2026-11-19T23:59:00+00:00", "2026-11-20T00:00:00+00:00"
    feed(
        console,
        [
            decision("o1", TAIYUAN_L2, "recognisable", saving=20, at=before),
            decision("o2", TAIYUAN_L2, "recognisable", saving=20, at=after),
        ],
        [],
    )
    client = await console.client("steward")
    try:
        p = await page(client, "/figures?since=2026-11-20&until=2026-11-20&by=day")
        assert p.testids["kpi-orders"] == "1"
        assert [a["data-key"] for a, _c in p.tables["by-group"]] == ["2026-11-20"]
        assert p.ids["since"]["value"] == "2026-11-20" and p.ids["by"]["tag"] == "select"
        r = await client.get("/figures?since=next-week&by=nonsense")
        text = await r.text()
        assert r.status == 200 and "不是日期" in text
        assert Page(text).testids["kpi-orders"] == "2"
    finally:
        await client.close()


async def test_the_page_has_no_inline_script_and_loads_chart_js_from_the_hub(
    console: Console,
) -> None:
    feed(console, [decision("o1", TAIYUAN_L2, "recognisable", saving=20)], [])
    client = await console.client("taiyuan")
    try:
        r = await client.get("/figures")
        html = await r.text()
        scripts = re.findall(r"<script([^>]*)>(.*?)</script>", html, re.S)
        for attrs, body in scripts:
            assert 'type="application/json"' in attrs or (body.strip() == "" and "src=" in attrs)
        srcs = re.findall(r'<script[^>]*src="([^"]+)"', html)
        assert all(s.startswith("/static/") for s in srcs)
        assert any("vendor/chart.umd.min.js" in s for s in srcs)
        for src in srcs:
            asset = await client.get(src)
            assert asset.status == 200
        import json

        data = json.loads(re.search(r'id="figures-data">(.*?)</script>', html, re.S).group(1))  # type: ignore[union-attr]
        assert data["orders"] == [1] and data["saving_yuan"] == ["20.00"]
    finally:
        await client.close()


async def test_reasons_ranked_in_chinese_with_what_to_fix(console: Console) -> None:
    expired = {
        "record_id": "r1",
        "institution": LINGQIU,
        "institution_name": "灵丘县人民医院",
        "reason": "issuer-not-qualified",
        "rule": "qualification-expired",
        "detail": "灵丘县人民医院's HR qualification for CBC (…2025-12-31) did not cover it",
        "recognisable": False,
    }
    late = {
        "record_id": "r2",
        "institution": DATONG_L3,
        "reason": "outside-window",
        "rule": "expired",
        # as recognition writes it (services/recognition/decision.py, str(Window))
        "detail": f"the {SEVEN_DAYS} window ended at 2026-11-10T00:00:00+00:00",
        "recognisable": False,
    }
    no = "not-recognisable"
    decisions = [
        decision("o1", DATONG_L2, no, reason="issuer-not-qualified", matches=[expired]),
        decision("o2", DATONG_L3, no, reason="issuer-not-qualified", matches=[expired]),
        decision("o3", DATONG_L2, no, reason="not-in-catalog", item=None, category=None),
        decision("o4", DATONG_L2, no, reason="outside-window", matches=[late]),
        decision("o5", DATONG_L2, "recognisable", saving=20),
        decision("o6", TAIYUAN_L2, no, reason="not-in-catalog", item=None, category=None),
    ]
    fb = [
        feedback("a" * 32, DATONG_L2, "re-ordered", reason="emergency", at=AT),
        feedback("b" * 32, DATONG_L2, "re-ordered", reason="emergency", at=AT),
        feedback("b" * 32, DATONG_L2, "re-ordered", reason="emergency", at=AT),
        feedback("c" * 32, DATONG_L2, "re-ordered", reason="condition-changed", at=AT),
    ]
    local = "urn:oid:2.16.156.10011.1.99"
    orders = [
        order("o3", DATONG_L2, (local, "XYZ-001")),  # decided not-in-catalog: its code shows
        order("o5", DATONG_L2, (local, "CBC-LOCAL")),  # recognisable: its codes are not kept
        order("o6", TAIYUAN_L2, (local, "TY-9")),  # another prefecture's
    ]
    console.source.topics[ORDER_PLACED.name].extend(orders[:1])
    feed(console, decisions, fb)
    console.source.topics[ORDER_PLACED.name].extend(orders[1:])  # some come after their decision
    client = await console.client("datong")
    try:
        p = await page(client, "/reasons")
    finally:
        await client.close()
    ranked = [(a["data-reason"], c["count"]) for a, c in p.tables["reasons-not-recognised"]]
    assert ranked == [
        ("issuer-not-qualified", "2"),
        ("not-in-catalog", "1"),
        ("outside-window", "1"),
    ]
    assert [(a["data-reason"], c["count"]) for a, c in p.tables["reasons-feedback"]] == [
        ("emergency", "2"),
        ("condition-changed", "1"),
    ]
    [hr] = p.tables["fix-hr"]
    assert (hr[0]["data-institution"], hr[0]["data-item"], hr[0]["data-rule"]) == (
        LINGQIU,
        "CBC",
        "qualification-expired",
    )
    assert hr[1]["count"] == "2"
    [cat] = p.tables["fix-catalog"]
    assert cat[0]["data-institution"] == DATONG_L2  # not Taiyuan's: out of scope
    assert cat[0]["data-codes"] == "XYZ-001" and cat[1]["count"] == "1"
    kept = console.cache.facts
    assert kept.uncatalogued == {
        "o3": (f"{local}|XYZ-001|本院项目",),
        "o6": (f"{local}|TY-9|本院项目",),
    }
    [win] = p.tables["fix-window"]
    assert (win[0]["data-item"], win[0]["data-rule"]) == ("CBC", "expired")
    assert win[1]["window"] == SEVEN_DAYS


async def test_reasons_page_shows_the_registry_qualification_and_its_expiry(
    console: Console,
) -> None:
    expired = {
        "record_id": "r1",
        "institution": LINGQIU,
        "reason": "issuer-not-qualified",
        "rule": "qualification-expired",
        "detail": "",
        "recognisable": False,
    }
    feed(
        console,
        [
            decision(
                "o1",
                DATONG_L2,
                "not-recognisable",
                reason="issuer-not-qualified",
                matches=[expired],
            )
        ],
        [],
    )
    client = await console.client("steward")
    try:
        r = await client.get("/reasons")
        text = await r.text()
    finally:
        await client.close()
    assert "出具机构无该项目质控资格" in text and "issuer-not-qualified" in text
    assert "灵丘县人民医院" in text
    assert "2025-12-31" in text  # its lab qualification, with the day it expired
    assert 'href="#fix-hr"' in text


@pytest.mark.integration
def test_the_cache_reads_committed_data_from_a_real_broker(bootstrap: str, unique: str) -> None:
    """KafkaSource on a real broker: committed records only (an aborted transaction's are
    never counted), the figures equal report's for the same records, a refresh with nothing
    new reads nothing, and a new record is read on its own."""
    from services.common.envelope import Envelope
    from services.console.figures import KafkaSource
    from tests.support import create_topic, produce, produce_aborted

    decisions_topic, feedback_topic = f"test-decisions-{unique}", f"test-feedback-{unique}"
    orders_topic = f"test-orders-{unique}"
    create_topic(bootstrap, decisions_topic, 2)
    create_topic(bootstrap, feedback_topic, 1)
    create_topic(bootstrap, orders_topic, 2)

    def envelope(payload: dict[str, Any], kind: str) -> tuple[bytes, bytes]:
        at = payload.get("recorded_at") or payload.get("decided_at") or AT
        body = {k: v for k, v in payload.items() if k != "recorded_at"}
        env = Envelope(
            event_type=kind,
            source=payload.get("institution") or TAIYUAN_L2,
            occurred_at=datetime.fromisoformat(at),
            payload=body,
        )
        return str(body.get("master_patient_id")).encode(), env.to_bytes()

    decisions, fb = random_events(seed=13)
    produce(bootstrap, decisions_topic, (envelope(d, "decision") for d in decisions))
    produce(bootstrap, feedback_topic, (envelope(f, "feedback") for f in fb))
    uncatalogued = [d["order_record_id"] for d in decisions if d["reason"] == "not-in-catalog"]
    produce(
        bootstrap,
        orders_topic,
        (envelope(order(o, TAIYUAN_L2, ("urn:x", o)), "order") for o in uncatalogued),
    )
    ghost = decision("ghost", TAIYUAN_L2, "recognisable", saving=1000)
    produce_aborted(bootstrap, decisions_topic, [envelope(ghost, "decision")])

    reads = MetricCounter("reads", "test", ["outcome"], registry=CollectorRegistry())
    source = KafkaSource(
        bootstrap, decisions=decisions_topic, feedback=feedback_topic, orders=orders_topic
    )
    cache = FiguresCache(lambda: source, reads=reads)
    try:
        cache.refresh()
        got = count(cache.facts.latest.values(), cache.facts.feedback, REGISTRY)
        want = summarise(decisions, fb, REGISTRY)
        assert [(t.key, t.orders, t.recognisable, t.saving_yuan, t.reordered) for t in got] == [
            ((r.region, r.category), r.orders, r.recognisable, r.saving_yuan, r.reordered)
            for r in want
        ]
        assert "ghost" not in cache.facts.latest.orders
        latest_uncatalogued = {
            o.order for o in cache.facts.latest.values() if o.reason == "not-in-catalog"
        }
        assert set(cache.facts.uncatalogued) == latest_uncatalogued
        assert all(codes[0].startswith("urn:x|o") for codes in cache.facts.uncatalogued.values())
        cache.refresh()
        assert reads.labels("unchanged")._value.get() == 1
        produce(
            bootstrap,
            decisions_topic,
            [envelope(decision("late", DATONG_L2, "recognisable", saving=5), "decision")],
        )
        before = len(cache.facts.latest)
        cache.refresh()
        assert len(cache.facts.latest) == before + 1
        assert reads.labels("read")._value.get() == 2
    finally:
        cache.close()


def test_every_reason_code_has_its_chinese_name() -> None:
    """The pages name every reason the recognition service can give (decision.py) and every
    national re-order reason (feedback.py) in Chinese; a new code must be named here too."""
    from services.console.figures import FEEDBACK_NAMES, REASON_NAMES
    from services.recognition.decision import REASONS
    from services.recognition.feedback import NATIONAL_EXCEPTIONS

    assert set(REASON_NAMES) == set(REASONS)
    assert dict(FEEDBACK_NAMES) == NATIONAL_EXCEPTIONS
