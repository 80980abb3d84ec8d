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
- ``restart``: stop the daemon if it runs (SIGCONT, SIGTERM, then SIGKILL),
  start a new one, and wait until it serves.  A node reattaches its device
  files with their contents (ready when the manager reports it alive).  A
  manager recovers its directory from the journal and the nodes register with
  it again (ready when it reports every node alive that was alive before);
  clients reconnect by themselves and retry what was in flight.
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
#: How long a restart waits for an old daemon to stop after SIGTERM.
STOP_WAIT_S = 5.0


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
    if not _gone_within(p, 5.0):
        raise ClusterError(f"{target} (pid {p.pid}) survived SIGKILL for 5 s")
    return {"pid": p.pid}


def pause(state: StateDir, target: str) -> dict:
    p = _process(state, target)
    p.send_signal(signal.SIGSTOP)
    return {"pid": p.pid}


def resume(state: StateDir, target: str) -> dict:
    p = _process(state, target)
    p.send_signal(signal.SIGCONT)
    return {"pid": p.pid}


def _stop(pid: int | None, state: StateDir) -> None:
    """Stop daemon ``pid`` if it is one of ours and runs: SIGCONT (a paused daemon cannot
    handle SIGTERM), SIGTERM, then SIGKILL."""
    if not pid or not _is_ours(pid, state):
        return
    try:
        p = psutil.Process(pid)
        p.send_signal(signal.SIGCONT)
        p.terminate()
        if not _gone_within(p, STOP_WAIT_S):
            p.kill()
            if not _gone_within(p, STOP_WAIT_S):
                raise ClusterError(f"daemon pid {pid} survived SIGKILL for {STOP_WAIT_S:.0f} s")
    except psutil.NoSuchProcess:
        pass


def _gone_within(p: psutil.Process, timeout_s: float) -> bool:
    """Whether ``p`` exits within ``timeout_s``; a zombie counts as gone (its parent,
    e.g. the process that started the cluster, reaps it, not us)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                return True
            p.wait(0.05)
            return True
        except psutil.TimeoutExpired:
            continue
        except psutil.NoSuchProcess:
            return True
    return False


def spawn_manager(state: StateDir, info: dict):
    """Start a manager on ``state`` (it recovers the journal) and record its pid in
    cluster.json; the caller holds the state dir's lock.  Returns the Popen."""
    proc = _spawn("manager", _daemon_cmd("fabric.daemons.manager", state, info.get("owner_pid")),
                  state)
    info.setdefault("pids", {})["manager"] = proc.pid
    state.write(info)
    return proc


def restart(state: StateDir, target: str, timeout_s: float = RESTART_TIMEOUT_S) -> dict:
    """Restart daemon ``target`` (a node or the manager); returns its old and new pid."""
    check_target(state, target)
    with state.locked():
        info = state.read()
        old = info.get("pids", {}).get(target)
        if target == "manager":
            running = _running_nodes(state, info)
            _stop(old, state)
            proc = spawn_manager(state, info)
        else:
            _stop(old, state)
            proc = _spawn(_log_name(target), _daemon_cmd("fabric.daemons.node", state,
                                                         info.get("owner_pid"), "--name", target),
                          state)
            info.setdefault("pids", {})[target] = proc.pid
            state.write(info)
    if target == "manager":
        _wait_manager(state, proc, running, timeout_s)
    else:
        _wait_alive(state, target, proc, timeout_s)
    return {"old_pid": old, "pid": proc.pid}


def _running_nodes(state: StateDir, info: dict) -> set[str]:
    """The node daemons whose process runs and is not paused (they will register)."""
    out = set()
    for name, pid in info.get("pids", {}).items():
        if name != "manager" and _is_ours(pid, state):
            try:
                if psutil.Process(pid).status() != psutil.STATUS_STOPPED:
                    out.add(name)
            except psutil.NoSuchProcess:
                pass
    return out


def _wait_status(state: StateDir, proc, ready, what: str, log_name: str,
                 timeout_s: float) -> None:
    """Poll the manager's STATUS until ``ready(status)``; ClusterError naming ``what``
    if ``proc`` (the restarted daemon) exits first or the time runs out."""
    deadline = time.monotonic() + timeout_s
    with protocol.Client(state.manager_endpoint, "cli", timeout_ms=500) as c:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ClusterError(f"restarted {what} exited with code {proc.returncode}; "
                                   f"see {state.log_path(log_name)}")
            try:
                if ready(c.request("STATUS")):
                    return
            except FabricError:
                pass
            time.sleep(0.02)
    raise ClusterError(f"restarted {what} (pid {proc.pid}) was not serving within "
                       f"{timeout_s:.0f} s; see {state.log_path(log_name)}")


def _wait_manager(state: StateDir, proc, want: set[str], timeout_s: float) -> None:
    """Wait until the new manager ``proc`` answers and reports every node of ``want``
    alive (they register again when their beat meets a manager that does not know them)."""
    _wait_status(state, proc, lambda st: st["manager"]["pid"] == proc.pid and
                 want <= {n["name"] for n in st["nodes"] if n["alive"]},
                 "manager", "manager", timeout_s)


def _wait_alive(state: StateDir, target: str, proc, timeout_s: float) -> None:
    """Wait until the manager reports the restarted node ``target`` (``proc``) alive."""
    _wait_status(state, proc, lambda st: any(
        n["name"] == target and n["alive"] and n["pid"] == proc.pid for n in st["nodes"]),
        target, _log_name(target), timeout_s)
