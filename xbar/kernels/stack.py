"""The per-step rounding and programming of a stack of K variants of one layer, in one pass.

A stacked training run (:mod:`xbar.train.stack`) holds the same layer of K variants as (K, rows, out)
arrays. After every step, update ``nearest`` rounds each variant's weights and bias with the seed
quantizer (:func:`xbar.mapping.quantize`, float32) and programs the rounded weights (the planner's
fused quantizer, :func:`xbar.kernels.program.program_quant_differential`, float64). These kernels
do both for all K variants with each variant's own bits, quantizer and range: the same operations
in the same order and dtype as those functions, so every variant gets the bits it gets alone
(tests compare the two on every combination).

Per-variant parameters (arrays of K): ``lo``/``hi`` the global range (float64), ``bits``,
``symm`` (quantizer symm, else asymm), ``local`` (range local, per tensor, else global). Device
constants per variant: ``n_levels`` (0: analog), ``window`` and ``g_min`` (µS).
"""

from __future__ import annotations

import numpy as np

from ._jit import njit_exact


@njit_exact
def _tensor_range(x, lo, hi, symm, local):
    """The seed quantizer's range for flat float32 tensor x, as float32 (lo, hi) (symm: (-m, m)).

    Local: min/max (symm: max|x|) with numpy's NaN propagation; global: (lo, hi) (symm: ±max|.|).
    """
    if local:
        if symm:
            m = np.float32(0.0)
            for i in range(x.shape[0]):
                a = abs(x[i])
                if np.isnan(a):
                    return np.float32(np.nan), np.float32(np.nan)
                m = max(m, a)
            return -m, m
        mn = x[0]
        mx = x[0]
        for i in range(x.shape[0]):
            v = x[i]
            if np.isnan(v):
                return np.float32(np.nan), np.float32(np.nan)
            mn = min(mn, v)
            mx = max(mx, v)
        return mn, mx
    if symm:
        m = max(abs(lo), abs(hi))
        return np.float32(-m), np.float32(m)
    return np.float32(lo), np.float32(hi)


@njit_exact
def round_seed(x, lo, hi, bits, symm, local):
    """Round flat float32 x in place with the seed quantizer (xbar.mapping.quantize); returns the
    flat index of the first non-finite result, or -1."""
    qi = np.empty(x.shape[0], np.int32)
    _, _, n, bad = _round_codes(x, lo, hi, bits, symm, local, qi)
    if n == 0:   # a degenerate range left x as it was
        for i in range(x.shape[0]):
            if not np.isfinite(x[i]):
                return i
    return bad


@njit_exact
def round_stack(X, lo, hi, bits, symm, local, bad):
    """round_seed on every variant k of X (K, ...) float32, in place; bad[k] = first non-finite index or -1."""
    K = X.shape[0]
    flat = X.reshape(K, -1)
    for k in range(K):
        bad[k] = round_seed(flat[k], lo[k], hi[k], bits[k], symm[k], local[k])


@njit_exact
def _round_codes(x, lo, hi, bits, symm, local, qi):
    """round_seed for a tensor that is not degenerate, also writing each value's integer code
    qi (asymm 0..n, symm -n..n); returns (qlo, qhi, n, first non-finite index or -1), or
    n = 0 when the quantizer leaves the tensor unchanged (a degenerate range)."""
    qlo, qhi = _tensor_range(x, lo, hi, symm, local)
    nbad = 0
    if symm:
        m = qhi
        if m == 0:
            return qlo, qhi, np.float32(0.0), -1
        n = np.float32(2 ** (bits - 1) - 1)
        neg = -m
        for i in range(x.shape[0]):
            v = x[i]
            if v < neg:
                v = neg
            elif v > m:
                v = m
            q = np.rint(v * n / m)
            r = q * m / n
            x[i] = r
            ok = np.isfinite(r)
            nbad += not ok
            qi[i] = np.int32(q) if ok else 0
    else:
        if qhi == qlo:
            return qlo, qhi, np.float32(0.0), -1
        n = np.float32(2 ** bits - 1)
        span = qhi - qlo
        for i in range(x.shape[0]):
            v = x[i]
            if v < qlo:
                v = qlo
            elif v > qhi:
                v = qhi
            q = np.rint((v - qlo) * n / span)
            r = q * span / n + qlo
            x[i] = r
            ok = np.isfinite(r)
            nbad += not ok
            qi[i] = np.int32(q) if ok else 0
    if nbad:
        for i in range(x.shape[0]):
            if not np.isfinite(x[i]):
                return qlo, qhi, n, i
    return qlo, qhi, n, -1


@njit_exact
def _code_value(q, qlo, qhi, n, symm):
    """The rounded value of integer code q (the seed quantizer's own float32 formula)."""
    qf = np.float32(q)
    if symm:
        return qf * qhi / n
    span = qhi - qlo
    return qf * span / n + qlo


