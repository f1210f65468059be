"""State-dependent fits to measured devices, as Sandia's CrossSim ships them (simulator/devices/custom/).

Each fit is the one CrossSim publishes for its paper, written here from the numbers:
- PCM, Joshi et al. 2020: programming-noise std quadratic in G (Fig. 3b), 0.25-25 µS;
- RRAM, Milo et al. 2021: programming-noise std linear in G (Fig. 4, IGVVA-100), 50-225 µS;
- RRAM, Wan et al. 2022: programming-noise std cubic in G (Extended Data Fig. 3, t = 1 s), <= 39.26 µS;
- SONOS, Agrawal et al. 2022: spread, read noise and a time-dependent drift of the cell current
  (Figs. 10a, 10b, 11b), measured at 0-5 days.
The polynomial fits are one model, "polynomial", with the fits as named defaults. CrossSim models
neither drift nor read noise for the PCM and RRAM devices.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from ..config import Field
from .base import Drift, ProgramNoise, ReadNoise, add_gaussian, clip_field, register

JOSHI = ("V. Joshi et al., Accurate deep neural network inference using computational phase-change memory, "
         "Nat. Commun. 11, 2473 (2020), Fig. 3(b); quadratic fit from Sandia CrossSim (PCM_Joshi.py)")
MILO = ("V. Milo et al., Optimized programming algorithms for multilevel RRAM in hardware neural networks, "
        "IEEE IRPS 2021, Fig. 4 (IGVVA-100); linear fit from Sandia CrossSim (RRAM_Milo.py)")
WAN = ("W. Wan et al., A compute-in-memory chip based on resistive random-access memory, Nature 608, 504 "
       "(2022), Extended Data Fig. 3 (t = 1 s); cubic fit from Sandia CrossSim (RRAM_Wan.py)")
AGRAWAL = ("V. Agrawal et al., Subthreshold operation of SONOS analog memory to enable accurate low-power "
           "neural network inference, IEEE IEDM 2022, 21.7, Figs. 10-11; fits from Sandia CrossSim (SONOS.py)")


def _poly_fields(coeffs: tuple[float, ...], clip: str) -> tuple[Field, ...]:
    return (
        Field("coeffs_us", "floats", coeffs, "c_0, c_1, ... of the programming-noise std "
              "sigma(G) = max(sum_i c_i G^i, 0), G in µS.", unit="µS"),
        Field("scale", "float", 1.0, "Multiplies the programming-noise std.", lo=0.0, hi=100.0),
        clip_field(clip),
    )


@register
class PolynomialProgramNoise(ProgramNoise):
    """G = G_T + scale sigma(G_T) N(0, 1), sigma(G) = max(sum_i c_i G^i, 0) µS: a measured fit."""

    name: ClassVar[str] = "polynomial"
    source: ClassVar[str] = "a polynomial fit of measured programming spread (cite it in the device file)"
    FIELDS = _poly_fields((0.0,), "nonnegative")

    def sigma(self, g_target: np.ndarray) -> np.ndarray:
        """Std (µS) of one programming aimed at g_target (µS), scale included."""
        g = np.asarray(g_target, dtype=np.float64)
        poly = np.zeros_like(g)
        for c in reversed(self.coeffs_us):   # Horner
            poly = poly * g + c
        return self.scale * np.maximum(poly, 0.0)

    def write(self, g_target, lo, hi, window_us, rng):
        return add_gaussian(g_target, self.sigma(g_target), self.clip, lo, hi, rng)


@register
class JoshiPCMProgramNoise(PolynomialProgramNoise):
    """PCM (Joshi 2020): sigma = 0.28639 + 0.075857 G - 0.0017877 G^2 µS, clipped at 0 (as CrossSim)."""

    name: ClassVar[str] = "crosssim-pcm-joshi"
    source: ClassVar[str] = JOSHI
    # (fitted to conductances read 27.36 s after programming)
    FIELDS = _poly_fields((0.28638599, 0.07585724, -0.00178767), "nonnegative")


@register
class MiloRRAMProgramNoise(PolynomialProgramNoise):
    """RRAM (Milo 2021): sigma = 4.7823 - 0.009107 G µS over 50-225 µS; CrossSim does not clip."""

    name: ClassVar[str] = "crosssim-rram-milo"
    source: ClassVar[str] = MILO
    FIELDS = _poly_fields((4.782321, -0.009107), "none")


@register
class WanRRAMProgramNoise(PolynomialProgramNoise):
    """RRAM (Wan 2022): sigma = 1.053 + 0.2374 G - 0.01167 G^2 + 1.536e-4 G^3 µS; CrossSim does not clip."""

    name: ClassVar[str] = "crosssim-rram-wan"
    source: ClassVar[str] = WAN
    FIELDS = _poly_fields((1.053, 2.374e-1, -1.167e-2, 1.536e-4), "none")


# ---- SONOS (Agrawal 2022) ----------------------------------------------------------------------
# CrossSim models the SONOS cell current I (nA, 0-1600) at a fixed drain bias and gives the
# window as "~0 to 16 µS", i.e. I = G * 0.1 V; v_read_v converts. Spread and read noise are
# saturating exponentials sigma_I = A (1 - exp(-I / B)) nA; the drift of the mean current is a
# 10th-degree polynomial in I. A, B and the polynomial were fitted at t = 0 (A, B only),
# 1, 2, 3, 4 and 5 days; between them they are interpolated linearly in t.
SONOS_DAYS = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
SONOS_SPREAD_A = np.array([19.88665, 25.59102, 28.72753, 31.04318, 33.76214, 34.57909])   # nA
SONOS_SPREAD_B = np.array([176.3115, 186.85544, 193.56834, 198.90332, 204.77023, 207.34309])  # nA
SONOS_READ_A, SONOS_READ_B = 12.58037, 215.36557   # nA; read noise does not change with time
# Mean drift dI(I) = sum_k p_k I^k (nA, I in nA), one row per day of SONOS_DAYS (none at t = 0).
SONOS_DRIFT_POLY = np.array([
    [0.0] * 11,
    [6.83650e-01, 6.51250e-03, -4.03163e-04, 3.37944e-06, -1.87435e-08, 5.88902e-11, -1.07685e-13,
     1.17751e-16, -7.60016e-20, 2.67255e-23, -3.94954e-27],
    [6.60925e-01, 8.60627e-03, -1.72936e-04, 7.44096e-07, -5.94866e-09, 2.36734e-11, -4.83740e-14,
     5.56072e-17, -3.65397e-20, 1.28405e-23, -1.87450e-27],
    [1.15821e00, 1.96116e-02, -4.70807e-04, 3.67510e-06, -2.08786e-08, 6.59752e-11, -1.19499e-13,
     1.28435e-16, -8.11574e-20, 2.78802e-23, -4.02057e-27],
    [8.72216e-01, 1.70926e-02, -2.23370e-04, 1.57526e-06, -1.32779e-08, 5.08256e-11, -1.01251e-13,
     1.14633e-16, -7.46124e-20, 2.60559e-23, -3.78724e-27],
    [1.15294e00, 1.03149e-02, -6.05199e-05, 1.76086e-08, -6.46690e-09, 3.39044e-11, -7.53872e-14,
     8.98185e-17, -6.00346e-20, 2.12615e-23, -3.11099e-27],
])

_V_READ = Field("v_read_v", "float", 0.1, "Read bias converting G to the fitted cell current: I = G V "
                "(0.1 V maps CrossSim's 1600 nA to 16 µS).", lo=0.0, lo_open=True, hi=10.0, unit="V")
_SCALE = Field("scale", "float", 1.0, "Multiplies the random spread.", lo=0.0, hi=100.0)


def _na_per_us(v_read_v: float) -> float:
    return v_read_v * 1e3   # 1 µS at 1 V is 1 µA = 1000 nA


def _saturating(i_na: np.ndarray, a: float, b: float) -> np.ndarray:
    return np.maximum(a - a * np.exp(-i_na / b), 0.0)


def sonos_fit_at(days: float, beyond: str = "hold") -> tuple[np.ndarray, float, float]:
    """(drift polynomial, A, B) at `days` after programming, linear in t between measured days.

    beyond = "hold" keeps the 5-day fit for later times; "extrapolate" continues the last segment
    linearly, as CrossSim does (its authors do not vouch for it past 5 days).
    """
    d = SONOS_DAYS
    if days >= d[-1] and beyond == "hold":
        return SONOS_DRIFT_POLY[-1], float(SONOS_SPREAD_A[-1]), float(SONOS_SPREAD_B[-1])
    k = int(np.clip(np.searchsorted(d, days, side="right") - 1, 0, len(d) - 2))
    w = (days - d[k]) / (d[k + 1] - d[k])

    def lerp(v):
        return v[k] + w * (v[k + 1] - v[k])

    return lerp(SONOS_DRIFT_POLY), float(lerp(SONOS_SPREAD_A)), float(lerp(SONOS_SPREAD_B))


@register
class SONOSProgramNoise(ProgramNoise):
    """I = max(I_T + scale A0 (1 - exp(-I_T / B0)) N(0, 1), 0): spread right after programming."""

    name: ClassVar[str] = "crosssim-sonos"
    source: ClassVar[str] = AGRAWAL
    FIELDS = (_V_READ, _SCALE, clip_field("nonnegative"))

    def sigma(self, g_target: np.ndarray) -> np.ndarray:
        k = _na_per_us(self.v_read_v)
        i = np.asarray(g_target, dtype=np.float64) * k
        return self.scale * _saturating(i, SONOS_SPREAD_A[0], SONOS_SPREAD_B[0]) / k

    def write(self, g_target, lo, hi, window_us, rng):
        return add_gaussian(g_target, self.sigma(g_target), self.clip, lo, hi, rng)


@register
class SONOSReadNoise(ReadNoise):
    """std_I = scale A_r (1 - exp(-I / B_r)) nA per read, at every time (Fig. 11b)."""

    name: ClassVar[str] = "crosssim-sonos"
    source: ClassVar[str] = AGRAWAL
    FIELDS = (_V_READ, _SCALE)

    def variance(self, g, t_s, window_us, *, g_prog=None):
        k = _na_per_us(self.v_read_v)
        i = np.asarray(g, dtype=np.float64) * k
        return (self.scale * _saturating(i, SONOS_READ_A, SONOS_READ_B) / k) ** 2


@register
class SONOSDrift(Drift):
    """Mean current I + dI_t(I), spread growing from A0 (1 - e^(-I/B0)) to A_t (1 - e^(-I/B_t)).

    The per-device parameter is one standard normal z, drawn at programming: at t days a device
    sits at I + dI_t(I) + z sqrt(sigma_t^2 - sigma_0^2), so the spread around the drifted mean is
    sigma_t as measured (the write spread sigma_0 is already in G_prog). CrossSim instead draws
    the whole t-day spread afresh from the target and evaluates dI at the target, not at G_prog.
    """

    name: ClassVar[str] = "crosssim-sonos"
    source: ClassVar[str] = AGRAWAL
    state_dependent: ClassVar[bool] = True
    FIELDS = (
        _V_READ, _SCALE,
        Field("beyond_fit", "str", "hold", "After 5 days (the last measurement): keep the 5-day fit, or "
              "extrapolate the last segment linearly as CrossSim does.", choices=("hold", "extrapolate")),
    )

    def draw_nu(self, g_target, rng):
        return rng.standard_normal(np.shape(g_target))

    def apply(self, g_prog, nu, t_s):
        if nu is None or t_s is None or not t_s > 0:
            return g_prog
        k = _na_per_us(self.v_read_v)
        i = np.asarray(g_prog, dtype=np.float64) * k
        poly, a, b = sonos_fit_at(t_s / 86400.0, self.beyond_fit)
        d_i = np.zeros_like(i)
        for c in poly[::-1]:   # Horner
            d_i = d_i * i + c
        i_mean = i + d_i
        var_t = _saturating(i_mean, a, b) ** 2
        var_0 = _saturating(i_mean, SONOS_SPREAD_A[0], SONOS_SPREAD_B[0]) ** 2
        extra = np.sqrt(np.maximum(var_t - var_0, 0.0))
        return np.maximum(i_mean + self.scale * extra * nu, 0.0) / k
