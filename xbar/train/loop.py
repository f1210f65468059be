"""The training loop: a validated config in, a JSON-ready result dict out.

    from xbar.train import TrainConfig, train
    result = train(TrainConfig(network="mlp-100x2", dataset="fmnist", bits=3, update="qat"))

Randomness: one seed; every consumer gets its own stream, np.random.SeedSequence([seed, k]):
k = 0 weight init, 1 feedback matrices, 2 shuffling, 3 stochastic rounding, 4 + l the crossbar
of layer l. Same config and seed give the same result, bit for bit.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import data as xdata
from ..config import Field, suggest, validate_fields
from ..device import Device
from ..errors import ConfigError, ShapeError
from ..nn import Network, NetworkSpec, loss_and_error
from ..tile.settings import PERIPHERY_FIELDS, check_periphery, check_v_read
from .optim import DEFAULT_LR, OPTIMIZERS, StepLR, make_optimizer
from .rules import RULES, make_rule
from .updates import QUANTS, RANGES, UPDATES, DeviceSetup, check_insitu, make_update

RECIPES = ("seed",)
GAINS = ("layer", "column")

# Fields left at None are filled by resolve(): from the recipe, else from the update's defaults.
FIELDS: tuple[Field, ...] = (
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
    Field("range_scale", "float", 2.0, "Under range 'init': half-width / max|W| at initialisation.",
          lo=0.0, lo_open=True),
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
    Field("init", "str", None, "Start from a saved run (.h5): weights, biases, masks, batch norms "
          "(hardware-aware fine-tuning of an imported or trained network).", optional=True),
    Field("ir_drop_train", "bool", True, "Train through the IR-dropped reads (true), or train with ideal "
          "wires and only evaluate through them (false: inference-only IR drop)."),
    Field("recipe", "str", None, "'seed': the seed study's settings for every field left unset.",
          choices=RECIPES, optional=True),
    Field("train_limit", "int", None, "Use only the first N training samples.", lo=1, optional=True),
    Field("test_limit", "int", None, "Use only the first N test samples.", lo=1, optional=True),
    Field("eval_train", "bool", True, "Measure train accuracy and loss after every epoch."),
    # rule "hsic" (xbar.train.hsic); defaults from the official code, see that module
    Field("hsic_sigma", "float", 5.0, "HSIC: Gaussian kernel width σ (kernel exp(-|a-b|²/(2σ²d))).",
          lo=0.0, lo_open=True),
    Field("hsic_beta", "float", 500.0, "HSIC: weight β of the label term in nHSIC(Z,X) - β nHSIC(Z,Y).",
          lo=0.0),
    Field("hsic_eps", "float", 1e-5, "HSIC: ridge ε of the normalised HSIC (εm is added to the "
          "centred kernel).", lo=0.0, lo_open=True),
    Field("hsic_epochs", "int", None, "HSIC: epochs in which the hidden layers learn (the output layer "
          "alongside them); afterwards only the output layer trains, on the frozen features (omit: "
          "half the epochs, rounded up).", lo=1, optional=True),
    Field("hsic_standardise", "bool", True, "HSIC: kernels see each batch divided by its rms (in place "
          "of the official networks' BatchNorm); false: the raw features."),
    # rule "sg" (xbar.train.sg)
    Field("sg_conditioned", "bool", True, "SG: the synthetic-gradient modules also see the one-hot "
          "label (cDNI); false: plain DNI."),
    Field("sg_lr", "float", 1e-3, "SG: Adam learning rate of the (digital) synthetic-gradient modules.",
          lo=0.0, lo_open=True),
)
FIELD_NAMES = tuple(f.name for f in FIELDS)

# The seed study (Granada bachelor's thesis, 2022; experiments/seed-study.toml): Adadelta lr 1.0,
# StepLR γ 0.7 per epoch, batch 64, 30 epochs, levels in [-1, 1] for the whole network (α = 1, no
# column gain), the study's asymm quantizer by default.
# (w_max = 1 and lr_step = 1 are the plain defaults already.) Explicitly set fields win.
SEED_RECIPE = {"optimizer": "adadelta", "lr": 1.0, "lr_gamma": 0.7, "batch_size": 64, "epochs": 30,
               "range": "global", "gain": "layer", "quant": "asymm"}
# Defaults without a recipe, measured on digits (digits-mlp, 30 epochs) and Fashion-MNIST
# (mlp-100x2, 5 epochs); see the report on issue 3:
# - Adam (lr 1e-3, constant): as good as the seed's Adadelta + StepLR 0.7 on Fashion-MNIST
#   (float 87.9 vs 87.5 %, qat 1 bit 85.7 vs 86.1 %) and far better on digits, whose 23 steps
#   per epoch the 0.7 decay starves (float 96.4 vs 93.6 %);
# - qat: a local range with a digital gain per output column (1 bit: 86.1 % against 62.3 % per
#   layer and 10 % with the global [-1, 1] grid);
# - stochastic: a range fixed per layer at 2x the initial max|W|: rounding noise diffuses the
#   weights, and a moving local range amplifies it (2 bits, 2 epochs: 84.1 % against 77.9 %
#   global and 80.7 % local-column).
BASE_DEFAULTS = {"optimizer": "adam", "lr": 1e-3, "lr_gamma": 1.0, "batch_size": 64, "epochs": 30}
UPDATE_DEFAULTS = {
    "float": {"quant": None, "range": None, "gain": None},
    "nearest": {"quant": "asymm", "range": "global", "gain": "layer"},
    "stochastic": {"quant": "device", "range": "init", "gain": "layer", "lr_gamma": 0.9},
    "qat": {"quant": "device", "range": "local", "gain": "column", "lr_gamma": 0.9},
    "mixed": {"quant": "device", "range": "init", "gain": "layer", "lr_gamma": 0.8},
    # pulse: NeuroSim's in-situ SGD. A step of Adam's 1e-3 is far below one device pulse
    # (ε = m / (pulse_levels - 1), about 0.01 on digits-mlp), so every update rounds to zero pulses
    # and the network stays at chance (10 %); plain SGD moves whole pulses. Measured on digits
    # (digits-mlp, 30 epochs, seed 1), test accuracy for agsi / epiram / gst-pcm: lr 0.05: 66 / 26 /
    # 56 %; lr 0.1: 89 / 88 / 91 %; lr 0.2: 76 / 92 / 91 %; lr 0.4: 57 / 89 / 82 %.
    "pulse": {"quant": "device", "range": "init", "gain": "layer", "optimizer": "sgd", "lr": 0.1,
              "lr_gamma": 1.0},
}
# The update scheme when none is given: a device (or bits) asks for the device, so a run that
# names one never trains in float without it; the device path that needs nothing else is qat.
DEVICE_UPDATE = "qat"


def default_update(device: str = "ideal", device_set: str | None = None, bits: int | None = None) -> str:
    """The update scheme of a config that sets none: 'qat' when it names a device other than the
    ideal one, device overrides or bits; else 'float'."""
    return DEVICE_UPDATE if (device != "ideal" or device_set or bits is not None) else "float"


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


def parse_tile(text: str) -> tuple[int, int]:
    """'64x64' -> (64, 64); errors say what to write."""
    try:
        r, c = str(text).lower().split("x")
        rows, cols = int(r), int(c)
        if rows < 1 or cols < 1:
            raise ValueError
        return rows, cols
    except ValueError:
        raise ConfigError(f"tile = {text!r}: expected ROWSxCOLS with integers >= 1, e.g. '64x64'") from None


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs; see :data:`FIELDS` for each field's meaning and range.

    Build with keywords (validated like a TOML table), :meth:`from_dict` or :meth:`with_`.
    Fields left None are resolved by :meth:`resolve` (recipe first, then per-update defaults).
    """

    network: str = "digits-mlp"
    dataset: str = "digits"
    data_dir: str | None = None
    device: str = "ideal"
    device_set: str | None = None
    bits: int | None = None
    update: str | None = None
    rule: str = "bp"
    quant: str | None = None
    range: str | None = None
    w_max: float = 1.0
    range_scale: float = 2.0
    gain: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    optimizer: str | None = None
    lr: float | None = None
    momentum: float = 0.0
    weight_decay: float = 0.0
    lr_gamma: float | None = None
    lr_step: int = 1
    seed: int = 1
    tile: str = "64x64"
    adc_bits: int | None = None
    dac_bits: int | None = None
    adc_offset_lsb: float = 0.0
    adc_gain_rel: float = 0.0
    adc_inl_lsb: float = 0.0
    ir_drop: str = "none"
    r_wire_ohm: float = 0.0
    v_read: float = 0.2
    ir_drop_train: bool = True
    init: str | None = None
    recipe: str | None = None
    train_limit: int | None = None
    test_limit: int | None = None
    eval_train: bool = True
    hsic_sigma: float = 5.0
    hsic_beta: float = 500.0
    hsic_eps: float = 1e-5
    hsic_epochs: int | None = None
    hsic_standardise: bool = True
    sg_conditioned: bool = True
    sg_lr: float = 1e-3

    def __post_init__(self):
        values = {f: getattr(self, f) for f in FIELD_NAMES}
        if isinstance(values["tile"], (tuple, list)) and len(values["tile"]) == 2:
            values["tile"] = f"{values['tile'][0]}x{values['tile'][1]}"
        checked = validate_fields(FIELDS, values, file="TrainConfig")
        parse_tile(checked["tile"])
        for k, v in checked.items():
            object.__setattr__(self, k, v)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, file: str | None = None) -> TrainConfig:
        """Validate a plain dict (e.g. a TOML table); unknown keys get a did-you-mean."""
        values = validate_fields(FIELDS, dict(data), file=file or "train config")
        return cls(**values)

    def with_(self, **changes: Any) -> TrainConfig:
        for k in changes:
            if k not in FIELD_NAMES:
                raise ConfigError(f"TrainConfig: unknown field {k!r}{suggest(k, FIELD_NAMES)}; "
                                  f"valid: {', '.join(FIELD_NAMES)}")
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready values."""
        return {f: getattr(self, f) for f in FIELD_NAMES}

    def resolve(self) -> TrainConfig:
        """Fill every None field from the recipe and the update's defaults; check presets exist."""
        filled = self.as_dict()
        if filled["update"] is None:
            filled["update"] = default_update(self.device, self.device_set, self.bits)
        update = filled["update"]
        sources = ([SEED_RECIPE] if self.recipe == "seed" else []) + [UPDATE_DEFAULTS[update],
                                                                       BASE_DEFAULTS]
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
        if update == "float":
            filled.update(quant=None, range=None, gain=None)
        if self.rule == "hsic" and filled["hsic_epochs"] is None:
            filled["hsic_epochs"] = (filled["epochs"] + 1) // 2
        out = TrainConfig(**filled)
        spec = NetworkSpec.preset(out.network)
        # Refuse what cannot be allocated now, not at the first batch. (The input size is the
        # network's own when it fixes one: whether the data fits it is checked on the data.)
        n_in = math.prod(spec.input) if spec.input else math.prod(xdata.image_shape(out.dataset))
        spec.check_memory(n_in, xdata.num_classes(out.dataset),
                          None if out.update == "float" else parse_tile(out.tile), out.batch_size,
                          what=f"on {out.dataset}")
        dev = out.device_obj()
        if out.quant in ("asymm", "symm") and dev.bits is None:
            raise ConfigError(f"quant = {out.quant!r} needs bits: set bits (device {dev.name!r} is "
                              f"{dev.summary()}), or use quant = 'device'")
        setup = out.device_setup()
        if out.update in ("nearest", "stochastic"):
            setup.steps()   # analog or non-uniform devices cannot be rounded onto
        elif out.update in ("mixed", "pulse"):
            check_insitu(out.update, setup)   # fixed range, pulse device / device step
        check_periphery(out.as_dict())
        check_v_read(dev, out.v_read)
        if out.momentum and out.optimizer != "sgd":
            raise ConfigError(f"momentum = {out.momentum}: only optimizer 'sgd' takes momentum")
        if out.rule == "hsic" and out.batch_size < 2:
            raise ConfigError(f"rule = 'hsic' with batch_size = {out.batch_size}: the HSIC estimator "
                              "needs batches of at least 2 samples (the official code uses 256-512)")
        return out

    def rule_options(self) -> dict[str, Any]:
        """The keyword options of make_rule for this config's rule."""
        if self.rule == "hsic":
            return {"sigma": self.hsic_sigma, "beta": self.hsic_beta, "eps": self.hsic_eps,
                    "hsic_epochs": self.hsic_epochs, "standardise": self.hsic_standardise}
        if self.rule == "sg":
            return {"conditioned": self.sg_conditioned, "lr": self.sg_lr}
        return {}

    def device_obj(self) -> Device:
        dev = Device.preset(self.device)
        if self.device_set:
            dev = dev.with_(**parse_device_set(self.device_set))
        return dev.with_(bits=self.bits) if self.bits is not None else dev

    def device_setup(self) -> DeviceSetup | None:
        """The per-layer crossbar description, or None for update 'float'."""
        if (self.update or default_update(self.device, self.device_set, self.bits)) == "float":
            return None
        dev = self.device_obj()
        bits = self.bits if self.bits is not None else dev.bits
        return DeviceSetup(device=dev, bits=bits, quant=self.quant, range=self.range,
                           w_range=(-self.w_max, self.w_max), gain=self.gain, tile=parse_tile(self.tile),
                           adc_bits=self.adc_bits, dac_bits=self.dac_bits, range_scale=self.range_scale,
                           options={"ir_drop": self.ir_drop if self.ir_drop_train else "none",
                                    "r_wire_ohm": self.r_wire_ohm, "v_read": self.v_read,
                                    "adc_offset_lsb": self.adc_offset_lsb, "adc_gain_rel": self.adc_gain_rel,
                                    "adc_inl_lsb": self.adc_inl_lsb})


