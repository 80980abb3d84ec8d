"""Helpers for workload tests: processes of ours that must not outlive a test."""
from __future__ import annotations

import psutil
import pytest


def worker_processes() -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if "fabric.workloads.worker" in cmd:
            out.append(p)
    return out


@pytest.fixture
def no_stray_workers():
    """Fails the test if a training worker started during it is still running."""
    before = {p.pid for p in worker_processes()}
    yield
    stray = [p for p in worker_processes() if p.pid not in before]
    for p in stray:
        p.kill()
    assert not stray, f"workers left running: {[p.pid for p in stray]}"
