"""IR drop of one crossbar array as a linear map: column currents = v @ A(G, r_wire).

The array's wires form a linear resistive network, so for any input vector v the sensed currents
are v @ A with an effective (R, C) conductance matrix A that depends only on the programmed
conductances G and the wire resistance r. Computing A once per programmed tile makes every later
read an ordinary matmul: reads with IR drop cost the same as reads without it.

Geometry (forward read, `mvm`)
------------------------------
R rows x C columns of cells, cell (i, j) of conductance G[i, j] between row node (i, j) and column
node (i, j); row 0 is the top row, column 0 the leftmost column.

- Row i is driven at its LEFT end by the input voltage v_i through one wire segment r before cell
  (i, 0), with a segment r between adjacent cells; its right end is open.
- Column j is sensed at its BOTTOM end by a virtual ground (0 V) through one segment r after cell
  (R-1, j), with a segment r between adjacent cells; its top end is open.
- Unknowns: the 2·R·C node voltages. I_j = current into column j's virtual ground; A[k, j] = I_j
  for v = e_k (1 V on row k, every other driver and sensor at 0 V). r = 0 gives A = G exactly.

Transposed read (`mvm_t`)
-------------------------
The columns are driven at their BOTTOM ends (the same end and segment where the forward read senses
them) and the rows are sensed at their LEFT ends by virtual grounds (where the forward read drives
them). Row currents = e @ A_t.T. The ports are the same physical wire ends, and a network of
resistors is reciprocal (its port admittance matrix is symmetric), so A_t = A exactly: the
transposed read needs no second solve. tests/test_irdrop.py checks this against a nodal solve of
the transposed geometry.

Units: G in µS, r in Ω; the dimensionless coupling of a cell is a = r·G·1e-6. The input voltage
scale (v_read) cancels: the map is linear.

Partial tiles (`effective_stack`): the last row/column tile of a layer whose size does not divide
the tile is solved as a physically smaller array. That is electrically identical to a full-size
array whose used cells sit in its bottom-left corner (rows next to the sensors, columns next to the
drivers) with G = 0 elsewhere, because segments that carry no current drop no voltage. It is NOT
the same as zero cells between the used cells and the sensors (e.g. rows padded at the bottom):
those segments carry the column currents and add drop.

Methods
-------
"exact" (`_exact_block`): the nodal system solved exactly (to round-off) by sweeping the rows top
to bottom, one dense C x C step per row (a block-tridiagonal Schur / Riccati recursion; see the
function), along the longer side. O(R·C²·(C + R)) flops in LAPACK calls; per tile on one core of
a shared machine: 18 ms (64x64), 84 ms (128x128), 0.9 s (256x256). `_exact_sparse` solves the
same nodal system with one sparse LU (scipy.sparse.linalg.splu, symmetric ordering) and min(R, C)
right-hand sides: equal to 1e-13, but 79 ms, 0.56 s and 5.6 s. Both are checked against an
independent nodal solve in the tests. Many BLAS threads on small matrices can make the sweep far
slower on a busy machine: cap them (threadpoolctl) where tiles are solved in bulk.

"fast" (`_fast_factor`): A = G / (1 + T_row + T_col), the [0/1] Padé form of the first-order
(in r) correction; O(R·C), a few cumulative sums (0.17 / 0.56 / 2.4 ms per 64 / 128 / 256 tile).
T_row[k, j] = r Σ_j' G[k, j'] (min(j, j') + 1) is the row-wire drop at cell (k, j) per volt of
input (first order); T_col[k, j] = r Σ_i G[i, j] (R - max(i, k)) is the loss of column j's
sensed current per unit injected at row k: the column wire's own voltage (i = k) and the current
it pushes back into the other rows' cells (i != k, "sneak" paths). Exact for a 1x1 array, exact to
first order in r (its error is O(r²)), never above G, never negative. Measured errors with
G ~ U[0, g_max], 256 inputs v ~ U[0, 1], κ = r·1e-6·mean(G)·(R² + C²)/2 (bench/irdrop_table.py;
tests/test_irdrop.py asserts the bounds in brackets for square tiles 16-128, r in {1, 5} Ω,
g_max in {1, 25, 100} µS):
    of the correction, ‖v@A_fast - v@A‖ / ‖v@A - v@G‖: 0.035-0.057·κ for κ < 0.1, at most 2.9 %
        for square tiles up to 256x256 at r <= 5 Ω, g_max <= 100 µS      [<= min(0.08 κ, 0.035)];
    of the output, ‖v@A_fast - v@A‖ / ‖v@G‖: 0.02-0.045·κ², e.g. 7e-5 at 64x64, 1 Ω, 25 µS
        (IR drop 3.5 %), 2.4 % at 256x256, 5 Ω, 100 µS (IR drop 90 %)     [<= min(0.06 κ², 0.03)].
Wide or tall tiles are worse: up to 13 % of the correction at 16x128 and 128x16, 5 Ω, 100 µS
(IR drop 55-70 %); signed inputs v ~ U[-1, 1] roughly double the error of the correction.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
from scipy.linalg import lapack, solveh_banded
from scipy.sparse import coo_matrix
from scipy.sparse.linalg import splu

from ..config import suggest
from ..errors import ConfigError, ShapeError

MODES = ("exact", "fast")
US = 1e-6  # µS -> S


# ---- validation ------------------------------------------------------------------------------
def _check_r(r_wire_ohm) -> float:
    if isinstance(r_wire_ohm, bool) or not isinstance(r_wire_ohm, numbers.Real) \
            or not math.isfinite(float(r_wire_ohm)) or float(r_wire_ohm) < 0:
        raise ConfigError(f"r_wire_ohm = {r_wire_ohm!r}: must be a finite number >= 0 "
                          "(resistance of one wire segment between adjacent cells, in ohms)")
    return float(r_wire_ohm)


def _check_mode(mode) -> None:
    if mode not in MODES:
        hint = suggest(mode, MODES) if isinstance(mode, str) else ""
        raise ConfigError(f"ir_drop mode = {mode!r}: must be one of {', '.join(MODES)}{hint}")


def _check_g(G, ndim: int) -> np.ndarray:
    G = np.asarray(G, dtype=np.float64)
    if G.ndim != ndim:
        want = "(R, C)" if ndim == 2 else "(P, rows, out)"
        raise ShapeError(f"G has shape {G.shape}: expected {want} conductances in µS")
    if not np.isfinite(G).all():
        raise ConfigError(f"G holds {int((~np.isfinite(G)).sum())} NaN/inf conductances: "
                          "program finite conductances (µS) before computing IR drop")
    if G.size and G.min() < 0:
        raise ConfigError(f"G holds negative conductances (min {G.min():.4g} µS): each array holds "
                          "one device of a pair, conductances >= 0")
    return G


def _check_transpose(transpose) -> None:
    if not isinstance(transpose, (bool, np.bool_)):
        raise ConfigError(f"transpose = {transpose!r}: must be True or False")


def _check_tile(tile) -> tuple[int, int]:
    try:
        if len(tile) != 2 or any(isinstance(t, bool) or not isinstance(t, (int, np.integer))
                                 or t < 1 for t in tile):
            raise TypeError
    except TypeError:
        raise ConfigError(f"tile = {tile!r}: expected (tile_rows, tile_cols), two integers >= 1") from None
    return int(tile[0]), int(tile[1])


# ---- public API ------------------------------------------------------------------------------
def effective_matrix(G: np.ndarray, r_wire_ohm: float, mode: str = "exact",
                     transpose: bool = False) -> np.ndarray:
    """Effective conductances A (R, C) of one array with wire resistance: column currents = v @ A.

    G: (R, C) cell conductances in µS (one device of a pair; >= 0).
    r_wire_ohm: resistance of one wire segment (Ω); 0 returns a copy of G.
    mode: "exact" (nodal solution) or "fast" (first-order Padé form, see the module docstring).
    transpose: the transposed read (columns driven at their bottom ends, rows sensed at their
        left ends): row currents = e @ A_t.T. By reciprocity A_t = A (module docstring).
    Returns float64 (R, C) in µS, the same units as G.
    """
    G = _check_g(G, 2)
    r = _check_r(r_wire_ohm)
    _check_mode(mode)
    _check_transpose(transpose)
    if r == 0.0 or G.size == 0:
        return G.copy()
    if mode == "fast":
        return G * _fast_factor(G * (r * US))
    return _exact_block(G * (r * US)) / (r * US)


def effective_stack(G: np.ndarray, r_wire_ohm: float, tile: tuple[int, int], mode: str,
                    transpose: bool = False) -> np.ndarray:
    """Effective conductances of a layer's planes, each split into physical arrays of `tile`.

    G: (P, rows, out) µS of one device of each pair (call it for G+ and G- separately: the two
        sit in separate arrays driven by the same row voltages).
    tile: (tile_rows, tile_cols); the last tiles may be smaller and are solved as smaller arrays
        (module docstring, "Partial tiles").
    Returns (P, rows, out) float64: the per-tile effective matrices, in place of G.
    """
    G = _check_g(G, 3)
    r = _check_r(r_wire_ohm)
    _check_mode(mode)
    _check_transpose(transpose)
    tr, tc = _check_tile(tile)
    if r == 0.0 or G.size == 0:
        return G.copy()
    P, rows, cols = G.shape
    out = np.empty_like(G)
    s = r * US
    for r0, r1, nr in _groups(rows, tr):
        for c0, c1, nc in _groups(cols, tc):
            # all tiles of one shape at once: (P, n_row_tiles, n_col_tiles, nr, nc)
            blk = G[:, r0:r1, c0:c1].reshape(P, (r1 - r0) // nr, nr, (c1 - c0) // nc, nc)
            blk = blk.transpose(0, 1, 3, 2, 4)
            if mode == "fast":
                eff = blk * _fast_factor(blk * s)
            else:
                eff = np.empty_like(blk)
                for idx in np.ndindex(blk.shape[:3]):
                    eff[idx] = _exact_block(blk[idx] * s) / s
            out[:, r0:r1, c0:c1] = eff.transpose(0, 1, 3, 2, 4).reshape(P, r1 - r0, c1 - c0)
    return out


def _groups(n: int, t: int):
    """(start, stop, size) of the full tiles along one axis, then of the partial one."""
    full = (n // t) * t
    if full:
        yield 0, full, t
    if n > full:
        yield full, n, n - full


# ---- fast: first-order correction in Padé form -----------------------------------------------
def _fast_factor(a: np.ndarray) -> np.ndarray:
    """A / G = 1 / (1 + T_row + T_col) for couplings a = r·G (..., R, C), dimensionless."""
    R, C = a.shape[-2:]
    j = np.arange(1, C + 1, dtype=np.float64)                   # min(j, j') + 1 for j' > j
    i = np.arange(R, 0, -1, dtype=np.float64)[:, None]          # R - i
    t_row = np.cumsum(a * j, axis=-1)                           # sum_{j' <= j} a (j' + 1)
    right = np.cumsum(a[..., ::-1], axis=-1)[..., ::-1]          # sum_{j' >= j} a
    t_row[..., :-1] += j[:-1] * right[..., 1:]
    t_col = np.cumsum(a, axis=-2) * i                           # (R - k) sum_{i <= k} a
    below = np.cumsum((a * i)[..., ::-1, :], axis=-2)[..., ::-1, :]  # sum_{i >= k} a (R - i)
    t_col[..., :-1, :] += below[..., 1:, :]
    return 1.0 / (1.0 + t_row + t_col)


# ---- exact ------------------------------------------------------------------------------------
def _flip(a: np.ndarray) -> np.ndarray:
    """The array seen from the transposed read's ports: forward read of _flip(a) = A_t of a."""
    return np.ascontiguousarray(a[::-1, ::-1].T)


