"""Optimizers with torch.optim's exact update formulas, in numpy, updating arrays in place.

Each optimizer holds references to the parameter arrays (float32) and steps them in place from a
list of gradients in the same order, so layers and update schemes keep seeing the same arrays.
The formulas follow torch.optim (2.x, single-tensor path) line for line, so a run with the same
gradients gives the same parameters to float32 rounding; tests compare the two.
"""

from __future__ import annotations

import numpy as np

from ..config import suggest
from ..errors import ConfigError
from ..kernels.optim import adadelta_step, adam_step

OPTIMIZERS = ("sgd", "adam", "adadelta")
# torch.optim's default learning rates (SGD has none in torch; 0.01 is the common choice).
DEFAULT_LR = {"sgd": 0.01, "adam": 1e-3, "adadelta": 1.0}

_f32 = np.float32


class Optimizer:
    """Base class: `lr` may be changed between steps (a scheduler does)."""

    def __init__(self, params: list[np.ndarray], lr: float, weight_decay: float = 0.0):
        for p in params:
            if p.dtype != np.float32 or not p.flags.c_contiguous:
                raise ConfigError("optimizer parameters must be C-contiguous float32 arrays")
        self.params = params
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.steps = 0

    def _decayed(self, g: np.ndarray, p: np.ndarray) -> np.ndarray:
        # torch: grad = grad.add(param, alpha=weight_decay), a new array (the caller's is kept)
        return g + _f32(self.weight_decay) * p if self.weight_decay else g

    def step(self, grads: list[np.ndarray]) -> None:
        raise NotImplementedError


class SGD(Optimizer):
    """torch.optim.SGD: buf = μ buf + (1 - dampening) g (buf = g at the first step); p -= lr buf.

    With nesterov, p -= lr (g + μ buf). weight_decay adds wd·p to g first.
    """

    def __init__(self, params, lr=0.01, momentum=0.0, weight_decay=0.0, dampening=0.0, nesterov=False):
        super().__init__(params, lr, weight_decay)
        self.momentum, self.dampening, self.nesterov = float(momentum), float(dampening), bool(nesterov)
        self.buf: list[np.ndarray | None] = [None] * len(params)

    def step(self, grads):
        self.steps += 1
        mu, lr = _f32(self.momentum), _f32(self.lr)
        for i, (p, g) in enumerate(zip(self.params, grads)):
            d = self._decayed(g, p)
            if self.momentum:
                b = self.buf[i]
                if b is None:
                    b = self.buf[i] = np.array(d, dtype=np.float32)
                else:
                    b *= mu
                    b += _f32(1 - self.dampening) * d
                d = d + mu * b if self.nesterov else b
            p -= lr * d


