"""Crossbar: exact on ideal devices, equal to a slow per-tile numpy reference with an ADC, and
statistically right for read noise, programming noise, spread, faults and drift (fixed seeds).

Statistical checks use 5 standard errors of the estimator (mean: sd/sqrt(n); sample standard
deviation: sd/sqrt(2n); sample variance: var*sqrt(2/(n-1)); a count: the binomial sd).
"""

from __future__ import annotations

import numba
import numpy as np
import pytest

from xbar import ConfigError, Crossbar, Device, ShapeError, XbarError

EPS32 = float(np.finfo(np.float32).eps)
IDEAL = Device.preset("ideal")
# A window that does not start at 0, so G- of a differential pair is non-zero and the
# window (not g_max) is what relative quantities refer to.
OFFSET_WINDOW = Device.from_dict({"name": "test-window", "g_min_us": 0.1, "g_max_us": 1.0})


def rand(shape, seed, lo=-1.0, hi=1.0):
    return np.random.default_rng(seed).uniform(lo, hi, shape).astype(np.float32)


def assert_float_close(got, want, scale):
    """float32 products: error within a few eps32 of the summed |terms| (`scale`, elementwise)."""
    got = np.asarray(got, np.float64)
    bound = 64 * EPS32 * (np.asarray(scale) + np.abs(want)) + 1e-30
    err = np.abs(got - want)
    assert np.all(err <= bound), f"max err {err.max()}, worst ratio {(err / bound).max()}"


# ---- ideal analog device, no periphery: exact products -------------------------------------------

SHAPES = [  # (in, out, tile, batch)
    (1, 1, (64, 64), 1),
    (5, 3, (4, 4), 1),
    (3, 5, (4, 4), 6),
    (70, 33, (16, 16), 7),
    (33, 70, (16, 16), 1),
    (64, 64, (64, 64), 5),
    (100, 1, (16, 16), 3),
]


