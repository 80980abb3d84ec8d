"""The public Engine: the cost formula on small cases, region policies, tiers,
coherence, modes, reproducibility, errors, stats and calibration."""
from __future__ import annotations

import random
import time

import numpy as np
import pytest

from fabric import errors
from fabric.engine import (CachePinned, Engine, SharedStateMismatch, calibrate,
                           create_shared_state, engine_params_for_test, read_shared_stats)

PAGE = 4096


def small(**kw):
    base = dict(devices=1, cache_pages=4)
    base.update(kw)
    return engine_params_for_test(**base)


def test_cost_of_a_miss_a_hit_and_a_direct_write():
    with Engine(small(), "h0") as e:
        e.register_region(1, npages=16, device_indices=[0], stripe_pages=1)
        e.register_region(2, npages=16, device_indices=[0], stripe_pages=1, policy="direct")
        # Miss: one latency round (226 ns idle) + the page at the path's 26.8 GB/s.
        assert e.access(1, 0, PAGE, False) == round(226 + PAGE / 26.8)
        # Hit: local DRAM, 90 ns + the bytes at 116 GB/s.
        assert e.access(1, 100, 200, False) == round(90 + 200 / 116)
        # Direct write of 100 bytes: write latency + 100 bytes over the fabric.
        assert e.access(2, 0, 100, True) == round(226 + 100 / 26.8)
        # Nine pages = 576 lines, two rounds of 12 lines x 24 threads: the first
        # round's latency, then the transfer, which the second round overlaps.
        assert e.access(2, 0, 9 * PAGE, False) == round(226 + 9 * PAGE / 26.8)
        # The next call continues the stream: its first round is hidden too.
        assert e.access(2, 9 * PAGE, PAGE, False) == round(PAGE / 26.8)
        # Latency-bound when the window is small against the latency: one thread,
        # 12 lines per round -> ceil(64 / 12) = 6 rounds for a page, 5 after the first.
        assert e.virtual_time_ns == e.stats()["injected_ns"]
    with Engine(small(engine={"threads": 1}), "h0") as e:
        e.register_region(2, npages=16, device_indices=[0], stripe_pages=1, policy="direct")
        assert e.access(2, 0, PAGE, False) == round(226 + 5 * 226)


def test_interleaving_overlaps_devices():
    """A range striped over two devices costs about half of the same range on one
    (the host uplink is made fast enough not to be the bottleneck)."""
    p = engine_params_for_test(devices=2, cache_pages=0, link_bandwidth_gbps=200.0,
                               engine={"mlp_lines": 64})
    with Engine(p, "h0") as e:
        e.register_region(1, npages=64, device_indices=[0], stripe_pages=1)
        e.register_region(2, npages=64, device_indices=[0, 1], stripe_pages=1)
        one = e.access(1, 0, 64 * PAGE, False)
        two = e.access(2, 0, 64 * PAGE, False)
        assert two < 0.6 * one


def test_policies():
    with Engine(small(cache_pages=9), "h0") as e:
        e.register_region(1, npages=8, device_indices=[0], stripe_pages=1, policy="direct")
        e.register_region(2, npages=8, device_indices=[0], stripe_pages=1, policy="promote",
                          promote_after=3)
        e.register_region(3, npages=8, device_indices=[0], stripe_pages=1, policy="cache")
        for _ in range(3):
            e.access(1, 0, 8 * PAGE, False)
        s = e.stats()
        assert (s["hits"], s["misses"]) == (0, 24)
        costs = [e.access(2, 0, 10, False) for _ in range(4)]
        assert not e.page_state(2, 0)["resident"] or costs[2] > costs[3]
        d = e.stats()["devices"]["d0"]
        assert d["promotions"] == 1 and d["hits"] == 1            # 2 direct, 1 promoted, 1 hit
        assert e.page_state(2, 0)["resident"]
        assert costs[0] < costs[2]                                # promotion fetches a page
        e.access(3, 0, 8 * PAGE, True)                            # dirty 8 pages (cache full)
        assert all(e.page_state(3, p)["dirty"] for p in range(8))
        e.access(3, 0, PAGE, True)
        v = e.page_state(3, 0)["version"]
        assert v == 2                                             # two writes, private version
        before = e.stats()["writebacks"]
        e.access(1, 0, PAGE, False)                               # direct: cache untouched
        assert e.stats()["writebacks"] == before
        e.unregister_region(3)
        s = e.stats()
        assert s["writebacks"] - before == 8                      # all 8 dirty and resident
        assert s["cache"]["regions"] == 2


