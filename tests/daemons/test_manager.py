"""The fabric manager over its socket, with real daemons: sessions (HELLO/BYE),
STATUS fields, FREE by the CLI, and bad ALLOC input."""
import glob
import os
import signal
import subprocess
import sys
import time

import pytest

import fabric
from fabric import protocol
from fabric.constants import DEFAULT_NODE_TIMEOUT_MS
from fabric.errors import AccessDenied, InvalidArgument, PoolFull, RegionNotFound
from fabric.statedir import StateDir

MiB = 1 << 20


def client(cluster, sender):
    return protocol.Client(StateDir(cluster.state_dir).manager_endpoint, sender)


def sessions(cluster):
    with client(cluster, "cli") as c:
        return c.request("STATUS")["sessions"]


def test_hello_opens_a_session_and_bye_ends_it(cluster):
    assert sessions(cluster) == {"h0": 0, "h1": 0}
    with client(cluster, "h0") as h0, client(cluster, "h1") as h1:
        a = h0.request("HELLO", {"host": "h0", "pid": os.getpid()})["session"]
        b = h0.request("HELLO", {"host": "h0", "pid": os.getpid()})["session"]
        c = h1.request("HELLO", {"host": "h1"})["session"]   # no pid: ends only with BYE
        assert len({a, b, c}) == 3
        assert sessions(cluster) == {"h0": 2, "h1": 1}
        assert h0.request("BYE", {"session": a}) == {}
        assert h0.request("BYE", {"session": a}) == {}        # twice: not an error
        assert h0.request("BYE", {"session": 987654}) == {}   # unknown: not an error
        assert sessions(cluster) == {"h0": 1, "h1": 1}
        assert h1.request("BYE", {"session": c}) == {} and h0.request("BYE", {"session": b}) == {}
        assert sessions(cluster) == {"h0": 0, "h1": 0}
        with pytest.raises(InvalidArgument, match="pid"):
            h0.request("HELLO", {"host": "h0", "pid": -3})
        with pytest.raises(InvalidArgument, match="session"):
            h0.request("BYE", {"session": "a"})
        with pytest.raises(InvalidArgument, match="unknown host"):
            h0.request("HELLO", {"host": "h9", "pid": os.getpid()})
        assert sessions(cluster) == {"h0": 0, "h1": 0}


def test_session_of_a_dead_process_is_pruned(cluster):
    """A client that dies without BYE stops counting: on STATUS and by the periodic check."""
    procs = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
             for _ in range(2)]
    try:
        with client(cluster, "h1") as h1:
            for p in procs:
                h1.request("HELLO", {"host": "h1", "pid": p.pid})
            assert sessions(cluster)["h1"] == 2
            procs[0].kill()
            procs[0].wait()
            assert sessions(cluster)["h1"] == 1           # pruned when STATUS asks
            procs[1].kill()
            procs[1].wait()
            deadline = time.monotonic() + 10               # and by the manager's timer
            while not _pruned_by_timer(cluster) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert _pruned_by_timer(cluster)
            assert sessions(cluster)["h1"] == 0
    finally:
        for p in procs:
            p.kill()
            p.wait()


def _pruned_by_timer(cluster) -> bool:
    """Both sessions noted as pruned in the manager's log (read from the file, as a
    STATUS would prune them itself)."""
    logs = glob.glob(f"{StateDir(cluster.state_dir).logs_dir}/manager.log")
    with open(logs[0]) as f:
        return f.read().count("ended: process gone") >= 2


def test_status_fields(cluster):
    with cluster.connect("h0") as s:
        s.alloc("a", 3 * MiB, placement="d1", share="shared")
        st = cluster.status()
    m = st["manager"]
    assert m["uptime_s"] >= 0 and abs(m["started_unix_s"] + m["uptime_s"] - time.time()) < 60
    assert {n["name"] for n in st["nodes"]} == {"h0", "h1"}
    assert all(n["last_beat_age_s"] is not None and n["last_beat_age_s"] < 5 for n in st["nodes"])
    devs = {d["name"]: d for d in st["devices"]}
    for d in devs.values():
        assert d["used_bytes"] + d["free_bytes"] + d["scrubbing_bytes"] == d["capacity_bytes"]
    assert devs["d1"]["used_bytes"] == 3 * MiB and devs["d0"]["used_bytes"] == 0
    (r,) = st["regions"]
    assert r["name"] == "a" and r["created"] > 0 and r["owner"] == "h0" and "access" not in r
    assert set(st["sessions"]) == {"h0", "h1"}


def test_free_by_the_cli(cluster):
    with cluster.connect("h0") as s:
        for name in ("x", "y", "z"):
            s.alloc(name, 4096, share="shared")
    with client(cluster, "h1") as h1, client(cluster, "cli") as cli:
        with pytest.raises(AccessDenied, match="owner 'h0'"):
            h1.request("FREE", {"name": "x"})
        with pytest.raises(AccessDenied):                  # force is for the CLI only
            h1.request("FREE", {"name": "x", "force": True})
        with pytest.raises(AccessDenied):                  # as_host is for the CLI only
            h1.request("FREE", {"name": "x", "as_host": "h0"})
        with pytest.raises(AccessDenied, match="--force"):
            cli.request("FREE", {"name": "x"})
        with pytest.raises(AccessDenied):
            cli.request("FREE", {"name": "x", "as_host": "h1"})
        assert cli.request("FREE", {"name": "x", "as_host": "h0"}) == {}
        assert cli.request("FREE", {"name": "y", "force": True}) == {}
        with pytest.raises(RegionNotFound):
            cli.request("FREE", {"name": "y", "force": True})
        with pytest.raises(InvalidArgument, match="force"):
            cli.request("FREE", {"name": "z", "force": "yes"})
        names = [r["name"] for r in cli.request("LIST")["regions"]]
    assert names == ["z"]


