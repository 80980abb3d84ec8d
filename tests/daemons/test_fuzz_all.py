"""Thousands of seeded random and mutated frames to every daemon socket, forged
daemon-to-daemon messages among them: every daemon keeps serving, nothing it owns is
changed, and nothing is answered as an internal error."""
from __future__ import annotations

import os
import random
import time

import msgpack
import numpy as np
import zmq

from fabric import protocol
from fabric.statedir import StateDir

FRAMES_PER_SOCKET = int(os.environ.get("FABRIC_FUZZ_FRAMES", "1500"))
TYPES = ("PING", "STATUS", "SCRUB", "SHUTDOWN", "REGISTER", "HEARTBEAT", "HELLO", "BYE", "ALLOC",
         "OPEN", "FREE", "LIST", "TRANSLATE", "NOPE")


def _bodies(st: StateDir) -> list[bytes]:
    forged = [
        {"extents": [["d0", 0, 1 << 20]]},                                       # SCRUB, no secret
        {"extents": [["d1", 0, 4096]], "secret": "0" * 64},                      # wrong secret
        {"node": "h0", "pid": 1, "incarnation": 1, "endpoint": st.node_endpoint("h0"),
         "devices": [{"name": "d0", "capacity_bytes": 32 << 20}]},                # REGISTER
        {"node": "h1", "incarnation": 5, "secret": "x"},                         # HEARTBEAT
    ]
    junk = [{}, {"name": 3}, {"address": -1}, {"host": None}, {"session": "s"}, [1], "s", None,
            {"nbytes": (1 << 64) - 1, "name": "big"}, {"device": ["d0"], "offset": "0", "nbytes": -1}]
    return [msgpack.packb(b) for b in forged + junk]


def _fuzz(endpoint: str, rng: random.Random, bodies: list[bytes], n: int) -> int:
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    answered = 0
    try:
        for i in range(n):
            kind = rng.random()
            if kind < 0.25:
                frames = [os.urandom(rng.randint(0, 96)) for _ in range(rng.randint(1, 5))]
            else:
                h = {"v": protocol.PROTOCOL_VERSION, "id": i, "type": rng.choice(TYPES),
                     "from": rng.choice(["h0", "h1", "manager", "cli", "", "\x00"]), "inc": 1}
                hb = bytearray(msgpack.packb(h))
                if kind < 0.5:
                    for _ in range(rng.randint(1, 3)):
                        hb[rng.randrange(len(hb))] = rng.randrange(256)
                frames = [b"\x92" + bytes(hb) + rng.choice(bodies)]   # [header, body]
            deadline = time.monotonic() + 15
            while True:             # a busy daemon may lag (back-pressure); a dead one stops
                try:
                    s.send_multipart(frames, zmq.NOBLOCK)
                    break
                except zmq.Again:
                    if time.monotonic() > deadline:
                        raise AssertionError(f"{endpoint} took no message for 15 s after "
                                             f"{i} frames") from None
                    while s.poll(10):
                        s.recv_multipart()
                        answered += 1
            while s.poll(0):                      # drain replies as they come
                reply = s.recv_multipart()
                answered += 1
                head, body = msgpack.unpackb(reply[0])
                assert head["type"] in ("OK", "ERROR"), head
                if head["type"] == "ERROR":
                    assert body["code"] != "FABRIC_ERROR", reply
        while s.poll(500):
            s.recv_multipart()
            answered += 1
    finally:
        s.close(0)
        ctx.term()
    return answered


def test_every_daemon_survives_thousands_of_bad_frames(cluster, seed):
    st = StateDir(cluster.state_dir)
    rng = random.Random(seed)
    with cluster.connect("h0") as s:
        r = s.alloc("guarded", 1 << 20, placement="d0", share="shared")
        r.write(np.full(1 << 18, 5, dtype=np.uint32))
        before = {n["name"]: (n["pid"], n["incarnation"]) for n in cluster.status()["nodes"]}
        bodies = _bodies(st)
        answered = 0
        for ep in (st.manager_endpoint, st.node_endpoint("h0"), st.node_endpoint("h1")):
            answered += _fuzz(ep, rng, [b for b in bodies], FRAMES_PER_SOCKET)
        assert answered > FRAMES_PER_SOCKET, f"FABRIC_TEST_SEED={seed}: too few replies"
        # every daemon is the same process, still serving, and nothing was scrubbed
        after = {n["name"]: (n["pid"], n["incarnation"]) for n in cluster.status()["nodes"]}
        assert after == before, f"FABRIC_TEST_SEED={seed}"
        assert all(n["alive"] for n in cluster.status()["nodes"])
        for ep, name in ((st.node_endpoint("h0"), "h0"), (st.node_endpoint("h1"), "h1")):
            with protocol.Client(ep, "t") as c:
                assert c.request("PING")["name"] == name
        assert (r.read().view(np.uint32) == 5).all(), f"FABRIC_TEST_SEED={seed}: data changed"
        s.alloc("after-fuzz", 4096)
    for log in ("manager", "node-h0", "node-h1"):
        with open(st.log_path(log)) as f:
            assert "crashed" not in f.read(), f"{log} logged an internal error (seed {seed})"
