"""Pruning on the crossbar: criteria, crossbar-aware structure removal, hardware-aware search.

    from xbar.prune import prune
    result = prune({"network": "lenet-300-100", "dataset": "fmnist", "update": "qat", "bits": 4},
                   {"method": "magnitude", "sparsity": 0.9, "schedule": "iterative", "rounds": 5})

Pruning frees hardware only when whole rows, columns and arrays empty out (see :mod:`xbar.cost`:
surviving columns are re-packed, so emptied arrays are released); scattered zeros free devices
and nothing else. A pruned weight is a False entry of its layer's mask (``Dense.set_mask``): it
gets no gradient, counts in no cost statistic, and is programmed as weight 0, i.e. both devices
of the pair at G_min on grids that have a zero level (Crossbar.program does not skip pruned cells
yet: write noise, and the seed's asymm grid, which has no zero level, still reach them). Masks
only grow (a pruned weight stays pruned) and persist through
training and reprogramming with every rule and update scheme.

Methods (``method``):

- ``magnitude``, ``l1``, ``l2``, ``activation``, ``taylor``, ``random``: rank by a criterion
  (seed 003) and remove the lowest. ``granularity`` "weight" (unstructured; magnitude, taylor,
  random) or "unit" (a hidden neuron: its column in layer l and its row in layer l+1; l1, l2,
  activation, taylor, random). Unit scores: l1/l2 = norm of the unit's incoming weights (the
  seed's filter magnitude); activation = mean |z| over the scoring batch; taylor = mean over
  samples of |z · ∂L/∂z| (Molchanov et al., ICLR 2017); random = U[0, 1). Weight scores: |w|, and
  taylor |w| · mean |x_i| |δ_j| = mean |w ∂L/∂w| per sample. ``scope`` "layer" (each layer to the
  same sparsity) or "global" (one ranking across layers, after per-layer normalisation
  ``normalise``: none, l1 = s/Σ|s|, l2 = s/√Σs²; l2 is the default for global, because raw
  global scores did worse than random in seed 003). Default scope: global for weights (as Han et
  al. 2015 pruned LeNet-300-100), layer for units ("50 % of each hidden layer").
  ``sparsity``: fraction of the weights (weight) or of the hidden units (unit) removed.
- ``crossbar``: removes whole rows (input pixels: rows of the first layer), columns (hidden
  units) and then arrays: each greedy step takes the action that releases at least one array at
  the least damage per unit of cost saved. Actions: the k weakest units of a group (k the
  fewest that release an array), or the rows of a column chunk's last, partly filled array
  (those weights only). Damage = fraction of the group's unit-score mass (units) or of the
  layer's weight-score mass (blocks), for ``criterion`` (default taylor). ``sparsity`` is the
  fraction of arrays (tiles) released; or give ``budget``.
- ``hardware`` (NetAdapt: Yang et al., ECCV 2018): each step proposes, for every group, removing its
  weakest units (by ``criterion``) until ``budget_metric`` drops by ``hw_step`` of its original
  value, measures each proposal's accuracy on ``holdout`` training samples on the substrate, and
  keeps the one with the smallest accuracy drop per unit of cost saved; until the cost is at most
  ``budget`` (default 0.5) of the original. Each proposal is measured after a short fine-tune of
  ``hw_finetune_steps`` steps on a copy (0: right after pruning); the kept one is retrained per
  the schedule.

Schedules: ``one-shot`` (prune to the target, then retrain ``retrain_epochs``) and ``iterative``
(``rounds`` rounds; after round r a fraction (1 − s)^(r/R) of the weights, units or arrays is
left, or a cost of budget^(r/R) of the original; each round retrains ``retrain_epochs`` epochs or ``retrain_steps`` steps; ``recompute``
re-scores every round; ``retrain_pruned_only`` trains only the layers whose mask changed). The
hardware method retrains after every search step when iterative, once at the end when one-shot.
Retraining runs at ``retrain_lr`` (default: a tenth of the training lr, as Han et al. 2015),
constant. Scores come from ``score_samples`` training samples read through the substrate
(``score_on = "float"``: the stored weights in float instead).

Bad input stops cleanly: a sparsity outside [0, 1) or an unknown method is a ConfigError naming
the valid values; a step that would empty a layer, or a budget that cannot be met, stops the
pruning there, keeps what was done, and reports status "stopped" with the reason.

Randomness: streams SeedSequence([seed, 100]) (random scores) and [seed, 101] (scoring batch),
so the same configs and seed give the same result.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import cost as xcost
from .config import Field, suggest, validate_fields
from .errors import ConfigError, XbarError
from .nn import Network

METHODS = ("magnitude", "l1", "l2", "activation", "taylor", "random", "crossbar", "hardware")
CRITERIA = ("magnitude", "l1", "l2", "activation", "taylor", "random")
GRANULARITIES = ("weight", "unit")
WEIGHT_CRITERIA = ("magnitude", "taylor", "random")
UNIT_CRITERIA = ("l1", "l2", "activation", "taylor", "random")
SCOPES = ("layer", "global")
NORMS = ("none", "l1", "l2")
SCHEDULES = ("one-shot", "iterative")
SCORE_ON = ("substrate", "float")

FIELDS: tuple[Field, ...] = (
    Field("method", "str", "magnitude", "Pruning method.", choices=METHODS),
    Field("sparsity", "float", None, "Fraction removed: of the weights (granularity weight), of the "
          "hidden units (unit), of the arrays/tiles (method crossbar). Default 0.5 unless budget is set.",
          lo=0.0, hi=1.0, hi_open=True, optional=True),
    Field("budget", "float", None, "Prune until budget_metric <= budget x its value before pruning "
          "(method hardware: default 0.5; other methods: instead of sparsity).", lo=0.0, lo_open=True,
          hi=1.0, hi_open=True, optional=True),
    Field("budget_metric", "str", "energy_pj", "Cost-model total the budget applies to.",
          choices=xcost.METRICS),
    Field("criterion", "str", None, "Score of methods crossbar and hardware (default taylor).",
          choices=CRITERIA, optional=True),
    Field("granularity", "str", None, "weight (unstructured) or unit (hidden neurons); default: weight "
          "for magnitude and random, unit for the others.", choices=GRANULARITIES, optional=True),
    Field("scope", "str", None, "Rank per layer or across layers (default: global for weights, layer "
          "for units).", choices=SCOPES, optional=True),
    Field("normalise", "str", None, "Per-layer score normalisation (default: l2 for global scope, "
          "none for layer).", choices=NORMS, optional=True),
    Field("schedule", "str", "iterative", "Prune once, or in rounds with retraining.", choices=SCHEDULES),
    Field("rounds", "int", 5, "Rounds of the iterative schedule.", lo=1, hi=1000),
    Field("retrain_epochs", "int", 2, "Retraining epochs per round (one-shot: after pruning).", lo=0,
          hi=100000),
    Field("retrain_steps", "int", None, "Retraining optimizer steps per round, instead of epochs.", lo=1,
          optional=True),
    Field("retrain_lr", "float", None, "Constant learning rate while retraining (default: 0.1 x lr).",
          lo=0.0, lo_open=True, optional=True),
    Field("retrain_pruned_only", "bool", False, "Retrain only the layers pruned in that round."),
    Field("recompute", "bool", True, "Recompute the scores every round (false: rank once)."),
    Field("score_on", "str", "substrate", "Scores from reads through the simulated crossbars, or from "
          "the stored weights in float.", choices=SCORE_ON),
    Field("score_samples", "int", 2000, "Training samples the data-dependent scores average over.",
          lo=1, hi=10_000_000),
    Field("prune_inputs", "bool", True, "crossbar/hardware: inputs (rows of the first layer) may go too."),
    Field("hw_step", "float", 0.05, "hardware: cost reduction per search step, as a fraction of the "
          "original cost.", lo=0.0, lo_open=True, hi=1.0),
    Field("hw_finetune_steps", "int", 100, "hardware: optimizer steps each proposal is fine-tuned for "
          "(on a copy) before it is measured, as NetAdapt's short-term fine-tune; 0: measure at once.",
          lo=0, hi=10_000_000),
    Field("holdout", "int", 5000, "hardware: training samples (the last ones) proposals are compared on.",
          lo=1, hi=10_000_000),
    Field("costs", "str", xcost.DEFAULT_COSTS, "Cost constants: a devices/costs preset or a .toml path."),
    Field("init", "str", None, "Start from a saved run (.h5: weights, biases, masks) instead of "
          "training first.", optional=True),
)
FIELD_NAMES = tuple(f.name for f in FIELDS)


@dataclass(frozen=True)
class PruneConfig:
    """How to prune; see :data:`FIELDS`. :meth:`resolve` fills the per-method defaults and checks
    the combination."""

    method: str = "magnitude"
    sparsity: float | None = None
    budget: float | None = None
    budget_metric: str = "energy_pj"
    criterion: str | None = None
    granularity: str | None = None
    scope: str | None = None
    normalise: str | None = None
    schedule: str = "iterative"
    rounds: int = 5
    retrain_epochs: int = 2
    retrain_steps: int | None = None
    retrain_lr: float | None = None
    retrain_pruned_only: bool = False
    recompute: bool = True
    score_on: str = "substrate"
    score_samples: int = 2000
    prune_inputs: bool = True
    hw_step: float = 0.05
    hw_finetune_steps: int = 100
    holdout: int = 5000
    costs: str = xcost.DEFAULT_COSTS
    init: str | None = None

    def __post_init__(self):
        values = validate_fields(FIELDS, {f: getattr(self, f) for f in FIELD_NAMES}, file="PruneConfig")
        for k, v in values.items():
            object.__setattr__(self, k, v)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, file: str | None = None) -> PruneConfig:
        return cls(**validate_fields(FIELDS, dict(data), file=file or "prune config"))

    def with_(self, **changes) -> PruneConfig:
        for k in changes:
            if k not in FIELD_NAMES:
                raise ConfigError(f"PruneConfig: unknown field {k!r}{suggest(k, FIELD_NAMES)}")
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in FIELD_NAMES}

    def resolve(self) -> PruneConfig:
        """Per-method defaults; a combination that cannot work is a ConfigError saying why."""
        v = self.as_dict()
        m = self.method
        if m in CRITERIA:
            if v["criterion"] not in (None, m):
                raise ConfigError(f"criterion = {v['criterion']!r}: method {m!r} is itself the criterion "
                                  "(criterion applies to methods 'crossbar' and 'hardware')")
            v["criterion"] = m
            g = v["granularity"] or ("weight" if m in ("magnitude", "random") else "unit")
            allowed = WEIGHT_CRITERIA if g == "weight" else UNIT_CRITERIA
            if m not in allowed:
                hint = " (unit magnitude is method 'l1')" if m == "magnitude" else ""
                raise ConfigError(f"method {m!r} with granularity {g!r}: expected one of "
                                  f"{', '.join(map(repr, allowed))}{hint}")
            v["granularity"] = g
            v["scope"] = v["scope"] or ("global" if g == "weight" else "layer")
        else:
            if v["granularity"] is not None:
                raise ConfigError(f"granularity applies to the ranking methods, not {m!r} (it removes "
                                  "rows, columns and arrays)")
            v["criterion"] = v["criterion"] or "taylor"
            v["scope"] = v["scope"] or "layer"
        v["normalise"] = v["normalise"] or ("l2" if v["scope"] == "global" else "none")
        if m == "hardware":
            if v["sparsity"] is not None:
                raise ConfigError("method 'hardware' is driven by budget (fraction of the original "
                                  "budget_metric to reach), not sparsity")
            v["budget"] = 0.5 if v["budget"] is None else v["budget"]
        elif v["sparsity"] is not None and v["budget"] is not None:
            raise ConfigError("give sparsity or budget, not both")
        elif v["sparsity"] is None and v["budget"] is None:
            v["sparsity"] = 0.5
        if v["schedule"] == "one-shot":
            v["rounds"] = 1
        return PruneConfig(**v)


class PruneStop(XbarError):
    """Pruning cannot go on (a layer would be emptied, a budget cannot be met); what was done stays."""


# ---- masks and groups -----------------------------------------------------------------------------
# A "group" is a set of units pruned as a whole: ("input", 0) the network inputs (rows of layer 0),
# ("hidden", h) the outputs of layer h (columns of layer h and rows of layer h + 1).

def current_masks(net: Network) -> list[np.ndarray]:
    """A copy of every layer's mask (all True where a layer has none)."""
    return [xcost.layer_mask(layer).copy() for layer in net.layers]


