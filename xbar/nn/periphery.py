"""The digital periphery around a crossbar layer: pooling, dropout, residual additions and batch
norm (ops a layer runs on its outputs; see :meth:`xbar.nn.CrossbarLayer.add_tail`)."""

from __future__ import annotations

import numpy as np

from ..config import suggest
from ..errors import ShapeError
from .functions import ACTIVATIONS
from .ops import avgpool2d, avgpool2d_backward, conv_out, maxpool2d, maxpool2d_backward


class Pool:
    """Max ("max") or average ("avg") pooling over size×size windows, stride (default size), no
    padding; a tail op of a Conv2d (digital periphery after the activation)."""

    needs_maps = True

    def __init__(self, mode: str, size: int = 2, stride: int | None = None):
        if mode not in ("max", "avg"):
            raise ShapeError(f"pool mode {mode!r}: expected 'max' or 'avg'")
        self.mode, self.size, self.stride = mode, int(size), int(stride or size)

    def out_shape(self, shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """(H, W, C) -> pooled (OH, OW, C)."""
        H, W, C = shape
        oh, ow = conv_out(H, self.size, self.stride), conv_out(W, self.size, self.stride)
        if oh < 1 or ow < 1:
            raise ShapeError(f"{self!r}: window larger than the {H}x{W} input")
        return oh, ow, C

    def forward(self, x: np.ndarray, train: bool = True):
        if self.mode == "max":
            out, arg = maxpool2d(x, self.size, self.stride)
            return out, (arg, x.shape)
        return avgpool2d(x, self.size, self.stride), x.shape

    def backward(self, g: np.ndarray, cache) -> np.ndarray:
        if self.mode == "max":
            arg, shape = cache
            return maxpool2d_backward(g, arg, shape)
        return avgpool2d_backward(g, self.size, self.stride, cache)

    def __repr__(self) -> str:
        step = "" if self.stride == self.size else f"/{self.stride}"
        return f"{self.mode}pool{self.size}{step}"


class Dropout:
    """Inverted dropout: in training each value is kept with probability 1 − p and scaled by
    1/(1 − p) (Srivastava et al. 2014); at inference it is the identity. Masks come from `rng`
    (the network's seed), so a run is reproducible."""

    needs_maps = False

    def __init__(self, p: float, rng: np.random.Generator):
        if not 0 <= p < 1:
            raise ShapeError(f"dropout p = {p!r}: expected a probability in [0, 1)")
        self.p, self.rng = float(p), rng

    def out_shape(self, shape):
        return shape

    def forward(self, x: np.ndarray, train: bool = True):
        if not train or self.p == 0:
            return x, None
        mask = (self.rng.random(x.shape, dtype=np.float32) >= self.p) * np.float32(1.0 / (1.0 - self.p))
        return x * mask, mask

    def backward(self, g: np.ndarray, mask) -> np.ndarray:
        return g if mask is None else g * mask

    def __repr__(self) -> str:
        return f"dropout{self.p:g}"


# ---- residual addition ----------------------------------------------------------------------------

class Residual:
    """A skip connection's addition in a layer's digital periphery (He et al. 2016, ResNet):
    z = f(y + s), y the layer's outputs so far (after its activation and earlier tail ops), s the
    output of layer ``source`` of the network (-1: the network's input), f the activation after
    the addition (ResNet: relu; "identity" for none).

    The Network hands s and the source's cache to forward; backward sends g·f'(y + s), the
    gradient of s, to that cache (:meth:`xbar.nn.Cache.receive`) and returns the same to y.
    """

    needs_maps = False
    takes_skip = True

    def __init__(self, source: int, activation: str = "identity"):
        if activation not in ACTIVATIONS:
            raise ShapeError(f"residual activation {activation!r}: expected one of "
                             + ", ".join(map(repr, ACTIVATIONS)) + suggest(str(activation), ACTIVATIONS))
        self.source, self.activation = int(source), activation
        self._f, self._back = ACTIVATIONS[activation]

    def out_shape(self, shape):
        return shape

    def forward(self, y: np.ndarray, train: bool = True, skip=None):
        if skip is None:
            raise ShapeError(f"{self!r}: the skip value is missing; run the layer inside its Network")
        value, target = skip
        if value.size != y.size:
            raise ShapeError(f"{self!r}: adds {value.size // max(len(value), 1)} values per sample to "
                             f"{y.size // max(len(y), 1)}; the shapes of the two paths differ")
        h = y + value.reshape(y.shape)
        z = self._f(h)
        return z, (h, z, target)

    def backward(self, g: np.ndarray, cache) -> np.ndarray:
        h, z, target = cache
        d = self._back(g, h, z)
        if target is not None:
            target.receive(d.reshape(d.shape[0], -1))
        return d

    def __repr__(self) -> str:
        src = "input" if self.source < 0 else f"L{self.source}"
        return f"add({src})" + ("" if self.activation == "identity" else f"+{self.activation}")


# ---- batch norm -----------------------------------------------------------------------------------

class BatchNorm:
    """Batch normalisation of a crossbar layer's n output columns, in digital periphery (Ioffe &
    Szegedy 2015; torch's BatchNorm1d/2d conventions).

    Training: y = γ·(a − μ_B)/√(σ²_B + ε) + β with the batch's mean and (biased) variance over
    all rows (batch × positions for a convolution); running averages r ← (1 − m)·r + m·stat, the
    variance unbiased (× N/(N − 1)). Inference: the running statistics folded into one gain and
    offset per column, y = s·a + t with s = γ/√(var + ε), t = β − s·mean, which is what the
    hardware applies after the ADC (it multiplies into the column gain α).

    gamma, beta: (n,) float32, trainable (1 and 0 at start); momentum m = 0.1, eps ε = 1e-5.
    """

    def __init__(self, n: int, momentum: float = 0.1, eps: float = 1e-5):
        self.n = int(n)
        self.momentum, self.eps = float(momentum), float(eps)
        self.gamma = np.ones(self.n, np.float32)
        self.beta = np.zeros(self.n, np.float32)
        self.running_mean = np.zeros(self.n, np.float32)
        self.running_var = np.ones(self.n, np.float32)

    def params(self) -> list[np.ndarray]:
        return [self.gamma, self.beta]

    def fold(self) -> tuple[np.ndarray, np.ndarray]:
        """(s, t): the inference transform y = s·a + t per column, float32."""
        s = self.gamma / np.sqrt(self.running_var + np.float32(self.eps))
        return s.astype(np.float32), (self.beta - self.running_mean * s).astype(np.float32)

    def forward_unfolded(self, a: np.ndarray) -> np.ndarray:
        """The inference transform written out, (a − mean)/√(var + ε)·γ + β (reference for fold)."""
        return (a - self.running_mean) / np.sqrt(self.running_var + np.float32(self.eps)) * self.gamma + self.beta

    def forward(self, a: np.ndarray, train: bool = True):
        """y (rows, n) and the cache for backward (None at inference)."""
        if not train:
            s, t = self.fold()
            return a * s + t, None
        N = a.shape[0]
        mean = a.mean(axis=0)
        c = a - mean
        var = np.einsum("ij,ij->j", c, c) * np.float32(1.0 / N)
        inv = (1.0 / np.sqrt(var + np.float32(self.eps))).astype(np.float32)
        xhat = c * inv
        m = np.float32(self.momentum)
        self.running_mean *= 1 - m
        self.running_mean += m * mean
        self.running_var *= 1 - m
        self.running_var += m * var * np.float32(N / (N - 1) if N > 1 else 1.0)
        return xhat * self.gamma + self.beta, (xhat, inv)

    def backward(self, dy: np.ndarray, cache) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(dL/da, dL/dγ, dL/dβ) for dy = dL/dy of a training-mode forward pass."""
        if cache is None:
            raise ShapeError("batch norm backward needs a training-mode forward pass")
        xhat, inv = cache
        N = dy.shape[0]
        dbeta = dy.sum(axis=0)
        dgamma = np.einsum("ij,ij->j", dy, xhat)
        # da = γ/(N σ) · (N dy − Σdy − x̂ Σ(dy x̂))
        da = (dy - (dbeta * np.float32(1.0 / N)) - xhat * (dgamma * np.float32(1.0 / N))) * (self.gamma * inv)
        return da, dgamma, dbeta
