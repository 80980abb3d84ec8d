/*
 * map.c -- stitch device memory into one contiguous virtual range.
 *
 * A pooled region lives on one or more device files (shared memory under the
 * state dir).  An interleaved region's stripes alternate between devices:
 *
 *     virtual range:  | s0 | s1 | s2 | s3 | s4 | s5 | ...
 *     device d0:        s0        s2        s4          (extent at off0)
 *     device d1:             s1        s3        s5     (extent at off1)
 *
 * We reserve the whole range with one PROT_NONE anonymous mapping, then
 * replace each stripe with MAP_FIXED mappings of the right device file, so a
 * numpy array over the range reads every device with no copy.  Each stripe is
 * its own VMA; the caller keeps nstripes well under vm.max_map_count.
 *
 * Invariant: on any failure the reserved range is unmapped whole before we
 * return, so the caller never owns a half-mapped region.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fabric_core.h"

static long page_size_bytes(void) {
    long p = sysconf(_SC_PAGESIZE);
    return p > 0 ? p : 4096;
}

int fab_map_stripes(const int *fds, uint32_t nfds, const uint64_t *dev_offsets,
                    uint64_t stripe_bytes, uint64_t nstripes, int writable,
                    int populate, void **out_addr) {
    uint64_t page = (uint64_t)page_size_bytes();
    if (!fds || !dev_offsets || !out_addr || nfds == 0 || nstripes == 0 ||
        stripe_bytes == 0 || stripe_bytes % page != 0)
        return FAB_EINVAL;
    if (nstripes > UINT64_MAX / stripe_bytes) return FAB_EINVAL;
    for (uint32_t d = 0; d < nfds; d++)
        if (dev_offsets[d] % page != 0 || fds[d] < 0) return FAB_EINVAL;

    uint64_t len = nstripes * stripe_bytes;
    char *base = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED) { *out_addr = NULL; return -errno; }

    int prot = PROT_READ | (writable ? PROT_WRITE : 0);
    int flags = MAP_SHARED | MAP_FIXED | (populate ? MAP_POPULATE : 0);
    for (uint64_t i = 0; i < nstripes; i++) {
        uint32_t d = (uint32_t)(i % nfds);
        uint64_t off = dev_offsets[d] + (i / nfds) * stripe_bytes;
        void *p = mmap(base + i * stripe_bytes, stripe_bytes, prot, flags, fds[d], (off_t)off);
        if (p == MAP_FAILED) {
            int err = errno;
            munmap(base, len);
            *out_addr = NULL;
            return -err;
        }
    }
    *out_addr = base;
    return 0;
}

int fab_unmap(void *addr, uint64_t len_bytes) {
    if (!addr || len_bytes == 0) return FAB_EINVAL;
    if (munmap(addr, len_bytes) != 0) return -errno;
    return 0;
}

int fab_dev_scrub(int fd, uint64_t off_bytes, uint64_t len_bytes) {
    uint64_t page = (uint64_t)page_size_bytes();
    if (fd < 0 || len_bytes == 0 || off_bytes % page || len_bytes % page) return FAB_EINVAL;
    if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off_bytes, (off_t)len_bytes) != 0)
        return -errno;
    /* Re-reserve in 2 MiB steps, as the node daemon does at creation: pages
     * from one huge fallocate read measurably slower on our VMs. */
    const uint64_t step = 2u << 20;
    for (uint64_t done = 0; done < len_bytes; done += step) {
        uint64_t n = len_bytes - done < step ? len_bytes - done : step;
        if (fallocate(fd, FALLOC_FL_KEEP_SIZE, (off_t)(off_bytes + done), (off_t)n) != 0)
            return -errno;
    }
    return 0;
}

int fab_file_map_shared(const char *path, uint64_t len_bytes, int zero_first, void **out) {
    if (!path || !out || len_bytes == 0) return FAB_EINVAL;
    *out = NULL;
    /* Never through a link planted in the state dir. */
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) return -errno;
    struct stat st;
    int rc = 0;
    if (zero_first && ftruncate(fd, 0) != 0) rc = -errno;
    else if (fstat(fd, &st) != 0) rc = -errno;
    else if ((uint64_t)st.st_size < len_bytes && ftruncate(fd, (off_t)len_bytes) != 0) rc = -errno;
    /* Allocate every block now: a sparse file on a full tmpfs would map fine and
     * then kill its first writer with SIGBUS.  posix_fallocate returns the error
     * number itself (not -1 and errno). */
    if (rc == 0) {
        int e = posix_fallocate(fd, 0, (off_t)len_bytes);
        if (e != 0) rc = -e;
    }
    if (rc == 0) {
        void *m = mmap(NULL, len_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (m == MAP_FAILED) rc = -errno;
        else *out = m;
    }
    close(fd);
    return rc;
}
