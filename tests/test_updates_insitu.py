"""In-situ update schemes: mixed precision (accumulator + device steps) and plain pulsed SGD."""

from __future__ import annotations

import numpy as np
import pytest

from xbar import ConfigError, Device
from xbar.device import pulse_curve_a, pulse_number, pulse_response
from xbar.nn import NetworkSpec
from xbar.train import UPDATES, TrainConfig, Trainer
from xbar.train.loop import evaluate, load_data
from xbar.train.optim import make_optimizer
from xbar.train.rules import make_rule
from xbar.train.updates import DeviceSetup, make_update, pulse_count, split_pair

IDEAL = Device.preset("ideal")
AGSI = Device.preset("agsi")
# A linear, noiseless pulse device: 9 states, one pulse = 1/8 of the window.
LINEAR = Device(name="linear", g_min_us=0.0, g_max_us=1.0, pulse_levels=9)


def one_layer(update, device, W, b, w_max=0.75, quant="device", bits=None, rng="global"):
    """A single identity Dense layer (in, out) = W.shape on its crossbar, set to W and b."""
    spec = NetworkSpec.from_dict({"hidden": []})
    net = spec.build(W.shape[0], W.shape[1], np.random.default_rng(0))
    net.layers[0].set_weights(np.asarray(W, np.float32), np.asarray(b, np.float32))
    setup = DeviceSetup(device, bits, quant, rng, (-w_max, w_max), "layer")
    up = make_update(update, setup, np.random.default_rng(1))
    up.attach(net, [3], [])
    return net.layers[0], up


def step(layer, up, dW, db=None):
    """What an optimizer does to the stored weights, then the scheme's after_step."""
    layer.W += np.asarray(dW, np.float32)
    if db is not None:
        layer.b += np.asarray(db, np.float32)
    up.after_step(_Net(layer), [])


class _Net:
    def __init__(self, layer):
        self.layers = [layer]


def test_names_are_registered():
    assert {"mixed", "pulse"} <= set(UPDATES)
    with pytest.raises(ConfigError, match="'mixed'.*'pulse'"):
        make_update("mixd", None)


# ---- mixed precision: the accumulator -------------------------------------------------------------

def test_mixed_accumulates_small_updates_and_fires_when_crossing_epsilon():
    # 2-bit device pair on [-0.75, 0.75]: levels k·ε, k in -3..3, ε = 0.75 / 3 = 0.25.
    layer, up = one_layer("mixed", IDEAL.with_(bits=2), np.zeros((3, 2)), np.zeros(2), bits=2)
    st = up.states[0]
    assert st.eps == 0.25
    for i in range(3):   # 3 x 1/16 = 0.1875 < ε: nothing reaches the devices
        step(layer, up, np.full((3, 2), 1 / 16), np.full(2, -1 / 16))
        assert np.all(layer.W == 0) and np.all(layer.b == 0)
        np.testing.assert_array_equal(st.chi[:3], (i + 1) / 16)
        np.testing.assert_array_equal(st.chi[3], -(i + 1) / 16)
    step(layer, up, np.full((3, 2), 1 / 16), np.full(2, -1 / 16))   # reaches ε exactly: one step
    np.testing.assert_allclose(layer.W, 0.25, atol=1e-7)
    np.testing.assert_allclose(layer.b, -0.25, atol=1e-7)
    assert np.all(st.chi == 0)
    assert up.counters["writes"] == 8