@njit_exact
def _program_value(wv, plo, phi, nq, symm, gm, dstep, lvl, top, snap):
    """The planner's net conductance G+ - G- for one float64 weight (program_quant_differential's
    cell, same operations) and whether it was clipped."""
    w = wv
    clip = 0
    if w < plo:
        w = plo
        clip = 1
    elif w > phi:
        w = phi
        clip = 1
    span = phi - plo
    if span == 0.0:
        c = 0.0
    elif symm:
        mm = phi if phi > 0 else 1.0
        c = np.round(w * nq / mm)
    else:
        c = 2.0 * np.round((w - plo) * nq / span) - nq
    g = gm + abs(c) * dstep
    if snap:
        idx = np.round((g - gm) / lvl)
        idx = min(max(idx, 0.0), top)
        g = gm + idx * lvl
    return (g - gm if c >= 0 else gm - g), clip


@njit_exact
def round_program_stack(W, b, lo, hi, bits, symm, local, n_levels, window, g_min,
                        w32, g32, alpha32, beta32, has_beta, clipped, bad_w, bad_b):
    """Round W (K, rows, out) and b (K, out) in place (round_seed), then program each variant's
    rounded W as the planner's fused quantizer does, writing its forward weights w32, its float32
    net conductances g32 (K, rows, out), gains alpha32 and offsets beta32 (K, out), has_beta[k]
    (any offset non-zero), clipped[k] (weights outside the planner's range).

    A rounded weight is a function of its integer code, so the planner's per-cell arithmetic runs
    once per code (at most 2^8 of them, into a table) and the cells take their code's entry: the
    same operations on the same values as program_quant_differential, cell by cell.

    bad_w[k] / bad_b[k]: the first non-finite rounded weight / bias (flat index), or -1; such a
    variant is not programmed (its run has diverged: programming refuses non-finite weights).
    """
    K, _, out = W.shape
    qi = np.empty(W.shape[1] * W.shape[2], np.int32)
    tab_g = np.empty(512, np.float32)
    tab_w = np.empty(512, np.float32)
    tab_c = np.empty(512, np.int64)
    for k in range(K):
        wk = W[k].reshape(-1)
        is_symm = symm[k]
        qlo, qhi, n, bad = _round_codes(wk, lo[k], hi[k], bits[k], is_symm, local[k], qi)
        bad_w[k] = bad
        bad_b[k] = round_seed(b[k], lo[k], hi[k], bits[k], is_symm, local[k])
        clipped[k] = 0
        if bad_w[k] >= 0 or bad_b[k] >= 0:
            continue
        coded = n != 0
        # the planner's range on the rounded weights (xbar.mapping._col_ranges, gain "layer"):
        # the rounded values grow with their code, so the extremes are those of the extreme codes
        if local[k]:
            if coded:
                cmin = qi[0]
                cmax = qi[0]
                for e in range(qi.shape[0]):
                    cmin = min(cmin, qi[e])
                    cmax = max(cmax, qi[e])
                plo = np.float64(_code_value(cmin, qlo, qhi, n, is_symm))
                phi = np.float64(_code_value(cmax, qlo, qhi, n, is_symm))
            else:
                plo = np.float64(wk[0])
                phi = np.float64(wk[0])
                for e in range(wk.shape[0]):
                    v = np.float64(wk[e])
                    plo = min(plo, v)
                    phi = max(phi, v)
        else:
            plo = lo[k]
            phi = hi[k]
        if is_symm:
            m = max(abs(plo), abs(phi))
            plo = -m
            phi = m
            nq = np.float64(2 ** (bits[k] - 1) - 1)
        else:
            nq = np.float64(2 ** bits[k] - 1)
        L = n_levels[k]
        if L == 0:
            dstep = window[k] / nq
            lvl = 1.0
            top = 0.0
        else:
            lvl = window[k] / (L - 1)
            top = np.float64(L - 1)
            dstep = max(1, (L - 1) // int(nq)) * lvl
        span = phi - plo
        if is_symm:
            step = phi / nq
            beta = 0.0
        else:
            step = span / nq / 2
            beta = (plo + phi) / 2
        if span == 0:
            step = 1.0
            beta = plo
        alpha = step / dstep
        a32 = np.float32(alpha)
        for j in range(out):
            alpha32[k, j] = a32
            beta32[k, j] = np.float32(beta)
        has_beta[k] = beta != 0
        gm = g_min[k]
        snap = L != 0
        gf = g32[k].reshape(-1)
        of = w32[k].reshape(-1)
        n_clip = 0
        if coded:
            base = 256 if is_symm else 0      # table index of code q: q + base
            qn = int(n)
            for q in range(-qn if is_symm else 0, qn + 1):
                dif, cl = _program_value(np.float64(_code_value(q, qlo, qhi, n, is_symm)), plo, phi, nq,
                                         is_symm, gm, dstep, lvl, top, snap)
                tab_g[q + base] = np.float32(dif)
                tab_w[q + base] = np.float32(dif * alpha)
                tab_c[q + base] = cl
            for e in range(qi.shape[0]):
                t = qi[e] + base
                gf[e] = tab_g[t]
                of[e] = tab_w[t]
                n_clip += tab_c[t]
        else:   # the quantizer left the tensor as it was: cell by cell
            for e in range(wk.shape[0]):
                dif, cl = _program_value(np.float64(wk[e]), plo, phi, nq, is_symm, gm, dstep, lvl, top, snap)
                gf[e] = np.float32(dif)
                of[e] = np.float32(dif * alpha)
                n_clip += cl
        clipped[k] = n_clip
