"""The ``kv`` checker workload of ``fabric chaos``: registers in pooled memory, checked like Jepsen's.

Every host process owns one shared region of ``keys`` slots (64 bytes each)
and is the only writer of its keys.  A write stores ``(version, value,
version)`` with ``value = _value(host, key, version)`` through a declared
``Region.write`` and counts as *acknowledged* when the call returns.  Plain
stores of 24 bytes are not atomic (on real CXL memory neither), so a read that
races a write may see a mix of old and new words: the reader recognises that
(the two versions differ or the value does not belong to the version) and
logs a torn read, which is legal only while a write of that key is in flight.  Every host also reads random
keys of every host through declared reads, and exercises the control plane
(open, alloc, free).  Each process logs what it did with CLOCK_MONOTONIC
timestamps (shared by all processes on Linux) into a JSON-lines file; the
checker then demands, per key:

- a read returns a version acknowledged before the read ended or being
  written concurrently, never older than the last version acknowledged before
  the read began (no lost or stale acknowledged write), and the value that
  belongs to that version (no torn or foreign bytes);
- a failed call raised a typed ``FabricError`` (anything else is a violation)
  and returned within its deadline plus slack;
- after the campaign, a fresh session reads every key's last acknowledged
  version.
"""
from __future__ import annotations

import bisect
import json
import os
import random
import time
import traceback

import numpy as np

SLOT_BYTES = 64
#: A call may overrun its deadline by this much (scheduling on a loaded 2-core box).
DEADLINE_SLACK_S = 2.0


def _value(host: int, key: int, version: int) -> int:
    return (version * 0x9E3779B97F4A7C15 + host * 0x10001 + key) & ((1 << 64) - 1)


def region_name(host: str) -> str:
    return f"kv-{host}"


def worker(host: str, host_index: int, hosts: list[str], state_dir: str, keys: int, seed: int,
           duration_s: float, timeout_ms: int, log_path: str, ready, go) -> None:
    """One host process: write own keys, read everyone's, touch the control plane; log it all."""
    import fabric
    from ..errors import FabricError
    rng = random.Random(seed * 1000 + host_index)
    out = open(log_path, "w", encoding="utf-8")

    def log(**e) -> None:
        out.write(json.dumps(e) + "\n")

    try:
        s = fabric.connect(host, state_dir, timeout_ms=timeout_ms, inject="off")
        own = s.alloc(region_name(host), keys * SLOT_BYTES, share="shared", placement="local")
        ready.put(host)
        if not go.wait(60):
            return
        opened: dict[str, object] = {host: own}
        versions = [0] * keys
        end = time.monotonic() + duration_s
        n = 0
        while time.monotonic() < end:
            n += 1
            op = rng.random()
            t0 = time.monotonic()
            try:
                if op < 0.45:                                   # write one of my keys
                    k = rng.randrange(keys)
                    v = versions[k] + 1
                    rec = np.array([v, _value(host_index, k, v), v] + [0] * 5, dtype=np.uint64)
                    log(op="write_start", host=host, key=k, version=v, t=t0)
                    own.write(rec, k * SLOT_BYTES)
                    versions[k] = v
                    log(op="write_ack", host=host, key=k, version=v, t=time.monotonic())
                elif op < 0.9:                                  # read anybody's key
                    other = rng.choice(hosts)
                    if other not in opened:
                        opened[other] = s.open(region_name(other))
                    k = rng.randrange(keys)
                    got = np.array(opened[other].read(k * SLOT_BYTES, 24).view(np.uint64))
                    v, val, v2 = (int(x) for x in got)
                    oi = hosts.index(other)
                    whole = v == v2 and (val == _value(oi, k, v) if v else val == 0)
                    log(op="read" if whole else "read_torn", host=host, owner=other, key=k,
                        version=v, value=val, t0=t0, t1=time.monotonic())
                elif op < 0.95:                                 # control plane: alloc + free
                    name = f"scratch-{host}-{n}"
                    s.alloc(name, 4096 * rng.randint(1, 16))
                    s.free(name)
                    log(op="ctl", host=host, what="alloc_free", t0=t0, t1=time.monotonic())
                else:                                           # control plane: open again
                    other = rng.choice(hosts)
                    opened[other] = s.open(region_name(other))
                    log(op="ctl", host=host, what="open", t0=t0, t1=time.monotonic())
            except FabricError as exc:
                log(op="error", host=host, error=type(exc).__name__, message=str(exc)[:200],
                    t0=t0, t1=time.monotonic())
            except Exception as exc:  # anything untyped is a violation, logged for the checker
                log(op="untyped_error", host=host, error=type(exc).__name__,
                    message=traceback.format_exc()[-400:], t0=t0, t1=time.monotonic())
            if rng.random() < 0.2:
                time.sleep(rng.random() * 0.002)
        log(op="done", host=host, versions=versions, t=time.monotonic())
    except BaseException as exc:
        log(op="crash", host=host, error=type(exc).__name__, message=traceback.format_exc()[-600:])
        try:
            ready.put(host)
        except Exception:
            pass
    finally:
        out.close()