def stream(seed: int, k: int) -> np.random.Generator:
    """Random stream k of a run's seed (see the module docstring for which k is what; tools
    built on a run, such as pruning, take k >= 100)."""
    return np.random.default_rng(np.random.SeedSequence([seed, k]))


def int_seed(seed: int, k: int) -> int:
    """An integer seed derived from stream k of a run's seed (crossbars take integers)."""
    return int(np.random.SeedSequence([seed, k]).generate_state(1)[0])


_stream, _int_seed = stream, int_seed


def evaluate(net: Network, X: np.ndarray, y: np.ndarray, batch_size: int = 1000) -> tuple[float, float]:
    """(mean loss, accuracy in percent) of the network as it now reads (through its crossbars)."""
    total, correct = 0.0, 0
    for i in range(0, len(X), batch_size):
        a = net.predict(X[i:i + batch_size], batch_size)
        loss, _ = loss_and_error(net.output, a, y[i:i + batch_size])
        total += loss * len(a)
        correct += int(np.sum(np.argmax(a, axis=1) == y[i:i + batch_size]))
    n = max(len(X), 1)
    return total / n, 100.0 * correct / n


class Diverged(Exception):
    """The loss or the weights stopped being finite, or the loss exploded (see loss_limit)."""


# A run has diverged when its loss exceeds LOSS_RELATIVE x its first step's loss (at least 1), or
# LOSS_ABSOLUTE. A classifier at chance has an NLL of ln(10) = 2.3; losses of 1e10 to 1e31 that
# stay finite came from runs whose weights had blown up, and they are no result.
LOSS_RELATIVE = 1e6
LOSS_ABSOLUTE = 1e8


