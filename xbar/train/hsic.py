"""The HSIC bottleneck (Ma, Lewis & Kleijn, "The HSIC Bottleneck: Deep Learning without
Back-Propagation", AAAI 2020): every hidden layer learns from its own, local objective; no error
travels backward between layers.

For a batch of m samples, hidden layer l (output Z_l = f(a_l), (m, d_l), post-activation) minimises,
with only its own weights and bias,

    J_l = nHSIC(Z_l, X) − β · nHSIC(Z_l, Y)

X the network input (m, d_x), Y the one-hot labels (m, classes). The normalised HSIC of two
kernel matrices (the paper's eq. 5, the official code's ``hsic_normalized_cca``):

    K_ij = exp(−‖a_i − a_j‖² / (2 σ² d))      Gaussian kernel, d = feature dimension of a
    K̄ = H K H,  H = I − 11ᵀ/m                 centring
    R = K̄ (K̄ + ε m I)⁻¹
    nHSIC(A, B) = tr(R_A R_B)

Gradient (derived here, checked against torch autograd in tests/test_rules_local.py). With
G = R_X − β R_Y (constant in Z), J = tr(R_Z G). Write A = K̄_Z + εmI; since R_Z = I − εm A⁻¹,
dR_Z = εm A⁻¹ dK̄_Z A⁻¹, so dJ = tr(dK_Z P) with P = εm H A⁻¹ G A⁻¹ H. The kernel's derivative
∂K_ij/∂z_i = −K_ij (z_i − z_j)/(σ² d) then gives, with M = (P + Pᵀ) ⊙ K_Z,

    ∂J/∂Z = (M Z − diag(M 1) Z) / (σ² d)

Batch standardisation (``standardise``, on by default): the official networks put BatchNorm
(affine=False) before every hidden activation, which fixes the features' scale. xbar's Dense
layers have none, and without it the Gaussian kernel rewards scale: larger Z sharpens K_Z, which
raises both nHSIC terms, and with β ≫ 1 the label term wins, so ReLU features grow without bound
(mlp-100x2 on Fashion-MNIST: hidden rms 7 → 14 and 39 → 84 in 4 epochs) and the output layer
cannot follow them (10 epochs: test accuracy wandering between 70 and 80 %). So the kernels of X and of every Z_l see
the batch divided by its rms, Ẑ = Z/s, s = ‖HZ‖_F/√(md), which makes σ relative to the batch's
own spread (the regime of the official code, where BN gives unit-variance features). The
objective is then scale-free and its exact gradient is

    ∂J/∂Z = (g − (⟨g, HẐ⟩ / ‖HẐ‖²) HẐ) / s,      g = ∂J/∂Ẑ from the formula above

(the component along HẐ drops out). The one-hot labels' kernel is used as it is.

The rule sends δ_l = ∂J_l/∂Z_l ⊙ f'(a_l) (``layer.local_delta``) to layer l: Z_l is the layer's
post-activation output, so f' is applied exactly as for a backpropagated dL/dz. For a convolution
Z_l is its output as it leaves the layer (after its pooling), flattened to (m, out_size), and
local_delta takes ∂J_l/∂Z_l back through the pooling, f' and any batch norm to the crossbar's
outputs: the rule does not treat convolutions specially. The output layer
gets the ordinary loss error e = dL/da_L; its gradient xᵀe uses the hidden features as read, with
nothing flowing further down (the features are "detached").

Schedule (``hsic_epochs``, default: half the epochs, rounded up): during epochs 1…k the hidden
layers learn by HSIC while the output layer learns the loss on their current features; afterwards
the hidden layers are frozen and only the output layer trains on the frozen features (the
official code's separate "format" training). The trainer rebuilds the optimizer for the output
layer at that point (fresh state, current learning rate). The second phase both steadies the
read-out (mlp-100x2, Fashion-MNIST, 10 epochs: 86.1 % with k = 5 against 85.2 % with k = 10,
which wanders between 83 and 86 %) and halves the cost of its epochs.

Defaults follow the official code (github.com/choasma/HSIC-bottleneck, config/*.yaml) where it
fits: σ = 5, ε = 1e-5 (hard-coded there), β = 500 (the paper's range is 50–1000). J is a batch
sum, not a mean: with adam or adadelta its scale does not matter; with sgd the learning rate must
be set for it.

Kernels, inverses and the gradient are computed in float64 (m × m, cheap; the ridge εm is small
enough that float32 inverses lose digits) and δ is returned as float32.
"""

