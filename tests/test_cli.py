"""The `fabric` command line as a new user meets it: real CLI processes, real daemons.

Covers what users trip on: output piped into `head`, sizes, `down` with
nothing running, logs, status (healthy, degraded, manager dead, --check),
a crashed cluster left behind, state dirs that are not ours, --json with
"schema": 1 everywhere, $FABRIC_STATE_DIR, `fabric free`, the demo's own
self-check at larger sizes, and typed one-line errors for bad input.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest

import fabric
from fabric import demo as demo_mod
from fabric.cli import build_parser
from fabric.constants import INJECT_MODES, MAX_PATH_LINKS, MAX_SEED

MiB = 1 << 20


def run_cli(*args, state_dir=None, check=True, timeout=60, env_extra=None):
    env = dict(os.environ)
    env.pop("FABRIC_STATE_DIR", None)
    if state_dir:
        env["FABRIC_STATE_DIR"] = state_dir
    env.update(env_extra or {})
    p = subprocess.run([sys.executable, "-m", "fabric", *args], capture_output=True, text=True,
                       env=env, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"fabric {' '.join(args)} failed ({p.returncode}): {p.stderr}")
    return p


def one_line_error(p, code=1):
    assert p.returncode == code, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    return p.stderr.strip()


def new_manager(state_dir) -> bool:
    """Whether the running manager sends the newer STATUS fields (and honours FREE force)."""
    st = json.loads(run_cli("status", "--json", state_dir=state_dir).stdout)
    return "uptime_s" in st["manager"]


# -- 1. output cut short by its reader ---------------------------------------------------------
def _closed_stdout(*args, state_dir=None):
    env = dict(os.environ)
    if state_dir:
        env["FABRIC_STATE_DIR"] = state_dir
    p = subprocess.Popen([sys.executable, "-m", "fabric", *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=env)
    p.stdout.close()                    # the reader is gone before the first write (like `head`)
    err = p.stderr.read().decode()
    p.wait(60)
    p.stderr.close()
    return p.returncode, err


def test_output_into_a_closed_pipe_exits_quietly(cluster):
    for args in (["topo", "show"], ["topo", "show", "--json"], ["status"], ["status", "--json"],
                 ["stats", "--json"], ["logs"], ["--help"]):
        rc, err = _closed_stdout(*args, state_dir=cluster.state_dir)
        assert rc in (0, 141), (args, rc, err)
        assert "Traceback" not in err and "BrokenPipe" not in err, (args, err)
    sh = subprocess.run(f"{sys.executable} -m fabric topo show rdma --hosts 8 | head -1",
                        shell=True, capture_output=True, text=True, timeout=60)
    assert sh.stdout.startswith("topology rdma") and sh.stderr == ""


# -- 2. sizes ----------------------------------------------------------------------------------
def test_sizes_on_the_command_line(state_dir):
    p = run_cli("up", "--device-size", "1GB", state_dir=state_dir, check=False)
    assert "did you mean 1GiB?" in one_line_error(p)
    p = run_cli("up", "--device-size", "512m", state_dir=state_dir, check=False)
    assert "did you mean 512MiB?" in one_line_error(p)
    for bad in ("-1MiB", "0", "20000000TiB"):
        one_line_error(run_cli("topo", "show", f"--device-size={bad}", check=False))
    assert not os.listdir(state_dir)
    st = json.loads(run_cli("topo", "show", "--device-size", "1.5 gib", "--json").stdout)
    assert st["schema"] == 1
    assert {d["capacity_bytes"] for d in st["devices"]} == {3 << 29}
    st = json.loads(run_cli("topo", "show", "--device-size", "8GB", "--json").stdout)
    assert {d["capacity_bytes"] for d in st["devices"]} == {8 * 10**9}


# -- 3. down with nothing running, --keep-logs, logs -----------------------------------------------
def test_down_with_nothing_running_exits_zero(state_dir):
    gone = os.path.join(state_dir, "never-started")
    p = run_cli("down", state_dir=gone)
    assert "nothing to stop" in p.stdout and p.stderr == ""
    res = json.loads(run_cli("down", "--json", state_dir=gone).stdout)
    assert res["schema"] == 1 and res["found"] is False and res["stopped"] == []
    assert not os.path.exists(gone)


def test_down_keep_logs_then_logs_command(state_dir):
    run_cli("up", "--hosts", "2", "--device-size", "8MiB", state_dir=state_dir)
    listing = run_cli("logs", state_dir=state_dir).stdout
    assert "manager" in listing and "h0" in listing and "h1" in listing
    res = json.loads(run_cli("down", "--keep-logs", "--json", state_dir=state_dir).stdout)
    assert res["kept_logs"] is True and sorted(res["stopped"]) == ["h0", "h1", "manager"]
    assert sorted(os.listdir(state_dir)) == ["lock", "logs"] or \
        sorted(os.listdir(state_dir)) == ["logs"]
    full = run_cli("logs", "manager", state_dir=state_dir).stdout.splitlines()
    assert any("shutting down" in ln for ln in full)
    last = run_cli("logs", "manager", "--lines", "1", state_dir=state_dir).stdout.splitlines()
    assert last == full[-1:]
    node = json.loads(run_cli("logs", "h1", "--json", state_dir=state_dir).stdout)
    assert node["schema"] == 1 and node["log"].endswith("node-h1.log")
    assert any("registered" in ln for ln in node["lines"])
    listed = json.loads(run_cli("logs", "--json", state_dir=state_dir).stdout)
    assert [r["name"] for r in listed["logs"]] == ["manager", "h0", "h1"]
    err = one_line_error(run_cli("logs", "h7", state_dir=state_dir, check=False))
    assert "h7" in err and "manager, h0, h1" in err
    one_line_error(run_cli("logs", "h0", "--lines", "0", state_dir=state_dir, check=False), 2)
    # down again: nothing runs; the kept logs go now
    p = run_cli("down", state_dir=state_dir)
    assert "no daemon was running" in p.stdout and "logs" in p.stdout
    assert not os.path.exists(state_dir)
    assert "no daemon logs" in one_line_error(run_cli("logs", state_dir=state_dir, check=False))


# -- 4. status ---------------------------------------------------------------------------------
def test_status_shows_usage_regions_and_health(cluster):
    sd = cluster.state_dir
    with cluster.connect("h0") as s, cluster.connect("h1"):
        s.alloc("weights", 3 * MiB, share="shared", allow={"h1": "rw"}, placement="d0")
        human = run_cli("status", state_dir=sd).stdout
        st = json.loads(run_cli("status", "--json", state_dir=sd).stdout)
        newer = "uptime_s" in st["manager"]
    assert st["schema"] == 1 and st["healthy"] is True and st["problems"] == []
    assert "manager pid" in human and ", up " in human
    for column in ("heartbeat", "sessions", "used%", "free", "free%", "owner", "allow", "age"):
        assert column in human, column
    line = next(ln for ln in human.splitlines() if ln.strip().startswith("weights"))
    assert "3.0 MiB" in line and "shared" in line and "h0" in line and "h1:rw" in line
    d0 = next(ln for ln in human.splitlines() if ln.startswith("d0 "))
    assert "3.0 MiB" in d0 and "4.7%" in d0 and "95.3%" in d0       # of 64 MiB
    assert "s ago" in next(ln for ln in human.splitlines() if ln.startswith("h0 "))
    assert run_cli("status", "--check", state_dir=sd).stdout == ""
    if newer:  # the manager helper's STATUS fields (docs/protocol.md)
        assert st["manager"]["uptime_s"] >= 0 and st["manager"]["started_unix_s"] > 0
        assert st["sessions"] == {"h0": 1, "h1": 1}
        assert {d["name"]: d["free_bytes"] for d in st["devices"]}["d0"] == 61 * MiB
        row = next(ln for ln in human.splitlines() if ln.startswith("h1 "))
        cells = row.split()
        assert cells[cells.index("ago") + 1] == "1"                    # sessions column


def test_status_check_names_a_dead_node(state_dir):
    run_cli("up", "--hosts", "2", "--device-size", "8MiB", state_dir=state_dir)
    try:
        info = json.load(open(os.path.join(state_dir, "cluster.json")))
        psutil.Process(info["pids"]["h1"]).kill()
        deadline = time.monotonic() + 20
        while True:
            p = run_cli("status", "--check", state_dir=state_dir, check=False)
            if p.returncode or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert "node h1 is down" in one_line_error(p) and p.stdout == ""
        st = json.loads(run_cli("status", "--json", state_dir=state_dir).stdout)
        assert st["healthy"] is False and st["problems"] == ["node h1 is down"]
    finally:
        run_cli("down", state_dir=state_dir)


def test_status_with_the_manager_dead_lists_what_it_sees(state_dir):
    run_cli("up", "--hosts", "2", "--device-size", "8MiB", state_dir=state_dir)
    try:
        info = json.load(open(os.path.join(state_dir, "cluster.json")))
        psutil.Process(info["pids"]["manager"]).kill()
        psutil.Process(info["pids"]["manager"]).wait(10) if psutil.pid_exists(
            info["pids"]["manager"]) else None
        p = run_cli("status", state_dir=state_dir, check=False)
        assert "not running" in one_line_error(p)
        assert "manager DOWN" in p.stdout
        for n in ("h0", "h1"):
            row = next(ln for ln in p.stdout.splitlines() if ln.startswith(n + " "))
            assert "yes" in row and str(info["pids"][n]) in row
        j = run_cli("status", "--json", state_dir=state_dir, check=False)
        st = json.loads(j.stdout)
        assert j.returncode == 1 and st["schema"] == 1 and st["manager"]["alive"] is False
        assert st["error"]["code"] and "not running" in st["error"]["message"]
        assert {n["name"]: n["pid"] for n in st["nodes"]} == {"h0": info["pids"]["h0"],
                                                             "h1": info["pids"]["h1"]}
        c = run_cli("status", "--check", state_dir=state_dir, check=False)
        assert "manager" in one_line_error(c) and c.stdout == ""

        # 5. `up` on this wreck says what is left and how to clean it
        again = run_cli("up", "--hosts", "2", state_dir=state_dir, check=False)
        msg = one_line_error(again)
        assert "crashed" in msg and "fabric down" in msg and "manager pid ?" not in msg
        for n in ("h0", "h1"):
            assert f"{n} (pid {info['pids'][n]})" in msg
        assert "cluster.json" in msg and "devices/" in msg
    finally:
        out = run_cli("down", state_dir=state_dir)
    assert "stopped 2 daemons" in out.stdout


def test_status_json_without_a_cluster_is_an_error_object(state_dir):
    p = run_cli("status", "--json", state_dir=state_dir, check=False)
    one_line_error(p)
    doc = json.loads(p.stdout)
    assert doc == {"schema": 1, "error": {"code": "CLUSTER_ERROR", "message": doc["error"]["message"]}}
    assert "no cluster" in doc["error"]["message"]
    c = run_cli("status", "--check", state_dir=state_dir, check=False)
    assert "unhealthy" in one_line_error(c) and c.stdout == ""


# -- 5. state dirs that cannot be used ---------------------------------------------------------
def test_state_dir_that_is_not_usable(state_dir, tmp_path):
    a_file = tmp_path / "plain-file"
    a_file.write_text("mine\n")
    p = run_cli("up", "--hosts", "1", state_dir=str(a_file), check=False)
    assert "not a directory" in one_line_error(p)
    assert "not a directory" in one_line_error(run_cli("down", state_dir=str(a_file), check=False))
    assert a_file.read_text() == "mine\n"

    theirs = tmp_path / "home"
    theirs.mkdir()
    (theirs / "thesis.tex").write_text("years of work\n")
    for cmd in (["up", "--hosts", "1"], ["down"]):
        p = run_cli(*cmd, state_dir=str(theirs), check=False)
        assert "not a cluster state dir" in one_line_error(p) and "thesis.tex" in p.stderr
    assert (theirs / "thesis.tex").read_text() == "years of work\n"

    locked = tmp_path / "locked"
    locked.mkdir()
    if os.getuid() == 0:                    # root may write anywhere: use another user's dir
        os.chown(locked, 65534, 65534)
        target, want = str(locked), "belongs to uid 65534"
    else:
        locked.chmod(0o500)
        target, want = str(locked / "sub"), "not a writable directory"
    try:
        assert want in one_line_error(run_cli("up", "--hosts", "1", state_dir=target,
                                              check=False))
    finally:
        locked.chmod(0o700)


# -- 6. --json everywhere ----------------------------------------------------------------------
def test_every_printing_command_has_json_with_schema(state_dir):
    up = json.loads(run_cli("up", "--hosts", "2", "--device-size", "8MiB", "--json",
                            state_dir=state_dir).stdout)
    try:
        assert up["schema"] == 1 and set(up["pids"]) == {"manager", "h0", "h1"}
        for args in (["status"], ["stats"], ["topo", "show"], ["logs"], ["logs", "h0"],
                     ["calibrate", "--no-store"]):
            doc = json.loads(run_cli(*args, "--json", state_dir=state_dir, timeout=120).stdout)
            assert doc["schema"] == 1, args
        p = run_cli("free", "nope", "--force", "--json", state_dir=state_dir, check=False)
        assert p.returncode == 1 and json.loads(p.stdout)["error"]["code"]
    finally:
        down = json.loads(run_cli("down", "--json", state_dir=state_dir).stdout)
    assert down["schema"] == 1 and down["found"] is True


def test_json_schema_is_documented():
    readme = open(os.path.join(os.path.dirname(__file__), os.pardir, "README.md")).read()
    assert '"schema": 1' in readme


# -- 7. $FABRIC_STATE_DIR for Cluster.start and the demo ----------------------------------------
def test_cluster_start_honours_the_env_var(state_dir, monkeypatch):
    monkeypatch.setenv("FABRIC_STATE_DIR", state_dir)
    with fabric.Cluster.start(hosts=1, device_size="8MiB") as c:
        assert c.state_dir == state_dir
        assert os.path.exists(os.path.join(state_dir, "cluster.json"))
    assert not os.path.exists(state_dir)


def test_demo_honours_the_env_var_and_prints_json(state_dir):
    p = run_cli("demo", "--sharing", "--size", "1MiB", "--json", state_dir=state_dir, timeout=180)
    doc = json.loads(p.stdout)
    assert doc["schema"] == 1 and doc["ok"] is True and doc["state_dir"] == state_dir
    assert doc["interleave"]["stripes"] == ["d0", "d1", "d0", "d1"]
    assert not os.path.exists(state_dir)


# -- 8. fabric free ----------------------------------------------------------------------------
def test_free_argument_checks(cluster):
    sd = cluster.state_dir
    one_line_error(run_cli("free", "x", state_dir=sd, check=False), 2)
    one_line_error(run_cli("free", "x", "--host", "h0", "--force", state_dir=sd, check=False), 2)
    assert "not a host" in one_line_error(run_cli("free", "x", "--host", "h9", state_dir=sd,
                                                  check=False))
    assert "region name" in one_line_error(run_cli("free", "a/b", "--force", state_dir=sd,
                                                   check=False))
    assert "'x'" in one_line_error(run_cli("free", "x", "--host", "h0", state_dir=sd,
                                           check=False))


@pytest.mark.real_manager
def test_free_from_the_command_line(cluster):
    """Needs the manager's FREE {"force", "as_host"} from sender "cli" (docs/protocol.md)."""
    sd = cluster.state_dir
    if not new_manager(sd):
        pytest.skip("the running manager predates FREE force/as_host")
    with cluster.connect("h0") as s:
        s.alloc("mine", MiB)
        s.alloc("orphan", MiB)
    err = one_line_error(run_cli("free", "mine", "--host", "h1", state_dir=sd, check=False))
    assert "owner" in err
    assert "freed region 'mine'" in run_cli("free", "mine", "--host", "h0", state_dir=sd).stdout
    doc = json.loads(run_cli("free", "orphan", "--force", "--json", state_dir=sd).stdout)
    assert doc["schema"] == 1 and doc["freed"] == "orphan"
    st = json.loads(run_cli("status", "--json", state_dir=sd).stdout)
    assert st["regions"] == []
    one_line_error(run_cli("free", "orphan", "--force", state_dir=sd, check=False))


