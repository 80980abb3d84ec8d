/*
 * engine_impl.h -- the engine's private state, shared by the files that make
 * up the engine (engine.c: regions, pricing, faults, the access path;
 * lockstep.c: the lockstep group).  Nothing outside csrc/ includes it.
 */
#ifndef FABRIC_ENGINE_IMPL_H
#define FABRIC_ENGINE_IMPL_H

#include <assert.h>
#include <stdint.h>

#include "fabric_core.h"

#define SLEEP_ABOVE_NS  200000u   /* waits longer than this sleep first ... */
#define SLEEP_MARGIN_NS 100000u   /* ... and wake this early to spin the rest */
/* Without a curve an element queues like M/M/1 with a service time of its idle
 * latency plus one 64-byte line's serialisation (the unit CXL/PCIe links and
 * memory controllers move), so a zero-latency link adds almost nothing until
 * its bandwidth share runs out, and a device rises as idle / (1 - rho). */
#define QUEUE_UNIT_BYTES 64.0
#define MAX_CHARGE_NS 1e18        /* ~31 years: the most one call can be charged */
/* Each call through an element weighs this much less in our read/write mix
 * afterwards (a power of two: exact in binary floating point). */
#define MIX_DECAY 0.875

struct region {
    uint64_t id;                 /* region id (< 2^32) */
    uint32_t used;               /* table slot in use */
    uint32_t npages;             /* pages in the region */
    uint32_t stripe_pages;       /* pages per stripe */
    uint32_t ndevs;              /* devices striped over */
    uint32_t policy;             /* FAB_POLICY_* */
    uint32_t share;              /* FAB_SHARE_* */
    uint32_t promote_after;      /* touches before a promote page is cached */
    uint32_t resident;           /* its pages in the page cache (<= npages, <= capacity) */
    uint32_t pinned;             /* of those, pages with pins > 0 (<= resident) */
    uint32_t touched;            /* 1 once the touch table may hold one of its pages */
    uint32_t check_resident;     /* scratch of fab_engine_check: frames counted */
    uint32_t check_pinned;       /* scratch of fab_engine_check: pinned frames counted */
    uint32_t dref_lo, dref_hi;   /* CLOCK: the words [lo, hi) of dref that may be non-zero */
    uint32_t ref_pending;        /* 1 while its id is in the engine's pend list */
    uint32_t check_pend;         /* scratch of fab_engine_check: seen in the pend list */
    uint64_t *rbits;             /* ceil(npages / 64) words: bit p set iff page p is resident */
    uint64_t *dref;              /* CLOCK: ceil(npages / 64) words, bit p set iff a summary
                                  * read hit page p and its frame's reference bit is deferred;
                                  * NULL under LRU and FIFO */
    uint32_t *cver;              /* shared: npages, the version each resident page's frame
                                  * holds (mirror of fab_page.version), or NULL (private) */
    uint16_t *devs;              /* ndevs device indices, stripe order */
    _Atomic uint32_t *versions;  /* npages shared versions, or NULL (private) */
    _Atomic uint32_t *holders;   /* npages "may hold" masks, or NULL */
    uint64_t *dev_off;           /* ndevs byte offsets of its extents on its devices
                                  * (fab_engine_region_place), or NULL: no poison check */
    void *map;                   /* the version file mapping (>= 8 * npages bytes) */
    uint64_t map_bytes;          /* its length */
    uint64_t stream_next;        /* 1 + the byte offset where our last access to it ended
                                  * (0: none yet): an access starting there continues the
                                  * stream, and its first latency round is hidden */
};

