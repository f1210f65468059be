"""Recipes: named bundles of training defaults, with their own options and, where a recipe changes
how a step reaches the devices, the update it builds. ``--recipe NAME`` picks one.

A recipe is one class decorated ``@RECIPES.register``: ``name``; ``FIELDS`` (its own options, named
``<recipe>_<option>``: TrainConfig fields and ``xbar train`` flags); ``defaults(update)``, the
bundles of field values it fills, before the update scheme's own ``DEFAULTS`` (explicitly set
fields always win), or ``defaults_for(update, device)`` where they depend on the device; ``make_update(cfg, setup, rng)``, an update of its own or None (the scheme's);
``check(cfg)``, combinations it refuses. :mod:`xbar.train.recipes` imports the shipped ones.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..config import Field
from ..registry import Registry
from .defaults import SEED_RECIPE

RECIPES = Registry("recipe")


class Recipe:
    """Base class: no defaults of its own, the update scheme's update."""

    name = ""
    FIELDS: tuple[Field, ...] = ()

    @classmethod
    def defaults(cls, update: str) -> list[dict[str, Any]]:
        """Bundles of defaults for a run with update scheme `update`, first wins."""
        return []

    @classmethod
    def defaults_for(cls, update: str, device) -> list[dict[str, Any]]:
        """Bundles of defaults for a run with update scheme `update` on `device` (a Device), first
        wins: ``defaults(update)`` unless a recipe's defaults depend on the device."""
        return cls.defaults(update)

    @classmethod
    def make_update(cls, cfg, setup, rng: np.random.Generator):
        """An Update of the recipe's own for this resolved config, or None for the scheme's."""
        return

    @classmethod
    def check(cls, cfg) -> None:
        """ConfigError for a resolved config this recipe cannot train."""


@RECIPES.register
class SeedRecipe(Recipe):
    """The seed study's settings (:data:`xbar.train.defaults.SEED_RECIPE`) for every field left unset."""

    name = "seed"

    @classmethod
    def defaults(cls, update):
        return [SEED_RECIPE]
