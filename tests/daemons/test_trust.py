"""Daemon-to-daemon messages carry the cluster's secret; a bad REGISTER changes nothing;
an interrupted `fabric up` leaves nothing `fabric down` cannot stop."""
from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest

from fabric import protocol
from fabric.errors import AccessDenied, InvalidArgument
from fabric.statedir import StateDir


def _node_states(cluster) -> dict:
    return {n["name"]: n for n in cluster.status()["nodes"]}


def test_secret_file_is_private(cluster):
    mode = os.stat(StateDir(cluster.state_dir).secret_file).st_mode
    assert stat.S_IMODE(mode) == 0o600 and len(StateDir(cluster.state_dir).read_secret()) == 64


@pytest.mark.parametrize("secret", [None, "", "0" * 64])
def test_a_client_cannot_scrub_live_data(cluster, secret):
    st = StateDir(cluster.state_dir)
    with cluster.connect("h0") as s:
        r = s.alloc("live", 1 << 20, placement="d1")      # d1 is homed on node h1
        r.write(np.full(1 << 18, 7, dtype=np.uint32))
        dev_off = s.translate(r.address)[1]
        body = {"extents": [["d1", dev_off, 1 << 20]]}
        if secret is not None:
            body["secret"] = secret
        with protocol.Client(st.node_endpoint("h1"), "h0", timeout_ms=2000) as c:
            with pytest.raises(AccessDenied, match="secret"):
                c.request("SCRUB", body)
        assert (r.read().view(np.uint32) == 7).all()       # not a byte zeroed


def test_forged_register_and_heartbeat_are_refused(cluster):
    st = StateDir(cluster.state_dir)
    before = _node_states(cluster)["h1"]
    forged = {"node": "h1", "pid": os.getpid(), "incarnation": 1, "endpoint": st.node_endpoint("h1"),
              "devices": [{"name": "d1", "capacity_bytes": 64 << 20, "fresh": True}]}
    with protocol.Client(st.manager_endpoint, "h1", timeout_ms=2000) as c:
        for secret in (None, "nope"):
            body = dict(forged, **({} if secret is None else {"secret": secret}))
            with pytest.raises(AccessDenied):
                c.request("REGISTER", body)
            with pytest.raises(AccessDenied):
                c.request("HEARTBEAT", {"node": "h1", "incarnation": before["incarnation"],
                                        **({} if secret is None else {"secret": secret})})
    after = _node_states(cluster)["h1"]
    assert (after["pid"], after["incarnation"], after["alive"]) == \
        (before["pid"], before["incarnation"], True)


@pytest.mark.parametrize("endpoint", ["tcp://nowhere:-1", "ipc:///tmp/not-the-node.sock", ""])
def test_register_with_a_bad_endpoint_changes_nothing(cluster, endpoint):
    st = StateDir(cluster.state_dir)
    before = _node_states(cluster)["h1"]
    # a newer incarnation than the real node's, so only the endpoint is wrong
    body = {"node": "h1", "pid": os.getpid(), "incarnation": protocol.new_incarnation(),
            "endpoint": endpoint,
            "devices": [{"name": "d1", "capacity_bytes": 64 << 20, "fresh": True}],
            "secret": st.read_secret()}
    with protocol.Client(st.manager_endpoint, "h1", timeout_ms=2000) as c:
        with pytest.raises(InvalidArgument, match="listen on|endpoint"):
            c.request("REGISTER", body)
    time.sleep(1.2)   # two heartbeats: the real node is still the one the manager knows
    after = _node_states(cluster)["h1"]
    assert (after["pid"], after["incarnation"], after["alive"]) == \
        (before["pid"], before["incarnation"], True)
    with cluster.connect("h0") as s:                       # and its device still serves
        s.alloc("after", 4096, placement="d1")


def test_killed_fabric_up_leaves_nothing_down_cannot_stop(state_dir):
    env = dict(os.environ, FABRIC_STATE_DIR=state_dir)
    up = subprocess.Popen([sys.executable, "-m", "fabric", "up", "--hosts", "8",
                           "--device-size", "16MiB"], env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and up.poll() is None:   # kill it as soon as a daemon exists
        if any(state_dir in (p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"])):
            break
        time.sleep(0.001)
    up.send_signal(signal.SIGKILL)
    up.wait(10)
    time.sleep(0.5)
    ours = [p for p in psutil.process_iter(["cmdline"])
            if state_dir in (p.info["cmdline"] or [])]
    assert ours, "fabric up was killed before it spawned anything; nothing to check"
    down = subprocess.run([sys.executable, "-m", "fabric", "down"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert down.returncode == 0, down.stderr
    gone, alive = psutil.wait_procs(ours, timeout=10)
    assert not alive, f"daemons fabric down could not see: {[p.pid for p in alive]}"


def test_a_session_cannot_act_as_another_host(cluster):
    with cluster.connect("h0") as s0, cluster.connect("h1") as s1:
        r = s0.alloc("h0-data", 1 << 20, share="shared")
        r.write(np.full(1 << 18, 9, dtype=np.uint32))
        # A buggy host process: its session said HELLO as h1, its requests claim h0.
        s1._client.sender = "h0"
        for call in (lambda: s1.free("h0-data"), lambda: s1.alloc("as-h0", 4096)):
            with pytest.raises(AccessDenied, match="session as 'h1'"):
                call()
        s1._client.sender = "h1"
        assert (r.read().view(np.uint32) == 9).all()
        assert "h0-data" in [d["name"] for d in s1.regions()]


def test_a_scrub_with_one_bad_extent_zeroes_nothing(cluster):
    """Every extent of a SCRUB is checked before any is zeroed."""
    st = StateDir(cluster.state_dir)
    with cluster.connect("h0") as s:
        r = s.alloc("live", 1 << 20, placement="d1")
        r.write(np.full(1 << 18, 7, dtype=np.uint32))
        dev_off = s.translate(r.address)[1]
        body = {"extents": [["d1", dev_off, 1 << 20], ["d1", 1 << 50, 4096]],
                "secret": st.read_secret()}
        with protocol.Client(st.node_endpoint("h1"), "h0", timeout_ms=2000) as c:
            with pytest.raises(InvalidArgument, match="outside device"):
                c.request("SCRUB", body)
            with pytest.raises(InvalidArgument, match="1..64 extents"):
                c.request("SCRUB", {"extents": [], "secret": st.read_secret()})
        assert (r.read().view(np.uint32) == 7).all()
