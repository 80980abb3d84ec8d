"""Bandwidth-latency curves: how an element's latency grows with the load on it.

A :class:`Curve` holds one curve per read percentage (100 = pure reads), each a
list of ``(bandwidth_gbps, latency_ns)`` points with bandwidth strictly
increasing and latency never falling.  The C engine interpolates linearly
between points, picks the curve of the nearest read percentage, and charges an
access ``curve(load) - curve(lowest point)`` on top of the path's idle latency
(the idle part is already in ``latency_read_ns``).

Curves come from three places:

- built in, by name (``fabric/topology/curves.toml``; ``"cxl-micron"``);
- inline in a topology file (``curve = [[0, 226], [21, 239], ...]`` or
  ``curve = {read_pct = [...], points = [...]}``);
- a directory in the Mess benchmark's format (:func:`load_mess_curve`): files
  ``bwlat_<read%>.txt``, each line ``<bandwidth MB/s> <latency>`` separated by
  white space (Mess writes a tab), no header.  Mess stores latency in CPU cycles
  of the machine that measured the curve, so the caller gives that clock
  (``cpu_freq_ghz``; 2.1 for the Skylake curves Mess ships) or says the file is
  already in ns.  Measured points are noisy and repeat at saturation: we sort
  them by bandwidth, merge equal bandwidths keeping the highest latency, make
  latency non-decreasing (a running maximum) and thin them to
  ``MAX_CURVE_POINTS`` by bandwidth buckets, keeping each bucket's last point.
"""
from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from ..errors import InvalidArgument

MAX_CURVE_POINTS = 128                         # per read percentage, after thinning
_MESS_FILE_RE = re.compile(r"bwlat_(\d+)\.txt")
_BUILTIN_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "curves.toml")


def interpolate(points, x: float) -> float:
    """Piecewise-linear latency at bandwidth ``x``, clamped at both ends (what
    csrc/cost.c computes; fabric/engine/_reference.py uses this same function)."""
    if not points:
        return 0.0
    if x <= points[0][0]:
        return points[0][1]
    for (b0, l0), (b1, l1) in zip(points, points[1:]):
        if x <= b1:
            return l0 + (l1 - l0) * (x - b0) / (b1 - b0)
    return points[-1][1]


@dataclass(frozen=True)
class Curve:
    read_pct: tuple[int, ...]                  # read percentages, descending (100 first)
    points: tuple[tuple[tuple[float, float], ...], ...]  # per read_pct: (bandwidth_gbps, latency_ns)
    source: str = ""                           # "builtin:NAME", "inline", or the Mess directory

    def idle_ns(self, read_pct: int = 100) -> float:
        """Latency at the lowest-bandwidth point of the curve nearest ``read_pct``."""
        return self.for_read_pct(read_pct)[0][1]

    def for_read_pct(self, read_pct: int) -> tuple[tuple[float, float], ...]:
        i = min(range(len(self.read_pct)), key=lambda k: (abs(self.read_pct[k] - read_pct), k))
        return self.points[i]

    def latency_ns(self, bandwidth_gbps: float, read_pct: int = 100) -> float:
        """Linear interpolation (clamped at both ends): the reference the engine follows."""
        return interpolate(self.for_read_pct(read_pct), bandwidth_gbps)

    def to_engine(self) -> dict:
        return {"read_pct": list(self.read_pct),
                "points": [[[b, l] for b, l in pts] for pts in self.points]}

    @classmethod
    def from_dict(cls, d: dict) -> "Curve":
        return cls(read_pct=tuple(int(p) for p in d["read_pct"]),
                   points=tuple(tuple((float(b), float(l)) for b, l in pts) for pts in d["points"]),
                   source=d.get("source", ""))


