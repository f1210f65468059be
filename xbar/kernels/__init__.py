"""numba kernels: arrays and scalars in, arrays out; never config objects.

The callers (:mod:`xbar.tile.read`, :mod:`xbar.nn.ops`, the update schemes) validate dtype, contiguity
and shape before calling in, and choose a kernel's serial or parallel compilation with :func:`pick`.
"""

from ._jit import PARALLEL_MIN, pick, serial_kernels

__all__ = ["PARALLEL_MIN", "pick", "serial_kernels"]
