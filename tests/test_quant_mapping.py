"""The seed study's quantizers (DOMAIN.md §1), bit for bit, and their mapping onto crossbar devices.

References are direct transcriptions of the seed formulas, in float32 numpy and float32 torch:
    ASYMM  q = round((x - min)(2^n - 1)/(max - min)),  x̂ = q (max - min)/(2^n - 1) + min
    SYMM   q = round(x (2^(n-1) - 1)/max|x|),           x̂ = q max|x|/(2^(n-1) - 1)
after clamping x to [min, max] (or [-max, max]); a degenerate range leaves x unchanged.
"""

from __future__ import annotations

import numpy as np
import pytest

from xbar import ConfigError, Crossbar, Device
from xbar import mapping as mp

try:
    import torch
except ImportError:  # pragma: no cover - torch is an optional extra
    torch = None

F32 = np.float32
BITS = list(range(2, 9))


# ---- references ------------------------------------------------------------------------------------

def asymm_np(x, n, lo, hi):
    x = np.asarray(x, F32)
    lo, hi = F32(lo), F32(hi)
    if hi == lo:
        return x.copy()
    levels = F32(2 ** n - 1)
    xc = np.minimum(np.maximum(x, lo), hi)
    q = np.round((xc - lo) * levels / (hi - lo))
    return q * (hi - lo) / levels + lo


def symm_np(x, n, m):
    x = np.asarray(x, F32)
    m = F32(m)
    if m == 0:
        return x.copy()
    levels = F32(2 ** (n - 1) - 1)
    q = np.round(np.minimum(np.maximum(x, -m), m) * levels / m)
    return q * m / levels


def asymm_torch(x, n, lo, hi):
    x = torch.from_numpy(np.asarray(x, F32))
    lo, hi = torch.tensor(F32(lo)), torch.tensor(F32(hi))
    if hi == lo:
        return x.clone().numpy()
    levels = torch.tensor(F32(2 ** n - 1))
    q = torch.round((torch.clamp(x, lo, hi) - lo) * levels / (hi - lo))
    return (q * (hi - lo) / levels + lo).numpy()


def symm_torch(x, n, m):
    x = torch.from_numpy(np.asarray(x, F32))
    m = torch.tensor(F32(m))
    if m == 0:
        return x.clone().numpy()
    levels = torch.tensor(F32(2 ** (n - 1) - 1))
    q = torch.round(torch.clamp(x, -m, m) * levels / m)
    return (q * m / levels).numpy()


def ref_quantize(x, n, kind, rng, w_range=(-1.0, 1.0), backend="np"):
    """The seed study's quantize(tensor) with a global (fixed) or local (own min/max) range."""
    x = np.asarray(x, F32)
    a, s = (asymm_np, symm_np) if backend == "np" else (asymm_torch, symm_torch)
    if kind == "asymm":
        lo, hi = (w_range if rng == "global" else (x.min(), x.max()))
        return a(x, n, lo, hi)
    m = max(abs(w_range[0]), abs(w_range[1])) if rng == "global" else np.abs(x).max()
    return s(x, n, m)


def sample(shape, seed, lo=-1.3, hi=1.2):
    """float32 weights, partly outside [-1, 1] so the global range clamps some of them."""
    return np.random.default_rng(seed).uniform(lo, hi, shape).astype(F32)


BACKENDS = ["np", pytest.param("torch", marks=pytest.mark.skipif(torch is None, reason="torch missing"))]


# ---- the quantizers, bit for bit -------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n", BITS)
@pytest.mark.parametrize("rng", ["global", "local"])
@pytest.mark.parametrize("kind", ["asymm", "symm"])
def test_quantize_bit_for_bit(kind, rng, n, backend):
    x = sample((37, 23), seed=n)
    got = mp.quantize(x, n, kind, rng)
    want = ref_quantize(x, n, kind, rng, backend=backend)
    assert got.dtype == np.float32
    assert np.array_equal(got, want)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n", BITS)
def test_asymm_symm_bit_for_bit(n, backend):
    x = sample((500,), seed=100 + n, lo=-3.0, hi=2.0)
    a, s = (asymm_np, symm_np) if backend == "np" else (asymm_torch, symm_torch)
    for lo, hi in [(-1.0, 1.0), (-0.37, 1.9), (0.1, 0.6)]:
        assert np.array_equal(mp.asymm(x, n, lo, hi), a(x, n, lo, hi))
    for m in [1.0, 0.37, 2.5]:
        assert np.array_equal(mp.symm(x, n, m), s(x, n, m))


