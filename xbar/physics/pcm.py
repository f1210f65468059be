"""IBM's statistical PCM model: programming noise, drift and 1/f read noise as functions of G and t.

Fitted on a million-device doped-GST array: S. R. Nandakumar et al., "Phase-change memory models
for deep learning training and inference", IEEE ICECS 2019, and V. Joshi et al., "Accurate deep
neural network inference using computational phase-change memory", Nat. Commun. 11, 2473 (2020).
The equations, clamps and defaults follow IBM aihwkit 1.2's PCMLikeNoiseModel
(src/aihwkit/inference/noise/pcm.py), written here from those equations. Throughout,
x = G_T / g_max is the normalised target and t counts from the end of programming; the model's
own clock starts t0 earlier, so it sees t + t0.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from ..config import Field, where_text
from ..errors import ConfigError
from .base import Drift, ProgramNoise, ReadNoise, add_gaussian, clip_field, register

SOURCE = ("S. R. Nandakumar et al., IEEE ICECS 2019; V. Joshi et al., Nat. Commun. 11, 2473 (2020); "
          "as implemented in IBM aihwkit 1.2 PCMLikeNoiseModel")

_G_MAX = Field("g_max_us", "float", 25.0, "The model's g_max: x = G / g_max (aihwkit maps max|W| to it).",
               lo=0.0, lo_open=True, hi=1e6, unit="µS")
_T0 = Field("t0_s", "float", 20.0, "Time after programming of the first read, where drift starts; the "
            "model's clock reads t + t0.", lo=0.0, lo_open=True, unit="s")


@register
class PCMProgramNoise(ProgramNoise):
    """G = max(G_T + scale sigma(x) N(0, 1), 0), sigma(x) = (g_max / g_ref) sum_i c_i x^i.

    Default sigma(x) = 0.26348 + 1.9650 x - 1.1731 x^2 µS: 0.26 µS at G_T = 0 (the idle half of a
    differential pair is still written), 1.06 µS at g_max. Only negative conductances are clipped.
    """

    name: ClassVar[str] = "pcm-aihwkit"
    source: ClassVar[str] = SOURCE
    FIELDS = (
        _G_MAX,
        Field("coeffs_us", "floats", (0.26348, 1.9650, -1.1731),
              "Polynomial c_0, c_1, ... of the programming-noise std in x = G_T / g_max.", unit="µS"),
        Field("coeffs_g_max_us", "float", 25.0, "g_max at which coeffs_us were fitted; sigma scales with "
              "g_max / coeffs_g_max_us.", lo=0.0, lo_open=True, hi=1e6, unit="µS"),
        Field("scale", "float", 1.0, "Multiplies the programming-noise std (aihwkit prog_noise_scale).",
              lo=0.0, hi=100.0),
        clip_field("nonnegative"),
    )

    def sigma(self, g_target: np.ndarray) -> np.ndarray:
        """Std (µS) of one programming aimed at g_target (µS), scale included."""
        x = np.asarray(g_target, dtype=np.float64) / self.g_max_us
        poly = np.zeros_like(x)
        for c in reversed(self.coeffs_us):   # Horner
            poly = poly * x + c
        # |.|: a fitted polynomial may dip below zero outside the fitted range; the spread is its size
        return np.abs(self.scale * poly * (self.g_max_us / self.coeffs_g_max_us))

    def write(self, g_target, lo, hi, window_us, rng):
        return add_gaussian(g_target, self.sigma(g_target), self.clip, lo, hi, rng)


@register
class PCMDrift(Drift):
    """G(t) = G_prog ((t + t0) / t0)^-nu, nu = scale |mu(x) + s(x) N(0, 1)| drawn from the target.

    mu(x) = clamp(a_mu ln x + b_mu, mu_min, mu_max), s(x) = clamp(a_s ln x + b_s, s_min, s_max), with
    x floored at x_min: 0.049 +- 0.008 above x ~ 0.3 (7 µS), up to 0.1 +- 0.045 near G = 0.
    """

    name: ClassVar[str] = "pcm-aihwkit"
    source: ClassVar[str] = SOURCE
    state_dependent: ClassVar[bool] = True
    FIELDS = (
        _G_MAX,
        _T0,
        Field("nu_mean_slope", "float", -0.0155, "a_mu: slope of the mean nu in ln x.", lo=-1.0, hi=1.0),
        Field("nu_mean_offset", "float", 0.0244, "b_mu: mean nu at x = 1 before clamping.", lo=-1.0, hi=1.0),
        Field("nu_mean_min", "float", 0.049, "Lower clamp of the mean nu.", lo=0.0, hi=1.0),
        Field("nu_mean_max", "float", 0.1, "Upper clamp of the mean nu.", lo=0.0, hi=1.0),
        Field("nu_std_slope", "float", -0.0125, "a_s: slope of the std of nu in ln x.", lo=-1.0, hi=1.0),
        Field("nu_std_offset", "float", -0.0059, "b_s: std of nu at x = 1 before clamping.", lo=-1.0, hi=1.0),
        Field("nu_std_min", "float", 0.008, "Lower clamp of the std of nu.", lo=0.0, hi=1.0),
        Field("nu_std_max", "float", 0.045, "Upper clamp of the std of nu.", lo=0.0, hi=1.0),
        Field("x_min", "float", 1e-7, "Floor of x = |G_T| / g_max before the logarithm.", lo=0.0, lo_open=True,
              hi=1.0),
        Field("scale", "float", 1.0, "Multiplies nu (aihwkit drift_scale).", lo=0.0, hi=100.0),
    )

    @classmethod
    def check(cls, values, *, file=None, prefix=""):
        for q in ("nu_mean", "nu_std"):
            if values[f"{q}_min"] > values[f"{q}_max"]:
                raise ConfigError(f"{where_text(file, prefix + q + '_min')} = {values[q + '_min']} must be at "
                                  f"most {q}_max = {values[q + '_max']}")
        return values

    def nu_stats(self, g_target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mu, s): mean and std of the Gaussian that nu is the (scaled) absolute value of."""
        ln_x = np.log(np.maximum(np.abs(np.asarray(g_target, dtype=np.float64)) / self.g_max_us, self.x_min))
        mu = np.clip(self.nu_mean_slope * ln_x + self.nu_mean_offset, self.nu_mean_min, self.nu_mean_max)
        s = np.clip(self.nu_std_slope * ln_x + self.nu_std_offset, self.nu_std_min, self.nu_std_max)
        return mu, s

    def draw_nu(self, g_target, rng):
        if self.scale == 0:
            return None
        mu, s = self.nu_stats(g_target)
        return self.scale * np.abs(mu + s * rng.standard_normal(mu.shape))

    def apply(self, g_prog, nu, t_s):
        if nu is None or t_s is None or not t_s > 0:
            return g_prog
        return g_prog * ((t_s + self.t0_s) / self.t0_s) ** (-nu)


