"""Save a trained network with its programmed devices to HDF5, and load it back to evaluate.

    from xbar import checkpoint
    checkpoint.save("run.h5", trainer, trainer.cfg, result)
    run = checkpoint.load("run.h5")
    run.evaluate(X, y)                      # accuracy (%) as programmed, bit for bit as before saving
    run.evaluate(X, y, at_seconds=86400)    # after one day of conductance drift (PCM)

What a file holds (one group per layer, ``layers/<i>``):
- the layer: kind, sizes, activation (attributes), W and b (the stored weights: float shadows for
  qat, the devices' effective weights for the in-situ schemes), the pruning mask if any;
- ``layers/<i>/crossbar`` (absent for update "float"): the device (all fields, JSON), the
  constructor settings (JSON), the conductances as programmed (gp0, gn0) and as now read (gp, gn),
  plane significance, gains alpha and offsets beta, the digital bias, the per-device draws kept
  across programs (``persist/``: d2d windows gmin/gmax, stuck faults, drift exponents nu), the ADC
  full scales (``adc_fs/``), and the random state (read-noise stream key and counter, the
  programming generator), so that reads after loading continue the same noise stream;
- ``update/``: the update scheme's own arrays (e.g. mixed precision's accumulators);
- root attributes: format and version, the resolved config and the result/history (JSON), the
  run's seed, the versions of xbar, numpy, numba, h5py and Python.

Every :meth:`Run.evaluate` starts from the saved state, so it is a pure function of the file and
its arguments: evaluating twice, or before and after other calls, gives the same numbers.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .crossbar import Crossbar
from .errors import XbarError
from .jsonio import dumps
from .nn import Dense, Network
from .version import __version__

FORMAT = "xbar-run"
FORMAT_VERSION = 2   # 2: crossbars as Crossbar.state_dict(), network spec, batch norm; 1 still read


class CheckpointError(XbarError, OSError):
    """A run file is missing, unreadable, corrupted or not an xbar run file."""


# ---- crossbars: through their public state_dict ---------------------------------------------------

def crossbar_state(xb: Crossbar) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(JSON-ready part, arrays) of ``xb.state_dict()``."""
    sd = xb.state_dict()
    arrays = sd.pop("arrays")
    return sd, arrays