class Adam(Optimizer):
    """torch.optim.Adam (amsgrad off): m = β1 m + (1-β1) g, v = β2 v + (1-β2) g²,
    p -= lr/(1-β1^t) · m / (√v / √(1-β2^t) + eps)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr, weight_decay)
        self.beta1, self.beta2 = float(betas[0]), float(betas[1])
        self.eps = float(eps)
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]
        self._tmp = [np.empty_like(p) for p in params]
        self._flat: tuple = (None, ())   # (the params list they view, flat views of p, m, v)

    def step(self, grads):
        self.steps += 1
        t = self.steps
        b1, b2 = self.beta1, self.beta2
        # the step's float32 constants, for the fused pass and the numpy path below alike
        consts = np.array([1 - b1, b2, 1 - b2, self.eps, (1 - b2 ** t) ** 0.5, self.lr / (1 - b1 ** t)],
                          np.float32)
        bc2_sqrt, step_size = consts[4], consts[5]
        if self._flat[0] is not self.params:   # (a tuple: reindex, which swaps the lists, leaves it)
            self._flat = (self.params, tuple((p.reshape(-1), m.reshape(-1), v.reshape(-1))
                                             for p, m, v in zip(self.params, self.m, self.v)))
        for p, g, m, v, tmp, flat in zip(self.params, grads, self.m, self.v, self._tmp, self._flat[1]):
            g = self._decayed(g, p)
            if g.dtype == np.float32 and g.flags.c_contiguous and p.shape == g.shape:
                # One fused pass, same float32 operations in the same order as below (on flat views
                # of the parameters, C-contiguous float32 as the constructor checks, and moments).
                adam_step(flat[0], g.reshape(-1), flat[1], flat[2], consts)
                continue
            np.subtract(g, m, out=tmp)
            tmp *= consts[0]
            m += tmp                             # torch: exp_avg.lerp_(grad, 1 - beta1)
            np.multiply(g, g, out=tmp)
            tmp *= consts[2]
            v *= consts[1]
            v += tmp                             # v = β2 v + (1-β2) g²
            np.sqrt(v, out=tmp)
            tmp /= bc2_sqrt
            tmp += consts[3]                     # denom = √v / √(1-β2^t) + eps
            np.divide(m, tmp, out=tmp)
            tmp *= step_size
            p -= tmp


class Adadelta(Optimizer):
    """torch.optim.Adadelta: s = ρ s + (1-ρ) g², Δ = √(a + eps)/√(s + eps) · g,
    a = ρ a + (1-ρ) Δ², p -= lr Δ (Zeiler 2012; torch defaults lr 1.0, ρ 0.9, eps 1e-6)."""

    def __init__(self, params, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0):
        super().__init__(params, lr, weight_decay)
        self.rho, self.eps = float(rho), float(eps)
        self.sq = [np.zeros_like(p) for p in params]
        self.acc = [np.zeros_like(p) for p in params]
        self._tmp = [(np.empty_like(p), np.empty_like(p)) for p in params]   # no allocation per step

    def scalars(self) -> tuple[np.float32, np.float32, np.float32, np.float32]:
        """(ρ, 1-ρ, eps, lr) as the fused step takes them (float32)."""
        return _f32(self.rho), _f32(1 - self.rho), _f32(self.eps), _f32(self.lr)

    def step(self, grads):
        self.steps += 1
        rho, one_rho, eps, lr = self.scalars()
        for p, g, s, a, (t, d) in zip(self.params, grads, self.sq, self.acc, self._tmp):
            g = self._decayed(g, p)
            if g.dtype == np.float32 and g.flags.c_contiguous and p.shape == g.shape:
                # One fused pass, same float32 operations in the same order as below.
                adadelta_step(p.reshape(-1), g.reshape(-1), s.reshape(-1), a.reshape(-1), rho, one_rho,
                                eps, lr)
                continue
            np.multiply(g, g, out=t)
            t *= one_rho
            s *= rho
            s += t                       # s = ρ s + (1-ρ) g²
            np.add(s, eps, out=t)
            np.sqrt(t, out=t)            # std = √(s + eps)
            np.add(a, eps, out=d)
            np.sqrt(d, out=d)
            d /= t
            d *= g                       # Δ = √(a + eps) / std · g
            np.multiply(d, d, out=t)
            t *= one_rho
            a *= rho
            a += t                       # a = ρ a + (1-ρ) Δ²
            if lr != 1:
                d *= lr
            p -= d


class StepLR:
    """torch.optim.lr_scheduler.StepLR: lr *= gamma every `step_size` epochs (call step() per epoch)."""

    def __init__(self, optimizer: Optimizer, step_size: int = 1, gamma: float = 0.1):
        self.optimizer = optimizer
        self.step_size, self.gamma = int(step_size), float(gamma)
        self.epoch = 0

    def step(self) -> None:
        self.epoch += 1
        if self.epoch % self.step_size == 0:
            self.optimizer.lr *= self.gamma


def reindex(opt: Optimizer, old_params: list[np.ndarray], new_params: list[np.ndarray], keep: np.ndarray) -> None:
    """Point `opt` at new_params (stacked parameters, old_params[keep] in the same order) and keep the
    same entries of its state (a stacked run's variants leaving, :mod:`xbar.train.stack`)."""
    opt.params = new_params
    for name, val in list(vars(opt).items()):
        if name == "params" or not isinstance(val, list) or len(val) != len(old_params):
            continue
        new = []
        for item in val:
            if isinstance(item, np.ndarray):
                new.append(np.ascontiguousarray(item[keep]))
            elif isinstance(item, tuple):
                new.append(tuple(np.ascontiguousarray(a[keep]) for a in item))
            else:
                new.append(item)
        setattr(opt, name, new)


def make_optimizer(name: str, params: list[np.ndarray], lr: float | None = None, *,
                   momentum: float = 0.0, weight_decay: float = 0.0) -> Optimizer:
    """An optimizer by name (sgd, adam, adadelta); lr None means torch's default for it."""
    if name not in OPTIMIZERS:
        raise ConfigError(f"optimizer = {name!r}: expected one of {', '.join(map(repr, OPTIMIZERS))}"
                          + suggest(str(name), OPTIMIZERS))
    lr = DEFAULT_LR[name] if lr is None else lr
    if name == "sgd":
        return SGD(params, lr, momentum=momentum, weight_decay=weight_decay)
    if momentum:
        raise ConfigError(f"momentum = {momentum}: only sgd takes momentum (adam/adadelta have their own "
                          "running averages)")
    if name == "adam":
        return Adam(params, lr, weight_decay=weight_decay)
    return Adadelta(params, lr, weight_decay=weight_decay)
