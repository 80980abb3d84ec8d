"""A pure-Python reference of the engine (csrc/engine.c and friends).

Slow and obvious on purpose: the tests run random traces through both and
demand the same hits, misses, evictions, write-backs, counters, histogram
and charges, bit for bit.  It mirrors the C operation for operation --
including the order of floating-point operations and of PRNG draws -- but
with Python containers instead of hash tables and linked lists.

One C shortcut is deliberately not mirrored: the resident summary
(docs/cost-model.md), which prices a read of wholly resident, current pages
from per-region counts and defers CLOCK reference bits until an eviction scan.
It changes no result, so this model keeps the page-by-page pass as the
definition the shortcut must reproduce; the differential tests hold the C
engine, with the summary and without it (``Engine(page_pass=True)``), to it.

Faults: a :class:`RefSegment` also holds the fault state of csrc/seg.c
(device and link states, degrade factors, slow devices, poison tables; its
setters mirror fab_seg_*), and :class:`RefEngine` re-derives the degraded
model values and checks each access exactly as engine.c does, raising
:class:`RefFault` where the C returns a fault code.

Lockstep (``lockstep_ns=Q``, csrc/lockstep.c): a host reads the other
members' slots as of the start of its quantum -- their values after every
access they started before it -- instead of live.  The reference keeps each
slot's whole history of snapshots (valid-from quantum, values) and picks the
latest one at or before the reader's quantum, which is the definition the C
engine's two copies per slot must reproduce; it does not wait, so the caller
drives its hosts in an order that obeys the rule (least virtual clock first).

Scope: "virtual" and "off" modes.  Several :class:`RefEngine` objects may
share one :class:`RefSegment` (several hosts in one process, like engines
sharing a shared_path).  In "off" mode other hosts' activity is judged by a
wall clock in C, which the reference cannot reproduce, so "off" is exact only
for a single host.
"""
from __future__ import annotations

import math
from collections import OrderedDict

from ..constants import ENGINE_COUNTERS as COUNTERS
from ..constants import ENGINE_DEFAULTS, TIERS
from ..topology.curves import host_dram_points, interpolate

MASK64 = (1 << 64) - 1
POISON_MAX = 16    # FAB_POISON_MAX
DRAM_SLOTS = 8     # FAB_DRAM_SLOTS: engines of one host that see each other on its DRAM
TWO_POW_53 = 9007199254740992.0


# ---- PRNG and hashing (cost.c) --------------------------------------------------

def mix64(x: int) -> int:
    x &= MASK64
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & MASK64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & MASK64
    x ^= x >> 31
    return x


def _rotl(x: int, k: int) -> int:
    return ((x << k) | (x >> (64 - k))) & MASK64


class Rng:
    """xoshiro256** seeded through splitmix64, as fab_rng_*."""

    def __init__(self, seed: int):
        z = seed & MASK64
        self.s = []
        for _ in range(4):
            z = (z + 0x9E3779B97F4A7C15) & MASK64
            self.s.append(mix64(z))

    def next(self) -> int:
        s = self.s
        result = (_rotl((s[1] * 5) & MASK64, 7) * 9) & MASK64
        t = (s[1] << 17) & MASK64
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = _rotl(s[3], 45)
        return result

    def uniform(self) -> float:
        return float(self.next() >> 11) * (1.0 / TWO_POW_53)

    def normal(self) -> float:
        u1 = self.uniform()
        u2 = self.uniform()
        if u1 <= 0.0:
            u1 = 1.0 / TWO_POW_53
        return math.sqrt(-2.0 * math.log(u1)) * math.cos(6.283185307179586 * u2)


curve_ns = interpolate  # one definition, in fabric/topology/curves.py


def queue_excess_ns(base_ns: float, rho: float, max_factor: float) -> float:
    if not rho > 0.0:
        return 0.0
    factor = max_factor
    if rho < 1.0:
        f = 1.0 / (1.0 - rho)
        if f < factor:
            factor = f
    return base_ns * (factor - 1.0)


def _lines(b: int) -> int:
    """64-byte lines covering b bytes (engine.c lines_of)."""
    return (b + 63) // 64


def stalls_ns(rng: Rng, rounds: int, p: float, stall_ns: float) -> float:
    """A slow device's stalls (fab_cost_stalls_ns): one draw per round."""
    total = 0.0
    for _ in range(rounds):
        if rng.uniform() < p:
            total += stall_ns
    return total


def rounds_ns(jitter: dict, rng: Rng, rounds: int, latency_ns: float) -> float:
    kind = jitter.get("kind", "none")
    total = 0.0
    if kind == "lognormal":
        sigma = float(jitter["sigma"])
        for _ in range(rounds):
            total += latency_ns * math.exp(sigma * rng.normal())
        return total
    if kind == "spike":
        p, spike = float(jitter["p"]), float(jitter["spike_ns"])
        for _ in range(rounds):
            lat = latency_ns
            if rng.uniform() < p:
                lat += spike
            total += lat
        return total
    return float(rounds) * latency_ns


# ---- histogram (hist.c) -----------------------------------------------------------

SUB_BITS, SUB, MAX_EXP = 7, 128, 36
TOP_NS = (1 << (MAX_EXP + 1)) - 1
HIST_BUCKETS = SUB + (MAX_EXP - SUB_BITS + 1) * SUB


def bucket_of(v: int) -> int:
    if v < SUB:
        return v
    v = min(v, TOP_NS)
    e = v.bit_length() - 1
    return SUB + (e - SUB_BITS) * SUB + (v >> (e - SUB_BITS)) - SUB


def bucket_low(b: int) -> int:
    b = min(b, HIST_BUCKETS - 1)
    if b < SUB:
        return b
    j = b - SUB
    e, s = j // SUB + SUB_BITS, j % SUB
    return (SUB + s) << (e - SUB_BITS)


