"""The old import path of the convolution layer and its periphery: ``xbar.conv.X`` is ``xbar.nn.X``
(:mod:`xbar.nn.conv`, :mod:`xbar.nn.ops`, :mod:`xbar.nn.periphery`)."""

from . import nn


def __getattr__(name: str):
    return getattr(nn, name)


def __dir__():
    return sorted(nn.__all__)
