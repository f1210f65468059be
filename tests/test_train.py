"""Training: layers, rules, optimizers and update schemes against torch and against plain formulas."""

from __future__ import annotations

import json

import numpy as np
import pytest

from xbar import Device
from xbar import mapping as mp
from xbar.errors import ConfigError
from xbar.nn import NetworkSpec
from xbar.train import TrainConfig, Trainer, train
from xbar.train.optim import SGD, Adadelta, Adam, StepLR, make_optimizer
from xbar.train.rules import make_rule
from xbar.train.updates import DeviceSetup, make_update, round_to_grid

torch = pytest.importorskip("torch")

IDEAL = Device.preset("ideal")


def make_net(widths, activation="relu", output="log_softmax", seed=0):
    spec = NetworkSpec.from_dict({"hidden": list(widths[1:-1]), "activation": activation, "output": output})
    return spec.build(widths[0], widths[-1], np.random.default_rng(seed))


def on_ideal_crossbars(net, tile=(4, 3)):
    """qat on the ideal analog device without ADC/DAC: every read must equal the float product."""
    setup = DeviceSetup(IDEAL, None, "device", "global", (-1.0, 1.0), "layer", tile=tile)
    make_update("qat", setup).attach(net, list(range(len(net.layers))), [])
    return net


def torch_grads(net, X, y, activation, output):
    """Reference: the same weights in torch, gradients by autograd."""
    acts = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid,
            "hardtanh": torch.nn.functional.hardtanh}
    Ws = [torch.tensor(layer.W, requires_grad=True) for layer in net.layers]
    bs = [torch.tensor(layer.b, requires_grad=True) for layer in net.layers]
    h = torch.tensor(X)
    for i, (W, b) in enumerate(zip(Ws, bs)):
        h = h @ W + b
        if i < len(Ws) - 1:
            h = acts[activation](h)
    yt = torch.tensor(y)
    if output == "log_softmax":
        loss = torch.nn.functional.nll_loss(torch.log_softmax(h, dim=1), yt)
    else:
        loss = torch.nn.functional.mse_loss(h, torch.nn.functional.one_hot(yt, h.shape[1]).float())
    loss.backward()
    return loss.item(), [t.grad.numpy() for pair in zip(Ws, bs) for t in pair]


def our_grads(net, rule, X, y):
    out, caches = net.forward(X)
    loss, e = net.loss(out, y)
    deltas = rule.deltas(net, caches, e)
    return loss, [g for layer, d, c in zip(net.layers, deltas, caches) for g in layer.grads(d, c)]


# ---- layers and BP against torch autograd ------------------------------------------------------

@pytest.mark.parametrize("device", ["float", "ideal-crossbar"])
@pytest.mark.parametrize("activation,output,widths,batch", [
    ("relu", "log_softmax", (7, 5, 4, 3), 6),
    ("tanh", "log_softmax", (9, 6, 10), 1),
    ("sigmoid", "log_softmax", (1, 1, 1, 2), 3),
    ("hardtanh", "mse", (8, 13, 5), 4),
    ("relu", "mse", (6, 3), 5),
])
def test_bp_gradients_equal_torch_autograd(device, activation, output, widths, batch):
    net = make_net(widths, activation, output)
    if device == "ideal-crossbar":
        on_ideal_crossbars(net)
    rng = np.random.default_rng(1)
    X = rng.standard_normal((batch, widths[0])).astype(np.float32)
    y = rng.integers(0, widths[-1], batch)
    loss, grads = our_grads(net, make_rule("bp"), X, y)
    ref_loss, ref = torch_grads(net, X, y, activation, output)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    for g, r in zip(grads, ref):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-6)


def test_ideal_crossbar_reads_equal_float_products():
    net = on_ideal_crossbars(make_net((70, 9, 4)), tile=(64, 64))
    X = np.random.default_rng(2).standard_normal((3, 70)).astype(np.float32)
    layer = net.layers[0]
    np.testing.assert_allclose(layer.forward(X)[0], np.maximum(X @ layer.W + layer.b, 0), rtol=1e-5, atol=1e-6)
    E = np.random.default_rng(3).standard_normal((3, 9)).astype(np.float32)
    np.testing.assert_allclose(layer.backward_input(E), E @ layer.W.T, rtol=1e-5, atol=1e-6)


