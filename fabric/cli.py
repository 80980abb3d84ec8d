"""The `fabric` command line.

Every sub-command has --help; every failure prints one line to stderr
("fabric: error: ...") and exits non-zero (1 for fabric errors, 2 for usage).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from . import __version__, protocol
from ._units import format_size
from .errors import FabricError
from .statedir import ENV_VAR, StateDir, default_state_dir


def _add_state_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state-dir", default=None, metavar="DIR",
                   help=f"cluster state directory (default: ${ENV_VAR} or {default_state_dir()})")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _progress(msg: str) -> None:
    if sys.stderr.isatty():
        print(f"\r  {msg}", end="", file=sys.stderr, flush=True)


# -- up / down / status ---------------------------------------------------------
def cmd_up(args) -> int:
    from .cluster import start
    from .topology import load
    topo = load(args.topology, hosts=args.hosts, devices=args.devices, device_size=args.device_size)
    t0 = time.monotonic()
    info = start(topo, args.state_dir, inject=args.inject, seed=args.seed, progress=_progress)
    info.pop("_procs", None)
    elapsed = time.monotonic() - t0
    if sys.stderr.isatty():
        print("\r", end="", file=sys.stderr)
    if args.json:
        print(json.dumps({"state_dir": info["state_dir"], "pids": info["pids"],
                          "topology": topo.name, "up_seconds": round(elapsed, 3)}))
    else:
        print(f"cluster up in {elapsed:.2f} s: {len(topo.hosts)} hosts "
              f"({', '.join(topo.host_names)}), {len(topo.devices)} devices "
              f"({format_size(topo.capacity_bytes)}), topology {topo.name}, "
              f"inject {args.inject}, state dir {info['state_dir']}")
    return 0


def cmd_down(args) -> int:
    from .cluster import stop
    res = stop(args.state_dir, keep_memory=args.keep_memory)
    msg = f"stopped {len(res['stopped'])} daemons in {res['state_dir']}"
    if res["killed"]:
        msg += f" (killed after timeout: {', '.join(res['killed'])})"
    if res["kept_memory"]:
        msg += "; device files kept"
    print(msg)
    return 0


def _status(state_dir: str | None) -> dict:
    from .cluster import running_pids
    state = StateDir(state_dir)
    info = state.read()
    if "manager" not in running_pids(state):
        raise FabricError(f"the fabric manager of {state.path} is not running "
                          f"(it crashed or was killed); `fabric down` cleans up")
    with protocol.Client(state.manager_endpoint, "cli", timeout_ms=2000) as c:
        st = c.request("STATUS")
    st["state_dir"] = state.path
    st["options"] = info.get("options", {})
    return st


def cmd_status(args) -> int:
    st = _status(args.state_dir)
    if args.json:
        print(json.dumps(st, indent=1))
        return 0
    m = st["manager"]
    print(f"cluster {st['state_dir']}  topology {m['topology']}  manager pid {m['pid']}  "
          f"inject {st['options'].get('inject')}")
    print(f"\n{'node':<10}{'alive':<7}{'pid':<9}{'incarnation':<19}devices")
    for n in st["nodes"]:
        kind = "" if n["is_host"] else " (memory-only)"
        print(f"{n['name']:<10}{'yes' if n['alive'] else 'NO':<7}{n['pid'] or '-':<9}"
              f"{n['incarnation'] or '-':<19}{','.join(n['devices']) or '-'}{kind}")
    print(f"\n{'device':<10}{'node':<10}{'capacity':>12}{'used':>12}")
    for d in st["devices"]:
        print(f"{d['name']:<10}{d['node']:<10}{format_size(d['capacity_bytes']):>12}"
              f"{format_size(d['used_bytes']):>12}")
    print(f"\n{len(st['regions'])} region(s)")
    for r in st["regions"]:
        print(f"  {r['name']:<20}{format_size(r['nbytes']):>12}  {r['share']:<9}owner {r['owner']:<6}"
              f"{r['placement']} on {','.join(r['devices'])}  at {r['address']:#x}")
    return 0


def cmd_topo_show(args) -> int:
    from .topology import describe, load, render
    topo = load(args.spec, hosts=args.hosts, devices=args.devices, device_size=args.device_size)
    if args.json:
        print(json.dumps(describe(topo), indent=1))
    else:
        print(render(topo))
    return 0


def _pct(x: float) -> str:
    return f"{100 * x:5.1f}%"


def _ns(x: float) -> str:
    x = float(x)
    if x >= 1e9:
        return f"{x / 1e9:.2f} s"
    if x >= 1e6:
        return f"{x / 1e6:.2f} ms"
    if x >= 1e3:
        return f"{x / 1e3:.2f} us"
    return f"{x:.0f} ns"


def cmd_stats(args) -> int:
    from .engine import read_shared_stats
    from .topology import Topology
    state = StateDir(args.state_dir)
    info = state.read()
    st = read_shared_stats(state.engine_segment, Topology.from_dict(info["topology"]).engine_params())
    st["inject"] = info.get("options", {}).get("inject")
    if args.json:
        print(json.dumps(st, indent=1))
        return 0
    print(f"cluster {state.path}  inject {st['inject']}")
    print(f"\n{'host':<8}{'calls':>9}{'hit rate':>10}{'local':>8}{'cached':>8}{'far':>8}"
          f"{'remote':>8}{'p50':>10}{'p99':>10}{'p99.9':>10}{'max':>10}{'virtual time':>14}")
    rows = [(name, h, _ns(h["virtual_time_ns"])) for name, h in st["hosts"].items()]
    for name, h, vt in rows + [("all", st["total"], "")]:
        t = h["tiers"]
        print(f"{name:<8}{h['calls']:>9}{_pct(h['hit_rate']):>10}{_pct(t['local']['share']):>8}"
              f"{_pct(t['cached']['share']):>8}{_pct(t['far']['share']):>8}"
              f"{_pct(t['remote']['share']):>8}{_ns(h['latency_ns_p50']):>10}"
              f"{_ns(h['latency_ns_p99']):>10}{_ns(h['latency_ns_p999']):>10}"
              f"{_ns(h['latency_ns_max']):>10}{vt:>14}")
    print(f"\n{'device / link':<16}{'load GB/s':>11}{'util':>8}{'active hosts':>14}{'moved':>12}")
    for kind in ("devices", "links"):
        for name, e in st[kind].items():
            print(f"{name:<16}{e['load_gbps']:>11.2f}{_pct(e['utilisation']):>8}"
                  f"{e['active_hosts']:>14}{format_size(e['bytes_total']):>12}")
    return 0


def cmd_calibrate(args) -> int:
    from .engine import calibrate
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
    print(json.dumps(cal, indent=1))
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo
    return run_demo(hosts=args.hosts, size=args.size, topology=args.topology)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fabric", description="Emulate a CXL/UCIe disaggregated memory fabric on this machine.")
    p.add_argument("--version", action="version", version=f"cxl-fabric {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    up = sub.add_parser("up", help="start a local cluster in the background",
                        description="Start the fabric manager and one node daemon per node; "
                                    "return once all answer.")
    up.add_argument("--hosts", type=_positive_int, default=None, help="number of emulated hosts (default 2)")
    up.add_argument("--devices", type=_positive_int, default=None,
                    help="number of memory devices (default: one per host)")
    up.add_argument("--device-size", default=None, metavar="SIZE",
                    help="capacity of each generated device, e.g. 512MiB (default 512MiB)")
    up.add_argument("--topology", default=None, metavar="FILE|PRESET",
                    help="a topology TOML file (docs/topology.md) or a preset name: "
                         "switched-pool (default), direct, numa, rdma, ucie")
    up.add_argument("--inject", choices=("off", "virtual", "spin"), default="virtual",
                    help="how access costs are applied (default virtual)")
    up.add_argument("--seed", type=int, default=0, help="seed for modelled jitter (default 0)")
    up.add_argument("--json", action="store_true", help="print the result as JSON")
    _add_state_dir(up)
    up.set_defaults(fn=cmd_up)

    down = sub.add_parser("down", help="stop the cluster and remove its files",
                          description="Stop every daemon of the cluster and remove its state dir.")
    down.add_argument("--keep-memory", action="store_true",
                      help="keep the device files (the next `up` reattaches them)")
    _add_state_dir(down)
    down.set_defaults(fn=cmd_down)

    st = sub.add_parser("status", help="nodes, devices and regions of the running cluster")
    st.add_argument("--json", action="store_true", help="print JSON")
    _add_state_dir(st)
    st.set_defaults(fn=cmd_status)

    stats = sub.add_parser("stats", help="locality, hit rates, latency percentiles, link load",
                           description="Per-host and cluster-wide figures read live from the "
                                       "engine's shared segment: share of bytes by tier, page "
                                       "cache hit rate, latency percentiles per access, "
                                       "virtual time, and load on every device and link.")
    stats.add_argument("--json", action="store_true", help="print JSON")
    _add_state_dir(stats)
    stats.set_defaults(fn=cmd_stats)

    cal = sub.add_parser("calibrate", help="measure this machine's local costs for spin mode",
                         description="Measure local DRAM latency and bandwidth, the cost of a "
                                     "clock read and of one engine call; store them in the "
                                     "state dir (calibration.json), where sessions in spin "
                                     "mode pick them up.")
    cal.add_argument("--no-store", action="store_true",
                     help="only print the figures (no running cluster needed)")
    _add_state_dir(cal)
    cal.set_defaults(fn=cmd_calibrate)

    topo = sub.add_parser("topo", help="inspect topologies",
                          description="Inspect topology files and presets.")
    topo_sub = topo.add_subparsers(dest="topo_command", metavar="SUBCOMMAND")
    topo_sub.required = True
    show = topo_sub.add_parser(
        "show", help="hosts, devices, links and the host x device latency/bandwidth matrix",
        description="Print a topology (file or preset; default: the switched-pool preset) with "
                    "the idle latency and bottleneck bandwidth from every host to every device.")
    show.add_argument("spec", nargs="?", default=None, metavar="FILE|PRESET",
                      help="a topology TOML file or a preset name (default switched-pool)")
    show.add_argument("--hosts", type=_positive_int, default=None, help="hosts, for a preset")
    show.add_argument("--devices", type=_positive_int, default=None, help="devices, for a preset")
    show.add_argument("--device-size", default=None, metavar="SIZE", help="device capacity, for a preset")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(fn=cmd_topo_show)

    demo = sub.add_parser("demo", help="start a cluster, share a region between hosts, stop",
                          description="Start a private cluster, run host processes that share "
                                      "pooled memory with no copy, print what happened, stop.")
    demo.add_argument("--hosts", type=_positive_int, default=2, help="emulated hosts (default 2)")
    demo.add_argument("--size", default="64MiB", help="size of the shared region (default 64MiB)")
    demo.add_argument("--topology", default=None, metavar="FILE",
                      help="topology file or preset (default: built-in)")
    demo.set_defaults(fn=cmd_demo)

    from .faults.cli import add_parsers as add_fault_parsers
    add_fault_parsers(sub, _add_state_dir)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except FabricError as exc:
        print(f"fabric: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fabric: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
