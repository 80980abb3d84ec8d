"""Bad input sent straight to daemon sockets: every one gets an error reply or a
typed client error, and the daemon keeps serving."""
import os
import signal
import time

import msgpack
import psutil
import pytest
import zmq

from fabric import protocol
from fabric.errors import FabricTimeout, NodeUnavailable, ProtocolError
from fabric.statedir import StateDir


@pytest.fixture
def raw(cluster):
    """A raw DEALER socket to the manager, and a function that sends frames and reads the reply."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(StateDir(cluster.state_dir).manager_endpoint)

    def exchange(frames, timeout_ms=2000):
        sock.send_multipart(frames)
        if not sock.poll(timeout_ms):
            return None
        h, body = msgpack.unpackb(sock.recv_multipart()[0])   # one [header, body] payload
        return h, body

    yield exchange
    sock.close(0)
    ctx.term()


def header(**kw):
    h = {"v": protocol.PROTOCOL_VERSION, "id": 7, "type": "PING", "from": "test", "inc": 1}
    h.update(kw)
    return msgpack.packb(h)


def msg(body=b"\x80", **kw):
    """A message's payload frame, ``[header, body]``, from the packed header and body bytes."""
    return b"\x92" + header(**kw) + (body if isinstance(body, bytes) else msgpack.packb(body))


def assert_error(reply, code, fragment=""):
    assert reply is not None, "no reply"
    h, body = reply
    assert h["type"] == "ERROR", body
    assert body["code"] == code and fragment in body["message"], body


def assert_still_serving(cluster):
    with protocol.Client(StateDir(cluster.state_dir).manager_endpoint, "t") as c:
        assert c.request("PING")["name"] == "manager"


@pytest.mark.parametrize("frames, code, fragment", [
    ([b"\xc1garbage"], "PROTOCOL_ERROR", "malformed message"),
    ([msg()[:-4]], "PROTOCOL_ERROR", "malformed"),      # truncated msgpack
    ([msg(v=99)], "PROTOCOL_ERROR", "version"),
    ([msg(type="FROBNICATE")], "PROTOCOL_ERROR", "unknown message type"),
    ([msg(b"\x93\x01")], "PROTOCOL_ERROR", "malformed message"),  # truncated array
    ([msg([1, 2])], "PROTOCOL_ERROR", "not a map"),
    ([header()], "PROTOCOL_ERROR", "[header, body]"),
    ([header(), b"\x80"], "PROTOCOL_ERROR", "[header, body]"),    # the two frames of v1
    ([msg({"name": "x"}, type="ALLOC", **{"from": "h0"})], "INVALID_ARGUMENT", "nbytes"),
    ([msg({"name": "x", "nbytes": "big"}, type="ALLOC", **{"from": "h0"})],
     "INVALID_ARGUMENT", "wrong type"),
    ([msg({"name": "x", "nbytes": 4096}, type="ALLOC", **{"from": "nobody"})],
     "INVALID_ARGUMENT", "unknown host"),
    ([msg({"address": 12345}, type="TRANSLATE")], "REGION_NOT_FOUND", "0x3039"),
    ([msg({"name": "nope"}, type="OPEN", **{"from": "h0"})], "REGION_NOT_FOUND", "nope"),
    ([msg(), os.urandom(2 << 20)], "PROTOCOL_ERROR", "control limit"),  # oversized
    ([msg({"name": "x", "nbytes": 4096, "placement": "interleave", "devices": [["d0"]]},
          type="ALLOC", **{"from": "h0"})], "INVALID_ARGUMENT", "device names"),
    ([msg({"host": "h0", "pid": "me"}, type="HELLO", **{"from": "h0"})],
     "INVALID_ARGUMENT", "pid"),
    ([msg({}, type="BYE")], "INVALID_ARGUMENT", "session"),
    ([msg(ttl_ms="soon")], "PROTOCOL_ERROR", "ttl_ms"),
    ([msg(**{"from": 7})], "PROTOCOL_ERROR", "'from'"),
])
def test_bad_message_gets_error_reply(cluster, raw, frames, code, fragment):
    assert_error(raw(frames), code, fragment)
    assert_still_serving(cluster)


def test_unknown_header_keys_are_ignored(cluster, raw):
    h, body = raw([msg(color="blue")])
    assert h["type"] == "OK" and h["id"] == 7


