"""Running a training workload: a cluster, one worker process per host, a result.

:func:`train` attaches to the cluster running in the state dir -- or, when
none is running, starts one for the run (topology and injection from the
config, devices sized to fit) and stops it afterwards.  It spawns one worker
per host (``fabric.workloads.worker``), collects their per-step records over
a ZeroMQ PULL socket, shows a progress bar, and returns the result dict
(docs/workloads.md).  If any worker fails -- reports an error, exits, is
killed -- the others are killed, the run's regions and sockets are removed,
and :class:`fabric.errors.WorkloadError` names the worker and its error.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time

import zmq

from .. import Cluster, connect
from ..cluster import running_pids
from ..errors import FabricError, InvalidArgument, WorkloadError
from ..statedir import StateDir
from ..topology import load
from .config import TrainConfig
from .progress import Progress
from .result import build_result

#: Slack over the barrier timeout before the runner gives up on a silent run.
STALL_SLACK_S = 15.0
START_SLACK_BYTES = 8 << 20


def _pool_bytes(cfg: TrainConfig) -> int:
    """Pooled bytes a run allocates: weights, momentum and N gradient slots
    (pooled), or N 1 MiB inboxes (replicated), plus the sync page."""
    nbytes = -(-cfg.layout.nbytes // 4096) * 4096
    if cfg.mode == "pooled":
        return (cfg.hosts + 2) * nbytes + START_SLACK_BYTES
    return cfg.hosts * (1 << 20) + START_SLACK_BYTES


class _ClusterUse:
    """The cluster a run uses: attached (left running) or started (stopped after)."""

    def __init__(self, cfg: TrainConfig):
        self.cluster: Cluster | None = None
        state = StateDir(cfg.state_dir)
        if state.exists() and "manager" in running_pids(state):
            if cfg.topology is not None or cfg.devices is not None:
                raise InvalidArgument(f"a cluster is already running in {state.path}; "
                                      f"--topology/--devices only shape a cluster the run "
                                      f"starts (stop it with `fabric down` first)")
            self.state_dir = state.path
            from ..topology import Topology
            self.topology = Topology.from_dict(state.read()["topology"])
            return
        if cfg.topology is not None and not _is_preset_spec(cfg.topology):
            topo = load(cfg.topology)
        else:
            devices = cfg.devices or cfg.hosts
            per_device = -(-_pool_bytes(cfg) // devices)
            size = max(64 << 20, -(-per_device * 5 // 4 // (1 << 20)) * (1 << 20))
            topo = load(cfg.topology, hosts=cfg.hosts, devices=devices, device_size=size)
        self.cluster = Cluster.start(topology=topo, state_dir=cfg.state_dir,
                                     inject=cfg.inject or "virtual", seed=cfg.seed)
        self.state_dir = self.cluster.state_dir
        self.topology = topo

    @property
    def started(self) -> bool:
        return self.cluster is not None

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()


def _is_preset_spec(spec: str) -> bool:
    from ..topology import PRESETS
    return spec in PRESETS and os.sep not in spec and not spec.endswith(".toml")


def _git_commit() -> str | None:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                           text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() or None if r.returncode == 0 else None


class _Workers:
    """The worker processes of one run and the socket they report to."""

    def __init__(self, cfg: TrainConfig, state_dir: str, host_names: list[str], prefix: str):
        self.n = cfg.hosts
        self.run_dir = os.path.join(os.path.abspath(state_dir), prefix)
        os.makedirs(self.run_dir)
        ctl = os.path.join(self.run_dir, "ctl.sock")
        if len(ctl.encode()) > 100:
            raise InvalidArgument(f"{ctl} is too long for an ipc socket path; use a shorter "
                                  f"--state-dir")
        self.ctx = zmq.Context.instance()
        self.inbox = self.ctx.socket(zmq.PULL)
        self.inbox.setsockopt(zmq.LINGER, 0)
        self.inbox.bind(f"ipc://{ctl}")
        base = {**cfg.to_dict(), "layers": list(cfg.widths), "host_names": host_names[:self.n],
                "state_dir": os.path.abspath(state_dir), "run_dir": self.run_dir,
                "prefix": prefix, "ctl": f"ipc://{ctl}", "runner_pid": os.getpid()}
        env = dict(os.environ)
        # N workers share the machine's cores: one BLAS thread each unless told otherwise
        threads = str(max(1, (os.cpu_count() or 1) // self.n))
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(var, threads)
        self.procs: list[subprocess.Popen] = []
        self.errors: dict[int, dict] = {}
        for rank in range(self.n):
            err = open(os.path.join(self.run_dir, f"worker{rank}.err"), "wb")
            try:
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-m", "fabric.workloads.worker",
                     json.dumps({**base, "rank": rank})],
                    stdin=subprocess.DEVNULL, stdout=err, stderr=err, close_fds=True,
                    env=env, cwd=self.run_dir))   # not the user's: see fabric.cluster._spawn
            finally:
                err.close()

    def recv(self, timeout_ms: int) -> dict | None:
        if self.inbox.poll(timeout_ms):
            return self.inbox.recv_json()
        return None

    def exited(self) -> list[int]:
        """Ranks whose process has exited."""
        return [r for r, p in enumerate(self.procs) if p.poll() is not None]

    def describe_exit(self, rank: int, host: str) -> str:
        p = self.procs[rank]
        code = p.returncode
        how = (f"was killed by {signal.Signals(-code).name}" if code is not None and code < 0
               else f"exited with code {code}")
        tail = ""
        try:
            with open(os.path.join(self.run_dir, f"worker{rank}.err"), errors="replace") as f:
                lines = [ln.rstrip() for ln in f if ln.strip()]
            if lines:
                tail = f": {lines[-1]}"
        except OSError:
            pass
        return f"worker {rank} (host {host}, pid {p.pid}) {how}{tail}"

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        t_end = time.monotonic() + 2.0
        for p in self.procs:
            try:
                p.wait(timeout=max(0.05, t_end - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def close(self) -> None:
        self.kill()
        self.inbox.close(0)
        shutil.rmtree(self.run_dir, ignore_errors=True)


def _free_leftovers(state_dir: str, prefix: str, hosts: list[str]) -> None:
    """Free the regions a failed run left in an attached cluster (as their owners)."""
    try:
        with connect(hosts[0], state_dir=state_dir, inject="off") as s:
            left = [r for r in s.regions() if r["name"].startswith(prefix + ".")]
    except FabricError:
        return
    by_owner: dict[str, list[str]] = {}
    for r in left:
        by_owner.setdefault(r["owner"], []).append(r["name"])
    for owner, names in by_owner.items():
        try:
            with connect(owner, state_dir=state_dir, inject="off") as s:
                for name in names:
                    s.free(name)
        except FabricError:
            pass


def train(config: TrainConfig | None = None, *, quiet: bool = True, out: str | None = None,
          **kwargs) -> dict:
    """Run one training workload; return (and with ``out``, write) its result.

    ``train(hosts=3, mode="pooled", steps=20, seed=1)`` -- keyword arguments
    are :class:`TrainConfig` fields.  Raises WorkloadError if a worker fails,
    ClusterError if no cluster can be used, InvalidArgument for a bad config.
    """
    cfg = config if config is not None else TrainConfig(**kwargs)
    if config is not None and kwargs:
        raise InvalidArgument("pass a TrainConfig or keyword arguments, not both")
    t_start = time.time()
    use = _ClusterUse(cfg)
    hosts = use.topology.host_names
    workers = None
    prefix = f"train-{secrets.token_hex(3)}"
    try:
        if len(hosts) < cfg.hosts:
            raise InvalidArgument(f"the cluster in {use.state_dir} has {len(hosts)} hosts; "
                                  f"the run needs {cfg.hosts}")
        workers = _Workers(cfg, use.state_dir, hosts, prefix)
        records = _collect(cfg, workers, hosts, Progress(cfg.steps, enabled=not quiet))
        result = build_result(cfg, records, hosts=hosts[:cfg.hosts], state_dir=use.state_dir,
                              started_cluster=use.started, git_commit=_git_commit(),
                              topology=use.topology, wall_s=time.time() - t_start)
    except BaseException:
        if workers is not None:
            workers.kill()
            if not use.started:
                _free_leftovers(use.state_dir, prefix, hosts)
        raise
    finally:
        if workers is not None:
            workers.close()
        use.stop()
    if out:
        with open(out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
    return result


def _collect(cfg: TrainConfig, workers: _Workers, hosts: list[str], progress) -> dict:
    """Receive every worker's records until all are done; raise on any failure."""
    n = cfg.hosts
    records = {"hello": {}, "steps": [[None] * cfg.steps for _ in range(n)], "done": {}}
    stall_s = cfg.timeout_ms / 1000 + STALL_SLACK_S
    last = time.monotonic()
    complete = [0] * cfg.steps
    try:
        while len(records["done"]) < n or workers.exited() != list(range(n)):
            msg = workers.recv(100)
            now = time.monotonic()
            if msg is not None:
                last = now
                r, kind = msg["rank"], msg["kind"]
                if kind == "error":
                    workers.errors[r] = msg
                elif kind == "hello":
                    records["hello"][r] = msg
                elif kind == "step":
                    records["steps"][r][msg["step"]] = msg
                    complete[msg["step"]] += 1
                    if complete[msg["step"]] == n:
                        progress.update(msg["step"] + 1, sum(
                            records["steps"][q][msg["step"]]["loss"] for q in range(n)))
                elif kind == "done":
                    records["done"][r] = msg
                continue
            failed = [r for r in workers.exited()
                      if workers.procs[r].returncode != 0 or r in workers.errors]
            if failed or workers.errors:
                raise WorkloadError(_failure_message(workers, hosts, failed))
            if now - last > stall_s:
                raise WorkloadError(f"no worker reported anything for {stall_s:.0f} s; "
                                    f"the run was stopped")
            if len(workers.exited()) == n and len(records["done"]) < n:
                raise WorkloadError("workers exited before reporting their results")
    finally:
        progress.close()
    return records


def _failure_message(workers: _Workers, hosts: list[str], failed: list[int]) -> str:
    # A worker that died without reporting is the cause; the others' errors
    # (a barrier noticing the dead peer) are consequences.
    silent = [r for r in failed if r not in workers.errors]
    if silent:
        return "training failed: " + workers.describe_exit(silent[0], hosts[silent[0]])
    # otherwise the first error that is not just "a peer died / aborted"
    errs = sorted(workers.errors.items())
    root = next(((r, e) for r, e in errs if e["error"] != "SyncTimeout"), errs[0])
    r, e = root
    return f"training failed: worker {r} (host {hosts[r]}): {e['error']}: {e['message']}"


__all__ = ["train", "TrainConfig"]
