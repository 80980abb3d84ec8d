#!/usr/bin/env python3
"""Recovery figures: how fast the fabric notices a crashed node and serves again after a restart.

Prints JSON lines (seed, git commit, configuration in each):

* ``detect``: SIGKILL a node daemon (``fabric.faults`` kill), then poll the
  manager's STATUS every millisecond until the node is reported unavailable:
  seconds from the kill to detection, against the configured node timeout
  (the baseline in the same run: detection cannot be faster than it, and
  should not be much slower).
* ``restart``: ``fabric.faults`` restart of that node daemon, then retry an
  OPEN of a region homed on it until it succeeds: seconds from the restart
  call to serving again; the data written before the kill is checked.

Not measured yet, because the parts do not exist: manager restart to first
request (needs the journaled directory), mirrored-read failover (needs
mirrored regions), journaled alloc+free throughput.

Usage: python scripts/bench_faults.py [--trials 10] [--node-timeout-ms 1000]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _benchutil import emit, git_commit, note  # noqa: E402

import fabric  # noqa: E402
import fabric.faults as faults  # noqa: E402


def _alive(cluster, node: str) -> bool:
    return {n["name"]: n["alive"] for n in cluster.status()["nodes"]}[node]


def run(trials: int, node_timeout_ms: int, common: dict) -> None:
    detect, serve = [], []
    with fabric.Cluster.start(hosts=2, devices=2, device_size="64MiB",
                              node_timeout_ms=node_timeout_ms) as c:
        with c.connect("h0") as s:
            r = s.alloc("kept", 1 << 20, placement="d1", share="shared")   # homed on node h1
            r.write(np.arange(1 << 18, dtype=np.uint32))
            for t in range(trials):
                note(f"trial {t + 1}/{trials}")
                t0 = time.perf_counter()
                fid = faults.inject("kill", "h1", state_dir=c.state_dir, by="bench")
                while _alive(c, "h1"):
                    time.sleep(0.001)
                detect.append(time.perf_counter() - t0)
                t1 = time.perf_counter()
                faults.heal(c.state_dir, fid, by="bench")              # restarts h1
                while True:
                    try:
                        got = s.open("kept").read().view(np.uint32)
                        break
                    except fabric.NodeUnavailable:
                        time.sleep(0.001)
                serve.append(time.perf_counter() - t1)
                assert (got == np.arange(1 << 18, dtype=np.uint32)).all(), "data lost"
    d, v = np.array(detect), np.array(serve)
    emit({**common, "bench": "detect", "trials": trials, "node_timeout_ms": node_timeout_ms,
          "detect_s_p50": round(float(np.median(d)), 3), "detect_s_max": round(float(d.max()), 3),
          "ratio_p50_to_timeout": round(float(np.median(d)) * 1000 / node_timeout_ms, 3)})
    emit({**common, "bench": "restart", "trials": trials,
          "restart_to_serving_s_p50": round(float(np.median(v)), 3),
          "restart_to_serving_s_max": round(float(v.max()), 3), "data_intact": True})


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--node-timeout-ms", type=int, default=1000)
    args = p.parse_args()
    common = {"git_commit": git_commit(), "seed": 0, "cpus": os.cpu_count()}
    run(args.trials, args.node_timeout_ms, common)
    return 0


if __name__ == "__main__":
    sys.exit(main())
