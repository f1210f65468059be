"""A network: crossbar layers in execution order, skip connections, the output loss; forward
returns explicit caches for the training rules."""

from __future__ import annotations

import numpy as np

from ..config import (
    suggest,
)
from ..errors import ConfigError, ShapeError
from .functions import OUTPUTS, loss_and_error
from .layers import Cache, CrossbarLayer

# Network.predict keeps the largest im2col matrix of one chunk under this many float32 values
# (64 MB): a VGG layer's im2col rows are 9·C_in values for every pixel of every image.
PREDICT_BUDGET = 1 << 24


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

    def at(self, seconds: float, compensate: bool | str = False) -> Network:
        """A shallow copy whose layers read their crossbars `seconds` after programming
        (:meth:`xbar.crossbar.Crossbar.at`, with its global drift compensation); this network is
        not changed."""
        import copy
        out = copy.copy(self)
        out.layers = [copy.copy(layer) for layer in self.layers]
        for layer in out.layers:
            if layer.crossbar is not None:
                layer.crossbar = layer.crossbar.at(seconds, compensate=compensate)
        return out

    def params(self) -> list[np.ndarray]:
        return [p for layer in self.layers for p in layer.params()]

    def fold_batchnorm(self) -> None:
        """Fold every layer's batch norm into its weights and bias (CrossbarLayer.fold_batchnorm)."""
        for layer in self.layers:
            layer.fold_batchnorm()

    def __repr__(self) -> str:
        return f"Network({self.name}: " + ", ".join(map(repr, self.layers)) + f", {self.output})"
