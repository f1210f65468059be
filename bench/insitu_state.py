"""What an in-situ run does to its devices, epoch by epoch: pulses, saturation, accumulators.

Usage::

    python bench/insitu_state.py [--epochs 3] [--train-limit N] [KEY=VALUE ...]

Trains the acceptance network of the realistic-device headline (mlp-100x2, Fashion-MNIST, 64x64
tiles, 8-bit ADC, seed 1, recipe hwa, agsi, update mixed; KEY=VALUE overrides any train field, e.g.
``range_scale=2 lr_gamma=0.7``) and prints after every epoch the test accuracy, the pulses and
writes of that epoch and, per layer, the range m, the share of weights within 3 % of ±m, the mean
|w|/m and the accumulator |chi| in device steps (mean, 99th percentile, max). This is how the
closed loop's wind-up was found (README, "In-situ on agsi").
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main(argv=None) -> None:
    from xbar.train import TrainConfig, Trainer, evaluate
    from xbar.train.loop import load_data

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--train-limit", type=int, default=0)
    ap.add_argument("set", nargs="*", help="train fields as KEY=VALUE (numbers parsed)")
    a = ap.parse_args(argv)
    cfg = {"network": "mlp-100x2", "dataset": "fmnist", "tile": "64x64", "adc_bits": 8, "seed": 1,
           "eval_train": False, "epochs": a.epochs, "recipe": "hwa", "device": "agsi", "update": "mixed"}
    if a.train_limit:
        cfg["train_limit"] = a.train_limit
    for item in a.set:
        k, _, v = item.partition("=")
        try:
            cfg[k] = int(v) if v.lstrip("-").isdigit() else float(v)
        except ValueError:
            cfg[k] = {"true": True, "false": False}.get(v.lower(), v)
    cfg = TrainConfig.from_dict(cfg).resolve()
    Xtr, ytr, Xte, yte = load_data(cfg)
    tr = Trainer(cfg, Xtr.shape[1], 10)
    up = tr.update
    t0 = time.perf_counter()
    for ep in range(1, cfg.epochs + 1):
        before = dict(up.counters)
        tr.run_epoch(Xtr, ytr, ep, calibrate=ep > 1)   # as the training loop: epoch 1 keeps its first calibration
        tr.sched.step()
        loss, acc = evaluate(tr.net, Xte, yte)
        print(f"epoch {ep}: test {acc:.2f} %, loss {loss:.3f}, pulses {up.counters['pulses'] - before['pulses']:.3g}, "
              f"writes {up.counters['writes'] - before['writes']:.3g}, {time.perf_counter() - t0:.0f} s")
        for i, st in enumerate(up.states):
            m = getattr(st, "hi", 0.0) or st.eps * (cfg.device_obj().pulse_levels - 1)   # (before 0ce3fa6: no hi)
            c = np.abs(st.chi) / st.eps if st.chi is not None else np.zeros(1)
            print(f"  layer {i}: m {m:.3f}, at the limit {np.mean(np.abs(st.prev) > 0.97 * m):.1%}, "
                  f"mean |w|/m {np.mean(np.abs(st.prev)) / m:.3f}, |chi| steps: mean {c.mean():.2f}, "
                  f"p99 {np.percentile(c, 99):.1f}, max {c.max():.0f}")


if __name__ == "__main__":
    main()
