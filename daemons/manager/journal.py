"""The manager's journal: its directory on disk, so a restarted manager keeps every region.

Everything a restarted manager needs to serve the same regions lives in
``<state dir>/journal/``:

- ``epoch`` -- the incarnation of the manager that owns the journal now.  A
  manager writes it (temp file, fsync, rename) *before* it reads the journal,
  and checks it before every reply and before the first change of each burst
  of requests (every change outside one): a manager that
  finds another incarnation there was replaced (e.g. it was paused while a new
  one started) and stops without acting (:class:`Fenced`).
- ``snapshot`` -- one framed msgpack record holding the whole state at log
  sequence number ``seq``: regions (every :class:`~fabric.descriptor.RegionDescriptor`
  field), the id and address counters, pending scrubs, recent idempotency keys
  with their replies, the topology fingerprint and the name of the log that
  follows it.  Written to ``snapshot.tmp``, fsynced, renamed over, directory
  fsynced.
- ``log-<incarnation>`` -- append-only framed records after the snapshot:
  ``create`` (a region and the counters after it, with the request's
  idempotency key), ``remove`` (name, key), ``scrub`` (an extent now waiting to
  be zeroed) and ``scrubbed`` (its node acknowledged it).

A frame is ``<u32 length><u32 crc32><msgpack payload>`` (little-endian).  A
record is written with one ``write`` at its change; the manager fsyncs the log
before it sends the reply that acknowledges the change (:meth:`Journal.commit`; once
for up to ``GROUP_COMMIT_MAX`` requests of one burst: a group commit),
so an acknowledged ALLOC or FREE survives a kill -9 of the manager (and, on a
disk-backed state dir, of the machine).  ``scrubbed`` records are synced with
the next change: losing one only means the extent is zeroed once more.

Recovery (:meth:`Journal.recover`): read the snapshot, replay the log records
after its ``seq``.  A bad frame at the very end of the log (a write torn by a
crash) is dropped with a warning; a bad frame followed by more data, or a bad
snapshot, is :class:`JournalCorrupt` and the manager refuses to start with that
message in its log.  A manager then takes the journal over: it writes a fresh
snapshot of what it recovered, naming a new log of its own incarnation, and
deletes the old log -- so a fenced predecessor that still appends to the old
log cannot add anything the new manager would replay later.  After
``SNAPSHOT_EVERY`` records the manager compacts the same way (snapshot, new
log, delete the old one).
"""
from __future__ import annotations

import logging
import os
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable

import msgpack

from fabric.descriptor import RegionDescriptor
from fabric.errors import ClusterError, FabricError, ResourceExhausted
from fabric.statedir import StateDir, write_file_atomic

#: Journal format written in the snapshot; a different one is refused.
FORMAT = 1
#: Records appended before the manager writes a snapshot and starts a new log.
SNAPSHOT_EVERY = 5000
_FRAME = struct.Struct("<II")
#: A record larger than this is not one the manager writes: the frame is corrupt.
MAX_RECORD_BYTES = 64 << 20

log = logging.getLogger("manager.journal")


class JournalCorrupt(ClusterError):
    """The journal cannot be read back (a bad record before the end, or a bad snapshot)."""


class Fenced(FabricError):
    """A newer manager owns the state dir: this one must not act any more."""


