"""Planning and placing ALLOCs (fabric.daemons.manager.placement) and scrub
bookkeeping (.scrub), over real allocators, no daemons."""
import time

import pytest

from fabric.constants import DEFAULT_GRANULARITY_BYTES, MAX_STRIPES
from fabric.daemons.alloc import ExtentAllocator
from fabric.daemons.manager.placement import Placer
from fabric.constants import MAX_SCRUB_EXTENTS
from fabric.daemons.manager.scrub import ScrubTracker
from fabric.errors import InvalidArgument, NodeUnavailable, PoolFull
from fabric.topology import generate

MiB = 1 << 20
PAGE = 4096


@pytest.fixture
def world():
    topo = generate(2, 3, 8 * MiB)            # h0, h1; d0..d2 homed round-robin
    allocs = {d.name: ExtentAllocator(d.capacity_bytes, PAGE) for d in topo.devices}
    dead: set[str] = set()
    placer = Placer(topo, allocs, PAGE, lambda dev: topo.device(dev).home not in dead)
    return topo, allocs, placer, dead


def test_local_prefers_the_hosts_own_device(world):
    topo, allocs, placer, _ = world
    for host in ("h0", "h1"):
        plan = placer.plan(5000, host, "local", None, None)
        assert plan.stripe_bytes == 2 * PAGE and plan.nstripes == 1
        assert topo.device(plan.devices[0]).home == host
        devices, offsets = placer.place(plan)
        assert topo.device(devices[0]).home == host and offsets == [0]


def test_interleave_deals_stripes_round_robin(world):
    _, allocs, placer, _ = world
    plan = placer.plan(5 * 64 * 1024, "h0", "interleave", None, None)
    assert plan.devices == ("d0", "d1", "d2") and plan.nstripes == 5
    assert plan.stripe_bytes == DEFAULT_GRANULARITY_BYTES
    devices, offsets = placer.place(plan)
    assert devices == ["d0", "d1", "d2"]
    assert [8 * MiB - allocs[d].free_bytes for d in devices] == [2 * 65536, 2 * 65536, 65536]


def test_granularity_larger_than_the_region_is_clamped(world):
    _, allocs, placer, _ = world
    plan = placer.plan(5000, "h0", "interleave", ["d1", "d2"], 4 * MiB)
    assert plan.stripe_bytes == 2 * PAGE and plan.nstripes == 1 and plan.devices == ("d1",)
    placer.place(plan)
    assert allocs["d1"].free_bytes == 8 * MiB - 2 * PAGE


@pytest.mark.parametrize("kw, fragment", [
    (dict(nbytes=0), "positive"),
    (dict(nbytes=-4096), "positive"),
    (dict(nbytes=(1 << 64) - 1), "whole pool"),
    (dict(nbytes=25 * MiB), "whole pool"),
    (dict(placement="interleave", devices=[["d0"]]), "strings"),
    (dict(placement="interleave", devices=["d0", "d0"]), "distinct"),
    (dict(placement="interleave", devices=[]), "distinct"),
    (dict(placement="interleave", devices=["d9"]), "d9"),
    (dict(placement="interleave", granularity=1000), "multiple"),
    (dict(placement="interleave", granularity=0), "multiple"),
    (dict(placement="interleave", granularity=(1 << 64) - PAGE), "largest device"),
    (dict(placement="interleave", granularity=16 * MiB), "largest device"),
    (dict(placement="local", granularity=PAGE), "interleave"),
    (dict(placement="d0", devices=["d0"]), "interleave"),
    (dict(placement="d7"), "d7"),
])
def test_bad_requests_are_invalid_arguments(world, kw, fragment):
    _, _, placer, _ = world
    args = dict(nbytes=PAGE, host="h0", placement="local", devices=None, granularity=None)
    args.update(kw)
    with pytest.raises(InvalidArgument, match=fragment):
        placer.plan(**args)


def test_too_many_stripes_names_a_granularity_that_fits():
    topo = generate(1, 1, 128 * MiB)
    placer = Placer(topo, {"d0": ExtentAllocator(128 * MiB, PAGE)}, PAGE, lambda d: True)
    with pytest.raises(InvalidArgument, match=f"more than {MAX_STRIPES}.* at least 8192"):
        placer.plan(MAX_STRIPES * PAGE + 1, "h0", "interleave", None, PAGE)
    assert placer.plan(MAX_STRIPES * PAGE, "h0", "interleave", None, PAGE).nstripes == MAX_STRIPES


