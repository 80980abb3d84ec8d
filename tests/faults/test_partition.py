"""Partitions against real daemons: who cannot reach whom, what clients see, and the heal."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fabric
from fabric.daemons.netfault import RULES_FILE
from fabric.errors import FabricTimeout, NodeUnavailable
from fault_waits import node, wait_until

SHORT_MS = 800


def test_isolated_host_is_unavailable_its_clients_time_out_and_heal_rejoins(
        cluster, fabric_faults):
    f = fabric_faults(cluster.state_dir)
    before = node(cluster, "h1")
    with cluster.connect("h0") as s0, cluster.connect("h1", timeout_ms=SHORT_MS) as s1:
        r1 = s1.alloc("on-h1", 64 << 10, placement="d1", share="shared", allow=["h0"])
        r1.write(np.full(16 << 10, 3, dtype=np.uint32))
        fid = f.inject("partition", "h1")                   # h1 against everyone else
        wait_until(lambda: not node(cluster, "h1")["alive"], "cut-off h1 marked unavailable")
        with pytest.raises(FabricTimeout):                  # h1's clients reach no manager
            s1.regions()
        with pytest.raises(NodeUnavailable):                # its devices are unavailable
            s0.open("on-h1")
        assert s0.alloc("elsewhere", 4096, placement="d0").nbytes == 4096   # h0 unaffected
        with pytest.raises(NodeUnavailable):                # declared accesses wait for it
            r1.write(np.full(16 << 10, 4, dtype=np.uint32))
        view = r1.ndarray(np.uint32, 16 << 10)              # mapped memory keeps its bytes
        view[:] = 4
        assert (view == 4).all()
        assert f.heal() == {fid: "remove"}
        wait_until(lambda: node(cluster, "h1")["alive"], "h1 back after the heal")
        after = node(cluster, "h1")
        assert (after["pid"], after["incarnation"]) == (before["pid"], before["incarnation"])
        assert (s0.open("on-h1").read().view(np.uint32) == 4).all()
        assert [r["name"] for r in s1.regions()] == ["on-h1"]   # its clients work again
    assert not os.path.exists(os.path.join(cluster.state_dir, RULES_FILE))


def test_partition_from_the_cli_groups_and_list(cluster):
    sd = cluster.state_dir
    run = lambda *a: subprocess.run([sys.executable, "-m", "fabric", *a, "--state-dir", sd],  # noqa: E731
                                    capture_output=True, text=True, timeout=60)
    r = run("fault", "partition", "h0/h1,manager")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "f1: partition h0/h1,manager"
    listing = json.loads(run("fault", "list", "--json").stdout)
    assert listing["active"]["f1"]["params"]["groups"] == [["h0"], ["h1", "manager"]]
    wait_until(lambda: not node(cluster, "h0")["alive"], "h0 cut off from the manager")
    assert node(cluster, "h1")["alive"]
    with cluster.connect("h1") as s1:
        s1.alloc("fine", 4096, placement="d1", share="shared", allow=["h0"])   # other side works
    with pytest.raises(FabricTimeout):                       # h0's clients cannot even HELLO
        fabric.connect("h0", sd, timeout_ms=SHORT_MS)
    assert "partition" in run("fault", "list").stdout
    r = run("fault", "heal")
    assert r.returncode == 0 and "remove" in r.stdout
    wait_until(lambda: node(cluster, "h0")["alive"], "h0 back after the heal")
    with cluster.connect("h0") as s0:
        assert s0.open("fine").nbytes == 4096
