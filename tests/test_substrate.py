"""The substrate's seams: a device model added in one file, state_dict, partial writes, compensation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from xbar import ConfigError, Crossbar, Device, ShapeError
from xbar.config import Field
from xbar.physics import ReadNoise, register


@register
class ToyReadNoise(ReadNoise):
    """Additive read noise whose std grows linearly with G: sigma = a + b G (a toy, for this test)."""

    name = "toy-linear"
    source = "this test"
    FIELDS = (Field("a_us", "float", 0.0, "Offset of sigma.", lo=0.0, unit="µS"),
              Field("b", "float", 0.0, "Slope of sigma in G.", lo=0.0))

    def variance(self, g, t_s, window_us, g_prog=None):
        return (self.a_us + self.b * g) ** 2


def toy_device(**noise):
    return Device.from_dict({"name": "toy", "source": "test", "g_min_us": 0.0, "g_max_us": 10.0,
                             "read_noise": {"model": "toy-linear", **noise}})


def test_a_toy_model_in_one_file_runs_through_the_crossbar():
    dev = toy_device(a_us=0.1, b=0.05)
    assert not dev.is_ideal
    rng = np.random.default_rng(0)
    W = rng.uniform(-1, 1, (20, 6)).astype(np.float32)
    x = rng.uniform(0, 1, (1, 20)).astype(np.float32)
    xb = Crossbar(dev, tile=(32, 32), seed=3).program(W)
    ys = np.stack([xb.mvm(x)[0] for _ in range(4000)])
    gp, gn = xb.conductances()
    # exact output variance: sum_i x_i^2 (var(G+) + var(G-)) alpha^2 (multiplicative in the digital gain)
    var = ((0.1 + 0.05 * gp[0]) ** 2 + (0.1 + 0.05 * gn[0]) ** 2)
    want = (x[0] ** 2) @ var * xb.read.alpha_eff ** 2
    assert np.allclose(ys.var(axis=0), want, rtol=0.1)
    assert np.allclose(ys.mean(axis=0), (x @ xb.weights())[0], atol=4 * np.sqrt(want.max() / 4000))


def test_unknown_model_names_and_bad_parameters_are_one_line():
    with pytest.raises(ConfigError, match="toy-linar.*did you mean 'toy-linear'"):
        Device.from_dict({"name": "t", "g_min_us": 0.0, "g_max_us": 1.0, "read_noise": {"model": "toy-linar"}})
    with pytest.raises(ConfigError, match="read_noise.b"):
        toy_device(b=-1.0)
    with pytest.raises(ConfigError, match="both describe"):
        Device.from_dict({"name": "t", "g_min_us": 0.0, "g_max_us": 1.0, "read_noise_rel": 0.1,
                          "read_noise": {"model": "toy-linear"}})


@pytest.mark.parametrize("kw", [{}, {"adc_bits": 6, "dac_bits": 5, "tile": (8, 4)},
                                {"mapping": "offset", "bias": "row", "adc_bits": 8}])
def test_state_dict_round_trip_continues_the_same_reads(kw):
    dev = Device.preset("pcm-inference").with_(stuck_off_rate=0.05, g_d2d_rel=0.02)
    rng = np.random.default_rng(1)
    W, b = rng.standard_normal((13, 7)).astype(np.float32), rng.standard_normal(7).astype(np.float32)
    X, E = rng.standard_normal((5, 13)).astype(np.float32), rng.standard_normal((5, 7)).astype(np.float32)
    xb = Crossbar(dev, seed=4, **kw).program(W, b)
    xb.mvm(X)
    sd = xb.state_dict()
    json.dumps({k: v for k, v in sd.items() if k != "arrays"})      # everything but the arrays is JSON
    copy = Crossbar.from_state_dict(sd)
    for a, c in ((xb, copy), (xb.at(3600, compensate=True), copy.at(3600, compensate=True))):
        assert np.array_equal(a.mvm(X), c.mvm(X)) and np.array_equal(a.mvm_t(E), c.mvm_t(E))
        assert np.array_equal(a.weights(), c.weights())
    xb.program(W * 0.5, b)
    copy.program(W * 0.5, b)                                          # the programming stream too
    assert np.array_equal(xb.weights(), copy.weights())
    with pytest.raises(ConfigError, match="not a crossbar state_dict"):
        Crossbar.from_state_dict({"format": "other"})


def test_program_cells_writes_only_those_cells():
    dev = Device.preset("rram-4bit")
    rng = np.random.default_rng(2)
    W = rng.uniform(-1, 1, (9, 5)).astype(np.float32)
    xb = Crossbar(dev, seed=0).program(W)
    gp0, gn0 = xb.conductances()
    cells = rng.random((9, 5)) < 0.3
    xb.program(-W, cells=cells)
    gp1, gn1 = xb.conductances()
    assert np.array_equal(gp1[0][~cells], gp0[0][~cells]) and np.array_equal(gn1[0][~cells], gn0[0][~cells])
    assert not np.array_equal(gp1[0][cells], gp0[0][cells])
    with pytest.raises(ShapeError, match="cells"):
        xb.program(W, cells=np.ones((2, 2), bool))
    with pytest.raises(ShapeError, match="first program"):
        Crossbar(dev).program(W, cells=cells)


def test_compensation_through_a_noisy_read_is_close_to_the_exact_one():
    dev = Device.preset("pcm-inference")
    W = np.random.default_rng(3).uniform(-1, 1, (256, 64)).astype(np.float32)
    xb = Crossbar(dev, seed=5, range="local").program(W)
    year = 86400 * 365
    exact = xb.at(year, compensate=True).drift_compensation
    read = xb.at(year, compensate="read").drift_compensation
    # "read" is the one-hot readout: sum |W| as programmed over sum |W| now, measured with read noise
    onehot = np.abs(xb.weights()).sum() / np.abs(xb.at(year).weights()).sum()
    assert exact > 1.2 and abs(read / onehot - 1) < 0.03 and abs(read / exact - 1) < 0.1
    with pytest.raises(ConfigError, match="compensate"):
        xb.at(10, compensate="yes")


@pytest.mark.parametrize("kw", [{"dac_bits": 8}, {"adc_bits": 8}, {"adc_bits": 8, "dac_bits": 8}, {}])
def test_subnormal_inputs_read_as_zero_not_inf(kw):
    xb = Crossbar(Device.preset("ideal").with_(bits=3), seed=0, **kw).program(np.eye(4, dtype=np.float32))
    X = np.zeros((2, 4), np.float32)
    X[0, 1] = 1e-39            # subnormal in float32
    X[1, 2] = 3.0
    y = xb.mvm(X)
    assert np.isfinite(y).all() and abs(y[0]).max() < 1e-30 and abs(y[1, 2] - 3.0) < 0.5


def test_eval_prints_accuracy_at_several_times(tmp_path, capsys):
    from xbar.cli import main
    out = tmp_path / "pcm.h5"
    assert main(["train", "--dataset", "digits", "--network", "digits-mlp", "--device", "pcm-aihwkit",
                 "--update", "qat", "--epochs", "1", "--train-limit", "300", "--test-limit", "100",
                 "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["eval", str(out), "--at", "1,3600,1d,1y", "--compensate", "read"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "noisy reads" in lines[0] and [r.split()[0] for r in lines[2:]] == ["1", "3600", "86400", "3.1536e+07"]
    assert main(["eval", str(out), "--at", "1d", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["at_seconds"] == 86400.0
    assert main(["eval", str(out), "--at", "-1"]) != 0
    assert "expected times after programming" in capsys.readouterr().err


def test_devices_show_lists_each_effect_model(capsys):
    from xbar.cli import main
    assert main(["devices", "show", "pcm-aihwkit"]) == 0
    text = capsys.readouterr().out
    assert "[program_noise] model = 'pcm-aihwkit'" in text and "[drift] model = 'pcm-aihwkit'" in text
