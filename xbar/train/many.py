"""``train_many``: variants of one run trained as one stack (:mod:`xbar.train.stack`), each result
what :func:`xbar.train.train` returns for it alone."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .. import data as xdata
from ..kernels import serial_kernels
from .config import TrainConfig
from .stack import Diverging, StackTrainer
from .trainer import evaluate


def train_many(configs: list, *, data: tuple | None = None, on_epoch: Callable[[int, dict], None] | None = None,
               keep_trainer: bool = False, probe: Callable | None = None) -> list[dict[str, Any]]:
    """Train variants of one run together (see the module docstring); returns one result per
    config, each what :func:`xbar.train.train` returns for it alone.

    configs: TrainConfigs (or dicts) that differ only in DEVICE_SIDE fields and all stack
    (:func:`stack_blocker`); otherwise ConfigError. on_epoch(i, entry): config i's history entry.
    data, keep_trainer, probe: as for train().
    """
    from .loop import after_programming, hardware_summary, load_data, read_net, record_epoch
    start = time.perf_counter()
    cfgs = [(c if isinstance(c, TrainConfig) else TrainConfig.from_dict(c)).resolve() for c in configs]
    Xtr, ytr, Xte, yte = load_data(cfgs[0], data)
    st = StackTrainer(cfgs, Xtr.shape[1], xdata.num_classes(cfgs[0].dataset))
    K = len(cfgs)
    history: list[list[dict]] = [[] for _ in range(K)]
    status, message = ["ok"] * K, [""] * K
    train_seconds = [0.0] * K
    n, bs = len(Xtr), cfgs[0].batch_size
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for epoch in range(1, cfgs[0].epochs + 1):
            if not len(st.alive):
                break
            perm = st.shuffle.permutation(n)
            t0 = time.perf_counter()
            st.rule0.start_epoch(epoch)
            if st.own and cfgs[0].adc_bits is not None and epoch > 1:   # as Trainer.fit recalibrates
                Xcal = Xtr[perm[:max(bs, 256)]]
                for j in st.alive:
                    st.trainers[int(j)].calibrate(Xcal)
            st.step_loss[:] = 0.0
            st.step_correct[:] = 0
            steps = 0
            with serial_kernels():   # as Trainer.run_epoch runs its steps
                for s in range(0, n, bs):
                    idx = perm[s:s + bs]
                    st.step(Xtr[idx], ytr[idx], Diverging(len(st.alive)))
                    steps += 1
                    for j, msg in st.departed:
                        status[j], message[j] = "diverged", f"{msg} at epoch {epoch}, step {steps}"
                        train_seconds[j] += time.perf_counter() - t0
                    st.departed.clear()
                    if not len(st.alive):
                        break
            seconds = time.perf_counter() - t0
            if not len(st.alive):
                break
            st.sched.step()
            ended = []
            for k in range(len(st.alive)):
                j = int(st.alive[k])
                train_seconds[j] += seconds
                t = st.sync(k)
                msg = record_epoch(history[j], None if on_epoch is None else (lambda e, j=j: on_epoch(j, e)),
                                   cfgs[j], epoch, lambda X, y, net=t.net, c=cfgs[j]: evaluate(read_net(c, net), X, y),
                                   (Xtr, ytr, Xte, yte), float(st.step_loss[k]), steps, seconds, st.opt.lr,
                                   int(st.step_correct[k]))
                if probe is not None:
                    history[j][-1].update(probe(t.net))
                if msg:
                    status[j], message[j] = "diverged", msg
                    ended.append(k)
            if ended:
                keep = np.ones(len(st.alive), bool)
                keep[ended] = False
                st._keep(keep)
    results = []
    total = time.perf_counter() - start
    for j, cfg in enumerate(cfgs):
        t = st.trainers[j]
        ok = status[j] == "ok"
        after = after_programming(cfg, t.net, Xte, yte) if ok and cfg.eval_at_s else None
        res = {"status": status[j], "message": message[j],
               "test_accuracy": history[j][-1]["test_accuracy"] if history[j] and ok else None,
               "train_accuracy": history[j][-1]["train_accuracy"] if history[j] and ok else None,
               "history": history[j], "seconds": total / K, "train_seconds": train_seconds[j],
               "config": cfg.as_dict(),
               "network": {"name": t.spec.name, "widths": t.spec.widths(Xtr.shape[1], t.net.layers[-1].n_out)},
               "hardware": hardware_summary(t.net), "stacked": K}
        if after is not None:
            res["after_programming"] = after
        if keep_trainer:
            res["_trainer"] = t
        results.append(res)
    return results


__all__ = ["train_many"]
