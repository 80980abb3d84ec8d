"""The manager's side of device fault state: devices of a dead node are unavailable.

The engine segment (csrc/seg.c "Faults") holds a state word per device that
every host's access path reads.  The manager writes it for liveness: when it
declares a node dead (missed heartbeats) every device the node homes becomes
``unavailable`` (declared accesses raise NodeUnavailable), and when the node
registers again (``fabric fault restart``) or answers again they are ``up``.
A device ``failed`` by fault injection (``fabric fault device-fail``) is left
alone: only ``fabric fault device-restore`` (or ``heal``) brings it back, and
then the next sync corrects it to ``unavailable`` if its node is still down.
"""
from __future__ import annotations

import logging

from fabric.errors import FabricError
from fabric.statedir import StateDir
from fabric.topology import Topology


class DeviceStates:
    """Writes the state word of each device from its node's liveness."""

    def __init__(self, state: StateDir, topology: Topology, log: logging.Logger):
        self.log = log
        self.index = {d.name: i for i, d in enumerate(topology.devices)}
        self._failed: set[str] = set()           # the devices failed as of _failed_gen,
        self._failed_gen: int | None = None      # the segment's fault generation
        self.seg = None
        try:
            from fabric._binding.engine import Segment
            self.seg = Segment(state.engine_segment, topology.engine_params(), writable=True)
        except FabricError as exc:     # no segment (an old state dir): nothing to keep in step
            log.warning("device states are not kept: %s", exc)

    def state(self, device: str) -> str:
        """"up" | "unavailable" | "failed", as the engine segment holds it."""
        if self.seg is None:
            return "up"
        try:
            return self.seg.device_state(self.index[device])
        except FabricError:
            return "up"

    def failed(self, device: str) -> bool:
        """Whether fault injection has failed the device (``device-fail``).  Read
        again only when the segment's fault generation moved (placement asks this
        for every device of every allocation)."""
        if self.seg is None:
            return False
        try:
            gen = self.seg.fault_gen()
            if gen != self._failed_gen:
                self._failed = {name for name, i in self.index.items()
                                if self.seg.device_state(i) == "failed"}
                self._failed_gen = gen
        except FabricError:
            return False
        return device in self._failed

    def sync(self, node: str, alive: bool, devices: list[str]) -> None:
        """Make the node's devices ``up`` (alive) or ``unavailable``, unless failed."""
        if self.seg is None:
            return
        want = "up" if alive else "unavailable"
        for name in devices:
            i = self.index[name]
            try:
                cur = self.seg.device_state(i)
                if cur != "failed" and cur != want:
                    self.seg.set_device_state(i, want)
                    self.log.info("device %s of node %s is %s", name, node, want)
            except FabricError as exc:   # never let the fault state kill the manager
                self.log.warning("device %s: cannot set its state: %s", name, exc)
