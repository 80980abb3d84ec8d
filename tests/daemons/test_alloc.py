"""The device extent allocator (daemons/alloc.py) on random alloc/free traces."""
import random

from fabric.daemons.alloc import ExtentAllocator

PAGE = 4096


def test_first_fit_and_coalescing():
    a = ExtentAllocator(16 * PAGE, PAGE)
    x = a.take(4 * PAGE)
    y = a.take(4 * PAGE)
    z = a.take(8 * PAGE)
    assert (x, y, z) == (0, 4 * PAGE, 8 * PAGE)
    assert a.take(PAGE) is None and a.free_bytes == 0
    a.give(y, 4 * PAGE)
    a.give(x, 4 * PAGE)
    a.check()
    assert a.largest_free() == 8 * PAGE  # x and y merged
    a.give(z, 8 * PAGE)
    a.check()
    assert a.largest_free() == 16 * PAGE


def test_random_trace_keeps_invariants(seed):
    rng = random.Random(seed)
    a = ExtentAllocator(256 * PAGE, PAGE)
    live: list[tuple[int, int]] = []
    for _ in range(2000):
        if live and rng.random() < 0.45:
            off, n = live.pop(rng.randrange(len(live)))
            a.give(off, n)
        else:
            n = rng.randint(1, 16) * PAGE
            off = a.take(n)
            if off is not None:
                for o2, n2 in live:
                    assert off + n <= o2 or o2 + n2 <= off, "overlapping extents"
                live.append((off, n))
        a.check()
        assert a.free_bytes == 256 * PAGE - sum(n for _, n in live)
