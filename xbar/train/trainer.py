"""The Trainer: the pieces of one run (network, rule, update scheme, optimizer) and the steps and
epochs that drive them; shared by the training loop (:mod:`xbar.train.loop`) and pruning's
retraining. Random streams: see :mod:`xbar.train.loop`."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import ShapeError
from ..kernels import serial_kernels
from ..nn import Network, NetworkSpec, loss_and_error
from .config import TrainConfig
from .optim import StepLR, make_optimizer
from .recipes import build_update
from .rules import make_rule


def stream(seed: int, k: int) -> np.random.Generator:
    """Random stream k of a run's seed (see the module docstring for which k is what; tools
    built on a run, such as pruning, take k >= 100)."""
    return np.random.default_rng(np.random.SeedSequence([seed, k]))


def int_seed(seed: int, k: int) -> int:
    """An integer seed derived from stream k of a run's seed (crossbars take integers)."""
    return int(np.random.SeedSequence([seed, k]).generate_state(1)[0])




def evaluate(net: Network, X: np.ndarray, y: np.ndarray, batch_size: int = 1000) -> tuple[float, float]:
    """(mean loss, accuracy in percent) of the network as it now reads (through its crossbars)."""
    total, correct = 0.0, 0
    for i in range(0, len(X), batch_size):
        a = net.predict(X[i:i + batch_size], batch_size)
        loss, _ = loss_and_error(net.output, a, y[i:i + batch_size])
        total += loss * len(a)
        correct += int(np.sum(np.argmax(a, axis=1) == y[i:i + batch_size]))
    n = max(len(X), 1)
    return total / n, 100.0 * correct / n


class Diverged(Exception):
    """The loss or the weights stopped being finite, or the loss exploded (see loss_limit).

    Trainer.run_epoch sets epoch, step (1-based, the step that diverged) and seconds (spent in
    that epoch) on its way out."""

    epoch: int | None = None
    step: int | None = None
    seconds: float = 0.0


@dataclass
class EpochStats:
    """One pass of Trainer.run_epoch: summed step losses, steps, correct predictions (each batch
    seen before its step), seconds."""

    loss: float
    steps: int
    correct: int
    seconds: float


# A run has diverged when its loss exceeds LOSS_RELATIVE x its first step's loss (at least 1), or
# LOSS_ABSOLUTE. A classifier at chance has an NLL of ln(10) = 2.3; losses of 1e10 to 1e31 that
# stay finite came from runs whose weights had blown up, and they are no result.
LOSS_RELATIVE = 1e6
LOSS_ABSOLUTE = 1e8


def loss_limit(first_loss: float) -> float:
    """The loss above which a run whose first step's loss was `first_loss` has diverged."""
    return min(LOSS_ABSOLUTE, LOSS_RELATIVE * max(first_loss, 1.0))


def loss_divergence(loss: float, first_loss: float | None) -> tuple[str, float | None]:
    """(why a step with this loss has diverged, or "", and the first step's loss after it)."""
    if not math.isfinite(loss):
        return f"loss became {loss}", first_loss
    if first_loss is None:
        first_loss = loss
    if loss > loss_limit(first_loss):
        return (f"loss exploded to {loss:.3g} (first step: {first_loss:.3g}; limit "
                f"{loss_limit(first_loss):.3g})"), first_loss
    return "", first_loss