def bucket_value(b: int) -> int:
    b = min(b, HIST_BUCKETS - 1)
    if b < SUB:
        return b
    e = (b - SUB) // SUB + SUB_BITS
    return bucket_low(b) + (1 << (e - SUB_BITS)) // 2


class RefHistogram:
    def __init__(self):
        self.buckets = [0] * HIST_BUCKETS
        self.count = self.sum_ns = self.max_ns = self.overflow = 0
        self.min_ns = None

    def record(self, v: int, count: int = 1) -> None:
        if count == 0:
            return
        if v > TOP_NS:
            self.overflow += count
        self.buckets[bucket_of(v)] += count
        self.sum_ns = (self.sum_ns + v * count) & MASK64
        self.max_ns = max(self.max_ns, v)
        self.min_ns = v if self.min_ns is None else min(self.min_ns, v)
        self.count += count

    def merge(self, other: "RefHistogram") -> None:
        for i, n in enumerate(other.buckets):
            self.buckets[i] += n
        self.count += other.count
        self.sum_ns = (self.sum_ns + other.sum_ns) & MASK64
        self.overflow += other.overflow
        self.max_ns = max(self.max_ns, other.max_ns)
        if other.min_ns is not None:
            self.min_ns = other.min_ns if self.min_ns is None else min(self.min_ns, other.min_ns)

    def percentile(self, pct: float) -> int:
        if self.count == 0:
            return 0
        if pct >= 100.0:
            return self.max_ns
        rank = max(1, int(math.ceil(pct * float(self.count) / 100.0)))
        seen, v = 0, self.max_ns
        for b, n in enumerate(self.buckets):
            seen += n
            if seen >= rank:
                v = bucket_value(b)
                break
        return max(min(v, self.max_ns), self.min_ns)


# ---- page cache (pcache.c) ----------------------------------------------------------

class RefPage:
    __slots__ = ("key", "frame", "version", "pins", "dev", "valid", "dirty", "ref")

    def __init__(self):
        self.key = self.version = self.pins = self.dev = 0
        self.frame = None
        self.valid = self.dirty = self.ref = False


class RefPageCache:
    """Same frame allocation (unused frames in order, then a LIFO free list) and
    the same CLOCK / LRU / FIFO victim choice as pcache.c."""

    def __init__(self, capacity: int, eviction: str):
        self.capacity = capacity
        self.eviction = eviction
        self.frames = [RefPage() for _ in range(capacity)]
        self.index: dict[int, int] = {}
        self.free: list[int] = []
        self.next_unused = 0
        self.hand = 0
        self.order: OrderedDict[int, None] = OrderedDict()   # LRU/FIFO: first = tail
        self.npinned = 0

    def find(self, key: int) -> int | None:
        return self.index.get(key)

    def lookup(self, key: int) -> int | None:
        f = self.index.get(key)
        if f is None:
            return None
        if self.eviction == "clock":
            self.frames[f].ref = True
        elif self.eviction == "lru":
            self.order.move_to_end(f)
        return f

    def _victim(self) -> int | None:
        if self.npinned >= len(self.index):
            return None
        if self.eviction == "clock":
            for _ in range(2 * self.capacity + 1):
                f = self.hand
                self.hand = 0 if self.hand + 1 == self.capacity else self.hand + 1
                p = self.frames[f]
                if not p.valid or p.pins:
                    continue
                if p.ref:
                    p.ref = False
                    continue
                return f
            return None
        for f in self.order:
            if not self.frames[f].pins:
                return f
        return None

    def insert(self, key: int, dev: int, version: int) -> tuple[int, RefPage | None]:
        """(frame, evicted page or None); raises RuntimeError when all frames are pinned."""
        assert self.capacity > 0 and key not in self.index
        victim = None
        if self.free:
            f = self.free.pop()
        elif self.next_unused < self.capacity:
            f = self.next_unused
            self.next_unused += 1
        else:
            f = self._victim()
            if f is None:
                raise RuntimeError("all frames pinned")
            victim = self.frames[f]
            del self.index[victim.key]
            if self.eviction != "clock":
                del self.order[f]
        p = RefPage()
        p.key, p.version, p.dev, p.valid = key, version & 0xFFFFFFFF, dev, True
        self.frames[f] = p
        if self.eviction != "clock":
            self.order[f] = None
        self.index[key] = f
        return f, victim

    def remove(self, key: int) -> RefPage:
        f = self.index.pop(key)
        p = self.frames[f]
        assert not p.pins
        if self.eviction != "clock":
            del self.order[f]
        self.frames[f] = RefPage()
        self.free.append(f)
        return p

    def pin(self, key: int, delta: int) -> None:
        p = self.frames[self.index[key]]
        new = p.pins + delta
        assert new >= 0
        if p.pins == 0 and new > 0:
            self.npinned += 1
        if p.pins > 0 and new == 0:
            self.npinned -= 1
        p.pins = new


class RefTouch:
    WAYS = 4

    def __init__(self, entries: int):
        nsets = 1
        while nsets * self.WAYS < entries and nsets < (1 << 28):
            nsets <<= 1
        self.nsets = nsets
        self.sets: dict[int, list[list[int]]] = {}   # set -> WAYS x [key+1, count]

    def _set(self, key: int) -> list[list[int]]:
        i = mix64(key) & (self.nsets - 1)
        s = self.sets.get(i)
        if s is None:
            s = self.sets[i] = [[0, 0] for _ in range(self.WAYS)]
        return s

    def bump(self, key: int) -> int:
        s = self._set(key)
        for w in s:
            if w[0] == key + 1:
                w[1] = min(w[1] + 1, 0xFFFFFFFF)
                return w[1]
        victim = next((i for i, w in enumerate(s) if w[0] == 0), None)
        if victim is None:
            victim = 0
            for i in range(1, self.WAYS):
                if s[i][1] < s[victim][1]:
                    victim = i
        s[victim] = [key + 1, 1]
        return 1

    def forget(self, key: int) -> None:
        for w in self._set(key):
            if w[0] == key + 1:
                w[0] = w[1] = 0

    def forget_prefix(self, hi32: int) -> None:
        for s in self.sets.values():
            for w in s:
                if w[0] and ((w[0] - 1) >> 32) == hi32:
                    w[0] = w[1] = 0


