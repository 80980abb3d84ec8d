/*
 * touch.c -- bounded touch counters for the "promote" region policy.
 *
 * A promote region caches a page only after it has been touched
 * promote_after times.  Counting touches of every page ever seen would grow
 * without bound, so counts live in a fixed, set-associative table:
 *
 *     sets[nsets] x WAYS entries of { key + 1 (0 = empty), count }
 *     set = mix64(key) & (nsets - 1)
 *
 * bump(key): if the key is in its set, count + 1; otherwise it takes the
 * first empty way, or else the way with the smallest count (lowest way on a
 * tie) -- a cold page forgets its history before a hot one does.  So a
 * count may be lost (the page then needs more touches), never invented.
 * Every loop is bounded by WAYS, or by the table size for forget_prefix.
 * Deterministic: the reference model (fabric/engine/_reference.py) mirrors it.
 */
#include <stdlib.h>

#include "fabric_core.h"

#define WAYS 4

struct tentry {
    uint64_t key1;     /* key + 1; 0 = empty */
    uint32_t count;    /* touches seen (saturating) */
    uint32_t pad;      /* alignment */
};

struct fab_touch {
    uint32_t nsets;        /* power of two */
    struct tentry *e;      /* nsets * WAYS */
};

int fab_touch_create(uint32_t entries, fab_touch **out) {
    if (!out) return FAB_EINVAL;
    *out = NULL;
    uint32_t nsets = 1;
    while (nsets * WAYS < entries && nsets < (1u << 28)) nsets <<= 1;
    fab_touch *t = calloc(1, sizeof *t);
    if (!t) return FAB_ENOMEM;
    t->nsets = nsets;
    t->e = calloc((size_t)nsets * WAYS, sizeof *t->e);
    if (!t->e) { free(t); return FAB_ENOMEM; }
    *out = t;
    return 0;
}

void fab_touch_destroy(fab_touch *t) {
    if (!t) return;
    free(t->e);
    free(t);
}

/* Entries in the table (nsets <= 2^28, so this fits). */
uint32_t fab_touch_entries(const fab_touch *t) { return t->nsets * WAYS; }

static struct tentry *set_of(fab_touch *t, uint64_t key) {
    return &t->e[(fab_mix64(key) & (t->nsets - 1)) * WAYS];
}

uint32_t fab_touch_bump(fab_touch *t, uint64_t key) {
    struct tentry *s = set_of(t, key);
    uint32_t victim = 0;
    for (uint32_t w = 0; w < WAYS; w++) {
        if (s[w].key1 == key + 1) {
            if (s[w].count < UINT32_MAX) s[w].count++;
            return s[w].count;
        }
    }
    for (uint32_t w = 0; w < WAYS; w++) {
        if (s[w].key1 == 0) { victim = w; goto take; }
    }
    for (uint32_t w = 1; w < WAYS; w++)
        if (s[w].count < s[victim].count) victim = w;
take:
    s[victim].key1 = key + 1;
    s[victim].count = 1;
    return 1;
}

void fab_touch_forget(fab_touch *t, uint64_t key) {
    struct tentry *s = set_of(t, key);
    for (uint32_t w = 0; w < WAYS; w++)
        if (s[w].key1 == key + 1) { s[w].key1 = 0; s[w].count = 0; }
}

void fab_touch_forget_prefix(fab_touch *t, uint64_t hi32) {
    uint64_t n = (uint64_t)t->nsets * WAYS;
    for (uint64_t i = 0; i < n; i++)
        if (t->e[i].key1 && ((t->e[i].key1 - 1) >> 32) == hi32) {
            t->e[i].key1 = 0;
            t->e[i].count = 0;
        }
}
