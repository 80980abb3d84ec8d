"""Waiting in fault tests: faults take effect, and heal, a little later than the call."""
from __future__ import annotations

import time

#: Generous: how fast faults are noticed is a benchmark figure, not a test.
WITHIN_S = 15.0


def wait_until(pred, what: str, timeout_s: float = WITHIN_S, poll_s: float = 0.02) -> float:
    """Poll ``pred`` until it is true; seconds it took.  AssertionError naming ``what``
    when ``timeout_s`` passes first."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if pred():
            return time.monotonic() - t0
        time.sleep(poll_s)
    raise AssertionError(f"{what} did not happen within {timeout_s} s")


def node(cluster, name: str) -> dict:
    """Node ``name`` as ``fabric status`` reports it (alive, pid, incarnation, ...)."""
    return {n["name"]: n for n in cluster.status()["nodes"]}[name]
