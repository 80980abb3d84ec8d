"""The topology model: hosts, nodes, switches, memory devices and links, as dataclasses.

Every host is also a node (its node daemon is named after it); a topology may
add memory-only nodes that home devices but run no workload.  What an access
costs is derived from the graph, never typed by hand (:mod:`.paths`), from the
published numbers in :mod:`.kinds`.

The contract other parts rely on: the dataclasses, ``to_dict()`` /
``from_dict()`` (how a topology travels in cluster.json) and
``Topology.engine_params()`` (what the C engine is configured with).  Reading
files is :mod:`.parse`, presets are :mod:`.presets`, text is :mod:`.render`.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field

from ..errors import InvalidArgument
from . import kinds as K
from .curves import Curve
from .paths import Path, derive_paths

PAGE_SIZE_BYTES = 4096
DEFAULT_HOSTS = 2
DEFAULT_DEVICE_BYTES = 512 * 1024**2
DEFAULT_PRESET = "switched-pool"
MAX_NODES = 256
MAX_DEVICES = 256
MAX_SWITCHES = 256
MAX_LINKS = 4096

#: Presets by name, each with a one-line description (``load(NAME, hosts=N, devices=M)``).
PRESETS: dict[str, str] = {
    "switched-pool": "default: hosts and CXL 2.0 expanders behind one CXL switch, "
                     "PCIe5 x8 host links, x16 device links (~316 ns = 226 + 90 per hop)",
    "direct": "each host has its own direct-attached CXL expander (~226 ns); "
              "other hosts reach it over an RDMA network (remote, ~4 us)",
    "numa": "pooled DRAM on a remote NUMA socket over UPI (~135 ns)",
    "rdma": "RDMA far memory: memory servers behind a ToR switch, one-sided verbs (~1.4 us idle, ~1.7 us per 4 KiB page)",
    "ucie": "chiplet package: compute and memory dies on a UCIe I/O die (~99 ns, near-local)",
    "memory-box": "rack memory appliance: x8 CXL modules behind a switch in a box cabled to "
                  "the hosts over CXL x16 (~596 ns = 226 + 90 + 280 appliance adder)",
}


@dataclass(frozen=True)
class Host:
    name: str                                  # also the name of its node daemon
    dram_cache_bytes: int = K.DRAM_CACHE_BYTES  # local DRAM budget for caching far pages
    local_dram_ns: float = K.LOCAL_DRAM_NS     # idle load-to-use latency of local DRAM
    local_bandwidth_gbps: float = K.LOCAL_DRAM_BANDWIDTH_GBPS  # local DRAM bandwidth
    forward_ns: float = K.HOST_FORWARD_NS      # added when a path crosses this host (rdma only)
    threads: int | None = None                 # cores issuing misses; None: [engine] threads
    dram_curve: str | None = None              # built-in curve of its own DRAM; None: ddr4-skylake


@dataclass(frozen=True)
class Node:
    name: str                                  # node daemon name
    is_host: bool = True                       # False: memory-only node (homes devices only)


@dataclass(frozen=True)
class Switch:
    name: str
    kind: str = "cxl"                          # cxl | ucie | ethernet | socket | appliance
    latency_ns: float = K.CXL_SWITCH_NS        # added per traversal (one hop)


@dataclass(frozen=True)
class Jitter:
    """Tail jitter of a device, applied by the engine per access.

    ``lognormal``: latency times exp(N(0, sigma**2)) (median unchanged);
    ``spike``: with probability ``p``, ``spike_ns`` more.
    """
    kind: str = "none"                         # none | lognormal | spike
    sigma: float = 0.0                         # lognormal shape
    p: float = 0.0                             # spike probability per access
    spike_ns: float = 0.0                      # spike size

    def to_engine(self) -> dict:
        if self.kind == "lognormal":
            return {"kind": "lognormal", "sigma": self.sigma}
        if self.kind == "spike":
            return {"kind": "spike", "p": self.p, "spike_ns": self.spike_ns}
        return {"kind": "none"}


@dataclass(frozen=True)
class Device:
    name: str                                  # device id, e.g. "d0"
    capacity_bytes: int                        # size of its backing file
    home: str                                  # node whose daemon owns it
    kind: str = "cxl"                          # cxl | cxl-micron | cxl-x8 | cxl-x16 | dram | rdma | rdma-paging
    read_ns: float = K.CXL_DEVICE_NS           # idle media read latency, as if direct attached
    write_ns: float = K.CXL_DEVICE_NS          # idle media write latency
    bandwidth_gbps: float = K.CXL_DEVICE_BANDWIDTH_GBPS  # the device's own ceiling
    jitter: Jitter = field(default_factory=Jitter)
    curve: Curve | None = None                 # loaded latency of the device, or None
    tier: str | None = None                    # force "local" | "far" | "remote"; None: derive

    @classmethod
    def from_dict(cls, d: dict) -> "Device":
        d = dict(d)
        if isinstance(d.get("jitter"), dict):
            d["jitter"] = Jitter(**d["jitter"])
        if isinstance(d.get("curve"), dict):
            d["curve"] = Curve.from_dict(d["curve"])
        return cls(**d)


@dataclass(frozen=True)
class Link:
    name: str                                  # e.g. "sw0-d0"
    a: str                                     # one end: a host, switch or device
    b: str                                     # the other end
    kind: str = "cxl"                          # cxl | pcie | ucie | upi | ddr | rdma | custom
    bandwidth_gbps: float = 63.0               # per direction, GB/s
    latency_ns: float = 0.0                    # added by crossing it (beyond a direct attach)
    gen: str | None = None                     # PCIe generation "5" or CXL version "2.0", if derived
    lanes: int | None = None                   # lane count, if derived
    rate_gts: float | None = None              # UCIe lane rate, if derived
    curve: Curve | None = None                 # loaded latency of the link, or None

    @classmethod
    def from_dict(cls, d: dict) -> "Link":
        d = dict(d)
        if isinstance(d.get("curve"), dict):
            d["curve"] = Curve.from_dict(d["curve"])
        return cls(**d)


@dataclass(frozen=True)
class Topology:
    name: str                                  # preset name or file stem
    source: str                                # where it came from (file path or "preset:NAME")
    hosts: tuple[Host, ...]
    nodes: tuple[Node, ...]
    devices: tuple[Device, ...]
    page_size_bytes: int = PAGE_SIZE_BYTES
    extra: dict = field(default_factory=dict, compare=False)  # sections other modules own
    switches: tuple[Switch, ...] = ()
    links: tuple[Link, ...] = ()
    description: str = ""

    # -- lookups ---------------------------------------------------------
    def host(self, name: str) -> Host:
        for h in self.hosts:
            if h.name == name:
                return h
        raise InvalidArgument(
            f"unknown host {name!r} (this topology has: {', '.join(h.name for h in self.hosts)})")

    def device(self, name: str) -> Device:
        for d in self.devices:
            if d.name == name:
                return d
        raise InvalidArgument(
            f"unknown device {name!r} (this topology has: {', '.join(d.name for d in self.devices)})")

    def devices_of(self, node: str) -> tuple[Device, ...]:
        return tuple(d for d in self.devices if d.home == node)

    @property
    def host_names(self) -> list[str]:
        return [h.name for h in self.hosts]

    @property
    def capacity_bytes(self) -> int:
        return sum(d.capacity_bytes for d in self.devices)

    # -- derived paths ---------------------------------------------------
    @functools.cached_property
    def paths(self) -> tuple[tuple[Path, ...], ...]:
        """``paths[i][j]``: idle cost from ``hosts[i]`` to ``devices[j]`` (derived, cached)."""
        return derive_paths(self)

    def path(self, host: str, device: str) -> Path:
        """The derived path from ``host`` to ``device`` (InvalidArgument for unknown names)."""
        self.host(host)
        self.device(device)
        i = self.host_names.index(host)
        j = [d.name for d in self.devices].index(device)
        return self.paths[i][j]

    def latency_matrix(self, op: str = "read") -> list[list[float]]:
        """Idle latency in ns, one row per host, one column per device (``op``: read | write)."""
        if op not in ("read", "write"):
            raise InvalidArgument(f"op must be 'read' or 'write', got {op!r}")
        attr = "latency_read_ns" if op == "read" else "latency_write_ns"
        return [[getattr(p, attr) for p in row] for row in self.paths]

    def bandwidth_matrix(self) -> list[list[float]]:
        """Bottleneck GB/s, one row per host, one column per device."""
        return [[p.bandwidth_gbps for p in row] for row in self.paths]

    def engine_params(self) -> dict:
        """The C engine's configuration (msgpack/JSON-serialisable), docs/topology.md "Engine".

        Shape::

            {"page_size_bytes": 4096,
             "hosts": [{"name", "dram_cache_bytes", "local_dram_ns", "local_bandwidth_gbps",
                        "threads", "dram_curve" (each only when the host table sets it)}],
             "devices": [{"name", "read_ns", "write_ns", "bandwidth_gbps", "jitter", "curve"}],
             "links": [{"name", "bandwidth_gbps", "latency_ns", "curve"}],
             "paths": [[{"latency_read_ns", "latency_write_ns", "bandwidth_gbps",
                         "links", "tier"} per device] per host]}

        ``jitter`` is ``{"kind": "none"}``, ``{"kind": "lognormal", "sigma"}`` or
        ``{"kind": "spike", "p", "spike_ns"}``; ``curve`` is None or
        ``{"read_pct": [...], "points": [[[bw_gbps, latency_ns], ...], ...]}``.
        Path latencies are idle and already include link, switch and media
        latency; a curve adds its rise above its own first point under load.
        """
        # CXL switches are contended elements too: each is one more engine "link"
        # named switch:<name> after the topology's links (their indices unchanged),
        # on every path that crosses it, right after the link that enters it.
        contended = [sw for sw in self.switches if sw.kind == "cxl"]
        switch_elem = {sw.name: len(self.links) + i for i, sw in enumerate(contended)}
        return {
            "page_size_bytes": self.page_size_bytes,
            "hosts": [{"name": h.name, "dram_cache_bytes": h.dram_cache_bytes,
                       "local_dram_ns": float(h.local_dram_ns),
                       "local_bandwidth_gbps": float(h.local_bandwidth_gbps),
                       **({"threads": int(h.threads)} if h.threads is not None else {}),
                       **({"dram_curve": h.dram_curve} if h.dram_curve else {})}
                      for h in self.hosts],
            "devices": [{"name": d.name, "read_ns": float(d.read_ns), "write_ns": float(d.write_ns),
                         "bandwidth_gbps": float(d.bandwidth_gbps), "jitter": d.jitter.to_engine(),
                         "curve": d.curve.to_engine() if d.curve else None,
                         **({"window_lines": K.DEVICE_KINDS[d.kind].window_lines}
                            if d.kind in K.DEVICE_KINDS and K.DEVICE_KINDS[d.kind].window_lines
                            else {})}
                        for d in self.devices],
            "links": [{"name": link.name, "bandwidth_gbps": float(link.bandwidth_gbps),
                       "latency_ns": float(link.latency_ns),
                       "curve": link.curve.to_engine() if link.curve else None} for link in self.links]
            + [{"name": f"switch:{sw.name}", "bandwidth_gbps": K.CXL_SWITCH_BANDWIDTH_GBPS,
                "latency_ns": float(sw.latency_ns), "curve": None} for sw in contended],
            "paths": [[self._engine_path(p, switch_elem) for p in row] for row in self.paths],
            # a file's [engine] section: knobs such as mlp_lines, threads or max_regions
            # (docs/cost-model.md)
            **({"engine": dict(self.extra["engine"])} if self.extra.get("engine") else {}),
        }

    @staticmethod
    def _engine_path(p, switch_elem: dict) -> dict:
        """A path for the engine: its links, each followed by the element of the CXL
        switch it enters (while the engine's MAX_PATH_LINKS allows)."""
        from ..constants import MAX_PATH_LINKS
        d = p.to_engine()
        elems: list[int] = []
        extra = 0
        for i, link in enumerate(p.links):
            elems.append(link)
            sw = p.hops[i + 1] if i + 1 < len(p.hops) else None
            if sw in switch_elem and len(p.links) + extra < MAX_PATH_LINKS:
                elems.append(switch_elem[sw])
                extra += 1
        d["links"] = elems
        return d

    # -- serialisation ---------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Topology":
        return cls(name=d["name"], source=d["source"],
                   hosts=tuple(Host(**h) for h in d["hosts"]),
                   nodes=tuple(Node(**n) for n in d["nodes"]),
                   devices=tuple(Device.from_dict(x) for x in d["devices"]),
                   page_size_bytes=d.get("page_size_bytes", PAGE_SIZE_BYTES),
                   extra=d.get("extra", {}),
                   switches=tuple(Switch(**s) for s in d.get("switches", ())),
                   links=tuple(Link.from_dict(x) for x in d.get("links", ())),
                   description=d.get("description", ""))


# Top-level TOML tables that belong to other modules; load_file keeps them in
# Topology.extra instead of rejecting them as unknown keys.
EXTRA_SECTIONS: set[str] = {"cache", "cluster", "engine", "faults", "placement", "workload"}


def register_section(name: str) -> None:
    """Let topology files carry a top-level ``[name]`` table (kept in ``Topology.extra``)."""
    EXTRA_SECTIONS.add(name)
