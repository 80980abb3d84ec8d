"""Client sessions: which processes are attached as which host.

HELLO opens a session (id -> host, pid), BYE closes it; a session whose
process is gone (no such pid, a zombie, or the pid now belongs to a process
started later) is pruned -- periodically and on STATUS -- so a client that
crashed without BYE does not count for ever.  A session opened without a pid
ends only with BYE.

A session also records the client's injection mode, so that a spinning client
can learn how many other processes spin (each needs a core of its own).
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class SessionInfo:
    id: int
    host: str
    pid: int | None
    pid_created: float | None     # the process's start time, to notice a reused pid
    opened_unix_s: float
    identity: tuple = ()          # the client socket's routing identity, bound to ``host``
    inject: str = ""              # the client's injection mode ("" if it did not say)


def _create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, OSError):
        return None


def _gone(s: SessionInfo) -> bool:
    if s.pid is None:
        return False
    if not psutil.pid_exists(s.pid):
        return True
    try:
        p = psutil.Process(s.pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return True
        return s.pid_created is not None and p.create_time() != s.pid_created
    except psutil.NoSuchProcess:
        return True
    except (psutil.Error, OSError):
        return False  # cannot tell (e.g. permissions): keep it


class SessionTable:
    """Open sessions by id; ids count up from 1 and are never reused."""

    def __init__(self) -> None:
        self._sessions: dict[int, SessionInfo] = {}
        self._by_identity: dict[tuple, int] = {}    # routing identity -> session id
        self._ids = itertools.count(1)

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, sid: object) -> bool:
        return sid in self._sessions

    def open(self, host: str, pid: int | None, identity: tuple = (), inject: str = "") -> int:
        """Open a session; requests from ``identity`` (a socket) then act as ``host`` only."""
        sid = next(self._ids)
        created = _create_time(pid) if pid is not None else None
        self._sessions[sid] = SessionInfo(sid, host, pid, created, time.time(), identity, inject)
        if identity:
            self._by_identity[identity] = sid
        return sid

    def close(self, sid: int) -> bool:
        """End a session; False if there was none with that id (not an error)."""
        s = self._sessions.pop(sid, None)
        if s is not None and self._by_identity.get(s.identity) == sid:
            del self._by_identity[s.identity]
        return s is not None

    def bound_host(self, identity: tuple) -> str | None:
        """The host the socket ``identity`` said HELLO as, or None for an unknown socket."""
        sid = self._by_identity.get(identity)
        return self._sessions[sid].host if sid is not None else None

    def prune(self) -> list[SessionInfo]:
        """Drop the sessions whose process is gone; returns them."""
        gone = [s for s in self._sessions.values() if _gone(s)]
        for s in gone:
            self.close(s.id)
        return gone

    def spinning_pids(self) -> int:
        """Distinct processes with an open session in spin mode (a session without a pid
        counts as one process of its own)."""
        pids = {s.pid if s.pid is not None else ("session", s.id)
                for s in self._sessions.values() if s.inject == "spin"}
        return len(pids)

    def counts(self, hosts: list[str]) -> dict[str, int]:
        """Open sessions per host, 0 for every host of ``hosts`` that has none."""
        out = {h: 0 for h in hosts}
        for s in self._sessions.values():
            out[s.host] = out.get(s.host, 0) + 1
        return out