def frame(record: dict) -> bytes:
    """One record as it is stored: length, crc32, msgpack payload."""
    payload = msgpack.packb(record, use_bin_type=True)
    return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def read_frames(data: bytes, what: str) -> tuple[list[dict], int, str | None]:
    """Decode the frames in ``data``: (records, bytes of the good prefix, why the rest
    was dropped or None).  A bad frame that is the last thing in ``data`` is a torn
    tail (dropped); one followed by more bytes raises JournalCorrupt."""
    out: list[dict] = []
    pos, n = 0, len(data)
    while pos < n:
        why = None
        if n - pos < _FRAME.size:
            why = f"{n - pos} stray bytes (a torn frame header)"
            end = n
        else:
            length, crc = _FRAME.unpack_from(data, pos)
            end = pos + _FRAME.size + length
            if length > MAX_RECORD_BYTES:
                # a write torn by a crash cuts a frame short, it never makes its length up
                why, end = f"a frame claiming {length} bytes", pos
            elif end > n:
                why = f"a frame of {length} bytes cut off after {n - pos - _FRAME.size}"
            else:
                payload = data[pos + _FRAME.size:end]
                if zlib.crc32(payload) != crc:
                    why = "a frame whose checksum does not match"
                else:
                    try:
                        rec = msgpack.unpackb(payload, raw=False, strict_map_key=False)
                    except Exception as exc:  # msgpack raises several unrelated types
                        why = f"a frame that is not msgpack ({type(exc).__name__})"
                    else:
                        if not isinstance(rec, dict):
                            why = "a frame that is not a map"
                        else:
                            out.append(rec)
                            pos = end
                            continue
        if end >= n and end != pos:
            return out, pos, f"{why} at byte {pos} of {what}"
        raise JournalCorrupt(f"journal {what} is corrupt: {why} at byte {pos}, followed by "
                             f"{n - max(end, pos + _FRAME.size)} more bytes; the directory "
                             f"cannot be recovered (move the journal/ directory away to "
                             f"start with an empty directory)")
    return out, pos, None


def _read_file(path: str) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as f:
        return f.read()


@dataclass
class Recovered:
    """What the journal held: the state to rebuild the manager from."""

    regions: list[dict] = field(default_factory=list)      # RegionDescriptor fields, in id order
    next_id: int = 1
    next_address: int | None = None
    scrubs: dict[tuple[str, int], tuple[str, int, bool]] = field(default_factory=dict)
    # ^ (device, offset) -> (node, nbytes, initial)
    keys: dict[tuple, Any] = field(default_factory=dict)    # idempotency key -> reply
    records: int = 0                                        # log records replayed
    torn: str | None = None                                 # why a torn tail was dropped


def key_of(key: Any) -> tuple | None:
    """An idempotency key as stored (a tuple) from its journal form (a list), or None."""
    return tuple(key) if isinstance(key, (list, tuple)) else None


