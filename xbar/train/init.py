"""``train --init``: start a run from a saved one (weights, biases, masks, batch norms), e.g. the
hardware-aware fine-tuning of an imported torch model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .trainer import int_seed


def init_defaults(path: str | Path) -> dict[str, Any]:
    """The network (spec file) and dataset a run was made with, for `xbar train --init` when the
    command line does not give them."""
    from ..checkpoint import load
    cfg = load(path).config
    return {k: cfg[k] for k in ("network", "dataset") if cfg.get(k)}


def init_trainer(trainer, path: str | Path) -> None:
    """Start `trainer` (a Trainer built for the same network) from the run in `path`: weights,
    biases, pruning masks and batch norms are copied in place (the optimizer keeps its arrays),
    then the update scheme programs the crossbars anew (seeded as the trainer's own)."""
    from ..checkpoint import load
    run = load(path)
    src = run.network().layers
    net = trainer.net
    got = [(a.kind, a.n_in, a.n_out, a.branch, a.bn is not None) for a in src]
    want = [(b.kind, b.n_in, b.n_out, b.branch, b.bn is not None) for b in net.layers]
    if got != want:
        raise ConfigError(f"init = {str(path)!r}: its layers (kind, rows, columns, branch, batch norm) {got} do not "
                          f"match network {trainer.cfg.network!r}: {want}; train the run's own network (default)")
    for a, b in zip(src, net.layers):
        b.set_weights(a.W, a.b)
        if a.b is None and b.b is not None:
            b.b[...] = 0
        b.set_mask(a.mask)
        if a.bn is not None:
            b.bn.gamma[...], b.bn.beta[...] = a.bn.gamma, a.bn.beta
            b.bn.running_mean[...], b.bn.running_var[...] = a.bn.running_mean, a.bn.running_var
            b.bn.eps, b.bn.momentum = a.bn.eps, a.bn.momentum
    trainer.update.attach(net, [int_seed(trainer.cfg.seed, 4 + i) for i in range(len(net.layers))],
                          trainer.feedback)


__all__ = ["init_defaults", "init_trainer"]
