"""Read I–V curves of a cell: ohmic, or a polynomial in V with conductance-dependent coefficients.

The nonlinear form is the one CrossSim uses for the RRAM of Milo et al. (IRPS 2021):

    I(V) = G V + NL2(G) V² + NL3(G) V³,

with NL2 and NL3 functions of log10 G. xbar writes the coefficients relative to G,

    NL2(G) = G Σ_i a_i u^i   [µS/V],     NL3(G) = G Σ_i b_i u^i   [µS/V²],     u = log10(G / 1 µS),

so a cell at G = 0 carries no current and `a`, `b` read as "fractional excess current per volt"
(NL3 / G = 2.5 V⁻² means +10 % at 0.2 V). Inputs of both signs are applied as voltages of both
signs; the cell is taken to be odd-symmetric, I(−V) = −I(V), so the V² term is applied as V|V|
(``even_term = "odd"``). ``even_term = "as-fitted"`` keeps V² for both polarities (a rectifying
cell: the current of a negative read is G V + NL2 V² + NL3 V³ as written).

The shipped example preset (devices/rram-iv-example.toml) uses this form with illustrative
coefficients, not the paper's fit: the fitted numbers were not available to us. Give your own fit
with ``[read_iv] model = "polynomial"`` in a device file.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from ..config import Field
from .base import ReadIV, register


@register
class OhmicIV(ReadIV):
    """I = G V: the linear cell every device had before read I–V models existed."""

    name: ClassVar[str] = "constant"
    source: ClassVar[str] = "ohmic cell (linear I–V)"
    FIELDS = ()

    def coefficients(self, g):
        z = np.zeros(np.shape(g))
        return z, z


@register
class PolynomialIV(ReadIV):
    """I = G V + NL2(G) V|V| + NL3(G) V³, NL_k(G) = G · polynomial in log10 G (see the module)."""

    name: ClassVar[str] = "polynomial"
    source: ClassVar[str] = ("polynomial I–V of the form used by Sandia CrossSim for the RRAM of V. Milo et al., "
                             "IEEE IRPS 2021 (cite the fit in the device file)")
    FIELDS = (
        Field("nl2_rel", "floats", (0.0,), "a_0, a_1, ... of NL2(G) / G = sum_i a_i log10(G/µS)^i (per volt).",
              unit="1/V"),
        Field("nl3_rel", "floats", (0.0,), "b_0, b_1, ... of NL3(G) / G = sum_i b_i log10(G/µS)^i (per volt²).",
              unit="1/V²"),
        Field("even_term", "str", "odd", "The V² term for negative reads: odd (V|V|, I(-V) = -I(V)) or "
              "as-fitted (V², the same sign for both polarities).", choices=("odd", "as-fitted")),
        Field("v_max_v", "float", 0.5, "Largest read voltage the fit is validated for; a crossbar refuses a "
              "larger v_read.", lo=0.0, lo_open=True, hi=10.0, unit="V"),
    )

    @property
    def has_even(self) -> bool:
        return any(self.nl2_rel)

    @property
    def has_cubic(self) -> bool:
        return any(self.nl3_rel)

    def coefficients(self, g):
        g = np.asarray(g, dtype=np.float64)
        u = np.log10(np.maximum(g, 1e-12))

        def rel(coeffs):
            poly = np.zeros_like(g)
            for c in reversed(coeffs):   # Horner
                poly = poly * u + c
            return g * poly
        return rel(self.nl2_rel), rel(self.nl3_rel)
