"""The defaults `TrainConfig.resolve` fills in: the seed study's recipe, the plain defaults, and
each update scheme's own (its ``DEFAULTS``, see :mod:`xbar.train.updates`)."""

from __future__ import annotations

from .updates import UPDATES

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
BASE_DEFAULTS = {"optimizer": "adam", "lr": 1e-3, "lr_gamma": 1.0, "batch_size": 64, "epochs": 30, "replicas": 1,
                 "range_scale": 2.0}
# The update scheme when none is given: a device (or bits) asks for the device, so a run that
# names one never trains in float without it; the device path that needs nothing else is qat.
DEVICE_UPDATE = "qat"


def default_update(device: str = "ideal", device_set: str | None = None, bits: int | None = None) -> str:
    """The update scheme of a config that sets none: 'qat' when it names a device other than the
    ideal one, device overrides or bits; else 'float'."""
    return DEVICE_UPDATE if (device != "ideal" or device_set or bits is not None) else "float"


def update_defaults() -> dict[str, dict]:
    """Update scheme -> the defaults it sets (each scheme's DEFAULTS, in registry order)."""
    return {name: UPDATES.get(name).DEFAULTS for name in UPDATES}
