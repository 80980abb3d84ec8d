"""The fabric manager: membership, heartbeats, capacity and the region directory.

One per cluster, single-threaded.  It knows the topology (from cluster.json),
which node daemons are alive (REGISTER, then HEARTBEAT every
``HEARTBEAT_INTERVAL_S``; a node is dead after ``MISSED_BEATS`` missed beats,
and a new incarnation means a restart), the free extents of every device, and
the region directory::

    name -> {id, address, nbytes, share, owner, allow, devices, offsets,
             stripe_bytes, nstripes, placement}

Global addresses are handed out from a bump pointer and never reused, so a
stale address can never alias a newer region.  Freed extents are scrubbed by
the node that homes the device (SCRUB, asynchronous) before they can be
allocated again; an allocation that only fits once pending scrubs finish
waits for them (up to its deadline) instead of failing.

Request and reply bodies are documented on each command class below; the
protocol as a whole is in docs/protocol.md.
"""
from __future__ import annotations

import bisect
import itertools
import logging
import os
import sys
import time
from dataclasses import dataclass, field as dc_field

import psutil
import zmq

from fabric.daemons.alloc import ExtentAllocator
from fabric.daemons.base import (DEFERRED, Command, Daemon, Ping, Shutdown, base_argparser, field,
                          run_main, setup_logging)
from fabric import protocol
from fabric.errors import (AccessDenied, FabricError, InvalidArgument, NodeUnavailable, PoolFull,
                           RegionExists, RegionNotFound)
from fabric.cluster import remove_state
from fabric.statedir import StateDir
from fabric.topology import Topology

HEARTBEAT_INTERVAL_S = 0.5
MISSED_BEATS = 3
GAS_BASE = 1 << 40            # first global address handed out
GAS_ALIGN = 2 << 20           # regions start on 2 MiB boundaries, with a 2 MiB guard gap
DEFAULT_GRANULARITY = 64 << 10
MAX_STRIPES = 16384           # each stripe is one VMA in every mapper (vm.max_map_count is ~65k)
MAX_NAME_LEN = 200
SHARE_MODES = ("private", "shared", "coherent")
MAX_DEFER_S = 10.0


