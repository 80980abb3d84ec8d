"""`fabric stats`, `fabric topo show`, `fabric calibrate` and `fabric demo`."""
from __future__ import annotations

import argparse
import json
import sys

from .._units import format_size
from ..errors import FabricError, InvalidArgument
from ..statedir import StateDir
from ._common import emit_json, ns, pct


def cmd_stats(args: argparse.Namespace) -> int:
    from ..engine.stats import cluster_stats
    state = StateDir(args.state_dir)
    st = cluster_stats(state.path)    # the same dict as fabric.Cluster.stats()
    if args.json:
        emit_json(st)
        return 0
    print(f"cluster {state.path}  inject {st['inject']}")
    print(f"\n{'host':<8}{'calls':>9}{'hit rate':>10}{'local':>8}{'cached':>8}{'far':>8}"
          f"{'remote':>8}{'p50':>10}{'p99':>10}{'p99.9':>10}{'max':>10}{'virtual time':>14}")
    rows = [(name, h, ns(h["virtual_time_ns"]) if h.get("calls") else "-")
            for name, h in st["hosts"].items()]
    for name, h, vt in rows + [("all", st["total"], "")]:
        t = h["tiers"]
        if h.get("calls"):
            lat = [ns(h[k]) for k in ("latency_ns_p50", "latency_ns_p99", "latency_ns_p999",
                                      "latency_ns_max")]
            shares = [pct(h["hit_rate"])] + [pct(t[k]["share"])
                                             for k in ("local", "cached", "far", "remote")]
        else:  # no calls: no figure to show, not a figure of 0 ns
            lat, shares = ["-"] * 4, ["-"] * 5
        print(f"{name:<8}{h.get('calls', 0):>9}{shares[0]:>10}{shares[1]:>8}{shares[2]:>8}"
              f"{shares[3]:>8}{shares[4]:>8}{lat[0]:>10}{lat[1]:>10}{lat[2]:>10}{lat[3]:>10}"
              f"{vt:>14}")
    print(f"\n{'device / link':<16}{'load GB/s':>11}{'util':>8}{'active hosts':>14}{'moved':>12}")
    for kind in ("devices", "links", "dram"):   # dram:<host>: its engines, not hosts
        for name, e in st.get(kind, {}).items():
            active = e.get("active_hosts", e.get("active_engines", 0))
            print(f"{name:<16}{e['load_gbps']:>11.2f}{pct(e['utilisation']):>8}"
                  f"{active:>14}{format_size(e['bytes_total']):>12}")
    if st.get("lockstep"):
        print(f"\n{'lockstep':<10}{'state':>9}{'clock':>14}{'waits':>9}{'waited':>10}")
        for name, m in st["lockstep"].items():
            print(f"{name:<10}{m['state']:>9}{ns(m['clock_ns']):>14}{m['waits']:>9}"
                  f"{ns(m['wait_ns']):>10}")
    return 0


def cmd_topo_show(args: argparse.Namespace) -> int:
    from ..topology import describe, load, render
    topo = load(args.spec, hosts=args.hosts, devices=args.devices, device_size=args.device_size)
    if args.json:
        emit_json(describe(topo))
    else:
        print(render(topo))
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from ..engine import calibrate
    state = StateDir(args.state_dir)
    if not args.no_store and not state.exists():
        raise FabricError(f"no cluster in {state.path} to store the calibration in "
                          f"(start one with `fabric up`, or pass --no-store)")
    print("measuring local DRAM latency and bandwidth, clock and engine call cost ...",
          file=sys.stderr)
    cal = calibrate()
    if not args.no_store:
        with open(state.calibration_file, "w", encoding="utf-8") as f:
            json.dump(cal, f, indent=1)
        cal["stored_in"] = state.calibration_file
    if args.json:
        emit_json(cal)
        return 0
    for key, value in cal.items():
        print(f"{key:<24}{value}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    if args.sharing:
        from ..demo import run_demo
        return run_demo(hosts=args.hosts or 2, size=args.size, topology=args.topology,
                        as_json=args.json)
    if args.size != "64MiB" or args.topology is not None:
        raise InvalidArgument("--size and --topology go with --sharing (the training demo runs "
                              "on the default topology)")
    from ..workloads.demo import run_training_demo
    # Cluster.start takes $FABRIC_STATE_DIR when set, like every other command.
    return run_training_demo(hosts=args.hosts or 3, steps=args.steps, out_dir=args.out,
                             as_json=args.json)
