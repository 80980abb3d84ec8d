"""A seeded synthetic regression task whose loss actually falls.

A fixed random "teacher" network (in -> 32 tanh units -> out) labels
standard-normal inputs.  The global batch of step s is drawn from a
generator seeded with (seed, s); worker r of N takes rows
``[r*B//N, (r+1)*B//N)`` of it, so the global batch -- and hence the
training -- is the same for any number of workers.
"""
from __future__ import annotations

import numpy as np

from ..errors import InvalidArgument
from .model import DTYPE

TEACHER_HIDDEN = 32


def shard_bounds(batch: int, nworkers: int, rank: int) -> tuple[int, int]:
    """Rows [lo, hi) of the global batch that ``rank`` of ``nworkers`` trains on."""
    return rank * batch // nworkers, (rank + 1) * batch // nworkers


class Dataset:
    """Inputs of width ``in_dim``, targets of width ``out_dim``, from ``seed``."""

    def __init__(self, seed: int, in_dim: int, out_dim: int):
        if in_dim < 1 or out_dim < 1:
            raise InvalidArgument("in_dim and out_dim must be positive")
        self.seed, self.in_dim, self.out_dim = int(seed), in_dim, out_dim
        rng = np.random.default_rng([self.seed, 0x7EAC])
        self._A = (rng.standard_normal((in_dim, TEACHER_HIDDEN)) / np.sqrt(in_dim)).astype(DTYPE)
        self._B = (rng.standard_normal((TEACHER_HIDDEN, out_dim)) /
                   np.sqrt(TEACHER_HIDDEN)).astype(DTYPE)

    def batch(self, step: int, batch: int, rows: tuple[int, int] | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
        """(X, y) of step ``step``'s global batch, or only ``rows`` = (lo, hi) of it."""
        rng = np.random.default_rng([self.seed, 0xDA7A, int(step)])
        X = rng.standard_normal((batch, self.in_dim), dtype=DTYPE)
        if rows is not None:
            X = X[rows[0]:rows[1]]
        return X, self.teacher(X)

    def teacher(self, X: np.ndarray) -> np.ndarray:
        return np.tanh(X @ self._A) @ self._B
