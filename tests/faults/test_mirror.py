"""Mirrored regions (alloc(..., mirror=2)) on real clusters: both copies written,
failover while the first copy's device is down, resync once it is back, and the
errors of a mirror that cannot be placed."""
from __future__ import annotations

import multiprocessing as mp
import os
import time

import numpy as np
import pytest

import fabric
from fabric.errors import DeviceFailed, InvalidArgument, NodeUnavailable, PoolFull
from fabric.statedir import StateDir

MiB = 1 << 20


def _copies_equal(r) -> bool:
    return bool((r._mirror.copy_bytes(0) == r._mirror.copy_bytes(1)).all())


def test_mirror_write_fail_read_restore_resync(cluster, fabric_faults, seed):
    f = fabric_faults(cluster.state_dir)
    rng = np.random.default_rng(seed)
    with cluster.connect("h0") as s:
        r = s.alloc("m", 2 * MiB, placement="d0", mirror=2)
        assert r.mirror["devices"] == ["d1"]           # d0 is on h0, its copy on h1's d1
        data = rng.integers(0, 255, 2 * MiB, dtype=np.uint8)
        r.write(data)
        assert _copies_equal(r) and (r._mirror.copy_bytes(1) == data).all()
        f.inject("device-fail", "d0")
        assert (r.read() == data).all()                 # served by the second copy
        assert s.stats()["mirror"]["failovers"] == 1
        patch = rng.integers(0, 255, 8192, dtype=np.uint8)
        r.write(patch, 4096)                            # lands in the second copy only
        data[4096:4096 + 8192] = patch
        assert r.mirror["first_stale"] and s.stats()["mirror"]["degraded_writes"] == 1
        with r.reading(np.uint8, 2 * MiB) as a:
            assert (a == data).all()
        f.heal()
        assert (r.read() == data).all()                 # resynchronised, then read
        assert not r.mirror["first_stale"] and s.stats()["mirror"]["resyncs"] == 1
        assert _copies_equal(r) and (r._mirror.copy_bytes(0) == data).all()


def test_mirror_survives_the_primary_node_dying(cluster, fabric_faults):
    f = fabric_faults(cluster.state_dir)
    with cluster.connect("h0") as s:
        r = s.alloc("m", MiB, placement="d1", share="shared", mirror=2)   # first copy on h1
        r.write(np.full(MiB, 3, np.uint8))
        f.inject("kill", "h1")
        t0 = time.monotonic()
        while s.stats()["mirror"]["failovers"] == 0 and time.monotonic() - t0 < 15:
            assert (r.read(0, 4096) == 3).all()        # never an error: failover
            time.sleep(0.02)
        assert s.stats()["mirror"]["failovers"] > 0
        assert s.open("m").read(0, 16).tolist() == [3] * 16   # open works: one copy is up
        r.write(np.full(4096, 9, np.uint8), 0)
        f.heal()                                        # restart h1
        assert (r.read(0, 4096) == 9).all()
        assert _copies_equal(r)


def test_both_copies_down_is_an_error(cluster, fabric_faults):
    f = fabric_faults(cluster.state_dir)
    with cluster.connect("h0") as s:
        r = s.alloc("m", MiB, placement="d0", mirror=2)
        f.inject("device-fail", "d0")
        f.inject("device-fail", "d1")
        with pytest.raises(DeviceFailed):
            r.read(0, 10)
        with pytest.raises(DeviceFailed):
            r.write(b"x", 0)
        f.heal()
        r.read(0, 10)


def test_mirror_argument_and_placement_errors(state_dir):
    c = fabric.Cluster.start(hosts=1, devices=1, device_size="16MiB", state_dir=state_dir)
    try:
        with c.connect("h0") as s:
            with pytest.raises(InvalidArgument, match="mirror must be 1 .* or 2"):
                s.alloc("x", 4096, mirror=3)
            with pytest.raises(PoolFull, match="mirror=2 needs 1 live device.* on nodes other "
                                               "than h0"):
                s.alloc("x", 4096, mirror=2)
            assert s.regions() == []                    # nothing half-made
            s.alloc("x", 4096)                          # and nothing leaked
    finally:
        c.stop()


def test_free_removes_both_copies_and_the_state_files(cluster):
    with cluster.connect("h0") as s:
        r = s.alloc("m", 4 * MiB, placement="d0", share="coherent", mirror=2)
        r.write(b"\xff" * 4096)
        sd = StateDir(cluster.state_dir)
        paths = [sd.mirror_state_path(r.id), sd.mirror_versions_path(r.id), sd.versions_path(r.id)]
        assert all(os.path.exists(p) for p in paths)
        s.free("m")
        assert not any(os.path.exists(p) for p in paths)
        again = s.alloc("m2", 4 * MiB, placement="d1")  # the freed copy on d1 is scrubbed
        assert not again.read(0, 4096).any()


def _writer(state_dir: str, stop_at: float, out) -> None:
    with fabric.connect("h1", state_dir) as s:
        r = s.open("m")
        v = 0
        while time.monotonic() < stop_at:
            v += 1
            r.write(np.full(512, v % 251 + 1, np.uint8), (v % 64) * 4096)
            out.value = v
        out.value = v


def test_writes_during_a_resync_are_not_lost(cluster, fabric_faults):
    """h1 writes continuously while h0's reads resynchronise a stale first copy:
    afterwards both copies hold every acknowledged write."""
    f = fabric_faults(cluster.state_dir)
    with cluster.connect("h0") as s:
        r = s.alloc("m", 32 * MiB, placement="d0", share="coherent", mirror=2)
        r.write(np.ones(32 * MiB, np.uint8))
        f.inject("device-fail", "d0")
        r.write(np.full(32 * MiB, 2, np.uint8))        # the first copy is now stale
        assert r.mirror["first_stale"]
        ctx = mp.get_context("spawn")
        last = ctx.Value("q", 0)
        p = ctx.Process(target=_writer, args=(cluster.state_dir, time.monotonic() + 4.0, last))
        p.start()
        time.sleep(1.0)
        f.heal()
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            r.read(0, 4096)                             # each may start a resync
        p.join(30)
        assert p.exitcode == 0
        while r.mirror["first_stale"]:
            r.read(0, 1)
        assert _copies_equal(r)
        v = last.value
        for k in range(max(1, v - 63), v + 1):          # the last write of each slot
            slot = (k % 64) * 4096
            assert (r.read(slot, 512) == k % 251 + 1).all(), k
