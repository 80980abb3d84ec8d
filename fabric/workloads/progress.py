"""A one-line progress bar on stderr: step count, loss and ETA.

Drawn only when enabled and stderr is a terminal; otherwise every call is a
no-op, so logs and pipes stay clean.
"""
from __future__ import annotations

import sys
import time

BAR_WIDTH = 24


class Progress:
    def __init__(self, total: int, enabled: bool = True, stream=None):
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = time.monotonic()
        self._drawn = False

    def update(self, done: int, loss: float) -> None:
        if not self.enabled:
            return
        elapsed = time.monotonic() - self.t0
        eta = elapsed / done * (self.total - done) if done else 0.0
        fill = int(BAR_WIDTH * done / self.total)
        bar = "#" * fill + "-" * (BAR_WIDTH - fill)
        self.stream.write(f"\r  [{bar}] step {done}/{self.total}  loss {loss:.5f}  "
                          f"ETA {eta:5.1f} s ")
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\r" + " " * (BAR_WIDTH + 60) + "\r")
            self.stream.flush()
            self._drawn = False
