"""Where the time of one `Crossbar.mvm` goes: each piece of `_read` timed on its own.

Usage::

    python bench/profile_read.py [--shape 256x1024x1024] [--config xbar-3bit-adc8-t64] [--repeat 30]

The pieces are called directly, in the order `mvm` calls them, on the same arrays:
validation (`as_matrix`), `_dac`, inside `_tile_currents` the input padding/transposition, the
per-tile `np.matmul` for the mean currents M and the one for the variances V, `_adc_params`,
the fused `tile_periphery` kernel, and the scale undo. Every piece is timed `--repeat` times
and the median is reported; the whole `mvm` is timed the same way for comparison (the sum of
the pieces should come close to it). Set the thread environment variables (NUMBA_NUM_THREADS,
OPENBLAS_NUM_THREADS, NUMBA_THREADING_LAYER, OMP_WAIT_POLICY) before running to compare.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _benchlib import crossbar_configs, thread_info


def kernel_call(xb, M, V, inv_step, step_post, qlo, qhi, post, counter, out, clipped):
    """A zero-argument call of the periphery kernel exactly as `Crossbar._read` picks and feeds it.

    Arguments are passed by the kernel's own parameter names, so the profile keeps working when
    the kernel gains a table (e.g. wn32) or the parallel/serial split moves.
    """
    import inspect

    import xbar.crossbar as xc
    from xbar.kernels import mvm as kmvm
    from xbar.kernels import rng as krng

    parallel_min = getattr(xc, "_PARALLEL_MIN", 0)
    serial = getattr(kmvm, "tile_periphery_serial", None)
    kernel = kmvm.tile_periphery if (serial is None or M.size >= parallel_min) else serial
    values = {"M": M, "V": V if V is not None else xc._NO_VAR, "inv_step": inv_step, "step_post": step_post,
              "qlo": qlo, "qhi": qhi, "post": post, "seed": np.uint64(getattr(xb, "_stream", xb.seed)),
              "counter": np.uint64(counter), "kn": krng.KN, "wn": krng.WN, "fn": krng.FN,
              "wn32": getattr(krng, "WN32", None), "out": out, "clipped": clipped}
    names = list(inspect.signature(kernel.py_func).parameters)
    args = [values[n] for n in names]
    name = "tile_periphery" if kernel is kmvm.tile_periphery else "tile_periphery_serial"
    return name, (lambda: kernel(*args))


def median_ms(fn, repeat: int) -> float:
    fn()   # warm-up
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)) * 1e3


def profile(shape, config: str, repeat: int) -> list[tuple[str, float]]:
    from xbar import Crossbar
    from xbar.crossbar import as_matrix

    B, n_in, n_out = shape
    rng = np.random.default_rng(1234)
    X = rng.standard_normal((B, n_in), dtype=np.float32)
    W = rng.uniform(-1.0, 1.0, (n_in, n_out)).astype(np.float32)
    device, kw = crossbar_configs()[config]
    xb = Crossbar(device, seed=0, **kw).program(W).calibrate(X)
    xb.mvm(X)

    rows = [("mvm (whole call)", median_ms(lambda: xb.mvm(X), repeat))]
    rows.append(("as_matrix(X) validation", median_ms(lambda: as_matrix("X", X, cols=n_in), repeat)))
    rows.append(("read.dac", median_ms(lambda: xb.read.dac(X), repeat)))
    xs, scale = xb.read.dac(X)
    if xb.adc_bits is None:
        rows.append(("xs @ W_fwd (BLAS)", median_ms(lambda: xs @ xb.read.w_fwd32, repeat)))
        y = xs @ xb.read.w_fwd32
        rows.append(("isfinite(y).all() (output check)", median_ms(lambda: np.isfinite(y).all(), repeat)))
        rows.append(("reference: numpy X @ W", median_ms(lambda: X @ W, repeat)))
        return rows

    # _tile_currents, piece by piece (same code as crossbar.py, forward direction).
    R = xb.tile[0]
    P = xb.read.gd.shape[0]
    n_t, size, g, v = xb.read.nrt, R, *xb.read.fwd_stacks()
    pad = n_t * size - xs.shape[1]

    def prep():
        return np.ascontiguousarray(np.pad(xs, ((0, 0), (0, pad))).reshape(B, n_t, size).transpose(1, 0, 2))

    xt = prep()
    rows.append(("_tile_currents: pad + transpose x", median_ms(prep, repeat)))
    rows.append(("_tile_currents: post (gains)", median_ms(
        lambda: np.ascontiguousarray((xb.read.sig[:, None, None] * xb.read.alpha_eff[None, None, :]).repeat(
            n_t, axis=1).reshape(P * n_t, -1), dtype=np.float32), repeat)))
    rows.append((f"_tile_currents: matmul M ({P}x{n_t} tiles of {B}x{size} @ {size}x{n_out})",
                 median_ms(lambda: np.matmul(xt[None], g), repeat)))
    if v is not None:
        rows.append(("_tile_currents: x*x", median_ms(lambda: xt * xt, repeat)))
        xt2 = (xt * xt)[None]
        rows.append(("_tile_currents: matmul V", median_ms(lambda: np.matmul(xt2, v), repeat)))
    rows.append(("read.tile_currents (whole)", median_ms(lambda: xb.read.tile_currents(xs, "fwd"), repeat)))
    M, V, post = xb.read.tile_currents(xs, "fwd")
    rows.append(("read.adc_params", median_ms(lambda: xb.read.adc_params(M, post, "fwd"), repeat)))
    inv_step, step_post, qlo, qhi = xb.read.adc_params(M, post, "fwd")
    T = M.shape[0]
    out = np.empty((B, n_out), dtype=np.float32)
    clipped = np.empty(B, dtype=np.int64)
    kname, kernel = kernel_call(xb, M, V, inv_step, step_post, qlo, qhi, post, 7, out, clipped)
    rows.append((f"{kname} (T={T}, B={B}, N={n_out})", median_ms(kernel, repeat)))
    rows.append(("y *= scale", median_ms(lambda: out * scale, repeat)))
    rows.append(("reference: numpy X @ W", median_ms(lambda: X @ W, repeat)))
    return rows


def profile_in_sequence(shape, config: str, repeat: int) -> list[tuple[str, float]]:
    """The same pieces, but timed inside the real call sequence of `mvm` (BLAS, then numba, ...).

    Timed alone, a piece runs with warm, spinning threads of its own library; in sequence, the
    BLAS products follow the numba kernel and vice versa, so the hand-over between thread pools
    (spin-waiting threads of one library holding the cores the other needs) shows up here.
    """
    from xbar import Crossbar
    from xbar.crossbar import as_matrix

    B, n_in, n_out = shape
    rng = np.random.default_rng(1234)
    X = rng.standard_normal((B, n_in), dtype=np.float32)
    W = rng.uniform(-1.0, 1.0, (n_in, n_out)).astype(np.float32)
    device, kw = crossbar_configs()[config]
    xb = Crossbar(device, seed=0, **kw).program(W).calibrate(X)
    xb.mvm(X)
    if xb.adc_bits is None:
        return []
    R, _ = xb.tile
    n_t, g, v = xb.read.nrt, *xb.read.fwd_stacks()
    pad = n_t * R - n_in
    names = ["as_matrix + _dac", "pad + transpose x", "matmul M", "x*x + matmul V", "post",
             "read.adc_params", "tile_periphery", "y *= scale"]
    times = {k: [] for k in names}
    out = np.empty((B, n_out), dtype=np.float32)
    clipped = np.empty(B, dtype=np.int64)
    for i in range(repeat + 1):
        t = [time.perf_counter()]
        xs, scale = xb.read.dac(as_matrix("X", X, cols=n_in)); t.append(time.perf_counter())
        xt = np.ascontiguousarray(np.pad(xs, ((0, 0), (0, pad))).reshape(B, n_t, R).transpose(1, 0, 2))
        t.append(time.perf_counter())
        M = np.matmul(xt[None], g).reshape(-1, B, n_out); t.append(time.perf_counter())
        V = np.matmul((xt * xt)[None], v).reshape(-1, B, n_out) if v is not None else None
        t.append(time.perf_counter())
        post = np.ascontiguousarray((xb.read.sig[:, None, None] * xb.read.alpha_eff[None, None, :]).repeat(
            n_t, axis=1).reshape(M.shape[0], -1), dtype=np.float32); t.append(time.perf_counter())
        inv_step, step_post, qlo, qhi = xb.read.adc_params(M, post, "fwd"); t.append(time.perf_counter())
        s0 = time.perf_counter()
        call = kernel_call(xb, M, V, inv_step, step_post, qlo, qhi, post, i + 99, out, clipped)[1]
        setup = time.perf_counter() - s0      # building `call` is the profiler's, not mvm's, time
        call(); t.append(time.perf_counter() - setup)
        out *= scale; t.append(time.perf_counter() - setup)
        if i:   # first pass is a warm-up
            for k, a, b in zip(names, t[:-1], t[1:]):
                times[k].append(b - a)
    rows = [(f"{k} (in sequence)", float(np.median(v_)) * 1e3) for k, v_ in times.items()]
    total = [sum(times[k][i] for k in names) for i in range(repeat)]
    rows.append(("sum (in sequence)", float(np.median(total)) * 1e3))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="256x1024x1024", help="BxINxOUT")
    ap.add_argument("--config", default="xbar-3bit-adc8-t64", choices=list(crossbar_configs()))
    ap.add_argument("--repeat", type=int, default=30)
    args = ap.parse_args(argv)
    shape = tuple(int(s) for s in args.shape.split("x"))
    rows = profile(shape, args.config, args.repeat) + profile_in_sequence(shape, args.config, args.repeat)
    th = thread_info()
    print(f"{args.config} at {args.shape}; numba {th['numba_threading_layer']} x{th['numba_num_threads']}, "
          f"env {{{', '.join(f'{k}={v}' for k, v in th['env'].items() if v is not None)}}}\n")
    print("| piece | median ms |\n|---|---:|")
    for name, ms in rows:
        print(f"| {name} | {ms:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
