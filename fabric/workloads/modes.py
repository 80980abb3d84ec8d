"""The two ways of training one model on N emulated hosts, one step at a time.

- :class:`ReplicatedTrainer`: every host keeps private copies of weights,
  gradients and momentum (anonymous memory of its own process).  Gradients
  are summed with a ring all-reduce over ZeroMQ; every replica applies the
  same update.  The bytes of every message are also priced on the modelled
  fabric: the sender is charged a write of them into the receiver's inbox
  region (pooled memory placed on a device homed on the receiver, policy
  "direct"), the receiver a read of them from it -- a message through
  pooled memory, as hosts on a CXL fabric would pass it.
- :class:`PooledTrainer`: ONE copy of weights and momentum in pooled regions
  (interleaved over the devices by default).  Every host reads the weights
  through charged zero-copy views, writes its gradient into its own pooled
  slot, and after a barrier reduces and updates its 1/N shard of the
  parameters in place; a second barrier ends the step.  No message, no copy
  of the weights.

Both sum gradient chunks in the same order (allreduce.sum_order), so they
produce bit-identical weights.  Every declared access is timed by the
engine; the returned ns go into two histograms: weight reads, and all
charged accesses of the step ("fabric").
"""
from __future__ import annotations

import mmap

import numpy as np

from ..engine import Histogram
from .._waiting import access_waiting
from ..sync import Barrier
from .allreduce import RingAllreduce, chunk_bounds, sum_order
from .data import Dataset, shard_bounds
from .model import (DTYPE, ITEM_BYTES, SGD, Layout, backward, forward, init_params,
                    loss_and_grad_out)

#: Declared accesses are cut into pieces of this size (one engine call each).
ACCESS_PIECE_BYTES = 1 << 20


