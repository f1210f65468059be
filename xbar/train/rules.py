"""Training rules: what travels backward from the output error to each hidden layer.

Every rule turns the output error e = dL/da_L into one delta_l = dL/da_l per layer; the layers
then form their own gradients (xᵀ delta) and the optimizer steps. Layers never know which rule
runs: a rule only calls ``layer.backward_input`` (Wᵀ, read from the layer's devices) and
``layer.local_delta`` (⊙ f'(a)).

- ``bp``: delta_l = (delta_{l+1} W_{l+1}ᵀ) ⊙ f'(a_l); Wᵀ is the transposed crossbar read.
- ``fa`` (Lillicrap et al. 2016, Nat. Commun. 7:13276): delta_l = (delta_{l+1} B_{l+1}ᵀ) ⊙ f'(a_l)
  with B_{l+1} fixed, random, the shape of W_{l+1}, drawn like W (U[±1/√in]).
- ``dfa`` (Nøkland 2016, NeurIPS): delta_l = (e B_l) ⊙ f'(a_l) for every hidden layer, with B_l
  (classes, width_l) fixed random U[±1/√classes] (the fan-in of the projection e -> layer l).

The feedback matrices are kept in digital memory, float32; an update scheme may quantize them
(the seed study rounds FA's B with the weights' quantizer after every step).
"""

from __future__ import annotations

import math

import numpy as np

from ..config import suggest
from ..errors import ConfigError, ShapeError
from ..nn import Cache, Network

RULES = ("bp", "fa", "dfa")


class Rule:
    """Base class: turns the output error into per-layer deltas."""

    name = ""

    def setup(self, net: Network, rng: np.random.Generator) -> None:
        """Create whatever fixed state the rule needs (feedback matrices) for `net`."""

    def deltas(self, net: Network, caches: list[Cache], e: np.ndarray) -> list[np.ndarray]:
        """dL/da for every layer, last one = e."""
        raise NotImplementedError

    def feedback(self) -> list[np.ndarray]:
        """Fixed feedback matrices (mutable, in place), for update schemes that quantize them."""
        return []


class BP(Rule):
    """Backpropagation: the error goes back through Wᵀ of the layer above, on its devices."""

    name = "bp"

    def deltas(self, net, caches, e):
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
        self.B: list[np.ndarray] = []   # B[i] stands in for layers[i + 1].W

    def setup(self, net, rng):
        self.B = []
        for layer in net.layers[1:]:
            bound = 1.0 / math.sqrt(layer.n_in)
            self.B.append(rng.uniform(-bound, bound, (layer.n_in, layer.n_out)).astype(np.float32))

    def set_feedback(self, i: int, B) -> None:
        """Replace the feedback matrix used in place of layers[i + 1].W (tests set B = W)."""
        B = np.asarray(B, dtype=np.float32)
        if B.shape != self.B[i].shape:
            raise ShapeError(f"B[{i}]: expected shape {self.B[i].shape}, got {B.shape}")
        self.B[i][...] = B

    def deltas(self, net, caches, e):
        layers = net.layers
        out = [None] * len(layers)
        out[-1] = e
        for i in range(len(layers) - 2, -1, -1):
            out[i] = layers[i].local_delta(out[i + 1] @ self.B[i].T, caches[i])
        return out

    def feedback(self):
        return self.B


class DFA(Rule):
    """Direct feedback alignment: the output error e reaches every hidden layer through B_l."""

    name = "dfa"

    def __init__(self):
        self.B: list[np.ndarray] = []   # B[i]: (classes, layers[i].n_out), hidden layers only

    def setup(self, net, rng):
        n_classes = net.layers[-1].n_out
        bound = 1.0 / math.sqrt(n_classes)
        self.B = [rng.uniform(-bound, bound, (n_classes, layer.n_out)).astype(np.float32)
                  for layer in net.layers[:-1]]

    def set_feedback(self, i: int, B) -> None:
        """Replace the projection of e onto hidden layer i (tests set B = W_{i+1}ᵀ)."""
        B = np.asarray(B, dtype=np.float32)
        if B.shape != self.B[i].shape:
            raise ShapeError(f"B[{i}]: expected shape {self.B[i].shape}, got {B.shape}")
        self.B[i][...] = B

    def deltas(self, net, caches, e):
        layers = net.layers
        out = [layers[i].local_delta(e @ self.B[i], caches[i]) for i in range(len(layers) - 1)]
        out.append(e)
        return out

    def feedback(self):
        return self.B


_RULES = {"bp": BP, "fa": FA, "dfa": DFA}


def make_rule(name: str) -> Rule:
    """A rule by name; unknown names list the valid ones."""
    if name not in _RULES:
        raise ConfigError(f"rule = {name!r}: expected one of {', '.join(map(repr, RULES))}"
                          + suggest(str(name), RULES))
    return _RULES[name]()
