"""The manager's journal: frames, recovery, compaction and fencing on their own, then
real managers killed with SIGKILL and restarted on the same state dir."""
from __future__ import annotations

import os
import random
import signal
import time

import numpy as np
import psutil
import pytest
import zmq

import fabric
from fabric.faults import process as faults
from fabric import protocol
from fabric.daemons.manager.journal import (Fenced, Journal, JournalCorrupt, frame,
                                            read_frames)
from fabric.errors import ClusterError, RegionExists
from fabric.statedir import StateDir

MiB = 1 << 20
FP = [4096, [["d0", 16 * MiB, "h0"]]]


# -- frames and the Journal class, no daemons --------------------------------------------
def _records(n: int) -> list[dict]:
    return [{"op": "scrub", "seq": i + 1, "node": "h0", "device": "d0", "offset": i * 4096,
             "nbytes": 4096, "initial": False} for i in range(n)]


def test_frames_round_trip_and_a_torn_tail_is_dropped():
    recs = _records(5)
    data = b"".join(frame(r) for r in recs)
    assert read_frames(data, "log") == (recs, len(data), None)
    last = len(frame(recs[-1]))
    for cut in range(1, last):            # a crash anywhere inside the last write
        got, good, why = read_frames(data[:len(data) - cut], "log")
        assert got == recs[:4] and good == len(data) - last and why is not None


def test_a_corrupt_middle_record_is_an_error():
    recs = _records(5)
    blobs = [frame(r) for r in recs]
    data = bytearray(b"".join(blobs))
    data[len(blobs[0]) + 12] ^= 0xFF     # inside the second record's payload
    with pytest.raises(JournalCorrupt, match="corrupt.*followed by"):
        read_frames(bytes(data), "log")
    data = bytearray(b"".join(blobs))
    data[len(blobs[0]):len(blobs[0]) + 4] = (1 << 31).to_bytes(4, "little")  # absurd length
    with pytest.raises(JournalCorrupt):
        read_frames(bytes(data), "log")


def _journal(tmp_path, inc: int, **kw) -> Journal:
    return Journal(StateDir(str(tmp_path)), inc, **kw)


def _region(i: int) -> dict:
    return {"id": i, "name": f"r{i}", "address": (1 << 40) + i * (4 << 20), "nbytes": 4096,
            "share": "private", "owner": "h0", "allow": None, "placement": "device",
            "devices": ["d0"], "offsets": [i * 4096], "stripe_bytes": 4096, "nstripes": 1,
            "created": 1.0}


def test_recovery_replays_changes_and_compaction_keeps_them(tmp_path):
    j = _journal(tmp_path, 1, snapshot_every=4)
    j.recover(FP)
    state = {"regions": [], "next_id": 1, "next_address": None, "scrubs": [], "keys": []}
    j.state_fn = lambda: state
    for i in range(1, 11):
        j.append({"op": "create", "r": _region(i), "next_id": i + 1,
                  "next_address": (1 << 40) + (i + 1) * (4 << 20), "key": ["h0", 7, i]})
        state["regions"].append(_region(i))
        state["next_id"] = i + 1
        state["keys"].append([["h0", 7, i], {"name": f"r{i}"}])
        if i % 3 == 0:
            j.append({"op": "remove", "name": f"r{i}", "key": ["h0", 7, 100 + i]})
            j.append({"op": "scrub", "node": "h0", "device": "d0", "offset": i * 4096,
                      "nbytes": 4096, "initial": False})
            state["regions"].pop()
            state["keys"].append([["h0", 7, 100 + i], {}])
            state["scrubs"].append(["h0", "d0", i * 4096, 4096, False])
        j.commit()                         # compacts every 4 records
    j.append({"op": "scrubbed", "device": "d0", "offset": 3 * 4096})
    j.commit()
    j.close()
    logs = [n for n in os.listdir(tmp_path / "journal") if n.startswith("log-")]
    assert len(logs) == 1                  # older logs are deleted at each snapshot
    got = _journal(tmp_path, 2).recover(FP)
    assert [r["name"] for r in got.regions] == [f"r{i}" for i in range(1, 11) if i % 3]
    assert got.next_id == 11
    assert sorted(got.scrubs) == [("d0", 6 * 4096), ("d0", 9 * 4096)]
    assert got.keys[("h0", 7, 103)] == {} and got.keys[("h0", 7, 2)]["name"] == "r2"


