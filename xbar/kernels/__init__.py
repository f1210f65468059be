"""numba kernels: arrays and scalars in, arrays out; never config objects.

The public wrappers in :mod:`xbar.crossbar` validate dtype, contiguity and shape before calling in.
"""
