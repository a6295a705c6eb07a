"""``mrhub catalog``: check a recognition catalogue, list the items in force.

- ``mrhub catalog check [PATH]`` validates a catalogue file or every ``*.yaml`` of a
  directory (default ``config/catalog``), prints each problem naming the file, the item
  and the field, and exits 1 if there is any, else 0.
- ``mrhub catalog list [--path PATH] [--at WHEN] [--json]`` prints the items in force at
  ``WHEN`` (an ISO date or datetime, China time unless it has an offset; default now) with
  their codes, category, window and price; ``--json`` prints a JSON array instead.

:func:`add_parser` registers the sub-command on the main parser; the function it sets as
``func`` takes ``(args)`` — or ``(args, settings)``, which it ignores — and returns the exit
code.
"""

from __future__ import annotations

import argparse
import sys
import unicodedata
from datetime import date, datetime
from pathlib import Path
from typing import Any, TextIO

from services.common import codec
from services.recognition.catalog import (
    CHINA_TZ,
    DEFAULT_CATALOG_PATH,
    Catalog,
    CatalogError,
    Item,
    catalog_files,
    load_catalogs,
)


def add_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Register ``catalog check`` and ``catalog list`` on the main parser's sub-parsers."""
    p = subparsers.add_parser("catalog", help="the recognition catalogue (versioned data)")
    sub = p.add_subparsers(dest="catalog_action", required=True)
    q = sub.add_parser("check", help="validate a catalogue file or directory")
    q.add_argument(
        "path",
        type=Path,
        nargs="?",
        default=DEFAULT_CATALOG_PATH,
        help=f"a catalogue file or a directory of them (default {DEFAULT_CATALOG_PATH})",
    )
    q = sub.add_parser("list", help="the items in force, with codes, window and price")
    q.add_argument(
        "--path",
        type=Path,
        default=DEFAULT_CATALOG_PATH,
        help=f"a catalogue file or a directory of them (default {DEFAULT_CATALOG_PATH})",
    )
    q.add_argument(
        "--at",
        type=parse_when,
        default=None,
        help="ISO date or datetime to list the items in force at (default: now)",
    )
    q.add_argument("--json", action="store_true", help="print a JSON array")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace, settings: object = None) -> int:
    """Dispatch ``catalog check`` / ``catalog list``; returns the exit code."""
    if args.catalog_action == "check":
        return check(args.path)
    return list_items(args.path, at=args.at, as_json=args.json)


def parse_when(text: str) -> datetime:
    """``2026-05-01`` (start of that day, China time) or an ISO datetime (China time when
    it has no offset)."""
    text = text.strip()
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            return datetime(day.year, day.month, day.day, tzinfo=CHINA_TZ)
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO date or datetime: {text!r}") from exc
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=CHINA_TZ)


def check(path: Path, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Validate ``path``; print one line per catalogue or every problem. 0 valid, 1 not."""
    out = out or sys.stdout
    err = err or sys.stderr
    if not path.exists():
        print(f"mrhub catalog check: {path}: no such file or directory", file=err)
        return 1
    try:
        catalogs = load_catalogs(path)
    except CatalogError as exc:
        print(str(exc), file=err)
        return 1
    for c in catalogs:
        until = c.effective_to.isoformat() if c.effective_to else "open"
        print(
            f"ok  {c.source}: {c.version} ({c.region_name or c.region_code} {c.region_code}), "
            f"{len(c.items)} items, in force {c.effective_from}..{until}",
            file=out,
        )
    files = len(catalog_files(path))
    print(f"{files} catalogue file(s) valid", file=out)
    return 0


def item_row(catalog: Catalog, item: Item) -> dict[str, Any]:
    """One item as ``catalog list --json`` prints it."""
    return {
        "catalog": catalog.catalog,
        "version": catalog.version,
        "region_code": catalog.region_code,
        "id": item.id,
        "name": item.name,
        "category": item.category,
        "group": item.group,
        "codes": [{"system": s, "code": c} for s, c in catalog.item_codings(item)],
        "imaging": item.imaging.model_dump(mode="json") if item.imaging else None,
        "window": {
            "length": item.window.length,
            "unit": item.window.unit,
            "anchor": item.window.anchor,
            "basis": item.window.basis,
        },
        "scope": catalog.rules_for(item).scope,
        "price_yuan": item.price_yuan,
    }


def list_items(
    path: Path,
    *,
    at: datetime | None = None,
    as_json: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Print the items in force at ``at`` (default now). 0, or 1 if the catalogue is invalid."""
    out = out or sys.stdout
    err = err or sys.stderr
    when = at or datetime.now(CHINA_TZ)
    try:
        catalogs = load_catalogs(path)
    except CatalogError as exc:
        print(str(exc), file=err)
        return 1
    rows = [item_row(c, item) for c, item in catalogs.items_in_force(when)]
    if as_json:
        print(codec.pretty(rows), file=out)
        return 0
    if not rows:
        print(f"no catalogue item is in force at {when.isoformat()}", file=err)
        return 0
    print(format_table(rows), file=out)
    return 0


_COLUMNS = ("VERSION", "ID", "NAME", "CATEGORY", "WINDOW", "ANCHOR", "PRICE", "CODES")


def _width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _codes_text(row: dict[str, Any]) -> str:
    parts = [c["code"] for c in row["codes"]]
    if row["imaging"]:
        img = row["imaging"]
        contrast = "+contrast" if img["contrast"] else "plain"
        parts.insert(0, f"{'/'.join(img['modalities'])} {img['body_part']} {contrast}")
    return ", ".join(parts)


def format_table(rows: list[dict[str, Any]]) -> str:
    """A fixed-width table of ``item_row`` dicts (CJK characters take two columns)."""
    cells = [
        (
            r["version"],
            r["id"],
            r["name"],
            r["category"],
            f"{r['window']['length']} {r['window']['unit']}"
            + (" (default)" if r["window"]["basis"] == "default" else ""),
            r["window"]["anchor"],
            f"¥{r['price_yuan']}",
            _codes_text(r),
        )
        for r in rows
    ]
    widths = [max(_width(row[i]) for row in [_COLUMNS, *cells]) for i in range(len(_COLUMNS))]
    return "\n".join(
        "  ".join(c + " " * (w - _width(c)) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in [_COLUMNS, *cells]
    )