def dense_chain(net: Network) -> bool:
    """Whether output j of every layer is row j of the next (dense layers only): units exist."""
    layers = net.layers
    return all(getattr(a, "kind", "dense") == "dense" for a in layers) and all(
        a.n_out == b.n_in for a, b in itertools.pairwise(layers))


def groups(net: Network, inputs: bool = True) -> list[tuple[str, int]]:
    return ([("input", 0)] if inputs else []) + [("hidden", h) for h in range(len(net.layers) - 1)]


def live_units(masks: list[np.ndarray], group: tuple[str, int]) -> np.ndarray:
    """Bool per unit of the group: it still has kept weights (both sides, for hidden units)."""
    kind, h = group
    if kind == "input":
        return masks[0].any(axis=1)
    return masks[h].any(axis=0) & masks[h + 1].any(axis=1)


def remove_units(masks: list[np.ndarray], group: tuple[str, int], units) -> list[np.ndarray]:
    """New masks with the given units of the group removed (the others are shared, not copied)."""
    kind, h = group
    out = list(masks)
    if kind == "input":
        out[0] = masks[0].copy()
        out[0][units, :] = False
    else:
        out[h] = masks[h].copy()
        out[h][:, units] = False
        out[h + 1] = masks[h + 1].copy()
        out[h + 1][units, :] = False
    return out


