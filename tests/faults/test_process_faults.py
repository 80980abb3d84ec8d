"""Process faults against real clusters: kill, pause, resume, restart, scheduling, the log."""
from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import psutil
import pytest

import fabric
import fabric.faults as faults
from fabric.errors import ClusterError, InvalidArgument
from fault_waits import wait_until

DEAD_WITHIN_S = 15.0   # generous: detection speed is a benchmark figure, not a test


def _alive(cluster, node: str) -> bool:
    return {n["name"]: n["alive"] for n in cluster.status()["nodes"]}[node]


def test_kill_then_heal_restarts_the_node_with_its_memory(cluster, fabric_faults):
    f = fabric_faults(cluster.state_dir)
    with cluster.connect("h0") as s:
        r = s.alloc("kept", 1 << 20, placement="d1", share="shared")   # d1 lives on node h1
        r.write(np.arange(1 << 18, dtype=np.uint32))
        fid = f.inject("kill", "h1")
        assert fid in f.active()
        wait_until(lambda: not _alive(cluster, "h1"), "h1 marked dead", DEAD_WITHIN_S)
        with pytest.raises(fabric.NodeUnavailable):
            s.open("kept")                      # its device is homed on a dead node
        done = f.heal()
        assert done == {fid: "restart"} and not f.active()
        assert _alive(cluster, "h1")
        with cluster.connect("h1") as s1:
            got = s1.open("kept").read().view(np.uint32)
            assert (got == np.arange(1 << 18, dtype=np.uint32)).all()
    actions = [(e["action"], e["kind"]) for e in faults.faults(cluster.state_dir)["log"]]
    assert actions == [("inject", "kill"), ("heal", "kill")]


def test_pause_marks_dead_and_resume_brings_back(cluster, fabric_faults):
    f = fabric_faults(cluster.state_dir)
    pid = fabric.cluster.running_pids(fabric.statedir.StateDir(cluster.state_dir))["h0"]
    f.inject("pause", "h0")
    wait_until(lambda: psutil.Process(pid).status() == psutil.STATUS_STOPPED, "h0 stopped", 5.0)
    wait_until(lambda: not _alive(cluster, "h0"), "paused h0 marked dead", DEAD_WITHIN_S)
    f.inject("resume", "h0")
    wait_until(lambda: _alive(cluster, "h0"), "resumed h0 alive again", 15.0)
    # the pause is still logged as active until healed; healing a running daemon is harmless
    assert [e["kind"] for e in f.active().values()] == ["pause"]
    f.heal()
    assert not f.active()


def test_scheduled_fault_applies_and_heals_itself(cluster):
    assert faults.inject("pause", "h1", state_dir=cluster.state_dir, at_s=0.3, for_s=0.5) is None
    log = lambda: faults.faults(cluster.state_dir)["log"]  # noqa: E731
    wait_until(lambda: [e["action"] for e in log()] == ["schedule", "inject", "heal"],
               "scheduled pause applied and healed", 10.0)
    inject, heal = log()[1:]
    assert 0.4 <= heal["t_unix_s"] - inject["t_unix_s"] < 5.0
    wait_until(lambda: _alive(cluster, "h1"), "h1 alive after the scheduled pause", 15.0)


def test_scheduler_exits_when_the_cluster_goes_away(state_dir):
    c = fabric.Cluster.start(hosts=1, devices=1, device_size="16MiB", state_dir=state_dir)
    try:
        faults.inject("kill", "h0", state_dir=state_dir, at_s=60)
        sched = wait_until(lambda: [p for p in psutil.process_iter(["cmdline"])
                                    if "fabric.faults.scheduler" in (p.info["cmdline"] or [])
                                    and state_dir in p.info["cmdline"]], "scheduler started", 5.0)
        del sched
    finally:
        c.stop()

    def gone():
        return not [p for p in psutil.process_iter(["cmdline"])
                    if "fabric.faults.scheduler" in (p.info["cmdline"] or [])
                    and state_dir in p.info["cmdline"]]
    wait_until(gone, "scheduler exit after fabric down", 3.0)


def test_bad_fault_commands_are_one_line_errors(cluster):
    sd = cluster.state_dir
    with pytest.raises(InvalidArgument, match="unknown daemon 'h9'"):
        faults.inject("kill", "h9", state_dir=sd)
    with pytest.raises(InvalidArgument, match="unknown fault"):
        faults.inject("melt", "h0", state_dir=sd)
    for bad in (-1, float("nan"), "soon", True):
        with pytest.raises(InvalidArgument):
            faults.inject("pause", "h0", state_dir=sd, for_s=bad)
    with pytest.raises(InvalidArgument, match="one-shot"):
        faults.inject("restart", "h0", state_dir=sd, for_s=1)
    with pytest.raises(InvalidArgument, match="no active fault"):
        faults.heal(sd, "f99")
    for argv, needle in ((["fault", "pause", "h9"], "unknown daemon"),
                         (["fault", "kill", "h0", "--for", "-1"], "must be >= 0"),
                         (["fault", "resume", "h0", "--for", "1"], "unrecognized arguments")):
        r = subprocess.run([sys.executable, "-m", "fabric", *argv, "--state-dir", sd],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode != 0 and needle in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert faults.faults(sd)["log"] == []


def test_no_cluster_is_a_clear_error(tmp_path):
    with pytest.raises(ClusterError, match="no cluster"):
        faults.inject("kill", "h0", state_dir=str(tmp_path))


def test_cli_list_and_json(cluster):
    sd = cluster.state_dir
    run = lambda *a: subprocess.run([sys.executable, "-m", "fabric", *a, "--state-dir", sd],  # noqa: E731
                                    capture_output=True, text=True, timeout=60)
    r = run("fault", "pause", "h1", "--json")
    assert r.returncode == 0, r.stderr
    import json
    out = json.loads(r.stdout)
    assert out["schema"] == 1 and out["kind"] == "pause" and out["id"] == "f1"
    r = run("fault", "list", "--json")
    listing = json.loads(r.stdout)
    assert list(listing["active"]) == ["f1"] and listing["schema"] == 1
    r = run("fault", "heal")
    assert r.returncode == 0 and "f1: resume" in r.stdout
    r = run("fault", "list")
    assert "0 active fault(s)" in r.stdout and "heal" in r.stdout
