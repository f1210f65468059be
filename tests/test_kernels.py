"""numba kernels against their slow numpy references, and the counter-based normal generator's statistics.

The kernels are fed the same draws as the references: the draw of tile t, row b, output j is
number (t*B + b)*N + j of the stream (seed, counter), i.e. rng.normals(seed, counter, T*B*N).
"""

from __future__ import annotations

import numba
import numpy as np
import pytest
from scipy import stats

from xbar.kernels import rng as krng
from xbar.kernels.mvm import tile_accumulate, tile_accumulate_serial, tile_periphery_reference

EPS32 = float(np.finfo(np.float32).eps)
NO_VAR = np.zeros((0, 0, 0), np.float32)
NO_VAR_TILE = np.zeros((0, 0), np.float32)

# (T, B, N): T tiles (x planes), B batch rows, N outputs. Includes 1x1x1, batch 1, one output, odd N.
SHAPES = [(1, 1, 1), (1, 1, 7), (3, 1, 5), (2, 4, 1), (3, 5, 7), (4, 9, 33), (1, 16, 64)]


def make_case(shape, adc: str, noisy: bool, seed: int):
    """Random kernel inputs. ADC steps are powers of two so 1/step is exact in float32 and the
    kernel's `cur * inv_step` equals the reference's `cur / step` bit for bit."""
    T, _B, N = shape
    r = np.random.default_rng(seed)
    M = r.normal(0.0, 1.0, shape).astype(np.float32)
    V = (r.uniform(0.0, 0.05, shape) ** 2).astype(np.float32) if noisy else NO_VAR
    if noisy:
        V[r.random(shape) < 0.2] = 0.0          # some outputs without noise (kernel draws only if var > 0)
    step = (2.0 ** r.integers(-6, -3, size=(T, N))).astype(np.float32)
    if adc == "none":
        step[:] = 0.0
    elif adc == "mixed":
        step[::2] = 0.0                          # even tiles ideal, odd tiles quantized
    # Small code range so some conversions clip: |M| / step reaches ~3 * 64 = 192 > qhi.
    qhi = np.full((T, N), float(2 ** 6 - 1), np.float32)
    qlo = -qhi
    post = r.uniform(0.5, 2.0, (T, N)).astype(np.float32)
    inv_step = np.where(step > 0, 1.0 / np.where(step > 0, step, 1.0), 0.0).astype(np.float32)
    step_post = (step * post).astype(np.float32)
    return M, V, step, inv_step, step_post, qlo, qhi, post


def run_kernel(M, V, inv_step, step_post, qlo, qhi, post, seed, counter, kernel=tile_accumulate):
    _T, B, N = M.shape
    out = np.full((B, N), np.nan, np.float32)          # must be overwritten
    clipped = np.full(B, -1, np.int64)
    key = np.uint64(krng.stream_key(np.uint64(seed), np.uint64(counter)))
    for t in range(M.shape[0]):   # the read path's call, tile by tile
        kernel(M[t], V[t] if V.shape[0] else NO_VAR_TILE, inv_step[t], step_post[t], qlo[t], qhi[t], post[t], key,
               t * B * N, t == 0, out, clipped)
    return out, clipped


def assert_close_to_reference(out, ref, M, V, z, post):
    """Float32 accumulation over T tiles: error <= a few eps32 times the summed |terms|."""
    cur = np.abs(M.astype(np.float64))
    if V.shape[0]:
        cur = cur + np.sqrt(V.astype(np.float64)) * np.abs(z)
    abs_sum = np.sum(cur * np.abs(post.astype(np.float64))[:, None, :], axis=0)
    err = np.abs(out.astype(np.float64) - ref)
    bound = 8 * EPS32 * (abs_sum + np.abs(ref)) + 1e-30
    assert np.all(err <= bound), f"max err {err.max()}, worst ratio {(err / bound).max()}"


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("adc", ["none", "all", "mixed"])
@pytest.mark.parametrize("noisy", [False, True], ids=["quiet", "noisy"])
def test_tile_periphery_matches_reference(shape, adc, noisy):
    T, B, N = shape
    seed, counter = 1234 + T, 17 + B
    M, V, step, inv_step, step_post, qlo, qhi, post = make_case(shape, adc, noisy, seed=T * 100 + B + N)
    inputs = [a.copy() for a in (M, V, inv_step, step_post, qlo, qhi, post)]
    out, clipped = run_kernel(M, V, inv_step, step_post, qlo, qhi, post, seed, counter)
    z = krng.normals(seed, counter, T * B * N).reshape(T, B, N)
    ref, nclip = tile_periphery_reference(M, V, step, qlo, qhi, post, z)
    assert out.dtype == np.float32 and out.shape == (B, N)
    assert_close_to_reference(out, ref, M, V, z, post)
    assert int(clipped.sum()) == nclip
    if adc == "none":
        assert nclip == 0
    for before, after in zip(inputs, (M, V, inv_step, step_post, qlo, qhi, post)):
        assert np.array_equal(before, after), "the kernel must not modify its inputs"


