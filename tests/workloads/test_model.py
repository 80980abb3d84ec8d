"""The numpy MLP, the data and the reduction order, in one process (no fabric)."""
from __future__ import annotations

import numpy as np
import pytest

from fabric.errors import InvalidArgument
from fabric.workloads.allreduce import chunk_bounds, sum_order
from fabric.workloads.config import TrainConfig
from fabric.workloads.data import Dataset, shard_bounds
from fabric.workloads.model import (SGD, Layout, backward, forward, init_params,
                                    loss_and_grad_out, parse_count, widths_for_params)


def _loss(layout, p, X, y, B):
    acts = forward(layout, p, X)
    return loss_and_grad_out(acts[-1], y, B)[0]


def test_backward_matches_finite_differences(seed):
    layout = Layout((5, 7, 6, 3))
    p = np.zeros(layout.size, np.float32)
    init_params(layout, p, seed)
    p += np.random.default_rng(seed).standard_normal(layout.size).astype(np.float32) * 0.1
    ds = Dataset(seed, 5, 3)
    X, y = ds.batch(0, 8)
    acts = forward(layout, p, X)
    _, d = loss_and_grad_out(acts[-1], y, 8)
    g = np.zeros_like(p)
    backward(layout, p, acts, d, g)
    p64 = p.astype(np.float64)
    rng = np.random.default_rng(seed + 1)
    for i in rng.choice(layout.size, 25, replace=False):
        eps = 1e-3
        up, dn = p64.copy(), p64.copy()
        up[i] += eps
        dn[i] -= eps
        num = (_loss(layout, up.astype(np.float32), X, y, 8) -
               _loss(layout, dn.astype(np.float32), X, y, 8)) / (2 * eps)
        assert g[i] == pytest.approx(num, rel=0.05, abs=2e-4), i


def test_loss_falls_and_is_the_same_for_any_sharding(seed):
    layout = Layout(widths_for_params(100_000))
    ds = Dataset(seed, layout.widths[0], layout.widths[-1])
    B, losses = 64, []
    p = np.zeros(layout.size, np.float32)
    g, m = np.zeros_like(p), np.zeros_like(p)
    init_params(layout, p, seed)
    opt = SGD(0.05)
    for step in range(120):
        X, y = ds.batch(step, B)
        acts = forward(layout, p, X)
        loss, d = loss_and_grad_out(acts[-1], y, B)
        backward(layout, p, acts, d, g)
        opt.update(p, g, m)
        losses.append(loss)
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10])
    # the global batch does not depend on how many workers share it
    X, y = ds.batch(3, B)
    parts = [ds.batch(3, B, shard_bounds(B, 3, r)) for r in range(3)]
    assert np.array_equal(np.concatenate([x for x, _ in parts]), X)
    assert np.allclose(np.concatenate([t for _, t in parts]), y)


def test_chunks_cover_the_buffer_and_orders_rotate():
    for size, n in ((10, 3), (7, 4), (100_003, 5)):
        bounds = [chunk_bounds(size, n, c) for c in range(n)]
        assert bounds[0][0] == 0 and bounds[-1][1] == size
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    assert sum_order(0, 3) == [0, 1, 2] and sum_order(2, 3) == [2, 0, 1]


def test_sizes_and_bad_configs():
    assert Layout(widths_for_params(parse_count("50M"))).size >= 50_000_000
    assert 80_000 <= Layout(widths_for_params(parse_count("100k"))).size <= 120_000
    assert TrainConfig(layers="8,16,4").widths == (8, 16, 4)
    for bad in (dict(mode="sideways"), dict(hosts=0), dict(batch=2, hosts=3),
                dict(params="lots"), dict(layers="8"), dict(params="1M", layers="4,4"),
                dict(inject="maybe"), dict(lr=-1.0)):
        with pytest.raises(InvalidArgument):
            TrainConfig(**bad)
