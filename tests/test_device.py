"""Devices as data: presets, validation with useful messages, the search path, the pulse response."""

from __future__ import annotations

import numpy as np
import pytest

from xbar import ConfigError, Device
from xbar.device import pulse_curve_a, pulse_number, pulse_response, snap_to_levels

SHIPPED = ["agsi", "alox-hfo2", "epiram", "gst-pcm", "hzo-fefet", "ideal", "pcm-inference", "pcmo",
           "rram-4bit", "taox-hfox"]


@pytest.fixture(autouse=True)
def no_user_presets(monkeypatch):
    monkeypatch.delenv("XBAR_PATH", raising=False)


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


# ---- presets --------------------------------------------------------------------------------------

def test_shipped_presets_are_listed():
    assert set(SHIPPED) <= set(Device.presets())


@pytest.mark.parametrize("name", Device.presets())
def test_preset_loads(name):
    dev = Device.preset(name)
    assert dev.name == name
    assert dev.source.strip(), f"preset {name!r} must cite its source"
    assert 0 <= dev.g_min_us < dev.g_max_us
    lv = dev.levels()
    if lv is not None:
        assert len(lv) >= 2 and np.all(np.diff(lv) > 0)
        assert lv[0] >= dev.g_min_us - 1e-12 and lv[-1] <= dev.g_max_us + 1e-12
    assert Device.from_dict(dev.as_dict()) == dev, "as_dict round-trips through validation"


def test_ideal_is_ideal():
    dev = Device.preset("ideal")
    assert dev.is_ideal and dev.levels() is None and dev.summary() == "analog"
    assert not Device.preset("pcm-inference").is_ideal


def test_preset_by_path(tmp_path):
    f = write(tmp_path / "my-cell.toml", 'source = "test"\ng_min_us = 0.0\ng_max_us = 5.0\nbits = 2\n')
    dev = Device.preset(str(f))
    assert dev.name == "my-cell" and dev.n_levels == 4 and dev.g_max_us == 5.0


def test_unknown_preset_lists_known():
    with pytest.raises(ConfigError) as info:
        Device.preset("agsii")
    msg = str(info.value)
    assert "unknown device 'agsii'" in msg and "did you mean 'agsi'" in msg
    for name in SHIPPED:
        assert name in msg


def test_missing_preset_path():
    with pytest.raises(ConfigError, match="not found"):
        Device.preset("no/such/device.toml")


def test_xbar_path_user_presets(tmp_path, monkeypatch):
    flat, nested = tmp_path / "flat", tmp_path / "tree"
    flat.mkdir()
    (nested / "devices").mkdir(parents=True)
    write(flat / "my-rram.toml", 'source = "lab notebook 3"\ng_min_us = 1.0\ng_max_us = 20.0\nbits = 3\n')
    write(nested / "devices" / "my-pcm.toml", 'source = "lab notebook 4"\ng_min_us = 0.0\ng_max_us = 25.0\n')
    # A user preset named like a shipped one comes first on the search path.
    write(flat / "ideal.toml", 'source = "my ideal"\ng_min_us = 0.0\ng_max_us = 2.0\n')
    import os
    monkeypatch.setenv("XBAR_PATH", os.pathsep.join([str(flat), str(nested)]))
    assert {"my-rram", "my-pcm", *SHIPPED} <= set(Device.presets())
    dev = Device.preset("my-rram")
    assert dev.n_levels == 8 and dev.source == "lab notebook 3"
    assert Device.preset("my-pcm").g_max_us == 25.0
    assert Device.preset("ideal").source == "my ideal"
    monkeypatch.delenv("XBAR_PATH")
    with pytest.raises(ConfigError, match="XBAR_PATH"):
        Device.preset("my-rram")


# ---- with_ and validation ---------------------------------------------------------------------------

def test_with_bits_sets_levels_and_clears_table():
    measured = Device.preset("ideal").with_(levels_us=(0.0, 0.2, 0.5, 1.0))
    assert measured.n_levels == 4 and measured.bits is None and not measured.is_uniform
    dev = measured.with_(bits=3)
    assert dev.bits == 3 and dev.levels_us is None and dev.n_levels == 8 and dev.is_uniform
    np.testing.assert_allclose(dev.levels(), np.linspace(0.0, 1.0, 8))
    assert dev.summary() == "3-bit"
    back = dev.with_(levels_us=(0.0, 1.0))
    assert back.bits is None and back.n_levels == 2
    # bits wins over a preset's pulse_levels
    gst = Device.preset("gst-pcm")
    assert gst.n_levels == 100 and gst.with_(bits=3).n_levels == 8


def test_with_does_not_change_the_original():
    dev = Device.preset("rram-4bit")
    dev.with_(bits=2, read_noise_rel=0.5)
    assert dev.bits == 4 and dev.read_noise_rel == 0.01


@pytest.mark.parametrize("bits", [0, 9, -1])
def test_bits_out_of_range(bits):
    with pytest.raises(ConfigError, match=rf"bits = {bits} is out of range: expected an integer in \[1, 8\]"):
        Device.preset("ideal").with_(bits=bits)


@pytest.mark.parametrize("bits", [2.5, "4", True])
def test_bits_wrong_type(bits):
    with pytest.raises(ConfigError, match="bits"):
        Device.preset("ideal").with_(bits=bits)


def test_bits_out_of_range_in_file_names_the_file(tmp_path):
    f = write(tmp_path / "bad-bits.toml", 'source = "x"\nbits = 9\n')
    with pytest.raises(ConfigError, match=r"bad-bits\.toml: bits = 9 .*\[1, 8\]"):
        Device.from_toml(f)


@pytest.mark.parametrize("g_min", [1.0, 2.0])
def test_g_min_not_below_g_max(g_min):
    with pytest.raises(ConfigError, match="g_min_us .* must be below g_max_us"):
        Device.preset("ideal").with_(g_min_us=g_min)


