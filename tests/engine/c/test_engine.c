/*
 * test_engine.c -- the engine end to end from C: configuration checks,
 * region errors, hits and misses, pins and FAB_EBUSY, write-back on
 * unregister (by key walk and by frame scan, same charge), seeded random
 * operations checked by fab_engine_check after each (argv[1] is the seed),
 * two hosts sharing a segment file and a coherent region, the segment's own
 * checks, spin mode, the calibration entry points, fab_strerror, and the
 * fault state of the segment (device and link states, degrades, the bounded
 * poison table, slow devices) as the access path sees it, and lockstep
 * (bad configurations, a group of two driven least clock first, a host
 * behind driven by this same thread, park / unpark / release, leaving and
 * a fresh group, fab_engine_check over the lockstep block), and the host's
 * DRAM as a contended element (slots per engine, share, curve, check).
 * Files go in a fresh directory under /tmp, removed at the end.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "fabric_core.h"

enum { NH = 2, ND = 2, NL = 4, PAGE = 4096 };

struct setup {
    fab_engine_config cfg;
    fab_device_params devs[ND];
    fab_link_params links[NL];
    fab_path_params paths[ND];
    uint32_t path_links[2 * ND];
    fab_curve_params curves[1];
    fab_curve_point points[5];
    fab_engine_model m;
};

/* Hosts h0, h1 with uplinks 0, 1; devices d0, d1 with links 2, 3; d0 carries
 * the Mess CXL curve (226 ns idle .. 1285 ns past 26.8 GB/s). */
static void setup_init(struct setup *s, uint32_t host, uint32_t mode, uint64_t cache_pages) {
    memset(s, 0, sizeof *s);
    fab_engine_config *c = &s->cfg;
    c->page_size_bytes = PAGE;
    c->nhosts = NH;
    c->ndevices = ND;
    c->nlinks = NL;
    c->host = host;
    c->mode = mode;
    c->eviction = FAB_EVICT_CLOCK;
    c->mlp_lines = 12;
    c->threads = 24;
    c->seed = 7;
    c->cache_pages = cache_pages;
    c->max_regions = 8;
    c->touch_entries = 1024;
    c->local_dram_ns = 90.0;
    c->local_bandwidth_gbps = 116.0;
    c->queue_max_factor = 6.0;
    c->rate_window_ns = 20000;
    c->active_window_ns = 100000;
    c->active_window_wall_ns = 30000000;
    c->spin_quantum_ns = 1000;
    c->spin_slack_ns = 1000;
    for (int d = 0; d < ND; d++) {
        s->devs[d] = (fab_device_params){226.0, 226.0, 26.8, FAB_JITTER_NONE, 0, 0, 0, 0, 0};
        s->paths[d] = (fab_path_params){316.0, 316.0, 26.8, FAB_TIER_FAR, (uint32_t)(2 * d), 2};
        s->path_links[2 * d] = host;
        s->path_links[2 * d + 1] = 2 + (uint32_t)d;
    }
    for (int l = 0; l < NL; l++) s->links[l] = (fab_link_params){0.0, 31.5};
    static const double bw[5] = {0.0, 14.7, 21.0, 26.7, 26.8};
    static const double lat[5] = {226.0, 232.0, 239.0, 285.0, 1285.0};
    for (int i = 0; i < 5; i++) s->points[i] = (fab_curve_point){bw[i], lat[i]};
    s->curves[0] = (fab_curve_params){NL + 0, 100.0, 0, 5};
    s->m = (fab_engine_model){s->devs, s->links, s->paths, s->path_links, 2 * ND,
                              s->curves, 1, s->points, 5};
}

static uint64_t dev_ctr(fab_engine *e, uint32_t host, uint32_t dev, int which) {
    uint64_t c[FAB_NCTRS];
    CHECK_RC(fab_seg_dev_read(fab_engine_segment(e), host, dev, c, FAB_NCTRS), 0);
    return c[which];
}

static void test_config(void) {
    struct setup s;
    fab_engine *e;
    setup_init(&s, 0, FAB_MODE_VIRTUAL, 16);
    s.cfg.mlp_lines = 0;
    CHECK_RC(fab_engine_create(&s.cfg, &s.m, NULL, &e), FAB_EINVAL);
    setup_init(&s, 0, FAB_MODE_VIRTUAL, 16);
    s.cfg.page_size_bytes = 3000;
    CHECK_RC(fab_engine_create(&s.cfg, &s.m, NULL, &e), FAB_EINVAL);
    setup_init(&s, 0, FAB_MODE_VIRTUAL, 16);
    s.path_links[1] = 99;
    CHECK_RC(fab_engine_create(&s.cfg, &s.m, NULL, &e), FAB_ERANGE);
    setup_init(&s, 0, FAB_MODE_VIRTUAL, 16);
    s.points[2].bandwidth_gbps = 1.0;                       /* not increasing */
    CHECK_RC(fab_engine_create(&s.cfg, &s.m, NULL, &e), FAB_EINVAL);
    setup_init(&s, 5, FAB_MODE_VIRTUAL, 16);
    CHECK_RC(fab_engine_create(&s.cfg, &s.m, NULL, &e), FAB_EINVAL);
    setup_init(&s, 0, FAB_MODE_VIRTUAL, 16);
    CHECK_RC(fab_engine_create(&s.cfg, &s.m, "/nonexistent/seg", &e), FAB_ESEGMENT);
}

