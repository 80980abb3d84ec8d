"""Shared fixtures: real clusters in private state dirs, and leak checks.

Every test that starts daemons gets its own state dir under /dev/shm and tears
the cluster down even when it fails.  After each test we check that no daemon
of that state dir is running and no file of it remains.
"""
from __future__ import annotations

import os
import random
import shutil
import tempfile

import psutil
import pytest

import fabric


def _our_daemons(state_dir: str) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if state_dir in cmd and any(c.startswith("fabric.daemons.") for c in cmd):
            out.append(p)
    return out


@pytest.fixture
def state_dir():
    """A fresh state dir on /dev/shm; fails the test if anything of it is left behind."""
    path = tempfile.mkdtemp(prefix="cxl-fabric-test-", dir="/dev/shm")
    yield path
    leftovers = _our_daemons(path)
    for p in leftovers:
        p.kill()
    remaining = os.path.exists(path) and os.listdir(path)
    shutil.rmtree(path, ignore_errors=True)
    assert not leftovers, f"daemons left running: {[p.pid for p in leftovers]}"
    assert not remaining, f"files left in the state dir: {remaining}"


def _stop(cluster: fabric.Cluster) -> None:
    cluster.stop()


@pytest.fixture
def cluster(state_dir):
    """A 2-host, 2-device cluster with 64 MiB devices."""
    c = fabric.Cluster.start(hosts=2, devices=2, device_size="64MiB", state_dir=state_dir)
    try:
        yield c
    finally:
        _stop(c)


@pytest.fixture
def seed():
    """The test's random seed: $FABRIC_TEST_SEED or a fresh one, printed on failure."""
    s = int(os.environ.get("FABRIC_TEST_SEED", random.randrange(1 << 31)))
    print(f"FABRIC_TEST_SEED={s}")
    return s
