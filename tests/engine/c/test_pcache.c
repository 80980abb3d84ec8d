/*
 * test_pcache.c -- the page cache and the touch table on their own: victim
 * choice per policy, pins and FAB_EBUSY, frame reuse, a seeded random walk
 * checked against a shadow set and by fab_pcache_check (argv[1] overrides
 * the seed; a failure prints it), and the checker catching broken state.
 */
#include <string.h>

#include "check.h"
#include "fabric_core.h"

static uint64_t insert_victim(fab_pcache *pc, uint64_t key) {
    uint32_t f;
    fab_page v;
    memset(&v, 0, sizeof v);
    int rc = fab_pcache_insert(pc, key, 0, 0, &f, &v);
    CHECK(rc == 1);
    return rc == 1 ? v.key : UINT64_MAX;
}

static void fill(fab_pcache *pc, uint32_t n) {
    for (uint32_t k = 1; k <= n; k++) {
        uint32_t f;
        CHECK_RC(fab_pcache_insert(pc, k, 0, 0, &f, NULL), 0);
        CHECK(f == k - 1);
    }
}

static void test_victims(void) {
    fab_pcache *pc;
    uint32_t f;
    /* FIFO: hits do not matter. */
    CHECK_RC(fab_pcache_create(4, FAB_EVICT_FIFO, &pc), 0);
    fill(pc, 4);
    CHECK_RC(fab_pcache_lookup(pc, 1, &f), 0);
    CHECK(insert_victim(pc, 5) == 1);
    CHECK(insert_victim(pc, 6) == 2);
    fab_pcache_destroy(pc);
    /* LRU: a hit protects. */
    CHECK_RC(fab_pcache_create(4, FAB_EVICT_LRU, &pc), 0);
    fill(pc, 4);
    CHECK_RC(fab_pcache_lookup(pc, 1, &f), 0);
    CHECK(insert_victim(pc, 5) == 2);
    CHECK(insert_victim(pc, 6) == 3);
    CHECK(insert_victim(pc, 7) == 4);
    CHECK(insert_victim(pc, 8) == 1);
    fab_pcache_destroy(pc);
    /* CLOCK: a referenced page gets a second chance. */
    CHECK_RC(fab_pcache_create(4, FAB_EVICT_CLOCK, &pc), 0);
    fill(pc, 4);
    CHECK_RC(fab_pcache_lookup(pc, 1, &f), 0);
    CHECK(insert_victim(pc, 5) == 2);
    CHECK(insert_victim(pc, 6) == 3);
    CHECK(insert_victim(pc, 7) == 4);
    CHECK(insert_victim(pc, 8) == 1);   /* its REF bit was cleared on the first sweep */
    fab_pcache_destroy(pc);
}

static void test_pins_and_reuse(void) {
    for (uint32_t pol = 0; pol <= FAB_EVICT_FIFO; pol++) {
        fab_pcache *pc;
        uint32_t f, info[4];
        CHECK_RC(fab_pcache_create(3, pol, &pc), 0);
        fill(pc, 3);
        for (uint64_t k = 1; k <= 3; k++) CHECK_RC(fab_pcache_pin(pc, k, 1), 0);
        CHECK_RC(fab_pcache_insert(pc, 9, 0, 0, &f, NULL), FAB_EBUSY);
        CHECK_RC(fab_pcache_find(pc, 9, &f), FAB_ENOENT);
        CHECK_RC(fab_pcache_info(pc, info, 4), 0);
        CHECK(info[1] == 3 && info[2] == 3);
        CHECK_RC(fab_pcache_remove(pc, 2, NULL), FAB_EBUSY);
        CHECK_RC(fab_pcache_pin(pc, 2, -1), 0);
        CHECK_RC(fab_pcache_pin(pc, 2, -1), FAB_EINVAL);
        CHECK(insert_victim(pc, 9) == 2);
        CHECK_RC(fab_pcache_pin(pc, 42, 1), FAB_ENOENT);
        CHECK_RC(fab_pcache_insert(pc, 9, 0, 0, &f, NULL), FAB_EINVAL);   /* duplicate */
        for (uint64_t k = 1; k <= 3; k += 2) CHECK_RC(fab_pcache_pin(pc, k, -1), 0);
        /* A removed frame is reused before anything is evicted. */
        uint32_t was;
        CHECK_RC(fab_pcache_find(pc, 3, &was), 0);
        fab_page old;
        CHECK_RC(fab_pcache_remove(pc, 3, &old), 0);
        CHECK(old.key == 3);
        CHECK_RC(fab_pcache_remove(pc, 3, NULL), FAB_ENOENT);
        CHECK_RC(fab_pcache_insert(pc, 10, 0, 0, &f, NULL), 0);
        CHECK(f == was);
        int x = 5;
        CHECK_RC(fab_pcache_set_frame(pc, 10, &x), 0);
        fab_page got;
        CHECK_RC(fab_pcache_get(pc, f, &got), 0);
        CHECK(got.frame == &x && got.key == 10);
        CHECK_RC(fab_pcache_get(pc, 3, &got), FAB_ERANGE);
        fab_pcache_destroy(pc);
    }
    fab_pcache *pc;
    uint32_t f;
    CHECK_RC(fab_pcache_create(0, FAB_EVICT_CLOCK, &pc), 0);
    CHECK_RC(fab_pcache_insert(pc, 1, 0, 0, &f, NULL), FAB_EINVAL);
    fab_pcache_destroy(pc);
    CHECK_RC(fab_pcache_create(4, 7, &pc), FAB_EINVAL);
}

