"""The crossbar's options as one validated, frozen object: geometry, mapping, grid and periphery.

One list of :class:`~xbar.config.Field` specs drives validation, ``Crossbar`` keywords, the
checkpoint's saved settings and ``state_dict``; nothing else keeps a copy of the names.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import mapping as mp
from ..config import Field, validate_value
from ..errors import ConfigError

DAC_RANGES = ("dynamic",)
ADC_RANGES = ("calibrated", "physical")
BIAS_MODES = ("digital", "row")
IR_DROP_MODES = ("none", "exact", "fast")

# ADC errors and wires: also train/sweep options (xbar.train.loop takes these Field specs as they are).
PERIPHERY_FIELDS: tuple[Field, ...] = (
    Field("adc_offset_lsb", "float", 0.0, "Std of each ADC's offset, in LSB (drawn per ADC from the seed).",
          lo=0.0, hi=1e3),
    Field("adc_gain_rel", "float", 0.0, "Std of each ADC's relative gain error.", lo=0.0, hi=0.5),
    Field("adc_inl_lsb", "float", 0.0, "Peak integral nonlinearity of the ADCs, in LSB (each ADC's bow "
          "drawn in [-1, 1] times this).", lo=0.0, hi=1e3),
    Field("ir_drop", "str", "none", "Wire resistance: none, exact (nodal analysis per tile) or fast "
          "(first-order, see xbar.tile.irdrop).", choices=IR_DROP_MODES),
    Field("r_wire_ohm", "float", 0.0, "Resistance of one wire segment between adjacent cells (rows and "
          "columns).", lo=0.0, hi=1e6, unit="Ω"),
    Field("v_read", "float", 0.2, "Read voltage of a full-scale input (for voltage-dependent device "
          "models).", lo=0.0, lo_open=True, hi=10.0, unit="V"),
)


def check_periphery(v) -> None:
    """Checks across the periphery options (`v`: a mapping with adc_bits and the PERIPHERY_FIELDS)."""
    errs = [k for k in ("adc_offset_lsb", "adc_gain_rel", "adc_inl_lsb") if v[k]]
    if errs and v["adc_bits"] is None:
        raise ConfigError(f"{errs[0]} = {v[errs[0]]!r} describes the ADC, but adc_bits is not set (ideal "
                          "ADC); set adc_bits, e.g. 8")
    if v["ir_drop"] != "none" and not v["r_wire_ohm"] > 0:
        raise ConfigError(f"ir_drop = {v['ir_drop']!r} needs r_wire_ohm > 0 (the resistance of one wire "
                          "segment, e.g. 1.0 Ω); set r_wire_ohm or ir_drop = 'none'")


def check_v_read(device, v_read: float) -> None:
    """Refuse a read voltage beyond what the device's read I–V model is validated for."""
    if device.read_iv is None:
        return
    from ..physics import get_model
    iv = get_model("read_iv", device.read_iv, file=device.file)
    if not iv.linear and v_read > iv.v_max_v:
        where = device.file or "the device"
        raise ConfigError(f"v_read = {v_read:g} V is outside the validated range of the read I–V model of "
                          f"device {device.name!r}: (0, {iv.v_max_v:g}] V (read_iv.v_max_v in {where}); "
                          "lower v_read or give a fit validated that far")


# Also a train/sweep option (xbar.train.config takes this Field spec as it is).
REPLICAS = Field("replicas", "int", 1, "Unit cells of equal significance per weight (a differential pair "
                 "each, or one device under offset mapping), every one programmed to the weight's "
                 "target and read summed with the gain divided among them: write and read noise "
                 "average down; in-situ updates share their pulses among them, so one pulse moves the "
                 "weight by 1/replicas of a device step (aihwkit's VectorUnitCell).", lo=1, hi=8)

# Simple fields go through the Field engine; tile, w_range, seed and the str-or-number ranges are
# checked by hand below (tuples and open choices the engine does not express).
FIELDS: tuple[Field, ...] = (
    Field("mapping", "str", "differential", "w = alpha (G+ - G-) or w = alpha (G - g_min) + beta.",
          choices=mp.MAPPINGS),
    Field("adc_bits", "int", None, "ADC resolution per tile output; omit for ideal.", lo=2, hi=16, optional=True),
    Field("dac_bits", "int", None, "Input DAC resolution; omit for analog inputs.", lo=2, hi=16, optional=True),
    Field("range", "str", "global", "Weight grid range: fixed w_range or per tensor.", choices=mp.RANGES),
    Field("quant", "str", None, "None (nearest device level) or the seed study's quantizers.",
          choices=mp.QUANTS, optional=True),
    Field("quant_bits", "int", None, "Quantizer bits; default the device's bits times slices.",
          lo=1, hi=16, optional=True),
    Field("gain", "str", "layer", "Granularity of the digital gain under a local range.", choices=mp.GAINS),
    Field("slices", "int", 1, "Devices per weight (bit slicing).", lo=1, hi=8),
    REPLICAS,
    Field("adc_percentile", "float", 100.0, "Percentile of |current| used by ADC calibration.",
          lo=0.0, lo_open=True, hi=100.0),
    Field("bias", "str", "digital", "Bias added after the ADC, or an extra row driven at 1.", choices=BIAS_MODES),
    Field("read_noise", "bool", True, "Read with the device's read noise."),
    *PERIPHERY_FIELDS,
)
_BY_NAME = {f.name: f for f in FIELDS}
_STRICT_INTS = ("adc_bits", "dac_bits", "quant_bits", "slices", "replicas")


