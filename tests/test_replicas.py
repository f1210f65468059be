"""Replicated unit cells (``replicas``): R cells of equal significance hold each weight.

Checked against plain references: the programmed weight of R noise-free replicas equals the
single cell's; write and read noise average down by 1/R in variance (seeded statistics); a pulse
on one replica moves the weight by 1/R of a device step; the mixed scheme with replicas equals a
float accumulator on a linear device whose step is 1/R as large; replicas = 1 is the old crossbar.
"""

from __future__ import annotations

import numpy as np
import pytest

from xbar import ConfigError, Crossbar, Device, ShapeError
from xbar.checkpoint import crossbar_from_state, crossbar_state
from xbar.cost import Periphery
from xbar.nn import NetworkSpec
from xbar.store import run_key
from xbar.train import TrainConfig
from xbar.train.insitu import share_pulses
from xbar.train.updates import DeviceSetup, make_update

RNG = np.random.default_rng(7)
W = (RNG.standard_normal((90, 40)) * 0.2).astype(np.float32)
X = RNG.standard_normal((16, 90)).astype(np.float32)
# A linear, noiseless pulse device: 9 states, one pulse = 1/8 of the window.
LINEAR = Device(name="linear", g_min_us=0.0, g_max_us=1.0, pulse_levels=9)


def xb(device, replicas, **kw):
    kw = {"tile": (32, 32), "seed": 4, "range": "global", "w_range": (-0.8, 0.8), **kw}
    return Crossbar(device, replicas=replicas, **kw).program(W)


