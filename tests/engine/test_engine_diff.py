"""Differential tests: the C engine against the pure-Python reference (fabric.engine._reference).

Random traces (seeded; a failure names its seed; FABRIC_TEST_SEED replays it)
run through both in virtual mode.  They must agree exactly: the charge of every
access, every per-device counter (hits, misses, evictions, write-backs,
invalidations, ...), the tier counters, the latency histogram's figures, and
the final state of every page in the cache.  Exactness holds with jitter too:
both draw from the same xoshiro256** stream and call the same libm.
"""
from __future__ import annotations

import random

import pytest

from fabric.engine import Engine, create_shared_state, engine_params_for_test
from fabric.engine._reference import RefEngine, RefSegment, RefVersions

MESS = {"read_pct": [100, 0], "points": [[[0.0, 226.0], [14.7, 232.0], [21.0, 239.0],
                                          [26.7, 285.0], [26.8, 1285.0]],
                                         [[0.0, 240.0], [10.0, 260.0], [14.6, 1420.0]]]}


def _params(jitter=None, **kw):
    base = dict(hosts=1, devices=3, cache_pages=24, device_bandwidth_gbps=26.8,
                link_bandwidth_gbps=31.5, device_curve=MESS, jitter=jitter)
    base.update(kw)
    return engine_params_for_test(**base)


def _compare(c: Engine, r: RefEngine, where: str) -> None:
    s, rc = c.stats(), r.counters()
    for name, d in s["devices"].items():
        assert d == rc["devices"][name], f"{where}: device {name} counters differ"
    assert s["virtual_time_ns"] == rc["virtual_time_ns"], where
    assert s["injected_ns"] == rc["injected_ns"] and s["calls"] == rc["calls"], where
    assert [s["tiers"][t]["pages"] for t in ("local", "cached", "far", "remote")] == rc["tier_pages"]
    assert [s["tiers"][t]["bytes"] for t in ("local", "cached", "far", "remote")] == rc["tier_bytes"]
    lat = rc["latency"]
    assert (s["latency_count"], s["latency_ns_min"], s["latency_ns_max"]) == (
        lat["count"], lat["min_ns"], lat["max_ns"]), where
    for p in ("p50", "p90", "p99", "p999"):
        assert s[f"latency_ns_{p}"] == lat[p], f"{where}: {p}"


def _trace(rnd: random.Random, npages: int, page: int, n: int):
    """Mostly small accesses with locality, some long streams, 30% writes."""
    hot = [rnd.randrange(npages) for _ in range(8)]
    for _ in range(n):
        roll = rnd.random()
        if roll < 0.5:
            p = rnd.choice(hot) if rnd.random() < 0.7 else rnd.randrange(npages)
            off = p * page + rnd.randrange(page)
            nbytes = rnd.randrange(1, 3 * page)
        elif roll < 0.9:
            off = rnd.randrange(npages * page)
            nbytes = rnd.randrange(1, 12 * page)
        else:
            off = 0
            nbytes = npages * page
        nbytes = min(nbytes, npages * page - off)
        yield off, nbytes, rnd.random() < 0.3


@pytest.mark.parametrize("eviction", ["clock", "lru", "fifo"])
@pytest.mark.parametrize("policy", ["cache", "direct", "promote"])
def test_random_trace_matches_reference(eviction, policy, seed):
    params = _params()
    rnd = random.Random(f"{seed}-{eviction}-{policy}")
    c = Engine(params, "h0", seed=seed, eviction=eviction)
    r = RefEngine(params, "h0", seed=seed, eviction=eviction)
    npages = 96
    for e in (c, r):
        e.register_region(5, npages=npages, device_indices=[2, 0, 1], stripe_pages=3,
                          policy=policy, promote_after=3)
    for i, (off, nbytes, write) in enumerate(_trace(rnd, npages, 4096, 600)):
        a, b = c.access(5, off, nbytes, write), r.access(5, off, nbytes, write)
        assert a == b, f"seed {seed}: access {i} ({off}, {nbytes}, {write}) charged {a} vs {b}"
    _compare(c, r, f"seed {seed} {eviction}/{policy}")
    for p in range(npages):
        assert c.page_state(5, p) == r.page_state(5, p), f"seed {seed}: page {p}"
    assert c.stats()["misses"] > 0
    if policy != "direct":
        assert c.stats()["hits"] > 0 and c.stats()["evictions"] > 0
    c.check_consistency()                 # fab_engine_check + fab_pcache_check after the trace
    c.unregister_region(5)
    r.unregister_region(5)
    _compare(c, r, f"seed {seed} after unregister")
    c.close()


