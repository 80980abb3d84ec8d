"""Message faults and partitions: the injection side.

Each fault becomes one entry of ``<state dir>/netfaults.json``, which every
daemon watches (:mod:`fabric.daemons.netfault` applies it where daemons send
and receive; docs/faults.md says what a workload sees)::

    {"schema": 1,
     "rules": [{"id": "r1a2b", "action": "drop", "p": 0.3, "types": ["ALLOC", "OK"],
                "daemons": ["manager"], "delay_ms": 0, "seed": 7}],
     "partitions": [{"id": "r9f3e", "groups": [["h0", "h1"], ["h2", "manager"]]}]}

The file is rewritten whole under the fault log's lock (a temporary file, then
rename), so a daemon never reads half a file, and removed when the last entry
goes.  Kinds:

- ``drop``, ``delay``, ``duplicate``, ``reorder`` (message faults) take a
  target of daemons -- ``manager``, node names, comma-separated, or ``all`` --
  and params ``p`` (probability, 0..1, default 1), ``types`` (message types;
  default every type), ``delay_ms`` (delay: the delay, default 100;
  reorder: the longest hold, default 50) and ``seed`` (default 0);
- ``partition`` takes groups ``h0,h1/h2,manager``; with one group, that group
  is cut off from every other daemon.

Each is healed by removing its entry (``fabric fault heal``).
"""
from __future__ import annotations

import json
import math
import os
import secrets
import time

from ..daemons.netfault import ACTIONS, CHECK_EVERY_S, MAX_DELAY_MS, rules_path
from ..errors import InvalidArgument
from ..statedir import StateDir, write_file_atomic
from . import log, process

MESSAGE_KINDS = ACTIONS
PARTITION = "partition"
KINDS = MESSAGE_KINDS + (PARTITION,)
#: The heal action of every network fault (fabric.faults.heal_one).
HEAL = "remove"
DEFAULT_DELAY_MS = {"delay": 100.0, "reorder": 50.0}
_PARAMS = {"p", "types", "delay_ms", "seed"}
SCHEMA = 1


def message_types() -> list[str]:
    """Every message type a rule may name: the requests of the manager and the nodes,
    and the replies OK and ERROR."""
    from ..daemons.manager import Manager
    from ..daemons.node import NodeDaemon
    from ..protocol import ERROR, OK
    return sorted({c.name for c in Manager.commands + NodeDaemon.commands}) + [OK, ERROR]


def parse_daemons(state: StateDir, target: str) -> list[str]:
    """``manager,h1`` or ``all`` as a list of daemon names; InvalidArgument naming the
    known daemons for an unknown one."""
    known = process.targets(state)
    if not isinstance(target, str) or not target.strip():
        raise InvalidArgument(f"name the daemons: 'all' or some of {', '.join(known)}")
    if target.strip() == "all":
        return known
    names = [n.strip() for n in target.split(",") if n.strip()]
    for n in names:
        if n not in known:
            raise InvalidArgument(f"unknown daemon {n!r} (this cluster has: {', '.join(known)})")
    if len(set(names)) != len(names):
        raise InvalidArgument(f"daemon named twice in {target!r}")
    return names


def parse_groups(state: StateDir, target: str) -> list[list[str]]:
    """``h0,h1/h2,manager`` as groups of daemon names; one group means "that group
    against every other daemon"."""
    known = process.targets(state)
    groups = []
    if not isinstance(target, str):
        raise InvalidArgument(f"partition groups must be text like h0,h1/h2,manager")
    for part in target.split("/"):
        names = [n.strip() for n in part.split(",") if n.strip()]
        if not names:
            raise InvalidArgument(f"empty group in partition {target!r} (write groups as "
                                  f"h0,h1/h2,manager)")
        groups.append(names)
    seen: set[str] = set()
    for g in groups:
        for n in g:
            if n not in known:
                raise InvalidArgument(f"unknown daemon {n!r} (this cluster has: "
                                      f"{', '.join(known)})")
            if n in seen:
                raise InvalidArgument(f"daemon {n!r} is in two groups of {target!r}")
            seen.add(n)
    if len(groups) == 1:
        rest = [n for n in known if n not in seen]
        if not rest:
            raise InvalidArgument(f"partition {target!r} leaves no daemon on the other side")
        groups.append(rest)
    return groups


