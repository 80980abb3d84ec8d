"""The manager's region directory (fabric.daemons.manager.directory), no daemons."""
import random

import pytest

from fabric.daemons.manager.directory import GAS_ALIGN, GAS_BASE, Directory
from fabric.descriptor import RegionDescriptor
from fabric.errors import RegionExists, RegionNotFound

PAGE = 4096


def make(d: Directory, name: str, nbytes: int = PAGE, **kw):
    args = dict(name=name, nbytes=nbytes, share="private", owner="h0", allow=None,
                placement="device", devices=["d0"], offsets=[0],
                stripe_bytes=-(-nbytes // PAGE) * PAGE, nstripes=1)
    args.update(kw)
    return d.create(**args)


def test_create_gives_ids_and_aligned_guarded_addresses():
    d = Directory()
    a = make(d, "a", 3 * PAGE)
    b = make(d, "b", GAS_ALIGN + 1, stripe_bytes=GAS_ALIGN + PAGE)
    c = make(d, "c")
    assert isinstance(a, RegionDescriptor)
    assert (a.id, b.id, c.id) == (1, 2, 3)
    assert a.address == GAS_BASE
    assert b.address == GAS_BASE + 2 * GAS_ALIGN          # one aligned block + guard gap
    assert c.address == b.address + 3 * GAS_ALIGN         # two aligned blocks + guard gap
    assert all(r.address % GAS_ALIGN == 0 for r in (a, b, c))
    assert [r.name for r in d] == ["a", "b", "c"] and len(d) == 3
    d.check()


def test_ids_and_addresses_are_never_reused():
    d = Directory()
    a = make(d, "x")
    d.remove("x")
    b = make(d, "x")
    assert b.id != a.id and b.address > a.address
    assert d.at_address(a.address) is None
    d.check()


def test_duplicate_and_missing_names():
    d = Directory()
    make(d, "x")
    with pytest.raises(RegionExists, match="owner h0"):
        make(d, "x", owner="h1")
    with pytest.raises(RegionNotFound):
        d.remove("nope")
    with pytest.raises(RegionNotFound):
        d.require("nope")
    assert d.get("nope") is None and "x" in d and "nope" not in d


def test_translate_striped_region():
    d = Directory()
    r = make(d, "s", 10 * PAGE, placement="interleave", devices=["d0", "d1", "d2"],
             offsets=[4 * PAGE, 0, 8 * PAGE], stripe_bytes=2 * PAGE, nstripes=5)
    # stripe 4 (bytes 8..10 pages) is the second stripe on d1
    reg, off, dev, dev_off = d.translate(r.address + 8 * PAGE + 5)
    assert (reg.name, off, dev, dev_off) == ("s", 8 * PAGE + 5, "d1", 2 * PAGE + 5)
    reg, off, dev, dev_off = d.translate(r.address + 2 * PAGE)  # stripe 1 -> d1 at 0
    assert (dev, dev_off) == ("d1", 0)
    with pytest.raises(RegionNotFound, match=hex(r.address + 10 * PAGE)):
        d.translate(r.address + 10 * PAGE)                       # past nbytes
    with pytest.raises(RegionNotFound):
        d.translate(GAS_BASE - 1)


def test_descriptor_wire_keys_are_what_clients_read():
    d = Directory()
    r = make(d, "w", 5000, share="shared", allow={"h1": "rw"})
    wire = r.for_host("h1").to_wire()
    assert set(wire) == {"id", "name", "address", "nbytes", "mapped_bytes", "share", "owner",
                         "allow", "placement", "devices", "offsets", "stripe_bytes", "nstripes",
                         "created", "access"}
    assert wire["access"] == "rw" and wire["mapped_bytes"] == 2 * PAGE
    assert isinstance(wire["devices"], list) and isinstance(wire["offsets"], list)
    assert "access" not in r.to_wire()
    assert RegionDescriptor.from_wire(wire) == r.for_host("h1")


def test_random_trace_keeps_the_index_consistent(seed):
    rng = random.Random(seed)
    d = Directory()
    live: dict[str, RegionDescriptor] = {}
    seen_addresses = set()
    for i in range(500):
        if live and rng.random() < 0.4:
            name = rng.choice(sorted(live))
            assert d.remove(name) == live.pop(name)
        else:
            n = rng.randint(1, 3 * GAS_ALIGN // PAGE) * PAGE
            r = make(d, f"r{i}", n)
            assert r.address not in seen_addresses
            seen_addresses.add(r.address)
            live[r.name] = r
        d.check()
        if live:
            r = rng.choice(list(live.values()))
            off = rng.randrange(r.nbytes)
            assert d.at_address(r.address + off) == (r, off)
