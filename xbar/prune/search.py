"""The Pruner: one method applied to a trainer's network, round by round (ranking to a sparsity or
a budget, the crossbar-aware greedy, the hardware-aware NetAdapt search); it holds the scores,
the cost model of every layer and the scoring, holdout and training data."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from .. import cost as xcost
from ..nn import Network
from ..train import evaluate
from ..train.trainer import stream
from .config import PruneConfig, PruneStop
from .criteria import CRITERIA, Activity, activity, unit_scores, weight_scores, weights
from .masks import (
    affected,
    apply_masks,
    check_not_empty,
    count,
    current_masks,
    groups,
    live_units,
    normalised,
    partial_arrays,
    prune_lowest,
    remove_units,
)


def calibrate(trainer, X: np.ndarray) -> None:
    """Recalibrate the trainer's ADCs on the first training samples (a no-op without ADCs)."""
    if trainer.cfg.adc_bits is not None:
        trainer.calibrate(X[:max(trainer.cfg.batch_size, 256)])


class Pruner:
    """Applies one method to a trainer's network, round by round; holds scores, costs and data."""

    def __init__(self, trainer, pcfg: PruneConfig, data):
        self.tr, self.p, self.net = trainer, pcfg, trainer.net
        self.Xtr, self.ytr, self.Xte, self.yte = data
        self.cfg = trainer.cfg
        self.rng = stream(self.cfg.seed, 100)
        idx = stream(self.cfg.seed, 101).permutation(len(self.Xtr))[:pcfg.score_samples]
        self.Xs, self.ys = self.Xtr[idx], self.ytr[idx]
        h = min(pcfg.holdout, len(self.Xtr))
        self.Xh, self.yh = self.Xtr[-h:], self.ytr[-h:]
        self.constants = xcost.CostConstants.preset(pcfg.costs)
        fallback = xcost.Periphery.from_config(self.cfg)
        self.per = [xcost.Periphery.from_crossbar(layer.crossbar) if layer.crossbar is not None else fallback
                    for layer in self.net.layers]
        self.bias = [layer.b is not None for layer in self.net.layers]
        self.reads = [xcost.layer_reads(layer) for layer in self.net.layers]
        self.metric0 = None
        self.cost0 = self.cost(current_masks(self.net))
        self.act = None

    # -- costs --
    def cost(self, masks) -> dict[str, Any]:
        return xcost.network_cost(masks, self.per, self.constants, biases=self.bias, reads=self.reads)

    def layer_metric(self, mask, i: int) -> float:
        c = xcost.layer_counts(mask, self.per[i], has_bias=self.bias[i], reads=self.reads[i])
        if self.p.budget_metric in xcost.COUNTS:
            return float(c[self.p.budget_metric])
        return float(xcost.layer_estimates(c, self.per[i], self.constants)[self.p.budget_metric])

    def metric(self, masks) -> float:
        return sum(self.layer_metric(m, i) for i, m in enumerate(masks))

    def total_tiles(self, masks) -> int:
        return sum(self.tiles(m, i) for i, m in enumerate(masks))

    def tiles(self, mask, i: int) -> int:
        return xcost.layer_counts(mask, self.per[i], has_bias=self.bias[i])["tiles"]

    # -- scores (cached until the next activity pass, so one round ranks consistently) --
    def scores(self, fresh: bool = False) -> Activity:
        if self.act is None or fresh or self.p.recompute:
            substrate = self.p.score_on == "substrate"
            if CRITERIA.get(self.p.criterion).needs_data:
                self.act = activity(self.net, self.Xs, self.ys, substrate)
            else:   # weight-only criteria need no pass over data
                self.act = Activity([], [], [], [], None, weights(self.net, substrate))
            self._cache: dict[tuple, np.ndarray] = {}
        return self.act

    def unit(self, g: tuple[str, int]) -> np.ndarray:
        key = ("unit",) + tuple(g)
        if key not in self._cache:
            self._cache[key] = unit_scores(self.p.criterion, self.act, g, self.rng)
        return self._cache[key]

    def weight(self, i: int) -> np.ndarray:
        key = ("weight", i)
        if key not in self._cache:
            self._cache[key] = weight_scores(self.p.criterion, self.act, i, self.rng)
        return self._cache[key]

    # -- ranking methods --
    def ranked(self, s: float, masks) -> list[np.ndarray]:
        """Masks with sparsity s under the ranking method (weights or hidden units)."""
        p = self.p
        if p.granularity == "weight":
            layers = range(len(masks))
            scores = [self.weight(i) for i in layers]
            out = list(masks)
            if p.scope == "layer":
                for i in layers:
                    (rm,) = prune_lowest([scores[i]], [masks[i]], count(s, masks[i].size))
                    out[i] = masks[i] & ~rm
            else:
                sc = [normalised(scores[i], masks[i], p.normalise) for i in layers]
                total = sum(m.size for m in masks)
                rms = prune_lowest(sc, list(masks), count(s, total))
                out = [m & ~r for m, r in zip(masks, rms)]
            check_not_empty(out, self.net)
            return out
        gs = groups(self.net, inputs=False)
        scores = [self.unit(g) for g in gs]
        lives = [live_units(masks, g) for g in gs]
        if p.scope == "layer":
            rms = [prune_lowest([sc], [lv], count(s, lv.size))[0] for sc, lv in zip(scores, lives)]
        else:
            sc = [normalised(x, lv, p.normalise) for x, lv in zip(scores, lives)]
            rms = prune_lowest(sc, lives, count(s, sum(lv.size for lv in lives)))
        out = list(masks)
        for g, rm in zip(gs, rms):
            if rm.any():
                out = remove_units(out, g, np.flatnonzero(rm))
        check_not_empty(out, self.net)
        return out

    def ranked_to_budget(self, target: float, masks) -> list[np.ndarray]:
        """The least sparsity (bisection, fixed ranking) whose cost is at most `target`."""
        best = None
        lo, hi = 0.0, 1.0 - 1e-9
        for _ in range(40):
            mid = 0.5 * (lo + hi)
            try:
                trial = self.ranked(mid, masks)
            except PruneStop:
                hi = mid
                continue
            if self.metric(trial) <= target:
                best, hi = trial, mid
            else:
                lo = mid
        if best is None:
            raise PruneStop(f"budget cannot be met by method {self.p.method!r}: {self.p.budget_metric} "
                            f"stays above {target:.4g} at every sparsity that keeps each layer non-empty")
        return best

    # -- crossbar-aware greedy --
    def crossbar_step(self, masks) -> list[np.ndarray]:
        """One greedy action that releases at least one array, at the least damage per cost saved."""
        p = self.p
        now = self.metric(masks)
        best = None
        for g in groups(self.net, p.prune_inputs):
            live = live_units(masks, g)
            sc = self.unit(g)
            order = np.flatnonzero(live)[np.argsort(sc[live], kind="stable")]
            mass = sc[live].sum()
            aff = affected(g)
            base = sum(self.tiles(masks[i], i) for i in aff)
            for k in range(1, len(order)):
                trial = remove_units(masks, g, order[:k])
                if sum(self.tiles(trial[i], i) for i in aff) < base:
                    saved = now - self.metric(trial)
                    damage = sc[order[:k]].sum() / mass if mass > 0 else 0.0
                    if saved > 0 and (best is None or damage / saved < best[0]):
                        best = (damage / saved, trial)
                    break
        for i, m in enumerate(masks):
            ws = self.weight(i)
            total = ws[m].sum()
            for rows, cols, excess in partial_arrays(m, self.per[i], self.bias[i]):
                if excess >= len(rows):
                    continue
                row_mass = (ws[np.ix_(rows, cols)] * m[np.ix_(rows, cols)]).sum(axis=1)
                drop = rows[np.argsort(row_mass, kind="stable")[:excess]]
                trial = list(masks)
                trial[i] = m.copy()
                trial[i][np.ix_(drop, cols)] = False
                try:
                    check_not_empty(trial, self.net)
                except PruneStop:
                    continue
                saved = now - self.metric(trial)
                damage = ws[np.ix_(drop, cols)][m[np.ix_(drop, cols)]].sum() / total if total > 0 else 0.0
                if saved > 0 and (best is None or damage / saved < best[0]):
                    best = (damage / saved, trial)
        if best is None:
            raise PruneStop("no row, column or array can be removed without emptying a layer")
        return best[1]

    # -- hardware-aware search --
    def hardware_step(self, masks, want: float) -> tuple[list[np.ndarray], dict]:
        """One NetAdapt step: per group, the fewest weakest units whose removal brings the cost to
        `want`; keep the proposal with the least holdout-accuracy drop per unit of cost saved."""
        p = self.p
        now = self.metric(masks)
        _, acc_now = evaluate(self.net, self.Xh, self.yh)
        proposals = []
        for g in groups(self.net, p.prune_inputs):
            live = live_units(masks, g)
            sc = self.unit(g)
            order = np.flatnonzero(live)[np.argsort(sc[live], kind="stable")]
            if len(order) < 2:
                continue
            k, trial, value = self._fewest(masks, g, order, want)
            if value >= now:
                continue
            loss, acc = self.finetuned_scores(trial) if p.hw_finetune_steps else self.trial_scores(trial)
            proposals.append({"group": list(g), "units": k, "cost": value, "accuracy": acc, "loss": loss,
                              "key": ((acc_now - acc) / ((now - value) / self.metric0), loss), "masks": trial})
        if not proposals:
            raise PruneStop(f"budget cannot be met: no group can lose more units ({p.budget_metric} at "
                            f"{now / self.metric0:.3f} of the original)")
        best = min(proposals, key=lambda q: q["key"])
        info = {k: v for k, v in best.items() if k not in ("masks", "key")}
        info["proposals"] = [{k: v for k, v in q.items() if k not in ("masks", "key")} for q in proposals]
        return best["masks"], info

    def _fewest(self, masks, g, order, want):
        """Smallest k (doubling, then bisection) with cost <= want; else the largest k allowed."""
        others = sum(self.layer_metric(m, i) for i, m in enumerate(masks) if i not in affected(g))

        def value(k):
            t = remove_units(masks, g, order[:k])
            return others + sum(self.layer_metric(t[i], i) for i in affected(g)), t

        top = len(order) - 1
        k, (v, t) = 1, value(1)
        while v > want and k < top:
            lo, k = k, min(2 * k, top)
            v, t = value(k)
            if v <= want:
                hi = k
                while hi - lo > 1:
                    mid = (lo + hi) // 2
                    vm, tm = value(mid)
                    if vm <= want:
                        hi, v, t = mid, vm, tm
                    else:
                        lo = mid
                return hi, t, v
        return k, t, v

    def finetuned_scores(self, masks) -> tuple[float, float]:
        """(loss, accuracy %) on the holdout after pruning a copy of the trainer to these masks and
        fine-tuning it for hw_finetune_steps steps; the trainer itself is left untouched."""
        tr = copy.deepcopy(self.tr)
        apply_masks(tr, masks)
        calibrate(tr, self.Xtr)
        tr.fit(self.Xtr, self.ytr, steps=self.p.hw_finetune_steps, lr=self.p.retrain_lr)
        calibrate(tr, self.Xtr)
        return evaluate(tr.net, self.Xh, self.yh)

    def trial_scores(self, masks) -> tuple[float, float]:
        """(loss, accuracy %) on the holdout of the network with these masks, on copies of its
        crossbars (programmed with the masked weights); the trainer is left untouched."""
        layers = []
        for layer, m in zip(self.net.layers, masks):
            t = copy.copy(layer)
            t.mask = m
            if layer.crossbar is not None:
                t.crossbar = copy.deepcopy(layer.crossbar)
                t.crossbar.program(layer.W * m, layer.b)
            layers.append(t)
        shadow = Network(layers, self.net.output, self.net.name)
        if self.cfg.adc_bits is not None:
            x = self.Xh[:256]
            for t in layers:
                t.crossbar.calibrate(x)
                x, _ = t.forward(x)
        return evaluate(shadow, self.Xh, self.yh)
