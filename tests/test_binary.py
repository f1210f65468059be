"""Binary networks on crossbars: sign(w) weights (optionally × mean|w|), sign activations with a
clipped STE, latent weights clipped to [-1, 1], wider first/last layers; against torch autograd,
on 1-bit devices, and in short training runs (every rule, qat and in-situ updates)."""

from __future__ import annotations

import numpy as np
import pytest

from xbar import Crossbar, Device
from xbar.errors import ConfigError
from xbar.nn import NetworkSpec, binarize, binary_grad
from xbar.train import TrainConfig, Trainer, train
from xbar.train.rules import make_rule

torch = pytest.importorskip("torch")
from test_conv import STESign, build, ours, torch_reference  # the torch mirror of a network


@pytest.mark.parametrize("scale", ["none", "mean"])
@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (30, 1)])
def test_binarize_and_its_straight_through_gradient_match_torch(scale, shape):
    rng = np.random.default_rng(shape[0])
    W = rng.uniform(-1.5, 1.5, shape).astype(np.float32)   # some latent weights beyond ±1: STE 0
    G = rng.standard_normal(shape).astype(np.float32)
    Wt = torch.tensor(W, requires_grad=True)
    s = STESign.apply(Wt)
    Wb = s * Wt.abs().mean(dim=0, keepdim=True) if scale == "mean" else s
    (Wb * torch.tensor(G)).sum().backward()
    np.testing.assert_allclose(binarize(W, scale), Wb.detach().numpy(), rtol=1e-6)
    np.testing.assert_allclose(binary_grad(W, G, scale), Wt.grad.numpy(), rtol=1e-5, atol=1e-6)
    assert set(np.unique(np.sign(binarize(W, scale)))) <= {-1.0, 1.0}
    assert binarize(np.zeros((2, 2), np.float32))[0, 0] == 1   # never 0


BNN = {"input": [2, 6, 6], "activation": "sign", "weights": "binary", "scale": "mean", "batchnorm": True,
       "bias": False, "layers": [
           {"kind": "conv", "filters": 4, "kernel": 3, "padding": 1, "weights": "real", "bits": 4},
           {"kind": "maxpool"},
           {"kind": "conv", "filters": 5, "kernel": 2, "scale": "none"},
           {"kind": "flatten"},
           {"kind": "dense", "units": 6, "batchnorm": False, "bias": True}],
       "output_layer": {"weights": "real", "bits": 6, "bias": True}}


def test_spec_keys_set_binary_weights_scale_bits_per_layer():
    net = build(BNN, 72)
    kinds = [(layer.kind, layer.weights, layer.scale, layer.bits, layer.bn is not None, layer.b is not None,
              layer.activation) for layer in net.layers]
    assert kinds == [("conv", "real", "mean", 4, True, False, "sign"),
                     ("conv", "binary", "none", None, True, False, "sign"),
                     ("dense", "binary", "mean", None, False, True, "sign"),
                     ("dense", "real", "mean", 6, False, True, "identity")]
    assert [hasattr(layer, "post_update") for layer in net.layers] == [False, True, True, False]


@pytest.mark.parametrize("batch", [2, 5])
def test_binary_network_gradients_match_torch_autograd(batch):
    net = build(BNN, 72, classes=4, seed=batch)
    rng = np.random.default_rng(batch)
    X = rng.standard_normal((batch, 72)).astype(np.float32)
    y = rng.integers(0, 4, batch)
    out, loss, grads, caches = ours(net, make_rule("bp"), X, y)
    t_out, t_loss, t_grads = torch_reference(net, X, y, caches)
    np.testing.assert_allclose(out, t_out, rtol=1e-5, atol=1e-5)
    assert loss == pytest.approx(t_loss, rel=1e-5)
    for g, t in zip(grads, t_grads):
        np.testing.assert_allclose(g, t, rtol=1e-4, atol=1e-5)
    # the forward pass really is binary: ±1 activations between the layers, ±α weights
    assert set(np.unique(caches[1].x)) <= {-1.0, 1.0}
    assert set(np.unique(np.abs(net.layers[1].stored_weights()))) == {1.0}


def test_binary_weights_sit_exactly_on_one_bit_devices_as_differential_pairs():
    """On 1-bit devices with a per-column gain, sign(w)·α programs as ±G: one device of every pair
    at g_max, the other at g_min, and the crossbar's effective weights are exactly ±α_j."""
    net = build(BNN, 72)
    dev = Device.preset("ideal").with_(bits=1)
    for i, layer in enumerate(net.layers):
        layer.crossbar = Crossbar(dev, tile=(8, 4), seed=i, range="local", gain="column")
        layer.program()
    for layer in net.layers[1:3]:
        xb = layer.crossbar
        np.testing.assert_allclose(xb.weights(), layer.stored_weights(), rtol=1e-6)
        gp, gn = xb.conductances()
        assert np.all((gp == dev.g_max_us) ^ (gn == dev.g_max_us))   # exactly one device on per pair
        assert xb.stats()["weights_clipped"] == 0