# ---- shared state (seg.c) --------------------------------------------------------------

class RefSegment:
    """Per (element, host) slots and per host counters, shared by RefEngines."""

    def __init__(self, params: dict):
        self.nhosts = len(params["hosts"])
        self.ndevices = len(params["devices"])
        self.nlinks = len(params.get("links", []))
        nres = self.nlinks + self.ndevices
        self.slots = [[{"last_virtual": 0, "rate": 0.0, "wrate": 0.0, "bytes_total": 0}
                       for _ in range(self.nhosts)] for _ in range(nres)]
        # Lockstep: per (element, host) the snapshots [(valid_from, last, rate, wrate)],
        # ascending valid_from, and the hosts that are members of the group.
        self.snaps: list[list[list[tuple]]] = [[[] for _ in range(self.nhosts)]
                                               for _ in range(nres)]
        self.members: set[int] = set()
        # Each host's local DRAM (seg.c "host DRAM"): one slot per engine attached as it.
        self.dram = [[{"owner": None, "last_virtual": 0, "rate": 0.0, "bytes_total": 0}
                      for _ in range(DRAM_SLOTS)] for _ in range(self.nhosts)]
        self.dev = [[dict.fromkeys(COUNTERS, 0) for _ in range(self.ndevices)]
                    for _ in range(self.nhosts)]
        self.host = [{"calls": 0, "injected_ns": 0, "virtual_time_ns": 0,
                      "tier_pages": [0] * 4, "tier_bytes": [0] * 4} for _ in range(self.nhosts)]
        self.hist = [RefHistogram() for _ in range(self.nhosts)]
        # Fault state (seg.c "Faults"); every change bumps gen.
        self.gen = 0
        self.dev_state = ["up"] * self.ndevices
        self.stall = [(0.0, 0)] * self.ndevices
        self.poison: list[list[tuple[int, int]]] = [[] for _ in range(self.ndevices)]
        self.link_state = ["up"] * self.nlinks
        self.link_factor = [1.0] * self.nlinks

    def set_device_state(self, dev: int, state: str) -> None:
        self.dev_state[dev] = state
        self.gen += 1

    def set_device_slow(self, dev: int, stall_p: float, stall_ns: int) -> None:
        self.stall[dev] = (float(stall_p), int(stall_ns))
        self.gen += 1

    def set_link(self, link: int, state: str = "up", factor: float = 1.0) -> None:
        self.link_state[link], self.link_factor[link] = state, float(factor)
        self.gen += 1

    def poison_add(self, dev: int, offset: int, nbytes: int) -> None:
        lo, hi, keep = offset, offset + nbytes, []
        for f, e in self.poison[dev]:
            if e < lo or f > hi:
                keep.append((f, e))
            else:
                lo, hi = min(lo, f), max(hi, e)
        if len(keep) >= POISON_MAX:
            raise RuntimeError("poison table full")
        self.poison[dev] = keep + [(lo, hi)]
        self.gen += 1

    def poison_clear(self, dev: int, offset: int, nbytes: int) -> None:
        lo, hi, out, changed = offset, offset + nbytes, [], False
        for f, e in self.poison[dev]:
            if e <= lo or f >= hi:
                out.append((f, e))
                continue
            changed = True
            if f < lo:
                out.append((f, lo))
            if e > hi:
                out.append((hi, e))
        if len(out) > POISON_MAX:
            return                             # a full table refuses the split
        if changed:
            self.poison[dev] = out
            self.gen += 1


class RefFault(Exception):
    """An access refused by a fault: ``code`` is the FAB_E* name ("EUNAVAIL", "EFAILED",
    "ELINKDOWN", "EPOISON"), with the device, link and region offset it met
    (fab_engine_last_fault)."""

    def __init__(self, code: str, dev: int, link: int | None = None, offset: int | None = None):
        super().__init__(code, dev, link, offset)
        self.code, self.dev, self.link, self.offset = code, dev, link, offset


class RefVersions:
    """The coherence file of a shared region: version[p] and holders[p] (uint32)."""

    def __init__(self, npages: int):
        self.version = [0] * npages
        self.holders = [0] * npages


class _Region:
    stream_next = 0   # 1 + where the last access ended (engine.c stream_step)

    def __init__(self, rid, npages, devs, stripe, policy, promote_after, share, versions,
                 dev_off=None):
        self.id, self.npages, self.devs, self.stripe = rid, npages, devs, stripe
        self.dev_off = dev_off
        self.policy, self.promote_after, self.share, self.versions = (policy, promote_after,
                                                                      share, versions)


class _Acc:
    __slots__ = ("c", "hit_bytes", "wbytes", "reads", "writes", "bis")   # reads.. in lines

    def __init__(self):
        self.c = dict.fromkeys(COUNTERS, 0)
        self.hit_bytes = self.wbytes = self.reads = self.writes = self.bis = 0


class _Res:
    def __init__(self):
        self.bandwidth = 0.0
        self.base_read = self.base_write = 0.0
        self.curve_read: list | None = None
        self.curve_write: list | None = None
        self.win_start = 0
        self.win_bytes = self.win_wbytes = 0
        self.my_rate = self.my_wrate = 0.0
        self.mix_r = self.mix_w = 0.0
        self.call_bytes = self.call_wbytes = 0
        self.load = self.load_w = 0.0
        self.others = self.others_w = 0.0
        self.read_frac = 1.0
        self.cap = 0.0
        self.share = 0.0
        self.is_dev = False
        self.mix: list[tuple[float, list]] = []   # devices: (read_pct, points) ascending


