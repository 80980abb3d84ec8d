"""The emulation engine: what every access to pooled memory costs one emulated host.

An :class:`Engine` is one host's page cache, regions and cost model (the C core
in ``csrc/``; docs/cost-model.md explains the model).  The client declares each
access with :meth:`Engine.access` -- one C call per range, however many pages
-- and gets back the modelled cost in ns.  Depending on ``mode`` the engine
only counts (``"off"``), advances a per-host virtual clock (``"virtual"``,
reproducible: same seed and trace, bit-identical counters and histograms; for
hosts in several processes with ``lockstep_ns``), or really waits (``"spin"``).

Link and device contention, counters and latency histograms live in a shared
segment (a file made once per cluster with :func:`create_shared_state`), so
hosts in different processes slow each other down and any process can read
the figures live with :func:`read_shared_stats` (:mod:`fabric.engine.stats` holds
the figures' functions: :func:`~fabric.engine.stats.cluster_stats` for the
whole cluster, :func:`~fabric.engine.stats.diff` to scope them to an interval).

    params = topology.engine_params()
    create_shared_state(path, params)
    with Engine(params, "h0", mode="virtual", shared_path=path) as e:
        e.register_region(7, npages=256, device_indices=[0, 1], stripe_pages=16)
        ns = e.access(7, 0, 1 << 20, write=False)
        print(e.stats()["latency_ns_p99"])
"""
from __future__ import annotations

import contextlib
import os
import platform
import time
from typing import Iterator

from .._binding import engine as _b
from .._binding.engine import CachePinned, Histogram, SharedStateMismatch
from ..constants import DEFAULT_LOCKSTEP_NS, DEFAULT_LOCKSTEP_TIMEOUT_MS
from ..errors import InvalidArgument
from .stats import PERCENTILES, cluster_stats, host_stats, read_shared_stats

__all__ = ["Engine", "Histogram", "create_shared_state", "read_shared_stats", "cluster_stats",
           "calibrate", "engine_params_for_test", "CachePinned", "SharedStateMismatch", "MODES",
           "POLICIES", "EVICTIONS", "SHARES", "PERCENTILES"]

MODES = tuple(_b.MODES)
POLICIES = tuple(_b.POLICIES)
EVICTIONS = tuple(_b.EVICTIONS)
SHARES = tuple(_b.SHARES)


def engine_params_for_test(hosts: int = 1, devices: int = 1, *, cache_pages: int = 64,
                           page_size_bytes: int = 4096, read_ns: float = 226.0,
                           write_ns: float | None = None, hop_ns: float = 0.0,
                           device_bandwidth_gbps: float = 26.8, link_bandwidth_gbps: float = 31.5,
                           link_latency_ns: float = 0.0, local_dram_ns: float = 90.0,
                           local_bandwidth_gbps: float = 116.0, jitter: dict | None = None,
                           device_curve: dict | None = None, link_curve: dict | None = None,
                           tier: str = "far", engine: dict | None = None) -> dict:
    """A small params dict: hosts h0.. and devices d0.. joined through one switch.

    Links: ``h<i>-sw`` (host uplinks, indices 0..hosts-1), then ``sw-d<j>``
    (device links, indices hosts..hosts+devices-1); the path from host i to
    device j crosses [i, hosts + j], so all hosts share device j's link.  Path
    latency is ``read_ns + hop_ns`` (``write_ns`` defaults to ``read_ns``).
    """
    write_ns = read_ns if write_ns is None else write_ns
    links = ([{"name": f"h{i}-sw", "bandwidth_gbps": link_bandwidth_gbps,
               "latency_ns": link_latency_ns, "curve": link_curve} for i in range(hosts)] +
             [{"name": f"sw-d{j}", "bandwidth_gbps": link_bandwidth_gbps,
               "latency_ns": link_latency_ns, "curve": link_curve} for j in range(devices)])
    params = {
        "page_size_bytes": page_size_bytes,
        "hosts": [{"name": f"h{i}", "dram_cache_bytes": cache_pages * page_size_bytes,
                   "local_dram_ns": local_dram_ns, "local_bandwidth_gbps": local_bandwidth_gbps}
                  for i in range(hosts)],
        "devices": [{"name": f"d{j}", "read_ns": read_ns, "write_ns": write_ns,
                     "bandwidth_gbps": device_bandwidth_gbps,
                     "jitter": dict(jitter) if jitter else {"kind": "none"},
                     "curve": device_curve} for j in range(devices)],
        "links": links,
        "paths": [[{"latency_read_ns": read_ns + hop_ns, "latency_write_ns": write_ns + hop_ns,
                    "bandwidth_gbps": min(device_bandwidth_gbps, link_bandwidth_gbps),
                    "links": [i, hosts + j], "tier": tier} for j in range(devices)]
                  for i in range(hosts)],
    }
    if engine:
        params["engine"] = dict(engine)
    return params


