"""Topology: presets and their published numbers, the TOML format and its errors,
path derivation, curves (built in, inline, Mess directories), serialisation and
the engine contract.  No daemons; everything here runs in well under a second."""
from __future__ import annotations

import glob
import json
import os

import msgpack
import pytest

from fabric import topology as T
from fabric.topology.curves import MAX_CURVE_POINTS
from fabric.topology.kinds import lane_bandwidth_gbps
from fabric.errors import InvalidArgument

EXAMPLES = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "examples", "topologies")


def write(tmp_path, text: str, name: str = "topo.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def flat(points) -> list[float]:
    """((b, l), ...) -> [b, l, ...], for pytest.approx (which does not nest)."""
    return [x for pair in points for x in pair]


# -- presets ---------------------------------------------------------------------

def test_presets_listed_with_descriptions():
    assert set(T.PRESETS) == {"switched-pool", "direct", "numa", "rdma", "ucie", "memory-box"}
    assert all(isinstance(v, str) and v for v in T.PRESETS.values())
    assert T.DEFAULT_PRESET == "switched-pool"


@pytest.mark.parametrize("name", sorted(T.PRESETS))
@pytest.mark.parametrize("hosts,devices", [(1, 1), (3, 5)])
def test_every_preset_builds_for_any_size(name, hosts, devices):
    topo = T.load(name, hosts=hosts, devices=devices, device_size="64MiB")
    assert topo.host_names == [f"h{i}" for i in range(hosts)]
    assert [d.name for d in topo.devices] == [f"d{i}" for i in range(devices)]
    assert all(d.capacity_bytes == 64 * 1024**2 for d in topo.devices)
    assert len(topo.paths) == hosts and all(len(row) == devices for row in topo.paths)
    assert topo.source == f"preset:{name}" and topo.name == name


def test_default_is_switched_pool_with_published_numbers():
    topo = T.load()
    assert topo.name == "switched-pool"
    assert topo.host_names == ["h0", "h1"] and len(topo.devices) == 2
    # Devices homed round-robin over hosts.
    assert [d.home for d in topo.devices] == ["h0", "h1"]
    p = topo.path("h0", "d1")
    assert p.latency_read_ns == pytest.approx(226 + 90)        # Micron model + one switch hop
    assert p.hops == ("h0", "sw0", "d1") and p.tier == "far"
    links = {link.name: link for link in topo.links}
    assert links["h0-sw0"].bandwidth_gbps == pytest.approx(31.5)  # PCIe5 / CXL 2.0 x8
    assert links["sw0-d0"].bandwidth_gbps == pytest.approx(63.0)  # x16
    assert p.bandwidth_gbps == pytest.approx(26.8)                # Micron device saturates first
    assert topo.devices[0].curve is not None


def test_direct_preset_own_device_226_others_remote():
    topo = T.load("direct", hosts=2, devices=2)
    own, other = topo.path("h0", "d0"), topo.path("h0", "d1")
    assert own.latency_read_ns == pytest.approx(226) and own.tier == "far"
    assert own.bandwidth_gbps == pytest.approx(26.8)
    assert other.tier == "remote" and "h1" in other.hops         # h1's daemon serves it
    assert 1000 < other.latency_read_ns < 10000


def test_numa_rdma_ucie_numbers():
    numa = T.load("numa").path("h0", "d0")
    assert 133 <= numa.latency_read_ns <= 140 and numa.tier == "far"
    rdma_topo = T.load("rdma", hosts=2, devices=2)
    rdma = rdma_topo.path("h1", "d0")
    page_ns = rdma.latency_read_ns + 4096 / rdma.bandwidth_gbps  # GB/s == bytes/ns
    assert 1000 <= page_ns < 10000 and rdma.tier == "remote"      # Hydra: single-digit us per page
    assert [n.name for n in rdma_topo.nodes if not n.is_host] == ["m0", "m1"]
    assert rdma_topo.device("d1").home == "m1"
    ucie = T.load("ucie").path("h0", "d0")
    assert 90 < ucie.latency_read_ns < 110 and ucie.tier == "local"
    assert ucie.bandwidth_gbps == pytest.approx(64.0)             # UCIe x16 at 32 GT/s


def test_preset_sizes_and_errors():
    assert len(T.load("numa", hosts=3).devices) == 3               # one device per host by default
    with pytest.raises(InvalidArgument, match="--hosts"):
        T.load("direct", hosts=0)
    with pytest.raises(InvalidArgument, match="--devices"):
        T.load(devices=MAXP1())
    with pytest.raises(InvalidArgument, match="preset"):
        T.load("no-such-preset")
    with pytest.raises(InvalidArgument, match="unknown preset"):
        T.generate(2, preset="nope")


def MAXP1() -> int:
    return T.MAX_DEVICES + 1


# -- bandwidth from generation and lanes ---------------------------------------------

@pytest.mark.parametrize("kind,kw,gbps", [
    ("cxl", {"gen": "2.0", "lanes": 8}, 31.5),
    ("cxl", {"gen": "2.0", "lanes": 16}, 63.0),
    ("cxl", {"gen": "1.1", "lanes": 16}, 63.0),
    ("cxl", {"gen": "3.1", "lanes": 16}, 118.0),
    ("pcie", {"gen": "5", "lanes": 8}, 31.5),
    ("pcie", {"gen": "4", "lanes": 16}, 31.5),                   # half of PCIe 5
    ("pcie", {"gen": "6", "lanes": 16}, 118.0),
    ("ucie", {"rate_gts": 32, "lanes": 16}, 64.0),
    ("ucie", {"rate_gts": 16, "lanes": 64}, 128.0),
])
def test_lane_bandwidth(kind, kw, gbps):
    assert lane_bandwidth_gbps(kind, **kw) == pytest.approx(gbps)


def test_link_bandwidth_derived_in_file(tmp_path):
    topo = T.load(write(tmp_path, """
[[host]]
name = "h0"
[[switch]]
name = "sw0"
[[device]]
name = "d0"
[[device]]
name = "d1"
[[link]]
ends = ["h0", "sw0"]
kind = "pcie"
gen = 4
lanes = 16
[[link]]
ends = ["sw0", "d0"]
gen = 3.0
[[link]]
ends = ["sw0", "d1"]
bandwidth_gbps = 7.5
latency_ns = 12
"""))
    bw = {link.name: link.bandwidth_gbps for link in topo.links}
    assert bw == pytest.approx({"h0-sw0": 31.5, "sw0-d0": 118.0, "sw0-d1": 7.5})
    assert topo.links[1].gen == "3.0" and topo.links[1].lanes == 16
    assert topo.path("h0", "d1").latency_read_ns == pytest.approx(12 + 90 + 226)
    assert topo.path("h0", "d1").bandwidth_gbps == pytest.approx(7.5)


# -- path derivation -----------------------------------------------------------------

TWO_SWITCHES = """
name = "hand-made"
[[host]]
name = "h0"
[[host]]
name = "h1"
[[switch]]
name = "sa"
[[switch]]
name = "sb"
[[switch]]
name = "sc"
latency_ns = 50
[[device]]
name = "d0"
bandwidth_gbps = 100
[[device]]
name = "d1"
[[link]]
ends = ["h0", "sa"]
lanes = 8
[[link]]
ends = ["h1", "sb"]
gen = "3.1"
[[link]]
name = "isl"
ends = ["sa", "sb"]
[[link]]
ends = ["sb", "d0"]
[[link]]
ends = ["sa", "d1"]
lanes = 4
[[link]]
ends = ["h1", "sc"]
[[link]]
ends = ["sc", "d1"]
latency_ns = 10
"""


def test_paths_on_two_switch_graph(tmp_path):
    topo = T.load(write(tmp_path, TWO_SWITCHES))
    index = {link.name: i for i, link in enumerate(topo.links)}
    p = topo.path("h0", "d0")                                     # two switch hops
    assert p.hops == ("h0", "sa", "sb", "d0")
    assert p.latency_read_ns == pytest.approx(226 + 90 + 90)
    assert p.links == (index["h0-sa"], index["isl"], index["sb-d0"])
    assert p.bandwidth_gbps == pytest.approx(31.5)                # the x8 host link
    p = topo.path("h0", "d1")
    assert p.hops == ("h0", "sa", "d1") and p.latency_read_ns == pytest.approx(316)
    assert p.bandwidth_gbps == pytest.approx(15.75)               # the x4 device link
    p = topo.path("h1", "d0")
    assert p.latency_read_ns == pytest.approx(316) and p.bandwidth_gbps == pytest.approx(63.0)
    p = topo.path("h1", "d1")                                     # sc (50 + 10) beats sb + sa (180)
    assert p.hops == ("h1", "sc", "d1") and p.latency_read_ns == pytest.approx(226 + 60)
    assert topo.latency_matrix() == [[406, 316], [316, 286]]
    assert topo.bandwidth_matrix()[1] == pytest.approx([63.0, 26.8])


def test_equal_latency_prefers_wider_path(tmp_path):
    topo = T.load(write(tmp_path, """
[[host]]
name = "h0"
[[switch]]
name = "narrow"
[[switch]]
name = "wide"
[[device]]
name = "d0"
bandwidth_gbps = 200
[[link]]
ends = ["h0", "narrow"]
lanes = 4
[[link]]
ends = ["narrow", "d0"]
[[link]]
ends = ["h0", "wide"]
gen = "3.0"
[[link]]
ends = ["wide", "d0"]
gen = "3.0"
"""))
    p = topo.path("h0", "d0")
    assert p.hops == ("h0", "wide", "d0") and p.bandwidth_gbps == pytest.approx(118.0)


def test_hosts_relay_only_over_rdma(tmp_path):
    base = """
[[host]]
name = "h0"
[[host]]
name = "h1"
[[device]]
name = "d0"
home = "h0"
[[link]]
ends = ["h0", "d0"]
[[link]]
ends = ["h0", "h1"]
"""
    with pytest.raises(InvalidArgument, match="device d0: unreachable from host h1"):
        T.load(write(tmp_path, base + 'kind = "cxl"\n'))
    p = T.load(write(tmp_path, base + 'kind = "rdma"\n')).path("h1", "d0")
    assert p.tier == "remote" and p.hops == ("h1", "h0", "d0")
    assert p.latency_read_ns == pytest.approx(500 + 2500 + 226)


def test_write_latency_and_tier_override(tmp_path):
    topo = T.load(write(tmp_path, """
[[host]]
name = "h0"
[[device]]
name = "d0"
kind = "dram"
write_ns = 120
tier = "far"
[[device]]
name = "d1"
kind = "dram"
[[link]]
ends = ["h0", "d0"]
kind = "ddr"
[[link]]
ends = ["h0", "d1"]
kind = "ddr"
"""))
    assert topo.path("h0", "d0").latency_write_ns == pytest.approx(120)
    assert topo.path("h0", "d0").tier == "far"                    # forced
    assert topo.path("h0", "d1").tier == "local"                  # 90 ns: DRAM-class


# -- curves ------------------------------------------------------------------------------

def test_builtin_cxl_curve_matches_published_points():
    c = T.builtin_curve("cxl-micron")
    assert c.read_pct == (100, 50)
    assert c.idle_ns() == pytest.approx(226)
    assert c.for_read_pct(50)[-1] == (40.02, 331.3)              # Mess bwlat_50 saturation
    assert c.latency_ns(21.0) == pytest.approx(239)
    assert c.latency_ns(26.7) == pytest.approx(285)
    assert c.latency_ns(40.0) == pytest.approx(1285)              # past saturation
    assert c.latency_ns(0.5 * 26.8) < 235                         # flat to ~50-60% of peak
    with pytest.raises(InvalidArgument, match="no built-in curve"):
        T.builtin_curve("nope")


def mess_dir(tmp_path, files: dict[int, list[str]]) -> str:
    d = tmp_path / "mess"
    d.mkdir(exist_ok=True)
    for pct, lines in files.items():
        (d / f"bwlat_{pct}.txt").write_text("\n".join(lines) + "\n")
    (d / "README").write_text("not a curve file\n")
    return str(d)


def test_mess_curve_directory(tmp_path):
    # Mess order: highest bandwidth first, repeats at saturation; MB/s and cycles (2 GHz here).
    d = mess_dir(tmp_path, {
        100: ["26800\t2570", "26800\t2568", "26700\t570", "21000\t478", "14000\t464", "500\t452"],
        50: ["20000 1000", "10000\t500", "# a comment", "", "1000 470"],
    })
    c = T.load_mess_curve(d, cpu_freq_ghz=2.0)
    assert c.read_pct == (100, 50)
    assert flat(c.points[0]) == pytest.approx(
        flat([(0.5, 226), (14.0, 232), (21.0, 239), (26.7, 285), (26.8, 1285)]))
    assert flat(c.points[1]) == pytest.approx(flat([(1.0, 235), (10.0, 250), (20.0, 500)]))
    ns = T.load_mess_curve(d, latency_unit="ns")
    assert ns.idle_ns() == pytest.approx(452)
    with pytest.raises(InvalidArgument, match="cpu_freq_ghz"):
        T.load_mess_curve(d)
    (tmp_path / "mess" / "bwlat_0.txt").write_text("1000 2000\nfast slow\n")
    with pytest.raises(InvalidArgument, match=r"bwlat_0\.txt:2"):
        T.load_mess_curve(d, cpu_freq_ghz=2.0)


def test_mess_curve_in_file_sets_idle_latency(tmp_path):
    mess_dir(tmp_path, {100: ["30000 700", "1000 600"], 0: ["15000 900", "1000 640"]})
    topo = T.load(write(tmp_path, """
[[host]]
name = "h0"
[[device]]
name = "d0"
curve = { mess_dir = "mess", cpu_freq_ghz = 2.0 }
[[link]]
ends = ["h0", "d0"]
"""))
    d = topo.device("d0")
    # A store miss reads for ownership first: write_ns follows read_ns, not the 0% curve's lead-off.
    assert d.read_ns == pytest.approx(300) and d.write_ns == pytest.approx(300)
    assert d.curve.read_pct == (100, 0) and d.curve.source == os.path.abspath(tmp_path / "mess")


def test_long_mess_curve_is_thinned(tmp_path):
    lines = [f"{bw} {400 + bw / 100}" for bw in range(100, 30100, 100)]   # 300 points
    c = T.load_mess_curve(mess_dir(tmp_path, {100: lines}), latency_unit="ns")
    pts = c.points[0]
    assert len(pts) <= MAX_CURVE_POINTS
    assert list(pts[0]) == pytest.approx([0.1, 401]) and list(pts[-1]) == pytest.approx([30.0, 700])
    assert all(b0 < b1 and l0 <= l1 for (b0, l0), (b1, l1) in zip(pts, pts[1:]))


def test_inline_curves_and_none(tmp_path):
    topo = T.load(write(tmp_path, """
[[host]]
name = "h0"
[[switch]]
name = "sw0"
[[device]]
name = "d0"
curve = [[0, 250], [20, 260], [22, 900]]
[[device]]
name = "d1"
curve = "none"
[[device]]
name = "d2"
read_ns = 240
curve = { read_pct = [50, 100], points = [[[0, 260], [10, 300]], [[0, 250], [20, 400]]] }
[[link]]
ends = ["h0", "sw0"]
[[link]]
ends = ["sw0", "d0"]
curve = [[0, 1], [60, 40]]
[[link]]
ends = ["sw0", "d1"]
[[link]]
ends = ["sw0", "d2"]
"""))
    d0, d1, d2 = topo.devices
    assert d0.read_ns == 250 and d0.curve.points == (((0, 250), (20, 260), (22, 900)),)
    assert d1.curve is None and d1.read_ns == 226                  # cxl default, no curve
    assert d2.read_ns == 240 and d2.write_ns == 240             # explicit read_ns wins
    assert d2.curve.read_pct == (100, 50)
    assert topo.links[1].curve.to_engine() == {"read_pct": [100], "points": [[[0, 1], [60, 40]]]}


# -- validation errors -------------------------------------------------------------------

BASE = """
[[host]]
name = "h0"
[[host]]
name = "h1"
[[switch]]
name = "sw0"
[[device]]
name = "d0"
[[link]]
ends = ["h0", "sw0"]
lanes = 8
[[link]]
ends = ["h1", "sw0"]
lanes = 8
[[link]]
ends = ["sw0", "d0"]
"""


def test_base_file_is_valid(tmp_path):
    assert T.load(write(tmp_path, BASE)).path("h1", "d0").latency_read_ns == pytest.approx(316)


def _replace(old, new):
    return lambda s: s.replace(old, new, 1)


def _append(text):
    return lambda s: s + text


BAD = [
    # (id, edit of BASE, entry named, problem)
    ("unknown top key", lambda s: 'colour = "red"\n' + s, "top level", "unknown key 'colour'"),
    ("unknown host key", _replace('name = "h0"', 'name = "h0"\ndram_cahce = "1GiB"'),
     "host h0", "unknown key 'dram_cahce'"),
    ("unknown device key", _replace('name = "d0"', 'name = "d0"\nspeed = 3'), "device d0", "'speed'"),
    ("unknown link key", _append('lanez = 4\n'), "link sw0-d0", "unknown key 'lanez'"),
    ("unknown switch key", _replace('name = "sw0"', 'name = "sw0"\nports = 8'), "switch sw0", "'ports'"),
    ("duplicate host", _replace('name = "h1"', 'name = "h0"'), "host h0", "already used"),
    ("device named like switch", _append('[[device]]\nname = "sw0"\n'), "device sw0", "already used"),
    ("bad name", _replace('name = "h1"', 'name = "1h"'), "host[1]", "needs a name"),
    ("negative switch latency", _replace('name = "sw0"', 'name = "sw0"\nlatency_ns = -5'),
     "switch sw0", "must not be negative"),
    ("negative link latency", _append("latency_ns = -1\n"), "link sw0-d0", "must not be negative"),
    ("negative media latency", _replace('name = "d0"', 'name = "d0"\nread_ns = -226'),
     "device d0", "must not be negative"),
    ("string latency", _replace('name = "d0"', 'name = "d0"\nread_ns = "fast"'),
     "device d0", "must be a number"),
    ("zero bandwidth", _replace('name = "d0"', 'name = "d0"\nbandwidth_gbps = 0'), "device d0", "> 0"),
    ("unknown endpoint", _append('[[link]]\nends = ["h0", "sw9"]\n'), "link h0-sw9",
     "unknown endpoint 'sw9'"),
    ("bad ends", _append('[[link]]\nends = ["h0"]\n'), "link [3]", "needs ends"),
    ("self link", _append('[[switch]]\nname = "sw1"\n[[link]]\nends = ["sw1", "sw1"]\n'),
     "link sw1-sw1", "same"),
    ("device to device", _append('[[device]]\nname = "d1"\n[[link]]\nends = ["d0", "d1"]\n'),
     "link d0-d1", "two devices"),
    ("link to memory-only node", _append('[[node]]\nname = "m0"\n[[link]]\nends = ["m0", "sw0"]\n'),
     "link m0-sw0", "memory-only node"),
    ("duplicate link", _append('[[link]]\nname = "again"\nends = ["sw0", "h0"]\n'), "link again",
     "already joined"),
    ("duplicate link name", _append('[[link]]\nname = "sw0-d0"\nends = ["h0", "d0"]\n'),
     "link sw0-d0", "used twice"),
    ("device without link", _append('[[device]]\nname = "d1"\n'), "device d1", "not joined by any"),
    ("unreachable device",
     _append('[[switch]]\nname = "island"\n[[device]]\nname = "d1"\n[[link]]\nends = ["island", "d1"]\n'),
     "device d1", "unreachable from host h0"),
    ("bad gen", _append("gen = 7\n"), "link sw0-d0", "gen 7 is not a CXL version"),
    ("bad pcie gen", _append('kind = "pcie"\ngen = 9\n'), "link sw0-d0", "not a PCIe generation"),
    ("bad lanes", _append("lanes = 3\n"), "link sw0-d0", "lanes must be one of"),
    ("bandwidth and lanes", _replace('ends = ["h1", "sw0"]', 'ends = ["h1", "sw0"]\nbandwidth_gbps = 10'),
     "link h1-sw0", "give bandwidth_gbps or lanes, not both"),
    ("gen on ucie", _append('kind = "ucie"\ngen = 5\n'), "link sw0-d0", "gen does not apply"),
    ("lanes on rdma", _append('kind = "rdma"\nlanes = 4\n'), "link sw0-d0", "lanes does not apply to rdma links"),
    ("custom without bandwidth", _append('kind = "custom"\n'), "link sw0-d0", "needs bandwidth_gbps"),
    ("bad link kind", _append('kind = "nvlink"\n'), "link sw0-d0", "kind 'nvlink' is not one of"),
    ("bad device kind", _replace('name = "d0"', 'name = "d0"\nkind = "hbm"'), "device d0", "'hbm'"),
    ("bad switch kind", _replace('name = "sw0"', 'name = "sw0"\nkind = "nvswitch"'), "switch sw0",
     "'nvswitch'"),
    ("bad tier", _replace('name = "d0"', 'name = "d0"\ntier = "near"'), "device d0", "tier 'near'"),
    ("unknown home", _replace('name = "d0"', 'name = "d0"\nhome = "h9"'), "device d0", "home 'h9'"),
    ("capacity", _replace('name = "d0"', 'name = "d0"\ncapacity = 1000'), "device d0", "multiple of 4096"),
    ("bad size", _replace('name = "d0"', 'name = "d0"\ncapacity = "lots"'), "device d0", "capacity"),
    ("jitter kind", _replace('name = "d0"', 'name = "d0"\njitter = {kind = "gauss"}'),
     "device d0: jitter", "'gauss'"),
    ("lognormal without sigma", _replace('name = "d0"', 'name = "d0"\njitter = {kind = "lognormal"}'),
     "device d0: jitter", "needs sigma"),
    ("spike p", _replace('name = "d0"', 'name = "d0"\njitter = {kind = "spike", p = 2, spike_ns = 5}'),
     "device d0: jitter", "probability"),
    ("jitter extra key", _replace('name = "d0"', 'name = "d0"\njitter = {kind = "spike", p = 0.1, '
                                                  'spike_ns = 5, sigma = 1}'),
     "device d0: jitter", "unknown key 'sigma'"),
    ("falling curve", _replace('name = "d0"', 'name = "d0"\ncurve = [[0, 300], [10, 200]]'),
     "device d0: curve", "must not fall"),
    ("curve bad point", _replace('name = "d0"', 'name = "d0"\ncurve = [[0, 300, 1]]'),
     "device d0: curve", "not a [bandwidth_gbps, latency_ns] pair"),
    ("curve unknown key", _replace('name = "d0"', 'name = "d0"\ncurve = {mess = "x"}'),
     "device d0: curve", "unknown key 'mess'"),
    ("unknown built-in curve", _replace('name = "d0"', 'name = "d0"\ncurve = "fast"'),
     "device d0: curve", "no built-in curve 'fast'"),
    ("mess without clock", _replace('name = "d0"', 'name = "d0"\ncurve = {mess_dir = "."}'),
     "device d0: curve", "cpu_freq_ghz"),
    ("mess dir missing", _replace('name = "d0"', 'name = "d0"\ncurve = {mess_dir = "nope", '
                                                  'latency_unit = "ns"}'),
     "device d0: curve", "no such Mess curve directory"),
    ("single host table", _replace('[[host]]\nname = "h0"\n[[host]]\nname = "h1"', '[host]\nname = "h0"'),
     "host", "write [[host]]"),
    ("switch but no links", lambda s: s.split("[[link]]")[0], "link", "no [[link]]s"),
    ("dangling switch", _append('[[switch]]\nname = "sw1"\n'), "switch sw1", "not joined by any"),
    ("no device", lambda s: s.split("[[device]]")[0], "device", "at least one [[device]]"),
    ("no host", lambda s: "[[device]]\nname = \"d0\"\n", "host", "at least one [[host]]"),
]


@pytest.mark.parametrize("edit,entry,problem", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_validation_errors_name_file_entry_and_problem(tmp_path, edit, entry, problem):
    path = write(tmp_path, edit(BASE))
    with pytest.raises(InvalidArgument) as info:
        T.load(path)
    message = str(info.value)
    assert message.startswith(path + ": "), message
    assert f": {entry}: " in message, message
    assert problem in message, message


def test_file_level_errors(tmp_path):
    with pytest.raises(InvalidArgument, match="no such topology file"):
        T.load(str(tmp_path / "missing.toml"))
    with pytest.raises(InvalidArgument, match="not valid TOML"):
        T.load(write(tmp_path, "[[host]\nname = 1\n"))
    with pytest.raises(InvalidArgument, match="cannot be combined"):
        T.load(write(tmp_path, BASE), hosts=3)
    with pytest.raises(InvalidArgument, match="neither a topology file nor a preset"):
        T.load("switched_pool")


def test_extra_sections_kept(tmp_path):
    topo = T.load(write(tmp_path, '[cache]\npolicy = "lru"\n' + BASE))
    assert topo.extra == {"cache": {"policy": "lru"}}
    T.register_section("mysection")
    assert T.load(write(tmp_path, "[mysection]\nx = 1\n" + BASE)).extra == {"mysection": {"x": 1}}


# -- backwards compatibility -------------------------------------------------------------

def test_legacy_file_without_links_is_switched_pool(tmp_path):
    topo = T.load(write(tmp_path, """
[[host]]
name = "a"
dram_cache = "64MiB"
local_dram_ns = 85
[[host]]
name = "b"
[[node]]
name = "mem"
[[device]]
name = "x"
capacity = "1GiB"
[[device]]
name = "y"
[[device]]
name = "z"
home = "mem"
"""), device_size="128MiB")
    assert topo.name == "topo" and topo.host("a").dram_cache_bytes == 64 * 1024**2
    assert [(d.name, d.home, d.capacity_bytes) for d in topo.devices] == [
        ("x", "a", 1024**3), ("y", "b", 128 * 1024**2), ("z", "mem", 128 * 1024**2)]
    assert [n.name for n in topo.nodes if not n.is_host] == ["mem"]
    assert [d.name for d in topo.devices_of("mem")] == ["z"]
    assert [s.name for s in topo.switches] == ["sw0"]
    assert topo.path("b", "z").latency_read_ns == pytest.approx(316)
    assert topo.capacity_bytes == 1024**3 + 2 * 128 * 1024**2


def test_generate_and_bare_constructor():
    topo = T.generate(2, 3, 64 * 1024**2)
    assert [d.home for d in topo.devices] == ["h0", "h1", "h0"]
    assert topo.devices_of("h0") == (topo.devices[0], topo.devices[2])
    hosts = (T.Host("p"), T.Host("q"))
    devices = (T.Device("m", 8192, "q"),)
    switches, links = T.presets.pool_wiring(hosts, devices)
    bare = T.Topology("bare", "test", hosts, tuple(T.Node(h.name) for h in hosts), devices,
                      switches=switches, links=links)
    assert bare.path("p", "m").latency_read_ns == pytest.approx(316)   # wired as a switched pool
    with pytest.raises(InvalidArgument, match="unknown host 'r'"):
        bare.host("r")
    with pytest.raises(InvalidArgument, match="unknown device"):
        bare.device("n")


# -- serialisation and the engine contract ---------------------------------------------------

@pytest.mark.parametrize("codec", ["json", "msgpack"])
def test_round_trip_keeps_new_fields(codec):
    topo = T.load(os.path.join(EXAMPLES, "two-switch-pool.toml"))
    d = topo.to_dict()
    wire = (json.loads(json.dumps(d)) if codec == "json"
            else msgpack.unpackb(msgpack.packb(d, use_bin_type=True), raw=False))
    back = T.Topology.from_dict(wire)
    assert back == topo
    assert back.device("d1").jitter == T.Jitter("spike", p=0.001, spike_ns=2000.0)
    assert back.device("d2").curve == topo.device("d2").curve
    assert back.links == topo.links and back.switches == topo.switches
    assert back.engine_params() == topo.engine_params()


def test_from_dict_without_wiring_is_an_error():
    # Default wiring belongs to the parser (files) and presets; a dict is taken as it is.
    legacy = {"name": "old", "source": "x", "page_size_bytes": 4096, "extra": {},
              "hosts": [{"name": "h0", "dram_cache_bytes": 1 << 20, "local_dram_ns": 90.0}],
              "nodes": [{"name": "h0", "is_host": True}],
              "devices": [{"name": "d0", "capacity_bytes": 1 << 20, "home": "h0"}]}
    topo = T.Topology.from_dict(legacy)
    with pytest.raises(InvalidArgument):
        topo.path("h0", "d0")


def test_engine_params_shape():
    topo = T.load(os.path.join(EXAMPLES, "two-switch-pool.toml"))
    e = topo.engine_params()
    json.dumps(e)
    msgpack.packb(e)
    assert set(e) == {"page_size_bytes", "hosts", "devices", "links", "paths"}
    assert e["page_size_bytes"] == 4096
    assert [h["name"] for h in e["hosts"]] == topo.host_names
    assert set(e["hosts"][0]) == {"name", "dram_cache_bytes", "local_dram_ns", "local_bandwidth_gbps"}
    assert e["hosts"][0]["dram_cache_bytes"] == 512 * 1024**2
    devices = {d["name"]: d for d in e["devices"]}
    assert list(devices) == [d.name for d in topo.devices]
    assert all(set(d) == {"name", "read_ns", "write_ns", "bandwidth_gbps", "jitter", "curve"}
               for d in e["devices"])
    assert devices["d0"]["jitter"] == {"kind": "none"}
    assert devices["d1"]["jitter"] == {"kind": "spike", "p": 0.001, "spike_ns": 2000.0}
    assert devices["d3"]["jitter"] == {"kind": "lognormal", "sigma": 0.15}
    curve = devices["d2"]["curve"]
    assert curve["read_pct"] == [100, 50, 0] and len(curve["points"]) == 3
    assert all(len(pt) == 2 for pts in curve["points"] for pt in pts)
    assert all(set(link) == {"name", "bandwidth_gbps", "latency_ns", "curve"} for link in e["links"])
    assert e["links"][0]["name"] == "h0-sw-a"
    # the topology's links, then one element per CXL switch (docs/cost-model.md)
    assert [x["name"] for x in e["links"][len(topo.links):]] == [
        f"switch:{sw.name}" for sw in topo.switches if sw.kind == "cxl"]
    assert len(e["paths"]) == len(topo.hosts)
    for row in e["paths"]:
        assert len(row) == len(topo.devices)
        for p in row:
            assert set(p) == {"latency_read_ns", "latency_write_ns", "bandwidth_gbps", "links", "tier"}
            assert p["tier"] in ("local", "far", "remote")
            assert all(0 <= i < len(e["links"]) for i in p["links"])
    h3_d0 = e["paths"][3][0]                                      # h3 -> sw-b -> isl -> sw-a -> d0
    assert [e["links"][i]["name"] for i in h3_d0["links"]] == [
        "h3-sw-b", "switch:sw-b", "isl", "switch:sw-a", "sw-a-d0"]
    assert h3_d0["latency_read_ns"] == pytest.approx(226 + 90 + 90)


# -- render / describe / examples ------------------------------------------------------------------

def test_render_and_describe():
    topo = T.load("switched-pool", hosts=3, devices=2)
    text = T.render(topo)
    for word in ("h0", "h2", "d1", "sw0", "sw0-d1", "316", "31.5", "26.8", "cxl-micron", "512.0 MiB"):
        assert word in text
    d = T.describe(topo)
    json.dumps(d)
    assert d["paths"]["h2"]["d1"]["latency_read_ns"] == pytest.approx(316)
    assert d["paths"]["h2"]["d1"]["hops"] == ["h2", "sw0", "d1"]
    assert d["paths"]["h2"]["d1"]["links"] == ["h2-sw0", "sw0-d1"]
    wide = T.render(T.load("rdma", hosts=2, devices=23))          # matrix wraps in blocks
    assert "d22" in wide and "memory-only nodes" in wide


def test_example_files_load():
    files = sorted(glob.glob(os.path.join(EXAMPLES, "*.toml")))
    assert len(files) >= 3
    for f in files:
        topo = T.load(f)
        assert topo.paths and T.render(topo)
    ucie = T.load(os.path.join(EXAMPLES, "ucie-package.toml"))
    assert ucie.path("h0", "m0").tier == "local" and ucie.path("h0", "cxl0").tier == "far"
    mixed = T.load(os.path.join(EXAMPLES, "rdma-plus-cxl.toml"))
    assert mixed.path("h1", "pool0").tier == "far" and mixed.path("h1", "far1").tier == "remote"
    assert mixed.path("h1", "far1").bandwidth_gbps == pytest.approx(12.5)


# -- input that enters through a file: encoding, depth, [engine], path length, sizes --------------

def test_not_utf8_or_absurdly_nested_file_is_one_invalid_argument(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes('name = "caf\u00e9"\n'.encode("latin-1") + BASE.encode())
    with pytest.raises(InvalidArgument, match="not a UTF-8") as info:
        T.load(str(path))
    assert str(info.value).startswith(str(path) + ": ")
    deep = write(tmp_path, "x = " + "[" * 100_000 + "]" * 100_000 + "\n" + BASE, "deep.toml")
    with pytest.raises(InvalidArgument, match="nested too deeply") as info:
        T.load(deep)
    assert str(info.value).startswith(deep + ": ")


@pytest.mark.parametrize("table, problem", [
    ("max_regions = -1", "max_regions must be between 1 and"),
    ("max_regions = 0", "max_regions must be between 1 and"),
    ("mlp_lines = 1.5", "mlp_lines must be a whole number"),
    ("mlp_lines = true", "mlp_lines must be a whole number"),
    ("queue_max_factor = 0.5", "queue_max_factor must be between 1.0 and"),
    ("queue_max_factor = \"6\"", "queue_max_factor must be a number"),
    ("queue_max_factor = nan", "queue_max_factor must be a number"),
    ("max_region = 4", "unknown key 'max_region'"),
])
def test_engine_table_checked_at_parse_time(tmp_path, table, problem):
    path = write(tmp_path, f"[engine]\n{table}\n" + BASE)
    with pytest.raises(InvalidArgument) as info:
        T.load(path)
    assert str(info.value).startswith(f"{path}: [engine]: ") and problem in str(info.value)


def test_engine_table_in_range_is_kept(tmp_path):
    topo = T.load(write(tmp_path, "[engine]\nmax_regions = 2\nmlp_lines = 4\nqueue_max_factor = 3\n" + BASE))
    assert topo.engine_params()["engine"] == {"max_regions": 2, "mlp_lines": 4, "queue_max_factor": 3}
    with pytest.raises(InvalidArgument, match="as a table"):
        T.load(write(tmp_path, "engine = 3\n" + BASE))


def _chain(n_switches: int) -> str:
    text = '[[host]]\nname = "h0"\n[[device]]\nname = "d0"\ncapacity = "8MiB"\n'
    text += "".join(f'[[switch]]\nname = "s{i}"\nlatency_ns = 1\n' for i in range(n_switches))
    ends = ["h0"] + [f"s{i}" for i in range(n_switches)] + ["d0"]
    text += "".join(f'[[link]]\nends = ["{a}", "{b}"]\n' for a, b in zip(ends, ends[1:]))
    return text


def test_path_longer_than_the_engine_allows_is_refused(tmp_path):
    from fabric.constants import MAX_PATH_LINKS
    ok = T.load(write(tmp_path, _chain(MAX_PATH_LINKS - 1), "ok.toml"))
    assert len(ok.path("h0", "d0").links) == MAX_PATH_LINKS
    for n in (MAX_PATH_LINKS, 250):
        path = write(tmp_path, _chain(n), f"chain{n}.toml")
        with pytest.raises(InvalidArgument) as info:
            T.load(path)
        msg = str(info.value)
        assert msg.startswith(f"{path}: device d0: ") and f"crosses {n + 1} links" in msg
        assert "h0 -> s0" in msg and "\n" not in msg


def test_sizes_in_files(tmp_path):
    topo = T.load(write(tmp_path, BASE.replace('name = "d0"', 'name = "d0"\ncapacity = "8GB"')
                        .replace('name = "h0"', 'name = "h0"\ndram_cache = 0')))
    assert topo.device("d0").capacity_bytes == 8 * 10**9 and topo.host("h0").dram_cache_bytes == 0
    for cap, hint in (('"1GB"', "did you mean 1GiB?"), ('"512m"', "did you mean 512MiB?"),
                      ("-4096", "negative"), ('"0"', "zero")):
        path = write(tmp_path, BASE.replace('name = "d0"', f'name = "d0"\ncapacity = {cap}'))
        with pytest.raises(InvalidArgument, match=hint) as info:
            T.load(path)
        assert str(info.value).startswith(f"{path}: device d0: capacity: ")
