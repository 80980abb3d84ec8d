"""Memory no region owns is zeroed before it is handed out again, also across a
cluster restart on kept device files (`fabric down --keep-memory`, or a crash)."""
import os
import signal
import time

import numpy as np
import psutil

import fabric

MiB = 1 << 20
SECRET = 0xA5


def _write_secrets(c: fabric.Cluster) -> None:
    """h0 fills every device with a secret, in regions it owns."""
    with c.connect("h0") as s:
        for dev in ("d0", "d1"):
            r = s.alloc(f"secret-{dev}", 8 * MiB, placement=dev)
            r.ndarray(np.uint8, 8 * MiB)[:] = SECRET


def _files(state_dir: str) -> list[str]:
    return [os.path.join(state_dir, "devices", f"{d}.mem") for d in ("d0", "d1")]


def _check_fresh_regions_read_zeros(c: fabric.Cluster) -> None:
    """Right after the restart (scrubs may still be running), h1 gets zeroed memory,
    and once the scrubs are done no byte of the old secret is left in the files."""
    with c.connect("h1") as s:
        for dev in ("d0", "d1"):
            r = s.alloc(f"new-{dev}", 8 * MiB, placement=dev)
            assert not r.ndarray(np.uint8, 8 * MiB).any(), f"old bytes on {dev}"
        r = s.alloc("striped", 4 * MiB, placement="interleave")
        assert not r.ndarray(np.uint8, 4 * MiB).any()
    deadline = time.monotonic() + 20
    while any(d["scrubbing_bytes"] for d in c.status()["devices"]):
        assert time.monotonic() < deadline, "scrubs did not finish"
        time.sleep(0.05)
    for path in _files(c.state_dir):
        with open(path, "rb") as f:
            assert SECRET not in f.read(), f"{path} still holds the old secret"


def test_keep_memory_restart_scrubs_reattached_devices(state_dir):
    with fabric.Cluster.start(hosts=2, devices=2, device_size="16MiB",
                              state_dir=state_dir) as c:
        _write_secrets(c)
        c.stop(keep_memory=True)
    for path in _files(state_dir):
        with open(path, "rb") as f:
            assert f.read().count(SECRET) == 8 * MiB  # the kept files hold the secret
    with fabric.Cluster.start(hosts=2, devices=2, device_size="16MiB",
                              state_dir=state_dir) as c:
        st = c.status()
        assert st["regions"] == []  # the directory did not survive: nothing owns the bytes
        _check_fresh_regions_read_zeros(c)


def test_crash_restart_scrubs_reattached_devices(state_dir):
    c = fabric.Cluster.start(hosts=2, devices=2, device_size="16MiB", state_dir=state_dir)
    try:
        _write_secrets(c)
    except BaseException:
        c.stop()
        raise
    procs = [psutil.Process(pid) for pid in c.info["pids"].values()]
    for p in procs:
        p.send_signal(signal.SIGKILL)
    psutil.wait_procs(procs, timeout=10)      # reaps them: they are our children
    assert all(os.path.exists(p) for p in _files(state_dir))
    with fabric.Cluster.start(hosts=2, devices=2, device_size="16MiB",
                              state_dir=state_dir) as c2:
        _check_fresh_regions_read_zeros(c2)


def test_fresh_devices_are_not_scrubbed(cluster):
    """A cluster on new files has nothing to scrub: the pool is usable at once."""
    st = cluster.status()
    assert all(d["scrubbing_bytes"] == 0 for d in st["devices"])
    assert all(d["free_bytes"] == d["capacity_bytes"] for d in st["devices"])
