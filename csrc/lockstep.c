/*
 * lockstep.c -- one virtual timeline for the hosts of a lockstep group (the
 * engine's "lockstep" option; docs/cost-model.md, "Time bases").
 */
#define _GNU_SOURCE
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "engine_impl.h"

/* ---- lockstep ---------------------------------------------------------------
 *
 * In virtual mode each host process advances its own virtual clock, so what
 * one host sees of another (the other's slots: last_virtual_ns, rate_bits,
 * wrate_bits, read by res_load) depends on how far the other has got in real
 * time: OS scheduling.  With lockstep_quantum_ns = Q > 0 the hosts of a
 * group advance in quanta of Q ns of virtual time, as conservative parallel
 * discrete-event simulators do, and read each other as of quantum boundaries:
 *
 *   Rule.  A host may start an access (or an advance, a park, a leave) at
 *   virtual time t only when the group is complete (lockstep_hosts joined)
 *   and every other running member has published a clock >= floor(t/Q)*Q.
 *   Parked and left members hold no one back.
 *
 *   Snapshots.  Each slot has two copies {tag = 1 + the quantum it is valid
 *   from, last_virtual_ns, rate, wrate}.  When a host's clock moves from
 *   quantum s to a later one, it copies every slot it changed since its last
 *   snapshot into a copy valid from s + 1 (the copy that already is, else the
 *   older one), then publishes its clock.  A reader in quantum r uses, per
 *   other member, the copy valid from the largest quantum <= r: that host's
 *   values after every access it started before r*Q.  Two copies suffice: a host
 *   moving out of quantum s waited for every running member to reach s*Q,
 *   and its newest copy holds from a quantum <= s, so no reader (all in
 *   quanta >= s) needs the copy it overwrites.  A reader checks a sequence
 *   (tag zeroed while written, genseq bumped) and re-reads on a change.
 *
 * Everything a price depends on is then either this host's own state or a
 * snapshot fixed by the rule, so a run is reproducible for a seed whatever
 * the scheduling.  Waiting spins briefly, then sleeps on the head's futex
 * word (bumped when a host crosses a quantum boundary or a membership
 * changes) in slices, looking for dead members (their pid gone: marked
 * left) between slices, up to lockstep_timeout_ms: then FAB_ELOCKSTEP and
 * ls_why names what held us back.  A member behind us whose last move was
 * made by this same thread (of this process) can never move while we wait:
 * that fails at once.
 *
 * Membership: the first joiner of a group sets its size and quantum (a later
 * joiner with others gets FAB_EINVAL); a host joins at create, leaves at
 * destroy; when no live member remains, the next joiner starts a fresh group
 * (a new generation: lines and copies of older generations do not count).
 * Members outside the group (other generations, engines without lockstep) are
 * read live, as without lockstep.
 */
#define LS_SPINS 512u                  /* re-checks before the first sleep (most yield) */
#define LS_SLICE_NS 20000000u          /* one sleep at most (20 ms), then look for dead hosts */
#define LS_LOCK_TRIES 200000u          /* membership lock: about a second of yields */
#define LS_READ_TRIES 64u              /* snapshot re-reads before falling back to live values */

enum { LS_WHY_NONE = 0, LS_WHY_JOIN = 1, LS_WHY_BEHIND = 2, LS_WHY_SAME_THREAD = 3 };

static _Thread_local char ls_thread_token;   /* its address names the calling thread */

static uint64_t ls_thread(void) { return (uint64_t)(uintptr_t)&ls_thread_token; }

static uint64_t ls_gen32(uint64_t gen) { return gen & UINT32_MAX; }