@pytest.mark.parametrize("jitter", [{"kind": "lognormal", "sigma": 0.5},
                                    {"kind": "spike", "p": 0.05, "spike_ns": 4000.0}],
                         ids=["lognormal", "spike"])
def test_jitter_matches_reference(jitter, seed):
    params = _params(jitter=jitter)
    rnd = random.Random(seed)
    with Engine(params, "h0", seed=seed) as c:
        r = RefEngine(params, "h0", seed=seed)
        for e in (c, r):
            e.register_region(1, npages=64, device_indices=[0, 1], stripe_pages=2)
            e.register_region(2, npages=64, device_indices=[2], stripe_pages=1, policy="direct")
        for i, (off, nbytes, write) in enumerate(_trace(rnd, 64, 4096, 400)):
            rid = 1 + (i % 2)
            assert c.access(rid, off, nbytes, write) == r.access(rid, off, nbytes, write), (
                f"seed {seed}: access {i}")
        _compare(c, r, f"seed {seed} {jitter['kind']}")


def test_mixed_regions_pins_and_think_time(seed):
    """Several regions and policies in one cache, pins, advance() and unregister."""
    params = _params(cache_pages=16, tier="remote")
    rnd = random.Random(seed)
    with Engine(params, "h0", seed=seed, eviction="lru") as c:
        r = RefEngine(params, "h0", seed=seed, eviction="lru")
        specs = {1: ("cache", [0]), 2: ("promote", [1, 2]), 3: ("direct", [2, 0])}
        for e in (c, r):
            for rid, (pol, devs) in specs.items():
                e.register_region(rid, npages=40, device_indices=devs, stripe_pages=2, policy=pol)
        c.access(1, 0, 4 * 4096, False)
        r.access(1, 0, 4 * 4096, False)
        c.pin(1, 0, 4 * 4096)
        r.pin(1, 0, 4, 1)
        for i, (off, nbytes, write) in enumerate(_trace(rnd, 40, 4096, 500)):
            rid = rnd.choice([1, 2, 3])
            if rnd.random() < 0.1:
                think = rnd.randrange(100_000)
                c.advance(think)
                r.advance(think)
            assert c.access(rid, off, nbytes, write) == r.access(rid, off, nbytes, write), (
                f"seed {seed}: access {i}")
        for p in range(4):
            assert c.page_state(1, p)["resident"] and c.page_state(1, p)["pins"] == 1
        c.unpin(1, 0, 4 * 4096)
        r.pin(1, 0, 4, -1)
        c.check_consistency()
        for rid in (2, 1):
            assert c.unregister_region(rid) is None
            r.unregister_region(rid)
            c.check_consistency()
        _compare(c, r, f"seed {seed} mixed")


@pytest.mark.parametrize("share", ["shared", "coherent"])
def test_two_hosts_coherence_matches_reference(share, seed, tmp_path):
    """Two hosts in one process share a segment and a version file; so do the references."""
    params = _params(hosts=2, cache_pages=12)
    seg = str(tmp_path / "engine.seg")
    create_shared_state(seg, params)
    vers = str(tmp_path / "r9.versions")
    rseg, rvers = RefSegment(params), RefVersions(48)
    rnd = random.Random(seed)
    cs = [Engine(params, f"h{i}", seed=seed, shared_path=seg) for i in range(2)]
    rs = [RefEngine(params, f"h{i}", seed=seed, segment=rseg) for i in range(2)]
    try:
        for c, r in zip(cs, rs):
            c.register_region(9, npages=48, device_indices=[0, 1], stripe_pages=4,
                              share=share, versions_path=vers)
            r.register_region(9, npages=48, device_indices=[0, 1], stripe_pages=4,
                              share=share, versions=rvers)
        for i, (off, nbytes, write) in enumerate(_trace(rnd, 48, 4096, 500)):
            h = rnd.randrange(2)
            a = cs[h].access(9, off, nbytes, write)
            b = rs[h].access(9, off, nbytes, write)
            assert a == b, f"seed {seed}: access {i} by h{h}: {a} vs {b}"
        for h in range(2):
            _compare(cs[h], rs[h], f"seed {seed} h{h}")
        total = sum(c.stats()["invalidations"] for c in cs)
        assert total > 0, "the trace should make some cached copies stale"
        bis = sum(c.stats()["back_invalidations"] for c in cs)
        assert (bis > 0) == (share == "coherent")
    finally:
        for c in cs:
            c.close()


