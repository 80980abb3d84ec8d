/*
 * engine.h -- the emulation engine: page cache, cost model, shared contention
 * state, latency histograms, latency injection and calibration.
 *
 * Included by fabric_core.h (the umbrella header); C users include that one.
 * The text between the CDEF markers is handed to cffi's cdef() by
 * csrc/build.py, so it holds only prototypes, plain structs, opaque handles,
 * fixed-width integers and integer #defines.  Below CDEF-END are the C-only
 * declarations the engine's own files share (page-cache entries, segment
 * internals); Python never sees them.
 *
 * The C files, one purpose each:
 *   error.c   fab_strerror: a name for every FAB_E* code (fabric_core.h)
 *   hist.c    log-linear latency histograms (mergeable, 1 ns .. 100 s, <= 1%)
 *   pcache.c  the per-host page cache (hash index, CLOCK/LRU/FIFO, pins)
 *   touch.c   the bounded touch counter behind the "promote" policy
 *   seg.c     the shared-memory segment: contention slots, counters, hists
 *   cost.c    pure cost functions: curves, queueing, jitter, the PRNG
 *   engine.c  regions, the access path, coherence, injection modes, host DRAM
 *   lockstep.c the lockstep group: one virtual timeline across processes
 *             (engine_impl.h: the engine state engine.c and lockstep.c share)
 *   calib.c   calibration of the real machine (DRAM latency, bandwidth, clock)
 * docs/cost-model.md explains the model for a newcomer.
 */
#ifndef FABRIC_ENGINE_H
#define FABRIC_ENGINE_H

#include <stdint.h>
#include <stddef.h>

/* CDEF-BEGIN */
/* Fixed limits (the Python binding checks fabric.constants against these). */
#define FAB_PATH_MAX_LINKS 32            /* links per path */
#define FAB_REGION_MAX_DEVICES 256       /* devices a region may stripe over */
#define FAB_MAX_HOSTS 4096               /* hosts of a topology */
#define FAB_MAX_DEVICES 65535            /* devices of a topology */
#define FAB_MAX_LINKS 65535              /* links of a topology */
#define FAB_DRAM_SLOTS 8                 /* engines attached as one host that see each other's
                                          * load on its local DRAM (engine.c "host DRAM") */

/* Injection modes. */
#define FAB_MODE_OFF     0  /* functional only: charge and count, never wait */
#define FAB_MODE_VIRTUAL 1  /* advance a per-host virtual clock; reproducible */
#define FAB_MODE_SPIN    2  /* really wait on CLOCK_MONOTONIC */

/* Lockstep membership states of a host (lockstep.c). */
#define FAB_LS_ABSENT  0    /* not in the current group */
#define FAB_LS_RUNNING 1    /* in the group, holds the others back at its clock */
#define FAB_LS_PARKED  2    /* in the group, waiting elsewhere: holds no one back */
#define FAB_LS_LEFT    3    /* was in the group, gone (closed, or found dead) */

/* Page-cache eviction policies. */
#define FAB_EVICT_CLOCK 0
#define FAB_EVICT_LRU   1
#define FAB_EVICT_FIFO  2

/* Region policies. */
#define FAB_POLICY_CACHE   0  /* cache every page on miss (far-memory style) */
#define FAB_POLICY_DIRECT  1  /* never cache: every access pays the far cost */
#define FAB_POLICY_PROMOTE 2  /* cache a page after promote_after touches */

/* Region sharing modes. */
#define FAB_SHARE_PRIVATE  0
#define FAB_SHARE_SHARED   1  /* writers publish versions; readers see staleness */
#define FAB_SHARE_COHERENT 2  /* as shared, plus back-invalidation charged to writers */

/* Locality tiers. */
#define FAB_TIER_LOCAL  0  /* host-local DRAM-class memory */
#define FAB_TIER_CACHED 1  /* a far page served from this host's page cache */
#define FAB_TIER_FAR    2  /* CXL-class far memory, paid in full */
#define FAB_TIER_REMOTE 3  /* RDMA-class far memory, paid in full */
#define FAB_NTIERS      4

