/*
 * engine.c -- one emulated host's view of the fabric: its regions, its page
 * cache, and what every access it declares costs.
 *
 * An access (region, offset, nbytes, write) is split into pages.  Page p of a
 * region lives on devs[(p / stripe_pages) % ndevs]; its cache key (global
 * page number) is (region_id << 32) | p.  Each page is, by region policy:
 *
 *   cache    looked up; a hit is served from local DRAM, a miss fetches the
 *            whole page over the fabric into the cache (write-allocate),
 *            possibly evicting (a dirty victim is written back, charged);
 *   direct   never cached: the bytes cross the fabric every time (CXL
 *            load/store), as a read or a write;
 *   promote  like direct until the page has been touched promote_after times
 *            (counted in the bounded touch table), then fetched and cached.
 *
 * The pass over the pages only counts, per device: hits and their bytes,
 * far reads (fetches, direct reads), far writes (direct writes, write-backs),
 * back-invalidations, all in 64-byte lines, and bytes over the fabric.  Then
 * settle() prices the call at once (cost model, docs/cost-model.md):
 *
 *   W       = mlp_lines x threads                  lines in flight per device
 *   hit_ns  = local_dram_ns + D(load) + hit_bytes / share_dram
 *             D: the rise of the host's DRAM curve above idle at the load of
 *             every engine of this host (our own included); share_dram: our
 *             share of local_bw ("host DRAM" below)
 *   lat_d   = ceil(read_lines_d / W) x L_read(d) + ceil(bi_d / W) x L_read(d)
 *             + ceil(write_lines_d / W) x L_write(d)  (jittered per round)
 *   L(d)    = path idle latency + sum over the path's links and the device of
 *             the element's loaded-latency rise (curve, or M/M/1 without one)
 *             at the other hosts' load
 *   first_d = lat_d / rounds_d + (what our own load adds to L), 0 when the
 *             call continues a stream (it starts where the last access to the
 *             region ended: a prefetcher has its first lines in flight)
 *   rest_d  = lat_d - lat_d / rounds_d    (overlaps the transfer: pipelining)
 *   xfer_ns = max over elements r of bytes_r / share_r, over devices of
 *             bytes_d / path_bw_d, and far_bytes / share_dram
 *   charge  = hit_ns + max_d first_d + max(xfer_ns, max_d rest_d)
 *
 * Contention: element r's load is the sum of the rates the hosts that used it
 * recently published in the shared segment (seg.c), each with its write
 * (host -> device) part; this host's share of its capacity is max(cap / k,
 * cap - load of the others), k = active hosts including us.  Links are full
 * duplex: reads see the read direction's load, writes the write direction's,
 * and at read fraction f a link carries bw / max(f, 1 - f); a device with
 * curve sets for several read percentages has its capacity and loaded
 * latency interpolated between them at f (res_load, res_excess).  "Recently" is within active_window_ns of this host's
 * virtual clock in virtual mode, within active_window_wall_ns of
 * CLOCK_MONOTONIC in off and spin modes (virtual clocks of different
 * processes are not synchronised, so cross-process contention in virtual mode
 * is approximate).  Each host measures its own rate per element over rolling
 * windows of rate_window_ns on its virtual clock (off, virtual) or on
 * CLOCK_MONOTONIC (spin), and publishes it when a window closes (checked at
 * the start of each call, so a window spans accesses and the think time
 * between them).
 *
 * Coherence: a shared or coherent region has a version file (its path given
 * at registration): uint32 version[npages] then uint32 holders[npages].  A
 * write bumps version[p]; a cached copy whose version differs is stale: an
 * invalidation, refetched as a miss.  holders[p] is a 32-bit "may hold" mask
 * (host index mod 32, a conservative snoop filter): in coherent mode a write
 * to a page whose mask names another host costs the writer one
 * back-invalidation round trip (overlapped like any other round).
 *
 * Injection: the charge always advances this host's virtual clock; spin mode
 * also waits for it (spin_wait).  Everything is allocated at create or
 * region registration; the access path allocates nothing.  Single-threaded:
 * one engine per host per process.
 *
 * Layout: a region table (open addressing by id, at most half full), one
 * `edev` per device (its path and the elements on it), one `res` per element
 * (links, then devices, then this host's local DRAM at index nres), and
 * per-call scratch: a `dacc` per device plus the lists of devices and
 * elements the call touched, in first-touch order.
 *
 * Resident summary: each region keeps a bitmap of its resident pages (and,
 * when shared, a mirror of the versions its frames hold), so a read of a range
 * that is wholly resident and current is priced from counts without visiting
 * a frame ("summary reads", below); the CLOCK reference bits such a read
 * would set are deferred until an eviction scan needs them.
 *
 * Invariants (fab_engine_check() verifies them; asserts restate them where
 * they are relied on): every cached page belongs to a registered region and
 * lies inside it; a region's `resident` and `pinned` count its frames and
 * its frames with pins, its `rbits` has exactly its frames' pages set, its
 * `cver` (shared regions) equals each frame's version; deferred reference
 * bits name resident pages of pending regions only (check_summaries);
 * the scratch is empty between calls; indices into the
 * shared segment and the version tables were checked at create, registration
 * or the access's range check before they are used.
 */
#define _GNU_SOURCE
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fabric_core.h"
#include "engine_impl.h"

/* ---- regions ----------------------------------------------------------- */

/* Linear probing from the id's home; the table is at most half full
 * (nregion_slots >= 2 * max_regions), so a free slot ends every probe run. */
static struct region *region_find(const fab_engine *e, uint64_t id) {
    uint32_t mask = e->nregion_slots - 1, i = (uint32_t)(fab_mix64(id) & mask);
    for (uint32_t n = 0; n < e->nregion_slots; n++, i = (i + 1) & mask) {
        if (!e->regions[i].used) return NULL;
        if (e->regions[i].id == id) return &e->regions[i];
    }
    return NULL;
}

static void region_slot_delete(fab_engine *e, uint32_t i) {
    assert(i < e->nregion_slots && e->regions[i].used);
    uint32_t mask = e->nregion_slots - 1, j = i;
    for (uint32_t n = 0; n < e->nregion_slots; n++) {
        j = (j + 1) & mask;
        if (!e->regions[j].used) break;
        uint32_t k = (uint32_t)(fab_mix64(e->regions[j].id) & mask);
        int stays = (i <= j) ? (i < k && k <= j) : (i < k || k <= j);
        if (stays) continue;
        e->regions[i] = e->regions[j];
        i = j;
    }
    memset(&e->regions[i], 0, sizeof e->regions[i]);
}

static void region_release(struct region *r) {
    if (r->map) munmap(r->map, r->map_bytes);
    free(r->devs);
    free(r->cver);
    free(r->rbits);
    free(r->dref);
    free(r->dev_off);
    r->dev_off = NULL;
    r->dref = NULL;
    r->map = NULL;
    r->devs = NULL;
    r->cver = NULL;
    r->rbits = NULL;
}

/* The version file: uint32 version[npages] then uint32 holders[npages]. */
static int map_versions(struct region *r, const char *path) {
    uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE);
    uint64_t need = ((uint64_t)r->npages * 8 + page - 1) / page * page;
    void *m;
    int rc = fab_file_map_shared(path, need, 0, &m);
    if (rc) return rc;
    r->map = m;
    r->map_bytes = need;
    r->versions = (_Atomic uint32_t *)m;
    r->holders = (_Atomic uint32_t *)m + r->npages;
    assert(r->map_bytes >= (uint64_t)r->npages * 8);
    return 0;
}

/* Entries of the version and holder tables.  Internal: every caller passes a
 * page of an access already checked against npages (the assert restates it),
 * so the index stays inside the mapping (map_versions made it >= 8 x npages). */
static _Atomic uint32_t *version_at(const struct region *r, uint64_t p) {
    assert(r->versions && p < r->npages);
    return &r->versions[p];
}

static _Atomic uint32_t *holders_at(const struct region *r, uint64_t p) {
    assert(r->holders && p < r->npages);
    return &r->holders[p];
}

int fab_engine_region_add(fab_engine *e, uint64_t id, uint64_t npages, const uint32_t *devs,
                          uint32_t ndevs, uint32_t stripe_pages, uint32_t policy,
                          uint32_t promote_after, uint32_t share, const char *versions_path) {
    if (!e || !devs || id > UINT32_MAX || npages == 0 || npages >= UINT32_MAX || ndevs == 0 ||
        ndevs > FAB_REGION_MAX_DEVICES || stripe_pages == 0 || policy > FAB_POLICY_PROMOTE ||
        share > FAB_SHARE_COHERENT || (policy == FAB_POLICY_PROMOTE && promote_after == 0))
        return FAB_EINVAL;
    if (share != FAB_SHARE_PRIVATE && !versions_path) return FAB_EINVAL;
    for (uint32_t i = 0; i < ndevs; i++)
        if (devs[i] >= e->cfg.ndevices) return FAB_ERANGE;
    if (region_find(e, id)) return FAB_EEXIST;
    if (e->nregions >= e->cfg.max_regions) return FAB_ENOMEM;

    struct region r;
    memset(&r, 0, sizeof r);
    r.id = id;
    r.used = 1;
    r.npages = (uint32_t)npages;
    r.stripe_pages = stripe_pages;
    r.ndevs = ndevs;
    r.policy = policy;
    r.share = share;
    r.promote_after = promote_after;
    r.devs = malloc(ndevs * sizeof *r.devs);
    r.rbits = calloc((npages + 63) / 64, sizeof *r.rbits);
    if (e->cfg.eviction == FAB_EVICT_CLOCK) r.dref = calloc((npages + 63) / 64, sizeof *r.dref);
    if (!r.devs || !r.rbits || (e->cfg.eviction == FAB_EVICT_CLOCK && !r.dref)) {
        free(r.devs); free(r.rbits); free(r.dref);
        return FAB_ENOMEM;
    }
    for (uint32_t i = 0; i < ndevs; i++) r.devs[i] = (uint16_t)devs[i];
    if (share != FAB_SHARE_PRIVATE) {
        r.cver = calloc(npages, sizeof *r.cver);
        int rc = r.cver ? map_versions(&r, versions_path) : FAB_ENOMEM;
        if (rc) { free(r.devs); free(r.rbits); free(r.dref); free(r.cver); return rc; }
    }
    uint32_t mask = e->nregion_slots - 1, i = (uint32_t)(fab_mix64(id) & mask);
    for (uint32_t n = 0; n < e->nregion_slots && e->regions[i].used; n++) i = (i + 1) & mask;
    assert(!e->regions[i].used);   /* at most half full: a free slot exists */
    e->regions[i] = r;
    e->nregions++;
    return 0;
}

/* ---- per-call scratch ---------------------------------------------------- */

static struct dacc *acc_of(fab_engine *e, uint32_t dev) {
    assert(dev < e->cfg.ndevices);
    struct dacc *a = &e->acc[dev];
    if (!a->touched) {
        assert(e->ntdev < e->cfg.ndevices);
        a->touched = 1;
        e->tdev[e->ntdev++] = dev;
    }
    return a;
}

static void res_touch(fab_engine *e, uint32_t r) {
    assert(r < e->nres);
    if (!e->res[r].touched) {
        assert(e->ntres < e->nres);
        e->res[r].touched = 1;
        e->tres[e->ntres++] = r;
    }
}


static uint64_t rate_clock(const fab_engine *e, uint64_t wall) {
    return e->cfg.mode == FAB_MODE_SPIN ? wall - e->wall0_ns : e->vclock_ns;
}

/* Close our rate window on element r if it is at least rate_window_ns old. */
static void res_roll(fab_engine *e, uint32_t r, uint64_t now) {
    struct res *x = &e->res[r];
    if (now < x->win_start_ns || now - x->win_start_ns < e->cfg.rate_window_ns) return;
    x->my_rate = (double)x->win_bytes / (double)(now - x->win_start_ns);
    x->my_wrate = (double)x->win_wbytes / (double)(now - x->win_start_ns);
    x->win_start_ns = now;
    x->win_bytes = x->win_wbytes = 0;
    uint64_t bits, wbits;
    memcpy(&bits, &x->my_rate, sizeof bits);
    memcpy(&wbits, &x->my_wrate, sizeof wbits);
    struct fab_res_slot *sl = own_slot(e, r);
    if (!sl) return;             /* our DRAM without a slot: priced, not published */
    atomic_store_explicit(&sl->wrate_bits, wbits, memory_order_relaxed);
    atomic_store_explicit(&sl->rate_bits, bits, memory_order_relaxed);
}

