"""Mirrored regions (``alloc(..., mirror=2)``): two copies, failover, resynchronisation.

The manager places the second copy on devices homed on other nodes than the
first's (descriptor ``mirror_devices`` / ``mirror_offsets``, same stripes).
Each session registers both copies with its engine: the first under the
region's id, the second under ``id | MIRROR_ID_BIT``.  Then, for the declared
accesses of a :class:`~fabric.Region`:

- a **write** is charged to and lands in both copies; if one copy's device is
  unreachable (unavailable, failed, behind a cut link) it lands in the other
  only, and that copy is marked *stale* for every host;
- a **read** is charged to and served from the first copy, and fails over to
  the second when the first's device is unreachable or the first is stale
  (``stats()["mirror"]["failovers"]`` counts it);
- **resync**: once both copies are reachable again, the next declared access
  of any host that finds a copy stale copies the healthy copy over it (not
  charged) and clears the mark.

Shared state: one 64-bit word per region in ``<state dir>/versions/<id>.mirror``
(made on first use, removed when the region is freed):

    bit 0  the first copy is stale        bit 2  a resync is running (its lock)
    bit 1  the second copy is stale       bits 3..63  a write generation

and a second word with the pid of the resync lock's holder: a lock whose
holder has died is taken back by the next access that finds it.

A write that finds a copy stale bumps the generation after it writes, and a
resync clears the stale bit only with a compare-and-swap of the word it read
before copying, so a write that raced the copy makes the resync start over
(at most ``RESYNC_ATTEMPTS`` times per access; a later access retries): no
write made during a resync is lost.  Plain ndarray views (``Region.ndarray``,
``buffer``, and views written through ``writing``/``access`` before the
declared write) see the first copy only; the declared write copies the range
to the second.
"""
from __future__ import annotations

import mmap
import os
from typing import TYPE_CHECKING

import numpy as np

from ._binding.mapping import Mapping
from ._binding.sync import SharedWords
from .errors import DeviceFailed, FabricError, NodeUnavailable
from .sync import pid_alive

if TYPE_CHECKING:  # pragma: no cover
    from .region import Region

#: The engine region id of a mirrored region's second copy (manager ids stay below it).
MIRROR_ID_BIT = 1 << 31
PRIMARY_STALE, MIRROR_STALE, RESYNC_LOCK, GEN_ONE = 1, 2, 4, 8
RESYNC_ATTEMPTS = 3
#: A resync copies this many bytes at a time.
RESYNC_CHUNK_BYTES = 1 << 20
#: The errors that make a copy unreachable (LinkDown is a NodeUnavailable).
UNREACHABLE = (NodeUnavailable, DeviceFailed)


def _state_words(path: str) -> SharedWords:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        if os.fstat(fd).st_size < mmap.PAGESIZE:
            os.ftruncate(fd, mmap.PAGESIZE)
        m = mmap.mmap(fd, mmap.PAGESIZE)
    finally:
        os.close(fd)
    return SharedWords(np.frombuffer(m, dtype=np.uint64, count=2))


