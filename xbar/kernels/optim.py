"""Fused optimizer updates of one flat float32 parameter array (xbar.train.optim's formulas).

The optimizers in :mod:`xbar.train.optim` call these for contiguous float32 parameters; stacked
training (:mod:`xbar.kernels.stack`) calls :func:`adadelta_step` on each variant's slice right
before rounding it, while the slice is still in cache. Same float32 operations in the same order
as the optimizers' numpy fallback (tests compare the two).
"""

from __future__ import annotations

import numpy as np

from ._jit import njit_exact


@njit_exact
def adam_step(p, g, m, v, c):
    """Adam's update of one flat float32 parameter array (see Adam.step for the math). c: the
    step's float32 constants (1-β1, β2, 1-β2, eps, √(1-β2^t), lr/(1-β1^t)) in one array (numba's
    dispatch of six numpy scalars cost ~3 µs a call, more than the update of a 10,000-entry bias)."""
    one_m_b1, b2, one_m_b2, eps, bc2_sqrt, step_size = c[0], c[1], c[2], c[3], c[4], c[5]
    for i in range(p.shape[0]):
        gi = g[i]
        m[i] += (gi - m[i]) * one_m_b1
        v[i] = v[i] * b2 + (gi * gi) * one_m_b2
        denom = np.sqrt(v[i]) / bc2_sqrt + eps
        p[i] -= (m[i] / denom) * step_size


@njit_exact
def adadelta_step(p, g, s, a, rho, one_rho, eps, lr):
    """Adadelta's update of one flat float32 parameter array (see Adadelta.step for the math)."""
    scale = lr != 1
    for i in range(p.shape[0]):
        gi = g[i]
        s[i] = s[i] * rho + (gi * gi) * one_rho
        d = np.sqrt(a[i] + eps) / np.sqrt(s[i] + eps) * gi
        a[i] = a[i] * rho + (d * d) * one_rho
        if scale:
            d = d * lr
        p[i] -= d