def _affected(group: tuple[str, int]) -> tuple[int, ...]:
    return (0,) if group[0] == "input" else (group[1], group[1] + 1)


def check_not_empty(masks: list[np.ndarray], net: Network) -> None:
    """PruneStop if a layer, or a hidden layer's units, would be removed entirely."""
    for i, m in enumerate(masks):
        if not m.any():
            raise PruneStop(f"pruning would empty layer {i} ({net.layers[i].n_in}x{net.layers[i].n_out}): "
                            "lower the sparsity (or use scope 'layer')")
    for g in groups(net, inputs=False) if dense_chain(net) else []:
        if not live_units(masks, g).any():
            raise PruneStop(f"pruning would remove every unit of hidden layer {g[1]}: lower the sparsity")


def apply_masks(trainer, masks: list[np.ndarray]) -> list[int]:
    """Install masks on the trainer's network and bring its devices in line; returns changed layers.

    qat/nearest/stochastic reprogram the layer from its stored (masked) weights. The in-situ schemes
    (mixed, pulse) hold the weights in the devices: the pruned cells are written to weight 0 and
    their accumulators cleared, every other cell keeps its conductance.
    """
    from .train.updates import InSituUpdate
    net, upd = trainer.net, trainer.update
    changed = []
    for i, (layer, m) in enumerate(zip(net.layers, masks)):
        old = xcost.layer_mask(layer)
        if np.array_equal(old, m):
            continue
        if np.any(m & ~old):
            raise ConfigError(f"layer {i}: a mask may only remove weights (pruned weights stay pruned)")
        layer.set_mask(m.copy())
        changed.append(i)
        if layer.crossbar is None:
            continue
        if isinstance(upd, InSituUpdate):
            upd.apply_mask(i, layer, old)
        else:
            layer.program()
    return changed


