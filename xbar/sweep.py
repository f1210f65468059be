"""Experiment grids: a TOML spec expanded into runs, run in parallel, stored in one HDF5 file.

A spec (``experiments/*.toml``)::

    name = "quickstart"
    description = "..."
    seeds = [1, 2]                 # optional; default [base seed]
    missing_data = "skip"          # optional: "error" (default) or "skip" runs whose dataset is absent

    [base]                         # any `xbar train` option (TrainConfig field)
    dataset = "digits"
    epochs = 30

    [grid]                         # lists, expanded as a cartesian product in this order
    bits = [2, 3, 4]
    update = ["qat", "stochastic"]
    "device.read_noise_rel" = [0.0, 0.02]   # device fields: become the run's device_set

    [[exclude]]                    # optional: drop runs matching every key of a table
    update = "stochastic"          # a list matches any of its values
    bits = 2

Every run is validated (resolved) before any work starts; a run's identity is a stable hash of its
resolved config, so re-running a sweep skips what its store already holds (see xbar.store).
"""

from __future__ import annotations

import datetime
import hashlib
import itertools
import json
import math
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import store
from .config import find_preset, load_toml, suggest, where_text
from .errors import ConfigError, DataError, XbarError
from .store import NOT_IDENTITY, run_key  # noqa: F401 - a run's identity is the store's

SPEC_KEYS = ("name", "description", "command", "seeds", "missing_data", "base", "grid", "exclude")
COMMANDS = ("train", "prune")
MISSING_DATA = ("error", "skip")
DEVICE_PREFIX = "device."
HIST_BINS = 64


def _train_fields():
    from .train.loop import FIELD_NAMES
    return FIELD_NAMES


def _prune_fields():
    from .prune import FIELD_NAMES
    return FIELD_NAMES


def _device_fields():
    from .device import FIELD_NAMES
    return FIELD_NAMES


def _field(key: str, command: str):
    """The Field spec of a [base]/[grid] key (None if unknown: the key check names it)."""
    from .device import FIELDS as DEVICE
    from .prune import FIELDS as PRUNE
    from .train.loop import FIELDS as TRAIN
    if key.startswith(DEVICE_PREFIX):
        fields, key = DEVICE, key[len(DEVICE_PREFIX):]
    else:
        fields = TRAIN + (PRUNE if command == "prune" else ())
    return next((f for f in fields if f.name == key), None)


@dataclass
class Run:
    """One point of the grid, resolved: what to train and under which key it is stored."""

    index: int
    key: str
    point: dict[str, Any]          # the grid values (and seed) that made this run
    config: dict[str, Any]         # the resolved TrainConfig as a plain dict

    def label(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.point.items())


