"""The console's browser tests: a real hub fed by ``mrhub simulate``, the console as its own
process, a person of each role, and Debian's headless Chromium driven by Playwright.

One hub per module (:func:`site`): ``mrhub simulate prepare`` writes a region of 8 hospitals
in two prefectures (太原 140100, 大同 140200); the gateway, patient index and recognition run
against it (:func:`tests.hub.start_hub`); ``mrhub simulate run`` posts a day of 80 patients'
visits (身份证 numbers of region 140288, which no other test uses: the session broker is
shared). On top of that the fixture posts what the pages need and a simulation does not
make: two pairs of namesakes that the patient index queues for review (as
tests/integration/test_namesakes.py does), a merge for a steward to undo, and patients known
to one hospital, the other, or both (for the hospital viewers).

The browser is ``/usr/bin/chromium`` (``apt-get install chromium``; ``make setup`` installs
it), never a Playwright download. Without it the tests are skipped, except in CI (``CI``
set), where that is a failure.

``MRHUB_SCREENSHOTS=<dir>``: the tests also save a screenshot of each page there
(docs/console/*.png are made so).
"""

from __future__ import annotations

import base64
import json
import os
import random
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from services.common import harness
from services.common.broker import free_port
from services.common.envelope import Envelope
from services.common.identifiers import ID_CARD_SYSTEM, OUTPATIENT_NO_SYSTEM
from services.common.institutions import Registry, hash_token
from services.common.topics import DECISION_MADE
from services.console.auth import hash_password
from tests.conftest import REPO
from tests.fhir_samples import dumps, gb11643, observation
from tests.hub import Hub, start_hub
from tests.support import consume_all, run_module

CHROMIUM = Path("/usr/bin/chromium")
#: Debian's Chromium, headless, with nothing of its own reaching out (this machine's network
#: is closed, and a console page must need nothing but the hub anyway)
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--lang=zh-CN",  # dates in the forms as people here read them
]
#: the simulated patients' 身份证 region, and the region of the cards posted here
SIM_CARD_REGION = "140288"
OWN_CARD_REGION = "140287"
LINKED = "mrhub.patient.identity-linked.v1"
FHIR = "application/fhir+json"
WIDTH = 1280
MAX_HEIGHT = 1600


@dataclass(frozen=True)
class Person:
    name: str
    role: str
    scope: str
    display: str
    password: str


@dataclass(frozen=True)
class Patient:
    """A patient this module posted: her 身份证, name, and each hospital's 门诊号 for her."""

    card: str
    name: str
    numbers: dict[str, str]  # institution id -> 门诊号
    master: str


