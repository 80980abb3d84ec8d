#!/usr/bin/env python3
"""Benchmark the weight-sharing workloads and fabric.sync; prints JSON lines.

Every line carries the seed, the git commit and its configuration; every
ratio compares figures measured in this same run.

* ``train_overhead``: median training step time of ``fabric run train`` with
  injection off (one host, each mode) vs the identical numpy loop -- same
  model, batch, data and optimizer -- in one process without the fabric.
  Target: <= 1.15x for a model of >= 8M parameters.  Each side is measured
  ``--repeats`` times, interleaved, and the lowest median kept (the machine
  is shared); the ratio of the fastest single steps and of CPU time per step
  (all threads) are printed too, being far less disturbed by other load than
  median wall time.
* ``train_memory``: measured PSS of the weights summed over the workers, and
  of the whole worker processes, pooled vs replicated on 4 hosts.  Targets:
  pooled <= 1.1 copies of the weights; replicated about 4.
* ``barrier``: round time of a fabric.sync barrier (atomics and a futex in
  pooled memory, charged by the engine) vs a ZeroMQ message barrier (arrive
  messages to rank 0, go messages back), in the same 4 processes.

Usage: python scripts/bench_workloads.py [--params 8M] [--steps 20] [--rounds 2000] [--seed 0]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

# One BLAS thread for the in-process loop and the workers alike (set before numpy
# loads; the runner passes it on): equal footing, and no spinning BLAS threads
# competing with other load on a small machine.  Override with the variable.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _benchutil import emit, git_commit, note  # noqa: E402

import fabric  # noqa: E402
from fabric.workloads import TrainConfig, train  # noqa: E402
from fabric.workloads.data import Dataset  # noqa: E402
from fabric.workloads.model import (SGD, backward, forward, init_params,  # noqa: E402
                                    loss_and_grad_out)


def baseline_step_ns(cfg: TrainConfig) -> list[int]:
    """The same training loop as a one-host run, in this process, no fabric."""
    layout = cfg.layout
    p = np.zeros(layout.size, np.float32)
    g, m = np.zeros_like(p), np.zeros_like(p)
    init_params(layout, p, cfg.seed)
    data, opt = Dataset(cfg.seed, layout.widths[0], layout.widths[-1]), SGD(cfg.lr, cfg.momentum)
    out, cpu = [], []
    for step in range(cfg.steps):
        c0, t0 = time.process_time_ns(), time.perf_counter_ns()
        X, y = data.batch(step, cfg.batch, (0, cfg.batch))
        acts = forward(layout, p, X)
        _loss, d = loss_and_grad_out(acts[-1], y, cfg.batch)
        backward(layout, p, acts, d, g)
        opt.update(p, g, m)
        out.append(time.perf_counter_ns() - t0)
        cpu.append(time.process_time_ns() - c0)
    return out, cpu


def median(xs) -> float:
    return float(np.median(np.asarray(xs, dtype=np.float64)))


def bench_overhead(args, base: dict) -> None:
    for mode in ("pooled", "replicated"):
        fab, ref, fab_cpu, ref_cpu, fab_min, ref_min = [], [], [], [], [], []
        with fabric.Cluster.start(hosts=1, devices=1, device_size=f"{args.device_mib}MiB",
                                  inject="off", seed=args.seed) as c:
            cfg = TrainConfig(hosts=1, mode=mode, steps=args.steps, seed=args.seed,
                              params=args.params, inject="off", state_dir=c.state_dir)
            for _ in range(args.repeats):
                wall, cpu = baseline_step_ns(cfg)
                ref.append(median(wall[2:]))
                ref_min.append(min(wall[2:]))
                ref_cpu.append(median(cpu[2:]))
                r = train(cfg)
                fab.append(median([s["wall_ns"] for s in r["steps"]][2:]))
                fab_min.append(min(s["wall_ns"] for s in r["steps"][2:]))
                fab_cpu.append(median([s["cpu_ns"] for s in r["steps"]][2:]))
        emit({**base, "bench": "train_overhead", "mode": mode, "hosts": 1,
              "params": cfg.layout.size, "layers": list(cfg.widths), "batch": cfg.batch,
              "steps": cfg.steps, "repeats": args.repeats, "inject": "off",
              "step_ms_fabric": round(min(fab) / 1e6, 3),
              "step_ms_numpy": round(min(ref) / 1e6, 3),
              "overhead_ratio": round(min(fab) / min(ref), 3),
              "step_ms_fabric_best": round(min(fab_min) / 1e6, 3),
              "step_ms_numpy_best": round(min(ref_min) / 1e6, 3),
              "overhead_ratio_best": round(min(fab_min) / min(ref_min), 3),
              "step_cpu_ms_fabric": round(min(fab_cpu) / 1e6, 3),
              "step_cpu_ms_numpy": round(min(ref_cpu) / 1e6, 3),
              "overhead_ratio_cpu": round(min(fab_cpu) / min(ref_cpu), 3),
              "target_ratio_max": 1.15})


def bench_memory(args, base: dict) -> None:
    hosts = 4
    with fabric.Cluster.start(hosts=hosts, devices=hosts,
                              device_size=f"{args.device_mib}MiB", seed=args.seed) as c:
        for mode in ("pooled", "replicated"):
            r = train(hosts=hosts, mode=mode, steps=2, seed=args.seed, params=args.params,
                      state_dir=c.state_dir)
            m = r["memory"]
            emit({**base, "bench": "train_memory", "mode": mode, "hosts": hosts,
                  "params": r["model"]["params"], "weights_mib": round(m["weights_bytes"] / 2**20, 2),
                  "weights_pss_mib": round(m["weights_pss_bytes"] / 2**20, 2),
                  "weights_copies": round(m["weights_copies"], 3),
                  "total_pss_mib": round(m["total_pss_bytes"] / 2**20, 1),
                  "total_uss_mib": round(m["total_uss_bytes"] / 2**20, 1),
                  "target": "pooled <= 1.1 copies" if mode == "pooled" else "about 4 copies"})


BARRIER_WORKER = r"""
import json, sys, time
import numpy as np, zmq
import fabric
from fabric.sync import Barrier
cfg = json.loads(sys.argv[1])
rank, n, rounds = cfg["rank"], cfg["parties"], cfg["rounds"]
s = fabric.connect(f"h{rank}", state_dir=cfg["state_dir"])
b = Barrier(s.open("bench-sync", policy="direct"), n, rank)
b.wait()
t = []
for _ in range(rounds):
    t0 = time.perf_counter_ns(); b.wait(); t.append(time.perf_counter_ns() - t0)
