"""Convolutional layers on crossbars: kernels against numpy references, layers and whole networks
against torch autograd, rules (bp, fa, dfa, hsic) on convolutions, batch norm, specs."""

from __future__ import annotations

import numpy as np
import pytest

from xbar import Crossbar, Device
from xbar import conv as xc
from xbar.errors import ConfigError, ShapeError
from xbar.kernels import _jit as J
from xbar.kernels import im2col as K
from xbar.nn import NetworkSpec
from xbar.train.hsic import layer_objective
from xbar.train.rules import make_rule

torch = pytest.importorskip("torch")
F = torch.nn.functional


@pytest.fixture(scope="module", autouse=True)
def compiled():
    """Compile (or load) every kernel of xbar.kernels.im2col once, parallel and serial."""
    x = np.ones((1, 2, 2, 1), np.float32)
    cols = np.empty((1, 4), np.float32)
    out = np.empty((1, 1, 1, 1), np.float32)
    arg = np.empty((1, 1, 1, 1), np.int64)
    dx = np.empty_like(x)
    for par, ser in ((K.im2col_kernel, K.im2col_kernel_serial), (K.col2im_kernel, K.col2im_kernel_serial),
                     (K.maxpool_kernel, K.maxpool_kernel_serial), (K.maxpool_back_kernel, K.maxpool_back_kernel_serial),
                     (K.avgpool_kernel, K.avgpool_kernel_serial), (K.avgpool_back_kernel, K.avgpool_back_kernel_serial)):
        for f in (par, ser):
            if par is K.im2col_kernel:
                f(x, 2, 2, 1, 0, 1, 1, cols)
            elif par is K.col2im_kernel:
                f(cols, 2, 2, 1, 0, 1, 1, dx)
            elif par is K.maxpool_kernel:
                f(x, 2, 2, 1, 1, out, arg)
            elif par is K.maxpool_back_kernel:
                f(out, arg, dx)
            elif par is K.avgpool_kernel:
                f(x, 2, 2, 1, 1, out)
            else:
                f(out, 2, 2, dx)
    return True


# ---- kernels against plain numpy -------------------------------------------------------------------

GEOMS = [  # (B, H, W, C, kernel, stride, padding): 1x1, batch 1, non-square, strides, padding
    (1, 1, 1, 1, 1, 1, 0), (2, 7, 5, 3, 3, 2, 1), (3, 6, 6, 2, 5, 1, 2), (2, 9, 4, 5, 2, 3, 0),
    (1, 5, 8, 1, 3, 1, 1), (4, 4, 4, 7, 4, 1, 0),
    (2, 28, 28, 1, 5, 1, 2), (2, 6, 7, 6, 3, 2, 1),   # lenet5's first layer; long runs with padding
]


@pytest.fixture(params=["parallel", "serial"])
def force(request, monkeypatch):
    """Run the wrappers with the parallel kernels (threshold 0) or the serial ones (never parallel)."""
    monkeypatch.setattr(J, "PARALLEL_MIN", 0 if request.param == "parallel" else 1 << 62)
    return request.param


@pytest.mark.parametrize("geom", GEOMS, ids=lambda g: "x".join(map(str, g)))
def test_im2col_and_col2im_equal_the_numpy_references(geom, force):
    B, H, W, C, k, s, p = geom
    rng = np.random.default_rng(sum(geom))
    x = rng.standard_normal((B, H, W, C)).astype(np.float32)
    cols = xc.im2col(x, k, s, p)
    np.testing.assert_array_equal(cols, xc.im2col_reference(x, k, s, p))
    g = rng.standard_normal(cols.shape).astype(np.float32)
    np.testing.assert_allclose(xc.col2im(g, x.shape, k, s, p), xc.col2im_reference(g, x.shape, k, s, p),
                               rtol=1e-6, atol=1e-6)
    # col2im is the adjoint of im2col: <im2col(x), g> = <x, col2im(g)>
    np.testing.assert_allclose(np.sum(cols.astype(np.float64) * g),
                               np.sum(x.astype(np.float64) * xc.col2im(g, x.shape, k, s, p)), rtol=1e-5)


@pytest.mark.parametrize("C", [1, 2, 3, 4, 5, 7])
def test_im2col_runs_of_every_length_equal_the_reference(C):
    """Every run length kw*C (1-35), through both compilations: the fixed-width copies of runs of
    4-15 values (whose overrun is overwritten by the next run) at their bounds, with strides,
    padding up to 3 and kernels up to the padded input, into a NaN-filled matrix (every entry written)."""
    rng = np.random.default_rng(C)
    for k in (1, 2, 3, 4, 5, 7):
        for stride in (1, 2, 3):
            for pad in (0, 1, 3):
                for H, W in ((5, 8), (13, 7)):
                    if k > min(H, W) + 2 * pad:
                        continue
                    x = rng.standard_normal((3, H, W, C)).astype(np.float32)
                    ref = xc.im2col_reference(x, k, stride, pad)
                    oh, ow = (H + 2 * pad - k) // stride + 1, (W + 2 * pad - k) // stride + 1
                    for f in (K.im2col_kernel, K.im2col_kernel_serial):
                        cols = np.full(ref.shape, np.nan, np.float32)
                        f(x, k, k, stride, pad, oh, ow, cols)
                        np.testing.assert_array_equal(cols, ref, err_msg=f"C={C} k={k} s={stride} p={pad} {H}x{W}")


