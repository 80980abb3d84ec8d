"""The fabric manager's requests, one class each.

Each class's docstring is the wire spec of its request and reply (the same
forms as docs/protocol.md).  ``validate(body)`` checks the body's shape and
returns what ``execute(manager, args, req)`` needs; ``req`` is the
:class:`fabric.daemons.base.Request` context (sender, id, deadline, routing
identity).  Bad input raises a :mod:`fabric.errors` subclass, which the
daemon answers as an ``ERROR`` reply.
"""
from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from fabric.constants import (ACCESS_MODES, DEFAULT_INJECT, DEFAULT_PLACEMENT, DEFAULT_SHARE,
                              INJECT_MODES, MAX_NAME_LEN, SHARE_MODES)
from fabric.daemons.base import (DEFERRED, Command, Request, check_fd_room, check_secret, field,
                                 int_field)
from fabric.errors import AccessDenied, InvalidArgument, NodeUnavailable, StaleIncarnation

if TYPE_CHECKING:
    from . import Manager


def idempotency_key(req: Request) -> tuple | None:
    """(sender, sender incarnation, key) of a request whose header has a ``key``, else None."""
    if req.key is None or req.incarnation is None:
        return None
    return (req.sender, req.incarnation, req.key)

#: Largest integer on the wire (msgpack's unsigned 64-bit).
MAX_UINT64 = (1 << 64) - 1
#: Largest pid a HELLO may name (Linux's pid_max is at most 2**22).
MAX_PID = (1 << 31) - 1


def region_name(body: dict) -> str:
    """The body's ``name``: 1-MAX_NAME_LEN printable characters without '/'."""
    name = field(body, "name", str)
    if not name or len(name) > MAX_NAME_LEN or not name.isprintable() or "/" in name:
        raise InvalidArgument(f"region name must be 1-{MAX_NAME_LEN} printable characters "
                              f"without '/', got {name[:40]!r}")
    return name


def check_allow(allow) -> None:
    """``allow`` is None, a list of host names or a map host -> "r" | "rw"."""
    if allow is None:
        return
    if isinstance(allow, list):
        bad = [h for h in allow if not isinstance(h, str)]
    elif isinstance(allow, dict):
        bad = [h for h, mode in allow.items()
               if not isinstance(h, str) or mode not in ACCESS_MODES]
    else:
        raise InvalidArgument("allow must be a list of host names or a map host -> 'r'|'rw', "
                              f"got a {type(allow).__name__}")
    if bad:
        raise InvalidArgument(f"allow entry {bad[0]!r} is not a host name mapped to 'r' or 'rw'")


def acting_host(m: "Manager", req: Request) -> str:
    """The host a request acts as: its ``from``, which must be the host its socket said
    HELLO as (a session cannot act as another host: ACCESS_DENIED)."""
    bound = m.sessions.bound_host(req.identity)
    if bound is not None and bound != req.sender:
        raise AccessDenied(f"this connection opened a session as {bound!r}; it cannot act "
                           f"as {req.sender!r}")
    return req.sender


def check_incarnation(m: "Manager", node: str, inc: int, what: str) -> None:
    """StaleIncarnation when a newer daemon of ``node`` has registered: the sender was
    replaced and is fenced off (it exits when it reads this)."""
    st = m.nodes.get(node)
    if st is not None and st.incarnation is not None and inc < st.incarnation:
        m.log.warning("%s from node %s incarnation %d refused: incarnation %d replaced it",
                      what, node, inc, st.incarnation)
        raise StaleIncarnation(f"{what} from node {node} incarnation {inc} refused: "
                               f"incarnation {st.incarnation} has replaced it")


class Register(Command):
    """A node daemon announces itself (on start, and again after a manager restart).

    request: ``REGISTER {"node": str, "pid": int, "incarnation": int, "endpoint": str,
              "devices": [{"name": str, "capacity_bytes": int, "fresh": bool}],
              "secret": str}``
              (``fresh``: the node created the file just now, so it is all zeros;
              false or absent: reattached, old bytes -- the manager scrubs all of it
              before the first allocation that could use it)
    reply:   ``{"heartbeat_interval_s": float}``
    errors:  ACCESS_DENIED without the cluster's secret; INVALID_ARGUMENT for a node,
             devices or an endpoint that are not the topology's (nothing is changed then);
             STALE_INCARNATION for an incarnation older than the node's registered one
             (a replaced daemon, e.g. paused and resumed after a restart: it is fenced)
    """

    name = "REGISTER"

    def validate(self, body):
        devices = field(body, "devices", list)
        out = []
        for d in devices:
            if not isinstance(d, dict):
                raise InvalidArgument(f"device entry {d!r} is not a map")
            out.append((field(d, "name", str), field(d, "capacity_bytes", int),
                        bool(field(d, "fresh", bool, required=False, default=False))))
        return (field(body, "node", str), int_field(body, "pid", 1, MAX_PID),
                field(body, "incarnation", int), field(body, "endpoint", str), out,
                field(body, "secret", str, required=False, default=""))

    def execute(self, m: "Manager", args, req: Request):
        node, pid, inc, endpoint, devices, secret = args
        check_secret(m.secret, secret, "REGISTER")
        check_incarnation(m, node, inc, "REGISTER")
        m.register_node(node, pid, inc, endpoint, devices)
        return {"heartbeat_interval_s": m.heartbeat_interval_s}


