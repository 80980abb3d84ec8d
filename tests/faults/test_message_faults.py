"""Message faults against real daemons: drop, delay, duplicate, reorder; seeded; CLI errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import zmq

import fabric.faults as faults
from fabric import protocol
from fabric.daemons.netfault import RULES_FILE, NetFaults
from fabric.errors import FabricTimeout, InvalidArgument
from fabric.statedir import StateDir

SHORT_MS = 800        # client deadline in tests that expect a timeout
SLACK_S = 5.0         # a loaded 2-core machine; deadlines are checked, not speed
NOTICE_S = 0.3        # daemons look at the rules file every 75 ms


def _log(state_dir: str, daemon: str) -> str:
    with open(StateDir(state_dir).log_path(daemon)) as f:
        return f.read()


def _cli(state_dir: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fabric", *argv, "--state-dir", state_dir],
                          capture_output=True, text=True, timeout=60)


# -- the rules as one daemon sees them (no daemons needed) -----------------------------
def _rules_dir(path, rules=(), partitions=()) -> str:
    with open(os.path.join(path, RULES_FILE), "w") as f:
        json.dump({"schema": 1, "rules": list(rules), "partitions": list(partitions)}, f)
    return str(path)


def _draws(path: str, me: str, n: int = 200) -> list:
    nf = NetFaults(path, me)
    return [nf.verdict("ALLOC", "h0", False) for _ in range(n)]


def test_rules_are_seeded_and_filtered(tmp_path, seed):
    rule = {"id": "r1", "action": "drop", "p": 0.3, "types": ["ALLOC"], "daemons": ["manager"],
            "delay_ms": 0, "seed": seed}
    path = _rules_dir(tmp_path, [rule])
    first = _draws(path, "manager")
    assert first == _draws(path, "manager")                 # same seed: same messages hit
    assert 0 < sum(v is not None for v in first) < len(first)
    assert _draws(_rules_dir(tmp_path, [dict(rule, seed=seed + 1)]), "manager") != first
    path = _rules_dir(tmp_path, [dict(rule, p=1.0)])
    nf = NetFaults(path, "manager")
    assert nf.verdict("FREE", "h0", False) is None           # another type
    assert nf.verdict("ALLOC", "h0", False) == ("drop", 0.0)
    nf = NetFaults(path, "h1")                               # a daemon the rule does not name:
    assert nf.verdict("ALLOC", "h0", False) is None          # hit only on messages to/from
    assert nf.verdict("ALLOC", "manager", True) == ("drop", 0.0)   # a daemon it names
    nf = NetFaults(_rules_dir(tmp_path, [dict(rule, p=0.0)]), "manager")
    assert all(nf.verdict("ALLOC", "h0", False) is None for _ in range(50))
    os.unlink(os.path.join(tmp_path, RULES_FILE))
    nf = NetFaults(str(tmp_path), "manager")
    assert nf.verdict("ALLOC", "h0", False) is None and not nf.active


def test_reorder_holds_a_random_time_and_held_messages_leave_by_due_time(tmp_path):
    rule = {"id": "r1", "action": "reorder", "p": 1.0, "types": None, "daemons": None,
            "delay_ms": 200, "seed": 3}
    nf = NetFaults(_rules_dir(tmp_path, [rule]), "manager")
    holds = [nf.verdict("OK", "h0", False)[1] for _ in range(10)]
    assert all(0.0 <= h <= 0.2 for h in holds) and len(set(holds)) > 1
    out: list[int] = []
    for i, h in enumerate(holds):
        nf.later(h, lambda i=i: out.append(i))
    assert nf.run_due(time.monotonic() + 1.0) == 10
    assert out == sorted(range(10), key=lambda i: holds[i]) != list(range(10))


# -- against a cluster ------------------------------------------------------------------
def test_dropped_request_is_a_timeout_and_is_not_done(cluster, fabric_faults, seed):
    f = fabric_faults(cluster.state_dir)
    with cluster.connect("h0", timeout_ms=SHORT_MS) as s:
        f.inject("drop", "manager", params={"types": ["ALLOC"], "seed": seed})
        time.sleep(NOTICE_S)
        t0 = time.monotonic()
        with pytest.raises(FabricTimeout):
            s.alloc("lost", 4096)
        assert time.monotonic() - t0 < SHORT_MS / 1000 + SLACK_S     # the deadline held
        assert s.regions() == []                                     # other types pass
        assert "lost" not in [r["name"] for r in cluster.status()["regions"]]
        f.heal()
        time.sleep(NOTICE_S)
        assert s.alloc("found", 4096).nbytes == 4096


def test_dropped_reply_is_an_unknown_outcome(cluster, fabric_faults, seed):
    """A reply lost on the way: the client times out, yet the request was done."""
    f = fabric_faults(cluster.state_dir)
    with cluster.connect("h0", timeout_ms=SHORT_MS) as s:
        f.inject("drop", "manager", params={"types": ["OK"], "seed": seed})
        time.sleep(NOTICE_S)
        with pytest.raises(FabricTimeout):
            s.alloc("maybe", 4096)
        f.heal()
        time.sleep(NOTICE_S)
        assert s.open("maybe").nbytes == 4096                        # allocated after all
        s.free("maybe")


def test_delay_holds_a_message_without_blocking_the_daemon(cluster, fabric_faults):
    f = fabric_faults(cluster.state_dir)
    st = StateDir(cluster.state_dir)
    f.inject("delay", "manager", params={"types": ["ALLOC"], "delay_ms": 2000})
    time.sleep(NOTICE_S)
    got: dict = {}

    def slow_alloc() -> None:
        with protocol.Client(st.manager_endpoint, "h0", timeout_ms=20_000) as c:
            t0 = time.monotonic()
            got["reply"] = c.request("ALLOC", {"name": "slow", "nbytes": 4096})
            got["took_s"] = time.monotonic() - t0

    th = threading.Thread(target=slow_alloc)
    th.start()
    try:
        time.sleep(0.2)
        with protocol.Client(st.manager_endpoint, "cli", timeout_ms=10_000) as c:
            c.request("STATUS")                  # answered while the ALLOC is held
        assert th.is_alive() and "reply" not in got
    finally:
        th.join(30)
    assert got["reply"]["name"] == "slow" and got["took_s"] >= 2.0
    with protocol.Client(st.manager_endpoint, "h0", timeout_ms=500) as c:
        with pytest.raises(FabricTimeout):                           # held past its deadline
            c.request("ALLOC", {"name": "late", "nbytes": 4096})


def test_duplicated_requests_are_answered_once_and_alloc_free_not_applied_twice(
        cluster, fabric_faults):
    f = fabric_faults(cluster.state_dir)
    with cluster.connect("h0") as s:
        f.inject("duplicate", "manager", params={"types": ["ALLOC", "FREE"]})
        time.sleep(NOTICE_S)
        r = s.alloc("twice", 8192)                    # the copy carries the same key: it is
        assert r.nbytes == 8192                       # answered with the first reply
        assert [x["name"] for x in s.regions()] == ["twice"]
        s.free("twice")                               # the same for the FREE
        assert s.regions() == []
        assert s.alloc("twice", 4096).nbytes == 4096  # the name is free again
        assert [x["nbytes"] for x in s.regions()] == [4096]   # no copy re-applied anything
    text = _log(cluster.state_dir, "manager")
    answered = [ln for ln in text.splitlines() if "already applied" in ln]
    assert any("ALLOC" in ln for ln in answered) and any("FREE" in ln for ln in answered)
    assert "REGION_EXISTS" not in text and "REGION_NOT_FOUND" not in text


def test_duplicated_and_reordered_scrubs_never_zero_reused_memory(cluster, fabric_faults, seed):
    f = fabric_faults(cluster.state_dir)
    f.inject("duplicate", "manager", params={"types": ["SCRUB"], "p": 0.5, "seed": seed})
    f.inject("reorder", "manager", params={"types": ["SCRUB"], "delay_ms": 100, "seed": seed})
    time.sleep(NOTICE_S)
    with cluster.connect("h0") as s:
        keep = s.alloc("keep", 64 << 10, placement="d1", share="shared")
        keep.write(np.full(16 << 10, 9, dtype=np.uint32))
        for i in range(40):
            r = s.alloc(f"r{i}", 64 << 10, placement="d1")
            r.write(np.full(16 << 10, i + 1, dtype=np.uint32))
            assert (r.read().view(np.uint32) == i + 1).all()
            s.free(f"r{i}")
        time.sleep(0.5)                               # every held copy has left by now
        assert (keep.read().view(np.uint32) == 9).all()
    assert "copy of a scrub already done" in _log(cluster.state_dir, "node-h1")


def _scrub(st: StateDir, manager_inc: int, body: dict) -> dict:
    """A SCRUB to node h1 as the manager sends it (its incarnation, the secret)."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(st.node_endpoint("h1"))
    try:
        header = protocol.make_header("SCRUB", 1, "manager", manager_inc, 5000)
        sock.send_multipart(protocol.encode(header, {**body, "secret": st.read_secret()}))
        assert sock.poll(10_000), "no reply to SCRUB"
        h, b = protocol.decode(sock.recv_multipart())
        assert h["type"] == "OK", b
        return b
    finally:
        sock.close(0)


