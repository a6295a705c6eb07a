"""The simulated stream and its ground truth (pure, seeded).

A patient has one *episode* per simulated visit: earlier results at some hospital, then an
order at another (or the same) one. Each episode is drawn as a **kind** — a situation a
hospital region really produces — and realised with institutions, an item and times for
which the kind holds; :func:`mrhub_tools.simulate.truth.judge` checks the realisation against
the rules. Once every episode is drawn, each order's expected answer is computed by
:func:`mrhub_tools.simulate.truth.expect` over *all* the results the hub will hold for that
patient — which, by construction, is the kind's intended reason.

The stream is posted in two phases, because results and orders travel on different topics
and the recognition worker may read an order before a result posted earlier: phase 1 posts
every result (with amendments, withdrawals, resends and malformed messages), phase 2 — once
the recognition worker has applied them — every order (with resends and malformed ones).
The hub decides at processing time; result ages are chosen far from every window's edge
(inside: at most half the window; outside: at least one and a half windows and a day), so
a run may take many hours without changing a single expected answer.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Final

from mrhub_tools.simulate.population import (
    Person,
    PersonGen,
    mistype_card,
    pinyin_name,
    typo_name,
    typo_phone,
)
from mrhub_tools.simulate.region import SimInstitution
from mrhub_tools.simulate.truth import Expectation, ResultFact, expect, judge
from services.common.institutions import Institution
from services.recognition.catalog import Catalog, Item

#: Lab items with windows of days (inside-window kinds need room), then the hour-window ones.
LAB_ITEMS: Final = ("K", "NA", "GLU", "HBA1C", "ALT", "CREA", "TC", "TSH", "AFP", "PT")
SHORT_LAB_ITEMS: Final = ("CBC", "URINE-RT")
IMAGING_ITEMS: Final = ("CT-CHEST", "CT-HEAD", "MR-HEAD", "DR-CHEST", "US-ABD")
#: Items the catalogue recognises within one prefecture only (rules: {scope: prefecture}).
PREFECTURE_ITEMS: Final = ("CT-CHEST-ENH", "MR-HEAD-ENH")
#: An order code no catalogue item has: 25-hydroxyvitamin D.
NOT_IN_CATALOG: Final = ("http://loinc.org", "1989-3", "25-羟基维生素D")

#: kind → (intended reason, the rule that must fail or None, weight)
KINDS: Final[Mapping[str, tuple[str, str | None, float]]] = {
    "recognised": ("recognised", None, 0.25),
    "recognised-alliance": ("recognised", None, 0.06),
    "recognised-amended": ("recognised", None, 0.05),
    "recognised-same-hospital": ("recognised", None, 0.04),
    "no-prior-result": ("no-prior-result", None, 0.12),
    "withdrawn": ("no-prior-result", None, 0.04),
    "outside-window": ("outside-window", "expired", 0.12),
    "not-final": ("result-not-final", "status", 0.04),
    "not-qualified": ("issuer-not-qualified", None, 0.08),
    "direction": ("scope-not-satisfied", "direction", 0.07),
    "hr-scope": ("scope-not-satisfied", "hr-scope", 0.04),
    "prefecture": ("scope-not-satisfied", "outside-prefecture", 0.03),
    "not-in-catalog": ("not-in-catalog", None, 0.04),
}
#: Kinds a patient without a 身份证 can have: the hub knows them only by one hospital's 门诊号.
NO_CARD_KINDS: Final = ("recognised-same-hospital", "no-prior-result", "outside-window")
MALFORMED: Final[Mapping[str, int]] = {
    "invalid-json": 400,
    "bad-id-card": 422,
    "missing-effective": 422,
    "order-without-authored": 422,
    "unknown-type": 404,
}
MIN_AGE: Final = timedelta(hours=5)


@dataclass(frozen=True)
class Config:
    institutions: int
    patients: int
    days: int
    seed: int
    now: datetime  # the moment the stream ends (results and orders lie before it)
    today: date  # the region's day (qualification dates)
    salt: str = ""  # a run id: varies identifiers only, never the scenario
    card_regions: tuple[str, ...] | None = None
    no_card_share: float = 0.03
    malformed_share: float = 0.01
    resend_share: float = 0.04
    typo_share: float = 0.03


@dataclass(frozen=True)
class View:
    """A patient as one hospital registered them."""

    person: int
    institution: str
    card: str | None
    mz: str
    family: str
    given: str
    sex: str
    born: date
    phone: str
    address: str


@dataclass(frozen=True)
class Version:
    status: str
    issued_at: datetime
    value_shift: int = 0


@dataclass(frozen=True)
class ResultSpec:
    """One visit's results at one hospital: lab (several items, one report) or imaging (one
    study and its report). ``versions[0]`` goes in the visit's bundle; later versions of
    ``target`` (amendment, withdrawal) are posted on their own."""

    n: int
    category: str  # lab | imaging
    institution: str
    view: View
    items: tuple[str, ...]
    target: str  # the item the episode is about
    performed_at: datetime
    versions: tuple[Version, ...]
    resend: bool
    number: str  # 检验报告单号, or the Study Instance UID for imaging

    def facts(self) -> list[ResultFact]:
        """What the hub holds once every version was posted (companion lab items are posted
        final with the first version; only the target is amended or withdrawn)."""
        out = []
        first, last = self.versions[0], self.versions[-1]
        for item in self.items:
            if self.category == "lab":
                version = last if item == self.target else Version("final", first.issued_at)
                out.append(
                    ResultFact(
                        item,
                        self.institution,
                        version.status,
                        self.performed_at,
                        self.performed_at,
                        version.issued_at,
                    )
                )
            else:
                # the study (no issue time: its start is the anchor) and the report
                out.append(
                    ResultFact(item, self.institution, "available", self.performed_at, None, None)
                )
                out.append(
                    ResultFact(
                        item,
                        self.institution,
                        last.status,
                        self.performed_at,
                        None,
                        last.issued_at,
                    )
                )
        return out


@dataclass
class OrderSpec:
    n: int
    kind: str
    institution: str
    view: View
    item: str | None
    authored_at: datetime
    number: str
    resend: bool
    expected: Expectation | None = None
    story: str = ""


@dataclass(frozen=True)
class Request:
    """One HTTP request of the stream. ``ref`` points at what it builds: ("result", n,
    version) / ("order", n) / ("malformed", kind, n)."""

    phase: int
    chain: int
    institution: str
    ref: tuple[object, ...]
    expect_status: int
    result_events: int = 0
    order: int | None = None
    resend: bool = False


@dataclass
class Scenario:
    config: Config
    region: tuple[SimInstitution, ...]
    catalog: Catalog
    persons: list[Person]
    results: list[ResultSpec] = field(default_factory=list)
    orders: list[OrderSpec] = field(default_factory=list)
    malformed: list[tuple[str, str, View]] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    facts_by_identity: dict[str, list[ResultFact]] = field(default_factory=dict)

    @property
    def institutions(self) -> dict[str, Institution]:
        return {s.id: s.inst for s in self.region}

    def phase(self, n: int) -> list[Request]:
        return [r for r in self.requests if r.phase == n]

    def chains(self, phase: int) -> list[list[Request]]:
        by: dict[int, list[Request]] = {}
        for r in self.phase(phase):
            by.setdefault(r.chain, []).append(r)
        return list(by.values())

    def expected_result_events(self) -> int:
        return sum(r.result_events for r in self.requests)

    def expected_order_events(self) -> int:
        return sum(1 for r in self.requests if r.order is not None and not r.resend)

    def kind_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for o in self.orders:
            out[o.kind] = out.get(o.kind, 0) + 1
        return out


def _hash(*parts: object) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()


def identity_of(view: View) -> str:
    """What the hub links a record by: the 身份证, else that hospital's 门诊号."""
    return f"card:{view.card}" if view.card else f"mz:{view.institution}:{view.mz}"


