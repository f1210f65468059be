"""Bring your own network: trained torch models onto crossbars, and crossbar weights back to torch.

    from xbar.interop import from_torch, export
    net = from_torch(model, torch.zeros(1, 1, 28, 28), device="rram-4bit", adc_bits=8)
    logits = net.predict(X)                   # X: (n, C·H·W) rows, as everywhere in xbar
    export(net, "effective.pt")               # the weights as programmed, as a torch state_dict

torch is optional: it is imported only when one of these functions runs (``import xbar`` and
``import xbar.interop`` never import it), and a missing torch is one clear error.
:mod:`xbar.interop.torch` maps the model; :mod:`xbar.interop.commands` holds ``xbar import`` and
``xbar export``.
"""

from __future__ import annotations

__all__ = ["TorchImportError", "export", "from_torch", "to_toml"]


def __getattr__(name):
    if name in __all__:
        from . import torch as _impl
        return getattr(_impl, name)
    raise AttributeError(f"module 'xbar.interop' has no attribute {name!r}")
