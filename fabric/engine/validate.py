"""Reproduce published measurements with the engine: ``fabric validate``.

Each point of ``validate_points.toml`` (shipped with the package; another file can
be given) names a published figure -- an idle latency, a bandwidth, a loaded
latency -- and a setup: a small topology (a preset, or one host joined to one
device) whose ``engine_params()`` configure a real :class:`fabric.engine.Engine`
(the C core) in virtual mode with a fixed seed.  The point's figure is what that
engine *charges* for a probe access or a stream of accesses, never a topology
parameter read back.  :func:`run` returns one result per point with the ratio
emulator / published and whether it is within tolerance.

Methods (docs/cost-model.md, "Validation"):

- ``idle``: the charge of one direct read of ``nbytes`` (64 by default) on an idle engine;
- ``idle_diff``: ``idle`` on ``setup`` minus ``idle`` on ``minus`` (what one element adds);
- ``stream``: 1 MiB direct reads and writes in the ratio ``mix = [reads, writes]``, in
  sequence, for 64 MiB; bytes moved / ns charged, in GB/s;
- ``loaded``: 1 MiB reads with think time so that the device carries ``load_gbps``
  (the host's ``threads`` raised to 1024, as a many-core load generator such as
  Mess offers), then one 64-byte read; its charge is the loaded latency.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Callable

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from ..errors import InvalidArgument

DEFAULT_TOLERANCE = 0.15
POINTS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "validate_points.toml")
METHODS = ("idle", "idle_diff", "stream", "loaded")
_MIB = 1 << 20
_STREAM_BYTES = 64 * _MIB
_LOAD_THREADS = 1024
_LOAD_ACCESSES = 60
_POINT_KEYS = {"id", "what", "setup", "minus", "method", "unit", "published", "published_range",
               "source", "needs", "mix", "load_gbps", "nbytes", "tolerance"}


def _setups() -> dict[str, Callable[[], Any]]:
    """Setup name -> a function building its Topology (host h0, device d0 first)."""
    from ..topology import kinds as K
    from ..topology import load
    from ..topology.curves import builtin_curve
    from ..topology.model import Device, Host, Link, Node, Topology

    size = 64 * _MIB

    def one_link(name: str, device_kind: str, link: Link) -> Topology:
        kind = K.DEVICE_KINDS[device_kind]
        dev = Device("d0", size, "h0", device_kind, kind.read_ns, kind.write_ns,
                     kind.bandwidth_gbps, curve=builtin_curve(kind.curve) if kind.curve else None)
        return Topology(name=name, source=f"validate:{name}", hosts=(Host("h0"),),
                        nodes=(Node("h0"),), devices=(dev,), links=(link,))

    def cxl_link(lanes: int) -> Link:
        return Link("h0-d0", "h0", "d0", "cxl", K.lane_bandwidth_gbps("cxl", gen="2.0", lanes=lanes),
                    0.0, gen="2.0", lanes=lanes)

    def preset(name: str) -> Callable[[], Topology]:
        return lambda: load(name, hosts=1, devices=1, device_size=size)

    def rdma_paging() -> Topology:
        """The rdma preset with its memory servers reached by far-memory paging."""
        import dataclasses
        t = load("rdma", hosts=1, devices=1, device_size=size)
        kind = K.DEVICE_KINDS["rdma-paging"]
        devs = tuple(dataclasses.replace(d, kind="rdma-paging", read_ns=kind.read_ns,
                                         write_ns=kind.write_ns) for d in t.devices)
        return dataclasses.replace(t, devices=devs, source="validate:rdma-paging")

    ucie_bw = K.lane_bandwidth_gbps("ucie", rate_gts=K.DEFAULT_UCIE_RATE_GTS, lanes=16)
    return {
        "dram-direct": lambda: one_link("dram-direct", "dram", Link(
            "h0-d0", "h0", "d0", "ddr", K.LOCAL_DRAM_BANDWIDTH_GBPS, 0.0)),
        "numa": preset("numa"),
        "cxl-x8-direct": lambda: one_link("cxl-x8-direct", "cxl-x8", cxl_link(8)),
        "cxl-x16-direct": lambda: one_link("cxl-x16-direct", "cxl-x16", cxl_link(16)),
        "cxl-micron-direct": preset("direct"),
        "switched-pool": preset("switched-pool"),
        "memory-box": preset("memory-box"),
        "ucie-d2d": lambda: one_link("ucie-d2d", "dram", Link(
            "h0-d0", "h0", "d0", "ucie", ucie_bw, K.UCIE_LINK_NS, lanes=16,
            rate_gts=K.DEFAULT_UCIE_RATE_GTS)),
        "rdma": preset("rdma"),
        "rdma-paging": rdma_paging,
    }


SETUPS = tuple(_setups())


@dataclass(frozen=True)
class Point:
    id: str
    what: str
    setup: str
    method: str
    unit: str
    source: str
    published: float | None = None
    published_range: tuple[float, float] | None = None
    minus: str | None = None
    mix: tuple[int, int] = (1, 0)
    load_gbps: float = 0.0
    nbytes: int = 64
    tolerance: float | None = None
    needs: str = ""


def _num(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def load_points(path: str | None = None) -> list[Point]:
    """Read and check a points file (default: the shipped one); InvalidArgument naming
    ``FILE: point ID: problem`` for anything wrong."""
    path = path or POINTS_FILE
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        raise InvalidArgument(f"{path}: no such points file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise InvalidArgument(f"{path}: cannot read: {exc.strerror or exc}") from None
    raw = doc.get("point")
    if not isinstance(raw, list) or not raw or not all(isinstance(p, dict) for p in raw):
        raise InvalidArgument(f"{path}: needs [[point]] tables")
    setups = _setups()
    out: list[Point] = []
    seen: set[str] = set()
    for i, p in enumerate(raw):
        pid = p.get("id")
        where = f"{path}: point {pid if isinstance(pid, str) else f'[{i}]'}"

        def bad(problem: str) -> InvalidArgument:
            return InvalidArgument(f"{where}: {problem}")

        unknown = sorted(set(p) - _POINT_KEYS)
        if unknown:
            raise bad(f"unknown key {unknown[0]!r} (allowed: {', '.join(sorted(_POINT_KEYS))})")
        for key in ("id", "what", "setup", "method", "unit", "source"):
            if not isinstance(p.get(key), str) or not p[key]:
                raise bad(f"needs {key} = \"...\"")
        if pid in seen:
            raise bad("id used twice")
        seen.add(pid)
        if p["method"] not in METHODS:
            raise bad(f"method {p['method']!r} is not one of: {', '.join(METHODS)}")
        for key in ("setup", "minus"):
            if key in p and p[key] not in setups:
                raise bad(f"{key} {p[key]!r} is not one of: {', '.join(setups)}")
        if p["method"] == "idle_diff" and "minus" not in p:
            raise bad("an idle_diff point needs minus = \"<setup>\"")
        has_one, has_range = "published" in p, "published_range" in p
        if has_one == has_range:
            raise bad("give published = N or published_range = [low, high] (one of them)")
        rng = None
        if has_one and (not _num(p["published"]) or p["published"] <= 0):
            raise bad(f"published must be a number > 0, got {p['published']!r}")
        if has_range:
            r = p["published_range"]
            if (not isinstance(r, list) or len(r) != 2 or not all(map(_num, r))
                    or not 0 <= r[0] < r[1]):
                raise bad(f"published_range must be [low, high] with 0 <= low < high, got {r!r}")
            rng = (float(r[0]), float(r[1]))
        mix = p.get("mix", [1, 0])
        if (not isinstance(mix, list) or len(mix) != 2 or not all(isinstance(x, int)
                                                                  and not isinstance(x, bool)
                                                                  and 0 <= x <= 16 for x in mix)
                or sum(mix) == 0):
            raise bad(f"mix must be [reads, writes], whole numbers 0..16 not both 0, got {mix!r}")
        load_gbps = p.get("load_gbps", 0.0)
        if p["method"] == "loaded" and (not _num(load_gbps) or load_gbps <= 0):
            raise bad(f"a loaded point needs load_gbps > 0, got {load_gbps!r}")
        nbytes = p.get("nbytes", 64)
        if isinstance(nbytes, bool) or not isinstance(nbytes, int) or not 1 <= nbytes <= _MIB:
            raise bad(f"nbytes must be a whole number 1..{_MIB}, got {nbytes!r}")
        tol = p.get("tolerance")
        if tol is not None and (not _num(tol) or not 0 < tol < 10):
            raise bad(f"tolerance must be a number between 0 and 10, got {tol!r}")
        out.append(Point(id=pid, what=p["what"], setup=p["setup"], method=p["method"],
                         unit=p["unit"], source=p["source"],
                         published=float(p["published"]) if has_one else None,
                         published_range=rng, minus=p.get("minus"), mix=(mix[0], mix[1]),
                         load_gbps=float(load_gbps), nbytes=nbytes,
                         tolerance=float(tol) if tol is not None else None,
                         needs=p.get("needs", "")))
    return out


# -- driving the engine ----------------------------------------------------------

def _engine(topo, seed: int, threads: int | None = None):
    from . import Engine
    params = topo.engine_params()
    if threads is not None:
        params["engine"] = {**(params.get("engine") or {}), "threads": threads}
    e = Engine(params, "h0", mode="virtual", seed=seed)
    e.register_region(1, npages=_STREAM_BYTES // topo.page_size_bytes, device_indices=[0],
                      stripe_pages=1, policy="direct")
    return e


def _idle_ns(topo, seed: int, nbytes: int) -> float:
    with _engine(topo, seed) as e:
        return float(e.access(1, 0, nbytes, False))


def _stream_gbps(topo, seed: int, mix: tuple[int, int]) -> float:
    reads, writes = mix
    moved = charged = 0
    offset = 0
    with _engine(topo, seed) as e:
        while moved < _STREAM_BYTES:
            for write in [False] * reads + [True] * writes:
                charged += e.access(1, offset, _MIB, write)
                moved += _MIB
                offset = (offset + _MIB) % _STREAM_BYTES
    return moved / charged


def _loaded_ns(topo, seed: int, load_gbps: float) -> float:
    period_ns = _MIB / load_gbps
    with _engine(topo, seed, threads=_LOAD_THREADS) as e:
        for _ in range(_LOAD_ACCESSES):
            c = e.access(1, 0, _MIB, False)
            if c < period_ns:
                e.advance(int(period_ns - c))
        return float(e.access(1, 0, 64, False))


def measure(point: Point, seed: int = 0) -> float:
    """The engine's figure for ``point`` (ns or GB/s), computed by running the engine."""
    setups = _setups()
    topo = setups[point.setup]()
    if point.method == "idle":
        return _idle_ns(topo, seed, point.nbytes)
    if point.method == "idle_diff":
        return (_idle_ns(topo, seed, point.nbytes)
                - _idle_ns(setups[point.minus](), seed, point.nbytes))   # type: ignore[index]
    if point.method == "stream":
        return _stream_gbps(topo, seed, point.mix)
    return _loaded_ns(topo, seed, point.load_gbps)


