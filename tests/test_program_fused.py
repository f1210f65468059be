"""The fused programming kernel equals the general numpy mapping path it replaces."""

from __future__ import annotations

import numpy as np
import pytest

from xbar import Crossbar, Device
from xbar import mapping as mp


@pytest.mark.parametrize("rng,gain", [("global", "layer"), ("local", "layer"), ("local", "column")])
@pytest.mark.parametrize("bits", [1, 3, 8])
@pytest.mark.parametrize("shape", [(1, 1), (70, 33), (5, 200)])
def test_fused_program_equals_numpy_path(rng, gain, bits, shape):
    W = np.random.default_rng(bits).normal(0, 0.6, shape).astype(np.float32)   # some beyond [-1, 1]
    dev = Device(name="u", g_min_us=0.5, g_max_us=10.0, bits=bits)
    xb = Crossbar(dev, range=rng, gain=gain, seed=0)
    assert xb._fused_program
    xb.program(W)
    codes = mp.weights_to_codes(W, levels_per_plane=2 ** bits, slices=1, mapping="differential", quant=None,
                                quant_bits=None, rng=rng, gain=gain, w_range=(-1.0, 1.0))
    ref = mp.codes_to_planes(codes, dev, "differential", 1)
    gp, gn = xb.conductances()
    assert np.array_equal(gp, ref.gp) and np.array_equal(gn, ref.gn)
    assert np.array_equal(xb._alpha, ref.alpha)
    assert xb.stats()["weights_clipped"] == ref.clipped


def test_fused_path_only_where_it_applies():
    dev = Device(name="u", bits=3)
    assert not Crossbar(dev, quant="asymm")._fused_program
    assert not Crossbar(dev, mapping="offset")._fused_program
    assert not Crossbar(dev, slices=2)._fused_program
    assert not Crossbar(Device.preset("ideal"))._fused_program


def test_fused_adam_equals_numpy_adam():
    from xbar.train.optim import Adam
    rng = np.random.default_rng(0)
    p0 = rng.normal(size=(40, 30)).astype(np.float32)
    grads = [rng.normal(size=(40, 30)).astype(np.float32) for _ in range(5)]
    fused, plain = p0.copy(), p0.copy()
    a, b = Adam([fused], lr=1e-2), Adam([plain], lr=1e-2)
    for g in grads:
        big = np.zeros((40, 60), np.float32)
        big[:, ::2] = g
        a.step([g])
        b.step([big[:, ::2]])              # a non-contiguous gradient takes the plain numpy path
    assert np.array_equal(fused, plain)
