"""A pytest fixture for fault tests, registered as a pytest plugin by the package.

    def test_survives_a_node_crash(fabric_faults, tmp_cluster):
        faults = fabric_faults(tmp_cluster.state_dir)
        faults.inject("kill", "h1")
        ...                       # the workload must get a clear error or survive
        # every fault still active is healed when the test ends, pass or fail

``fabric_faults(state_dir)`` returns a :class:`FaultInjector` bound to that
cluster; the fixture heals what its injectors left active at teardown (before
the cluster fixture stops the cluster).
"""
from __future__ import annotations

import pytest

from ..errors import FabricError
from . import faults, heal, inject


class FaultInjector:
    """Inject and heal faults in one cluster (see :func:`fabric.faults.inject`)."""

    def __init__(self, state_dir: str):
        self.state_dir = state_dir

    def inject(self, kind: str, target: str, *, at_s: float = 0.0,
               for_s: float | None = None, params: dict | None = None,
               **options) -> str | None:
        """The fault's options as ``params`` or as keywords (``factor=4`` for
        link-degrade, ``p=0.2`` for drop, ...; docs/faults.md)."""
        merged = {**(params or {}), **options}
        return inject(kind, target, state_dir=self.state_dir, at_s=at_s, for_s=for_s, by="pytest",
                      params=merged or None)

    def heal(self, fault_id: str | None = None) -> dict:
        return heal(self.state_dir, fault_id, by="pytest")

    def active(self) -> dict:
        return faults(self.state_dir)["active"]


@pytest.fixture
def fabric_faults():
    made: list[FaultInjector] = []

    def make(state_dir: str) -> FaultInjector:
        inj = FaultInjector(state_dir)
        made.append(inj)
        return inj

    yield make
    for inj in made:
        try:
            inj.heal()
        except FabricError:
            pass  # the cluster is already gone
