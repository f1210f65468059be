"""TrainConfig: one training run as a validated, frozen config; :meth:`TrainConfig.resolve` fills
what was left unset (recipe, then the update scheme's defaults) and refuses what cannot run."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from .. import data as xdata
from ..config import Field, FieldConfig, parse_tile
from ..device import Device
from ..errors import ConfigError
from ..nn import NetworkSpec
from ..tile.settings import PERIPHERY_FIELDS, REPLICAS, check_periphery, check_v_read
from .defaults import BASE_DEFAULTS, default_update
from .optim import DEFAULT_LR, OPTIMIZERS
from .recipes import RECIPES
from .rules import RULES
from .updates import QUANTS, RANGES, UPDATES, DeviceSetup

GAINS = ("layer", "column")

# Fields left at None are filled by resolve(): from the recipe, else from the update's defaults.
BASE_FIELDS: tuple[Field, ...] = (
    Field("network", "str", "digits-mlp", "Network preset (networks/*.toml) or a path to one."),
    Field("dataset", "str", "digits", "Dataset.", choices=xdata.DATASETS),
    Field("data_dir", "str", None, "Folder searched first for dataset files.", optional=True),
    Field("device", "str", "ideal", "Device preset (devices/*.toml) or a path to one."),
    Field("device_set", "str", None, "Device field overrides 'field=value,...' (e.g. "
          "'read_noise_rel=0.02,stuck_off_rate=0.01'); see `xbar devices show`.", optional=True),
    Field("bits", "int", None, "Override the device's levels with 2**bits uniform levels.", lo=1, hi=8,
          optional=True),
    Field("update", "str", None, "How a step reaches the devices (omit: 'qat' when device, device_set or "
          "bits is set, else 'float').", choices=UPDATES, optional=True),
    Field("rule", "str", "bp", "What travels backward.", choices=RULES),
    Field("quant", "str", None, "Weight grid: the device's levels, or the seed's asymm/symm.",
          choices=QUANTS, optional=True),
    Field("range", "str", None, "Grid range: global [-w_max, w_max]; init (fixed per layer from the "
          "initial weights); local (per tensor, every step).", choices=RANGES, optional=True),
    Field("w_max", "float", 1.0, "Half-width of the global range.", lo=0.0, lo_open=True),
    Field("range_scale", "float", None, "Under range 'init': half-width / max|W| at initialisation "
          "(omit: 2, or a recipe's default; recipe hwa, update mixed on a pulse device: 4).", lo=0.0, lo_open=True,
          optional=True),
    Field("gain", "str", None, "Digital gain granularity under a local range.", choices=GAINS,
          optional=True),
    Field("epochs", "int", None, "Passes over the training set.", lo=1, hi=100000, optional=True),
    Field("batch_size", "int", None, "Samples per step.", lo=1, hi=1 << 20, optional=True),
    Field("optimizer", "str", None, "Optimizer.", choices=OPTIMIZERS, optional=True),
    Field("lr", "float", None, "Learning rate (with an --optimizer other than the update's: that "
          "optimizer's torch default).", lo=0.0, lo_open=True, optional=True),
    Field("momentum", "float", 0.0, "SGD momentum.", lo=0.0, hi=1.0, hi_open=True),
    Field("weight_decay", "float", 0.0, "L2 weight decay.", lo=0.0),
    Field("lr_gamma", "float", None, "StepLR factor per lr_step epochs (1 = constant).", lo=0.0,
          lo_open=True, hi=1.0, optional=True),
    Field("lr_step", "int", 1, "StepLR period in epochs.", lo=1),
    Field("seed", "int", 1, "Seeds init, feedback, shuffling, rounding and devices.", lo=0, hi=2 ** 63 - 1),
    Field("tile", "str", "64x64", "Crossbar tile ROWSxCOLS."),
    Field("adc_bits", "int", None, "ADC resolution per tile output (omit: ideal).", lo=2, hi=16,
          optional=True),
    Field("dac_bits", "int", None, "Input DAC resolution (omit: analog inputs).", lo=2, hi=16, optional=True),
    *PERIPHERY_FIELDS,   # ADC errors and wires, as the crossbar declares them
    # the crossbar's option, left unset so that a recipe can fill it (resolved: 1 unless one does)
    dataclasses.replace(REPLICAS, default=None, optional=True,
                        doc=REPLICAS.doc + " Omit: 1 (or a recipe's default)."),
    Field("init", "str", None, "Start from a saved run (.h5): weights, biases, masks, batch norms "
          "(hardware-aware fine-tuning of an imported or trained network).", optional=True),
    Field("ir_drop_train", "bool", True, "Train through the IR-dropped reads (true), or train with ideal "
          "wires and only evaluate through them (false: inference-only IR drop)."),
    Field("recipe", "str", None, "Defaults for every field left unset: 'seed' (the seed study's "
          "settings) or 'hwa' (hardware-aware training, xbar.train.hwa).", choices=RECIPES, optional=True),
    Field("train_limit", "int", None, "Use only the first N training samples.", lo=1, optional=True),
    Field("test_limit", "int", None, "Use only the first N test samples.", lo=1, optional=True),
    Field("eval_train", "bool", True, "Measure train accuracy and loss after every epoch."),
    Field("eval_at_s", "floats", None, "Also evaluate the trained network these times after its last "
          "programming (drift and read noise at t; reported under 'after_programming').", optional=True,
          unit="s"),
    Field("eval_compensate", "str", "exact", "Global drift compensation of those evaluations: 'exact' "
          "(noise-free conductances), 'read' (noisy one-hot reads, as a chip can) or 'none'.",
          choices=("exact", "read", "none")),
)


def _split_items(text: str) -> list[str]:
    """Split 'a=1,b=[1.0,2.0],c="x,y"' on the commas outside brackets and quotes."""
    items, cur, depth, quote, escaped = [], [], 0, "", False
    for ch in text:
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\" and quote == '"':
                escaped = True
            elif ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth <= 0:
            items.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    items.append("".join(cur))
    return [t.strip() for t in items if t.strip()]


def parse_device_set(text: str) -> dict[str, Any]:
    """'read_noise_rel=0.02,levels_us=[0.0,1.0],read_noise_kind=additive' -> {field: value}.

    Values are TOML (lists and quoted strings may hold commas); a bare word is a string.
    """
    import re
    import tomllib
    out: dict[str, Any] = {}
    for item in _split_items(text):
        key, sep, raw = item.partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep or not key:
            raise ConfigError(f"device_set = {text!r}: expected 'field=value,...', got {item!r}")
        try:
            out[key] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError as exc:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.+-]*", raw):
                raise ConfigError(f"device_set: {key} = {raw!r} is not a value ({exc}); write numbers, "
                                  "lists as [0.0, 1.0], words as additive or \"additive\"") from None
            out[key] = raw   # a bare word, e.g. read_noise_kind=additive
    return out


class TrainConfig(FieldConfig):
    """Everything one training run needs; see :meth:`fields` for each field's meaning and range.

    Build with keywords (validated like a TOML table), :meth:`from_dict` or :meth:`with_`.
    Fields left None are resolved by :meth:`resolve` (recipe first, then per-update defaults).
    The fields are the run's own (:data:`BASE_FIELDS`) followed by every registered rule's, update
    scheme's and recipe's options (``hsic_*``, ``sg_*``, ``insitu_*``, ``hwa_*``): options live with
    what they configure.
    """

    LABEL = "TrainConfig"
    SOURCE = "train config"
    LIST_VALID = True

    @classmethod
    def fields(cls) -> tuple[Field, ...]:
        extra: dict[str, Field] = {}   # by name: schemes that share a base share its FIELDS once
        for c in (*RULES.classes(), *UPDATES.classes(), *RECIPES.classes()):
            for f in c.FIELDS:
                extra.setdefault(f.name, f)
        return BASE_FIELDS + tuple(extra.values())

    def normalise(self, values):
        if isinstance(values["tile"], (tuple, list)) and len(values["tile"]) == 2:
            values["tile"] = f"{values['tile'][0]}x{values['tile'][1]}"
        return values

    def check(self, values):
        parse_tile(values["tile"])

    def resolve(self) -> TrainConfig:
        """Fill every None field from the recipe and the update's defaults; check presets exist."""
        filled = self.as_dict()
        if filled["update"] is None:
            filled["update"] = default_update(self.device, self.device_set, self.bits)
        update = filled["update"]
        scheme = UPDATES.get(update)
        recipe = RECIPES.get(self.recipe) if self.recipe is not None else None
        sources = (recipe.defaults_for(update, self.device_obj()) if recipe else []) + [scheme.DEFAULTS, BASE_DEFAULTS]
        bundle_opt = next(src["optimizer"] for src in sources if src.get("optimizer"))
        if filled["optimizer"] is not None and filled["optimizer"] != bundle_opt:
            # Another optimizer than the recipe's: its own torch default lr and no decay,
            # unless set explicitly (a recipe's lr and gamma belong to its optimizer).
            sources = [{"lr": DEFAULT_LR[filled["optimizer"]], "lr_gamma": 1.0}] + sources
        for k in filled:
            if filled[k] is None:
                for src in sources:
                    if src.get(k) is not None:
                        filled[k] = src[k]
                        break
        if not scheme.on_device:
            filled.update(quant=None, range=None, gain=None)
        rule = RULES.get(self.rule)
        rule.resolve(filled)
        out = TrainConfig(**filled)
        spec = NetworkSpec.preset(out.network)
        # Refuse what cannot be allocated now, not at the first batch. (The input size is the
        # network's own when it fixes one: whether the data fits it is checked on the data.)
        n_in = math.prod(spec.input) if spec.input else math.prod(xdata.image_shape(out.dataset))
        spec.check_memory(n_in, xdata.num_classes(out.dataset),
                          parse_tile(out.tile) if scheme.on_device else None, out.batch_size,
                          what=f"on {out.dataset}")
        dev = out.device_obj()
        if out.quant in ("asymm", "symm") and dev.bits is None:
            raise ConfigError(f"quant = {out.quant!r} needs bits: set bits (device {dev.name!r} is "
                              f"{dev.summary()}), or use quant = 'device'")
        setup = out.device_setup()
        if setup is not None:
            scheme.check(setup)   # e.g. rounding needs uniform levels, in-situ a fixed range
        check_periphery(out.as_dict())
        check_v_read(dev, out.v_read)
        if out.momentum and out.optimizer != "sgd":
            raise ConfigError(f"momentum = {out.momentum}: only optimizer 'sgd' takes momentum")
        rule.check(out)
        if recipe is not None:
            recipe.check(out)
        return out

    def rule_options(self) -> dict[str, Any]:
        """The keyword options of make_rule for this config's rule."""
        return RULES.get(self.rule).options(self)

    def device_obj(self) -> Device:
        dev = Device.preset(self.device)
        if self.device_set:
            dev = dev.with_(**parse_device_set(self.device_set))
        return dev.with_(bits=self.bits) if self.bits is not None else dev

    def or_default(self, name: str):
        """Field `name`, or where it is unset its plain default (BASE_DEFAULTS): what resolve()
        gives it when no recipe or update scheme sets it. For configs read before resolving."""
        value = getattr(self, name)
        return BASE_DEFAULTS.get(name) if value is None else value

    def device_setup(self) -> DeviceSetup | None:
        """The per-layer crossbar description, or None for update 'float'."""
        if not UPDATES.get(self.update or default_update(self.device, self.device_set, self.bits)).on_device:
            return None
        dev = self.device_obj()
        bits = self.bits if self.bits is not None else dev.bits
        return DeviceSetup(device=dev, bits=bits, quant=self.quant, range=self.range,
                           w_range=(-self.w_max, self.w_max), gain=self.gain, tile=parse_tile(self.tile),
                           adc_bits=self.adc_bits, dac_bits=self.dac_bits, range_scale=self.or_default("range_scale"),
                           options={"ir_drop": self.ir_drop if self.ir_drop_train else "none",
                                    "r_wire_ohm": self.r_wire_ohm, "v_read": self.v_read,
                                    "adc_offset_lsb": self.adc_offset_lsb, "adc_gain_rel": self.adc_gain_rel,
                                    "adc_inl_lsb": self.adc_inl_lsb,
                                    "replicas": self.or_default("replicas")})


FIELDS: tuple[Field, ...] = TrainConfig.fields()   # the shipped rules' and schemes' options included
FIELD_NAMES = tuple(f.name for f in FIELDS)
