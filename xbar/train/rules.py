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

The base class and the registry are in :mod:`xbar.train.rule`; this module holds bp, fa and dfa
and imports the other shipped rules (hsic, sg) so that they register.
"""

from __future__ import annotations

import math

import numpy as np

from .rule import RULES, Rule, make_rule, one_hot


@RULES.register
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


@RULES.register
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


@RULES.register
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


# The other shipped rules register themselves on import (in this order: bp, fa, dfa, hsic, sg).
from . import hsic, sg  # noqa: F401

__all__ = ["RULES", "Rule", "make_rule", "one_hot"]
