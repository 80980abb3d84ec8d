/*
 * hist.c -- log-linear latency histograms, HdrHistogram-style.
 *
 * A value v (ns) falls in one of FAB_HIST_BUCKETS fixed buckets:
 *
 *     v < 128            bucket v                    (exact)
 *     2^e <= v < 2^(e+1) bucket 128 + (e-7)*128 + s,  s = (v >> (e-7)) - 128
 *                        for e = 7 .. 36             (128 sub-buckets per octave)
 *
 * so every bucket above 127 spans 1/128 of its octave, and reporting its
 * midpoint is within 1/256 (0.4%) of any value in it -- comfortably inside
 * the 1% the engine promises from 1 ns to 100 s (2^37 ns ~ 137 s is the top;
 * larger values are clamped into the last bucket and counted in `overflow`).
 *
 * Layout (struct fab_hist in engine.h): five summary words, then the bucket
 * counts.  Zeroed memory is an empty histogram (min is stored inverted), so
 * the shared segment needs no initialisation pass.  Every update is a relaxed
 * C11 atomic, so a histogram in shared memory can be recorded by one process
 * and read live by another; a reader may see a count that runs a little
 * ahead of the buckets, and percentile() copes by falling back to max.
 * Histograms merge by adding buckets (and min/max/sum/count).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fabric_core.h"

#define SUB (1u << FAB_HIST_SUB_BITS)
#define TOP_NS ((UINT64_C(1) << (FAB_HIST_MAX_EXP + 1)) - 1)

_Static_assert(FAB_HIST_BUCKETS == SUB + (FAB_HIST_MAX_EXP - FAB_HIST_SUB_BITS + 1) * SUB,
               "bucket count matches the geometry");

uint64_t fab_hist_size_bytes(void) { return sizeof(struct fab_hist); }

uint32_t fab_hist_bucket_of(uint64_t v) {
    if (v < SUB) return (uint32_t)v;
    if (v > TOP_NS) v = TOP_NS;
    uint32_t e = 63u - (uint32_t)__builtin_clzll(v);
    uint32_t s = (uint32_t)(v >> (e - FAB_HIST_SUB_BITS)) - SUB;
    return SUB + (e - FAB_HIST_SUB_BITS) * SUB + s;
}

uint64_t fab_hist_bucket_low(uint32_t b) {
    if (b >= FAB_HIST_BUCKETS) b = FAB_HIST_BUCKETS - 1;
    if (b < SUB) return b;
    uint32_t j = b - SUB, e = j / SUB + FAB_HIST_SUB_BITS, s = j % SUB;
    return (uint64_t)(SUB + s) << (e - FAB_HIST_SUB_BITS);
}

/* The value a bucket reports: its midpoint (exact below 128). */
uint64_t fab_hist_bucket_value(uint32_t b) {
    if (b >= FAB_HIST_BUCKETS) b = FAB_HIST_BUCKETS - 1;
    if (b < SUB) return b;
    uint32_t e = (b - SUB) / SUB + FAB_HIST_SUB_BITS;
    uint64_t width = UINT64_C(1) << (e - FAB_HIST_SUB_BITS);
    return fab_hist_bucket_low(b) + width / 2;
}

int fab_hist_create(fab_hist **out) {
    if (!out) return FAB_EINVAL;
    *out = calloc(1, sizeof(struct fab_hist));
    return *out ? 0 : FAB_ENOMEM;
}

void fab_hist_destroy(fab_hist *h) { free(h); }

static void atomic_max(_Atomic uint64_t *a, uint64_t v) {
    uint64_t cur = atomic_load_explicit(a, memory_order_relaxed);
    /* Bounded: every failed CAS means someone stored a larger value. */
    for (int i = 0; i < 64 && v > cur; i++)
        if (atomic_compare_exchange_weak_explicit(a, &cur, v, memory_order_relaxed,
                                                  memory_order_relaxed))
            break;
}

