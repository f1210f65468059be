"""A weight matrix programmed onto crossbar tiles, read through DAC, device noise and ADC.

Usage::

    xb = Crossbar(Device.preset("agsi").with_(bits=3), tile=(64, 64), adc_bits=8, seed=0)
    xb.program(W)          # W: (in, out)
    Y = xb.mvm(X)          # (batch, in) -> (batch, out), in memory
    E_in = xb.mvm_t(E)     # (batch, out) -> (batch, in), the same arrays read transposed

What happens in `mvm`:
1. DAC: inputs are scaled per row by their abs max ("dynamic", aihwkit's noise management) or by a
   fixed range, and quantized to `dac_bits`. The scale is undone digitally at the end.
2. Each tile (tile_rows x tile_cols devices of every plane) produces column currents
   I = x_tile @ (G+ - G-); with read noise I ~ N(mean, sum x^2 var(G)) exactly (one draw per
   tile output, not per device).
3. Each tile's currents pass its own ADC (`adc_bits`, range calibrated per tile), then the digital
   periphery multiplies by the column gain alpha and plane significance and adds partial sums.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .device import Device
from .errors import ConfigError, ShapeError
from .kernels.mvm import scale_columns, undo_dac
from .kernels.reduce import add_row_finite, all_finite
from .tile.arrays import Patches, as_matrix, check_fits, crossbar_bytes, raise_nonfinite
from .tile.drift import check_drift_args, drifted_copy
from .tile.physics import DeviceArray, is_active
from .tile.planner import Planner
from .tile.read import ReadPath
from .tile.settings import NAMES as SETTING_NAMES
from .tile.settings import Settings
from .tile.state import ArrayState, crossbar_stats, pack, restore, rewired, unpack_header

__all__ = ["Crossbar", "as_matrix", "raise_nonfinite"]


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
    w_range: (lo, hi) weight range of the global grid.
    adc_range: "calibrated" (percentile of a calibration batch, per tile), "physical"
        (largest possible tile current) or a number (fixed full scale, in µS x input units).
    dac_range: "dynamic" (each input row scaled by its abs max) or a number r (fixed [-r, r]).
    Every other option (range, quant, quant_bits, gain, slices, adc_percentile, bias, read_noise,
    ir_drop, r_wire_ohm, v_read, adc_offset_lsb, adc_gain_rel, adc_inl_lsb) is a Field of
    :mod:`xbar.tile.settings` with its doc and valid range. With ir_drop, reads (mvm and mvm_t) see
    the tiles' effective conductances (:mod:`xbar.tile.irdrop`), computed once per programming;
    weights() and conductances() stay the devices' own state.

    The parts behind it (``xbar.tile``): ``settings`` (the validated options), ``physics`` (the
    devices), ``state`` (what the array holds) and ``read`` (the read path's public stages).
    """

    def __init__(self, device: Device, tile: tuple[int, int] = (64, 64), mapping: str = "differential",
                 adc_bits: int | None = None, dac_bits: int | None = None, seed: int = 0, **options: Any):
        if not isinstance(device, Device):
            raise ConfigError(f"device: expected an xbar.Device, got {type(device).__name__}")
        self.settings = Settings.validate(device, tile=tile, mapping=mapping, adc_bits=adc_bits,
                                          dac_bits=dac_bits, seed=seed, **options)
        self.device = device
        s = self.settings
        self.planner = Planner(device, s)
        self.physics = DeviceArray(device, s.mapping == "differential", s.seed)
        # Ohmic cells without DAC or ADC: scaling the inputs would cancel out exactly, so skip it.
        # A nonlinear I–V curve needs the inputs as voltages up to v_read.
        self._analog_io = s.adc_bits is None and s.dac_bits is None and self.physics.read_iv.linear
        self._dac_checks = s.dac_range == "dynamic"   # (its own pass checks mvm's and mvm_t's inputs)
        self._stats = {"programs": 0, "mvm_calls": 0, "mvm_t_calls": 0, "adc_conversions": 0,
                       "adc_clipped": 0, "dac_conversions": 0, "dac_clipped": 0, "weights_clipped": 0}
        self.read = ReadPath(s, device.window_us, self._stats, stream=s.seed)
        self._state: ArrayState | None = None
        self._alpha_src = self._beta_src = None   # the arrays the periphery's float32 copies came from
        ph = self.physics   # when reprogramming may write only the read arrays (_program_lean)
        self._lean = (self.planner.fused and s.replicas == 1 and s.ir_drop == "none" and ph.exact_write
                      and not (s.read_noise and is_active(ph.read_noise)) and ph.read_iv.linear
                      and not ph.drift_model.state_dependent)
        self._pending: np.ndarray | None = None   # a lean programming's weights, planes not built yet

    def __getattr__(self, name: str):
        # Settings read as attributes (xb.tile, xb.adc_bits, ...), as before the split.
        if name in SETTING_NAMES:
            return getattr(self.__dict__["settings"], name)
        raise AttributeError(f"'Crossbar' object has no attribute {name!r}")

    @property
    def state(self) -> ArrayState | None:
        """What the array holds (:class:`xbar.tile.state.ArrayState`), None before program()."""
        if self._pending is not None:
            self._planes()
        return self._state

    @state.setter
    def state(self, value: ArrayState | None) -> None:
        self._state, self._pending = value, None

    # ---- programming ----------------------------------------------------------------------------
    def program(self, W, b=None, mask=None, cells=None) -> Crossbar:
        """Write weights W (in, out) and optional bias b (out,) onto the devices.

        mask: None, or a boolean (in, out) array of the cells in use (pruning). Cells outside it
        are never written: both devices stay at their own g_min (no write noise; a stuck device
        stays stuck), they read as zero weight, and stats() counts neither them nor tiles left
        without a cell in use.
        cells: None (write every cell), or a boolean array of the cells to write, (in, out) or
        (in + 1, out) with the bias row last when bias is "row": every other cell keeps the
        conductance it holds (no fresh write noise), as in-situ updates program only what changed.
        """
        W = as_matrix("W", W)
        n_in, n_out = W.shape
        if mask is not None:
            mask = np.asarray(mask)
            if mask.dtype != np.bool_ or mask.shape != (n_in, n_out):
                raise ShapeError(f"mask: expected a boolean array of shape {(n_in, n_out)}, got "
                                 f"{mask.dtype} {mask.shape}")
            mask = None if mask.all() else mask
        b_digital = None
        if b is not None:
            b = as_matrix("b", np.asarray(b).reshape(1, -1), cols=n_out)[0]
            if self.settings.bias == "row":
                W = np.vstack([W, b[None, :]])
            else:
                b_digital = b
        shape = W.shape
        old = self._state
        if old is not None and shape != old.shape:
            raise ShapeError(f"W: this crossbar holds a {old.shape} matrix, got {shape}; "
                             "create a new Crossbar for a new layer size")
        if cells is not None:
            if old is None:
                raise ShapeError("cells: the first program() writes every cell; pass cells=None")
            cells = np.asarray(cells)
            if cells.dtype != np.bool_ or cells.shape not in (shape, (n_in, n_out)):
                raise ShapeError(f"cells: expected a boolean array of shape {shape}, got {cells.dtype} "
                                 f"{cells.shape}")
            if cells.shape != shape:
                cells = np.vstack([cells, np.zeros((1, n_out), bool)])
        has_bias_row = b is not None and self.settings.bias == "row"
        if self._lean and old is not None and mask is None and cells is None and not has_bias_row:
            return self._program_lean(W, b_digital)
        if old is None:   # the first program: refuse arrays that cannot be allocated, before trying
            check_fits(self.slices * self.replicas * crossbar_bytes(shape[0], shape[1], self.tile),
                       f"a {shape[0]}x{shape[1]} crossbar on {self.tile[0]}x{self.tile[1]} tiles",
                       "use a smaller tile or matrix")
        planes = self.planner.plan(W)
        self._stats["weights_clipped"] += planes.clipped
        if mask is not None and has_bias_row:
            mask = np.vstack([mask, np.ones((1, n_out), bool)])   # the bias row is always in use
        ph = self.physics
        gp = ph.write(planes.gp, 0, mask)
        gn = ph.write(planes.gn, 1, mask) if self.mapping == "differential" else planes.gn
        nu = ph.draw_nu([planes.gp, planes.gn][:ph.n_dev])
        fresh = self.planner.fresh if ph.exact_write and cells is None and self.ir_drop == "none" else None
        if cells is not None:
            gp = np.where(cells[None], gp, old.gp0)
            gn = np.where(cells[None], gn, old.gn0)
            if nu is not None and old.nu is not None:
                nu = np.where(cells[None, None], nu, old.nu)
        self._stats["programs"] += 1
        self.state = ArrayState(shape=shape, n_in=n_in, has_bias_row=has_bias_row, gp0=gp, gn0=gn, gp=gp,
                                gn=gn, sig=planes.sig, alpha=planes.alpha, beta=planes.beta,
                                b_digital=b_digital, mask=mask, nu=nu)
        if fresh is not None and mask is not None:
            for a in fresh.values():
                a[~mask] = 0
        self._install(fresh["gd"][None] if fresh is not None else None)
        if fresh is not None:
            self.read.cache.update(g32=fresh["g32"], w_fwd32=fresh["w_fwd32"])   # built by the kernel
        return self

    def _program_lean(self, W: np.ndarray, b_digital: np.ndarray | None) -> Crossbar:
        """program() of exact devices whose reads need no noise, I–V terms, wires or state-dependent
        drift: only the float32 read arrays; the planes follow from a copy of W on demand (_planes)."""
        planes = self.planner.plan(W, lean=True)
        self._stats["weights_clipped"] += planes.clipped
        self._stats["programs"] += 1
        self._state = ArrayState(W.shape, W.shape[0], False, None, None, None, None, planes.sig, planes.alpha,
                                 planes.beta, b_digital)
        self._pending = W.copy()
        self._install(lean=True)
        self.read.cache.update(self.planner.fresh)
        return self

    def _planes(self) -> np.ndarray:
        """A lean programming's planes, built now (what program() would have stored); returns G+ - G-."""
        if self._pending is not None:
            W, self._pending = self._pending, None
            planes = self.planner.plan(W)
            st = self._state
            st.gp0, st.gn0, st.gp, st.gn = planes.gp, planes.gn, planes.gp, planes.gn
            self.read.gd = self.planner.fresh["gd"][None]
        return self.read.gd

    @property
    def has_write_noise(self) -> bool:   # a write lands off its target at random
        return is_active(self.physics.program_noise)

    def _install(self, gd: np.ndarray | None = None, lean: bool = False) -> None:
        """Hand the present conductances to the read path (gains and read variance derived here);
        lean: the planes are not built yet (no read variance or I–V terms to derive)."""
        st = self._state
        if st.alpha is not self._alpha_src or st.drift_compensation != 1.0:
            # (a fixed range: the same alpha and beta every program; no offset: the same zero beta)
            self._alpha_src = st.alpha if st.drift_compensation == 1.0 else None
            self._alpha_eff = st.alpha if st.drift_compensation == 1.0 else st.alpha * st.drift_compensation
            self._alpha32 = self._alpha_eff.astype(np.float32)
        if st.beta is not self._beta_src:
            self._beta_src = st.beta
            self._beta32 = st.beta.astype(np.float32) if st.beta.any() else None
        self._mask32 = None if st.mask is None else st.mask.astype(np.float32)
        if lean:
            self.read.install(self._planes, None, st.sig, self._alpha_eff, shape=(1,) + st.shape)
            return
        pair = self.mapping == "differential"
        var = self.physics.read_variance([st.gp, st.gn][:1 + pair], [st.gp0, st.gn0][:1 + pair], st.t_s,
                                         enabled=self.settings.read_noise)
        if self.ir_drop != "none":
            gd = self._ir_dropped()
        nl = self.physics.iv_terms([st.gp, st.gn][:1 + pair], self.settings.v_read, pair)
        self.read.install(st.gp - st.gn if gd is None else gd, var, st.sig, self._alpha_eff, nl=nl,
                          even=self.physics.read_iv.even_term)

    def _ir_dropped(self) -> np.ndarray:
        """G+ - G- as the reads see them through the wires (G- is a digital reference for offset)."""
        from .tile.irdrop import effective_stack
        st, s = self.state, self.settings
        gp = effective_stack(st.gp, s.r_wire_ohm, s.tile, s.ir_drop)
        gn = effective_stack(st.gn, s.r_wire_ohm, s.tile, s.ir_drop) if self.mapping == "differential" else st.gn
        return gp - gn

    def _check_programmed(self):
        if self._state is None:
            raise ShapeError("this crossbar is not programmed yet: call program(W) first")

    # ---- reading --------------------------------------------------------------------------------
    def mvm(self, X) -> np.ndarray:
        """In-memory product X @ W (+ b): (batch, in) -> (batch, out) float32. X may be im2col's
        rows without their matrix (xbar.tile.arrays.Patches), which a dynamic DAC gathers itself."""
        self._check_programmed()
        st = self._state
        if isinstance(X, Patches) and (self._analog_io or not self._dac_checks or st.has_bias_row
                                       or self._beta32 is not None):
            X = X.matrix()   # (the read needs the rows as they are)
        X0 = X   # (checked here, or on the output for analog inputs, or by a dynamic DAC in its pass)
        if isinstance(X, Patches):
            if X.shape[1] != st.n_in:
                raise ShapeError(f"X: expected rows of {st.n_in} values, got im2col rows of {X.shape[1]}")
        else:
            X = as_matrix("X", X, cols=st.n_in, check_finite=not (self._analog_io or self._dac_checks))
        if st.has_bias_row:
            X = np.hstack([X, np.ones((X.shape[0], 1), np.float32)])
        checked = None
        if self._analog_io:
            y = self.read.read(X, "fwd")   # no DAC, no ADC: input scaling would cancel out exactly
            if st.b_digital is not None and self._beta32 is None:   # the bias and the output check at once
                checked = add_row_finite(y, st.b_digital)
            elif st.b_digital is not None:
                y += st.b_digital[None, :]
        else:
            xs, scale = self.read.dac(X, lambda: raise_nonfinite("X", *[X.matrix()] * 2) if isinstance(X, Patches)
                                      else raise_nonfinite("X", X0, X))
            y = undo_dac(self.read.read(xs, "fwd"), scale, st.b_digital)
        self._stats["mvm_calls"] += 1
        if self._beta32 is not None:
            # the digital offset belongs to the cells in use only
            xs = X.sum(axis=1, keepdims=True) if self._mask32 is None else X @ self._mask32
            y += xs * self._beta32[None, :]
        if self._analog_io and not (all_finite(y) if checked is None else checked):
            raise_nonfinite("X", X0, as_matrix("X", X0, cols=st.n_in, check_finite=False))
        return y

    def mvm_t(self, E) -> np.ndarray:
        """In-memory transposed product E @ W.T on the same devices: (batch, out) -> (batch, in)."""
        self._check_programmed()
        st = self._state
        E0 = E   # (checked as mvm's X is; an overflow of E times the gain is named as one)
        E = as_matrix("E", E, cols=st.shape[1], check_finite=not (self._analog_io or self._dac_checks))
        Ea = scale_columns(E, self._alpha32)   # the column gain is digital: applied before the DAC
        if self._analog_io:
            self._stats["mvm_t_calls"] += 1
            y = self.read.read(Ea, "bwd")
            if not all_finite(y):
                raise_nonfinite("E", E0, as_matrix("E", E0, cols=st.shape[1], check_finite=False))
        else:
            es, scale = self.read.dac(Ea, lambda: raise_nonfinite("E", E0, E))
            self._stats["mvm_t_calls"] += 1
            y = undo_dac(self.read.read(es, "bwd"), scale)
        if self._beta32 is not None:
            y += (E @ self._beta32)[:, None] if self._mask32 is None else (E * self._beta32) @ self._mask32.T
        return y[:, :st.n_in] if st.has_bias_row else y

    def calibrate(self, X, E=None) -> Crossbar:
        """Set the ADC full scale per tile from a calibration batch X (and E for mvm_t).

        Uses the noise-free currents and `adc_percentile`. Without a call, the first batch read
        calibrates itself (reported as adc_auto_calibrated_* in stats()).
        """
        self._check_programmed()
        if self.adc_bits is None or self.adc_range != "calibrated":
            return self
        st = self._state
        X = as_matrix("X", X, cols=st.n_in)
        if X.shape[0] == 0:
            raise ShapeError("X: the calibration batch is empty")
        if st.has_bias_row:
            X = np.hstack([X, np.ones((X.shape[0], 1), np.float32)])
        for way, A in (("fwd", X), ("bwd", None if E is None else as_matrix("E", E, cols=st.shape[1])
                                    * self._alpha32[None, :])):
            if A is not None:
                self.read.calibrate(self.read.dac(A)[0], way)
        return self

    # ---- in-situ updates ----------------------------------------------------------------------------
    def pulse(self, n_pos, n_neg=None) -> Crossbar:
        """Apply signed pulse counts to the devices in place (in-situ update, NeuroSim model).

        n_pos, n_neg: integer arrays of pulses for G+ and G- (G- only for differential), (in, out)
        (in + 1 rows with a bias row), or (replicas, in, out) with replicas > 1; see
        :meth:`xbar.tile.physics.DeviceArray.pulse` for the device response. Needs `pulse_levels`.
        """
        self._check_programmed()
        st = self.state
        d = self.device
        if d.pulse_levels is None:
            raise ConfigError(f"device {d.name!r} has no pulse_levels: pulse updates need the "
                              "pulse response (pulse_levels, nonlinearity_ltp/ltd, c2c_rel)")
        if self.slices != 1 or st.t_s is not None:
            raise ConfigError("pulse updates need slices = 1 and the as-programmed state (not a drifted copy)")
        pair = self.mapping == "differential"
        new = self.physics.pulse_pair([st.gp0, st.gn0][:1 + pair], n_pos, n_neg, st.shape, self._stats)
        gp = new[0]
        gn = new[1] if pair else st.gn0
        st.gp0, st.gn0, st.gp, st.gn = gp, gn, gp, gn
        self._install()
        return self

    # ---- state, drift, stats ----------------------------------------------------------------------
    def _w_eff(self) -> np.ndarray:
        st = self.state

        def gsum():   # the devices' own state: reads may see it through the wires (ir_drop)
            if self.ir_drop == "none":
                return self.read.gsum()
            gd = st.gp - st.gn
            return np.einsum("p,pio->io", st.sig, gd) if gd.shape[0] > 1 else gd[0]
        return self.read.cached("w_eff", lambda: gsum() * self._alpha_eff[None, :]
                                + (st.beta[None, :] if st.mask is None else st.beta[None, :] * st.mask))

    def weights(self) -> np.ndarray:
        """Effective weights (in, out) as now programmed (and drifted), without read noise."""
        self._check_programmed()
        return self._w_eff()[:self.state.n_in].copy()

    def bias_weights(self) -> np.ndarray | None:
        """Effective bias (out,) as programmed: the bias row, or the digital bias; None if none."""
        self._check_programmed()
        st = self.state
        if st.has_bias_row:
            return self._w_eff()[-1].copy()
        return None if st.b_digital is None else st.b_digital.astype(np.float64)

    def conductances(self) -> tuple[np.ndarray, np.ndarray]:
        """(G+, G-) per plane, (P, rows, out) in µS, as they are now (G- is g_min for offset)."""
        self._check_programmed()
        return self.state.gp.copy(), self.state.gn.copy()

    @property
    def t_s(self) -> float | None:
        """Seconds since programming of the state being read (None: as programmed)."""
        return None if self._state is None else self._state.t_s

    @property
    def drift_compensation(self) -> float:
        return 1.0 if self._state is None else self._state.drift_compensation

    def at(self, seconds: float, compensate: bool | str = False) -> Crossbar:
        """A copy read `seconds` after programming: each device drifts by its drift model.

        compensate: global drift compensation, one digital factor that restores the summed
        absolute column current for an all-ones input (as aihwkit does); it acts on currents,
        before the per-column gain and the digital offset. True (or "exact") computes the factor
        from the noise-free conductances; "read" measures it the way a chip can (and aihwkit's
        GlobalDriftCompensation does): the summed |output| of noisy in-memory reads of one-hot
        inputs, as programmed over now (read noise, tiles and ADC included, from a noise stream
        of the copy's own). See :func:`xbar.tile.drift.drifted_copy`.
        """
        self._check_programmed()
        new = drifted_copy(self, check_drift_args(seconds, compensate), compensate)
        new._install()
        return new

    def with_wires(self, ir_drop: str, r_wire_ohm: float) -> Crossbar:
        """A copy that reads the same devices through wires of `r_wire_ohm` per segment (IR drop).

        For inference-only studies: a network trained with ideal wires, read on a real array. The
        copy recalibrates its ADC ranges on its first read and draws read noise from its own stream.
        """
        self._check_programmed()
        return Crossbar.from_state_dict(rewired(self.state_dict(), ir_drop, r_wire_ohm), device=self.device)

    @property
    def analog_io(self) -> bool:
        """True when reads need no DAC or ADC and the cells are ohmic: inputs go in unscaled."""
        return self._analog_io

    def read_gains(self) -> tuple[np.ndarray, np.ndarray | None]:
        """The digital periphery's per-column gain and offset as reads apply them (float32, (out,));
        the offset is None when it is zero everywhere. The arrays the reads use, not copies: read
        them, do not write them."""
        self._check_programmed()
        return self._alpha32, self._beta32

    def counters(self) -> dict[str, Any]:
        """The activity counters alone (a copy): programs, reads, conversions, clipping, and
        whether an ADC calibrated itself."""
        return dict(self._stats)

    def set_counters(self, counters: dict[str, Any]) -> None:
        """Replace the activity counters with a (changed) copy from :meth:`counters` (a stacked
        run reports its work on each variant's crossbar)."""
        self._stats.clear()
        self._stats.update(counters)

    def stats(self) -> dict[str, Any]:
        """Hardware and activity counters: tiles, devices, utilization, conversions, clipping."""
        self._check_programmed()
        return crossbar_stats(self._state, self.settings, self.read, self.physics, self._stats)

    # ---- saving and loading ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything that rebuilds this crossbar exactly, programmed state and random streams included.

        ``{"format", "version", "device", "settings", "state", "streams", "stats"}`` are JSON-ready;
        ``"arrays"`` maps names to numpy arrays (``state/*``: conductances, gains, mask, drift
        exponents; ``persist/*``: per-device draws; ``adc_fs/*``: ADC full scales).
        """
        self._check_programmed()
        return pack(self.device, self.settings, self.state, self.physics, self.read, self._stats)

    @classmethod
    def from_state_dict(cls, sd: dict[str, Any], device: Device | None = None) -> Crossbar:
        """The inverse of :meth:`state_dict`: a crossbar that reads exactly as the saved one would."""
        device, settings, arrays = unpack_header(sd, device)
        xb = cls(device, **settings)
        xb.state = restore(sd, arrays, xb.physics, xb.read, xb._stats)
        xb._install()
        return xb

    def __repr__(self) -> str:
        shape = "unprogrammed" if self._state is None else f"{self._state.n_in}x{self._state.shape[1]}"
        return (f"Crossbar({self.device.name} {self.device.summary()}, {shape}, tile={self.tile}, "
                f"{self.mapping}, adc_bits={self.adc_bits}, dac_bits={self.dac_bits})")
