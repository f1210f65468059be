"""Update schemes: how an optimizer step reaches the devices (DOMAIN.md §4).

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
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from .. import mapping as mp
from ..config import suggest
from ..crossbar import Crossbar
from ..device import Device
from ..errors import ConfigError
from ..nn import Network

UPDATES = ("float", "nearest", "stochastic", "qat")
QUANTS = ("device", "asymm", "symm")
RANGES = ("global", "init", "local")


@dataclass(frozen=True)
class DeviceSetup:
    """How every layer's crossbar is built (one seed per layer comes from the caller).

    device: the device, with the `bits` override already applied.
    bits: quantizer bits (asymm/symm), or the device's bits; None only for quant "device".
    quant: "device", "asymm" or "symm" (see the module docstring).
    range: "global", "init" or "local"; w_range: the global range (lo, hi); gain: "layer" or
        "column" (per-column ranges under "local"); range_scale: m_l / max|W_l(0)| under "init".
    tile, adc_bits, dac_bits: crossbar geometry and periphery.
    """

    device: Device
    bits: int | None
    quant: str
    range: str
    w_range: tuple[float, float]
    gain: str
    tile: tuple[int, int] = (64, 64)
    adc_bits: int | None = None
    dac_bits: int | None = None
    range_scale: float = 2.0

    def fixed_for(self, x: np.ndarray) -> DeviceSetup:
        """Under range "init": this setup with a global range fixed from tensor x; else itself."""
        if self.range != "init":
            return self
        m = self.range_scale * float(np.max(np.abs(x))) if x.size else 0.0
        if not m > 0:
            m = max(abs(self.w_range[0]), abs(self.w_range[1]))
        return dataclasses.replace(self, range="global", w_range=(-m, m))

    def crossbar(self, seed: int) -> Crossbar:
        quant = None if self.quant == "device" else self.quant
        return Crossbar(self.device, tile=self.tile, adc_bits=self.adc_bits, dac_bits=self.dac_bits,
                        seed=seed, range=self.range, w_range=self.w_range, quant=quant,
                        quant_bits=self.bits if quant else None, gain=self.gain)

    def steps(self) -> int:
        """n in the rounding formulas: asymm 2^b - 1 steps over [lo, hi]; symm 2^(b-1) - 1 and
        device L - 1 steps on each side of zero."""
        if self.quant == "asymm":
            return 2 ** self.bits - 1
        if self.quant == "symm":
            if self.bits < 2:
                raise ConfigError("quant = 'symm' needs bits >= 2 (2^(n-1) - 1 = 0 levels at n = 1)")
            return 2 ** (self.bits - 1) - 1
        L = self.device.n_levels
        if L is None:
            raise ConfigError(f"device {self.device.name!r} is analog: rounding to its levels needs "
                              "bits (set bits, or use update 'qat')")
        if not self.device.is_uniform:
            raise ConfigError(f"device {self.device.name!r} has measured, non-uniform levels: the "
                              "rounding updates need uniform levels (set bits)")
        return L - 1


# ---- rounding onto the grid --------------------------------------------------------------------

def grid_range(x: np.ndarray, setup: DeviceSetup, columns: bool):
    """(lo, hi) of the grid for tensor x: scalars, or (out,) arrays when `columns` (local range).

    Symmetric grids (symm, device) use (-m, m) with m = max|x| (local) or max|w_range| (global).
    """
    sym = setup.quant != "asymm"
    if setup.range == "global":
        lo, hi = setup.w_range
        if sym:
            m = max(abs(lo), abs(hi))
            lo, hi = -m, m
        return x.dtype.type(lo), x.dtype.type(hi)
    axis = 0 if columns else None
    if sym:
        m = np.max(np.abs(x), axis=axis)
        return -m, m
    return np.min(x, axis=axis), np.max(x, axis=axis)


def round_to_grid(x: np.ndarray, setup: DeviceSetup, u: np.ndarray | None = None,
                  columns: bool = False) -> np.ndarray:
    """Nearest (u None) or stochastic (q = floor(t + u)) rounding of x onto the setup's grid.

    Arithmetic is in x's dtype in the seed quantizers' order: asymm t = (clip(x) - lo) n/(hi - lo),
    x̂ = q (hi - lo)/n + lo; symmetric t = clip(x) n/m, x̂ = q m/n. A degenerate range (hi == lo,
    m == 0) leaves x unchanged, per tensor or per column.
    """
    if setup.range == "init":
        raise ConfigError("range 'init' must be fixed per layer first (DeviceSetup.fixed_for)")
    if u is None and not columns and setup.quant != "device":
        # The seed study's own functions, so nearest rounding matches them bit for bit.
        return mp.quantize(x, setup.bits, setup.quant, setup.range, setup.w_range)
    dt = x.dtype.type
    n = dt(setup.steps())
    lo, hi = grid_range(x, setup, columns)
    span = hi - lo
    ok = span > 0
    safe = np.where(ok, span, dt(1))
    if setup.quant == "asymm":
        t = (np.clip(x, lo, hi) - lo) * n / safe
        q = np.round(t) if u is None else np.clip(np.floor(t + u), 0, n)
        out = q * safe / n + lo
    else:
        m = np.where(ok, hi, dt(1))
        t = np.clip(x, -m, m) * n / m
        q = np.round(t) if u is None else np.clip(np.floor(t + u), -n, n)
        out = q * m / n
    if not np.all(ok):
        out = np.where(ok, out, x)
    return out.astype(x.dtype, copy=False)


# ---- the schemes -------------------------------------------------------------------------------

class Update:
    """Base class. attach() places the weights; after_step() runs after every optimizer step.

    self.setups holds one DeviceSetup per layer (they differ only under range "init").
    """

    name = ""
    on_device = True

    def __init__(self, setup: DeviceSetup | None, rng: np.random.Generator | None = None):
        self.setup = setup
        self.rng = rng
        self.setups: list[DeviceSetup] = []

    def attach(self, net: Network, seeds: list[int], feedback: list[np.ndarray]) -> None:
        """Give every layer a crossbar (seeded per layer) and program the initial weights."""
        self.setups = [self.setup.fixed_for(layer.W) for layer in net.layers]
        for layer, setup, seed in zip(net.layers, self.setups, seeds):
            layer.crossbar = setup.crossbar(seed)
            layer.program()

    def after_step(self, net: Network, feedback: list[np.ndarray]) -> None:
        raise NotImplementedError


class FloatUpdate(Update):
    """No device: the optimizer's step is the whole update."""

    name = "float"
    on_device = False

    def attach(self, net, seeds, feedback):
        for layer in net.layers:
            layer.crossbar = None

    def after_step(self, net, feedback):
        pass


