"""The Session/Region contract: lifetimes, typed errors where input enters, engine
slots, scoped stats and the HELLO/BYE handshake, against a real 2-host cluster."""
import gc
import json
import os
import re
import signal
import subprocess
import sys
import textwrap

import numpy as np
import psutil
import pytest

import fabric
from fabric.descriptor import RegionDescriptor
from fabric.engine import stats as fstats
from fabric.errors import (AccessDenied, FabricError, InvalidArgument, RegionNotFound,
                           ResourceExhausted, SessionClosed)

KiB, MiB = 1 << 10, 1 << 20


# -- lifetimes ---------------------------------------------------------------------------

def test_region_keeps_its_session_alive(cluster):
    r = fabric.connect("h0", cluster.state_dir).alloc("a", 8 * KiB)
    gc.collect()
    assert r.write(b"hello") == 5
    assert bytes(r.read(0, 5)) == b"hello"
    assert r.access(0, 4096) >= 0
    r.close()


def test_closed_session_refuses_clearly(cluster):
    s = cluster.connect("h0")
    r = s.alloc("a", 8 * KiB)
    other = s.alloc("b", 8 * KiB)
    early = r.ndarray(np.uint8, 16)
    early[:] = 7
    other.close()
    s.close()
    s.close()  # twice is harmless
    assert s.closed and r.closed
    calls = [lambda: r.read(), lambda: r.write(b"x"), lambda: r.access(),
             lambda: r.ndarray("u1", 4), lambda: r.buffer(),
             lambda: r.reading("u1", 4).__enter__(), lambda: r.writing("u1", 4).__enter__(),
             lambda: s.alloc("c", 4096), lambda: s.open("a"), lambda: s.free("a"),
             lambda: s.regions(), lambda: s.translate(r.address), lambda: s.stats(),
             lambda: s.virtual_time_ns]
    for call in calls:
        with pytest.raises(SessionClosed, match="closed"):
            call()
    with pytest.raises(InvalidArgument, match="closed"):   # closed before the session
        other.read()
    assert (early == 7).all()       # arrays made before stay valid
    r.close()                       # harmless too
    with cluster.connect("h0") as s2:
        s2.free("a")
        s2.free("b")


def test_region_takes_the_descriptor(cluster):
    with cluster.connect("h1") as s:
        r = s.alloc("d", 3 * 64 * KiB, placement="interleave", share="shared", allow="h0")
        assert isinstance(r.descriptor, RegionDescriptor)
        assert (r.name, r.nbytes, r.share, r.owner, r.placement) == \
            ("d", 3 * 64 * KiB, "shared", "h1", "interleave")
        assert r.devices == ["d0", "d1"] and r.stripe_bytes == 64 * KiB and r.writable
        assert r.id == r.descriptor.id and r.address == r.descriptor.address
        info = r.info
        assert info["mapped_bytes"] == r.descriptor.mapped_bytes == 3 * 64 * KiB
        assert info["offsets"] == list(r.descriptor.offsets) and info["access"] == "rw"


def test_region_uses_no_private_attribute_of_the_session():
    src = open(fabric.region.__file__).read()
    assert not re.search(r"session\._", src), "Region reaches into Session's privates"


# -- typed errors where input enters --------------------------------------------------------

def test_sizes_beyond_64_bits_and_numpy_integers(cluster):
    with cluster.connect("h0") as s:
        for kw in ({"nbytes": 1 << 64}, {"nbytes": 1 << 70}, {"nbytes": -1}, {"nbytes": 1.5},
                   {"nbytes": "4096"}, {"nbytes": True}):
            with pytest.raises(InvalidArgument, match="nbytes"):
                s.alloc("x", **kw)
        for g in (1 << 64, 2.0, "64KiB", np.float64(65536)):
            with pytest.raises(InvalidArgument, match="granularity"):
                s.alloc("x", MiB, placement="interleave", granularity=g)
        r = s.alloc("n", np.int64(MiB), placement="interleave", granularity=np.uint32(64 * KiB))
        assert r.nbytes == MiB and r.stripe_bytes == 64 * KiB
        assert s.alloc("m", np.uint64(4096)).nbytes == 4096
        for bad in ({"name": 5}, {"name": b"x"}, {"placement": 3}, {"share": ["shared"]},
                    {"share": np.array(["shared"])}, {"devices": 5}, {"devices": [1]},
                    {"policy": 1}):
            kw = {"name": "x", **bad}
            with pytest.raises(InvalidArgument):
                s.alloc(kw.pop("name"), MiB, **kw)
        assert sorted(d["name"] for d in s.regions()) == ["m", "n"]