def test_eviction_writes_back_dirty_pages():
    with Engine(small(cache_pages=2), "h0", eviction="fifo") as e:
        e.register_region(1, npages=8, device_indices=[0], stripe_pages=1)
        e.access(1, 0, 2 * PAGE, True)
        clean = e.access(1, 4 * PAGE, PAGE, False)                # evicts dirty page 0
        s = e.stats()
        assert (s["evictions"], s["writebacks"]) == (1, 1)
        assert clean > round(226 + PAGE / 26.8)                   # paid the write-back round too


def test_tiers(tmp_path):
    p = engine_params_for_test(devices=3, cache_pages=8)
    p["paths"][0][0]["tier"] = "local"
    p["paths"][0][2]["tier"] = "remote"
    with Engine(p, "h0") as e:
        for d in range(3):
            e.register_region(d, npages=4, device_indices=[d], stripe_pages=1)
            e.access(d, 0, PAGE, False)       # a miss
            e.access(d, 0, PAGE, False)       # a hit
        t = e.stats()["tiers"]
        assert t["local"]["pages"] == 2       # device 0: its miss and its hit are both local
        assert t["far"]["pages"] == 1 and t["cached"]["pages"] == 2 and t["remote"]["pages"] == 1
        assert sum(x["share"] for x in t.values()) == pytest.approx(1.0)


def test_same_seed_same_trace_bit_identical(seed):
    p = engine_params_for_test(devices=2, cache_pages=16,
                               jitter={"kind": "lognormal", "sigma": 0.4})
    rnd = random.Random(seed)
    trace = [(rnd.randrange(64 * PAGE - 20 * PAGE), rnd.randrange(1, 20 * PAGE),
              rnd.random() < 0.3) for _ in range(2000)]
    runs = []
    for s in (seed, seed, seed + 1):
        with Engine(p, "h0", seed=s) as e:
            e.register_region(1, npages=64, device_indices=[0, 1], stripe_pages=4)
            charges = [e.access(1, off, n, w) for off, n, w in trace]
            runs.append((charges, e.histogram().buckets(), e.stats()))
    (c1, b1, s1), (c2, b2, s2), (c3, _, _) = runs
    assert c1 == c2, f"seed {seed}: charges differ between identical runs"
    assert np.array_equal(b1, b2)
    assert s1 == s2
    assert c1 != c3, "another seed should draw other jitter"


def test_off_mode_charges_like_virtual_and_spin_mode_waits():
    p = small(cache_pages=8)
    trace = [(i * 3 % 16 * PAGE, 2 * PAGE, i % 4 == 0) for i in range(200)]
    out = {}
    for mode in ("virtual", "off", "spin"):
        with Engine(p, "h0", mode=mode) as e:
            e.register_region(1, npages=18, device_indices=[0], stripe_pages=1)
            t0 = time.monotonic_ns()
            out[mode] = [e.access(1, off, n, w) for off, n, w in trace]
            elapsed = time.monotonic_ns() - t0
            assert e.stats()["calls"] == len(trace)
        if mode == "spin":
            # It really waited (a lower bound: never a claim about speed).
            assert elapsed >= 0.8 * sum(out[mode]) - 2000
    assert out["off"] == out["virtual"]


