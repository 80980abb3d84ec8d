"""Device and link faults against real clusters: what a workload sees, and healing.

Each fault is written into the cluster's engine segment by fault injection
(another process) and seen by a host's next declared access: device-fail
(DeviceFailed), a dead node's devices (NodeUnavailable), link-cut (LinkDown,
only for hosts whose path crosses the link), link-degrade (the virtual-mode
charge rises, live), link-flap (cut and up in turn), poison (PoisonError with
the global address; a whole-page write clears it), slow (rare long stalls).
Plain ndarray views keep their bytes through every one of them.
"""
from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

import fabric
import fabric.faults as faults
from fabric.errors import (DeviceFailed, InvalidArgument, LinkDown, NodeUnavailable, PoisonError)
from fault_waits import wait_until

PAGE = 4096


def _raises(fn, exc) -> bool:
    try:
        fn()
    except exc:
        return True
    return False


def test_device_fail_and_restore(cluster, fabric_faults):
    f = fabric_faults(cluster.state_dir)
    with cluster.connect("h0") as s:
        r = s.alloc("r", 1 << 20, placement="d1")
        r.write(np.arange(1 << 18, dtype=np.uint32))
        view = r.ndarray(np.uint32, 1 << 18)
        fid = f.inject("device-fail", "d1")
        with pytest.raises(DeviceFailed, match="device d1 has failed"):
            r.read(0, PAGE)
        with pytest.raises(DeviceFailed):
            r.write(b"\xff" * 8, 0)              # refused, and the bytes stay as they were
        with pytest.raises(DeviceFailed):
            with r.reading(np.uint32, 16):
                pass
        with pytest.raises(DeviceFailed):
            r.access(0, 64)
        assert view[0] == 0 and view[5] == 5      # plain views keep their bytes
        states = {d["name"]: d["state"] for d in cluster.status()["devices"]}
        assert states == {"d0": "up", "d1": "failed"}
        with pytest.raises(NodeUnavailable, match="device d1 has failed"):
            s.alloc("more", PAGE, placement="d1")  # placement skips a failed device
        assert f.heal() == {fid: "device-restore"}
        assert (r.read().view(np.uint32) == np.arange(1 << 18, dtype=np.uint32)).all()


def test_dead_node_makes_its_devices_unavailable_until_restart(cluster, fabric_faults):
    f = fabric_faults(cluster.state_dir)
    with cluster.connect("h0") as s:
        r = s.alloc("r", 64 * PAGE, placement="d1")            # d1 is homed on node h1
        local = s.alloc("l", 64 * PAGE, placement="d0")
        r.write(b"x" * 100)
        f.inject("kill", "h1")
        t = wait_until(lambda: _raises(lambda: r.read(0, 100), NodeUnavailable),
                       "d1 unavailable after h1 died", 15.0)
        assert t < 15.0
        local.read(0, PAGE)                                      # d0 is fine
        t0 = time.monotonic()
        with pytest.raises(NodeUnavailable, match="device d1 is unavailable"):
            r.read(0, 100)
        assert time.monotonic() - t0 < 1.0                       # within any deadline
        f.inject("restart", "h1")
        assert bytes(r.read(0, 100)) == b"x" * 100               # usable again at once
        f.heal()


def test_link_cut_hits_only_hosts_whose_path_crosses_it(cluster, fabric_faults):
    f = fabric_faults(cluster.state_dir)
    with cluster.connect("h0") as s0, cluster.connect("h1") as s1:
        r0 = s0.alloc("r", 16 * PAGE, placement="d0", share="shared")
        r1 = s1.open("r")
        f.inject("link-cut", "h0-sw0")                           # h0's uplink
        with pytest.raises(LinkDown, match="link h0-sw0 on the path to device d0 is cut"):
            r0.read(0, PAGE)
        with pytest.raises(NodeUnavailable):                     # LinkDown is one
            r0.read(0, PAGE)
        r1.read(0, PAGE)                                         # h1's path avoids it
        f.heal()
        r0.read(0, PAGE)


def test_link_degrade_is_visible_in_virtual_figures(cluster, fabric_faults):
    f = fabric_faults(cluster.state_dir)
    with cluster.connect("h0", inject="virtual", policy="direct") as s:
        r = s.alloc("r", 64 * PAGE, placement="d0")
        base = [r.access(0, 64 * PAGE) for _ in range(3)]
        fid = f.inject("link-degrade", "sw0-d0", factor=8)
        slow = [r.access(0, 64 * PAGE) for _ in range(3)]
        assert min(slow) > 2 * max(base), (base, slow)            # 63 GB/s / 8 < 26.8 GB/s
        f.heal(fid)
        again = [r.access(0, 64 * PAGE) for _ in range(3)]
        assert max(again) < min(slow)


def test_link_flap_cuts_and_restores_in_turn(cluster, fabric_faults):
    f = fabric_faults(cluster.state_dir)
    with cluster.connect("h0") as s:
        r = s.alloc("r", 16 * PAGE, placement="d0")
        f.inject("link-flap", "sw0-d0", period_s=0.2, seed=1)
        outcomes = set()
        t_end = time.monotonic() + 3.0
        while time.monotonic() < t_end and len(outcomes) < 2:
            try:
                r.read(0, PAGE)
                outcomes.add("ok")
            except LinkDown:
                outcomes.add("down")
            time.sleep(0.01)
        assert outcomes == {"ok", "down"}
        f.heal()
        r.read(0, PAGE)
        time.sleep(0.3)
        r.read(0, PAGE)                                          # the flapper is gone
    assert not [p for p in __import__("psutil").process_iter(["cmdline"])
                if "fabric.faults.device" in (p.info["cmdline"] or [])
                and cluster.state_dir in (p.info["cmdline"] or [])]


