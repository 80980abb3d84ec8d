"""Attaching a process to the fabric as an emulated host.

``connect("h1")`` finds the cluster (state dir), says HELLO to the fabric
manager as host h1, and returns a :class:`Session`: the handle through which
this process allocates, opens and frees regions.  All requests carry a
deadline (``timeout_ms``); if the manager is gone the call raises
``FabricTimeout`` (or ``NodeUnavailable`` when its process is known dead)
instead of hanging.  Every bad argument raises ``InvalidArgument`` where it
enters; nothing but :class:`~fabric.errors.FabricError` subclasses escapes.

A restarted manager is transparent: an unanswered request is resent (same
idempotency key, within its deadline), so an ALLOC or FREE cut off by a
manager crash is applied once; when a reply comes from a new manager
incarnation, the session says HELLO again (the manager does not journal
sessions) and carries on.

Each session owns one engine for its host (page cache, cost model).  That
engine holds at most ``max_regions`` regions at once (1,024 unless the
topology file's ``[engine] max_regions`` or ``connect(max_regions=N)`` says
otherwise); a region takes a slot while a handle of it is open in the
session, and gives it back when its last handle is closed or it is freed.
"""
from __future__ import annotations

import errno
import json
import os
import weakref
from typing import Any, Iterable

import psutil
import zmq

from . import protocol
from ._args import U64_MAX, choice_arg, int_arg, is_int, names_arg, str_arg
from .constants import (ACCESS_MODES, DEFAULT_EVICTION, DEFAULT_INJECT, DEFAULT_PLACEMENT,
                        DEFAULT_POLICY, DEFAULT_PROMOTE_AFTER, DEFAULT_SHARE, DEFAULT_TIMEOUT_MS,
                        ENGINE_KNOBS, EVICTIONS, INJECT_MODES, MAX_TIMEOUT_MS, POLICIES,
                        SHARE_MODES)
from .descriptor import RegionDescriptor
from .errors import (ClusterError, FabricError, FabricTimeout, InvalidArgument, NativeError,
                     NodeUnavailable, ProtocolError, RegionNotFound, ResourceExhausted, SessionClosed)
from ._spin import warn_if_overcommitted
from .region import Region
from .statedir import StateDir
from .topology import Topology

#: How long close() waits for the manager to acknowledge BYE.
BYE_TIMEOUT_MS = 250
#: File descriptors connect() wants free before it starts: ZeroMQ's I/O and reaper
#: threads, the socket, its ipc connection and the engine's segment.  libzmq
#: aborts the process (rather than failing a call) when its threads cannot get one.
_CONNECT_FDS = 16
_MAX_REGIONS_RANGE = ENGINE_KNOBS["max_regions"][2:4]


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _out_of_files(exc: BaseException) -> bool:
    return getattr(exc, "errno", None) in (errno.EMFILE, errno.ENFILE)


def _reserve_fds(n: int, doing: str) -> None:
    """ResourceExhausted unless ``n`` file descriptors can be opened right now."""
    fds: list[int] = []
    try:
        for _ in range(n):
            fds.append(os.open(os.devnull, os.O_RDONLY))
    except OSError as exc:
        raise _os_failure(exc, doing) from None
    finally:
        for fd in fds:
            os.close(fd)


def _os_failure(exc: BaseException, doing: str) -> FabricError:
    """The typed error for an OSError / ZMQError met while ``doing``."""
    if _out_of_files(exc):
        return ResourceExhausted(f"{doing}: this process is out of file descriptors ({exc}); "
                                 f"close some files, sessions or regions, or raise the limit "
                                 f"(ulimit -n)")
    return ClusterError(f"{doing}: {exc}")


