"""Scrubs in flight: extents being zeroed by their node before they can be reused.

Freed extents, and at start every byte of a reattached device file (whose
old contents no region owns any more), are out of the allocators until the
node that homes the device acknowledges a SCRUB of them.  The
:class:`ScrubTracker` remembers each scrub until then.

Every send of a scrub gets a fresh request id and only the acknowledgement
of the latest send counts: a node handles one connection's requests in
order, so when that ack arrives every earlier copy has been handled too and
none can zero the extent after it is handed out again.  Scrubs are sent
again when their node registers again (a new connection) and when one has
gone unacknowledged for ``RESEND_AFTER_S`` while its node answered nothing
either (a node busy working through a long queue of scrubs is not asked
again).
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

#: An unacknowledged scrub is sent again after this long.
RESEND_AFTER_S = 5.0
#: Reattached devices are scrubbed in pieces of at most this size, so the node
#: beats between pieces and allocations can use the first pieces early.
INITIAL_CHUNK_BYTES = 256 << 20


@dataclass
class Scrub:
    """One extent to zero: ``nbytes`` at ``offset`` of ``device``, homed on ``node``."""

    id: int
    node: str
    device: str
    offset: int
    nbytes: int
    initial: bool = False            # reattached memory found at start, not a freed region
    send_id: int | None = None       # request id of the latest send (None: never sent)
    sent_at: float = 0.0
    sends: int = 0
    failures: list[str] = field(default_factory=list)


class ScrubTracker:
    """Pending scrubs by id.  ``send(scrub, req_id) -> bool`` puts one on the wire
    (False if it could not be sent now; it is retried later)."""

    def __init__(self, send: Callable[[Scrub, int], bool], resend_after_s: float = RESEND_AFTER_S,
                 journal: Callable[[str, Scrub], None] | None = None):
        self._send = send
        #: Told ("scrub", s) when an extent starts waiting and ("scrubbed", s) when it is
        #: zeroed (the manager's journal); None: not journaled.
        self.journal = journal
        self.resend_after_s = resend_after_s
        self._pending: dict[int, Scrub] = {}
        self._by_send: dict[int, int] = {}       # latest send id -> scrub id
        self._progress: dict[str, float] = {}    # node -> when it last answered a scrub
        self._ids = itertools.count(1)
        self._send_ids = itertools.count(1)

    def __len__(self) -> int:
        return len(self._pending)

    def __iter__(self) -> Iterator[Scrub]:
        return iter(list(self._pending.values()))

    def add(self, node: str, device: str, offset: int, nbytes: int, *,
            initial: bool = False) -> Scrub:
        """Track a new scrub and try to send it."""
        s = Scrub(next(self._ids), node, device, offset, nbytes, initial)
        if self.journal is not None:
            self.journal("scrub", s)
        self._pending[s.id] = s
        self.send(s)
        return s

    def send(self, s: Scrub) -> None:
        if s.send_id is not None:
            self._by_send.pop(s.send_id, None)
        s.send_id = next(self._send_ids)
        s.sent_at = time.monotonic()
        s.sends += 1
        self._by_send[s.send_id] = s.id
        if not self._send(s, s.send_id):
            s.sent_at = 0.0  # due again at the next resend check

    def resend_node(self, node: str) -> None:
        """Send again every scrub homed on ``node`` (it registered: a new connection)."""
        for s in self:
            if s.node == node:
                self.send(s)

    def resend_overdue(self, now: float | None = None) -> int:
        """Send again every scrub unacknowledged for ``resend_after_s``; how many."""
        now = time.monotonic() if now is None else now
        n = 0
        for s in self:
            if now - max(s.sent_at, self._progress.get(s.node, 0.0)) >= self.resend_after_s:
                self.send(s)
                n += 1
        return n

    def ack(self, send_id: int) -> Scrub | None:
        """The node zeroed the extent of send ``send_id``: the scrub, now done, or None
        (an ack of an earlier send, or a duplicate)."""
        sid = self._by_send.pop(send_id, None)
        if sid is None:
            return None
        s = self._pending.pop(sid)
        self._progress[s.node] = time.monotonic()
        if self.journal is not None:
            self.journal("scrubbed", s)
        return s

    def failed(self, send_id: int, message: str) -> Scrub | None:
        """The node could not zero it; it stays pending (resent later)."""
        sid = self._by_send.get(send_id)
        if sid is None:
            return None
        s = self._pending[sid]
        s.failures.append(message)
        self._progress[s.node] = time.monotonic()
        return s

    def pending_bytes(self, device: str | None = None) -> int:
        return sum(s.nbytes for s in self._pending.values()
                   if device is None or s.device == device)

    def initial_pending(self, devices=None) -> bool:
        """Is reattached memory still being scrubbed (on ``devices``, default any)?"""
        return any(s.initial and (devices is None or s.device in devices)
                   for s in self._pending.values())