def test_frame_beyond_socket_limit_drops_only_that_peer(cluster):
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(StateDir(cluster.state_dir).manager_endpoint)
    s.send_multipart([msg(), b"\0" * (protocol.MAX_MESSAGE_BYTES + 1)])
    assert not s.poll(500)  # ZeroMQ cut that connection; no reply
    s.close(0)
    ctx.term()
    assert_still_serving(cluster)
    with cluster.connect("h0") as h0:
        h0.alloc("after", 4096)


def test_garbage_to_node_daemon(cluster):
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(StateDir(cluster.state_dir).node_endpoint("h1"))
    secret = StateDir(cluster.state_dir).read_secret()   # bad input from a holder of the secret
    s.send_multipart([msg({"extents": [["d0", 0, 4096]], "secret": secret}, type="SCRUB")])
    assert s.poll(2000)
    h, body = msgpack.unpackb(s.recv_multipart()[0])
    assert body["code"] == "INVALID_ARGUMENT" and "not homed" in body["message"]
    s.send_multipart([msg({"extents": [["d1", 0, 4096], ["d1", 1 << 40, 4096]],
                           "secret": secret}, type="SCRUB")])
    assert s.poll(2000)
    h, body = msgpack.unpackb(s.recv_multipart()[0])
    assert "outside device" in body["message"]
    s.close(0)
    ctx.term()
    assert all(n["alive"] for n in cluster.status()["nodes"])


def test_client_deadline_when_manager_paused(cluster):
    with cluster.connect("h0", timeout_ms=300) as s:
        pid = cluster.info["pids"]["manager"]
        os.kill(pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            with pytest.raises(FabricTimeout):
                s.alloc("x", 4096)
            assert time.monotonic() - t0 < 5
        finally:
            os.kill(pid, signal.SIGCONT)
        s.alloc("y", 4096)  # the late reply to "x" is dropped, not taken for "y"
        assert sorted(r["name"] for r in s.regions()) == ["x", "y"]


def test_client_when_manager_dead(cluster):
    with cluster.connect("h0", timeout_ms=300) as s:
        psutil.Process(cluster.info["pids"]["manager"]).kill()
        t0 = time.monotonic()
        with pytest.raises(NodeUnavailable, match="not running"):
            s.regions()
        assert time.monotonic() - t0 < 5


def test_dead_node_is_detected_and_reported(cluster):
    with cluster.connect("h0") as s:
        s.alloc("on-d1", 4096, placement="d1", share="shared")
        psutil.Process(cluster.info["pids"]["h1"]).kill()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            nodes = {n["name"]: n for n in cluster.status()["nodes"]}
            if not nodes["h1"]["alive"]:
                break
            time.sleep(0.1)
        assert not nodes["h1"]["alive"] and nodes["h0"]["alive"]
        with pytest.raises(NodeUnavailable, match="h1"):
            s.open("on-d1")
        with pytest.raises(NodeUnavailable):
            s.alloc("new", 4096, placement="d1")
        assert s.alloc("elsewhere", 4096).devices == ["d0"]


def test_fuzzed_messages_never_kill_the_manager(cluster, raw, seed):
    """Seeded random frames (garbage, mutated valid messages): every one is answered
    or dropped, and the manager keeps serving."""
    import random
    rng = random.Random(seed)
    valid = [b"\x92" + header(type=t, **{"from": "h0"}) for t in
             ("PING", "ALLOC", "OPEN", "FREE", "LIST", "TRANSLATE", "STATUS", "HELLO",
              "BYE")]
    bodies = [msgpack.packb(b) for b in ({}, {"name": "x", "nbytes": 4096}, {"name": 3},
                                         {"address": -1}, {"host": None}, {"host": "h0", "pid": 1},
                                         {"session": 1}, {"name": "x", "force": True},
                                         [1], "s")]
    for _ in range(300):
        kind = rng.random()
        if kind < 0.3:
            frames = [os.urandom(rng.randint(0, 64)) for _ in range(rng.randint(1, 4))]
        else:
            h = bytearray(rng.choice(valid))
            if kind < 0.6 and h:
                for _ in range(rng.randint(1, 3)):
                    h[rng.randrange(len(h))] = rng.randrange(256)
            frames = [bytes(h) + rng.choice(bodies)]
        reply = raw(frames, timeout_ms=1000)
        if reply is not None:
            assert reply[0]["type"] in ("OK", "ERROR")
    assert_still_serving(cluster)
    with cluster.connect("h0") as s:
        s.alloc("after-fuzz", 4096)
    # bad input is answered as bad input, never as an internal error
    with open(os.path.join(StateDir(cluster.state_dir).logs_dir, "manager.log")) as f:
        assert "crashed" not in f.read()