int fab_hist_record(fab_hist *h, uint64_t v, uint64_t count) {
    if (!h) return FAB_EINVAL;
    if (count == 0) return 0;
    if (v > TOP_NS) atomic_fetch_add_explicit(&h->overflow, count, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->buckets[fab_hist_bucket_of(v)], count, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->sum_ns, v * count, memory_order_relaxed);
    atomic_max(&h->max_ns, v);
    atomic_max(&h->min_inv, UINT64_MAX - v);
    atomic_fetch_add_explicit(&h->count, count, memory_order_relaxed);
    return 0;
}

int fab_hist_merge(fab_hist *dst, const fab_hist *src) {
    if (!dst || !src) return FAB_EINVAL;
    if (dst == src) return FAB_EINVAL;
    for (uint32_t b = 0; b < FAB_HIST_BUCKETS; b++) {
        uint64_t n = atomic_load_explicit(&src->buckets[b], memory_order_relaxed);
        if (n) atomic_fetch_add_explicit(&dst->buckets[b], n, memory_order_relaxed);
    }
    atomic_fetch_add_explicit(&dst->sum_ns, atomic_load(&src->sum_ns), memory_order_relaxed);
    atomic_fetch_add_explicit(&dst->overflow, atomic_load(&src->overflow), memory_order_relaxed);
    atomic_max(&dst->max_ns, atomic_load(&src->max_ns));
    atomic_max(&dst->min_inv, atomic_load(&src->min_inv));
    atomic_fetch_add_explicit(&dst->count, atomic_load(&src->count), memory_order_relaxed);
    return 0;
}

int fab_hist_summary(const fab_hist *h, uint64_t *out, uint32_t n) {
    if (!h || !out || n < FAB_HIST_NSUMMARY) return FAB_EINVAL;
    out[0] = atomic_load_explicit(&h->count, memory_order_relaxed);
    out[1] = atomic_load_explicit(&h->sum_ns, memory_order_relaxed);
    uint64_t mi = atomic_load_explicit(&h->min_inv, memory_order_relaxed);
    out[2] = out[0] ? UINT64_MAX - mi : 0;
    out[3] = atomic_load_explicit(&h->max_ns, memory_order_relaxed);
    out[4] = atomic_load_explicit(&h->overflow, memory_order_relaxed);
    return 0;
}

/* The value at rank ceil(pct/100 * count): its bucket's midpoint, clamped to
 * [min, max] so a single-valued histogram reports that value's bucket. */
int fab_hist_percentile(const fab_hist *h, double pct, uint64_t *out_ns) {
    if (!h || !out_ns || !(pct >= 0.0 && pct <= 100.0)) return FAB_EINVAL;
    uint64_t sum[FAB_HIST_NSUMMARY];
    fab_hist_summary(h, sum, FAB_HIST_NSUMMARY);
    uint64_t count = sum[0], min = sum[2], max = sum[3];
    if (count == 0) { *out_ns = 0; return 0; }
    if (pct >= 100.0) { *out_ns = max; return 0; }
    uint64_t rank = (uint64_t)ceil(pct * (double)count / 100.0);
    if (rank < 1) rank = 1;
    uint64_t seen = 0, v = max;
    for (uint32_t b = 0; b < FAB_HIST_BUCKETS; b++) {
        seen += atomic_load_explicit(&h->buckets[b], memory_order_relaxed);
        if (seen >= rank) { v = fab_hist_bucket_value(b); break; }
    }
    if (v > max) v = max;
    if (v < min) v = min;
    *out_ns = v;
    return 0;
}

int fab_hist_buckets(const fab_hist *h, uint64_t *out, uint32_t n) {
    if (!h || !out || n < FAB_HIST_BUCKETS) return FAB_EINVAL;
    for (uint32_t b = 0; b < FAB_HIST_BUCKETS; b++)
        out[b] = atomic_load_explicit(&h->buckets[b], memory_order_relaxed);
    return 0;
}
