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
* ``mirror_failover``: a 1 MiB mirrored region (``mirror=2``, first copy on
  d1, second on d0) read whole by declared reads: the wall time of a read
  with both copies up (baseline), of the first read after ``device-fail d1``
  (it fails over to the second copy), of a read once failed over, and of the
  first read after the device is restored (it resynchronises the first copy,
  1 MiB, then reads); the bytes are checked each time.
* ``manager_restart``: with ``--regions`` regions in the directory, SIGKILL the
  manager, start a new one (it recovers the journal), and time from the start
  of the new process to the first successful OPEN of an open session (which
  retries by itself): seconds, p50 and max; the data is checked.
* ``journal``: ALLOC+FREE pairs per second from one session, on a cluster whose
  manager journals (fsync before every reply) and on one started with
  ``FABRIC_NO_JOURNAL=1`` (the baseline), side by side in the same run, taking
  turns in blocks of 100 pairs; best round of each; ``ratio`` is journaled /
  baseline (target >= 0.7).

Usage: python scripts/bench_faults.py [--trials 10] [--node-timeout-ms 1000]
           [--regions 1000] [--pairs 2000] [--rounds 3] [--only detect|mirror|manager|journal]
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


def run_mirror(trials: int, common: dict) -> None:
    base, first, failed, resync = [], [], [], []
    want = np.arange(1 << 18, dtype=np.uint32)
    with fabric.Cluster.start(hosts=2, devices=2, device_size="64MiB", inject="off") as c:
        with c.connect("h0") as s:
            r = s.alloc("mirrored", 1 << 20, placement="d1", mirror=2)
            r.write(want)

            def timed() -> float:
                t = time.perf_counter()
                got = r.read().view(np.uint32)
                dt = time.perf_counter() - t
                assert (got == want).all(), "mirrored read returned wrong bytes"
                return dt
            for t in range(trials):
                note(f"mirror trial {t + 1}/{trials}")
                for _ in range(5):
                    base.append(timed())
                fid = faults.inject("device-fail", "d1", state_dir=c.state_dir, by="bench")
                first.append(timed())
                for _ in range(5):
                    failed.append(timed())
                r.write(want[:1024], 0)                    # the first copy goes stale
                faults.heal(c.state_dir, fid, by="bench")
                resync.append(timed())
            st = s.stats()["mirror"]
    us = lambda xs: round(float(np.median(xs)) * 1e6, 1)  # noqa: E731
    emit({**common, "bench": "mirror_failover", "trials": trials, "region_bytes": 1 << 20,
          "read_both_up_us_p50": us(base), "first_read_after_fail_us_p50": us(first),
          "read_failed_over_us_p50": us(failed), "first_read_after_restore_us_p50": us(resync),
          "failovers": st["failovers"], "resyncs": st["resyncs"], "data_intact": True})


def run_manager_restart(trials: int, nregions: int, common: dict) -> None:
    from fabric.faults import process
    from fabric.statedir import StateDir
    times = []
    with fabric.Cluster.start(hosts=2, devices=2, device_size="64MiB") as c:
        state = StateDir(c.state_dir)
        with c.connect("h0", timeout_ms=30_000) as s:
            r = s.alloc("kept", 1 << 20, placement="d1", share="shared")
            r.write(np.arange(1 << 18, dtype=np.uint32))
            for i in range(nregions - 1):
                s.alloc(f"filler-{i}", 4096).close()
            procs = []
            for t in range(trials):
                note(f"manager restart {t + 1}/{trials}")
                faults.inject("kill", "manager", state_dir=c.state_dir, by="bench")
                with state.locked():
                    t0 = time.perf_counter()
                    procs.append(process.spawn_manager(state, state.read()))
                got = s.open("kept").read().view(np.uint32)      # retries until served
                times.append(time.perf_counter() - t0)
                assert (got == np.arange(1 << 18, dtype=np.uint32)).all(), "data lost"
                assert len(c.status()["regions"]) == nregions, "regions lost"
                faults.heal(c.state_dir, by="bench")             # nothing left to restart
        c.stop()
        for p in procs:
            p.wait(10)
    v = np.array(times)
    emit({**common, "bench": "manager_restart", "trials": trials, "regions": nregions,
          "restart_to_first_request_s_p50": round(float(np.median(v)), 3),
          "restart_to_first_request_s_max": round(float(v.max()), 3), "data_intact": True})


def _start(journaled: bool) -> fabric.Cluster:
    from fabric.daemons.manager import NO_JOURNAL_ENV
    if not journaled:
        os.environ[NO_JOURNAL_ENV] = "1"      # read by the manager this cluster spawns
    try:
        c = fabric.Cluster.start(hosts=1, devices=1, device_size="64MiB")
    finally:
        os.environ.pop(NO_JOURNAL_ENV, None)
    assert c.status()["manager"]["journal"]["enabled"] == journaled
    return c


def run_journal(pairs: int, rounds: int, common: dict) -> None:
    """Both clusters run side by side and take turns in blocks of BLOCK pairs, so load
    from elsewhere on the machine lands on both alike; best round of each."""
    block = 100
    clusters = {"journal": _start(True), "baseline": _start(False)}
    try:
        sessions = {k: c.connect("h0") for k, c in clusters.items()}
        for k, s in sessions.items():                           # warm up
            for i in range(50):
                s.alloc(f"w{i}", 4096).close()
                s.free(f"w{i}")
        best = {k: 0.0 for k in clusters}
        n = 0
        for r in range(rounds):
            note(f"round {r + 1}/{rounds}")
            spent = {k: 0.0 for k in clusters}
            for b in range(0, pairs, block):
                order = list(sessions.items())
                if (b // block + r) % 2:
                    order.reverse()
                for k, s in order:
                    t0 = time.perf_counter()
                    for i in range(block):
                        n += 1
                        s.alloc(f"r{n}", 4096).close()
                        s.free(f"r{n}")
                    spent[k] += time.perf_counter() - t0
            for k in clusters:
                best[k] = max(best[k], (pairs // block * block) / spent[k])
        for s in sessions.values():
            s.close()
    finally:
        for c in clusters.values():
            c.stop()
    emit({**common, "bench": "journal", "pairs": pairs, "rounds": rounds, "block": block,
          "journaled_pairs_per_s": round(best["journal"], 1),
          "baseline_pairs_per_s": round(best["baseline"], 1),
          "ratio": round(best["journal"] / best["baseline"], 3)})


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--node-timeout-ms", type=int, default=1000)
    p.add_argument("--regions", type=int, default=1000,
                   help="regions in the directory a restarted manager recovers")
    p.add_argument("--pairs", type=int, default=2000, help="ALLOC+FREE pairs per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--only", choices=("detect", "mirror", "manager", "journal"))
    args = p.parse_args()
    common = {"git_commit": git_commit(), "seed": 0, "cpus": os.cpu_count()}
    if args.only in (None, "detect"):
        run(args.trials, args.node_timeout_ms, common)
    if args.only in (None, "mirror"):
        run_mirror(args.trials, common)
    if args.only in (None, "manager"):
        run_manager_restart(args.trials, args.regions, common)
    if args.only in (None, "journal"):
        run_journal(args.pairs, args.rounds, common)
    return 0


if __name__ == "__main__":
    sys.exit(main())