@dataclass
class Site:
    """The hub, the console and what the fixture put in them."""

    url: str  # the console
    hub: Hub
    bootstrap: str
    region_dir: Path
    registry: Registry
    steward_token: str
    people: dict[str, Person]
    #: two simulated hospitals: A in 太原 (140100), B in 大同 (140200)
    a: str
    b: str
    tokens: dict[str, str]
    #: pairs of masters the patient index queued for review
    review_pairs: list[frozenset[str]]
    #: (source, target) of the merge a steward is to undo
    merged: tuple[str, str]
    #: patients known to A only, to B only, to both
    patients: dict[str, Patient]
    #: a simulated patient whose order at one hospital was recognised on another's result:
    #: (master patient id, the ordering hospital, the hospital of the result)
    recognised: tuple[str, str, str]
    console_log: Path
    #: the UTC day the simulation started: the figures' period is from it to today
    first_day: date
    #: every URL the browser asked for, from every page of the module
    requests: list[str] = field(default_factory=list)
    setup_s: float = 0.0

    # -- the patient index's steward API (the state a page's action must change)

    def steward(self, method: str, path: str, body: Any = None) -> httpx.Response:
        return httpx.request(
            method,
            f"{self.hub.base('patient_index')}{path}",
            content=None if body is None else json.dumps(body),
            headers={
                "Authorization": f"Bearer {self.steward_token}",
                "Content-Type": "application/json",
                "X-Steward": "zhao.steward",  # who made the merge a steward undoes
            },
            timeout=30,
        )

    def reviews(self) -> list[dict[str, Any]]:
        resp = self.steward("GET", "/reviews")
        assert resp.status_code == 200, resp.text
        items: list[dict[str, Any]] = resp.json()["items"]
        return items

    def review_of(self, pair: frozenset[str]) -> dict[str, Any] | None:
        for item in self.reviews():
            if frozenset((item["master_patient_id"], item["candidate_master_patient_id"])) == pair:
                return item
        return None

    def master(self, master_patient_id: str) -> dict[str, Any]:
        resp = self.steward("GET", f"/patients/{master_patient_id}")
        assert resp.status_code == 200, resp.text
        doc: dict[str, Any] = resp.json()
        return doc

    def resolve(self, patient: str, institution: str = "") -> str | None:
        resp = self.steward(
            "POST", "/internal/resolve", {"patient": patient, "institution": institution}
        )
        return str(resp.json()["master_patient_id"]) if resp.status_code == 200 else None

    def events(
        self, where: Callable[[dict[str, Any]], bool], *, expect: int = 1, timeout_s: float = 60
    ) -> list[Envelope]:
        """identity-linked events for which ``where(payload)`` holds, once ``expect`` have
        arrived (or the time ran out: the caller asserts on what is there)."""
        found: list[Envelope] = []
        deadline = time.monotonic() + timeout_s
        while True:
            found = [
                e
                for e in (Envelope.from_bytes(r.value) for r in consume_all(self.bootstrap, LINKED))
                if where(e.payload)
            ]
            if len(found) >= expect or time.monotonic() > deadline:
                return found
            time.sleep(0.5)  # between reads of the topic, not a wait for a condition

    def hospital(self, institution: str) -> str:
        inst = self.registry.get(institution)
        assert inst is not None
        return inst.name

    def post(self, institution: str, doc: Any, path: str = "/fhir") -> httpx.Response:
        resp = httpx.post(
            f"{self.hub.url}{path}",
            content=dumps(doc),
            headers={
                "Authorization": f"Bearer {self.tokens[institution]}",
                "Content-Type": FHIR,
            },
            timeout=30,
        )
        assert resp.status_code in (200, 201), resp.text
        return resp


# ----------------------------------------------------------------------------- the browser


def _chromium_or_skip() -> None:
    missing = []
    if not CHROMIUM.exists():
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright package")
    if missing:
        why = "the console's browser tests need " + " and ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    _chromium_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def open_as(browser: Any, site: Site, who: str | None) -> Any:
    """A fresh browser window (its own cookies), signed in as person ``who`` through the
    sign-in form (or at the sign-in page when ``who`` is None). Every request it makes is
    recorded in ``site.requests``."""
    context = browser.new_context(
        viewport={"width": WIDTH, "height": 900}, locale="zh-CN", timezone_id="Asia/Shanghai"
    )
    context.set_default_timeout(30_000)
    context.on("request", lambda request: site.requests.append(request.url))
    page = context.new_page()
    page.goto(f"{site.url}/login")
    if who is not None:
        sign_in(page, site.people[who])
    return page


def sign_in(page: Any, person: Person) -> None:
    page.fill("#username", person.name)
    page.fill("#password", person.password)
    page.click("#sign-in")
    page.wait_for_url(lambda url: not url.endswith("/login"))


def shoot(page: Any, name: str) -> None:
    """Save a screenshot of the page as ``$MRHUB_SCREENSHOTS/<name>.png`` (when set):
    1280 px wide, the page down to its footer (at most 1600 px)."""
    out = os.environ.get("MRHUB_SCREENSHOTS")
    if not out:
        return
    Path(out).mkdir(parents=True, exist_ok=True)
    bottom = page.evaluate(
        "() => { const f = document.querySelector('footer');"
        " return f ? f.getBoundingClientRect().bottom + window.scrollY + 16"
        " : document.documentElement.scrollHeight; }"
    )
    path = Path(out) / f"{name}.png"
    page.screenshot(
        path=str(path),
        full_page=True,
        clip={"x": 0, "y": 0, "width": WIDTH, "height": min(int(bottom), MAX_HEIGHT)},
        animations="disabled",
    )
    _smaller(path)