def test_a_free_journals_its_scrubs_in_one_record_and_acks_in_one(tmp_path):
    """A FREE's record carries its extents (no crash can leave a region gone and its
    memory not waiting for a scrub); one record clears every extent a SCRUB zeroed."""
    j = _journal(tmp_path, 1)
    j.recover(FP)
    for i in (1, 2, 3):
        j.append({"op": "create", "r": _region(i), "next_id": i + 1,
                  "next_address": (1 << 40) + (i + 1) * (4 << 20), "key": None})
    j.append({"op": "remove", "name": "r1", "key": ["h0", 7, 50],
              "scrubs": [["h0", "d0", 0, 4096], ["h1", "d1", 8192, 4096]]})
    j.append({"op": "remove", "name": "r2", "key": None, "scrubs": [["h0", "d0", 4096, 4096]]})
    j.append({"op": "scrubbed", "extents": [["d0", 0], ["d0", 4096]]})
    j.commit()
    j.close()
    got = _journal(tmp_path, 2).recover(FP)
    assert [r["name"] for r in got.regions] == ["r3"]
    assert got.scrubs == {("d1", 8192): ("h1", 4096, False)}
    assert got.keys[("h0", 7, 50)] == {}


def test_a_replaced_journal_fences_its_old_owner(tmp_path):
    old = _journal(tmp_path, 1)
    old.recover(FP)
    old.append({"op": "scrub", "node": "h0", "device": "d0", "offset": 0, "nbytes": 4096,
                "initial": False})
    new = _journal(tmp_path, 2)
    got = new.recover(FP)
    assert list(got.scrubs) == [("d0", 0)]          # written before the takeover: kept
    with pytest.raises(Fenced, match="replaced by incarnation 2"):
        old.commit()                                # so that change is never acknowledged
    with pytest.raises(Fenced):
        old.append({"op": "scrubbed", "device": "d0", "offset": 0})
    new.append({"op": "scrub", "node": "h0", "device": "d0", "offset": 4096, "nbytes": 4096,
                "initial": False})
    new.commit()
    new.close()
    old.close()
    assert sorted(_journal(tmp_path, 3).recover(FP).scrubs) == [("d0", 0), ("d0", 4096)]


def test_an_old_owner_appending_after_the_takeover_adds_nothing(tmp_path):
    """A fenced manager's write that races the takeover lands in a log nobody replays."""
    old = _journal(tmp_path, 1)
    old.recover(FP)
    new = _journal(tmp_path, 2)
    new.recover(FP)
    old.fenced = False
    old._epoch_id = new._epoch_id          # as if its check ran just before the takeover
    old.append({"op": "create", "r": _region(1), "next_id": 2, "next_address": 1 << 41,
                "key": None})
    old.close()
    new.close()
    assert _journal(tmp_path, 3).recover(FP).regions == []


def test_another_topology_drops_the_journal(tmp_path):
    j = _journal(tmp_path, 1)
    j.recover(FP)
    j.append({"op": "create", "r": _region(1), "next_id": 2, "next_address": 1 << 41,
              "key": None})
    j.commit()
    j.close()
    assert _journal(tmp_path, 2).recover([4096, [["d0", 32 * MiB, "h0"]]]).regions == []


# -- real managers ------------------------------------------------------------------------
def _kill_manager(state_dir: str) -> int:
    pid = StateDir(state_dir).read()["pids"]["manager"]
    p = psutil.Process(pid)
    p.send_signal(signal.SIGKILL)
    p.wait(10)
    return pid


def _directory(c: fabric.Cluster) -> dict:
    st = c.status()
    return {"regions": st["regions"],
            "used": {d["name"]: d["used_bytes"] for d in st["devices"]}}