/* Curve set c's saturation bandwidth: its last point's. */
static double set_sat_gbps(const fab_engine *e, uint32_t c) {
    const fab_curve_params *cv = &e->curves[c];
    return e->points[cv->first_point + cv->npoints - 1].bandwidth_gbps;
}

/* The device's curve sets bracketing read percentage pct: sets lo and hi of
 * e->mixsets (equal at either end) and the weight t of hi. */
static void mix_bracket(const fab_engine *e, const struct res *x, double pct, uint32_t *lo,
                        uint32_t *hi, double *t) {
    assert(x->nmix > 0);
    const uint32_t *m = &e->mixsets[x->mix_first];
    uint32_t i = 0;
    while (i < x->nmix && e->curves[m[i]].read_pct < pct) i++;
    *t = 0.0;
    if (i == 0) { *lo = *hi = m[0]; return; }
    if (i == x->nmix) { *lo = *hi = m[x->nmix - 1]; return; }
    *lo = m[i - 1];
    *hi = m[i];
    double p0 = e->curves[*lo].read_pct, p1 = e->curves[*hi].read_pct;
    *t = (pct - p0) / (p1 - p0);
}

/* Load on r and our share of its bandwidth, from the other hosts' slots.
 * Full duplex: a link carries its bandwidth in each direction, so at read
 * fraction f it carries bw / max(f, 1 - f) in all; a device carries its
 * bandwidth scaled by its curve sets' saturation at f (Mess: 26.8 GB/s at
 * 100% reads, 40.0 at 50%), its bandwidth as given without two sets.  f is
 * the read fraction of the others' published rates and of our own recent mix
 * (mix_r, mix_w) weighted by our rate. */
static void res_load(fab_engine *e, uint32_t r, uint64_t now_act) {
    struct res *x = &e->res[r];
    double others = 0.0, others_w = 0.0;
    uint32_t k = 1;
    int virt = e->cfg.mode == FAB_MODE_VIRTUAL;
    uint64_t window = virt ? e->cfg.active_window_ns : e->cfg.active_window_wall_ns;
    /* Lockstep: the members' snapshots as of our quantum (see "lockstep"). */
    uint64_t ls_r = e->ls_joined ? e->vclock_ns / e->ls_q : UINT64_MAX;
    for (uint32_t h = 0; h < e->cfg.nhosts; h++) {
        if (h == e->cfg.host) continue;
        struct fab_res_slot *s = my_slot(e, r, h);
        uint64_t last, bits, wbits;
        if (ls_r != UINT64_MAX && fab_ls_member(e, h)) {
            fab_ls_snap_read(e, s, ls_r, &last, &bits, &wbits);
            if (last == 0 || (int64_t)(now_act - (last - 1)) >= (int64_t)window) continue;
        } else {
            last = atomic_load_explicit(virt ? &s->last_virtual_ns : &s->last_wall_ns,
                                        memory_order_relaxed);
            if (last == 0 || (int64_t)(now_act - (last - 1)) >= (int64_t)window) continue;
            bits = atomic_load_explicit(&s->rate_bits, memory_order_relaxed);
            wbits = atomic_load_explicit(&s->wrate_bits, memory_order_relaxed);
        }
        double rate, wrate;
        memcpy(&rate, &bits, sizeof rate);
        memcpy(&wrate, &wbits, sizeof wrate);
        if (wrate > rate) wrate = rate;   /* a torn pair of stores: stay consistent */
        others += rate;
        others_w += wrate;
        k++;
    }
    double mine_f = x->mix_r + x->mix_w > 0.0 ? x->mix_r / (x->mix_r + x->mix_w) : 1.0;
    double tot = others + x->my_rate;
    double f = tot > 0.0 ? (others - others_w + mine_f * x->my_rate) / tot : mine_f;
    double bw = x->bandwidth_gbps, cap = bw;
    if (!x->is_dev) {
        double busy = f > 1.0 - f ? f : 1.0 - f;
        cap = bw / busy;
    } else if (x->nmix >= 2) {
        uint32_t lo, hi;
        double t;
        mix_bracket(e, x, 100.0 * f, &lo, &hi, &t);
        double s0 = set_sat_gbps(e, lo), s1 = set_sat_gbps(e, hi);
        double top = set_sat_gbps(e, e->mixsets[x->mix_first + x->nmix - 1]);
        cap = bw * (s0 + (s1 - s0) * t) / top;
    }
    double fair = cap / (double)k, left = cap - others;
    x->share_gbps = left > fair ? left : fair;
    x->read_frac = f;
    x->cap_gbps = cap;
    x->others_gbps = others;
    x->others_w_gbps = others_w;
    x->load_gbps = others + x->my_rate;
    x->load_w_gbps = others_w + x->my_wrate;
}

/* Rise of element r's latency above idle at its current load (all of it, or
 * the other hosts' part only).  A link's reads see its read direction's load,
 * its writes its write direction's; a device's latency follows its total load
 * on the curve sets interpolated at its read fraction (M/M/1 against its
 * capacity at that mix without a curve). */
static double res_excess(const fab_engine *e, uint32_t r, int write, int others_only) {
    const struct res *x = &e->res[r];
    double load = others_only ? x->others_gbps : x->load_gbps;
    double load_w = others_only ? x->others_w_gbps : x->load_w_gbps;
    if (x->is_dev) {
        if (x->nmix == 0)
            return fab_cost_queue_excess_ns(write ? x->base_write_ns : x->base_read_ns,
                                            load / x->cap_gbps, e->cfg.queue_max_factor);
        uint32_t lo, hi;
        double t;
        mix_bracket(e, x, 100.0 * x->read_frac, &lo, &hi, &t);
        const fab_curve_point *p0 = &e->points[e->curves[lo].first_point];
        const fab_curve_point *p1 = &e->points[e->curves[hi].first_point];
        double x0 = fab_cost_curve_ns(p0, e->curves[lo].npoints, load) - p0[0].latency_ns;
        double x1 = fab_cost_curve_ns(p1, e->curves[hi].npoints, load) - p1[0].latency_ns;
        return x0 + (x1 - x0) * t;
    }
    double dload = write ? load_w : load - load_w;
    int32_t c = write ? x->curve_write : x->curve_read;
    if (c >= 0) {
        const fab_curve_params *cv = &e->curves[c];
        const fab_curve_point *pts = &e->points[cv->first_point];
        return fab_cost_curve_ns(pts, cv->npoints, dload) - pts[0].latency_ns;
    }
    return fab_cost_queue_excess_ns(write ? x->base_write_ns : x->base_read_ns,
                                    dload / x->bandwidth_gbps, e->cfg.queue_max_factor);
}

static double loaded_latency(const fab_engine *e, uint32_t d, int write, int others_only) {
    const struct edev *v = &e->devs[d];
    double lat = write ? v->path.latency_write_ns : v->path.latency_read_ns;
    for (uint32_t i = 0; i < v->nres; i++) lat += res_excess(e, v->res[i], write, others_only);
    return lat;
}

/* ---- host DRAM ----------------------------------------------------------------
 *
 * The host's local DRAM is one more contended element, res[nres], with the
 * bandwidth local_bandwidth_gbps and, when the model gives one (a curve set
 * whose resource is nlinks + ndevices; the Python binding passes the measured
 * ddr4-skylake curve scaled to this host), a loaded-latency curve.  Through it
 * go the bytes of page-cache hits and every far byte (fetches, direct
 * accesses, write-backs land in or leave local DRAM).  Only engines attached
 * as this same host share it: each claims one of the FAB_DRAM_SLOTS slots of
 * the host's block in the segment at create (dram_claim) and publishes its
 * rate there exactly as for a link (res_roll); dram_load sums the other
 * slots' rates like res_load, without a read/write mix (the curve is for
 * reads; DRAM is not full duplex).  Its share bounds hits and every far
 * transfer; its curve's rise above idle at the whole load -- ours included,
 * so a host alone streaming hits climbs the curve -- is added to the hit
 * latency.  Alone and idle the share is local_bw and the rise exactly 0, so
 * a light access costs what it did before the element existed.
 *
 * Lockstep: one engine per host joins a group, so the other slots of our
 * host's DRAM belong to engines outside it and are read live, as any
 * non-member is; our own slot is snapshotted with the others (ls_commit).
 */

static _Atomic uint64_t dram_seq;   /* per-process count behind owner tokens */

/* Forget a slot's published use (not its bytes_total, a statistic): it is ours now,
 * or free again. */
static void dram_slot_clear(struct fab_res_slot *sl) {
    atomic_store_explicit(&sl->last_virtual_ns, 0, memory_order_relaxed);
    atomic_store_explicit(&sl->last_wall_ns, 0, memory_order_relaxed);
    atomic_store_explicit(&sl->rate_bits, 0, memory_order_relaxed);
    atomic_store_explicit(&sl->wrate_bits, 0, memory_order_relaxed);
    for (int k = 0; k < 2; k++) {
        atomic_store_explicit(&sl->snap[k].tag, 0, memory_order_relaxed);
        atomic_store_explicit(&sl->snap[k].genseq, 0, memory_order_relaxed);
    }
}

/* Claim a free slot of our host's DRAM block (or one whose owner process is
 * gone); none free leaves dram_slot = FAB_DRAM_SLOTS: we are priced by our own
 * load but the others do not see it. */
static void dram_claim(fab_engine *e) {
    e->dram_slot = FAB_DRAM_SLOTS;
    uint64_t seq = atomic_fetch_add_explicit(&dram_seq, 1, memory_order_relaxed) + 1;
    e->dram_token = (uint64_t)getpid() << 32 | (seq & UINT32_MAX);
    for (int pass = 0; pass < 2 && e->dram_slot == FAB_DRAM_SLOTS; pass++) {
        for (uint32_t i = 0; i < FAB_DRAM_SLOTS; i++) {
            _Atomic uint64_t *w = &e->dram_blk->owner[i];
            uint64_t cur = atomic_load_explicit(w, memory_order_acquire);
            if (pass == 0 ? cur != 0 : (cur == 0 || !fab_ls_pid_dead(cur >> 32))) continue;
            if (atomic_compare_exchange_strong_explicit(w, &cur, e->dram_token,
                                                        memory_order_acq_rel,
                                                        memory_order_relaxed)) {
                e->dram_slot = i;
                break;
            }
        }
    }
    if (e->dram_slot < FAB_DRAM_SLOTS) dram_slot_clear(&e->dram_blk->slot[e->dram_slot]);
}

static void dram_release(fab_engine *e) {
    if (!e->dram_blk || e->dram_slot >= FAB_DRAM_SLOTS) return;
    dram_slot_clear(&e->dram_blk->slot[e->dram_slot]);
    uint64_t mine = e->dram_token;
    atomic_compare_exchange_strong_explicit(&e->dram_blk->owner[e->dram_slot], &mine, 0,
                                            memory_order_acq_rel, memory_order_relaxed);
    e->dram_slot = FAB_DRAM_SLOTS;
}

/* Load on our host's DRAM and our share of it (res_load for res[nres]): the
 * other slots' recent rates plus ours; share max(cap / k, cap - others). */
static void dram_load(fab_engine *e, uint64_t now_act) {
    struct res *x = &e->res[e->nres];
    int virt = e->cfg.mode == FAB_MODE_VIRTUAL;
    uint64_t window = virt ? e->cfg.active_window_ns : e->cfg.active_window_wall_ns;
    double others = 0.0;
    uint32_t k = 1;
    for (uint32_t i = 0; i < FAB_DRAM_SLOTS; i++) {
        /* Free slots were cleared: skip them by their owner word (one cache line). */
        if (i == e->dram_slot ||
            atomic_load_explicit(&e->dram_blk->owner[i], memory_order_relaxed) == 0)
            continue;
        struct fab_res_slot *s = &e->dram_blk->slot[i];
        uint64_t last = atomic_load_explicit(virt ? &s->last_virtual_ns : &s->last_wall_ns,
                                             memory_order_relaxed);
        if (last == 0 || (int64_t)(now_act - (last - 1)) >= (int64_t)window) continue;
        uint64_t bits = atomic_load_explicit(&s->rate_bits, memory_order_relaxed);
        double rate;
        memcpy(&rate, &bits, sizeof rate);
        others += rate;
        k++;
    }
    double cap = x->bandwidth_gbps;
    double fair = cap / (double)k, left = cap - others;
    x->share_gbps = left > fair ? left : fair;
    x->cap_gbps = cap;
    x->others_gbps = others;
    x->load_gbps = others + x->my_rate;
    if (x->curve_read < 0) {
        e->dram_excess_ns = 0.0;
    } else if (!(x->load_gbps == e->dram_excess_load)) {   /* else: the same load, the same rise */
        const fab_curve_params *cv = &e->curves[x->curve_read];
        const fab_curve_point *pts = &e->points[cv->first_point];
        e->dram_excess_ns = fab_cost_curve_ns(pts, cv->npoints, x->load_gbps) - pts[0].latency_ns;
        e->dram_excess_load = x->load_gbps;
    }
}

