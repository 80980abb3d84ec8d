/*
 * seg.c -- the shared-memory segment: the state emulated hosts in different
 * processes share, so that they slow each other down and so that any process
 * (`fabric stats`) can read every host's counters and histograms live.
 *
 * One file, mmap'ed MAP_SHARED by every engine of a cluster (or an anonymous
 * mapping for a single-process engine).  Layout, every part 64-byte aligned:
 *
 *     +------------------------------+ 0
 *     | header: magic, layout        |   dims (hosts, devices, links), offsets
 *     +------------------------------+ off_res
 *     | slots[nres][nhosts]          |   nres = nlinks + ndevices; resource r is
 *     |   last_virtual_ns            |   link r (r < nlinks) or device r - nlinks.
 *     |   last_wall_ns               |   Slot (r, h) is written only by host h:
 *     |   rate_bits (bytes/ns)       |   when it last used r and at what rate,
 *     |   bytes_total, wrate_bits    |   two cache lines each, the second mostly
 *     |   snap[2] (lockstep copies)  |   the lockstep snapshots (engine.c).
 *     +------------------------------+ off_hosts
 *     | hosts[nhosts], host_stride   |   FAB_HCTR_* counters, the latency
 *     |   ctr[FAB_NHCTRS]            |   histogram, then ndevices x FAB_NCTRS
 *     |   hist                       |   per-device counters
 *     |   dev[ndevices][FAB_NCTRS]   |
 *     +------------------------------+ off_faults
 *     | fault generation (1 line)    |   bumped after every fault change
 *     | devfault[ndevices]           |   state, slow-device stall, poison table
 *     | linkfault[nlinks]            |   state (up / cut), degrade factor
 *     +------------------------------+ off_lockstep
 *     | lockstep head (1 line)       |   group generation, size, quantum, joined,
 *     | lockstep hosts[nhosts]       |   futex word; per host: state, clock, pid
 *     +------------------------------+ off_dram
 *     | dram[nhosts]                 |   each host's local DRAM as a contended
 *     |   owner[FAB_DRAM_SLOTS]      |   element: one slot per engine attached as
 *     |   slot[FAB_DRAM_SLOTS]       |   that host (claimed by owner token), so
 *     +------------------------------+   engines of one host see each other
 *                                        total_bytes
 *
 * Concurrency: every shared word is a C11 atomic updated with relaxed
 * operations (lock-free on every 64-bit target we build for).  There are no
 * locks: each slot has a single writer, counters are fetch-adds, and readers
 * accept a slightly torn view (a rate from one window, a last-active time from
 * the next).  The header is written before the magic, and the magic is stored
 * with release order, so an opener that sees the magic sees a whole header.
 *
 * Faults: fault injection (any process that opened the segment writable)
 * sets a device's state (up / unavailable / failed) and slow-device stall,
 * a link's state (up / cut) and degrade factor, and edits a device's table
 * of poisoned byte ranges (bounded: FAB_POISON_MAX ranges, under a per-device
 * lock word taken with a bounded spin); after each change it bumps the fault
 * generation with release order.  An engine compares the generation with
 * the one it last saw on every access (one relaxed load when nothing
 * changed) and re-reads the fault state only when it moved (engine.c).
 *
 * Lockstep: the head and host lines of the lockstep group (engine.c,
 * "lockstep"), zero in a fresh segment (no group yet).
 *
 * Invariants: a segment opened with dims other than those it was created with
 * is refused (FAB_ESEGMENT), so two processes never disagree about offsets;
 * the layout's total_bytes is <= the mapped size (checked at open), and every
 * accessor bounds its indices by the dims, so nothing reads or writes outside
 * the mapping whatever index it is given.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fabric_core.h"

#define SEG_MAGIC UINT64_C(0x3130474553424146)  /* "FABSEG01" little-endian */
#define SEG_LAYOUT 4u   /* 2: fault state after the host blocks; 3: 128-byte slots with
                         * lockstep snapshots, the lockstep block; 4: the host DRAM
                         * blocks at the end */

