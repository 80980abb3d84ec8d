/*
 * fabric_core.h -- the one C interface of cxl-fabric.
 *
 * The text between the CDEF markers is what csrc/build.py hands to cffi's
 * cdef(): prototypes, opaque handles and fixed-width integers only, no
 * preprocessor lines.  Every function returns 0 (or a non-negative count) on
 * success and a negative code on failure: either -errno from a failed system
 * call, or one of the FAB_E* codes below (all <= -1000, so they never collide
 * with errno values).  fab_strerror() (error.c) names any of them; every code
 * is defined here, in one list, so error.c and the Python binding see all.
 */
#ifndef FABRIC_CORE_H
#define FABRIC_CORE_H

#include <stdint.h>
#include <stddef.h>

/* CDEF-BEGIN */
#define FAB_EINVAL -1001   /* argument out of range or inconsistent */
#define FAB_ENOMEM -1002   /* fixed capacity exhausted */
#define FAB_ERANGE -1003   /* address or page outside the object */
#define FAB_EBUSY  -1004   /* object pinned or in use */
#define FAB_ENOENT -1005   /* no such entry */
#define FAB_ECORRUPT -1006 /* a consistency check found broken internal state */
#define FAB_ESEGMENT -1101 /* shared segment missing, corrupt, or built for other params */
#define FAB_EEXIST   -1102 /* region id already registered */
#define FAB_EUNAVAIL  -1103 /* a device of the access is unavailable (its node is down) */
#define FAB_EFAILED   -1104 /* a device of the access failed */
#define FAB_ELINKDOWN -1105 /* a link on the path to a device of the access is cut */
#define FAB_EPOISON   -1106 /* a read met a poisoned page */
#define FAB_ELOCKSTEP -1107 /* lockstep: other hosts held this one back past its deadline */

/* ---- errors (error.c) ------------------------------------------------ */
const char *fab_strerror(int rc);

/* ---- mapping device memory (map.c) ---------------------------------- */

/* Map `nstripes` stripes of `stripe_bytes` each into one contiguous virtual
 * range.  Stripe i comes from fds[i % nfds] at byte offset
 * dev_offsets[i % nfds] + (i / nfds) * stripe_bytes.  A single-device region
 * is nfds == 1, nstripes == 1.  writable selects PROT_READ|PROT_WRITE vs
 * PROT_READ; populate asks for MAP_POPULATE so no access pays a first-touch
 * fault.  On success *out_addr holds the base; on failure nothing stays
 * mapped. */
int fab_map_stripes(const int *fds, uint32_t nfds, const uint64_t *dev_offsets,
                    uint64_t stripe_bytes, uint64_t nstripes, int writable,
                    int populate, void **out_addr);

/* Unmap a range returned by fab_map_stripes (whole length). */
int fab_unmap(void *addr, uint64_t len_bytes);

/* Give a device extent back as zeroes while keeping its pages reserved:
 * punch a hole (freeing the old pages, so every mapper now sees zeroes) and
 * fallocate the range again (so a full tmpfs fails here, not as SIGBUS
 * later).  off and len must be page aligned. */
int fab_dev_scrub(int fd, uint64_t off_bytes, uint64_t len_bytes);
/* ---- atomics and waits on shared words (sync.c) ------------------------- */

/* Sequentially consistent atomics on an aligned word of shared memory. */
int fab_sync_load_u64(const uint64_t *word, uint64_t *out);
int fab_sync_store_u64(uint64_t *word, uint64_t value);
int fab_sync_fetch_add_u64(uint64_t *word, uint64_t delta, uint64_t *old);
/* Raise *word to value if it is smaller (an atomic maximum); *old holds the value before. */
int fab_sync_fetch_max_u64(uint64_t *word, uint64_t value, uint64_t *old);
/* Returns 1 if *word was `expected` and is now `desired`, 0 if not; *actual
 * holds the value seen. */
int fab_sync_cas_u64(uint64_t *word, uint64_t expected, uint64_t desired, uint64_t *actual);
int fab_sync_load_u32(const uint32_t *word, uint32_t *out);
int fab_sync_fetch_add_u32(uint32_t *word, uint32_t delta, uint32_t *old);
/* Wait while *word == expected: spin briefly, then sleep on a shared futex
 * for at most timeout_ns (<= 60 s).  0 when the word changed, a signal or a
 * wake-up came (re-check), -ETIMEDOUT when the time ran out. */
int fab_sync_wait_u32(const uint32_t *word, uint32_t expected, uint64_t timeout_ns);
/* Wake up to nwaiters processes sleeping on the word; returns how many woke. */
int fab_sync_wake_u32(uint32_t *word, uint32_t nwaiters);
/* CDEF-END */

/* C-only (not in the cdef): map a shared-memory file read/write, creating it,
 * growing it to at least len_bytes (emptying it first when zero_first), and
 * closing the descriptor.  Used for the engine segment and version tables. */
int fab_file_map_shared(const char *path, uint64_t len_bytes, int zero_first, void **out);

#include "engine.h"

#endif /* FABRIC_CORE_H */