def loss_limit(first_loss: float) -> float:
    """The loss above which a run whose first step's loss was `first_loss` has diverged."""
    return min(LOSS_ABSOLUTE, LOSS_RELATIVE * max(first_loss, 1.0))


class Trainer:
    """The pieces of one run, built from a resolved config: network, rule, update, optimizer.

    ``step(x, y)`` is one optimizer step (forward, rule, gradients, step, update); ``train``
    drives it over epochs, calling ``start_epoch`` before each. Built separately so tests and
    tools can run steps by hand.

    The optimizer covers the layers the rule trains; when that set changes (a rule returns None
    for layers it freezes, e.g. HSIC's output-only phase), it is rebuilt for the new set with the
    current learning rate and fresh state.
    """

    def __init__(self, cfg: TrainConfig, n_in: int, n_classes: int):
        self.cfg = cfg
        self.spec = NetworkSpec.preset(cfg.network)
        self.net = self.spec.build(n_in, n_classes, _stream(cfg.seed, 0))
        self.rule = make_rule(cfg.rule, **cfg.rule_options())
        self.rule.setup(self.net, _stream(cfg.seed, 1))
        self.update = make_update(cfg.update, cfg.device_setup(), _stream(cfg.seed, 3))
        self.feedback = self.rule.feedback()
        self.update.attach(self.net, [_int_seed(cfg.seed, 4 + i) for i in range(len(self.net.layers))],
                           self.feedback)
        self.opt = make_optimizer(cfg.optimizer, self.net.params(), cfg.lr, momentum=cfg.momentum,
                                  weight_decay=cfg.weight_decay)
        self.sched = StepLR(self.opt, cfg.lr_step, cfg.lr_gamma)
        self.shuffle = _stream(cfg.seed, 2)
        self._active = tuple(range(len(self.net.layers)))   # layers the optimizer covers
        self.last_correct = 0   # correct predictions of the last step's batch (before the step)
        self.first_loss: float | None = None   # the first step's loss: the scale of an explosion
        self._post_update = [layer for layer in self.net.layers if hasattr(layer, "post_update")]

    def start_epoch(self, epoch: int) -> None:
        """Tell the rule a new epoch (1-based) begins."""
        self.rule.start_epoch(epoch)

    def _cover(self, active: tuple[int, ...]) -> None:
        """Rebuild the optimizer for the layers in `active` (current lr, fresh state)."""
        cfg, lr = self.cfg, self.opt.lr
        params = [p for i in active for p in self.net.layers[i].params()]
        self.opt = make_optimizer(cfg.optimizer, params, lr, momentum=cfg.momentum,
                                  weight_decay=cfg.weight_decay)
        self.sched.optimizer = self.opt
        self._active = active

    def calibrate(self, x: np.ndarray) -> None:
        """Recalibrate every crossbar's forward ADC range on batch x (layer by layer, each on its
        own input, following skip connections). A no-op without ADCs."""
        self.net.calibrate(x)

    def step(self, x: np.ndarray, y: np.ndarray) -> float:
        """One step on batch (x, y); returns the batch loss before the step."""
        net = self.net
        try:
            out, caches = net.forward(x)
            loss, e = net.loss(out, y)
            self.last_correct = int(np.count_nonzero(np.argmax(out, axis=1) == y))
            if not math.isfinite(loss):
                raise Diverged(f"loss became {loss}")
            if self.first_loss is None:
                self.first_loss = loss
            if loss > loss_limit(self.first_loss):
                raise Diverged(f"loss exploded to {loss:.3g} (first step: {self.first_loss:.3g}; limit "
                               f"{loss_limit(self.first_loss):.3g})")
            deltas = self.rule.deltas(net, caches, e, y)
            active = tuple(i for i, d in enumerate(deltas) if d is not None)
            if active != self._active:
                self._cover(active)
            grads = [g for i in active for g in net.layers[i].grads(deltas[i], caches[i])]
            self.opt.step(grads)
            for layer in self._post_update:
                layer.post_update()   # layer-owned constraints (e.g. latent weights clipped to [-1, 1])
            self.rule.step()
            self.update.after_step(net, self.feedback)
        except ShapeError as exc:
            # The crossbar refuses NaN/inf (or float32-overflowing) weights, inputs and outputs.
            if _overflow_message(exc) or not all(np.isfinite(p).all() for p in net.params()):
                raise Diverged(f"values left the float32 range ({exc})") from None
            raise
        return loss