static uint64_t ceil_div(uint64_t a, uint64_t b) { return (a + b - 1) / b; }

/* 64-byte lines covering b bytes (the unit a core or a CXL/PCIe link moves). */
static uint64_t lines_of(uint64_t b) { return (b + 63) / 64; }

/* ---- pricing a call (settle and its steps) --------------------------------
 *
 * settle() runs once per access call (and per unregister) over the scratch
 * the page pass filled.  Its steps, in order; the reference model
 * (RefEngine._settle) performs the same floating-point operations and PRNG
 * draws in the same order, so both agree to the last bit:
 *
 *   gather_touched   sum hits and bytes; mark the elements under far traffic
 *   load_touched     close our rate windows, read the others' load
 *   load_dram        the same for our host's DRAM when hits or far bytes use it
 *   hits_ns          hit cost (whole call, and each device's share)
 *   device_rounds_ns one device's latency rounds (jitter: reads, bis, writes),
 *                    split into the first round and the rest
 *   price_devices    per device: first round, rest, transfer, the device's charge
 *   transfer_ns      the slowest transfer over all elements and local DRAM
 *   publish_use      our bytes and last-active time in our element slots
 *   publish_dram     the same in our slot of our host's DRAM
 *   flush_counters   per-device and tier counters into the segment
 *   flush_host       the host's counters and histogram
 */

struct call_sums {               /* totals over the touched devices */
    uint64_t hits;               /* page hits */
    uint64_t hit_bytes;          /* bytes they served */
    uint64_t far_bytes;          /* bytes over the fabric */
};

static void gather_touched(fab_engine *e, struct call_sums *s) {
    s->hits = s->hit_bytes = s->far_bytes = 0;
    for (uint32_t i = 0; i < e->ntdev; i++) {
        uint32_t d = e->tdev[i];
        struct dacc *a = &e->acc[d];
        s->hits += a->c[FAB_CTR_HITS];
        s->hit_bytes += a->hit_bytes;
        s->far_bytes += a->c[FAB_CTR_FAR_BYTES];
        if (a->reads + a->writes + a->bis == 0) continue;
        const struct edev *v = &e->devs[d];
        for (uint32_t j = 0; j < v->nres; j++) {
            res_touch(e, v->res[j]);
            e->res[v->res[j]].call_bytes += a->c[FAB_CTR_FAR_BYTES];
            e->res[v->res[j]].call_wbytes += a->wbytes;
        }
    }
}

/* Our recent read/write mix through each touched element: the bytes of the
 * calls that used it, each older call weighted MIX_DECAY times less. */
static void mix_touched(fab_engine *e) {
    for (uint32_t i = 0; i < e->ntres; i++) {
        struct res *x = &e->res[e->tres[i]];
        assert(x->call_wbytes <= x->call_bytes);
        x->mix_r = x->mix_r * MIX_DECAY + (double)(x->call_bytes - x->call_wbytes);
        x->mix_w = x->mix_w * MIX_DECAY + (double)x->call_wbytes;
    }
}

static void load_touched(fab_engine *e, uint64_t now_rate, uint64_t now_act) {
    for (uint32_t i = 0; i < e->ntres; i++) {
        res_roll(e, e->tres[i], now_rate);
        res_load(e, e->tres[i], now_act);
    }
}

/* Our host's DRAM, when the call moves bytes through it (hits or far bytes):
 * close our rate window, read the others' load, our share and the rise. */
static void load_dram(fab_engine *e, const struct call_sums *s, uint64_t now_rate,
                      uint64_t now_act) {
    if (!s->hits && !s->far_bytes) return;
    res_roll(e, e->nres, now_rate);
    dram_load(e, now_act);
}

/* Hits: one local DRAM latency at its load, then the bytes stream at our
 * share of its bandwidth (load_dram ran for this call). */
static double hits_ns(const fab_engine *e, uint64_t hit_bytes) {
    return (e->cfg.local_dram_ns + e->dram_excess_ns) +
           (double)hit_bytes / e->res[e->nres].share_gbps;
}

struct dev_lat {                 /* one device's latency rounds, split for pipelining */
    double first;                /* the first round (0 when the call continues a stream) */
    double rest;                 /* the other rounds: they overlap the transfer */
};

/* Device d's latency rounds: reads and back-invalidations at the read
 * latency, writes at the write latency, window_lines lines per round, each
 * round jittered (the PRNG draws follow this order).  The rounds see the
 * load of the other hosts only: the queue our own stream builds is the
 * consequence of its bandwidth limit, which the transfer term already
 * charges (counting it twice would also make consecutive calls swing
 * between the curve's knee and idle).  The first round, the mean round plus
 * what our own load adds to the first kind's latency, is what a probe would
 * see; it is hidden when the call continues a stream. */
static struct dev_lat device_rounds_ns(fab_engine *e, uint32_t d, const struct dacc *a) {
    const struct edev *v = &e->devs[d];
    uint64_t w = v->p.window_lines ? v->p.window_lines : e->window_lines;
    uint64_t nr = ceil_div(a->reads, w), nb = ceil_div(a->bis, w), nw = ceil_div(a->writes, w);
    double lat = 0.0, own = 0.0;
    if (a->reads + a->bis) {
        double lr = loaded_latency(e, d, 0, 1);
        own = loaded_latency(e, d, 0, 0) - lr;
        if (a->reads) lat += fab_cost_rounds_ns(&v->p, &e->rng, nr, lr);
        if (a->bis) lat += fab_cost_rounds_ns(&v->p, &e->rng, nb, lr);
    }
    if (a->writes) {
        double lw = loaded_latency(e, d, 1, 1);
        if (!(a->reads + a->bis)) own = loaded_latency(e, d, 1, 0) - lw;
        lat += fab_cost_rounds_ns(&v->p, &e->rng, nw, lw);
    }
    if (e->stall_p[d] > 0.0)     /* a slow device: rare long stalls, one draw per round */
        lat += fab_cost_stalls_ns(&e->rng, nr + nb + nw, e->stall_p[d], e->stall_ns[d]);
    assert(nr + nb + nw > 0);
    struct dev_lat out;
    out.first = lat / (double)(nr + nb + nw);
    out.rest = lat - out.first;
    out.first += own;
    if (e->call_stream) out.first = 0.0;
    return out;
}

/* The bandwidth a device's bytes get: the least of our share of local DRAM and our share
 * of every element on the path (each at the mix of its traffic; the elements
 * are the path's links and the device, so the path's bottleneck is among
 * them). */
static double device_eff_gbps(const fab_engine *e, const struct edev *v) {
    double eff = e->res[e->nres].share_gbps;
    for (uint32_t j = 0; j < v->nres; j++)
        if (e->res[v->res[j]].share_gbps < eff) eff = e->res[v->res[j]].share_gbps;
    return eff;
}

/* Price each touched device: the slowest first round, the slowest remaining
 * rounds and the slowest path transfer (devices overlap), and the ns
 * attributed to the device itself (first + max(rest, its transfer)). */
static void price_devices(fab_engine *e, double *first_max, double *rest_max) {
    for (uint32_t i = 0; i < e->ntdev; i++) {
        uint32_t d = e->tdev[i];
        struct dacc *a = &e->acc[d];
        const struct edev *v = &e->devs[d];
        double mine = 0.0;
        if (a->c[FAB_CTR_HITS]) mine = hits_ns(e, a->hit_bytes);
        if (a->reads + a->writes + a->bis) {
            struct dev_lat lat = device_rounds_ns(e, d, a);
            if (lat.first > *first_max) *first_max = lat.first;
            if (lat.rest > *rest_max) *rest_max = lat.rest;
            double own = lat.rest;
            uint64_t fb = a->c[FAB_CTR_FAR_BYTES];
            if (fb) {
                double te = (double)fb / device_eff_gbps(e, v);
                if (te > own) own = te;
            }
            mine += lat.first + own;
        }
        if (!(mine < MAX_CHARGE_NS)) mine = MAX_CHARGE_NS;
        a->c[FAB_CTR_INJECTED_NS] = (uint64_t)(mine + 0.5);
    }
}

/* The transfer time: the slowest of every element's bytes at our share of it
 * and all far bytes through our share of local DRAM. */
static double transfer_ns(const fab_engine *e, uint64_t far_bytes) {
    double xfer = 0.0;
    for (uint32_t i = 0; i < e->ntres; i++) {
        const struct res *x = &e->res[e->tres[i]];
        if (!x->call_bytes) continue;
        double t = (double)x->call_bytes / x->share_gbps;
        if (t > xfer) xfer = t;
    }
    if (far_bytes) {
        double t = (double)far_bytes / e->res[e->nres].share_gbps;
        if (t > xfer) xfer = t;
    }
    return xfer;
}

/* Publish our use of each element.  The bytes join the open rate window,
 * which closes at the start of a later call: closing it here would measure
 * the access alone, not the access plus the host's think time after it. */
static void publish_use(fab_engine *e, uint64_t wall) {
    for (uint32_t i = 0; i < e->ntres; i++) {
        uint32_t r = e->tres[i];
        struct res *x = &e->res[r];
        struct fab_res_slot *s = my_slot(e, r, e->cfg.host);
        x->win_bytes += x->call_bytes;
        x->win_wbytes += x->call_wbytes;
        atomic_fetch_add_explicit(&s->bytes_total, x->call_bytes, memory_order_relaxed);
        atomic_store_explicit(&s->last_virtual_ns, e->vclock_ns + 1, memory_order_relaxed);
        atomic_store_explicit(&s->last_wall_ns, wall + 1, memory_order_relaxed);
        if (e->ls_q) fab_ls_mark_dirty(e, r);
        x->call_bytes = x->call_wbytes = 0;
        x->touched = 0;
    }
    e->ntres = 0;
}

/* Publish the bytes the call moved through our host's DRAM (load_dram's condition). */
static void publish_dram(fab_engine *e, const struct call_sums *s, uint64_t wall) {
    if (!s->hits && !s->far_bytes) return;
    struct res *x = &e->res[e->nres];
    uint64_t b = s->hit_bytes + s->far_bytes;
    x->win_bytes += b;
    struct fab_res_slot *sl = own_slot(e, e->nres);
    if (!sl) return;
    atomic_fetch_add_explicit(&sl->bytes_total, b, memory_order_relaxed);
    atomic_store_explicit(&sl->last_virtual_ns, e->vclock_ns + 1, memory_order_relaxed);
    atomic_store_explicit(&sl->last_wall_ns, wall + 1, memory_order_relaxed);
    if (e->ls_q) fab_ls_mark_dirty(e, e->nres);
}

static void add_ctr(_Atomic uint64_t *c, uint64_t n) {
    atomic_fetch_add_explicit(c, n, memory_order_relaxed);
}

/* Per-device counters and the tier counters into the segment; reset the
 * device scratch. */
static void flush_counters(fab_engine *e) {
    _Atomic uint64_t *hc = e->me->ctr;
    for (uint32_t i = 0; i < e->ntdev; i++) {
        uint32_t d = e->tdev[i];
        struct dacc *a = &e->acc[d];
        _Atomic uint64_t *c = fab_seg_dev_ctrs(e->seg, e->cfg.host, d);
        assert(c);   /* d < ndevices and host < nhosts: checked at create */
        for (uint32_t k = 0; k < FAB_NCTRS; k++)
            if (a->c[k]) add_ctr(&c[k], a->c[k]);
        uint64_t hp = a->c[FAB_CTR_HITS], fp = a->c[FAB_CTR_ACCESSES] - hp;
        uint64_t fbytes = a->c[FAB_CTR_BYTES] - a->hit_bytes;
        uint32_t ht = e->devs[d].hit_tier, ft = e->devs[d].path.tier;
        assert(ht < FAB_NTIERS && ft < FAB_NTIERS);
        if (hp) {
            add_ctr(&hc[FAB_HCTR_TIER_PAGES + ht], hp);
            add_ctr(&hc[FAB_HCTR_TIER_BYTES + ht], a->hit_bytes);
        }
        if (fp) {
            add_ctr(&hc[FAB_HCTR_TIER_PAGES + ft], fp);
            add_ctr(&hc[FAB_HCTR_TIER_BYTES + ft], fbytes);
        }
        memset(a, 0, sizeof *a);
    }
    e->ntdev = 0;
}