from __future__ import annotations

import numpy as np

from ..config import Field
from ..errors import ConfigError, ShapeError
from .rule import RULES, Rule, one_hot

# The functions below take one matrix or a stack of them (leading axes: variants of a stacked
# run, xbar.train.stack); on a stack every operation is the one a single matrix gets, slice by
# slice (numpy's batched products and inverses call the same BLAS/LAPACK routine per matrix), so a
# stacked variant's kernels and gradients equal its own run's bit for bit.

def _mean_all(A: np.ndarray) -> np.ndarray:
    """The mean of each matrix of A (..., m, n), shaped (..., 1, 1) (one pass, as A.mean())."""
    return A.reshape(*A.shape[:-2], -1).mean(axis=-1)[..., None, None]


def gaussian_kernel(A: np.ndarray, sigma: float) -> np.ndarray:
    """K_ij = exp(−‖a_i − a_j‖² / (2 σ² d)) for the rows of A (..., m, d); float64 (..., m, m)."""
    A = np.asarray(A, dtype=np.float64)
    if A.ndim < 2:
        raise ShapeError(f"kernel input: expected a (samples, features) matrix, got shape {A.shape}")
    r = np.einsum("...ij,...ij->...i", A, A)
    D = r[..., :, None] + r[..., None, :] - 2.0 * (A @ A.swapaxes(-1, -2))
    np.maximum(D, 0.0, out=D)   # cancellation can leave tiny negatives where a_i ≈ a_j
    return np.exp(D * (-1.0 / (2.0 * sigma * sigma * A.shape[-1])))


def centre(K: np.ndarray) -> np.ndarray:
    """H K H with H = I − 11ᵀ/m, without forming H (a new array); K (..., m, m)."""
    K = np.asarray(K, dtype=np.float64)
    return K - K.mean(axis=-2, keepdims=True) - K.mean(axis=-1, keepdims=True) + _mean_all(K)


