"""Declared accesses that wait for a device out of reach instead of failing at once.

While a device's node daemon is down, paused or cut off, a link on its path is
cut, or the device has failed, declared accesses to it raise
:class:`~fabric.errors.NodeUnavailable` (``LinkDown`` is one) or
:class:`~fabric.errors.DeviceFailed` (docs/faults.md).  Device memory outlives
its daemon, so code that can wait -- a training step, a barrier -- retries the
access, as a host stalls on a memory access, until it goes through or its
deadline passes; then the typed error stands.
"""
from __future__ import annotations

import time

from .errors import DeviceFailed, NodeUnavailable

#: First pause between tries, and the longest one (it doubles in between).
FIRST_PAUSE_S = 0.005
MAX_PAUSE_S = 0.1


def access_waiting(region, offset: int, nbytes: int, write: bool, wait_ms: int) -> int:
    """``region.access(offset, nbytes, write)``, retried for up to ``wait_ms`` while
    the device is out of reach; returns the charge (ns)."""
    try:
        return region.access(offset, nbytes, write)
    except (NodeUnavailable, DeviceFailed):
        deadline = time.monotonic() + wait_ms / 1000
        pause_s = FIRST_PAUSE_S
        while True:
            time.sleep(pause_s)
            pause_s = min(pause_s * 2, MAX_PAUSE_S)
            try:
                return region.access(offset, nbytes, write)
            except (NodeUnavailable, DeviceFailed):
                if time.monotonic() >= deadline:
                    raise
