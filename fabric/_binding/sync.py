"""Wrappers for csrc/sync.c: atomics and futex waits on words of pooled memory.

:class:`SharedWords` wraps a block of mapped memory (a numpy view of a
region, which it keeps alive) as an array of 64-bit words, and as 32-bit
words at the same addresses for futexes (word32 2k is the low half of
word64 k on little-endian machines).  Pointers and output cells are made
once, so each operation is one bounds check and one C call.
"""
from __future__ import annotations

import errno
import sys

import numpy as np

from .. import errors
from . import check, ffi, lib

MAX_WAIT_NS = 60_000_000_000
_U64_MASK = (1 << 64) - 1

if sys.byteorder != "little":  # pragma: no cover - the futex halves assume little endian
    raise ImportError("fabric.sync needs a little-endian machine")


class SharedWords:
    """``nbytes // 8`` shared 64-bit words over a contiguous, 8-byte aligned array."""

    __slots__ = ("_keep", "n64", "_p64", "_p32", "_o64", "_o32")

    def __init__(self, array: np.ndarray):
        if not isinstance(array, np.ndarray) or not array.flags.c_contiguous:
            raise errors.InvalidArgument("shared words need a contiguous numpy array")
        addr = array.ctypes.data
        if addr % 8 or array.nbytes < 8:
            raise errors.InvalidArgument("shared words need >= 8 bytes at an 8-byte aligned address")
        self._keep = array                       # keeps the mapping alive
        self.n64 = array.nbytes // 8
        self._p64 = ffi.cast("uint64_t *", addr)
        self._p32 = ffi.cast("uint32_t *", addr)
        self._o64 = ffi.new("uint64_t *")
        self._o32 = ffi.new("uint32_t *")

    def _i64(self, i: int) -> int:
        if not 0 <= i < self.n64:
            raise errors.InvalidArgument(f"word {i} is outside the {self.n64} words")
        return i

    def _i32(self, i: int) -> int:
        if not 0 <= i < 2 * self.n64:
            raise errors.InvalidArgument(f"32-bit word {i} is outside the {2 * self.n64}")
        return i

    def load_u64(self, i: int) -> int:
        check(lib.fab_sync_load_u64(self._p64 + self._i64(i), self._o64), "atomic load")
        return int(self._o64[0])

    def store_u64(self, i: int, value: int) -> None:
        check(lib.fab_sync_store_u64(self._p64 + self._i64(i), value & _U64_MASK), "atomic store")

    def fetch_add_u64(self, i: int, delta: int) -> int:
        """Add ``delta`` (mod 2**64) atomically; return the value before."""
        check(lib.fab_sync_fetch_add_u64(self._p64 + self._i64(i), delta & _U64_MASK, self._o64),
              "atomic fetch-add")
        return int(self._o64[0])

    def fetch_max_u64(self, i: int, value: int) -> int:
        """Raise word ``i`` to ``value`` if it is smaller, atomically; return the value before."""
        check(lib.fab_sync_fetch_max_u64(self._p64 + self._i64(i), value & _U64_MASK, self._o64),
              "atomic fetch-max")
        return int(self._o64[0])

    def cas_u64(self, i: int, expected: int, desired: int) -> tuple[bool, int]:
        """Compare-and-swap; returns (swapped, value seen)."""
        rc = check(lib.fab_sync_cas_u64(self._p64 + self._i64(i), expected & _U64_MASK,
                                        desired & _U64_MASK, self._o64), "compare-exchange")
        return rc == 1, int(self._o64[0])

    def load_u32(self, i: int) -> int:
        check(lib.fab_sync_load_u32(self._p32 + self._i32(i), self._o32), "atomic load")
        return int(self._o32[0])

    def fetch_add_u32(self, i: int, delta: int) -> int:
        check(lib.fab_sync_fetch_add_u32(self._p32 + self._i32(i), delta & 0xFFFFFFFF, self._o32),
              "atomic fetch-add")
        return int(self._o32[0])

    def wait_u32(self, i: int, expected: int, timeout_ns: int) -> bool:
        """Sleep while 32-bit word ``i`` equals ``expected``, at most ``timeout_ns``.

        True when it returned early (the word changed, or a wake-up: re-check),
        False when the time ran out.
        """
        timeout_ns = max(0, min(int(timeout_ns), MAX_WAIT_NS))
        rc = lib.fab_sync_wait_u32(self._p32 + self._i32(i), expected & 0xFFFFFFFF, timeout_ns)
        if rc == -errno.ETIMEDOUT:
            return False
        check(rc, "futex wait")
        return True

    def wake_u32(self, i: int, nwaiters: int = 1 << 30) -> int:
        """Wake up to ``nwaiters`` processes sleeping on 32-bit word ``i``."""
        return check(lib.fab_sync_wake_u32(self._p32 + self._i32(i), nwaiters), "futex wake")
