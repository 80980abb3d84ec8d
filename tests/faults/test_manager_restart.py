"""Manager faults: kill / restart healed through the fault API and the CLI, and the
fencing of a paused manager that a new one replaced."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest

import fabric
import fabric.faults as faults
from fabric import protocol
from fabric.errors import FabricTimeout
from fabric.faults import process
from fabric.statedir import StateDir

MiB = 1 << 20


def _pattern(n: int) -> np.ndarray:
    return (np.arange(n // 4, dtype=np.uint32) * 2654435761) & 0xFFFFFFFF


def test_kill_manager_healed_by_restart_keeps_regions_and_sessions(cluster, fabric_faults):
    f = fabric_faults(cluster.state_dir)
    with cluster.connect("h0") as s:
        r = s.alloc("data", 4 * MiB, placement="interleave", share="shared")
        r.write(_pattern(4 * MiB))
        before = cluster.status()
        fid = f.inject("kill", "manager")
        assert fid in f.active()
        assert f.heal() == {fid: "restart"}
        after = cluster.status()
        assert after["manager"]["pid"] != before["manager"]["pid"]
        assert after["manager"]["incarnation"] > before["manager"]["incarnation"]
        assert after["regions"] == before["regions"]
        assert after["manager"]["journal"]["recovered_regions"] == 1
        assert all(n["alive"] for n in after["nodes"])
        # the open session goes on: its next request reaches the new manager
        got = s.open("data").read().view(np.uint32)
        assert (got == _pattern(4 * MiB)).all()
        s.alloc("more", MiB)
        assert cluster.status()["sessions"]["h0"] == 1    # HELLO again, once
    actions = [(e["action"], e["kind"], e["target"])
               for e in faults.faults(cluster.state_dir)["log"]]
    assert actions == [("inject", "kill", "manager"), ("heal", "kill", "manager")]


def test_cli_restart_manager(cluster):
    sd = cluster.state_dir
    with cluster.connect("h1") as s:
        s.alloc("cli-kept", MiB, placement="d0").write(_pattern(MiB))
        r = subprocess.run([sys.executable, "-m", "fabric", "fault", "restart", "manager",
                            "--state-dir", sd], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        got = s.open("cli-kept").read().view(np.uint32)
        assert (got == _pattern(MiB)).all()
    r = subprocess.run([sys.executable, "-m", "fabric", "status", "--state-dir", sd],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "cli-kept" in r.stdout, r.stdout + r.stderr


def test_paused_manager_replaced_by_a_new_one_is_fenced(cluster):
    """SIGSTOP the manager, start a new one on the state dir, SIGCONT the old one: the
    old one must not apply the request it had queued, and exits with a log line."""
    sd = cluster.state_dir
    state = StateDir(sd)
    with cluster.connect("h0") as s:
        s.alloc("before", MiB)
    old = psutil.Process(state.read()["pids"]["manager"])
    with protocol.Client(state.manager_endpoint, "h0", timeout_ms=2000) as stale:
        stale.request("PING")                       # connected to the old manager
        old.send_signal(signal.SIGSTOP)
        try:
            with pytest.raises(FabricTimeout):      # queued at the paused old manager
                stale.request("ALLOC", {"name": "stale", "nbytes": MiB}, timeout_ms=300)
            with state.locked():
                new = process.spawn_manager(state, state.read())
            with protocol.Client(state.manager_endpoint, "cli", timeout_ms=500) as c:
                deadline = time.monotonic() + 15
                while True:
                    try:
                        if c.request("PING")["pid"] == new.pid:
                            break
                    except FabricTimeout:
                        pass
                    assert time.monotonic() < deadline, "the new manager did not serve"
        finally:
            old.send_signal(signal.SIGCONT)
        old.wait(10)                                # it notices the new epoch and exits
    log = open(state.log_path("manager")).read()
    assert "fenced:" in log and "stops without acting" in log
    deadline = time.monotonic() + 15
    while not all(n["alive"] for n in cluster.status()["nodes"]):
        assert time.monotonic() < deadline, "nodes did not register with the new manager"
        time.sleep(0.05)
    assert [r["name"] for r in cluster.status()["regions"]] == ["before"]
    # and the journal the new manager keeps has no trace of it either
    process.restart(state, "manager")
    assert [r["name"] for r in cluster.status()["regions"]] == ["before"]
    new.wait(10)                                    # reap the replaced one (our child)


def test_restart_manager_that_is_not_running(cluster):
    """kill without heal leaves no manager; restart starts one (nothing to stop)."""
    sd = cluster.state_dir
    with cluster.connect("h0") as s:
        s.alloc("x", MiB)
    faults.inject("kill", "manager", state_dir=sd)
    out = process.restart(StateDir(sd), "manager")
    assert out["pid"] != out["old_pid"]
    assert [r["name"] for r in cluster.status()["regions"]] == ["x"]
    assert os.path.isdir(os.path.join(sd, "journal"))
