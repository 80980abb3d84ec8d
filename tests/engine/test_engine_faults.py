"""Fault state in the shared segment, through the engine, against the reference.

The segment holds per device a state (up / unavailable / failed), a slow-device
stall setting and a table of poisoned ranges, and per link a state (up / cut)
and a degrade factor (csrc/seg.c "Faults").  These tests drive both the C
engine and the pure-Python reference through random traces while random
faults come and go (link degrades, slow devices, poison, failed and
unavailable devices, cut links) and demand the same charges, the same
refusals (code, device, link, offset), the same counters and the same poison
left behind, bit for bit.  A failure names its seed (FABRIC_TEST_SEED replays it).
"""
from __future__ import annotations

import random

import pytest

from fabric import errors
from fabric.engine import Engine, create_shared_state, engine_params_for_test
from fabric.engine._reference import RefEngine, RefFault, RefSegment

from test_engine_diff import MESS, _compare, _trace  # same directory (rootdir on sys.path)

PAGE = 4096
CODE_OF = {errors.DeviceFailed: "EFAILED", errors.LinkDown: "ELINKDOWN",
           errors.PoisonError: "EPOISON", errors.NodeUnavailable: "EUNAVAIL"}


def _params(**kw):
    base = dict(hosts=2, devices=3, cache_pages=24, device_curve=MESS, link_latency_ns=20.0,
                jitter={"kind": "lognormal", "sigma": 0.3})
    base.update(kw)
    return engine_params_for_test(**base)


def _code(exc: errors.FabricError) -> str:
    for cls in (errors.LinkDown, errors.DeviceFailed, errors.PoisonError, errors.NodeUnavailable):
        if isinstance(exc, cls):
            return CODE_OF[cls]
    raise AssertionError(f"not a fault error: {exc!r}")


