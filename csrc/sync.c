/*
 * sync.c -- atomics and futex waits on words of shared (pooled) memory.
 *
 * fabric.sync builds a barrier and an atomic counter from these on a
 * coherent pooled region that every host process maps.  The words live in
 * MAP_SHARED file mappings, so the atomics are real cross-process atomics
 * and the futex is the shared (not FUTEX_PRIVATE) kind, keyed by the file
 * page rather than the virtual address: processes that map the region at
 * different addresses still wake each other.
 *
 * Waiting spins a bounded number of rounds, then sleeps in the kernel with
 * a timeout, so a waiter neither burns a core nor blocks past its deadline;
 * the caller re-checks the word and its deadline after every return.
 */
#define _GNU_SOURCE
#include "fabric_core.h"

#include <errno.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define SYNC_SPIN_ROUNDS 256          /* a few microseconds before sleeping */
#define SYNC_MAX_TIMEOUT_NS 60000000000ull   /* one kernel sleep is at most 60 s */

static int aligned(const void *p, uintptr_t n) { return p && ((uintptr_t)p % n) == 0; }

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

int fab_sync_load_u64(const uint64_t *word, uint64_t *out) {
    if (!aligned(word, 8) || !out) return FAB_EINVAL;
    *out = __atomic_load_n(word, __ATOMIC_SEQ_CST);
    return 0;
}

int fab_sync_store_u64(uint64_t *word, uint64_t value) {
    if (!aligned(word, 8)) return FAB_EINVAL;
    __atomic_store_n(word, value, __ATOMIC_SEQ_CST);
    return 0;
}

int fab_sync_fetch_add_u64(uint64_t *word, uint64_t delta, uint64_t *old) {
    if (!aligned(word, 8) || !old) return FAB_EINVAL;
    *old = __atomic_fetch_add(word, delta, __ATOMIC_SEQ_CST);
    return 0;
}

int fab_sync_fetch_max_u64(uint64_t *word, uint64_t value, uint64_t *old) {
    if (!aligned(word, 8) || !old) return FAB_EINVAL;
    uint64_t seen = __atomic_load_n(word, __ATOMIC_SEQ_CST);
    /* Each failed exchange means another writer changed the word; the loop
     * ends once seen >= value.  Bounded: a word raised 2^24 times during one
     * call is a runaway writer, reported as FAB_EBUSY. */
    for (uint32_t i = 0; i < (1u << 24); i++) {
        if (seen >= value ||
            __atomic_compare_exchange_n(word, &seen, value, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
            *old = seen;
            return 0;
        }
    }
    return FAB_EBUSY;
}

int fab_sync_cas_u64(uint64_t *word, uint64_t expected, uint64_t desired, uint64_t *actual) {
    if (!aligned(word, 8) || !actual) return FAB_EINVAL;
    uint64_t seen = expected;
    int swapped = __atomic_compare_exchange_n(word, &seen, desired, 0, __ATOMIC_SEQ_CST,
                                              __ATOMIC_SEQ_CST);
    *actual = seen;
    return swapped ? 1 : 0;
}

int fab_sync_load_u32(const uint32_t *word, uint32_t *out) {
    if (!aligned(word, 4) || !out) return FAB_EINVAL;
    *out = __atomic_load_n(word, __ATOMIC_SEQ_CST);
    return 0;
}

int fab_sync_fetch_add_u32(uint32_t *word, uint32_t delta, uint32_t *old) {
    if (!aligned(word, 4) || !old) return FAB_EINVAL;
    *old = __atomic_fetch_add(word, delta, __ATOMIC_SEQ_CST);
    return 0;
}

int fab_sync_wait_u32(const uint32_t *word, uint32_t expected, uint64_t timeout_ns) {
    if (!aligned(word, 4) || timeout_ns > SYNC_MAX_TIMEOUT_NS) return FAB_EINVAL;
    for (int i = 0; i < SYNC_SPIN_ROUNDS; i++) {
        if (__atomic_load_n(word, __ATOMIC_ACQUIRE) != expected) return 0;
        cpu_relax();
    }
    if (timeout_ns == 0) return -ETIMEDOUT;
    struct timespec ts = {(time_t)(timeout_ns / 1000000000ull),
                          (long)(timeout_ns % 1000000000ull)};
    long rc = syscall(SYS_futex, word, FUTEX_WAIT, expected, &ts, NULL, 0);
    if (rc == 0) return 0;
    if (errno == EAGAIN || errno == EINTR) return 0;   /* changed already, or a signal */
    return -errno;                                     /* -ETIMEDOUT, or a real error */
}

int fab_sync_wake_u32(uint32_t *word, uint32_t nwaiters) {
    if (!aligned(word, 4)) return FAB_EINVAL;
    if (nwaiters > (uint32_t)INT32_MAX) nwaiters = (uint32_t)INT32_MAX;
    long rc = syscall(SYS_futex, word, FUTEX_WAKE, (int)nwaiters, NULL, NULL, 0);
    return rc < 0 ? -errno : (int)rc;
}
