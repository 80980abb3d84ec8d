"""``fabric run train`` and ``fabric report``: the workloads' command line.

``add_parsers(subparsers)`` adds both to the ``fabric`` parser; each handler
returns the exit code and lets FabricError through (the main CLI prints it
as one line and exits 1).
"""
from __future__ import annotations

import argparse
import json
import sys

from ..errors import InvalidArgument
from ..statedir import default_state_dir
from ._common import add_state_dir, positive_int


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def cmd_run_train(args) -> int:
    from ..workloads.config import TrainConfig
    from ..workloads.report import summary_table
    from ..workloads.runner import train
    cfg = TrainConfig(hosts=args.hosts, mode=args.mode, steps=args.steps, seed=args.seed,
                      params=args.params, layers=args.layers, batch=args.batch, lr=args.lr,
                      placement=args.placement, topology=args.topology, inject=args.inject,
                      devices=args.devices, state_dir=args.state_dir or default_state_dir(),
                      timeout_ms=args.timeout_ms)
    result = train(cfg, quiet=args.quiet, out=args.out)
    if args.json:
        print(json.dumps(result))
    elif not args.quiet:
        print(summary_table([result], [args.out or "this run"]))
        if args.out:
            print(f"\nresult written to {args.out}")
    elif args.out:
        print(args.out)
    return 0


def _load(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            result = json.load(f)
    except OSError as exc:
        raise InvalidArgument(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise InvalidArgument(f"{path} is not JSON: {exc}") from None
    if not isinstance(result, dict) or result.get("schema") != 1 or result.get("kind") != "train":
        raise InvalidArgument(f"{path} is not a `fabric run train` result (schema 1)")
    return result


def cmd_report(args) -> int:
    from ..workloads.report import PlotsUnavailable, summary_table, write_plots
    paths = [args.result] + list(args.compare or [])
    results = [_load(p) for p in paths]
    print(summary_table(results, paths))
    if args.out:
        try:
            files = write_plots(results, paths, args.out)
        except PlotsUnavailable as exc:
            print(f"fabric: {exc}", file=sys.stderr)
            return 1
        print(f"\n{len(files)} plots written to {args.out}:")
        for f in files:
            print(f"  {f}")
    return 0


def add_parsers(subparsers) -> None:
    """Add ``run train`` and ``report`` to the ``fabric`` command's subparsers."""
    run = subparsers.add_parser("run", help="run a workload on the emulated fabric",
                                description="Run a workload on the emulated fabric.")
    run_sub = run.add_subparsers(dest="workload", metavar="WORKLOAD")
    run_sub.required = True
    t = run_sub.add_parser(
        "train", help="train an MLP on N hosts, weights replicated or pooled",
        description="Train a numpy MLP on N emulated hosts, one worker process each. "
                    "replicated: private weights, gradients all-reduced over a ZeroMQ ring "
                    "(bytes charged on the fabric). pooled: one copy of the weights in pooled "
                    "memory, a reduce-scatter in memory. Attaches to the cluster running in "
                    "the state dir, or starts one for the run and stops it afterwards. "
                    "See docs/workloads.md.")
    t.add_argument("--hosts", type=positive_int, default=3, help="hosts = workers (default 3)")
    t.add_argument("--mode", choices=("pooled", "replicated"), default="pooled",
                   help="where the weights live (default pooled)")
    t.add_argument("--steps", type=positive_int, default=20, help="training steps (default 20)")
    t.add_argument("--seed", type=int, default=0, help="seed of model, data and jitter (default 0)")
    size = t.add_mutually_exclusive_group()
    size.add_argument("--params", default=None, metavar="P",
                      help="model size, e.g. 100k, 8M, 50M (default 100k); picks the widths")
    size.add_argument("--layers", default=None, metavar="W0,W1,...",
                      help="explicit widths, e.g. 1024,4096,4096,1024")
    t.add_argument("--batch", type=positive_int, default=64, help="global batch (default 64)")
    t.add_argument("--lr", type=_positive_float, default=0.05, help="learning rate (default 0.05)")
    t.add_argument("--placement", default="interleave", metavar="PLACEMENT",
                   help="pooled weights: interleave (default), local, or a device name")
    t.add_argument("--topology", default=None, metavar="FILE|PRESET",
                   help="topology when the run starts its own cluster (default switched-pool)")
    t.add_argument("--devices", type=positive_int, default=None,
                   help="devices when the run starts its own cluster (default: one per host)")
    t.add_argument("--inject", choices=("off", "virtual", "spin"), default=None,
                   help="how access costs are applied (default: the cluster's; virtual for a "
                        "cluster the run starts)")
    t.add_argument("--timeout-ms", type=positive_int, default=60_000,
                   help="deadline of every wait between workers (default 60000)")
    t.add_argument("--out", default=None, metavar="RESULT.json", help="write the result JSON here")
    t.add_argument("--json", action="store_true", help="print the result JSON on stdout")
    t.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    add_state_dir(t)
    t.set_defaults(fn=cmd_run_train)

    rep = subparsers.add_parser(
        "report", help="summarise and plot `fabric run train` results",
        description="Print a summary table of one or more results (one column each) and, "
                    "with --out, write PNG plots: latency CDF, locality by host and tier, loss "
                    "and step time over steps, memory per process. Plots need matplotlib: "
                    'pip install "cxl-fabric[plot]".')
    rep.add_argument("result", metavar="RESULT.json")
    rep.add_argument("--compare", nargs="+", default=None, metavar="OTHER.json",
                     help="further results, shown side by side")
    rep.add_argument("--out", default=None, metavar="DIR", help="write PNG plots to DIR")
    rep.set_defaults(fn=cmd_report)


__all__ = ["add_parsers", "cmd_run_train", "cmd_report"]