static void test_private(void) {
    struct setup s;
    fab_engine *e;
    setup_init(&s, 0, FAB_MODE_VIRTUAL, 4);
    CHECK_RC(fab_engine_create(&s.cfg, &s.m, NULL, &e), 0);
    uint32_t devs[2] = {0, 1}, bad[1] = {9};
    CHECK_RC(fab_engine_region_add(e, 1, 16, bad, 1, 1, FAB_POLICY_CACHE, 2, 0, NULL), FAB_ERANGE);
    CHECK_RC(fab_engine_region_add(e, 1, 16, devs, 2, 1, 9, 2, 0, NULL), FAB_EINVAL);
    CHECK_RC(fab_engine_region_add(e, 1, 16, devs, 2, 1, 0, 2, FAB_SHARE_SHARED, NULL), FAB_EINVAL);
    CHECK_RC(fab_engine_region_add(e, UINT64_C(1) << 32, 16, devs, 2, 1, 0, 2, 0, NULL), FAB_EINVAL);
    CHECK_RC(fab_engine_region_add(e, 1, 16, devs, 2, 1, FAB_POLICY_CACHE, 2, 0, NULL), 0);
    CHECK_RC(fab_engine_region_add(e, 1, 16, devs, 2, 1, FAB_POLICY_CACHE, 2, 0, NULL), FAB_EEXIST);
    CHECK_RC(fab_engine_access(e, 2, 0, 1, 0), FAB_ENOENT);
    CHECK_RC(fab_engine_access(e, 1, 16 * PAGE, 1, 0), FAB_ERANGE);
    CHECK_RC(fab_engine_access(e, 1, 0, UINT64_MAX, 0), FAB_ERANGE);
    CHECK_RC(fab_engine_access(e, 1, 0, 0, 0), 0);

    int64_t miss = fab_engine_access(e, 1, 0, PAGE, 0);
    int64_t hit = fab_engine_access(e, 1, 0, PAGE, 0);
    CHECK(miss > 300 && hit > 0 && hit < miss);
    CHECK(fab_engine_virtual_time(e) == (uint64_t)(miss + hit));
    CHECK(dev_ctr(e, 0, 0, FAB_CTR_HITS) == 1 && dev_ctr(e, 0, 0, FAB_CTR_MISSES) == 1);

    /* Dirty the 4 cached pages (pages 0..3), pin them, and the cache is stuck. */
    CHECK(fab_engine_access(e, 1, 0, 4 * PAGE, 1) > 0);
    uint32_t st[4];
    CHECK_RC(fab_engine_page_state(e, 1, 2, st, 4), 0);
    CHECK(st[0] == 1 && st[1] == 1);
    CHECK_RC(fab_engine_pin(e, 1, 0, 5, 1), FAB_ENOENT);     /* page 4 is not resident */
    CHECK_RC(fab_engine_pin(e, 1, 0, 4, 1), 0);
    CHECK_RC(fab_engine_access(e, 1, 4 * PAGE, 1, 0), FAB_EBUSY);
    CHECK(fab_engine_access(e, 1, 0, PAGE, 0) > 0);           /* hits still work */
    CHECK_RC(fab_engine_region_remove(e, 1), FAB_EBUSY);
    CHECK_RC(fab_engine_pin(e, 1, 0, 4, -1), 0);
    CHECK_RC(fab_engine_pin(e, 1, 0, 1, -1), FAB_EINVAL);
    int x;
    CHECK_RC(fab_engine_set_frame(e, 1, 0, &x), 0);
    CHECK_RC(fab_engine_set_frame(e, 1, 9, &x), FAB_ENOENT);
    uint64_t wb0 = dev_ctr(e, 0, 0, FAB_CTR_WRITEBACKS) + dev_ctr(e, 0, 1, FAB_CTR_WRITEBACKS);
    int64_t charge = fab_engine_region_remove(e, 1);
    CHECK(charge > 0);
    uint64_t wb1 = dev_ctr(e, 0, 0, FAB_CTR_WRITEBACKS) + dev_ctr(e, 0, 1, FAB_CTR_WRITEBACKS);
    CHECK(wb1 - wb0 == 4);
    uint32_t info[4];
    CHECK_RC(fab_engine_cache_info(e, info, 4), 0);
    CHECK(info[0] == 4 && info[1] == 0 && info[3] == 0);
    CHECK_RC(fab_engine_access(e, 1, 0, 1, 0), FAB_ENOENT);

    /* Loaded latency follows the device curve: drive d0 at ~21 GB/s. */
    CHECK_RC(fab_engine_region_add(e, 2, 4096, devs, 1, 1, FAB_POLICY_DIRECT, 2, 0, NULL), 0);
    for (int i = 0; i < 400; i++) {
        int64_t c = fab_engine_access(e, 2, (uint64_t)(i % 64) * 16 * PAGE, 16 * PAGE, 0);
        CHECK(c > 0);
        uint64_t period = (uint64_t)(16.0 * PAGE / 21.0);
        if ((uint64_t)c < period) fab_engine_advance(e, period - (uint64_t)c);
    }
    double lat;
    CHECK_RC(fab_engine_loaded_latency(e, 0, 0, &lat), 0);
    /* 316 idle + curve(21) - 226 = 13, plus a few ns of link queueing. */
    CHECK(lat > 316.0 + 10.0 && lat > 329.0 * 0.9 && lat < 329.0 * 1.1);
    CHECK_RC(fab_engine_loaded_latency(e, 7, 0, &lat), FAB_ERANGE);
    fab_engine_destroy(e);
}