# ---- scores ---------------------------------------------------------------------------------------

@dataclass
class Activity:
    """What the scores need from one pass over the scoring batch: per layer input x, output z,
    pre-activation delta dL/da (true backpropagation), dL/dz of hidden outputs, dL/dx of inputs."""

    x: list[np.ndarray]
    z: list[np.ndarray]
    delta: list[np.ndarray]
    gz: list[np.ndarray]
    gx: np.ndarray
    W: list[np.ndarray]


def activity(net: Network, X: np.ndarray, y: np.ndarray, on_substrate: bool = True) -> Activity:
    """Forward and true-gradient backward pass on (X, y): through the crossbars (substrate), or on
    the stored weights in float. Taylor needs ∂L/∂z whatever rule trains the network: this is BP."""
    saved = [layer.crossbar for layer in net.layers]
    if not on_substrate:
        for layer in net.layers:
            layer.crossbar = None
    try:
        out, caches = net.forward(X)
        _, e = net.loss(out, y)
        n = len(net.layers)
        delta = [None] * n
        gz = [None] * (n - 1)
        delta[-1] = e * np.float32(len(X))        # per-sample gradients (loss is a batch mean)
        for i in range(n - 2, -1, -1):
            gz[i] = net.layers[i + 1].backward_input(delta[i + 1])
            delta[i] = net.layers[i].local_delta(gz[i], caches[i])
        gx = net.layers[0].backward_input(delta[0])
    finally:
        for layer, xb in zip(net.layers, saved):
            layer.crossbar = xb
    return Activity([c.x for c in caches], [c.z for c in caches], delta, gz, gx, weights(net, on_substrate))


def weights(net: Network, on_substrate: bool = True) -> list[np.ndarray]:
    """Each layer's weights as programmed (substrate: the crossbar's effective weights, masked), or
    as stored (float)."""
    return [layer.crossbar.weights().astype(np.float32) * xcost.layer_mask(layer)
            if on_substrate and layer.crossbar is not None else layer.stored_weights() for layer in net.layers]


def unit_scores(criterion: str, act: Activity, group: tuple[str, int], rng: np.random.Generator) -> np.ndarray:
    """Importance of every unit of a group (larger = keep); see the module docstring."""
    kind, h = group
    W = act.W[0].T if kind == "input" else act.W[h]    # inputs have no incoming weights: outgoing
    if criterion in ("l1", "magnitude"):
        return np.abs(W).sum(axis=0, dtype=np.float64)
    if criterion == "l2":
        return np.sqrt(np.square(W, dtype=np.float64).sum(axis=0))
    a = act.x[0] if kind == "input" else act.z[h]
    if criterion == "activation":
        return np.abs(a).mean(axis=0, dtype=np.float64)
    if criterion == "taylor":
        return np.abs(a * (act.gx if kind == "input" else act.gz[h])).mean(axis=0, dtype=np.float64)
    return rng.random(W.shape[1])


def weight_scores(criterion: str, act: Activity, layer: int, rng: np.random.Generator) -> np.ndarray:
    """Importance of every weight of a layer (in, out)."""
    W = act.W[layer]
    if criterion in ("magnitude", "l1"):
        return np.abs(W).astype(np.float64)
    if criterion == "l2":
        return np.square(W, dtype=np.float64)
    if criterion == "random":
        return rng.random(W.shape)
    x = act.x[layer]
    if criterion == "activation":
        return np.abs(x).mean(axis=0, dtype=np.float64)[:, None] * np.abs(W)
    if criterion == "taylor":
        return np.abs(W) * (np.abs(x).T.astype(np.float64) @ np.abs(act.delta[layer])) / len(x)
    raise ConfigError(f"criterion = {criterion!r}: expected one of {', '.join(map(repr, CRITERIA))}")


