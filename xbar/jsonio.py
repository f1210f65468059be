"""One JSON encoding for everything xbar writes: results on stdout, journal entries, HDF5 attributes."""

from __future__ import annotations

import json
from typing import Any

import numpy as np


def json_default(o: Any) -> Any:
    """``json.dumps(default=...)``: numpy scalars and arrays, sets, and config objects (``as_dict``)."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (tuple, set)):
        return list(o)
    if hasattr(o, "as_dict"):
        return o.as_dict()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def dumps(obj: Any, **kw) -> str:
    """``json.dumps`` with :func:`json_default`."""
    return json.dumps(obj, default=json_default, **kw)
