"""Counter-based Gaussian draws for kernels: same seed -> same bits, whatever the thread count.

Each draw is a pure function of (key, index): a splitmix64-style hash gives 64 random bits, and
a 128-layer ziggurat (Marsaglia & Tsang, J. Stat. Softw. 5(8), 2000) turns them into a standard
normal. No generator state is shared between threads, so `prange` loops stay deterministic.
The ziggurat needs one hash and one table compare for ~98.8% of draws; numpy's normal generator
costs ~8 ns per number here, this path ~1.5 ns.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from ._jit import njit, njit_inline, njit_parallel, serial_twin

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
S32 = np.uint64(32)
MASK7 = np.uint64(127)
_R = 3.442619855899  # start of the tail of the 128-layer ziggurat


def _tables():
    """Ziggurat layer tables (kn: integer accept bounds, wn: widths, fn: densities)."""
    m1 = 2147483648.0
    dn = _R
    tn = dn
    vn = 9.91256303526217e-3
    kn = np.zeros(128, dtype=np.int64)
    wn = np.zeros(128, dtype=np.float64)
    fn = np.zeros(128, dtype=np.float64)
    q = vn / math.exp(-0.5 * dn * dn)
    kn[0] = int((dn / q) * m1)
    kn[1] = 0
    wn[0] = q / m1
    wn[127] = dn / m1
    fn[0] = 1.0
    fn[127] = math.exp(-0.5 * dn * dn)
    for i in range(126, 0, -1):
        dn = math.sqrt(-2.0 * math.log(vn / dn + math.exp(-0.5 * dn * dn)))
        kn[i + 1] = int((dn / tn) * m1)
        tn = dn
        fn[i] = math.exp(-0.5 * dn * dn)
        wn[i] = dn / m1
    return kn, wn, fn


KN, WN, FN = _tables()
WN32 = WN.astype(np.float32)


@njit_inline
def mix64(z):
    """splitmix64 finaliser: a bijective 64-bit hash with full avalanche."""
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@njit
def stream_key(seed, counter):
    """Key of one stream of draws: (seed, counter) -> 64 bits."""
    return mix64(mix64(np.uint64(seed) * GOLDEN + np.uint64(1)) ^ (np.uint64(counter) * _M2))


@njit
def _uniform(h0, attempt):
    # Extra draws for rejected samples: re-hash the sample's first hash with the attempt number.
    h = mix64(h0 + np.uint64(attempt) * GOLDEN)
    return ((h >> np.uint64(11)) + 0.5) * (1.0 / 9007199254740992.0)


@njit_inline
def normal_at(key, idx, kn, wn, fn):
    """The standard normal number `idx` of stream `key` (exact ziggurat, tail included).

    The accept test of the first try is kept small so LLVM inlines it into the calling loop;
    the ~1.2% of rejected draws go to `normal_slow`. (GOLDEN, MASK7 and S32 are public for the one
    other copy of this fast path: the vectorized float32 pass of :func:`xbar.kernels.mvm.tile_periphery`.)
    """
    h0 = mix64(key + np.uint64(idx) * GOLDEN)
    iz = np.int64(h0 & MASK7)
    hz = np.int64(np.int32(np.uint32(h0 >> S32)))
    if abs(hz) < kn[iz]:
        return hz * wn[iz]
    return normal_slow(h0, iz, hz, kn, wn, fn)


@njit
def normal_slow(h0, iz, hz, kn, wn, fn):
    """The exact ziggurat's slow path for a draw whose first try (hash h0, layer iz, value hz) was rejected."""
    attempt = 1
    while True:
        x = hz * wn[iz]
        if iz == 0:
            while True:
                xt = -math.log(_uniform(h0, attempt)) / _R
                yt = -math.log(_uniform(h0, attempt + 1))
                attempt += 2
                if yt + yt >= xt * xt:
                    break
            return _R + xt if hz > 0 else -_R - xt
        if fn[iz] + _uniform(h0, attempt) * (fn[iz - 1] - fn[iz]) < math.exp(-0.5 * x * x):
            return x
        h = mix64(h0 + np.uint64(attempt + 1) * GOLDEN)
        attempt += 2
        iz = np.int64(h & MASK7)
        hz = np.int64(np.int32(np.uint32(h >> S32)))
        if abs(hz) < kn[iz]:
            return hz * wn[iz]


@njit
def _normals(seed, counter, n, kn, wn, fn):
    key = stream_key(seed, counter)
    out = np.empty(n, dtype=np.float64)
    for i in range(n):
        out[i] = normal_at(key, i, kn, wn, fn)
    return out


def normals(seed: int, counter: int, n: int) -> np.ndarray:
    """The first `n` draws of stream (seed, counter), as the kernels see them (for references/tests)."""
    return _normals(np.uint64(seed), np.uint64(counter), int(n), KN, WN, FN)


def _add_scaled_normals(y, sd, seed, counter, kn, wn, fn):
    """y += sd * z in place, z the stream (seed, counter) in row-major order. y, sd: (B, N) float32.

    Each thread owns whole rows of y. Used for read noise when there is no ADC.
    """
    key = stream_key(seed, counter)
    B, N = y.shape
    for b in prange(B):
        for j in range(N):
            y[b, j] += np.float32(sd[b, j] * normal_at(key, b * N + j, kn, wn, fn))


add_scaled_normals = njit_parallel(_add_scaled_normals)
add_scaled_normals_serial = njit(serial_twin(_add_scaled_normals))
