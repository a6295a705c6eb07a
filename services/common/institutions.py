"""The institution registry: who may post, as whom, with which HR qualifications.

Loaded from ``config/institutions.yaml`` (path in ``MRHUB_INSTITUTIONS_PATH``).
Credentials are stored only as hashes; a token is printed once, when it is issued.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import shutil
import tempfile
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from datetime import date
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import CommentMark
from ruamel.yaml.tokens import CommentToken

from services.common.cds_auth import jwks_problems
from services.common.config_yaml import ConfigYamlError, load_mapping
from services.common.errors import ConfigError
from services.common.identifiers import PROVINCE_CODES, is_valid_uscc

Level = Literal[1, 2, 3]
Grade = Literal["甲", "乙", "丙", "特", "未定等"]
Ownership = Literal["public", "private"]
QcScope = Literal["national", "provincial", "municipal", "alliance"]

#: How often a :class:`ReloadingRegistry` looks at its file (seconds).
RELOAD_INTERVAL_S = 0.5
_log = logging.getLogger(__name__)


class Qualification(BaseModel):
    """A current quality-control (HR) qualification for one item or a whole category."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    item: str | None = Field(default=None, description="Catalogue item code, or None")
    category: str | None = Field(default=None, description="e.g. lab, imaging, ecg")
    scope: QcScope
    issued: date
    expires: date

    def covers(self, *, item: str | None, category: str | None, on: date) -> bool:
        if not (self.issued <= on <= self.expires):
            return False
        if self.item is not None:
            return item == self.item
        return self.category is not None and category == self.category


