"""Synthetic gradients / decoupled neural interfaces (Jaderberg et al., "Decoupled Neural
Interfaces using Synthetic Gradients", ICML 2017).

Every hidden layer l has a small module M_l that predicts the gradient of the loss with respect to
the layer's output h_l = z_l = f(a_l) from h_l alone (DNI) or from h_l and the one-hot label
(cDNI, ``conditioned``):

    ĝ_l = M_l(h_l, y) = h_l A_l (+ onehot(y) C_l) + c_l      a linear map, zero-initialised

The layer updates at once from the prediction, δ_l = (ĝ_l / m) ⊙ f'(a_l): it does not wait for the
layers above. M_l is then trained by Adam on ½·mean_i ‖ĝ_l,i − t_l,i‖² toward the gradient that
arrives from the layer above,

    t_l = m · δ_{l+1} W_{l+1}ᵀ       (W_{l+1}ᵀ: the transposed crossbar read of layer l + 1)

which is itself synthetic (bootstrapped, as in the paper) except for the top hidden layer, whose
δ_{l+1} = e is the true output error. Predictions and targets are per-sample gradients (m times
the gradient of the batch-mean loss), so a module does not depend on the batch size.

In a serial simulation every layer runs forward on the weights of the previous step and then all
layers update together, which is what decoupled layers updating as soon as their own module has
answered amount to. The SG modules are digital: float32 numpy arrays in digital memory, never on
crossbars and never rounded by an update scheme; they have their own Adam (lr ``sg_lr``, constant).

cDNI is the default: with a linear module the label carries most of the output error (the top
layer's true gradient is (softmax − onehot(y)) W_outᵀ). mlp-100x2 on Fashion-MNIST, Adam 1e-3,
10 epochs: cDNI 87.4 %, plain DNI 77.4 % (the seed study's SG, unconditioned, reached 65 %).
"""

from __future__ import annotations

import numpy as np

from ..config import Field
from ..errors import ConfigError
from .optim import Adam
from .rule import RULES, Rule, one_hot


class SGModule:
    """M(h, y) = h A (+ Y C) + c: predicts the per-sample dL/dh of a layer of `width` outputs.

    A (width, width), C (classes, width) when conditioned, c (width,): all float32, zero at start
    (the paper zero-initialises the module's last layer, so training starts from ĝ = 0).
    """

    def __init__(self, width: int, n_classes: int, conditioned: bool):
        self.A = np.zeros((width, width), np.float32)
        self.C = np.zeros((n_classes, width), np.float32) if conditioned else None
        self.c = np.zeros(width, np.float32)

    def params(self) -> list[np.ndarray]:
        return [self.A, self.c] if self.C is None else [self.A, self.C, self.c]

    def predict(self, h: np.ndarray, Y: np.ndarray | None) -> np.ndarray:
        """ĝ (m, width) for layer outputs h (m, width) and one-hot labels Y (m, classes)."""
        g = h @ self.A
        if self.C is not None:
            g += Y @ self.C
        g += self.c
        return g

    def grads(self, h: np.ndarray, Y: np.ndarray | None, pred: np.ndarray, target: np.ndarray):
        """Gradients of ½·mean_i ‖ĝ_i − t_i‖² with respect to params(), in the same order."""
        d = (pred - target) * np.float32(1.0 / len(h))
        gs = [h.T @ d]
        if self.C is not None:
            gs.append(Y.T @ d)
        gs.append(d.sum(axis=0))
        return gs


@RULES.register
class SG(Rule):
    """Synthetic gradients: each hidden layer learns from its module's prediction of dL/dh.

    conditioned: cDNI (the module also sees the one-hot label) or plain DNI.
    lr: learning rate of the modules' Adam.
    """

    name = "sg"
    FIELDS = (
        Field("sg_conditioned", "bool", True, "SG: the synthetic-gradient modules also see the one-hot "
              "label (cDNI); false: plain DNI."),
        Field("sg_lr", "float", 1e-3, "SG: Adam learning rate of the (digital) synthetic-gradient modules.",
              lo=0.0, lo_open=True),
    )

    @classmethod
    def options(cls, cfg):
        return {"conditioned": cfg.sg_conditioned, "lr": cfg.sg_lr}

    @classmethod
    def time_factor(cls, config):
        return 1.3

    def __init__(self, conditioned: bool = True, lr: float = 1e-3):
        self.conditioned = bool(conditioned)
        self.lr = float(lr)
        self.modules: list[SGModule] = []
        self.opt: Adam | None = None
        self._pending: list[np.ndarray] | None = None
        self.last_mse: list[float] = []   # per hidden layer, the module's loss on the last batch

    def setup(self, net, rng):
        if len(net.layers) < 2:
            raise ConfigError("rule = 'sg' needs a network with at least one hidden layer; use rule 'bp'")
        n_classes = net.layers[-1].n_out
        self.modules = [SGModule(layer.out_size, n_classes, self.conditioned) for layer in net.layers[:-1]]
        self.opt = Adam([p for mod in self.modules for p in mod.params()], self.lr)
        self._pending = None

    def synthetic(self, i: int, h: np.ndarray, Y: np.ndarray | None) -> np.ndarray:
        """The predicted per-sample dL/dh of hidden layer i (tests replace it with an oracle)."""
        return self.modules[i].predict(h, Y)

    def deltas(self, net, caches, e, y=None):
        if self.opt is None:
            raise ConfigError("rule 'sg': call setup(net, rng) before deltas()")
        layers = net.layers
        n = len(layers)
        m = e.shape[0]
        Y = None
        if self.conditioned:
            if y is None:
                raise ConfigError("rule 'sg' with sg_conditioned needs the batch labels: "
                                  "call deltas(net, caches, e, y)")
            Y = one_hot(y, layers[-1].n_out)
        inv_m = np.float32(1.0 / m)
        preds = [self.synthetic(i, caches[i].z, Y) for i in range(n - 1)]
        out: list[np.ndarray] = [layers[i].local_delta(preds[i] * inv_m, caches[i]) for i in range(n - 1)]
        out.append(e)
        grads, mse = [], []
        for i in range(n - 1):
            # What arrives from above: the layer above's delta (synthetic, or e at the top)
            # through that layer's transposed crossbar read.
            target = layers[i + 1].backward_input(out[i + 1]) * np.float32(m)
            grads += self.modules[i].grads(caches[i].z, Y, preds[i], target)
            mse.append(0.5 * float(np.mean(np.sum((preds[i] - target) ** 2, axis=1))))
        self._pending = grads
        self.last_mse = mse
        return out

    def step(self):
        """Train the modules toward the targets of the last deltas() call (one Adam step)."""
        if self._pending is not None:
            self.opt.step(self._pending)
            self._pending = None
