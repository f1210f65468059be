"""Layers and networks whose weights live on crossbars: forward, derivatives and explicit caches.

A crossbar layer (:class:`Dense`, or :class:`xbar.conv.Conv2d`) computes ``a = cols W + b`` with W
stored (rows, out) and then, all in digital periphery, an optional batch norm, the activation and
a tail of pooling / dropout: ``z = tail(f(bn(a)))``. For Dense the rows are the input itself
(cols = x); a convolution presents W as (k·k·C_in, C_out) and turns its input into im2col rows,
one per output position, so the crossbar and the update schemes treat both alike. Where W lives
is decided from outside (by the update scheme in :mod:`xbar.train.updates`):

- ``layer.crossbar is None``: W is a plain float32 matrix in digital memory (update "float");
- otherwise the forward pass is ``crossbar.mvm(cols)`` on the programmed, quantized, noisy devices
  and :meth:`CrossbarLayer.backward_input` is ``crossbar.mvm_t(delta)``: Wᵀ read from the same arrays.

Layers do not know which training rule runs: a rule (:mod:`xbar.train.rules`) decides what
travels backward and calls :meth:`CrossbarLayer.local_delta` (back through the tail, f'(a) and the
batch norm) to get delta = dL/da at the crossbar's outputs.

Sizes: ``n_in``, ``n_out`` are W's shape (crossbar rows and columns; what the update schemes
use); ``in_size``, ``out_size`` are the widths of the flat (batch, features) arrays that travel
between layers (what DFA, HSIC and SG see). They coincide for a Dense layer without a tail.
Feature maps travel as (batch, H·W·C) rows, channels last; a network's input rows are the
dataset's C×H×W order, which the first convolution transposes.

Binary weights (BinaryConnect / BNN / XNOR-Net): with ``weights = "binary"`` the
layer stores real latent weights W, clipped to [-1, 1] after every optimizer step
(``post_update``), and uses Ŵ = sign(W) (optionally times α_j = mean_i |W_ij| per output column,
``scale = "mean"``) for the forward and backward passes and for programming the devices.

A network is described by a TOML preset in ``networks/`` (see :class:`NetworkSpec`); its number
of classes (and, for MLPs, its input size) come from the dataset.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import (
    Field,
    check_keys,
    find_preset,
    load_toml,
    preset_names,
    suggest,
    validate_fields,
    validate_value,
    where_text,
)
from .errors import ConfigError, ShapeError
from .tile.arrays import check_fits, crossbar_bytes

# ---- activations: value and derivative side by side -------------------------------------------
# Each entry: f(a) -> z, and backward(g, a, z) -> g * f'(a) (new array).


def _relu(a):
    return np.maximum(a, 0, dtype=a.dtype)


def _relu_back(g, a, z):
    return g * (a > 0)


def _tanh_back(g, a, z):
    return g * (1 - z * z)


def _sigmoid(a):
    # 0.5 (1 + tanh(a/2)) never overflows, unlike 1 / (1 + exp(-a)) for large negative a.
    return (np.tanh(a * np.float32(0.5)) + 1) * np.float32(0.5)


def _sigmoid_back(g, a, z):
    return g * (z * (1 - z))


def _hardtanh(a):
    return np.clip(a, -1, 1)


def _hardtanh_back(g, a, z):
    # torch's hardtanh_backward: zero at and beyond the kinks.
    return g * ((a > -1) & (a < 1))


def _sign(a):
    return np.where(a >= 0, np.float32(1), np.float32(-1))


def _sign_back(g, a, z):
    # Clipped straight-through estimator (BinaryConnect/BNN): pass where |a| <= 1.
    return g * (np.abs(a) <= 1)


def _identity_back(g, a, z):
    return g


ACTIVATIONS: dict[str, tuple[Callable, Callable]] = {
    "relu": (_relu, _relu_back),
    "tanh": (np.tanh, _tanh_back),
    "sigmoid": (_sigmoid, _sigmoid_back),
    "hardtanh": (_hardtanh, _hardtanh_back),
    "sign": (_sign, _sign_back),
    "identity": (lambda a: a, _identity_back),
}
HIDDEN_ACTIVATIONS = ("relu", "tanh", "sigmoid", "hardtanh", "sign", "identity")
OUTPUTS = ("log_softmax", "mse")
LAYER_KINDS = ("dense", "conv", "maxpool", "avgpool", "dropout", "flatten", "add")


# ---- output losses: value and error dL/da side by side -----------------------------------------

def log_softmax(a: np.ndarray) -> np.ndarray:
    """log softmax over the last axis, shifted by the row max so exp never overflows."""
    s = a - a.max(axis=1, keepdims=True)
    return s - np.log(np.exp(s).sum(axis=1, keepdims=True))


def loss_and_error(output: str, a: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean batch loss and e = dL/da for the output pre-activation a (batch, classes).

    log_softmax: L = -mean_i log softmax(a_i)[y_i] (torch's log_softmax + nll_loss);
        e = (softmax(a) - onehot(y)) / batch.
    mse: L = mean over all elements of (a - onehot(y))² (torch's mse_loss); e = 2 (a - onehot) / a.size.
    """
    n = a.shape[0]
    rows = np.arange(n)
    if output == "log_softmax":
        lp = log_softmax(a)
        loss = -float(lp[rows, y].mean(dtype=np.float64))
        e = np.exp(lp)
        e[rows, y] -= 1
        e *= np.float32(1.0 / n)
        return loss, e
    d = a.copy()
    d[rows, y] -= 1
    loss = float(np.mean(d * d, dtype=np.float64))
    d *= np.float32(2.0 / d.size)
    return loss, d


