"""Crossbar layers: the base class (a = cols W + b, z = tail(f(bn(a))), forward caches, derivatives)
and the dense layer; see :mod:`xbar.nn` for the model."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..config import (
    suggest,
)
from ..errors import ConfigError, ShapeError
from ..kernels.reduce import sum_rows
from .functions import ACTIVATIONS, binarize, binary_grad

WEIGHTS = ("real", "binary")
SCALES = ("none", "mean")



@dataclass
class Cache:
    """What a layer's forward pass keeps for its backward pass.

    x: the layer's input (batch, in_size); a: the crossbar's output, the pre-activation before
    batch norm (rows, n_out); z: the layer's output (batch, out_size). Set only where they differ
    from those: cols (the crossbar's input rows; None: x), h (the activation's input, after the
    head ops and the batch norm; None: a), act (the activation's output before the tail, in h's
    shape; None: z), bn (the batch norm's cache), head / tail (one (cache, output shape) per op),
    bn_grads (set by local_delta).

    Skip connections (set only in networks that have them, see :class:`Network`): skip_grads
    collects dL/dz sent by the residual additions that read this layer's output (None until one
    has sent); chain_source is, for a branch layer, the cache of the layer whose output it reads.
    """

    x: np.ndarray
    a: np.ndarray
    z: np.ndarray
    cols: np.ndarray | None = None
    h: np.ndarray | None = None
    act: np.ndarray | None = None
    bn: Any = None
    tail: list | None = None
    head: list | None = None
    bn_grads: list | None = field(default=None, repr=False)
    skip_grads: list | None = field(default=None, repr=False)
    chain_source: Cache | None = field(default=None, repr=False)

    def receive(self, g: np.ndarray) -> None:
        """Add a gradient dL/dz (batch, out_size) that reaches this layer's output by a skip path."""
        if self.skip_grads is None:
            self.skip_grads = []
        self.skip_grads.append(g)


