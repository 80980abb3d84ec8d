"""Extent allocation on one device: first fit over a sorted free list.

A device of ``capacity`` bytes starts as one free extent.  ``take(n)`` carves
the lowest-addressed extent that fits; ``give(off, n)`` returns an extent and
merges it with its neighbours, so the free list stays sorted, disjoint and
coalesced (the invariant ``check()`` asserts in tests).
"""
from __future__ import annotations

import bisect


class ExtentAllocator:
    def __init__(self, capacity_bytes: int, align_bytes: int):
        assert capacity_bytes % align_bytes == 0
        self.capacity_bytes = capacity_bytes
        self.align_bytes = align_bytes
        self._starts: list[int] = [0]       # free extent starts, sorted
        self._lens: list[int] = [capacity_bytes]
        self.free_bytes = capacity_bytes

    def largest_free(self) -> int:
        return max(self._lens, default=0)

    def can_take(self, nbytes: int) -> bool:
        return any(n >= nbytes for n in self._lens)

    def take(self, nbytes: int) -> int | None:
        """Offset of a new extent of ``nbytes`` (aligned), or None if none fits."""
        assert nbytes > 0 and nbytes % self.align_bytes == 0
        for i, n in enumerate(self._lens):
            if n >= nbytes:
                off = self._starts[i]
                if n == nbytes:
                    del self._starts[i], self._lens[i]
                else:
                    self._starts[i] += nbytes
                    self._lens[i] -= nbytes
                self.free_bytes -= nbytes
                return off
        return None

    def take_all(self) -> list[tuple[int, int]]:
        """Take every free extent at once; returns them as (offset, nbytes)."""
        out = list(zip(self._starts, self._lens))
        self._starts, self._lens, self.free_bytes = [], [], 0
        return out

    def reserve(self, off: int, nbytes: int) -> None:
        """Take the extent [off, off + nbytes) (a recovered region's or scrub's);
        ValueError if any of it is not free."""
        i = bisect.bisect_right(self._starts, off) - 1
        if i < 0 or off + nbytes > self._starts[i] + self._lens[i] or nbytes <= 0:
            raise ValueError(f"extent {off}+{nbytes} is not free")
        start, n = self._starts[i], self._lens[i]
        del self._starts[i], self._lens[i]
        tail = start + n - (off + nbytes)
        if tail:
            self._starts.insert(i, off + nbytes)
            self._lens.insert(i, tail)
        if off > start:
            self._starts.insert(i, start)
            self._lens.insert(i, off - start)
        self.free_bytes -= nbytes

    def give(self, off: int, nbytes: int) -> None:
        i = bisect.bisect_left(self._starts, off)
        if i > 0:
            assert self._starts[i - 1] + self._lens[i - 1] <= off, "double free"
        if i < len(self._starts):
            assert off + nbytes <= self._starts[i], "double free"
        self._starts.insert(i, off)
        self._lens.insert(i, nbytes)
        self.free_bytes += nbytes
        if i + 1 < len(self._starts) and off + nbytes == self._starts[i + 1]:
            self._lens[i] += self._lens.pop(i + 1)
            self._starts.pop(i + 1)
        if i > 0 and self._starts[i - 1] + self._lens[i - 1] == off:
            self._lens[i - 1] += self._lens.pop(i)
            self._starts.pop(i)

    def check(self) -> None:
        end = -1
        for s, n in zip(self._starts, self._lens):
            assert n > 0 and s > end, "free list not sorted, disjoint and coalesced"
            end = s + n
        assert end <= self.capacity_bytes
        assert sum(self._lens) == self.free_bytes
