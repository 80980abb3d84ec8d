"""Synchronisation between host processes through pooled memory.

A :class:`Barrier` and a :class:`Counter` live in a few words of a coherent
region that every participant maps (``share="coherent"``; ``policy="direct"``
is the natural choice: atomics go to the device).  They use real C atomics
on the shared mapping (csrc/sync.c) and sleep on a shared futex instead of
spinning, and every word they touch is declared to the engine with
:meth:`Region.access`, so a barrier costs what the modelled fabric charges
for its atomics (one read-modify-write to arrive, one read to leave).

    r = s.alloc("sync", 4096, share="coherent", policy="direct")   # host h0
    b = fabric.sync.Barrier(r, parties=4, rank=0)                   # everyone
    b.wait()                                                        # SyncTimeout on deadline

Every wait has a deadline and raises :class:`fabric.errors.SyncTimeout`
when it passes -- or earlier, when a participant is known dead (its pid,
registered at construction, is gone) or some participant called
:meth:`Barrier.abort`.  A crashed worker therefore never leaves the others
waiting forever.  A declared access to a device out of reach (its node down,
a link cut, the device failed) is retried until the barrier's timeout (a
Counter's: 30 s) before its NodeUnavailable or DeviceFailed stands.

Lockstep (a session made with ``lockstep_ns``; docs/cost-model.md, "Time
bases"): a host waiting at a barrier is parked, so it does not hold the other
hosts back, and the barrier releases every participant at the virtual time of
the latest arrival (each arrival raises a "max arrival clock" word; the last
one releases all parked participants at that clock before it wakes them).  A
barrier between all members of a lockstep group is therefore reproducible.
"""
from __future__ import annotations

import os
import time
from typing import Iterable

import numpy as np
import psutil

from ._binding.sync import SharedWords
from ._waiting import access_waiting
from .errors import InvalidArgument, SyncTimeout

DEFAULT_TIMEOUT_MS = 30_000
#: How long one sleep lasts before the waiter re-checks deadline and peers.
CHECK_INTERVAL_MS = 50

