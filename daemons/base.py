"""What every daemon shares: the ROUTER loop, command dispatch, logs, signals.

A daemon binds one ROUTER socket and answers every request it can parse with
exactly one reply.  Commands are classes (see :class:`Command`); the
dispatcher maps each :class:`fabric.errors.FabricError` to its wire code, and
any other exception to ``FABRIC_ERROR`` after logging it, so a bad request
never kills the daemon.  SIGTERM/SIGINT end the loop cleanly.  If started with
``--owner-pid``, the daemon also exits when that process is gone, so a test or
script that dies cannot leave daemons behind.
"""
from __future__ import annotations

import argparse
import hmac
import resource
import logging
import math
import os
import signal
import sys
import time
import traceback
from typing import Any, Callable

import psutil
import zmq

from fabric import protocol
from fabric.protocol import recv_frames, send_frames
from fabric.constants import DEFAULT_TIMEOUT_MS
from fabric.errors import (AccessDenied, FabricError, InvalidArgument, ProtocolError,
                           ResourceExhausted)
from fabric.statedir import StateDir

from .netfault import DAEMON_TYPES, NetFaults

#: pyzmq's constants are enums whose operators cost microseconds on a hot path.
ZMQ_EVENTS, ZMQ_POLLIN, ZMQ_NOBLOCK = int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.NOBLOCK)


class Request:
    """The context of one request, beside its body: who sent it and where to answer.

    ``identity`` holds the ROUTER routing frames (never part of the message
    header); ``id``, ``type``, ``sender`` (the header's ``from``), ``incarnation``,
    ``ttl_ms`` and ``key`` (the idempotency key: the same for every retry of one
    request, None when the header has none) are the header's fields; ``received``
    is the monotonic time it arrived.  A command that answers later
    (:data:`DEFERRED`) keeps its Request and replies with :meth:`Daemon.respond`.
    Read-only by convention (a plain class with slots: one is made per request).
    """

    __slots__ = ("identity", "id", "type", "sender", "incarnation", "ttl_ms", "key", "received")

    def __init__(self, identity: tuple[bytes, ...], id: int, type: str, sender: str,
                 incarnation: int | None = None, ttl_ms: int | None = None,
                 key: int | None = None, received: float | None = None):
        self.identity = identity
        self.id = id
        self.type = type
        self.sender = sender
        self.incarnation = incarnation
        self.ttl_ms = ttl_ms
        self.key = key
        self.received = time.monotonic() if received is None else received

    def __repr__(self) -> str:
        return (f"Request({self.type} id={self.id} from={self.sender!r} inc={self.incarnation} "
                f"ttl_ms={self.ttl_ms} key={self.key})")

    @classmethod
    def from_header(cls, identity: list[bytes], header: dict) -> "Request":
        inc = header.get("inc")
        key = header.get("key")
        return cls(tuple(identity), header["id"], header["type"], header.get("from", ""),
                   inc if isinstance(inc, int) else None, header.get("ttl_ms"),
                   key if isinstance(key, int) and not isinstance(key, bool) else None)

    def deadline(self, default_ms: int = DEFAULT_TIMEOUT_MS, cap_s: float | None = None,
                 share: float = 1.0, margin_s: float = 0.0) -> float:
        """Monotonic time by which to answer: ``share`` of the sender's ttl and at
        least ``margin_s`` before it stops waiting, at most ``cap_s`` seconds."""
        ttl_s = (default_ms if self.ttl_ms is None else self.ttl_ms) / 1000
        wait_s = max(0.0, min(ttl_s * share, ttl_s - margin_s))
        if cap_s is not None:
            wait_s = min(wait_s, cap_s)
        return self.received + wait_s


class Command:
    """One request type.  Subclasses set ``name``; the docstring is the wire spec.

    ``validate(body)`` checks the body's shape and returns what ``execute``
    needs; ``execute(daemon, args, req)`` does the work and returns the reply
    body (or :data:`DEFERRED`).  ``req`` is the :class:`Request` context.  Both
    raise FabricError subclasses for bad input.
    """

    name = ""

    def validate(self, body: dict) -> Any:
        return body

    def execute(self, daemon: "Daemon", args: Any, req: Request) -> Any:
        raise NotImplementedError


