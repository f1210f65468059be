"""Stacked training with each variant's own crossbars (:class:`OwnDevices`, a part of
:class:`xbar.train.stack.StackTrainer`), and the variants' divergence messages of a step
(:class:`Diverging`).

The stack's kernels stand in for exact devices only (:func:`xbar.train.stackable.exact_devices`).
With update ``qat``, or devices they do not model (programming or read noise, faults, spread,
drift, ADC/DAC, IR drop, I–V terms), every variant programs and reads its own crossbars, the
calls its run alone makes in the same order: each crossbar's random streams then give the same
draws, so histories, weights and conductances stay bit for bit those of the runs alone. The stack
still shares the data pipeline, the per-step Python and the digital arithmetic (optimizer,
rounding, activations, losses, rules).
"""

from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from ..kernels.stack import round_seed, round_stack
from ..tile.arrays import as_matrix, raise_nonfinite
from .trainer import overflow_message


class Diverging:
    """Per-variant divergence messages of one step (the first one of a variant wins)."""

    def __init__(self, K: int):
        self.msg: list[str | None] = [None] * K

    def set(self, k: int, text: str) -> None:
        if self.msg[k] is None:
            self.msg[k] = text

    def overflow(self, k: int, name: str, arr: np.ndarray) -> None:
        """The message of a crossbar that refused a non-finite array (Trainer.step's wording)."""
        try:
            raise_nonfinite(name, arr, arr)
        except ShapeError as exc:
            self.set(k, f"values left the float32 range ({exc})")

    def refused(self, k: int, name: str, arr: np.ndarray) -> None:
        """The message of programming refusing a non-finite weight or bias array."""
        try:
            as_matrix(name, arr)
        except ShapeError as exc:
            self.set(k, f"values left the float32 range ({exc})")


class OwnDevices:
    """The device side of a stack whose variants keep their own crossbars (``own``)."""

    def _own_read(self, i: int, a: np.ndarray, div: Diverging, way: str) -> np.ndarray:
        """Layer i read (way "mvm" or "mvm_t") through each variant's own crossbar, on a ((m, n)
        shared, or (K, m, n)). A variant with a message this step is not read (its run alone has
        stopped); a crossbar's refusal becomes the message its run alone gives."""
        K, m = len(self.alive), a.shape[-2]
        layer0 = self.trainers[0].net.layers[i]
        out = np.zeros((K, m, layer0.n_out if way == "mvm" else layer0.n_in), np.float32)
        for k in range(K):
            if div.msg[k] is None:
                try:
                    out[k] = getattr(self._layer(k, i).crossbar, way)(a if a.ndim == 2 else a[k])
                except ShapeError as exc:
                    self._refusal(k, exc, div)
        return out

    def _layer(self, k: int, i: int):
        return self.trainers[int(self.alive[k])].net.layers[i]

    def _refusal(self, k: int, exc: ShapeError, div: Diverging) -> None:
        """Trainer.step's handling of a crossbar's ShapeError, for variant k."""
        if not (overflow_message(exc) or not all(np.isfinite(a[k]).all() for a in self.W + self.b)):
            raise exc
        div.set(k, f"values left the float32 range ({exc})")

    def _own_program(self, div: Diverging) -> None:
        """The update's after_step with each variant's own crossbars, as its run alone does:
        nearest rounds the feedback, then layer by layer each variant's weights and bias (the
        stack's seed quantizer); both write them through the layer's program(). A variant that
        fails stops there, as its run alone would."""
        K = len(self.alive)
        bad = np.empty(K, np.int64)
        for B, q in zip(self.B, self.fbq):
            round_stack(B, q["lo"], q["hi"], q["bits"], q["symm"], q["local"], bad)
        for i in range(self.n_layers):
            for k in range(K):
                if div.msg[k] is not None:
                    continue
                if self.rounds:
                    q = self.qp[i]
                    args = (q["lo"][k], q["hi"][k], q["bits"][k], q["symm"][k], q["local"][k])
                    round_seed(self.W[i][k].reshape(-1), *args)
                    round_seed(self.b[i][k], *args)
                layer = self._layer(k, i)
                layer.W[...] = self.W[i][k]
                layer.b[...] = self.b[i][k]
                try:
                    layer.program()
                except ShapeError as exc:
                    self._refusal(k, exc, div)


__all__ = ["Diverging", "OwnDevices"]