fab = t
ctx = zmq.Context()
inbox = ctx.socket(zmq.PULL); inbox.bind(f"ipc://{cfg['dir']}/b{rank}.sock")
outs = {}
targets = range(1, n) if rank == 0 else [0]
for r in targets:
    o = ctx.socket(zmq.PUSH); o.connect(f"ipc://{cfg['dir']}/b{r}.sock"); outs[r] = o
b.wait()                                  # every socket is bound and connected
def zbarrier():
    if rank == 0:
        for _ in range(n - 1): inbox.recv()
        for o in outs.values(): o.send(b"go")
    else:
        outs[0].send(b"arrive"); inbox.recv()
for _ in range(50): zbarrier()
t = []
for _ in range(rounds):
    t0 = time.perf_counter_ns(); zbarrier(); t.append(time.perf_counter_ns() - t0)
b.wait()
q = lambda a, p: float(np.percentile(np.asarray(a) / 1e3, p))
print(json.dumps({"rank": rank, "fabric_us": [q(fab, 50), q(fab, 99)],
                  "zmq_us": [q(t, 50), q(t, 99)], "charged_ns": b.charged_ns}))
for o in outs.values(): o.close(0)
inbox.close(0); ctx.term(); s.close()
"""


def bench_barrier(args, base: dict) -> None:
    n = 4
    with fabric.Cluster.start(hosts=n, devices=1, device_size="16MiB", seed=args.seed) as c:
        s = c.connect("h0")
        s.alloc("bench-sync", 4096, share="coherent", policy="direct")
        with tempfile.TemporaryDirectory(dir=c.state_dir) as d:
            procs = [subprocess.Popen(
                [sys.executable, "-c", BARRIER_WORKER,
                 json.dumps({"rank": r, "parties": n, "rounds": args.rounds,
                             "state_dir": c.state_dir, "dir": d})],
                stdout=subprocess.PIPE, text=True) for r in range(n)]
            outs = [json.loads(p.communicate(timeout=600)[0]) for p in procs]
        s.free("bench-sync")
        s.close()
    fab50 = median([o["fabric_us"][0] for o in outs])
    z50 = median([o["zmq_us"][0] for o in outs])
    emit({**base, "bench": "barrier", "processes": n, "rounds": args.rounds,
          "fabric_sync_us_p50": round(fab50, 2),
          "fabric_sync_us_p99": round(max(o["fabric_us"][1] for o in outs), 2),
          "zmq_us_p50": round(z50, 2),
          "zmq_us_p99": round(max(o["zmq_us"][1] for o in outs), 2),
          "fabric_vs_zmq_p50": round(fab50 / z50, 3),
          "charged_ns_per_round_rank0": round(outs[0]["charged_ns"] / (args.rounds + 3), 1)})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="8M", help="model size (default 8M)")
    ap.add_argument("--steps", type=int, default=20, help="steps per timing (default 20)")
    ap.add_argument("--repeats", type=int, default=3,
                    help="interleaved repetitions of each timing; the best median is kept")
    ap.add_argument("--rounds", type=int, default=2000, help="barrier rounds (default 2000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device-mib", type=int, default=256, help="device size (default 256)")
    ap.add_argument("--only", choices=("overhead", "memory", "barrier"), default=None)
    args = ap.parse_args()
    base = {"seed": args.seed, "git_commit": git_commit(), "cpus": os.cpu_count(),
            "blas_threads": os.environ["OPENBLAS_NUM_THREADS"],
            "fabric_version": fabric.__version__}
    for name, fn in (("overhead", bench_overhead), ("memory", bench_memory),
                     ("barrier", bench_barrier)):
        if args.only in (None, name):
            note(f"{name} ...")
            fn(args, base)
    return 0


if __name__ == "__main__":
    sys.exit(main())
