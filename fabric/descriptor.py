"""The region descriptor: what the fabric manager says about a region, typed.

The manager keeps one :class:`RegionDescriptor` per region, sends it as a
msgpack map (:meth:`to_wire`) in replies to ALLOC, OPEN and LIST, and the
client rebuilds it (:meth:`from_wire`) for :class:`fabric.Region`.  One
definition, so the manager, the client and ``Region`` cannot drift apart.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Any

from .errors import ProtocolError


@dataclass(frozen=True)
class RegionDescriptor:
    id: int                               # region id, unique for the cluster's life
    name: str
    address: int                          # global base address
    nbytes: int                           # size asked for
    share: str                            # constants.SHARE_MODES
    owner: str                            # host that allocated it
    allow: dict | None                    # host -> "r" | "rw"; None = the share mode's default
    placement: str                        # "local" | "interleave" | "device"
    devices: tuple[str, ...]              # devices it spans, in stripe order
    offsets: tuple[int, ...]              # byte offset of its extent on each device
    stripe_bytes: int                     # bytes per stripe (the whole extent when not striped)
    nstripes: int                         # stripes in all
    created: float = 0.0                  # unix time of the allocation
    access: str | None = None             # the asking host's rights ("r" | "rw"), if any
    # mirror=2: the second copy, same stripes, on devices homed on other nodes than the
    # primary's (empty: not mirrored).  Plain fields with defaults, so journals record them.
    mirror_devices: tuple[str, ...] = ()
    mirror_offsets: tuple[int, ...] = ()
    extra: dict = field(default_factory=dict, compare=False)  # keys newer peers send

    @property
    def mirrored(self) -> bool:
        """Whether the region has a second copy (``alloc(..., mirror=2)``)."""
        return bool(self.mirror_devices)

    @property
    def mapped_bytes(self) -> int:
        """Bytes the region occupies once mapped: whole stripes."""
        return self.stripe_bytes * self.nstripes

    def extent_bytes(self, i: int) -> int:
        """Bytes of the region on its i-th device."""
        k = len(self.devices)
        return ((self.nstripes - i + k - 1) // k) * self.stripe_bytes

    def access_for(self, host: str) -> str | None:
        """The rights ``host`` has on the region: "rw", "r" or None."""
        if host == self.owner:
            return "rw"
        if self.share == "private":
            return None
        if self.allow is None:
            return "r" if self.share == "shared" else "rw"
        return self.allow.get(host)

    def for_host(self, host: str | None) -> "RegionDescriptor":
        """This descriptor with ``access`` set for ``host`` (None: no access field)."""
        return dataclasses.replace(self, access=None if host is None else self.access_for(host))

    @functools.cached_property
    def _wire(self) -> dict:
        """The wire map, built once per descriptor (the manager sends one per ALLOC,
        OPEN and LIST entry, and journals it); :meth:`to_wire` hands out copies."""
        d = {name: getattr(self, name) for name in _WIRE_FIELDS}
        d["devices"], d["offsets"] = list(self.devices), list(self.offsets)
        if self.mirror_devices:      # sent only for mirrored regions: the wire stays as it was
            d["mirror_devices"] = list(self.mirror_devices)
            d["mirror_offsets"] = list(self.mirror_offsets)
        else:
            del d["mirror_devices"], d["mirror_offsets"]
        d["mapped_bytes"] = self.mapped_bytes
        if self.access is None:
            del d["access"]
        return d

    def to_wire(self) -> dict:
        """The descriptor as a msgpack-ready map (a fresh one: callers may change it)."""
        d = dict(self._wire)
        d["devices"], d["offsets"] = list(self.devices), list(self.offsets)
        if self.mirror_devices:
            d["mirror_devices"] = list(self.mirror_devices)
            d["mirror_offsets"] = list(self.mirror_offsets)
        if self.allow is not None:
            d["allow"] = dict(self.allow)
        return d

    def wire_for(self, host: str | None) -> dict:
        """``for_host(host).to_wire()``, without building a new descriptor: the
        manager answers every OPEN with it, so it stays cheap."""
        d = self.to_wire()
        d.pop("access", None)
        if host is not None:
            d["access"] = self.access_for(host)
        return d

    @classmethod
    def from_wire(cls, d: Any) -> "RegionDescriptor":
        """Rebuild from a wire map; ProtocolError if it is not one."""
        if not isinstance(d, dict):
            raise ProtocolError("region descriptor is not a map")
        names = _WIRE_FIELDS
        try:
            kw = {k: d[k] for k in names if k in d}
            kw["devices"], kw["offsets"] = tuple(d["devices"]), tuple(d["offsets"])
            kw["mirror_devices"] = tuple(d.get("mirror_devices") or ())
            kw["mirror_offsets"] = tuple(d.get("mirror_offsets") or ())
            if len(kw["mirror_devices"]) not in (0, len(kw["devices"])) or \
                    len(kw["mirror_offsets"]) != len(kw["mirror_devices"]):
                raise TypeError("mirror_devices and mirror_offsets must match devices")
            missing = _REQUIRED - kw.keys()
            if missing:
                raise KeyError(sorted(missing)[0])
            kw["extra"] = {k: v for k, v in d.items() if k not in names and k != "mapped_bytes"}
        except (KeyError, TypeError) as exc:
            raise ProtocolError(f"malformed region descriptor: {exc}") from None
        # Every client attach makes one: filled like __init__ would, without its 18
        # frozen-field setattr calls.
        obj = object.__new__(cls)
        obj.__dict__.update(_DEFAULTS)
        obj.__dict__.update(kw)
        return obj


#: The fields that travel (everything but ``extra``), computed once.
_WIRE_FIELDS = frozenset(f.name for f in dataclasses.fields(RegionDescriptor)) - {"extra"}
#: Fields without a default (a wire map must carry them), and the others' defaults.
_REQUIRED = frozenset(f.name for f in dataclasses.fields(RegionDescriptor)
                      if f.default is dataclasses.MISSING
                      and f.default_factory is dataclasses.MISSING)
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(RegionDescriptor)
             if f.default is not dataclasses.MISSING}