# u64 word indices in a barrier block: arrivals, generation, who aborted, the latest
# arrival's virtual clock (lockstep), the clock of the last release, then one pid
# per rank and one lockstep host (index + 1, 0: none) per rank.
_COUNT, _GEN, _ABORT, _MAXCLK, _RELCLK, _PIDS = 0, 1, 2, 3, 4, 5


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class Barrier:
    """A reusable barrier for ``parties`` processes over a block of a coherent region.

    ``offset`` (8-byte aligned) is where the block starts; it needs
    :meth:`block_bytes` bytes, zero at first use (fresh regions are).  Each
    participant passes its own ``rank`` (0..parties-1); its pid is recorded
    there so the others notice if it dies.  ``watch_pids`` are further
    processes whose death aborts a wait (e.g. a coordinating parent).
    """

    def __init__(self, region, parties: int, rank: int, *, offset: int = 0,
                 timeout_ms: int = DEFAULT_TIMEOUT_MS, watch_pids: Iterable[int] = (),
                 charge: bool = True):
        if isinstance(parties, bool) or not isinstance(parties, int) or parties < 1:
            raise InvalidArgument(f"parties must be a positive int, got {parties!r}")
        if not isinstance(rank, int) or not 0 <= rank < parties:
            raise InvalidArgument(f"rank must be in 0..{parties - 1}, got {rank!r}")
        if offset % 8:
            raise InvalidArgument(f"offset {offset} is not 8-byte aligned")
        _check_timeout(timeout_ms)
        self.region, self.parties, self.rank, self.offset = region, parties, rank, offset
        self.timeout_ms = timeout_ms
        self._charge = charge
        self._w = SharedWords(region.ndarray(np.uint8, self.block_bytes(parties), offset))
        self._gen32 = 2 * _GEN          # the low half of word _GEN (little endian)
        self._watch = [int(p) for p in watch_pids]
        self.charged_ns = 0
        self._w.store_u64(_PIDS + rank, os.getpid())
        session = getattr(region, "_session", None)
        self._engine = session._lockstep_engine() if session is not None else None
        self._w.store_u64(self._host_word(rank),
                          self._engine.host_index + 1 if self._engine is not None else 0)
        self._access(_PIDS + rank, True)

    @staticmethod
    def block_bytes(parties: int) -> int:
        """Bytes a barrier for ``parties`` needs (a multiple of 64)."""
        return -(-8 * (_PIDS + 2 * parties) // 64) * 64

    def _host_word(self, rank: int) -> int:
        return _PIDS + self.parties + rank

    def _access(self, word: int, write: bool) -> None:
        if self._charge:  # waits for a device out of reach, up to the barrier's timeout
            self.charged_ns += access_waiting(self.region, self.offset + 8 * word, 8, write,
                                              self.timeout_ms)

    def wait(self, timeout_ms: int | None = None) -> int:
        """Block until all parties have called ``wait``; return the new generation.

        Raises SyncTimeout after ``timeout_ms`` (default: the barrier's), or as
        soon as a participant is dead or the barrier was aborted.
        """
        timeout_ms = self.timeout_ms if timeout_ms is None else _check_timeout(timeout_ms)
        deadline = time.monotonic() + timeout_ms / 1000
        self._raise_if_aborted()
        gen = self._w.load_u32(self._gen32)
        self._access(_COUNT, True)                       # the arrival: one atomic RMW
        eng = self._engine
        if eng is not None:                              # lockstep: wait parked
            self._w.fetch_max_u64(_MAXCLK, eng.virtual_time_ns)
            eng.park()
        try:
            return self._arrive(gen, deadline, timeout_ms)
        finally:
            if eng is not None:
                eng.unpark()          # released: at the latest arrival's clock

    def _arrive(self, gen: int, deadline: float, timeout_ms: int) -> int:
        if self._w.fetch_add_u64(_COUNT, 1) + 1 == self.parties:
            if self._engine is not None:
                latest = self._w.load_u64(_MAXCLK)
                self._w.store_u64(_RELCLK, latest)
                self._w.store_u64(_MAXCLK, 0)
                hosts = [h - 1 for h in (self._w.load_u64(self._host_word(r))
                                         for r in range(self.parties)) if h]
                self._engine.lockstep_release(hosts, latest)
            self._w.store_u64(_COUNT, 0)
            self._w.fetch_add_u32(self._gen32, 1)
            self._w.wake_u32(self._gen32)
        else:
            self._wait_release(gen, deadline, timeout_ms)
        if self._engine is not None:
            self._engine.unpark()     # before the release read: at the latest arrival's clock
        # The release: one read, by every participant (the last arrival too, so what
        # each pays does not depend on which of them came last in real time).
        self._access(_GEN, False)
        return (gen + 1) & 0xFFFFFFFF

    def _wait_release(self, gen: int, deadline: float, timeout_ms: int) -> None:
        while self._w.load_u32(self._gen32) == gen:
            left_s = deadline - time.monotonic()
            if left_s <= 0:
                raise SyncTimeout(f"barrier wait timed out after {timeout_ms} ms "
                                  f"(rank {self.rank} of {self.parties}; "
                                  f"{self._w.load_u64(_COUNT)} arrived)")
            slice_ns = int(min(left_s * 1000, CHECK_INTERVAL_MS) * 1e6)
            woken = self._w.wait_u32(self._gen32, gen, slice_ns)
            self._raise_if_aborted()
            if not woken:
                self._raise_if_peer_dead()

    def abort(self) -> None:
        """Make every current and future wait on this barrier raise SyncTimeout."""
        self._w.cas_u64(_ABORT, 0, self.rank + 1)
        self._w.wake_u32(self._gen32)

    @property
    def aborted(self) -> bool:
        return self._w.load_u64(_ABORT) != 0

    def _raise_if_aborted(self) -> None:
        who = self._w.load_u64(_ABORT)
        if who:
            raise SyncTimeout(f"barrier aborted by rank {who - 1}")

    def _raise_if_peer_dead(self) -> None:
        for r in range(self.parties):
            pid = self._w.load_u64(_PIDS + r)
            if pid and r != self.rank and not pid_alive(pid):
                raise SyncTimeout(f"barrier participant rank {r} (pid {pid}) died")
        for pid in self._watch:
            if not pid_alive(pid):
                raise SyncTimeout(f"watched process {pid} died while waiting at a barrier")


class Counter:
    """An atomic 64-bit counter at ``offset`` (8-byte aligned) of a coherent region."""

    def __init__(self, region, offset: int = 0, *, charge: bool = True):
        if offset % 8:
            raise InvalidArgument(f"offset {offset} is not 8-byte aligned")
        self.region, self.offset, self._charge = region, offset, charge
        self._w = SharedWords(region.ndarray(np.uint8, 8, offset))
        self.charged_ns = 0

    def _access(self, write: bool) -> None:
        if self._charge:  # waits for a device out of reach, up to the default deadline
            self.charged_ns += access_waiting(self.region, self.offset, 8, write,
                                              DEFAULT_TIMEOUT_MS)

    def add(self, delta: int = 1) -> int:
        """Add ``delta`` atomically; return the new value (mod 2**64)."""
        self._access(True)
        return (self._w.fetch_add_u64(0, delta) + delta) & ((1 << 64) - 1)

    def load(self) -> int:
        self._access(False)
        return self._w.load_u64(0)

    def compare_exchange(self, expected: int, desired: int) -> tuple[bool, int]:
        """Set to ``desired`` if it is ``expected``; return (swapped, value seen)."""
        self._access(True)
        return self._w.cas_u64(0, expected, desired)


def _check_timeout(timeout_ms) -> int:
    if isinstance(timeout_ms, bool) or not isinstance(timeout_ms, int) or timeout_ms <= 0:
        raise InvalidArgument(f"timeout_ms must be a positive int, got {timeout_ms!r}")
    return timeout_ms


__all__ = ["Barrier", "Counter", "SyncTimeout", "DEFAULT_TIMEOUT_MS"]
