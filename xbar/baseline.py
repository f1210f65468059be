"""The float reference: the same network, data and training settings as `xbar train`, in torch.

    from xbar.baseline import baseline
    result = baseline(TrainConfig(network="mlp-100x2", dataset="fmnist", recipe="seed"))

What is the same as :func:`xbar.train.train` with ``update="float", rule="bp"``:
- the network (NetworkSpec: widths, activations, bias, log-softmax + NLL or MSE output);
- the resolved settings (TrainConfig.resolve(): optimizer, lr, StepLR γ and period, batch size,
  epochs, momentum, weight decay, ``--recipe seed``), as torch.optim objects;
- the data (xbar.data.load, its preprocessing, train_limit/test_limit) and the batches: the same
  per-epoch numpy permutation (stream [seed, 2]), batches indexed from a tensor, no DataLoader;
- the result dict: same keys, accuracies in percent, per-epoch ``seconds`` of training only.

Initialisation: torch.manual_seed(seed), then nn.Linear's own init layer by layer (the seed study's
torch script does the same), U[±1/√in] like xbar's but other draws. ``init="xbar"`` copies xbar's
initial weights instead, so a baseline and an xbar float run differ only by float rounding.

Device fields (device, bits, update, quant, range, tile, ADC/DAC...) and the rule are ignored:
the baseline is float BP by autograd; its config says so ("engine": "torch", "device": null,
"ignored": the fields that were set). torch is imported here only, when called.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from . import data as xdata
from .errors import ConfigError
from .nn import NetworkSpec
from .train.loop import TrainConfig, load_data, record_epoch
from .train.trainer import stream  # the loop's streams: k = 0 init, 2 shuffling

INITS = ("torch", "xbar")
TORCH_PIN = "torch==2.13.0"
# Fields the baseline does not use, and the value its config reports for each.
DEVICE_FIELDS = {"device": None, "bits": None, "update": "float", "rule": "bp", "quant": None,
                 "range": None, "w_max": None, "range_scale": None, "gain": None, "tile": None,
                 "adc_bits": None, "dac_bits": None}


def import_torch():
    """torch, or a ConfigError saying how to install it (never a raw ImportError)."""
    try:
        import torch
    except ImportError as exc:
        raise ConfigError(f"the float baseline needs PyTorch, which cannot be imported ({exc}). Install "
                          f"the CPU build: pip install {TORCH_PIN} --index-url "
                          "https://download.pytorch.org/whl/cpu") from None
    return torch


def _activation(torch, name: str) -> Callable:
    """The torch function for an xbar activation, with xbar's derivative (see xbar.nn)."""
    F = torch.nn.functional
    if name == "sign":
        class SignSTE(torch.autograd.Function):
            # xbar's clipped straight-through estimator: gradient passes where |a| <= 1.
            @staticmethod
            def forward(ctx, a):
                ctx.save_for_backward(a)
                return torch.where(a >= 0, 1.0, -1.0).to(a.dtype)

            @staticmethod
            def backward(ctx, g):
                (a,) = ctx.saved_tensors
                return g * (a.abs() <= 1).to(g.dtype)

        return SignSTE.apply
    table = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "hardtanh": F.hardtanh,
             "identity": lambda a: a}
    if name not in table:
        raise ConfigError(f"activation {name!r} has no torch baseline; known: {', '.join(table)}")
    return table[name]


class TorchMLP:
    """A NetworkSpec in torch: nn.Linear layers (weight (out, in)) and xbar's activations."""

    def __init__(self, spec: NetworkSpec, n_in: int, n_classes: int, seed: int, init: str = "torch"):
        torch = import_torch()
        if init not in INITS:
            raise ConfigError(f"init = {init!r}: expected one of {', '.join(map(repr, INITS))}")
        for i, layer in enumerate(spec.layers):
            if layer.kind != "dense":
                raise ConfigError(f"network {spec.name!r}: layer {i} is {layer.kind!r}; the torch "
                                  "baseline builds dense layers only")
        widths = spec.widths(n_in, n_classes)
        with torch.random.fork_rng(devices=[]):   # the caller's torch RNG state is left as it was
            torch.manual_seed(seed)
            self.layers = torch.nn.ModuleList(torch.nn.Linear(widths[i], widths[i + 1], bias=spec.bias)
                                              for i in range(len(widths) - 1))
        if init == "xbar":
            ref = spec.build(n_in, n_classes, stream(seed, 0))
            with torch.no_grad():
                for lin, dense in zip(self.layers, ref.layers):
                    lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(dense.W.T)))
                    if dense.b is not None:
                        lin.bias.copy_(torch.from_numpy(dense.b))
        self.acts = [_activation(torch, layer.activation) for layer in spec.layers] + [lambda a: a]
        self.output = spec.output
        self.n_classes = n_classes
        self._F = torch.nn.functional

    def parameters(self):
        return self.layers.parameters()

    def __call__(self, x):
        for lin, f in zip(self.layers, self.acts):
            x = f(lin(x))
        return x

    def loss(self, a, y, reduction: str = "mean"):
        """xbar's losses (xbar.nn.loss_and_error): NLL of log-softmax, or MSE on one-hot targets."""
        F = self._F
        if self.output == "log_softmax":
            return F.nll_loss(F.log_softmax(a, dim=1), y, reduction=reduction)
        se = F.mse_loss(a, F.one_hot(y, self.n_classes).to(a.dtype), reduction="none").mean(dim=1)
        return se.mean() if reduction == "mean" else se.sum()


