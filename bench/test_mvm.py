"""Crossbar.mvm against numpy `X @ W`, torch `F.linear` (and aihwkit where installed), per shape.

Run::

    python -m pytest bench/test_mvm.py --benchmark-only --benchmark-json=/tmp/bench.json -q
    python bench/summarize.py /tmp/bench.json

Each shape is one benchmark group ("mvm BxINxOUT"), so the table pytest-benchmark prints is
already the comparison. Programming, ADC calibration, the JIT and one warm-up call happen
outside the timed region: only `mvm(X)` (or the reference product) is timed. All inputs are
float32, C-contiguous.
"""

from __future__ import annotations

import numpy as np
import pytest
from _benchlib import SHAPES, crossbar_configs, shape_id

CONFIGS = crossbar_configs()
shapes = pytest.mark.parametrize("shape", SHAPES, ids=[shape_id(s) for s in SHAPES])


def _label(benchmark, shape, impl, config, threads, **extra):
    benchmark.group = f"mvm {shape_id(shape)}"
    benchmark.extra_info.update(shape=shape_id(shape), impl=impl, config=config, threads=threads, **extra)


@shapes
def test_numpy(benchmark, shape, data, threads):
    X, W = data(shape)
    _label(benchmark, shape, "numpy", "numpy", threads)
    np.matmul(X, W)   # warm-up: BLAS threads start
    y = benchmark(np.matmul, X, W)
    assert y.dtype == np.float32 and y.shape == (shape[0], shape[2])


@shapes
def test_torch(benchmark, shape, data, threads):
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    X, W = data(shape)
    x = torch.from_numpy(X)
    w = torch.from_numpy(np.ascontiguousarray(W.T))   # nn.Linear's (out, in) layout
    _label(benchmark, shape, "torch", "torch", threads)

    def run():
        with torch.no_grad():
            return F.linear(x, w)

    run()
    y = benchmark(run)
    assert y.dtype == torch.float32 and tuple(y.shape) == (shape[0], shape[2])


@shapes
@pytest.mark.parametrize("config", list(CONFIGS))
def test_crossbar(benchmark, shape, config, data, threads):
    from xbar import Crossbar

    X, W = data(shape)
    device, kw = CONFIGS[config]
    xb = Crossbar(device, seed=0, **kw).program(W)
    xb.calibrate(X)
    y = xb.mvm(X)      # warm-up (kernels are already compiled by the `threads` fixture)
    if config == "xbar-ideal":
        # The ideal path must be the exact product, or the timing compares different things.
        np.testing.assert_allclose(y, X @ W, rtol=1e-4, atol=1e-3 * float(np.abs(X @ W).max()))
    st = xb.stats()
    _label(benchmark, shape, "xbar", config, threads, tile=list(st["tile"]), tiles=st["tiles"],
           planes=st["planes"], adc_bits=xb.adc_bits, dac_bits=xb.dac_bits,
           read_noise_rel=device.read_noise_rel, device_bits=device.bits)
    y = benchmark(xb.mvm, X)
    assert y.dtype == np.float32 and y.shape == (shape[0], shape[2])
    assert np.all(np.isfinite(y))


@shapes
def test_aihwkit(benchmark, shape, data, threads):
    """aihwkit AnalogLinear, InferenceRPUConfig: 7-bit DAC, 9-bit ADC, output noise, 512x512 tiles."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("aihwkit")
    from aihwkit.nn import AnalogLinear
    from aihwkit.simulator.configs import InferenceRPUConfig

    X, W = data(shape)
    cfg = InferenceRPUConfig()
    cfg.forward.inp_res = 1 / (2**7 - 2)      # 7-bit DAC
    cfg.forward.out_res = 1 / (2**9 - 2)      # 9-bit ADC
    if cfg.forward.out_noise <= 0:
        cfg.forward.out_noise = 0.06          # output noise on (aihwkit's IOParameters default)
    cfg.mapping.max_input_size = 512
    cfg.mapping.max_output_size = 512
    layer = AnalogLinear(shape[1], shape[2], bias=False, rpu_config=cfg)
    layer.set_weights(torch.from_numpy(np.ascontiguousarray(W.T)))
    layer.eval()          # inference tiles program their weights here, outside the timing
    x = torch.from_numpy(X)

    def run():
        with torch.no_grad():
            return layer(x)

    run()
    _label(benchmark, shape, "aihwkit", "aihwkit", threads, inp_res=cfg.forward.inp_res,
           out_res=cfg.forward.out_res, out_noise=cfg.forward.out_noise, max_tile=512)
    y = benchmark(run)
    assert tuple(y.shape) == (shape[0], shape[2])
