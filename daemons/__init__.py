"""The daemons of cxl-fabric: the fabric manager and the node daemon.

This folder sits beside ``fabric/`` in the source tree and is installed as
the subpackage ``fabric.daemons`` (setup.py maps it).  Each daemon runs as its
own process (``python -m fabric.daemons.manager``, ``python -m
fabric.daemons.node``), started by ``fabric up`` or ``fabric.Cluster.start``.

- :mod:`.base` -- what every daemon shares: the ROUTER loop, command dispatch,
  the :class:`~.base.Request` context, logs, signals;
- :mod:`.manager` -- the fabric manager (a package: commands, directory,
  placement, scrubs, sessions);
- :mod:`.node` -- the node daemon that owns the device files of one node;
- :mod:`.alloc` -- the first-fit extent allocator of one device;
- :mod:`.netfault` -- injected message faults and partitions, as each daemon applies them.
"""
