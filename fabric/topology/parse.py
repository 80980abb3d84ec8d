"""Reading a topology TOML file (the format is docs/topology.md).

Every error is an InvalidArgument whose message is ``FILE: ENTRY: PROBLEM``,
e.g. ``pool.toml: link h0-sw9: unknown endpoint 'sw9' (...)``.  Unknown keys are
errors that name the key, so a typo never silently falls back to a default.
"""
from __future__ import annotations

import math
import os
import re

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from .._units import parse_size
from ..constants import ENGINE_KNOBS
from ..errors import InvalidArgument
from . import kinds as K
from .curves import builtin_curve, curve_from_spec
from .paths import TIERS
from .presets import pool_wiring
from .model import (EXTRA_SECTIONS, MAX_DEVICES, MAX_LINKS, MAX_NODES, MAX_SWITCHES,
                       PAGE_SIZE_BYTES, Device, Host, Jitter, Link, Node, Switch, Topology)

_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,31}")
TOP_KEYS = {"name", "description", "host", "node", "switch", "device", "link"}
HOST_KEYS = {"name", "dram_cache", "local_dram_ns", "local_bandwidth_gbps", "forward_ns",
             "threads", "dram_curve"}
NODE_KEYS = {"name"}
SWITCH_KEYS = {"name", "kind", "latency_ns"}
DEVICE_KEYS = {"name", "capacity", "home", "kind", "read_ns", "write_ns", "bandwidth_gbps",
               "jitter", "curve", "tier"}
LINK_KEYS = {"name", "ends", "kind", "gen", "lanes", "rate_gts", "bandwidth_gbps", "latency_ns", "curve"}
JITTER_KEYS = {"none": {"kind"}, "lognormal": {"kind", "sigma"}, "spike": {"kind", "p", "spike_ns"}}


