"""The engine's figures as plain dicts: per host, per link and device, and for the cluster.

Three entry points:

* :func:`read_shared_stats` reads every host's counters and latency
  histogram, live, from a cluster's shared engine segment;
* :func:`cluster_stats` is what ``fabric stats --json`` prints and what
  :meth:`fabric.Cluster.stats` returns: the same dict plus the cluster's
  injection mode and a ``"schema"`` number;
* :func:`diff` turns two snapshots into the figures of the interval between
  them.  Counters in the shared segment only grow (other processes read them
  live), so scoping figures to a phase of a workload is done by subtraction::

      before = session.stats()
      run_phase()
      phase = fabric.engine.stats.diff(before, session.stats())
      print(phase["calls"], phase["latency_ns_p99"])

Every host entry (and ``Session.stats()``) carries its latency histogram as
``"latency_hist": {"bucket_ns": [...], "count": [...]}``: only the non-empty
buckets, each named by its representative value in ns (exact below 128 ns,
the bucket's midpoint above: <= 1% error).  Histograms of several hosts or
runs merge by adding the counts of equal ``bucket_ns``; :func:`diff` and the
percentiles here work on exactly these buckets.  A host with no calls reports
its latency figures (mean, percentiles, min, max) as ``None``, not 0.
"""
from __future__ import annotations

import math
import os
from typing import Any

from .._binding import engine as _b
from .._binding.engine import Histogram
from ..errors import InvalidArgument
from ..statedir import StateDir
from ..topology import Topology

__all__ = ["read_shared_stats", "cluster_stats", "diff", "host_stats", "PERCENTILES",
           "STATS_SCHEMA"]

#: Version of the dict :func:`cluster_stats` returns (and ``fabric stats --json`` prints).
STATS_SCHEMA = 1
#: The percentiles every latency summary reports, as (key suffix, percent).
PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p999", 99.9))
#: Per-host fields that only grow: a diff subtracts them.
_HOST_COUNTERS = ("calls", "injected_ns", "virtual_time_ns", "latency_count", "latency_ns_sum",
                  *(c for c in _b.COUNTERS if c != "injected_ns"))
#: The same for the cluster-wide "total" entry.
_TOTAL_COUNTERS = ("calls", "accesses", "hits", "misses", "bytes", "far_bytes", "injected_ns",
                   "latency_count", "latency_ns_sum")


# -- latency figures from buckets -------------------------------------------------------

def _sparse(h: Histogram) -> dict:
    """The non-empty buckets of ``h`` as {"bucket_ns": [...], "count": [...]} (ascending)."""
    counts = h.buckets()
    idx = counts.nonzero()[0].tolist()
    return {"bucket_ns": [_b.hist_bucket_value(i) for i in idx],
            "count": [int(counts[i]) for i in idx]}


def _latency(hist: dict, sum_ns: int, min_ns: int | None, max_ns: int | None) -> dict:
    """Latency figures of a sparse histogram; the same rule as the C core's
    fab_hist_percentile (rank = ceil(pct * count / 100), the bucket's value,
    clamped to [min, max]).  ``min_ns``/``max_ns`` None: the extreme buckets' values."""
    values, counts = hist["bucket_ns"], hist["count"]
    n = sum(counts)
    out: dict[str, Any] = {"latency_count": n, "latency_ns_sum": sum_ns,
                           "latency_ns_mean": sum_ns / n if n else None}
    if n == 0:
        out.update({f"latency_ns_{name}": None for name, _ in PERCENTILES},
                   latency_ns_min=None, latency_ns_max=None)
        out["latency_hist"] = {"bucket_ns": [], "count": []}
        return out
    lo = values[0] if min_ns is None else min_ns
    hi = values[-1] if max_ns is None else max_ns
    for name, pct in PERCENTILES:
        rank = max(1, math.ceil(pct * n / 100.0))
        seen, v = 0, hi
        for value, c in zip(values, counts):
            seen += c
            if seen >= rank:
                v = value
                break
        out[f"latency_ns_{name}"] = min(max(v, lo), hi)
    out["latency_ns_min"], out["latency_ns_max"] = lo, hi
    out["latency_hist"] = {"bucket_ns": list(values), "count": list(counts)}
    return out


def _latency_of(h: Histogram) -> dict:
    s = h.summary()
    return _latency(_sparse(h), int(s["sum_ns"]), int(s["min_ns"]), int(s["max_ns"]))


# -- live figures ------------------------------------------------------------------------

def _tiers(pages: list[int] | None, nbytes: list[int]) -> dict:
    total = sum(nbytes)
    out = {}
    for t, name in enumerate(_b.TIER_NAMES):
        e = {"pages": pages[t]} if pages is not None else {}
        e.update(bytes=nbytes[t], share=nbytes[t] / total if total else 0.0)
        out[name] = e
    return out