class Session:
    """One process attached as one emulated host.  Not thread-safe; close when done.

    Made by :func:`connect`.  Its regions keep it alive; after :meth:`close`
    every method (and every method of its regions that needs it) raises
    :class:`~fabric.errors.SessionClosed`.

    Attributes: ``host``, ``topology``, ``page_size_bytes``, ``inject``,
    ``policy``, ``promote_after``, ``max_regions`` (regions this session's
    engine holds at once), ``session_id`` (the manager's id for this session,
    None from a manager that does not give one).
    """

    def __init__(self, host: str, state: StateDir, info: dict, timeout_ms: int, *,
                 inject: str | None = None, policy: str = DEFAULT_POLICY,
                 eviction: str = DEFAULT_EVICTION, promote_after: int = DEFAULT_PROMOTE_AFTER,
                 max_regions: int | None = None, threads: int | None = None,
                 lockstep: dict | None = None):
        self.host = host
        self.state = state
        self._closed = False
        self._manager_pid = info.get("pids", {}).get("manager")
        self._client = protocol.Client(state.manager_endpoint, host, timeout_ms=timeout_ms)
        # region id -> the open handles of it in this session (weak: a dropped handle
        # counts as closed when slots run short)
        self._handles: dict[int, weakref.WeakSet[Region]] = {}
        self._registered: dict[int, str] = {}   # region id -> name, registered in the engine
        self._mirrored: set[int] = set()          # of those, regions with a second copy
        #: mirrored regions: reads served by the second copy because the first was
        #: unreachable (failovers) or stale, writes that reached one copy only, resyncs
        self._mirror_stats = {"failovers": 0, "stale_reads": 0, "degraded_writes": 0,
                              "resyncs": 0}
        try:
            self._inject_asked = inject
            body = {"host": host, "pid": os.getpid()}
            if inject is not None:
                body["inject"] = inject
            hello = self._request("HELLO", body)
            self._manager_inc = self._client.peer_incarnation
            try:
                self.page_size_bytes: int = int(hello["page_size_bytes"])
                self.topology = Topology.from_dict(hello["topology"])
                self.options: dict = dict(hello.get("options") or {})
                self._devices: dict = dict(hello["devices"])
                sid = hello.get("session")    # absent on a manager without sessions
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                if isinstance(exc, FabricError):
                    raise
                raise ProtocolError(f"malformed HELLO reply from the fabric manager: "
                                    f"{type(exc).__name__}: {exc}") from None
            self.session_id: int | None = int(sid) if is_int(sid) else None
            self._dev_index = {d.name: i for i, d in enumerate(self.topology.devices)}
            self.policy = policy
            self.promote_after = promote_after
            self.inject: str = inject or self.options.get("inject", DEFAULT_INJECT)
            if self.inject == "spin":
                # Every spinning process needs a core; the manager counts them (us included).
                spinning = hello.get("spinning_processes")
                warn_if_overcommitted(int(spinning) if is_int(spinning) else 1, stacklevel=4)
            params = self.topology.engine_params()
            self._params = params
            if max_regions is not None:
                params["engine"] = {**(params.get("engine") or {}), "max_regions": max_regions}
            if threads is not None:   # this process's host issues misses from N cores
                params["hosts"] = [{**h, "threads": threads} if h["name"] == host else h
                                   for h in params["hosts"]]
            self.max_regions: int = int((params.get("engine") or {}).get(
                "max_regions", ENGINE_KNOBS["max_regions"][0]))
            from .engine import Engine
            self._engine = Engine(params, host, mode=self.inject,
                                  seed=int(self.options.get("seed", 0)),
                                  shared_path=state.engine_segment, eviction=eviction,
                                  calibration=_read_calibration(state),
                                  **_lockstep_options(lockstep or {}, self.options, self.inject))
        except BaseException:
            self._bye()
            self._client.close()
            raise

    def __repr__(self) -> str:
        return (f"<Session host={self.host} state_dir={self.state.path}"
                f"{' closed' if self._closed else ''}>")

    # -- plumbing -----------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise SessionClosed(f"the session of host {self.host} is closed; "
                                f"open a new one with fabric.connect({self.host!r})")

    def _request(self, msg_type: str, body: dict | None = None, *,
                 timeout_ms: int | None = None) -> Any:
        try:
            reply = self._client.request(msg_type, body, timeout_ms=timeout_ms, retry=True)
        except FabricError as exc:
            self._check_manager_restart()
            if isinstance(exc, FabricTimeout):
                self._refresh_manager_pid()
                if self._manager_pid and not _running(self._manager_pid):
                    raise NodeUnavailable(
                        f"the fabric manager (pid {self._manager_pid}) is not running; is the "
                        f"cluster in {self.state.path} down?") from None
            raise
        except (zmq.ZMQError, OSError) as exc:
            raise _os_failure(exc, f"{msg_type} to the fabric manager") from None
        except (TypeError, ValueError, OverflowError) as exc:  # an argument msgpack cannot send
            raise InvalidArgument(f"{msg_type}: an argument cannot be sent: {exc}") from None
        self._check_manager_restart()
        return reply

    def _refresh_manager_pid(self) -> None:
        """The manager's pid from cluster.json (a restart records the new one there)."""
        try:
            pid = self.state.read().get("pids", {}).get("manager")
        except FabricError:
            return
        if is_int(pid):
            self._manager_pid = pid

    def _check_manager_restart(self) -> None:
        """After a reply from a new manager incarnation: HELLO again (sessions are not
        journaled), so this connection is bound to this host and counted in STATUS."""
        inc = self._client.peer_incarnation
        old = getattr(self, "_manager_inc", None)
        if old is None or inc is None or inc == old:
            return
        self._manager_inc = inc
        self._refresh_manager_pid()
        try:
            body = {"host": self.host, "pid": os.getpid()}
            if self._inject_asked is not None:
                body["inject"] = self._inject_asked
            hello = self._client.request("HELLO", body, retry=True)
            sid = hello.get("session") if isinstance(hello, dict) else None
            self.session_id = int(sid) if is_int(sid) else None
            self._manager_inc = self._client.peer_incarnation
        except (FabricError, zmq.ZMQError, OSError):
            pass    # the next reply from the new manager tries again

    def _device_path(self, device: str) -> str:
        return self._devices[device]["path"]

    def _attach(self, reply: Any, policy: str | None) -> Region:
        """A Region for the manager's ``reply``, registered with this host's engine
        (once per region, while a handle of it is open)."""
        desc = RegionDescriptor.from_wire(reply)
        if desc.id not in self._registered:
            self._register(desc, self.policy if policy is None else policy)
        region = Region(desc, session=self, charge=self._engine.access,
                        device_path=self._device_path, on_close=self._region_closed)
        if desc.mirrored:
            from .mirror import MirrorCopies
            region._use_mirror(MirrorCopies(region, self.state.mirror_state_path(desc.id),
                                            self._engine.access, self._mirror_stats))
        self._handles.setdefault(desc.id, weakref.WeakSet()).add(region)
        return region

    def _reachable(self, devices: list[str]) -> bool:
        """Every device up and no link of this host's path to it cut (the engine
        segment's fault state; no charge)."""
        seg = self._engine.segment
        hi = self._engine.host_index
        paths = self._params["paths"][hi]
        for d in devices:
            j = self._dev_index[d]
            if seg.device_state(j) != "up":
                return False
            if any(seg.link_faults(li)["state"] == "cut" for li in paths[j].get("links", ())):
                return False
        return True

    def _register(self, desc: RegionDescriptor, policy: str) -> None:
        if len(self._registered) >= self.max_regions:
            self._reclaim_slots()
        if len(self._registered) >= self.max_regions:
            raise ResourceExhausted(
                f"host {self.host}'s engine already holds its maximum of {self.max_regions} "
                f"open regions; close regions you no longer use, or raise the limit (the "
                f"topology file's [engine] max_regions, or connect(..., max_regions=N))")
        page = self.page_size_bytes
        versions = self.state.versions_path(desc.id) if desc.share != "private" else None
        self._engine.register_region(
            desc.id, npages=desc.mapped_bytes // page,
            device_indices=[self._dev_index[d] for d in desc.devices],
            stripe_pages=desc.stripe_bytes // page, policy=policy,
            promote_after=self.promote_after, share=desc.share, versions_path=versions,
            device_offsets=list(desc.offsets), address=desc.address, name=desc.name)
        if desc.mirrored:                 # the second copy: its own engine region
            from .mirror import MIRROR_ID_BIT
            try:
                self._engine.register_region(
                    desc.id | MIRROR_ID_BIT, npages=desc.mapped_bytes // page,
                    device_indices=[self._dev_index[d] for d in desc.mirror_devices],
                    stripe_pages=desc.stripe_bytes // page, policy=policy,
                    promote_after=self.promote_after, share=desc.share,
                    versions_path=(self.state.mirror_versions_path(desc.id) if versions
                                   else None),
                    device_offsets=list(desc.mirror_offsets), address=desc.address,
                    name=f"{desc.name} (second copy)")
            except BaseException:
                self._engine.unregister_region(desc.id)
                raise
            self._mirrored.add(desc.id)
        self._registered[desc.id] = desc.name

    def _unregister(self, region_id: int, why: str = "is closed") -> None:
        """Give back the engine slot of ``region_id``; its handles here stop working."""
        for r in list(self._handles.pop(region_id, ())):
            r._invalidate(RegionNotFound(f"region {r.name!r} {why}"))
        if self._registered.pop(region_id, None) is not None and not self._closed:
            self._engine.unregister_region(region_id)
            if region_id in self._mirrored:
                from .mirror import MIRROR_ID_BIT
                self._engine.unregister_region(region_id | MIRROR_ID_BIT)
        self._mirrored.discard(region_id)

    def _region_closed(self, region: Region) -> None:
        """A handle was closed: release the slot if it was the region's last open one."""
        handles = self._handles.get(region.id)
        if handles is not None:
            handles.discard(region)
            if not handles:
                self._unregister(region.id)

    def _reclaim_slots(self) -> None:
        """Free engine slots: first of regions freed elsewhere (the manager no longer
        lists them), then of regions whose handles were all dropped without close()."""
        live = {d.get("id") for d in self._request("LIST")["regions"] if isinstance(d, dict)}
        for rid in [rid for rid in self._registered if rid not in live]:
            self._unregister(rid, "was freed by its owner")
        for rid in [rid for rid in self._registered if not self._handles.get(rid)]:
            self._unregister(rid)

    # -- regions ------------------------------------------------------------
    def alloc(self, name: str, nbytes: int, *, placement: str = DEFAULT_PLACEMENT,
              devices: Iterable[str] | str | None = None, granularity: int | None = None,
              share: str = DEFAULT_SHARE, allow: Iterable[str] | str | dict | None = None,
              policy: str | None = None, mirror: int = 1) -> Region:
        """Allocate ``nbytes`` of pooled memory as region ``name``; this host owns it.

        placement: "local" (a device homed on this host if one has room, else
        the emptiest), "interleave" (striped over ``devices``, default all, in
        ``granularity``-byte stripes, default 64 KiB), or a device name.
        share: "private" (only this host), "shared" (others read; ``allow``
        may grant "rw"), "coherent" (allowed hosts read and write).
        allow: hosts that may open it: a host name, a list of them, or a map
        host -> "r" | "rw".
        policy: how this host caches it: "cache" (far pages cached in local
        DRAM on a miss), "direct" (every access pays the far cost, like CXL
        load/store), "promote" (cached after ``promote_after`` touches);
        default: the session's.
        mirror: 1, or 2 for two copies on devices homed on different nodes:
        declared writes go to both, declared reads fail over to the second
        copy while the first's device is unreachable, and a copy that missed
        writes is resynchronised once both are reachable (fabric.mirror;
        PoolFull when no other node has room).
        Sizes are ints (numpy integers too) below 2**64.  The region takes one
        of this host's ``max_regions`` engine slots until it is closed or freed.
        """
        self._check_open()
        name = str_arg(name, "name")
        nbytes = int_arg(nbytes, "nbytes", 1, U64_MAX)
        placement = str_arg(placement, "placement ('local', 'interleave' or a device name)")
        share = choice_arg(share, "share", SHARE_MODES)
        if devices is not None:
            devices = names_arg(devices, "devices")
        if granularity is not None:
            granularity = int_arg(granularity, "granularity", 1, U64_MAX)
        if allow is not None:
            allow = _allow_arg(allow)
        _check_policy(policy)
        if isinstance(mirror, bool) or not is_int(mirror) or int(mirror) not in (1, 2):
            raise InvalidArgument(f"mirror must be 1 (one copy) or 2 (two copies on different "
                                  f"nodes), got {mirror!r}")
        body = {"name": name, "nbytes": nbytes, "placement": placement, "share": share,
                "devices": devices, "granularity": granularity, "allow": allow}
        if int(mirror) == 2:
            body["mirror"] = 2
        reply = self._request("ALLOC", body)
        try:
            return self._attach(reply, policy)
        except BaseException:
            self._request("FREE", {"name": name})  # do not leave an unusable region behind
            raise

    def open(self, name: str, *, policy: str | None = None) -> Region:
        """Open an existing region (AccessDenied if this host is not allowed).

        Every open returns a new handle; the region holds one engine slot
        however many handles of it are open here.
        """
        self._check_open()
        name = str_arg(name, "name")
        _check_policy(policy)
        return self._attach(self._request("OPEN", {"name": name}), policy)

    def free(self, name: str) -> None:
        """Free a region this host owns.  Its memory is zeroed before reuse; its
        handles in this session are closed and its engine slot released."""
        self._check_open()
        name = str_arg(name, "name")
        self._request("FREE", {"name": name})
        for rid in [rid for rid, n in self._registered.items() if n == name]:
            self._unregister(rid, "was freed")

    def regions(self) -> list[dict]:
        """Descriptors (as dicts) of the regions this host may open."""
        self._check_open()
        return self._request("LIST")["regions"]

    def translate(self, address: int) -> tuple[str, int]:
        """(device, offset in device) of a global address (an int below 2**64)."""
        self._check_open()
        r = self._request("TRANSLATE", {"address": int_arg(address, "address", 0, U64_MAX)})
        return r["device"], r["offset"]

    # -- the engine -------------------------------------------------------------
    def stats(self) -> dict:
        """This host's access figures since the cluster started: locality by tier,
        hit rate, per-device counters, latency percentiles (ns; None before the
        first call) and their histogram (``latency_hist``), virtual time, page
        cache occupancy; see docs/cost-model.md.

        Counters only grow.  To scope figures to part of a workload, keep the
        result from before it and call ``fabric.engine.stats.diff(before,
        session.stats())``.
        """
        self._check_open()
        return {"host": self.host, "inject": self.inject, **self._engine.stats(),
                "mirror": dict(self._mirror_stats)}

    @property
    def virtual_time_ns(self) -> int:
        """This host's virtual clock (advanced by every charge in virtual mode)."""
        self._check_open()
        return self._engine.virtual_time_ns

    def parked(self):
        """Lockstep (docs/cost-model.md, "Time bases"): ``with session.parked(): ...``
        around a wait outside the engine (a queue, a socket, a sleep), so this host
        does not hold the others back meanwhile.  Not reproducible: afterwards the
        clock jumps to the latest running host's.  fabric.sync.Barrier parks by itself."""
        self._check_open()
        return self._engine.parked()

    def _lockstep_engine(self):
        """The engine when it runs in lockstep (fabric.sync parks it at barriers), else None."""
        return self._engine if not self._closed and self._engine.lockstep_ns else None

    @property
    def closed(self) -> bool:
        return self._closed

    def _bye(self) -> None:
        """Tell the manager this session is over; a dead or old manager is ignored."""
        sid = getattr(self, "session_id", None)
        if sid is None or (self._manager_pid and not _running(self._manager_pid)):
            return
        try:
            self._client.request("BYE", {"session": sid},
                                 timeout_ms=min(BYE_TIMEOUT_MS, self._client.timeout_ms))
        except (FabricError, zmq.ZMQError, OSError):
            pass

    def close(self) -> None:
        """Detach from the fabric: close every region handle, release the engine,
        say BYE to the manager.  Closing twice is harmless."""
        if self._closed:
            return
        self._closed = True
        why = SessionClosed(f"the session of host {self.host} is closed")
        for handles in self._handles.values():
            for r in list(handles):
                r._invalidate(why)
        self._handles.clear()
        self._registered.clear()
        try:
            self._engine.close()
        finally:
            self._bye()
            self._client.close()

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check_policy(policy: Any) -> None:
    if policy is not None:
        choice_arg(policy, "policy", POLICIES)