class Trainer:
    """The pieces of one run, built from a resolved config: network, rule, update, optimizer.

    ``step(x, y)`` is one optimizer step (forward, rule, gradients, step, update); ``train``
    drives it over epochs, calling ``start_epoch`` before each. Built separately so tests and
    tools can run steps by hand.

    The optimizer covers the layers the rule trains; when that set changes (a rule returns None
    for layers it freezes, e.g. HSIC's output-only phase), it is rebuilt for the new set with the
    current learning rate and fresh state.
    """

    def __init__(self, cfg: TrainConfig, n_in: int, n_classes: int):
        self.cfg = cfg
        self.spec = NetworkSpec.preset(cfg.network)
        self.net = self.spec.build(n_in, n_classes, stream(cfg.seed, 0))
        self.rule = make_rule(cfg.rule, **cfg.rule_options())
        self.rule.setup(self.net, stream(cfg.seed, 1))
        self.update = build_update(cfg, stream(cfg.seed, 3))   # the recipe's, else the scheme's
        self.feedback = self.rule.feedback()
        self.update.attach(self.net, [int_seed(cfg.seed, 4 + i) for i in range(len(self.net.layers))],
                           self.feedback)
        self.opt = make_optimizer(cfg.optimizer, self.net.params(), cfg.lr, momentum=cfg.momentum,
                                  weight_decay=cfg.weight_decay)
        self.sched = StepLR(self.opt, cfg.lr_step, cfg.lr_gamma)
        self.shuffle = stream(cfg.seed, 2)
        self._active = tuple(range(len(self.net.layers)))   # layers the optimizer covers
        self.last_correct = 0   # correct predictions of the last step's batch (before the step)
        self.first_loss: float | None = None   # the first step's loss: the scale of an explosion
        self._post_update = [layer for layer in self.net.layers if hasattr(layer, "post_update")]
        self.only_layers: set[int] | None = None   # fit(layers=...): the other layers sit steps out

    def start_epoch(self, epoch: int) -> None:
        """Tell the rule a new epoch (1-based) begins."""
        self.rule.start_epoch(epoch)

    def _cover(self, active: tuple[int, ...]) -> None:
        """Rebuild the optimizer for the layers in `active` (current lr, fresh state)."""
        cfg, lr = self.cfg, self.opt.lr
        params = [p for i in active for p in self.net.layers[i].params()]
        self.opt = make_optimizer(cfg.optimizer, params, lr, momentum=cfg.momentum,
                                  weight_decay=cfg.weight_decay)
        self.sched.optimizer = self.opt
        self._active = active

    def calibrate(self, x: np.ndarray) -> None:
        """Recalibrate every crossbar's forward ADC range on batch x (layer by layer, each on its
        own input, following skip connections). A no-op without ADCs."""
        self.net.calibrate(x)

    def step(self, x: np.ndarray, y: np.ndarray) -> float:
        """One step on batch (x, y); returns the batch loss before the step."""
        net = self.net
        try:
            self.update.before_step(net, x)   # e.g. recipe hwa's aged reads, in-situ ADC recalibration
            out, caches = net.forward(x)
            loss, e = net.loss(out, y)
            self.last_correct = int(np.count_nonzero(np.argmax(out, axis=1) == y))
            msg, self.first_loss = loss_divergence(loss, self.first_loss)
            if msg:
                raise Diverged(msg)
            deltas = self.rule.deltas(net, caches, e, y)
            if self.only_layers is not None:
                deltas = [d if i in self.only_layers else None for i, d in enumerate(deltas)]
            active = tuple(i for i, d in enumerate(deltas) if d is not None)
            if active != self._active:
                self._cover(active)
            grads = [g for i in active for g in net.layers[i].grads(deltas[i], caches[i])]
            self.opt.step(grads)
            for layer in self._post_update:
                layer.post_update()   # layer-owned constraints (e.g. latent weights clipped to [-1, 1])
            self.rule.step()
            self.update.after_step(net, self.feedback)
        except ShapeError as exc:
            # The crossbar refuses NaN/inf (or float32-overflowing) weights, inputs and outputs.
            if overflow_message(exc) or not all(np.isfinite(p).all() for p in net.params()):
                raise Diverged(f"values left the float32 range ({exc})") from None
            raise
        finally:
            self.update.restore(net)
        return loss


    def run_epoch(self, X: np.ndarray, y: np.ndarray, epoch: int, *, calibrate: bool = True,
                  max_steps: int | None = None) -> EpochStats:
        """One shuffled pass over (X, y) in batches of cfg.batch_size (at most max_steps steps):
        start_epoch, then (with ADCs, when `calibrate`) a recalibration on the first shuffled
        samples, then the steps. Raises Diverged with its epoch, step and seconds."""
        n, bs = len(X), self.cfg.batch_size
        perm = self.shuffle.permutation(n)
        t0 = time.perf_counter()
        self.start_epoch(epoch)
        if calibrate and self.cfg.adc_bits is not None:
            self.calibrate(X[perm[:max(bs, 256)]])
        loss, steps, correct = 0.0, 0, 0
        try:
            with serial_kernels():   # BLAS takes the cores (see serial_kernels)
                for s in range(0, n, bs):
                    idx = perm[s:s + bs]
                    loss += self.step(X[idx], y[idx])
                    correct += self.last_correct
                    steps += 1
                    if max_steps is not None and steps >= max_steps:
                        break
        except Diverged as exc:
            exc.epoch, exc.step, exc.seconds = epoch, steps + 1, time.perf_counter() - t0
            raise
        return EpochStats(loss, steps, correct, time.perf_counter() - t0)

    def fit(self, X: np.ndarray, y: np.ndarray, *, epochs: int = 1, steps: int | None = None,
            lr: float | None = None, layers=None, calibrate_first: bool = True,
            end_of_epoch: Callable[[int, EpochStats], bool] | None = None) -> int:
        """Train on (X, y): `epochs` passes, or `steps` optimizer steps (over as many passes as
        that takes); epochs count from 1 again (rules see start_epoch(1), ...).

        lr: set this learning rate first (None: the optimizer's current one). layers: train only
        these layer indices (the others sit every step out). calibrate_first: recalibrate the ADCs
        before the first epoch too (every later epoch always does). end_of_epoch(epoch, stats):
        called after every pass; True stops. The learning-rate schedule is the caller's. Returns
        the steps taken; raises Diverged (see run_epoch).
        """
        if lr is not None:
            self.opt.lr = float(lr)
        saved = self.only_layers
        if layers is not None:
            self.only_layers = set(layers)
        done, epoch = 0, 0
        try:
            while (steps is None and epoch < epochs) or (steps is not None and done < steps):
                epoch += 1
                stats = self.run_epoch(X, y, epoch, calibrate=calibrate_first or epoch > 1,
                                       max_steps=None if steps is None else steps - done)
                done += stats.steps
                if end_of_epoch is not None and end_of_epoch(epoch, stats):
                    break
        finally:
            self.only_layers = saved
        return done


def overflow_message(exc: Exception) -> bool:
    """Whether a crossbar's ShapeError says values left the float32 range (a run diverging)."""
    text = str(exc)
    return "NaN or inf" in text or "float32 range" in text
