"""`fabric up/status/down` as a user runs them: real daemons, real CLI processes."""
import json
import os
import subprocess
import sys

import psutil
import pytest

import fabric


def run_cli(*args, state_dir=None, check=True, timeout=60):
    env = dict(os.environ)
    if state_dir:
        env["FABRIC_STATE_DIR"] = state_dir
    p = subprocess.run([sys.executable, "-m", "fabric", *args], capture_output=True, text=True,
                       env=env, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"fabric {' '.join(args)} failed ({p.returncode}): {p.stderr}")
    return p


def test_up_status_down(state_dir):
    run_cli("up", "--hosts", "3", "--devices", "2", "--device-size", "16MiB", state_dir=state_dir)
    try:
        st = json.loads(run_cli("status", "--json", state_dir=state_dir).stdout)
        nodes = {n["name"]: n for n in st["nodes"]}
        assert sorted(nodes) == ["h0", "h1", "h2"]
        assert all(n["alive"] and psutil.pid_exists(n["pid"]) for n in nodes.values())
        assert nodes["h0"]["devices"] == ["d0"] and nodes["h1"]["devices"] == ["d1"]
        assert nodes["h2"]["devices"] == []
        assert all(isinstance(n["incarnation"], int) for n in nodes.values())
        assert [d["capacity_bytes"] for d in st["devices"]] == [16 << 20] * 2
        for d in st["devices"]:
            assert os.path.getsize(d["path"]) == 16 << 20
        human = run_cli("status", state_dir=state_dir).stdout
        assert "h2" in human and "d1" in human

        psutil.Process(st["manager"]["pid"]).suspend()
        try:  # a hung manager: status gives up within its deadline, one line
            hung = run_cli("status", state_dir=state_dir, check=False, timeout=30)
        finally:
            psutil.Process(st["manager"]["pid"]).resume()
        assert hung.returncode == 1 and "no reply within" in hung.stderr

        again = run_cli("up", "--hosts", "2", state_dir=state_dir, check=False)
        assert again.returncode != 0
        assert "already running" in again.stderr and len(again.stderr.strip().splitlines()) == 1
        pids = [n["pid"] for n in nodes.values()] + [st["manager"]["pid"]]
    finally:
        out = run_cli("down", state_dir=state_dir)
    assert "stopped 4 daemons" in out.stdout
    assert not any(psutil.pid_exists(p) for p in pids)
    assert not os.path.exists(state_dir)


def test_down_keep_memory_then_reattach(state_dir):
    with fabric.Cluster.start(hosts=1, devices=1, device_size="8MiB", state_dir=state_dir,
                              detach=True) as c:
        with c.connect("h0") as s:
            r = s.alloc("keep", 4096, placement="d0")
            r.ndarray("u1", 4096)[:] = 42
            dev, off = s.translate(r.address)
        c.stop(keep_memory=True)
        path = os.path.join(state_dir, "devices", "d0.mem")
        assert os.path.exists(path)
        with open(path, "rb") as f:
            f.seek(off)
            assert f.read(4) == b"\x2a" * 4
    # a new cluster on the same state dir reattaches the kept device file
    with fabric.Cluster.start(hosts=1, devices=1, device_size="8MiB", state_dir=state_dir) as c:
        assert os.path.getsize(path) == 8 << 20
    assert not os.path.exists(state_dir)


def test_cli_errors_are_one_line(state_dir):
    for args in (["status"], ["logs"], ["up", "--device-size", "lots"],
                 ["up", "--device-size", "1GB"], ["up", "--topology", "/nonexistent.toml"]):
        p = run_cli(*args, state_dir=state_dir, check=False)
        assert p.returncode == 1, args
        assert len(p.stderr.strip().splitlines()) == 1, (args, p.stderr)
        assert p.stderr.startswith("fabric: error:"), (args, p.stderr)
    for args in (["up", "--hosts", "0"], ["up", "--bogus"], ["up", "--seed", "x"], ["free", "r"]):
        p = run_cli(*args, state_dir=state_dir, check=False)
        assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, (args, p.stderr)
    assert "at least 1" in run_cli("up", "--hosts", "0", state_dir=state_dir, check=False).stderr
    p = run_cli("down", state_dir=state_dir)  # nothing running: not an error
    assert p.returncode == 0 and "nothing to stop" in p.stdout
    assert not os.path.exists(os.path.join(state_dir, "cluster.json"))


def test_every_command_has_help():
    for cmd in ([], ["up"], ["down"], ["status"], ["demo"], ["stats"], ["calibrate"], ["topo"],
                ["topo", "show"], ["logs"], ["free"]):
        p = run_cli(*cmd, "--help")
        assert "usage: fabric" in p.stdout