@register
class PCMReadNoise(ReadNoise):
    """Accumulated 1/f noise: std = scale |G| Q(x_prog) sqrt(ln((t + t0 + t_read) / (2 t_read))).

    Q(x) = min(q / max(x^q_exp, q_base_min), q_max) with x_prog = |G_prog| / g_max: the noise
    factor is set by the conductance as programmed, its size by the present (drifted) one.
    aihwkit draws this noise once per inference time and clips the sum at 0; here it is the
    variance of each read, unclipped.
    """

    name: ClassVar[str] = "pcm-aihwkit"
    source: ClassVar[str] = SOURCE
    needs_g_prog: ClassVar[bool] = True
    FIELDS = (
        _G_MAX,
        _T0,
        Field("t_read_s", "float", 250e-9, "Read duration of the 1/f fit.", lo=0.0, lo_open=True, hi=1.0,
              unit="s"),
        Field("q", "float", 0.0088, "Q(x) = q / x^q_exp: 1/f noise amplitude at x = 1.", lo=0.0, hi=10.0),
        Field("q_exp", "float", 0.65, "Exponent of x in Q(x).", lo=0.0, hi=10.0),
        Field("q_base_min", "float", 1e-3, "Floor of x^q_exp (keeps Q finite at G = 0).", lo=0.0, lo_open=True,
              hi=1.0),
        Field("q_max", "float", 0.2, "Upper clamp of Q.", lo=0.0, hi=10.0),
        Field("scale", "float", 1.0, "Multiplies the read-noise std (aihwkit read_noise_scale).",
              lo=0.0, hi=100.0),
    )

    def sigma_rel(self, g_prog: np.ndarray, t_s: float | None) -> np.ndarray:
        """std / |G| of one read, t_s seconds after programming (None: right after, t = 0)."""
        t = (0.0 if t_s is None else float(t_s)) + self.t0_s
        x_pow = (np.abs(np.asarray(g_prog, dtype=np.float64)) / self.g_max_us) ** self.q_exp
        q_s = np.minimum(self.q / np.maximum(x_pow, self.q_base_min), self.q_max)
        # (the log is positive whenever t > t_read; the floor only guards a t0 below the read time)
        return self.scale * q_s * np.sqrt(max(np.log((t + self.t_read_s) / (2.0 * self.t_read_s)), 0.0))

    def variance(self, g, t_s, window_us, *, g_prog=None):
        g = np.asarray(g, dtype=np.float64)
        return (g * self.sigma_rel(g if g_prog is None else g_prog, t_s)) ** 2
