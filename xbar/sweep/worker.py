"""One run in a worker process (train, or train once and prune), its record for the journal, and
the rough time estimates behind --dry-run and the ETA."""

from __future__ import annotations

import itertools
import math
import os
import platform
import time
import traceback
from pathlib import Path
from typing import Any

from ..store import run_key
from .spec import HIST_BINS, prune_fields

# ---- running one run (in a worker process) ----------------------------------------------------------

_DATA: dict[tuple, tuple] = {}


def _data(dataset: str, data_dir):
    from .. import data as xdata
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
    except Exception:   # noqa: BLE001, S110 - a numba without threads support is fine
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

    from ..version import __version__
    return {"xbar_version": __version__, "numpy_version": np.__version__, "numba_version": numba.__version__,
            "python": platform.python_version(), "host": platform.node()}


def run_one(payload: dict[str, Any]) -> dict[str, Any]:
    """Train one run and return its store record; never raises (errors become status 'error')."""
    from .._runtime import tune_allocator
    from ..train.loop import train
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
        _fill(rec, res)
    except Exception as exc:   # noqa: BLE001 - one failed run must not stop the sweep
        rec.update(status="error", message=f"{type(exc).__name__}: {exc}", history=[],
                   traceback=traceback.format_exc(limit=20))
    rec["wall_seconds"] = time.perf_counter() - start
    rec["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return rec


def run_group(payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Train the runs of one group as a stack (xbar.train.train_many) and return their store
    records, each what run_one returns for it alone; a group that cannot be built as a stack
    (e.g. a variant's device cannot be programmed) runs its variants one by one instead."""
    if len(payloads) == 1:
        return [run_one(payloads[0])]
    from .._runtime import tune_allocator
    from ..train.many import train_many
    tune_allocator()
    start = time.perf_counter()
    cfgs = [p["config"] for p in payloads]
    try:
        with _single_thread():
            data = _data(cfgs[0]["dataset"], cfgs[0].get("data_dir"))
            results = train_many(cfgs, data=data, probe=layer_probe, keep_trainer=True)
    except Exception:   # noqa: BLE001 - the group as single runs, each recording its own error
        return [run_one(p) for p in payloads]
    wall = (time.perf_counter() - start) / len(payloads)
    out = []
    for p, res in zip(payloads, results):
        rec: dict[str, Any] = {"key": p["key"], "point": p.get("point", {}), "config": p["config"],
                               "env": environment() | {"stacked": str(len(payloads))}}
        _fill(rec, res)
        rec["wall_seconds"] = wall
        rec["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        out.append(rec)
    return out


def _fill(rec: dict[str, Any], res: dict[str, Any]) -> None:
    """A training result (train or train_many) into its store record."""
    trainer = res.pop("_trainer")
    rec.update(status=res["status"], message=res["message"], test_accuracy=res["test_accuracy"],
               train_accuracy=res["train_accuracy"], history=res["history"],
               train_seconds=res["train_seconds"], histograms=_histograms(trainer.net))
    if res.get("after_programming"):
        # accuracy after drift: result columns test_accuracy_at_<t>s (xbar report plots them vs t)
        rec["metrics"] = {f"test_accuracy_at_{a['t_s']:g}s": a["test_accuracy"]
                          for a in res["after_programming"]}
    if res["status"] == "diverged":
        rec["diverged_epoch"] = diverged_epoch(res)


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
    from ..checkpoint import save
    from ..train.loop import train
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
    from ..prune import prune
    from ..train.loop import TrainConfig
    pnames = prune_fields()
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
    return sum(_estimate_parts(config))


def compute_share(config: dict[str, Any]) -> float:
    """The part of estimate_seconds that grows with the network's size (products, rounding,
    evaluation): what every variant of a stack still costs; the rest is per-step overhead."""
    return _estimate_parts(config)[0]


def _estimate_parts(config: dict[str, Any]) -> tuple[float, float]:
    """(compute, per-step overhead) seconds of a run alone."""
    from .. import data as xdata
    from ..nn import NetworkSpec
    from ..train import RULES, UPDATES
    n = _TRAIN_SIZE.get(config["dataset"], 10000)
    if config.get("train_limit"):
        n = min(n, config["train_limit"])
    try:
        shape = xdata.image_shape(config["dataset"])
        widths = NetworkSpec.preset(config["network"]).widths(math.prod(shape), xdata.num_classes(config["dataset"]))
        macs = sum(a * b for a, b in itertools.pairwise(widths))
        layers = len(widths) - 1
    except Exception:   # noqa: BLE001 - a network without widths (conv): a generous guess
        macs, layers = 500_000, 6
    steps = math.ceil(n / config["batch_size"])
    tf = UPDATES.get(config["update"]).time_factor(config)
    scale = (3.0 if config.get("adc_bits") or config.get("dac_bits") else 1.0) * RULES.get(config["rule"]).time_factor(config)
    compute = (n * macs * _A + tf * steps * macs * _D) * scale     # per epoch
    overhead = (steps * layers * _B + tf * steps * layers * _C) * scale
    evals = (n if config.get("eval_train", True) else 0) + 10000
    if config.get("command") == "prune":   # pretraining is shared; retraining rounds are not
        total = config["epochs"] * (compute + overhead + evals * macs * _A * 0.7) + 0.5
        return total / 8 + config.get("rounds", 1) * config.get("retrain_epochs", 1) * (compute + overhead) * 1.5, 0.0
    return config["epochs"] * (compute + evals * macs * _A * 0.7), config["epochs"] * overhead + 0.5


def fmt_time(s: float) -> str:
    s = round(s)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"
