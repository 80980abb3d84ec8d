"""``fabric chaos``: a checker workload under a seeded random fault schedule.

A campaign starts a private cluster (or uses the one in ``state_dir``), starts
one checker process per host (:mod:`.kv`), and while they run injects a fault
about every ``interval_s`` (1-2 s by default): a kind from ``kinds``, each
healed after a random duration.  Kinds: ``kill`` and ``pause`` hit a node
daemon; ``device`` fails a device (``device-fail``); ``link`` cuts or
degrades (x2..x8) a link; ``poison`` poisons one of the first pages of a
device (where the checker's registers live); ``slow`` makes a device stall
(p 0.05, 200 us); ``msg`` puts a random drop/delay/duplicate/reorder rule
on the manager or a node; ``partition`` cuts a node off from every other
daemon.  While a device or link fault is in force the checker's declared
accesses to it fail with typed errors (DeviceFailed, LinkDown, PoisonError),
which the checker accepts; a call that times out is an unknown outcome; what
it never accepts is a lost or stale acknowledged write.  Then it heals everything,
waits for every node to be alive again, checks the invariants (no
acknowledged write lost, every read returns the last acknowledged value or a
concurrent one, every failure a typed error within its deadline), stops the
cluster it started and checks that no daemon process and no file of it is
left.  The schedule (when, what, where, for how long) comes from the seed
alone: the same seed replays the same schedule.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import random
import shutil
import tempfile
import threading
import time

import psutil

from ..cluster import Cluster
from ..errors import ClusterError, FabricError, InvalidArgument
from ..statedir import StateDir
from . import DEVICE_KINDS, apply, device, heal, kv, log, network, process

#: Fault kinds a campaign may draw: process faults on node daemons, device and link
#: faults (each group draws its concrete fault, see schedule()), ``msg`` (a random
#: drop/delay/duplicate/reorder rule on the manager or a node) and ``partition`` (a
#: node cut off from every other daemon).
CHAOS_KINDS = ("kill", "pause", "device", "link", "poison", "slow", "msg", "partition")
#: What a campaign draws from unless told otherwise.
DEFAULT_KINDS = ("kill", "pause")
#: The message types a ``msg`` fault of a campaign picks from (None: every type).
MSG_TYPES = (None, ("HEARTBEAT",), ("SCRUB", "OK"), ("ALLOC", "FREE", "OPEN"), ("OK",))
WORKLOADS = ("kv", "train")
RESULT_SCHEMA = 1


def schedule(seed: int, duration_s: float, kinds: tuple[str, ...], nodes: list[str],
             interval_s: tuple[float, float] = (1.0, 2.0), devices: list[str] | None = None,
             links: list[str] | None = None, page_size: int = 4096) -> list[dict]:
    """The fault schedule of a campaign: a pure function of its arguments.

    Each entry is ``{"at_s", "kind", "target", "for_s"}`` plus, for device and
    link faults, ``"group"`` (the chaos kind drawn) and ``"params"``.  With only
    process kinds the schedule is the one earlier releases drew for a seed."""
    rng = random.Random(seed)
    out, t = [], rng.uniform(*interval_s)
    while t < duration_s:
        hold = min(rng.uniform(0.3, 1.5), max(0.1, duration_s - t))
        group = rng.choice(kinds)
        if group in ("kill", "pause", "msg", "partition"):
            f = {"at_s": round(t, 3), "kind": group, "target": rng.choice(nodes),
                 "for_s": round(hold, 3)}
            if group == "msg":
                f["kind"] = rng.choice(network.MESSAGE_KINDS)
                f["target"] = rng.choice(("manager", f["target"]))
                params = {"p": round(rng.uniform(0.1, 0.5), 2), "seed": rng.randrange(1 << 31)}
                types = rng.choice(MSG_TYPES)
                if types:
                    params["types"] = list(types)
                if f["kind"] in network.DEFAULT_DELAY_MS:
                    params["delay_ms"] = rng.choice((20, 100, 300))
                f["params"] = params
            out.append(f)
        else:
            entry = {"at_s": round(t, 3), "group": group, "for_s": round(hold, 3), "params": {}}
            if group == "link":
                entry["target"] = rng.choice(links or [])
                if rng.random() < 0.5:
                    entry["kind"] = "link-cut"
                else:
                    entry["kind"] = "link-degrade"
                    entry["params"] = {"factor": float(rng.choice([2, 4, 8]))}
            else:
                entry["target"] = rng.choice(devices or [])
                if group == "device":
                    entry["kind"] = "device-fail"
                elif group == "poison":
                    entry["kind"] = "poison"
                    entry["params"] = {"offset": rng.randrange(4) * page_size,
                                       "length": page_size}
                else:
                    entry["kind"] = "slow"
                    entry["params"] = {"p": 0.05, "stall_us": 200.0}
            out.append(entry)
        t += hold + rng.uniform(*interval_s)
    return out


def _our_processes(state_dir: str) -> list[int]:
    pids = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if state_dir in cmd and any(c.startswith(("fabric.daemons.", "fabric.faults.")) for c in cmd):
            pids.append(p.pid)
    return pids


def _wait_all_alive(state: StateDir, timeout_s: float) -> float:
    from .. import protocol
    t0 = time.monotonic()
    with protocol.Client(state.manager_endpoint, "cli", timeout_ms=1000) as c:
        while time.monotonic() - t0 < timeout_s:
            try:
                if all(n["alive"] for n in c.request("STATUS")["nodes"]):
                    return time.monotonic() - t0
            except FabricError:
                pass
            time.sleep(0.05)
    raise ClusterError(f"nodes not all alive {timeout_s:.0f} s after healing")



def _apply_schedule(state: StateDir, plan: list[dict], say, until=None) -> tuple[list, list]:
    """Inject the planned faults on time, each healed after its hold; returns
    (faults injected, recoveries).  ``until()`` true ends it early."""
    t0 = time.monotonic()
    injected, recoveries = [], []
    for f in plan:
        while time.monotonic() - t0 < f["at_s"]:
            if until is not None and until():
                return injected, recoveries
            time.sleep(0.01)
        params = f.get("params")
        if params is not None and f["kind"] in DEVICE_KINDS:
            params = device.check_params(state, f["kind"], f["target"], params)
        fid = apply(state, f["kind"], f["target"], by="chaos", params=params)
        say(f"{time.monotonic() - t0:6.1f} s  {f['kind']} {f['target']} for {f['for_s']} s")
        time.sleep(f["for_s"])
        h0 = time.monotonic()
        heal(state.path, fid, by="chaos")
        recoveries.append({"kind": f["kind"], "target": f["target"],
                           "recover_s": round(time.monotonic() - h0
                                              + _wait_all_alive(state, 20.0), 3)})
        injected.append(f)
    return injected, recoveries


def _kv_campaign(state: StateDir, names: list[str], plan: list[dict], seed: int,
                 duration_s: float, keys: int, timeout_ms: int, logs_dir: str, say):
    ctx = mp.get_context("spawn")
    ready, go = ctx.Queue(), ctx.Event()
    paths = [os.path.join(logs_dir, f"{h}.jsonl") for h in names]
    procs = [ctx.Process(target=kv.worker, args=(h, i, names, state.path, keys, seed,
                                                 duration_s, timeout_ms, paths[i], ready, go))
             for i, h in enumerate(names)]
    try:
        for p in procs:
            p.start()
        for _ in procs:
            ready.get(timeout=60)
        go.set()
        injected, recoveries = _apply_schedule(state, plan, say)
        for p in procs:
            p.join(duration_s + 60)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(5)
    return injected, recoveries, kv.check(paths, names, timeout_ms)


#: The model the train workload trains under faults (small enough for CI).
TRAIN_PARAMS = "100k"


def _train_campaign(state: StateDir, hosts: int, plan: list[dict], seed: int,
                    duration_s: float, say):
    """Train in pooled mode under the schedule; the run must finish with exactly the loss
    of the same run without faults (pooled memory outlives every daemon), or fail with a
    typed error."""
    from ..errors import FabricError
    from ..workloads.runner import train
    cfg = dict(hosts=hosts, mode="pooled", seed=seed, params=TRAIN_PARAMS,
               state_dir=state.path, quiet=True)
    spans = []
    for n in (4, 16):                                      # how long a step takes here,
        t = time.monotonic()                               # without the start-up cost
        train(steps=n, **cfg)
        spans.append(time.monotonic() - t)
    per_step_s = max((spans[1] - spans[0]) / 12, 1e-3)
    steps = min(max(10, int(duration_s / per_step_s)), 100_000)
    # The faulted run must still be training when the first fault comes: a step timed
    # at a busy moment can make the runs short, so lengthen them until the reference
    # run (start-up included) lasts well past it.
    first_s = plan[0]["at_s"] if plan else 0.0
    for _ in range(4):
        say(f"reference run: {steps} steps without faults")
        t = time.monotonic()
        reference = train(steps=steps, **cfg)["final_loss"]
        if time.monotonic() - t >= 1.5 * first_s + 1.0 or steps >= 100_000:
            break
        steps = min(steps * 2, 100_000)
    outcome: dict = {}

    def run_faulted() -> None:
        try:
            outcome["loss"] = train(steps=steps, **cfg)["final_loss"]
        except FabricError as exc:
            outcome["error"] = f"{type(exc).__name__}: {exc}"
        except BaseException as exc:  # anything untyped is a violation
            outcome["untyped"] = f"{type(exc).__name__}: {exc}"

    worker = threading.Thread(target=run_faulted, name="chaos-train")
    worker.start()
    injected, recoveries = _apply_schedule(state, plan, say, until=lambda: not worker.is_alive())
    worker.join(duration_s * 4 + 120)
    violations = []
    if worker.is_alive():
        violations.append({"what": "training did not finish", "steps": steps})
    elif "untyped" in outcome:
        violations.append({"what": "untyped error escaped", "error": outcome["untyped"]})
    elif "loss" in outcome and outcome["loss"] != reference:
        violations.append({"what": "training under faults diverged", "loss": outcome["loss"],
                           "reference_loss": reference})
    errors = {outcome["error"].split(":")[0]: 1} if "error" in outcome else {}
    if "error" in outcome:
        say(f"training failed: {outcome['error']}")
    return injected, recoveries, {"operations": {"train_steps": steps},
                                  "errors": errors, "violations": violations,
                                  "final_loss": outcome.get("loss"), "reference_loss": reference,
                                  "train_error": outcome.get("error")}

def run(seed: int, duration_s: float, *, kinds: tuple[str, ...] = DEFAULT_KINDS,
        workload: str = "kv", hosts: int = 3, keys: int = 64, timeout_ms: int = 2000,
        progress=None) -> dict:
    """Run one campaign on a private cluster and return its result (``violations`` must be 0)."""
    if workload not in WORKLOADS:
        raise InvalidArgument(f"unknown workload {workload!r} (known: {', '.join(WORKLOADS)})")
    bad = [k for k in kinds if k not in CHAOS_KINDS]
    if bad or not kinds:
        raise InvalidArgument(f"chaos faults must be among {', '.join(CHAOS_KINDS)}, got "
                              f"{', '.join(kinds) or 'none'}")
    if not 1 <= duration_s <= 24 * 3600:
        raise InvalidArgument(f"duration must be 1 s .. 24 h, got {duration_s}")
    if not 1 <= hosts <= 16:
        raise InvalidArgument(f"hosts must be 1..16, got {hosts}")
    say = progress or (lambda msg: None)
    state_dir = tempfile.mkdtemp(prefix="cxl-fabric-chaos-", dir="/dev/shm")
    logs_dir = tempfile.mkdtemp(prefix="cxl-fabric-chaos-logs-")
    plan = []
    result: dict = {"schema": RESULT_SCHEMA, "seed": seed, "duration_s": duration_s,
                    "workload": workload, "hosts": hosts, "kinds": list(kinds)}
    try:
        cluster = Cluster.start(hosts=hosts, devices=hosts, device_size="32MiB",
                                state_dir=state_dir, inject="off", seed=seed)
        state = StateDir(state_dir)
        names = cluster.hosts
        nodes = [t for t in process.targets(state) if t != "manager"]
        plan = schedule(seed, duration_s, kinds, nodes, devices=device.device_names(state),
                        links=device.link_names(state),
                        page_size=cluster.topology.page_size_bytes)
        if workload == "kv":
            injected, recoveries, checked = _kv_campaign(
                state, names, plan, seed, duration_s, keys, timeout_ms, logs_dir, say)
        else:
            injected, recoveries, checked = _train_campaign(state, hosts, plan, seed,
                                                            duration_s, say)
        heal(state_dir, by="chaos")
        _wait_all_alive(state, 20.0)
        if workload == "kv":
            checked["violations"] += kv.final_read(state_dir, names, keys,
                                                   checked.pop("last_acked"), timeout_ms)
        by_kind: dict[str, int] = {}
        for f in injected:
            by_kind[f["kind"]] = by_kind.get(f["kind"], 0) + 1
        fault_log = log.read_log(state)
        cluster.stop()
        left = _our_processes(state_dir)
        if left:
            checked["violations"].append({"what": "processes left after fabric down", "pids": left})
        if os.path.exists(state_dir):
            checked["violations"].append({"what": "state dir left after fabric down",
                                          "files": os.listdir(state_dir)})
        result.update({"faults_injected": by_kind, "schedule": plan, "recoveries": recoveries,
                       "fault_log": fault_log,
                       **checked})
        result["violation_count"] = len(result["violations"])
        return result
    finally:
        for pid in _our_processes(state_dir):
            try:
                psutil.Process(pid).kill()
            except psutil.NoSuchProcess:
                pass
        shutil.rmtree(state_dir, ignore_errors=True)
        shutil.rmtree(logs_dir, ignore_errors=True)
