/*
 * pcache.c -- the per-host page cache: which far pages this host holds in its
 * local DRAM, and which one to give up when it needs room.
 *
 * Layout (all allocated at create; nothing is allocated afterwards):
 *
 *     slots[nslots]        open-addressing index: key -> frame + 1 (0 = empty)
 *     +------+------+----  linear probing, nslots = pow2 >= 2 * capacity, so the
 *     | key  |frame1| ...  load factor stays <= 1/2; deletion shifts entries
 *     +------+------+----  back (no tombstones), so probes stay short forever.
 *
 *     frames[capacity]     fab_page: key, frame pointer, version, pins,
 *                          LRU/FIFO links, device, VALID/DIRTY/REF flags
 *
 * Frame allocation: frames never used are handed out in index order
 * (next_unused); frames released by remove() go on a LIFO free list (threaded
 * through `next`).  Only when both are empty does insert() evict.
 *
 * Eviction, chosen at create:
 *   CLOCK  a hand sweeps frames in index order; a frame with REF set gets it
 *          cleared and a second chance; new pages start with REF clear and a
 *          hit sets it.  At most 2 * capacity steps: after one lap every
 *          unpinned frame has REF clear.
 *   LRU    a doubly linked list, most recent at head; a hit moves the frame to
 *          the head; the victim is the unpinned frame nearest the tail.
 *   FIFO   the same list in insertion order; hits do not move frames.
 * Pinned frames (pins > 0) are never victims; if every frame is pinned,
 * insert() returns FAB_EBUSY and changes nothing.
 *
 * Invariants: used == number of VALID frames; a key is in the index iff its
 * frame is VALID; npinned == number of frames with pins > 0; for LRU/FIFO the
 * list holds exactly the VALID frames.  Single-threaded: one engine owns it.
 */
#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "fabric_core.h"

struct slot {
    uint64_t key;      /* page key */
    uint32_t frame1;   /* frame index + 1; 0 = empty */
    uint32_t pad;      /* alignment */
};

struct fab_pcache {
    uint32_t capacity;     /* frames */
    uint32_t eviction;     /* FAB_EVICT_* */
    uint32_t nslots;       /* power of two >= 2 * capacity */
    uint32_t used;         /* VALID frames */
    uint32_t next_unused;  /* frames [next_unused, capacity) were never used */
    uint32_t free_head;    /* LIFO of released frames, FAB_NIL = empty */
    uint32_t npinned;      /* frames with pins > 0 */
    uint32_t hand;         /* CLOCK hand */
    uint32_t head;         /* LRU/FIFO: most recent frame */
    uint32_t tail;         /* LRU/FIFO: least recent frame */
    fab_page *frames;      /* capacity entries */
    struct slot *slots;    /* nslots entries */
};

static uint32_t home_of(const fab_pcache *pc, uint64_t key) {
    return (uint32_t)(fab_mix64(key) & (pc->nslots - 1));
}

/* Index of the slot holding key, or FAB_NIL.  Bounded by nslots probes. */
static uint32_t slot_find(const fab_pcache *pc, uint64_t key) {
    uint32_t mask = pc->nslots - 1, i = home_of(pc, key);
    for (uint32_t n = 0; n < pc->nslots; n++, i = (i + 1) & mask) {
        if (pc->slots[i].frame1 == 0) return FAB_NIL;
        if (pc->slots[i].key == key) return i;
    }
    return FAB_NIL;
}

static void slot_put(fab_pcache *pc, uint64_t key, uint32_t frame) {
    uint32_t mask = pc->nslots - 1, i = home_of(pc, key);
    for (uint32_t n = 0; n < pc->nslots; n++, i = (i + 1) & mask) {
        if (pc->slots[i].frame1 == 0) {
            pc->slots[i].key = key;
            pc->slots[i].frame1 = frame + 1;
            return;
        }
    }
    assert(!"page-cache index full: load factor invariant broken");
}

/* Backward-shift deletion: pull later entries of the probe run into the hole
 * unless their home lies cyclically in (hole, j]. */