def normalised(s: np.ndarray, live: np.ndarray, how: str) -> np.ndarray:
    """Scores divided by their l1 or l2 norm over the live entries (seed 003's normalisation)."""
    if how == "none":
        return s
    v = s[live]
    norm = np.abs(v).sum() if how == "l1" else np.sqrt(np.square(v).sum())
    return s / norm if norm > 0 else s


def _count(fraction: float, n: int) -> int:
    """floor(fraction · n), immune to the float error of fractions like 1 − 0.7."""
    return math.floor(fraction * n + 1e-9)


def _prune_lowest(scores: list[np.ndarray], lives: list[np.ndarray], n_target: int) -> list[np.ndarray]:
    """Pool the live entries of several score arrays and mark the lowest for removal, so that
    n_target entries are gone in total (those already gone count); returns the new removals."""
    flat = np.concatenate([np.where(lv, s, -np.inf).ravel() for s, lv in zip(scores, lives)])
    n_gone = int(sum(int((~lv).sum()) for lv in lives))
    order = np.argsort(flat, kind="stable")        # gone entries (-inf) first
    remove = np.zeros(flat.size, bool)
    remove[order[:max(n_target, n_gone)]] = True
    out, start = [], 0
    for s, lv in zip(scores, lives):
        out.append(remove[start:start + s.size].reshape(s.shape) & lv)
        start += s.size
    return out


# ---- the pruner -----------------------------------------------------------------------------------

class Pruner:
    """Applies one method to a trainer's network, round by round; holds scores, costs and data."""

    def __init__(self, trainer, pcfg: PruneConfig, data):
        from .train.loop import stream as _stream
        self.tr, self.p, self.net = trainer, pcfg, trainer.net
        self.Xtr, self.ytr, self.Xte, self.yte = data
        self.cfg = trainer.cfg
        self.rng = _stream(self.cfg.seed, 100)
        idx = _stream(self.cfg.seed, 101).permutation(len(self.Xtr))[:pcfg.score_samples]
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
            if self.p.criterion in ("activation", "taylor"):
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
                    (rm,) = _prune_lowest([scores[i]], [masks[i]], _count(s, masks[i].size))
                    out[i] = masks[i] & ~rm
            else:
                sc = [normalised(scores[i], masks[i], p.normalise) for i in layers]
                total = sum(m.size for m in masks)
                rms = _prune_lowest(sc, list(masks), _count(s, total))
                out = [m & ~r for m, r in zip(masks, rms)]
            check_not_empty(out, self.net)
            return out
        gs = groups(self.net, inputs=False)
        scores = [self.unit(g) for g in gs]
        lives = [live_units(masks, g) for g in gs]
        if p.scope == "layer":
            rms = [_prune_lowest([sc], [lv], _count(s, lv.size))[0] for sc, lv in zip(scores, lives)]
        else:
            sc = [normalised(x, lv, p.normalise) for x, lv in zip(scores, lives)]
            rms = _prune_lowest(sc, lives, _count(s, sum(lv.size for lv in lives)))
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
            aff = _affected(g)
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
            for rows, cols, excess in _partial_arrays(m, self.per[i], self.bias[i]):
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
        from .train.loop import evaluate
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
        others = sum(self.layer_metric(m, i) for i, m in enumerate(masks) if i not in _affected(g))

        def value(k):
            t = remove_units(masks, g, order[:k])
            return others + sum(self.layer_metric(t[i], i) for i in _affected(g)), t

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
        from .train.loop import evaluate
        tr = copy.deepcopy(self.tr)
        apply_masks(tr, masks)
        _calibrate(tr, self.Xtr)
        retrain(tr, self.Xtr, self.ytr, steps=self.p.hw_finetune_steps, lr=self.p.retrain_lr)
        _calibrate(tr, self.Xtr)
        return evaluate(tr.net, self.Xh, self.yh)

    def trial_scores(self, masks) -> tuple[float, float]:
        """(loss, accuracy %) on the holdout of the network with these masks, on copies of its
        crossbars (programmed with the masked weights); the trainer is left untouched."""
        from .train.loop import evaluate
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


def _partial_arrays(mask: np.ndarray, per: xcost.Periphery, has_bias: bool):
    """Per column chunk of the re-packed layout with at least two arrays: (rows, cols, excess) where
    removing `excess` of its data rows releases its last, partly filled array."""
    R, C = per.tile
    cols = np.flatnonzero(mask.any(axis=0))
    extra = 1 if per.bias_row and has_bias else 0
    for j in range(0, len(cols), C):
        cc = cols[j:j + C]
        rows = np.flatnonzero(mask[:, cc].any(axis=1))
        n = len(rows) + extra
        if n > R:
            yield rows, cc, n - R * (math.ceil(n / R) - 1)


