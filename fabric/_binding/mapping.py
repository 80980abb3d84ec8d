"""Wrappers for csrc/map.c: stitching device stripes into one virtual range."""
from __future__ import annotations

from . import check, ffi, lib


class Mapping:
    """One contiguous virtual range stitched from device stripes.

    The range stays mapped while this object, or any buffer or numpy array
    made from :meth:`buffer`, is alive: buffers hold a reference to the
    owning cdata, whose destructor unmaps.
    """

    __slots__ = ("nbytes", "_ptr", "__weakref__")

    def __init__(self, fds: list[int], dev_offsets: list[int], stripe_bytes: int,
                 nstripes: int, writable: bool, populate: bool = True):
        out = ffi.new("void **")
        rc = lib.fab_map_stripes(ffi.new("int[]", fds), len(fds),
                                 ffi.new("uint64_t[]", dev_offsets), stripe_bytes,
                                 nstripes, int(writable), int(populate), out)
        check(rc, "mapping device memory")
        self.nbytes = stripe_bytes * nstripes
        length = self.nbytes
        self._ptr = ffi.gc(ffi.cast("char *", out[0]),
                           lambda p: lib.fab_unmap(p, length), size=length)

    @property
    def address(self) -> int:
        """The virtual address of the first byte (for tests and diagnostics)."""
        return int(ffi.cast("uintptr_t", self._ptr))

    def buffer(self):
        """A writable-or-not buffer over the whole range; keeps the mapping alive."""
        return ffi.buffer(self._ptr, self.nbytes)


def scrub(fd: int, offset: int, nbytes: int) -> None:
    """Zero a device extent in place, keeping its pages reserved."""
    check(lib.fab_dev_scrub(fd, offset, nbytes), "scrubbing device extent")