@dataclass(frozen=True)
class Settings:
    """Validated crossbar options (see :class:`xbar.Crossbar` for their meaning)."""

    tile: tuple[int, int] = (64, 64)
    mapping: str = "differential"
    adc_bits: int | None = None
    dac_bits: int | None = None
    seed: int = 0
    range: str = "global"
    w_range: tuple[float, float] = (-1.0, 1.0)
    quant: str | None = None
    quant_bits: int | None = None
    gain: str = "layer"
    slices: int = 1
    replicas: int = 1
    adc_range: Any = "calibrated"
    adc_percentile: float = 100.0
    dac_range: Any = "dynamic"
    bias: str = "digital"
    read_noise: bool = True
    adc_offset_lsb: float = 0.0
    adc_gain_rel: float = 0.0
    adc_inl_lsb: float = 0.0
    ir_drop: str = "none"
    r_wire_ohm: float = 0.0
    v_read: float = 0.2

    @classmethod
    def validate(cls, device, **kw) -> Settings:
        """Check every option (one ConfigError line each) and resolve the default quantizer bits."""
        unknown = set(kw) - set(NAMES)
        if unknown:
            from ..config import suggest
            name = min(unknown)
            raise ConfigError(f"Crossbar: unknown option {name!r}{suggest(name, NAMES)}")
        v = {**{f.name: f.default for f in dataclasses.fields(cls)}, **kw}
        for name in _STRICT_INTS:
            x = v[name]
            if x is not None and (isinstance(x, bool) or not isinstance(x, (int, np.integer))):
                raise ConfigError(f"{name} = {x!r}: expected {_BY_NAME[name].range_text()}")
        out = {name: validate_value(f, v[name]) for name, f in _BY_NAME.items()}
        out["tile"] = _tile(v["tile"])
        out["w_range"] = _w_range(v["w_range"])
        out["adc_range"] = _str_or_positive("adc_range", v["adc_range"], ADC_RANGES)
        out["dac_range"] = _str_or_positive("dac_range", v["dac_range"], DAC_RANGES)
        seed = v["seed"]
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2 ** 63:
            raise ConfigError(f"seed = {seed!r}: expected an integer in [0, 2**63)")
        out["seed"] = int(seed)
        quant, quant_bits, slices = out["quant"], out["quant_bits"], out["slices"]
        levels = device.levels()
        if quant is not None:
            if levels is not None and not device.is_uniform:
                raise ConfigError(f"quant = {quant!r} needs uniform levels; device {device.name!r} has a "
                                  "measured level table (use quant=None to snap to its levels)")
            if quant_bits is None:
                if levels is None:
                    raise ConfigError(f"quant = {quant!r} on analog device {device.name!r}: set quant_bits")
                quant_bits = math.floor(math.log2(len(levels))) * slices
            if quant == "symm" and quant_bits < 2:
                raise ConfigError(f"quant_bits = {quant_bits!r}: expected an integer in [2, 16] for quant 'symm'")
        out["quant_bits"] = quant_bits
        if out["replicas"] > 1 and slices > 1:
            raise ConfigError(f"replicas = {out['replicas']} with slices = {slices}: replicated cells hold "
                              "the whole weight each; use one of the two (slices = 1 or replicas = 1)")
        check_periphery(out)
        check_v_read(device, out["v_read"])
        return cls(**out)

    def as_dict(self) -> dict[str, Any]:
        """Plain values (tuples as tuples), for JSON and ``Crossbar(device, **settings)``."""
        return {name: getattr(self, name) for name in NAMES}


NAMES = tuple(f.name for f in dataclasses.fields(Settings))


def _tile(tile) -> tuple[int, int]:
    try:
        if len(tile) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in tile):
            raise TypeError
        rows, cols = int(tile[0]), int(tile[1])
    except (TypeError, ValueError, IndexError):
        raise ConfigError(f"tile = {tile!r}: expected (tile_rows, tile_cols), two integers >= 1") from None
    if rows < 1 or cols < 1:
        raise ConfigError(f"tile = {tile!r}: tile_rows and tile_cols must be integers >= 1")
    return rows, cols


def _w_range(w_range) -> tuple[float, float]:
    try:
        lo, hi = float(w_range[0]), float(w_range[1])
    except (TypeError, ValueError, IndexError):
        raise ConfigError(f"w_range = {w_range!r}: expected (lo, hi) with lo < hi") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ConfigError(f"w_range = {w_range!r}: expected finite (lo, hi) with lo < hi")
    return lo, hi


def _str_or_positive(name: str, value, choices):
    if isinstance(value, str):
        if value not in choices:
            from ..config import suggest
            raise ConfigError(f"{name} = {value!r}: expected one of {', '.join(map(repr, choices))} "
                              f"or a number > 0{suggest(value, choices)}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} = {value!r}: expected one of {', '.join(map(repr, choices))} or a number > 0")
    return float(value)