def test_sign_activation_uses_clipped_straight_through_estimator():
    net = make_net((3, 4, 2), "sign")
    a = np.array([[-2.0, -1.0, 0.5, 1.5]], np.float32)
    layer = net.layers[0]
    z = layer._f(a)
    np.testing.assert_array_equal(z, [[-1, -1, 1, 1]])
    from xbar.nn import Cache
    np.testing.assert_array_equal(layer.local_delta(np.ones_like(a), Cache(None, a, z)), [[0, 1, 1, 0]])


def test_mask_zeroes_weights_and_their_gradients():
    net = make_net((5, 3, 2))
    layer = net.layers[0]
    mask = np.random.default_rng(0).random((5, 3)) > 0.5
    layer.set_mask(mask)
    X = np.ones((2, 5), np.float32)
    _, grads = our_grads(net, make_rule("bp"), X, np.array([0, 1]))
    assert np.all(layer.W[~mask] == 0) and np.all(grads[0][~mask] == 0)


# ---- FA and DFA reduce to BP when their feedback is Wᵀ ------------------------------------------

def test_fa_with_feedback_equal_to_weights_is_bp():
    net = make_net((7, 6, 5, 3))
    rng = np.random.default_rng(4)
    X, y = rng.standard_normal((4, 7)).astype(np.float32), rng.integers(0, 3, 4)
    fa = make_rule("fa")
    fa.setup(net, np.random.default_rng(5))
    _, random_fb = our_grads(net, fa, X, y)
    for i, layer in enumerate(net.layers[1:]):
        fa.set_feedback(i, layer.W)
    _, g_fa = our_grads(net, fa, X, y)
    _, g_bp = our_grads(net, make_rule("bp"), X, y)
    for a, b in zip(g_fa, g_bp):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert not np.allclose(random_fb[0], g_bp[0])   # random feedback is really different
    np.testing.assert_array_equal(random_fb[-1], g_bp[-1])   # the output layer never sees feedback


def test_dfa_with_one_hidden_layer_and_feedback_w_transposed_is_bp():
    net = make_net((8, 6, 4), "tanh")
    rng = np.random.default_rng(6)
    X, y = rng.standard_normal((5, 8)).astype(np.float32), rng.integers(0, 4, 5)
    dfa = make_rule("dfa")
    dfa.setup(net, np.random.default_rng(7))
    assert dfa.B[0].shape == (4, 6) and np.abs(dfa.B[0]).max() <= 0.5   # U[±1/√classes]
    dfa.set_feedback(0, net.layers[1].W.T)
    _, g_dfa = our_grads(net, dfa, X, y)
    _, g_bp = our_grads(net, make_rule("bp"), X, y)
    for a, b in zip(g_dfa, g_bp):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


# ---- optimizers against torch.optim -------------------------------------------------------------

