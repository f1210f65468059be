"""The one place that holds numba's jit flags.

error_model="numpy": a division by zero gives inf/NaN like numpy instead of a Python exception;
without it every division carries a zero check that stops LLVM from vectorizing the loop.
fastmath is restricted to flags that are safe with NaN/inf in the data ("nnan"/"ninf" are never
used: a diverging training run must show up as NaN, not as garbage).
"""

from __future__ import annotations

import contextlib
import os

import numba

# The 'workqueue' layer's workers sleep instead of spinning between parallel regions, so they do
# not fight OpenBLAS's threads on small machines (measured 1.3-2x faster noisy reads on 2 cores
# than the default 'omp' layer). A user's NUMBA_THREADING_LAYER always wins.
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"

FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}

njit = numba.njit(cache=True, nogil=True, fastmath=FASTMATH, error_model="numpy")
njit_parallel = numba.njit(cache=True, nogil=True, fastmath=FASTMATH, parallel=True, error_model="numpy")

# Small device functions called from hot loops: inlined at numba-IR level so LLVM sees one body.
njit_inline = numba.njit(cache=True, nogil=True, fastmath=FASTMATH, inline="always", error_model="numpy")

# Kernels that must match a numpy reference bit for bit (no contraction, no reciprocal tricks).
njit_exact = numba.njit(cache=True, nogil=True, error_model="numpy")
njit_exact_parallel = numba.njit(cache=True, nogil=True, parallel=True, error_model="numpy")
njit_exact_inline = numba.njit(cache=True, nogil=True, inline="always", error_model="numpy")


# The one cut-off between a kernel's serial and parallel compilation: below this many output values
# a parallel launch costs more than it saves (measured: ~35 µs serial vs 0.1-3 ms for a parallel
# launch on two busy cores). Both compilations give the same bits.
PARALLEL_MIN = 1 << 15


def pick(parallel, serial, n: int):
    """The parallel kernel for work of `n` output values at or above PARALLEL_MIN, else the serial
    twin (also with one thread: the parallel machinery alone measured +1.5 ns per output of a
    noisy tile read)."""
    return parallel if n >= PARALLEL_MIN and numba.get_num_threads() > 1 else serial


def serial_twin(py_func, suffix: str = "_serial"):
    """A copy of `py_func` under another qualified name, for a second (serial) compilation.

    numba's on-disk cache is keyed by the function's qualified name and line: two dispatchers
    built from one function object (one parallel, one serial) would share one cache entry and
    could load each other's machine code.
    """
    import types
    twin = types.FunctionType(py_func.__code__, py_func.__globals__, py_func.__name__ + suffix,
                              py_func.__defaults__, py_func.__closure__)
    twin.__qualname__ = py_func.__qualname__ + suffix
    twin.__module__ = py_func.__module__
    return twin


@contextlib.contextmanager
def serial_kernels():
    """numba's kernels (and the reads' row blocks, xbar.tile.rows) on the calling thread inside
    the block, restored after; the same bits either way. Training steps run so: their products
    already take every core through BLAS, whose threads keep spinning between calls, and a
    parallel kernel beside them measured slower (lenet5 with an 8-bit ADC, batch 64, two cores:
    19-20 ms per step against 22-28 ms)."""
    n = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(n)
