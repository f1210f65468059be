"""Convolution speed: lenet5 through im2col and the crossbar against torch's CPU conv, same session.

Run::

    python -m pytest bench/test_conv_speed.py --benchmark-only -q
    XBAR_BENCH_TORCH_THREADS=1 OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1 \
        python -m pytest bench/test_conv_speed.py --benchmark-only -q
    python bench/test_conv_speed.py profile      # where one forward / one training step goes

Two workloads (issue 6, §5), each one benchmark group, torch first, then xbar, back to back:

- ``forward``: lenet5 (networks/lenet5.toml: conv 5x5x6 pad 2, maxpool, conv 5x5x16, maxpool,
  400-120-84-10, ReLU) on a batch of 256 images 28x28 (standard normal, fixed seed), inference.
  torch: ``nn.Sequential`` of Conv2d/MaxPool2d/Linear under ``no_grad``. xbar: ``Network.predict``
  with every layer on crossbars of 3-bit devices with 2 % multiplicative read noise, 8-bit ADC
  per tile output, 64x64 tiles, differential pairs, per-column gain (``xbar-3bit-adc8-t64`` of
  bench/test_mvm.py), ADCs calibrated beforehand; and the float path (``xbar-float``, no device)
  for reference. Target: xbar-3bit ≤ 3× torch.
- ``epoch``: one epoch of BP on the 60,000 Fashion-MNIST training images (skipped without the
  files; ``XBAR_BENCH_SAMPLES`` for fewer), batch 64, Adam lr 1e-3, one fixed permutation,
  batches gathered by indexing. xbar: ``Trainer.step`` with update "float" (weights in digital
  memory) and "qat" on 3-bit ideal devices (the qat defaults: the device grid, a local range per
  output column; no ADC); torch: forward, ``zero_grad``, ``backward``, ``Adam.step``, with the
  same per-output-channel 3-bit fake quantization (straight-through) for the qat pair.
  Target: ≤ 2× torch for float; qat is reported against the same bound.

Targets are reported, never asserted (the machine is shared). The ratio table (min and median
seconds; the minimum is the better estimate of the uncontended cost) is printed at the end and
stored in the xbar benchmarks' ``extra_info``. glibc's allocator is tuned as the CLI does
(``xbar._runtime.tune_allocator``, where present), for torch and xbar alike: fresh im2col
matrices are otherwise page-faulted in on every call.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import pytest
from _benchlib import tune_allocator

BATCH_FWD = 256
BATCH = 64
BITS = 3
WARMUP_STEPS = 5
ROUNDS = int(os.environ.get("XBAR_BENCH_ROUNDS", "3"))
SAMPLES = int(os.environ.get("XBAR_BENCH_SAMPLES", "60000"))
TORCH_THREADS = os.environ.get("XBAR_BENCH_TORCH_THREADS")
# group -> {impl: target xbar/torch}; epoch-float's xbar-adc8 is issue 11's "a lenet5 epoch with an
# 8-bit ADC within 2.5x torch's float epoch" (qat on 3-bit ideal devices, 8-bit ADC per tile output).
TARGETS = {"forward": {"xbar-3bit": 3.0}, "epoch-float": {"xbar": 2.0, "xbar-adc8": 2.5},
           "epoch-qat-3bit": {"xbar": 2.0}}


TUNED = tune_allocator()   # as the CLI and sweep workers do


# ---- the networks -----------------------------------------------------------------------------------

def torch_lenet5(torch, seed: int = 1):
    nn = torch.nn
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))


def xbar_lenet5_on_devices(X):
    """lenet5 with every layer on noisy 3-bit crossbars (64x64 tiles, 8-bit ADC), calibrated on X."""
    from xbar import Crossbar, Device
    from xbar.nn import NetworkSpec

    net = NetworkSpec.preset("lenet5").build(784, 10, np.random.default_rng(1))
    dev = Device.preset("ideal").with_(bits=BITS, read_noise_rel=0.02, read_noise_kind="multiplicative")
    x = X
    for i, layer in enumerate(net.layers):
        layer.crossbar = Crossbar(dev, tile=(64, 64), adc_bits=8, seed=i, range="local", gain="column")
        layer.program()
        x = layer.calibrate(x)
    return net


class TorchTrainer:
    """lenet5 in torch with Adam; optional per-output-channel fake quantization of the weights."""

    def __init__(self, torch, fake_quant_bits: int | None = None):
        self.torch = torch
        self.model = torch_lenet5(torch)
        self.n_steps = None if fake_quant_bits is None else 2 ** fake_quant_bits - 1
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.weighted = [m for m in self.model if hasattr(m, "weight")]

    def forward(self, x):
        F = self.torch.nn.functional
        h = x
        for m in self.model:
            if hasattr(m, "weight") and self.n_steps is not None:
                w = m.weight
                flat = w.detach().abs().reshape(w.shape[0], -1).amax(dim=1)
                s = (flat / self.n_steps).clamp_min(1e-12).reshape((-1,) + (1,) * (w.dim() - 1))
                wq = w + (self.torch.round(w / s) * s - w).detach()
                h = F.conv2d(h, wq, m.bias, padding=m.padding) if w.dim() == 4 else F.linear(h, wq, m.bias)
            else:
                h = m(h)
        return h

    def step(self, x, y):
        F = self.torch.nn.functional
        loss = F.nll_loss(F.log_softmax(self.forward(x), dim=1), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()


def xbar_trainer(pair: str, impl: str = "xbar"):
    from xbar.train import TrainConfig, Trainer

    extra = {"update": "float"} if pair == "epoch-float" else {"device": "ideal", "bits": BITS, "update": "qat"}
    if impl == "xbar-adc8":
        extra = {"device": "ideal", "bits": BITS, "update": "qat", "adc_bits": 8}
    cfg = TrainConfig(network="lenet5", dataset="fmnist", batch_size=BATCH, optimizer="adam", lr=1e-3,
                      epochs=1, seed=1, **extra).resolve()
    return Trainer(cfg, 784, 10)


def xbar_epoch(tr, X, y, perm):
    from xbar.kernels import serial_kernels

    with serial_kernels():   # as Trainer.run_epoch runs its steps
        for s in range(0, len(perm), BATCH):
            idx = perm[s:s + BATCH]
            tr.step(X[idx], y[idx])


def torch_epoch(model, Xt, yt, perm_t):
    for s in range(0, len(perm_t), BATCH):
        idx = perm_t[s:s + BATCH]
        model.step(Xt[idx], yt[idx])


# ---- fixtures ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).standard_normal((BATCH_FWD, 784)).astype(np.float32)


def ratio_table(times) -> list[str]:
    title = (f"lenet5: forward batch {BATCH_FWD}; one epoch of BP on {SAMPLES:,} fmnist images, batch {BATCH}; "
             f"torch threads {TORCH_THREADS or 'default'}, allocator tuned: {TUNED}")
    head = (f"{'group':<16} {'impl':<10} {'torch min/med s':>16} {'xbar min/med s':>15} {'ratio min':>9} "
            f"{'ratio med':>9} {'target':>7}")
    lines = [title, head]
    for group in ("forward", "epoch-float", "epoch-qat-3bit"):
        if (group, "torch") not in times:
            continue
        t_min, t_med = times[group, "torch"]
        for (g, impl), (x_min, x_med) in times.items():
            if g != group or impl == "torch":
                continue
            target = TARGETS[group].get(impl)
            lines.append(f"{group:<16} {impl:<10} {t_min:7.4f}/{t_med:<8.4f} {x_min:6.4f}/{x_med:<8.4f} "
                         f"{x_min / t_min:9.2f} {x_med / t_med:9.2f} {'<= ' + str(target) if target else '':>7}")
    return lines if len(lines) > 2 else []


def _record(benchmark, report, group, impl, threads):
    if benchmark.stats is None:   # --benchmark-disable: ran once as a test, nothing to record
        return
    st = benchmark.stats.stats
    report[group, impl] = (st.min, st.median)
    torch = sys.modules.get("torch")
    benchmark.extra_info.update(group=group, impl=impl, threads=threads, allocator_tuned=TUNED,
                                torch_num_threads=None if torch is None else torch.get_num_threads())
    if impl != "torch" and (group, "torch") in report:
        t_min, t_med = report[group, "torch"]
        benchmark.extra_info.update(ratio_min=st.min / t_min, ratio_median=st.median / t_med,
                                    target=TARGETS[group].get(impl))


# ---- benchmarks -------------------------------------------------------------------------------------

@pytest.mark.parametrize("impl", ["torch", "xbar-float", "xbar-3bit"])
def test_lenet5_forward(benchmark, impl, images, report, threads, request):
    X = images
    if impl == "torch":
        torch = request.getfixturevalue("torch_mod")
        model = torch_lenet5(torch).eval()
        x = torch.from_numpy(X).reshape(-1, 1, 28, 28)

        def run():
            with torch.no_grad():
                return model(x)
    else:
        from xbar.nn import NetworkSpec

        net = (NetworkSpec.preset("lenet5").build(784, 10, np.random.default_rng(1)) if impl == "xbar-float"
               else xbar_lenet5_on_devices(X))

        def run():
            return net.predict(X, BATCH_FWD)
    run()
    benchmark.group = "lenet5 forward"
    out = benchmark.pedantic(run, rounds=max(ROUNDS, 5) * 4, iterations=1, warmup_rounds=1)
    assert tuple(out.shape) == (BATCH_FWD, 10)
    _record(benchmark, report, "forward", impl, threads)


CASES = [("epoch-float", "torch"), ("epoch-float", "xbar"), ("epoch-float", "xbar-adc8"),
         ("epoch-qat-3bit", "torch"), ("epoch-qat-3bit", "xbar")]


@pytest.mark.parametrize("pair,impl", CASES, ids=[f"{p}-{i}" for p, i in CASES])
def test_lenet5_train_epoch(benchmark, pair, impl, fmnist, report, threads, request):
    X, y, perm = fmnist
    if impl == "torch":
        torch = request.getfixturevalue("torch_mod")
        Xt = torch.from_numpy(X).reshape(-1, 1, 28, 28)
        yt, perm_t = torch.from_numpy(y), torch.from_numpy(perm)
        bits = BITS if pair == "epoch-qat-3bit" else None

        def setup():
            model = TorchTrainer(torch, bits)
            torch_epoch(model, Xt, yt, perm_t[:WARMUP_STEPS * BATCH])
            return (model, Xt, yt, perm_t), {}

        run = torch_epoch
    else:
        def setup():
            tr = xbar_trainer(pair, impl)
            xbar_epoch(tr, X, y, perm[:WARMUP_STEPS * BATCH])
            return (tr, X, y, perm), {}

        run = xbar_epoch
    benchmark.group = f"lenet5 train {pair}"
    benchmark.pedantic(run, setup=setup, rounds=ROUNDS, iterations=1)
    _record(benchmark, report, pair, impl, threads)


# ---- where does the time go? ------------------------------------------------------------------------

def _main(argv: list[str]) -> int:
    if not argv or argv[0] != "profile":
        print(__doc__)
        return 0
    import cProfile
    import pstats

    X = np.random.default_rng(0).standard_normal((BATCH_FWD, 784)).astype(np.float32)
    net = xbar_lenet5_on_devices(X)
    net.predict(X, BATCH_FWD)
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    for _ in range(10):
        net.predict(X, BATCH_FWD)
    prof.disable()
    print(f"\n== forward, batch {BATCH_FWD}, 3-bit noisy devices, 8-bit ADC: "
          f"{(time.perf_counter() - t0) / 10 * 1e3:.1f} ms per call (profiled) ==")
    pstats.Stats(prof).sort_stats("tottime").print_stats(15)
    from xbar import data as xdata

    Xf, yf = xdata.load("fmnist", "train")
    perm = np.random.default_rng(0).permutation(len(Xf))
    for pair in ("epoch-float", "epoch-qat-3bit"):
        tr = xbar_trainer(pair)
        xbar_epoch(tr, Xf, yf, perm[:20 * BATCH])
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        xbar_epoch(tr, Xf, yf, perm[20 * BATCH:220 * BATCH])
        prof.disable()
        print(f"\n== {pair}: {(time.perf_counter() - t0) / 200 * 1e3:.2f} ms per step (profiled) ==")
        pstats.Stats(prof).sort_stats("tottime").print_stats(15)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
