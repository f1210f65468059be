"""What a programmed crossbar holds: conductances, gains, offsets, bias, mask and time.

:class:`ArrayState` is plain data. ``gp0``/``gn0`` are the conductances as programmed (t = t0),
``gp``/``gn`` as they read now (after drift); all are (P, rows, out) in µS, P planes (bit slices).
``nu`` holds drift exponents drawn at programming by state-dependent drift models (n_dev, P, rows,
out), else None. The digital periphery applies ``alpha`` (column gain) times ``drift_compensation``,
adds ``beta`` (offset, on cells in use) and ``b_digital``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

ARRAYS = ("gp0", "gn0", "gp", "gn", "sig", "alpha", "beta", "b_digital", "mask", "nu")
SCALARS = ("shape", "n_in", "has_bias_row", "t_s", "drift_compensation")


@dataclass
class ArrayState:
    shape: tuple[int, int]
    n_in: int
    has_bias_row: bool
    gp0: np.ndarray
    gn0: np.ndarray
    gp: np.ndarray
    gn: np.ndarray
    sig: np.ndarray
    alpha: np.ndarray
    beta: np.ndarray
    b_digital: np.ndarray | None = None
    mask: np.ndarray | None = None
    nu: np.ndarray | None = None
    t_s: float | None = None
    drift_compensation: float = 1.0

    def to_dict(self) -> tuple[dict, dict[str, np.ndarray]]:
        """(JSON-ready scalars, arrays); None arrays are left out."""
        scalars = {k: getattr(self, k) for k in SCALARS}
        scalars["shape"] = list(self.shape)
        return scalars, {k: getattr(self, k) for k in ARRAYS if getattr(self, k) is not None}

    @classmethod
    def from_dict(cls, scalars: dict, arrays: dict[str, np.ndarray]) -> ArrayState:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in scalars.items() if k in known}
        values["shape"] = tuple(int(v) for v in scalars["shape"])
        values["n_in"] = int(scalars["n_in"])
        values["has_bias_row"] = bool(scalars["has_bias_row"])
        values["drift_compensation"] = float(scalars.get("drift_compensation", 1.0))
        values.update({k: np.asarray(arrays[k]) for k in ARRAYS if k in arrays})
        return cls(**values)