static void flush_host(fab_engine *e, uint64_t charge, int is_access) {
    if (is_access) {
        add_ctr(&e->me->ctr[FAB_HCTR_CALLS], 1);
        fab_hist_record(&e->me->hist, charge, 1);
    }
    add_ctr(&e->me->ctr[FAB_HCTR_INJECTED_NS], charge);
    atomic_store_explicit(&e->me->ctr[FAB_HCTR_VCLOCK_NS], e->vclock_ns, memory_order_relaxed);
}

/* Price the work counted in the scratch, publish it, flush the counters and
 * reset the scratch.  Returns the charge in ns (the formulas: top of file). */
static uint64_t settle(fab_engine *e, int is_access) {
    uint64_t wall = fab_clock_wall_ns();
    uint64_t now_act = e->cfg.mode == FAB_MODE_VIRTUAL ? e->vclock_ns : wall;
    struct call_sums sums;
    gather_touched(e, &sums);
    mix_touched(e);
    load_touched(e, rate_clock(e, wall), now_act);
    load_dram(e, &sums, rate_clock(e, wall), now_act);

    double hit_ns = sums.hits ? hits_ns(e, sums.hit_bytes) : 0.0;
    double first_max = 0.0, rest_max = 0.0;
    price_devices(e, &first_max, &rest_max);
    double xfer = transfer_ns(e, sums.far_bytes);
    double total = hit_ns + first_max + (rest_max > xfer ? rest_max : xfer);
    if (!(total < MAX_CHARGE_NS)) total = MAX_CHARGE_NS;   /* absurd bandwidths: stay defined */
    uint64_t charge = (uint64_t)(total + 0.5);
    e->vclock_ns += charge;

    publish_use(e, wall);
    publish_dram(e, &sums, wall);
    flush_counters(e);
    flush_host(e, charge, is_access);
    assert(e->ntdev == 0 && e->ntres == 0);
    return charge;
}

/* Spin mode: pay owed delay against a deadline chain, so that real time
 * between the ends of successive calls equals modelled time:
 *
 *     deadline += charge;  spin until deadline
 *
 * The host's own overhead between calls (Python, the cffi call, copying the
 * bytes) happens while the chain is ahead and is thereby subtracted.  A gap
 * longer than spin_slack_ns is host compute the model does not see: the
 * chain restarts at now minus the calibrated cost of entering the engine
 * (spin_entry_ns), so compute is not hidden under fabric delay.  Owed delay
 * below spin_quantum_ns accumulates instead of spinning, so small delays stay
 * accurate on average (the error of one call is bounded by the quantum). */
static void spin_wait(fab_engine *e, uint64_t owed) {
    uint64_t now = fab_clock_wall_ns();
    if (e->deadline_ns + e->cfg.spin_slack_ns < now) {
        uint64_t entry = (uint64_t)e->cfg.spin_entry_ns;
        e->deadline_ns = now > entry ? now - entry : now;
    }
    e->deadline_ns += owed;
    if (e->deadline_ns < now + e->cfg.spin_quantum_ns) return;
    uint64_t remain = e->deadline_ns - now;
    if (remain > SLEEP_ABOVE_NS) {
        uint64_t s = remain - SLEEP_MARGIN_NS;
        struct timespec ts = {(time_t)(s / 1000000000u), (long)(s % 1000000000u)};
        nanosleep(&ts, NULL);
    }
    /* Bounded: each clock read takes well over a nanosecond. */
    for (uint64_t i = 0; i <= remain; i++)
        if (fab_clock_wall_ns() >= e->deadline_ns) break;
}


/* ---- faults ----------------------------------------------------------------
 *
 * The segment holds the fault state (seg.c); each engine keeps a snapshot,
 * re-read when the segment's fault generation moves (one load per access
 * otherwise).  A refresh also re-derives what link degrades change in the
 * cost model, in this order (the reference model repeats it):
 *
 *   link l, factor k:  bandwidth = bw0 / k
 *                      queueing base = lat0 * k + 64 B / bandwidth
 *   path to device d:  latency += lat0_l * (k_l - 1) for each degraded link
 *                      bandwidth = min(path bandwidth, bw0_l / k_l)
 *
 * With k = 1 each value is exactly the model's (x * 1.0 and x / 1.0 are x).
 * faults_check runs only while some fault is in force: every device the
 * access touches must be up and reachable (its path's links not cut), and a
 * read must not touch a poisoned page; a write clears the poison of every
 * page it covers whole (as a full-line write does on CXL).
 */

static void faults_refresh(fab_engine *e, uint64_t g) {
    uint32_t nd = e->cfg.ndevices, nl = e->cfg.nlinks;
    uint32_t any = 0;
    for (uint32_t l = 0; l < nl; l++) {
        uint32_t st;
        double k;
        if (fab_seg_link_faults(e->seg, l, &st, &k) != 0) { st = FAB_LINK_UP; k = 1.0; }
        if (!(k >= 1.0 && k <= (double)FAB_MAX_DEGRADE)) k = 1.0;   /* never trust the segment */
        e->lstate[l] = (uint8_t)(st == FAB_LINK_CUT ? FAB_LINK_CUT : FAB_LINK_UP);
        e->lfactor[l] = k;
        any |= e->lstate[l] != FAB_LINK_UP;
        struct res *x = &e->res[l];
        x->bandwidth_gbps = e->link_bw0[l] / k;
        x->base_read_ns = x->base_write_ns =
            e->link_lat0[l] * k + QUEUE_UNIT_BYTES / x->bandwidth_gbps;
    }
    int stale = 0;
    for (uint32_t d = 0; d < nd; d++) {
        uint32_t st, np;
        double p;
        uint64_t ns;
        if (fab_seg_dev_faults(e->seg, d, &st, &p, &ns, &np) != 0) {
            st = FAB_DEV_UP;
            p = 0.0;
            ns = 0;
        }
        e->dstate[d] = (uint8_t)(st <= FAB_DEV_FAILED ? st : FAB_DEV_FAILED);
        e->stall_p[d] = (p >= 0.0 && p <= 1.0) ? p : 0.0;
        e->stall_ns[d] = (double)ns;
        int n = fab_seg_poison_copy(e->seg, d, &e->pfirst[(uint64_t)d * FAB_POISON_MAX],
                                    &e->pend_b[(uint64_t)d * FAB_POISON_MAX]);
        if (n < 0) { stale = 1; n = (int)e->npoison[d]; }   /* table busy: keep, retry later */
        e->npoison[d] = (uint32_t)n;
        any |= e->dstate[d] != FAB_DEV_UP || n > 0;
        struct edev *v = &e->devs[d];
        v->path.latency_read_ns = v->path0.latency_read_ns;
        v->path.latency_write_ns = v->path0.latency_write_ns;
        v->path.bandwidth_gbps = v->path0.bandwidth_gbps;
        for (uint32_t i = 0; i < v->path.nlinks; i++) {
            uint32_t l = v->res[i];
            double k = e->lfactor[l];
            if (k == 1.0) continue;
            double extra = e->link_lat0[l] * (k - 1.0);
            v->path.latency_read_ns += extra;
            v->path.latency_write_ns += extra;
            double b = e->link_bw0[l] / k;
            if (b < v->path.bandwidth_gbps) v->path.bandwidth_gbps = b;
        }
    }
    e->fault_any = any;
    e->fgen = stale ? g - 1 : g;   /* a busy poison table is re-read on the next access */
}

static int fault_at(fab_engine *e, int code, uint32_t dev, uint64_t link, uint64_t off) {
    e->last_fault[0] = (uint64_t)(int64_t)code;
    e->last_fault[1] = dev;
    e->last_fault[2] = link;
    e->last_fault[3] = off;
    return code;
}

/* Device d must be up and every link of this host's path to it not cut. */
static int device_fault(fab_engine *e, uint32_t d) {
    if (e->dstate[d] == FAB_DEV_FAILED) return fault_at(e, FAB_EFAILED, d, UINT64_MAX, UINT64_MAX);
    if (e->dstate[d] == FAB_DEV_UNAVAILABLE)
        return fault_at(e, FAB_EUNAVAIL, d, UINT64_MAX, UINT64_MAX);
    const struct edev *v = &e->devs[d];
    for (uint32_t i = 0; i < v->path.nlinks; i++)
        if (e->lstate[v->res[i]] == FAB_LINK_CUT)
            return fault_at(e, FAB_ELINKDOWN, d, v->res[i], UINT64_MAX);
    return 0;
}

/* Poison on the pages lo..hi of stripe st (all on the stripe's device, slot
 * i): a read fails at the first poisoned page; a write clears the poison of
 * the pages it covers whole. */
static int stripe_poison(fab_engine *e, struct region *r, uint64_t st, uint64_t lo, uint64_t hi,
                         uint64_t offset, uint64_t end, int write) {
    uint64_t ps = e->cfg.page_size_bytes, sp = r->stripe_pages;
    uint32_t i = (uint32_t)(st % r->ndevs), d = r->devs[i];
    uint32_t n = e->npoison[d];
    if (!n) return 0;
    uint64_t p0 = st * sp;                                     /* first page of the stripe */
    uint64_t base = r->dev_off[i] + (st / r->ndevs) * sp * ps; /* its device offset */
    const uint64_t *pf = &e->pfirst[(uint64_t)d * FAB_POISON_MAX];
    const uint64_t *pe = &e->pend_b[(uint64_t)d * FAB_POISON_MAX];
    if (!write) {
        uint64_t a = base + (lo - p0) * ps, b = base + (hi - p0 + 1) * ps, best = UINT64_MAX;
        for (uint32_t j = 0; j < n && j < FAB_POISON_MAX; j++) {
            if (pe[j] <= a || pf[j] >= b) continue;
            uint64_t p = pf[j] <= a ? lo : p0 + (pf[j] - base) / ps;
            if (p < best) best = p;
        }
        if (best == UINT64_MAX) return 0;
        return fault_at(e, FAB_EPOISON, d, UINT64_MAX, best * ps > offset ? best * ps : offset);
    }
    uint64_t flo = lo * ps >= offset ? lo : lo + 1;           /* pages covered whole: */
    uint64_t fend = (hi + 1) * ps <= end ? hi + 1 : hi;       /* [flo, fend) */
    if (flo >= fend) return 0;
    uint64_t a = base + (flo - p0) * ps, b = base + (fend - p0) * ps;
    for (uint32_t j = 0; j < n && j < FAB_POISON_MAX; j++) {
        if (pe[j] <= a || pf[j] >= b) continue;
        /* A full table refuses a split (FAB_ENOMEM): the page stays poisoned. */
        (void)fab_seg_poison_clear(e->seg, d, a, b - a);
        break;
    }
    return 0;
}

/* Called only while some fault is in force (e->fault_any). */
static int faults_check(fab_engine *e, struct region *r, uint64_t offset, uint64_t nbytes,
                        int write) {
    uint64_t ps = e->cfg.page_size_bytes, sp = r->stripe_pages, end = offset + nbytes;
    uint64_t first = offset / ps, last = (end - 1) / ps;
    uint64_t s0 = first / sp, s1 = last / sp;
    uint64_t nslots = s1 - s0 + 1 < r->ndevs ? s1 - s0 + 1 : r->ndevs;
    int poisoned = 0;
    for (uint64_t k = 0; k < nslots; k++) {
        uint32_t d = r->devs[(s0 + k) % r->ndevs];
        int rc = device_fault(e, d);
        if (rc) return rc;
        poisoned |= e->npoison[d] != 0;
    }
    if (!poisoned || !r->dev_off) return 0;
    for (uint64_t st = s0; st <= s1; st++) {
        uint64_t lo = st * sp > first ? st * sp : first;
        uint64_t hi = st * sp + sp - 1 < last ? st * sp + sp - 1 : last;
        int rc = stripe_poison(e, r, st, lo, hi, offset, end, write);
        if (rc) return rc;
    }
    return 0;
}