/* Fault states in the shared segment (seg.c "Faults"). */
#define FAB_DEV_UP          0  /* a device serves accesses */
#define FAB_DEV_UNAVAILABLE 1  /* its node is down: accesses fail with FAB_EUNAVAIL */
#define FAB_DEV_FAILED      2  /* the device itself failed: FAB_EFAILED */
#define FAB_LINK_UP  0
#define FAB_LINK_CUT 1         /* devices behind it are unreachable: FAB_ELINKDOWN */
#define FAB_POISON_MAX 16      /* poisoned ranges a device's table holds */
#define FAB_MAX_DEGRADE 1000000 /* largest link degrade factor */

/* Tail jitter kinds. */
#define FAB_JITTER_NONE      0
#define FAB_JITTER_LOGNORMAL 1
#define FAB_JITTER_SPIKE     2

/* Per host x device counters, in this order (fab_seg_dev_read). */
#define FAB_CTR_ACCESSES           0  /* page accesses */
#define FAB_CTR_BYTES              1  /* bytes asked for */
#define FAB_CTR_HITS               2  /* page accesses served by the page cache */
#define FAB_CTR_MISSES             3  /* page accesses that paid the far cost */
#define FAB_CTR_EVICTIONS          4  /* pages of this device evicted */
#define FAB_CTR_WRITEBACKS         5  /* dirty pages written back to this device */
#define FAB_CTR_INVALIDATIONS      6  /* cached copies found stale (another host wrote) */
#define FAB_CTR_BACK_INVALIDATIONS 7  /* written pages other hosts may hold (coherent) */
#define FAB_CTR_PROMOTIONS         8  /* pages cached by the promote policy */
#define FAB_CTR_INJECTED_NS        9  /* ns attributed to this device (overlaps others) */
#define FAB_CTR_FAR_BYTES          10 /* bytes moved over the fabric (fetch, direct, write-back) */
#define FAB_NCTRS                  11

/* Per host counters, in this order (fab_seg_host_read). */
#define FAB_HCTR_CALLS        0   /* access calls */
#define FAB_HCTR_INJECTED_NS  1   /* sum of charges */
#define FAB_HCTR_VCLOCK_NS    2   /* the host's virtual clock */
#define FAB_HCTR_ATTACHED     3   /* engines attached as this host now */
#define FAB_HCTR_TIER_PAGES   4   /* FAB_NTIERS values */
#define FAB_HCTR_TIER_BYTES   8   /* FAB_NTIERS values */
#define FAB_NHCTRS            12

/* Histogram geometry: values 0..127 ns exact, then 128 sub-buckets per power
 * of two up to 2^37 ns (137 s), so a bucket's midpoint is within 1/256 of any
 * value in it. */
#define FAB_HIST_SUB_BITS 7
#define FAB_HIST_MAX_EXP  36
#define FAB_HIST_BUCKETS  3968
#define FAB_HIST_NSUMMARY 5   /* count, sum_ns, min_ns, max_ns, overflow */

typedef struct fab_hist fab_hist;
typedef struct fab_pcache fab_pcache;
typedef struct fab_seg fab_seg;
typedef struct fab_engine fab_engine;

/* A page-cache entry (a "frame"); fab_pcache_insert copies the victim here. */
typedef struct {
    uint64_t key;        /* global page number */
    void *frame;         /* optional frame pointer (owner-defined, unused by the engine) */
    uint32_t version;    /* version of the copy this host holds */
    uint32_t pins;       /* pin count; pinned frames are never evicted */
    uint32_t prev;       /* LRU/FIFO list: towards the head (more recent) */
    uint32_t next;       /* towards the tail; the free list's link */
    uint16_t dev;        /* device the page lives on (for write-back) */
    uint8_t flags;       /* FAB_PAGE_* */
    uint8_t pad;         /* alignment */
} fab_page;

#define FAB_PAGE_VALID 1
#define FAB_PAGE_DIRTY 2
#define FAB_PAGE_REF   4

/* ---- histograms (hist.c) -------------------------------------------- */
uint64_t fab_hist_size_bytes(void);
int fab_hist_create(fab_hist **out);
void fab_hist_destroy(fab_hist *h);
int fab_hist_record(fab_hist *h, uint64_t value_ns, uint64_t count);
int fab_hist_merge(fab_hist *dst, const fab_hist *src);
int fab_hist_summary(const fab_hist *h, uint64_t *out, uint32_t n);
int fab_hist_percentile(const fab_hist *h, double pct, uint64_t *out_ns);
int fab_hist_buckets(const fab_hist *h, uint64_t *out, uint32_t n);
uint32_t fab_hist_bucket_of(uint64_t value_ns);
uint64_t fab_hist_bucket_low(uint32_t bucket);
uint64_t fab_hist_bucket_value(uint32_t bucket);

