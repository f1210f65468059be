"""torch.fx tracing: a torch module as a list of simple tensor ops, each with its module path and
output shape (learnt by running the traced graph once on the example input).

Ops: input, linear, conv, bn, act, pool, flatten, dropout, add, logsoftmax. Identity-like ops
(Identity, Dropout(p=0), contiguous, ...) are dropped; anything else is refused here with its
path, its type and the supported list. :mod:`xbar.interop.mapper` turns the ops into a spec.
"""

from __future__ import annotations

import operator

from ..errors import XbarError

SUPPORTED = ("Linear", "Conv2d", "BatchNorm1d", "BatchNorm2d", "ReLU", "Tanh", "Sigmoid", "Hardtanh",
             "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "Flatten", "Dropout", "Identity",
             "nested Sequential/custom modules", "residual additions (a + b)")
_SUPPORTED_TEXT = "supported: " + ", ".join(SUPPORTED)


class TorchImportError(XbarError, ValueError):
    """A torch model, file or state_dict that cannot be brought onto crossbars (one line)."""


def torch_module():
    """The torch module, or a clear error: torch is an optional extra of xbar."""
    try:
        import torch
        import torch.fx
    except ImportError:
        raise TorchImportError("torch is not installed: `pip install torch` (xbar uses it only to read "
                               "and write torch models)") from None
    return torch


# ---- tracing: the fx graph as a list of simple ops -------------------------------------------------

class Op:
    """One tensor op of the traced model: kind in input, linear, conv, bn, act, pool, flatten,
    dropout, add, logsoftmax; args: the names of its tensor inputs; shape: output without batch."""

    def __init__(self, name, path, kind, args, shape, **info):
        self.name, self.path, self.kind, self.args, self.shape, self.info = name, path, kind, args, shape, info

    def __repr__(self) -> str:
        return f"{self.kind}({self.path})"


def _node_path(node) -> str:
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack") or {}
    owner = next(reversed(stack), "") if stack else ""
    return f"{owner}.{node.name}" if owner else node.name


def refuse(path: str, what: str, why: str = "") -> TorchImportError:
    return TorchImportError(f"'{path}' ({what}): {why or 'not supported'}; {_SUPPORTED_TEXT}")


def _pair(v, path, what, name) -> int:
    if isinstance(v, (tuple, list)):
        if len(set(v)) != 1:
            raise refuse(path, what, f"{name} = {tuple(v)} is not square; xbar takes square {name}s")
        v = v[0]
    return int(v)


def trace(torch, module, x):
    """(the tensor ops of `module` by node name, in execution order; the name of the op it returns),
    traced with torch.fx and run once on the example input x to learn every shape."""
    import torch.nn.functional as F

    class Shapes(torch.fx.Interpreter):
        """Runs the traced graph once and records every tensor's shape on its node."""

        def run_node(self, n):
            result = super().run_node(n)
            if isinstance(result, torch.Tensor):
                n.meta["xbar_shape"] = tuple(int(s) for s in result.shape[1:])
            return result

    try:
        gm = torch.fx.symbolic_trace(module)
    except Exception as exc:  # noqa: BLE001 (fx raises many types for untraceable code)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TorchImportError(f"{type(module).__name__}: torch.fx cannot trace it ({first}); models "
                               "whose forward branches on tensor values are not supported") from None
    try:
        with torch.no_grad():
            Shapes(gm).run(x)
    except Exception as exc:  # noqa: BLE001 (whatever the model raises on this input)
        while exc.__cause__ is not None:
            exc = exc.__cause__
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TorchImportError(f"{type(module).__name__} does not run on an input of shape "
                               f"{'x'.join(map(str, x.shape[1:]))} (the example input): {first}") from None
    ops: dict[str, Op] = {}
    alias: dict[str, str] = {}   # identity ops -> their input
    out_name = None

    def tensor_args(node):
        names = []
        for a in node.all_input_nodes:
            if a.name in alias:
                names.append(alias[a.name])
            elif a.name in ops:
                names.append(a.name)
        adds = (operator.add, operator.iadd, torch.add, "add", "add_")
        return names if node.target in adds else list(dict.fromkeys(names))

    def shape_of(node):
        return node.meta.get("xbar_shape")

    acts_fn = {F.relu: "relu", torch.relu: "relu", torch.tanh: "tanh", F.tanh: "tanh", torch.sigmoid: "sigmoid",
               F.sigmoid: "sigmoid"}
    acts_method = {"relu": "relu", "relu_": "relu", "tanh": "tanh", "tanh_": "tanh", "sigmoid": "sigmoid",
                   "sigmoid_": "sigmoid"}
    for node in gm.graph.nodes:
        path = _node_path(node)
        if node.op == "placeholder":
            if any(o.kind == "input" for o in ops.values()):
                raise TorchImportError(f"{type(module).__name__}.forward takes more than one input "
                                       f"('{node.name}'); xbar imports single-input models")
            ops[node.name] = Op(node.name, "input", "input", [], shape_of(node))
            continue
        if node.op == "output":
            arg = node.args[0]
            if not hasattr(arg, "name") or (arg.name not in ops and arg.name not in alias):
                raise TorchImportError(f"{type(module).__name__}.forward returns {type(arg).__name__}; xbar "
                                       "imports models that return one tensor of logits")
            out_name = alias.get(arg.name, arg.name)
            continue
        shape = shape_of(node)
        if node.op == "get_attr":
            raise refuse(path, "parameter used in forward", "the model reads a parameter or buffer directly")
        if shape is None:
            continue   # x.size(0), shapes and other non-tensor values: only feed view/reshape
        args = tensor_args(node)
        if node.op == "call_module":
            mod = gm.get_submodule(node.target)
            what = type(mod).__name__
            op = _module_op(torch, node, path, what, mod, args, shape)
        elif node.op == "call_function":
            what = getattr(node.target, "__name__", str(node.target))
            op = _function_op(torch, F, node, path, what, args, shape, acts_fn)
        else:   # call_method
            what = f"Tensor.{node.target}"
            op = _method_op(node, path, what, args, shape, acts_method)
        if op is None:
            alias[node.name] = args[0]
            continue
        ops[node.name] = op
    if out_name is None or ops[out_name].shape is None or len(ops[out_name].shape) != 1:
        raise TorchImportError(f"{type(module).__name__} must return (batch, classes) logits")
    return ops, out_name