class Credential(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    token_hash: str = Field(description="'sha256:<hex>' of the bearer token")
    created: date
    label: str = ""


class CdsClient(BaseModel):
    """A CDS Hooks client (the institution's HIS / EHR) that calls the hub's CDS services with
    a JWT it signs: ``iss`` names it, ``jwks`` holds its public keys (a JSON Web Key Set,
    ``{"keys": [...]}``, ES384 or RS384 as CDS Hooks 2.0 asks)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    iss: str = Field(min_length=1, max_length=512, description="The JWT's `iss` claim")
    jwks: dict[str, Any] = Field(description='The public keys: {"keys": [JWK, ...]}')
    label: str = ""


class Institution(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(description="统一社会信用代码 or 医疗机构登记号")
    name: str
    level: Level
    grade: Grade
    ownership: Ownership
    region_code: str = Field(pattern=r"^\d{6}$")
    alliances: tuple[str, ...] = ()  # 医联体 ids
    oid: str | None = Field(default=None, description="The institution's own OID, if it has one")
    qualifications: tuple[Qualification, ...] = ()
    dicomweb_base: str | None = None
    viewer_template: str | None = Field(
        default=None,
        description="A web viewer's URL for one study, with {study_uid} where the Study "
        "Instance UID goes (e.g. https://pacs.example/viewer?StudyInstanceUIDs={study_uid})",
    )
    credentials: tuple[Credential, ...] = ()
    cds_clients: tuple[CdsClient, ...] = ()

    @property
    def prefecture_code(self) -> str:
        return self.region_code[:4] + "00"

    def public_view(self) -> dict[str, object]:
        """Every field but the credentials (for listings and logs)."""
        return self.model_dump(mode="json", exclude={"credentials"})


def shares_alliance(a: Institution, b: Institution) -> bool:
    """Both are members of one 医联体."""
    return bool(set(a.alliances) & set(b.alliances))


def hr_reaches(scope: QcScope, issuer: Institution, receiver: Institution | None) -> bool:
    """Whether an HR qualification of ``scope`` held by ``issuer`` reaches ``receiver``:
    national everywhere; provincial within the province; municipal within the prefecture;
    alliance within a shared 医联体."""
    if receiver is None:
        return False
    if scope == "national":
        return True
    if scope == "provincial":
        return issuer.region_code[:2] == receiver.region_code[:2]
    if scope == "municipal":
        return issuer.prefecture_code == receiver.prefecture_code
    return shares_alliance(issuer, receiver)


def may_read(reader: Institution, performer: Institution, *, category: str, on: date) -> bool:
    """The read scope: ``reader`` may see what ``performer`` made in ``category`` when it is
    its own, when the two share a 医联体, or when one of the performer's current HR
    qualifications for that category (or one of its items) reaches the reader — the same
    reach that lets the reader recognise the result. Everything else stays invisible."""
    if reader.id == performer.id or shares_alliance(reader, performer):
        return True
    return any(
        q.issued <= on <= q.expires
        and (q.category == category or q.item is not None)
        and hr_reaches(q.scope, performer, reader)
        for q in performer.qualifications
    )


# ── the registry ─────────────────────────────────────────────────────────────────────────

#: A 医疗机构登记号 (the registration number on the 医疗机构执业许可证), 22 characters:
#:
#: ========  =======================================================================
#: 1–9       组织机构代码 (GB 11714): 8 digits or upper-case letters and a check character
#:           (digit or X); the temporary ``PDY…`` codes some health bureaus issued fit too
#: 10–15     行政区划代码 of the institution (6 digits; the first two must be a province)
#: 16–17     经济类型代码 (2 digits, e.g. 11 国有全资)
#: 18–21     卫生机构(组织)类别代码 (WS 218: a letter and 3 digits, e.g. A100 综合医院)
#: 22        机构分类管理代码: 1 非营利性, 2 营利性, 9 其他
#: ========  =======================================================================
#:
#: The organisation-code check character is not verified (historic codes do not all
#: satisfy it); the shape, the province and the last digit are.
REGISTRATION_NO_PATTERN = re.compile(r"[0-9A-Z]{8}[0-9X][0-9]{6}[0-9]{2}[A-Z][0-9]{3}[129]")

#: Prefix of every issued token, so that a leaked one is easy to grep for (not a secret).
TOKEN_PREFIX = "mrh_"  # noqa: S105
_USCC_SHAPE = re.compile(r"[0-9A-Z]{18}")
_REGION = re.compile(r"[0-9]{6}")
_TOKEN_HASH = re.compile(r"sha256:[0-9a-f]{64}")


def is_registration_no(value: str) -> bool:
    """True if ``value`` has the shape of a 22-character 医疗机构登记号 (see the pattern)."""
    return REGISTRATION_NO_PATTERN.fullmatch(value) is not None and value[9:11] in PROVINCE_CODES


def is_valid_institution_id(value: str) -> bool:
    """A canonical (upper-case, no separators) 统一社会信用代码 or 医疗机构登记号."""
    if len(value) == 18:
        return _USCC_SHAPE.fullmatch(value) is not None and is_valid_uscc(value)
    return is_registration_no(value)


_WHAT = "institution registry"


def _lookup_prefix(token_hash: str) -> str:
    """The part of a credential hash the registry indexes by (``sha256:`` and 16 hex digits):
    it only narrows the candidates; :meth:`Registry.authenticate` compares the whole hash."""
    return token_hash[:23]


def hash_token(token: str) -> str:
    """``sha256:<hex>`` of a bearer token: the only form in which a token is stored."""
    return "sha256:" + hashlib.sha256(token.encode("utf-8")).hexdigest()


def _label(inst: object, index: int) -> str:
    """How an error message names the ``index``-th entry of the file."""
    ident = inst.get("id") if isinstance(inst, dict) else getattr(inst, "id", None)
    return f"institutions[{index}]" + (f" (id {ident!r})" if ident is not None else "")


def _problems(inst: Institution) -> list[str]:
    """What is wrong with one institution that its pydantic model does not check."""
    found: list[str] = []
    if not is_valid_institution_id(inst.id):
        found.append(
            "id: neither a valid 统一社会信用代码 (18 characters, upper case, correct check "
            "character) nor a 医疗机构登记号 (22 characters, see REGISTRATION_NO_PATTERN)"
        )
    if not _REGION.fullmatch(inst.region_code) or inst.region_code[:2] not in PROVINCE_CODES:
        found.append(f"region_code: {inst.region_code!r} is not a region code in any province")
    for n, q in enumerate(inst.qualifications):
        where = f"qualifications[{n}]"
        if (q.item is None) == (q.category is None):
            which = "both" if q.item is not None else "neither"
            found.append(f"{where}: has {which} item and category; set exactly one")
        if q.expires < q.issued:
            found.append(f"{where}: expires {q.expires} before it is issued {q.issued}")
    for n, c in enumerate(inst.credentials):
        if _TOKEN_HASH.fullmatch(c.token_hash) is None:
            found.append(
                f"credentials[{n}].token_hash: must be 'sha256:' and 64 lower-case hex digits "
                "(store the hash, never the token)"
            )
    if inst.dicomweb_base is not None and not inst.dicomweb_base.startswith(
        ("http://", "https://")
    ):
        found.append("dicomweb_base: must be an http:// or https:// URL")
    for n, client in enumerate(inst.cds_clients):
        found += [f"cds_clients[{n}].{p}" for p in jwks_problems(client.jwks)]
    if inst.viewer_template is not None and (
        not inst.viewer_template.startswith(("http://", "https://"))
        or "{study_uid}" not in inst.viewer_template
        or inst.viewer_template.replace("{study_uid}", "").count("{")
        or inst.viewer_template.replace("{study_uid}", "").count("}")
    ):
        found.append(
            "viewer_template: must be an http:// or https:// URL with {study_uid} and no other "
            "placeholder"
        )
    return found


class Registry:
    """The validated institutions, by id, by credential hash and by 医联体.

    Build it with :meth:`load` (from the YAML file) or directly from ``Institution``
    objects; either way every check runs and a problem raises ``ConfigError``.
    """

    def __init__(self, institutions: Iterable[Institution], *, source: str = "<memory>") -> None:
        self.source = source
        self._by_id: dict[str, Institution] = {}
        first_index: dict[str, int] = {}
        # credentials by the lookup prefix of their hash: (full stored hash, institution)
        self._by_token: dict[str, list[tuple[str, Institution]]] = {}
        self._by_alliance: dict[str, list[Institution]] = {}
        problems: list[str] = []
        for index, inst in enumerate(institutions):
            label = _label(inst, index)
            problems += [f"{label}: {p}" for p in _problems(inst)]
            if inst.id in self._by_id:
                first = f"institutions[{first_index[inst.id]}] {self._by_id[inst.id].name}"
                problems.append(f"{label}: duplicate id (already used by {first})")
                continue
            self._by_id[inst.id] = inst
            first_index[inst.id] = index
            for cred in inst.credentials:
                same = self._by_token.setdefault(_lookup_prefix(cred.token_hash), [])
                for stored, other in same:
                    if stored == cred.token_hash and other.id != inst.id:
                        problems.append(f"{label}: a credential hash is also {other.id}'s")
                if all(stored != cred.token_hash for stored, _ in same):
                    same.append((cred.token_hash, inst))
            for alliance in dict.fromkeys(inst.alliances):
                self._by_alliance.setdefault(alliance, []).append(inst)
        if problems:
            raise ConfigError(_report(source, problems))

    @classmethod
    def load(cls, path: Path) -> Registry:
        """Read and validate ``path``; ``ConfigError`` lists every problem found."""
        source = str(path)
        shape = "a mapping with the key 'institutions:'"
        data = load_mapping(path, what=_WHAT, expected=shape)
        if "institutions" not in data:
            raise ConfigYamlError(source, _WHAT, f"expected {shape}, found no 'institutions:'")
        extra = sorted(str(k) for k in data if k != "institutions")
        if extra:
            raise ConfigError(f"{source}: unknown top-level keys: {', '.join(extra)}")
        entries = data["institutions"]
        if not isinstance(entries, list):
            raise ConfigError(f"{source}: 'institutions' must be a list of institutions")
        problems: list[str] = []
        parsed: list[Institution] = []
        for index, entry in enumerate(entries):
            label = _label(entry, index)
            if not isinstance(entry, dict):
                problems.append(f"{label}: must be a mapping of fields")
                continue
            try:
                inst = Institution.model_validate(entry)
            except ValidationError as exc:
                for err in exc.errors(include_url=False, include_input=False):
                    field = _loc(err["loc"]) or "(entry)"
                    problems.append(f"{label}: {field}: {err['msg']}")
                continue
            parsed.append(inst)
            problems += [f"{label}: {p}" for p in _problems(inst)]
        if problems:  # report every entry's problems at once, not only the first kind
            raise ConfigError(_report(source, problems))
        return cls(parsed, source=source)

    # -- lookups ------------------------------------------------------------------------

    def get(self, institution_id: str) -> Institution | None:
        return self._by_id.get(institution_id)

    def __iter__(self) -> Iterator[Institution]:
        return iter(self._by_id.values())

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, institution_id: object) -> bool:
        return institution_id in self._by_id

    @property
    def ids(self) -> tuple[str, ...]:
        """Every institution id, in file order."""
        return tuple(self._by_id)

    @property
    def alliances(self) -> tuple[str, ...]:
        """Every 医联体 id that has at least one member, in order of first appearance."""
        return tuple(self._by_alliance)

    def alliance_members(self, alliance_id: str) -> tuple[Institution, ...]:
        """The members of one 医联体, in file order (empty for an unknown id)."""
        return tuple(self._by_alliance.get(alliance_id, ()))

    def authenticate(self, token: str) -> Institution | None:
        """The institution a bearer token belongs to, or None.

        The token is hashed; the credentials whose stored hash starts like it are found in a
        dict (no scan over institutions), and the whole presented hash is then compared with
        each one's stored hash in constant time: that comparison decides. Empty or
        whitespace-only tokens match nothing.
        """
        if not isinstance(token, str) or not token.strip():
            return None
        presented = hash_token(token)
        found = None
        for stored, inst in self._by_token.get(_lookup_prefix(presented), ()):
            if hmac.compare_digest(stored, presented):
                found = inst
        return found

    def __repr__(self) -> str:
        return f"Registry({self.source!r}, {len(self)} institutions)"


class ReloadingRegistry(Registry):
    """The registry of one file, reloaded when the file changes: every service that reads
    credentials or institutions holds one, so a token issued or revoked with
    ``mrhub institutions issue-token`` / ``revoke-token`` counts in every process within
    :data:`RELOAD_INTERVAL_S` (plus the time to read the file).

    The file is looked at (one ``stat``) at most once per interval, on the first lookup after
    it. A file that no longer validates is logged and the previous registry is kept: a typo
    while editing never locks every hospital out. ``stale`` says whether the last reload
    failed (``/readyz`` and the logs may show it).
    """

    def __init__(self, path: Path, *, interval_s: float | None = None) -> None:
        self.path = Path(path)
        self.interval_s = RELOAD_INTERVAL_S if interval_s is None else interval_s
        self._signature = _file_signature(self.path)
        self._checked_at = time.monotonic()
        self.stale = False
        self._adopt(Registry.load(self.path))

    def _adopt(self, other: Registry) -> None:
        self.source = other.source
        self._by_id = other._by_id
        self._by_token = other._by_token
        self._by_alliance = other._by_alliance

    def refresh(self, *, force: bool = False) -> bool:
        """Reload now if the file changed; return whether a new registry was adopted."""
        now = time.monotonic()
        if not force and now - self._checked_at < self.interval_s:
            return False
        self._checked_at = now
        signature = _file_signature(self.path)
        if signature == self._signature and not force:
            return False
        self._signature = signature
        try:
            fresh = Registry.load(self.path)
        except ConfigError as exc:
            self.stale = True
            _log.error(
                "institutions file invalid; keeping the previous registry",
                extra={"err": str(exc)[:2000]},
            )
            return False
        self._adopt(fresh)
        self.stale = False
        _log.info("institutions reloaded", extra={"count": len(self._by_id)})
        return True

    def get(self, institution_id: str) -> Institution | None:
        self.refresh()
        return super().get(institution_id)

    def __iter__(self) -> Iterator[Institution]:
        self.refresh()
        return super().__iter__()

    def __len__(self) -> int:
        self.refresh()
        return super().__len__()

    def __contains__(self, institution_id: object) -> bool:
        self.refresh()
        return super().__contains__(institution_id)

    @property
    def ids(self) -> tuple[str, ...]:
        self.refresh()
        return tuple(self._by_id)

    @property
    def alliances(self) -> tuple[str, ...]:
        self.refresh()
        return tuple(self._by_alliance)

    def alliance_members(self, alliance_id: str) -> tuple[Institution, ...]:
        self.refresh()
        return super().alliance_members(alliance_id)

    def authenticate(self, token: str) -> Institution | None:
        self.refresh()
        return super().authenticate(token)

    def __repr__(self) -> str:
        return f"ReloadingRegistry({self.source!r}, {len(self._by_id)} institutions)"


def _file_signature(path: Path) -> tuple[int, int, int]:
    """What changes when the file is edited in place or replaced (mtime, size, inode)."""
    try:
        st = path.stat()
    except OSError:
        return (0, 0, 0)
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _report(source: str, problems: list[str]) -> str:
    head = f"{source}: invalid institution registry ({len(problems)} problem"
    head += "s):" if len(problems) > 1 else "):"
    return "\n  - ".join([head, *problems])


# ── issuing and revoking tokens (the file is edited in place, comments kept) ─────────────


def _rt_yaml() -> YAML:
    """Round-trip YAML set to the layout of ``config/institutions.yaml``."""
    yaml = YAML(typ="rt")
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 4096  # never re-wrap a line
    yaml.preserve_quotes = True
    yaml.allow_unicode = True
    return yaml


def _find_entry(doc: Any, path: Path, institution_id: str) -> CommentedMap:
    for entry in doc["institutions"]:
        if isinstance(entry, CommentedMap) and str(entry.get("id")) == institution_id:
            return entry
    raise ConfigError(f"{path}: unknown institution id {institution_id!r}")


def _last_chain(node: Any) -> list[Any]:
    """``node`` and its last block-style descendants, outermost first."""
    chain = []
    while _is_block_collection(node):
        chain.append(node)
        node = node[list(node)[-1]] if isinstance(node, CommentedMap) else node[-1]
    return chain


def _tail_slot(node: Any) -> tuple[list[Any], int] | None:
    """The comment slot after the last scalar or flow collection at the end of ``node``.

    ruamel attaches the comment lines after a node to the deepest last node before them: to
    that slot (token text: the end-of-line comment, maybe empty, a newline, then the
    following lines verbatim) or, after a flow collection, to the ``end`` list of the block
    collection holding it.
    """
    chain = _last_chain(node)
    if not chain:
        return None
    deepest = chain[-1]
    if isinstance(deepest, CommentedMap):
        return deepest.ca.items.setdefault(list(deepest)[-1], [None, None, None, None]), 2
    return deepest.ca.items.setdefault(len(deepest) - 1, [None, None, None, None]), 0


def _is_block_collection(value: Any) -> bool:
    return (
        isinstance(value, CommentedMap | CommentedSeq)
        and len(value) > 0
        and not value.fa.flow_style()
    )


def _detach_tail(node: Any) -> str:
    """Remove and return the comment lines after ``node`` (its end-of-line comment stays)."""
    rest = ""
    where = _tail_slot(node)
    if where is not None and where[0][where[1]] is not None:
        slot, i = where
        token = slot[i]
        head, _, rest = token.value.partition("\n")
        slot[i] = CommentToken(head + "\n", token.start_mark, None) if head.strip() else None
    for collection in reversed(_last_chain(node)):
        for token in collection.ca.end or ():
            text = str(token.value)
            rest += (" " * (token.column or 0) + text) if text.lstrip().startswith("#") else text
        collection.ca.end = []
    return str(rest)


def _attach_tail(node: Any, rest: str) -> None:
    """Put comment lines taken by :func:`_detach_tail` back after ``node``'s (new) end."""
    if not rest:
        return
    where = _tail_slot(node)
    if where is None:  # pragma: no cover - callers always pass a non-empty block mapping
        return
    slot, i = where
    old = slot[i]
    head = old.value.partition("\n")[0] if old is not None else ""
    mark = old.start_mark if old is not None else CommentMark(0)  # keeps the eol column
    slot[i] = CommentToken(head + "\n" + rest, mark, None)


def _credentials_seq(entry: CommentedMap) -> tuple[CommentedSeq, str]:
    """The entry's credentials as a block sequence (created, or converted from ``[]``).

    Also returns the comment lines that followed a flow ``[]`` (see :func:`_detach_tail`),
    to be put back after the sequence's new last line.
    """
    seq = entry.get("credentials")
    if not isinstance(seq, CommentedSeq):
        seq = CommentedSeq()
        entry["credentials"] = seq
    if not seq.fa.flow_style() and len(seq):
        return seq, _detach_tail(seq)
    # A flow `[]` keeps its comment after the key (and on itself); the end-of-line part stays
    # there once the sequence is a block, the lines after it move below the new items.
    slot = entry.ca.items.setdefault("credentials", [None, None, None, None])
    old = slot[2] if slot[2] is not None else (seq.ca.comment or [None])[0]
    head, _, rest = old.value.partition("\n") if old is not None else ("", "", "")
    eol = CommentToken(head + "\n", old.start_mark, None) if head.strip() else None
    slot[2] = eol
    seq.ca.comment = [eol, None] if eol is not None else None
    seq.fa.set_block_style()
    return seq, str(rest)


def _edit(path: Path, institution_id: str, change: Callable[[CommentedMap], int]) -> int:
    """Apply ``change`` to one institution's entry, write the file atomically, re-validate.

    ``change`` returns how many credentials it touched; on 0 the file is left untouched.
    """
    Registry.load(path)  # refuse to edit a file that is already broken
    yaml = _rt_yaml()
    with path.open(encoding="utf-8") as f:
        doc = yaml.load(f)
    entry = _find_entry(doc, path, institution_id)
    touched = change(entry)
    if touched:
        _write_atomic(path, yaml, doc)
    return touched


def _write_atomic(path: Path, yaml: YAML, doc: Any) -> None:
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            yaml.dump(doc, f)
            f.flush()
            os.fsync(f.fileno())
        shutil.copymode(path, tmp)
        try:
            Registry.load(tmp)  # never replace a good file with a bad one
        except ConfigError as exc:
            raise ConfigError(
                f"{path}: not written, the edit would make it invalid: {exc}"
            ) from exc
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def issue_token(path: Path, institution_id: str, label: str = "") -> str:
    """Create a bearer token for one institution and store its hash in ``path``.

    The token (``mrh_`` + 43 URL-safe characters) is returned once and stored nowhere; the
    file gets a credential with its hash, today's date and ``label``. Comments and order in
    the file are kept. Raises ``ConfigError`` for an unknown id or an invalid file.
    """
    path = Path(path)
    if "\n" in label or "\r" in label:
        raise ConfigError("a credential label must be a single line")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)

    def add(entry: CommentedMap) -> int:
        cred = CommentedMap()
        cred["token_hash"] = hash_token(token)
        cred["created"] = date.today()
        if label:
            cred["label"] = label
        rest = _detach_tail(entry)
        seq, inner = _credentials_seq(entry)  # inner: comments after a non-last credentials
        seq.append(cred)
        _attach_tail(seq, inner)
        _attach_tail(entry, rest)
        return 1

    _edit(path, institution_id, add)
    registry = Registry.load(path)
    owner = registry.authenticate(token)
    if owner is None or owner.id != institution_id:  # pragma: no cover - defensive
        raise ConfigError(f"{path}: the new credential for {institution_id} did not validate")
    return token


