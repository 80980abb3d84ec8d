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
from fabric.constants import HEARTBEAT_INTERVAL_S, MAX_SCRUB_EXTENTS
from fabric._binding.mapping import scrub
from fabric.errors import ClusterError, FabricError, InvalidArgument
from fabric.statedir import StateDir
from fabric.topology import Topology


FALLOCATE_STEP_BYTES = 2 << 20


class Scrub(Command):
    """Zero freed extents of this node's devices (sent by the manager).

    request: ``SCRUB {"extents": [[device: str, offset: int, nbytes: int], ...],
             "secret": str}`` (1 to MAX_SCRUB_EXTENTS extents)
    reply:   ``{}`` once every extent is zero
    errors:  ACCESS_DENIED without the cluster's secret (only the manager may scrub);
             INVALID_ARGUMENT for a malformed list, an unknown device or an extent
             outside its device -- checked for every extent before any is zeroed
    """

    name = "SCRUB"

    def validate(self, body):
        extents = field(body, "extents", list)
        if not 1 <= len(extents) <= MAX_SCRUB_EXTENTS:
            raise InvalidArgument(f"field 'extents' must hold 1..{MAX_SCRUB_EXTENTS} extents, "
                                  f"got {len(extents)}")
        out = []
        for e in extents:
            if not (isinstance(e, list) and len(e) == 3 and isinstance(e[0], str)
                    and all(isinstance(x, int) and not isinstance(x, bool) for x in e[1:])):
                raise InvalidArgument(f"an extent must be [device, offset, nbytes], got {e!r:.80}")
            out.append(tuple(e))
        return out, field(body, "secret", str, required=False, default="")

    def execute(self, node, args, req):
        extents, secret = args
        check_secret(node.secret, secret, "SCRUB")
        todo = []
        for dev, off, n in extents:
            fd, cap = node.device_fd(dev)
            if off < 0 or n <= 0 or off + n > cap:
                raise InvalidArgument(f"extent [{off}, {off + n}) is outside device {dev} "
                                      f"({cap} bytes)")
            todo.append((fd, off, n))
        for fd, off, n in todo:
            scrub(fd, off, n)
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

    def device_fd(self, dev: str) -> tuple[int, int]:
        if dev not in self.fds:
            raise InvalidArgument(f"device {dev!r} is not homed on node {self.name}")
        return self.fds[dev]

    # -- manager link -------------------------------------------------------
    def _send(self, msg_type: str, body: dict, req_id: int) -> None:
        header = protocol.make_header(msg_type, req_id, self.name, self.incarnation, 2000)
        try:
            self.mgr.send_multipart(protocol.encode(header, body), zmq.NOBLOCK)
        except zmq.Again:
            pass  # manager not there yet; the next beat retries

    def beat(self) -> None:
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
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                h, body = protocol.decode(frames)
            except FabricError as exc:
                self.log.warning("bad message from the manager: %s", exc)
                continue
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
