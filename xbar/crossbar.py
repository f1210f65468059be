"""A weight matrix programmed onto crossbar tiles, read through DAC, device noise and ADC.

Usage::

    xb = Crossbar(Device.preset("agsi").with_(bits=3), tile=(64, 64), adc_bits=8, seed=0)
    xb.program(W)          # W: (in, out)
    Y = xb.mvm(X)          # (batch, in) -> (batch, out), in memory
    E_in = xb.mvm_t(E)     # (batch, out) -> (batch, in), the same arrays read transposed

What happens in `mvm` (see DOMAIN.md §3):
1. DAC: inputs are scaled per row by their abs max ("dynamic", aihwkit's noise management) or by a
   fixed range, and quantized to `dac_bits`. The scale is undone digitally at the end.
2. Each tile (tile_rows x tile_cols devices of every plane) produces column currents
   I = x_tile @ (G+ - G-); with read noise I ~ N(mean, sum x^2 var(G)) exactly (one draw per
   tile output, not per device).
3. Each tile's currents pass its own ADC (`adc_bits`, range calibrated per tile), then the digital
   periphery multiplies by the column gain alpha and plane significance and adds partial sums.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import mapping as mp
from .device import Device, pulse_number, pulse_response
from .device import pulse_curve_a as dev_pulse_a
from .errors import ConfigError, NonFiniteError, ShapeError
from .kernels import rng as krng
from .kernels.mvm import dac_dynamic, dac_dynamic_serial, tile_periphery, tile_periphery_serial
from .kernels.program import program_differential, program_quant_differential

DAC_RANGES = ("dynamic",)
ADC_RANGES = ("calibrated", "physical")
BIAS_MODES = ("digital", "row")


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        from .config import suggest
        raise ConfigError(f"{name} = {value!r}: expected one of {', '.join(map(repr, choices))}"
                          + (suggest(value, choices) if isinstance(value, str) else ""))


def _check_bits(name: str, value, lo: int, hi: int) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
        raise ConfigError(f"{name} = {value!r}: expected an integer in [{lo}, {hi}] or None (ideal)")


def as_matrix(name: str, a, ndim: int = 2, cols: int | None = None, check_finite: bool = True) -> np.ndarray:
    """Validate an input array (real, right ndim/width, finite) and return it as C-contiguous float32.

    check_finite=False skips the finiteness pass; hot paths then check their (smaller) output
    and call :func:`raise_nonfinite` to name the culprit.
    """
    if (type(a) is np.ndarray and a.dtype == np.float32 and a.ndim == ndim and a.flags.c_contiguous
            and a.size and (cols is None or a.shape[-1] == cols)):
        # The hot path (training): already what the kernels take; only finiteness is left to check.
        if check_finite and not np.isfinite(a).all():
            raise_nonfinite(name, a, a)
        return a
    try:
        arr = np.asarray(a)
    except (ValueError, TypeError) as exc:
        raise ShapeError(f"{name}: not a rectangular numeric array ({exc})") from None
    if arr.dtype.kind not in "fiub":
        raise ShapeError(f"{name}: expected a real numeric array, got dtype {arr.dtype}")
    if arr.ndim != ndim:
        raise ShapeError(f"{name}: expected a {ndim}-d array, got shape {arr.shape}")
    if cols is not None and arr.shape[-1] != cols:
        raise ShapeError(f"{name}: expected last dimension {cols}, got shape {arr.shape}")
    if any(s == 0 for s in arr.shape) and name == "W":
        raise ShapeError(f"{name}: empty matrix of shape {arr.shape}")
    with np.errstate(over="ignore"):
        arr32 = np.ascontiguousarray(arr, dtype=np.float32)
    if check_finite and not np.isfinite(arr32).all():
        raise_nonfinite(name, arr, arr32)
    return arr32


def raise_nonfinite(name: str, orig, arr32: np.ndarray) -> None:
    """Raise a ShapeError naming the first NaN/inf (or float32 overflow) in an input."""
    where = np.argwhere(~np.isfinite(arr32))
    if len(where) == 0:
        raise NonFiniteError(f"{name}: the product overflowed the float32 range (inputs and weights "
                             "are finite but too large)")
    bad = tuple(int(i) for i in where[0])
    value = np.asarray(orig)[bad]
    if np.isfinite(value):
        raise NonFiniteError(f"{name}: value {float(value):.3g} at index {bad} is beyond the float32 range")
    raise NonFiniteError(f"{name}: contains NaN or inf (first at index {bad})")


class Crossbar:
    """One weight matrix on virtual crossbar tiles built from `device`.

    Parameters
    ----------
    device: the Device (preset or custom) every cell is built from.
    tile: (tile_rows, tile_cols) devices per physical array; 64x64 = 4,096 as in the seed study.
    mapping: "differential" (w = alpha (G+ - G-)) or "offset" (w = alpha (G - g_min) + beta).
    adc_bits: ADC resolution per tile output (2-16), None = ideal.
    dac_bits: input DAC resolution (2-16), None = analog inputs.
    seed: seeds every random draw (faults, spread, write and read noise): same seed, same bits.
    range: "global" (fixed `w_range` for every tensor, the seed study's default) or "local"
        (recomputed from the weights at every programming).
    w_range: (lo, hi) weight range of the global grid.
    quant: None (nearest device level), "asymm" or "symm" (the seed study's quantizers).
    quant_bits: quantizer bits; default the device's bits (times `slices`).
    gain: "layer" or "column": granularity of the digital gain alpha under a local range.
    slices: devices per weight (bit slicing); each holds `bits` of the code.
    adc_range: "calibrated" (percentile of a calibration batch, per tile), "physical"
        (largest possible tile current) or a number (fixed full scale, in µS x input units).
    adc_percentile: percentile of |current| used by calibration (100 = max).
    dac_range: "dynamic" (each input row scaled by its abs max) or a number r (fixed [-r, r]).
    bias: "digital" (added after the ADC) or "row" (an extra array row driven at input 1).
    read_noise: set False to read without read noise (e.g. for evaluation of programmed state).
    """

    def __init__(self, device: Device, tile: tuple[int, int] = (64, 64), mapping: str = "differential",
                 adc_bits: int | None = None, dac_bits: int | None = None, seed: int = 0, *,
                 range: str = "global", w_range: tuple[float, float] = (-1.0, 1.0),
                 quant: str | None = None, quant_bits: int | None = None, gain: str = "layer",
                 slices: int = 1, adc_range: Any = "calibrated", adc_percentile: float = 100.0,
                 dac_range: Any = "dynamic", bias: str = "digital", read_noise: bool = True):
        if not isinstance(device, Device):
            raise ConfigError(f"device: expected an xbar.Device, got {type(device).__name__}")
        try:
            if len(tile) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer))
                                     for v in tile):
                raise TypeError
            rows, cols = (int(tile[0]), int(tile[1]))
        except (TypeError, ValueError, IndexError):
            raise ConfigError(f"tile = {tile!r}: expected (tile_rows, tile_cols), two integers >= 1") from None
        if rows < 1 or cols < 1:
            raise ConfigError(f"tile = {tile!r}: tile_rows and tile_cols must be integers >= 1")
        _check_choice("mapping", mapping, mp.MAPPINGS)
        _check_bits("adc_bits", adc_bits, 2, 16)
        _check_bits("dac_bits", dac_bits, 2, 16)
        _check_choice("range", range, mp.RANGES)
        if quant is not None:
            _check_choice("quant", quant, mp.QUANTS)
        _check_choice("gain", gain, mp.GAINS)
        _check_choice("bias", bias, BIAS_MODES)
        _check_bits("slices", slices, 1, 8)
        if slices is None:
            raise ConfigError("slices = None: expected an integer in [1, 8]")
        try:
            lo, hi = float(w_range[0]), float(w_range[1])
        except (TypeError, ValueError, IndexError):
            raise ConfigError(f"w_range = {w_range!r}: expected (lo, hi) with lo < hi") from None
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ConfigError(f"w_range = {w_range!r}: expected finite (lo, hi) with lo < hi")
        if isinstance(adc_range, str):
            _check_choice("adc_range", adc_range, ADC_RANGES)
        elif not (isinstance(adc_range, (int, float)) and adc_range > 0 and math.isfinite(adc_range)):
            raise ConfigError(f"adc_range = {adc_range!r}: expected 'calibrated', 'physical' or a number > 0")
        if not (isinstance(adc_percentile, (int, float)) and 0 < adc_percentile <= 100):
            raise ConfigError(f"adc_percentile = {adc_percentile!r}: expected a number in (0, 100]")
        if isinstance(dac_range, str):
            _check_choice("dac_range", dac_range, DAC_RANGES)
        elif not (isinstance(dac_range, (int, float)) and dac_range > 0 and math.isfinite(dac_range)):
            raise ConfigError(f"dac_range = {dac_range!r}: expected 'dynamic' or a number > 0")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2 ** 63:
            raise ConfigError(f"seed = {seed!r}: expected an integer in [0, 2**63)")
        levels = device.levels()
        if quant is not None:
            if levels is not None and not device.is_uniform:
                raise ConfigError(f"quant = {quant!r} needs uniform levels; device {device.name!r} has a "
                                  "measured level table (use quant=None to snap to its levels)")
            if quant_bits is None:
                if levels is None:
                    raise ConfigError(f"quant = {quant!r} on analog device {device.name!r}: set quant_bits")
                quant_bits = int(math.floor(math.log2(len(levels)))) * slices
        _check_bits("quant_bits", quant_bits, 2 if quant == "symm" else 1, 16)

        self.device = device
        self.tile = (rows, cols)
        self.mapping = mapping
        self.adc_bits = adc_bits
        self.dac_bits = dac_bits
        self.seed = int(seed)
        self.range = range
        self.w_range = (lo, hi)
        self.quant = quant
        self.quant_bits = quant_bits
        self.gain = gain
        self.slices = int(slices)
        self.adc_range = adc_range
        self.adc_percentile = float(adc_percentile)
        self.dac_range = dac_range
        self.bias = bias
        self.read_noise = bool(read_noise)
        self._analog_io = adc_bits is None and dac_bits is None
        self._levels = device.levels()
        # The common training case gets a fused programming kernel (same result, one pass).
        self._fused_program = (slices == 1 and mapping == "differential" and (
            (quant is None and self._levels is not None and device.is_uniform)
            or (quant is not None and (self._levels is None or device.is_uniform))))

        self._mask: np.ndarray | None = None     # cells in use (None: all), see program()
        self._mask32: np.ndarray | None = None
        self._quant_consts = None      # fused quantizer constants under a fixed (global) range
        self._alpha_src = None         # the alpha array _alpha32/_beta32 were last derived from
        self._fresh: dict[str, np.ndarray] | None = None
        # A write that lands exactly on its targets (no spread, write noise or faults).
        self._exact_write = not (device.g_d2d_rel or device.program_noise_rel or device.stuck_on_rate
                                 or device.stuck_off_rate)
        self._rng = np.random.default_rng(self.seed)
        self._stream = self.seed     # key of the read-noise stream (a drifted copy gets its own)
        self._reads = 0               # counter of the read-noise stream
        self._shape: tuple[int, int] | None = None
        self._persist: dict[str, np.ndarray] | None = None   # per-device draws kept across programs
        self._stats = {"programs": 0, "mvm_calls": 0, "mvm_t_calls": 0, "adc_conversions": 0,
                       "adc_clipped": 0, "dac_conversions": 0, "dac_clipped": 0, "weights_clipped": 0}
        self._adc_fs: dict[str, np.ndarray | None] = {"fwd": None, "bwd": None}
        self.t_s: float | None = None  # time since programming of the read state (None = t0)
        self.drift_compensation = 1.0

    # ---- programming ----------------------------------------------------------------------------
    def program(self, W, b=None, mask=None) -> Crossbar:
        """Write weights W (in, out) and optional bias b (out,) onto the devices.

        mask: None, or a boolean (in, out) array of the cells in use (pruning). Cells outside it
        are never written: both devices stay at their own g_min (no write noise; a stuck device
        stays stuck), they read as zero weight, and stats() counts neither them nor tiles left
        without a cell in use.
        """
        W = as_matrix("W", W)
        n_in, n_out = W.shape
        if mask is not None:
            mask = np.asarray(mask)
            if mask.dtype != np.bool_ or mask.shape != (n_in, n_out):
                raise ShapeError(f"mask: expected a boolean array of shape {(n_in, n_out)}, got "
                                 f"{mask.dtype} {mask.shape}")
            mask = None if mask.all() else mask
        self._b_digital = None
        if b is not None:
            b = as_matrix("b", np.asarray(b).reshape(1, -1), cols=n_out)[0]
            if self.bias == "row":
                W = np.vstack([W, b[None, :]])
            else:
                self._b_digital = b
        shape = W.shape
        if self._shape is not None and shape != self._shape:
            raise ShapeError(f"W: this crossbar holds a {self._shape} matrix, got {shape}; "
                             "create a new Crossbar for a new layer size")
        self._shape = shape
        self._n_in = n_in
        self._has_bias_row = b is not None and self.bias == "row"
        dev = self.device
        levels = self._levels
        if self._fused_program:
            planes = self._program_fused(W)
        else:
            codes = mp.weights_to_codes(W, levels_per_plane=None if levels is None else len(levels),
                                        slices=self.slices, mapping=self.mapping, quant=self.quant,
                                        quant_bits=self.quant_bits, rng=self.range, gain=self.gain,
                                        w_range=self.w_range)
            planes = mp.codes_to_planes(codes, dev, self.mapping, self.slices)
        self._stats["weights_clipped"] += planes.clipped
        if mask is not None and self._has_bias_row:
            mask = np.vstack([mask, np.ones((1, n_out), bool)])   # the bias row is always in use
        self._mask = mask
        self._mask32 = None if mask is None else mask.astype(np.float32)
        gp, gn = self._physical(planes.gp, mask=mask), planes.gn
        if self.mapping == "differential":
            gn = self._physical(gn, second=True, mask=mask)
        self._gp0, self._gn0 = gp, gn           # as programmed (t = t0)
        self._sig, self._alpha, self._beta = planes.sig, planes.alpha, planes.beta
        self._stats["programs"] += 1
        self.t_s = None
        self.drift_compensation = 1.0
        fresh, self._fresh = self._fresh, None
        exact = fresh is not None and self._exact_write
        if exact and mask is not None:
            for a in fresh.values():
                a[~mask] = 0
        self._set_state(gp, gn, fresh["gd"][None] if exact else None)
        if exact:
            self._cache.update(g32=fresh["g32"], w_fwd32=fresh["w_fwd32"])   # built by the kernel
        return self

    def _program_fused(self, W: np.ndarray) -> mp.Planes:
        """The same planes as weights_to_codes + codes_to_planes, in one numba pass (see kernels)."""
        d = self.device
        if self.quant is not None:
            return self._program_fused_quant(W)
        lo, hi = mp._col_ranges(W, self.range, self.gain, self.w_range, True)
        L = len(self._levels)
        k_max = float(L - 1)
        m = hi
        step = np.where(m > 0, m, 1.0) / k_max
        dstep = d.window_us / (L - 1)
        gp = np.empty((1,) + W.shape)
        gn = np.empty((1,) + W.shape)
        clipped = program_differential(W, lo, hi, step, dstep, d.g_min_us, dstep, L, gp[0], gn[0])
        return mp.Planes(gp, gn, np.ones(1), step / dstep, np.zeros_like(m), int(clipped))

    def _program_fused_quant(self, W: np.ndarray) -> mp.Planes:
        """The seed quantizers on a differential pair (analog or uniform device), in one pass."""
        d = self.device
        c = self._quant_consts
        if c is None:
            n, symm = self.quant_bits, self.quant == "symm"
            lo, hi = mp._col_ranges(W, self.range, self.gain, self.w_range, symm)
            span = hi - lo
            nq = float(2 ** (n - 1) - 1) if symm else float(2 ** n - 1)
            levels = self._levels
            if levels is None:
                dstep, lvl, top = d.window_us / nq, 1.0, 0.0
            else:
                L = len(levels)
                if L - 1 < nq:
                    raise ConfigError(f"the quantizer needs codes up to {int(nq)} but the device "
                                      f"({d.summary()}, 1 slice(s)) holds at most {L - 1}: lower the "
                                      "quantizer bits, raise the device bits or add slices")
                lvl, top = d.window_us / (L - 1), float(L - 1)
                dstep = max(1, (L - 1) // int(nq)) * lvl
            step, beta = (hi / nq, np.zeros_like(hi)) if symm else (span / nq / 2, (lo + hi) / 2)
            degenerate = span == 0
            if np.any(degenerate):
                step = np.where(degenerate, 1.0, step)
                beta = np.where(degenerate, lo, beta)
            c = (lo, hi, nq, symm, dstep, lvl, top, levels is not None, step / dstep, beta)
            if self.range == "global":
                self._quant_consts = c     # a fixed range: the same constants every program
        lo, hi, nq, symm, dstep, lvl, top, snap, alpha, beta = c
        gp = np.empty((1,) + W.shape)
        gn = np.empty((1,) + W.shape)
        gd = np.empty(W.shape)
        g32 = np.empty(W.shape, np.float32)
        w32 = np.empty(W.shape, np.float32)
        clipped = program_quant_differential(W, lo, hi, nq, symm, dstep, d.g_min_us, lvl, top, snap, alpha,
                                             gp[0], gn[0], gd, g32, w32)
        self._fresh = {"gd": gd, "g32": g32, "w_fwd32": w32}
        return mp.Planes(gp, gn, np.ones(1), alpha, beta, int(clipped))

    def _persistent(self, shape) -> dict[str, np.ndarray]:
        """Per-device properties drawn once per crossbar: window spread, faults, drift exponents."""
        if self._persist is None:
            d, r = self.device, self._rng
            n_dev = 2 if self.mapping == "differential" else 1
            full = (n_dev,) + shape
            p = {}
            p["gmin"] = d.g_min_us * (1 + d.g_d2d_rel * r.standard_normal(full)) if d.g_d2d_rel else None
            p["gmax"] = d.g_max_us * (1 + d.g_d2d_rel * r.standard_normal(full)) if d.g_d2d_rel else None
            if p["gmin"] is not None:
                p["gmin"] = np.maximum(p["gmin"], 0.0)
                p["gmax"] = np.maximum(p["gmax"], p["gmin"])
            if d.stuck_on_rate or d.stuck_off_rate:
                u = r.random(full)
                p["stuck"] = np.where(u < d.stuck_on_rate, 1, np.where(u < d.stuck_on_rate + d.stuck_off_rate,
                                                                        -1, 0)).astype(np.int8)
            else:
                p["stuck"] = None
            if d.drift_nu_mean or d.drift_nu_std:
                p["nu"] = np.maximum(d.drift_nu_mean + d.drift_nu_std * r.standard_normal(full), 0.0)
            else:
                p["nu"] = None
            self._persist = p
        return self._persist

    def _physical(self, g: np.ndarray, second: bool = False, mask: np.ndarray | None = None) -> np.ndarray:
        """Target conductances -> what the devices hold: spread, write noise, faults.

        Cells outside `mask` (pruned) are not written: they stay at their device's own g_min.
        """
        d = self.device
        p = self._persistent(g.shape)
        k = 1 if second else 0
        if p["gmin"] is not None:
            lo, hi = p["gmin"][k], p["gmax"][k]
            g = lo + (g - d.g_min_us) * (hi - lo) / d.window_us
        else:
            lo, hi = d.g_min_us, d.g_max_us
        if d.program_noise_rel:
            g = g + d.program_noise_rel * d.window_us * self._rng.standard_normal(g.shape)
            g = np.clip(g, lo, hi)   # a device cannot leave its own window
        if mask is not None:
            g = np.where(mask[None], g, lo)
        if p["stuck"] is not None:
            s = p["stuck"][k]
            g = np.where(s == 1, hi, np.where(s == -1, lo, g))
        return g

    def _set_state(self, gp: np.ndarray, gn: np.ndarray, gd: np.ndarray | None = None) -> None:
        """Install conductances; the kernel-ready arrays derived from them are built on first use."""
        d = self.device
        self._gp, self._gn = gp, gn
        P, rows, out = gp.shape
        R, C = self.tile
        self._nrt, self._nct = -(-rows // R), -(-out // C)
        self._gd = gp - gn if gd is None else gd
        if self._alpha is not self._alpha_src or self.drift_compensation != 1.0:
            # (a fixed range hands over the same alpha and beta arrays every program: convert once)
            self._alpha_src = self._alpha if self.drift_compensation == 1.0 else None
            self._alpha_eff = self._alpha * self.drift_compensation
            self._alpha32 = self._alpha_eff.astype(np.float32)
            self._beta32 = self._beta.astype(np.float32) if np.any(self._beta) else None
        self._var = None
        if d.read_noise_rel and self.read_noise:
            s = d.read_noise_rel
            if d.read_noise_kind == "multiplicative":
                var = (s * gp) ** 2 + ((s * gn) ** 2 if self.mapping == "differential" else 0.0)
            else:
                n_dev = 2 if self.mapping == "differential" else 1
                var = np.full_like(gp, n_dev * (s * d.window_us) ** 2)
            self._var = var
        self._cache: dict[str, Any] = {}

    def _cached(self, key: str, build):
        value = self._cache.get(key)
        if value is None:
            value = self._cache[key] = build()
        return value

    def _gsum(self) -> np.ndarray:
        """sum_p sig_p (G+ - G-): the analog weight before the digital gain, (rows, out)."""
        return self._cached("gsum", lambda: np.einsum("p,pio->io", self._sig, self._gd)
                            if self._gd.shape[0] > 1 else self._gd[0])

    def _vsum(self) -> np.ndarray:
        return self._cached("vsum", lambda: np.einsum("p,pio->io", self._sig ** 2, self._var))

    @property
    def _w_eff(self) -> np.ndarray:
        return self._cached("w_eff", lambda: self._gsum() * self._alpha_eff[None, :]
                            + (self._beta[None, :] if self._mask is None else self._beta[None, :] * self._mask))

    @property
    def _w_fwd32(self) -> np.ndarray:
        return self._cached("w_fwd32", lambda: np.ascontiguousarray(
            self._gsum() * self._alpha_eff[None, :], dtype=np.float32))

    @property
    def _w_bwd32(self) -> np.ndarray:
        return self._cached("w_bwd32", lambda: np.ascontiguousarray(self._gsum().T, dtype=np.float32))

    @property
    def _g32(self) -> np.ndarray:
        return self._cached("g32", lambda: np.ascontiguousarray(self._gsum(), dtype=np.float32))

    @property
    def _v_fwd32(self) -> np.ndarray:
        return self._cached("v_fwd32", lambda: np.ascontiguousarray(
            self._vsum() * (self._alpha_eff ** 2)[None, :], dtype=np.float32))

    @property
    def _v_bwd32(self) -> np.ndarray:
        return self._cached("v_bwd32", lambda: np.ascontiguousarray(self._vsum().T, dtype=np.float32))

    def _fwd_stacks(self):
        """Per-tile stacks (P, n_row_tiles, tile_rows, out) of G+ - G- and of the read variance."""
        def build():
            P, rows, out = self._gd.shape
            R = self.tile[0]
            pad = self._nrt * R - rows

            def stack(a):
                return np.pad(a, ((0, 0), (0, pad), (0, 0))).astype(np.float32).reshape(P, self._nrt, R, out)
            return stack(self._gd), None if self._var is None else stack(self._var)
        return self._cached("fwd", build)

    @property
    def _fwd_g(self):
        return self._fwd_stacks()[0]

    @property
    def _fwd_v(self):
        return self._fwd_stacks()[1]

    # ---- reading --------------------------------------------------------------------------------
    def _check_programmed(self):
        if self._shape is None:
            raise ShapeError("this crossbar is not programmed yet: call program(W) first")

    def mvm(self, X) -> np.ndarray:
        """In-memory product X @ W (+ b): (batch, in) -> (batch, out) float32."""
        self._check_programmed()
        X0 = X
        X = as_matrix("X", X, cols=self._n_in, check_finite=self._analog_io is False)
        self._stats["mvm_calls"] += 1
        if self._has_bias_row:
            X = np.hstack([X, np.ones((X.shape[0], 1), np.float32)])
        if self._analog_io:
            y = self._read(X, "fwd")   # no DAC, no ADC: input scaling would cancel out exactly
        else:
            xs, scale = self._dac(X)
            y = self._read(xs, "fwd")
            y *= scale
        if self._b_digital is not None:
            y += self._b_digital[None, :]
        if self._beta32 is not None:
            # the digital offset belongs to the cells in use only
            xs = X.sum(axis=1, keepdims=True) if self._mask32 is None else X @ self._mask32
            y += xs * self._beta32[None, :]
        if self._analog_io and not np.isfinite(y).all():
            raise_nonfinite("X", X0, as_matrix("X", X0, cols=self._n_in, check_finite=False))
        return y

    def mvm_t(self, E) -> np.ndarray:
        """In-memory transposed product E @ W.T on the same devices: (batch, out) -> (batch, in)."""
        self._check_programmed()
        E0 = E
        E = as_matrix("E", E, cols=self._shape[1], check_finite=self._analog_io is False)
        self._stats["mvm_t_calls"] += 1
        Ea = E * self._alpha32[None, :]      # the column gain is digital: applied before the DAC
        if self._analog_io:
            y = self._read(Ea, "bwd")
            if not np.isfinite(y).all():
                raise_nonfinite("E", E0, as_matrix("E", E0, cols=self._shape[1], check_finite=False))
        else:
            es, scale = self._dac(Ea)
            y = self._read(es, "bwd")
            y *= scale
        if self._beta32 is not None:
            y += (E @ self._beta32)[:, None] if self._mask32 is None else (E * self._beta32) @ self._mask32.T
        return y[:, :self._n_in] if self._has_bias_row else y

    def _dac(self, X: np.ndarray):
        """Input scaling and DAC quantization; returns (driven inputs in [-1, 1], scale to undo)."""
        if self.dac_range == "dynamic":
            # One pass per row (numpy's max over short rows costs ~4x the division: 11 ms for
            # 200,704 x 25 im2col rows).
            xs = np.empty_like(X)
            scale = np.empty((X.shape[0], 1), np.float32)
            (dac_dynamic if X.size >= _PARALLEL_MIN else dac_dynamic_serial)(X, xs, scale)
        else:
            scale = np.float32(self.dac_range)
            xs = X / scale
            n_over = int(np.count_nonzero(np.abs(xs) > 1.0))
            if n_over:
                self._stats["dac_clipped"] += n_over
                xs = np.clip(xs, -1.0, 1.0)
        if self.dac_bits is not None:
            n = np.float32(2 ** (self.dac_bits - 1) - 1)
            xs = np.round(xs * n) / n
            self._stats["dac_conversions"] += X.size
        return np.ascontiguousarray(xs, dtype=np.float32), scale

    def _read(self, xs: np.ndarray, way: str) -> np.ndarray:
        """The analog read plus periphery, on inputs already through the DAC (before gains undo)."""
        if self.adc_bits is None:
            # No ADC: tiles do not change the math, so one BLAS product (and one for the variance).
            g = self._w_fwd32 if way == "fwd" else self._g32.T   # BLAS reads the transpose in place
            y = xs @ g
            if self._var is not None:
                v = self._v_fwd32 if way == "fwd" else self._v_bwd32
                sd = np.sqrt((xs * xs) @ v)
                self._reads += 1
                fill = krng.add_scaled_normals if y.size >= _PARALLEL_MIN else krng.add_scaled_normals_serial
                fill(y, sd, np.uint64(self._stream), np.uint64(self._reads),
                                        krng.KN, krng.WN, krng.FN)
            return y
        if xs.shape[0] == 0:
            return np.zeros((0, self._shape[1] if way == "fwd" else self._shape[0]), np.float32)
        M, V, post = self._tile_currents(xs, way)
        inv_step, step_post, qlo, qhi = self._adc_params(M, post, way)
        T, B, N = M.shape
        out = np.empty((B, N), dtype=np.float32)
        clipped = np.empty(B, dtype=np.int64)
        self._reads += 1
        kernel = tile_periphery if M.size >= _PARALLEL_MIN else tile_periphery_serial
        kernel(M, V if V is not None else _NO_VAR, inv_step, step_post, qlo, qhi, post,
                       np.uint64(self._stream), np.uint64(self._reads), krng.KN, krng.WN, krng.FN, krng.WN32,
               out, clipped)
        self._stats["adc_conversions"] += M.size
        self._stats["adc_clipped"] += int(clipped.sum())
        return out

    def _tile_currents(self, xs: np.ndarray, way: str):
        """Per-tile mean currents (T, B, N), variances (or None) and digital gains post (T, N)."""
        B = xs.shape[0]
        R, C = self.tile
        P = self._gd.shape[0]
        if way == "fwd":
            n_t, size, (g, v) = self._nrt, R, self._fwd_stacks()
            post = (self._sig[:, None, None] * self._alpha_eff[None, None, :]).repeat(n_t, axis=1)
        else:
            n_t, size, (g, v) = self._nct, C, self._bwd_stacks()
            post = np.broadcast_to(self._sig[:, None, None], (P, n_t, g.shape[-1]))
        # Reused output buffers: fresh ones are page-faulted in again on every read (measured
        # ~2,000 faults and up to 2x the matmul time per call at 256x1024x1024).
        n_out = g.shape[-1]
        bufs = self._cached(f"bufs-{way}-{B}", lambda: (
            np.empty((P, n_t, B, n_out), np.float32),
            None if v is None else np.empty((P, n_t, B, n_out), np.float32)))
        # One product per tile on a column slice of xs (BLAS takes the row stride): no padded,
        # transposed copy of the input, and the last tile multiplies only its real rows. For tall,
        # narrow inputs (a convolution's im2col rows: 200,704 x 25 for lenet5's first layer at
        # batch 256) the padded copy was 2.5x the input and cost more than the products.
        n_in = xs.shape[1]
        x2 = None if v is None else xs * xs
        for p in range(P):
            for t in range(n_t):
                lo, hi = t * size, min((t + 1) * size, n_in)
                np.matmul(xs[:, lo:hi], g[p, t, :hi - lo], out=bufs[0][p, t])
                if v is not None:
                    np.matmul(x2[:, lo:hi], v[p, t, :hi - lo], out=bufs[1][p, t])
        M = bufs[0].reshape(P * n_t, B, -1)
        V = None if v is None else bufs[1].reshape(P * n_t, B, -1)
        post = np.ascontiguousarray(post.reshape(P * n_t, -1), dtype=np.float32)
        return M, V, post

    def _bwd_stacks(self):
        """Transposed per-tile stacks (P, n_col_tiles, tile_cols, rows) for mvm_t."""
        def build():
            C = self.tile[1]
            P, rows, out = self._gd.shape
            pad = self._nct * C - out

            def stack(a):
                a = np.pad(a, ((0, 0), (0, 0), (0, pad))).astype(np.float32)
                return np.ascontiguousarray(a.reshape(P, rows, self._nct, C).transpose(0, 2, 3, 1))
            return stack(self._gd), None if self._var is None else stack(self._var)
        return self._cached("bwd", build)

    def _adc_params(self, M: np.ndarray, post: np.ndarray, way: str):
        """ADC step, code bounds and step*gain per (tile, output): full scale per tile."""
        n = 2 ** (self.adc_bits - 1) - 1
        T, B, N = M.shape
        group = self.tile[1] if way == "fwd" else self.tile[0]   # outputs sharing one tile's ADC
        n_groups = -(-N // group)
        physical = (self.tile[0] if way == "fwd" else self.tile[1]) * self.device.window_us
        if self.adc_range == "physical":
            fs = np.full((T, n_groups), physical)
        elif self.adc_range == "calibrated":
            if self._adc_fs[way] is None or self._adc_fs[way].shape != (T, n_groups):
                self._adc_fs[way] = self._calibrated_fs(M, group, n_groups, physical)
                self._stats[f"adc_auto_calibrated_{way}"] = True
            fs = self._adc_fs[way]
        else:
            fs = np.full((T, n_groups), float(self.adc_range))
        fs_cols = np.repeat(fs, group, axis=1)[:, :N]
        step = (fs_cols / n).astype(np.float32)
        inv_step = (1.0 / step).astype(np.float32)
        qhi = np.full((T, N), n, dtype=np.float32)
        return inv_step, np.ascontiguousarray(step * post), -qhi, qhi

    def _calibrated_fs(self, M: np.ndarray, group: int, n_groups: int, physical: float) -> np.ndarray:
        """Full scale per tile: a percentile of |noise-free current| over a calibration batch."""
        T, B, N = M.shape
        pad = n_groups * group - N
        a = np.abs(np.pad(M, ((0, 0), (0, 0), (0, pad)))).reshape(T, B, n_groups, group)
        a = a.transpose(0, 2, 1, 3).reshape(T, n_groups, -1)
        fs = np.percentile(a, self.adc_percentile, axis=2) if self.adc_percentile < 100 else a.max(axis=2)
        return np.where(fs > 0, fs, physical)

    def calibrate(self, X, E=None) -> Crossbar:
        """Set the ADC full scale per tile from a calibration batch X (and E for mvm_t).

        Uses the noise-free currents and `adc_percentile`. Without a call, the first batch read
        calibrates itself (reported as adc_auto_calibrated_* in stats()).
        """
        self._check_programmed()
        if self.adc_bits is None or self.adc_range != "calibrated":
            return self
        X = as_matrix("X", X, cols=self._n_in)
        if X.shape[0] == 0:
            raise ShapeError("X: the calibration batch is empty")
        if self._has_bias_row:
            X = np.hstack([X, np.ones((X.shape[0], 1), np.float32)])
        for way, A in (("fwd", X), ("bwd", None if E is None else as_matrix("E", E, cols=self._shape[1])
                                    * self._alpha32[None, :])):
            if A is None:
                continue
            xs, _ = self._dac(A)
            M, _, post = self._tile_currents(xs, way)
            group = self.tile[1] if way == "fwd" else self.tile[0]
            physical = (self.tile[0] if way == "fwd" else self.tile[1]) * self.device.window_us
            self._adc_fs[way] = self._calibrated_fs(M, group, -(-M.shape[2] // group), physical)
        return self

    # ---- in-situ updates ----------------------------------------------------------------------------
    def pulse(self, n_pos, n_neg=None) -> Crossbar:
        """Apply signed pulse counts to the devices in place (in-situ update, NeuroSim model).

        n_pos, n_neg: (in, out) integer arrays of pulses for G+ and G- (G- only for differential);
        > 0 potentiates along the LTP curve, < 0 depresses along the LTD curve (its mirror image
        from g_max), each with A = P_max / |nonlinearity|. Every pulse train adds cycle-to-cycle
        noise N(0, c2c_rel * window * sqrt(|n|)). Stuck devices ignore pulses. Needs `pulse_levels`.
        """
        self._check_programmed()
        d = self.device
        if d.pulse_levels is None:
            raise ConfigError(f"device {d.name!r} has no pulse_levels: pulse updates need the "
                              "pulse response (pulse_levels, nonlinearity_ltp/ltd, c2c_rel)")
        if self.slices != 1 or self.t_s is not None:
            raise ConfigError("pulse updates need slices = 1 and the as-programmed state (not a drifted copy)")
        rows = self._shape[0]
        counts = [as_matrix("n_pos", n_pos, cols=self._shape[1])]
        if self.mapping == "differential":
            counts.append(as_matrix("n_neg", np.zeros_like(counts[0]) if n_neg is None else n_neg,
                                    cols=self._shape[1]))
        for c in counts:
            if c.shape[0] != rows:
                raise ShapeError(f"pulse counts: expected shape {self._shape}, got {c.shape}")
        p = self._persistent(self._gp0.shape)
        new = []
        for k, (g, n) in enumerate(zip((self._gp0, self._gn0), counts)):
            g = g[0].copy()
            if p["gmin"] is not None:
                lo, hi = p["gmin"][k][0], p["gmax"][k][0]
            else:
                lo, hi = np.full_like(g, d.g_min_us), np.full_like(g, d.g_max_us)
            n = n.astype(np.float64)
            up, down = n > 0, n < 0
            a_ltp = dev_pulse_a(d.nonlinearity_ltp, d.pulse_levels)
            a_ltd = dev_pulse_a(d.nonlinearity_ltd, d.pulse_levels)
            if np.any(up):
                pn = pulse_number(g[up], a_ltp, d.pulse_levels, lo[up], hi[up])
                g[up] = pulse_response(np.minimum(pn + n[up], d.pulse_levels - 1), a_ltp, d.pulse_levels,
                                       lo[up], hi[up])
            if np.any(down):
                # LTD: the mirror image of the curve, measured down from g_max.
                mirror = lo[down] + hi[down] - g[down]
                pn = pulse_number(mirror, a_ltd, d.pulse_levels, lo[down], hi[down])
                g[down] = lo[down] + hi[down] - pulse_response(np.minimum(pn - n[down], d.pulse_levels - 1),
                                                               a_ltd, d.pulse_levels, lo[down], hi[down])
            if d.c2c_rel:
                moved = n != 0
                g[moved] += d.c2c_rel * d.window_us * np.sqrt(np.abs(n[moved])) * \
                    self._rng.standard_normal(int(moved.sum()))
            g = np.clip(g, lo, hi)
            if p["stuck"] is not None:
                s = p["stuck"][k][0]
                g = np.where(s == 1, hi, np.where(s == -1, lo, g))
            new.append(g[None])
            self._stats["pulses"] = self._stats.get("pulses", 0) + int(np.abs(n).sum())
        gp = new[0]
        gn = new[1] if self.mapping == "differential" else self._gn0
        self._gp0, self._gn0 = gp, gn
        self._set_state(gp, gn)
        return self

    # ---- state, drift, stats ----------------------------------------------------------------------
    def weights(self) -> np.ndarray:
        """Effective weights (in, out) as now programmed (and drifted), without read noise."""
        self._check_programmed()
        return self._w_eff[:self._n_in].copy()

    def bias_weights(self) -> np.ndarray | None:
        """Effective bias (out,) as programmed: the bias row, or the digital bias; None if none."""
        self._check_programmed()
        if self._has_bias_row:
            return self._w_eff[-1].copy()
        return None if self._b_digital is None else self._b_digital.astype(np.float64)

    def conductances(self) -> tuple[np.ndarray, np.ndarray]:
        """(G+, G-) per plane, (P, rows, out) in µS, as they are now (G- is g_min for offset)."""
        self._check_programmed()
        return self._gp.copy(), self._gn.copy()

    def at(self, seconds: float, compensate: bool = False) -> Crossbar:
        """A copy read `seconds` after programming: G(t) = G(t0) (t/t0)^-nu per device.

        compensate: global drift compensation, one digital factor that restores the summed
        absolute column current for an all-ones input (as aihwkit does); it acts on currents,
        before the per-column gain and the digital offset.
        """
        self._check_programmed()
        if not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds <= 0:
            raise ConfigError(f"seconds = {seconds!r}: expected a finite time > 0 after programming")
        import copy
        new = copy.copy(self)
        new._stats = dict(self._stats)
        new._adc_fs = dict(self._adc_fs)
        nu = self._persistent(self._gp0.shape)["nu"]
        t0 = self.device.drift_t0_s
        gp, gn = self._gp0, self._gn0
        if nu is not None and seconds > t0:
            f = (seconds / t0) ** (-nu)
            gp = gp * f[0]
            if self.mapping == "differential":
                gn = gn * f[1]
        # The copy reads (and reprograms) with its own random streams, independent of the original.
        new._stream = int(krng.stream_key(np.uint64(self._stream), np.uint64(2 ** 62 + self._reads))) >> 1
        new._rng = np.random.default_rng([self.seed, self._reads, 1])
        new.t_s = float(seconds)
        new.drift_compensation = 1.0
        if compensate:
            before = np.abs(np.einsum("p,pio->o", self._sig, self._gp0 - self._gn0)).sum()
            after = np.abs(np.einsum("p,pio->o", self._sig, gp - gn)).sum()
            new.drift_compensation = float(before / after) if after > 0 else 1.0
        new._set_state(gp, gn)
        return new

    def stats(self) -> dict[str, Any]:
        """Hardware and activity counters: tiles, devices, utilization, conversions, clipping."""
        self._check_programmed()
        P, rows, out = self._gp.shape
        R, C = self.tile
        per_cell = 2 if self.mapping == "differential" else 1
        allocated = P * self._nrt * self._nct
        if self._mask is None:
            cells, tiles = rows * out, allocated
        else:
            cells = int(self._mask.sum())
            pad = np.zeros((self._nrt * R, self._nct * C), bool)
            pad[:rows, :out] = self._mask
            tiles = P * int(pad.reshape(self._nrt, R, self._nct, C).any(axis=(1, 3)).sum())
        s = dict(self._stats)
        s.update({
            "shape": (self._n_in, out), "rows_used": rows, "tiles": tiles, "tile": (R, C),
            "tiles_allocated": allocated, "pruned_cells": P * (rows * out - cells),
            "planes": P, "cells": P * cells, "devices": P * cells * per_cell,
            "device_capacity": tiles * R * C * per_cell,
            "utilization": cells / max(tiles // P * R * C, 1),
            "reads": self._reads, "t_s": self.t_s, "drift_compensation": self.drift_compensation,
        })
        p = self._persist or {}
        if p.get("stuck") is not None:
            s["stuck_on"] = int(np.sum(p["stuck"] == 1))
            s["stuck_off"] = int(np.sum(p["stuck"] == -1))
        return s

    def __repr__(self) -> str:
        shape = "unprogrammed" if self._shape is None else f"{self._n_in}x{self._shape[1]}"
        return (f"Crossbar({self.device.name} {self.device.summary()}, {shape}, tile={self.tile}, "
                f"{self.mapping}, adc_bits={self.adc_bits}, dac_bits={self.dac_bits})")


_NO_VAR = np.zeros((0, 0, 0), dtype=np.float32)
# Below this many tile outputs a parallel launch costs more than it saves (measured: ~35 µs serial
# vs 0.1-3 ms for a parallel launch on two busy cores).
_PARALLEL_MIN = 1 << 15
