"""Wrappers for the engine's C files (hist.c, pcache.c, seg.c, engine.c, calib.c).

The only Python code that touches ``ffi``/``lib`` for the engine.  It turns
the ``params`` dict (``Topology.engine_params()``) into the C structs once,
owns the C handles (``ffi.gc``), and maps negative return codes to typed
exceptions.  Validation of user input happens here, before crossing into C;
the C side checks again and never trusts us.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import constants, errors
from ..topology.curves import host_dram_points
from . import check, ffi, lib, strerror


CachePinned = errors.CachePinned
SharedStateMismatch = errors.SharedStateMismatch


def _enum(names: tuple[str, ...], prefix: str, lib_names: tuple[str, ...] | None = None
          ) -> dict[str, int]:
    """name -> value of the C constants ``prefix + NAME``, checked one-to-one.

    ``names`` (from fabric.constants) must list the C constants of that prefix
    in value order 0, 1, 2, ... and nothing else: a name added on one side only
    fails at import, not as a wrong mode later.  ``lib_names`` overrides the
    upper-cased spelling of the C side when they differ.
    """
    lib_names = lib_names or tuple(n.upper() for n in names)
    out = {}
    for i, (name, cname) in enumerate(zip(names, lib_names)):
        value = getattr(lib, prefix + cname, None)
        if value != i:
            raise ImportError(f"fabric.constants and the C core disagree: {name!r} is "
                              f"{prefix + cname} = {value}, expected {i}")
        out[name] = value
    in_c = sorted(n for n in dir(lib) if n.startswith(prefix))
    if len(in_c) != len(names):
        raise ImportError(f"the C core has {in_c}, fabric.constants lists {list(names)}")
    return out


def _same(name: str, value: int, c_value: int) -> int:
    if value != c_value:
        raise ImportError(f"fabric.constants.{name} = {value} but the C core says {c_value}")
    return value


MODES = _enum(constants.INJECT_MODES, "FAB_MODE_")
EVICTIONS = _enum(constants.EVICTIONS, "FAB_EVICT_")
POLICIES = _enum(constants.POLICIES, "FAB_POLICY_")
SHARES = _enum(constants.SHARE_MODES, "FAB_SHARE_")
LOCKSTEP_STATES = tuple(_enum(constants.LOCKSTEP_STATES, "FAB_LS_"))   # FAB_LS_* order
TIER_NAMES = tuple(_enum(constants.TIERS, "FAB_TIER_"))            # FAB_TIER_* order
#: Tiers a path may have ("cached" only describes a hit).
TIERS = {name: value for name, value in zip(TIER_NAMES, range(len(TIER_NAMES)))
         if name != "cached"}
JITTERS = {"none": lib.FAB_JITTER_NONE, "lognormal": lib.FAB_JITTER_LOGNORMAL,
           "spike": lib.FAB_JITTER_SPIKE}
COUNTERS = tuple(_enum(constants.ENGINE_COUNTERS, "FAB_CTR_"))    # FAB_CTR_* order
HIST_BUCKETS = lib.FAB_HIST_BUCKETS
MAX_PATH_LINKS = _same("MAX_PATH_LINKS", constants.MAX_PATH_LINKS, lib.FAB_PATH_MAX_LINKS)
MAX_REGION_DEVICES = _same("MAX_REGION_DEVICES", constants.MAX_REGION_DEVICES,
                           lib.FAB_REGION_MAX_DEVICES)

#: Engine knobs a params dict may override under the optional "engine" key
#: (name -> (default, kind, lo, hi) in fabric.constants.ENGINE_KNOBS).
ENGINE_DEFAULTS = dict(constants.ENGINE_DEFAULTS)


def _bad(msg: str) -> errors.InvalidArgument:
    return errors.InvalidArgument(f"engine params: {msg}")


def _num(x: Any, what: str, *, positive: bool = False) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        raise _bad(f"{what} must be a finite number, got {x!r}")
    if x < 0 or (positive and x == 0):
        raise _bad(f"{what} must be {'> 0' if positive else '>= 0'}, got {x!r}")
    return float(x)


def _int(x: Any, what: str, lo: int = 0, hi: int = 2**64 - 1) -> int:
    if type(x) is int and lo <= x <= hi:    # the common case, first (bool is not int here)
        return x
    if isinstance(x, bool) or not isinstance(x, (int, np.integer)):
        raise errors.InvalidArgument(f"{what} must be an int, got {x!r}")
    x = int(x)
    if not lo <= x <= hi:
        raise errors.InvalidArgument(f"{what} must be in [{lo}, {hi}], got {x}")
    return x


def dims(params: dict) -> tuple[int, int, int]:
    """(hosts, devices, links) of a params dict, checked."""
    try:
        nh, nd, nl = len(params["hosts"]), len(params["devices"]), len(params.get("links", []))
    except (KeyError, TypeError):
        raise _bad("needs 'hosts' and 'devices' lists") from None
    if nh == 0 or nd == 0:
        raise _bad("needs at least one host and one device")
    if nh > lib.FAB_MAX_HOSTS or nd > lib.FAB_MAX_DEVICES or nl > lib.FAB_MAX_LINKS:
        raise _bad(f"too large: {nh} hosts, {nd} devices, {nl} links (at most "
                   f"{lib.FAB_MAX_HOSTS}, {lib.FAB_MAX_DEVICES}, {lib.FAB_MAX_LINKS})")
    return nh, nd, nl


def _knob(name: str, value: Any) -> int | float:
    """One engine knob, checked against its kind and [lo, hi] in constants.ENGINE_KNOBS."""
    _default, kind, lo, hi = constants.ENGINE_KNOBS[name]
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise _bad(f"engine.{name} must be an int, got {value!r}")
        value = int(value)
    else:
        if (isinstance(value, bool) or not isinstance(value, (int, float, np.integer,
                                                              np.floating))
                or not math.isfinite(value)):
            raise _bad(f"engine.{name} must be a finite number, got {value!r}")
        value = float(value)
    if not lo <= value <= hi:
        raise _bad(f"engine.{name} must be in [{lo}, {hi}], got {value!r}")
    return value


def engine_knobs(params: dict) -> dict:
    """The engine knobs of a params dict: the defaults, overridden by its optional
    "engine" table, each checked for type and range (fabric.constants.ENGINE_KNOBS).
    Raises InvalidArgument naming the knob, or naming the known keys for an unknown one."""
    extra = params.get("engine") or {}
    if not isinstance(extra, dict):
        raise _bad(f"engine must be a table of knobs, got {extra!r}")
    unknown = set(extra) - set(constants.ENGINE_KNOBS)
    if unknown:
        raise _bad(f"unknown engine keys {sorted(unknown)} "
                   f"(known: {', '.join(sorted(constants.ENGINE_KNOBS))})")
    knobs = dict(ENGINE_DEFAULTS)
    knobs.update(extra)
    return {name: _knob(name, value) for name, value in knobs.items()}


def _dram_curve_name(h: dict, hname) -> str:
    """The built-in curve of a host's own DRAM ("" = the default), checked."""
    name = h.get("dram_curve") or ""
    if not isinstance(name, str):
        raise _bad(f"host {hname}: dram_curve must be a curve name, got {name!r}")
    return name


