"""From traced ops to an xbar network spec: the main path, the shortcuts, one [[layers]] entry at a
time, with each crossbar layer's weights (xbar's layout, float64) and its torch module names.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .trace import Op, TorchImportError, refuse


def _np(t) -> np.ndarray:
    return t.detach().cpu().double().numpy()


class Mapper:
    """Walks the main path of the traced ops and writes spec entries, weights and torch names.

    A crossbar layer is "open" from its Linear/Conv2d until the next one; its stage says what may
    still join it: "xbar" (just the crossbar: batch norm folds, pooling goes before the
    activation), "head" (after such pooling), "bn" (after a kept batch norm), "act" (activation
    set), "tail" (pooling, dropout or an addition after the activation).
    """

    def __init__(self, ops: dict[str, Op], out_name: str, batchnorm: str, model_name: str):
        self.ops, self.out_name, self.bn_mode, self.model = ops, out_name, batchnorm, model_name
        self.entries: list[dict[str, Any]] = []
        self.paths: list[str] = []   # per entry: the torch op it comes from
        self.layers: list[dict[str, Any]] = []   # per crossbar layer: W, b, bn, torch names
        self.values: dict[str, tuple[int, int, int]] = {}   # op -> (entry, layer, version)
        self.version: dict[int, int] = {}
        self.open: dict[str, Any] | None = None
        self.branch_entry: dict[str, int] = {}
        self.log_softmax = False   # the model ends with log_softmax (xbar's output applies it)

    # -- analysis ---------------------------------------------------------------------------------
    def _analyse(self) -> list[str]:
        ops = self.ops
        names = list(ops)
        anc: dict[str, set[str]] = {}
        depth: dict[str, int] = {}
        for n in names:
            op = ops[n]
            anc[n] = set().union(*[anc[a] | {a} for a in op.args]) if op.args else set()
            depth[n] = max((depth[a] for a in op.args), default=0) + (op.kind in ("linear", "conv"))
        for n in names:
            op = ops[n]
            if op.kind != "add":
                continue
            a, b = op.args
            if a == b:
                raise refuse(op.path, "add", "adds a value to itself")
            if ops[a].shape != ops[b].shape:
                raise refuse(op.path, "add", f"adds {ops[a].shape} to {ops[b].shape} (broadcasting); the "
                              "two paths must have the same shape")
            if a in anc[b]:
                op.info["main"], op.info["skip"] = b, a
            elif b in anc[a]:
                op.info["main"], op.info["skip"] = a, b
            else:
                op.info["main"], op.info["skip"] = (a, b) if depth[a] >= depth[b] else (b, a)
        chain, cur = [], self.out_name
        while ops[cur].kind != "input":
            chain.append(cur)
            op = ops[cur]
            cur = op.info["main"] if op.kind == "add" else op.args[0]
        input_name = cur
        chain.reverse()
        main = set(chain) | {input_name}
        consumers: dict[str, list[str]] = {n: [] for n in names}
        for n in names:
            for a in ops[n].args:
                consumers[a].append(n)
        self.branches: dict[str, list[list[str]]] = {}
        accounted = set(main)
        for n in chain:
            op = ops[n]
            if op.kind != "add" or op.info["skip"] in main:
                continue
            seq, cur = [], op.info["skip"]
            while cur not in main:
                seq.append(cur)
                if ops[cur].kind == "add" or len(ops[cur].args) != 1:
                    raise refuse(op.path, "add", f"its shortcut '{ops[cur].path}' has more than one path; xbar "
                                  "maps a shortcut of one Linear/Conv2d (with BatchNorm and activation)")
                cur = ops[cur].args[0]
            seq.reverse()
            kinds = [ops[s].kind for s in seq]
            ok = kinds[0] in ("linear", "conv") and kinds[1:] in ([], ["bn"], ["act"], ["bn", "act"])
            if not ok:
                raise refuse(op.path, "add", "its shortcut is " + " -> ".join(f"{ops[s].path} ({ops[s].kind})"
                              for s in seq) + "; xbar maps a shortcut of one Linear/Conv2d with optional "
                              "BatchNorm and activation")
            for s in seq[:-1]:
                if len(consumers[s]) != 1:
                    raise refuse(ops[s].path, ops[s].kind, "a shortcut's value is used elsewhere too")
            if len(consumers[seq[-1]]) != 1:
                raise refuse(ops[seq[-1]].path, ops[seq[-1]].kind, "a shortcut's value is used elsewhere too")
            pos = chain.index(n)
            succ = chain[chain.index(cur) + 1] if cur != input_name else chain[0]
            if ops[succ].kind not in ("linear", "conv") or ops[succ].args[0] != cur or chain.index(succ) > pos:
                raise refuse(op.path, "add", f"its shortcut '{ops[seq[0]].path}' reads a value the main path "
                              f"continues from with '{ops[succ].path}' ({ops[succ].kind}); a shortcut layer must read "
                              "the input of the main path's next Linear/Conv2d")
            self.branches.setdefault(cur, []).append(seq)
            op.info["branch"] = seq
            accounted.update(seq)
        for n in names:
            if n not in accounted:
                raise refuse(ops[n].path, ops[n].kind, "its value does not reach the output along the main path "
                              "or a shortcut xbar can map")
        self.input_name = input_name
        return chain

    # -- emission -----------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        ops = self.ops
        chain = self._analyse()
        shape = ops[self.input_name].shape
        if len(shape) == 3:
            self.layout = ("maps", shape, True)    # C×H×W rows: the dataset's order
        elif len(shape) == 1:
            self.layout = ("flat", shape[0], None)
        else:
            raise TorchImportError(f"example input of shape {shape}: expected (C, H, W) images or (n,) vectors "
                                   "per sample")
        self.values[self.input_name] = (-1, -1, 0)
        xops = [n for n in chain if ops[n].kind in ("linear", "conv")]
        if not xops:
            raise TorchImportError(f"{self.model} has no Linear or Conv2d layer")
        last = chain.index(xops[-1])
        for n in chain[:last]:
            op = ops[n]
            getattr(self, "_" + op.kind)(op)
            o = self.open
            self.values[n] = (len(self.entries) - 1, -1 if o is None else o["layer"],
                              0 if o is None else self.version[o["layer"]])
        self._output(ops[chain[last]], [ops[n] for n in chain[last + 1:]])
        spec: dict[str, Any] = {"name": self.model.lower(), "description": f"imported from torch ({self.model})",
                                "source": f"torch model {self.model}, imported with xbar.interop.from_torch",
                                "activation": "relu", "output": "log_softmax", "bias": True}
        if len(shape) == 3:
            spec["input"] = list(shape)
        spec["layers"] = self.entries
        spec["output_layer"] = {"bias": self.layers[-1]["b"] is not None}
        if not self.entries:
            del spec["layers"]
            spec["hidden"] = []
        return spec

    def _append(self, entry: dict[str, Any], op: Op) -> None:
        self.entries.append(entry)
        self.paths.append(op.path)

    def _need_open(self, op: Op, what: str) -> dict[str, Any]:
        if self.open is None:
            raise refuse(op.path, what, "comes before the first Linear/Conv2d; xbar runs it in a crossbar "
                          "layer's digital periphery")
        return self.open

    def _bump(self) -> None:
        self.version[self.open["layer"]] += 1

    def _crossbar(self, op: Op, branch: bool = False) -> None:
        mod = op.info["module"]
        kind, maps = self.layout[0], None
        W = _np(mod.weight)
        b = None if mod.bias is None else _np(mod.bias)
        if op.kind == "linear":
            if kind != "flat":
                raise refuse(op.path, "Linear", f"reads feature maps {self.layout[1]}; flatten before it")
            W = W.T
            maps = self.layout[2]
            if maps is not None:
                C, H, Wd = maps
                # xbar row (h, w, c) holds torch's input c·H·W + h·W + w
                W = W[np.arange(C * H * Wd).reshape(C, H, Wd).transpose(1, 2, 0).ravel()]
            entry = {"kind": "dense", "units": int(mod.out_features)}
        else:
            if kind != "maps":
                raise refuse(op.path, "Conv2d", "reads a flat vector; xbar convolutions read feature maps")
            entry = {"kind": "conv", "filters": int(mod.out_channels), "kernel": op.info["kernel"],
                     "stride": op.info["stride"], "padding": op.info["padding"]}
            W = W.transpose(2, 3, 1, 0).reshape(-1, W.shape[0])
        entry.update(activation="identity", bias=b is not None)
        if branch:
            entry["branch"] = True
        self._append(entry, op)
        self.layers.append({"W": W, "b": b, "bn": None,
                            "torch": {"module": op.path, "kind": op.kind, "bias": b is not None, "bn": None,
                                      "flatten_maps": None if maps is None else list(maps)}})
        self.version[len(self.layers) - 1] = 0
        state = {"entry": len(self.entries) - 1, "layer": len(self.layers) - 1, "stage": "xbar", "bn": False,
                 "act": False}
        if not branch:
            self.open = state
        return state

    @staticmethod
    def _fold(layer: dict[str, Any], op: Op) -> None:
        """Fold a BatchNorm (inference: running statistics) into the layer's W and b, in float64."""
        mod = op.info["module"]
        s, t = _bn_affine(mod)
        layer["W"] = layer["W"] * s[None, :]
        layer["b"] = t if layer["b"] is None else layer["b"] * s + t
        layer["torch"]["bn"] = {"module": op.path, "folded": True, "affine": mod.weight is not None,
                                "eps": float(mod.eps)}

    @staticmethod
    def _keep(layer: dict[str, Any], entry: dict[str, Any], op: Op) -> None:
        """Keep a BatchNorm as xbar's digital BatchNorm of the layer."""
        mod = op.info["module"]
        layer["bn"] = {"gamma": _np(mod.weight) if mod.weight is not None else np.ones(mod.num_features),
                       "beta": _np(mod.bias) if mod.bias is not None else np.zeros(mod.num_features),
                       "running_mean": _np(mod.running_mean), "running_var": _np(mod.running_var),
                       "eps": float(mod.eps), "momentum": 0.1 if mod.momentum is None else float(mod.momentum)}
        layer["torch"]["bn"] = {"module": op.path, "folded": False, "affine": mod.weight is not None,
                                "eps": float(mod.eps)}
        entry["batchnorm"] = True

    def _linear(self, op: Op) -> None:
        for seq in self.branches.get(op.args[0], []):
            self._branch(seq)
        self._crossbar(op)
        self.layout = ("maps", op.shape, False) if op.kind == "conv" else ("flat", op.shape[0], None)

    _conv = _linear

    def _branch(self, seq: list[str]) -> None:
        ops = self.ops
        state = self._crossbar(ops[seq[0]], branch=True)
        layer, entry = self.layers[state["layer"]], self.entries[state["entry"]]
        for n in seq[1:]:
            op = ops[n]
            if op.kind == "bn" and self.bn_mode == "fold":
                self._fold(layer, op)
            elif op.kind == "bn":
                self._keep(layer, entry, op)
            else:
                entry["activation"] = op.info["act"]
        entry["bias"] = layer["b"] is not None
        self.branch_entry[seq[-1]] = state["entry"]

    def _bn(self, op: Op) -> None:
        o = self._need_open(op, "BatchNorm")
        layer, entry = self.layers[o["layer"]], self.entries[o["entry"]]
        if o["stage"] == "xbar" and not o["bn"] and self.bn_mode == "fold":
            self._fold(layer, op)
            entry["bias"] = True
        elif o["stage"] in ("xbar", "head") and not o["bn"]:
            self._keep(layer, entry, op)
            o["stage"] = "bn"
        else:
            raise refuse(op.path, "BatchNorm", "does not act on a Linear/Conv2d's outputs (directly, or after "
                          "pooling them); xbar applies batch norm there, before the activation")
        o["bn"] = True
        self._bump()

    def _act(self, op: Op) -> None:
        o = self._need_open(op, op.info["act"])
        act = op.info["act"]
        entry = self.entries[o["entry"]]
        tail = self.entries[o["entry"] + 1:]
        if o["stage"] in ("xbar", "head", "bn") and not o["act"]:
            entry["activation"] = act
            o["act"], o["stage"] = True, "act"
        elif tail and tail[-1]["kind"] == "add" and tail[-1]["activation"] == "identity":
            tail[-1]["activation"] = act
        elif (not o["act"] and act == "relu" and tail
              and all(e["kind"] in ("dropout", "flatten") for e in tail)):
            entry["activation"] = act   # relu(dropout(a)) = dropout(relu(a)): the mask is >= 0
            o["act"] = True
        else:
            raise refuse(op.path, act, "an activation after pooling, dropout or another activation; xbar applies "
                          "one activation per layer (before pooling and dropout) and one after each addition")
        self._bump()

    def _pool(self, op: Op) -> None:
        o = self._need_open(op, "pooling")
        if self.layout[0] != "maps":
            raise refuse(op.path, "pooling", "pools a flat vector")
        _, H, W = self.layout[1]
        if op.info.get("adaptive"):
            _, oh, ow = op.shape
            if (oh, ow) == (H, W):
                return
            if H % oh or W % ow or H // oh != W // ow:
                raise refuse(op.path, "AdaptiveAvgPool2d", f"{H}x{W} -> {oh}x{ow} is not one square window size; "
                              "xbar pools with square windows")
            size = step = H // oh
        else:
            size, step = op.info["size"], op.info["stride"]
            if op.shape[1:] != ((H - size) // step + 1, (W - size) // step + 1):
                raise refuse(op.path, "pooling", "ceil_mode = True changes the output size here")
        entry = {"kind": f"{op.info['mode']}pool", "size": int(size), "stride": int(step)}
        if o["stage"] == "bn":   # kept batch norm before pooling: fold it (exact), pool before the activation
            layer = self.layers[o["layer"]]
            bn = layer.pop("bn")
            s = bn["gamma"] / np.sqrt(bn["running_var"] + bn["eps"])
            t = bn["beta"] - bn["running_mean"] * s
            layer["W"] = layer["W"] * s[None, :]
            layer["b"] = t if layer["b"] is None else layer["b"] * s + t
            layer["bn"] = None
            layer["torch"]["bn"]["folded"] = True
            self.entries[o["entry"]].pop("batchnorm")
            self.entries[o["entry"]]["bias"] = True
            o["stage"] = "xbar"
        if o["stage"] in ("xbar", "head"):
            entry["pre_activation"] = True
            o["stage"] = "head"
        else:
            o["stage"] = "tail"
        self._append(entry, op)
        self.layout = ("maps", op.shape, False)
        self._bump()

    def _flatten(self, op: Op) -> None:
        if self.layout[0] == "maps":
            shape, chw = self.layout[1], self.layout[2]
            self._append({"kind": "flatten", "size": int(math.prod(shape))}, op)
            self.layout = ("flat", math.prod(shape), None if chw or shape[0] == 1 or shape[1:] == (1, 1) else shape)

    def _dropout(self, op: Op) -> None:
        o = self._need_open(op, "Dropout")
        self._append({"kind": "dropout", "p": op.info["p"]}, op)
        o["stage"] = "tail"
        self._bump()

    def _add(self, op: Op) -> None:
        o = self._need_open(op, "add")
        skip = op.info["skip"]
        if "branch" in op.info:
            k = self.branch_entry[op.info["branch"][-1]]
        else:
            k, layer, ver = self.values[skip]
            if layer >= 0 and self.version[layer] != ver:
                raise refuse(op.path, "add", f"adds '{self.ops[skip].path}', which the main path changes afterwards "
                              "(activation, pooling or dropout in the same layer); xbar adds a layer's final output")
            if layer == o["layer"] and layer >= 0:
                raise refuse(op.path, "add", f"adds '{self.ops[skip].path}', an earlier value of the same layer")
            if layer < 0 and self.layout[0] == "flat" and self.layout[2] is not None:
                raise refuse(op.path, "add", "adds the flattened input to flattened feature maps")
        self._append({"kind": "add", "from": int(k), "activation": "identity"}, op)
        o["stage"] = "tail"
        self._bump()

    def _logsoftmax(self, op: Op) -> None:
        raise refuse(op.path, "log_softmax", "only the model's last op may be a log_softmax")

    def _input(self, op: Op) -> None:   # pragma: no cover - the input is never on the chain
        pass

    def _output(self, op: Op, after: list[Op]) -> None:
        if op.kind != "linear":
            raise refuse(op.path, "Conv2d", "is the model's last layer; xbar's output layer is a Linear "
                          "(flatten before it)")
        for seq in self.branches.get(op.args[0], []):
            raise refuse(self.ops[seq[0]].path, self.ops[seq[0]].kind, "a shortcut around the output layer")
        self.open = None
        state = self._crossbar(op, branch=True)   # branch=True: not opened; the output layer takes nothing
        self.entries.pop()
        self.paths.pop()
        layer = self.layers[state["layer"]]
        for i, a in enumerate(after):
            if a.kind == "bn" and layer["torch"]["bn"] is None:
                self._fold(layer, a)
            elif a.kind == "logsoftmax" and i == len(after) - 1 and a.info.get("dim") in (1, -1):
                self.log_softmax = True
            else:
                raise refuse(a.path, a.kind, f"follows the last Linear '{op.path}'; xbar's output layer is a "
                              "Linear (and BatchNorm1d) followed by the loss (log_softmax)")


def _bn_affine(mod) -> tuple[np.ndarray, np.ndarray]:
    """(s, t) of a BatchNorm at inference, y = s·x + t, float64."""
    gamma = _np(mod.weight) if mod.weight is not None else np.ones(mod.num_features)
    beta = _np(mod.bias) if mod.bias is not None else np.zeros(mod.num_features)
    s = gamma / np.sqrt(_np(mod.running_var) + mod.eps)
    return s, beta - _np(mod.running_mean) * s
