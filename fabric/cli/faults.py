"""``fabric fault ...`` and ``fabric chaos``: inject, list and heal faults, run campaigns."""
from __future__ import annotations

import argparse
import json
import time

from ..faults import KINDS, faults, heal, inject
from ._common import add_state_dir


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 seconds, got {text}")
    return value


def cmd_inject(args) -> int:
    fid = inject(args.fault_kind, args.target, state_dir=args.state_dir, at_s=args.at,
                 for_s=args.for_s, by="cli")
    if args.json:
        print(json.dumps({"schema": 1, "id": fid, "kind": args.fault_kind, "target": args.target,
                          "scheduled": fid is None, "at_s": args.at, "for_s": args.for_s}))
    elif fid is None:
        when = f"in {args.at:g} s" if args.at else "now"
        span = f" for {args.for_s:g} s" if args.for_s is not None else ""
        print(f"scheduled: {args.fault_kind} {args.target} {when}{span}")
    else:
        print(f"{fid}: {args.fault_kind} {args.target}")
    return 0


def cmd_list(args) -> int:
    f = faults(args.state_dir)
    if args.json:
        print(json.dumps({"schema": 1, **f}, indent=1))
        return 0
    active = f["active"]
    print(f"{len(active)} active fault(s)")
    for fid, e in sorted(active.items(), key=lambda kv: kv[1]["t_unix_s"]):
        print(f"  {fid:<5}{e['kind']:<9}{e['target']:<10}since "
              f"{time.strftime('%H:%M:%S', time.localtime(e['t_unix_s']))}")
    print("log:")
    for e in f["log"]:
        stamp = time.strftime("%H:%M:%S", time.localtime(e["t_unix_s"])) + \
            f".{int(e['t_unix_s'] * 1000) % 1000:03d}"
        extra = e.get("note") or (json.dumps(e["params"]) if e.get("params") else "")
        print(f"  {stamp}  {e['action']:<9}{e.get('id') or '-':<5}{e.get('kind') or '-':<9}"
              f"{e.get('target') or '-':<10}{extra}")
    return 0


def cmd_heal(args) -> int:
    done = heal(args.state_dir, args.id, by="cli")
    if args.json:
        print(json.dumps({"schema": 1, "healed": done}))
    elif not done:
        print("no active faults")
    for fid, what in done.items():
        if not args.json:
            print(f"{fid}: {what}")
    return 0


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def cmd_chaos(args) -> int:
    import signal
    import sys
    from ..faults.chaos import run
    # A campaign stopped with SIGTERM unwinds like ^C, so it removes its cluster and logs.
    signal.signal(signal.SIGTERM, _interrupt)
    kinds = tuple(k.strip() for k in args.faults.split(",") if k.strip())
    say = None if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    res = run(args.seed, args.duration, kinds=kinds, workload=args.workload, hosts=args.hosts,
              progress=say)
    text = json.dumps(res, indent=1)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    if args.json:
        print(text)
    else:
        ops = sum(v for k, v in res["operations"].items() if k not in ("done",))
        print(f"chaos seed {res['seed']}: {res['duration_s']:g} s, {len(res['schedule'])} faults "
              f"({', '.join(f'{k} x{v}' for k, v in res['faults_injected'].items()) or 'none'}), "
              f"{ops} operations, errors {res['errors'] or 'none'}, "
              f"violations {res['violation_count']}")
        for v in res["violations"][:10]:
            print(f"  VIOLATION: {json.dumps(v)[:300]}")
    return 1 if res["violation_count"] else 0


def add_parsers(sub) -> None:
    """Add ``fault`` and its subcommands to the top-level subparsers ``sub``."""
    fault = sub.add_parser("fault", help="inject, list and heal faults",
                           description="Break daemons of the running cluster on purpose; every "
                                       "fault is logged in the state dir (docs/faults.md).")
    fsub = fault.add_subparsers(dest="fault_command", metavar="SUBCOMMAND")
    fsub.required = True
    helps = {"kill": "SIGKILL a daemon, as a crash (heal: restart)",
             "pause": "SIGSTOP a daemon: it stops answering (heal: resume)",
             "resume": "SIGCONT a paused daemon",
             "restart": "restart a daemon: a node reattaches its devices with their contents, "
                        "the manager recovers its directory from the journal"}
    for kind in KINDS:
        p = fsub.add_parser(kind, help=helps[kind], description=helps[kind] + ".")
        p.add_argument("target", metavar="DAEMON", help="'manager' or a node name (h0, m0, ...)")
        p.add_argument("--at", type=_seconds, default=0.0, metavar="T",
                       help="apply T seconds from now (default: now)")
        if kind in ("kill", "pause"):
            p.add_argument("--for", dest="for_s", type=_seconds, default=None, metavar="D",
                           help="heal D seconds after it starts (default: until `fault heal`)")
        else:
            p.set_defaults(for_s=None)
        p.add_argument("--json", action="store_true", help="print JSON")
        add_state_dir(p)
        p.set_defaults(fn=cmd_inject, fault_kind=kind)
    ls = fsub.add_parser("list", help="active faults and the fault log")
    ls.add_argument("--json", action="store_true", help="print JSON")
    add_state_dir(ls)
    ls.set_defaults(fn=cmd_list)
    h = fsub.add_parser("heal", help="undo every active fault (or one, by id)")
    h.add_argument("id", nargs="?", default=None, help="a fault id from `fabric fault list`")
    h.add_argument("--json", action="store_true", help="print JSON")
    add_state_dir(h)
    h.set_defaults(fn=cmd_heal)

    ch = sub.add_parser("chaos", help="run a checker workload under a seeded random fault schedule",
                        description="Start a private cluster, run the checker workload on every "
                                    "host while faults are injected about every 1-2 s, heal, "
                                    "check invariants (no acknowledged write lost, typed errors "
                                    "within deadlines, nothing left behind) and print the result. "
                                    "Exit status 1 when any invariant is violated. The same seed "
                                    "replays the same fault schedule.")
    ch.add_argument("--seed", type=int, default=0, help="seed of the fault schedule (default 0)")
    ch.add_argument("--duration", type=_seconds, default=30.0, metavar="T",
                    help="seconds of workload under faults (default 30)")
    ch.add_argument("--faults", default="kill,pause", metavar="KINDS",
                    help="comma-separated fault kinds to draw from (default kill,pause)")
    ch.add_argument("--workload", default="kv", choices=("kv", "train"),
                    help="kv: register checker; train: pooled training must reach the loss of a fault-free run (default kv)")
    ch.add_argument("--hosts", type=int, default=3, help="host processes (default 3)")
    ch.add_argument("--out", default=None, metavar="FILE", help="also write the JSON result here")
    ch.add_argument("--json", action="store_true", help="print the JSON result")
    ch.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    ch.set_defaults(fn=cmd_chaos)
