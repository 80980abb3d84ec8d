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
import logging
import os
import signal
import sys
import time
import traceback
from typing import Any, Callable

import psutil
import zmq

from fabric import protocol
from fabric.errors import FabricError, InvalidArgument, ProtocolError
from fabric.statedir import StateDir


class Command:
    """One request type.  Subclasses set ``name`` and document request and reply.

    ``validate(body)`` checks the body's shape and returns what ``execute``
    needs; ``execute(daemon, args, header)`` does the work and returns the
    reply body.  Both raise FabricError subclasses for bad input.
    """

    name = ""

    def validate(self, body: dict) -> Any:
        return body

    def execute(self, daemon: "Daemon", args: Any, header: dict) -> Any:
        raise NotImplementedError


class Ping(Command):
    """Liveness probe.

    request: ``PING {}``
    reply:   ``{"name": str, "pid": int, "incarnation": int}``
    """

    name = "PING"

    def execute(self, daemon, args, header):
        return {"name": daemon.name, "pid": os.getpid(), "incarnation": daemon.incarnation}


class Shutdown(Command):
    """Stop the daemon after replying.

    request: ``SHUTDOWN {}``
    reply:   ``{}``
    """

    name = "SHUTDOWN"

    def execute(self, daemon, args, header):
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


class Daemon:
    """Base daemon: bind, poll, dispatch, run timers, stop on signal."""

    commands: tuple[type[Command], ...] = (Ping, Shutdown)
    log_name = "daemon"

    def __init__(self, name: str, state: StateDir, endpoint: str, owner_pid: int | None = None):
        self.name = name
        self.state = state
        self.endpoint = endpoint
        self.owner_pid = owner_pid
        self.incarnation = protocol.new_incarnation()
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
            while self.running:
                now = time.monotonic()
                next_due = min((t[0] for t in self._timers), default=now + 0.1)
                timeout_ms = max(0, min(100, int((next_due - now) * 1000)))
                ready = dict(self.poller.poll(timeout_ms))  # pyzmq retries EINTR itself
                if self.router in ready:
                    self._drain_router()
                for sock, fn in list(self.extra_sockets.items()):
                    if sock in ready:
                        fn(sock)
                now = time.monotonic()
                for t in self._timers:
                    if now >= t[0]:
                        t[0] = now + t[1]
                        try:
                            t[2]()
                        except Exception:
                            self.log.error("timer %s failed:\n%s", t[2], traceback.format_exc())
        finally:
            self.on_stop()
            self.ctx.destroy(linger=0)
            self.log.info("stopped")

    def on_stop(self) -> None:
        """Subclasses release resources here."""

    def _drain_router(self, budget: int = 256) -> None:
        router = self.router
        for _ in range(budget):
            # Checking EVENTS is cheaper than recv raising zmq.Again at the end of each burst.
            if not router.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                return
            self.handle(router.recv_multipart(zmq.NOBLOCK, copy=False))

    def reply(self, identity: list, req_id: int, body: Any, ok: bool = True) -> None:
        header = protocol.make_header(protocol.OK if ok else protocol.ERROR, req_id, self.name,
                                      self.incarnation)
        try:
            self.router.send_multipart(identity + [protocol.pack(header), protocol.pack(body)],
                                       zmq.NOBLOCK)
        except zmq.ZMQError as exc:  # peer gone or its queue full: nothing to do
            self.log.debug("reply dropped: %s", exc)

    def reply_error(self, identity: list, req_id: int, exc: FabricError) -> None:
        self.reply(identity, req_id, {"code": exc.code, "message": str(exc)}, ok=False)

    def handle(self, frames: list) -> None:
        """Parse one request, run its command, send exactly one reply."""
        # ROUTER prefixes the peer identity; a DEALER peer sends [header, body, *raw].
        identity = [frames[0].bytes]
        rest = frames[1:]
        req_id = -1
        try:
            if len(rest) < 2:
                raise ProtocolError(f"expected header and body frames, got {len(rest)} frame(s)")
            total = sum(len(f.buffer) for f in rest)
            if total > protocol.MAX_CONTROL_BYTES:
                raise ProtocolError(f"message of {total} bytes exceeds the "
                                    f"{protocol.MAX_CONTROL_BYTES}-byte control limit")
            header_bytes = rest[0].bytes
            try:
                header = protocol.parse_header(header_bytes)
            except ProtocolError:
                try:  # best effort: find the id so the error reaches the caller
                    peek = protocol.unpack(header_bytes, "header")
                    if isinstance(peek, dict) and isinstance(peek.get("id"), int):
                        req_id = peek["id"]
                except ProtocolError:
                    pass
                raise
            req_id = header["id"]
            body = protocol.unpack(rest[1].bytes, "body")
            if not isinstance(body, dict):
                raise ProtocolError("body is not a map")
            cmd = self.handlers.get(header["type"])
            if cmd is None:
                raise ProtocolError(f"unknown message type {header['type']!r}")
            args = cmd.validate(body)
            result = cmd.execute(self, args, {**header, "_identity": identity})
            if result is not DEFERRED:
                self.reply(identity, req_id, result)
        except FabricError as exc:
            self.log.info("request %s failed: %s: %s", req_id, exc.code, exc)
            self.reply_error(identity, req_id, exc)
        except Exception as exc:  # a bug: answer, log, keep serving
            self.log.error("request %s crashed:\n%s", req_id, traceback.format_exc())
            self.reply_error(identity, req_id, FabricError(f"internal error: {type(exc).__name__}: {exc}"))


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
