"""Weights <-> conductances: the seed study's quantizers and the mapping onto device planes.

A programmed matrix is stored as P planes of target conductances (P = number of bit slices)::

    W_eff[i, j] = alpha[j] * sum_p sig[p] * (Gp[p, i, j] - Gn[p, i, j]) + beta[j]

- differential: w = alpha (G+ - G-); one device of the pair sits at g_min, the other carries |w|.
- offset: w = alpha (G - g_min) + beta; Gn is the (digital, noiseless) g_min reference.
- bit slicing: an integer code |k| = sum_p d_p 2^(b p), one b-bit device per digit, sig = 2^(b p).
alpha is a digital gain applied after the ADC (per layer, or per output column); beta is a
digital offset per column, non-zero only where the grid needs it (asymm with an off-centre range,
and offset mapping).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .device import Device, snap_to_levels
from .errors import ConfigError
from .kernels.quant import asymm_flat, symm_flat

MAPPINGS = ("differential", "offset")
QUANTS = ("asymm", "symm")
RANGES = ("global", "local")
GAINS = ("layer", "column")


# ---- the seed study's quantizers (Nayak et al. 2019), exactly as the seed study defines them ------

def asymm(x: np.ndarray, bits: int, lo, hi) -> np.ndarray:
    """ASYMM: q = round((x - min)(2^n - 1)/(max - min)), x̂ = q (max - min)/(2^n - 1) + min.

    x is clamped to [min, max] first; a degenerate range (max == min) returns x unchanged.
    Arithmetic is done in x's dtype, in this order, so results match the seed study bit for bit.
    """
    x = np.asarray(x)
    dt = x.dtype
    lo = dt.type(lo)
    hi = dt.type(hi)
    if hi == lo:
        return x.copy()
    n = dt.type(2 ** bits - 1)
    if _fast(x):
        out = np.empty_like(x)
        asymm_flat(x.reshape(-1), out.reshape(-1), lo, hi, n)
        return out
    q = np.round((np.clip(x, lo, hi) - lo) * n / (hi - lo))
    return q * (hi - lo) / n + lo


def symm(x: np.ndarray, bits: int, m) -> np.ndarray:
    """SYMM: q = round(x (2^(n-1) - 1)/max|x|), x̂ = q max|x| / (2^(n-1) - 1), x clamped to ±max.

    A degenerate range (max|x| == 0) returns x unchanged. For bits=1 there are no levels besides
    zero, so the seed formula is undefined; we refuse it.
    """
    if bits < 2:
        raise ConfigError("symm quantization needs bits >= 2 (2^(n-1) - 1 = 0 levels at n = 1)")
    x = np.asarray(x)
    dt = x.dtype
    m = dt.type(m)
    if m == 0:
        return x.copy()
    n = dt.type(2 ** (bits - 1) - 1)
    if _fast(x):
        out = np.empty_like(x)
        symm_flat(x.reshape(-1), out.reshape(-1), m, n)
        return out
    q = np.round(np.clip(x, -m, m) * n / m)
    return q * m / n


# Below this size numpy's few calls cost less than a kernel dispatch; a module flag lets tests
# run the numpy formulas (the reference) on any array.
FAST_MIN = 64


def _fast(x: np.ndarray) -> bool:
    return (FAST_MIN is not None and x.size >= FAST_MIN and x.dtype in (np.float32, np.float64)
            and x.flags.c_contiguous)


def quant_range(x: np.ndarray, kind: str, rng: str, w_range: tuple[float, float]):
    """(lo, hi) for asymm, or (-m, m) for symm, under a global or local range."""
    if rng == "global":
        lo, hi = w_range
        if kind == "symm":
            m = max(abs(lo), abs(hi))
            return -m, m
        return lo, hi
    if kind == "symm":
        m = float(np.max(np.abs(x))) if x.size else 0.0
        return -m, m
    return float(np.min(x)), float(np.max(x))


def quantize(x: np.ndarray, bits: int, kind: str = "asymm", rng: str = "global",
             w_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """Quantize a tensor with the seed study's function and range ("global" or "local")."""
    if kind not in QUANTS:
        raise ConfigError(f"quant = {kind!r}: expected one of {', '.join(QUANTS)}")
    if rng not in RANGES:
        raise ConfigError(f"range = {rng!r}: expected one of {', '.join(RANGES)}")
    lo, hi = quant_range(x, kind, rng, w_range)
    return asymm(x, bits, lo, hi) if kind == "asymm" else symm(x, bits, hi)