class Ping(Command):
    """Liveness probe.

    request: ``PING {}``
    reply:   ``{"name": str, "pid": int, "incarnation": int}``
    """

    name = "PING"

    def execute(self, daemon, args, req):
        return {"name": daemon.name, "pid": os.getpid(), "incarnation": daemon.incarnation}


class Shutdown(Command):
    """Stop the daemon after replying (tools of the cluster only; `fabric down` uses SIGTERM).

    request: ``SHUTDOWN {"secret": str}``
    reply:   ``{}``
    errors:  ACCESS_DENIED without the cluster's secret: a client cannot stop a daemon
    """

    name = "SHUTDOWN"

    def validate(self, body):
        return field(body, "secret", str, required=False, default="")

    def execute(self, daemon, secret, req):
        check_secret(daemon.secret, secret, "SHUTDOWN")
        daemon.running = False
        return {}


def field(body: dict, key: str, kind: type | tuple, *, required: bool = True, default=None):
    """``body[key]`` checked to be of ``kind``; InvalidArgument otherwise."""
    if key not in body or body[key] is None:
        if required:
            raise InvalidArgument(f"missing field {key!r}")
        return default
    value = body[key]
    if isinstance(value, bool) and kind in (int, (int, float)):
        raise InvalidArgument(f"field {key!r} must be {kind}, got a bool")
    if not isinstance(value, kind):
        raise InvalidArgument(f"field {key!r} has the wrong type ({type(value).__name__})")
    return value


def int_field(body: dict, key: str, lo: int, hi: int, *, required: bool = True,
              default: int | None = None) -> int | None:
    """``body[key]`` checked to be an int in ``[lo, hi]``; InvalidArgument otherwise."""
    value = field(body, key, int, required=required, default=default)
    if value is not None and not lo <= value <= hi:
        raise InvalidArgument(f"field {key!r} must be in {lo}..{hi}, got {value}")
    return value


def check_secret(expected: str, got: str, what: str) -> None:
    """AccessDenied unless ``got`` is the cluster's secret (a daemon-to-daemon message)."""
    if not got or not hmac.compare_digest(expected.encode(), got.encode()):
        raise AccessDenied(f"{what} is a daemon-to-daemon message and must carry the cluster's "
                           f"secret; clients cannot send it")