class MirrorCopies:
    """The two copies of one mirrored region, for one Region handle."""

    def __init__(self, region: "Region", state_path: str, charge, stats: dict):
        self.r = region
        self.rid2 = region.id | MIRROR_ID_BIT
        self.charge = charge                 # the engine's access(region_id, off, n, write)
        self.stats = stats                   # the session's {"failovers", "resyncs", ...}
        self.words = _state_words(state_path)
        self._mapping: Mapping | None = None
        self._bytes: np.ndarray | None = None

    # -- the second copy's bytes ------------------------------------------------
    def second_bytes(self) -> np.ndarray:
        if self._bytes is None:
            d = self.r.descriptor
            flags = os.O_RDWR if self.r.writable else os.O_RDONLY
            fds: list[int] = []
            try:
                for dev in d.mirror_devices:
                    fds.append(os.open(self.r._device_path(dev), flags | os.O_NOFOLLOW))
                self._mapping = Mapping(fds, list(d.mirror_offsets), d.stripe_bytes,
                                        d.nstripes, self.r.writable)
            except OSError as exc:
                if isinstance(exc, FabricError):
                    raise
                raise FabricError(f"cannot map the second copy of region {self.r.name!r}: "
                                  f"{exc}") from None
            finally:
                for fd in fds:
                    os.close(fd)
            self._bytes = np.frombuffer(self._mapping.buffer(), dtype=np.uint8,
                                        count=self.r.nbytes)
        return self._bytes

    def copy_bytes(self, which: int) -> np.ndarray:
        return self.r._byte_view() if which == 0 else self.second_bytes()

    # -- declared accesses -----------------------------------------------------
    def read(self, offset: int, nbytes: int) -> tuple[int, int]:
        """Charge a read; (copy that serves it: 0 first, 1 second, charged ns)."""
        w = self._settle()
        if not w & PRIMARY_STALE:
            try:
                return 0, self.charge(self.r.id, offset, nbytes, False)
            except UNREACHABLE:
                if w & MIRROR_STALE:
                    raise
            ns = self.charge(self.rid2, offset, nbytes, False)
            self.stats["failovers"] += 1
            return 1, ns
        ns = self.charge(self.rid2, offset, nbytes, False)   # the first copy is stale
        self.stats["stale_reads"] += 1
        return 1, ns

    def write(self, offset: int, nbytes: int, src: np.ndarray | None) -> int:
        """Charge a write to both copies and put ``src`` (None: the range as the first
        copy's views hold it) into each reachable one; returns the larger charge."""
        w = self._settle()
        got, errs = [], []
        for which, rid in ((0, self.r.id), (1, self.rid2)):
            try:
                got.append((which, self.charge(rid, offset, nbytes, True)))
            except UNREACHABLE as exc:
                errs.append(exc)
        stale_if_alone = {0: MIRROR_STALE, 1: PRIMARY_STALE}
        if not got or (len(got) == 1 and w & (PRIMARY_STALE if got[0][0] == 0 else MIRROR_STALE)):
            raise errs[0] if errs else NodeUnavailable(
                f"region {self.r.name!r}: the only reachable copy is stale")
        from_first = src is None                # the bytes are already in the first copy
        if from_first:
            src = np.array(self.r._byte_view()[offset:offset + nbytes])
        for which, _ns in got:
            if not (which == 0 and from_first):
                self.copy_bytes(which)[offset:offset + nbytes] = src
        if len(got) == 1:
            self.stats["degraded_writes"] += 1
            self._mark(stale_if_alone[got[0][0]])
        elif w & (PRIMARY_STALE | MIRROR_STALE):
            self._mark(0)                       # a resync may be copying: make it start over
        return max(ns for _w, ns in got)

    # -- shared state ------------------------------------------------------------
    def _mark(self, bits: int) -> None:
        """Set ``bits`` and bump the write generation, atomically."""
        w = self.words.load_u64(0)
        for _ in range(1000):
            ok, w = self.words.cas_u64(0, w, (w | bits) + GEN_ONE)
            if ok:
                return

    def _settle(self) -> int:
        """The state word, after a resync if a copy is stale and both are reachable now."""
        w = self.words.load_u64(0)
        if not w & (PRIMARY_STALE | MIRROR_STALE):
            return w
        if w & RESYNC_LOCK:
            holder = self.words.load_u64(1)
            if holder and holder != os.getpid() and not pid_alive(holder):
                self.words.cas_u64(0, w, w & ~RESYNC_LOCK)     # its holder died: take it back
            return self.words.load_u64(0)
        if not self._reachable():
            return w
        ok, w = self.words.cas_u64(0, w, w | RESYNC_LOCK)
        if not ok:
            return w
        self.words.store_u64(1, os.getpid())
        w |= RESYNC_LOCK
        try:
            for _ in range(RESYNC_ATTEMPTS):
                src, dst = (1, 0) if w & PRIMARY_STALE else (0, 1)
                a, b = self.copy_bytes(src), self.copy_bytes(dst)
                for off in range(0, self.r.nbytes, RESYNC_CHUNK_BYTES):
                    b[off:off + RESYNC_CHUNK_BYTES] = a[off:off + RESYNC_CHUNK_BYTES]
                done = (w & ~(PRIMARY_STALE | MIRROR_STALE | RESYNC_LOCK)) + GEN_ONE
                ok, seen = self.words.cas_u64(0, w, done)
                if ok:
                    self.stats["resyncs"] += 1
                    return done
                w = seen                      # a write raced the copy: again
        except BaseException:
            self._unlock()
            raise
        self._unlock()
        return self.words.load_u64(0)

    def _unlock(self) -> None:
        w = self.words.load_u64(0)
        for _ in range(1000):
            ok, w = self.words.cas_u64(0, w, w & ~RESYNC_LOCK)
            if ok:
                return

    def _reachable(self) -> bool:
        """Both copies reachable from this host (device states and links, no charge)."""
        return self.r._session._reachable(self.r.devices) and \
            self.r._session._reachable(list(self.r.descriptor.mirror_devices))

    def state(self) -> dict:
        w = self.words.load_u64(0)
        return {"first_stale": bool(w & PRIMARY_STALE), "second_stale": bool(w & MIRROR_STALE),
                "resyncing": bool(w & RESYNC_LOCK), "generation": w >> 3}
