"""``mrhub simulate prepare|run``: a hospital region in a box.

``prepare`` writes a simulated region's institution registry (and its hospitals' tokens) into
a directory; start the hub against it (``MRHUB_INGEST__INSTITUTIONS_PATH`` and
``MRHUB_RECOGNITION__INSTITUTIONS_PATH``); ``run`` then posts a seeded stream of visits through
the gateway and compares the hub's decisions with the ground truth. docs/simulate.md.
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
    from services.simulate.region import SimInstitution
    from services.simulate.runner import Options

DEFAULT_SEED = 20261122


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "simulate",
        help="a simulated hospital region: prepare its registry, run a stream through the hub",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("action", choices=["prepare", "run"])
    p.add_argument("--dir", type=Path, default=None, help="default: $MRHUB_STATE_DIR/simulate")
    p.add_argument("--institutions", type=int, default=None, help="prepare: default 50")
    p.add_argument("--patients", type=int, default=1000)
    p.add_argument("--days", type=int, default=1)
    p.add_argument("--seed", type=int, default=None, help=f"default {DEFAULT_SEED}")
    p.add_argument("--url", default=None, help="the gateway (default from MRHUB_INGEST__*)")
    p.add_argument("--bootstrap", default=None, help="Kafka (default: settings / local broker)")
    p.add_argument("--rate", type=float, default=0.0, help="requests/s; 0 = as fast as possible")
    p.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    p.add_argument("--run-id", default=None, help="varies identifiers only (default: random)")
    p.add_argument("--recognition-group", default="mrhub-recognition")
    p.add_argument("--stall", type=float, default=180.0, help="give up waiting after N s idle")
    p.add_argument("--min-agreement", type=float, default=0.995, help="exit 1 below this")
    p.add_argument(
        "--card-regions",
        default=None,
        help="comma-separated 6-digit regions of the 身份证 numbers (tests keep theirs apart)",
    )
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=main)


def _dir(args: argparse.Namespace, settings: Settings) -> Path:
    return Path(args.dir) if args.dir else settings.state_dir / "simulate"


def load_region(directory: Path) -> tuple[list[SimInstitution], dict[str, Any]]:
    """The region ``prepare`` wrote: regenerated from its parameters and checked against the
    registry file (which the hub reads)."""
    from services.common.institutions import Registry
    from services.simulate.region import REGISTRY_FILE, generate_region, read_params

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
    from services.simulate.region import generate_region, new_tokens, write_region

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
    from services.recognition.catalog import load_catalogs
    from services.simulate.region import read_tokens
    from services.simulate.runner import run
    from services.simulate.scenario import Config, build_scenario

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
    from services.recognition.catalog import CHINA_TZ
    from services.simulate.region import read_params
    from services.simulate.runner import Options, format_report

    directory = _dir(args, settings)
    if args.action == "prepare":
        today = datetime.now(CHINA_TZ).date()
        path = prepare(directory, args.institutions or 50, args.seed or DEFAULT_SEED, today)
        print(f"simulated region of {args.institutions or 50} institutions written to {path}")
        print("start the hub against it, e.g.:")
        print(f"  export MRHUB_INGEST__INSTITUTIONS_PATH={path}")
        print(f"  export MRHUB_RECOGNITION__INSTITUTIONS_PATH={path}")
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
