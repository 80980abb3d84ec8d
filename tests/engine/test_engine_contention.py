"""Contention through the shared segment, and loaded latency along a curve.

- k = 1, 2, 4 real processes (multiprocessing, spawn) stream through one link
  of a shared segment; each gets about 1/k of the link's bandwidth, measured in
  the engine's own accounting (bytes / charged ns), never in wall-clock speed.
- A host driving a device at a known rate sees the loaded latency the
  device's bandwidth-latency curve gives at that rate (within 10%); two hosts
  of one segment add up their loads.
"""
from __future__ import annotations

import pytest

from fabric.engine import Engine, create_shared_state, engine_params_for_test, read_shared_stats
from fabric.engine._reference import curve_ns

from engine_procs import run_procs, stream

LINK_GBPS = 31.5       # PCIe 5.0 / CXL 2.0 x8: 32 GT/s x 8 lanes, 128b/130b
MIB = 1 << 20
# The Micron CXL device model of the Mess benchmark (Esmaili-Dokht et al., MICRO 2024):
# 226 ns idle, 239 ns at 21 GB/s, 285 ns at 26.7 GB/s, ~1285 ns past saturation.
MESS_POINTS = [[0.0, 226.0], [14.7, 232.0], [21.0, 239.0], [26.7, 285.0], [26.8, 1285.0]]
MESS_CURVE = {"read_pct": [100], "points": [MESS_POINTS]}


def _stream_params(hosts: int) -> dict:
    # Fast devices and a huge MLP: the shared link sw-d0 is the only bottleneck.
    return engine_params_for_test(hosts=hosts, devices=1, cache_pages=0,
                                  device_bandwidth_gbps=1000.0, link_bandwidth_gbps=LINK_GBPS,
                                  engine={"mlp_lines": 1024})


@pytest.mark.timeout(60)
@pytest.mark.parametrize("k", [1, 2, 4])
def test_k_processes_share_one_link(k, tmp_path):
    params = _stream_params(k)
    seg = str(tmp_path / "engine.seg")
    create_shared_state(seg, params)
    results = run_procs(stream, [(params, f"h{i}", seg, "direct", 0.7, (0.15, 0.6))
                                 for i in range(k)], 45, barrier=True)
    for host, nbytes, charged in results:
        assert nbytes > 0 and charged > 0, f"{host} measured nothing"
        got_gbps = nbytes / charged
        want = LINK_GBPS / k
        assert abs(got_gbps - want) / want < 0.2, (
            f"k={k}: {host} got {got_gbps:.2f} GB/s of the link, want ~{want:.2f} (1/k)")
    stats = read_shared_stats(seg, params)
    assert stats["links"]["sw-d0"]["bytes_total"] >= sum(r[1] for r in results)
    assert all(stats["hosts"][f"h{i}"]["calls"] > 0 for i in range(k))


def _drive(engines, region: int, rate_gbps_each: float, accesses: int) -> None:
    """Each engine reads 1 MiB then thinks, so that it offers rate_gbps_each."""
    period = MIB / rate_gbps_each
    for _ in range(accesses):
        for e in engines:
            c = e.access(region, 0, MIB, False)
            if c < period:
                e.advance(int(period - c))


def _curve_params(hosts: int = 1) -> dict:
    # Path latency = the curve's idle point; links far faster than the device.
    return engine_params_for_test(hosts=hosts, devices=1, cache_pages=0, read_ns=226.0,
                                  device_bandwidth_gbps=26.8, link_bandwidth_gbps=10_000.0,
                                  device_curve=MESS_CURVE, engine={"mlp_lines": 1024})


