"""Device-effect models (programming noise, read noise, drift, read I–V curve), chosen by name in a device TOML.

Importing this package registers every shipped model; see README.md here for adding one.
"""

from __future__ import annotations

from . import constant, crosssim, iv, pcm, table  # noqa: F401  (importing registers the models)
from .base import (
                   KINDS,
                   REGISTRY,
                   Drift,
                   Model,
                   ProgramNoise,
                   ReadIV,
                   ReadNoise,
                   get_model,
                   model_names,
                   register,
)

__all__ = ["KINDS", "REGISTRY", "Drift", "Model", "ProgramNoise", "ReadIV", "ReadNoise", "get_model", "model_names",
           "register"]