def test_tile_periphery_clips_some_conversions():
    """The cases above really exercise clipping (otherwise 'clip counts equal' would be vacuous)."""
    shape = (3, 5, 7)
    M, V, step, inv_step, step_post, qlo, qhi, post = make_case(shape, "all", False, seed=3)
    M *= 4.0
    _out, clipped = run_kernel(M, V, inv_step, step_post, qlo, qhi, post, 0, 1)
    _, nclip = tile_periphery_reference(M, V, step, qlo, qhi, post, np.zeros(shape))
    assert nclip > 0 and int(clipped.sum()) == nclip


def test_tile_periphery_deterministic():
    shape = (3, 8, 11)
    M, V, _, inv_step, step_post, qlo, qhi, post = make_case(shape, "mixed", True, seed=5)
    a, ca = run_kernel(M, V, inv_step, step_post, qlo, qhi, post, 99, 3)
    b, cb = run_kernel(M, V, inv_step, step_post, qlo, qhi, post, 99, 3)
    assert a.tobytes() == b.tobytes() and np.array_equal(ca, cb)
    c, _ = run_kernel(M, V, inv_step, step_post, qlo, qhi, post, 99, 4)
    d, _ = run_kernel(M, V, inv_step, step_post, qlo, qhi, post, 100, 3)
    assert not np.array_equal(a, c), "a different counter must give different noise"
    assert not np.array_equal(a, d), "a different seed must give different noise"


def test_kernels_independent_of_thread_count():
    """Counter-based draws: the same bits whatever the number of threads."""
    shape = (2, 32, 9)
    M, V, _, inv_step, step_post, qlo, qhi, post = make_case(shape, "mixed", True, seed=8)
    n_threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        a, _ = run_kernel(M, V, inv_step, step_post, qlo, qhi, post, 5, 6)
        y1 = np.ones((32, 9), np.float32)
        krng.add_scaled_normals(y1, np.ones_like(y1), np.uint64(5), np.uint64(6))
    finally:
        numba.set_num_threads(n_threads)
    b, _ = run_kernel(M, V, inv_step, step_post, qlo, qhi, post, 5, 6)
    y2 = np.ones((32, 9), np.float32)
    krng.add_scaled_normals(y2, np.ones_like(y2), np.uint64(5), np.uint64(6))
    assert a.tobytes() == b.tobytes()
    assert y1.tobytes() == y2.tobytes()


# ---- add_scaled_normals ------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (5, 1), (9, 33), (64, 17)], ids=lambda s: "x".join(map(str, s)))
def test_add_scaled_normals_matches_reference(shape):
    B, N = shape
    r = np.random.default_rng(B * 1000 + N)
    y0 = r.normal(0.0, 3.0, shape).astype(np.float32)
    sd = r.uniform(0.0, 2.0, shape).astype(np.float32)
    sd[0, 0] = 0.0
    seed, counter = 2024, 9
    y = y0.copy()
    sd_before = sd.copy()
    krng.add_scaled_normals(y, sd, np.uint64(seed), np.uint64(counter))
    z = krng.normals(seed, counter, B * N).reshape(B, N)
    ref = y0.astype(np.float64) + sd.astype(np.float64) * z
    bound = 2 * EPS32 * (np.abs(y0) + np.abs(sd * z) + np.abs(ref))
    assert np.all(np.abs(y - ref) <= bound)
    assert y[0, 0] == y0[0, 0], "sd = 0 leaves the element unchanged"
    assert np.array_equal(sd, sd_before)


