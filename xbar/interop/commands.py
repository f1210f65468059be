"""`xbar import` and `xbar export`, and starting training from a saved run (``train --init``).

    xbar import model.pt --module mypkg.models:LeNet --example-shape 1,28,28 --out net.h5
    xbar import whole_model.pt --trust --example-shape 1,28,28 --out net.h5 --device rram-4bit --adc-bits 8
    xbar eval net.h5 --at 86400 --compensate
    xbar export net.h5 effective.pt            # weights as programmed; --shadow: the float weights

A file made by ``torch.save(model.state_dict())`` holds only tensors and is read with torch's
``weights_only`` loader; it needs the model's class (``--module package.module:ClassName``, a
class or factory that takes no arguments, imported from the current folder or the Python path).
A file made by ``torch.save(model)`` is a pickle, i.e. code: it is read only with ``--trust``.

The run file keeps the network spec, the crossbars, and a config (network: the spec TOML written
beside it, dataset, device, ...), so ``xbar eval``, ``xbar cost --run`` and ``xbar prune --init``
read it like any run; :func:`init_trainer` is what ``xbar train --init`` calls.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from .torch import CROSSBAR_OPTIONS, TorchImportError, _torch

IMPORT_FIELDS = ("device", "device_set", "bits", "update", "quant", "range", "gain", "tile", "adc_bits",
                 "dac_bits", "seed")
# The dataset an example shape most likely belongs to, when --dataset is not given.
DATASET_FOR_SHAPE = {(1, 28, 28): "fmnist", (784,): "fmnist", (3, 32, 32): "cifar10", (1, 8, 8): "digits",
                     (64,): "digits"}


# ---- reading the model file ---------------------------------------------------------------------------

def load_model(path: str | Path, module: str | None = None, trust: bool = False):
    """The torch.nn.Module in `path`: a state_dict loaded into `module` ("package.module:Name"), or,
    with trust=True, a whole pickled module. Every failure is one TorchImportError line."""
    torch = _torch()
    path = Path(path)
    if not path.is_file():
        raise TorchImportError(f"{path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 (torch raises UnpicklingError, RuntimeError, EOFError, ...)
        if not _looks_like_torch(path):
            raise TorchImportError(f"{path}: not a torch checkpoint (torch.save writes a zip archive or a "
                                   "pickle; this file is neither)") from None
        if not trust:
            raise TorchImportError(f"{path} holds pickled Python objects (a whole module is code); load it only "
                                   "if you trust the file: add --trust, or save model.state_dict() and pass "
                                   "--module package.module:ClassName") from None
        try:
            with _cwd_on_path():   # the pickle names the model's class by module; look in "." too
                obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc2:  # noqa: BLE001 (unpickling runs the file's code)
            raise TorchImportError(f"{path}: cannot unpickle it ({_first_line(exc2)}); the model's class must be "
                                   "importable: save model.state_dict() and pass --module instead") from None
    if isinstance(obj, torch.nn.Module):
        if module is not None:
            raise TorchImportError(f"{path} holds a whole module; --module is for state_dict files")
        return obj
    state = _state_dict(obj, path)
    if module is None:
        raise TorchImportError(f"{path} holds a state_dict: name the model's class with --module "
                               "package.module:ClassName")
    model = instantiate(module)
    _check_state_dict(model, state, module)
    model.load_state_dict(state)
    return model


@contextlib.contextmanager
def _cwd_on_path():
    """The current folder first on sys.path while a user's model code is imported."""
    cwd = str(Path.cwd())
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def _looks_like_torch(path: Path) -> bool:
    """torch.save writes a zip archive (or, before torch 1.6, a pickle starting with protocol 2+)."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as f:
        head = f.read(2)
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _state_dict(obj, path: Path) -> dict:
    torch = _torch()
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    raise TorchImportError(f"{path} holds a {type(obj).__name__}, not a state_dict (name -> tensor) or a module")


def instantiate(spec: str):
    """A module from "package.module:Name" (a class or factory taking no arguments); the current
    folder is searched first."""
    torch = _torch()
    mod_name, sep, attr = spec.partition(":")
    if not sep or not mod_name or not attr:
        raise TorchImportError(f"--module {spec!r}: expected package.module:ClassName")
    try:
        with _cwd_on_path():
            mod = importlib.import_module(mod_name)
    except ImportError as exc:
        raise TorchImportError(f"--module {spec!r}: cannot import {mod_name} ({_first_line(exc)})") from None
    factory = getattr(mod, attr, None)
    if factory is None or not callable(factory):
        raise TorchImportError(f"--module {spec!r}: {mod_name} has no class or function {attr}")
    try:
        model = factory()
    except TypeError as exc:
        raise TorchImportError(f"--module {spec!r}: {attr}() needs arguments ({_first_line(exc)}); give a "
                               "function that builds the model without any") from None
    if not isinstance(model, torch.nn.Module):
        raise TorchImportError(f"--module {spec!r}: {attr}() returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def _check_state_dict(model, state: dict, spec: str) -> None:
    """One line naming what differs between `state` and `model`'s own state_dict."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
             if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", wrong)):
            if items:
                parts.append(f"{label}: {', '.join(items[:4])}" + (f" (+{len(items) - 4} more)" if len(items) > 4 else ""))
        raise TorchImportError(f"the state_dict does not match {spec}: " + "; ".join(parts))


