"""Memory no region owns is zeroed before it is handed out again, also across a
cluster restart on kept device files (`fabric down --keep-memory`, or a crash),
where the manager's journal brings the regions back with their bytes."""
import os
import signal
import time

import numpy as np
import psutil

import fabric

MiB = 1 << 20
SECRET = 0xA5


def _write_secrets(c: fabric.Cluster) -> None:
    """h0 fills half of every device with a secret, in regions it owns."""
    with c.connect("h0") as s:
        for dev in ("d0", "d1"):
            r = s.alloc(f"secret-{dev}", 8 * MiB, placement=dev)
            r.ndarray(np.uint8, 8 * MiB)[:] = SECRET


def _files(state_dir: str) -> list[str]:
    return [os.path.join(state_dir, "devices", f"{d}.mem") for d in ("d0", "d1")]


def _poison_unowned(state_dir: str) -> None:
    """While the cluster is down, put the secret in the half no region owns too
    (as bytes left behind by anything the manager no longer knows about)."""
    for path in _files(state_dir):
        with open(path, "r+b") as f:
            f.seek(8 * MiB)
            f.write(bytes([SECRET]) * (8 * MiB))


def _check_regions_kept_and_rest_zeroed(c: fabric.Cluster) -> None:
    """The regions came back with their bytes; memory no region owns reads zeros in a
    new region right away (scrubs may still be running), and once the scrubs are done
    only the kept regions hold the secret."""
    assert sorted(r["name"] for r in c.status()["regions"]) == ["secret-d0", "secret-d1"]
    with c.connect("h0") as s:
        for dev in ("d0", "d1"):
            assert (s.open(f"secret-{dev}").ndarray(np.uint8, 8 * MiB) == SECRET).all()
    with c.connect("h1") as s:
        for dev in ("d0", "d1"):
            r = s.alloc(f"new-{dev}", 8 * MiB, placement=dev)
            assert not r.ndarray(np.uint8, 8 * MiB).any(), f"old bytes on {dev}"
    deadline = time.monotonic() + 20
    while any(d["scrubbing_bytes"] for d in c.status()["devices"]):
        assert time.monotonic() < deadline, "scrubs did not finish"
        time.sleep(0.05)
    for path in _files(c.state_dir):
        with open(path, "rb") as f:
            assert f.read().count(SECRET) == 8 * MiB, f"{path}: unowned bytes not scrubbed"


def test_keep_memory_restart_keeps_regions_and_scrubs_the_rest(state_dir):
    with fabric.Cluster.start(hosts=2, devices=2, device_size="16MiB",
                              state_dir=state_dir) as c:
        _write_secrets(c)
        c.stop(keep_memory=True)
    assert os.path.isdir(os.path.join(state_dir, "journal"))   # kept with the memory
    for path in _files(state_dir):
        with open(path, "rb") as f:
            assert f.read().count(SECRET) == 8 * MiB  # the kept files hold the secret
    _poison_unowned(state_dir)
    with fabric.Cluster.start(hosts=2, devices=2, device_size="16MiB",
                              state_dir=state_dir) as c:
        _check_regions_kept_and_rest_zeroed(c)


def test_plain_down_drops_the_journal(state_dir):
    """`fabric down` without --keep-memory: no memory, no journal, no regions next time."""
    with fabric.Cluster.start(hosts=2, devices=2, device_size="16MiB",
                              state_dir=state_dir) as c:
        _write_secrets(c)
    assert not os.path.exists(state_dir)
    with fabric.Cluster.start(hosts=2, devices=2, device_size="16MiB",
                              state_dir=state_dir) as c:
        assert c.status()["regions"] == []


def test_crash_restart_keeps_regions_and_scrubs_the_rest(state_dir):
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
    _poison_unowned(state_dir)
    with fabric.Cluster.start(hosts=2, devices=2, device_size="16MiB",
                              state_dir=state_dir) as c2:
        _check_regions_kept_and_rest_zeroed(c2)


def test_other_topology_drops_the_journal(state_dir):
    """Kept memory under a different topology: the journal does not describe these
    devices, so no region is recovered and every reattached byte is scrubbed."""
    with fabric.Cluster.start(hosts=2, devices=2, device_size="16MiB",
                              state_dir=state_dir) as c:
        _write_secrets(c)
        c.stop(keep_memory=True)
    with fabric.Cluster.start(hosts=1, devices=2, device_size="16MiB",
                              state_dir=state_dir) as c:
        assert c.status()["regions"] == []
        with c.connect("h0") as s:
            r = s.alloc("fresh", 8 * MiB, placement="d0")
            assert not r.ndarray(np.uint8, 8 * MiB).any()


def test_fresh_devices_are_not_scrubbed(cluster):
    """A cluster on new files has nothing to scrub: the pool is usable at once."""
    st = cluster.status()
    assert all(d["scrubbing_bytes"] == 0 for d in st["devices"])
    assert all(d["free_bytes"] == d["capacity_bytes"] for d in st["devices"])
