"""Cost-model fidelity: `fabric validate`, the new presets and kinds, the DRAM curve, spin warnings.

- `fabric validate` computes every point by running the engine (a point with a
  deliberately wrong published value fails and the command exits non-zero), and
  its --json output has a fixed schema;
- the memory-box preset and the x8/x16 expander kinds parse and render;
- a `dram` device's loaded latency follows its measured DDR4 curve up to 90% of
  peak (virtual mode, one process);
- spin mode warns (SpinOvercommitWarning, and one stderr line from `fabric up`)
  when more processes spin than there are cores, and not when cores suffice.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import pytest

import fabric
from fabric.engine import Engine
from fabric.engine import validate as V
from fabric.errors import InvalidArgument, SpinOvercommitWarning
from fabric.topology import load
from fabric.topology.curves import builtin_curve

MIB = 1 << 20


def run_cli(*args, state_dir=None, timeout=120):
    env = dict(os.environ)
    env.pop("FABRIC_STATE_DIR", None)
    if state_dir:
        env["FABRIC_STATE_DIR"] = state_dir
    return subprocess.run([sys.executable, "-m", "fabric", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def _points_file(tmp_path, body: str):
    path = tmp_path / "points.toml"
    path.write_text(body)
    return str(path)


# -- fabric validate -------------------------------------------------------------

def test_shipped_points_cover_the_brief():
    points = V.load_points()
    ids = {p.id for p in points}
    assert len(points) >= 12
    for want in ("dram-idle", "numa-idle", "cxl-x8-idle", "cxl-x16-idle", "switch-hop",
                 "memory-box-idle", "cxl-seq-read-bw", "cxl-x8-mixed-bw", "ucie-d2d-latency",
                 "ucie-x16-bw", "rdma-read-latency", "rdma-read-bw"):
        assert want in ids
    assert sum(p.method == "loaded" and p.setup == "dram-direct" for p in points) >= 3
    assert sum(p.method == "loaded" and p.setup.startswith("cxl") for p in points) >= 3
    assert all(p.source for p in points)


def test_points_are_computed_by_the_engine():
    """Change the topology the engine sees and the figure moves: nothing is read back."""
    [p] = [p for p in V.load_points() if p.id == "memory-box-idle"]
    base = V.measure(p)
    assert base == pytest.approx(596, abs=3)       # 280 + 90 + 226, one 64 B line on top
    # The same preset with a faster appliance: the engine's charge follows.
    topo = load("memory-box", hosts=1, devices=1, device_size="64MiB")
    params = topo.engine_params()
    params["paths"][0][0]["latency_read_ns"] -= 100.0
    with Engine(params, "h0", mode="virtual") as e:
        e.register_region(1, npages=16, device_indices=[0], stripe_pages=1, policy="direct")
        assert e.access(1, 0, 64, False) == pytest.approx(base - 100, abs=1)
    # A stream is bandwidth over charged time, not the path's bandwidth figure.
    [s] = [p for p in V.load_points() if p.id == "cxl-seq-read-bw"]
    gbps = V.measure(s)
    assert 0 < gbps < 26.8


def test_a_wrong_published_value_fails_and_exits_nonzero(tmp_path):
    good = _points_file(tmp_path, """
[[point]]
id = "dram-idle"
what = "local DRAM idle"
setup = "dram-direct"
method = "idle"
unit = "ns"
published = 94.2
source = "Mess"
""")
    r = V.run(V.load_points(good))
    assert r["ok"] and r["passed"] == 1
    p = run_cli("validate", "--points", good)
    assert p.returncode == 0, p.stderr
    assert "dram-idle" in p.stdout and "ok" in p.stdout

    wrong = _points_file(tmp_path, open(good).read().replace("published = 94.2", "published = 300"))
    r = V.run(V.load_points(wrong))
    assert not r["ok"] and r["failed"] == 1
    assert r["points"][0]["ratio"] == pytest.approx(91 / 300, rel=0.02)
    p = run_cli("validate", "--points", wrong)
    assert p.returncode == 1
    assert "OUTSIDE" in p.stdout
    assert p.stderr.strip().splitlines() == ["fabric validate: 1 of 1 points outside their tolerance"]
    # A looser tolerance lets it pass: the threshold is the option's.
    assert run_cli("validate", "--points", wrong, "--tolerance", "0.9").returncode == 0


def test_validate_json_schema(tmp_path):
    path = _points_file(tmp_path, """
