"""fabric.engine.stats: sparse histograms, percentiles equal to the C core's, None for
idle hosts, and diff() over intervals, on engines sharing a segment (no daemons)."""
from __future__ import annotations

import numpy as np
import pytest

from fabric.engine import Engine, Histogram, create_shared_state, engine_params_for_test
from fabric.engine import stats as fstats
from fabric.errors import InvalidArgument

PAGE = 4096


def test_percentiles_are_the_c_histograms(seed):
    rng = np.random.default_rng(seed)
    for values in (rng.lognormal(7, 1.5, 3000), rng.integers(0, 200, 50), [5], [1e12]):
        h = Histogram()
        h.record_many(np.asarray(values).astype(np.uint64))
        s = h.summary()
        sparse = fstats._sparse(h)
        assert sparse["bucket_ns"] == sorted(set(sparse["bucket_ns"]))
        assert sum(sparse["count"]) == s["count"] and all(c > 0 for c in sparse["count"])
        figs = fstats._latency(sparse, s["sum_ns"], s["min_ns"], s["max_ns"])
        for name, pct in fstats.PERCENTILES:
            assert figs[f"latency_ns_{name}"] == h.percentile(pct), (name, seed)
        assert figs["latency_ns_max"] == h.percentile(100.0)


def test_idle_hosts_report_none_and_histograms_merge(tmp_path):
    p = engine_params_for_test(hosts=3, devices=1, cache_pages=4)
    seg = str(tmp_path / "seg")
    create_shared_state(seg, p)
    with Engine(p, "h0", shared_path=seg) as a, Engine(p, "h1", shared_path=seg) as b:
        a.register_region(1, npages=8, device_indices=[0], stripe_pages=1, policy="direct")
        b.register_region(1, npages=8, device_indices=[0], stripe_pages=1)
        for n in (1, 2, 8):
            a.access(1, 0, n * PAGE, False)
        b.access(1, 0, 8 * PAGE, False)
        b.access(1, 0, 8 * PAGE, False)
        live = fstats.read_shared_stats(seg, p)
    idle = live["hosts"]["h2"]
    assert idle["calls"] == 0 and idle["latency_count"] == 0
    for k in ("latency_ns_mean", "latency_ns_p50", "latency_ns_p999", "latency_ns_min",
              "latency_ns_max"):
        assert idle[k] is None
    merged: dict[int, int] = {}
    for h in live["hosts"].values():
        for v, c in zip(h["latency_hist"]["bucket_ns"], h["latency_hist"]["count"]):
            merged[v] = merged.get(v, 0) + c
    total = live["total"]["latency_hist"]
    assert dict(zip(total["bucket_ns"], total["count"])) == merged
    assert sum(merged.values()) == 5 == live["total"]["latency_count"]
    assert live["total"]["latency_ns_sum"] == sum(h["latency_ns_sum"] for h in live["hosts"].values())


def test_diff_of_engine_snapshots(tmp_path):
    p = engine_params_for_test(hosts=1, devices=1, cache_pages=64)
    with Engine(p, "h0") as e:
        e.register_region(1, npages=32, device_indices=[0], stripe_pages=1)
        e.access(1, 0, 32 * PAGE, False)        # misses
        first = e.stats()
        charges = [e.access(1, 0, 4 * PAGE, False) for _ in range(10)]   # hits
        second = e.stats()
    d = fstats.diff(first, second)
    assert d["calls"] == 10 and d["hits"] == 40 and d["misses"] == 0 and d["hit_rate"] == 1.0
    assert d["tiers"]["cached"]["pages"] == 40 and d["tiers"]["cached"]["share"] == 1.0
    assert d["latency_ns_sum"] == sum(charges) == d["virtual_time_ns"]
    assert d["latency_ns_p50"] == pytest.approx(charges[0], rel=0.01)
    assert d["devices"]["d0"]["hits"] == 40 and d["cache"] == second["cache"]
    none = fstats.diff(second, second)
    assert none["calls"] == 0 and none["latency_ns_p99"] is None and none["hit_rate"] == 0.0
    with pytest.raises(InvalidArgument, match="earlier"):
        fstats.diff(second, first)
    with pytest.raises(InvalidArgument, match="different hosts"):
        fstats.diff(first, dict(second, host="h9"))
    for bad in ((first, None), ([], second), ({"hosts": {}}, second)):
        with pytest.raises(InvalidArgument):
            fstats.diff(*bad)