def test_device_too_large_for_tmpfs_fails_cleanly(state_dir):
    # Larger than the whole tmpfs, not just its free space: other clusters freeing memory
    # meanwhile must never turn this into a real multi-GiB allocation (it would fill RAM).
    big = (psutil.disk_usage("/dev/shm").total // 4096 + (1 << 18)) * 4096
    with pytest.raises(fabric.errors.ClusterError, match="d0"):
        fabric.Cluster.start(hosts=1, devices=1, device_size=big, state_dir=state_dir)
    assert not os.path.exists(os.path.join(state_dir, "devices", "d0.mem"))


def test_crashed_owner_leaves_nothing(state_dir):
    code = ("import fabric, os; c = fabric.Cluster.start(hosts=2, device_size='8MiB', "
            f"state_dir={state_dir!r}); print(c.info['pids'], flush=True); os._exit(9)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 9
    pids = list(eval(p.stdout.strip()).values())
    gone, alive = psutil.wait_procs([psutil.Process(x) for x in pids if psutil.pid_exists(x)],
                                    timeout=15)
    assert not alive, "daemons outlived the process that started them"
    assert not os.path.exists(state_dir), os.listdir(state_dir)  # and took their files along


def test_demo_runs_and_cleans_up():
    p = run_cli("demo", "--sharing", "--size", "8MiB", timeout=120)
    assert "every host read the same values: True" in p.stdout
    assert "stripes land on: d0 d1 d0 d1" in p.stdout
    # its private state dir (other tests may create theirs in /dev/shm meanwhile) is gone
    used = p.stdout.split("state dir ", 1)[1].split()[0]
    assert used.startswith("/dev/shm/cxl-fabric-") and not os.path.exists(used)


def test_topology_file_with_memory_only_node(state_dir, tmp_path):
    topo = tmp_path / "pool.toml"
    topo.write_text("""
name = "tiny-pool"
[[host]]
name = "h0"
[[host]]
name = "h1"
[[node]]
name = "mem0"
[[switch]]
name = "sw0"
[[device]]
name = "d0"
capacity = "8MiB"
home = "mem0"
[[device]]
name = "d1"
capacity = "8MiB"
home = "h1"
[[link]]
ends = ["h0", "sw0"]
[[link]]
ends = ["h1", "sw0"]
[[link]]
ends = ["sw0", "d0"]
[[link]]
ends = ["sw0", "d1"]
""")
    run_cli("up", "--topology", str(topo), state_dir=state_dir)
    try:
        st = json.loads(run_cli("status", "--json", state_dir=state_dir).stdout)
        nodes = {n["name"]: n for n in st["nodes"]}
        assert nodes["mem0"] == {**nodes["mem0"], "is_host": False, "devices": ["d0"], "alive": True}
        assert nodes["h0"]["devices"] == [] and nodes["h1"]["devices"] == ["d1"]
        with fabric.connect("h0", state_dir=state_dir) as s:
            r = s.alloc("on-mem0", 4096, placement="d0")
            assert s.translate(r.address) == ("d0", 0)
        with pytest.raises(fabric.InvalidArgument, match="host"):
            fabric.connect("mem0", state_dir=state_dir)  # a memory-only node runs no workload
    finally:
        run_cli("down", state_dir=state_dir)


def test_status_and_down_after_manager_crash(state_dir):
    run_cli("up", "--hosts", "1", "--device-size", "8MiB", state_dir=state_dir)
    info = json.load(open(os.path.join(state_dir, "cluster.json")))
    psutil.Process(info["pids"]["manager"]).kill()
    p = run_cli("status", state_dir=state_dir, check=False)
    assert p.returncode == 1 and "not running" in p.stderr
    out = run_cli("down", state_dir=state_dir)
    assert "stopped 1 daemons" in out.stdout  # the node; the manager was already gone
    assert not psutil.pid_exists(info["pids"]["h0"]) or \
        psutil.Process(info["pids"]["h0"]).status() == psutil.STATUS_ZOMBIE


def test_a_package_named_fabric_where_the_user_stands_is_not_imported(state_dir, tmp_path):
    """`python -m` puts the working directory first on sys.path: with a wheel install, a
    user's own package named `fabric` there replaced ours in every daemon and `fabric up`
    failed.  Daemons run in the state dir instead, wherever the user stands."""
    own = tmp_path / "project"
    (own / "fabric").mkdir(parents=True)
    (own / "fabric" / "__init__.py").write_text("raise ImportError('the user own fabric')\n")
    cwd = os.getcwd()
    os.chdir(own)
    try:
        c = fabric.Cluster.start(hosts=2, devices=1, device_size="16MiB", state_dir=state_dir)
    finally:
        os.chdir(cwd)
    try:
        pids = c.info["pids"]
        assert sorted(pids) == ["h0", "h1", "manager"]
        for pid in pids.values():
            assert psutil.Process(pid).cwd() == state_dir
    finally:
        c.stop()