static void test_shared(const char *dir) {
    char seg[512], ver[512];
    snprintf(seg, sizeof seg, "%s/engine.seg", dir);
    snprintf(ver, sizeof ver, "%s/r5.versions", dir);
    CHECK_RC(fab_seg_create(seg, NH, ND, NL), 0);
    fab_seg *sg;
    CHECK_RC(fab_seg_open(seg, NH, ND + 1, NL, 0, &sg), FAB_ESEGMENT);
    CHECK_RC(fab_seg_open(seg, NH, ND, NL, 0, &sg), 0);
    CHECK(fab_seg_hist(sg, NH) == NULL);
    struct setup s0, s1;
    fab_engine *e0, *e1;
    setup_init(&s0, 0, FAB_MODE_VIRTUAL, 8);
    setup_init(&s1, 1, FAB_MODE_VIRTUAL, 8);
    CHECK_RC(fab_engine_create(&s0.cfg, &s0.m, seg, &e0), 0);
    CHECK_RC(fab_engine_create(&s1.cfg, &s1.m, seg, &e1), 0);
    uint32_t devs[1] = {1};
    CHECK_RC(fab_engine_region_add(e0, 5, 8, devs, 1, 1, FAB_POLICY_CACHE, 2, FAB_SHARE_COHERENT, ver), 0);
    CHECK_RC(fab_engine_region_add(e1, 5, 8, devs, 1, 1, FAB_POLICY_CACHE, 2, FAB_SHARE_COHERENT, ver), 0);
    CHECK(fab_engine_access(e0, 5, 0, PAGE, 0) > 0);          /* h0 caches page 0 */
    CHECK(fab_engine_access(e1, 5, 0, PAGE, 1) > 0);          /* h1 writes it: back-invalidate */
    CHECK(dev_ctr(e1, 1, 1, FAB_CTR_BACK_INVALIDATIONS) == 1);
    CHECK(fab_engine_access(e0, 5, 0, PAGE, 0) > 0);          /* h0's copy is stale */
    CHECK(dev_ctr(e0, 0, 1, FAB_CTR_INVALIDATIONS) == 1);
    CHECK(dev_ctr(e0, 0, 1, FAB_CTR_MISSES) == 2);
    CHECK(fab_engine_access(e0, 5, 0, PAGE, 0) > 0);          /* fresh again: a hit */
    CHECK(dev_ctr(e0, 0, 1, FAB_CTR_HITS) == 1);
    /* Another process's view: both hosts' counters in one segment. */
    uint64_t c[FAB_NCTRS], h[FAB_NHCTRS];
    CHECK_RC(fab_seg_dev_read(sg, 1, 1, c, FAB_NCTRS), 0);
    CHECK(c[FAB_CTR_BACK_INVALIDATIONS] == 1);
    CHECK_RC(fab_seg_host_read(sg, 0, h, FAB_NHCTRS), 0);
    CHECK(h[FAB_HCTR_CALLS] == 3 && h[FAB_HCTR_ATTACHED] == 1);
    CHECK_RC(fab_seg_dev_read(sg, 2, 0, c, FAB_NCTRS), FAB_ERANGE);
    double load;
    uint32_t active;
    uint64_t total;
    CHECK_RC(fab_seg_res_read(sg, NL + 1, 1000000000, &load, &active, &total), 0);
    CHECK(active == 2 && total > 0);
    CHECK_RC(fab_seg_res_read(sg, NL + ND, 1, &load, &active, &total), FAB_ERANGE);
    fab_engine_destroy(e0);
    fab_engine_destroy(e1);
    fab_seg_close(sg);
    unlink(seg);
    unlink(ver);
}

/* Unregistering a region with dirty pages on both devices: every dirty page
 * is written back to its own device, and the charge is the same whether the
 * engine walks the region's pages by key (small region) or scans the frames
 * (large region): write-backs are priced in device order either way, which
 * matters with jitter (one PRNG draw per round, device by device). */