def test_place_is_all_or_nothing(world):
    _, allocs, placer, _ = world
    allocs["d2"].take(8 * MiB)                       # d2 full
    plan = placer.plan(3 * MiB, "h0", "interleave", None, MiB)
    with pytest.raises(PoolFull, match="d2"):
        placer.place(plan)
    assert allocs["d0"].free_bytes == allocs["d1"].free_bytes == 8 * MiB


def test_dead_nodes_are_avoided_or_reported(world):
    topo, _, placer, dead = world
    dead.add("h0")                                   # d0 and d2 live on h0
    devices, _ = placer.place(placer.plan(PAGE, "h0", "local", None, None))
    assert devices == ["d1"]
    with pytest.raises(NodeUnavailable, match="h0"):
        placer.place(placer.plan(PAGE, "h0", "d0", None, None))
    with pytest.raises(NodeUnavailable):
        placer.place(placer.plan(PAGE * 40, "h0", "interleave", None, PAGE))


def _tracker(ok=lambda: True, resend_after_s=0.0):
    """A tracker whose sends are recorded as (node, [scrub ids], send id)."""
    sent = []

    def send(node, batch, req_id):
        sent.append((node, [s.id for s in batch], req_id))
        return ok()
    return ScrubTracker(send, resend_after_s=resend_after_s), sent


def test_scrub_counts_only_the_latest_send():
    t, sent = _tracker()
    s = t.add("h0", "d0", 0, PAGE)
    t2 = t.add("h1", "d1", PAGE, 2 * PAGE, initial=True)
    assert sent == []                                 # nothing goes out before a flush
    assert t.pending_bytes() == 3 * PAGE and t.pending_bytes("d1") == 2 * PAGE
    assert t.initial_pending() and t.initial_pending(["d1"]) and not t.initial_pending(["d0"])
    assert t.flush() == 2 and t.flush() == 0
    first = sent[0][2]
    t.resend_node("h0")
    latest = sent[-1][2]
    assert latest != first and sent[-1][:2] == ("h0", [s.id])
    assert t.ack(first) == []                         # an earlier copy: still pending
    assert t.failed(latest, "EIO") == [s] and s.failures == ["EIO"]
    assert t.resend_overdue() == 2
    by_node = {node: req_id for node, _ids, req_id in sent[-2:]}
    assert t.ack(by_node["h0"]) == [s] and t.ack(by_node["h0"]) == []
    assert t.ack(by_node["h1"]) == [t2] and len(t) == 0 and not t.initial_pending()


def test_scrubs_of_one_turn_go_to_each_node_in_one_message():
    t, sent = _tracker()
    a = [t.add("h0", "d0", i * PAGE, PAGE) for i in range(MAX_SCRUB_EXTENTS + 3)]
    b = t.add("h1", "d1", 0, PAGE)
    assert t.flush() == 3                             # h0: a full batch and the rest; h1: one
    assert [(node, len(ids)) for node, ids, _ in sent] == [
        ("h0", MAX_SCRUB_EXTENTS), ("h0", 3), ("h1", 1)]
    assert t.ack(sent[1][2]) == a[MAX_SCRUB_EXTENTS:]
    t.queue(a[0])                                     # resent alone: the first batch's ack
    t.flush()                                         # no longer counts for it
    assert t.ack(sent[0][2]) == a[1:MAX_SCRUB_EXTENTS]
    assert t.ack(sent[-1][2]) == [a[0]] and t.ack(sent[2][2]) == [b] and len(t) == 0
    assert t._by_send == {}                           # nothing remembered after the acks


def test_scrub_not_sent_is_due_again():
    ok = [False]
    t, sent = _tracker(lambda: ok[0], resend_after_s=60)
    s = t.add("h0", "d0", 0, PAGE)
    t.flush()
    assert s.sent_at == 0.0
    ok[0] = True
    assert t.resend_overdue() == 1 and s.sends == 2 and t.resend_overdue() == 0


def test_a_node_that_is_making_progress_is_not_asked_again():
    t, sent = _tracker(resend_after_s=0.2)
    a = t.add("h0", "d0", 0, PAGE)
    t.flush()
    b = t.add("h0", "d0", PAGE, PAGE)
    t.flush()
    t0 = b.sent_at
    time.sleep(0.1)
    assert t.ack(a.send_id) == [a]                   # h0 answered just now
    assert t.resend_overdue(now=t0 + 0.25) == 0      # b waits in h0's queue: not resent
    assert t.resend_overdue(now=t0 + 10) == 1 and b.sends == 2