@dataclass
class Experiment:
    """A validated sweep spec."""

    name: str
    description: str = ""
    base: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list] = field(default_factory=dict)
    seeds: list[int] | None = None
    exclude: list[dict[str, Any]] = field(default_factory=list)
    missing_data: str = "error"
    command: str = "train"
    file: str = "<spec>"

    # -- loading -----------------------------------------------------------------------------------
    @classmethod
    def load(cls, name_or_path: str | os.PathLike) -> Experiment:
        """From a preset name (experiments/NAME.toml) or a path to a TOML file."""
        path = find_preset("experiments", str(name_or_path))
        return cls.from_dict(load_toml(path), file=str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, file: str = "<spec>") -> Experiment:
        from .config import check_keys
        check_keys(data, SPEC_KEYS, file=file)
        command = data.get("command", "train")
        if command not in COMMANDS:
            raise ConfigError(f"{where_text(file, 'command')} = {command!r}: expected one of "
                              + ", ".join(map(repr, COMMANDS)) + suggest(str(command), COMMANDS))
        name = data.get("name", Path(file).stem)
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where_text(file, 'name')} = {name!r}: expected a non-empty string")
        base = data.get("base", {})
        if not isinstance(base, dict):
            raise ConfigError(f"{where_text(file, 'base')}: expected a table of `xbar train` options")
        _check_option_keys(base, file, "base.", command)
        grid = data.get("grid")
        if not isinstance(grid, dict) or not grid:
            raise ConfigError(f"{where_text(file, 'grid')}: the grid is empty; give at least one "
                              "[grid] key with a list of values, e.g. bits = [2, 3, 4]")
        _check_option_keys(grid, file, "grid.", command)
        for k, v in base.items():
            _check_value_type(v, _field(k, command), file, f"base.{k}")
        for k, v in grid.items():
            if not isinstance(v, list) or not v:
                raise ConfigError(f"{where_text(file, 'grid.' + k)} = {_show(v)}: expected a non-empty list of values")
            for i, x in enumerate(v):
                _check_value_type(x, _field(k, command), file, f"grid.{k}[{i}]")
            if len({json.dumps(x, sort_keys=True) for x in v}) != len(v):
                raise ConfigError(f"{where_text(file, 'grid.' + k)}: a value is repeated in {v!r}")
            if k == "seed":
                raise ConfigError(f"{where_text(file, 'grid.seed')}: put seeds in the top-level `seeds` list")
        overlap = sorted(set(base) & set(grid))
        if overlap:
            raise ConfigError(f"{file}: {', '.join(overlap)} set both in [base] and [grid]; keep one")
        seeds = data.get("seeds")
        if seeds is not None:
            if (not isinstance(seeds, list) or not seeds
                    or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)):
                raise ConfigError(f"{where_text(file, 'seeds')} = {seeds!r}: expected a non-empty list of "
                                  "integers >= 0")
            if len(set(seeds)) != len(seeds):
                raise ConfigError(f"{where_text(file, 'seeds')}: a seed is repeated in {seeds!r}")
            if "seed" in base:
                raise ConfigError(f"{file}: seed set both in [base] and `seeds`; keep one")
        exclude = data.get("exclude", [])
        if isinstance(exclude, dict):
            exclude = [exclude]
        if not isinstance(exclude, list) or not all(isinstance(e, dict) and e for e in exclude):
            raise ConfigError(f"{where_text(file, 'exclude')}: expected [[exclude]] tables of key = value(s)")
        for i, e in enumerate(exclude):
            known = list(grid) + list(base) + ["seed"]
            for k in e:
                if k not in known:
                    raise ConfigError(f"{where_text(file, f'exclude[{i}].{k}')}: not a [grid] or [base] key"
                                      f"{suggest(k, known)}; valid: {', '.join(known)}")
        missing = data.get("missing_data", "error")
        if missing not in MISSING_DATA:
            raise ConfigError(f"{where_text(file, 'missing_data')} = {missing!r}: expected one of "
                              + ", ".join(map(repr, MISSING_DATA)))
        return cls(name=name, description=str(data.get("description", "")), base=dict(base), grid=dict(grid),
                   seeds=seeds, exclude=exclude, missing_data=missing, command=command, file=file)

    # -- identity ----------------------------------------------------------------------------------
    def spec(self) -> dict[str, Any]:
        """What defines the set of runs (not name or description)."""
        spec = {"base": self.base, "grid": self.grid, "seeds": self.seeds, "exclude": self.exclude,
                "missing_data": self.missing_data}
        return spec | ({"command": self.command} if self.command != "train" else {})

    def spec_hash(self) -> str:
        return _hash(self.spec())

    # -- expansion ---------------------------------------------------------------------------------
    def points(self) -> list[dict[str, Any]]:
        """The grid's points (with seed) after exclusions, in spec order."""
        keys = list(self.grid)
        seeds = self.seeds if self.seeds is not None else [self.base.get("seed", 1)]
        out = []
        for values in itertools.product(*(self.grid[k] for k in keys)):
            for seed in seeds:
                point = dict(zip(keys, values))
                if self.seeds is not None:
                    point["seed"] = seed
                if not any(_matches(self.base | point, e) for e in self.exclude):
                    out.append(point)
        if not out:
            raise ConfigError(f"{self.file}: every run of the grid is excluded; nothing to run")
        return out

    def expand(self, *, check_data: bool = True, notes: list[str] | None = None) -> list[Run]:
        """Resolve every run (errors name the run and the field); drop runs of absent datasets
        when missing_data = 'skip' (a note says so)."""
        from .train.loop import TrainConfig
        runs: list[Run] = []
        seen: dict[str, int] = {}
        absent = _absent_datasets(self, check_data)
        for i, point in enumerate(self.points()):
            options = _options(self.base | point)
            if options.get("dataset") in absent:
                if self.missing_data == "skip":
                    continue
                raise ConfigError(f"{self.file}: run {i + 1} ({_label(point)}): {absent[options['dataset']]}"
                                  " (set missing_data = \"skip\" in the spec to leave such runs out)")
            where = f"{self.file}, run {i + 1} ({_label(point)})"
            try:
                if self.command == "prune":
                    from .prune import PruneConfig, check_supported
                    pnames = _prune_fields()
                    popts = {k: v for k, v in options.items() if k in pnames}
                    cfg = TrainConfig.from_dict({k: v for k, v in options.items() if k not in pnames},
                                                file=where).resolve()
                    pcfg = PruneConfig.from_dict(popts, file=where).resolve()
                    check_supported(cfg.network, pcfg)
                    config = cfg.as_dict() | {"command": "prune"} | pcfg.as_dict()
                else:
                    config = TrainConfig.from_dict(options, file=where).resolve().as_dict()
            except ConfigError as exc:
                msg = str(exc)
                if f"run {i + 1}" not in msg:
                    msg = f"{self.file}: run {i + 1} ({_label(point)}): {msg}"
                raise ConfigError(msg) from None
            key = run_key(config)
            if key in seen:
                raise ConfigError(f"{self.file}: runs {seen[key] + 1} and {i + 1} resolve to the same "
                                  f"configuration ({_label(point)}); a grid value has no effect there")
            seen[key] = i
            runs.append(Run(i, key, point, config))
        if notes is not None:
            for ds, why in absent.items():
                if self.missing_data == "skip":
                    notes.append(f"skipping dataset {ds!r}: {why}")
        if not runs:
            raise ConfigError(f"{self.file}: no run left to do (all datasets absent: "
                              f"{', '.join(absent)})")
        return runs