# ---- retraining ----------------------------------------------------------------------------------

class _OnlyLayers:
    """A rule that sits every layer but `keep` out of the step (None delta: the trainer leaves it
    out of the optimizer); everything else is the wrapped rule's."""

    def __init__(self, rule, keep):
        self._rule, self._keep = rule, set(keep)

    def deltas(self, net, caches, e, y=None):
        d = self._rule.deltas(net, caches, e, y)
        return [x if i in self._keep else None for i, x in enumerate(d)]

    def __getattr__(self, name):
        return getattr(self._rule, name)


def retrain(trainer, X: np.ndarray, y: np.ndarray, *, epochs: int = 1, steps: int | None = None,
            lr: float | None = None, layers=None) -> int:
    """Run more optimizer steps on an existing Trainer: `epochs` passes, or `steps` steps.

    lr: constant learning rate for these steps (None: the optimizer's current one). layers: train
    only these layer indices. Returns the steps taken; raises Diverged like the training loop.
    """
    cfg = trainer.cfg
    if lr is not None:
        trainer.opt.lr = float(lr)
    rule = trainer.rule
    if layers is not None:
        trainer.rule = _OnlyLayers(rule, layers)
    done, epoch = 0, 0
    n, bs = len(X), cfg.batch_size
    try:
        while (steps is None and epoch < epochs) or (steps is not None and done < steps):
            epoch += 1
            perm = trainer.shuffle.permutation(n)
            trainer.start_epoch(epoch)
            if cfg.adc_bits is not None:
                trainer.calibrate(X[perm[:max(bs, 256)]])
            for s in range(0, n, bs):
                idx = perm[s:s + bs]
                trainer.step(X[idx], y[idx])
                done += 1
                if steps is not None and done >= steps:
                    break
    finally:
        trainer.rule = rule
    return done


# ---- the whole run -------------------------------------------------------------------------------

def check_supported(network: str, pcfg: PruneConfig) -> None:
    """Structured and data-driven methods know dense chains only (a unit of layer l is column j of
    layer l and row j of layer l + 1); a network with other layers gets a ConfigError up front."""
    from .nn import NetworkSpec
    kinds = {layer.kind for layer in NetworkSpec.preset(network).layers}
    if kinds <= {"dense"}:
        return
    if pcfg.granularity == "weight" and pcfg.criterion in ("magnitude", "random"):
        return
    raise ConfigError(f"network {network!r} has {', '.join(sorted(kinds - {'dense'}))} layers: method "
                      f"{pcfg.method!r} handles dense networks only for now; use method 'magnitude' or "
                      "'random' (unstructured)")


def _calibrate(trainer, X):
    if trainer.cfg.adc_bits is not None:
        trainer.calibrate(X[:max(trainer.cfg.batch_size, 256)])


def _trainer_from_run(path: str, cfg, n_in: int, n_classes: int):
    """A Trainer for `cfg` with the weights, biases and masks of a saved run."""
    from .checkpoint import load
    from .train.loop import Trainer
    from .train.loop import int_seed as _int_seed
    run = load(path)
    src = run.network().layers
    tr = Trainer(cfg, n_in, n_classes)
    if [(a.n_in, a.n_out) for a in src] != [(b.n_in, b.n_out) for b in tr.net.layers]:
        raise ConfigError(f"init = {path!r}: its layers {[(a.n_in, a.n_out) for a in src]} do not match "
                          f"network {cfg.network!r} on {cfg.dataset!r}")
    for a, b in zip(src, tr.net.layers):
        b.set_weights(a.W, a.b)
    tr.update.attach(tr.net, [_int_seed(cfg.seed, 4 + i) for i in range(len(tr.net.layers))], tr.feedback)
    apply_masks(tr, [xcost.layer_mask(a) for a in src])
    return tr


