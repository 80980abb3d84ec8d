"""The fabric manager: membership, heartbeats, capacity and the region directory.

One per cluster, single-threaded, run as ``python -m fabric.daemons.manager
--state-dir DIR [--owner-pid PID]``.  It knows the topology (from
cluster.json), which node daemons are alive (REGISTER, then a HEARTBEAT
``MISSED_BEATS`` times per node timeout, the cluster's ``node_timeout_ms``,
1 s by default; a node silent for the timeout is unavailable, and a new
incarnation means a restart), the free extents of every device,
the client sessions and the region directory.

The package splits the work:

- :mod:`.commands` -- one class per request; each docstring is its wire spec;
- :mod:`.directory` -- the regions, their address index, ids and global
  addresses (every mutation goes through :class:`~.directory.Directory`);
- :mod:`.placement` -- planning and placing an ALLOC over the per-device
  extent allocators (:mod:`fabric.daemons.alloc`);
- :mod:`.scrub` -- extents being zeroed by their node before reuse;
- :mod:`.sessions` -- HELLO/BYE sessions, pruned when their process is gone;
- :mod:`.journal` -- the directory on disk: every change is journaled and
  fsynced before its reply, recovered when a manager starts, and a manager
  replaced by a newer one is fenced off;
- this module -- the :class:`Manager` daemon: wiring, timers and ``main``.

A restarted manager (kill -9 and a new one, ``fabric fault restart manager``,
or ``fabric down --keep-memory`` then ``fabric up``) rebuilds the directory,
the id and address counters, the allocators and the pending scrubs from the
journal, and answers a retried ALLOC or FREE (same idempotency key) with the
reply of the original.  Sessions are not journaled: a client says HELLO again
when it sees a new manager incarnation.

Memory nobody owns is never handed out unscrubbed: freed extents are scrubbed
(SCRUB to the device's home node) before they return to the allocator, and
every byte of a device file a node reattached (``fabric down --keep-memory``
then ``up``, a crash, or a manager restart) that no recovered region owns is
scrubbed before the first allocation that could use it.  An ALLOC that has
to wait for a scrub waits (up to its deadline) instead of failing.  The
protocol as a whole is in docs/protocol.md.
"""
from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import psutil
import zmq

from fabric import protocol
from fabric.protocol import ZMQ_NOBLOCK, recv_frames
from fabric.constants import DEFAULT_NODE_TIMEOUT_MS, MISSED_BEATS
from fabric.daemons.alloc import ExtentAllocator
from fabric.daemons.base import (DEFERRED, ZMQ_EVENTS, ZMQ_POLLIN, Daemon, Ping, Request,
                                 Shutdown, base_argparser, run_main, setup_logging)
from fabric.descriptor import RegionDescriptor
from fabric.errors import FabricError, InvalidArgument, NodeUnavailable, PoolFull, RegionExists
from fabric.statedir import StateDir
from fabric.topology import Topology

from .commands import (Alloc, Bye, Free, Heartbeat, Hello, ListRegions, Open, Register, Status,
                       Translate, idempotency_key)
from .devstate import DeviceStates
from .directory import Directory
from .journal import SNAPSHOT_EVERY, Fenced, Journal, JournalCorrupt
from .placement import Placer
from .scrub import INITIAL_CHUNK_BYTES, Scrub, ScrubTracker
from .sessions import SessionTable

#: Replies held for one group commit at most: a long burst syncs and answers every this
#: many requests, so the first of a burst does not wait for the whole of it.
GROUP_COMMIT_MAX = 8

#: A deferred ALLOC waits at most this long, at most 90% of its ttl, and gives
#: up at least DEFER_MARGIN_S before its sender does (so the POOL_FULL arrives).
MAX_DEFER_S = 10.0
DEFER_MARGIN_S = 0.25
#: How long a node has to answer one SCRUB.
SCRUB_TTL_MS = 60_000
#: Idempotency keys (with their replies) remembered, most recent first; a client
#: retries only within its request's deadline, so a few thousand is plenty.
MAX_REPLIES = 2048
#: Set to "1" to run the manager without a journal: the baseline of the journal's
#: cost in scripts/bench_faults.py, nothing else (no region survives a restart).
NO_JOURNAL_ENV = "FABRIC_NO_JOURNAL"
#: Records between two snapshots of the journal (default journal.SNAPSHOT_EVERY); a
#: small value makes tests go through compaction often.
SNAPSHOT_EVERY_ENV = "FABRIC_JOURNAL_SNAPSHOT_EVERY"
#: How often an idle manager checks it has not been replaced (fencing).
FENCE_CHECK_S = 0.2

