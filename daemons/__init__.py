"""The daemons of cxl-fabric: the fabric manager and the node daemon.

This folder sits beside ``fabric/`` in the source tree and is installed as
the subpackage ``fabric.daemons`` (setup.py maps it).  Each daemon runs as its
own process (``python -m fabric.daemons.manager``, ``python -m
fabric.daemons.node``), started by ``fabric up`` or ``fabric.Cluster.start``.
"""
