"""im2col / col2im and pooling on (batch, H, W, C) feature maps: numba kernels behind validating
wrappers, and the plain numpy ``*_reference`` versions the tests compare them with."""

from __future__ import annotations

import numpy as np

from ..errors import ShapeError


def conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Output length of a convolution or pooling window along one axis (floor mode)."""
    return (size + 2 * padding - kernel) // stride + 1


def _maps(name: str, x) -> np.ndarray:
    """Validate a (batch, H, W, C) feature-map array and return it float32 C-contiguous."""
    x = np.asarray(x)
    if x.ndim != 4:
        raise ShapeError(f"{name}: expected (batch, height, width, channels), got shape {x.shape}")
    if x.dtype.kind not in "fiu":
        raise ShapeError(f"{name}: expected a real numeric array, got dtype {x.dtype}")
    return np.ascontiguousarray(x, dtype=np.float32)


def _kernels():
    """xbar.kernels.im2col, imported on first use: `import xbar.nn` stays free of numba."""
    from ..kernels import im2col
    return im2col


def _dispatch(name: str, n: int):
    """Kernel `name` of xbar.kernels.im2col, or its serial twin for work below the parallel cut-off
    (n values): threads cost more than they save on small maps."""
    from ..kernels import pick
    k = _kernels()
    return pick(getattr(k, name), getattr(k, name + "_serial"), n)


# ---- im2col / col2im ------------------------------------------------------------------------------

def im2col(x, kernel: int, stride: int = 1, padding: int = 0) -> np.ndarray:
    """Patches of x (B, H, W, C) as rows: (B·OH·OW, kernel·kernel·C) float32, a new array."""
    return patches(x, kernel, stride, padding).matrix()


def patches(x, kernel: int, stride: int = 1, padding: int = 0):
    """im2col's rows of x (B, H, W, C), validated, without the matrix (xbar.tile.arrays.Patches:
    Crossbar.mvm takes them, and a dynamic DAC gathers them itself)."""
    from ..tile.arrays import Patches
    x = _maps("x", x)
    _, H, W, _ = x.shape
    if conv_out(H, kernel, stride, padding) < 1 or conv_out(W, kernel, stride, padding) < 1:
        raise ShapeError(f"im2col: kernel {kernel} (padding {padding}) is larger than the {H}x{W} input")
    return Patches(x, kernel, stride, padding)


def col2im(cols, shape: tuple[int, int, int, int], kernel: int, stride: int = 1, padding: int = 0) -> np.ndarray:
    """The adjoint of im2col: row gradients (B·OH·OW, k·k·C) summed back onto (B, H, W, C)."""
    B, H, W, C = shape
    oh, ow = conv_out(H, kernel, stride, padding), conv_out(W, kernel, stride, padding)
    cols = np.ascontiguousarray(cols, dtype=np.float32)
    if cols.shape != (B * oh * ow, kernel * kernel * C):
        raise ShapeError(f"col2im: expected rows of shape {(B * oh * ow, kernel * kernel * C)}, got {cols.shape}")
    dx = np.empty((B, H, W, C), np.float32)
    _dispatch("col2im_kernel", cols.size)(cols, kernel, kernel, stride, padding, oh, ow, dx)
    return dx


def im2col_reference(x: np.ndarray, kernel: int, stride: int = 1, padding: int = 0) -> np.ndarray:
    """im2col in plain numpy (padding, sliding windows, strided slicing), for the tests."""
    x = np.pad(np.asarray(x, np.float32), ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    win = np.lib.stride_tricks.sliding_window_view(x, (kernel, kernel), axis=(1, 2))[:, ::stride, ::stride]
    B, oh, ow = win.shape[:3]
    return np.ascontiguousarray(win.transpose(0, 1, 2, 4, 5, 3)).reshape(B * oh * ow, -1)


def col2im_reference(cols: np.ndarray, shape, kernel: int, stride: int = 1, padding: int = 0) -> np.ndarray:
    """col2im in plain numpy: each kernel offset's slice added back, padding cropped."""
    B, H, W, C = shape
    oh, ow = conv_out(H, kernel, stride, padding), conv_out(W, kernel, stride, padding)
    c6 = np.asarray(cols, np.float32).reshape(B, oh, ow, kernel, kernel, C)
    dx = np.zeros((B, H + 2 * padding, W + 2 * padding, C), np.float32)
    for i in range(kernel):
        for j in range(kernel):
            dx[:, i:i + stride * oh:stride, j:j + stride * ow:stride, :] += c6[:, :, :, i, j, :]
    return dx[:, padding:padding + H, padding:padding + W, :]


# ---- pooling --------------------------------------------------------------------------------------

def _pool_output(what: str, x, size: int, stride: int | None):
    """(x checked, stride, OH, OW, an empty (B, OH, OW, C) output) of a pooling window."""
    x = _maps("x", x)
    stride = stride or size
    B, H, W, C = x.shape
    oh, ow = conv_out(H, size, stride), conv_out(W, size, stride)
    if oh < 1 or ow < 1:
        raise ShapeError(f"{what}: window {size} is larger than the {H}x{W} input")
    return x, stride, oh, ow, np.empty((B, oh, ow, C), np.float32)


def maxpool2d(x, size: int, stride: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Max pooling of x (B, H, W, C): (out (B, OH, OW, C), argmax as flat h·W + w, int64)."""
    x, stride, oh, ow, out = _pool_output("maxpool", x, size, stride)
    arg = np.empty(out.shape, np.int64)
    _dispatch("maxpool_kernel", out.size * size * size)(x, size, stride, oh, ow, out, arg)
    return out, arg


def maxpool2d_backward(g, arg: np.ndarray, shape: tuple[int, int, int, int]) -> np.ndarray:
    """Gradient of max pooling: g (B, OH, OW, C) routed to the argmax positions of (B, H, W, C)."""
    g = _maps("g", g)
    if g.shape != arg.shape:
        raise ShapeError(f"maxpool backward: g has shape {g.shape}, the forward pass gave {arg.shape}")
    dx = np.empty(shape, np.float32)
    _dispatch("maxpool_back_kernel", dx.size)(g, arg, dx)
    return dx


def avgpool2d(x, size: int, stride: int | None = None) -> np.ndarray:
    """Average pooling of x (B, H, W, C) over size×size windows."""
    x, stride, oh, ow, out = _pool_output("avgpool", x, size, stride)
    _dispatch("avgpool_kernel", out.size * size * size)(x, size, stride, oh, ow, out)
    return out


def avgpool2d_backward(g, size: int, stride: int | None, shape: tuple[int, int, int, int]) -> np.ndarray:
    """Gradient of average pooling: g / size² spread over each window of (B, H, W, C)."""
    g = _maps("g", g)
    dx = np.empty(shape, np.float32)
    _dispatch("avgpool_back_kernel", dx.size)(g, size, stride or size, dx)
    return dx


def pool_reference(x: np.ndarray, size: int, stride: int | None, mode: str) -> np.ndarray:
    """Max or average pooling in plain numpy (sliding windows), for the tests."""
    win = np.lib.stride_tricks.sliding_window_view(np.asarray(x, np.float32), (size, size),
                                                   axis=(1, 2))[:, ::stride or size, ::stride or size]
    return win.max(axis=(4, 5)) if mode == "max" else win.mean(axis=(4, 5), dtype=np.float32)
