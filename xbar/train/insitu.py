"""In-situ update schemes (the weights *are* the devices; the stored W and b are the devices' effective
weights, ``Crossbar.weights()`` / ``bias_weights()``, re-read after every step; biases sit on an
extra array row of the same crossbar, ``bias="row"``, and are updated like the weights):

- ``mixed`` (Nandakumar et al., Front. Neurosci. 2020, "Mixed-precision deep learning based on
  computational memory"; ISCAS 2018): the optimizer's update Δw of every weight and bias goes
  into a digital float64 accumulator χ. The threshold ε is one device step in weight units,
  derived from the layer's fixed grid: on a pulse device, the nominal (linear-equivalent) change
  of one pulse, ε = α·(g_max − g_min)/(pulse_levels − 1) = m/(pulse_levels − 1) for the range
  [−m, m] (divided by ``replicas``, see below); on a device with uniform levels, one level,
  ε = m/(L − 1) (quant "device"; the asymm/symm grids use their own spacing). Then n = trunc(χ/ε) steps are applied (n pulses
  through ``Crossbar.pulse``, nonlinear response and c2c noise included; or n levels, by
  reprogramming the cells whose level changed) and χ −= n·ε. As in the paper, the nominal n·ε is
  subtracted, not the device's actual change (there is no verify), and χ starts at zero.
  Options (fields of these schemes): ``insitu_feedback`` closes the loop: χ −= the change the
  devices actually made, read back after the pulses (as a write-verify read does), so device
  weight + χ stays the sum of the optimizer's updates whatever the nonlinearity and noise did,
  on a pulse device held within the range the devices can hold ([−m, m]; no wind-up: where a
  device pair sits at its limit and the optimizer pushes further, χ does not grow, so the
  saturated pair gets no more pulses, each of which would add cycle-to-cycle noise, and the weight
  leaves the limit as soon as the gradient turns; on agsi, mlp-100x2, epoch 3 of recipe hwa:
  2.4e9 pulses without the bound, 1.5e8 with it: bench/insitu_state.py). On a device of few levels a cell at its top
  level is not rewritten, so χ growing there costs no write, and it acts as hysteresis: with the
  bound, rram-4bit at 1 bit fell from 52.77 to 33.01 % (2-4 bits within 0.7 points), so the bound
  is for pulse devices only;
  ``insitu_threshold`` k fires only where |χ| ≥ k·ε.
- ``pulse`` (NeuroSim V3.0's in-situ SGD): every step's Δw becomes n = round(Δw/(w_max −
  w_min)·levels) pulses at once, with w_max − w_min = α·(g_max − g_min), the weight span of one
  device, and levels = pulse_levels − 1, the pulses across it (NeuroSim's device model), i.e. n = round(Δw/ε)
  with the ε above. No accumulator: |Δw| < ε/2 is lost, as in the paper. Needs pulse_levels.

A signed count on a differential pair (G+, G−), w = α(G+ − G−): n > 0 first depresses G−
towards g_min (along its LTD curve, as many pulses as bring it there) and spends the rest
potentiating G+ (LTP); n < 0 is the mirror image. One device of a pair thus rests at g_min and
the other carries |w|, as at programming, and each weight behaves like one bidirectional device
over [−m, m], crossing zero by handing over to the other device: NeuroSim's LTP-for-positive /
LTD-for-negative model, with no refresh needed (a device saturates only when |w| reaches m).
The pulses that bring a device to g_min are computed from the nominal window (a controller does
not know each device's spread).

With ``replicas`` R > 1 (the crossbar option) each weight sits on R such pairs of equal
significance, read summed with the gain divided among them: one pulse on one pair moves the
weight by ε = m / (R·(pulse_levels − 1)), and its cycle-to-cycle noise is 1/R as large in weight
units, so the noise a weight collects per step of its own falls as 1/√R while its range stays
[−m, m]. A signed count n is shared among the pairs (:func:`share_pulses`: |n| // R each, the rest
to the pairs that lag) and each pair then updates as above.

Both need a fixed grid: range "global" or "init" (a level that moves under range "local" makes
pulses meaningless).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..config import Field
from ..device import Device, pulse_curve_a, pulse_number
from ..errors import ConfigError
from .update import UPDATES, DeviceSetup, Update


def pulse_devices() -> list[str]:
    """Device presets that have a pulse response (pulse_levels), for error messages."""
    out = []
    for name in Device.presets():
        try:
            if Device.preset(name).pulse_levels is not None:
                out.append(name)
        except ConfigError:
            continue   # a broken user preset must not hide the useful message
    return out


def check_insitu(name: str, setup: DeviceSetup) -> None:
    """Fail early (ConfigError) when `setup` cannot carry update scheme `name` ("mixed"/"pulse")."""
    dev = setup.device
    if setup.range == "local":
        raise ConfigError(f"update = {name!r} changes the devices in place and needs a fixed grid: "
                          "range 'init' or 'global', not 'local' (a moving range moves every level)")
    if dev.pulse_levels is not None:
        if setup.quant != "device":
            raise ConfigError(f"update = {name!r} on pulse device {dev.name!r} steps the device itself: "
                              f"use quant = 'device' (not {setup.quant!r})")
        return
    if name == "pulse":
        raise ConfigError(f"update = 'pulse' needs a device with a pulse response (pulse_levels); device "
                          f"{dev.name!r} has none. Presets that have one: {', '.join(pulse_devices())}")
    if dev.n_levels is None:
        raise ConfigError(f"update = {name!r} needs a device step: device {dev.name!r} is analog; set bits, "
                          f"or use a device with pulse_levels ({', '.join(pulse_devices())})")
    setup.steps()   # uniform levels, symm bits >= 2


def pulse_count(dw: np.ndarray, span: float, levels: int) -> np.ndarray:
    """NeuroSim's pulses per update, n = round(Δw / (w_max − w_min) · levels) (NeuroSim V3.0).

    span: w_max − w_min, the weight range one device covers (α·(g_max − g_min)); levels: the
    pulses across it (pulse_levels − 1). Ties round to even (numpy's rint), symmetric in sign.
    """
    return np.rint(np.asarray(dw, dtype=np.float64) * (levels / span))


def pulses_to_floor(g: np.ndarray, device: Device) -> np.ndarray:
    """Depression pulses that bring conductance g (µS) down to g_min along the LTD curve.

    The LTD curve is the LTP curve's mirror image from g_max (as in Crossbar.pulse), so from g the
    device sits at pulse number P(g_min + g_max − g) of it; g_min is P_max. Nominal window, rounded
    up (a fraction of a pulse still needs one pulse; the floor absorbs the excess).
    """
    d = device
    a = pulse_curve_a(d.nonlinearity_ltd, d.pulse_levels)
    mirror = d.g_min_us + d.g_max_us - np.clip(g, d.g_min_us, d.g_max_us)
    left = (d.pulse_levels - 1) - pulse_number(mirror, a, d.pulse_levels, d.g_min_us, d.g_max_us)
    return np.maximum(np.ceil(left - 1e-6), 0.0)


def ltp_pulses_to(g: np.ndarray, device: Device) -> np.ndarray:
    """Potentiation pulses that bring a device from g_min to conductance g along the nominal LTP
    curve, rounded to the nearest pulse (the controller knows the curve, not each device)."""
    d = device
    a = pulse_curve_a(d.nonlinearity_ltp, d.pulse_levels)
    return np.rint(pulse_number(np.clip(g, d.g_min_us, d.g_max_us), a, d.pulse_levels, d.g_min_us, d.g_max_us))


def split_pair(n: np.ndarray, gp: np.ndarray, gn: np.ndarray, device: Device) -> tuple[np.ndarray, np.ndarray]:
    """Signed pulse counts n per weight -> (pulses for G+, pulses for G−), each > 0 LTP, < 0 LTD.

    n > 0 depresses G− down to g_min first, then potentiates G+ with what is left; n < 0 the
    mirror image (see the module docstring).
    """
    up = np.maximum(n, 0.0)
    down = np.maximum(-n, 0.0)
    dep_neg = np.minimum(up, pulses_to_floor(gn, device))
    dep_pos = np.minimum(down, pulses_to_floor(gp, device))
    return (up - dep_neg) - dep_pos, (down - dep_pos) - dep_neg


@dataclass
class LayerState:
    """One layer of an in-situ scheme: the stacked [W; b] layout of its crossbar rows.

    eps: one device step in weight units; chi: the accumulator (mixed only), float64; [lo, hi]: the
    weights a pulsed pair can hold, [−m, m] (the closed loop's bound; unused on the level path);
    prev: the stored weights as last written (float32 values, held as float64), to recover the
    optimizer's Δw;
    level path only: k, the integer grid index of every cell, target = off + k·eps, k in [k_lo, k_hi].
    """

    eps: float
    pulsed: bool
    prev: np.ndarray
    chi: np.ndarray | None = None
    k: np.ndarray | None = None
    lo: float = 0.0
    hi: float = 0.0
    off: float = 0.0
    k_lo: int = 0
    k_hi: int = 0


class InSituUpdate(Update):
    """Base of mixed and pulse: weights and biases live on the devices and move in device steps.

    counters: "pulses" (pulses applied, both devices of all pairs), "writes" (device write
    events: a pair that received pulses, or a cell reprogrammed to a new level), "steps".
    """

    accumulate = False
    bias_row = True
    FIELDS = (
        Field("insitu_pairs", "str", "split", "In-situ (pulse, mixed) on a pulse device: 'split' (an "
              "update depresses the other device of the pair first, then potentiates) or 'potentiate' "
              "(G+ for increases, G- for decreases, with refresh).", choices=("split", "potentiate")),
        Field("adc_calibrate_steps", "int", None, "In-situ (pulse, mixed): also recalibrate the ADC full "
              "scale on the current batch every this many steps (omit: only when an epoch starts; "
              "recipe hwa: 20). In-situ weights grow within an epoch and clip at a full scale set before.",
              lo=1, optional=True),
        Field("insitu_feedback", "bool", None, "In-situ mixed: subtract the devices' read-back change "
              "from the accumulator (closed loop: chi keeps what nonlinearity and cycle-to-cycle noise "
              "missed) instead of the nominal n device steps (omit: false; recipe hwa: true).",
              optional=True),
        Field("insitu_threshold", "float", 1.0, "In-situ mixed: the accumulator fires only where |chi| >= "
              "this many device steps (1: every whole step).", lo=1.0, hi=1000.0),
    )
    refresh_frac = 0.75   # insitu_pairs "potentiate": a pair whose larger device passes this share of the window is refreshed

    @classmethod
    def check(cls, setup):
        check_insitu(cls.name, setup)   # fixed range, pulse device / device step

    @classmethod
    def from_config(cls, cfg, setup, rng=None):
        upd = cls(setup, rng)
        upd.potentiate = cfg.insitu_pairs == "potentiate" and setup.device.pulse_levels is not None
        if upd.potentiate and replicas(setup) > 1:
            raise ConfigError(f"insitu_pairs = 'potentiate' refreshes one pair per weight: it needs "
                              f"replicas = 1 (got {replicas(setup)}); use insitu_pairs = 'split'")
        upd.calibrate_steps = cfg.adc_calibrate_steps
        upd.closed_loop = bool(cfg.insitu_feedback)
        upd.threshold = cfg.insitu_threshold
        return upd

    def __init__(self, setup, rng=None):
        super().__init__(setup, rng)
        check_insitu(self.name, setup)
        self.states: list[LayerState] = []
        self.counters = {"pulses": 0, "writes": 0, "steps": 0}
        self.potentiate = False
        self.calibrate_steps: int | None = None
        self.closed_loop = False   # mixed: feed the devices' actual change back into chi
        self.threshold = 1.0       # mixed: fire only where |chi| >= threshold * eps
        self._steps_seen = 0

    def before_step(self, net, x=None):
        """Recalibrate every crossbar's ADC full scale on the step's batch every `calibrate_steps`
        steps. Measured on agsi (mixed, SGD lr 0.1, a linear noise-free pulse device, 10,000-image
        screen): 71 % without an ADC, 40 % with an 8-bit ADC recalibrated only per epoch. A chip
        recalibrates on a batch of inputs the same way."""
        self._steps_seen += 1
        if self.calibrate_steps and x is not None and (self._steps_seen - 1) % self.calibrate_steps == 0:
            net.calibrate(x)

    def attach(self, net, seeds, feedback):
        self.setups = [self.setup.for_layer(layer).fixed_for(layer.W) for layer in net.layers]
        self.states = []
        for layer, setup, seed in zip(net.layers, self.setups, seeds):
            layer.crossbar = setup.crossbar(seed, bias="row")
            stacked = stack_rows(layer.stored_weights(), layer.b)
            m = max(abs(setup.w_range[0]), abs(setup.w_range[1]))
            if setup.device.pulse_levels is not None:
                # one pulse moves one of the weight's `replicas` unit cells: 1/replicas of a device step
                st = LayerState(eps=m / (replicas(setup) * (setup.device.pulse_levels - 1)), pulsed=True,
                                prev=stacked)
                layer.program()
            else:
                n = setup.steps()
                if setup.quant == "asymm":
                    lo, hi = setup.w_range
                    st = LayerState(eps=(hi - lo) / n, pulsed=False, prev=stacked, off=lo, k_lo=0, k_hi=n)
                else:
                    st = LayerState(eps=m / n, pulsed=False, prev=stacked, k_lo=-n, k_hi=n)
                st.k = np.clip(np.rint((stacked - st.off) / st.eps), st.k_lo, st.k_hi)
                program_stacked(layer, st.off + st.k * st.eps)
            st.lo, st.hi = -m, m   # what a pair holds (the closed loop's bound on pulse devices)
            if self.accumulate:
                st.chi = np.zeros(stacked.shape, dtype=np.float64)
            self.states.append(st)
            self._store(layer, st)

    def counts(self, st: LayerState, delta: np.ndarray) -> np.ndarray:
        """Signed device steps (float64 integers) for the update delta of one layer."""
        raise NotImplementedError

    def on_mask_change(self, i: int, layer, old: np.ndarray) -> None:
        """Layer i just lost the weights in `old & ~layer.mask` (pruning): write those cells to
        weight 0, clear their accumulators, and leave every other cell's conductance as it is."""
        st = self.states[i]
        gone = np.zeros(st.prev.shape, bool)
        gone[:layer.n_in] = old & ~layer.mask
        if st.pulsed:
            layer.program(cells=gone[:layer.n_in])
        else:
            st.k[gone] = np.clip(np.rint((0.0 - st.off) / st.eps), st.k_lo, st.k_hi)
            program_stacked(layer, st.off + st.k * st.eps, cells=gone)
        if st.chi is not None:
            st.chi[gone] = 0.0
        self._store(layer, st)
        layer.W *= layer.mask

    def after_step(self, net, feedback):
        self.counters["steps"] += 1
        for layer, st in zip(net.layers, self.states):
            delta = stack_rows(layer.W, layer.b).astype(np.float64) - st.prev
            n = self.counts(st, delta)
            if layer.mask is not None:
                n[:layer.n_in][~layer.mask] = 0.0
            if np.any(n):
                before = st.prev
                if st.pulsed:
                    self._pulse(layer, n)
                else:
                    self._relevel(layer, st, n)
                self._store(layer, st)
                if self.closed_loop and st.chi is not None:
                    # what the devices did (read back), not the nominal n·eps: chi keeps the rest
                    st.chi += n * st.eps - (st.prev - before)
            else:
                layer.W[...] = st.prev[:layer.n_in]
                if layer.b is not None:
                    layer.b[...] = st.prev[layer.n_in]
            if self.closed_loop and st.chi is not None and st.pulsed:
                # no wind-up: the target (device + chi) stays within what the devices can hold
                np.clip(st.chi, st.lo - st.prev, st.hi - st.prev, out=st.chi)

    def _pulse(self, layer, n):
        if self.potentiate:
            return self._pulse_potentiate(layer, n)
        xb = layer.crossbar
        gp, gn = xb.conductances()
        if gp.shape[0] == 1:
            n_pos, n_neg = split_pair(n, gp[0], gn[0], xb.device)
        else:   # every replica's pair splits its share (elementwise over the replicas)
            n_pos, n_neg = split_pair(share_pulses(n, gp - gn), gp, gn, xb.device)
        xb.pulse(n_pos, n_neg)
        self.counters["pulses"] += int(np.abs(n_pos).sum() + np.abs(n_neg).sum())
        self.counters["writes"] += int(np.count_nonzero(n))

    def _pulse_potentiate(self, layer, n):
        """Both signs of an update by potentiation (Burr et al., IEEE TED 62, 3498, 2015: G+ for
        increases, G− for decreases, with occasional RESET) instead of depressing the other device.

        Why: on a device whose LTD curve is steep at g_max and flat at g_min (NeuroSim's Ag:a-Si,
        NL_LTD −4.88), depressing a device near g_min moves it ~0.04 of a nominal step per pulse while
        potentiating it moves ~2.6 steps (NL_LTP 2.4): the split scheme lets small weights grow and not
        shrink back. Both devices climb, so a pair whose larger device passes `refresh_frac` of the
        window is refreshed: its weight is read (G+ − G−), both devices are RESET to g_min, and the
        larger one is potentiated by the pulses that hold the difference on the nominal LTP curve
        (cycle-to-cycle noise included). No weight is kept in digital memory.
        """
        xb = layer.crossbar
        n_pos, n_neg = np.maximum(n, 0.0), np.maximum(-n, 0.0)
        xb.pulse(n_pos, n_neg)
        self.counters["pulses"] += int(n_pos.sum() + n_neg.sum())
        self.counters["writes"] += int(np.count_nonzero(n))
        self.refresh(layer)

    def refresh(self, layer) -> None:
        """insitu_pairs "potentiate": RESET and rewrite the pairs whose larger device passed
        `refresh_frac` of the window (see _pulse_potentiate)."""
        xb = layer.crossbar
        d = xb.device
        gp, gn = (g[0] for g in xb.conductances())
        full = np.maximum(gp, gn) > d.g_min_us + self.refresh_frac * (d.g_max_us - d.g_min_us)
        if layer.mask is not None:
            full[:layer.n_in] &= layer.mask
        if not full.any():
            return
        diff = np.where(full, gp - gn, 0.0)
        program_stacked(layer, np.zeros(full.shape), cells=full)   # RESET both devices of the full pairs
        p = np.where(full, ltp_pulses_to(d.g_min_us + np.abs(diff), d), 0.0)
        xb.pulse(np.where(diff > 0, p, 0.0), np.where(diff < 0, p, 0.0))
        self.counters["refreshes"] = self.counters.get("refreshes", 0) + int(full.sum())
        self.counters["pulses"] += int(p.sum())

    def _relevel(self, layer, st, n):
        k = np.clip(st.k + n, st.k_lo, st.k_hi)
        changed = k != st.k
        if layer.crossbar.has_write_noise:
            # Physically only the changed cells are written, so only they get a fresh write-noise draw.
            program_stacked(layer, st.off + k * st.eps, cells=changed)
        else:
            program_stacked(layer, st.off + k * st.eps)
        st.k = k
        self.counters["writes"] += int(np.count_nonzero(changed))

    def _store(self, layer, st):
        """Stored weights := the devices' effective weights; remember them to see the next Δw."""
        xb = layer.crossbar
        layer.W[...] = xb.weights()
        if layer.b is not None:
            layer.b[...] = xb.bias_weights()
        st.prev = stack_rows(layer.W, layer.b).astype(np.float64)

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Arrays worth saving with a run (accumulators, level indices), by name."""
        out = {}
        for i, st in enumerate(self.states):
            if st.chi is not None:
                out[f"chi_{i}"] = st.chi
            if st.k is not None:
                out[f"k_{i}"] = st.k
        return out


@UPDATES.register
class MixedUpdate(InSituUpdate):
    """Mixed precision: χ += Δw; n = trunc(χ/ε) device steps; χ −= n·ε (Nandakumar et al.)."""

    name = "mixed"
    DEFAULTS: ClassVar[dict] = {"quant": "device", "range": "init", "gain": "layer", "lr_gamma": 0.8}
    accumulate = True

    def counts(self, st, delta):
        st.chi += delta
        n = np.trunc(st.chi / st.eps)
        if self.threshold != 1.0:
            n[np.abs(st.chi) < self.threshold * st.eps] = 0.0
        st.chi -= n * st.eps
        return n


@UPDATES.register
class PulseUpdate(InSituUpdate):
    """Plain pulsed SGD (NeuroSim): n = round(Δw/ε) pulses per step, no accumulator."""

    name = "pulse"
    # NeuroSim's in-situ SGD. A step of Adam's 1e-3 is far below one device pulse
    # (ε = m / (pulse_levels - 1), about 0.01 on digits-mlp), so every update rounds to zero pulses
    # and the network stays at chance (10 %); plain SGD moves whole pulses. Measured on digits
    # (digits-mlp, 30 epochs, seed 1), test accuracy for agsi / epiram / gst-pcm: lr 0.05: 66 / 26 /
    # 56 %; lr 0.1: 89 / 88 / 91 %; lr 0.2: 76 / 92 / 91 %; lr 0.4: 57 / 89 / 82 %.
    DEFAULTS: ClassVar[dict] = {"quant": "device", "range": "init", "gain": "layer", "optimizer": "sgd", "lr": 0.1,
                "lr_gamma": 1.0}

    def counts(self, st, delta):
        span = st.eps * (self.setup.device.pulse_levels - 1)
        return pulse_count(delta, span, self.setup.device.pulse_levels - 1)


def replicas(setup: DeviceSetup) -> int:
    """Unit cells per weight of a layer's crossbars (the crossbar option ``replicas``)."""
    return int((setup.options or {}).get("replicas", 1))


def share_pulses(n: np.ndarray, level: np.ndarray) -> np.ndarray:
    """Signed pulse counts n (rows, out) shared among the r replicas of each weight: (r, rows, out).

    level: (r, rows, out), where each replica stands now (G+ − G−). Every replica gets |n| // r
    pulses; the |n| mod r left over go one each to the replicas that lag: the lowest for n > 0,
    the highest for n < 0 (ties: the first replica first). The replicas of a weight thus stay
    within about a pulse of each other, and none saturates before the others.
    """
    r = level.shape[0]
    mag = np.abs(n)
    base, rest = np.floor_divide(mag, r), np.mod(mag, r)
    order = np.argsort(np.where(n[None] < 0, -level, level), axis=0, kind="stable")
    rank = np.argsort(order, axis=0)   # each replica's place in that order
    return np.sign(n)[None] * (base[None] + (rank < rest[None]))


def stack_rows(W: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    """[W; b] in the crossbar's row layout (the bias row last), as a new array."""
    return np.array(W) if b is None else np.vstack([W, b[None, :]])


def program_stacked(layer, target: np.ndarray, cells: np.ndarray | None = None) -> None:
    n_in = layer.n_in
    layer.crossbar.program(target[:n_in], None if layer.b is None else target[n_in], cells=cells)
