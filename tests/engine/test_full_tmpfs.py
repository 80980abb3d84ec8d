"""A full tmpfs is a typed error when a shared file is made, never SIGBUS later.

The engine's shared segment and the version tables of shared regions are
fully allocated when created; on a tmpfs without room that raises
ResourceExhausted ("is the tmpfs full?") instead of handing out a sparse
mapping whose first write kills the process.  Runs in a private mount
namespace with a tiny tmpfs (needs root, as CI has; skipped otherwise).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent('''
    import os, sys
    from fabric._binding import engine as b
    from fabric.engine import Engine, create_shared_state, engine_params_for_test
    from fabric.errors import ResourceExhausted
    tiny, elsewhere = sys.argv[1], sys.argv[2]
    params = engine_params_for_test(hosts=16, devices=16)
    need = b.seg_size_bytes(params)
    free = os.statvfs(tiny).f_bavail * os.statvfs(tiny).f_frsize
    assert need > free, (need, free)
    try:
        create_shared_state(os.path.join(tiny, "engine.seg"), params)
        print("segment: created")
    except ResourceExhausted as exc:
        print("segment: ResourceExhausted", "tmpfs full" in str(exc))
    seg = os.path.join(elsewhere, "engine.seg")
    create_shared_state(seg, params)
    with Engine(params, "h0", mode="off", shared_path=seg) as e:
        try:
            e.register_region(1, npages=1 << 20, device_indices=[0], stripe_pages=1,
                              share="shared", versions_path=os.path.join(tiny, "1.ver"))
            e.access(1, (1 << 20) * 4096 - 4096, 4096, True)
            print("versions: created")
        except ResourceExhausted:
            print("versions: ResourceExhausted")
''')


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                    reason="needs root and unshare(1) for a private tmpfs mount")
def test_full_tmpfs_is_a_typed_error_not_sigbus(tmp_path):
    tiny, elsewhere = tmp_path / "tiny", tmp_path / "elsewhere"
    tiny.mkdir()
    elsewhere.mkdir()
    script = (f"mount -t tmpfs -o size=64k tmpfs {tiny} && "
              f"exec {sys.executable} -c \"$0\" {tiny} {elsewhere}")
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script, CHILD],
                       capture_output=True, text=True, timeout=120)
    if "mount" in r.stderr and r.returncode != 0 and "Traceback" not in r.stderr:
        pytest.skip(f"cannot mount a private tmpfs here: {r.stderr.strip()}")
    assert r.returncode == 0, f"child died (SIGBUS is -7): {r.returncode}\n{r.stdout}\n{r.stderr}"
    assert r.stdout.split("\n")[:2] == ["segment: ResourceExhausted True",
                                        "versions: ResourceExhausted"], r.stdout + r.stderr