_Static_assert(ATOMIC_LLONG_LOCK_FREE == 2, "64-bit atomics must be lock-free in shared memory");
_Static_assert(sizeof(struct fab_res_slot) == 128, "two cache lines per slot");
_Static_assert(sizeof(struct fab_ls_head) == 64, "one cache line for the lockstep head");
_Static_assert(sizeof(struct fab_ls_host) == 64, "one cache line per lockstep host");
_Static_assert(sizeof(struct fab_dram_block) % 64 == 0, "host DRAM blocks on cache lines");

struct seg_header {
    _Atomic uint64_t magic;     /* SEG_MAGIC once the header is complete */
    uint32_t layout;            /* SEG_LAYOUT */
    uint32_t header_bytes;      /* sizeof(struct seg_header) */
    uint32_t nhosts;            /* dims the segment was made for */
    uint32_t ndevices;
    uint32_t nlinks;
    uint32_t pad;               /* alignment */
    uint64_t total_bytes;       /* whole segment */
    uint64_t off_res;           /* resource slots */
    uint64_t off_hosts;         /* host blocks */
    uint64_t host_stride;       /* bytes per host block */
    uint64_t off_faults;        /* fault generation, then device and link fault blocks */
    uint64_t off_lockstep;      /* lockstep head, then one line per host */
    uint64_t off_dram;          /* host DRAM blocks */
};

struct fab_seg {
    char *base;                 /* the mapping */
    uint64_t size;              /* its length */
    uint32_t nhosts, ndevices, nlinks, nres;   /* dims; nres = nlinks + ndevices */
    uint64_t off_res, off_hosts, host_stride, off_faults, off_ls, off_dram;  /* layout */
    int writable;                /* mapped read-write */
};

static uint64_t align64(uint64_t x) { return (x + 63) & ~UINT64_C(63); }

static int dims_ok(uint32_t nh, uint32_t nd, uint32_t nl) {
    return nh >= 1 && nh <= FAB_MAX_HOSTS && nd >= 1 && nd <= FAB_MAX_DEVICES &&
           nl <= FAB_MAX_LINKS;
}

#define FAULT_GEN_BYTES 64u     /* the generation word's cache line */

struct seg_layout {
    uint64_t off_res, off_hosts, stride, off_faults, off_ls, off_dram, total;
};

static void layout(uint32_t nh, uint32_t nd, uint32_t nl, struct seg_layout *o) {
    o->off_res = align64(sizeof(struct seg_header));
    o->off_hosts = align64(o->off_res + (uint64_t)(nl + nd) * nh * sizeof(struct fab_res_slot));
    o->stride = align64(sizeof(struct fab_seg_host) + (uint64_t)nd * FAB_NCTRS * sizeof(uint64_t));
    o->off_faults = o->off_hosts + o->stride * nh;
    o->off_ls = align64(o->off_faults + FAULT_GEN_BYTES +
                        (uint64_t)nd * sizeof(struct fab_seg_dev_fault) +
                        (uint64_t)nl * sizeof(struct fab_seg_link_fault));
    o->off_dram = align64(o->off_ls + sizeof(struct fab_ls_head) +
                          (uint64_t)nh * sizeof(struct fab_ls_host));
    o->total = o->off_dram + (uint64_t)nh * sizeof(struct fab_dram_block);
}

uint64_t fab_seg_size_bytes(uint32_t nh, uint32_t nd, uint32_t nl) {
    if (!dims_ok(nh, nd, nl)) return 0;
    struct seg_layout o;
    layout(nh, nd, nl, &o);
    return o.total;
}

