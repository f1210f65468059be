"""Mask algebra: the kept-weight masks of a network, unit groups, ranking by scores, and installing
masks on a trainer (its update scheme brings the devices in line).

A pruned weight is a False entry of its layer's mask (``CrossbarLayer.set_mask``): it gets no
gradient, counts in no cost statistic, and its cells are never written (``Crossbar.program(W, b,
mask)``: both devices at their own g_min, no write noise). Masks only grow.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

from ..cost import Periphery, layer_mask
from ..errors import ConfigError
from ..nn import Network
from .config import PruneStop

# ---- masks and groups -----------------------------------------------------------------------------
# A "group" is a set of units pruned as a whole: ("input", 0) the network inputs (rows of layer 0),
# ("hidden", h) the outputs of layer h (columns of layer h and rows of layer h + 1).

def current_masks(net: Network) -> list[np.ndarray]:
    """A copy of every layer's mask (all True where a layer has none)."""
    return [layer_mask(layer).copy() for layer in net.layers]


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


def affected(group: tuple[str, int]) -> tuple[int, ...]:
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

    The update scheme's ``on_mask_change`` hook brings the devices in line: qat/nearest/stochastic
    reprogram the layer from its stored (masked) weights; the in-situ schemes (mixed, pulse) hold
    the weights in the devices, so the pruned cells are written to weight 0 and their accumulators
    cleared, every other cell keeps its conductance.
    """
    net, upd = trainer.net, trainer.update
    changed = []
    for i, (layer, m) in enumerate(zip(net.layers, masks)):
        old = layer_mask(layer)
        if np.array_equal(old, m):
            continue
        if np.any(m & ~old):
            raise ConfigError(f"layer {i}: a mask may only remove weights (pruned weights stay pruned)")
        layer.set_mask(m.copy())
        changed.append(i)
        if layer.crossbar is None:
            continue
        upd.on_mask_change(i, layer, old)
    return changed


# ---- ranking -------------------------------------------------------------------------------------

def normalised(s: np.ndarray, live: np.ndarray, how: str) -> np.ndarray:
    """Scores divided by their l1 or l2 norm over the live entries (seed 003's normalisation)."""
    if how == "none":
        return s
    v = s[live]
    norm = np.abs(v).sum() if how == "l1" else np.sqrt(np.square(v).sum())
    return s / norm if norm > 0 else s


def count(fraction: float, n: int) -> int:
    """floor(fraction · n), immune to the float error of fractions like 1 − 0.7."""
    return math.floor(fraction * n + 1e-9)


def prune_lowest(scores: list[np.ndarray], lives: list[np.ndarray], n_target: int) -> list[np.ndarray]:
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


def sparsity(masks) -> dict[str, Any]:
    total = sum(m.size for m in masks)
    return {"sparsity": 1 - sum(int(m.sum()) for m in masks) / total,
            "sparsity_layers": [1 - float(m.mean()) for m in masks]}


def partial_arrays(mask: np.ndarray, per: Periphery, has_bias: bool):
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
