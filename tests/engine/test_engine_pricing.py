"""Pipelined pricing (docs/cost-model.md, "Pricing a call"): the first latency round
overlaps nothing, the others overlap the transfer; memory-level parallelism is
mlp_lines x threads cache lines per device; a call that starts where the previous one
on its region ended continues a stream and hides its first round.  Virtual mode,
single host: the charges are exact."""
from __future__ import annotations

import pytest

from fabric.engine import Engine, engine_params_for_test
from fabric.errors import InvalidArgument
from fabric.topology import load

MIB = 1 << 20
PAGE = 4096


def _bottleneck_gbps(params: dict, host: int = 0, dev: int = 0) -> float:
    """The least bandwidth on the path: path cap, each link, the device, local DRAM."""
    path = params["paths"][host][dev]
    bws = [path["bandwidth_gbps"], params["devices"][dev]["bandwidth_gbps"],
           params["hosts"][host]["local_bandwidth_gbps"]]
    bws += [params["links"][i]["bandwidth_gbps"] for i in path["links"]]
    return min(bws)


@pytest.mark.parametrize("preset", ["direct", "switched-pool", "memory-box"])
def test_one_large_sequential_read_reaches_the_bottleneck(preset, seed):
    params = load(preset, hosts=1, devices=1, device_size=64 * MIB).engine_params()
    with Engine(params, "h0", mode="virtual", seed=seed) as e:
        e.register_region(1, npages=64 * MIB // PAGE, device_indices=[0], stripe_pages=1,
                          policy="direct")
        gbps = 64 * MIB / e.access(1, 0, 64 * MIB, False)
    assert gbps >= 0.95 * _bottleneck_gbps(params)
    assert gbps <= _bottleneck_gbps(params) * 1.0001


@pytest.mark.parametrize("preset", ["direct", "switched-pool"])
def test_a_stream_of_small_sequential_calls_reaches_the_bottleneck(preset, seed):
    params = load(preset, hosts=1, devices=1, device_size=16 * MIB).engine_params()
    with Engine(params, "h0", mode="virtual", seed=seed) as e:
        e.register_region(1, npages=16 * MIB // PAGE, device_indices=[0], stripe_pages=1,
                          policy="direct")
        charged = sum(e.access(1, off, PAGE, False) for off in range(0, 16 * MIB, PAGE))
    assert 16 * MIB / charged >= 0.90 * _bottleneck_gbps(params)


def test_only_a_continuing_call_hides_its_first_round():
    p = engine_params_for_test(cache_pages=0)
    with Engine(p, "h0", mode="virtual") as e:
        e.register_region(1, npages=64, device_indices=[0], stripe_pages=1, policy="direct")
        assert e.access(1, 0, PAGE, False) == round(226 + PAGE / 26.8)   # a new stream
        assert e.access(1, PAGE, PAGE, False) == round(PAGE / 26.8)      # continues it
        assert e.access(1, 8 * PAGE, PAGE, False) == round(226 + PAGE / 26.8)   # a jump
        assert e.access(1, 9 * PAGE, 64, True) == round(64 / 26.8)       # writes continue too
        e.register_region(2, npages=64, device_indices=[0], stripe_pages=1, policy="direct")
        assert e.access(2, 9 * PAGE + 64, 64, False) == round(226 + 64 / 26.8)   # per region
        assert e.access(1, 9 * PAGE + 64, 64, False) == round(64 / 26.8)