def revoke_tokens(path: Path, institution_id: str) -> int:
    """Remove every credential of one institution from ``path``; return how many there were."""
    path = Path(path)

    def clear(entry: CommentedMap) -> int:
        seq = entry.get("credentials")
        if not isinstance(seq, CommentedSeq) or not len(seq):
            return 0
        count = len(seq)
        rest = _detach_tail(entry)
        inner = _detach_tail(seq)
        old = entry.ca.items.get("credentials")
        eol = old[2] if old is not None else None
        empty = CommentedSeq()
        empty.fa.set_flow_style()
        entry["credentials"] = empty
        head = eol.value.partition("\n")[0] if eol is not None else ""
        slot = entry.ca.items.setdefault("credentials", [None, None, None, None])
        text = head + "\n" + inner
        if text.strip():
            mark = eol.start_mark if eol is not None else CommentMark(0)
            slot[2] = CommentToken(text, mark, None)
            empty.ca.comment = [slot[2], None]  # where the loader keeps it for a flow `[]`
        else:
            slot[2] = None
        _attach_tail(entry, rest)
        return count

    removed = _edit(path, institution_id, clear)
    if removed:
        Registry.load(path)
    return removed


# ── listings for the CLI ───────────────────────────────────────────────────────────────


def list_rows(registry: Registry) -> list[dict[str, object]]:
    """One ``public_view()`` per institution (never the credentials), in file order."""
    return [inst.public_view() for inst in registry]


_COLUMNS = (
    "ID",
    "NAME",
    "LEVEL",
    "GRADE",
    "OWNERSHIP",
    "REGION",
    "ALLIANCES",
    "QUALS",
    "CREDENTIAL",
)


def _width(text: str) -> int:
    """Columns a string takes in a terminal (CJK characters take two)."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def format_table(registry: Registry) -> str:
    """A fixed-width table of the registry for humans (credentials shown as yes/no only)."""
    rows = [
        (
            inst.id,
            inst.name,
            str(inst.level),
            inst.grade,
            inst.ownership,
            inst.region_code,
            ",".join(inst.alliances) or "-",
            str(len(inst.qualifications)),
            "yes" if inst.credentials else "no",
        )
        for inst in registry
    ]
    widths = [max(_width(r[i]) for r in [_COLUMNS, *rows]) for i in range(len(_COLUMNS))]
    lines = [
        "  ".join(
            cell + " " * (w - _width(cell)) for cell, w in zip(row, widths, strict=True)
        ).rstrip()
        for row in [_COLUMNS, *rows]
    ]
    return "\n".join(lines)
