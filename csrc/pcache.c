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
 * Invariants (fab_pcache_check() verifies all of them, in bounded loops):
 *   - used == number of VALID frames == occupied index slots <= capacity;
 *   - a key is in the index iff its frame is VALID, the slot names that
 *     frame, the key is reachable from its home slot, and no key is there twice;
 *   - frames >= next_unused were never used (all zero, links FAB_NIL);
 *   - every frame below next_unused is VALID or on the free list, exactly once;
 *   - npinned == number of frames with pins > 0; only VALID frames have pins;
 *   - LRU/FIFO: the list from head holds exactly the VALID frames, its prev
 *     links mirror its next links, and it ends at tail; CLOCK: no list.
 * Single-threaded: one engine owns it.
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
    assert(*frame < pc->capacity);
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
    assert(pc->used <= pc->capacity && pc->npinned <= pc->used);
    if (pc->free_head != FAB_NIL) {
        assert(pc->free_head < pc->next_unused && pc->used < pc->capacity);
        f = pc->free_head;
        pc->free_head = pc->frames[f].next;
    } else if (pc->next_unused < pc->capacity) {
        assert(pc->used == pc->next_unused);   /* no free frames: all used ones are VALID */
        f = pc->next_unused++;
    } else {
        assert(pc->used == pc->capacity);
        f = pick_victim(pc);
        if (f == FAB_NIL) return FAB_EBUSY;
        fab_page *old = &pc->frames[f];
        assert(f < pc->capacity && (old->flags & FAB_PAGE_VALID) && old->pins == 0);
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
    assert(f < pc->capacity && pc->used > 0);
    fab_page *p = &pc->frames[f];
    assert((p->flags & FAB_PAGE_VALID) && p->key == key);
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
    assert(pc->npinned <= pc->used);
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
uint32_t fab_pcache_used(const fab_pcache *pc) { return pc->used; }

/* ---- consistency walker ------------------------------------------------- */

/* The index half: every occupied slot names a VALID frame holding its key,
 * and is the slot a lookup of that key finds (so the key is reachable from
 * its home and not present twice: a duplicate later in the run would not be
 * the one found).  Counts occupied slots into *occupied. */
static int check_index(const fab_pcache *pc, uint32_t *occupied) {
    uint32_t n = 0;
    for (uint32_t i = 0; i < pc->nslots; i++) {
        const struct slot *sl = &pc->slots[i];
        if (sl->frame1 == 0) continue;
        uint32_t f = sl->frame1 - 1;
        if (f >= pc->capacity) return FAB_ECORRUPT;
        const fab_page *p = &pc->frames[f];
        if (!(p->flags & FAB_PAGE_VALID) || p->key != sl->key) return FAB_ECORRUPT;
        if (slot_find(pc, sl->key) != i) return FAB_ECORRUPT;
        n++;
    }
    *occupied = n;
    return 0;
}

/* The frame half: VALID frames are findable by key and counted, pins only on
 * VALID frames, never-used frames are blank. */
static int check_frames(const fab_pcache *pc, uint32_t *valid, uint32_t *pinned) {
    uint32_t nv = 0, np = 0;
    for (uint32_t f = 0; f < pc->capacity; f++) {
        const fab_page *p = &pc->frames[f];
        if (f >= pc->next_unused) {
            if (p->flags || p->pins || p->next != FAB_NIL || p->prev != FAB_NIL)
                return FAB_ECORRUPT;
            continue;
        }
        if (!(p->flags & FAB_PAGE_VALID)) {
            if (p->pins || (p->flags & (FAB_PAGE_DIRTY | FAB_PAGE_REF))) return FAB_ECORRUPT;
            continue;
        }
        uint32_t i = slot_find(pc, p->key);
        if (i == FAB_NIL || pc->slots[i].frame1 != f + 1) return FAB_ECORRUPT;
        if (pc->eviction == FAB_EVICT_CLOCK && (p->prev != FAB_NIL || p->next != FAB_NIL))
            return FAB_ECORRUPT;
        nv++;
        if (p->pins) np++;
    }
    *valid = nv;
    *pinned = np;
    return 0;
}

/* The free list: released, non-VALID frames below next_unused, no cycle
 * (a walk longer than capacity is one). */
static int check_free_list(const fab_pcache *pc, uint32_t *nfree) {
    uint32_t n = 0, f = pc->free_head;
    for (; f != FAB_NIL && n <= pc->capacity; n++) {
        if (f >= pc->next_unused || (pc->frames[f].flags & FAB_PAGE_VALID)) return FAB_ECORRUPT;
        f = pc->frames[f].next;
    }
    if (f != FAB_NIL) return FAB_ECORRUPT;
    *nfree = n;
    return 0;
}

/* The LRU/FIFO list: VALID frames only, prev links mirror next links, ends at
 * tail, no cycle. */
static int check_list(const fab_pcache *pc, uint32_t *nlist) {
    uint32_t n = 0, prev = FAB_NIL, f = pc->head;
    for (; f != FAB_NIL && n <= pc->capacity; n++) {
        if (f >= pc->capacity) return FAB_ECORRUPT;
        const fab_page *p = &pc->frames[f];
        if (!(p->flags & FAB_PAGE_VALID) || p->prev != prev) return FAB_ECORRUPT;
        prev = f;
        f = p->next;
    }
    if (f != FAB_NIL || pc->tail != prev) return FAB_ECORRUPT;
    *nlist = n;
    return 0;
}

/* Walk the whole cache and check every invariant listed at the top of this
 * file.  O(capacity + nslots x probe length); meant for tests and debugging,
 * never called on the access path.  Returns 0, FAB_EINVAL (NULL), or
 * FAB_ECORRUPT (some invariant is broken). */
int fab_pcache_check(const fab_pcache *pc) {
    if (!pc) return FAB_EINVAL;
    if (pc->nslots < 16 || (pc->nslots & (pc->nslots - 1)) || pc->nslots < 2u * pc->capacity ||
        pc->used > pc->capacity || pc->next_unused > pc->capacity ||
        pc->eviction > FAB_EVICT_FIFO || (pc->capacity && pc->hand >= pc->capacity))
        return FAB_ECORRUPT;
    uint32_t occupied, valid, pinned, nfree, nlist = 0;
    int rc = check_index(pc, &occupied);
    if (!rc) rc = check_frames(pc, &valid, &pinned);
    if (!rc) rc = check_free_list(pc, &nfree);
    if (!rc && pc->eviction != FAB_EVICT_CLOCK) rc = check_list(pc, &nlist);
    if (rc) return rc;
    if (pc->eviction == FAB_EVICT_CLOCK && (pc->head != FAB_NIL || pc->tail != FAB_NIL))
        return FAB_ECORRUPT;
    if (pc->eviction != FAB_EVICT_CLOCK && nlist != valid) return FAB_ECORRUPT;
    if (occupied != valid || valid != pc->used || pinned != pc->npinned ||
        nfree + valid != pc->next_unused)
        return FAB_ECORRUPT;
    return 0;
}