def create_shared_state(path: str, params: dict) -> None:
    """Create (or reset to zero) the shared engine segment at ``path``, sized from ``params``.

    Call once at cluster start, before any engine attaches: resetting a
    segment that engines have mapped would pull it out from under them.
    """
    _b.seg_create(os.fspath(path), params)


def calibrate() -> dict:
    """Measure this machine (about a second): local DRAM latency and bandwidth,
    the cost of a clock read and of one engine call.  Store the result (the
    cluster keeps it as calibration.json) and pass it to ``Engine(calibration=...)``.
    """
    t0 = time.perf_counter()
    dram_ns = _b.calib_chase(64 << 20, 2_000_000)
    bw_gbps = _b.calib_bandwidth(128 << 20, 3)
    clock_ns = _b.calib_clock(200_000)
    overshoot_ns = _b.calib_spin(2_000, 500)
    params = engine_params_for_test(cache_pages=0)
    with Engine(params, "h0", mode="off") as e:
        e.register_region(1, npages=1, device_indices=[0], stripe_pages=1, policy="direct")
        access = e.access
        n = 20_000
        for _ in range(1000):
            access(1, 0, 64, False)
        t = time.perf_counter_ns()
        for _ in range(n):
            access(1, 0, 64, False)
        call_ns = (time.perf_counter_ns() - t) / n
    return {"version": 1, "local_dram_ns": round(dram_ns, 2),
            "local_bandwidth_gbps": round(bw_gbps, 2), "clock_read_ns": round(clock_ns, 2),
            "spin_overshoot_ns": round(overshoot_ns, 2), "call_overhead_ns": round(call_ns, 2),
            "machine": platform.node(), "measured_unix_s": round(time.time(), 3),
            "took_s": round(time.perf_counter() - t0, 3)}