@dataclass
class NodeState:
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
class Region:
    id: int
    name: str
    address: int
    nbytes: int
    share: str
    owner: str
    allow: dict | None                  # host -> "r" | "rw"; None = default for the mode
    placement: str
    devices: list[str]
    offsets: list[int]
    stripe_bytes: int
    nstripes: int
    created: float = dc_field(default_factory=time.time)

    @property
    def mapped_bytes(self) -> int:
        return self.stripe_bytes * self.nstripes

    def extent_bytes(self, i: int) -> int:
        k = len(self.devices)
        return ((self.nstripes - i + k - 1) // k) * self.stripe_bytes

    def access_for(self, host: str) -> str | None:
        if host == self.owner:
            return "rw"
        if self.share == "private":
            return None
        if self.allow is None:
            return "r" if self.share == "shared" else "rw"
        return self.allow.get(host)

    def describe(self, host: str | None = None) -> dict:
        d = {"id": self.id, "name": self.name, "address": self.address, "nbytes": self.nbytes,
             "mapped_bytes": self.mapped_bytes, "share": self.share, "owner": self.owner,
             "allow": self.allow, "placement": self.placement, "devices": self.devices,
             "offsets": self.offsets, "stripe_bytes": self.stripe_bytes,
             "nstripes": self.nstripes, "created": self.created}
        if host is not None:
            d["access"] = self.access_for(host)
        return d


def _name(body: dict) -> str:
    name = field(body, "name", str)
    if not name or len(name) > MAX_NAME_LEN or not name.isprintable() or "/" in name:
        raise InvalidArgument(f"region name must be 1-{MAX_NAME_LEN} printable characters "
                              f"without '/', got {name[:40]!r}")
    return name


class Register(Command):
    """A node daemon announces itself (on start, and again after a manager restart).

    request: ``REGISTER {"node": str, "pid": int, "incarnation": int, "endpoint": str,
              "devices": [{"name": str, "capacity_bytes": int}]}``
    reply:   ``{"heartbeat_interval_s": float}``
    """

    name = "REGISTER"

    def validate(self, body):
        return (field(body, "node", str), field(body, "pid", int), field(body, "incarnation", int),
                field(body, "endpoint", str), field(body, "devices", list))

    def execute(self, m, args, header):
        node, pid, inc, endpoint, devices = args
        st = m.nodes.get(node)
        if st is None:
            raise InvalidArgument(f"node {node!r} is not in the topology")
        got = sorted(str(d.get("name")) for d in devices if isinstance(d, dict))
        if got != sorted(st.devices):
            raise InvalidArgument(f"node {node!r} homes {sorted(st.devices)}, not {got}")
        restarted = st.incarnation is not None and st.incarnation != inc
        st.alive, st.pid, st.incarnation, st.endpoint = True, pid, inc, endpoint
        st.last_beat = time.monotonic()
        if st.sock is not None:
            m.poller.unregister(st.sock)
            st.sock.close(0)
            m.extra_sockets.pop(st.sock, None)
        st.sock = m.ctx.socket(zmq.DEALER)
        st.sock.setsockopt(zmq.LINGER, 0)
        st.sock.connect(endpoint)
        m.add_socket(st.sock, m.on_node_reply)
        m.log.info("node %s registered (pid %d, incarnation %d%s)", node, pid, inc,
                   ", restarted" if restarted else "")
        m.resend_scrubs(node)
        return {"heartbeat_interval_s": HEARTBEAT_INTERVAL_S}


class Heartbeat(Command):
    """A node's periodic beat.

    request: ``HEARTBEAT {"node": str, "incarnation": int}``
    reply:   ``{"known": bool}`` -- false asks the node to REGISTER again
    """

    name = "HEARTBEAT"

    def validate(self, body):
        return field(body, "node", str), field(body, "incarnation", int)

    def execute(self, m, args, header):
        node, inc = args
        st = m.nodes.get(node)
        if st is None or st.incarnation != inc:
            return {"known": False}
        if not st.alive:
            m.log.info("node %s is alive again", node)
        st.alive, st.last_beat = True, time.monotonic()
        return {"known": True}


class Hello(Command):
    """A client process attaches as an emulated host.

    request: ``HELLO {"host": str}``
    reply:   ``{"host": str, "page_size_bytes": int, "topology": {...},
              "devices": {name: {"path": str, "capacity_bytes": int, "node": str}},
              "options": {...cluster options from cluster.json...}}``
    errors:  INVALID_ARGUMENT for a host not in the topology
    """

    name = "HELLO"

    def validate(self, body):
        return field(body, "host", str)

    def execute(self, m, host, header):
        m.topology.host(host)  # raises InvalidArgument naming the known hosts
        return {"host": host, "page_size_bytes": m.page_size,
                "topology": m.topology.to_dict(),
                "devices": {d.name: {"path": m.state.device_path(d.name),
                                     "capacity_bytes": d.capacity_bytes, "node": d.home}
                            for d in m.topology.devices},
                "options": m.options}


class Alloc(Command):
    """Allocate a region in the pool.

    request: ``ALLOC {"name": str, "nbytes": int, "placement": "local"|"interleave"|<device>,
              "devices": [str] | None, "granularity": int | None,
              "share": "private"|"shared"|"coherent", "allow": [str] | {host: "r"|"rw"} | None}``
              (the owner is the header's ``from`` host)
    reply:   region descriptor (see ``Region.describe``) with ``access`` for the caller
    errors:  INVALID_ARGUMENT, REGION_EXISTS, POOL_FULL, NODE_UNAVAILABLE
    """

    name = "ALLOC"

    def validate(self, body):
        name = _name(body)
        nbytes = field(body, "nbytes", int)
        placement = field(body, "placement", str, required=False, default="local")
        devices = field(body, "devices", list, required=False)
        gran = field(body, "granularity", int, required=False)
        share = field(body, "share", str, required=False, default="private")
        allow = body.get("allow")
        if share not in SHARE_MODES:
            raise InvalidArgument(f"share must be one of {', '.join(SHARE_MODES)}, got {share!r}")
        if allow is not None and not isinstance(allow, (list, dict)):
            raise InvalidArgument("allow must be a list of hosts or a map host -> 'r'|'rw'")
        return name, nbytes, placement, devices, gran, share, allow

    def execute(self, m, args, header):
        host = header.get("from")
        m.topology.host(host)
        try:
            region = m.allocate(args, host)
        except PoolFull:
            if m.pending_scrub_bytes() == 0:
                raise
            ttl_s = min(header.get("ttl_ms", 5000) / 1000, MAX_DEFER_S)
            m.waiting.append((time.monotonic() + ttl_s * 0.9, header["_identity"], header["id"],
                              args, header))
            return DEFERRED
        return region.describe(host)


class Open(Command):
    """Open an existing region.

    request: ``OPEN {"name": str}``
    reply:   region descriptor with ``access`` ("r" or "rw") for the caller
    errors:  REGION_NOT_FOUND, ACCESS_DENIED, NODE_UNAVAILABLE
    """

    name = "OPEN"

    def validate(self, body):
        return _name(body)

    def execute(self, m, name, header):
        host = header.get("from")
        r = m.region(name)
        if r.access_for(host) is None:
            raise AccessDenied(f"host {host!r} may not open region {name!r} "
                               f"({r.share}, owner {r.owner})")
        m.require_alive(r.devices)
        return r.describe(host)


class Free(Command):
    """Free a region (owner only); its extents are scrubbed before reuse.

    request: ``FREE {"name": str}``
    reply:   ``{}``
    errors:  REGION_NOT_FOUND (also for a double free), ACCESS_DENIED
    """

    name = "FREE"

    def validate(self, body):
        return _name(body)

    def execute(self, m, name, header):
        host = header.get("from")
        r = m.region(name)
        if host != r.owner:
            raise AccessDenied(f"only the owner {r.owner!r} may free region {name!r}")
        del m.regions[name]
        i = bisect.bisect_left(m.by_address, (r.address, ""))
        if i < len(m.by_address) and m.by_address[i] == (r.address, name):
            m.by_address.pop(i)
        for i, dev in enumerate(r.devices):
            m.scrub(dev, r.offsets[i], r.extent_bytes(i))
        try:
            os.unlink(m.state.versions_path(r.id))
        except FileNotFoundError:
            pass
        return {}


class ListRegions(Command):
    """List the regions visible to the caller (all of them for the CLI).

    request: ``LIST {}``
    reply:   ``{"regions": [descriptor, ...]}``
    """

    name = "LIST"

    def execute(self, m, args, header):
        host = header.get("from")
        is_host = host in m.topology.host_names
        return {"regions": [r.describe(host if is_host else None) for r in m.regions.values()
                            if not is_host or r.access_for(host) is not None]}


class Translate(Command):
    """Map a global address to (device, offset).

    request: ``TRANSLATE {"address": int}``
    reply:   ``{"device": str, "offset": int, "region": str, "region_offset": int}``
    errors:  REGION_NOT_FOUND when no region covers the address
    """

    name = "TRANSLATE"

    def validate(self, body):
        return field(body, "address", int)

    def execute(self, m, addr, header):
        i = bisect.bisect_right(m.by_address, (addr, "\U0010ffff")) - 1
        if i >= 0:
            r = m.regions[m.by_address[i][1]]
            off = addr - r.address
            if 0 <= off < r.nbytes:
                stripe, within = divmod(off, r.stripe_bytes)
                k = len(r.devices)
                dev_off = r.offsets[stripe % k] + (stripe // k) * r.stripe_bytes + within
                return {"device": r.devices[stripe % k], "offset": dev_off, "region": r.name,
                        "region_offset": off}
        raise RegionNotFound(f"no region at global address {addr:#x}")


class Status(Command):
    """Cluster status for `fabric status`.

    request: ``STATUS {}``
    reply:   ``{"manager": {...}, "nodes": [...], "devices": [...], "regions": [...]}``
    """

    name = "STATUS"

    def execute(self, m, args, header):
        now = time.monotonic()
        nodes = [{"name": s.name, "alive": s.alive, "pid": s.pid, "incarnation": s.incarnation,
                  "is_host": s.is_host, "devices": s.devices,
                  "last_beat_age_s": round(now - s.last_beat, 3) if s.last_beat else None}
                 for s in m.nodes.values()]
        devices = []
        for d in m.topology.devices:
            a = m.allocs[d.name]
            pending = sum(n for (dev, _, n) in m.pending_extents() if dev == d.name)
            devices.append({"name": d.name, "node": d.home, "capacity_bytes": d.capacity_bytes,
                            "used_bytes": d.capacity_bytes - a.free_bytes,
                            "scrubbing_bytes": pending, "path": m.state.device_path(d.name)})
        return {"manager": {"pid": os.getpid(), "incarnation": m.incarnation,
                            "topology": m.topology.name},
                "nodes": nodes, "devices": devices,
                "regions": [r.describe() for r in m.regions.values()]}


class Manager(Daemon):
    commands = (Ping, Shutdown, Register, Heartbeat, Hello, Alloc, Open, Free, ListRegions,
                Translate, Status)
    log_name = "manager"

    def __init__(self, state: StateDir, owner_pid: int | None = None):
        info = state.read()
        super().__init__("manager", state, state.manager_endpoint, owner_pid)
        self.topology = Topology.from_dict(info["topology"])
        self.options = info.get("options", {})
        self.page_size = self.topology.page_size_bytes
        self.nodes = {n.name: NodeState(n.name, n.is_host,
                                        [d.name for d in self.topology.devices_of(n.name)])
                      for n in self.topology.nodes}
        self.allocs = {d.name: ExtentAllocator(d.capacity_bytes, self.page_size)
                       for d in self.topology.devices}
        self.regions: dict[str, Region] = {}
        self.by_address: list[tuple[int, str]] = []
        self.next_address = GAS_BASE
        self.region_ids = itertools.count(1)
        self.scrub_ids = itertools.count(1)
        self.scrubs: dict[int, tuple[str, str, int, int]] = {}  # id -> node, device, off, n
        self.waiting: list[tuple] = []                         # deferred ALLOCs
        self.every(HEARTBEAT_INTERVAL_S / 2, self.check_liveness)
        self.every(0.1, self.expire_waiting)
        self.bind()

    # -- liveness -----------------------------------------------------------
    def check_liveness(self) -> None:
        limit = HEARTBEAT_INTERVAL_S * MISSED_BEATS
        now = time.monotonic()
        for st in self.nodes.values():
            if st.alive and now - st.last_beat > limit:
                st.alive = False
                self.log.warning("node %s missed %d heartbeats: marked dead", st.name, MISSED_BEATS)

    def require_alive(self, devices: list[str]) -> None:
        for dev in devices:
            node = self.topology.device(dev).home
            if not self.nodes[node].alive:
                raise NodeUnavailable(f"device {dev} is homed on node {node}, which is not alive")

    # -- directory ----------------------------------------------------------
    def region(self, name: str) -> Region:
        r = self.regions.get(name)
        if r is None:
            raise RegionNotFound(f"no region named {name!r}")
        return r

    def normalise_allow(self, share: str, allow) -> dict | None:
        if allow is None:
            return None
        if share == "private":
            raise InvalidArgument("a private region takes no allow list (use share='shared' "
                                  "or 'coherent')")
        default = "r" if share == "shared" else "rw"
        items = allow.items() if isinstance(allow, dict) else ((h, default) for h in allow)
        out = {}
        for h, mode in items:
            if not isinstance(h, str) or mode not in ("r", "rw"):
                raise InvalidArgument(f"allow entry {h!r}: {mode!r} (hosts map to 'r' or 'rw')")
            self.topology.host(h)
            out[h] = mode
        return out

    def allocate(self, args: tuple, host: str) -> Region:
        """Validate an ALLOC (the tuple Alloc.validate made) and place it; PoolFull if no room."""
        name, nbytes, placement, devices, gran, share, allow = args
        if name in self.regions:
            raise RegionExists(f"region {name!r} already exists (owner {self.regions[name].owner})")
        allow = self.normalise_allow(share, allow)
        plan = self.plan(nbytes, host, placement, devices, gran)
        return self.place(name, nbytes, host, share, allow, placement, *plan)

    def plan(self, nbytes: int, host: str, placement: str, devices, gran):
        """(devices, stripe_bytes, nstripes) for a request, before capacity checks."""
        page = self.page_size
        if nbytes <= 0:
            raise InvalidArgument(f"nbytes must be positive, got {nbytes}")
        if nbytes > self.topology.capacity_bytes:
            raise InvalidArgument(f"{nbytes} bytes is larger than the whole pool "
                                  f"({self.topology.capacity_bytes} bytes)")
        if placement == "interleave":
            names = devices if devices is not None else [d.name for d in self.topology.devices]
            if not names or len(set(names)) != len(names):
                raise InvalidArgument("interleave needs a list of distinct devices")
            for d in names:
                if not isinstance(d, str):
                    raise InvalidArgument(f"device names are strings, got {d!r}")
                self.topology.device(d)
            g = DEFAULT_GRANULARITY if gran is None else gran
            if g < page or g % page:
                raise InvalidArgument(f"granularity must be a multiple of the {page}-byte page "
                                      f"size, got {g}")
            nstripes = -(-nbytes // g)
            if nstripes > MAX_STRIPES:
                raise InvalidArgument(
                    f"{nstripes} stripes of {g} bytes is more than {MAX_STRIPES}; "
                    f"use a granularity of at least {-(-nbytes // MAX_STRIPES // page) * page}")
            return list(names[:nstripes]), g, nstripes
        if devices is not None or gran is not None:
            raise InvalidArgument("devices= and granularity= go with placement='interleave'")
        size = -(-nbytes // page) * page
        if placement == "local":
            node = host  # a host's node daemon carries its name
            local = [d.name for d in self.topology.devices_of(node)]
            rest = [d.name for d in self.topology.devices if d.home != node]
            key = lambda d: -self.allocs[d].free_bytes  # noqa: E731
            return sorted(local, key=key) + sorted(rest, key=key), size, 1
        self.topology.device(placement)  # InvalidArgument for an unknown name
        return [placement], size, 1

    def place(self, name, nbytes, host, share, allow, placement, devices, stripe_bytes, nstripes):
        """Take extents and record the region; PoolFull if they do not fit."""
        if nstripes == 1:  # single device: the first candidate with room
            candidates = [d for d in devices if self.allocs[d].can_take(stripe_bytes)]
            alive = [d for d in candidates if self.nodes[self.topology.device(d).home].alive]
            if not candidates:
                raise PoolFull(self._full_message(stripe_bytes, devices))
            if not alive:
                self.require_alive(candidates)
            devices = alive[:1]
        else:
            self.require_alive(devices)
        k = len(devices)
        sizes = [((nstripes - i + k - 1) // k) * stripe_bytes for i in range(k)]
        offsets: list[int] = []
        for dev, n in zip(devices, sizes):
            off = self.allocs[dev].take(n)
            if off is None:
                for d2, o2, n2 in zip(devices, offsets, sizes):
                    self.allocs[d2].give(o2, n2)
                raise PoolFull(self._full_message(n, [dev]))
            offsets.append(off)
        region = Region(next(self.region_ids), name, self.next_address, nbytes, share, host,
                        allow, "device" if placement not in ("local", "interleave") else placement,
                        devices, offsets, stripe_bytes, nstripes)
        self.next_address += -(-region.mapped_bytes // GAS_ALIGN) * GAS_ALIGN + GAS_ALIGN
        self.regions[name] = region
        bisect.insort(self.by_address, (region.address, name))
        return region

    def _full_message(self, nbytes: int, devices: list[str]) -> str:
        free = ", ".join(f"{d}: {self.allocs[d].largest_free()}" for d in devices)
        return f"no room for {nbytes} contiguous bytes (largest free extent per device: {free})"

    # -- scrubbing freed extents ------------------------------------------------
    def scrub(self, dev: str, off: int, nbytes: int) -> None:
        node = self.topology.device(dev).home
        sid = next(self.scrub_ids)
        self.scrubs[sid] = (node, dev, off, nbytes)
        self._send_scrub(sid)

    def _send_scrub(self, sid: int) -> None:
        node, dev, off, nbytes = self.scrubs[sid]
        st = self.nodes[node]
        if st.sock is None or not st.alive:
            return  # resent when the node registers again
        header = protocol.make_header("SCRUB", sid, self.name, self.incarnation, 60_000)
        try:
            st.sock.send_multipart([protocol.pack(header), protocol.pack(
                {"device": dev, "offset": off, "nbytes": nbytes})], zmq.NOBLOCK)
        except zmq.Again:
            self.log.warning("scrub %d for %s not sent (queue full); will resend", sid, node)

    def resend_scrubs(self, node: str) -> None:
        for sid, (n, *_rest) in list(self.scrubs.items()):
            if n == node:
                self._send_scrub(sid)

    def pending_extents(self):
        return [(dev, off, n) for (_node, dev, off, n) in self.scrubs.values()]

    def pending_scrub_bytes(self) -> int:
        return sum(n for (_d, _o, n) in self.pending_extents())

    def on_node_reply(self, sock: zmq.Socket) -> None:
        for _ in range(256):
            if not sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                break
            frames = sock.recv_multipart(zmq.NOBLOCK)
            try:
                h = protocol.parse_header(frames[0])
            except (FabricError, IndexError) as exc:
                self.log.warning("bad reply from a node: %s", exc)
                continue
            sid = h["id"]
            if sid not in self.scrubs:
                continue  # a duplicate ack after a resend
            if h["type"] != protocol.OK:
                body = protocol.unpack(frames[1], "scrub error") if len(frames) > 1 else {}
                self.log.error("scrub %d failed: %s; extent stays out of use", sid, body)
                continue
            _node, dev, off, n = self.scrubs.pop(sid)
            self.allocs[dev].give(off, n)
        if self.waiting:
            self.retry_waiting()

    def retry_waiting(self) -> None:
        waiting, self.waiting = self.waiting, []
        for item in waiting:
            deadline, identity, req_id, args, header = item
            try:
                region = self.allocate(args, header["from"])
            except PoolFull as exc:
                if self.pending_scrub_bytes() > 0:
                    self.waiting.append(item)
                else:
                    self.reply_error(identity, req_id, exc)
                continue
            except FabricError as exc:
                self.reply_error(identity, req_id, exc)
                continue
            self.reply(identity, req_id, region.describe(header["from"]))

    def expire_waiting(self) -> None:
        now = time.monotonic()
        keep = []
        for item in self.waiting:
            if now >= item[0]:
                self.reply_error(item[1], item[2], PoolFull(
                    "not enough free capacity (freed memory is still being scrubbed)"))
            else:
                keep.append(item)
        self.waiting = keep


    def on_stop(self) -> None:
        """If the process that started the cluster died, nobody will run `fabric down`:
        wait for the nodes (they watch the same owner) and remove the state dir."""
        if not self.owner_gone:
            return
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
    args = base_argparser("fabric.daemons.manager", "The cxl-fabric fabric manager.").parse_args(argv)
    state = StateDir(args.state_dir)
    setup_logging(state, "manager")
    return run_main(lambda a: Manager(state, a.owner_pid), args)


if __name__ == "__main__":
    sys.exit(main())
