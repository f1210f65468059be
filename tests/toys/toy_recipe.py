"""A toy recipe, all in this file: a slower Adam (lr 5e-4) for every device scheme, an option of its
own (validated and recorded with the run), and a check that refuses float training."""

from __future__ import annotations

from xbar.config import Field
from xbar.errors import ConfigError
from xbar.train.recipe import RECIPES, Recipe


@RECIPES.register
class SlowAdam(Recipe):
    name = "toy-slow"
    FIELDS = (Field("toy_slow_factor", "float", 0.5, "Toy: an option of the recipe.", lo=0.0,
                    lo_open=True, hi=1.0),)

    @classmethod
    def defaults(cls, update):
        return [{"optimizer": "adam", "lr": 5e-4}]

    @classmethod
    def check(cls, cfg):
        if cfg.update == "float":
            raise ConfigError("recipe 'toy-slow' is for device updates: set bits or a device")

    @classmethod
    def make_update(cls, cfg, setup, rng):
        return None   # the scheme's own update
