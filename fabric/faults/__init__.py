"""Fault injection: break parts of a running cluster on purpose, log it, undo it.

    import fabric.faults as faults
    fid = faults.inject("pause", "h1")             # now, until healed
    faults.inject("kill", "h1", at_s=2, for_s=3)   # in 2 s; restarted 3 s later
    faults.heal()                                  # undo everything still active

The same from the shell: ``fabric fault pause h1``, ``fabric fault kill h1
--at 2 --for 3``, ``fabric fault list``, ``fabric fault heal``.  Every fault is
logged with a timestamp in the state dir (:mod:`.log`); docs/faults.md says
what each one does to the fabric and what a workload should see.

Kinds today (process faults, :mod:`.process`): ``kill`` (healed by a restart),
``pause`` (healed by resume), and the one-shot actions ``resume`` and
``restart``.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys

from ..errors import InvalidArgument
from ..statedir import StateDir
from . import log, process

#: kind -> (apply, heal action or None for one-shot actions)
KINDS = {
    "kill": (process.kill, "restart"),
    "pause": (process.pause, "resume"),
    "resume": (process.resume, None),
    "restart": (process.restart, None),
}
_ACTIONS = {"restart": process.restart, "resume": process.resume}
#: Longest delay or duration a scheduled fault may ask for.
MAX_SCHEDULE_S = 7 * 24 * 3600.0

__all__ = ["KINDS", "inject", "heal", "faults", "targets"]


def _state(state_dir: str | None) -> StateDir:
    state = StateDir(state_dir)
    state.read()  # ClusterError "no cluster in ..." when there is none
    return state


def _seconds(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0 <= value <= MAX_SCHEDULE_S:
        raise InvalidArgument(f"{what} must be a number of seconds in [0, {MAX_SCHEDULE_S:.0f}], "
                              f"got {value!r}")
    return float(value)


def targets(state_dir: str | None = None) -> list[str]:
    """The daemons faults may name: ``manager`` and every node."""
    return process.targets(_state(state_dir))


def inject(kind: str, target: str, *, state_dir: str | None = None, at_s: float = 0.0,
           for_s: float | None = None, by: str = "api") -> str | None:
    """Inject fault ``kind`` into daemon ``target``.

    Now, or ``at_s`` seconds from now; with ``for_s`` it is healed that long
    after it starts.  Returns the fault id when it was applied now, None when
    it was scheduled (a detached scheduler applies and logs it; it exits when
    the cluster goes away).
    """
    if kind not in KINDS:
        raise InvalidArgument(f"unknown fault {kind!r} (known: {', '.join(KINDS)})")
    at_s = _seconds(at_s, "--at")
    if for_s is not None:
        for_s = _seconds(for_s, "--for")
        if KINDS[kind][1] is None:
            raise InvalidArgument(f"{kind} is a one-shot action; --for does not apply")
    state = _state(state_dir)
    process.check_target(state, target)
    if at_s > 0 or for_s is not None:
        cmd = [sys.executable, "-m", "fabric.faults.scheduler", "--state-dir", state.path,
               "--kind", kind, "--target", target, "--at", repr(at_s)]
        if for_s is not None:
            cmd += ["--for", repr(for_s)]
        log.record_schedule(state, kind, target, {"at_s": at_s, "for_s": for_s}, by)
        with open(os.path.join(log.faults_dir(state), "scheduler.out"), "ab") as out:
            subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                             start_new_session=True, close_fds=True)
        return None
    return apply(state, kind, target, by=by)


def apply(state: StateDir, kind: str, target: str, *, by: str) -> str | None:
    """Apply a fault now and log it; one-shot actions are logged and not left active."""
    params = KINDS[kind][0](state, target)
    fid = log.record_inject(state, kind, target, params, by)
    if KINDS[kind][1] is None:
        log.record_heal(state, fid, by, note="one-shot action")
        return fid
    return fid


def heal_one(state: StateDir, fid: str, *, by: str) -> str:
    """Undo active fault ``fid``; returns what was done."""
    entry = log.read_active(state).get(fid)
    if entry is None:
        raise InvalidArgument(f"no active fault {fid!r} (`fabric fault list` shows them)")
    action = KINDS[entry["kind"]][1]
    note = action
    try:
        _ACTIONS[action](state, entry["target"])
    except InvalidArgument as exc:  # e.g. the daemon is not running any more
        note = f"not undone: {exc}"
    log.record_heal(state, fid, by, note=note)
    return note


def heal(state_dir: str | None = None, fault_id: str | None = None, *, by: str = "api") -> dict:
    """Undo one active fault, or every active fault (newest first): ``{id: what was done}``."""
    state = _state(state_dir)
    active = log.read_active(state)
    ids = [fault_id] if fault_id is not None else sorted(active, key=lambda f: -int(f[1:]))
    return {fid: heal_one(state, fid, by=by) for fid in ids}


def faults(state_dir: str | None = None) -> dict:
    """``{"active": {id: entry}, "log": [entries...]}`` of the cluster in ``state_dir``."""
    state = _state(state_dir)
    return {"active": log.read_active(state), "log": log.read_log(state)}
