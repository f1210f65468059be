"""What one inference costs on crossbars: exact operation counts, and energy/latency/area estimates.

Counts are exact for the physical layout xbar assumes (below) and are tested against a brute-force
placement. Energy, latency and area are ESTIMATES: the counts times per-operation constants read
from a TOML file (``devices/costs/*.toml``, default ``default-45nm``, whose comments cite every
number). Change the constants, not the counts, to model other periphery.

Layout of one layer (a weight matrix W (in, out) with a pruning mask; a cell is one weight: a
differential pair of devices, or one device with offset mapping; ``planes`` = bit slices):

- Pruned weights are unprogrammed (both devices at G_min) and count in no statistic.
- Re-packing (default): the surviving columns (outputs with at least one kept weight) are packed in
  their original order into chunks of ``tile_cols``. Chunk j is wired only to the rows (inputs) that
  at least one of its columns uses, packed into ceil(rows_j / tile_rows) arrays, so arrays whose
  every weight was pruned are released. With ``bias="row"`` every chunk has one more row, the bias.
  Without re-packing the matrix keeps its positions and only all-pruned tiles are released.
- Per inference (one input vector), each used array is read once (``array_reads``); each of its
  rows that holds a kept weight is driven by its own DAC (``dac_conversions``; the constant bias
  row needs none); each of its columns that holds a kept weight is converted once by the array's
  ADC (``adc_conversions``). The digital periphery then adds, per output, the partial sums of the
  k arrays (times planes) holding its weights (k·planes − 1 ``partial_sum_adds``), multiplies by
  the column gain (``gain_mults``) and adds a digital bias (``bias_adds``). A convolution (im2col,
  :mod:`xbar.conv`) reads its (k·k·C_in, C_out) matrix once per output position, so its activity
  counts are OH·OW times those of one read; its devices and arrays are counted once.

Note that ``Crossbar.stats()`` counts the simulator's own work (every device of the rectangular
matrix, one DAC conversion per input element); this module counts what the hardware needs.

Energy (pJ), per inference::

    array   = devices · V_read² · G_mid · t_read            (every kept device on a driven row)
    dac     = dac_conversions · dac_pj_per_bit · dac_bits
    adc     = adc_conversions · E_ADC(adc_bits),  E_ADC(b) = FOM_W 2^b + ½·10^((6.02b + 1.76 − FOM_S)/10)
    digital = (partial_sum_adds + bias_adds) · add_pj + gain_mults · mult_pj

Latency (ns): layers run one after the other, the arrays of a layer in parallel; a layer takes
t_dac + t_read + ceil(max columns per array / ADCs per array) · t_adc + (adder-tree depth + 1) · t_digital.
Area (mm²): every used array with its periphery, tiles · (R·C·devices per cell·A_cell + ADCs·A_ADC(b)
+ R·A_DAC(b)); A_ADC scales as 2^b. Bits that the simulation leaves ideal (``adc_bits`` or
``dac_bits`` None) are costed at the constants' ``*_bits_default``, and the result says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config import (
    Field,
    FieldConfig,
    find_preset,
    load_named_toml,
    parse_tile,
    preset_names,
    suggest,
    validate_fields,
)
from .errors import ConfigError, ShapeError

COSTS_KIND = "devices/costs"   # preset folder: devices/costs/*.toml, searched like device presets
DEFAULT_COSTS = "default-45nm"

FIELDS: tuple[Field, ...] = (
    Field("name", "str", "custom", "Preset name."),
    Field("description", "str", "", "One line for listings."),
    Field("source", "str", "", "Citations for the constants."),
    Field("add_pj", "float", 0.1, "Energy of one digital addition.", lo=0.0, unit="pJ"),
    Field("mult_pj", "float", 3.1, "Energy of one digital multiplication.", lo=0.0, unit="pJ"),
    Field("digital_ns", "float", 1.0, "Time of one digital operation.", lo=0.0, unit="ns"),
    Field("adc_walden_fj", "float", 5.0, "ADC Walden figure of merit P/(2^b f_s).", lo=0.0, unit="fJ/step"),
    Field("adc_schreier_db", "float", 175.0, "ADC Schreier figure of merit (thermal limit).", lo=100.0,
          hi=250.0, unit="dB"),
    Field("adc_ns", "float", 1.0, "Time of one ADC conversion.", lo=0.0, unit="ns"),
    Field("adcs_per_tile", "int", 1, "ADCs per array, time-shared by its columns.", lo=1, hi=100000),
    Field("adc_area_mm2", "float", 0.0012, "Area of one ADC at adc_area_bits (scales as 2^b).", lo=0.0,
          unit="mm²"),
    Field("adc_area_bits", "int", 8, "Resolution at which adc_area_mm2 is given.", lo=1, hi=24),
    Field("adc_bits_default", "int", 8, "ADC bits costed when the simulation's ADC is ideal.", lo=1, hi=24),
    Field("dac_pj_per_bit", "float", 0.025, "DAC/row-driver energy per input bit.", lo=0.0, unit="pJ"),
    Field("dac_ns", "float", 1.0, "Time to drive the rows.", lo=0.0, unit="ns"),
    Field("dac_area_mm2_per_bit", "float", 1.7e-7, "Area of one row DAC per bit.", lo=0.0, unit="mm²"),
    Field("dac_bits_default", "int", 8, "DAC bits costed when the simulation's inputs are analog.",
          lo=1, hi=24),
    Field("read_v", "float", 0.2, "Read voltage on a driven row.", lo=0.0, unit="V"),
    Field("read_ns", "float", 10.0, "Integration time of one array read.", lo=0.0, unit="ns"),
    Field("cell_area_f2", "float", 4.0, "Footprint of one device.", lo=0.0, unit="F²"),
    Field("feature_nm", "float", 45.0, "Feature size F.", lo=0.0, lo_open=True, unit="nm"),
)
FIELD_NAMES = tuple(f.name for f in FIELDS)

# Counts per layer, in the order `xbar cost` prints them (see the module docstring).
COUNTS = ("cells", "devices", "tiles", "device_capacity", "array_reads", "dac_conversions",
          "adc_conversions", "partial_sum_adds", "bias_adds", "gain_mults")
ESTIMATES = ("energy_pj", "array_pj", "dac_pj", "adc_pj", "digital_pj", "latency_ns", "area_mm2")
METRICS = ("energy_pj", "tiles", "adc_conversions", "devices", "latency_ns", "area_mm2")


class CostConstants(FieldConfig):
    """Per-operation constants of the cost model; see :data:`FIELDS` and devices/costs/*.toml.
    ``file``: the TOML file they came from (named in error messages)."""

    FIELDS = FIELDS
    LABEL = "CostConstants"

    def __init__(self, *, file: str | None = None, **values: Any):
        object.__setattr__(self, "file", file)
        super().__init__(**values)

    def where(self) -> str | None:
        return self.file

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, file: str | None = None) -> CostConstants:
        return cls(**validate_fields(FIELDS, dict(data), file=file), file=file)

    @classmethod
    def from_toml(cls, path: str | Path) -> CostConstants:
        return cls.from_dict(load_named_toml(path), file=str(path))

    @classmethod
    def preset(cls, name: str = DEFAULT_COSTS) -> CostConstants:
        """A preset from devices/costs/ (checkout, XBAR_PATH or the wheel), or a path to a TOML file."""
        try:
            path = find_preset(COSTS_KIND, name)
        except ConfigError:
            known = cls.presets()
            raise ConfigError(f"unknown cost preset {name!r}{suggest(name, known)}; known: "
                              f"{', '.join(known) or '(none found)'} (or pass a path to a .toml file)") from None
        return cls.from_toml(path)

    @staticmethod
    def presets() -> list[str]:
        return preset_names(COSTS_KIND)

    def adc_pj(self, bits: int) -> float:
        """Energy of one b-bit conversion: Walden term plus the thermal (Schreier) limit, in pJ."""
        walden = self.adc_walden_fj * 1e-3 * 2.0 ** bits
        sndr = 6.02 * bits + 1.76
        thermal = 0.5 * 10.0 ** ((sndr - self.adc_schreier_db) / 10.0) * 1e12
        return walden + thermal

    def adc_area(self, bits: int) -> float:
        return self.adc_area_mm2 * 2.0 ** (bits - self.adc_area_bits)


@dataclass(frozen=True)
class Periphery:
    """The crossbar configuration the counts depend on (one per network, or per layer).

    tile: (tile_rows, tile_cols) cells per array; devices_per_cell: 2 (differential) or 1 (offset);
    planes: bit slices times replicas; adc_bits/dac_bits: None = ideal in the simulation (costed at
    the constants' defaults); bias_row: the bias sits on an extra array row (in-situ updates) instead of being
    added digitally; g_mid_us: the conductance assumed for a kept device when reading (µS).
    """

    tile: tuple[int, int] = (64, 64)
    devices_per_cell: int = 2
    planes: int = 1
    adc_bits: int | None = None
    dac_bits: int | None = None
    bias_row: bool = False
    g_mid_us: float = 0.5

    def __post_init__(self):
        r, c = self.tile
        if min(int(r), int(c)) < 1:
            raise ConfigError(f"tile = {self.tile!r}: expected two integers >= 1")
        if self.devices_per_cell not in (1, 2) or self.planes < 1:
            raise ConfigError("devices_per_cell must be 1 or 2 and planes >= 1")

    @classmethod
    def from_crossbar(cls, xb) -> Periphery:
        d = xb.device
        return cls(tile=tuple(xb.tile), devices_per_cell=2 if xb.mapping == "differential" else 1,
                   planes=xb.slices * xb.replicas, adc_bits=xb.adc_bits, dac_bits=xb.dac_bits,
                   bias_row=xb.bias == "row",
                   g_mid_us=0.5 * (d.g_min_us + d.g_max_us))

    @classmethod
    def from_config(cls, cfg) -> Periphery:
        """From a TrainConfig: its device, tile and converters; update 'float' is costed as if it
        ran on the same crossbars; the in-situ updates (mixed, pulse) keep the bias on a row
        (their ``bias_row``)."""
        from .train.updates import UPDATES
        d = cfg.device_obj()
        return cls(tile=parse_tile(cfg.tile), planes=cfg.or_default("replicas"),
                   adc_bits=cfg.adc_bits, dac_bits=cfg.dac_bits,
                   bias_row=cfg.update is not None and UPDATES.get(cfg.update).bias_row,
                   g_mid_us=0.5 * (d.g_min_us + d.g_max_us))


# ---- counts --------------------------------------------------------------------------------------

def _blocks(mask: np.ndarray, tile: tuple[int, int], bias_row: bool, repack: bool):
    """Yield (cells, data_rows) per column chunk: the chunk's rows as wired, in array order.

    cells: bool (rows, cols) of kept cells (rows padded to a multiple of tile_rows with empty rows);
    data_rows: bool (rows,) True for rows driven by an input (not the bias row, not padding).
    """
    R, C = tile
    n_in, n_out = mask.shape
    live_cols = mask.any(axis=0)
    if repack:
        cols = np.flatnonzero(live_cols)
        groups = [cols[j:j + C] for j in range(0, len(cols), C)]
    else:
        groups = [np.arange(j, min(j + C, n_out)) for j in range(0, n_out, C)]
    for cc in groups:
        sub = mask[:, cc]
        rows = np.flatnonzero(sub.any(axis=1)) if repack else np.arange(n_in)
        cells = sub[rows]
        data = np.ones(len(rows), bool)
        if bias_row:
            cells = np.vstack([cells, live_cols[cc][None, :]])
            data = np.append(data, False)
        pad = -len(cells) % R
        if pad:
            cells = np.vstack([cells, np.zeros((pad, len(cc)), bool)])
            data = np.append(data, np.zeros(pad, bool))
        yield cells, data


def layer_counts(mask, periphery: Periphery = Periphery(), *, has_bias: bool = True, repack: bool = True,
                 reads: int = 1) -> dict[str, Any]:
    """Exact hardware counts of one layer for one inference (see the module docstring).

    mask: bool (in, out) of kept weights (all True for an unpruned layer); reads: array reads per
    inference (1 for a dense layer). Returns the COUNTS plus shape, rows_live, cols_live and the
    two figures latency needs (max_cols_per_tile, max_partials).
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ShapeError(f"mask: expected a 2-d (in, out) array, got shape {mask.shape}")
    p = periphery
    R, C = p.tile
    tiles = dac = adc = 0
    partials = np.zeros(mask.shape[1], np.int64)   # arrays holding a kept cell of each column
    col_index = np.flatnonzero(mask.any(axis=0)) if repack else np.arange(mask.shape[1])
    max_cols = 0
    start = 0
    bias_row = p.bias_row and has_bias
    for cells, data in _blocks(mask, p.tile, bias_row, repack):
        T = len(cells) // R
        c = cells.shape[1]
        t = cells.reshape(T, R, c)
        used = t.any(axis=(1, 2))                      # arrays left with a kept cell
        col_used = t.any(axis=1)[used]                 # (arrays, cols)
        row_used = (t.any(axis=2) & data.reshape(T, R))[used]
        tiles += int(used.sum())
        dac += int(row_used.sum())
        adc += int(col_used.sum())
        if col_used.size:
            max_cols = max(max_cols, int(col_used.sum(axis=1).max()))
        partials[col_index[start:start + c]] += col_used.sum(axis=0)
        start += c
    live = partials > 0
    cols_live = int(live.sum())
    P = p.planes
    cells = int(mask.sum()) + (cols_live if bias_row else 0)
    return {
        "shape": mask.shape,
        "rows_live": int(mask.any(axis=1).sum()),
        "cols_live": cols_live,
        "cells": cells,
        "devices": cells * p.devices_per_cell * P,
        "tiles": tiles * P,
        "device_capacity": tiles * P * R * C * p.devices_per_cell,
        "array_reads": tiles * P * reads,
        "dac_conversions": dac * P * reads,
        "adc_conversions": adc * P * reads,
        "partial_sum_adds": int((P * partials[live] - 1).sum()) * reads,
        "bias_adds": (cols_live if has_bias and not p.bias_row else 0) * reads,
        "gain_mults": cols_live * reads,
        "max_cols_per_tile": max_cols,
        "max_partials": int(P * partials.max()) if cols_live else 0,
        "reads": reads,
    }


def layer_estimates(counts: dict[str, Any], periphery: Periphery, k: CostConstants) -> dict[str, float]:
    """Energy (pJ, split by part), latency (ns) and area (mm²) of one layer from its counts."""
    p = periphery
    adc_bits = p.adc_bits if p.adc_bits is not None else k.adc_bits_default
    dac_bits = p.dac_bits if p.dac_bits is not None else k.dac_bits_default
    # V² · G · t with G in µS and t in ns is 1e-15 J = 1e-3 pJ.
    array = counts["devices"] * counts["reads"] * k.read_v ** 2 * p.g_mid_us * k.read_ns * 1e-3
    dac = counts["dac_conversions"] * k.dac_pj_per_bit * dac_bits
    adc = counts["adc_conversions"] * k.adc_pj(adc_bits)
    digital = (counts["partial_sum_adds"] + counts["bias_adds"]) * k.add_pj + counts["gain_mults"] * k.mult_pj
    if counts["tiles"]:
        depth = math.ceil(math.log2(counts["max_partials"])) if counts["max_partials"] > 1 else 0
        latency = counts["reads"] * (k.dac_ns + k.read_ns
                                     + math.ceil(counts["max_cols_per_tile"] / k.adcs_per_tile) * k.adc_ns
                                     + (depth + 1) * k.digital_ns)
    else:
        latency = 0.0
    R, C = p.tile
    cell_mm2 = k.cell_area_f2 * (k.feature_nm * 1e-6) ** 2
    area = counts["tiles"] * (R * C * p.devices_per_cell * cell_mm2 + k.adcs_per_tile * k.adc_area(adc_bits)
                              + R * k.dac_area_mm2_per_bit * dac_bits)
    return {"energy_pj": array + dac + adc + digital, "array_pj": array, "dac_pj": dac, "adc_pj": adc,
            "digital_pj": digital, "latency_ns": latency, "area_mm2": area}


def network_cost(masks, periphery: Periphery | list[Periphery] = Periphery(),
                 constants: CostConstants | str | None = None, *, biases=None, reads=None,
                 repack: bool = True, names=None) -> dict[str, Any]:
    """Counts and estimates per layer and in total for a network given as its layers' masks.

    masks: one bool (in, out) array per layer (or a shape tuple for an unpruned layer);
    periphery: one for all layers or one per layer; biases: one bool per layer (default all True);
    reads: array reads per inference per layer (default 1: dense; a convolution reads its
    (k·k·C_in, C_out) matrix once per output position).
    """
    k = _constants(constants)
    masks = [np.ones(m, bool) if isinstance(m, tuple) else np.asarray(m, bool) for m in masks]
    per = periphery if isinstance(periphery, (list, tuple)) else [periphery] * len(masks)
    biases = [True] * len(masks) if biases is None else list(biases)
    reads = [1] * len(masks) if reads is None else list(reads)
    layers = []
    for i, (m, p, b, n) in enumerate(zip(masks, per, biases, reads)):
        c = layer_counts(m, p, has_bias=b, repack=repack, reads=n)
        c.update(layer_estimates(c, p, k))
        c["name"] = names[i] if names else f"layer{i}"
        layers.append(c)
    total = {key: sum(layer[key] for layer in layers) for key in COUNTS + ESTIMATES}
    p0 = per[0] if per else Periphery()
    return {
        "layers": layers,
        "total": total,
        "constants": k.name,
        "adc_bits": p0.adc_bits if p0.adc_bits is not None else k.adc_bits_default,
        "adc_bits_assumed": p0.adc_bits is None,
        "dac_bits": p0.dac_bits if p0.dac_bits is not None else k.dac_bits_default,
        "dac_bits_assumed": p0.dac_bits is None,
        "tile": list(p0.tile),
        "repack": repack,
    }


def net_cost(net, periphery: Periphery | None = None, constants: CostConstants | str | None = None, *,
             masks=None, repack: bool = True) -> dict[str, Any]:
    """network_cost of a Network: its layers' masks (or `masks`), each layer's own crossbar
    configuration (or `periphery` for layers without one, e.g. update 'float')."""
    masks = masks if masks is not None else [layer_mask(layer) for layer in net.layers]
    per = []
    for layer in net.layers:
        if getattr(layer, "crossbar", None) is not None:
            per.append(Periphery.from_crossbar(layer.crossbar))
        elif periphery is not None:
            per.append(periphery)
        else:
            raise ConfigError("net_cost: a layer has no crossbar; pass periphery= to cost it")
    return network_cost(masks, per, constants, biases=[layer.b is not None for layer in net.layers],
                        reads=[layer_reads(layer) for layer in net.layers], repack=repack,
                        names=[f"{i}:{layer.kind} {layer.n_in}x{layer.n_out}" for i, layer in enumerate(net.layers)])


def layer_mask(layer) -> np.ndarray:
    """The kept-weight mask (n_in, n_out) of a crossbar layer (all True when unpruned)."""
    W = getattr(layer, "W", None)
    if W is None or W.ndim != 2:
        raise ConfigError(f"the cost model handles layers with a weight matrix on crossbars; {layer!r} "
                          "has none")
    return np.ones(W.shape, bool) if layer.mask is None else np.asarray(layer.mask, bool)


def layer_reads(layer) -> int:
    """Array reads per inference: 1 for a dense layer, one per output position for a convolution."""
    if getattr(layer, "kind", "dense") == "conv":
        return int(layer.conv_shape[0] * layer.conv_shape[1])
    return 1


def _constants(constants) -> CostConstants:
    if constants is None:
        return CostConstants.preset(DEFAULT_COSTS)
    if isinstance(constants, str):
        return CostConstants.preset(constants)
    if not isinstance(constants, CostConstants):
        raise ConfigError(f"constants: expected a CostConstants or a preset name, got {type(constants).__name__}")
    return constants


SUMMARY = ("devices", "tiles", "array_reads", "dac_conversions", "adc_conversions", "partial_sum_adds",
           "energy_pj", "latency_ns", "area_mm2")


def summary(cost: dict[str, Any]) -> dict[str, Any]:
    """The totals worth a JSON line: devices, tiles, conversions, energy, latency, area."""
    return {key: cost["total"][key] for key in SUMMARY}