@pytest.mark.parametrize("mapping", ["differential", "offset"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}-t{s[2][0]}-b{s[3]}")
def test_ideal_mvm_is_matmul(shape, mapping):
    n_in, n_out, tile, batch = shape
    W = rand((n_in, n_out), seed=n_in * 7 + n_out)
    X = rand((batch, n_in), seed=1, lo=-2.0, hi=2.0)
    E = rand((batch, n_out), seed=2, lo=-2.0, hi=2.0)
    xb = Crossbar(IDEAL, tile=tile, mapping=mapping, seed=0).program(W)
    W64 = W.astype(np.float64)
    np.testing.assert_allclose(xb.weights(), W64, rtol=0, atol=1e-6)
    # Offset mapping adds sum(x) * beta digitally; |alpha G| + |beta| <= 3 bounds every term.
    y = xb.mvm(X)
    assert y.shape == (batch, n_out) and y.dtype == np.float32
    assert_float_close(y, X @ W64, np.abs(X) @ (np.abs(W64) + 3))
    yt = xb.mvm_t(E)
    assert yt.shape == (batch, n_in) and yt.dtype == np.float32
    assert_float_close(yt, E @ W64.T, np.abs(E) @ (np.abs(W64.T) + 3))


def test_ideal_accepts_float64_int_and_bool_inputs():
    W = rand((4, 3), seed=0)
    xb = Crossbar(IDEAL, tile=(2, 2)).program(W.astype(np.float64))
    X = np.array([[1, 0, -2, 3]])
    for A in (X, X.astype(np.float64), X.astype(np.int8), X != 0):
        want = np.asarray(A, np.float64) @ W.astype(np.float64)
        assert_float_close(xb.mvm(A), want, np.abs(np.asarray(A, np.float64)) @ (np.abs(W) + 3))


def test_mvm_does_not_modify_inputs():
    W = rand((6, 5), seed=0)
    X = rand((3, 6), seed=1)
    W0, X0 = W.copy(), X.copy()
    xb = Crossbar(IDEAL.with_(read_noise_rel=0.1), tile=(4, 4), adc_bits=8).program(W)
    xb.mvm(X)
    xb.mvm_t(X[:, :5])
    assert np.array_equal(W, W0) and np.array_equal(X, X0)


@pytest.mark.parametrize("bias", ["digital", "row"])
@pytest.mark.parametrize("mapping", ["differential", "offset"])
def test_bias(bias, mapping):
    n_in, n_out = 70, 33
    W = rand((n_in, n_out), seed=3)
    b = rand((n_out,), seed=4, lo=-0.9, hi=0.9)
    X = rand((5, n_in), seed=5)
    E = rand((5, n_out), seed=6)
    xb = Crossbar(IDEAL, tile=(16, 16), mapping=mapping, bias=bias).program(W, b)
    W64, b64 = W.astype(np.float64), b.astype(np.float64)
    assert_float_close(xb.mvm(X), X @ W64 + b64, np.abs(X) @ (np.abs(W64) + 3) + 3)
    assert_float_close(xb.mvm_t(E), E @ W64.T, np.abs(E) @ (np.abs(W64.T) + 3) + 3)
    np.testing.assert_allclose(xb.bias_weights(), b64, atol=1e-6)
    np.testing.assert_allclose(xb.weights(), W64, atol=1e-6)
    assert xb.stats()["rows_used"] == n_in + (bias == "row")


# ---- ADC on, noise off: a slow per-tile reference --------------------------------------------------

def dac_dynamic(A):
    s = np.abs(A).max(axis=1, keepdims=True)
    s = np.where(s > 0, s, 1.0)
    return A / s, s


def plane_significance(xb):
    levels = xb.device.levels()
    P = xb.conductances()[0].shape[0]
    return np.array([float(len(levels)) ** p for p in range(P)]) if P > 1 else np.ones(1)


def digital_offset(xb, sig):
    """beta per column: W_eff - alpha * sum_p sig_p Gd_p (zero unless the mapping needs it)."""
    gp, gn = xb.conductances()
    gsum = np.einsum("p,pio->io", sig, gp - gn)
    beta = xb.weights() - xb.read.alpha_eff[None, :] * gsum[: xb.weights().shape[0]]
    np.testing.assert_allclose(beta, beta[:1].repeat(len(beta), 0), atol=1e-9)
    return beta[0]


def adc_full_scale(xb, I_cal, physical):
    if xb.adc_range == "calibrated":
        fs = np.abs(I_cal).max() if I_cal.size else 0.0
        return fs if fs > 0 else physical
    if xb.adc_range == "physical":
        return physical
    return float(xb.adc_range)


def adc_convert(I, fs, n):
    step = fs / n
    code = np.floor(I / step + 0.5)
    nclip = int(np.sum(np.abs(code) > n))
    return np.clip(code, -n, n) * step, nclip


def mvm_reference(xb, X, X_cal):
    """Per tile: I = x_tile @ Gd_tile; ADC per tile with full scale = max |I| over the calibration
    batch; then gain alpha * significance, partial sums added, DAC scale undone, offset added."""
    R, C = xb.tile
    n = 2 ** (xb.adc_bits - 1) - 1
    gp, gn = xb.conductances()
    gd = gp - gn
    P, rows, n_out = gd.shape
    sig = plane_significance(xb)
    alpha, beta = xb.read.alpha_eff, digital_offset(xb, sig)
    X = X.astype(np.float64)
    xs, s = dac_dynamic(X)
    xc, _ = dac_dynamic(X_cal.astype(np.float64))
    y = np.zeros((X.shape[0], n_out))
    nclip = 0
    for p in range(P):
        for r0 in range(0, rows, R):
            g = gd[p, r0:r0 + R]
            I, Ic = xs[:, r0:r0 + R] @ g, xc[:, r0:r0 + R] @ g
            for c0 in range(0, n_out, C):
                cols = slice(c0, c0 + C)
                fs = adc_full_scale(xb, Ic[:, cols], R * xb.device.window_us)
                q, k = adc_convert(I[:, cols], fs, n)
                nclip += k
                y[:, cols] += q * sig[p] * alpha[cols]
    return y * s + X.sum(axis=1, keepdims=True) * beta, nclip


def mvm_t_reference(xb, E, E_cal):
    """The transposed read: inputs E * alpha through the DAC, per column tile I = e_tile @ Gd_tile.T,
    one ADC per (column tile, group of tile_rows outputs)."""
    R, C = xb.tile
    n = 2 ** (xb.adc_bits - 1) - 1
    gp, gn = xb.conductances()
    gd = gp - gn
    P, rows, n_out = gd.shape
    sig = plane_significance(xb)
    alpha, beta = xb.read.alpha_eff, digital_offset(xb, sig)
    E = E.astype(np.float64)
    es, s = dac_dynamic(E * alpha)
    ec, _ = dac_dynamic(E_cal.astype(np.float64) * alpha)
    y = np.zeros((E.shape[0], rows))
    nclip = 0
    for p in range(P):
        for c0 in range(0, n_out, C):
            g = gd[p][:, c0:c0 + C].T
            I, Ic = es[:, c0:c0 + C] @ g, ec[:, c0:c0 + C] @ g
            for r0 in range(0, rows, R):
                rs = slice(r0, r0 + R)
                fs = adc_full_scale(xb, Ic[:, rs], C * xb.device.window_us)
                q, k = adc_convert(I[:, rs], fs, n)
                nclip += k
                y[:, rs] += q * sig[p]
    return y * s + (E @ beta)[:, None], nclip


ADC_CONFIGS = {
    "differential": {"device": OFFSET_WINDOW, "mapping": "differential"},
    "offset": {"device": OFFSET_WINDOW, "mapping": "offset"},
    "sliced": {"device": IDEAL.with_(bits=2), "mapping": "differential", "slices": 2},
    "quantized-local": {"device": IDEAL.with_(bits=4), "mapping": "differential", "quant": "asymm",
                            "range": "local", "gain": "column"},
}


@pytest.mark.parametrize("adc_range", ["calibrated", "physical", 2.5])
@pytest.mark.parametrize("config", list(ADC_CONFIGS))
def test_adc_matches_per_tile_reference(config, adc_range):
    kw = dict(ADC_CONFIGS[config])
    dev = kw.pop("device")
    n_in, n_out = 37, 19
    W = rand((n_in, n_out), seed=11)
    xb = Crossbar(dev, tile=(16, 8), adc_bits=6, adc_range=adc_range, seed=0, **kw).program(W)
    X_cal, E_cal = rand((8, n_in), seed=12), rand((8, n_out), seed=13)
    xb.calibrate(X_cal, E_cal)
    X, E = rand((5, n_in), seed=14), rand((5, n_out), seed=15)

    before = xb.stats()
    y = xb.mvm(X)
    ref, nclip = mvm_reference(xb, X, X_cal)
    scale = np.abs(ref).max()
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5 * scale)
    after = xb.stats()
    assert after["adc_clipped"] - before["adc_clipped"] == nclip

    yt = xb.mvm_t(E)
    ref_t, nclip_t = mvm_t_reference(xb, E, E_cal)
    np.testing.assert_allclose(yt, ref_t, rtol=1e-5, atol=1e-5 * np.abs(ref_t).max())
    assert xb.stats()["adc_clipped"] - after["adc_clipped"] == nclip_t

    # The ADC really quantizes: the result is not the ideal product.
    ideal = X.astype(np.float64) @ xb.weights()
    assert not np.allclose(y, ideal, rtol=1e-6, atol=1e-6)