def _check_option_keys(table: dict[str, Any], file: str, prefix: str, command: str = "train") -> None:
    fields = _train_fields() + (_prune_fields() if command == "prune" else ())
    dev_fields = _device_fields()
    for k in table:
        shown = k if k.isprintable() else repr(k)[1:-1]   # one line, whatever the key holds
        if k.startswith(DEVICE_PREFIX):
            sub = k[len(DEVICE_PREFIX):]
            if sub not in dev_fields:
                raise ConfigError(f"{where_text(file, prefix + shown)}: unknown device field{suggest(sub, dev_fields)}; "
                                  f"valid: {', '.join(dev_fields)}")
        elif k not in fields and command == "train" and k in _prune_fields():
            raise ConfigError(f"{where_text(file, prefix + shown)}: a pruning option; set command = \"prune\" at "
                              "the top of the spec to sweep `xbar prune` runs")
        elif k not in fields:
            raise ConfigError(f"{where_text(file, prefix + shown)}: unknown key{suggest(k, fields)}; valid: "
                              f"{', '.join(fields)}, or device.<field>")


_SCALARS = (str, int, float, bool)


def _show(v) -> str:
    """A value as the spec wrote it (TOML dates and times in their ISO form)."""
    if isinstance(v, (datetime.date, datetime.time)):
        return v.isoformat()
    if isinstance(v, list):
        return "[" + ", ".join(_show(x) for x in v) + "]"
    return repr(v)


def _check_value_type(v, fld, file: str, path: str) -> None:
    """One value of [base] or of a [grid] list: a TOML string, number or boolean (a list of
    numbers for list fields such as device.levels_us), never a date, time or table.
    Ranges are checked later, per run, where the error can name the run."""
    per_run = " (one value per run; the grid's list holds the values to sweep)" if path.startswith("grid.") else ""
    if fld is not None and fld.kind == "floats":
        if not (isinstance(v, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)):
            raise ConfigError(f"{where_text(file, path)} = {_show(v)}: expected a list of numbers, e.g. "
                              f"[0.0, 0.5, 1.0]{per_run}")
    elif not isinstance(v, _SCALARS):
        what = ("a TOML date/time" if isinstance(v, (datetime.date, datetime.time)) else
                "a table" if isinstance(v, dict) else "a list" if isinstance(v, list) else type(v).__name__)
        allowed = fld.range_text() if fld is not None else "a string, number or boolean"
        raise ConfigError(f"{where_text(file, path)} = {_show(v)}: {what} is not allowed here; expected "
                          f"{allowed}{per_run}")


def _options(merged: dict[str, Any]) -> dict[str, Any]:
    """Spec keys -> TrainConfig options: device.<field> keys join (sorted) into device_set."""
    out = {k: v for k, v in merged.items() if not k.startswith(DEVICE_PREFIX)}
    dev = {k[len(DEVICE_PREFIX):]: v for k, v in merged.items() if k.startswith(DEVICE_PREFIX)}
    if dev:
        parts = [out["device_set"]] if out.get("device_set") else []
        parts += [f"{k}={_toml_value(v)}" for k, v in sorted(dev.items())]
        out["device_set"] = ",".join(parts)
    return out


def _toml_value(v) -> str:
    """A value written as TOML; device_set keeps commas inside [...] and "..." together."""
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, float):
        return repr(v)
    return str(v)


def _matches(options: dict[str, Any], rule: dict[str, Any]) -> bool:
    for k, want in rule.items():
        have = options.get(k)
        wants = want if isinstance(want, list) else [want]
        if have not in wants:
            return False
    return True