class _Model:
    """The C structs for one host's view of a params dict (kept alive while used)."""

    def __init__(self, params: dict, host_index: int):
        nh, nd, nl = dims(params)
        self.devices = ffi.new("fab_device_params[]", nd)
        self.links = ffi.new("fab_link_params[]", max(nl, 1))
        self.paths = ffi.new("fab_path_params[]", nd)
        path_links: list[int] = []
        curves: list[tuple[int, float, int, int]] = []
        points: list[tuple[float, float]] = []

        def add_curve(res: int, curve: Any, where: str) -> None:
            if curve is None:
                return
            try:
                pcts, sets = list(curve["read_pct"]), list(curve["points"])
            except (KeyError, TypeError):
                raise _bad(f"{where}: curve needs read_pct and points") from None
            if not pcts or len(pcts) != len(sets):
                raise _bad(f"{where}: curve needs one point list per read_pct")
            for pct, pts in zip(pcts, sets):
                _num(pct, f"{where}: curve read_pct")
                if not pts:
                    raise _bad(f"{where}: curve read_pct {pct} has no points")
                first = len(points)
                prev = -1.0
                for p in pts:
                    b = _num(p[0], f"{where}: curve bandwidth_gbps")
                    lat = _num(p[1], f"{where}: curve latency_ns")
                    if b <= prev:
                        raise _bad(f"{where}: curve bandwidth must increase ({prev} then {b})")
                    prev = b
                    points.append((b, lat))
                curves.append((res, float(pct), first, len(pts)))

        for j, d in enumerate(params["devices"]):
            where = f"device {d.get('name', j)}"
            c = self.devices[j]
            c.read_ns = _num(d["read_ns"], f"{where}: read_ns")
            c.write_ns = _num(d["write_ns"], f"{where}: write_ns")
            c.bandwidth_gbps = _num(d["bandwidth_gbps"], f"{where}: bandwidth_gbps", positive=True)
            jit = d.get("jitter") or {"kind": "none"}
            kind = jit.get("kind", "none")
            if kind not in JITTERS:
                raise _bad(f"{where}: jitter kind {kind!r} (known: {', '.join(JITTERS)})")
            c.jitter_kind = JITTERS[kind]
            if kind == "lognormal":
                c.jitter_sigma = _num(jit["sigma"], f"{where}: jitter sigma")
            elif kind == "spike":
                c.jitter_p = _num(jit["p"], f"{where}: jitter p")
                if c.jitter_p > 1:
                    raise _bad(f"{where}: jitter p must be <= 1")
                c.jitter_spike_ns = _num(jit["spike_ns"], f"{where}: jitter spike_ns")
            c.window_lines = _int(d.get("window_lines", 0), f"{where}: window_lines", 0, 1 << 30)
            add_curve(nl + j, d.get("curve"), where)
        for i, link in enumerate(params.get("links", [])):
            where = f"link {link.get('name', i)}"
            self.links[i].latency_ns = _num(link.get("latency_ns", 0.0), f"{where}: latency_ns")
            self.links[i].bandwidth_gbps = _num(link["bandwidth_gbps"], f"{where}: bandwidth_gbps",
                                                positive=True)
            add_curve(i, link.get("curve"), where)
        # This host's own DRAM is element nl + nd (engine.c "host DRAM"): its
        # measured curve (DDR4 unless the host names another) scaled to the host.
        h = params["hosts"][host_index]
        hname = h.get("name", host_index)
        dram_pts = host_dram_points(
            _num(h.get("local_dram_ns", 90.0), f"host {hname}: local_dram_ns"),
            _num(h.get("local_bandwidth_gbps", 116.0), f"host {hname}: local_bandwidth_gbps",
                 positive=True), _dram_curve_name(h, hname))
        add_curve(nl + nd, {"read_pct": [100], "points": [dram_pts]}, f"host {hname}: local DRAM")
        try:
            row = params["paths"][host_index]
        except (KeyError, IndexError, TypeError):
            raise _bad(f"paths has no row for host {host_index}") from None
        if len(row) != nd:
            raise _bad(f"paths[{host_index}] has {len(row)} entries for {nd} devices")
        for j, p in enumerate(row):
            where = f"path host {host_index} -> device {j}"
            c = self.paths[j]
            c.latency_read_ns = _num(p["latency_read_ns"], f"{where}: latency_read_ns")
            c.latency_write_ns = _num(p["latency_write_ns"], f"{where}: latency_write_ns")
            c.bandwidth_gbps = _num(p["bandwidth_gbps"], f"{where}: bandwidth_gbps", positive=True)
            tier = p.get("tier", "far")
            if tier not in TIERS:
                raise _bad(f"{where}: tier {tier!r} (known: {', '.join(TIERS)})")
            c.tier = TIERS[tier]
            links = list(p.get("links", []))
            if len(links) > MAX_PATH_LINKS:
                raise _bad(f"{where}: more than {MAX_PATH_LINKS} links")
            for li in links:
                if not isinstance(li, int) or not 0 <= li < nl:
                    raise _bad(f"{where}: link index {li!r} out of range (0..{nl - 1})")
            c.first_link = len(path_links)
            c.nlinks = len(links)
            path_links += links
        self.path_links = ffi.new("uint32_t[]", path_links or [0])
        self.curves = ffi.new("fab_curve_params[]", max(len(curves), 1))
        for i, (res, pct, first, n) in enumerate(curves):
            self.curves[i].resource, self.curves[i].read_pct = res, pct
            self.curves[i].first_point, self.curves[i].npoints = first, n
        self.points = ffi.new("fab_curve_point[]", max(len(points), 1))
        for i, (b, lat) in enumerate(points):
            self.points[i].bandwidth_gbps, self.points[i].latency_ns = b, lat
        self.model = ffi.new("fab_engine_model *")
        m = self.model
        m.devices, m.links, m.paths = self.devices, self.links, self.paths
        m.path_links, m.npath_links = self.path_links, len(path_links)
        m.curves, m.ncurves = self.curves, len(curves)
        m.points, m.npoints = self.points, len(points)


