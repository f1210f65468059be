"""torch models -> xbar networks (traced with torch.fx), and xbar weights -> torch state_dicts.

:func:`from_torch` traces a module with ``torch.fx``, runs it once on the example input to learn
every shape, and writes the equivalent xbar network spec (``networks/*.toml`` format, kept on the
network as ``net.spec_data`` and written by :func:`to_toml`), builds it, copies the weights and
programs them onto crossbars. The mapping:

- ``Linear`` -> a dense layer, ``Conv2d`` (square kernel, stride and padding; groups 1,
  dilation 1, zero padding) -> a conv layer. torch's weight (C_out, C_in, k, k) becomes W
  (k·k·C_in, C_out) in (kernel row, kernel column, channel) order; a Linear after a flatten of
  feature maps gets its rows permuted from torch's C×H×W order to xbar's channels-last H×W×C.
- ``BatchNorm1d/2d`` right after a Linear/Conv2d: folded into its weights and bias
  (W' = W·s, b' = b·s + t with s = γ/√(var + ε), t = β − s·mean; exact at inference, the same
  transform xbar's ``fold_batchnorm`` applies), or kept as xbar's digital BatchNorm with
  ``batchnorm="keep"`` (it then trains in fine-tuning). A batch norm after a pooling that
  follows the layer is kept (xbar's pre-activation pooling order).
- ``ReLU``, ``Tanh``, ``Sigmoid``, ``Hardtanh(-1, 1)``: the layer's activation (or the activation
  after a residual addition). ``MaxPool2d``, ``AvgPool2d`` (square, no padding),
  ``AdaptiveAvgPool2d`` to a size that divides the input: pooling in the layer's periphery.
  ``Flatten`` (and ``view``/``reshape``/``flatten`` to (batch, -1)), ``Dropout``, ``Identity``.
- Residual additions (``a + b``, ``torch.add``): the longer path is the main path; the other must
  be a value on it (identity shortcut: an xbar ``add`` with ``from``) or one Linear/Conv2d with
  optional BatchNorm and activation reading a value the main path's next layer reads (a
  projection shortcut: an xbar ``branch`` layer).
- The last Linear is xbar's output layer; a final ``log_softmax`` / ``LogSoftmax`` is xbar's output
  (logits are compared before it).

Anything else is refused with the module's path and type and the supported list
(:class:`TorchImportError`, one line). Inputs are rows in C×H×W order, as xbar's datasets give
them; the model must have been trained on the same preprocessing (xbar.data.load's).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from .mapper import Mapper
from .trace import SUPPORTED, TorchImportError, torch_module, trace

__all__ = ["SUPPORTED", "TorchImportError", "export", "from_torch", "map_module", "to_toml"]

# Relative tolerance of the float check made after every import (xbar's float network against
# torch on the example input and on 8 random inputs of its shape): float32 sums in another order.
CHECK_RTOL = 1e-3


# ---- from_torch ------------------------------------------------------------------------------------

CROSSBAR_OPTIONS = ("bits", "adc_bits", "dac_bits", "tile", "device_set", "quant", "range", "gain", "w_max",
                    "range_scale")
BATCHNORM_MODES = ("fold", "keep")


def _example(torch, example_input):
    """The example input as a float32 tensor with a batch axis; a tuple of ints is a shape without it."""
    if isinstance(example_input, (tuple, list)) and all(isinstance(v, int) for v in example_input):
        return torch.zeros((1,) + tuple(example_input))
    x = torch.as_tensor(np.asarray(example_input) if not isinstance(example_input, torch.Tensor)
                        else example_input).float()
    if x.dim() < 2:
        raise TorchImportError(f"example_input of shape {tuple(x.shape)}: give a batch, (batch, C, H, W) or "
                               "(batch, n), or a shape tuple without the batch axis, e.g. (1, 28, 28)")
    return x


def map_module(module, example_input, batchnorm: str = "fold") -> dict[str, Any]:
    """Trace `module` and map it: {"spec": the network spec as TOML data, "layers": per crossbar
    layer W (in, out), b, bn and its torch names, "n_in", "n_classes", "input_shape"}; no xbar
    network is built (export uses it to name a state_dict's entries)."""
    torch = torch_module()
    if not isinstance(module, torch.nn.Module):
        raise TorchImportError(f"expected a torch.nn.Module, got {type(module).__name__}")
    if batchnorm not in BATCHNORM_MODES:
        raise TorchImportError(f"batchnorm = {batchnorm!r}: expected 'fold' or 'keep'")
    x = _example(torch, example_input)
    was_training = module.training
    module.eval()
    try:
        ops, out_name = trace(torch, module, x)
        mapper = Mapper(ops, out_name, batchnorm, type(module).__name__)
        spec = mapper.run()
    finally:
        module.train(was_training)
    shape = tuple(int(s) for s in x.shape[1:])
    return {"spec": spec, "layers": mapper.layers, "n_in": int(math.prod(shape)),
            "n_classes": int(mapper.layers[-1]["W"].shape[1]), "input_shape": shape,
            "log_softmax": mapper.log_softmax, "paths": mapper.paths}


def from_torch(module, example_input, device: str = "ideal", *, update: str = "qat", batchnorm: str = "fold",
               seed: int = 1, name: str | None = None, spec_path: str | Path | None = None,
               calibration=None, check: bool = True, **crossbar_options):
    """An xbar Network with `module`'s weights programmed onto crossbars of `device`.

    module: a torch.nn.Module (traced with torch.fx; see this module's docstring for what maps).
    example_input: a batch (tensor or array, (batch, C, H, W) or (batch, n)), or a shape without
        the batch axis, e.g. (1, 28, 28). ``net.predict(X)`` then takes rows of C·H·W values.
    device: a device preset name or TOML path (as ``xbar train --device``).
    update: how the crossbars are programmed and later fine-tuned, as ``xbar train --update``:
        "qat" (default: float weights programmed with a per-column gain), "nearest", ...;
        "float" keeps the weights digital (no crossbars).
    batchnorm: "fold" (into the weights and bias) or "keep" (xbar's digital BatchNorm).
    seed: the run's seed: crossbar seeds are those a Trainer with this seed uses.
    name: the network's name (default: the module's class name, lower case).
    spec_path: also write the equivalent network spec TOML there.
    calibration: input rows (n, C·H·W) that set the ADC full scales (default: the example input).
    check: compare xbar's float network with torch on the example input and 8 random inputs of
        its shape before programming; a disagreement beyond CHECK_RTOL is an error.
    crossbar_options: bits, adc_bits, dac_bits, tile ("64x64"), device_set, quant, range, gain,
        w_max, range_scale (the ``xbar train`` fields of the same names).

    The network carries ``spec_data`` (so ``xbar.checkpoint.save(path, net, config)`` works) and
    ``torch_layers`` (each crossbar layer's torch module names, used by :func:`export`).
    """
    from ..errors import ConfigError
    from ..nn import NetworkSpec
    torch = torch_module()
    unknown = set(crossbar_options) - set(CROSSBAR_OPTIONS)
    if unknown:
        raise TorchImportError(f"from_torch: unknown option(s) {', '.join(sorted(unknown))}; crossbar options: "
                               + ", ".join(CROSSBAR_OPTIONS))
    mapped = map_module(module, example_input, batchnorm)
    spec_data = mapped["spec"]
    if name is not None:
        spec_data["name"] = name
    try:
        spec = NetworkSpec.from_dict(_plain(spec_data))
    except ConfigError as exc:
        raise TorchImportError(f"{type(module).__name__} maps to a network xbar cannot build: {exc}") from None
    from ..train.trainer import stream
    net = spec.build(mapped["n_in"], mapped["n_classes"], stream(seed, 0))
    for layer, src in zip(net.layers, mapped["layers"]):
        layer.set_weights(src["W"].astype(np.float32), None if src["b"] is None else src["b"].astype(np.float32))
        if src["bn"] is not None:
            bn = layer.bn
            bn.eps, bn.momentum = src["bn"]["eps"], src["bn"]["momentum"]
            for k in ("gamma", "beta", "running_mean", "running_var"):
                getattr(bn, k)[...] = src["bn"][k].astype(np.float32)
    net.spec_data = {"data": spec_data, "file": None if spec_path is None else str(Path(spec_path).resolve())}
    net.torch_layers = [src["torch"] for src in mapped["layers"]]
    if check:
        _check(torch, module, net, example_input, seed, mapped["log_softmax"])
    if update != "float":
        _program(net, device, update, seed, crossbar_options)
        if net.layers[0].crossbar is not None and net.layers[0].crossbar.adc_bits is not None:
            x = _example(torch, example_input) if calibration is None else calibration
            rows = np.ascontiguousarray(np.asarray(x, dtype=np.float32).reshape(len(x), -1))
            net.calibrate(rows)
    elif crossbar_options:
        raise TorchImportError("update = 'float' keeps the weights digital: crossbar options "
                               f"({', '.join(sorted(crossbar_options))}) do not apply")
    if spec_path is not None:
        Path(spec_path).write_text(to_toml(spec_data, mapped["paths"]))
    return net


def _plain(data):
    """A deep copy of spec data (NetworkSpec.from_dict must not hold the caller's lists)."""
    import copy
    return copy.deepcopy(data)


def _program(net, device, update: str, seed: int, options: dict[str, Any]) -> None:
    """Crossbars for every layer, built and programmed as a Trainer with this config would."""
    from ..train import TrainConfig
    from ..train.trainer import int_seed, stream
    from ..train.updates import make_update
    if not isinstance(device, str):
        device = getattr(device, "file", None) or getattr(device, "name", None)
    cfg = TrainConfig.from_dict({"device": device, "update": update, "seed": seed, **options},
                                file="from_torch").resolve()
    upd = make_update(cfg.update, cfg.device_setup(), stream(seed, 3))
    upd.attach(net, [int_seed(seed, 4 + i) for i in range(len(net.layers))], [])


def _check(torch, module, net, example_input, seed: int, log_softmax: bool) -> None:
    """xbar's float network against torch on the example input and 8 random inputs of its shape."""
    x = _example(torch, example_input)
    g = torch.Generator().manual_seed(seed)
    xs = torch.cat([x, torch.rand((8,) + tuple(x.shape[1:]), generator=g)])
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            ref = module(xs).double().numpy()
    finally:
        module.train(was_training)
    got = net.predict(np.ascontiguousarray(xs.numpy().reshape(len(xs), -1), dtype=np.float32)).astype(np.float64)
    if log_softmax:
        from ..nn import log_softmax as lsm
        got = lsm(got)
    scale = max(float(np.abs(ref).max()), 1e-6)
    err = float(np.abs(got - ref).max()) / scale
    if not err <= CHECK_RTOL:
        raise TorchImportError(f"{type(module).__name__}: the imported network disagrees with torch (max |diff| "
                               f"{err:.2e} of max |logit|); a layer is mapped wrongly: please report it")


# ---- the spec as TOML --------------------------------------------------------------------------------

def _toml_value(v) -> str:
    import json
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        text = repr(float(v))
        return text if any(c in text for c in ".en") else text + ".0"
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TorchImportError(f"cannot write {type(v).__name__} to TOML")


def to_toml(spec_data: dict[str, Any], paths: list[str] | None = None) -> str:
    """A network spec (TOML data, e.g. ``net.spec_data["data"]``) as the text of a networks/*.toml
    file; paths: per [[layers]] entry, the torch module it comes from (written as comments)."""
    lines = ["# Written by xbar.interop.from_torch: the network of a torch model, layer by layer.", ""]
    tables = {k: v for k, v in spec_data.items() if isinstance(v, (dict, list)) and k not in ("input", "hidden")}
    for k, v in spec_data.items():
        if k not in tables:
            lines.append(f"{k} = {_toml_value(v)}")
    for i, t in enumerate(spec_data.get("layers", [])):
        note = f"# {i}" + (f": {paths[i]}" if paths is not None and i < len(paths) else "")
        lines += ["", f"[[layers]]            {note}"] + [f"{k} = {_toml_value(v)}" for k, v in t.items()]
    if "output_layer" in spec_data:
        lines += ["", "[output_layer]"] + [f"{k} = {_toml_value(v)}" for k, v in spec_data["output_layer"].items()]
    return "\n".join(lines) + "\n"


# ---- export: xbar weights -> a torch state_dict ----------------------------------------------------------

def _source_network(source, at_seconds=None, compensate=False):
    """(network, torch names per layer or None) from a run file path, a Run or a Network."""
    from ..checkpoint import Run, load
    from ..nn import Network
    if isinstance(source, (str, Path)):
        source = load(source)
    if isinstance(source, Run):
        net = source.network(at_seconds, compensate)
        return net, (source.result.get("import") or {}).get("torch_layers")
    if isinstance(source, Network):
        if at_seconds is not None:
            raise TorchImportError("export: at_seconds needs a run file (or a Run), not a Network")
        return source, getattr(source, "torch_layers", None)
    raise TorchImportError(f"export: expected a run file, a Run or a Network, got {type(source).__name__}")


def _layer_weights(layer, shadow: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """(W (in, out), b) float64: as programmed (the crossbar's effective weights, drift included),
    or the float weights xbar multiplies by without a crossbar (shadow: masked, binarized)."""
    if layer.crossbar is None or shadow:
        W = layer.stored_weights().astype(np.float64)
        return W, None if layer.b is None else layer.b.astype(np.float64)
    W = np.asarray(layer.crossbar.weights(), np.float64)
    b = layer.crossbar.bias_weights()
    if b is None and layer.b is not None:
        b = layer.b
    return W, None if b is None else np.asarray(b, np.float64)


def export(source, path: str | Path | None = None, *, shadow: bool = False, module=None, example_input=None,
           at_seconds: float | None = None, compensate: bool = False) -> dict[str, Any]:
    """A network's weights as a torch state_dict, saved to `path` (torch.save) when given.

    source: a run file (.h5), a Run, or a Network. shadow: the float (shadow) weights instead of
    the weights as programmed. at_seconds, compensate: read the programmed weights after drift
    (run files only). Names: those of the torch model the network was imported from (kept in the
    run file by ``xbar import``), or of `module` (a torch.nn.Module of the same architecture,
    traced with `example_input`, default the network's input shape), else ``layers.<i>.weight``
    / ``.bias`` / ``.bn.*``. Batch norms xbar folded are written as identities (γ = 1, var = 1 − ε)
    that carry the bias where the layer has none, so the state_dict loads into the original model.
    """
    torch = torch_module()
    net, names = _source_network(source, at_seconds, compensate)
    if module is not None:
        shape = example_input if example_input is not None else (net.input_shape or (net.layers[0].n_in,))
        names = [entry["torch"] for entry in map_module(module, tuple(shape) if isinstance(shape, list) else shape,
                                                        "fold")["layers"]]
    if names is not None and len(names) != len(net.layers):
        raise TorchImportError(f"export: the network has {len(net.layers)} crossbar layers, the torch model "
                               f"{len(names)}; they are not the same architecture")
    sd: dict[str, Any] = {}
    for i, layer in enumerate(net.layers):
        W, b = _layer_weights(layer, shadow)
        info = names[i] if names is not None else None
        prefix = info["module"] if info else f"layers.{i}"
        if layer.kind == "conv":
            k, C = layer.kernel, layer.in_shape[0]
            w = W.reshape(k, k, C, -1).transpose(3, 2, 0, 1)
        else:
            w = W.T
            maps = info.get("flatten_maps") if info else None
            if maps is not None:
                perm = np.arange(math.prod(maps)).reshape(maps).transpose(1, 2, 0).ravel()
                w = np.empty_like(w)
                w[:, perm] = W.T
        if info is not None and w.shape[0] != W.shape[1]:
            raise TorchImportError(f"export: layer {i} does not match '{prefix}'")
        sd[f"{prefix}.weight"] = w
        bn_info = info.get("bn") if info else None
        bias_home = f"{prefix}.bias" if (info is None or info["bias"]) else None
        if layer.bn is not None:
            bn_prefix = bn_info["module"] if bn_info else f"{prefix}.bn"
            sd.update({f"{bn_prefix}.weight": layer.bn.gamma, f"{bn_prefix}.bias": layer.bn.beta,
                       f"{bn_prefix}.running_mean": layer.bn.running_mean,
                       f"{bn_prefix}.running_var": layer.bn.running_var})
            sd[f"{bn_prefix}.num_batches_tracked"] = np.int64(0)
            if bias_home is not None:
                sd[bias_home] = np.zeros(W.shape[1]) if b is None else b
        elif bn_info is not None:   # folded into W and b: the torch BN becomes an identity holding the bias
            n, eps, bp = W.shape[1], bn_info["eps"], bn_info["module"]
            bias = np.zeros(n) if b is None else b
            sd[f"{bp}.running_var"] = np.full(n, 1.0 - eps)
            sd[f"{bp}.num_batches_tracked"] = np.int64(0)
            if bias_home is not None:
                sd[bias_home], bn_bias = bias, np.zeros(n)
            else:
                bn_bias = bias
            if bn_info["affine"]:
                sd[f"{bp}.weight"], sd[f"{bp}.bias"] = np.ones(n), bn_bias
                sd[f"{bp}.running_mean"] = np.zeros(n)
            else:
                sd[f"{bp}.running_mean"] = -bn_bias   # (y - mean)/1 = y + b
        elif b is not None:
            sd[f"{prefix}.bias"] = b
    out = {k: (torch.tensor(v) if isinstance(v, np.int64) else torch.from_numpy(np.ascontiguousarray(v, np.float32)))
           for k, v in sd.items()}
    if path is not None:
        torch.save(out, str(path))
    return out