class Journal:
    """The journal of one manager incarnation (see the module docstring).

    ``enabled=False`` keeps fencing (the epoch file) but writes no records:
    the baseline of the journal's cost in scripts/bench_faults.py, nothing else.
    """

    def __init__(self, state: StateDir, incarnation: int, *, enabled: bool = True,
                 snapshot_every: int = SNAPSHOT_EVERY):
        self.dir = state.journal_dir
        self.incarnation = incarnation
        self.enabled = enabled
        self.snapshot_every = snapshot_every
        self.seq = 0                      # sequence number of the last record
        self.since_snapshot = 0
        self.dirty = False                # records written but not fsynced
        self.fenced = False
        self._fd: int | None = None
        self._log_name = f"log-{incarnation}"
        self._epoch_id: tuple[int, int] | None = None
        self._epoch_path = os.path.join(self.dir, "epoch")
        self._size = 0                    # bytes in the current log
        #: Set by the manager while it handles a burst of requests (group commit).
        self.in_burst = False
        self._burst_checked = False
        #: Returns the state to snapshot (set by the manager once it is rebuilt).
        self.state_fn: Callable[[], dict] | None = None

    # -- paths --------------------------------------------------------------
    def _path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    # -- fencing --------------------------------------------------------------
    def claim(self) -> None:
        """Make this incarnation the journal's owner (before reading it)."""
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        write_file_atomic(self._path("epoch"), str(self.incarnation).encode(), durable=True)
        st = os.stat(self._path("epoch"), follow_symlinks=False)
        self._epoch_id = (st.st_ino, st.st_mtime_ns)

    def check_fence(self) -> None:
        """Fenced if another manager claimed the journal since this one did."""
        if self.fenced:
            raise Fenced(f"manager incarnation {self.incarnation} was replaced")
        try:
            st = os.stat(self._epoch_path, follow_symlinks=False)
            same = (st.st_ino, st.st_mtime_ns) == self._epoch_id
        except FileNotFoundError:
            same = False    # the state dir was removed (`fabric down`): nothing to act on
        if not same:
            self.fenced = True
            owner = _read_file(self._path("epoch"))
            raise Fenced(f"manager incarnation {self.incarnation} was replaced by incarnation "
                         f"{owner.decode(errors='replace') if owner else '(none: journal gone)'}")

    # -- recovery -------------------------------------------------------------
    def recover(self, fingerprint: Any) -> Recovered:
        """Claim the journal, read it back, and take it over (a new snapshot and log)."""
        self.claim()
        got = Recovered()
        snap_bytes = _read_file(self._path("snapshot"))
        base_seq, log_name = 0, None
        if snap_bytes is not None:
            recs, _good, why = read_frames(snap_bytes, "snapshot")
            if why is not None or len(recs) != 1:
                raise JournalCorrupt(f"journal snapshot {self._path('snapshot')} is unreadable "
                                     f"({why or f'{len(recs)} records'}); move the journal/ "
                                     f"directory away to start with an empty directory")
            snap = recs[0]
            if snap.get("format") != FORMAT:
                raise JournalCorrupt(f"journal snapshot has format {snap.get('format')!r}, "
                                     f"this manager reads {FORMAT}")
            if snap.get("fingerprint") != fingerprint:
                log.warning("the journal describes other devices than this topology: it is "
                            "dropped (the regions it held are gone; reattached memory is "
                            "scrubbed)")
            else:
                base_seq, log_name = int(snap["seq"]), snap.get("log")
                got.regions = list(snap["regions"])
                got.next_id, got.next_address = int(snap["next_id"]), snap.get("next_address")
                for node, dev, off, n, initial in snap["scrubs"]:
                    got.scrubs[(dev, off)] = (node, n, bool(initial))
                for k, reply in snap["keys"]:
                    got.keys[tuple(k)] = reply
        if log_name:
            data = _read_file(self._path(log_name)) or b""
            recs, _good, why = read_frames(data, log_name)
            if why is not None:
                got.torn = why
                log.warning("journal: dropped a torn last record (%s): a change the manager "
                            "never acknowledged", why)
            by_name = {r["name"]: r for r in got.regions}
            for rec in recs:
                seq = rec.get("seq", 0)
                if seq <= base_seq:
                    continue
                self._replay(rec, by_name, got)
                base_seq = seq
                got.records += 1
            got.regions = sorted(by_name.values(), key=lambda r: r["id"])
        self.seq = base_seq
        self._take_over(got, fingerprint)
        return got

    @staticmethod
    def _replay(rec: dict, by_name: dict, got: Recovered) -> None:
        op = rec.get("op")
        if op == "create":
            r = rec["r"]
            by_name[r["name"]] = r
            got.next_id, got.next_address = int(rec["next_id"]), int(rec["next_address"])
            k = key_of(rec.get("key"))
            if k is not None:   # the ALLOC's reply: the region as its owner sees it
                got.keys[k] = RegionDescriptor.from_wire(r).wire_for(r["owner"])
        elif op == "remove":
            by_name.pop(rec["name"], None)
            k = key_of(rec.get("key"))
            if k is not None:
                got.keys[k] = {}
            for node, dev, off, n in rec.get("scrubs") or ():   # the freed extents
                got.scrubs[(dev, off)] = (node, n, False)
        elif op == "scrub":
            got.scrubs[(rec["device"], rec["offset"])] = (rec["node"], rec["nbytes"],
                                                          bool(rec.get("initial")))
        elif op == "scrubbed":
            if "extents" in rec:        # one record per acknowledged SCRUB message
                for dev, off in rec["extents"]:
                    got.scrubs.pop((dev, off), None)
            else:
                got.scrubs.pop((rec["device"], rec["offset"]), None)
        else:
            raise JournalCorrupt(f"journal record {rec.get('seq')} has unknown op {op!r}")

    def _take_over(self, got: Recovered, fingerprint: Any) -> None:
        """Snapshot what was recovered under a log of this incarnation; drop older logs."""
        self._fingerprint = fingerprint
        state = {"regions": got.regions, "next_id": got.next_id,
                 "next_address": got.next_address,
                 "scrubs": [[node, dev, off, n, initial]
                            for (dev, off), (node, n, initial) in got.scrubs.items()],
                 "keys": [[list(k), v] for k, v in got.keys.items()]}
        if self.enabled:
            self._write_snapshot(state)
        else:
            for name in os.listdir(self.dir):      # a baseline run keeps no journal at all
                if name not in ("epoch",):
                    os.unlink(self._path(name))

    def _write_snapshot(self, state: dict) -> None:
        """Snapshot ``state`` at the current seq, start a new log, delete the older ones."""
        self.check_fence()
        snap = {"format": FORMAT, "seq": self.seq, "fingerprint": self._fingerprint,
                "manager_incarnation": self.incarnation, **state}
        # A fresh log name per snapshot: the old log may still hold records after seq
        # (a fenced predecessor's), and they must never be replayed.
        self._log_name = f"log-{self.incarnation}-{self.seq}"
        new_fd = os.open(self._path(self._log_name),
                         os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        os.fsync(new_fd)
        snap["log"] = self._log_name
        try:
            write_file_atomic(self._path("snapshot"), frame(snap), durable=True)
        except BaseException:
            os.close(new_fd)
            raise
        if self._fd is not None:
            os.close(self._fd)
        self._fd = new_fd
        self._size = 0
        self.since_snapshot = 0
        for name in os.listdir(self.dir):
            if name.startswith("log-") and name != self._log_name:
                try:
                    os.unlink(self._path(name))
                except FileNotFoundError:
                    pass

    # -- changes --------------------------------------------------------------
    def append(self, record: dict) -> None:
        """Write one record (not yet fsynced; :meth:`commit` does that before the reply).
        Fenced if another manager took over; ResourceExhausted if it cannot be written
        (nothing is then written: a failed write is cut off again).  Inside a burst
        (:attr:`in_burst`) the fence is checked at the burst's first change only: a
        fenced manager's records go to its own log, which its successor deleted, and
        :meth:`commit` checks again before any reply goes out."""
        if not self._burst_checked:
            self.check_fence()
            self._burst_checked = self.in_burst
        if not self.enabled or self._fd is None:
            return
        self.seq += 1
        record["seq"] = self.seq
        data = frame(record)
        try:
            if os.write(self._fd, data) != len(data):
                raise OSError(28, "short write")
        except OSError as exc:
            self.seq -= 1
            try:
                os.ftruncate(self._fd, self._size)
            except OSError:
                pass
            raise ResourceExhausted(f"cannot write the manager's journal in {self.dir}: "
                                    f"{exc.strerror or exc}; the change was not made") from None
        self._size += len(data)
        self.dirty = True
        self.since_snapshot += 1

    def commit(self) -> None:
        """Make every appended record durable (fsync), then check the fence: a reply
        goes out only for changes that are on disk and made by the journal's owner.
        Compacts the log once it holds ``snapshot_every`` records."""
        if self.dirty and self._fd is not None:
            os.fsync(self._fd)
            self.dirty = False
        self._burst_checked = False
        self.check_fence()
        if self.since_snapshot >= self.snapshot_every and self.state_fn is not None:
            self._write_snapshot(self.state_fn())

    def close(self) -> None:
        if self._fd is not None:
            if self.dirty:
                try:
                    os.fsync(self._fd)
                except OSError:
                    pass
            os.close(self._fd)
            self._fd = None
