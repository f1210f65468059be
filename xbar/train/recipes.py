"""The shipped recipes (``seed``: :mod:`xbar.train.recipe`; ``hwa``: :mod:`xbar.train.hwa`),
imported here so that they register, and the update a resolved config trains with."""

from __future__ import annotations

import numpy as np

from . import hwa  # noqa: F401  (registers "hwa")
from .recipe import RECIPES, Recipe
from .update import Update, make_update

__all__ = ["RECIPES", "Recipe", "build_update"]


def build_update(cfg, rng: np.random.Generator) -> Update:
    """The update a resolved config trains with: its recipe's own, else its scheme's (``from_config``)."""
    setup = cfg.device_setup()
    if cfg.recipe is not None:
        upd = RECIPES.get(cfg.recipe).make_update(cfg, setup, rng)
        if upd is not None:
            return upd
    return make_update(cfg.update, setup, rng, cfg=cfg)
