"""Layers and networks whose weights live on crossbars: forward, derivatives and explicit caches.

A :class:`Dense` layer computes ``a = x W + b``, ``z = f(a)`` with W stored (in, out). Where its
weights live is decided from outside (by the update scheme in :mod:`xbar.train.updates`):

- ``layer.crossbar is None``: W is a plain float32 matrix in digital memory (update "float");
- otherwise the forward pass is ``crossbar.mvm(x)`` on the programmed, quantized, noisy devices
  and :meth:`Dense.backward_input` is ``crossbar.mvm_t(delta)``: Wᵀ read from the same arrays.

Layers do not know which training rule runs: a rule (:mod:`xbar.train.rules`) decides what
travels backward and calls :meth:`Dense.local_delta` to multiply by f'(a).

A network is described by a TOML preset in ``networks/`` (see :class:`NetworkSpec`); its input
size and number of classes come from the dataset.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config import (
    Field,
    check_keys,
    find_preset,
    load_toml,
    preset_names,
    suggest,
    validate_fields,
    where_text,
)
from .errors import ConfigError, ShapeError

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
HIDDEN_ACTIVATIONS = ("relu", "tanh", "sigmoid", "hardtanh", "sign")
OUTPUTS = ("log_softmax", "mse")
LAYER_KINDS = ("dense",)


# ---- output losses: value and error dL/da side by side -----------------------------------------

def log_softmax(a: np.ndarray) -> np.ndarray:
    """log softmax over the last axis, shifted by the row max so exp never overflows."""
    s = a - a.max(axis=1, keepdims=True)
    return s - np.log(np.exp(s).sum(axis=1, keepdims=True))


def loss_and_error(output: str, a: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean batch loss and e = dL/da for the output pre-activation a (batch, classes).

    log_softmax: L = -mean_i log softmax(a_i)[y_i] (torch's log_softmax + nll_loss);
        e = (softmax(a) - onehot(y)) / batch.
    mse: L = mean over all elements of (a - onehot(y))² (torch's mse_loss); e = 2 (a - onehot) / a.size.
    """
    n = a.shape[0]
    rows = np.arange(n)
    if output == "log_softmax":
        lp = log_softmax(a)
        loss = -float(lp[rows, y].mean(dtype=np.float64))
        e = np.exp(lp)
        e[rows, y] -= 1
        e *= np.float32(1.0 / n)
        return loss, e
    d = a.copy()
    d[rows, y] -= 1
    loss = float(np.mean(d * d, dtype=np.float64))
    d *= np.float32(2.0 / d.size)
    return loss, d


# ---- layers -------------------------------------------------------------------------------------

@dataclass
class Cache:
    """What a layer's forward pass keeps for its backward pass: input, pre-activation, output."""

    x: np.ndarray
    a: np.ndarray
    z: np.ndarray