def _label(point: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in point.items())


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _absent_datasets(exp: Experiment, check: bool) -> dict[str, str]:
    """dataset -> why its files cannot be found, for datasets the spec uses."""
    if not check:
        return {}
    from . import data as xdata
    names = set()
    for src in (exp.base.get("dataset"), *exp.grid.get("dataset", [])):
        if src is not None:
            names.add(src)
    if not names:
        names.add("digits")
    data_dirs = set(exp.grid.get("data_dir", [exp.base.get("data_dir")]))
    out = {}
    for ds in sorted(names):
        if ds not in xdata.DATASETS:
            continue   # the run's validation names it
        for dd in data_dirs:
            try:
                xdata.load(ds, "test", dd)
            except DataError as exc:
                first = str(exc).splitlines()[0]
                out[ds] = (first.split(": looked for")[0] + f" (searched {dd or 'the default folders'}; "
                           f"see `xbar data info {ds}`)")
    return out


# ---- running one run (in a worker process) ----------------------------------------------------------

_DATA: dict[tuple, tuple] = {}


def _data(dataset: str, data_dir):
    from . import data as xdata
    key = (dataset, data_dir)
    if key not in _DATA:
        _DATA.clear()   # one dataset at a time per worker: memory stays bounded
        _DATA[key] = (xdata.load(dataset, "train", data_dir) + xdata.load(dataset, "test", data_dir))
    return _DATA[key]


def _single_thread():
    """Each worker computes on one core (processes are the parallelism), whoever started it."""
    try:
        import numba
        numba.set_num_threads(1)
    except Exception:   # noqa: BLE001 - a numba without threads support is fine
        pass
    try:
        from threadpoolctl import threadpool_limits
        return threadpool_limits(1)
    except ImportError:
        import contextlib
        return contextlib.nullcontext()


def layer_probe(net) -> dict[str, Any]:
    """Per-layer ranges after an epoch: stored weights and programmed conductances (µS)."""
    import numpy as np
    w_min, w_max, g_min, g_max = [], [], [], []
    for layer in getattr(net, "layers", []):
        if not hasattr(layer, "stored_weights"):
            continue
        W = layer.stored_weights()
        w_min.append(float(np.min(W)))
        w_max.append(float(np.max(W)))
        xb = getattr(layer, "crossbar", None)
        if xb is not None:
            gp, gn = xb.conductances()
            g_min.append(float(min(gp.min(), gn.min())))
            g_max.append(float(max(gp.max(), gn.max())))
        else:
            g_min.append(float("nan"))
            g_max.append(float("nan"))
    return {"layers": {"w_min": w_min, "w_max": w_max, "g_min": g_min, "g_max": g_max}}


def _histograms(net) -> list[dict[str, list]]:
    import numpy as np
    out = []
    for layer in getattr(net, "layers", []):
        xb = getattr(layer, "crossbar", None)
        if xb is None:
            continue
        gp, gn = xb.conductances()
        g = np.concatenate([np.ravel(gp), np.ravel(gn)])
        lo, hi = xb.device.g_min_us, xb.device.g_max_us
        lo, hi = min(lo, float(g.min())), max(hi, float(g.max()))
        counts, edges = np.histogram(g, bins=HIST_BINS, range=(lo, hi))
        out.append({"counts": counts.tolist(), "edges": edges.tolist()})
    return out


def environment() -> dict[str, str]:
    import numba
    import numpy as np

    from .version import __version__
    return {"xbar_version": __version__, "numpy_version": np.__version__, "numba_version": numba.__version__,
            "python": platform.python_version(), "host": platform.node()}


