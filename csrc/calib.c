/*
 * calib.c -- measure the real machine, so spin mode can subtract what the
 * host already pays for real and report how far it is from the model.
 *
 *   chase      idle load-to-use latency: a pointer chase over a buffer much
 *              larger than the last-level cache.  Nodes are one cache line
 *              each, linked in a single random cycle (Sattolo's algorithm),
 *              so every load depends on the previous one and the prefetchers
 *              cannot guess the next address.  The same method as Intel MLC's
 *              idle latency (82 ns DDR4 with Intel MLC to 94 ns Skylake DDR4 in
 *              the Mess benchmark data, arXiv 2405.10170).
 *   bandwidth  a streaming read (sum of 64-bit words) over a large buffer.
 *   clock      the cost of one CLOCK_MONOTONIC read (the spin loop's step).
 *   spin       the mean overshoot of spinning to a deadline.
 *
 * These allocate: they run once per cluster (the result is cached as
 * calibration.json), never on the access path.  Loops are bounded by their
 * arguments, which are range-checked.
 */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>

#include "fabric_core.h"

#define LINE 64
#define MAX_BUF (UINT64_C(1) << 34)   /* 16 GiB: refuse anything sillier */
#define MAX_STEPS (UINT64_C(1) << 32)

int fab_calib_chase(uint64_t buf_bytes, uint64_t steps, uint64_t seed, double *ns_per_load) {
    if (!ns_per_load || buf_bytes < 2 * LINE || buf_bytes > MAX_BUF || steps == 0 ||
        steps > MAX_STEPS)
        return FAB_EINVAL;
    uint64_t n = buf_bytes / LINE;
    char *buf = aligned_alloc(4096, (n * LINE + 4095) / 4096 * 4096);
    uint64_t *order = malloc(n * sizeof *order);
    if (!buf || !order) { free(buf); free(order); return FAB_ENOMEM; }
    memset(buf, 0, n * LINE);
    for (uint64_t i = 0; i < n; i++) order[i] = i;
    fab_rng rng;
    fab_rng_seed(&rng, seed);
    for (uint64_t i = n - 1; i > 0; i--) {           /* Sattolo: one n-cycle */
        uint64_t j = fab_rng_next(&rng) % i;
        uint64_t t = order[i]; order[i] = order[j]; order[j] = t;
    }
    for (uint64_t i = 0; i < n; i++)                 /* node i -> node order[i] */
        *(void **)(buf + i * LINE) = buf + order[i] * LINE;
    free(order);
    void *p = buf;
    for (uint64_t i = 0; i < n && i < steps; i++) p = *(void **)p;   /* warm the TLB */
    uint64_t t0 = fab_clock_wall_ns();
    for (uint64_t i = 0; i < steps; i++) p = *(void **)p;
    uint64_t t1 = fab_clock_wall_ns();
    *(void *volatile *)buf = p;                      /* keep the chase alive */
    free(buf);
    *ns_per_load = (double)(t1 - t0) / (double)steps;
    return 0;
}

int fab_calib_bandwidth(uint64_t buf_bytes, uint32_t reps, double *gbps) {
    if (!gbps || buf_bytes < 4096 || buf_bytes > MAX_BUF || reps == 0 || reps > 1000)
        return FAB_EINVAL;
    uint64_t n = buf_bytes / sizeof(uint64_t);
    uint64_t *buf = aligned_alloc(4096, (n * sizeof *buf + 4095) / 4096 * 4096);
    if (!buf) return FAB_ENOMEM;
    for (uint64_t i = 0; i < n; i++) buf[i] = i;
    uint64_t sum = 0;
    uint64_t t0 = fab_clock_wall_ns();
    for (uint32_t r = 0; r < reps; r++)
        for (uint64_t i = 0; i < n; i += 4)          /* four chains: not latency bound */
            sum += buf[i] + (i + 1 < n ? buf[i + 1] : 0) + (i + 2 < n ? buf[i + 2] : 0) +
                   (i + 3 < n ? buf[i + 3] : 0);
    uint64_t t1 = fab_clock_wall_ns();
    *(volatile uint64_t *)buf = sum;
    free(buf);
    *gbps = (double)(n * sizeof(uint64_t) * reps) / (double)(t1 - t0 ? t1 - t0 : 1);
    return 0;
}

int fab_calib_clock(uint32_t iters, double *ns_per_read) {
    if (!ns_per_read || iters == 0) return FAB_EINVAL;
    uint64_t t0 = fab_clock_wall_ns(), x = 0;
    for (uint32_t i = 0; i < iters; i++) x += fab_clock_wall_ns();
    uint64_t t1 = fab_clock_wall_ns();
    volatile uint64_t sink = x;
    (void)sink;
    *ns_per_read = (double)(t1 - t0) / (double)iters;
    return 0;
}

int fab_calib_spin(uint64_t wait_ns, uint32_t reps, double *mean_overshoot_ns) {
    if (!mean_overshoot_ns || reps == 0 || wait_ns > UINT64_C(1000000000)) return FAB_EINVAL;
    double total = 0.0;
    for (uint32_t r = 0; r < reps; r++) {
        uint64_t deadline = fab_clock_wall_ns() + wait_ns, now = 0;
        for (uint64_t i = 0; i <= wait_ns + 1; i++)
            if ((now = fab_clock_wall_ns()) >= deadline) break;
        if (now > deadline) total += (double)(now - deadline);
    }
    *mean_overshoot_ns = total / (double)reps;
    return 0;
}
