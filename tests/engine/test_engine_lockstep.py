"""Lockstep virtual time across real processes (docs/cost-model.md, "Time bases").

- 4 processes (spawn), each a lockstep host on one shared segment, run a seeded
  random mix of reads and writes through one shared link and device with random
  think time; two runs with the same seed give identical per-host histograms
  and counters, a different seed different ones, and a run with one process
  perturbed (random real sleeps, a CPU-hogging thread) the same as unperturbed.
- k processes streaming through one link under lockstep: the same figures, to
  the ns, on two runs (the free-running test_k_processes_share_one_link can
  only check them within 20%).
- A member that stops calling holds the others back until the deadline, then
  LockstepTimeout names it; a member killed with SIGKILL is dropped.
- Bad input: a quantum outside virtual mode, a group larger than the topology,
  a second member of another group size -> typed errors.
- One process: hosts driven in an order that obeys the rule agree with the
  Python reference (fabric.engine._reference) bit for bit.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import threading
import time

import pytest

from fabric.engine import Engine, create_shared_state, engine_params_for_test
from fabric.engine._reference import RefEngine, RefSegment
from fabric.errors import InvalidArgument, LockstepTimeout

from engine_procs import run_procs

MIB = 1 << 20
QUANTUM_NS = 2_000


def _params(hosts: int) -> dict:
    # One device behind one shared link (sw-d0); lognormal jitter so the
    # histograms have a shape; a small cache so there are hits, misses,
    # evictions and write-backs.
    return engine_params_for_test(hosts=hosts, devices=1, cache_pages=16,
                                  device_bandwidth_gbps=26.8, link_bandwidth_gbps=31.5,
                                  jitter={"kind": "lognormal", "sigma": 0.3},
                                  engine={"mlp_lines": 64})


def _figures(stats: dict) -> dict:
    """What must repeat exactly: everything but the lockstep waits (real time)."""
    return {k: v for k, v in stats.items() if k != "lockstep"}


def _host(params, host, seg, seed, n_ops, perturb, quantum_ns, out):
    """Worker: a seeded random mix of accesses and think time on one lockstep host."""
    try:
        rng = random.Random(f"{seed}/{host}")
        noise = random.Random()              # perturbation: not seeded on purpose
        stop = threading.Event()
        if perturb:                          # a thread fighting for the GIL and the core
            def hog():
                x = 0
                while not stop.is_set():
                    x += 1
            threading.Thread(target=hog, daemon=True).start()
        with Engine(params, host, shared_path=seg, seed=seed, lockstep_ns=quantum_ns,
                    lockstep_hosts=len(params["hosts"]), lockstep_timeout_ms=30_000) as e:
            e.register_region(1, npages=64, device_indices=[0], stripe_pages=1, policy="cache")
            e.register_region(2, npages=64, device_indices=[0], stripe_pages=1, policy="direct")
            for _ in range(n_ops):
                if rng.random() < 0.5:
                    n = rng.choice((4096, 16384, 65536))
                    e.access(2, rng.randrange(0, 64 * 4096 - n + 1, 64), n, rng.random() < 0.3)
                else:
                    n = rng.choice((64, 4096, 8192))
                    e.access(1, rng.randrange(0, 64 * 4096 - n + 1, 64), n, rng.random() < 0.3)
                e.advance(rng.randrange(0, 4000))
                if perturb and noise.random() < 0.05:
                    time.sleep(noise.random() * 0.002)
            e.check_consistency()
            stop.set()
            out.put((host, _figures(e.stats())))
    except BaseException as exc:  # the parent reports it
        out.put((host, f"{type(exc).__name__}: {exc}"))


def _run(tmp_path, name: str, seed: int, *, hosts: int = 4, n_ops: int = 150,
         perturb: str | None = None, quantum_ns: int = QUANTUM_NS) -> dict:
    params = _params(hosts)
    seg = str(tmp_path / f"{name}.seg")
    create_shared_state(seg, params)
    results = dict(run_procs(_host, [(params, f"h{i}", seg, seed, n_ops, perturb == f"h{i}",
                                      quantum_ns) for i in range(hosts)], 90))
    for host, r in results.items():
        assert isinstance(r, dict), f"{host} failed: {r}"
    return results


@pytest.mark.timeout(120)
def test_four_lockstep_processes_repeat_exactly(tmp_path, seed):
    first = _run(tmp_path, "a", seed)
    again = _run(tmp_path, "b", seed, perturb="h2")      # one process perturbed
    for host in first:
        assert first[host]["calls"] > 0 and first[host]["latency_ns_p99"] > 0
        assert again[host] == first[host], f"{host} differs between two runs of seed {seed}"
    # The figures follow the seed (and are not, say, all zero).
    other = _run(tmp_path, "c", seed + 1)
    assert any(other[h] != first[h] for h in first), "a different seed gave the same run"


def _stream_lockstep(params, host, seg, n, out):
    """Worker: n flat-out 1 MiB direct reads in lockstep; bytes and charged ns."""
    try:
        with Engine(params, host, shared_path=seg, lockstep_ns=10_000,
                    lockstep_hosts=len(params["hosts"]), lockstep_timeout_ms=30_000) as e:
            e.register_region(1, npages=256, device_indices=[0], stripe_pages=1, policy="direct")
            charged = 0
            for _ in range(n):
                charged += e.access(1, 0, MIB, False)
            out.put((host, (n * MIB, charged, e.stats()["latency_ns_p99"])))
    except BaseException as exc:
        out.put((host, f"{type(exc).__name__}: {exc}"))


def _stream_run(tmp_path, name: str, k: int) -> dict:
    params = engine_params_for_test(hosts=k, devices=1, cache_pages=0,
                                    device_bandwidth_gbps=1000.0, link_bandwidth_gbps=31.5,
                                    engine={"mlp_lines": 1024})
    seg = str(tmp_path / f"{name}.seg")
    create_shared_state(seg, params)
    results = dict(run_procs(_stream_lockstep, [(params, f"h{i}", seg, 60) for i in range(k)], 60))
    for host, r in results.items():
        assert isinstance(r, tuple), f"{host} failed: {r}"
    return results


@pytest.mark.timeout(90)
@pytest.mark.parametrize("k", [2, 4])
def test_k_lockstep_processes_share_one_link_exactly(k, tmp_path):
    """The lockstep twin of test_k_processes_share_one_link: each host gets ~1/k of
    the link, and two runs agree to the ns."""
    first = _stream_run(tmp_path, "a", k)
    again = _stream_run(tmp_path, "b", k)
    assert again == first
    for host, (nbytes, charged, _p99) in first.items():
        # Over the whole run (the first calls, before any rate is published, included):
        # measured 15.99 GB/s each for k=2, 8.08 for k=4.
        got, want = nbytes / charged, 31.5 / k
        assert abs(got - want) / want < 0.1, f"{host}: {got:.2f} GB/s of the link, want {want}"


def _stalling_host(params, host, seg, stall_after, timeout_ms, started, out):
    """Worker: a few accesses, then (if stall_after) it stops calling the engine."""
    try:
        with Engine(params, host, shared_path=seg, lockstep_ns=1_000, lockstep_hosts=2,
                    lockstep_timeout_ms=timeout_ms) as e:
            e.register_region(1, npages=16, device_indices=[0], stripe_pages=1, policy="direct")
            started.wait(timeout=60)           # both joined: the deadline is about the stall
            for i in range(1000):
                if stall_after is not None and i == stall_after:
                    out.put((host, "stalled"))
                    time.sleep(30)
                e.access(1, 0, 4096, False)
                e.advance(500)
            out.put((host, "done"))
        os._exit(0)              # the exit code says it: a SIGKILLed peer may break the queue
    except BaseException as exc:
        out.put((host, f"{type(exc).__name__}: {exc}"))
        out.close()
        out.join_thread()
        os._exit(2)


def _two(tmp_path, stall_after, timeout_ms):
    params = engine_params_for_test(hosts=2, devices=1, cache_pages=0)
    seg = str(tmp_path / "stall.seg")
    create_shared_state(seg, params)
    ctx = mp.get_context("spawn")
    out, started = ctx.Queue(), ctx.Barrier(2)
    procs = [ctx.Process(target=_stalling_host,
                         args=(params, "h0", seg, None, timeout_ms, started, out), daemon=True),
             ctx.Process(target=_stalling_host,
                         args=(params, "h1", seg, stall_after, timeout_ms, started, out),
                         daemon=True)]
    for p in procs:
        p.start()
    procs.append(started)       # keep the barrier alive until the children have it
    return procs, out


@pytest.mark.timeout(60)
def test_a_stalled_member_times_the_others_out_naming_it(tmp_path):
    procs, out = _two(tmp_path, stall_after=20, timeout_ms=1_500)
    try:
        got = dict(out.get(timeout=30) for _ in range(2))
        assert got["h1"] == "stalled"
        assert got["h0"].startswith("LockstepTimeout: ")
        assert "host h1 held host h0 back" in got["h0"] and "park" in got["h0"]
    finally:
        for p in procs[:2]:
            p.kill()
            p.join()


@pytest.mark.timeout(60)
def test_a_killed_member_is_dropped(tmp_path):
    procs, out = _two(tmp_path, stall_after=20, timeout_ms=20_000)
    try:
        host, what = out.get(timeout=30)
        assert (host, what) == ("h1", "stalled")
        os.kill(procs[1].pid, signal.SIGKILL)
        procs[1].join()
        procs[0].join(timeout=30)
        assert procs[0].exitcode == 0, "h0 did not finish its accesses"
    finally:
        for p in procs[:2]:
            p.kill()
            p.join()


def test_bad_lockstep_input_is_refused(tmp_path):
    params = engine_params_for_test(hosts=2, devices=1)
    with pytest.raises(InvalidArgument, match="virtual"):
        Engine(params, "h0", mode="spin", lockstep_ns=1000)
    with pytest.raises(InvalidArgument, match="virtual"):
        Engine(params, "h0", mode="off", lockstep_ns=1000)
    with pytest.raises(InvalidArgument, match="lockstep_hosts"):
        Engine(params, "h0", lockstep_ns=1000, lockstep_hosts=3)
    with pytest.raises(InvalidArgument, match="lockstep_hosts"):
        Engine(params, "h0", lockstep_ns=1000, lockstep_hosts=0)
    with pytest.raises(InvalidArgument, match="lockstep_ns"):
        Engine(params, "h0", lockstep_ns=-1)
    seg = str(tmp_path / "g.seg")
    create_shared_state(seg, params)
    with Engine(params, "h0", shared_path=seg, lockstep_ns=1000, lockstep_hosts=2) as a:
        with pytest.raises(InvalidArgument, match="lockstep_hosts=1"):
            Engine(params, "h1", shared_path=seg, lockstep_ns=1000, lockstep_hosts=1)
        with pytest.raises(InvalidArgument, match="lockstep_ns=500"):
            Engine(params, "h1", shared_path=seg, lockstep_ns=500, lockstep_hosts=2)
        with pytest.raises(InvalidArgument, match="already a member"):
            Engine(params, "h0", shared_path=seg, lockstep_ns=1000, lockstep_hosts=2)
        with pytest.raises(InvalidArgument, match="does not run in lockstep"):
            Engine(params, "h1", shared_path=seg).park()
        a.check_consistency()
    # Everyone left: the next joiner starts a fresh group, with its own size.
    with Engine(params, "h1", shared_path=seg, lockstep_ns=500, lockstep_hosts=1) as b:
        b.register_region(1, npages=1, device_indices=[0], stripe_pages=1)
        b.access(1, 0, 64, False)
        assert b.lockstep_info()["size"] == 1
        b.park()
        with pytest.raises(InvalidArgument, match="parked"):
            b.access(1, 0, 64, False)
        b.check_consistency()
        b.unpark()
        b.access(1, 0, 64, False)
        b.check_consistency()


def test_a_lockstep_wait_releases_the_gil(tmp_path):
    """h0 waits (in C) for h1, which a second thread of this process drives."""
    params = engine_params_for_test(hosts=2, devices=1, cache_pages=0)
    seg = str(tmp_path / "gil.seg")
    create_shared_state(seg, params)
    with Engine(params, "h0", shared_path=seg, lockstep_ns=1000, lockstep_hosts=2,
                lockstep_timeout_ms=20_000) as a, \
            Engine(params, "h1", shared_path=seg, lockstep_ns=1000, lockstep_hosts=2,
                   lockstep_timeout_ms=20_000) as b:
        for e in (a, b):
            e.register_region(1, npages=4, device_indices=[0], stripe_pages=1, policy="direct")
        done = []

        def drive_h1():
            b.advance(50_000)     # first (not running concurrently with h1's other calls)
            done.append(b.virtual_time_ns)

        a.advance(50_000)         # h0 ahead; its next access must wait for h1
        t = threading.Thread(target=lambda: (time.sleep(0.2), drive_h1()))
        t.start()
        a.access(1, 0, 4096, False)   # blocks in C until h1 reaches 50 us
        t.join()
        assert done == [50_000]
        assert a.lockstep_info()["waits"] == 1


def test_lockstep_agrees_with_the_reference(seed, tmp_path):
    """Three hosts in one process, always driving the one with the least clock (so
    the rule never blocks): C and Python reference agree bit for bit."""
    params = _params(3)
    rng = random.Random(seed)
    seg = str(tmp_path / "diff.seg")
    create_shared_state(seg, params)
    ref_seg = RefSegment(params)
    refs = [RefEngine(params, f"h{i}", seed=seed, segment=ref_seg, lockstep_ns=QUANTUM_NS)
            for i in range(3)]
    cs = [Engine(params, f"h{i}", seed=seed, shared_path=seg, lockstep_ns=QUANTUM_NS,
                 lockstep_timeout_ms=0) for i in range(3)]
    try:
        for e in refs + cs:
            e.register_region(1, npages=64, device_indices=[0], stripe_pages=1, policy="cache")
            e.register_region(2, npages=64, device_indices=[0], stripe_pages=1, policy="direct")
        for step in range(600):
            i = min(range(3), key=lambda j: (cs[j].virtual_time_ns, j))
            assert refs[i].virtual_time_ns == cs[i].virtual_time_ns
            if rng.random() < 0.3:
                ns = rng.randrange(0, 5000)
                refs[i].advance(ns)
                cs[i].advance(ns)
                continue
            rid = rng.choice((1, 2))
            n = rng.choice((64, 4096, 16384))
            off = rng.randrange(0, 64 * 4096 - n + 1, 64)
            w = rng.random() < 0.3
            got, want = cs[i].access(rid, off, n, w), refs[i].access(rid, off, n, w)
            assert got == want, f"step {step}: h{i} charged {got}, reference {want}"
        for i in range(3):
            c = cs[i].stats()
            r = refs[i].counters()
            assert c["calls"] == r["calls"] and c["injected_ns"] == r["injected_ns"]
            assert c["latency_ns_p99"] == r["latency"]["p99"]
            cs[i].check_consistency()
    finally:
        for e in cs:
            e.close()


def test_cluster_wide_lockstep_reaches_virtual_sessions(state_dir):
    import fabric
    with pytest.raises(InvalidArgument, match="virtual"):
        fabric.Cluster.start(hosts=2, devices=1, device_size="16MiB", state_dir=state_dir,
                             inject="spin", lockstep_ns=1000)
    with pytest.raises(InvalidArgument, match="lockstep hosts"):
        fabric.Cluster.start(hosts=2, devices=1, device_size="16MiB", state_dir=state_dir,
                             lockstep_ns=1000, lockstep_hosts=3)
    c = fabric.Cluster.start(hosts=2, devices=1, device_size="16MiB", state_dir=state_dir,
                             lockstep_ns=5000, lockstep_hosts=1)
    try:
        with c.connect("h0") as s, c.connect("h1", inject="off") as off:
            r = s.alloc("x", 1 << 16, policy="direct")
            r.access(0, 4096)
            info = s.stats()["lockstep"]
            assert (info["quantum_ns"], info["size"], info["state"]) == (5000, 1, "running")
            with s.parked():
                assert s._engine.lockstep_info()["state"] == "parked"
            assert "lockstep" not in off.stats()
            members = c.stats()["lockstep"]          # `fabric stats` shows the group
            assert set(members) == {"h0"} and members["h0"]["state"] == "running"
            assert members["h0"]["clock_ns"] == s.virtual_time_ns
            r.close()
            s.free("x")
    finally:
        c.stop()