def _exact_block(a: np.ndarray) -> np.ndarray:
    """Exact r·A (dimensionless) from couplings a = r·G (R, C), by a sweep over the rows.

    In units r = 1, row i's node voltages solve (L + D_i) x_i = v_i e_0 + D_i y_i (L: the row
    wire's Laplacian, driver end grounded; D_i = diag(a_i); y_i: column voltages at row i), so its
    cells inject c_i = v_i p_i - Q_i y_i into the columns, p_i = D_i M_i e_0, Q_i = D_i - D_i M_i D_i,
    M_i = (L + D_i)^-1. Everything above row i acts on the columns as a Norton source: the current
    coming down into row i is -Y_i y_i + h_i. Through row i and the segment below it this becomes
    Y_{i+1} = I - F_i^-1, h_{i+1} = F_i^-1 (h_i + v_i p_i), F_i = I + Y_i + Q_i; the virtual grounds
    set y_R = 0, so the sensed currents are h_R = sum_k v_k F_{R-1}^-1 ... F_k^-1 p_k. F is SPD with
    eigenvalues in [1, 2 + max a], so each step is well conditioned.
    """
    R, C = a.shape
    if C > R:   # cost ~ R C^2 (C + R): sweep along the longer side (reciprocity, module docstring)
        return _flip(_exact_block(_flip(a)))
    eye = np.eye(C)
    lap = np.full(C, 2.0)
    lap[-1] = 1.0                     # the open end has one segment; node 0 has the driver's
    ab = np.zeros((2, C))
    ab[0, 1:] = -1.0                  # upper band of L for solveh_banded
    Y = np.zeros((C, C))
    H = np.zeros((C, R), order="F")   # column k: h's part driven by row k
    for i in range(R):
        d = a[i]
        if C > 1:
            ab[1] = lap + d
            M = solveh_banded(ab, eye, check_finite=False)
        else:
            M = 1.0 / (lap + d)[:, None]
        F = eye + Y - d[:, None] * M * d[None, :]
        F[np.diag_indices(C)] += d
        H[:, i] = d * M[:, 0]
        chol, info = lapack.dpotrf(F, lower=0, clean=0)
        Finv, info2 = lapack.dpotri(chol, lower=0)
        if info or info2:             # cannot happen for a >= 0; fail loudly rather than return junk
            raise ArithmeticError(f"IR-drop solve: Cholesky failed at row {i} (info {info}, {info2})")
        Finv = np.triu(Finv) + np.triu(Finv, 1).T
        Y = eye - Finv
        H[:, :i + 1] = Finv @ H[:, :i + 1]
    return H.T.copy()