static void test_remove_dirty(void) {
    int64_t charges[2];
    uint64_t injected[2][ND];
    for (int big = 0; big < 2; big++) {
        struct setup s;
        fab_engine *e;
        setup_init(&s, 0, FAB_MODE_VIRTUAL, 64);
        for (int d = 0; d < ND; d++) {
            s.devs[d].jitter_kind = FAB_JITTER_LOGNORMAL;
            s.devs[d].jitter_sigma = 0.5;
        }
        CHECK_RC(fab_engine_create(&s.cfg, &s.m, NULL, &e), 0);
        uint32_t devs[2] = {1, 0};           /* page 0 on d1: d1 is touched first */
        uint64_t npages = big ? 64 : 12;     /* 64 > capacity / 4: scan; 12: walk */
        CHECK_RC(fab_engine_region_add(e, 3, npages, devs, 2, 1, FAB_POLICY_CACHE, 2, 0, NULL), 0);
        CHECK_RC(fab_engine_region_add(e, 4, 8, devs, 2, 1, FAB_POLICY_CACHE, 2, 0, NULL), 0);
        /* Page 3 (on d0) takes frame 0, so a frame scan meets d0 first while a
         * key walk meets page 2 (on d1) first. */
        CHECK(fab_engine_access(e, 3, 3 * PAGE, PAGE, 0) > 0);
        CHECK(fab_engine_access(e, 3, 0, 10 * PAGE, 0) > 0);     /* 10 resident pages */
        CHECK(fab_engine_access(e, 3, 2 * PAGE, 5 * PAGE, 1) > 0); /* pages 2..6 dirty */
        CHECK(fab_engine_access(e, 4, 0, 8 * PAGE, 1) > 0);      /* another region's pages */
        CHECK_RC(fab_engine_check(e), 0);
        uint64_t wb[ND], fb[ND];
        for (int d = 0; d < ND; d++) {
            wb[d] = dev_ctr(e, 0, (uint32_t)d, FAB_CTR_WRITEBACKS);
            fb[d] = dev_ctr(e, 0, (uint32_t)d, FAB_CTR_FAR_BYTES);
            injected[big][d] = dev_ctr(e, 0, (uint32_t)d, FAB_CTR_INJECTED_NS);
        }
        charges[big] = fab_engine_region_remove(e, 3);
        CHECK(charges[big] > 0);
        for (int d = 0; d < ND; d++)   /* what the write-backs cost each device */
            injected[big][d] = dev_ctr(e, 0, (uint32_t)d, FAB_CTR_INJECTED_NS) - injected[big][d];
        /* Pages 2, 4, 6 live on d1 (even pages), 3 and 5 on d0. */
        CHECK(dev_ctr(e, 0, 1, FAB_CTR_WRITEBACKS) - wb[1] == 3);
        CHECK(dev_ctr(e, 0, 0, FAB_CTR_WRITEBACKS) - wb[0] == 2);
        CHECK(dev_ctr(e, 0, 1, FAB_CTR_FAR_BYTES) - fb[1] == 3 * PAGE);
        CHECK(dev_ctr(e, 0, 0, FAB_CTR_FAR_BYTES) - fb[0] == 2 * PAGE);
        uint32_t info[4], st[4];
        CHECK_RC(fab_engine_cache_info(e, info, 4), 0);
        CHECK(info[1] == 8 && info[3] == 1);                     /* region 4 stays */
        CHECK_RC(fab_engine_page_state(e, 4, 7, st, 4), 0);
        CHECK(st[0] == 1 && st[1] == 1);
        CHECK_RC(fab_engine_check(e), 0);
        /* A clean region with nothing resident costs nothing to drop. */
        CHECK_RC(fab_engine_region_add(e, 3, npages, devs, 2, 1, FAB_POLICY_CACHE, 2, 0, NULL), 0);
        CHECK_RC(fab_engine_region_remove(e, 3), 0);
        CHECK(fab_engine_region_remove(e, 4) > 0);                  /* its 8 dirty pages */
        CHECK_RC(fab_engine_region_remove(e, 4), FAB_ENOENT);
        fab_engine_destroy(e);
    }
    CHECK(charges[0] == charges[1]);
    for (int d = 0; d < ND; d++) CHECK(injected[0][d] == injected[1][d] && injected[0][d] > 0);
}

/* Random registrations, accesses (some of whole regions, which the engine
 * prices from its per-region resident summary when every page is cached),
 * pins and removals over three regions of every policy; fab_engine_check (and
 * with it fab_pcache_check) after every operation.  A failure prints the seed; argv[1] replays it. */
static void test_random_ops(uint64_t seed) {
    for (uint32_t ev = 0; ev <= FAB_EVICT_FIFO; ev++) {
        struct setup s;
        fab_engine *e;
        setup_init(&s, 0, FAB_MODE_VIRTUAL, 13);
        s.cfg.eviction = ev;
        CHECK_RC(fab_engine_create(&s.cfg, &s.m, NULL, &e), 0);
        fab_rng rng;
        fab_rng_seed(&rng, seed * 3 + ev);
        uint32_t devs[2] = {0, 1};
        int live[3] = {0, 0, 0};
        for (int op = 0; op < 3000 && !check_failures; op++) {
            uint32_t rid = (uint32_t)(fab_rng_next(&rng) % 3), what = (uint32_t)(fab_rng_next(&rng) % 20);
            uint64_t npages = 8 + 20 * rid;      /* 8, 28, 48 pages: walked and scanned */
            if (!live[rid]) {
                CHECK_RC(fab_engine_region_add(e, rid + 1, npages, devs, 2, 1 + rid, rid, 2, 0,
                                               NULL), 0);
                live[rid] = 1;
            } else if (what == 0) {
                int64_t rc = fab_engine_region_remove(e, rid + 1);
                CHECK(rc >= 0 || rc == FAB_EBUSY);
                if (rc >= 0) live[rid] = 0;
            } else if (what < 3) {
                uint64_t p = fab_rng_next(&rng) % npages;
                int32_t delta = what == 1 ? 1 : -1;
                int rc = fab_engine_pin(e, rid + 1, p, 1, delta);
                CHECK(rc == 0 || rc == FAB_ENOENT || rc == FAB_EINVAL);
            } else if (what >= 17) {             /* whole region: often all resident */
                int64_t rc = fab_engine_access(e, rid + 1, 0, npages * PAGE, 0);
                CHECK(rc >= 0 || rc == FAB_EBUSY);
            } else {
                uint64_t off = fab_rng_next(&rng) % (npages * PAGE);
                uint64_t n = 1 + fab_rng_next(&rng) % (6 * PAGE);
                if (n > npages * PAGE - off) n = npages * PAGE - off;
                int64_t rc = fab_engine_access(e, rid + 1, off, n, (int)(what & 1));
                CHECK(rc >= 0 || rc == FAB_EBUSY);
            }
            int rc = fab_engine_check(e);
            if (rc != 0) {
                fprintf(stderr, "test_random_ops: eviction %u, op %d: check %d (%s), seed %llu\n",
                        ev, op, rc, fab_strerror(rc), (unsigned long long)seed);
                check_failures++;
            }
        }
        fab_engine_destroy(e);
    }
}

