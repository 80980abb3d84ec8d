"""The named presets, generated for any number of hosts and devices.

Numbers come from fabric/topology/kinds.py, which cites them; what each preset
wires (idle figures for one host and one device):

- switched-pool (the default): h* --cxl 2.0 x8 (31.5 GB/s)-- sw0 --cxl 2.0 x16 (63)-- d*
  226 ns device + 90 ns switch hop = 316 ns; 26.8 GB/s (device-bound); tier far.
- direct: h_i --cxl 2.0 x16-- d_j for j = i mod N: 226 ns, far.  Hosts also sit
  on an RDMA network (net0), through which other hosts reach that memory:
  500 + 300 + 500 + 2500 (owner serves the page) + 226 = 4026 ns, remote.
- numa: h* --upi (41.6 GB/s)-- socket1 (remote socket, +45 ns) --ddr-- d* (DRAM, 90 ns):
  135 ns, far.
- rdma: h* --rdma (12.5 GB/s, 500 ns)-- tor0 (300 ns) --rdma-- d* (memory servers
  read with one-sided verbs, kind "rdma": 90 ns remote DMA), each device homed on
  its own memory-only node m*: 1390 ns idle, ~1.7 us per 4 KiB page with the
  transfer; remote.  Devices of kind "rdma-paging" model far-memory paging instead
  (2500 ns fault handling and swap-in: 3800 ns idle, ~4.1 us per page).
- ucie: h* --ucie x16 32 GT/s (64 GB/s, 2 ns)-- iod0 (I/O die, 5 ns) --ucie x16-- d*
  (DRAM dies, 90 ns): 99 ns, local.
- memory-box: a rack memory appliance (Samsung CMM-B class).  h* --cxl 2.0 x16 cable
  (63 GB/s)-- box0 (appliance: cabling, retimers, box controller, +280 ns) --cxl x16--
  sw0 (the box's CXL switch, +90 ns) --cxl x8-- d* (E3.S x8 modules, kind cxl-x8,
  226 ns): 596 ns idle, the figure Samsung gives for CMM-B; far.

DRAM devices carry the measured DDR4 loaded-latency curve ("ddr4-skylake").
"""
from __future__ import annotations

from ..errors import InvalidArgument
from . import kinds as K
from .curves import builtin_curve
from .model import (MAX_DEVICES, MAX_NODES, PAGE_SIZE_BYTES, PRESETS, Device, Host, Link, Node,
                       Switch, Topology)


def _free_name(base: str, taken: set[str]) -> str:
    i = 0
    while f"{base}{i}" in taken:
        i += 1
    return f"{base}{i}"


def _cxl_link(a: str, b: str, lanes: int) -> Link:
    return Link(f"{a}-{b}", a, b, "cxl", K.lane_bandwidth_gbps("cxl", gen="2.0", lanes=lanes), 0.0,
                gen="2.0", lanes=lanes)


def pool_wiring(hosts, devices) -> tuple[tuple[Switch, ...], tuple[Link, ...]]:
    """One CXL switch; CXL 2.0 x8 links to the hosts, x16 links to the devices."""
    sw = _free_name("sw", {h.name for h in hosts} | {d.name for d in devices})
    links = [_cxl_link(h.name, sw, 8) for h in hosts] + [_cxl_link(sw, d.name, 16) for d in devices]
    return (Switch(sw, "cxl", K.CXL_SWITCH_NS),), tuple(links)


def _cxl_device(name: str, nbytes: int, home: str) -> Device:
    kind = K.DEVICE_KINDS["cxl"]
    return Device(name, nbytes, home, "cxl", kind.read_ns, kind.write_ns, kind.bandwidth_gbps,
                  curve=builtin_curve(kind.curve))


def _dram_device(name: str, nbytes: int, home: str) -> Device:
    kind = K.DEVICE_KINDS["dram"]
    return Device(name, nbytes, home, "dram", kind.read_ns, kind.write_ns, kind.bandwidth_gbps,
                  curve=builtin_curve(kind.curve) if kind.curve else None)


def _kind_device(name: str, nbytes: int, home: str, kind_name: str) -> Device:
    kind = K.DEVICE_KINDS[kind_name]
    return Device(name, nbytes, home, kind_name, kind.read_ns, kind.write_ns, kind.bandwidth_gbps,
                  curve=builtin_curve(kind.curve) if kind.curve else None)


def _rdma_link(a: str, b: str) -> Link:
    return Link(f"{a}-{b}", a, b, "rdma", K.RDMA_LINK_BANDWIDTH_GBPS, K.RDMA_LINK_NS)


