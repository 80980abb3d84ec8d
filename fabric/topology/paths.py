"""Path derivation: the idle cost of every host -> device pair, from the link graph.

The graph's vertices are hosts, switches and devices; its edges are links.
For each host we run Dijkstra over latency, where

- crossing a link costs its ``latency_ns``;
- entering a switch costs the switch's ``latency_ns`` (one hop);
- a device ends a path (paths never pass through a device);
- another host may be crossed only when the path reaches it over an ``rdma``
  link (its daemon serves the page from memory it can reach), at the cost of
  that host's ``forward_ns``; hosts do not route CXL/UCIe traffic.

Ties on latency go to the wider bottleneck, then fewer links, then the lower
link indices, so the choice is deterministic.  The path's figures are

    latency_read_ns  = sum of the above + device.read_ns
    latency_write_ns = sum of the above + device.write_ns
    bandwidth_gbps   = min(bandwidth of every link on the path, device.bandwidth_gbps)

and its tier is the device's ``tier`` if it sets one, else "remote" when the
path uses an rdma link, crosses a host or ends at an rdma device, "local" when
its idle read latency is within LOCAL_TIER_FACTOR of the host's local DRAM, and
"far" otherwise.

This module works on any object shaped like fabric.topology.Topology and
imports nothing from it.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass

from ..constants import MAX_PATH_LINKS
from ..errors import InvalidArgument
from .kinds import LOCAL_TIER_FACTOR

TIERS = ("local", "far", "remote")


@dataclass(frozen=True)
class Path:
    host: str
    device: str
    latency_read_ns: float                     # idle, host -> device, media read included
    latency_write_ns: float                    # idle, media write included
    bandwidth_gbps: float                      # bottleneck of the links and the device
    links: tuple[int, ...]                     # indices into Topology.links, host side first
    hops: tuple[str, ...]                      # vertex names, host first, device last
    tier: str                                  # "local" | "far" | "remote"

    def to_engine(self) -> dict:
        return {"latency_read_ns": self.latency_read_ns, "latency_write_ns": self.latency_write_ns,
                "bandwidth_gbps": self.bandwidth_gbps, "links": list(self.links), "tier": self.tier}


def derive_paths(topo) -> tuple[tuple[Path, ...], ...]:
    """``paths[i][j]``: host ``topo.hosts[i]`` to device ``topo.devices[j]``.

    Raises InvalidArgument naming the topology's source and the device when a
    device cannot be reached from some host, or when the shortest path crosses
    more than ``constants.MAX_PATH_LINKS`` links (the C engine's limit).
    """
    hosts = {h.name: h for h in topo.hosts}
    switches = {s.name: s for s in topo.switches}
    devices = {d.name: d for d in topo.devices}
    adjacency: dict[str, list[tuple[int, str]]] = {}
    for i, link in enumerate(topo.links):
        adjacency.setdefault(link.a, []).append((i, link.b))
        adjacency.setdefault(link.b, []).append((i, link.a))
    rows = []
    for host in topo.hosts:
        best = _shortest(host.name, adjacency, topo.links, hosts, switches, devices)
        row = []
        for dev in topo.devices:
            if dev.name not in best:
                raise InvalidArgument(
                    f"{topo.source}: device {dev.name}: unreachable from host {host.name} "
                    f"(no chain of [[link]]s joins them; paths end at devices and cross another "
                    f"host only over an rdma link)")
            latency_ns, bottleneck_gbps, links, hops = best[dev.name]
            if len(links) > MAX_PATH_LINKS:
                shown = " -> ".join(hops if len(hops) <= 8 else
                                    (*hops[:4], f"... ({len(hops) - 6} more)", *hops[-2:]))
                raise InvalidArgument(
                    f"{topo.source}: device {dev.name}: the path from host {host.name} crosses "
                    f"{len(links)} links, more than the engine's {MAX_PATH_LINKS} ({shown})")
            uses_network = (any(topo.links[i].kind == "rdma" for i in links)
                            or any(v in hosts for v in hops[1:]))
            read_ns = latency_ns + dev.read_ns
            if dev.tier:
                tier = dev.tier
            elif uses_network or dev.kind in ("rdma", "rdma-paging"):
                tier = "remote"
            elif read_ns <= LOCAL_TIER_FACTOR * host.local_dram_ns:
                tier = "local"
            else:
                tier = "far"
            row.append(Path(host.name, dev.name, round(read_ns, 6),
                            round(latency_ns + dev.write_ns, 6),
                            min(bottleneck_gbps, dev.bandwidth_gbps), links, hops, tier))
        rows.append(tuple(row))
    return tuple(rows)


def _shortest(source, adjacency, links, hosts, switches, devices):
    """Best (latency_ns, bottleneck_gbps, link indices, hops) to every device from ``source``."""
    inf = float("inf")
    # heap entries: (latency rounded, -bottleneck, n links, link indices, latency, vertex, hops)
    heap = [(0.0, -inf, 0, (), 0.0, source, (source,))]
    settled: set[str] = set()
    found = {}
    while heap:
        _, neg_bw, _, path_links, latency, vertex, hops = heapq.heappop(heap)
        if vertex in settled:
            continue
        settled.add(vertex)
        if vertex in devices:
            found[vertex] = (latency, -neg_bw, path_links, hops)
            continue                           # a device ends a path
        for index, other in adjacency.get(vertex, ()):
            if other in settled:
                continue
            link = links[index]
            cost = latency + link.latency_ns
            if other in switches:
                cost += switches[other].latency_ns
            elif other in hosts:
                if link.kind != "rdma":
                    continue                   # hosts relay pages only from the network
                cost += hosts[other].forward_ns
            elif other not in devices:
                continue                       # validated away; be safe
            bw = min(-neg_bw, link.bandwidth_gbps)
            heapq.heappush(heap, (round(cost, 6), -bw, len(path_links) + 1, path_links + (index,),
                                  cost, other, hops + (other,)))
    return found
