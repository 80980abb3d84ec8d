"""Regions through the Python API against a real 2-host cluster."""
import numpy as np
import pytest

import fabric
from fabric.errors import (AccessDenied, InvalidArgument, PoolFull, RegionExists,
                           RegionNotFound)

MiB = 1 << 20


def test_alloc_open_free_roundtrip(cluster):
    with cluster.connect("h0") as h0, cluster.connect("h1") as h1:
        r = h0.alloc("w", 3 * MiB, share="shared")
        assert r.devices == ["d0"]  # placement="local": h0's own device
        a = r.ndarray(np.int64, (3, MiB // 8))
        a[:] = np.arange(3 * MiB // 8).reshape(3, -1)
        b = h1.open("w").ndarray(np.int64, (3, MiB // 8))
        assert np.array_equal(a, b)
        assert not b.flags.writeable
        with pytest.raises(ValueError):
            b[0, 0] = 1
        names = [x["name"] for x in h1.regions()]
        assert names == ["w"]
        assert h0.translate(r.address + 4096 + 5) == ("d0", r.info["offsets"][0] + 4101)
        h0.free("w")
        with pytest.raises(RegionNotFound):
            h0.free("w")  # double free
        with pytest.raises(RegionNotFound):
            h1.open("w")


def test_freed_memory_is_zeroed_before_reuse(cluster):
    with cluster.connect("h0") as s:
        r = s.alloc("a", 8 * MiB, placement="d1")
        r.ndarray(np.uint8, 8 * MiB)[:] = 0xAB
        off = r.info["offsets"][0]
        s.free("a")
        # the whole device now: the new region must reuse the scrubbed extent
        r2 = s.alloc("b", 64 * MiB, placement="d1")
        assert r2.info["offsets"][0] == off
        assert not r2.ndarray(np.uint8, 64 * MiB).any()


def test_placements(cluster):
    with cluster.connect("h1") as s:
        assert s.alloc("local", MiB).devices == ["d1"]
        assert s.alloc("pinned", MiB, placement="d0").devices == ["d0"]
        il = s.alloc("il", MiB, placement="interleave", granularity=8192)
        assert il.devices == ["d0", "d1"] and il.stripe_bytes == 8192
        with pytest.raises(InvalidArgument, match="d9"):
            s.alloc("x", MiB, placement="d9")
        with pytest.raises(InvalidArgument, match="granularity"):
            s.alloc("x", MiB, placement="interleave", granularity=1000)
        with pytest.raises(InvalidArgument):
            s.alloc("x", MiB, devices=["d0"])  # devices without interleave


def test_interleaved_region_is_one_array_in_stripe_order(cluster):
    g = 16 << 10
    with cluster.connect("h0") as s:
        r = s.alloc("il", 40 * g + 100, placement="interleave", granularity=g)
        a = r.ndarray(np.uint8, r.nbytes)
        assert a.nbytes == r.nbytes
        a[:] = (np.arange(r.nbytes) // g).astype(np.uint8)
        offs = r.info["offsets"]
        for stripe in range(41):
            dev, off = s.translate(r.address + stripe * g)
            assert dev == ["d0", "d1"][stripe % 2]
            assert off == offs[stripe % 2] + (stripe // 2) * g
            # read the byte straight from the device file: the stripe really lives there
            with open(f"{cluster.state_dir}/devices/{dev}.mem", "rb") as f:
                f.seek(off)
                assert f.read(1)[0] == stripe


def test_access_control(cluster):
    with cluster.connect("h0") as h0, cluster.connect("h1") as h1:
        h0.alloc("priv", MiB)
        with pytest.raises(AccessDenied):
            h1.open("priv")
        h0.alloc("only-h0", MiB, share="coherent", allow=["h0"])
        with pytest.raises(AccessDenied):
            h1.open("only-h0")
        assert h1.alloc("co", MiB, share="coherent").writable
        assert h0.open("co").writable
        h0.alloc("rw-for-h1", MiB, share="shared", allow={"h1": "rw"})
        assert h1.open("rw-for-h1").writable
        with pytest.raises(AccessDenied):
            h1.free("rw-for-h1")  # only the owner frees
        with pytest.raises(InvalidArgument, match="h7"):
            h0.alloc("bad", MiB, share="shared", allow=["h7"])
        with pytest.raises(InvalidArgument):
            h0.alloc("bad", MiB, allow=["h1"])  # private takes no allow list
        assert sorted(x["name"] for x in h1.regions()) == ["co", "rw-for-h1"]


def test_bad_sizes_and_names(cluster):
    with cluster.connect("h0") as s:
        for n in (0, -1):
            with pytest.raises(InvalidArgument):
                s.alloc("z", n)
        with pytest.raises(InvalidArgument, match="larger than the whole pool"):
            s.alloc("huge", 1 << 40)
        with pytest.raises(InvalidArgument):
            s.alloc("f", 1.5)
        for name in ("", "a/b", "x" * 500, "tab\there"):
            with pytest.raises(InvalidArgument):
                s.alloc(name, 4096)
        s.alloc("dup", 4096)
        with pytest.raises(RegionExists):
            s.alloc("dup", 4096)
        with pytest.raises(InvalidArgument):
            s.alloc("s", 4096, share="sometimes")


def test_pool_exhausted(cluster):
    with cluster.connect("h0") as s:
        s.alloc("a", 64 * MiB, placement="d0")
        s.alloc("b", 60 * MiB, placement="d1")
        with pytest.raises(PoolFull):
            s.alloc("c", 8 * MiB)  # 4 MiB left on d1, nothing on d0
        s.alloc("d", 4 * MiB)
        with pytest.raises(PoolFull):
            s.alloc("e", 4096, placement="interleave")


def test_ndarray_bad_dtype_shape_offset(cluster):
    with cluster.connect("h0") as s:
        r = s.alloc("r", 4096)
        assert r.ndarray("f8", (512,)).shape == (512,)
        assert r.ndarray(np.uint8, 0).size == 0
        for dtype, shape, offset in [("f8", 513, 0), ("f4", (10, 103), 0), ("u1", 1, 4096),
                                     ("f8", 1, 4), ("f4", -1, 0), ("f4", 2, -8),
                                     ("not-a-dtype", 1, 0), (object, 1, 0), ("f4", "ten", 0),
                                     ("f8", (1 << 40, 1 << 40), 0)]:
            with pytest.raises(InvalidArgument):
                r.ndarray(dtype, shape, offset)
        assert r.ndarray("u1", 1, 4095).shape == (1,)


def test_unknown_host_and_no_cluster(cluster, tmp_path):
    with pytest.raises(InvalidArgument, match="h0, h1"):
        cluster.connect("h9")
    with pytest.raises(fabric.errors.ClusterError, match="fabric up"):
        fabric.connect("h0", state_dir=str(tmp_path))


def test_views_outlive_close(cluster):
    with cluster.connect("h0") as s:
        r = s.alloc("v", 4096)
        a = r.ndarray(np.uint32, 1024)
        a[:] = 7
        r.close()
        with pytest.raises(InvalidArgument):
            r.ndarray(np.uint32, 1)
    assert int(a.sum()) == 7 * 1024  # the mapping lives as long as the view
