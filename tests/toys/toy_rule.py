"""A toy training rule, all in this file: backpropagation with the error scaled by its own option
``toy_scale`` (a TrainConfig field and an ``xbar train --toy-scale`` flag once registered)."""

from __future__ import annotations

from xbar.config import Field
from xbar.errors import ConfigError
from xbar.train.rule import RULES, Rule


@RULES.register
class ScaledBP(Rule):
    """delta_L = s·e, then back through Wᵀ as bp."""

    name = "toy-scaled-bp"
    FIELDS = (Field("toy_scale", "float", 1.0, "Toy rule: factor on the output error.", lo=0.0, lo_open=True),)

    def __init__(self, scale: float = 1.0):
        self.scale = scale

    @classmethod
    def options(cls, cfg):
        return {"scale": cfg.toy_scale}

    @classmethod
    def check(cls, cfg):
        if cfg.toy_scale > 10:
            raise ConfigError(f"rule 'toy-scaled-bp' with toy_scale = {cfg.toy_scale}: at most 10")

    def deltas(self, net, caches, e, y=None):
        layers = net.layers
        out = [None] * len(layers)
        out[-1] = e * self.scale
        for i in range(len(layers) - 2, -1, -1):
            out[i] = layers[i].local_delta(layers[i + 1].backward_input(out[i + 1]), caches[i])
        return out
