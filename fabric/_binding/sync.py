"""Wrappers for csrc/sync.c: atomics and futex waits on words of pooled memory.

Words are named by a numpy array (a view of a mapped region, which keeps the
mapping alive) and an index; the wrappers check dtype, bounds and alignment
before crossing into C.
"""
from __future__ import annotations

import errno

import numpy as np

from .. import errors
from . import check, ffi, lib

MAX_WAIT_NS = 60_000_000_000


def _ptr(words: np.ndarray, index: int, dtype, ctype: str):
    if not isinstance(words, np.ndarray) or words.dtype != dtype or words.ndim != 1:
        raise errors.InvalidArgument(f"expected a 1-d {np.dtype(dtype)} array of shared words")
    if not 0 <= index < words.shape[0]:
        raise errors.InvalidArgument(f"word {index} is outside the {words.shape[0]} words")
    if not words.flags.c_contiguous:
        raise errors.InvalidArgument("the word array must be contiguous")
    return ffi.cast(ctype, words.ctypes.data) + index


def load_u64(words: np.ndarray, index: int) -> int:
    out = ffi.new("uint64_t *")
    check(lib.fab_sync_load_u64(_ptr(words, index, np.uint64, "uint64_t *"), out), "atomic load")
    return int(out[0])


def store_u64(words: np.ndarray, index: int, value: int) -> None:
    check(lib.fab_sync_store_u64(_ptr(words, index, np.uint64, "uint64_t *"), value),
          "atomic store")


def fetch_add_u64(words: np.ndarray, index: int, delta: int) -> int:
    """Add ``delta`` (mod 2**64) atomically; return the value before."""
    out = ffi.new("uint64_t *")
    check(lib.fab_sync_fetch_add_u64(_ptr(words, index, np.uint64, "uint64_t *"),
                                     delta & ((1 << 64) - 1), out), "atomic fetch-add")
    return int(out[0])


def cas_u64(words: np.ndarray, index: int, expected: int, desired: int) -> tuple[bool, int]:
    """Compare-and-swap; returns (swapped, value seen)."""
    out = ffi.new("uint64_t *")
    rc = check(lib.fab_sync_cas_u64(_ptr(words, index, np.uint64, "uint64_t *"),
                                    expected, desired, out), "atomic compare-exchange")
    return rc == 1, int(out[0])


def load_u32(words: np.ndarray, index: int) -> int:
    out = ffi.new("uint32_t *")
    check(lib.fab_sync_load_u32(_ptr(words, index, np.uint32, "uint32_t *"), out), "atomic load")
    return int(out[0])


def fetch_add_u32(words: np.ndarray, index: int, delta: int) -> int:
    out = ffi.new("uint32_t *")
    check(lib.fab_sync_fetch_add_u32(_ptr(words, index, np.uint32, "uint32_t *"),
                                     delta & 0xFFFFFFFF, out), "atomic fetch-add")
    return int(out[0])


def wait_u32(words: np.ndarray, index: int, expected: int, timeout_ns: int) -> bool:
    """Sleep while the word equals ``expected``, at most ``timeout_ns``.

    True when it returned early (the word changed, or a wake-up: re-check),
    False when the time ran out.
    """
    timeout_ns = max(0, min(int(timeout_ns), MAX_WAIT_NS))
    rc = lib.fab_sync_wait_u32(_ptr(words, index, np.uint32, "uint32_t *"), expected, timeout_ns)
    if rc == -errno.ETIMEDOUT:
        return False
    check(rc, "futex wait")
    return True


def wake_u32(words: np.ndarray, index: int, nwaiters: int = 1 << 30) -> int:
    """Wake up to ``nwaiters`` processes sleeping on the word; how many woke."""
    return check(lib.fab_sync_wake_u32(_ptr(words, index, np.uint32, "uint32_t *"), nwaiters),
                 "futex wake")
