"""``python -m mrhub_tools.cnpop --name cn-10k --stats``: generate (or load) and count."""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

from . import REPORT_SEED, load_frame, size_of
from .generate import RATES, generate
from .stats import stats


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mrhub_tools.cnpop", description=__doc__)
    ap.add_argument("--name", default="cn-10k", help="cn-10k, cn-1m or cn-<N>")
    ap.add_argument("--seed", type=int, default=REPORT_SEED)
    ap.add_argument("--stats", action="store_true", help="print counts (generates afresh)")
    args = ap.parse_args(argv)
    n = size_of(args.name)
    if not args.stats:
        t0 = time.process_time()
        frame = load_frame(args.name, seed=args.seed)
        print(f"{args.name}: {len(frame)} records (cached), {time.process_time() - t0:.1f} s CPU")
        return 0
    t0 = time.process_time()
    draw = generate(n, args.seed)
    cpu = time.process_time() - t0
    out = stats(draw)
    records = int(str(out["records"]))
    errors: dict[str, int] = out["errors"]  # type: ignore[assignment]
    out["error_rates_per_record"] = {k: round(v / records, 5) for k, v in errors.items()}
    out["generate_cpu_seconds"] = round(cpu, 1)
    out["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    out["configured_rates"] = RATES
    json.dump(out, sys.stdout, ensure_ascii=False, indent=1)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