# ---- layers -------------------------------------------------------------------------------------

WEIGHTS = ("real", "binary")
SCALES = ("none", "mean")

# Network.predict keeps the largest im2col matrix of one chunk under this many float32 values
# (64 MB): a VGG layer's im2col rows are 9·C_in values for every pixel of every image.
PREDICT_BUDGET = 1 << 24


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


def sign(W: np.ndarray) -> np.ndarray:
    """sign with sign(0) = +1 (a binary weight or activation is never 0), float32."""
    return np.where(W >= 0, np.float32(1), np.float32(-1))


def binarize(W: np.ndarray, scale: str = "none") -> np.ndarray:
    """Ŵ = sign(W), or α_j·sign(W) with α_j = mean_i |W_ij| per output column (XNOR-Net,
    Rastegari et al. 2016, scale "mean"); W (rows, out), a new float32 array."""
    out = sign(W)
    if scale == "mean":
        out *= np.mean(np.abs(W), axis=0, dtype=np.float32)[None, :]
    return out


def binary_grad(W: np.ndarray, G: np.ndarray, scale: str = "none") -> np.ndarray:
    """dL/dW for the latent weights W given G = dL/dŴ, through the clipped straight-through
    estimator of sign (∂sign(w)/∂w := 1{|w| ≤ 1}, BinaryConnect/BNN).

    scale "mean": Ŵ_ij = α_j s_ij with α_j = (1/K) Σ_k |W_kj| (K rows), so by the chain rule
    dL/dW_ij = G_ij α_j 1{|W_ij| ≤ 1} + sign(W_ij)/K · Σ_k G_kj s_kj (the exact derivative of
    the forward function with the STE in place of sign'; torch autograd gives the same).
    """
    ste = np.abs(W) <= 1
    if scale == "none":
        return G * ste
    K = W.shape[0]
    alpha = np.mean(np.abs(W), axis=0, dtype=np.float32)
    common = np.einsum("ij,ij->j", G, sign(W)) * np.float32(1.0 / K)
    return G * (alpha[None, :] * ste) + np.sign(W) * common[None, :]


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
    def _cols(self, x: np.ndarray) -> np.ndarray:
        """The crossbar's input rows for layer input x (batch, in_size)."""
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
        cols = self._cols(x)
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
            z = y.reshape(batch, -1)
        else:
            z = za if za.shape[0] == batch else za.reshape(batch, -1)
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
        out = [dW] if self.b is None else [dW, delta.sum(axis=0)]
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