def test_acknowledged_changes_survive_kill_9(cluster, seed):
    """Seeded random ALLOC/FREE; after every few, SIGKILL the manager and restart it:
    the recovered directory is exactly the acknowledged one, ids and addresses go on."""
    rng = random.Random(seed)
    sd = cluster.state_dir
    with cluster.connect("h0") as s:
        live: list[str] = []
        for round_ in range(3):
            for i in range(40):
                if live and rng.random() < 0.4:
                    s.free(live.pop(rng.randrange(len(live))))
                else:
                    name = f"r{round_}-{i}"
                    placement = rng.choice(["local", "interleave", "d0", "d1"])
                    share = rng.choice(["private", "shared", "coherent"])
                    allow = {"h1": rng.choice(["r", "rw"])} \
                        if share != "private" and rng.random() < 0.5 else None
                    s.alloc(name, rng.randrange(1, 600_000), placement=placement, share=share,
                            allow=allow).close()
                    live.append(name)
            before = _directory(cluster)
            _kill_manager(sd)
            faults.restart(StateDir(sd), "manager")
            after = _directory(cluster)
            assert after["regions"] == before["regions"]
            assert sorted(r["name"] for r in after["regions"]) == sorted(live)
            ids = [r["id"] for r in after["regions"]]
            r = s.alloc(f"probe-{round_}", 4096)   # the session carries on by itself
            assert r.id > max(ids, default=0)
            assert r.address > max((x["address"] for x in after["regions"]), default=0)
            s.free(f"probe-{round_}")
        log = open(StateDir(sd).log_path("manager")).read()
        assert log.count("journal: recovered") == 4     # the first start, then 3 restarts