def _smaller(path: Path) -> None:
    """A page's screenshot in 256 colours (a third of the size; text and charts look the
    same), when Pillow is there."""
    try:
        from PIL import Image
    except ImportError:
        return
    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)


# ----------------------------------------------------------------------------- the hub


def _cli(*args: str, timeout: float, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        check=False,
    )
    assert done.returncode == 0, f"mrhub {' '.join(args[:2])}: {done.stderr[-3000:]}"
    return done.stdout


def mrhub_report(site: Site, since: date, until: date) -> dict[str, Any]:
    """``mrhub report --json`` for the period, against the hub's broker and registry."""
    out = _cli(
        "report", "--json", "--bootstrap", site.bootstrap,
        "--since", since.isoformat(), "--until", until.isoformat(),
        timeout=120, env={"MRHUB_INSTITUTIONS_PATH": str(site.hub.registry)},
    )  # fmt: skip
    doc: dict[str, Any] = json.loads(out)
    return doc


_RNG = random.Random()


def _birth_date() -> str:
    """A birth date of 1995–2009 (other modules' namesakes are born 1940–1994)."""
    return date.fromordinal(date(1995, 1, 1).toordinal() + _RNG.randrange(5400)).isoformat()


def _patient_bundle(
    institution: str,
    *,
    number: str,
    name: str,
    sex: str,
    birth: str,
    card: str | None = None,
    phone: str | None = None,
    address: str | None = None,
) -> dict[str, Any]:
    """A Patient as one hospital's HIS knows her and one result of hers."""
    # a 门诊号 with no assigner is the posting hospital's own
    identifiers: list[dict[str, Any]] = [{"system": OUTPATIENT_NO_SYSTEM, "value": number}]
    if card:
        identifiers.insert(0, {"system": ID_CARD_SYSTEM, "value": card})
    patient: dict[str, Any] = {
        "resourceType": "Patient",
        "identifier": identifiers,
        "name": [{"text": name}],
        "gender": sex,
        "birthDate": birth,
    }
    if phone:
        patient["telecom"] = [{"system": "phone", "value": phone}]
    if address:
        patient["address"] = [{"text": address, "postalCode": "030006"}]
    p_url = f"urn:uuid:{uuid.uuid4()}"
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
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": observation(institution, subject={"reference": p_url}),
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }


def _wait(condition: Callable[[], Any], what: str, deadline_s: float = 120) -> Any:
    return harness.wait_until(condition, deadline_s=deadline_s, what=what)


def _number(institution: str, number: str) -> str:
    return f"{OUTPATIENT_NO_SYSTEM}|{number}"


def _review_pair(site: Site, name: str) -> frozenset[str]:
    """Two different women of one name, sex and birth date, one at A and one at B, with
    different phones and addresses and no 身份证: the patient index cannot tell and queues
    them for a steward (tests/integration/test_patient_index.py's ``_review_pair``)."""
    birth = _birth_date()
    tag = secrets.token_hex(4).upper()
    first = _patient_bundle(
        site.a, number=f"RA{tag}", name=name, sex="female", birth=birth,
        phone="13911112222", address="山西省太原市小店区平阳路 12 号",
    )  # fmt: skip
    site.post(site.a, first)
    m_a = _wait(lambda: site.resolve(_number(site.a, f"RA{tag}"), site.a), f"{name} at A resolved")
    # A's record reaches its blocks before B's arrives: a steward's $match finds her
    demographics = {k: v for k, v in first["entry"][0]["resource"].items() if k != "identifier"}

    def in_block() -> bool:
        resp = site.steward("POST", "/fhir/Patient/$match", demographics)
        entries = resp.json().get("entry", []) if resp.status_code == 200 else []
        return m_a in [e["resource"]["id"] for e in entries]

    _wait(in_block, f"{name} at A in her block")
    site.post(
        site.b,
        _patient_bundle(
            site.b, number=f"RB{tag}", name=name, sex="female", birth=birth,
            phone="13700003333", address="山西省大同市平城区永泰街 5 号",
        ),
    )  # fmt: skip
    m_b = _wait(lambda: site.resolve(_number(site.b, f"RB{tag}"), site.b), f"{name} at B resolved")
    assert m_a != m_b, f"the namesakes {name} were linked, not queued for review"
    pair = frozenset((m_a, m_b))
    _wait(lambda: site.review_of(pair), f"the review of the namesakes {name}")
    return pair


