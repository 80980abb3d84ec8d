"""cxl-fabric: emulate a CXL/UCIe disaggregated memory fabric on one machine.

    import fabric
    with fabric.Cluster.start(hosts=2) as cluster:
        h0 = cluster.connect("h0")
        w = h0.alloc("weights", 1 << 20, share="shared").ndarray("f4", (512, 512))

See README.md for the quickstart and docs/ for the protocol and the model.
"""
from . import errors
from .client import Session, connect
from .cluster import Cluster
from .errors import (AccessDenied, FabricError, FabricTimeout, InvalidArgument, NodeUnavailable,
                     PoolFull, ProtocolError, RegionExists, RegionNotFound)
from .region import Region

__version__ = "0.1.0"

__all__ = [
    "connect", "Session", "Region", "Cluster", "errors",
    "FabricError", "PoolFull", "RegionNotFound", "RegionExists", "AccessDenied",
    "FabricTimeout", "NodeUnavailable", "ProtocolError", "InvalidArgument",
    "__version__",
]