def test_add_scaled_normals_deterministic():
    sd = np.ones((6, 10), np.float32)

    def draw(seed, counter):
        y = np.zeros((6, 10), np.float32)
        krng.add_scaled_normals(y, sd, np.uint64(seed), np.uint64(counter))
        return y

    assert draw(1, 1).tobytes() == draw(1, 1).tobytes()
    assert not np.array_equal(draw(1, 1), draw(1, 2))
    assert not np.array_equal(draw(1, 1), draw(2, 1))


# ---- the normal generator ------------------------------------------------------------------------

N_STAT = 1_000_000


@pytest.fixture(scope="module")
def draws():
    return krng.normals(20240601, 3, N_STAT)


def test_normals_prefix_and_determinism():
    a = krng.normals(7, 11, 1000)
    assert a.dtype == np.float64
    assert a.tobytes() == krng.normals(7, 11, 1000).tobytes()
    assert np.array_equal(krng.normals(7, 11, 10), a[:10]), "draw i depends only on (seed, counter, i)"
    assert not np.array_equal(krng.normals(7, 12, 1000), a)
    assert not np.array_equal(krng.normals(8, 11, 1000), a)


def test_normals_moments(draws):
    """Mean, variance, skew and excess kurtosis within 5 standard errors of N(0, 1)'s."""
    n = len(draws)
    assert np.all(np.isfinite(draws))
    assert abs(draws.mean()) < 5 * np.sqrt(1 / n)
    assert abs(draws.var() - 1) < 5 * np.sqrt(2 / n)
    assert abs(stats.skew(draws)) < 5 * np.sqrt(6 / n)
    assert abs(stats.kurtosis(draws)) < 5 * np.sqrt(24 / n)


def test_normals_ks(draws):
    # With a correct generator p is uniform on [0, 1]: a false alarm at 1e-4 is a 1-in-10^4 event.
    assert stats.kstest(draws, "norm").pvalue > 1e-4


@pytest.mark.parametrize("x", [1.0, 2.5, 3.5, 4.0])
def test_normals_tail_mass(draws, x):
    """Counts beyond +-x are binomial(n, sf(x)) on each side: within 5 standard deviations."""
    n = len(draws)
    p = stats.norm.sf(x)
    sd = np.sqrt(n * p * (1 - p))
    for count in (np.sum(draws > x), np.sum(draws < -x)):
        assert abs(count - n * p) < 5 * sd, (x, count, n * p)


def test_normals_streams_uncorrelated():
    n = 200_000
    a = krng.normals(1, 1, n)
    tol = 5 / np.sqrt(n)
    for b in (krng.normals(1, 2, n), krng.normals(2, 1, n)):
        assert abs(np.corrcoef(a, b)[0, 1]) < tol
    assert abs(np.corrcoef(a[:-1], a[1:])[0, 1]) < tol, "successive draws of one stream"


def test_normals_equal_the_numpy_copy_bit_for_bit():
    """The generator's float32 steps are exact IEEE operations in a fixed order: the kernels'
    draws equal the plain-numpy reference exactly (so they are the same on every machine)."""
    for n in (1, 2, 3, 101, 4096):
        assert krng.normals(11, 3, n).tobytes() == krng.normals_reference(11, 3, n).tobytes()


def test_fill_normals_at_any_offset_is_the_stream():
    key = np.uint64(krng.stream_key(np.uint64(4), np.uint64(9)))
    full = krng.normals(4, 9, 64).astype(np.float32)
    for g0 in (0, 1, 2, 7):
        for n in (1, 2, 5, 30):
            z = np.empty(n, np.float32)
            krng.fill_normals(key, g0, n, z, krng.scratch(n))
            assert np.array_equal(z, full[g0:g0 + n]), (g0, n)


