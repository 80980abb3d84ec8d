"""cxl-fabric: emulate a CXL/UCIe disaggregated memory fabric on one machine.

    import fabric
    with fabric.Cluster.start(hosts=2) as cluster:
        h0 = cluster.connect("h0")
        w = h0.alloc("weights", 1 << 20, share="shared").ndarray("f4", (512, 512))

See README.md for the quickstart and docs/ for the protocol and the model.
"""
from importlib import metadata as _metadata

from . import errors
from .client import Session, connect
from .cluster import Cluster
from .errors import (AccessDenied, FabricError, FabricTimeout, InvalidArgument, NodeUnavailable,
                     PoolFull, ProtocolError, RegionExists, RegionNotFound, ResourceExhausted,
                     SessionClosed)
from .region import Region

try:  # one version, in pyproject.toml; read from the installed metadata
    __version__ = _metadata.version("cxl-fabric")
except _metadata.PackageNotFoundError:  # pragma: no cover - running from an uninstalled tree
    __version__ = "0+unknown"

__all__ = [
    "connect", "Session", "Region", "Cluster", "errors",
    "FabricError", "PoolFull", "RegionNotFound", "RegionExists", "AccessDenied",
    "FabricTimeout", "NodeUnavailable", "ProtocolError", "InvalidArgument", "SessionClosed",
    "ResourceExhausted",
    "__version__",
]