int fab_engine_region_place(fab_engine *e, uint64_t id, const uint64_t *dev_offsets, uint32_t n) {
    if (!e || !dev_offsets) return FAB_EINVAL;
    struct region *r = region_find(e, id);
    if (!r) return FAB_ENOENT;
    if (n != r->ndevs) return FAB_EINVAL;
    uint64_t span = (uint64_t)r->stripe_pages * e->cfg.page_size_bytes *
                    ((uint64_t)r->npages / r->stripe_pages + 1);
    for (uint32_t i = 0; i < n; i++)
        if (dev_offsets[i] > UINT64_MAX - span) return FAB_ERANGE;   /* offsets stay defined */
    if (!r->dev_off) {
        r->dev_off = malloc(n * sizeof *r->dev_off);
        if (!r->dev_off) return FAB_ENOMEM;
    }
    memcpy(r->dev_off, dev_offsets, n * sizeof *r->dev_off);
    return 0;
}

int fab_engine_last_fault(const fab_engine *e, uint64_t *out, uint32_t n) {
    if (!e || !out || n < 4) return FAB_EINVAL;
    memcpy(out, e->last_fault, sizeof e->last_fault);
    return 0;
}


/* ---- the access path ------------------------------------------------------
 *
 * fab_engine_access() checks the range, then count_pages() walks its pages
 * once.  Each page ends in exactly one outcome helper, which only counts into
 * the device's scratch (and moves page-cache / version state):
 *
 *   far_direct      not cached (direct policy, or promote not yet due)
 *   page_hit        resident and current (hit_stale_slow: another host wrote)
 *   page_miss       fetched into the cache, maybe evicting (on_evict)
 * and on_write_cached adds a write's effects to a cached page.
 */

/* Page p of region r entered or left the cache. */
static void resident_add(struct region *r, uint64_t p) {
    assert(p < r->npages && !(r->rbits[p / 64] >> (p % 64) & 1));
    r->rbits[p / 64] |= UINT64_C(1) << (p % 64);
    r->resident++;
    assert(r->resident <= r->npages);
}

static void resident_drop(struct region *r, uint64_t p) {
    assert(r->resident > 0 && r->pinned <= r->resident);
    assert(p < r->npages && (r->rbits[p / 64] >> (p % 64) & 1));
    r->rbits[p / 64] &= ~(UINT64_C(1) << (p % 64));
    r->resident--;
}

/* ---- deferred CLOCK reference bits ----------------------------------------
 *
 * A summary read (below) does not visit its pages' frames, so it cannot set
 * their CLOCK reference bits.  It records the pages instead, in the region's
 * dref bitmap (one word per 64 pages; dref_lo..dref_hi bounds the words in
 * use), and the region's id in the engine's pend list.  The bits matter only
 * to the CLOCK scan, which runs only when an insertion finds every frame in
 * use: page_miss sets all deferred bits just before such an insertion
 * (refs_apply_all), so the scan sees exactly the bits per-page hits would
 * have set.  Deferred pages stay resident until then: only an eviction
 * (after the bits are applied) or unregistering the region (which drops its
 * bitmap) removes them.
 */

/* Set bits [lo, hi) (lo < hi) of the bitmap w. */
static void bits_set_range(uint64_t *w, uint64_t lo, uint64_t hi) {
    uint64_t wl = lo / 64, wh = (hi - 1) / 64;
    uint64_t m_lo = ~UINT64_C(0) << (lo % 64), m_hi = ~UINT64_C(0) >> (63 - (hi - 1) % 64);
    if (wl == wh) { w[wl] |= m_lo & m_hi; return; }
    w[wl] |= m_lo;
    for (uint64_t k = wl + 1; k < wh; k++) w[k] = ~UINT64_C(0);
    w[wh] |= m_hi;
}

static void refs_apply(fab_engine *e, struct region *r) {
    for (uint64_t w = r->dref_lo; w < r->dref_hi; w++) {
        uint64_t bits = r->dref[w];
        while (bits) {
            uint64_t p = w * 64 + (uint64_t)__builtin_ctzll(bits);
            uint32_t f;
            int rc = fab_pcache_find(e->pc, (r->id << 32) | p, &f);
            assert(rc == 0);   /* deferred pages stay resident */
            if (rc == 0) fab_pcache_page(e->pc, f)->flags |= FAB_PAGE_REF;
            bits &= bits - 1;
        }
        r->dref[w] = 0;
    }
    r->dref_lo = r->dref_hi = 0;
}

static void refs_apply_all(fab_engine *e) {
    for (uint32_t i = 0; i < e->npend; i++) {
        struct region *r = region_find(e, e->pend[i]);
        assert(r && r->ref_pending);
        if (!r) continue;
        refs_apply(e, r);
        r->ref_pending = 0;
    }
    e->npend = 0;
}

/* Defer the reference bits of pages [lo, hi) of r: O(words), no frame. */
static void refs_defer(fab_engine *e, struct region *r, uint64_t lo, uint64_t hi) {
    assert(r->dref && lo < hi && hi <= r->npages);
    uint32_t wl = (uint32_t)(lo / 64), wh = (uint32_t)((hi - 1) / 64) + 1;
    if (!r->ref_pending) {
        assert(e->npend < e->cfg.max_regions);
        e->pend[e->npend++] = (uint32_t)r->id;
        r->ref_pending = 1;
        r->dref_lo = wl;
        r->dref_hi = wh;
    } else {
        if (wl < r->dref_lo) r->dref_lo = wl;
        if (wh > r->dref_hi) r->dref_hi = wh;
    }
    bits_set_range(r->dref, lo, hi);
}

/* Unregistering r: its frames go away, and with them its deferred bits. */
static void refs_forget(fab_engine *e, struct region *r) {
    if (!r->ref_pending) return;
    for (uint32_t i = 0; i < e->npend; i++)
        if (e->pend[i] == (uint32_t)r->id) { e->pend[i] = e->pend[--e->npend]; break; }
    for (uint64_t w = r->dref_lo; w < r->dref_hi; w++) r->dref[w] = 0;
    r->ref_pending = 0;
    r->dref_lo = r->dref_hi = 0;
}

static void on_write_cached(fab_engine *e, struct region *r, uint64_t p, fab_page *pg,
                            struct dacc *a) {
    pg->flags |= FAB_PAGE_DIRTY;
    if (!r->versions) { pg->version++; return; }
    pg->version = atomic_fetch_add_explicit(version_at(r, p), 1, memory_order_relaxed) + 1;
    r->cver[p] = pg->version;
    if (r->share == FAB_SHARE_COHERENT) {
        uint32_t others = atomic_exchange_explicit(holders_at(r, p), e->host_bit,
                                                   memory_order_relaxed) & ~e->host_bit;
        if (others) { a->bis++; a->c[FAB_CTR_BACK_INVALIDATIONS]++; }
    }
}

/* A page of region r (the region of this call) made room: the victim may
 * belong to any region; a dirty one is written back to its device. */
static void on_evict(fab_engine *e, struct region *r, const fab_page *victim) {
    uint64_t vid = victim->key >> 32;
    struct region *vr = vid == r->id ? r : region_find(e, vid);
    assert(vr);   /* every cached page belongs to a registered region */
    if (vr) resident_drop(vr, victim->key & UINT32_MAX);
    struct dacc *v = acc_of(e, victim->dev);
    v->c[FAB_CTR_EVICTIONS]++;
    if (victim->flags & FAB_PAGE_DIRTY) {
        v->c[FAB_CTR_WRITEBACKS]++;
        v->writes += lines_of(e->cfg.page_size_bytes);
        v->wbytes += e->cfg.page_size_bytes;
        v->c[FAB_CTR_FAR_BYTES] += e->cfg.page_size_bytes;
    }
}

static void far_direct(fab_engine *e, struct region *r, uint64_t p, uint64_t b, int write,
                       struct dacc *a) {
    a->c[FAB_CTR_MISSES]++;
    a->c[FAB_CTR_FAR_BYTES] += b;
    if (!write) { a->reads += lines_of(b); return; }
    a->writes += lines_of(b);
    a->wbytes += b;
    if (!r->versions) return;
    atomic_fetch_add_explicit(version_at(r, p), 1, memory_order_relaxed);
    if (r->share == FAB_SHARE_COHERENT) {
        uint32_t others = atomic_exchange_explicit(holders_at(r, p), 0, memory_order_relaxed) &
                          ~e->host_bit;
        if (others) { a->bis++; a->c[FAB_CTR_BACK_INVALIDATIONS]++; }
    }
}

/* Rare path: our cached copy is stale (another host wrote the page since we
 * fetched it): an invalidation, refetched as a miss into the same frame. */
static void hit_stale_slow(fab_engine *e, struct region *r, uint64_t p, fab_page *pg,
                           uint32_t cur, struct dacc *a) {
    a->c[FAB_CTR_INVALIDATIONS]++;
    a->c[FAB_CTR_MISSES]++;
    a->reads += lines_of(e->cfg.page_size_bytes);
    a->c[FAB_CTR_FAR_BYTES] += e->cfg.page_size_bytes;
    pg->version = cur;
    r->cver[p] = cur;
    if (r->share == FAB_SHARE_COHERENT)
        atomic_fetch_or_explicit(holders_at(r, p), e->host_bit, memory_order_relaxed);
}

/* A resident page (frame f): a hit, unless a shared region's copy is stale. */
static void page_hit(fab_engine *e, struct region *r, uint64_t p, uint64_t b, int write,
                     uint32_t f, struct dacc *a) {
    fab_page *pg = fab_pcache_page(e->pc, f);
    uint32_t cur;
    if (r->versions &&
        pg->version != (cur = atomic_load_explicit(version_at(r, p), memory_order_relaxed))) {
        hit_stale_slow(e, r, p, pg, cur, a);
    } else {
        a->c[FAB_CTR_HITS]++;
        a->hit_bytes += b;
    }
    if (write) on_write_cached(e, r, p, pg, a);
}

/* Promote policy: has page key been touched often enough to be cached? */
static int promote_due(fab_engine *e, struct region *r, uint64_t key) {
    r->touched = 1;
    if (fab_touch_bump(e->touch, key) < r->promote_after) return 0;
    fab_touch_forget(e->touch, key);
    return 1;
}

/* A page not resident: fetch it whole into the cache (write-allocate), or,
 * for a promote page not yet due, go direct. */
static void page_miss(fab_engine *e, struct region *r, uint64_t p, uint64_t b, int write,
                      uint32_t dev, struct dacc *a) {
    uint64_t key = (r->id << 32) | p;
    if (r->policy == FAB_POLICY_PROMOTE) {
        if (!promote_due(e, r, key)) { far_direct(e, r, p, b, write, a); return; }
        a->c[FAB_CTR_PROMOTIONS]++;
    }
    a->c[FAB_CTR_MISSES]++;
    a->reads += lines_of(e->cfg.page_size_bytes);
    a->c[FAB_CTR_FAR_BYTES] += e->cfg.page_size_bytes;
    uint32_t version = r->versions
        ? atomic_load_explicit(version_at(r, p), memory_order_relaxed) : 0;
    fab_page victim;
    uint32_t f;
    if (e->npend && fab_pcache_used(e->pc) == fab_pcache_capacity(e->pc))
        refs_apply_all(e);   /* the CLOCK scan must see every deferred reference bit */
    int rc = fab_pcache_insert(e->pc, key, (uint16_t)dev, version, &f, &victim);
    if (rc == 1) on_evict(e, r, &victim);
    assert(rc >= 0);      /* room was checked before the page pass */
    if (rc < 0) return;
    resident_add(r, p);
    if (r->cver) r->cver[p] = version;
    if (r->share == FAB_SHARE_COHERENT)
        atomic_fetch_or_explicit(holders_at(r, p), e->host_bit, memory_order_relaxed);
    if (write) on_write_cached(e, r, p, fab_pcache_page(e->pc, f), a);
}

/* Rare path: every frame is pinned; refuse (changing nothing) if the call
 * would need to cache a page. */
static int check_room_slow(fab_engine *e, const struct region *r, uint64_t first, uint64_t last) {
    for (uint64_t p = first; p <= last; p++) {
        uint32_t f;
        if (fab_pcache_find(e->pc, (r->id << 32) | p, &f) != 0) return FAB_EBUSY;
    }
    return 0;
}

/* The page pass of one access: pages first..last of [offset, offset+nbytes),
 * page p on devs[(p / stripe_pages) % ndevs] (walked incrementally). */