/* ---- page cache (pcache.c) ------------------------------------------- */
int fab_pcache_create(uint32_t capacity_pages, uint32_t eviction, fab_pcache **out);
void fab_pcache_destroy(fab_pcache *pc);
int fab_pcache_lookup(fab_pcache *pc, uint64_t key, uint32_t *frame);
int fab_pcache_find(const fab_pcache *pc, uint64_t key, uint32_t *frame);
int fab_pcache_insert(fab_pcache *pc, uint64_t key, uint16_t dev, uint32_t version,
                      uint32_t *frame, fab_page *victim);
int fab_pcache_remove(fab_pcache *pc, uint64_t key, fab_page *removed);
int fab_pcache_pin(fab_pcache *pc, uint64_t key, int32_t delta);
int fab_pcache_set_frame(fab_pcache *pc, uint64_t key, void *frame);
int fab_pcache_get(const fab_pcache *pc, uint32_t frame, fab_page *out);
int fab_pcache_info(const fab_pcache *pc, uint32_t *out, uint32_t n);
/* Walk every invariant of the cache (pcache.c lists them): 0, or FAB_ECORRUPT. */
int fab_pcache_check(const fab_pcache *pc);

/* ---- shared segment (seg.c) ------------------------------------------ */
uint64_t fab_seg_size_bytes(uint32_t nhosts, uint32_t ndevices, uint32_t nlinks);
int fab_seg_create(const char *path, uint32_t nhosts, uint32_t ndevices, uint32_t nlinks);
int fab_seg_open(const char *path, uint32_t nhosts, uint32_t ndevices, uint32_t nlinks,
                 int writable, fab_seg **out);
void fab_seg_close(fab_seg *s);
int fab_seg_host_read(const fab_seg *s, uint32_t host, uint64_t *out, uint32_t n);
int fab_seg_dev_read(const fab_seg *s, uint32_t host, uint32_t dev, uint64_t *out, uint32_t n);
const fab_hist *fab_seg_hist(const fab_seg *s, uint32_t host);
int fab_seg_res_read(const fab_seg *s, uint32_t res, uint64_t window_wall_ns,
                     double *load_gbps, uint32_t *active_hosts, uint64_t *bytes_total);
/* The same for host h's local DRAM: its engines' load, how many were active, bytes moved. */
int fab_seg_dram_read(const fab_seg *s, uint32_t host, uint64_t window_wall_ns,
                      double *load_gbps, uint32_t *active_engines, uint64_t *bytes_total);
/* Faults (written by fault injection in any process, read by every engine's
 * access path; each change bumps the segment's fault generation). */
uint64_t fab_seg_fault_gen(const fab_seg *s);
int fab_seg_dev_set_state(fab_seg *s, uint32_t dev, uint32_t state);
int fab_seg_dev_set_slow(fab_seg *s, uint32_t dev, double stall_p, uint64_t stall_ns);
int fab_seg_dev_faults(const fab_seg *s, uint32_t dev, uint32_t *state, double *stall_p,
                       uint64_t *stall_ns, uint32_t *npoison);
int fab_seg_link_set(fab_seg *s, uint32_t link, uint32_t state, double factor);
int fab_seg_link_faults(const fab_seg *s, uint32_t link, uint32_t *state, double *factor);
/* Poison [off, off + len) of a device (page aligned by the caller's page size;
 * merged with ranges it overlaps or touches): 0, or FAB_ENOMEM when the
 * table is full.  Clearing removes [off, off + len) from every range,
 * splitting one when needed (FAB_ENOMEM, nothing changed, if a split finds
 * the table full). */
int fab_seg_poison_add(fab_seg *s, uint32_t dev, uint64_t off_bytes, uint64_t len_bytes);
int fab_seg_poison_clear(fab_seg *s, uint32_t dev, uint64_t off_bytes, uint64_t len_bytes);
/* The poisoned ranges of a device as (first, end) byte pairs: count, or < 0. */
int fab_seg_poison_read(const fab_seg *s, uint32_t dev, uint64_t *out, uint32_t n);