def build(preset: str, n_hosts: int, n_devices: int, device_bytes: int,
          name: str | None = None) -> Topology:
    if preset not in PRESETS:
        raise InvalidArgument(f"unknown preset {preset!r} (presets: {', '.join(PRESETS)})")
    for what, n, top in (("--hosts", n_hosts, MAX_NODES), ("--devices", n_devices, MAX_DEVICES)):
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= top:
            raise InvalidArgument(f"{what} must be between 1 and {top}, got {n!r}")
    if device_bytes < PAGE_SIZE_BYTES or device_bytes % PAGE_SIZE_BYTES:
        raise InvalidArgument(f"device size must be a positive multiple of {PAGE_SIZE_BYTES} bytes, "
                              f"got {device_bytes}")
    hosts = tuple(Host(f"h{i}") for i in range(n_hosts))
    nodes = [Node(h.name) for h in hosts]
    homes = [hosts[i % n_hosts].name for i in range(n_devices)]
    switches: list[Switch] = []
    links: list[Link] = []

    if preset == "switched-pool":
        devices = tuple(_cxl_device(f"d{i}", device_bytes, homes[i]) for i in range(n_devices))
        sw, ls = pool_wiring(hosts, devices)
        switches, links = list(sw), list(ls)
    elif preset == "direct":
        devices = tuple(_cxl_device(f"d{i}", device_bytes, homes[i]) for i in range(n_devices))
        links = [_cxl_link(homes[i], f"d{i}", 16) for i in range(n_devices)]
        if n_hosts > 1:
            switches = [Switch("net0", "ethernet", K.ETHERNET_SWITCH_NS)]
            links += [_rdma_link(h.name, "net0") for h in hosts]
    elif preset == "numa":
        devices = tuple(_dram_device(f"d{i}", device_bytes, homes[i]) for i in range(n_devices))
        switches = [Switch("socket1", "socket", K.REMOTE_SOCKET_NS)]
        links = [Link(f"{h.name}-socket1", h.name, "socket1", "upi", K.UPI_BANDWIDTH_GBPS, 0.0)
                 for h in hosts]
        links += [Link(f"socket1-{d.name}", "socket1", d.name, "ddr", K.LOCAL_DRAM_BANDWIDTH_GBPS, 0.0)
                  for d in devices]
    elif preset == "rdma":
        if n_hosts + n_devices > MAX_NODES:
            raise InvalidArgument(f"the rdma preset runs a memory node per device: --hosts plus "
                                  f"--devices must be at most {MAX_NODES}, got {n_hosts + n_devices}")
        kind = K.DEVICE_KINDS["rdma"]
        devices = tuple(Device(f"d{i}", device_bytes, f"m{i}", "rdma", kind.read_ns, kind.write_ns,
                               kind.bandwidth_gbps) for i in range(n_devices))
        nodes += [Node(f"m{i}", is_host=False) for i in range(n_devices)]
        switches = [Switch("tor0", "ethernet", K.ETHERNET_SWITCH_NS)]
        links = [_rdma_link(h.name, "tor0") for h in hosts] + [_rdma_link("tor0", d.name) for d in devices]
    elif preset == "memory-box":
        # The box is one appliance: its devices are homed on the hosts' daemons (someone
        # has to own the files) but every host reaches every module through the box.
        devices = tuple(_kind_device(f"d{i}", device_bytes, homes[i], "cxl-x8")
                        for i in range(n_devices))
        switches = [Switch("box0", "appliance", K.MEMORY_BOX_ADDER_NS),
                    Switch("sw0", "cxl", K.CXL_SWITCH_NS)]
        links = [_cxl_link(h.name, "box0", 16) for h in hosts] + [_cxl_link("box0", "sw0", 16)]
        links += [_cxl_link("sw0", d.name, 8) for d in devices]
    else:  # ucie
        devices = tuple(_dram_device(f"d{i}", device_bytes, homes[i]) for i in range(n_devices))
        switches = [Switch("iod0", "ucie", K.UCIE_SWITCH_NS)]
        bw = K.lane_bandwidth_gbps("ucie", rate_gts=K.DEFAULT_UCIE_RATE_GTS, lanes=16)
        ends = [(h.name, "iod0") for h in hosts] + [("iod0", d.name) for d in devices]
        links = [Link(f"{a}-{b}", a, b, "ucie", bw, K.UCIE_LINK_NS, lanes=16,
                      rate_gts=K.DEFAULT_UCIE_RATE_GTS) for a, b in ends]

    topo = Topology(name=name or preset, source=f"preset:{preset}", hosts=hosts, nodes=tuple(nodes),
                    devices=devices, switches=tuple(switches), links=tuple(links),
                    description=PRESETS[preset])
    topo.paths  # derive now: a preset that cannot route is a bug, not a user error
    return topo
