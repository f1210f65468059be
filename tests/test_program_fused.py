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
    assert xb.planner.fused
    xb.program(W)
    codes = mp.weights_to_codes(W, levels_per_plane=2 ** bits, slices=1, mapping="differential", quant=None,
                                quant_bits=None, rng=rng, gain=gain, w_range=(-1.0, 1.0))
    ref = mp.codes_to_planes(codes, dev, "differential", 1)
    gp, gn = xb.conductances()
    assert np.array_equal(gp, ref.gp) and np.array_equal(gn, ref.gn)
    assert np.array_equal(xb.state.alpha, ref.alpha)
    assert xb.stats()["weights_clipped"] == ref.clipped


def test_fused_path_only_where_it_applies():
    dev = Device(name="u", bits=3)
    assert Crossbar(dev, quant="asymm").planner.fused
    assert not Crossbar(dev, mapping="offset").planner.fused
    assert not Crossbar(dev, slices=2).planner.fused
    assert not Crossbar(Device.preset("ideal")).planner.fused


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


@pytest.mark.parametrize("quant", ["asymm", "symm"])
@pytest.mark.parametrize("dev_bits", [None, 8])
@pytest.mark.parametrize("rng,gain", [("global", "layer"), ("local", "layer"), ("local", "column")])
@pytest.mark.parametrize("bits", [2, 3, 7])
def test_fused_quant_program_equals_numpy_path(quant, dev_bits, rng, gain, bits):
    """The seed quantizers' fused path (analog and uniform devices) equals the numpy mapping."""
    W = np.random.default_rng(bits).normal(0, 0.6, (70, 33)).astype(np.float32)
    W[:, 5] = 0.25                                # a degenerate column under a local column range
    W[3, 7] = 0.5 * (W[:, 7].min() + W[:, 7].max())   # a tie candidate
    dev = Device(name="u", g_min_us=0.5, g_max_us=10.0, bits=dev_bits)
    xb = Crossbar(dev, quant=quant, quant_bits=bits, range=rng, gain=gain, w_range=(-0.9, 0.8), seed=0)
    assert xb.planner.fused
    xb.program(W)
    codes = mp.weights_to_codes(W, levels_per_plane=None if dev_bits is None else 2 ** dev_bits, slices=1,
                                mapping="differential", quant=quant, quant_bits=bits, rng=rng, gain=gain,
                                w_range=(-0.9, 0.8))
    ref = mp.codes_to_planes(codes, dev, "differential", 1)
    gp, gn = xb.conductances()
    assert np.array_equal(gp, ref.gp) and np.array_equal(gn, ref.gn)
    assert np.array_equal(xb.state.alpha, ref.alpha) and np.array_equal(xb.state.beta, ref.beta)
    assert xb.stats()["weights_clipped"] == ref.clipped


def test_fused_quant_refuses_too_few_levels():
    with pytest.raises(Exception, match="holds at most 3"):
        Crossbar(Device(name="u", bits=2), quant="asymm", quant_bits=3).program(np.zeros((2, 2), np.float32))


def test_fused_adadelta_equals_numpy_adadelta():
    from xbar.train.optim import Adadelta
    rng = np.random.default_rng(1)
    p0 = rng.normal(size=(40, 30)).astype(np.float32)
    for lr in (1.0, 0.7):
        fused, plain = p0.copy(), p0.copy()
        a, b = Adadelta([fused], lr=lr), Adadelta([plain], lr=lr)
        for _ in range(5):
            g = rng.normal(size=(40, 30)).astype(np.float32)
            big = np.zeros((40, 60), np.float32)
            big[:, ::2] = g
            a.step([g])
            b.step([big[:, ::2]])              # a non-contiguous gradient takes the plain numpy path
        assert np.array_equal(fused, plain)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("kind", ["asymm", "symm"])
def test_quantizer_kernels_equal_numpy_formulas(monkeypatch, dtype, bits, kind):
    """The one-pass seed quantizers equal the numpy formulas bit for bit, ties and clipping included."""
    if kind == "symm" and bits == 1:
        return
    rng = np.random.default_rng(bits)
    x = rng.normal(0, 0.7, 5000).astype(dtype)
    n = 2 ** bits - 1 if kind == "asymm" else 2 ** (bits - 1) - 1
    x[:200] = (np.arange(200) % (2 * n + 1) - n) / (2 * n) * 2 if n else 0.5   # exact half-steps: ties
    lo, hi = (-0.8, 1.1) if kind == "asymm" else (-1.1, 1.1)
    for rng_kind in ("global", "local"):
        fast = mp.quantize(x, bits, kind, rng_kind, (lo, hi))
        monkeypatch.setattr(mp, "FAST_MIN", None)
        ref = mp.quantize(x, bits, kind, rng_kind, (lo, hi))
        monkeypatch.setattr(mp, "FAST_MIN", 64)
        assert fast.dtype == ref.dtype == dtype
        assert np.array_equal(fast, ref)


@pytest.mark.parametrize("quant", [None, "asymm"])
def test_fused_program_hands_the_read_its_arrays(quant):
    # the fused kernels also write the read-ready arrays (net G, float32 G, float32 weights):
    # exactly what the read path derives from the conductances
    W = np.random.default_rng(3).normal(0, 0.6, (70, 33)).astype(np.float32)
    xb = Crossbar(Device(name="u", g_min_us=0.5, g_max_us=10.0, bits=3), range="local", gain="column",
                  quant=quant, seed=0).program(W)
    gp, gn = (g[0] for g in xb.conductances())
    rd = xb.read
    assert np.array_equal(rd.w_fwd32, ((gp - gn) * rd.alpha_eff[None, :]).astype(np.float32))
    assert np.array_equal(rd.g32, (gp - gn).astype(np.float32))
    assert np.array_equal(rd.gd[0], gp - gn)


