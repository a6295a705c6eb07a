"""``mrhub simulate prepare|run``: a hospital region in a box.

``prepare`` writes a simulated region's institution registry (and its hospitals' tokens) into
a directory; start the hub against it (``MRHUB_INSTITUTIONS_PATH``); ``run`` then posts a seeded
stream of visits through the gateway and compares the hub's decisions with the ground truth.
docs/simulate.md.

The parser of the verb is in services/cli.py (so that ``mrhub simulate --help`` works where the
tools are not installed); :func:`main` is its handler.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.common.errors import ConfigError, MrhubError
from services.common.settings import Settings

if TYPE_CHECKING:
    from mrhub_tools.simulate.region import SimInstitution
    from mrhub_tools.simulate.runner import Options

DEFAULT_SEED = 20261122


def _dir(args: argparse.Namespace, settings: Settings) -> Path:
    return Path(args.dir) if args.dir else settings.state_dir / "simulate"


def load_region(directory: Path) -> tuple[list[SimInstitution], dict[str, Any]]:
    """The region ``prepare`` wrote: regenerated from its parameters and checked against the
    registry file (which the hub reads)."""
    from mrhub_tools.simulate.region import REGISTRY_FILE, generate_region, read_params
    from services.common.institutions import Registry

    params = read_params(directory)
    today = date.fromisoformat(params["today"])
    region = generate_region(int(params["institutions"]), int(params["seed"]), today)
    registry = Registry.load(directory / REGISTRY_FILE)
    for sim in region:
        held = registry.get(sim.id)
        if held is None or held.model_copy(update={"credentials": ()}) != sim.inst:
            raise ConfigError(
                f"{directory / REGISTRY_FILE} does not match the region of {directory}/"
                "region.json; run `mrhub simulate prepare` again"
            )
    return region, {**params, "today": today}


def prepare(directory: Path, institutions: int, seed: int, today: date) -> Path:
    """Write the region's registry, tokens and parameters into ``directory``."""
    from mrhub_tools.simulate.region import generate_region, new_tokens, write_region

    region = generate_region(institutions, seed, today)
    tokens = new_tokens([s.id for s in region])
    return write_region(
        directory,
        region,
        tokens,
        params={"institutions": institutions, "seed": seed},
        today=today,
    )


def _bootstrap(args: argparse.Namespace, settings: Settings) -> str:
    if args.bootstrap:
        return str(args.bootstrap)
    if settings.kafka.bootstrap_servers:
        return settings.kafka.bootstrap_servers
    from services.common.broker import LocalBroker

    b = settings.broker
    info = LocalBroker(b.data_dir, settings.cache_dir, port=b.port).status()
    if info is None:
        raise MrhubError("no Kafka: pass --bootstrap or set MRHUB_KAFKA__BOOTSTRAP_SERVERS")
    return info.bootstrap


def simulate(
    directory: Path,
    *,
    patients: int,
    days: int,
    seed: int | None,
    opts: Options,
    run_id: str | None = None,
    card_regions: tuple[str, ...] | None = None,
    catalog_path: Path = Path("config/catalog"),
) -> dict[str, Any]:
    """Build the scenario for the region in ``directory`` and run it (what ``run`` does)."""
    from mrhub_tools.simulate.region import read_tokens
    from mrhub_tools.simulate.runner import run
    from mrhub_tools.simulate.scenario import Config, build_scenario
    from services.recognition.catalog import load_catalogs

    region, params = load_region(directory)
    tokens = read_tokens(directory)
    now = datetime.now(UTC)
    catalogs = load_catalogs(catalog_path)
    catalog = catalogs.catalog_for(region[0].inst.region_code, now)
    if catalog is None:
        raise MrhubError("no recognition catalogue is in force for the simulated region")
    config = Config(
        institutions=len(region),
        patients=patients,
        days=days,
        seed=params["seed"] if seed is None else seed,
        now=now,
        today=params["today"],
        salt=run_id or secrets.token_hex(4),
        card_regions=card_regions,
    )
    scn = build_scenario(config, region, catalog)
    return run(scn, tokens, opts)


def main(args: argparse.Namespace, settings: Settings) -> int:
    from mrhub_tools.simulate.region import read_params
    from mrhub_tools.simulate.runner import Options, format_report
    from services.recognition.catalog import CHINA_TZ

    directory = _dir(args, settings)
    if args.action == "prepare":
        today = datetime.now(CHINA_TZ).date()
        path = prepare(directory, args.institutions or 50, args.seed or DEFAULT_SEED, today)
        print(f"simulated region of {args.institutions or 50} institutions written to {path}")
        print("start the hub against it, e.g.:")
        print(f"  export MRHUB_INSTITUTIONS_PATH={path}")
        print("  mrhub up")
        print(f"then: mrhub simulate run --dir {directory} --patients N --days N")
        return 0
    params = read_params(directory)
    if args.institutions is not None and args.institutions != int(params["institutions"]):
        raise ConfigError(
            f"{directory} holds a region of {params['institutions']} institutions, not "
            f"{args.institutions}; prepare it again (and restart the hub) to change it"
        )
    url = args.url or f"http://{settings.ingest.host}:{settings.ingest.port}"
    opts = Options(
        url=url,
        bootstrap=_bootstrap(args, settings),
        concurrency=args.concurrency,
        rate=args.rate,
        recognition_group=args.recognition_group,
        stall_s=args.stall,
        show_progress=not args.no_progress,
    )
    summary = simulate(
        directory,
        patients=args.patients,
        days=args.days,
        seed=args.seed,
        opts=opts,
        run_id=args.run_id,
        card_regions=tuple(args.card_regions.split(",")) if args.card_regions else None,
        catalog_path=Path(settings.recognition.catalog_path),
    )
    if args.json:
        print(json.dumps(summary, ensure_ascii=False, indent=2))
    else:
        print(format_report(summary))
    ok = (
        summary["lost"] == 0
        and summary["duplicated"] == 0
        and summary["agreement"] >= args.min_agreement
    )
    if not ok:
        print(
            "mrhub simulate: the hub disagrees with the ground truth (see above)", file=sys.stderr
        )
    return 0 if ok else 1
