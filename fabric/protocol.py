"""The wire protocol: msgpack over ZeroMQ (spec in docs/protocol.md).

Every message is a multipart ZeroMQ message::

    [identity...]  payload  [raw frames...]

``payload`` is one msgpack array ``[header, body]`` of two maps
(``use_bin_type=True``, never pickle): one frame, so a request costs one send
and one receive on each side.  A request header carries::

    {"v": 2, "id": <int>, "type": "ALLOC", "from": "h1", "inc": <int>, "ttl_ms": <int>,
     "key": <int>}

``v`` is the protocol version, ``id`` the request id echoed in the reply,
``from`` the sender (host, node or "cli"), ``inc`` the sender's incarnation,
``ttl_ms`` how long the sender will wait (its deadline) and ``key`` (optional)
the idempotency key: the id of the first attempt of a request, repeated by
every retry of it, so (``from``, ``inc``, ``key``) names one logical request
and the manager applies a retried ALLOC or FREE once.  A reply header
has ``type`` "OK" or "ERROR"; an ERROR body is ``{"code": ..., "message": ...}``
with a code from :mod:`fabric.errors`.  Unknown header keys are ignored.
ROUTER identity frames are routing, not message: they never enter the header.

:func:`encode` and :func:`decode` are the only code that frames a message, and
:func:`send_frames` and :func:`recv_frames` the only code that moves one;
every daemon and client goes through them.

Daemons bind a ROUTER; clients use a DEALER with ``LINGER 0``.  :class:`Client`
gives every request a deadline and raises :class:`~fabric.errors.FabricTimeout`
when it passes; a reply whose id is not the one awaited is dropped.  With
``retry=True`` it resends an unanswered request (same ``key``, on a new
connection, so a restarted daemon gets it) after ``RETRY_FIRST_MS``, then at
doubling intervals up to ``RETRY_MAX_MS``, all within the one deadline; it
listens on the earlier attempts' connections too (up to
``MAX_ATTEMPT_SOCKETS``), so a slow daemon's answer is not thrown away.
"""
from __future__ import annotations

import itertools
import math
import os
import time
from typing import Any

import msgpack
import zmq

from . import constants
from .errors import FabricTimeout, ProtocolError, error_from_code

PROTOCOL_VERSION = 2
#: Largest control message a daemon will parse; bigger ones get an error reply.
MAX_CONTROL_BYTES = 1 << 20
#: Larger than this, ZeroMQ drops the connection before the daemon sees it.
MAX_MESSAGE_BYTES = 64 << 20
#: Aliases of fabric.constants (client code imports them from here).
DEFAULT_TIMEOUT_MS = constants.DEFAULT_TIMEOUT_MS
MAX_TIMEOUT_MS = constants.MAX_TIMEOUT_MS

OK = "OK"
ERROR = "ERROR"
#: A retrying Client resends an unanswered request after this long ...
RETRY_FIRST_MS = 200
#: ... then at doubling intervals of at most this long, until the request's deadline.
RETRY_MAX_MS = 500
#: Connections one request keeps open at once (its first and its latest resends).
MAX_ATTEMPT_SOCKETS = 4

#: pyzmq's constants are enums whose operators cost microseconds on a hot path.
ZMQ_NOBLOCK, ZMQ_SNDMORE = int(zmq.NOBLOCK), int(zmq.SNDMORE)
ZMQ_RCVMORE, ZMQ_RCVTIMEO = int(zmq.RCVMORE), int(zmq.RCVTIMEO)

_packer = msgpack.Packer(use_bin_type=True)


