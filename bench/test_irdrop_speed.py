"""IR drop: a read through the wires against the same read without them, and the one-time solve.

Run::

    python -m pytest bench/test_irdrop_speed.py --benchmark-only -q

Reads through IR drop multiply by the tiles' effective conductances, computed once per programming
(xbar/tile/irdrop.py), so a read costs what a read without wires costs; the solve (exact: nodal
analysis per tile, fast: first-order) is timed separately as `program`. Group "irdrop read" holds the
three reads of the same layer (1000x784x100, 64x64 tiles, 3-bit devices, 2 % read noise, 8-bit ADC),
group "irdrop program" the programming with each mode.
"""

from __future__ import annotations

import numpy as np
import pytest

MODES = [("none", 0.0), ("fast", 2.0), ("exact", 2.0)]


def _crossbar(mode, r):
    from xbar import Crossbar, Device
    dev = Device.preset("ideal").with_(bits=3, g_max_us=25.0, read_noise_rel=0.02)
    return Crossbar(dev, tile=(64, 64), adc_bits=8, seed=0, ir_drop=mode, r_wire_ohm=r)


@pytest.fixture(scope="module")
def layer():
    rng = np.random.default_rng(0)
    return (rng.uniform(-1, 1, (784, 100)).astype(np.float32),
            rng.uniform(0, 1, (1000, 784)).astype(np.float32))


@pytest.mark.parametrize("mode, r", MODES, ids=[m for m, _ in MODES])
def test_read(benchmark, layer, mode, r, threads):
    W, X = layer
    xb = _crossbar(mode, r).program(W).calibrate(X)
    xb.mvm(X)
    benchmark.group = "irdrop read"
    benchmark.extra_info.update(impl=f"ir_drop={mode}", threads=threads)
    y = benchmark(xb.mvm, X)
    assert y.shape == (1000, 100) and np.isfinite(y).all()


@pytest.mark.parametrize("mode, r", MODES, ids=[m for m, _ in MODES])
def test_program(benchmark, layer, mode, r, threads):
    W, _ = layer
    xb = _crossbar(mode, r)
    benchmark.group = "irdrop program"
    benchmark.extra_info.update(impl=f"ir_drop={mode}", threads=threads)
    benchmark(lambda: xb.program(W).read.fwd_stacks())