def ratio(value: float, point: Point) -> float:
    """emulator / published; for a range, 1 inside it, else value / the nearer bound."""
    if point.published_range is not None:
        low, high = point.published_range
        if low <= value <= high:
            return 1.0
        bound = low if value < low else high
        return value / bound if bound > 0 else math.inf
    return value / point.published   # type: ignore[operator]


def run(points: list[Point] | None = None, *, tolerance: float = DEFAULT_TOLERANCE,
        seed: int = 0) -> dict:
    """Measure every point; the dict ``fabric validate --json`` prints.

    ``{"schema": 1, "tolerance", "seed", "passed", "failed", "ok",
    "points": [{"id", "what", "unit", "emulator", "published", "published_range",
    "ratio", "tolerance", "ok", "source", "needs", "setup", "method"}]}``
    """
    if not _num(tolerance) or not 0 < tolerance < 10:
        raise InvalidArgument(f"tolerance must be a number between 0 and 10, got {tolerance!r}")
    points = load_points() if points is None else points
    rows = []
    for p in points:
        value = measure(p, seed)
        r = ratio(value, p)
        tol = p.tolerance if p.tolerance is not None else tolerance
        ok = abs(r - 1.0) <= tol + 1e-12
        rows.append({"id": p.id, "what": p.what, "unit": p.unit, "setup": p.setup,
                     "method": p.method, "emulator": round(value, 3),
                     "published": p.published,
                     "published_range": list(p.published_range) if p.published_range else None,
                     "ratio": round(r, 4), "tolerance": tol, "ok": ok, "source": p.source,
                     "needs": p.needs})
    failed = sum(not r["ok"] for r in rows)
    return {"schema": 1, "tolerance": tolerance, "seed": seed, "passed": len(rows) - failed,
            "failed": failed, "ok": failed == 0, "points": rows}