# -- 9. the demo's own check at larger sizes ----------------------------------------------------
@pytest.mark.parametrize("nbytes", [MiB, 16 * MiB, 64 * MiB, 64 * MiB + 4096, 128 * MiB,
                                    256 * MiB])
def test_demo_pattern_is_exact_at_every_size(nbytes):
    a = np.empty(nbytes // 4, np.float32)
    demo_mod._fill(a)
    assert demo_mod._check(a)
    assert float(a.sum(dtype=np.float64)) == demo_mod._expected_sum(a.size)
    assert a[-1] == (a.size - 1) % demo_mod.PATTERN_MOD
    a[a.size // 2 + 3] += 1
    assert not demo_mod._check(a)


@pytest.mark.parametrize("size", ["1MiB", "128MiB",
                                  pytest.param("256MiB", marks=pytest.mark.slow)])
def test_demo_self_check_passes(size):
    p = run_cli("demo", "--sharing", "--size", size, timeout=300)
    assert "every host read the same values: True" in p.stdout
    assert "False" not in p.stdout


# -- 10. typed errors where input enters -----------------------------------------------------
def test_seed_and_inject_are_checked_by_the_parser(state_dir):
    assert "0..2**64-1" in one_line_error(run_cli("up", "--seed", str(MAX_SEED + 1),
                                                  state_dir=state_dir, check=False), 2)
    one_line_error(run_cli("up", "--seed", "-1", state_dir=state_dir, check=False), 2)
    one_line_error(run_cli("up", "--inject", "sometimes", state_dir=state_dir, check=False), 2)
    up = build_parser().parse_args(["up", "--seed", str(MAX_SEED)])
    assert up.seed == MAX_SEED
    inject = next(a for a in build_parser()._subparsers._group_actions[0].choices["up"]._actions
                  if a.dest == "inject")
    assert tuple(inject.choices) == INJECT_MODES
    with pytest.raises(fabric.InvalidArgument, match="seed"):
        fabric.Cluster.start(hosts=1, device_size="8MiB", state_dir=state_dir, seed=-1)
    assert not os.listdir(state_dir)


def test_bad_topology_files_are_one_line(state_dir, tmp_path):
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b'name = "caf\xe9"\n[[host]]\nname = "h0"\n[[device]]\nname = "d0"\n')
    deep = tmp_path / "deep.toml"
    deep.write_text("x = " + "[" * 50_000 + "]" * 50_000 + "\n")
    engine = tmp_path / "engine.toml"
    engine.write_text('[engine]\nmax_regions = -1\n[[host]]\nname = "h0"\n'
                      '[[device]]\nname = "d0"\ncapacity = "8MiB"\n')
    chain = tmp_path / "chain.toml"
    n = MAX_PATH_LINKS + 5
    text = '[[host]]\nname = "h0"\n[[device]]\nname = "d0"\ncapacity = "8MiB"\n'
    text += "".join(f'[[switch]]\nname = "s{i}"\n' for i in range(n))
    ends = ["h0"] + [f"s{i}" for i in range(n)] + ["d0"]
    text += "".join(f'[[link]]\nends = ["{a}", "{b}"]\n' for a, b in zip(ends, ends[1:]))
    chain.write_text(text)
    for path, what in ((latin, "UTF-8"), (deep, "nested too deeply"), (engine, "max_regions"),
                       (chain, f"crosses {n + 1} links")):
        for cmd in (["topo", "show", str(path)], ["up", "--topology", str(path)]):
            err = one_line_error(run_cli(*cmd, state_dir=state_dir, check=False))
            assert str(path) in err and what in err, (cmd, err)
    assert not os.listdir(state_dir)


# -- 11. stats with idle hosts ---------------------------------------------------------------
def test_stats_dash_for_hosts_without_calls(cluster):
    with cluster.connect("h1") as s:
        s.alloc("x", MiB).read()
    human = run_cli("stats", state_dir=cluster.state_dir).stdout
    h0 = next(ln for ln in human.splitlines() if ln.startswith("h0 "))
    h1 = next(ln for ln in human.splitlines() if ln.startswith("h1 "))
    assert " ns" not in h0 and " us" not in h0 and h0.split()[1] == "0" and "-" in h0.split()
    assert h1.split()[1] == "1" and "-" not in h1.split()[2:6]


# -- 12. help ------------------------------------------------------------------------------
def test_every_command_has_meaningful_help():
    for cmd in ([], ["up"], ["down"], ["status"], ["logs"], ["free"], ["stats"], ["calibrate"],
                ["topo"], ["topo", "show"], ["demo"]):
        p = run_cli(*cmd, "--help")
        assert p.stdout.startswith("usage: fabric") and len(p.stdout.splitlines()) > 4, cmd
        if cmd and cmd != ["topo"]:
            assert "--json" in p.stdout, cmd