def test_mixed_keeps_the_remainder_and_handles_signs_and_saturation():
    layer, up = one_layer("mixed", IDEAL.with_(bits=2), np.full((3, 2), 0.25), np.zeros(2), bits=2)
    st = up.states[0]
    dW = np.array([[21, -21], [13, -13], [37, 64]]) / 64    # ε = 16/64
    step(layer, up, dW, np.array([-15, 15]) / 64)
    n = np.trunc(dW * 4)                                     # [[1, -1], [0, 0], [2, 4]]: towards zero
    np.testing.assert_allclose(layer.W, np.clip(0.25 + n * 0.25, -0.75, 0.75), atol=1e-7)
    assert layer.W[2, 1] == pytest.approx(0.75)              # 0.25 + 4 ε saturates at the top level
    np.testing.assert_allclose(st.chi[:3], dW - n * 0.25, atol=1e-12)   # nominal n·ε subtracted
    np.testing.assert_allclose(st.chi[3], [-15 / 64, 15 / 64])          # |χ| < ε: no step, kept
    np.testing.assert_allclose(layer.W, layer.crossbar.weights(), atol=1e-7)   # stored = devices
    np.testing.assert_allclose(layer.b, layer.crossbar.bias_weights(), atol=1e-7)


def test_mixed_on_noisy_levels_rewrites_only_the_cells_that_change():
    dev = Device.preset("rram-4bit")
    layer, up = one_layer("mixed", dev, np.zeros((20, 6)), np.zeros(6), w_max=1.5)   # ε = 0.1
    g0 = [g.copy() for g in layer.crossbar.conductances()]
    dW = np.zeros((20, 6))
    dW[::3, 1] = 0.1001
    step(layer, up, dW)
    g1 = layer.crossbar.conductances()
    moved = np.zeros((21, 6), bool)
    moved[:20][dW > 0] = True
    for a, b in zip(g0, g1):
        np.testing.assert_array_equal(a[0][~moved], b[0][~moved])
    assert np.all(g1[0][0][moved] != g0[0][0][moved])


# ---- mixed equals a plain float-accumulator simulation on a linear noiseless pulse device -----------

def test_mixed_on_linear_pulse_device_equals_a_reference_accumulator():
    from xbar.data import load
    X, y = load("digits", "train")
    net = NetworkSpec.preset("digits-mlp").build(64, 10, np.random.default_rng(0))
    setup = DeviceSetup(LINEAR, None, "device", "init", (-1.0, 1.0), "layer")
    up = make_update("mixed", setup)
    up.attach(net, [0, 1], [])
    opt = make_optimizer("adam", net.params(), 3e-3)
    rule = make_rule("bp")
    ref = []
    for layer, s, st in zip(net.layers, up.setups, up.states):
        m = s.w_range[1]
        eps = m / 8                                    # one pulse of a 9-state linear device
        assert st.eps == pytest.approx(eps)
        w = np.vstack([layer.W, layer.b]).astype(np.float64)
        np.testing.assert_allclose(w / eps, np.round(w / eps), atol=1e-5)   # programmed on the grid
        ref.append({"w": w, "chi": np.zeros_like(w), "eps": eps, "m": m})
    fired = 0
    for s in range(0, 640, 32):
        out, caches = net.forward(X[s:s + 32])
        _, e = net.loss(out, y[s:s + 32])
        deltas = rule.deltas(net, caches, e)
        before = [np.vstack([layer.W, layer.b]).astype(np.float64) for layer in net.layers]
        opt.step([g for layer, d, c in zip(net.layers, deltas, caches) for g in layer.grads(d, c)])
        stepped = [np.vstack([layer.W, layer.b]).astype(np.float64) for layer in net.layers]
        up.after_step(net, [])
        for layer, r, b0, b1, st in zip(net.layers, ref, before, stepped, up.states):
            r["chi"] += b1 - b0
            n = np.trunc(r["chi"] / r["eps"])
            r["chi"] -= n * r["eps"]
            r["w"] = np.clip(r["w"] + n * r["eps"], -r["m"], r["m"])
            fired += int(np.count_nonzero(n))
            np.testing.assert_allclose(np.vstack([layer.W, layer.b]), r["w"], atol=1e-6)
            np.testing.assert_allclose(st.chi, r["chi"], atol=1e-9)
    assert fired > 100 and up.counters["pulses"] >= fired


# ---- pulse: NeuroSim's count, and the response curve -------------------------------------------------