@pytest.mark.parametrize("npages", [16, 400], ids=["walk-by-key", "scan-frames"])
def test_remove_dirty_pages_on_several_devices(npages, seed):
    """Unregistering writes back dirty pages on three devices; with jitter, the
    charge depends on the order devices are priced in, which must match the
    reference whether the C walks the region's pages by key (region small
    against the cache) or scans the frames (region large)."""
    params = _params(cache_pages=96, jitter={"kind": "lognormal", "sigma": 0.4})
    rnd = random.Random(f"{seed}-remove-{npages}")
    with Engine(params, "h0", seed=seed) as c:
        r = RefEngine(params, "h0", seed=seed)
        for e in (c, r):
            e.register_region(7, npages=npages, device_indices=[2, 0, 1], stripe_pages=1)
            e.register_region(8, npages=32, device_indices=[1, 2], stripe_pages=2)
        n = min(npages, 60)
        order = list(range(n))
        rnd.shuffle(order)                   # frames in an order unlike the page order
        for p in order:
            write = p < 3 or rnd.random() < 0.5     # pages 0-2: a dirty page on each device
            off = p * 4096
            assert c.access(7, off, 4096, write) == r.access(7, off, 4096, write)
            if rnd.random() < 0.3:
                q = rnd.randrange(32)
                assert c.access(8, q * 4096, 100, True) == r.access(8, q * 4096, 100, True)
        c.check_consistency()
        dirty = [p for p in range(n) if c.page_state(7, p)["dirty"]]
        assert len({[2, 0, 1][p % 3] for p in dirty}) == 3, "dirty pages on every device"
        before = {d: v["writebacks"] for d, v in c.stats()["devices"].items()}
        assert c.unregister_region(7) is None
        charge = r.unregister_region(7)
        assert charge > 0
        _compare(c, r, f"seed {seed} remove npages={npages}")
        after = c.stats()["devices"]
        assert sum(after[d]["writebacks"] - before[d] for d in after) == len(dirty)
        c.check_consistency()
        assert c.stats()["cache"]["regions"] == 1
        for p in range(32):
            assert c.page_state(8, p) == r.page_state(8, p)


def _resident_trace(rnd: random.Random, sizes: dict[int, int], page: int, n: int):
    """Accesses to regions that fit the cache, so they are often wholly resident:
    whole-region reads (the summary path of the C engine), ranges with ragged
    ends, single bytes, some writes, and now and then a region of its own
    re-registered (unregister with deferred reference bits pending)."""
    for _ in range(n):
        rid = rnd.choice(list(sizes))
        size = sizes[rid] * page
        roll = rnd.random()
        if roll < 0.4:
            off, nbytes = 0, size
        elif roll < 0.8:
            off = rnd.randrange(size)
            nbytes = rnd.randrange(1, size - off + 1)
        else:
            off = rnd.randrange(size)
            nbytes = 1
        yield rid, off, nbytes, rnd.random() < 0.15


@pytest.mark.parametrize("eviction", ["clock", "lru", "fifo"])
@pytest.mark.parametrize("policy", ["cache", "promote"])
def test_resident_region_reads_match_reference(eviction, policy, seed):
    """Reads of resident ranges are counted from the stripe layout in C (no frame
    visited, CLOCK reference bits deferred until an eviction scan), whether the
    whole region is resident or only the range (region 5 exceeds the cache):
    charges, counters, which pages get evicted and the final page states must
    still be those of the page-by-page reference, on devices listed more than
    once and stripes that do not divide the region."""
    params = _params(cache_pages=24, jitter={"kind": "lognormal", "sigma": 0.3})
    rnd = random.Random(f"{seed}-resident-{eviction}-{policy}")
    sizes = {1: 10, 2: 7, 3: 13, 4: 1, 5: 70}        # region 5 never fits the cache
    layout = {1: ([2, 0, 1], 3), 2: ([1, 1, 0], 2), 3: ([0, 2], 5), 4: ([1], 1), 5: ([0, 1], 4)}
    c = Engine(params, "h0", seed=seed, eviction=eviction)
    w = Engine(params, "h0", seed=seed, eviction=eviction, page_pass=True)   # no summary
    r = RefEngine(params, "h0", seed=seed, eviction=eviction)

    def register(rid: int) -> None:
        devs, stripe = layout[rid]
        for e in (c, w, r):
            e.register_region(rid, npages=sizes[rid], device_indices=devs, stripe_pages=stripe,
                              policy=policy, promote_after=2)

    for rid in sizes:
        register(rid)
    try:
        for i, (rid, off, nbytes, write) in enumerate(_resident_trace(rnd, sizes, 4096, 1500)):
            if rnd.random() < 0.02:
                assert c.unregister_region(rid) is None
                w.unregister_region(rid)
                r.unregister_region(rid)
                register(rid)
            a, b = c.access(rid, off, nbytes, write), r.access(rid, off, nbytes, write)
            assert a == b, f"seed {seed}: access {i} ({rid}, {off}, {nbytes}, {write}): {a} vs {b}"
            assert w.access(rid, off, nbytes, write) == a, f"seed {seed}: access {i}, page pass"
            if i % 100 == 0:
                c.check_consistency()
                for q, n in sizes.items():
                    for p in range(n):
                        assert c.page_state(q, p) == r.page_state(q, p), f"seed {seed}: {i} {q}/{p}"
        _compare(c, r, f"seed {seed} resident {eviction}/{policy}")
        _compare(w, r, f"seed {seed} resident {eviction}/{policy}, page pass")
        s = c.stats()
        assert s["hits"] > 0 and s["misses"] > 0 and s["evictions"] > 0
        c.check_consistency()
    finally:
        c.close()
        w.close()