/* ---- engine (engine.c, cost.c, touch.c) ------------------------------- */
typedef struct {
    uint32_t page_size_bytes;        /* power of two */
    uint32_t nhosts;                 /* hosts, devices and links of the topology */
    uint32_t ndevices;
    uint32_t nlinks;
    uint32_t host;                   /* index of this engine's host */
    uint32_t mode;                   /* FAB_MODE_* */
    uint32_t eviction;               /* FAB_EVICT_* */
    uint32_t mlp_lines;              /* cache lines in flight per core (line-fill buffers) */
    uint64_t seed;                   /* jitter PRNG seed */
    uint64_t cache_pages;            /* page-cache capacity */
    uint32_t max_regions;            /* region table capacity */
    uint32_t touch_entries;          /* promote-policy touch table size */
    double local_dram_ns;            /* host idle DRAM latency */
    double local_bandwidth_gbps;     /* host DRAM bandwidth (GB/s = bytes/ns) */
    double queue_max_factor;         /* cap of the queueing multiplier without a curve */
    uint64_t rate_window_ns;         /* rolling window of the per-host rate estimate */
    uint64_t active_window_ns;       /* sharer activity window, virtual clock */
    uint64_t active_window_wall_ns;  /* sharer activity window, CLOCK_MONOTONIC */
    uint64_t spin_quantum_ns;        /* spin only once this much delay is owed */
    uint64_t spin_slack_ns;          /* gaps shorter than this between calls are overhead */
    double spin_entry_ns;            /* calibrated cost of entering the engine */
    uint32_t page_pass_only;         /* 1: price every access page by page, never from the
                                      * resident summary (same results; benchmarks, tests) */
    uint32_t threads;                /* cores of this host issuing misses: the memory-level
                                      * parallelism of a device is mlp_lines x threads lines */
    uint64_t lockstep_quantum_ns;    /* 0: free-running; else lockstep virtual time in quanta
                                      * of this many ns (virtual mode only; engine.c) */
    uint32_t lockstep_hosts;         /* hosts of the lockstep group (1..nhosts) */
    uint32_t lockstep_timeout_ms;    /* how long one lockstep wait may last; 0: never wait */
} fab_engine_config;

typedef struct {
    double read_ns;                  /* idle media read latency */
    double write_ns;                 /* idle media write latency */
    double bandwidth_gbps;           /* GB/s = bytes per ns */
    uint32_t jitter_kind;            /* FAB_JITTER_* */
    double jitter_sigma;             /* lognormal sigma */
    double jitter_p;                 /* spike probability per latency round */
    double jitter_spike_ns;          /* spike size */
    uint32_t window_lines;           /* lines in flight per round when the device sets its
                                      * own (RDMA verbs: outstanding reads x their size);
                                      * 0: the host's mlp_lines x threads */
    uint32_t pad;                    /* alignment */
} fab_device_params;

typedef struct {
    double latency_ns;               /* what crossing it adds (often 0) */
    double bandwidth_gbps;           /* per direction */
} fab_link_params;

typedef struct {
    double latency_read_ns;          /* idle, complete host -> device latency */
    double latency_write_ns;         /* the same for writes */
    double bandwidth_gbps;           /* path bandwidth cap */
    uint32_t tier;                   /* FAB_TIER_LOCAL | FAR | REMOTE */
    uint32_t first_link;             /* into fab_engine_model.path_links */
    uint32_t nlinks;                 /* links on the path, host side first */
} fab_path_params;

typedef struct {
    uint32_t resource;               /* link index, nlinks + device index, or nlinks + ndevices:
                                      * this host's local DRAM (100% reads only) */
    double read_pct;                 /* 100 = pure reads */
    uint32_t first_point;            /* into fab_engine_model.points */
    uint32_t npoints;                /* bandwidth strictly increasing */
} fab_curve_params;

typedef struct {
    double bandwidth_gbps;           /* load on the element */
    double latency_ns;               /* its latency at that load */
} fab_curve_point;

typedef struct {
    const fab_device_params *devices;  /* ndevices */
    const fab_link_params *links;      /* nlinks */
    const fab_path_params *paths;      /* ndevices: this host's path to each device */
    const uint32_t *path_links;      /* link indices of all paths */
    uint32_t npath_links;
    const fab_curve_params *curves;  /* curve sets of any element */
    uint32_t ncurves;
    const fab_curve_point *points;   /* their points */
    uint32_t npoints;
} fab_engine_model;

int fab_engine_create(const fab_engine_config *cfg, const fab_engine_model *model,
                      const char *seg_path, fab_engine **out);
