"""Reductions numpy runs slowly on narrow arrays, with numpy's own bits.

``d.sum(axis=0)`` of a tall, narrow float32 matrix (a convolution's bias gradient: one row per
output position, a few channels) costs numpy a ufunc inner-loop call per row: 1.1 ms for
(50176, 6), ten times this kernel. numpy adds the rows in order onto zeros, so the same order here
gives the same bits (tests compare the two, signed zeros, NaN and inf included). A single
column is summed pairwise by numpy (the reduced axis is then the contiguous one): left to numpy.

The finiteness check of the crossbar's inputs and outputs is a reduction too: numpy's
``isfinite(a).all()`` first writes a boolean mask as large as the array (15.8 µs for 784x100);
``all_finite`` sums a * 0 instead (7.0 µs), and the tests compare it with numpy's.
"""

from __future__ import annotations

import numpy as np

from ._jit import njit, njit_exact


@njit
def finite_flat(a):
    """Whether every element of flat float array a is finite: x * 0 is 0 for a finite x and NaN
    for inf or NaN, so one sum tells (it vectorizes with reassociation, which cannot turn a NaN
    into a number; no temporary mask, unlike numpy's isfinite(a).all())."""
    if a.shape[0] == 0:
        return True
    zero = np.float32(0.0)
    acc = a[0] * zero
    for i in range(1, a.shape[0]):
        acc += a[i] * zero
    return acc == 0


@njit
def add_row_finite(y, b):
    """y += b[None, :] in place for C-contiguous y (numpy's float32 add: the same bits), then
    whether every result is finite (finite_flat): a digital bias and the output check in one call
    (numpy's broadcast add and the check: 6.5 µs on (64, 100), this 1.5 µs)."""
    for i in range(y.shape[0]):
        row = y[i]
        for j in range(y.shape[1]):
            row[j] += b[j]
    return finite_flat(y.reshape(-1))


def all_finite(a: np.ndarray) -> bool:
    """``np.isfinite(a).all()``, without the mask for C-contiguous float32/float64 arrays."""
    if a.dtype in (np.float32, np.float64) and a.flags.c_contiguous:
        return bool(finite_flat(a.reshape(-1)))
    return bool(np.isfinite(a).all())


@njit_exact
def column_sums(d, out):
    """out[j] = sum over i of d[i, j], float32, rows added in order onto zeros (numpy's axis-0 sum)."""
    for j in range(d.shape[1]):
        out[j] = 0.0
    for i in range(d.shape[0]):
        for j in range(d.shape[1]):
            out[j] += d[i, j]


def sum_rows(d: np.ndarray) -> np.ndarray:
    """``d.sum(axis=0)`` with the same bits, by the kernel for C-contiguous float32 matrices of at
    least two columns."""
    if d.dtype != np.float32 or d.ndim != 2 or not d.flags.c_contiguous or d.shape[1] < 2:
        return d.sum(axis=0)
    out = np.empty(d.shape[1], np.float32)
    column_sums(d, out)
    return out
