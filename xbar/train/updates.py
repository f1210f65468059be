"""Update schemes: how an optimizer step reaches the devices (Nandakumar et al. 2018/2020; NeuroSim).

- ``float``: no device; W lives in digital float32 memory. The ideal reference.
- ``nearest``: the seed study's method. The optimizer steps the stored weights, then weights and
  biases are each rounded to the nearest level of the grid (same function, same range, a
  degenerate range leaves a tensor unchanged); the stored weights *become* the rounded ones, and
  the crossbar is programmed with them. Updates below half a level are lost.
- ``stochastic``: the same, with stochastic rounding q = floor(x/s + u), u ~ U[0, 1) (seeded), so
  E[x̂] = x and small updates survive in expectation.
- ``qat``: quantization-aware (ex-situ) training. Float shadow weights stay in digital memory; the
  forward (and BP's transposed) reads use the programmed devices; gradients pass straight through
  to the shadow weights, and the crossbar is reprogrammed from them after every step. The bias is
  digital (the crossbar adds it after the ADC), so it stays float.

The grid ("quant"):
- ``asymm`` / ``symm``: the seed study's quantizers (xbar.mapping.asymm/symm), n = bits;
- ``device``: the crossbar's own grid with quant=None, a differential pair of L-level devices:
  x̂ = k·m/(L-1), k ∈ {-(L-1), …, L-1} (ternary at 1 bit), zero included.
The range:
- ``global``: [-w_max, w_max] for every tensor of the network (α fixed, physical; the seed study);
- ``init``: a fixed range per layer, [-m_l, m_l] with m_l = range_scale · max|W_l| at
  initialisation: a digital gain α_l calibrated once when the layer is first programmed, then
  kept (physical: the levels never move);
- ``local``: each tensor's own min/max (or max|x|), recomputed at every step (not physical for
  in-situ updates: the levels move); with gain "column", each output column of W gets its own
  range (a digital gain per column).

The in-situ schemes (mixed, pulse) are in :mod:`xbar.train.insitu`; the base class, the device
setup, the grid and the registry in :mod:`xbar.train.update`.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from .update import QUANTS, RANGES, UPDATES, DeviceSetup, Update, grid_range, make_update, round_to_grid


@UPDATES.register
class FloatUpdate(Update):
    """No device: the optimizer's step is the whole update."""

    name = "float"
    on_device = False
    DEFAULTS: ClassVar[dict] = {"quant": None, "range": None, "gain": None}

    def attach(self, net, seeds, feedback):
        for layer in net.layers:
            layer.crossbar = None

    def after_step(self, net, feedback):
        pass


@UPDATES.register
class NearestUpdate(Update):
    """The seed study: round weights and biases to the nearest level after every step."""

    name = "nearest"
    DEFAULTS: ClassVar[dict] = {"quant": "asymm", "range": "global", "gain": "layer"}
    rounds_feedback = True

    @classmethod
    def check(cls, setup):
        setup.steps()   # analog or non-uniform devices cannot be rounded onto

    def _round(self, x: np.ndarray, setup: DeviceSetup, columns: bool) -> np.ndarray:
        return round_to_grid(x, setup, columns=columns)

    def attach(self, net, seeds, feedback):
        super().attach(net, seeds, feedback)
        # The seed study rounds FA's fixed feedback matrices with the weights' function, at the
        # start and after every step (idempotent but for float ulps under a local range).
        self._fb_setups = [self.setup.fixed_for(B) for B in feedback]
        self._round_feedback(feedback)

    def _round_feedback(self, feedback):
        if self.rounds_feedback:
            for B, setup in zip(feedback, self._fb_setups):
                B[...] = self._round(B, setup, False)

    def after_step(self, net, feedback):
        self._round_feedback(feedback)
        for layer, setup in zip(net.layers, self.setups):
            columns = setup.gain == "column" and setup.range == "local"
            layer.W[...] = self._round(layer.W, setup, columns)
            if layer.b is not None:
                layer.b[...] = self._round(layer.b, setup, False)
            layer.program()


@UPDATES.register
class StochasticUpdate(NearestUpdate):
    """Stochastic rounding onto the same grid: unbiased, q = floor(x/s + u), u ~ U[0, 1).

    The feedback matrices of FA/DFA stay as drawn (fixed, digital).
    """

    name = "stochastic"
    DEFAULTS: ClassVar[dict] = {"quant": "device", "range": "init", "gain": "layer", "lr_gamma": 0.9}
    rounds_feedback = False

    def _round(self, x, setup, columns):
        u = self.rng.random(x.shape, dtype=np.float32).astype(x.dtype, copy=False)
        return round_to_grid(x, setup, u=u, columns=columns)


@UPDATES.register
class QATUpdate(Update):
    """Float shadow weights; the crossbar is reprogrammed from them after every step (STE)."""

    name = "qat"
    DEFAULTS: ClassVar[dict] = {"quant": "device", "range": "local", "gain": "column", "lr_gamma": 0.9}

    def after_step(self, net, feedback):
        for layer in net.layers:
            layer.program()


# The in-situ schemes register after these (registry order: float, nearest, stochastic, qat, mixed, pulse).
from .insitu import (
    InSituUpdate,
    LayerState,
    MixedUpdate,
    PulseUpdate,
    check_insitu,
    pulse_count,
    pulse_devices,
    pulses_to_floor,
    split_pair,
)

__all__ = ["QUANTS", "RANGES", "UPDATES", "DeviceSetup", "FloatUpdate", "InSituUpdate", "LayerState",
           "MixedUpdate", "NearestUpdate", "PulseUpdate", "QATUpdate", "StochasticUpdate", "Update",
           "check_insitu", "grid_range", "make_update", "pulse_count", "pulse_devices", "pulses_to_floor",
           "round_to_grid", "split_pair"]