def check_params(kind: str, params: dict | None) -> dict:
    """The params of message fault ``kind``, checked and with defaults filled in."""
    params = dict(params or {})
    if kind == PARTITION:
        if params:
            raise InvalidArgument(f"partition takes no options, got {', '.join(params)}")
        return {}
    unknown = set(params) - _PARAMS
    if unknown:
        raise InvalidArgument(f"unknown parameter(s) {', '.join(sorted(unknown))} for {kind} "
                              f"(known: {', '.join(sorted(_PARAMS))})")
    p = params.get("p", 1.0)
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise InvalidArgument(f"probability must be in [0, 1], got {p!r}")
    types = params.get("types")
    if isinstance(types, str):
        types = [t.strip() for t in types.split(",") if t.strip()]
    if types is not None:
        if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
            raise InvalidArgument(f"types must be a list of message types, got {types!r}")
        known = message_types()
        bad = [t for t in types if t not in known]
        if bad:
            raise InvalidArgument(f"unknown message type {bad[0]!r} (known: {', '.join(known)})")
    delay = params.get("delay_ms", DEFAULT_DELAY_MS.get(kind, 0.0))
    if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not math.isfinite(delay) \
            or delay < 0 or delay > MAX_DELAY_MS:
        raise InvalidArgument(f"delay must be 0..{MAX_DELAY_MS} ms, got {delay!r}")
    if kind not in DEFAULT_DELAY_MS and delay:
        raise InvalidArgument(f"{kind} takes no delay (delay and reorder do)")
    seed = params.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InvalidArgument(f"seed must be an integer, got {seed!r}")
    return {"p": float(p), "types": types or None, "delay_ms": float(delay), "seed": seed}


def check(state: StateDir, kind: str, target: str, params: dict | None) -> dict:
    """Check target and params of a network fault before it is applied or scheduled."""
    if kind == PARTITION:
        parse_groups(state, target)
    else:
        parse_daemons(state, target)
    return check_params(kind, params)


def _read(state: StateDir) -> dict:
    try:
        with open(rules_path(state.path), encoding="utf-8") as f:
            data = json.load(f)
        if isinstance(data, dict):
            return {"schema": SCHEMA, "rules": list(data.get("rules", [])),
                    "partitions": list(data.get("partitions", []))}
    except (OSError, ValueError):
        pass
    return {"schema": SCHEMA, "rules": [], "partitions": []}


def _write(state: StateDir, data: dict) -> None:
    path = rules_path(state.path)
    if not data["rules"] and not data["partitions"]:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return
    write_file_atomic(path, json.dumps(data, indent=1, sort_keys=True).encode())


def _settle() -> None:
    """Return only once every daemon judges the messages it handles next by the new
    rules: each re-checks the file at most CHECK_EVERY_S after its previous check."""
    time.sleep(CHECK_EVERY_S + 0.025)


def rules(state: StateDir) -> dict:
    """The message faults and partitions in force: ``{"rules": [...], "partitions": [...]}``."""
    return _read(state)


def apply(kind: str, state: StateDir, target: str, params: dict | None = None) -> dict:
    """Put network fault ``kind`` in force now; returns the params to log (with the
    entry's ``rule`` id, which its heal removes)."""
    checked = check(state, kind, target, params)
    rid = "r" + secrets.token_hex(4)
    with log.locked(state):
        data = _read(state)
        if kind == PARTITION:
            groups = parse_groups(state, target)
            data["partitions"].append({"id": rid, "groups": groups})
            out = {"rule": rid, "groups": groups}
        else:
            daemons = parse_daemons(state, target)
            data["rules"].append({"id": rid, "action": kind, "daemons": daemons, **checked})
            out = {"rule": rid, **checked}
        _write(state, data)
    _settle()
    return out


def remove(state: StateDir, entry: dict) -> str:
    """Heal: take the entry of a logged network fault out of force."""
    rid = (entry.get("params") or {}).get("rule")
    with log.locked(state):
        data = _read(state)
        before = len(data["rules"]) + len(data["partitions"])
        data["rules"] = [r for r in data["rules"] if r.get("id") != rid]
        data["partitions"] = [p for p in data["partitions"] if p.get("id") != rid]
        _write(state, data)
    _settle()
    return HEAL if before != len(data["rules"]) + len(data["partitions"]) else "already gone"