class Engine:
    """One emulated host's engine: page cache, regions, cost model, injection.

    Not thread-safe; one per host per process.  ``shared_path`` names the
    segment made by :func:`create_shared_state` (hosts in other processes
    then contend with this one); ``None`` gives a private in-memory segment.
    ``calibration`` (from :func:`calibrate`) lets spin mode subtract the real
    cost of entering the engine.  ``page_pass=True`` turns off the resident
    summary (a read of a wholly cached, current range priced from per-region
    counts): every access then visits its pages one by one.  The results are
    identical either way; it exists for benchmarks and tests.

    Lockstep (virtual mode only; docs/cost-model.md, "Time bases"):
    ``lockstep_ns=Q`` makes this host one of a group of ``lockstep_hosts``
    hosts (default: every host of ``params``) sharing ``shared_path`` whose
    virtual clocks advance in quanta of Q ns: an access waits until the group
    is complete and every other running member has reached the start of this
    host's quantum, and contention is read from the others' values as of that
    quantum boundary, so a run is reproducible for a seed whatever the OS
    scheduling.  ``lockstep_ns=True`` picks the default quantum (10 us).  A wait
    lasts at most ``lockstep_timeout_ms`` (then LockstepTimeout naming who held
    it back; 0: never wait, fail at once -- for tests that drive several hosts
    from one thread, least virtual clock first).  A host that must wait on something outside the engine parks
    first (:meth:`parked`).  One lockstep host per thread: hosts driven by one
    thread cannot wait for each other (LockstepTimeout at once).
    """

    def __init__(self, params: dict, host: str, *, mode: str = "virtual", seed: int = 0,
                 shared_path: str | None = None, eviction: str = "clock",
                 calibration: dict | None = None, page_pass: bool = False,
                 lockstep_ns: int | bool = 0, lockstep_hosts: int | None = None,
                 lockstep_timeout_ms: int = DEFAULT_LOCKSTEP_TIMEOUT_MS):
        if lockstep_ns is True:
            lockstep_ns = DEFAULT_LOCKSTEP_NS
        elif lockstep_ns is False:
            lockstep_ns = 0
        entry_ns = float((calibration or {}).get("call_overhead_ns", 0.0))
        self._params = params
        self.host = host
        self.mode = mode
        self.eviction = eviction
        self.seed = seed
        self._n: _b.NativeEngine | None = _b.NativeEngine(
            params, host, mode=mode, seed=seed,
            shared_path=os.fspath(shared_path) if shared_path is not None else None,
            eviction=eviction, spin_entry_ns=entry_ns, page_pass=bool(page_pass),
            lockstep_ns=lockstep_ns, lockstep_hosts=lockstep_hosts,
            lockstep_timeout_ms=lockstep_timeout_ms)
        #: The lockstep quantum in ns (0: free-running).
        self.lockstep_ns: int = self._n.lockstep_ns
        self.host_index = self._n.host_index
        self.page_size_bytes = self._n.page_size_bytes
        self.cache_pages = self._n.cache_pages
        # The hot path: skip one Python frame (the binding checks for "closed" itself).
        self.access = self._n.access  # type: ignore[method-assign]

    def __repr__(self) -> str:
        return (f"<Engine host={self.host} mode={self.mode} eviction={self.eviction} "
                f"cache_pages={self.cache_pages}{' closed' if self._n is None else ''}>")

    def _native(self) -> _b.NativeEngine:
        if self._n is None:
            raise InvalidArgument("the engine is closed")
        return self._n

    # -- regions -------------------------------------------------------------
    def register_region(self, region_id: int, *, npages: int, device_indices: list[int],
                        stripe_pages: int, policy: str = "cache", promote_after: int = 2,
                        share: str = "private", versions_path: str | None = None,
                        device_offsets: list[int] | None = None,
                        address: int | None = None, name: str | None = None) -> None:
        """Declare a region: page p lives on
        ``device_indices[(p // stripe_pages) % len(device_indices)]``; its cache key
        is ``(region_id << 32) | p``.  ``policy``: "cache" | "direct" | "promote";
        ``share``: "private" | "shared" | "coherent" (the last two need
        ``versions_path``, a file every host of the region passes; it is created
        and sized on first use, 8 bytes per page).  ``device_offsets`` (one per
        device index, where the region's extent starts on that device, as the
        descriptor's ``offsets``) lets declared reads see poisoned pages, and
        ``address`` (the global base) lets a PoisonError name the global address;
        ``name`` is what fault errors call the region.
        """
        nd = len(self._params["devices"])
        for d in device_indices:
            if isinstance(d, bool) or not isinstance(d, int) or not 0 <= d < nd:
                raise InvalidArgument(f"device index {d!r} out of range (0..{nd - 1})")
        n = self._native()
        n.region_add(region_id, npages, list(device_indices), stripe_pages, policy,
                     promote_after, share, os.fspath(versions_path) if versions_path else None)
        if device_offsets is not None:
            try:
                n.region_place(region_id, list(device_offsets), address, name)
            except BaseException:
                n.region_remove(region_id)
                raise

    def unregister_region(self, region_id: int) -> None:
        """Drop the region's cached pages, writing back (and charging) the dirty ones."""
        self._native().region_remove(region_id)

    # -- the access path -----------------------------------------------------
    def access(self, region_id: int, offset_bytes: int, nbytes: int, write: bool) -> int:
        """Charge one access of ``nbytes`` at ``offset_bytes``; returns the modelled ns.

        One C call whatever the size.  Raises RegionNotFound for an unknown
        region, InvalidArgument for a range outside it, CachePinned when the
        page cache would need a frame and every frame is pinned.  While a
        fault is in force (docs/faults.md) it raises NodeUnavailable (a device
        of the range is unavailable), DeviceFailed, LinkDown (a link on this
        host's path to one is cut) or, for a read, PoisonError; a failed access
        charges nothing and changes no state.
        """
        if self._n is None:
            raise InvalidArgument("the engine is closed")
        return self._n.access(region_id, offset_bytes, nbytes, write)

    def advance(self, ns: int) -> None:
        """Let ``ns`` of host compute pass: the virtual clock moves (spin mode waits)."""
        self._native().advance(ns)

    @property
    def virtual_time_ns(self) -> int:
        """This host's virtual clock: every charge (and advance) so far, in ns."""
        return self._native().virtual_time_ns()

    # -- lockstep ------------------------------------------------------------------
    def park(self) -> None:
        """Stop holding the other lockstep hosts back, before waiting on something
        outside the engine (a queue, a socket, a sleep).  Waits first for the others
        to reach this host's quantum (LockstepTimeout past the deadline).  Accesses
        and advances are refused while parked.  No-op when already parked."""
        self._lockstep().lockstep_park()

    def unpark(self) -> None:
        """Take part again.  The clock jumps to the latest clock of the running
        members (or to the clock a release gave): how long the outside wait lasted
        in virtual time depends on real time, so such waits are not reproducible
        (a fabric.sync.Barrier is: it releases everyone at the last arrival's clock)."""
        self._lockstep().lockstep_unpark()

    @contextlib.contextmanager
    def parked(self) -> Iterator[None]:
        """``with engine.parked(): queue.get()`` -- park for the block, unpark after."""
        self.park()
        try:
            yield
        finally:
            self.unpark()

    def lockstep_release(self, host_indices: list[int], clock_ns: int) -> None:
        """Set the listed parked hosts running at virtual time ``clock_ns`` (the last
        arrival of a barrier releases everyone at the latest arrival's clock)."""
        self._lockstep().lockstep_release(list(host_indices), clock_ns)

    def lockstep_info(self) -> dict:
        """The group (generation, size, joined, quantum_ns), this host's state and its
        waits: ``waits`` (that blocked), ``wait_ns`` (real time spent in them)."""
        info = self._lockstep().lockstep_info()
        info.pop("why", None)
        return info

    def lockstep_members(self) -> dict:
        """host -> {"state", "clock_ns", "pid"} of the lockstep group in the segment."""
        return self._native().segment.lockstep_members()

    def _lockstep(self) -> _b.NativeEngine:
        n = self._native()
        if not n.lockstep_ns:
            raise InvalidArgument(f"host {self.host}'s engine does not run in lockstep "
                                  f"(create it with lockstep_ns=...)")
        return n

    # -- page-cache controls -----------------------------------------------------
    def _pages(self, offset_bytes: int, nbytes: int) -> tuple[int, int]:
        if nbytes <= 0 or offset_bytes < 0:
            raise InvalidArgument(f"bad range: offset {offset_bytes}, nbytes {nbytes}")
        ps = self.page_size_bytes
        first = offset_bytes // ps
        return first, (offset_bytes + nbytes - 1) // ps - first + 1

    def pin(self, region_id: int, offset_bytes: int, nbytes: int) -> None:
        """Pin the cached pages of a range (all must be resident): never evicted until unpinned."""
        first, n = self._pages(offset_bytes, nbytes)
        self._native().pin(region_id, first, n, 1)

    def unpin(self, region_id: int, offset_bytes: int, nbytes: int) -> None:
        first, n = self._pages(offset_bytes, nbytes)
        self._native().pin(region_id, first, n, -1)

    def set_frame(self, region_id: int, page: int, address: int) -> None:
        """Attach an opaque frame address to a resident page (for the remote data path)."""
        self._native().set_frame(region_id, page, address)

    def page_state(self, region_id: int, page: int) -> dict:
        """``{"resident", "dirty", "version", "pins"}`` of one page in this host's cache."""
        r = self._native().page_state(region_id, page)
        return {"resident": bool(r[0]), "dirty": bool(r[1]), "version": r[2], "pins": r[3]}

    @property
    def segment(self) -> "_b.Segment":
        """The shared segment this engine maps (counters, histograms, fault state)."""
        return self._native().segment

    def loaded_latency_ns(self, device_index: int, write: bool = False) -> float:
        """The latency a read (or write) to the device would see now, without jitter."""
        return self._native().loaded_latency(device_index, write)

    def local_dram(self) -> dict:
        """This host's local DRAM as a contended element (docs/cost-model.md, "DRAM"):
        ``{"latency_ns"}`` a hit pays at the load now (idle latency plus the rise of
        the host's DRAM curve at the load of every engine attached as this host),
        ``{"share_gbps"}`` this engine's share of the host's local bandwidth, and
        ``{"slot"}`` the segment slot it publishes its load in (None: all taken)."""
        return self._native().dram_state()

    def check_consistency(self) -> None:
        """Walk the page cache and the engine's bookkeeping in C (fab_engine_check:
        index and frames agree, lists well formed, per-region page counts right).
        Raises NativeError if something is broken.  O(cache frames): for tests."""
        self._native().check()

    # -- figures -------------------------------------------------------------------
    def histogram(self) -> Histogram:
        """A snapshot of this host's latency histogram (charged ns per access call)."""
        return self._native().segment.hist(self.host_index)

    def stats(self) -> dict:
        """This host's figures: totals and per-device counters, tiers (share of
        bytes), hit rate, latency_ns_p50/p90/p99/p999/min/max/mean (per access
        call; None before the first call), latency_hist (the non-empty buckets),
        virtual_time_ns, and the page cache's occupancy.  Counters only grow;
        :func:`fabric.engine.stats.diff` gives the figures between two calls."""
        n = self._native()
        out = host_stats(n.segment, self._params, self.host_index)
        out["virtual_time_ns"] = n.virtual_time_ns()
        cap, used, pinned, regions = n.cache_info()
        out.update(mode=self.mode, eviction=self.eviction,
                   cache={"capacity_pages": cap, "used_pages": used, "pinned_pages": pinned,
                          "regions": regions})
        if n.lockstep_ns:
            out["lockstep"] = self.lockstep_info()
        return out

    # -- lifetime ------------------------------------------------------------------
    def close(self) -> None:
        if self._n is not None:
            self._n.close()
            self._n = None

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