def test_coherence_shared_and_coherent(tmp_path):
    p = engine_params_for_test(hosts=2, devices=1, cache_pages=8)
    seg = str(tmp_path / "seg")
    create_shared_state(seg, p)
    for share in ("shared", "coherent"):
        vers = str(tmp_path / f"{share}.versions")
        with Engine(p, "h0", shared_path=seg) as a, Engine(p, "h1", shared_path=seg) as b:
            for e in (a, b):
                e.register_region(4, npages=8, device_indices=[0], stripe_pages=1, share=share,
                                  versions_path=vers)
            a0 = a.stats()
            b0 = b.stats()
            a.access(4, 0, 2 * PAGE, False)              # a caches pages 0, 1
            wcost = b.access(4, 0, PAGE, True)           # b writes page 0
            a.access(4, 0, 2 * PAGE, False)              # page 0 stale in a, page 1 fresh
            da, db = a.stats(), b.stats()
            assert da["invalidations"] - a0["invalidations"] == 1
            assert da["hits"] - a0["hits"] == 1
            bi = db["back_invalidations"] - b0["back_invalidations"]
            assert bi == (1 if share == "coherent" else 0)
            assert b.page_state(4, 0)["version"] == a.page_state(4, 0)["version"] >= 1
            assert wcost > 0


def test_pins_and_cache_pinned():
    with Engine(small(cache_pages=2), "h0") as e:
        e.register_region(1, npages=8, device_indices=[0], stripe_pages=1)
        e.access(1, 0, 2 * PAGE, False)
        e.pin(1, 0, 2 * PAGE)
        with pytest.raises(CachePinned):
            e.access(1, 2 * PAGE, 1, False)
        assert e.access(1, 0, PAGE, False) > 0        # resident pages still serve
        with pytest.raises(CachePinned):
            e.unregister_region(1)
        with pytest.raises(errors.RegionNotFound):
            e.pin(1, 4 * PAGE, 1)                     # not resident
        e.unpin(1, 0, PAGE)
        e.access(1, 2 * PAGE, 1, False)
        assert not e.page_state(1, 0)["resident"] and e.page_state(1, 1)["pins"] == 1
        e.set_frame(1, 1, 0x1000)
        e.unpin(1, PAGE, PAGE)
        with pytest.raises(errors.InvalidArgument):
            e.unpin(1, PAGE, PAGE)


def test_errors(tmp_path):
    p = small()
    with pytest.raises(errors.InvalidArgument):
        Engine(p, "h9")
    with pytest.raises(errors.InvalidArgument):
        Engine(p, "h0", mode="warp")
    with pytest.raises(errors.InvalidArgument):
        Engine(p, "h0", eviction="random")
    bad = small()
    bad["devices"][0]["jitter"] = {"kind": "gauss"}
    with pytest.raises(errors.InvalidArgument, match="jitter"):
        Engine(bad, "h0")
    bad = small()
    bad["devices"][0]["curve"] = {"read_pct": [100], "points": [[[5, 300], [1, 400]]]}
    with pytest.raises(errors.InvalidArgument, match="increase"):
        Engine(bad, "h0")
    bad = small()
    bad["paths"][0][0]["links"] = [7]
    with pytest.raises(errors.InvalidArgument, match="link index"):
        Engine(bad, "h0")
    with pytest.raises(errors.InvalidArgument, match="engine"):
        Engine(small(engine={"warp": 1}), "h0")
    with pytest.raises(SharedStateMismatch):
        Engine(p, "h0", shared_path=str(tmp_path / "missing"))
    seg = str(tmp_path / "seg")
    create_shared_state(seg, engine_params_for_test(hosts=3))
    with pytest.raises(SharedStateMismatch):
        Engine(p, "h0", shared_path=seg)
    with Engine(p, "h0") as e:
        e.register_region(1, npages=4, device_indices=[0], stripe_pages=1)
        with pytest.raises(errors.RegionExists):
            e.register_region(1, npages=4, device_indices=[0], stripe_pages=1)
        for kw in ({"policy": "lazy"}, {"share": "public"}, {"device_indices": [3]},
                   {"device_indices": []}, {"stripe_pages": 0}, {"npages": 0},
                   {"share": "shared"}):
            args = dict(npages=4, device_indices=[0], stripe_pages=1)
            args.update(kw)
            with pytest.raises(errors.InvalidArgument):
                e.register_region(2, **args)
        with pytest.raises(errors.InvalidArgument):
            e.register_region(1 << 32, npages=4, device_indices=[0], stripe_pages=1)
        with pytest.raises(errors.RegionNotFound):
            e.access(2, 0, 1, False)
        with pytest.raises(errors.InvalidArgument):
            e.access(1, 4 * PAGE, 1, False)
        with pytest.raises(errors.InvalidArgument):
            e.access(1, -1, 1, False)
        with pytest.raises(errors.InvalidArgument):
            e.access(1, 0, 1.5, False)
        assert e.access(1, 0, 0, False) == 0
        with pytest.raises(errors.RegionNotFound):
            e.unregister_region(2)
    with pytest.raises(errors.InvalidArgument, match="closed"):
        e.access(1, 0, 1, False)
    with pytest.raises(errors.InvalidArgument, match="closed"):
        e.stats()
    e.close()                                             # twice is fine


