"""The only package that touches cffi's ``ffi`` and ``lib``.

One module per C area (``mapping`` for map.c, ``engine`` for the engine's
files).  Everything else calls the small wrappers in these modules, which
validate arguments in Python, cross into C once per call, and turn negative
return codes into typed exceptions through the one :func:`check` below.  The
text of every message comes from the C ``fab_strerror`` (csrc/error.c), which
names every FAB_E* code.
"""
from __future__ import annotations

import errno

from .. import errors

try:
    from .._native import ffi, lib
except ImportError as exc:  # pragma: no cover - only on a broken install
    raise ImportError(
        "the C core fabric._native is not built; install the project with "
        "`pip install -e .` (it compiles csrc/ with cffi)") from exc

#: The typed exception of each FAB_E* code (and of the -errno values a user can
#: cause).  Codes not listed (FAB_ENOMEM, FAB_ECORRUPT, other -errno from a system
#: call) raise errors.NativeError.
_CODE_TO_ERROR: dict[int, type[errors.FabricError]] = {
    -errno.ENOSPC: errors.ResourceExhausted,    # a full tmpfs: shared files are fully allocated
    lib.FAB_EINVAL: errors.InvalidArgument,
    lib.FAB_ERANGE: errors.InvalidArgument,
    lib.FAB_ENOENT: errors.RegionNotFound,
    lib.FAB_EBUSY: errors.CachePinned,          # only the engine returns it: frames pinned
    lib.FAB_ESEGMENT: errors.SharedStateMismatch,
    lib.FAB_EEXIST: errors.RegionExists,
    lib.FAB_EUNAVAIL: errors.NodeUnavailable,   # a device of the access: its node is down
    lib.FAB_EFAILED: errors.DeviceFailed,
    lib.FAB_ELINKDOWN: errors.LinkDown,
    lib.FAB_EPOISON: errors.PoisonError,
    lib.FAB_ELOCKSTEP: errors.LockstepTimeout,
}


def strerror(rc: int) -> str:
    """The C core's text for a return code (any FAB_E* code or -errno)."""
    return ffi.string(lib.fab_strerror(rc)).decode()


def check(rc: int, what: str) -> int:
    """Return ``rc`` if it is >= 0, else raise the typed error for it.

    ``what`` says what was being done ("registering region 7"); the message
    is ``"<what>: <fab_strerror text> (code <rc>)"``.
    """
    if rc >= 0:
        return rc
    cls = _CODE_TO_ERROR.get(rc, errors.NativeError)
    hint = " (is the tmpfs full?)" if rc == -errno.ENOSPC else ""
    raise cls(f"{what}: {strerror(rc)}{hint} (code {rc})")
