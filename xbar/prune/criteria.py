"""Pruning criteria: the importance of every unit or weight (larger = keep), one registered class each.

A criterion is a subclass of :class:`Criterion` decorated ``@CRITERIA.register``: its ``name`` is
then a valid ``method`` (rank by it and remove the lowest) and ``criterion`` (of the crossbar and
hardware methods). It says which granularities it can rank (``granularities``, the default one
first in ``default_granularity``), whether its scores need a pass over data (``needs_data``: the
forward and true-gradient backward pass of :func:`activity`), whether its unstructured scores work
on any network (``any_network``; the others know dense chains only), and computes
``unit_scores(act, group, rng)`` and ``weight_scores(act, layer, rng)`` from an :class:`Activity`.
Scores are float64 arrays: (units,) per group, (in, out) per layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..cost import layer_mask
from ..errors import ConfigError
from ..nn import Network
from ..registry import Registry

CRITERIA = Registry("criterion")


@dataclass
class Activity:
    """What the scores need from one pass over the scoring batch: per layer input x, output z,
    pre-activation delta dL/da (true backpropagation), dL/dz of hidden outputs, dL/dx of inputs."""

    x: list[np.ndarray]
    z: list[np.ndarray]
    delta: list[np.ndarray]
    gz: list[np.ndarray]
    gx: np.ndarray
    W: list[np.ndarray]


def activity(net: Network, X: np.ndarray, y: np.ndarray, on_substrate: bool = True) -> Activity:
    """Forward and true-gradient backward pass on (X, y): through the crossbars (substrate), or on
    the stored weights in float. Taylor needs ∂L/∂z whatever rule trains the network: this is BP."""
    saved = [layer.crossbar for layer in net.layers]
    if not on_substrate:
        for layer in net.layers:
            layer.crossbar = None
    try:
        out, caches = net.forward(X)
        _, e = net.loss(out, y)
        n = len(net.layers)
        delta = [None] * n
        gz = [None] * (n - 1)
        delta[-1] = e * np.float32(len(X))        # per-sample gradients (loss is a batch mean)
        for i in range(n - 2, -1, -1):
            gz[i] = net.layers[i + 1].backward_input(delta[i + 1])
            delta[i] = net.layers[i].local_delta(gz[i], caches[i])
        gx = net.layers[0].backward_input(delta[0])
    finally:
        for layer, xb in zip(net.layers, saved):
            layer.crossbar = xb
    return Activity([c.x for c in caches], [c.z for c in caches], delta, gz, gx, weights(net, on_substrate))


def weights(net: Network, on_substrate: bool = True) -> list[np.ndarray]:
    """Each layer's weights as programmed (substrate: the crossbar's effective weights, masked), or
    as stored (float)."""
    return [layer.crossbar.weights().astype(np.float32) * layer_mask(layer)
            if on_substrate and layer.crossbar is not None else layer.stored_weights() for layer in net.layers]



def group_weights(act: Activity, group: tuple[str, int]) -> np.ndarray:
    """The weights whose columns are the group's units (inputs have no incoming weights: outgoing)."""
    kind, h = group
    return act.W[0].T if kind == "input" else act.W[h]


def group_outputs(act: Activity, group: tuple[str, int]) -> np.ndarray:
    """The units' values on the scoring batch: the inputs x, or the hidden outputs z."""
    kind, h = group
    return act.x[0] if kind == "input" else act.z[h]


