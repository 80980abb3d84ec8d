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

import json
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


#: The demo writes element i as float32(i % PATTERN_MOD): small whole numbers, exact in float32.
PATTERN_MOD = 1021
_CHUNK = 1 << 20  # elements per pass: fill and check without a second region-sized array


def _pattern(start: int, stop: int) -> np.ndarray:
    # The index is computed in int64 and reduced before the cast: float32 holds whole
    # numbers exactly only up to 2**24, so np.arange(..., dtype=float32) drifts past
    # 16 Mi elements (64 MiB of float32) and the values no longer match the pattern.
    return (np.arange(start, stop, dtype=np.int64) % PATTERN_MOD).astype(np.float32)


def _fill(a: np.ndarray) -> None:
    for i in range(0, a.size, _CHUNK):
        a[i:i + _CHUNK] = _pattern(i, min(i + _CHUNK, a.size))


def _check(a: np.ndarray) -> bool:
    """Whether every element of ``a`` holds the pattern."""
    return all(np.array_equal(a[i:i + _CHUNK], _pattern(i, min(i + _CHUNK, a.size)))
               for i in range(0, a.size, _CHUNK))


def _expected_sum(n: int) -> int:
    """The exact sum of the pattern over n elements."""
    q, r = divmod(n, PATTERN_MOD)
    return q * (PATTERN_MOD * (PATTERN_MOD - 1) // 2) + r * (r - 1) // 2


def _host_main(host: str, state_dir: str, nbytes: int, barrier, out) -> None:
    import fabric
    try:
        with fabric.connect(host, state_dir) as s:
            n = nbytes // 4
            pss0 = _pss()
            if host == "h0":
                r = s.alloc(REGION, nbytes, share="shared", placement="local")
                a = r.ndarray(np.float32, n)
                _fill(a)
                barrier.wait(60)
            else:
                barrier.wait(60)
                r = s.open(REGION)
                a = r.ndarray(np.float32, n)
            ok = _check(a)
            checksum = float(a.sum(dtype=np.float64))
            ok = ok and checksum == float(_expected_sum(n))
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


def run_demo(hosts: int = 2, size: str | int = "64MiB", topology: str | None = None, *,
             as_json: bool = False) -> int:
    """Run the demo; return the exit code (0 when every host read the same values).

    The cluster lives in ``$FABRIC_STATE_DIR`` when that is set, else in a fresh
    directory under /dev/shm (see :meth:`fabric.Cluster.start`).  With
    ``as_json`` the text is replaced by one JSON object (``"schema": 1``).
    """
    import fabric
    say = (lambda *a, **k: None) if as_json else print
    report: dict = {"schema": 1, "ok": False, "region_bytes": None}
    nbytes = parse_size(size, "--size")
    if nbytes % 4:
        raise fabric.InvalidArgument(f"--size: the demo region holds float32 values; "
                                     f"give a multiple of 4 bytes, got {nbytes}")
    if hosts < 2:
        raise fabric.InvalidArgument("the demo needs at least 2 hosts")
    device_size = max(2 * nbytes, 64 << 20)
    device_size = -(-device_size // 4096) * 4096
    say(f"starting a cluster: {hosts} hosts, {hosts} devices of {format_size(device_size)} ...")
    t0 = time.monotonic()
    kw = {"topology": topology} if topology else {"hosts": hosts, "devices": hosts,
                                                   "device_size": device_size}
    with fabric.Cluster.start(**kw) as cluster:
        say(f"  up in {time.monotonic() - t0:.2f} s; state dir {cluster.state_dir}")
        names = cluster.hosts
        if len(names) < 2:
            raise fabric.InvalidArgument(f"the demo needs at least 2 hosts; topology "
                                         f"{cluster.topology.name} has {len(names)}")
        report.update(state_dir=cluster.state_dir, topology=cluster.topology.name,
                      region_bytes=nbytes, hosts=names)
        ctx = mp.get_context("spawn")
        barrier, out = ctx.Barrier(len(names)), ctx.Queue()
        procs = [ctx.Process(target=_host_main, args=(h, cluster.state_dir, nbytes, barrier, out))
                 for h in names]
        say(f"\n{names[0]} allocates {format_size(nbytes)} region {REGION!r} (share=shared) and "
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
            if as_json:
                report["errors"] = {r["host"]: r["error"] for r in errors}
                print(json.dumps(report, indent=1))
            return 1
        results.sort(key=lambda r: r["host"])
        say(f"\n  {'host':<6}{'access':<8}{'values ok':<11}{'checksum':>16}{'PSS grew':>12}"
              f"   first byte at")
        for r in results:
            say(f"  {r['host']:<6}{'rw' if r['writable'] else 'r':<8}{str(r['ok']):<11}"
                  f"{r['checksum']:>16.0f}{format_size(r['pss_grew']):>12}   "
                  f"{r['device']}+{r['offset']:#x}")
        total = sum(r["pss_grew"] for r in results)
        same = len({r["checksum"] for r in results}) == 1 and all(r["ok"] for r in results)
        say(f"\n  every host read the same values: {same}")
        say(f"  combined PSS growth {format_size(total)} for a {format_size(nbytes)} region "
              f"across {len(results)} hosts: one shared copy, not {len(results)}")

        topo = cluster.topology
        d0 = topo.devices[0].name
        say(f"\n  what the modelled fabric charged ({topo.name}, idle {names[0]}->{d0} "
              f"{topo.path(names[0], d0).latency_read_ns:.0f} ns; virtual time, no waiting):")
        say(f"  {'host':<6}{'pass 1 (cold)':>15}{'pass 2 (cached)':>17}{'hit rate':>10}"
              f"{'bytes over the fabric':>23}")
        for r in results:
            say(f"  {r['host']:<6}{r['step_ns'][0] / 1e6:>12.3f} ms{r['step_ns'][1] / 1e6:>14.3f} ms"
                  f"{100 * r['hit_rate']:>9.1f}%{100 * r['fabric_share']:>22.1f}%")

        with cluster.connect(names[0]) as s:
            g = 64 << 10
            r = s.alloc("demo-interleaved", g * 2 * len(cluster.topology.devices),
                        placement="interleave", granularity=g)
            a = r.ndarray(np.uint8, r.nbytes)
            a[:] = 7
            order = [s.translate(r.address + i * g)[0] for i in range(2 * len(r.devices))]
            say(f"\n  an interleaved region of {format_size(r.nbytes)} is one ndarray of "
                  f"{a.nbytes} bytes; its {format_size(g)} stripes land on: {' '.join(order)}")
            s.free("demo-interleaved")
        report.update(ok=same, results=results, combined_pss_growth_bytes=total,
                      interleave={"region_bytes": r.nbytes, "granularity_bytes": g,
                                  "stripes": order})
        say("\nstopping the cluster ...")
    say("done: no daemon and no device file left behind.")
    if as_json:
        print(json.dumps(report, indent=1))
    return 0 if same else 1