def _nearest(curve: dict | None, pct: float) -> list | None:
    if not curve:
        return None
    best, best_d = None, 0.0
    for p, pts in zip(curve["read_pct"], curve["points"]):
        d = abs(float(p) - pct)
        if best is None or d < best_d:
            best, best_d = [(float(b), float(lat)) for b, lat in pts], d
    return best


class RefEngine:
    """The engine of one host, in Python.  Same constructor shape as fabric.engine.Engine,
    plus ``segment`` (a RefSegment shared by the hosts of one emulated cluster)."""

    def __init__(self, params: dict, host: str, *, mode: str = "virtual", seed: int = 0,
                 eviction: str = "clock", segment: RefSegment | None = None,
                 lockstep_ns: int = 0):
        if mode not in ("virtual", "off"):
            raise ValueError("the reference models virtual and off modes only")
        if lockstep_ns and mode != "virtual":
            raise ValueError("lockstep needs virtual mode")
        self.lsq = int(lockstep_ns)
        self.ls_dirty: dict[int, None] = {}
        self.params = params
        self.mode = mode
        names = [h["name"] for h in params["hosts"]]
        self.hi = names.index(host)
        h = params["hosts"][self.hi]
        knobs = dict(ENGINE_DEFAULTS, **(params.get("engine") or {}))
        self.page = int(params.get("page_size_bytes", 4096))
        self.window = int(knobs["mlp_lines"]) * int(h.get("threads", knobs["threads"]))
        self.stream = False
        self.qmax = float(knobs["queue_max_factor"])
        self.rate_window = int(knobs["rate_window_ns"])
        self.active_window = int(knobs["active_window_ns"])
        self.local_ns = float(h.get("local_dram_ns", 90.0))
        self.local_bw = float(h.get("local_bandwidth_gbps", 116.0))
        cache_pages = min(int(h.get("dram_cache_bytes", 0)) // self.page, (1 << 30) - 1)
        self.pc = RefPageCache(cache_pages, eviction)
        self.touch = RefTouch(max(1024, min(2 * cache_pages, 1 << 22)))
        self.seg = segment or RefSegment(params)
        self.nl = len(params.get("links", []))
        self.nd = len(params["devices"])
        self.host_bit = 1 << (self.hi % 32)
        unit = 64.0   # QUEUE_UNIT_BYTES in engine.c
        self.res = [_Res() for _ in range(self.nl + self.nd)]
        # This host's DRAM (engine.c "host DRAM"): res[nres] in C.
        self.dram = _Res()
        self.dram.bandwidth = self.local_bw
        self.dram.curve_read = list(host_dram_points(self.local_ns, self.local_bw,
                                                     h.get("dram_curve") or ""))
        self.dram_excess = 0.0
        self.dram_slot = next((i for i, sl in enumerate(self.seg.dram[self.hi])
                               if sl["owner"] is None), None)
        if self.dram_slot is not None:
            sl = self.seg.dram[self.hi][self.dram_slot]
            sl.update(owner=self, last_virtual=0, rate=0.0)
        for i, link in enumerate(params.get("links", [])):
            x = self.res[i]
            x.bandwidth = float(link["bandwidth_gbps"])
            x.base_read = x.base_write = float(link.get("latency_ns", 0.0)) + unit / x.bandwidth
            x.curve_read = _nearest(link.get("curve"), 100.0)
            x.curve_write = _nearest(link.get("curve"), 0.0)
        self.devs = []
        self.link_lat0 = [float(link.get("latency_ns", 0.0)) for link in params.get("links", [])]
        self.link_bw0 = [float(link["bandwidth_gbps"]) for link in params.get("links", [])]
        for j, d in enumerate(params["devices"]):
            path = params["paths"][self.hi][j]
            x = self.res[self.nl + j]
            x.bandwidth = float(d["bandwidth_gbps"])
            x.base_read = float(d["read_ns"]) + unit / x.bandwidth
            x.base_write = float(d["write_ns"]) + unit / x.bandwidth
            x.curve_read = _nearest(d.get("curve"), 100.0)
            x.curve_write = _nearest(d.get("curve"), 0.0)
            x.is_dev = True
            c = d.get("curve")
            if c:
                for pct, pts in zip(c["read_pct"], c["points"]):
                    if any(q == float(pct) for q, _ in x.mix):
                        continue
                    x.mix.append((float(pct), [(float(b), float(lat)) for b, lat in pts]))
                x.mix.sort(key=lambda m: m[0])
            tier = TIERS.index(path.get("tier", "far"))
            self.devs.append({"jitter": d.get("jitter") or {"kind": "none"},
                              "window": int(d.get("window_lines", 0)),
                              "lat_r": float(path["latency_read_ns"]),
                              "lat_w": float(path["latency_write_ns"]),
                              "bw": float(path["bandwidth_gbps"]),
                              "res": list(path.get("links", [])) + [self.nl + j],
                              "tier": tier, "hit_tier": 0 if tier == 0 else 1,
                              "links": list(path.get("links", [])),
                              "path0": (float(path["latency_read_ns"]),
                                        float(path["latency_write_ns"]),
                                        float(path["bandwidth_gbps"]))})
        self.rng = Rng((seed & MASK64) ^ mix64(self.hi + 0x51ED270B27A9F3C1))
        self.vclock = 0
        self.regions: dict[int, _Region] = {}
        self.acc: dict[int, _Acc] = {}       # insertion order = first-touch order
        self.tres: dict[int, None] = {}
        self.fgen = None
        self._refresh()
        if self.lsq:
            self.seg.members.add(self.hi)

    # -- faults (engine.c faults_refresh / faults_check) -----------------------------
    def _refresh(self) -> None:
        seg = self.seg
        any_fault = False
        for l in range(self.nl):
            k = seg.link_factor[l]
            any_fault |= seg.link_state[l] != "up"
            x = self.res[l]
            x.bandwidth = self.link_bw0[l] / k
            x.base_read = x.base_write = self.link_lat0[l] * k + 64.0 / x.bandwidth
        for d in range(self.nd):
            any_fault |= seg.dev_state[d] != "up" or bool(seg.poison[d])
            v = self.devs[d]
            lr, lw, bw = v["path0"]
            for l in v["links"]:
                k = seg.link_factor[l]
                if k == 1.0:
                    continue
                extra = self.link_lat0[l] * (k - 1.0)
                lr += extra
                lw += extra
                b = self.link_bw0[l] / k
                if b < bw:
                    bw = b
            v["lat_r"], v["lat_w"], v["bw"] = lr, lw, bw
        self.fault_any = any_fault
        self.fgen = seg.gen

    def _check_faults(self, r: "_Region", offset: int, nbytes: int, write: bool) -> None:
        seg, ps, sp = self.seg, self.page, r.stripe
        end = offset + nbytes
        first, last = offset // ps, (end - 1) // ps
        s0, s1 = first // sp, last // sp
        nd = len(r.devs)
        poisoned = False
        for k in range(min(s1 - s0 + 1, nd)):
            d = r.devs[(s0 + k) % nd]
            if seg.dev_state[d] == "failed":
                raise RefFault("EFAILED", d)
            if seg.dev_state[d] == "unavailable":
                raise RefFault("EUNAVAIL", d)
            for l in self.devs[d]["links"]:
                if seg.link_state[l] == "cut":
                    raise RefFault("ELINKDOWN", d, l)
            poisoned |= bool(seg.poison[d])
        if not poisoned or r.dev_off is None:
            return
        for st in range(s0, s1 + 1):
            lo, hi = max(st * sp, first), min(st * sp + sp - 1, last)
            i = st % nd
            d = r.devs[i]
            table = list(seg.poison[d])
            if not table:
                continue
            p0 = st * sp
            base = r.dev_off[i] + (st // nd) * sp * ps
            if not write:
                a, b = base + (lo - p0) * ps, base + (hi - p0 + 1) * ps
                hits = [lo if f <= a else p0 + (f - base) // ps for f, e in table
                        if not (e <= a or f >= b)]
                if hits:
                    raise RefFault("EPOISON", d, None, max(min(hits) * ps, offset))
                continue
            flo = lo if lo * ps >= offset else lo + 1
            fend = hi + 1 if (hi + 1) * ps <= end else hi
            if flo >= fend:
                continue
            a, b = base + (flo - p0) * ps, base + (fend - p0) * ps
            if any(not (e <= a or f >= b) for f, e in table):
                seg.poison_clear(d, a, b - a)

    # -- regions ----------------------------------------------------------------
    def register_region(self, region_id: int, *, npages: int, device_indices: list[int],
                        stripe_pages: int, policy: str = "cache", promote_after: int = 2,
                        share: str = "private", versions: RefVersions | None = None,
                        device_offsets: list[int] | None = None) -> None:
        if share != "private" and versions is None:
            raise ValueError("shared regions need a RefVersions")
        self.regions[region_id] = _Region(region_id, npages, list(device_indices), stripe_pages,
                                          policy, promote_after, share,
                                          versions if share != "private" else None,
                                          list(device_offsets) if device_offsets else None)

    def unregister_region(self, region_id: int) -> int:
        """Drop the region's pages (dirty ones written back) and price that.  As in
        fab_engine_region_remove, the write-backs are priced device by device in
        ascending device index, whatever order the pages are found in."""
        for f in range(self.pc.capacity):
            pg = self.pc.frames[f]
            if not pg.valid or (pg.key >> 32) != region_id:
                continue
            old = self.pc.remove(pg.key)
            if old.dirty:
                a = self._acc(old.dev)
                a.c["writebacks"] += 1
                a.writes += _lines(self.page)
                a.wbytes += self.page
                a.c["far_bytes"] += self.page
        self.acc = dict(sorted(self.acc.items()))
        if self.regions[region_id].policy == "promote":
            self.touch.forget_prefix(region_id)
        self.stream = False
        t0 = self.vclock
        charge = self._settle(False)
        self._ls_moved(t0)
        del self.regions[region_id]
        return charge

    # -- access -------------------------------------------------------------------
    def _acc(self, dev: int) -> _Acc:
        a = self.acc.get(dev)
        if a is None:
            a = self.acc[dev] = _Acc()
        return a

    def _write_cached(self, r: _Region, p: int, pg: RefPage, a: _Acc) -> None:
        pg.dirty = True
        if r.versions is None:
            pg.version = (pg.version + 1) & 0xFFFFFFFF
            return
        r.versions.version[p] = (r.versions.version[p] + 1) & 0xFFFFFFFF
        pg.version = r.versions.version[p]
        if r.share == "coherent":
            others = r.versions.holders[p] & ~self.host_bit
            r.versions.holders[p] = self.host_bit
            if others:
                a.bis += 1
                a.c["back_invalidations"] += 1

    def _evict(self, victim: RefPage) -> None:
        v = self._acc(victim.dev)
        v.c["evictions"] += 1
        if victim.dirty:
            v.c["writebacks"] += 1
            v.writes += _lines(self.page)
            v.wbytes += self.page
            v.c["far_bytes"] += self.page

    def _far_direct(self, r: _Region, p: int, b: int, write: bool, a: _Acc) -> None:
        a.c["misses"] += 1
        a.c["far_bytes"] += b
        if not write:
            a.reads += _lines(b)
            return
        a.writes += _lines(b)
        a.wbytes += b
        if r.versions is None:
            return
        r.versions.version[p] = (r.versions.version[p] + 1) & 0xFFFFFFFF
        if r.share == "coherent":
            others = r.versions.holders[p] & ~self.host_bit
            r.versions.holders[p] = 0
            if others:
                a.bis += 1
                a.c["back_invalidations"] += 1

    def access(self, region_id: int, offset_bytes: int, nbytes: int, write: bool) -> int:
        r = self.regions[region_id]
        ps = self.page
        size = r.npages * ps
        if offset_bytes < 0 or nbytes < 0 or offset_bytes + nbytes > size:
            raise ValueError("range outside the region")
        if nbytes == 0:
            return 0
        if self.seg.gen != self.fgen:
            self._refresh()
        if self.fault_any:
            self._check_faults(r, offset_bytes, nbytes, write)
        first, last = offset_bytes // ps, (offset_bytes + nbytes - 1) // ps
        caches = r.policy != "direct" and self.pc.capacity > 0
        if caches and self.pc.npinned == self.pc.capacity:
            if any((region_id << 32) | p not in self.pc.index for p in range(first, last + 1)):
                raise RuntimeError("all frames pinned")
        self.stream = r.stream_next == offset_bytes + 1
        r.stream_next = offset_bytes + nbytes + 1
        end = offset_bytes + nbytes
        for p in range(first, last + 1):
            b = min((p + 1) * ps, end) - max(p * ps, offset_bytes)
            dev = r.devs[(p // r.stripe) % len(r.devs)]
            a = self._acc(dev)
            a.c["accesses"] += 1
            a.c["bytes"] += b
            if not caches:
                self._far_direct(r, p, b, write, a)
                continue
            key = (region_id << 32) | p
            f = self.pc.lookup(key)
            if f is not None:
                pg = self.pc.frames[f]
                if r.versions is not None and pg.version != r.versions.version[p]:
                    a.c["invalidations"] += 1
                    a.c["misses"] += 1
                    a.reads += _lines(ps)
                    a.c["far_bytes"] += ps
                    pg.version = r.versions.version[p]
                    if r.share == "coherent":
                        r.versions.holders[p] |= self.host_bit
                else:
                    a.c["hits"] += 1
                    a.hit_bytes += b
                if write:
                    self._write_cached(r, p, pg, a)
                continue
            if r.policy == "promote":
                if self.touch.bump(key) < r.promote_after:
                    self._far_direct(r, p, b, write, a)
                    continue
                self.touch.forget(key)
                a.c["promotions"] += 1
            a.c["misses"] += 1
            a.reads += _lines(ps)
            a.c["far_bytes"] += ps
            version = r.versions.version[p] if r.versions is not None else 0
            f, victim = self.pc.insert(key, dev, version)
            if victim is not None:
                self._evict(victim)
            if r.share == "coherent":
                r.versions.holders[p] |= self.host_bit
            if write:
                self._write_cached(r, p, self.pc.frames[f], a)
        t0 = self.vclock
        charge = self._settle(True)
        self._ls_moved(t0)
        return charge

    def advance(self, ns: int) -> None:
        t0 = self.vclock
        self.vclock += ns
        self.seg.host[self.hi]["virtual_time_ns"] = self.vclock
        self._ls_moved(t0)

    # -- lockstep (csrc/lockstep.c) --------------------------------------------------
    def _ls_moved(self, t0: int) -> None:
        """After a move that started at t0: snapshot the changed slots, valid from the
        quantum after t0's, when the clock left t0's quantum."""
        if not self.lsq or self.vclock // self.lsq == t0 // self.lsq:
            return
        valid_from = t0 // self.lsq + 1
        for r in self.ls_dirty:
            s = self.seg.slots[r][self.hi]
            hist = self.seg.snaps[r][self.hi]
            snap = (valid_from, s["last_virtual"], s["rate"], s["wrate"])
            if hist and hist[-1][0] == valid_from:
                hist[-1] = snap
            else:
                hist.append(snap)
        self.ls_dirty.clear()

    def _slot_view(self, r: int, h: int) -> tuple[int, float, float]:
        """(last_virtual, rate, wrate) of host h's slot of element r as this host reads it."""
        s = self.seg.slots[r][h]
        if not self.lsq or h not in self.seg.members:
            return s["last_virtual"], s["rate"], s["wrate"]
        q = self.vclock // self.lsq
        best = None
        for snap in self.seg.snaps[r][h]:
            if snap[0] <= q:
                best = snap
        return (0, 0.0, 0.0) if best is None else best[1:]

    # -- pricing (engine.c settle) ------------------------------------------------------
    def _close_window(self, x: "_Res", now: int) -> bool:
        """engine.c res_roll: close x's rate window if it is rate_window old."""
        if now < x.win_start or now - x.win_start < self.rate_window:
            return False
        x.my_rate = float(x.win_bytes) / float(now - x.win_start)
        x.my_wrate = float(x.win_wbytes) / float(now - x.win_start)
        x.win_start = now
        x.win_bytes = x.win_wbytes = 0
        return True

    def _roll(self, r: int, now: int) -> None:
        x = self.res[r]
        if self._close_window(x, now):
            self.seg.slots[r][self.hi]["rate"] = x.my_rate
            self.seg.slots[r][self.hi]["wrate"] = x.my_wrate

    def _roll_dram(self, now: int) -> None:
        """engine.c res_roll for this host's DRAM."""
        if self._close_window(self.dram, now) and self.dram_slot is not None:
            self.seg.dram[self.hi][self.dram_slot]["rate"] = self.dram.my_rate

    def _load_dram(self, now: int) -> None:
        """engine.c dram_load: the other engines of this host, our share, the rise."""
        x = self.dram
        others, k = 0.0, 1
        for i, sl in enumerate(self.seg.dram[self.hi]):
            if i == self.dram_slot or sl["owner"] is None:
                continue
            last = sl["last_virtual"]
            if self.mode != "virtual" or last == 0 or now - (last - 1) >= self.active_window:
                continue
            others += sl["rate"]
            k += 1
        cap = x.bandwidth
        fair, left = cap / float(k), cap - others
        x.share = left if left > fair else fair
        x.cap = cap
        x.others = others
        x.load = others + x.my_rate
        c = x.curve_read
        self.dram_excess = curve_ns(c, x.load) - c[0][1]

    def local_dram(self) -> dict:
        """Engine.local_dram: the hit latency at the load now, our share, our slot."""
        self._load_dram(self.vclock)
        return {"latency_ns": self.local_ns + self.dram_excess, "share_gbps": self.dram.share,
                "slot": self.dram_slot}

    def close(self) -> None:
        """Give back this engine's DRAM slot (fab_engine_destroy)."""
        if self.dram_slot is not None:
            self.seg.dram[self.hi][self.dram_slot].update(owner=None, last_virtual=0, rate=0.0)
            self.dram_slot = None

    @staticmethod
    def _bracket(x: _Res, pct: float) -> tuple[list, list, float, float, float]:
        """engine.c mix_bracket: the sets around pct (lo, hi), the weight of hi, and
        the saturation bandwidths of lo and hi."""
        i = 0
        while i < len(x.mix) and x.mix[i][0] < pct:
            i += 1
        if i == 0 or i == len(x.mix):
            m = x.mix[0] if i == 0 else x.mix[-1]
            return m[1], m[1], 0.0, m[1][-1][0], m[1][-1][0]
        (p0, a), (p1, b) = x.mix[i - 1], x.mix[i]
        return a, b, (pct - p0) / (p1 - p0), a[-1][0], b[-1][0]

    def _load(self, r: int, now: int) -> None:
        x = self.res[r]
        others, others_w, k = 0.0, 0.0, 1
        for h in range(self.seg.nhosts):
            if h == self.hi:
                continue
            last, rate, wrate = self._slot_view(r, h)
            if self.mode != "virtual" or last == 0 or now - (last - 1) >= self.active_window:
                continue
            if wrate > rate:
                wrate = rate
            others += rate
            others_w += wrate
            k += 1
        mine_f = x.mix_r / (x.mix_r + x.mix_w) if x.mix_r + x.mix_w > 0.0 else 1.0
        tot = others + x.my_rate
        f = (others - others_w + mine_f * x.my_rate) / tot if tot > 0.0 else mine_f
        bw = x.bandwidth
        cap = bw
        if not x.is_dev:
            busy = f if f > 1.0 - f else 1.0 - f
            cap = bw / busy
        elif len(x.mix) >= 2:
            _a, _b, t, s0, s1 = self._bracket(x, 100.0 * f)
            top = x.mix[-1][1][-1][0]
            cap = bw * (s0 + (s1 - s0) * t) / top
        fair, left = cap / float(k), cap - others
        x.share = left if left > fair else fair
        x.read_frac = f
        x.cap = cap
        x.others, x.others_w = others, others_w
        x.load = others + x.my_rate
        x.load_w = others_w + x.my_wrate

    def _excess(self, r: int, write: bool, others_only: bool = False) -> float:
        x = self.res[r]
        load = x.others if others_only else x.load
        load_w = x.others_w if others_only else x.load_w
        if x.is_dev:
            if not x.mix:
                return queue_excess_ns(x.base_write if write else x.base_read, load / x.cap,
                                       self.qmax)
            a, b, t, _s0, _s1 = self._bracket(x, 100.0 * x.read_frac)
            x0 = curve_ns(a, load) - a[0][1]
            x1 = curve_ns(b, load) - b[0][1]
            return x0 + (x1 - x0) * t
        dload = load_w if write else load - load_w
        c = x.curve_write if write else x.curve_read
        if c is not None:
            return curve_ns(c, dload) - c[0][1]
        return queue_excess_ns(x.base_write if write else x.base_read, dload / x.bandwidth,
                               self.qmax)

    def _loaded(self, d: int, write: bool, others_only: bool = False) -> float:
        v = self.devs[d]
        lat = v["lat_w"] if write else v["lat_r"]
        for r in v["res"]:
            lat += self._excess(r, write, others_only)
        return lat

    def loaded_latency_ns(self, device_index: int, write: bool = False) -> float:
        if self.seg.gen != self.fgen:
            self._refresh()
        for r in self.devs[device_index]["res"]:
            self._load(r, self.vclock)
        return self._loaded(device_index, write)

    def _settle(self, is_access: bool) -> int:
        now = self.vclock
        hits = hit_bytes = far_bytes = 0
        for d, a in self.acc.items():
            hits += a.c["hits"]
            hit_bytes += a.hit_bytes
            far_bytes += a.c["far_bytes"]
            if a.reads + a.writes + a.bis == 0:
                continue
            for r in self.devs[d]["res"]:
                self.tres.setdefault(r, None)
                self.res[r].call_bytes += a.c["far_bytes"]
                self.res[r].call_wbytes += a.wbytes
        for r in self.tres:                  # engine.c mix_touched
            x = self.res[r]
            x.mix_r = x.mix_r * 0.875 + float(x.call_bytes - x.call_wbytes)
            x.mix_w = x.mix_w * 0.875 + float(x.call_wbytes)
        for r in self.tres:
            self._roll(r, now)
            self._load(r, now)
        through_dram = bool(hits or far_bytes)
        if through_dram:                     # engine.c load_dram
            self._roll_dram(now)
            self._load_dram(now)
        hit_ns = 0.0
        if hits:
            hit_ns = (self.local_ns + self.dram_excess) + float(hit_bytes) / self.dram.share
        first_max = rest_max = xfer = 0.0
        for d, a in self.acc.items():
            v = self.devs[d]
            mine = 0.0
            if a.c["hits"]:
                mine = (self.local_ns + self.dram_excess) + float(a.hit_bytes) / self.dram.share
            if a.reads + a.writes + a.bis:
                w = v["window"] or self.window
                nr, nb, nw = -(-a.reads // w), -(-a.bis // w), -(-a.writes // w)
                lat = own = 0.0
                if a.reads + a.bis:
                    lr = self._loaded(d, False, True)
                    own = self._loaded(d, False) - lr
                    if a.reads:
                        lat += rounds_ns(v["jitter"], self.rng, nr, lr)
                    if a.bis:
                        lat += rounds_ns(v["jitter"], self.rng, nb, lr)
                if a.writes:
                    lw = self._loaded(d, True, True)
                    if not a.reads + a.bis:
                        own = self._loaded(d, True) - lw
                    lat += rounds_ns(v["jitter"], self.rng, nw, lw)
                sp_, sns = self.seg.stall[d]
                if sp_ > 0.0:
                    lat += stalls_ns(self.rng, nr + nb + nw, sp_, float(sns))
                first = lat / float(nr + nb + nw)
                rest = lat - first
                first += own
                if self.stream:
                    first = 0.0
                if first > first_max:
                    first_max = first
                if rest > rest_max:
                    rest_max = rest
                own = rest
                fb = a.c["far_bytes"]
                if fb:
                    eff = self.dram.share
                    for r in v["res"]:
                        if self.res[r].share < eff:
                            eff = self.res[r].share
                    te = float(fb) / eff
                    if te > own:
                        own = te
                mine += first + own
            if not mine < 1e18:
                mine = 1e18
            a.c["injected_ns"] = int(mine + 0.5)
        for r in self.tres:
            x = self.res[r]
            if x.call_bytes:
                t = float(x.call_bytes) / x.share
                if t > xfer:
                    xfer = t
        if far_bytes:
            t = float(far_bytes) / self.dram.share
            if t > xfer:
                xfer = t
        total = hit_ns + first_max + (rest_max if rest_max > xfer else xfer)
        if not total < 1e18:             # MAX_CHARGE_NS
            total = 1e18
        charge = int(total + 0.5)
        self.vclock += charge
        for r in self.tres:
            x = self.res[r]
            s = self.seg.slots[r][self.hi]
            x.win_bytes += x.call_bytes
            x.win_wbytes += x.call_wbytes
            s["bytes_total"] += x.call_bytes
            s["last_virtual"] = self.vclock + 1
            if self.lsq:
                self.ls_dirty[r] = None
            x.call_bytes = x.call_wbytes = 0
        self.tres.clear()
        if through_dram:                     # engine.c publish_dram
            self.dram.win_bytes += hit_bytes + far_bytes
            if self.dram_slot is not None:
                sl = self.seg.dram[self.hi][self.dram_slot]
                sl["bytes_total"] += hit_bytes + far_bytes
                sl["last_virtual"] = self.vclock + 1
        host = self.seg.host[self.hi]
        for d, a in self.acc.items():
            ctr = self.seg.dev[self.hi][d]
            for k, n in a.c.items():
                ctr[k] += n
            hp, fp = a.c["hits"], a.c["accesses"] - a.c["hits"]
            ht, ft = self.devs[d]["hit_tier"], self.devs[d]["tier"]
            host["tier_pages"][ht] += hp
            host["tier_bytes"][ht] += a.hit_bytes
            host["tier_pages"][ft] += fp
            host["tier_bytes"][ft] += a.c["bytes"] - a.hit_bytes
        self.acc.clear()
        if is_access:
            host["calls"] += 1
            self.seg.hist[self.hi].record(charge)
        host["injected_ns"] += charge
        host["virtual_time_ns"] = self.vclock
        return charge

    # -- figures ----------------------------------------------------------------------
    @property
    def virtual_time_ns(self) -> int:
        return self.vclock

    def counters(self) -> dict:
        """Per-device counters, host counters and latency figures, shaped like the
        comparable parts of Engine.stats()."""
        host = self.seg.host[self.hi]
        devices = {self.params["devices"][j]["name"]: dict(self.seg.dev[self.hi][j])
                   for j in range(self.nd)}
        h = self.seg.hist[self.hi]
        return {"calls": host["calls"], "injected_ns": host["injected_ns"],
                "virtual_time_ns": self.vclock, "devices": devices,
                "tier_pages": list(host["tier_pages"]), "tier_bytes": list(host["tier_bytes"]),
                "latency": {"count": h.count, "sum_ns": h.sum_ns, "min_ns": h.min_ns or 0,
                            "max_ns": h.max_ns, "p50": h.percentile(50.0),
                            "p90": h.percentile(90.0), "p99": h.percentile(99.0),
                            "p999": h.percentile(99.9)}}

    def page_state(self, region_id: int, page: int) -> dict:
        f = self.pc.find((region_id << 32) | page)
        if f is None:
            return {"resident": False, "dirty": False, "version": 0, "pins": 0}
        p = self.pc.frames[f]
        return {"resident": True, "dirty": p.dirty, "version": p.version, "pins": p.pins}

    def pin(self, region_id: int, first_page: int, npages: int, delta: int) -> None:
        for p in range(first_page, first_page + npages):
            self.pc.pin((region_id << 32) | p, delta)


__all__ = ["RefEngine", "RefSegment", "RefFault", "stalls_ns", "RefVersions", "RefHistogram", "RefPageCache", "Rng",
           "mix64", "bucket_of", "bucket_value", "curve_ns", "queue_excess_ns"]
