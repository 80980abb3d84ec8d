"""Typed errors of cxl-fabric.

Every user-facing failure is a subclass of :class:`FabricError`.  Each class
has a stable wire ``code``: daemons send the code in error replies and the
client raises the matching class, so a ``PoolFull`` in the fabric manager is a
``PoolFull`` in the caller.
"""
from __future__ import annotations


class FabricError(Exception):
    """Root of every cxl-fabric error."""

    code = "FABRIC_ERROR"


class InvalidArgument(FabricError, ValueError):
    """A size, name, dtype, shape, offset or option that cannot be used."""

    code = "INVALID_ARGUMENT"


class PoolFull(FabricError):
    """Not enough free capacity on the devices the placement may use."""

    code = "POOL_FULL"


class RegionNotFound(FabricError, KeyError):
    """No region of that name (or no region at that address)."""

    code = "REGION_NOT_FOUND"

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else self.code


class RegionExists(FabricError):
    """A region of that name is already allocated."""

    code = "REGION_EXISTS"


class AccessDenied(FabricError, PermissionError):
    """The calling host is not allowed to do this to the region."""

    code = "ACCESS_DENIED"


class FabricTimeout(FabricError, TimeoutError):
    """A request got no reply before its deadline."""

    code = "TIMEOUT"


class NodeUnavailable(FabricError):
    """The daemon or node that must serve the request is down or unknown."""

    code = "NODE_UNAVAILABLE"


class LinkDown(NodeUnavailable):
    """A link on the path from this host to a device is cut: the device is
    unreachable from here (hosts whose paths avoid the link still reach it).
    A subclass of NodeUnavailable, so code that copes with a node being down
    copes with this too."""

    code = "LINK_DOWN"


class DeviceFailed(FabricError):
    """The device that holds the bytes has failed (fault injection: ``fabric
    fault device-fail``); declared accesses to it fail until it is restored."""

    code = "DEVICE_FAILED"


class PoisonError(FabricError):
    """A declared read met a poisoned page, as a CXL poisoned line would.
    ``address`` is the global address of the first poisoned byte read (None
    when unknown); a write that covers the whole page clears the poison."""

    code = "POISON"

    def __init__(self, message: str = "", address: int | None = None):
        super().__init__(message)
        self.address = address


class ProtocolError(FabricError):
    """A message that does not follow the wire protocol (docs/protocol.md)."""

    code = "PROTOCOL_ERROR"


class ClusterError(FabricError):
    """Starting, finding or stopping a cluster failed."""

    code = "CLUSTER_ERROR"


class CachePinned(FabricError):
    """Every page-cache frame is pinned, so the page cache cannot take a page."""

    code = "CACHE_PINNED"


class SharedStateMismatch(FabricError):
    """The shared engine segment is missing, corrupt, or was made for another topology."""

    code = "SHARED_STATE_MISMATCH"


class NativeError(FabricError, OSError):
    """The C core returned an error code (see fab_strerror)."""

    code = "NATIVE_ERROR"


class SessionClosed(FabricError):
    """The session was closed (``Session.close()``): open a new one with ``fabric.connect``."""

    code = "SESSION_CLOSED"


class ResourceExhausted(FabricError, OSError):
    """A per-process or per-host limit was reached: file descriptors, or the
    regions one host's engine can hold (``max_regions``)."""

    code = "RESOURCE_EXHAUSTED"


class SyncTimeout(FabricTimeout):
    """A barrier or other wait on pooled memory passed its deadline, or a
    participant it waits for died."""

    code = "SYNC_TIMEOUT"


class LockstepTimeout(FabricTimeout):
    """A lockstep host waited past its deadline (``lockstep_timeout_ms``) for the other
    hosts of its group: a member that stopped calling the engine without parking,
    a group that never filled up, or hosts driven by one thread
    (docs/cost-model.md, "Time bases").  The message names who held it back."""

    code = "LOCKSTEP_TIMEOUT"


class StaleIncarnation(FabricError):
    """A message from a daemon that a newer start of the same daemon has replaced
    (its incarnation is older than the one the receiver knows): it is fenced off
    and must not act (docs/faults.md, "Fencing")."""

    code = "STALE_INCARNATION"


class WorkloadError(FabricError):
    """A workload run failed: a worker process crashed, was killed or reported an error."""

    code = "WORKLOAD_FAILED"


class FabricWarning(UserWarning):
    """Root of cxl-fabric's warnings (``warnings.simplefilter("error", FabricWarning)``
    turns them into exceptions)."""


class SpinOvercommitWarning(FabricWarning):
    """More host processes inject delays in spin mode than this machine has cores for:
    each spinning host needs a core of its own, or the spinners take turns and the
    modelled time stops matching real time (docs/cost-model.md, "Injection modes")."""


ERRORS_BY_CODE: dict[str, type[FabricError]] = {
    cls.code: cls
    for cls in (
        FabricError, InvalidArgument, PoolFull, RegionNotFound, RegionExists,
        AccessDenied, FabricTimeout, NodeUnavailable, ProtocolError, ClusterError,
        CachePinned, SharedStateMismatch, NativeError, SessionClosed, ResourceExhausted,
        SyncTimeout, WorkloadError, LinkDown, DeviceFailed, PoisonError, StaleIncarnation,
        LockstepTimeout,
    )
}


def error_from_code(code: str, message: str) -> FabricError:
    """The exception instance for a wire error ``code`` (unknown codes -> FabricError)."""
    return ERRORS_BY_CODE.get(code, FabricError)(message)


__all__ = [name for name, obj in globals().items()
           if isinstance(obj, type) and issubclass(obj, (FabricError, FabricWarning))] + [
    "error_from_code"]