def test_normals_pairs_are_independent(draws):
    """Box-Muller pairs: the two draws of a pair, and their squares, are uncorrelated; draws stay
    below the generator's bound."""
    a, b = draws[0::2], draws[1::2]
    tol = 5 / np.sqrt(len(a))
    assert abs(np.corrcoef(a, b)[0, 1]) < tol
    assert abs(np.corrcoef(a * a, b * b)[0, 1]) < tol
    assert np.abs(draws).max() <= krng.BOUND


def test_tile_kernel_same_bits_serial_parallel_and_any_rows():
    """The serial and parallel compilations, and a read split into row blocks (any chunking), give
    the same bits: each draw is a function of (stream, tile, global row, output)."""
    shape = (3, 37, 300)     # 300 outputs: several rows per work item, a partial last item
    M, V, _, inv_step, step_post, qlo, qhi, post = make_case(shape, "mixed", True, seed=21)
    a, ca = run_kernel(M, V, inv_step, step_post, qlo, qhi, post, 3, 4)
    b, cb = run_kernel(M, V, inv_step, step_post, qlo, qhi, post, 3, 4, kernel=tile_accumulate_serial)
    assert a.tobytes() == b.tobytes() and np.array_equal(ca, cb)
    T, B, N = shape
    key = np.uint64(krng.stream_key(np.uint64(3), np.uint64(4)))
    out = np.empty((B, N), np.float32)
    clipped = np.empty(B, np.int64)
    for r0, r1 in ((0, 10), (10, 11), (11, B)):
        for t in range(T):
            tile_accumulate_serial(M[t, r0:r1], V[t, r0:r1], inv_step[t], step_post[t], qlo[t], qhi[t], post[t], key,
                                   t * B * N + r0 * N, t == 0, out[r0:r1], clipped[r0:r1])
    assert out.tobytes() == a.tobytes()


def test_tile_kernel_one_variance_per_row_equals_the_full_variance():
    shape = (2, 9, 13)
    M, V, _, inv_step, step_post, qlo, qhi, post = make_case(shape, "all", True, seed=4)
    Vrow = np.ascontiguousarray(V[:, :, :1])
    full = np.ascontiguousarray(np.broadcast_to(Vrow, V.shape))
    a, _ = run_kernel(M, Vrow, inv_step, step_post, qlo, qhi, post, 8, 1)
    b, _ = run_kernel(M, full, inv_step, step_post, qlo, qhi, post, 8, 1)
    assert a.tobytes() == b.tobytes()


def test_column_sums_kernel_has_numpys_bits():
    # a convolution's bias gradient: numpy's axis-0 sum of a tall, narrow float32 matrix, the same
    # bits (rows added in order onto zeros; signed zeros, NaN and inf); one column stays numpy's
    from xbar.kernels.reduce import sum_rows
    r = np.random.default_rng(1)
    for t in range(120):
        n, m = int(r.integers(1, 70000 if t % 10 == 0 else 300)), int(r.choice([1, 2, 3, 6, 16, 17, 120]))
        d = (r.standard_normal((n, m)) * r.choice([1e-3, 1.0, 1e6])).astype(np.float32)
        if t % 4 == 0:
            d[:, 0] = -0.0
        if t % 7 == 0:
            d[r.integers(n), r.integers(m)] = r.choice([np.nan, np.inf, -np.inf])
        assert sum_rows(d).tobytes() == d.sum(axis=0).tobytes(), (n, m)
    f = np.ones((5, 4), np.float64)
    assert sum_rows(f).dtype == np.float64 and np.array_equal(sum_rows(f), f.sum(axis=0))