def _nodal_matrix(a: np.ndarray):
    """The nodal conductance matrix (r = 1) of the forward geometry: node 2(iC+j) is row node
    (i, j), node 2(iC+j)+1 column node (i, j)."""
    R, C = a.shape
    n = 2 * R * C
    idx = np.arange(R * C).reshape(R, C)
    rn, cn = 2 * idx, 2 * idx + 1
    p = np.concatenate([rn[:, :-1].ravel(), cn[:-1, :].ravel(), rn.ravel()])
    q = np.concatenate([rn[:, 1:].ravel(), cn[1:, :].ravel(), cn.ravel()])
    w = np.concatenate([np.ones(R * (C - 1)), np.ones((R - 1) * C), a.ravel()])
    diag = np.bincount(p, w, n) + np.bincount(q, w, n)
    diag[rn[:, 0]] += 1.0             # driver segments
    diag[cn[-1, :]] += 1.0            # sensor segments
    ii = np.concatenate([p, q, np.arange(n)])
    jj = np.concatenate([q, p, np.arange(n)])
    return coo_matrix((np.concatenate([-w, -w, diag]), (ii, jj)), shape=(n, n)).tocsc(), rn, cn


def _exact_sparse(a: np.ndarray, chunk: int = 64) -> np.ndarray:
    """Exact r·A from a = r·G by one sparse LU of the 2RC-node system and R right-hand sides.

    Solved for the deviations from the ideal state (rows at v, columns at 0), u = (x - v, y),
    whose right-hand side is O(a): then A = a - sum_i a_ij (y - x + v)_ij keeps full relative
    precision however small a is.
    """
    R, C = a.shape
    if R > C:   # one right-hand side per row: use the shorter side
        return _flip(_exact_sparse(_flip(a), chunk))
    K, rn, cn = _nodal_matrix(a)
    lu = splu(K, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0,
              options={"SymmetricMode": True})   # K is SPD: no pivoting, symmetric ordering
    dA = np.empty((R, C))
    for k0 in range(0, R, chunk):
        ks = np.arange(k0, min(R, k0 + chunk))
        B = np.zeros((K.shape[0], len(ks)))
        B[rn[ks].T, np.arange(len(ks))] = -a[ks].T   # K (x - v, y) = (-D v, D v)
        B[cn[ks].T, np.arange(len(ks))] = a[ks].T
        U = lu.solve(B)
        # current lost from column j: sum_i a_ij ((v_i - x_ij) + y_ij)
        dA[ks] = np.einsum("ij,ijk->kj", a, U[cn] - U[rn])
    return a - dA