def test_shared_allow_lists_and_contents_survive_a_restart(cluster):
    with cluster.connect("h0") as s:
        r = s.alloc("acl", 2 * MiB, placement="interleave", granularity=64 << 10,
                    share="shared", allow={"h1": "rw"})
        r.write(np.arange(2 * MiB // 4, dtype=np.uint32))
        before = [x for x in cluster.status()["regions"] if x["name"] == "acl"]
        faults.restart(StateDir(cluster.state_dir), "manager")
        assert [x for x in cluster.status()["regions"] if x["name"] == "acl"] == before
        assert before[0]["allow"] == {"h1": "rw"}
    with cluster.connect("h1") as s1:
        r1 = s1.open("acl")
        assert r1.writable
        assert (r1.read().view(np.uint32) == np.arange(2 * MiB // 4, dtype=np.uint32)).all()


def test_pending_scrubs_are_recovered_and_finished(cluster):
    """A FREE whose scrub was not acknowledged when the manager died: the extent stays
    out of use after the restart until its node zeroes it."""
    sd = cluster.state_dir
    h1 = StateDir(sd).read()["pids"]["h1"]
    with cluster.connect("h0") as s:
        r = s.alloc("dirty", 8 * MiB, placement="d1")
        r.ndarray(np.uint8, 8 * MiB)[:] = 0xEE
        os.kill(h1, signal.SIGSTOP)           # d1's node cannot scrub for now
        try:
            s.free("dirty")
            _kill_manager(sd)
        finally:
            os.kill(h1, signal.SIGCONT)
        faults.restart(StateDir(sd), "manager")
        deadline = time.monotonic() + 20
        while any(d["scrubbing_bytes"] for d in cluster.status()["devices"]):
            assert time.monotonic() < deadline, "recovered scrubs did not finish"
            time.sleep(0.05)
        r2 = s.alloc("clean", 8 * MiB, placement="d1")
        assert not r2.ndarray(np.uint8, 8 * MiB).any()
    with open(os.path.join(sd, "devices", "d1.mem"), "rb") as f:
        assert 0xEE not in f.read()


def test_torn_tail_is_ignored_and_corrupt_middle_refuses_to_start(cluster):
    sd = cluster.state_dir
    jdir = os.path.join(sd, "journal")
    with cluster.connect("h0") as s:
        s.alloc("a", 4096)
        s.alloc("b", 4096)
    _kill_manager(sd)
    log_name = [n for n in os.listdir(jdir) if n.startswith("log-")][0]
    with open(os.path.join(jdir, log_name), "ab") as f:
        f.write(frame({"op": "remove", "seq": 10**6, "name": "a", "key": None})[:-3])
    faults.restart(StateDir(sd), "manager")
    assert [r["name"] for r in cluster.status()["regions"]] == ["a", "b"]
    assert "dropped a torn last record" in open(StateDir(sd).log_path("manager")).read()
    with cluster.connect("h0") as s:
        s.alloc("c", 4096)
        s.alloc("d", 4096)
    _kill_manager(sd)
    log_name = [n for n in os.listdir(jdir) if n.startswith("log-")][0]
    path = os.path.join(jdir, log_name)
    data = bytearray(open(path, "rb").read())
    data[12] ^= 0xFF                        # inside the first of several records
    open(path, "wb").write(bytes(data))
    with pytest.raises(ClusterError, match="exited with code 3"):
        faults.restart(StateDir(sd), "manager", timeout_s=10)
    assert "is corrupt" in open(StateDir(sd).log_path("manager")).read()


# -- idempotency -----------------------------------------------------------------------------
class Raw:
    """A DEALER speaking the protocol by hand, to send the same idempotency key twice."""

    def __init__(self, state_dir: str, sender: str = "h0"):
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(StateDir(state_dir).manager_endpoint)
        self.sender, self.inc, self.ids = sender, protocol.new_incarnation(), 0

    def request(self, msg_type: str, body: dict, key: int, timeout_ms: int = 5000):
        self.ids += 1
        self.sock.send_multipart(protocol.encode(protocol.make_header(
            msg_type, self.ids, self.sender, self.inc, timeout_ms, key), body))
        deadline = time.monotonic() + timeout_ms / 1000
        while self.sock.poll(max(1, int((deadline - time.monotonic()) * 1000))):
            h, b = protocol.decode(self.sock.recv_multipart())
            if h["id"] == self.ids:
                return h["type"], b
        raise AssertionError(f"no reply to {msg_type}")

    def close(self):
        self.sock.close(0)


def test_duplicated_alloc_and_free_are_applied_once(cluster):
    raw = Raw(cluster.state_dir)
    try:
        body = {"name": "once", "nbytes": MiB, "placement": "d0"}
        t1, r1 = raw.request("ALLOC", body, key=1)
        t2, r2 = raw.request("ALLOC", body, key=1)
        assert t1 == t2 == "OK" and r1 == r2
        t3, r3 = raw.request("ALLOC", body, key=2)     # a new request: the name is taken
        assert t3 == "ERROR" and r3["code"] == RegionExists.code
        devs = {d["name"]: d for d in cluster.status()["devices"]}
        assert devs["d0"]["used_bytes"] == MiB
        assert [r["name"] for r in cluster.status()["regions"]] == ["once"]
        assert raw.request("FREE", {"name": "once"}, key=3) == ("OK", {})
        assert raw.request("FREE", {"name": "once"}, key=3) == ("OK", {})   # not NOT_FOUND
        t4, r4 = raw.request("FREE", {"name": "once"}, key=4)
        assert t4 == "ERROR" and r4["code"] == "REGION_NOT_FOUND"
    finally:
        raw.close()


def test_a_retry_after_a_restart_gets_the_original_answer(cluster):
    raw = Raw(cluster.state_dir)
    try:
        body = {"name": "kept", "nbytes": MiB, "placement": "d1"}
        _t, first = raw.request("ALLOC", body, key=1)
        assert raw.request("FREE", {"name": "kept"}, key=2) == ("OK", {})
        raw.request("ALLOC", {"name": "other", "nbytes": MiB}, key=3)
        _kill_manager(cluster.state_dir)
        faults.restart(StateDir(cluster.state_dir), "manager")
        # the replies were lost with the manager; the client retries with the same keys
        assert raw.request("ALLOC", body, key=1) == ("OK", first)
        assert raw.request("FREE", {"name": "kept"}, key=2) == ("OK", {})
        assert sorted(r["name"] for r in cluster.status()["regions"]) == ["other"]
    finally:
        raw.close()


def test_a_session_request_rides_out_a_manager_restart(cluster):
    """The manager is dead when alloc() is called; it comes back within the request's
    deadline, and the session's retry gets the region (once) with no error."""
    import threading
    sd = cluster.state_dir
    with cluster.connect("h0", timeout_ms=20_000) as s:
        s.alloc("before", 4096)
        _kill_manager(sd)
        t = threading.Timer(0.5, faults.restart, (StateDir(sd), "manager"))
        t.start()
        try:
            r = s.alloc("during", MiB, placement="d0")
        finally:
            t.join()
        assert r.name == "during" and s._client.resends > 0
        assert sorted(x["name"] for x in cluster.status()["regions"]) == ["before", "during"]
        # the session said HELLO to the new manager: h0 counts one session again
        assert cluster.status()["sessions"]["h0"] == 1


def test_a_dead_manager_is_still_a_bounded_error(cluster):
    _kill_manager(cluster.state_dir)
    with pytest.raises(fabric.NodeUnavailable, match="manager"):
        with cluster.connect("h0", timeout_ms=800):
            pass


def test_an_alloc_racing_the_restart_gets_scrubbed_memory(cluster):
    """An ALLOC that reaches a new manager before the nodes registered waits for them,
    and then for the scrub of the memory no recovered region owns: it never gets old
    bytes."""
    sd = cluster.state_dir
    state = StateDir(sd)
    with cluster.connect("h0", timeout_ms=20_000) as s:
        s.alloc("owned", 8 * MiB, placement="d0").ndarray(np.uint8, 8 * MiB)[:] = 1
        _kill_manager(sd)
        with open(os.path.join(sd, "devices", "d0.mem"), "r+b") as f:
            f.seek(8 * MiB)
            f.write(b"\xab" * (56 * MiB))          # bytes no region owns
        with state.locked():
            new = faults.spawn_manager(state, state.read())
        try:
            r = s.alloc("raced", 56 * MiB, placement="d0")
            assert not r.ndarray(np.uint8, 56 * MiB).any()
            assert (s.open("owned").ndarray(np.uint8, 8 * MiB) == 1).all()
        finally:
            s.close()
            cluster.stop()
            new.wait(10)


def test_compaction_under_a_real_manager(state_dir, seed, monkeypatch):
    """A snapshot every 5 records: the directory, scrubs and keys go through many
    snapshot + new-log cycles and still come back exactly after SIGKILLs."""
    from fabric.daemons.manager import SNAPSHOT_EVERY_ENV
    monkeypatch.setenv(SNAPSHOT_EVERY_ENV, "5")
    rng = random.Random(seed)
    with fabric.Cluster.start(hosts=2, devices=2, device_size="16MiB", state_dir=state_dir) as c:
        raw = Raw(state_dir, "h1")
        try:
            with c.connect("h0") as s:
                live: list[str] = []
                for round_ in range(3):
                    for i in range(30):
                        if live and rng.random() < 0.4:
                            s.free(live.pop(rng.randrange(len(live))))
                        else:
                            live.append(f"c{round_}-{i}")
                            s.alloc(live[-1], rng.randrange(1, 300_000),
                                    placement=rng.choice(["local", "interleave"])).close()
                    _t, first = raw.request("ALLOC", {"name": f"k{round_}", "nbytes": 4096},
                                            key=round_ + 1)
                    before = _directory(c)
                    _kill_manager(state_dir)
                    faults.restart(StateDir(state_dir), "manager")
                    assert _directory(c)["regions"] == before["regions"]
                    assert raw.request("ALLOC", {"name": f"k{round_}", "nbytes": 4096},
                                       key=round_ + 1) == ("OK", first)
                    jdir = os.path.join(state_dir, "journal")
                    assert len([n for n in os.listdir(jdir) if n.startswith("log-")]) == 1
        finally:
            raw.close()
