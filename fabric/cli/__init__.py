"""The `fabric` command line (console entry point ``fabric.cli:main``).

Every sub-command has --help; every failure prints one line to stderr
("fabric: error: ...") and exits non-zero (1 for fabric errors, 2 for usage).
Every command that prints takes ``--json`` and then prints one JSON object
carrying ``"schema": 1``; a failure under ``--json`` also prints
``{"schema": 1, "error": {"code", "message"}}`` on stdout.  Output cut short
by its reader (``fabric status | head -1``) ends quietly with exit code 141.

Modules: :mod:`.lifecycle` (up, down, logs, free), :mod:`.status`,
:mod:`.inspect` (stats, topo show, calibrate, demo), :mod:`.validate`,
:mod:`._common`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from .. import __version__
from ..constants import DEFAULT_INJECT, DEFAULT_NODE_TIMEOUT_MS, INJECT_MODES
from ..errors import FabricError
from ..topology import PRESETS
from ._common import add_json, add_state_dir, error_json, positive_int, seed
from .inspect import cmd_calibrate, cmd_demo, cmd_stats, cmd_topo_show
from .lifecycle import cmd_down, cmd_free, cmd_logs, cmd_up
from .faults import add_parsers as add_fault_parsers
from .status import cmd_status
from .validate import add_parsers as add_validate_parsers
from .workloads import add_parsers as add_workload_parsers

#: Exit code after the reader of our output went away (128 + SIGPIPE), as a shell reports it.
EXIT_BROKEN_PIPE = 141


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors: ``fabric up: error: ... (see fabric up --help)``."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="fabric", description="Emulate a CXL/UCIe disaggregated memory fabric on this machine.")
    p.add_argument("--version", action="version", version=f"cxl-fabric {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    presets = ", ".join(PRESETS)

    up = sub.add_parser("up", help="start a local cluster in the background",
                        description="Start the fabric manager and one node daemon per node; "
                                    "return once all answer.  Sizes take IEC units (512MiB, "
                                    "1GiB); decimal ones (MB, GB) only when they are whole "
                                    "4 KiB pages.")
    up.add_argument("--hosts", type=positive_int, default=None, help="number of emulated hosts (default 2)")
    up.add_argument("--devices", type=positive_int, default=None,
                    help="number of memory devices (default: one per host)")
    up.add_argument("--device-size", default=None, metavar="SIZE",
                    help="capacity of each generated device, e.g. 512MiB (default 512MiB)")
    up.add_argument("--topology", default=None, metavar="FILE|PRESET",
                    help=f"a topology TOML file (docs/topology.md) or a preset name: {presets} "
                         f"(default switched-pool)")
    up.add_argument("--inject", choices=INJECT_MODES, default=DEFAULT_INJECT,
                    help=f"how access costs are applied (default {DEFAULT_INJECT})")
    up.add_argument("--seed", type=seed, default=0, metavar="N",
                    help="seed for modelled jitter, 0..2**64-1 (default 0)")
    up.add_argument("--lockstep-ns", type=positive_int, default=0, metavar="Q",
                    help="with --inject virtual: hosts advance in lockstep quanta of Q ns of "
                         "virtual time, so multi-process runs repeat exactly for a seed "
                         "(docs/cost-model.md, \"Time bases\"; default off)")
    up.add_argument("--lockstep-hosts", type=positive_int, default=None, metavar="N",
                    help="hosts of each lockstep group (default: every host of the topology)")
    up.add_argument("--node-timeout", type=positive_int, default=DEFAULT_NODE_TIMEOUT_MS,
                    metavar="MS", help="a node silent this long is marked unavailable "
                                       f"(default {DEFAULT_NODE_TIMEOUT_MS} ms)")
    add_json(up)
    add_state_dir(up)
    up.set_defaults(fn=cmd_up)

    down = sub.add_parser("down", help="stop the cluster and remove its files",
                          description="Stop every daemon of the cluster and remove its state dir. "
                                      "With nothing running it says so and exits 0.")
    down.add_argument("--keep-memory", action="store_true",
                      help="keep the device files and the manager's journal (the next "
                           "`up` reattaches them, with every region)")
    down.add_argument("--keep-logs", action="store_true",
                      help="keep the daemons' logs in <state dir>/logs/ (read them with "
                           "`fabric logs`; the next `up` clears them)")
    add_json(down)
    add_state_dir(down)
    down.set_defaults(fn=cmd_down)

    st = sub.add_parser("status", help="nodes, devices, regions and sessions of the cluster",
                        description="Manager uptime; per node: liveness, pid, heartbeat age, "
                                    "attached sessions; per device: used and free bytes; every "
                                    "region with owner, share, allow, size and age.  With the "
                                    "manager down it lists the daemons it can still see.")
    st.add_argument("--check", action="store_true",
                    help="health check for scripts: print nothing and exit 0 when the manager "
                         "and every node are up, else one line and exit 1")
    add_json(st)
    add_state_dir(st)
    st.set_defaults(fn=cmd_status)

    logs = sub.add_parser("logs", help="print a daemon's log (or list the logs)",
                          description="Print the log of one daemon (\"manager\" or a node name) "
                                      "from <state dir>/logs/, then its stdout/stderr if it "
                                      "wrote any; with no NAME, list the logs.  After "
                                      "`fabric down --keep-logs` the logs stay readable.")
    logs.add_argument("name", nargs="?", default=None, metavar="NAME",
                      help="manager, or a node name such as h0")
    logs.add_argument("--lines", "-n", type=positive_int, default=None, metavar="N",
                      help="only the last N lines (default: all)")
    add_json(logs)
    add_state_dir(logs)
    logs.set_defaults(fn=cmd_logs)

    free = sub.add_parser("free", help="free a region from the command line",
                          description="Free region NAME: as its owner (--host OWNER), or "
                                      "whoever owns it (--force), e.g. a region left by a "
                                      "crashed program.  Its memory is scrubbed before reuse.")
    free.add_argument("name", metavar="NAME", help="the region's name")
    who = free.add_mutually_exclusive_group(required=True)
    who.add_argument("--host", default=None, metavar="OWNER",
                     help="free as this host (must be the region's owner)")
    who.add_argument("--force", action="store_true", help="free it whoever owns it")
    add_json(free)
    add_state_dir(free)
    free.set_defaults(fn=cmd_free)

    stats = sub.add_parser("stats", help="locality, hit rates, latency percentiles, link load",
                           description="Per-host and cluster-wide figures read live from the "
                                       "engine's shared segment: share of bytes by tier, page "
                                       "cache hit rate, latency percentiles per access, "
                                       "virtual time, and load on every device and link "
                                       "(\"-\" for a host that made no calls).")
    add_json(stats)
    add_state_dir(stats)
    stats.set_defaults(fn=cmd_stats)

    cal = sub.add_parser("calibrate", help="measure this machine's local costs for spin mode",
                         description="Measure local DRAM latency and bandwidth, the cost of a "
                                     "clock read and of one engine call; store them in the "
                                     "state dir (calibration.json), where sessions in spin "
                                     "mode pick them up.")
    cal.add_argument("--no-store", action="store_true",
                     help="only print the figures (no running cluster needed)")
    add_json(cal)
    add_state_dir(cal)
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
                      help=f"a topology TOML file or a preset name: {presets} "
                           f"(default switched-pool)")
    show.add_argument("--hosts", type=positive_int, default=None, help="hosts, for a preset")
    show.add_argument("--devices", type=positive_int, default=None, help="devices, for a preset")
    show.add_argument("--device-size", default=None, metavar="SIZE",
                      help="device capacity, for a preset (e.g. 1GiB)")
    add_json(show)
    show.set_defaults(fn=cmd_topo_show)

    demo = sub.add_parser(
        "demo", help="train one model with pooled vs replicated weights and compare",
        description="Start a private cluster (in $FABRIC_STATE_DIR when set, else a fresh dir "
                    "under /dev/shm) on the default topology, train a small MLP for a few dozen "
                    "steps with replicated weights and with one pooled copy, print the "
                    "comparison (loss, memory, step time, p99, locality), write the results and "
                    "plots to a folder it names, stop. With --sharing: the zero-copy sharing "
                    "demo instead (one region written by h0, read by every host).")
    demo.add_argument("--hosts", type=positive_int, default=None,
                      help="emulated hosts (default 3; 2 with --sharing)")
    demo.add_argument("--steps", type=positive_int, default=30,
                      help="training steps per mode (default 30)")
    demo.add_argument("--out", default=None, metavar="DIR",
                      help="where results and plots go (default: a fresh folder under /tmp)")
    demo.add_argument("--sharing", action="store_true",
                      help="run the zero-copy sharing demo instead of training")
    demo.add_argument("--size", default="64MiB", metavar="SIZE",
                      help="--sharing: size of the shared region (default 64MiB)")
    demo.add_argument("--topology", default=None, metavar="FILE|PRESET",
                      help="--sharing: topology file or preset (default: built-in)")
    add_json(demo)
    demo.set_defaults(fn=cmd_demo)

    add_workload_parsers(sub)
    add_fault_parsers(sub)
    add_validate_parsers(sub)
    return p


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> int:
    """Run one `fabric` command; return its exit code."""
    args = None
    try:
        args = build_parser().parse_args(argv)
        try:
            rc = args.fn(args)
        except FabricError as exc:
            if getattr(args, "json", False):
                print(json.dumps(error_json(exc.code, str(exc))))
            print(f"fabric: error: {exc}", file=sys.stderr)
            rc = 1
        except OSError as exc:
            if isinstance(exc, BrokenPipeError):
                raise
            msg = f"{exc.filename}: {exc.strerror}" if exc.filename and exc.strerror else str(exc)
            if getattr(args, "json", False):
                print(json.dumps(error_json("OS_ERROR", msg)))
            print(f"fabric: error: {msg}", file=sys.stderr)
            rc = 1
        sys.stdout.flush()
        return rc
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        print("fabric: interrupted", file=sys.stderr)
        return 130


__all__ = ["build_parser", "main", "EXIT_BROKEN_PIPE"]

if __name__ == "__main__":
    sys.exit(main())