static void count_pages(fab_engine *e, struct region *r, uint64_t offset, uint64_t nbytes,
                        int write, int caches) {
    uint64_t ps = e->cfg.page_size_bytes, end = offset + nbytes;
    uint64_t first = offset / ps, last = (end - 1) / ps;
    assert(last < r->npages);
    uint32_t in = (uint32_t)(first % r->stripe_pages);
    uint32_t di = (uint32_t)((first / r->stripe_pages) % r->ndevs);
    for (uint64_t p = first; p <= last; p++) {
        uint64_t lo = p * ps > offset ? p * ps : offset;
        uint64_t hi = (p + 1) * ps < end ? (p + 1) * ps : end;
        uint64_t b = hi - lo;
        uint32_t dev = r->devs[di];
        if (++in == r->stripe_pages) { in = 0; if (++di == r->ndevs) di = 0; }
        struct dacc *a = acc_of(e, dev);
        a->c[FAB_CTR_ACCESSES]++;
        a->c[FAB_CTR_BYTES] += b;
        uint32_t f;
        if (!caches) far_direct(e, r, p, b, write, a);
        else if (fab_pcache_lookup(e->pc, (r->id << 32) | p, &f) == 0)
            page_hit(e, r, p, b, write, f, a);
        else
            page_miss(e, r, p, b, write, dev, a);
    }
}

/* Price what the scratch holds, advance the clocks, and wait in spin mode. */
static uint64_t charge_call(fab_engine *e, int is_access) {
    uint64_t charge = settle(e, is_access);
    if (e->cfg.mode == FAB_MODE_SPIN) spin_wait(e, charge);
    return charge;
}

/* ---- summary reads ---------------------------------------------------------
 *
 * A read of a range whose every page is resident (O(1) when the whole region
 * is, else one word of the region's bitmap per 64 pages) and, for a shared or
 * coherent region, whose cached versions all equal the published ones (a
 * compare of 4 bytes per page) is a hit on every page: nothing moves in the
 * cache but the CLOCK reference bits (deferred, above) or, under LRU, the list
 * order (so LRU keeps the page pass).  Such a read is counted from the stripe
 * layout, O(devices): no page's frame or index slot is visited.  The counts,
 * the first-touch order of the devices and so the charge are exactly those
 * of the page pass (the reference model has only the page pass, and the
 * differential tests hold both to the same results).
 */

/* Pages p < n with (p / stripe) % ndevs == slot. */
static uint64_t pages_on_slot(uint64_t n, uint64_t stripe, uint64_t cycle, uint64_t slot) {
    uint64_t in = n % cycle, lo = slot * stripe;
    uint64_t part = in > lo ? in - lo : 0;
    return (n / cycle) * stripe + (part < stripe ? part : stripe);
}

/* The shared versions of pages first..last still equal our copies'.  A plain
 * compare of the two tables: another process may bump a version meanwhile,
 * which is the same race a page-by-page load has (the copy then counts as
 * current for this read). */
static int versions_current(const struct region *r, uint64_t first, uint64_t last) {
    if (!r->versions) return 1;
    assert(last < r->npages && r->cver);
    return memcmp(r->cver + first, (const void *)(r->versions + first),
                  (last - first + 1) * sizeof *r->cver) == 0;
}

/* Every page of first..last is resident: O(1) when the whole region is, else
 * one bitmap word per 64 pages (no frame visited). */
static int range_resident(const struct region *r, uint64_t first, uint64_t last) {
    assert(first <= last && last < r->npages);
    if (r->resident == r->npages) return 1;
    if (r->resident < last - first + 1) return 0;
    uint64_t wf = first / 64, wl = last / 64;
    uint64_t lo_mask = ~UINT64_C(0) << (first % 64);
    uint64_t hi_mask = ~UINT64_C(0) >> (63 - last % 64);
    if (wf == wl) return (r->rbits[wf] & lo_mask & hi_mask) == (lo_mask & hi_mask);
    if ((r->rbits[wf] & lo_mask) != lo_mask || (r->rbits[wl] & hi_mask) != hi_mask) return 0;
    for (uint64_t w = wf + 1; w < wl; w++)
        if (r->rbits[w] != ~UINT64_C(0)) return 0;
    return 1;
}

static void count_resident_reads(fab_engine *e, struct region *r, uint64_t offset,
                                 uint64_t nbytes) {
    uint64_t ps = e->cfg.page_size_bytes, end = offset + nbytes;
    uint64_t first = offset / ps, last = (end - 1) / ps;
    uint64_t stripe = r->stripe_pages, cycle = stripe * r->ndevs;
    uint32_t s0 = (uint32_t)((first / stripe) % r->ndevs);
    uint32_t slast = (uint32_t)((last / stripe) % r->ndevs);
    assert(range_resident(r, first, last));
    uint32_t s = s0;
    for (uint32_t k = 0; k < r->ndevs; k++) {   /* first-touch order: s0, s0 + 1, ... */
        uint64_t n = pages_on_slot(last + 1, stripe, cycle, s) -
                     pages_on_slot(first, stripe, cycle, s);
        if (n) {
            uint64_t b = n * ps;
            if (s == s0) b -= offset - first * ps;
            if (s == slast) b -= (last + 1) * ps - end;
            struct dacc *a = acc_of(e, r->devs[s]);
            a->c[FAB_CTR_ACCESSES] += n;
            a->c[FAB_CTR_BYTES] += b;
            a->c[FAB_CTR_HITS] += n;
            a->hit_bytes += b;
        }
        if (++s == r->ndevs) s = 0;
    }
    if (e->cfg.eviction == FAB_EVICT_CLOCK) refs_defer(e, r, first, last + 1);
}

/* Sequential streams: an access that starts where the previous one on the
 * same region ended continues its stream (a prefetcher has the next lines in
 * flight), so its first latency round is hidden (device_rounds_ns). */
static void stream_step(fab_engine *e, struct region *r, uint64_t offset, uint64_t nbytes) {
    e->call_stream = r->stream_next == offset + 1;
    r->stream_next = offset + nbytes + 1;
}

static int64_t access_priced(fab_engine *e, struct region *r, uint64_t offset, uint64_t nbytes,
                             int write);

int64_t fab_engine_access(fab_engine *e, uint64_t region_id, uint64_t offset, uint64_t nbytes,
                          int write) {
    if (!e) return FAB_EINVAL;
    struct region *r = region_find(e, region_id);
    if (!r) return FAB_ENOENT;
    uint64_t ps = e->cfg.page_size_bytes, size = (uint64_t)r->npages * ps;
    if (offset > size || nbytes > size - offset) return FAB_ERANGE;
    if (nbytes == 0) return 0;
    uint64_t t0 = e->vclock_ns;
    if (e->ls_joined) {
        if (e->ls_parked) return FAB_EINVAL;
        int rc = fab_ls_wait(e, t0);
        if (rc) return rc;
    }
    int64_t out = access_priced(e, r, offset, nbytes, write);
    if (e->ls_joined && out >= 0) fab_ls_moved(e, t0);
    return out;
}

/* The access after its checks (and, under lockstep, its wait). */
static int64_t access_priced(fab_engine *e, struct region *r, uint64_t offset, uint64_t nbytes,
                             int write) {
    uint64_t ps = e->cfg.page_size_bytes;
    uint64_t g = atomic_load_explicit(e->fgen_word, memory_order_acquire);
    if (g != e->fgen) faults_refresh(e, g);
    if (e->fault_any) {
        int rc = faults_check(e, r, offset, nbytes, write);
        if (rc) return rc;
    }
    int caches = r->policy != FAB_POLICY_DIRECT && fab_pcache_capacity(e->pc) > 0;
    if (caches && !write && e->cfg.eviction != FAB_EVICT_LRU && !e->cfg.page_pass_only &&
        range_resident(r, offset / ps, (offset + nbytes - 1) / ps) &&
        versions_current(r, offset / ps, (offset + nbytes - 1) / ps)) {
        stream_step(e, r, offset, nbytes);
        count_resident_reads(e, r, offset, nbytes);
        return (int64_t)charge_call(e, 1);
    }
    if (caches && fab_pcache_pinned_frames(e->pc) == fab_pcache_capacity(e->pc)) {
        int rc = check_room_slow(e, r, offset / ps, (offset + nbytes - 1) / ps);
        if (rc) return rc;
    }
    stream_step(e, r, offset, nbytes);
    count_pages(e, r, offset, nbytes, write, caches);
    return (int64_t)charge_call(e, 1);
}

/* ---- unregistering ----------------------------------------------------------
 *
 * Dropping a region's pages costs O(its resident pages), not O(the cache):
 * nothing to do when none is resident; otherwise walk its pages by key
 * (hash lookups, stopping once all resident ones are gone) when the region is
 * small against the cache, else scan the frames (drop_by_frame_slow).  Dirty
 * pages are written back, charged like evictions.  Either walk may meet the
 * devices in a different order, so the touched devices are then put in
 * ascending index order: the jitter draws of settle() follow that order, and
 * the reference model sorts the same way.
 */

/* Lookups cost a few times a sequential frame visit: walk by key only while
 * the region is under a quarter of the cache's frames. */
#define WALK_BY_KEY_FACTOR 4u

static void drop_page(fab_engine *e, struct region *r, uint64_t key) {
    fab_page old;
    if (fab_pcache_remove(e->pc, key, &old) != 0) return;
    resident_drop(r, key & UINT32_MAX);
    if (old.flags & FAB_PAGE_DIRTY) {
        struct dacc *a = acc_of(e, old.dev);
        a->c[FAB_CTR_WRITEBACKS]++;
        a->writes += lines_of(e->cfg.page_size_bytes);
        a->wbytes += e->cfg.page_size_bytes;
        a->c[FAB_CTR_FAR_BYTES] += e->cfg.page_size_bytes;
    }
}

static void drop_by_key(fab_engine *e, struct region *r) {
    for (uint64_t p = 0; p < r->npages && r->resident; p++) drop_page(e, r, (r->id << 32) | p);
}

/* Rare path: a region as large as a quarter of the cache or more. */
static void drop_by_frame_slow(fab_engine *e, struct region *r) {
    uint32_t cap = fab_pcache_capacity(e->pc);
    for (uint32_t f = 0; f < cap && r->resident; f++) {
        const fab_page *pg = fab_pcache_page(e->pc, f);
        if ((pg->flags & FAB_PAGE_VALID) && (pg->key >> 32) == r->id) drop_page(e, r, pg->key);
    }
}

/* Put the touched devices in ascending index order (insertion sort; at most
 * ndevs of the region, <= FAB_REGION_MAX_DEVICES entries). */
static void sort_touched_devices(fab_engine *e) {
    for (uint32_t i = 1; i < e->ntdev; i++) {
        uint32_t d = e->tdev[i], j = i;
        for (; j > 0 && e->tdev[j - 1] > d; j--) e->tdev[j] = e->tdev[j - 1];
        e->tdev[j] = d;
    }
}

/* Forget the region's touch counts, so a later region with the same id
 * starts afresh: by key when that is fewer steps than the whole table. */
static void forget_touches(fab_engine *e, struct region *r) {
    if (!r->touched) return;
    if (r->npages < fab_touch_entries(e->touch))
        for (uint64_t p = 0; p < r->npages; p++) fab_touch_forget(e->touch, (r->id << 32) | p);
    else
        fab_touch_forget_prefix(e->touch, r->id);
}

int64_t fab_engine_region_remove(fab_engine *e, uint64_t id) {
    if (!e) return FAB_EINVAL;
    struct region *r = region_find(e, id);
    if (!r) return FAB_ENOENT;
    if (r->pinned) return FAB_EBUSY;
    assert(e->ntdev == 0);   /* the scratch is empty between calls */
    uint64_t t0 = e->vclock_ns;
    if (e->ls_joined && !e->ls_parked) {
        /* Unregistering prices write-backs: a move like an access.  A failed
         * wait still unregisters (never leave a region half gone), unpriced
         * against the others' snapshots at worst. */
        (void)fab_ls_wait(e, t0);
    }
    if (r->resident) {
        if ((uint64_t)r->npages * WALK_BY_KEY_FACTOR <= fab_pcache_capacity(e->pc))
            drop_by_key(e, r);
        else
            drop_by_frame_slow(e, r);
        sort_touched_devices(e);
    }
    assert(r->resident == 0);
    refs_forget(e, r);
    forget_touches(e, r);
    e->call_stream = 0;
    uint64_t charge = charge_call(e, 0);
    if (e->ls_joined && !e->ls_parked) fab_ls_moved(e, t0);
    region_release(r);
    region_slot_delete(e, (uint32_t)(r - e->regions));
    e->nregions--;
    return (int64_t)charge;
}

int64_t fab_engine_advance(fab_engine *e, uint64_t ns) {
    if (!e) return FAB_EINVAL;
    uint64_t t0 = e->vclock_ns;
    if (e->ls_joined) {
        if (e->ls_parked) return FAB_EINVAL;
        int rc = fab_ls_wait(e, t0);
        if (rc) return rc;
    }
    e->vclock_ns += ns;
    atomic_store_explicit(&e->me->ctr[FAB_HCTR_VCLOCK_NS], e->vclock_ns, memory_order_relaxed);
    if (e->ls_joined) fab_ls_moved(e, t0);
    if (e->cfg.mode == FAB_MODE_SPIN) spin_wait(e, ns);
    return 0;
}

