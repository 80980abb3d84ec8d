"""State dir trust: made private, and refused when another user could have planted
something in it (writable by others, reached through a link, holding links)."""
from __future__ import annotations

import os
import stat

import pytest

import fabric
from fabric.errors import ClusterError


def _start(state_dir):
    return fabric.Cluster.start(hosts=1, devices=1, device_size="16MiB", state_dir=state_dir)


def test_a_new_state_dir_is_private(tmp_path):
    sd = str(tmp_path / "fresh")
    c = _start(sd)
    try:
        assert stat.S_IMODE(os.stat(sd).st_mode) & 0o077 == 0
    finally:
        c.stop()


@pytest.mark.parametrize("mode", [0o777, 0o720, 0o702])
def test_a_state_dir_others_can_write_is_refused(tmp_path, mode):
    sd = tmp_path / "shared"
    sd.mkdir()
    os.chmod(sd, mode)
    with pytest.raises(ClusterError, match="writable by other users"):
        _start(str(sd))
    assert os.listdir(sd) == []


def test_a_state_dir_reached_through_a_link_is_refused(tmp_path):
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(ClusterError, match="symbolic link"):
        _start(str(link))
    assert os.listdir(real) == []


def test_links_planted_inside_are_refused_and_never_followed(tmp_path):
    sd = tmp_path / "sd"
    sd.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (sd / "cluster.json").symlink_to(victim)
    with pytest.raises(ClusterError, match="symbolic link"):
        _start(str(sd))
    with pytest.raises(ClusterError, match="symbolic link"):
        fabric.cluster.stop(str(sd))
    assert victim.read_text() == "precious"


def test_a_device_file_planted_as_a_link_is_not_followed(tmp_path):
    sd = tmp_path / "sd"
    (sd / "devices").mkdir(parents=True, mode=0o700)
    victim = tmp_path / "victim"
    victim.write_bytes(b"x" * 4096)
    (sd / "devices" / "d0.mem").symlink_to(victim)
    with pytest.raises(ClusterError):
        _start(str(sd))
    assert victim.read_bytes() == b"x" * 4096 and victim.stat().st_size == 4096