struct res {                     /* a link or a device, as a contended element */
    double bandwidth_gbps;       /* its bandwidth (bytes/ns) */
    double base_read_ns;         /* queueing base without a curve: idle + 64 B / bw */
    double base_write_ns;        /* the same for writes */
    int32_t curve_read;          /* curve set nearest 100% reads, or -1 */
    int32_t curve_write;         /* curve set nearest 0% reads, or -1 */
    uint64_t win_start_ns;       /* our rate window (rate clock) */
    uint64_t win_bytes;          /* bytes we moved in it (both directions) */
    uint64_t win_wbytes;         /* of those, host -> device (writes) */
    double my_rate;              /* our last published rate, bytes/ns */
    double my_wrate;             /* its write part */
    double mix_r, mix_w;         /* our read and write bytes through it, decayed by
                                  * MIX_DECAY per call that uses it: our recent mix */
    uint64_t call_bytes;         /* scratch: bytes this call moves through it */
    uint64_t call_wbytes;        /* scratch: of those, writes */
    double load_gbps;            /* scratch: total load seen this call */
    double load_w_gbps;          /* scratch: its write (host -> device) part */
    double others_gbps;          /* scratch: the part of the load other hosts publish */
    double others_w_gbps;        /* scratch: its write part */
    double read_frac;            /* scratch: read fraction of the traffic through it */
    double cap_gbps;             /* scratch: what it carries at that mix */
    double share_gbps;           /* scratch: our bandwidth share this call */
    uint32_t touched;            /* scratch: in the touched list */
    uint32_t is_dev;             /* a device (else a link) */
    uint32_t mix_first;          /* devices: first of its curve sets in e->mixsets */
    uint32_t nmix;               /* their count (ascending read_pct, distinct) */
    uint32_t ls_dirty;           /* lockstep: our slot changed since our last snapshot */
    uint32_t pad;                /* alignment */
};

struct dacc {                    /* per-device scratch of one call */
    uint64_t c[FAB_NCTRS];       /* counters to flush */
    uint64_t hit_bytes;          /* bytes served by hits */
    uint64_t wbytes;             /* of the far bytes, those moved host -> device */
    uint64_t reads, writes, bis; /* far operations in 64-byte lines (a back-invalidation
                                  * is one line) */
    uint32_t touched;            /* in the touched list */
    uint32_t pad;                /* alignment */
};

struct edev {                    /* a device as this host sees it */
    fab_device_params p;         /* its parameters (latency, bandwidth, jitter) */
    fab_path_params path;        /* this host's path to the device (with link degrades) */
    fab_path_params path0;       /* the same as the model gives it */
    uint32_t res[FAB_PATH_MAX_LINKS + 1];  /* path links, then the device */
    uint32_t nres;               /* entries in res */
    uint32_t hit_tier;           /* tier of a cache hit on this device's pages */
};

