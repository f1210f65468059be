"""ADC non-idealities: per-ADC offset, gain error and integral nonlinearity, fixed per chip.

Every tile output has its own ADC (forward reads: one per column of each tile; transposed reads:
one per row). Each ADC k gets, drawn once from the crossbar's seed (the same chip reads the same
way every time):

- offset o_k ~ N(0, adc_offset_lsb²), in LSB;
- gain error g_k ~ N(0, adc_gain_rel²), relative: the ADC converts (1 + g_k)·I;
- integral nonlinearity a_k ~ U[-1, 1]: a fixed bow of the transfer curve,
  INL(x) = a_k · adc_inl_lsb · (3√3/2)·(x − x³) LSB with x = I / full scale (peak |a_k|·adc_inl_lsb
  LSB at x = ±1/√3, zero at 0 and at full scale), the shape of a converter with a quadratic
  capacitor or resistor-ladder mismatch.

A converted code is round((1 + g_k)·I / step + o_k + INL) clipped to the code range, and the
digital periphery multiplies it by the nominal step (it does not know the errors). Offset and INL
are applied to the mean tile current before the read noise is added (the noise is small against
full scale; INL of the noisy current is approximated by INL of its mean). Gain scales the noisy
current exactly.
"""

from __future__ import annotations

import numpy as np

_WAYS = {"fwd": 0, "bwd": 1}
_INL_PEAK = 3.0 * np.sqrt(3.0) / 2.0     # makes max |x - x^3| on [-1, 1] equal 1


def draws(seed: int, way: str, shape: tuple[int, int], offset_lsb: float, gain_rel: float,
          inl_lsb: float) -> dict[str, np.ndarray | None]:
    """Per-ADC offset (LSB), gain error (relative) and INL amplitude (LSB), shape (tiles, outputs)."""
    rng = np.random.default_rng([seed, 0xADC, _WAYS[way]])
    o = rng.standard_normal(shape) * offset_lsb
    g = rng.standard_normal(shape) * gain_rel
    a = rng.uniform(-1.0, 1.0, shape) * inl_lsb
    return {"offset": o if offset_lsb else None, "gain": g if gain_rel else None, "inl": a if inl_lsb else None}


def apply(M: np.ndarray, inv_step: np.ndarray, n_codes: int, errors: dict[str, np.ndarray | None]):
    """(M', inv_step') that make the ideal ADC kernel convert as the imperfect ADCs do.

    M: (T, B, N) mean tile currents (modified in place and returned); inv_step: (T, N) 1/step.
    """
    g = errors["gain"]
    scale = 1.0 if g is None else 1.0 + g
    step = 1.0 / inv_step
    if errors["inl"] is not None:
        x = np.clip(M * (inv_step / n_codes)[:, None, :], -1.0, 1.0)
        M += (errors["inl"] * _INL_PEAK * step / scale)[:, None, :] * (x - x * x * x)
    if errors["offset"] is not None:
        M += (errors["offset"] * step / scale)[:, None, :]
    if g is not None:
        inv_step = (inv_step * scale).astype(np.float32)
    return M, inv_step