def _number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def make_curve(read_pct: list, points: list, *, where: str, source: str,
               clean: bool = False) -> Curve:
    """Check (or, with ``clean``, tidy measured data) and build a Curve.

    ``where`` prefixes every error ("topo.toml: device d0: curve").
    """
    if not isinstance(read_pct, (list, tuple)) or not read_pct:
        raise InvalidArgument(f"{where}: read_pct must be a non-empty list of percentages")
    if not isinstance(points, (list, tuple)) or len(points) != len(read_pct):
        raise InvalidArgument(f"{where}: points must hold one list of [bandwidth_gbps, latency_ns] "
                              f"pairs per read_pct entry ({len(read_pct)})")
    seen: set[int] = set()
    curves: list[tuple[int, tuple[tuple[float, float], ...]]] = []
    for pct, pts in zip(read_pct, points):
        if not _number(pct) or not float(pct).is_integer() or not 0 <= pct <= 100:
            raise InvalidArgument(f"{where}: read_pct {pct!r} is not a whole percentage 0..100")
        pct = int(pct)
        if pct in seen:
            raise InvalidArgument(f"{where}: read_pct {pct} given twice")
        seen.add(pct)
        here = f"{where}: read_pct {pct}"
        if not isinstance(pts, (list, tuple)) or not pts:
            raise InvalidArgument(f"{here}: needs at least one [bandwidth_gbps, latency_ns] pair")
        pairs = []
        for p in pts:
            if (not isinstance(p, (list, tuple)) or len(p) != 2 or not all(map(_number, p))):
                raise InvalidArgument(f"{here}: {p!r} is not a [bandwidth_gbps, latency_ns] pair")
            b, lat = float(p[0]), float(p[1])
            if b < 0 or lat <= 0:
                raise InvalidArgument(f"{here}: point {p!r}: bandwidth must be >= 0 and latency > 0")
            pairs.append((b, lat))
        if clean:
            pairs = _tidy(pairs)
        else:
            for (b0, l0), (b1, l1) in zip(pairs, pairs[1:]):
                if b1 <= b0:
                    raise InvalidArgument(f"{here}: bandwidth must increase from point to point "
                                          f"({b0:g} then {b1:g})")
                if l1 < l0:
                    raise InvalidArgument(f"{here}: latency must not fall as bandwidth grows "
                                          f"({l0:g} ns at {b0:g} GB/s, {l1:g} ns at {b1:g} GB/s)")
            if len(pairs) > MAX_CURVE_POINTS:
                raise InvalidArgument(f"{here}: {len(pairs)} points; at most {MAX_CURVE_POINTS}")
        curves.append((pct, tuple(pairs)))
    curves.sort(key=lambda c: -c[0])
    return Curve(tuple(c[0] for c in curves), tuple(c[1] for c in curves), source)