@pytest.mark.parametrize("body, fragment", [
    ({"placement": "interleave", "devices": [["d0"]]}, "device names"),
    ({"placement": "interleave", "devices": [{"d": 0}]}, "device names"),
    ({"placement": "interleave", "devices": "d0"}, "wrong type"),
    ({"nbytes": (1 << 64) - 1}, "whole pool"),
    ({"nbytes": -(1 << 63)}, "nbytes"),
    ({"nbytes": 0}, "nbytes"),
    ({"placement": "interleave", "granularity": (1 << 64) - 4096}, "largest device"),
    ({"placement": "interleave", "granularity": -4096}, "granularity"),
    ({"share": "shared", "allow": "h1"}, "allow must be a list"),
    ({"share": "shared", "allow": [1]}, "allow entry"),
    ({"share": "shared", "allow": {"h1": "x"}}, "allow entry"),
    ({"share": "shared", "allow": ["h7"]}, "unknown host"),
    ({"share": "private", "allow": ["h1"]}, "private"),
    ({"share": "open"}, "share must be"),
    ({"name": "a/b"}, "region name"),
])
def test_bad_alloc_is_invalid_argument(cluster, body, fragment):
    req = {"name": "bad", "nbytes": 4096, **body}
    with client(cluster, "h0") as h0:
        with pytest.raises(InvalidArgument, match=fragment):
            h0.request("ALLOC", req)
        assert h0.request("LIST") == {"regions": []}
        assert h0.request("ALLOC", {"name": "good", "nbytes": 4096})["name"] == "good"


def test_large_granularity_is_clamped_to_the_region(cluster):
    with client(cluster, "h0") as h0:
        r = h0.request("ALLOC", {"name": "small", "nbytes": 5000, "placement": "interleave",
                                 "granularity": 32 * MiB})
        assert (r["stripe_bytes"], r["nstripes"], r["mapped_bytes"]) == (8192, 1, 8192)
        assert r["devices"] == ["d0"] and r["access"] == "rw"
    used = {d["name"]: d["used_bytes"] for d in cluster.status()["devices"]}
    assert used == {"d0": 8192, "d1": 0}


def test_alloc_waits_for_a_scrub_and_is_answered_later(cluster):
    """A deferred ALLOC keeps its request context and gets its reply once the scrub lands."""
    import signal
    import threading
    node_pid = cluster.info["pids"]["h1"]
    with client(cluster, "h0") as h0:
        h0.request("ALLOC", {"name": "old", "nbytes": 64 * MiB, "placement": "d1"})
        os.kill(node_pid, signal.SIGSTOP)            # d1's node cannot scrub for now
        try:
            h0.request("FREE", {"name": "old"})
            scrubbing = {d["name"]: d["scrubbing_bytes"] for d in cluster.status()["devices"]}
            assert scrubbing["d1"] == 64 * MiB
            threading.Timer(0.5, os.kill, (node_pid, signal.SIGCONT)).start()
            t0 = time.monotonic()
            r = h0.request("ALLOC", {"name": "new", "nbytes": 64 * MiB, "placement": "d1"},
                           timeout_ms=8000)
        finally:
            os.kill(node_pid, signal.SIGCONT)
        assert time.monotonic() - t0 >= 0.4          # it really waited for the node
        assert r["name"] == "new" and r["offsets"] == [0] and r["access"] == "rw"
        # a deferred ALLOC that cannot be served in time is POOL_FULL, not silence
        h0.request("FREE", {"name": "new"})
        os.kill(node_pid, signal.SIGSTOP)
        try:
            with pytest.raises(PoolFull, match="scrubbed"):
                h0.request("ALLOC", {"name": "late", "nbytes": 64 * MiB, "placement": "d1"},
                           timeout_ms=1500)
        finally:
            os.kill(node_pid, signal.SIGCONT)


def test_node_timeout_is_configurable_and_detects_a_silent_node(state_dir):
    assert DEFAULT_NODE_TIMEOUT_MS <= 1000
    with pytest.raises(InvalidArgument, match="node timeout"):
        fabric.Cluster.start(hosts=1, device_size="16MiB", state_dir=state_dir, node_timeout_ms=50)
    c = fabric.Cluster.start(hosts=2, device_size="16MiB", state_dir=state_dir, node_timeout_ms=400)

    def alive() -> bool:
        return {n["name"]: n["alive"] for n in c.status()["nodes"]}["h1"]

    try:
        st = c.status()
        assert st["manager"]["node_timeout_ms"] == 400
        pid = {n["name"]: n["pid"] for n in st["nodes"]}["h1"]
        os.kill(pid, signal.SIGSTOP)
        t0 = time.monotonic()
        try:
            while alive():
                assert time.monotonic() - t0 < 15, "a paused node was never marked unavailable"
                time.sleep(0.02)
        finally:
            os.kill(pid, signal.SIGCONT)
        while not alive():
            assert time.monotonic() - t0 < 30, "a resumed node never came back"
            time.sleep(0.02)
    finally:
        c.stop()