static void slot_delete(fab_pcache *pc, uint32_t i) {
    uint32_t mask = pc->nslots - 1, j = i;
    for (uint32_t n = 0; n < pc->nslots; n++) {
        j = (j + 1) & mask;
        if (pc->slots[j].frame1 == 0) break;
        uint32_t k = home_of(pc, pc->slots[j].key);
        int stays = (i <= j) ? (i < k && k <= j) : (i < k || k <= j);
        if (stays) continue;
        pc->slots[i] = pc->slots[j];
        i = j;
    }
    pc->slots[i].frame1 = 0;
    pc->slots[i].key = 0;
}

static void list_unlink(fab_pcache *pc, uint32_t f) {
    fab_page *p = &pc->frames[f];
    if (p->prev != FAB_NIL) pc->frames[p->prev].next = p->next; else pc->head = p->next;
    if (p->next != FAB_NIL) pc->frames[p->next].prev = p->prev; else pc->tail = p->prev;
    p->prev = p->next = FAB_NIL;
}

static void list_push_head(fab_pcache *pc, uint32_t f) {
    fab_page *p = &pc->frames[f];
    p->prev = FAB_NIL;
    p->next = pc->head;
    if (pc->head != FAB_NIL) pc->frames[pc->head].prev = f; else pc->tail = f;
    pc->head = f;
}

int fab_pcache_create(uint32_t capacity, uint32_t eviction, fab_pcache **out) {
    if (!out || eviction > FAB_EVICT_FIFO || capacity > (UINT32_MAX >> 2)) return FAB_EINVAL;
    *out = NULL;
    fab_pcache *pc = calloc(1, sizeof *pc);
    if (!pc) return FAB_ENOMEM;
    uint32_t nslots = 16;
    while (nslots < 2u * capacity) nslots <<= 1;
    pc->capacity = capacity;
    pc->eviction = eviction;
    pc->nslots = nslots;
    pc->free_head = pc->head = pc->tail = FAB_NIL;
    pc->frames = calloc(capacity ? capacity : 1, sizeof *pc->frames);
    pc->slots = calloc(nslots, sizeof *pc->slots);
    if (!pc->frames || !pc->slots) { fab_pcache_destroy(pc); return FAB_ENOMEM; }
    for (uint32_t f = 0; f < capacity; f++) pc->frames[f].prev = pc->frames[f].next = FAB_NIL;
    *out = pc;
    return 0;
}

void fab_pcache_destroy(fab_pcache *pc) {
    if (!pc) return;
    free(pc->frames);
    free(pc->slots);
    free(pc);
}

int fab_pcache_find(const fab_pcache *pc, uint64_t key, uint32_t *frame) {
    if (!pc || !frame) return FAB_EINVAL;
    uint32_t i = slot_find(pc, key);
    if (i == FAB_NIL) return FAB_ENOENT;
    *frame = pc->slots[i].frame1 - 1;
    return 0;
}

int fab_pcache_lookup(fab_pcache *pc, uint64_t key, uint32_t *frame) {
    int rc = fab_pcache_find(pc, key, frame);
    if (rc) return rc;
    uint32_t f = *frame;
    if (pc->eviction == FAB_EVICT_CLOCK) pc->frames[f].flags |= FAB_PAGE_REF;
    else if (pc->eviction == FAB_EVICT_LRU && pc->head != f) {
        list_unlink(pc, f);
        list_push_head(pc, f);
    }
    return 0;
}

/* Choose a victim among VALID unpinned frames; FAB_NIL if all are pinned. */
static uint32_t pick_victim(fab_pcache *pc) {
    if (pc->npinned >= pc->used) return FAB_NIL;
    if (pc->eviction == FAB_EVICT_CLOCK) {
        for (uint64_t n = 0; n < 2ull * pc->capacity + 1; n++) {
            uint32_t f = pc->hand;
            pc->hand = (pc->hand + 1 == pc->capacity) ? 0 : pc->hand + 1;
            fab_page *p = &pc->frames[f];
            if (!(p->flags & FAB_PAGE_VALID) || p->pins) continue;
            if (p->flags & FAB_PAGE_REF) { p->flags &= (uint8_t)~FAB_PAGE_REF; continue; }
            return f;
        }
        return FAB_NIL;
    }
    uint32_t f = pc->tail;
    for (uint32_t n = 0; n < pc->capacity && f != FAB_NIL; n++) {
        if (!pc->frames[f].pins) return f;
        f = pc->frames[f].prev;
    }
    return FAB_NIL;
}

