"""Fused programming of the common case: uniform levels, differential pair, one slice, no quantizer.

One pass over W instead of numpy's chain of float64 temporaries (codes, magnitudes, targets, snap,
G+/G- split). It computes exactly what `mapping.weights_to_codes` + `codes_to_planes` compute for
that case, in the same order of operations; tests compare the two.
"""

from __future__ import annotations

import numpy as np

from ._jit import njit_exact


@njit_exact
def program_differential(W, lo, hi, step, dstep, g_min, lvl, n_levels, alpha, gp, gn, gd, g32, w32):
    """W (rows, out) float32 -> gp, gn (rows, out) float64 conductances; returns clipped count.

    lo, hi, step: (out,) float64 column range and code step; dstep: device step per code unit;
    lvl: spacing of the device levels; n_levels: number of levels. Also writes what a read needs,
    in the same pass: gd = gp - gn, g32 = float32(gd) and w32 = float32(gd * alpha) (alpha: the
    column gain, (out,)), exactly as the read path would derive them. With gp, gn and gd of size
    0 only g32 and w32 are written (a lean programming: the read arrays alone).
    """
    rows, out = W.shape
    clipped = 0
    full = gd.size > 0
    top = np.float64(n_levels - 1)
    for i in range(rows):
        # min/max clip as the comparisons did: W holds no NaN (as_matrix refuses it)
        for j in range(out):
            w0 = np.float64(W[i, j])
            clipped += (w0 < lo[j]) | (w0 > hi[j])
            w = min(max(w0, lo[j]), hi[j])
            k = w / step[j]
            g_on = g_min + abs(k) * dstep
            idx = np.rint((g_on - g_min) / lvl)
            idx = min(max(idx, 0.0), top)
            g = g_min + idx * lvl
            pos = k >= 0
            a = g if pos else g_min
            c = g_min if pos else g
            dif = a - c
            if full:
                gp[i, j] = a
                gn[i, j] = c
                gd[i, j] = dif
            g32[i, j] = np.float32(dif)
            w32[i, j] = np.float32(dif * alpha[j])
    return clipped


@njit_exact
def program_quant_differential(W, lo, hi, nq, symm, dstep, g_min, lvl, top, snap, alpha, gp, gn, gd, g32, w32):
    """The seed quantizers (asymm / symm) on a differential pair, one slice, in one pass.

    Computes what `weights_to_codes(quant=...)` + `codes_to_planes` compute, in the same order of
    float64 operations: clip to the column range, q = round(...), code k (asymm: 2q - nq), target
    g_min + |k| dstep, snapped to the device's uniform levels when `snap` (spacing lvl, top index
    `top`), split over G+/G- by the sign of k. Degenerate columns (hi == lo) get k = 0.
    Returns the number of clipped weights. With gp, gn and gd of size 0 only g32 and w32 are
    written (as in program_differential).
    """
    rows, out = W.shape
    clipped = 0
    full = gd.size > 0
    for i in range(rows):
        for j in range(out):
            w = np.float64(W[i, j])
            if w < lo[j]:
                w = lo[j]
                clipped += 1
            elif w > hi[j]:
                w = hi[j]
                clipped += 1
            span = hi[j] - lo[j]
            if span == 0.0:
                k = 0.0
            elif symm:
                m = hi[j] if hi[j] > 0 else 1.0
                k = np.round(w * nq / m)
            else:
                k = 2.0 * np.round((w - lo[j]) * nq / span) - nq
            g = g_min + abs(k) * dstep
            if snap:
                idx = np.round((g - g_min) / lvl)
                idx = min(max(idx, 0.0), top)
                g = g_min + idx * lvl
            a = g if k >= 0 else g_min
            c = g_min if k >= 0 else g
            dif = a - c
            if full:
                gp[i, j] = a
                gn[i, j] = c
                gd[i, j] = dif
            g32[i, j] = np.float32(dif)
            w32[i, j] = np.float32(dif * alpha[j])
    return clipped



@njit_exact
def col_abs_max(W, out):
    """out[j] = max_i |W[i, j]| for float32 W (rows, out) (one pass; the rows' loop outside so the
    columns vectorize). W must be finite (programming checks it first)."""
    rows, cols = W.shape
    for j in range(cols):
        out[j] = 0.0
    for i in range(rows):
        for j in range(cols):
            a = abs(W[i, j])
            out[j] = max(out[j], a)
