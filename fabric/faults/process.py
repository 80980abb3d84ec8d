"""Process faults: kill, pause, resume and restart the daemons of a running cluster.

A daemon is named as ``fabric status`` names it: ``manager`` or a node name
(``h0``, ``m1``, ...).  Its pid comes from cluster.json, where ``fabric up``
recorded it; a restart records the new pid there too, under the state dir's
lock, so ``fabric down`` always sees the daemons that run.

- ``kill``: SIGKILL, as a crash.  The manager marks a killed node dead after
  its missed heartbeats (``fabric status`` shows it); device memory outlives
  the daemon (files), so nothing written is lost.
- ``pause`` / ``resume``: SIGSTOP / SIGCONT.  A paused node misses its beats
  and is marked dead; resumed, it beats again and the manager takes it back.
- ``restart``: stop the node daemon if it runs (SIGTERM, then SIGKILL), start a
  new one, and wait until the manager reports it alive.  It reattaches its
  device files with their contents.  The manager cannot be restarted yet: its
  region directory lives in its memory only.
"""
from __future__ import annotations

import signal
import time

import psutil

from .. import protocol
from ..cluster import _daemon_cmd, _is_ours, _log_name, _spawn
from ..errors import ClusterError, FabricError, InvalidArgument
from ..statedir import StateDir
from ..topology import Topology

#: How long a restart waits for the manager to report the new node alive.
RESTART_TIMEOUT_S = 15.0


def targets(state: StateDir) -> list[str]:
    """Every daemon a process fault may name: the manager, then the nodes."""
    info = state.read()
    return ["manager"] + [n.name for n in Topology.from_dict(info["topology"]).nodes]


def check_target(state: StateDir, target: str) -> None:
    names = targets(state)
    if target not in names:
        raise InvalidArgument(f"unknown daemon {target!r} (this cluster has: {', '.join(names)})")


def _process(state: StateDir, target: str) -> psutil.Process:
    """The running daemon ``target``; InvalidArgument when it is not running."""
    check_target(state, target)
    pid = state.read().get("pids", {}).get(target)
    if not pid or not _is_ours(pid, state):
        raise InvalidArgument(f"{target} is not running (nothing to do; `fabric status` shows "
                              f"what runs)")
    return psutil.Process(pid)


def kill(state: StateDir, target: str) -> dict:
    p = _process(state, target)
    p.send_signal(signal.SIGKILL)
    try:
        p.wait(5)
    except psutil.TimeoutExpired:
        raise ClusterError(f"{target} (pid {p.pid}) survived SIGKILL for 5 s") from None
    except psutil.NoSuchProcess:
        pass
    return {"pid": p.pid}


def pause(state: StateDir, target: str) -> dict:
    p = _process(state, target)
    p.send_signal(signal.SIGSTOP)
    return {"pid": p.pid}


def resume(state: StateDir, target: str) -> dict:
    p = _process(state, target)
    p.send_signal(signal.SIGCONT)
    return {"pid": p.pid}


def restart(state: StateDir, target: str, timeout_s: float = RESTART_TIMEOUT_S) -> dict:
    """Restart node daemon ``target``; returns its old and new pid."""
    check_target(state, target)
    if target == "manager":
        raise InvalidArgument("the manager cannot be restarted yet: its region directory lives "
                              "only in its memory (a directory journal is planned); restart a "
                              "node, or `fabric down` and `fabric up`")
    with state.locked():
        info = state.read()
        old = info.get("pids", {}).get(target)
        if old and _is_ours(old, state):
            p = psutil.Process(old)
            p.send_signal(signal.SIGCONT)      # a paused daemon cannot handle SIGTERM
            p.terminate()
            try:
                p.wait(5)
            except psutil.TimeoutExpired:
                p.kill()
                p.wait(5)
        proc = _spawn(_log_name(target), _daemon_cmd("fabric.daemons.node", state,
                                                     info.get("owner_pid"), "--name", target),
                      state)
        info.setdefault("pids", {})[target] = proc.pid
        state.write(info)
    _wait_alive(state, target, proc, timeout_s)
    return {"old_pid": old, "pid": proc.pid}


def _wait_alive(state: StateDir, target: str, proc, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    with protocol.Client(state.manager_endpoint, "cli", timeout_ms=500) as c:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ClusterError(f"restarted {target} exited with code {proc.returncode}; see "
                                   f"{state.log_path(_log_name(target))}")
            try:
                st = c.request("STATUS")
                for n in st["nodes"]:
                    if n["name"] == target and n["alive"] and n["pid"] == proc.pid:
                        return
            except FabricError:
                pass
            time.sleep(0.05)
    raise ClusterError(f"restarted {target} (pid {proc.pid}) was not reported alive by the "
                       f"manager within {timeout_s:.0f} s")
