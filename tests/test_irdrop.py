"""IR drop (xbar.tile.irdrop): exact against an independent nodal solve, fast against exact."""

from __future__ import annotations

import numpy as np
import pytest

from xbar.errors import ConfigError, ShapeError
from xbar.tile import irdrop
from xbar.tile.irdrop import effective_matrix, effective_stack


# ---- independent reference: the full nodal system in SI units, any batch of inputs ------------
def nodal_reference(G_us, r, V, transpose=False):
    """Currents for each input row of V, by a dense solve of all 2RC node voltages.

    Unknowns: row nodes first (index i*C + j), then column nodes (R*C + i*C + j). Forward: row i
    driven at its left end through r, column j sensed at its bottom end through r; returns
    (batch, C) currents = (voltage of the last column node) / r. Transposed: column j driven at
    its bottom end through r, row i sensed at its left end through r; returns (batch, R). Currents
    are returned in µA per volt, the units of v @ G with G in µS.
    """
    R, C = G_us.shape
    g = G_us * 1e-6
    w = 1.0 / r
    n = 2 * R * C
    row = lambda i, j: i * C + j
    col = lambda i, j: R * C + i * C + j
    K = np.zeros((n, n))

    def link(p, q, cond):
        K[p, p] += cond
        K[q, q] += cond
        K[p, q] -= cond
        K[q, p] -= cond

    for i in range(R):
        for j in range(C):
            link(row(i, j), col(i, j), g[i, j])
            if j + 1 < C:
                link(row(i, j), row(i, j + 1), w)
            if i + 1 < R:
                link(col(i, j), col(i + 1, j), w)
        K[row(i, 0), row(i, 0)] += w        # segment to the row's left end (driver or sensor)
    for j in range(C):
        K[col(R - 1, j), col(R - 1, j)] += w  # segment to the column's bottom end
    B = np.zeros((n, V.shape[0]))
    if not transpose:
        for i in range(R):
            B[row(i, 0)] = w * V[:, i]          # source v_i behind the segment
        X = np.linalg.solve(K, B)
        return np.stack([X[col(R - 1, j)] for j in range(C)], axis=1) / r * 1e6
    for j in range(C):
        B[col(R - 1, j)] = w * V[:, j]
    X = np.linalg.solve(K, B)
    return np.stack([X[row(i, 0)] for i in range(R)], axis=1) / r * 1e6