@pytest.mark.parametrize("share", ["shared", "coherent"])
def test_resident_shared_reads_see_other_writers(share, seed, tmp_path):
    """A wholly resident shared region is read by summary only while every cached
    version equals the published one; another host's write must still show up
    as an invalidation on the next read, exactly as in the reference."""
    params = _params(hosts=2, cache_pages=24)
    seg = str(tmp_path / "engine.seg")
    create_shared_state(seg, params)
    vers = str(tmp_path / "r3.versions")
    rseg, rvers = RefSegment(params), RefVersions(9)
    rnd = random.Random(f"{seed}-resident-{share}")
    cs = [Engine(params, f"h{i}", seed=seed, shared_path=seg) for i in range(2)]
    rs = [RefEngine(params, f"h{i}", seed=seed, segment=rseg) for i in range(2)]
    try:
        for c, r in zip(cs, rs):
            c.register_region(3, npages=9, device_indices=[0, 1], stripe_pages=2,
                              share=share, versions_path=vers)
            r.register_region(3, npages=9, device_indices=[0, 1], stripe_pages=2,
                              share=share, versions=rvers)
        for i, (_, off, nbytes, write) in enumerate(_resident_trace(rnd, {3: 9}, 4096, 600)):
            h = 0 if rnd.random() < 0.8 else 1
            a = cs[h].access(3, off, nbytes, write)
            b = rs[h].access(3, off, nbytes, write)
            assert a == b, f"seed {seed}: access {i} by h{h}: {a} vs {b}"
            if i % 100 == 0:
                for c in cs:
                    c.check_consistency()
        for h in range(2):
            _compare(cs[h], rs[h], f"seed {seed} h{h}")
            cs[h].check_consistency()
            for p in range(9):
                assert cs[h].page_state(3, p) == rs[h].page_state(3, p)
        assert sum(c.stats()["invalidations"] for c in cs) > 0
    finally:
        for c in cs:
            c.close()


@pytest.mark.parametrize("policy", ["cache", "direct"])
def test_streams_small_windows_and_device_windows_match_reference(policy, seed):
    """Sequential runs (streams hide the first round), a small host window (latency-bound
    rounds), a device with its own window (RDMA verbs), reads and writes (the mix)."""
    params = _params(engine={"mlp_lines": 5, "threads": 2})
    params["devices"][1]["window_lines"] = 128
    rnd = random.Random(f"{seed}-streams-{policy}")
    c = Engine(params, "h0", seed=seed)
    r = RefEngine(params, "h0", seed=seed)
    npages = 96
    for e in (c, r):
        e.register_region(5, npages=npages, device_indices=[2, 0, 1], stripe_pages=2,
                          policy=policy)
    off = 0
    for i in range(500):
        if rnd.random() < 0.15:
            off = rnd.randrange(npages * 4096)
        nbytes = min(rnd.choice([64, 4096, 3 * 4096 + 100, 20 * 4096]), npages * 4096 - off)
        if nbytes <= 0:
            off, nbytes = 0, 4096
        write = rnd.random() < 0.35
        a, b = c.access(5, off, nbytes, write), r.access(5, off, nbytes, write)
        assert a == b, f"seed {seed}: access {i} ({off}, {nbytes}, {write}) charged {a} vs {b}"
        off += nbytes
    _compare(c, r, f"seed {seed} streams/{policy}")
    c.close()
