#!/usr/bin/env python3
"""Benchmark the emulation engine; prints JSON lines.

1. ``access_cost``: real ns per page access when a batch of pages is charged in
   one call, for page-cache hits and misses (cache policy, streaming a region
   four times the cache, so every page misses and evicts) and for direct
   (uncached) pages: the C engine against the pure-Python reference model
   (fabric.engine._reference) on the same trace.  Targets: <= 30 ns per page hit, C at
   least 30x faster than the reference.  Two hit cases: ``hit`` reads a wholly
   resident region (priced from per-region counts, no page visited) and
   ``hit_page_pass`` the same with the summary off (``Engine(page_pass=True)``,
   a hash lookup per page: what every hit cost before the summary).
2. ``spin_fidelity``: in spin mode, modelled delays of 100 ns .. 100 us per call.
   For each, the accumulated error (wall time of the whole run against the sum
   of charges) and the per-call error (time between successive returns against
   each call's charge), mean and p99 of its absolute value.  Target: mean error <= 2% once the delay owed per call is >= 1 us.
   The calibration (fabric.engine.calibrate) is measured in the same run.
3. ``region_remove``: what unregistering a region costs as the host's page cache
   grows: register a 1 MiB region, touch four of its pages (two written, so
   they are written back), remove it; the same with a 4 MiB and a 1 GiB cache
   (another region keeps 256 pages resident in both).  Median us per remove
   (the Python call included) and their ratio.  Target: ratio <= 1.2 (the
   remove costs O(the region's resident pages), not O(the cache)).
4. ``region_read_overhead``: what charging costs a user: a 1 MiB
   ``Region.read`` in ``off`` mode on a real cluster (both region policies,
   all pages cached for "cache") against creating the same numpy view with
   ``np.frombuffer``.  Target: <= 5 us overhead per read.

5. ``resident_read``: charging a repeated read of a whole 16 MiB region whose
   pages are all resident (the engine prices it from per-region counts, no page
   visited) against the same read on an engine with the summary off
   (``page_pass=True``: a lookup per page, as before the summary), interleaved
   rounds, medians: us per call and ns per page.
6. ``matvec``: one step y = W @ x over a 16 MiB float32 W (4096 x 1024)
   declared with ``Region.reading`` on a real cluster (inject off) against the
   same step over a private numpy copy of W, interleaved rounds; the median of
   the per-round ratio.  Target: <= 1.15x.
7. ``declare_cost``: a single-page ``Region.reading`` (the with block, empty)
   and ``Region.access`` on that cluster, and ``Engine.access`` bare, us per call.

8. ``lockstep``: what lockstep virtual time costs.  4 host processes on one
   shared segment each make the same seeded run of 64 KiB direct reads
   through one shared link and device with 0..4 us of think time between
   them; accesses per second of the whole run (common start to last finish),
   free-running virtual (quantum 0) against lockstep quanta of 1, 10 and
   100 us, interleaved rounds, medians; with each host's real time spent
   waiting for the others and the mean p99 and virtual time the hosts end with
   (how the quantum moves the modelled figures).

    python scripts/bench_engine.py [--seed N] [--quick] [--only NAME,...]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time

import numpy as np

from fabric.engine import Engine, calibrate, engine_params_for_test
from fabric.engine._reference import RefEngine

PAGE = 4096


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, cwd=os.path.dirname(os.path.abspath(__file__)),
                              timeout=5).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def _emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def _page_pass_engine(params: dict, seed: int) -> Engine:
    """An engine with the resident summary off; on a build without that switch
    (comparing against an older tree on PYTHONPATH) a plain engine, which
    then prices every access page by page anyway."""
    try:
        return Engine(params, "h0", seed=seed, page_pass=True)
    except TypeError:
        return Engine(params, "h0", seed=seed)


def _per_page_ns(engine, calls: list[tuple[int, int, int]], repeat: int) -> float:
    access = engine.access
    pages = 0
    t0 = time.perf_counter_ns()
    for _ in range(repeat):
        for rid, off, n in calls:
            access(rid, off, n, False)
            pages += (n + PAGE - 1) // PAGE
    return (time.perf_counter_ns() - t0) / pages


def bench_access_cost(seed: int, quick: bool, base: dict) -> None:
    batch_pages = 256
    cache_pages = 1024
    params = engine_params_for_test(devices=2, cache_pages=cache_pages)
    for case in ("hit", "hit_page_pass", "miss", "direct"):
        npages = cache_pages if case.startswith("hit") else 4 * cache_pages
        policy = "direct" if case == "direct" else "cache"
        calls = [(1, off, batch_pages * PAGE) for off in range(0, npages * PAGE,
                                                               batch_pages * PAGE)]
        # "hit": every page read is resident, so the engine prices each call from
        # per-region counts; "hit_page_pass": the same with the summary turned off
        # (Engine(page_pass=True)), a hash lookup per page.
        results = {}
        for name, cls, repeat in (("c", Engine, 20 if quick else 200), ("ref", RefEngine, 1)):
            if cls is Engine and case == "hit_page_pass":
                e = _page_pass_engine(params, seed)
            else:
                e = cls(params, "h0", seed=seed)
            e.register_region(1, npages=npages, device_indices=[0, 1], stripe_pages=16,
                              policy=policy)
            if case.startswith("hit"):                  # warm: every page read is resident
                for c in calls:
                    e.access(c[0], c[1], c[2], False)
            results[name] = _per_page_ns(e, calls, repeat)
            if name == "c":
                s = e.stats()      # the trace does what the case says
                assert (s["hits"] > 0) if case.startswith("hit") else (s["hits"] == 0), s
                e.close()
        _emit(dict(base, bench="access_cost", case=case, batch_pages=batch_pages,
                   cache_pages=cache_pages, region_pages=npages,
                   c_ns_per_page=round(results["c"], 2),
                   ref_ns_per_page=round(results["ref"], 1),
                   speedup_x=round(results["ref"] / results["c"], 1)))


def _spin_params(delay_ns: float) -> dict:
    # A direct 64-byte read whose idle cost is delay_ns: fast links, huge bandwidth.
    return engine_params_for_test(devices=1, cache_pages=0, read_ns=delay_ns - 64 / 10_000.0,
                                  device_bandwidth_gbps=10_000.0, link_bandwidth_gbps=10_000.0,
                                  local_bandwidth_gbps=10_000.0)


def bench_spin(seed: int, quick: bool, base: dict, cal: dict) -> None:
    budget_s = 0.1 if quick else 0.4
    for delay in (100, 300, 1_000, 3_000, 10_000, 30_000, 100_000):
        n = max(50, min(200_000, int(budget_s * 1e9 / delay)))
        with Engine(_spin_params(delay), "h0", mode="spin", seed=seed, calibration=cal) as e:
            e.register_region(1, npages=1, device_indices=[0], stripe_pages=1, policy="direct")
            access = e.access
            for _ in range(20):
                access(1, 0, 64, False)
            # Accumulated: back-to-back calls, one clock read around the whole run.
            t0 = time.perf_counter_ns()
            total = 0
            for _ in range(n):
                total += access(1, 0, 64, False)
            wall = time.perf_counter_ns() - t0
            acc_err = (wall - total) / total
            # Per call: the time from one call's return to the next one's (what a
            # caller's loop experiences), against that call's charge.
            m = min(n, 20_000)
            ends = np.empty(m + 1)
            charges = np.empty(m)
            clock = time.perf_counter_ns
            ends[0] = clock()
            for i in range(m):
                charges[i] = access(1, 0, 64, False)
                ends[i + 1] = clock()
            signed = (np.diff(ends) - charges) / charges
            err = np.abs(signed)
        _emit(dict(base, bench="spin_fidelity", delay_ns_per_call=delay,
                   charged_ns_per_call=round(total / n, 1), calls=n,
                   accumulated_error_pct=round(100 * acc_err, 2),
                   per_call_error_pct_mean=round(100 * float(err.mean()), 2),
                   per_call_signed_error_pct_mean=round(100 * float(signed.mean()), 2),
                   per_call_error_pct_p99=round(100 * float(np.percentile(err, 99)), 2)))


def bench_region_remove(seed: int, quick: bool, base: dict) -> None:
    reps = 300 if quick else 3000
    region_pages = 256
    per_remove_us = {}
    for label, cache_bytes in (("4MiB", 4 << 20), ("1GiB", 1 << 30)):
        params = engine_params_for_test(devices=2, cache_pages=cache_bytes // PAGE)
        with Engine(params, "h0", seed=seed) as e:
            e.register_region(1, npages=256, device_indices=[0, 1], stripe_pages=16)
            e.access(1, 0, 256 * PAGE, False)              # other pages stay resident
            times = np.empty(reps)
            clock = time.perf_counter_ns
            for i in range(reps):
                e.register_region(2, npages=region_pages, device_indices=[0, 1],
                                  stripe_pages=1)
                e.access(2, 0, 2 * PAGE, False)
                e.access(2, 2 * PAGE, 2 * PAGE, True)      # two dirty pages: written back
                t0 = clock()
                e.unregister_region(2)
                times[i] = clock() - t0
            e.check_consistency()
            per_remove_us[label] = float(np.median(times)) / 1000
    _emit(dict(base, bench="region_remove", region_pages=region_pages, touched_pages=4,
               reps=reps, remove_us_cache_4MiB=round(per_remove_us["4MiB"], 3),
               remove_us_cache_1GiB=round(per_remove_us["1GiB"], 3),
               ratio_1GiB_to_4MiB=round(per_remove_us["1GiB"] / per_remove_us["4MiB"], 3),
               target_ratio=1.2))


def bench_region_read(quick: bool, base: dict) -> None:
    import fabric
    n = 2_000 if quick else 20_000
    mib = 1 << 20
    with fabric.Cluster.start(hosts=1, devices=1, device_size="64MiB", inject="off") as c:
        with c.connect("h0") as s:
            for policy in ("cache", "direct"):
                r = s.alloc(f"r-{policy}", 8 * mib, policy=policy)
                buf = r.buffer()
                r.read(0, mib)                      # warm: pages cached, mapping made
                best_read = best_view = float("inf")
                for _ in range(5):                  # interleaved best-of-5 against noise
                    t = time.perf_counter_ns()
                    for _ in range(n):
                        r.read(0, mib)
                    best_read = min(best_read, (time.perf_counter_ns() - t) / n)
                    t = time.perf_counter_ns()
                    for _ in range(n):
                        np.frombuffer(buf, dtype=np.uint8, count=mib, offset=0)
                    best_view = min(best_view, (time.perf_counter_ns() - t) / n)
                _emit(dict(base, bench="region_read_overhead", policy=policy, inject="off",
                           nbytes=mib, read_ns=round(best_read), numpy_view_ns=round(best_view),
                           overhead_us=round((best_read - best_view) / 1000, 3),
                           target_overhead_us=5.0))


def _median(xs) -> float:
    return float(np.median(np.asarray(xs, dtype=float)))


def bench_resident_read(seed: int, quick: bool, base: dict) -> None:
    pages = (16 << 20) // PAGE
    rounds, calls = (7, 50) if quick else (21, 200)
    params = engine_params_for_test(devices=2, cache_pages=pages + 64)
    nbytes = pages * PAGE
    engines = [Engine(params, "h0", seed=seed), _page_pass_engine(params, seed)]
    try:
        for e in engines:
            e.register_region(1, npages=pages, device_indices=[0, 1], stripe_pages=16)
            e.access(1, 0, nbytes, False)               # warm: every page resident
        clock = time.perf_counter_ns
        per_call: list[list[float]] = [[], []]
        for _ in range(rounds):                         # interleaved A/B rounds
            for k, e in enumerate(engines):
                access = e.access
                t0 = clock()
                for _ in range(calls):
                    access(1, 0, nbytes, False)
                per_call[k].append((clock() - t0) / calls)
        for e in engines:
            s = e.stats()
            assert s["misses"] == pages and s["hits"] == rounds * calls * pages, s
            e.check_consistency()
        assert engines[0].stats()["devices"] == engines[1].stats()["devices"]
    finally:
        for e in engines:
            e.close()
    summary, walk = _median(per_call[0]), _median(per_call[1])
    _emit(dict(base, bench="resident_read", region_bytes=nbytes, pages=pages, rounds=rounds,
               calls_per_round=calls, summary_us_per_call=round(summary / 1000, 3),
               summary_ns_per_page=round(summary / pages, 3),
               page_pass_us_per_call=round(walk / 1000, 3),
               page_pass_ns_per_page=round(walk / pages, 3),
               speedup_x=round(walk / summary, 1)))


def bench_matvec_and_declare(quick: bool, base: dict) -> None:
    import fabric
    rows, cols = 4096, 1024
    rounds, steps = (7, 10) if quick else (21, 30)
    n_small = 2_000 if quick else 20_000
    with fabric.Cluster.start(hosts=1, devices=1, device_size="64MiB", inject="off") as c:
        with c.connect("h0") as s:
            r = s.alloc("w", rows * cols * 4)
            r.ndarray(np.float32, (rows, cols))[:] = np.random.default_rng(1).standard_normal(
                (rows, cols), dtype=np.float32)
            w_priv = np.array(r.ndarray(np.float32, (rows, cols)))
            x = np.random.default_rng(2).standard_normal(cols, dtype=np.float32)
            y = np.empty(rows, np.float32)
            with r.reading(np.float32, (rows, cols)) as w:    # warm: every page cached
                np.matmul(w, x, out=y)
            clock = time.perf_counter_ns
            pooled, private, ratio = [], [], []
            for _ in range(rounds):                          # interleaved A/B rounds
                t0 = clock()
                for _ in range(steps):
                    np.matmul(w_priv, x, out=y)
                t1 = clock()
                for _ in range(steps):
                    with r.reading(np.float32, (rows, cols)) as w:
                        np.matmul(w, x, out=y)
                t2 = clock()
                private.append((t1 - t0) / steps)
                pooled.append((t2 - t1) / steps)
                ratio.append(pooled[-1] / private[-1])
            _emit(dict(base, bench="matvec", inject="off", shape=[rows, cols], dtype="float32",
                       matrix_bytes=rows * cols * 4, rounds=rounds, steps_per_round=steps,
                       private_us=round(_median(private) / 1000, 1),
                       reading_us=round(_median(pooled) / 1000, 1),
                       ratio_median=round(_median(ratio), 3), target_ratio=1.15))

            # Declaring one page: the Python path around the engine call.
            small = s.alloc("one", 64 * PAGE)
            small.access(0, PAGE)
            eng_access = s._engine.access
            rid = small.id
            res: dict[str, list[float]] = {"reading": [], "access": [], "engine": []}
            for _ in range(5):
                t0 = clock()
                for _ in range(n_small):
                    with small.reading(np.float32, 1024):
                        pass
                t1 = clock()
                for _ in range(n_small):
                    small.access(0, PAGE)
                t2 = clock()
                for _ in range(n_small):
                    eng_access(rid, 0, PAGE, False)
                t3 = clock()
                res["reading"].append((t1 - t0) / n_small)
                res["access"].append((t2 - t1) / n_small)
                res["engine"].append((t3 - t2) / n_small)
            _emit(dict(base, bench="declare_cost", inject="off", nbytes=PAGE,
                       reading_us=round(_median(res["reading"]) / 1000, 3),
                       access_us=round(_median(res["access"]) / 1000, 3),
                       engine_access_us=round(_median(res["engine"]) / 1000, 3)))


def _lockstep_host(params, host, seg, seed, quantum_ns, n, start, out):
    """One host of the lockstep benchmark: n accesses, then its figures."""
    import random
    rng = random.Random(f"{seed}/{host}")
    kw = dict(lockstep_ns=quantum_ns, lockstep_hosts=len(params["hosts"]),
              lockstep_timeout_ms=60_000) if quantum_ns else {}
    with Engine(params, host, shared_path=seg, seed=seed, **kw) as e:
        e.register_region(1, npages=256, device_indices=[0], stripe_pages=1, policy="direct")
        start.wait(timeout=60)
        t0 = time.perf_counter()
        for _ in range(n):
            e.access(1, rng.randrange(0, 240) * PAGE, 16 * PAGE, False)
            e.advance(rng.randrange(0, 4000))
        st = e.stats()
        out.put((host, time.perf_counter() - t0, st["latency_ns_p99"], st["virtual_time_ns"],
                 st.get("lockstep", {}).get("wait_ns", 0) / 1e9))


def bench_lockstep(seed: int, quick: bool, base: dict) -> None:
    import tempfile

    from fabric.engine import create_shared_state
    hosts, n = 4, (300 if quick else 2000)
    params = engine_params_for_test(hosts=hosts, devices=1, cache_pages=0,
                                    device_bandwidth_gbps=26.8, link_bandwidth_gbps=31.5)
    ctx = mp.get_context("spawn")
    quanta = (0, 1_000, 10_000, 100_000)
    runs: dict[int, list] = {q: [] for q in quanta}
    with tempfile.TemporaryDirectory(dir="/dev/shm") as d:
        for rnd in range(1 if quick else 3):
            for q in quanta:                                  # interleaved rounds
                seg = os.path.join(d, f"r{rnd}q{q}.seg")
                create_shared_state(seg, params)
                start, out = ctx.Barrier(hosts), ctx.Queue()
                procs = [ctx.Process(target=_lockstep_host,
                                     args=(params, f"h{i}", seg, seed, q, n, start, out))
                         for i in range(hosts)]
                for p in procs:
                    p.start()
                res = [out.get(timeout=300) for _ in range(hosts)]
                for p in procs:
                    p.join(timeout=30)
                os.unlink(seg)
                runs[q].append(res)
    for q in quanta:
        rates = [hosts * n / max(r[1] for r in res) for res in runs[q]]
        waits = [sum(r[4] for r in res) / sum(r[1] for r in res) for res in runs[q]]
        last = runs[q][-1]
        _emit(dict(base, bench="lockstep", hosts=hosts, accesses_per_host=n,
                   quantum_ns=q, accesses_per_s=round(_median(rates)),
                   rounds=len(rates), wait_share=round(_median(waits), 3),
                   mean_p99_ns=round(sum(r[2] for r in last) / hosts),
                   mean_virtual_time_ns=round(sum(r[3] for r in last) / hosts)))


BENCHES = ("access_cost", "spin", "region_remove", "region_read", "resident_read", "matvec",
           "lockstep")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="fewer iterations (smoke test)")
    ap.add_argument("--only", default=",".join(BENCHES),
                    help=f"comma-separated subset of {','.join(BENCHES)}")
    args = ap.parse_args(argv)
    only = set(args.only.split(","))
    if not only <= set(BENCHES):
        ap.error(f"--only takes names from {','.join(BENCHES)}")
    cal = calibrate()
    base = {"seed": args.seed, "commit": _commit(), "python": sys.version.split()[0],
            "cpus": os.cpu_count()}
    _emit(dict(base, bench="calibration", **cal))
    if "access_cost" in only:
        bench_access_cost(args.seed, args.quick, base)
    if "spin" in only:
        bench_spin(args.seed, args.quick, base, cal)
    if "region_remove" in only:
        bench_region_remove(args.seed, args.quick, base)
    if "region_read" in only:
        bench_region_read(args.quick, base)
    if "resident_read" in only:
        bench_resident_read(args.seed, args.quick, base)
    if "matvec" in only:
        bench_matvec_and_declare(args.quick, base)
    if "lockstep" in only:
        bench_lockstep(args.seed, args.quick, base)
    return 0


if __name__ == "__main__":
    sys.exit(main())
