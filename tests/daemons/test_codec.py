"""fabric.protocol.encode/decode: the one framing of every message, no daemons."""
import msgpack
import pytest
import zmq

from fabric import constants, protocol
from fabric.errors import ProtocolError


def test_round_trip():
    h = protocol.make_header("ALLOC", 9, "h0", 123, 2500)
    frames = protocol.encode(h, {"name": "x", "nbytes": 4096, "blob": b"\0\1"})
    assert all(isinstance(f, bytes) for f in frames) and len(frames) == 1   # one payload
    header, body = protocol.decode(frames)
    assert header == h and body == {"name": "x", "nbytes": 4096, "blob": b"\0\1"}
    assert protocol.decode(protocol.encode(h, None))[1] == {}


def test_decode_accepts_zmq_frames():
    frames = [zmq.Frame(f) for f in protocol.encode(protocol.make_header("PING", 1, "t", 1), {})]
    assert protocol.decode(frames)[0]["type"] == "PING"


def test_raw_frames_count_against_the_limit():
    frames = protocol.encode(protocol.make_header("PING", 4, "t", 1), {})
    assert protocol.decode(frames + [b"x" * 100])[0]["id"] == 4
    with pytest.raises(ProtocolError, match="control limit") as e:
        protocol.decode(frames + [b"x" * protocol.MAX_CONTROL_BYTES])
    assert e.value.req_id == 4
    assert protocol.decode(frames + [b"x" * protocol.MAX_CONTROL_BYTES],
                           limit_bytes=protocol.MAX_MESSAGE_BYTES)[0]["id"] == 4


def _msg(header: dict, body=None, raw_body: bytes | None = None) -> list[bytes]:
    """One payload frame: a msgpack array of the header and the body (or raw body bytes)."""
    return [b"\x92" + msgpack.packb(header) + (msgpack.packb({} if body is None else body)
                                                if raw_body is None else raw_body)]


@pytest.mark.parametrize("frames, fragment, req_id", [
    ([], "payload frame", -1),
    ([msgpack.packb({"v": 2, "id": 3, "type": "PING"})], r"\[header, body\]", -1),
    ([msgpack.packb([{"v": 2, "id": 3, "type": "PING"}])], r"\[header, body\]", -1),
    ([b"\xc1"], "malformed message", -1),
    ([msgpack.packb([[1], {}])], "not a map", -1),
    (_msg({"v": 1, "id": 5, "type": "PING"}), "version", 5),
    (_msg({"v": 2, "id": "5", "type": "PING"}), "integer 'id'", -1),
    (_msg({"v": 2, "id": 6, "type": "PING", "ttl_ms": -1}), "ttl_ms", 6),
    (_msg({"v": 2, "id": 6, "type": "PING", "from": 1}), "'from'", 6),
    (_msg({"v": 2, "id": 7, "type": "PING"}, raw_body=b"\x93\x01"), "malformed message", -1),
    (_msg({"v": 2, "id": 8, "type": "PING"}, "s"), "not a map", 8),
])
def test_malformed_messages_raise_protocol_error_with_the_id(frames, fragment, req_id):
    with pytest.raises(ProtocolError, match=fragment) as e:
        protocol.decode(frames)
    assert e.value.req_id == req_id


def test_timeouts_are_the_shared_constants():
    assert protocol.DEFAULT_TIMEOUT_MS == constants.DEFAULT_TIMEOUT_MS
    assert protocol.MAX_TIMEOUT_MS == constants.MAX_TIMEOUT_MS