def test_a_scrub_is_done_once_per_id(cluster):
    st = StateDir(cluster.state_dir)
    manager_inc = cluster.status()["manager"]["incarnation"]
    with cluster.connect("h0") as s:
        r = s.alloc("target", 64 << 10, placement="d1", share="shared")
        extent = ["d1", r.info["offsets"][0], 64 << 10]
        r.write(np.full(16 << 10, 7, dtype=np.uint32))
        assert _scrub(st, manager_inc, {"extents": [extent + [10**9]]}) == {}
        assert not r.read().any()                              # the first copy zeroes
        r.write(np.full(16 << 10, 7, dtype=np.uint32))
        assert _scrub(st, manager_inc, {"extents": [extent + [10**9]]}) == {"skipped": 1}
        assert _scrub(st, manager_inc, {"extents": [extent + [10**9 + 1]],
                                        "floor": 10**9 + 2}) \
            == {"skipped": 1}                                  # below the floor: done before
        assert (r.read().view(np.uint32) == 7).all()           # later copies touch nothing


def test_cli_message_faults_list_heal_and_schedule(cluster):
    sd = cluster.state_dir
    rules_file = os.path.join(sd, RULES_FILE)
    r = _cli(sd, "fault", "drop", "manager,h1", "--p", "0.25", "--types", "ALLOC,OK",
             "--seed", "5", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["kind"] == "drop" and out["params"]["p"] == 0.25
    with open(rules_file) as fh:
        rule = json.load(fh)["rules"][0]
    assert (rule["action"], rule["daemons"], rule["types"], rule["seed"]) == \
        ("drop", ["manager", "h1"], ["ALLOC", "OK"], 5)
    listing = json.loads(_cli(sd, "fault", "list", "--json").stdout)
    assert listing["active"][out["id"]]["params"]["rule"] == rule["id"]
    r = _cli(sd, "fault", "heal")
    assert r.returncode == 0 and f"{out['id']}: remove" in r.stdout
    assert not os.path.exists(rules_file)
    r = _cli(sd, "fault", "delay", "all", "--delay-ms", "20", "--at", "0.1", "--for", "0.5")
    assert r.returncode == 0 and "scheduled" in r.stdout, r.stderr
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        actions = [e["action"] for e in faults.faults(sd)["log"] if e.get("kind") == "delay"]
        if actions == ["schedule", "inject", "heal"]:
            break
        time.sleep(0.1)
    assert actions == ["schedule", "inject", "heal"]
    assert not os.path.exists(rules_file)


def test_bad_message_fault_commands_are_one_line_errors(cluster):
    sd = cluster.state_dir
    for argv, needle in ((["drop", "h9"], "unknown daemon 'h9'"),
                         (["drop", "manager", "--types", "NOPE"], "unknown message type 'NOPE'"),
                         (["drop", "manager", "--p", "1.5"], "probability must be in [0, 1]"),
                         (["duplicate", "all", "--p", "-0.1"], "probability must be in [0, 1]"),
                         (["delay", "manager", "--delay-ms", "-5"], "delay must be"),
                         (["reorder", "h0", "--delay-ms", "nan"], "delay must be"),
                         (["partition", "h0/h9"], "unknown daemon 'h9'"),
                         (["partition", "h0,h1,manager"], "no daemon on the other side"),
                         (["partition", "h0/h0"], "in two groups")):
        r = _cli(sd, "fault", *argv)
        lines = r.stderr.strip().splitlines()
        assert r.returncode != 0 and len(lines) == 1 and needle in r.stderr, (argv, r.stderr)
    with pytest.raises(InvalidArgument, match="unknown parameter"):
        faults.inject("drop", "manager", state_dir=sd, params={"probability": 1})
    with pytest.raises(InvalidArgument, match="takes no options"):
        faults.inject("kill", "h0", state_dir=sd, params={"p": 1})
    assert faults.faults(sd)["log"] == [] and not os.path.exists(os.path.join(sd, RULES_FILE))


def test_dropped_heartbeats_make_a_node_unavailable_until_healed(cluster, fabric_faults):
    f = fabric_faults(cluster.state_dir)
    alive = lambda: {n["name"]: n["alive"] for n in cluster.status()["nodes"]}   # noqa: E731
    before = {n["name"]: n["incarnation"] for n in cluster.status()["nodes"]}
    f.inject("drop", "h1", params={"types": ["HEARTBEAT"]})
    deadline = time.monotonic() + 15
    while alive()["h1"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert alive() == {"h0": True, "h1": False}
    f.heal()
    deadline = time.monotonic() + 15
    while not alive()["h1"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert alive() == {"h0": True, "h1": True}
    assert {n["name"]: n["incarnation"] for n in cluster.status()["nodes"]} == before