# ---- codes: weights as integer (or continuous) multiples of one step ------------------------------

@dataclass
class Codes:
    """w ≈ k * step + beta, column by column. k is integer when a quantizer or slicing is on."""

    k: np.ndarray        # (in, out) float64 signed codes (non-negative for offset mapping)
    step: np.ndarray     # (out,) weight per code unit
    beta: np.ndarray     # (out,) digital offset
    k_max: float         # largest |k| the device plane(s) must hold
    clipped: int         # weights outside the range, clamped to it (counted, reported in stats)


def _col_ranges(W: np.ndarray, rng: str, gain: str, w_range, symmetric: bool):
    """Per-column (lo, hi) arrays for the chosen range and gain granularity."""
    n_out = W.shape[1]
    if rng == "global":
        lo, hi = float(w_range[0]), float(w_range[1])
        if symmetric:
            m = max(abs(lo), abs(hi))
            lo, hi = -m, m
        return np.full(n_out, lo), np.full(n_out, hi)
    if gain == "column":
        lo, hi = W.min(axis=0).astype(np.float64), W.max(axis=0).astype(np.float64)
    else:
        lo, hi = np.full(n_out, float(W.min())), np.full(n_out, float(W.max()))
    if symmetric:
        m = np.maximum(np.abs(lo), np.abs(hi))
        lo, hi = -m, m
    return lo, hi


def weights_to_codes(W: np.ndarray, *, levels_per_plane: int | None, slices: int, mapping: str,
                     quant: str | None, quant_bits: int | None, rng: str, gain: str,
                     w_range: tuple[float, float]) -> Codes:
    """Express W column by column as codes on the device grid (see the module docstring).

    levels_per_plane: device levels L (None = analog). With a quantizer, codes are the seed
    quantizer's integer q (asymm on a differential pair uses half steps so q maps exactly).
    Without one, |k| = |w| / step with step = range / (L^slices - 1): the device grid itself.
    """
    W64 = W.astype(np.float64)
    symmetric = mapping == "differential" and quant != "asymm"
    lo, hi = _col_ranges(W64, rng, gain, w_range, symmetric or quant == "symm")
    clipped = int(np.sum((W64 < lo[None, :]) | (W64 > hi[None, :])))
    Wc = np.clip(W64, lo[None, :], hi[None, :])
    span = hi - lo
    if quant is not None:
        n = quant_bits
        if quant == "asymm":
            # The same code the seed study uses, computed column-range by column-range.
            q = np.round((Wc - lo) * (2 ** n - 1) / np.where(span > 0, span, 1.0))
            sc = span / (2 ** n - 1)
            if mapping == "differential":
                k, step, beta = 2 * q - (2 ** n - 1), sc / 2, (lo + hi) / 2
                k_max = 2 ** n - 1
            else:
                k, step, beta = q, sc, lo
                k_max = 2 ** n - 1
        else:
            m = hi
            q = np.round(Wc * (2 ** (n - 1) - 1) / np.where(m > 0, m, 1.0))
            step = m / (2 ** (n - 1) - 1)
            if mapping == "differential":
                k, beta, k_max = q, np.zeros_like(m), 2 ** (n - 1) - 1
            else:
                k, beta, k_max = q + (2 ** (n - 1) - 1), -m, 2 ** n - 2
        degenerate = span == 0
        if np.any(degenerate):  # seed rule: a degenerate range leaves the tensor unchanged
            k[:, degenerate] = 0.0
            beta = np.where(degenerate, Wc[0] if Wc.shape[0] else 0.0, beta)
            step = np.where(degenerate, 1.0, step)
        return Codes(k, step, beta, float(k_max), clipped)
    k_max = 1.0 if levels_per_plane is None else float(levels_per_plane ** slices - 1)
    if mapping == "differential":
        m = hi
        step = np.where(m > 0, m, 1.0) / k_max
        k, beta = Wc / step[None, :], np.zeros_like(m)
    else:
        step = np.where(span > 0, span, 1.0) / k_max
        k, beta = (Wc - lo) / step[None, :], lo
    if slices > 1:
        k = np.round(k)
    return Codes(k, step, beta, k_max, clipped)


