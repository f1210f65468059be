"""Convolutions on crossbars, and the digital periphery around them: pooling, dropout, batch norm,
residual additions.

A convolution is a crossbar user like a dense layer (Conv2d subclasses xbar.nn.CrossbarLayer): its
weights are presented as W (k·k·C_in, C_out), one crossbar column per filter, and its input
becomes the im2col matrix, one row per output position, (batch·OH·OW, k·k·C_in). So the crossbar
sees an ordinary (rows, in) @ (in, out) product, split over tiles like any other, and the update
schemes and rules treat the layer exactly like Dense. Row order inside a patch is (kernel row,
kernel column, channel): torch's weight (C_out, C_in, k, k) is ``w.permute(2, 3, 1, 0).reshape(-1,
C_out)`` here.

Feature maps travel between layers as flat (batch, H·W·C) rows, channels last (the crossbar's
output rows are already (b, oh, ow) × channel). The network's input rows are the dataset's C×H×W
order; the first convolution transposes them (``chw_input``).

The im2col and pooling functions are in :mod:`xbar.nn.ops`, the periphery ops (pooling, dropout,
batch norm, residual additions) in :mod:`xbar.nn.periphery`.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import ShapeError
from .layers import CrossbarLayer
from .ops import col2im, conv_out, im2col, patches


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

    def _cols(self, x, lazy=False):
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.in_size:
            raise ShapeError(f"{self!r}: expected input rows of {self.in_size} values "
                             f"({'x'.join(map(str, self.in_shape))}), got shape {x.shape}")
        B = x.shape[0]
        C, H, W = self.in_shape
        x4 = x.reshape(B, C, H, W).transpose(0, 2, 3, 1) if self.chw_input else x.reshape(B, H, W, C)
        return (patches if lazy else im2col)(x4, self.kernel, self.stride, self.padding)

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