uint64_t fab_engine_virtual_time(const fab_engine *e) { return e ? e->vclock_ns : 0; }

/* Pin (delta > 0) or unpin every page of [first, first + npages): all must be
 * resident and stay within 0..UINT32_MAX pins, or nothing changes.  Keeps the
 * region's count of pinned pages, which lets unregistering refuse in O(1). */
int fab_engine_pin(fab_engine *e, uint64_t id, uint64_t first, uint64_t npages, int32_t delta) {
    if (!e) return FAB_EINVAL;
    struct region *r = region_find(e, id);
    if (!r) return FAB_ENOENT;
    if (first > r->npages || npages > r->npages - first) return FAB_ERANGE;
    for (uint64_t p = first; p < first + npages; p++) {
        uint32_t f;
        if (fab_pcache_find(e->pc, (id << 32) | p, &f) != 0) return FAB_ENOENT;
        int64_t pins = (int64_t)fab_pcache_page(e->pc, f)->pins + delta;
        if (pins < 0 || pins > UINT32_MAX) return FAB_EINVAL;
    }
    for (uint64_t p = first; p < first + npages; p++) {
        uint32_t f;
        fab_pcache_find(e->pc, (id << 32) | p, &f);
        const fab_page *pg = fab_pcache_page(e->pc, f);
        int was = pg->pins > 0;
        fab_pcache_pin(e->pc, (id << 32) | p, delta);
        int now = pg->pins > 0;
        if (now && !was) r->pinned++;
        if (was && !now) r->pinned--;
        assert(r->pinned <= r->resident);
    }
    return 0;
}

int fab_engine_set_frame(fab_engine *e, uint64_t id, uint64_t page, void *frame) {
    if (!e) return FAB_EINVAL;
    struct region *r = region_find(e, id);
    if (!r) return FAB_ENOENT;
    if (page >= r->npages) return FAB_ERANGE;
    return fab_pcache_set_frame(e->pc, (id << 32) | page, frame);
}

/* out: resident, dirty, version, pins. */
int fab_engine_page_state(const fab_engine *e, uint64_t id, uint64_t page, uint32_t *out,
                          uint32_t n) {
    if (!e || !out || n < 4) return FAB_EINVAL;
    struct region *r = region_find(e, id);
    if (!r) return FAB_ENOENT;
    if (page >= r->npages) return FAB_ERANGE;
    memset(out, 0, 4 * sizeof *out);
    uint32_t f;
    if (fab_pcache_find(e->pc, (id << 32) | page, &f) != 0) return 0;
    fab_page pg;
    fab_pcache_get(e->pc, f, &pg);
    out[0] = 1;
    out[1] = (pg.flags & FAB_PAGE_DIRTY) != 0;
    out[2] = pg.version;
    out[3] = pg.pins;
    return 0;
}

/* out: capacity, used, pinned frames, regions. */
int fab_engine_cache_info(const fab_engine *e, uint32_t *out, uint32_t n) {
    if (!e || !out || n < 4) return FAB_EINVAL;
    uint32_t info[4];
    fab_pcache_info(e->pc, info, 4);
    out[0] = info[0];
    out[1] = info[1];
    out[2] = info[2];
    out[3] = e->nregions;
    return 0;
}

/* The per-region summaries: the resident bitmap holds exactly `resident`
 * bits, none past npages (with the caller's per-frame test, exactly the
 * resident pages); a shared region has its version mirror (checked against
 * the frames by the caller), a private one none.  The deferred reference
 * bits: a bitmap exactly under CLOCK; set bits only on resident pages and
 * within [dref_lo, dref_hi); a region is pending iff it has one, and the pend
 * list names exactly the pending regions, once each. */
static int check_summaries(fab_engine *e) {
    int clock = e->cfg.eviction == FAB_EVICT_CLOCK;
    if (e->npend > e->cfg.max_regions || (e->npend && !clock)) return FAB_ECORRUPT;
    uint32_t npending = 0;
    for (uint32_t i = 0; i < e->nregion_slots; i++) {
        struct region *r = &e->regions[i];
        if (!r->used) continue;
        r->check_pend = 0;
        if ((r->cver != NULL) != (r->versions != NULL) || !r->rbits ||
            (r->dref != NULL) != clock || r->ref_pending > 1)
            return FAB_ECORRUPT;
        uint64_t nbits = 0, ndref = 0, nwords = ((uint64_t)r->npages + 63) / 64;
        for (uint64_t w = 0; w < nwords; w++) {
            nbits += (uint64_t)__builtin_popcountll(r->rbits[w]);
            if (!r->dref) continue;
            if (r->dref[w] & ~r->rbits[w]) return FAB_ECORRUPT;   /* deferred => resident */
            if (r->dref[w] && (w < r->dref_lo || w >= r->dref_hi)) return FAB_ECORRUPT;
            ndref += r->dref[w] != 0;
        }
        if (r->npages % 64 && r->rbits[nwords - 1] >> (r->npages % 64)) return FAB_ECORRUPT;
        if (nbits != r->resident) return FAB_ECORRUPT;
        if ((ndref != 0) != (r->ref_pending != 0)) return FAB_ECORRUPT;
        if (!r->ref_pending && (r->dref_lo || r->dref_hi)) return FAB_ECORRUPT;
        if (r->ref_pending && (r->dref_lo >= r->dref_hi || r->dref_hi > nwords))
            return FAB_ECORRUPT;
        npending += r->ref_pending;
    }
    if (npending != e->npend) return FAB_ECORRUPT;
    for (uint32_t i = 0; i < e->npend; i++) {   /* distinct pending regions, so all of them */
        struct region *r = region_find(e, e->pend[i]);
        if (!r || !r->ref_pending || r->check_pend) return FAB_ECORRUPT;
        r->check_pend = 1;
    }
    return 0;
}

/* Consistency walker for tests and debugging: the page cache's own checks
 * (fab_pcache_check), then the engine's bookkeeping on top of it: every
 * cached page belongs to a registered region, each region's resident and
 * pinned counts match its frames, the region table holds nregions findable
 * entries, and the per-call scratch is empty.  O(capacity + region slots);
 * never on the access path.  Returns 0, FAB_EINVAL or FAB_ECORRUPT. */
/* fab_engine_check's part for the host DRAM: a claimed slot still names our
 * token, its element's scratch is clean between calls, its rate is sane. */
static int check_dram(fab_engine *e) {
    if (!e->dram_blk) return FAB_ECORRUPT;
    if (e->dram_slot > FAB_DRAM_SLOTS) return FAB_ECORRUPT;
    if (e->dram_slot < FAB_DRAM_SLOTS &&
        atomic_load_explicit(&e->dram_blk->owner[e->dram_slot], memory_order_acquire) !=
            e->dram_token)
        return FAB_ECORRUPT;
    const struct res *x = &e->res[e->nres];
    if (x->touched || x->call_bytes || x->call_wbytes || !(x->my_rate >= 0.0) ||
        x->bandwidth_gbps != e->cfg.local_bandwidth_gbps)
        return FAB_ECORRUPT;
    return 0;
}

int fab_engine_check(fab_engine *e) {
    if (!e) return FAB_EINVAL;
    int rc = fab_pcache_check(e->pc);
    if (rc) return rc;
    if (e->ntdev || e->ntres) return FAB_ECORRUPT;
    uint32_t nused = 0;
    for (uint32_t i = 0; i < e->nregion_slots; i++) {
        struct region *r = &e->regions[i];
        if (!r->used) continue;
        if (region_find(e, r->id) != r || r->resident > r->npages || r->pinned > r->resident)
            return FAB_ECORRUPT;
        r->check_resident = r->check_pinned = 0;
        nused++;
    }
    if (nused != e->nregions || nused > e->cfg.max_regions) return FAB_ECORRUPT;
    uint32_t cap = fab_pcache_capacity(e->pc);
    for (uint32_t f = 0; f < cap; f++) {
        const fab_page *pg = fab_pcache_page(e->pc, f);
        if (!(pg->flags & FAB_PAGE_VALID)) continue;
        struct region *r = region_find(e, pg->key >> 32);
        if (!r || (pg->key & UINT32_MAX) >= r->npages) return FAB_ECORRUPT;
        uint64_t p = pg->key & UINT32_MAX;
        if (r->cver && r->cver[p] != pg->version) return FAB_ECORRUPT;
        if (!(r->rbits[p / 64] >> (p % 64) & 1)) return FAB_ECORRUPT;
        r->check_resident++;
        if (pg->pins) r->check_pinned++;
    }
    for (uint32_t i = 0; i < e->nregion_slots; i++) {
        struct region *r = &e->regions[i];
        if (r->used && (r->check_resident != r->resident || r->check_pinned != r->pinned)) return FAB_ECORRUPT;
    }
    rc = check_summaries(e);
    if (!rc) rc = check_dram(e);
    return rc ? rc : fab_ls_check(e);
}

const fab_seg *fab_engine_segment(const fab_engine *e) { return e ? e->seg : NULL; }

/* Current state of this host's DRAM: the latency a hit pays at the load now
 * (the others' published rates and our own), our share, our slot. */
int fab_engine_dram_state(fab_engine *e, double *latency_ns, double *share_gbps, uint32_t *slot) {
    if (!e || !latency_ns || !share_gbps || !slot) return FAB_EINVAL;
    uint64_t wall = fab_clock_wall_ns();
    dram_load(e, e->cfg.mode == FAB_MODE_VIRTUAL ? e->vclock_ns : wall);
    *latency_ns = e->cfg.local_dram_ns + e->dram_excess_ns;
    *share_gbps = e->res[e->nres].share_gbps;
    *slot = e->dram_slot;
    return 0;
}

/* Current loaded latency (no jitter) of a read or write to device dev. */
int fab_engine_loaded_latency(fab_engine *e, uint32_t dev, int write, double *latency_ns) {
    if (!e || !latency_ns) return FAB_EINVAL;
    if (dev >= e->cfg.ndevices) return FAB_ERANGE;
    uint64_t g = atomic_load_explicit(e->fgen_word, memory_order_acquire);
    if (g != e->fgen) faults_refresh(e, g);   /* a degraded link changes it live */
    uint64_t wall = fab_clock_wall_ns();
    uint64_t now_act = e->cfg.mode == FAB_MODE_VIRTUAL ? e->vclock_ns : wall;
    const struct edev *v = &e->devs[dev];
    for (uint32_t i = 0; i < v->nres; i++) res_load(e, v->res[i], now_act);
    *latency_ns = loaded_latency(e, dev, write, 0);
    return 0;
}

/* ---- create / destroy -------------------------------------------------- */

