"""IR drop through the crossbar: reads see the wires' effective conductances, weights() the devices."""

from __future__ import annotations

import numpy as np
import pytest

from xbar import ConfigError, Crossbar, Device
from xbar.tile.irdrop import effective_stack

DEV = Device.preset("ideal").with_(g_max_us=100.0)


def layer(rows=150, cols=70, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.uniform(-1, 1, (rows, cols)).astype(np.float32),
            rng.uniform(0, 1, (9, rows)).astype(np.float32), rng.standard_normal((9, cols)).astype(np.float32))


@pytest.mark.parametrize("mode", ["exact", "fast"])
@pytest.mark.parametrize("mapping", ["differential", "offset"])
def test_reads_go_through_the_effective_conductances(mode, mapping):
    W, X, E = layer()
    xb = Crossbar(DEV, tile=(64, 32), mapping=mapping, range="local", ir_drop=mode, r_wire_ohm=2.0).program(W)
    gp, gn = xb.conductances()
    ap = effective_stack(gp, 2.0, (64, 32), mode)
    an = effective_stack(gn, 2.0, (64, 32), mode) if mapping == "differential" else gn
    w_read = (ap - an)[0] * xb.read.alpha_eff[None, :] + xb.state.beta[None, :]
    assert np.allclose(xb.mvm(X), X @ w_read, rtol=1e-4, atol=1e-4)
    assert np.allclose(xb.mvm_t(E), E @ w_read.T, rtol=1e-4, atol=1e-4)   # reciprocal: the same A
    ideal = Crossbar(DEV, tile=(64, 32), mapping=mapping, range="local").program(W)
    assert np.array_equal(xb.weights(), ideal.weights())                # the devices' own state
    drop = np.linalg.norm(xb.mvm(X) - ideal.mvm(X)) / np.linalg.norm(ideal.mvm(X))
    assert drop > 0.01


def test_fast_is_close_to_exact_and_both_grow_with_r_and_tile():
    W, X, _ = layer(256, 64)
    err = {}
    for mode in ("exact", "fast"):
        for r in (1.0, 5.0):
            for t in (64, 128):
                xb = Crossbar(DEV, tile=(t, t), range="local", ir_drop=mode, r_wire_ohm=r).program(W)
                ref = X @ xb.weights()
                err[mode, r, t] = np.linalg.norm(xb.mvm(X) - ref) / np.linalg.norm(ref)
    for key in [(1.0, 64), (5.0, 64), (1.0, 128), (5.0, 128)]:
        assert abs(err[("fast",) + key] - err[("exact",) + key]) < 0.05 * err[("exact",) + key] + 0.01
    assert err["exact", 1.0, 64] < err["exact", 5.0, 64] and err["exact", 1.0, 64] < err["exact", 1.0, 128]


def test_adc_dac_and_conv_layers_read_through_ir_drop():
    W, X, _ = layer()
    xb = Crossbar(DEV, tile=(64, 64), adc_bits=8, dac_bits=8, range="local", ir_drop="fast",
                  r_wire_ohm=1.0).program(W)
    y = xb.mvm(X)
    assert np.isfinite(y).all() and np.corrcoef(y.ravel(), (X @ xb.weights()).ravel())[0, 1] > 0.95


def test_none_is_bit_identical_and_state_dict_keeps_the_wires():
    W, X, _ = layer()
    a = Crossbar(Device.preset("rram-4bit"), seed=3).program(W)
    b = Crossbar(Device.preset("rram-4bit"), seed=3, ir_drop="none", r_wire_ohm=5.0).program(W)
    assert np.array_equal(a.mvm(X), b.mvm(X))
    c = Crossbar(DEV, ir_drop="exact", r_wire_ohm=1.5, range="local").program(W)
    d = Crossbar.from_state_dict(c.state_dict())
    assert d.ir_drop == "exact" and d.r_wire_ohm == 1.5 and np.array_equal(c.mvm(X), d.mvm(X))


