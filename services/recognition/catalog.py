"""The recognition catalogue: which items are recognised, for how long, where, at what price.

The catalogue is versioned data, one YAML file per region and version under
``config/catalog/`` (format: ``docs/recognition.md``). This module reads and checks it and
answers two questions, without I/O once loaded:

- *which item is this?* — :meth:`Catalog.find_item` maps a posted record (its codings, and
  for imaging its modality, body part and contrast) to an item; :meth:`Catalog.lookup` and
  :meth:`Catalog.lookup_token` do the same for one posted ``system|code``. A hospital's
  local (LIS/RIS/HIS) codes are mapped per institution: they count only when that
  institution posts them.
- *what is in force at time T?* — :meth:`Catalog.items_in_force`,
  :meth:`CatalogSet.catalog_for`.

Every problem found while loading is reported at once in a :class:`CatalogError`, each line
naming the file, the item (index and id) and the field.

Dates (``effective_from`` / ``effective_to``, both inclusive) are calendar days in China
time (UTC+8); a datetime is compared by its date in UTC+8.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from services.common.config_yaml import ConfigYamlError, load_mapping
from services.common.errors import ConfigError
from services.common.identifiers import PROVINCE_CODES

#: China Standard Time (no daylight saving): catalogue dates are days in it.
CHINA_TZ: Final = timezone(timedelta(hours=8), "UTC+08:00")

LOINC_SYSTEM: Final = "http://loinc.org"
SNOMED_SYSTEM: Final = "http://snomed.info/sct"

#: The default place of the shipped catalogues (relative to the working directory).
DEFAULT_CATALOG_PATH: Final = Path("config/catalog")

Category = Literal["lab", "imaging", "ultrasound", "ecg", "pathology"]
WindowUnit = Literal["hours", "days"]
Anchor = Literal["specimen-collection", "report-issue"]
WindowBasis = Literal["published", "default"]
Scope = Literal["region", "prefecture", "alliance"]

CATEGORIES: Final[tuple[Category, ...]] = ("lab", "imaging", "ultrasound", "ecg", "pathology")

#: The category a canonical record (``result-indexed``) of an item carries, and the
#: category-wide HR qualifications (``config/institutions.yaml``) that cover it besides one
#: naming the item's own category: ultrasound is 检查 like any imaging.
RECORD_CATEGORY: Final[Mapping[Category, str]] = {
    "lab": "lab",
    "imaging": "imaging",
    "ultrasound": "imaging",
    "ecg": "ecg",
    "pathology": "pathology",
}

_ITEM_ID = r"^[A-Z0-9]+(?:-[A-Z0-9]+)*$"
_REGION = re.compile(r"[0-9]{6}")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class CatalogError(ConfigError):
    """A catalogue file (or directory) is unreadable or invalid; ``problems`` lists why."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = tuple(problems)
        head = f"{source}: invalid recognition catalogue ({len(self.problems)} problem"
        head += "s):" if len(self.problems) != 1 else "):"
        super().__init__("\n  - ".join([head, *self.problems]))


# ── the data model ───────────────────────────────────────────────────────────────────────