def test_im2col_matches_torch_unfold_and_rejects_bad_input():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 6, 5, 3)).astype(np.float32)
    ours = xc.im2col(x, 3, 2, 1)          # rows (b, oh, ow), columns (i, j, c)
    unf = F.unfold(torch.tensor(x).permute(0, 3, 1, 2), 3, padding=1, stride=2)   # (B, C*k*k, L)
    ref = unf.reshape(2, 3, 3, 3, -1).permute(0, 4, 2, 3, 1).reshape(ours.shape)
    np.testing.assert_array_equal(ours, ref.numpy())
    with pytest.raises(ShapeError, match="larger than"):
        xc.im2col(x, 9)
    with pytest.raises(ShapeError, match="batch, height, width, channels"):
        xc.im2col(x[0], 3)
    x_in = x.copy()
    xc.im2col(x, 3, 1, 1)
    np.testing.assert_array_equal(x, x_in)   # inputs are never written


@pytest.mark.parametrize("geom", [(1, 1, 1, 1, 1, None), (2, 6, 4, 3, 2, None), (3, 7, 7, 2, 3, 2),
                                  (1, 5, 9, 4, 3, 1), (2, 4, 4, 1, 4, None)], ids=str)
@pytest.mark.parametrize("mode", ["max", "avg"])
def test_pooling_against_numpy_and_torch(geom, mode, force):
    B, H, W, C, size, stride = geom
    rng = np.random.default_rng(H * W + C)
    x = rng.standard_normal((B, H, W, C)).astype(np.float32)
    pool = xc.Pool(mode, size, stride)
    y, cache = pool.forward(x)
    np.testing.assert_allclose(y, xc.pool_reference(x, size, stride, mode), rtol=1e-6, atol=1e-6)
    g = rng.standard_normal(y.shape).astype(np.float32)
    xt = torch.tensor(x).permute(0, 3, 1, 2).requires_grad_(True)
    fn = F.max_pool2d if mode == "max" else F.avg_pool2d
    yt = fn(xt, size, stride or size)
    yt.backward(torch.tensor(g).permute(0, 3, 1, 2))
    np.testing.assert_allclose(y, yt.detach().permute(0, 2, 3, 1).numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(pool.backward(g, cache), xt.grad.permute(0, 2, 3, 1).numpy(), rtol=1e-6, atol=1e-6)


def test_maxpool_ties_go_to_the_first_maximum_and_nan_propagates():
    x = np.zeros((1, 2, 2, 1), np.float32)
    y, cache = xc.Pool("max", 2).forward(x)
    dx = xc.Pool("max", 2).backward(np.ones_like(y), cache)
    np.testing.assert_array_equal(dx[0, :, :, 0], [[1, 0], [0, 0]])   # torch's choice too
    x[0, 1, 1, 0] = np.nan
    assert np.isnan(xc.Pool("max", 2).forward(x)[0]).all()


# ---- batch norm in digital periphery -----------------------------------------------------------------

def test_batchnorm_train_forward_backward_and_running_stats_match_torch():
    rng = np.random.default_rng(3)
    bn = xc.BatchNorm(4)
    bn.gamma[...] = rng.uniform(0.5, 2, 4)
    bn.beta[...] = rng.standard_normal(4)
    tbn = torch.nn.BatchNorm1d(4)
    with torch.no_grad():
        tbn.weight.copy_(torch.tensor(bn.gamma))
        tbn.bias.copy_(torch.tensor(bn.beta))
    for step in range(3):
        a = (rng.standard_normal((9, 4)) * 3 + 1).astype(np.float32)
        y, cache = bn.forward(a, True)
        at = torch.tensor(a, requires_grad=True)
        yt = tbn(at)
        np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-5, atol=1e-5)
        g = rng.standard_normal(y.shape).astype(np.float32)
        yt.backward(torch.tensor(g))
        da, dgamma, dbeta = bn.backward(g, cache)
        np.testing.assert_allclose(da, at.grad.numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(dgamma, tbn.weight.grad.numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(dbeta, tbn.bias.grad.numpy(), rtol=1e-5, atol=1e-5)
        tbn.weight.grad = tbn.bias.grad = None
    np.testing.assert_allclose(bn.running_mean, tbn.running_mean.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.running_var, tbn.running_var.numpy(), rtol=1e-5, atol=1e-6)
    # inference: the folded gain/offset equals the written-out transform and torch's eval mode
    a = rng.standard_normal((5, 4)).astype(np.float32)
    folded, _ = bn.forward(a, False)
    np.testing.assert_allclose(folded, bn.forward_unfolded(a), rtol=1e-5, atol=1e-5)
    tbn.eval()
    np.testing.assert_allclose(folded, tbn(torch.tensor(a)).detach().numpy(), rtol=1e-5, atol=1e-5)


# ---- a torch mirror of an xbar network ------------------------------------------------------------

class STESign(torch.autograd.Function):
    """sign (sign(0) = +1) with the clipped straight-through estimator 1{|a| <= 1}."""

    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return torch.where(a >= 0, 1.0, -1.0)

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved_tensors
        return g * (a.abs() <= 1)


TORCH_ACTS = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "hardtanh": F.hardtanh,
              "sign": STESign.apply, "identity": lambda a: a}


def torch_binarize(W, scale):
    s = STESign.apply(W)
    return s * W.abs().mean(dim=0, keepdim=True) if scale == "mean" else s


def torch_reference(net, X, y, caches=None):
    """The same network in torch (weights copied; binary weights through an STE sign; batch norm in
    training mode from the layers' running statistics; dropout with the masks of `caches`).

    Returns (output, loss, gradients in params() order).
    """
    leaves = []
    h = torch.tensor(X)
    if net.input_shape is not None and net.layers[0].kind == "conv":
        h = h.reshape((-1,) + tuple(net.input_shape))
    for li, layer in enumerate(net.layers):
        W = torch.tensor(layer.W, requires_grad=True)
        leaves.append(W)
        b = None
        if layer.b is not None:
            b = torch.tensor(layer.b, requires_grad=True)
            leaves.append(b)
        Wq = torch_binarize(W, layer.scale) if layer.weights == "binary" else W
        if layer.mask is not None:
            Wq = Wq * torch.tensor(layer.mask, dtype=torch.float32)
        if layer.kind == "conv":
            C, _, _ = layer.in_shape
            k = layer.kernel
            weight = Wq.reshape(k, k, C, layer.n_out).permute(3, 2, 0, 1)
            h = F.conv2d(h, weight, b, stride=layer.stride, padding=layer.padding)
            for op in layer.head:
                h = (F.max_pool2d if op.mode == "max" else F.avg_pool2d)(h, op.size, op.stride)
        else:
            if h.ndim == 4:   # xbar flattens feature maps channels last
                h = h.permute(0, 2, 3, 1).reshape(h.shape[0], -1)
            h = h @ Wq + (b if b is not None else 0)
        if layer.bn is not None:
            g = torch.tensor(layer.bn.gamma, requires_grad=True)
            be = torch.tensor(layer.bn.beta, requires_grad=True)
            leaves += [g, be]
            h = F.batch_norm(h, torch.zeros(layer.n_out), torch.ones(layer.n_out), g, be, training=True,
                             momentum=0.1, eps=layer.bn.eps)
        h = TORCH_ACTS[layer.activation](h)
        for ti, op in enumerate(layer.tail):
            if isinstance(op, xc.Pool):
                h = (F.max_pool2d if op.mode == "max" else F.avg_pool2d)(h, op.size, op.stride)
            else:
                mask = caches[li].tail[ti][0]
                if mask is not None:
                    m = torch.tensor(mask)
                    h = h * (m.permute(0, 3, 1, 2) if m.ndim == 4 else m)
    if h.ndim == 4:
        h = h.permute(0, 2, 3, 1).reshape(h.shape[0], -1)
    loss = F.nll_loss(torch.log_softmax(h, dim=1), torch.tensor(y))
    loss.backward()
    return h.detach().numpy(), loss.item(), [t.grad.numpy() for t in leaves]


def ours(net, rule, X, y, train=True):
    out, caches = net.forward(X, train)
    loss, e = net.loss(out, y)
    deltas = rule.deltas(net, caches, e, y)
    return out, loss, [g for layer, d, c in zip(net.layers, deltas, caches) for g in layer.grads(d, c)], caches


def build(spec: dict, n_in: int, classes: int = 3, seed: int = 0):
    return NetworkSpec.from_dict(spec).build(n_in, classes, np.random.default_rng(seed))


NETS = {
    # non-square input, padding, stride 2, max pooling, two convolutions, then dense
    "conv-max-stride": {"input": [2, 7, 6], "activation": "tanh", "layers": [
        {"kind": "conv", "filters": 3, "kernel": 3, "padding": 1},
        {"kind": "maxpool", "size": 2},
        {"kind": "conv", "filters": 4, "kernel": 2, "stride": 2, "activation": "relu"},
        {"kind": "flatten", "size": 4},
        {"kind": "dense", "units": 5}]},
    # batch norm on conv and dense layers, average pooling, dropout on maps and on vectors
    "bn-avg-dropout": {"input": [3, 8, 8], "batchnorm": True, "bias": False, "layers": [
        {"kind": "conv", "filters": 4, "kernel": 3},
        {"kind": "avgpool", "size": 2},
        {"kind": "dropout", "p": 0.3},
        {"kind": "conv", "filters": 5, "kernel": 2, "activation": "hardtanh", "bias": True},
        {"kind": "flatten"},
        {"kind": "dense", "units": 6, "activation": "sigmoid"},
        {"kind": "dropout", "p": 0.2}]},
    # BNN order: pooling before batch norm and sign (pre_activation), then pooling after it too
    "pre-activation-pool": {"input": [2, 9, 8], "batchnorm": True, "activation": "sign", "layers": [
        {"kind": "conv", "filters": 3, "kernel": 2},
        {"kind": "maxpool", "size": 2, "pre_activation": True},
        {"kind": "avgpool", "size": 2, "stride": 1, "pre_activation": True},
        {"kind": "maxpool", "size": 2, "stride": 1},
        {"kind": "flatten", "size": 6},
        {"kind": "dense", "units": 4}]},
    # 1x1 kernel on a single-channel image, overlapping max pooling (stride < size)
    "1x1-overlap": {"input": [1, 5, 5], "layers": [
        {"kind": "conv", "filters": 2, "kernel": 1},
        {"kind": "maxpool", "size": 3, "stride": 1},
        {"kind": "flatten", "size": 18}]},
}


@pytest.mark.parametrize("name", list(NETS))
@pytest.mark.parametrize("batch", [1, 4])
def test_bp_through_convolutions_matches_torch_autograd(name, batch):
    if batch == 1 and name in ("bn-avg-dropout", "pre-activation-pool"):
        pytest.skip("batch norm on a dense layer needs more than one sample per batch (as in torch)")
    net = build(NETS[name], int(np.prod(NETS[name]["input"])))
    rng = np.random.default_rng(batch)
    X = rng.standard_normal((batch, net.layers[0].in_size)).astype(np.float32)
    y = rng.integers(0, 3, batch)
    out, loss, grads, caches = ours(net, make_rule("bp"), X, y)
    t_out, t_loss, t_grads = torch_reference(net, X, y, caches)
    np.testing.assert_allclose(out, t_out, rtol=1e-5, atol=1e-5)
    assert loss == pytest.approx(t_loss, rel=1e-5)
    assert len(grads) == len(t_grads) == len(net.params())
    for g, t in zip(grads, t_grads):
        assert g.shape == t.shape
        np.testing.assert_allclose(g, t, rtol=1e-4, atol=1e-5)


def test_backward_input_is_the_input_gradient_with_chw_input_rows():
    """The first convolution reads the dataset's C×H×W rows; its backward_input gives dL/dx in the
    same order (checked against torch: conv2d on x.reshape(B, C, H, W))."""
    net = build({"input": [3, 5, 4], "layers": [{"kind": "conv", "filters": 2, "kernel": 3, "padding": 1,
                                                 "stride": 2}, {"kind": "flatten"}]}, 60)
    layer = net.layers[0]
    assert layer.chw_input
    X = np.random.default_rng(0).standard_normal((2, 60)).astype(np.float32)
    z, cache = layer.forward(X)
    g = np.random.default_rng(1).standard_normal(z.shape).astype(np.float32)
    dx = layer.backward_input(layer.local_delta(g, cache))
    xt = torch.tensor(X, requires_grad=True)
    w = torch.tensor(layer.W).reshape(3, 3, 3, 2).permute(3, 2, 0, 1)
    zt = torch.relu(F.conv2d(xt.reshape(2, 3, 5, 4), w, torch.tensor(layer.b), stride=2, padding=1))
    np.testing.assert_allclose(z, zt.permute(0, 2, 3, 1).reshape(2, -1).detach().numpy(), rtol=1e-5, atol=1e-6)
    zt.backward(torch.tensor(g).reshape(2, 3, 2, 2).permute(0, 3, 1, 2))
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_fa_with_feedback_equal_to_the_weights_is_bp_on_convolutions():
    net = build(NETS["conv-max-stride"], 84)
    rng = np.random.default_rng(5)
    X = rng.standard_normal((3, 84)).astype(np.float32)
    y = rng.integers(0, 3, 3)
    fa = make_rule("fa")
    fa.setup(net, np.random.default_rng(1))
    assert [B.shape for B in fa.feedback()] == [layer.W.shape for layer in net.layers[1:]]
    for i, layer in enumerate(net.layers[1:]):
        fa.set_feedback(i, layer.W)
    _, _, g_fa, _ = ours(net, fa, X, y)
    _, _, g_bp, _ = ours(net, make_rule("bp"), X, y)
    for a, b in zip(g_fa, g_bp):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    fa.setup(net, np.random.default_rng(1))      # random feedback: different, same shapes
    _, _, g_rand, _ = ours(net, fa, X, y)
    assert [g.shape for g in g_rand] == [g.shape for g in g_bp]
    assert not np.allclose(g_rand[0], g_bp[0])


def test_dfa_on_a_conv_layer_with_feedback_equal_to_the_output_weights_is_bp():
    net = build({"input": [2, 6, 6], "layers": [{"kind": "conv", "filters": 3, "kernel": 3},
                                                {"kind": "maxpool"}, {"kind": "flatten"}]}, 72, classes=4)
    assert net.layers[0].out_size == 12 and net.layers[0].n_out == 3
    dfa = make_rule("dfa")
    dfa.setup(net, np.random.default_rng(0))
    assert dfa.feedback()[0].shape == (4, 12)
    dfa.set_feedback(0, net.layers[1].W.T)
    rng = np.random.default_rng(2)
    X = rng.standard_normal((5, 72)).astype(np.float32)
    y = rng.integers(0, 4, 5)
    _, _, g_dfa, _ = ours(net, dfa, X, y)
    _, _, g_bp, _ = ours(net, make_rule("bp"), X, y)
    for a, b in zip(g_dfa, g_bp):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_hsic_on_convolutions_sends_each_layer_the_gradient_of_its_own_objective():
    net = build(NETS["bn-avg-dropout"], 192)
    rule = make_rule("hsic", sigma=2.0, beta=10.0)
    rule.setup(net, np.random.default_rng(0))
    rng = np.random.default_rng(4)
    X = rng.standard_normal((8, 192)).astype(np.float32)
    y = rng.integers(0, 3, 8)
    out, caches = net.forward(X)
    _, e = net.loss(out, y)
    deltas = rule.deltas(net, caches, e, y)
    # Reference: dJ/dZ from the estimator, then torch autograd of sum(Z ⊙ dJ/dZ) w.r.t. each
    # hidden layer's own parameters (its input detached: HSIC is local).
    from xbar.train.hsic import batch_rms, gaussian_kernel, r_matrix
    from xbar.train.rules import one_hot
    G = (r_matrix(gaussian_kernel(X / batch_rms(X), 2.0), 1e-5)
         - 10.0 * r_matrix(gaussian_kernel(one_hot(y, 3), 2.0), 1e-5))
    for i, layer in enumerate(net.layers[:-1]):
        _, dJ = layer_objective(caches[i].z, G, 2.0, 1e-5, True)
        ours_g = layer.grads(deltas[i], caches[i])
        ref = torch_layer_grads(layer, caches[i], dJ.astype(np.float32))
        for a, b in zip(ours_g, ref):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(deltas[-1], e)


def torch_layer_grads(layer, cache, gz):
    """Autograd of sum(z ⊙ gz) for one layer on its cached input (dropout masks from the cache)."""
    W = torch.tensor(layer.W, requires_grad=True)
    leaves = [W]
    b = None
    if layer.b is not None:
        b = torch.tensor(layer.b, requires_grad=True)
        leaves.append(b)
    x = torch.tensor(cache.x)
    if layer.kind == "conv":
        C, H, Wd = layer.in_shape
        x = x.reshape(-1, C, H, Wd) if layer.chw_input or C == 1 else x.reshape(-1, H, Wd, C).permute(0, 3, 1, 2)
        k = layer.kernel
        h = F.conv2d(x, W.reshape(k, k, C, layer.n_out).permute(3, 2, 0, 1), b, stride=layer.stride,
                     padding=layer.padding)
        for op in layer.head:
            h = (F.max_pool2d if op.mode == "max" else F.avg_pool2d)(h, op.size, op.stride)
    else:
        h = x @ W + (b if b is not None else 0)
    if layer.bn is not None:
        g = torch.tensor(layer.bn.gamma, requires_grad=True)
        be = torch.tensor(layer.bn.beta, requires_grad=True)
        leaves += [g, be]
        h = F.batch_norm(h, None, None, g, be, training=True, eps=layer.bn.eps)
    h = TORCH_ACTS[layer.activation](h)
    for (mask, _), op in zip(cache.tail or [], layer.tail):
        if isinstance(op, xc.Pool):
            h = (F.max_pool2d if op.mode == "max" else F.avg_pool2d)(h, op.size, op.stride)
        elif mask is not None:
            m = torch.tensor(mask)
            h = h * (m.permute(0, 3, 1, 2) if m.ndim == 4 else m)
    if h.ndim == 4:
        h = h.permute(0, 2, 3, 1).reshape(h.shape[0], -1)
    (h * torch.tensor(gz)).sum().backward()
    return [t.grad.numpy() for t in leaves]


# ---- on crossbars ----------------------------------------------------------------------------------

def test_conv_on_an_ideal_crossbar_equals_the_float_layer_forward_and_transposed():
    """Tiles that do not divide the im2col matrix (4x3 tiles for 27x5): reads equal the float path."""
    net = build({"input": [3, 6, 5], "layers": [{"kind": "conv", "filters": 5, "kernel": 3, "padding": 1},
                                                {"kind": "maxpool"}, {"kind": "flatten"},
                                                {"kind": "dense", "units": 7}]}, 90)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((3, 90)).astype(np.float32)
    y = rng.integers(0, 3, 3)
    f_out, _, f_grads, _ = ours(net, make_rule("bp"), X, y)
    for i, layer in enumerate(net.layers):
        layer.crossbar = Crossbar(Device.preset("ideal"), tile=(4, 3), seed=i, range="local")
        layer.program()
    assert net.layers[0].crossbar.stats()["tiles"] == 7 * 2
    x_out, _, x_grads, _ = ours(net, make_rule("bp"), X, y)
    np.testing.assert_allclose(x_out, f_out, rtol=1e-4, atol=1e-5)
    for a, b in zip(x_grads, f_grads):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


def test_batchnorm_folds_into_the_column_gain_on_crossbars():
    """Inference with batch norm equals inference after folding it into W and b: in float, and on
    1-bit devices with a per-column gain (binary weights stay on the same levels)."""
    spec = {"input": [1, 6, 6], "batchnorm": True, "layers": [
        {"kind": "conv", "filters": 4, "kernel": 3, "weights": "binary"}, {"kind": "maxpool"},
        {"kind": "flatten"}, {"kind": "dense", "units": 5}]}
    rng = np.random.default_rng(1)
    X = rng.random((6, 36), dtype=np.float32)
    for on_devices in (False, True):
        net = build(spec, 36)
        for _ in range(3):   # train-mode passes set running statistics
            net.forward(rng.random((8, 36), dtype=np.float32) * 2)
        for layer in net.layers:
            if layer.bn is not None:
                layer.bn.gamma[...] = rng.uniform(-2, 2, layer.bn.n)   # negative gains included
                layer.bn.beta[...] = rng.standard_normal(layer.bn.n)
        if on_devices:
            dev = Device.preset("ideal").with_(bits=1)
            for i, layer in enumerate(net.layers):
                layer.crossbar = Crossbar(dev, tile=(4, 4), seed=i, range="local", gain="column")
                layer.program()
            levels = net.layers[0].crossbar.conductances()
        before = net.predict(X)
        net.fold_batchnorm()
        assert all(layer.bn is None for layer in net.layers)
        after = net.predict(X)
        np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-4)
        if on_devices:
            # the same two levels per pair (a negative gain swaps which device of the pair is on)
            gp, gn = net.layers[0].crossbar.conductances()
            np.testing.assert_array_equal(np.sort([gp, gn], axis=0), np.sort(levels, axis=0))


