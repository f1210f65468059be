"""Shared fixtures: compile every numba kernel once per session, on tiny arrays."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session", autouse=True)
def compiled_kernels():
    """Pay numba's compile (or cache-load) time once, before any timed or statistical test runs.

    The argument types match what xbar passes in (float32 arrays, uint64 seed and counter), so
    the tests reuse these specialisations instead of compiling new ones.
    """
    from xbar.kernels import rng as krng
    from xbar.kernels.mvm import tile_accumulate, tile_accumulate_serial

    krng.normals(0, 0, 4)
    y = np.zeros((1, 1), np.float32)
    krng.add_scaled_normals(y, np.ones((1, 1), np.float32), np.uint64(0), np.uint64(1))
    m = np.ones((1, 1), np.float32)
    t_n = np.ones(1, np.float32)
    out = np.empty((1, 1), np.float32)
    clipped = np.empty(1, np.int64)
    key = np.uint64(krng.stream_key(np.uint64(0), np.uint64(1)))
    for kernel in (tile_accumulate, tile_accumulate_serial):
        for v in (m, np.zeros((0, 0), np.float32)):
            kernel(m, v, t_n, t_n, -t_n, t_n, t_n, key, 0, True, out, clipped)
    return True