static void test_errors(void) {
    static const int codes[] = {FAB_EINVAL, FAB_ENOMEM, FAB_ERANGE, FAB_EBUSY, FAB_ENOENT,
                                FAB_ECORRUPT, FAB_ESEGMENT, FAB_EEXIST};
    const char *unknown = fab_strerror(-999999);
    for (unsigned i = 0; i < sizeof codes / sizeof codes[0]; i++) {
        CHECK(fab_strerror(codes[i])[0] != 0);
        CHECK(strcmp(fab_strerror(codes[i]), unknown) != 0);
    }
    CHECK(strcmp(fab_strerror(-2), unknown) != 0);              /* -ENOENT: errno text */
    CHECK_RC(fab_engine_check(NULL), FAB_EINVAL);
}

static void test_spin(void) {
    struct setup s;
    fab_engine *e;
    setup_init(&s, 0, FAB_MODE_SPIN, 4);
    CHECK_RC(fab_engine_create(&s.cfg, &s.m, NULL, &e), 0);
    uint64_t t0 = fab_clock_wall_ns();
    for (int i = 0; i < 50; i++) CHECK_RC(fab_engine_advance(e, 2000), 0);
    CHECK_RC(fab_engine_advance(e, 300000), 0);                /* sleeps, then spins */
    uint64_t t1 = fab_clock_wall_ns();
    CHECK(t1 - t0 >= 390000);                                  /* it did wait */
    CHECK(fab_engine_virtual_time(e) == 400000);
    fab_engine_destroy(e);
}

static void test_calib(void) {
    double x;
    CHECK_RC(fab_calib_chase(1 << 20, 10000, 1, &x), 0);
    CHECK(x > 0.0);
    CHECK_RC(fab_calib_chase(1, 10, 1, &x), FAB_EINVAL);
    CHECK_RC(fab_calib_bandwidth(1 << 20, 2, &x), 0);
    CHECK(x > 0.0);
    CHECK_RC(fab_calib_clock(1000, &x), 0);
    CHECK(x > 0.0);
    CHECK_RC(fab_calib_spin(1000, 10, &x), 0);
    CHECK(x >= 0.0);
}

/* Fault state: written through a second mapping of the segment file (as the
 * fault-injection process does), seen by the engine's next access. */