def _overflow_message(exc: Exception) -> bool:
    text = str(exc)
    return "NaN or inf" in text or "float32 range" in text


def load_data(cfg: TrainConfig, data: tuple | None = None):
    """(X_train, y_train, X_test, y_test) for the config: loaded, or the given arrays; limits applied."""
    if data is None:
        Xtr, ytr = xdata.load(cfg.dataset, "train", cfg.data_dir)
        Xte, yte = xdata.load(cfg.dataset, "test", cfg.data_dir)
    else:
        Xtr, ytr, Xte, yte = data
    Xtr, Xte = (np.ascontiguousarray(a, dtype=np.float32) for a in (Xtr, Xte))
    ytr, yte = (np.asarray(a, dtype=np.int64) for a in (ytr, yte))
    if cfg.train_limit:
        Xtr, ytr = Xtr[:cfg.train_limit], ytr[:cfg.train_limit]
    if cfg.test_limit:
        Xte, yte = Xte[:cfg.test_limit], yte[:cfg.test_limit]
    n_classes = xdata.num_classes(cfg.dataset)
    for name, yy in (("train", ytr), ("test", yte)):
        if yy.size and (yy.min() < 0 or yy.max() >= n_classes):
            raise ShapeError(f"{name} labels must lie in [0, {n_classes}), got {yy.min()}..{yy.max()}")
    return Xtr, ytr, Xte, yte