__all__ = ["Manager", "NodeState", "main"]


@dataclass
class NodeState:
    """What the manager knows of one node daemon."""

    name: str
    is_host: bool
    devices: list[str]
    alive: bool = False
    pid: int | None = None
    incarnation: int | None = None
    endpoint: str | None = None
    last_beat: float = 0.0
    sock: zmq.Socket | None = None      # DEALER to the node (scrubs)


@dataclass
class WaitingAlloc:
    """An ALLOC answered later, once a scrub frees what it needs (or at its deadline)."""

    deadline: float
    req: Request
    args: tuple
    key: tuple | None = None


def topology_fingerprint(topology: Topology) -> list:
    """What a journal must match to be recovered: the page size and every device."""
    return [topology.page_size_bytes,
            [[d.name, d.capacity_bytes, d.home] for d in topology.devices]]


class Manager(Daemon):
    commands = (Ping, Shutdown, Register, Heartbeat, Hello, Bye, Alloc, Open, Free, ListRegions,
                Translate, Status)
    log_name = "manager"

    def __init__(self, state: StateDir, owner_pid: int | None = None):
        info = state.read()
        super().__init__("manager", state, state.manager_endpoint, owner_pid)
        self.started_unix_s = time.time()
        self.started_monotonic = time.monotonic()
        self.topology = Topology.from_dict(info["topology"])
        self.options = info.get("options", {})
        #: A node silent this long is unavailable; nodes beat MISSED_BEATS times in it.
        self.node_timeout_s = int(self.options.get("node_timeout_ms", DEFAULT_NODE_TIMEOUT_MS)) / 1000
        self.heartbeat_interval_s = self.node_timeout_s / MISSED_BEATS
        self.page_size = self.topology.page_size_bytes
        self.nodes = {n.name: NodeState(n.name, n.is_host,
                                        [d.name for d in self.topology.devices_of(n.name)])
                      for n in self.topology.nodes}
        self.allocs = {d.name: ExtentAllocator(d.capacity_bytes, self.page_size)
                       for d in self.topology.devices}
        self.directory = Directory()
        self.placer = Placer(self.topology, self.allocs, self.page_size, self.device_alive,
                             self.device_down_reason)
        self.scrubs = ScrubTracker(self._send_scrub)
        self.sessions = SessionTable()
        #: Replies held during a burst of requests, until its group commit (end_batch).
        self._held: list | None = None
        self.devices_seen: set[str] = set()   # devices some node has registered
        self.waiting: list[WaitingAlloc] = []
        self.device_states = DeviceStates(state, self.topology, self.log)
        #: Requests that met a node not registered yet with this (restarted) manager:
        #: (deadline, request, command, args), run again when a node registers.
        self.awaiting: list[tuple[float, Request, Any, Any]] = []
        #: Idempotency key -> the reply of the ALLOC/FREE that carried it.
        self.replies: OrderedDict[tuple, Any] = OrderedDict()
        every = os.environ.get(SNAPSHOT_EVERY_ENV, "")
        self.journal = Journal(state, self.incarnation,
                               enabled=os.environ.get(NO_JOURNAL_ENV) != "1",
                               snapshot_every=int(every) if every.isdigit() and int(every) > 0
                               else SNAPSHOT_EVERY)
        self.recovered_regions = 0
        self.recover()
        self.every(FENCE_CHECK_S, self.check_fence)
        self.every(self.heartbeat_interval_s / 2, self.check_liveness)
        self.every(0.1, self.expire_waiting)
        self.every(1.0, self.scrubs.resend_overdue)
        self.every(1.0, self.prune_sessions)
        self.bind()

    # -- journal ------------------------------------------------------------
    def recover(self) -> None:
        """Claim the journal and rebuild the directory, allocators and pending scrubs
        from it; then journal every change from here on."""
        try:
            got = self.journal.recover(topology_fingerprint(self.topology))
            regions = [RegionDescriptor.from_wire(r) for r in got.regions]
            for r in regions:
                for i, dev in enumerate(r.devices):
                    self.allocs[dev].reserve(r.offsets[i], r.extent_bytes(i))
                for i, dev in enumerate(r.mirror_devices):   # a mirrored region's second copy
                    self.allocs[dev].reserve(r.mirror_offsets[i], r.extent_bytes(i))
            for (dev, off), (_node, n, _initial) in got.scrubs.items():
                self.allocs[dev].reserve(off, n)
        except (ValueError, KeyError, TypeError, FabricError) as exc:
            if isinstance(exc, JournalCorrupt):
                raise
            raise JournalCorrupt(f"journal in {self.journal.dir} does not describe a "
                                 f"consistent directory ({type(exc).__name__}: {exc}); move "
                                 f"it away to start with an empty directory") from None
        self.directory.load(regions, got.next_id, got.next_address)
        self._drop_stale_versions({r.id for r in regions})
        for (dev, off), (node, n, initial) in got.scrubs.items():
            self.scrubs.add(node, dev, off, n, initial=initial)   # sent once its node registers
        for k, reply in list(got.keys.items())[-MAX_REPLIES:]:
            self.replies[k] = reply
        self.recovered_regions = len(regions)
        if self.journal.enabled:
            self.log.info("journal: recovered %d regions, %d pending scrubs, %d idempotency "
                          "keys (%d log records replayed)", len(regions), len(got.scrubs),
                          len(self.replies), got.records)
        self.directory.journal = self._journal_region
        self.scrubs.journal = self._journal_scrub
        self.journal.state_fn = self.snapshot_state

    def _drop_stale_versions(self, keep: set[int]) -> None:
        """Remove page-version files (versions/<id>.ver) of regions that were not
        recovered: ids count up from the recovered counter, and a new region must
        never start from an old region's versions."""
        try:
            names = os.listdir(self.state.versions_dir)
        except FileNotFoundError:
            return
        for name in names:
            stem, dot, ext = name.partition(".")
            if ext in ("ver", "mirror", "mirror.ver") and stem.isdigit() \
                    and int(stem) not in keep:
                try:
                    os.unlink(os.path.join(self.state.versions_dir, name))
                except FileNotFoundError:
                    pass

    def snapshot_state(self) -> dict:
        """Everything the journal's snapshot holds (see journal.py)."""
        return {"regions": [r.to_wire() for r in self.directory],
                "next_id": self.directory.next_id, "next_address": self.directory.next_address,
                "scrubs": [[s.node, s.device, s.offset, s.nbytes, s.initial]
                           for s in self.scrubs],
                "keys": [[list(k), v] for k, v in self.replies.items()]}

    def _append(self, record: dict) -> None:
        try:
            self.journal.append(record)
        except Fenced as exc:
            self.on_fenced(exc)
            raise

    def _journal_region(self, record: dict) -> None:
        self._append(record)

    def _journal_scrub(self, kind: str, scrubs: list[Scrub]) -> None:
        if kind == "scrub":
            for s in scrubs:
                self._append({"op": "scrub", "device": s.device, "offset": s.offset,
                              "node": s.node, "nbytes": s.nbytes, "initial": s.initial})
        else:       # one record for every extent a SCRUB message zeroed
            self._append({"op": "scrubbed", "extents": [[s.device, s.offset] for s in scrubs]})

    def remember(self, key: tuple | None, reply: Any) -> Any:
        """Keep the reply of an ALLOC/FREE under its idempotency key; returns ``reply``."""
        if key is not None:
            self.replies[key] = reply
            self.replies.move_to_end(key)
            while len(self.replies) > MAX_REPLIES:
                self.replies.popitem(last=False)
        return reply

    def check_fence(self) -> None:
        try:
            self.journal.check_fence()
        except Fenced as exc:
            self.on_fenced(exc)

    def on_fenced(self, exc: Fenced) -> None:
        """Another manager took over: stop at once, answering nothing more."""
        if self.running:
            self.log.error("fenced: %s; this manager stops without acting on the directory",
                           exc)
        self.running = False

    def begin_batch(self) -> None:
        self._held = []
        self.journal.in_burst = True

    def end_batch(self) -> None:
        """Group commit: one fsync (and one fence check) for every change the burst
        made, then its replies, in the order they were made."""
        held, self._held = self._held, None
        self.journal.in_burst = False
        if held:
            self._send_synced(held)

    def reply(self, identity, req_id: int, body, ok: bool = True,
              req: Request | None = None) -> None:
        """Every reply waits for the journal: the changes it acknowledges are fsynced
        first, and a fenced manager sends nothing.  Inside a burst of requests
        (:meth:`begin_batch`) the reply is held until the burst's group commit."""
        if self._held is None:
            self._send_synced([(identity, req_id, body, ok, req)])
            return
        self._held.append((identity, req_id, body, ok, req))
        if len(self._held) >= GROUP_COMMIT_MAX:     # bound the wait of the burst's first
            held, self._held = self._held, []
            self._send_synced(held)

    def _send_synced(self, replies: list) -> None:
        try:
            self.journal.commit()
        except Fenced as exc:
            self.on_fenced(exc)
            return
        except OSError as exc:
            self.log.error("journal fsync failed: %s", exc)
            failed = {"code": "RESOURCE_EXHAUSTED",
                      "message": f"the manager's journal cannot be synced: {exc}"}
            replies = [(i, r, failed, False, q) for i, r, _b, _ok, q in replies]
        for identity, req_id, body, ok, req in replies:
            super().reply(identity, req_id, body, ok, req)

    # -- liveness -----------------------------------------------------------
    def check_liveness(self) -> None:
        limit = self.node_timeout_s
        now = time.monotonic()
        for st in self.nodes.values():
            if st.alive and now - st.last_beat > limit:
                st.alive = False
                self.log.warning("node %s silent for %.2f s (%d beats): marked unavailable",
                                 st.name, limit, MISSED_BEATS)
            # every tick, so a device restored while its node is down turns unavailable
            self.device_states.sync(st.name, st.alive, st.devices)

    def node_back(self, st: NodeState) -> None:
        """A node marked unavailable answered again: it and its devices are up at once
        (not at the next liveness tick: a client told it is alive may use them now)."""
        st.alive = True
        self.device_states.sync(st.name, True, st.devices)

    def device_alive(self, device: str) -> bool:
        """Its node is alive and fault injection has not failed it (placement skips it)."""
        return (self.nodes[self.topology.device(device).home].alive
                and not self.device_states.failed(device))

    def device_down_reason(self, device: str) -> str:
        """Why placement cannot use ``device`` (for NodeUnavailable)."""
        node = self.topology.device(device).home
        if self.nodes[node].alive and self.device_states.failed(device):
            return (f"device {device} has failed (fault injection; `fabric fault heal` or "
                    f"`fabric fault device-restore {device}` brings it back)")
        return f"device {device} is homed on node {node}, which is not alive"

    def register_node(self, node: str, pid: int, inc: int, endpoint: str,
                      devices: list[tuple[str, int, bool]]) -> None:
        """A node (re)registered: connect to it, resend its scrubs, and scrub every
        device it reattached that this manager has not seen before."""
        st = self.nodes.get(node)
        if st is None:
            raise InvalidArgument(f"node {node!r} is not in the topology")
        got = sorted(name for name, _cap, _fresh in devices)
        if got != sorted(st.devices):
            raise InvalidArgument(f"node {node!r} homes {sorted(st.devices)}, not {got}")
        for name, cap, _fresh in devices:
            want = self.topology.device(name).capacity_bytes
            if cap != want:
                raise InvalidArgument(f"device {name} has {cap} bytes on node {node}, "
                                      f"the topology says {want}")
        # A node's endpoint follows from the state dir: anything else is refused before
        # any state changes, so a bad REGISTER cannot lock the real node out.
        expected = self.state.node_endpoint(node)
        if endpoint != expected:
            raise InvalidArgument(f"node {node} must listen on {expected}, not {endpoint!r}")
        sock = self.ctx.socket(zmq.DEALER)
        try:
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(endpoint)
        except zmq.ZMQError as exc:
            sock.close(0)
            raise InvalidArgument(f"node {node}: cannot connect to {endpoint}: {exc}") from None
        restarted = st.incarnation is not None and st.incarnation != inc
        st.alive, st.pid, st.incarnation, st.endpoint = True, pid, inc, endpoint
        st.last_beat = time.monotonic()
        if st.sock is not None:
            self.poller.unregister(st.sock)
            st.sock.close(0)
            self.extra_sockets.pop(st.sock, None)
        st.sock = sock
        self.add_socket(st.sock, lambda sock, st=st: self.on_node_reply(sock, st))
        self.log.info("node %s registered (pid %d, incarnation %d%s)", node, pid, inc,
                      ", restarted" if restarted else "")
        self.device_states.sync(node, True, st.devices)
        self.scrubs.resend_node(node)
        for name, _cap, fresh in devices:
            if name in self.devices_seen:
                continue
            self.devices_seen.add(name)
            if not fresh:
                self.scrub_reattached(node, name)
            else:
                lost = [r.name for r in self.directory if name in r.devices]
                if lost:
                    self.log.warning("device %s is a new (zeroed) file, but %d recovered "
                                     "regions live on it (e.g. %r): their contents are gone",
                                     name, len(lost), lost[0])
        if self.awaiting:   # after the reattached memory was taken out for scrubbing
            self.run_awaiting()

    def scrub_reattached(self, node: str, device: str) -> None:
        """Every free byte of a reattached device belongs to no (recovered) region:
        zero it first."""
        extents = self.allocs[device].take_all()
        total = sum(n for _o, n in extents)
        self.log.info("device %s was reattached: scrubbing %d bytes before use", device, total)
        for off, n in extents:
            for start in range(off, off + n, INITIAL_CHUNK_BYTES):
                self.scrubs.add(node, device, start, min(INITIAL_CHUNK_BYTES, off + n - start),
                                initial=True)

    # -- sessions -------------------------------------------------------------
    def prune_sessions(self) -> None:
        for s in self.sessions.prune():
            self.log.info("session %d (host %s, pid %s) ended: process gone", s.id, s.host, s.pid)

    # -- regions ------------------------------------------------------------------
    def normalise_allow(self, share: str, allow) -> dict | None:
        """``allow`` (checked by Alloc.validate) as a map host -> "r" | "rw"."""
        if allow is None:
            return None
        if share == "private":
            raise InvalidArgument("a private region takes no allow list (use share='shared' "
                                  "or 'coherent')")
        default = "r" if share == "shared" else "rw"
        items = allow.items() if isinstance(allow, dict) else ((h, default) for h in allow)
        out = {}
        for h, mode in items:
            self.topology.host(h)  # InvalidArgument naming the known hosts
            out[h] = mode
        return out

    def try_allocate(self, args: tuple, host: str,
                     key: tuple | None = None) -> RegionDescriptor | None:
        """Allocate an ALLOC (the tuple Alloc.validate made) for ``host``.

        Returns the new region, or None when it must wait for a scrub: memory
        it could use is still being zeroed.  Raises FabricError otherwise.
        """
        name, nbytes, placement, devices, gran, share, allow, mirror = args
        if name in self.directory:
            raise RegionExists(f"region {name!r} already exists "
                               f"(owner {self.directory.require(name).owner})")
        allow = self.normalise_allow(share, allow)
        plan = self.placer.plan(nbytes, host, placement, devices, gran)
        if self.scrubs.initial_pending(plan.devices):
            return None  # reattached memory not zeroed yet: place as on a fresh pool
        try:
            devs, offsets = self.placer.place(plan)
        except PoolFull:
            if self.scrubs.pending_bytes() > 0:
                return None
            raise
        mdevs: list[str] = []
        moffs: list[int] = []
        if mirror == 2:
            try:
                mdevs, moffs = self.placer.place_mirror(plan, devs)
            except PoolFull:
                self.placer.give_back(plan, devs, offsets)
                if self.scrubs.pending_bytes() > 0:
                    return None
                raise
        try:
            return self.directory.create(name=name, nbytes=nbytes, share=share, owner=host,
                                         allow=allow, placement=plan.placement, devices=devs,
                                         offsets=offsets, stripe_bytes=plan.stripe_bytes,
                                         nstripes=plan.nstripes, mirror_devices=mdevs,
                                         mirror_offsets=moffs, key=key)
        except BaseException:   # not journaled (fenced, journal full): give the extents back
            self.placer.give_back(plan, devs, offsets)
            if mdevs:
                self.placer.give_back(plan, mdevs, moffs)
            raise

    def defer_alloc(self, req: Request, args: tuple) -> None:
        deadline = req.deadline(cap_s=MAX_DEFER_S, share=0.9, margin_s=DEFER_MARGIN_S)
        self.waiting.append(WaitingAlloc(deadline, req, args, idempotency_key(req)))

    def rejoin_waiting(self, req: Request) -> bool:
        """A retry of an ALLOC still waiting for a scrub: answer the retry instead
        (the client listens for its latest request id).  False if none waits."""
        key = idempotency_key(req)
        if key is None:
            return False
        for w in self.waiting:
            if w.key == key:
                w.req = req
                return True
        return False

    def retry_waiting(self) -> None:
        waiting, self.waiting = self.waiting, []
        for w in waiting:
            try:
                region = self.try_allocate(w.args, w.req.sender, w.key)
            except NodeUnavailable as exc:
                if self.nodes_pending():     # a restarted manager: its node registers soon
                    self.await_nodes(w.req, self.handlers[Alloc.name], w.args)
                else:
                    self.respond_error(w.req, exc)
                continue
            except FabricError as exc:
                self.respond_error(w.req, exc)
                continue
            if region is None:
                self.waiting.append(w)
            else:
                self.respond(w.req, self.remember(w.key, region.wire_for(w.req.sender)))

    def nodes_pending(self) -> bool:
        """Right after a start, a node may not have registered yet (after a manager
        restart, nodes register again at their next beat): true while some node never
        registered with this manager and the start is less than a node timeout ago."""
        return (time.monotonic() - self.started_monotonic < self.node_timeout_s
                and any(st.incarnation is None for st in self.nodes.values()))

    def await_nodes(self, req: Request, cmd, args) -> None:
        """Run ``cmd`` again once a node registers (at most until a node timeout after
        the start), instead of failing it with NODE_UNAVAILABLE."""
        deadline = min(self.started_monotonic + self.node_timeout_s,
                       req.deadline(share=0.9, margin_s=DEFER_MARGIN_S))
        self.awaiting.append((deadline, req, cmd, args))

    def run_awaiting(self, final: bool = False) -> None:
        """Run the requests waiting for nodes again (``final``: those past their wait)."""
        now = time.monotonic()
        todo, self.awaiting = self.awaiting, []
        for deadline, req, cmd, args in todo:
            if final and now < deadline:
                self.awaiting.append((deadline, req, cmd, args))
                continue
            try:
                out = cmd.execute(self, args, req)
            except FabricError as exc:
                self.respond_error(req, exc)
                continue
            if out is not DEFERRED:
                self.respond(req, out)

    def expire_waiting(self) -> None:
        if self.awaiting:
            self.run_awaiting(final=True)
        now = time.monotonic()
        keep = []
        for w in self.waiting:
            if now >= w.deadline:
                self.respond_error(w.req, PoolFull(
                    "not enough free capacity (memory is still being scrubbed)"))
            else:
                keep.append(w)
        self.waiting = keep

    def free_region(self, name: str, key: tuple | None = None) -> RegionDescriptor:
        """Drop a region from the directory and scrub its extents (``key``: the FREE's
        idempotency key, journaled with the change)."""
        r = self.directory.require(name)
        home = self.topology.device
        extents = [[home(dev).home, dev, r.offsets[i], r.extent_bytes(i)]
                   for i, dev in enumerate(r.devices)]
        extents += [[home(dev).home, dev, r.mirror_offsets[i], r.extent_bytes(i)]
                    for i, dev in enumerate(r.mirror_devices)]   # a mirrored region's copy
        self.directory.remove(name, key, scrubs=extents)     # one record: gone, to be scrubbed
        for node, dev, off, n in extents:
            self.scrubs.add(node, dev, off, n, journaled=True)
        paths = []
        if r.share != "private" or r.mirrored:  # private, unmirrored ones never have one
            paths.append(self.state.versions_path(r.id))
        if r.mirrored:
            paths += [self.state.mirror_state_path(r.id), self.state.mirror_versions_path(r.id)]
        for path in paths:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        return r

    # -- scrubs ---------------------------------------------------------------------
    def _send_scrub(self, node: str, batch: list[Scrub], req_id: int) -> bool:
        st = self.nodes[node]
        if st.sock is None or not st.alive:
            return False  # sent when the node registers again
        header = protocol.make_header("SCRUB", req_id, self.name, self.incarnation, SCRUB_TTL_MS)
        # Each extent carries its scrub's id, the same in every copy sent: the node
        # does each id once, so a late copy cannot zero memory handed out again;
        # "floor": every scrub of this node with a lower id is done.
        body = {"extents": [[s.device, s.offset, s.nbytes, s.id] for s in batch],
                "floor": min((x.id for x in self.scrubs if x.node == node),
                             default=min(s.id for s in batch)),
                "secret": self.secret}
        try:
            self.send_to_daemon(st.sock, protocol.encode(header, body), "SCRUB", node)
        except zmq.Again:
            self.log.warning("scrub of %d extent(s) for %s not sent (queue full); will resend",
                             len(batch), node)
            return False
        return True

    def after_poll(self) -> float | None:
        """Once per loop turn: send the queued scrubs, a message per node, once the
        oldest has waited SCRUB_BATCH_S (at once if an allocation waits for them)."""
        return self.scrubs.flush_due(urgent=bool(self.waiting))

    def on_node_reply(self, sock: zmq.Socket, st: NodeState) -> None:
        """Replies of node ``st`` to SCRUBs.  A reply on the socket of its current
        registration is as good as a heartbeat."""
        for _ in range(256):
            if not sock.getsockopt(ZMQ_EVENTS) & ZMQ_POLLIN:
                break
            try:
                h, body = protocol.decode(recv_frames(sock, ZMQ_NOBLOCK))
            except FabricError as exc:
                self.log.warning("bad reply from node %s: %s", st.name, exc)
                continue
            if h.get("inc") != st.incarnation:
                continue  # from a replaced daemon of the node (fenced)
            if st.sock is sock:
                st.last_beat = time.monotonic()
                if not st.alive:
                    self.log.info("node %s is alive again (it answered a scrub)", st.name)
                    self.node_back(st)
            if h["type"] != protocol.OK:
                failed = self.scrubs.failed(h["id"], str(body.get("message")))
                if failed:
                    self.log.error("scrub of %s failed: %s; extents stay out of use "
                                   "(resent later)", ", ".join(f"{s.device}+{s.offset}"
                                                               for s in failed), body)
                continue
            try:
                done = self.scrubs.ack(h["id"])
            except Fenced:
                return
            for s in done:
                self.allocs[s.device].give(s.offset, s.nbytes)
        if self.waiting:
            self.retry_waiting()

    # -- stop -----------------------------------------------------------------------
    def on_stop(self) -> None:
        """If the process that started the cluster died, nobody will run `fabric down`:
        wait for the nodes (they watch the same owner) and remove the state dir."""
        self.journal.close()
        if not self.owner_gone:
            return
        from fabric.cluster import remove_state
        procs = []
        for st in self.nodes.values():
            try:
                if st.pid:
                    procs.append(psutil.Process(st.pid))
            except psutil.NoSuchProcess:
                pass
        _gone, alive = psutil.wait_procs(procs, timeout=5)
        for p in alive:
            p.kill()
        psutil.wait_procs(alive, timeout=2)
        self.log.warning("owner gone: removing %s", self.state.path)
        logging.shutdown()
        remove_state(self.state, keep_memory=False)


def main(argv: list[str] | None = None) -> int:
    """``python -m fabric.daemons.manager --state-dir DIR [--owner-pid PID]``."""
    args = base_argparser("fabric.daemons.manager", "The cxl-fabric fabric manager.").parse_args(argv)
    state = StateDir(args.state_dir)
    setup_logging(state, "manager")
    return run_main(lambda a: Manager(state, a.owner_pid), args)
