"""Scrubs in flight: extents being zeroed by their node before they can be reused.

Freed extents, and at start every byte of a reattached device file (whose
old contents no region owns any more), are out of the allocators until the
node that homes the device acknowledges a SCRUB of them.  The
:class:`ScrubTracker` remembers each scrub until then.

Scrubs are not sent one message each: :meth:`ScrubTracker.add` queues them
per node and :meth:`ScrubTracker.flush` (called by the manager once per turn
of its loop) sends each node one SCRUB carrying every extent queued for it,
up to ``MAX_BATCH_EXTENTS``.  Under load this turns a message and an
acknowledgement per free into one per loop turn; when idle it adds no delay.

Every send gets a fresh request id and only the acknowledgement of a scrub's
latest send counts: a node handles one connection's requests in order, so
when that ack arrives every earlier copy has been handled too and none can
zero the extent after it is handed out again.  Scrubs are sent again when
their node registers again (a new connection) and when one has gone
unacknowledged for ``RESEND_AFTER_S`` while its node answered nothing either
(a node busy working through a long queue of scrubs is not asked again).
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

from fabric.constants import MAX_SCRUB_EXTENTS

#: An unacknowledged scrub is sent again after this long.
RESEND_AFTER_S = 5.0
#: Reattached devices are scrubbed in pieces of at most this size, so the node
#: beats between pieces and allocations can use the first pieces early.
INITIAL_CHUNK_BYTES = 256 << 20
#: Most extents one SCRUB message carries (the node checks the same bound).
MAX_BATCH_EXTENTS = MAX_SCRUB_EXTENTS
#: Most bytes one SCRUB message asks a node to zero (a batch is cut before it).
MAX_BATCH_BYTES = INITIAL_CHUNK_BYTES
#: A queued scrub waits at most this long for others to share its message.  Freed
#: memory comes back this much later; an allocation that waits for it flushes at once.
SCRUB_BATCH_S = 0.010


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
    queued: bool = False             # waiting in the outbox for the next flush
    failures: list[str] = field(default_factory=list)


class ScrubTracker:
    """Pending scrubs by id.  ``send(node, scrubs, req_id) -> bool`` puts one SCRUB
    with the extents of ``scrubs`` on the wire (False if it could not be sent now;
    they are retried later)."""

    def __init__(self, send: Callable[[str, list[Scrub], int], bool],
                 resend_after_s: float = RESEND_AFTER_S,
                 journal: Callable[[str, Scrub], None] | None = None):
        self._send = send
        #: Told ("scrub", [s]) when an extent starts waiting (unless its caller journaled
        #: it) and ("scrubbed", [s, ...]) when a SCRUB's extents are zeroed (the
        #: manager's journal); None: not journaled.
        self.journal = journal
        self.resend_after_s = resend_after_s
        self._pending: dict[int, Scrub] = {}
        self._initial = 0                           # pending scrubs of reattached memory
        self._outbox: dict[str, list[Scrub]] = {}   # node -> scrubs to send at the next flush
        self._by_send: dict[int, list[int]] = {}    # send id -> scrub ids it carried
        self._progress: dict[str, float] = {}       # node -> when it last answered a scrub
        self._queued_since = 0.0                    # when the outbox last became non-empty
        self._ids = itertools.count(1)
        self._send_ids = itertools.count(1)

    def __len__(self) -> int:
        return len(self._pending)

    def __iter__(self) -> Iterator[Scrub]:
        return iter(list(self._pending.values()))

    def add(self, node: str, device: str, offset: int, nbytes: int, *,
            initial: bool = False, journaled: bool = False) -> Scrub:
        """Track a new scrub; it goes out at the next :meth:`flush`.  ``journaled``: the
        caller's own journal record carries it (a FREE's)."""
        s = Scrub(next(self._ids), node, device, offset, nbytes, initial)
        if self.journal is not None and not journaled:
            self.journal("scrub", [s])
        self._pending[s.id] = s
        self._initial += initial
        self.queue(s)
        return s

    def queue(self, s: Scrub) -> None:
        """Send ``s`` (again) at the next flush."""
        if not s.queued and s.id in self._pending:
            if not self._outbox:
                self._queued_since = time.monotonic()
            s.queued = True
            self._outbox.setdefault(s.node, []).append(s)

    def flush_due(self, urgent: bool = False, batch_s: float = SCRUB_BATCH_S) -> float | None:
        """Flush if the oldest queued scrub has waited ``batch_s`` (or ``urgent``);
        returns how long until the next flush is due, or None with nothing queued."""
        if not self._outbox:
            return None
        wait_s = self._queued_since + batch_s - time.monotonic()
        if urgent or wait_s <= 0:
            self.flush()
            return None
        return wait_s

    def flush(self) -> int:
        """Send every queued scrub, one SCRUB per node and batch; how many messages."""
        if not self._outbox:
            return 0
        outbox, self._outbox = self._outbox, {}
        sent = 0
        for node, scrubs in outbox.items():
            batch: list[Scrub] = []
            nbytes = 0
            for s in scrubs:
                s.queued = False
                if s.id not in self._pending:
                    continue  # acknowledged by an earlier send meanwhile
                if batch and (len(batch) >= MAX_BATCH_EXTENTS
                              or nbytes + s.nbytes > MAX_BATCH_BYTES):
                    self._send_batch(node, batch)
                    sent += 1
                    batch, nbytes = [], 0
                batch.append(s)
                nbytes += s.nbytes
            if batch:
                self._send_batch(node, batch)
                sent += 1
        return sent

    def _send_batch(self, node: str, batch: list[Scrub]) -> None:
        send_id = next(self._send_ids)
        now = time.monotonic()
        for s in batch:
            if s.send_id is not None:  # forget the earlier send once nothing rides on it
                earlier = self._by_send.get(s.send_id)
                if earlier is not None:
                    earlier.remove(s.id)
                    if not earlier:
                        del self._by_send[s.send_id]
            s.send_id, s.sent_at = send_id, now
            s.sends += 1
        self._by_send[send_id] = [s.id for s in batch]
        if not self._send(node, batch, send_id):
            del self._by_send[send_id]
            for s in batch:
                s.sent_at = 0.0  # due again at the next resend check

    def resend_node(self, node: str) -> None:
        """Send again every scrub homed on ``node`` (it registered: a new connection)."""
        for s in self:
            if s.node == node:
                self.queue(s)
        self.flush()

    def resend_overdue(self, now: float | None = None) -> int:
        """Send again every scrub unacknowledged for ``resend_after_s``; how many."""
        now = time.monotonic() if now is None else now
        n = 0
        for s in self:
            if not s.queued and \
                    now - max(s.sent_at, self._progress.get(s.node, 0.0)) >= self.resend_after_s:
                self.queue(s)
                n += 1
        self.flush()
        return n

    def _carried(self, send_id: int) -> list[Scrub]:
        """The pending scrubs whose latest send is ``send_id``."""
        ids = self._by_send.get(send_id, ())
        return [s for s in (self._pending.get(i) for i in ids)
                if s is not None and s.send_id == send_id]

    def ack(self, send_id: int) -> list[Scrub]:
        """The node zeroed the extents of send ``send_id``: the scrubs now done (none
        for an ack of an earlier send, or a duplicate)."""
        done = self._carried(send_id)
        self._by_send.pop(send_id, None)
        for s in done:
            del self._pending[s.id]
            self._initial -= s.initial
        if done and self.journal is not None:
            self.journal("scrubbed", done)
        if done:
            self._progress[done[0].node] = time.monotonic()
        return done

    def failed(self, send_id: int, message: str) -> list[Scrub]:
        """The node could not zero them; they stay pending (resent later)."""
        failed = self._carried(send_id)
        self._by_send.pop(send_id, None)
        for s in failed:
            s.failures.append(message)
        if failed:
            self._progress[failed[0].node] = time.monotonic()
        return failed

    def pending_bytes(self, device: str | None = None) -> int:
        return sum(s.nbytes for s in self._pending.values()
                   if device is None or s.device == device)

    def initial_pending(self, devices=None) -> bool:
        """Is reattached memory still being scrubbed (on ``devices``, default any)?"""
        if not self._initial:     # the common case, without a scan per allocation
            return False
        return any(s.initial and (devices is None or s.device in devices)
                   for s in self._pending.values())