def train(config: TrainConfig | dict, *, data: tuple | None = None,
          on_epoch: Callable[[dict], None] | None = None, keep_trainer: bool = False,
          probe: Callable[[Network], dict] | None = None) -> dict[str, Any]:
    """Train one network; returns a JSON-ready dict (see the docstring of xbar.train).

    data: optional (X_train, y_train, X_test, y_test) arrays instead of loading config.dataset.
    on_epoch: called with each history entry as soon as the epoch is evaluated (progress bars).
    keep_trainer: also return the Trainer under "_trainer" (for xbar.checkpoint.save; not JSON).
    probe: called with the network after every epoch; the dict it returns joins that epoch's
        history entry (sweeps record per-layer weight and conductance ranges this way).
    """
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    cfg = cfg.resolve()
    start = time.perf_counter()
    Xtr, ytr, Xte, yte = load_data(cfg, data)
    tr = Trainer(cfg, Xtr.shape[1], xdata.num_classes(cfg.dataset))
    if cfg.init:
        from ..interop.commands import init_trainer
        init_trainer(tr, cfg.init)
    net = tr.net

    # A diverging run overflows on purpose; it is detected and reported, not warned about.
    with np.errstate(over="ignore", invalid="ignore"):
        history, status, message, train_seconds = _epochs(cfg, tr, Xtr, ytr, Xte, yte, on_epoch, probe)
    return {
        "status": status,
        "message": message,
        "test_accuracy": history[-1]["test_accuracy"] if history and status == "ok" else None,
        "train_accuracy": history[-1]["train_accuracy"] if history and status == "ok" else None,
        "history": history,
        "seconds": time.perf_counter() - start,
        "train_seconds": train_seconds,
        "config": cfg.as_dict(),
        "network": {"name": tr.spec.name, "widths": tr.spec.widths(Xtr.shape[1], net.layers[-1].n_out)},
        "hardware": _hardware(net),
    } | ({"_trainer": tr} if keep_trainer else {})