class CrossbarLayer:
    """Base of the layers whose weights sit on a crossbar: a = cols W + b, z = tail(f(bn(a))).

    W (n_in, n_out) float32 and b (n_out,) float32 are initialised like torch's nn.Linear and
    nn.Conv2d (Kaiming-uniform with a = √5): U[-1/√n_in, 1/√n_in], n_in the fan-in, drawn from
    `rng`, W before b, so float runs are comparable with torch baselines.

    activation: one of ACTIVATIONS ("sign" is the binary activation, with a clipped STE).
    weights: "real", or "binary" (Ŵ = sign(W) in every pass; latent W clipped to [-1, 1]).
    scale: for binary weights, "none" or "mean" (α_j = mean|W_:j| per output, XNOR-Net).
    bits: None (the run's devices), or this layer's own device bits (binarized networks keep the
        first and last layers wider); read by the update scheme when it builds the crossbar.
    batchnorm: None or an :class:`xbar.conv.BatchNorm` over the n_out columns, in digital
        periphery right after the ADC (so it folds into the column gain and offset).
    crossbar: None (weights in digital memory) or an :class:`xbar.Crossbar` holding Ŵ (and b as
        its digital bias); set by the update scheme, which also reprograms it.
    mask: None, or a boolean (n_in, n_out) array of kept weights (pruning): masked weights read as
        zero and receive no gradient.
    tail: ops applied after the activation (pooling, dropout, a residual addition; see add_tail).
    head: pooling applied to the crossbar's outputs before the batch norm and the activation
        (BNN's order conv → pool → BN → sign; see add_head).
    branch: a side branch (a projection shortcut): the layer reads the same input as the layer
        after it, and its output goes only to a later residual addition (see :class:`Network`).
    """

    kind = ""

    def __init__(self, n_in: int, n_out: int, activation: str = "relu", *, rng: np.random.Generator,
                 bias: bool = True, weights: str = "real", scale: str = "none", bits: int | None = None,
                 batchnorm=None):
        for name, value, choices in (("activation", activation, ACTIVATIONS), ("weights", weights, WEIGHTS),
                                     ("scale", scale, SCALES)):
            if value not in choices:
                raise ConfigError(f"{name} = {value!r}: expected one of " + ", ".join(map(repr, choices))
                                  + suggest(str(value), choices))
        self.n_in, self.n_out = int(n_in), int(n_out)
        self.in_size, self.out_size = self.n_in, self.n_out
        self.activation = activation
        self._f, self._back = ACTIVATIONS[activation]
        bound = 1.0 / math.sqrt(self.n_in)
        self.W = rng.uniform(-bound, bound, (self.n_in, self.n_out)).astype(np.float32)
        self.b = rng.uniform(-bound, bound, self.n_out).astype(np.float32) if bias else None
        self.crossbar = None
        self.mask: np.ndarray | None = None
        self.weights, self.scale, self.bits = weights, scale, bits
        if batchnorm is not None and batchnorm.n != self.n_out:
            raise ShapeError(f"batchnorm: expected {self.n_out} channels, got {batchnorm.n}")
        self.bn = batchnorm
        self.tail: list = []
        self.head: list = []
        self.branch = False
        if weights == "binary":
            # The trainer calls post_update() after every optimizer step on layers that have it.
            self.post_update = self.clip_latent

    # -- parameters ---------------------------------------------------------------------------
    def params(self) -> list[np.ndarray]:
        """The trainable arrays, updated in place by an optimizer: W, then b, then the batch norm's
        γ and β, each where present (grads returns the same order)."""
        out = [self.W] if self.b is None else [self.W, self.b]
        return out if self.bn is None else out + self.bn.params()

    def set_weights(self, W, b=None) -> None:
        """Copy W (n_in, n_out) and b (n_out,) into the layer (in place, so optimizers keep their state)."""
        W = np.asarray(W, dtype=np.float32)
        if W.shape != self.W.shape:
            raise ShapeError(f"W: expected shape {self.W.shape}, got {W.shape}")
        self.W[...] = W
        if b is not None:
            if self.b is None or np.shape(b) != self.b.shape:
                raise ShapeError(f"b: expected shape {None if self.b is None else self.b.shape}, "
                                 f"got {np.shape(b)}")
            self.b[...] = b

    def set_mask(self, mask) -> None:
        """Keep only weights where mask is True (pruning); None removes the mask."""
        if mask is not None:
            mask = np.asarray(mask, dtype=bool)
            if mask.shape != self.W.shape:
                raise ShapeError(f"mask: expected shape {self.W.shape}, got {mask.shape}")
        self.mask = mask
        if mask is not None:
            self.W *= mask

    def stored_weights(self) -> np.ndarray:
        """The weights to program or multiply by: W (binarized for binary layers), masked entries at zero."""
        W = self.W if self.mask is None else self.W * self.mask
        if self.weights == "binary":
            W = binarize(W, self.scale)
            if self.mask is not None:
                W *= self.mask
        return W

    def program(self, cells: np.ndarray | None = None) -> None:
        """Write the stored weights (and bias) onto the crossbar, if the layer has one.

        cells: None, or the boolean (n_in, n_out) cells to write (the rest keep their conductance).
        """
        if self.crossbar is not None:
            # pruned cells (mask) are left unprogrammed at g_min and leave the crossbar's statistics
            self.crossbar.program(self.stored_weights(), self.b, mask=self.mask, cells=cells)

    def calibrate(self, x: np.ndarray) -> np.ndarray:
        """Set the crossbar's ADC full scale from a batch of this layer's inputs x (batch, in_size)
        (for a convolution, from its im2col rows); returns the layer's inference-mode output, the
        next layer's calibration batch."""
        if self.crossbar is not None:
            self.crossbar.calibrate(self._cols(x))
        return self.forward(x, False)[0]

    def clip_latent(self) -> None:
        """Clip the latent weights of a binary layer to [-1, 1] (BinaryConnect), in place."""
        np.clip(self.W, -1, 1, out=self.W)

    def add_tail(self, op) -> None:
        """Append an op (xbar.conv.Pool, Dropout) applied after the activation."""
        self.tail.append(op)

    def add_head(self, op) -> None:
        """Append an op (xbar.conv.Pool) applied to the crossbar's outputs, before the batch norm
        and the activation."""
        if self.tail:
            raise ShapeError(f"{self!r}: a pre-activation op must come before the tail ops")
        self.head.append(op)

    # -- shape hooks (Dense: identities; Conv2d: im2col and feature maps) ------------------------
    def _cols(self, x: np.ndarray, lazy: bool = False) -> np.ndarray:
        """The crossbar's input rows for layer input x (batch, in_size); lazy: rows that only a
        crossbar read takes (a convolution's im2col rows without their matrix, Patches)."""
        return x

    def _uncols(self, d: np.ndarray) -> np.ndarray:
        """The adjoint of _cols: gradients on the rows -> gradients on the input (batch, in_size)."""
        return d

    def _map(self, za: np.ndarray, batch: int) -> np.ndarray:
        """The activation output (rows, n_out) in the shape the tail ops take."""
        return za

    def _crossbar_map(self, a: np.ndarray, batch: int) -> np.ndarray:
        """The crossbar's outputs (rows, n_out) in the shape the head ops take."""
        return a

    # -- forward / backward -------------------------------------------------------------------
    def forward(self, x: np.ndarray, train: bool = True, skips: list | None = None) -> tuple[np.ndarray, Cache]:
        """z (batch, out_size) for x (batch, in_size) float32, and the cache for backward.

        train: batch norm uses (and updates the running averages of) the batch statistics and
        dropout drops; False: running statistics folded into a column gain and offset, no dropout.
        skips: for the tail's residual additions, in order, (value, cache of its source or None);
        the Network passes them.
        """
        cols = self._cols(x, lazy=not train and self.crossbar is not None)   # (inference: no gradients)
        if self.crossbar is not None:
            a = self.crossbar.mvm(cols)
        else:
            a = cols @ self.stored_weights()
            if self.b is not None:
                a += self.b
        batch = x.shape[0]
        head_caches = None
        h = a
        if self.head:
            y = self._crossbar_map(a, batch)
            head_caches = []
            for op in self.head:
                y, c = op.forward(y, train)
                head_caches.append((c, y.shape))
            h = y.reshape(-1, self.n_out)
        bn_cache = None
        if self.bn is not None:
            h, bn_cache = self.bn.forward(h, train)
        za = self._f(h)
        tail_caches = None
        if self.tail:
            y = self._map(za, batch)
            tail_caches = []
            k = 0
            for op in self.tail:
                if getattr(op, "takes_skip", False):
                    if skips is None or k >= len(skips):
                        raise ShapeError(f"{self!r}: its residual addition needs the skip value; run it "
                                         "inside its Network")
                    y, c = op.forward(y, train, skips[k])
                    k += 1
                else:
                    y, c = op.forward(y, train)
                tail_caches.append((c, y.shape))
            z = y.reshape(batch, self.out_size)   # (out_size: an empty batch has no -1)
        else:
            z = za if za.shape[0] == batch else za.reshape(batch, self.out_size)
        return z, Cache(x, a, z, cols=None if cols is x else cols, h=None if h is a else h,
                        act=None if za is z else za, bn=bn_cache, tail=tail_caches, head=head_caches)

    def local_delta(self, g: np.ndarray, cache: Cache) -> np.ndarray:
        """dL/da at the crossbar outputs (rows, n_out), for g = dL/dz (batch, out_size) (or whatever
        the rule sends back in its place): back through the tail, f'(·), the batch norm (whose
        gradients it leaves in cache.bn_grads for grads()) and the head.

        Skip connections: gradients that residual additions sent to this layer's output
        (cache.skip_grads) are added to g. A branch layer whose additions have already sent theirs
        (rules that go back layer by layer, bp and fa) takes g as what the next layer sends back to
        their common input, passes it on to the layer that produced that input, and learns from
        the additions' gradients; before they have sent (rules that signal each layer directly),
        g is the signal for its own output."""
        if cache.skip_grads is not None:
            if self.branch:
                if cache.chain_source is not None:
                    cache.chain_source.receive(g)
                g = cache.skip_grads[0]
                for s in cache.skip_grads[1:]:
                    g = g + s
            else:
                for s in cache.skip_grads:
                    g = g + s
        act = cache.z if cache.act is None else cache.act
        if cache.tail is not None:
            for op, (c, shape) in zip(reversed(self.tail), reversed(cache.tail)):
                g = op.backward(g.reshape(shape), c)
        g = g.reshape(act.shape)
        d = self._back(g, cache.a if cache.h is None else cache.h, act)
        if self.bn is not None:
            d, dgamma, dbeta = self.bn.backward(d, cache.bn)
            cache.bn_grads = [dgamma, dbeta]
        if cache.head is not None:
            for op, (c, shape) in zip(reversed(self.head), reversed(cache.head)):
                d = op.backward(d.reshape(shape), c)
            d = d.reshape(-1, self.n_out)
        return d

    def backward_input(self, delta: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """delta Wᵀ taken back to the layer's input: (rows, n_out) -> (batch, in_size).

        On a crossbar, the transposed in-memory read. weights: a matrix of W's shape to read
        instead (feedback alignment's fixed B), in digital memory.
        """
        if weights is not None:
            d = delta @ weights.T
        elif self.crossbar is not None:
            d = self.crossbar.mvm_t(delta)
        else:
            d = delta @ self.stored_weights().T
        return self._uncols(d)

    def grads(self, delta: np.ndarray, cache: Cache) -> list[np.ndarray]:
        """Gradients in params() order for delta = dL/da: W gets colsᵀ delta (masked; through the
        STE for binary weights), b the sum over rows, γ and β what local_delta computed."""
        cols = cache.x if cache.cols is None else cache.cols
        dW = cols.T @ delta
        if self.weights == "binary":
            dW = binary_grad(self.W, dW, self.scale)
        if self.mask is not None:
            dW *= self.mask
        out = [dW] if self.b is None else [dW, sum_rows(delta)]
        if self.bn is not None:
            if cache.bn_grads is None:
                raise ShapeError(f"{self!r}: call local_delta before grads (the batch norm's gradients "
                                 "come from it)")
            out += cache.bn_grads
        return out

    def fold_batchnorm(self) -> None:
        """Fold the batch norm's inference transform into the weights, for deployment.

        y = s·a + t per column (s = γ/√(var + ε), t = β − s·mean, running statistics) becomes
        W' = Ŵ·s, b' = b·s + t: on a crossbar with a per-column gain the devices keep their levels
        and only the digital gain and offset change. The layer becomes a real-weight layer without
        batch norm (its params() change: rebuild any optimizer); the crossbar is reprogrammed.
        """
        if self.bn is None:
            return
        s, t = self.bn.fold()
        if np.any(s < 0) and any(getattr(op, "mode", "") == "max" for op in self.head):
            raise ConfigError(f"{self!r}: cannot fold a batch norm with negative gains through the max "
                              "pooling before it (max(s·a) = s·min(a) for s < 0); keep it in the periphery, "
                              "where inference applies it after the pooling")
        W = self.stored_weights() * s[None, :]
        b = t if self.b is None else self.b * s + t
        self.W, self.b = W.astype(np.float32), b.astype(np.float32)
        self.bn = None
        self.weights, self.scale = "real", "none"
        self.__dict__.pop("post_update", None)
        self.program()

    def describe(self) -> str:
        """The layer's pipeline after the crossbar, in order, then where its weights live."""
        parts = ["binary" + ("·mean|w|" if self.scale == "mean" else "")] if self.weights == "binary" else []
        parts += [repr(op) for op in self.head] + (["bn"] if self.bn is not None else [])
        parts = (["branch"] if self.branch else []) + parts
        parts += [self.activation] + [repr(op) for op in self.tail]
        parts.append("float" if self.crossbar is None else repr(self.crossbar))
        return ", ".join(parts)


class Dense(CrossbarLayer):
    """A fully connected layer a = x W + b, z = tail(f(bn(a))); W (in, out), b (out,) float32.

    See :class:`CrossbarLayer` for the options; ``Dense(n_in, n_out, activation, rng=rng,
    bias=True)`` is the plain layer of the MLPs.
    """

    kind = "dense"

    def add_tail(self, op) -> None:
        if getattr(op, "needs_maps", False):
            raise ShapeError(f"{op!r} needs feature maps; a dense layer's outputs are flat")
        super().add_tail(op)

    def add_head(self, op) -> None:
        raise ShapeError(f"{op!r} needs feature maps; a dense layer's outputs are flat")

    def __repr__(self) -> str:
        return f"Dense({self.n_in}->{self.n_out}, {self.describe()})"
