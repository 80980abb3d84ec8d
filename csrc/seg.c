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
 *     |   bytes_total                |   one cache line each.
 *     +------------------------------+ off_hosts
 *     | hosts[nhosts], host_stride   |   FAB_HCTR_* counters, the latency
 *     |   ctr[FAB_NHCTRS]            |   histogram, then ndevices x FAB_NCTRS
 *     |   hist                       |   per-device counters
 *     |   dev[ndevices][FAB_NCTRS]   |
 *     +------------------------------+ total_bytes
 *
 * Concurrency: every shared word is a C11 atomic updated with relaxed
 * operations (lock-free on every 64-bit target we build for).  There are no
 * locks: each slot has a single writer, counters are fetch-adds, and readers
 * accept a slightly torn view (a rate from one window, a last-active time from
 * the next).  The header is written before the magic, and the magic is stored
 * with release order, so an opener that sees the magic sees a whole header.
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
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fabric_core.h"

#define SEG_MAGIC UINT64_C(0x3130474553424146)  /* "FABSEG01" little-endian */
#define SEG_LAYOUT 1u

_Static_assert(ATOMIC_LLONG_LOCK_FREE == 2, "64-bit atomics must be lock-free in shared memory");
_Static_assert(sizeof(struct fab_res_slot) == 64, "one cache line per slot");

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
};

struct fab_seg {
    char *base;                 /* the mapping */
    uint64_t size;              /* its length */
    uint32_t nhosts, ndevices, nlinks, nres;   /* dims; nres = nlinks + ndevices */
    uint64_t off_res, off_hosts, host_stride;  /* layout (see above) */
    int writable;                /* mapped read-write */
};

static uint64_t align64(uint64_t x) { return (x + 63) & ~UINT64_C(63); }

static int dims_ok(uint32_t nh, uint32_t nd, uint32_t nl) {
    return nh >= 1 && nh <= FAB_MAX_HOSTS && nd >= 1 && nd <= FAB_MAX_DEVICES &&
           nl <= FAB_MAX_LINKS;
}

static void layout(uint32_t nh, uint32_t nd, uint32_t nl, uint64_t *off_res,
                   uint64_t *off_hosts, uint64_t *stride, uint64_t *total) {
    *off_res = align64(sizeof(struct seg_header));
    *off_hosts = align64(*off_res + (uint64_t)(nl + nd) * nh * sizeof(struct fab_res_slot));
    *stride = align64(sizeof(struct fab_seg_host) + (uint64_t)nd * FAB_NCTRS * sizeof(uint64_t));
    *total = *off_hosts + *stride * nh;
}

uint64_t fab_seg_size_bytes(uint32_t nh, uint32_t nd, uint32_t nl) {
    if (!dims_ok(nh, nd, nl)) return 0;
    uint64_t a, b, c, total;
    layout(nh, nd, nl, &a, &b, &c, &total);
    return total;
}

static void write_header(char *base, uint32_t nh, uint32_t nd, uint32_t nl) {
    struct seg_header *h = (struct seg_header *)base;
    layout(nh, nd, nl, &h->off_res, &h->off_hosts, &h->host_stride, &h->total_bytes);
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
    uint64_t off_res, off_hosts, stride, total;
    layout(nh, nd, nl, &off_res, &off_hosts, &stride, &total);
    if (h->off_res != off_res || h->off_hosts != off_hosts || h->host_stride != stride ||
        h->total_bytes != total)
        return FAB_ESEGMENT;
    s->base = base;
    s->size = size;
    s->nhosts = nh;
    s->ndevices = nd;
    s->nlinks = nl;
    s->nres = nl + nd;
    s->off_res = off_res;
    s->off_hosts = off_hosts;
    s->host_stride = stride;
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
    for (uint32_t h = 0; h < s->nhosts; h++) {
        struct fab_res_slot *sl = fab_seg_slot((fab_seg *)s, res, h);
        bytes += atomic_load_explicit(&sl->bytes_total, memory_order_relaxed);
        uint64_t last = atomic_load_explicit(&sl->last_wall_ns, memory_order_relaxed);
        if (last == 0 || (int64_t)(now - (last - 1)) >= (int64_t)window_wall_ns) continue;
        uint64_t bits = atomic_load_explicit(&sl->rate_bits, memory_order_relaxed);
        double rate;
        memcpy(&rate, &bits, sizeof rate);
        load += rate;
        active++;
    }
    *load_gbps = load;
    *active_hosts = active;
    *bytes_total = bytes;
    return 0;
}
