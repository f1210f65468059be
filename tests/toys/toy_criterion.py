"""A toy pruning criterion, all in this file: a unit's largest incoming |w| (its l∞ norm)."""

from __future__ import annotations

import numpy as np

from xbar.prune.criteria import CRITERIA, Criterion, group_weights


@CRITERIA.register
class LInf(Criterion):
    name = "toy-linf"
    granularities = ("unit", "weight")
    default_granularity = "unit"

    @classmethod
    def unit_scores(cls, act, group, rng):
        return np.abs(group_weights(act, group)).max(axis=0).astype(np.float64)

    @classmethod
    def weight_scores(cls, act, layer, rng):
        return np.abs(act.W[layer]).astype(np.float64)
