/*
 * test_hist.c -- histogram geometry, <= 1% error from 1 ns to 100 s, merge,
 * percentiles, and the summary of an empty histogram.
 */
#include <math.h>

#include "check.h"
#include "fabric_core.h"

int main(void) {
    /* Every value's bucket reports within 1/256 of it (exact below 128). */
    double worst = 0.0;
    for (double v = 1.0; v <= 1e11; v *= 1.0137) {
        uint64_t x = (uint64_t)v;
        uint32_t b = fab_hist_bucket_of(x);
        CHECK(b < FAB_HIST_BUCKETS);
        CHECK(fab_hist_bucket_low(b) <= x);
        double err = fabs((double)fab_hist_bucket_value(b) - (double)x) / (double)x;
        if (err > worst) worst = err;
    }
    CHECK(worst <= 1.0 / 256 + 1e-12);
    for (uint64_t x = 0; x < 128; x++) CHECK(fab_hist_bucket_value(fab_hist_bucket_of(x)) == x);
    /* Buckets are contiguous and increasing. */
    for (uint32_t b = 1; b < FAB_HIST_BUCKETS; b++)
        CHECK(fab_hist_bucket_low(b) > fab_hist_bucket_low(b - 1));
    CHECK(fab_hist_bucket_of(UINT64_MAX) == FAB_HIST_BUCKETS - 1);

    fab_hist *a, *b;
    CHECK_RC(fab_hist_create(&a), 0);
    CHECK_RC(fab_hist_create(&b), 0);
    uint64_t out, s[FAB_HIST_NSUMMARY];
    CHECK_RC(fab_hist_percentile(a, 50.0, &out), 0);
    CHECK(out == 0);
    CHECK_RC(fab_hist_summary(a, s, FAB_HIST_NSUMMARY), 0);
    CHECK(s[0] == 0 && s[2] == 0 && s[3] == 0);
    CHECK_RC(fab_hist_percentile(a, 101.0, &out), FAB_EINVAL);
    CHECK_RC(fab_hist_percentile(a, NAN, &out), FAB_EINVAL);

    for (uint64_t v = 1; v <= 1000; v++) CHECK_RC(fab_hist_record(a, v * 1000, 1), 0);
    CHECK_RC(fab_hist_record(b, 5000000, 10), 0);
    CHECK_RC(fab_hist_record(b, UINT64_C(1) << 40, 1), 0);   /* beyond 137 s: overflow */
    CHECK_RC(fab_hist_percentile(a, 50.0, &out), 0);
    CHECK(fabs((double)out - 500000.0) / 500000.0 <= 0.01);
    CHECK_RC(fab_hist_percentile(a, 99.9, &out), 0);
    CHECK(fabs((double)out - 999000.0) / 999000.0 <= 0.01);
    CHECK_RC(fab_hist_percentile(a, 100.0, &out), 0);
    CHECK(out == 1000000);
    CHECK_RC(fab_hist_merge(a, b), 0);
    CHECK_RC(fab_hist_merge(a, a), FAB_EINVAL);
    CHECK_RC(fab_hist_summary(a, s, FAB_HIST_NSUMMARY), 0);
    CHECK(s[0] == 1011);
    CHECK(s[2] == 1000);
    CHECK(s[3] == UINT64_C(1) << 40);
    CHECK(s[4] == 1);
    CHECK_RC(fab_hist_percentile(a, 99.0, &out), 0);
    CHECK(fabs((double)out - 5e6) / 5e6 <= 0.01);
    fab_hist_destroy(a);
    fab_hist_destroy(b);
    CHECK_DONE("test_hist");
}
