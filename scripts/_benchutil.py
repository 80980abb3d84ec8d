"""Small helpers shared by the benchmark scripts (JSON lines, percentiles, git commit)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np


def git_commit() -> str:
    """The commit of the ``fabric`` being measured: its checkout's HEAD (an A/B run may
    use this script with another tree's package), "unknown" for an installed wheel."""
    import fabric
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, cwd=os.path.dirname(os.path.abspath(fabric.__file__)),
                              timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def emit(record: dict) -> None:
    """Print one JSON line (and flush, so progress is visible on long runs)."""
    print(json.dumps(record, sort_keys=True), flush=True)


def note(msg: str) -> None:
    print(f"# {msg}", file=sys.stderr, flush=True)


def percentiles_us(samples_s: list[float]) -> dict:
    a = np.asarray(samples_s) * 1e6
    return {"latency_us_p50": round(float(np.percentile(a, 50)), 2),
            "latency_us_p99": round(float(np.percentile(a, 99)), 2),
            "latency_us_max": round(float(a.max()), 2)}


def best_of(fn, repeats: int) -> float:
    """The fastest of ``repeats`` timed calls (least disturbed by a noisy machine)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best