class Heartbeat(Command):
    """A node's periodic beat.

    request: ``HEARTBEAT {"node": str, "incarnation": int, "secret": str}``
    reply:   ``{"known": bool}`` -- false asks the node to REGISTER again
    errors:  ACCESS_DENIED without the cluster's secret; STALE_INCARNATION from an
             incarnation older than the node's registered one (fenced)
    """

    name = "HEARTBEAT"

    def validate(self, body):
        return (field(body, "node", str), field(body, "incarnation", int),
                field(body, "secret", str, required=False, default=""))

    def execute(self, m: "Manager", args, req: Request):
        node, inc, secret = args
        check_secret(m.secret, secret, "HEARTBEAT")
        check_incarnation(m, node, inc, "HEARTBEAT")
        st = m.nodes.get(node)
        if st is None or st.incarnation != inc:
            return {"known": False}
        st.last_beat = time.monotonic()
        if not st.alive:
            m.log.info("node %s is alive again", node)
            m.node_back(st)
        return {"known": True}


class Hello(Command):
    """A client process attaches as an emulated host and opens a session.

    request: ``HELLO {"host": str, "pid": int, "inject": str}`` (``pid`` optional: the
              client's process id; the session ends by itself when that process is gone;
              ``inject`` optional: the client's injection mode, default the cluster's)
    reply:   ``{"host": str, "session": int, "page_size_bytes": int, "topology": {...},
              "devices": {name: {"path": str, "capacity_bytes": int, "node": str}},
              "options": {...cluster options from cluster.json...},
              "spinning_processes": int}`` (processes with a spin-mode session open,
              this one included when it spins: a spinning client warns when they
              outnumber its cores)
    errors:  INVALID_ARGUMENT for a host not in the topology or a bad pid;
             RESOURCE_EXHAUSTED when the manager is close to its file-descriptor limit
             (every client connection costs it one), instead of running out and dying
    """

    name = "HELLO"

    def validate(self, body):
        inject = field(body, "inject", str, required=False)
        if inject is not None and inject not in INJECT_MODES:
            raise InvalidArgument(f"field 'inject' must be one of {', '.join(INJECT_MODES)}, "
                                  f"got {inject!r}")
        return (field(body, "host", str), int_field(body, "pid", 1, MAX_PID, required=False),
                inject)

    def execute(self, m: "Manager", args, req: Request):
        host, pid, inject = args
        m.topology.host(host)  # raises InvalidArgument naming the known hosts
        check_fd_room(m.fd_limit, f"a new session for {host}")
        mode = inject or str(m.options.get("inject", DEFAULT_INJECT))
        session = m.sessions.open(host, pid, req.identity, inject=mode)
        return {"host": host, "session": session, "page_size_bytes": m.page_size,
                "topology": m.topology.to_dict(),
                "devices": {d.name: {"path": m.state.device_path(d.name),
                                     "capacity_bytes": d.capacity_bytes, "node": d.home}
                            for d in m.topology.devices},
                "options": m.options, "spinning_processes": m.sessions.spinning_pids()}


class Bye(Command):
    """A client ends its session (when it closes).

    request: ``BYE {"session": int}``
    reply:   ``{}`` -- also for an unknown or already ended session
    """

    name = "BYE"

    def validate(self, body):
        return int_field(body, "session", 0, MAX_UINT64)

    def execute(self, m: "Manager", session, req: Request):
        m.sessions.close(session)
        return {}


