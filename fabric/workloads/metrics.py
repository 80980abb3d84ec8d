"""Measuring a run: memory of processes and of address ranges, latency histograms.

Memory is measured, not computed: :func:`process_memory` is psutil's PSS and
USS of a process, and :func:`range_memory` reads /proc/<pid>/smaps and adds
up the PSS/USS/RSS of the mappings that cover an address range (for example
the weights), so "one copy pooled vs N copies replicated" comes from the
kernel's page accounting.  PSS splits each shared page evenly between the
processes mapping it, so PSS summed over processes counts every page once.

Histograms travel between processes as their non-empty buckets and are
rebuilt and merged with fabric.engine.Histogram (each bucket is recorded at
its representative value, within the histogram's 1% error).
"""
from __future__ import annotations

import numpy as np
import psutil

from .._binding.engine import hist_bucket_value
from ..engine import Histogram

PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p999", 99.9))


def process_memory(pid: int) -> dict:
    """PSS, USS and RSS (bytes) of process ``pid``, from psutil."""
    m = psutil.Process(pid).memory_full_info()
    return {"pss_bytes": int(m.pss), "uss_bytes": int(m.uss), "rss_bytes": int(m.rss)}


def range_memory(pid: int, start: int, nbytes: int) -> dict:
    """PSS/USS/RSS (bytes) of the pages of ``[start, start + nbytes)`` in ``pid``.

    Sums /proc/<pid>/smaps over the mappings inside the range; a mapping that
    straddles an end contributes in proportion to its overlap (an estimate,
    flagged by ``partial_mappings``).
    """
    end = start + nbytes
    tot = {"pss_bytes": 0.0, "uss_bytes": 0.0, "rss_bytes": 0.0}
    mappings = partial = 0
    cur = None   # (overlap fraction) of the mapping being read
    with open(f"/proc/{pid}/smaps", encoding="ascii", errors="replace") as f:
        for line in f:
            head = line.split(None, 1)[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(x, 16) for x in head.split("-"))
                ov = min(hi, end) - max(lo, start)
                cur = ov / (hi - lo) if ov > 0 else None
                if cur is not None:
                    mappings += 1
                    partial += cur < 1.0
                continue
            if cur is None:
                continue
            key = head[:-1]
            if key in ("Pss", "Rss", "Private_Clean", "Private_Dirty"):
                kib = int(line.split()[1]) * 1024 * cur
                if key == "Pss":
                    tot["pss_bytes"] += kib
                elif key == "Rss":
                    tot["rss_bytes"] += kib
                else:
                    tot["uss_bytes"] += kib
    out = {k: int(v) for k, v in tot.items()}
    out.update(mappings=mappings, partial_mappings=partial)
    return out


def hist_to_wire(h: Histogram) -> list[list[int]]:
    """A histogram as [[bucket, count], ...] of its non-empty buckets."""
    b = h.buckets()
    idx = np.nonzero(b)[0]
    return [[int(i), int(b[i])] for i in idx]


def hist_from_wire(pairs) -> Histogram:
    h = Histogram()
    for bucket, count in pairs:
        h.record(hist_bucket_value(int(bucket)), int(count))
    return h


def merge_wire(hists) -> Histogram:
    """One Histogram from several wire histograms (the cluster-wide view)."""
    total = Histogram()
    for pairs in hists:
        total.merge(hist_from_wire(pairs))
    return total


def latency_summary(h: Histogram) -> dict:
    """count, mean, p50/p90/p99/p99.9, min, max (ns), and the CDF points."""
    s = h.summary()
    out = {"count": int(s["count"]),
           "mean_ns": s["sum_ns"] / s["count"] if s["count"] else 0.0}
    for name, pct in PERCENTILES:
        out[f"{name}_ns"] = h.percentile(pct) if s["count"] else 0
    out["min_ns"], out["max_ns"] = int(s["min_ns"]), int(s["max_ns"])
    b = h.buckets()
    idx = np.nonzero(b)[0]
    out["buckets"] = [[hist_bucket_value(int(i)), int(b[i])] for i in idx]
    return out