def private_buffer(nelems: int) -> np.ndarray:
    """A zeroed float32 buffer in memory only this process maps.

    An anonymous *shared* mapping is used because the kernel never merges it
    with neighbouring mappings, so /proc/<pid>/smaps accounts for exactly
    this buffer; no other process maps it (workers never fork), so all of
    its pages are this process's own (PSS = USS).
    """
    m = mmap.mmap(-1, max(nelems * ITEM_BYTES, 1), flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
    return np.frombuffer(m, dtype=DTYPE, count=nelems)


class _Charges:
    """Declares accesses to regions and records what the engine charged.

    A device that is out of reach for a while -- its node daemon down or
    paused, a link cut, the device failed and then restored -- is waited for,
    as a host waits on a stalled memory access: the access is retried until it
    goes through or ``wait_ms`` has passed, then the typed error stands.
    """

    def __init__(self, wait_ms: int = 60_000):
        self.weights = Histogram()
        self.fabric = Histogram()
        self.wait_ms = wait_ms

    def __call__(self, region, offset: int, nbytes: int, write: bool = False,
                 weights: bool = False) -> None:
        end = offset + nbytes
        while offset < end:
            n = min(ACCESS_PIECE_BYTES, end - offset)
            ns = access_waiting(region, offset, n, write, self.wait_ms)
            self.fabric.record(ns)
            if weights:
                self.weights.record(ns)
            offset += n


class _Trainer:
    """What both modes share: model, data shard, optimizer, the step's loss."""

    def __init__(self, session, cfg: dict, rank: int, barrier: Barrier, prefix: str):
        self.s, self.cfg, self.rank, self.n = session, cfg, rank, cfg["hosts"]
        self.barrier, self.prefix = barrier, prefix
        self.layout = Layout(tuple(cfg["layers"]))
        self.data = Dataset(cfg["seed"], self.layout.widths[0], self.layout.widths[-1])
        self.rows = shard_bounds(cfg["batch"], self.n, rank)
        self.opt = SGD(cfg["lr"], cfg["momentum"])
        self.charge = _Charges(cfg["timeout_ms"])
        self.params: np.ndarray
        self._owned: list[str] = []

    def _shard_loss(self, step: int, grads: np.ndarray, read_hook, write_hook) -> float:
        X, y = self.data.batch(step, self.cfg["batch"], self.rows)
        acts = forward(self.layout, self.params, X, read_hook)
        loss, d_out = loss_and_grad_out(acts[-1], y, self.cfg["batch"])
        backward(self.layout, self.params, acts, d_out, grads, read_hook, write_hook)
        return loss

    @property
    def weights_range(self) -> tuple[int, int]:
        """(virtual address, bytes) of this process's view of the weights."""
        return self.params.ctypes.data, self.layout.nbytes

    def free(self) -> None:
        """Free the regions this rank allocated (call after a final barrier)."""
        for name in self._owned:
            self.s.free(name)
        self._owned.clear()


class ReplicatedTrainer(_Trainer):
    """Private weights per host; gradients all-reduced over a ZeroMQ ring."""

    INBOX_BYTES = 1 << 20

    def setup(self, run_dir: str, alive) -> None:
        P = self.layout.size
        self.params, self.grads, self.mom = (private_buffer(P) for _ in range(3))
        init_params(self.layout, self.params, self.cfg["seed"])
        name = f"{self.prefix}.inbox.{self.s.host}"
        self.s.alloc(name, self.INBOX_BYTES, placement="local", share="coherent", policy="direct")
        self._owned.append(name)
        self.barrier.wait()
        hosts = self.cfg["host_names"]
        self._inboxes = {r: self.s.open(f"{self.prefix}.inbox.{hosts[r]}", policy="direct")
                         for r in range(self.n)}
        self.ring = RingAllreduce(run_dir, self.rank, self.n, timeout_ms=self.cfg["timeout_ms"],
                                  charge_send=self._charge_send, charge_recv=self._charge_recv,
                                  alive=alive)
        self.barrier.wait()      # every inbox socket is bound before anyone sends

    def _charge_pieces(self, region, nbytes: int, write: bool) -> None:
        while nbytes > 0:
            n = min(nbytes, region.nbytes)
            self.charge(region, 0, n, write)
            nbytes -= n

    def _charge_send(self, peer: int, nbytes: int) -> None:
        self._charge_pieces(self._inboxes[peer], nbytes, True)

    def _charge_recv(self, nbytes: int) -> None:
        self._charge_pieces(self._inboxes[self.rank], nbytes, False)

    def step(self, step: int) -> float:
        loss = self._shard_loss(step, self.grads, _nop, _nop)
        self.ring.allreduce(self.grads, tag=step)
        self.opt.update(self.params, self.grads, self.mom)
        return loss

    def close(self) -> None:
        self.ring.close()


class PooledTrainer(_Trainer):
    """One copy of the weights in pooled memory; reduce-scatter in memory."""

    def setup(self, run_dir: str, alive) -> None:
        P, nbytes = self.layout.size, self.layout.nbytes
        placement = self.cfg["placement"]
        if self.rank == 0:
            for what in ("weights", "momentum"):
                name = f"{self.prefix}.{what}"
                self.s.alloc(name, nbytes, placement=placement, share="coherent")
                self._owned.append(name)
            w = self.s.open(f"{self.prefix}.weights")
            init_params(self.layout, w.ndarray(DTYPE, P), self.cfg["seed"])
            self.charge(w, 0, nbytes, write=True)
        slot = f"{self.prefix}.grad.{self.s.host}"
        self.s.alloc(slot, nbytes, placement="local", share="coherent")
        self._owned.append(slot)
        self.barrier.wait()
        self.w = self.s.open(f"{self.prefix}.weights")
        self.m = self.s.open(f"{self.prefix}.momentum")
        hosts = self.cfg["host_names"]
        self.slots = [self.s.open(f"{self.prefix}.grad.{hosts[r]}") for r in range(self.n)]
        self.params = self.w.ndarray(DTYPE, P)          # a view of pooled memory, no copy
        self.mom = self.m.ndarray(DTYPE, P)
        self.slot_arrays = [g.ndarray(DTYPE, P) for g in self.slots]
        self.lo, self.hi = chunk_bounds(P, self.n, self.rank)
        self.acc = private_buffer(self.hi - self.lo)
        self.barrier.wait()

    def _read_w(self, layer: int) -> None:
        off, nbytes = self.layout.byte_range(layer)
        self.charge(self.w, off, nbytes, weights=True)

    def _write_g(self, layer: int) -> None:
        off, nbytes = self.layout.byte_range(layer)
        self.charge(self.slots[self.rank], off, nbytes, write=True)

    def step(self, step: int) -> float:
        loss = self._shard_loss(step, self.slot_arrays[self.rank], self._read_w, self._write_g)
        self.barrier.wait()                            # every gradient slot is written
        lo, hi = self.lo, self.hi
        off, nbytes = lo * ITEM_BYTES, (hi - lo) * ITEM_BYTES
        order = sum_order(self.rank, self.n)
        for src in order:
            self.charge(self.slots[src], off, nbytes)
        parts = [self.slot_arrays[src][lo:hi] for src in order]
        if len(parts) == 1:
            grad = parts[0]                            # one worker: its slot is the sum
        else:                                          # ((g_c + g_c+1) + g_c+2) + ...
            grad = np.add(parts[0], parts[1], out=self.acc)
            for part in parts[2:]:
                grad += part
        self.charge(self.m, off, nbytes)
        self.charge(self.w, off, nbytes, weights=True)
        self.opt.update(self.params[lo:hi], grad, self.mom[lo:hi])
        self.charge(self.m, off, nbytes, write=True)
        self.charge(self.w, off, nbytes, write=True, weights=True)
        self.barrier.wait()                            # every shard is updated
        return loss

    def close(self) -> None:
        pass


def _nop(_layer: int) -> None:
    pass


TRAINERS = {"replicated": ReplicatedTrainer, "pooled": PooledTrainer}