def digits_conv(tmp_path, **top) -> str:
    """A small conv net for the bundled 8x8 digits, written as a preset file."""
    lines = ['input = [1, 8, 8]'] + [f"{k} = {v!r}".replace("'", '"').replace("True", "true").replace(
        "False", "false") for k, v in top.items()]
    lines += ['[[layers]]', 'kind = "conv"', 'filters = 8', 'kernel = 3', 'padding = 1', 'weights = "real"',
              '[[layers]]', 'kind = "maxpool"',
              '[[layers]]', 'kind = "conv"', 'filters = 16', 'kernel = 3', 'padding = 1',
              '[[layers]]', 'kind = "maxpool"',
              '[[layers]]', 'kind = "flatten"', 'size = 64',
              '[[layers]]', 'kind = "dense"', 'units = 32',
              '[output_layer]', 'weights = "real"']
    f = tmp_path / "digits-conv.toml"
    f.write_text("\n".join(lines) + "\n")
    return str(f)


def test_trainer_clips_latent_weights_and_reprograms_binary_devices(tmp_path):
    net_file = digits_conv(tmp_path, weights="binary", batchnorm=True, bias=False)
    cfg = TrainConfig(network=net_file, dataset="digits", update="qat", bits=1, adc_bits=8, tile="16x16",
                      lr=0.05, epochs=1, seed=3).resolve()
    tr = Trainer(cfg, 64, 10)
    rng = np.random.default_rng(0)
    X = rng.random((32, 64), dtype=np.float32)
    y = rng.integers(0, 10, 32)
    binary = [layer for layer in tr.net.layers if layer.weights == "binary"]
    assert len(binary) == 2
    for layer in binary:
        layer.W *= 20          # latent weights far beyond ±1 (sign(W) unchanged)
    for _ in range(2):
        tr.step(X, y)
    for layer in binary:
        assert np.abs(layer.W).max() == 1.0                       # clipped after every step
        np.testing.assert_allclose(layer.crossbar.weights(), layer.stored_weights(), rtol=1e-6)


@pytest.mark.parametrize("rule", ["bp", "fa", "dfa", "hsic"])
def test_binary_conv_network_learns_digits_with_every_rule(tmp_path, rule):
    net_file = digits_conv(tmp_path, weights="binary", batchnorm=True, bias=False)
    epochs = 6 if rule == "hsic" else 4
    # (no ADC: xbar.train's per-epoch ADC recalibration feeds a layer's input straight to its
    # crossbar, which a convolution's im2col rows are not; CrossbarLayer.calibrate does it right)
    r = train({"network": net_file, "dataset": "digits", "update": "qat", "bits": 1,
               "tile": "16x16", "rule": rule, "epochs": epochs, "seed": 1, "lr": 0.01, "eval_train": False,
               "batch_size": 64 if rule == "hsic" else 32})
    assert r["status"] == "ok", r["message"]
    assert r["test_accuracy"] > 40, (rule, r["history"])   # chance: 10 % (measured 55-88 % over seeds)
    assert r["network"]["widths"] == [64, 128, 64, 32, 10]
    assert len(r["hardware"]) == 4


def test_binary_activations_network_learns_and_runs_in_situ(tmp_path):
    """Binary weights and sign activations (BNN) with qat; then the in-situ 'mixed' scheme on
    1-bit devices (the devices hold the weights; mixed precision's accumulator plays the latent
    weights' part)."""
    net_file = digits_conv(tmp_path, weights="binary", batchnorm=True, bias=False, activation="sign")
    r = train({"network": net_file, "dataset": "digits", "update": "qat", "bits": 1,
               "tile": "16x16", "epochs": 4, "seed": 1, "lr": 0.01, "eval_train": False, "batch_size": 32})
    assert r["status"] == "ok" and r["test_accuracy"] > 40, r["history"]
    r = train({"network": net_file, "dataset": "digits", "update": "mixed", "bits": 1, "tile": "16x16",
               "epochs": 1, "seed": 1, "eval_train": False, "train_limit": 320, "batch_size": 32})
    assert r["status"] == "ok" and r["test_accuracy"] is not None


def test_layer_calibrate_sets_the_adc_range_from_im2col_rows():
    net = build(BNN, 72)
    dev = Device.preset("ideal").with_(bits=1)
    for i, layer in enumerate(net.layers):
        layer.crossbar = Crossbar(dev, tile=(8, 4), adc_bits=6, seed=i, range="local", gain="column")
        layer.program()
    X = np.random.default_rng(0).standard_normal((16, 72)).astype(np.float32)
    x = X
    for layer in net.layers:
        x = layer.calibrate(x)
        assert not layer.crossbar.stats().get("adc_auto_calibrated_fwd", False)
    np.testing.assert_array_equal(x, net.predict(X))
    for layer in net.layers:
        assert layer.crossbar.stats()["adc_clipped"] == 0   # calibrated on these very inputs


