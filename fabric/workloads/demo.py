"""The training demo: one small model, trained in both modes on one cluster.

``run_training_demo()`` starts a cluster on the default topology, trains
the same model from the same seed with replicated weights (private copies,
ZeroMQ ring all-reduce) and with pooled weights (one copy in pooled
memory), prints the two side by side -- equal loss, about N copies of the
weights vs about one, step time, p99 latency, locality -- writes the result
files and plots into a fresh folder, and stops the cluster.  About a minute
on two cores.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile

from .. import Cluster
from ..errors import FabricError
from .report import PlotsUnavailable, summary_table, write_plots
from .runner import train

DEMO_PARAMS = "2M"


def run_training_demo(hosts: int = 3, steps: int = 30, state_dir: str | None = None,
                      out_dir: str | None = None, *, as_json: bool = False) -> int:
    """Run the demo; return a process exit code (0 when both modes agree).

    With ``as_json`` the progress goes to stderr and stdout gets one JSON
    object (``"schema": 1``) with the losses, memory, and the files written.
    """
    out_dir = out_dir or tempfile.mkdtemp(prefix="fabric-train-demo-")
    os.makedirs(out_dir, exist_ok=True)
    stdout = sys.stdout
    if as_json:
        sys.stdout = sys.stderr
    try:
        return _run(hosts, steps, state_dir, out_dir, as_json, stdout)
    finally:
        sys.stdout = stdout


def _run(hosts: int, steps: int, state_dir: str | None, out_dir: str, as_json: bool,
         stdout) -> int:
    print(f"starting a {hosts}-host cluster (switched-pool topology, virtual injection) ...")
    results, paths = [], []
    with Cluster.start(hosts=hosts, devices=hosts, device_size="64MiB",
                       state_dir=state_dir) as cluster:
        for mode in ("replicated", "pooled"):
            print(f"training {DEMO_PARAMS} parameters for {steps} steps, {mode} ...", flush=True)
            path = os.path.join(out_dir, f"{mode}.json")
            results.append(train(hosts=hosts, mode=mode, steps=steps, seed=1,
                                 params=DEMO_PARAMS, state_dir=cluster.state_dir,
                                 quiet=False, out=path))
            paths.append(path)
    rep, pool = results
    print()
    print(summary_table(results, paths))
    same = abs(rep["final_loss"] - pool["final_loss"]) <= 1e-5 * abs(rep["final_loss"])
    print(f"\nfinal loss: replicated {rep['final_loss']:.6f}, pooled {pool['final_loss']:.6f}"
          f" -> {'the same' if same else 'DIFFERENT'} (same seed, same reduction order)")
    print(f"weights in memory (measured PSS, all workers): replicated "
          f"{rep['memory']['weights_copies']:.2f} copies, pooled "
          f"{pool['memory']['weights_copies']:.2f} copies")
    files: list[str] = []
    try:
        files = write_plots(results, paths, out_dir)
        print(f"\nresults and {len(files)} plots in {out_dir}")
    except PlotsUnavailable as exc:
        print(f"\nresults in {out_dir}; {exc}", file=sys.stderr)
    print(f"compare again with: fabric report {paths[1]} --compare {paths[0]} --out DIR")
    if as_json:
        stdout.write(json.dumps({
            "schema": 1, "demo": "train", "hosts": hosts, "steps": steps, "params": DEMO_PARAMS,
            "final_loss": {"replicated": rep["final_loss"], "pooled": pool["final_loss"]},
            "same_loss": same,
            "weights_copies": {"replicated": rep["memory"]["weights_copies"],
                               "pooled": pool["memory"]["weights_copies"]},
            "results": paths, "plots": files, "out_dir": out_dir}) + "\n")
    return 0 if same else 1


def main() -> int:
    try:
        return run_training_demo()
    except FabricError as exc:
        print(f"fabric: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
