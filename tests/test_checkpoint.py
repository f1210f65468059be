"""Run files: save a trained network with its device state, load it, evaluate exactly as before."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from xbar import XbarError, checkpoint
from xbar.checkpoint import CheckpointError
from xbar.train import TrainConfig, Trainer
from xbar.train.loop import UPDATE_DEFAULTS, evaluate, load_data


def trained(epochs=1, **kw):
    """A Trainer after `epochs` passes over digits, and its test split."""
    cfg = TrainConfig(network="digits-mlp", dataset="digits", epochs=epochs, lr=3e-3, **kw)
    if cfg.update in UPDATE_DEFAULTS:   # the in-situ schemes' cases give every field themselves
        cfg = cfg.resolve()
    Xtr, ytr, Xte, yte = load_data(cfg)
    tr = Trainer(cfg, Xtr.shape[1], 10)
    history = []
    for epoch in range(cfg.epochs):
        perm = tr.shuffle.permutation(len(Xtr))
        for s in range(0, len(Xtr), cfg.batch_size):
            tr.step(Xtr[perm[s:s + cfg.batch_size]], ytr[perm[s:s + cfg.batch_size]])
        history.append({"epoch": epoch + 1})
    return tr, {"status": "ok", "history": history}, Xte, yte


@pytest.mark.parametrize("kw", [
    {"update": "qat", "device": "rram-4bit"},                      # write and read noise
    {"update": "qat", "device": "rram-4bit", "adc_bits": 6, "dac_bits": 6},   # calibrated ADC ranges
    {"update": "mixed", "device": "agsi", "quant": "device", "range": "init", "gain": "layer",
     "optimizer": "adam", "lr_gamma": 1.0, "batch_size": 64},   # pulses, bias row, accumulators
    {"update": "float"},
])
def test_round_trip_evaluates_exactly_as_before(tmp_path, kw):
    tr, result, X, y = trained(**kw)
    path = checkpoint.save(tmp_path / "run.h5", tr, tr.cfg, result)
    before = evaluate(tr.net, X, y)            # continues the read-noise stream from the saved point
    run = checkpoint.load(path)
    assert run.scores(X, y) == before
    assert run.scores(X, y) == before          # every evaluation starts from the saved state
    assert run.evaluate(X, y) == before[1]
    assert run.config == json.loads(json.dumps(tr.cfg.as_dict())) and run.result == result
    assert run.seed == tr.cfg.seed and set(run.versions) >= {"xbar", "numpy", "numba", "h5py"}
    net = run.network()
    for a, b in zip(tr.net.layers, net.layers):
        np.testing.assert_array_equal(a.W, b.W)
        np.testing.assert_array_equal(a.b, b.b)
        if a.crossbar is not None:
            for ga, gb in zip(a.crossbar.conductances(), b.crossbar.conductances()):
                np.testing.assert_array_equal(ga, gb)
            assert b.crossbar.seed == a.crossbar.seed and b.crossbar.bias == a.crossbar.bias
    if kw["update"] == "mixed":
        for i, st in enumerate(tr.update.states):
            np.testing.assert_array_equal(run.update_state[f"chi_{i}"], st.chi)


def test_drifted_evaluation_after_reload(tmp_path):
    tr, result, X, y = trained(epochs=3, update="qat", device="pcm-inference")
    path = checkpoint.save(tmp_path / "pcm.h5", tr, tr.cfg, result)
    day = 86400.0
    # The original, drifted right after saving, and the reloaded run drift the same devices
    # (the same nu per device) and read them with the same noise.
    net = tr.net
    for layer in net.layers:
        layer.crossbar = layer.crossbar.at(day)
    expect = evaluate(net, X, y)
    run = checkpoint.load(path)
    assert run.scores(X, y, at_seconds=day) == expect
    assert run.scores(X, y, at_seconds=day) == expect   # deterministic
    # G(t) = G(t0) (t/t0)^-nu with the saved nu.
    xb0 = run.network().layers[0].crossbar
    xb1 = run.network(at_seconds=day).layers[0].crossbar
    nu = xb0.physics.persist["nu"]
    f = (day / xb0.device.drift_t0_s) ** -nu
    np.testing.assert_allclose(xb1.conductances()[0], xb0.conductances()[0] * f[0], rtol=1e-12)
    # Conductances fall, the logits shrink and the loss grows with time; compensation undoes most.
    loss0 = run.scores(X, y)[0]
    loss_day, loss_year = run.scores(X, y, at_seconds=day)[0], run.scores(X, y, at_seconds=3.15e7)[0]
    comp_year = run.scores(X, y, at_seconds=3.15e7, compensate=True)[0]
    assert loss0 < loss_day < loss_year and comp_year < loss_year
    assert abs(comp_year - loss0) < 0.5 * (loss_year - loss0)


def test_evaluate_dataset_uses_the_runs_own_data(tmp_path):
    tr, result, X, y = trained(update="qat", device="rram-4bit", test_limit=150)
    result["test_accuracy"] = 12.5
    run = checkpoint.load(checkpoint.save(tmp_path / "run.h5", tr, tr.cfg, result))
    out = run.evaluate_dataset(train=False)
    assert len(X) == 150 and (out["test_loss"], out["test_accuracy"]) == run.scores(X, y)
    assert out["train_accuracy"] is None and out["saved"]["test_accuracy"] == 12.5
    assert out["status"] == "ok" and out["config"]["dataset"] == "digits"
    drifted = run.evaluate_dataset(at_seconds=100.0, train=False)
    assert drifted["test_accuracy"] == run.evaluate(X, y, at_seconds=100.0)
    assert json.loads(json.dumps(out)) == out


def test_a_network_without_trainer_saves_too(tmp_path):
    tr, _, X, y = trained(update="qat", device="ideal", bits=2)
    path = checkpoint.save(tmp_path / "net.h5", tr.net, {"note": "bare"})
    before = evaluate(tr.net, X, y)
    run = checkpoint.load(path)
    assert run.scores(X, y) == before and run.config == {"note": "bare"} and run.result == {}


# ---- bad files ----------------------------------------------------------------------------------------

def test_missing_and_corrupted_files_give_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no such run file"):
        checkpoint.load(tmp_path / "nope.h5")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"this is not an HDF5 file" * 10)
    with pytest.raises(CheckpointError, match="not a readable HDF5 file"):
        checkpoint.load(junk)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(CheckpointError, match="not an xbar run file"):
        checkpoint.load(other)

    tr, result, _, _ = trained(update="qat", device="rram-4bit")
    good = checkpoint.save(tmp_path / "good.h5", tr, tr.cfg, result)
    data = good.read_bytes()
    cut = tmp_path / "cut.h5"
    cut.write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError):
        checkpoint.load(cut)
    damaged = tmp_path / "damaged.h5"
    damaged.write_bytes(data)
    with h5py.File(damaged, "a") as f:
        del f["layers/1/crossbar/state/gp0"]
    with pytest.raises(CheckpointError, match="corrupted.*gp0"):
        checkpoint.load(damaged)
    with h5py.File(damaged, "a") as f:
        f.attrs["format_version"] = 99
    with pytest.raises(CheckpointError, match="newer xbar"):
        checkpoint.load(damaged)
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoint.save(tmp_path / "no" / "dir" / "run.h5", tr)
    assert issubclass(CheckpointError, XbarError)


def test_a_bare_cnn_network_without_its_spec_is_refused(tmp_path):
    from xbar.checkpoint import CheckpointError, save
    from xbar.nn import NetworkSpec
    net = NetworkSpec.preset("lenet5-binary").build(784, 10, np.random.default_rng(0))
    with pytest.raises(CheckpointError, match="not a plain dense layer"):
        save(tmp_path / "x.h5", net, {"network": "lenet5-binary"})


@pytest.mark.parametrize("network", ["lenet5", "lenet5-binary"])
def test_cnn_and_binary_networks_round_trip(tmp_path, network):
    """Conv, pooling, batch norm and binary weights: a saved run predicts exactly as the trainer did,
    fresh and after drift."""
    cfg = TrainConfig(network=network, dataset="digits", epochs=1, update="qat", bits=3,
                      device="pcm-inference", adc_bits=8).resolve()
    from xbar.nn import NetworkSpec
    spec = NetworkSpec.preset(network)
    rng = np.random.default_rng(0)
    X = rng.random((48, int(np.prod(spec.input))), dtype=np.float32)
    y = rng.integers(0, 10, 48)
    tr = Trainer(cfg, X.shape[1], 10)
    for s in range(0, 48, 16):
        tr.step(X[s:s + 16], y[s:s + 16])
    path = checkpoint.save(tmp_path / "cnn.h5", tr, cfg, {"status": "ok"})
    assert (path.stat().st_mode & 0o777) != 0o600       # readable like any other output
    run = checkpoint.load(path)
    net = run.network()
    assert [type(layer).__name__ for layer in net.layers] == [type(layer).__name__ for layer in tr.net.layers]
    assert [layer.bn is None for layer in net.layers] == [layer.bn is None for layer in tr.net.layers]
    want = evaluate(tr.net, X, y, 1000)
    assert evaluate(net, X, y, 1000) == want
    assert run.scores(X, y) == want                      # a pure function of the file
    drifted = [run.scores(X, y, at_seconds=86400, compensate=True) for _ in range(2)]
    assert drifted[0] == drifted[1]
