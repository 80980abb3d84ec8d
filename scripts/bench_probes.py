#!/usr/bin/env python3
"""Machine probes behind the notes in docs/benchmarks.md; prints JSON lines.

* ``zmq_echo``: round trip of a bare pyzmq DEALER/ROUTER echo over ipc between
  two processes -- the floor under any control-plane request.
* ``fallocate_pages``: read rate of 256 MiB of /dev/shm pages allocated by one
  large posix_fallocate vs in 2 MiB steps vs by page faults, against an
  anonymous 4 KiB-page buffer, all in one process, reads interleaved.
* ``allocation_order``: two identical anonymous buffers, one allocated
  before and one after a burst of other allocations: how much the order alone
  moves the read rate on this machine.

Usage: python scripts/bench_probes.py [--repeats 15]
"""
from __future__ import annotations

import argparse
import mmap
import os
import sys
import tempfile
import time

import numpy as np
import zmq

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _benchutil import emit, git_commit  # noqa: E402

SIZE = 256 << 20


def zmq_echo(n: int, common: dict) -> None:
    ep = f"ipc://{tempfile.mkdtemp(prefix='fabric-probe-')}/echo.sock"
    pid = os.fork()
    if pid == 0:  # the echo server
        ctx = zmq.Context()
        r = ctx.socket(zmq.ROUTER)
        r.bind(ep)
        for _ in range(n + 100):
            if not r.poll(10_000):  # the client is gone: do not wait forever
                break
            r.send_multipart(r.recv_multipart())
        os._exit(0)
    ctx = zmq.Context()
    d = ctx.socket(zmq.DEALER)
    d.setsockopt(zmq.LINGER, 0)
    d.connect(ep)
    def round_trip() -> None:
        d.send_multipart([b"hb"])   # one frame, as the protocol sends
        if not d.poll(5000):  # every receive has a deadline
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            raise SystemExit("zmq_echo: the echo server did not answer within 5 s")
        d.recv_multipart()

    for _ in range(100):
        round_trip()
    lat = []
    for _ in range(n):
        t = time.perf_counter()
        round_trip()
        lat.append(time.perf_counter() - t)
    os.waitpid(pid, 0)
    d.close()
    ctx.term()
    os.unlink(ep[len("ipc://"):])
    os.rmdir(os.path.dirname(ep[len("ipc://"):]))
    a = np.array(lat) * 1e6
    emit({**common, "bench": "zmq_echo", "round_trips": n,
          "rtt_us_p50": round(float(np.percentile(a, 50)), 1),
          "rtt_us_p99": round(float(np.percentile(a, 99)), 1)})


def _anon() -> np.ndarray:
    m = mmap.mmap(-1, SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    m.madvise(mmap.MADV_NOHUGEPAGE)
    a = np.frombuffer(m, dtype=np.uint64)
    a[:] = 1
    return a


def _shm(how: str) -> np.ndarray:
    fd, path = tempfile.mkstemp(prefix="fabric-probe-", dir="/dev/shm")
    try:
        if how == "fallocate_once":
            os.posix_fallocate(fd, 0, 2 * SIZE)  # as one big device file would be
        elif how == "fallocate_2mib_steps":
            for off in range(0, 2 * SIZE, 2 << 20):
                os.posix_fallocate(fd, off, 2 << 20)
        else:
            os.ftruncate(fd, SIZE)
        m = mmap.mmap(fd, SIZE)
    finally:
        os.close(fd)
        os.unlink(path)
    a = np.frombuffer(m, dtype=np.uint64)
    a[:] = 1
    return a


def _rates(bufs: dict, repeats: int) -> dict:
    best = {k: float("inf") for k in bufs}
    names = list(bufs)
    for r in range(repeats):
        for k in names[r % len(names):] + names[:r % len(names)]:
            t = time.perf_counter()
            np.add.reduce(bufs[k], dtype=np.uint64)
            best[k] = min(best[k], time.perf_counter() - t)
    return {f"read_gbps_{k}": round(SIZE / t / 1e9, 2) for k, t in best.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--round-trips", type=int, default=3000)
    args = p.parse_args()
    common = {"git_commit": git_commit(), "cpus": os.cpu_count()}
    zmq_echo(args.round_trips, common)
    first = _anon()
    bufs = {"fallocate_once": _shm("fallocate_once"),
            "fallocate_2mib_steps": _shm("fallocate_2mib_steps"),
            "page_faults": _shm("faults")}
    last = _anon()
    emit({**common, "bench": "fallocate_pages", "size_bytes": SIZE,
          **_rates({**bufs, "anonymous": last}, args.repeats)})
    emit({**common, "bench": "allocation_order", "size_bytes": SIZE,
          **_rates({"anonymous_first": first, "anonymous_last": last}, args.repeats)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