static void test_faults(const char *dir) {
    char path[256];
    snprintf(path, sizeof path, "%s/faults.seg", dir);
    CHECK_RC(fab_seg_create(path, NH, ND, NL), 0);
    fab_seg *w, *ro;
    CHECK_RC(fab_seg_open(path, NH, ND, NL, 1, &w), 0);
    CHECK_RC(fab_seg_open(path, NH, ND, NL, 0, &ro), 0);
    struct setup s;
    fab_engine *e;
    setup_init(&s, 0, FAB_MODE_VIRTUAL, 0);
    CHECK_RC(fab_engine_create(&s.cfg, &s.m, path, &e), 0);
    uint32_t devs[2] = {0, 1};
    uint64_t offs[2] = {0, 64 * PAGE};
    CHECK_RC(fab_engine_region_add(e, 3, 8, devs, 2, 2, FAB_POLICY_DIRECT, 2, 0, NULL), 0);
    CHECK_RC(fab_engine_region_place(e, 3, offs, 1), FAB_EINVAL);   /* one offset per device */
    CHECK_RC(fab_engine_region_place(e, 9, offs, 2), FAB_ENOENT);
    CHECK_RC(fab_engine_region_place(e, 3, offs, 2), 0);
    int64_t base = fab_engine_access(e, 3, 0, 8 * PAGE, 0);
    CHECK(base > 0);

    /* Setters: read-only mappings, bad values and indices are refused. */
    CHECK_RC(fab_seg_dev_set_state(ro, 0, FAB_DEV_FAILED), FAB_EINVAL);
    CHECK_RC(fab_seg_dev_set_state(w, 0, 7), FAB_EINVAL);
    CHECK_RC(fab_seg_dev_set_state(w, ND, FAB_DEV_FAILED), FAB_ERANGE);
    CHECK_RC(fab_seg_link_set(w, 0, FAB_LINK_UP, 0.5), FAB_EINVAL);
    CHECK_RC(fab_seg_link_set(w, NL, FAB_LINK_UP, 2.0), FAB_ERANGE);
    CHECK_RC(fab_seg_dev_set_slow(w, 0, 1.5, 10), FAB_EINVAL);
    CHECK_RC(fab_seg_poison_add(w, 0, 0, 0), FAB_EINVAL);
    uint64_t g0 = fab_seg_fault_gen(ro);

    /* Device states: the access names the device; d0-only accesses still work. */
    CHECK_RC(fab_seg_dev_set_state(w, 1, FAB_DEV_FAILED), 0);
    CHECK(fab_seg_fault_gen(ro) == g0 + 1);
    uint64_t lf[4];
    CHECK_RC(fab_engine_access(e, 3, 0, 8 * PAGE, 0), FAB_EFAILED);
    CHECK_RC(fab_engine_last_fault(e, lf, 4), 0);
    CHECK(lf[1] == 1 && lf[2] == UINT64_MAX);
    CHECK(fab_engine_access(e, 3, 0, 2 * PAGE, 0) > 0);       /* pages 0, 1 on d0 */
    CHECK_RC(fab_seg_dev_set_state(w, 1, FAB_DEV_UNAVAILABLE), 0);
    CHECK_RC(fab_engine_access(e, 3, 2 * PAGE, 1, 1), FAB_EUNAVAIL);
    CHECK_RC(fab_seg_dev_set_state(w, 1, FAB_DEV_UP), 0);

    /* A cut link: host 0's path to d0 crosses links 0 and 2. */
    CHECK_RC(fab_seg_link_set(w, 2, FAB_LINK_CUT, 1.0), 0);
    CHECK_RC(fab_engine_access(e, 3, 0, PAGE, 0), FAB_ELINKDOWN);
    CHECK_RC(fab_engine_last_fault(e, lf, 4), 0);
    CHECK(lf[1] == 0 && lf[2] == 2);
    CHECK_RC(fab_seg_link_set(w, 1, FAB_LINK_CUT, 1.0), 0);  /* host 1's uplink: not ours */
    CHECK_RC(fab_seg_link_set(w, 2, FAB_LINK_UP, 1.0), 0);
    CHECK(fab_engine_access(e, 3, 0, 8 * PAGE, 0) == base);
    CHECK_RC(fab_seg_link_set(w, 1, FAB_LINK_UP, 1.0), 0);

    /* A degraded link costs more, and exactly the old charge once restored. */
    CHECK_RC(fab_seg_link_set(w, 0, FAB_LINK_UP, 8.0), 0);
    uint32_t st;
    double k;
    CHECK_RC(fab_seg_link_faults(ro, 0, &st, &k), 0);
    CHECK(st == FAB_LINK_UP && k == 8.0);
    CHECK(fab_engine_access(e, 3, 0, 8 * PAGE, 0) > base);
    CHECK_RC(fab_seg_link_set(w, 0, FAB_LINK_UP, 1.0), 0);
    CHECK(fab_engine_access(e, 3, 0, 8 * PAGE, 0) == base);

    /* Poison: page 5 is stripe 2 (pages 4, 5) on d0 at 2 * PAGE, so 3 * PAGE. */
    CHECK_RC(fab_seg_poison_add(w, 0, 3 * PAGE, PAGE), 0);
    CHECK_RC(fab_engine_access(e, 3, 0, 8 * PAGE, 0), FAB_EPOISON);
    CHECK_RC(fab_engine_last_fault(e, lf, 4), 0);
    CHECK(lf[1] == 0 && lf[3] == 5 * PAGE);
    CHECK(fab_engine_access(e, 3, 0, 4 * PAGE, 0) > 0);       /* pages 0..3: clean */
    CHECK(fab_engine_access(e, 3, 5 * PAGE + 8, 64, 1) > 0);  /* a partial write */
    uint64_t tab[2 * FAB_POISON_MAX];
    CHECK_RC(fab_seg_poison_read(ro, 0, tab, 2 * FAB_POISON_MAX), 1);
    CHECK(fab_engine_access(e, 3, 4 * PAGE + 8, 2 * PAGE - 8, 1) > 0);  /* page 5 whole */
    CHECK_RC(fab_seg_poison_read(ro, 0, tab, 2 * FAB_POISON_MAX), 0);
    /* Readable again; not necessarily at `base`: the two writes are in the
     * elements' recent read/write mix, which prices a full-duplex link. */
    CHECK(fab_engine_access(e, 3, 0, 8 * PAGE, 0) > 0);
    /* The table: merges, a bound, splits. */
    CHECK_RC(fab_seg_poison_add(w, 1, 0, PAGE), 0);
    CHECK_RC(fab_seg_poison_add(w, 1, PAGE, PAGE), 0);
    CHECK_RC(fab_seg_poison_read(ro, 1, tab, 2 * FAB_POISON_MAX), 1);
    CHECK(tab[0] == 0 && tab[1] == 2 * PAGE);
    for (uint64_t i = 1; i < FAB_POISON_MAX; i++)
        CHECK_RC(fab_seg_poison_add(w, 1, (4 * i) * PAGE, PAGE), 0);
    CHECK_RC(fab_seg_poison_add(w, 1, 1000 * PAGE, PAGE), FAB_ENOMEM);
    CHECK_RC(fab_seg_poison_clear(w, 1, PAGE / 2, 1), FAB_ENOMEM);
    CHECK_RC(fab_seg_poison_clear(w, 1, 0, 4 * PAGE), 0);
    CHECK_RC(fab_seg_poison_read(ro, 1, tab, 2 * FAB_POISON_MAX), FAB_POISON_MAX - 1);
    CHECK_RC(fab_seg_poison_clear(w, 1, 0, 1000 * PAGE), 0);
    CHECK_RC(fab_seg_poison_read(ro, 1, tab, 2 * FAB_POISON_MAX), 0);

    /* A slow device: every round stalls with p = 1. */
    CHECK_RC(fab_seg_dev_set_slow(w, 0, 1.0, 1000000), 0);
    CHECK(fab_engine_access(e, 3, 0, PAGE, 0) > 1000000);
    CHECK_RC(fab_seg_dev_set_slow(w, 0, 0.0, 0), 0);
    double p;
    uint64_t ns;
    uint32_t np;
    CHECK_RC(fab_seg_dev_faults(ro, 0, &st, &p, &ns, &np), 0);
    CHECK(st == FAB_DEV_UP && p == 0.0 && ns == 0 && np == 0);
    CHECK_RC(fab_engine_check(e), 0);
    fab_engine_destroy(e);
    fab_seg_close(w);
    fab_seg_close(ro);
    unlink(path);
}

/* Lockstep from C: both hosts in one thread, so always the one with the
 * least clock moves (the rule never blocks), until a deliberate violation. */
