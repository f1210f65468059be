"""The one place that holds numba's jit flags.

error_model="numpy": a division by zero gives inf/NaN like numpy instead of a Python exception;
without it every division carries a zero check that stops LLVM from vectorizing the loop.
fastmath is restricted to flags that are safe with NaN/inf in the data ("nnan"/"ninf" are never
used: a diverging training run must show up as NaN, not as garbage).
"""

from __future__ import annotations

import numba

FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}

njit = numba.njit(cache=True, nogil=True, fastmath=FASTMATH, error_model="numpy")
njit_parallel = numba.njit(cache=True, nogil=True, fastmath=FASTMATH, parallel=True, error_model="numpy")

# Small device functions called from hot loops: inlined at numba-IR level so LLVM sees one body.
njit_inline = numba.njit(cache=True, nogil=True, fastmath=FASTMATH, inline="always", error_model="numpy")

# Kernels that must match a numpy reference bit for bit (no contraction, no reciprocal tricks).
njit_exact = numba.njit(cache=True, nogil=True, error_model="numpy")