/* Random inserts, lookups, removes and pins over a small key space (so the
 * index sees long probe runs and backward shifts), against a shadow set. */
static void test_random(uint64_t seed) {
    enum { CAP = 37, KEYS = 200, OPS = 40000 };
    for (uint32_t pol = 0; pol <= FAB_EVICT_FIFO; pol++) {
        fab_pcache *pc;
        CHECK_RC(fab_pcache_create(CAP, pol, &pc), 0);
        static int present[KEYS];
        static uint32_t pins[KEYS];
        memset(present, 0, sizeof present);
        memset(pins, 0, sizeof pins);
        fab_rng rng;
        fab_rng_seed(&rng, seed + pol);
        uint32_t used = 0, npinned = 0;
        for (int op = 0; op < OPS; op++) {
            uint64_t k = fab_rng_next(&rng) % KEYS;
            uint32_t what = (uint32_t)(fab_rng_next(&rng) % 10), f;
            if (what < 5) {
                int rc = fab_pcache_lookup(pc, k << 20, &f);
                CHECK(rc == (present[k] ? 0 : FAB_ENOENT));
                if (rc == 0) {
                    fab_page pg;
                    fab_pcache_get(pc, f, &pg);
                    CHECK(pg.key == k << 20);
                    continue;
                }
                fab_page v;
                rc = fab_pcache_insert(pc, k << 20, 0, 0, &f, &v);
                if (npinned == CAP) { CHECK(rc == FAB_EBUSY); continue; }
                CHECK(rc == 0 || rc == 1);
                if (rc == 1) {
                    uint64_t vk = v.key >> 20;
                    CHECK(vk < KEYS && present[vk] && pins[vk] == 0);
                    if (vk < KEYS) present[vk] = 0;
                } else {
                    used++;
                }
                present[k] = 1;
            } else if (what < 7) {
                int rc = fab_pcache_remove(pc, k << 20, NULL);
                if (!present[k]) CHECK(rc == FAB_ENOENT);
                else if (pins[k]) CHECK(rc == FAB_EBUSY);
                else { CHECK(rc == 0); present[k] = 0; used--; }
            } else if (what < 8 && present[k] && pins[k] < 2 && npinned < CAP - 1) {
                CHECK_RC(fab_pcache_pin(pc, k << 20, 1), 0);
                if (pins[k]++ == 0) npinned++;
            } else if (present[k] && pins[k]) {
                CHECK_RC(fab_pcache_pin(pc, k << 20, -1), 0);
                if (--pins[k] == 0) npinned--;
            }
            uint32_t info[4];
            fab_pcache_info(pc, info, 4);
            CHECK(info[1] == used && info[2] == npinned && used <= CAP);
            if (op % 7 == 0) CHECK_RC(fab_pcache_check(pc), 0);
            if (check_failures) {
                fprintf(stderr, "test_random: policy %u, op %d, seed %llu\n", pol, op,
                        (unsigned long long)seed);
                break;
            }
        }
        CHECK_RC(fab_pcache_check(pc), 0);
        for (uint64_t k = 0; k < KEYS; k++) {
            uint32_t f;
            CHECK((fab_pcache_find(pc, k << 20, &f) == 0) == (present[k] != 0));
        }
        fab_pcache_destroy(pc);
    }
}