def run_one(payload: dict[str, Any]) -> dict[str, Any]:
    """Train one run and return its store record; never raises (errors become status 'error')."""
    from ._runtime import tune_allocator
    from .train.loop import train
    tune_allocator()
    cfg = payload["config"]
    rec: dict[str, Any] = {"key": payload["key"], "point": payload.get("point", {}), "config": cfg,
                           "env": environment()}
    start = time.perf_counter()
    if cfg.get("command") == "prune":
        _prune_one(cfg, rec, payload.get("cache"))
        rec["wall_seconds"] = time.perf_counter() - start
        rec["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return rec
    try:
        with _single_thread():
            data = _data(cfg["dataset"], cfg.get("data_dir"))
            res = train(cfg, data=data, probe=layer_probe, keep_trainer=True)
        trainer = res.pop("_trainer")
        rec.update(status=res["status"], message=res["message"], test_accuracy=res["test_accuracy"],
                   train_accuracy=res["train_accuracy"], history=res["history"],
                   train_seconds=res["train_seconds"], histograms=_histograms(trainer.net))
        if res["status"] == "diverged":
            rec["diverged_epoch"] = diverged_epoch(res)
    except Exception as exc:   # noqa: BLE001 - one failed run must not stop the sweep
        rec.update(status="error", message=f"{type(exc).__name__}: {exc}", history=[],
                   traceback=traceback.format_exc(limit=20))
    rec["wall_seconds"] = time.perf_counter() - start
    rec["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return rec


def diverged_epoch(res: dict[str, Any]) -> int | None:
    """The epoch a diverged run exploded in: the training loop's own field, else read from its
    message ("... at epoch 3, step 7", "... after epoch 3"), else the first epoch not recorded."""
    import re
    if res.get("diverged_epoch") is not None:
        return int(res["diverged_epoch"])
    m = re.search(r"\bepoch (\d+)", res.get("message") or "")
    return int(m.group(1)) if m else len(res.get("history") or []) + 1


def _pretrained(tcfg, data, cache: str | None) -> str | None:
    """A checkpoint of the network every pruning point of this train config starts from, trained
    once and shared through the sweep's cache folder (None: no cache, each point trains)."""
    if not cache:
        return None
    from .checkpoint import save
    from .train.loop import train
    path = Path(cache) / f"pretrain-{run_key(tcfg.as_dict())}.h5"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        res = train(tcfg, data=data, keep_trainer=True)
        if res["status"] != "ok":
            return None
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save(str(tmp), res.pop("_trainer"), tcfg, res)
        os.replace(tmp, path)
    return str(path)


def _prune_one(cfg: dict[str, Any], rec: dict[str, Any], cache: str | None) -> None:
    from .prune import prune
    from .train.loop import TrainConfig
    pnames = _prune_fields()
    try:
        with _single_thread():
            data = _data(cfg["dataset"], cfg.get("data_dir"))
            tcfg = TrainConfig.from_dict({k: v for k, v in cfg.items() if k not in pnames and k != "command"})
            pcfg = {k: v for k, v in cfg.items() if k in pnames}
            if not pcfg.get("init"):
                pcfg["init"] = _pretrained(tcfg.resolve(), data, cache)
            res = prune(tcfg, pcfg, data=data)
        after, before = res.get("hardware_after") or {}, res.get("hardware_before") or {}
        metrics = {"accuracy_before": res.get("accuracy_before"), "accuracy_drop": res.get("accuracy_drop"),
                   "sparsity_result": res.get("sparsity"), "tiles": res.get("tiles"),
                   "energy_pj": res.get("energy_pj")}
        for k in ("devices", "tiles", "adc_conversions", "energy_pj"):
            if k in before:
                metrics[f"{k}_before"] = before[k]
                metrics[f"{k}_after"] = after.get(k)
        rec.update(status="ok" if res["status"] == "ok" else res["status"], message=res.get("message", ""),
                   test_accuracy=res.get("test_accuracy"), train_accuracy=None, metrics=metrics,
                   history=[{"epoch": r["round"], "test_accuracy": r.get("test_accuracy")} for r in res.get("rounds", [])],
                   train_seconds=res.get("seconds"))
        if res["status"] == "diverged":
            rec["diverged_epoch"] = diverged_epoch(res)
    except Exception as exc:   # noqa: BLE001 - one failed run must not stop the sweep
        rec.update(status="error", message=f"{type(exc).__name__}: {exc}", history=[],
                   traceback=traceback.format_exc(limit=20))


# ---- estimates ------------------------------------------------------------------------------------

_TRAIN_SIZE = {"fmnist": 60000, "mnist": 60000, "cifar10": 50000, "digits": 1437}
# Seconds, fitted on this project's 2-core dev machine, one core per run (README, "Sweeps"):
# float epoch = n MACs A + steps layers B; on-device updates add steps (layers C + weights D).
_A, _B, _C, _D = 6.3e-11, 2.5e-5, 5.0e-5, 2.7e-9


def estimate_seconds(config: dict[str, Any]) -> float:
    """A rough single-core time for a run, for --dry-run and the ETA (not a promise)."""
    from . import data as xdata
    from .nn import NetworkSpec
    from .train import RULES, UPDATES
    n = _TRAIN_SIZE.get(config["dataset"], 10000)
    if config.get("train_limit"):
        n = min(n, config["train_limit"])
    try:
        shape = xdata.image_shape(config["dataset"])
        widths = NetworkSpec.preset(config["network"]).widths(math.prod(shape), xdata.num_classes(config["dataset"]))
        macs = sum(a * b for a, b in zip(widths[:-1], widths[1:]))
        layers = len(widths) - 1
    except Exception:   # noqa: BLE001 - a network without widths (conv): a generous guess
        macs, layers = 500_000, 6
    steps = math.ceil(n / config["batch_size"])
    epoch = n * macs * _A + steps * layers * _B
    epoch += UPDATES.get(config["update"]).time_factor(config) * steps * (layers * _C + macs * _D)
    if config.get("adc_bits") or config.get("dac_bits"):
        epoch *= 3.0
    epoch *= RULES.get(config["rule"]).time_factor(config)
    evals = (n if config.get("eval_train", True) else 0) + 10000
    total = config["epochs"] * (epoch + evals * macs * _A * 0.7) + 0.5
    if config.get("command") == "prune":   # pretraining is shared; retraining rounds are not
        total = total / 8 + config.get("rounds", 1) * config.get("retrain_epochs", 1) * epoch * 1.5
    return total


def _fmt_time(s: float) -> str:
    s = round(s)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


# ---- filtering ----------------------------------------------------------------------------------------

def parse_only(items: Iterable[str]) -> dict[str, list[str]]:
    """['network=mlp-4', 'rule=bp', 'rule=fa'] -> {network: [mlp-4], rule: [bp, fa]}."""
    out: dict[str, list[str]] = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise ConfigError(f"--only {item!r}: expected KEY=VALUE, e.g. --only network=mlp-100x2")
        out.setdefault(k.strip(), []).append(v.strip())
    return out


def filter_runs(runs: list[Run], only: dict[str, list[str]]) -> list[Run]:
    if not only:
        return runs
    known = set(runs[0].config) | {k for r in runs for k in r.point}
    for k in only:
        if k not in known:
            raise ConfigError(f"--only {k}=...: unknown key{suggest(k, sorted(known))}; valid: "
                              f"{', '.join(sorted(known))}")

    def value(r: Run, k: str):
        return r.point[k] if k in r.point else r.config[k]

    def same(v, text: str) -> bool:
        if isinstance(v, float):
            try:
                return float(text) == v
            except ValueError:
                return False
        return str(v).lower() == text.lower() if isinstance(v, bool) else str(v) == text

    kept = [r for r in runs if all(any(same(value(r, k), t) for t in ts) for k, ts in only.items())]
    if not kept:
        raise ConfigError("--only " + " ".join(f"{k}={'|'.join(v)}" for k, v in only.items())
                          + ": no run of the grid matches")
    return kept


# ---- executing --------------------------------------------------------------------------------------

class Progress:
    """One status line: done, failed, running, elapsed and ETA (from the estimates, rescaled)."""

    def __init__(self, total: int, est_total: float, workers: int, stream=None, enabled: bool = True):
        self.total, self.est_total, self.workers = total, est_total, max(workers, 1)
        self.done = self.failed = 0
        self.est_done = 0.0
        self.start = time.perf_counter()
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._last = 0.0

    def update(self, rec: dict[str, Any] | None = None, est: float = 0.0, running: int = 0) -> None:
        if rec is not None:
            self.done += 1
            self.est_done += est
            if rec["status"] != "ok":
                self.failed += 1
        if not self.enabled:
            return
        now = time.perf_counter()
        elapsed = now - self.start
        if self.est_done > 0 and self.done:
            eta = elapsed * (self.est_total - self.est_done) / self.est_done
        else:
            eta = self.est_total / self.workers
        width = 24
        filled = int(width * self.done / max(self.total, 1))
        line = (f"[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} done, {self.failed} failed, "
                f"{running} running | {_fmt_time(elapsed)} elapsed, ETA {_fmt_time(eta)}")
        if rec is not None and rec["status"] != "ok":
            msg = f"  run {rec['key']} {rec['status']}: {rec.get('message', '')[:200]}"
            print(("\r" + " " * 100 + "\r" if self.tty else "") + msg, file=self.stream, flush=True)
        if self.tty:
            print("\r" + line, end="", file=self.stream, flush=True)
        elif rec is not None or now - self._last > 30:
            print(line, file=self.stream, flush=True)
        self._last = now

    def close(self) -> None:
        if self.enabled and self.tty:
            print(file=self.stream, flush=True)


def _local_executor(workers: int):
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    # Spawned workers read the environment at start: one BLAS and one numba thread each.
    saved = {k: os.environ.get(k) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                            "NUMBA_NUM_THREADS")}
    for k in saved:
        os.environ[k] = "1"
    try:
        ex = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                                 initializer=_worker_init, initargs=(os.getpid(),))
        # start the workers now, under this environment
        list(ex.map(_noop, range(workers)))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return ex


