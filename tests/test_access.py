"""Declared accesses through the full stack: Region.read/write/reading/writing,
the engine's charges, stats, and the CLI that reads them live."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fabric
from fabric.errors import AccessDenied, InvalidArgument

MiB = 1 << 20


def test_read_write_and_scoped_views(cluster):
    with cluster.connect("h0") as h0, cluster.connect("h1") as h1:
        r = h0.alloc("w", 4 * MiB, share="shared")
        t0 = h0.virtual_time_ns
        assert r.write(np.arange(1024, dtype=np.int32), offset=4096) == 4096
        assert h0.virtual_time_ns > t0  # a write to far memory costs time
        v = r.read(4096, 4096)
        assert v.dtype == np.uint8 and not v.flags.writeable
        assert np.array_equal(v.view(np.int32), np.arange(1024))
        with r.writing(np.float64, 8, offset=MiB) as a:
            a[:] = 2.5
        r1 = h1.open("w")
        with r1.reading(np.float64, 8, offset=MiB) as b:
            assert (b == 2.5).all() and not b.flags.writeable
        with pytest.raises(AccessDenied):
            r1.write(b"x")
        with pytest.raises(AccessDenied):
            with r1.writing("u1", 1):
                pass
        st = h0.stats()
        assert st["calls"] == 3 and st["host"] == "h0"
        assert st["bytes"] >= 4096 + 4096 + 64
        assert 0 <= st["hit_rate"] <= 1
        assert st["latency_ns_p50"] > 0 and st["latency_ns_max"] >= st["latency_ns_p99"]


def test_bad_ranges(cluster):
    with cluster.connect("h0") as s:
        r = s.alloc("r", 8192)
        for off, n in [(-1, 10), (0, 8193), (8192, 1), (0, -5), (1.5, 3)]:
            with pytest.raises(InvalidArgument):
                r.read(off, n)
        with pytest.raises(InvalidArgument):
            r.write(b"x" * 8193)
        with pytest.raises(InvalidArgument):
            r.write(object())
        assert r.read(8192, 0).size == 0
        assert r.read().size == 8192


def test_cached_reads_are_cheaper(cluster):
    with cluster.connect("h0", policy="cache") as s:
        r = s.alloc("c", MiB)
        cold = r.access(0, MiB)
        warm = r.access(0, MiB)
        assert warm < cold
        with cluster.connect("h1", policy="direct") as d:
            r2 = d.alloc("d", MiB)
            assert r2.access(0, MiB) == pytest.approx(r2.access(0, MiB), rel=0.5)
            assert d.stats()["hits"] == 0


def test_coherent_write_invalidates_other_hosts_copies(cluster):
    with cluster.connect("h0") as h0, cluster.connect("h1") as h1:
        r0 = h0.alloc("co", 64 * 1024, share="coherent")
        r1 = h1.open("co")
        r1.read()                      # h1 caches every page
        r1.read()
        assert h1.stats()["invalidations"] == 0
        r0.write(b"\1" * 4096)         # h0 writes one page
        r1.read()                      # h1's copy of that page is stale now
        assert h1.stats()["invalidations"] >= 1
        assert r1.read(0, 1)[0] == 1


def _trace(state_dir: str, host: str) -> dict:
    with fabric.connect(host, state_dir) as s:
        r = s.alloc("t", 4 * MiB, placement="interleave", granularity=64 * 1024)
        rng = np.random.default_rng(7)
        for _ in range(200):
            off = int(rng.integers(0, 4 * MiB - 65536)) // 64 * 64
            r.access(off, int(rng.integers(1, 65536)), write=bool(rng.integers(0, 4) == 0))
        st = s.stats()
        st.pop("cache")
        return st


def test_virtual_mode_is_reproducible_through_the_stack():
    runs = []
    for i in range(2):
        d = f"/dev/shm/cxl-fabric-repro-{os.getpid()}-{i}"
        with fabric.Cluster.start(hosts=1, devices=2, device_size="16MiB", state_dir=d,
                                  seed=42) as c:
            runs.append(_trace(c.state_dir, "h0"))
    assert runs[0] == runs[1]
    assert runs[0]["virtual_time_ns"] > 0 and runs[0]["calls"] == 200


def test_off_mode_counts_without_time(cluster):
    with cluster.connect("h0", inject="off") as s:
        r = s.alloc("o", MiB)
        r.read()
        st = s.stats()
        assert st["calls"] == 1 and st["accesses"] == MiB // 4096
        assert st["mode"] == "off"


def test_stats_cli_reads_live_figures(cluster):
    with cluster.connect("h1") as s:
        s.alloc("x", MiB).read()
        env = dict(os.environ, FABRIC_STATE_DIR=cluster.state_dir)
        p = subprocess.run([sys.executable, "-m", "fabric", "stats", "--json"], env=env,
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        st = json.loads(p.stdout)
        assert st["hosts"]["h1"]["calls"] == 1 and st["hosts"]["h0"]["calls"] == 0
        assert st["devices"]["d1"]["bytes_total"] >= MiB
        assert st["total"]["calls"] == 1 and st["total"]["tiers"]["far"]["share"] > 0
        human = subprocess.run([sys.executable, "-m", "fabric", "stats"], env=env,
                               capture_output=True, text=True, timeout=60).stdout
        assert "h1" in human and "p99" in human


def test_bad_engine_options(cluster):
    for kw in ({"inject": "sometimes"}, {"policy": "hoard"}, {"eviction": "random"},
               {"promote_after": 0}):
        with pytest.raises(InvalidArgument):
            cluster.connect("h0", **kw)
    with cluster.connect("h0") as s:
        with pytest.raises(InvalidArgument):
            s.alloc("p", 4096, policy="hoard")


def test_calibrate_stores_figures_for_the_cluster(cluster):
    env = dict(os.environ, FABRIC_STATE_DIR=cluster.state_dir)
    p = subprocess.run([sys.executable, "-m", "fabric", "calibrate", "--json"], env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    cal = json.loads(p.stdout)
    with open(os.path.join(cluster.state_dir, "calibration.json")) as f:
        assert json.load(f)["local_dram_ns"] == cal["local_dram_ns"] > 0
    with cluster.connect("h0", inject="spin") as s:  # spin mode picks the calibration up
        r = s.alloc("s", 64 * 1024)
        assert r.access(0, 64 * 1024) > 0


def test_engine_section_of_a_topology_file(state_dir, tmp_path):
    topo = tmp_path / "t.toml"
    topo.write_text('[[host]]\nname = "h0"\n[[device]]\nname = "d0"\ncapacity = "8MiB"\n'
                    '[engine]\nmax_regions = 2\nmlp_lines = 4\n')
    with fabric.Cluster.start(topology=str(topo), state_dir=state_dir) as c:
        with c.connect("h0") as s:
            a = s.alloc("a", 4096)
            b = s.alloc("b", 4096)
            with pytest.raises(fabric.errors.ResourceExhausted, match="max_regions"):
                s.alloc("c", 4096)   # the engine is full: the region must not stay allocated
            assert sorted(r["name"] for r in s.regions()) == ["a", "b"]
            a.close()                # gives its slot back
            s.alloc("c", 4096).write(b"x")
            assert b.read(0, 1)[0] == 0
    topo.write_text('[[host]]\nname = "h0"\n[[device]]\nname = "d0"\ncapacity = "8MiB"\n'
                    '[engine]\nwarp = 9\n')
    with pytest.raises(InvalidArgument, match=r"t\.toml: \[engine\].*warp"):
        fabric.Cluster.start(topology=str(topo), state_dir=state_dir)
