/*
 * error.c -- one name for every return code of the C core.
 *
 * Every exported function returns 0 (or a non-negative count) on success and
 * a negative code on failure: -errno from a failed system call, or one of the
 * FAB_E* codes listed in fabric_core.h (all <= -1000, so they never collide
 * with errno values).  fab_strerror() is the only place that names them; the
 * Python binding (fabric/_binding/__init__.py) maps the same codes to typed
 * exceptions and uses this text in their messages.  The strings are static:
 * callers never free them.
 */
#include <string.h>

#include "fabric_core.h"

const char *fab_strerror(int rc) {
    switch (rc) {
    case 0: return "success";
    case FAB_EINVAL: return "invalid argument";
    case FAB_ENOMEM: return "fixed capacity exhausted";
    case FAB_ERANGE: return "address or index out of range";
    case FAB_EBUSY: return "pinned page-cache frames are in the way";
    case FAB_ENOENT: return "no such entry";
    case FAB_ECORRUPT: return "internal state is inconsistent (a consistency check failed)";
    case FAB_ESEGMENT: return "shared segment missing, corrupt, or made for another topology";
    case FAB_EEXIST: return "region already registered";
    case FAB_EUNAVAIL: return "device unavailable (its node is down)";
    case FAB_EFAILED: return "device failed";
    case FAB_ELINKDOWN: return "a link on the path to the device is cut";
    case FAB_EPOISON: return "poisoned memory";
    case FAB_ELOCKSTEP: return "lockstep: held back by other hosts past the deadline";
    default: break;
    }
    if (rc < 0 && rc > -1000) return strerror(-rc);   /* -errno */
    return "unknown error";
}