def _epochs(cfg, tr, Xtr, ytr, Xte, yte, on_epoch, probe=None):
    """The epoch loop: returns (history, status, message, training seconds); a divergence message
    names the epoch (and step) it happened in."""
    net = tr.net
    history: list[dict[str, Any]] = []
    status, message = "ok", ""
    n, bs = len(Xtr), cfg.batch_size
    train_seconds = 0.0
    for epoch in range(1, cfg.epochs + 1):
        perm = tr.shuffle.permutation(n)
        t0 = time.perf_counter()
        tr.start_epoch(epoch)
        if cfg.adc_bits is not None and epoch > 1:
            # Weights grow during training: the ADC full scale set on the first batch would clip.
            tr.calibrate(Xtr[perm[:max(bs, 256)]])
        step_loss, steps, correct = 0.0, 0, 0
        try:
            for s in range(0, n, bs):
                idx = perm[s:s + bs]
                step_loss += tr.step(Xtr[idx], ytr[idx])
                correct += tr.last_correct
                steps += 1
        except Diverged as exc:
            status, message = "diverged", f"{exc} at epoch {epoch}, step {steps + 1}"
        seconds = time.perf_counter() - t0
        train_seconds += seconds
        if status != "ok":
            break
        tr.sched.step()
        message = record_epoch(history, on_epoch, cfg, epoch, lambda X, y: evaluate(_read_net(cfg, net), X, y),
                               (Xtr, ytr, Xte, yte), step_loss, steps, seconds, tr.opt.lr, correct)
        if probe is not None:
            history[-1].update(probe(net))
        if message:
            status = "diverged"
            break

    return history, status, message, train_seconds


