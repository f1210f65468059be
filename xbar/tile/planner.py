"""The programming planner: weights -> target conductances per plane, gains and offsets.

Pure mapping (:mod:`xbar.mapping`) plus the fused numba fast paths for the common training
cases, which give the same planes in one pass. The planner knows the grid (device levels,
quantizer, range, gain) and nothing of noise, faults or time.
"""

from __future__ import annotations

import numpy as np

from .. import mapping as mp
from ..device import Device
from ..errors import ConfigError
from ..kernels.program import program_differential, program_local_column, program_quant_differential
from .settings import Settings


class Planner:
    """Turns a weight matrix into :class:`xbar.mapping.Planes` for one crossbar's settings."""

    def __init__(self, device: Device, settings: Settings):
        self.device = device
        self.s = settings
        self.levels = device.levels()
        s = settings
        # The common training case gets a fused programming kernel (same result, one pass).
        self.fused = (s.slices == 1 and s.mapping == "differential" and (
            (s.quant is None and self.levels is not None and device.is_uniform)
            or (s.quant is not None and (self.levels is None or device.is_uniform))))
        self._quant_consts = None      # fused quantizer constants under a fixed (global) range
        # Kernel-ready arrays the fused quantizer built for the last plan (net G, float32 G and
        # forward weights), valid only when the write is exact: {"gd", "g32", "w_fwd32"} or None.
        self.fresh: dict[str, np.ndarray] | None = None
        # The fused paths' constant outputs, the same (read-only) arrays every plan: the one
        # plane's significance and a zero offset per column (the crossbar converts them once).
        self._sig1 = _frozen(np.ones(1))
        self._zeros: np.ndarray | None = None

    def plan(self, W: np.ndarray, lean: bool = False) -> mp.Planes:
        """Target planes for W (rows, out) (the bias row already stacked when bias is "row").

        lean (fused planners only, one replica): the kernel writes only the float32 read arrays
        (``fresh["g32"]``, ``fresh["w_fwd32"]``); the planes' gp and gn are None. A later plan of
        the same W (lean False) gives the planes, the same values a full plan gives.
        """
        self.fresh = None
        if self.fused:
            planes = self._fused_quant(W, lean) if self.s.quant is not None else self._fused(W, lean)
        else:
            s, levels = self.s, self.levels
            codes = mp.weights_to_codes(W, levels_per_plane=None if levels is None else len(levels),
                                        slices=s.slices, mapping=s.mapping, quant=s.quant,
                                        quant_bits=s.quant_bits, rng=s.range, gain=s.gain, w_range=s.w_range)
            planes = mp.codes_to_planes(codes, self.device, s.mapping, s.slices)
        return self.replicate(planes)

    def replicate(self, planes: mp.Planes) -> mp.Planes:
        """`replicas` copies of the one plane, each with significance 1 and the column gain divided
        among them: w = (alpha / R) * sum_r (G+_r - G-_r) holds the same weight on R unit cells."""
        R = self.s.replicas
        if R == 1:
            return planes
        self.fresh = None   # the fused kernels' read-ready arrays describe one plane
        return mp.Planes(np.repeat(planes.gp, R, axis=0), np.repeat(planes.gn, R, axis=0), np.ones(R),
                         planes.alpha / R, planes.beta, planes.clipped)

    @staticmethod
    def _buffers(shape: tuple[int, int], lean: bool):
        """The fused kernels' outputs: gp, gn (1, rows, out), gd (rows, out) float64 (size 0 when
        lean: not written), g32 and w32 (rows, out) float32."""
        if lean:
            return _NONE3, _NONE3, _NONE2, np.empty(shape, np.float32), np.empty(shape, np.float32)
        return (np.empty((1,) + shape), np.empty((1,) + shape), np.empty(shape), np.empty(shape, np.float32),
                np.empty(shape, np.float32))

    def _zero_offsets(self, n: int) -> np.ndarray:
        """A read-only zero offset per column, the same array for every plan of n columns."""
        if self._zeros is None or self._zeros.shape[0] != n:
            self._zeros = _frozen(np.zeros(n))
        return self._zeros

    def _fresh(self, gd, g32, w32, lean: bool):
        self.fresh = {"g32": g32, "w_fwd32": w32} if lean else {"gd": gd, "g32": g32, "w_fwd32": w32}

    def _fused(self, W: np.ndarray, lean: bool = False) -> mp.Planes:
        """Nearest device level on a differential pair, in one numba pass."""
        d, s = self.device, self.s
        L = len(self.levels)
        k_max = float(L - 1)
        dstep = d.window_us / (L - 1)
        gp, gn, gd, g32, w32 = self._buffers(W.shape, lean)
        if s.range == "local" and s.gain == "column" and W.dtype == np.float32:
            # max|w| per column and the column constants in the kernel: what _col_ranges' min, max
            # and abs and the numpy below give for a symmetric range
            lo, hi, step, alpha = np.empty((4, W.shape[1]))
            clipped = program_local_column(W, k_max, dstep, d.g_min_us, dstep, L, lo, hi, step, alpha,
                                           gp[0], gn[0], gd, g32, w32)
        else:
            lo, hi = mp._col_ranges(W, s.range, s.gain, s.w_range, True)
            step = np.where(hi > 0, hi, 1.0) / k_max
            alpha = step / dstep
            clipped = program_differential(W, lo, hi, step, dstep, d.g_min_us, dstep, L, alpha, gp[0], gn[0],
                                           gd, g32, w32)
        self._fresh(gd, g32, w32, lean)
        return mp.Planes(None if lean else gp, None if lean else gn, self._sig1, alpha,
                         self._zero_offsets(W.shape[1]), int(clipped))

    def _fused_quant(self, W: np.ndarray, lean: bool = False) -> mp.Planes:
        """The seed quantizers on a differential pair (analog or uniform device), in one pass."""
        d, s = self.device, self.s
        c = self._quant_consts
        if c is None:
            n, symm = s.quant_bits, s.quant == "symm"
            lo, hi = mp._col_ranges(W, s.range, s.gain, s.w_range, symm)
            span = hi - lo
            nq = float(2 ** (n - 1) - 1) if symm else float(2 ** n - 1)
            levels = self.levels
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
            if s.range == "global":
                self._quant_consts = c     # a fixed range: the same constants every program
        lo, hi, nq, symm, dstep, lvl, top, snap, alpha, beta = c
        gp, gn, gd, g32, w32 = self._buffers(W.shape, lean)
        clipped = program_quant_differential(W, lo, hi, nq, symm, dstep, d.g_min_us, lvl, top, snap, alpha,
                                             gp[0], gn[0], gd, g32, w32)
        self._fresh(gd, g32, w32, lean)
        return mp.Planes(None if lean else gp, None if lean else gn, self._sig1, alpha, beta, int(clipped))


def _frozen(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


# A lean plan's unwritten float64 planes (size 0: the kernels skip them; writeable, as numba
# compiles the kernels for writeable arrays).
_NONE3, _NONE2 = np.empty((1, 0, 0)), np.empty((0, 0))
