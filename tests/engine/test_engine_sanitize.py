"""The C unit tests (tests/engine/c/*.c), built with ASan + UBSan and -Werror, and run.

Each test program is compiled together with every C source of the core
(error.c holds fab_strerror; map.c the mapping helpers the engine uses), with
assertions on, so the sanitizers see every allocation and arithmetic operation
and every invariant the C states with assert() is checked.  Skipped only when gcc is missing.
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CSRC = os.path.join(ROOT, "csrc")
ENGINE_SOURCES = ["error.c", "hist.c", "pcache.c", "touch.c", "seg.c", "cost.c", "engine.c", "lockstep.c",
                  "calib.c", "map.c", "sync.c"]
TESTS = sorted(glob.glob(os.path.join(HERE, "c", "test_*.c")))
assert TESTS, f"no C tests found in {HERE}/c"
GCC = shutil.which("gcc")
FLAGS = ["-std=c11", "-g", "-O1", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
         "-fno-sanitize-recover=all", "-Wall", "-Wextra", "-Werror"]


@pytest.mark.skipif(GCC is None, reason="gcc is not installed, so the sanitizer build cannot run")
@pytest.mark.parametrize("source", TESTS, ids=[os.path.basename(t) for t in TESTS])
def test_c_unit_under_sanitizers(source, tmp_path, seed):
    exe = tmp_path / os.path.basename(source)[:-2]
    cmd = [GCC, *FLAGS, "-I", CSRC, source, *(os.path.join(CSRC, s) for s in ENGINE_SOURCES),
           "-lm", "-o", str(exe)]
    built = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, f"build failed:\n{' '.join(cmd)}\n{built.stderr}"
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0",
               UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
    run = subprocess.run([str(exe), str(seed)], capture_output=True, text=True, timeout=60,
                         env=env)
    assert run.returncode == 0, f"{exe.name} failed (seed {seed}):\n{run.stdout}\n{run.stderr}"
