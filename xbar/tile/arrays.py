"""Input arrays for the crossbar: validated once, as the float32 C-contiguous arrays kernels take."""

from __future__ import annotations

import os

import numpy as np

from ..errors import ConfigError, NonFiniteError, ShapeError
from ..kernels.reduce import finite_flat


def as_matrix(name: str, a, ndim: int = 2, cols: int | None = None, check_finite: bool = True) -> np.ndarray:
    """Validate an input array (real, right ndim/width, finite) and return it as C-contiguous float32.

    check_finite=False skips the finiteness pass; hot paths then check their (smaller) output
    and call :func:`raise_nonfinite` to name the culprit.
    """
    if (type(a) is np.ndarray and a.dtype == np.float32 and a.ndim == ndim and a.flags.c_contiguous
            and a.size and (cols is None or a.shape[-1] == cols)):
        # The hot path (training): already what the kernels take; only finiteness is left to check.
        if check_finite and not finite_flat(a.reshape(-1)):
            raise_nonfinite(name, a, a)
        return a
    try:
        arr = np.asarray(a)
    except (ValueError, TypeError) as exc:
        raise ShapeError(f"{name}: not a rectangular numeric array ({exc})") from None
    if arr.dtype.kind not in "fiub":
        raise ShapeError(f"{name}: expected a real numeric array, got dtype {arr.dtype}")
    if arr.ndim != ndim:
        raise ShapeError(f"{name}: expected a {ndim}-d array, got shape {arr.shape}")
    if cols is not None and arr.shape[-1] != cols:
        raise ShapeError(f"{name}: expected last dimension {cols}, got shape {arr.shape}")
    if any(s == 0 for s in arr.shape) and name == "W":
        raise ShapeError(f"{name}: empty matrix of shape {arr.shape}")
    with np.errstate(over="ignore"):
        arr32 = np.ascontiguousarray(arr, dtype=np.float32)
    if check_finite and not np.isfinite(arr32).all():
        raise_nonfinite(name, arr, arr32)
    return arr32


class Patches:
    """The im2col rows of feature maps, (B·OH·OW, kernel·kernel·C), without the matrix: what a
    convolution's inference read hands Crossbar.mvm in place of ``xbar.nn.ops.im2col(x, ...)``.

    x: (B, H, W, C) float32 C-contiguous (the caller validated it and the geometry). A dynamic DAC
    gathers and scales the rows image by image (:meth:`dac`, the bits of im2col and then the DAC,
    without writing and reading back the matrix); every other read builds the matrix (:meth:`matrix`).
    """

    def __init__(self, x: np.ndarray, kernel: int, stride: int = 1, padding: int = 0):
        self.x, self.kernel, self.stride, self.padding = x, kernel, stride, padding
        B, H, W, C = x.shape
        self.oh, self.ow = (H + 2 * padding - kernel) // stride + 1, (W + 2 * padding - kernel) // stride + 1
        self.shape = (B * self.oh * self.ow, kernel * kernel * C)

    def _run(self, name: str, *out) -> int:
        from ..kernels import im2col, pick
        k = self.kernel
        kernel = pick(getattr(im2col, name), getattr(im2col, name + "_serial"), out[0].size)
        return kernel(self.x, k, k, self.stride, self.padding, self.oh, self.ow, *out)

    def matrix(self) -> np.ndarray:
        """The rows as a new (B·OH·OW, kernel·kernel·C) float32 matrix (padded positions 0)."""
        cols = np.empty(self.shape, np.float32)
        self._run("im2col_kernel", cols)
        return cols

    def dac(self, xs: np.ndarray, scale: np.ndarray, x2: np.ndarray) -> int:
        """The dynamic DAC of the rows (xbar.kernels.mvm.dac_dynamic's outputs, written into xs,
        scale and x2 (size 0: no squares)); returns the number of rows holding a NaN or inf."""
        return self._run("im2col_dac_kernel", xs, scale, x2)


def raise_nonfinite(name: str, orig, arr32: np.ndarray) -> None:
    """Raise a ShapeError naming the first NaN/inf (or float32 overflow) in an input."""
    where = np.argwhere(~np.isfinite(arr32))
    if len(where) == 0:
        raise NonFiniteError(f"{name}: the product overflowed the float32 range (inputs and weights "
                             "are finite but too large)")
    bad = tuple(int(i) for i in where[0])
    value = np.asarray(orig)[bad]
    if np.isfinite(value):
        raise NonFiniteError(f"{name}: value {float(value):.3g} at index {bad} is beyond the float32 range")
    raise NonFiniteError(f"{name}: contains NaN or inf (first at index {bad})")


# ---- memory: refuse what cannot be allocated, saying how much it needs ----------------------------

def crossbar_bytes(rows: int, cols: int, tile: tuple[int, int]) -> int:
    """Rough bytes of one rows x cols crossbar on tiles of tile = (R, C) devices.

    G+, G-, their difference, the read variance and the effective weights (float64) and float32
    read copies per cell; per-tile stacks padded to whole tiles (forward and transposed,
    conductance and variance, float32); a tile-shaped mask when pruning (bool).
    """
    R, C = tile
    pr, pc = -(-rows // R) * R, -(-cols // C) * C
    return 56 * rows * cols + 8 * (pr * cols + pc * rows) + pr * pc


def physical_memory_bytes() -> int | None:
    """This machine's RAM in bytes (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_fits(need: int, what: str, advice: str) -> None:
    """ConfigError when `need` bytes exceed this machine's memory: say how much, and what to change."""
    have = physical_memory_bytes()
    if have is not None and need > have:
        raise ConfigError(f"{what} needs about {_gb(need)} of memory, more than this machine's {_gb(have)}; "
                          f"{advice}")


def _gb(n: int) -> str:
    return f"{n / 1e9:.3g} GB" if n < 1e15 else f"{n / 1e9:.3e} GB"