def _read_net(cfg: TrainConfig, net: Network) -> Network:
    """The network evaluation reads: itself, or (inference-only IR drop) its crossbars through the wires."""
    if cfg.ir_drop == "none" or cfg.ir_drop_train:
        return net
    import copy
    layers = []
    for layer in net.layers:
        layer = copy.copy(layer)
        if layer.crossbar is not None:
            layer.crossbar = layer.crossbar.with_wires(cfg.ir_drop, cfg.r_wire_ohm)
        layers.append(layer)
    out = copy.copy(net)
    out.layers = layers
    return out


def record_epoch(history: list, on_epoch, cfg, epoch: int, score, data, step_loss: float, steps: int,
                 seconds: float, lr: float, correct: int) -> str:
    """Evaluate after an epoch, append its history entry and report it (shared with the baseline).

    score(X, y) -> (loss, accuracy %); data = (X_train, y_train, X_test, y_test); correct: right
    predictions over the epoch's batches, each seen before its step (-> step_accuracy).
    Returns a divergence message, or "" when the evaluated losses are finite.
    """
    Xtr, ytr, Xte, yte = data
    test_loss, test_acc = score(Xte, yte)
    entry = {"epoch": epoch, "test_accuracy": test_acc, "train_accuracy": None, "loss": None,
             "test_loss": test_loss, "step_loss": step_loss / max(steps, 1),
             "step_accuracy": 100.0 * correct / max(len(Xtr), 1), "seconds": seconds, "lr": lr}
    if cfg.eval_train:
        entry["loss"], entry["train_accuracy"] = score(Xtr, ytr)
    else:
        entry["loss"] = entry["step_loss"]
    history.append(entry)
    if on_epoch is not None:
        on_epoch(entry)
    if not (math.isfinite(test_loss) and math.isfinite(entry["loss"])):
        return f"evaluation loss became NaN or inf after epoch {epoch}"
    worst = max(test_loss, entry["loss"])
    if worst > LOSS_ABSOLUTE:
        return f"evaluation loss exploded to {worst:.3g} (limit {LOSS_ABSOLUTE:.3g}) after epoch {epoch}"
    return ""


def _hardware(net: Network) -> list[dict[str, Any]]:
    """Per-layer crossbar counters (empty for update 'float')."""
    out = []
    for layer in net.layers:
        if layer.crossbar is None:
            continue
        s = layer.crossbar.stats()
        out.append({k: (list(v) if isinstance(v, tuple) else v) for k, v in s.items()
                    if k in ("shape", "tiles", "devices", "programs", "weights_clipped", "adc_clipped",
                             "mvm_calls", "mvm_t_calls")})
    return out