static void test_lockstep(const char *dir) {
    char path[512];
    snprintf(path, sizeof path, "%s/lockstep.seg", dir);
    CHECK_RC(fab_seg_create(path, NH, ND, NL), 0);
    struct setup s0, s1;
    fab_engine *e0, *e1, *bad;
    setup_init(&s0, 0, FAB_MODE_SPIN, 0);
    s0.cfg.lockstep_quantum_ns = 1000;
    s0.cfg.lockstep_hosts = 2;
    CHECK_RC(fab_engine_create(&s0.cfg, &s0.m, path, &bad), FAB_EINVAL);     /* not virtual */
    setup_init(&s0, 0, FAB_MODE_VIRTUAL, 0);
    s0.cfg.lockstep_quantum_ns = 1000;
    s0.cfg.lockstep_hosts = NH + 1;
    CHECK_RC(fab_engine_create(&s0.cfg, &s0.m, path, &bad), FAB_EINVAL);     /* too many */
    s0.cfg.lockstep_hosts = 2;
    s0.cfg.lockstep_timeout_ms = 0;     /* never wait: a violation fails at once */
    setup_init(&s1, 1, FAB_MODE_VIRTUAL, 0);
    s1.cfg.lockstep_quantum_ns = 1000;
    s1.cfg.lockstep_hosts = 2;
    s1.cfg.lockstep_timeout_ms = 0;
    CHECK_RC(fab_engine_create(&s0.cfg, &s0.m, path, &e0), 0);
    CHECK_RC(fab_engine_create(&s0.cfg, &s0.m, path, &bad), FAB_EBUSY);      /* h0 twice */
    s1.cfg.lockstep_quantum_ns = 2000;
    CHECK_RC(fab_engine_create(&s1.cfg, &s1.m, path, &bad), FAB_EINVAL);     /* other quantum */
    s1.cfg.lockstep_quantum_ns = 1000;
    uint32_t devs[1] = {0};
    CHECK_RC(fab_engine_region_add(e0, 1, 64, devs, 1, 1, FAB_POLICY_DIRECT, 1,
                                   FAB_SHARE_PRIVATE, NULL), 0);
    CHECK_RC(fab_engine_access(e0, 1, 0, 4096, 0), FAB_ELOCKSTEP);           /* h1 not joined */
    uint64_t info[11];
    CHECK_RC(fab_engine_lockstep_info(e0, info, 11), 0);
    CHECK(info[7] == 1 && info[9] == 1 && info[10] == 2);                   /* 1 of 2 joined */
    CHECK_RC(fab_engine_create(&s1.cfg, &s1.m, path, &e1), 0);
    CHECK_RC(fab_engine_region_add(e1, 1, 64, devs, 1, 1, FAB_POLICY_DIRECT, 1,
                                   FAB_SHARE_PRIVATE, NULL), 0);
    for (int i = 0; i < 400; i++) {
        fab_engine *e = fab_engine_virtual_time(e0) <= fab_engine_virtual_time(e1) ? e0 : e1;
        if (i % 3 == 2) CHECK_RC(fab_engine_advance(e, (uint64_t)(i * 37 % 3000)), 0);
        else CHECK(fab_engine_access(e, 1, (uint64_t)(i % 60) * PAGE, 4 * PAGE, i % 5 == 0) > 0);
    }
    CHECK_RC(fab_engine_check(e0), 0);
    CHECK_RC(fab_engine_check(e1), 0);
    /* h0 runs ahead of h1's quantum: h1 is driven by this thread, so it fails at once. */
    uint64_t v0 = fab_engine_virtual_time(e0), t1 = fab_engine_virtual_time(e1);
    if (t1 < v0) CHECK_RC(fab_engine_advance(e1, v0 - t1), 0);   /* level: both at v0 */
    if (v0 < t1) CHECK_RC(fab_engine_advance(e0, t1 - v0), 0);
    t1 = fab_engine_virtual_time(e1);
    CHECK_RC(fab_engine_advance(e0, 5000), 0);
    CHECK_RC(fab_engine_access(e0, 1, 0, 4096, 0), FAB_ELOCKSTEP);
    CHECK_RC(fab_engine_lockstep_info(e0, info, 11), 0);
    CHECK(info[7] == 3 && info[8] == 1 && info[9] == t1);
    /* Parked, h0 holds no one back; refused accesses; h1 catches up. */
    CHECK_RC(fab_engine_lockstep_park(e0), 0);
    CHECK_RC(fab_engine_access(e0, 1, 0, 4096, 0), FAB_EINVAL);
    CHECK_RC(fab_engine_check(e0), 0);
    CHECK_RC(fab_engine_advance(e1, 100000), 0);
    uint64_t out[6];
    CHECK_RC(fab_seg_lockstep_host(fab_engine_segment(e1), 0, out, 4), FAB_EINVAL);
    CHECK_RC(fab_seg_lockstep_host(fab_engine_segment(e1), NH, out, 6), FAB_ERANGE);
    CHECK_RC(fab_seg_lockstep_host(fab_engine_segment(e1), 0, out, 6), 0);
    CHECK(out[0] == 1 && out[1] == FAB_LS_PARKED);
    /* A release sets it running at the given clock; unpark adopts it. */
    uint32_t hosts[1] = {0};
    CHECK_RC(fab_engine_lockstep_release(e1, hosts, 1, fab_engine_virtual_time(e1)), 0);
    CHECK_RC(fab_engine_lockstep_unpark(e0), 0);
    CHECK(fab_engine_virtual_time(e0) == fab_engine_virtual_time(e1));
    CHECK(fab_engine_access(e0, 1, 0, 4096, 0) > 0);
    CHECK_RC(fab_engine_check(e0), 0);
    hosts[0] = NH;
    CHECK_RC(fab_engine_lockstep_release(e1, hosts, 1, 0), FAB_ERANGE);
    CHECK_RC(fab_engine_lockstep_info(e0, info, 10), FAB_EINVAL);
    /* Both leave: the next joiner starts a fresh group (another size is fine). */
    CHECK_RC(fab_engine_lockstep_leave(e0), 0);
    fab_engine_destroy(e0);
    fab_engine_destroy(e1);
    s1.cfg.lockstep_hosts = 1;
    CHECK_RC(fab_engine_create(&s1.cfg, &s1.m, path, &e1), 0);
    CHECK_RC(fab_engine_lockstep_info(e1, info, 11), 0);
    CHECK(info[0] == 2 && info[1] == 1 && info[2] == 1);
    fab_engine_destroy(e1);
    unlink(path);
}

