"""``fabric fault ...`` and ``fabric chaos``: inject, list and heal faults, run campaigns."""
from __future__ import annotations

import argparse
import json
import time

from .._units import parse_size
from ..errors import InvalidArgument
from ..faults import DEVICE_KINDS, KINDS, faults, heal, inject
from ..faults.network import MESSAGE_KINDS, PARTITION
from ._common import add_state_dir


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 seconds, got {text}")
    return value


def _number(text: str) -> float:
    """A number for an option; its range is checked by fabric.faults (one message)."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _size(text: str) -> int:
    try:
        return parse_size(text, "size", allow_zero=True)
    except InvalidArgument as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


#: CLI option -> params key, per device/link fault kind.
_OPTIONS = {"link-degrade": ("factor",), "link-flap": ("period_s", "seed"),
            "poison": ("offset", "length"), "slow": ("p", "stall_us")}


def _net_params(args) -> dict | None:
    if args.fault_kind not in MESSAGE_KINDS:
        return None
    params = {"p": args.p, "seed": args.seed}
    if args.types:
        params["types"] = [t.strip() for t in args.types.split(",") if t.strip()]
    if getattr(args, "delay_ms", None) is not None:
        params["delay_ms"] = args.delay_ms
    return params


def cmd_inject(args) -> int:
    if args.fault_kind in MESSAGE_KINDS:
        params = _net_params(args)
    else:
        params = {k: getattr(args, k) for k in _OPTIONS.get(args.fault_kind, ())
                  if getattr(args, k, None) is not None}
    fid = inject(args.fault_kind, args.target, state_dir=args.state_dir, at_s=args.at,
                 for_s=args.for_s, by="cli", params=params or None)
    if args.json:
        print(json.dumps({"schema": 1, "id": fid, "kind": args.fault_kind, "target": args.target,
                          "scheduled": fid is None, "at_s": args.at, "for_s": args.for_s,
                          "params": params}))
    elif fid is None:
        when = f"in {args.at:g} s" if args.at else "now"
        span = f" for {args.for_s:g} s" if args.for_s is not None else ""
        print(f"scheduled: {args.fault_kind} {args.target} {when}{span}")
    else:
        extra = f" {json.dumps(params, sort_keys=True)}" if params else ""
        print(f"{fid}: {args.fault_kind} {args.target}{extra}")
    return 0


def cmd_list(args) -> int:
    f = faults(args.state_dir)
    if args.json:
        print(json.dumps({"schema": 1, **f}, indent=1))
        return 0
    active = f["active"]
    print(f"{len(active)} active fault(s)")
    for fid, e in sorted(active.items(), key=lambda kv: kv[1]["t_unix_s"]):
        extra = " ".join(f"{k}={v}" for k, v in (e.get("params") or {}).items()
                         if e["kind"] not in ("kill", "pause") and k not in ("pid",))
        print(f"  {fid:<5}{e['kind']:<14}{e['target']:<10}since "
              f"{time.strftime('%H:%M:%S', time.localtime(e['t_unix_s']))}"
              f"{'  ' + extra if extra else ''}")
    now = f.get("state") or {}
    for name, d in (now.get("devices") or {}).items():
        parts = [d["state"]]
        if d["stall_p"]:
            parts.append(f"slow: p={d['stall_p']:g}, stall {d['stall_ns'] / 1000:g} us")
        if d["poison"]:
            parts.append(f"poisoned: {', '.join(f'[{a}, {b})' for a, b in d['poison'])}")
        print(f"  device {name}: {'; '.join(parts)}")
    for name, link in (now.get("links") or {}).items():
        print(f"  link {name}: {link['state']}, factor {link['factor']:g}")
    print("log:")
    for e in f["log"]:
        stamp = time.strftime("%H:%M:%S", time.localtime(e["t_unix_s"])) + \
            f".{int(e['t_unix_s'] * 1000) % 1000:03d}"
        extra = e.get("note") or (json.dumps(e["params"]) if e.get("params") else "")
        print(f"  {stamp}  {e['action']:<9}{e.get('id') or '-':<5}{e.get('kind') or '-':<14}"
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
                           description="Break daemons, devices, links or messages of the running "
                                       "cluster on purpose; every "
                                       "fault is logged in the state dir (docs/faults.md).")
    fsub = fault.add_subparsers(dest="fault_command", metavar="SUBCOMMAND")
    fsub.required = True
    helps = {"kill": "SIGKILL a daemon, as a crash (heal: restart)",
             "pause": "SIGSTOP a daemon: it stops answering (heal: resume)",
             "resume": "SIGCONT a paused daemon",
             "restart": "restart a daemon: a node reattaches its devices with their contents, "
                        "the manager recovers its directory from the journal",
             "device-fail": "fail a device: declared accesses to it raise DeviceFailed "
                            "(heal: device-restore)",
             "device-restore": "bring a failed device back (unavailable while its node is down)",
             "link-cut": "cut a link: devices behind it are unreachable from hosts whose path "
                         "crosses it, LinkDown (heal: link-restore)",
             "link-restore": "a cut or degraded link is up and at full speed again",
             "link-degrade": "degrade a link live: latency x K, bandwidth / K (heal: K = 1)",
             "link-flap": "cut and restore a link in turn, each phase about PERIOD/2 s, seeded "
                          "(heal: it stops, the link is up)",
             "poison": "poison the pages of a device range: declared reads raise PoisonError "
                       "with the global address; a whole-page write clears it (heal: cleared)",
             "slow": "make a device slow: each latency round stalls STALL us with probability P "
                     "(heal: normal speed)",
             "drop": "drop messages of chosen daemons with probability --p (heal: stop)",
             "delay": "delay messages of chosen daemons by --delay-ms (heal: stop)",
             "duplicate": "deliver messages of chosen daemons twice (heal: stop)",
             "reorder": "hold messages of chosen daemons a random time up to --delay-ms, so "
                        "later ones overtake them (heal: stop)",
             PARTITION: "split daemons into groups that cannot reach each other (heal: rejoin)"}
    for kind in KINDS:
        p = fsub.add_parser(kind, help=helps[kind], description=helps[kind] + ".")
        if kind in MESSAGE_KINDS:
            p.add_argument("target", metavar="DAEMONS",
                           help="'all', or daemons separated by commas: manager,h0,m0,...; a "
                                "message meets the fault where one of them sends it or "
                                "receives it from a client (docs/faults.md)")
            p.add_argument("--p", type=_number, default=1.0, metavar="P",
                           help="probability that a matching message is hit, 0..1 (default 1)")
            p.add_argument("--types", default=None, metavar="TYPES",
                           help="message types, comma-separated: requests (ALLOC, FREE, OPEN, "
                                "HELLO, HEARTBEAT, REGISTER, SCRUB, ...) and replies (OK, "
                                "ERROR); default every type")
            if kind in ("delay", "reorder"):
                p.add_argument("--delay-ms", dest="delay_ms", type=_number, default=None,
                               metavar="MS",
                               help="delay in ms (reorder: the longest hold) (default "
                                    f"{100 if kind == 'delay' else 50})")
            p.add_argument("--seed", type=int, default=0,
                           help="seed of the per-daemon random draws (default 0)")
        elif kind == PARTITION:
            p.add_argument("target", metavar="GROUPS",
                           help="groups separated by '/', daemons in a group by ',': "
                                "'h0,h1/h2,manager'; one group is cut off from all others")
        elif kind.startswith("link-"):
            p.add_argument("target", metavar="LINK", help="a link name (`fabric topo` lists them)")
        elif kind in DEVICE_KINDS:
            p.add_argument("target", metavar="DEVICE", help="a device name (d0, ...)")
        else:
            p.add_argument("target", metavar="DAEMON",
                           help="'manager' or a node name (h0, m0, ...)")
        p.add_argument("--at", type=_seconds, default=0.0, metavar="T",
                       help="apply T seconds from now (default: now)")
        if KINDS[kind][1] is not None:
            p.add_argument("--for", dest="for_s", type=_seconds, default=None, metavar="D",
                           help="heal D seconds after it starts (default: until `fault heal`)")
        else:
            p.set_defaults(for_s=None)
        if kind == "link-degrade":
            p.add_argument("--factor", type=_number, default=2.0, metavar="K",
                           help="latency x K, bandwidth / K; K >= 1 (default 2)")
        elif kind == "link-flap":
            p.add_argument("--period", dest="period_s", type=_number, default=1.0, metavar="S",
                           help="seconds of one cut + restore cycle (default 1)")
            p.add_argument("--seed", type=int, default=0, help="seed of the phase lengths")
        elif kind == "poison":
            p.add_argument("--offset", type=_size, default=0, metavar="BYTES",
                           help="byte offset on the device (e.g. 0, 64KiB); whole pages")
            p.add_argument("--length", type=_size, default=4096, metavar="BYTES",
                           help="bytes to poison (default 4096; widened to whole pages)")
        elif kind == "slow":
            p.add_argument("--p", type=_number, default=0.01, metavar="P",
                           help="stall probability per latency round, (0, 1] (default 0.01)")
            p.add_argument("--stall-us", dest="stall_us", type=_number, default=1000.0,
                           metavar="US", help="stall length in us (default 1000)")
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
                    help="comma-separated fault kinds to draw from: kill, pause, device, link, "
                         "poison, slow, msg (a random drop/delay/duplicate/reorder rule), "
                         "partition (a node cut off from the manager) (default kill,pause)")
    ch.add_argument("--workload", default="kv", choices=("kv", "train"),
                    help="kv: register checker; train: pooled training must reach the loss of a fault-free run (default kv)")
    ch.add_argument("--hosts", type=int, default=3, help="host processes (default 3)")
    ch.add_argument("--out", default=None, metavar="FILE", help="also write the JSON result here")
    ch.add_argument("--json", action="store_true", help="print the JSON result")
    ch.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    ch.set_defaults(fn=cmd_chaos)
