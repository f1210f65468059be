"""The training loop: a validated config in, a JSON-ready result dict out.

    from xbar.train import TrainConfig, train
    result = train(TrainConfig(network="mlp-100x2", dataset="fmnist", bits=3, update="qat"))

Randomness: one seed; every consumer gets its own stream, np.random.SeedSequence([seed, k]):
k = 0 weight init, 1 feedback matrices, 2 shuffling, 3 stochastic rounding (recipe hwa: the ages
of its reads), 4 + l the crossbar
of layer l. Same config and seed give the same result, bit for bit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .. import data as xdata
from ..errors import ShapeError
from ..nn import Network
from .config import FIELD_NAMES, FIELDS, TrainConfig, parse_device_set
from .defaults import BASE_DEFAULTS, SEED_RECIPE, default_update, update_defaults
from .trainer import LOSS_ABSOLUTE, Diverged, Trainer, evaluate, int_seed, loss_limit, stream

UPDATE_DEFAULTS = update_defaults()   # the shipped schemes' DEFAULTS, by name

__all__ = ["BASE_DEFAULTS", "FIELDS", "FIELD_NAMES", "SEED_RECIPE", "UPDATE_DEFAULTS", "Diverged", "TrainConfig",
           "Trainer", "after_programming", "default_update", "evaluate", "hardware_summary", "int_seed", "load_data", "loss_limit", "parse_device_set",
           "record_epoch", "stream", "train"]


def load_data(cfg: TrainConfig, data: tuple | None = None):
    """(X_train, y_train, X_test, y_test) for the config: loaded, or the given arrays; limits applied."""
    if data is None:
        Xtr, ytr = xdata.load(cfg.dataset, "train", cfg.data_dir)
        Xte, yte = xdata.load(cfg.dataset, "test", cfg.data_dir)
    else:
        Xtr, ytr, Xte, yte = data
    Xtr, Xte = (np.ascontiguousarray(a, dtype=np.float32) for a in (Xtr, Xte))
    ytr, yte = (np.asarray(a, dtype=np.int64) for a in (ytr, yte))
    if cfg.train_limit:
        Xtr, ytr = Xtr[:cfg.train_limit], ytr[:cfg.train_limit]
    if cfg.test_limit:
        Xte, yte = Xte[:cfg.test_limit], yte[:cfg.test_limit]
    n_classes = xdata.num_classes(cfg.dataset)
    for name, yy in (("train", ytr), ("test", yte)):
        if yy.size and (yy.min() < 0 or yy.max() >= n_classes):
            raise ShapeError(f"{name} labels must lie in [0, {n_classes}), got {yy.min()}..{yy.max()}")
    return Xtr, ytr, Xte, yte


def train(config: TrainConfig | dict, *, data: tuple | None = None,
          on_epoch: Callable[[dict], None] | None = None, keep_trainer: bool = False,
          probe: Callable[[Network], dict] | None = None) -> dict[str, Any]:
    """Train one network; returns a JSON-ready dict (see the docstring of xbar.train).

    data: optional (X_train, y_train, X_test, y_test) arrays instead of loading config.dataset.
    on_epoch: called with each history entry as soon as the epoch is evaluated (progress bars).
    keep_trainer: also return the Trainer under "_trainer" (for xbar.checkpoint.save; not JSON).
    probe: called with the network after every epoch; the dict it returns joins that epoch's
        history entry (sweeps record per-layer weight and conductance ranges this way).
    """
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    cfg = cfg.resolve()
    start = time.perf_counter()
    Xtr, ytr, Xte, yte = load_data(cfg, data)
    tr = Trainer(cfg, Xtr.shape[1], xdata.num_classes(cfg.dataset))
    if cfg.init:
        from .init import init_trainer
        init_trainer(tr, cfg.init)
    net = tr.net

    # A diverging run overflows on purpose; it is detected and reported, not warned about.
    with np.errstate(over="ignore", invalid="ignore"):
        history, status, message, train_seconds = _epochs(cfg, tr, Xtr, ytr, Xte, yte, on_epoch, probe)
    after = after_programming(cfg, net, Xte, yte) if status == "ok" and cfg.eval_at_s else None
    return {
        "status": status,
        "message": message,
        "test_accuracy": history[-1]["test_accuracy"] if history and status == "ok" else None,
        "train_accuracy": history[-1]["train_accuracy"] if history and status == "ok" else None,
        "history": history,
        "seconds": time.perf_counter() - start,
        "train_seconds": train_seconds,
        "config": cfg.as_dict(),
        "network": {"name": tr.spec.name, "widths": tr.spec.widths(Xtr.shape[1], net.layers[-1].n_out)},
        "hardware": hardware_summary(net),
    } | ({"after_programming": after} if after is not None else {}) | ({"_trainer": tr} if keep_trainer else {})


def after_programming(cfg: TrainConfig, net: Network, X: np.ndarray, y: np.ndarray) -> list[dict[str, Any]]:
    """Test accuracy of the trained network read cfg.eval_at_s seconds after its last programming
    (Crossbar.at, with cfg.eval_compensate), one dict per time; the network itself is not changed."""
    comp = {"exact": True, "read": "read", "none": False}[cfg.eval_compensate]
    out = []
    for t in cfg.eval_at_s:
        loss, acc = evaluate(read_net(cfg, net).at(t, comp), X, y)
        out.append({"t_s": float(t), "compensate": cfg.eval_compensate, "test_accuracy": acc, "test_loss": loss})
    return out


def _epochs(cfg, tr, Xtr, ytr, Xte, yte, on_epoch, probe=None):
    """The epoch loop (Trainer.fit, evaluating after each epoch): returns (history, status, message,
    training seconds); a divergence message names the epoch (and step) it happened in."""
    net = tr.net
    history: list[dict[str, Any]] = []
    status, message, train_seconds = "ok", "", 0.0

    def end_of_epoch(epoch, stats) -> bool:
        nonlocal status, message, train_seconds
        train_seconds += stats.seconds
        tr.sched.step()
        message = record_epoch(history, on_epoch, cfg, epoch, lambda X, y: evaluate(read_net(cfg, net), X, y),
                               (Xtr, ytr, Xte, yte), stats.loss, stats.steps, stats.seconds, tr.opt.lr,
                               stats.correct)
        if probe is not None:
            history[-1].update(probe(net))
        if message:
            status = "diverged"
        return bool(message)

    try:
        # Weights grow during training: the ADC full scale set on the first batch would clip, so
        # every epoch after the first recalibrates.
        tr.fit(Xtr, ytr, epochs=cfg.epochs, calibrate_first=False, end_of_epoch=end_of_epoch)
    except Diverged as exc:
        status, message = "diverged", f"{exc} at epoch {exc.epoch}, step {exc.step}"
        train_seconds += exc.seconds
    return history, status, message, train_seconds


def read_net(cfg: TrainConfig, net: Network) -> Network:
    """The network evaluation reads: itself, or (inference-only IR drop) its crossbars through the wires."""
    if cfg.ir_drop == "none" or cfg.ir_drop_train:
        return net
    import copy
    layers = []
    for layer in net.layers:
        layer = copy.copy(layer)
        if layer.crossbar is not None:
            layer.crossbar = layer.crossbar.with_wires(cfg.ir_drop, cfg.r_wire_ohm)
        layers.append(layer)
    out = copy.copy(net)
    out.layers = layers
    return out


def record_epoch(history: list, on_epoch, cfg, epoch: int, score, data, step_loss: float, steps: int,
                 seconds: float, lr: float, correct: int) -> str:
    """Evaluate after an epoch, append its history entry and report it (shared with the baseline).

    score(X, y) -> (loss, accuracy %); data = (X_train, y_train, X_test, y_test); correct: right
    predictions over the epoch's batches, each seen before its step (-> step_accuracy).
    Returns a divergence message, or "" when the evaluated losses are finite.
    """
    Xtr, ytr, Xte, yte = data
    test_loss, test_acc = score(Xte, yte)
    entry = {"epoch": epoch, "test_accuracy": test_acc, "train_accuracy": None, "loss": None,
             "test_loss": test_loss, "step_loss": step_loss / max(steps, 1),
             "step_accuracy": 100.0 * correct / max(len(Xtr), 1), "seconds": seconds, "lr": lr}
    if cfg.eval_train:
        entry["loss"], entry["train_accuracy"] = score(Xtr, ytr)
    else:
        entry["loss"] = entry["step_loss"]
    history.append(entry)
    if on_epoch is not None:
        on_epoch(entry)
    if not (math.isfinite(test_loss) and math.isfinite(entry["loss"])):
        return f"evaluation loss became NaN or inf after epoch {epoch}"
    worst = max(test_loss, entry["loss"])
    if worst > LOSS_ABSOLUTE:
        return f"evaluation loss exploded to {worst:.3g} (limit {LOSS_ABSOLUTE:.3g}) after epoch {epoch}"
    return ""


def hardware_summary(net: Network) -> list[dict[str, Any]]:
    """Per-layer crossbar counters (empty for update 'float')."""
    out = []
    for layer in net.layers:
        if layer.crossbar is None:
            continue
        s = layer.crossbar.stats()
        out.append({k: (list(v) if isinstance(v, tuple) else v) for k, v in s.items()
                    if k in ("shape", "tiles", "devices", "programs", "weights_clipped", "adc_clipped",
                             "mvm_calls", "mvm_t_calls")})
    return out