def crossbar_from_state(meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> Crossbar:
    """The inverse of :func:`crossbar_state`; also reads format-1 files (written before the split)."""
    if meta.get("format") is None:
        meta, arrays = _v1_state(meta, arrays)
    return Crossbar.from_state_dict({**meta, "arrays": arrays})


def _v1_state(meta: dict[str, Any], arrays: dict[str, np.ndarray]):
    """A format-1 crossbar record (flat private attributes) as a state_dict."""
    state = {k: meta[k] for k in ("shape", "n_in", "has_bias_row", "t_s", "drift_compensation")}
    new = {f"state/{k}": arrays[k] for k in ("gp0", "gn0", "gp", "gn", "sig", "alpha", "beta")}
    if "b_digital" in arrays:
        new["state/b_digital"] = arrays["b_digital"]
    new.update({k: v for k, v in arrays.items() if k.startswith(("persist/", "adc_fs/"))})
    sd = {"format": "xbar-crossbar", "version": 1, "device": meta["device"], "settings": meta["settings"],
          "state": state, "stats": meta["stats"],
          "streams": {"read_stream": meta["stream"], "reads": meta["reads"], "program_rng": meta["rng_state"]}}
    return sd, new


# ---- saving -------------------------------------------------------------------------------------------

def versions() -> dict[str, str]:
    """Versions of the software that wrote a file."""
    import h5py
    import numba
    return {"xbar": __version__, "numpy": np.__version__, "numba": numba.__version__,
            "h5py": h5py.__version__, "python": platform.python_version()}


def save(path: str | os.PathLike, trainer_or_network, config=None, result: dict | None = None) -> Path:
    """Write a trained network (a Trainer, or a Network) with its device state to `path` (HDF5).

    config: a TrainConfig or dict (default: the trainer's config); result: the dict train()
    returns (history included), stored as JSON. The file is written to a temporary name first and
    renamed, so an interrupted save never leaves a half-written run behind.
    """
    import h5py
    net: Network = getattr(trainer_or_network, "net", trainer_or_network)
    if not isinstance(net, Network):
        raise CheckpointError(f"save: expected a Trainer or a Network, got {type(trainer_or_network).__name__}")
    if config is None:
        config = getattr(trainer_or_network, "cfg", None)
    cfg = config.as_dict() if hasattr(config, "as_dict") else dict(config or {})
    spec_data = _spec_data(trainer_or_network, net)
    if spec_data is None:
        for i, layer in enumerate(net.layers):
            if layer.kind != "dense" or layer.bn is not None or layer.tail or layer.head:
                raise CheckpointError(f"save: layer {i} is not a plain dense layer and the network's spec "
                                      "file is unknown; save a Trainer (it knows its spec) instead")
    update = getattr(trainer_or_network, "update", None)
    path = Path(path)
    if not path.parent.is_dir():
        raise CheckpointError(f"{path}: folder {path.parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["versions"] = dumps(versions())
            f.attrs["config"] = dumps(cfg)
            f.attrs["result"] = dumps(result or {})
            f.attrs["seed"] = -1 if cfg.get("seed") is None else int(cfg["seed"])   # -1: unknown
            f.attrs["network"] = net.name
            f.attrs["output"] = net.output
            f.attrs["n_layers"] = len(net.layers)
            if spec_data is not None:
                f.attrs["network_spec"] = dumps(spec_data)
                f.attrs["n_in"] = _net_input_size(net)
                f.attrs["n_classes"] = net.layers[-1].n_out
            for i, layer in enumerate(net.layers):
                g = f.create_group(f"layers/{i}")
                g.attrs.update({"kind": layer.kind, "n_in": layer.n_in, "n_out": layer.n_out,
                                "activation": layer.activation, "has_bias": layer.b is not None,
                                "weights": layer.weights, "scale": layer.scale})
                if layer.bn is not None:
                    bn = g.create_group("batchnorm")
                    bn.attrs.update({"momentum": layer.bn.momentum, "eps": layer.bn.eps})
                    for k in ("gamma", "beta", "running_mean", "running_var"):
                        bn[k] = getattr(layer.bn, k)
                g["W"] = layer.W
                if layer.b is not None:
                    g["b"] = layer.b
                if layer.mask is not None:
                    g["mask"] = layer.mask
                if layer.crossbar is not None:
                    meta, arrays = crossbar_state(layer.crossbar)
                    c = g.create_group("crossbar")
                    c.attrs["meta"] = dumps(meta)
                    for k, v in arrays.items():
                        c[k] = v
            u = f.create_group("update")
            u.attrs["name"] = str(getattr(update, "name", "") or cfg.get("update") or "")
            if update is not None and hasattr(update, "state_arrays"):
                for k, v in update.state_arrays().items():
                    u[k] = v
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)   # mkstemp makes 0600; a run file is as readable as any output
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


# ---- loading ------------------------------------------------------------------------------------------

class Run:
    """A saved run: its network (rebuilt fresh for every evaluation), config, result and versions."""

    def __init__(self, path: Path, attrs: dict[str, Any], layers: list[dict[str, Any]],
                 update: dict[str, np.ndarray], update_name: str):
        self.path = path
        self.config: dict[str, Any] = attrs["config"]
        self.result: dict[str, Any] = attrs["result"]
        self.versions: dict[str, str] = attrs["versions"]
        self.seed: int = attrs["seed"]
        self.network_name: str = attrs["network"]
        self.output: str = attrs["output"]
        self.update_name = update_name
        self.update_state = update
        self._layers = layers
        self.network_spec: dict[str, Any] | None = attrs.get("network_spec")
        self.n_in: int | None = attrs.get("n_in")
        self.n_classes: int | None = attrs.get("n_classes")

    def network(self, at_seconds: float | None = None, compensate: bool = False) -> Network:
        """A new Network as saved, or with every crossbar read `at_seconds` after programming
        (Crossbar.at; compensate: global drift compensation)."""
        rng = np.random.default_rng(0)   # layers draw initial weights; they are overwritten
        net = self._network_from_spec(rng) if self.network_spec is not None else self._dense_network(rng)
        return net if at_seconds is None else net.at(at_seconds, compensate)

    def _dense_network(self, rng) -> Network:
        """A chain of Dense layers (runs saved without a network spec)."""
        layers = []
        for spec in self._layers:
            layer = Dense(spec["n_in"], spec["n_out"], spec["activation"], rng=rng, bias=spec["b"] is not None)
            layer.set_weights(spec["W"], spec["b"])
            if spec["mask"] is not None:
                layer.mask = spec["mask"].copy()
            if spec["crossbar"] is not None:
                layer.crossbar = crossbar_from_state(*spec["crossbar"])
            layers.append(layer)
        return Network(layers, self.output, self.network_name)

    def _network_from_spec(self, rng) -> Network:
        """Any network (conv, pooling, batch norm, binary): rebuilt from its spec, then restored."""
        from .nn import BatchNorm, NetworkSpec
        spec = NetworkSpec.from_dict(self.network_spec["data"], file=self.network_spec.get("file"))
        net = spec.build(self.n_in, self.n_classes, rng)
        if len(net.layers) != len(self._layers):
            raise CheckpointError(f"{self.path}: the saved spec builds {len(net.layers)} layers, the file "
                                  f"holds {len(self._layers)}")
        for layer, saved in zip(net.layers, self._layers):
            layer.weights, layer.scale = saved["weights"], saved["scale"]
            layer.W = np.ascontiguousarray(saved["W"], dtype=np.float32)
            layer.b = None if saved["b"] is None else np.ascontiguousarray(saved["b"], dtype=np.float32)
            layer.mask = None if saved["mask"] is None else saved["mask"].copy()
            if saved["bn"] is None:
                layer.bn = None
            else:
                meta, arrays = saved["bn"]
                layer.bn = BatchNorm(layer.n_out, momentum=meta["momentum"], eps=meta["eps"])
                for k, v in arrays.items():
                    setattr(layer.bn, k, np.ascontiguousarray(v, dtype=np.float32))
            if saved["crossbar"] is not None:
                layer.crossbar = crossbar_from_state(*saved["crossbar"])
        return net

    def scores(self, X, y, at_seconds: float | None = None, compensate: bool = False,
               batch_size: int = 1000) -> tuple[float, float]:
        """(mean loss, accuracy in percent) on (X, y), as saved or after drift to `at_seconds`."""
        from .train.trainer import evaluate
        X = np.ascontiguousarray(X, dtype=np.float32)
        y = np.asarray(y, dtype=np.int64)
        return evaluate(self.network(at_seconds, compensate), X, y, batch_size)

    def evaluate(self, X, y, at_seconds: float | None = None, compensate: bool = False,
                 batch_size: int = 1000) -> float:
        """Accuracy in percent on (X, y): as saved, or `at_seconds` after programming."""
        return self.scores(X, y, at_seconds, compensate, batch_size)[1]

    def evaluate_dataset(self, at_seconds: float | None = None, compensate: bool = False,
                         data_dir: str | None = None, train: bool | None = None) -> dict[str, Any]:
        """Re-evaluate on the run's own dataset (config dataset, limits); a dict like train()'s.

        data_dir overrides the saved one; train: also measure the training split (default: the
        run's eval_train). Keys: status, message, test_accuracy, test_loss, train_accuracy, loss,
        at_seconds, compensate, seconds, saved (the accuracies recorded at the end of training),
        config, run.
        """
        import time

        from . import data as xdata
        cfg = self.config
        if not cfg.get("dataset"):
            raise CheckpointError(f"{self.path}: the run has no dataset in its config; use "
                                  "Run.evaluate(X, y) with your own arrays")
        start = time.perf_counter()
        data_dir = data_dir if data_dir is not None else cfg.get("data_dir")
        train = cfg.get("eval_train", True) if train is None else train
        out: dict[str, Any] = {"status": "ok", "message": "", "at_seconds": at_seconds,
                               "compensate": compensate if isinstance(compensate, str) else bool(compensate)}
        splits = [("test", cfg.get("test_limit"))] + ([("train", cfg.get("train_limit"))] if train else [])
        net = self.network(at_seconds, compensate)
        from .train.trainer import evaluate
        for split, limit in splits:
            X, y = xdata.load(cfg["dataset"], split, data_dir)
            if limit:
                X, y = X[:limit], y[:limit]
            loss, acc = evaluate(net, np.ascontiguousarray(X, dtype=np.float32), np.asarray(y, dtype=np.int64))
            out.update({"test_accuracy": acc, "test_loss": loss} if split == "test"
                       else {"train_accuracy": acc, "loss": loss})
        out.setdefault("train_accuracy", None)
        out.setdefault("loss", None)
        out["seconds"] = time.perf_counter() - start
        out["saved"] = {k: self.result.get(k) for k in ("test_accuracy", "train_accuracy")}
        out["config"] = cfg
        out["run"] = str(self.path)
        return out

    def __repr__(self) -> str:
        return (f"Run({self.path}: {self.network_name}, {len(self._layers)} layers, "
                f"update {self.update_name or '?'}, seed {self.seed})")


def load(path: str | os.PathLike) -> Run:
    """Read a run file written by :func:`save`; errors say what is wrong with the file."""
    import h5py
    path = Path(path)
    try:
        exists = path.exists()
    except OSError as exc:   # e.g. a name longer than the file system allows
        raise CheckpointError(f"{str(path)[:80]}: not a usable run file path ({exc.strerror})") from None
    if not exists:
        raise CheckpointError(f"{path}: no such run file")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise CheckpointError(f"{path}: not a readable HDF5 file (truncated or corrupted?): {exc}") from None
    try:
        with f:
            return _read(path, f)
    except CheckpointError:
        raise
    except (KeyError, ValueError, TypeError, OSError, XbarError) as exc:
        raise CheckpointError(f"{path}: corrupted or incomplete xbar run file ({type(exc).__name__}: {exc})") \
            from None


def _read(path: Path, f) -> Run:
    fmt = f.attrs.get("format")
    if fmt is None or _text(fmt) != FORMAT:
        raise CheckpointError(f"{path}: not an xbar run file (no format attribute {FORMAT!r}); "
                              "write one with xbar.checkpoint.save or `xbar train --out`")
    version = int(f.attrs["format_version"])
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: written by a newer xbar (format {version}, this xbar reads "
                              f"{FORMAT_VERSION} and older); upgrade xbar")
    attrs = {k: json.loads(_text(f.attrs[k])) for k in ("config", "result", "versions")}
    attrs.update(seed=int(f.attrs["seed"]), network=_text(f.attrs["network"]), output=_text(f.attrs["output"]))
    if "network_spec" in f.attrs:
        attrs.update(network_spec=json.loads(_text(f.attrs["network_spec"])), n_in=int(f.attrs["n_in"]),
                     n_classes=int(f.attrs["n_classes"]))
    layers = []
    for i in range(int(f.attrs["n_layers"])):
        g = f[f"layers/{i}"]
        spec = {"n_in": int(g.attrs["n_in"]), "n_out": int(g.attrs["n_out"]),
                "activation": _text(g.attrs["activation"]), "W": g["W"][()],
                "b": g["b"][()] if bool(g.attrs["has_bias"]) else None,
                "mask": g["mask"][()] if "mask" in g else None, "crossbar": None, "bn": None,
                "weights": _text(g.attrs.get("weights", "real")), "scale": _text(g.attrs.get("scale", "none"))}
        if "batchnorm" in g:
            bn = g["batchnorm"]
            spec["bn"] = ({k: float(bn.attrs[k]) for k in ("momentum", "eps")}, {k: bn[k][()] for k in bn})
        if "crossbar" in g:
            c = g["crossbar"]
            spec["crossbar"] = (json.loads(_text(c.attrs["meta"])), _arrays(c))
        layers.append(spec)
    u = f["update"]
    update = {k: u[k][()] for k in u}
    run = Run(path, attrs, layers, update, _text(u.attrs.get("name", "")))
    run.network()   # rebuild once now, so a damaged file fails at load, not at the first evaluation
    return run


def _spec_data(trainer_or_network, net: Network) -> dict[str, Any] | None:
    """{"data": the network spec as parsed TOML, "file": where it came from}, or None if unknown.

    A network that carries its spec as data (``net.spec_data``, e.g. one made by
    xbar.interop.from_torch) is saved with it; otherwise a Trainer's spec file is read."""
    from .config import load_toml
    carried = getattr(net, "spec_data", None)
    if carried is not None and getattr(trainer_or_network, "spec", None) is None:
        return {"data": carried["data"], "file": carried.get("file")}
    spec = getattr(trainer_or_network, "spec", None)
    if spec is None or getattr(spec, "file", None) is None:
        return None
    return {"data": load_toml(spec.file), "file": str(spec.file)}


def _net_input_size(net: Network) -> int:
    shape = getattr(net, "input_shape", None)
    if shape is not None:
        return int(np.prod(shape))
    return int(net.layers[0].n_in)


def _arrays(group) -> dict[str, np.ndarray]:
    """Every dataset under an HDF5 group, by its path relative to the group ('persist/nu')."""
    out: dict[str, np.ndarray] = {}

    def visit(name, obj):
        if hasattr(obj, "shape"):
            out[name] = obj[()]
    group.visititems(visit)
    return out


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
