"""Spin mode needs a core per spinning host: how many cores we have, and the warning.

In spin mode every access really waits, by spinning on the clock; a spinning host
process therefore keeps one core busy.  When more processes spin than this
process may run on (``os.sched_getaffinity``), they take turns on the cores and
the delays they inject stop matching modelled time.  ``fabric up --inject spin``
and ``fabric.connect(..., inject="spin")`` warn then; virtual mode has no such
limit, and lockstep virtual time (``--inject virtual --lockstep-ns 10000``) makes
many hosts on few cores contend reproducibly (docs/cost-model.md, "Time bases").
"""
from __future__ import annotations

import os
import warnings

from .errors import SpinOvercommitWarning


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity; os.cpu_count() where that is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def overcommit_message(spinning: int, cores: int, what: str = "processes spin") -> str | None:
    """The one-line warning when ``spinning`` spinners outnumber ``cores``, else None."""
    if spinning <= cores:
        return None
    return (f"spin mode needs a core per spinning host, but {spinning} {what} on {cores} "
            f"core{'s' if cores != 1 else ''}: injected delays will run late; use --inject "
            f"virtual --lockstep-ns 10000 (lockstep virtual time: hosts contend in shared "
            f"quanta of virtual time, reproducibly, whatever the core count)")


def warn_if_overcommitted(spinning: int, *, stacklevel: int = 3) -> bool:
    """warnings.warn(SpinOvercommitWarning) when ``spinning`` processes outnumber our cores."""
    msg = overcommit_message(spinning, available_cores())
    if msg is None:
        return False
    warnings.warn(msg, SpinOvercommitWarning, stacklevel=stacklevel)
    return True
