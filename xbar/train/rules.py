"""Training rules: what travels backward from the output error to each hidden layer.

Every rule turns the output error e = dL/da_L into one delta_l = dL/da_l per layer; the layers
then form their own gradients (colsᵀ delta) and the optimizer steps. Layers never know which rule
runs: a rule only calls ``layer.backward_input`` (Wᵀ, read from the layer's devices, taken back to
the layer's input: col2im for a convolution) and ``layer.local_delta`` (back through the layer's
pooling/dropout, ⊙ f'(a), batch norm). A convolution is a crossbar user like Dense: the same
calls, with W (k·k·C_in, C_out) and flat (batch, features) signals between layers
(``layer.out_size`` wide).

- ``bp``: delta_l = (delta_{l+1} W_{l+1}ᵀ) ⊙ f'(a_l); Wᵀ is the transposed crossbar read.
- ``fa`` (Lillicrap et al. 2016, Nat. Commun. 7:13276): delta_l = (delta_{l+1} B_{l+1}ᵀ) ⊙ f'(a_l)
  with B_{l+1} fixed, random, the shape of W_{l+1}, drawn like W (U[±1/√fan_in]); for a
  convolution above, B_{l+1} is (k·k·C_in, C_out) and is read through the layer's col2im like W
  (``backward_input(delta, weights=B)``).
- ``dfa`` (Nøkland 2016, NeurIPS): delta_l = (e B_l) ⊙ f'(a_l) for every hidden layer, with B_l
  (classes, out_size_l) fixed random U[±1/√classes] (the fan-in of the projection e -> layer l);
  for a convolution, e B_l lands on the layer's output after pooling and local_delta takes it back
  to the crossbar's outputs.
- ``hsic`` (:mod:`xbar.train.hsic`): each hidden layer's delta is the gradient of its own local
  HSIC-bottleneck objective; the output layer gets e. Needs the labels.
- ``sg`` (:mod:`xbar.train.sg`): each hidden layer's delta comes from a learned synthetic-gradient
  module (cDNI, label-conditioned, by default; plain DNI with ``sg_conditioned = false``).

The feedback matrices are kept in digital memory, float32; an update scheme may quantize them
(the seed study rounds FA's B with the weights' quantizer after every step).

The protocol the trainer follows each step: ``deltas(net, caches, e, y)`` (a None delta means
"this layer does not change this step": the trainer leaves it out of the optimizer), the optimizer
step, then ``step()`` for the rule's own learnable state (SG modules). ``start_epoch(epoch)`` runs
before every epoch (HSIC's output-only phase). Options come from the config via ``make_rule``.
"""

from __future__ import annotations

import math

import numpy as np

from ..config import suggest
from ..errors import ConfigError, ShapeError
from ..nn import Cache, Network

RULES = ("bp", "fa", "dfa", "hsic", "sg")


def one_hot(y: np.ndarray, n_classes: int) -> np.ndarray:
    """(m,) integer labels -> (m, n_classes) float32 one-hot rows (for rules that use labels)."""
    out = np.zeros((len(y), n_classes), np.float32)
    out[np.arange(len(y)), y] = 1
    return out


class Rule:
    """Base class: turns the output error into per-layer deltas."""

    name = ""

    def setup(self, net: Network, rng: np.random.Generator) -> None:
        """Create whatever fixed state the rule needs (feedback matrices) for `net`."""

    def deltas(self, net: Network, caches: list[Cache], e: np.ndarray,
               y: np.ndarray | None = None) -> list[np.ndarray | None]:
        """What each layer learns from, in place of dL/da (None: the layer sits this step out).

        e: dL/da of the output layer (batch, classes); y: the batch labels (batch,), for rules
        whose signals use them (hsic, conditioned sg).
        """
        raise NotImplementedError

    def start_epoch(self, epoch: int) -> None:
        """Called before every epoch (1-based)."""

    def step(self) -> None:
        """Update the rule's own learnable state after the optimizer step (SG modules)."""

    def feedback(self) -> list[np.ndarray]:
        """Fixed feedback matrices (mutable, in place), for update schemes that quantize them."""
        return []

    def set_feedback(self, i: int, B) -> None:
        """Replace feedback matrix i in place (tests set FA's B = W, DFA's B = W_{i+1}ᵀ)."""
        current = self.feedback()
        if not 0 <= i < len(current):
            raise ShapeError(f"B[{i}]: rule {self.name!r} has {len(current)} feedback matrices")
        B = np.asarray(B, dtype=np.float32)
        if B.shape != current[i].shape:
            raise ShapeError(f"B[{i}]: expected shape {current[i].shape}, got {B.shape}")
        current[i][...] = B


class BP(Rule):
    """Backpropagation: the error goes back through Wᵀ of the layer above, on its devices."""

    name = "bp"

    def deltas(self, net, caches, e, y=None):
        layers = net.layers
        out = [None] * len(layers)
        out[-1] = e
        for i in range(len(layers) - 2, -1, -1):
            g = layers[i + 1].backward_input(out[i + 1])
            out[i] = layers[i].local_delta(g, caches[i])
        return out


class FA(Rule):
    """Feedback alignment: a fixed random B_{l+1} (shape of W_{l+1}) replaces W_{l+1}."""

    name = "fa"

    def __init__(self):
        self.B: list[np.ndarray] = []   # B[i] stands in for layers[i + 1].W (same shape)

    def setup(self, net, rng):
        self.B = []
        for layer in net.layers[1:]:
            rows, cols = layer.W.shape
            bound = 1.0 / math.sqrt(rows)
            self.B.append(rng.uniform(-bound, bound, (rows, cols)).astype(np.float32))

    def deltas(self, net, caches, e, y=None):
        layers = net.layers
        out = [None] * len(layers)
        out[-1] = e
        for i in range(len(layers) - 2, -1, -1):
            g = layers[i + 1].backward_input(out[i + 1], weights=self.B[i])
            out[i] = layers[i].local_delta(g, caches[i])
        return out

    def feedback(self):
        return self.B


class DFA(Rule):
    """Direct feedback alignment: the output error e reaches every hidden layer through B_l."""

    name = "dfa"

    def __init__(self):
        self.B: list[np.ndarray] = []   # B[i]: (classes, layers[i].out_size), hidden layers only

    def setup(self, net, rng):
        n_classes = net.layers[-1].n_out
        bound = 1.0 / math.sqrt(n_classes)
        self.B = [rng.uniform(-bound, bound, (n_classes, layer.out_size)).astype(np.float32)
                  for layer in net.layers[:-1]]

    def deltas(self, net, caches, e, y=None):
        layers = net.layers
        out = [layers[i].local_delta(e @ self.B[i], caches[i]) for i in range(len(layers) - 1)]
        out.append(e)
        return out

    def feedback(self):
        return self.B


def _registry() -> dict[str, type[Rule]]:
    # hsic and sg subclass Rule from this module, so they are imported on first use.
    from .hsic import HSIC
    from .sg import SG
    return {"bp": BP, "fa": FA, "dfa": DFA, "hsic": HSIC, "sg": SG}


def make_rule(name: str, **options) -> Rule:
    """A rule by name, built with its options (e.g. hsic: sigma, beta, eps, hsic_epochs; sg:
    conditioned, lr); unknown names list the valid ones."""
    if name not in RULES:
        raise ConfigError(f"rule = {name!r}: expected one of {', '.join(map(repr, RULES))}"
                          + suggest(str(name), RULES))
    return _registry()[name](**options)