def _module_op(torch, node, path, what, mod, args, shape):
    nn = torch.nn
    if type(mod) is nn.Linear:   # subclasses may compute something else
        return Op(node.name, path, "linear", args, shape, module=mod)
    if type(mod) is nn.Conv2d:
        k = _pair(mod.kernel_size, path, what, "kernel")
        s = _pair(mod.stride, path, what, "stride")
        if mod.groups != 1:
            raise refuse(path, what, f"groups = {mod.groups}; xbar convolutions have groups = 1")
        if _pair(mod.dilation, path, what, "dilation") != 1:
            raise refuse(path, what, "dilation != 1")
        if mod.padding_mode != "zeros":
            raise refuse(path, what, f"padding_mode = {mod.padding_mode!r}; xbar pads with zeros")
        p = mod.padding
        if isinstance(p, str):
            if p == "valid":
                p = 0
            elif s == 1 and k % 2 == 1:
                p = (k - 1) // 2
            else:
                raise refuse(path, what, "padding = 'same' with an even kernel")
        return Op(node.name, path, "conv", args, shape, module=mod, kernel=k, stride=s,
                   padding=_pair(p, path, what, "padding"))
    if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)) and type(mod) in (nn.BatchNorm1d, nn.BatchNorm2d):
        if not mod.track_running_stats or mod.running_mean is None:
            raise refuse(path, what, "track_running_stats = False (it normalises by batch statistics at "
                          "inference)")
        if isinstance(mod, nn.BatchNorm1d) and len(shape) != 1:
            raise refuse(path, what, "BatchNorm1d over a sequence; xbar takes it on (batch, features)")
        return Op(node.name, path, "bn", args, shape, module=mod)
    if type(mod) in (nn.ReLU, nn.Tanh, nn.Sigmoid):
        return Op(node.name, path, "act", args, shape, act=what.lower())
    if type(mod) is nn.Hardtanh:
        if (mod.min_val, mod.max_val) != (-1.0, 1.0):
            raise refuse(path, what, f"Hardtanh({mod.min_val:g}, {mod.max_val:g}); xbar's hardtanh clips to [-1, 1]")
        return Op(node.name, path, "act", args, shape, act="hardtanh")
    if type(mod) in (nn.MaxPool2d, nn.AvgPool2d):
        mode = "max" if isinstance(mod, nn.MaxPool2d) else "avg"
        extra = {"dilation": getattr(mod, "dilation", 1), "return_indices": getattr(mod, "return_indices", False),
                 "divisor_override": getattr(mod, "divisor_override", None)}
        return _pool_op(node.name, path, what, mode, args, shape, mod.kernel_size, mod.stride, mod.padding,
                        mod.ceil_mode, **extra)
    if type(mod) is nn.AdaptiveAvgPool2d:
        return Op(node.name, path, "pool", args, shape, mode="avg", adaptive=True)
    if type(mod) is nn.Flatten:
        if mod.start_dim != 1 or mod.end_dim != -1:
            raise refuse(path, what, f"Flatten({mod.start_dim}, {mod.end_dim}); xbar flattens everything but "
                          "the batch")
        return Op(node.name, path, "flatten", args, shape)
    if type(mod) is nn.Dropout:
        return None if mod.p == 0 else Op(node.name, path, "dropout", args, shape, p=float(mod.p))
    if type(mod) is nn.Identity:
        return None
    if type(mod) is nn.LogSoftmax:
        return Op(node.name, path, "logsoftmax", args, shape, dim=mod.dim)
    raise refuse(path, what)