@pytest.mark.parametrize("n", BITS)
def test_quantize_grid_and_idempotence(n):
    x = sample((200, 20), seed=7 * n)
    a = mp.quantize(x, n, "asymm", "global")
    s = mp.quantize(x, n, "symm", "global")
    assert len(np.unique(a)) <= 2 ** n
    assert len(np.unique(s)) <= 2 ** n - 1
    assert a.min() >= -1 and a.max() <= 1 and s.min() >= -1 and s.max() <= 1
    assert np.array_equal(mp.quantize(a, n, "asymm", "global"), a)
    assert np.array_equal(mp.quantize(s, n, "symm", "global"), s)


def test_quantize_float64_stays_float64():
    x = sample((50,), seed=1).astype(np.float64)
    assert mp.quantize(x, 4, "asymm", "local").dtype == np.float64


def test_degenerate_ranges_unchanged():
    const = np.full((4, 3), 0.3, F32)
    zeros = np.zeros((4, 3), F32)
    x = sample((4, 3), seed=2)
    cases = [mp.quantize(const, 3, "asymm", "local"), mp.quantize(zeros, 3, "symm", "local"),
             mp.asymm(x, 3, 0.25, 0.25), mp.symm(x, 3, 0.0)]
    for got, src in zip(cases, [const, zeros, x, x]):
        assert np.array_equal(got, src)
        assert got is not src, "a copy, never the caller's array"


def test_symm_one_bit_refused():
    with pytest.raises(ConfigError, match="bits >= 2"):
        mp.symm(np.array([0.5, -0.2], F32), 1, 1.0)
    with pytest.raises(ConfigError):
        mp.quantize(np.array([0.5, -0.2], F32), 1, "symm", "global")


def test_symm_one_bit_refused_even_for_zero_tensor():
    with pytest.raises(ConfigError):
        mp.quantize(np.zeros(3, F32), 1, "symm", "local")


def test_quantize_unknown_kind():
    with pytest.raises(ConfigError, match="asymm"):
        mp.quantize(np.zeros(3, F32), 3, "nayak")


def test_quantize_unknown_range():
    with pytest.raises(ConfigError, match="global"):
        mp.quantize(sample((5,), seed=0), 3, "asymm", "Global")


# ---- the quantizers on a crossbar ------------------------------------------------------------------

IDEAL = Device.preset("ideal")


@pytest.mark.parametrize("n", BITS)
@pytest.mark.parametrize("rng", ["global", "local"])
@pytest.mark.parametrize("mapping", ["differential", "offset"])
@pytest.mark.parametrize("quant", ["asymm", "symm"])
def test_crossbar_weights_equal_quantize(quant, mapping, rng, n):
    W = sample((19, 11), seed=n, lo=-0.95, hi=0.8)
    xb = Crossbar(IDEAL.with_(bits=n), tile=(8, 8), mapping=mapping, quant=quant, range=rng, seed=0)
    xb.program(W)
    np.testing.assert_allclose(xb.weights(), mp.quantize(W, n, quant, rng), rtol=0, atol=1e-6)
    # Every device sits on one of the device's 2^n levels.
    levels = IDEAL.with_(bits=n).levels()
    for g in xb.conductances():
        assert np.all(np.min(np.abs(g[..., None] - levels), axis=-1) < 1e-12)


