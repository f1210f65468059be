"""The seed quantizers (asymm, symm) in one pass, for the per-step rounding of nearest updates.

Same operations in the same order and dtype as `xbar.mapping.asymm` / `symm` (numpy), which stay
the reference; tests compare the two bit for bit.
"""

from __future__ import annotations

import numpy as np

from ._jit import njit_exact


@njit_exact
def asymm_flat(x, out, lo, hi, n):
    """out = round((clip(x, lo, hi) - lo) n / (hi - lo)) (hi - lo) / n + lo; scalars in x's dtype."""
    span = hi - lo
    for i in range(x.shape[0]):
        v = x[i]
        if v < lo:
            v = lo
        elif v > hi:
            v = hi
        q = np.rint((v - lo) * n / span)
        out[i] = q * span / n + lo


@njit_exact
def symm_flat(x, out, m, n):
    """out = round(clip(x, -m, m) n / m) m / n; scalars in x's dtype."""
    neg = -m
    for i in range(x.shape[0]):
        v = x[i]
        if v < neg:
            v = neg
        elif v > m:
            v = m
        q = np.rint(v * n / m)
        out[i] = q * m / n