def test_same_seed_same_result_with_dropout_and_batch_norm(tmp_path):
    f = tmp_path / "drop.toml"
    f.write_text('input = [1, 8, 8]\nbatchnorm = true\nweights = "binary"\n'
                 '[[layers]]\nkind = "conv"\nfilters = 4\nkernel = 3\n'
                 '[[layers]]\nkind = "dropout"\np = 0.3\n'
                 '[[layers]]\nkind = "flatten"\n[[layers]]\nkind = "dense"\nunits = 16\n'
                 '[[layers]]\nkind = "dropout"\np = 0.2\n')
    runs = [train({"network": str(f), "dataset": "digits", "update": "qat", "bits": 2, "adc_bits": 6,
                   "tile": "16x16", "epochs": 1, "seed": 7, "train_limit": 256, "eval_train": False})
            for _ in range(2)]
    assert runs[0]["history"] == [dict(h, seconds=runs[0]["history"][i]["seconds"])
                                  for i, h in enumerate(runs[1]["history"])]


BAD = [
    ('weights = "bin"\nhidden = [3]\n', r"net.toml: weights = 'bin': expected one of 'real', 'binary'"),
    ('scale = "max"\nhidden = [3]\n', r"net.toml: scale = 'max': expected one of 'none', 'mean'"),
    ('[[layers]]\nunits = 3\nbits = 9\n',
     r"net.toml: layers\[0\].bits = 9 is out of range: expected an integer in \[1, 8\]"),
    ('[[layers]]\nunits = 3\nscale = "means"\n', r"layers\[0\].scale = 'means'.*did you mean 'mean'"),
    ('hidden = [3]\n[output_layer]\nweights = "binary"\nactivation = "sign"\n',
     r"output_layer.activation: unknown key; valid keys: weights, scale, bits, bias"),
    ('hidden = [3]\noutput_layer = 3\n', r"net.toml: output_layer: expected an \[output_layer\] table"),
]


@pytest.mark.parametrize("text,message", BAD, ids=range(len(BAD)))
def test_bad_binary_config_names_file_layer_and_valid_values(tmp_path, text, message):
    f = tmp_path / "net.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=message):
        NetworkSpec.from_toml(f)


def test_mlp_presets_are_unchanged_by_the_new_keys():
    """hidden = [...] specs build exactly the layers they built before (same draws, plain Dense)."""
    spec = NetworkSpec.preset("mlp-100x2")
    net = spec.build(784, 10, np.random.default_rng(0))
    rng = np.random.default_rng(0)
    for layer, (n_in, n_out) in zip(net.layers, [(784, 100), (100, 100), (100, 10)]):
        bound = 1 / np.sqrt(n_in)
        np.testing.assert_array_equal(layer.W, rng.uniform(-bound, bound, (n_in, n_out)).astype(np.float32))
        np.testing.assert_array_equal(layer.b, rng.uniform(-bound, bound, n_out).astype(np.float32))
        assert layer.weights == "real" and layer.bn is None and not layer.tail and layer.bits is None
        assert not hasattr(layer, "post_update")


# ---- hooks in the training loop (xbar/train: updates.py, loop.py, sg.py) ------------------------------
# These need small changes outside the layers (per-layer device bits in DeviceSetup, ADC
# recalibration through CrossbarLayer.calibrate, SG modules as wide as layer.out_size); each test
# skips until its hook is there.

def _has(obj, text: str) -> bool:
    import inspect
    return text in inspect.getsource(obj)


def test_per_layer_bits_give_the_first_and_last_layers_wider_devices(tmp_path):
    from xbar.train.updates import DeviceSetup
    if not hasattr(DeviceSetup, "for_layer"):
        pytest.skip("needs DeviceSetup.for_layer (per-layer device bits) in xbar/train/updates.py")
    cfg = TrainConfig(network="lenet5-binary", dataset="fmnist", update="qat", bits=1, adc_bits=8).resolve()
    tr = Trainer(cfg, 784, 10)
    assert [layer.crossbar.device.bits for layer in tr.net.layers] == [4, 1, 1, 1, 4]
    first = tr.net.layers[0].crossbar.weights()
    assert len(np.unique(np.round(first / np.abs(first).max(axis=0), 5))) > 3   # more than ternary


def test_adc_recalibration_between_epochs_reads_im2col_rows(tmp_path):
    if not _has(Trainer.calibrate, "layer.calibrate("):
        pytest.skip("needs Trainer.calibrate to call layer.calibrate(x) (xbar/train/loop.py)")
    net_file = digits_conv(tmp_path, weights="binary", batchnorm=True, bias=False)
    r = train({"network": net_file, "dataset": "digits", "update": "qat", "bits": 1, "adc_bits": 8,
               "tile": "16x16", "epochs": 2, "seed": 1, "eval_train": False, "train_limit": 320})
    assert r["status"] == "ok"


def test_synthetic_gradients_on_convolutions(tmp_path):
    from xbar.train.sg import SG
    if not _has(SG.setup, "out_size"):
        pytest.skip("needs SG modules of width layer.out_size (xbar/train/sg.py)")
    net_file = digits_conv(tmp_path, batchnorm=True)
    r = train({"network": net_file, "dataset": "digits", "rule": "sg", "epochs": 3, "seed": 1,
               "eval_train": False})
    assert r["status"] == "ok" and r["test_accuracy"] > 40, r["history"]
