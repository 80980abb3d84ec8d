"""A host's own DRAM as a contended element (docs/cost-model.md, "DRAM").

- Idle: a light hit costs local_dram_ns + bytes / local_bandwidth, as it always did.
- One host streaming hits at a known rate (advance() sets it) pays the host's DRAM
  curve -- the measured ddr4-skylake curve scaled to its idle latency and bandwidth
  -- within 10% from 10% to 90% of its local bandwidth.
- Engines attached as the SAME host share its local bandwidth (two real processes,
  off mode, ~1/2 each; two engines in one process, virtual mode, bit-identical with
  the reference model); engines of DIFFERENT hosts do not slow each other's hits.
- Far transfers are bounded by the host's DRAM share too.
- Each engine of a host has its own slot (FAB_DRAM_SLOTS of them); `dram:<host>`
  appears in the shared stats.
"""
from __future__ import annotations


import pytest

from fabric.engine import Engine, create_shared_state, engine_params_for_test, read_shared_stats
from fabric.engine._reference import DRAM_SLOTS, RefEngine, RefSegment, curve_ns
from fabric.topology.curves import builtin_curve, host_dram_points

from engine_procs import run_procs, stream

MIB = 1 << 20
PAGE = 4096
LOCAL_GBPS = 116.0


def _hit_params(hosts: int = 1, **kw) -> dict:
    # A page cache holding the 1 MiB the hosts stream; fast far memory.
    return engine_params_for_test(hosts=hosts, cache_pages=MIB // PAGE, **kw)


def _warm(e, region: int = 1, nbytes: int = MIB) -> None:
    e.register_region(region, npages=MIB // PAGE, device_indices=[0], stripe_pages=1)
    e.access(region, 0, nbytes, False)       # misses: every page cached


def _warm_light(e) -> None:
    """Cache 64 pages in ~10 us of virtual time: less than one rate window (20 us),
    so the host has published no load yet and its next hit is idle."""
    _warm(e, nbytes=64 * PAGE)


def test_host_dram_curve_is_ddr4_scaled_to_the_host():
    raw = builtin_curve("ddr4-skylake").for_read_pct(100)
    pts = host_dram_points(90.0, 116.0)
    assert pts[0] == (0.0, pytest.approx(90.0)) and pts[-1][0] == pytest.approx(116.0)
    assert len(pts) == len(raw)
    for (b, lat), (rb, rlat) in zip(pts, raw):   # the measured shape, both axes scaled
        assert b == pytest.approx(rb * 116.0 / raw[-1][0])
        assert lat == pytest.approx(rlat * 90.0 / raw[0][1])
    slow = host_dram_points(120.0, 50.0)
    assert slow[0][1] == pytest.approx(120.0) and slow[-1][0] == pytest.approx(50.0)


@pytest.mark.parametrize("local_ns,local_gbps", [(90.0, 116.0), (70.0, 40.0), (120.0, 300.0)])
@pytest.mark.parametrize("nbytes", [64, PAGE, 64 * PAGE])
def test_an_idle_hit_costs_what_it_always_did(local_ns, local_gbps, nbytes):
    p = _hit_params(local_dram_ns=local_ns, local_bandwidth_gbps=local_gbps)
    with Engine(p, "h0", mode="virtual") as e:
        _warm_light(e)
        assert e.local_dram() == {"latency_ns": local_ns, "share_gbps": local_gbps, "slot": 0}
        assert e.access(1, 0, nbytes, False) == int(local_ns + nbytes / local_gbps + 0.5)


def _drive_hits(e, rate_gbps: float, calls: int) -> None:
    """Hits of 1 MiB, each followed by the think time that makes them rate_gbps."""
    period = MIB / rate_gbps
    for _ in range(calls):
        c = e.access(1, 0, MIB, False)
        if c < period:
            e.advance(int(period - c))


@pytest.mark.parametrize("frac", [0.1, 0.3, 0.5, 0.7, 0.8, 0.9])
def test_hits_climb_the_host_dram_curve_to_90_percent_of_its_bandwidth(frac, seed):
    p = _hit_params()
    pts = host_dram_points(90.0, LOCAL_GBPS)
    load = frac * LOCAL_GBPS
    want = curve_ns(pts, load)
    with Engine(p, "h0", mode="virtual", seed=seed) as e:
        _warm(e)
        _drive_hits(e, load, 80)
        got = e.local_dram()["latency_ns"]
        assert got == pytest.approx(want, rel=0.10), f"at {load:.1f} GB/s"
        # What a hit is charged carries the same latency: one page, then its bytes.
        probe = e.access(1, 0, PAGE, False) - PAGE / LOCAL_GBPS
        assert probe == pytest.approx(want, rel=0.10)
    # The curve is the measured one, not M/M/1: at 90% it stays under 1.5x idle.
    assert want < 1.5 * 90.0


def _flat_out_hits(engines, calls: int) -> list[int]:
    """Each engine reads its cached 1 MiB back to back; their virtual time per engine."""
    t0 = [e.virtual_time_ns for e in engines]
    for _ in range(calls):
        for e in engines:
            e.access(1, 0, MIB, False)
    return [e.virtual_time_ns - t for e, t in zip(engines, t0)]


def test_two_hosts_do_not_slow_each_others_hits(tmp_path):
    p = _hit_params(hosts=2)
    seg = str(tmp_path / "engine.seg")
    create_shared_state(seg, p)
    with Engine(p, "h0", shared_path=seg) as a, Engine(p, "h1", shared_path=seg) as b:
        for e in (a, b):
            _warm(e)
        _flat_out_hits([a, b], 20)
        for e, ns in zip((a, b), _flat_out_hits([a, b], 50)):
            gbps = 50 * MIB / ns
            assert gbps == pytest.approx(LOCAL_GBPS, rel=0.05), f"{e.host}: {gbps:.1f} GB/s"
            assert e.local_dram()["share_gbps"] == LOCAL_GBPS


def test_two_engines_of_one_host_split_its_dram_like_the_reference(tmp_path, seed):
    """In one process, virtual mode: two engines attached as h0 streaming hits flat
    out get half of h0's bandwidth each, and charge bit for bit what the reference
    model charges for the same schedule."""
    p = _hit_params(hosts=2)
    seg = str(tmp_path / "engine.seg")
    create_shared_state(seg, p)
    rseg = RefSegment(p)
    with Engine(p, "h0", shared_path=seg, seed=seed) as a, \
            Engine(p, "h0", shared_path=seg, seed=seed) as b:
        ra, rb = RefEngine(p, "h0", segment=rseg, seed=seed), RefEngine(p, "h0", segment=rseg,
                                                                         seed=seed)
        assert [e.local_dram()["slot"] for e in (a, b, ra, rb)] == [0, 1, 0, 1]
        for e in (a, b, ra, rb):
            e.register_region(1, npages=MIB // PAGE, device_indices=[0], stripe_pages=1)
        charges, ref = [], []
        for i in range(70):
            for e, r in ((a, ra), (b, rb)):
                charges.append(e.access(1, 0, MIB, False))
                ref.append(r.access(1, 0, MIB, False))
            if i == 19:
                t = [e.virtual_time_ns for e in (a, b)]
        assert charges == ref
        for e, t0 in zip((a, b), t):
            gbps = 50 * MIB / (e.virtual_time_ns - t0)
            assert gbps == pytest.approx(LOCAL_GBPS / 2, rel=0.10), f"{gbps:.1f} GB/s"
        assert a.local_dram()["share_gbps"] == pytest.approx(LOCAL_GBPS / 2, rel=0.10)
        a.check_consistency()
        stats = read_shared_stats(seg, p)
        d = stats["dram"]
        assert set(d) == {"dram:h0", "dram:h1"}
        assert d["dram:h0"]["bytes_total"] == 140 * MIB and d["dram:h1"]["bytes_total"] == 0


def test_far_transfers_are_bounded_by_the_host_dram_share(tmp_path):
    """A fabric far faster than local DRAM: a direct read streams at local bandwidth
    alone, and at about half of it while another engine of the host streams hits."""
    p = engine_params_for_test(cache_pages=MIB // PAGE, device_bandwidth_gbps=10_000.0,
                               link_bandwidth_gbps=10_000.0, engine={"mlp_lines": 100_000})
    p["paths"][0][0]["bandwidth_gbps"] = 10_000.0
    seg = str(tmp_path / "engine.seg")
    create_shared_state(seg, p)
    size = 32 * MIB
    with Engine(p, "h0", shared_path=seg) as a:
        a.register_region(2, npages=size // PAGE, device_indices=[0], stripe_pages=1,
                          policy="direct")
        alone = size / a.access(2, 0, size, False)
        assert alone == pytest.approx(LOCAL_GBPS, rel=0.02)
        with Engine(p, "h0", shared_path=seg) as b:
            _warm(b)
            b.advance(a.virtual_time_ns - b.virtual_time_ns)   # virtual clocks side by side
            for _ in range(30):                  # b flat out on hits, a keeps reading
                b.access(1, 0, MIB, False)
                a.advance(max(0, b.virtual_time_ns - a.virtual_time_ns))
                a.access(2, 0, MIB, False)
            shared = size / a.access(2, 0, size, False)
        assert shared == pytest.approx(LOCAL_GBPS / 2, rel=0.15)


def test_each_engine_of_a_host_has_its_own_slot_until_they_run_out(tmp_path):
    p = _hit_params()
    seg = str(tmp_path / "engine.seg")
    create_shared_state(seg, p)
    engines = [Engine(p, "h0", shared_path=seg) for _ in range(DRAM_SLOTS + 1)]
    try:
        slots = [e.local_dram()["slot"] for e in engines]
        assert slots == list(range(DRAM_SLOTS)) + [None]
        # Without a slot an engine is still priced (by its own load), just not seen.
        last = engines[-1]
        _warm_light(last)
        assert last.access(1, 0, PAGE, False) == int(90.0 + PAGE / LOCAL_GBPS + 0.5)
        last.check_consistency()
        engines[3].close()
        again = Engine(p, "h0", shared_path=seg)
        engines[3] = again
        assert again.local_dram()["slot"] == 3
    finally:
        for e in engines:
            e.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("hosts", [["h0", "h0"], ["h0", "h1"]], ids=["same-host", "two-hosts"])
def test_processes_share_a_hosts_dram_only_when_attached_as_it(hosts, tmp_path):
    params = _hit_params(hosts=2)
    seg = str(tmp_path / "engine.seg")
    create_shared_state(seg, params)
    results = run_procs(stream, [(params, h, seg, "cache", 0.7, (0.15, 0.6)) for h in hosts],
                        45, barrier=True)
    same = hosts[0] == hosts[1]
    want = LOCAL_GBPS / 2 if same else LOCAL_GBPS
    for host, nbytes, charged in results:
        assert nbytes > 0 and charged > 0, f"{host} measured nothing"
        got = nbytes / charged
        assert abs(got - want) / want < 0.2, (
            f"{hosts}: {host} got {got:.1f} GB/s of its DRAM, want ~{want:.1f}")
    stats = read_shared_stats(seg, params)
    moved = sum(r[1] for r in results)
    if same:
        assert stats["dram"]["dram:h0"]["bytes_total"] >= moved
        assert stats["dram"]["dram:h1"]["bytes_total"] == 0
    else:
        assert all(stats["dram"][f"dram:{h}"]["bytes_total"] > 0 for h in hosts)


def test_a_host_can_name_the_measured_curve_of_its_dram(seed):
    """dram_curve picks another built-in curve (here DDR5 on Graviton3), scaled to the
    host the same way; the C engine and the reference price it alike."""
    p5 = _hit_params()
    p5["hosts"][0]["dram_curve"] = "ddr5-graviton3"
    ddr5 = host_dram_points(90.0, LOCAL_GBPS, "ddr5-graviton3")
    ddr4 = host_dram_points(90.0, LOCAL_GBPS)
    load = 0.95 * LOCAL_GBPS          # where the two scaled curves part most (~7 %)
    got = {}
    for name, p in (("ddr5", p5), ("ddr4", _hit_params())):
        with Engine(p, "h0", mode="virtual", seed=seed) as e:
            _warm(e)
            _drive_hits(e, load, 80)
            got[name] = e.local_dram()["latency_ns"]
    assert got["ddr5"] == pytest.approx(curve_ns(ddr5, load), rel=0.10)
    # Same drive, same seed: only the curve differs, and by what the curves say.
    assert got["ddr5"] - got["ddr4"] == pytest.approx(
        curve_ns(ddr5, load) - curve_ns(ddr4, load), rel=0.5)
    with Engine(p5, "h0", mode="virtual", seed=seed) as e:
        r = RefEngine(p5, "h0", seed=seed)
        for x in (e, r):
            x.register_region(1, npages=MIB // PAGE, device_indices=[0], stripe_pages=1)
        charges = [e.access(1, 0, MIB, False) for _ in range(40)]
        assert charges == [r.access(1, 0, MIB, False) for _ in range(40)]


def test_dram_curve_in_a_topology_host_table(tmp_path):
    from fabric import topology as T
    from fabric.errors import InvalidArgument
    f = tmp_path / "t.toml"
    f.write_text('[[host]]\nname = "h0"\ndram_curve = "ddr5-graviton3"\n[[host]]\nname = "h1"\n'
                 '[[device]]\nname = "d0"\ncapacity = "8MiB"\n')
    params = T.load(str(f)).engine_params()
    assert params["hosts"][0]["dram_curve"] == "ddr5-graviton3"
    assert "dram_curve" not in params["hosts"][1]
    for bad, match in (('"ddr9"', r"host h0: .*no built-in curve 'ddr9'"),
                       ("3", r"host h0: dram_curve must be the name of a built-in curve")):
        f.write_text(f'[[host]]\nname = "h0"\ndram_curve = {bad}\n[[device]]\nname = "d0"\n'
                     'capacity = "8MiB"\n')
        with pytest.raises(InvalidArgument, match=match):
            T.load(str(f))
    p = _hit_params()
    p["hosts"][0]["dram_curve"] = 7
    with pytest.raises(InvalidArgument, match="dram_curve"):
        Engine(p, "h0")
