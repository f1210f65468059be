"""Convolutions on crossbars, and the digital periphery around them: pooling, dropout, batch norm,
residual additions.

A convolution is a crossbar user like a dense layer (Conv2d subclasses nn.CrossbarLayer): its
weights are presented as W (k·k·C_in, C_out), one crossbar column per filter, and its input
becomes the im2col matrix, one row per output position, (batch·OH·OW, k·k·C_in). So the crossbar
sees an ordinary (rows, in) @ (in, out) product, split over tiles like any other, and the update
schemes and rules treat the layer exactly like Dense. Row order inside a patch is (kernel row,
kernel column, channel): torch's weight (C_out, C_in, k, k) is ``w.permute(2, 3, 1, 0).reshape(-1,
C_out)`` here.

Feature maps travel between layers as flat (batch, H·W·C) rows, channels last (the crossbar's
output rows are already (b, oh, ow) × channel). The network's input rows are the dataset's C×H×W
order; the first convolution transposes them (``chw_input``).

The kernels are in xbar.kernels.im2col; the ``*_reference`` functions here are the plain numpy
versions the tests compare them with.
"""

from __future__ import annotations

import math

import numpy as np

from .config import suggest
from .errors import ShapeError
from .kernels import im2col as K
from .nn import ACTIVATIONS, CrossbarLayer


def conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Output length of a convolution or pooling window along one axis (floor mode)."""
    return (size + 2 * padding - kernel) // stride + 1


def _maps(name: str, x) -> np.ndarray:
    """Validate a (batch, H, W, C) feature-map array and return it float32 C-contiguous."""
    x = np.asarray(x)
    if x.ndim != 4:
        raise ShapeError(f"{name}: expected (batch, height, width, channels), got shape {x.shape}")
    if x.dtype.kind not in "fiu":
        raise ShapeError(f"{name}: expected a real numeric array, got dtype {x.dtype}")
    return np.ascontiguousarray(x, dtype=np.float32)


def _pick(parallel, serial, n: int):
    return parallel if n >= K.PARALLEL_MIN else serial


# ---- im2col / col2im ------------------------------------------------------------------------------

def im2col(x, kernel: int, stride: int = 1, padding: int = 0) -> np.ndarray:
    """Patches of x (B, H, W, C) as rows: (B·OH·OW, kernel·kernel·C) float32, a new array."""
    x = _maps("x", x)
    B, H, W, C = x.shape
    oh, ow = conv_out(H, kernel, stride, padding), conv_out(W, kernel, stride, padding)
    if oh < 1 or ow < 1:
        raise ShapeError(f"im2col: kernel {kernel} (padding {padding}) is larger than the {H}x{W} input")
    cols = np.empty((B * oh * ow, kernel * kernel * C), np.float32)
    _pick(K.im2col_kernel, K.im2col_kernel_serial, cols.size)(x, kernel, kernel, stride, padding, oh, ow, cols)
    return cols


def col2im(cols, shape: tuple[int, int, int, int], kernel: int, stride: int = 1, padding: int = 0) -> np.ndarray:
    """The adjoint of im2col: row gradients (B·OH·OW, k·k·C) summed back onto (B, H, W, C)."""
    B, H, W, C = shape
    oh, ow = conv_out(H, kernel, stride, padding), conv_out(W, kernel, stride, padding)
    cols = np.ascontiguousarray(cols, dtype=np.float32)
    if cols.shape != (B * oh * ow, kernel * kernel * C):
        raise ShapeError(f"col2im: expected rows of shape {(B * oh * ow, kernel * kernel * C)}, got {cols.shape}")
    dx = np.empty((B, H, W, C), np.float32)
    _pick(K.col2im_kernel, K.col2im_kernel_serial, cols.size)(cols, kernel, kernel, stride, padding, oh, ow, dx)
    return dx


def im2col_reference(x: np.ndarray, kernel: int, stride: int = 1, padding: int = 0) -> np.ndarray:
    """im2col in plain numpy (padding, sliding windows, strided slicing), for the tests."""
    x = np.pad(np.asarray(x, np.float32), ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    win = np.lib.stride_tricks.sliding_window_view(x, (kernel, kernel), axis=(1, 2))[:, ::stride, ::stride]
    B, oh, ow = win.shape[:3]
    return np.ascontiguousarray(win.transpose(0, 1, 2, 4, 5, 3)).reshape(B * oh * ow, -1)


def col2im_reference(cols: np.ndarray, shape, kernel: int, stride: int = 1, padding: int = 0) -> np.ndarray:
    """col2im in plain numpy: each kernel offset's slice added back, padding cropped."""
    B, H, W, C = shape
    oh, ow = conv_out(H, kernel, stride, padding), conv_out(W, kernel, stride, padding)
    c6 = np.asarray(cols, np.float32).reshape(B, oh, ow, kernel, kernel, C)
    dx = np.zeros((B, H + 2 * padding, W + 2 * padding, C), np.float32)
    for i in range(kernel):
        for j in range(kernel):
            dx[:, i:i + stride * oh:stride, j:j + stride * ow:stride, :] += c6[:, :, :, i, j, :]
    return dx[:, padding:padding + H, padding:padding + W, :]