void fab_engine_destroy(fab_engine *e);
int fab_engine_region_add(fab_engine *e, uint64_t region_id, uint64_t npages,
                          const uint32_t *devs, uint32_t ndevs, uint32_t stripe_pages,
                          uint32_t policy, uint32_t promote_after, uint32_t share,
                          const char *versions_path);
int64_t fab_engine_region_remove(fab_engine *e, uint64_t region_id);
int64_t fab_engine_access(fab_engine *e, uint64_t region_id, uint64_t offset_bytes,
                          uint64_t nbytes, int write);
int64_t fab_engine_advance(fab_engine *e, uint64_t ns);
uint64_t fab_engine_virtual_time(const fab_engine *e);
int fab_engine_pin(fab_engine *e, uint64_t region_id, uint64_t first_page,
                   uint64_t npages, int32_t delta);
int fab_engine_set_frame(fab_engine *e, uint64_t region_id, uint64_t page, void *frame);
int fab_engine_page_state(const fab_engine *e, uint64_t region_id, uint64_t page,
                          uint32_t *out, uint32_t n);
int fab_engine_cache_info(const fab_engine *e, uint32_t *out, uint32_t n);
/* fab_pcache_check plus the engine's per-region page counts: 0, or FAB_ECORRUPT. */
int fab_engine_check(fab_engine *e);
const fab_seg *fab_engine_segment(const fab_engine *e);
int fab_engine_loaded_latency(fab_engine *e, uint32_t dev, int write, double *latency_ns);
/* This host's local DRAM now (engine.c "host DRAM"): the latency a hit pays
 * at the current load (no bytes), our share of its bandwidth, and the slot
 * this engine publishes in (FAB_DRAM_SLOTS when every slot was taken). */
int fab_engine_dram_state(fab_engine *e, double *latency_ns, double *share_gbps, uint32_t *slot);
/* Where region id's stripes lie on their devices (dev_offsets[i] for the
 * region's i-th device, as fab_map_stripes takes them): needed for poison,
 * which the segment keeps by device offset.  A region never placed is not
 * checked for poison. */
int fab_engine_region_place(fab_engine *e, uint64_t region_id, const uint64_t *dev_offsets,
                            uint32_t n);
/* What the last access that failed with a fault code met: out[0] the code,
 * out[1] the device index, out[2] the link index (UINT64_MAX if none),
 * out[3] the poisoned byte offset in the region (UINT64_MAX if none). */
int fab_engine_last_fault(const fab_engine *e, uint64_t *out, uint32_t n);

/* Lockstep virtual time (lockstep.c; an engine created with lockstep_quantum_ns
 * joined its group at create).  park: this host is about to wait on something
 * outside the engine, so it stops holding the others back (first, if it has
 * values to snapshot, it waits for them to reach its quantum); unpark: it
 * rejoins at the latest clock of the
 * running hosts (or, if a release already woke it, at the clock given there).
 * release: set the listed parked hosts running at clock_ns (a barrier's last
 * arrival releases everyone at the latest arrival's clock).  leave: the host
 * quits the group (also done by destroy, without waiting).  Each returns 0, or
 * FAB_ELOCKSTEP when a wait passed its deadline, FAB_EINVAL without lockstep. */
int fab_engine_lockstep_park(fab_engine *e);
int fab_engine_lockstep_unpark(fab_engine *e);
int fab_engine_lockstep_release(fab_engine *e, const uint32_t *hosts, uint32_t n,
                                uint64_t clock_ns);
int fab_engine_lockstep_leave(fab_engine *e);
/* out[0..10]: group generation, group size, joined, quantum ns, this host's
 * state, waits that blocked, ns (CLOCK_MONOTONIC) spent in them, and what the
 * last failed wait met: reason (1 hosts missing from the group, 2 a host behind,
 * 3 a host behind driven by this same thread), host index (UINT64_MAX if
 * none), its clock, the clock it had to reach. */
int fab_engine_lockstep_info(const fab_engine *e, uint64_t *out, uint32_t n);
/* One host's lockstep line as any process sees it: out[0..5] = in the current
 * group (0/1), FAB_LS_* state, published clock, pid, its waits that blocked
 * and the real ns spent in them. */
int fab_seg_lockstep_host(const fab_seg *s, uint32_t host, uint64_t *out, uint32_t n);