def test_read_shared_stats_sees_every_host(tmp_path):
    p = engine_params_for_test(hosts=2, devices=2, cache_pages=4)
    # "Active" is judged on CLOCK_MONOTONIC: a window no scheduling delay can outlast.
    p["engine"] = {**(p.get("engine") or {}), "active_window_wall_ns": 600_000_000_000}
    seg = str(tmp_path / "seg")
    create_shared_state(seg, p)
    with Engine(p, "h0", shared_path=seg) as a, Engine(p, "h1", shared_path=seg) as b:
        a.register_region(1, npages=8, device_indices=[0, 1], stripe_pages=1)
        b.register_region(1, npages=8, device_indices=[1], stripe_pages=1, policy="direct")
        a.access(1, 0, 8 * PAGE, False)
        b.access(1, 0, 3 * PAGE, True)
        live = read_shared_stats(seg, p)
        assert live["hosts"]["h0"]["accesses"] == 8 and live["hosts"]["h1"]["accesses"] == 3
        assert live["hosts"]["h0"]["latency_ns_p50"] == a.stats()["latency_ns_p50"]
        assert live["hosts"]["h1"]["devices"]["d1"]["misses"] == 3
        assert live["total"]["latency_count"] == 2
        assert live["devices"]["d1"]["bytes_total"] == 4 * PAGE + 3 * PAGE
        assert live["links"]["sw-d1"]["active_hosts"] == 2
        assert set(live["links"]) == {"h0-sw", "h1-sw", "sw-d0", "sw-d1"}
    create_shared_state(seg, p)                           # reset: all zero again
    assert read_shared_stats(seg, p)["hosts"]["h0"]["calls"] == 0


def test_calibrate_and_spin_with_calibration():
    cal = calibrate()
    for k in ("local_dram_ns", "local_bandwidth_gbps", "clock_read_ns", "call_overhead_ns"):
        assert cal[k] > 0, k
    with Engine(small(), "h0", mode="spin", calibration=cal) as e:
        e.register_region(1, npages=4, device_indices=[0], stripe_pages=1, policy="direct")
        assert e.access(1, 0, PAGE, False) > 0
        e.advance(10_000)
        assert e.virtual_time_ns > 10_000


