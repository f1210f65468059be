"""A toy update scheme, all in this file: quantization-aware training that reprograms the devices
only every other step (the forward pass reads stale devices in between)."""

from __future__ import annotations

from xbar.errors import ConfigError
from xbar.train.update import UPDATES, Update


@UPDATES.register
class EveryOtherQAT(Update):
    name = "toy-every-other"
    DEFAULTS = {"quant": "device", "range": "local", "gain": "column"}   # noqa: RUF012

    @classmethod
    def check(cls, setup):
        if setup.device.n_levels is None:
            raise ConfigError("update 'toy-every-other' needs device levels: set bits")

    def attach(self, net, seeds, feedback):
        super().attach(net, seeds, feedback)
        self.steps = 0

    def after_step(self, net, feedback):
        self.steps += 1
        if self.steps % 2 == 0:
            for layer in net.layers:
                layer.program()