/* ---- calibration (calib.c) ------------------------------------------- */
int fab_calib_chase(uint64_t buf_bytes, uint64_t steps, uint64_t seed, double *ns_per_load);
int fab_calib_bandwidth(uint64_t buf_bytes, uint32_t reps, double *gbps);
int fab_calib_clock(uint32_t iters, double *ns_per_read);
int fab_calib_spin(uint64_t wait_ns, uint32_t reps, double *mean_overshoot_ns);
/* CDEF-END */

/* ===== C-only declarations shared by the engine's files ================ */
#include <stdatomic.h>

#define FAB_NIL UINT32_MAX               /* "no frame" in page-cache links */

/* Page cache: direct access to an entry for the engine's hot path. */
fab_page *fab_pcache_page(fab_pcache *pc, uint32_t frame);
uint32_t fab_pcache_capacity(const fab_pcache *pc);
uint32_t fab_pcache_pinned_frames(const fab_pcache *pc);
uint32_t fab_pcache_used(const fab_pcache *pc);

/* Touch table (touch.c): bounded per-page touch counts for "promote". */
typedef struct fab_touch fab_touch;
int fab_touch_create(uint32_t entries, fab_touch **out);
void fab_touch_destroy(fab_touch *t);
uint32_t fab_touch_entries(const fab_touch *t);
uint32_t fab_touch_bump(fab_touch *t, uint64_t key);
void fab_touch_forget(fab_touch *t, uint64_t key);
void fab_touch_forget_prefix(fab_touch *t, uint64_t key_hi32);

/* Histograms live in the segment too: zeroed memory is an empty histogram. */
struct fab_hist {
    _Atomic uint64_t count;              /* values recorded */
    _Atomic uint64_t sum_ns;             /* their sum */
    _Atomic uint64_t min_inv;            /* UINT64_MAX - min, so zero means "none yet" */
    _Atomic uint64_t max_ns;             /* exact maximum */
    _Atomic uint64_t overflow;           /* values clamped to the top bucket */
    uint64_t pad[3];                     /* buckets start on a cache line */
    _Atomic uint64_t buckets[FAB_HIST_BUCKETS];
};

/* Lockstep snapshot of a slot's contention values as of a quantum boundary
 * (lockstep.c): written only by the slot's host, read under a sequence check. */
struct fab_res_copy {
    _Atomic uint64_t tag;                /* 1 + the first quantum it holds for; 0 while written */
    _Atomic uint64_t genseq;             /* group generation << 32 | write count */
    _Atomic uint64_t last_virtual_ns;    /* the slot's values at that boundary */
    _Atomic uint64_t rate_bits;
    _Atomic uint64_t wrate_bits;
};

/* Shared segment: one slot per (resource, host), written only by that host. */
struct fab_res_slot {
    _Atomic uint64_t last_virtual_ns;    /* end of its last access, virtual clock, +1 (0 = never) */
    _Atomic uint64_t last_wall_ns;       /* same, CLOCK_MONOTONIC, +1 */
    _Atomic uint64_t rate_bits;          /* published rate in bytes/ns (a double's bits) */
    _Atomic uint64_t bytes_total;        /* bytes this host moved through the resource */
    _Atomic uint64_t wrate_bits;         /* the write (host -> device) part of rate_bits */
    struct fab_res_copy snap[2];         /* lockstep: the values as of two quantum boundaries */
    uint64_t pad[1];                     /* two cache lines per slot: no false sharing */
};

/* Lockstep block (seg.c layout, engine.c protocol): one head line, then one
 * line per host.  A host line counts only while its gen equals the head's. */
struct fab_ls_head {
    _Atomic uint64_t lock;               /* 0, or the pid editing membership */
    _Atomic uint64_t gen;                /* group generation: a fresh group bumps it */
    _Atomic uint64_t size;               /* hosts the group waits for */
    _Atomic uint64_t quantum_ns;         /* its quantum */
    _Atomic uint64_t joined;             /* hosts that joined this group */
    _Atomic uint64_t epoch;              /* bumped by every membership or state change */
    _Atomic uint32_t futex;              /* bumped whenever a waiter may be able to go on */
    _Atomic uint32_t sleepers;           /* processes asleep on futex */
    uint64_t pad;
};