class Network:
    """A stack of crossbar layers and an output loss; forward returns explicit caches for the rules.

    input_shape: (C, H, W) of one input row when the network has convolutions, else None.

    Skip connections (ResNets): a layer's tail may hold residual additions
    (:class:`xbar.conv.Residual`, z = f(y + s)) whose s is the output of an earlier layer (its
    index, or -1 for the network's input), and a layer may be a ``branch`` (a projection
    shortcut): it reads the same input as the layer after it, and only additions read its output.
    Layers stay one list in execution order, so the rules and update schemes see crossbar layers
    as before; the additions send their gradients to their sources' caches
    (:meth:`CrossbarLayer.local_delta`).
    """

    def __init__(self, layers: list[CrossbarLayer], output: str = "log_softmax", name: str = "custom",
                 input_shape: tuple[int, int, int] | None = None):
        if output not in OUTPUTS:
            raise ConfigError(f"output = {output!r}: expected one of {', '.join(map(repr, OUTPUTS))}"
                              + suggest(output, OUTPUTS))
        self.layers = layers
        self.output = output
        self.name = name
        self.input_shape = input_shape
        self._graph  # noqa: B018 (a bad graph fails here, not at the first batch)

    @property
    def _graph(self) -> dict | None:
        """None for a plain chain; else the skip sources of every layer and where branches read
        (derived from the layers each time, so layers changed after construction are seen)."""
        sources = [[op.source for op in layer.tail if getattr(op, "takes_skip", False)] for layer in self.layers]
        if not any(sources) and not any(layer.branch for layer in self.layers):
            return None
        if self.layers and self.layers[-1].branch:
            raise ShapeError("the output layer cannot be a branch layer")
        chain_src, src = [], -1
        for i, (layer, srcs) in enumerate(zip(self.layers, sources)):
            for s in srcs:
                if not -1 <= s < i:
                    raise ShapeError(f"layer {i} ({layer!r}): a residual addition reads layer {s}; it must "
                                     f"read an earlier layer (0..{i - 1}) or the input (-1)")
            chain_src.append(src)
            if not layer.branch:
                src = i
        return {"sources": sources, "chain_src": chain_src, "keep": {s for srcs in sources for s in srcs}}

    def _input_maps(self, x: np.ndarray) -> np.ndarray:
        """The network's input rows as a skip value: channels last, like every layer's output."""
        if self.input_shape is None or self.input_shape[0] == 1:
            return x
        C, H, W = self.input_shape
        return np.ascontiguousarray(x.reshape(-1, C, H, W).transpose(0, 2, 3, 1)).reshape(len(x), -1)

    def _run(self, x: np.ndarray, train: bool, keep: bool) -> tuple[np.ndarray, list[Cache]]:
        """Forward through a network with skip connections (keep: link the caches for backward)."""
        g = self._graph
        caches: list[Cache] = []
        outs: dict[int, np.ndarray] = {}
        chain = x
        for i, layer in enumerate(self.layers):
            skips = None
            if g["sources"][i]:
                skips = [(outs[s] if s >= 0 else self._input_maps(x), caches[s] if keep and s >= 0 else None)
                         for s in g["sources"][i]]
            z, c = layer.forward(chain, train, skips)
            if keep:
                if layer.branch and g["chain_src"][i] >= 0:
                    c.chain_source = caches[g["chain_src"][i]]
                caches.append(c)
            if i in g["keep"]:
                outs[i] = z
            if not layer.branch:
                chain = z
        return chain, caches

    def forward(self, x: np.ndarray, train: bool = True) -> tuple[np.ndarray, list[Cache]]:
        """Output pre-activation (batch, classes) and one cache per layer (train: batch statistics
        and dropout, see CrossbarLayer.forward)."""
        if self._graph is not None:
            return self._run(x, train, True)
        caches = []
        for layer in self.layers:
            x, c = layer.forward(x, train)
            caches.append(c)
        return x, caches

    def eval_batch(self, batch_size: int) -> int:
        """Rows per chunk in predict: batch_size, less where one chunk's im2col would pass
        PREDICT_BUDGET values."""
        per_sample = max(getattr(layer, "cols_per_sample", layer.n_in) for layer in self.layers)
        return max(1, min(batch_size, PREDICT_BUDGET // max(per_sample, 1)))

    def predict(self, X: np.ndarray, batch_size: int = 1000) -> np.ndarray:
        """Output pre-activations for all rows of X, in inference mode (running batch-norm
        statistics, no dropout), in batches; no caches kept."""
        bs = self.eval_batch(batch_size)
        outs = []
        for i in range(0, len(X), bs):
            x = X[i:i + bs]
            if self._graph is not None:
                x, _ = self._run(x, False, False)
            else:
                for layer in self.layers:
                    x, _ = layer.forward(x, False)
            outs.append(x)
        return np.concatenate(outs) if outs else np.zeros((0, self.layers[-1].n_out), np.float32)

    def loss(self, a: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        return loss_and_error(self.output, a, y)

    def calibrate(self, X: np.ndarray) -> None:
        """Set every crossbar's ADC full scale from a batch X of network inputs, each layer on its
        own inputs in inference mode (skip connections followed); layers without ADCs are skipped."""
        g = self._graph
        if g is None:
            x = X
            for layer in self.layers:
                if layer.crossbar is None or layer.crossbar.adc_bits is None:
                    return
                x = layer.calibrate(x)
            return
        outs: dict[int, np.ndarray] = {}
        chain = X
        for i, layer in enumerate(self.layers):
            if layer.crossbar is not None and layer.crossbar.adc_bits is not None:
                layer.crossbar.calibrate(layer._cols(chain))
            skips = [(outs[s] if s >= 0 else self._input_maps(X), None) for s in g["sources"][i]] or None
            z, _ = layer.forward(chain, False, skips)
            if i in g["keep"]:
                outs[i] = z
            if not layer.branch:
                chain = z

    def params(self) -> list[np.ndarray]:
        return [p for layer in self.layers for p in layer.params()]

    def fold_batchnorm(self) -> None:
        """Fold every layer's batch norm into its weights and bias (CrossbarLayer.fold_batchnorm)."""
        for layer in self.layers:
            layer.fold_batchnorm()

    def __repr__(self) -> str:
        return f"Network({self.name}: " + ", ".join(map(repr, self.layers)) + f", {self.output})"


# ---- network specs (networks/*.toml) --------------------------------------------------------------

CROSSBAR_KINDS = ("dense", "conv")
MAX_UNITS = 1_000_000   # per layer; what the whole network may take is checked against memory
SPEC_FIELDS: tuple[Field, ...] = (
    Field("name", "str", "custom", "Preset name."),
    Field("source", "str", "", "Citation: where the architecture comes from."),
    Field("description", "str", "", "One line for listings."),
    Field("activation", "str", "relu", "Hidden-layer activation.", choices=HIDDEN_ACTIVATIONS),
    Field("output", "str", "log_softmax", "Output: log_softmax + NLL, or MSE on one-hot targets.",
          choices=OUTPUTS),
    Field("bias", "bool", True, "Every layer has a bias (a layer's own `bias` wins)."),
    Field("weights", "str", "real", "Weights of every conv/dense layer unless the layer says otherwise: "
          "real, or binary (sign(w); latent weights clipped to [-1, 1]).", choices=WEIGHTS),
    Field("scale", "str", "none", "Scale of binary weights: none, or mean (α = mean|w| per output "
          "column, XNOR-Net).", choices=SCALES),
    Field("batchnorm", "bool", False, "Batch norm after every hidden conv/dense layer (in digital "
          "periphery, before the activation) unless the layer says otherwise."),
)
# Non-scalar keys validated by hand: `hidden` (list of widths) or `layers` (list of tables),
# `input` ([channels, height, width]) and the `[output_layer]` table.
SPEC_KEYS = tuple(f.name for f in SPEC_FIELDS) + ("hidden", "layers", "input", "output_layer")

_KIND = Field("kind", "str", "dense", "Layer type.", choices=LAYER_KINDS)
# Per-layer overrides of the network's defaults (omitted: the network's value).
_CROSSBAR_OPTIONS: tuple[Field, ...] = (
    Field("activation", "str", None, "Activation (default: the network's).", choices=HIDDEN_ACTIVATIONS,
          optional=True),
    Field("batchnorm", "bool", None, "Batch norm on the outputs, before the activation.", optional=True),
    Field("weights", "str", None, "real or binary.", choices=WEIGHTS, optional=True),
    Field("scale", "str", None, "Scale of binary weights.", choices=SCALES, optional=True),
    Field("bits", "int", None, "This layer's device bits, overriding the run's (binarized networks "
          "keep the first and last layers wider).", lo=1, hi=8, optional=True),
    Field("bias", "bool", None, "The layer has a bias.", optional=True),
    Field("branch", "bool", False, "A side branch (projection shortcut): reads the same input as the "
          "layer after it; only a later add reads its output."),
)
_POOL: tuple[Field, ...] = (
    _KIND, Field("size", "int", 2, "Square window.", lo=1, hi=1024),
    Field("stride", "int", None, "Stride (default: size).", lo=1, hi=1024, optional=True),
    Field("pre_activation", "bool", False, "Pool the conv layer's outputs before its batch norm and "
          "activation (BNN's conv -> pool -> BN -> sign), not after."))
LAYER_FIELDS: dict[str, tuple[Field, ...]] = {
    "dense": (_KIND, Field("units", "int", None, "Output width.", lo=1, hi=MAX_UNITS)) + _CROSSBAR_OPTIONS,
    "conv": (_KIND, Field("filters", "int", None, "Output channels.", lo=1, hi=MAX_UNITS),
             Field("kernel", "int", None, "Square kernel size k (k×k).", lo=1, hi=1024),
             Field("stride", "int", 1, "Stride.", lo=1, hi=1024),
             Field("padding", "int", 0, "Zero padding on every side.", lo=0, hi=1024),
             Field("in_channels", "int", None, "Input channels, checked against the layers before.",
                   lo=1, optional=True)) + _CROSSBAR_OPTIONS,
    "maxpool": _POOL,
    "avgpool": _POOL,
    "dropout": (_KIND, Field("p", "float", 0.5, "Drop probability (training only).", lo=0.0, hi=1.0,
                             hi_open=True),),
    "flatten": (_KIND, Field("size", "int", None, "Expected flattened size, checked.", lo=1, optional=True),),
    "add": (_KIND, Field("from", "int", None, "The [[layers]] index whose output is added (-1: the "
                         "network's input).", lo=-1),
            Field("activation", "str", None, "Activation after the addition (default: the network's).",
                  choices=HIDDEN_ACTIVATIONS, optional=True)),
}
OUTPUT_LAYER_FIELDS: tuple[Field, ...] = tuple(f for f in _CROSSBAR_OPTIONS
                                               if f.name in ("weights", "scale", "bits", "bias"))


@dataclass(frozen=True)
class LayerSpec:
    """One entry of [[layers]] with the network's defaults filled in.

    units: dense width, or conv filters; kernel, stride, padding: conv geometry; size, stride:
    pooling window and step (stride None: size), pre_activation: pooling before the batch norm and
    activation; size: flatten's expected size (None: unchecked);
    p: dropout probability; source: an add's ``from`` (the [[layers]] index whose output it adds,
    -1 for the network's input); branch: a conv/dense side branch; the rest as in
    :class:`CrossbarLayer`.
    """

    kind: str
    units: int | None = None
    activation: str | None = None
    kernel: int | None = None
    stride: int | None = None
    padding: int = 0
    size: int | None = None
    p: float | None = None
    in_channels: int | None = None
    pre_activation: bool = False
    batchnorm: bool = False
    weights: str = "real"
    scale: str = "none"
    bits: int | None = None
    bias: bool = True
    source: int | None = None
    branch: bool = False


def _shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape)) + (" feature maps" if len(shape) == 3 else " values")


@dataclass(frozen=True)
class NetworkSpec:
    """An architecture without its number of classes (and, for MLPs, its input size): both come
    from the dataset.

    TOML: ``hidden = [100, 100]`` is shorthand for dense hidden layers with the network's
    ``activation``; ``[[layers]]`` tables say the same layer by layer and add the other kinds:

    - ``kind = "dense"``: ``units``;
    - ``kind = "conv"``: ``filters``, ``kernel``, ``stride`` (1), ``padding`` (0), ``in_channels``
      (optional, checked);
    - both take ``activation``, ``batchnorm``, ``weights``, ``scale``, ``bits``, ``bias``,
      overriding the network's keys of the same names;
    - ``kind = "maxpool"`` / ``"avgpool"``: ``size`` (2), ``stride`` (size), ``pre_activation``
      (false: pool the layer's outputs; true: pool its crossbar outputs before batch norm and
      activation, BNN's order; then it must directly follow the conv layer);
      ``kind = "dropout"``: ``p``; ``kind = "flatten"``: ``size`` (optional, checked);
    - ``kind = "add"`` (a skip connection, ResNet's z = f(y + s)): ``from`` (the [[layers]] index
      whose output s is, -1 for the network's input; s must have the shape of the current output y)
      and ``activation`` (after the addition; "identity" for none). Like pooling, it runs in the
      periphery of the conv/dense layer before it, after that layer's activation (a ResNet block's
      second conv says ``activation = "identity"`` and the add ``activation = "relu"``);
    - ``branch = true`` on a conv/dense layer (a projection shortcut): it reads the same input as
      the layer after it, and only a later add reads its output (``from`` = its index).

    A conv/dense layer computes crossbar → batch norm → activation; pooling and dropout attach
    to the conv/dense layer before them (they run in its digital periphery), after its activation
    unless a pooling layer says ``pre_activation = true``. Networks with
    convolutions give ``input = [channels, height, width]``, so shapes are checked when the spec
    is loaded (kernel larger than its input, channel mismatch, flatten size, a dense layer on
    feature maps). The output layer is always dense, without activation, followed by ``output``;
    an ``[output_layer]`` table sets its ``weights``, ``scale``, ``bits`` and ``bias``.
    """

    name: str
    source: str
    description: str
    activation: str
    output: str
    bias: bool
    layers: tuple[LayerSpec, ...]
    file: str | None = None
    weights: str = "real"
    scale: str = "none"
    batchnorm: bool = False
    input: tuple[int, int, int] | None = None
    output_layer: LayerSpec = LayerSpec("dense", None, "identity")

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, file: str | None = None) -> NetworkSpec:
        check_keys(data, SPEC_KEYS, file=file)
        scalars = {k: v for k, v in data.items() if k not in ("hidden", "layers", "input", "output_layer")}
        values = validate_fields(SPEC_FIELDS, scalars, file=file)
        if ("hidden" in data) == ("layers" in data):
            raise ConfigError(f"{where_text(file, 'hidden')}: give either hidden = [widths] or "
                              "[[layers]] tables (exactly one of them)")
        defaults = {k: values[k] for k in ("activation", "batchnorm", "weights", "scale", "bias")}
        layers = []
        if "hidden" in data:
            hidden = data["hidden"]
            if not isinstance(hidden, (list, tuple)):
                raise ConfigError(f"{where_text(file, 'hidden')} = {hidden!r}: expected a list of "
                                  "integers >= 1, e.g. [100, 100] (or [] for none)")
            for i, h in enumerate(hidden):
                if isinstance(h, bool) or not isinstance(h, int) or not 1 <= h <= MAX_UNITS:
                    raise ConfigError(f"{where_text(file, f'hidden[{i}]')} = {h!r}: expected an "
                                      f"integer in [1, {MAX_UNITS}]")
                layers.append(LayerSpec("dense", h, **defaults))
        else:
            tables = data["layers"]
            if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
                raise ConfigError(f"{where_text(file, 'layers')}: expected [[layers]] tables")
            layers = [_layer_spec(t, i, defaults, file) for i, t in enumerate(tables)]
        out = data.get("output_layer", {})
        if not isinstance(out, dict):
            raise ConfigError(f"{where_text(file, 'output_layer')}: expected an [output_layer] table "
                              f"with keys {', '.join(f.name for f in OUTPUT_LAYER_FIELDS)}")
        ov = validate_fields(OUTPUT_LAYER_FIELDS, out, file=file, prefix="output_layer.")
        output_layer = LayerSpec("dense", None, "identity", bits=ov["bits"],
                                 **{k: defaults[k] if ov[k] is None else ov[k] for k in ("weights", "scale", "bias")})
        spec = cls(**values, layers=tuple(layers), file=file, output_layer=output_layer,
                   input=_input_shape(data.get("input"), file))
        if spec.input is not None:
            spec._walk(math.prod(spec.input))   # shapes are checked now, not at the first batch
        elif any(layer.kind in ("conv", "maxpool", "avgpool") for layer in layers):
            raise ConfigError(f"{where_text(file, 'input')}: a network with conv or pooling layers needs "
                              "input = [channels, height, width], e.g. [1, 28, 28] for Fashion-MNIST")
        else:
            spec._walk(None)   # order checks (pooling/dropout placement) that need no shapes
        return spec

    @classmethod
    def from_toml(cls, path: str | Path) -> NetworkSpec:
        data = load_toml(path)
        data.setdefault("name", Path(path).stem)
        return cls.from_dict(data, file=str(path))

    @classmethod
    def preset(cls, name: str) -> NetworkSpec:
        """A preset from networks/ by name (unknown names list the known ones), or a TOML path."""
        return cls.from_toml(find_preset("networks", name))

    @staticmethod
    def presets() -> list[str]:
        return preset_names("networks")

    # -- shapes -------------------------------------------------------------------------------
    def _where(self, i: int) -> str:
        return f"{where_text(self.file, f'layers[{i}]')} ({self.layers[i].kind})"

    def _walk(self, n_in: int | None) -> list[tuple[int, ...]]:
        """The input shape of every layer and, last, of the output layer: (C, H, W) for feature
        maps, (n,) for flat vectors (None entries where n_in is unknown). Raises ConfigError naming
        the layer for anything that cannot be built."""
        return self._plan(n_in)[0]

    def _plan(self, n_in: int | None) -> tuple[list[tuple[int, ...]], dict[int, int]]:
        """(_walk's shapes, {index of an add entry: the crossbar layer whose output it adds, -1 for
        the network's input}). Crossbar layers are numbered in order, branches included; pooling,
        dropout and add run in the last non-branch conv/dense layer before them."""
        shape: tuple[int, ...] | None
        if self.input is not None:
            shape = tuple(self.input)
        else:
            shape = None if n_in is None else (int(n_in),)
        input_shape = shape
        shapes: list[tuple[int, ...]] = []
        n_layers, last_main, chain_owner = 0, -1, -1
        after_branch = None             # the index of a branch entry not yet followed by a conv/dense
        value_owner: list[int] = []     # per entry: the layer whose output is the value after it
        value_shape: list = []
        last_touch: dict[int, int] = {}   # layer -> the last entry that changed its output
        unused_branches: dict[int, int] = {}   # layer -> entry
        sources: dict[int, int] = {}
        for i, ls in enumerate(self.layers):
            shapes.append(shape)
            where = self._where(i)
            if ls.pre_activation and not (i > 0 and ((self.layers[i - 1].kind == "conv" and not self.layers[i - 1].branch)
                                                     or self.layers[i - 1].pre_activation)):
                raise ConfigError(f"{where}: pre_activation = true pools a conv layer's outputs before its "
                                  "batch norm and activation: it must come right after that conv layer")
            if ls.kind in ("maxpool", "avgpool", "dropout", "add"):
                if last_main < 0:
                    raise ConfigError(f"{where}: must follow a conv or dense layer (pooling, dropout and "
                                      "residual additions run in that layer's digital periphery)")
                if after_branch is not None:
                    raise ConfigError(f"{where}: follows the branch layer {self._where(after_branch)}; it "
                                      "would run in the layer before the branch, so put it before the branch")
            maps = shape is not None and len(shape) == 3
            if ls.kind in ("conv", "maxpool", "avgpool") and not maps:
                raise ConfigError(f"{where}: needs feature maps, but its input is "
                                  f"{'a flat vector' if shape is None else _shape_text(shape)} (after a dense "
                                  "or flatten layer); put it before those")
            out = shape
            if ls.kind == "conv":
                C, H, W = shape
                k, s, p = ls.kernel, ls.stride, ls.padding
                if ls.in_channels is not None and ls.in_channels != C:
                    raise ConfigError(f"{where}: in_channels = {ls.in_channels}, but its input "
                                      f"({_shape_text(shape)}) has {C} channels")
                if k > H + 2 * p or k > W + 2 * p:
                    raise ConfigError(f"{where}: kernel {k}x{k} is larger than its {H}x{W} input "
                                      f"(padding {p}); use a smaller kernel, more padding or less pooling "
                                      "before it")
                out = (ls.units, (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1)
            elif ls.kind in ("maxpool", "avgpool"):
                C, H, W = shape
                size, step = ls.size, ls.stride or ls.size
                if size > H or size > W:
                    raise ConfigError(f"{where}: window {size}x{size} is larger than its {H}x{W} input; "
                                      "use a smaller size or less pooling before it")
                out = (C, (H - size) // step + 1, (W - size) // step + 1)
            elif ls.kind == "flatten":
                if shape is not None:
                    n = math.prod(shape)
                    if ls.size is not None and ls.size != n:
                        raise ConfigError(f"{where}: size = {ls.size}, but its input ({_shape_text(shape)}) "
                                          f"flattens to {n} values; fix size or the layers before it")
                    out = (n,)
            elif ls.kind == "dense":
                if maps:
                    raise ConfigError(f"{where}: its input is {_shape_text(shape)}; put a [[layers]] "
                                      'kind = "flatten" before it')
                out = (ls.units,)
            elif ls.kind == "add":
                k = ls.source
                if not -1 <= k < i:
                    raise ConfigError(f"{where_text(self.file, f'layers[{i}].from')} = {k}: expected an "
                                      f"earlier [[layers]] index (0..{i - 1}) or -1 for the network's input")
                src, src_shape = (-1, input_shape) if k < 0 else (value_owner[k], value_shape[k])
                if src >= 0 and last_touch[src] > k:
                    j = last_touch[src]
                    raise ConfigError(f"{where}: from = {k}, but {self._where(j)} still changes that layer's "
                                      f"output after it; use from = {j}")
                if src == last_main:
                    raise ConfigError(f"{where}: from = {k} is the output of the layer this addition runs "
                                      "in; a skip connection adds the output of an earlier layer")
                if shape is not None and src_shape is not None and tuple(src_shape) != tuple(shape):
                    raise ConfigError(f"{where}: adds {_shape_text(src_shape)} (the output of "
                                      f"{'the input' if k < 0 else self._where(k)}) to {_shape_text(shape)}; "
                                      "the two paths must give the same shape")
                sources[i] = src
                unused_branches.pop(src, None)
            if ls.kind in CROSSBAR_KINDS:
                if ls.branch:
                    unused_branches[n_layers] = i
                    after_branch = i
                    value_owner.append(n_layers)
                    value_shape.append(out)
                    last_touch[n_layers] = i
                    n_layers += 1
                    continue
                after_branch = None
                last_main = chain_owner = n_layers
                last_touch[n_layers] = i
                n_layers += 1
            elif ls.kind != "flatten":
                last_touch[last_main] = i
            shape = out
            value_owner.append(chain_owner)
            value_shape.append(shape)
        if unused_branches:
            j = next(iter(unused_branches.values()))
            raise ConfigError(f"{self._where(j)}: branch = true, but no later add reads it (from = {j}); "
                              "a branch layer's output goes only to a residual addition")
        if after_branch is not None:
            raise ConfigError(f"{self._where(after_branch)}: a branch layer must be followed by the layer "
                              "that reads the same input; the output layer cannot be one")
        if shape is not None and len(shape) == 3:
            raise ConfigError(f"{where_text(self.file, 'layers')}: the output layer is dense, but the last "
                              f"layer gives {_shape_text(shape)}; end with a [[layers]] kind = \"flatten\"")
        shapes.append(shape)
        return shapes, sources

    def _check_input(self, n_in: int, plan: bool = False):
        if self.input is not None and n_in != math.prod(self.input):
            raise ConfigError(f"network {self.name!r} takes inputs of shape {'x'.join(map(str, self.input))} "
                              f"({math.prod(self.input)} values per sample), but the data has {n_in} values "
                              "per sample; use a dataset of that shape or change input in the network file")
        return self._plan(n_in) if plan else self._walk(n_in)

    def widths(self, n_in: int, n_classes: int) -> list[int]:
        """Flat widths from input to output, one per crossbar layer boundary: e.g. [784, 100, 100,
        10]; for a convolution, the size of its output after its pooling."""
        shapes = self._check_input(n_in)
        out = [n_in]
        seen = False
        for ls, shape in zip(self.layers, shapes):
            if ls.kind in CROSSBAR_KINDS:
                if seen:
                    out.append(math.prod(shape))
                seen = True
        if seen:
            out.append(math.prod(shapes[-1]))
        return out + [n_classes]

    def crossbar_shapes(self, n_in: int, n_classes: int) -> list[tuple[int, int, int]]:
        """(rows, cols, positions) of every crossbar layer's W, output layer last: rows = inputs
        (k·k·C for a convolution), positions = output positions per sample (1 for dense)."""
        shapes = self._check_input(n_in)
        out = []
        for ls, shape in zip(self.layers, shapes):
            if ls.kind == "dense":
                out.append((int(shape[0]), ls.units, 1))
            elif ls.kind == "conv":
                C, H, W = shape
                k, st, pd = ls.kernel, ls.stride, ls.padding
                out.append((C * k * k, ls.units, ((H + 2 * pd - k) // st + 1) * ((W + 2 * pd - k) // st + 1)))
        n_last = n_in if shapes[-1] is None else math.prod(shapes[-1])
        return out + [(int(n_last), int(n_classes), 1)]

    def memory_bytes(self, n_in: int, n_classes: int, tile: tuple[int, int] | None = None,
                     batch_size: int = 64) -> tuple[int, tuple[int, int]]:
        """(rough bytes a training run needs, (rows, cols) of the largest layer).

        tile None: weights in digital memory only (update "float"); else crossbars of that tile
        size, whose per-tile arrays are padded to whole tiles.
        """
        total, largest = 0, (0, 0)
        for rows, cols, pos in self.crossbar_shapes(n_in, n_classes):
            rows += 1   # a bias row (in-situ schemes put the bias on the array)
            # W, its gradient, two optimizer moments (float32) and float64 copies during updates
            total += 32 * rows * cols
            if tile is not None:
                total += crossbar_bytes(rows, cols, tile)
            # im2col rows, outputs and their derivatives for one batch (float32)
            total += 4 * batch_size * pos * (2 * rows + 4 * cols)
            largest = max(largest, (rows - 1, cols), key=lambda rc: rc[0] * rc[1])
        return total, largest

    def check_memory(self, n_in: int, n_classes: int, tile: tuple[int, int] | None = None,
                     batch_size: int = 64, what: str = "") -> None:
        """Refuse (ConfigError) a network whose arrays would not fit in this machine's memory."""
        need, (rows, cols) = self.memory_bytes(n_in, n_classes, tile, batch_size)
        check_fits(need, f"network {self.name!r}" + (f" with tile {tile[0]}x{tile[1]}" if tile else "")
                   + (f" {what}" if what else "") + f" (largest layer {rows}x{cols})",
                   "use fewer units" + (", a smaller tile" if tile else "") + " or a smaller batch")

    def build(self, n_in: int, n_classes: int, rng: np.random.Generator) -> Network:
        """Instantiate the layers (weights drawn from `rng`, layer by layer, W before b)."""
        shapes, sources = self._check_input(n_in, plan=True)
        self.check_memory(n_in, n_classes, batch_size=1)
        layers: list[CrossbarLayer] = []
        main: CrossbarLayer | None = None   # the last non-branch layer: pooling, dropout, add run in it
        for i, (ls, shape) in enumerate(zip(self.layers, shapes)):
            bn = None
            if ls.kind in CROSSBAR_KINDS and ls.batchnorm:
                from .conv import BatchNorm
                bn = BatchNorm(ls.units)
            opts = {"rng": rng, "bias": ls.bias, "weights": ls.weights, "scale": ls.scale, "bits": ls.bits,
                    "batchnorm": bn}
            if ls.kind == "dense":
                layers.append(Dense(shape[0], ls.units, ls.activation, **opts))
            elif ls.kind == "conv":
                from .conv import Conv2d
                # the first layer that is no branch, and the branches before it, read the dataset's rows
                layers.append(Conv2d(shape, ls.units, ls.kernel, ls.activation, stride=ls.stride,
                                     padding=ls.padding, chw_input=main is None and shape[0] > 1, **opts))
            elif ls.kind in ("maxpool", "avgpool"):
                from .conv import Pool
                pool = Pool(ls.kind[:3], ls.size, ls.stride)
                (main.add_head if ls.pre_activation else main.add_tail)(pool)
            elif ls.kind == "dropout":
                from .conv import Dropout
                main.add_tail(Dropout(ls.p, np.random.default_rng(rng.integers(2 ** 63))))
            elif ls.kind == "add":
                from .conv import Residual
                main.add_tail(Residual(sources[i], ls.activation))
            if ls.kind in CROSSBAR_KINDS:
                layers[-1].branch = ls.branch
                if not ls.branch:
                    main = layers[-1]
        ol = self.output_layer
        n_last = n_in if shapes[-1] is None else math.prod(shapes[-1])
        layers.append(Dense(n_last, n_classes, "identity", rng=rng, bias=ol.bias, weights=ol.weights,
                            scale=ol.scale, bits=ol.bits))
        return Network(layers, self.output, self.name, input_shape=self.input)


def _input_shape(value, file) -> tuple[int, int, int] | None:
    if value is None:
        return None
    if (not isinstance(value, (list, tuple)) or len(value) != 3
            or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value)):
        raise ConfigError(f"{where_text(file, 'input')} = {value!r}: expected [channels, height, width], "
                          "three integers >= 1, e.g. [1, 28, 28]")
    return tuple(value)


def _layer_spec(t: dict[str, Any], i: int, defaults: dict[str, Any], file) -> LayerSpec:
    """Validate one [[layers]] table: its kind first, then that kind's keys."""
    prefix = f"layers[{i}]."
    kind = validate_value(_KIND, t.get("kind", "dense"), file=file, prefix=prefix)
    if kind == "conv" and "units" in t and "filters" not in t:
        raise ConfigError(f"{where_text(file, prefix + 'kind')} = 'conv' takes filters = N (output channels), "
                          "not units (the width of kind 'dense')")
    v = validate_fields(LAYER_FIELDS[kind], t, file=file, prefix=prefix)
    if kind == "add":
        return LayerSpec(kind, activation=defaults["activation"] if v["activation"] is None else v["activation"],
                         source=v["from"])
    if kind not in CROSSBAR_KINDS:
        return LayerSpec(kind, size=v.get("size"), stride=v.get("stride"), p=v.get("p"),
                         pre_activation=v.get("pre_activation", False))
    filled = {k: defaults[k] if v[k] is None else v[k] for k in defaults}
    if kind == "dense":
        return LayerSpec(kind, v["units"], bits=v["bits"], branch=v["branch"], **filled)
    return LayerSpec(kind, v["filters"], kernel=v["kernel"], stride=v["stride"], padding=v["padding"],
                     in_channels=v["in_channels"], bits=v["bits"], branch=v["branch"], **filled)