static void write_header(char *base, uint32_t nh, uint32_t nd, uint32_t nl) {
    struct seg_header *h = (struct seg_header *)base;
    struct seg_layout o;
    layout(nh, nd, nl, &o);
    h->off_res = o.off_res;
    h->off_hosts = o.off_hosts;
    h->host_stride = o.stride;
    h->off_faults = o.off_faults;
    h->off_lockstep = o.off_ls;
    h->off_dram = o.off_dram;
    h->total_bytes = o.total;
    h->layout = SEG_LAYOUT;
    h->header_bytes = sizeof *h;
    h->nhosts = nh;
    h->ndevices = nd;
    h->nlinks = nl;
    atomic_store_explicit(&h->magic, SEG_MAGIC, memory_order_release);
}

/* Create (or re-initialise, zeroing) the segment file at path. */
int fab_seg_create(const char *path, uint32_t nh, uint32_t nd, uint32_t nl) {
    if (!path || !dims_ok(nh, nd, nl)) return FAB_EINVAL;
    uint64_t total = fab_seg_size_bytes(nh, nd, nl);
    /* Emptying the file first drops any old contents: it reads as zeroes. */
    void *base;
    int rc = fab_file_map_shared(path, total, 1, &base);
    if (rc) return rc;
    write_header(base, nh, nd, nl);
    munmap(base, total);
    return 0;
}

static int fill_handle(fab_seg *s, char *base, uint64_t size, uint32_t nh, uint32_t nd,
                       uint32_t nl, int writable) {
    const struct seg_header *h = (const struct seg_header *)base;
    if (size < sizeof *h ||
        atomic_load_explicit(&h->magic, memory_order_acquire) != SEG_MAGIC ||
        h->layout != SEG_LAYOUT || h->header_bytes != sizeof *h || h->nhosts != nh ||
        h->ndevices != nd || h->nlinks != nl || h->total_bytes > size)
        return FAB_ESEGMENT;
    struct seg_layout o;
    layout(nh, nd, nl, &o);
    if (h->off_res != o.off_res || h->off_hosts != o.off_hosts || h->host_stride != o.stride ||
        h->off_faults != o.off_faults || h->off_lockstep != o.off_ls ||
        h->off_dram != o.off_dram || h->total_bytes != o.total)
        return FAB_ESEGMENT;
    s->base = base;
    s->size = size;
    s->nhosts = nh;
    s->ndevices = nd;
    s->nlinks = nl;
    s->nres = nl + nd;
    s->off_res = o.off_res;
    s->off_hosts = o.off_hosts;
    s->host_stride = o.stride;
    s->off_faults = o.off_faults;
    s->off_ls = o.off_ls;
    s->off_dram = o.off_dram;
    s->writable = writable;
    return 0;
}

