"""Convolutions on crossbars and their digital periphery: the old import path of
:mod:`xbar.nn.conv`, :mod:`xbar.nn.ops` and :mod:`xbar.nn.periphery`, kept for ``xbar.conv.X``."""

from .nn.conv import Conv2d
from .nn.ops import (
    avgpool2d,
    avgpool2d_backward,
    col2im,
    col2im_reference,
    conv_out,
    im2col,
    im2col_reference,
    maxpool2d,
    maxpool2d_backward,
    pool_reference,
)
from .nn.periphery import BatchNorm, Dropout, Pool, Residual

__all__ = ["BatchNorm", "Conv2d", "Dropout", "Pool", "Residual", "avgpool2d", "avgpool2d_backward", "col2im",
           "col2im_reference", "conv_out", "im2col", "im2col_reference", "maxpool2d", "maxpool2d_backward",
           "pool_reference"]