class _Builder:
    def __init__(self, config: Config, region: Sequence[SimInstitution], catalog: Catalog):
        self.c = config
        self.region = tuple(region)
        self.catalog = catalog
        self.insts = {s.id: s.inst for s in region}
        self.sims = {s.id: s for s in region}
        self.rng = random.Random(f"scenario:{config.seed}")  # noqa: S311 - test data
        self.now = config.now
        self.scn = Scenario(config, self.region, catalog, [])
        in_force = {i.id for i in catalog.items_in_force(config.now)}
        self.lab: list[str] = [i for i in LAB_ITEMS if i in in_force]
        self.short_lab: list[str] = [i for i in SHORT_LAB_ITEMS if i in in_force]
        self.imaging: list[str] = [i for i in IMAGING_ITEMS if i in in_force]
        self.prefecture_items: list[str] = [
            i
            for i in PREFECTURE_ITEMS
            if i in in_force and catalog.rules_for(self.item(i)).scope == "prefecture"
        ]
        self.qualified: dict[str, list[str]] = {}
        for item_id in [*self.lab, *self.short_lab, *self.imaging, *self.prefecture_items]:
            item = self.item(item_id)
            self.qualified[item_id] = [
                s.id
                for s in self.region
                if any(
                    (q.item == item_id or q.category in item.qualification_categories)
                    and q.issued <= config.today <= q.expires
                    for q in s.inst.qualifications
                )
            ]
        self.ids = [s.id for s in self.region]
        self.chain = 0
        self.counter = 0

    def item(self, item_id: str) -> Item:
        found = self.catalog.item(item_id)
        if found is None:  # pragma: no cover - filtered on in-force ids above
            raise KeyError(item_id)
        return found

    # -- identities ---------------------------------------------------------------------

    def view(self, person: Person, institution: str) -> View:
        rng = random.Random(f"view:{self.c.seed}:{person.index}:{institution}")  # noqa: S311
        family, given, phone = person.family, person.given, person.phone
        if self.sims[institution].pinyin_names:
            family, given = pinyin_name(family, given)
        elif rng.random() < self.c.typo_share:
            given = typo_name(given, rng)
        if rng.random() < self.c.typo_share:
            phone = typo_phone(phone, rng)
        mz = "MZ" + _hash("mz", self.c.salt, person.index, institution)[:10].upper()
        return View(
            person.index,
            institution,
            person.card,
            mz,
            family,
            given,
            person.sex,
            person.born,
            phone,
            person.address,
        )

    # -- times --------------------------------------------------------------------------

    def age(self, item: Item, inside: bool) -> timedelta:
        w = item.window.duration
        if inside:
            lo, hi = max(MIN_AGE, w * 0.1), w * 0.5
        else:
            lo, hi = w * 1.5 + timedelta(days=1), w * 3 + timedelta(days=1)
        return lo + (hi - lo) * self.rng.random()

    def order_time(self, after: datetime | None) -> datetime:
        start = self.now - timedelta(days=self.c.days)
        end = self.now - timedelta(minutes=1)
        if after is not None:
            start = max(start, after + timedelta(minutes=20))
        if start >= end:
            return end
        return start + (end - start) * self.rng.random()

    # -- one episode --------------------------------------------------------------------

    def realise(
        self, kind: str, person: Person, used: set[str], home: str | None
    ) -> tuple[list[ResultSpec], OrderSpec] | None:
        """``kind`` for ``person`` with institutions and items for which it holds, or None."""
        rng = self.rng
        reason, rule, _ = KINDS[kind]
        for _ in range(80):
            if kind == "not-in-catalog":
                orderer = home or rng.choice(self.ids)
                return [], self._order(kind, person, orderer, None, None)
            pool: list[str]
            if kind == "prefecture":
                pool = list(self.prefecture_items)
            elif kind in ("not-final", "withdrawn"):
                pool = self.lab
            elif kind in ("outside-window", "no-prior-result"):
                pool = self.lab + self.short_lab + self.imaging
            else:
                pool = self.lab + self.imaging
            pool = [i for i in pool if i not in used]
            if not pool:
                return None
            item_id = rng.choice(pool)
            item = self.item(item_id)
            if kind == "no-prior-result":
                orderer = home or rng.choice(self.ids)
                return [], self._order(kind, person, orderer, item_id, None)
            if kind == "not-qualified":
                issuers = [i for i in self.ids if i not in self.qualified[item_id]]
            else:
                issuers = self.qualified[item_id]
            if home is not None:
                issuers = [i for i in issuers if i == home]
            if not issuers:
                continue
            issuer = self.insts[rng.choice(issuers)]
            receiver = self._receiver(kind, issuer, home)
            if receiver is None:
                continue
            inside = kind != "outside-window"
            performed = self.now - self.age(item, inside)
            versions = self._versions(kind, performed)
            spec = self._result(person, issuer.id, item_id, performed, versions, used)
            verdict_status = versions[-1].status
            if kind == "withdrawn":
                verdict_status = "final"  # it would have been recognised
            fact = ResultFact(
                item_id,
                issuer.id,
                verdict_status,
                performed,
                performed if item.category == "lab" else None,
                versions[-1].issued_at,
            )
            verdict = judge(fact, item, self.catalog, self.insts, receiver, self.now)
            want = "recognised" if kind == "withdrawn" else reason
            if verdict.reason != want or (rule is not None and verdict.rule != rule):
                continue
            self.scn.results.append(spec)
            order = self._order(kind, person, receiver.id, item_id, versions[-1].issued_at)
            order.story = verdict.why
            self.counter += 1
            return [spec], order
        return None

    def _receiver(self, kind: str, issuer: Institution, home: str | None) -> Institution | None:
        rng = self.rng
        if home is not None or kind == "recognised-same-hospital":
            return issuer
        others = [s.inst for s in self.region if s.id != issuer.id]
        if kind == "recognised-alliance":
            others = [o for o in others if set(o.alliances) & set(issuer.alliances)]
        elif kind == "direction":
            others = [
                o
                for o in others
                if o.level > issuer.level and not set(o.alliances) & set(issuer.alliances)
            ]
        elif kind in ("hr-scope", "prefecture"):
            others = [
                o
                for o in others
                if o.region_code[:4] != issuer.region_code[:4]
                and not set(o.alliances) & set(issuer.alliances)
            ]
        return rng.choice(others) if others else None

    def _versions(self, kind: str, performed: datetime) -> tuple[Version, ...]:
        rng = self.rng
        issued = performed + timedelta(minutes=rng.randrange(40, 180))
        if kind == "not-final":
            return (Version(rng.choice(("preliminary", "registered")), issued),)
        if kind == "withdrawn":
            return (
                Version("final", issued),
                Version("entered-in-error", issued + timedelta(hours=1)),
            )
        if kind == "recognised-amended":
            if rng.random() < 0.5:
                return (
                    Version("preliminary", issued),
                    Version("final", issued + timedelta(minutes=50), 1),
                )
            return (Version("final", issued), Version("amended", issued + timedelta(minutes=70), 2))
        return (Version("final", issued),)

    def _result(
        self,
        person: Person,
        issuer: str,
        target: str,
        performed: datetime,
        versions: tuple[Version, ...],
        used: set[str],
    ) -> ResultSpec:
        item = self.item(target)
        n = len(self.scn.results)
        if item.category == "lab":
            # companions: other items of the same report, never one of this patient's others
            extra = [i for i in self.lab if i != target and i not in used]
            companions = tuple(self.rng.sample(extra, self.rng.randrange(0, 3)))
            items = (target, *companions)
            number = "LR" + _hash("lr", self.c.salt, n)[:14].upper()
            category = "lab"
        else:
            items = (target,)
            number = f"2.25.{int(_hash('uid', self.c.salt, n)[:30], 16)}"
            category = "imaging"
        spec = ResultSpec(
            n,
            category,
            issuer,
            self.view(person, issuer),
            items,
            target,
            performed,
            versions,
            self.rng.random() < self.c.resend_share,
            number,
        )
        return spec

    def _order(
        self,
        kind: str,
        person: Person,
        receiver: str,
        item: str | None,
        after: datetime | None,
    ) -> OrderSpec:
        n = len(self.scn.orders)
        order = OrderSpec(
            n,
            kind,
            receiver,
            self.view(person, receiver),
            item,
            self.order_time(after),
            "SQ" + _hash("sq", self.c.salt, n)[:14].upper(),
            self.rng.random() < self.c.resend_share,
        )
        self.scn.orders.append(order)
        return order

    # -- the whole stream -----------------------------------------------------------------

    def build(self) -> Scenario:
        rng = self.rng
        gen = PersonGen(
            self.c.seed,
            salt=self.c.salt,
            no_card_share=self.c.no_card_share,
            card_regions=self.c.card_regions,
        )
        kinds = list(KINDS)
        weights = [KINDS[k][2] for k in kinds]
        for _ in range(self.c.patients):
            person = next(gen)
            self.scn.persons.append(person)
            home = None
            if person.card is None:
                local = [i for i in self.ids if self.insts[i].region_code[:4] == person.prefecture]
                home = rng.choice(local or self.ids)
            episodes = 1 + sum(rng.random() < 0.3 for _ in range(self.c.days))
            used: set[str] = set()
            for _ in range(episodes):
                drawn = rng.choices(kinds, weights)[0]
                kind = drawn if home is None else rng.choice(NO_CARD_KINDS)
                done = self.realise(kind, person, used, home)
                if done is None:
                    done = self.realise("no-prior-result", person, used, home)
                if done is None:
                    continue
                results, order = done
                for r in results:
                    used.update(r.items)
                if order.item:
                    used.add(order.item)
        self._label()
        self._requests()
        return self.scn

    def _label(self) -> None:
        facts: dict[str, list[ResultFact]] = {}
        for r in self.scn.results:
            facts.setdefault(identity_of(r.view), []).extend(r.facts())
        self.scn.facts_by_identity = facts
        for o in self.scn.orders:
            item = self.item(o.item) if o.item else None
            o.expected = expect(
                item,
                self.insts[o.institution],
                facts.get(identity_of(o.view), []),
                self.catalog,
                self.insts,
                self.now,
            )
            if not o.story:
                o.story = o.expected.why

    def _requests(self) -> None:
        rng = self.rng
        reqs: list[Request] = []
        chains: list[list[Request]] = []

        def chain(items: list[Request]) -> None:
            chains.append(items)

        for r in self.scn.results:
            events = len(r.items) + 1 if r.category == "lab" else 2
            first = Request(1, 0, r.institution, ("result", r.n, 0), 200, events)
            steps = [first]
            if r.resend:
                steps.append(Request(1, 0, r.institution, ("result", r.n, 0), 200, 0, resend=True))
            for v in range(1, len(r.versions)):
                steps.append(Request(1, 0, r.institution, ("result", r.n, v), 201, 1))
            chain(steps)
        for o in self.scn.orders:
            steps = [Request(2, 0, o.institution, ("order", o.n), 200, order=o.n)]
            if o.resend:
                steps.append(
                    Request(2, 0, o.institution, ("order", o.n), 200, order=o.n, resend=True)
                )
            chain(steps)
        n_bad = round(self.c.malformed_share * len(chains))
        bad_kinds = list(MALFORMED)
        for k in range(n_bad):
            kind = bad_kinds[k % len(bad_kinds)]
            person = rng.choice(self.scn.persons)
            inst = rng.choice(self.ids)
            view = self.view(person, inst)
            if kind == "bad-id-card":
                card = view.card or "140105198001010011"
                view = replace(view, card=mistype_card(card, rng))
            self.scn.malformed.append((kind, inst, view))
            phase = 2 if kind == "order-without-authored" else 1
            chain([Request(phase, 0, inst, ("malformed", kind, k), MALFORMED[kind])])
        rng.shuffle(chains)
        for number, steps in enumerate(chains):
            reqs += [replace(s, chain=number) for s in steps]
        self.scn.requests = reqs


def build_scenario(config: Config, region: Sequence[SimInstitution], catalog: Catalog) -> Scenario:
    """The whole stream and its ground truth; the same ``config`` gives the same scenario."""
    return _Builder(config, region, catalog).build()


def iter_expected(scn: Scenario) -> Iterator[tuple[OrderSpec, Expectation]]:
    for o in scn.orders:
        if o.expected is None:  # pragma: no cover - build_scenario labels every order
            raise ValueError(f"order {o.n} has no expected answer")
        yield o, o.expected


def expected_saving(scn: Scenario) -> Decimal:
    return sum((e.saving_yuan for _, e in iter_expected(scn)), Decimal(0))