def test_adc_counts_clipping_after_calibration():
    n_in, n_out = 40, 12
    W = rand((n_in, n_out), seed=21)
    xb = Crossbar(OFFSET_WINDOW, tile=(16, 8), adc_bits=5, seed=0).program(W)
    # Calibration inputs whose odd columns are small: after the per-row DAC scaling the currents
    # are smaller than those of a dense batch, which must then clip.
    X_cal = rand((16, n_in), seed=22)
    X_cal[:, 1::2] *= 0.05
    xb.calibrate(X_cal)
    y0 = xb.mvm(X_cal)
    ref0, clip0 = mvm_reference(xb, X_cal, X_cal)
    assert clip0 == 0 and xb.stats()["adc_clipped"] == 0
    np.testing.assert_allclose(y0, ref0, rtol=1e-5, atol=1e-5 * np.abs(ref0).max())
    X = rand((16, n_in), seed=23)
    y = xb.mvm(X)
    ref, nclip = mvm_reference(xb, X, X_cal)
    assert nclip > 0
    assert xb.stats()["adc_clipped"] == nclip
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_adc_auto_calibrates_on_first_batch():
    W = rand((20, 9), seed=31)
    X = rand((6, 20), seed=32)
    a = Crossbar(OFFSET_WINDOW, tile=(8, 4), adc_bits=7).program(W)
    b = Crossbar(OFFSET_WINDOW, tile=(8, 4), adc_bits=7).program(W).calibrate(X)
    ya = a.mvm(X)
    assert a.stats().get("adc_auto_calibrated_fwd") is True
    assert a.stats()["adc_clipped"] == 0
    assert np.array_equal(ya, b.mvm(X))
    ref, _ = mvm_reference(a, X, X)
    np.testing.assert_allclose(ya, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


# ---- read noise --------------------------------------------------------------------------------

N_READS = 2000


@pytest.fixture()
def one_thread():
    """Thousands of tiny reads: run the kernels on one thread. The draws do not depend on the thread
    count (test_kernels checks it), and on a loaded 2-core machine each launch of a 2-thread
    parallel region can cost milliseconds, which would dominate the suite's run time."""
    n = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(n)


def read_noise_device(kind):
    return Device.from_dict({"name": f"noisy-{kind}", "g_min_us": 0.1, "g_max_us": 1.0,
                             "read_noise_rel": 0.05, "read_noise_kind": kind})


def output_variance(xb, X):
    """Var of each output: sum_i x_i^2 var_ij, var_ij per cell in weight units."""
    d = xb.device
    s = d.read_noise_rel
    gp, gn = xb.conductances()
    sig = plane_significance(xb)
    if d.read_noise_kind == "multiplicative":
        var = (s * gp) ** 2 + ((s * gn) ** 2 if xb.mapping == "differential" else 0.0)
    else:
        var = np.full_like(gp, (2 if xb.mapping == "differential" else 1) * (s * d.window_us) ** 2)
    var_w = np.einsum("p,pio->io", sig ** 2, var) * xb.read.alpha_eff[None, :] ** 2
    return X.astype(np.float64) ** 2 @ var_w, var_w


@pytest.mark.parametrize("adc_bits", [None, 16], ids=["no-adc", "adc16"])
@pytest.mark.parametrize("mapping", ["differential", "offset"])
@pytest.mark.parametrize("kind", ["multiplicative", "additive"])
def test_read_noise_statistics(kind, mapping, adc_bits, one_thread):
    # "physical" full scale: noisy currents never clip, and 16 bits make quantization negligible.
    xb = Crossbar(read_noise_device(kind), tile=(4, 4), mapping=mapping, adc_bits=adc_bits,
                  adc_range="physical", seed=42).program(rand((6, 5), seed=1))
    X = rand((2, 6), seed=2)
    E = rand((2, 5), seed=3)
    Y = np.stack([xb.mvm(X) for _ in range(N_READS)]).astype(np.float64)
    Yt = np.stack([xb.mvm_t(E) for _ in range(N_READS)]).astype(np.float64)
    W_eff = xb.weights()
    var, var_w = output_variance(xb, X)
    var_t = E.astype(np.float64) ** 2 @ var_w.T
    n = N_READS
    for samples, mean, v in ((Y, X @ W_eff, var), (Yt, E @ W_eff.T, var_t)):
        assert np.all(np.abs(samples.mean(0) - mean) < 5 * np.sqrt(v / n))
        ratio = samples.var(0, ddof=1) / v
        assert np.all(np.abs(ratio - 1) < 5 * np.sqrt(2 / (n - 1)))
        # Pooled over the (independent) outputs: a systematic error of a few percent shows up.
        assert abs(ratio.mean() - 1) < 5 * np.sqrt(2 / (n - 1) / ratio.size)
    assert not np.array_equal(Y[0], Y[1]), "successive reads draw fresh noise"


@pytest.mark.parametrize("adc_bits", [None, 8])
def test_read_noise_seeded(adc_bits):
    dev = read_noise_device("multiplicative").with_(program_noise_rel=0.02)
    W, X = rand((9, 7), seed=5), rand((3, 9), seed=6)

    def reads(seed):
        xb = Crossbar(dev, tile=(4, 4), adc_bits=adc_bits, seed=seed).program(W)
        return np.stack([xb.mvm(X) for _ in range(3)] + [xb.mvm_t(X[:, :7])[:, :7] for _ in range(2)])

    a = reads(7)
    assert a.tobytes() == reads(7).tobytes(), "same config + same seed -> same bits"
    assert not np.array_equal(a, reads(8))


def test_read_noise_can_be_switched_off():
    dev = read_noise_device("additive")
    W, X = rand((9, 7), seed=5), rand((3, 9), seed=6)
    xb = Crossbar(dev, tile=(4, 4), read_noise=False).program(W)
    y = xb.mvm(X)
    assert np.array_equal(y, xb.mvm(X))
    assert_float_close(y, X @ xb.weights(), np.abs(X) @ (np.abs(xb.weights()) + 3))


# ---- programming noise, device-to-device spread, faults ------------------------------------------

def test_program_noise():
    """std(G - target) = program_noise_rel * window; mid-window targets so clipping is negligible."""
    rel = 0.01
    dev = Device.from_dict({"name": "write-noise", "g_min_us": 1.0, "g_max_us": 10.0,
                            "program_noise_rel": rel})
    xb = Crossbar(dev, mapping="offset", seed=3)
    W = np.zeros((100, 60))                     # offset mapping: w = 0 sits mid-window
    target = 5.5
    sd = rel * dev.window_us
    errs = []
    for _ in range(2):
        xb.program(W)
        err = (xb.conductances()[0] - target).ravel()
        n = err.size
        assert abs(err.mean()) < 5 * sd / np.sqrt(n)
        assert abs(err.std(ddof=1) - sd) < 5 * sd / np.sqrt(2 * n)
        errs.append(err)
    assert abs(np.corrcoef(errs[0], errs[1])[0, 1]) < 5 / np.sqrt(n), "fresh draws at each program()"
    assert xb.stats()["programs"] == 2


def test_program_noise_stays_in_window():
    dev = IDEAL.with_(program_noise_rel=0.3)
    xb = Crossbar(dev, seed=0).program(rand((50, 50), seed=0))
    gp, gn = xb.conductances()
    assert gp.min() >= 0 and gp.max() <= 1 and gn.min() >= 0 and gn.max() <= 1


def test_device_to_device_spread():
    rel = 0.05
    dev = Device.from_dict({"name": "spread", "g_min_us": 1.0, "g_max_us": 10.0, "g_d2d_rel": rel})
    xb = Crossbar(dev, seed=5)
    shape = (80, 50)
    up, down = np.ones(shape), -np.ones(shape)
    gp_hi, gn_lo = xb.program(up).conductances()      # G+ at its own g_max, G- at its own g_min
    gp_lo, gn_hi = xb.program(down).conductances()
    n = gp_hi.size
    for g, nominal in ((gp_hi, 10.0), (gn_hi, 10.0), (gp_lo, 1.0), (gn_lo, 1.0)):
        rel_dev = g.ravel() / nominal - 1
        assert abs(rel_dev.mean()) < 5 * rel / np.sqrt(n)
        assert abs(rel_dev.std(ddof=1) - rel) < 5 * rel / np.sqrt(2 * n)
    # Per-device window g_max - g_min: independent relative spreads of both ends.
    window = (gp_hi - gp_lo).ravel()
    sd = rel * np.hypot(10.0, 1.0)
    assert abs(window.mean() - 9.0) < 5 * sd / np.sqrt(n)
    assert abs(window.std(ddof=1) - sd) < 5 * sd / np.sqrt(2 * n)
    # Persistent: reprogramming finds the same devices, and targets scale within each window.
    assert np.array_equal(xb.program(up).conductances()[0], gp_hi)
    mid = xb.program(np.full(shape, 0.5)).conductances()[0]
    np.testing.assert_allclose(mid, gp_lo + 0.5 * (gp_hi - gp_lo), rtol=1e-12)


def test_stuck_at_faults():
    on, off = 0.05, 0.08
    dev = IDEAL.with_(stuck_on_rate=on, stuck_off_rate=off)
    xb = Crossbar(dev, mapping="offset", seed=9)
    W = rand((100, 100), seed=10, lo=-0.9, hi=0.9)   # offset targets in (0.05, 0.95): never a rail
    g = xb.program(W).conductances()[0]
    n = g.size
    stuck_on, stuck_off = g == 1.0, g == 0.0
    for count, rate in ((stuck_on.sum(), on), (stuck_off.sum(), off)):
        assert abs(count - n * rate) < 5 * np.sqrt(n * rate * (1 - rate))
    s = xb.stats()
    assert s["stuck_on"] == stuck_on.sum() and s["stuck_off"] == stuck_off.sum()
    # Whatever is programmed, the same devices sit at the rails.
    for W2 in (rand((100, 100), seed=11, lo=-0.9, hi=0.9), np.ones((100, 100)), -np.ones((100, 100))):
        g2 = xb.program(W2).conductances()[0]
        assert np.all(g2[stuck_on] == 1.0) and np.all(g2[stuck_off] == 0.0)
    healthy = ~(stuck_on | stuck_off)
    np.testing.assert_allclose(g2[healthy], 0.0, atol=1e-12)   # last W2 = -1 -> g_min
    assert xb.stats()["stuck_on"] == s["stuck_on"]


def test_stuck_at_faults_differential_counts_both_devices():
    on, off = 0.03, 0.06
    xb = Crossbar(IDEAL.with_(stuck_on_rate=on, stuck_off_rate=off), seed=2)
    W = rand((60, 50), seed=3, lo=0.05, hi=0.95)       # G+ mid-window, G- at g_min
    gp, gn = xb.program(W).conductances()
    s = xb.stats()
    assert s["devices"] == 2 * s["cells"] == 2 * W.size
    n = s["devices"]
    for count, rate in ((s["stuck_on"], on), (s["stuck_off"], off)):
        assert abs(count - n * rate) < 5 * np.sqrt(n * rate * (1 - rate))
    # Visible ones: any device at g_max is stuck on; a G+ at g_min is stuck off.
    assert s["stuck_on"] == np.sum(gp == 1.0) + np.sum(gn == 1.0)
    assert np.sum(gp == 0.0) <= s["stuck_off"]


# ---- drift --------------------------------------------------------------------------------------

DRIFT = IDEAL.with_(drift_nu_mean=0.05, drift_nu_std=0.01, drift_t0_s=20.0)


def test_drift_power_law():
    xb = Crossbar(DRIFT, mapping="offset", seed=4).program(rand((100, 60), seed=5, lo=-0.9, hi=0.9))
    g0 = xb.conductances()[0]
    w0 = xb.weights()
    nus = []
    for t in (2000.0, 2e6):
        g = xb.at(t).conductances()[0]
        nus.append(-np.log(g / g0).ravel() / np.log(t / 20.0))
    nu = nus[0]
    n = nu.size
    assert abs(nu.mean() - 0.05) < 5 * 0.01 / np.sqrt(n)
    assert abs(nu.std(ddof=1) - 0.01) < 5 * 0.01 / np.sqrt(2 * n)
    np.testing.assert_allclose(nus[1], nus[0], rtol=1e-9, err_msg="one nu per device, whatever t")
    # The original is not modified.
    assert np.array_equal(xb.conductances()[0], g0) and np.array_equal(xb.weights(), w0)
    assert xb.t_s is None and xb.stats()["t_s"] is None
    drifted = xb.at(2000.0)
    assert drifted.t_s == 2000.0 and drifted.stats()["t_s"] == 2000.0
    X = rand((4, 100), seed=6)
    assert_float_close(drifted.mvm(X), X @ drifted.weights(), np.abs(X) @ (np.abs(drifted.weights()) + 3))


def test_drift_nu_persists_across_programs():
    xb = Crossbar(DRIFT, mapping="offset", seed=4)
    nus = []
    for seed in (1, 2):
        xb.program(rand((30, 20), seed=seed, lo=-0.9, hi=0.9))
        g0 = xb.conductances()[0]
        nus.append(-np.log(xb.at(1e4).conductances()[0] / g0) / np.log(1e4 / 20.0))
    np.testing.assert_allclose(nus[0], nus[1], rtol=1e-9)


@pytest.mark.parametrize("t", [1e-3, 5.0, 20.0])
def test_no_drift_before_t0(t):
    xb = Crossbar(DRIFT, seed=4).program(rand((10, 8), seed=5))
    d = xb.at(t)
    assert np.array_equal(d.weights(), xb.weights())
    assert np.array_equal(d.conductances()[0], xb.conductances()[0])


def test_drift_compensation_restores_summed_output():
    W = rand((50, 12), seed=7)
    xb = Crossbar(DRIFT.with_(drift_nu_std=0.03), seed=8).program(W)
    ones = np.ones((1, 50))
    before = np.abs(ones @ xb.weights()).sum()
    raw = xb.at(1e5)
    comp = xb.at(1e5, compensate=True)
    assert np.abs(ones @ raw.weights()).sum() < 0.8 * before
    np.testing.assert_allclose(np.abs(ones @ comp.weights()).sum(), before, rtol=1e-9)
    np.testing.assert_allclose(np.abs(comp.mvm(ones)).sum(), before, rtol=1e-5)
    assert comp.drift_compensation > 1 and comp.stats()["drift_compensation"] == comp.drift_compensation
    assert xb.drift_compensation == 1.0 and raw.drift_compensation == 1.0


def test_drift_does_not_touch_the_original_counters():
    xb = Crossbar(DRIFT, adc_bits=8, seed=1).program(rand((10, 8), seed=5))
    X = rand((2, 10), seed=6)
    xb.mvm(X)
    s = xb.stats()
    d = xb.at(100.0)
    d.mvm(X)
    d.mvm(X)
    assert xb.stats()["mvm_calls"] == s["mvm_calls"] == 1
    assert d.stats()["mvm_calls"] == 3


# ---- stats -------------------------------------------------------------------------------------

def test_stats_tiles_devices_conversions():
    W = rand((784, 100), seed=0)
    xb = Crossbar(IDEAL, tile=(64, 64), adc_bits=8).program(W)
    s = xb.stats()
    assert s["tiles"] == 13 * 2 == 26
    assert s["cells"] == 784 * 100 and s["devices"] == 2 * 784 * 100
    assert s["device_capacity"] == 26 * 64 * 64 * 2
    assert s["utilization"] == pytest.approx(784 * 100 / (26 * 64 * 64))
    assert s["shape"] == (784, 100) and s["planes"] == 1
    xb.mvm(rand((5, 784), seed=1))
    assert xb.stats()["adc_conversions"] == 13 * 5 * 100          # T * B * N
    xb.mvm(rand((3, 784), seed=2))
    assert xb.stats()["adc_conversions"] == 13 * 5 * 100 + 13 * 3 * 100
    xb.mvm_t(rand((2, 100), seed=3))
    s = xb.stats()
    assert s["adc_conversions"] == 13 * 8 * 100 + 2 * 2 * 784
    assert s["mvm_calls"] == 2 and s["mvm_t_calls"] == 1 and s["reads"] == 3

    off = Crossbar(IDEAL, tile=(64, 64), mapping="offset").program(W).stats()
    assert off["devices"] == off["cells"] == 784 * 100
    sliced = Crossbar(IDEAL.with_(bits=2), tile=(64, 64), slices=2).program(W).stats()
    assert sliced["planes"] == 2 and sliced["tiles"] == 52


def test_dac_conversions_counted():
    xb = Crossbar(IDEAL, tile=(8, 8), dac_bits=6).program(rand((10, 4), seed=0))
    xb.mvm(rand((3, 10), seed=1))
    assert xb.stats()["dac_conversions"] == 30


# ---- bad input: xbar errors, never a numpy or numba traceback --------------------------------------

@pytest.fixture()
def programmed():
    return Crossbar(IDEAL, tile=(4, 4), adc_bits=8).program(rand((6, 5), seed=0))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_rejected(bad):
    W = rand((6, 5), seed=0)
    W[2, 3] = bad
    with pytest.raises(ShapeError, match="NaN or inf"):
        Crossbar(IDEAL).program(W)
    with pytest.raises(ShapeError, match="NaN or inf"):
        Crossbar(IDEAL).program(rand((6, 5), seed=0), b=np.array([0, 0, bad, 0, 0]))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_inputs_rejected(programmed, bad):
    X = rand((2, 6), seed=1)
    X[1, 4] = bad
    with pytest.raises(ShapeError, match="NaN or inf"):
        programmed.mvm(X)
    with pytest.raises(ShapeError, match="NaN or inf"):
        programmed.mvm_t(X[:, :5])


@pytest.mark.parametrize("io", ["analog", "dynamic DAC", "fixed DAC"])
def test_refused_inputs_name_the_value_and_count_no_read(io):
    # NaN, inf and a float64 value beyond float32 are refused, naming the first: by as_matrix or by
    # the dynamic DAC's own pass before the read is counted; analog inputs on the read's output
    # (the read happened and counts, as a run's overflowing read does)
    kw = {"analog": {}, "dynamic DAC": {"adc_bits": 8}, "fixed DAC": {"adc_bits": 8, "dac_range": 2.0}}[io]
    xb = Crossbar(IDEAL, tile=(4, 4), **kw).program(rand((6, 5), seed=0))
    for bad, message in ((np.nan, r"NaN or inf \(first at index \(1, 4\)\)"),
                         (1e39, r"value 1e\+39 at index \(1, 4\) is beyond the float32 range")):
        X = rand((3, 6), seed=1).astype(np.float64)
        X[1, 4] = bad
        X[2, 0] = bad
        with np.errstate(all="ignore"), pytest.raises(ShapeError, match=message):   # (analog: read, then refused)
            xb.mvm(X)
    refused = 2 if io == "analog" else 0
    assert xb.stats()["mvm_calls"] == refused
    xb.mvm(rand((3, 6), seed=1))
    assert xb.stats()["mvm_calls"] == refused + 1
    # mvm_t alike (its input times the column gain meets the DAC)
    for bad, message in ((np.inf, r"NaN or inf \(first at index \(2, 3\)\)"),
                         (1e39, r"value 1e\+39 at index \(2, 3\) is beyond the float32 range")):
        E = rand((3, 5), seed=2).astype(np.float64)
        E[2, 3] = bad
        with np.errstate(all="ignore"), pytest.raises(ShapeError, match=message):
            xb.mvm_t(E)
    assert xb.stats()["mvm_t_calls"] == refused
    xb.mvm_t(rand((3, 5), seed=2))
    assert xb.stats()["mvm_t_calls"] == refused + 1


@pytest.mark.parametrize("X", [
    np.ones(6), np.ones((1, 2, 6)), np.float32(1.0),            # wrong ndim
    np.ones((2, 5)), np.ones((2, 7)),                           # wrong width
    np.array([[1, None, 0, 0, 0, 0]], dtype=object), np.ones((2, 6), complex),
    np.array([["a"] * 6]), None,
], ids=["1d", "3d", "scalar", "narrow", "wide", "object", "complex", "str", "None"])
def test_bad_inputs_rejected(programmed, X):
    with pytest.raises(ShapeError):
        programmed.mvm(X)


@pytest.mark.parametrize("W", [
    np.ones(6), np.ones((2, 2, 2)), np.ones((0, 3)), np.ones((3, 0)),
    np.array([[1, None]], dtype=object), np.ones((2, 2), complex),
], ids=["1d", "3d", "no-rows", "no-cols", "object", "complex"])
def test_bad_weights_rejected(W):
    with pytest.raises(ShapeError):
        Crossbar(IDEAL).program(W)


def test_wrong_width_messages(programmed):
    with pytest.raises(ShapeError, match="last dimension 6"):
        programmed.mvm(np.ones((2, 5)))
    with pytest.raises(ShapeError, match="last dimension 5"):
        programmed.mvm_t(np.ones((2, 6)))


def test_ragged_input_rejected(programmed):
    with pytest.raises(XbarError):
        programmed.mvm([[1, 2, 3, 4, 5, 6], [1, 2]])


def test_empty_batch_without_adc():
    xb = Crossbar(IDEAL, tile=(4, 4)).program(rand((6, 5), seed=0))
    assert xb.mvm(np.zeros((0, 6))).shape == (0, 5)


def test_empty_batch_with_adc(programmed):
    try:
        y = programmed.mvm(np.zeros((0, 6)))
    except XbarError:
        return
    assert y.shape == (0, 5)


@pytest.mark.parametrize("kw, match", [
    ({"tile": (0, 64)}, "tile"),
    ({"tile": (64, -1)}, "tile"),
    ({"tile": 64}, "tile"),
    ({"tile": (8, 8, 8)}, "tile"),
    ({"adc_bits": 1}, r"adc_bits.*\[2, 16\]"),
    ({"adc_bits": 17}, r"adc_bits.*\[2, 16\]"),
    ({"adc_bits": 8.0}, "adc_bits"),
    ({"dac_bits": 1}, "dac_bits"),
    ({"mapping": "diff"}, "'differential', 'offset'"),
    ({"range": "globl"}, "'global', 'local'"),
    ({"quant": "sym"}, "'asymm', 'symm'"),
    ({"gain": "row"}, "'layer', 'column'"),
    ({"bias": "analog"}, "'digital', 'row'"),
    ({"adc_range": "max"}, "'calibrated', 'physical'"),
    ({"adc_range": -1.0}, "adc_range"),
    ({"adc_percentile": 0}, "adc_percentile"),
    ({"dac_range": "fixed"}, "dac_range"),
    ({"w_range": (1.0, 1.0)}, "w_range"),
    ({"w_range": (1.0, -1.0)}, "w_range"),
    ({"w_range": (0.0, np.inf)}, "w_range"),
    ({"w_range": 1.0}, "w_range"),
    ({"seed": -1}, "seed"),
    ({"seed": 1.5}, "seed"),
    ({"slices": 0}, "slices"),
    ({"quant": "asymm"}, "set quant_bits"),        # analog device: no default quantizer bits
])
def test_bad_config_rejected(kw, match):
    with pytest.raises(ConfigError, match=match):
        Crossbar(IDEAL, **kw)


def test_device_must_be_a_device():
    with pytest.raises(ConfigError, match="Device"):
        Crossbar("ideal")


def test_seed_too_large_rejected_at_construction():
    with pytest.raises(ConfigError, match="seed"):
        Crossbar(IDEAL, adc_bits=8, seed=2 ** 64)


def test_fractional_tile_rejected():
    with pytest.raises(ConfigError, match="tile"):
        Crossbar(IDEAL, tile=(4.5, 4))


def test_read_before_program():
    xb = Crossbar(IDEAL)
    for call in (lambda: xb.mvm(np.ones((1, 3))), lambda: xb.mvm_t(np.ones((1, 3))), xb.weights,
                 xb.stats, xb.conductances, lambda: xb.at(100.0), lambda: xb.calibrate(np.ones((1, 3)))):
        with pytest.raises(ShapeError, match="program"):
            call()


def test_program_with_different_shape():
    xb = Crossbar(IDEAL).program(np.zeros((6, 5)))
    with pytest.raises(ShapeError, match=r"\(6, 5\)"):
        xb.program(np.zeros((5, 6)))
    xr = Crossbar(IDEAL, bias="row").program(np.zeros((6, 5)))
    with pytest.raises(ShapeError):
        xr.program(np.zeros((6, 5)), b=np.zeros(5))       # a bias row changes the stored shape
    xb.program(np.zeros((6, 5)), b=np.zeros(5))           # a digital bias does not


def test_bad_bias_rejected():
    with pytest.raises(ShapeError):
        Crossbar(IDEAL).program(np.zeros((6, 5)), b=np.zeros(4))


@pytest.mark.parametrize("t", [0, -1.0, np.nan, np.inf, "1h"])
def test_bad_drift_time(programmed, t):
    with pytest.raises(ConfigError, match="seconds"):
        programmed.at(t)


# ---- pruning masks ------------------------------------------------------------------------------

@pytest.mark.parametrize("device,quant,rng_kind", [("ideal", "asymm", "local"), ("rram-4bit", None, "global"),
                                                   ("rram-4bit", "asymm", "global")])
def test_masked_cells_stay_unprogrammed_and_read_as_zero(device, quant, rng_kind):
    """Pruned cells: both devices at g_min (no write noise, even on a grid without a zero level),
    zero effective weight (the digital offset of asymm included), and no device or tile in stats."""
    from xbar import Device
    rng = np.random.default_rng(0)
    W = rng.normal(0, 0.4, (150, 70)).astype(np.float32)
    mask = rng.random(W.shape) < 0.5
    mask[64:128, :] = False                      # a whole row band: the tiles (64x64) in it are released
    dev = Device.preset(device)
    kw = {"quant": quant, "quant_bits": 3} if quant else {}
    if quant and dev.bits is None:
        dev = dev.with_(bits=4)
    xb = Crossbar(dev, tile=(64, 64), range=rng_kind, gain="column" if rng_kind == "local" else "layer",
                  read_noise=False, seed=3, **kw)
    xb.program(W * mask, mask=mask)
    gp, gn = xb.conductances()
    assert np.all(gp[:, ~mask] == dev.g_min_us) and np.all(gn[:, ~mask] == dev.g_min_us)
    Weff = xb.weights()
    assert np.all(Weff[~mask] == 0)
    X = rng.random((9, 150)).astype(np.float32)
    np.testing.assert_allclose(xb.mvm(X), X @ Weff, rtol=1e-4, atol=1e-4)
    E = rng.normal(size=(9, 70)).astype(np.float32)
    np.testing.assert_allclose(xb.mvm_t(E), E @ Weff.T, rtol=1e-4, atol=1e-4)
    st = xb.stats()
    assert st["devices"] == 2 * int(mask.sum()) and st["pruned_cells"] == int((~mask).sum())
    assert st["tiles_allocated"] == 3 * 2 and st["tiles"] == 2 * 2     # the middle row of tiles is empty
    xb.program(W)                                # no mask: everything in use again
    assert xb.stats()["tiles"] == 6 and xb.stats()["pruned_cells"] == 0


def test_mask_is_validated():
    from xbar import Device
    xb = Crossbar(Device.preset("ideal"))
    with pytest.raises(ShapeError, match="mask: expected a boolean array of shape"):
        xb.program(np.zeros((4, 3), np.float32), mask=np.ones((3, 4), bool))


@pytest.mark.parametrize("tile,mapping,adc_bits,shape", [((64, 64), "differential", 8, (70, 130)),
                                                         ((4, 4), "offset", None, (9, 7)),
                                                         ((16, 8), "differential", 6, (33, 17))])
def test_uniform_read_variance_needs_no_variance_product(tile, mapping, adc_bits, shape):
    # additive read noise: every cell has the same variance, so a tile output's variance is that
    # constant times the sum of x² over the tile's inputs; equal to the general product up to
    # float32 rounding, forward and transposed
    dev = read_noise_device("additive")
    W, X = rand(shape, seed=5), rand((5, shape[0]), seed=6)
    E = rand((5, shape[1]), seed=7)
    xb = Crossbar(dev, tile=tile, mapping=mapping, adc_bits=adc_bits, seed=3).program(W)
    rd = xb.read
    assert rd.var_uniform() is not None and rd.fwd_stacks()[1] is None
    for way, x in (("fwd", X), ("bwd", E)):
        M, V = (a.copy() for a in rd.tile_currents(x, way)[:2])   # views of reused buffers
        rd.cache.clear()
        rd.cache["var-uniform"] = False            # force the general path: products against var
        M2, V2, _ = rd.tile_currents(x, way)
        np.testing.assert_array_equal(M, M2)
        assert V.shape[2] == 1   # one variance per tile row: the same for every output
        np.testing.assert_allclose(np.broadcast_to(V, V2.shape), V2, rtol=1e-5, atol=1e-7 * float(np.abs(V2).max()))
        rd.cache.clear()
    mult = Crossbar(read_noise_device("multiplicative"), tile=tile, seed=3).program(W)
    assert mult.read.var_uniform() is None


@pytest.mark.parametrize("kind,tile", [("multiplicative", (64, 64)), ("additive", (32, 48))])
def test_noisy_tile_reads_same_bits_on_one_and_two_threads(kind, tile):
    """A read split over row blocks (two threads, one BLAS thread each) gives the bits of the
    read on one thread: every draw belongs to (read, tile, global row, output)."""
    from xbar.tile.rows import row_blocks
    W, X = rand((300, 130), seed=1), rand((257, 300), seed=2)
    E = rand((257, 130), seed=3)
    outs = []
    n_threads = numba.get_num_threads()
    for n in (1, 2):
        try:
            numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
            assert len(row_blocks(257)) > 1   # blocks of rows, shared by the threads
            xb = Crossbar(read_noise_device(kind), tile=tile, adc_bits=8, seed=4).program(W).calibrate(X, E)
            outs.append([xb.mvm(X), xb.mvm(X), xb.mvm_t(E)])
        finally:
            numba.set_num_threads(n_threads)
    for a, b in zip(*outs):
        assert a.tobytes() == b.tobytes()
    assert not np.array_equal(outs[0][0], outs[0][1]), "each read draws fresh noise"


@pytest.mark.parametrize("kind,tile", [("multiplicative", (64, 64)), ("additive", (32, 48))])
def test_dac_squares_give_the_bits_of_squares_by_block(kind, tile, monkeypatch):
    """Above SQUARE_MIN_BYTES per row block the dynamic DAC squares its outputs in its pass and the
    tile read takes them: the same bits as squaring block by block, forward and transposed, and
    one read advances the noise stream as before."""
    from xbar.tile import read as rd
    W, X, E = rand((40, 70), seed=1), rand((900, 40), seed=2), rand((900, 70), seed=3)
    outs, given = [], []
    by_tile = rd.ReadPath._read_by_tile
    monkeypatch.setattr(rd.ReadPath, "_read_by_tile",
                        lambda self, xs, way, x2_all=None: given.append(x2_all is not None) or by_tile(self, xs, way, x2_all))
    for threshold in (1 << 62, 0):   # never, always
        monkeypatch.setattr(rd, "SQUARE_MIN_BYTES", threshold)
        xb = Crossbar(read_noise_device(kind), tile=tile, adc_bits=8, seed=4).program(W).calibrate(X, E)
        outs.append([xb.mvm(X), xb.mvm(X), xb.mvm_t(E), xb.read.reads])
        assert xb.read._squares is None   # taken by the read (no (B, n) array held after it)
    assert given == [False] * 3 + [True] * 3
    for a, b in zip(*outs):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


def test_a_forked_child_reads_with_a_pool_of_its_own():
    """The row-block pool is per process: a child forked after the parent used it still reads."""
    import multiprocessing as mp
    if "fork" not in mp.get_all_start_methods():
        pytest.skip("no fork on this platform")
    W, X = rand((300, 130), seed=1), rand((600, 300), seed=2)
    xb = Crossbar(read_noise_device("multiplicative"), adc_bits=8, seed=4).program(W).calibrate(X)
    n_threads = numba.get_num_threads()
    try:
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        xb.mvm(X)                              # the parent's pool exists now (with two threads)
        with mp.get_context("fork").Pool(1) as pool:
            shape = pool.apply_async(_read_shape, (xb, X)).get(timeout=120)
    finally:
        numba.set_num_threads(n_threads)
    assert shape == (600, 130)


def _read_shape(xb, X):
    return xb.mvm(X).shape
