"""Message faults inside a daemon: drop, delay, duplicate and reorder messages, and partitions.

Fault injection (:mod:`fabric.faults.network`) writes the rules to
``<state dir>/netfaults.json`` (atomically: a temporary file, then rename).
Every daemon holds one :class:`NetFaults` and asks it, for each message it is
about to act on, what to do with it (:meth:`NetFaults.verdict`).  It looks at
the file at most every ``CHECK_EVERY_S`` (one ``stat``, re-read only when the
file changed), so with no rules the cost per message is one monotonic-clock
read and a comparison.

Where a message meets the rules -- once per message, never twice:

- a message a daemon *sends* (a reply, a node's REGISTER/HEARTBEAT, the
  manager's SCRUB) where the daemon sends it;
- a request a daemon *receives* from a client or the CLI (not from another
  daemon: that one met the rules where it was sent) where it is received.

A rule ``{"id", "action", "p", "types", "daemons", "delay_ms", "seed"}``
applies to a message when its type is in ``types`` (requests by their type,
replies as ``OK`` / ``ERROR``; empty: every type) and the daemon acting on it
is in ``daemons`` -- or, for a message between two daemons, the other daemon
is.  With probability ``p`` (from a generator seeded by the rule's ``seed``
and the daemon's name, so a run is reproducible message by message) it is:

- ``drop``: not delivered;
- ``delay``: delivered ``delay_ms`` later;
- ``duplicate``: delivered twice;
- ``reorder``: held a random time in ``[0, delay_ms]``, so later messages
  overtake it.

A partition ``{"id", "groups": [[names...], ...]}`` drops every message
between daemons of different groups (a host's client processes count as that
host: ``from`` is the host name); names in no group, and the CLI, are cut off
from nobody.  Held messages wait in a timer queue the daemon loop runs
(:meth:`run_due`), so a delay never blocks the loop.
"""
from __future__ import annotations

import heapq
import itertools
import json
import os
import random
import time
from typing import Callable

#: The rules file, at the top of the state dir (fabric.statedir.ENTRIES).
RULES_FILE = "netfaults.json"
#: How often a daemon looks whether the rules file changed.
CHECK_EVERY_S = 0.075
#: Requests that only daemons send each other (they meet the rules where they are sent).
DAEMON_TYPES = frozenset({"REGISTER", "HEARTBEAT", "SCRUB"})
ACTIONS = ("drop", "delay", "duplicate", "reorder")
#: Bound on a held message (the injection side refuses longer delays).
MAX_DELAY_MS = 60_000

DELIVER = None


def rules_path(state_path: str) -> str:
    return os.path.join(state_path, RULES_FILE)


class NetFaults:
    """The message-fault rules as seen by daemon ``me``, and its queue of held messages."""

    def __init__(self, state_path: str, me: str):
        self.path = rules_path(state_path)
        self.me = me
        self.rules: list[dict] = []
        self.groups: list[list[set]] = []        # one list of groups per partition
        self._stamp: tuple | None = None
        self._next_check = 0.0
        self._rngs: dict[str, random.Random] = {}
        self._held: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self.counts: dict[str, int] = {}          # action -> messages it hit (for tests/logs)

    # -- rules ---------------------------------------------------------------
    def refresh(self, now: float | None = None) -> None:
        """Re-read the rules if the file changed (checked at most every CHECK_EVERY_S)."""
        now = time.monotonic() if now is None else now
        if now < self._next_check:
            return
        self._next_check = now + CHECK_EVERY_S
        try:
            st = os.stat(self.path)
        except OSError:
            self.rules, self.groups, self._stamp = [], [], None
            return
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
            rules = [r for r in data.get("rules", []) if isinstance(r, dict)
                     and r.get("action") in ACTIONS]
            groups = [[set(g) for g in p.get("groups", [])] for p in data.get("partitions", [])
                      if isinstance(p, dict)]
        except (OSError, ValueError, TypeError, AttributeError):
            return  # a torn or foreign file: keep the rules we had
        for r in rules:
            if r.get("id") not in self._rngs:
                self._rngs[r.get("id")] = random.Random(f"{r.get('seed', 0)}/{self.me}")
        self.rules, self.groups = rules, groups

    @property
    def active(self) -> bool:
        return bool(self.rules or self.groups)

    def verdict(self, msg_type: str, peer: str, peer_is_daemon: bool) -> tuple[str, float] | None:
        """What to do with a message of ``msg_type`` between this daemon and ``peer``:
        None to deliver it now, or ``(action, hold_s)``."""
        now = time.monotonic()
        if now >= self._next_check:
            self.refresh(now)
        if not self.rules and not self.groups:
            return DELIVER
        for groups in self.groups:
            mine = [i for i, g in enumerate(groups) if self.me in g]
            theirs = [i for i, g in enumerate(groups) if peer in g]
            if mine and theirs and mine[0] != theirs[0]:
                return self._hit("partition", 0.0)
        for r in self.rules:
            types = r.get("types") or ()
            if types and msg_type not in types:
                continue
            daemons = r.get("daemons") or ()
            if daemons and self.me not in daemons and not (peer_is_daemon and peer in daemons):
                continue
            rng = self._rngs[r.get("id")]
            if rng.random() >= float(r.get("p", 1.0)):
                continue
            delay_s = min(float(r.get("delay_ms", 0)), MAX_DELAY_MS) / 1000
            if r["action"] == "reorder":
                delay_s = rng.uniform(0.0, delay_s)
            return self._hit(r["action"], delay_s)
        return DELIVER

    def _hit(self, action: str, hold_s: float) -> tuple[str, float]:
        self.counts[action] = self.counts.get(action, 0) + 1
        return action, hold_s

    def apply(self, verdict: tuple[str, float] | None, deliver: Callable[[], None]) -> None:
        """Deliver a message as ``verdict`` says: now, never, twice, or later."""
        if verdict is None:
            deliver()
            return
        action, hold_s = verdict
        if action in ("drop", "partition"):
            return
        if action == "duplicate":
            deliver()
            deliver()
            return
        self.later(hold_s, deliver)

    # -- held messages -------------------------------------------------------
    def later(self, delay_s: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._held, (time.monotonic() + delay_s, next(self._seq), fn))

    def next_due(self) -> float | None:
        """Monotonic time the next held message is due, or None."""
        return self._held[0][0] if self._held else None

    def run_due(self, now: float | None = None) -> int:
        """Deliver every held message that is due; how many."""
        now = time.monotonic() if now is None else now
        n = 0
        while self._held and self._held[0][0] <= now:
            _due, _seq, fn = heapq.heappop(self._held)
            fn()
            n += 1
        return n