def _summary(net: Network, cost: dict[str, Any]) -> dict[str, Any]:
    """Cost totals plus the widths left: inputs, units (dense chains) or outputs of every layer."""
    masks = current_masks(net)
    widths = [int(live_units(masks, ("input", 0)).sum())]
    if dense_chain(net):
        widths += [int(live_units(masks, g).sum()) for g in groups(net, inputs=False)]
        widths.append(net.layers[-1].n_out)
    else:
        widths += [int(m.any(axis=0).sum()) for m in masks]
    return xcost.summary(cost) | {"widths": widths}


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
    from . import data as xdata
    from .train import TrainConfig
    from .train.loop import Diverged, evaluate, load_data, train
    start = time.perf_counter()
    tcfg = train_config if isinstance(train_config, TrainConfig) else TrainConfig.from_dict(train_config)
    tcfg = tcfg.resolve()
    pcfg = prune_config if isinstance(prune_config, PruneConfig) else PruneConfig.from_dict(prune_config)
    pcfg = pcfg.resolve()
    check_supported(tcfg.network, pcfg)
    if pcfg.retrain_lr is None:
        pcfg = pcfg.with_(retrain_lr=0.1 * tcfg.lr)
    Xtr, ytr, Xte, yte = load_data(tcfg, data)
    if pcfg.init:
        tr = _trainer_from_run(pcfg.init, tcfg, Xtr.shape[1], xdata.num_classes(tcfg.dataset))
        pre = {"init": pcfg.init}
    else:
        res = train(tcfg, data=(Xtr, ytr, Xte, yte), on_epoch=on_epoch, keep_trainer=True)
        tr = res.pop("_trainer")
        pre = {k: res[k] for k in ("status", "message", "test_accuracy", "train_accuracy", "train_seconds")}
        pre["epochs"] = len(res["history"])
        if res["status"] != "ok":
            return {"status": res["status"], "message": f"training before pruning: {res['message']}",
                    "pretrain": pre, "prune": pcfg.as_dict(), "config": tcfg.as_dict(),
                    "seconds": time.perf_counter() - start}
    net = tr.net
    _calibrate(tr, Xtr)
    _, acc0 = evaluate(net, Xte, yte)
    pr = Pruner(tr, pcfg, (Xtr, ytr, Xte, yte))
    before = _summary(net, pr.cost0)
    pr.metric0 = m0 = pr.metric(current_masks(net))
    tiles0 = pr.cost0["total"]["tiles"]
    status, message, rounds = "ok", "", []

    def finish_round(r, target, changed, info=None):
        """Recalibrate, retrain, evaluate and record one round (or search step)."""
        _calibrate(tr, Xtr)
        if changed and (pcfg.retrain_epochs or pcfg.retrain_steps) and (
                pcfg.schedule == "iterative" or pcfg.method != "hardware"):
            retrain(tr, Xtr, ytr, epochs=pcfg.retrain_epochs, steps=pcfg.retrain_steps, lr=pcfg.retrain_lr,
                    layers=changed if pcfg.retrain_pruned_only else None)
        masks = current_masks(net)
        total = pr.cost(masks)["total"]
        entry = {"round": r, "target": target} | _sparsity(masks) | {
            "tiles": total["tiles"], "energy_pj": total["energy_pj"],
            pcfg.budget_metric: total[pcfg.budget_metric]} | (info or {})
        _, entry["test_accuracy"] = evaluate(net, Xte, yte)
        rounds.append(entry)
        if on_round:
            on_round(entry)

    try:
        with np.errstate(over="ignore", invalid="ignore"):
            if pcfg.method == "hardware":
                target, step = pcfg.budget * m0, 0
                while (now := pr.metric(current_masks(net))) > target * (1 + 1e-12):
                    step += 1
                    want = max(now - pcfg.hw_step * m0, target)
                    pr.scores(fresh=step == 1)
                    masks, info = pr.hardware_step(current_masks(net), want)
                    finish_round(step, want / m0, apply_masks(tr, masks), info)
                if pcfg.schedule == "one-shot" and (pcfg.retrain_epochs or pcfg.retrain_steps):
                    retrain(tr, Xtr, ytr, epochs=pcfg.retrain_epochs, steps=pcfg.retrain_steps,
                            lr=pcfg.retrain_lr)
            else:
                R = pcfg.rounds
                for r in range(1, R + 1):
                    pr.scores(fresh=r == 1)
                    masks, stop = current_masks(net), None
                    if pcfg.method == "crossbar":
                        if pcfg.budget is not None:
                            shown = pcfg.budget ** (r / R)
                            value, limit = pr.metric, shown * m0 * (1 + 1e-12)
                        else:
                            shown = 1 - (1 - pcfg.sparsity) ** (r / R)
                            value, limit = pr.total_tiles, (1 - shown) * tiles0 + 1e-9
                        while value(masks) > limit:
                            try:
                                masks = pr.crossbar_step(masks)
                            except PruneStop as exc:   # keep the arrays released so far
                                stop = exc
                                break
                    elif pcfg.budget is not None:
                        shown = pcfg.budget ** (r / R)
                        masks = pr.ranked_to_budget(shown * m0, masks)
                    else:
                        shown = 1 - (1 - pcfg.sparsity) ** (r / R)
                        masks = pr.ranked(shown, masks)
                    finish_round(r, shown, apply_masks(tr, masks))
                    if stop is not None:
                        raise stop
    except PruneStop as exc:
        status, message = "stopped", str(exc)
    except Diverged as exc:
        status, message = "diverged", f"retraining: {exc}"

    masks = current_masks(net)
    acc1 = None
    if status != "diverged":
        _calibrate(tr, Xtr)
        _, acc1 = evaluate(net, Xte, yte)
    after = _summary(net, pr.cost(masks))
    saved = {k: (1 - after[k] / before[k]) if before[k] else 0.0 for k in xcost.SUMMARY}
    result = {
        "status": status, "message": message, "method": pcfg.method,
        "accuracy_before": acc0, "accuracy_after": acc1, "test_accuracy": acc1,
        "accuracy_drop": None if acc1 is None else acc0 - acc1,
        "sparsity": _sparsity(masks)["sparsity"], "sparsity_layers": _sparsity(masks)["sparsity_layers"],
        "hardware_before": before, "hardware_after": after, "saved": saved,
        "tiles": after["tiles"], "energy_pj": after["energy_pj"],
        "rounds": rounds, "pretrain": pre, "prune": pcfg.as_dict(), "config": tcfg.as_dict(),
        "cost_constants": pr.constants.name, "seconds": time.perf_counter() - start,
    }
    if keep_trainer:
        result["_trainer"] = tr
    return result


