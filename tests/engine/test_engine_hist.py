"""Latency histograms: <= 1% relative error from 1 ns to 100 s, merge, percentiles."""
from __future__ import annotations

import math

import numpy as np
import pytest

from fabric._binding.engine import hist_bucket_of, hist_bucket_value
from fabric.engine import Histogram
from fabric.errors import InvalidArgument
from fabric.engine._reference import RefHistogram, bucket_of, bucket_value


def _exact_percentile(values: np.ndarray, pct: float) -> int:
    """The value of rank ceil(pct/100 * n), the definition the histogram uses."""
    s = np.sort(values)
    return int(s[max(1, math.ceil(pct * len(s) / 100.0)) - 1])


def test_relative_error_one_ns_to_hundred_s():
    values = np.unique(np.logspace(0, 11, 20_000).astype(np.uint64))
    worst = 0.0
    for v in values.tolist():
        rep = hist_bucket_value(hist_bucket_of(v))
        worst = max(worst, abs(rep - v) / v)
        assert bucket_of(v) == hist_bucket_of(v)          # the reference agrees
        assert bucket_value(bucket_of(v)) == rep
    assert worst <= 0.01, f"worst relative error {worst:.4%}"
    assert worst <= 1 / 256 + 1e-12                       # the design bound
    for v in range(128):                                  # exact below 128 ns
        assert hist_bucket_value(hist_bucket_of(v)) == v


def test_percentiles_of_a_distribution(seed):
    rng = np.random.default_rng(seed)
    values = np.concatenate([rng.lognormal(np.log(300), 0.4, 50_000),
                             rng.lognormal(np.log(20_000), 0.8, 500)]).astype(np.uint64) + 1
    h = Histogram()
    h.record_many(values)
    for pct in (50, 90, 99, 99.9):
        want = _exact_percentile(values, pct)
        got = h.percentile(pct)
        assert abs(got - want) / want <= 0.01, f"seed {seed}: p{pct} {got} vs exact {want}"
    s = h.summary()
    assert s["count"] == len(values)
    assert s["min_ns"] == int(values.min()) and s["max_ns"] == int(values.max())
    assert h.percentile(100) == int(values.max())
    assert s["sum_ns"] == int(values.sum())


def test_merge_is_adding_buckets(seed):
    rng = np.random.default_rng(seed)
    a_vals = rng.integers(1, 10**6, 3000, dtype=np.uint64)
    b_vals = rng.integers(10**5, 10**10, 2000, dtype=np.uint64)
    a, b, both = Histogram(), Histogram(), Histogram()
    a.record_many(a_vals)
    b.record_many(b_vals)
    both.record_many(np.concatenate([a_vals, b_vals]))
    a.merge(b)
    assert np.array_equal(a.buckets(), both.buckets())
    assert a.summary() == both.summary()
    for pct in (50, 90, 99, 99.9):
        assert a.percentile(pct) == both.percentile(pct)
    ref, ref_b = RefHistogram(), RefHistogram()
    for v in a_vals.tolist():
        ref.record(v)
    for v in b_vals.tolist():
        ref_b.record(v)
    ref.merge(ref_b)
    for pct in (50, 90, 99, 99.9):
        assert ref.percentile(pct) == a.percentile(pct)


def test_edges():
    h = Histogram()
    assert h.percentile(50) == 0 and h.summary()["count"] == 0
    h.record(0)
    assert h.percentile(50) == 0
    h.record(200 * 10**9)                                 # past 137 s: clamped, counted
    s = h.summary()
    assert s["overflow"] == 1 and s["max_ns"] == 200 * 10**9
    assert h.percentile(100) == 200 * 10**9
    with pytest.raises(InvalidArgument):
        h.percentile(100.5)
    with pytest.raises(InvalidArgument):
        h.record(-1)
    h.record(1000, count=9)
    assert abs(h.percentile(50) - 1000) <= 10 and h.summary()["count"] == 11
