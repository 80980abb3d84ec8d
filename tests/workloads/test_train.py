"""Training on real clusters: both modes agree, memory is measured, failures are clean."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

import fabric
from fabric.errors import WorkloadError
from fabric.workloads import train


def test_pooled_and_replicated_reach_the_same_loss_on_3_hosts(state_dir, seed,
                                                              no_stray_workers):
    common = dict(hosts=3, steps=6, seed=seed, params="100k", state_dir=state_dir)
    with fabric.Cluster.start(hosts=3, devices=3, device_size="32MiB", state_dir=state_dir) as c:
        pooled = train(mode="pooled", **common)
        replicated = train(mode="replicated", **common)
        s = c.connect("h0")
        assert s.regions() == []              # the runs freed everything they allocated
        s.close()
    a, b = pooled["final_loss"], replicated["final_loss"]
    assert a == pytest.approx(b, rel=1e-5)
    assert pooled["schema"] == 1 and pooled["config"]["started_cluster"] is False
    assert len(pooled["steps"]) == 6 and len(pooled["workers"]) == 3
    # pooled reads weights through the fabric; replicated only sends messages over it
    assert pooled["latency"]["weights"]["count"] > 0
    assert replicated["latency"]["weights"]["count"] == 0
    assert replicated["latency"]["fabric"]["count"] > 0
    assert pooled["locality"]["total"]["cached"]["bytes"] + \
        pooled["locality"]["total"]["far"]["bytes"] > 0
    for r in (pooled, replicated):
        st = r["steps"][-1]
        assert st["wall_ns"] > 0 and st["emulated_ns"] >= st["wall_ns"]
        assert r["latency"]["fabric"]["p99_ns"] >= r["latency"]["fabric"]["p50_ns"] > 0


@pytest.mark.timeout(300)
def test_pooled_weights_are_one_copy_replicated_are_n(state_dir, seed, no_stray_workers):
    """8M parameters (32 MB) on 3 hosts: the kernel's PSS of the weights says it."""
    with fabric.Cluster.start(hosts=3, devices=3, device_size="96MiB", state_dir=state_dir):
        pooled = train(hosts=3, mode="pooled", steps=2, seed=seed, params="8M",
                       state_dir=state_dir)
        replicated = train(hosts=3, mode="replicated", steps=2, seed=seed, params="8M",
                           state_dir=state_dir)
    wb = pooled["memory"]["weights_bytes"]
    assert wb >= 32_000_000
    assert 0.8 <= pooled["memory"]["weights_copies"] <= 1.1
    assert pooled["memory"]["weights_uss_bytes"] < 0.05 * wb     # nobody holds a private copy
    assert 2.7 <= replicated["memory"]["weights_copies"] <= 3.3
    for w in replicated["memory"]["per_worker"]:
        assert w["weights_uss_bytes"] >= 0.9 * wb                # each holds its own copy


