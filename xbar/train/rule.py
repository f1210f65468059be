"""The base of the training rules, their registry, and what several rules share (one-hot labels).

A rule is one class: ``deltas`` (what each layer learns from), optional ``setup`` / ``start_epoch`` /
``step`` / ``feedback`` hooks, and, as class attributes, its config: ``FIELDS`` (its own options,
named ``<rule>_<option>``: they become TrainConfig fields and ``xbar train`` flags), ``options``
(the constructor keywords from a config), ``resolve`` (defaults that depend on other fields),
``check`` (combinations it cannot train) and ``time_factor`` (for sweep time estimates).
Decorate it with ``@RULES.register``; :mod:`xbar.train.rules` imports the shipped ones.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..config import Field
from ..errors import ShapeError
from ..nn import Cache, Network
from ..registry import Registry

RULES = Registry("rule")


def one_hot(y: np.ndarray, n_classes: int) -> np.ndarray:
    """(m,) integer labels -> (m, n_classes) float32 one-hot rows (for rules that use labels)."""
    out = np.zeros((len(y), n_classes), np.float32)
    out[np.arange(len(y)), y] = 1
    return out


class Rule:
    """Base class: turns the output error into per-layer deltas."""

    name = ""
    FIELDS: tuple[Field, ...] = ()   # this rule's own config fields (TrainConfig.<rule>_<option>)

    @classmethod
    def options(cls, cfg) -> dict[str, Any]:
        """The constructor's keywords from a resolved config (its FIELDS, renamed)."""
        return {}

    @classmethod
    def resolve(cls, filled: dict[str, Any]) -> None:
        """Fill this rule's fields that default from others (in place; None fields only)."""

    @classmethod
    def check(cls, cfg) -> None:
        """ConfigError for a resolved config this rule cannot train."""

    @classmethod
    def time_factor(cls, config: dict[str, Any]) -> float:
        """Epoch time relative to bp (sweep --dry-run estimates)."""
        return 1.0

    def setup(self, net: Network, rng: np.random.Generator) -> None:
        """Create whatever fixed state the rule needs (feedback matrices) for `net`."""

    def deltas(self, net: Network, caches: list[Cache], e: np.ndarray,
               y: np.ndarray | None = None) -> list[np.ndarray | None]:
        """What each layer learns from, in place of dL/da (None: the layer sits this step out).

        e: dL/da of the output layer (batch, classes); y: the batch labels (batch,), for rules
        whose signals use them (hsic, conditioned sg).
        """
        raise NotImplementedError

    def start_epoch(self, epoch: int) -> None:
        """Called before every epoch (1-based)."""

    def step(self) -> None:
        """Update the rule's own learnable state after the optimizer step (SG modules)."""

    def feedback(self) -> list[np.ndarray]:
        """Fixed feedback matrices (mutable, in place), for update schemes that quantize them."""
        return []

    def set_feedback(self, i: int, B) -> None:
        """Replace feedback matrix i in place (tests set FA's B = W, DFA's B = W_{i+1}ᵀ)."""
        current = self.feedback()
        if not 0 <= i < len(current):
            raise ShapeError(f"B[{i}]: rule {self.name!r} has {len(current)} feedback matrices")
        B = np.asarray(B, dtype=np.float32)
        if B.shape != current[i].shape:
            raise ShapeError(f"B[{i}]: expected shape {current[i].shape}, got {B.shape}")
        current[i][...] = B


def make_rule(name: str, **options) -> Rule:
    """A rule by name, built with its options (e.g. hsic: sigma, beta, eps, hsic_epochs; sg:
    conditioned, lr); unknown names list the valid ones."""
    return RULES.get(name)(**options)