class Daemon:
    """Base daemon: bind, poll, dispatch, run timers, stop on signal."""

    commands: tuple[type[Command], ...] = (Ping, Shutdown)
    log_name = "daemon"
    #: Requests handled per loop turn before timers run (a node keeps it small so a
    #: burst of scrubs cannot starve its heartbeat).
    drain_budget = 256

    def __init__(self, name: str, state: StateDir, endpoint: str, owner_pid: int | None = None):
        self.name = name
        self.state = state
        self.endpoint = endpoint
        self.owner_pid = owner_pid
        self.incarnation = protocol.new_incarnation()
        #: The per-cluster secret daemon-to-daemon messages carry (REGISTER, HEARTBEAT,
        #: SCRUB), so a client cannot forge them (docs/faults.md, "Threat model").
        self.secret = state.read_secret()
        #: Raised to the hard limit at start; sessions are refused before it runs out.
        self.fd_limit = raise_fd_limit()
        self.running = True
        self.owner_gone = False
        self.log = logging.getLogger(f"{self.log_name}.{name}")
        self.ctx = zmq.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_MESSAGE_BYTES)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 0)
        self.poller = zmq.Poller()
        self.poller.register(self.router, zmq.POLLIN)
        self.handlers: dict[str, Command] = {c.name: c() for c in self.commands}
        self._timers: list[list] = []  # [next_due, period_s, fn]
        self.extra_sockets: dict[zmq.Socket, Callable[[zmq.Socket], None]] = {}
        #: Message faults and partitions injected into this daemon (daemons/netfault.py).
        self.net = NetFaults(state.path, name)
        self.every(1.0, self._check_owner)

    # -- set-up -------------------------------------------------------------
    def bind(self) -> None:
        path = self.endpoint[len("ipc://"):] if self.endpoint.startswith("ipc://") else None
        if path and os.path.exists(path):
            os.unlink(path)  # a stale socket file from a crashed predecessor
        self.router.bind(self.endpoint)

    def every(self, period_s: float, fn: Callable[[], None]) -> None:
        self._timers.append([time.monotonic() + period_s, period_s, fn])

    def add_socket(self, sock: zmq.Socket, on_readable: Callable[[zmq.Socket], None]) -> None:
        self.poller.register(sock, zmq.POLLIN)
        self.extra_sockets[sock] = on_readable

    def _check_owner(self) -> None:
        if self.owner_pid and not psutil.pid_exists(self.owner_pid):
            self.log.warning("owner process %d is gone; shutting down", self.owner_pid)
            self.owner_gone = True
            self.running = False

    # -- main loop ----------------------------------------------------------
    def serve(self) -> None:
        def stop(signum, frame):
            self.log.info("signal %d: shutting down", signum)
            self.running = False
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        self.log.info("serving on %s (pid %d, incarnation %d)", self.endpoint, os.getpid(),
                      self.incarnation)
        try:
            soon_s: float | None = None  # after_poll wants another turn this soon
            while self.running:
                now = time.monotonic()
                next_due = min((t[0] for t in self._timers), default=now + 0.1)
                if soon_s is not None:
                    next_due = min(next_due, now + soon_s)
                held = self.net.next_due()
                if held is not None:
                    next_due = min(next_due, held)
                # Rounded up: a wait rounded down to 0 ms would spin through the last
                # millisecond before every due time (e.g. each scrub batch).
                timeout_ms = max(0, min(100, math.ceil((next_due - now) * 1000)))
                ready = dict(self.poller.poll(timeout_ms))  # pyzmq retries EINTR itself
                if self.router in ready:
                    self._drain_router()
                for sock, fn in list(self.extra_sockets.items()):
                    if sock in ready:
                        fn(sock)
                try:
                    soon_s = self.after_poll()
                except Exception:
                    soon_s = None
                    self.log.error("after_poll failed:\n%s", traceback.format_exc())
                now = time.monotonic()
                for t in self._timers:
                    if now >= t[0]:
                        t[0] = now + t[1]
                        try:
                            t[2]()
                        except Exception:
                            self.log.error("timer %s failed:\n%s", t[2], traceback.format_exc())
                if self.net.next_due() is not None:
                    self.net.run_due(now)
        finally:
            self.on_stop()
            self.ctx.destroy(linger=0)
            self.log.info("stopped")

    def after_poll(self) -> float | None:
        """Subclasses do batched work here, once per turn of the loop; they return
        how soon (seconds) they need another turn even if no message comes, or None."""
        return None

    def on_stop(self) -> None:
        """Subclasses release resources here."""

    def _drain_router(self) -> None:
        router = self.router
        self.begin_batch()
        try:
            for _ in range(self.drain_budget):
                # Checking EVENTS is cheaper than recv raising zmq.Again at the end of each burst.
                if not router.getsockopt(ZMQ_EVENTS) & ZMQ_POLLIN:
                    return
                self.handle(recv_frames(router, ZMQ_NOBLOCK))
        finally:
            self.end_batch()

    def begin_batch(self) -> None:
        """Called before a burst of requests is handled; subclasses may hold their
        replies until :meth:`end_batch` (the manager syncs its journal once per burst)."""

    def end_batch(self) -> None:
        """Called after the burst, also when handling it raised."""

    def reply(self, identity: list | tuple, req_id: int, body: Any, ok: bool = True,
              req: Request | None = None) -> None:
        """Send one reply (``OK`` or ``ERROR``) to the peer behind ``identity``.

        With ``req`` (the request answered) the reply meets the message-fault rules.
        """
        msg_type = protocol.OK if ok else protocol.ERROR
        header = protocol.make_header(msg_type, req_id, self.name, self.incarnation)
        frames = list(identity) + protocol.encode(header, body)
        verdict = None if req is None else \
            self.net.verdict(msg_type, req.sender, req.type in DAEMON_TYPES)
        if verdict is None:
            self._send_reply(frames)
        else:
            self.net.apply(verdict, lambda: self._send_reply(frames))

    def _send_reply(self, frames: list) -> None:
        try:
            send_frames(self.router, frames)
        except zmq.ZMQError as exc:  # peer gone or its queue full: nothing to do
            self.log.debug("reply dropped: %s", exc)

    def send_to_daemon(self, sock: zmq.Socket, frames: list, msg_type: str, peer: str) -> None:
        """Send a request to daemon ``peer`` on ``sock``, through the message-fault rules.
        Raises zmq.Again only when sent now and the queue is full; a message held
        for later that cannot be sent then is lost, as on a network."""
        verdict = self.net.verdict(msg_type, peer, True)
        if verdict is None:
            send_frames(sock, frames)
            return

        def deliver() -> None:
            try:
                send_frames(sock, frames)
            except zmq.ZMQError as exc:  # queue full, or the socket closed meanwhile
                self.log.debug("%s to %s lost: %s", msg_type, peer, exc)
        self.net.apply(verdict, deliver)

    def reply_error(self, identity: list | tuple, req_id: int, exc: FabricError,
                    req: Request | None = None) -> None:
        self.reply(identity, req_id, {"code": exc.code, "message": str(exc)}, ok=False, req=req)

    def respond(self, req: Request, body: Any) -> None:
        """The OK reply to ``req`` (for a command that deferred it)."""
        self.reply(req.identity, req.id, body, req=req)

    def respond_error(self, req: Request, exc: FabricError) -> None:
        """The ERROR reply to ``req``."""
        self.reply_error(req.identity, req.id, exc, req=req)

    def handle(self, frames: list, faulted: bool = False) -> None:
        """Parse one request, run its command, send exactly one reply.

        A request from a client meets the message-fault rules here (``faulted``:
        it already has, and was held or duplicated).
        """
        # ROUTER prefixes the peer identity; a DEALER peer sends [payload, *raw].
        identity = [frames[0]]
        req_id = -1
        req = None
        try:
            try:
                header, body = protocol.decode(frames[1:])
            except ProtocolError as exc:
                req_id = getattr(exc, "req_id", -1)
                raise
            req_id = header["id"]
            req = Request.from_header(identity, header)
            if not faulted and req.type not in DAEMON_TYPES:
                verdict = self.net.verdict(req.type, req.sender, False)
                if verdict is not None:
                    self.net.apply(verdict, lambda: self.handle(frames, faulted=True))
                    return
            cmd = self.handlers.get(req.type)
            if cmd is None:
                raise ProtocolError(f"unknown message type {req.type!r}")
            args = cmd.validate(body)
            result = cmd.execute(self, args, req)
            if result is not DEFERRED:
                self.reply(identity, req_id, result, req=req)
        except FabricError as exc:
            self.log.info("request %s failed: %s: %s", req_id, exc.code, exc)
            self.reply_error(identity, req_id, exc, req=req)
        except Exception as exc:  # a bug: answer, log, keep serving
            self.log.error("request %s crashed:\n%s", req_id, traceback.format_exc())
            self.reply_error(identity, req_id, FabricError(f"internal error: {type(exc).__name__}: {exc}"),
                             req=req)


