"""The region directory: every region, the by-address index, ids and addresses.

The :class:`Directory` owns all the manager knows about regions, and every
change goes through two methods -- :meth:`Directory.create` and
:meth:`Directory.remove` -- which hand a record of it to ``journal`` (the
manager's :class:`~.journal.Journal` append) *before* changing anything, so a
change the journal refused (fenced, disk full) is not made.
:meth:`Directory.load` rebuilds the directory from a recovered journal.  Regions are stored as
:class:`fabric.descriptor.RegionDescriptor` (immutable), the same type the
client rebuilds from the wire.

Global addresses come from a bump pointer: the first region starts at
``GAS_BASE``, every region starts on a ``GAS_ALIGN`` boundary and is followed
by a ``GAS_ALIGN`` guard gap, and an address is never handed out twice (a
stale address can never alias a newer region).  Region ids count up from 1
and are never reused either.
"""
from __future__ import annotations

import bisect
import time
from typing import Callable, Iterator

from fabric.descriptor import RegionDescriptor
from fabric.errors import RegionExists, RegionNotFound

#: First global address handed out (1 TiB: far from 0, easy to spot in dumps).
GAS_BASE = 1 << 40
#: Regions start on 2 MiB boundaries, with a 2 MiB guard gap between them.
GAS_ALIGN = 2 << 20


class Directory:
    """Name -> RegionDescriptor, with an address index and the id/address counters."""

    def __init__(self, gas_base: int = GAS_BASE, gas_align: int = GAS_ALIGN,
                 journal: Callable[[dict], None] | None = None):
        self._regions: dict[str, RegionDescriptor] = {}
        self._by_address: list[tuple[int, str]] = []   # (address, name), sorted
        self._align = gas_align
        self.next_address = gas_base
        self.next_id = 1
        #: Called with a record of every change before it is made (None: not journaled).
        self.journal = journal

    def load(self, regions: list[RegionDescriptor], next_id: int,
             next_address: int | None) -> None:
        """Rebuild from a recovered journal: these regions and counters (nothing journaled)."""
        self._regions = {r.name: r for r in regions}
        self._by_address = sorted((r.address, r.name) for r in regions)
        self.next_id = max(next_id, self.next_id)
        if next_address is not None:
            self.next_address = max(next_address, self.next_address)

    # -- queries ---------------------------------------------------------------
    def __contains__(self, name: object) -> bool:
        return name in self._regions

    def __len__(self) -> int:
        return len(self._regions)

    def __iter__(self) -> Iterator[RegionDescriptor]:
        """Regions in creation order."""
        return iter(list(self._regions.values()))

    def get(self, name: str) -> RegionDescriptor | None:
        return self._regions.get(name)

    def require(self, name: str) -> RegionDescriptor:
        """The region ``name``; RegionNotFound if there is none."""
        r = self._regions.get(name)
        if r is None:
            raise RegionNotFound(f"no region named {name!r}")
        return r

    def at_address(self, address: int) -> tuple[RegionDescriptor, int] | None:
        """(region, offset in region) of a global address, or None if no region covers it."""
        i = bisect.bisect_right(self._by_address, (address, "\U0010ffff")) - 1
        if i >= 0:
            r = self._regions[self._by_address[i][1]]
            off = address - r.address
            if 0 <= off < r.nbytes:
                return r, off
        return None

    def translate(self, address: int) -> tuple[RegionDescriptor, int, str, int]:
        """(region, region offset, device, device offset) of a global address;
        RegionNotFound when no region covers it."""
        hit = self.at_address(address)
        if hit is None:
            raise RegionNotFound(f"no region at global address {address:#x}")
        r, off = hit
        stripe, within = divmod(off, r.stripe_bytes)
        k = len(r.devices)
        dev_off = r.offsets[stripe % k] + (stripe // k) * r.stripe_bytes + within
        return r, off, r.devices[stripe % k], dev_off

    # -- mutations (the only ones) -----------------------------------------------------
    def create(self, *, name: str, nbytes: int, share: str, owner: str, allow: dict | None,
               placement: str, devices: list[str], offsets: list[int], stripe_bytes: int,
               nstripes: int, created: float | None = None,
               mirror_devices: list[str] | tuple = (),
               mirror_offsets: list[int] | tuple = (),
               key: tuple | None = None) -> RegionDescriptor:
        """Record a new region (its extents already taken); gives it an id and an address.
        ``key`` is the idempotency key of the ALLOC that made it (journaled with it)."""
        if name in self._regions:
            raise RegionExists(f"region {name!r} already exists "
                               f"(owner {self._regions[name].owner})")
        r = RegionDescriptor(
            id=self.next_id, name=name, address=self.next_address, nbytes=nbytes, share=share,
            owner=owner, allow=dict(allow) if allow is not None else None, placement=placement,
            devices=tuple(devices), offsets=tuple(offsets), stripe_bytes=stripe_bytes,
            nstripes=nstripes, created=time.time() if created is None else created,
            mirror_devices=tuple(mirror_devices), mirror_offsets=tuple(mirror_offsets))
        a = self._align
        next_address = self.next_address + -(-r.mapped_bytes // a) * a + a
        if self.journal is not None:
            self.journal({"op": "create", "r": r.to_wire(), "next_id": self.next_id + 1,
                          "next_address": next_address,
                          "key": list(key) if key is not None else None})
        self.next_id += 1
        self.next_address = next_address
        self._regions[name] = r
        bisect.insort(self._by_address, (r.address, name))
        return r

    def remove(self, name: str, key: tuple | None = None,
               scrubs: list | None = None) -> RegionDescriptor:
        """Drop region ``name`` and return it (its extents are the caller's to scrub);
        RegionNotFound if there is none.  ``key``: the FREE's idempotency key;
        ``scrubs``: the ``[node, device, offset, nbytes]`` of its extents, journaled in
        the same record, so no crash can recover the region gone but its memory not
        waiting for a scrub."""
        r = self.require(name)
        if self.journal is not None:
            rec = {"op": "remove", "name": name, "key": list(key) if key is not None else None}
            if scrubs:
                rec["scrubs"] = scrubs
            self.journal(rec)
        del self._regions[name]
        i = bisect.bisect_left(self._by_address, (r.address, name))
        if i < len(self._by_address) and self._by_address[i] == (r.address, name):
            self._by_address.pop(i)
        return r

    def check(self) -> None:
        """Assert the invariants (tests): index matches the map, regions do not overlap."""
        assert sorted((r.address, r.name) for r in self._regions.values()) == self._by_address
        end = -1
        for addr, name in self._by_address:
            assert addr > end, "regions overlap in the global address space"
            end = addr + self._regions[name].mapped_bytes - 1
        assert end < self.next_address
        assert all(r.id < self.next_id for r in self._regions.values())
