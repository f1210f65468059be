"""Fused per-tile periphery: read noise, ADC and digital partial-sum add, in one pass.

The analog part of an in-memory MVM is a set of per-tile matrix products done by BLAS:
``M[t] = X_t @ Gd_t`` (mean column currents of tile t) and, with read noise,
``V[t] = X_t**2 @ Var_t`` (their variance). For independent Gaussian device noise the current of
a column is exactly ``N(M, V)``, so one draw per tile output replaces B*in*out device draws
(the Gaussian sum rule). This kernel then does, for every tile t, batch row b and output j::

    I = M[t,b,j] + sqrt(V[t,b,j]) * z          # z ~ N(0,1), counter-based (see rng.py)
    c = clip(floor(I * inv_step[t,j] + 0.5), qlo[t,j], qhi[t,j])   # ADC (skipped if inv_step=0)
    out[b,j] += post[t,j] * c * step                                # digital gain, shift-add

Threads split the batch rows, so each thread writes only its own rows of `out` and its own
slot of `clipped`.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from ._jit import njit, njit_parallel, serial_twin
from .rng import GOLDEN, MASK7, S32, mix64, normal_slow, stream_key


def _tile_periphery(M, V, inv_step, step_post, qlo, qhi, post, seed, counter, kn, wn, fn, wn32, out, clipped):
    """Noise + ADC + digital accumulation over tiles. See the module docstring.

    M, V: (T, B, N) float32 currents and variances (V may have shape (0, 0, 0): no read noise).
    inv_step: (T, N) float32 1/ADC step; a first column of zeros means an ideal ADC for that tile.
    step_post: (T, N) float32 ADC step times `post`; post: (T, N) float32 digital gain.
    qlo, qhi: (T, N) float32 lowest/highest ADC code. seed, counter: uint64 noise stream.
    kn, wn, fn: ziggurat tables (rng.KN/WN/FN); wn32: WN as float32.
    out: (B, N) float32, overwritten. clipped: (B,) int64, overwritten with clipped conversions.

    Each row is done in short passes over N so the hot ones vectorize: hash + ziggurat fast path
    (rejections, ~1.2%, are flagged and only those redone exactly in a second pass), then
    mean + sd * z, then the ADC and the accumulation.
    """
    T, B, N = M.shape
    noisy = V.shape[0] > 0
    key = stream_key(seed, counter)
    for b in prange(B):
        z = np.zeros(N, np.float32)
        rej = np.zeros(N, np.uint8)
        cur = np.empty(N, np.float32)
        acc = np.zeros(N, np.float32)
        nclip = 0
        for t in range(T):
            if noisy:
                base = np.uint64((t * B + b) * N)
                nrej = 0
                for j in range(N):
                    h0 = mix64(key + (base + np.uint64(j)) * GOLDEN)
                    iz = h0 & MASK7
                    hz = np.int32(np.uint32(h0 >> S32))
                    z[j] = np.float32(hz) * wn32[iz]
                    r = abs(np.int64(hz)) >= kn[iz]
                    rej[j] = r
                    nrej += r
                if nrej:
                    # only the flagged draws are hashed again (the row's others keep their first try)
                    for j in range(N):
                        if rej[j]:
                            h0 = mix64(key + (base + np.uint64(j)) * GOLDEN)
                            iz = np.int64(h0 & MASK7)
                            hz = np.int64(np.int32(np.uint32(h0 >> S32)))
                            z[j] = normal_slow(h0, iz, hz, kn, wn, fn)
                for j in range(N):
                    cur[j] = M[t, b, j] + math.sqrt(max(V[t, b, j], np.float32(0.0))) * z[j]
            else:
                for j in range(N):
                    cur[j] = M[t, b, j]
            if inv_step[t, 0] != 0.0:
                for j in range(N):
                    c = math.floor(cur[j] * inv_step[t, j] + np.float32(0.5))
                    c2 = min(max(c, qlo[t, j]), qhi[t, j])
                    nclip += c2 != c
                    acc[j] += c2 * step_post[t, j]
            else:
                for j in range(N):
                    acc[j] += cur[j] * post[t, j]
        for j in range(N):
            out[b, j] = acc[j]
        clipped[b] = nclip


tile_periphery = njit_parallel(_tile_periphery)
# The same body compiled without threads: small reads cost less than a parallel launch.
tile_periphery_serial = njit(serial_twin(_tile_periphery))


def tile_periphery_reference(M, V, step, qlo, qhi, post, z):
    """Plain-numpy reference of :func:`tile_periphery` (tests only).

    step: (T, N) ADC step, 0 = ideal ADC. z: (T, B, N) standard normals (the kernel's own draws,
    from :func:`xbar.kernels.rng.normals`), used only when V is not empty.
    Returns (out (B, N) float64, number of clipped conversions).
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


def _dac_dynamic(X, xs, scale):
    """Dynamic input scaling of the DAC: scale[b] = max_j |X[b, j]| (1 where that is 0 or
    subnormal) and xs = X / scale, one pass per row; threads split the rows.

    A subnormal row maximum (< 1.18e-38) would make the reciprocal that fast-math division uses
    overflow to inf; such a row is read unscaled (its products are below float32's range anyway).
    """
    B, N = X.shape
    for b in prange(B):
        m = np.float32(0.0)
        for j in range(N):
            v = abs(X[b, j])
            m = max(m, v)
        if not m >= np.float32(1.1754944e-38):
            m = np.float32(1.0)
        scale[b, 0] = m
        for j in range(N):
            xs[b, j] = X[b, j] / m


dac_dynamic = njit_parallel(_dac_dynamic)
dac_dynamic_serial = njit(serial_twin(_dac_dynamic))