def _random_fault(rnd: random.Random, segs, ndev: int, nlinks: int, dev_bytes: int) -> str:
    """Apply the same random fault change to every segment in ``segs``; say what it was."""
    roll = rnd.random()
    if roll < 0.25:
        link, k = rnd.randrange(nlinks), rnd.choice([1.0, 1.0, 2.0, 4.0, 7.5])
        for s in segs:
            s.set_link(link, "up", k)
        return f"degrade link {link} x{k}"
    if roll < 0.4:
        dev, p = rnd.randrange(ndev), rnd.choice([0.0, 0.05, 0.5])
        for s in segs:
            s.set_device_slow(dev, p, 50_000)
        return f"slow {dev} p={p}"
    if roll < 0.7:
        dev = rnd.randrange(ndev)
        off = rnd.randrange(dev_bytes // PAGE) * PAGE
        n = rnd.randrange(1, 4) * PAGE
        if rnd.random() < 0.7:
            if len(segs[1].poison[dev]) < 12:
                for s in segs:
                    s.poison_add(dev, off, n)
                return f"poison {dev} {off}+{n}"
            return "poison table nearly full: nothing"
        for s in segs:
            s.poison_clear(dev, off, n)
        return f"clear {dev} {off}+{n}"
    if roll < 0.85:
        dev, st = rnd.randrange(ndev), rnd.choice(["up", "up", "failed", "unavailable"])
        for s in segs:
            s.set_device_state(dev, st)
        return f"device {dev} {st}"
    link, st = rnd.randrange(nlinks), rnd.choice(["up", "up", "cut"])
    for s in segs:
        s.set_link(link, st, 1.0)
    return f"link {link} {st}"


@pytest.mark.parametrize("policy", ["cache", "direct"])
def test_faulted_trace_matches_reference(policy, seed, tmp_path):
    """Two hosts on one segment, a striped region, random faults between accesses."""
    params = _params()
    path = str(tmp_path / "engine.seg")
    create_shared_state(path, params)
    rseg = RefSegment(params)
    rnd = random.Random(seed)
    npages, offs = 48, [0, 64 * PAGE, 8 * PAGE]
    cs = [Engine(params, f"h{i}", seed=seed, shared_path=path) for i in range(2)]
    rs = [RefEngine(params, f"h{i}", seed=seed, segment=rseg) for i in range(2)]
    seg = cs[0].segment
    refused = {}
    try:
        for c, r in zip(cs, rs):
            c.register_region(5, npages=npages, device_indices=[0, 1, 2], stripe_pages=4,
                              policy=policy, device_offsets=offs, address=1 << 30)
            r.register_region(5, npages=npages, device_indices=[0, 1, 2], stripe_pages=4,
                              policy=policy, device_offsets=offs)
        for i, (off, nbytes, write) in enumerate(_trace(rnd, npages, PAGE, 600)):
            if rnd.random() < 0.1:
                what = _random_fault(rnd, [seg, rseg], 3, len(params["links"]), 128 * PAGE)
            h = rnd.randrange(2)
            try:
                a = cs[h].access(5, off, nbytes, write)
            except errors.FabricError as exc:
                a = exc
            try:
                b = rs[h].access(5, off, nbytes, write)
            except RefFault as exc:
                b = exc
            where = f"seed {seed}: access {i} by h{h} ({off}+{nbytes} {'w' if write else 'r'})"
            if isinstance(b, RefFault):
                assert isinstance(a, errors.FabricError), f"{where}: C gave {a}, ref {b.args}"
                assert _code(a) == b.code, f"{where}: {a} vs {b.args}"
                assert params["devices"][b.dev]["name"] in str(a), where
                if b.code == "EPOISON":
                    assert a.address == (1 << 30) + b.offset, where
                if b.code == "ELINKDOWN":
                    assert params["links"][b.link]["name"] in str(a), where
                refused[b.code] = refused.get(b.code, 0) + 1
            else:
                assert a == b, f"{where}: {a} vs {b}"
            for d in range(3):
                assert [tuple(x) for x in seg.device_faults(d)["poison"]] == rseg.poison[d], \
                    f"{where}: poison of device {d} differs"
        for h in range(2):
            _compare(cs[h], rs[h], f"seed {seed} h{h}")
            cs[h].check_consistency()
        assert sum(refused.values()) > 0, f"seed {seed}: the faults should refuse some accesses"
    finally:
        for c in cs:
            c.close()


def test_degraded_link_changes_virtual_figures():
    """A degraded link (latency x k, bandwidth / k) raises the charge of the same access
    by the predicted amount, live, and restoring it gives back the exact old charge."""
    params = engine_params_for_test(hosts=1, devices=1, cache_pages=0, link_latency_ns=50.0)
    with Engine(params, "h0") as e:
        e.register_region(1, npages=16, device_indices=[0], stripe_pages=16, policy="direct")
        base = e.access(1, 0, 16 * PAGE, False)
        e.segment.set_link(1, "up", 4.0)            # sw-d0: the device's link
        slow = e.access(1, 0, 16 * PAGE, False)
        # the path's idle latency (226 here) gains sw-d0's 50 ns x (4 - 1)
        assert e.loaded_latency_ns(0) == 226.0 + 50.0 * 3
        e.segment.set_link(1, "up", 1.0)
        again = e.access(1, 0, 16 * PAGE, False)
    # 16 pages at 31.5/4 GB/s instead of the 26.8 GB/s device: the transfer term grows
    assert slow > base + (16 * PAGE / (31.5 / 4) - 16 * PAGE / 26.8) * 0.9
    assert again == base


def test_slow_device_inflates_the_tail_seeded():
    """Rare long stalls show in p99 but not p50; the same seed gives the same figures."""
    params = engine_params_for_test(hosts=1, devices=1, cache_pages=0)

    def run(seed: int) -> dict:
        with Engine(params, "h0", seed=seed) as e:
            e.register_region(1, npages=1, device_indices=[0], stripe_pages=1, policy="direct")
            e.segment.set_device_slow(0, 0.02, 1_000_000)
            for _ in range(2000):
                e.access(1, 0, 64, False)
            return e.stats()

    a, b = run(3), run(3)
    assert a["latency_ns_p50"] < 1000 and a["latency_ns_p99"] >= 1_000_000
    assert (a["latency_ns_p99"], a["latency_ns_mean"]) == \
        (b["latency_ns_p99"], b["latency_ns_mean"])


def test_refused_access_changes_nothing():
    """An access refused by a fault charges nothing and moves no counter."""
    params = engine_params_for_test(hosts=1, devices=2)
    with Engine(params, "h0") as e:
        e.register_region(1, npages=8, device_indices=[0, 1], stripe_pages=1,
                          device_offsets=[0, 0])
        e.access(1, 0, 8 * PAGE, False)
        before = e.stats()
        e.segment.set_device_state(1, "failed")
        with pytest.raises(errors.DeviceFailed, match="device d1 has failed"):
            e.access(1, 0, 8 * PAGE, False)
        assert e.access(1, 0, PAGE, False) > 0            # page 0 is on d0: still served
        e.segment.set_device_state(1, "up")
        after = e.stats()
        assert after["calls"] == before["calls"] + 1
        e.check_consistency()


def test_poison_table_is_bounded_and_merges():
    params = engine_params_for_test(hosts=1, devices=1)
    with Engine(params, "h0") as e:
        s = e.segment
        s.poison_add(0, 0, PAGE)
        s.poison_add(0, PAGE, PAGE)                        # touches: merged
        assert s.device_faults(0)["poison"] == [(0, 2 * PAGE)]
        for i in range(15):
            s.poison_add(0, (10 + 2 * i) * PAGE, PAGE)
        with pytest.raises(errors.ResourceExhausted, match="poison table is full"):
            s.poison_add(0, 100 * PAGE, PAGE)
        with pytest.raises(errors.ResourceExhausted, match="split"):
            s.poison_clear(0, PAGE // 2, 1)                # splitting needs a free entry
        s.poison_clear(0, 0, 200 * PAGE)
        assert s.device_faults(0)["poison"] == []
        with pytest.raises(errors.InvalidArgument):
            s.set_link(0, "up", 0.5)
        with pytest.raises(errors.InvalidArgument):
            s.set_device_slow(0, 1.5, 10)
        with pytest.raises(errors.InvalidArgument):
            s.set_device_state(0, "melted")
