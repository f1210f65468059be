"""Fused programming of the common case: uniform levels, differential pair, one slice, no quantizer.

One pass over W instead of numpy's chain of float64 temporaries (codes, magnitudes, targets, snap,
G+/G- split). It computes exactly what `mapping.weights_to_codes` + `codes_to_planes` compute for
that case, in the same order of operations; tests compare the two.
"""

from __future__ import annotations

import numpy as np

from ._jit import njit_exact, njit_exact_inline


@njit_exact_inline
def level_cell(w0, lo, hi, step, dstep, g_min, lvl, top):
    """(G+, G-) of one float64 weight on uniform levels (program_differential's cell): clip to
    [lo, hi], code k = w / step, target g_min + |k| dstep snapped to the levels (spacing lvl, top
    index `top`), on G+ for k >= 0 else on G-."""
    w = min(max(w0, lo), hi)
    k = w / step
    g_on = g_min + abs(k) * dstep
    idx = np.rint((g_on - g_min) / lvl)
    idx = min(max(idx, 0.0), top)
    g = g_min + idx * lvl
    pos = k >= 0
    return (g if pos else g_min), (g_min if pos else g)


@njit_exact_inline
def quant_cell(w, lo, hi, nq, symm, dstep, g_min, lvl, top, snap):
    """(G+, G-, clipped 0/1) of one float64 weight under the seed quantizers (program_quant_differential's
    cell): clip to [lo, hi], q = round(...), code k (asymm: 2q - nq), target g_min + |k| dstep
    (snapped to uniform levels when `snap`), on G+ for k >= 0 else on G-. A degenerate column
    (hi == lo) gets k = 0."""
    clip = 0
    if w < lo:
        w = lo
        clip = 1
    elif w > hi:
        w = hi
        clip = 1
    span = hi - lo
    if span == 0.0:
        k = 0.0
    elif symm:
        m = hi if hi > 0 else 1.0
        k = np.round(w * nq / m)
    else:
        k = 2.0 * np.round((w - lo) * nq / span) - nq
    g = g_min + abs(k) * dstep
    if snap:
        idx = np.round((g - g_min) / lvl)
        idx = min(max(idx, 0.0), top)
        g = g_min + idx * lvl
    return (g if k >= 0 else g_min), (g_min if k >= 0 else g), clip


@njit_exact_inline
def put_cell(i, j, a, c, alpha_j, gp, gn, gd, g32, w32, planes):
    """Cell (i, j)'s outputs: the read arrays g32 = float32(a - c) and w32 = float32((a - c) alpha),
    and with `planes` (a constant at each call) gp = a, gn = c and gd = a - c."""
    dif = a - c
    if planes:
        gp[i, j] = a
        gn[i, j] = c
        gd[i, j] = dif
    g32[i, j] = np.float32(dif)
    w32[i, j] = np.float32(dif * alpha_j)


# Each kernel runs its rows' loop (inlined) twice over, with and without the float64 planes (a
# constant `planes`): a store under a branch inside the loop kept the quantizer's loop from
# vectorizing (measured 8x slower).

@njit_exact
def program_differential(W, lo, hi, step, dstep, g_min, lvl, n_levels, alpha, gp, gn, gd, g32, w32):
    """W (rows, out) float32 -> gp, gn (rows, out) float64 conductances; returns clipped count.

    lo, hi, step: (out,) column range and code step; dstep: device step per code unit; lvl:
    spacing of the device levels; n_levels: number of levels. Also writes what a read needs, in
    the same pass: gd = gp - gn, g32 = float32(gd) and w32 = float32(gd * alpha) (alpha: the column
    gain, (out,)), exactly as the read path would derive them. With gp, gn and gd of size 0 only
    g32 and w32 are written (a lean programming: the read arrays alone). W holds no NaN
    (programming refuses it first).
    """
    top = np.float64(n_levels - 1)
    if gd.size > 0:
        return _level_rows(W, lo, hi, step, dstep, g_min, lvl, top, alpha, gp, gn, gd, g32, w32, True)
    return _level_rows(W, lo, hi, step, dstep, g_min, lvl, top, alpha, gp, gn, gd, g32, w32, False)


@njit_exact_inline
def _level_rows(W, lo, hi, step, dstep, g_min, lvl, top, alpha, gp, gn, gd, g32, w32, planes):
    clipped = 0
    for i in range(W.shape[0]):
        for j in range(W.shape[1]):
            w0 = np.float64(W[i, j])
            clipped += (w0 < lo[j]) | (w0 > hi[j])
            a, c = level_cell(w0, lo[j], hi[j], step[j], dstep, g_min, lvl, top)
            put_cell(i, j, a, c, alpha[j], gp, gn, gd, g32, w32, planes)
    return clipped


@njit_exact
def program_local_column(W, k_max, dstep, g_min, lvl, n_levels, lo, hi, step, alpha, gp, gn, gd, g32, w32):
    """program_differential under range "local", gain "column", with the column constants
    computed here as the planner's numpy did (float64 lo, hi, step and alpha, written): hi = max|w|
    per column, lo = -hi, step = (hi, or 1 where 0) / k_max, alpha = step / dstep."""
    m = np.empty(W.shape[1], np.float32)
    col_abs_max(W, m)
    for j in range(m.shape[0]):
        h = np.float64(m[j])
        hi[j] = h
        lo[j] = -h
        step[j] = (h if h > 0 else 1.0) / k_max
        alpha[j] = step[j] / dstep
    return program_differential(W, lo, hi, step, dstep, g_min, lvl, n_levels, alpha, gp, gn, gd, g32, w32)


@njit_exact
def program_quant_differential(W, lo, hi, nq, symm, dstep, g_min, lvl, top, snap, alpha, gp, gn, gd, g32, w32):
    """The seed quantizers (asymm / symm) on a differential pair, one slice, in one pass.

    Computes what `weights_to_codes(quant=...)` + `codes_to_planes` compute, in the same order of
    float64 operations (:func:`quant_cell`). Writes gp, gn, gd, g32 and w32 as
    program_differential does (gp, gn and gd of size 0: the read arrays alone). Returns the
    number of clipped weights.
    """
    if gd.size > 0:
        return _quant_rows(W, lo, hi, nq, symm, dstep, g_min, lvl, top, snap, alpha, gp, gn, gd, g32, w32, True)
    return _quant_rows(W, lo, hi, nq, symm, dstep, g_min, lvl, top, snap, alpha, gp, gn, gd, g32, w32, False)


@njit_exact_inline
def _quant_rows(W, lo, hi, nq, symm, dstep, g_min, lvl, top, snap, alpha, gp, gn, gd, g32, w32, planes):
    clipped = 0
    for i in range(W.shape[0]):
        for j in range(W.shape[1]):
            a, c, cl = quant_cell(np.float64(W[i, j]), lo[j], hi[j], nq, symm, dstep, g_min, lvl, top, snap)
            clipped += cl
            put_cell(i, j, a, c, alpha[j], gp, gn, gd, g32, w32, planes)
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
            # np.maximum, not max(): the same value for finite W, and the loop vectorizes (4.5x)
            out[j] = np.maximum(out[j], abs(W[i, j]))
