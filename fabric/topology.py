"""Topology: the hosts, nodes and memory devices of an emulated fabric.

A topology comes from a TOML file (docs/topology.md) or is generated for
``--hosts N --devices M``.  Every host is also a node (its node daemon is named
after it); a topology may add memory-only nodes that home devices but run no
workload.  Devices are homed round-robin over hosts unless the file says where.

This module is the contract other parts rely on: ``load()``, the dataclasses,
and ``to_dict()`` / ``from_dict()`` (how a topology travels in cluster.json).
"""
from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from ._units import parse_size
from .errors import InvalidArgument

PAGE_SIZE_BYTES = 4096
DEFAULT_HOSTS = 2
DEFAULT_DEVICE_BYTES = 512 * 1024**2
MAX_NODES = 256
MAX_DEVICES = 256
_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,31}")


@dataclass(frozen=True)
class Host:
    name: str                                  # also the name of its node daemon
    dram_cache_bytes: int = 256 * 1024**2      # local DRAM budget for caching far pages
    local_dram_ns: float = 90.0                # idle load-to-use latency of local DRAM


@dataclass(frozen=True)
class Node:
    name: str                                  # node daemon name
    is_host: bool = True                       # False: memory-only node (homes devices only)


@dataclass(frozen=True)
class Device:
    name: str                                  # device id, e.g. "d0"
    capacity_bytes: int                        # size of its backing file
    home: str                                  # node whose daemon owns it


@dataclass(frozen=True)
class Topology:
    name: str                                  # preset name or file stem
    source: str                                # where it came from (file path or "preset:NAME")
    hosts: tuple[Host, ...]
    nodes: tuple[Node, ...]
    devices: tuple[Device, ...]
    page_size_bytes: int = PAGE_SIZE_BYTES
    extra: dict = field(default_factory=dict, compare=False)  # sections other modules own

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

    # -- serialisation ---------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Topology":
        return cls(name=d["name"], source=d["source"],
                   hosts=tuple(Host(**h) for h in d["hosts"]),
                   nodes=tuple(Node(**n) for n in d["nodes"]),
                   devices=tuple(Device(**x) for x in d["devices"]),
                   page_size_bytes=d.get("page_size_bytes", PAGE_SIZE_BYTES),
                   extra=d.get("extra", {}))


def generate(hosts: int = DEFAULT_HOSTS, devices: int | None = None,
             device_bytes: int = DEFAULT_DEVICE_BYTES, name: str = "default") -> Topology:
    """``hosts`` hosts h0.., ``devices`` devices d0.. homed round-robin on them."""
    devices = hosts if devices is None else devices
    if not 1 <= hosts <= MAX_NODES:
        raise InvalidArgument(f"--hosts must be between 1 and {MAX_NODES}, got {hosts}")
    if not 1 <= devices <= MAX_DEVICES:
        raise InvalidArgument(f"--devices must be between 1 and {MAX_DEVICES}, got {devices}")
    _check_capacity(device_bytes, "device size")
    hs = tuple(Host(f"h{i}") for i in range(hosts))
    return Topology(
        name=name, source=f"generated:{hosts}x{devices}", hosts=hs,
        nodes=tuple(Node(h.name) for h in hs),
        devices=tuple(Device(f"d{i}", device_bytes, hs[i % hosts].name) for i in range(devices)))


def _check_capacity(nbytes: int, what: str) -> None:
    if nbytes < PAGE_SIZE_BYTES or nbytes % PAGE_SIZE_BYTES:
        raise InvalidArgument(
            f"{what} must be a positive multiple of {PAGE_SIZE_BYTES} bytes, got {nbytes}")


def load(spec: str | None = None, *, hosts: int | None = None, devices: int | None = None,
         device_size: int | str | None = None) -> Topology:
    """The topology for ``fabric up``: a TOML file path, or generated when ``spec`` is None."""
    dev_bytes = DEFAULT_DEVICE_BYTES if device_size is None else parse_size(device_size, "device size")
    if spec is None:
        return generate(hosts or DEFAULT_HOSTS, devices, dev_bytes)
    if hosts is not None or devices is not None:
        raise InvalidArgument("--hosts/--devices cannot be combined with a topology file; "
                              "the file lists its hosts and devices")
    return load_file(spec, default_device_bytes=dev_bytes)


def load_file(path: str, default_device_bytes: int = DEFAULT_DEVICE_BYTES) -> Topology:
    """Parse a topology TOML file; errors name the file, the entry and the problem."""
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        raise InvalidArgument(f"{path}: no such topology file") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidArgument(f"{path}: not valid TOML: {exc}") from None

    def bad(entry: str, problem: str) -> InvalidArgument:
        return InvalidArgument(f"{path}: {entry}: {problem}")

    def name_of(kind: str, i: int, item: dict) -> str:
        n = item.get("name")
        if not isinstance(n, str) or not _NAME_RE.fullmatch(n):
            raise bad(f"{kind}[{i}]", f"needs a name of letters, digits, '_', '.', '-' (got {n!r})")
        return n

    hosts: list[Host] = []
    for i, h in enumerate(doc.get("host", [])):
        n = name_of("host", i, h)
        kw = {}
        if "dram_cache" in h:
            kw["dram_cache_bytes"] = parse_size(h["dram_cache"], f"{path}: host {n}: dram_cache")
        if "local_dram_ns" in h:
            kw["local_dram_ns"] = float(h["local_dram_ns"])
        hosts.append(Host(n, **kw))
    if not hosts:
        raise bad("host", "a topology needs at least one [[host]]")
    nodes = [Node(h.name) for h in hosts]
    for i, nd in enumerate(doc.get("node", [])):
        nodes.append(Node(name_of("node", i, nd), is_host=False))
    names = [n.name for n in nodes]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise bad("host/node", f"names used twice: {', '.join(sorted(dup))}")

    devices: list[Device] = []
    for i, d in enumerate(doc.get("device", [])):
        n = name_of("device", i, d)
        cap = parse_size(d.get("capacity", default_device_bytes), f"{path}: device {n}: capacity")
        try:
            _check_capacity(cap, "capacity")
        except InvalidArgument as exc:
            raise bad(f"device {n}", str(exc)) from None
        home = d.get("home", hosts[i % len(hosts)].name)
        if home not in names:
            raise bad(f"device {n}", f"home {home!r} is not a host or node")
        devices.append(Device(n, cap, home))
    if not devices:
        raise bad("device", "a topology needs at least one [[device]]")
    dnames = [d.name for d in devices]
    if len(set(dnames)) != len(dnames):
        raise bad("device", "device names must be unique")
    stem = os.path.splitext(os.path.basename(path))[0]
    return Topology(name=doc.get("name", stem), source=os.path.abspath(path),
                    hosts=tuple(hosts), nodes=tuple(nodes), devices=tuple(devices))