def host_index(params: dict, host: str) -> int:
    names = [h.get("name") for h in params["hosts"]]
    try:
        return names.index(host)
    except ValueError:
        raise errors.InvalidArgument(
            f"unknown host {host!r} (the params have: {', '.join(map(str, names))})") from None


# ---- shared segment ---------------------------------------------------------

#: Device and link fault states, as the segment stores them (FAB_DEV_*, FAB_LINK_*).
DEVICE_STATES = {"up": lib.FAB_DEV_UP, "unavailable": lib.FAB_DEV_UNAVAILABLE,
                 "failed": lib.FAB_DEV_FAILED}
DEVICE_STATE_NAMES = {v: k for k, v in DEVICE_STATES.items()}
LINK_STATES = {"up": lib.FAB_LINK_UP, "cut": lib.FAB_LINK_CUT}
POISON_MAX = lib.FAB_POISON_MAX
_FAULT_CODES = frozenset((lib.FAB_EUNAVAIL, lib.FAB_EFAILED, lib.FAB_ELINKDOWN, lib.FAB_EPOISON))

def _group_conflict(seg: "Segment", params: dict, host: str, quantum_ns: int, size: int) -> str:
    """Why joining the lockstep group in ``seg`` failed, in words."""
    members = seg.lockstep_members()
    live = {n: m for n, m in members.items() if m["state"] in ("running", "parked")}
    if host in live:
        return (f"host {host} is already a member (pid {live[host]['pid']}); one engine per "
                f"host takes part")
    who = ", ".join(sorted(live)) or "none"
    return (f"the running group (members: {who}) has another size or quantum, or is full; "
            f"this engine asked for lockstep_hosts={size}, lockstep_ns={quantum_ns} "
            f"(every member must pass the same values)")


def seg_create(path: str, params: dict) -> None:
    nh, nd, nl = dims(params)
    check(lib.fab_seg_create(path.encode(), nh, nd, nl), f"creating shared engine state {path}")


def seg_size_bytes(params: dict) -> int:
    return int(lib.fab_seg_size_bytes(*dims(params)))