def test_poison_names_the_global_address_and_a_full_write_clears_it(cluster, fabric_faults):
    f = fabric_faults(cluster.state_dir)
    with cluster.connect("h0") as s:
        r = s.alloc("r", 16 * PAGE, placement="d0")
        dev, off = s.translate(r.address + 5 * PAGE)
        assert dev == "d0"
        f.inject("poison", "d0", offset=off + 10, length=1)      # widened to the page
        r.read(0, 5 * PAGE)                                      # pages 0..4 are clean
        with pytest.raises(PoisonError) as info:
            r.read(4 * PAGE, 2 * PAGE)
        assert info.value.address == r.address + 5 * PAGE
        assert f"{r.address + 5 * PAGE:#x}" in str(info.value)
        r.write(b"\x01" * 100, 5 * PAGE)                         # partial: still poisoned
        with pytest.raises(PoisonError):
            r.read(5 * PAGE, 1)
        r.write(np.zeros(PAGE, np.uint8), 5 * PAGE)              # whole page: cleared
        r.read(0, 16 * PAGE)
        assert faults.faults(cluster.state_dir)["state"]["devices"] == {}
        f.heal()                                                 # nothing left to clear


def test_slow_device_inflates_the_tail(cluster, fabric_faults):
    f = fabric_faults(cluster.state_dir)
    with cluster.connect("h0", inject="virtual", policy="direct") as s:
        r = s.alloc("r", PAGE, placement="d0")
        f.inject("slow", "d0", p=0.05, stall_us=500)
        for _ in range(1000):
            r.access(0, 64)
        st = s.stats()
        assert st["latency_ns_p50"] < 10_000 and st["latency_ns_max"] >= 500_000
        f.heal()


def test_scheduled_device_fault_heals_itself(cluster):
    with cluster.connect("h0") as s:
        r = s.alloc("r", PAGE, placement="d0")
        assert faults.inject("device-fail", "d0", state_dir=cluster.state_dir, at_s=0.2,
                             for_s=0.5) is None
        wait_until(lambda: _raises(lambda: r.read(0, 1), DeviceFailed), "scheduled failure", 10.0)
        wait_until(lambda: not _raises(lambda: r.read(0, 1), DeviceFailed), "scheduled heal", 10.0)
    log = faults.faults(cluster.state_dir)["log"]
    assert [e["action"] for e in log] == ["schedule", "inject", "heal"]
    assert log[2]["note"] == "device-restore"


@pytest.mark.parametrize("args,message", [
    (["device-fail", "d9"], "unknown device 'd9' (this cluster has: d0, d1)"),
    (["link-cut", "nope"], "unknown link 'nope' (this cluster has: h0-sw0, h1-sw0, sw0-d0, "
                           "sw0-d1)"),
    (["link-degrade", "sw0-d0", "--factor", "0.5"], "--factor must be a number in [1, 1e+06]"),
    (["poison", "d0", "--offset", "64MiB"], "--offset 67108864 is outside device d0"),
    (["poison", "d0", "--offset", "64MiB", "--length", "0"], "--offset 67108864 is outside"),
    (["poison", "d0", "--offset", "0", "--length", "65MiB"], "runs past the end of device d0"),
    (["slow", "d0", "--p", "2"], "--p must be a number in (0, 1]"),
    (["slow", "d0", "--stall-us", "-5"], "--stall-us must be a number in (0, 1e+08]"),
    (["link-flap", "sw0-d0", "--period", "0"], "--period must be a number in [0.02, 3600]"),
    (["device-fail", "d0", "--for", "-1"], "must be >= 0 seconds"),
    (["device-restore", "d0", "--for", "1"], "unrecognized arguments: --for"),
])
def test_cli_refuses_bad_fault_commands_in_one_line(cluster, args, message):
    out = subprocess.run([sys.executable, "-m", "fabric", "fault", *args, "--state-dir",
                          cluster.state_dir], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    err = out.stderr.strip()
    assert message in err and len(err.splitlines()) <= 2, err
    assert not faults.faults(cluster.state_dir)["active"]


def test_cli_device_faults_inject_list_heal(cluster):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "fabric", "fault", *args, "--state-dir",
                               cluster.state_dir], capture_output=True, text=True, timeout=60)
    assert run("device-fail", "d1").returncode == 0
    assert run("link-degrade", "sw0-d0", "--factor", "3").returncode == 0
    assert run("poison", "d0", "--offset", "8KiB").returncode == 0
    out = run("list").stdout
    assert "device d1: failed" in out and "link sw0-d0: up, factor 3" in out
    assert "poisoned: [8192, 12288)" in out
    healed = run("heal").stdout
    assert "device-restore" in healed and "link-undegrade" in healed and "unpoison" in healed
    assert faults.faults(cluster.state_dir)["state"] == {"devices": {}, "links": {}}


def test_api_refuses_options_a_kind_does_not_take(cluster):
    with pytest.raises(InvalidArgument, match="link-cut takes no options"):
        faults.inject("link-cut", "sw0-d0", state_dir=cluster.state_dir, params={"factor": 2})
    with pytest.raises(InvalidArgument, match="kill takes no options"):
        faults.inject("kill", "h1", state_dir=cluster.state_dir, params={"factor": 2})