/* The walker must notice broken state, not only pass on good state: break
 * one invariant at a time through the engine's direct frame access, check,
 * and repair. */
static void test_check_detects(void) {
    for (uint32_t pol = 0; pol <= FAB_EVICT_FIFO; pol++) {
        fab_pcache *pc;
        CHECK_RC(fab_pcache_create(8, pol, &pc), 0);
        CHECK_RC(fab_pcache_check(NULL), FAB_EINVAL);
        CHECK_RC(fab_pcache_check(pc), 0);
        fill(pc, 6);
        CHECK_RC(fab_pcache_remove(pc, 3, NULL), 0);
        CHECK_RC(fab_pcache_pin(pc, 2, 1), 0);
        CHECK_RC(fab_pcache_check(pc), 0);
        fab_page *p = fab_pcache_page(pc, 0);             /* holds key 1 */
        p->key = 99;                                      /* index and frame disagree */
        CHECK_RC(fab_pcache_check(pc), FAB_ECORRUPT);
        p->key = 1;
        p->pins = 1;                                      /* pinned count off by one */
        CHECK_RC(fab_pcache_check(pc), FAB_ECORRUPT);
        p->pins = 0;
        fab_page *freed = fab_pcache_page(pc, 2);         /* key 3's frame, now free */
        uint32_t next = freed->next;
        freed->next = 2;                                  /* a cycle in the free list */
        CHECK_RC(fab_pcache_check(pc), FAB_ECORRUPT);
        freed->next = next;
        freed->flags = FAB_PAGE_VALID;                    /* a valid frame nobody indexes */
        CHECK_RC(fab_pcache_check(pc), FAB_ECORRUPT);
        freed->flags = 0;
        if (pol != FAB_EVICT_CLOCK) {
            fab_page *q = fab_pcache_page(pc, 4);
            uint32_t prev = q->prev;
            q->prev = FAB_NIL;                            /* list links disagree */
            CHECK_RC(fab_pcache_check(pc), FAB_ECORRUPT);
            q->prev = prev;
        }
        CHECK_RC(fab_pcache_check(pc), 0);
        fab_pcache_destroy(pc);
    }
}

static void test_touch(void) {
    fab_touch *t;
    CHECK_RC(fab_touch_create(4, &t), 0);       /* one set of four ways */
    CHECK(fab_touch_bump(t, 100) == 1);
    CHECK(fab_touch_bump(t, 100) == 2);
    CHECK(fab_touch_bump(t, 100) == 3);
    fab_touch_forget(t, 100);
    CHECK(fab_touch_bump(t, 100) == 1);
    CHECK(fab_touch_bump(t, 100) == 2);         /* 100: 2 */
    CHECK(fab_touch_bump(t, 200) == 1);
    CHECK(fab_touch_bump(t, 200) == 2);         /* 200: 2 */
    CHECK(fab_touch_bump(t, 300) == 1);         /* 300: 1 */
    CHECK(fab_touch_bump(t, 400) == 1);
    CHECK(fab_touch_bump(t, 400) == 2);         /* 400: 2, set full */
    CHECK(fab_touch_bump(t, 500) == 1);         /* replaces the coldest, 300 */
    CHECK(fab_touch_bump(t, 100) == 3);
    CHECK(fab_touch_bump(t, 300) == 1);         /* forgotten; replaces 500 */
    fab_touch_forget_prefix(t, 0);
    CHECK(fab_touch_bump(t, 100) == 1);
    fab_touch_destroy(t);
}

int main(int argc, char **argv) {
    uint64_t seed = argc > 1 ? strtoull(argv[1], NULL, 0) : 12345;
    printf("seed %llu\n", (unsigned long long)seed);
    test_victims();
    test_pins_and_reuse();
    test_random(seed);
    test_check_detects();
    test_touch();
    CHECK_DONE("test_pcache");
}
