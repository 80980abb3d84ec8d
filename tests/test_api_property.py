"""A seeded property test of the public API: random calls with arguments of random
types against a real cluster raise nothing but FabricError subclasses, and every
session still works afterwards.  Reproduce a failure with FABRIC_TEST_SEED=<seed>."""
import random

import numpy as np

import fabric
from fabric.engine import stats as fstats
from fabric.errors import FabricError

CALLS = 400
NAMES = ["r0", "r1", "r2", "r3", "", "x" * 300, "a/b", "\x00", "d0"]


def _value(rng: random.Random, kind: str | None = None):
    """A random argument: often a plausible one, often not."""
    plausible = {
        "size": [1, 64, 4096, 8192, 65536, 1 << 20, np.int64(4096), np.uint32(65536)],
        "offset": [0, 1, 8, 64, 4096, np.int64(16), np.uint16(8)],
        "name": NAMES[:4],
        "host": ["h0", "h1"],
        "dtype": ["u1", "f4", "<i8", np.float64, ("f4", (2,)), "V0", object, "nope", None],
        "shape": [1, 4, 16, (2, 8), (4, 4), [8], np.int64(8), (0,), ()],
        "placement": ["local", "interleave", "d0", "d1", "d9"],
        "share": ["private", "shared", "coherent"],
        "allow": ["h1", "h0", ["h0", "h1"], {"h1": "rw"}, {"h0": "r"}],
        "devices": [["d0", "d1"], "d1", ("d0",)],
        "policy": ["cache", "direct", "promote"],
        "eviction": ["clock", "lru", "fifo"],
    }
    if kind in plausible and rng.random() < 0.75:
        return rng.choice(plausible[kind])
    wild = [0, 1, -1, 2**31, 2**63, 2**64, 1 << 70, True, False, 1.5, float("nan"),
            float("inf"), 1j, "", "h1", "d0", "interleave", "shared", "rw", "x" * 300, "\x00",
            b"h0", bytearray(b"ab"), None, [], ["h1"], [1, 2], ("h0", "h1"), {"h1": "rw"},
            {1: 2}, {"h1": 5}, (2, 3), np.int8(-3), np.uint64(2**64 - 1), np.float32(2.5),
            np.array([1, 2]), np.array([[1]]), object(), np.dtype("V0"), slice(1), range(3)]
    return rng.choice(wild)


def _kwargs(rng: random.Random, spec: dict) -> dict:
    return {k: _value(rng, kind) for k, kind in spec.items() if rng.random() < 0.25}


def test_random_calls_raise_only_fabric_errors(cluster, seed):
    print(f"property test seed {seed} (FABRIC_TEST_SEED={seed} reproduces it)")
    rng = random.Random(seed)
    keep = [cluster.connect("h0", timeout_ms=2000), cluster.connect("h1", timeout_ms=2000)]
    sessions = list(keep)
    regions: list = []
    snapshots: list = []
    log: list[str] = []

    def call(what: str, fn, *args, **kwargs):
        log.append(f"{what}{args!r:.200}{kwargs!r:.200}")
        try:
            return fn(*args, **kwargs)
        except FabricError:
            return None
        except BaseException as exc:
            raise AssertionError(f"seed {seed}: {what} raised {type(exc).__name__}: {exc}\n"
                                 f"last calls:\n" + "\n".join(log[-5:])) from exc

    try:
        for _ in range(CALLS):
            op = rng.random()
            s = rng.choice(sessions)
            if op < 0.04 and len(sessions) < 6:
                kw = _kwargs(rng, {"timeout_ms": "size", "policy": "policy",
                                   "eviction": "eviction", "promote_after": "size",
                                   "max_regions": "size"})
                if rng.random() < 0.5:
                    kw["inject"] = rng.choice(["off", "virtual", "x", None, 3])
                new = call("connect", fabric.connect, _value(rng, "host"),
                           cluster.state_dir if rng.random() < 0.9 else _value(rng), **kw)
                if new is not None:
                    sessions.append(new)
            elif op < 0.06 and len(sessions) > 2:
                victim = rng.choice(sessions[2:])
                call("close", victim.close)
                if rng.random() < 0.7:
                    sessions.remove(victim)
            elif op < 0.22:
                kw = _kwargs(rng, {"placement": "placement", "devices": "devices",
                                   "granularity": "size", "share": "share", "allow": "allow",
                                   "policy": "policy"})
                r = call("alloc", s.alloc, _value(rng, "name"), _value(rng, "size"), **kw)
                if r is not None:
                    regions.append(r)
            elif op < 0.32:
                r = call("open", s.open, _value(rng, "name"),
                         **_kwargs(rng, {"policy": "policy"}))
                if r is not None:
                    regions.append(r)
            elif op < 0.37:
                call("free", s.free, _value(rng, "name"))
            elif op < 0.42:
                target = rng.choice(regions).address if regions and rng.random() < 0.5 \
                    else _value(rng, "size")
                call("translate", s.translate, target)
            elif op < 0.45:
                call("regions", s.regions)
            elif op < 0.50:
                st = call("stats", s.stats)
                if st is not None:
                    snapshots.append(st)
                if len(snapshots) >= 2 and rng.random() < 0.5:
                    a, b = rng.sample(snapshots, 2)
                    call("diff", fstats.diff, a, b)
                if rng.random() < 0.2:
                    call("cluster stats", cluster.stats)
            elif regions:
                r = rng.choice(regions)
                m = rng.random()
                if m < 0.15:
                    a = call("ndarray", r.ndarray, _value(rng, "dtype"), _value(rng, "shape"),
                             _value(rng, "offset"))
                    if a is not None and a.flags.writeable and a.size:
                        a.reshape(-1)[:1] = 0
                elif m < 0.35:
                    v = call("read", r.read, *[_value(rng, "offset") for _ in
                                               range(rng.randrange(3))])
                    if v is not None and v.size:
                        int(v[0])
                elif m < 0.55:
                    data = rng.choice([b"abc", bytearray(8), np.arange(4, dtype="u2"),
                                       memoryview(b"xy"), _value(rng)])
                    call("write", r.write, data, _value(rng, "offset"))
                elif m < 0.7:
                    call("access", r.access, _value(rng, "offset"), _value(rng, "offset"),
                         rng.choice([False, True, _value(rng)]))
                elif m < 0.8:
                    ctx = call("reading", r.reading, _value(rng, "dtype"),
                               _value(rng, "shape"), _value(rng, "offset"))
                    if ctx is not None:
                        call("reading body", _enter_exit, ctx)
                elif m < 0.95:
                    ctx = call("writing", r.writing, _value(rng, "dtype"),
                               _value(rng, "shape"), _value(rng, "offset"))
                    if ctx is not None:
                        call("writing body", _enter_exit, ctx)
                else:
                    call("close region", r.close)
        # the sessions still work
        for i, s in enumerate(keep):
            r = s.alloc(f"after-{i}", 8192, share="shared")
            assert r.write(b"still here") == 10
            assert bytes(r.read(0, 10)) == b"still here"
            assert s.stats()["calls"] > 0
            assert f"after-{i}" in [d["name"] for d in s.regions()]
            s.free(f"after-{i}")
        with cluster.connect("h0") as fresh:
            assert fresh.alloc("fresh", 4096).write(b"ok") == 2
            fresh.free("fresh")
    finally:
        for s in sessions:
            s.close()


def _enter_exit(ctx) -> None:
    with ctx as a:
        if a.flags.writeable and a.size:
            a.reshape(-1)[:1] = 1
