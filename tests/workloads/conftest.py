"""Helpers for workload tests: processes of ours that must not outlive a test."""
from __future__ import annotations

import os
import uuid

import psutil
import pytest

#: Set to a fresh value during a test: every worker it starts inherits it, so a
#: test finds its own workers, not those of other test runs on the machine.
TAG_VAR = "FABRIC_TEST_WORKER_TAG"


def worker_processes(tag: str | None = None) -> list[psutil.Process]:
    """Running training workers (those started under ``tag``, if given)."""
    out = []
    for p in psutil.process_iter(["cmdline"]):
        if "fabric.workloads.worker" not in (p.info["cmdline"] or []):
            continue
        if tag is not None:
            try:
                if p.environ().get(TAG_VAR) != tag:
                    continue
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        out.append(p)
    return out


@pytest.fixture
def no_stray_workers(monkeypatch):
    """Fails the test if a training worker it started is still running after it.
    Its value lists those workers (callable), for checks inside the test."""
    tag = uuid.uuid4().hex
    monkeypatch.setenv(TAG_VAR, tag)
    yield lambda: worker_processes(tag)
    stray = worker_processes(tag)
    for p in stray:
        p.kill()
    assert not stray, f"workers left running: {[p.pid for p in stray]}"
