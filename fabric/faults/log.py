"""The fault log: every fault injected into a cluster, with timestamps, in its state dir.

::

    <state dir>/faults/log.jsonl     one JSON object a line, appended, never rewritten:
                                     {"t_unix_s", "action": "inject"|"heal", "id", "kind",
                                      "target", "params", "by"}
    <state dir>/faults/active.json   the faults in force now: {id: {...the inject entry...}}

``fabric fault list`` prints both; ``fabric fault heal`` undoes what is active.
Writers hold the state dir's fault lock, so a scheduler and the CLI can log at
the same time without losing an entry.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time

from ..statedir import StateDir, write_file_atomic


def faults_dir(state: StateDir) -> str:
    return os.path.join(state.path, "faults")


@contextlib.contextmanager
def _locked(state: StateDir):
    os.makedirs(faults_dir(state), mode=0o700, exist_ok=True)
    fd = os.open(os.path.join(faults_dir(state), "lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW,
                 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


#: The fault lock, for other writers of fault state (fabric.faults.network).
locked = _locked


def _active_path(state: StateDir) -> str:
    return os.path.join(faults_dir(state), "active.json")


def read_active(state: StateDir) -> dict[str, dict]:
    """The faults in force now, by id (empty when none or no log yet)."""
    try:
        with open(_active_path(state), encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def read_log(state: StateDir) -> list[dict]:
    """Every logged action, oldest first (unreadable lines are skipped)."""
    out = []
    try:
        with open(os.path.join(faults_dir(state), "log.jsonl"), encoding="utf-8") as f:
            for line in f:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
    except OSError:
        pass
    return out


def _write_active(state: StateDir, active: dict) -> None:
    write_file_atomic(_active_path(state), json.dumps(active, indent=1, sort_keys=True).encode())


def _append(state: StateDir, entry: dict) -> None:
    with open(os.path.join(faults_dir(state), "log.jsonl"), "a", encoding="utf-8") as f:
        f.write(json.dumps(entry, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def record_inject(state: StateDir, kind: str, target: str, params: dict, by: str) -> str:
    """Log a fault as injected and active; returns its id."""
    with _locked(state):
        n = sum(1 for e in read_log(state) if e.get("action") == "inject") + 1
        fid = f"f{n}"
        entry = {"t_unix_s": round(time.time(), 6), "action": "inject", "id": fid, "kind": kind,
                 "target": target, "params": params, "by": by}
        _append(state, entry)
        active = read_active(state)
        active[fid] = entry
        _write_active(state, active)
        return fid


def record_schedule(state: StateDir, kind: str, target: str, params: dict, by: str) -> None:
    """Log a fault scheduled for later (its scheduler logs the inject and the heal)."""
    with _locked(state):
        _append(state, {"t_unix_s": round(time.time(), 6), "action": "schedule", "id": None,
                        "kind": kind, "target": target, "params": params, "by": by})


def record_heal(state: StateDir, fid: str, by: str, note: str = "") -> None:
    """Log that fault ``fid`` was undone and drop it from the active set."""
    with _locked(state):
        active = read_active(state)
        entry = active.pop(fid, None)
        _append(state, {"t_unix_s": round(time.time(), 6), "action": "heal", "id": fid,
                        "kind": entry["kind"] if entry else None,
                        "target": entry["target"] if entry else None, "by": by, "note": note})
        _write_active(state, active)
