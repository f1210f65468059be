"""The read I–V curve: I = G V + NL2(G) V|V| + NL3(G) V^3 per cell, against a per-cell reference."""

import numpy as np
import pytest

from xbar import Crossbar, Device
from xbar.errors import ConfigError
from xbar.physics import get_model

IV = {"model": "polynomial", "nl2_rel": [0.4, -0.1], "nl3_rel": [8.202, -3.062], "v_max_v": 0.5}


def device(**iv):
    return Device(name="iv", g_min_us=50.0, g_max_us=225.0, read_iv={**IV, **iv})


def cell_current(g, v, iv):
    """Current (µA) of cells holding g (µS) at voltage v (V), written out from the formula."""
    u = np.log10(g)
    nl2 = g * sum(c * u ** i for i, c in enumerate(iv["nl2_rel"]))
    nl3 = g * sum(c * u ** i for i, c in enumerate(iv["nl3_rel"]))
    even = v * np.abs(v) if iv.get("even_term", "odd") == "odd" else v * v
    return g * v + nl2 * even + nl3 * v ** 3


def reference_mvm(xb, X, iv, v_read):
    """y = scale * alpha * sum_i (I+(V_i) - I-(V_i)) / v_read, V_i = x_i / max|x| * v_read, per cell."""
    st = xb.state
    scale = np.abs(X).max(axis=1, keepdims=True)
    V = (X / scale).astype(np.float64) * v_read
    gp, gn = st.gp[0].astype(np.float64), st.gn[0].astype(np.float64)
    y = np.zeros((X.shape[0], gp.shape[1]))
    for b in range(X.shape[0]):
        i_cells = cell_current(gp, V[b][:, None], iv) - cell_current(gn, V[b][:, None], iv)
        y[b] = i_cells.sum(axis=0) / v_read
    return y * scale * st.alpha[None, :] * st.sig[0]


def reference_mvm_t(xb, E, iv, v_read):
    st = xb.state
    Ea = E * st.alpha[None, :]
    scale = np.abs(Ea).max(axis=1, keepdims=True)
    V = (Ea / scale).astype(np.float64) * v_read
    gp, gn = st.gp[0].astype(np.float64), st.gn[0].astype(np.float64)
    y = np.zeros((E.shape[0], gp.shape[0]))
    for b in range(E.shape[0]):
        i_cells = cell_current(gp, V[b][None, :], iv) - cell_current(gn, V[b][None, :], iv)
        y[b] = i_cells.sum(axis=1) / v_read
    return y * scale * st.sig[0]


@pytest.fixture
def data():
    rng = np.random.default_rng(7)
    W = (rng.standard_normal((150, 70)) * 0.3).astype(np.float32)
    X = rng.uniform(-1, 1, (9, 150)).astype(np.float32)
    E = rng.standard_normal((9, 70)).astype(np.float32)
    return W, X, E


@pytest.mark.parametrize("even", ["odd", "as-fitted"])
@pytest.mark.parametrize("v_read", [0.1, 0.3])
@pytest.mark.parametrize("kw", [{}, {"adc_bits": 16}, {"dac_bits": 16}, {"tile": (32, 48), "adc_bits": 16}])
def test_reads_match_the_per_cell_reference(data, even, v_read, kw):
    W, X, E = data
    iv = {**IV, "even_term": even}
    xb = Crossbar(device(even_term=even), v_read=v_read, **kw).program(W)
    tol = 2e-4 if "adc_bits" in kw or "dac_bits" in kw else 2e-5   # 16-bit converters round a little
    ref = reference_mvm(xb, X, iv, v_read)
    assert np.linalg.norm(xb.mvm(X) - ref) / np.linalg.norm(ref) < tol
    ref_t = reference_mvm_t(xb, E, iv, v_read)
    assert np.linalg.norm(xb.mvm_t(E) - ref_t) / np.linalg.norm(ref_t) < tol


def test_nonlinearity_is_visible_and_grows_with_v_read(data):
    W, X, _ = data
    ohmic = Crossbar(Device(name="lin", g_min_us=50.0, g_max_us=225.0)).program(W).mvm(X)
    errs = []
    for v in (0.05, 0.2, 0.5):
        y = Crossbar(device(), v_read=v).program(W).mvm(X)
        errs.append(np.linalg.norm(y - ohmic) / np.linalg.norm(ohmic))
    assert errs[0] < errs[1] < errs[2]
    assert errs[2] > 4 * errs[1] > 0   # cubic: (0.5 / 0.2)^2 = 6.25 for the dominant term


def test_odd_cell_is_odd_and_as_fitted_is_not(data):
    W, X, _ = data
    odd = Crossbar(device()).program(W)
    np.testing.assert_allclose(odd.mvm(-X), -odd.mvm(X), rtol=1e-5, atol=1e-5)
    fitted = Crossbar(device(even_term="as-fitted")).program(W)
    assert not np.allclose(fitted.mvm(-X), -fitted.mvm(X), rtol=1e-3, atol=1e-3)


def test_zero_coefficients_are_the_ohmic_cell_bit_for_bit(data):
    W, X, E = data
    lin = Device(name="lin", g_min_us=50.0, g_max_us=225.0, read_noise_rel=0.02)
    zero = lin.with_(read_iv={"model": "polynomial"})
    for kw in ({}, {"adc_bits": 8}):
        a = Crossbar(lin, seed=3, **kw).program(W)
        b = Crossbar(zero, seed=3, **kw).program(W)
        assert np.array_equal(a.mvm(X), b.mvm(X)) and np.array_equal(a.mvm_t(E), b.mvm_t(E))