def test_folding_through_max_pooling_before_the_batch_norm_needs_positive_gains():
    net = build(NETS["pre-activation-pool"], 144)
    X = np.random.default_rng(0).standard_normal((6, 144)).astype(np.float32)
    net.forward(X)
    bn = net.layers[0].bn
    bn.gamma[...] = np.abs(bn.gamma) + 0.5
    before = net.predict(X)
    net.fold_batchnorm()
    np.testing.assert_allclose(net.predict(X), before, rtol=1e-4, atol=1e-4)
    net = build(NETS["pre-activation-pool"], 144)
    net.layers[0].bn.gamma[0] = -1.0
    with pytest.raises(ConfigError, match="negative gains through the max pooling"):
        net.fold_batchnorm()


def test_predict_is_inference_mode_and_chunked_without_changing_results(monkeypatch):
    net = build(NETS["bn-avg-dropout"], 192, seed=3)
    X = np.random.default_rng(0).standard_normal((10, 192)).astype(np.float32)
    net.forward(X)            # a training pass: running statistics move
    a = net.predict(X)
    b = net.predict(X)        # no dropout, running statistics: deterministic
    np.testing.assert_array_equal(a, b)
    from xbar.nn import network
    monkeypatch.setattr(network, "PREDICT_BUDGET", 3 * net.layers[0].cols_per_sample)
    assert net.eval_batch(1000) == 3
    np.testing.assert_allclose(net.predict(X), a, rtol=1e-6, atol=1e-6)
    z_train, _ = net.forward(X, train=True)
    assert not np.allclose(z_train, a)    # batch statistics and dropout in training mode