@pytest.mark.parametrize("ours,theirs,kw", [
    (SGD, torch.optim.SGD, {"lr": 0.1}),
    (SGD, torch.optim.SGD, {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-2}),
    (SGD, torch.optim.SGD, {"lr": 0.05, "momentum": 0.9, "nesterov": True}),
    (Adam, torch.optim.Adam, {"lr": 1e-2}),
    (Adam, torch.optim.Adam, {"lr": 1e-3, "weight_decay": 1e-2}),
    (Adadelta, torch.optim.Adadelta, {"lr": 1.0}),
    (Adadelta, torch.optim.Adadelta, {"lr": 0.5, "weight_decay": 1e-3}),
])
def test_optimizer_matches_torch(ours, theirs, kw):
    rng = np.random.default_rng(8)
    shapes = [(5, 3), (3,), (1, 1)]
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    tparams = [torch.tensor(p.copy(), requires_grad=True) for p in params]
    opt, topt = ours(params, **kw), theirs(tparams, **kw)
    for _ in range(6):
        grads = [rng.standard_normal(s).astype(np.float32) for s in shapes]
        opt.step(grads)
        for t, g in zip(tparams, grads):
            t.grad = torch.tensor(g)
        topt.step()
    for p, t in zip(params, tparams):
        np.testing.assert_allclose(p, t.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_steplr_matches_torch():
    p = np.zeros(2, np.float32)
    opt = make_optimizer("adadelta", [p], 1.0)
    sched = StepLR(opt, step_size=2, gamma=0.7)
    t = torch.zeros(2, requires_grad=True)
    topt = torch.optim.Adadelta([t], lr=1.0)
    tsched = torch.optim.lr_scheduler.StepLR(topt, step_size=2, gamma=0.7)
    for _ in range(7):
        sched.step()
        topt.step()
        tsched.step()
        assert opt.lr == pytest.approx(topt.param_groups[0]["lr"], rel=1e-12)


def test_float_training_steps_match_torch_from_the_same_weights():
    """End to end: Trainer steps (float, BP, Adadelta) equal torch's on the same batches."""
    from xbar.data import load
    X, y = load("digits", "train")
    cfg = TrainConfig(recipe="seed").resolve()
    tr = Trainer(cfg, X.shape[1], 10)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    with torch.no_grad():
        for lin, layer in zip((model[0], model[2]), tr.net.layers):
            lin.weight.copy_(torch.tensor(layer.W.T))
            lin.bias.copy_(torch.tensor(layer.b))
    topt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    for s in range(0, 640, 64):
        xb, yb = X[s:s + 64], y[s:s + 64]
        tr.step(xb, yb)
        topt.zero_grad()
        torch.nn.functional.nll_loss(torch.log_softmax(model(torch.tensor(xb)), 1), torch.tensor(yb)).backward()
        topt.step()
    for lin, layer in zip((model[0], model[2]), tr.net.layers):
        np.testing.assert_allclose(layer.W, lin.weight.detach().numpy().T, rtol=1e-4, atol=1e-5)


def test_qat_on_ideal_analog_device_trains_exactly_like_float():
    from xbar.data import load
    X, y = load("digits", "train")
    runs = []
    for update in ("float", "qat"):
        tr = Trainer(TrainConfig(update=update, range="global").resolve(), X.shape[1], 10)
        for s in range(0, 640, 64):
            tr.step(X[s:s + 64], y[s:s + 64])
        runs.append([layer.W.copy() for layer in tr.net.layers])
    for a, b in zip(*runs):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


# ---- update schemes ------------------------------------------------------------------------------

@pytest.mark.parametrize("quant,rng,bits", [("asymm", "global", 3), ("symm", "global", 2),
                                            ("asymm", "local", 4), ("symm", "local", 8)])
def test_nearest_stored_weights_are_the_seed_quantizer_of_the_float_step(quant, rng, bits):
    from xbar.data import load
    X, y = load("digits", "train")
    cfg = TrainConfig(update="nearest", rule="fa", bits=bits, quant=quant, range=rng, recipe="seed").resolve()
    tr = Trainer(cfg, X.shape[1], 10)
    for B in tr.rule.feedback():   # FA's feedback is rounded with the same function (seed study)
        np.testing.assert_array_equal(B, mp.quantize(B, bits, quant, rng))
    for s in range(0, 192, 64):
        out, caches = tr.net.forward(X[s:s + 64])
        _, e = tr.net.loss(out, y[s:s + 64])
        deltas = tr.rule.deltas(tr.net, caches, e)
        tr.opt.step([g for layer, d, c in zip(tr.net.layers, deltas, caches) for g in layer.grads(d, c)])
        stepped = [(layer.W.copy(), layer.b.copy()) for layer in tr.net.layers]
        tr.update.after_step(tr.net, tr.feedback)
        for layer, (W, b) in zip(tr.net.layers, stepped):
            np.testing.assert_array_equal(layer.W, mp.quantize(W, bits, quant, rng))
            np.testing.assert_array_equal(layer.b, mp.quantize(b, bits, quant, rng))
            np.testing.assert_allclose(layer.crossbar.weights(), layer.W, atol=1e-6)


def test_device_grid_matches_the_crossbar():
    """quant 'device' rounds onto the levels the crossbar programs (per column under gain 'column')."""
    dev = IDEAL.with_(bits=2)
    W = np.random.default_rng(9).standard_normal((70, 5)).astype(np.float32) * 0.3
    for rng, gain in (("global", "layer"), ("local", "layer"), ("local", "column")):
        setup = DeviceSetup(dev, 2, "device", rng, (-1.0, 1.0), gain)
        Wq = round_to_grid(W, setup, columns=gain == "column")
        xb = setup.crossbar(0).program(Wq)
        np.testing.assert_allclose(xb.weights(), Wq, atol=1e-6)
        steps = len(np.unique(np.round(Wq[:, 0] / (np.abs(Wq[:, 0]).max() / 3), 4)))
        assert steps <= 7   # a pair of 4-level devices: k in -3..3


@pytest.mark.parametrize("quant", ["asymm", "symm", "device"])
def test_stochastic_rounding_is_unbiased(quant):
    setup = DeviceSetup(IDEAL.with_(bits=2), 2, quant, "global", (-1.0, 1.0), "layer")
    x = np.linspace(-0.97, 0.97, 41, dtype=np.float32)
    rng = np.random.default_rng(10)
    n = 4000
    draws = np.stack([round_to_grid(x, setup, u=rng.random(x.shape, dtype=np.float32)) for _ in range(n)])
    nearest = round_to_grid(x, setup)
    step = np.max(np.diff(np.unique(draws)))
    assert set(np.unique(draws)) <= set(np.unique(round_to_grid(np.linspace(-1, 1, 999, dtype=np.float32),
                                                                setup)))
    assert np.all(np.abs(draws - x) <= step + 1e-6)           # only the two neighbouring levels
    np.testing.assert_allclose(draws.mean(axis=0), x, atol=5 * step / (2 * np.sqrt(n)))
    assert np.abs(nearest - x).max() <= step / 2 + 1e-6


# ---- the loop ------------------------------------------------------------------------------------

def strip_times(result):
    r = json.loads(json.dumps(result))
    for k in ("seconds", "train_seconds"):
        r.pop(k)
    for h in r["history"]:
        h.pop("seconds")
    return r


def test_same_seed_gives_identical_history():
    for cfg in (TrainConfig(update="stochastic", bits=2, epochs=2, rule="fa", train_limit=500),
                TrainConfig(update="qat", bits=2, epochs=2, rule="dfa", train_limit=500,
                            device="agsi", adc_bits=6)):
        a, b = train(cfg), train(cfg)
        assert strip_times(a) == strip_times(b)
    c = train(cfg.with_(seed=2))
    assert strip_times(c)["history"] != strip_times(a)["history"]


def test_result_is_json_with_history_per_epoch():
    r = train(TrainConfig(epochs=2, train_limit=300, test_limit=100))
    r2 = json.loads(json.dumps(r))
    assert r2["status"] == "ok" and len(r2["history"]) == 2
    assert set(r2["history"][0]) >= {"epoch", "test_accuracy", "train_accuracy", "loss", "seconds"}
    assert r2["test_accuracy"] == r2["history"][-1]["test_accuracy"]
    assert r2["config"]["optimizer"] == "adam" and r2["config"]["lr"] == 1e-3
    seed = TrainConfig(recipe="seed", update="nearest", bits=3).resolve()
    assert (seed.optimizer, seed.lr, seed.lr_gamma, seed.batch_size, seed.epochs) == ("adadelta", 1.0, 0.7, 64, 30)
    assert (seed.quant, seed.range, seed.w_max, seed.gain) == ("asymm", "global", 1.0, "layer")
    assert TrainConfig(recipe="seed", optimizer="sgd").resolve().lr_gamma == 1.0   # gamma belongs to Adadelta


# Thresholds sit ~5 points under the lowest of seeds 1-5 (measured, then fixed; seed 1 is used).
def test_digits_float_training_reaches_sensible_accuracy():
    r = train(TrainConfig(epochs=5, lr=3e-3))   # Adam: 93.6 % (91.7-93.6 over seeds 1-5)
    assert r["test_accuracy"] > 86.0


def test_digits_qat_and_stochastic_two_bit_train():
    r = train(TrainConfig(update="qat", bits=2, epochs=5, lr=3e-3))          # 91.7 % (89.7-91.9)
    assert r["test_accuracy"] > 84.0
    r = train(TrainConfig(update="stochastic", bits=2, epochs=5, lr=3e-3))   # 88.9 % (88.9-89.7)
    assert r["test_accuracy"] > 83.0


def test_seed_recipe_collapses_at_two_bits():
    r = train(TrainConfig(update="nearest", bits=2, recipe="seed", epochs=3))   # 11.4-13.9 %, seeds 1-5
    assert r["config"]["quant"] == "asymm" and r["config"]["range"] == "global"
    assert r["test_accuracy"] < 30.0


def test_divergence_stops_with_status_and_keeps_history():
    r = train(TrainConfig(optimizer="sgd", lr=1e30, epochs=3, train_limit=200))
    assert r["status"] == "diverged" and r["test_accuracy"] is None
    assert isinstance(r["history"], list) and ("loss" in r["message"] or "NaN" in r["message"])


# ---- configuration errors ------------------------------------------------------------------------

@pytest.mark.parametrize("field,value,expect", [
    ("rule", "bpp", ["'bp'", "'fa'", "'dfa'", "did you mean 'bp'"]),
    ("update", "nearst", ["'float'", "'nearest'", "'stochastic'", "'qat'"]),
    ("optimizer", "adamw", ["'sgd'", "'adam'", "'adadelta'"]),
    ("dataset", "mnst", ["'fmnist'", "'mnist'", "'digits'"]),
    ("quant", "asym", ["'asymm'", "'symm'", "'device'"]),
    ("bits", 9, ["bits = 9", "[1, 8]"]),
])
def test_bad_values_list_the_valid_ones(field, value, expect):
    with pytest.raises(ConfigError) as err:
        TrainConfig(**{field: value})
    for text in expect:
        assert text in str(err.value)


def test_bad_presets_and_names():
    with pytest.raises(ConfigError, match="unknown network 'mlp-100'.*mlp-100x2"):
        TrainConfig(network="mlp-100").resolve()
    with pytest.raises(ConfigError, match="unknown device"):
        TrainConfig(device="agsii").resolve()
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        TrainConfig.from_dict({"epoch": 3})
    with pytest.raises(ConfigError, match="'bp'.*'fa'.*'dfa'"):
        make_rule("hsic-x")
    with pytest.raises(ConfigError, match="needs bits"):
        TrainConfig(update="nearest").resolve()
    with pytest.raises(ConfigError, match="tile"):
        TrainConfig(tile="64by64")


def test_network_presets_load_and_bad_spec_names_the_file(tmp_path):
    for name in ("mlp-4", "mlp-20x6", "mlp-50x2", "mlp-50x3", "mlp-100x2", "mlp-100x3", "lenet-300-100",
                 "digits-mlp"):
        spec = NetworkSpec.preset(name)
        assert spec.source and spec.output == "log_softmax"
    assert NetworkSpec.preset("mlp-100x2").widths(784, 10) == [784, 100, 100, 10]
    assert NetworkSpec.preset("mlp-20x6").widths(784, 10) == [784] + [20] * 6 + [10]
    f = tmp_path / "bad.toml"
    f.write_text('hidden = [10]\nactivaton = "relu"\n')
    with pytest.raises(ConfigError, match=r"bad.toml: activaton.*did you mean 'activation'"):
        NetworkSpec.from_toml(f)
    f.write_text('hidden = [10, 0]\n')
    with pytest.raises(ConfigError, match=r"bad.toml: hidden\[1\]"):
        NetworkSpec.from_toml(f)
    f.write_text('[[layers]]\nkind = "conv"\nunits = 3\n')
    with pytest.raises(ConfigError, match=r"layers\[0\].kind.*'dense'"):
        NetworkSpec.from_toml(f)
    f.write_text('[[layers]]\nunits = 3\nactivation = "tanh"\n')
    assert NetworkSpec.from_toml(f).layers[0].activation == "tanh"


def test_init_range_is_fixed_per_layer_from_the_initial_weights():
    from xbar.data import load
    X, y = load("digits", "train")
    cfg = TrainConfig(update="stochastic", bits=2).resolve()
    assert (cfg.range, cfg.quant, cfg.optimizer, cfg.lr_gamma) == ("init", "device", "adam", 0.9)
    tr = Trainer(cfg, X.shape[1], 10)
    ms = [2.0 * float(np.abs(layer.W).max()) for layer in tr.net.layers]
    for s in range(0, 320, 64):
        tr.step(X[s:s + 64], y[s:s + 64])
    for layer, setup, m in zip(tr.net.layers, tr.update.setups, ms):
        assert setup.range == "global" and setup.w_range == pytest.approx((-m, m))
        k = layer.W / (m / 3)                       # a pair of 4-level devices: k in -3..3
        np.testing.assert_allclose(k, np.round(k), atol=1e-4)
        assert np.abs(k).max() <= 3 + 1e-4
        np.testing.assert_allclose(layer.crossbar.weights(), layer.W, atol=1e-6)


def test_divergence_on_device_is_caught_when_programming():
    r = train(TrainConfig(update="qat", bits=3, optimizer="sgd", lr=1e30, epochs=2, train_limit=200))
    assert r["status"] == "diverged" and r["test_accuracy"] is None and r["message"]