@dataclass
class Planes:
    """Target conductances of one programmed matrix (before write noise and faults)."""

    gp: np.ndarray       # (P, in, out) float64 µS
    gn: np.ndarray       # (P, in, out) float64 µS (differential) or g_min everywhere (offset)
    sig: np.ndarray      # (P,) digital significance of each plane
    alpha: np.ndarray    # (out,) digital gain per column
    beta: np.ndarray     # (out,) digital offset per column
    clipped: int


def codes_to_planes(codes: Codes, device: Device, mapping: str, slices: int) -> Planes:
    """Place codes on device planes: integer digits per slice, or a continuous target per device."""
    levels = device.levels()
    g_min, window = device.g_min_us, device.window_us
    L = None if levels is None else len(levels)
    if L is not None and L ** slices - 1 < codes.k_max - 1e-9:
        raise ConfigError(f"the quantizer needs codes up to {int(codes.k_max)} but the device "
                          f"({device.summary()}, {slices} slice(s)) holds at most {L ** slices - 1}: "
                          f"lower the quantizer bits, raise the device bits or add slices")
    if L is not None and codes.k_max >= 1 and float(codes.k_max).is_integer():
        # Codes land on every s-th level so that the grid spans (at least half) the window.
        stride = max(1, (L - 1) // int(codes.k_max)) if slices == 1 else 1
        dstep = stride * window / (L - 1)
        alpha = codes.step / dstep
    else:
        dstep = window / codes.k_max           # analog: k_max code units span the window
        alpha = codes.step / dstep
    mag = np.abs(codes.k)
    pos = codes.k >= 0
    if slices > 1:
        if L is None or not device.is_uniform:
            raise ConfigError("bit slicing needs a device with uniform levels (set bits)")
        digits = []
        rest = np.round(mag)
        for _ in range(slices):
            digits.append(np.mod(rest, L))
            rest = np.floor_divide(rest, L)
        sig = np.array([float(L) ** p for p in range(slices)])
    else:
        digits = [mag]
        sig = np.ones(1)
    uniform = levels is not None and device.is_uniform
    lvl = window / (L - 1) if uniform else None

    def on_device(g_on):
        # Uniform levels: snap arithmetically (cheap, exact on-grid codes stay put).
        if uniform:
            return g_min + np.clip(np.round((g_on - g_min) / lvl), 0, L - 1) * lvl
        return g_on if levels is None else snap_to_levels(g_on, levels)

    gp, gn = [], []
    for d in digits:
        g_on = on_device(g_min + d * dstep)
        if mapping == "differential":
            gp.append(np.where(pos, g_on, g_min))
            gn.append(np.where(pos, g_min, g_on))
        else:
            gp.append(g_on)
            gn.append(np.full_like(g_on, g_min))
    gp_a = np.stack(gp) if len(gp) > 1 else gp[0][None]
    gn_a = np.stack(gn) if len(gn) > 1 else gn[0][None]
    return Planes(gp_a, gn_a, sig, alpha, codes.beta.astype(np.float64), codes.clipped)
