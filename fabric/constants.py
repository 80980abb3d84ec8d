"""Names and defaults shared by the client, the CLI, the daemons and the engine, defined once.

Every enumeration a user can pass (placements, share modes, policies,
evictions, injection modes) and every default more than one module needs
(heartbeats, deadlines, engine knobs) lives here; the rest of the project
imports them instead of retyping them.  Units are last in every name.
"""
from __future__ import annotations

# -- enumerations (the order of the C FAB_* constants where the C has them) ---------
#: Where a region's bytes go: a device homed on the host, striped over devices,
#: or a device name (any other string).
PLACEMENTS = ("local", "interleave")
#: Who may touch a region: the owner only; others read (writes by grant); all allowed hosts write.
SHARE_MODES = ("private", "shared", "coherent")
#: How a host caches a region's far pages (FAB_POLICY_*).
POLICIES = ("cache", "direct", "promote")
#: Page-cache eviction (FAB_EVICT_*).
EVICTIONS = ("clock", "lru", "fifo")
#: How modelled delays are applied (FAB_MODE_*).
INJECT_MODES = ("off", "virtual", "spin")
#: A host's place in a lockstep group (FAB_LS_*; docs/cost-model.md, "Time bases").
LOCKSTEP_STATES = ("absent", "running", "parked", "left")
#: Access rights a region grants another host.
ACCESS_MODES = ("r", "rw")

# -- defaults ----------------------------------------------------------------------
DEFAULT_INJECT = "virtual"
DEFAULT_POLICY = "cache"
DEFAULT_EVICTION = "clock"
DEFAULT_PROMOTE_AFTER = 2
DEFAULT_SHARE = "private"
DEFAULT_PLACEMENT = "local"
#: Interleave stripe size when none is given.
DEFAULT_GRANULARITY_BYTES = 64 << 10
#: Stripes per region: each is one VMA in every mapper (vm.max_map_count is ~65k).
MAX_STRIPES = 16384
#: Longest region name.
MAX_NAME_LEN = 200

#: How long a node may stay silent before the manager marks it unavailable
#: (`fabric up --node-timeout`); node daemons beat MISSED_BEATS times in that span.
DEFAULT_NODE_TIMEOUT_MS = 1000
MIN_NODE_TIMEOUT_MS = 100
MAX_NODE_TIMEOUT_MS = 600_000
MISSED_BEATS = 3
#: A node's beat interval until the manager tells it the cluster's.
HEARTBEAT_INTERVAL_S = DEFAULT_NODE_TIMEOUT_MS / 1000 / MISSED_BEATS
#: Most extents one SCRUB message carries (the manager batches freed extents per node).
MAX_SCRUB_EXTENTS = 64

#: Every request's deadline unless the caller sets one, and the longest allowed.
DEFAULT_TIMEOUT_MS = 5000
MAX_TIMEOUT_MS = 600_000
#: `fabric up` / Cluster.start waits this long for every daemon to answer.
START_TIMEOUT_S = 30.0
#: `fabric down` waits this long after SIGTERM before SIGKILL.
STOP_TIMEOUT_S = 10.0

#: Lockstep virtual time: the quantum `lockstep_ns=True` stands for -- half the 20 us
#: rate window (others' published rates change at most once per window, so a finer
#: quantum buys little accuracy for many more waits; docs/cost-model.md, "Time bases")
#: -- how long one lockstep wait may last by default, and at most.
DEFAULT_LOCKSTEP_NS = 10_000
DEFAULT_LOCKSTEP_TIMEOUT_MS = 10_000
MAX_LOCKSTEP_TIMEOUT_MS = 3_600_000

#: Seeds are unsigned 64-bit (the C PRNG's state is seeded from one).
MAX_SEED = (1 << 64) - 1

# -- engine knobs (a topology file's [engine] table) --------------------------------
#: name -> (default, kind, lowest, highest).  kind is "int" or "float"; the
#: parser (fabric.topology.parse) and the binding (fabric._binding.engine)
#: both validate against this one table.
ENGINE_KNOBS: dict[str, tuple] = {
    # Memory-level parallelism: cache lines one core keeps in flight (its L1D line-fill
    # buffers: 10 on Intel Nehalem..Haswell, 16 on Golden Cove, per Intel's optimization
    # reference manual), times
    # the cores of a host issuing misses (`threads`; a host table may override it).  The
    # default host is one socket of the Mess reference Skylake (Xeon 8160, 24 cores).
    "mlp_lines": (12, "int", 1, 1 << 20),
    "threads": (24, "int", 1, 1 << 20),
    "queue_max_factor": (6.0, "float", 1.0, 1e6),          # M/M/1 cap (Mess CXL: 1285 / 226 = 5.7)
    "rate_window_ns": (20_000, "int", 1, 1 << 62),         # per-host rate estimate window
    "active_window_ns": (100_000, "int", 1, 1 << 62),      # sharer activity window, virtual clock
    "active_window_wall_ns": (30_000_000, "int", 1, 1 << 62),  # the same on CLOCK_MONOTONIC
    "spin_quantum_ns": (250, "int", 0, 1 << 62),           # spin once this much delay is owed
    "spin_slack_ns": (1_000, "int", 0, 1 << 40),           # shorter gaps are overhead, not compute
    "max_regions": (1024, "int", 1, 1 << 24),              # regions one host's engine can hold
}
ENGINE_DEFAULTS: dict[str, int | float] = {k: v[0] for k, v in ENGINE_KNOBS.items()}
#: Per host x device engine counters, in the order of the C FAB_CTR_* constants.
ENGINE_COUNTERS = ("accesses", "bytes", "hits", "misses", "evictions", "writebacks",
                   "invalidations", "back_invalidations", "promotions", "injected_ns", "far_bytes")
#: Locality tiers, in the order of FAB_TIER_*; "cached" is a far page served from
#: the host's page cache (never a path's tier).
TIERS = ("local", "cached", "far", "remote")
#: Links one host -> device path may cross (FAB_PATH_MAX_LINKS in csrc/engine.h).
MAX_PATH_LINKS = 32
#: Devices one region may stripe over (FAB_REGION_MAX_DEVICES).
MAX_REGION_DEVICES = 256
