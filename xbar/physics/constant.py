"""The constant-parameter models every preset used before device models existed.

One number per effect: write noise relative to the window, read noise relative to G or to the
window, and a drift exponent nu ~ N(nu_mean, nu_std) per device. They reproduce the crossbar's
earlier results bit for bit (same expressions, same random draws in the same order), and with
their defaults they do nothing.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from ..config import Field
from .base import Drift, Model, ProgramNoise, ReadNoise, register

_SOURCE = "xbar constant-parameter model (one number per effect, independent of G and t)"


@register
class ConstantProgramNoise(ProgramNoise):
    """G = clip(G_T + rel (g_max - g_min) N(0, 1), lo, hi): the same spread at every conductance."""

    name: ClassVar[str] = "constant"
    source: ClassVar[str] = _SOURCE
    FIELDS = (
        Field("rel", "float", 0.0, "Std of write noise per programming, relative to the window g_max - g_min.",
              lo=0.0, hi=1.0),
    )

    def write(self, g_target, lo, hi, window_us, rng):
        if not self.rel:
            return g_target   # noiseless: no draw, so the generator's stream is left as it was
        # in place, the same operations as g_target + rel * window * z (40 % faster on 784x100)
        g = rng.standard_normal(g_target.shape)
        g *= self.rel * window_us
        g += g_target
        return np.clip(g, lo, hi, out=g)   # a device cannot leave its own window


@register
class ConstantReadNoise(ReadNoise):
    """Gaussian read noise, std rel * G (multiplicative) or rel * (g_max - g_min) (additive)."""

    name: ClassVar[str] = "constant"
    source: ClassVar[str] = _SOURCE
    FIELDS = (
        Field("rel", "float", 0.0, "Std of read noise per device per read: relative to G (multiplicative) "
              "or to the window (additive).", lo=0.0, hi=1.0),
        Field("kind", "str", "multiplicative", "How read noise scales.",
              choices=("multiplicative", "additive")),
    )

    def variance(self, g, t_s, window_us, *, g_prog=None):
        if self.params["kind"] == "multiplicative":   # (self.kind is the model kind, "read_noise")
            return (self.rel * g) ** 2
        return np.full(np.shape(g), (self.rel * window_us) ** 2)


@register
class ConstantDrift(Drift):
    """G(t) = G(t0) (t / t0)^-nu for t > t0, nu = max(N(nu_mean, nu_std), 0) drawn once per device."""

    name: ClassVar[str] = "constant"
    source: ClassVar[str] = _SOURCE
    state_dependent: ClassVar[bool] = False
    FIELDS = (
        Field("nu_mean", "float", 0.0, "Mean drift exponent nu in G(t) = G(t0) (t/t0)^-nu.", lo=0.0, hi=1.0),
        Field("nu_std", "float", 0.0, "Device-to-device std of nu.", lo=0.0, hi=1.0),
        Field("t0_s", "float", 20.0, "Time after programming at which G is as programmed.",
              lo=0.0, lo_open=True, unit="s"),
    )

    def draw_nu(self, g_target, rng):
        if not (self.nu_mean or self.nu_std):
            return None
        return np.maximum(self.nu_mean + self.nu_std * rng.standard_normal(np.shape(g_target)), 0.0)

    def apply(self, g_prog, nu, t_s):
        if nu is None or t_s is None or not t_s > self.t0_s:
            return g_prog
        return g_prog * (t_s / self.t0_s) ** (-nu)


def from_device_fields(fields: dict[str, Any]) -> dict[str, Model]:
    """The constant models a device's flat fields describe (program_noise_rel, read_noise_rel,
    read_noise_kind, drift_nu_mean, drift_nu_std, drift_t0_s; missing ones take the defaults)."""
    return {
        "program_noise": ConstantProgramNoise(rel=fields.get("program_noise_rel", 0.0)),
        "read_noise": ConstantReadNoise(rel=fields.get("read_noise_rel", 0.0),
                                        kind=fields.get("read_noise_kind", "multiplicative")),
        "drift": ConstantDrift(nu_mean=fields.get("drift_nu_mean", 0.0), nu_std=fields.get("drift_nu_std", 0.0),
                               t0_s=fields.get("drift_t0_s", 20.0)),
    }
