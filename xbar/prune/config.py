"""PruneConfig: how to prune, as a validated, frozen config; :meth:`PruneConfig.resolve` fills the
per-method defaults (from the criterion's registry entry) and refuses combinations that cannot work."""

from __future__ import annotations

from .. import cost as xcost
from ..config import Field, FieldConfig
from ..errors import ConfigError, XbarError
from ..registry import Choices
from .criteria import CRITERIA

# A method is a ranking criterion (registered in xbar.prune.criteria) or one of the structured searches.
SEARCHES = ("crossbar", "hardware")
METHODS = Choices(CRITERIA, *SEARCHES)
GRANULARITIES = ("weight", "unit")
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


class PruneConfig(FieldConfig):
    """How to prune; see :data:`FIELDS`. :meth:`resolve` fills the per-method defaults and checks
    the combination."""

    FIELDS = FIELDS
    LABEL = "PruneConfig"
    SOURCE = "prune config"

    def resolve(self) -> PruneConfig:
        """Per-method defaults; a combination that cannot work is a ConfigError saying why."""
        v = self.as_dict()
        m = self.method
        if m in CRITERIA:
            crit = CRITERIA.get(m)
            if v["criterion"] not in (None, m):
                raise ConfigError(f"criterion = {v['criterion']!r}: method {m!r} is itself the criterion "
                                  "(criterion applies to methods 'crossbar' and 'hardware')")
            v["criterion"] = m
            g = v["granularity"] or crit.default_granularity
            if g not in crit.granularities:
                allowed = [c.name for c in CRITERIA.classes() if g in c.granularities]
                raise ConfigError(f"method {m!r} with granularity {g!r}: expected one of "
                                  f"{', '.join(map(repr, allowed))}{crit.hint.get(g, '')}")
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