@pytest.mark.parametrize("kw, match", [
    ({"ir_drop": "exact"}, "needs r_wire_ohm > 0"),
    ({"ir_drop": "exakt", "r_wire_ohm": 1.0}, "did you mean 'exact'"),
    ({"ir_drop": "fast", "r_wire_ohm": -1.0}, "r_wire_ohm"),
    ({"ir_drop": "fast", "r_wire_ohm": float("nan")}, "r_wire_ohm"),
    ({"v_read": 0.0}, "v_read"),
])
def test_bad_wire_settings_are_one_line(kw, match):
    with pytest.raises(ConfigError, match=match):
        Crossbar(DEV, **kw)


def test_qat_trains_through_the_ir_dropped_forward(tmp_path):
    from xbar.cli import main
    out = tmp_path / "run.h5"
    assert main(["train", "--dataset", "digits", "--network", "digits-mlp", "--device", "rram-4bit",
                 "--update", "qat", "--epochs", "2", "--ir-drop", "fast", "--r-wire-ohm", "2",
                 "--tile", "64x64", "--out", str(out), "--quiet"]) == 0
    from xbar import checkpoint
    run = checkpoint.load(out)
    assert run.config["ir_drop"] == "fast" and run.network().layers[0].crossbar.r_wire_ohm == 2.0
    from xbar.train import TrainConfig
    with pytest.raises(ConfigError, match="needs r_wire_ohm"):
        TrainConfig(network="digits-mlp", dataset="digits", update="qat", ir_drop="exact").resolve()


# ---- ADC non-idealities (xbar.tile.adc) ---------------------------------------------------------------

def test_adc_errors_against_a_slow_reference():
    """Offset, gain and INL: the fused read equals converting each tile current by hand."""
    from xbar.tile import adc
    rng = np.random.default_rng(5)
    W = rng.uniform(-1, 1, (100, 40)).astype(np.float32)
    X = rng.uniform(-1, 1, (7, 100)).astype(np.float32)
    kw = {"adc_bits": 6, "tile": (32, 16), "range": "local", "adc_offset_lsb": 0.7, "adc_gain_rel": 0.05, "adc_inl_lsb": 1.5}
    xb = Crossbar(DEV.with_(bits=3), seed=2, **kw).program(W)
    y = xb.mvm(X)
    rd = xb.read
    xs, scale = rd.dac(np.ascontiguousarray(X))
    M, _, post = rd.tile_currents(xs, "fwd")
    M = M.astype(np.float64)
    inv_step, _, _, _ = rd.adc_params(M.astype(np.float32), post, "fwd")
    n = 2 ** 5 - 1
    e = adc.draws(2, "fwd", inv_step.shape, 0.7, 0.05, 1.5)
    step = 1.0 / inv_step.astype(np.float64)
    x = np.clip(M / (n * step)[:, None, :], -1, 1)
    inl = (e["inl"][:, None, :] * 3 * np.sqrt(3) / 2 * (x - x ** 3))
    code = np.clip(np.floor((1 + e["gain"][:, None, :]) * M / step[:, None, :] + e["offset"][:, None, :] + inl + 0.5),
                   -n, n)
    ref = (code * step[:, None, :] * post[:, None, :]).sum(axis=0) * scale
    assert np.allclose(y, ref, rtol=1e-4, atol=1e-3 * np.abs(ref).max())
    ideal = Crossbar(DEV.with_(bits=3), seed=2, adc_bits=6, tile=(32, 16), range="local").program(W).mvm(X)
    assert not np.allclose(y, ideal)


def test_adc_errors_are_fixed_per_chip_and_need_an_adc():
    W, X, _ = layer()
    kw = {"adc_bits": 8, "adc_offset_lsb": 0.5, "adc_gain_rel": 0.02, "adc_inl_lsb": 1.0, "range": "local"}
    a, b = Crossbar(DEV, seed=1, **kw).program(W), Crossbar(DEV, seed=1, **kw).program(W)
    assert np.array_equal(a.mvm(X), a.mvm(X)) and np.array_equal(a.mvm(X), b.mvm(X))   # noise-free device
    assert not np.array_equal(a.mvm(X), Crossbar(DEV, seed=2, **kw).program(W).mvm(X))  # another chip
    with pytest.raises(ConfigError, match="adc_gain_rel = 0.02 describes the ADC, but adc_bits is not set"):
        Crossbar(DEV, adc_gain_rel=0.02)
    with pytest.raises(ConfigError, match="adc_offset_lsb"):
        Crossbar(DEV, adc_bits=8, adc_offset_lsb=-1.0)
