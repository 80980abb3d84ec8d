"""Resource limits: daemons raise their descriptor limit, and the manager refuses new
sessions with a typed error before it runs out instead of dying."""
from __future__ import annotations

import os
import resource
import subprocess
import sys
import time

import psutil
import pytest

import fabric
from fabric import protocol
from fabric.errors import ResourceExhausted
from fabric.statedir import StateDir


def _up(state_dir: str, soft: int, hard: int) -> None:
    def limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    env = dict(os.environ, FABRIC_STATE_DIR=state_dir)
    p = subprocess.run([sys.executable, "-m", "fabric", "up", "--hosts", "2", "--device-size",
                        "16MiB"], env=env, capture_output=True, text=True, timeout=60,
                       preexec_fn=limit)
    assert p.returncode == 0, p.stderr


def _down(state_dir: str) -> None:
    subprocess.run([sys.executable, "-m", "fabric", "down"], capture_output=True, timeout=60,
                   env=dict(os.environ, FABRIC_STATE_DIR=state_dir))


def test_daemons_raise_their_soft_limit_to_the_hard_one(state_dir):
    _up(state_dir, 64, 2048)
    try:
        pids = StateDir(state_dir).read()["pids"]
        for name, pid in pids.items():
            assert psutil.Process(pid).rlimit(psutil.RLIMIT_NOFILE) == (2048, 2048), name
    finally:
        _down(state_dir)


def test_manager_refuses_sessions_before_running_out(state_dir):
    _up(state_dir, 160, 160)
    sessions = []
    try:
        with pytest.raises(ResourceExhausted, match="file descriptors"):
            for _ in range(300):
                sessions.append(fabric.connect("h0", state_dir, timeout_ms=5000))
        assert 10 <= len(sessions) < 160
        with protocol.Client(StateDir(state_dir).manager_endpoint, "cli") as c:
            assert c.request("STATUS")["sessions"]["h0"] == len(sessions)   # alive, serving
        for s in sessions:
            s.close()
        sessions.clear()
        deadline = time.monotonic() + 10
        while True:                                  # room again once clients disconnect
            try:
                fabric.connect("h1", state_dir).close()
                break
            except ResourceExhausted:
                assert time.monotonic() < deadline, "sessions still refused after closing all"
                time.sleep(0.1)
    finally:
        for s in sessions:
            s.close()
        _down(state_dir)