[[point]]
id = "x8"
what = "x8 idle"
setup = "cxl-x8-direct"
method = "idle"
unit = "ns"
published_range = [140, 410]
source = "Melody"

[[point]]
id = "bw"
what = "seq read"
setup = "cxl-micron-direct"
method = "stream"
mix = [1, 0]
unit = "GB/s"
published = 40.0
source = "Mess at 50% reads, measured with reads only: cannot pass"
needs = "a read/write mix"
""")
    p = run_cli("validate", "--points", path, "--json")
    out = json.loads(p.stdout)
    assert out["schema"] == 1 and out["tolerance"] == 0.15 and out["seed"] == 0
    assert set(out) == {"schema", "tolerance", "seed", "passed", "failed", "ok", "points"}
    keys = {"id", "what", "unit", "setup", "method", "emulator", "published", "published_range",
            "ratio", "tolerance", "ok", "source", "needs"}
    assert all(set(pt) == keys for pt in out["points"])
    x8, bw = out["points"]
    assert x8["published_range"] == [140.0, 410.0] and x8["published"] is None and x8["ratio"] == 1.0
    assert bw["ok"] is False and out["ok"] is False and p.returncode == 1   # 26.8 of 40
    assert bw["needs"] == "a read/write mix"
    assert out["passed"] + out["failed"] == 2


@pytest.mark.parametrize("body, msg", [
    ('id = "a"\nwhat = "w"\nsetup = "nope"\nmethod = "idle"\nunit = "ns"\npublished = 1\nsource = "s"',
     "setup 'nope'"),
    ('id = "a"\nwhat = "w"\nsetup = "numa"\nmethod = "idle"\nunit = "ns"\nsource = "s"',
     "published"),
    ('id = "a"\nwhat = "w"\nsetup = "numa"\nmethod = "guess"\nunit = "ns"\npublished = 1\nsource = "s"',
     "method 'guess'"),
    ('id = "a"\nwhat = "w"\nsetup = "numa"\nmethod = "loaded"\nunit = "ns"\npublished = 1\nsource = "s"',
     "load_gbps"),
    ('id = "a"\nwhat = "w"\nsetup = "numa"\nmethod = "idle"\nunit = "ns"\npublished = 1\nsource = "s"\n'
     'colour = 1', "unknown key 'colour'"),
])
def test_bad_points_file_is_one_line_error(tmp_path, body, msg):
    path = _points_file(tmp_path, "[[point]]\n" + body + "\n")
    with pytest.raises(InvalidArgument, match=msg):
        V.load_points(path)
    p = run_cli("validate", "--points", path)
    assert p.returncode == 1 and len(p.stderr.strip().splitlines()) == 1
    assert p.stderr.startswith("fabric: error: ")


# -- presets and kinds -------------------------------------------------------------

def test_memory_box_preset_parses_and_renders():
    topo = load("memory-box", hosts=2, devices=3, device_size="64MiB")
    assert [p.latency_read_ns for p in topo.paths[0]] == [596.0] * 3
    assert {s.kind for s in topo.switches} == {"appliance", "cxl"}
    assert all(d.kind == "cxl-x8" for d in topo.devices)
    p = run_cli("topo", "show", "memory-box")
    assert p.returncode == 0, p.stderr
    assert "appliance" in p.stdout and "596 F" in p.stdout
    js = json.loads(run_cli("topo", "show", "memory-box", "--json").stdout)
    assert js["schema"] == 1


def test_expander_kinds_by_link_width(tmp_path):
    path = tmp_path / "x.toml"
    path.write_text("""