def _sparsity(masks) -> dict[str, Any]:
    total = sum(m.size for m in masks)
    return {"sparsity": 1 - sum(int(m.sum()) for m in masks) / total,
            "sparsity_layers": [1 - float(m.mean()) for m in masks]}


# ---- command line ------------------------------------------------------------------------------

def add_cli(subparsers) -> None:
    """Register `xbar prune` on the CLI's subparsers: every train option plus the prune options."""
    from .cli import _add_config_options
    from .train.loop import FIELDS as TRAIN_FIELDS
    c = subparsers.add_parser("prune", help="train, prune against the crossbar, retrain; report hardware saved")
    _add_config_options(c, tuple(f for f in TRAIN_FIELDS if f.name != "init"))   # prune's own --init
    _add_config_options(c, FIELDS)
    c.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    c.add_argument("--quiet", action="store_true", help="no progress on stderr")
    c.add_argument("--out", default=None, help="save the pruned network and device state (.h5)")
    c.set_defaults(func=cmd_prune)


def cmd_prune(args) -> int:
    import json
    import sys

    from .cli import _config_from_args, _json_default, _print_table, _Progress
    from .train import TrainConfig
    from .train.loop import FIELDS as TRAIN_FIELDS
    if getattr(args, "out", None) is not None:
        from .paths import check_output_path
        check_output_path(args.out, "--out")      # before any work
    tcfg = TrainConfig.from_dict(_config_from_args(args, tuple(f for f in TRAIN_FIELDS if f.name != "init")),
                                 file="command line").resolve()
    pcfg = PruneConfig.from_dict(_config_from_args(args, FIELDS), file="command line").resolve()
    quiet = args.json or args.quiet

    def on_round(e):
        if not quiet:
            print(f"round {e['round']:>3}  target {e['target']:.3f}  sparsity {100 * e['sparsity']:5.1f}%  "
                  f"tiles {e['tiles']}  energy {e['energy_pj']:.0f} pJ  test {e['test_accuracy']:6.2f}%",
                  file=sys.stderr, flush=True)

    result = prune(tcfg, pcfg, on_epoch=_Progress(tcfg.epochs, quiet), on_round=on_round,
                   keep_trainer=bool(args.out))
    trainer = result.pop("_trainer", None)
    if args.out and trainer is not None:
        from .checkpoint import save
        save(args.out, trainer, tcfg, result)
    if args.json:
        print(json.dumps(result, default=_json_default))
        return 0 if result["status"] == "ok" else 1
    print(f"{tcfg.network} on {tcfg.dataset}, method {pcfg.method} ({pcfg.schedule}"
          + (f", {pcfg.rounds} rounds" if pcfg.schedule == "iterative" and pcfg.method != "hardware" else "")
          + f"): status {result['status']}" + (f" ({result['message']})" if result.get("message") else ""))
    if "accuracy_before" not in result:
        return 1
    a0, a1 = result["accuracy_before"], result["accuracy_after"]
    print(f"test accuracy {a0:.2f}% -> " + ("-" if a1 is None else f"{a1:.2f}% ({a1 - a0:+.2f})")
          + f"; sparsity {100 * result['sparsity']:.1f}% (layers "
          + ", ".join(f"{100 * s:.1f}" for s in result["sparsity_layers"]) + ")")
    b, a = result["hardware_before"], result["hardware_after"]
    rows = [(k, f"{b[k]:.6g}", f"{a[k]:.6g}", f"{100 * result['saved'][k]:.1f}%") for k in xcost.SUMMARY]
    rows.append(("widths", "-".join(map(str, b["widths"])), "-".join(map(str, a["widths"])), ""))
    _print_table(("per inference", "before", "after", "saved"), rows)
    return 0 if result["status"] == "ok" else 1