/* Open the segment at path (NULL: a fresh private anonymous one). */
int fab_seg_open(const char *path, uint32_t nh, uint32_t nd, uint32_t nl, int writable,
                 fab_seg **out) {
    if (!out || !dims_ok(nh, nd, nl)) return FAB_EINVAL;
    *out = NULL;
    fab_seg *s = calloc(1, sizeof *s);
    if (!s) return FAB_ENOMEM;
    char *base;
    uint64_t size;
    if (!path) {
        size = fab_seg_size_bytes(nh, nd, nl);
        base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (base == MAP_FAILED) { int err = errno; free(s); return -err; }
        write_header(base, nh, nd, nl);
        writable = 1;
    } else {
        int fd = open(path, (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC);
        if (fd < 0) { int err = errno; free(s); return err == ENOENT ? FAB_ESEGMENT : -err; }
        struct stat st;
        if (fstat(fd, &st) != 0) { int err = errno; close(fd); free(s); return -err; }
        size = (uint64_t)st.st_size;
        if (size < sizeof(struct seg_header)) { close(fd); free(s); return FAB_ESEGMENT; }
        base = mmap(NULL, size, PROT_READ | (writable ? PROT_WRITE : 0), MAP_SHARED, fd, 0);
        int err = errno;
        close(fd);
        if (base == MAP_FAILED) { free(s); return -err; }
    }
    int rc = fill_handle(s, base, size, nh, nd, nl, writable);
    if (rc) { munmap(base, size); free(s); return rc; }
    *out = s;
    return 0;
}

void fab_seg_close(fab_seg *s) {
    if (!s) return;
    munmap(s->base, s->size);
    free(s);
}

/* The three accessors below return addresses inside the mapping, or NULL for
 * an index outside the segment's dims: with res < nres, host < nhosts and
 * dev < ndevices the address lies below total_bytes, which fill_handle
 * checked is <= the mapped size.  They are C-only; the engine passes indices
 * it validated at create and asserts the result is not NULL. */
struct fab_res_slot *fab_seg_slot(fab_seg *s, uint32_t res, uint32_t host) {
    if (!s || res >= s->nres || host >= s->nhosts) return NULL;
    return (struct fab_res_slot *)(s->base + s->off_res) + (uint64_t)res * s->nhosts + host;
}

struct fab_seg_host *fab_seg_host_block(fab_seg *s, uint32_t host) {
    if (!s || host >= s->nhosts) return NULL;
    return (struct fab_seg_host *)(s->base + s->off_hosts + s->host_stride * host);
}

_Atomic uint64_t *fab_seg_dev_ctrs(fab_seg *s, uint32_t host, uint32_t dev) {
    if (!s || host >= s->nhosts || dev >= s->ndevices) return NULL;
    char *blk = (char *)fab_seg_host_block(s, host) + sizeof(struct fab_seg_host);
    return (_Atomic uint64_t *)blk + (uint64_t)dev * FAB_NCTRS;
}

int fab_seg_host_read(const fab_seg *s, uint32_t host, uint64_t *out, uint32_t n) {
    if (!s || !out || n < FAB_NHCTRS) return FAB_EINVAL;
    if (host >= s->nhosts) return FAB_ERANGE;
    struct fab_seg_host *h = fab_seg_host_block((fab_seg *)s, host);
    for (uint32_t i = 0; i < FAB_NHCTRS; i++)
        out[i] = atomic_load_explicit(&h->ctr[i], memory_order_relaxed);
    return 0;
}

int fab_seg_dev_read(const fab_seg *s, uint32_t host, uint32_t dev, uint64_t *out, uint32_t n) {
    if (!s || !out || n < FAB_NCTRS) return FAB_EINVAL;
    if (host >= s->nhosts || dev >= s->ndevices) return FAB_ERANGE;
    _Atomic uint64_t *c = fab_seg_dev_ctrs((fab_seg *)s, host, dev);
    for (uint32_t i = 0; i < FAB_NCTRS; i++)
        out[i] = atomic_load_explicit(&c[i], memory_order_relaxed);
    return 0;
}

const fab_hist *fab_seg_hist(const fab_seg *s, uint32_t host) {
    if (!s || host >= s->nhosts) return NULL;
    return &fab_seg_host_block((fab_seg *)s, host)->hist;
}

uint64_t fab_clock_wall_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * UINT64_C(1000000000) + (uint64_t)ts.tv_nsec;
}

/* Add one slot to a load reading: its bytes always, its published rate if its
 * last access (CLOCK_MONOTONIC) is within window_wall_ns of now. */
static void add_slot_load(const struct fab_res_slot *sl, uint64_t now, uint64_t window_wall_ns,
                          double *load, uint32_t *active, uint64_t *bytes) {
    *bytes += atomic_load_explicit(&sl->bytes_total, memory_order_relaxed);
    uint64_t last = atomic_load_explicit(&sl->last_wall_ns, memory_order_relaxed);
    if (last == 0 || (int64_t)(now - (last - 1)) >= (int64_t)window_wall_ns) return;
    uint64_t bits = atomic_load_explicit(&sl->rate_bits, memory_order_relaxed);
    double rate;
    memcpy(&rate, &bits, sizeof rate);
    *load += rate;
    (*active)++;
}

/* Current load on resource res as any process sees it: the published rates
 * of hosts active (by CLOCK_MONOTONIC) within window_wall_ns. */