def _r_and_inverse(K: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """(R, A⁻¹) with K̄ = HKH, A = K̄ + εmI, R = K̄ A⁻¹."""
    m = K.shape[-1]
    Kc = centre(K)
    Ainv = np.linalg.inv(Kc + (eps * m) * np.eye(m))
    return Kc @ Ainv, Ainv


def r_matrix(K: np.ndarray, eps: float) -> np.ndarray:
    """R = K̄ (K̄ + ε m I)⁻¹, K̄ = H K H: the normalised, centred kernel of one variable."""
    return _r_and_inverse(K, eps)[0]


def nhsic(Kx: np.ndarray, Ky: np.ndarray, eps: float = 1e-5) -> float:
    """Normalised HSIC tr(R_X R_Y) of two (m, m) kernel matrices (uncentred; centred here).

    eps: the ridge ε, relative to the batch size m (the added term is ε m I). The value lies in
    [0, rank]; it approaches the number of shared directions of the two centred kernels.
    """
    Kx, Ky = np.asarray(Kx, dtype=np.float64), np.asarray(Ky, dtype=np.float64)
    if Kx.ndim != 2 or Kx.shape[0] != Kx.shape[1] or Kx.shape != Ky.shape:
        raise ShapeError(f"nhsic: expected two square kernel matrices of the same size, got "
                         f"{Kx.shape} and {Ky.shape}")
    Rx, Ry = r_matrix(Kx, eps), r_matrix(Ky, eps)
    return float(np.sum(Rx * Ry.T))


def batch_rms(A: np.ndarray):
    """s = ‖H A‖_F / √(m d): the rms of the batch-centred features (1 where that is 0); a float
    for one matrix (m, d), an array (...) for a stack."""
    A = np.asarray(A, dtype=np.float64)
    if A.ndim == 2:
        s = float(np.sqrt(np.mean((A - A.mean(axis=0)) ** 2))) if A.size else 0.0
        return s if s > 0 else 1.0
    C = A - A.mean(axis=-2, keepdims=True)
    s = np.sqrt((C * C).reshape(*A.shape[:-2], -1).mean(axis=-1)) if A.size else np.zeros(A.shape[:-2])
    return np.where(s > 0, s, 1.0)


def layer_objective(Z: np.ndarray, G: np.ndarray, sigma: float, eps: float,
                    standardise: bool = False) -> tuple[float, np.ndarray]:
    """J = tr(R_Z G) and ∂J/∂Z (float64, shape of Z) for a fixed symmetric G (m, m); for a
    stack Z (K, m, d), J is a (K,) array.

    With G = R_X − β R_Y this is the per-layer HSIC-bottleneck objective; see the module docstring
    for the derivation of the gradient. standardise: the kernel sees Ẑ = Z / s, s = batch_rms(Z),
    and the gradient includes s's dependence on Z.
    """
    Z = np.asarray(Z, dtype=np.float64)
    one = Z.ndim == 2
    m, d = Z.shape[-2:]
    s = batch_rms(Z) if standardise else 1.0
    Zs = Z / (s if one else np.asarray(s)[..., None, None])
    K = gaussian_kernel(Zs, sigma)
    Rz, Ainv = _r_and_inverse(K, eps)
    J = (Rz * G.T).reshape(*Z.shape[:-2], -1).sum(axis=-1)
    P = centre((eps * m) * (Ainv @ G @ Ainv))
    M = (P + P.swapaxes(-1, -2)) * K
    grad = (M @ Zs - M.sum(axis=-1)[..., :, None] * Zs) * (1.0 / (sigma * sigma * d))
    if standardise:
        # J depends on Z only through Z/s(Z): the gradient loses its component along HẐ, and
        # scaling Z changes nothing (the columns of grad sum to zero, so <grad, Ẑ> = <grad, HẐ>).
        Zc = Zs - Zs.mean(axis=-2, keepdims=True)
        nrm = (Zc * Zc).reshape(*Z.shape[:-2], -1).sum(axis=-1)
        dot = (grad * Zc).reshape(*Z.shape[:-2], -1).sum(axis=-1)
        if one:
            if nrm > 0:
                grad = grad - (float(dot) / float(nrm)) * Zc
            grad /= s
        else:
            coef = np.where(nrm > 0, dot / np.where(nrm > 0, nrm, 1.0), 0.0)
            grad = np.where((nrm > 0)[..., None, None], grad - coef[..., None, None] * Zc, grad)
            grad /= np.asarray(s)[..., None, None]
    return (float(J) if one else J), grad


@RULES.register
class HSIC(Rule):
    """HSIC bottleneck: each hidden layer follows its own nHSIC(Z, X) − β·nHSIC(Z, Y) gradient;
    the output layer learns the loss on the (detached) hidden features.

    sigma: kernel width σ (the kernel divides by 2σ²d, so σ is per feature; relative to the
        batch rms when standardise).
    beta: weight β of the label term.
    eps: ridge ε of the normalised HSIC (εm is added to K̄).
    hsic_epochs: None (hidden layers learn in every epoch) or k (frozen after epoch k).
    standardise: kernels of X and Z see the batch divided by its rms (see the module docstring).
    """

    name = "hsic"
    # Defaults from the official code (see the module docstring).
    FIELDS = (
        Field("hsic_sigma", "float", 5.0, "HSIC: Gaussian kernel width σ (kernel exp(-|a-b|²/(2σ²d))).",
              lo=0.0, lo_open=True),
        Field("hsic_beta", "float", 500.0, "HSIC: weight β of the label term in nHSIC(Z,X) - β nHSIC(Z,Y).",
              lo=0.0),
        Field("hsic_eps", "float", 1e-5, "HSIC: ridge ε of the normalised HSIC (εm is added to the "
              "centred kernel).", lo=0.0, lo_open=True),
        Field("hsic_epochs", "int", None, "HSIC: epochs in which the hidden layers learn (the output layer "
              "alongside them); afterwards only the output layer trains, on the frozen features (omit: "
              "half the epochs, rounded up).", lo=1, optional=True),
        Field("hsic_standardise", "bool", True, "HSIC: kernels see each batch divided by its rms (in place "
              "of the official networks' BatchNorm); false: the raw features."),
    )

    @classmethod
    def options(cls, cfg):
        return {"sigma": cfg.hsic_sigma, "beta": cfg.hsic_beta, "eps": cfg.hsic_eps,
                "hsic_epochs": cfg.hsic_epochs, "standardise": cfg.hsic_standardise}

    @classmethod
    def resolve(cls, filled):
        if filled["hsic_epochs"] is None:
            filled["hsic_epochs"] = (filled["epochs"] + 1) // 2

    @classmethod
    def check(cls, cfg):
        if cfg.batch_size < 2:
            raise ConfigError(f"rule = 'hsic' with batch_size = {cfg.batch_size}: the HSIC estimator "
                              "needs batches of at least 2 samples (the official code uses 256-512)")

    @classmethod
    def time_factor(cls, config):
        return 1.0 + 2.0 * config.get("hsic_epochs", 0) / max(config["epochs"], 1)

    def __init__(self, sigma: float = 5.0, beta: float = 500.0, eps: float = 1e-5,
                 hsic_epochs: int | None = None, standardise: bool = True):
        self.sigma, self.beta, self.eps = float(sigma), float(beta), float(eps)
        self.standardise = bool(standardise)
        self.hsic_epochs = hsic_epochs
        self.epoch = 1

    def setup(self, net, rng):
        if len(net.layers) < 2:
            raise ConfigError("rule = 'hsic' needs a network with at least one hidden layer (it trains "
                              "hidden layers by HSIC and the output layer on their features); use rule 'bp'")

    def start_epoch(self, epoch):
        self.epoch = epoch

    def learning_hidden(self) -> bool:
        """Whether the hidden layers still learn (False in the output-only phase)."""
        return self.hsic_epochs is None or self.epoch <= self.hsic_epochs

    def deltas(self, net, caches, e, y=None):
        layers = net.layers
        out: list[np.ndarray | None] = [None] * len(layers)
        out[-1] = e
        if not self.learning_hidden():
            return out
        if y is None:
            raise ConfigError("rule 'hsic' needs the batch labels: call deltas(net, caches, e, y)")
        # A batch of one sample (an epoch's remainder) has a zero centred kernel: J is constant
        # and the deltas come out as zeros, as they should.
        G = self.label_term(caches[0].x, y, layers[-1].n_out)
        for i in range(len(layers) - 1):
            _, g = layer_objective(caches[i].z, G, self.sigma, self.eps, self.standardise)
            out[i] = layers[i].local_delta(g.astype(np.float32), caches[i])
        return out

    def label_term(self, X: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
        """G = R_X − β R_Y for a batch: network inputs X (m, d_x), labels y (m,); every hidden
        layer's objective is tr(R_Z G)."""
        Rx = r_matrix(gaussian_kernel(X / batch_rms(X) if self.standardise else X, self.sigma), self.eps)
        Ry = r_matrix(gaussian_kernel(one_hot(y, n_classes), self.sigma), self.eps)
        return Rx - self.beta * Ry

    def diagnostics(self, net, caches, y) -> list[tuple[float, float]]:
        """(nHSIC(Z_l, X), nHSIC(Z_l, Y)) for every hidden layer on one batch (for plots/tests)."""
        def kernel(A):
            return gaussian_kernel(A / batch_rms(A) if self.standardise else A, self.sigma)

        Kx = kernel(caches[0].x)
        Ky = gaussian_kernel(one_hot(y, net.layers[-1].n_out), self.sigma)
        out = []
        for c in caches[:-1]:
            Kz = kernel(c.z)
            out.append((nhsic(Kz, Kx, self.eps), nhsic(Kz, Ky, self.eps)))
        return out