def test_parallelism_is_lines_per_core_times_threads():
    """Little's law: with W lines in flight, a stream runs at W x 64 B / latency at most."""
    for threads, mlp_lines in [(1, 12), (2, 10), (1, 16), (4, 12)]:
        p = engine_params_for_test(cache_pages=0, engine={"threads": threads,
                                                          "mlp_lines": mlp_lines})
        with Engine(p, "h0", mode="virtual") as e:
            e.register_region(1, npages=256, device_indices=[0], stripe_pages=1,
                              policy="direct")
            lines = MIB // 64
            rounds = -(-lines // (threads * mlp_lines))
            assert e.access(1, 0, MIB, False) == round(226 * rounds)   # latency bound
    # The host table overrides [engine] threads, per host.
    p = engine_params_for_test(hosts=2, cache_pages=0, engine={"threads": 1})
    p["hosts"][1]["threads"] = 24
    with Engine(p, "h0", mode="virtual") as a, Engine(p, "h1", mode="virtual") as b:
        for e in (a, b):
            e.register_region(1, npages=256, device_indices=[0], stripe_pages=1,
                              policy="direct")
        assert a.access(1, 0, MIB, False) == round(226 * -(-(MIB // 64) // 12))
        assert b.access(1, 0, MIB, False) == round(226 + MIB / 26.8)   # bandwidth bound


def test_hits_are_one_dram_latency_then_local_bandwidth():
    p = engine_params_for_test(cache_pages=64)
    with Engine(p, "h0", mode="virtual") as e:
        e.register_region(1, npages=64, device_indices=[0], stripe_pages=1)
        e.access(1, 0, 64 * PAGE, False)
        assert e.access(1, 0, 64 * PAGE, False) == round(90 + 64 * PAGE / 116)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "8"])
def test_threads_are_checked(bad):
    p = engine_params_for_test()
    p["hosts"][0]["threads"] = bad
    with pytest.raises(InvalidArgument, match="threads"):
        Engine(p, "h0")
    with pytest.raises(InvalidArgument, match="threads"):
        Engine(engine_params_for_test(engine={"threads": bad}), "h0")


def test_threads_in_a_topology_host_table(tmp_path):
    from fabric import topology as T
    f = tmp_path / "t.toml"
    f.write_text('[[host]]\nname = "h0"\nthreads = 2\n[[host]]\nname = "h1"\n'
                 '[[device]]\nname = "d0"\ncapacity = "8MiB"\n[engine]\nthreads = 6\n')
    params = T.load(str(f)).engine_params()
    assert params["hosts"][0]["threads"] == 2 and "threads" not in params["hosts"][1]
    assert params["engine"]["threads"] == 6
    f.write_text('[[host]]\nname = "h0"\nthreads = 0\n[[device]]\nname = "d0"\n'
                 'capacity = "8MiB"\n')
    with pytest.raises(InvalidArgument, match=r"host h0: threads must be"):
        T.load(str(f))


def test_connect_threads_sets_this_process_host(cluster):
    import fabric
    with cluster.connect("h0", inject="virtual") as s:
        r = s.alloc("many", MIB, policy="direct")
        many = r.access(0, MIB)
    with fabric.connect("h0", cluster.state_dir, inject="virtual", threads=1) as s:
        r = s.open("many", policy="direct")
        one = r.access(0, MIB)
        r.close()
        s.free("many")
    assert one > 3 * many     # one core keeps 12 lines in flight: latency bound
    with pytest.raises(InvalidArgument, match="threads"):
        fabric.connect("h0", cluster.state_dir, threads=0)


# -- full-duplex links and the read/write mix (step 2) ----------------------------------

def _mix_gbps(params: dict, reads: int, writes: int, seed: int) -> float:
    """Sequential 1 MiB direct accesses in the ratio reads:writes, 64 MiB in all."""
    moved = charged = off = 0
    with Engine(params, "h0", mode="virtual", seed=seed) as e:
        e.register_region(1, npages=64 * MIB // PAGE, device_indices=[0], stripe_pages=1,
                          policy="direct")
        while moved < 64 * MIB:
            for write in [False] * reads + [True] * writes:
                charged += e.access(1, off, MIB, write)
                moved += MIB
                off = (off + MIB) % (64 * MIB)
    return moved / charged


def _one_link(device_bw: float, link_bw: float, curve: dict | None = None) -> dict:
    p = engine_params_for_test(cache_pages=0, device_bandwidth_gbps=device_bw,
                               link_bandwidth_gbps=link_bw, device_curve=curve)
    p["paths"][0][0]["bandwidth_gbps"] = min(device_bw, link_bw)
    return p


def test_mixed_traffic_gets_more_than_reads_alone_on_a_full_duplex_link(seed):
    # A 36 GB/s module behind 31.5 GB/s per direction (PCIe 5.0 x8): reads alone
    # are link bound; at 2:1 the writes travel the other direction.
    p = _one_link(36.0, 31.5)
    reads = _mix_gbps(p, 1, 0, seed)
    mixed = _mix_gbps(p, 2, 1, seed)
    assert reads == pytest.approx(31.5, rel=0.01)
    assert mixed > 1.1 * reads
    assert mixed == pytest.approx(36.0, rel=0.05)      # now the device is the bottleneck
    # Half-and-half on a link that binds: up to twice one direction (the mix is a
    # decayed average over calls, 57:43 right after a read call, so a bit less).
    p = _one_link(200.0, 20.0)
    assert _mix_gbps(p, 1, 0, seed) == pytest.approx(20.0, rel=0.01)
    assert 1.7 * 20.0 < _mix_gbps(p, 1, 1, seed) <= 40.0


def test_device_bandwidth_follows_its_curve_sets_by_read_fraction(seed):
    """Mess's Micron-model CXL device: 26.8 GB/s at 100% reads, 40.0 at 50%."""
    params = load("direct", hosts=1, devices=1, device_size=64 * MIB).engine_params()
    assert _mix_gbps(params, 1, 0, seed) == pytest.approx(26.8, rel=0.01)
    assert _mix_gbps(params, 1, 1, seed) == pytest.approx(40.0, rel=0.10)
    # A device with one curve set has one ceiling, whatever the mix.
    one = _one_link(26.8, 200.0, {"read_pct": [100], "points": [[[0.0, 226.0], [26.8, 1285.0]]]})
    assert _mix_gbps(one, 1, 1, seed) == pytest.approx(26.8, rel=0.02)


def test_each_link_direction_carries_its_own_load():
    """Another host's writes do not slow our reads on a link (each direction has its
    bandwidth), but they share the device."""
    p = engine_params_for_test(hosts=2, cache_pages=0, device_bandwidth_gbps=1000.0,
                               link_bandwidth_gbps=10.0)
    for row in p["paths"]:
        row[0]["bandwidth_gbps"] = 10.0
    from fabric.engine._reference import RefEngine, RefSegment
    seg = RefSegment(p)
    a, b = RefEngine(p, "h0", segment=seg), RefEngine(p, "h1", segment=seg)
    for e in (a, b):
        e.register_region(1, npages=512, device_indices=[0], stripe_pages=1, policy="direct")
    alone = a.access(1, 0, MIB, False)
    costs = []
    for write in [True] * 4 + [False] * 4:   # h1 writes, then reads; h0 reads throughout
        b.access(1, 0, MIB, write)
        costs.append(a.access(1, 0, MIB, False))
    assert costs[3] == pytest.approx(alone, rel=0.02)   # writes use the other direction
    assert costs[7] > 1.5 * alone                       # reads share h0's direction


# -- contended switches and DRAM (step 3) ----------------------------------------------

@pytest.mark.parametrize("frac", [0.1, 0.3, 0.5, 0.7, 0.8, 0.9])
def test_dram_loaded_latency_stays_on_its_curve_to_90_percent_of_peak(frac, seed):
    from fabric.engine import validate as V
    from fabric.topology.curves import builtin_curve
    curve = builtin_curve("ddr4-skylake")
    peak = curve.for_read_pct(100)[-1][0]
    load_gbps = frac * peak
    got = V._loaded_ns(V._setups()["dram-direct"](), seed, load_gbps)
    assert got == pytest.approx(curve.latency_ns(load_gbps), rel=0.10)


def test_a_cxl_switch_is_a_contended_element_of_the_paths_through_it():
    topo = load("switched-pool", hosts=2, devices=2, device_size=16 * MIB)
    params = topo.engine_params()
    names = [link["name"] for link in params["links"]]
    assert names[-1] == "switch:sw0" and names[:-1] == [link.name for link in topo.links]
    sw = len(names) - 1
    assert all(sw in p["links"] for row in params["paths"] for p in row)
    assert params["links"][sw]["bandwidth_gbps"] == 1024.0       # XConn XC50256
    # Its latency rises with its load (M/M/1 from the 90 ns hop): make it the
    # bottleneck to see it, and load it from the other host.
    params["links"][sw]["bandwidth_gbps"] = 20.0
    from fabric.engine._reference import RefEngine, RefSegment
    seg = RefSegment(params)
    a, b = RefEngine(params, "h0", segment=seg), RefEngine(params, "h1", segment=seg)
    for e in (a, b):
        e.register_region(1, npages=16 * MIB // PAGE, device_indices=[0, 1], stripe_pages=1,
                          policy="direct")
    idle = a.loaded_latency_ns(0)
    for i in range(6):
        b.access(1, 0, MIB, False)
        a.advance(b.virtual_time_ns - a.virtual_time_ns)
    assert a.loaded_latency_ns(0) > idle + 30.0


# -- RDMA: one-sided verbs vs far-memory paging (step 4) ---------------------------------

def _rdma(kind: str):
    import dataclasses
    from fabric.topology import kinds as K
    t = load("rdma", hosts=1, devices=1, device_size=16 * MIB)
    k = K.DEVICE_KINDS[kind]
    devs = tuple(dataclasses.replace(d, kind=kind, read_ns=k.read_ns, write_ns=k.write_ns)
                 for d in t.devices)
    return dataclasses.replace(t, devices=devs).engine_params()


def test_rdma_verbs_and_paging_are_two_device_kinds(seed):
    verbs, paging = _rdma("rdma"), _rdma("rdma-paging")
    assert verbs["devices"][0]["window_lines"] == 16 * 4096 // 64      # 16 reads in flight
    assert paging["devices"][0]["window_lines"] == 4096 // 64          # a page per fault
    charges = {}
    for name, params in (("verbs", verbs), ("paging", paging)):
        with Engine(params, "h0", mode="virtual", seed=seed) as e:
            e.register_region(1, npages=16 * MIB // PAGE, device_indices=[0], stripe_pages=1,
                              policy="direct")
            small = e.access(1, 0, 64, False)
            mib = e.access(1, 8 * MIB, MIB, False)
        charges[name] = (small, mib)
    # Verbs: NIC + wire both ways, the ToR, the server's DRAM by DMA: ~1.4 us; a
    # 1 MiB read streams at the 100 Gb/s line rate after the first round trip.
    assert charges["verbs"][0] == round(500 + 300 + 500 + 90 + 64 / 12.5)
    assert charges["verbs"][1] == round(1390 + MIB / 12.5)
    # Paging: 2.5 us of fault handling and swap-in per page, one page per round.
    assert charges["paging"][0] == round(3800 + 64 / 12.5)
    assert charges["paging"][1] == round(256 * 3800)


def test_the_rdma_preset_uses_verbs():
    params = load("rdma", hosts=2, devices=2).engine_params()
    assert all(d["window_lines"] == 1024 for d in params["devices"])
    assert params["paths"][0][0]["latency_read_ns"] == pytest.approx(1390)


@pytest.mark.parametrize("bad", [-1, 1.5, True, 1 << 31])
def test_device_window_is_checked(bad):
    p = engine_params_for_test()
    p["devices"][0]["window_lines"] = bad
    with pytest.raises(InvalidArgument, match="window_lines"):
        Engine(p, "h0")