class Alloc(Command):
    """Allocate a region in the pool; the sender (a host) owns it.

    request: ``ALLOC {"name": str, "nbytes": int, "placement": "local"|"interleave"|<device>,
              "devices": [str] | None, "granularity": int | None,
              "share": "private"|"shared"|"coherent",
              "allow": [host] | {host: "r"|"rw"} | None, "mirror": 1 | 2}``
              (the owner is the header's ``from`` host; mirror 2 places a second copy
              on devices homed on other nodes than the first's, default 1)
    reply:   region descriptor with ``access`` ("rw") for the caller
    errors:  INVALID_ARGUMENT, REGION_EXISTS, POOL_FULL, NODE_UNAVAILABLE
    waits:   while freed or reattached memory it could use is being scrubbed, up to
             90% of the request's ttl_ms, ending at least 250 ms before it, at most 10 s
    retries: a request whose header repeats the idempotency key (``from``, ``inc``,
             ``key``) of one already applied gets that one's reply, also after a
             manager restart (the key is journaled with the region); one still waiting
             for a scrub is answered to the retry
    """

    name = "ALLOC"

    def validate(self, body):
        name = region_name(body)
        nbytes = int_field(body, "nbytes", 1, MAX_UINT64)
        placement = field(body, "placement", str, required=False, default=DEFAULT_PLACEMENT)
        devices = field(body, "devices", list, required=False)
        if devices is not None:
            for d in devices:
                if not isinstance(d, str):
                    raise InvalidArgument(f"devices must be a list of device names, got {d!r}")
        gran = int_field(body, "granularity", 1, MAX_UINT64, required=False)
        share = field(body, "share", str, required=False, default=DEFAULT_SHARE)
        if share not in SHARE_MODES:
            raise InvalidArgument(f"share must be one of {', '.join(SHARE_MODES)}, got {share!r}")
        allow = body.get("allow")
        check_allow(allow)
        mirror = field(body, "mirror", int, required=False, default=1)
        if mirror not in (1, 2):
            raise InvalidArgument(f"mirror must be 1 (one copy) or 2 (two copies on different "
                                  f"nodes), got {mirror!r}")
        return name, nbytes, placement, devices, gran, share, allow, mirror

    def execute(self, m: "Manager", args, req: Request):
        key = idempotency_key(req)
        if key is not None and key in m.replies:   # a retry or copy of one already applied
            m.log.info("ALLOC %s from %s: already applied, answered again", key[2], req.sender)
            return m.replies[key]
        if m.rejoin_waiting(req):
            return DEFERRED                 # a retry of one waiting for a scrub
        host = acting_host(m, req)
        m.topology.host(host)
        try:
            region = m.try_allocate(args, host, key)
        except NodeUnavailable:
            if not m.nodes_pending():
                raise
            m.await_nodes(req, self, args)   # a restarted manager: nodes register soon
            return DEFERRED
        if region is None:
            m.defer_alloc(req, args)
            return DEFERRED
        return m.remember(key, region.wire_for(host))


class Open(Command):
    """Open an existing region.

    request: ``OPEN {"name": str}``
    reply:   region descriptor with ``access`` ("r" or "rw") for the caller
    errors:  REGION_NOT_FOUND, ACCESS_DENIED, NODE_UNAVAILABLE
    waits:   right after a manager start, for a node that has not registered yet (at
             most a node timeout after the start; ALLOC too)
    """

    name = "OPEN"

    def validate(self, body):
        return region_name(body)

    def execute(self, m: "Manager", name, req: Request):
        host = acting_host(m, req)
        r = m.directory.require(name)
        if r.access_for(host) is None:
            raise AccessDenied(f"host {host!r} may not open region {name!r} "
                               f"({r.share}, owner {r.owner})")
        try:
            if r.mirrored:                      # either copy will do
                try:
                    m.placer.require_alive(r.devices)
                except NodeUnavailable:
                    m.placer.require_alive(r.mirror_devices)
            else:
                m.placer.require_alive(r.devices)
        except NodeUnavailable:
            if not m.nodes_pending():
                raise
            m.await_nodes(req, self, name)   # a restarted manager: nodes register soon
            return DEFERRED
        return r.wire_for(host)


