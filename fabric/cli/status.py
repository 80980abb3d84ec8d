"""`fabric status`: nodes, devices, regions and sessions of a cluster, and whether it is healthy.

The figures come from the fabric manager's STATUS reply (docs/protocol.md).
When the manager is not running, status still lists the daemons it can see
from cluster.json (their pids, and whether those processes live) and says the
manager is down.  Every field is read with ``.get()``: an older manager that
sends fewer fields gives "-" in those columns, not an error.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from .. import protocol
from .._units import format_size
from ..errors import FabricError
from ..statedir import StateDir
from ._common import JSON_SCHEMA, duration, emit_json


def gather(state_dir: str | None) -> dict[str, Any]:
    """The status document: the manager's STATUS reply (or what cluster.json tells when
    the manager is down), plus ``state_dir``, ``options``, ``healthy`` and ``problems``.

    Raises ClusterError when there is no cluster, and the request's error when
    the manager runs but does not answer.
    """
    from ..cluster import running_pids
    state = StateDir(state_dir)
    info = state.read()
    live = running_pids(state)
    pids = info.get("pids", {}) or {}
    topo = info.get("topology", {}) or {}
    problems: list[str] = []
    if "manager" in live:
        with protocol.Client(state.manager_endpoint, "cli", timeout_ms=2000) as c:
            st = dict(c.request("STATUS"))
        st["manager"] = {**st.get("manager", {}), "alive": True}
        for n in st.get("nodes", []):
            if not n.get("alive"):
                problems.append(f"node {n.get('name')} is down")
    else:
        st = {"manager": {"pid": pids.get("manager"), "alive": False,
                          "topology": topo.get("name")},
              "nodes": [{"name": n.get("name"), "alive": n.get("name") in live,
                         "pid": pids.get(n.get("name")), "is_host": n.get("is_host", True),
                         "devices": [d.get("name") for d in topo.get("devices", [])
                                     if d.get("home") == n.get("name")],
                         "incarnation": None, "last_beat_age_s": None}
                        for n in topo.get("nodes", [])],
              "devices": [], "regions": [], "source": "cluster.json"}
        problems.append(f"the fabric manager (pid {pids.get('manager', '?')}) is not running")
        for n in st["nodes"]:
            if not n["alive"]:
                problems.append(f"node {n['name']} (pid {n['pid']}) is not running")
    st["state_dir"] = state.path
    st["options"] = info.get("options", {})
    st["created_unix_s"] = info.get("created")
    st["healthy"] = not problems
    st["problems"] = problems
    return st


def _uptime_s(st: dict) -> float | None:
    m = st.get("manager", {})
    if m.get("uptime_s") is not None:
        return float(m["uptime_s"])
    start = m.get("started_unix_s") or st.get("created_unix_s")
    return max(0.0, time.time() - start) if start else None


def _allow(allow: Any) -> str:
    if not allow:
        return "-"
    if isinstance(allow, dict):
        return ",".join(f"{h}:{m}" for h, m in sorted(allow.items()))
    return ",".join(str(h) for h in allow)


def _share_of(used: int | None, cap: int | None) -> str:
    if used is None or not cap:
        return "-"
    return f"{100 * used / cap:.1f}%"


def render(st: dict) -> None:
    """Print the status document as text."""
    m = st.get("manager", {})
    opts = st.get("options", {})
    if m.get("alive", True):
        head = f"manager pid {m.get('pid', '-')}, up {duration(_uptime_s(st))}"
    else:
        head = f"manager DOWN (pid {m.get('pid', '?')} is not running)"
    print(f"cluster {st['state_dir']}  topology {m.get('topology', '-')}  "
          f"inject {opts.get('inject', '-')}  {head}")
    sessions = st.get("sessions")
    print(f"\n{'node':<10}{'alive':<7}{'pid':<9}{'heartbeat':>11}{'sessions':>10}  "
          f"{'incarnation':<19}devices")
    for n in st.get("nodes", []):
        age = n.get("last_beat_age_s")
        beat = "-" if age is None else f"{age:.1f}s ago"
        if not n.get("is_host", True):
            nsess = "-"
        elif isinstance(sessions, dict):
            nsess = str(sessions.get(n.get("name"), 0))
        else:
            nsess = "-"
        kind = "" if n.get("is_host", True) else " (memory-only)"
        print(f"{n.get('name', '?'):<10}{'yes' if n.get('alive') else 'NO':<7}"
              f"{n.get('pid') or '-':<9}{beat:>11}{nsess:>10}  {n.get('incarnation') or '-':<19}"
              f"{','.join(n.get('devices') or []) or '-'}{kind}")
    if not m.get("alive", True):
        print("\n(the manager is down: devices and regions are unknown; "
              "`fabric down` stops what is left and removes the files)")
        return
    print(f"\n{'device':<10}{'node':<10}{'capacity':>12}{'used':>12}{'used%':>8}"
          f"{'free':>12}{'free%':>8}{'scrubbing':>12}")
    for d in st.get("devices", []):
        cap, used = d.get("capacity_bytes"), d.get("used_bytes")
        free = d.get("free_bytes")
        if free is None and cap is not None and used is not None:
            free = cap - used
        scrub = d.get("scrubbing_bytes")
        print(f"{d.get('name', '?'):<10}{d.get('node', '-'):<10}"
              f"{format_size(cap) if cap is not None else '-':>12}"
              f"{format_size(used) if used is not None else '-':>12}{_share_of(used, cap):>8}"
              f"{format_size(free) if free is not None else '-':>12}{_share_of(free, cap):>8}"
              f"{format_size(scrub) if scrub else '-':>12}"
              f"{'  ' + d['state'] if d.get('state') not in (None, 'up') else ''}")
    regions = st.get("regions", [])
    if not regions:
        print("\nno regions")
        return
    now = time.time()
    print(f"\n{len(regions)} region(s)")
    print(f"  {'name':<20}{'size':>11}  {'share':<9}{'owner':<8}{'allow':<14}{'age':>9}  "
          f"{'placement':<11}{'devices':<12}address")
    for r in regions:
        created = r.get("created")
        age = duration(now - created) if created else "-"
        size = format_size(r["nbytes"]) if r.get("nbytes") is not None else "-"
        addr = r.get("address")
        print(f"  {r.get('name', '?'):<20}{size:>11}  {r.get('share', '-'):<9}"
              f"{r.get('owner', '-'):<8}{_allow(r.get('allow')):<14}{age:>9}  "
              f"{r.get('placement', '-'):<11}{','.join(r.get('devices') or []) or '-':<12}"
              f"{f'{addr:#x}' if isinstance(addr, int) else '-'}")


def cmd_status(args: argparse.Namespace) -> int:
    try:
        st = gather(args.state_dir)
    except FabricError as exc:
        if not args.check:
            raise
        # --check: a cluster that cannot be asked is unhealthy, said in one line
        if args.json:
            print(json.dumps({"schema": JSON_SCHEMA, "healthy": False, "problems": [str(exc)],
                              "error": {"code": exc.code, "message": str(exc)}}))
        print(f"fabric: error: unhealthy: {exc}", file=sys.stderr)
        return 1
    manager_down = not st["manager"].get("alive", True)
    if args.check:
        if args.json:
            emit_json(st)
        if st["problems"]:
            print(f"fabric: error: unhealthy: {'; '.join(st['problems'])}", file=sys.stderr)
            return 1
        return 0
    if args.json:
        if manager_down:
            msg = _manager_down_message(st)
            st["error"] = {"code": "NODE_UNAVAILABLE", "message": msg}
        emit_json(st)
    else:
        render(st)
    if manager_down:
        print(f"fabric: error: {_manager_down_message(st)}", file=sys.stderr)
        return 1
    return 0


def _manager_down_message(st: dict) -> str:
    return (f"the fabric manager of {st['state_dir']} is not running (it crashed or was "
            f"killed); `fabric down` cleans up")