class Coding(BaseModel):
    """One coding as posted (``system`` may be absent). Unknown members are ignored."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    system: str | None = None
    code: str = Field(min_length=1)
    display: str | None = None


class Window(_Frozen):
    """How long a result stays recognisable, from which moment.

    ``basis`` says whether the length is a published figure (``source`` names it) or a
    default the hub chose where nothing is published (``docs/recognition.md`` says why).
    """

    length: int = Field(gt=0)
    unit: WindowUnit
    anchor: Anchor
    basis: WindowBasis
    source: str = ""

    @property
    def duration(self) -> timedelta:
        return timedelta(hours=self.length) if self.unit == "hours" else timedelta(days=self.length)

    def __str__(self) -> str:
        return f"{self.length} {self.unit} from {self.anchor}"


class ImagingSpec(_Frozen):
    """What an imaging item is matched on: modality, body part, contrast — never a name.

    ``modalities``: DICOM modality codes (``CT``, ``MR``, ``DX``, ``CR``, ``US``…), any of
    which identifies the item; ``body_part``: the DICOM Body Part Examined term (``CHEST``);
    ``body_sites``: SNOMED CT codes meaning the same part; ``contrast``: ``true`` for an
    enhanced (增强) examination, ``false`` for a plain one (平扫).
    """

    modalities: tuple[str, ...] = Field(min_length=1)
    body_part: str = Field(min_length=1)
    body_sites: tuple[str, ...] = ()
    contrast: bool

    @field_validator("modalities")
    @classmethod
    def _upper(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(v.strip().upper() for v in value)


class ItemCodes(_Frozen):
    """The catalogue's own codes of an item (a hospital's local codes are in ``local_codes``).

    ``provincial`` and ``price`` are in the systems the file declares in ``code_systems``;
    ``loinc`` lists LOINC codes (only where the mapping is certain); ``other`` any further
    codings, each with its system.
    """

    provincial: str | None = None
    price: str | None = None
    loinc: tuple[str, ...] = ()
    other: tuple[Coding, ...] = ()


class ScopeRules(_Frozen):
    """Where and between whom a result of an item is recognised (a region's defaults).

    Fixed by the national rules and not configurable: the same level recognises the same
    level, a lower level recognises a higher one, and members of one 医联体 recognise each
    other. Configurable:

    - ``scope``: ``region`` (anywhere in the catalogue's region), ``prefecture`` (issuer and
      receiver in the same prefecture-level city), ``alliance`` (only within a shared 医联体);
    - ``upper_recognises_lower``: a higher level recognises a lower one (a region-wide pilot),
      and ``pilot_institutions``: receiving institutions allowed to do so even when it is off;
    - ``exclude_private``: results of private (民营) institutions are not recognised;
    - ``tertiary_a_peers_only``: a 三甲 hospital recognises only 三甲 hospitals' results.
    """

    scope: Scope = "region"
    upper_recognises_lower: bool = False
    pilot_institutions: tuple[str, ...] = ()
    exclude_private: bool = False
    tertiary_a_peers_only: bool = False


class RulesOverride(_Frozen):
    """An item's exceptions to the file's ``rules`` (unset fields keep the file's value)."""

    scope: Scope | None = None
    upper_recognises_lower: bool | None = None
    pilot_institutions: tuple[str, ...] | None = None
    exclude_private: bool | None = None
    tertiary_a_peers_only: bool | None = None


class ExceptionReason(_Frozen):
    """A region's own reason for re-ordering despite a recognisable result (on top of the
    national list in :mod:`services.recognition.feedback`)."""

    code: str = Field(pattern=r"^[a-z][a-z0-9-]{1,40}$")
    name: str = Field(min_length=1, description="As shown to the doctor (Chinese)")
    description: str = ""


class Item(_Frozen):
    """One recognisable item (检查 or 检验) of a catalogue."""

    id: str = Field(pattern=_ITEM_ID, description="Stable code, e.g. CBC, K, CT-CHEST")
    name: str = Field(min_length=1)
    category: Category
    group: str = ""
    codes: ItemCodes = ItemCodes()
    imaging: ImagingSpec | None = None
    window: Window
    price_yuan: Decimal = Field(ge=0, description="Price used for the savings estimate")
    rules: RulesOverride | None = None
    effective_from: date | None = None
    effective_to: date | None = None
    note: str = ""

    def in_force(self, day: date) -> bool:
        """In force on ``day`` by its own dates (the catalogue's are checked separately)."""
        if self.effective_from is not None and day < self.effective_from:
            return False
        return self.effective_to is None or day <= self.effective_to

    @property
    def qualification_categories(self) -> tuple[str, ...]:
        """The categories whose category-wide HR qualification covers this item."""
        own, record = self.category, RECORD_CATEGORY[self.category]
        return (own,) if own == record else (own, record)


class CodeSystems(_Frozen):
    """The systems (URIs) of the catalogue's own ``provincial`` and ``price`` codes."""

    provincial: str | None = None
    price: str | None = None


class LocalCodes(_Frozen):
    """One institution's local codes (in one system) mapped to catalogue item ids.

    ``system: null`` maps codings the institution posts without a system.
    """

    institution: str = Field(min_length=1)
    system: str | None = None
    codes: dict[str, str] = Field(default_factory=dict, description="local code → item id")


def china_date(moment: datetime) -> date:
    """The calendar day of an aware datetime in China time."""
    if moment.tzinfo is None:
        raise ValueError("an aware datetime is needed (with a UTC offset)")
    return moment.astimezone(CHINA_TZ).date()


def _day(at: datetime | date) -> date:
    return china_date(at) if isinstance(at, datetime) else at


def region_prefix(region_code: str) -> str:
    """The part of a 6-digit region code that names it: ``140000`` → ``14``,
    ``140100`` → ``1401``, ``140105`` → ``140105``."""
    if region_code.endswith("0000"):
        return region_code[:2]
    if region_code.endswith("00"):
        return region_code[:4]
    return region_code


def _periods_overlap(
    a_from: date | None, a_to: date | None, b_from: date | None, b_to: date | None
) -> bool:
    lo_a, hi_a = a_from or date.min, a_to or date.max
    lo_b, hi_b = b_from or date.min, b_to or date.max
    return lo_a <= hi_b and lo_b <= hi_a


def _label(index: int, item: object) -> str:
    ident = item.get("id") if isinstance(item, dict) else getattr(item, "id", None)
    return f"items[{index}]" + (f" (id {ident!r})" if ident is not None else "")


class Catalog(_Frozen):
    """One region's catalogue, one version. Build it with :func:`load_catalog` (or
    ``Catalog.model_validate(data, context={"source": name})``); every check runs either way
    and a problem raises :class:`CatalogError`."""

    catalog: str = Field(min_length=1, description="Region catalogue id, e.g. shanxi")
    version: str = Field(min_length=1)
    region_code: str = Field(description="6-digit 行政区划代码 of the region")
    region_name: str = ""
    effective_from: date
    effective_to: date | None = None
    code_systems: CodeSystems = CodeSystems()
    rules: ScopeRules = ScopeRules()
    windows: tuple[Window, ...] = Field(
        default=(),
        description="Windows written once for YAML anchors (&name) that items reuse (*name); "
        "checked like any window, otherwise unused",
    )
    items: tuple[Item, ...]
    local_codes: tuple[LocalCodes, ...] = ()
    exception_reasons: tuple[ExceptionReason, ...] = Field(
        default=(),
        description="The region's reasons for re-ordering, added to the national list",
    )

    _source: str = PrivateAttr(default="<memory>")
    _by_id: dict[str, Item] = PrivateAttr(default_factory=dict)
    _by_code: dict[tuple[str, str], list[Item]] = PrivateAttr(default_factory=dict)
    _local: dict[tuple[str, str | None, str], str] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> Catalog:
        source = "<memory>"
        if isinstance(info.context, Mapping) and isinstance(info.context.get("source"), str):
            source = info.context["source"]
        self._source = source
        problems = _cross_problems(self)
        if problems:
            raise CatalogError(source, problems)
        self._by_id = {item.id: item for item in self.items}
        for item in self.items:
            for system, code in self.item_codings(item):
                self._by_code.setdefault((system, code), []).append(item)
        for block in self.local_codes:
            for code, item_id in block.codes.items():
                self._local[(block.institution, block.system, code.strip())] = item_id
        return self

    # -- what is in force ----------------------------------------------------------------

    @property
    def source(self) -> str:
        """The file this catalogue was read from (``<memory>`` when built in code)."""
        return self._source

    def in_force(self, at: datetime | date) -> bool:
        """The catalogue version itself is in force at ``at``."""
        day = _day(at)
        if day < self.effective_from:
            return False
        return self.effective_to is None or day <= self.effective_to

    def item_in_force(self, item: Item, at: datetime | date) -> bool:
        return self.in_force(at) and item.in_force(_day(at))

    def items_in_force(self, at: datetime | date) -> tuple[Item, ...]:
        """The items in force at ``at``, in file order (none if the version is not)."""
        day = _day(at)
        if not self.in_force(day):
            return ()
        return tuple(i for i in self.items if i.in_force(day))

    def item(self, item_id: str, at: datetime | date | None = None) -> Item | None:
        """The item with this id (in force at ``at`` when given)."""
        found = self._by_id.get(item_id)
        if found is None or (at is not None and not self.item_in_force(found, at)):
            return None
        return found

    def covers_region(self, region_code: str) -> bool:
        """``region_code`` (6 digits) lies inside the catalogue's region."""
        return region_code.startswith(region_prefix(self.region_code))

    def rules_for(self, item: Item) -> ScopeRules:
        """The file's ``rules`` with the item's own exceptions applied."""
        if item.rules is None:
            return self.rules
        changes = {k: v for k, v in item.rules.model_dump().items() if v is not None}
        return self.rules.model_copy(update=changes)

    def item_codings(self, item: Item) -> list[tuple[str, str]]:
        """The item's own codings as ``(system, code)``, as matched against posted ones."""
        out: list[tuple[str, str]] = []
        if item.codes.provincial and self.code_systems.provincial:
            out.append((self.code_systems.provincial, item.codes.provincial.strip()))
        if item.codes.price and self.code_systems.price:
            out.append((self.code_systems.price, item.codes.price.strip()))
        out.extend((LOINC_SYSTEM, c.strip()) for c in item.codes.loinc)
        out.extend((c.system, c.code.strip()) for c in item.codes.other if c.system)
        return out

    # -- which item is this --------------------------------------------------------------

    def lookup(
        self,
        system: str | None,
        code: str,
        *,
        institution: str | None = None,
        at: datetime | date | None = None,
    ) -> Item | None:
        """The item one posted coding names, or ``None``.

        A local code counts only with the institution that maps it (``institution``); the
        catalogue's own codes need their system. Items not in force at ``at`` (when given)
        are not returned.
        """
        code = code.strip()
        if not code:
            return None
        if institution is not None:
            local = self._local.get((institution, system, code))
            if local is not None and (found := self.item(local, at)) is not None:
                return found
        if system is None:
            return None
        for candidate in self._by_code.get((system, code), ()):
            if at is None or self.item_in_force(candidate, at):
                return candidate
        return None

    def lookup_token(
        self, token: str, *, institution: str | None = None, at: datetime | date | None = None
    ) -> Item | None:
        """The item a FHIR token ``system|code`` names (``|code``: a coding without a
        system, meaningful only as the institution's local code; a bare ``code`` is too
        ambiguous to resolve and gives ``None``)."""
        system, sep, code = token.rpartition("|")
        if not sep:
            return None
        return self.lookup(system or None, code, institution=institution, at=at)

    def find_item(
        self,
        codes: Iterable[Coding],
        *,
        institution: str | None = None,
        modalities: Iterable[str] = (),
        body_sites: Iterable[Coding] = (),
        contrast: bool | None = None,
        at: datetime | date | None = None,
    ) -> Item | None:
        """The item a posted record or order stands for, or ``None``.

        Imaging first by what was done — any of ``modalities``, a body site, ``contrast`` —
        when that designates exactly one item in force (an unstated contrast resolves only
        when the catalogue has a single item for that modality and body part); otherwise by
        the codings in posted order, the first that maps winning.
        """
        by_imaging = self._by_imaging(modalities, body_sites, contrast, at)
        if by_imaging is not None:
            return by_imaging
        for c in codes:
            found = self.lookup(c.system, c.code, institution=institution, at=at)
            if found is not None:
                return found
        return None

    def _by_imaging(
        self,
        modalities: Iterable[str],
        body_sites: Iterable[Coding],
        contrast: bool | None,
        at: datetime | date | None,
    ) -> Item | None:
        mods = {m.strip().upper() for m in modalities}
        sites = list(body_sites)
        if not mods or not sites:
            return None
        candidates = [
            item
            for item in self.items
            if item.imaging is not None
            and (at is None or self.item_in_force(item, at))
            and mods & set(item.imaging.modalities)
            and any(_site_matches(item.imaging, s) for s in sites)
        ]
        if contrast is not None:
            candidates = [i for i in candidates if i.imaging and i.imaging.contrast == contrast]
        return candidates[0] if len(candidates) == 1 else None


def _site_matches(spec: ImagingSpec, site: Coding) -> bool:
    code = site.code.strip()
    if site.system in (None, SNOMED_SYSTEM) and code in spec.body_sites:
        return True
    return code.upper() == spec.body_part.upper()


def _cross_problems(cat: Catalog) -> list[str]:
    """What the field types do not catch: consistency inside one catalogue."""
    found: list[str] = []
    if not _REGION.fullmatch(cat.region_code) or cat.region_code[:2] not in PROVINCE_CODES:
        found.append(f"region_code: {cat.region_code!r} is not a 6-digit region code")
    if cat.effective_to is not None and cat.effective_to < cat.effective_from:
        found.append(
            f"effective_to: {cat.effective_to} is before effective_from {cat.effective_from}"
        )
    if not cat.items:
        found.append("items: the catalogue has no items")
    first: dict[str, int] = {}
    locally_mapped = {item_id for block in cat.local_codes for item_id in block.codes.values()}
    seen_codes: dict[tuple[str, str], list[tuple[int, Item]]] = {}
    seen_imaging: dict[tuple[str, str, bool], list[tuple[int, Item]]] = {}
    for index, item in enumerate(cat.items):
        where = _label(index, item)
        if item.id in first:
            found.append(f"{where}: duplicate id (already items[{first[item.id]}])")
        else:
            first[item.id] = index
        if (
            item.effective_to is not None
            and item.effective_from is not None
            and item.effective_to < item.effective_from
        ):
            found.append(
                f"{where}: effective_to: {item.effective_to} is before effective_from "
                f"{item.effective_from}"
            )
        if item.effective_from is not None and item.effective_from < cat.effective_from:
            found.append(
                f"{where}: effective_from: {item.effective_from} is before the catalogue's "
                f"effective_from {cat.effective_from}"
            )
        if (
            item.effective_to is not None
            and cat.effective_to is not None
            and item.effective_to > cat.effective_to
        ):
            found.append(
                f"{where}: effective_to: {item.effective_to} is after the catalogue's "
                f"effective_to {cat.effective_to}"
            )
        imaging_kind = item.category in ("imaging", "ultrasound")
        if imaging_kind and item.imaging is None:
            found.append(f"{where}: imaging: required for category {item.category}")
        if not imaging_kind and item.imaging is not None:
            found.append(f"{where}: imaging: only imaging and ultrasound items have one")
        if item.category == "ultrasound" and item.imaging and item.imaging.modalities != ("US",):
            found.append(f"{where}: imaging.modalities: an ultrasound item's modality is US")
        if item.codes.provincial and not cat.code_systems.provincial:
            found.append(f"{where}: codes.provincial: set, but code_systems.provincial is not")
        if item.codes.price and not cat.code_systems.price:
            found.append(f"{where}: codes.price: set, but code_systems.price is not")
        for n, other in enumerate(item.codes.other):
            if not other.system:
                found.append(f"{where}: codes.other[{n}]: a catalogue code needs a system")
        codings = cat.item_codings(item)
        if not codings and item.imaging is None and item.id not in locally_mapped:
            found.append(
                f"{where}: codes: none given, no imaging spec and no local code: no posted "
                "record can map to this item"
            )
        for key in dict.fromkeys(codings):
            for other_index, other_item in seen_codes.get(key, []):
                if other_item.id != item.id and _periods_overlap(
                    item.effective_from,
                    item.effective_to,
                    other_item.effective_from,
                    other_item.effective_to,
                ):
                    found.append(
                        f"{where}: codes: duplicate code {key[0]}|{key[1]} "
                        f"(also {_label(other_index, other_item)})"
                    )
            seen_codes.setdefault(key, []).append((index, item))
        if item.imaging is not None:
            spec = item.imaging
            for modality in spec.modalities:
                ikey = (modality, spec.body_part.upper(), spec.contrast)
                for other_index, other_item in seen_imaging.get(ikey, []):
                    if other_item.id != item.id and _periods_overlap(
                        item.effective_from,
                        item.effective_to,
                        other_item.effective_from,
                        other_item.effective_to,
                    ):
                        found.append(
                            f"{where}: imaging: same modality {modality}, body part "
                            f"{spec.body_part} and contrast {spec.contrast} as "
                            f"{_label(other_index, other_item)}"
                        )
                seen_imaging.setdefault(ikey, []).append((index, item))
        rules = item.rules
        if rules is not None and rules.pilot_institutions is not None:
            found += [
                f"{where}: rules.pilot_institutions: empty id"
                for p in rules.pilot_institutions
                if not p
            ]
    ids = set(first)
    seen_local: dict[tuple[str, str | None, str], int] = {}
    for n, block in enumerate(cat.local_codes):
        where = f"local_codes[{n}] (institution {block.institution!r})"
        if not block.codes:
            found.append(f"{where}: codes: empty mapping")
        for code, item_id in block.codes.items():
            lkey = (block.institution, block.system, code.strip())
            if not code.strip():
                found.append(f"{where}: codes: an empty local code")
            if item_id not in ids:
                found.append(f"{where}: codes[{code!r}]: unknown item id {item_id!r}")
            if lkey in seen_local and seen_local[lkey] != n:
                found.append(
                    f"{where}: codes[{code!r}]: duplicate code "
                    f"(also local_codes[{seen_local[lkey]}])"
                )
            seen_local.setdefault(lkey, n)
    return found


# ── loading ──────────────────────────────────────────────────────────────────────────────


def _loc(loc: Sequence[int | str], data: Any) -> str:
    """``('items', 3, 'window', 'length')`` → ``items[3] (id 'K'): window.length``."""
    parts = list(loc)
    head = ""
    if len(parts) >= 2 and parts[0] in ("items", "local_codes") and isinstance(parts[1], int):
        name, index = str(parts[0]), parts[1]
        entries = data.get(name) if isinstance(data, dict) else None
        entry = entries[index] if isinstance(entries, list) and index < len(entries) else None
        if name == "items":
            head = _label(index, entry)
        else:
            inst = entry.get("institution") if isinstance(entry, dict) else None
            head = f"local_codes[{index}]" + (f" (institution {inst!r})" if inst else "")
        parts = parts[2:]
    field = ""
    for part in parts:
        field += f"[{part}]" if isinstance(part, int) else (f".{part}" if field else str(part))
    if head and field:
        return f"{head}: {field}"
    return head or field or "(catalogue)"


_TOP = "a mapping at the top (catalog:, version:, items:)"


def parse_catalog(data: Any, *, source: str = "<memory>") -> Catalog:
    """Validate already-parsed catalogue data (a mapping); :class:`CatalogError` lists
    every problem, naming ``source``, the item and the field."""
    if not isinstance(data, dict):
        raise CatalogError(source, [f"expected {_TOP}"])
    for name in ("items", "local_codes"):
        entries = data.get(name)
        if entries is not None and not isinstance(entries, list):
            raise CatalogError(source, [f"{name}: must be a list"])
    try:
        return Catalog.model_validate(data, context={"source": source})
    except ValidationError as exc:
        problems = [
            f"{_loc(err['loc'], data)}: {err['msg']}"
            for err in exc.errors(include_url=False, include_input=False)
        ]
        raise CatalogError(source, problems) from None


def load_catalog(path: Path | str) -> Catalog:
    """Read and check one catalogue file."""
    path = Path(path)
    try:
        data = load_mapping(path, what="recognition catalogue", expected=_TOP)
    except ConfigYamlError as exc:  # one problem of a catalogue (a directory lists them all)
        raise CatalogError(exc.source, [exc.reason]) from exc
    return parse_catalog(data, source=str(path))


class CatalogSet:
    """Every catalogue of a directory: several regions, several versions over time.

    Two catalogues of the same region (``region_code``) may not be in force on the same
    day, and a version name is used once.
    """

    def __init__(self, catalogs: Iterable[Catalog], *, source: str = "<memory>") -> None:
        self.source = source
        self.catalogs: tuple[Catalog, ...] = tuple(catalogs)
        problems: list[str] = []
        for n, a in enumerate(self.catalogs):
            for b in self.catalogs[n + 1 :]:
                if a.version == b.version:
                    problems.append(f"{b.source}: version {b.version!r} is also {a.source}'s")
                if a.region_code == b.region_code and _periods_overlap(
                    a.effective_from, a.effective_to, b.effective_from, b.effective_to
                ):
                    problems.append(
                        f"{b.source}: effective dates {_period(b)} overlap {a.source} "
                        f"({_period(a)}) for the same region {a.region_code}"
                    )
        if problems:
            raise CatalogError(source, problems)

    def __iter__(self) -> Iterator[Catalog]:
        return iter(self.catalogs)

    def __len__(self) -> int:
        return len(self.catalogs)

    def in_force(self, at: datetime | date) -> tuple[Catalog, ...]:
        """The catalogues in force at ``at``."""
        return tuple(c for c in self.catalogs if c.in_force(at))

    def catalog_for(self, region_code: str, at: datetime | date) -> Catalog | None:
        """The catalogue in force at ``at`` for an institution in ``region_code``: the one
        with the most specific region that contains it (a prefecture's over a province's)."""
        fitting = [c for c in self.in_force(at) if c.covers_region(region_code)]
        return max(fitting, key=lambda c: len(region_prefix(c.region_code)), default=None)

    def items_in_force(self, at: datetime | date) -> list[tuple[Catalog, Item]]:
        """Every item in force at ``at``, with its catalogue."""
        return [(c, item) for c in self.in_force(at) for item in c.items_in_force(at)]


def _period(c: Catalog) -> str:
    return f"{c.effective_from}..{c.effective_to or 'open'}"


def catalog_files(path: Path | str) -> list[Path]:
    """The catalogue files of ``path``: itself if a file, else its ``*.yaml`` / ``*.yml``."""
    path = Path(path)
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and p.suffix in (".yaml", ".yml"))
    return [path]


def load_catalogs(path: Path | str = DEFAULT_CATALOG_PATH) -> CatalogSet:
    """Read and check one file or every catalogue file of a directory. Problems of every
    file are collected and raised together."""
    path = Path(path)
    files = catalog_files(path)
    if path.is_dir() and not files:
        raise CatalogError(str(path), ["no *.yaml catalogue files in the directory"])
    catalogs: list[Catalog] = []
    problems: list[str] = []
    for file in files:
        try:
            catalogs.append(load_catalog(file))
        except CatalogError as exc:
            problems += [f"{exc.source}: {p}" for p in exc.problems]
    if problems:
        raise CatalogError(str(path), problems)
    return CatalogSet(catalogs, source=str(path))
