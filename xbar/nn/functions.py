"""Activations and output losses, each value beside its derivative, and binary weights (sign and
its straight-through gradient): the plain functions the layers are made of."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# ---- activations: value and derivative side by side -------------------------------------------
# Each entry: f(a) -> z, and backward(g, a, z) -> g * f'(a) (new array).


def _relu(a):
    return np.maximum(a, 0, dtype=a.dtype)


def _relu_back(g, a, z):
    return g * (a > 0)


def _tanh_back(g, a, z):
    return g * (1 - z * z)


def _sigmoid(a):
    # 0.5 (1 + tanh(a/2)) never overflows, unlike 1 / (1 + exp(-a)) for large negative a.
    return (np.tanh(a * np.float32(0.5)) + 1) * np.float32(0.5)


def _sigmoid_back(g, a, z):
    return g * (z * (1 - z))


def _hardtanh(a):
    return np.clip(a, -1, 1)


def _hardtanh_back(g, a, z):
    # torch's hardtanh_backward: zero at and beyond the kinks.
    return g * ((a > -1) & (a < 1))


def _sign(a):
    return np.where(a >= 0, np.float32(1), np.float32(-1))


def _sign_back(g, a, z):
    # Clipped straight-through estimator (BinaryConnect/BNN): pass where |a| <= 1.
    return g * (np.abs(a) <= 1)


def _identity_back(g, a, z):
    return g


ACTIVATIONS: dict[str, tuple[Callable, Callable]] = {
    "relu": (_relu, _relu_back),
    "tanh": (np.tanh, _tanh_back),
    "sigmoid": (_sigmoid, _sigmoid_back),
    "hardtanh": (_hardtanh, _hardtanh_back),
    "sign": (_sign, _sign_back),
    "identity": (lambda a: a, _identity_back),
}
HIDDEN_ACTIVATIONS = ("relu", "tanh", "sigmoid", "hardtanh", "sign", "identity")
OUTPUTS = ("log_softmax", "mse")



# ---- output losses: value and error dL/da side by side -----------------------------------------

def log_softmax(a: np.ndarray) -> np.ndarray:
    """log softmax over the last axis, shifted by the row max so exp never overflows."""
    s = a - a.max(axis=-1, keepdims=True)
    return s - np.log(np.exp(s).sum(axis=-1, keepdims=True))


def _mean64(v: np.ndarray):
    """The float64 mean of v's last axis: a float for 1-D v, else an array of v.shape[:-1], each
    entry computed as the mean of that row alone. (numpy's reduction of a stack along its last
    axis may sum in another order: a stacked run's loss then differed from the run alone in the
    last bits.)"""
    if v.ndim == 1:
        return float(v.mean(dtype=np.float64))
    rows = v.reshape(-1, v.shape[-1])
    return np.array([r.mean(dtype=np.float64) for r in rows]).reshape(v.shape[:-1])


def loss_and_error(output: str, a: np.ndarray, y: np.ndarray):
    """Mean batch loss and e = dL/da for the output pre-activation a (batch, classes).

    log_softmax: L = -mean_i log softmax(a_i)[y_i] (torch's log_softmax + nll_loss);
        e = (softmax(a) - onehot(y)) / batch.
    mse: L = mean over all elements of (a - onehot(y))² (torch's mse_loss); e = 2 (a - onehot) / a.size.

    A stack a (K, batch, classes) (variants of a stacked run, one label vector y) gives a (K,)
    array of losses and the (K, batch, classes) errors, each variant's exactly as alone.
    """
    n = a.shape[-2]
    rows = np.arange(n)
    if output == "log_softmax":
        lp = log_softmax(a)
        loss = -_mean64(lp[..., rows, y])
        e = np.exp(lp)
        e[..., rows, y] -= 1
        e *= np.float32(1.0 / n)
        return loss, e
    d = a.copy()
    d[..., rows, y] -= 1
    loss = _mean64((d * d).reshape(*a.shape[:-2], -1))
    d *= np.float32(2.0 / (n * a.shape[-1]))
    return loss, d


# ---- binary weights: sign with a clipped straight-through estimator ------------------------------

def sign(W: np.ndarray) -> np.ndarray:
    """sign with sign(0) = +1 (a binary weight or activation is never 0), float32."""
    return np.where(W >= 0, np.float32(1), np.float32(-1))


def binarize(W: np.ndarray, scale: str = "none") -> np.ndarray:
    """Ŵ = sign(W), or α_j·sign(W) with α_j = mean_i |W_ij| per output column (XNOR-Net,
    Rastegari et al. 2016, scale "mean"); W (rows, out), a new float32 array."""
    out = sign(W)
    if scale == "mean":
        out *= np.mean(np.abs(W), axis=0, dtype=np.float32)[None, :]
    return out


def binary_grad(W: np.ndarray, G: np.ndarray, scale: str = "none") -> np.ndarray:
    """dL/dW for the latent weights W given G = dL/dŴ, through the clipped straight-through
    estimator of sign (∂sign(w)/∂w := 1{|w| ≤ 1}, BinaryConnect/BNN).

    scale "mean": Ŵ_ij = α_j s_ij with α_j = (1/K) Σ_k |W_kj| (K rows), so by the chain rule
    dL/dW_ij = G_ij α_j 1{|W_ij| ≤ 1} + sign(W_ij)/K · Σ_k G_kj s_kj (the exact derivative of
    the forward function with the STE in place of sign'; torch autograd gives the same).
    """
    ste = np.abs(W) <= 1
    if scale == "none":
        return G * ste
    K = W.shape[0]
    alpha = np.mean(np.abs(W), axis=0, dtype=np.float32)
    common = np.einsum("ij,ij->j", G, sign(W)) * np.float32(1.0 / K)
    return G * (alpha[None, :] * ste) + np.sign(W) * common[None, :]
