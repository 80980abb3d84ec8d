"""The gradient reduction both modes share, and the ring all-reduce of replicated mode.

The flat gradient is cut into N contiguous chunks (:func:`chunk_bounds`).
Chunk c is always summed in float32 in the same order -- the workers'
gradients from rank c, then c+1, ... wrapping to c-1 (:func:`sum_order`) --
whether the sum is made by a ring of messages (:class:`RingAllreduce`, which
is exactly that order: a ring reduce-scatter starts chunk c at rank c) or
in pooled memory by the chunk's owner (pooled mode).  Same operations in the
same order give bit-identical gradients, so both modes from one seed follow
the same loss curve.

:class:`RingAllreduce` is a real ring over ZeroMQ PUSH/PULL sockets on
``ipc://`` paths: reduce-scatter (N-1 steps), then all-gather (N-1 steps);
each worker sends 2 (N-1)/N of the gradient.  ``charge(peer, nbytes)`` and
``charge_recv(nbytes)`` let the caller price the bytes on the modelled fabric.
"""
from __future__ import annotations

import os
import time
from typing import Callable

import numpy as np
import zmq

from ..errors import FabricTimeout, InvalidArgument
from .model import DTYPE


def chunk_bounds(size: int, nworkers: int, chunk: int) -> tuple[int, int]:
    """Elements [lo, hi) of chunk ``chunk`` of a buffer of ``size`` elements."""
    return chunk * size // nworkers, (chunk + 1) * size // nworkers


def sum_order(chunk: int, nworkers: int) -> list[int]:
    """The ranks whose gradients make chunk ``chunk``, in summation order."""
    return [(chunk + k) % nworkers for k in range(nworkers)]


def endpoint(run_dir: str, rank: int) -> str:
    path = os.path.join(run_dir, f"ring{rank}.sock")
    if len(path.encode()) > 100:
        raise InvalidArgument(f"socket path {path} is too long for ipc:// (max ~100 bytes); "
                              f"use a shorter --state-dir")
    return f"ipc://{path}"


class RingAllreduce:
    """Sum a flat float32 buffer across ``nworkers`` processes, in place.

    Every rank binds a PULL socket (its inbox) and connects a PUSH socket to
    the next rank's inbox.  ``alive()`` is polled while waiting; a receive
    that takes longer than ``timeout_ms`` raises FabricTimeout.
    """

    def __init__(self, run_dir: str, rank: int, nworkers: int, *, timeout_ms: int = 60_000,
                 charge_send: Callable[[int, int], None] | None = None,
                 charge_recv: Callable[[int], None] | None = None,
                 alive: Callable[[], bool] | None = None):
        self.rank, self.n, self.timeout_ms = rank, nworkers, timeout_ms
        self._charge_send = charge_send or (lambda _peer, _n: None)
        self._charge_recv = charge_recv or (lambda _n: None)
        self._alive = alive or (lambda: True)
        self.bytes_sent = 0
        self._ctx = zmq.Context.instance()
        self._inbox = self._ctx.socket(zmq.PULL)
        self._inbox.setsockopt(zmq.LINGER, 0)
        self._inbox.bind(endpoint(run_dir, rank))
        self._next = self._ctx.socket(zmq.PUSH)
        self._next.setsockopt(zmq.LINGER, 0)
        self._next.setsockopt(zmq.SNDTIMEO, timeout_ms)
        self._next.connect(endpoint(run_dir, (rank + 1) % nworkers))
        self._poller = zmq.Poller()
        self._poller.register(self._inbox, zmq.POLLIN)

    def _send(self, step: int, data: np.ndarray) -> None:
        self._charge_send((self.rank + 1) % self.n, data.nbytes)
        try:
            self._next.send(step.to_bytes(4, "little") + data.tobytes(), copy=False)
        except zmq.Again:
            raise FabricTimeout(f"rank {self.rank}: the next rank took no message within "
                                f"{self.timeout_ms} ms") from None
        self.bytes_sent += data.nbytes

    def _recv(self, step: int) -> np.ndarray:
        deadline = time.monotonic() + self.timeout_ms / 1000
        while not self._poller.poll(100):
            if not self._alive():
                raise FabricTimeout(f"rank {self.rank}: the run was abandoned while waiting "
                                    f"for rank {(self.rank - 1) % self.n}")
            if time.monotonic() > deadline:
                raise FabricTimeout(f"rank {self.rank}: no message from rank "
                                    f"{(self.rank - 1) % self.n} within {self.timeout_ms} ms")
        frame = self._inbox.recv(copy=False)
        buf = frame.buffer
        got = int.from_bytes(bytes(buf[:4]), "little")
        if got != step:
            raise InvalidArgument(f"rank {self.rank}: ring out of step (got {got}, want {step})")
        self._charge_recv(len(buf) - 4)
        return np.frombuffer(buf, dtype=DTYPE, offset=4)

    def allreduce(self, flat: np.ndarray, tag: int = 0) -> None:
        """Replace ``flat`` with the sum over all ranks (chunk order: :func:`sum_order`)."""
        n, r, size = self.n, self.rank, flat.shape[0]
        if n == 1:
            return
        seq = (tag * 2 * n) & 0x7FFFFFFF
        for s in range(n - 1):                       # reduce-scatter
            lo, hi = chunk_bounds(size, n, (r - s) % n)
            self._send(seq + s, flat[lo:hi])
            lo, hi = chunk_bounds(size, n, (r - s - 1) % n)
            incoming = self._recv(seq + s)
            # incoming holds ranks c..r-1 of chunk c; add ours last (sum_order)
            np.add(incoming, flat[lo:hi], out=flat[lo:hi])
        for s in range(n - 1):                       # all-gather
            lo, hi = chunk_bounds(size, n, (r + 1 - s) % n)
            self._send(seq + n + s, flat[lo:hi])
            lo, hi = chunk_bounds(size, n, (r - s) % n)
            flat[lo:hi] = self._recv(seq + n + s)

    def close(self) -> None:
        self._inbox.close(0)
        self._next.close(0)