# ---- network specs: bad input is caught when the spec is loaded -------------------------------------

def conv_toml(tmp_path, body: str, head: str = 'input = [1, 8, 8]\n'):
    f = tmp_path / "net.toml"
    f.write_text(head + body)
    return f


def layer(kind, **kw):
    def toml(v):
        return str(v).lower() if isinstance(v, bool) else repr(v).replace("'", '"')
    return f'[[layers]]\nkind = "{kind}"\n' + "".join(f"{k} = {toml(v)}\n" for k, v in kw.items())


BAD_SPECS = [
    (layer("conv", filters=4, kernel=3) + layer("maxpool", size=2) + layer("conv", filters=4, kernel=5)
     + layer("flatten"), r"net.toml: layers\[2\] \(conv\): kernel 5x5 is larger than its 3x3 input"),
    (layer("conv", filters=4, kernel=3) + layer("conv", filters=2, kernel=3, in_channels=3) + layer("flatten"),
     r"layers\[1\] \(conv\): in_channels = 3, but its input \(4x6x6 feature maps\) has 4 channels"),
    (layer("conv", filters=4, kernel=3) + layer("maxpool") + layer("flatten", size=64),
     r"layers\[2\] \(flatten\): size = 64, but its input \(4x3x3 feature maps\) flattens to 36"),
    (layer("conv", filters=4, kernel=3) + layer("dense", units=10),
     r"layers\[1\] \(dense\): its input is 4x6x6 feature maps; put a \[\[layers\]\] kind = \"flatten\""),
    (layer("maxpool") + layer("conv", filters=2, kernel=3) + layer("flatten"),
     r"layers\[0\] \(maxpool\): must follow a conv or dense layer"),
    (layer("conv", filters=2, kernel=3) + layer("maxpool", size=7) + layer("flatten"),
     r"layers\[1\] \(maxpool\): window 7x7 is larger than its 6x6 input"),
    (layer("conv", filters=2, kernel=3), r"net.toml: layers: the output layer is dense.*flatten"),
    (layer("flatten") + layer("dense", units=3) + layer("conv", filters=2, kernel=1),
     r"layers\[2\] \(conv\): needs feature maps, but its input is 3 values"),
    (layer("conv", filters=2, kernal=3), r"layers\[0\].kernal: unknown key \(did you mean 'kernel'\?\)"),
    (layer("conv", units=2, kernel=3), r"layers\[0\].kind = 'conv' takes filters = N"),
    (layer("conv", filters=2, kernel=3, weights="binari"),
     r"layers\[0\].weights = 'binari': expected one of 'real', 'binary' \(did you mean 'binary'\?\)"),
    (layer("cnov", filters=2), r"layers\[0\].kind = 'cnov'.*did you mean 'conv'"),
    (layer("dropout", p=1.0), r"layers\[0\].p = 1.0 is out of range"),
    (layer("conv", filters=2, kernel=3) + layer("dropout", p=0.1) + layer("maxpool", pre_activation=True)
     + layer("flatten"), r"layers\[2\] \(maxpool\): pre_activation = true .* right after that conv layer"),
]


