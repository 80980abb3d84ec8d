"""Where an ALLOC's bytes go: plan the stripes, then take extents on devices.

:meth:`Placer.plan` turns a request (size, placement, devices, granularity)
into a :class:`Plan` -- candidate devices in order of preference, stripe size
and stripe count -- checking every argument; it takes nothing.
:meth:`Placer.place` then takes one extent per device from the per-device
first-fit allocators (:mod:`fabric.daemons.alloc`), all or nothing.

Rules:

- ``local``: one extent, on the device of the asking host's node with the most
  free bytes, else on the emptiest other device.
- ``interleave``: ``nstripes = ceil(nbytes / granularity)`` stripes dealt
  round-robin over ``devices`` (default: all, in topology order); stripe ``i``
  lives on ``devices[i % k]``.  The granularity is a multiple of the page size
  and at most the largest device; a granularity larger than the region is
  clamped to the region's size rounded up to the page (one stripe), so a small
  region never takes a whole large stripe.  At most ``MAX_STRIPES`` stripes and
  ``MAX_REGION_DEVICES`` devices.
- a device name: one extent on that device.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from fabric.constants import DEFAULT_GRANULARITY_BYTES, MAX_REGION_DEVICES, MAX_STRIPES, PLACEMENTS
from fabric.daemons.alloc import ExtentAllocator
from fabric.errors import InvalidArgument, NodeUnavailable, PoolFull
from fabric.topology import Topology


@dataclass(frozen=True)
class Plan:
    """What a region needs: candidate devices, stripe size, stripe count, placement kind."""

    devices: tuple[str, ...]     # interleave: exactly the devices used; else candidates in order
    stripe_bytes: int
    nstripes: int
    placement: str               # "local" | "interleave" | "device"

    def extent_sizes(self, k: int) -> list[int]:
        """Bytes of the extent on each of ``k`` devices."""
        return [((self.nstripes - i + k - 1) // k) * self.stripe_bytes for i in range(k)]


def _round_up(n: int, unit: int) -> int:
    return -(-n // unit) * unit


class Placer:
    """Plans and places regions over ``allocs`` (device -> ExtentAllocator).

    ``is_alive(device)`` says whether the device's home node is alive; a
    region is never placed on a device whose node is not.
    """

    def __init__(self, topology: Topology, allocs: dict[str, ExtentAllocator], page_size: int,
                 is_alive: Callable[[str], bool],
                 why_down: Callable[[str], str] | None = None):
        self.topology = topology
        self.why_down = why_down
        self.allocs = allocs
        self.page_size = page_size
        self.is_alive = is_alive
        self.largest_device_bytes = max((d.capacity_bytes for d in topology.devices), default=0)
        #: host -> (its own devices, every other device): "local" placement's candidates
        #: (the topology does not change while the manager runs)
        self._local: dict[str, tuple[list[str], list[str]]] = {}

    def plan(self, nbytes: int, host: str, placement: str, devices: list | None,
             granularity: int | None) -> Plan:
        """Check a request and plan it (InvalidArgument for anything wrong); takes nothing."""
        page = self.page_size
        if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes <= 0:
            raise InvalidArgument(f"nbytes must be a positive int, got {nbytes!r}")
        if nbytes > self.topology.capacity_bytes:
            raise InvalidArgument(f"{nbytes} bytes is larger than the whole pool "
                                  f"({self.topology.capacity_bytes} bytes)")
        if not isinstance(placement, str):
            raise InvalidArgument(f"placement must be one of {', '.join(PLACEMENTS)} "
                                  f"or a device name")
        size = _round_up(nbytes, page)
        if placement == "interleave":
            names = self._device_list(devices)
            g = DEFAULT_GRANULARITY_BYTES if granularity is None else granularity
            if isinstance(g, bool) or not isinstance(g, int) or g < page or g % page:
                raise InvalidArgument(f"granularity must be a multiple of the {page}-byte page "
                                      f"size, got {g!r}")
            if g > self.largest_device_bytes:
                raise InvalidArgument(f"granularity {g} is larger than the largest device "
                                      f"({self.largest_device_bytes} bytes)")
            g = min(g, size)  # one stripe of the region's size, not a whole larger stripe
            nstripes = -(-nbytes // g)
            if nstripes > MAX_STRIPES:
                raise InvalidArgument(
                    f"{nstripes} stripes of {g} bytes is more than {MAX_STRIPES}; "
                    f"use a granularity of at least {_round_up(-(-nbytes // MAX_STRIPES), page)}")
            return Plan(tuple(names[:nstripes]), g, nstripes, "interleave")
        if devices is not None or granularity is not None:
            raise InvalidArgument("devices= and granularity= go with placement='interleave'")
        if placement == "local":
            if host not in self._local:
                self.topology.host(host)    # InvalidArgument naming the known hosts
                self._local[host] = (
                    [d.name for d in self.topology.devices_of(host)],  # its node is its name
                    [d.name for d in self.topology.devices if d.home != host])
            local, rest = self._local[host]
            key = lambda d: -self.allocs[d].free_bytes  # noqa: E731
            return Plan(tuple(sorted(local, key=key) + sorted(rest, key=key)), size, 1, "local")
        self.topology.device(placement)  # InvalidArgument naming the known devices
        return Plan((placement,), size, 1, "device")

    def _device_list(self, devices: list | None) -> list[str]:
        if devices is None:
            return [d.name for d in self.topology.devices]
        if not isinstance(devices, (list, tuple)):
            raise InvalidArgument("devices must be a list of device names")
        for d in devices:
            if not isinstance(d, str):
                raise InvalidArgument(f"device names are strings, got {d!r}")
        if not devices or len(set(devices)) != len(devices):
            raise InvalidArgument("interleave needs a list of distinct devices")
        if len(devices) > MAX_REGION_DEVICES:
            raise InvalidArgument(f"a region spans at most {MAX_REGION_DEVICES} devices, "
                                  f"got {len(devices)}")
        for d in devices:
            self.topology.device(d)
        return list(devices)

    def require_alive(self, devices) -> None:
        """NodeUnavailable naming the first device whose home node is not alive."""
        for dev in devices:
            if not self.is_alive(dev):
                if self.why_down is not None:
                    raise NodeUnavailable(self.why_down(dev))
                node = self.topology.device(dev).home
                raise NodeUnavailable(f"device {dev} is homed on node {node}, which is not alive")

    def place(self, plan: Plan) -> tuple[list[str], list[int]]:
        """Take the extents of ``plan``: (devices used, offset on each).  All or nothing:
        PoolFull (nothing taken) when they do not fit, NodeUnavailable when a
        device it needs is on a dead node."""
        if plan.placement != "interleave":  # one extent: the first candidate with room
            n = plan.stripe_bytes
            # the first live device with room (no pass over every device per allocation)
            devices = next(([d] for d in plan.devices
                            if self.allocs[d].can_take(n) and self.is_alive(d)), None)
            if devices is None:
                candidates = [d for d in plan.devices if self.allocs[d].can_take(n)]
                if not candidates:
                    raise PoolFull(self.full_message(n, plan.devices))
                self.require_alive(candidates)     # raises NodeUnavailable for the first
        else:
            self.require_alive(plan.devices)
            devices = list(plan.devices)
        sizes = plan.extent_sizes(len(devices))
        offsets: list[int] = []
        for dev, n in zip(devices, sizes):
            off = self.allocs[dev].take(n)
            if off is None:
                for d2, o2, n2 in zip(devices, offsets, sizes):
                    self.allocs[d2].give(o2, n2)
                raise PoolFull(self.full_message(n, [dev]))
            offsets.append(off)
        return devices, offsets

    def give_back(self, plan: Plan, devices: list[str], offsets: list[int]) -> None:
        """Return extents :meth:`place` took (an allocation that failed later)."""
        for dev, off, n in zip(devices, offsets, plan.extent_sizes(len(devices))):
            self.allocs[dev].give(off, n)

    def place_mirror(self, plan: Plan, primary: list[str]) -> tuple[list[str], list[int]]:
        """Take the extents of a region's second copy (``mirror=2``): one per device of
        the first copy, the same sizes, on distinct live devices homed on nodes other
        than every node homing the first copy (so no one node or device failure takes
        both), the emptiest first.  All or nothing; PoolFull naming what is missing."""
        homes = {self.topology.device(d).home for d in primary}
        sizes = plan.extent_sizes(len(primary))
        others = [d.name for d in self.topology.devices
                  if d.home not in homes and self.is_alive(d.name)]
        others.sort(key=lambda d: -self.allocs[d].free_bytes)
        chosen: list[str] = []
        for n in sizes:
            dev = next((d for d in others if d not in chosen and self.allocs[d].can_take(n)), None)
            if dev is None:
                left = (", ".join(f"{d}: {self.allocs[d].largest_free()} B free"
                                  for d in others) or "no live device there")
                raise PoolFull(f"mirror=2 needs {len(sizes)} live device(s) with room for "
                               f"{n} bytes on nodes other than "
                               f"{', '.join(sorted(homes))} (the first copy's): {left}")
            chosen.append(dev)
        offsets: list[int] = []
        for dev, n in zip(chosen, sizes):
            off = self.allocs[dev].take(n)
            if off is None:                       # can_take said yes: never, but stay whole
                for d2, o2, n2 in zip(chosen, offsets, sizes):
                    self.allocs[d2].give(o2, n2)
                raise PoolFull(self.full_message(n, [dev]))
            offsets.append(off)
        return chosen, offsets

    def full_message(self, nbytes: int, devices) -> str:
        free = ", ".join(f"{d}: {self.allocs[d].largest_free()}" for d in devices)
        return f"no room for {nbytes} contiguous bytes (largest free extent per device: {free})"