def test_column_abs_max_kernel_is_the_symmetric_column_range():
    # the planner's one-pass max|w| per column equals _col_ranges' min/max/abs (signed zeros, an
    # all-zero column and a single row included)
    from xbar.kernels.program import col_abs_max
    r = np.random.default_rng(0)
    for shape in [(784, 100), (5, 3), (1, 1), (64, 7)]:
        W = (r.standard_normal(shape) * 0.3).astype(np.float32)
        W[0, 0] = -0.0
        if shape[0] > 2:
            W[:, -1] = 0.0
        m = np.empty(shape[1], np.float32)
        col_abs_max(W, m)
        lo, hi = mp._col_ranges(W, "local", "column", (-1.0, 1.0), True)
        assert np.array_equal(m.astype(np.float64), hi) and np.array_equal(-m.astype(np.float64), lo)


def _lean_and_full(dev, **kw):
    lean = Crossbar(dev, seed=0, **kw)
    full = Crossbar(dev, seed=0, **kw)
    full._lean = False   # every programming writes the planes at once
    return lean, full


@pytest.mark.parametrize("kw", [
    {"range": "local", "gain": "column"},
    {"range": "global", "gain": "layer"},
    {"quant": "asymm", "range": "local"},
    {"quant": "symm", "range": "global"},
    {"quant": "asymm", "range": "local", "adc_bits": 6, "dac_bits": 5, "tile": (32, 16)},
    {"quant": "symm", "range": "local", "gain": "column", "adc_bits": 8, "adc_range": "physical"},
])
def test_lean_reprogramming_reads_and_reports_as_a_full_one(kw):
    # After the first programming, an exact device without read noise reprograms only the read
    # arrays; its planes are built when asked for. Reads, weights, planes, counters, drifted
    # copies and saved states equal those of a crossbar that writes the planes every time.
    r = np.random.default_rng(5)
    dev = Device(name="u", g_min_us=0.5, g_max_us=10.0, bits=4)
    lean, full = _lean_and_full(dev, **kw)
    X = r.standard_normal((40, 70)).astype(np.float32)
    E = r.standard_normal((40, 33)).astype(np.float32)
    b = r.standard_normal(33).astype(np.float32)
    for step in range(4):
        W = r.normal(0, 0.6, (70, 33)).astype(np.float32)
        lean.program(W, b)
        full.program(W, b)
        W[...] = 7.0   # the caller's array changes after programming (an optimizer's step)
        assert (lean._pending is not None) == (step > 0)
        assert np.array_equal(lean.mvm(X), full.mvm(X)) and np.array_equal(lean.mvm_t(E), full.mvm_t(E))
        assert lean._pending is not None or step == 0   # reads did not need the planes
        assert lean.stats() == full.stats()
        if step == 2:
            assert np.array_equal(lean.weights(), full.weights())
    assert all(np.array_equal(a, c) for a, c in zip(lean.conductances(), full.conductances()))
    assert np.array_equal(lean.read.gd, full.read.gd)
    sd_l, sd_f = lean.state_dict(), full.state_dict()
    assert sd_l["arrays"].keys() == sd_f["arrays"].keys()
    assert all(np.array_equal(sd_l["arrays"][k], sd_f["arrays"][k]) for k in sd_l["arrays"])
    lean.program(W * 0.01)
    full.program(W * 0.01)
    assert np.array_equal(lean.at(3600.0).mvm(X), full.at(3600.0).mvm(X))


def test_lean_path_only_where_the_planes_are_not_needed():
    dev = Device(name="u", bits=4)
    assert Crossbar(dev)._lean and Crossbar(dev, quant="asymm")._lean
    assert not Crossbar(dev.with_(program_noise_rel=0.02))._lean   # writes land at random
    assert not Crossbar(dev.with_(read_noise_rel=0.02))._lean      # reads need the planes' variance
    assert not Crossbar(dev, ir_drop="exact", r_wire_ohm=1.0)._lean
    assert not Crossbar(dev, replicas=2)._lean
    W = np.random.default_rng(0).normal(0, 0.5, (6, 5)).astype(np.float32)
    xb = Crossbar(dev, bias="row").program(W, np.ones(5, np.float32)).program(W, np.ones(5, np.float32))
    assert xb._pending is None   # a bias row: programmed in full
    xb = Crossbar(dev).program(W)
    xb.program(W, mask=np.ones_like(W, bool) & (W > 0))
    assert xb._pending is None   # a mask: in full


def test_lean_reprogramming_refuses_non_finite_weights_and_keeps_its_state():
    from xbar.errors import NonFiniteError
    dev = Device(name="u", bits=4)
    W = np.random.default_rng(0).normal(0, 0.5, (6, 5)).astype(np.float32)
    xb = Crossbar(dev).program(W).program(W * 0.5)
    before = xb.mvm(np.ones((2, 6), np.float32))
    bad = W.copy()
    bad[2, 3] = np.nan
    with pytest.raises(NonFiniteError, match="W"):
        xb.program(bad)
    assert np.array_equal(xb.mvm(np.ones((2, 6), np.float32)), before)
    assert np.array_equal(xb.weights(), Crossbar(dev).program(W * 0.5).weights())