def host_stats(seg: _b.Segment, params: dict, hi: int) -> dict:
    """One host's figures from a mapped segment (the keys of ``Engine.stats()``
    but its page-cache fields): totals, per-device counters, tiers, hit rate,
    latency figures and ``latency_hist``."""
    hc = seg.host_counters(hi)
    out: dict = {"host": params["hosts"][hi]["name"], "calls": hc[0], "injected_ns": hc[1],
                 "virtual_time_ns": hc[2], "engines_attached": hc[3]}
    totals = dict.fromkeys(_b.COUNTERS, 0)
    devices = {}
    for j, d in enumerate(params["devices"]):
        c = dict(zip(_b.COUNTERS, seg.dev_counters(hi, j)))
        devices[d["name"]] = c
        for k in _b.COUNTERS:
            totals[k] += c[k]
    del totals["injected_ns"]  # per device it overlaps; the host total is the sum of charges
    out.update(totals)
    out["hit_rate"] = totals["hits"] / totals["accesses"] if totals["accesses"] else 0.0
    out["tiers"] = _tiers(list(hc[4:8]), list(hc[8:12]))
    out.update(_latency_of(seg.hist(hi)))
    out["devices"] = devices
    return out


def _element_stats(seg: _b.Segment, params: dict) -> tuple[dict, dict]:
    window = int(_b.engine_knobs(params)["active_window_wall_ns"])
    nl = seg.nlinks
    links, devices = {}, {}
    for r in range(nl + seg.ndevices):
        spec = params["links"][r] if r < nl else params["devices"][r - nl]
        load, active, total = seg.resource_load(r, window)
        entry = {"load_gbps": load, "active_hosts": active, "bytes_total": total,
                 "utilisation": load / spec["bandwidth_gbps"]}
        (links if r < nl else devices)[spec["name"]] = entry
    return links, devices


def _dram_stats(seg: _b.Segment, params: dict) -> dict:
    """Each host's local DRAM as a contended element, named ``dram:<host>``: the load
    its engines published recently, how many were active, the bytes they moved
    through it (hits and far bytes) and the load over its local bandwidth."""
    window = int(_b.engine_knobs(params)["active_window_wall_ns"])
    out = {}
    for i, h in enumerate(params["hosts"]):
        load, active, total = seg.dram_load(i, window)
        out[f"dram:{h['name']}"] = {
            "load_gbps": load, "active_engines": active, "bytes_total": total,
            "utilisation": load / float(h.get("local_bandwidth_gbps", 116.0))}
    return out


def _total(hosts: dict, merged: dict, sum_ns: int, min_ns: int | None,
           max_ns: int | None) -> dict:
    total = _latency(merged, sum_ns, min_ns, max_ns)
    for k in ("calls", "accesses", "hits", "misses", "bytes", "far_bytes", "injected_ns"):
        total[k] = sum(h[k] for h in hosts.values())
    total["hit_rate"] = total["hits"] / total["accesses"] if total["accesses"] else 0.0
    tier_bytes = [sum(h["tiers"][t]["bytes"] for h in hosts.values()) for t in _b.TIER_NAMES]
    total["tiers"] = _tiers(None, tier_bytes)
    return total


def read_shared_stats(path: str, params: dict) -> dict:
    """Every host's counters and latency figures, live, from the shared segment.

    ``{"hosts": {name: {...the keys of Engine.stats() but its page-cache
    fields...}}, "links": {name: {"load_gbps", "active_hosts", "bytes_total",
    "utilisation"}}, "devices": {...same...}, "dram": {"dram:<host>": {"load_gbps",
    "active_engines", "bytes_total", "utilisation"}} (each host's local DRAM: hits
    and far bytes of the engines attached as it), "total": {latency figures and
    latency_hist merged over all hosts, summed counters, cluster-wide hit_rate
    and tiers}, "lockstep": {name: {"state", "clock_ns", "pid", "waits",
    "wait_ns"}} for the members of the current lockstep group (empty without
    one)}``.  Loads are the rates hosts published recently (CLOCK_MONOTONIC
    window); everything else only grows.
    """
    seg = _b.Segment(os.fspath(path), params, writable=False)
    hosts = {params["hosts"][i]["name"]: host_stats(seg, params, i) for i in range(seg.nhosts)}
    merged = Histogram()
    for i in range(seg.nhosts):
        merged.merge(seg.hist(i))
    links, devices = _element_stats(seg, params)
    s = merged.summary()
    total = _total(hosts, _sparse(merged), int(s["sum_ns"]), int(s["min_ns"]), int(s["max_ns"]))
    lockstep = {name: m for name, m in seg.lockstep_members().items() if m["state"] != "absent"}
    return {"hosts": hosts, "links": links, "devices": devices, "dram": _dram_stats(seg, params),
            "total": total, "lockstep": lockstep}


def cluster_stats(state_dir: str | None = None) -> dict:
    """The cluster-wide figures of the cluster in ``state_dir`` (default: $FABRIC_STATE_DIR,
    then /dev/shm/cxl-fabric-<uid>): :func:`read_shared_stats` plus ``"inject"`` (the
    cluster's injection mode) and ``"schema"`` (:data:`STATS_SCHEMA`).

    This is exactly what ``fabric stats --json`` prints and what
    :meth:`fabric.Cluster.stats` returns.  Raises ClusterError when there is
    no cluster there.
    """
    state = StateDir(state_dir)
    info = state.read()
    params = Topology.from_dict(info["topology"]).engine_params()
    out = read_shared_stats(state.engine_segment, params)
    out["inject"] = info.get("options", {}).get("inject")
    out["schema"] = STATS_SCHEMA
    return out


