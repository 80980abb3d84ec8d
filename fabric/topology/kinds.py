"""The published numbers the topology model starts from, and the per-kind defaults.

Every default in a topology (a preset or a key left out of a TOML file) comes
from this module, and every figure here names its source.  docs/topology.md
repeats them in a table; keep the two in step.

Conventions (units last in every name):
- ``*_ns``: nanoseconds of idle load-to-use latency.
- ``*_gbps``: GB/s, 10**9 bytes per second, per direction (not Gbit/s).
- A device's ``read_ns``/``write_ns`` is its idle load-to-use latency as measured
  from a host it is directly attached to (what Intel MLC or the Mess benchmark
  reports for that memory).  A link's ``latency_ns`` is what crossing it adds
  beyond such a direct attach (0 for PCIe/CXL/UPI/DDR links, whose cost is
  already inside the device figure), and each switch on the path adds its own
  ``latency_ns``.  So a CXL expander behind one switch costs 226 + 90 ns.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import InvalidArgument

# -- hosts -------------------------------------------------------------------
# Local DRAM idle load-to-use latency: 82 ns (DDR4, Intel Memory Latency Checker)
# to 94 ns (Skylake + DDR4, Mess benchmark data, arXiv 2405.10170); we use 90.
LOCAL_DRAM_NS = 90.0
# Local DRAM bandwidth: Mess benchmark, Intel Skylake Xeon Platinum 8160 with
# 6x DDR4-2666, saturates near 116 GB/s (bsc-mem/Mess-simulator Standalone README).
LOCAL_DRAM_BANDWIDTH_GBPS = 116.0
# Loaded latency of DRAM devices: the Mess measurement of that machine (built-in
# curve "ddr4-skylake", fabric/topology/curves.toml): 94 ns idle, 108 ns at 50 GB/s,
# 122 ns at 82 GB/s, 140 ns at 104 GB/s (~1.15x at half load, where an M/M/1 rise
# would give ~2x).
DRAM_CURVE = "ddr4-skylake"
DRAM_CACHE_BYTES = 256 * 1024**2
# A path may cross another host only when it reaches that host over a network
# (rdma) link: that host's daemon then serves the page from its memory, which
# costs about what an RDMA memory server costs (see RDMA_SERVE_NS).
HOST_FORWARD_NS = 2500.0
# A path whose idle read latency is within 25% of the host's own DRAM is tier
# "local" (UCIe memory dies, a socket's own DRAM); beyond that it is "far".
LOCAL_TIER_FACTOR = 1.25

# -- CXL ---------------------------------------------------------------------
# CXL type-3 expander, direct attached: ~226 ns idle (Micron device model in the
# Mess benchmark's CXL curves, arXiv 2405.10170; bsc-mem/Mess-simulator
# data/cxl/bwlat_100.txt lead-off 225.6).  Silicon prototypes measure 2.18x (ASIC)
# to 2.88x (FPGA) local DRAM (CXL-DMSim/SimCXL, arXiv 2411.02282); real devices
# 140-410 ns (Liu et al., "Systematic CXL Memory Characterization and Performance
# Analysis at Scale" (Melody), ASPLOS 2025; arXiv 2409.14317).  226 ns is 2.5x our
# 90 ns local DRAM.  This simulated Micron device stays the default "cxl" kind.
CXL_DEVICE_NS = 226.0
# The Micron-model device saturates near 26.8 GB/s for pure reads (Mess CXL curve,
# bwlat_100.txt) and near 40.0 GB/s at 50% reads (bwlat_50.txt).
CXL_DEVICE_BANDWIDTH_GBPS = 26.8
CXL_DEVICE_MIXED_BANDWIDTH_GBPS = 40.0
# Published expander modules by link width (PCIe 5.0 / CXL 2.0):
# - x8 (E3.S): Micron CZ120, "up to 36 GB/s" measured with Intel MLC at a 2:1
#   read/write mix on one module (Micron announcement, Aug 2023, as reported by
#   Tom's Hardware, "Micron Unveils 128GB and 256GB CXL 2.0 Expansion Modules");
#   Samsung CMM-D (CXL 2.0, x8) is listed at the same 36 GB/s.  An x8 link carries
#   31.5 GB/s per direction, so pure reads are link bound (31.5 GB/s).
# - x16: Samsung CMM-B, a box of CMM-D modules behind one PCIe 5.0 x16 port,
#   "up to 60 GB/s" (Samsung, Memcon 2024, as reported in AnandTech's coverage).
# No source we could read gives a module's idle latency by link width: both kinds
# use the Micron-model 226 ns above (a model parameter, inside Melody's measured
# 140-410 ns range); the link width changes bandwidth, not lead-off latency.
CXL_X8_MIXED_BANDWIDTH_GBPS = 36.0
CXL_X8_READ_BANDWIDTH_GBPS = 31.5
CXL_X16_BANDWIDTH_GBPS = 60.0
# Each CXL switch hop: ~+90 ns.  Pond (Li et al., ASPLOS'23) budgets pooled CXL at
# +70-90 ns over local memory; one hop through an XConn XC50256 CXL 2.0 switch is
# reported at 90 ns (asplos.dev CXL/PCIe notes, citing XConn).
CXL_SWITCH_NS = 90.0
# A CXL switch's switching capacity, as a contended element of every path through
# it: XConn XC50256, 256 lanes of PCIe 5.0 / CXL 2.0, "2,048 GB/s total BW" (XConn,
# "Scalable Memory Expansion, Pooling and Sharing for AI Computing with CXL
# Switch", 2023 slides): 1,024 GB/s in each direction.  Its latency under load
# rises M/M/1-style from the 90 ns hop (docs/cost-model.md).  Switches of other
# kinds (ucie, ethernet, socket, appliance) have no cited capacity and stay
# uncontended: their links carry the contention.
CXL_SWITCH_BANDWIDTH_GBPS = 1024.0
# A rack-scale memory appliance (memory box): Samsung CMM-B measures 596 ns idle
# (Samsung, Memcon 2024, as reported in AnandTech's coverage, April 2024) against
# 226 ns for a direct module: the box's cabling, retimers and controller add
# 596 - 226 - 90 (its internal switch hop) = 280 ns.  The "appliance" switch kind
# charges that adder; the memory-box preset puts one in front of a CXL switch.
MEMORY_BOX_NS = 596.0
MEMORY_BOX_ADDER_NS = MEMORY_BOX_NS - CXL_DEVICE_NS - CXL_SWITCH_NS

# -- writes ----------------------------------------------------------------------
# A store that misses to far memory first reads the line for ownership (RFO: one
# read round trip), then writes the dirty line back when it is evicted, which the
# core does not wait for (posted).  So the latency a store miss costs is the read
# latency: every device kind's write_ns defaults to its read_ns, and a device
# curve's pure-write (0%) lead-off does not lower it (parse.py).  Set write_ns to
# model something else (e.g. non-temporal stores that skip the RFO).  Not
# expressible without the C engine: the write-back's second transfer of the bytes
# (a direct write moves the line twice) and its per-direction link use.
WRITE_IS_RFO = True

# -- NUMA ----------------------------------------------------------------------
# Remote NUMA socket: ~133-140 ns idle (Intel MLC on two-socket Xeons), i.e.
# ~45 ns over the 90 ns local figure; charged at the remote socket ("socket" switch).
REMOTE_SOCKET_NS = 45.0
# Mess measured the remote socket of the same Skylake machine at 132.8 ns idle
# (bsc-mem/Mess-simulator data/Skylake-numa-ddr4/bwlat_100.txt, lowest-load point).
# Intel Xeon Scalable (Skylake-SP) UPI: 10.4 GT/s = 20.8 GB/s per link per
# direction; two links between the sockets.
UPI_BANDWIDTH_GBPS = 41.6

# -- UCIe ----------------------------------------------------------------------
# UCIe 1.x: up to 32 GT/s per lane, a x16 standard-package module ~64 GB/s per
# direction.  Die-to-die latency is single-digit ns (the UCIe 1.0 white paper
# targets < 2 ns); it is a model parameter, not a measured fact.
UCIE_LINK_NS = 2.0
UCIE_RATES_GTS = (4.0, 8.0, 12.0, 16.0, 24.0, 32.0)
# Crossing an I/O (base) die between chiplets: a model parameter, not measured.
UCIE_SWITCH_NS = 5.0

# -- RDMA-class far memory ------------------------------------------------------
# Two ways to reach a memory server over RDMA, two device kinds:
# - "rdma-paging": far-memory paging (Hydra, Lee et al., FAST'22: single-digit
#   microseconds per 4 KiB remote page).  We split ~3.8 us idle as NIC+wire
#   500 ns per side, a cut-through ToR switch 300 ns, and 2.5 us of fault
#   handling and swap-in service; moving the 4 KiB page over a 100 Gb/s
#   (12.5 GB/s) NIC adds ~0.33 us, ~4.1 us in all.  A fault is handled page by
#   page: one page (64 lines) per latency round.
# - "rdma" (default of the rdma preset): one-sided verbs.  The remote NIC reads
#   the server's memory by DMA without its CPU: the service time is that
#   memory's latency (the local DRAM figure), so a small read costs NIC+wire
#   both ways, the ToR and ~90 ns, ~1.4 us idle (the brief's "~1.5-2 us" for a
#   100G NIC; no measured figure we could cite, see docs/cost-model.md).  Verbs
#   are pipelined by the NIC, not the CPU: 16 outstanding RDMA reads per queue
#   pair (the max_qp_rd_atom that mlx5 NICs report) of a 4 KiB page each, 1,024
#   lines per round, so a stream runs at the 12.5 GB/s line rate.
RDMA_LINK_NS = 500.0
RDMA_LINK_BANDWIDTH_GBPS = 12.5
ETHERNET_SWITCH_NS = 300.0
RDMA_SERVE_NS = HOST_FORWARD_NS
RDMA_VERBS_SERVE_NS = LOCAL_DRAM_NS
RDMA_VERBS_OUTSTANDING = 16
RDMA_VERBS_WINDOW_LINES = RDMA_VERBS_OUTSTANDING * 4096 // 64
RDMA_PAGING_WINDOW_LINES = 4096 // 64

# -- link bandwidth from generation and lanes ----------------------------------
# Usable GB/s per lane per direction.  PCIe 5.0 / CXL 1.1-2.0: 32 GT/s, 128b/130b
# -> ~3.94 GB/s; we use 63/16 so that x8 = 31.5 and x16 = 63 GB/s, the figures
# usually quoted.  PCIe 4.0 is half of 5.0, PCIe 3.0 a quarter.  PCIe 6.0 / CXL
# 3.x: 64 GT/s PAM4 with FLIT overhead, ~118 GB/s usable at x16.
PCIE_LANE_GBPS = {3: 63.0 / 64, 4: 63.0 / 32, 5: 63.0 / 16, 6: 118.0 / 16}
CXL_VERSION_PCIE_GEN = {"1.0": 5, "1.1": 5, "2.0": 5, "3.0": 6, "3.1": 6, "3.2": 6}
PCIE_LANES = (1, 2, 4, 8, 16)
UCIE_LANES = (8, 16, 32, 64)


@dataclass(frozen=True)
class DeviceKind:
    read_ns: float                             # idle load-to-use read latency, direct attached
    write_ns: float                            # idle write latency, direct attached
    bandwidth_gbps: float                      # the device's own ceiling
    curve: str | None                          # built-in bandwidth-latency curve, or None
    doc: str                                   # one line for docs and errors
    lanes: int | None = None                   # the link width this kind is sold with, if any
    window_lines: int = 0                      # lines per latency round if the device sets it
                                               # (RDMA); 0: the host's mlp_lines x threads


DEVICE_KINDS: dict[str, DeviceKind] = {
    "cxl": DeviceKind(CXL_DEVICE_NS, CXL_DEVICE_NS, CXL_DEVICE_BANDWIDTH_GBPS, "cxl-micron",
                      "CXL type-3 memory expander (Micron model in Mess)"),
    "cxl-micron": DeviceKind(CXL_DEVICE_NS, CXL_DEVICE_NS, CXL_DEVICE_BANDWIDTH_GBPS, "cxl-micron",
                             "the Mess benchmark's simulated Micron CXL expander (same as cxl)"),
    "cxl-x8": DeviceKind(CXL_DEVICE_NS, CXL_DEVICE_NS, CXL_X8_MIXED_BANDWIDTH_GBPS, "cxl-x8",
                         "CXL 2.0 x8 E3.S expander module, DDR5 (Micron CZ120 / Samsung CMM-D class)",
                         lanes=8),
    "cxl-x16": DeviceKind(CXL_DEVICE_NS, CXL_DEVICE_NS, CXL_X16_BANDWIDTH_GBPS, "cxl-x16",
                          "CXL 2.0 x16 expander, DDR5 (Samsung CMM-B class port)", lanes=16),
    "dram": DeviceKind(LOCAL_DRAM_NS, LOCAL_DRAM_NS, LOCAL_DRAM_BANDWIDTH_GBPS, DRAM_CURVE,
                       "DRAM on a socket or a memory chiplet (DDR4 loaded-latency curve)"),
    "rdma": DeviceKind(RDMA_VERBS_SERVE_NS, RDMA_VERBS_SERVE_NS, LOCAL_DRAM_BANDWIDTH_GBPS, None,
                       "memory of an RDMA memory server read and written with one-sided verbs "
                       "(remote DMA; links add the network)",
                       window_lines=RDMA_VERBS_WINDOW_LINES),
    "rdma-paging": DeviceKind(RDMA_SERVE_NS, RDMA_SERVE_NS, LOCAL_DRAM_BANDWIDTH_GBPS, None,
                              "remote memory reached by far-memory paging: page-fault handling "
                              "and swap-in service, a page per round (links add the network)",
                              window_lines=RDMA_PAGING_WINDOW_LINES),
}

SWITCH_KINDS: dict[str, float] = {             # kind -> default latency_ns per traversal
    "cxl": CXL_SWITCH_NS,
    "ucie": UCIE_SWITCH_NS,
    "ethernet": ETHERNET_SWITCH_NS,
    "socket": REMOTE_SOCKET_NS,
    "appliance": MEMORY_BOX_ADDER_NS,
}


@dataclass(frozen=True)
class LinkKind:
    latency_ns: float                          # default extra latency of crossing the link
    bandwidth_gbps: float | None               # default when not derived from gen/lanes
    sized_by: str                              # "gen" (pcie/cxl), "rate" (ucie), or "" (bandwidth only)
    doc: str


LINK_KINDS: dict[str, LinkKind] = {
    "cxl": LinkKind(0.0, None, "gen", "CXL link; bandwidth from gen (CXL version) and lanes"),
    "pcie": LinkKind(0.0, None, "gen", "PCIe link; bandwidth from gen (3-6) and lanes"),
    "ucie": LinkKind(UCIE_LINK_NS, None, "rate", "UCIe die-to-die link; bandwidth from rate_gts and lanes"),
    "upi": LinkKind(0.0, UPI_BANDWIDTH_GBPS, "", "socket-to-socket interconnect (Intel UPI)"),
    "ddr": LinkKind(0.0, LOCAL_DRAM_BANDWIDTH_GBPS, "", "memory channels of a socket"),
    "rdma": LinkKind(RDMA_LINK_NS, RDMA_LINK_BANDWIDTH_GBPS, "",
                     "RDMA network link (NIC + wire); hosts relay pages only over these"),
    "custom": LinkKind(0.0, None, "", "anything else; give bandwidth_gbps"),
}

DEFAULT_LINK_GEN = {"cxl": "2.0", "pcie": "5"}
DEFAULT_LANES = {"cxl": 16, "pcie": 16, "ucie": 16}
DEFAULT_UCIE_RATE_GTS = 32.0


def normalise_gen(kind: str, gen: object) -> str:
    """``"2.0"`` for CXL versions, ``"5"`` for PCIe generations; InvalidArgument otherwise."""
    if isinstance(gen, bool) or not isinstance(gen, (int, float, str)):
        raise InvalidArgument(f"gen must be a number or string, got {gen!r}")
    if kind == "cxl":
        try:
            text = f"{float(gen):.1f}"
        except ValueError:
            text = str(gen)
        if text not in CXL_VERSION_PCIE_GEN:
            raise InvalidArgument(
                f"gen {gen!r} is not a CXL version (known: {', '.join(CXL_VERSION_PCIE_GEN)})")
        return text
    try:
        number = float(gen)
    except ValueError:
        number = -1.0
    if not number.is_integer() or int(number) not in PCIE_LANE_GBPS:
        raise InvalidArgument(
            f"gen {gen!r} is not a PCIe generation (known: {', '.join(map(str, PCIE_LANE_GBPS))})")
    return str(int(number))


def lane_bandwidth_gbps(kind: str, *, gen: str | None = None, lanes: int | None = None,
                        rate_gts: float | None = None) -> float:
    """Per-direction GB/s of a ``kind`` link of ``lanes`` lanes at ``gen`` or ``rate_gts``.

    ``lane_bandwidth_gbps("cxl", gen="2.0", lanes=8) == 31.5``;
    ``lane_bandwidth_gbps("ucie", rate_gts=32, lanes=16) == 64.0``.
    """
    sized_by = LINK_KINDS[kind].sized_by
    lanes = DEFAULT_LANES[kind] if lanes is None else lanes
    if sized_by == "gen":
        if isinstance(lanes, bool) or not isinstance(lanes, int) or lanes not in PCIE_LANES:
            raise InvalidArgument(f"lanes must be one of {', '.join(map(str, PCIE_LANES))}, got {lanes!r}")
        g = normalise_gen(kind, DEFAULT_LINK_GEN[kind] if gen is None else gen)
        pcie_gen = CXL_VERSION_PCIE_GEN[g] if kind == "cxl" else int(g)
        return PCIE_LANE_GBPS[pcie_gen] * lanes
    if sized_by == "rate":
        if isinstance(lanes, bool) or not isinstance(lanes, int) or lanes not in UCIE_LANES:
            raise InvalidArgument(f"lanes must be one of {', '.join(map(str, UCIE_LANES))}, got {lanes!r}")
        rate = DEFAULT_UCIE_RATE_GTS if rate_gts is None else rate_gts
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or float(rate) not in UCIE_RATES_GTS:
            raise InvalidArgument(
                f"rate_gts must be one of {', '.join(f'{r:g}' for r in UCIE_RATES_GTS)}, got {rate!r}")
        return float(rate) * lanes / 8.0      # one bit per transfer per lane
    raise InvalidArgument(f"a {kind} link has no gen/lanes; give bandwidth_gbps")