class Segment:
    """A mapping of the shared engine segment (read-only unless writable)."""

    def __init__(self, path: str | None, params: dict, writable: bool = False, *, _borrow=None):
        self.params = params
        self.nhosts, self.ndevices, self.nlinks = dims(params)
        self._host_names = [h.get("name", f"#{i}") for i, h in enumerate(params["hosts"])]
        if _borrow is not None:          # the engine's own segment: lives as long as it
            self._owner, self._s = _borrow
            return
        out = ffi.new("fab_seg **")
        check(lib.fab_seg_open(path.encode() if path else ffi.NULL, self.nhosts, self.ndevices,
                                self.nlinks, int(writable), out),
               f"opening shared engine state {path}")
        self._owner = None
        self._s = ffi.gc(out[0], lib.fab_seg_close)

    def host_counters(self, host: int) -> list[int]:
        out = ffi.new("uint64_t[]", lib.FAB_NHCTRS)
        check(lib.fab_seg_host_read(self._s, host, out, lib.FAB_NHCTRS), "reading host counters")
        return list(out)

    def dev_counters(self, host: int, dev: int) -> list[int]:
        out = ffi.new("uint64_t[]", lib.FAB_NCTRS)
        check(lib.fab_seg_dev_read(self._s, host, dev, out, lib.FAB_NCTRS),
               "reading device counters")
        return list(out)

    def hist(self, host: int) -> "Histogram":
        """A snapshot (copy) of the host's latency histogram."""
        h = lib.fab_seg_hist(self._s, host)
        if h == ffi.NULL:
            raise errors.InvalidArgument(f"host index {host} out of range")
        snap = Histogram()
        check(lib.fab_hist_merge(snap._h, h), "copying a histogram")
        return snap

    def lockstep_members(self) -> dict:
        """host name -> {"state" (absent/running/parked/left), "clock_ns", "pid", "waits",
        "wait_ns"}: the current lockstep group as the segment's lockstep block records
        it (waits: the host's lockstep waits that blocked, and the real ns they took)."""
        out = ffi.new("uint64_t[]", 6)
        members = {}
        for i, name in enumerate(self._host_names):
            check(lib.fab_seg_lockstep_host(self._s, i, out, 6), "reading the lockstep block")
            state = LOCKSTEP_STATES[out[1]] if out[1] < len(LOCKSTEP_STATES) else "absent"
            members[name] = {"state": state if out[0] else "absent", "clock_ns": int(out[2]),
                             "pid": int(out[3]), "waits": int(out[4]), "wait_ns": int(out[5])}
        return members

    # -- faults (seg.c "Faults"); the setters need a writable mapping ------------
    def fault_gen(self) -> int:
        """The fault generation: it moves on every change of the fault state."""
        return int(lib.fab_seg_fault_gen(self._s))

    def set_device_state(self, dev: int, state: str) -> None:
        """``state``: "up" | "unavailable" | "failed" (DEVICE_STATES)."""
        if state not in DEVICE_STATES:
            raise errors.InvalidArgument(f"device state must be one of {', '.join(DEVICE_STATES)}, "
                                         f"got {state!r}")
        check(lib.fab_seg_dev_set_state(self._s, _int(dev, "device index"), DEVICE_STATES[state]),
              f"setting the state of device {dev}")

    def set_device_slow(self, dev: int, stall_p: float, stall_ns: int) -> None:
        """A slow device: each latency round stalls ``stall_ns`` with probability ``stall_p``."""
        p = _num(stall_p, "stall probability")
        if p > 1:
            raise errors.InvalidArgument(f"stall probability must be in [0, 1], got {stall_p!r}")
        check(lib.fab_seg_dev_set_slow(self._s, _int(dev, "device index"), p,
                                       _int(stall_ns, "stall_ns", 0, 100_000_000_000)),
              f"setting device {dev} slow")

    def device_state(self, dev: int) -> str:
        """"up" | "unavailable" | "failed" (cheap: no poison table read)."""
        st, p = ffi.new("uint32_t *"), ffi.new("double *")
        ns, npois = ffi.new("uint64_t *"), ffi.new("uint32_t *")
        check(lib.fab_seg_dev_faults(self._s, _int(dev, "device index"), st, p, ns, npois),
              f"reading the state of device {dev}")
        return DEVICE_STATE_NAMES.get(st[0], "failed")

    def device_faults(self, dev: int) -> dict:
        """``{"state", "stall_p", "stall_ns", "poison": [(first, end) byte offsets]}``."""
        st, p = ffi.new("uint32_t *"), ffi.new("double *")
        ns, npois = ffi.new("uint64_t *"), ffi.new("uint32_t *")
        check(lib.fab_seg_dev_faults(self._s, _int(dev, "device index"), st, p, ns, npois),
              f"reading the faults of device {dev}")
        out = ffi.new("uint64_t[]", 2 * lib.FAB_POISON_MAX)
        n = check(lib.fab_seg_poison_read(self._s, dev, out, 2 * lib.FAB_POISON_MAX),
                  f"reading the poison table of device {dev}")
        return {"state": DEVICE_STATE_NAMES[st[0]], "stall_p": p[0], "stall_ns": int(ns[0]),
                "poison": [(int(out[2 * i]), int(out[2 * i + 1])) for i in range(n)]}

    def set_link(self, link: int, state: str = "up", factor: float = 1.0) -> None:
        """``state``: "up" | "cut"; ``factor`` k >= 1 degrades it (latency x k, bandwidth / k)."""
        if state not in LINK_STATES:
            raise errors.InvalidArgument(f"link state must be one of {', '.join(LINK_STATES)}, "
                                         f"got {state!r}")
        k = _num(factor, "degrade factor")
        if not 1 <= k <= lib.FAB_MAX_DEGRADE:
            raise errors.InvalidArgument(f"degrade factor must be in [1, {lib.FAB_MAX_DEGRADE}], "
                                         f"got {factor!r}")
        check(lib.fab_seg_link_set(self._s, _int(link, "link index"), LINK_STATES[state], k),
              f"setting link {link}")

    def link_faults(self, link: int) -> dict:
        st, k = ffi.new("uint32_t *"), ffi.new("double *")
        check(lib.fab_seg_link_faults(self._s, _int(link, "link index"), st, k),
              f"reading the faults of link {link}")
        return {"state": "cut" if st[0] == lib.FAB_LINK_CUT else "up", "factor": k[0]}

    def poison_add(self, dev: int, offset_bytes: int, nbytes: int) -> None:
        rc = lib.fab_seg_poison_add(self._s, _int(dev, "device index"),
                                    _int(offset_bytes, "offset"), _int(nbytes, "length", 1))
        if rc == lib.FAB_ENOMEM:
            raise errors.ResourceExhausted(
                f"device {dev}'s poison table is full ({lib.FAB_POISON_MAX} ranges); heal some "
                f"poison first")
        check(rc, f"poisoning device {dev}")

    def poison_clear(self, dev: int, offset_bytes: int, nbytes: int) -> None:
        rc = lib.fab_seg_poison_clear(self._s, _int(dev, "device index"),
                                      _int(offset_bytes, "offset"), _int(nbytes, "length"))
        if rc == lib.FAB_ENOMEM:
            raise errors.ResourceExhausted(
                f"clearing poison of device {dev} would split a range and its table is full")
        check(rc, f"clearing poison of device {dev}")

    def dram_load(self, host: int, window_wall_ns: int) -> tuple[float, int, int]:
        """Host ``host``'s local DRAM: (load GB/s, engines active, bytes moved)."""
        return self._load(lib.fab_seg_dram_read, host, window_wall_ns, "reading host DRAM load")

    def resource_load(self, res: int, window_wall_ns: int) -> tuple[float, int, int]:
        """Element ``res`` (a link, switch or device): (load GB/s, hosts active, bytes)."""
        return self._load(lib.fab_seg_res_read, res, window_wall_ns, "reading element load")

    def _load(self, read, index: int, window_wall_ns: int, what: str) -> tuple[float, int, int]:
        load = ffi.new("double *")
        active = ffi.new("uint32_t *")
        total = ffi.new("uint64_t *")
        check(read(self._s, index, window_wall_ns, load, active, total), what)
        return load[0], active[0], total[0]