/* Returns 0 (a free frame was used), 1 (a page was evicted; *victim holds its
 * old entry), FAB_EBUSY (every frame pinned; nothing changed), FAB_EINVAL
 * (key already present, or a zero-capacity cache). */
int fab_pcache_insert(fab_pcache *pc, uint64_t key, uint16_t dev, uint32_t version,
                      uint32_t *frame, fab_page *victim) {
    if (!pc || !frame || pc->capacity == 0) return FAB_EINVAL;
    if (slot_find(pc, key) != FAB_NIL) return FAB_EINVAL;
    uint32_t f;
    int evicted = 0;
    if (pc->free_head != FAB_NIL) {
        f = pc->free_head;
        pc->free_head = pc->frames[f].next;
    } else if (pc->next_unused < pc->capacity) {
        f = pc->next_unused++;
    } else {
        f = pick_victim(pc);
        if (f == FAB_NIL) return FAB_EBUSY;
        fab_page *old = &pc->frames[f];
        if (victim) *victim = *old;
        uint32_t si = slot_find(pc, old->key);
        assert(si != FAB_NIL);
        slot_delete(pc, si);
        if (pc->eviction != FAB_EVICT_CLOCK) list_unlink(pc, f);
        pc->used--;
        evicted = 1;
    }
    fab_page *p = &pc->frames[f];
    memset(p, 0, sizeof *p);
    p->key = key;
    p->version = version;
    p->dev = dev;
    p->flags = FAB_PAGE_VALID;
    p->prev = p->next = FAB_NIL;
    if (pc->eviction != FAB_EVICT_CLOCK) list_push_head(pc, f);
    slot_put(pc, key, f);
    pc->used++;
    *frame = f;
    return evicted;
}

int fab_pcache_remove(fab_pcache *pc, uint64_t key, fab_page *removed) {
    if (!pc) return FAB_EINVAL;
    uint32_t si = slot_find(pc, key);
    if (si == FAB_NIL) return FAB_ENOENT;
    uint32_t f = pc->slots[si].frame1 - 1;
    fab_page *p = &pc->frames[f];
    if (p->pins) return FAB_EBUSY;
    if (removed) *removed = *p;
    slot_delete(pc, si);
    if (pc->eviction != FAB_EVICT_CLOCK) list_unlink(pc, f);
    memset(p, 0, sizeof *p);
    p->prev = FAB_NIL;
    p->next = pc->free_head;
    pc->free_head = f;
    pc->used--;
    return 0;
}

int fab_pcache_pin(fab_pcache *pc, uint64_t key, int32_t delta) {
    uint32_t f;
    int rc = fab_pcache_find(pc, key, &f);
    if (rc) return rc;
    fab_page *p = &pc->frames[f];
    int64_t pins = (int64_t)p->pins + delta;
    if (pins < 0 || pins > UINT32_MAX) return FAB_EINVAL;
    if (p->pins == 0 && pins > 0) pc->npinned++;
    if (p->pins > 0 && pins == 0) pc->npinned--;
    p->pins = (uint32_t)pins;
    return 0;
}

int fab_pcache_set_frame(fab_pcache *pc, uint64_t key, void *frame_ptr) {
    uint32_t f;
    int rc = fab_pcache_find(pc, key, &f);
    if (rc) return rc;
    pc->frames[f].frame = frame_ptr;
    return 0;
}

int fab_pcache_get(const fab_pcache *pc, uint32_t frame, fab_page *out) {
    if (!pc || !out) return FAB_EINVAL;
    if (frame >= pc->capacity) return FAB_ERANGE;
    *out = pc->frames[frame];
    return 0;
}

/* out: capacity, used, pinned frames, nslots. */
int fab_pcache_info(const fab_pcache *pc, uint32_t *out, uint32_t n) {
    if (!pc || !out || n < 4) return FAB_EINVAL;
    out[0] = pc->capacity;
    out[1] = pc->used;
    out[2] = pc->npinned;
    out[3] = pc->nslots;
    return 0;
}

fab_page *fab_pcache_page(fab_pcache *pc, uint32_t frame) {
    assert(frame < pc->capacity);
    return &pc->frames[frame];
}

uint32_t fab_pcache_capacity(const fab_pcache *pc) { return pc->capacity; }
uint32_t fab_pcache_pinned_frames(const fab_pcache *pc) { return pc->npinned; }
