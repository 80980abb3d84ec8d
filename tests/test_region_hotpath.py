"""The fast paths of Region.access/reading/writing (a remembered checked layout,
plain-int checks) behave exactly like the checked paths: the same charges,
the same errors, read-only views that stay read-only, nothing after close."""
import numpy as np
import pytest

from fabric.errors import AccessDenied, InvalidArgument, SessionClosed

PAGE = 4096


def test_repeated_reading_is_charged_and_read_only_every_time(cluster):
    with cluster.connect("h0") as s:
        r = s.alloc("w", 64 * PAGE)
        with r.writing(np.float32, (16, 256), offset=PAGE) as w:
            w[:] = np.arange(16 * 256, dtype=np.float32).reshape(16, 256)
        calls = s.stats()["calls"]
        views = []
        for _ in range(3):                         # the first checks, the others reuse
            with r.reading(np.float32, (16, 256), offset=PAGE) as a:
                assert a.shape == (16, 256) and not a.flags.writeable
                assert a[3, 5] == 3 * 256 + 5
                a.shape = (256, 16)                # changing one view leaves the next alone
                a.flags.writeable = True           # (numpy allows it: the memory is writable)
                views.append(a)
        assert views[0] is not views[1]
        st = s.stats()
        assert st["calls"] == calls + 3 and st["hits"] >= 3 * 4
        t = s.virtual_time_ns
        assert r.access(PAGE, 4 * PAGE) > 0 and s.virtual_time_ns > t
        assert s.stats()["calls"] == calls + 4


def test_fast_paths_refuse_what_the_checked_paths_refuse(cluster):
    with cluster.connect("h0") as s, cluster.connect("h1") as s1:
        r = s.alloc("w", 8 * PAGE, share="shared")
        with r.reading(np.float32, 1024):          # remembered: (float32, 1024, 0)
            pass
        for shape, offset in ((1024.0, 0), (True, 0), ((1024.0,), 0), (1024, 0.0),
                              (1024, True), (1024, -4)):
            with pytest.raises(InvalidArgument):
                with r.reading(np.float32, shape, offset):
                    pass
        with pytest.raises(InvalidArgument):
            with r.reading(np.float32, 8 * 1024 + 1):   # past the end
                pass
        for off, n in ((0, 8 * PAGE + 1), (-1, 4), (4, -1), (True, 4), (0, 4.0)):
            with pytest.raises(InvalidArgument):
                r.access(off, n)
        assert r.access(0, 8 * PAGE) >= 0 and r.access(np.int64(4), np.uint32(8)) >= 0
        with pytest.raises(InvalidArgument):
            r.access(0, 4, write="yes")
        ro = s1.open("w")                          # another host's region: read-only here
        assert not ro.writable
        with ro.reading(np.uint8, 4):
            pass
        for _ in range(2):
            with pytest.raises(AccessDenied):
                with ro.writing(np.uint8, 4):
                    pass
            with pytest.raises(AccessDenied):
                ro.access(0, 4, write=True)
        # A writing block that raises is still charged as a write, once.
        calls = s.stats()["calls"]
        with pytest.raises(RuntimeError):
            with r.writing(np.uint8, 4) as w:
                w[:] = 9
                raise RuntimeError("body failed")
        assert s.stats()["calls"] == calls + 1
        r.close()
        with pytest.raises(InvalidArgument, match="closed"):
            with r.reading(np.float32, 1024):      # remembered before, refused now
                pass
        with pytest.raises(InvalidArgument, match="closed"):
            r.access(0, 4)


def test_reading_after_session_close_raises_session_closed(cluster):
    s = cluster.connect("h0")
    r = s.alloc("x", 4 * PAGE)
    with r.reading(np.uint8, PAGE):
        pass
    s.close()
    with pytest.raises(SessionClosed):
        with r.reading(np.uint8, PAGE):
            pass
