"""Local training rules: the HSIC bottleneck and synthetic gradients, against plain formulas and
torch autograd, and in short training runs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from xbar.errors import ConfigError
from xbar.nn import NetworkSpec
from xbar.train import TrainConfig, Trainer, train
from xbar.train.hsic import batch_rms, centre, gaussian_kernel, layer_objective, nhsic, r_matrix
from xbar.train.rules import make_rule, one_hot
from xbar.train.sg import SGModule

torch = pytest.importorskip("torch")


def make_net(widths, activation="relu", seed=0):
    spec = NetworkSpec.from_dict({"hidden": list(widths[1:-1]), "activation": activation})
    return spec.build(widths[0], widths[-1], np.random.default_rng(seed))


def batch(n, d, classes, seed):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)).astype(np.float32), rng.integers(0, classes, n)


# ---- the HSIC estimator against the direct formula ------------------------------------------------

def direct_kernel(A, sigma):
    m, d = A.shape
    K = np.empty((m, m))
    for i in range(m):
        for j in range(m):
            K[i, j] = np.exp(-np.sum((A[i].astype(np.float64) - A[j]) ** 2) / (2 * sigma ** 2 * d))
    return K


def direct_nhsic(Kx, Ky, eps):
    m = Kx.shape[0]
    H = np.eye(m) - np.ones((m, m)) / m
    Rx = H @ Kx @ H @ np.linalg.inv(H @ Kx @ H + eps * m * np.eye(m))
    Ry = H @ Ky @ H @ np.linalg.inv(H @ Ky @ H + eps * m * np.eye(m))
    return np.trace(Rx @ Ry)


@pytest.mark.parametrize("m,dx,dy,sigma,eps", [(1, 3, 2, 5.0, 1e-5), (2, 1, 1, 1.0, 1e-3),
                                               (7, 13, 4, 5.0, 1e-5), (30, 64, 10, 2.0, 1e-4)])
def test_nhsic_equals_the_direct_formula(m, dx, dy, sigma, eps):
    rng = np.random.default_rng(m)
    A = rng.standard_normal((m, dx)).astype(np.float32)
    B = (A[:, :1] * 0.7 + rng.standard_normal((m, dy))).astype(np.float32)   # dependent on A
    Kx, Ky = gaussian_kernel(A, sigma), gaussian_kernel(B, sigma)
    np.testing.assert_allclose(Kx, direct_kernel(A, sigma), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(Ky, direct_kernel(B, sigma), rtol=1e-12, atol=1e-12)
    ours = nhsic(Kx, Ky, eps)
    np.testing.assert_allclose(ours, direct_nhsic(Kx, Ky, eps), rtol=1e-8, atol=1e-10)
    assert ours == pytest.approx(nhsic(Ky, Kx, eps), rel=1e-10, abs=1e-12)   # symmetric
    assert -1e-9 <= ours <= m                                                 # tr of two "projections"


def test_nhsic_of_a_variable_with_itself_counts_its_directions():
    """R is close to the projection on the centred kernel's range: nHSIC(X, X) ≈ rank, and a
    one-hot kernel of c classes has rank c - 1 after centring."""
    y = np.arange(40) % 4
    Ky = gaussian_kernel(one_hot(y, 4), 5.0)
    assert nhsic(Ky, Ky, 1e-5) == pytest.approx(3.0, abs=0.05)
    assert np.allclose(centre(Ky).sum(axis=0), 0) and np.allclose(r_matrix(Ky, 1e-5), r_matrix(Ky, 1e-5).T)


# ---- the HSIC gradient against torch autograd -------------------------------------------------------

def torch_r(K, eps):
    m = K.shape[0]
    H = torch.eye(m, dtype=K.dtype) - 1.0 / m
    Kc = H @ K @ H
    return Kc @ torch.linalg.inv(Kc + eps * m * torch.eye(m, dtype=K.dtype))


def torch_kernel(A, sigma):
    D = ((A[:, None, :] - A[None, :, :]) ** 2).sum(-1)
    return torch.exp(-D / (2 * sigma ** 2 * A.shape[1]))


def torch_rms(A):
    return torch.sqrt(((A - A.mean(0)) ** 2).mean())


def torch_objective(Z, X, Y, sigma, beta, eps, standardise=False):
    if standardise:
        Z, X = Z / torch_rms(Z), X / torch_rms(X)
    Rz = torch_r(torch_kernel(Z, sigma), eps)
    Rx = torch_r(torch_kernel(X, sigma), eps)
    Ry = torch_r(torch_kernel(Y, sigma), eps)
    return torch.trace(Rz @ Rx) - beta * torch.trace(Rz @ Ry)


@pytest.mark.parametrize("standardise", [False, True])
@pytest.mark.parametrize("m,d,sigma,beta,eps", [(2, 1, 1.0, 10.0, 1e-3), (9, 5, 5.0, 500.0, 1e-5),
                                                (24, 17, 0.5, 100.0, 1e-4)])
def test_layer_objective_gradient_equals_torch_autograd(m, d, sigma, beta, eps, standardise):
    rng = np.random.default_rng(d)
    X = rng.standard_normal((m, 11))
    Y = one_hot(rng.integers(0, 3, m), 3).astype(np.float64)
    Z = np.tanh(X @ rng.standard_normal((11, d)) + 0.3 * rng.standard_normal((m, d)))
    Xk = X / batch_rms(X) if standardise else X
    G = r_matrix(gaussian_kernel(Xk, sigma), eps) - beta * r_matrix(gaussian_kernel(Y, sigma), eps)
    J, grad = layer_objective(Z, G, sigma, eps, standardise)
    Zt = torch.tensor(Z, dtype=torch.float64, requires_grad=True)
    Jt = torch_objective(Zt, torch.tensor(X), torch.tensor(Y), sigma, beta, eps, standardise)
    Jt.backward()
    assert J == pytest.approx(Jt.item(), rel=1e-7, abs=1e-9)
    np.testing.assert_allclose(grad, Zt.grad.numpy(), rtol=1e-5, atol=1e-7 * np.abs(grad).max())
    if standardise:   # scale-free: J(cZ) = J(Z), and the gradient is orthogonal to the centred Z
        assert layer_objective(3.0 * Z, G, sigma, eps, True)[0] == pytest.approx(J, rel=1e-9, abs=1e-9)
        assert abs(np.sum(grad * (Z - Z.mean(0)))) <= 1e-9 * np.abs(grad).sum() * np.abs(Z).max()


@pytest.mark.parametrize("activation,standardise", [("relu", True), ("tanh", True), ("relu", False)])
def test_hsic_rule_gives_each_layer_its_own_objectives_gradient(activation, standardise):
    """Layer l's weight gradient from the rule's delta equals autograd of J_l with respect to
    (W_l, b_l) alone (the layer's input detached); the output layer gets the plain loss gradient."""
    net = make_net((12, 9, 7, 3), activation)
    X, y = batch(16, 12, 3, seed=3)
    sigma, beta, eps = 5.0, 500.0, 1e-5
    rule = make_rule("hsic", sigma=sigma, beta=beta, eps=eps, standardise=standardise)
    rule.setup(net, np.random.default_rng(0))
    out, caches = net.forward(X)
    _, e = net.loss(out, y)
    deltas = rule.deltas(net, caches, e, y)
    act = {"relu": torch.relu, "tanh": torch.tanh}[activation]
    Xt, Yt = torch.tensor(X, dtype=torch.float64), torch.tensor(one_hot(y, 3), dtype=torch.float64)
    for i, (layer, c) in enumerate(zip(net.layers[:-1], caches)):
        W = torch.tensor(layer.W, dtype=torch.float64, requires_grad=True)
        b = torch.tensor(layer.b, dtype=torch.float64, requires_grad=True)
        Z = act(torch.tensor(c.x, dtype=torch.float64) @ W + b)
        torch_objective(Z, Xt, Yt, sigma, beta, eps, standardise).backward()
        gW, gb = layer.grads(deltas[i], c)
        scale = np.abs(W.grad.numpy()).max()
        np.testing.assert_allclose(gW, W.grad.numpy(), rtol=1e-3, atol=1e-4 * scale)
        np.testing.assert_allclose(gb, b.grad.numpy(), rtol=1e-3, atol=1e-4 * scale)
    np.testing.assert_array_equal(deltas[-1], e)


def test_hsic_step_raises_label_dependence():
    """A few steps on one batch move each hidden layer toward the labels."""
    net = make_net((20, 16, 16, 4), "relu", seed=1)
    X, y = batch(48, 20, 4, seed=5)
    X[:, :4] += 2.0 * one_hot(y, 4)          # a learnable signal
    cfg = TrainConfig(rule="hsic", network="digits-mlp").resolve()
    rule = make_rule("hsic", **cfg.rule_options())
    rule.setup(net, np.random.default_rng(0))
    from xbar.train.optim import Adam
    opt = Adam(net.params(), 3e-3)
    before = rule.diagnostics(net, net.forward(X)[1], y)
    for _ in range(30):
        out, caches = net.forward(X)
        deltas = rule.deltas(net, caches, net.loss(out, y)[1], y)
        opt.step([g for layer, d, c in zip(net.layers, deltas, caches) for g in layer.grads(d, c)])
    after = rule.diagnostics(net, net.forward(X)[1], y)
    for (hx0, hy0), (hx1, hy1) in zip(before, after):
        assert hx1 - 500 * hy1 < hx0 - 500 * hy0 and hy1 > hy0


# ---- synthetic gradients ---------------------------------------------------------------------------

@pytest.mark.parametrize("conditioned", [False, True])
def test_sg_module_gradients_equal_torch_autograd(conditioned):
    rng = np.random.default_rng(7)
    mod = SGModule(5, 3, conditioned)
    for p in mod.params():
        p[...] = rng.standard_normal(p.shape)
    h = rng.standard_normal((6, 5)).astype(np.float32)
    Y = one_hot(rng.integers(0, 3, 6), 3)
    t = rng.standard_normal((6, 5)).astype(np.float32)
    pred = mod.predict(h, Y if conditioned else None)
    ours = mod.grads(h, Y if conditioned else None, pred, t)
    ps = [torch.tensor(p, requires_grad=True) for p in mod.params()]
    g = torch.tensor(h) @ ps[0] + (torch.tensor(Y) @ ps[1] if conditioned else 0) + ps[-1]
    np.testing.assert_allclose(pred, g.detach().numpy(), rtol=1e-5, atol=1e-6)
    (0.5 * ((g - torch.tensor(t)) ** 2).sum(1).mean()).backward()
    for a, p in zip(ours, ps):
        np.testing.assert_allclose(a, p.grad.numpy(), rtol=1e-5, atol=1e-6)


def bp_deltas(net, X, y):
    out, caches = net.forward(X)
    _, e = net.loss(out, y)
    return make_rule("bp").deltas(net, caches, e, y), caches


def test_sg_with_perfect_synthetic_gradients_is_bp():
    """With an oracle module that predicts the true dL/dh, every delta equals BP's, and the
    modules' training targets equal their predictions (zero module gradient)."""
    net = make_net((8, 7, 6, 5, 3), "tanh")
    X, y = batch(5, 8, 3, seed=8)
    bp, caches = bp_deltas(net, X, y)
    true_dh = [net.layers[i + 1].backward_input(bp[i + 1]) * len(X) for i in range(len(net.layers) - 1)]
    sg = make_rule("sg", conditioned=True)
    sg.setup(net, np.random.default_rng(0))
    sg.synthetic = lambda i, h, Y: true_dh[i]
    out, caches = net.forward(X)
    deltas = sg.deltas(net, caches, net.loss(out, y)[1], y)
    for a, b in zip(deltas, bp):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert max(sg.last_mse) < 1e-10
    for g in sg._pending:
        np.testing.assert_allclose(g, 0, atol=1e-6)


def test_sg_starts_from_zero_and_learns_the_true_gradient_of_the_top_layer():
    """Zero-initialised modules give zero hidden deltas; trained on a fixed batch (weights fixed),
    the top module's prediction approaches the true output-layer gradient."""
    net = make_net((10, 6, 4), "relu")
    X, y = batch(32, 10, 4, seed=9)
    sg = make_rule("sg", conditioned=True, lr=1e-2)
    sg.setup(net, np.random.default_rng(0))
    out, caches = net.forward(X)
    e = net.loss(out, y)[1]
    first = sg.deltas(net, caches, e, y)
    assert not np.any(first[0]) and first[-1] is e
    start = sg.last_mse[0]
    for _ in range(400):
        sg.step()
        sg.deltas(net, caches, e, y)
    assert sg.last_mse[0] < 0.2 * start


# ---- through the trainer -----------------------------------------------------------------------------

def strip_times(result):
    r = json.loads(json.dumps(result))
    for k in ("seconds", "train_seconds"):
        r.pop(k)
    for h in r["history"]:
        h.pop("seconds")
    return r


def test_hsic_output_phase_freezes_hidden_layers():
    from xbar.data import load
    X, y = load("digits", "train")
    cfg = TrainConfig(rule="hsic", hsic_epochs=1).resolve()
    tr = Trainer(cfg, X.shape[1], 10)
    tr.start_epoch(1)
    tr.step(X[:64], y[:64])
    assert tr._active == (0, 1)
    tr.start_epoch(2)
    hidden, top = tr.net.layers[0].W.copy(), tr.net.layers[1].W.copy()
    tr.step(X[64:128], y[64:128])
    tr.step(X[128:192], y[128:192])
    assert tr._active == (1,)
    np.testing.assert_array_equal(tr.net.layers[0].W, hidden)
    assert not np.array_equal(tr.net.layers[1].W, top)


def test_local_rules_on_an_ideal_analog_crossbar_train_exactly_like_float():
    """Every read goes through the crossbars: on the ideal analog device (qat, no ADC) the
    weights after some steps equal the float run's."""
    from xbar.data import load
    X, y = load("digits", "train")
    for rule in ("hsic", "sg"):
        runs = []
        for update in ("float", "qat"):
            tr = Trainer(TrainConfig(update=update, range="global", rule=rule).resolve(), X.shape[1], 10)
            for s in range(0, 384, 64):
                tr.step(X[s:s + 64], y[s:s + 64])
            runs.append([layer.W.copy() for layer in tr.net.layers])
            if update == "qat":
                stats = [layer.crossbar.stats() for layer in tr.net.layers]
                assert all(s["mvm_calls"] >= 6 for s in stats)
                assert stats[1]["mvm_t_calls"] == (6 if rule == "sg" else 0)
        for a, b in zip(*runs):
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


# Thresholds sit ~5 points under the lowest of seeds 1-5 (measured, then fixed; seed 1 is used).
def test_digits_hsic_and_sg_reach_sensible_accuracy():
    r = train(TrainConfig(rule="hsic", epochs=10, lr=3e-3, eval_train=False))   # 93.9 % (89.4-93.9)
    assert r["status"] == "ok" and r["config"]["hsic_epochs"] == 5
    assert r["test_accuracy"] > 84.0
    r = train(TrainConfig(rule="sg", epochs=10, eval_train=False))              # 88.1 % (87.5-89.4)
    assert r["status"] == "ok" and r["test_accuracy"] > 82.0


def test_same_config_gives_identical_results():
    for cfg in (TrainConfig(rule="hsic", epochs=2, hsic_epochs=1, train_limit=400, test_limit=200),
                TrainConfig(rule="sg", epochs=2, update="stochastic", bits=2, train_limit=400,
                            test_limit=200),
                TrainConfig(rule="sg", sg_conditioned=False, epochs=1, train_limit=400, test_limit=200)):
        a, b = train(cfg), train(cfg)
        assert strip_times(a) == strip_times(b)


def test_bad_local_rule_configs_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="batch_size = 1.*at least 2"):
        TrainConfig(rule="hsic", batch_size=1).resolve()
    r = train(TrainConfig(rule="hsic", batch_size=64, train_limit=129, epochs=1))   # last batch: 1 sample
    assert r["status"] == "ok"
    f = tmp_path / "linear.toml"
    f.write_text("hidden = []\n")
    for rule in ("hsic", "sg"):
        with pytest.raises(ConfigError, match=f"rule = '{rule}' needs a network with at least one hidden"):
            train(TrainConfig(rule=rule, network=str(f), epochs=1))
    with pytest.raises(ConfigError, match="did you mean 'hsic_beta'"):
        TrainConfig.from_dict({"rule": "hsic", "hsic_betta": 3})
    with pytest.raises(ConfigError, match="hsic_sigma"):
        TrainConfig(rule="hsic", hsic_sigma=0.0)
    assert "'hsic'" in str(pytest.raises(ConfigError, TrainConfig, rule="hsci").value)
