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

A Region keeps its :class:`~fabric.Session` alive (``fabric.connect("h0")
.alloc(...)`` is a usable region).  Once the session is closed, every method
that needs it raises :class:`~fabric.errors.SessionClosed`; arrays already
made stay valid.  Each open Region of a session holds one of the host
engine's region slots (``max_regions``, 1,024 by default) until the last open
handle of that region in the session is closed or the region is freed.
"""
from __future__ import annotations

import errno
import math
import os
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ._args import bool_arg, is_int
from ._binding.mapping import Mapping
from .descriptor import RegionDescriptor
from .errors import AccessDenied, FabricError, InvalidArgument, ResourceExhausted

if TYPE_CHECKING:  # pragma: no cover
    from .client import Session

#: Largest dimension of an ndarray shape (numpy's intp is 64-bit signed).
_MAX_DIM = (1 << 63) - 1

#: Scoped views a Region remembers per (dtype, shape, offset, writable): a
#: repeated reading()/writing() skips the dtype and shape checks.  Dropped
#: (all at once) when it would grow past this, and when the handle closes.
_VIEW_CACHE_MAX = 64


class Region:
    """A pooled memory region, as seen by one host.

    Attributes: ``name``, ``id``, ``address`` (global base address),
    ``nbytes``, ``share`` ("private" | "shared" | "coherent"), ``owner``,
    ``placement``, ``devices`` (the devices it spans, in stripe order),
    ``stripe_bytes``, ``writable`` (for this host), ``descriptor`` (the
    manager's :class:`~fabric.descriptor.RegionDescriptor`) and ``info`` (the
    same as a dict).  Made by :meth:`Session.alloc` / :meth:`Session.open`,
    not directly.
    """

    def __init__(self, descriptor: RegionDescriptor, *, session: "Session",
                 charge: Callable[[int, int, int, bool], int],
                 device_path: Callable[[str], str],
                 on_close: Callable[["Region"], None]):
        # A strong reference: a Region keeps its session (and engine) alive.
        self._session = session
        self._charge = charge            # (region_id, offset, nbytes, write) -> ns; the hot path
        self._device_path = device_path
        self._on_close = on_close
        self.descriptor = descriptor
        self.name: str = descriptor.name
        self.id: int = descriptor.id
        self.address: int = descriptor.address
        self.nbytes: int = descriptor.nbytes
        self.share: str = descriptor.share
        self.owner: str = descriptor.owner
        self.placement: str = descriptor.placement
        self.devices: list[str] = list(descriptor.devices)
        self.stripe_bytes: int = descriptor.stripe_bytes
        self.writable: bool = descriptor.access == "rw"
        self._mapping: Mapping | None = None
        self._buffer: Any = None
        self._bytes: np.ndarray | None = None     # the whole region as uint8
        self._views: dict | None = {}             # checked scoped views; None once closed
        self._closed: FabricError | None = None   # why this handle is unusable, once it is
        self._mirror = None                       # fabric.mirror.MirrorCopies when mirrored

    def __repr__(self) -> str:
        state = " closed" if self._closed is not None else ""
        return (f"<Region {self.name!r} {self.nbytes} B at {self.address:#x} on "
                f"{','.join(self.devices)} share={self.share} "
                f"{'rw' if self.writable else 'ro'}{state}>")

    @property
    def info(self) -> dict:
        """The manager's descriptor of this region as a dict (placement, offsets, ...)."""
        return {**self.descriptor.extra, **self.descriptor.to_wire()}

    @property
    def closed(self) -> bool:
        """Whether this handle was closed (or its session was)."""
        return self._closed is not None

    # -- lifetime -------------------------------------------------------------
    def _refuse(self, *_args) -> int:
        raise self._closed_error()

    def _closed_error(self) -> FabricError:
        """A fresh copy of the reason this handle is closed (re-raising one instance
        would grow its traceback on every call)."""
        why = self._closed
        assert why is not None
        return type(why)(*why.args)

    def _use_mirror(self, copies) -> None:
        """Make this handle mirrored (the session does it for ``mirror=2`` regions): every
        declared access goes through ``copies`` (fabric.mirror.MirrorCopies)."""
        self._mirror = copies
        self._charge = self._mirror_charge

    def _mirror_charge(self, region_id: int, offset: int, nbytes: int, write: bool) -> int:
        if write:
            return self._mirror.write(offset, nbytes, None)
        return self._mirror.read(offset, nbytes)[1]

    @property
    def mirror(self) -> dict | None:
        """A mirrored region's copies: ``{"devices", "offsets", "first_stale",
        "second_stale", "resyncing", "generation"}``; None when not mirrored."""
        if self._mirror is None:
            return None
        d = self.descriptor
        return {"devices": list(d.mirror_devices), "offsets": list(d.mirror_offsets),
                **self._mirror.state()}

    def _shut(self, why: FabricError) -> None:
        """Make this handle unusable; arrays already made stay valid."""
        self._closed = why
        self._charge = self._refuse
        self._buffer = None
        self._bytes = None
        self._views = None
        self._mapping = None

    def _invalidate(self, why: FabricError) -> None:
        """The session says this handle is done (it closed, or the region was freed)."""
        if self._closed is None:
            self._shut(why)

    def close(self) -> None:
        """Drop this handle's mapping (arrays already made stay valid).

        When no other open handle of the region remains in the session, the
        host engine's slot for it is released (its dirty cached pages are
        written back and charged).  Closing twice is harmless.
        """
        if self._closed is not None:
            return
        self._shut(InvalidArgument(f"region {self.name!r} is closed"))
        self._on_close(self)

    def __enter__(self) -> "Region":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- mapping ------------------------------------------------------------
    def _map(self) -> Any:
        if self._closed is not None:
            raise self._closed_error()
        if self._buffer is None:
            flags = os.O_RDWR if self.writable else os.O_RDONLY
            fds: list[int] = []
            try:
                for d in self.devices:
                    fds.append(os.open(self._device_path(d), flags | os.O_NOFOLLOW))
                self._mapping = Mapping(fds, list(self.descriptor.offsets), self.stripe_bytes,
                                        self.descriptor.nstripes, self.writable)
            except FileNotFoundError as exc:
                raise FabricError(f"device file {exc.filename} is gone "
                                  f"(was the cluster stopped?)") from None
            except OSError as exc:
                if isinstance(exc, FabricError):
                    raise
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    raise ResourceExhausted(f"cannot open the device files of region "
                                            f"{self.name!r}: {exc.strerror} (raise the open-file "
                                            f"limit, ulimit -n)") from None
                raise FabricError(f"cannot open the device files of region {self.name!r}: "
                                  f"{exc}") from None
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
        ``shape`` is an int or a sequence of ints (numpy integers too); a
        sub-array dtype such as ``("f4", (3,))`` appends its shape, as numpy does.
        """
        dt, shape, offset, count = self._layout(dtype, shape, offset)
        base = dt.base if dt.subdtype is not None else dt
        arr = np.frombuffer(self._map(), dtype=base, count=count * (dt.itemsize // base.itemsize),
                            offset=offset)
        try:
            return arr.reshape(shape + dt.shape)
        except (ValueError, TypeError) as exc:
            raise InvalidArgument(f"shape {shape} of {dt}: {exc}") from None

    def _layout(self, dtype, shape, offset) -> tuple[np.dtype, tuple[int, ...], int, int]:
        """(dtype, shape, offset, element count) checked against this region."""
        try:
            dt = np.dtype(dtype)
        except Exception as exc:  # numpy raises TypeError, ValueError, SyntaxError, ...
            raise InvalidArgument(f"not a numpy dtype: {dtype!r} ({exc})") from None
        if dt.hasobject:
            raise InvalidArgument(f"dtype {dt} holds Python objects; pooled memory holds plain data")
        if dt.itemsize == 0:
            raise InvalidArgument(f"dtype {dt} has no size; an array of it cannot view memory")
        if is_int(shape):
            shape = (shape,)
        if isinstance(shape, (str, bytes)) or not isinstance(shape, (tuple, list, np.ndarray)):
            raise InvalidArgument(f"shape must be an int or a sequence of ints, got {shape!r}")
        dims = list(np.asarray(shape).reshape(-1)) if isinstance(shape, np.ndarray) else shape
        if not all(is_int(s) for s in dims):
            raise InvalidArgument(f"shape must be an int or a sequence of ints, got {shape!r}")
        shape = tuple(int(s) for s in dims)
        if any(s < 0 or s > _MAX_DIM for s in shape):
            raise InvalidArgument(f"shape {shape} has a dimension outside 0..{_MAX_DIM}")
        if not is_int(offset) or offset < 0:
            raise InvalidArgument(f"offset must be a non-negative int, got {offset!r}")
        offset = int(offset)
        count = math.prod(shape)  # Python ints: no overflow for absurd shapes
        need = count * dt.itemsize
        if offset % max(dt.alignment, 1):
            raise InvalidArgument(f"offset {offset} is not aligned to {dt.alignment} bytes for {dt}")
        if offset + need > self.nbytes:
            raise InvalidArgument(f"{shape} of {dt} at offset {offset} needs {offset + need} "
                                  f"bytes; region {self.name!r} has {self.nbytes}")
        return dt, shape, offset, count

    # -- declared (charged) accesses --------------------------------------------
    def _range(self, offset, nbytes) -> tuple[int, int]:
        if type(offset) is not int:
            if not is_int(offset):
                raise InvalidArgument(f"offset must be an int, got {offset!r}")
            offset = int(offset)
        if nbytes is None:
            nbytes = self.nbytes - offset
        elif type(nbytes) is not int:
            if not is_int(nbytes):
                raise InvalidArgument(f"nbytes must be an int, got {nbytes!r}")
            nbytes = int(nbytes)
        if offset < 0 or nbytes < 0 or offset + nbytes > self.nbytes:
            raise InvalidArgument(f"range [{offset}, {offset + nbytes}) is outside region "
                                  f"{self.name!r} of {self.nbytes} bytes")
        return offset, nbytes

    def _byte_view(self) -> np.ndarray:
        if self._bytes is None or self._closed is not None:
            self._bytes = np.frombuffer(self._map(), dtype=np.uint8, count=self.nbytes)
        return self._bytes

    def access(self, offset: int = 0, nbytes: int | None = None, write: bool = False) -> int:
        """Declare an access to ``[offset, offset + nbytes)`` and return the charged ns.

        For workloads that touch memory through their own views: the engine
        charges (and in spin mode waits) what the modelled fabric would cost.
        """
        if (write is False and type(offset) is int and type(nbytes) is int
                and 0 <= offset and 0 <= nbytes and offset + nbytes <= self.nbytes):
            return self._charge(self.id, offset, nbytes, False)   # the common case, checked
        offset, nbytes = self._range(offset, nbytes)
        if write is not False:
            write = bool_arg(write, "write")
            if write:
                self.require_writable()
        return self._charge(self.id, offset, nbytes, write)

    def read(self, offset: int = 0, nbytes: int | None = None) -> np.ndarray:
        """A read-only uint8 view of ``[offset, offset + nbytes)``, charged as a read.

        Zero copy: the view aliases device memory and lives as long as it is
        referenced.  ``nbytes`` defaults to the rest of the region.
        """
        offset, nbytes = self._range(offset, nbytes)
        if self._mirror is not None:
            if self._closed is not None:
                raise self._closed_error()
            which, _ns = self._mirror.read(offset, nbytes)
            view = self._mirror.copy_bytes(which)[offset:offset + nbytes]
        else:
            view = self._byte_view()[offset:offset + nbytes]
            self._charge(self.id, offset, nbytes, False)
        if view.flags.writeable:
            view.flags.writeable = False
        return view

    def write(self, data, offset: int = 0) -> int:
        """Copy ``data`` (bytes-like or ndarray) into the region at ``offset``,
        charged as a write; returns the number of bytes written.  A ``str`` is
        not bytes: encode it first."""
        self.require_writable()
        src = _as_bytes(data)
        offset, nbytes = self._range(offset, src.nbytes)
        if self._mirror is not None:
            if self._closed is not None:
                raise self._closed_error()
            self._mirror.write(offset, nbytes, src)
            return nbytes
        view = self._byte_view()
        # Charged first: a write refused by a fault (a failed or unavailable device, a
        # cut link) leaves the bytes as they were.
        self._charge(self.id, offset, nbytes, True)
        view[offset:offset + nbytes] = src
        return nbytes

    def reading(self, dtype, shape, offset: int = 0) -> "_Reading":
        """``with region.reading(dtype, shape) as a:`` a read-only view, charged at entry.

        The arguments are checked (and the access charged) when the ``with``
        block is entered.  A repeated ``reading`` of the same dtype, shape and
        offset reuses the checked layout: it costs about what :meth:`access` does.
        """
        return _Reading((self, dtype, shape, offset))

    def writing(self, dtype, shape, offset: int = 0) -> "_Writing":
        """``with region.writing(dtype, shape) as a:`` a writable view, charged as a
        write at exit, also when the block raises (marking its pages dirty and
        publishing new versions).  Checked when the block is entered."""
        return _Writing((self, dtype, shape, offset))

    def _scoped_view(self, dtype, shape, offset, writable: bool) -> tuple[np.ndarray, int, int]:
        """(a fresh view, its offset, its nbytes) for reading/writing: from the
        cache of checked layouts when the same plain-int shape and offset were
        seen before, else checked by :meth:`ndarray` (and remembered)."""
        views = self._views
        key = None
        if views is not None and type(offset) is int and _plain_shape(shape):
            key = (dtype, shape, offset, writable)
            try:
                hit = views.get(key)
            except TypeError:          # an unhashable dtype: take the checked path
                hit = key = None
            if hit is not None:
                return hit.view(), offset, hit.nbytes
        a = self.ndarray(dtype, shape, offset)
        if not writable:
            a.flags.writeable = False
        offset = int(offset)
        if key is not None and self._views is not None:
            if len(views) >= _VIEW_CACHE_MAX:
                views.clear()
            views[key] = a
            return a.view(), offset, a.nbytes
        return a, offset, a.nbytes

    def _mirror_reading(self, dtype, shape, offset) -> np.ndarray:
        """reading() of a mirrored region: a read-only view of the copy that served it."""
        a = self.ndarray(dtype, shape, offset)          # checks the layout
        off = int(offset)
        which, _ns = self._mirror.read(off, a.nbytes)
        if which == 1:
            b = self._mirror.copy_bytes(1)[off:off + a.nbytes]
            a = b.view(a.dtype).reshape(a.shape) if a.nbytes else a
        a.flags.writeable = False
        return a

    def require_writable(self) -> None:
        """AccessDenied unless this host may write the region."""
        if not self.writable:
            raise AccessDenied(f"region {self.name!r} is read-only for this host")


def _plain_shape(shape) -> bool:
    """An int, or a tuple of ints (Python ints only: a float or bool that equals
    an int must not find a checked layout)."""
    t = type(shape)
    if t is int:
        return True
    if t is not tuple:
        return False
    for d in shape:
        if type(d) is not int:
            return False
    return True



class _Reading(tuple):
    """The context manager :meth:`Region.reading` returns: (region, dtype, shape,
    offset), checked and charged on entry.  A tuple subclass with the cached
    layout looked up inline: a generator-based context manager costs a few
    microseconds a use, this about what :meth:`Region.access` does."""

    __slots__ = ()

    def __enter__(self) -> np.ndarray:
        r, dtype, shape, offset = self
        if r._mirror is not None:
            return r._mirror_reading(dtype, shape, offset)
        views = r._views
        if (views is not None and type(offset) is int
                and (type(shape) is int or _plain_shape(shape))):
            try:
                a = views.get((dtype, shape, offset, False))
            except TypeError:          # an unhashable dtype: take the checked path
                a = None
            if a is not None:
                view = a.view()
                r._charge(r.id, offset, a.nbytes, False)
                return view
        view, offset, nbytes = r._scoped_view(dtype, shape, offset, False)
        r._charge(r.id, offset, nbytes, False)
        return view

    def __exit__(self, *exc) -> None:
        return None


class _Writing(list):
    """The context manager :meth:`Region.writing` returns: [region, dtype, shape,
    offset], checked on entry (which appends the checked offset and nbytes) and
    charged as a write on exit."""

    __slots__ = ()

    def __enter__(self) -> np.ndarray:
        r = self[0]
        r.require_writable()
        view, offset, nbytes = r._scoped_view(self[1], self[2], self[3], True)
        del self[4:]
        self += (offset, nbytes)
        return view

    def __exit__(self, *exc) -> None:
        if len(self) == 6:
            r, offset, nbytes = self[0], self[4], self[5]
            del self[4:]
            r._charge(r.id, offset, nbytes, True)


def _as_bytes(data) -> np.ndarray:
    """``data`` (an ndarray, a numpy scalar or any object with the buffer protocol) as a
    flat uint8 array; InvalidArgument for anything else (a str is not bytes)."""
    if isinstance(data, str):
        raise InvalidArgument("cannot write a str: pooled memory holds bytes; "
                              "encode it first (text.encode())")
    if not isinstance(data, (np.ndarray, np.generic)):
        try:
            data = memoryview(data)
        except TypeError:
            raise InvalidArgument(f"cannot write {type(data).__name__}: give bytes, a "
                                  f"bytes-like object or an ndarray") from None
    try:
        src = np.ascontiguousarray(data)
        if src.dtype.hasobject:
            raise TypeError("it holds Python objects")
        return src.reshape(-1).view(np.uint8)
    except (TypeError, ValueError, NotImplementedError, BufferError) as exc:
        raise InvalidArgument(f"cannot write {type(data).__name__}: {exc}") from None
