"""What `xbar import` and `xbar export` do (their command line is :mod:`xbar.cli.interop`): reading
a torch model file, importing it into a run file, and ``train_init``.

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
read it like any run; ``xbar train --init`` starts from it (:mod:`xbar.train.init`).
"""

from __future__ import annotations

import contextlib
import importlib
import math
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..train.init import init_defaults, init_trainer
from .torch import TorchImportError
from .trace import torch_module

IMPORT_FIELDS = ("device", "device_set", "bits", "update", "quant", "range", "gain", "tile", "adc_bits",
                 "dac_bits", "seed")
# The dataset an example shape most likely belongs to, when --dataset is not given.
DATASET_FOR_SHAPE = {(1, 28, 28): "fmnist", (784,): "fmnist", (3, 32, 32): "cifar10", (1, 8, 8): "digits",
                     (64,): "digits"}


# ---- reading the model file ---------------------------------------------------------------------------

def load_model(path: str | Path, module: str | None = None, trust: bool = False):
    """The torch.nn.Module in `path`: a state_dict loaded into `module` ("package.module:Name"), or,
    with trust=True, a whole pickled module. Every failure is one TorchImportError line."""
    torch = torch_module()
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
    torch = torch_module()
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
    torch = torch_module()
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
    torch = torch_module()
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


# ---- train --init: start from a saved run ---------------------------------------------------------------

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
