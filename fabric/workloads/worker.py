"""One training worker: a process attached to the fabric as one emulated host.

Started by the runner (``python -m fabric.workloads.worker CONFIG_JSON``),
never by hand.  It connects as its host, meets the others at a barrier in a
pooled "sync" region, trains ``steps`` steps in its mode, and reports to the
runner over a ZeroMQ PUSH socket: ``hello``, one ``step`` record per step,
then ``done`` (memory, histograms, final figures) or ``error``.  On any
failure it aborts the barrier so the other workers stop at once.
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback

import zmq

from .. import connect
from ..errors import RegionNotFound, SyncTimeout
from ..sync import Barrier, pid_alive
from . import metrics
from .modes import TRAINERS

TIER_NAMES = ("local", "cached", "far", "remote")


def _open_sync(session, name: str, rank: int, timeout_ms: int):
    """Rank 0 allocates the sync region; the others wait for it to appear."""
    if rank == 0:
        return session.alloc(name, 4096, share="coherent", policy="direct")
    deadline = time.monotonic() + timeout_ms / 1000
    while True:
        try:
            return session.open(name, policy="direct")
        except RegionNotFound:
            if time.monotonic() > deadline:
                raise SyncTimeout(f"region {name} did not appear within {timeout_ms} ms "
                                  f"(did worker 0 start?)") from None
            time.sleep(0.02)


def _counters(st: dict) -> dict:
    return {"tier_bytes": {t: st["tiers"][t]["bytes"] for t in TIER_NAMES},
            "hits": st["hits"], "accesses": st["accesses"]}


def _delta(now: dict, before: dict) -> dict:
    return {"tier_bytes": {t: now["tier_bytes"][t] - before["tier_bytes"][t] for t in TIER_NAMES},
            "hits": now["hits"] - before["hits"], "accesses": now["accesses"] - before["accesses"]}


def run(cfg: dict, send, held: dict) -> None:
    """Train; ``held`` receives the barrier so a failure can abort it."""
    rank, n = cfg["rank"], cfg["hosts"]
    host = cfg["host_names"][rank]
    # Free-running even on a lockstep cluster: the ring all-reduce and the runner's
    # messages are ZeroMQ waits the engine cannot see (docs/cost-model.md, "Time bases").
    s = connect(host, state_dir=cfg["state_dir"], inject=cfg["inject"], lockstep_ns=0)
    send("hello", pid=os.getpid(), host=host, inject=s.inject)
    sync_name = f"{cfg['prefix']}.sync"
    sync = _open_sync(s, sync_name, rank, cfg["timeout_ms"])
    runner_pid = cfg["runner_pid"]
    barrier = Barrier(sync, n, rank, timeout_ms=cfg["timeout_ms"], watch_pids=[runner_pid])
    held["barrier"] = barrier
    trainer = TRAINERS[cfg["mode"]](s, cfg, rank, barrier, cfg["prefix"])
    trainer.setup(cfg["run_dir"], lambda: pid_alive(runner_pid))
    barrier.wait()
    start = prev = _counters(s.stats())
    for step in range(cfg["steps"]):
        v0, c0, t0 = s.virtual_time_ns, time.process_time_ns(), time.perf_counter_ns()
        loss = trainer.step(step)
        wall = time.perf_counter_ns() - t0
        cpu = time.process_time_ns() - c0
        now = _counters(s.stats())
        send("step", step=step, loss=loss, wall_ns=wall, cpu_ns=cpu, virtual_ns=s.virtual_time_ns - v0,
             **_delta(now, prev))
        prev = now
    barrier.wait()                    # everyone still maps everything: measure now
    addr, nbytes = trainer.weights_range
    memory = {**metrics.process_memory(os.getpid()),
              "weights": metrics.range_memory(os.getpid(), addr, nbytes)}
    barrier.wait()
    final = s.stats()
    send("done", memory=memory, totals=_delta(_counters(final), start),
         hist_weights=metrics.hist_to_wire(trainer.charge.weights),
         hist_fabric=metrics.hist_to_wire(trainer.charge.fabric),
         virtual_time_ns=s.virtual_time_ns, sync_charged_ns=barrier.charged_ns)
    trainer.close()
    barrier.wait()
    trainer.free()
    barrier.wait()
    if rank == 0:
        s.free(sync_name)
    s.close()


def main(argv: list[str] | None = None) -> int:
    cfg = json.loads((argv if argv is not None else sys.argv[1:])[0])
    ctx = zmq.Context.instance()
    out = ctx.socket(zmq.PUSH)
    out.setsockopt(zmq.LINGER, 5000)
    out.connect(cfg["ctl"])

    def send(kind: str, **body) -> None:
        out.send_json({"kind": kind, "rank": cfg["rank"], **body})

    held: dict = {}
    try:
        run(cfg, send, held)
        code = 0
    except BaseException as exc:  # report everything, including KeyboardInterrupt
        b = held.get("barrier")
        if b is not None:
            try:
                b.abort()
            except Exception:
                pass
        send("error", error=type(exc).__name__, message=str(exc),
             traceback=traceback.format_exc(limit=8))
        code = 1
    out.close()
    ctx.term()
    return code


if __name__ == "__main__":
    sys.exit(main())