struct fab_ls_host {
    _Atomic uint64_t gen;                /* the group this line belongs to */
    _Atomic uint64_t state;              /* FAB_LS_* */
    _Atomic uint64_t clock_ns;           /* published virtual clock */
    _Atomic uint64_t pid;                /* the process driving the host */
    _Atomic uint64_t thread;             /* a token of the thread that last drove it */
    _Atomic uint64_t waits;              /* its waits that blocked (for `fabric stats`) */
    _Atomic uint64_t wait_ns;            /* real ns spent in them */
    uint64_t pad;
};

/* A host's local DRAM (seg.c "host DRAM"): slot i belongs to the engine whose
 * token is in owner[i] (0: free). */
struct fab_dram_block {
    _Atomic uint64_t owner[FAB_DRAM_SLOTS];
    struct fab_res_slot slot[FAB_DRAM_SLOTS];
};

struct fab_seg_host {
    _Atomic uint64_t ctr[FAB_NHCTRS];    /* FAB_HCTR_* */
    uint64_t pad[4];                     /* the histogram starts on a cache line */
    struct fab_hist hist;                /* charged ns per access call */
    /* followed by ndevices x FAB_NCTRS _Atomic uint64_t */
};

/* Fault state (seg.c "Faults"): one block per device and per link, after
 * the host blocks, plus the generation word every change bumps. */
struct fab_poison_range {
    _Atomic uint64_t first;              /* byte offset on the device */
    _Atomic uint64_t end;                /* one past the last byte; first < end when in use */
};

struct fab_seg_dev_fault {
    _Atomic uint64_t state;              /* FAB_DEV_* */
    _Atomic uint64_t stall_p_bits;       /* slow device: stall probability per round (a double) */
    _Atomic uint64_t stall_ns;           /* and the stall's size */
    _Atomic uint64_t lock;               /* poison table sequence: odd while being edited */
    _Atomic uint64_t npoison;            /* ranges in use: poison[0 .. npoison) */
    uint64_t pad[3];                     /* the table starts on a cache line */
    struct fab_poison_range poison[FAB_POISON_MAX];
};

struct fab_seg_link_fault {
    _Atomic uint64_t state;              /* FAB_LINK_* */
    _Atomic uint64_t factor_bits;        /* degrade factor k >= 1 (a double; 0 bits = 1) */
    uint64_t pad[6];                     /* one cache line */
};

/* Addresses inside the segment; NULL for an index outside its dims (so no
 * caller can reach outside the mapping).  C-only: the engine passes indices
 * it checked at create and asserts the result. */
struct fab_res_slot *fab_seg_slot(fab_seg *s, uint32_t res, uint32_t host);
struct fab_seg_host *fab_seg_host_block(fab_seg *s, uint32_t host);
_Atomic uint64_t *fab_seg_dev_ctrs(fab_seg *s, uint32_t host, uint32_t dev);
struct fab_seg_dev_fault *fab_seg_dev_fault(fab_seg *s, uint32_t dev);
struct fab_seg_link_fault *fab_seg_link_fault(fab_seg *s, uint32_t link);
_Atomic uint64_t *fab_seg_gen_word(fab_seg *s);
struct fab_ls_head *fab_seg_ls_head(fab_seg *s);
struct fab_ls_host *fab_seg_ls_host(fab_seg *s, uint32_t host);
struct fab_dram_block *fab_seg_dram_block(fab_seg *s, uint32_t host);
uint32_t fab_seg_nhosts(const fab_seg *s);
/* Copy a device's poisoned ranges (a consistent copy, without writing to the
 * segment): count, or FAB_EBUSY. */
int fab_seg_poison_copy(fab_seg *s, uint32_t dev, uint64_t *first, uint64_t *end);

/* Cost functions (cost.c). */
typedef struct { uint64_t s[4]; } fab_rng;
void fab_rng_seed(fab_rng *r, uint64_t seed);
uint64_t fab_rng_next(fab_rng *r);
double fab_rng_uniform(fab_rng *r);
double fab_rng_normal(fab_rng *r);
uint64_t fab_mix64(uint64_t x);
double fab_cost_curve_ns(const fab_curve_point *pts, uint32_t n, double load_gbps);
double fab_cost_queue_excess_ns(double base_ns, double rho, double max_factor);
double fab_cost_rounds_ns(const fab_device_params *d, fab_rng *r, uint64_t rounds,
                          double latency_ns);
double fab_cost_stalls_ns(fab_rng *r, uint64_t rounds, double p, double stall_ns);
uint64_t fab_clock_wall_ns(void);

#endif /* FABRIC_ENGINE_H */