class Free(Command):
    """Free a region; its extents are scrubbed before reuse.

    request: ``FREE {"name": str, "force": bool, "as_host": str}`` (both optional)
    reply:   ``{}``
    errors:  REGION_NOT_FOUND (also for a double free), ACCESS_DENIED
    retries: a request repeating the idempotency key of a FREE already applied gets
             ``{}`` again (not REGION_NOT_FOUND), also after a manager restart

    Only the owner may free a region.  From ``"cli"`` (the header's ``from``)
    two more forms are honoured: ``"as_host": h`` frees as host ``h`` (the
    owner check applies to ``h``), and ``"force": true`` frees whoever owns
    it.  From any other sender both fields are ignored.
    """

    name = "FREE"

    def validate(self, body):
        return (region_name(body), bool(field(body, "force", bool, required=False, default=False)),
                field(body, "as_host", str, required=False))

    def execute(self, m: "Manager", args, req: Request):
        name, force, as_host = args
        key = idempotency_key(req)
        if key is not None and key in m.replies:   # a retry or copy of one already applied
            m.log.info("FREE %s from %s: already applied, answered again", key[2], req.sender)
            return m.replies[key]
        r = m.directory.require(name)
        from_cli = req.sender == "cli"
        acting = as_host if from_cli and as_host is not None else acting_host(m, req)
        if not (from_cli and force) and acting != r.owner:
            raise AccessDenied(f"only the owner {r.owner!r} may free region {name!r}"
                               + (" (or `fabric free --force`)" if from_cli else ""))
        m.free_region(name, key)
        return m.remember(key, {})


class ListRegions(Command):
    """List the regions visible to the caller (all of them for the CLI).

    request: ``LIST {}``
    reply:   ``{"regions": [descriptor, ...]}`` (with ``access`` when the sender is a host)
    """

    name = "LIST"

    def execute(self, m: "Manager", args, req: Request):
        host = req.sender
        if host in m.topology.host_names:
            return {"regions": [r.wire_for(host) for r in m.directory
                                if r.access_for(host) is not None]}
        return {"regions": [r.to_wire() for r in m.directory]}


class Translate(Command):
    """Map a global address to (device, offset).

    request: ``TRANSLATE {"address": int}``
    reply:   ``{"device": str, "offset": int, "region": str, "region_offset": int}``
    errors:  REGION_NOT_FOUND when no region covers the address
    """

    name = "TRANSLATE"

    def validate(self, body):
        return field(body, "address", int)

    def execute(self, m: "Manager", addr, req: Request):
        r, off, dev, dev_off = m.directory.translate(addr)
        return {"device": dev, "offset": dev_off, "region": r.name, "region_offset": off}


class Status(Command):
    """Cluster status for `fabric status`.

    request: ``STATUS {}``
    reply:   ``{"manager": {"pid", "incarnation", "topology", "started_unix_s", "uptime_s",
                           "node_timeout_ms",
                           "journal": {"enabled", "seq", "recovered_regions"}},
              "nodes": [{"name", "alive", "pid", "incarnation", "is_host", "devices",
                         "last_beat_age_s"}],
              "devices": [{"name", "node", "capacity_bytes", "used_bytes", "free_bytes",
                           "scrubbing_bytes", "path", "state"}],
              "regions": [descriptor, ...],
              "sessions": {host: int}}``
    A device's ``used_bytes`` (held by regions), ``free_bytes`` (allocatable now)
    and ``scrubbing_bytes`` (being zeroed) add up to ``capacity_bytes``; its
    ``state`` is "up", "unavailable" (its node is dead) or "failed" (fault injection).
    ``sessions`` counts the open sessions of every host of the topology.
    """

    name = "STATUS"

    def execute(self, m: "Manager", args, req: Request):
        now = time.monotonic()
        m.prune_sessions()
        nodes = [{"name": s.name, "alive": s.alive, "pid": s.pid, "incarnation": s.incarnation,
                  "is_host": s.is_host, "devices": s.devices,
                  "last_beat_age_s": round(now - s.last_beat, 3) if s.last_beat else None}
                 for s in m.nodes.values()]
        devices = []
        for d in m.topology.devices:
            free = m.allocs[d.name].free_bytes
            scrubbing = m.scrubs.pending_bytes(d.name)
            devices.append({"name": d.name, "node": d.home, "capacity_bytes": d.capacity_bytes,
                            "used_bytes": d.capacity_bytes - free - scrubbing,
                            "free_bytes": free, "scrubbing_bytes": scrubbing,
                            "path": m.state.device_path(d.name),
                            "state": m.device_states.state(d.name)})
        return {"manager": {"pid": os.getpid(), "incarnation": m.incarnation,
                            "topology": m.topology.name,
                            "started_unix_s": m.started_unix_s,
                            "uptime_s": round(now - m.started_monotonic, 3),
                            "node_timeout_ms": round(m.node_timeout_s * 1000),
                            "journal": {"enabled": m.journal.enabled, "seq": m.journal.seq,
                                        "recovered_regions": m.recovered_regions}},
                "nodes": nodes, "devices": devices,
                "regions": [r.to_wire() for r in m.directory],
                "sessions": m.sessions.counts(m.topology.host_names)}
