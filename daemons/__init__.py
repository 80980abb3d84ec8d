"""The daemons of cxl-fabric: the fabric manager and the node daemon.

Each runs as its own process (``python -m daemons.manager``, ``python -m
daemons.node``), started by ``fabric up`` or ``fabric.Cluster.start``.
"""