# ---- pooling --------------------------------------------------------------------------------------

def maxpool2d(x, size: int, stride: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Max pooling of x (B, H, W, C): (out (B, OH, OW, C), argmax as flat h·W + w, int64)."""
    x = _maps("x", x)
    stride = stride or size
    B, H, W, C = x.shape
    oh, ow = conv_out(H, size, stride), conv_out(W, size, stride)
    if oh < 1 or ow < 1:
        raise ShapeError(f"maxpool: window {size} is larger than the {H}x{W} input")
    out = np.empty((B, oh, ow, C), np.float32)
    arg = np.empty((B, oh, ow, C), np.int64)
    _pick(K.maxpool_kernel, K.maxpool_kernel_serial, out.size * size * size)(x, size, stride, oh, ow, out, arg)
    return out, arg


def maxpool2d_backward(g, arg: np.ndarray, shape: tuple[int, int, int, int]) -> np.ndarray:
    """Gradient of max pooling: g (B, OH, OW, C) routed to the argmax positions of (B, H, W, C)."""
    g = _maps("g", g)
    if g.shape != arg.shape:
        raise ShapeError(f"maxpool backward: g has shape {g.shape}, the forward pass gave {arg.shape}")
    dx = np.empty(shape, np.float32)
    _pick(K.maxpool_back_kernel, K.maxpool_back_kernel_serial, dx.size)(g, arg, dx)
    return dx


def avgpool2d(x, size: int, stride: int | None = None) -> np.ndarray:
    """Average pooling of x (B, H, W, C) over size×size windows."""
    x = _maps("x", x)
    stride = stride or size
    B, H, W, C = x.shape
    oh, ow = conv_out(H, size, stride), conv_out(W, size, stride)
    if oh < 1 or ow < 1:
        raise ShapeError(f"avgpool: window {size} is larger than the {H}x{W} input")
    out = np.empty((B, oh, ow, C), np.float32)
    _pick(K.avgpool_kernel, K.avgpool_kernel_serial, out.size * size * size)(x, size, stride, oh, ow, out)
    return out


def avgpool2d_backward(g, size: int, stride: int | None, shape: tuple[int, int, int, int]) -> np.ndarray:
    """Gradient of average pooling: g / size² spread over each window of (B, H, W, C)."""
    g = _maps("g", g)
    dx = np.empty(shape, np.float32)
    _pick(K.avgpool_back_kernel, K.avgpool_back_kernel_serial, dx.size)(g, size, stride or size, dx)
    return dx


def pool_reference(x: np.ndarray, size: int, stride: int | None, mode: str) -> np.ndarray:
    """Max or average pooling in plain numpy (sliding windows), for the tests."""
    win = np.lib.stride_tricks.sliding_window_view(np.asarray(x, np.float32), (size, size),
                                                   axis=(1, 2))[:, ::stride or size, ::stride or size]
    return win.max(axis=(4, 5)) if mode == "max" else win.mean(axis=(4, 5), dtype=np.float32)


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


# ---- the convolution ------------------------------------------------------------------------------

class Conv2d(CrossbarLayer):
    """A 2-d convolution on a crossbar: a = im2col(x) W + b, z = tail(f(bn(a))).

    in_shape: (C_in, H, W) of the input; filters: C_out; kernel: k (square); stride, padding:
    zero padding on every side. W is (k·k·C_in, C_out), initialised like torch's nn.Conv2d
    (U[±1/√(k·k·C_in)]). chw_input: the input rows are in C×H×W order (a dataset's), not the
    channels-last order layers pass on. Other options as in :class:`xbar.nn.CrossbarLayer`.
    """

    kind = "conv"

    def __init__(self, in_shape: tuple[int, int, int], filters: int, kernel: int, activation: str = "relu",
                 *, rng: np.random.Generator, stride: int = 1, padding: int = 0, chw_input: bool = False,
                 **options):
        C, H, W = (int(v) for v in in_shape)
        oh, ow = conv_out(H, kernel, stride, padding), conv_out(W, kernel, stride, padding)
        if oh < 1 or ow < 1:
            raise ShapeError(f"conv: kernel {kernel}x{kernel} (padding {padding}) is larger than the "
                             f"{H}x{W} input")
        super().__init__(kernel * kernel * C, filters, activation, rng=rng, **options)
        self.in_shape = (C, H, W)
        self.kernel, self.stride, self.padding = int(kernel), int(stride), int(padding)
        self.chw_input = bool(chw_input) and C > 1
        self.conv_shape = (oh, ow, int(filters))     # (H, W, C) of the crossbar's output maps
        self.act_shape = self.conv_shape              # after the head (pre-activation pooling)
        self.out_shape = self.conv_shape              # after the tail
        self.in_size = C * H * W
        self.out_size = oh * ow * int(filters)
        self.cols_per_sample = oh * ow * self.n_in

    def add_tail(self, op) -> None:
        self.out_shape = op.out_shape(self.out_shape)
        self.out_size = math.prod(self.out_shape)
        super().add_tail(op)

    def add_head(self, op) -> None:
        if not getattr(op, "needs_maps", False):
            raise ShapeError(f"{op!r}: only pooling can act before the batch norm and activation")
        super().add_head(op)
        self.act_shape = self.out_shape = op.out_shape(self.act_shape)
        self.out_size = math.prod(self.out_shape)

    def _cols(self, x):
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.in_size:
            raise ShapeError(f"{self!r}: expected input rows of {self.in_size} values "
                             f"({'x'.join(map(str, self.in_shape))}), got shape {x.shape}")
        B = x.shape[0]
        C, H, W = self.in_shape
        x4 = x.reshape(B, C, H, W).transpose(0, 2, 3, 1) if self.chw_input else x.reshape(B, H, W, C)
        return im2col(x4, self.kernel, self.stride, self.padding)

    def _uncols(self, d):
        oh, ow, _ = self.conv_shape
        B = d.shape[0] // (oh * ow)
        C, H, W = self.in_shape
        dx = col2im(d, (B, H, W, C), self.kernel, self.stride, self.padding)
        if self.chw_input:
            dx = np.ascontiguousarray(dx.transpose(0, 3, 1, 2))
        return dx.reshape(B, -1)

    def _map(self, za, batch):
        return za.reshape((batch,) + self.act_shape)

    def _crossbar_map(self, a, batch):
        return a.reshape((batch,) + self.conv_shape)

    def __repr__(self) -> str:
        C, H, W = self.in_shape
        oh, ow, f = self.conv_shape
        geom = f"{C}x{H}x{W}->{f}x{oh}x{ow}, k{self.kernel}" + (f"/s{self.stride}" if self.stride > 1 else "") \
            + (f" p{self.padding}" if self.padding else "")
        return f"Conv2d({geom}, {self.describe()})"
