"""``fabric topo show``: a topology as terminal text (:func:`render`) or a JSON dict (:func:`describe`)."""
from __future__ import annotations

from .._units import format_size

_MATRIX_COLUMNS = 10                           # devices per block of the host x device tables


def _table(headers: list[str], rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    fmt = indent + "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*headers).rstrip()]
    lines += [fmt.format(*r).rstrip() for r in rows]
    return lines


def _ns(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}".rstrip("0").rstrip(".")


def _gbps(x: float) -> str:
    return f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def _jitter(j) -> str:
    if j.kind == "lognormal":
        return f"lognormal σ={j.sigma:g}"
    if j.kind == "spike":
        return f"spike p={j.p:g} +{j.spike_ns:g}ns"
    return "-"


def _curve(c) -> str:
    if c is None:
        return "-"
    name = c.source[len("builtin:"):] if c.source.startswith("builtin:") else c.source or "inline"
    n = len(c.read_pct)
    return f"{name} ({n} read mix{'es' if n > 1 else ''}, to {_gbps(c.for_read_pct(100)[-1][0])} GB/s)"


def _link_spec(link) -> str:
    if link.gen:
        return f"{'CXL ' + link.gen if link.kind == 'cxl' else 'PCIe ' + link.gen} x{link.lanes}"
    if link.rate_gts:
        return f"{link.rate_gts:g} GT/s x{link.lanes}"
    return "-"


def render(topo) -> str:
    out = [f"topology {topo.name}  ({topo.source})"]
    if topo.description:
        out.append(f"  {topo.description}")
    out.append("")
    out.append(f"hosts ({len(topo.hosts)})")
    out += _table(["name", "dram_cache", "local_dram_ns", "local_GB/s", "devices homed"],
                  [[h.name, format_size(h.dram_cache_bytes), _ns(h.local_dram_ns),
                    _gbps(h.local_bandwidth_gbps),
                    ", ".join(d.name for d in topo.devices_of(h.name)) or "-"] for h in topo.hosts])
    memory_nodes = [n for n in topo.nodes if not n.is_host]
    if memory_nodes:
        out += ["", f"memory-only nodes ({len(memory_nodes)})"]
        out += _table(["name", "devices homed"],
                      [[n.name, ", ".join(d.name for d in topo.devices_of(n.name)) or "-"]
                       for n in memory_nodes])
    out += ["", f"devices ({len(topo.devices)}, {format_size(topo.capacity_bytes)} in all)"]
    out += _table(["name", "kind", "capacity", "home", "read_ns", "write_ns", "GB/s", "jitter", "curve"],
                  [[d.name, d.kind, format_size(d.capacity_bytes), d.home, _ns(d.read_ns),
                    _ns(d.write_ns), _gbps(d.bandwidth_gbps), _jitter(d.jitter), _curve(d.curve)]
                   for d in topo.devices])
    if topo.switches:
        out += ["", f"switches ({len(topo.switches)})"]
        out += _table(["name", "kind", "hop_ns"],
                      [[s.name, s.kind, _ns(s.latency_ns)] for s in topo.switches])
    out += ["", f"links ({len(topo.links)})"]
    out += _table(["#", "name", "ends", "kind", "spec", "GB/s", "latency_ns", "curve"],
                  [[str(i), link.name, f"{link.a} <-> {link.b}", link.kind, _link_spec(link),
                    _gbps(link.bandwidth_gbps), _ns(link.latency_ns), _curve(link.curve)]
                   for i, link in enumerate(topo.links)])
    names = [d.name for d in topo.devices]
    tier_mark = {"local": "L", "far": "F", "remote": "R"}
    for title, cell in (
            ("idle read latency, ns (L local, F far, R remote)",
             lambda p: f"{_ns(p.latency_read_ns)} {tier_mark[p.tier]}"),
            ("idle write latency, ns", lambda p: _ns(p.latency_write_ns)),
            ("bottleneck bandwidth, GB/s", lambda p: _gbps(p.bandwidth_gbps))):
        out += ["", f"host x device: {title}"]
        for start in range(0, len(names), _MATRIX_COLUMNS):
            cols = names[start:start + _MATRIX_COLUMNS]
            rows = [[h.name] + [cell(p) for p in row[start:start + _MATRIX_COLUMNS]]
                    for h, row in zip(topo.hosts, topo.paths)]
            out += _table([""] + cols, rows)
    first = topo.paths[0][0]
    out += ["", f"path {first.host} -> {first.device}: " + " -> ".join(first.hops)]
    return "\n".join(out) + "\n"


def describe(topo) -> dict:
    d = topo.to_dict()
    d["paths"] = {
        p.host: {} for p in (row[0] for row in topo.paths)
    }
    for row in topo.paths:
        for p in row:
            d["paths"][p.host][p.device] = {
                "latency_read_ns": p.latency_read_ns, "latency_write_ns": p.latency_write_ns,
                "bandwidth_gbps": p.bandwidth_gbps, "tier": p.tier, "hops": list(p.hops),
                "links": [topo.links[i].name for i in p.links]}
    d["capacity_bytes"] = topo.capacity_bytes
    return d
