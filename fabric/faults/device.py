"""Device and link faults: written into the cluster's engine segment, seen by every host.

The engine segment (``<state dir>/engine.seg``, csrc/seg.c "Faults") holds a
state per device and per link that every host's access path reads on each
declared access (docs/faults.md says what a workload sees):

- ``device-fail DEV``: declared accesses to the device raise DeviceFailed
  (heal: ``device-restore``);
- ``link-cut LINK``: devices behind the link are unreachable from the hosts
  whose path crosses it: LinkDown, a NodeUnavailable (heal: ``link-restore``);
- ``link-degrade LINK --factor K``: the link's latency x K and bandwidth / K,
  live, in the cost model (heal: back to K = 1);
- ``link-flap LINK --period S``: cut and restored in turn, each phase about S/2
  seconds (seeded: ``--seed``), by a small detached process (heal: it stops and
  the link is up);
- ``poison DEV --offset O --length L``: declared reads of the pages of
  [O, O + L) raise PoisonError with the global address (heal: unpoisoned; a
  declared write that covers a whole page also clears it);
- ``slow DEV --p P --stall-us U``: each latency round of an access to the
  device stalls U us with probability P (seeded by the session's seed).

Targets are device or link names of the cluster's topology; every bad name or
value is a one-line InvalidArgument.  Each apply function returns the params
the log records; each heal function takes them back.
"""
from __future__ import annotations

import argparse
import math
import os
import random
import signal
import subprocess
import sys
import time

import psutil

from ..errors import FabricError, InvalidArgument
from ..statedir import StateDir
from ..topology import Topology

#: Bounds of the fault parameters.
MAX_DEGRADE = 1_000_000
MAX_STALL_US = 100_000_000          # 100 s (the segment's bound)
MIN_FLAP_PERIOD_S = 0.02
MAX_FLAP_PERIOD_S = 3600.0


def _topology(state: StateDir) -> Topology:
    return Topology.from_dict(state.read()["topology"])


def device_names(state: StateDir) -> list[str]:
    return [d.name for d in _topology(state).devices]


def link_names(state: StateDir) -> list[str]:
    return [link.name for link in _topology(state).links]


def _segment(state: StateDir):
    from .._binding.engine import Segment
    return Segment(state.engine_segment, _topology(state).engine_params(), writable=True)


def _device(state: StateDir, name: str) -> int:
    names = device_names(state)
    if name not in names:
        raise InvalidArgument(f"unknown device {name!r} (this cluster has: {', '.join(names)})")
    return names.index(name)


def _link(state: StateDir, name: str) -> int:
    names = link_names(state)
    if name not in names:
        raise InvalidArgument(f"unknown link {name!r} (this cluster has: "
                              f"{', '.join(names) or 'no links'})")
    return names.index(name)


def check_target(state: StateDir, kind: str, target: str) -> None:
    """InvalidArgument unless ``target`` names a device (device kinds) or a link (link kinds)."""
    if kind.startswith("link-"):
        _link(state, target)
    else:
        _device(state, target)