def test_region_table_reuse_and_limit():
    """Register and drop many regions (the table deletes without tombstones); a dropped
    id can come back with fresh state; the table's size is a hard limit."""
    with Engine(small(cache_pages=4, engine={"max_regions": 8, "mlp_lines": 8}), "h0") as e:
        for round_ in range(50):
            ids = [round_ * 7 + i for i in range(8)]
            for rid in ids:
                e.register_region(rid, npages=4, device_indices=[0], stripe_pages=1,
                                  policy="promote", promote_after=2)
                e.access(rid, 0, 1, False)
            with pytest.raises(errors.InvalidArgument, match="max"):
                e.register_region(10_000, npages=4, device_indices=[0], stripe_pages=1)
            for rid in ids:
                e.unregister_region(rid)
        e.register_region(3, npages=4, device_indices=[0], stripe_pages=1, policy="promote",
                          promote_after=2)
        e.access(3, 0, 1, False)                 # one touch: its old count was forgotten
        assert not e.page_state(3, 0)["resident"]
        e.access(3, 0, 1, False)
        assert e.page_state(3, 0)["resident"]
        assert e.stats()["cache"]["regions"] == 1


def test_consistency_walker_after_random_operations(seed):
    """fab_engine_check (the page cache's index, frames, lists and pins, and each
    region's page counts) holds after a seeded random mix of accesses over three
    policies, pins, unpins, CachePinned refusals, unregistering and re-registering."""
    rnd = random.Random(seed)
    for eviction in ("clock", "lru", "fifo"):
        with Engine(small(devices=2, cache_pages=11), "h0", seed=seed, eviction=eviction) as e:
            live: set[int] = set()
            for step in range(1500):
                rid = rnd.randrange(3)
                npages = 6 + 20 * rid
                if rid not in live:
                    e.register_region(rid, npages=npages, device_indices=[0, 1],
                                      stripe_pages=1 + rid,
                                      policy=("cache", "promote", "direct")[rid])
                    live.add(rid)
                    continue
                roll = rnd.random()
                try:
                    if roll < 0.05:
                        e.unregister_region(rid)
                        live.discard(rid)
                    elif roll < 0.15:
                        p = rnd.randrange(npages)
                        (e.pin if roll < 0.1 else e.unpin)(rid, p * PAGE, 1)
                    else:
                        off = rnd.randrange(npages * PAGE)
                        n = min(rnd.randrange(1, 5 * PAGE), npages * PAGE - off)
                        e.access(rid, off, n, rnd.random() < 0.4)
                except (CachePinned, errors.RegionNotFound, errors.InvalidArgument):
                    pass                  # all frames pinned / page not resident / over-unpin
                e.check_consistency()
            assert e.stats()["hits"] > 0 and e.stats()["evictions"] > 0, f"seed {seed}"


def test_one_error_map_for_every_code():
    """Every FAB_E* code has its own text in fab_strerror and maps to one exception."""
    from fabric import _binding
    lib = _binding.lib
    codes = {n: getattr(lib, n) for n in dir(lib) if n.startswith("FAB_E") and getattr(lib, n) < 0}
    assert set(codes) == {"FAB_EINVAL", "FAB_ENOMEM", "FAB_ERANGE", "FAB_EBUSY", "FAB_ENOENT",
                          "FAB_ECORRUPT", "FAB_ESEGMENT", "FAB_EEXIST", "FAB_EUNAVAIL",
                          "FAB_EFAILED", "FAB_ELINKDOWN", "FAB_EPOISON", "FAB_ELOCKSTEP"}
    texts = {_binding.strerror(v) for v in codes.values()}
    assert len(texts) == len(codes) and "unknown error" not in texts
    want = {"FAB_EBUSY": errors.CachePinned, "FAB_ESEGMENT": errors.SharedStateMismatch,
            "FAB_EEXIST": errors.RegionExists, "FAB_ENOENT": errors.RegionNotFound,
            "FAB_EINVAL": errors.InvalidArgument, "FAB_ERANGE": errors.InvalidArgument,
            "FAB_ENOMEM": errors.NativeError, "FAB_ECORRUPT": errors.NativeError,
            "FAB_EUNAVAIL": errors.NodeUnavailable, "FAB_EFAILED": errors.DeviceFailed,
            "FAB_ELINKDOWN": errors.LinkDown, "FAB_EPOISON": errors.PoisonError,
            "FAB_ELOCKSTEP": errors.LockstepTimeout}
    for name, cls in want.items():
        with pytest.raises(cls, match=f"doing x: .*code {codes[name]}"):
            _binding.check(codes[name], "doing x")
    with pytest.raises(errors.NativeError, match="No such file"):
        _binding.check(-2, "opening")                 # -ENOENT from a system call
    assert _binding.check(5, "fine") == 5