def test_pulse_count_formula():
    dw = np.array([0.0, 0.004, 0.0051, -0.0051, 0.0149, -0.5, 0.2])
    # n = round(Δw / (w_max - w_min) · levels), span 2, 200 levels: one pulse per 0.01
    np.testing.assert_array_equal(pulse_count(dw, 2.0, 200), [0, 0, 1, -1, 1, -50, 20])


def test_pulse_loses_small_updates_and_mixed_keeps_them():
    W = np.zeros((4, 3))
    for name, after in (("pulse", 0.0), ("mixed", 0.25)):
        layer, up = one_layer(name, LINEAR, W, np.zeros(3), w_max=1.0)   # ε = 1/8
        for _ in range(6):
            step(layer, up, np.full((4, 3), 0.05))                         # 0.4 ε each, 2.4 ε in all
        np.testing.assert_allclose(layer.W, after, atol=1e-7)
    layer, up = one_layer("pulse", LINEAR, W, np.zeros(3), w_max=1.0)
    step(layer, up, np.full((4, 3), 2.6 / 8))                              # 2.6 ε -> 3 pulses at once
    np.testing.assert_allclose(layer.W, 3 / 8, atol=1e-7)
    assert up.counters["pulses"] == 3 * 4 * 3


def test_pair_hands_over_at_zero():
    # n > 0 first takes G- down to g_min, then raises G+; the linear device makes counts exact.
    gp = np.array([[0.0, 0.5, 0.0]])
    gn = np.array([[0.25, 0.0, 0.0]])
    n_pos, n_neg = split_pair(np.array([[3.0, -5.0, -2.0]]), gp, gn, LINEAR)
    np.testing.assert_array_equal(n_pos, [[1, -4, 0]])
    np.testing.assert_array_equal(n_neg, [[-2, 1, 2]])


def test_pulse_on_agsi_moves_along_the_nonlinear_curves():
    dev = AGSI.with_(c2c_rel=0.0)
    layer, up = one_layer("pulse", dev, np.zeros((2, 2)), np.zeros(2), w_max=1.0)
    eps, P = up.states[0].eps, dev.pulse_levels
    assert eps == pytest.approx(1 / (P - 1))
    a_ltp, a_ltd = pulse_curve_a(dev.nonlinearity_ltp, P), pulse_curve_a(dev.nonlinearity_ltd, P)
    lo, hi = dev.g_min_us, dev.g_max_us
    weights = []
    for s in range(1, 9):                          # +4 pulses per step: G+ climbs the LTP curve
        step(layer, up, np.full((2, 2), 4 * eps))
        gp, gn = layer.crossbar.conductances()
        np.testing.assert_allclose(gp[0][:2], pulse_response(4 * s, a_ltp, P, lo, hi), rtol=1e-9)
        np.testing.assert_allclose(gn[0], lo)
        weights.append(layer.W[0, 0])
    inc = np.diff([0.0] + weights)
    assert np.all(inc > 0) and inc[0] > 1.2 * inc[-1]       # steps shrink towards g_max
    assert inc[0] > 4 * eps                                  # and start above the linear step
    g_top = pulse_response(32, a_ltp, P, lo, hi)
    step(layer, up, np.full((2, 2), -6 * eps))              # -6: G+ descends the LTD curve
    p_ltd = pulse_number(lo + hi - g_top, a_ltd, P, lo, hi)
    expect = lo + hi - pulse_response(p_ltd + 6, a_ltd, P, lo, hi)
    np.testing.assert_allclose(layer.crossbar.conductances()[0][0][:2], expect, rtol=1e-9)
    drop = weights[-1] - layer.W[0, 0]
    assert drop > 0 and abs(drop - 6 * eps) > 0.5 * 6 * eps   # far from the linear 6 ε