class _File:
    """Error helpers bound to one file."""

    def __init__(self, path: str):
        self.path = path
        self.dir = os.path.dirname(os.path.abspath(path))

    def bad(self, entry: str, problem: str) -> InvalidArgument:
        return InvalidArgument(f"{self.path}: {entry}: {problem}")

    def keys(self, item: dict, allowed: set[str], entry: str) -> None:
        for key in item:
            if key not in allowed:
                raise self.bad(entry, f"unknown key {key!r} (allowed: {', '.join(sorted(allowed))})")

    def number(self, item: dict, key: str, entry: str, default: float, *,
               positive: bool = False) -> float:
        if key not in item:
            return float(default)
        v = item[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise self.bad(entry, f"{key} must be a number, got {v!r}")
        if positive and v <= 0:
            raise self.bad(entry, f"{key} must be > 0, got {v!r}")
        if v < 0:
            raise self.bad(entry, f"{key} must not be negative, got {v!r}")
        return float(v)

    def choice(self, item: dict, key: str, entry: str, default: str, allowed) -> str:
        v = item.get(key, default)
        if v not in allowed:
            raise self.bad(entry, f"{key} {v!r} is not one of: {', '.join(allowed)}")
        return v

    def tables(self, doc: dict, key: str) -> list[dict]:
        v = doc.get(key, [])
        if isinstance(v, dict):
            raise self.bad(key, f"write [[{key}]] (one table per {key}), not [{key}]")
        if not isinstance(v, list) or not all(isinstance(x, dict) for x in v):
            raise self.bad(key, f"write [[{key}]] tables")
        return v

    def name(self, kind: str, i: int, item: dict) -> str:
        n = item.get("name")
        if not isinstance(n, str) or not _NAME_RE.fullmatch(n):
            raise self.bad(f"{kind}[{i}]", "needs a name of up to 32 letters, digits, '_', '.', '-', "
                                           f"starting with a letter (got {n!r})")
        return n


def parse_file(path: str, default_device_bytes: int) -> Topology:
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        raise InvalidArgument(f"{path}: no such topology file") from None
    except IsADirectoryError:
        raise InvalidArgument(f"{path}: is a directory, not a topology file") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidArgument(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise InvalidArgument(f"{path}: not a UTF-8 text file (byte {exc.start}: "
                              f"{exc.reason}); topology files are TOML, which is UTF-8") from None
    except RecursionError:
        raise InvalidArgument(f"{path}: nested too deeply to be a topology file") from None
    except OSError as exc:
        raise InvalidArgument(f"{path}: cannot read: {exc.strerror or exc}") from None
    F = _File(path)

    extra = {}
    for key, value in doc.items():
        if key in TOP_KEYS:
            continue
        if key in EXTRA_SECTIONS:
            if not isinstance(value, dict):
                raise F.bad(key, f"write [{key}] as a table, got {value!r}")
            extra[key] = value
            continue
        raise F.bad("top level", f"unknown key {key!r} (allowed: "
                                 f"{', '.join(sorted(TOP_KEYS | EXTRA_SECTIONS))})")
    for key in ("name", "description"):
        if key in doc and not isinstance(doc[key], str):
            raise F.bad("top level", f"{key} must be a string, got {doc[key]!r}")

    owner: dict[str, str] = {}                 # every name -> "host"/"node"/"switch"/"device"

    def claim(kind: str, name: str) -> None:
        if name in owner:
            raise F.bad(f"{kind} {name}", f"name {name!r} is already used by a {owner[name]} "
                                          "(hosts, nodes, switches and devices share one namespace)")
        owner[name] = kind

    # hosts ---------------------------------------------------------------
    hosts: list[Host] = []
    for i, h in enumerate(F.tables(doc, "host")):
        n = F.name("host", i, h)
        entry = f"host {n}"
        F.keys(h, HOST_KEYS, entry)
        claim("host", n)
        kw = {}
        if "dram_cache" in h:
            kw["dram_cache_bytes"] = parse_size(h["dram_cache"], f"{path}: {entry}: dram_cache",
                                                allow_zero=True)
        kw["local_dram_ns"] = F.number(h, "local_dram_ns", entry, K.LOCAL_DRAM_NS, positive=True)
        kw["local_bandwidth_gbps"] = F.number(h, "local_bandwidth_gbps", entry,
                                              K.LOCAL_DRAM_BANDWIDTH_GBPS, positive=True)
        kw["forward_ns"] = F.number(h, "forward_ns", entry, K.HOST_FORWARD_NS)
        if "threads" in h:   # cores issuing misses (docs/cost-model.md, "Pricing a call")
            t, (_d, _k, lo, hi) = h["threads"], ENGINE_KNOBS["threads"]
            if isinstance(t, bool) or not isinstance(t, int) or not lo <= t <= hi:
                raise F.bad(entry, f"threads must be a whole number between {lo} and {hi}, "
                                   f"got {t!r}")
            kw["threads"] = t
        if "dram_curve" in h:  # the host's own DRAM (docs/cost-model.md, "Host DRAM")
            c = h["dram_curve"]
            if not isinstance(c, str):
                raise F.bad(entry, f"dram_curve must be the name of a built-in curve, got {c!r}")
            try:
                builtin_curve(c, where="dram_curve")
            except InvalidArgument as exc:
                raise F.bad(entry, str(exc)) from None
            kw["dram_curve"] = c
        hosts.append(Host(n, **kw))
    if not hosts:
        raise F.bad("host", "a topology needs at least one [[host]]")

    # memory-only nodes -----------------------------------------------------
    nodes = [Node(h.name) for h in hosts]
    for i, nd in enumerate(F.tables(doc, "node")):
        n = F.name("node", i, nd)
        F.keys(nd, NODE_KEYS, f"node {n}")
        claim("node", n)
        nodes.append(Node(n, is_host=False))
    if len(nodes) > MAX_NODES:
        raise F.bad("host/node", f"{len(nodes)} hosts and nodes; at most {MAX_NODES}")

    # switches --------------------------------------------------------------
    switches: list[Switch] = []
    for i, s in enumerate(F.tables(doc, "switch")):
        n = F.name("switch", i, s)
        entry = f"switch {n}"
        F.keys(s, SWITCH_KEYS, entry)
        claim("switch", n)
        kind = F.choice(s, "kind", entry, "cxl", list(K.SWITCH_KINDS))
        switches.append(Switch(n, kind, F.number(s, "latency_ns", entry, K.SWITCH_KINDS[kind])))
    if len(switches) > MAX_SWITCHES:
        raise F.bad("switch", f"{len(switches)} switches; at most {MAX_SWITCHES}")

    # devices ---------------------------------------------------------------
    devices: list[Device] = []
    for i, d in enumerate(F.tables(doc, "device")):
        n = F.name("device", i, d)
        claim("device", n)
        devices.append(_device(F, d, n, hosts[i % len(hosts)].name, default_device_bytes, owner))
    if not devices:
        raise F.bad("device", "a topology needs at least one [[device]]")
    if len(devices) > MAX_DEVICES:
        raise F.bad("device", f"{len(devices)} devices; at most {MAX_DEVICES}")

    # links -----------------------------------------------------------------
    links: list[Link] = []
    pairs: dict[frozenset, str] = {}
    link_names: set[str] = set()
    for i, item in enumerate(F.tables(doc, "link")):
        link = _link(F, i, item, owner)
        if link.name in link_names:
            raise F.bad(f"link {link.name}", "link name used twice (give one of them a name = ...)")
        link_names.add(link.name)
        pair = frozenset((link.a, link.b))
        if pair in pairs:
            raise F.bad(f"link {link.name}", f"{link.a} and {link.b} are already joined by link "
                                             f"{pairs[pair]}; give one link more lanes or bandwidth")
        pairs[pair] = link.name
        links.append(link)
    if len(links) > MAX_LINKS:
        raise F.bad("link", f"{len(links)} links; at most {MAX_LINKS}")
    if switches and not links:
        raise F.bad("link", "the file declares [[switch]]es but no [[link]]s; join hosts, "
                            "switches and devices with [[link]] ends = [A, B]")
    if not links:
        # A file with no wiring is a switched pool: the parser owns that default.
        sw, ln = pool_wiring(hosts, devices)
        switches, links = list(sw), list(ln)
    else:
        linked = {x for link in links for x in (link.a, link.b)}
        for kind, items in (("host", hosts), ("switch", switches), ("device", devices)):
            for x in items:
                if x.name not in linked:
                    raise F.bad(f"{kind} {x.name}", "not joined by any [[link]]")

    if "engine" in extra:
        _engine(F, extra["engine"])

    stem = os.path.splitext(os.path.basename(path))[0]
    topo = Topology(name=doc.get("name", stem), source=os.path.abspath(path),
                    hosts=tuple(hosts), nodes=tuple(nodes), devices=tuple(devices),
                    extra=extra, switches=tuple(switches), links=tuple(links),
                    description=doc.get("description", ""))
    try:
        topo.paths  # derive now: a device unreachable from a host is an error in the file
    except InvalidArgument as exc:  # name the file as the user wrote it, like every other error
        raise InvalidArgument(str(exc).replace(topo.source, path, 1)) from None
    return topo


def _engine(F: _File, table: dict) -> None:
    """Check an ``[engine]`` table against constants.ENGINE_KNOBS: known keys, type, range."""
    F.keys(table, set(ENGINE_KNOBS), "[engine]")
    for key, value in table.items():
        _default, kind, lo, hi = ENGINE_KNOBS[key]
        if kind == "int":
            ok = isinstance(value, int) and not isinstance(value, bool)
            want = "a whole number"
        else:
            ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
                  and math.isfinite(value))
            want = "a number"
        if not ok:
            raise F.bad("[engine]", f"{key} must be {want}, got {value!r}")
        if not lo <= value <= hi:
            raise F.bad("[engine]", f"{key} must be between {lo} and {hi}, got {value!r}")


def _device(F: _File, d: dict, n: str, default_home: str, default_bytes: int, owner) -> Device:
    entry = f"device {n}"
    F.keys(d, DEVICE_KEYS, entry)
    cap = parse_size(d.get("capacity", default_bytes), f"{F.path}: {entry}: capacity")
    if cap < PAGE_SIZE_BYTES or cap % PAGE_SIZE_BYTES:
        raise F.bad(entry, f"capacity must be a positive multiple of {PAGE_SIZE_BYTES} bytes, got {cap}")
    home = d.get("home", default_home)
    if owner.get(home) not in ("host", "node"):
        raise F.bad(entry, f"home {home!r} is not a host or node")
    kind_name = F.choice(d, "kind", entry, "cxl", list(K.DEVICE_KINDS))
    kind = K.DEVICE_KINDS[kind_name]
    curve = curve_from_spec(d.get("curve", kind.curve or "none"), where=f"{F.path}: {entry}: curve",
                            base_dir=F.dir)
    read_default = kind.read_ns
    if "curve" in d and curve is not None:
        # A curve of its own sets the idle read latency: its pure-read curve's first point.
        read_default = curve.idle_ns(100)
    read_ns = F.number(d, "read_ns", entry, read_default)
    # A store miss reads the line for ownership first and posts the write-back, so its
    # latency is the read latency (kinds.WRITE_IS_RFO); write_ns overrides it.
    write_ns = F.number(d, "write_ns", entry, read_ns)
    bw = F.number(d, "bandwidth_gbps", entry, kind.bandwidth_gbps, positive=True)
    tier = d.get("tier")
    if tier is not None and tier not in TIERS:
        raise F.bad(entry, f"tier {tier!r} is not one of: {', '.join(TIERS)}")
    return Device(n, cap, home, kind_name, read_ns, write_ns, bw, _jitter(F, d.get("jitter"), entry),
                  curve, tier)


def _jitter(F: _File, j: object, entry: str) -> Jitter:
    if j is None:
        return Jitter()
    if not isinstance(j, dict):
        raise F.bad(entry, f"jitter must be a table like {{kind = \"lognormal\", sigma = 0.2}}, got {j!r}")
    where = f"{entry}: jitter"
    kind = F.choice(j, "kind", where, "none", list(JITTER_KEYS))
    F.keys(j, JITTER_KEYS[kind], where)
    if kind == "lognormal":
        if "sigma" not in j:
            raise F.bad(where, "a lognormal jitter needs sigma (e.g. 0.2)")
        return Jitter("lognormal", sigma=F.number(j, "sigma", where, 0.0, positive=True))
    if kind == "spike":
        for key in ("p", "spike_ns"):
            if key not in j:
                raise F.bad(where, f"a spike jitter needs p and spike_ns (missing {key})")
        p = F.number(j, "p", where, 0.0)
        if p > 1:
            raise F.bad(where, f"p is a probability between 0 and 1, got {p!r}")
        return Jitter("spike", p=p, spike_ns=F.number(j, "spike_ns", where, 0.0))
    return Jitter()


def _link(F: _File, i: int, item: dict, owner: dict[str, str]) -> Link:
    ends = item.get("ends")
    label = item.get("name") if isinstance(item.get("name"), str) else None
    if not (isinstance(ends, list) and len(ends) == 2 and all(isinstance(e, str) for e in ends)):
        raise F.bad(f"link {label or f'[{i}]'}", f"needs ends = [\"A\", \"B\"] naming a host, switch "
                                                 f"or device at each end (got {ends!r})")
    a, b = ends
    name = F.name("link", i, item) if "name" in item else f"{a}-{b}"
    entry = f"link {name}"
    F.keys(item, LINK_KEYS, entry)
    for end in (a, b):
        if end not in owner:
            raise F.bad(entry, f"unknown endpoint {end!r} (not a host, switch or device in this file)")
        if owner[end] == "node":
            raise F.bad(entry, f"endpoint {end!r} is a memory-only node; links join hosts, switches "
                               "and devices (a node only homes devices)")
    if a == b:
        raise F.bad(entry, "both ends are the same")
    if owner[a] == owner[b] == "device":
        raise F.bad(entry, "a link cannot join two devices")
    kind_name = F.choice(item, "kind", entry, "cxl", list(K.LINK_KINDS))
    kind = K.LINK_KINDS[kind_name]
    sizing = {"gen": "gen", "rate": "rate_gts"}.get(kind.sized_by)
    for key in ("gen", "lanes", "rate_gts"):
        if key in item and (kind.sized_by == "" or (key != "lanes" and key != sizing)):
            hint = f" (use {sizing})" if sizing and key != sizing else " (give bandwidth_gbps)"
            raise F.bad(entry, f"{key} does not apply to {kind_name} links{hint}")
    gen = lanes = rate = None
    if "bandwidth_gbps" in item:
        given = [k for k in ("gen", "lanes", "rate_gts") if k in item]
        if given:
            raise F.bad(entry, f"give bandwidth_gbps or {'/'.join(given)}, not both")
        bw = F.number(item, "bandwidth_gbps", entry, 0.0, positive=True)
    elif kind.sized_by:
        lanes = item.get("lanes", K.DEFAULT_LANES[kind_name])
        try:
            if kind.sized_by == "gen":
                gen = K.normalise_gen(kind_name, item.get("gen", K.DEFAULT_LINK_GEN[kind_name]))
                bw = K.lane_bandwidth_gbps(kind_name, gen=gen, lanes=lanes)
            else:
                rate = item.get("rate_gts", K.DEFAULT_UCIE_RATE_GTS)
                bw = K.lane_bandwidth_gbps(kind_name, rate_gts=rate, lanes=lanes)
                rate = float(rate)
        except InvalidArgument as exc:
            raise F.bad(entry, str(exc)) from None
    elif kind.bandwidth_gbps is not None:
        bw = kind.bandwidth_gbps
    else:
        raise F.bad(entry, f"a {kind_name} link needs bandwidth_gbps")
    latency = F.number(item, "latency_ns", entry, kind.latency_ns)
    curve = None
    if "curve" in item:
        curve = curve_from_spec(item["curve"], where=f"{F.path}: {entry}: curve", base_dir=F.dir)
    return Link(name, a, b, kind_name, bw, latency, gen, lanes, rate, curve)