# ---- histograms -----------------------------------------------------------------

class Histogram:
    """A private log-linear latency histogram (1 ns .. 100 s, <= 1% error)."""

    def __init__(self):
        out = ffi.new("fab_hist **")
        check(lib.fab_hist_create(out), "creating a histogram")
        self._h = ffi.gc(out[0], lib.fab_hist_destroy)

    def record(self, value_ns: int, count: int = 1) -> None:
        check(lib.fab_hist_record(self._h, _int(value_ns, "value_ns"), _int(count, "count")),
               "recording")

    def record_many(self, values_ns) -> None:
        for v in np.asarray(values_ns, dtype=np.uint64).tolist():
            lib.fab_hist_record(self._h, v, 1)

    def merge(self, other: "Histogram") -> None:
        check(lib.fab_hist_merge(self._h, other._h), "merging histograms")

    def percentile(self, pct: float) -> int:
        out = ffi.new("uint64_t *")
        check(lib.fab_hist_percentile(self._h, float(pct), out), f"percentile {pct}")
        return int(out[0])

    def summary(self) -> dict:
        out = ffi.new("uint64_t[]", lib.FAB_HIST_NSUMMARY)
        check(lib.fab_hist_summary(self._h, out, lib.FAB_HIST_NSUMMARY), "histogram summary")
        return {"count": out[0], "sum_ns": out[1], "min_ns": out[2], "max_ns": out[3],
                "overflow": out[4]}

    def buckets(self) -> np.ndarray:
        arr = np.zeros(HIST_BUCKETS, dtype=np.uint64)
        check(lib.fab_hist_buckets(self._h, ffi.cast("uint64_t *", ffi.from_buffer(arr)),
                                    HIST_BUCKETS), "histogram buckets")
        return arr


def hist_bucket_of(value_ns: int) -> int:
    return int(lib.fab_hist_bucket_of(value_ns))


def hist_bucket_value(bucket: int) -> int:
    return int(lib.fab_hist_bucket_value(bucket))


# ---- the engine ------------------------------------------------------------------