#: Returned by a command that will reply later (e.g. an allocation waiting for a scrub).
DEFERRED = object()


def setup_logging(state: StateDir, name: str) -> None:
    os.makedirs(state.logs_dir, exist_ok=True)
    logging.basicConfig(
        filename=os.path.join(state.logs_dir, f"{name}.log"), level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def base_argparser(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--state-dir", required=True, help="the cluster's state directory")
    p.add_argument("--owner-pid", type=int, default=None,
                   help="exit when this process is gone (set by fabric.Cluster.start)")
    return p


#: Descriptors a daemon keeps free for its own work (logs, device files, node sockets,
#: ZeroMQ's internals): new sessions are refused before fewer than this are left.
FD_RESERVE = 64


def raise_fd_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; return the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft


def fds_in_use() -> int:
    """Open file descriptors of this process (Linux /proc)."""
    return len(os.listdir("/proc/self/fd"))


def check_fd_room(limit: int, what: str) -> None:
    """ResourceExhausted when taking on ``what`` could run the process out of descriptors."""
    used = fds_in_use()
    if used + FD_RESERVE > limit:
        raise ResourceExhausted(f"{what} refused: this daemon has {used} of its {limit} file "
                                f"descriptors open; close sessions, or raise the hard limit "
                                f"(ulimit -Hn) before fabric up")


def run_main(make: Callable[[argparse.Namespace], Daemon], args: argparse.Namespace) -> int:
    """Build and serve a daemon; turn start-up failures into a log line and exit code 3."""
    try:
        daemon = make(args)
    except FabricError as exc:
        logging.getLogger("daemon").error("cannot start: %s", exc)
        print(f"error: {exc}", file=sys.stderr)
        return 3
    daemon.serve()
    return 0