def _pool_op(name, path, what, mode, args, shape, kernel, stride, padding, ceil_mode, dilation=1,
             return_indices=False, divisor_override=None):
    k = _pair(kernel, path, what, "kernel")
    s = k if stride is None or stride == [] or stride == () else _pair(stride, path, what, "stride")
    if _pair(padding, path, what, "padding") != 0:
        raise refuse(path, what, "padding != 0; xbar pools without padding")
    if _pair(dilation, path, what, "dilation") != 1 or return_indices or divisor_override:
        raise refuse(path, what, "dilation, return_indices or divisor_override")
    return Op(name, path, "pool", args, shape, mode=mode, size=k, stride=s, ceil_mode=bool(ceil_mode))


def _arg(node, i, key, default=None):
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(key, default)


def _function_op(torch, F, node, path, what, args, shape, acts_fn):
    t = node.target
    if t in (operator.add, torch.add, operator.iadd):
        if len(args) != 2 or node.kwargs.get("alpha", 1) != 1:
            raise refuse(path, what, "an addition of anything but two tensors")
        return Op(node.name, path, "add", args, shape)
    if t in acts_fn:
        return Op(node.name, path, "act", args, shape, act=acts_fn[t])
    if t is F.hardtanh:
        lo, hi = _arg(node, 1, "min_val", -1.0), _arg(node, 2, "max_val", 1.0)
        if (lo, hi) != (-1.0, 1.0):
            raise refuse(path, what, f"hardtanh({lo}, {hi}); xbar's hardtanh clips to [-1, 1]")
        return Op(node.name, path, "act", args, shape, act="hardtanh")
    if t is torch.flatten:
        if _arg(node, 1, "start_dim", 0) != 1 or _arg(node, 2, "end_dim", -1) != -1:
            raise refuse(path, what, "a flatten that keeps more than the batch axis")
        return Op(node.name, path, "flatten", args, shape)
    if t in (F.max_pool2d, F.avg_pool2d):
        mode = "max" if t is F.max_pool2d else "avg"
        if mode == "max":
            extra = {"dilation": _arg(node, 4, "dilation", 1), "return_indices": _arg(node, 6, "return_indices", False)}
            ceil = _arg(node, 5, "ceil_mode", False)
        else:
            extra = {"divisor_override": _arg(node, 6, "divisor_override", None)}
            ceil = _arg(node, 4, "ceil_mode", False)
        return _pool_op(node.name, path, what, mode, args, shape, _arg(node, 1, "kernel_size"),
                        _arg(node, 2, "stride", None), _arg(node, 3, "padding", 0), ceil, **extra)
    if t is F.adaptive_avg_pool2d:
        return Op(node.name, path, "pool", args, shape, mode="avg", adaptive=True)
    if t is F.dropout:
        p = float(_arg(node, 1, "p", 0.5))
        return None if p == 0 else Op(node.name, path, "dropout", args, shape, p=p)
    if t in (F.log_softmax, torch.log_softmax):
        return Op(node.name, path, "logsoftmax", args, shape, dim=_arg(node, 1, "dim", None))
    raise refuse(path, what)


def _method_op(node, path, what, args, shape, acts_method):
    m = node.target
    if m in acts_method:
        return Op(node.name, path, "act", args, shape, act=acts_method[m])
    if m in ("view", "reshape", "flatten"):
        if len(shape) != 1:
            raise refuse(path, what, f"a reshape to {shape}; xbar reshapes only to (batch, -1)")
        return Op(node.name, path, "flatten", args, shape)
    if m in ("add", "add_"):
        if len(args) != 2:
            raise refuse(path, what, "an addition of anything but two tensors")
        return Op(node.name, path, "add", args, shape)
    if m in ("contiguous", "clone", "detach"):
        return None
    if m == "log_softmax":
        return Op(node.name, path, "logsoftmax", args, shape, dim=_arg(node, 1, "dim", None))
    raise refuse(path, what)