def _noop(_):
    return None


def _worker_init(parent: int) -> None:
    # Ctrl-C reaches the whole process group: only the parent handles it (and stops the workers).
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    exit_with_parent(parent)


def exit_with_parent(parent: int, poll_s: float = 1.0) -> None:
    """End this worker process when the sweep (process `parent`) dies, even by SIGKILL: an orphaned
    worker would finish its run for nothing, and hold the resource tracker alive with it.

    Linux delivers SIGKILL at the parent's death (prctl PR_SET_PDEATHSIG; immediate, even inside a
    numba kernel holding the GIL); a thread polling the parent's pid covers other systems.
    """
    import signal
    import threading
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)   # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:   # it died before the line above took effect
        os._exit(1)

    def watch():
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="xbar-exit-with-parent", daemon=True).start()


class _Stop:
    """SIGINT/SIGTERM become a flag the runner polls, so it can stop workers and store cleanly."""

    def __init__(self):
        self.signum = None
        self._saved = {}

    def __enter__(self):
        import signal
        import threading
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._saved[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        import signal
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)
        return False


def run_sweep(exp: Experiment, out: str | os.PathLike, *, workers: int | None = None, cluster: str | None = None,
              only: dict[str, list[str]] | None = None, force: bool = False, dry_run: bool = False,
              retry_failed: bool = False, progress: bool = True, merge_every: float = 30.0,
              print_fn: Callable[[str], None] = print, submit_limit: int | None = None,
              warn: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run (or, with dry_run, list) the spec's runs not yet in store `out`; returns a summary.

    warn: where one-line warnings go (journal entries set aside); default stderr.
    """
    warn = warn or store.warn_stderr
    notes: list[str] = []
    runs = filter_runs(exp.expand(notes=notes), only or {})
    for n in notes:
        print_fn(f"note: {n}")
    out = Path(out)
    workers = workers or os.cpu_count() or 1
    if workers < 1:
        raise ConfigError(f"--workers {workers}: expected an integer >= 1")
    spec_hash = exp.spec_hash()
    stored: dict[str, str] = {}
    if out.exists():
        try:
            meta = store.info(out)
            store.verify(out)   # a damaged store is refused now, not when `xbar report` reads it
        except store.StoreError as exc:
            msg = str(exc) if store.DAMAGED_ADVICE in str(exc) else f"{exc}; choose another --out or move the file away"
            raise ConfigError(f"--out {msg}") from None
        if meta.get("spec_hash") != spec_hash and not force:
            raise ConfigError(f"--out {out} holds results of a different spec (spec hash {meta.get('spec_hash')}, "
                              f"this spec {spec_hash}, from {meta.get('spec_file') or 'unknown file'}); use "
                              "another --out, or --force to add this spec's runs to it")
        stored = meta["runs"]
    # Entries that cannot be stored (torn, empty, another run's key) are set aside: their runs are to do.
    for key in store.read_journal(out, quarantine=not dry_run, warn=warn):
        stored.setdefault(key, "journal")
    todo = [r for r in runs if r.key not in stored or (retry_failed and stored[r.key] == "error")]
    # Workers side by side share caches and memory bandwidth: measured 1.35x slower runs with two
    # workers on the 2-core dev machine (seed study, 46 runs) than the one-run fit of the estimate.
    share = 1.0 if workers == 1 else 1.35
    est = {r.key: share * estimate_seconds(r.config) for r in todo}
    est_total = sum(est.values())
    summary = {"runs": len(runs), "stored": len(runs) - len(todo), "todo": len(todo),
               "estimated_seconds": est_total / workers, "out": str(out), "spec_hash": spec_hash}
    if dry_run:
        for r in runs:
            state = stored.get(r.key, "todo")
            print_fn(f"{r.index + 1:5d}  {r.key}  {state:8s}  {r.label()}")
        print_fn(f"{len(runs)} runs: {summary['stored']} stored, {len(todo)} to run; estimated "
                 f"{_fmt_time(est_total / workers)} on {workers} worker(s) (rough, from this machine's "
                 "timings)")
        return summary
    store.check_writable(out)
    store.cleanup(out)   # copies of a merge, torn journal temporaries: left by a killed sweep
    # Connect first: a cluster that cannot be reached leaves no empty store behind.
    client = _dask_client(cluster) if cluster and todo else None
    try:
        return _execute(exp, out, runs, todo, est, summary, workers, client, force, progress, merge_every,
                        print_fn, submit_limit, warn)
    finally:
        if client is not None:
            client.close()


def _execute(exp, out: Path, runs, todo, est, summary, workers, client, force, progress, merge_every,
             print_fn, submit_limit, warn) -> dict[str, Any]:
    spec_hash = summary["spec_hash"]
    if not out.exists():
        store.create(out, exp.spec() | {"name": exp.name}, spec_hash, exp.file)
    elif force and store.info(out).get("spec_hash") != spec_hash:
        store.merge(out, [], spec_hash=spec_hash, warn=warn)
    if store.pending(out):
        store.merge(out, warn=warn)
    if not todo:
        print_fn(f"all {len(runs)} runs already stored in {out}")
        return summary | {"done": 0, "failed": 0, "diverged": 0, "seconds": 0.0}

    order = sorted(todo, key=lambda r: -est[r.key])   # longest first: the last minutes stay busy
    if submit_limit is not None:
        order = order[:submit_limit]
    prog = Progress(len(order), sum(est[r.key] for r in order), workers, enabled=progress)
    start = time.perf_counter()
    last_merge = time.perf_counter()
    done = failed = diverged = 0

    def finished(rec: dict[str, Any], running: int) -> None:
        nonlocal done, failed, diverged, last_merge
        store.write_journal(out, rec)
        done += 1
        failed += rec["status"] != "ok"
        diverged += rec["status"] == "diverged"
        prog.update(rec, est.get(rec["key"], 0.0), running)
        if time.perf_counter() - last_merge > merge_every:
            store.merge(out, warn=warn)
            last_merge = time.perf_counter()

    cache = str(out) + ".cache"   # shared pretrained networks of pruning sweeps
    payloads = [{"key": r.key, "point": r.point, "config": r.config, "cache": cache} for r in order]
    try:
        if client is not None:
            _run_dask(client, payloads, finished)
        else:
            _run_local(workers, payloads, finished)
    finally:
        prog.close()
        store.merge(out, warn=warn)
    seconds = time.perf_counter() - start
    print_fn(f"{done} runs finished ({failed - diverged} failed, {diverged} diverged) in {_fmt_time(seconds)}; "
             f"store: {out}")
    return summary | {"done": done, "failed": failed, "diverged": diverged, "seconds": seconds}


def _run_local(workers: int, payloads: list[dict], finished) -> None:
    from concurrent.futures import FIRST_COMPLETED, wait
    if workers == 1 and os.environ.get("XBAR_SWEEP_INPROCESS") == "1":
        for p in payloads:           # debugging aid: no subprocesses
            finished(run_one(p), 0)
        return
    ex = _local_executor(workers)
    stop = _Stop()
    try:
        queue = list(reversed(payloads))
        running = {}
        with stop:
            while (queue or running) and stop.signum is None:
                while queue and len(running) < workers * 2:
                    p = queue.pop()
                    running[ex.submit(run_one, p)] = p
                done_set, _ = wait(running, timeout=0.5, return_when=FIRST_COMPLETED)
                _collect(done_set, running, workers, finished)
    finally:
        if stop.signum is not None or sys.exc_info()[0] is not None:
            for proc in list((getattr(ex, "_processes", None) or {}).values()):
                proc.terminate()   # runs in flight are lost by design; finished ones are journaled
        ex.shutdown(wait=False, cancel_futures=True)
    if stop.signum is not None:
        raise KeyboardInterrupt


def _collect(done_set, running, workers, finished) -> None:
    from concurrent.futures.process import BrokenProcessPool
    for fut in done_set:
        running.pop(fut)
        try:
            rec = fut.result()
        except BrokenProcessPool:
            raise XbarError("a worker process died (killed or out of memory); finished runs are "
                            "stored: re-run the same command to continue") from None
        finished(rec, min(len(running), workers))


def _dask_client(address: str):
    try:
        from distributed import Client
    except ImportError:
        raise ConfigError("--cluster needs dask.distributed: pip install 'xbar-sim[dask]'") from None
    try:
        return Client(address, timeout="20s")
    except (OSError, TimeoutError) as exc:
        raise ConfigError(f"--cluster {address}: cannot reach a Dask scheduler there ({exc})") from None


def _run_dask(client, payloads: list[dict], finished) -> None:
    from distributed import as_completed
    futures = [client.submit(run_one, p, pure=False, key=f"xbar-run-{p['key']}") for p in payloads]
    n_workers = max(len(client.scheduler_info().get("workers", {})), 1)
    pending_n = len(futures)
    for fut in as_completed(futures):
        pending_n -= 1
        try:
            rec = fut.result()
        except Exception as exc:   # noqa: BLE001 - a lost worker: record, go on
            key = str(fut.key).removeprefix("xbar-run-")
            src = next(q for q in payloads if q["key"] == key)
            rec = {"key": key, "point": src["point"], "config": src["config"], "status": "error",
                   "message": f"dask: {type(exc).__name__}: {exc}", "history": [], "env": {}}
        finished(rec, min(pending_n, n_workers))
