"""What can train in a stack (:mod:`xbar.train.stack`): the fields variants may differ in, the
key they must share, and why a config or a built layer cannot stack."""

from __future__ import annotations

from .config import TrainConfig
from .recipe import RECIPES, Recipe

# The fields a stack's variants may differ in: the devices and how weights are placed on them.
DEVICE_SIDE = ("device", "device_set", "bits", "quant", "range", "w_max", "gain", "tile")
STACK_RULES = ("bp", "fa", "dfa", "hsic", "sg")
STACK_UPDATES = ("float", "nearest", "qat")
# Fields that describe outputs or where data lives, not the training itself.
_NEUTRAL = ("data_dir",)


def group_key(cfg: TrainConfig) -> tuple:
    """What variants of one stack must share: every resolved field but DEVICE_SIDE."""
    d = cfg.as_dict()
    return tuple(sorted((k, repr(v)) for k, v in d.items() if k not in DEVICE_SIDE))


def stack_blocker(cfg: TrainConfig) -> str | None:
    """None when a resolved config can train in a stack, else why not (one line)."""
    if cfg.rule not in STACK_RULES:
        return f"rule {cfg.rule!r} does not stack (stacking: {', '.join(STACK_RULES)})"
    if cfg.update not in STACK_UPDATES:
        return f"update {cfg.update!r} does not stack (stacking: {', '.join(STACK_UPDATES)})"
    if cfg.init:
        return "init from a checkpoint does not stack"
    if cfg.recipe is not None and RECIPES.get(cfg.recipe).make_update.__func__ is not Recipe.make_update.__func__:
        return f"recipe {cfg.recipe!r} does not stack (it trains with an update of its own)"
    if cfg.update == "nearest":
        if cfg.quant not in ("asymm", "symm"):
            return f"quant {cfg.quant!r} does not stack (stacking: asymm, symm)"
        if cfg.range not in ("global", "local"):
            return f"range {cfg.range!r} does not stack (stacking: global, local)"
        if cfg.range == "local" and cfg.gain == "column":
            return "range 'local' with gain 'column' does not stack"
        if cfg.adc_bits is not None or cfg.dac_bits is not None:
            return "ADC/DAC periphery does not stack"
    return None


def layer_blocker(layer) -> str | None:
    if type(layer).__name__ != "Dense" or layer.bn is not None or layer.tail or layer.head \
            or layer.weights != "real" or layer.mask is not None or layer.b is None or layer.branch:
        return f"layer {layer!r} does not stack (plain dense layers with a bias only)"
    return None


def exact_devices(layer) -> bool:
    """Whether a layer's crossbar writes and reads exactly what the stack's own kernels compute
    (no noise, faults, spread, drift, ADC/DAC, IR drop or I–V terms; the fused quantizer, one
    slice, one replica). Other devices stack too, each variant programming and reading its own
    crossbars (slower, the same bits)."""
    xb = layer.crossbar
    if xb is None:
        return True
    s = xb.settings
    return bool(xb.analog_io and xb.read.var is None and xb.read.nl is None and xb.physics.exact_write
                and xb.planner.fused and s.quant is not None and s.ir_drop == "none" and s.replicas == 1
                and s.slices == 1 and s.mapping == "differential" and s.bias == "digital"
                and xb.state.nu is None and xb.state.t_s is None and xb.state.drift_compensation == 1.0)


__all__ = ["DEVICE_SIDE", "STACK_RULES", "STACK_UPDATES", "exact_devices", "group_key", "layer_blocker",
           "stack_blocker"]
