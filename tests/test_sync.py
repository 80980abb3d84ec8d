"""fabric.sync: a barrier and an atomic counter in pooled memory, across real processes."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

import fabric
from fabric.errors import InvalidArgument, SyncTimeout
from fabric.sync import Barrier, Counter

# One participant: attach as a host, open the sync region, add to the counter a
# seeded random number of times per round, meet at the barrier, and check after
# each round that every increment of that round is visible.
WORKER = r"""
import json, random, sys
import fabric
from fabric.sync import Barrier, Counter
cfg = json.loads(sys.argv[1])
s = fabric.connect(cfg["host"], state_dir=cfg["state_dir"])
r = s.open("sync", policy="direct")
b = Barrier(r, cfg["parties"], cfg["rank"], timeout_ms=20000)
total = Counter(r, offset=cfg["counter_off"])
rounds = Counter(r, offset=cfg["counter_off"] + 8)
rng = random.Random(cfg["seed"] * 100 + cfg["rank"])
mine = 0
for k in range(cfg["rounds"]):
    if cfg["rank"] == cfg.get("die_rank") and k == cfg.get("die_round"):
        import os; os._exit(3)
    for _ in range(rng.randrange(1, 20)):
        total.add(1); mine += 1
    rounds.add(1)
    b.wait()
    seen = rounds.load()
    assert seen >= cfg["parties"] * (k + 1), (k, seen)
    b.wait()
print(json.dumps({"rank": cfg["rank"], "added": mine, "final": total.load()}))
s.close()
"""


def _spawn(state_dir, rank, parties, seed, **extra):
    cfg = dict(host=f"h{rank}", state_dir=state_dir, rank=rank, parties=parties, seed=seed,
               counter_off=Barrier.block_bytes(parties), rounds=extra.pop("rounds", 30), **extra)
    return subprocess.Popen([sys.executable, "-c", WORKER, json.dumps(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def cluster4(state_dir):
    c = fabric.Cluster.start(hosts=4, devices=1, device_size="16MiB", state_dir=state_dir)
    try:
        s = c.connect("h0")
        s.alloc("sync", 4096, share="coherent", policy="direct")
        yield c, s
        s.close()
    finally:
        c.stop()


def test_stress_four_processes_no_lost_increment(cluster4, seed):
    c, s = cluster4
    procs = [_spawn(c.state_dir, r, 4, seed) for r in range(4)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=90)
        assert p.returncode == 0, err
        outs.append(json.loads(out))
    added = sum(o["added"] for o in outs)
    assert added > 0
    assert all(o["final"] == added for o in outs)      # after the last barrier, all see all
    # the sync words were charged by the engine
    assert s.open("sync").info["share"] == "coherent"


def test_dead_participant_fails_the_others_fast(cluster4, seed):
    c, _ = cluster4
    procs = [_spawn(c.state_dir, r, 4, seed, die_rank=2, die_round=3, rounds=10) for r in range(4)]
    t0 = time.monotonic()
    errs = {}
    for r, p in enumerate(procs):
        _out, err = p.communicate(timeout=60)
        errs[r] = (p.returncode, err)
    assert errs[2][0] == 3
    for r in (0, 1, 3):
        code, err = errs[r]
        assert code != 0 and "SyncTimeout" in err and "rank 2" in err, err
    assert time.monotonic() - t0 < 15          # far below the 20 s barrier timeout


def test_barrier_times_out_and_counter_in_process(cluster4):
    _c, s = cluster4
    r = s.open("sync", policy="direct")
    b = Barrier(r, parties=2, rank=0, timeout_ms=200)
    t0 = time.monotonic()
    with pytest.raises(SyncTimeout, match="timed out"):
        b.wait()
    assert time.monotonic() - t0 >= 0.19
    assert isinstance(SyncTimeout("x"), fabric.FabricTimeout)
    c = Counter(r, offset=512)
    assert c.add(5) == 5 and c.load() == 5
    assert c.compare_exchange(4, 9) == (False, 5)
    assert c.compare_exchange(5, 9) == (True, 5) and c.load() == 9
    assert c.charged_ns > 0 and s.stats()["calls"] > 0
    solo = Barrier(r, parties=1, rank=0, offset=1024)
    assert solo.wait() == 1 and solo.wait() == 2
    solo.abort()
    with pytest.raises(SyncTimeout, match="aborted"):
        solo.wait()
    with pytest.raises(InvalidArgument):
        Barrier(r, parties=2, rank=2)
    with pytest.raises(InvalidArgument):
        Counter(r, offset=3)


# Lockstep: each participant streams a seeded random mix of reads and writes
# through the one shared device between barriers; the barrier parks waiters and
# releases everyone at the latest arrival's virtual time.
LOCKSTEP_WORKER = r"""
import json, random, sys
import fabric
from fabric.sync import Barrier
cfg = json.loads(sys.argv[1])
s = fabric.connect(cfg["host"], state_dir=cfg["state_dir"], inject="virtual",
                   lockstep_ns=2000, lockstep_hosts=cfg["parties"], lockstep_timeout_ms=30000)
mine = s.alloc(f"d{cfg['rank']}", 256 << 10, policy="direct")
b = Barrier(s.open("sync", policy="direct"), cfg["parties"], cfg["rank"], timeout_ms=30000)
rng = random.Random(cfg["seed"] * 100 + cfg["rank"])
after = []
for phase in range(4):
    for _ in range(rng.randrange(20, 60)):
        n = rng.choice((64, 4096, 65536))
        mine.access(rng.randrange(0, (256 << 10) - n + 1, 64), n, rng.random() < 0.3)
        s._engine.advance(rng.randrange(0, 3000))
    b.wait()
    after.append(s.virtual_time_ns)
st = s.stats()
keep = ("calls", "injected_ns", "virtual_time_ns", "latency_ns_p50", "latency_ns_p99",
        "latency_ns_max", "misses", "hits", "evictions", "writebacks", "far_bytes")
print(json.dumps({"rank": cfg["rank"], "after": after, **{k: st[k] for k in keep},
                  "waits": st.get("lockstep", {}).get("waits")}))
s.close()
"""


def _lockstep_run(state_dir, seed, parties=3):
    c = fabric.Cluster.start(hosts=parties, devices=1, device_size="16MiB", state_dir=state_dir)
    try:
        s = c.connect("h0", inject="off")
        s.alloc("sync", 4096, share="coherent", policy="direct")
        procs = [subprocess.Popen(
            [sys.executable, "-c", LOCKSTEP_WORKER,
             json.dumps({"host": f"h{r}", "state_dir": c.state_dir, "rank": r,
                         "parties": parties, "seed": seed})],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(parties)]
        outs = {}
        for r, p in enumerate(procs):
            out, err = p.communicate(timeout=90)
            assert p.returncode == 0, err
            outs[r] = json.loads(out)
        s.close()
        return outs
    finally:
        c.stop()


@pytest.mark.timeout(180)
def test_lockstep_barrier_phases_repeat_exactly(state_dir, seed):
    first = _lockstep_run(state_dir, seed)
    again = _lockstep_run(state_dir, seed)
    for r in first:
        assert first[r]["calls"] > 0 and first[r]["latency_ns_p99"] > 0
        waits = first[r].pop("waits"), again[r].pop("waits")
        assert again[r] == first[r], f"rank {r} differs between two runs (waits {waits})"
    # A barrier releases everyone at the latest arrival's clock (then each pays its
    # release read, except the last arrival): the clocks after it are within one read.
    for phase in range(4):
        clocks = [first[r]["after"][phase] for r in first]
        assert max(clocks) - min(clocks) < 5_000, clocks