def _wait_for_workers(parent: psutil.Process, n: int, timeout_s: float,
                      state_dir: str) -> list[psutil.Process]:
    """The n worker processes, once every one of them has set up its regions
    (so training is under way)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ws = [p for p in parent.children(recursive=True)
              if "fabric.workloads.worker" in (p.cmdline() or [])]
        if len(ws) == n:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("workers did not start")
    with fabric.connect("h0", state_dir=state_dir, inject="off") as s:
        while time.monotonic() < deadline:
            names = [r["name"] for r in s.regions()]
            if sum(".grad." in x or ".inbox." in x for x in names) == n:
                time.sleep(0.5)                      # a few hundred steps in
                return ws
            time.sleep(0.05)
    raise AssertionError("workers did not set up their regions")


def _run_cli(state_dir: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "fabric", "run", "train", "--hosts", "3", "--steps", "100000",
         "--params", "100k", "--timeout-ms", "20000", "--quiet", "--state-dir", state_dir,
         *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("mode", ["pooled", "replicated"])
def test_killed_worker_fails_the_run_cleanly(state_dir, mode, no_stray_workers):
    """The run starts its own cluster; SIGKILL a worker mid-run: a one-line error,
    exit 1, well within the 20 s wait deadline, and nothing left behind."""
    proc = _run_cli(state_dir, "--mode", mode)
    try:
        ws = _wait_for_workers(psutil.Process(proc.pid), 3, 60, state_dir)
        victim = ws[1]
        t0 = time.monotonic()
        victim.send_signal(signal.SIGKILL)
        _out, err = proc.communicate(timeout=30)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("fabric: error: training failed: worker 1"), err
    assert "SIGKILL" in lines[0]
    assert took < 20
    assert not no_stray_workers()
    assert not os.path.exists(state_dir)                  # the run's own cluster is gone


def test_killed_worker_in_an_attached_cluster_frees_its_regions(state_dir, no_stray_workers):
    with fabric.Cluster.start(hosts=3, devices=1, device_size="32MiB", state_dir=state_dir) as c:
        proc = _run_cli(state_dir, "--mode", "pooled")
        try:
            ws = _wait_for_workers(psutil.Process(proc.pid), 3, 60, state_dir)
            ws[2].kill()
            _out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 1 and "worker 2" in err, err
        s = c.connect("h0")
        assert s.regions() == []
        assert [n["alive"] for n in c.status()["nodes"]] == [True] * 3
        s.close()
        assert os.listdir(state_dir)  # the cluster is still there, not torn down
    assert not no_stray_workers()


def test_training_on_a_lockstep_cluster_runs_its_workers_free_running(state_dir, seed,
                                                                      no_stray_workers):
    """The workers' ZeroMQ exchanges are waits the engine cannot see: in lockstep they
    would hold each other back until the deadline, so they run free-running (and finish
    with the loss of a run on a plain virtual cluster)."""
    common = dict(hosts=3, steps=4, seed=seed, params="100k", state_dir=state_dir,
                  mode="replicated")     # the ring all-reduce: ZeroMQ waits between workers
    with fabric.Cluster.start(hosts=3, devices=1, device_size="16MiB", state_dir=state_dir,
                              inject="virtual", lockstep_ns=10_000) as c:
        t0 = time.monotonic()
        locked = train(**common)
        assert time.monotonic() - t0 < 60
        assert not c.stats().get("lockstep")      # no worker joined the lockstep group
    with fabric.Cluster.start(hosts=3, devices=1, device_size="16MiB", state_dir=state_dir,
                              inject="virtual"):
        free = train(**common)
    assert locked["final_loss"] == free["final_loss"]
    assert not no_stray_workers()


def test_train_refuses_more_hosts_than_the_cluster_has(state_dir):
    with fabric.Cluster.start(hosts=2, devices=1, device_size="16MiB", state_dir=state_dir):
        with pytest.raises(fabric.InvalidArgument, match="has 2 hosts"):
            train(hosts=3, steps=1, state_dir=state_dir)
    assert issubclass(WorkloadError, fabric.FabricError)


def test_cli_run_starts_and_stops_its_own_cluster(state_dir, tmp_path, capsys, no_stray_workers):
    from fabric.cli import main
    out = tmp_path / "r.json"
    rc = main(["run", "train", "--hosts", "2", "--steps", "3", "--mode", "replicated",
               "--topology", "direct", "--inject", "off", "--layers", "16,32,8", "--batch", "8",
               "--state-dir", state_dir, "--out", str(out), "--quiet"])
    assert rc == 0 and capsys.readouterr().out.strip() == str(out)
    import json
    r = json.loads(out.read_text())
    assert r["config"]["started_cluster"] is True and r["config"]["topology_name"]
    assert r["config"]["inject_effective"] == "off" and r["model"]["layers"] == [16, 32, 8]
    assert all(s["emulated_ns"] == s["wall_ns"] for s in r["steps"])   # nothing injected
    assert not os.path.exists(state_dir)                      # stopped and removed
    # bad input: one line, exit 2 for usage, 1 for a fabric error
    assert main(["run", "train", "--hosts", "3", "--batch", "2", "--state-dir", state_dir]) == 1
    assert "batch" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["run", "train", "--mode", "sideways"])
    assert e.value.code == 2
