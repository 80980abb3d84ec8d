"""The state directory of a cluster and what lives in it.

::

    <state dir>/                 default $FABRIC_STATE_DIR or /dev/shm/cxl-fabric-<uid>
      cluster.json               written by `fabric up`: topology, endpoints, pids, options
      lock                       flock()ed while a cluster is being started or stopped
      manager.sock               the fabric manager's ROUTER (ipc)
      nodes/<node>.sock          each node daemon's ROUTER (ipc)
      nodes/<node>.inc           the incarnation of the newest daemon of <node>: an older
                                 one that finds a newer number here is fenced and exits
      devices/<device>.mem       device memory, one fully allocated file per device
      engine.seg                 the engine's shared segment: contention state, counters,
                                 latency histograms of every host (fabric/engine/)
      calibration.json           `fabric calibrate`: this machine's local costs (spin mode)
      versions/<region id>.ver   per-page versions of shared/coherent regions (coherence)
      versions/<region id>.mirror  a mirrored region's state word (stale copy, resync)
      versions/<region id>.mirror.ver  the version file of its second copy
      logs/<daemon>.log          daemon logs (and <daemon>.out: stdout/stderr); <daemon>
                                 is "manager" or "node-<node>"
      journal/                   the fabric manager's journal (daemons/manager/journal.py):
                                 epoch, snapshot, log-<incarnation>-<seq>; kept with devices/
      secret                     the per-cluster secret daemon-to-daemon messages carry (0600)
      faults/                    the fault log (fabric.faults): log.jsonl, active.json
      netfaults.json             message faults and partitions in force (fabric.faults.network;
                                 read by every daemon, daemons/netfault.py)
      train-<hex>/               one training run's sockets and worker logs (fabric.workloads)

Everything under it belongs to the cluster; `fabric down` removes it whole
(except devices/, versions/ and journal/ with --keep-memory, and logs/ with
--keep-logs; the next `fabric up` in the same dir reattaches kept devices, its
manager recovers the kept regions from the journal, and kept logs are cleared).
A directory holding anything else is not a state dir, and `up`/`down`
refuse to touch it (:meth:`StateDir.check_ours`).
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import stat

from .errors import ClusterError, InvalidArgument

ENV_VAR = "FABRIC_STATE_DIR"
_IPC_PATH_MAX = 100  # sun_path is 108 bytes; keep a margin
#: Every name a cluster may create at the top of its state dir.
ENTRIES = frozenset({"cluster.json", "cluster.json.tmp", "lock", "manager.sock", "nodes",
                     "devices", "engine.seg", "calibration.json", "versions", "logs",
                     "faults", "secret", "netfaults.json", "netfaults.json.tmp", "journal"})
#: Entries made per workload run (fabric.workloads: train-<hex>/ with its sockets and logs).
ENTRY_PREFIXES = ("train-",)


def write_file_atomic(path: str, data: bytes, *, durable: bool = False) -> None:
    """Replace ``path`` with ``data`` at once: readers see the old file or the new one.

    Through ``path + ".tmp"`` (a leftover or planted one is removed first; created
    with O_EXCL | O_NOFOLLOW, mode 0600), then a rename.  ``durable``: fsync the
    file before the rename and the directory after it, so it survives a crash."""
    tmp = path + ".tmp"
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if durable:
        dfd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def default_state_dir() -> str:
    return os.environ.get(ENV_VAR) or f"/dev/shm/cxl-fabric-{os.getuid()}"


class StateDir:
    """Paths inside one cluster's state directory."""

    def __init__(self, path: str | None = None):
        self.path = os.path.abspath(path or default_state_dir())

    def check_socket_paths(self, nodes: list[str]) -> None:
        """InvalidArgument if an ipc socket path would exceed the kernel's limit."""
        longest = max([self.manager_endpoint] + [self.node_endpoint(n) for n in nodes], key=len)
        if len(longest) - len("ipc://") > _IPC_PATH_MAX:
            raise InvalidArgument(f"state dir {self.path!r} is too long for ipc socket paths "
                                  f"({longest!r}); choose a shorter --state-dir")

    def check_ours(self) -> None:
        """ClusterError (one line) unless the state dir is ours to create, use and remove.

        It must be a directory (or not exist yet under a writable parent), belong
        to this user, be writable, and hold nothing but what a cluster creates
        (:data:`ENTRIES`): `fabric down` removes what is in it, so a mistyped
        ``--state-dir $HOME`` must be refused, not emptied.
        """
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            parent = os.path.dirname(self.path)
            while parent and not os.path.exists(parent):
                parent = os.path.dirname(parent)
            if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
                raise ClusterError(f"cannot create state dir {self.path}: "
                                   f"{parent} is not a writable directory") from None
            return
        except OSError as exc:
            raise ClusterError(f"state dir {self.path}: {exc.strerror or exc}") from None
        if stat.S_ISLNK(st.st_mode):
            raise ClusterError(f"state dir {self.path} is a symbolic link; a state dir is "
                               f"never reached through a link: give the real path")
        if not stat.S_ISDIR(st.st_mode):
            raise ClusterError(f"state dir {self.path} is not a directory; "
                               f"choose another --state-dir or ${ENV_VAR}")
        if st.st_uid != os.getuid():
            raise ClusterError(f"state dir {self.path} belongs to uid {st.st_uid}, not to you "
                               f"(uid {os.getuid()}); choose another --state-dir or ${ENV_VAR}")
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise ClusterError(f"state dir {self.path} is not writable; "
                               f"choose another --state-dir or ${ENV_VAR}")
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise ClusterError(f"state dir {self.path} is writable by other users (mode "
                               f"{stat.S_IMODE(st.st_mode):o}); `chmod 700` it or choose another "
                               f"--state-dir")
        try:
            foreign = sorted(n for n in set(os.listdir(self.path)) - ENTRIES
                             if not n.startswith(ENTRY_PREFIXES))
        except OSError as exc:
            raise ClusterError(f"state dir {self.path}: {exc.strerror or exc}") from None
        links = sorted(n for n in os.listdir(self.path)
                       if os.path.islink(os.path.join(self.path, n)))
        if links:
            raise ClusterError(f"state dir {self.path} holds symbolic links "
                               f"({', '.join(repr(n) for n in links[:3])}); nothing in a state "
                               f"dir is followed through a link: remove them")
        if foreign:
            raise ClusterError(f"{self.path} is not a cluster state dir (it holds "
                               f"{', '.join(repr(f) for f in foreign[:3])}"
                               f"{' ...' if len(foreign) > 3 else ''}); choose an empty or new "
                               f"--state-dir")

    # -- paths ------------------------------------------------------------
    @property
    def cluster_file(self) -> str:
        return os.path.join(self.path, "cluster.json")

    @property
    def devices_dir(self) -> str:
        return os.path.join(self.path, "devices")

    @property
    def logs_dir(self) -> str:
        return os.path.join(self.path, "logs")

    @property
    def nodes_dir(self) -> str:
        return os.path.join(self.path, "nodes")

    @property
    def manager_endpoint(self) -> str:
        return "ipc://" + os.path.join(self.path, "manager.sock")

    def node_socket(self, node: str) -> str:
        return os.path.join(self.path, "nodes", f"{node}.sock")

    def node_endpoint(self, node: str) -> str:
        return "ipc://" + self.node_socket(node)

    def node_epoch_path(self, node: str) -> str:
        """Where the newest daemon of ``node`` records its incarnation (fencing)."""
        return os.path.join(self.path, "nodes", f"{node}.inc")

    def device_path(self, device: str) -> str:
        return os.path.join(self.devices_dir, f"{device}.mem")

    @property
    def engine_segment(self) -> str:
        return os.path.join(self.path, "engine.seg")

    @property
    def secret_file(self) -> str:
        return os.path.join(self.path, "secret")

    def make_secret(self) -> None:
        """Write a fresh per-cluster secret (mode 0600, never following a link)."""
        try:
            os.unlink(self.secret_file)
        except FileNotFoundError:
            pass
        fd = os.open(self.secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))

    def read_secret(self) -> str:
        """The cluster's secret, which daemon-to-daemon messages carry; ClusterError if absent."""
        try:
            fd = os.open(self.secret_file, os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd) as f:
                return f.read().strip()
        except OSError as exc:
            raise ClusterError(f"cannot read the cluster secret {self.secret_file}: "
                               f"{exc.strerror or exc}") from None

    @property
    def calibration_file(self) -> str:
        return os.path.join(self.path, "calibration.json")

    @property
    def journal_dir(self) -> str:
        """The fabric manager's journal (its directory on disk; kept with the memory)."""
        return os.path.join(self.path, "journal")

    @property
    def versions_dir(self) -> str:
        return os.path.join(self.path, "versions")

    def versions_path(self, region_id: int) -> str:
        return os.path.join(self.versions_dir, f"{region_id}.ver")

    def mirror_versions_path(self, region_id: int) -> str:
        """The version file of a shared/coherent mirrored region's second copy."""
        return os.path.join(self.versions_dir, f"{region_id}.mirror.ver")

    def mirror_state_path(self, region_id: int) -> str:
        """The shared state word of a mirrored region (which copy is stale, resync lock)."""
        return os.path.join(self.versions_dir, f"{region_id}.mirror")

    def log_path(self, daemon: str, suffix: str = "log") -> str:
        return os.path.join(self.logs_dir, f"{daemon}.{suffix}")

    # -- cluster.json -----------------------------------------------------
    def exists(self) -> bool:
        return os.path.exists(self.cluster_file)

    def read(self) -> dict:
        try:
            with open(self.cluster_file, encoding="utf-8") as f:
                return json.load(f)
        except FileNotFoundError:
            raise ClusterError(f"no cluster in {self.path} (start one with `fabric up`)") from None
        except NotADirectoryError:
            raise ClusterError(f"state dir {self.path} is not a directory") from None
        except (OSError, ValueError) as exc:
            raise ClusterError(f"{self.cluster_file} is unreadable: {exc}") from None

    def write(self, info: dict) -> None:
        write_file_atomic(self.cluster_file,
                          json.dumps(info, indent=1, sort_keys=True).encode())

    @contextlib.contextmanager
    def locked(self):
        """Hold the state dir's lock (one `up`/`down` at a time)."""
        try:
            os.makedirs(self.path, mode=0o700, exist_ok=True)
            fd = os.open(os.path.join(self.path, "lock"),
                         os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            why = "is not a directory" if exc.errno in (errno.EEXIST, errno.ENOTDIR) else \
                (exc.strerror or str(exc)).lower()
            raise ClusterError(f"cannot use state dir {self.path}: {why}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)