@pytest.mark.parametrize("load_gbps", [5.0, 14.7, 18.0, 21.0, 24.0, 26.0])
def test_loaded_latency_follows_the_curve(load_gbps):
    with Engine(_curve_params(), "h0", mode="virtual") as e:
        e.register_region(1, npages=256, device_indices=[0], stripe_pages=1, policy="direct")
        _drive([e], 1, load_gbps, 60)
        want = curve_ns(MESS_POINTS, load_gbps)
        got = e.loaded_latency_ns(0)
        assert abs(got - want) / want < 0.10, f"at {load_gbps} GB/s: {got:.1f} ns, curve {want:.1f}"
        # What an access is charged carries the same latency: one page, one round.
        probe = e.access(1, 0, 4096, False)
        xfer = 4096 / 26.8
        assert abs((probe - xfer) - want) / want < 0.10


def test_two_hosts_add_their_loads(tmp_path):
    params = _curve_params(hosts=2)
    seg = str(tmp_path / "engine.seg")
    create_shared_state(seg, params)
    with Engine(params, "h0", shared_path=seg) as a, Engine(params, "h1", shared_path=seg) as b:
        for e in (a, b):
            e.register_region(1, npages=256, device_indices=[0], stripe_pages=1, policy="direct")
        _drive([a, b], 1, 12.0, 60)               # 2 x 12 = 24 GB/s on the device
        want = curve_ns(MESS_POINTS, 24.0)
        for e in (a, b):
            got = e.loaded_latency_ns(0)
            assert abs(got - want) / want < 0.10, f"{e.host}: {got:.1f} ns, curve(24) {want:.1f}"
        alone = curve_ns(MESS_POINTS, 12.0)
        assert a.loaded_latency_ns(0) > alone + 0.5 * (want - alone)
        stats = read_shared_stats(seg, params)
        assert stats["devices"]["d0"]["bytes_total"] > 0


def test_two_hosts_split_a_saturated_link(tmp_path):
    """In one process, virtual mode: two hosts streaming flat out share the link half and half."""
    params = _stream_params(2)
    seg = str(tmp_path / "engine.seg")
    create_shared_state(seg, params)
    with Engine(params, "h0", shared_path=seg) as a, Engine(params, "h1", shared_path=seg) as b:
        for e in (a, b):
            e.register_region(1, npages=256, device_indices=[0], stripe_pages=1, policy="direct")
        for _ in range(20):                       # warm up: rates published, sharers seen
            a.access(1, 0, MIB, False)
            b.access(1, 0, MIB, False)
        ta, tb = a.virtual_time_ns, b.virtual_time_ns
        for _ in range(50):
            a.access(1, 0, MIB, False)
            b.access(1, 0, MIB, False)
        for e, t in ((a, ta), (b, tb)):
            gbps = 50 * MIB / (e.virtual_time_ns - t)
            assert abs(gbps - LINK_GBPS / 2) / (LINK_GBPS / 2) < 0.1, f"{e.host}: {gbps:.2f} GB/s"


def test_queueing_without_a_curve():
    """No curve: M/M/1-style rise of the device's idle latency, capped at queue_max_factor."""
    params = engine_params_for_test(cache_pages=0, read_ns=200.0, device_bandwidth_gbps=20.0,
                                    link_bandwidth_gbps=10_000.0,
                                    engine={"mlp_lines": 1024, "queue_max_factor": 4.0})
    with Engine(params, "h0") as e:
        e.register_region(1, npages=256, device_indices=[0], stripe_pages=1, policy="direct")
        assert e.loaded_latency_ns(0) == pytest.approx(200.0)
        _drive([e], 1, 10.0, 60)                  # rho = 0.5: about twice idle
        base = 200.0 + 64 / 20.0
        assert e.loaded_latency_ns(0) == pytest.approx(200.0 + base * (2.0 - 1.0), rel=0.05)
        _drive([e], 1, 100.0, 60)                 # flat out: rho -> 1, capped at 4x
        assert e.loaded_latency_ns(0) == pytest.approx(200.0 + base * 3.0)   # the cap
        assert e.loaded_latency_ns(0) > 200.0 + base * 2.0