def _number(value, what: str, lo: float, hi: float, *, lo_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value > hi or value < lo or (lo_open and value == lo):
        bound = f"({lo:g}, {hi:g}]" if lo_open else f"[{lo:g}, {hi:g}]"
        raise InvalidArgument(f"{what} must be a number in {bound}, got {value!r}")
    return float(value)


def _whole(value, what: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InvalidArgument(f"{what} must be an integer in [{lo}, {hi}], got {value!r}")
    return value


def check_params(state: StateDir, kind: str, target: str, params: dict) -> dict:
    """The params of a device or link fault, checked (one-line InvalidArgument)."""
    p = dict(params or {})
    known = {"link-degrade": {"factor"}, "link-flap": {"period_s", "seed"},
             "poison": {"offset", "length"}, "slow": {"p", "stall_us"}}.get(kind, set())
    extra = set(p) - known
    if extra:
        raise InvalidArgument(f"{kind} takes {', '.join(sorted(known)) or 'no options'}, "
                              f"not {', '.join(sorted(extra))}")
    if kind == "link-degrade":
        p["factor"] = _number(p.get("factor", 2.0), "--factor", 1.0, MAX_DEGRADE)
    elif kind == "link-flap":
        p["period_s"] = _number(p.get("period_s", 1.0), "--period", MIN_FLAP_PERIOD_S,
                                MAX_FLAP_PERIOD_S)
        p["seed"] = _whole(p.get("seed", 0), "--seed", 0, 2**63 - 1)
    elif kind == "poison":
        cap = _topology(state).device(target).capacity_bytes
        off = _whole(p.get("offset", 0), "--offset", 0, 2**63)
        if off >= cap:
            raise InvalidArgument(f"--offset {off} is outside device {target} ({cap} bytes)")
        length = _whole(p.get("length", 4096), "--length", 1, 2**63)
        if off + length > cap:
            raise InvalidArgument(f"--offset {off} --length {length} runs past the end of "
                                  f"device {target} ({cap} bytes)")
        p["offset"], p["length"] = off, length
    elif kind == "slow":
        p["p"] = _number(p.get("p", 0.01), "--p", 0.0, 1.0, lo_open=True)
        p["stall_us"] = _number(p.get("stall_us", 1000.0), "--stall-us", 0.0, MAX_STALL_US,
                                lo_open=True)
    return p


def _pages(state: StateDir, offset: int, length: int) -> tuple[int, int]:
    """[offset, offset + length) widened to whole pages: poison is kept per page."""
    page = _topology(state).page_size_bytes
    lo = offset // page * page
    hi = -(-(offset + length) // page) * page
    return lo, hi - lo


# ---- apply and heal ---------------------------------------------------------------

def device_fail(state: StateDir, target: str, **_p) -> dict:
    _segment(state).set_device_state(_device(state, target), "failed")
    return {}


def device_restore(state: StateDir, target: str, params: dict | None = None, **_p) -> dict:
    """Up again (the manager turns it unavailable at once if its node is down)."""
    _segment(state).set_device_state(_device(state, target), "up")
    return {}


def link_cut(state: StateDir, target: str, **_p) -> dict:
    seg, i = _segment(state), _link(state, target)
    seg.set_link(i, "cut", seg.link_faults(i)["factor"])
    return {}


def link_uncut(state: StateDir, target: str, params: dict | None = None, **_p) -> dict:
    seg, i = _segment(state), _link(state, target)
    seg.set_link(i, "up", seg.link_faults(i)["factor"])
    return {}


def link_restore(state: StateDir, target: str, params: dict | None = None, **_p) -> dict:
    """Up and not degraded (the one-shot action ``link-restore``)."""
    _segment(state).set_link(_link(state, target), "up", 1.0)
    return {}


def link_degrade(state: StateDir, target: str, factor: float = 2.0, **_p) -> dict:
    seg, i = _segment(state), _link(state, target)
    seg.set_link(i, seg.link_faults(i)["state"], factor)
    return {"factor": factor}


def link_undegrade(state: StateDir, target: str, params: dict | None = None, **_p) -> dict:
    seg, i = _segment(state), _link(state, target)
    seg.set_link(i, seg.link_faults(i)["state"], 1.0)
    return {}


def link_flap(state: StateDir, target: str, period_s: float = 1.0, seed: int = 0, **_p) -> dict:
    """Start the flapper: a detached process that cuts and restores the link in turn."""
    _link(state, target)
    cmd = [sys.executable, "-m", "fabric.faults.device", "--state-dir", state.path,
           "--link", target, "--period", repr(period_s), "--seed", str(seed)]
    from .log import faults_dir
    os.makedirs(faults_dir(state), mode=0o700, exist_ok=True)
    with open(os.path.join(faults_dir(state), "flapper.out"), "ab") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True, close_fds=True, cwd=state.path)
    return {"period_s": period_s, "seed": seed, "pid": proc.pid}


def link_unflap(state: StateDir, target: str, params: dict | None = None, **_p) -> dict:
    """Stop the flapper (only a process of ours, by its pid) and leave the link up."""
    pid = (params or {}).get("pid")
    if pid:
        try:
            p = psutil.Process(pid)
            if any(c == "fabric.faults.device" for c in p.cmdline()):
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(5)
                except psutil.TimeoutExpired:
                    p.kill()
        except psutil.NoSuchProcess:
            pass
    link_uncut(state, target)
    return {}


def poison(state: StateDir, target: str, offset: int = 0, length: int = 4096, **_p) -> dict:
    lo, n = _pages(state, offset, length)
    _segment(state).poison_add(_device(state, target), lo, n)
    return {"offset": offset, "length": length, "pages_offset": lo, "pages_length": n}


def unpoison(state: StateDir, target: str, params: dict | None = None, **_p) -> dict:
    p = params or {}
    lo, n = _pages(state, int(p.get("offset", 0)), int(p.get("length", 1)))
    _segment(state).poison_clear(_device(state, target), lo, n)
    return {}


def slow(state: StateDir, target: str, p: float = 0.01, stall_us: float = 1000.0, **_p) -> dict:
    _segment(state).set_device_slow(_device(state, target), p, int(round(stall_us * 1000)))
    return {"p": p, "stall_us": stall_us}


def unslow(state: StateDir, target: str, params: dict | None = None, **_p) -> dict:
    _segment(state).set_device_slow(_device(state, target), 0.0, 0)
    return {}


def fault_state(state: StateDir) -> dict:
    """What the segment holds now: ``{"devices": {name: {...}}, "links": {name: {...}}}``
    (devices and links that are not up, degraded, slow or poisoned only)."""
    seg = _segment(state)
    devs, links = {}, {}
    for i, name in enumerate(device_names(state)):
        f = seg.device_faults(i)
        if f["state"] != "up" or f["stall_p"] > 0 or f["poison"]:
            devs[name] = f
    for i, name in enumerate(link_names(state)):
        f = seg.link_faults(i)
        if f["state"] != "up" or f["factor"] != 1.0:
            links[name] = f
    return {"devices": devs, "links": links}


# ---- the flapper process ----------------------------------------------------------------

def _flap_main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="fabric.faults.device",
                                 description="Cut and restore a link in turn until stopped or "
                                             "the cluster is gone (started by link-flap).")
    ap.add_argument("--state-dir", required=True)
    ap.add_argument("--link", required=True)
    ap.add_argument("--period", type=float, required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    state = StateDir(args.state_dir)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_a: stop.append(1))
    rng = random.Random(args.seed)
    cut = False
    try:
        seg, i = _segment(state), _link(state, args.link)
        while not stop and state.exists():
            cut = not cut
            factor = seg.link_faults(i)["factor"]
            seg.set_link(i, "cut" if cut else "up", factor)
            end = time.monotonic() + args.period / 2 * rng.uniform(0.5, 1.5)
            while not stop and time.monotonic() < end and state.exists():
                time.sleep(min(0.05, max(0.0, end - time.monotonic())))
        if cut and state.exists():
            seg.set_link(i, "up", seg.link_faults(i)["factor"])
    except (FabricError, OSError) as exc:
        print(f"fabric.faults.device: flapping {args.link}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_flap_main())
