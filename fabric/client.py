"""Attaching a process to the fabric as an emulated host.

``connect("h1")`` finds the cluster (state dir), says HELLO to the fabric
manager as host h1, and returns a :class:`Session`: the handle through which
this process allocates, opens and frees regions.  All requests carry a
deadline (``timeout_ms``); if the manager is gone the call raises
``FabricTimeout`` (or ``NodeUnavailable`` when its process is known dead)
instead of hanging.
"""
from __future__ import annotations

import json
import os
from typing import Iterable

import psutil

from . import protocol
from .errors import ClusterError, FabricTimeout, InvalidArgument, NodeUnavailable
from .region import Region
from .statedir import StateDir
from .topology import Topology

PLACEMENTS = ("local", "interleave")
SHARE_MODES = ("private", "shared", "coherent")
POLICIES = ("cache", "direct", "promote")
EVICTIONS = ("clock", "lru", "fifo")
INJECT_MODES = ("off", "virtual", "spin")


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class Session:
    """One process attached as one emulated host.  Not thread-safe; close when done."""

    def __init__(self, host: str, state: StateDir, info: dict, timeout_ms: int, *,
                 inject: str | None = None, policy: str = "cache", eviction: str = "clock",
                 promote_after: int = 2):
        self.host = host
        self.state = state
        self._manager_pid = info.get("pids", {}).get("manager")
        self._client = protocol.Client(state.manager_endpoint, host, timeout_ms=timeout_ms)
        self._open: dict[str, Region] = {}
        try:
            hello = self._request("HELLO", {"host": host})
        except BaseException:
            self._client.close()
            raise
        self.page_size_bytes: int = hello["page_size_bytes"]
        self.topology = Topology.from_dict(hello["topology"])
        self.options: dict = hello.get("options", {})
        self._devices: dict = hello["devices"]
        self._dev_index = {d.name: i for i, d in enumerate(self.topology.devices)}
        self.policy = policy
        self.promote_after = promote_after
        self.inject: str = inject or self.options.get("inject", "virtual")
        self._registered: set[int] = set()
        from .engine import Engine
        try:
            self._engine = Engine(self.topology.engine_params(), host, mode=self.inject,
                                  seed=int(self.options.get("seed", 0)),
                                  shared_path=state.engine_segment, eviction=eviction,
                                  calibration=_read_calibration(state))
        except BaseException:
            self._client.close()
            raise

    def __repr__(self) -> str:
        return f"<Session host={self.host} state_dir={self.state.path}>"

    def _request(self, msg_type: str, body: dict | None = None):
        try:
            return self._client.request(msg_type, body)
        except FabricTimeout:
            if self._manager_pid and not _running(self._manager_pid):
                raise NodeUnavailable(f"the fabric manager (pid {self._manager_pid}) is not "
                                      f"running; is the cluster in {self.state.path} down?") from None
            raise

    def _device_path(self, device: str) -> str:
        return self._devices[device]["path"]

    def _attach(self, desc: dict, policy: str | None) -> Region:
        """A Region for ``desc``, registered with this host's engine (once per region)."""
        policy = self.policy if policy is None else policy
        region = Region(self, desc)
        if region.id not in self._registered:
            page = self.page_size_bytes
            versions = self.state.versions_path(region.id) if region.share != "private" else None
            self._engine.register_region(
                region.id, npages=desc["mapped_bytes"] // page,
                device_indices=[self._dev_index[d] for d in region.devices],
                stripe_pages=region.stripe_bytes // page, policy=policy,
                promote_after=self.promote_after, share=region.share, versions_path=versions)
            self._registered.add(region.id)
        self._open[region.name] = region
        return region

    # -- regions ------------------------------------------------------------
    def alloc(self, name: str, nbytes: int, *, placement: str = "local",
              devices: Iterable[str] | None = None, granularity: int | None = None,
              share: str = "private", allow: Iterable[str] | dict | None = None,
              policy: str | None = None) -> Region:
        """Allocate ``nbytes`` of pooled memory as region ``name``; this host owns it.

        placement: "local" (a device homed on this host if one has room, else
        the emptiest), "interleave" (striped over ``devices``, default all, in
        ``granularity``-byte stripes, default 64 KiB), or a device name.
        share: "private" (only this host), "shared" (others read; ``allow``
        may grant "rw"), "coherent" (allowed hosts read and write).
        allow: hosts that may open it (list), or a map host -> "r" | "rw".
        policy: how this host caches it: "cache" (far pages cached in local
        DRAM on a miss), "direct" (every access pays the far cost, like CXL
        load/store), "promote" (cached after ``promote_after`` touches);
        default: the session's.
        """
        if isinstance(nbytes, bool) or not isinstance(nbytes, int):
            raise InvalidArgument(f"nbytes must be an int, got {nbytes!r}")
        if not isinstance(placement, str):
            raise InvalidArgument(f"placement must be 'local', 'interleave' or a device name")
        if share not in SHARE_MODES:
            raise InvalidArgument(f"share must be one of {', '.join(SHARE_MODES)}, got {share!r}")
        body = {"name": name, "nbytes": nbytes, "placement": placement, "share": share,
                "devices": list(devices) if devices is not None else None,
                "granularity": granularity,
                "allow": (dict(allow) if isinstance(allow, dict) else list(allow))
                if allow is not None else None}
        _check_policy(policy)
        desc = self._request("ALLOC", body)
        try:
            return self._attach(desc, policy)
        except BaseException:
            self._request("FREE", {"name": name})  # do not leave an unusable region behind
            raise

    def open(self, name: str, *, policy: str | None = None) -> Region:
        """Open an existing region (AccessDenied if this host is not allowed)."""
        _check_policy(policy)
        return self._attach(self._request("OPEN", {"name": name}), policy)

    def free(self, name: str) -> None:
        """Free a region this host owns.  Its memory is zeroed before reuse."""
        self._request("FREE", {"name": name})
        r = self._open.pop(name, None)
        if r is not None:
            r.close()
            if r.id in self._registered:
                self._registered.discard(r.id)
                self._engine.unregister_region(r.id)

    def regions(self) -> list[dict]:
        """Descriptors of the regions this host may open."""
        return self._request("LIST")["regions"]

    def translate(self, address: int) -> tuple[str, int]:
        """(device, offset in device) of a global address."""
        r = self._request("TRANSLATE", {"address": int(address)})
        return r["device"], r["offset"]

    # -- the engine -------------------------------------------------------------
    def stats(self) -> dict:
        """This host's access figures: locality by tier, hit rate, per-device load,
        latency percentiles (ns) and virtual time; see docs/cost-model.md."""
        return {"host": self.host, "inject": self.inject, **self._engine.stats()}

    @property
    def virtual_time_ns(self) -> int:
        """This host's virtual clock (advanced by every charge in virtual mode)."""
        return self._engine.virtual_time_ns

    def close(self) -> None:
        for r in self._open.values():
            r.close()
        self._open.clear()
        self._registered.clear()
        self._engine.close()
        self._client.close()

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check_policy(policy: str | None) -> None:
    if policy is not None and policy not in POLICIES:
        raise InvalidArgument(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")


def _read_calibration(state: StateDir) -> dict | None:
    try:
        with open(state.calibration_file, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def connect(host: str, state_dir: str | None = None, *,
            timeout_ms: int = protocol.DEFAULT_TIMEOUT_MS, inject: str | None = None,
            policy: str = "cache", eviction: str = "clock", promote_after: int = 2) -> Session:
    """Attach the calling process as emulated host ``host`` of the cluster in ``state_dir``.

    ``state_dir`` defaults to $FABRIC_STATE_DIR, then /dev/shm/cxl-fabric-<uid>.
    ``inject`` overrides the cluster's injection mode for this process: "off"
    (count only), "virtual" (advance a virtual clock), "spin" (really wait).
    ``policy`` is the default caching policy of this host's regions, and
    ``eviction`` its page cache's eviction policy ("clock", "lru", "fifo").
    """
    if inject is not None and inject not in INJECT_MODES:
        raise InvalidArgument(f"inject must be one of {', '.join(INJECT_MODES)}, got {inject!r}")
    _check_policy(policy)
    if eviction not in EVICTIONS:
        raise InvalidArgument(f"eviction must be one of {', '.join(EVICTIONS)}, got {eviction!r}")
    if isinstance(promote_after, bool) or not isinstance(promote_after, int) or promote_after < 1:
        raise InvalidArgument(f"promote_after must be a positive int, got {promote_after!r}")
    if not isinstance(host, str) or not host:
        raise InvalidArgument(f"host must be a host name such as 'h0', got {host!r}")
    if not isinstance(timeout_ms, int) or not 0 < timeout_ms <= protocol.MAX_TIMEOUT_MS:
        raise InvalidArgument(f"timeout_ms must be in 1..{protocol.MAX_TIMEOUT_MS}")
    state = StateDir(state_dir)
    if not os.path.isdir(state.path) or not state.exists():
        raise ClusterError(f"no cluster in {state.path} (start one with `fabric up`)")
    return Session(host, state, state.read(), timeout_ms, inject=inject, policy=policy,
                   eviction=eviction, promote_after=promote_after)
