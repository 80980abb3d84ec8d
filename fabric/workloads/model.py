"""A numpy-only MLP with hand-written forward and backward passes.

Parameters, gradients and optimizer state are each ONE flat float32 buffer;
:class:`Layout` says where each layer's weight matrix and bias live in it and
hands out per-layer views, so the same code trains on a buffer in private
memory (replicated mode) or a view of a pooled region (pooled mode).  Layer l
occupies one contiguous range: ``W_l`` (fan_in x fan_out, row-major) followed
by ``b_l`` (fan_out), which is what the trainers declare to the engine.

Hidden layers use ReLU, the output layer is linear, the loss is the mean
squared error over the global batch and the outputs.  ``read_hook(l)`` is
called before every use of layer l's parameters (forward, and backward where
W is needed to propagate the error), so a trainer can charge the access.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..errors import InvalidArgument

DTYPE = np.float32
ITEM_BYTES = 4
MAX_WIDTH = 1 << 16


@dataclass(frozen=True)
class Layout:
    """Where every layer's parameters live in a flat float32 buffer."""

    widths: tuple[int, ...]

    def __post_init__(self):
        if len(self.widths) < 2:
            raise InvalidArgument(f"an MLP needs at least an input and an output width, "
                                  f"got {list(self.widths)}")
        for w in self.widths:
            if isinstance(w, bool) or not isinstance(w, int) or not 1 <= w <= MAX_WIDTH:
                raise InvalidArgument(f"layer widths must be ints in 1..{MAX_WIDTH}, "
                                      f"got {list(self.widths)}")

    @property
    def nlayers(self) -> int:
        return len(self.widths) - 1

    def shapes(self, layer: int) -> tuple[tuple[int, int], int]:
        return (self.widths[layer], self.widths[layer + 1]), self.widths[layer + 1]

    def layer_range(self, layer: int) -> tuple[int, int]:
        """(first element, element count) of layer ``layer`` (W then b)."""
        start = 0
        for l in range(layer):
            start += (self.widths[l] + 1) * self.widths[l + 1]
        return start, (self.widths[layer] + 1) * self.widths[layer + 1]

    def byte_range(self, layer: int) -> tuple[int, int]:
        start, n = self.layer_range(layer)
        return start * ITEM_BYTES, n * ITEM_BYTES

    @property
    def size(self) -> int:
        """Total parameter count."""
        return sum((self.widths[l] + 1) * self.widths[l + 1] for l in range(self.nlayers))

    @property
    def nbytes(self) -> int:
        return self.size * ITEM_BYTES

    def views(self, flat: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per-layer (W, b) views of ``flat`` (no copy)."""
        if flat.dtype != DTYPE or flat.ndim != 1 or flat.shape[0] < self.size:
            raise InvalidArgument(f"need a flat float32 buffer of >= {self.size} elements")
        out = []
        for l in range(self.nlayers):
            (fi, fo), nb = self.shapes(l)
            start, _ = self.layer_range(l)
            W = flat[start:start + fi * fo].reshape(fi, fo)
            b = flat[start + fi * fo:start + fi * fo + nb]
            out.append((W, b))
        return out


def parse_layers(text: str) -> tuple[int, ...]:
    """``"1024,4096,4096,1024"`` -> widths."""
    try:
        widths = tuple(int(x) for x in str(text).replace(" ", "").split(",") if x)
    except ValueError:
        raise InvalidArgument(f"--layers must be comma-separated widths, got {text!r}") from None
    Layout(widths)
    return widths


def parse_count(text) -> int:
    """``"50M"``, ``"100k"``, ``"8000000"`` -> a parameter count."""
    if isinstance(text, int) and not isinstance(text, bool):
        n = text
    else:
        s = str(text).strip().lower()
        mult = {"k": 10 ** 3, "m": 10 ** 6, "g": 10 ** 9, "b": 10 ** 9}.get(s[-1:], 1)
        try:
            n = int(float(s[:-1] if mult > 1 else s) * mult)
        except ValueError:
            raise InvalidArgument(f"a parameter count such as 100k or 50M, got {text!r}") from None
    if not 1000 <= n <= 2_000_000_000:
        raise InvalidArgument(f"parameter count must be between 1k and 2G, got {n}")
    return n


def widths_for_params(nparams: int) -> tuple[int, ...]:
    """Widths of a 4-layer MLP (3 hidden layers of width h, input and output h/4)
    with about ``nparams`` parameters (2.5 h^2): 100k -> h=192, 50M -> h=4480."""
    h = max(64, int(round(math.sqrt(nparams / 2.5) / 64)) * 64)
    io = max(16, h // 4)
    return (io, h, h, h, io)


def init_params(layout: Layout, flat: np.ndarray, seed: int) -> None:
    """He-normal weights (the output layer scaled down 10x, so the untrained
    model starts near zero), zero biases; written in place, deterministic."""
    rng = np.random.default_rng([seed, 0x5EED])
    for l, (W, b) in enumerate(layout.views(flat)):
        scale = math.sqrt(2.0 / W.shape[0]) * (0.1 if l == layout.nlayers - 1 else 1.0)
        W[...] = rng.standard_normal(W.shape, dtype=DTYPE) * DTYPE(scale)
        b[...] = 0


def _nop(_layer: int) -> None:
    pass


def forward(layout: Layout, params: np.ndarray, X: np.ndarray,
            read_hook: Callable[[int], None] = _nop) -> list[np.ndarray]:
    """Activations [X, a_1, ..., y_hat]; hidden layers are ReLU (applied in place)."""
    acts = [X]
    a = X
    for l, (W, b) in enumerate(layout.views(params)):
        read_hook(l)
        z = a @ W
        z += b
        if l < layout.nlayers - 1:
            np.maximum(z, 0, out=z)
        acts.append(z)
        a = z
    return acts


def loss_and_grad_out(y_hat: np.ndarray, y: np.ndarray, global_batch: int) -> tuple[float, np.ndarray]:
    """This shard's part of the global MSE, and d(loss)/d(y_hat).

    loss = sum over the shard of (y_hat - y)^2 / (global_batch * outputs), so
    the shards' parts add up to the global batch's mean squared error.
    """
    denom = global_batch * y.shape[1]
    diff = y_hat - y
    loss = float(np.dot(diff.ravel().astype(np.float64), diff.ravel().astype(np.float64)) / denom)
    diff *= DTYPE(2.0 / denom)
    return loss, diff


def backward(layout: Layout, params: np.ndarray, acts: Sequence[np.ndarray], d_out: np.ndarray,
             grads: np.ndarray, read_hook: Callable[[int], None] = _nop,
             write_hook: Callable[[int], None] = _nop) -> None:
    """Write every layer's gradient into the flat ``grads`` buffer.

    ``write_hook(l)`` runs after layer l's gradient is written.  ``d_out`` is
    consumed (modified in place).
    """
    pv, gv = layout.views(params), layout.views(grads)
    dz = d_out
    for l in range(layout.nlayers - 1, -1, -1):
        W, _b = pv[l]
        gW, gb = gv[l]
        np.matmul(acts[l].T, dz, out=gW)
        np.sum(dz, axis=0, out=gb)
        write_hook(l)
        if l > 0:
            read_hook(l)
            da = dz @ W.T
            da *= acts[l] > 0            # ReLU'(z) of the layer below
            dz = da


class SGD:
    """SGD with momentum on (slices of) flat buffers: m = mu*m + g; p -= lr*m.

    Elementwise float32 operations only, so updating a buffer whole or in
    shards gives bit-identical results.
    """

    def __init__(self, lr: float, momentum: float = 0.9):
        if not lr > 0 or not 0 <= momentum < 1:
            raise InvalidArgument(f"need lr > 0 and 0 <= momentum < 1, got {lr}, {momentum}")
        self.lr, self.momentum = DTYPE(lr), DTYPE(momentum)

    #: Elements per block: the temporary lr*m stays in cache, no big allocation.
    BLOCK = 1 << 16

    def update(self, p: np.ndarray, g: np.ndarray, m: np.ndarray) -> None:
        for lo in range(0, p.shape[0], self.BLOCK):
            mb = m[lo:lo + self.BLOCK]
            mb *= self.momentum
            mb += g[lo:lo + self.BLOCK]
            p[lo:lo + self.BLOCK] -= self.lr * mb