def test_finiteness_checks_match_numpy():
    # all_finite (as_matrix's check, without a mask) and the dynamic DAC's count of rows holding a
    # NaN or inf, against numpy's isfinite; float32 and float64, huge finite values, every position
    from xbar.kernels.mvm import dac_dynamic, dac_dynamic_serial
    from xbar.kernels.reduce import all_finite
    r = np.random.default_rng(4)
    for dt in (np.float32, np.float64):
        for n in (0, 1, 7, 8, 9, 100, 70000):
            a = (r.standard_normal(n) * 1e30).astype(dt)
            a[:: max(1, n // 5)] = np.finfo(dt).max
            assert all_finite(a) and all_finite(a[::2]) and all_finite(a.reshape(1, -1))
            for bad in (np.nan, np.inf, -np.inf):
                for pos in {0, n // 2, n - 1} if n else ():
                    b = a.copy()
                    b[pos] = bad
                    assert not all_finite(b) and all_finite(b) == np.isfinite(b).all()
    for rows, cols in [(1, 1), (5, 25), (300, 6), (40000, 3)]:
        X = r.standard_normal((rows, cols)).astype(np.float32)
        bad_rows = r.choice(rows, size=min(rows, 4), replace=False)
        for k, row in enumerate(bad_rows):
            X[row, r.integers(cols)] = (np.nan, np.inf, -np.inf, np.nan)[k]
        for kernel in (dac_dynamic, dac_dynamic_serial):
            xs, scale = np.empty_like(X), np.empty((rows, 1), np.float32)
            assert kernel(X, xs, scale, np.zeros((0, 0), np.float32)) == int((~np.isfinite(X).all(axis=1)).sum())
            ok = np.isfinite(X).all(axis=1)
            ref = np.abs(X[ok]).max(axis=1, keepdims=True)
            assert np.array_equal(scale[ok], np.where(ref >= 1.1754944e-38, ref, 1))
            # squaring in the same pass: the same xs and scale, and xs * xs as numpy has it
            xs2, scale2, x2 = np.empty_like(X), np.empty((rows, 1), np.float32), np.empty_like(X)
            assert kernel(X, xs2, scale2, x2) == int((~np.isfinite(X).all(axis=1)).sum())
            assert xs2[ok].tobytes() == xs[ok].tobytes() and scale2[ok].tobytes() == scale[ok].tobytes()
            assert x2[ok].tobytes() == (xs[ok] * xs[ok]).tobytes()


def test_bias_add_with_check_and_column_scaling_have_numpys_bits():
    # Crossbar.mvm's digital bias added and its output checked in one call, and mvm_t's column
    # gain: numpy's broadcast add / multiply bit for bit (signed zeros, huge values, NaN and inf)
    from xbar.kernels.mvm import scale_columns
    from xbar.kernels.reduce import add_row_finite
    r = np.random.default_rng(5)
    for n, m in [(1, 1), (64, 10), (64, 100), (7, 784), (1000, 3)]:
        y = (r.standard_normal((n, m)) * 1e3).astype(np.float32)
        y[0, 0] = -0.0
        b = r.standard_normal(m).astype(np.float32)
        b[0] = 0.0
        for bad in (None, np.nan, np.inf, 3e38):
            yb = y.copy()
            if bad is not None:
                yb[n // 2, m // 2] = bad
            with np.errstate(all="ignore"):
                want, prod = yb + b[None, :], yb * b[None, :]
            got = yb.copy()
            assert add_row_finite(got, b) == bool(np.isfinite(want).all())
            assert got.tobytes() == want.tobytes()
            assert scale_columns(yb, b).tobytes() == prod.tobytes()


def test_undo_scale_kernel_has_numpys_bits():
    # the DAC's per-row scale undone and the digital bias added in one pass: numpy's y *= scale;
    # y += b, bit for bit (a fixed scalar range stays numpy's)
    from xbar.kernels.mvm import undo_dac
    r = np.random.default_rng(2)
    for n, m in [(1, 1), (7, 3), (50176, 6), (300, 130)]:
        y = (r.standard_normal((n, m)) * 1e3).astype(np.float32)
        s = np.abs(r.standard_normal((n, 1))).astype(np.float32)
        b = r.standard_normal(m).astype(np.float32)
        for bias in (None, b):
            ref = y * s
            if bias is not None:
                ref += bias[None, :]
            assert undo_dac(y.copy(), s, bias).tobytes() == ref.tobytes()
        assert np.array_equal(undo_dac(y.copy(), np.float32(2.5), b), y * np.float32(2.5) + b[None, :])


def test_serial_kernels_runs_numba_on_one_thread_and_restores_the_count():
    from xbar.kernels import serial_kernels
    n = numba.get_num_threads()
    with pytest.raises(RuntimeError), serial_kernels():
        assert numba.get_num_threads() == 1
        raise RuntimeError("a step that fails")
    assert numba.get_num_threads() == n