def _tidy(pairs: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Sorted by bandwidth, equal bandwidths merged (highest latency), latency a running max, thinned."""
    merged: dict[float, float] = {}
    for b, lat in pairs:
        merged[b] = max(lat, merged.get(b, 0.0))
    out: list[tuple[float, float]] = []
    top = 0.0
    for b in sorted(merged):
        top = max(top, merged[b])
        out.append((b, top))
    if len(out) > MAX_CURVE_POINTS:            # bandwidths are distinct, so width > 0
        b_first = out[0][0]
        width = (out[-1][0] - b_first) / (MAX_CURVE_POINTS - 2)
        last_in_bucket: dict[int, tuple[float, float]] = {}
        for b, lat in out[1:]:                 # the later point of a bucket is higher on both axes
            last_in_bucket[int((b - b_first) / width)] = (b, lat)
        out = [out[0]] + [last_in_bucket[k] for k in sorted(last_in_bucket)]
    return out


@functools.lru_cache(maxsize=None)
def _builtin_table() -> dict:
    with open(_BUILTIN_FILE, "rb") as f:
        return tomllib.load(f)


def builtin_curve_names() -> list[str]:
    return sorted(_builtin_table())


def builtin_curve(name: str, *, where: str = "curve") -> Curve:
    """The built-in curve ``name`` (see fabric/topology/curves.toml)."""
    table = _builtin_table()
    if name not in table:
        raise InvalidArgument(f"{where}: no built-in curve {name!r} "
                              f"(built in: {', '.join(builtin_curve_names())}; or \"none\")")
    entry = table[name]
    return make_curve(entry["read_pct"], entry["points"], where=f"{_BUILTIN_FILE}: {name}",
                      source=f"builtin:{name}")


def load_mess_curve(directory: str, *, cpu_freq_ghz: float | None = None,
                    latency_unit: str = "cycles", where: str | None = None) -> Curve:
    """Read a Mess-format curve directory (``bwlat_<read%>.txt`` files).

    Bandwidth is read in MB/s (10**6 B/s) and converted to GB/s; latency is
    read in CPU cycles and divided by ``cpu_freq_ghz`` (required then), or read
    as ns when ``latency_unit="ns"``.
    """
    where = where or directory
    if latency_unit not in ("cycles", "ns"):
        raise InvalidArgument(f"{where}: latency_unit must be \"cycles\" or \"ns\", got {latency_unit!r}")
    if latency_unit == "cycles":
        if cpu_freq_ghz is None:
            raise InvalidArgument(
                f"{where}: Mess curve files hold latency in CPU cycles; give cpu_freq_ghz (the clock "
                f"of the machine that measured them, e.g. 2.1) or latency_unit = \"ns\"")
        if not _number(cpu_freq_ghz) or cpu_freq_ghz <= 0:
            raise InvalidArgument(f"{where}: cpu_freq_ghz must be a positive number, got {cpu_freq_ghz!r}")
    elif cpu_freq_ghz is not None:
        raise InvalidArgument(f"{where}: cpu_freq_ghz applies only to latency_unit = \"cycles\"")
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        raise InvalidArgument(f"{where}: no such Mess curve directory {directory!r}") from None
    except NotADirectoryError:
        raise InvalidArgument(f"{where}: {directory!r} is not a directory") from None
    files = sorted((int(m.group(1)), n) for n in names if (m := _MESS_FILE_RE.fullmatch(n)))
    if not files:
        raise InvalidArgument(f"{where}: no bwlat_<read%>.txt files in {directory!r}")
    scale = 1.0 if latency_unit == "ns" else 1.0 / float(cpu_freq_ghz)  # type: ignore[arg-type]
    read_pct, points = [], []
    for pct, name in files:
        path = os.path.join(directory, name)
        pts = []
        with open(path, encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f, 1):
                text = line.split("#", 1)[0].strip()
                if not text:
                    continue
                fields = text.split()
                try:
                    if len(fields) != 2:
                        raise ValueError
                    bw_mbps, lat = float(fields[0]), float(fields[1])
                except ValueError:
                    raise InvalidArgument(f"{path}:{lineno}: expected \"<bandwidth MB/s> <latency>\", "
                                          f"got {line.strip()!r}") from None
                pts.append([bw_mbps / 1000.0, lat * scale])
        if not pts:
            raise InvalidArgument(f"{path}: no points")
        read_pct.append(pct)
        points.append(pts)
    return make_curve(read_pct, points, where=where, source=os.path.abspath(directory), clean=True)


_SPEC_KEYS = {"read_pct", "points", "mess_dir", "cpu_freq_ghz", "latency_unit"}


def curve_from_spec(value: object, *, where: str, base_dir: str) -> Curve | None:
    """A TOML ``curve = ...`` value -> Curve, or None for ``"none"``/``false``.

    Accepted: a built-in name; ``"none"``/``false``; a list of ``[gbps, ns]``
    pairs (100% reads); ``{read_pct = [...], points = [...]}``;
    ``{mess_dir = "dir", cpu_freq_ghz = 2.1}`` or ``{mess_dir = "dir", latency_unit = "ns"}``
    (relative paths are relative to the topology file).
    """
    if value is False or value == "none":
        return None
    if isinstance(value, str):
        return builtin_curve(value, where=where)
    if isinstance(value, list):
        return make_curve([100], [value], where=where, source="inline")
    if isinstance(value, dict):
        unknown = sorted(set(value) - _SPEC_KEYS)
        if unknown:
            raise InvalidArgument(f"{where}: unknown key {unknown[0]!r} "
                                  f"(a curve table takes: {', '.join(sorted(_SPEC_KEYS))})")
        if "mess_dir" in value:
            extra = sorted({"read_pct", "points"} & set(value))
            if extra:
                raise InvalidArgument(f"{where}: give mess_dir or read_pct/points, not both")
            d = value["mess_dir"]
            if not isinstance(d, str) or not d:
                raise InvalidArgument(f"{where}: mess_dir must be a directory path")
            d = d if os.path.isabs(d) else os.path.join(base_dir, d)
            return load_mess_curve(d, cpu_freq_ghz=value.get("cpu_freq_ghz"),
                                   latency_unit=value.get("latency_unit", "cycles"), where=where)
        if "read_pct" not in value or "points" not in value:
            raise InvalidArgument(f"{where}: a curve table needs read_pct and points, or mess_dir")
        for k in ("cpu_freq_ghz", "latency_unit"):
            if k in value:
                raise InvalidArgument(f"{where}: {k} applies only with mess_dir")
        return make_curve(value["read_pct"], value["points"], where=where, source="inline")
    raise InvalidArgument(f"{where}: expected a built-in curve name, \"none\", a list of "
                          f"[bandwidth_gbps, latency_ns] pairs or a table, got {value!r}")


@functools.lru_cache(maxsize=256)
def host_dram_points(local_dram_ns: float, local_bandwidth_gbps: float,
                     name: str = "") -> tuple[tuple[float, float], ...]:
    """The loaded-latency curve of a host's own DRAM (the engine's ``dram:<host>``
    element): the pure-read set of the built-in curve ``name`` (default: the one
    ``dram`` devices use, ``ddr4-skylake``, measured with the Mess benchmark on a
    Skylake Xeon 8160 with 6x DDR4-2666) scaled to the host: every latency times
    ``local_dram_ns / idle`` and every bandwidth times ``local_bandwidth_gbps /
    peak`` (idle: the curve's first latency; peak: its last bandwidth).  So the
    curve starts at the host's idle latency and saturates at its bandwidth, with
    the measured shape in between.  The C engine and the reference model both
    take these points from here, so they agree bit for bit."""
    from .kinds import DRAM_CURVE
    pts = builtin_curve(name or DRAM_CURVE).for_read_pct(100)
    lat_f = float(local_dram_ns) / pts[0][1]
    bw_f = float(local_bandwidth_gbps) / pts[-1][0]
    return tuple((b * bw_f, lat * lat_f) for b, lat in pts)