int fab_seg_res_read(const fab_seg *s, uint32_t res, uint64_t window_wall_ns,
                     double *load_gbps, uint32_t *active_hosts, uint64_t *bytes_total) {
    if (!s || !load_gbps || !active_hosts || !bytes_total) return FAB_EINVAL;
    if (res >= s->nres) return FAB_ERANGE;
    uint64_t now = fab_clock_wall_ns();
    double load = 0.0;
    uint32_t active = 0;
    uint64_t bytes = 0;
    for (uint32_t h = 0; h < s->nhosts; h++)
        add_slot_load(fab_seg_slot((fab_seg *)s, res, h), now, window_wall_ns, &load, &active,
                      &bytes);
    *load_gbps = load;
    *active_hosts = active;
    *bytes_total = bytes;
    return 0;
}

/* ---- host DRAM ----------------------------------------------------------
 *
 * Host h's local DRAM is one contended element whose slots belong to the
 * engines attached as h (engine.c "host DRAM"): an engine claims a free slot
 * at create by storing its owner token (CAS from 0) and frees it at destroy,
 * so several processes attached as one host each publish their own rate. */

struct fab_dram_block *fab_seg_dram_block(fab_seg *s, uint32_t host) {
    if (!s || host >= s->nhosts) return NULL;
    return (struct fab_dram_block *)(s->base + s->off_dram) + host;
}

/* Current load on host h's DRAM as any process sees it: the rates its engines
 * published recently (CLOCK_MONOTONIC, within window_wall_ns), how many were
 * active, and the bytes they moved through it (every slot, claimed or not). */
int fab_seg_dram_read(const fab_seg *s, uint32_t host, uint64_t window_wall_ns,
                      double *load_gbps, uint32_t *active_engines, uint64_t *bytes_total) {
    if (!s || !load_gbps || !active_engines || !bytes_total) return FAB_EINVAL;
    if (host >= s->nhosts) return FAB_ERANGE;
    struct fab_dram_block *b = fab_seg_dram_block((fab_seg *)s, host);
    uint64_t now = fab_clock_wall_ns(), bytes = 0;
    double load = 0.0;
    uint32_t active = 0;
    for (uint32_t i = 0; i < FAB_DRAM_SLOTS; i++)
        add_slot_load(&b->slot[i], now, window_wall_ns, &load, &active, &bytes);
    *load_gbps = load;
    *active_engines = active;
    *bytes_total = bytes;
    return 0;
}

/* ---- faults ------------------------------------------------------------- */

_Static_assert(sizeof(struct fab_seg_link_fault) == 64, "one cache line per link");
_Static_assert(sizeof(struct fab_seg_dev_fault) % 64 == 0, "device blocks on cache lines");

_Atomic uint64_t *fab_seg_gen_word(fab_seg *s) {
    return s ? (_Atomic uint64_t *)(s->base + s->off_faults) : NULL;
}

struct fab_seg_dev_fault *fab_seg_dev_fault(fab_seg *s, uint32_t dev) {
    if (!s || dev >= s->ndevices) return NULL;
    return (struct fab_seg_dev_fault *)(s->base + s->off_faults + FAULT_GEN_BYTES) + dev;
}

struct fab_seg_link_fault *fab_seg_link_fault(fab_seg *s, uint32_t link) {
    if (!s || link >= s->nlinks) return NULL;
    char *p = s->base + s->off_faults + FAULT_GEN_BYTES +
              (uint64_t)s->ndevices * sizeof(struct fab_seg_dev_fault);
    return (struct fab_seg_link_fault *)p + link;
}

uint64_t fab_seg_fault_gen(const fab_seg *s) {
    if (!s) return 0;
    return atomic_load_explicit(fab_seg_gen_word((fab_seg *)s), memory_order_acquire);
}

static void bump_gen(fab_seg *s) {
    atomic_fetch_add_explicit(fab_seg_gen_word(s), 1, memory_order_release);
}

static uint64_t dbits(double x) { uint64_t b; memcpy(&b, &x, sizeof b); return b; }
static double bitsd(uint64_t b) { double x; memcpy(&x, &b, sizeof x); return x; }