class NativeEngine:
    """One fab_engine handle: a host's page cache, regions and cost model."""

    def __init__(self, params: dict, host: str, *, mode: str, seed: int, shared_path: str | None,
                 eviction: str, spin_entry_ns: float, page_pass: bool = False,
                 lockstep_ns: int = 0, lockstep_hosts: int | None = None,
                 lockstep_timeout_ms: int = constants.DEFAULT_LOCKSTEP_TIMEOUT_MS):
        if mode not in MODES:
            raise errors.InvalidArgument(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        lockstep_ns = _int(lockstep_ns, "lockstep_ns", 0, 1 << 62)
        if lockstep_ns and mode != "virtual":
            raise errors.InvalidArgument(
                f"lockstep_ns needs inject mode 'virtual' (lockstep is a virtual-time "
                f"schedule), got mode {mode!r}")
        if eviction not in EVICTIONS:
            raise errors.InvalidArgument(
                f"eviction must be one of {', '.join(EVICTIONS)}, got {eviction!r}")
        nh, nd, nl = dims(params)
        hi = host_index(params, host)
        h = params["hosts"][hi]
        page = _int(params.get("page_size_bytes", 4096), "page_size_bytes", 64, 1 << 30)
        if page & (page - 1):
            raise _bad(f"page_size_bytes must be a power of two, got {page}")
        knobs = engine_knobs(params)
        cache_bytes = _int(h.get("dram_cache_bytes", 0), f"host {host}: dram_cache_bytes")
        cache_pages = min(cache_bytes // page, (1 << 30) - 1)
        self.model = _Model(params, hi)
        cfg = ffi.new("fab_engine_config *")
        cfg.page_size_bytes, cfg.nhosts, cfg.ndevices, cfg.nlinks = page, nh, nd, nl
        cfg.host, cfg.mode, cfg.eviction = hi, MODES[mode], EVICTIONS[eviction]
        cfg.mlp_lines = knobs["mlp_lines"]
        cfg.threads = _int(h.get("threads", knobs["threads"]), f"host {host}: threads", 1, 1 << 20)
        cfg.seed = _int(seed, "seed", -(1 << 63), (1 << 64) - 1) & ((1 << 64) - 1)
        cfg.cache_pages = cache_pages
        cfg.max_regions = knobs["max_regions"]
        cfg.touch_entries = max(1024, min(2 * cache_pages, 1 << 22))
        cfg.local_dram_ns = _num(h.get("local_dram_ns", 90.0), f"host {host}: local_dram_ns")
        cfg.local_bandwidth_gbps = _num(h.get("local_bandwidth_gbps", 116.0),
                                        f"host {host}: local_bandwidth_gbps", positive=True)
        cfg.queue_max_factor = knobs["queue_max_factor"]
        cfg.rate_window_ns = knobs["rate_window_ns"]
        cfg.active_window_ns = knobs["active_window_ns"]
        cfg.active_window_wall_ns = knobs["active_window_wall_ns"]
        cfg.spin_quantum_ns = knobs["spin_quantum_ns"]
        cfg.spin_slack_ns = knobs["spin_slack_ns"]
        cfg.spin_entry_ns = _num(spin_entry_ns, "calibration call_overhead_ns")
        cfg.page_pass_only = 1 if page_pass else 0
        if lockstep_ns:
            group = nh if lockstep_hosts is None else _int(lockstep_hosts, "lockstep_hosts", 1, nh)
            cfg.lockstep_quantum_ns = lockstep_ns
            cfg.lockstep_hosts = group
            cfg.lockstep_timeout_ms = _int(lockstep_timeout_ms, "lockstep_timeout_ms", 0,
                                           constants.MAX_LOCKSTEP_TIMEOUT_MS)
        out = ffi.new("fab_engine **")
        rc = lib.fab_engine_create(cfg, self.model.model,
                                   shared_path.encode() if shared_path else ffi.NULL, out)
        if lockstep_ns and rc in (lib.FAB_EINVAL, lib.FAB_EBUSY):
            seg = Segment(shared_path, params) if shared_path else None
            raise errors.InvalidArgument(
                f"host {host} cannot join the lockstep group: " +
                (_group_conflict(seg, params, host, lockstep_ns, group) if seg else
                 strerror(rc)))
        check(rc, f"creating the engine for host {host}")
        self.lockstep_ns = lockstep_ns
        self._e = ffi.gc(out[0], lib.fab_engine_destroy)
        self.host_index = hi
        self.page_size_bytes = page
        self.cache_pages = cache_pages
        self.max_regions = knobs["max_regions"]
        self.segment = Segment(None, params, _borrow=(self._e, lib.fab_engine_segment(self._e)))
        self._access = lib.fab_engine_access
        self._u32 = ffi.new("uint32_t[]", 4)
        self._device_names = [d.get("name", f"device {j}") for j, d in enumerate(params["devices"])]
        self._link_names = [link.get("name", f"link {i}")
                            for i, link in enumerate(params.get("links", []))]
        self._host = host
        self._params_hosts = list(params["hosts"])
        self._lockstep_timeout_ms = lockstep_timeout_ms
        self._addresses: dict[int, int] = {}     # region id -> global base address
        self._labels: dict[int, str] = {}        # region id -> its name, for messages

    def close(self) -> None:
        if self._e is not None:
            self.lockstep_leave()   # waits (GIL released) so the others see our last values
            self.segment = None
            ffi.release(self._e)
            self._e = None

    def _handle(self):
        if self._e is None:
            raise errors.InvalidArgument("the engine is closed")
        return self._e

    def region_add(self, region_id: int, npages: int, devices: list[int], stripe_pages: int,
                   policy: str, promote_after: int, share: str, versions_path: str | None) -> None:
        if policy not in POLICIES:
            raise errors.InvalidArgument(
                f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        if share not in SHARES:
            raise errors.InvalidArgument(
                f"share must be one of {', '.join(SHARES)}, got {share!r}")
        _int(region_id, "region_id", 0, 2**32 - 1)
        _int(npages, "npages", 1, 2**32 - 2)
        _int(stripe_pages, "stripe_pages", 1, 2**32 - 1)
        _int(promote_after, "promote_after", 1, 2**32 - 1)
        devs = [_int(d, "device index", 0, 65534) for d in devices]
        if not devs or len(devs) > MAX_REGION_DEVICES:
            raise errors.InvalidArgument(
                f"device_indices needs 1..{MAX_REGION_DEVICES} entries, got {len(devs)}")
        if share != "private" and not versions_path:
            raise errors.InvalidArgument(f"a {share} region needs versions_path (a shared file)")
        rc = lib.fab_engine_region_add(
            self._handle(), region_id, npages, ffi.new("uint32_t[]", devs), len(devs),
            stripe_pages, POLICIES[policy], promote_after, SHARES[share],
            versions_path.encode() if share != "private" else ffi.NULL)
        if rc == lib.FAB_ENOMEM:
            raise errors.InvalidArgument(
                f"registering region {region_id}: this host's engine already holds its maximum "
                f"of regions (max_regions = {self.max_regions}; raise it in the topology's "
                f"[engine] table)")
        check(rc, f"registering region {region_id}")

    def region_remove(self, region_id: int) -> int:
        self._addresses.pop(region_id, None)
        self._labels.pop(region_id, None)
        return check(lib.fab_engine_region_remove(self._handle(), _int(region_id, "region_id")),
                      f"unregistering region {region_id}")

    def access(self, region_id: int, offset: int, nbytes: int, write: bool) -> int:
        try:
            rc = self._access(self._e, region_id, offset, nbytes, write)
        except (OverflowError, TypeError) as exc:
            if self._e is None:
                raise errors.InvalidArgument("the engine is closed") from None
            raise errors.InvalidArgument(
                f"access(region {region_id!r}, offset {offset!r}, nbytes {nbytes!r}): {exc}"
            ) from None
        if rc < 0:
            if rc in _FAULT_CODES:
                raise self._fault_error(rc, region_id, offset, nbytes, write)
            self._raise_lockstep(rc, f"access to region {self._labels.get(region_id, region_id)} "
                                     f"at {offset} (+{nbytes} bytes)")
            check(rc, f"access to region {region_id} at {offset} (+{nbytes} bytes)")
        return rc

    def _fault_error(self, rc: int, region_id: int, offset: int, nbytes: int,
                     write: bool) -> errors.FabricError:
        """The typed error of an access that met a fault, naming what it met."""
        out = ffi.new("uint64_t[]", 4)
        lib.fab_engine_last_fault(self._e, out, 4)
        dev = self._device_names[out[1]] if out[1] < len(self._device_names) else f"#{out[1]}"
        label = self._labels.get(region_id, region_id)
        what = (f"{'write' if write else 'read'} of region {label!r} at {offset} "
                f"(+{nbytes} bytes) by {self._host}")
        if rc == lib.FAB_EFAILED:
            return errors.DeviceFailed(f"{what}: device {dev} has failed")
        if rc == lib.FAB_EUNAVAIL:
            return errors.NodeUnavailable(f"{what}: device {dev} is unavailable (its node is down)")
        if rc == lib.FAB_ELINKDOWN:
            link = (self._link_names[out[2]] if out[2] < len(self._link_names) else f"#{out[2]}")
            return errors.LinkDown(f"{what}: link {link} on the path to device {dev} is cut")
        base = self._addresses.get(region_id)
        addr = None if base is None else base + int(out[3])
        where = f"global address {addr:#x}" if addr is not None else f"region offset {out[3]}"
        return errors.PoisonError(f"{what}: poisoned memory at {where} (device {dev})",
                                  address=addr)

    def region_place(self, region_id: int, device_offsets: list[int],
                     address: int | None = None, label: str | None = None) -> None:
        """Where the region's extents lie on its devices (for poison), and its global address
        (for the address a PoisonError names)."""
        offs = [_int(o, "device offset") for o in device_offsets]
        check(lib.fab_engine_region_place(self._handle(), _int(region_id, "region_id"),
                                          ffi.new("uint64_t[]", offs or [0]), len(offs)),
              f"placing region {region_id}")
        if address is not None:
            self._addresses[region_id] = _int(address, "address")
        if label is not None:
            self._labels[region_id] = str(label)

    def advance(self, ns: int) -> None:
        rc = lib.fab_engine_advance(self._handle(), _int(ns, "ns"))
        if rc < 0:
            self._raise_lockstep(rc, "advancing the clock")
            check(rc, "advancing the clock")

    # -- lockstep ------------------------------------------------------------------
    def _raise_lockstep(self, rc: int, what: str) -> None:
        """Raise the typed error of a lockstep failure code; return for other codes."""
        if rc == lib.FAB_ELOCKSTEP:
            raise errors.LockstepTimeout(f"{what}: {self._lockstep_why()}")
        if rc == lib.FAB_EINVAL and self.lockstep_ns and self._e is not None:
            info = self.lockstep_info()
            if info["state"] == "parked":
                raise errors.InvalidArgument(
                    f"{what}: host {self._host} is parked (lockstep); unpark it first")

    def _lockstep_why(self) -> str:
        """What held this host back in its last failed lockstep wait, in words."""
        info = self.lockstep_info()
        reason, who, clock, need = info["why"]
        names = [h.get("name", f"#{i}") for i, h in enumerate(self._params_hosts)]
        timeout = self._lockstep_timeout_ms
        if reason == 1:
            members = self.segment.lockstep_members() if self.segment else {}
            joined = ", ".join(sorted(n for n, m in members.items() if m["state"] != "absent"))
            return (f"host {self._host} waited {timeout} ms for the lockstep group to fill: "
                    f"{clock} of {need} hosts joined ({joined or 'none'}); start the others, or "
                    f"pass lockstep_hosts=<how many take part>")
        name = names[who] if who < len(names) else f"#{who}"
        if reason == 3:
            return (f"lockstep host {name} (virtual clock {clock} ns) is behind host "
                    f"{self._host}, which needs every running member at >= {need} ns, and both "
                    f"are driven by this same thread, so {name} can never catch up: drive each "
                    f"lockstep host from its own process or thread")
        return (f"host {name} held host {self._host} back for {timeout} ms: its virtual clock "
                f"is {clock} ns and {self._host} needs every running member of the lockstep "
                f"group at >= {need} ns (quantum {self.lockstep_ns} ns); a host that waits "
                f"outside the engine must park (Engine.parked() / Session.parked())")

    def lockstep_info(self) -> dict:
        """The lockstep group as this engine sees it, and its own waits."""
        out = ffi.new("uint64_t[]", 11)
        check(lib.fab_engine_lockstep_info(self._handle(), out, 11), "lockstep info")
        return {"generation": int(out[0]), "size": int(out[1]), "joined": int(out[2]),
                "quantum_ns": int(out[3]),
                "state": LOCKSTEP_STATES[out[4]] if out[4] < len(LOCKSTEP_STATES) else "?",
                "waits": int(out[5]), "wait_ns": int(out[6]),
                "why": (int(out[7]), int(out[8]), int(out[9]), int(out[10]))}

    def lockstep_park(self) -> None:
        rc = lib.fab_engine_lockstep_park(self._handle())
        if rc < 0:
            self._raise_lockstep(rc, f"parking host {self._host}")
            check(rc, f"parking host {self._host} (is it a lockstep engine?)")

    def lockstep_unpark(self) -> None:
        check(lib.fab_engine_lockstep_unpark(self._handle()),
              f"unparking host {self._host} (is it a lockstep engine?)")

    def lockstep_release(self, hosts: list[int], clock_ns: int) -> None:
        idx = [_int(h, "host index", 0, 2**32 - 1) for h in hosts]
        check(lib.fab_engine_lockstep_release(self._handle(), ffi.new("uint32_t[]", idx or [0]),
                                              len(idx), _int(clock_ns, "clock_ns")),
              "releasing lockstep hosts")

    def lockstep_leave(self) -> None:
        if self._e is not None and self.lockstep_ns:
            lib.fab_engine_lockstep_leave(self._e)

    def virtual_time_ns(self) -> int:
        return int(lib.fab_engine_virtual_time(self._handle()))

    def pin(self, region_id: int, first_page: int, npages: int, delta: int) -> None:
        check(lib.fab_engine_pin(self._handle(), _int(region_id, "region_id"),
                                  _int(first_page, "page"), _int(npages, "npages"), delta),
               f"pinning pages of region {region_id}")

    def set_frame(self, region_id: int, page: int, address: int) -> None:
        check(lib.fab_engine_set_frame(self._handle(), _int(region_id, "region_id"),
                                        _int(page, "page"), ffi.cast("void *", address)),
               f"setting the frame of page {page}")

    def page_state(self, region_id: int, page: int) -> tuple[int, int, int, int]:
        check(lib.fab_engine_page_state(self._handle(), _int(region_id, "region_id"),
                                         _int(page, "page"), self._u32, 4), "page state")
        return tuple(self._u32)  # type: ignore[return-value]

    def cache_info(self) -> tuple[int, int, int, int]:
        check(lib.fab_engine_cache_info(self._handle(), self._u32, 4), "cache info")
        return tuple(self._u32)  # type: ignore[return-value]

    def check(self) -> None:
        """Walk the page cache and the engine's bookkeeping (fab_engine_check);
        raise NativeError if any invariant is broken.  O(cache frames): for tests."""
        check(lib.fab_engine_check(self._handle()), "checking the engine's consistency")

    def loaded_latency(self, dev: int, write: bool) -> float:
        out = ffi.new("double *")
        check(lib.fab_engine_loaded_latency(self._handle(), dev, int(write), out),
               "loaded latency")
        return out[0]

    def dram_state(self) -> dict:
        """This host's local DRAM now: the latency a hit pays at the current load
        (``latency_ns``), this engine's share of its bandwidth (``share_gbps``) and
        the slot it publishes its load in (``slot``; None when all were taken)."""
        lat, share = ffi.new("double *"), ffi.new("double *")
        slot = ffi.new("uint32_t *")
        check(lib.fab_engine_dram_state(self._handle(), lat, share, slot), "host DRAM state")
        return {"latency_ns": lat[0], "share_gbps": share[0],
                "slot": None if slot[0] >= lib.FAB_DRAM_SLOTS else int(slot[0])}


# ---- calibration ----------------------------------------------------------------

def calib_chase(buf_bytes: int, steps: int, seed: int = 1) -> float:
    out = ffi.new("double *")
    check(lib.fab_calib_chase(buf_bytes, steps, seed, out), "pointer chase")
    return out[0]


def calib_bandwidth(buf_bytes: int, reps: int) -> float:
    out = ffi.new("double *")
    check(lib.fab_calib_bandwidth(buf_bytes, reps, out), "bandwidth")
    return out[0]


def calib_clock(iters: int) -> float:
    out = ffi.new("double *")
    check(lib.fab_calib_clock(iters, out), "clock")
    return out[0]


def calib_spin(wait_ns: int, reps: int) -> float:
    out = ffi.new("double *")
    check(lib.fab_calib_spin(wait_ns, reps, out), "spin")
    return out[0]