def rel_err(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


SMALL = [(1, 1), (3, 4), (5, 2), (2, 7), (8, 8), (1, 6), (6, 1)]


# ---- r = 0 and the reference -----------------------------------------------------------------
@pytest.mark.parametrize("mode", ["exact", "fast"])
@pytest.mark.parametrize("transpose", [False, True])
def test_zero_wire_resistance_is_ideal(mode, transpose):
    G = np.random.default_rng(0).uniform(0, 50, (7, 5))
    A = effective_matrix(G, 0.0, mode, transpose)
    assert A.dtype == np.float64 and np.array_equal(A, G) and A is not G
    S = effective_stack(G[None].repeat(2, 0), 0, (4, 3), mode, transpose)
    assert np.array_equal(S, G[None].repeat(2, 0))


@pytest.mark.parametrize("shape", SMALL)
@pytest.mark.parametrize("r, g_max", [(1.0, 25.0), (5.0, 100.0), (40.0, 200.0), (0.5, 1.0)])
def test_exact_matches_nodal_reference(shape, r, g_max):
    rng = np.random.default_rng(hash((shape, r)) % 2**32)
    G = rng.uniform(0, g_max, shape)
    V = rng.uniform(-1, 1, (9, shape[0]))
    E = rng.uniform(-1, 1, (9, shape[1]))
    A = effective_matrix(G, r, "exact")
    np.testing.assert_allclose(V @ A, nodal_reference(G, r, V), rtol=1e-9, atol=0)
    At = effective_matrix(G, r, "exact", transpose=True)
    np.testing.assert_allclose(E @ At.T, nodal_reference(G, r, E, transpose=True), rtol=1e-9, atol=0)
    # the sparse-LU solver of the same system agrees to round-off
    s = r * 1e-6
    np.testing.assert_allclose(irdrop._exact_sparse(G * s) / s, A, rtol=1e-10, atol=0)


def test_reference_sees_ir_drop():
    """Guard against a reference that would agree with anything: the drop is there and sizeable."""
    G = np.full((8, 8), 100.0)
    V = np.ones((1, 8))
    ideal = V @ G
    got = nodal_reference(G, 20.0, V)
    assert 0.05 < 1 - got.max() / ideal.max() < 0.9


def test_transposed_read_is_reciprocal():
    G = np.random.default_rng(3).uniform(0, 100, (6, 9))
    for mode in ("exact", "fast"):
        np.testing.assert_array_equal(effective_matrix(G, 3.0, mode, True), effective_matrix(G, 3.0, mode))


# ---- physics -------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_physical_bounds(mode):
    """A >= 0; driving one row (row sums) or all rows at once (column sums) never gives more
    current than without wires; for v >= 0 the total current only drops."""
    rng = np.random.default_rng(4)
    for shape, r, g_max in [((16, 16), 5.0, 100.0), ((32, 8), 1.0, 25.0), ((5, 40), 2.0, 50.0)]:
        G = rng.uniform(0, g_max, shape)
        G[rng.random(shape) < 0.3] = 0.0
        A = effective_matrix(G, r, mode)
        assert (A >= 0).all()
        assert (A.sum(axis=1) <= G.sum(axis=1) * (1 + 1e-12)).all()
        assert (A.sum(axis=0) <= G.sum(axis=0) * (1 + 1e-12)).all()
        V = rng.uniform(0, 1, (64, shape[0]))
        assert ((V @ A).sum(axis=1) <= (V @ G).sum(axis=1)).all()
        if mode == "fast":
            assert (A <= G).all()


def test_exact_sneak_paths_can_exceed_g():
    """With only row k driven, current reaches column j through other cells even where G[k, j] = 0:
    A is not bounded by G entry by entry (why the bounds above are on sums)."""
    G = np.full((4, 4), 100.0)
    G[0, 3] = 0.0
    A = effective_matrix(G, 50.0, "exact")
    assert A[0, 3] > 0


def test_error_grows_with_r_and_size():
    rng = np.random.default_rng(5)
    V = rng.uniform(0, 1, (64, 64))
    G = rng.uniform(0, 25, (64, 64))
    errs_r = [rel_err(V @ effective_matrix(G, r, "exact"), V @ G) for r in (0.5, 1, 2, 5)]
    assert np.all(np.diff(errs_r) > 0)
    errs_n = [rel_err(V[:, :n] @ effective_matrix(G[:n, :n], 2.0, "exact"), V[:, :n] @ G[:n, :n])
              for n in (8, 16, 32, 64)]
    assert np.all(np.diff(errs_n) > 0)
    # quadratic in size while small: (R^2 + C^2) grows 4x per doubling
    assert 3.0 < errs_n[1] / errs_n[0] < 4.5


def test_partial_tile_is_corner_of_full_tile():
    """A smaller array = a full one with the used cells next to drivers and sensors (bottom-left)
    and G = 0 elsewhere; zero rows between the cells and the sensors are not equivalent."""
    rng = np.random.default_rng(6)
    G = rng.uniform(0, 100, (5, 3))
    for mode in ("exact", "fast"):
        small = effective_matrix(G, 4.0, mode)
        full = np.zeros((8, 8))
        full[3:, :3] = G
        np.testing.assert_allclose(effective_matrix(full, 4.0, mode)[3:, :3], small, rtol=1e-10)
        below = np.zeros((8, 3))
        below[:5] = G
        assert rel_err(effective_matrix(below, 4.0, mode)[:5], small) > 1e-3


# ---- fast vs exact -------------------------------------------------------------------------
# Bounds stated in the module docstring: error of the IR-drop correction (fast vs exact) relative
# to the correction itself, and relative to the ideal output; v in [0, 1], G ~ U[0, g_max].
FAST_GRID = [(n, r, g) for n in (16, 64, 128) for r in (1.0, 5.0) for g in (1.0, 25.0, 100.0)]


@pytest.mark.parametrize("n, r, g_max", FAST_GRID)
def test_fast_against_exact(n, r, g_max):
    rng = np.random.default_rng(n * 1000 + int(r * 10) + int(g_max))
    G = rng.uniform(0, g_max, (n, n))
    V = rng.uniform(0, 1, (256, n))
    y_ideal = V @ G
    y_exact = V @ effective_matrix(G, r, "exact")
    y_fast = V @ effective_matrix(G, r, "fast")
    kappa = r * 1e-6 * G.mean() * n * n      # (R^2 + C^2) / 2 for a square tile
    err_corr = rel_err(y_fast, y_exact) * np.linalg.norm(y_exact) / np.linalg.norm(y_exact - y_ideal)
    err_ideal = np.linalg.norm(y_fast - y_exact) / np.linalg.norm(y_ideal)
    assert err_corr <= min(0.035, 0.08 * kappa)
    assert err_ideal <= min(0.03, 0.06 * kappa ** 2)
    # and the correction is worth having: fast is closer to exact than the ideal read is
    assert np.linalg.norm(y_fast - y_exact) < 0.1 * np.linalg.norm(y_ideal - y_exact)


def test_fast_wide_and_tall_tiles():
    rng = np.random.default_rng(7)
    for shape in [(16, 128), (128, 16)]:
        G = rng.uniform(0, 100, shape)
        V = rng.uniform(0, 1, (256, shape[0]))
        y_ideal, y_exact = V @ G, V @ effective_matrix(G, 5.0, "exact")
        y_fast = V @ effective_matrix(G, 5.0, "fast")
        assert np.linalg.norm(y_fast - y_exact) <= 0.15 * np.linalg.norm(y_exact - y_ideal)


def test_fast_is_exact_for_one_cell_and_first_order():
    g = np.array([[60.0]])
    for r in (1.0, 100.0, 1e4):
        a = r * 60e-6
        assert effective_matrix(g, r, "fast")[0, 0] == pytest.approx(60.0 / (1 + 2 * a), rel=1e-14)
        assert effective_matrix(g, r, "exact")[0, 0] == pytest.approx(60.0 / (1 + 2 * a), rel=1e-13)
    # error second order in r: 10x smaller r -> ~100x smaller error of A
    G = np.random.default_rng(8).uniform(0, 100, (12, 12))
    e = [np.abs(effective_matrix(G, r, "fast") - effective_matrix(G, r, "exact")).max() for r in (1.0, 0.1)]
    assert 70 < e[0] / e[1] < 130


# ---- stacks --------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["exact", "fast"])
@pytest.mark.parametrize("rows, out, tile", [(13, 10, (4, 3)), (8, 6, (4, 3)), (3, 2, (4, 3)),
                                             (1, 1, (64, 64)), (9, 5, (1, 5))])
def test_stack_matches_per_tile(mode, rows, out, tile):
    rng = np.random.default_rng(rows * out)
    G = rng.uniform(0, 80, (2, rows, out))
    got = effective_stack(G, 3.0, tile, mode)
    assert got.shape == G.shape and got.dtype == np.float64
    tr, tc = tile
    for p in range(2):
        for r0 in range(0, rows, tr):
            for c0 in range(0, out, tc):
                blk = G[p, r0:r0 + tr, c0:c0 + tc]
                np.testing.assert_allclose(got[p, r0:r0 + tr, c0:c0 + tc],
                                           effective_matrix(blk, 3.0, mode), rtol=1e-12)


def test_inputs_not_mutated_and_float32_accepted():
    G = np.random.default_rng(9).uniform(0, 30, (2, 7, 5)).astype(np.float32)
    keep = G.copy()
    out = effective_stack(G, 2.0, (4, 4), "exact")
    assert np.array_equal(G, keep) and out.dtype == np.float64
    np.testing.assert_allclose(out[0, :4, :4], effective_matrix(G[0, :4, :4], 2.0), rtol=1e-12)


# ---- bad input: one clear line -------------------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    ({"r_wire_ohm": -1.0}, "r_wire_ohm = -1.0: must be a finite number >= 0"),
    ({"r_wire_ohm": float("nan")}, "r_wire_ohm = nan"),
    ({"r_wire_ohm": float("inf")}, "r_wire_ohm = inf"),
    ({"r_wire_ohm": "2"}, "r_wire_ohm = '2'"),
    ({"r_wire_ohm": True}, "r_wire_ohm = True"),
    ({"mode": "exat"}, r"must be one of exact, fast \(did you mean 'exact'\?\)"),
    ({"mode": "none"}, "must be one of exact, fast$"),
    ({"transpose": "yes"}, "transpose = 'yes'"),
])
def test_bad_options(kwargs, match):
    args = {"G": np.ones((2, 2)), "r_wire_ohm": 1.0, "mode": "exact", **kwargs}
    with pytest.raises(ConfigError, match=match) as e:
        effective_matrix(**args)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=match):
        effective_stack(args["G"][None], args["r_wire_ohm"], (2, 2), args["mode"],
                        args.get("transpose", False))


def test_bad_conductances_and_shapes():
    with pytest.raises(ConfigError, match="negative conductances"):
        effective_matrix(np.array([[1.0, -0.5]]), 1.0)
    with pytest.raises(ConfigError, match="NaN/inf"):
        effective_matrix(np.array([[1.0, np.nan]]), 1.0)
    with pytest.raises(ConfigError, match="NaN/inf"):
        effective_stack(np.full((1, 2, 2), np.inf), 1.0, (2, 2), "fast")
    with pytest.raises(ShapeError, match=r"expected \(R, C\)"):
        effective_matrix(np.ones(3), 1.0)
    with pytest.raises(ShapeError, match=r"expected \(P, rows, out\)"):
        effective_stack(np.ones((3, 3)), 1.0, (2, 2), "exact")
    for tile in [(0, 2), (2,), (2.0, 2), "64"]:
        with pytest.raises(ConfigError, match="tile = "):
            effective_stack(np.ones((1, 3, 3)), 1.0, tile, "exact")
