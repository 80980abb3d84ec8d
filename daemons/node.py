"""The node daemon: owns the memory devices homed on one node.

Each device is a file ``devices/<name>.mem`` under the state dir, fully
allocated with posix_fallocate when created, so an over-full tmpfs fails here
with a clear error rather than as SIGBUS in a client later.  A file that
already exists with the right size is reattached as it is: device memory
outlives its daemon, so a restarted node loses nothing.

The daemon registers with the fabric manager -- saying for every device
whether it created the file just now (``fresh``: all zeros) or reattached
one (old bytes the manager must scrub before handing any out) -- beats every
``heartbeat_interval_s`` (registering again if the manager does not know its
incarnation, e.g. after a manager restart), and serves SCRUB requests that
zero freed extents.  Clients that can map device files never send it data;
the remote data path (for hosts that cannot) will be served here too.
"""
from __future__ import annotations

import errno
import os
import sys
import time

import zmq

from fabric.daemons.base import (Command, Daemon, Ping, Shutdown, base_argparser, check_secret, field,
                                 run_main, setup_logging)
from fabric import protocol
from fabric.protocol import ZMQ_NOBLOCK, recv_frames
from fabric.constants import HEARTBEAT_INTERVAL_S, MAX_SCRUB_EXTENTS
from fabric._binding.mapping import scrub
from fabric.errors import ClusterError, FabricError, InvalidArgument, StaleIncarnation
from fabric.statedir import StateDir
from fabric.topology import Topology


FALLOCATE_STEP_BYTES = 2 << 20


class Scrub(Command):
    """Zero freed extents of this node's devices (sent by the manager).

    request: ``SCRUB {"extents": [[device: str, offset: int, nbytes: int, scrub?: int], ...],
             "floor"?: int, "secret": str}`` (1 to MAX_SCRUB_EXTENTS extents; ``scrub``:
             the manager's id of that scrub, the same in every copy it sends;
             ``floor``: every scrub of this node with a lower id is done)
    reply:   ``{}`` once every extent is zero, or ``{"skipped": k}`` when k of them were
             copies of scrubs already done (left untouched)
    errors:  ACCESS_DENIED without the cluster's secret (only the manager may scrub);
             INVALID_ARGUMENT for a malformed list, an unknown device or an extent
             outside its device -- checked for every extent before any is zeroed;
             STALE_INCARNATION from a manager older than one already heard, or when
             a newer daemon of this node has started (this one then exits)

    A scrub is done at most once per id: a late, duplicated or reordered copy
    arriving after the extent was zeroed and maybe handed out again is answered
    without touching memory (docs/faults.md, "Message faults").
    """

    name = "SCRUB"

    def validate(self, body):
        extents = field(body, "extents", list)
        if not 1 <= len(extents) <= MAX_SCRUB_EXTENTS:
            raise InvalidArgument(f"field 'extents' must hold 1..{MAX_SCRUB_EXTENTS} extents, "
                                  f"got {len(extents)}")
        out = []
        for e in extents:
            if not (isinstance(e, list) and len(e) in (3, 4) and isinstance(e[0], str)
                    and all(isinstance(x, int) and not isinstance(x, bool) for x in e[1:])):
                raise InvalidArgument(f"an extent must be [device, offset, nbytes, scrub id], "
                                      f"got {e!r:.80}")
            out.append((e[0], e[1], e[2], e[3] if len(e) == 4 else None))
        return (out, field(body, "floor", int, required=False, default=0),
                field(body, "secret", str, required=False, default=""))

    def execute(self, node, args, req):
        extents, floor, secret = args
        check_secret(node.secret, secret, "SCRUB")
        node.check_current("SCRUB")                 # fencing: before any destructive act
        todo = []
        for dev, off, n, scrub_id in extents:
            fd, cap = node.device_fd(dev)
            if off < 0 or n <= 0 or off + n > cap:
                raise InvalidArgument(f"extent [{off}, {off + n}) is outside device {dev} "
                                      f"({cap} bytes)")
            todo.append((fd, off, n, scrub_id))
        skipped = 0
        for fd, off, n, scrub_id in todo:
            if scrub_id is not None and node.scrub_done(scrub_id, floor, req.incarnation):
                skipped += 1
                continue
            scrub(fd, off, n)
            if scrub_id is not None:
                node.scrubbed.add(scrub_id)          # only once it is really zeroed
        if skipped:
            return {"skipped": skipped}
        return {}


class NodeStatus(Command):
    """What this node homes.

    request: ``STATUS {}``
    reply:   ``{"node": str, "pid": int, "incarnation": int, "registered": bool,
              "devices": [{"name": str, "capacity_bytes": int, "path": str}]}``
    """

    name = "STATUS"

    def execute(self, node, args, req):
        return {"node": node.name, "pid": os.getpid(), "incarnation": node.incarnation,
                "registered": node.registered,
                "devices": [{"name": d, "capacity_bytes": c, "path": node.state.device_path(d)}
                            for d, (_fd, c) in node.fds.items()]}


