"""``fabric validate``: reproduce published measurements with the engine.

``add_parsers(subparsers)`` adds the command.  It runs every point of the shipped
points file (or ``--points FILE``) through the real engine (virtual mode, seeded;
:mod:`fabric.engine.validate`), prints emulator / published and the ratio for
each, and exits 1 when any point is outside its tolerance (0 when all are in).
"""
from __future__ import annotations

import argparse
import sys

from ._common import add_json, emit_json, seed


def _tolerance(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < 10:
        raise argparse.ArgumentTypeError(f"must be between 0 and 10 (0.15 = 15%), got {value}")
    return value


def _figure(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return f"{value:.1f} {unit}" if unit == "ns" else f"{value:.2f} {unit}"


def cmd_validate(args: argparse.Namespace) -> int:
    from ..engine.validate import load_points, run
    result = run(load_points(args.points), tolerance=args.tolerance, seed=args.seed)
    if args.json:
        emit_json(result)
    else:
        print(f"{'point':<20}{'emulator':>13}{'published':>18}{'ratio':>8}  result")
        for r in result["points"]:
            if r["published_range"] is not None:
                low, high = r["published_range"]
                pub = f"{low:g}-{high:g} {r['unit']}"
            else:
                pub = _figure(r["published"], r["unit"])
            verdict = "ok" if r["ok"] else f"OUTSIDE +-{r['tolerance']:.0%}"
            print(f"{r['id']:<20}{_figure(r['emulator'], r['unit']):>13}{pub:>18}"
                  f"{r['ratio']:>8.2f}  {verdict}")
        fails = [r for r in result["points"] if not r["ok"]]
        if fails:
            print("\nneeds:")
            for r in fails:
                print(f"  {r['id']}: {r['needs'] or '(no known cause)'}")
        print(f"\n{result['passed']} of {len(result['points'])} points within tolerance "
              f"(seed {result['seed']}; sources: fabric validate --json)")
    if not result["ok"]:
        print(f"fabric validate: {result['failed']} of {len(result['points'])} points outside "
              f"their tolerance", file=sys.stderr)
        return 1
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "validate", help="reproduce published latency/bandwidth measurements with the engine",
        description="Run each published data point (idle latencies of DRAM, a remote socket, "
                    "CXL expanders, a switched pool and a memory box; CXL bandwidths; DRAM "
                    "and CXL loaded latency; UCIe; RDMA) through the engine in virtual mode "
                    "and compare. Exits 1 when any point is outside its tolerance. "
                    "See docs/cost-model.md, Validation.")
    p.add_argument("--tolerance", type=_tolerance, default=0.15, metavar="FRACTION",
                   help="allowed |emulator/published - 1| (default 0.15)")
    p.add_argument("--points", default=None, metavar="FILE",
                   help="a points TOML file (default: the one shipped with cxl-fabric)")
    p.add_argument("--seed", type=seed, default=0, metavar="N", help="engine seed (default 0)")
    add_json(p)
    p.set_defaults(fn=cmd_validate)