int fab_seg_dev_set_state(fab_seg *s, uint32_t dev, uint32_t state) {
    if (!s || !s->writable || state > FAB_DEV_FAILED) return FAB_EINVAL;
    struct fab_seg_dev_fault *f = fab_seg_dev_fault(s, dev);
    if (!f) return FAB_ERANGE;
    atomic_store_explicit(&f->state, state, memory_order_relaxed);
    bump_gen(s);
    return 0;
}

int fab_seg_dev_set_slow(fab_seg *s, uint32_t dev, double stall_p, uint64_t stall_ns) {
    if (!s || !s->writable || !(stall_p >= 0.0 && stall_p <= 1.0) ||
        stall_ns > UINT64_C(100000000000))   /* at most 100 s a stall */
        return FAB_EINVAL;
    struct fab_seg_dev_fault *f = fab_seg_dev_fault(s, dev);
    if (!f) return FAB_ERANGE;
    atomic_store_explicit(&f->stall_p_bits, dbits(stall_p), memory_order_relaxed);
    atomic_store_explicit(&f->stall_ns, stall_ns, memory_order_relaxed);
    bump_gen(s);
    return 0;
}

int fab_seg_dev_faults(const fab_seg *s, uint32_t dev, uint32_t *state, double *stall_p,
                       uint64_t *stall_ns, uint32_t *npoison) {
    if (!s || !state || !stall_p || !stall_ns || !npoison) return FAB_EINVAL;
    struct fab_seg_dev_fault *f = fab_seg_dev_fault((fab_seg *)s, dev);
    if (!f) return FAB_ERANGE;
    *state = (uint32_t)atomic_load_explicit(&f->state, memory_order_relaxed);
    *stall_p = bitsd(atomic_load_explicit(&f->stall_p_bits, memory_order_relaxed));
    *stall_ns = atomic_load_explicit(&f->stall_ns, memory_order_relaxed);
    *npoison = (uint32_t)atomic_load_explicit(&f->npoison, memory_order_relaxed);
    return 0;
}

int fab_seg_link_set(fab_seg *s, uint32_t link, uint32_t state, double factor) {
    if (!s || !s->writable || state > FAB_LINK_CUT ||
        !(factor >= 1.0 && factor <= (double)FAB_MAX_DEGRADE))
        return FAB_EINVAL;
    struct fab_seg_link_fault *f = fab_seg_link_fault(s, link);
    if (!f) return FAB_ERANGE;
    atomic_store_explicit(&f->state, state, memory_order_relaxed);
    atomic_store_explicit(&f->factor_bits, factor == 1.0 ? 0 : dbits(factor), memory_order_relaxed);
    bump_gen(s);
    return 0;
}

int fab_seg_link_faults(const fab_seg *s, uint32_t link, uint32_t *state, double *factor) {
    if (!s || !state || !factor) return FAB_EINVAL;
    struct fab_seg_link_fault *f = fab_seg_link_fault((fab_seg *)s, link);
    if (!f) return FAB_ERANGE;
    *state = (uint32_t)atomic_load_explicit(&f->state, memory_order_relaxed);
    uint64_t b = atomic_load_explicit(&f->factor_bits, memory_order_relaxed);
    *factor = b ? bitsd(b) : 1.0;
    return 0;
}

/* The poison table's sequence word: even when idle, odd while a writer
 * edits the table.  Writers take it by compare-and-swap from even to odd and
 * give it back with the next even value; readers never write (a read-only
 * mapping can read the table): they copy the table between two loads of an
 * even, unchanged word.  Writers edit a few words and let go; every wait is
 * bounded (about a second of yields), so a writer that died mid-edit costs
 * FAB_EBUSY, never a hang. */
#define LOCK_SPINS 64u
#define LOCK_YIELDS 200000u

