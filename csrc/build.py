"""cffi build script for the C core (out-of-line API mode).

Never shipped: setup.py names it in ``cffi_modules`` and setuptools compiles
``fabric._native`` from the sources below at install time.  The cdef is the
text of ``fabric_core.h`` between the CDEF markers, so the header stays the
one description of the C interface.
"""
import os
import re

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = ["error.c", "map.c"]
# The emulation engine (csrc/engine.h lists what each file does).
SOURCES += ["hist.c", "pcache.c", "touch.c", "seg.c", "cost.c", "engine.c", "lockstep.c", "calib.c"]
# Atomics and futex waits on pooled memory (fabric.sync).
SOURCES += ["sync.c"]
# Headers whose CDEF blocks form the cffi cdef, in order; fabric_core.h is the
# umbrella that #includes the others, so C users include just that one.
HEADERS = ["fabric_core.h"]
HEADERS += ["engine.h"]


def _cdef_text() -> str:
    parts = []
    for name in HEADERS:
        with open(os.path.join(HERE, name), encoding="utf-8") as f:
            text = f.read()
        body = text.split("/* CDEF-BEGIN */", 1)[1].split("/* CDEF-END */", 1)[0]
        # cffi's cdef takes '#define NAME <int>' but no comments after it.
        parts.append(re.sub(r"/\*.*?\*/", "", body, flags=re.S))
    return "\n".join(parts)


ffibuilder = FFI()
ffibuilder.cdef(_cdef_text())
ffibuilder.set_source(
    "fabric._native",
    '#include "fabric_core.h"',
    sources=[os.path.relpath(os.path.join(HERE, s)) for s in SOURCES],
    include_dirs=[os.path.relpath(HERE)],
    extra_compile_args=["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror"],
    libraries=["m"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
