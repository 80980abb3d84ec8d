"""Real processes for the engine tests: start one spawned process per argument
tuple, collect what each puts on its queue, and never leave one running."""
from __future__ import annotations

import multiprocessing as mp
import time

from fabric.engine import Engine

MIB = 1 << 20


def run_procs(target, argss: list[tuple], timeout_s: float, *, barrier: bool = False) -> list:
    """Run ``target(*args, [barrier,] out)`` in a spawned process per ``args``; return
    the first item each one puts on ``out``.  ``barrier``: a Barrier of all of them
    is passed before ``out``.  Every process is joined (killed if still alive)."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    extra = (ctx.Barrier(len(argss)),) if barrier else ()
    procs = [ctx.Process(target=target, args=(*args, *extra, out), daemon=True)
             for args in argss]
    for p in procs:
        p.start()
    try:
        return [out.get(timeout=timeout_s) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()


def stream(params, host, shared_path, policy, run_s, measure, barrier, out):
    """Worker (off mode): read 1 MiB of region 1 (with ``policy``) again and again for
    ``run_s`` seconds after a common start; put (host, bytes, charged ns) of the
    calls inside ``measure`` (seconds after the start).  The first read, before the
    start, caches the region under the "cache" policy."""
    with Engine(params, host, mode="off", shared_path=shared_path) as e:
        e.register_region(1, npages=MIB // 4096, device_indices=[0], stripe_pages=1,
                          policy=policy)
        e.access(1, 0, MIB, False)
        barrier.wait(timeout=60)
        t0 = time.monotonic()
        nbytes = charged = 0
        while (now := time.monotonic() - t0) < run_s:
            ns = e.access(1, 0, MIB, False)
            if measure[0] <= now < measure[1]:
                nbytes += MIB
                charged += ns
        out.put((host, nbytes, charged))