class Dense:
    """A fully connected layer a = x W + b, z = f(a); W (in, out) float32, b (out,) float32.

    Initialisation is torch.nn.Linear's default (Kaiming-uniform with a = √5), i.e. W and b
    ~ U[-1/√in, 1/√in], drawn from `rng` so float runs are comparable with torch baselines.

    crossbar: None (weights in digital memory) or an :class:`xbar.Crossbar` holding W (and b as
        its digital bias); set by the update scheme, which also reprograms it.
    mask: None, or a boolean (in, out) array of kept weights (pruning): masked weights read as
        zero and receive no gradient.
    """

    kind = "dense"

    def __init__(self, n_in: int, n_out: int, activation: str = "relu", *,
                 rng: np.random.Generator, bias: bool = True):
        if activation not in ACTIVATIONS:
            raise ConfigError(f"activation = {activation!r}: expected one of "
                              + ", ".join(map(repr, ACTIVATIONS)) + suggest(activation, ACTIVATIONS))
        self.n_in, self.n_out = int(n_in), int(n_out)
        self.activation = activation
        self._f, self._back = ACTIVATIONS[activation]
        bound = 1.0 / math.sqrt(self.n_in)
        self.W = rng.uniform(-bound, bound, (self.n_in, self.n_out)).astype(np.float32)
        self.b = rng.uniform(-bound, bound, self.n_out).astype(np.float32) if bias else None
        self.crossbar = None
        self.mask: np.ndarray | None = None

    # -- parameters ---------------------------------------------------------------------------
    def params(self) -> list[np.ndarray]:
        """The trainable arrays, updated in place by an optimizer: [W] or [W, b]."""
        return [self.W] if self.b is None else [self.W, self.b]

    def set_weights(self, W, b=None) -> None:
        """Copy W (in, out) and b (out,) into the layer (in place, so optimizers keep their state)."""
        W = np.asarray(W, dtype=np.float32)
        if W.shape != self.W.shape:
            raise ShapeError(f"W: expected shape {self.W.shape}, got {W.shape}")
        self.W[...] = W
        if b is not None:
            if self.b is None or np.shape(b) != self.b.shape:
                raise ShapeError(f"b: expected shape {None if self.b is None else self.b.shape}, "
                                 f"got {np.shape(b)}")
            self.b[...] = b

    def set_mask(self, mask) -> None:
        """Keep only weights where mask is True (pruning); None removes the mask."""
        if mask is not None:
            mask = np.asarray(mask, dtype=bool)
            if mask.shape != self.W.shape:
                raise ShapeError(f"mask: expected shape {self.W.shape}, got {mask.shape}")
        self.mask = mask
        if mask is not None:
            self.W *= mask

    def stored_weights(self) -> np.ndarray:
        """The weights to program or multiply by: W with masked entries at zero."""
        return self.W if self.mask is None else self.W * self.mask

    def program(self) -> None:
        """Write the stored weights (and bias) onto the crossbar, if the layer has one."""
        if self.crossbar is not None:
            self.crossbar.program(self.stored_weights(), self.b)

    # -- forward / backward -------------------------------------------------------------------
    def forward(self, x: np.ndarray) -> tuple[np.ndarray, Cache]:
        """z = f(x W + b) for x (batch, in) float32; returns z and the cache for backward."""
        if self.crossbar is not None:
            a = self.crossbar.mvm(x)
        else:
            a = x @ self.stored_weights()
            if self.b is not None:
                a += self.b
        z = self._f(a)
        return z, Cache(x, a, z)

    def local_delta(self, g: np.ndarray, cache: Cache) -> np.ndarray:
        """dL/da = g ⊙ f'(a), for g = dL/dz (or whatever the rule sends back in its place)."""
        return self._back(g, cache.a, cache.z)

    def backward_input(self, delta: np.ndarray) -> np.ndarray:
        """delta Wᵀ: (batch, out) -> (batch, in); on a crossbar, the transposed in-memory read."""
        if self.crossbar is not None:
            return self.crossbar.mvm_t(delta)
        return delta @ self.stored_weights().T

    def grads(self, delta: np.ndarray, cache: Cache) -> list[np.ndarray]:
        """[dL/dW, dL/db] for delta = dL/da: W gets xᵀ delta (masked), b gets the batch sum."""
        dW = cache.x.T @ delta
        if self.mask is not None:
            dW *= self.mask
        return [dW] if self.b is None else [dW, delta.sum(axis=0)]

    def __repr__(self) -> str:
        where = "float" if self.crossbar is None else repr(self.crossbar)
        return f"Dense({self.n_in}->{self.n_out}, {self.activation}, {where})"


