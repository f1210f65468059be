"""One pruning run: train (or load, ``init``), prune round by round with retraining, and report
what accuracy costs and what hardware is saved. Retraining is ``Trainer.fit``, the training loop's
own epochs."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .. import cost as xcost
from .. import data as xdata
from ..errors import ConfigError
from ..nn import Network, NetworkSpec
from ..train import TrainConfig, Trainer, evaluate, train
from ..train.loop import load_data
from ..train.trainer import Diverged, int_seed
from .config import PruneConfig, PruneStop
from .criteria import CRITERIA
from .masks import apply_masks, current_masks, dense_chain, groups, live_units, sparsity
from .search import Pruner, calibrate


def retrain(trainer, X: np.ndarray, y: np.ndarray, *, epochs: int = 1, steps: int | None = None,
            lr: float | None = None, layers=None) -> int:
    """Run more optimizer steps on an existing Trainer: `epochs` passes, or `steps` steps.

    lr: constant learning rate for these steps (None: the optimizer's current one). layers: train
    only these layer indices. Returns the steps taken; raises Diverged like the training loop.
    (``trainer.fit``, with the ADCs recalibrated before every pass.)
    """
    return trainer.fit(X, y, epochs=epochs, steps=steps, lr=lr, layers=layers)


def check_supported(network: str, pcfg: PruneConfig) -> None:
    """Structured and data-driven methods know dense chains only (a unit of layer l is column j of
    layer l and row j of layer l + 1); a network with other layers gets a ConfigError up front."""
    kinds = {layer.kind for layer in NetworkSpec.preset(network).layers}
    if kinds <= {"dense"}:
        return
    if pcfg.granularity == "weight" and CRITERIA.get(pcfg.criterion).any_network:
        return
    unstructured = [c.name for c in CRITERIA.classes() if c.any_network]
    raise ConfigError(f"network {network!r} has {', '.join(sorted(kinds - {'dense'}))} layers: method "
                      f"{pcfg.method!r} handles dense networks only for now; use method "
                      f"{' or '.join(map(repr, unstructured))} (unstructured)")


def trainer_from_run(path: str, cfg, n_in: int, n_classes: int) -> Trainer:
    """A Trainer for `cfg` with the weights, biases and masks of a saved run."""
    from ..checkpoint import load
    run = load(path)
    src = run.network().layers
    tr = Trainer(cfg, n_in, n_classes)
    if [(a.n_in, a.n_out) for a in src] != [(b.n_in, b.n_out) for b in tr.net.layers]:
        raise ConfigError(f"init = {path!r}: its layers {[(a.n_in, a.n_out) for a in src]} do not match "
                          f"network {cfg.network!r} on {cfg.dataset!r}")
    for a, b in zip(src, tr.net.layers):
        b.set_weights(a.W, a.b)
    tr.update.attach(tr.net, [int_seed(cfg.seed, 4 + i) for i in range(len(tr.net.layers))], tr.feedback)
    apply_masks(tr, [xcost.layer_mask(a) for a in src])
    return tr


def hardware_summary(net: Network, cost: dict[str, Any]) -> dict[str, Any]:
    """Cost totals plus the widths left: inputs, units (dense chains) or outputs of every layer."""
    masks = current_masks(net)
    widths = [int(live_units(masks, ("input", 0)).sum())]
    if dense_chain(net):
        widths += [int(live_units(masks, g).sum()) for g in groups(net, inputs=False)]
        widths.append(net.layers[-1].n_out)
    else:
        widths += [int(m.any(axis=0).sum()) for m in masks]
    return xcost.summary(cost) | {"widths": widths}


class Rounds:
    """The rounds (or search steps) of one run: recalibrate, retrain, evaluate and record each."""

    def __init__(self, tr, pr: Pruner, pcfg: PruneConfig, data, on_round):
        self.tr, self.pr, self.p = tr, pr, pcfg
        self.Xtr, self.ytr, self.Xte, self.yte = data
        self.on_round = on_round
        self.entries: list[dict[str, Any]] = []

    def retrain(self, layers=None) -> None:
        p = self.p
        self.tr.fit(self.Xtr, self.ytr, epochs=p.retrain_epochs, steps=p.retrain_steps, lr=p.retrain_lr,
                    layers=layers)

    def finish(self, r: int, target: float, changed: list[int], info: dict | None = None) -> None:
        p, net = self.p, self.tr.net
        calibrate(self.tr, self.Xtr)
        if changed and (p.retrain_epochs or p.retrain_steps) and (
                p.schedule == "iterative" or p.method != "hardware"):
            self.retrain(changed if p.retrain_pruned_only else None)
        masks = current_masks(net)
        total = self.pr.cost(masks)["total"]
        entry = {"round": r, "target": target} | sparsity(masks) | {
            "tiles": total["tiles"], "energy_pj": total["energy_pj"],
            p.budget_metric: total[p.budget_metric]} | (info or {})
        _, entry["test_accuracy"] = evaluate(net, self.Xte, self.yte)
        self.entries.append(entry)
        if self.on_round:
            self.on_round(entry)


def search_hardware(rounds: Rounds) -> None:
    """The hardware method: NetAdapt steps until the cost is at most budget × the original."""
    p, pr, tr = rounds.p, rounds.pr, rounds.tr
    m0 = pr.metric0
    target, step = p.budget * m0, 0
    while (now := pr.metric(current_masks(tr.net))) > target * (1 + 1e-12):
        step += 1
        want = max(now - p.hw_step * m0, target)
        pr.scores(fresh=step == 1)
        masks, info = pr.hardware_step(current_masks(tr.net), want)
        rounds.finish(step, want / m0, apply_masks(tr, masks), info)
    if p.schedule == "one-shot" and (p.retrain_epochs or p.retrain_steps):
        rounds.retrain()


def prune_in_rounds(rounds: Rounds) -> None:
    """Ranking and crossbar methods: round r prunes to the r-th geometric target, then retrains."""
    p, pr, tr = rounds.p, rounds.pr, rounds.tr
    m0, tiles0, R = pr.metric0, pr.cost0["total"]["tiles"], p.rounds
    for r in range(1, R + 1):
        pr.scores(fresh=r == 1)
        masks, stop = current_masks(tr.net), None
        if p.method == "crossbar":
            if p.budget is not None:
                shown = p.budget ** (r / R)
                value, limit = pr.metric, shown * m0 * (1 + 1e-12)
            else:
                shown = 1 - (1 - p.sparsity) ** (r / R)
                value, limit = pr.total_tiles, (1 - shown) * tiles0 + 1e-9
            while value(masks) > limit:
                try:
                    masks = pr.crossbar_step(masks)
                except PruneStop as exc:   # keep the arrays released so far
                    stop = exc
                    break
        elif p.budget is not None:
            shown = p.budget ** (r / R)
            masks = pr.ranked_to_budget(shown * m0, masks)
        else:
            shown = 1 - (1 - p.sparsity) ** (r / R)
            masks = pr.ranked(shown, masks)
        rounds.finish(r, shown, apply_masks(tr, masks))
        if stop is not None:
            raise stop


def _pretrained(tcfg, pcfg, data, on_epoch):
    """(trainer, pretrain summary, failed result or None): the saved run of ``init``, or training."""
    Xtr = data[0]
    if pcfg.init:
        tr = trainer_from_run(pcfg.init, tcfg, Xtr.shape[1], xdata.num_classes(tcfg.dataset))
        return tr, {"init": pcfg.init}, None
    res = train(tcfg, data=data, on_epoch=on_epoch, keep_trainer=True)
    tr = res.pop("_trainer")
    pre = {k: res[k] for k in ("status", "message", "test_accuracy", "train_accuracy", "train_seconds")}
    pre["epochs"] = len(res["history"])
    if res["status"] != "ok":
        return tr, pre, {"status": res["status"], "message": f"training before pruning: {res['message']}",
                         "pretrain": pre, "prune": pcfg.as_dict(), "config": tcfg.as_dict()}
    return tr, pre, None


def prune(train_config, prune_config, *, data: tuple | None = None,
          on_epoch: Callable[[dict], None] | None = None, on_round: Callable[[dict], None] | None = None,
          keep_trainer: bool = False) -> dict[str, Any]:
    """Train (or load, ``init``), prune and retrain one network; returns a JSON-ready dict.

    train_config: TrainConfig or dict (as for xbar.train.train); prune_config: PruneConfig or dict.
    Keys: status ("ok", "stopped": a clear stop, what was done is kept; "diverged"), message,
    accuracy_before/accuracy_after/accuracy_drop/test_accuracy (%, on the test set, through the
    substrate), sparsity (of all weights) and sparsity_layers, hardware_before/hardware_after (cost
    model totals plus the widths that remain), saved (fraction of each total saved), rounds (one
    entry per round or search step), prune and config (the resolved configs), pretrain, seconds.
    """
    start = time.perf_counter()
    tcfg = train_config if isinstance(train_config, TrainConfig) else TrainConfig.from_dict(train_config)
    tcfg = tcfg.resolve()
    pcfg = prune_config if isinstance(prune_config, PruneConfig) else PruneConfig.from_dict(prune_config)
    pcfg = pcfg.resolve()
    check_supported(tcfg.network, pcfg)
    if pcfg.retrain_lr is None:
        pcfg = pcfg.with_(retrain_lr=0.1 * tcfg.lr)
    Xtr, ytr, Xte, yte = load_data(tcfg, data)
    tr, pre, failed = _pretrained(tcfg, pcfg, (Xtr, ytr, Xte, yte), on_epoch)
    if failed is not None:
        return failed | {"seconds": time.perf_counter() - start}
    net = tr.net
    calibrate(tr, Xtr)
    _, acc0 = evaluate(net, Xte, yte)
    pr = Pruner(tr, pcfg, (Xtr, ytr, Xte, yte))
    before = hardware_summary(net, pr.cost0)
    pr.metric0 = pr.metric(current_masks(net))
    rounds = Rounds(tr, pr, pcfg, (Xtr, ytr, Xte, yte), on_round)
    status, message = "ok", ""
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            (search_hardware if pcfg.method == "hardware" else prune_in_rounds)(rounds)
    except PruneStop as exc:
        status, message = "stopped", str(exc)
    except Diverged as exc:
        status, message = "diverged", f"retraining: {exc}"

    masks = current_masks(net)
    acc1 = None
    if status != "diverged":
        calibrate(tr, Xtr)
        _, acc1 = evaluate(net, Xte, yte)
    after = hardware_summary(net, pr.cost(masks))
    saved = {k: (1 - after[k] / before[k]) if before[k] else 0.0 for k in xcost.SUMMARY}
    result = {
        "status": status, "message": message, "method": pcfg.method,
        "accuracy_before": acc0, "accuracy_after": acc1, "test_accuracy": acc1,
        "accuracy_drop": None if acc1 is None else acc0 - acc1,
        "sparsity": sparsity(masks)["sparsity"], "sparsity_layers": sparsity(masks)["sparsity_layers"],
        "hardware_before": before, "hardware_after": after, "saved": saved,
        "tiles": after["tiles"], "energy_pj": after["energy_pj"],
        "rounds": rounds.entries, "pretrain": pre, "prune": pcfg.as_dict(), "config": tcfg.as_dict(),
        "cost_constants": pr.constants.name, "seconds": time.perf_counter() - start,
    }
    if keep_trainer:
        result["_trainer"] = tr
    return result