def test_pulse_on_agsi_with_c2c_noise_scatters_around_the_curve():
    dev = AGSI
    layer, up = one_layer("pulse", dev, np.zeros((60, 50)), np.zeros(50), w_max=1.0)
    eps, P = up.states[0].eps, dev.pulse_levels
    step(layer, up, np.full((60, 50), 40 * eps))
    g = layer.crossbar.conductances()[0][0, :60]
    mean = pulse_response(40, pulse_curve_a(dev.nonlinearity_ltp, P), P, dev.g_min_us, dev.g_max_us)
    sd = dev.c2c_rel * dev.window_us * np.sqrt(40)
    assert abs(g.mean() - mean) < 0.1 * sd                   # clipping at the window biases a little
    assert 0.7 * sd < g.std() < 1.05 * sd


# ---- bad setups ---------------------------------------------------------------------------------------

def test_pulse_needs_a_pulse_device():
    setup = DeviceSetup(IDEAL.with_(bits=3), 3, "device", "init", (-1.0, 1.0), "layer")
    with pytest.raises(ConfigError) as err:
        make_update("pulse", setup)
    text = str(err.value)
    assert "'ideal'" in text and "pulse_levels" in text and "agsi" in text and "taox-hfox" in text
    with pytest.raises(ConfigError, match="analog.*set bits"):
        make_update("mixed", DeviceSetup(IDEAL, None, "device", "init", (-1.0, 1.0), "layer"))
    with pytest.raises(ConfigError, match="fixed grid.*'local'"):
        make_update("mixed", DeviceSetup(AGSI, None, "device", "local", (-1.0, 1.0), "column"))
    with pytest.raises(ConfigError, match="quant = 'device'"):
        make_update("pulse", DeviceSetup(AGSI, None, "asymm", "init", (-1.0, 1.0), "layer"))


# ---- training end to end ---------------------------------------------------------------------------

def _cfg(**kw):
    base = {"network": "digits-mlp", "dataset": "digits", "quant": "device", "range": "init",
            "gain": "layer", "optimizer": "adam", "lr": 3e-3, "lr_gamma": 1.0, "batch_size": 64, "epochs": 5}
    base.update(kw)
    return TrainConfig(**base)


def _train(cfg):
    Xtr, ytr, Xte, yte = load_data(cfg)
    tr = Trainer(cfg, Xtr.shape[1], 10)
    for _ in range(cfg.epochs):
        perm = tr.shuffle.permutation(len(Xtr))
        for s in range(0, len(Xtr), cfg.batch_size):
            tr.step(Xtr[perm[s:s + cfg.batch_size]], ytr[perm[s:s + cfg.batch_size]])
    return tr, evaluate(tr.net, Xte, yte)[1]


# Thresholds sit ~5 points under the lowest of seeds 1-5 (measured, then fixed; seed 1 is used).
@pytest.mark.parametrize("kw,floor", [
    ({"update": "mixed", "device": "ideal", "bits": 2}, 76.0),   # 86.1 % (81.1-87.2 over seeds 1-5)
    ({"update": "mixed", "device": "agsi"}, 84.0),               # 92.2 % (89.7-92.5)
    ({"update": "pulse", "device": "agsi"}, 86.0),               # 91.9 % (91.4-93.1)
])
def test_in_situ_schemes_train_on_digits(kw, floor):
    tr, acc = _train(_cfg(**kw))
    assert acc > floor
    for layer in tr.net.layers:   # the stored weights are the devices' effective weights
        np.testing.assert_allclose(layer.W, layer.crossbar.weights(), atol=1e-6)
        np.testing.assert_allclose(layer.b, layer.crossbar.bias_weights(), atol=1e-6)


def test_same_seed_same_pulses():
    cfg = _cfg(update="mixed", device="agsi", epochs=1, rule="fa")
    a, b = _train(cfg), _train(cfg)
    for la, lb in zip(a[0].net.layers, b[0].net.layers):
        np.testing.assert_array_equal(la.W, lb.W)
    assert a[1] == b[1]