@pytest.mark.parametrize("knobs,match", [
    ({"mlp_lines": 0}, r"engine\.mlp_lines must be in \[1, "),
    ({"mlp_lines": 2.5}, r"engine\.mlp_lines must be an int"),
    ({"mlp_lines": True}, r"engine\.mlp_lines must be an int"),
    ({"queue_max_factor": 0.5}, r"engine\.queue_max_factor must be in \[1\.0, "),
    ({"queue_max_factor": float("nan")}, r"queue_max_factor must be a finite number"),
    ({"rate_window_ns": "20us"}, r"engine\.rate_window_ns must be an int"),
    ({"max_regions": 1 << 25}, r"engine\.max_regions must be in"),
    ({"spin_quantum_ns": -1}, r"engine\.spin_quantum_ns must be in \[0, "),
    ({"warp": 1}, r"unknown engine keys \['warp'\] \(known: active_window_ns, "),
])
def test_engine_knobs_checked_against_the_constants_table(knobs, match):
    with pytest.raises(errors.InvalidArgument, match=match):
        Engine(small(engine=knobs), "h0")


def test_knob_defaults_and_limits_come_from_constants():
    from fabric import constants
    from fabric._binding import engine as b
    from fabric.engine import _reference
    assert b.ENGINE_DEFAULTS == constants.ENGINE_DEFAULTS == _reference.ENGINE_DEFAULTS
    assert b.engine_knobs(small()) == constants.ENGINE_DEFAULTS
    assert b.engine_knobs(small(engine={"queue_max_factor": 2}))["queue_max_factor"] == 2.0
    assert tuple(b.POLICIES) == constants.POLICIES and tuple(b.MODES) == constants.INJECT_MODES
    assert tuple(b.EVICTIONS) == constants.EVICTIONS and tuple(b.SHARES) == constants.SHARE_MODES
    assert b.COUNTERS == constants.ENGINE_COUNTERS == _reference.COUNTERS
    assert b.TIER_NAMES == constants.TIERS == _reference.TIERS


def test_max_regions_message():
    with Engine(small(engine={"max_regions": 1}), "h0") as e:
        e.register_region(1, npages=4, device_indices=[0], stripe_pages=1)
        with pytest.raises(errors.InvalidArgument,
                           match=r"this host's engine already holds its maximum of regions "
                                 r"\(max_regions = 1"):
            e.register_region(2, npages=4, device_indices=[0], stripe_pages=1)


def test_only_the_binding_touches_ffi_and_lib():
    """fabric._native (cffi's ffi and lib) is imported by fabric/_binding/ alone."""
    import pathlib
    import re
    root = pathlib.Path(__file__).resolve().parents[2]
    offenders = []
    for path in [*(root / "fabric").rglob("*.py"), *(root / "daemons").rglob("*.py")]:
        if "_binding" in path.parts:
            continue
        text = path.read_text()
        if re.search(r"(?:from|import)\s+[.\w]*_native\b|\bimport ffi\b|\bffi\.|\blib\.(?:fab|FAB)_",
                     text):
            offenders.append(str(path.relative_to(root)))
    assert not offenders, f"ffi/lib used outside fabric/_binding: {offenders}"