def _allow_arg(allow: Any) -> list[str] | dict[str, str]:
    """Hosts that may open a region: a host name, names, or a map host -> "r" | "rw"."""
    if isinstance(allow, dict):
        for h, mode in allow.items():
            if not isinstance(h, str) or not isinstance(mode, str) or mode not in ACCESS_MODES:
                raise InvalidArgument(f"allow must map host names to 'r' or 'rw', "
                                      f"got {h!r}: {mode!r}")
        return dict(allow)
    return names_arg(allow, "allow")


def _lockstep_options(asked: dict, options: dict, inject: str) -> dict:
    """The Engine's lockstep keywords: what connect() asked for, else the cluster's
    options (`fabric up --lockstep-ns`; only when this session runs virtual)."""
    out = {k: v for k, v in asked.items() if v is not None}
    if "lockstep_ns" not in out and inject == "virtual" and options.get("lockstep_ns"):
        out["lockstep_ns"] = options["lockstep_ns"]
        if options.get("lockstep_hosts") and "lockstep_hosts" not in out:
            out["lockstep_hosts"] = options["lockstep_hosts"]
    return out


def _read_calibration(state: StateDir) -> dict | None:
    try:
        with open(state.calibration_file, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def connect(host: str, state_dir: str | os.PathLike | None = None, *,
            timeout_ms: int = DEFAULT_TIMEOUT_MS, inject: str | None = None,
            policy: str = DEFAULT_POLICY, eviction: str = DEFAULT_EVICTION,
            promote_after: int = DEFAULT_PROMOTE_AFTER,
            max_regions: int | None = None, threads: int | None = None,
            lockstep_ns: int | bool | None = None, lockstep_hosts: int | None = None,
            lockstep_timeout_ms: int | None = None) -> Session:
    """Attach the calling process as emulated host ``host`` of the cluster in ``state_dir``.

    ``state_dir`` defaults to $FABRIC_STATE_DIR, then /dev/shm/cxl-fabric-<uid>.
    ``inject`` overrides the cluster's injection mode for this process: "off"
    (count only), "virtual" (advance a virtual clock), "spin" (really wait).
    ``policy`` is the default caching policy of this host's regions, and
    ``eviction`` its page cache's eviction policy ("clock", "lru", "fifo").
    ``max_regions`` overrides, for this process, how many regions the host's
    engine holds at once (default: the topology file's ``[engine]
    max_regions``, else 1,024).  ``threads`` sets how many cores of this host
    issue misses (the cost model's memory-level parallelism is ``mlp_lines`` x
    ``threads`` cache lines per device; default: the topology's host table, then
    its ``[engine] threads``, else 24; docs/cost-model.md).
    ``lockstep_ns`` (virtual mode only) makes this host one of a lockstep group
    of ``lockstep_hosts`` hosts (default: every host of the topology) whose
    virtual clocks advance in quanta of that many ns, so multi-process runs
    repeat exactly for a seed (``True``: the default 10 us quantum; default:
    the cluster's ``fabric up --lockstep-ns``); ``lockstep_timeout_ms`` bounds
    each lockstep wait (docs/cost-model.md, "Time bases").

    Raises ClusterError when there is no cluster, ResourceExhausted when the
    process is out of file descriptors, InvalidArgument for a bad argument.
    """
    if inject is not None:
        choice_arg(inject, "inject", INJECT_MODES)
    _check_policy(policy)
    choice_arg(eviction, "eviction", EVICTIONS)
    promote_after = int_arg(promote_after, "promote_after", 1, 2**32 - 1)
    if not isinstance(host, str) or not host:
        raise InvalidArgument(f"host must be a host name such as 'h0', got {host!r}")
    timeout_ms = int_arg(timeout_ms, "timeout_ms", 1, MAX_TIMEOUT_MS)
    if max_regions is not None:
        max_regions = int_arg(max_regions, "max_regions", *_MAX_REGIONS_RANGE)
    if threads is not None:
        threads = int_arg(threads, "threads", *ENGINE_KNOBS["threads"][2:4])
    if state_dir is not None:
        if not isinstance(state_dir, (str, os.PathLike)):
            raise InvalidArgument(f"state_dir must be a path, got {state_dir!r}")
        state_dir = os.fspath(state_dir)
        if not isinstance(state_dir, str):
            raise InvalidArgument(f"state_dir must be a str path, got {state_dir!r}")
    state = StateDir(state_dir)
    doing = f"connecting to the cluster in {state.path}"
    if not os.path.exists(state.cluster_file):
        raise ClusterError(f"no cluster in {state.path} (start one with `fabric up`)")
    _reserve_fds(_CONNECT_FDS, doing)
    info = state.read()
    try:
        return Session(host, state, info, timeout_ms, inject=inject, policy=policy,
                       eviction=eviction, promote_after=promote_after, max_regions=max_regions,
                       threads=threads,
                       lockstep={"lockstep_ns": lockstep_ns, "lockstep_hosts": lockstep_hosts,
                                 "lockstep_timeout_ms": lockstep_timeout_ms})
    except NativeError as exc:
        _reserve_fds(1, doing)  # a C call that failed for want of a descriptor: say so
        raise exc
    except FabricError:
        raise
    except (zmq.ZMQError, OSError) as exc:
        raise _os_failure(exc, doing) from None
