"""IR drop of one array: output error vs tile size, wire resistance and conductance range (issue 12).

For each tile size n (n x n), r_wire (Ω) and g_max (µS), G ~ U[0, g_max] and 256 inputs
v ~ U[0, 1]^n:
  ir_err      ‖v@A - v@G‖ / ‖v@G‖, A exact: the relative output error IR drop causes;
  fast/corr   ‖v@A_fast - v@A‖ / ‖v@A - v@G‖: error of the fast correction, relative to the correction;
  fast/ideal  ‖v@A_fast - v@A‖ / ‖v@G‖: what is left after the fast correction;
  kappa       r·1e-6·mean(G)·n², the coupling the fast method's error scales with;
and the time to compute A per tile: exact (row sweep), exact by sparse LU, fast. A read with IR drop
is then the same matmul as without it (v @ A instead of v @ G), so its cost does not change.

    python bench/irdrop_table.py [--sizes 64 128 256] [--no-sparse] [--threads 1]

BLAS runs on --threads threads (default 1: the exact sweep is a series of n x n LAPACK calls, for
which extra threads on a small shared machine cost more than they give).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from xbar.tile import irdrop


def timed(fn, *args, repeat=1):
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn(*args)
        best = min(best, time.perf_counter() - t)
    return out, best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--r", type=float, nargs="+", default=[1.0, 5.0])
    ap.add_argument("--g-max", type=float, nargs="+", default=[1.0, 25.0, 100.0])
    ap.add_argument("--no-sparse", action="store_true", help="skip the sparse-LU timing")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    from threadpoolctl import threadpool_limits
    with threadpool_limits(args.threads, user_api="blas"):
        return run(args)


def run(args) -> int:
    rng = np.random.default_rng(0)
    print(f"{'tile':>7} {'r_ohm':>5} {'g_max':>5} {'ir_err':>9} {'fast/corr':>9} {'fast/ideal':>10} "
          f"{'kappa':>8}")
    for n in args.sizes:
        V = rng.uniform(0, 1, (256, n))
        for r in args.r:
            for g in args.g_max:
                G = rng.uniform(0, g, (n, n))
                A = irdrop.effective_matrix(G, r, "exact")
                Af = irdrop.effective_matrix(G, r, "fast")
                y, ye, yf = V @ G, V @ A, V @ Af
                corr = np.linalg.norm(ye - y)
                print(f"{n:>3}x{n:<3} {r:>5g} {g:>5g} {corr / np.linalg.norm(y):>9.2e} "
                      f"{np.linalg.norm(yf - ye) / corr:>9.2e} "
                      f"{np.linalg.norm(yf - ye) / np.linalg.norm(y):>10.2e} "
                      f"{r * 1e-6 * G.mean() * n * n:>8.3g}")
    print()
    print(f"time to compute A for one tile (r = 5 Ω, g_max = 100 µS, best of runs, "
          f"{args.threads} BLAS thread(s)); read = one matmul either way")
    print(f"{'tile':>7} {'exact':>10} {'exact(splu)':>12} {'fast':>10} {'read 256x':>10} {'max|dA|/G.max':>14}")
    for n in args.sizes:
        G = rng.uniform(0, 100, (n, n))
        s = 5.0 * 1e-6
        a = G * s
        rep = 3 if n <= 128 else 1
        A, t_exact = timed(irdrop._exact_block, a, repeat=rep)
        t_sparse = float("nan")
        diff = float("nan")
        if not args.no_sparse:
            A2, t_sparse = timed(irdrop._exact_sparse, a)
            diff = np.abs(A2 - A).max() / s / G.max()
        _, t_fast = timed(irdrop.effective_matrix, G, 5.0, "fast", repeat=5)
        V = rng.uniform(0, 1, (256, n))
        _, t_read = timed(np.matmul, V, A / s, repeat=5)
        print(f"{n:>3}x{n:<3} {t_exact * 1e3:>8.1f}ms {t_sparse * 1e3:>10.1f}ms {t_fast * 1e3:>8.2f}ms "
              f"{t_read * 1e3:>8.2f}ms {diff:>14.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