@pytest.mark.parametrize("body,message", BAD_SPECS, ids=range(len(BAD_SPECS)))
def test_bad_specs_are_caught_at_load_naming_the_layer(tmp_path, body, message):
    with pytest.raises(ConfigError, match=message):
        NetworkSpec.from_toml(conv_toml(tmp_path, body))


def test_input_shape_is_required_and_checked_against_the_data(tmp_path):
    with pytest.raises(ConfigError, match=r"net.toml: input: a network with conv or pooling layers needs input"):
        NetworkSpec.from_toml(conv_toml(tmp_path, layer("conv", filters=2, kernel=3) + layer("flatten"), head=""))
    with pytest.raises(ConfigError, match=r"net.toml: input = \[1, 8\]: expected \[channels, height, width\]"):
        NetworkSpec.from_toml(conv_toml(tmp_path, layer("flatten"), head="input = [1, 8]\n"))
    spec = NetworkSpec.from_toml(conv_toml(tmp_path, layer("conv", filters=2, kernel=3) + layer("flatten")))
    with pytest.raises(ConfigError, match=r"takes inputs of shape 1x8x8 \(64 values per sample\), but the data "
                                          r"has 784"):
        spec.build(784, 10, np.random.default_rng(0))
    with pytest.raises(ConfigError, match=r"output_layer.weight: unknown key \(did you mean 'weights'\?\)"):
        NetworkSpec.from_toml(conv_toml(tmp_path, layer("flatten") + '[output_layer]\nweight = "binary"\n'))