# -- intervals ------------------------------------------------------------------------

def _sub(b: Any, a: Any, what: str) -> int:
    d = b - a
    if d < 0:
        raise InvalidArgument(f"stats diff: {what} went down ({a} -> {b}); pass the earlier "
                              f"snapshot first, both from the same host and cluster")
    return d


def _hist_sub(a: dict, b: dict, what: str) -> dict:
    ca = dict(zip(a["bucket_ns"], a["count"]))
    values, counts = [], []
    for v, c in zip(b["bucket_ns"], b["count"]):
        d = _sub(c, ca.pop(v, 0), f"{what} latency bucket {v} ns")
        if d:
            values.append(v)
            counts.append(d)
    if any(ca.values()):
        raise InvalidArgument(f"stats diff: {what}: the later snapshot lacks buckets of the "
                              f"earlier one; pass the earlier snapshot first")
    return {"bucket_ns": values, "count": counts}


def _interval_latency(a: dict, b: dict, what: str) -> dict:
    hist = _hist_sub(a["latency_hist"], b["latency_hist"], what)
    sum_ns = _sub(b["latency_ns_sum"], a["latency_ns_sum"], f"{what} latency_ns_sum")
    if a["latency_count"] == 0:       # nothing before: the later snapshot's extremes are exact
        return _latency(hist, sum_ns, b["latency_ns_min"], b["latency_ns_max"])
    return _latency(hist, sum_ns, None, None)


def _diff_host(a: dict, b: dict) -> dict:
    if not isinstance(a, dict) or not isinstance(b, dict) or "latency_hist" not in a \
            or "latency_hist" not in b:
        raise InvalidArgument("stats diff needs two dicts from Session.stats(), Cluster.stats() "
                              "or fabric.engine.stats.read_shared_stats()")
    if a.get("host") != b.get("host"):
        raise InvalidArgument(f"stats diff: snapshots of different hosts "
                              f"({a.get('host')!r}, {b.get('host')!r})")
    what = f"host {b.get('host')}"
    out = dict(b)
    for k in _HOST_COUNTERS:
        out[k] = _sub(b[k], a[k], f"{what} {k}")
    out["hit_rate"] = out["hits"] / out["accesses"] if out["accesses"] else 0.0
    out["tiers"] = _tiers([_sub(b["tiers"][t]["pages"], a["tiers"][t]["pages"], f"{what} pages")
                           for t in _b.TIER_NAMES],
                          [_sub(b["tiers"][t]["bytes"], a["tiers"][t]["bytes"], f"{what} bytes")
                           for t in _b.TIER_NAMES])
    out["devices"] = {name: {k: _sub(c[k], a["devices"].get(name, {}).get(k, 0),
                                     f"{what} {name} {k}") for k in c}
                      for name, c in b["devices"].items()}
    out.update(_interval_latency(a, b, what))
    return out


def diff(before: dict, after: dict) -> dict:
    """The figures of the interval between two snapshots of the same thing.

    Takes two results of :meth:`fabric.Session.stats` (one host) or two of
    :func:`cluster_stats` / :meth:`fabric.Cluster.stats` /
    :func:`read_shared_stats` (the cluster), ``before`` first, and returns a
    dict of the same shape whose counters, tiers, hit rate, histogram and
    latency figures cover only what happened in between.  Gauges (page-cache
    occupancy, engines attached, current link loads) are ``after``'s.  Min
    and max of an interval are bucket values (<= 1% off) unless ``before``
    had no calls.  InvalidArgument if the snapshots are of different hosts
    or out of order.
    """
    if isinstance(before, dict) and isinstance(after, dict) and "hosts" in after:
        if "hosts" not in before or set(before["hosts"]) != set(after["hosts"]):
            raise InvalidArgument("stats diff: the snapshots are not of the same cluster")
        hosts = {n: _diff_host(before["hosts"][n], h) for n, h in after["hosts"].items()}
        out = dict(after)
        out["hosts"] = hosts
        for kind in ("links", "devices", "dram"):
            if kind not in after:
                continue
            out[kind] = {n: dict(e, bytes_total=_sub(
                e["bytes_total"], before.get(kind, {}).get(n, {}).get("bytes_total", 0),
                f"{kind} {n} bytes_total")) for n, e in after[kind].items()}
        ta, tb = before["total"], after["total"]
        merged = _hist_sub(ta["latency_hist"], tb["latency_hist"], "total")
        sum_ns = _sub(tb["latency_ns_sum"], ta["latency_ns_sum"], "total latency_ns_sum")
        exact = ta["latency_count"] == 0
        out["total"] = _total(hosts, merged, sum_ns, tb["latency_ns_min"] if exact else None,
                              tb["latency_ns_max"] if exact else None)
        return out
    return _diff_host(before, after)