@pytest.mark.parametrize("n", [2, 5, 8])
@pytest.mark.parametrize("quant", ["asymm", "symm"])
def test_crossbar_column_gain_quantizes_per_column(quant, n):
    W = sample((13, 6), seed=n, lo=-0.9, hi=0.9)
    W[:, 2] *= 0.1
    xb = Crossbar(IDEAL.with_(bits=n), quant=quant, range="local", gain="column").program(W)
    want = np.stack([mp.quantize(W[:, j], n, quant, "local") for j in range(W.shape[1])], axis=1)
    np.testing.assert_allclose(xb.weights(), want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("mapping", ["differential", "offset"])
def test_crossbar_degenerate_local_range_unchanged(mapping):
    W = np.full((5, 4), 0.3, F32)
    xb = Crossbar(IDEAL.with_(bits=3), quant="asymm", range="local", mapping=mapping).program(W)
    np.testing.assert_allclose(xb.weights(), W, rtol=0, atol=1e-6)


@pytest.mark.parametrize("mapping", ["differential", "offset"])
def test_bit_slicing_two_2bit_devices_make_a_4bit_grid(mapping):
    dev = IDEAL.with_(bits=2)
    W = sample((21, 9), seed=3, lo=-1.0, hi=1.0)
    for quant in ("asymm", "symm"):
        xb = Crossbar(dev, slices=2, quant=quant, mapping=mapping).program(W)
        assert xb.quant_bits == 4
        np.testing.assert_allclose(xb.weights(), mp.quantize(W, 4, quant, "global"), rtol=0, atol=1e-6)
        gp, gn = xb.conductances()
        assert gp.shape == (2, 21, 9) and xb.stats()["planes"] == 2
        for g in (gp, gn):
            assert np.all(np.min(np.abs(g[..., None] - dev.levels()), axis=-1) < 1e-12)
        X = sample((3, 21), seed=4)
        np.testing.assert_allclose(xb.mvm(X), X.astype(np.float64) @ xb.weights(), rtol=1e-5, atol=1e-5)
    if mapping == "differential":
        # No quantizer: the device grid itself, 15 steps of 1/15 on each side of zero.
        xb = Crossbar(dev, slices=2).program(W)
        np.testing.assert_allclose(xb.weights(), np.round(W.astype(np.float64) * 15) / 15, atol=1e-9)


def snap_ref(g, levels):
    """Nearest level, ties to the lower one (argmin returns the first minimum)."""
    return levels[np.argmin(np.abs(np.asarray(g)[..., None] - levels), axis=-1)]


def test_measured_levels_snap():
    levels = np.array([0.0, 0.1, 0.3, 0.6, 1.0])
    dev = IDEAL.with_(levels_us=tuple(levels))
    assert dev.bits is None and not dev.is_uniform
    W = sample((30, 7), seed=5, lo=-1.0, hi=1.0)
    xb = Crossbar(dev, mapping="differential").program(W)
    gp, gn = xb.conductances()
    for g in (gp, gn):
        assert np.all(np.isin(g, levels))
    W64 = W.astype(np.float64)
    np.testing.assert_allclose(xb.weights(), np.sign(W64) * snap_ref(np.abs(W64), levels), atol=1e-12)
    xo = Crossbar(dev, mapping="offset").program(W)
    assert np.all(np.isin(xo.conductances()[0], levels))
    np.testing.assert_allclose(xo.weights(), 2 * snap_ref((W64 + 1) / 2, levels) - 1, atol=1e-12)


def test_measured_levels_refuse_quantizer():
    with pytest.raises(ConfigError, match="uniform levels"):
        Crossbar(IDEAL.with_(levels_us=(0.0, 0.2, 1.0)), quant="asymm")


@pytest.mark.parametrize("mapping", ["differential", "offset"])
def test_weights_outside_global_range_are_clipped_and_counted(mapping):
    W = sample((40, 10), seed=6, lo=-1.6, hi=1.5)
    n_out = int(np.sum(np.abs(W) > 1))
    assert n_out > 0
    xb = Crossbar(IDEAL, mapping=mapping).program(W)
    assert xb.stats()["weights_clipped"] == n_out
    np.testing.assert_allclose(xb.weights(), np.clip(W, -1, 1), atol=1e-6)
    xq = Crossbar(IDEAL.with_(bits=4), mapping=mapping, quant="asymm").program(W)
    assert xq.stats()["weights_clipped"] == n_out
    local = Crossbar(IDEAL, mapping=mapping, range="local").program(W)
    assert local.stats()["weights_clipped"] == 0


def test_quantizer_needing_more_levels_than_the_device_is_refused():
    with pytest.raises(ConfigError, match="lower the quantizer bits"):
        Crossbar(IDEAL.with_(bits=2), quant="asymm", quant_bits=4).program(np.zeros((2, 2)))


@pytest.mark.parametrize("quant", ["asymm", "symm"])
def test_fewer_quantizer_bits_than_device_bits_still_exact(quant):
    W = sample((20, 5), seed=8, lo=-1.0, hi=1.0)
    xb = Crossbar(IDEAL.with_(bits=8), quant=quant, quant_bits=3).program(W)
    np.testing.assert_allclose(xb.weights(), mp.quantize(W, 3, quant, "global"), rtol=0, atol=1e-6)


def test_fewer_quantizer_bits_than_device_bits_use_the_window():
    W = np.array([[1.0, -1.0, 0.5]], F32)
    xb = Crossbar(IDEAL.with_(bits=8), quant="symm", quant_bits=3).program(W)
    gp, gn = xb.conductances()
    assert max(gp.max(), gn.max()) >= 0.5 * IDEAL.g_max_us