# ---- presets -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,n_in,widths", [
    ("lenet5", 784, [784, 1176, 400, 120, 84, 10]),
    ("lenet5-binary", 784, [784, 1176, 400, 120, 84, 10]),
    ("lenet5-bnn", 784, [784, 1176, 400, 120, 84, 10]),
    ("vgg-small-binary", 3072, None),
    ("b-vgg16", 3072, None),
])
def test_conv_presets_load_build_and_cite(name, n_in, widths):
    spec = NetworkSpec.preset(name)
    assert spec.source and spec.description and spec.input is not None
    if widths is not None:
        assert spec.widths(n_in, 10) == widths
    net = spec.build(n_in, 10, np.random.default_rng(0))
    assert net.layers[0].kind == "conv" and net.layers[-1].n_out == 10
    X = np.random.default_rng(1).standard_normal((2, n_in)).astype(np.float32)
    assert net.predict(X).shape == (2, 10)


def test_lenet5_matches_the_classic_shapes():
    net = NetworkSpec.preset("lenet5").build(784, 10, np.random.default_rng(0))
    assert [layer.W.shape for layer in net.layers] == [(25, 6), (150, 16), (400, 120), (120, 84), (84, 10)]
    assert sum(p.size for p in net.params()) == 61706


def test_b_vgg16_is_the_seed_architecture_and_runs_inference_on_crossbars():
    """Seed 004: 13 binary 3x3 convolutions (64,64 | 128,128 | 256x3 | 512x3 | 512x3) with batch
    norm and sign, max pooling after the first three stacks, 512 -> 1024 -> 10."""
    spec = NetworkSpec.preset("b-vgg16")
    net = spec.build(3072, 10, np.random.default_rng(0))
    convs = [layer for layer in net.layers if layer.kind == "conv"]
    assert [c.n_out for c in convs] == [64, 64, 128, 128, 256, 256, 256] + [512] * 6
    assert all(c.kernel == 3 and c.padding == 1 and c.weights == "binary" and c.bn is not None
               and c.activation == "sign" and c.b is None for c in convs)
    assert [layer.W.shape for layer in net.layers[-2:]] == [(512, 1024), (1024, 10)]
    dev = Device.preset("ideal").with_(bits=1)
    for i, layer in enumerate(net.layers):
        layer.crossbar = Crossbar(dev, tile=(64, 64), adc_bits=8, seed=i, range="local", gain="column")
        layer.program()
    X = np.random.default_rng(1).standard_normal((1, 3072)).astype(np.float32)
    out = net.predict(X)
    assert out.shape == (1, 10) and np.isfinite(out).all()
    tiles = sum(layer.crossbar.stats()["tiles"] for layer in net.layers)
    assert tiles == sum(-(-layer.n_in // 64) * -(-layer.n_out // 64) for layer in net.layers)


# ---- CIFAR-10 rows into the first convolution --------------------------------------------------------

def write_cifar(folder, n=3, seed=0):
    """Tiny CIFAR-10 python batches (the standard pickle layout) written by the test itself."""
    import pickle

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for b in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / b, "wb") as fh:
            pickle.dump({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         b"labels": [int(v) for v in rng.integers(0, 10, n)]}, fh)


def test_cifar10_rows_reach_the_first_convolution_in_channel_order(tmp_path):
    """data.load gives C×H×W rows, per-channel standardised; the first convolution reads them as
    images (torch's conv2d on the same pixels agrees), and a binarized CNN trains on the files."""
    from xbar import data
    from xbar.train import train

    write_cifar(tmp_path / "cifar-10-batches-py")
    X, _ = data.load("cifar10", "train", tmp_path)
    raw, _ = data.load("cifar10", "train", tmp_path, preprocess="none")
    mean, std = np.array([0.4914, 0.4822, 0.4465]), np.array([0.2470, 0.2435, 0.2616])
    imgs = (raw.reshape(-1, 3, 32, 32) - mean[None, :, None, None]) / std[None, :, None, None]
    np.testing.assert_allclose(X.reshape(-1, 3, 32, 32), imgs, rtol=1e-5, atol=1e-5)
    net = build({"input": [3, 32, 32], "layers": [{"kind": "conv", "filters": 2, "kernel": 3, "stride": 2},
                                                  {"kind": "flatten"}]}, 3072)
    z, _ = net.layers[0].forward(X)
    w = torch.tensor(net.layers[0].W).reshape(3, 3, 3, 2).permute(3, 2, 0, 1)
    zt = torch.relu(F.conv2d(torch.tensor(imgs, dtype=torch.float32), w, torch.tensor(net.layers[0].b), stride=2))
    np.testing.assert_allclose(z, zt.permute(0, 2, 3, 1).reshape(len(X), -1).numpy(), rtol=1e-4, atol=1e-5)
    r = train({"network": "vgg-small-binary", "dataset": "cifar10", "data_dir": str(tmp_path), "epochs": 1,
               "batch_size": 5, "seed": 1})
    assert r["status"] == "ok" and r["network"]["widths"][:2] == [3072, 32768]


# ---- im2col rows without their matrix: the DAC gathers them -----------------------------------------

def _noisy(kind="multiplicative"):
    return Device.from_dict({"name": f"noisy-{kind}", "g_min_us": 0.1, "g_max_us": 1.0, "bits": 3,
                             "read_noise_rel": 0.05, "read_noise_kind": kind})


@pytest.mark.parametrize("opts", [{"adc_bits": 8}, {"adc_bits": 8, "kind": "additive"}, {"adc_bits": 6, "dac_bits": 5},
                                  {"dac_bits": None, "adc_bits": None}, {"adc_bits": 8, "bias": "row"},
                                  {"adc_bits": 8, "dac_range": 2.0}, {"adc_bits": 8, "offset": True}], ids=str)
def test_mvm_of_patches_gives_the_bits_of_the_im2col_matrix(opts, force):
    """Crossbar.mvm of Patches (a dynamic DAC gathers and scales each image's rows itself; everything
    else builds the matrix): outputs, counters and the noise stream exactly as mvm(im2col(...))."""
    opts = dict(opts)
    kind, offset = opts.pop("kind", "multiplicative"), opts.pop("offset", False)
    rng = np.random.default_rng(7)
    for B, H, C, k, s, p, n_out in [(3, 9, 1, 5, 1, 2, 6), (2, 8, 6, 3, 2, 1, 16), (4, 7, 3, 3, 1, 0, 5)]:
        x = rng.standard_normal((B, H, H, C)).astype(np.float32)
        W = rng.uniform(-1, 1, (k * k * C, n_out)).astype(np.float32)
        b = rng.uniform(-1, 1, n_out).astype(np.float32)
        outs = []
        for lazy in (False, True):
            xb = Crossbar(_noisy(kind), tile=(16, 8), seed=2, range="local" if not offset else "global",
                          mapping="offset" if offset else "differential", **opts).program(W, b)
            rows = (xc.patches if lazy else xc.im2col)(x, k, s, p)
            outs.append([xb.mvm(rows), xb.mvm(rows), xb.stats(), xb.read.reads])
        for got, want in zip(outs[1], outs[0]):
            if isinstance(want, np.ndarray):
                assert got.tobytes() == want.tobytes()
            else:
                assert got == want


def test_mvm_of_patches_names_a_bad_value_and_width():
    xb = Crossbar(_noisy(), tile=(16, 8), adc_bits=8).program(np.ones((25, 4), np.float32))
    x = np.ones((2, 6, 6, 1), np.float32)
    x[1, 2, 3, 0] = np.nan
    for rows in (xc.im2col(x, 5, 1, 2), xc.patches(x, 5, 1, 2)):   # the same message either way
        with pytest.raises(ShapeError, match=r"^X: contains NaN or inf \(first at index \(37, 24\)\)$"):
            xb.mvm(rows)
    assert xb.stats()["mvm_calls"] == 0
    with pytest.raises(ShapeError, match="expected rows of 25 values, got im2col rows of 9"):
        xb.mvm(xc.patches(x, 3, 1, 1))


def test_lenet5_inference_reads_patches_with_the_bits_of_the_matrix(monkeypatch):
    """Network.predict on noisy 3-bit crossbars with ADCs (a conv layer's inference read takes
    Patches) equals the same network reading the im2col matrix, bit for bit."""
    from xbar.nn import conv as nconv
    X = np.random.default_rng(0).standard_normal((20, 784)).astype(np.float32)
    outs = []
    for lazy in (True, False):
        net = NetworkSpec.preset("lenet5").build(784, 10, np.random.default_rng(1))
        dev = Device.preset("ideal").with_(bits=3, read_noise_rel=0.02, read_noise_kind="multiplicative")
        for i, layer in enumerate(net.layers):
            layer.crossbar = Crossbar(dev, tile=(64, 64), adc_bits=8, seed=i)
            layer.program()
        net.calibrate(X)
        if not lazy:
            monkeypatch.setattr(nconv.Conv2d, "_cols", lambda self, x, lazy=False, f=nconv.Conv2d._cols: f(self, x))
        outs.append(net.predict(X, 8).tobytes())
    assert outs[0] == outs[1]


@pytest.mark.parametrize("on_crossbars", [False, True])
def test_an_empty_batch_goes_through_a_conv_network(on_crossbars):
    """Zero rows in, zero rows out, in training and in inference (a reshape by -1 of an empty
    array used to raise inside the layer)."""
    net = NetworkSpec.preset("lenet5").build(784, 10, np.random.default_rng(1))
    if on_crossbars:
        for i, layer in enumerate(net.layers):
            layer.crossbar = Crossbar(_noisy(), tile=(64, 64), adc_bits=8, seed=i)
            layer.program()
        net.calibrate(np.random.default_rng(0).standard_normal((4, 784)).astype(np.float32))
    for train in (False, True):
        out, _ = net.forward(np.zeros((0, 784), np.float32), train)
        assert out.shape == (0, 10) and out.dtype == np.float32