class Criterion:
    """Base class; see the module docstring. Every shipped criterion scores both units and weights
    (the crossbar method uses both), even where ``method = name`` ranks only one of them."""

    name = ""
    granularities: tuple[str, ...] = ("weight", "unit")   # what `method = name` may rank
    default_granularity = "unit"
    needs_data = False      # scores need the scoring batch's activity (not just the weights)
    any_network = False     # its weight scores work on networks other than dense chains
    hint: ClassVar[dict[str, str]] = {}   # granularity -> a hint when this criterion refuses it

    @classmethod
    def unit_scores(cls, act: Activity, group: tuple[str, int], rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    @classmethod
    def weight_scores(cls, act: Activity, layer: int, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError


@CRITERIA.register
class Magnitude(Criterion):
    """|w| (weights); a unit's incoming l1 norm (units: method 'l1')."""

    name = "magnitude"
    granularities = ("weight",)
    default_granularity = "weight"
    any_network = True
    hint: ClassVar[dict[str, str]] = {"unit": " (unit magnitude is method 'l1')"}

    @classmethod
    def unit_scores(cls, act, group, rng):
        return np.abs(group_weights(act, group)).sum(axis=0, dtype=np.float64)

    @classmethod
    def weight_scores(cls, act, layer, rng):
        return np.abs(act.W[layer]).astype(np.float64)


@CRITERIA.register
class L1(Magnitude):
    """The l1 norm of a unit's incoming weights (the seed's filter magnitude); |w| per weight."""

    name = "l1"
    granularities = ("unit",)
    default_granularity = "unit"
    any_network = False
    hint: ClassVar[dict[str, str]] = {}


@CRITERIA.register
class L2(Criterion):
    """The l2 norm of a unit's incoming weights; w² per weight."""

    name = "l2"
    granularities = ("unit",)

    @classmethod
    def unit_scores(cls, act, group, rng):
        return np.sqrt(np.square(group_weights(act, group), dtype=np.float64).sum(axis=0))

    @classmethod
    def weight_scores(cls, act, layer, rng):
        return np.square(act.W[layer], dtype=np.float64)


@CRITERIA.register
class MeanActivation(Criterion):
    """Mean |z| over the scoring batch; per weight, mean |x_i| · |w|."""

    name = "activation"
    granularities = ("unit",)
    needs_data = True

    @classmethod
    def unit_scores(cls, act, group, rng):
        return np.abs(group_outputs(act, group)).mean(axis=0, dtype=np.float64)

    @classmethod
    def weight_scores(cls, act, layer, rng):
        x = act.x[layer]
        return np.abs(x).mean(axis=0, dtype=np.float64)[:, None] * np.abs(act.W[layer])


@CRITERIA.register
class Taylor(Criterion):
    """Mean over samples of |z · ∂L/∂z| (Molchanov et al., ICLR 2017); per weight
    |w| · mean |x_i| |δ_j| = mean |w ∂L/∂w| per sample."""

    name = "taylor"
    granularities = ("weight", "unit")
    needs_data = True

    @classmethod
    def unit_scores(cls, act, group, rng):
        grad = act.gx if group[0] == "input" else act.gz[group[1]]
        return np.abs(group_outputs(act, group) * grad).mean(axis=0, dtype=np.float64)

    @classmethod
    def weight_scores(cls, act, layer, rng):
        x = act.x[layer]
        return np.abs(act.W[layer]) * (np.abs(x).T.astype(np.float64) @ np.abs(act.delta[layer])) / len(x)


@CRITERIA.register
class Random(Criterion):
    """U[0, 1) from the pruning's own stream: the baseline every criterion must beat."""

    name = "random"
    granularities = ("weight", "unit")
    default_granularity = "weight"
    any_network = True

    @classmethod
    def unit_scores(cls, act, group, rng):
        return rng.random(group_weights(act, group).shape[1])

    @classmethod
    def weight_scores(cls, act, layer, rng):
        return rng.random(act.W[layer].shape)


def unit_scores(criterion: str, act: Activity, group: tuple[str, int], rng: np.random.Generator) -> np.ndarray:
    """Importance of every unit of a group (larger = keep), by the named criterion."""
    return CRITERIA.get(criterion).unit_scores(act, group, rng)


def weight_scores(criterion: str, act: Activity, layer: int, rng: np.random.Generator) -> np.ndarray:
    """Importance of every weight of a layer (in, out), by the named criterion."""
    if criterion not in CRITERIA:
        raise ConfigError(f"criterion = {criterion!r}: expected one of {', '.join(map(repr, CRITERIA))}")
    return CRITERIA.get(criterion).weight_scores(act, layer, rng)