def test_offset_mapping_applies_the_curve_to_the_physical_device_only(data):
    W, X, _ = data
    xb = Crossbar(device(), mapping="offset").program(W)
    st = xb.state
    scale = np.abs(X).max(axis=1, keepdims=True)
    V = (X / scale).astype(np.float64) * 0.2
    gp, gn = st.gp[0].astype(np.float64), st.gn[0].astype(np.float64)
    ref = np.stack([(cell_current(gp, V[b][:, None], IV) - gn * V[b][:, None]).sum(0) / 0.2 for b in range(len(X))])
    ref = ref * scale * st.alpha[None, :] + X.sum(1, keepdims=True) * st.beta[None, :]
    np.testing.assert_allclose(xb.mvm(X), ref, rtol=2e-4, atol=2e-4 * np.abs(ref).max())


def test_read_noise_and_drift_compensation_still_work(data):
    W, X, _ = data
    d = device().with_(read_noise_rel=0.02, drift_nu_mean=0.05)
    xb = Crossbar(d, adc_bits=8, seed=1).program(W)
    clean = Crossbar(device(), adc_bits=8, seed=1).program(W).mvm(X)
    ys = np.stack([xb.mvm(X) for _ in range(200)])
    # the noise is centred on the nonlinear read (8-bit ADC rounding aside)
    assert np.abs(ys.mean(0) - clean).max() < 0.05 * np.abs(clean).max()
    for comp in (True, "read"):
        late = xb.at(3.15e7, compensate=comp)
        err = np.linalg.norm(late.mvm(X) - clean) / np.linalg.norm(clean)
        assert err < 0.2


def test_v_read_beyond_the_fit_is_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"v_read = 0.7 V .*\(0, 0.5\] V.*read_iv.v_max_v"):
        Crossbar(device(), v_read=0.7)
    Crossbar(device(), v_read=0.5)   # the bound itself is fine
    Crossbar(Device(name="lin"), v_read=5.0)   # an ohmic cell has no such limit


@pytest.mark.parametrize("bad, match", [
    ({"v_max_v": -1.0}, r"read_iv.v_max_v = -1.0"),
    ({"even_term": "even"}, r"read_iv.even_term = 'even'"),
    ({"nl3_rel": "x"}, r"read_iv.nl3_rel"),
    ({"nl4_rel": [1.0]}, r"read_iv: unknown key|nl4_rel"),
])
def test_bad_model_tables_name_the_field(bad, match):
    with pytest.raises(ConfigError, match=match):
        get_model("read_iv", {**IV, **bad}, file="dev.toml")


def test_preset_loads_and_shows(capsys):
    from xbar.cli import main
    d = Device.preset("rram-iv-example")
    iv = d.models()[3]
    g = np.array([50.0, 225.0])
    _, nl3 = iv.coefficients(g)
    np.testing.assert_allclose(nl3 / g * 0.2 ** 2, [0.12, 0.04], atol=1e-3)   # as its file says
    assert main(["devices", "show", "rram-iv-example"]) == 0
    assert "[read_iv] model = 'polynomial'" in capsys.readouterr().out


def test_train_and_sweep_refuse_v_read_beyond_the_fit_before_work(tmp_path, capsys):
    from xbar.cli import main
    assert main(["train", "--device", "rram-iv-example", "--v-read", "0.7", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "v_read = 0.7 V is outside the validated range" in err and err.count("\n") == 1
    spec = tmp_path / "s.toml"
    spec.write_text('[base]\ndevice = "rram-iv-example"\nepochs = 1\n[grid]\nv_read = [0.2, 0.8]\n')
    assert main(["sweep", str(spec), "--out", str(tmp_path / "s.h5")]) == 2
    assert "run 2 (v_read=0.8): v_read = 0.8 V" in capsys.readouterr().err
    assert not (tmp_path / "s.h5").exists()


def test_training_through_the_nonlinear_read_learns(capsys):
    import json

    from xbar.cli import main
    assert main(["train", "--device", "rram-iv-example", "--epochs", "3", "--adc-bits", "8", "--quiet",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "ok" and out["test_accuracy"] > 30.0   # 10 classes: chance is 10 %


@pytest.mark.parametrize("iv", [{"nl3_rel": [0.0]}, {"nl2_rel": [0.0]}])
def test_one_term_alone_matches_the_reference(data, iv):
    W, X, E = data
    full = {**IV, **iv}
    xb = Crossbar(device(**iv), adc_bits=16).program(W)
    ref = reference_mvm(xb, X, full, 0.2)
    assert np.linalg.norm(xb.mvm(X) - ref) / np.linalg.norm(ref) < 2e-4
    ref_t = reference_mvm_t(xb, E, full, 0.2)
    assert np.linalg.norm(xb.mvm_t(E) - ref_t) / np.linalg.norm(ref_t) < 2e-4


def test_with_ir_drop_the_curve_adds_to_the_wired_read(data):
    W, X, _ = data
    wired = {"ir_drop": "exact", "r_wire_ohm": 2.0, "tile": (32, 32)}
    lin = Device(name="lin", g_min_us=50.0, g_max_us=225.0)
    a = Crossbar(device(), **wired).program(W)
    b = Crossbar(lin, **wired).program(W)
    c = Crossbar(device(), tile=(32, 32)).program(W)
    d = Crossbar(lin, tile=(32, 32)).program(W)
    # the nonlinear terms are taken at the applied voltages: the same increment with and without wires
    np.testing.assert_allclose(a.mvm(X) - b.mvm(X), c.mvm(X) - d.mvm(X), rtol=1e-4, atol=1e-4)
