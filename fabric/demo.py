"""`fabric demo`: pooled memory shared between emulated hosts, with no copy.

Starts a private cluster, then one process per host.  h0 allocates a shared
region and writes into it through a numpy view; every other host opens it and
reads the same values through its own view.  While all hosts hold their views
each reports the growth of its proportional set size (PSS): shared pages are
split between the processes that map them, so the sum is about one region --
had each host copied the data, it would be one region per host.  Finally an
interleaved region shows one contiguous array striped over every device.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import sys
import time

import numpy as np
import psutil

from ._units import format_size, parse_size

REGION = "demo-weights"


def _pss() -> int:
    return psutil.Process().memory_full_info().pss


def _host_main(host: str, state_dir: str, nbytes: int, barrier, out) -> None:
    import fabric
    try:
        with fabric.connect(host, state_dir) as s:
            n = nbytes // 4
            pss0 = _pss()
            if host == "h0":
                r = s.alloc(REGION, nbytes, share="shared", placement="local")
                a = r.ndarray(np.float32, n)
                a[:] = np.arange(n, dtype=np.float32) % 1021
                barrier.wait(60)
            else:
                barrier.wait(60)
                r = s.open(REGION)
                a = r.ndarray(np.float32, n)
            expect = np.float32((n - 1) % 1021)
            ok = bool(a[-1] == expect and a[1020] == 1020)
            checksum = float(a.sum(dtype=np.float64))
            # Two declared passes over the weights, as two inference steps would make:
            # the first fetches far pages into this host's page cache, the second hits.
            step_ns = []
            for _ in range(2):
                t0 = s.virtual_time_ns
                with r.reading(np.float32, n):
                    pass
                step_ns.append(s.virtual_time_ns - t0)
            st = s.stats()
            barrier.wait(60)  # everyone holds a view now
            grew = _pss() - pss0
            dev, off = s.translate(r.address)
            out.put({"host": host, "ok": ok, "checksum": checksum, "pss_grew": grew,
                     "writable": r.writable, "device": dev, "offset": off, "step_ns": step_ns,
                     "hit_rate": st["hit_rate"],
                     "fabric_share": st["tiers"]["far"]["share"] + st["tiers"]["remote"]["share"]})
            barrier.wait(60)
    except Exception as exc:  # reported by the parent
        out.put({"host": host, "error": f"{type(exc).__name__}: {exc}"})
        barrier.abort()


def run_demo(hosts: int = 2, size: str | int = "64MiB", topology: str | None = None) -> int:
    import fabric
    nbytes = parse_size(size, "--size")
    if hosts < 2:
        raise fabric.InvalidArgument("the demo needs at least 2 hosts")
    device_size = max(2 * nbytes, 64 << 20)
    device_size = -(-device_size // 4096) * 4096
    print(f"starting a cluster: {hosts} hosts, {hosts} devices of {format_size(device_size)} ...")
    t0 = time.monotonic()
    kw = {"topology": topology} if topology else {"hosts": hosts, "devices": hosts,
                                                   "device_size": device_size}
    with fabric.Cluster.start(**kw) as cluster:
        print(f"  up in {time.monotonic() - t0:.2f} s; state dir {cluster.state_dir}")
        names = cluster.hosts
        ctx = mp.get_context("spawn")
        barrier, out = ctx.Barrier(len(names)), ctx.Queue()
        procs = [ctx.Process(target=_host_main, args=(h, cluster.state_dir, nbytes, barrier, out))
                 for h in names]
        print(f"\n{names[0]} allocates {format_size(nbytes)} region {REGION!r} (share=shared) and "
              f"writes it; {', '.join(names[1:])} {'opens' if len(names) == 2 else 'open'} "
              f"it and read{'s' if len(names) == 2 else ''} ...")
        for p in procs:
            p.start()
        results = []
        for _ in procs:
            try:
                results.append(out.get(timeout=120))
            except Exception:
                break
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
        errors = [r for r in results if "error" in r]
        if errors or len(results) != len(procs):
            for r in errors:
                print(f"  {r['host']}: {r['error']}", file=sys.stderr)
            print("demo failed", file=sys.stderr)
            return 1
        results.sort(key=lambda r: r["host"])
        print(f"\n  {'host':<6}{'access':<8}{'values ok':<11}{'checksum':>16}{'PSS grew':>12}"
              f"   first byte at")
        for r in results:
            print(f"  {r['host']:<6}{'rw' if r['writable'] else 'r':<8}{str(r['ok']):<11}"
                  f"{r['checksum']:>16.0f}{format_size(r['pss_grew']):>12}   "
                  f"{r['device']}+{r['offset']:#x}")
        total = sum(r["pss_grew"] for r in results)
        same = len({r["checksum"] for r in results}) == 1 and all(r["ok"] for r in results)
        print(f"\n  every host read the same values: {same}")
        print(f"  combined PSS growth {format_size(total)} for a {format_size(nbytes)} region "
              f"across {len(results)} hosts: one shared copy, not {len(results)}")

        topo = cluster.topology
        d0 = topo.devices[0].name
        print(f"\n  what the modelled fabric charged ({topo.name}, idle {names[0]}->{d0} "
              f"{topo.path(names[0], d0).latency_read_ns:.0f} ns; virtual time, no waiting):")
        print(f"  {'host':<6}{'pass 1 (cold)':>15}{'pass 2 (cached)':>17}{'hit rate':>10}"
              f"{'bytes over the fabric':>23}")
        for r in results:
            print(f"  {r['host']:<6}{r['step_ns'][0] / 1e6:>12.3f} ms{r['step_ns'][1] / 1e6:>14.3f} ms"
                  f"{100 * r['hit_rate']:>9.1f}%{100 * r['fabric_share']:>22.1f}%")

        with cluster.connect(names[0]) as s:
            g = 64 << 10
            r = s.alloc("demo-interleaved", g * 2 * len(cluster.topology.devices),
                        placement="interleave", granularity=g)
            a = r.ndarray(np.uint8, r.nbytes)
            a[:] = 7
            order = [s.translate(r.address + i * g)[0] for i in range(2 * len(r.devices))]
            print(f"\n  an interleaved region of {format_size(r.nbytes)} is one ndarray of "
                  f"{a.nbytes} bytes; its {format_size(g)} stripes land on: {' '.join(order)}")
            s.free("demo-interleaved")
        print("\nstopping the cluster ...")
    print("done: no daemon and no device file left behind.")
    return 0 if same else 1