def test_allow_takes_a_name_a_list_or_a_map(cluster):
    with cluster.connect("h0") as h0, cluster.connect("h1") as h1:
        with pytest.raises(InvalidArgument, match="allow"):
            h0.alloc("x", MiB, share="shared", allow=5)
        with pytest.raises(InvalidArgument, match="allow"):
            h0.alloc("x", MiB, share="shared", allow={"h1": "write"})
        with pytest.raises(InvalidArgument, match="allow"):
            h0.alloc("x", MiB, share="shared", allow=[b"h1"])
        h0.alloc("one", MiB, share="shared", allow="h1")        # one host, not "h", "1"
        assert h1.open("one").writable is False
        assert h0.regions()[0]["allow"] == {"h1": "r"}
        h0.alloc("set", MiB, share="shared", allow=("h1",))
        h0.alloc("map", MiB, share="shared", allow={"h1": "rw"})
        assert h1.open("map").writable


def test_translate_wants_an_int_address(cluster):
    with cluster.connect("h0") as s:
        r = s.alloc("t", MiB)
        for bad in (1 << 64, -1, "x", 1.5, float(r.address), None, [r.address], True):
            with pytest.raises(InvalidArgument, match="address"):
                s.translate(bad)
        assert s.translate(np.uint64(r.address + 3)) == s.translate(r.address + 3)
        with pytest.raises(RegionNotFound):
            s.translate((1 << 64) - 1)


def test_ndarray_rejects_sizeless_and_absurd_layouts(cluster):
    with cluster.connect("h0") as s:
        r = s.alloc("a", 64 * KiB)
        for dtype, shape in ((np.dtype("V0"), 4), ([], 3), ("u1", (0, 1 << 70)),
                             ("u1", (1 << 40, 1 << 40)), ("u1", "12"), ("u1", 2.5),
                             ("u1", (2.0, 3)), ("u1", [True]), ("u1", None), ("not a dtype", 1),
                             (object, 1), ("u1", (1,) * 100)):
            with pytest.raises(InvalidArgument):
                r.ndarray(dtype, shape)
        assert r.ndarray("u1", (0, 1 << 40)).shape == (0, 1 << 40)
        assert r.ndarray(("f4", (3,)), 2).shape == (2, 3)
        a = r.ndarray("<i4", np.array([2, 8]), offset=np.int64(16))
        assert a.shape == (2, 8)
        a[:] = 5
        assert (r.ndarray("<i4", (np.int16(16),), np.uint8(16)) == 5).all()


def test_write_wants_bytes_and_ranges_take_numpy_ints(cluster):
    with cluster.connect("h0") as s:
        r = s.alloc("w", 64 * KiB)
        for bad in ("text", 5, None, [1, 2], {"a": 1}, np.array([object()]), 1.5):
            with pytest.raises(InvalidArgument):
                r.write(bad)
        assert r.write(bytearray(b"ab"), np.int64(10)) == 2
        assert r.write(memoryview(b"cd"), offset=np.uint16(12)) == 2
        assert r.write(np.float32(1.0), np.uint64(16)) == 4
        assert bytes(r.read(np.int32(10), np.uint64(4))) == b"abcd"
        assert len(r.read(np.int64(64 * KiB - 3))) == 3
        assert r.access(np.uint32(0), np.int8(64), write=np.bool_(True)) >= 0
        with pytest.raises(InvalidArgument, match="write"):
            r.access(0, 64, write="yes")
        for off, n in ((1.0, 4), (0, 4.0), ("0", 4), (np.uint64(1 << 63), 1), (0, 1 << 64),
                       (-1, 1)):
            with pytest.raises(InvalidArgument):
                r.read(off, n)
            with pytest.raises(InvalidArgument):
                r.access(off, n)
        with r.writing("u1", 4, offset=np.int64(20)) as a:
            a[:] = 9
        with r.reading("u1", np.int32(4), offset=np.uint64(20)) as a:
            assert (a == 9).all()
        with pytest.raises(InvalidArgument):
            with r.reading("u1", 4, offset=2.0):
                pass


