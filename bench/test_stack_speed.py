"""Stacked training speed: K device-side variants of a seed-study run trained as one stack
(``xbar.train.stack``) against the same K runs trained one after the other.

Run (one core, as sweep workers do)::

    OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python -m pytest bench/test_stack_speed.py --benchmark-only -q
    python bench/test_stack_speed.py bp mlp-100x2 1 7,14,28     # whole runs: train_many vs train, per K
    python bench/test_stack_speed.py bp mlp-100x2 1 20 qat-noise   # read noise x bits, qat on rram-4bit
    python bench/test_stack_speed.py shares bp mlp-100x2 qat-noise   # a stack's bound: per-variant work

The workload: Fashion-MNIST (skipped when its files are missing), the seed recipe (nearest
rounding, Adadelta, batch 64) on the ideal device, the seed study's variants of one rule and
network in grid order (bits 2-8 x range global/local x quant asymm/symm). What is timed, per
round: STEPS optimizer steps on the same batches, for the stack (one ``StackTrainer.step`` per
batch) and for K Trainers (K ``Trainer.step`` per batch); building the networks and a few warm-up
steps run in the round's setup. The speedup (K alone / stack) is printed at the end and stored in
the stack benchmark's ``extra_info``. No evaluation is timed (sweeps evaluate each variant after
every epoch, alone or stacked; the script mode times whole runs, evaluation included).
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import pytest
from _benchlib import time_calls, tune_allocator

STEPS = int(os.environ.get("XBAR_BENCH_STEPS", "100"))
WARMUP = 5
CASES = [("bp", "mlp-4", 28, "seed"), ("bp", "mlp-100x2", 7, "seed"), ("bp", "mlp-100x2", 28, "seed"),
         ("sg", "mlp-20x6", 28, "seed"), ("bp", "mlp-100x2", 20, "qat-noise"), ("bp", "mlp-4", 20, "qat-noise")]

TUNED = tune_allocator()


def configs(rule: str, network: str, K: int, epochs: int = 1, workload: str = "seed"):
    """The first K variants of a workload: "seed" (above) or "qat-noise", qat on rram-4bit with
    read_noise_rel 0, 1, 2, 5, 10 % x bits 1-4 (each variant on its own crossbars in the stack)."""
    from xbar.train import TrainConfig
    if workload == "qat-noise":
        return [TrainConfig(network=network, dataset="fmnist", rule=rule, update="qat", device="rram-4bit",
                            device_set=f"read_noise_rel={r}", bits=b, epochs=epochs, eval_train=False).resolve()
                for r in (0.0, 0.01, 0.02, 0.05, 0.1) for b in (1, 2, 3, 4)][:K]
    grid = [(b, r, q) for b in range(2, 9) for r in ("global", "local") for q in ("asymm", "symm")]
    return [TrainConfig(network=network, dataset="fmnist", rule=rule, update="nearest", recipe="seed",
                        device="ideal", bits=b, range=r, quant=q, epochs=epochs, eval_train=False).resolve()
            for b, r, q in grid[:K]]


@pytest.fixture(scope="session")
def fmnist():
    from xbar import data as xd
    try:
        X, y = xd.load("fmnist", "train")
    except Exception as exc:   # noqa: BLE001 - no dataset files: nothing to measure
        pytest.skip(f"Fashion-MNIST not available: {exc}")
    n = (STEPS + WARMUP) * 64
    return np.ascontiguousarray(X[:n], dtype=np.float32), np.asarray(y[:n], dtype=np.int64)


_TIMES: dict = {}


def _steps(step, X, y, start, stop):
    for s in range(start * 64, stop * 64, 64):
        step(X[s:s + 64], y[s:s + 64])


@pytest.mark.parametrize("rule,network,K,workload", CASES, ids=[f"{r}-{n}-K{k}-{w}" for r, n, k, w in CASES])
@pytest.mark.parametrize("impl", ["alone", "stack"])
def test_stack_steps(benchmark, fmnist, rule, network, K, workload, impl):
    from xbar.train import Trainer
    from xbar.train.stack import Diverging, StackTrainer
    X, y = fmnist
    cfgs = configs(rule, network, K, workload=workload)

    def setup():
        with np.errstate(all="ignore"):
            if impl == "stack":
                st = StackTrainer(cfgs, 784, 10)
                st.rule0.start_epoch(1)
                step = lambda xb, yb: st.step(xb, yb, Diverging(len(st.alive)))
            else:
                trs = [Trainer(c, 784, 10) for c in cfgs]
                for t in trs:
                    t.start_epoch(1)

                def step(xb, yb):
                    for t in trs:
                        try:
                            t.step(xb, yb)
                        except Exception:   # noqa: BLE001, S110 - a diverged variant stops, as in a run
                            pass
            _steps(step, X, y, 0, WARMUP)
        return (step,), {}

    def run(step):
        with np.errstate(all="ignore"):
            _steps(step, X, y, WARMUP, WARMUP + STEPS)

    benchmark.pedantic(run, setup=setup, rounds=3, iterations=1)
    if benchmark.stats is None:
        return
    _TIMES[rule, network, K, workload, impl] = benchmark.stats.stats.min
    alone = _TIMES.get((rule, network, K, workload, "alone"))
    if impl == "stack" and alone:
        benchmark.extra_info.update(speedup=alone / benchmark.stats.stats.min, K=K, steps=STEPS)


def pytest_terminal_summary_lines() -> list[str]:
    lines = [f"stacked speedup (K runs alone / one stack), {STEPS} steps, best of 3:"]
    for (rule, network, K, workload, impl), t in sorted(_TIMES.items()):
        if impl == "stack" and (rule, network, K, workload, "alone") in _TIMES:
            a = _TIMES[rule, network, K, workload, "alone"]
            lines.append(f"  {rule:5s} {network:10s} {workload:9s} K={K:<3d} alone {a:7.3f} s  stack {t:7.3f} s  "
                         f"speedup {a / t:5.2f}x  ({1e3 * t / STEPS / K:.3f} ms per variant-step)")
    return lines if len(lines) > 1 else []


def teardown_module(module):
    for line in pytest_terminal_summary_lines():
        print(line)


def whole_runs(rule: str, network: str, epochs: int, Ks: list[int], workload: str = "seed") -> None:
    """train_many(K configs) vs train() of each, on the full Fashion-MNIST, evaluation included."""
    from xbar import data as xd
    from xbar.train import train, train_many
    Xtr, ytr = xd.load("fmnist", "train")
    Xte, yte = xd.load("fmnist", "test")
    data = (Xtr, ytr, Xte, yte)
    cfgs = configs(rule, network, max(Ks), epochs, workload)
    train_many(cfgs[:2], data=(Xtr[:640], ytr[:640], Xte[:100], yte[:100]))   # compile the kernels
    alone = []
    for c in cfgs:
        t = time.perf_counter()
        train(c, data=data)
        alone.append(time.perf_counter() - t)
    for K in Ks:
        t = time.perf_counter()
        train_many(cfgs[:K], data=data)
        ts = time.perf_counter() - t
        print(f"{rule} {network} epochs={epochs} K={K}: stacked {ts:.1f} s, alone {sum(alone[:K]):.1f} s, "
              f"speedup {sum(alone[:K]) / ts:.2f}x", flush=True)


def shares(rule: str, network: str, workload: str = "qat-noise", steps: int = 200) -> None:
    """Where one step of each variant run alone goes, and the bound that puts on a stack.

    Each variant's Trainer steps on Fashion-MNIST batches with its own methods wrapped: the
    program-noise draws (the device physics' ``write``: a numpy normal per device, scaled and
    clipped), programming (``Crossbar.program``, the draws included), forward and transposed
    reads, gradients and the optimizer. A stack whose variants give the bits they give alone must
    draw every variant's own program noise from its own generator, so the draws alone bound a
    stack's speedup (Amdahl): at most alone / draws. The per-variant methods' share is printed too
    (their Python glue is the part a stack can save)."""
    from xbar import data as xd
    from xbar.kernels import serial_kernels
    from xbar.train import Trainer
    X, y = xd.load("fmnist", "train")
    n = (steps + WARMUP) * 64
    X, y = np.ascontiguousarray(X[:n], np.float32), np.asarray(y[:n], np.int64)
    tot_alone = tot_draws = 0.0
    for cfg in configs(rule, network, 20, 1, workload):
        tr = Trainer(cfg, 784, 10)
        acc: dict[str, float] = {}

        def wrap(obj, name, key, acc=acc):
            time_calls(obj, name, key, acc)

        with serial_kernels():
            for s in range(0, WARMUP * 64, 64):
                tr.step(X[s:s + 64], y[s:s + 64])
            for layer in tr.net.layers:
                xb = layer.crossbar
                if xb is not None:
                    wrap(xb.physics, "write", "noise")
                    for name in ("program", "mvm", "mvm_t"):
                        wrap(xb, name, name)
                wrap(layer, "grads", "grads")
            wrap(tr.opt, "step", "opt")
            t0 = time.perf_counter()
            for s in range(WARMUP * 64, n, 64):
                tr.step(X[s:s + 64], y[s:s + 64])
            total = time.perf_counter() - t0
        own = sum(v for k, v in acc.items() if k != "noise")   # (program's time includes the draws)
        draws = acc.get("noise", 0.0)
        tot_alone += total
        tot_draws += draws
        print(f"{cfg.device_set or cfg.device} bits={cfg.bits}: alone {1e3 * total / steps:.2f} ms/step; "
              f"program-noise draws {100 * draws / total:.0f} % (a stack at most {total / max(draws, 1e-12):.2f}x "
              f"faster), all per-variant methods {100 * own / total:.0f} %", flush=True)
    print(f"workload: program-noise draws {100 * tot_draws / tot_alone:.0f} % of the alone steps -> a stack at most "
          f"{tot_alone / tot_draws:.2f}x faster")

if __name__ == "__main__":
    if sys.argv[1] == "shares":
        shares(*sys.argv[2:5])
    else:
        whole_runs(sys.argv[1], sys.argv[2], int(sys.argv[3]), [int(k) for k in sys.argv[4].split(",")],
                   *sys.argv[5:6])