def unpack(data: bytes, what: str) -> Any:
    """msgpack-decode ``data``; anything malformed raises ProtocolError."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError(f"malformed {what}: {type(exc).__name__}: {exc}") from None


def make_header(msg_type: str, req_id: int, sender: str, incarnation: int,
                ttl_ms: int | None = None, key: int | None = None) -> dict:
    h = {"v": PROTOCOL_VERSION, "id": req_id, "type": msg_type, "from": sender,
         "inc": incarnation}
    if ttl_ms is not None:
        h["ttl_ms"] = ttl_ms
    if key is not None:
        h["key"] = key
    return h


def check_header(h: Any) -> dict:
    """Check a decoded header (a map; version, id, type, ttl_ms, from); raises ProtocolError."""
    if not isinstance(h, dict):
        raise ProtocolError("header is not a map")
    if h.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {h.get('v')!r} is not supported "
                            f"(this daemon speaks {PROTOCOL_VERSION})")
    if not isinstance(h.get("id"), int) or not isinstance(h.get("type"), str):
        raise ProtocolError("header needs an integer 'id' and a string 'type'")
    ttl = h.get("ttl_ms")
    if ttl is not None and (not isinstance(ttl, int) or isinstance(ttl, bool) or ttl < 0):
        raise ProtocolError(f"header 'ttl_ms' must be a non-negative int, got {ttl!r}")
    if not isinstance(h.get("from", ""), str):
        raise ProtocolError("header 'from' must be a string")
    return h


def encode(header: dict, body: Any) -> list[bytes]:
    """The frames of one message: ``[payload]`` (a sender adds routing identities in
    front; the header never carries them)."""
    return [_packer.pack((header, body if body is not None else {}))]


def recv_frames(sock: zmq.Socket, flags: int = 0) -> list[bytes]:
    """Every frame of the next message on ``sock`` (with ZMQ_NOBLOCK: zmq.Again when
    there is none; without it, zmq.Again when the socket's receive timeout passes)."""
    frames = [sock.recv(flags)]
    while sock.getsockopt(ZMQ_RCVMORE):
        frames.append(sock.recv(ZMQ_NOBLOCK))
    return frames


def send_frames(sock: zmq.Socket, frames: list | tuple) -> None:
    """Send one message without blocking (zmq.Again when the peer's queue is full), each
    frame with int flags: pyzmq's send_multipart combines enum flags per frame."""
    last = len(frames) - 1
    for i, f in enumerate(frames):
        sock.send(f, ZMQ_NOBLOCK | ZMQ_SNDMORE if i < last else ZMQ_NOBLOCK)


def decode(frames: list, limit_bytes: int = MAX_CONTROL_BYTES) -> tuple[dict, dict]:
    """Parse and check one message's frames (identities already removed).

    Returns ``(header, body)``: the header checked by :func:`check_header`, the
    body a map.  Anything else -- no frame, a message over ``limit_bytes``
    (``MAX_CONTROL_BYTES`` for requests; raw frames count), malformed msgpack, a
    payload that is not ``[header, body]``, a body that is not a map -- raises
    :class:`ProtocolError`.  When the header could be read far enough to find an
    integer ``id``, the exception carries it as ``req_id`` so the error reply can
    still reach the caller; otherwise ``req_id`` is -1.
    """
    req_id = -1
    try:
        if not frames:
            raise ProtocolError("expected a payload frame, got none")
        data = frames[0] if isinstance(frames[0], bytes) else frames[0].bytes
        total = len(data)
        if len(frames) > 1:
            total += sum(len(f if isinstance(f, bytes) else f.bytes) for f in frames[1:])
        if total > limit_bytes:
            req_id = _peek_id(data)
            raise ProtocolError(f"message of {total} bytes exceeds the "
                                f"{limit_bytes}-byte control limit")
        msg = unpack(data, "message")
        if not isinstance(msg, list) or len(msg) != 2:
            raise ProtocolError("message is not a [header, body] array")
        header, body = msg
        if isinstance(header, dict) and isinstance(header.get("id"), int):
            req_id = header["id"]
        check_header(header)
        if not isinstance(body, dict):
            raise ProtocolError("body is not a map")
        return header, body
    except ProtocolError as exc:
        exc.req_id = req_id  # type: ignore[attr-defined]
        raise


#: How much of an oversized message is read to find its request id.
_PEEK_BYTES = 4096


def _peek_id(data: bytes) -> int:
    """Best effort: the integer ``id`` in the header at the start of ``data``, else -1
    (reads at most _PEEK_BYTES: the rest of an oversized message is never parsed)."""
    try:
        u = msgpack.Unpacker(raw=False, strict_map_key=False)
        u.feed(memoryview(data)[:_PEEK_BYTES])
        if u.read_array_header() != 2:
            return -1
        h = u.unpack()
    except Exception:   # msgpack raises several unrelated types
        return -1
    return h["id"] if isinstance(h, dict) and isinstance(h.get("id"), int) else -1


def new_incarnation() -> int:
    """A number that grows across restarts: microseconds since the epoch."""
    return time.time_ns() // 1000


class Client:
    """A DEALER connection to one daemon with per-request deadlines.

    Not thread-safe (ZeroMQ sockets are not); use one Client per thread.
    """

    def __init__(self, endpoint: str, sender: str, *, timeout_ms: int = DEFAULT_TIMEOUT_MS,
                 context: zmq.Context | None = None):
        self.endpoint = endpoint
        self.sender = sender
        self.timeout_ms = timeout_ms
        self.incarnation = new_incarnation()
        self._ctx = context or zmq.Context.instance()
        self._ids = itertools.count(1)
        self._pid = os.getpid()
        self._sock: zmq.Socket | None = None
        self._rcvtimeo: tuple | None = None   # (socket, RCVTIMEO it was last given)
        #: The ``inc`` of the last reply (the daemon's incarnation: it changes on a restart).
        self.peer_incarnation: int | None = None
        #: Requests resent so far (retry=True), for tests and benchmarks.
        self.resends = 0
        self._connect()

    def _connect(self) -> None:
        s = self._ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(self.endpoint)
        self._sock = s

    def request(self, msg_type: str, body: dict | None = None, *,
                timeout_ms: int | None = None, retry: bool = False) -> Any:
        """Send one request and return the reply body; raise the typed error it carries.

        ``retry``: resend it while unanswered (same idempotency key, new
        connection; see the module docstring), never past ``timeout_ms``.  The
        connections of earlier attempts stay open until the request is answered,
        so a daemon that is merely slow still gets its answer through.
        """
        first = self._sock
        if first is None:
            raise ProtocolError("client is closed")
        timeout_ms = self.timeout_ms if timeout_ms is None else timeout_ms
        key = next(self._ids)
        start = time.monotonic()
        deadline = start + timeout_ms / 1000
        interval_s = RETRY_FIRST_MS / 1000
        resend_at = start + interval_s if retry else float("inf")
        # (socket, request id of the attempt sent on it), oldest first; the first is self._sock
        attempts: list[tuple[zmq.Socket, int]] = [(first, key)]
        try:
            send_frames(first, encode(make_header(msg_type, key, self.sender,
                                                  self.incarnation, timeout_ms, key), body))
        except zmq.Again:
            if not retry:
                raise FabricTimeout(f"{msg_type} to {self.endpoint}: send queue full") from None
            resend_at = start   # resent on a new connection at once
        try:
            while True:
                now = time.monotonic()
                if now >= deadline:
                    raise FabricTimeout(f"{msg_type} to {self.endpoint}: no reply within "
                                        f"{timeout_ms} ms")
                if now >= resend_at:
                    # The daemon may have died with the request, or a stopped one may hold
                    # the old connection: resend on a new one, keep listening on the old.
                    sock = self._ctx.socket(zmq.DEALER)
                    sock.setsockopt(zmq.LINGER, 0)
                    sock.connect(self.endpoint)
                    rid = next(self._ids)
                    attempts.append((sock, rid))
                    if len(attempts) > MAX_ATTEMPT_SOCKETS:
                        attempts.pop(1)[0].close(0)   # the oldest resend; keep the first
                    try:
                        send_frames(sock, encode(make_header(
                            msg_type, rid, self.sender, self.incarnation,
                            max(1, int((deadline - now) * 1000)), key), body))
                        self.resends += 1
                    except zmq.Again:
                        pass
                    interval_s = min(interval_s * 2, RETRY_MAX_MS / 1000)
                    resend_at = now + interval_s
                # Rounded up: the same timeout request after request (see _recv_within).
                wait_ms = max(1, math.ceil((min(deadline, resend_at) - now) * 1000))
                if len(attempts) == 1:
                    # One connection: a receive with a timeout (cheaper than poll, then receive).
                    got = [(first, self._recv_within(first, wait_ms))]
                else:
                    poller = zmq.Poller()
                    for sock, _rid in attempts:
                        poller.register(sock, zmq.POLLIN)
                    got = [(sock, recv_frames(sock, ZMQ_NOBLOCK))
                           for sock, _ev in poller.poll(wait_ms)]
                for sock, frames in got:
                    if frames is None:
                        continue
                    rid = next(r for s_, r in attempts if s_ is sock)
                    try:
                        rh, rb = decode(frames, MAX_MESSAGE_BYTES)
                    except ProtocolError as exc:
                        if getattr(exc, "req_id", -1) == rid:
                            raise ProtocolError(f"{msg_type}: malformed reply: {exc}") from None
                        continue  # garbage, or a stale reply to a request that timed out
                    if rh["id"] != rid:
                        continue  # stale reply to a request that already timed out
                    if len(attempts) > 1:
                        self._keep(sock, attempts)
                    attempts = []
                    inc = rh.get("inc")
                    self.peer_incarnation = inc if isinstance(inc, int) else None
                    if rh["type"] == ERROR:
                        raise error_from_code(str(rb.get("code")), str(rb.get("message")))
                    return rb
        finally:
            if attempts:
                # Unanswered: drop every socket of this request, so a late reply can never
                # be taken for a later request's.
                for sock, _rid in attempts:
                    sock.close(0)
                self._connect()

    def _recv_within(self, sock: zmq.Socket, wait_ms: int) -> list | None:
        """One message from ``sock`` within ``wait_ms``, or None.  The socket option is
        set only when the wait changes: most requests wait as long as the one before."""
        if self._rcvtimeo != (sock, wait_ms):
            sock.setsockopt(ZMQ_RCVTIMEO, wait_ms)
            self._rcvtimeo = (sock, wait_ms)
        try:
            return recv_frames(sock)
        except zmq.Again:
            return None

    def _keep(self, sock: zmq.Socket, attempts: list) -> None:
        """Carry on with the connection that answered; close the request's others."""
        for other, _rid in attempts:
            if other is not sock:
                other.close(0)
        self._sock = sock

    def close(self) -> None:
        if self._sock is not None and os.getpid() == self._pid:
            self._sock.close(0)
        self._sock = None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
