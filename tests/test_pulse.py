"""In-situ pulse updates: the NeuroSim response curve, its inverse, c2c noise and faults."""

from __future__ import annotations

import numpy as np
import pytest

from xbar import ConfigError, Crossbar, Device
from xbar.device import pulse_curve_a, pulse_number, pulse_response


def _linear_dev(**kw):
    return Device(name="lin", g_min_us=1.0, g_max_us=11.0, pulse_levels=11, **kw)


def test_linear_device_moves_one_level_per_pulse():
    xb = Crossbar(_linear_dev(), mapping="offset", seed=0).program(np.zeros((3, 2), np.float32), )
    g0 = xb.conductances()[0].copy()
    xb.pulse(np.full((3, 2), 3))
    assert np.allclose(xb.conductances()[0], g0 + 3.0)
    xb.pulse(np.full((3, 2), -2))
    assert np.allclose(xb.conductances()[0], g0 + 1.0)


def test_pulses_saturate_at_the_window():
    xb = Crossbar(_linear_dev(), mapping="offset", seed=0).program(np.zeros((2, 2), np.float32))
    xb.pulse(np.full((2, 2), 1000))
    assert np.allclose(xb.conductances()[0], 11.0)
    xb.pulse(np.full((2, 2), -1000))
    assert np.allclose(xb.conductances()[0], 1.0)


def test_nonlinear_ltp_steps_shrink_toward_g_max():
    d = Device.preset("agsi")
    a = pulse_curve_a(d.nonlinearity_ltp, d.pulse_levels)
    g = pulse_response(np.arange(d.pulse_levels, dtype=float), a, d.pulse_levels, d.g_min_us, d.g_max_us)
    steps = np.diff(g)
    assert g[0] == pytest.approx(d.g_min_us) and g[-1] == pytest.approx(d.g_max_us)
    assert np.all(steps > 0) and steps[0] > 3 * steps[-1]
    assert np.allclose(pulse_number(g, a, d.pulse_levels, d.g_min_us, d.g_max_us)[:-1],
                       np.arange(d.pulse_levels - 1), atol=1e-6)


def test_c2c_noise_std_scales_with_sqrt_pulses():
    dev = _linear_dev(c2c_rel=0.01)
    xb = Crossbar(dev, mapping="offset", seed=3).program(np.zeros((200, 200), np.float32))
    g0 = xb.conductances()[0].copy()
    xb.pulse(np.full((200, 200), 4))
    d = (xb.conductances()[0] - g0 - 4.0).ravel()
    expected = 0.01 * 10.0 * np.sqrt(4)
    se = expected / np.sqrt(2 * d.size)
    assert abs(d.mean()) < 5 * expected / np.sqrt(d.size)
    assert abs(d.std() - expected) < 5 * se


def test_stuck_devices_ignore_pulses():
    dev = _linear_dev(stuck_off_rate=0.3)
    xb = Crossbar(dev, mapping="offset", seed=1).program(np.zeros((50, 50), np.float32))
    g0 = xb.conductances()[0][0].copy()
    xb.pulse(np.full((50, 50), 3))
    stuck = xb.physics.persist["stuck"][0][0] == -1
    assert stuck.any()
    assert np.allclose(xb.conductances()[0][0][stuck], 1.0)
    assert np.allclose(xb.conductances()[0][0][~stuck], g0[~stuck] + 3.0)


def test_device_without_pulse_model_refuses():
    xb = Crossbar(Device.preset("ideal"), seed=0).program(np.zeros((2, 2), np.float32))
    with pytest.raises(ConfigError, match="pulse_levels"):
        xb.pulse(np.ones((2, 2)))