static int lock_table(struct fab_seg_dev_fault *f) {
    for (uint32_t i = 0; i < LOCK_SPINS + LOCK_YIELDS; i++) {
        uint64_t seq = atomic_load_explicit(&f->lock, memory_order_relaxed);
        if (!(seq & 1) && atomic_compare_exchange_weak_explicit(&f->lock, &seq, seq + 1,
                                                                memory_order_acquire,
                                                                memory_order_relaxed))
            return 0;
        if (i >= LOCK_SPINS) sched_yield();
    }
    return FAB_EBUSY;
}

static void unlock_table(struct fab_seg_dev_fault *f) {
    atomic_fetch_add_explicit(&f->lock, 1, memory_order_release);
}

/* The table as plain arrays (caller holds the lock); n <= FAB_POISON_MAX. */
static uint32_t table_load(struct fab_seg_dev_fault *f, uint64_t *first, uint64_t *end) {
    uint64_t n = atomic_load_explicit(&f->npoison, memory_order_relaxed);
    if (n > FAB_POISON_MAX) n = FAB_POISON_MAX;   /* a torn table never reads past its end */
    for (uint64_t i = 0; i < n; i++) {
        first[i] = atomic_load_explicit(&f->poison[i].first, memory_order_relaxed);
        end[i] = atomic_load_explicit(&f->poison[i].end, memory_order_relaxed);
    }
    return (uint32_t)n;
}

static void table_store(struct fab_seg_dev_fault *f, const uint64_t *first, const uint64_t *end,
                        uint32_t n) {
    for (uint32_t i = 0; i < n; i++) {
        atomic_store_explicit(&f->poison[i].first, first[i], memory_order_relaxed);
        atomic_store_explicit(&f->poison[i].end, end[i], memory_order_relaxed);
    }
    for (uint32_t i = n; i < FAB_POISON_MAX; i++) {
        atomic_store_explicit(&f->poison[i].first, 0, memory_order_relaxed);
        atomic_store_explicit(&f->poison[i].end, 0, memory_order_relaxed);
    }
    atomic_store_explicit(&f->npoison, n, memory_order_relaxed);
}

int fab_seg_poison_copy(fab_seg *s, uint32_t dev, uint64_t *first, uint64_t *end) {
    struct fab_seg_dev_fault *f = fab_seg_dev_fault(s, dev);
    if (!f || !first || !end) return FAB_EINVAL;
    for (uint32_t i = 0; i < LOCK_SPINS + LOCK_YIELDS; i++) {
        uint64_t seq = atomic_load_explicit(&f->lock, memory_order_acquire);
        if (!(seq & 1)) {
            uint32_t n = table_load(f, first, end);
            atomic_thread_fence(memory_order_acquire);
            if (atomic_load_explicit(&f->lock, memory_order_relaxed) == seq) return (int)n;
        }
        if (i >= LOCK_SPINS) sched_yield();
    }
    return FAB_EBUSY;
}

int fab_seg_poison_read(const fab_seg *s, uint32_t dev, uint64_t *out, uint32_t n) {
    if (!s || !out || n < 2 * FAB_POISON_MAX) return FAB_EINVAL;
    if (dev >= s->ndevices) return FAB_ERANGE;
    uint64_t first[FAB_POISON_MAX], end[FAB_POISON_MAX];
    int k = fab_seg_poison_copy((fab_seg *)s, dev, first, end);
    for (int i = 0; i < k; i++) { out[2 * i] = first[i]; out[2 * i + 1] = end[i]; }
    return k;
}

int fab_seg_poison_add(fab_seg *s, uint32_t dev, uint64_t off, uint64_t len) {
    if (!s || !s->writable || len == 0 || off > UINT64_MAX - len) return FAB_EINVAL;
    struct fab_seg_dev_fault *f = fab_seg_dev_fault(s, dev);
    if (!f) return FAB_ERANGE;
    int rc = lock_table(f);
    if (rc) return rc;
    uint64_t first[FAB_POISON_MAX], end[FAB_POISON_MAX];
    uint32_t n = table_load(f, first, end), m = 0;
    uint64_t lo = off, hi = off + len;
    /* Merge every range that overlaps or touches [lo, hi) into it. */
    for (uint32_t i = 0; i < n; i++) {
        if (end[i] < lo || first[i] > hi) { first[m] = first[i]; end[m] = end[i]; m++; continue; }
        if (first[i] < lo) lo = first[i];
        if (end[i] > hi) hi = end[i];
    }
    if (m >= FAB_POISON_MAX) { unlock_table(f); return FAB_ENOMEM; }
    first[m] = lo;
    end[m] = hi;
    table_store(f, first, end, m + 1);
    unlock_table(f);
    bump_gen(s);
    return 0;
}

