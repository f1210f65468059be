"""Fused per-tile periphery: read noise, ADC and digital partial-sum add, in one pass.

The analog part of an in-memory MVM is a set of per-tile matrix products done by BLAS:
``M[t] = X_t @ Gd_t`` (mean column currents of tile t) and, with read noise,
``V[t] = X_t**2 @ Var_t`` (their variance). For independent Gaussian device noise the current of
a column is exactly ``N(M, V)``, so one draw per tile output replaces B*in*out device draws
(the Gaussian sum rule). :func:`tile_accumulate` then does, for tile t, every batch row b and
output j::

    I = M[b,j] + sqrt(V[b,j]) * z              # z ~ N(0,1), counter-based (see rng.py)
    c = clip(floor(I * inv_step[j] + 0.5), qlo[j], qhi[j])   # ADC (skipped if inv_step = 0)
    out[b,j] += post[j] * c * step                           # digital gain, shift-add

The read path calls it once per tile, right after that tile's two products, while they are in
cache. Threads take chunks of whole rows, so each thread writes only its own rows of `out` and
`clipped`; the draw of row b, output j of tile t is number (t*B_read + b)*N + j of the read's
stream whatever the chunking (B_read: the rows of the whole read).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ._jit import njit, njit_exact, njit_parallel, serial_twin
from .rng import CHUNK, fill_normals, scratch

FLAT_N = 32   # below this many outputs a work item runs as flat loops over its rows


def _tile_accumulate(M, V, inv_step, step_post, qlo, qhi, post, key, g0, first, out, clipped):
    """Noise + ADC + digital accumulation of one tile. See the module docstring.

    M: (B, N) float32 mean currents of the tile. V: (B, N) float32 variances, (B, 1) one variance
    per row (additive read noise: the same for every output), or (0, 0): no read noise.
    inv_step: (N,) float32 1/ADC step, inv_step[0] = 0: an ideal ADC for this tile.
    step_post: (N,) float32 ADC step times `post`; post: (N,) float32 digital gain.
    qlo, qhi: (N,) float32 lowest/highest ADC code. key: uint64 key of the read's noise stream;
    g0: the number of this tile's first draw (row 0, output 0).
    first: out is set (0 + this tile) instead of added to; clipped (B,) int64 likewise (its total
    is the number of clipped conversions; with fewer than FLAT_N outputs a work item counts on its
    first row). M, V and out must be C-contiguous (rows of a C array are).
    """
    B, N = M.shape
    noisy = V.shape[0] > 0
    per_row = noisy and V.shape[1] == 1
    adc = inv_step[0] != 0.0
    rows = max(1, CHUNK // max(N, 1))   # rows per work item (any split gives the same bits)
    n_chunks = -(-B // rows)
    flat = N < FLAT_N
    if flat:   # few outputs: the column constants repeated over a work item's rows, flat loops
        L = rows * N
        a_rep = np.empty(L, np.float32)
        s_rep = np.empty(L, np.float32)
        lo_rep = np.empty(L, np.float32)
        hi_rep = np.empty(L, np.float32)
        for r in range(rows):
            for j in range(N):
                a_rep[r * N + j] = inv_step[j] if adc else post[j]
                s_rep[r * N + j] = step_post[j]
                lo_rep[r * N + j] = qlo[j]
                hi_rep[r * N + j] = qhi[j]
    for c in prange(n_chunks):
        b0 = c * rows
        b1 = min(B, b0 + rows)
        n = (b1 - b0) * N
        z = np.empty(n if noisy else 0, np.float32)
        if noisy:
            fill_normals(key, g0 + b0 * N, n, z, scratch(n))
        if flat:
            Mf = M[b0:b1].reshape(-1)
            of = out[b0:b1].reshape(-1)
            cur = np.empty(n, np.float32)
            if per_row:
                for r in range(b1 - b0):
                    sd = np.sqrt(max(V[b0 + r, 0], np.float32(0.0)))
                    for j in range(N):
                        cur[r * N + j] = Mf[r * N + j] + sd * z[r * N + j]
            elif noisy:
                Vf = V[b0:b1].reshape(-1)
                for e in range(n):
                    cur[e] = Mf[e] + np.sqrt(max(Vf[e], np.float32(0.0))) * z[e]
            else:
                for e in range(n):
                    cur[e] = Mf[e]
            nclip = 0
            if adc:
                for e in range(n):
                    cc = np.floor(cur[e] * a_rep[e] + np.float32(0.5))
                    c2 = min(max(cc, lo_rep[e]), hi_rep[e])
                    nclip += c2 != cc
                    cur[e] = c2 * s_rep[e]
            else:
                for e in range(n):
                    cur[e] = cur[e] * a_rep[e]
            if first:
                for e in range(n):
                    of[e] = np.float32(0.0) + cur[e]
                clipped[b0] = nclip          # (a work item's count on its first row)
                for b in range(b0 + 1, b1):
                    clipped[b] = 0
            else:
                for e in range(n):
                    of[e] += cur[e]
                clipped[b0] += nclip
            continue
        cur = np.empty(N, np.float32)
        for b in range(b0, b1):
            base = (b - b0) * N
            if per_row:
                sd = np.sqrt(max(V[b, 0], np.float32(0.0)))
                for j in range(N):
                    cur[j] = M[b, j] + sd * z[base + j]
            elif noisy:
                for j in range(N):
                    cur[j] = M[b, j] + np.sqrt(max(V[b, j], np.float32(0.0))) * z[base + j]
            else:
                for j in range(N):
                    cur[j] = M[b, j]
            nclip = 0
            if adc:
                for j in range(N):
                    cc = np.floor(cur[j] * inv_step[j] + np.float32(0.5))   # float32 (math.floor: int64)
                    c2 = min(max(cc, qlo[j]), qhi[j])
                    nclip += c2 != cc
                    cur[j] = c2 * step_post[j]
            else:
                for j in range(N):
                    cur[j] = cur[j] * post[j]
            if first:
                for j in range(N):
                    out[b, j] = np.float32(0.0) + cur[j]
                clipped[b] = nclip
            else:
                for j in range(N):
                    out[b, j] += cur[j]
                clipped[b] += nclip


tile_accumulate = njit_parallel(_tile_accumulate)
# The same body compiled without threads: small reads cost less than a parallel launch.
tile_accumulate_serial = njit(serial_twin(_tile_accumulate))


def tile_periphery_reference(M, V, step, qlo, qhi, post, z):
    """Plain-numpy reference of the read's periphery over all tiles (tests only).

    M: (T, B, N); V: (T, B, N) or empty; step: (T, N) ADC step, 0 = ideal ADC. z: (T, B, N)
    standard normals (the kernel's own draws, from :func:`xbar.kernels.rng.normals`), used only
    when V is not empty. Returns (out (B, N) float64, number of clipped conversions).
    """
    cur = M.astype(np.float64)
    if V.shape[0] > 0:
        cur = cur + np.sqrt(V.astype(np.float64)) * z
    out = np.zeros(M.shape[1:], dtype=np.float64)
    nclip = 0
    for t in range(M.shape[0]):
        if step[t, 0] != 0:
            c = np.floor(cur[t] / step[t][None, :] + 0.5)
            lo, hi = qlo[t][None, :], qhi[t][None, :]
            nclip += int(np.sum(c < lo) + np.sum(c > hi))
            out += np.clip(c, lo, hi) * step[t][None, :] * post[t][None, :]
        else:
            out += cur[t] * post[t][None, :]
    return out, nclip


def _dac_dynamic(X, xs, scale, x2):
    """Dynamic input scaling of the DAC: scale[b] = max_j |X[b, j]| (1 where that is 0 or
    subnormal) and xs = X / scale, one pass per row; threads split the rows. With x2 of X's shape
    (not size 0) also x2 = xs * xs, which a noisy read's variance products take (a pass over xs
    less). Returns the number of rows holding a NaN or inf (the caller's finiteness check, without
    a pass of its own).

    A subnormal row maximum (< 1.18e-38) would make the reciprocal that fast-math division uses
    overflow to inf; such a row is read unscaled (its products are below float32's range anyway).
    """
    B, N = X.shape
    squares = x2.size > 0
    bad = 0
    for b in prange(B):
        m = np.float32(0.0)
        for j in range(N):
            v = abs(X[b, j])
            m = max(m, v)
        if not m >= np.float32(1.1754944e-38):
            m = np.float32(1.0)
        scale[b, 0] = m
        junk = np.float32(0.0)   # y * 0: 0 for a finite y, NaN otherwise (|y| <= 1 for a finite row)
        if squares:   # (two loops: a store under a branch would keep the loop from vectorizing)
            for j in range(N):
                y = X[b, j] / m
                xs[b, j] = y
                x2[b, j] = y * y
                junk += y * np.float32(0.0)
        else:
            for j in range(N):
                y = X[b, j] / m
                xs[b, j] = y
                junk += y * np.float32(0.0)
        bad += junk != 0
    return bad


dac_dynamic = njit_parallel(_dac_dynamic)
dac_dynamic_serial = njit(serial_twin(_dac_dynamic))


@njit_exact
def undo_scale(y, scale, b):
    """y[i, j] = y[i, j] * scale[i, 0], then + b[j] when b has entries: the DAC's per-row scale
    undone and the digital bias added in one pass, with numpy's two roundings (``y *= scale;
    y += b``). numpy's broadcast multiply costs a loop call per row: 0.44 ms for a (50176, 6) read."""
    if b.shape[0]:
        for i in range(y.shape[0]):
            s = scale[i, 0]
            for j in range(y.shape[1]):
                v = y[i, j] * s
                y[i, j] = v + b[j]
    else:
        for i in range(y.shape[0]):
            s = scale[i, 0]
            for j in range(y.shape[1]):
                y[i, j] = y[i, j] * s


@njit_exact
def scale_columns(E, a):
    """E * a[None, :] as a new float32 array (numpy's float32 products, the same bits), without
    numpy's broadcasting machinery (~4 µs a call on a batch of 64)."""
    out = np.empty_like(E)
    for i in range(E.shape[0]):
        row, src = out[i], E[i]
        for j in range(E.shape[1]):
            row[j] = src[j] * a[j]
    return out


_NO_B = np.zeros(0, dtype=np.float32)


def undo_dac(y: np.ndarray, scale, b: np.ndarray | None = None) -> np.ndarray:
    """y * scale (the DAC's scale undone digitally), then + b (a digital bias), in place: by
    :func:`undo_scale` for a per-row float32 scale, else by numpy."""
    if isinstance(scale, np.ndarray) and y.dtype == np.float32 and (b is None or b.dtype == np.float32):
        undo_scale(y, scale, _NO_B if b is None else b)
        return y
    y *= scale
    if b is not None:
        y += b[None, :]
    return y