_SEQ = iter(range(_RNG.randrange(100, 300) * 2 + 1, 999, 2))


def _card(birth: str, sex: str) -> str:
    """A valid 身份证 of region 140287 agreeing with the birth date and sex."""
    seq = next(_SEQ) - (1 if sex == "female" else 0)
    return gb11643(f"{OWN_CARD_REGION}{birth.replace('-', '')}{seq:03d}")


def _known_patient(site: Site, name: str, sex: str, hospitals: tuple[str, ...]) -> Patient:
    """A patient with a 身份证 whom ``hospitals`` each know by their own 门诊号."""
    birth = _birth_date()
    card = _card(birth, sex)
    numbers = {inst: f"MZ{secrets.token_hex(4).upper()}" for inst in hospitals}
    for inst in hospitals:
        site.post(
            inst,
            _patient_bundle(inst, number=numbers[inst], name=name, sex=sex, birth=birth, card=card),
        )
    master: str = _wait(lambda: site.resolve(card), f"{name}'s card resolved")
    for inst in hospitals:

        def resolved(inst: str = inst) -> bool:
            return site.resolve(_number(inst, numbers[inst]), inst) == master

        _wait(resolved, f"{name}'s 门诊号 at {inst} resolved to her master")
    return Patient(card, name, numbers, master)


def _recognised_elsewhere(bootstrap: str, registry: Registry) -> tuple[str, str, str]:
    ids = set(registry.ids)
    for record in consume_all(bootstrap, DECISION_MADE.name):
        d = Envelope.from_bytes(record.value).payload
        ordering = d.get("ordering_institution")
        if d.get("outcome") != "recognisable" or ordering not in ids:
            continue
        issuers = [m["institution"] for m in d.get("matches") or [] if m.get("recognisable")]
        elsewhere = [i for i in issuers if i != ordering and i in ids]
        if elsewhere and d.get("master_patient_id"):
            return str(d["master_patient_id"]), str(ordering), elsewhere[0]
    raise AssertionError("the simulation recognised no order on another hospital's result")


def _people(region: Registry, a: str, b: str) -> dict[str, Person]:
    def pw() -> str:
        return secrets.token_urlsafe(12)

    return {
        p.name: p
        for p in (
            Person("wang.console", "steward", "140000", "王管理员", pw()),
            Person("ty.region", "region", "140100", "太原市卫健委", pw()),
            Person("sx.province", "region", "140000", "山西省卫健委", pw()),
            Person("a.hospital", "hospital", a, region.get(a).name + "（查看）", pw()),  # type: ignore[union-attr]
            Person("b.hospital", "hospital", b, region.get(b).name + "（查看）", pw()),  # type: ignore[union-attr]
        )
    }