def check(log_paths: list[str], hosts: list[str], timeout_ms: int) -> dict:
    """Read the workers' logs and return ``{"operations", "errors", "violations"}``."""
    events = []
    for p in log_paths:
        try:
            with open(p, encoding="utf-8") as f:
                events += [json.loads(line) for line in f if line.strip()]
        except (OSError, ValueError) as exc:
            events.append({"op": "crash", "host": os.path.basename(p), "error": "log",
                           "message": str(exc)})
    index = {h: i for i, h in enumerate(hosts)}
    starts: dict[tuple, list] = {}   # (owner, key) -> [(t, version)], in time order
    acks: dict[tuple, list] = {}
    for e in events:
        if e["op"] == "write_start":
            starts.setdefault((e["host"], e["key"]), []).append((e["t"], e["version"]))
        elif e["op"] == "write_ack":
            acks.setdefault((e["host"], e["key"]), []).append((e["t"], e["version"]))
    # One writer per key, one write at a time: versions grow with time, so the last
    # event at or before a moment (a bisection) gives the floor and the ceiling.
    for table in (starts, acks):
        for key in table:
            table[key].sort()
    start_t = {k: [t for t, _v in v] for k, v in starts.items()}
    ack_t = {k: [t for t, _v in v] for k, v in acks.items()}
    ack_of = {k: {v: t for t, v in a} for k, a in acks.items()}

    def last_before(table: dict, times: dict, key: tuple, t: float) -> tuple | None:
        i = bisect.bisect_right(times.get(key, ()), t) - 1
        return table[key][i] if i >= 0 else None
    violations: list[dict] = []
    ops: dict[str, int] = {}
    errors: dict[str, int] = {}
    limit_s = timeout_ms / 1000 + DEADLINE_SLACK_S
    for e in events:
        op = e["op"]
        ops[op] = ops.get(op, 0) + 1
        if op == "read":
            key = (e["owner"], e["key"])
            floor = (last_before(acks, ack_t, key, e["t0"]) or (0, 0))[1]
            ceiling = (last_before(starts, start_t, key, e["t1"]) or (0, 0))[1]
            if not floor <= e["version"] <= ceiling:
                violations.append({"what": "stale or lost write", "read": e, "acked_before": floor,
                                   "written_by_end": ceiling})
            elif e["version"] and e["value"] != _value(index.get(e["owner"], -1), e["key"],
                                                       e["version"]):
                violations.append({"what": "torn or foreign bytes", "read": e})
        elif op == "read_torn":
            key = (e["owner"], e["key"])
            last = last_before(starts, start_t, key, e["t1"])   # the only write that can race
            racing = last is not None and ack_of.get(key, {}).get(last[1], e["t0"]) >= e["t0"]
            if not racing:
                violations.append({"what": "torn or foreign bytes with no write in flight",
                                   "read": e})
        elif op in ("error", "untyped_error"):
            errors[e["error"]] = errors.get(e["error"], 0) + 1
            if op == "untyped_error":
                violations.append({"what": "untyped error escaped", "event": e})
            if e["t1"] - e["t0"] > limit_s:
                violations.append({"what": "call exceeded its deadline", "event": e})
        elif op == "crash":
            violations.append({"what": "worker crashed", "event": e})
        if op in ("read", "read_torn", "ctl") and e["t1"] - e["t0"] > limit_s:
            violations.append({"what": "call exceeded its deadline", "event": e})
    return {"operations": ops, "errors": errors, "violations": violations,
            "last_acked": {f"{h}/{k}": max(v for _t, v in a) for (h, k), a in acks.items()}}


def final_read(state_dir: str, hosts: list[str], keys: int, last_acked: dict,
               timeout_ms: int) -> list[dict]:
    """After healing: a fresh session must read every key's last acknowledged version."""
    import fabric
    bad = []
    with fabric.connect(hosts[0], state_dir, timeout_ms=timeout_ms, inject="off") as s:
        for i, h in enumerate(hosts):
            got = s.open(region_name(h)).read().view(np.uint64).reshape(keys, SLOT_BYTES // 8)
            for k in range(keys):
                want = last_acked.get(f"{h}/{k}", 0)
                if int(got[k, 0]) != want or (want and int(got[k, 1]) != _value(i, k, want)):
                    bad.append({"what": "acknowledged write lost", "key": f"{h}/{k}",
                                "want_version": want, "got_version": int(got[k, 0])})
    return bad