class NodeDaemon(Daemon):
    commands = (Ping, Shutdown, Scrub, NodeStatus)
    log_name = "node"
    drain_budget = 4  # scrubs can take a while: beat between them

    def __init__(self, state: StateDir, name: str, owner_pid: int | None = None):
        info = state.read()
        topo = Topology.from_dict(info["topology"])
        if name not in [n.name for n in topo.nodes]:
            raise ClusterError(f"node {name!r} is not in the topology")
        super().__init__(name, state, state.node_endpoint(name), owner_pid)
        self.devices = topo.devices_of(name)
        self.fds: dict[str, tuple[int, int]] = {}
        self.fresh: dict[str, bool] = {}  # device -> created by this process (all zeros)
        os.makedirs(state.devices_dir, exist_ok=True)
        os.makedirs(state.nodes_dir, exist_ok=True)
        self._claim_epoch()
        for d in self.devices:
            self.fds[d.name] = (self._open_device(d.name, d.capacity_bytes), d.capacity_bytes)
        self.bind()
        self.registered = False
        self.heartbeat_interval_s = HEARTBEAT_INTERVAL_S
        self.mgr = self.ctx.socket(zmq.DEALER)
        self.mgr.setsockopt(zmq.LINGER, 0)
        self.mgr.connect(state.manager_endpoint)
        self.add_socket(self.mgr, self.on_manager_reply)
        self._beat_id = 0
        self._last_register = 0.0
        #: Scrubs done, per manager incarnation (a copy of one is not done again).
        self._scrub_manager: int | None = None
        self._scrub_floor = 0
        self.scrubbed: set[int] = set()
        self.fenced = False
        self._epoch_stamp: tuple | None = None
        self._epoch_seen = 0
        self.every(0.1, self.beat)

    def _open_device(self, dev: str, capacity: int) -> int:
        path = self.state.device_path(dev)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        size = -1
        try:
            size = os.fstat(fd).st_size
            if size not in (0, capacity):
                raise ClusterError(f"device file {path} has {size} bytes, expected {capacity}; "
                                   f"remove it or fix the topology")
            if size == 0:
                free = os.statvfs(path).f_bavail * os.statvfs(path).f_frsize
                if free < capacity:
                    raise OSError(errno.ENOSPC, f"only {free} bytes free")
                # In 2 MiB steps: one huge fallocate hands out pages that read ~15% slower
                # on this kind of VM (measured: scripts/bench_sharing.py, docs/benchmarks.md).
                for off in range(0, capacity, FALLOCATE_STEP_BYTES):
                    os.posix_fallocate(fd, off, min(FALLOCATE_STEP_BYTES, capacity - off))
                self.log.info("created device %s (%d bytes) at %s", dev, capacity, path)
            else:
                self.log.info("reattached device %s at %s", dev, path)
            self.fresh[dev] = size == 0
        except OSError as exc:
            os.close(fd)
            if size == 0:
                os.unlink(path)
            if exc.errno in (errno.ENOSPC, errno.ENOMEM):
                raise ClusterError(f"cannot allocate {capacity} bytes for device {dev} at {path}: "
                                   f"{os.strerror(exc.errno)} (is the tmpfs full?)") from None
            raise ClusterError(f"cannot create device {dev} at {path}: {exc}") from None
        except Exception:
            os.close(fd)
            raise
        return fd

    # -- fencing --------------------------------------------------------------
    def _claim_epoch(self) -> None:
        """Record this daemon as the newest of its node (nodes/<node>.inc, replaced
        atomically): an older daemon of the node that is still around -- paused,
        then resumed -- reads it before acting and exits instead."""
        path = self.state.node_epoch_path(self.name)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(str(self.incarnation))
        os.replace(tmp, path)

    def superseded_by(self) -> int | None:
        """The incarnation of a newer daemon of this node, if one has started.
        One stat per call; the file is read only when it changed."""
        path = self.state.node_epoch_path(self.name)
        try:
            st = os.stat(path)
        except OSError:
            return None
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp != self._epoch_stamp:
            try:
                with open(path, encoding="utf-8") as f:
                    self._epoch_seen = int(f.read().strip() or 0)
            except (OSError, ValueError):
                return None
            self._epoch_stamp = stamp
        return self._epoch_seen if self._epoch_seen > self.incarnation else None

    def check_current(self, what: str) -> None:
        """Fence this daemon (and raise StaleIncarnation) if a newer one owns the node."""
        if self.fenced:
            raise StaleIncarnation(f"node daemon {self.name} (incarnation {self.incarnation}) "
                                   f"is fenced; {what} not done")
        newer = self.superseded_by()
        if newer is not None:
            self.fence(f"a newer daemon of {self.name} (incarnation {newer}) has started",
                       what)
            raise StaleIncarnation(f"node daemon {self.name} (incarnation {self.incarnation}) "
                                   f"was replaced by incarnation {newer}; {what} not done")

    def fence(self, why: str, what: str) -> None:
        """Stop acting for good: no scrub, register, beat or reply from now on; exit."""
        if not self.fenced:
            self.log.warning("fenced: %s; this daemon (pid %d, incarnation %d) no longer owns "
                             "node %s and exits without acting (refused: %s)", why, os.getpid(),
                             self.incarnation, self.name, what)
        self.fenced = True
        self.registered = False
        self.running = False

    def scrub_done(self, scrub_id: int, floor: int, manager_inc: int | None) -> bool:
        """Whether scrub ``scrub_id`` of manager incarnation ``manager_inc`` was done
        already (a late, duplicated or reordered copy); the caller records it in
        ``scrubbed`` once it has zeroed the extent."""
        mgr = manager_inc or 0
        if self._scrub_manager is None or mgr > self._scrub_manager:
            self._scrub_manager, self._scrub_floor, self.scrubbed = mgr, 0, set()
        elif mgr < self._scrub_manager:
            raise StaleIncarnation(f"SCRUB from manager incarnation {mgr}, older than "
                                   f"{self._scrub_manager}: not done")
        if floor > self._scrub_floor:
            self._scrub_floor = floor
            self.scrubbed = {i for i in self.scrubbed if i >= floor}
        if scrub_id < self._scrub_floor or scrub_id in self.scrubbed:
            self.log.info("scrub %d: a copy of a scrub already done; memory not touched",
                          scrub_id)
            return True
        return False

    def reply(self, identity, req_id, body, ok=True, req=None) -> None:
        if self.fenced:
            return  # a fenced daemon answers nothing, not even the refusal
        super().reply(identity, req_id, body, ok, req)

    def device_fd(self, dev: str) -> tuple[int, int]:
        if dev not in self.fds:
            raise InvalidArgument(f"device {dev!r} is not homed on node {self.name}")
        return self.fds[dev]

    # -- manager link -------------------------------------------------------
    def _send(self, msg_type: str, body: dict, req_id: int) -> None:
        header = protocol.make_header(msg_type, req_id, self.name, self.incarnation, 2000)
        try:
            self.send_to_daemon(self.mgr, protocol.encode(header, body), msg_type, "manager")
        except zmq.Again:
            pass  # manager not there yet; the next beat retries

    def beat(self) -> None:
        if self.fenced:
            return
        newer = self.superseded_by()
        if newer is not None:
            self.fence(f"a newer daemon of {self.name} (incarnation {newer}) has started",
                       "REGISTER/HEARTBEAT")
            return
        now = time.monotonic()
        if not self.registered:
            if now - self._last_register >= 0.2:
                self._last_register = now
                self._send("REGISTER", {
                    "secret": self.secret,
                    "node": self.name, "pid": os.getpid(), "incarnation": self.incarnation,
                    "endpoint": self.endpoint,
                    "devices": [{"name": d, "capacity_bytes": c, "fresh": self.fresh[d]}
                                for d, (_f, c) in self.fds.items()]},
                    req_id=0)
            return
        if now - self._last_register >= self.heartbeat_interval_s:
            self._last_register = now
            self._beat_id += 1
            self._send("HEARTBEAT", {"node": self.name, "incarnation": self.incarnation,
                                     "secret": self.secret},
                       req_id=self._beat_id)

    def on_manager_reply(self, sock: zmq.Socket) -> None:
        for _ in range(64):
            try:
                frames = recv_frames(sock, ZMQ_NOBLOCK)
            except zmq.Again:
                return
            try:
                h, body = protocol.decode(frames)
            except FabricError as exc:
                self.log.warning("bad message from the manager: %s", exc)
                continue
            if h["type"] == protocol.ERROR and body.get("code") == StaleIncarnation.code:
                self.fence(f"the manager refused this incarnation: {body.get('message')}",
                           "REGISTER/HEARTBEAT")
                return
            if h["type"] == protocol.ERROR:
                self.log.error("manager refused %s: %s", "registration" if h["id"] == 0 else "beat",
                               body)
                if h["id"] == 0:
                    self.running = False  # a topology mismatch will not fix itself
                continue
            if h["id"] == 0:
                self.registered = True
                # From now on clients may write: a later REGISTER (to a restarted
                # manager) must not claim the files are still all zeros.
                self.fresh = {d: False for d in self.fresh}
                self.heartbeat_interval_s = float(body.get("heartbeat_interval_s",
                                                          HEARTBEAT_INTERVAL_S))
                self.log.info("registered with the manager")
            elif not body.get("known", True):
                self.log.warning("manager does not know this incarnation; registering again")
                self.registered = False

    def on_stop(self) -> None:
        for fd, _cap in self.fds.values():
            os.close(fd)
        self.fds.clear()


def main(argv: list[str] | None = None) -> int:
    p = base_argparser("fabric.daemons.node", "A cxl-fabric node daemon.")
    p.add_argument("--name", required=True, help="node name (a host name or a memory-only node)")
    args = p.parse_args(argv)
    state = StateDir(args.state_dir)
    setup_logging(state, f"node-{args.name}")
    return run_main(lambda a: NodeDaemon(state, a.name, a.owner_pid), args)


if __name__ == "__main__":
    sys.exit(main())
