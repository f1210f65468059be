"""xbar: a fast, CPU-first simulator of memristor crossbar hardware for neural networks."""

from __future__ import annotations

import os as _os

# OpenBLAS workers spin ~0.1 s after every call and steal the cores from the numba kernel that
# follows (measured: 2x slower reads on 2 cores). Shorten the spin; only effective when numpy
# is first imported through xbar, and never overrides a user's own setting. See README.
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

from .device import Device
from .errors import ConfigError, DataError, NonFiniteError, ShapeError, XbarError
from .version import __version__

__all__ = ["ConfigError", "Crossbar", "DataError", "Device", "NonFiniteError", "ShapeError", "XbarError", "__version__"]


# Submodules reachable as `xbar.<name>` after a plain `import xbar` (README: `xbar.store.load`),
# imported on first use: several pull in numba, h5py or matplotlib.
SUBMODULES = ("baseline", "checkpoint", "config", "conv", "cost", "crossbar", "data", "device", "errors",
              "mapping", "nn", "paths", "prune", "report", "store", "sweep", "train")


def __getattr__(name):
    # Crossbar pulls in numba; import it lazily so `import xbar` stays cheap for config work.
    if name == "Crossbar":
        from .crossbar import Crossbar
        return Crossbar
    if name == "from_torch":   # torch stays optional: imported only when asked for
        from .interop.torch import from_torch
        return from_torch
    if name in SUBMODULES:
        import importlib
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'xbar' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__) | set(SUBMODULES))