def test_connect_checks_its_arguments(cluster, tmp_path):
    for kw in ({"timeout_ms": 0}, {"timeout_ms": 1.5}, {"timeout_ms": 10**9},
               {"max_regions": 0}, {"max_regions": "8"}, {"promote_after": 2.0},
               {"state_dir": 5}, {"inject": ["off"]}, {"eviction": None}):
        with pytest.raises(InvalidArgument):
            fabric.connect("h0", **{"state_dir": cluster.state_dir, **kw})
    for host in (5, "", None, b"h0"):
        with pytest.raises(InvalidArgument):
            cluster.connect(host)
    with pytest.raises(fabric.errors.ClusterError, match="no cluster"):
        fabric.connect("h0", tmp_path)
    with cluster.connect("h0", timeout_ms=np.int64(2000), promote_after=np.uint8(3),
                         max_regions=np.int32(4)) as s:
        assert s.max_regions == 4 and s.promote_after == 3


_FD_SCRIPT = textwrap.dedent("""
    import os, resource, sys
    import fabric
    state_dir, warm = sys.argv[1], sys.argv[2] == "warm"
    if warm:  # a ZeroMQ context and a session already exist in the process
        keep = fabric.connect("h0", state_dir)
        region = keep.alloc("fd", 4096)
    resource.setrlimit(resource.RLIMIT_NOFILE, (128, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    fds = []
    def exhaust():
        try:
            while True:
                fds.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            pass
    for free in range(0, 24):
        exhaust()
        for _ in range(free):
            os.close(fds.pop())
        try:
            fabric.connect("h1", state_dir).close()
            print(free, "ok")
        except fabric.FabricError as e:
            print(free, type(e).__name__, e)
        if warm:
            exhaust()
            try:
                keep.open("fd").read()
                print("open ok")
            except fabric.FabricError as e:
                print("open", type(e).__name__, e)
    for fd in fds:
        os.close(fd)
    if warm:
        assert bytes(region.read(0, 1)) == b"\\0"
        keep.free("fd")
        keep.close()
    print("done")
""")


