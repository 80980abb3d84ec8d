"""`fabric up`, `fabric down`, `fabric logs` and `fabric free`: a cluster's life from the shell."""
from __future__ import annotations

import argparse
import os
import sys
import time

from .. import protocol
from .._spin import available_cores, overcommit_message
from .._units import format_size
from ..constants import MAX_NAME_LEN
from ..errors import ClusterError, InvalidArgument
from ..statedir import StateDir
from ._common import emit_json, progress


def cmd_up(args: argparse.Namespace) -> int:
    from ..cluster import start
    from ..topology import load
    topo = load(args.topology, hosts=args.hosts, devices=args.devices, device_size=args.device_size)
    if args.inject == "spin":
        # One spinning process per host is the least spin mode will run: warn, still start.
        msg = overcommit_message(len(topo.hosts), available_cores(), "hosts would spin")
        if msg:
            print(f"fabric up: warning: {msg}", file=sys.stderr)
    t0 = time.monotonic()
    info = start(topo, args.state_dir, inject=args.inject, seed=args.seed,
                 node_timeout_ms=args.node_timeout, progress=progress,
                 lockstep_ns=args.lockstep_ns, lockstep_hosts=args.lockstep_hosts)
    info.pop("_procs", None)
    elapsed = time.monotonic() - t0
    if sys.stderr.isatty():
        print("\r", end="", file=sys.stderr)
    if args.json:
        emit_json({"state_dir": info["state_dir"], "pids": info["pids"], "topology": topo.name,
                   "hosts": topo.host_names, "devices": [d.name for d in topo.devices],
                   "capacity_bytes": topo.capacity_bytes, "inject": args.inject,
                   "seed": args.seed, "lockstep_ns": args.lockstep_ns,
                   "up_seconds": round(elapsed, 3)})
    else:
        print(f"cluster up in {elapsed:.2f} s: {len(topo.hosts)} hosts "
              f"({', '.join(topo.host_names)}), {len(topo.devices)} devices "
              f"({format_size(topo.capacity_bytes)}), topology {topo.name}, "
              f"inject {args.inject}"
              f"{f' (lockstep {args.lockstep_ns} ns)' if args.lockstep_ns else ''}, "
              f"state dir {info['state_dir']}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from ..cluster import stop
    res = stop(args.state_dir, keep_memory=args.keep_memory, keep_logs=args.keep_logs)
    if args.json:
        emit_json(res)
        return 0
    if not res["found"]:
        print(f"no cluster in {res['state_dir']}: nothing to stop")
        return 0
    if res["stopped"]:
        msg = f"stopped {len(res['stopped'])} daemons in {res['state_dir']}"
    elif res["removed"]:
        msg = (f"no daemon was running in {res['state_dir']}; removed what was left "
               f"({', '.join(res['removed'])})")
    else:
        msg = f"no daemon was running in {res['state_dir']}; nothing to stop"
    if res["killed"]:
        msg += f" (killed after timeout: {', '.join(res['killed'])})"
    kept = [what for what, k in (("device files and the region journal", res["kept_memory"]),
                                 (f"logs in {StateDir(res['state_dir']).logs_dir}",
                                  res["kept_logs"])) if k]
    if kept:
        msg += f"; kept {' and '.join(kept)}"
    print(msg)
    return 0


# -- logs ----------------------------------------------------------------------
def _log_files(state: StateDir) -> dict[str, dict]:
    """Daemon name -> {"log": path, "out": path} for every log file in the state dir."""
    found: dict[str, dict] = {}
    try:
        entries = sorted(os.listdir(state.logs_dir))
    except (FileNotFoundError, NotADirectoryError):
        return {}
    for entry in entries:
        stem, _, suffix = entry.rpartition(".")
        if suffix not in ("log", "out") or not stem:
            continue
        name = stem[len("node-"):] if stem.startswith("node-") else stem
        found.setdefault(name, {})[suffix] = os.path.join(state.logs_dir, entry)
    return dict(sorted(found.items(), key=lambda kv: (kv[0] != "manager", kv[0])))


def _tail(path: str | None, lines: int | None) -> list[str]:
    if not path:
        return []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read().splitlines()
    except FileNotFoundError:
        return []
    return text[-lines:] if lines else text


def cmd_logs(args: argparse.Namespace) -> int:
    state = StateDir(args.state_dir)
    logs = _log_files(state)
    if not logs:
        raise ClusterError(f"no daemon logs in {state.logs_dir} (no cluster ran there, or "
                           f"`fabric down` removed them; `fabric down --keep-logs` keeps them)")
    if args.name is None:
        rows = []
        for name, files in logs.items():
            size = sum(os.path.getsize(p) for p in files.values() if os.path.exists(p))
            mtime = max((os.path.getmtime(p) for p in files.values() if os.path.exists(p)),
                        default=0.0)
            rows.append({"name": name, "log": files.get("log"), "out": files.get("out"),
                         "bytes": size, "modified_unix_s": round(mtime, 3)})
        if args.json:
            emit_json({"state_dir": state.path, "logs": rows})
            return 0
        print(f"{'daemon':<12}{'size':>11}  {'modified':<20}log")
        for r in rows:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["modified_unix_s"]))
            print(f"{r['name']:<12}{format_size(r['bytes']):>11}  {stamp:<20}{r['log'] or r['out']}")
        return 0
    files = logs.get(args.name)
    if files is None:
        raise InvalidArgument(f"no log for {args.name!r} in {state.logs_dir} "
                              f"(daemons with logs: {', '.join(logs)})")
    log, out = _tail(files.get("log"), args.lines), _tail(files.get("out"), args.lines)
    if args.json:
        emit_json({"state_dir": state.path, "name": args.name, "log": files.get("log"),
                   "lines": log, "out": files.get("out"), "out_lines": out})
        return 0
    for line in log:
        print(line)
    if out:
        print(f"--- stdout/stderr of {args.name} ({files['out']}) ---")
        for line in out:
            print(line)
    return 0


# -- free ----------------------------------------------------------------------
def cmd_free(args: argparse.Namespace) -> int:
    from ..cluster import running_pids
    name = args.name
    if not name or len(name) > MAX_NAME_LEN or not name.isprintable() or "/" in name:
        raise InvalidArgument(f"region name must be 1-{MAX_NAME_LEN} printable characters "
                              f"without '/', got {name[:40]!r}")
    state = StateDir(args.state_dir)
    info = state.read()
    hosts = [h["name"] for h in info.get("topology", {}).get("hosts", [])]
    if args.host is not None and args.host not in hosts:
        raise InvalidArgument(f"--host {args.host!r} is not a host of this cluster "
                              f"(hosts: {', '.join(hosts)})")
    if "manager" not in running_pids(state):
        raise ClusterError(f"the fabric manager of {state.path} is not running; "
                           f"`fabric down` cleans up (every region goes with it)")
    body = {"name": args.name, "force": bool(args.force), "as_host": args.host or ""}
    with protocol.Client(state.manager_endpoint, "cli", timeout_ms=5000) as c:
        c.request("FREE", body)
    if args.json:
        emit_json({"state_dir": state.path, "freed": args.name, "force": bool(args.force),
                   "as_host": args.host})
    else:
        how = "forced" if args.force else f"as its owner {args.host}"
        print(f"freed region {args.name!r} ({how}); its memory is scrubbed before reuse")
    return 0