@pytest.mark.parametrize("device", ["ideal", "agsi", Device.preset("ideal").with_(bits=3)])
def test_noise_free_replicas_hold_and_read_the_same_weights(device):
    dev = Device.preset(device) if isinstance(device, str) else device
    one, three = xb(dev, 1, adc_bits=8), xb(dev, 3, adc_bits=8)
    assert three.conductances()[0].shape == (3, 90, 40)
    np.testing.assert_allclose(three.weights(), one.weights(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(three.mvm(X), one.mvm(X), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(three.mvm_t(X[:, :40]), one.mvm_t(X[:, :40]), rtol=1e-5, atol=1e-5)


def test_write_noise_variance_falls_as_one_over_replicas():
    # offset mapping keeps the devices inside their window (a differential pair parks one device at
    # g_min, where the window clips its write noise and the clipped part does not average out)
    dev = Device(name="noisy", g_min_us=1.0, g_max_us=10.0, program_noise_rel=0.05)
    err = {r: (xb(dev, r, mapping="offset").weights() - W).ravel() for r in (1, 4)}
    ratio = err[4].var() / err[1].var()
    # 3,600 weights each: the variance ratio's standard error is ~0.024 around 1/4
    assert ratio == pytest.approx(0.25, abs=0.06)


def test_read_noise_variance_falls_as_one_over_replicas():
    dev = Device(name="rn", g_min_us=1.0, g_max_us=10.0, read_noise_rel=0.05)
    var = {}
    for r in (1, 2):
        c = xb(dev, r)
        exact = X @ c.weights()
        var[r] = np.var(np.stack([c.mvm(X) - exact for _ in range(20)]))
    assert var[2] / var[1] == pytest.approx(0.5, abs=0.08)


def test_a_pulse_moves_the_weight_by_one_over_replicas_of_a_step():
    one, two = xb(LINEAR, 1, mapping="offset"), xb(LINEAR, 2, mapping="offset")
    w1, w2 = one.weights(), two.weights()
    one.pulse(np.ones((90, 40)))
    n = np.zeros((2, 90, 40))
    n[0] = 1                                   # one pulse on the first replica only
    two.pulse(n)
    step = one.weights() - w1
    moved = step != 0                          # (cells already at g_max do not move)
    assert moved.mean() > 0.5
    np.testing.assert_allclose((two.weights() - w2)[moved], step[moved] / 2, atol=1e-12)


def test_pulse_counts_must_name_every_replica():
    two = xb(LINEAR, 2, mapping="offset")
    with pytest.raises(ShapeError, match="2 replicas"):
        two.pulse(np.ones((90, 40)))
    with pytest.raises(ShapeError, match=r"\(2, 90, 40\)"):
        two.pulse(np.ones((3, 90, 40)))


@pytest.mark.parametrize("r", [2, 3, 5])
def test_shared_pulses_add_up_and_go_to_the_replicas_that_lag(r):
    level = RNG.integers(0, 4, (r, 30, 20)).astype(float)
    for _ in range(4):
        n = np.rint(RNG.standard_normal((30, 20)) * 7)
        s = share_pulses(n, level)
        np.testing.assert_array_equal(s.sum(axis=0), n)
        assert np.all(np.sign(s) * np.sign(n)[None] >= 0)          # every share has n's sign
        assert np.all(s.max(axis=0) - s.min(axis=0) <= 1)           # shares differ by a pulse at most
        spare = np.abs(s) > np.floor_divide(np.abs(n), r)[None]      # who got one of the spare pulses
        lag = np.where(n[None] < 0, -level, level)
        got = np.where(spare, lag, -np.inf).max(axis=0)
        left = np.where(~spare & (np.mod(np.abs(n), r) > 0)[None], lag, np.inf).min(axis=0)
        assert np.all(got <= left)                                  # ... the laggards, never a leader
        level = level + s


def test_mixed_with_replicas_equals_a_reference_accumulator_at_a_finer_step():
    """Mixed on R replicas of a linear noiseless device: chi fires in steps of eps = m / (R (L-1))."""
    spec = NetworkSpec.from_dict({"hidden": []})
    net = spec.build(90, 40, np.random.default_rng(0))
    net.layers[0].set_weights(np.zeros((90, 40), np.float32), np.zeros(40, np.float32))
    setup = DeviceSetup(LINEAR, None, "device", "global", (-0.8, 0.8), "layer", options={"replicas": 2})
    up = make_update("mixed", setup)
    up.attach(net, [3], [])
    layer, st = net.layers[0], up.states[0]
    eps = 0.8 / (2 * 8)
    assert st.eps == pytest.approx(eps)
    ref_w = np.zeros((91, 40))
    chi = np.zeros((91, 40))
    for _ in range(6):
        d = RNG.standard_normal((91, 40)) * 0.04
        layer.W += d[:90].astype(np.float32)
        layer.b += d[90].astype(np.float32)
        stepped = np.vstack([layer.W, layer.b]).astype(np.float64)
        chi += stepped - ref_w
        n = np.trunc(chi / eps)
        chi -= n * eps
        ref_w = np.clip(ref_w + n * eps, -0.8, 0.8)
        up.after_step(net, [])
        np.testing.assert_allclose(np.vstack([layer.W, layer.b]), ref_w, atol=1e-6)
    gp, gn = layer.crossbar.conductances()
    # spare pulses go to the lagging replica: apart from saturation, replicas stay a pulse apart
    assert np.abs((gp[0] - gn[0]) - (gp[1] - gn[1])).max() <= 1 / 8 + 1e-9


def test_replicas_one_is_the_plain_crossbar_bit_for_bit():
    dev = Device.preset("rram-4bit")
    a = Crossbar(dev, tile=(32, 32), adc_bits=8, seed=2).program(W)
    b = Crossbar(dev, tile=(32, 32), adc_bits=8, seed=2, replicas=1).program(W)
    np.testing.assert_array_equal(a.mvm(X), b.mvm(X))


def test_saved_crossbar_keeps_its_replicas():
    c = xb(Device.preset("rram-4bit"), 3, adc_bits=8)
    c.mvm(X)
    back = crossbar_from_state(*crossbar_state(c))
    assert back.replicas == 3
    np.testing.assert_array_equal(back.mvm(X), c.mvm(X))


def test_bad_replicas_are_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"replicas = 9 is out of range: expected an integer in \[1, 8\]"):
        Crossbar(Device.preset("agsi"), replicas=9)
    with pytest.raises(ConfigError, match="slices"):
        Crossbar(Device.preset("ideal").with_(bits=2), replicas=2, slices=2)
    with pytest.raises(ConfigError, match="replicas"):
        TrainConfig.from_dict({"device": "agsi", "update": "mixed", "replicas": 0})


def test_potentiate_pairs_refuse_replicas():
    cfg = TrainConfig.from_dict({"device": "agsi", "update": "mixed", "insitu_pairs": "potentiate",
                                 "replicas": 2, "epochs": 1}).resolve()
    with pytest.raises(ConfigError, match="insitu_pairs = 'potentiate'"):
        from xbar.train import Trainer
        Trainer(cfg, 64, 10)


def test_cost_counts_every_replica_and_old_run_keys_stay():
    assert Periphery.from_crossbar(xb(Device.preset("agsi"), 3)).planes == 3
    base = TrainConfig.from_dict({"device": "rram-4bit", "update": "qat"}).resolve()
    assert run_key(base.as_dict()) == run_key({**base.as_dict(), "replicas": 1})
    assert run_key(base.as_dict()) != run_key({**base.as_dict(), "replicas": 2})
