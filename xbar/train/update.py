"""The base of the update schemes, their registry, and what they share: the per-layer device setup
(:class:`DeviceSetup`) and rounding onto its grid. The schemes themselves: :mod:`xbar.train.updates`
(float, nearest, stochastic, qat) and :mod:`xbar.train.insitu` (mixed, pulse)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .. import mapping as mp
from ..config import Field
from ..crossbar import Crossbar
from ..device import Device
from ..errors import ConfigError
from ..nn import Network
from ..registry import Registry

UPDATES = Registry("update")
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
    options: dict | None = dataclasses.field(default=None, hash=False)   # wires and ADC errors: Crossbar keywords

    def for_layer(self, layer) -> DeviceSetup:
        """This setup with the layer's own device bits (``layer.bits``, set by a network spec's
        per-layer ``bits``: binarized networks keep the first and last layers wider), else itself."""
        bits = getattr(layer, "bits", None)
        if bits is None or (bits == self.bits and self.device.bits == bits):
            return self
        return dataclasses.replace(self, device=self.device.with_(bits=bits), bits=bits)

    def fixed_for(self, x: np.ndarray) -> DeviceSetup:
        """Under range "init": this setup with a global range fixed from tensor x; else itself."""
        if self.range != "init":
            return self
        m = self.range_scale * float(np.max(np.abs(x))) if x.size else 0.0
        if not m > 0:
            m = max(abs(self.w_range[0]), abs(self.w_range[1]))
        return dataclasses.replace(self, range="global", w_range=(-m, m))

    def crossbar(self, seed: int, bias: str = "digital") -> Crossbar:
        """A crossbar for one layer; bias "row" puts the bias on an extra row of devices."""
        quant = None if self.quant == "device" else self.quant
        return Crossbar(self.device, tile=self.tile, adc_bits=self.adc_bits, dac_bits=self.dac_bits,
                        seed=seed, range=self.range, w_range=self.w_range, quant=quant,
                        quant_bits=self.bits if quant else None, gain=self.gain, bias=bias, **(self.options or {}))

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

    Class attributes a scheme sets for the rest of xbar (register it with ``@UPDATES.register``):
    ``name``; ``DEFAULTS``, the TrainConfig values it fills where a field is left unset (quant,
    range, gain, optimizer, lr, lr_gamma, ...); ``FIELDS``, options of its own; ``on_device``
    (False: no crossbar at all); ``bias_row`` (the bias sits on an extra array row, for the cost
    model); ``check(setup)``, a classmethod that refuses a device setup it cannot run on.
    ``from_config(cfg, setup, rng)`` builds it with its FIELDS' values from a resolved config.
    Instance hooks: ``before_step`` / ``restore`` (around every step), ``on_mask_change`` (pruning
    removed cells of a layer) and ``state_arrays`` (what a checkpoint saves).
    """

    name = ""
    on_device = True
    bias_row = False
    DEFAULTS: ClassVar[dict] = {}
    FIELDS: tuple[Field, ...] = ()

    @classmethod
    def check(cls, setup: DeviceSetup) -> None:
        """ConfigError when `setup` cannot carry this scheme (called by TrainConfig.resolve)."""

    @classmethod
    def time_factor(cls, config) -> float:
        """Whether steps write devices (1.0) or not (0.0), for sweep time estimates."""
        return 1.0 if cls.on_device else 0.0

    def __init__(self, setup: DeviceSetup | None, rng: np.random.Generator | None = None):
        self.setup = setup
        self.rng = rng
        self.setups: list[DeviceSetup] = []

    def attach(self, net: Network, seeds: list[int], feedback: list[np.ndarray]) -> None:
        """Give every layer a crossbar (seeded per layer) and program the initial weights."""
        self.setups = [self.setup.for_layer(layer).fixed_for(layer.W) for layer in net.layers]
        for layer, setup, seed in zip(net.layers, self.setups, seeds):
            layer.crossbar = setup.crossbar(seed)
            layer.program()

    @classmethod
    def from_config(cls, cfg, setup: DeviceSetup | None, rng: np.random.Generator | None = None) -> Update:
        """This scheme for a resolved TrainConfig: a scheme with FIELDS reads its options here."""
        return cls(setup, rng)

    def before_step(self, net: Network, x: np.ndarray | None = None) -> None:
        """Called before every step's forward on batch x (e.g. recipe hwa's aged reads, in-situ
        ADC recalibration). Default: nothing."""

    def restore(self, net: Network) -> None:
        """Called after every step, also one that raised: undo what before_step swapped in."""

    def after_step(self, net: Network, feedback: list[np.ndarray]) -> None:
        raise NotImplementedError

    def on_mask_change(self, i: int, layer, old: np.ndarray) -> None:
        """Layer i just lost the weights in `old & ~layer.mask` (pruning): bring its devices in
        line. Default: reprogram the layer from its stored (masked) weights."""
        layer.program()

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Arrays worth saving with a run (accumulators, level indices), by name."""
        return {}



def make_update(name: str, setup: DeviceSetup | None, rng: np.random.Generator | None = None,
                cfg=None) -> Update:
    """An update scheme by name (with its options from `cfg`, a resolved TrainConfig, when given);
    unknown names list the valid ones."""
    cls = UPDATES.get(name)
    if cls.on_device and setup is None:
        raise ConfigError(f"update = {name!r} needs a device setup")
    if setup is not None:
        cls.check(setup)   # fail early, e.g. rounding onto an analog or non-uniform device
    return cls(setup, rng) if cfg is None else cls.from_config(cfg, setup, rng)
