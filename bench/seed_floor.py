"""The arithmetic floor of the seed study's grid on this machine: how long its 672 Fashion-MNIST
runs would take if a training step did nothing but the matrix products it cannot avoid.

Usage (one core per worker, as the sweep runs)::

    OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python bench/seed_floor.py [--workers 2] [--K 28]

For every rule x network group of ``experiments/seed-study.toml`` (28 variants, 30 epochs, batch
64, 60,000 images) this times, on arrays of the group's shapes stacked K deep, only the products
a step of that rule must compute, with the calls the stack makes (``xbar.train.stack``):

- every rule: each layer's forward product, each trained layer's weight gradient xᵀδ;
- bp, sg: the transposed products δWᵀ of layers 1.. (fa: δBᵀ, the same shapes);
- sg: each hidden layer's module prediction h A (+ y C) and its gradient hᵀd;
- hsic, in the epochs where hidden layers learn (the first half): per hidden layer the float64
  kernel Z Zᵀ, one m x m inverse, K̄A⁻¹, A⁻¹GA⁻¹ and M Z (the rule's own routines would add the
  element-wise passes, left out here); afterwards the forward products and the output layer's
  gradient only.

It then adds the update every step must make (Adadelta, the seed quantizer's rounding and the
programming of every weight: the stack's fused kernel, timed on its own on the group's arrays).
Nothing else of a step is counted (activations, loss, checks, data, Python), so the sum is a
floor: a run cannot be faster than its products and its update. The total is divided by the
number of workers, each on one core.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

NETS = {"mlp-4": [4], "mlp-20x6": [20] * 6, "mlp-50x2": [50, 50], "mlp-50x3": [50] * 3,
        "mlp-100x2": [100, 100], "mlp-100x3": [100] * 3}
RULES = ("bp", "fa", "hsic", "sg")
M, N_TRAIN, EPOCHS, N_CLASSES = 64, 60000, 30, 10


def best_ms(fn, reps: int = 5, inner: int = 10) -> float:
    fn()
    best = 1e9
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        best = min(best, (time.perf_counter() - t0) / inner)
    return best * 1e3


def products(rule: str, dims: list[int], K: int, hidden_phase: bool, rng) -> callable:
    """A function doing one stacked step's unavoidable products for `rule` on layer sizes `dims`."""
    L = len(dims) - 1
    x = rng.random((M, dims[0]), dtype=np.float32)
    W = [rng.standard_normal((K, a, b), dtype=np.float32) for a, b in itertools.pairwise(dims)]
    Z = [rng.random((K, M, b), dtype=np.float32) for b in dims[1:]]
    D = [rng.standard_normal((K, M, b), dtype=np.float32) for b in dims[1:]]
    out0 = np.empty((K, M, dims[1]), np.float32)
    A = [rng.standard_normal((K, b, b), dtype=np.float32) for b in dims[1:-1]]
    C = [rng.standard_normal((K, N_CLASSES, b), dtype=np.float32) for b in dims[1:-1]]
    Y = np.eye(N_CLASSES, dtype=np.float32)[rng.integers(0, N_CLASSES, M)]
    Z64 = [z.astype(np.float64) for z in Z[:-1]]
    G = rng.standard_normal((M, M))
    G = G + G.T
    eye = np.eye(M)
    trained = range(L) if (rule != "hsic" or hidden_phase) else [L - 1]

    def step():
        for k in range(K):   # layer 0: the shared batch against each variant (the stack's calls)
            np.matmul(x, W[0][k], out=out0[k])
        for i in range(1, L):
            np.matmul(Z[i - 1], W[i])
        for i in trained:
            np.matmul(x.T if i == 0 else Z[i - 1].swapaxes(1, 2), D[i])
        if rule in ("bp", "fa", "sg"):
            for i in range(1, L):
                np.matmul(D[i], W[i].swapaxes(1, 2))
        if rule == "sg":
            for i in range(L - 1):
                np.matmul(Z[i], A[i])
                np.matmul(Y, C[i])
                np.matmul(Z[i].swapaxes(1, 2), D[i])
        if rule == "hsic" and hidden_phase:
            for i in range(L - 1):
                Kz = Z64[i] @ Z64[i].swapaxes(1, 2)
                Ainv = np.linalg.inv(Kz + eye)
                Ainv @ Kz
                (Ainv @ G) @ Ainv
                Kz @ Z64[i]
    return step