class Network:
    """A stack of layers and an output loss; forward returns explicit caches for the rules."""

    def __init__(self, layers: list[Dense], output: str = "log_softmax", name: str = "custom"):
        if output not in OUTPUTS:
            raise ConfigError(f"output = {output!r}: expected one of {', '.join(map(repr, OUTPUTS))}"
                              + suggest(output, OUTPUTS))
        self.layers = layers
        self.output = output
        self.name = name

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, list[Cache]]:
        """Output pre-activation (batch, classes) and one cache per layer."""
        caches = []
        for layer in self.layers:
            x, c = layer.forward(x)
            caches.append(c)
        return x, caches

    def predict(self, X: np.ndarray, batch_size: int = 1000) -> np.ndarray:
        """Output pre-activations for all rows of X, in batches (no caches kept)."""
        outs = []
        for i in range(0, len(X), batch_size):
            x = X[i:i + batch_size]
            for layer in self.layers:
                x, _ = layer.forward(x)
            outs.append(x)
        return np.concatenate(outs) if outs else np.zeros((0, self.layers[-1].n_out), np.float32)

    def loss(self, a: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        return loss_and_error(self.output, a, y)

    def params(self) -> list[np.ndarray]:
        return [p for layer in self.layers for p in layer.params()]

    def __repr__(self) -> str:
        return f"Network({self.name}: " + ", ".join(map(repr, self.layers)) + f", {self.output})"


# ---- network specs (networks/*.toml) --------------------------------------------------------------

SPEC_FIELDS: tuple[Field, ...] = (
    Field("name", "str", "custom", "Preset name."),
    Field("source", "str", "", "Citation: where the architecture comes from."),
    Field("description", "str", "", "One line for listings."),
    Field("activation", "str", "relu", "Hidden-layer activation.", choices=HIDDEN_ACTIVATIONS),
    Field("output", "str", "log_softmax", "Output: log_softmax + NLL, or MSE on one-hot targets.",
          choices=OUTPUTS),
    Field("bias", "bool", True, "Every layer has a bias."),
)
# Non-scalar keys validated by hand: `hidden` (list of widths) or `layers` (list of tables).
SPEC_KEYS = tuple(f.name for f in SPEC_FIELDS) + ("hidden", "layers")
LAYER_FIELDS: tuple[Field, ...] = (
    Field("kind", "str", "dense", "Layer type (convolutions will be added as new kinds).",
          choices=LAYER_KINDS),
    Field("units", "int", None, "Output width.", lo=1, hi=1_000_000),
    Field("activation", "str", None, "Activation (default: the network's).", choices=HIDDEN_ACTIVATIONS,
          optional=True),
)


@dataclass(frozen=True)
class LayerSpec:
    """One hidden layer: its kind, width and activation."""

    kind: str
    units: int
    activation: str


@dataclass(frozen=True)
class NetworkSpec:
    """An architecture without its input size and classes (they come from the dataset).

    TOML: ``hidden = [100, 100]`` is shorthand for dense hidden layers with the network's
    ``activation``; ``[[layers]]`` tables (``kind = "dense"``, ``units``, optional ``activation``)
    say the same layer by layer, and are where other kinds (convolutions) will go. The output
    layer is always dense, without activation, followed by ``output``.
    """

    name: str
    source: str
    description: str
    activation: str
    output: str
    bias: bool
    layers: tuple[LayerSpec, ...]
    file: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, file: str | None = None) -> NetworkSpec:
        check_keys(data, SPEC_KEYS, file=file)
        scalars = {k: v for k, v in data.items() if k not in ("hidden", "layers")}
        values = validate_fields(SPEC_FIELDS, scalars, file=file)
        if ("hidden" in data) == ("layers" in data):
            raise ConfigError(f"{where_text(file, 'hidden')}: give either hidden = [widths] or "
                              "[[layers]] tables (exactly one of them)")
        layers = []
        if "hidden" in data:
            hidden = data["hidden"]
            if not isinstance(hidden, (list, tuple)):
                raise ConfigError(f"{where_text(file, 'hidden')} = {hidden!r}: expected a list of "
                                  "integers >= 1, e.g. [100, 100] (or [] for none)")
            for i, h in enumerate(hidden):
                if isinstance(h, bool) or not isinstance(h, int) or h < 1:
                    raise ConfigError(f"{where_text(file, f'hidden[{i}]')} = {h!r}: expected an "
                                      "integer >= 1")
                layers.append(LayerSpec("dense", h, values["activation"]))
        else:
            tables = data["layers"]
            if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
                raise ConfigError(f"{where_text(file, 'layers')}: expected [[layers]] tables")
            for i, t in enumerate(tables):
                v = validate_fields(LAYER_FIELDS, t, file=file, prefix=f"layers[{i}].")
                layers.append(LayerSpec(v["kind"], v["units"], v["activation"] or values["activation"]))
        return cls(**values, layers=tuple(layers), file=file)

    @classmethod
    def from_toml(cls, path: str | Path) -> NetworkSpec:
        data = load_toml(path)
        data.setdefault("name", Path(path).stem)
        return cls.from_dict(data, file=str(path))

    @classmethod
    def preset(cls, name: str) -> NetworkSpec:
        """A preset from networks/ by name (unknown names list the known ones), or a TOML path."""
        return cls.from_toml(find_preset("networks", name))

    @staticmethod
    def presets() -> list[str]:
        return preset_names("networks")

    def widths(self, n_in: int, n_classes: int) -> list[int]:
        """Layer widths from input to output, e.g. [784, 100, 100, 10]."""
        return [n_in] + [layer.units for layer in self.layers] + [n_classes]

    def build(self, n_in: int, n_classes: int, rng: np.random.Generator) -> Network:
        """Instantiate the layers (weights drawn from `rng`, layer by layer, W before b)."""
        w = self.widths(n_in, n_classes)
        acts = [layer.activation for layer in self.layers] + ["identity"]
        layers = [Dense(w[i], w[i + 1], acts[i], rng=rng, bias=self.bias) for i in range(len(w) - 1)]
        return Network(layers, self.output, self.name)
