"""Fault injection: break parts of a running cluster on purpose, log it, undo it.

    import fabric.faults as faults
    fid = faults.inject("pause", "h1")             # now, until healed
    faults.inject("kill", "h1", at_s=2, for_s=3)   # in 2 s; restarted 3 s later
    faults.heal()                                  # undo everything still active

The same from the shell: ``fabric fault pause h1``, ``fabric fault kill h1
--at 2 --for 3``, ``fabric fault list``, ``fabric fault heal``.  Every fault is
logged with a timestamp in the state dir (:mod:`.log`); docs/faults.md says
what each one does to the fabric and what a workload should see.

Kinds: process faults (:mod:`.process`): ``kill`` (healed by a restart),
``pause`` (healed by resume), and the one-shot actions ``resume`` and
``restart``; device and link faults (:mod:`.device`), written into the
engine segment every host reads: ``device-fail`` (healed by
``device-restore``), ``link-cut`` (``link-restore``), ``link-degrade``,
``link-flap``, ``poison``, ``slow``, and the one-shot actions
``device-restore`` and ``link-restore``.  Device and link faults take
parameters (``params``: factor, period_s and seed, offset and length, p and
stall_us), checked before anything happens; network faults (:mod:`.network`):
the message faults ``drop``, ``delay``, ``duplicate`` and ``reorder``
(``params``: ``p``, ``types``, ``delay_ms``, ``seed``) on chosen daemons, and
``partition`` (target ``h0,h1/h2,manager``), each healed by taking it out of
force.
"""
from __future__ import annotations

import functools
import json
import math
import os
import subprocess
import sys

from ..errors import FabricError, InvalidArgument
from ..statedir import StateDir
from . import device, log, network, process

#: kind -> (apply, heal action or None for one-shot actions)
KINDS = {
    "kill": (process.kill, "restart"),
    "pause": (process.pause, "resume"),
    "resume": (process.resume, None),
    "restart": (process.restart, None),
    "device-fail": (device.device_fail, "device-restore"),
    "device-restore": (device.device_restore, None),
    "link-cut": (device.link_cut, "link-uncut"),
    "link-restore": (device.link_restore, None),
    "link-degrade": (device.link_degrade, "link-undegrade"),
    "link-flap": (device.link_flap, "link-unflap"),
    "poison": (device.poison, "unpoison"),
    "slow": (device.slow, "unslow"),
    **{k: (functools.partial(network.apply, k), network.HEAL) for k in network.KINDS},
}
#: Kinds whose target is a device or a link (the others name a daemon).
DEVICE_KINDS = frozenset(k for k in KINDS if k not in ("kill", "pause", "resume", "restart")
                         and k not in network.KINDS)
#: Kinds that act on messages between daemons (their target names daemons or groups).
NETWORK_KINDS = frozenset(network.KINDS)
#: heal action -> function(state, target, params); process actions ignore params.
_ACTIONS = {"restart": lambda st, t, p: process.restart(st, t),
            "resume": lambda st, t, p: process.resume(st, t),
            "device-restore": device.device_restore, "link-uncut": device.link_uncut,
            "link-undegrade": device.link_undegrade, "link-unflap": device.link_unflap,
            "unpoison": device.unpoison, "unslow": device.unslow}
#: Longest delay or duration a scheduled fault may ask for.
MAX_SCHEDULE_S = 7 * 24 * 3600.0

__all__ = ["KINDS", "DEVICE_KINDS", "NETWORK_KINDS", "inject", "heal", "faults", "targets", "check_target"]


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


def targets(state_dir: str | None = None, kind: str = "kill") -> list[str]:
    """The names fault ``kind`` may target: for process and network faults ``manager``
    and every node, for device faults the devices, for link faults the links."""
    state = _state(state_dir)
    if kind in DEVICE_KINDS:
        return device.link_names(state) if kind.startswith("link-") else device.device_names(state)
    return process.targets(state)


def check_target(state: StateDir, kind: str, target: str) -> None:
    """One-line InvalidArgument unless ``target`` is something ``kind`` can break."""
    if kind in DEVICE_KINDS:
        device.check_target(state, kind, target)
    elif kind in NETWORK_KINDS:
        network.check(state, kind, target, None)
    else:
        process.check_target(state, target)


def inject(kind: str, target: str, *, state_dir: str | None = None, at_s: float = 0.0,
           for_s: float | None = None, by: str = "api", params: dict | None = None) -> str | None:
    """Inject fault ``kind`` into ``target`` (a daemon, a device, a link, or for
    network faults daemons and groups of them).

    Now, or ``at_s`` seconds from now; with ``for_s`` it is healed that long
    after it starts.  ``params`` are the fault's options (``{"factor": 4}`` for
    link-degrade, ``inject("drop", "manager", params={"p": 0.2, "types":
    ["ALLOC"]})``, ...; docs/faults.md).  Returns the fault id when it was
    applied now, None when it was scheduled (a detached scheduler applies and
    logs it; it exits when the cluster goes away).
    """
    if kind not in KINDS:
        raise InvalidArgument(f"unknown fault {kind!r} (known: {', '.join(KINDS)})")
    at_s = _seconds(at_s, "--at")
    if for_s is not None:
        for_s = _seconds(for_s, "--for")
        if KINDS[kind][1] is None:
            raise InvalidArgument(f"{kind} is a one-shot action; --for does not apply")
    state = _state(state_dir)
    if kind in NETWORK_KINDS:
        params = network.check(state, kind, target, params)
    else:
        check_target(state, kind, target)
        if kind in DEVICE_KINDS:
            params = device.check_params(state, kind, target, params or {})
        elif params:
            raise InvalidArgument(f"{kind} takes no options, got {', '.join(sorted(params))}")
    if at_s > 0 or for_s is not None:
        cmd = [sys.executable, "-m", "fabric.faults.scheduler", "--state-dir", state.path,
               "--kind", kind, "--target", target, "--at", repr(at_s)]
        if for_s is not None:
            cmd += ["--for", repr(for_s)]
        if params:
            cmd += ["--params", json.dumps(params)]
        log.record_schedule(state, kind, target, {"at_s": at_s, "for_s": for_s,
                                                  **(params or {})}, by)
        with open(os.path.join(log.faults_dir(state), "scheduler.out"), "ab") as out:
            subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                             start_new_session=True, close_fds=True, cwd=state.path)
        return None
    return apply(state, kind, target, by=by, params=params)


def apply(state: StateDir, kind: str, target: str, *, by: str,
          params: dict | None = None) -> str | None:
    """Apply a fault now and log it; one-shot actions are logged and not left active.
    ``params`` must have been checked (:func:`inject` does)."""
    fn = KINDS[kind][0]
    if kind in NETWORK_KINDS:
        params = fn(state, target, params)
    else:
        params = fn(state, target, **params) if params else fn(state, target)
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
        if action == network.HEAL:
            note = network.remove(state, entry)
        else:
            _ACTIONS[action](state, entry["target"], entry.get("params") or {})
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
    """``{"active": {id: entry}, "log": [entries...], "state": {...}}`` of the cluster in
    ``state_dir``; ``state`` is what the engine segment holds now (devices and links
    that are not up, degraded, slow or poisoned; :func:`device.fault_state`)."""
    state = _state(state_dir)
    try:
        now = device.fault_state(state)
    except (FabricError, OSError) as exc:     # no segment: an old cluster
        now = {"error": str(exc)}
    return {"active": log.read_active(state), "log": log.read_log(state), "state": now}
