"""A simulated region for ``mrhub simulate`` (pure except for writing the files): hospitals of
levels 1–3 with grades in two prefectures (太原 1401xx, 大同 1402xx), public and private,
医联体 around the large hospitals, and HR (quality-control) qualifications with scopes and
expiry — written as an institution registry in the format of ``config/institutions.yaml``.

The same ``(count, seed, today)`` always gives the same region; tokens are random (they are
credentials) and kept apart from the registry, which holds only their hashes.
"""

from __future__ import annotations

import json
import os
import random
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Final

from ruamel.yaml import YAML
from stdnum.cn import uscc as stdnum_uscc

from mrhub_tools.simulate.population import PREFECTURES
from services.common.errors import ConfigError
from services.common.identifiers import is_valid_uscc
from services.common.institutions import (
    TOKEN_PREFIX,
    Credential,
    Institution,
    Qualification,
    Registry,
    hash_token,
)

_ORG_WEIGHTS: Final = (3, 7, 9, 10, 5, 8, 4, 2)
_BRANDS: Final = [
    "康华",
    "仁和",
    "博爱",
    "安康",
    "济民",
    "华康",
    "同心",
    "惠民",
    "长青",
    "瑞康",
    "德济",
    "福寿",
]
_TOWNS: Final = [
    "东",
    "西",
    "南",
    "北",
    "城关",
    "河口",
    "新村",
    "石桥",
    "红旗",
    "永安",
    "太平",
    "兴隆",
]
#: 医联体-scope items a small hospital commonly holds (lab) and its imaging.
LEVEL1_LAB: Final = ("CBC", "K", "GLU", "ALT", "TC", "CREA")
LEVEL2_LAB: Final = ("CBC", "K", "NA", "GLU", "CREA", "ALT", "TC", "HBA1C", "PT", "TSH")
LEVEL2_IMAGING: Final = ("CT-CHEST", "DR-CHEST", "US-ABD", "CT-HEAD")
EXPIRABLE: Final = ("TSH", "AFP", "HBA1C", "PT")

REGISTRY_FILE: Final = "institutions.yaml"
TOKENS_FILE: Final = "tokens.json"
REGION_FILE: Final = "region.json"


def _org_code(digits8: str) -> str:
    """A GB 11714 organisation code: 8 digits and the check character."""
    total = sum(int(c) * w for c, w in zip(digits8, _ORG_WEIGHTS, strict=True))
    check = 11 - total % 11
    return digits8 + ("X" if check == 10 else "0" if check == 11 else str(check))


def uscc(prefix2: str, region: str, digits8: str) -> str:
    """A 统一社会信用代码 with valid GB 11714 and GB 32100 check characters."""
    body = prefix2 + region + _org_code(digits8)
    return body + stdnum_uscc.calc_check_digit(body)


@dataclass(frozen=True)
class SimInstitution:
    """A registry entry and what only the simulator knows about the hospital."""

    inst: Institution
    pinyin_names: bool  # registers patients' names in pinyin (some hospitals' old HIS)

    @property
    def id(self) -> str:
        return self.inst.id


def _qual(
    scope: str, today: date, *, item: str | None = None, category: str | None = None
) -> Qualification:
    return Qualification(
        item=item,
        category=category,
        scope=scope,  # type: ignore[arg-type]
        issued=today - timedelta(days=730),
        expires=today + timedelta(days=365),
    )


def _expired(item: str, today: date) -> Qualification:
    """Lapsed long before any simulated result was issued (failed external QA, say)."""
    return Qualification(
        item=item,
        scope="municipal",
        issued=today - timedelta(days=3 * 365),
        expires=today - timedelta(days=400),
    )