struct fab_engine {
    fab_engine_config cfg;       /* a copy of the configuration */
    uint32_t nres;               /* nlinks + ndevices; res[nres] is this host's DRAM */
    uint32_t host_bit;           /* 1 << (host % 32) */
    struct edev *devs;           /* ndevices */
    struct res *res;             /* nres + 1: links, devices, then this host's DRAM */
    fab_curve_params *curves;    /* ncurves */
    uint32_t *mixsets;           /* ncurves: each device's curve sets, ascending read_pct */
    fab_curve_point *points;     /* npoints */
    uint32_t ncurves, npoints;   /* their counts */
    fab_pcache *pc;              /* the page cache */
    fab_touch *touch;            /* promote-policy touch counts */
    fab_seg *seg;                /* the shared segment (owned) */
    struct fab_seg_host *me;     /* our block in the segment */
    struct region *regions;      /* nregion_slots, open addressing by id */
    uint32_t nregion_slots;      /* power of two >= 2 * max_regions */
    uint32_t nregions;           /* regions registered (<= max_regions) */
    struct dacc *acc;            /* ndevices scratch */
    uint32_t *tdev;              /* touched devices, in first-touch order */
    uint32_t ntdev;              /* entries in tdev (<= ndevices) */
    uint32_t *tres;              /* touched elements, in first-touch order */
    uint32_t ntres;              /* entries in tres (<= nres) */
    uint32_t *pend;              /* ids of regions with deferred reference bits (max_regions) */
    uint32_t npend;              /* entries in pend */
    fab_rng rng;                 /* jitter PRNG */
    uint64_t vclock_ns;          /* virtual clock */
    uint64_t wall0_ns;           /* CLOCK_MONOTONIC at create */
    uint64_t deadline_ns;        /* spin mode: when owed delay is paid */
    uint64_t window_lines;       /* mlp_lines x threads: lines in flight per device */
    uint32_t call_stream;        /* scratch: this call continues a sequential stream */
    uint32_t pad3;               /* alignment */
    /* Faults: a snapshot of the segment's fault state, re-read when its
     * generation moves (faults_refresh), and the model values they scale. */
    _Atomic uint64_t *fgen_word; /* the segment's fault generation */
    uint64_t fgen;               /* the generation of the snapshot */
    uint32_t fault_any;          /* some device is not up, a link is cut, or poison exists */
    uint32_t pad2;               /* alignment */
    uint8_t *dstate;             /* ndevices FAB_DEV_* */
    double *stall_p;             /* ndevices slow-device stall probability per round */
    double *stall_ns;            /* ndevices stall size */
    uint32_t *npoison;           /* ndevices poisoned ranges */
    uint64_t *pfirst, *pend_b;   /* ndevices x FAB_POISON_MAX ranges [first, end) */
    uint8_t *lstate;             /* nlinks FAB_LINK_* */
    double *lfactor;             /* nlinks degrade factor (1 = not degraded) */
    double *link_lat0;           /* nlinks idle latency of the model */
    double *link_bw0;            /* nlinks bandwidth of the model */
    uint64_t last_fault[4];      /* code, device, link, region offset (fab_engine_last_fault) */
    /* Lockstep ("lockstep" below); ls_q == 0: free-running, none of it used. */
    uint64_t ls_q;               /* the quantum, ns */
    uint64_t ls_timeout_ns;      /* deadline of one wait */
    uint64_t ls_gen;             /* the group generation we joined */
    uint32_t ls_joined;          /* 1 while we are a member (running or parked) */
    uint32_t ls_parked;          /* 1 while parked (accesses refused) */
    struct fab_ls_head *ls_head; /* the segment's lockstep block */
    struct fab_ls_host *ls_me;   /* our line in it */
    uint64_t ls_pid;             /* our process id, as the line records it */
    uint64_t ls_epoch;           /* head epoch when ls_ready_q was found */
    uint64_t ls_ready_q;         /* every running member was at >= this quantum */
    uint32_t *ls_dirty;          /* elements whose slot changed since our last snapshot */
    uint32_t nls_dirty;          /* entries in ls_dirty (<= nres + 1) */
    uint32_t pad4;               /* alignment */
    uint64_t ls_waits;           /* waits that blocked */
    uint64_t ls_wait_ns;         /* CLOCK_MONOTONIC ns spent in them */
    uint64_t ls_why[4];          /* the last failed wait: reason, host, its clock, needed */
    uint64_t ls_last_reap_ns;    /* when we last looked for dead members */
    /* Host DRAM ("host DRAM" below). */
    struct fab_dram_block *dram_blk; /* this host's DRAM block in the segment */
    uint64_t dram_token;         /* our owner token (pid << 32 | a per-process count) */
    uint32_t dram_slot;          /* the slot we claimed, FAB_DRAM_SLOTS: none free */
    uint32_t pad5;               /* alignment */
    double dram_excess_ns;       /* the DRAM curve's rise at load dram_excess_load */
    double dram_excess_load;     /* the load it was computed for (-1: none yet) */
};

/* Our slot of element r in the segment: r < nres and host < nhosts were
 * checked at create, so it exists (fab_seg_slot returns NULL otherwise). */
static inline struct fab_res_slot *my_slot(fab_engine *e, uint32_t r, uint32_t host) {
    struct fab_res_slot *s = fab_seg_slot(e->seg, r, host);
    assert(s);
    return s;
}

/* The slot this engine publishes element r in: ours of a link or device, or
 * (r == nres) the slot of our host's DRAM we claimed; NULL if none was free. */
static inline struct fab_res_slot *own_slot(fab_engine *e, uint32_t r) {
    assert(r <= e->nres);
    if (r < e->nres) return my_slot(e, r, e->cfg.host);
    return e->dram_slot < FAB_DRAM_SLOTS ? &e->dram_blk->slot[e->dram_slot] : NULL;
}

/* ---- lockstep (lockstep.c) ------------------------------------------------ */
#define LS_MAX_TIMEOUT_MS 3600000u     /* one hour */
int fab_ls_pid_dead(uint64_t pid);
int fab_ls_member(const fab_engine *e, uint32_t h);
void fab_ls_snap_read(const fab_engine *e, struct fab_res_slot *s, uint64_t r, uint64_t *last,
                      uint64_t *bits, uint64_t *wbits);
void fab_ls_mark_dirty(fab_engine *e, uint32_t r);
int fab_ls_wait(fab_engine *e, uint64_t t);
void fab_ls_moved(fab_engine *e, uint64_t t0);
int fab_ls_join(fab_engine *e);
void fab_ls_leave(fab_engine *e, int wait);
int fab_ls_check(fab_engine *e);

#endif /* FABRIC_ENGINE_IMPL_H */
