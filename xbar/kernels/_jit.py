"""The one place that holds numba's jit flags.

fastmath is restricted to flags that are safe with NaN/inf in the data ("nnan"/"ninf" are never
used: a diverging training run must show up as NaN, not as garbage).
"""

from __future__ import annotations

import numba

FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}

njit = numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
njit_parallel = numba.njit(cache=True, nogil=True, fastmath=FASTMATH, parallel=True)

# Small device functions called from hot loops: inlined at numba-IR level so LLVM sees one body.
njit_inline = numba.njit(cache=True, nogil=True, fastmath=FASTMATH, inline="always")
