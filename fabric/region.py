"""Regions: named ranges of pooled memory, seen as numpy arrays with no copy.

A :class:`Region` is what :meth:`Session.alloc` and :meth:`Session.open`
return.  Its bytes live in device files; the first call that needs them maps
the region's stripes into one contiguous virtual range (MAP_FIXED per
stripe, MAP_POPULATE so no access pays a first-touch fault), and every
ndarray is a view of that range.  Two hosts that open the same region map the
same device pages: what one writes, the other reads.

Declared accesses are what the engine charges (docs/cost-model.md):
:meth:`Region.read`, :meth:`Region.write`, :meth:`Region.access` and the
scoped views :meth:`Region.reading` / :meth:`Region.writing`.  A plain
:meth:`Region.ndarray` is free: use it for data you touch without declaring.
"""
from __future__ import annotations

import contextlib
import math
import os
import weakref
from typing import Any, Iterator

import numpy as np

from ._binding.mapping import Mapping
from .errors import AccessDenied, FabricError, InvalidArgument


class Region:
    """A pooled memory region, as seen by one host.

    Attributes: ``name``, ``address`` (global base address), ``nbytes``,
    ``share`` ("private" | "shared" | "coherent"), ``owner``, ``devices``
    (the devices it spans, in stripe order), ``stripe_bytes``, ``writable``
    (for this host).
    """

    def __init__(self, session, desc: dict):
        self._session = weakref.proxy(session)
        self._charge = session._engine.access  # (region_id, offset, nbytes, write) -> ns
        self._desc = desc
        self.name: str = desc["name"]
        self.id: int = desc["id"]
        self.address: int = desc["address"]
        self.nbytes: int = desc["nbytes"]
        self.share: str = desc["share"]
        self.owner: str = desc["owner"]
        self.placement: str = desc["placement"]
        self.devices: list[str] = list(desc["devices"])
        self.stripe_bytes: int = desc["stripe_bytes"]
        self.writable: bool = desc.get("access") == "rw"
        self._mapping: Mapping | None = None
        self._buffer: Any = None
        self._bytes: np.ndarray | None = None     # the whole region as uint8
        self._closed = False

    def __repr__(self) -> str:
        return (f"<Region {self.name!r} {self.nbytes} B at {self.address:#x} on "
                f"{','.join(self.devices)} share={self.share} "
                f"{'rw' if self.writable else 'ro'}>")

    @property
    def info(self) -> dict:
        """The manager's descriptor of this region (placement, offsets, ...)."""
        return dict(self._desc)

    # -- mapping ------------------------------------------------------------
    def _map(self) -> Any:
        if self._closed:
            raise InvalidArgument(f"region {self.name!r} is closed")
        if self._buffer is None:
            paths = [self._session._device_path(d) for d in self.devices]
            flags = os.O_RDWR if self.writable else os.O_RDONLY
            fds: list[int] = []
            try:
                for p in paths:
                    fds.append(os.open(p, flags))
                self._mapping = Mapping(fds, list(self._desc["offsets"]), self.stripe_bytes,
                                        self._desc["nstripes"], self.writable)
            except FileNotFoundError as exc:
                raise FabricError(f"device file {exc.filename} is gone "
                                  f"(was the cluster stopped?)") from None
            finally:
                for fd in fds:
                    os.close(fd)
            buf = memoryview(self._mapping.buffer())
            self._buffer = buf if self.writable else buf.toreadonly()
        return self._buffer

    def buffer(self) -> memoryview:
        """A memoryview of the whole region (read-only unless writable).

        The mapping lives as long as any view or array made from it.
        """
        return self._map()[: self.nbytes]

    def ndarray(self, dtype, shape, offset: int = 0) -> np.ndarray:
        """A numpy array of ``dtype`` and ``shape`` viewing the region at ``offset``.

        No copy: it is a view of device memory, writable unless the region is
        read-only for this host.  It stays valid (keeps the mapping alive) as
        long as it exists, even after :meth:`close`; after the region is freed
        it reads zeroes or the next owner's data, like any use-after-free.
        """
        try:
            dt = np.dtype(dtype)
        except TypeError as exc:
            raise InvalidArgument(f"not a numpy dtype: {dtype!r} ({exc})") from None
        if dt.hasobject:
            raise InvalidArgument(f"dtype {dt} holds Python objects; pooled memory holds plain data")
        if isinstance(shape, (int, np.integer)):
            shape = (int(shape),)
        try:
            shape = tuple(int(s) for s in shape)
        except (TypeError, ValueError):
            raise InvalidArgument(f"shape must be an int or a tuple of ints, got {shape!r}") from None
        if any(s < 0 for s in shape):
            raise InvalidArgument(f"shape {shape} has a negative dimension")
        if not isinstance(offset, (int, np.integer)) or isinstance(offset, bool) or offset < 0:
            raise InvalidArgument(f"offset must be a non-negative int, got {offset!r}")
        offset = int(offset)
        count = math.prod(shape)  # Python ints: no overflow for absurd shapes
        need = count * dt.itemsize
        if offset % max(dt.alignment, 1):
            raise InvalidArgument(f"offset {offset} is not aligned to {dt.alignment} bytes for {dt}")
        if offset + need > self.nbytes:
            raise InvalidArgument(f"{shape} of {dt} at offset {offset} needs {offset + need} "
                                  f"bytes; region {self.name!r} has {self.nbytes}")
        arr = np.frombuffer(self._map(), dtype=dt, count=count, offset=offset)
        return arr.reshape(shape)

    # -- declared (charged) accesses --------------------------------------------
    def _range(self, offset: int, nbytes: int | None) -> tuple[int, int]:
        if nbytes is None:
            nbytes = self.nbytes - offset if isinstance(offset, int) else 0
        if (type(offset) is not int and not isinstance(offset, np.integer)) or \
                (type(nbytes) is not int and not isinstance(nbytes, np.integer)):
            raise InvalidArgument(f"offset and nbytes must be ints, got {offset!r}, {nbytes!r}")
        if offset < 0 or nbytes < 0 or offset + nbytes > self.nbytes:
            raise InvalidArgument(f"range [{offset}, {offset + nbytes}) is outside region "
                                  f"{self.name!r} of {self.nbytes} bytes")
        return int(offset), int(nbytes)

    def _byte_view(self) -> np.ndarray:
        if self._bytes is None or self._closed:
            self._bytes = np.frombuffer(self._map(), dtype=np.uint8, count=self.nbytes)
        return self._bytes

    def access(self, offset: int = 0, nbytes: int | None = None, write: bool = False) -> int:
        """Declare an access to ``[offset, offset + nbytes)`` and return the charged ns.

        For workloads that touch memory through their own views: the engine
        charges (and in spin mode waits) what the modelled fabric would cost.
        """
        offset, nbytes = self._range(offset, nbytes)
        if write:
            self.require_writable()
        return self._charge(self.id, offset, nbytes, write)

    def read(self, offset: int = 0, nbytes: int | None = None) -> np.ndarray:
        """A read-only uint8 view of ``[offset, offset + nbytes)``, charged as a read.

        Zero copy: the view aliases device memory and lives as long as it is
        referenced.  ``nbytes`` defaults to the rest of the region.
        """
        offset, nbytes = self._range(offset, nbytes)
        view = self._byte_view()[offset:offset + nbytes]
        self._charge(self.id, offset, nbytes, False)
        if view.flags.writeable:
            view.flags.writeable = False
        return view

    def write(self, data, offset: int = 0) -> int:
        """Copy ``data`` (bytes-like or ndarray) into the region at ``offset``,
        charged as a write; returns the number of bytes written."""
        self.require_writable()
        try:
            src = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(f"cannot write {type(data).__name__}: {exc}") from None
        offset, nbytes = self._range(offset, src.nbytes)
        self._byte_view()[offset:offset + nbytes] = src
        self._charge(self.id, offset, nbytes, True)
        return nbytes

    @contextlib.contextmanager
    def reading(self, dtype, shape, offset: int = 0) -> Iterator[np.ndarray]:
        """``with region.reading(dtype, shape) as a:`` a read-only view, charged at entry."""
        a = self.ndarray(dtype, shape, offset)
        a.flags.writeable = False
        self._charge(self.id, offset, a.nbytes, False)
        yield a

    @contextlib.contextmanager
    def writing(self, dtype, shape, offset: int = 0) -> Iterator[np.ndarray]:
        """``with region.writing(dtype, shape) as a:`` a writable view, charged as a
        write at exit (marking its pages dirty and publishing new versions)."""
        self.require_writable()
        a = self.ndarray(dtype, shape, offset)
        try:
            yield a
        finally:
            self._charge(self.id, offset, a.nbytes, True)

    def require_writable(self) -> None:
        if not self.writable:
            raise AccessDenied(f"region {self.name!r} is read-only for this host")

    def close(self) -> None:
        """Drop this handle's mapping (arrays already made stay valid)."""
        self._closed = True
        self._buffer = None
        self._bytes = None
        self._mapping = None

    def __enter__(self) -> "Region":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