def parse_shape(text: str) -> tuple[int, ...]:
    """'1,28,28' -> (1, 28, 28); also '784'."""
    try:
        shape = tuple(int(v) for v in str(text).replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if len(shape) not in (1, 3) or any(v < 1 for v in shape):
        raise TorchImportError(f"--example-shape {text!r}: expected C,H,W (e.g. 1,28,28) or N for flat inputs")
    return shape


# ---- xbar import -----------------------------------------------------------------------------------------

def import_model(model_path, example_shape, out, *, module=None, trust=False, dataset=None, batchnorm="fold",
                 spec_out=None, compare=None, data_dir=None, update="qat", device="ideal", seed=1,
                 **crossbar_options) -> dict[str, Any]:
    """Load, map, program and save a torch model as an xbar run file; returns the run's result dict.

    compare: also evaluate torch and xbar on the first `compare` test images of the dataset (0: all).
    """
    from .. import data as xdata
    from ..checkpoint import save
    from ..train import TrainConfig
    from .torch import from_torch
    shape = parse_shape(example_shape) if isinstance(example_shape, str) else tuple(example_shape)
    if dataset is None:
        dataset = DATASET_FOR_SHAPE.get(shape)
        if dataset is None:
            raise TorchImportError(f"--example-shape {','.join(map(str, shape))} matches no xbar dataset; pass "
                                   f"--dataset (one of {', '.join(xdata.DATASETS)}): eval and train read it")
    n_data = math.prod(xdata.image_shape(dataset))
    if math.prod(shape) != n_data:
        raise TorchImportError(f"--example-shape {','.join(map(str, shape))} has {math.prod(shape)} values per sample, "
                               f"but {dataset} samples have {n_data} ({'x'.join(map(str, xdata.image_shape(dataset)))})")
    out = Path(out)
    if not out.parent.is_dir():
        raise TorchImportError(f"--out {out}: folder {out.parent} does not exist")
    spec_out = Path(spec_out) if spec_out is not None else out.with_suffix(".toml")
    model = load_model(model_path, module, trust)
    calibration = None
    if crossbar_options.get("adc_bits") is not None:
        Xc, _ = xdata.load(dataset, "train", data_dir)
        calibration = Xc[:256].reshape((-1,) + shape)
    net = from_torch(model, shape, device, update=update, batchnorm=batchnorm, seed=seed, spec_path=spec_out,
                     calibration=calibration, **crossbar_options)
    n_classes = xdata.num_classes(dataset)
    if net.layers[-1].n_out != n_classes:
        spec_out.unlink(missing_ok=True)
        raise TorchImportError(f"the model has {net.layers[-1].n_out} outputs, {dataset} has {n_classes} classes")
    # eval_train false: `xbar eval` of an imported run measures the test split only
    cfg = TrainConfig.from_dict({"network": str(spec_out.resolve()), "dataset": dataset, "update": update,
                                 "device": device, "seed": seed, "data_dir": data_dir, "eval_train": False,
                                 **{k: v for k, v in crossbar_options.items() if v is not None}},
                                file="xbar import")
    result: dict[str, Any] = {"status": "ok", "message": "", "test_accuracy": None, "train_accuracy": None,
                              "import": {"model": str(model_path), "module": module or type(model).__name__,
                                         "example_shape": list(shape), "batchnorm": batchnorm,
                                         "spec": str(spec_out), "torch_layers": net.torch_layers}}
    if compare is not None:
        result.update(compare_with_torch(model, net, dataset, compare, data_dir, shape))
        result["test_accuracy"] = result["compare"]["xbar_accuracy"]
    save(out, net, cfg, result)
    return result


def compare_with_torch(model, net, dataset, limit, data_dir, shape) -> dict[str, Any]:
    """Torch's and xbar's test accuracy and the largest logit difference on `limit` test images."""
    from .. import data as xdata
    torch = _torch()
    X, y = xdata.load(dataset, "test", data_dir)
    if limit:
        X, y = X[:limit], y[:limit]
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            ref = np.concatenate([model(torch.from_numpy(X[i:i + 500]).view((-1,) + shape)).numpy()
                                  for i in range(0, len(X), 500)])
    finally:
        model.train(was)
    got = net.predict(X)
    if _is_log_prob(ref):
        from ..nn import log_softmax
        got = log_softmax(got)
    diff = float(np.abs(got - ref).max())
    return {"compare": {"images": len(X), "torch_accuracy": 100.0 * float(np.mean(ref.argmax(1) == y)),
                        "xbar_accuracy": 100.0 * float(np.mean(got.argmax(1) == y)),
                        "max_abs_logit_diff": diff,
                        "max_rel_logit_diff": diff / max(float(np.abs(ref).max()), 1e-12),
                        "same_predictions": int(np.sum(ref.argmax(1) == got.argmax(1)))}}


def _is_log_prob(a: np.ndarray) -> bool:
    return bool(np.all(a <= 1e-5)) and bool(np.allclose(np.exp(a.astype(np.float64)).sum(1), 1, atol=1e-3))


def cmd_import(args) -> int:
    opts = {k: getattr(args, k) for k in CROSSBAR_OPTIONS if getattr(args, k, None) is not None}
    result = import_model(args.model, args.example_shape, args.out, module=args.module, trust=args.trust,
                          dataset=args.dataset, batchnorm=args.batchnorm, spec_out=args.spec_out,
                          compare=args.compare, data_dir=args.data_dir, update=args.update or "qat",
                          device=args.device or "ideal", seed=1 if args.seed is None else args.seed, **opts)
    if args.json:
        print(json.dumps(result))
        return 0
    info = result["import"]
    print(f"{args.model} -> {args.out} ({len(info['torch_layers'])} crossbar layers; network spec {info['spec']})")
    c = result.get("compare")
    if c:
        print(f"{c['images']} test images: torch {c['torch_accuracy']:.2f}%, xbar {c['xbar_accuracy']:.2f}%, "
              f"same prediction {c['same_predictions']}/{c['images']}, max |logit diff| {c['max_abs_logit_diff']:.3g} "
              f"({c['max_rel_logit_diff']:.2e} of max |logit|)")
    return 0


# ---- xbar export -----------------------------------------------------------------------------------------

def cmd_export(args) -> int:
    from .torch import export
    module = instantiate(args.module) if args.module else None
    shape = parse_shape(args.example_shape) if args.example_shape else None
    sd = export(args.run, args.model, shadow=args.shadow, module=module, example_input=shape,
                at_seconds=args.at, compensate=args.compensate)
    what = "shadow (float) weights" if args.shadow else "weights as programmed" + (
        f" at {args.at:g} s" if args.at is not None else "")
    print(f"{args.run} -> {args.model}: {len(sd)} tensors, {what}")
    return 0


def add_commands(subparsers) -> None:
    """Register `xbar import` and `xbar export` on the CLI's subparsers."""
    from ..cli import _add_config_options
    from ..train.loop import FIELDS as TRAIN_FIELDS
    i = subparsers.add_parser("import", help="bring a trained torch model onto crossbars (an .h5 run file)",
                              description="Map a torch model onto xbar crossbar layers and program them: "
                              "--device ideal and --update qat unless given; the run file works with xbar "
                              "eval, cost --run, prune --init and export.")
    i.add_argument("model", help="a torch file: a state_dict (with --module), or a whole pickled module (--trust)")
    i.add_argument("--example-shape", required=True, metavar="C,H,W", help="one input sample's shape, e.g. 1,28,28 "
                   "(or N for flat vectors)")
    i.add_argument("--out", required=True, help="the run file to write (.h5)")
    i.add_argument("--module", default=None, metavar="PACKAGE.MODULE:NAME", help="the model's class (or a "
                   "factory without arguments) for a state_dict file; imported from the current folder first")
    i.add_argument("--trust", action="store_true", help="allow a whole pickled module (it runs code when loaded)")
    i.add_argument("--dataset", default=None, help="the dataset the model was trained on (default: from the "
                   "example shape, 1,28,28 -> fmnist); recorded for eval and train")
    i.add_argument("--data-dir", default=None)
    i.add_argument("--batchnorm", choices=("fold", "keep"), default="fold", help="fold batch norms into the "
                   "weights (default) or keep them as digital batch norm (trainable)")
    i.add_argument("--spec-out", default=None, help="network spec TOML to write (default: OUT with .toml)")
    i.add_argument("--compare", type=int, nargs="?", const=0, default=None, metavar="N",
                   help="evaluate torch and xbar on the first N test images (all if N is omitted)")
    i.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    _add_config_options(i, [f for f in TRAIN_FIELDS if f.name in IMPORT_FIELDS])
    i.set_defaults(func=cmd_import)

    e = subparsers.add_parser("export", help="write a run's weights as a torch state_dict (.pt)")
    e.add_argument("run", help="a run file (.h5)")
    e.add_argument("model", help="the .pt file to write")
    e.add_argument("--shadow", action="store_true", help="the float (shadow) weights, not the programmed ones")
    e.add_argument("--at", type=float, default=None, help="the programmed weights this many seconds after "
                   "programming (drift)")
    e.add_argument("--compensate", action="store_true", help="with --at: global drift compensation")
    e.add_argument("--module", default=None, metavar="PACKAGE.MODULE:NAME",
                   help="name the tensors after this model's (default: the imported model's, else layers.<i>)")
    e.add_argument("--example-shape", default=None, metavar="C,H,W", help="with --module: one input's shape")
    e.set_defaults(func=cmd_export)


# ---- train --init: start from a saved run ---------------------------------------------------------------

def init_defaults(path: str | Path) -> dict[str, Any]:
    """The network (spec file) and dataset a run was made with, for `xbar train --init` when the
    command line does not give them."""
    from ..checkpoint import load
    cfg = load(path).config
    return {k: cfg[k] for k in ("network", "dataset") if cfg.get(k)}


def init_trainer(trainer, path: str | Path) -> None:
    """Start `trainer` (a Trainer built for the same network) from the run in `path`: weights,
    biases, pruning masks and batch norms are copied in place (the optimizer keeps its arrays),
    then the update scheme programs the crossbars anew (seeded as the trainer's own)."""
    from ..checkpoint import load
    from ..train.loop import int_seed
    run = load(path)
    src = run.network().layers
    net = trainer.net
    got = [(a.kind, a.n_in, a.n_out, a.branch, a.bn is not None) for a in src]
    want = [(b.kind, b.n_in, b.n_out, b.branch, b.bn is not None) for b in net.layers]
    if got != want:
        raise ConfigError(f"init = {str(path)!r}: its layers (kind, rows, columns, branch, batch norm) {got} do not "
                          f"match network {trainer.cfg.network!r}: {want}; train the run's own network (default)")
    for a, b in zip(src, net.layers):
        b.set_weights(a.W, a.b)
        if a.b is None and b.b is not None:
            b.b[...] = 0
        b.set_mask(a.mask)
        if a.bn is not None:
            b.bn.gamma[...], b.bn.beta[...] = a.bn.gamma, a.bn.beta
            b.bn.running_mean[...], b.bn.running_var[...] = a.bn.running_mean, a.bn.running_var
            b.bn.eps, b.bn.momentum = a.bn.eps, a.bn.momentum
    trainer.update.attach(net, [int_seed(trainer.cfg.seed, 4 + i) for i in range(len(net.layers))],
                          trainer.feedback)


def train_init(config, init: str | Path, **train_kwargs) -> dict[str, Any]:
    """``xbar.train.train`` starting from the run in `init` (hardware-aware fine-tuning of an
    imported network): the network and dataset default to the run's. What ``train --init`` does
    until the training loop calls :func:`init_trainer` itself."""
    from ..train import TrainConfig, loop
    data = dict(config.as_dict() if isinstance(config, TrainConfig) else config)
    for k, v in init_defaults(init).items():
        data.setdefault(k, v)
    cfg = TrainConfig.from_dict(data)
    original = loop.Trainer

    class _InitTrainer(original):   # train() builds its Trainer by this name
        def __init__(self, cfg, n_in, n_classes):
            super().__init__(cfg, n_in, n_classes)
            init_trainer(self, init)
    loop.Trainer = _InitTrainer
    try:
        return loop.train(cfg, **train_kwargs)
    finally:
        loop.Trainer = original
