"""The result of a training run: one JSON-ready dict, ``"schema": 1``.

docs/workloads.md documents every field.  Built by the runner from the
workers' records; nothing here touches the fabric.
"""
from __future__ import annotations

import platform
import time

from .. import __version__
from . import metrics
from .config import TrainConfig

SCHEMA = 1
TIERS = ("local", "cached", "far", "remote")


def _tier_share(tier_bytes: dict) -> dict:
    total = sum(tier_bytes.values())
    return {t: {"bytes": int(tier_bytes[t]), "share": tier_bytes[t] / total if total else 0.0}
            for t in TIERS}


def build_result(cfg: TrainConfig, records: dict, *, hosts: list[str], state_dir: str,
                 started_cluster: bool, git_commit: str | None, topology, wall_s: float) -> dict:
    n, S = cfg.hosts, cfg.steps
    inject = records["hello"][0]["inject"]
    steps_by_rank = records["steps"]
    done = records["done"]
    layout = cfg.layout

    steps = []
    for i in range(S):
        recs = [steps_by_rank[r][i] for r in range(n)]
        wall = max(x["wall_ns"] for x in recs)
        virt = max(x["virtual_ns"] for x in recs)
        emu = max(x["wall_ns"] + (x["virtual_ns"] if inject == "virtual" else 0) for x in recs)
        acc = sum(x["accesses"] for x in recs)
        steps.append({"step": i, "loss": float(sum(x["loss"] for x in recs)),
                      "wall_ns": wall, "virtual_ns": virt, "emulated_ns": emu,
                      "cpu_ns": sum(x["cpu_ns"] for x in recs),
                      "hit_rate": sum(x["hits"] for x in recs) / acc if acc else 0.0,
                      "tier_bytes": {t: sum(x["tier_bytes"][t] for x in recs) for t in TIERS}})

    workers = []
    for r in range(n):
        recs = steps_by_rank[r]
        d = done[r]
        tot = d["totals"]
        workers.append({
            "rank": r, "host": hosts[r], "pid": records["hello"][r]["pid"],
            "steps": {k: [x[k] for x in recs] for k in ("loss", "wall_ns", "cpu_ns", "virtual_ns")}
            | {"hit_rate": [x["hits"] / x["accesses"] if x["accesses"] else 0.0 for x in recs],
               "tier_bytes": {t: [x["tier_bytes"][t] for x in recs] for t in TIERS}},
            "tiers": _tier_share(tot["tier_bytes"]),
            "hit_rate": tot["hits"] / tot["accesses"] if tot["accesses"] else 0.0,
            "hits": tot["hits"], "accesses": tot["accesses"],
            "virtual_time_ns": d["virtual_time_ns"],
            "sync_charged_ns": d["sync_charged_ns"],
            "memory": d["memory"],
            "latency": {"weights": _summ(metrics.hist_from_wire(d["hist_weights"])),
                        "fabric": _summ(metrics.hist_from_wire(d["hist_fabric"]))},
        })

    weights_bytes = layout.nbytes
    mem_w = [w["memory"] for w in workers]
    total_pss = sum(m["pss_bytes"] for m in mem_w)
    w_pss = sum(m["weights"]["pss_bytes"] for m in mem_w)
    memory = {
        "weights_bytes": weights_bytes,
        "total_pss_bytes": total_pss,
        "total_uss_bytes": sum(m["uss_bytes"] for m in mem_w),
        "weights_pss_bytes": w_pss,
        "weights_uss_bytes": sum(m["weights"]["uss_bytes"] for m in mem_w),
        "weights_copies": w_pss / weights_bytes,
        "per_worker": [{"rank": w["rank"], "host": w["host"], "pss_bytes": w["memory"]["pss_bytes"],
                        "uss_bytes": w["memory"]["uss_bytes"], "rss_bytes": w["memory"]["rss_bytes"],
                        "weights_pss_bytes": w["memory"]["weights"]["pss_bytes"],
                        "weights_uss_bytes": w["memory"]["weights"]["uss_bytes"]}
                       for w in workers],
    }
    by_host = {w["host"]: {t: w["tiers"][t]["bytes"] for t in TIERS} for w in workers}
    total_tiers = {t: sum(h[t] for h in by_host.values()) for t in TIERS}
    walls = sorted(s["wall_ns"] for s in steps)
    emus = sorted(s["emulated_ns"] for s in steps)
    return {
        "schema": SCHEMA,
        "kind": "train",
        "created_unix_s": round(time.time(), 3),
        "fabric_version": __version__,
        "git_commit": git_commit,
        "machine": platform.node(),
        "config": {**cfg.to_dict(), "state_dir": state_dir, "started_cluster": started_cluster,
                   "inject_effective": inject, "topology_name": topology.name,
                   "host_names": hosts},
        "seed": cfg.seed,
        "model": {"layers": list(layout.widths), "params": layout.size,
                  "weights_bytes": weights_bytes},
        "steps": steps,
        "final_loss": steps[-1]["loss"],
        "timing": {"run_wall_s": round(wall_s, 3),
                   "step_wall_ns_median": walls[len(walls) // 2],
                   "step_wall_ns_mean": sum(walls) / len(walls),
                   "step_emulated_ns_median": emus[len(emus) // 2],
                   "step_emulated_ns_mean": sum(emus) / len(emus)},
        "latency": {
            "weights": _summ(metrics.merge_wire(done[r]["hist_weights"] for r in range(n))),
            "fabric": _summ(metrics.merge_wire(done[r]["hist_fabric"] for r in range(n))),
        },
        "locality": {"by_host": by_host, "total": _tier_share(total_tiers),
                     "hit_rate": _ratio(workers)},
        "memory": memory,
        "workers": workers,
    }


def _ratio(workers) -> float:
    """Cluster-wide page-cache hit rate over the run."""
    acc = sum(w["accesses"] for w in workers)
    return sum(w["hits"] for w in workers) / acc if acc else 0.0


def _summ(h) -> dict:
    return metrics.latency_summary(h)