def generate_region(count: int, seed: int, today: date) -> list[SimInstitution]:
    """``count`` (≥ 4) hospitals: 60% in 太原, 40% in 大同, each prefecture led by a 三甲
    hospital heading a 医联体."""
    if count < 4:
        raise ValueError("a region needs at least 4 institutions (two per prefecture)")
    rng = random.Random(f"region:{seed}")  # noqa: S311 - made-up hospitals
    per = {"1401": max(2, round(count * 0.6))}
    per["1402"] = count - per["1401"]
    out: list[SimInstitution] = []
    used_codes: set[str] = set()
    used_names: set[str] = set()
    serial = 0
    for pref, n in per.items():
        city, counties = PREFECTURES[pref]
        short = city.removesuffix("市")
        county_codes = sorted(counties)
        alliances = [f"yl-{pref}-{k + 1:02d}" for k in range(max(1, n // 8))]
        levels = [3] + [
            3 if rng.random() < 0.2 else 2 if rng.random() < 0.55 else 1 for _ in range(n - 1)
        ]
        leaders: dict[str, int] = {}
        for k, level in enumerate(levels):
            serial += 1
            region = rng.choice(county_codes)
            county = counties[region]
            private = level < 3 and rng.random() < 0.15
            if level == 3:
                grade = "甲" if k == 0 or rng.random() < 0.6 else "乙"
                name = f"{city}第{k + 1}人民医院" if k else f"{city}中心医院"
            elif level == 2:
                grade = rng.choice(("甲", "甲", "乙", "丙", "未定等"))
                name = f"{city}{county}{rng.choice(('人民医院', '中医医院', '第二人民医院'))}"
            else:
                grade = rng.choice(("甲", "乙", "未定等", "未定等"))
                name = (
                    f"{city}{county}{rng.choice(_TOWNS)}"
                    f"{rng.choice(('镇卫生院', '街道社区卫生服务中心'))}"
                )
            if private:
                grade = "未定等"
                name = f"{short}{rng.choice(_BRANDS)}医院"
            while name in used_names:
                name = name.replace("医院", "分院", 1) if "医院" in name else name + "分部"
                if name in used_names:
                    name = f"{name}{serial}"
            used_names.add(name)
            while True:
                prefix = rng.choice(("91", "52")) if private else "12"
                code = uscc(prefix, region, f"{rng.randrange(10**8):08d}")
                if code not in used_codes and is_valid_uscc(code):
                    used_codes.add(code)
                    break
            # 医联体: the first 三甲 of a prefecture leads the first one, other leaders the rest
            member_of: tuple[str, ...] = ()
            if level == 3 and len(leaders) < len(alliances) and not private:
                alliance = alliances[len(leaders)]
                leaders[alliance] = k
                member_of = (alliance,)
            elif level < 3 and rng.random() < 0.45:
                member_of = (rng.choice(alliances),)
            quals = _qualifications(level, grade, member_of, rng, today)
            imaging = any(
                q.category == "imaging" or (q.item or "").startswith(("CT", "DR", "US"))
                for q in quals
            )
            inst = Institution(
                id=code,
                name=name,
                level=level,  # type: ignore[arg-type]
                grade=grade,  # type: ignore[arg-type]
                ownership="private" if private else "public",
                region_code=region,
                alliances=member_of,
                oid=f"1.3.6.1.4.1.32473.99.{serial}",
                dicomweb_base=(
                    f"http://pacs.h{serial:03d}.example-hospital.cn/dicom-web" if imaging else None
                ),
                qualifications=tuple(quals),
            )
            out.append(SimInstitution(inst, pinyin_names=rng.random() < 0.1))
    # every alliance needs its leader: one with no 三甲 member leaves it to its members
    return out


def _qualifications(
    level: int, grade: str, alliances: Sequence[str], rng: random.Random, today: date
) -> list[Qualification]:
    quals: list[Qualification] = []
    small_scope = "alliance" if alliances else "municipal"
    if level == 3:
        lab_scope = "national" if grade == "甲" and rng.random() < 0.5 else "provincial"
        quals += [
            _qual(lab_scope, today, category="lab"),
            _qual("provincial", today, category="imaging"),
            _qual("provincial", today, category="ecg"),
        ]
    elif level == 2:
        if rng.random() < 0.5:
            quals.append(_qual("municipal", today, category="lab"))
        else:
            scope = "provincial" if rng.random() < 0.2 else rng.choice(("municipal", small_scope))
            for item in rng.sample(LEVEL2_LAB, rng.randrange(4, 8)):
                quals.append(_qual(scope, today, item=item))
        if rng.random() < 0.7:
            for item in rng.sample(LEVEL2_IMAGING, rng.randrange(1, 5)):
                quals.append(_qual(rng.choice(("municipal", small_scope)), today, item=item))
    elif rng.random() < 0.8:
        for item in rng.sample(LEVEL1_LAB, rng.randrange(2, 5)):
            quals.append(_qual(small_scope, today, item=item))
        if rng.random() < 0.3:
            quals.append(_qual(small_scope, today, item="DR-CHEST"))
    if rng.random() < 0.3:
        covered = {q.item for q in quals} | {q.category for q in quals}
        lapsed = [i for i in EXPIRABLE if i not in covered]
        if lapsed and "lab" not in covered:
            quals.append(_expired(rng.choice(lapsed), today))
    return quals


# ── files ────────────────────────────────────────────────────────────────────────────────


def new_tokens(ids: Sequence[str]) -> dict[str, str]:
    """A fresh bearer token per institution (random: tokens are credentials)."""
    return {i: TOKEN_PREFIX + secrets.token_urlsafe(32) for i in ids}


def write_region(
    directory: Path,
    region: Sequence[SimInstitution],
    tokens: dict[str, str],
    *,
    params: dict[str, Any],
    today: date,
) -> Path:
    """Write ``institutions.yaml`` (hashes only), ``tokens.json`` (mode 0600) and
    ``region.json`` (the parameters) into ``directory``; the registry is validated by
    :meth:`Registry.load` before it is kept. Returns the registry path."""
    directory.mkdir(parents=True, exist_ok=True)
    entries = []
    for sim in region:
        inst = sim.inst.model_copy(
            update={
                "credentials": (
                    Credential(token_hash=hash_token(tokens[sim.id]), created=today, label="sim"),
                )
            }
        )
        doc = inst.model_dump(mode="python", exclude_none=True)
        doc["qualifications"] = [
            {k: v for k, v in q.items() if v is not None} for q in doc["qualifications"]
        ]
        doc["alliances"] = list(doc["alliances"])
        doc["credentials"] = [dict(c) for c in doc["credentials"]]
        entries.append(doc)
    path = directory / REGISTRY_FILE
    tmp = directory / f".{REGISTRY_FILE}.tmp"
    yaml = YAML(typ="rt")  # keeps the field order of config/institutions.yaml
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 4096
    yaml.allow_unicode = True
    yaml.representer.ignore_aliases = lambda *_: True
    with tmp.open("w", encoding="utf-8") as f:
        f.write(
            "# Institution registry of a SIMULATED region, written by `mrhub simulate prepare`\n"
            f"# ({json.dumps(params, ensure_ascii=False)}). Every name and code is made up.\n"
        )
        yaml.dump({"institutions": entries}, f)
    try:
        Registry.load(tmp)
    except ConfigError:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    token_path = directory / TOKENS_FILE
    fd = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(tokens, f)
    (directory / REGION_FILE).write_text(
        json.dumps({**params, "today": today.isoformat()}, ensure_ascii=False, indent=2) + "\n",
        encoding="utf-8",
    )
    return path


def read_tokens(directory: Path) -> dict[str, str]:
    path = directory / TOKENS_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read the simulated hospitals' tokens: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected an object of institution id → token")
    return {str(k): str(v) for k, v in data.items()}


def read_params(directory: Path) -> dict[str, Any]:
    path = directory / REGION_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"{path}: no simulated region here; run `mrhub simulate prepare --dir {directory}` "
            "and start the hub with its institutions.yaml"
        ) from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected an object")
    return data