/* Whether process pid is gone: no such process, or a zombie not yet reaped. */
int fab_ls_pid_dead(uint64_t pid) {
    if (pid == 0 || pid > INT32_MAX) return 1;
    if (kill((pid_t)pid, 0) != 0 && errno == ESRCH) return 1;
    char path[48], buf[160];
    snprintf(path, sizeof path, "/proc/%llu/stat", (unsigned long long)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return 0;
    buf[n] = 0;
    const char *p = strrchr(buf, ')');
    return p && p[1] == ' ' && (p[2] == 'Z' || p[2] == 'X');
}

static struct fab_ls_host *ls_line(const fab_engine *e, uint32_t h) {
    struct fab_ls_host *l = fab_seg_ls_host(e->seg, h);
    assert(l);   /* h < nhosts */
    return l;
}

/* Host h's line belongs to our group (any state but absent). */
int fab_ls_member(const fab_engine *e, uint32_t h) {
    struct fab_ls_host *l = ls_line(e, h);
    return atomic_load_explicit(&l->gen, memory_order_acquire) == e->ls_gen &&
           atomic_load_explicit(&l->state, memory_order_relaxed) != FAB_LS_ABSENT;
}

/* Wake every sleeping waiter after a change they may wait for; bump the
 * epoch too when membership or a state changed (it voids ls_ready_q). */
static void ls_kick(fab_engine *e, int epoch) {
    struct fab_ls_head *hd = e->ls_head;
    if (epoch) atomic_fetch_add_explicit(&hd->epoch, 1, memory_order_acq_rel);
    /* Sequentially consistent with the waiter's sleepers++ then futex check, so
     * one of the two sees the other (no lost wake-up). */
    atomic_fetch_add_explicit(&hd->futex, 1, memory_order_seq_cst);
    if (atomic_load_explicit(&hd->sleepers, memory_order_seq_cst))
        fab_sync_wake_u32((uint32_t *)&hd->futex, INT32_MAX);
}

/* The copy of slot s a reader in quantum r uses, read consistently: its
 * last_virtual_ns, rate and write-rate bits.  No copy for r: never active. */
void fab_ls_snap_read(const fab_engine *e, struct fab_res_slot *s, uint64_t r, uint64_t *last,
                      uint64_t *bits, uint64_t *wbits) {
    uint64_t g32 = ls_gen32(e->ls_gen);
    for (uint32_t i = 0; i < LS_READ_TRIES; i++) {
        uint64_t t[2], g[2];
        int b = -1;
        for (int k = 0; k < 2; k++) {
            t[k] = atomic_load_explicit(&s->snap[k].tag, memory_order_acquire);
            g[k] = atomic_load_explicit(&s->snap[k].genseq, memory_order_relaxed);
            if (t[k] && (g[k] >> 32) == g32 && t[k] - 1 <= r && (b < 0 || t[k] > t[b])) b = k;
        }
        if (b < 0) { *last = *bits = *wbits = 0; return; }
        struct fab_res_copy *c = &s->snap[b];
        *last = atomic_load_explicit(&c->last_virtual_ns, memory_order_relaxed);
        *bits = atomic_load_explicit(&c->rate_bits, memory_order_relaxed);
        *wbits = atomic_load_explicit(&c->wrate_bits, memory_order_relaxed);
        atomic_thread_fence(memory_order_acquire);
        if (atomic_load_explicit(&c->tag, memory_order_relaxed) == t[b] &&
            atomic_load_explicit(&c->genseq, memory_order_relaxed) == g[b])
            return;
    }
    /* Unreachable while the rule holds (nobody rewrites a copy a reader needs). */
    *last = atomic_load_explicit(&s->last_virtual_ns, memory_order_relaxed);
    *bits = atomic_load_explicit(&s->rate_bits, memory_order_relaxed);
    *wbits = atomic_load_explicit(&s->wrate_bits, memory_order_relaxed);
}

/* Snapshot every slot we changed since the last snapshot, valid from quantum q. */
static void ls_commit(fab_engine *e, uint64_t q) {
    uint64_t tag = q + 1, g32 = ls_gen32(e->ls_gen);
    for (uint32_t i = 0; i < e->nls_dirty; i++) {
        uint32_t r = e->ls_dirty[i];
        assert(r <= e->nres);
        e->res[r].ls_dirty = 0;
        struct fab_res_slot *s = own_slot(e, r);
        assert(s);   /* only elements we publish in are marked dirty */
        if (!s) continue;
        uint64_t t0 = atomic_load_explicit(&s->snap[0].tag, memory_order_relaxed);
        uint64_t t1 = atomic_load_explicit(&s->snap[1].tag, memory_order_relaxed);
        int v0 = t0 && (atomic_load_explicit(&s->snap[0].genseq, memory_order_relaxed) >> 32) == g32;
        int v1 = t1 && (atomic_load_explicit(&s->snap[1].genseq, memory_order_relaxed) >> 32) == g32;
        int w;
        if (v0 && t0 == tag) w = 0;
        else if (v1 && t1 == tag) w = 1;
        else if (!v0) w = 0;
        else if (!v1) w = 1;
        else w = t0 < t1 ? 0 : 1;               /* the older copy */
        struct fab_res_copy *c = &s->snap[w];
        uint64_t seq = (atomic_load_explicit(&c->genseq, memory_order_relaxed) + 1) & UINT32_MAX;
        atomic_store_explicit(&c->tag, 0, memory_order_relaxed);
        atomic_thread_fence(memory_order_release);
        atomic_store_explicit(&c->genseq, g32 << 32 | seq, memory_order_relaxed);
        atomic_store_explicit(&c->last_virtual_ns,
                              atomic_load_explicit(&s->last_virtual_ns, memory_order_relaxed),
                              memory_order_relaxed);
        atomic_store_explicit(&c->rate_bits,
                              atomic_load_explicit(&s->rate_bits, memory_order_relaxed),
                              memory_order_relaxed);
        atomic_store_explicit(&c->wrate_bits,
                              atomic_load_explicit(&s->wrate_bits, memory_order_relaxed),
                              memory_order_relaxed);
        atomic_store_explicit(&c->tag, tag, memory_order_release);
    }
    e->nls_dirty = 0;
}

void fab_ls_mark_dirty(fab_engine *e, uint32_t r) {
    if (e->res[r].ls_dirty) return;
    assert(r <= e->nres && e->nls_dirty <= e->nres);
    e->res[r].ls_dirty = 1;
    e->ls_dirty[e->nls_dirty++] = r;
}

static void ls_set_why(fab_engine *e, uint64_t why, uint64_t host, uint64_t clock, uint64_t need) {
    e->ls_why[0] = why;
    e->ls_why[1] = host;
    e->ls_why[2] = clock;
    e->ls_why[3] = need;
}

/* 1 when the group is complete and every other running member is at >= need
 * (*min_clock: the least of their clocks); else 0 with the reason in ls_why. */
static int ls_ready(fab_engine *e, uint64_t need, uint64_t *min_clock) {
    struct fab_ls_head *hd = e->ls_head;
    uint64_t size = atomic_load_explicit(&hd->size, memory_order_acquire);
    uint64_t joined = atomic_load_explicit(&hd->joined, memory_order_acquire);
    if (joined < size) {
        ls_set_why(e, LS_WHY_JOIN, UINT64_MAX, joined, size);
        return 0;
    }
    uint64_t minc = UINT64_MAX, me_thread = ls_thread();
    for (uint32_t h = 0; h < e->cfg.nhosts; h++) {
        if (h == e->cfg.host) continue;
        struct fab_ls_host *l = ls_line(e, h);
        if (atomic_load_explicit(&l->gen, memory_order_acquire) != e->ls_gen ||
            atomic_load_explicit(&l->state, memory_order_acquire) != FAB_LS_RUNNING)
            continue;
        uint64_t c = atomic_load_explicit(&l->clock_ns, memory_order_acquire);
        if (c < need) {
            int same = atomic_load_explicit(&l->pid, memory_order_relaxed) == e->ls_pid &&
                       atomic_load_explicit(&l->thread, memory_order_relaxed) == me_thread;
            ls_set_why(e, same ? LS_WHY_SAME_THREAD : LS_WHY_BEHIND, h, c, need);
            return 0;
        }
        if (c < minc) minc = c;
    }
    *min_clock = minc;
    return 1;
}

/* The member that holds us back (ls_why) is dead: mark it left. */
static void ls_reap(fab_engine *e) {
    if (e->ls_why[0] != LS_WHY_BEHIND || e->ls_why[1] >= e->cfg.nhosts) return;
    struct fab_ls_host *l = ls_line(e, (uint32_t)e->ls_why[1]);
    if (atomic_load_explicit(&l->gen, memory_order_acquire) != e->ls_gen ||
        !fab_ls_pid_dead(atomic_load_explicit(&l->pid, memory_order_relaxed)))
        return;
    uint64_t st = FAB_LS_RUNNING;
    if (atomic_compare_exchange_strong_explicit(&l->state, &st, FAB_LS_LEFT,
                                                memory_order_acq_rel, memory_order_relaxed))
        ls_kick(e, 1);
}

/* One wait that blocked, counted here and in our line (`fabric stats`). */
static void ls_count_wait(fab_engine *e, uint64_t ns) {
    e->ls_waits++;
    e->ls_wait_ns += ns;
    atomic_store_explicit(&e->ls_me->waits, e->ls_waits, memory_order_relaxed);
    atomic_store_explicit(&e->ls_me->wait_ns, e->ls_wait_ns, memory_order_relaxed);
}

/* The rule: wait until we may start a move at virtual time t. */
int fab_ls_wait(fab_engine *e, uint64_t t) {
    struct fab_ls_head *hd = e->ls_head;
    uint64_t q = t / e->ls_q;
    uint64_t epoch = atomic_load_explicit(&hd->epoch, memory_order_acquire);
    if (epoch == e->ls_epoch && q <= e->ls_ready_q) return 0;    /* known: no one is behind */
    uint64_t need = q * e->ls_q, t_start = 0, deadline = 0;
    /* Bounded: past the spins every round reads the clock (> 1 ns), so the
     * deadline ends the loop before the count does. */
    for (uint64_t i = 0; i <= LS_SPINS + e->ls_timeout_ns; i++) {
        uint32_t fw = atomic_load_explicit(&hd->futex, memory_order_acquire);
        epoch = atomic_load_explicit(&hd->epoch, memory_order_acquire);
        uint64_t minc;
        if (ls_ready(e, need, &minc)) {
            e->ls_epoch = epoch;
            e->ls_ready_q = minc == UINT64_MAX ? UINT64_MAX : minc / e->ls_q;
            if (t_start) ls_count_wait(e, fab_clock_wall_ns() - t_start);
            ls_set_why(e, LS_WHY_NONE, UINT64_MAX, 0, 0);
            return 0;
        }
        if (e->ls_why[0] == LS_WHY_SAME_THREAD) return FAB_ELOCKSTEP;
        uint64_t now = fab_clock_wall_ns();
        if (!t_start) {
            t_start = now;
            deadline = now + e->ls_timeout_ns;
        }
        if (now >= deadline) {
            ls_count_wait(e, now - t_start);
            return FAB_ELOCKSTEP;
        }
        if (i < LS_SPINS) {          /* on a busy machine the host we wait for may need our core */
            if (i >= LS_SPINS / 16) sched_yield();
            continue;
        }
        if (now - e->ls_last_reap_ns >= LS_SLICE_NS) {
            e->ls_last_reap_ns = now;
            ls_reap(e);
        }
        uint64_t slice = deadline - now < LS_SLICE_NS ? deadline - now : LS_SLICE_NS;
        atomic_fetch_add_explicit(&hd->sleepers, 1, memory_order_seq_cst);
        fab_sync_wait_u32((const uint32_t *)&hd->futex, fw, slice);
        atomic_fetch_sub_explicit(&hd->sleepers, 1, memory_order_seq_cst);
    }
    return FAB_ELOCKSTEP;
}

/* After a move that started at virtual time t0: snapshot what changed if the
 * clock left t0's quantum, then publish the clock. */
void fab_ls_moved(fab_engine *e, uint64_t t0) {
    uint64_t q0 = t0 / e->ls_q, q1 = e->vclock_ns / e->ls_q;
    if (q1 > q0 && e->nls_dirty) ls_commit(e, q0 + 1);
    atomic_store_explicit(&e->ls_me->thread, ls_thread(), memory_order_relaxed);
    atomic_store_explicit(&e->ls_me->clock_ns, e->vclock_ns, memory_order_release);
    if (q1 > q0) ls_kick(e, 0);
}

/* The membership lock: 0, or FAB_EBUSY after about a second (a dead holder's
 * lock is taken over). */
static int ls_lock(fab_engine *e) {
    _Atomic uint64_t *w = &e->ls_head->lock;
    for (uint32_t i = 0; i < LS_LOCK_TRIES; i++) {
        uint64_t cur = 0;
        if (atomic_compare_exchange_strong_explicit(w, &cur, e->ls_pid, memory_order_acquire,
                                                    memory_order_relaxed))
            return 0;
        if (i % 4096 == 4095 && cur != e->ls_pid && fab_ls_pid_dead(cur) &&
            atomic_compare_exchange_strong_explicit(w, &cur, e->ls_pid, memory_order_acquire,
                                                    memory_order_relaxed))
            return 0;
        if (i >= 64) sched_yield();
    }
    return FAB_EBUSY;
}

static void ls_unlock(fab_engine *e) {
    atomic_store_explicit(&e->ls_head->lock, 0, memory_order_release);
}

/* Join the group at create (FAB_EINVAL: the group has another size or
 * quantum; FAB_EBUSY: this host is in it already, or it is complete). */
int fab_ls_join(fab_engine *e) {
    struct fab_ls_head *hd = e->ls_head;
    int rc = ls_lock(e);
    if (rc) return rc;
    uint64_t gen = atomic_load_explicit(&hd->gen, memory_order_acquire);
    uint32_t live = 0;
    for (uint32_t h = 0; gen && h < e->cfg.nhosts; h++) {
        struct fab_ls_host *l = ls_line(e, h);
        if (atomic_load_explicit(&l->gen, memory_order_acquire) != gen) continue;
        uint64_t st = atomic_load_explicit(&l->state, memory_order_acquire);
        if (st != FAB_LS_RUNNING && st != FAB_LS_PARKED) continue;
        if (fab_ls_pid_dead(atomic_load_explicit(&l->pid, memory_order_relaxed)))
            atomic_store_explicit(&l->state, FAB_LS_LEFT, memory_order_release);
        else
            live++;
    }
    if (gen == 0 || live == 0) {               /* a fresh group */
        gen++;
        if (ls_gen32(gen) == 0) gen++;         /* copies tell "never written" by 0 */
        atomic_store_explicit(&hd->size, e->cfg.lockstep_hosts, memory_order_relaxed);
        atomic_store_explicit(&hd->quantum_ns, e->ls_q, memory_order_relaxed);
        atomic_store_explicit(&hd->joined, 0, memory_order_relaxed);
        atomic_store_explicit(&hd->gen, gen, memory_order_release);
    } else if (atomic_load_explicit(&hd->size, memory_order_relaxed) != e->cfg.lockstep_hosts ||
               atomic_load_explicit(&hd->quantum_ns, memory_order_relaxed) != e->ls_q) {
        ls_unlock(e);
        return FAB_EINVAL;
    }
    struct fab_ls_host *me = e->ls_me;
    uint64_t my_st = atomic_load_explicit(&me->state, memory_order_relaxed);
    if ((atomic_load_explicit(&me->gen, memory_order_relaxed) == gen &&
         (my_st == FAB_LS_RUNNING || my_st == FAB_LS_PARKED)) ||
        atomic_load_explicit(&hd->joined, memory_order_relaxed) >=
            atomic_load_explicit(&hd->size, memory_order_relaxed)) {
        ls_unlock(e);
        return FAB_EBUSY;
    }
    atomic_store_explicit(&me->state, FAB_LS_RUNNING, memory_order_relaxed);
    atomic_store_explicit(&me->clock_ns, e->vclock_ns, memory_order_relaxed);
    atomic_store_explicit(&me->pid, e->ls_pid, memory_order_relaxed);
    atomic_store_explicit(&me->thread, 0, memory_order_relaxed);   /* set by its first move */
    atomic_store_explicit(&me->waits, 0, memory_order_relaxed);
    atomic_store_explicit(&me->wait_ns, 0, memory_order_relaxed);
    atomic_store_explicit(&me->gen, gen, memory_order_release);
    atomic_fetch_add_explicit(&hd->joined, 1, memory_order_acq_rel);
    e->ls_gen = gen;
    e->ls_joined = 1;
    e->ls_epoch = UINT64_MAX;
    ls_unlock(e);
    ls_kick(e, 1);
    return 0;
}

/* Move our line from state `from` to `to` (0 if it was not in `from`). */
static int ls_transit(fab_engine *e, uint64_t from, uint64_t to) {
    uint64_t st = from;
    int ok = atomic_compare_exchange_strong_explicit(&e->ls_me->state, &st, to,
                                                     memory_order_acq_rel, memory_order_relaxed);
    if (ok) ls_kick(e, 1);
    return ok;
}

/* Quit the group; with wait, first snapshot our last values (after waiting
 * for the others to reach our quantum), so the others see our last accesses. */
void fab_ls_leave(fab_engine *e, int wait) {
    if (!e->ls_joined) return;
    uint64_t st = atomic_load_explicit(&e->ls_me->state, memory_order_acquire);
    if (st == FAB_LS_RUNNING && wait && e->nls_dirty && fab_ls_wait(e, e->vclock_ns) == 0)
        ls_commit(e, e->vclock_ns / e->ls_q + 1);
    if (st == FAB_LS_RUNNING || st == FAB_LS_PARKED) ls_transit(e, st, FAB_LS_LEFT);
    e->ls_joined = 0;
    e->ls_parked = 0;
}

int fab_engine_lockstep_park(fab_engine *e) {
    if (!e || !e->ls_q || !e->ls_joined) return FAB_EINVAL;
    if (e->ls_parked) return 0;
    if (e->nls_dirty) {
        /* Snapshot what changed since our last one: safe once every running
         * member is in our quantum (nothing else to wait for otherwise). */
        int rc = fab_ls_wait(e, e->vclock_ns);
        if (rc) return rc;
        ls_commit(e, e->vclock_ns / e->ls_q + 1);
    }
    atomic_store_explicit(&e->ls_me->clock_ns, e->vclock_ns, memory_order_release);
    if (!ls_transit(e, FAB_LS_RUNNING, FAB_LS_PARKED)) return FAB_EINVAL;   /* dropped as dead */
    e->ls_parked = 1;
    return 0;
}

int fab_engine_lockstep_unpark(fab_engine *e) {
    if (!e || !e->ls_q || !e->ls_joined) return FAB_EINVAL;
    struct fab_ls_host *me = e->ls_me;
    uint64_t st = atomic_load_explicit(&me->state, memory_order_acquire);
    if (st == FAB_LS_PARKED) {
        /* Rejoin at the front: the latest clock of the running members. */
        uint64_t c = e->vclock_ns;
        for (uint32_t h = 0; h < e->cfg.nhosts; h++) {
            struct fab_ls_host *l = ls_line(e, h);
            if (h == e->cfg.host || atomic_load_explicit(&l->gen, memory_order_acquire) != e->ls_gen ||
                atomic_load_explicit(&l->state, memory_order_acquire) != FAB_LS_RUNNING)
                continue;
            uint64_t hc = atomic_load_explicit(&l->clock_ns, memory_order_acquire);
            if (hc > c) c = hc;
        }
        atomic_store_explicit(&me->clock_ns, c, memory_order_release);
        if (!ls_transit(e, FAB_LS_PARKED, FAB_LS_RUNNING)) {
            st = atomic_load_explicit(&me->state, memory_order_acquire);
            if (st != FAB_LS_RUNNING) return FAB_EINVAL;
        }
    } else if (st != FAB_LS_RUNNING) {
        return FAB_EINVAL;
    }
    /* Running now (a release may have set our clock): adopt the published clock. */
    uint64_t c = atomic_load_explicit(&me->clock_ns, memory_order_acquire);
    if (c > e->vclock_ns) e->vclock_ns = c;
    atomic_store_explicit(&e->me->ctr[FAB_HCTR_VCLOCK_NS], e->vclock_ns, memory_order_relaxed);
    e->ls_parked = 0;
    return 0;
}

int fab_engine_lockstep_release(fab_engine *e, const uint32_t *hosts, uint32_t n,
                                uint64_t clock_ns) {
    if (!e || !e->ls_q || !e->ls_joined || (n && !hosts)) return FAB_EINVAL;
    for (uint32_t i = 0; i < n; i++)
        if (hosts[i] >= e->cfg.nhosts) return FAB_ERANGE;
    int changed = 0;
    for (uint32_t i = 0; i < n; i++) {
        struct fab_ls_host *l = ls_line(e, hosts[i]);
        if (atomic_load_explicit(&l->gen, memory_order_acquire) != e->ls_gen ||
            atomic_load_explicit(&l->state, memory_order_acquire) != FAB_LS_PARKED)
            continue;
        if (atomic_load_explicit(&l->clock_ns, memory_order_relaxed) < clock_ns)
            atomic_store_explicit(&l->clock_ns, clock_ns, memory_order_release);
        uint64_t st = FAB_LS_PARKED;
        changed |= atomic_compare_exchange_strong_explicit(&l->state, &st, FAB_LS_RUNNING,
                                                           memory_order_acq_rel,
                                                           memory_order_relaxed);
    }
    if (changed) ls_kick(e, 1);
    return 0;
}

int fab_engine_lockstep_leave(fab_engine *e) {
    if (!e || !e->ls_q) return FAB_EINVAL;
    fab_ls_leave(e, 1);
    return 0;
}

int fab_engine_lockstep_info(const fab_engine *e, uint64_t *out, uint32_t n) {
    if (!e || !out || n < 11) return FAB_EINVAL;
    memset(out, 0, 11 * sizeof *out);
    if (!e->ls_q) return 0;
    struct fab_ls_head *hd = e->ls_head;
    out[0] = e->ls_gen;
    out[1] = atomic_load_explicit(&hd->size, memory_order_acquire);
    out[2] = atomic_load_explicit(&hd->joined, memory_order_acquire);
    out[3] = e->ls_q;
    out[4] = e->ls_joined ? atomic_load_explicit(&e->ls_me->state, memory_order_acquire)
                          : FAB_LS_LEFT;
    out[5] = e->ls_waits;
    out[6] = e->ls_wait_ns;
    memcpy(&out[7], e->ls_why, sizeof e->ls_why);
    return 0;
}

/* fab_engine_check's part: our line and the head agree with us, the dirty
 * list names exactly the flagged elements, and no copy of ours is half
 * written or shares its tag with the other copy. */
int fab_ls_check(fab_engine *e) {
    if (!e->ls_q) return 0;
    struct fab_ls_head *hd = e->ls_head;
    uint64_t size = atomic_load_explicit(&hd->size, memory_order_acquire);
    if (size == 0 || size > e->cfg.nhosts ||
        atomic_load_explicit(&hd->joined, memory_order_acquire) > size)
        return FAB_ECORRUPT;
    if (e->ls_joined) {
        uint64_t st = atomic_load_explicit(&e->ls_me->state, memory_order_acquire);
        if (atomic_load_explicit(&e->ls_me->gen, memory_order_acquire) != e->ls_gen ||
            (st != FAB_LS_RUNNING && st != FAB_LS_PARKED) ||
            (st == FAB_LS_PARKED) != (e->ls_parked != 0))
            return FAB_ECORRUPT;
    }
    if (e->nls_dirty > e->nres + 1) return FAB_ECORRUPT;
    uint32_t flagged = 0;
    for (uint32_t r = 0; r <= e->nres; r++) {
        flagged += e->res[r].ls_dirty != 0;
        struct fab_res_slot *s = own_slot(e, r);
        if (!s) {                                  /* our DRAM without a slot: never marked */
            if (e->res[r].ls_dirty) return FAB_ECORRUPT;
            continue;
        }
        uint64_t g32 = ls_gen32(e->ls_gen), t[2];
        int valid[2];
        for (int k = 0; k < 2; k++) {
            t[k] = atomic_load_explicit(&s->snap[k].tag, memory_order_acquire);
            uint64_t g = atomic_load_explicit(&s->snap[k].genseq, memory_order_relaxed);
            if ((g >> 32) == g32 && t[k] == 0) return FAB_ECORRUPT;   /* half written */
            valid[k] = (g >> 32) == g32;
        }
        if (valid[0] && valid[1] && t[0] == t[1]) return FAB_ECORRUPT;
    }
    if (flagged != e->nls_dirty) return FAB_ECORRUPT;
    for (uint32_t i = 0; i < e->nls_dirty; i++)
        if (e->ls_dirty[i] > e->nres || !e->res[e->ls_dirty[i]].ls_dirty) return FAB_ECORRUPT;
    return 0;
}
