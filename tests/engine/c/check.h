/*
 * check.h -- the few macros the C unit tests need (no framework).
 *
 * CHECK(cond) reports the file, line and condition on stderr and makes the
 * test exit non-zero at the end; CHECK_RC(expr, want) does the same for a
 * return code, naming both codes.  Tests print; the library never does.
 */
#ifndef FABRIC_TEST_CHECK_H
#define FABRIC_TEST_CHECK_H

#include <stdio.h>
#include <stdlib.h>

static int check_failures;

#define CHECK(cond)                                                             \
    do {                                                                        \
        if (!(cond)) {                                                          \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
            check_failures++;                                                   \
        }                                                                       \
    } while (0)

#define CHECK_RC(expr, want)                                                    \
    do {                                                                        \
        long long got_ = (long long)(expr);                                     \
        if (got_ != (long long)(want)) {                                        \
            fprintf(stderr, "%s:%d: %s returned %lld, want %lld\n", __FILE__,   \
                    __LINE__, #expr, got_, (long long)(want));                  \
            check_failures++;                                                   \
        }                                                                       \
    } while (0)

#define CHECK_DONE(name)                                                        \
    do {                                                                        \
        if (check_failures) {                                                   \
            fprintf(stderr, "%s: %d check(s) failed\n", name, check_failures);  \
            return 1;                                                           \
        }                                                                       \
        printf("%s: ok\n", name);                                               \
        return 0;                                                               \
    } while (0)

#endif
