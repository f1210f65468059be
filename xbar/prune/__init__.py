"""Pruning on the crossbar: criteria, crossbar-aware structure removal, hardware-aware search.

    from xbar.prune import prune
    result = prune({"network": "lenet-300-100", "dataset": "fmnist", "update": "qat", "bits": 4},
                   {"method": "magnitude", "sparsity": 0.9, "schedule": "iterative", "rounds": 5})

Pruning frees hardware only when whole rows, columns and arrays empty out (see :mod:`xbar.cost`:
surviving columns are re-packed, so emptied arrays are released); scattered zeros free devices
and nothing else. A pruned weight is a False entry of its layer's mask (``set_mask``): it gets no
gradient, counts in no cost statistic, and its cells are never written (``Crossbar.program(W, b,
mask)`` leaves both devices of the pair at their own g_min, with no write noise, on any grid). Masks
only grow (a pruned weight stays pruned) and persist through training and reprogramming with every
rule and update scheme (the scheme's ``on_mask_change`` hook).

Methods (``method``):

- ``magnitude``, ``l1``, ``l2``, ``activation``, ``taylor``, ``random``: rank by a criterion
  (seed 003; each a class in :mod:`xbar.prune.criteria`, where a new one registers) and remove
  the lowest. ``granularity`` "weight" (unstructured; magnitude, taylor,
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

Modules: :mod:`~xbar.prune.config` (PruneConfig), :mod:`~xbar.prune.criteria` (the registry of
scores), :mod:`~xbar.prune.masks` (mask algebra, installing masks), :mod:`~xbar.prune.search`
(the Pruner: ranking, crossbar greedy, hardware search), :mod:`~xbar.prune.run` (:func:`prune`).
"""

from .config import (
    FIELD_NAMES,
    FIELDS,
    GRANULARITIES,
    METHODS,
    NORMS,
    SCHEDULES,
    SCOPES,
    SCORE_ON,
    SEARCHES,
    PruneConfig,
    PruneStop,
)
from .criteria import CRITERIA, Activity, Criterion, activity, unit_scores, weight_scores, weights
from .masks import (
    apply_masks,
    check_not_empty,
    current_masks,
    dense_chain,
    groups,
    live_units,
    normalised,
    remove_units,
)
from .run import check_supported, prune, retrain, trainer_from_run
from .search import Pruner

__all__ = ["CRITERIA", "FIELDS", "FIELD_NAMES", "GRANULARITIES", "METHODS", "NORMS", "SCHEDULES", "SCOPES",
           "SCORE_ON", "SEARCHES", "Activity", "Criterion", "PruneConfig", "PruneStop", "Pruner", "activity",
           "apply_masks", "check_not_empty", "check_supported", "current_masks", "dense_chain", "groups",
           "live_units", "normalised", "prune", "remove_units", "retrain", "trainer_from_run", "unit_scores",
           "weight_scores", "weights"]
