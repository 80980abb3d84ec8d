"""Starting and stopping a local cluster: one manager and one daemon per node.

``start()`` writes cluster.json, spawns the daemons as detached processes
(their own session, logs under the state dir), and returns once the manager
reports every node alive.  ``stop()`` asks each daemon to stop (SIGTERM),
kills stragglers, and removes the state dir.  ``Cluster`` wraps both as a
context manager for scripts and tests; its daemons also exit on their own if
the process that started them dies, so nothing outlives a crashed test.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Any

import psutil

from . import protocol
from ._binding.engine import engine_knobs
from .client import connect
from .constants import (DEFAULT_INJECT, DEFAULT_NODE_TIMEOUT_MS, INJECT_MODES, MAX_NODE_TIMEOUT_MS,
                        MAX_SEED, MIN_NODE_TIMEOUT_MS, START_TIMEOUT_S, STOP_TIMEOUT_S)
from .errors import ClusterError, FabricError, InvalidArgument
from .engine import create_shared_state
from .engine.stats import cluster_stats
from .statedir import ENV_VAR, StateDir
from .topology import Topology, load


def _daemon_cmd(module: str, state: StateDir, owner_pid: int | None, *extra: str) -> list[str]:
    cmd = [sys.executable, "-m", module, "--state-dir", state.path, *extra]
    if owner_pid:
        cmd += ["--owner-pid", str(owner_pid)]
    return cmd


def _is_ours(pid: int, state: StateDir) -> bool:
    """Whether ``pid`` is a daemon of this state dir (pids get reused)."""
    try:
        cmd = psutil.Process(pid).cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    return state.path in cmd and any(c.startswith("fabric.daemons.") for c in cmd)


def running_pids(state: StateDir) -> dict[str, int]:
    """The daemons of ``state`` that are still running, by name."""
    if not state.exists():
        return {}
    try:
        pids = state.read().get("pids", {})
    except ClusterError:
        return {}
    return {name: pid for name, pid in pids.items() if _is_ours(pid, state)}


def unrecorded_daemons(state: StateDir, known: dict[str, int]) -> dict[str, int]:
    """Daemons of ``state`` running but not in ``known`` (e.g. spawned by a `fabric up`
    killed before it could record them), found by their command line."""
    out = {}
    seen = set(known.values())
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if p.pid in seen or state.path not in cmd or \
                not any(c.startswith("fabric.daemons.") for c in cmd):
            continue
        name = cmd[cmd.index("--name") + 1] if "--name" in cmd[:-1] else "manager"
        out[f"{name} (unrecorded pid {p.pid})"] = p.pid
    return out


def leftovers(state: StateDir) -> dict:
    """What a cluster left in ``state``: its daemons still running and its files.

    ``{"running": {name: pid}, "files": [relative paths, directories with a
    trailing "/" and their file count]}``; both empty for a clean dir.
    """
    files = []
    if os.path.isdir(state.path):
        for entry in sorted(os.listdir(state.path)):
            if entry == "lock":
                continue
            path = os.path.join(state.path, entry)
            if os.path.isdir(path):
                try:
                    n = len(os.listdir(path))
                except OSError:
                    n = 0
                files.append(f"{entry}/ ({n} file{'s' if n != 1 else ''})")
            else:
                files.append(entry)
    return {"running": running_pids(state), "files": files}


def _check_lockstep(inject: str, lockstep_ns, lockstep_hosts, nhosts: int) -> None:
    if isinstance(lockstep_ns, bool) or not isinstance(lockstep_ns, int) or lockstep_ns < 0:
        raise InvalidArgument(f"lockstep quantum must be a whole number of ns >= 0, "
                              f"got {lockstep_ns!r}")
    if lockstep_ns and inject != "virtual":
        raise InvalidArgument(f"lockstep needs --inject virtual, got {inject!r}")
    if lockstep_hosts is not None and (isinstance(lockstep_hosts, bool) or
                                       not isinstance(lockstep_hosts, int) or
                                       not 1 <= lockstep_hosts <= nhosts):
        raise InvalidArgument(f"lockstep hosts must be 1..{nhosts} (the topology's hosts), "
                              f"got {lockstep_hosts!r}")


def start(topology: Topology, state_dir: str | None = None, *, inject: str = DEFAULT_INJECT,
          seed: int = 0, owner_pid: int | None = None, timeout_s: float = START_TIMEOUT_S,
          node_timeout_ms: int = DEFAULT_NODE_TIMEOUT_MS, progress=None,
          lockstep_ns: int = 0, lockstep_hosts: int | None = None) -> dict:
    """Start a cluster; return its cluster.json contents.  Raises ClusterError.

    ``node_timeout_ms``: how long a node daemon may stay silent before the
    manager marks it (and its devices) unavailable.  ``lockstep_ns`` (virtual
    mode): the lockstep quantum every virtual session uses unless it asks
    otherwise, with ``lockstep_hosts`` hosts per group (default: all).
    """
    _check_lockstep(inject, lockstep_ns, lockstep_hosts, len(topology.hosts))
    if isinstance(node_timeout_ms, bool) or not isinstance(node_timeout_ms, int) or \
            not MIN_NODE_TIMEOUT_MS <= node_timeout_ms <= MAX_NODE_TIMEOUT_MS:
        raise InvalidArgument(f"node timeout must be {MIN_NODE_TIMEOUT_MS}..{MAX_NODE_TIMEOUT_MS} "
                              f"ms, got {node_timeout_ms!r}")
    if inject not in INJECT_MODES:
        raise InvalidArgument(f"inject must be one of {', '.join(INJECT_MODES)}, got {inject!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise InvalidArgument(f"seed must be a whole number in 0..2**64-1, got {seed!r}")
    state = StateDir(state_dir)
    state.check_ours()
    state.check_socket_paths([n.name for n in topology.nodes])
    params = topology.engine_params()
    try:
        engine_knobs(params)
    except InvalidArgument as exc:
        raise InvalidArgument(f"{topology.source}: [engine]: {exc}") from None
    with state.locked():
        live = running_pids(state)
        if "manager" in live:
            raise ClusterError(f"a cluster is already running in {state.path} "
                               f"(manager pid {live['manager']}); run `fabric down` first")
        if live:
            left = leftovers(state)
            raise ClusterError(
                f"a crashed cluster is left in {state.path}: its manager is not running, but "
                f"{', '.join(f'{n} (pid {p})' for n, p in sorted(live.items()))} "
                f"{'are' if len(live) > 1 else 'is'} still running; files: "
                f"{', '.join(left['files']) or 'none'}; run `fabric down` to stop them and "
                f"remove the files")
        # leftovers of a crashed cluster (kept devices reattach)
        remove_state(state, keep_memory=True, remove_dir=False)
        for d in (state.logs_dir, state.nodes_dir, state.devices_dir, state.versions_dir):
            os.makedirs(d, exist_ok=True)
        create_shared_state(state.engine_segment, params)
        state.make_secret()
        info: dict[str, Any] = {
            "format": 1, "state_dir": state.path, "created": time.time(),
            "topology": topology.to_dict(), "options": {"inject": inject, "seed": seed,
                                                    "node_timeout_ms": node_timeout_ms,
                                                    "lockstep_ns": lockstep_ns,
                                                    "lockstep_hosts": lockstep_hosts},
            "owner_pid": owner_pid, "pids": {},
        }
        state.write(info)
        procs: dict[str, subprocess.Popen] = {}
        try:
            # Each pid is recorded as soon as its daemon exists, so a `fabric up` killed
            # half-way leaves nothing that `fabric down` cannot see and stop.
            procs["manager"] = _spawn("manager", _daemon_cmd("fabric.daemons.manager", state, owner_pid),
                                      state)
            info["pids"]["manager"] = procs["manager"].pid
            state.write(info)
            for n in topology.nodes:
                procs[n.name] = _spawn(_log_name(n.name), _daemon_cmd(
                    "fabric.daemons.node", state, owner_pid, "--name", n.name), state)
                info["pids"][n.name] = procs[n.name].pid
                state.write(info)
            _wait_ready(state, procs, topology, timeout_s, progress)
        except BaseException:
            _terminate(state, {k: p.pid for k, p in procs.items()})
            _reap(procs)
            remove_state(state, keep_memory=False)
            raise
        info["_procs"] = procs  # for Cluster: lets it reap its children
        return info


def _spawn(name: str, cmd: list[str], state: StateDir) -> subprocess.Popen:
    out = open(state.log_path(name, "out"), "ab")
    try:
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        # cwd: `python -m` puts the working directory first on sys.path, so a package
        # named `fabric` where the user stands would be imported instead of this one.
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True, close_fds=True, env=env, cwd=state.path)
    finally:
        out.close()


def _wait_ready(state: StateDir, procs: dict, topology: Topology, timeout_s: float,
                progress) -> None:
    deadline = time.monotonic() + timeout_s
    want = {n.name for n in topology.nodes}
    last_seen = -1
    with protocol.Client(state.manager_endpoint, "cli", timeout_ms=500) as client:
        while True:
            for name, p in procs.items():
                if p.poll() is not None:
                    raise ClusterError(f"{name} exited with code {p.returncode} during start-up: "
                                       f"{_last_log_line(state, _log_name(name))}")
            try:
                st = client.request("STATUS", timeout_ms=500)
                alive = {n["name"] for n in st["nodes"] if n["alive"]}
                if want <= alive:
                    return
                if progress and len(alive) != last_seen:
                    last_seen = len(alive)
                    progress(f"{len(alive)}/{len(want)} nodes up")
            except FabricError:
                pass  # manager not bound yet
            if time.monotonic() > deadline:
                raise ClusterError(f"cluster did not come up within {timeout_s:.0f} s; "
                                   f"see logs in {state.logs_dir}")
            time.sleep(0.02)


def _log_name(daemon: str) -> str:
    return daemon if daemon == "manager" else f"node-{daemon}"


def _last_log_line(state: StateDir, name: str) -> str:
    lines: list[str] = []
    for suffix in ("out", "log"):
        try:
            with open(state.log_path(name, suffix), errors="replace") as f:
                lines += [ln.strip() for ln in f if ln.strip()]
        except OSError:
            pass
    errs = [ln for ln in lines if "error" in ln.lower()]
    return (errs or lines or ["(no log output)"])[-1]


def _terminate(state: StateDir, pids: dict[str, int], timeout_s: float = STOP_TIMEOUT_S) -> list[str]:
    """SIGTERM the daemons that are ours, wait, SIGKILL the rest; names that needed a kill."""
    procs = []
    for name, pid in pids.items():
        if _is_ours(pid, state):
            try:
                p = psutil.Process(pid)
                p.send_signal(signal.SIGTERM)
                procs.append((name, p))
            except psutil.NoSuchProcess:
                pass
    _gone, alive = psutil.wait_procs([p for _, p in procs], timeout=timeout_s)
    killed = []
    for name, p in procs:
        if p in alive:
            killed.append(name)
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
    psutil.wait_procs(alive, timeout=5)
    return killed


def _reap(procs: dict[str, subprocess.Popen]) -> None:
    for p in procs.values():
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def remove_state(state: StateDir, keep_memory: bool, remove_dir: bool = True,
                 keep_logs: bool = False) -> None:
    """Remove everything in the state dir (but devices/, versions/ and journal/ when
    keep_memory, logs/ when keep_logs), and the dir itself when ``remove_dir`` and
    nothing is kept."""
    if not os.path.isdir(state.path):
        return
    kept = set()
    if keep_memory:   # the memory, and the manager's journal of the regions in it
        kept.update((state.devices_dir, state.versions_dir, state.journal_dir))
    if keep_logs:
        kept.add(state.logs_dir)
    for entry in os.listdir(state.path):
        path = os.path.join(state.path, entry)
        if path in kept or entry == "lock":
            continue  # the lock goes last: a concurrent up/down may hold it
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
    if remove_dir and not any(os.path.exists(k) for k in kept):
        try:
            os.unlink(os.path.join(state.path, "lock"))
        except FileNotFoundError:
            pass
        try:
            os.rmdir(state.path)
        except OSError:
            pass


def stop(state_dir: str | None = None, *, keep_memory: bool = False,
         keep_logs: bool = False) -> dict:
    """Stop the cluster in ``state_dir`` and remove its files; report what was done.

    Returns ``{"state_dir", "found", "stopped", "killed", "kept_memory", "kept_logs"}``;
    ``found`` is False (and nothing is done) when the dir does not exist.  A dir
    holding anything a cluster does not create is refused (ClusterError).
    """
    state = StateDir(state_dir)
    if not os.path.lexists(state.path):
        return {"state_dir": state.path, "found": False, "stopped": [], "killed": [],
                "kept_memory": False, "kept_logs": False, "removed": []}
    state.check_ours()
    with state.locked():
        removed = leftovers(state)["files"]
        pids = {}
        if state.exists():
            try:
                pids = state.read().get("pids", {})
            except ClusterError:
                pids = {}
        pids = {**pids, **unrecorded_daemons(state, pids)}
        stopped = [n for n, p in pids.items() if _is_ours(p, state)]
        killed = _terminate(state, pids)
        remove_state(state, keep_memory, keep_logs=keep_logs)
    return {"state_dir": state.path, "found": True, "stopped": stopped, "killed": killed,
            "kept_memory": keep_memory and os.path.isdir(state.devices_dir),
            "kept_logs": keep_logs and os.path.isdir(state.logs_dir), "removed": removed}


class Cluster:
    """A local cluster for scripts and tests; stops everything on exit.

    >>> with fabric.Cluster.start(hosts=2, devices=2) as cluster:
    ...     s = cluster.connect("h0")
    """

    def __init__(self, info: dict, procs: dict):
        self.info = info
        self.state_dir: str = info["state_dir"]
        self.topology = Topology.from_dict(info["topology"])
        self._procs = procs
        self._stopped = False

    @classmethod
    def start(cls, hosts: int | None = None, devices: int | None = None, topology=None,
              state_dir: str | None = None, *, device_size: int | str | None = None,
              inject: str = DEFAULT_INJECT, seed: int = 0, timeout_s: float = START_TIMEOUT_S,
              node_timeout_ms: int = DEFAULT_NODE_TIMEOUT_MS, detach: bool = False,
              lockstep_ns: int = 0, lockstep_hosts: int | None = None) -> "Cluster":
        """Start a cluster.  ``topology`` is a Topology, a file path, a preset name or None.

        With ``state_dir=None`` the cluster lives in ``$FABRIC_STATE_DIR`` when
        that is set (as for every `fabric` command), else in a fresh directory
        under /dev/shm.  The daemons exit by themselves if this process dies
        (unless ``detach``).
        """
        if isinstance(topology, Topology):
            if hosts is not None or devices is not None:
                raise InvalidArgument("hosts/devices cannot be combined with a Topology object")
            topo = topology
        else:
            topo = load(topology, hosts=hosts, devices=devices, device_size=device_size)
        if state_dir is None:
            state_dir = os.environ.get(ENV_VAR) or None
        if state_dir is None:
            import tempfile
            state_dir = tempfile.mkdtemp(prefix="cxl-fabric-", dir="/dev/shm")
        info = start(topo, state_dir, inject=inject, seed=seed,
                     owner_pid=None if detach else os.getpid(), timeout_s=timeout_s,
                     node_timeout_ms=node_timeout_ms, lockstep_ns=lockstep_ns,
                     lockstep_hosts=lockstep_hosts)
        procs = info.pop("_procs")
        return cls(info, procs)

    def connect(self, host: str, **kwargs):
        """Attach this process as ``host`` (see :func:`fabric.connect`)."""
        return connect(host, state_dir=self.state_dir, **kwargs)

    @property
    def hosts(self) -> list[str]:
        return self.topology.host_names

    def status(self) -> dict:
        with protocol.Client(StateDir(self.state_dir).manager_endpoint, "cli") as c:
            return c.request("STATUS")

    def stats(self) -> dict:
        """Every host's, link's and device's figures and the cluster total, live:
        exactly what ``fabric stats --json`` prints (see
        :func:`fabric.engine.stats.cluster_stats`; scope two of them to an
        interval with :func:`fabric.engine.stats.diff`)."""
        return cluster_stats(self.state_dir)

    def stop(self, keep_memory: bool = False) -> None:
        if self._stopped:
            return
        self._stopped = True
        try:
            stop(self.state_dir, keep_memory=keep_memory)
        finally:
            _reap(self._procs)

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