/* Host DRAM: every engine attached as one host claims its own slot (the ninth
 * gets none), a freed slot is claimed again, an idle hit costs what it always
 * did, the load of the other engines of the host lowers our share and raises
 * the hit latency along the host's curve, and fab_seg_dram_read sums the slots. */
static void test_dram(const char *dir) {
    char path[512];
    snprintf(path, sizeof path, "%s/dram.seg", dir);
    CHECK_RC(fab_seg_create(path, NH, ND, NL), 0);
    struct setup s;
    setup_init(&s, 0, FAB_MODE_VIRTUAL, 64);
    /* The DRAM curve of host 0 (resource nlinks + ndevices): 90 ns idle, 180 at 116. */
    fab_curve_point pts[7];
    memcpy(pts, s.points, 5 * sizeof *pts);
    pts[5] = (fab_curve_point){0.0, 90.0};
    pts[6] = (fab_curve_point){116.0, 180.0};
    fab_curve_params cv[2] = {s.curves[0], {NL + ND, 100.0, 5, 2}};
    s.m.curves = cv;
    s.m.ncurves = 2;
    s.m.points = pts;
    s.m.npoints = 7;
    fab_engine *e[FAB_DRAM_SLOTS + 1];
    for (uint32_t i = 0; i <= FAB_DRAM_SLOTS; i++) {
        CHECK_RC(fab_engine_create(&s.cfg, &s.m, path, &e[i]), 0);
        double lat, share;
        uint32_t slot;
        CHECK_RC(fab_engine_dram_state(e[i], &lat, &share, &slot), 0);
        CHECK(slot == (i < FAB_DRAM_SLOTS ? i : FAB_DRAM_SLOTS));
        CHECK(lat == 90.0 && share == 116.0);
        CHECK_RC(fab_engine_check(e[i]), 0);
    }
    fab_engine_destroy(e[3]);
    CHECK_RC(fab_engine_create(&s.cfg, &s.m, path, &e[3]), 0);
    double lat, share;
    uint32_t slot;
    CHECK_RC(fab_engine_dram_state(e[3], &lat, &share, &slot), 0);
    CHECK(slot == 3);
    for (uint32_t i = 2; i <= FAB_DRAM_SLOTS; i++) fab_engine_destroy(e[i]);
    /* Engines 0 and 1 stream hits of 64 pages: a first miss, then an idle hit. */
    uint32_t devs[1] = {0};
    for (int i = 0; i < 2; i++)
        CHECK_RC(fab_engine_region_add(e[i], 1, 64, devs, 1, 1, FAB_POLICY_CACHE, 2, 0, NULL), 0);
    CHECK(fab_engine_access(e[0], 1, 0, 64 * PAGE, 0) > 0);
    CHECK(fab_engine_access(e[0], 1, 0, 64 * PAGE, 0) == (int64_t)(90.0 + 64.0 * PAGE / 116.0 + 0.5));
    CHECK(fab_engine_access(e[1], 1, 0, 64 * PAGE, 0) > 0);
    for (int k = 0; k < 40; k++)
        for (int i = 0; i < 2; i++) CHECK(fab_engine_access(e[i], 1, 0, 64 * PAGE, 0) > 0);
    CHECK_RC(fab_engine_dram_state(e[0], &lat, &share, &slot), 0);
    /* Both flat out: half the bandwidth each, and the curve's top (180 ns). */
    CHECK(share > 0.45 * 116.0 && share < 0.55 * 116.0);
    CHECK(lat > 170.0 && lat <= 180.0);
    double load;
    uint32_t active;
    uint64_t bytes;
    CHECK_RC(fab_seg_dram_read(fab_engine_segment(e[0]), 0, UINT64_C(1) << 40, &load, &active,
                               &bytes), 0);
    CHECK(active == 2 && load > 100.0 && bytes == (42 + 41) * 64 * (uint64_t)PAGE);
    CHECK_RC(fab_seg_dram_read(fab_engine_segment(e[0]), NH, 1, &load, &active, &bytes),
             FAB_ERANGE);
    CHECK_RC(fab_engine_check(e[0]), 0);
    CHECK_RC(fab_engine_check(e[1]), 0);
    fab_engine_destroy(e[0]);
    fab_engine_destroy(e[1]);
    /* A curve naming an element past this host's DRAM is refused. */
    cv[1].resource = NL + ND + 1;
    CHECK_RC(fab_engine_create(&s.cfg, &s.m, path, &e[0]), FAB_EINVAL);
    unlink(path);
}

int main(int argc, char **argv) {
    uint64_t seed = argc > 1 ? strtoull(argv[1], NULL, 0) : 12345;
    printf("seed %llu\n", (unsigned long long)seed);
    char dir[] = "/tmp/fabric-ctest-XXXXXX";
    if (!mkdtemp(dir)) { perror("mkdtemp"); return 1; }
    test_config();
    test_private();
    test_remove_dirty();
    test_random_ops(seed);
    test_shared(dir);
    test_spin();
    test_calib();
    test_errors();
    test_faults(dir);
    test_lockstep(dir);
    test_dram(dir);
    rmdir(dir);
    if (check_failures) fprintf(stderr, "test_engine: seed %llu\n", (unsigned long long)seed);
    CHECK_DONE("test_engine");
}