static int check_config(const fab_engine_config *c, const fab_engine_model *m) {
    if (c->page_size_bytes < 64 || (c->page_size_bytes & (c->page_size_bytes - 1)) ||
        c->nhosts == 0 || c->nhosts > FAB_MAX_HOSTS || c->ndevices == 0 ||
        c->ndevices > FAB_MAX_DEVICES || c->nlinks > FAB_MAX_LINKS || c->host >= c->nhosts ||
        c->mode > FAB_MODE_SPIN || c->eviction > FAB_EVICT_FIFO || c->mlp_lines == 0 ||
        c->mlp_lines > (1u << 20) || c->threads == 0 || c->threads > (1u << 20) ||
        c->cache_pages > (UINT32_MAX >> 2) || c->max_regions == 0 ||
        c->max_regions > (1u << 24) || !(c->local_dram_ns >= 0.0) ||
        !(c->local_bandwidth_gbps > 0.0) || !(c->queue_max_factor >= 1.0) ||
        c->rate_window_ns == 0 || !(c->spin_entry_ns >= 0.0) || c->page_pass_only > 1)
        return FAB_EINVAL;
    if (c->lockstep_quantum_ns &&
        (c->mode != FAB_MODE_VIRTUAL || c->lockstep_hosts == 0 || c->lockstep_hosts > c->nhosts ||
         c->lockstep_timeout_ms > LS_MAX_TIMEOUT_MS))
        return FAB_EINVAL;
    if (!m->devices || !m->paths || (c->nlinks && !m->links) ||
        (m->npath_links && !m->path_links) || (m->ncurves && (!m->curves || !m->points)))
        return FAB_EINVAL;
    for (uint32_t d = 0; d < c->ndevices; d++) {
        const fab_device_params *p = &m->devices[d];
        const fab_path_params *q = &m->paths[d];
        if (!(p->read_ns >= 0.0) || !(p->write_ns >= 0.0) || !(p->bandwidth_gbps > 0.0) ||
            p->jitter_kind > FAB_JITTER_SPIKE || !(p->jitter_sigma >= 0.0) ||
            !(p->jitter_p >= 0.0 && p->jitter_p <= 1.0) || !(p->jitter_spike_ns >= 0.0))
            return FAB_EINVAL;
        if (!(q->latency_read_ns >= 0.0) || !(q->latency_write_ns >= 0.0) ||
            !(q->bandwidth_gbps > 0.0) || q->tier > FAB_TIER_REMOTE || q->tier == FAB_TIER_CACHED ||
            q->nlinks > FAB_PATH_MAX_LINKS || q->first_link > m->npath_links ||
            q->nlinks > m->npath_links - q->first_link)
            return FAB_EINVAL;
        for (uint32_t i = 0; i < q->nlinks; i++)
            if (m->path_links[q->first_link + i] >= c->nlinks) return FAB_ERANGE;
    }
    for (uint32_t l = 0; l < c->nlinks; l++)
        if (!(m->links[l].latency_ns >= 0.0) || !(m->links[l].bandwidth_gbps > 0.0))
            return FAB_EINVAL;
    for (uint32_t i = 0; i < m->ncurves; i++) {
        const fab_curve_params *cv = &m->curves[i];
        if (cv->resource > c->nlinks + c->ndevices || cv->npoints == 0 ||
            cv->first_point > m->npoints || cv->npoints > m->npoints - cv->first_point)
            return FAB_EINVAL;
        const fab_curve_point *pts = &m->points[cv->first_point];
        for (uint32_t j = 0; j < cv->npoints; j++) {
            if (!(pts[j].bandwidth_gbps >= 0.0) || !(pts[j].latency_ns >= 0.0)) return FAB_EINVAL;
            if (j && !(pts[j].bandwidth_gbps > pts[j - 1].bandwidth_gbps)) return FAB_EINVAL;
        }
    }
    return 0;
}

/* The curve set of element r nearest the given read percentage (first on ties). */
static int32_t nearest_curve(const fab_engine *e, uint32_t r, double pct) {
    int32_t best = -1;
    double best_d = 0.0;
    for (uint32_t i = 0; i < e->ncurves; i++) {
        if (e->curves[i].resource != r) continue;
        double d = fabs(e->curves[i].read_pct - pct);
        if (best < 0 || d < best_d) { best = (int32_t)i; best_d = d; }
    }
    return best;
}

/* Fill the per-element and per-device tables from a checked model: each
 * link and device as a contended element (bandwidth, queueing base, nearest
 * curve sets), each device's path as the list of elements it crosses. */
static void init_elements(fab_engine *e, const fab_engine_model *m) {
    uint32_t nd = e->cfg.ndevices, nl = e->cfg.nlinks;
    for (uint32_t l = 0; l < nl; l++) {
        struct res *x = &e->res[l];
        e->link_lat0[l] = m->links[l].latency_ns;
        e->link_bw0[l] = m->links[l].bandwidth_gbps;
        e->lfactor[l] = 1.0;
        x->bandwidth_gbps = m->links[l].bandwidth_gbps;
        x->base_read_ns = x->base_write_ns =
            m->links[l].latency_ns + QUEUE_UNIT_BYTES / x->bandwidth_gbps;
    }
    for (uint32_t d = 0; d < nd; d++) {
        struct edev *v = &e->devs[d];
        v->p = m->devices[d];
        v->path = m->paths[d];
        v->path0 = m->paths[d];
        assert(v->path.nlinks <= FAB_PATH_MAX_LINKS);   /* check_config */
        for (uint32_t i = 0; i < v->path.nlinks; i++)
            v->res[i] = m->path_links[v->path.first_link + i];
        v->res[v->path.nlinks] = nl + d;
        v->nres = v->path.nlinks + 1;
        v->hit_tier = v->path.tier == FAB_TIER_LOCAL ? FAB_TIER_LOCAL : FAB_TIER_CACHED;
        struct res *x = &e->res[nl + d];
        x->bandwidth_gbps = v->p.bandwidth_gbps;
        x->base_read_ns = v->p.read_ns + QUEUE_UNIT_BYTES / x->bandwidth_gbps;
        x->base_write_ns = v->p.write_ns + QUEUE_UNIT_BYTES / x->bandwidth_gbps;
    }
    for (uint32_t r = 0; r < e->nres; r++) {
        e->res[r].curve_read = nearest_curve(e, r, 100.0);
        e->res[r].curve_write = nearest_curve(e, r, 0.0);
    }
    struct res *dram = &e->res[e->nres];   /* this host's DRAM: reads only, no mix */
    dram->bandwidth_gbps = e->cfg.local_bandwidth_gbps;
    dram->curve_read = nearest_curve(e, e->nres, 100.0);
    dram->curve_write = -1;
    /* Each device's curve sets in ascending read_pct (insertion sort, the
     * first of equal percentages kept): what mix_bracket interpolates. */
    uint32_t n = 0;
    for (uint32_t d = 0; d < nd; d++) {
        struct res *x = &e->res[nl + d];
        x->is_dev = 1;
        x->mix_first = n;
        for (uint32_t i = 0; i < e->ncurves; i++) {
            if (e->curves[i].resource != nl + d) continue;
            uint32_t *m = &e->mixsets[x->mix_first];
            double pct = e->curves[i].read_pct;
            uint32_t j = x->nmix, dup = 0;
            for (uint32_t q = 0; q < x->nmix; q++) dup |= e->curves[m[q]].read_pct == pct;
            if (dup) continue;
            for (; j > 0 && e->curves[m[j - 1]].read_pct > pct; j--) m[j] = m[j - 1];
            m[j] = i;
            x->nmix++;
            n++;
        }
    }
    assert(n <= e->ncurves);
}

int fab_engine_create(const fab_engine_config *cfg, const fab_engine_model *m,
                      const char *seg_path, fab_engine **out) {
    if (!cfg || !m || !out) return FAB_EINVAL;
    *out = NULL;
    int rc = check_config(cfg, m);
    if (rc) return rc;
    fab_engine *e = calloc(1, sizeof *e);
    if (!e) return FAB_ENOMEM;
    e->cfg = *cfg;
    e->window_lines = (uint64_t)cfg->mlp_lines * cfg->threads;
    uint32_t nd = cfg->ndevices, nl = cfg->nlinks;
    e->nres = nl + nd;
    e->host_bit = 1u << (cfg->host % 32);
    e->ncurves = m->ncurves;
    e->npoints = m->npoints;
    uint32_t nslots = 16;
    while (nslots < 2 * cfg->max_regions) nslots <<= 1;
    e->nregion_slots = nslots;
    e->devs = calloc(nd, sizeof *e->devs);
    e->res = calloc(e->nres + 1, sizeof *e->res);
    e->curves = calloc(m->ncurves ? m->ncurves : 1, sizeof *e->curves);
    e->mixsets = calloc(m->ncurves ? m->ncurves : 1, sizeof *e->mixsets);
    e->points = calloc(m->npoints ? m->npoints : 1, sizeof *e->points);
    e->regions = calloc(nslots, sizeof *e->regions);
    e->acc = calloc(nd, sizeof *e->acc);
    e->tdev = calloc(nd, sizeof *e->tdev);
    e->tres = calloc(e->nres, sizeof *e->tres);
    e->pend = calloc(cfg->max_regions, sizeof *e->pend);
    e->dstate = calloc(nd, sizeof *e->dstate);
    e->stall_p = calloc(nd, sizeof *e->stall_p);
    e->stall_ns = calloc(nd, sizeof *e->stall_ns);
    e->npoison = calloc(nd, sizeof *e->npoison);
    e->pfirst = calloc((uint64_t)nd * FAB_POISON_MAX, sizeof *e->pfirst);
    e->pend_b = calloc((uint64_t)nd * FAB_POISON_MAX, sizeof *e->pend_b);
    e->lstate = calloc(nl ? nl : 1, sizeof *e->lstate);
    e->lfactor = calloc(nl ? nl : 1, sizeof *e->lfactor);
    e->link_lat0 = calloc(nl ? nl : 1, sizeof *e->link_lat0);
    e->link_bw0 = calloc(nl ? nl : 1, sizeof *e->link_bw0);
    if (!e->devs || !e->res || !e->curves || !e->mixsets || !e->points || !e->regions || !e->acc || !e->tdev ||
        !e->tres || !e->pend || !e->dstate || !e->stall_p || !e->stall_ns || !e->npoison ||
        !e->pfirst || !e->pend_b || !e->lstate || !e->lfactor || !e->link_lat0 || !e->link_bw0)
        { rc = FAB_ENOMEM; goto fail; }
    if (m->ncurves) memcpy(e->curves, m->curves, m->ncurves * sizeof *e->curves);
    if (m->npoints) memcpy(e->points, m->points, m->npoints * sizeof *e->points);

    init_elements(e, m);
    rc = fab_pcache_create((uint32_t)cfg->cache_pages, cfg->eviction, &e->pc);
    if (rc) goto fail;
    rc = fab_touch_create(cfg->touch_entries, &e->touch);
    if (rc) goto fail;
    rc = fab_seg_open(seg_path, cfg->nhosts, nd, nl, 1, &e->seg);
    if (rc) goto fail;
    e->me = fab_seg_host_block(e->seg, cfg->host);
    if (!e->me) { rc = FAB_ESEGMENT; goto fail; }   /* unreachable: host < nhosts checked */
    atomic_fetch_add_explicit(&e->me->ctr[FAB_HCTR_ATTACHED], 1, memory_order_relaxed);
    e->dram_blk = fab_seg_dram_block(e->seg, cfg->host);
    if (!e->dram_blk) { rc = FAB_ESEGMENT; goto fail; }   /* unreachable: host < nhosts */
    dram_claim(e);
    e->dram_excess_load = -1.0;
    e->dram_excess_ns = 0.0;
    e->fgen_word = fab_seg_gen_word(e->seg);
    faults_refresh(e, atomic_load_explicit(e->fgen_word, memory_order_acquire));
    fab_rng_seed(&e->rng, cfg->seed ^ fab_mix64(cfg->host + UINT64_C(0x51ed270b27a9f3c1)));
    e->wall0_ns = fab_clock_wall_ns();
    e->deadline_ns = e->wall0_ns;
    if (cfg->lockstep_quantum_ns) {
        e->ls_q = cfg->lockstep_quantum_ns;
        e->ls_timeout_ns = (uint64_t)cfg->lockstep_timeout_ms * UINT64_C(1000000);
        e->ls_head = fab_seg_ls_head(e->seg);
        e->ls_me = fab_seg_ls_host(e->seg, cfg->host);
        e->ls_pid = (uint64_t)getpid();
        e->ls_dirty = calloc(e->nres + 1, sizeof *e->ls_dirty);
        if (!e->ls_head || !e->ls_me || !e->ls_dirty) { rc = e->ls_dirty ? FAB_ESEGMENT : FAB_ENOMEM; goto fail; }
        rc = fab_ls_join(e);
        if (rc) goto fail;
    }
    *out = e;
    return 0;
fail:
    fab_engine_destroy(e);
    return rc;
}

void fab_engine_destroy(fab_engine *e) {
    if (!e) return;
    if (e->ls_q && e->seg) fab_ls_leave(e, 0);
    dram_release(e);
    free(e->ls_dirty);
    if (e->regions)
        for (uint32_t i = 0; i < e->nregion_slots; i++)
            if (e->regions[i].used) region_release(&e->regions[i]);
    if (e->me) atomic_fetch_sub_explicit(&e->me->ctr[FAB_HCTR_ATTACHED], 1, memory_order_relaxed);
    fab_seg_close(e->seg);
    fab_touch_destroy(e->touch);
    fab_pcache_destroy(e->pc);
    free(e->devs);
    free(e->res);
    free(e->curves);
    free(e->mixsets);
    free(e->points);
    free(e->regions);
    free(e->acc);
    free(e->tdev);
    free(e->tres);
    free(e->pend);
    free(e->dstate);
    free(e->stall_p);
    free(e->stall_ns);
    free(e->npoison);
    free(e->pfirst);
    free(e->pend_b);
    free(e->lstate);
    free(e->lfactor);
    free(e->link_lat0);
    free(e->link_bw0);
    free(e);
}
