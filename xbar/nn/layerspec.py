"""The fields of a network spec and of its [[layers]] tables, and one validated layer entry
(:class:`LayerSpec`); :mod:`xbar.nn.spec` reads whole networks with them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import (
    Field,
    validate_fields,
    validate_value,
    where_text,
)
from ..errors import ConfigError
from .functions import HIDDEN_ACTIVATIONS, OUTPUTS
from .layers import SCALES, WEIGHTS

LAYER_KINDS = ("dense", "conv", "maxpool", "avgpool", "dropout", "flatten", "add")
CROSSBAR_KINDS = ("dense", "conv")
MAX_UNITS = 1_000_000   # per layer; what the whole network may take is checked against memory
SPEC_FIELDS: tuple[Field, ...] = (
    Field("name", "str", "custom", "Preset name."),
    Field("source", "str", "", "Citation: where the architecture comes from."),
    Field("description", "str", "", "One line for listings."),
    Field("activation", "str", "relu", "Hidden-layer activation.", choices=HIDDEN_ACTIVATIONS),
    Field("output", "str", "log_softmax", "Output: log_softmax + NLL, or MSE on one-hot targets.",
          choices=OUTPUTS),
    Field("bias", "bool", True, "Every layer has a bias (a layer's own `bias` wins)."),
    Field("weights", "str", "real", "Weights of every conv/dense layer unless the layer says otherwise: "
          "real, or binary (sign(w); latent weights clipped to [-1, 1]).", choices=WEIGHTS),
    Field("scale", "str", "none", "Scale of binary weights: none, or mean (α = mean|w| per output "
          "column, XNOR-Net).", choices=SCALES),
    Field("batchnorm", "bool", False, "Batch norm after every hidden conv/dense layer (in digital "
          "periphery, before the activation) unless the layer says otherwise."),
)
# Non-scalar keys validated by hand: `hidden` (list of widths) or `layers` (list of tables),
# `input` ([channels, height, width]) and the `[output_layer]` table.
SPEC_KEYS = tuple(f.name for f in SPEC_FIELDS) + ("hidden", "layers", "input", "output_layer")

_KIND = Field("kind", "str", "dense", "Layer type.", choices=LAYER_KINDS)
# Per-layer overrides of the network's defaults (omitted: the network's value).
_CROSSBAR_OPTIONS: tuple[Field, ...] = (
    Field("activation", "str", None, "Activation (default: the network's).", choices=HIDDEN_ACTIVATIONS,
          optional=True),
    Field("batchnorm", "bool", None, "Batch norm on the outputs, before the activation.", optional=True),
    Field("weights", "str", None, "real or binary.", choices=WEIGHTS, optional=True),
    Field("scale", "str", None, "Scale of binary weights.", choices=SCALES, optional=True),
    Field("bits", "int", None, "This layer's device bits, overriding the run's (binarized networks "
          "keep the first and last layers wider).", lo=1, hi=8, optional=True),
    Field("bias", "bool", None, "The layer has a bias.", optional=True),
    Field("branch", "bool", False, "A side branch (projection shortcut): reads the same input as the "
          "layer after it; only a later add reads its output."),
)
_POOL: tuple[Field, ...] = (
    _KIND, Field("size", "int", 2, "Square window.", lo=1, hi=1024),
    Field("stride", "int", None, "Stride (default: size).", lo=1, hi=1024, optional=True),
    Field("pre_activation", "bool", False, "Pool the conv layer's outputs before its batch norm and "
          "activation (BNN's conv -> pool -> BN -> sign), not after."))
LAYER_FIELDS: dict[str, tuple[Field, ...]] = {
    "dense": (_KIND, Field("units", "int", None, "Output width.", lo=1, hi=MAX_UNITS)) + _CROSSBAR_OPTIONS,
    "conv": (_KIND, Field("filters", "int", None, "Output channels.", lo=1, hi=MAX_UNITS),
             Field("kernel", "int", None, "Square kernel size k (k×k).", lo=1, hi=1024),
             Field("stride", "int", 1, "Stride.", lo=1, hi=1024),
             Field("padding", "int", 0, "Zero padding on every side.", lo=0, hi=1024),
             Field("in_channels", "int", None, "Input channels, checked against the layers before.",
                   lo=1, optional=True)) + _CROSSBAR_OPTIONS,
    "maxpool": _POOL,
    "avgpool": _POOL,
    "dropout": (_KIND, Field("p", "float", 0.5, "Drop probability (training only).", lo=0.0, hi=1.0,
                             hi_open=True),),
    "flatten": (_KIND, Field("size", "int", None, "Expected flattened size, checked.", lo=1, optional=True),),
    "add": (_KIND, Field("from", "int", None, "The [[layers]] index whose output is added (-1: the "
                         "network's input).", lo=-1),
            Field("activation", "str", None, "Activation after the addition (default: the network's).",
                  choices=HIDDEN_ACTIVATIONS, optional=True)),
}
OUTPUT_LAYER_FIELDS: tuple[Field, ...] = tuple(f for f in _CROSSBAR_OPTIONS
                                               if f.name in ("weights", "scale", "bits", "bias"))


@dataclass(frozen=True)
class LayerSpec:
    """One entry of [[layers]] with the network's defaults filled in.

    units: dense width, or conv filters; kernel, stride, padding: conv geometry; size, stride:
    pooling window and step (stride None: size), pre_activation: pooling before the batch norm and
    activation; size: flatten's expected size (None: unchecked);
    p: dropout probability; source: an add's ``from`` (the [[layers]] index whose output it adds,
    -1 for the network's input); branch: a conv/dense side branch; the rest as in
    :class:`CrossbarLayer`.
    """

    kind: str
    units: int | None = None
    activation: str | None = None
    kernel: int | None = None
    stride: int | None = None
    padding: int = 0
    size: int | None = None
    p: float | None = None
    in_channels: int | None = None
    pre_activation: bool = False
    batchnorm: bool = False
    weights: str = "real"
    scale: str = "none"
    bits: int | None = None
    bias: bool = True
    source: int | None = None
    branch: bool = False



def input_shape(value, file) -> tuple[int, int, int] | None:
    if value is None:
        return None
    if (not isinstance(value, (list, tuple)) or len(value) != 3
            or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value)):
        raise ConfigError(f"{where_text(file, 'input')} = {value!r}: expected [channels, height, width], "
                          "three integers >= 1, e.g. [1, 28, 28]")
    return tuple(value)


def layer_spec(t: dict[str, Any], i: int, defaults: dict[str, Any], file) -> LayerSpec:
    """Validate one [[layers]] table: its kind first, then that kind's keys."""
    prefix = f"layers[{i}]."
    kind = validate_value(_KIND, t.get("kind", "dense"), file=file, prefix=prefix)
    if kind == "conv" and "units" in t and "filters" not in t:
        raise ConfigError(f"{where_text(file, prefix + 'kind')} = 'conv' takes filters = N (output channels), "
                          "not units (the width of kind 'dense')")
    v = validate_fields(LAYER_FIELDS[kind], t, file=file, prefix=prefix)
    if kind == "add":
        return LayerSpec(kind, activation=defaults["activation"] if v["activation"] is None else v["activation"],
                         source=v["from"])
    if kind not in CROSSBAR_KINDS:
        return LayerSpec(kind, size=v.get("size"), stride=v.get("stride"), p=v.get("p"),
                         pre_activation=v.get("pre_activation", False))
    filled = {k: defaults[k] if v[k] is None else v[k] for k in defaults}
    if kind == "dense":
        return LayerSpec(kind, v["units"], bits=v["bits"], branch=v["branch"], **filled)
    return LayerSpec(kind, v["filters"], kernel=v["kernel"], stride=v["stride"], padding=v["padding"],
                     in_channels=v["in_channels"], bits=v["bits"], branch=v["branch"], **filled)