def update(dims: list[int], K: int, rng) -> callable:
    """The stack's fused Adadelta + rounding + programming kernel on every layer, the K variants
    taking the seed study's quantizers in grid order (bits 2-8 x range global/local x asymm/symm)."""
    from xbar.kernels.stack import adadelta_round_program_stack
    layers = []
    grid = [(b, r, q) for b in range(2, 9) for r in (False, True) for q in (False, True)]   # bits, local, symm
    grid = (grid * (-(-K // len(grid))))[:K]
    for a, b in itertools.pairwise(dims):
        W = rng.uniform(-1, 1, (K, a, b)).astype(np.float32)
        bb = rng.uniform(-1, 1, (K, b)).astype(np.float32)
        gW, gb = (rng.standard_normal(W.shape, dtype=np.float32) * 1e-3,
                  rng.standard_normal(bb.shape, dtype=np.float32) * 1e-3)
        st = [np.zeros_like(W), np.zeros_like(W), np.zeros_like(bb), np.zeros_like(bb)]
        q = {"lo": np.full(K, -1.0), "hi": np.full(K, 1.0), "bits": np.array([g[0] for g in grid], np.int64),
             "symm": np.array([g[2] for g in grid]), "local": np.array([g[1] for g in grid]),
             "n_levels": np.zeros(K, np.int64), "window": np.full(K, 99.0), "g_min": np.full(K, 1.0)}
        outs = (np.empty_like(W), np.empty_like(W), np.empty((K, b), np.float32), np.empty((K, b), np.float32),
                np.empty(K, np.bool_), np.empty(K, np.int64), np.empty(K, np.int64), np.empty(K, np.int64))
        layers.append((W, bb, gW, gb, st, q, outs))

    def step():
        for W, bb, gW, gb, st, q, outs in layers:
            adadelta_round_program_stack(W, bb, gW, gb, *st, np.float32(0.9), np.float32(0.1), np.float32(1e-6),
                                         np.float32(1.0), q["lo"], q["hi"], q["bits"], q["symm"], q["local"],
                                         q["n_levels"], q["window"], q["g_min"], *outs)
    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--K", type=int, default=28, help="variants per stack (the seed study's groups: 28)")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    steps = -(-N_TRAIN // M) * EPOCHS      # per run (the last batch of an epoch counted whole)
    half = (EPOCHS + 1) // 2               # hsic_epochs: hidden layers learn in the first half
    print(f"per variant-step, ms (stack of K={args.K}); minutes for the group's 28 runs x {EPOCHS} epochs")
    print("| rule | network | products | update | group floor (min) |")
    print("|---|---|---:|---:|---:|")
    total_p = total_u = 0.0
    for rule in RULES:
        for net, hidden in NETS.items():
            dims = [784] + hidden + [N_CLASSES]
            u = best_ms(update(dims, args.K, rng)) / args.K
            if rule == "hsic":
                p1 = best_ms(products(rule, dims, args.K, True, rng)) / args.K
                p2 = best_ms(products(rule, dims, args.K, False, rng)) / args.K
                p = (p1 * half + p2 * (EPOCHS - half)) / EPOCHS
            else:
                p = best_ms(products(rule, dims, args.K, True, rng)) / args.K
            minutes_p = p * steps * 28 / 6e4
            minutes_u = u * steps * 28 / 6e4
            total_p += minutes_p
            total_u += minutes_u
            print(f"| {rule} | {net} | {p:.3f} | {u:.3f} | {minutes_p + minutes_u:.1f} |")
    w = args.workers
    print(f"\nproducts alone: {total_p:.0f} min of one core, {total_p / w:.1f} min on {w} workers")
    print(f"products + update: {total_p + total_u:.0f} min of one core, {(total_p + total_u) / w:.1f} min on {w} workers")


if __name__ == "__main__":
    main()
