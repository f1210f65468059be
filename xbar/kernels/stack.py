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
from .optim import adadelta_step
from .program import quant_cell


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
def _code_symm(v, m, n):
    """The symm seed quantizer's code of float32 v on [-m, m] with n positive levels (float32)."""
    if v < -m:
        v = -m
    elif v > m:
        v = m
    return np.rint(v * n / m)


@njit_exact
def _code_asymm(v, qlo, qhi, n, span):
    """The asymm seed quantizer's code of float32 v on [qlo, qhi] (span = qhi - qlo), n steps (float32)."""
    if v < qlo:
        v = qlo
    elif v > qhi:
        v = qhi
    return np.rint((v - qlo) * n / span)


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
        for i in range(x.shape[0]):
            q = _code_symm(x[i], m, n)
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
            q = _code_asymm(x[i], qlo, qhi, n, span)
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
    """The planner's net conductance G+ - G- for one float64 weight and whether it was clipped
    (program_quant_differential's cell, the same operations)."""
    a, c, clip = quant_cell(wv, plo, phi, nq, symm, dstep, gm, lvl, top, snap)
    return a - c, clip


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
    qi = np.empty(W.shape[1] * W.shape[2], np.int32)
    tabs = (np.empty(512, np.float32), np.empty(512, np.float32), np.empty(512, np.int64))
    for k in range(W.shape[0]):
        _round_program_variant(k, W, b, lo, hi, bits, symm, local, n_levels, window, g_min, w32, g32, alpha32,
                               beta32, has_beta, clipped, bad_w, bad_b, qi, tabs)


@njit_exact
def adadelta_round_program_stack(W, b, gW, gb, sW, aW, sb, ab, rho, one_rho, eps, lr, lo, hi, bits, symm, local,
                                 n_levels, window, g_min, w32, g32, alpha32, beta32, has_beta, clipped, bad_w, bad_b):
    """Adadelta's step (xbar.kernels.optim.adadelta_step) on W and b with gradients gW, gb and
    state (sW, aW), (sb, ab), then round_program_stack, variant by variant: each variant's slice
    is updated, rounded and programmed while it is in cache (the same operations as the
    optimizer's step over the whole stack followed by round_program_stack)."""
    qi = np.empty(W.shape[1] * W.shape[2], np.int32)
    tabs = (np.empty(512, np.float32), np.empty(512, np.float32), np.empty(512, np.int64))
    for k in range(W.shape[0]):
        adadelta_step(W[k].reshape(-1), gW[k].reshape(-1), sW[k].reshape(-1), aW[k].reshape(-1), rho, one_rho,
                      eps, lr)
        adadelta_step(b[k], gb[k], sb[k], ab[k], rho, one_rho, eps, lr)
        _round_program_variant(k, W, b, lo, hi, bits, symm, local, n_levels, window, g_min, w32, g32, alpha32,
                               beta32, has_beta, clipped, bad_w, bad_b, qi, tabs)


@njit_exact
def _plan(k, plo, phi, bits, symm, n_levels, window, g_min, alpha32, beta32, has_beta):
    """The planner's constants for variant k whose rounded weights span [plo, phi] (float64;
    xbar.mapping._col_ranges, gain "layer"): writes alpha32[k], beta32[k], has_beta[k] and
    returns (plo, phi, nq, dstep, lvl, top, alpha) for :func:`_program_value` and the tables."""
    is_symm = symm[k]
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
    for j in range(alpha32.shape[1]):
        alpha32[k, j] = a32
        beta32[k, j] = np.float32(beta)
    has_beta[k] = beta != 0
    return plo, phi, nq, dstep, lvl, top, alpha


@njit_exact
def _fill_tables(qlo, qhi, n, is_symm, plo, phi, nq, gm, dstep, lvl, top, snap, alpha, tabs):
    """Each integer code's net conductance, forward weight and clip flag (program_quant_differential's
    cell on the code's rounded value); returns the table index of code 0."""
    tab_g, tab_w, tab_c = tabs
    base = 256 if is_symm else 0      # table index of code q: q + base
    qn = int(n)
    for q in range(-qn if is_symm else 0, qn + 1):
        dif, cl = _program_value(np.float64(_code_value(q, qlo, qhi, n, is_symm)), plo, phi, nq,
                                 is_symm, gm, dstep, lvl, top, snap)
        tab_g[q + base] = np.float32(dif)
        tab_w[q + base] = np.float32(dif * alpha)
        tab_c[q + base] = cl
    return base


@njit_exact
def _round_program_variant(k, W, b, lo, hi, bits, symm, local, n_levels, window, g_min, w32, g32, alpha32, beta32,
                           has_beta, clipped, bad_w, bad_b, qi, tabs):
    """Variant k of round_program_stack (qi: scratch codes; tabs: scratch per-code tables of net
    conductance, forward weight and clip flag, 512 each). Without g32 (size 0) the net
    conductances are not written (g32 of size 0: a layer whose transposed read the step never uses)."""
    wk = W[k].reshape(-1)
    is_symm = symm[k]
    qlo, qhi, n, bad = _round_codes(wk, lo[k], hi[k], bits[k], is_symm, local[k], qi)
    bad_w[k] = bad
    bad_b[k] = round_seed(b[k], lo[k], hi[k], bits[k], is_symm, local[k])
    clipped[k] = 0
    if bad_w[k] >= 0 or bad_b[k] >= 0:
        return
    coded = n != 0
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
    plo, phi, nq, dstep, lvl, top, alpha = _plan(k, plo, phi, bits, symm, n_levels, window, g_min, alpha32,
                                                 beta32, has_beta)
    gm = g_min[k]
    snap = n_levels[k] != 0
    with_g = g32.size > 0
    gf = g32[k].reshape(-1) if with_g else g32.reshape(-1)
    of = w32[k].reshape(-1)
    n_clip = 0
    if coded:
        base = _fill_tables(qlo, qhi, n, is_symm, plo, phi, nq, gm, dstep, lvl, top, snap, alpha, tabs)
        tab_g, tab_w, tab_c = tabs
        # (separate loops: each gather loop is ~0.5 ns per cell, the three together ~1.5 ns)
        for e in range(qi.shape[0]):
            of[e] = tab_w[qi[e] + base]
        if with_g:
            for e in range(qi.shape[0]):
                gf[e] = tab_g[qi[e] + base]
        qn = int(n)
        if tab_c[base - qn if is_symm else 0] or tab_c[base + qn]:   # only extreme codes can clip
            for e in range(qi.shape[0]):
                n_clip += tab_c[qi[e] + base]
    else:   # the quantizer left the tensor as it was: cell by cell
        for e in range(wk.shape[0]):
            dif, cl = _program_value(np.float64(wk[e]), plo, phi, nq, is_symm, gm, dstep, lvl, top, snap)
            if with_g:
                gf[e] = np.float32(dif)
            of[e] = np.float32(dif * alpha)
            n_clip += cl
    clipped[k] = n_clip