@pytest.mark.parametrize("warm", ["warm", "cold"])
def test_out_of_file_descriptors_is_a_typed_error(cluster, tmp_path, warm):
    script = tmp_path / "fds.py"
    script.write_text(_FD_SCRIPT)
    p = subprocess.run([sys.executable, str(script), cluster.state_dir, warm],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    lines = p.stdout.splitlines()
    assert lines[-1] == "done"
    outcomes = [ln.split()[1] for ln in lines[:-1]]
    assert set(outcomes) <= {"ok", "ResourceExhausted"}, p.stdout
    assert "ResourceExhausted" in outcomes and "ok" in outcomes
    assert all("file descriptors" in ln or "open-file limit" in ln
               for ln in lines if "ResourceExhausted" in ln)


# -- engine slots -----------------------------------------------------------------------------

def _slots(s) -> int:
    return s.stats()["cache"]["regions"]


def test_closing_handles_gives_engine_slots_back(cluster):
    with cluster.connect("h0") as h0, cluster.connect("h1", max_regions=3) as h1:
        for i in range(20):
            h0.alloc(f"r{i}", 4096, share="shared")
        for i in range(20):               # far more distinct opens than slots
            r = h1.open(f"r{i}")
            r.read()
            r.close()
        assert _slots(h1) == 0
        a, b = h1.open("r0"), h1.open("r0")  # two handles, one slot
        assert _slots(h1) == 1
        a.close()
        assert _slots(h1) == 1 and b.access(0, 64) >= 0
        b.close()
        assert _slots(h1) == 0
        mine = h0.alloc("mine", 4096)
        assert _slots(h0) == 21
        h0.free("mine")
        assert _slots(h0) == 20
        with pytest.raises(RegionNotFound, match="freed"):
            mine.read()


def test_full_engine_reclaims_regions_freed_elsewhere_and_dropped_handles(cluster):
    with cluster.connect("h0") as h0, cluster.connect("h1", max_regions=2) as h1:
        for n in "abcd":
            h0.alloc(n, 4096, share="shared")
        ra, rb = h1.open("a"), h1.open("b")
        with pytest.raises(ResourceExhausted, match="max_regions"):
            h1.open("c")
        h0.free("a")                     # freed by its owner in another session
        rc = h1.open("c")                # h1 asks the manager, drops "a"'s slot
        assert _slots(h1) == 2
        with pytest.raises(RegionNotFound, match="freed"):
            ra.read()
        del rb
        gc.collect()
        rd = h1.open("d")                # "b" had no handle left
        assert _slots(h1) == 2 and rc.access() >= 0 and rd.access() >= 0


def test_max_regions_override_and_default(cluster):
    with cluster.connect("h0") as s:
        assert s.max_regions == 1024
    with cluster.connect("h0", max_regions=1) as s:
        r = s.alloc("one", 4096)
        with pytest.raises(ResourceExhausted):
            s.alloc("two", 4096)
        assert [d["name"] for d in s.regions()] == ["one"]   # the failed alloc was undone
        r.close()
        s.alloc("two", 4096)


# -- stats ---------------------------------------------------------------------------------

def test_stats_before_any_call_report_none(cluster):
    with cluster.connect("h0") as s:
        st = s.stats()
        assert st["calls"] == 0 and st["latency_count"] == 0
        for k in ("latency_ns_mean", "latency_ns_p50", "latency_ns_p99", "latency_ns_min",
                  "latency_ns_max"):
            assert st[k] is None
        assert st["latency_hist"] == {"bucket_ns": [], "count": []}
        s.alloc("a", MiB).read()
        st = s.stats()
        assert st["latency_ns_p50"] > 0 and st["latency_hist"]["count"] == [1]
        cl = cluster.stats()
        assert cl["hosts"]["h1"]["latency_ns_p99"] is None
        assert cl["hosts"]["h0"]["latency_ns_p99"] == st["latency_ns_p99"]


def test_stats_diff_scopes_figures_to_an_interval(cluster, seed):
    rng = np.random.default_rng(seed)
    with cluster.connect("h0", policy="direct") as s:
        r = s.alloc("a", 4 * MiB)
        for _ in range(50):
            r.access(int(rng.integers(0, 4 * MiB - 4096)), 4096)
        before, cl_before = s.stats(), cluster.stats()
        n = 200
        charged = [r.access(int(rng.integers(0, 4 * MiB - 64 * KiB)), 64 * KiB)
                   for _ in range(n)]
        after, cl_after = s.stats(), cluster.stats()
    d = fstats.diff(before, after)
    assert d["calls"] == n == d["latency_count"] == sum(d["latency_hist"]["count"])
    assert d["bytes"] == n * 64 * KiB and d["virtual_time_ns"] == sum(charged)
    assert d["latency_ns_sum"] == sum(charged)
    assert d["latency_ns_mean"] == pytest.approx(sum(charged) / n)
    # percentiles are those of the interval's charges, to the histogram's 1%
    assert d["latency_ns_p50"] == pytest.approx(float(np.percentile(charged, 50)), rel=0.02)
    assert d["latency_ns_max"] == pytest.approx(max(charged), rel=0.01)
    assert d["latency_ns_min"] == pytest.approx(min(charged), rel=0.01)
    assert d["cache"] == after["cache"]
    assert sum(t["share"] for t in d["tiers"].values()) == pytest.approx(1.0)
    cd = fstats.diff(cl_before, cl_after)
    assert cd["hosts"]["h0"]["calls"] == n and cd["total"]["calls"] == n
    assert cd["hosts"]["h1"]["latency_ns_p50"] is None
    assert cd["devices"]["d0"]["bytes_total"] >= n * 64 * KiB
    # a diff from nothing is the snapshot itself
    whole = fstats.diff({**before, **_zeroed(before)}, before)
    for k in ("latency_ns_p50", "latency_ns_p99", "latency_ns_min", "latency_ns_max", "calls"):
        assert whole[k] == before[k]
    with pytest.raises(InvalidArgument, match="earlier"):
        fstats.diff(after, before)
    with pytest.raises(InvalidArgument):
        fstats.diff(before, cl_after["hosts"]["h1"])
    with pytest.raises(InvalidArgument):
        fstats.diff({}, 5)


def _zeroed(st: dict) -> dict:
    """A host snapshot with every counter at zero (what a fresh cluster reports)."""
    z = {k: 0 for k in ("calls", "injected_ns", "virtual_time_ns", "latency_count",
                         "latency_ns_sum", "accesses", "bytes", "hits", "misses", "evictions",
                         "writebacks", "invalidations", "back_invalidations", "promotions",
                         "far_bytes")}
    z["tiers"] = {t: {"pages": 0, "bytes": 0, "share": 0.0} for t in st["tiers"]}
    z["devices"] = {d: dict.fromkeys(c, 0) for d, c in st["devices"].items()}
    z["latency_hist"] = {"bucket_ns": [], "count": []}
    return z


def test_cluster_stats_is_what_the_cli_prints(cluster):
    with cluster.connect("h1") as s:
        s.alloc("x", MiB).read()
    env = dict(os.environ, FABRIC_STATE_DIR=cluster.state_dir)
    p = subprocess.run([sys.executable, "-m", "fabric", "stats", "--json"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    cli, mine = json.loads(p.stdout), cluster.stats()
    assert mine["schema"] == fstats.STATS_SCHEMA and mine["inject"] == "virtual"

    def steady(st):  # loads are live rates: they move between two reads
        for kind in ("links", "devices", "dram"):
            for e in st[kind].values():
                for k in ("load_gbps", "utilisation", "active_hosts", "active_engines"):
                    e.pop(k, None)
        return st
    assert steady(cli) == steady(json.loads(json.dumps(mine)))
    assert steady(fstats.cluster_stats(cluster.state_dir)) == steady(cluster.stats())
    h = mine["hosts"]["h1"]["latency_hist"]
    assert h["count"] == [1] and h["bucket_ns"][0] == pytest.approx(
        mine["hosts"]["h1"]["latency_ns_max"], rel=0.01)


# -- HELLO / BYE ----------------------------------------------------------------------------

def test_session_id_is_optional_and_close_survives_a_dead_manager(cluster):
    s = cluster.connect("h0")
    assert s.session_id is None or isinstance(s.session_id, int)
    r = s.alloc("a", 4096)
    mgr = psutil.Process(json.load(open(os.path.join(cluster.state_dir, "cluster.json")))
                         ["pids"]["manager"])
    mgr.send_signal(signal.SIGKILL)
    mgr.wait(10)
    s.close()                       # no error, no hang: BYE is best effort
    with pytest.raises(SessionClosed):
        r.read()
    with pytest.raises(FabricError):
        fabric.connect("h0", cluster.state_dir, timeout_ms=300)


def test_access_denied_is_still_typed(cluster):
    with cluster.connect("h0") as h0, cluster.connect("h1") as h1:
        h0.alloc("p", 4096)
        with pytest.raises(AccessDenied):
            h1.open("p")
        h0.alloc("s", 4096, share="shared")
        with pytest.raises(AccessDenied):
            h1.open("s").write(b"x")
