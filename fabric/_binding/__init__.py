"""The only package that touches cffi's ``ffi`` and ``lib``.

One module per C file (``mapping`` for map.c, ...).  Everything else calls the
small wrappers in these modules, which validate arguments in
Python, cross into C once per call, and turn negative return codes into typed
exceptions through :func:`check`.
"""
from __future__ import annotations

from .. import errors

try:
    from .._native import ffi, lib
except ImportError as exc:  # pragma: no cover - only on a broken install
    raise ImportError(
        "the C core fabric._native is not built; install the project with "
        "`pip install -e .` (it compiles csrc/ with cffi)") from exc

_CODE_TO_ERROR = {
    lib.FAB_EINVAL: errors.InvalidArgument,
    lib.FAB_ERANGE: errors.InvalidArgument,
    lib.FAB_ENOENT: errors.RegionNotFound,
}


def strerror(rc: int) -> str:
    return ffi.string(lib.fab_strerror(rc)).decode()


def check(rc: int, what: str) -> int:
    """Return ``rc`` if it is >= 0, else raise the typed error for it."""
    if rc >= 0:
        return rc
    cls = _CODE_TO_ERROR.get(rc, errors.NativeError)
    raise cls(f"{what}: {strerror(rc)} (code {rc})")