class QATUpdate(Update):
    """Float shadow weights; the crossbar is reprogrammed from them after every step (STE)."""

    name = "qat"

    def after_step(self, net, feedback):
        for layer in net.layers:
            layer.program()


class NearestUpdate(Update):
    """The seed study: round weights and biases to the nearest level after every step."""

    name = "nearest"
    rounds_feedback = True

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


class StochasticUpdate(NearestUpdate):
    """Stochastic rounding onto the same grid: unbiased, q = floor(x/s + u), u ~ U[0, 1).

    The feedback matrices of FA/DFA stay as drawn (fixed, digital).
    """

    name = "stochastic"
    rounds_feedback = False

    def _round(self, x, setup, columns):
        u = self.rng.random(x.shape, dtype=np.float32).astype(x.dtype, copy=False)
        return round_to_grid(x, setup, u=u, columns=columns)


_UPDATES = {"float": FloatUpdate, "nearest": NearestUpdate, "stochastic": StochasticUpdate, "qat": QATUpdate}


def make_update(name: str, setup: DeviceSetup | None, rng: np.random.Generator | None = None) -> Update:
    """An update scheme by name; unknown names list the valid ones."""
    if name not in _UPDATES:
        raise ConfigError(f"update = {name!r}: expected one of {', '.join(map(repr, UPDATES))}"
                          + suggest(str(name), UPDATES))
    if name != "float" and setup is None:
        raise ConfigError(f"update = {name!r} needs a device setup")
    if name in ("nearest", "stochastic"):
        setup.steps()   # fail early on analog or non-uniform devices
    return _UPDATES[name](setup, rng)