def make_optimizer(torch, cfg: TrainConfig, params):
    """torch.optim equivalent of xbar.train.optim.make_optimizer for the resolved config."""
    params = list(params)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.Adadelta(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def evaluate(model: TorchMLP, X, y, batch_size: int = 1000) -> tuple[float, float]:
    """(mean loss, accuracy in percent) over tensors X, y, in batches like xbar's evaluate."""
    torch = import_torch()
    total, correct = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(X), batch_size):
            a = model(X[i:i + batch_size])
            yy = y[i:i + batch_size]
            total += float(model.loss(a, yy, reduction="sum"))
            correct += int((a.argmax(dim=1) == yy).sum())
    n = max(len(X), 1)
    return total / n, 100.0 * correct / n


def resolve(config: TrainConfig | dict) -> tuple[TrainConfig, dict[str, Any]]:
    """The resolved float-BP config and {field: value} of the set device/rule fields it ignores."""
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    default = TrainConfig()
    ignored = {k: getattr(cfg, k) for k in DEVICE_FIELDS
               if getattr(cfg, k) != getattr(default, k) and getattr(cfg, k) != DEVICE_FIELDS[k]}
    # Float BP settings: resolve() fills the optimizer, lr, schedule... exactly as for `xbar train`
    # with update "float" (no update scheme changes them), without checking device options.
    float_cfg = cfg.with_(update="float", rule="bp", device="ideal", bits=None, quant=None, range=None, gain=None,
                          adc_bits=None, dac_bits=None)
    return float_cfg.resolve(), ignored


def baseline(config: TrainConfig | dict, *, data: tuple | None = None, init: str = "torch",
             on_epoch: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Train the config's network in float torch; returns the JSON-ready dict of xbar.train.train.

    data: optional (X_train, y_train, X_test, y_test) arrays instead of loading config.dataset.
    init: "torch" (torch.manual_seed(seed) and nn.Linear's init) or "xbar" (xbar's initial weights).
    on_epoch: called with each history entry as soon as the epoch is evaluated.
    """
    torch = import_torch()
    cfg, ignored = resolve(config)
    if init not in INITS:
        raise ConfigError(f"init = {init!r}: expected one of {', '.join(map(repr, INITS))}")
    start = time.perf_counter()
    Xtr, ytr, Xte, yte = load_data(cfg, data)
    n_classes = xdata.num_classes(cfg.dataset)
    spec = NetworkSpec.preset(cfg.network)
    model = TorchMLP(spec, Xtr.shape[1], n_classes, cfg.seed, init)
    opt = make_optimizer(torch, cfg, model.parameters())
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.lr_step, gamma=cfg.lr_gamma)
    shuffle = stream(cfg.seed, 2)
    tensors = [torch.from_numpy(a) for a in (Xtr, ytr, Xte, yte)]

    history, status, message, train_seconds = _epochs(torch, cfg, model, opt, sched, shuffle, tensors,
                                                      on_epoch)
    config_out = cfg.as_dict()
    config_out.update(DEVICE_FIELDS)
    config_out.update(engine="torch", torch_version=torch.__version__, torch_threads=torch.get_num_threads(),
                      init=init, ignored=ignored)
    ok = status == "ok" and bool(history)
    return {
        "status": status,
        "message": message,
        "test_accuracy": history[-1]["test_accuracy"] if ok else None,
        "train_accuracy": history[-1]["train_accuracy"] if ok else None,
        "history": history,
        "seconds": time.perf_counter() - start,
        "train_seconds": train_seconds,
        "config": config_out,
        "network": {"name": spec.name, "widths": spec.widths(Xtr.shape[1], n_classes)},
        "hardware": [],
    }


def _epochs(torch, cfg, model, opt, sched, shuffle, tensors, on_epoch):
    """The epoch loop of xbar.train.loop._epochs, in torch: (history, status, message, seconds)."""
    Xtr, ytr, Xte, yte = tensors
    history: list[dict[str, Any]] = []
    status, message = "ok", ""
    n, bs = len(Xtr), cfg.batch_size
    train_seconds = 0.0
    for epoch in range(1, cfg.epochs + 1):
        perm = torch.from_numpy(shuffle.permutation(n))
        t0 = time.perf_counter()
        step_loss, steps, correct = 0.0, 0, 0
        for s in range(0, n, bs):
            idx = perm[s:s + bs]
            out = model(Xtr[idx])
            loss = model.loss(out, ytr[idx])
            value = loss.item()
            correct += int((out.argmax(dim=1) == ytr[idx]).sum().item())
            if not math.isfinite(value):
                status, message = "diverged", f"loss became {value} at epoch {epoch}, step {steps + 1}"
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step_loss += value
            steps += 1
        seconds = time.perf_counter() - t0
        train_seconds += seconds
        if status != "ok":
            break
        sched.step()
        message = record_epoch(history, on_epoch, cfg, epoch, lambda X, y: evaluate(model, X, y),
                               (Xtr, ytr, Xte, yte), step_loss, steps, seconds, opt.param_groups[0]["lr"],
                               correct)
        if message:
            status = "diverged"
            break
    return history, status, message, train_seconds