@pytest.fixture(scope="module")
def site(bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    _chromium_or_skip()  # before minutes of setup
    started = time.monotonic()
    tmp = tmp_path_factory.mktemp("console")
    region_dir = tmp / "region"
    _cli("simulate", "prepare", "--dir", str(region_dir), "--institutions", "8", "--seed", "20",
         timeout=120)  # fmt: skip
    registry_path = region_dir / "institutions.yaml"
    registry = Registry.load(registry_path)
    tokens = {k: str(v) for k, v in json.loads((region_dir / "tokens.json").read_text()).items()}
    by_prefecture = {
        pref: [i for i in registry.ids if registry.get(i).prefecture_code == pref]  # type: ignore[union-attr]
        for pref in ("140100", "140200")
    }
    a, b = by_prefecture["140100"][0], by_prefecture["140200"][0]
    steward_token = "mrs_" + secrets.token_urlsafe(32)
    hub = start_hub(
        bootstrap,
        tmp,
        registry_path,
        env={"MRHUB_PATIENT_INDEX__STEWARD_TOKEN_HASHES": json.dumps([hash_token(steward_token)])},
    )
    console_proc = None
    try:
        people = _people(registry, a, b)
        users = tmp / "console-users.yaml"
        users.write_text(
            yaml.safe_dump(
                {
                    "users": [
                        {
                            "name": p.name,
                            "display": p.display,
                            "role": p.role,
                            "scope": p.scope,
                            "password": hash_password(p.password),
                        }
                        for p in people.values()
                    ]
                },
                allow_unicode=True,
            )
        )
        port = free_port()
        console_log = tmp / "console.log"
        env = {
            **hub.env("ingest"),
            "MRHUB_CONSOLE__PORT": str(port),
            "MRHUB_CONSOLE__USERS_PATH": str(users),
            "MRHUB_CONSOLE__SESSION_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
            "MRHUB_CONSOLE__STEWARD_TOKEN": steward_token,
            "MRHUB_CONSOLE__SECURE_COOKIES": "false",
            "MRHUB_CONSOLE__INGEST_URL": hub.url,
            # no imaging index in this hub: the operations page shows it as down
            "MRHUB_CONSOLE__IMAGING_URL": f"http://127.0.0.1:{free_port()}",
        }
        console_proc = run_module(["-m", "services.cli", "serve", "console"], env, console_log)
        url = f"http://127.0.0.1:{port}"
        harness.wait_ready(console_proc, f"{url}/readyz", deadline_s=120, log_path=console_log)

        first_day = datetime.now(UTC).date()
        summary = json.loads(
            _cli(
                "simulate", "run", "--dir", str(region_dir), "--patients", "80", "--days", "1",
                "--url", hub.url, "--bootstrap", bootstrap, "--json", "--no-progress",
                "--card-regions", SIM_CARD_REGION, "--min-agreement", "0",
                timeout=600,
            )
        )  # fmt: skip
        assert summary["lost"] == 0 and summary["orders"] > 0, summary
        site = Site(
            url=url,
            hub=hub,
            bootstrap=bootstrap,
            region_dir=region_dir,
            registry=registry,
            steward_token=steward_token,
            people=people,
            a=a,
            b=b,
            tokens=tokens,
            review_pairs=[],
            merged=("", ""),
            patients={},
            recognised=_recognised_elsewhere(bootstrap, registry),
            console_log=console_log,
            first_day=first_day,
        )
        site.review_pairs = [_review_pair(site, "孙秀英"), _review_pair(site, "周桂兰")]
        x = _known_patient(site, "郑国强", "male", (a,))
        y = _known_patient(site, "郑国庆", "male", (b,))
        resp = site.steward(
            "POST", "/patients/$merge",
            {"source": y.master, "target": x.master, "reason": "测试：误合并，待撤销"},
        )  # fmt: skip
        assert resp.status_code == 202, resp.text
        _wait(lambda: site.master(y.master).get("merged_into") == x.master, "the merge applied")
        site.merged = (y.master, x.master)
        site.patients = {
            "merged-source": y,
            "merged-target": x,
            "a-only": _known_patient(site, "吴丽娟", "female", (a,)),
            "b-only": _known_patient(site, "冯建华", "male", (b,)),
            "both": _known_patient(site, "陈淑珍", "female", (a, b)),
        }
        site.setup_s = time.monotonic() - started
        yield site
    finally:
        if console_proc is not None:
            harness.stop_all([console_proc])
        hub.stop()