@pytest.mark.parametrize("field", ["program_noise_rel", "read_noise_rel", "g_d2d_rel", "c2c_rel",
                                   "drift_nu_mean", "drift_nu_std", "g_min_us"])
def test_negative_values_rejected(field):
    with pytest.raises(ConfigError, match=rf"{field} = -0.1 is out of range"):
        Device.preset("ideal").with_(**{field: -0.1})


@pytest.mark.parametrize("field", ["stuck_on_rate", "stuck_off_rate", "program_noise_rel"])
def test_rates_above_one_rejected(field):
    with pytest.raises(ConfigError, match=rf"{field} = 1.5 is out of range: expected a number in \[0, 1\]"):
        Device.preset("ideal").with_(**{field: 1.5})


def test_fault_rates_sum_at_most_one():
    with pytest.raises(ConfigError, match="at most 1"):
        Device.preset("ideal").with_(stuck_on_rate=0.6, stuck_off_rate=0.5)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_rejected(value):
    with pytest.raises(ConfigError, match="read_noise_rel"):
        Device.preset("ideal").with_(read_noise_rel=value)


def test_bad_choice_suggests():
    with pytest.raises(ConfigError, match="'multiplicative', 'additive'.*did you mean 'additive'"):
        Device.preset("ideal").with_(read_noise_kind="additiv")


def test_bad_levels_table():
    with pytest.raises(ConfigError, match="strictly increasing"):
        Device.preset("ideal").with_(levels_us=(0.0, 0.5, 0.5))
    with pytest.raises(ConfigError, match="levels must lie in"):
        Device.preset("ideal").with_(levels_us=(0.0, 1.5))
    with pytest.raises(ConfigError, match="either bits or levels_us"):
        Device.preset("ideal").with_(bits=2, levels_us=(0.0, 1.0))


def test_unknown_key_in_toml_suggests(tmp_path):
    f = write(tmp_path / "typo.toml", 'source = "x"\ng_max_us = 1.0\nread_nosie_rel = 0.02\n')
    with pytest.raises(ConfigError) as info:
        Device.from_toml(f)
    msg = str(info.value)
    assert str(f) in msg and "read_nosie_rel" in msg and "did you mean 'read_noise_rel'" in msg
    assert "valid keys" in msg


def test_unknown_keyword_in_with_suggests():
    with pytest.raises(ConfigError, match="did you mean 'g_max_us'"):
        Device.preset("ideal").with_(gmax_us=2.0)


def test_malformed_toml_names_file_and_line(tmp_path):
    f = write(tmp_path / "broken.toml", 'source = "x"\ng_min_us = 0.0\ng_max_us = = 3\n')
    with pytest.raises(ConfigError) as info:
        Device.from_toml(f)
    msg = str(info.value)
    assert str(f) in msg and "malformed TOML" in msg and "line 3" in msg


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        Device.from_toml(tmp_path / "absent.toml")


# ---- levels and the pulse response --------------------------------------------------------------------

def test_snap_to_levels_nearest_ties_low():
    levels = np.array([0.0, 0.25, 0.5, 1.0])               # exact binary fractions: exact ties
    g = np.array([-0.5, 0.0, 0.1, 0.125, 0.13, 0.375, 0.74, 0.75, 0.76, 1.0, 2.0])
    np.testing.assert_array_equal(snap_to_levels(g, levels),
                                  [0, 0, 0, 0, 0.25, 0.25, 0.5, 0.5, 1.0, 1.0, 1.0])
    assert snap_to_levels(g, None) is g


NONLINEARITIES = [0.0, 0.04, 0.5, 2.4, -4.88, 6.76]


@pytest.mark.parametrize("nl", NONLINEARITIES)
def test_pulse_response_endpoints_and_inverse(nl):
    dev = Device.preset("agsi")
    n, g_min, g_max = dev.pulse_levels, dev.g_min_us, dev.g_max_us
    a = pulse_curve_a(nl, n)
    p_max = n - 1
    p = np.linspace(0.0, p_max, 301)
    g = pulse_response(p, a, n, g_min, g_max)
    np.testing.assert_allclose(g[[0, -1]], [g_min, g_max], rtol=1e-12)
    assert np.all(np.diff(g) > 0), "more pulses, more conductance"
    np.testing.assert_allclose(pulse_number(g, a, n, g_min, g_max), p, rtol=0, atol=1e-7 * p_max)
    gg = np.linspace(g_min, g_max, 101)
    np.testing.assert_allclose(pulse_response(pulse_number(gg, a, n, g_min, g_max), a, n, g_min, g_max),
                               gg, rtol=1e-9)
    if nl != 0:
        linear = g_min + (g_max - g_min) * p / p_max
        assert np.all(g[1:-1] > linear[1:-1]), "a saturating (concave) response lies above the line"


def test_pulse_response_linear_at_zero_nonlinearity():
    assert pulse_curve_a(0.0, 97) == float("inf")
    p = np.arange(97.0)
    g = pulse_response(p, float("inf"), 97, 1.0, 10.0)
    np.testing.assert_allclose(g, 1.0 + 9.0 * p / 96, rtol=1e-15)
    np.testing.assert_allclose(np.diff(g), 9.0 / 96, rtol=1e-12)
    np.testing.assert_allclose(pulse_number(g, float("inf"), 97, 1.0, 10.0), p, atol=1e-12)


def test_pulse_curve_stronger_for_larger_label():
    p = np.array([10.0])
    g = [pulse_response(p, pulse_curve_a(nl, 97), 97, 0.0, 1.0)[0] for nl in (0.5, 2.4, 6.0)]
    assert g[0] < g[1] < g[2]
