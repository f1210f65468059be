"""Stacked training: K variants of one run (same network, rule, seed and data order; different
device-side settings) trained in one process, each exactly as it would train alone.

    from xbar.train import TrainConfig, train_many
    results = train_many([TrainConfig(network="mlp-100x2", dataset="fmnist", update="nearest",
                                      recipe="seed", bits=b) for b in range(2, 9)])

Each variant first gets its own :class:`~xbar.train.trainer.Trainer`, built as for a run alone (its
initial weights, feedback matrices, crossbars and first programming). The stack then takes their
arrays as (K, ...) stacks and runs every step once for all of them: the shared batch meets the K
first-layer weight matrices in one batched product, deeper layers are batched products over K,
and the optimizer, the rounding and the programming (:mod:`xbar.kernels.stack`) run on the
stack. Every operation is the one a variant's own run performs on its slice (the same BLAS call
per matrix, the same element-wise float32 arithmetic), so histories and weights come out bit for
bit equal (tests/test_stack.py compares them on every rule and grid). The Python cost of a step
is paid once per stack instead of once per run; it is most of a step on the seed study's small
networks.

After every epoch each variant's own network gets the stack's weights and is programmed and
evaluated as in a run alone (its crossbars, its evaluation, its history entry and probe). A
variant that diverges (the same checks, the same message) leaves the stack; the others go on.

What stacks (:func:`xbar.train.stackable.stack_blocker` says why a config does not): dense chains (no batch norm,
pooling, dropout, binary weights or masks) with biases; rules bp, fa, dfa, hsic and sg; updates
``float``, ``nearest`` (quant asymm/symm, range global or local with a per-layer gain, no ADC/DAC)
and ``qat``, without a recipe of its own update (hwa). The stack's own kernels program and read
exact devices (no programming or read noise, faults, spread, drift, ADC/DAC, IR drop or I–V
terms, one slice, one replica) under ``nearest``; with ``qat`` or any other device every variant
programs and reads its own crossbars (:mod:`xbar.train.stackown`), with the same bits. Variants
in one stack may differ in ``DEVICE_SIDE`` fields only; ``group_key`` is what they must share
(both in :mod:`xbar.train.stackable`). The loop over epochs is :func:`xbar.train.many.train_many`.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError, ShapeError
from ..kernels.stack import adadelta_round_program_stack, round_program_stack, round_stack
from ..nn import loss_and_error
from .config import TrainConfig
from .hsic import layer_objective
from .optim import Adadelta, Adam, StepLR, make_optimizer, reindex
from .rule import one_hot
from .stackable import DEVICE_SIDE, exact_devices, group_key, layer_blocker, stack_blocker
from .stackown import Diverging, OwnDevices
from .trainer import Trainer, loss_divergence


class StackTrainer(OwnDevices):
    """K variants of one run as one stack (see the module docstring).

    trainers: the variants' own Trainers (built here, as for runs alone); alive: the indices of
    the variants still in the stack, in stack order.
    """

    def __init__(self, cfgs: list[TrainConfig], n_in: int, n_classes: int):
        if not cfgs:
            raise ConfigError("train_many: no configs")
        keys = {group_key(c) for c in cfgs}
        if len(keys) > 1:
            raise ConfigError("train_many: the configs differ in more than device-side fields "
                              f"({', '.join(DEVICE_SIDE)}); xbar.sweep.plan_groups splits runs into stacks")
        for c in cfgs:
            why = stack_blocker(c)
            if why:
                raise ConfigError(f"train_many: {why}")
        self.cfgs = cfgs
        self.trainers = [Trainer(c, n_in, n_classes) for c in cfgs]
        for t in self.trainers:
            for layer in t.net.layers:
                why = layer_blocker(layer)
                if why:
                    raise ConfigError(f"train_many: {why}")
        t0 = self.trainers[0]
        self.cfg = cfgs[0]
        self.rule_name = self.cfg.rule
        self.rule0 = t0.rule
        self.on_device = self.cfg.update in ("nearest", "qat")
        self.rounds = self.cfg.update == "nearest"
        # Update qat, or devices the stack's kernels do not model (noise, faults, drift, ...): every
        # variant programs and reads its own crossbars, as its run alone does (_own_read, _own_program).
        self.own = self.on_device and (not self.rounds or not all(
            exact_devices(la) for t in self.trainers for la in t.net.layers))
        self.shuffle = t0.shuffle
        self.n_layers = len(t0.net.layers)
        self.funcs = [(layer._f, layer._back) for layer in t0.net.layers]
        self.output = t0.net.output
        self.n_classes = n_classes
        K = len(cfgs)
        self.alive = np.arange(K)
        nets = [t.net for t in self.trainers]

        def stack(get):
            return [np.ascontiguousarray(np.stack([get(n, i) for n in nets])) for i in range(self.n_layers)]

        self.W = stack(lambda n, i: n.layers[i].W)
        self.b = stack(lambda n, i: n.layers[i].b)
        self.counts = np.zeros((K, self.n_layers, 4), np.int64)   # programs, mvm, mvm_t, clipped
        if self.on_device and not self.own:
            self.w32 = stack(lambda n, i: n.layers[i].crossbar.read.w_fwd32)
            # net conductances only where the step reads a layer transposed (bp and sg, layers
            # after the first); elsewhere (K, 0, 0): the kernels skip them
            reads_t = [self.rule_name in ("bp", "sg") and i > 0 for i in range(self.n_layers)]
            self.g32 = [np.ascontiguousarray(np.stack([n.layers[i].crossbar.read.g32 for n in nets])) if reads_t[i]
                        else np.zeros((K, 0, 0), np.float32) for i in range(self.n_layers)]
            def offset(n, i):
                beta = n.layers[i].crossbar.read_gains()[1]
                return np.zeros(n.layers[i].n_out, np.float32) if beta is None else beta

            self.alpha32 = stack(lambda n, i: n.layers[i].crossbar.read_gains()[0])
            self.beta32 = stack(offset)
            self.has_beta = [np.array([n.layers[i].crossbar.read_gains()[1] is not None for n in nets])
                             for i in range(self.n_layers)]
        if self.rounds:
            self.qp = [self._quant_params([t.update.setups[i] for t in self.trainers],
                                          [t.net.layers[i].crossbar.device for t in self.trainers])
                       for i in range(self.n_layers)]
        self.B = [np.ascontiguousarray(np.stack(Bs)) for Bs in zip(*[t.feedback for t in self.trainers])]
        self.fbq = []
        if self.rounds and self.B:
            self.fbq = [self._quant_params([t.update._fb_setups[i] for t in self.trainers], None)
                        for i in range(len(self.B))]
        if self.rule_name == "sg":
            mods = [t.rule.modules for t in self.trainers]
            self.sg_A = [np.stack([m[i].A for m in mods]) for i in range(self.n_layers - 1)]
            self.sg_C = [None if mods[0][i].C is None else np.stack([m[i].C for m in mods])
                         for i in range(self.n_layers - 1)]
            self.sg_c = [np.stack([m[i].c for m in mods]) for i in range(self.n_layers - 1)]
            self.sg_opt = Adam(self._sg_params(), self.rule0.lr)
        self.opt = None
        self._active: tuple[int, ...] = ()
        self._cover(tuple(range(self.n_layers)), self.cfg.lr)
        self.sched = StepLR(self.opt, self.cfg.lr_step, self.cfg.lr_gamma)
        self.first_loss: list[float | None] = [None] * K
        self.departed: list[tuple[int, str]] = []   # (variant, message): diverged, not yet collected
        self.step_loss = np.zeros(K)
        self.step_correct = np.zeros(K, np.int64)

    # ---- state -------------------------------------------------------------------------------
    @staticmethod
    def _quant_params(setups, devices) -> dict[str, np.ndarray]:
        out = {"lo": np.array([s.w_range[0] for s in setups], np.float64),
               "hi": np.array([s.w_range[1] for s in setups], np.float64),
               "bits": np.array([s.bits for s in setups], np.int64),
               "symm": np.array([s.quant == "symm" for s in setups]),
               "local": np.array([s.range == "local" for s in setups])}
        if devices is not None:
            out["n_levels"] = np.array([0 if d.levels() is None else len(d.levels()) for d in devices], np.int64)
            out["window"] = np.array([d.window_us for d in devices], np.float64)
            out["g_min"] = np.array([d.g_min_us for d in devices], np.float64)
        return out

    def _sg_params(self) -> list[np.ndarray]:
        out = []
        for A, C, c in zip(self.sg_A, self.sg_C, self.sg_c):
            out += [A, c] if C is None else [A, C, c]
        return out

    def _cover(self, active: tuple[int, ...], lr: float) -> None:
        """A fresh optimizer over the layers in `active` (Trainer._cover's rule)."""
        cfg = self.cfg
        params = [p for i in active for p in (self.W[i], self.b[i])]
        self.opt = make_optimizer(cfg.optimizer, params, lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        if hasattr(self, "sched"):
            self.sched.optimizer = self.opt
        self._active = active

    def _keep(self, keep: np.ndarray) -> None:
        """Leave only the stack entries where `keep` is True (diverged variants leave)."""
        def sel(a):
            return None if a is None else np.ascontiguousarray(a[keep])

        old_params = self.opt.params
        for name in ("W", "b", "w32", "g32", "alpha32", "beta32", "has_beta", "B", "sg_A", "sg_C", "sg_c"):
            if hasattr(self, name):
                setattr(self, name, [sel(a) for a in getattr(self, name)])
        for name in ("qp", "fbq"):
            if hasattr(self, name):
                setattr(self, name, [{k: v[keep] for k, v in d.items()} for d in getattr(self, name)])
        # The optimizers' state follows its parameters (same order, same slices).
        new_params = [p for i in self._active for p in (self.W[i], self.b[i])]
        reindex(self.opt, old_params, new_params, keep)
        if self.rule_name == "sg":
            old = self.sg_opt.params
            reindex(self.sg_opt, old, self._sg_params(), keep)
        self.alive = self.alive[keep]
        self.step_loss = self.step_loss[keep]
        self.step_correct = self.step_correct[keep]

    # ---- one step ------------------------------------------------------------------------------
    def _read(self, i: int, x: np.ndarray, div: Diverging) -> np.ndarray:
        """Layer i's forward read for input x ((m, n) shared, or (K, m, n)): Crossbar.mvm's math."""
        if self.own:
            return self._own_read(i, x, div, "mvm")
        a = self._product(x, self.w32[i] if self.on_device else self.W[i])
        a += self.b[i][:, None, :]
        if not self.on_device:
            return a
        hb = self.has_beta[i]
        if hb.any():
            idx = np.flatnonzero(hb)
            xs = x.sum(axis=-1, keepdims=True)
            a[idx] += (xs if xs.ndim == 2 else xs[idx]) * self.beta32[i][idx][:, None, :]
        live = np.array([m is None for m in div.msg], bool)   # a run stops at its first overflow
        self.counts[self.alive[live], i, 1] += 1
        ok = np.isfinite(a).all(axis=(1, 2))
        if not ok.all():
            for k in np.flatnonzero(~ok):
                div.overflow(k, "X", x if x.ndim == 2 else x[k])
        return a

    @staticmethod
    def _product(x: np.ndarray, W: np.ndarray) -> np.ndarray:
        """x @ W[k] for every k: x (m, n) shared by all variants, or (K, m, n). A shared x goes to
        BLAS once per variant (the call a run alone makes; numpy's broadcast matmul over the stack
        measured ~25 % slower for the first layer of mlp-100x2)."""
        if x.ndim == 3:
            return np.matmul(x, W)
        a = np.empty((W.shape[0], x.shape[0], W.shape[2]), np.float32)
        for k in range(W.shape[0]):
            np.matmul(x, W[k], out=a[k])
        return a

    def _read_t(self, i: int, delta: np.ndarray, div: Diverging) -> np.ndarray:
        """delta Wᵀ of layer i on its devices (Crossbar.mvm_t's math), or of its digital weights."""
        if not self.on_device:
            return np.matmul(delta, self.W[i].swapaxes(1, 2))
        if self.own:
            return self._own_read(i, delta, div, "mvm_t")
        Ea = delta * self.alpha32[i][:, None, :]
        y = np.matmul(Ea, self.g32[i].swapaxes(1, 2))
        self.counts[self.alive, i, 2] += 1
        ok = np.isfinite(y).all(axis=(1, 2))
        if not ok.all():
            for k in np.flatnonzero(~ok):
                div.overflow(k, "E", delta[k])
        for k in np.flatnonzero(self.has_beta[i]):
            y[k] += (delta[k] @ self.beta32[i][k])[:, None]
        return y

    def _local_delta(self, i: int, g: np.ndarray, a: np.ndarray, z: np.ndarray) -> np.ndarray:
        return self.funcs[i][1](g, a, z)

    def step(self, x: np.ndarray, y: np.ndarray, div: Diverging) -> None:
        """One step of every variant in the stack on batch (x, y); divergences go to `div`."""
        L = self.n_layers
        xs, As, Zs = [], [], []
        h = x
        for i in range(L):
            a = self._read(i, h, div)
            z = self.funcs[i][0](a)
            xs.append(h)
            As.append(a)
            Zs.append(z)
            h = z
        out = h
        losses, E = loss_and_error(self.output, out, y)   # each variant's own, as alone
        self.step_correct += np.count_nonzero(np.argmax(out, axis=2) == y, axis=1)
        for k, loss in enumerate(losses.tolist()):
            j = self.alive[k]
            self.step_loss[k] += loss
            msg, self.first_loss[j] = loss_divergence(loss, self.first_loss[j])
            if msg:
                div.set(k, msg)
        if any(m is not None for m in div.msg):
            # Runs alone stop here, before their update: they leave the stack as they are now.
            keep = self._depart(div)
            xs = [a if a.ndim == 2 else np.ascontiguousarray(a[keep]) for a in xs]
            As = [np.ascontiguousarray(a[keep]) for a in As]
            Zs = [As[i] if z is As[i] else np.ascontiguousarray(z[keep]) for i, z in enumerate(Zs)]
            E = np.ascontiguousarray(E[keep])
            if not len(self.alive):
                return
            div = Diverging(len(self.alive))
        deltas = self._deltas(xs, As, Zs, E, y, div)
        active = tuple(i for i, d in enumerate(deltas) if d is not None)
        if active != self._active:
            self._cover(active, self.opt.lr)
        grads = []
        for i in active:
            xi = xs[i]
            grads.append(np.matmul(xi.T if xi.ndim == 2 else xi.swapaxes(1, 2), deltas[i]))
            grads.append(deltas[i].sum(axis=1))
        fused = (self.on_device and not self.own and isinstance(self.opt, Adadelta) and not self.opt.weight_decay
                 and all(g.dtype == np.float32 and g.flags.c_contiguous for g in grads))
        if fused:   # the optimizer's step runs inside the programming kernel, variant by variant
            self.opt.steps += 1
        else:
            self.opt.step(grads)
        if self.rule_name == "sg" and self._sg_pending is not None:
            self.sg_opt.step(self._sg_pending)
            self._sg_pending = None
        if self.own:
            self._own_program(div)
        elif self.on_device:
            self._program(div, grads if fused else None)
        if any(m is not None for m in div.msg):
            # (a run alone stops part-way through this update; its leaving state is the stack's)
            self._depart(div)

    def _depart(self, div: Diverging) -> np.ndarray:
        """The variants with a message leave the stack (synced into their own Trainers, noted in
        `departed` as (index, message)); returns the keep mask applied."""
        keep = np.array([m is None for m in div.msg], bool)
        for k in np.flatnonzero(~keep):
            self.sync(int(k))
            self.departed.append((int(self.alive[k]), div.msg[k]))
        self._keep(keep)
        return keep

    def _deltas(self, xs, As, Zs, E, y, div) -> list[np.ndarray | None]:
        L = self.n_layers
        out: list[np.ndarray | None] = [None] * L
        out[-1] = E
        rule = self.rule_name
        if rule in ("bp", "fa"):
            for i in range(L - 2, -1, -1):
                if rule == "bp":
                    g = self._read_t(i + 1, out[i + 1], div)
                else:
                    g = np.matmul(out[i + 1], self.B[i].swapaxes(1, 2))
                out[i] = self._local_delta(i, g, As[i], Zs[i])
        elif rule == "dfa":
            for i in range(L - 1):
                out[i] = self._local_delta(i, np.matmul(E, self.B[i]), As[i], Zs[i])
        elif rule == "hsic":
            r = self.rule0
            if r.learning_hidden():
                G = r.label_term(xs[0], y, self.n_classes)
                dead = np.array([m is not None for m in div.msg], bool)
                for i in range(L - 1):
                    Z = Zs[i]
                    if dead.any():   # (leaving this step: zeros keep their kernels invertible)
                        Z = Z.copy()
                        Z[dead] = 0
                    g = layer_objective(Z, G, r.sigma, r.eps, r.standardise)[1]   # the whole stack
                    out[i] = self._local_delta(i, g.astype(np.float32), As[i], Zs[i])
        else:   # sg
            Y = one_hot(y, self.n_classes) if self.rule0.conditioned else None
            m = E.shape[1]
            preds = []
            for i in range(L - 1):
                p = np.matmul(Zs[i], self.sg_A[i])
                if self.sg_C[i] is not None:
                    p += np.matmul(Y, self.sg_C[i])
                p += self.sg_c[i][:, None, :]
                preds.append(p)
                out[i] = self._local_delta(i, p * np.float32(1.0 / m), As[i], Zs[i])
            grads = []
            for i in range(L - 1):
                target = self._read_t(i + 1, out[i + 1], div) * np.float32(m)
                d = (preds[i] - target) * np.float32(1.0 / m)
                grads.append(np.matmul(Zs[i].swapaxes(1, 2), d))
                if self.sg_C[i] is not None:
                    grads.append(np.matmul(Y.T, d))
                grads.append(d.sum(axis=1))
            self._sg_pending = grads
        return out

    def _program(self, div: Diverging, grads: list[np.ndarray] | None = None) -> None:
        """Update nearest's after_step for the stack: feedback, then weights and biases, rounded
        and programmed layer by layer. grads: the active layers' (W, b) gradients when the
        optimizer (Adadelta) is to step inside the kernel, just before each variant is rounded."""
        K = len(self.alive)
        bad = np.empty(K, np.int64)
        for B, q in zip(self.B, self.fbq):
            round_stack(B, q["lo"], q["hi"], q["bits"], q["symm"], q["local"], bad)
        bad_b = np.empty(K, np.int64)
        clipped = np.empty(K, np.int64)
        for i in range(self.n_layers):
            q = self.qp[i]
            has_beta = np.empty(K, np.bool_)
            tail = (q["lo"], q["hi"], q["bits"], q["symm"], q["local"], q["n_levels"], q["window"], q["g_min"],
                    self.w32[i], self.g32[i], self.alpha32[i], self.beta32[i], has_beta, clipped, bad, bad_b)
            if grads is not None and i in self._active:
                j = 2 * self._active.index(i)
                opt = self.opt
                adadelta_round_program_stack(self.W[i], self.b[i], grads[j], grads[j + 1], opt.sq[j], opt.acc[j],
                                             opt.sq[j + 1], opt.acc[j + 1], *opt.scalars(), *tail)
            else:
                round_program_stack(self.W[i], self.b[i], *tail)
            self.has_beta[i] = has_beta
            self.counts[self.alive, i, 0] += 1
            self.counts[self.alive, i, 3] += clipped
            for k in np.flatnonzero((bad >= 0) | (bad_b >= 0)):
                if bad[k] >= 0:
                    div.refused(k, "W", self.W[i][k])
                else:
                    div.refused(k, "b", self.b[i][k].reshape(1, -1))

    # ---- the variants' own networks ----------------------------------------------------------------
    def sync(self, k: int) -> Trainer:
        """Variant `k` (stack position) written into its own Trainer: weights, feedback, SG modules,
        crossbars programmed from them, counters as a run alone would show them."""
        j = int(self.alive[k])
        t = self.trainers[j]
        for i, layer in enumerate(t.net.layers):
            layer.W[...] = self.W[i][k]
            layer.b[...] = self.b[i][k]
            xb = layer.crossbar
            if xb is not None and not self.own:   # (own crossbars are programmed and counted already)
                counters = xb.counters()
                try:
                    layer.program()
                except ShapeError:   # a variant that left with non-finite weights keeps its last state
                    pass
                c = self.counts[j, i]
                for name, col in (("programs", 0), ("mvm_calls", 1), ("mvm_t_calls", 2), ("weights_clipped", 3)):
                    counters[name] += int(c[col])
                xb.set_counters(counters)
                self.counts[j, i] = 0
        for B, Bs in zip(t.feedback, self.B):
            B[...] = Bs[k]
        if self.rule_name == "sg":
            for i, mod in enumerate(t.rule.modules):
                mod.A[...] = self.sg_A[i][k]
                mod.c[...] = self.sg_c[i][k]
                if mod.C is not None:
                    mod.C[...] = self.sg_C[i][k]
        t.opt.lr = self.opt.lr
        return t

    _sg_pending = None


__all__ = ["Diverging", "StackTrainer"]
