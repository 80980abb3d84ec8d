/*
 * cost.c -- the pure functions of the cost model: no state but the PRNG the
 * caller passes in.  engine.c decides *what* an access costs; these compute
 * the pieces, and fabric/engine/_reference.py mirrors each one operation for
 * operation so the C core and the reference agree to the last bit.
 *
 *   curve_ns     piecewise-linear bandwidth -> latency, clamped at both ends
 *                (the Mess loaded-latency curves: Esmaili-Dokht et al.,
 *                MICRO 2024, arXiv 2405.10170; Micron CXL model: 226 ns idle,
 *                239 ns at 21 GB/s, 285 ns at 26.7 GB/s, ~1,285 ns past
 *                saturation near 26.8 GB/s).
 *   queue_excess M/M/1-style queueing when an element has no curve: the time
 *                through it grows as base / (1 - rho), capped at max_factor x
 *                base (default 6x, about the Mess CXL saturated/idle ratio,
 *                1285 / 226 = 5.7); we return only the rise above base.
 *   rounds_ns    latency of `rounds` dependent round trips with the device's
 *                tail jitter: none, lognormal (x exp(sigma Z), median kept),
 *                or spike (+spike_ns with probability p per round).
 *   stalls_ns    a slow device's rare long stalls: +stall_ns with probability
 *                p per latency round (fault injection, docs/faults.md).
 *   rng          xoshiro256** seeded through splitmix64 (Blackman & Vigna);
 *                normals by Box-Muller, one per pair of uniforms.
 */
#include <math.h>

#include "fabric_core.h"

uint64_t fab_mix64(uint64_t x) {
    x ^= x >> 30;
    x *= UINT64_C(0xbf58476d1ce4e5b9);
    x ^= x >> 27;
    x *= UINT64_C(0x94d049bb133111eb);
    x ^= x >> 31;
    return x;
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

void fab_rng_seed(fab_rng *r, uint64_t seed) {
    uint64_t z = seed;
    for (int i = 0; i < 4; i++) {
        z += UINT64_C(0x9e3779b97f4a7c15);
        r->s[i] = fab_mix64(z);
    }
}

uint64_t fab_rng_next(fab_rng *r) {
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

/* Uniform in [0, 1) with 53 random bits. */
double fab_rng_uniform(fab_rng *r) {
    return (double)(fab_rng_next(r) >> 11) * (1.0 / 9007199254740992.0);
}

double fab_rng_normal(fab_rng *r) {
    double u1 = fab_rng_uniform(r);
    double u2 = fab_rng_uniform(r);
    if (u1 <= 0.0) u1 = 1.0 / 9007199254740992.0;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

double fab_cost_curve_ns(const fab_curve_point *pts, uint32_t n, double x) {
    if (n == 0) return 0.0;
    if (x <= pts[0].bandwidth_gbps) return pts[0].latency_ns;
    for (uint32_t i = 1; i < n; i++) {
        if (x <= pts[i].bandwidth_gbps) {
            double b0 = pts[i - 1].bandwidth_gbps, l0 = pts[i - 1].latency_ns;
            double b1 = pts[i].bandwidth_gbps, l1 = pts[i].latency_ns;
            return l0 + (l1 - l0) * (x - b0) / (b1 - b0);
        }
    }
    return pts[n - 1].latency_ns;
}

double fab_cost_queue_excess_ns(double base_ns, double rho, double max_factor) {
    if (!(rho > 0.0)) return 0.0;
    double factor = max_factor;
    if (rho < 1.0) {
        double f = 1.0 / (1.0 - rho);
        if (f < factor) factor = f;
    }
    return base_ns * (factor - 1.0);
}

double fab_cost_rounds_ns(const fab_device_params *d, fab_rng *r, uint64_t rounds,
                          double latency_ns) {
    double sum = 0.0;
    switch (d->jitter_kind) {
    case FAB_JITTER_LOGNORMAL:
        for (uint64_t i = 0; i < rounds; i++)
            sum += latency_ns * exp(d->jitter_sigma * fab_rng_normal(r));
        return sum;
    case FAB_JITTER_SPIKE:
        for (uint64_t i = 0; i < rounds; i++) {
            double l = latency_ns;
            if (fab_rng_uniform(r) < d->jitter_p) l += d->jitter_spike_ns;
            sum += l;
        }
        return sum;
    default:
        return (double)rounds * latency_ns;
    }
}

/* Slow device: each of `rounds` latency rounds stalls stall_ns with
 * probability p (one uniform draw per round, after the jitter draws). */
double fab_cost_stalls_ns(fab_rng *r, uint64_t rounds, double p, double stall_ns) {
    double sum = 0.0;
    for (uint64_t i = 0; i < rounds; i++)
        if (fab_rng_uniform(r) < p) sum += stall_ns;
    return sum;
}
