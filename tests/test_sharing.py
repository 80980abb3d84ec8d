"""Zero copy across processes: two hosts share one 256 MiB region, not two copies."""
import multiprocessing as mp

import numpy as np
import psutil
import pytest

import fabric

MiB = 1 << 20
SIZE = 256 * MiB


def _host(host, state_dir, barrier, out):
    try:
        with fabric.connect(host, state_dir) as s:
            me = psutil.Process()
            pss0 = me.memory_full_info().pss
            n = SIZE // 8
            if host == "h0":
                r = s.alloc("big", SIZE, share="shared", placement="d0")
                a = r.ndarray(np.uint64, n)
                a[:] = np.arange(n, dtype=np.uint64) * 3
                barrier.wait(60)
            else:
                barrier.wait(60)
                r = s.open("big")
                a = r.ndarray(np.uint64, n)
            ok = bool(a[12345] == 12345 * 3 and a[-1] == (n - 1) * 3
                      and int(a[::4097].sum()) == int((np.arange(0, n, 4097, dtype=np.uint64) * 3).sum()))
            barrier.wait(60)  # both hold the mapping now
            grew = me.memory_full_info().pss - pss0
            maps = [m.path for m in me.memory_maps() if m.path.endswith(".mem")]
            out.put((host, ok, grew, sorted(set(maps))))
            barrier.wait(60)
    except Exception as exc:
        out.put((host, f"{type(exc).__name__}: {exc}", 0, []))
        barrier.abort()


def test_two_hosts_share_one_copy(state_dir):
    with fabric.Cluster.start(hosts=2, devices=2, device_size="272MiB",
                              state_dir=state_dir) as c:
        ctx = mp.get_context("spawn")
        barrier, out = ctx.Barrier(2), ctx.Queue()
        procs = [ctx.Process(target=_host, args=(h, c.state_dir, barrier, out))
                 for h in ("h0", "h1")]
        for p in procs:
            p.start()
        results = {}
        for _ in procs:
            host, ok, grew, maps = out.get(timeout=120)
            results[host] = (ok, grew, maps)
        for p in procs:
            p.join(30)
        for host, (ok, grew, maps) in results.items():
            assert ok is True, f"{host}: {ok}"
            # both map the very same device file
            assert maps == [f"{c.state_dir}/devices/d0.mem"], maps
        total = sum(g for _, g, _ in results.values())
        # Shared pages are split between the two mappers: one region in all, not two.
        assert 0.85 * SIZE < total < 1.25 * SIZE, f"combined PSS grew {total / MiB:.0f} MiB"
