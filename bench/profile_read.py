"""Where the time of one `Crossbar.mvm` goes: each public stage of the read path timed on its own.

Usage::

    python bench/profile_read.py [--shape 256x1024x1024] [--config xbar-3bit-adc8-t64] [--repeat 30]

The stages are the read path's own (``xbar.tile.read.ReadPath``), called in the order of its
materialising path (the first read of a self-calibrating ADC, `calibrate`, ADC error models and
I–V curves; other reads run the same stages tile by tile, `ReadPath._read_by_tile`, which the
`mvm (whole)` row times), on the same arrays: validation (`as_matrix`), `read.dac`, `read.tile_currents`
(per-tile products for the mean currents and the variances), `read.adc_params`,
`read.periphery` (the fused noise + ADC + accumulation kernel) and the scale undo. Nothing is
re-implemented here, so the profile follows the code. Every stage is timed `--repeat` times (median);
the whole `mvm` and numpy's `X @ W` are timed the same way. The second table times the same stages
inside one sequence, where the hand-over between BLAS and numba thread pools shows up; the third
re-runs the loop reads actually take (`ReadPath._read_by_tile`, row block by row block) with a
timer around each of its calls. Set the
thread environment variables (NUMBA_NUM_THREADS, OPENBLAS_NUM_THREADS, ...) before running to compare.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _benchlib import crossbar_configs, thread_info


def median_ms(fn, repeat: int) -> float:
    fn()   # warm-up
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)) * 1e3


def setup(shape, config: str):
    from xbar import Crossbar
    B, n_in, n_out = shape
    rng = np.random.default_rng(1234)
    X = rng.standard_normal((B, n_in), dtype=np.float32)
    W = rng.uniform(-1.0, 1.0, (n_in, n_out)).astype(np.float32)
    device, kw = crossbar_configs()[config]
    xb = Crossbar(device, seed=0, **kw).program(W).calibrate(X)
    xb.mvm(X)
    return xb, X, W


def profile(shape, config: str, repeat: int) -> list[tuple[str, float]]:
    from xbar.tile.arrays import as_matrix
    xb, X, W = setup(shape, config)
    rd, n_in = xb.read, shape[1]
    rows = [("mvm (whole)", median_ms(lambda: xb.mvm(X), repeat)),
            ("as_matrix", median_ms(lambda: as_matrix("X", X, cols=n_in), repeat)),
            ("read.dac", median_ms(lambda: rd.dac(X), repeat))]
    xs, scale = rd.dac(X)
    if xb.adc_bits is None:
        rows.append(("read.read (no ADC: one product + noise)", median_ms(lambda: rd.read(xs, "fwd"), repeat)))
    else:
        rows.append(("read.tile_currents", median_ms(lambda: rd.tile_currents(xs, "fwd"), repeat)))
        M, V, post = rd.tile_currents(xs, "fwd")
        rows.append(("read.adc_params", median_ms(lambda: rd.adc_params(M, post, "fwd"), repeat)))
        p = rd.adc_params(M, post, "fwd")
        rows.append((f"read.periphery (T={M.shape[0]}, B={M.shape[1]}, N={M.shape[2]})",
                     median_ms(lambda: rd.periphery(M, V, *p, post), repeat)))
        y = rd.periphery(M, V, *p, post)
        rows.append(("y *= scale", median_ms(lambda: y * scale, repeat)))
    rows.append(("reference: numpy X @ W", median_ms(lambda: X @ W, repeat)))
    return rows


def profile_in_sequence(shape, config: str, repeat: int) -> list[tuple[str, float]]:
    """The same stages timed inside one real call sequence (BLAS, then numba, ...)."""
    from xbar.tile.arrays import as_matrix
    xb, X, _ = setup(shape, config)
    if xb.adc_bits is None:
        return []
    rd, n_in = xb.read, shape[1]
    names = ["as_matrix + dac", "tile_currents", "adc_params", "periphery", "y *= scale"]
    times = {k: [] for k in names}
    for i in range(repeat + 1):
        t = [time.perf_counter()]
        xs, scale = rd.dac(as_matrix("X", X, cols=n_in)); t.append(time.perf_counter())
        M, V, post = rd.tile_currents(xs, "fwd"); t.append(time.perf_counter())
        p = rd.adc_params(M, post, "fwd"); t.append(time.perf_counter())
        y = rd.periphery(M, V, *p, post); t.append(time.perf_counter())
        y *= scale; t.append(time.perf_counter())
        if i:   # first pass is a warm-up
            for k, a, b in zip(names, t[:-1], t[1:]):
                times[k].append(b - a)
    rows = [(f"{k} (in sequence)", float(np.median(v)) * 1e3) for k, v in times.items()]
    total = [sum(times[k][i] for k in names) for i in range(repeat)]
    rows.append(("sum (in sequence)", float(np.median(total)) * 1e3))
    return rows


def profile_by_tile(shape, config: str, repeat: int) -> list[tuple[str, float]]:
    """The read as reads run it (``ReadPath._read_by_tile``: the fixed row blocks, each tile's
    products consumed at once), its loop re-run here on one thread with a timer around each call:
    x² (and its per-tile sums for additive noise), the mean and variance products, the noise + ADC
    kernel. Milliseconds per read (medians over `repeat` reads of each part's total)."""
    from xbar.kernels import rng as krng
    from xbar.kernels.mvm import tile_accumulate_serial as kernel
    from xbar.tile.rows import row_blocks
    xb, X, _ = setup(shape, config)
    rd = xb.read
    if xb.adc_bits is None:
        return []
    xs, _ = rd.dac(X)
    B, n_in = xs.shape
    g, v, post, size, n_t = rd._tile_layout("fwd")
    n_out, P, uniform = g.shape[-1], rd.shape[0], rd.var_uniform()
    inv_step, step_post, qlo, qhi = rd.adc_params_for(P * n_t, n_out, post, "fwd")
    Mb, Vb = np.empty((B, n_out), np.float32), np.empty((B, n_out), np.float32)
    out, clipped = np.empty((B, n_out), np.float32), np.empty(B, np.int64)
    key, no_var = np.uint64(krng.stream_key(np.uint64(1), np.uint64(1))), np.zeros((0, 0), np.float32)
    parts: dict[str, list[float]] = {}

    def done(name: str, t0: float) -> float:   # adds the time since t0 to part `name`; returns now
        now = time.perf_counter()
        parts.setdefault(name, [0.0])[-1] += now - t0
        return now

    for i in range(repeat + 1):
        for r0, r1 in row_blocks(B):
            x, Mr, Vr = xs[r0:r1], Mb[r0:r1], Vb[r0:r1]
            t0 = time.perf_counter()
            if v is not None or uniform is not None:
                x2 = x * x
                t0 = done("x²", t0)
                if uniform is not None:
                    x2sum = np.add.reduceat(x2, np.arange(0, n_in, size), axis=1)
                    t0 = done("per-tile Σx² (additive)", t0)
            for p in range(P):
                for t in range(n_t):
                    lo, hi = t * size, min((t + 1) * size, n_in)
                    M = np.matmul(x[:, lo:hi], g[p, t, :hi - lo], out=Mr)
                    t0 = done("mean products", t0)
                    if v is not None:
                        V = np.matmul(x2[:, lo:hi], v[p, t, :hi - lo], out=Vr)
                        t0 = done("variance products", t0)
                    elif uniform is not None:
                        V = np.multiply(x2sum[:, t:t + 1], uniform[p])
                        t0 = done("per-tile Σx² (additive)", t0)
                    else:
                        V = no_var
                    k = p * n_t + t
                    kernel(M, V, inv_step[k], step_post[k], qlo[k], qhi[k], post[k], key, (k * B + r0) * n_out,
                           k == 0, out[r0:r1], clipped[r0:r1])
                    t0 = done("noise + ADC kernel", t0)
        if i == 0:   # warm-up read
            parts = {k: [0.0] for k in parts}
        elif i < repeat:
            for lst in parts.values():
                lst.append(0.0)
    return [(f"by tile: {k} ({len(row_blocks(B))} row blocks)", float(np.median(lst)) * 1e3)
            for k, lst in parts.items()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="256x1024x1024", help="BxINxOUT")
    ap.add_argument("--config", default="xbar-3bit-adc8-t64", choices=list(crossbar_configs()))
    ap.add_argument("--repeat", type=int, default=30)
    args = ap.parse_args(argv)
    shape = tuple(int(s) for s in args.shape.split("x"))
    rows = (profile(shape, args.config, args.repeat) + profile_in_sequence(shape, args.config, args.repeat)
            + profile_by_tile(shape, args.config, args.repeat))
    th = thread_info()
    print(f"{args.config} at {args.shape}; numba {th['numba_threading_layer']} x{th['numba_num_threads']}, "
          f"env {{{', '.join(f'{k}={v}' for k, v in th['env'].items() if v is not None)}}}\n")
    print("| stage | median ms |\n|---|---:|")
    for name, ms in rows:
        print(f"| {name} | {ms:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