int fab_seg_poison_clear(fab_seg *s, uint32_t dev, uint64_t off, uint64_t len) {
    if (!s || !s->writable || off > UINT64_MAX - len) return FAB_EINVAL;
    struct fab_seg_dev_fault *f = fab_seg_dev_fault(s, dev);
    if (!f) return FAB_ERANGE;
    if (len == 0 || atomic_load_explicit(&f->npoison, memory_order_relaxed) == 0) return 0;
    int rc = lock_table(f);
    if (rc) return rc;
    uint64_t first[FAB_POISON_MAX], end[FAB_POISON_MAX];
    uint64_t nf[FAB_POISON_MAX], ne[FAB_POISON_MAX];
    uint32_t n = table_load(f, first, end), m = 0;
    uint64_t lo = off, hi = off + len;
    int changed = 0;
    /* Every range yields up to two pieces; more than the table holds is refused. */
    for (uint32_t i = 0; i < n; i++) {
        uint64_t pf[2], pe[2];
        uint32_t k = 0;
        if (end[i] <= lo || first[i] >= hi) {
            pf[k] = first[i]; pe[k] = end[i]; k++;
        } else {
            changed = 1;
            if (first[i] < lo) { pf[k] = first[i]; pe[k] = lo; k++; }
            if (end[i] > hi) { pf[k] = hi; pe[k] = end[i]; k++; }
        }
        if (m + k > FAB_POISON_MAX) { unlock_table(f); return FAB_ENOMEM; }
        for (uint32_t j = 0; j < k; j++) { nf[m] = pf[j]; ne[m] = pe[j]; m++; }
    }
    if (changed) table_store(f, nf, ne, m);
    unlock_table(f);
    if (changed) bump_gen(s);
    return 0;
}

/* ---- lockstep block ------------------------------------------------------ */

struct fab_ls_head *fab_seg_ls_head(fab_seg *s) {
    return s ? (struct fab_ls_head *)(s->base + s->off_ls) : NULL;
}

struct fab_ls_host *fab_seg_ls_host(fab_seg *s, uint32_t host) {
    if (!s || host >= s->nhosts) return NULL;
    return (struct fab_ls_host *)(s->base + s->off_ls + sizeof(struct fab_ls_head)) + host;
}

uint32_t fab_seg_nhosts(const fab_seg *s) { return s ? s->nhosts : 0; }

int fab_seg_lockstep_host(const fab_seg *s, uint32_t host, uint64_t *out, uint32_t n) {
    if (!s || !out || n < 6) return FAB_EINVAL;
    if (host >= s->nhosts) return FAB_ERANGE;
    struct fab_ls_head *hd = fab_seg_ls_head((fab_seg *)s);
    struct fab_ls_host *l = fab_seg_ls_host((fab_seg *)s, host);
    uint64_t gen = atomic_load_explicit(&hd->gen, memory_order_acquire);
    out[0] = gen != 0 && atomic_load_explicit(&l->gen, memory_order_acquire) == gen;
    out[1] = out[0] ? atomic_load_explicit(&l->state, memory_order_acquire) : FAB_LS_ABSENT;
    out[2] = atomic_load_explicit(&l->clock_ns, memory_order_acquire);
    out[3] = atomic_load_explicit(&l->pid, memory_order_relaxed);
    out[4] = atomic_load_explicit(&l->waits, memory_order_relaxed);
    out[5] = atomic_load_explicit(&l->wait_ns, memory_order_relaxed);
    return 0;
}