[[host]]
name = "h0"
[[device]]
name = "a"
kind = "cxl-x8"
[[device]]
name = "b"
kind = "cxl-x16"
[[device]]
name = "c"
kind = "cxl-micron"
[[switch]]
name = "box"
kind = "appliance"
[[link]]
ends = ["h0", "box"]
[[link]]
ends = ["box", "a"]
lanes = 8
[[link]]
ends = ["box", "b"]
[[link]]
ends = ["box", "c"]
""")
    topo = load(str(path))
    a, b, c = topo.devices
    assert (a.bandwidth_gbps, b.bandwidth_gbps, c.bandwidth_gbps) == (36.0, 60.0, 26.8)
    assert a.curve.source == "builtin:cxl-x8" and b.curve.source == "builtin:cxl-x16"
    assert topo.switches[0].latency_ns == pytest.approx(280.0)
    assert topo.path("h0", "a").latency_read_ns == pytest.approx(506.0)
    assert topo.path("h0", "a").bandwidth_gbps == pytest.approx(31.5)   # the x8 link
    assert all(d.write_ns == d.read_ns for d in topo.devices)          # RFO: writes cost a read


def test_dram_devices_default_to_the_ddr4_curve():
    topo = load("numa", hosts=1, devices=1, device_size="64MiB")
    assert topo.devices[0].curve.source == "builtin:ddr4-skylake"
    assert topo.engine_params()["devices"][0]["curve"]["points"][0][0] == [0.0, 94.2]


@pytest.mark.parametrize("fraction", [0.1, 0.3, 0.5, 0.7, 0.9])
def test_dram_loaded_latency_follows_its_curve(fraction):
    """Up to 90% of peak, a dram device's loaded latency is within 10% of its curve."""
    topo = V._setups()["dram-direct"]()
    dev = topo.devices[0]
    curve = builtin_curve("ddr4-skylake")
    load_gbps = fraction * dev.bandwidth_gbps
    got = V._loaded_ns(topo, 0, load_gbps)
    # The path's idle latency plus the curve's rise above its own idle point.
    want = dev.read_ns + curve.latency_ns(load_gbps) - curve.idle_ns()
    assert abs(got - want) / want < 0.10, f"at {load_gbps:.1f} GB/s: {got:.1f} ns, curve {want:.1f}"
    # And not the old M/M/1 fallback, which is ~2x at half load.
    if fraction == 0.5:
        assert got < 1.3 * dev.read_ns


# -- spin warning --------------------------------------------------------------------

def _one_core():
    """Pin this process (and so its children) to one CPU; returns the old affinity."""
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(old)})
    return old


def test_spin_warns_when_processes_outnumber_cores(cluster):
    with warnings.catch_warnings():
        warnings.simplefilter("error", SpinOvercommitWarning)
        with fabric.connect("h0", state_dir=cluster.state_dir, inject="spin") as s:  # 1 spinner
            assert s.inject == "spin"
    old = _one_core()
    child = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", SpinOvercommitWarning)
            # One spinner on one core: enough.
            with fabric.connect("h0", state_dir=cluster.state_dir, inject="spin"):
                pass
            # A virtual-mode process beside it does not count.
            with fabric.connect("h0", state_dir=cluster.state_dir, inject="virtual"), \
                    fabric.connect("h1", state_dir=cluster.state_dir, inject="spin"):
                pass
        # Another process spins as h1 and stays attached: two spinners, one core.
        code = ("import sys, fabric\n"
                f"s = fabric.connect('h1', state_dir={cluster.state_dir!r}, inject='spin')\n"
                "print('ready', flush=True)\nsys.stdin.readline()\ns.close()\n")
        child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ready"
        with pytest.warns(SpinOvercommitWarning, match="core per spinning host"):
            with fabric.connect("h0", state_dir=cluster.state_dir, inject="spin"):
                pass
    finally:
        os.sched_setaffinity(0, old)
        if child is not None:
            child.stdin.write("\n")
            child.stdin.flush()
            child.wait(timeout=30)


def test_fabric_up_spin_warns_on_stderr(state_dir):
    old = _one_core()
    try:
        p = run_cli("up", "--hosts", "2", "--devices", "1", "--device-size", "16MiB",
                    "--inject", "spin", "--state-dir", state_dir)
    finally:
        os.sched_setaffinity(0, old)
    try:
        assert p.returncode == 0, p.stderr
        warn = [ln for ln in p.stderr.splitlines() if "warning" in ln]
        assert len(warn) == 1 and warn[0].startswith("fabric up: warning: spin mode needs a core")
        assert "2 hosts would spin on 1 core" in warn[0]
    finally:
        assert run_cli("down", "--state-dir", state_dir).returncode == 0
    # Enough cores: no warning.
    p = run_cli("up", "--hosts", "1", "--devices", "1", "--device-size", "16MiB",
                "--inject", "spin", "--state-dir", state_dir)
    try:
        assert p.returncode == 0, p.stderr
        assert "warning" not in p.stderr
    finally:
        assert run_cli("down", "--state-dir", state_dir).returncode == 0
