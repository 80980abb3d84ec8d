"""Fencing of stale node daemons: a replaced daemon, resumed, must not act and must exit."""
from __future__ import annotations

import os
import signal
import time

import numpy as np
import psutil
import pytest

import fabric.faults as faults
from fabric import protocol
from fabric.cluster import _daemon_cmd, _log_name, _spawn
from fabric.errors import StaleIncarnation
from fabric.statedir import StateDir
from fault_waits import node, wait_until


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_manager_refuses_register_and_heartbeat_of_an_older_incarnation(cluster):
    st = StateDir(cluster.state_dir)
    before = node(cluster, "h1")
    old = before["incarnation"] - 1
    body = {"node": "h1", "pid": os.getpid(), "incarnation": old,
            "endpoint": st.node_endpoint("h1"), "secret": st.read_secret(),
            "devices": [{"name": "d1", "capacity_bytes": 64 << 20, "fresh": False}]}
    with protocol.Client(st.manager_endpoint, "h1", timeout_ms=2000) as c:
        with pytest.raises(StaleIncarnation, match="has replaced it"):
            c.request("REGISTER", body)
        with pytest.raises(StaleIncarnation):
            c.request("HEARTBEAT", {"node": "h1", "incarnation": old,
                                    "secret": st.read_secret()})
    after = node(cluster, "h1")
    assert (after["pid"], after["incarnation"], after["alive"]) == \
        (before["pid"], before["incarnation"], True)


def test_restart_of_a_paused_node_stops_the_paused_one(cluster, fabric_faults):
    """Today's `fault restart`: the paused daemon is continued and terminated first."""
    f = fabric_faults(cluster.state_dir)
    old = node(cluster, "h1")["pid"]
    f.inject("pause", "h1")
    f.inject("restart", "h1")
    assert _gone(old)
    new = node(cluster, "h1")
    assert new["alive"] and new["pid"] != old


def test_paused_node_replaced_then_resumed_is_fenced(cluster):
    """The case restart cannot make: a new h1 starts while the old one is still stopped.
    Resumed, the old one must not zero memory it no longer owns, register or beat; it
    logs why and exits, leaving the new daemon's socket alone."""
    st = StateDir(cluster.state_dir)
    old_pid = node(cluster, "h1")["pid"]
    with cluster.connect("h0") as s:
        victim = s.alloc("victim", 64 << 10, placement="d1", share="shared")
        offset = victim.info["offsets"][0]
        victim.close()
        os.kill(old_pid, signal.SIGSTOP)
        s.free("victim")          # its SCRUB reaches the stopped daemon's socket, undone
        wait_until(lambda: not node(cluster, "h1")["alive"], "stopped h1 marked dead")
        with st.locked():         # start a new h1 as `fabric fault restart` would, but
            info = st.read()      # leave the old one stopped
            proc = _spawn(_log_name("h1"), _daemon_cmd("fabric.daemons.node", st,
                                                       info.get("owner_pid"), "--name", "h1"), st)
            info["pids"]["h1"] = proc.pid
            st.write(info)
        try:
            wait_until(lambda: node(cluster, "h1")["alive"] and node(cluster, "h1")["pid"] == proc.pid,
                       "new h1 alive")
            wait_until(lambda: not {d["name"]: d for d in cluster.status()["devices"]}["d1"]
                       ["scrubbing_bytes"],
                       "the new h1 did the scrub the old one owed")
            fresh = s.alloc("fresh", 64 << 10, placement="d1", share="shared")
            assert fresh.info["offsets"][0] == offset      # the same memory, handed out again
            fresh.write(np.full(16 << 10, 6, dtype=np.uint32))
        finally:
            os.kill(old_pid, signal.SIGCONT)
        wait_until(lambda: _gone(old_pid), "the resumed, replaced daemon exits")
        time.sleep(0.5)
        assert (fresh.read().view(np.uint32) == 6).all()    # the stale SCRUB was not done
        now = node(cluster, "h1")
        assert now["alive"] and now["pid"] == proc.pid
        with protocol.Client(st.node_endpoint("h1"), "cli", timeout_ms=5000) as c:
            assert c.request("PING")["pid"] == proc.pid      # the socket is the new one's
    with open(st.log_path("node-h1")) as fh:
        log = fh.read()
    print(log)
    assert "fenced: a newer daemon of h1" in log and f"(pid {old_pid}," in log
    assert faults.faults(cluster.state_dir)["active"] == {}
