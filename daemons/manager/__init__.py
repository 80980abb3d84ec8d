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
- this module -- the :class:`Manager` daemon: wiring, timers and ``main``.

Memory nobody owns is never handed out unscrubbed: freed extents are scrubbed
(SCRUB to the device's home node) before they return to the allocator, and
since the directory does not survive a manager restart, every byte of a
device file a node reattached (``fabric down --keep-memory`` then ``up``, or
a crash) is scrubbed before the first allocation that could use it.  An
ALLOC that has to wait for a scrub waits (up to its deadline) instead of
failing.  The protocol as a whole is in docs/protocol.md.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import psutil
import zmq

from fabric import protocol
from fabric.constants import DEFAULT_NODE_TIMEOUT_MS, MISSED_BEATS
from fabric.daemons.alloc import ExtentAllocator
from fabric.daemons.base import (ZMQ_EVENTS, ZMQ_NOBLOCK, ZMQ_POLLIN, Daemon, Ping, Request,
                                 Shutdown, base_argparser, run_main, setup_logging)
from fabric.descriptor import RegionDescriptor
from fabric.errors import FabricError, InvalidArgument, PoolFull, RegionExists
from fabric.statedir import StateDir
from fabric.topology import Topology

from .commands import (Alloc, Bye, Free, Heartbeat, Hello, ListRegions, Open, Register, Status,
                       Translate)
from .devstate import DeviceStates
from .directory import Directory
from .placement import Placer
from .scrub import INITIAL_CHUNK_BYTES, Scrub, ScrubTracker
from .sessions import SessionTable

#: A deferred ALLOC waits at most this long, at most 90% of its ttl, and gives
#: up at least DEFER_MARGIN_S before its sender does (so the POOL_FULL arrives).
MAX_DEFER_S = 10.0
DEFER_MARGIN_S = 0.25
#: How long a node has to answer one SCRUB.
SCRUB_TTL_MS = 60_000

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
        self.devices_seen: set[str] = set()   # devices some node has registered
        self.waiting: list[WaitingAlloc] = []
        self.device_states = DeviceStates(state, self.topology, self.log)
        self.every(self.heartbeat_interval_s / 2, self.check_liveness)
        self.every(0.1, self.expire_waiting)
        self.every(1.0, self.scrubs.resend_overdue)
        self.every(1.0, self.prune_sessions)
        self.bind()

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

    def scrub_reattached(self, node: str, device: str) -> None:
        """Every free byte of a reattached device belongs to no region: zero it first."""
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

    def try_allocate(self, args: tuple, host: str) -> RegionDescriptor | None:
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
        return self.directory.create(name=name, nbytes=nbytes, share=share, owner=host,
                                     allow=allow, placement=plan.placement, devices=devs,
                                     offsets=offsets, stripe_bytes=plan.stripe_bytes,
                                     nstripes=plan.nstripes, mirror_devices=mdevs,
                                     mirror_offsets=moffs)

    def defer_alloc(self, req: Request, args: tuple) -> None:
        deadline = req.deadline(cap_s=MAX_DEFER_S, share=0.9, margin_s=DEFER_MARGIN_S)
        self.waiting.append(WaitingAlloc(deadline, req, args))

    def retry_waiting(self) -> None:
        waiting, self.waiting = self.waiting, []
        for w in waiting:
            try:
                region = self.try_allocate(w.args, w.req.sender)
            except FabricError as exc:
                self.respond_error(w.req, exc)
                continue
            if region is None:
                self.waiting.append(w)
            else:
                self.respond(w.req, region.wire_for(w.req.sender))

    def expire_waiting(self) -> None:
        now = time.monotonic()
        keep = []
        for w in self.waiting:
            if now >= w.deadline:
                self.respond_error(w.req, PoolFull(
                    "not enough free capacity (memory is still being scrubbed)"))
            else:
                keep.append(w)
        self.waiting = keep

    def free_region(self, name: str) -> RegionDescriptor:
        """Drop a region from the directory and scrub its extents."""
        r = self.directory.remove(name)
        for i, dev in enumerate(r.devices):
            self.scrubs.add(self.topology.device(dev).home, dev, r.offsets[i], r.extent_bytes(i))
        for i, dev in enumerate(r.mirror_devices):      # the second copy of a mirrored region
            self.scrubs.add(self.topology.device(dev).home, dev, r.mirror_offsets[i],
                            r.extent_bytes(i))
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
                h, body = protocol.decode(sock.recv_multipart(ZMQ_NOBLOCK))
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
            for s in self.scrubs.ack(h["id"]):
                self.allocs[s.device].give(s.offset, s.nbytes)
        if self.waiting:
            self.retry_waiting()

    # -- stop -----------------------------------------------------------------------
    def on_stop(self) -> None:
        """If the process that started the cluster died, nobody will run `fabric down`:
        wait for the nodes (they watch the same owner) and remove the state dir."""
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
